//! The scanner: brings the index of a namespace (or of some of its subtrees) up to date with the disk.
//!
//! A scan walks each subtree in parallel, merges the walk with the index entries of the same subtree
//! (both sorted by path), and from the difference derives what to record: new and changed paths get a
//! new entry with a bumped version, paths that vanished get a tombstone, files that look changed are
//! hashed across all cores. Unchanged files are recognised by (kind, size, mtime, mode, inode, ctime)
//! and never read. Work is committed in batches, so a long scan shows progress in the index and a
//! kill loses at most the last batch.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::Serialize;
use shoal_core::chunk::Hash;
use shoal_core::ignore::IgnoreList;
use shoal_core::version::DeviceId;
use shoal_index::{Batch, ChunkRef, Entry, Index, IndexError, Kind, Stamp};
use tracing::{debug, info, warn};

use crate::hash::{Hashed, hash_file};
use crate::progress::Progress;
use crate::walk::{DiskEntry, DiskStat, Filter, Unreadable, abs, walk};

/// Entries per index transaction, and the longest a batch stays uncommitted.
const BATCH_ENTRIES: usize = 2_000;
const BATCH_AGE: Duration = Duration::from_millis(500);
/// Files hashed in parallel per round (bounded so a round's results fit in memory and the stop
/// flag is checked often).
const HASH_ROUND_FILES: usize = 512;
const HASH_ROUND_BYTES: u64 = 256 << 20;
/// How often a long scan logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The ignore list's place in a namespace.
pub const IGNORE_FILE: &str = ".sync/IgnoreList";

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the namespace directory {} is missing", .0.display())]
    RootMissing(PathBuf),
}

/// What a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub new: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub hashed_bytes: u64,
    /// Files still being written, or that changed while read: the folder looks at them again once
    /// they may be done. Shown as their number.
    #[serde(rename = "changing", serialize_with = "count")]
    pub changing: Vec<String>,
}

fn count<S: serde::Serializer>(paths: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(paths.len() as u64)
}

impl ScanReport {
    pub fn recorded(&self) -> u64 {
        self.new + self.changed + self.deleted
    }
}

/// What a scan does with a large file that looks like it is still being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Busy {
    /// Reads it anyway (full scans: whoever asked wants every file recorded).
    Read,
    /// Reports it as changing without reading it (scans of changed paths: the folder looks again).
    Defer,
}

/// A file at least this large whose inode changed less than [`BUSY_AGE`] ago is taken to be still
/// being written: reading it would be wasted, and slow the writer down.
const BUSY_SIZE: u64 = 4 << 20;
const BUSY_AGE: Duration = Duration::from_millis(20);

/// True for a large file whose inode (ctime, which no one can set, unlike mtime) changed in the
/// last [`BUSY_AGE`] before `wall`.
fn being_written(stat: &DiskStat, wall: SystemTime) -> bool {
    written_within(stat, wall, BUSY_AGE)
}

/// True for a large file whose inode changed in the last `quiet` before `wall`.
fn written_within(stat: &DiskStat, wall: SystemTime, quiet: Duration) -> bool {
    let Ok(now) = wall.duration_since(UNIX_EPOCH) else {
        return false;
    };
    let age = i128::try_from(now.as_nanos()).unwrap_or(i128::MAX) - i128::from(stat.local.ctime_ns);
    stat.size >= BUSY_SIZE && (0..quiet.as_nanos() as i128).contains(&age)
}

/// True when `abs` is a large file that changed less than `quiet` ago: still being written, so
/// reading it now would most likely be given up on half-way.
pub fn busy_within(abs: &Path, quiet: Duration) -> bool {
    std::fs::symlink_metadata(abs)
        .ok()
        .and_then(|m| DiskStat::from_metadata(&m))
        .is_some_and(|stat| written_within(&stat, SystemTime::now(), quiet))
}

/// Keeps one namespace's index equal to its disk.
#[derive(Debug)]
pub struct Scanner {
    root: PathBuf,
    index: Arc<Index>,
    device: DeviceId,
    ignore: RwLock<IgnoreList>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    /// Held by a scan from reading the disk to committing, and by the puller while it replaces
    /// files and records them: a scan never sees a file the puller wrote but has not yet recorded
    /// (it would take it for a local edit).
    exclusive: Mutex<()>,
    /// Full scans completed: the index describes the whole disk once this is at least 1.
    full_scans: AtomicU64,
}

enum Action {
    /// Disk has it and it differs (or the index lacks it); files still need hashing.
    Record(DiskEntry),
    /// The index has it live; the disk does not.
    Tombstone(String),
}

impl Scanner {
    pub fn new(root: PathBuf, index: Arc<Index>, device: DeviceId) -> Scanner {
        Scanner {
            root,
            index,
            device,
            ignore: RwLock::new(IgnoreList::default().with_defaults()),
            progress: Arc::new(Progress::default()),
            stop: Arc::new(AtomicBool::new(false)),
            exclusive: Mutex::new(()),
            full_scans: AtomicU64::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Set to make a running scan stop soon (between files, or inside a big file's read loop).
    pub fn stop_flag(&self) -> &Arc<AtomicBool> {
        &self.stop
    }

    /// (Re)reads `.sync/IgnoreList`; a missing file means no user rules. Returns the number of rules.
    pub fn load_ignore(&self) -> usize {
        let path = self.root.join(IGNORE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                warn!(file = %path.display(), "cannot read the ignore list, keeping the current one: {e}");
                return self.read_ignore().len();
            }
        };
        let (list, warnings) = IgnoreList::parse(&text);
        for w in warnings {
            warn!(file = %path.display(), "{w}");
        }
        let n = list.len();
        *self.ignore.write().unwrap_or_else(|p| p.into_inner()) = list.with_defaults();
        // Peers' files no longer ignored are wanted now (and newly ignored ones no longer).
        self.index.needs_changed();
        n
    }

    fn read_ignore(&self) -> std::sync::RwLockReadGuard<'_, IgnoreList> {
        self.ignore.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Scans the whole namespace, reporting progress.
    pub fn scan_all(&self) -> Result<ScanReport, ScanError> {
        if !self.root.is_dir() {
            return Err(ScanError::RootMissing(self.root.clone()));
        }
        self.progress.begin();
        let started = Instant::now();
        let result = self.scan_roots(&[String::new()], Busy::Read);
        self.progress.end();
        release_memory();
        if result.is_ok() {
            self.full_scans.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(r) = &result {
            let counts = self.index.counts()?;
            info!(
                root = %self.root.display(),
                files = counts.files,
                bytes = counts.bytes,
                new = r.new, changed = r.changed, deleted = r.deleted,
                hashed_mb = r.hashed_bytes / 1_000_000,
                secs = format_args!("{:.2}", started.elapsed().as_secs_f64()),
                "scan done"
            );
        }
        result
    }

    /// Scans the given namespace-relative paths (files or directories, present or gone).
    pub fn scan(&self, paths: &[String]) -> Result<ScanReport, ScanError> {
        if !self.root.is_dir() {
            return Err(ScanError::RootMissing(self.root.clone()));
        }
        self.scan_roots(&coalesce(minimal_roots(paths)), Busy::Defer)
    }

    /// Keeps scans out while held: for whoever else writes files into the namespace and records them
    /// (the puller).
    pub fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.exclusive.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True for paths this node neither records nor takes from peers: reserved, temporary or
    /// ignored (by `.sync/IgnoreList` or the built-in patterns), themselves or by a parent.
    pub fn skips(&self, path: &str, is_dir: bool) -> bool {
        let ignore = self.read_ignore();
        Filter { ignore: &ignore }.skips_with_parents(path, is_dir)
    }

    /// How many full scans have completed (0: the index may not know every file on disk yet).
    pub fn full_scans(&self) -> u64 {
        self.full_scans.load(Ordering::Relaxed)
    }

    /// The device this node records its changes as.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    fn scan_roots(&self, roots: &[String], busy: Busy) -> Result<ScanReport, ScanError> {
        let _exclusive = self.exclusive();
        let mut report = ScanReport::default();
        let mut actions = Vec::new();
        let mut unreadable = Unreadable::default();
        {
            let ignore = self.read_ignore();
            let filter = Filter { ignore: &ignore };
            for root in roots {
                let (disk, bad) = self.read_disk(root, &filter)?;
                unreadable.0.extend(bad.0);
                let indexed = self.index.stamps_under(root)?;
                diff(
                    &disk,
                    &indexed,
                    &unreadable,
                    &filter,
                    &mut actions,
                    &mut report,
                );
            }
        }
        self.apply(actions, busy, &mut report)?;
        Ok(report)
    }

    /// The disk side of one root: the root itself (unless it is the namespace) and what is under it.
    fn read_disk(
        &self,
        root: &str,
        filter: &Filter<'_>,
    ) -> Result<(Vec<DiskEntry>, Unreadable), ScanError> {
        if root.is_empty() {
            return Ok(walk(&self.root, "", filter));
        }
        let meta = match std::fs::symlink_metadata(abs(&self.root, root)) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok((Vec::new(), Unreadable::default()));
            }
            Err(e) => {
                warn!(
                    path = root,
                    "cannot stat, leaving its index entry as it is: {e}"
                );
                return Ok((Vec::new(), Unreadable(vec![root.to_owned()])));
            }
        };
        let Some(stat) = DiskStat::from_metadata(&meta) else {
            return Ok((Vec::new(), Unreadable::default()));
        };
        if filter.skips_with_parents(root, stat.kind == Kind::Dir) {
            // Ignored paths are neither recorded nor tombstoned.
            return Ok((Vec::new(), Unreadable(vec![root.to_owned()])));
        }
        let mut out = vec![DiskEntry {
            path: root.to_owned(),
            stat,
        }];
        let mut bad = Unreadable::default();
        if stat.kind == Kind::Dir {
            let (under, b) = walk(&self.root, root, filter);
            out.extend(under);
            bad = b;
        }
        Ok((out, bad))
    }

    /// Hashes what needs it and records every action, in batches.
    fn apply(
        &self,
        actions: Vec<Action>,
        busy: Busy,
        report: &mut ScanReport,
    ) -> Result<(), ScanError> {
        let mut batch = self.index.batch();
        let mut last_commit = Instant::now();
        let mut last_log = Instant::now();
        let mut to_hash = Vec::new();
        let now = unix_secs();
        // Served from the files themselves while previewed; from the index once committed.
        let previewed = Previewed {
            index: &self.index,
            files: Mutex::new(Vec::new()),
        };
        for action in actions {
            match action {
                Action::Tombstone(path) => {
                    if let Some(old) = self.index.get(&path)?
                        && old.is_live()
                    {
                        batch.put(&path, self.tombstone(&old, now));
                        report.deleted += 1;
                    }
                }
                Action::Record(d) => match d.stat.kind {
                    Kind::File => to_hash.push(d),
                    Kind::Dir => self.record(
                        &mut batch,
                        &d.path,
                        d.stat,
                        Vec::new(),
                        Hash([0; 32]),
                        None,
                        now,
                        report,
                    )?,
                    Kind::Symlink => match std::fs::read_link(abs(&self.root, &d.path)) {
                        Ok(target) => match target.to_str() {
                            Some(t) => {
                                let hash = Hash::of(t.as_bytes());
                                self.record(
                                    &mut batch,
                                    &d.path,
                                    d.stat,
                                    Vec::new(),
                                    hash,
                                    Some(t.to_owned()),
                                    now,
                                    report,
                                )?;
                            }
                            None => {
                                warn!(path = %d.path, "skipping a symlink whose target is not valid UTF-8")
                            }
                        },
                        Err(e) => debug!(path = %d.path, "symlink vanished: {e}"),
                    },
                },
            }
            self.maybe_commit(&mut batch, &mut last_commit)?;
        }
        if busy == Busy::Defer {
            // From the stat the walk took: no read, no extra system call.
            let wall = SystemTime::now();
            to_hash.retain(|d| {
                let writing = being_written(&d.stat, wall);
                if writing {
                    report.changing.push(d.path.clone());
                }
                !writing
            });
        }
        self.progress.add_work(
            to_hash.len() as u64,
            to_hash.iter().map(|d| d.stat.size).sum(),
        );
        let mut rest = to_hash.as_slice();
        while !rest.is_empty() {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && n < HASH_ROUND_FILES && (n == 0 || bytes < HASH_ROUND_BYTES) {
                bytes += rest[n].stat.size;
                n += 1;
            }
            let (round, tail) = rest.split_at(n);
            rest = tail;
            let results: Vec<(&DiskEntry, io::Result<Hashed>)> = round
                .par_iter()
                .map(|d| {
                    let previous = self.previous_chunks(d);
                    let at = abs(&self.root, &d.path);
                    // A large new file's chunks are previewed to peers as they are found (only
                    // those read on every core: from PARALLEL_MIN on). Not a changed one's: its
                    // peers hold most of its chunks already, and the preview's hashes would be
                    // most of what goes over the wire (1 byte inserted at the start of 1 GiB:
                    // ~180 kB of previews for one new chunk).
                    //
                    // Nor the chunks this node already holds in a live file: peers in step with
                    // it hold them too, and copy them when the record comes (their fetch ahead
                    // skips them anyway). A new file made mostly of such chunks so far is a copy,
                    // or an edit saved as a new file renamed over the old one: not previewed at
                    // all — its few new chunks fetched ahead would be fetched whole for a path
                    // about to vanish, where the record of the file it replaces asks for the
                    // pieces that differ (1 byte inserted at the start of 1 GiB through a
                    // temporary and a rename: previews and a whole chunk, 0.2–0.4 MB; ~17 kB
                    // without).
                    let large = d.stat.size >= crate::hash::PARALLEL_MIN && previous.is_none();
                    let shared: Option<Arc<Path>> = large.then(|| at.as_path().into());
                    let (found, held) = (AtomicU64::new(0), AtomicU64::new(0));
                    let tell = |chunks: &[shoal_core::chunk::Chunk]| {
                        let Some(file) = &shared else {
                            return;
                        };
                        let new: Vec<shoal_core::chunk::Chunk> = chunks
                            .iter()
                            .filter(|c| !self.index.holds(&c.hash))
                            .copied()
                            .collect();
                        let n = chunks.len() as u64;
                        let found = found.fetch_add(n, Ordering::Relaxed) + n;
                        let k = (chunks.len() - new.len()) as u64;
                        let held = held.fetch_add(k, Ordering::Relaxed) + k;
                        if !new.is_empty() && held * 2 < found {
                            self.index.preview(file, &d.path, d.stat, &new);
                        }
                    };
                    let r = hash_file(
                        &at,
                        previous.as_deref(),
                        large.then_some(&tell as &shoal_core::chunk::Seen<'_>),
                        &self.progress,
                        &self.stop,
                    );
                    if let Some(file) = shared {
                        previewed.add(file);
                    }
                    self.progress.file_done();
                    (d, r)
                })
                .collect();
            for (d, result) in results {
                match result {
                    Ok(Hashed::Done { stat, chunks, hash }) => {
                        report.hashed_bytes += stat.size;
                        self.record(&mut batch, &d.path, stat, chunks, hash, None, now, report)?;
                    }
                    Ok(Hashed::Changing) => {
                        debug!(path = %d.path, "still changing; will look again");
                        report.changing.push(d.path.clone());
                    }
                    Ok(Hashed::Vanished) => {
                        // Gone between the walk and the read: record what is there now.
                        self.scan_later(&mut batch, &d.path, now, report)?;
                    }
                    Ok(Hashed::Stopped) => {}
                    Err(e) => {
                        warn!(path = %d.path, "cannot read, leaving its index entry as it is: {e}")
                    }
                }
            }
            self.maybe_commit(&mut batch, &mut last_commit)?;
            if last_log.elapsed() >= LOG_EVERY {
                last_log = Instant::now();
                let p = self.progress.snapshot();
                info!(
                    root = %self.root.display(),
                    "scanning: {}/{} files, {}/{} MB, {:.0} MB/s",
                    p.files_done, p.files_total, p.bytes_done / 1_000_000, p.bytes_total / 1_000_000,
                    p.bytes_per_s / 1e6
                );
            }
        }
        batch.commit()?;
        Ok(())
    }

    /// A file that vanished or turned into something else between the walk and the read.
    fn scan_later(
        &self,
        batch: &mut Batch<'_>,
        path: &str,
        now: u64,
        report: &mut ScanReport,
    ) -> Result<(), ScanError> {
        if std::fs::symlink_metadata(abs(&self.root, path)).is_err()
            && let Some(old) = self.index.get(path)?
            && old.is_live()
        {
            batch.put(path, self.tombstone(&old, now));
            report.deleted += 1;
        } else {
            report.changing.push(path.to_owned());
        }
        Ok(())
    }

    fn maybe_commit<'a>(
        &'a self,
        batch: &mut Batch<'a>,
        last: &mut Instant,
    ) -> Result<(), ScanError> {
        if batch.len() >= BATCH_ENTRIES || (!batch.is_empty() && last.elapsed() >= BATCH_AGE) {
            std::mem::replace(batch, self.index.batch()).commit()?;
            *last = Instant::now();
        }
        Ok(())
    }

    /// A large file's chunks as last indexed, for the hasher to check before chunking anew (a
    /// 1 MiB change inside a 1 GiB file is then mostly BLAKE3 on both cores, not the gear hash).
    fn previous_chunks(&self, d: &DiskEntry) -> Option<Vec<shoal_core::chunk::Chunk>> {
        if d.stat.size < crate::hash::PARALLEL_MIN {
            return None;
        }
        let old = self.index.get(&d.path).ok()??;
        (old.is_live() && old.kind == Kind::File).then(|| old.chunks_with_offsets().collect())
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        batch: &mut Batch<'_>,
        path: &str,
        stat: DiskStat,
        chunks: Vec<ChunkRef>,
        hash: Hash,
        target: Option<String>,
        now: u64,
        report: &mut ScanReport,
    ) -> Result<(), ScanError> {
        let old = self.index.get(path)?;
        let mut entry = Entry {
            kind: stat.kind,
            deleted: false,
            size: stat.size,
            mode: stat.mode,
            mtime_ns: stat.mtime_ns,
            local: stat.local,
            chunks,
            hash,
            target,
            version: Default::default(),
            modified_by: self.device,
            seq: 0,
        };
        match &old {
            Some(old) if old.is_live() && old.same_content(&entry) => {
                // Same content seen through another inode or ctime: nothing for peers.
                batch.set_local_stat(path, stat.local);
                report.unchanged += 1;
                return Ok(());
            }
            Some(old) => {
                entry.version = old.version.clone();
                if old.is_live() {
                    report.changed += 1;
                } else {
                    report.new += 1;
                }
            }
            None => report.new += 1,
        }
        entry.version.bump(self.device, now);
        batch.put(path, entry);
        Ok(())
    }

    fn tombstone(&self, old: &Entry, now: u64) -> Entry {
        let mut version = old.version.clone();
        version.bump(self.device, now);
        Entry {
            kind: old.kind,
            deleted: true,
            size: 0,
            mode: old.mode,
            mtime_ns: old.mtime_ns,
            local: Default::default(),
            chunks: Vec::new(),
            hash: Hash([0; 32]),
            target: None,
            version,
            modified_by: self.device,
            seq: 0,
        }
    }
}

/// The merge of a sorted walk with the sorted index entries of the same subtree.
fn diff(
    disk: &[DiskEntry],
    indexed: &[(String, Stamp)],
    unreadable: &Unreadable,
    filter: &Filter<'_>,
    actions: &mut Vec<Action>,
    report: &mut ScanReport,
) {
    let (mut i, mut j) = (0, 0);
    loop {
        let d = disk.get(i);
        let x = indexed.get(j);
        match (d, x) {
            (None, None) => break,
            (Some(d), None) => {
                actions.push(Action::Record(d.clone()));
                i += 1;
            }
            (None, Some((path, stamp))) => {
                gone(path, stamp, unreadable, filter, actions);
                j += 1;
            }
            (Some(d), Some((path, stamp))) => match d.path.as_str().cmp(path.as_str()) {
                std::cmp::Ordering::Less => {
                    actions.push(Action::Record(d.clone()));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    gone(path, stamp, unreadable, filter, actions);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if stamp.unchanged(&d.stat) {
                        report.unchanged += 1;
                    } else {
                        actions.push(Action::Record(d.clone()));
                    }
                    i += 1;
                    j += 1;
                }
            },
        }
    }
}

fn gone(
    path: &str,
    stamp: &Stamp,
    unreadable: &Unreadable,
    filter: &Filter<'_>,
    actions: &mut Vec<Action>,
) {
    if stamp.deleted || unreadable.covers(path) {
        return;
    }
    // A path that became ignored is left as it was, not deleted on every peer.
    if filter.skips_with_parents(path, stamp.kind == Kind::Dir) {
        return;
    }
    actions.push(Action::Tombstone(path.to_owned()));
}

/// Sorted, deduplicated roots with every root inside another one dropped (`""` covers everything).
pub fn minimal_roots(paths: &[String]) -> Vec<String> {
    let mut sorted: Vec<String> = paths
        .iter()
        .map(|p| p.trim_matches('/').to_owned())
        .collect();
    sorted.sort();
    sorted.dedup();
    if sorted.first().is_some_and(|p| p.is_empty()) {
        return vec![String::new()];
    }
    let set: std::collections::HashSet<&str> = sorted.iter().map(String::as_str).collect();
    let inside_another = |p: &str| p.match_indices('/').any(|(i, _)| set.contains(&p[..i]));
    sorted
        .iter()
        .filter(|p| !inside_another(p))
        .cloned()
        .collect()
}

/// Changed paths in one directory at which the directory is scanned instead of each path.
const COALESCE_AT: usize = 32;

/// Replaces many changed siblings by their directory: one walk and one index range read instead
/// of one of each per path (after a peer's 10,000 files land, the watcher reports 10,000 paths).
pub fn coalesce(roots: Vec<String>) -> Vec<String> {
    let parent = |p: &str| p.rfind('/').map_or(String::new(), |i| p[..i].to_owned());
    let mut per_parent: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &roots {
        *per_parent.entry(parent(r)).or_default() += 1;
    }
    if per_parent.values().all(|&n| n < COALESCE_AT) {
        return roots;
    }
    let merged: Vec<String> = roots
        .into_iter()
        .map(|r| {
            let p = parent(&r);
            if per_parent.get(&p).is_some_and(|&n| n >= COALESCE_AT) {
                p
            } else {
                r
            }
        })
        .collect();
    minimal_roots(&merged)
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Returns free heap memory to the system. A full scan allocates in proportion to the folder (the
/// walk's listing, the diff) and glibc keeps freed memory for reuse, so without this a node at rest
/// would hold its peak; the daemon also calls it periodically after sync bursts.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code, reason = "malloc_trim has no safe wrapper")]
    // SAFETY: malloc_trim takes no pointers; it only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The large files a scan previewed to peers while reading them ([`Index::preview`]): their
/// chunks are served from the files until the scan ends, by when the index holds them.
struct Previewed<'a> {
    index: &'a Index,
    files: Mutex<Vec<Arc<Path>>>,
}

impl Previewed<'_> {
    fn add(&self, file: Arc<Path>) {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(file);
    }
}

impl Drop for Previewed<'_> {
    fn drop(&mut self) {
        let files = std::mem::take(self.files.get_mut().unwrap_or_else(|p| p.into_inner()));
        for file in files {
            self.index.assembled(&file);
        }
    }
}
