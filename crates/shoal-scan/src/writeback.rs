//! Page-cache handling for the writers of large files: the puller, and the NFS server's WRITEs.
//!
//! Nothing here writes data: these calls tell the kernel when to write out what a writer put in
//! the page cache, and when it may forget it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;

/// Writeback is started per this much written.
pub const STEP: u64 = 8 << 20;
/// Written data stays in the page cache this far behind the writer, then it is waited for and
/// dropped.
const BEHIND: u64 = 64 << 20;

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to disk (0: to its end),
/// without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a head start for a later
/// fsync or syncfs, which then waits for less; durability still comes from those.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
}

/// Writes `len` bytes at `offset` of `file` out and waits for them, then drops them from the
/// page cache. Not durability (neither metadata nor the disk's cache): the fsync or syncfs that
/// follows gives that, with this range's data already on its way.
fn write_out_and_drop(file: &File, offset: u64, len: u64) {
    sync_range(
        file,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    if let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) {
        #[allow(
            unsafe_code,
            reason = "posix_fadvise has no safe wrapper in our dependencies"
        )]
        // SAFETY: the descriptor is open for as long as `file` is borrowed; no memory is passed.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED);
        }
    }
}

fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    #[allow(
        unsafe_code,
        reason = "sync_file_range has no safe wrapper in our dependencies"
    )]
    // SAFETY: the descriptor is open for as long as `file` is borrowed; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, flags);
    }
}

/// Keeps a large file's writer within a bounded window of the page cache: writeback starts for
/// each [`STEP`]-sized piece of the file as soon as it is all written, and what lies more than
/// [`BEHIND`] below the front (the end of what has been written from offset 0 without a gap) is
/// waited for and dropped.
///
/// Why: a file written whole into the page cache takes one new page per 4 KiB, all dirty until
/// the fsync. New pages are the expensive part of a buffered write (in a virtual machine each
/// one first touched costs the host a fault: 2 GiB written plainly, then fsynced, took 4.3–4.9 s
/// on the benchmark machine, through this window 0.6 s); pages dropped behind the writer are
/// reused for the next writes at once. It also leaves the rest of the page cache alone, and the
/// final fsync has almost nothing left to wait for. The cost: the file is not in the page cache
/// afterwards, so its next reader reads the disk. That is why the puller uses it (a file that
/// arrived from a peer has no reader waiting here) and the NFS server does not: what a client
/// writes is read again at once by the scanner, which hashes it to sync it, and often by the
/// client; dropping it sent those reads to the disk (nfs-rs reading its 1 GiB right after
/// writing it: 1.6–2.2 GB/s → 0.85–1.06).
///
/// Writes may arrive out of order (fetches answered by several peers, chunks fetched shuffled
/// within windows of ~256 MiB): the drop follows the front, so a piece written early far ahead
/// waits in the cache until the front reaches it (the first version followed the furthest write,
/// and one early piece near a file's end had the whole file dropped before it was written). The
/// writeback does not wait for the front: it first did, and a 1 GiB file fetched shuffled had its
/// last ~300 MiB still dirty when it was all there, 0.76 s of its 4.2 s spent in the final sync.
#[derive(Debug, Default)]
pub struct WriteBehind {
    /// Written ranges above the front (start → end), not touching each other or the front.
    ahead: BTreeMap<u64, u64>,
    /// Everything below this offset has been written.
    front: u64,
    /// Writeback has been started below this offset (a multiple of [`STEP`]).
    started: u64,
    /// Steps above `started` whose writeback has been started (offset / [`STEP`]).
    started_ahead: BTreeSet<u64>,
    /// Data below this offset has been written out and dropped.
    dropped: u64,
}

impl WriteBehind {
    /// A window for a file written from offset 0.
    pub fn new() -> WriteBehind {
        WriteBehind::default()
    }

    /// `file` now holds `offset..end`.
    pub fn wrote(&mut self, file: &File, offset: u64, end: u64) {
        let steps = self.steps(offset, end);
        for (from, to) in steps.start {
            start_writeback(file, from, to - from);
        }
        if let Some((from, to)) = steps.drop {
            write_out_and_drop(file, from, to - from);
        }
    }

    /// What a write of `offset..end` calls for: the ranges to start and to write out and drop.
    fn steps(&mut self, offset: u64, end: u64) -> Steps {
        // The written range that now holds `offset..end`.
        let (low, high) = if offset <= self.front {
            self.front = self.front.max(end);
            // Ranges ahead that the front now reaches join it.
            while let Some((&start, &stop)) = self.ahead.first_key_value() {
                if start > self.front {
                    break;
                }
                self.ahead.remove(&start);
                self.front = self.front.max(stop);
            }
            (0, self.front)
        } else {
            self.note_ahead(offset, end)
        };
        let mut steps = Steps::default();
        // The steps this write made whole (only steps it touches can have become whole: the
        // work per write stays bounded however far a gap holds the front back), as runs.
        for k in (offset / STEP).max(self.started / STEP)..end.div_ceil(STEP) {
            let whole = k * STEP >= low && (k + 1) * STEP <= high;
            if !whole || !self.started_ahead.insert(k) {
                continue;
            }
            match steps.start.last_mut() {
                Some((_, to)) if *to == k * STEP => *to += STEP,
                _ => steps.start.push((k * STEP, (k + 1) * STEP)),
            }
        }
        while self.started_ahead.remove(&(self.started / STEP)) {
            self.started += STEP;
        }
        let drop_to = self.front.min(self.started).saturating_sub(BEHIND) / STEP * STEP;
        if drop_to > self.dropped {
            steps.drop = Some((self.dropped, drop_to));
            self.dropped = drop_to;
        }
        steps
    }

    /// Records `offset..end` above the front, merged with the ranges it touches; the merged
    /// range.
    fn note_ahead(&mut self, mut offset: u64, mut end: u64) -> (u64, u64) {
        // A range starting at or before `end` and reaching `offset` overlaps or touches it.
        while let Some((&start, &stop)) = self.ahead.range(..=end).next_back() {
            if stop < offset {
                break;
            }
            self.ahead.remove(&start);
            offset = offset.min(start);
            end = end.max(stop);
        }
        self.ahead.insert(offset, end);
        (offset, end)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Steps {
    start: Vec<(u64, u64)>,
    drop: Option<(u64, u64)>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_window_starts_each_step_once_and_drops_what_is_far_enough_behind() {
        let mut w = WriteBehind::new();
        // Less than a step: nothing yet.
        assert_eq!(w.steps(0, 3 * MIB), Steps::default());
        // A step completed: started, nothing far enough behind to drop.
        assert_eq!(
            w.steps(3 * MIB, 9 * MIB),
            Steps {
                start: vec![(0, 8 * MIB)],
                drop: None
            }
        );
        // A rewrite below the front changes nothing.
        assert_eq!(w.steps(5 * MIB, 6 * MIB), Steps::default());
        // Up to BEHIND + one step: the first step is dropped, every step started once.
        assert_eq!(
            w.steps(9 * MIB, BEHIND + STEP + MIB),
            Steps {
                start: vec![(8 * MIB, BEHIND + STEP)],
                drop: Some((0, STEP))
            }
        );
        assert_eq!(
            w.steps(BEHIND + STEP + MIB, BEHIND + 3 * STEP),
            Steps {
                start: vec![(BEHIND + STEP, BEHIND + 3 * STEP)],
                drop: Some((STEP, 3 * STEP))
            }
        );
        assert_eq!(w.steps(BEHIND, BEHIND + 3 * STEP), Steps::default());
    }

    #[test]
    fn steps_written_ahead_of_a_gap_start_at_once_and_are_dropped_only_behind_the_front() {
        let mut w = WriteBehind::new();
        let gib = 1 << 30;
        // The file's last piece first: no whole step, nothing moves.
        assert_eq!(w.steps(gib - MIB, gib), Steps::default());
        // Pieces ahead of a gap, out of order, some touching each other: writeback starts for a
        // step once it is whole (16..24 when 12..30 is), nothing is dropped.
        assert_eq!(w.steps(20 * MIB, 30 * MIB), Steps::default());
        assert_eq!(w.steps(12 * MIB, 16 * MIB), Steps::default());
        assert_eq!(
            w.steps(16 * MIB, 20 * MIB),
            Steps {
                start: vec![(16 * MIB, 24 * MIB)],
                drop: None
            }
        );
        assert_eq!(w.ahead.len(), 2, "{:?}", w.ahead);
        // The gap filled: the front jumps to the end of what touches it, not to the file's end;
        // the steps below it start, the one started ahead not again.
        assert_eq!(
            w.steps(0, 12 * MIB),
            Steps {
                start: vec![(0, 16 * MIB)],
                drop: None
            }
        );
        assert_eq!(w.front, 30 * MIB);
        assert_eq!(w.started, 24 * MIB);
        assert_eq!(w.ahead.len(), 1);
        // An overlapping rewrite ahead merges.
        w.steps(gib - 2 * MIB, gib - MIB / 2);
        assert_eq!(w.ahead.len(), 1);
        assert_eq!(w.ahead.get(&(gib - 2 * MIB)), Some(&gib));
        // Far ahead, two whole steps in one write start as one run; however much is written
        // ahead, nothing is dropped until the front is BEHIND past it.
        assert_eq!(
            w.steps(40 * MIB, 100 * MIB + 3),
            Steps {
                start: vec![(40 * MIB, 96 * MIB)],
                drop: None
            }
        );
        assert_eq!(
            w.steps(30 * MIB, 40 * MIB),
            Steps {
                start: vec![(24 * MIB, 40 * MIB)],
                drop: Some((0, 96 * MIB - BEHIND))
            }
        );
        assert_eq!(w.started, 96 * MIB);
    }

    #[test]
    fn a_gap_at_the_start_holds_back_neither_writeback_nor_the_writer() {
        // The first MiB comes last (a slow peer); 20 GiB arrive in order behind it. Each step
        // starts when its last MiB is written, and looking for whole steps stays within what
        // each write touched (it once walked the whole range ahead: quadratic in the file).
        let mut w = WriteBehind::new();
        let per_step = STEP / MIB;
        for i in 1..20 * 1024 {
            let steps = w.steps(i * MIB, (i + 1) * MIB);
            let want = if (i + 1) % per_step == 0 && i + 1 > per_step {
                vec![((i + 1 - per_step) * MIB, (i + 1) * MIB)]
            } else {
                Vec::new()
            };
            assert_eq!(steps.start, want, "MiB {i}");
            assert_eq!(steps.drop, None);
        }
        assert_eq!(w.front, 0);
        let filled = w.steps(0, MIB);
        assert_eq!(filled.start, vec![(0, STEP)]);
        assert_eq!(w.front, 20 * 1024 * MIB);
        assert_eq!(w.started, 20 * 1024 * MIB);
        assert!(w.started_ahead.is_empty());
    }

    #[test]
    fn shuffled_writes_start_every_whole_step_exactly_once() {
        // Chunks of 1 MiB written in a shuffled order: each step is started once, when whole,
        // and everything below the end is started by the time all is written.
        let n = 200u64;
        let mut order: Vec<u64> = (0..n).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut w = WriteBehind::new();
        let mut written = BTreeSet::new();
        let mut started = BTreeSet::new();
        for i in order {
            written.insert(i);
            for (from, to) in w.steps(i * MIB, (i + 1) * MIB).start {
                for k in from / STEP..to / STEP {
                    assert!(started.insert(k), "step {k} started twice");
                    let whole =
                        (k * STEP / MIB..(k + 1) * STEP / MIB).all(|c| written.contains(&c));
                    assert!(whole, "step {k} started before it was whole");
                }
            }
        }
        assert_eq!(started.len() as u64, n * MIB / STEP);
        assert_eq!(w.started, n * MIB / STEP * STEP);
        assert!(w.started_ahead.is_empty());
    }

    #[test]
    fn data_written_through_the_window_is_all_there() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut w = WriteBehind::new();
        let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
        // In order, then one step rewritten far below the window (out of order).
        for i in 0..(BEHIND / MIB + 3 * STEP / MIB) {
            file.write_all_at(&block, i * MIB).unwrap();
            w.wrote(&file, i * MIB, (i + 1) * MIB);
        }
        let other = vec![7u8; MIB as usize];
        file.write_all_at(&other, 2 * MIB).unwrap();
        w.wrote(&file, 2 * MIB, 3 * MIB);
        file.sync_all().unwrap();
        let read = std::fs::read(&path).unwrap();
        assert_eq!(read.len() as u64, BEHIND + 3 * STEP);
        for (i, piece) in read.chunks(MIB as usize).enumerate() {
            let want = if i == 2 { &other } else { &block };
            assert!(piece == want.as_slice(), "MiB {i} differs");
        }
    }
}
