//! The index's queries and its consistency under every sequence of writes.
#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

use proptest::prelude::*;
use shoal_core::chunk::Hash;
use shoal_core::secret::ShareId;
use shoal_core::version::{DeviceId, VersionVector};
use shoal_index::{ChunkRef, DiskStat, Entry, Index, Kind, LocalStat};

const SHARE: ShareId = ShareId([7; 16]);
const DEV: DeviceId = DeviceId(0x0102_0304_0506_0708);

fn h(n: u8) -> Hash {
    Hash([n; 32])
}

fn file(chunks: &[u8]) -> Entry {
    let mut version = VersionVector::new();
    version.bump(DEV, 1);
    Entry {
        kind: Kind::File,
        deleted: false,
        size: chunks.len() as u64 * 10,
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        local: LocalStat {
            inode: 42,
            ctime_ns: 5,
        },
        chunks: chunks
            .iter()
            .map(|&c| ChunkRef {
                len: 10,
                hash: h(c),
            })
            .collect(),
        hash: h(200),
        target: None,
        version,
        modified_by: DEV,
        seq: 0,
    }
}

fn dir() -> Entry {
    Entry {
        kind: Kind::Dir,
        size: 0,
        chunks: Vec::new(),
        ..file(&[])
    }
}

fn open(dir: &tempfile::TempDir) -> Index {
    Index::open(&dir.path().join("ns.redb"), &SHARE).expect("open index")
}

#[test]
fn put_get_and_sequence_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    assert_eq!(index.max_seq(), 0);
    assert!(index.get("a").unwrap().is_none());
    let mut b = index.batch();
    b.put("a", file(&[1, 2]));
    b.put("d", dir());
    assert_eq!(b.commit().unwrap(), 2);
    let a = index.get("a").unwrap().unwrap();
    assert_eq!(a.seq, 1);
    assert_eq!(a.chunks.len(), 2);
    assert_eq!(index.get("d").unwrap().unwrap().seq, 2);

    // Replacing gives a new sequence number and drops the old one from "changes since".
    let mut b = index.batch();
    b.put("a", file(&[3]));
    b.commit().unwrap();
    let changes: Vec<(String, u64)> = index
        .changes_since(0, 100)
        .unwrap()
        .into_iter()
        .map(|(p, e)| (p, e.seq))
        .collect();
    assert_eq!(changes, vec![("d".to_owned(), 2), ("a".to_owned(), 3)]);
    assert_eq!(index.changes_since(2, 100).unwrap().len(), 1);
    assert_eq!(index.changes_since(0, 1).unwrap().len(), 1);
    assert!(index.check().unwrap().is_empty());
}

#[test]
fn an_empty_batch_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    assert_eq!(index.batch().commit().unwrap(), 0);
}

#[test]
fn local_stat_updates_do_not_create_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    let mut b = index.batch();
    b.put("a", file(&[1]));
    b.commit().unwrap();
    let mut b = index.batch();
    b.set_local_stat(
        "a",
        LocalStat {
            inode: 99,
            ctime_ns: 9,
        },
    );
    assert_eq!(b.commit().unwrap(), 1);
    let a = index.get("a").unwrap().unwrap();
    assert_eq!(a.local.inode, 99);
    assert_eq!(a.seq, 1);
}

/// An index, and a namespace root under `tmp` holding the 3,000-byte file `f`: (index, root, f's
/// bytes).
fn with_a_file(tmp: &tempfile::TempDir) -> (Index, std::path::PathBuf, Vec<u8>) {
    let index = open(tmp);
    let root = tmp.path().join("ns");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("f"), &data).unwrap();
    (index, root, data)
}

#[test]
fn a_chunk_is_read_from_an_unchanged_file_and_verified_from_a_changed_one() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (index, root, data) = with_a_file(&tmp);
    let m = std::fs::metadata(root.join("f")).unwrap();
    let mut e = file(&[]);
    e.size = data.len() as u64;
    e.mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    e.local = LocalStat {
        inode: m.ino(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    };
    e.chunks = data
        .chunks(1000)
        .map(|c| ChunkRef {
            len: 1000,
            hash: Hash::of(c),
        })
        .collect();
    let mut b = index.batch();
    b.put("f", e);
    b.commit().unwrap();
    let second = Hash::of(&data[1000..2000]);
    assert_eq!(index.read_chunk(&root, &second).unwrap(), &data[1000..2000]);

    // Rewritten with other bytes of the same size: the stat moved, the bytes are hashed, and
    // the old chunk is no longer there.
    let mut other = data.clone();
    other[1500] ^= 1;
    std::fs::write(root.join("f"), &other).unwrap();
    assert_eq!(index.read_chunk(&root, &second), None);
    let first = Hash::of(&data[..1000]);
    assert_eq!(index.read_chunk(&root, &first).unwrap(), &data[..1000]);
}

#[test]
fn a_previewed_chunk_is_served_from_its_live_file_unhashed_while_its_stat_holds() {
    use shoal_core::chunk::Chunk;
    use std::path::Path;
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let (index, root, data) = with_a_file(&tmp);
    let stat = DiskStat::from_metadata(&std::fs::symlink_metadata(root.join("f")).unwrap());
    let mut chunks: Vec<Chunk> = data
        .chunks(1000)
        .enumerate()
        .map(|(i, c)| Chunk {
            offset: i as u64 * 1000,
            len: 1000,
            hash: Hash::of(c),
        })
        .collect();
    // A chunk the indexer got wrong (it never does; here it shows what is trusted): the bytes
    // at its place are not hashed while the file shows the stat it was found with.
    chunks.push(Chunk {
        offset: 0,
        len: 1000,
        hash: h(9),
    });
    let abs: Arc<Path> = root.join("f").into();
    // Nobody to preview to: nothing is kept.
    index.preview(&abs, "f", stat.unwrap(), &chunks);
    assert_eq!(index.read_chunk(&root, &chunks[1].hash), None);
    let _peers = index.subscribe_previews();
    index.preview(&abs, "f", stat.unwrap(), &chunks);
    assert_eq!(
        index.read_chunk(&root, &chunks[1].hash).unwrap(),
        &data[1000..2000]
    );
    assert_eq!(index.read_chunk(&root, &h(9)).unwrap(), &data[..1000]);

    // Rewritten with one byte changed: the stat moved, every chunk is hashed as it is read.
    // (File times come from a clock that ticks every few milliseconds: a rewrite within the
    // same tick could keep them.)
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut other = data.clone();
    other[1500] ^= 1;
    std::fs::write(root.join("f"), &other).unwrap();
    assert_eq!(index.read_chunk(&root, &chunks[1].hash), None);
    assert_eq!(index.read_chunk(&root, &h(9)), None);
    assert_eq!(
        index.read_chunk(&root, &chunks[0].hash).unwrap(),
        &data[..1000]
    );
    // Indexed: served from the index's places from then on.
    index.assembled(&abs);
    assert_eq!(index.read_chunk(&root, &chunks[0].hash), None);
}

#[test]
fn chunk_locations_of_a_large_file_follow_its_changes() {
    // Large entries are kept decoded between lookups; every commit must show through.
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    let big: Vec<u8> = (0..200).collect();
    let mut b = index.batch();
    b.put("big", file(&big));
    b.commit().unwrap();
    let at = |n: u8| -> Vec<(String, u64)> {
        let mut found: Vec<_> = index
            .chunk_locations(&h(n))
            .unwrap()
            .into_iter()
            .map(|l| (l.path, l.offset))
            .collect();
        found.sort();
        found
    };
    assert_eq!(at(7), [("big".to_owned(), 70)]);
    assert_eq!(at(7), [("big".to_owned(), 70)]);

    // The same chunks moved by one place, and chunk 7 twice.
    let mut moved: Vec<u8> = std::iter::once(250).chain(0..200).collect();
    moved.push(7);
    let mut b = index.batch();
    b.put("big", file(&moved));
    b.commit().unwrap();
    assert_eq!(at(7), [("big".to_owned(), 80), ("big".to_owned(), 2010)]);
    assert_eq!(at(250), [("big".to_owned(), 0)]);

    let mut gone = file(&[]);
    gone.deleted = true;
    let mut b = index.batch();
    b.put("big", gone);
    b.commit().unwrap();
    assert!(at(7).is_empty());
    assert!(index.check().unwrap().is_empty());
}

#[test]
fn chunk_locations_find_live_copies_with_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    let mut b = index.batch();
    b.put("a", file(&[1, 2, 3]));
    b.put("b", file(&[3]));
    b.commit().unwrap();
    let mut found = index.chunk_locations(&h(3)).unwrap();
    found.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].path.as_str(), found[0].offset), ("a", 20));
    assert_eq!((found[1].path.as_str(), found[1].offset), ("b", 0));
    assert!(index.chunk_locations(&h(9)).unwrap().is_empty());

    // A tombstone holds no chunks.
    let mut gone = file(&[]);
    gone.deleted = true;
    let mut b = index.batch();
    b.put("b", gone);
    b.commit().unwrap();
    assert_eq!(index.chunk_locations(&h(3)).unwrap().len(), 1);
    assert!(index.check().unwrap().is_empty());
}

#[test]
fn stamps_under_a_prefix_take_the_path_and_its_subtree_only() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    let mut b = index.batch();
    for p in ["a", "a/x", "a/y/z", "a-b", "ab", "a0", "b"] {
        b.put(p, file(&[1]));
    }
    b.commit().unwrap();
    let under: Vec<String> = index
        .stamps_under("a")
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(under, ["a", "a/x", "a/y/z"]);
    assert_eq!(index.stamps_under("").unwrap().len(), 7);
    assert_eq!(index.stamps_under("a/y").unwrap().len(), 1);
    assert!(index.stamps_under("c").unwrap().is_empty());
}

#[test]
fn counts_follow_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    let mut b = index.batch();
    b.put("a", file(&[1, 2]));
    b.put("d", dir());
    b.commit().unwrap();
    let c = index.counts().unwrap();
    assert_eq!((c.files, c.dirs, c.deleted, c.bytes), (1, 1, 0, 20));
    let mut gone = file(&[]);
    gone.deleted = true;
    let mut b = index.batch();
    b.put("a", gone);
    b.commit().unwrap();
    let c = index.counts().unwrap();
    assert_eq!((c.files, c.dirs, c.deleted, c.bytes), (0, 1, 1, 0));
}

#[test]
fn reopening_keeps_everything_and_another_secret_starts_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let index = open(&tmp);
        let mut b = index.batch();
        b.put("a", file(&[1]));
        b.put("b", file(&[2]));
        b.commit().unwrap();
    }
    let index = open(&tmp);
    assert_eq!(index.max_seq(), 2);
    assert!(index.get("b").unwrap().is_some());
    drop(index);

    let other = Index::open(&tmp.path().join("ns.redb"), &ShareId([8; 16])).unwrap();
    assert_eq!(other.max_seq(), 0);
    assert!(other.get("a").unwrap().is_none());
}

#[test]
fn subscribers_see_each_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    let rx = index.subscribe();
    let mut b = index.batch();
    b.put("a", file(&[1]));
    b.commit().unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow(), 1);
}

#[test]
fn a_damaged_file_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ns.redb");
    std::fs::write(&path, b"this is not a redb database at all, not even close").unwrap();
    let err = Index::open(&path, &SHARE).unwrap_err();
    assert!(err.to_string().contains("ns.redb"), "{err}");
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Touch(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12, proptest::collection::vec(0u8..6, 0..4)).prop_map(|(p, c)| Op::Put(p, c)),
        (0u8..12).prop_map(Op::Delete),
        (0u8..12).prop_map(Op::Touch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever is written, in whatever batches, the tables agree and "changes since" lists every
    /// path exactly once, in sequence order.
    #[test]
    fn tables_stay_consistent(batches in proptest::collection::vec(proptest::collection::vec(op(), 0..8), 1..6)) {
        let tmp = tempfile::tempdir().unwrap();
        let index = open(&tmp);
        for ops in batches {
            let mut b = index.batch();
            for op in ops {
                match op {
                    Op::Put(p, c) => b.put(&format!("f{p}"), file(&c)),
                    Op::Delete(p) => {
                        let mut e = file(&[]);
                        e.deleted = true;
                        b.put(&format!("f{p}"), e);
                    }
                    Op::Touch(p) => b.set_local_stat(&format!("f{p}"), LocalStat { inode: 1, ctime_ns: 2 }),
                }
            }
            b.commit().unwrap();
            prop_assert_eq!(index.check().unwrap(), Vec::<String>::new());
        }
        let changes = index.changes_since(0, usize::MAX).unwrap();
        let seqs: Vec<u64> = changes.iter().map(|(_, e)| e.seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(&seqs, &sorted);
        prop_assert_eq!(changes.len(), index.stamps_under("").unwrap().len());
    }
}

#[test]
fn only_commits_that_may_change_what_is_needed_wake_the_puller() {
    let tmp = tempfile::tempdir().unwrap();
    let index = open(&tmp);
    const PEER_DEV: DeviceId = DeviceId(99);
    let peer = [9u8; 32];
    let with = |bumps: &[DeviceId]| {
        let mut e = file(&[1]);
        for &d in bumps {
            e.version.bump(d, 0);
        }
        e
    };
    let mut woken = index.subscribe_needs();
    let mut woke = || {
        let changed = woken.has_changed().unwrap();
        woken.borrow_and_update();
        changed
    };
    let theirs = |path: &str, e: Entry| index.put_remote(&peer, &[(path.to_owned(), e)]).unwrap();
    let ours = |path: &str, e: Entry| {
        let mut b = index.batch();
        b.put(path, e);
        b.commit().unwrap();
    };
    // Ours, no peer has it: nothing to pull.
    ours("a", file(&[1]));
    assert!(!woke());
    // The peer now has what this node has: nothing to do here.
    theirs("a", file(&[1]));
    assert!(!woke());
    // A path this node does not have, or a version it has not seen: the puller looks.
    theirs("b", file(&[2]));
    assert!(woke());
    theirs("a", with(&[PEER_DEV]));
    assert!(woke());
    // Back to a version this node has seen; the one replaced was not: what was needed may be
    // gone, so the puller looks again.
    theirs("a", file(&[1]));
    assert!(woke());
    theirs("a", file(&[1]));
    assert!(!woke());
    // An edit of ours past what the peer has: nothing to pull.
    ours("a", with(&[DEV]));
    assert!(!woke());
    // Recording what was pulled: the need it met is gone.
    ours("b", with(&[DEV]));
    assert!(woke());
    ours("b", with(&[DEV, DEV]));
    assert!(!woke());
    // The peer edits; our own edit meanwhile is concurrent with it: a conflict to settle.
    theirs("a", with(&[PEER_DEV]));
    assert!(woke());
    ours("a", with(&[DEV, DEV, DEV]));
    assert!(woke());
    // Outside the index: the ignore list changed.
    index.needs_changed();
    assert!(woke());
}

/// A tmpfs of `size` mounted for one test, or `None` where this process may not mount one.
struct Tmpfs {
    mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { mnt, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
    }
}

#[test]
fn a_write_that_failed_for_a_full_disk_does_not_break_the_index_for_good() {
    let Some(disk) = Tmpfs::mount("4m") else {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    };
    let index = Index::open(&disk.mnt.join("ns.redb"), &SHARE).unwrap();
    let mut b = index.batch();
    b.put("before", file(&[1]));
    b.commit().unwrap();

    // Fill the disk, then write more than the index file has room for.
    let filler = disk.mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5au8; 64 << 10];
        while f.write_all(&block).is_ok() {}
    }
    let many: Vec<u8> = (0..=255).collect();
    let mut failed = None;
    for round in 0..64 {
        let mut b = index.batch();
        for i in 0..64 {
            b.put(&format!("during/{round}/{i}"), file(&many));
        }
        if let Err(e) = b.commit() {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("a full disk never failed a commit");
    assert!(failed.is_storage_failure(), "{failed}");

    // Room again: the index works without being reopened by hand, and kept what it had.
    std::fs::remove_file(&filler).unwrap();
    let mut b = index.batch();
    b.put("after", file(&[2]));
    b.commit().unwrap();
    assert!(index.get("before").unwrap().is_some());
    assert!(index.get("after").unwrap().is_some());
    assert!(index.check().unwrap().is_empty());
}
