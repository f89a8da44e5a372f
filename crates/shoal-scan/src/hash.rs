//! Hashing one file without ever recording a torn state.
//!
//! The file is opened without following a symlink, stat'ed, read to the end through the chunker,
//! and stat'ed again, by descriptor and by path. If anything moved in between — size, mtime, ctime,
//! or the path now names another inode — the result is thrown away and the file read again; a file
//! that keeps changing is reported as such and left for the next event.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shoal_core::chunk::{
    Chunk, ChunkHasher, Hash, Seen, chunk_in_parallel_seen, file_hash, rechunk_seen,
};
use shoal_index::{ChunkRef, Kind};

use crate::progress::Progress;
use crate::walk::DiskStat;

/// Reads per `read` call: large enough that BLAKE3 uses its wide SIMD paths.
const READ_SIZE: usize = 1 << 20;

/// How many times a file that changed while being read is read again before giving up for now.
const ATTEMPTS: usize = 3;

#[derive(Debug)]
pub enum Hashed {
    Done {
        stat: DiskStat,
        chunks: Vec<ChunkRef>,
        hash: Hash,
    },
    /// The file changed during every attempt; the next event or scan will try again.
    Changing,
    /// It is gone, or is no longer a regular file.
    Vanished,
    /// The scan is stopping.
    Stopped,
}

/// Hashes the file at `abs`. `previous`: its chunks as last indexed, if it is large enough for
/// them to be worth checking first (see [`rechunk`]; the scanner passes them from
/// [`PARALLEL_MIN`] on). `seen` is told the chunks of a file read on every core as they are
/// found, when it is chunked anew (see [`rechunk_seen`]).
pub fn hash_file(
    abs: &Path,
    previous: Option<&[Chunk]>,
    seen: Option<&Seen<'_>>,
    progress: &Progress,
    stop: &AtomicBool,
) -> io::Result<Hashed> {
    let mut buf = Vec::new();
    for _ in 0..ATTEMPTS {
        let mut file = match File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(abs)
        {
            Ok(f) => f,
            Err(e) if gone(&e) => return Ok(Hashed::Vanished),
            Err(e) => return Err(e),
        };
        let before = match DiskStat::from_metadata(&file.metadata()?) {
            Some(s) if s.kind == Kind::File => s,
            _ => return Ok(Hashed::Vanished),
        };
        let read = if before.size >= PARALLEL_MIN && cores() > 1 {
            read_in_parallel(&file, before, previous, seen, progress, stop)
        } else {
            read_in_order(&mut file, before, &mut buf, progress, stop)
        };
        let (chunks, total) = match read {
            Ok(read) => read,
            Err(Cut::Changing) => return Ok(Hashed::Changing),
            Err(Cut::Stopped) => return Ok(Hashed::Stopped),
            Err(Cut::Io(e)) => return Err(e),
        };
        let after = DiskStat::from_metadata(&file.metadata()?);
        let now = match std::fs::symlink_metadata(abs) {
            Ok(m) => DiskStat::from_metadata(&m),
            Err(e) if gone(&e) => return Ok(Hashed::Vanished),
            Err(e) => return Err(e),
        };
        if after == Some(before) && now == Some(before) && total == before.size {
            let chunks: Vec<ChunkRef> = chunks
                .into_iter()
                .map(|c| ChunkRef {
                    len: c.len,
                    hash: c.hash,
                })
                .collect();
            let hash = file_hash_of(&chunks);
            return Ok(Hashed::Done {
                stat: before,
                chunks,
                hash,
            });
        }
    }
    Ok(Hashed::Changing)
}

/// Files from this size on are chunked on every core: a single large file otherwise kept one core
/// busy for ~0.8 s per GiB while the other idled. From this size on too, a changed file's
/// previous chunks are checked before its bytes are chunked anew.
pub const PARALLEL_MIN: u64 = 32 << 20;

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup's CPU
/// quota from /sys at every call, and it is asked per large file and per group of small files.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Why a read ended early.
enum Cut {
    /// The file changed under the reader (a fresh stat differs, or it ended early).
    Changing,
    Stopped,
    Io(io::Error),
}

/// Checks made before each read of a file: stop, and the file still as first stat'ed (a file
/// still being written is given up on at once, before another MiB is hashed: an fstat costs
/// nothing next to that, and the folder looks again once the writes may be over — reading up
/// to 16 MiB of it three times at every write event took a core away from the writer).
fn still(file: &File, before: DiskStat, stop: &AtomicBool) -> Result<(), Cut> {
    if stop.load(Ordering::Relaxed) {
        return Err(Cut::Stopped);
    }
    match file.metadata() {
        Ok(m) if DiskStat::from_metadata(&m) == Some(before) => Ok(()),
        Ok(_) => Err(Cut::Changing),
        Err(e) => Err(Cut::Io(e)),
    }
}

/// Reads to the end through one chunker: the chunks and the bytes read.
fn read_in_order(
    file: &mut File,
    before: DiskStat,
    buf: &mut Vec<u8>,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(Vec<shoal_core::chunk::Chunk>, u64), Cut> {
    // Sized to the file (a 1 MiB zeroed buffer per small file was a sixth of a sender's CPU).
    let want = (before.size.saturating_add(4096) as usize).min(READ_SIZE);
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut hasher = ChunkHasher::new();
    let mut total = 0u64;
    let mut reads = 0u32;
    loop {
        reads += 1;
        if reads > 1 {
            still(file, before, stop)?;
        } else if stop.load(Ordering::Relaxed) {
            return Err(Cut::Stopped);
        }
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Cut::Io(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        progress.add_bytes(n as u64);
    }
    Ok((hasher.finish(), total))
}

/// Reads a large file on every core ([`chunk_in_parallel`], or [`rechunk`] from its previous
/// chunks): the same chunks as in order.
fn read_in_parallel(
    file: &File,
    before: DiskStat,
    previous: Option<&[Chunk]>,
    seen: Option<&Seen<'_>>,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(Vec<shoal_core::chunk::Chunk>, u64), Cut> {
    // Bytes read more than once (stitches between segments; old chunks checked, then chunked
    // anew) count once: progress never passes the file's size.
    let counted = AtomicU64::new(0);
    let read = |at: u64, buf: &mut [u8]| -> Result<(), Cut> {
        still(file, before, stop)?;
        match file.read_exact_at(buf, at) {
            Ok(()) => {
                let n = buf.len() as u64;
                let was = counted
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                        Some((c + n).min(before.size))
                    })
                    .unwrap_or(before.size);
                progress.add_bytes((was + n).min(before.size) - was);
                Ok(())
            }
            // Shorter than it was when stat'ed: it is being changed.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Cut::Changing),
            Err(e) => Err(Cut::Io(e)),
        }
    };
    let seen = seen.unwrap_or(&|_| {});
    let chunks = match previous {
        Some(old) if !old.is_empty() => rechunk_seen(old, before.size, cores(), &read, seen)?,
        _ => chunk_in_parallel_seen(before.size, cores(), &read, seen)?,
    };
    Ok((chunks, before.size))
}

/// [`file_hash`] over the index's chunk form.
pub fn file_hash_of(chunks: &[ChunkRef]) -> Hash {
    let mut offset = 0u64;
    let full: Vec<shoal_core::chunk::Chunk> = chunks
        .iter()
        .map(|c| {
            let chunk = shoal_core::chunk::Chunk {
                offset,
                len: c.len,
                hash: c.hash,
            };
            offset += u64::from(c.len);
            chunk
        })
        .collect();
    file_hash(&full)
}

fn gone(e: &io::Error) -> bool {
    // ELOOP: the path became a symlink (O_NOFOLLOW); ENOTDIR: a parent became a file.
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || e.raw_os_error() == Some(libc::ELOOP)
}
