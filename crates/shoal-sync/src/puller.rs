//! The puller: one task per namespace that makes the disk what the plan says, in explicit stages.
//!
//! 1. **Versions**: paths whose content this node already has only get the resolved version.
//! 2. **Directories**, parents first.
//! 3. **Files and symlinks**, in groups (at most [`GROUP_FILES`] files, [`GROUP_BYTES`] of large
//!    files or [`GROUP_SMALL_BYTES`] of small ones). Small files (at most [`SMALL_FILE`]) are
//!    gathered in memory and written one after another by one thread — far cheaper than a task
//!    per file, and kinder to directory locks; large files are streamed to disk as below.
//!    - *copier*: a temporary file `.~shoal.<name>.<hash>.tmp` in the target's directory is
//!      filled with the chunks this node already has anywhere (a rename or a copy costs no
//!      network), and with chunks a previous attempt already wrote (resume after a restart); a
//!      large new file may have been fetched ahead of its record, on its source's preview, and
//!      that temporary becomes this one (see [`ahead`]);
//!    - *fetcher*: the missing chunks are requested from every peer that announced this
//!      content, many at once (the peer layer spreads them over the least busy peers);
//!      every chunk is verified (BLAKE3) before it is written;
//!    - *finisher*: mode and mtime set, one `syncfs` for the whole group, then — holding the
//!      scanner out — each target is checked to be still what the plan saw (a local edit since
//!      is never clobbered: the file is left alone and the next round resolves it as a
//!      conflict), the replaced file kept as a conflict copy or moved to the archive, the
//!      temporary renamed over the target, the directories fsync'd, and the index updated in
//!      one transaction. A group is finished while the next one is assembled.
//!
//!    Large files come last, and while they are pulled whatever changes meanwhile (a peer's new
//!    small file, a rename, a deletion) is planned again and pulled beside them ([`meanwhile`]);
//!    their chunk requests are paced to about a second of what comes back ([`crate::pace`]), so
//!    a small file's request does not queue behind megabytes of them at a peer.
//! 4. **Deletions**, children first; deleted files go to the archive.
//!
//! Every path is made, renamed or removed at only once the directories on its way are seen to be
//! real ones inside the namespace ([`crate::beneath`]): never through a symlink.
//!
//! Anything that fails (no peer has a chunk yet, a directory not empty) is retried with backoff;
//! partial data stays in hidden temporary files and is never visible under the target's name.
//!
//! A full disk is not retried blindly: before a group is assembled every file is checked to fit
//! (what its temporary does not hold yet, keeping [`space::margin`] free), and `ENOSPC`/`EDQUOT`
//! from the copier, fetcher or finisher is recognised. Either way the namespace is
//! [`SyncState::Paused`] with the reason ([`DiskFull`]), the free space is polled every
//! [`SPACE_POLL`], and the round is planned again as soon as the smallest file left fits.
//! Temporaries of wanted content are kept (resuming must not fetch them again); only
//! temporaries of content no longer wanted are deleted then (see [`remove_stale_temporaries`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use serde::Serialize;
use shoal_core::chunk::{Chunk, Hash};
use shoal_core::ignore::TEMP_PREFIX;
use shoal_core::resolve::conflict_name;
use shoal_index::{Entry, Index, Kind, PeerKey, Stamp};
use shoal_scan::walk::DiskStat;
use shoal_scan::{Scanner, WriteBehind};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::beneath;
use crate::pace::Pace;
use crate::plan::{Need, plan};
use crate::space::{self, DiskFull};

#[path = "ahead.rs"]
mod ahead;

/// Files finished together (one `syncfs`, one index transaction).
pub const GROUP_FILES: usize = 1024;
/// Bytes assembled before a group is finished.
pub const GROUP_BYTES: u64 = 256 << 20;
/// Bytes of small files held in memory for one group.
pub const GROUP_SMALL_BYTES: u64 = 16 << 20;
/// Files up to this size are assembled in memory.
pub const SMALL_FILE: u64 = 256 << 10;
/// Files assembled at once.
const FILES_AT_ONCE: usize = 32;
/// Chunk requests in flight per namespace.
const FETCHES_AT_ONCE: usize = 64;
/// Attempts per chunk before the file is left for the next round.
const FETCH_ATTEMPTS: usize = 3;
/// How often the free space is looked at while paused for a full disk.
pub const SPACE_POLL: Duration = Duration::from_secs(2);
/// Paused for a full disk, the round is tried again after this even if the free space did not
/// seem to change (a quota, `EDQUOT`, is not visible in the file system's free space).
const PAUSED_RETRY: Duration = Duration::from_secs(60);
/// What a directory, a rename or an index transaction that failed for want of space is taken to
/// need (the file system does not say).
const METADATA_BYTES: u64 = 64 << 10;
/// Where replaced and deleted files are kept (BitTorrent Sync's `.sync/Archive`).
pub const ARCHIVE_DIR: &str = ".sync/Archive";

/// A future resolving to a chunk's bytes as a peer sent them (unverified).
pub type Fetching = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Where chunks this node lacks come from (the peer layer; a test double in tests).
pub trait ChunkSource: Send + Sync + 'static {
    /// Fetches chunk `hash` from one of `sources` (or from a peer that announced it has it).
    fn fetch(&self, hash: Hash, sources: Vec<PeerKey>) -> Fetching;

    /// [`ChunkSource::fetch`] of a chunk of `len` bytes where this node holds `near` (what was in
    /// its place before the file changed): only the pieces that differ need cross the network.
    /// The bytes are checked as for `fetch`. By default, a plain fetch.
    fn fetch_near(&self, hash: Hash, sources: Vec<PeerKey>, near: Vec<u8>, len: u32) -> Fetching {
        let _ = (near, len);
        self.fetch(hash, sources)
    }

    /// Tells the peers that this node now holds `hashes` (chunks of files still being
    /// assembled): peers pulling the same files may ask it for them. Called from a blocking
    /// thread (the file's writer); may wait for the peer layer.
    fn have(&self, hashes: Vec<Hash>) {
        let _ = hashes;
    }
}

/// What a puller needs.
pub struct PullerConfig {
    /// The namespace's name, for logs.
    pub name: String,
    /// The namespace's scanner: its root, its index, and the lock that keeps scans out while
    /// files are replaced.
    pub scanner: Arc<Scanner>,
    pub source: Arc<dyn ChunkSource>,
    /// Move replaced and deleted files to `.sync/Archive/` (`use_sync_trash`).
    pub archive: bool,
    /// How long archived files are kept (`sync_trash_ttl`).
    pub archive_keep: Duration,
}

impl std::fmt::Debug for PullerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullerConfig")
            .field("name", &self.name)
            .field("archive", &self.archive)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// Nothing to do: in sync with every peer's announced state.
    Idle,
    Syncing,
    /// The last round left work undone (see `error`); it is retried.
    Retrying,
    /// The disk holding the namespace is full (see `disk_full`): nothing more is written until
    /// there is room again, which is polled for; then syncing resumes by itself.
    Paused,
}

/// What the puller is doing, for `ctl status`.
#[derive(Clone, Debug, Serialize)]
pub struct SyncStatus {
    pub state: SyncState,
    /// Paths still to change in this round, and the bytes they may need.
    pub files_left: u64,
    pub bytes_left: u64,
    /// Bytes brought in this round (fetched or copied) and the rate.
    pub bytes_done: u64,
    pub bytes_per_s: f64,
    /// Since the daemon started: bytes fetched from peers, and bytes reused from local files.
    pub fetched_bytes: u64,
    pub copied_bytes: u64,
    /// Large new files being fetched ahead of their records (see [`ahead`]), and the bytes of
    /// them written so far.
    pub ahead_files: u64,
    pub ahead_bytes: u64,
    /// Files replaced from peers since the daemon started, and conflict copies made.
    pub files_pulled: u64,
    pub conflicts: u64,
    /// Why the last round left work undone.
    pub error: Option<String>,
    /// Set while paused for a full disk: how much is needed, how much is free, where.
    pub disk_full: Option<DiskFull>,
}

impl Default for SyncStatus {
    fn default() -> Self {
        SyncStatus {
            state: SyncState::Idle,
            files_left: 0,
            bytes_left: 0,
            bytes_done: 0,
            bytes_per_s: 0.0,
            fetched_bytes: 0,
            copied_bytes: 0,
            ahead_files: 0,
            ahead_bytes: 0,
            files_pulled: 0,
            conflicts: 0,
            error: None,
            disk_full: None,
        }
    }
}

/// A running puller.
#[derive(Debug)]
pub struct Puller {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// Takes peers' previews (see [`ahead`]); removes what it fetched ahead when stopped.
    previews: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    status: Mutex<SyncStatus>,
    round_started: Mutex<Option<Instant>>,
    bytes_done: AtomicU64,
    fetched: AtomicU64,
    copied: AtomicU64,
    /// Temporary files this puller may have left on disk (a failed or refused round keeps them
    /// to resume into). Those no plan needs any more are removed before the next round.
    temps: Mutex<HashSet<PathBuf>>,
    /// Files being fetched ahead of their records, by path (see [`ahead`]).
    aheads: Mutex<HashMap<String, ahead::Ahead>>,
    /// Large-file chunks asked for at once, by the rate they come back (see [`crate::pace`]).
    pace: Pace,
}

impl Puller {
    /// Starts the puller task (inside a tokio runtime).
    pub fn start(config: PullerConfig) -> Puller {
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(false);
        let config = Arc::new(config);
        tokio::spawn(clean_archive(config.clone(), stop_rx.clone()));
        let previews = tokio::spawn(ahead::take_previews(
            config.clone(),
            shared.clone(),
            stop_rx.clone(),
        ));
        let task = tokio::spawn(run(config, shared.clone(), stop_rx));
        Puller {
            shared,
            stop,
            task: Some(task),
            previews: Some(previews),
        }
    }

    pub fn status(&self) -> SyncStatus {
        let mut s = self.shared.status();
        let done = self.shared.bytes_done.load(Ordering::Relaxed);
        s.bytes_done = done;
        s.bytes_left = s.bytes_left.saturating_sub(done);
        s.fetched_bytes = self.shared.fetched.load(Ordering::Relaxed);
        s.copied_bytes = self.shared.copied.load(Ordering::Relaxed);
        (s.ahead_files, s.ahead_bytes) = ahead::status(&self.shared);
        if s.state != SyncState::Idle
            && let Some(started) = *lock(&self.shared.round_started)
        {
            s.bytes_per_s = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        }
        s
    }

    /// Stops the puller; work in progress stays in temporary files for the next start.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in [self.task.take(), self.previews.take()]
            .into_iter()
            .flatten()
        {
            let _ = task.await;
        }
    }
}

impl Drop for Puller {
    fn drop(&mut self) {
        for task in [self.task.take(), self.previews.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

impl Shared {
    fn status(&self) -> SyncStatus {
        lock(&self.status).clone()
    }

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut lock(&self.status));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the archive is cleaned.
const ARCHIVE_CLEANING: Duration = Duration::from_secs(3600);

/// Cleans the archive now and every hour until stopped.
async fn clean_archive(config: Arc<PullerConfig>, mut stop: watch::Receiver<bool>) {
    loop {
        let dir = root(&config).join(ARCHIVE_DIR);
        let keep = config.archive_keep;
        match tokio::task::spawn_blocking(move || crate::archive::clean(&dir, keep)).await {
            Ok(Ok(c)) if c.files > 0 => {
                info!(namespace = %config.name, files = c.files, mb = c.bytes / 1_000_000, "archive cleaned");
            }
            Ok(Err(e)) => warn!(namespace = %config.name, "cannot clean the archive: {e}"),
            _ => {}
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            () = tokio::time::sleep(ARCHIVE_CLEANING) => {}
        }
    }
}

/// Waits for changes (a peer's index, or ours), plans, pulls; retries what failed with backoff.
async fn run(config: Arc<PullerConfig>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let index = config.scanner.index().clone();
    let mut changes = index.subscribe_needs();
    let mut backoff = Duration::from_secs(1);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut paused: Option<Paused> = None;
    // Nothing is pulled before the first full scan: until then a file on disk may be missing from
    // the index, and replacing it would lose a local version.
    while config.scanner.full_scans() == 0 {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    loop {
        changes.borrow_and_update();
        let needs = match planned(&config).await {
            Ok(Ok(needs)) => Some(needs),
            Ok(Err(e)) => {
                // Not "nothing needed": the temporaries of partial downloads stay for the retry.
                warn!(namespace = %config.name, "cannot plan: {e}; retrying in {backoff:?}");
                shared.update(|s| {
                    s.state = SyncState::Retrying;
                    s.error = Some(format!("cannot read the index: {e}"));
                });
                retry_at = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                None
            }
            Err(_) => return,
        };
        // The round: clean up, then pull (skipped when the plan failed).
        if let Some(needs) = needs {
            // The temporaries this plan resumes into; any other is left from a version since lost.
            let wanted: HashSet<PathBuf> =
                needs.iter().filter_map(|n| temp_of(&config, n)).collect();
            remove_unneeded_temps(&config, &shared, &wanted);
            if needs.is_empty() {
                if paused.take().is_some() {
                    info!(namespace = %config.name, "no longer paused: nothing left to write");
                }
                shared.update(|s| {
                    if s.state == SyncState::Paused {
                        s.state = SyncState::Idle;
                        s.error = None;
                        s.disk_full = None;
                    } else if s.state != SyncState::Retrying || retry_at.is_none() {
                        // Nothing left, and no retry pending: whatever failed is behind us.
                        s.state = SyncState::Idle;
                        s.error = None;
                    }
                    s.files_left = 0;
                    s.bytes_left = 0;
                });
            } else {
                let outcome = pull(&config, &shared, needs, wanted, &mut stop).await;
                if *stop.borrow() {
                    return;
                }
                match outcome {
                    Ok(()) => {
                        backoff = Duration::from_secs(1);
                        retry_at = None;
                        if paused.take().is_some() {
                            info!(namespace = %config.name, "resumed after the disk was full: in sync");
                        }
                        shared.update(|s| {
                            s.state = SyncState::Idle;
                            s.error = None;
                            s.disk_full = None;
                        });
                        // Plan again at once: peers may have announced more meanwhile.
                        continue;
                    }
                    Err(Unfinished {
                        why,
                        short: Some(short),
                    }) => {
                        let full = disk_full(root(&config), short).await;
                        let now = tokio::time::Instant::now();
                        // When the file system already shows room, the free space cannot tell when
                        // there is more (a quota): only the slow retry and new changes try again.
                        let blind = full.usable >= short.smallest;
                        if paused.is_none() {
                            warn!(namespace = %config.name, "sync paused, {}; first file: {why}", full.status);
                        } else {
                            debug!(namespace = %config.name, "still paused: {why}");
                        }
                        shared.update(|s| {
                            s.state = SyncState::Paused;
                            s.error = Some(full.status.to_string());
                            s.disk_full = Some(full.status);
                        });
                        paused = Some(Paused {
                            smallest: short.smallest,
                            blind,
                            until: now + PAUSED_RETRY,
                        });
                        backoff = Duration::from_secs(1);
                        retry_at = Some(if blind {
                            now + PAUSED_RETRY
                        } else {
                            now + SPACE_POLL
                        });
                    }
                    Err(Unfinished { why, short: None }) => {
                        debug!(namespace = %config.name, "round left work undone: {why}; retrying in {backoff:?}");
                        paused = None;
                        shared.update(|s| {
                            s.state = SyncState::Retrying;
                            s.error = Some(why);
                            s.disk_full = None;
                        });
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                r = changes.changed() => if r.is_err() { return },
                () = retry => retry_at = None,
            }
            // Paused for a full disk: plan again only once the smallest file left fits (or a
            // change arrived, or the slow retry is due).
            let Some(p) = &paused else { break };
            if retry_at.is_some() || p.blind || tokio::time::Instant::now() >= p.until {
                break;
            }
            let dir = root(&config).to_path_buf();
            let looked = tokio::task::spawn_blocking(move || space::space(&dir)).await;
            let Ok(Ok(now)) = looked else { break };
            if now.usable() >= p.smallest {
                info!(namespace = %config.name, free = %space::human(now.available), "there is room again: resuming");
                break;
            }
            shared.update(|s| {
                if let Some(d) = s.disk_full.as_mut() {
                    d.free_bytes = now.available;
                    s.error = Some(d.to_string());
                }
            });
            retry_at = Some(tokio::time::Instant::now() + SPACE_POLL);
        }
        // Let a burst of changes arrive before planning again.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the namespace needs now, planned on the blocking pool (`Err` if that task was lost).
async fn planned(
    config: &Arc<PullerConfig>,
) -> Result<Result<Vec<Need>, shoal_index::IndexError>, tokio::task::JoinError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        plan(config.scanner.index(), |p, is_dir| {
            config.scanner.skips(p, is_dir)
        })
    })
    .await
}

/// Paused for a full disk.
#[derive(Debug)]
struct Paused {
    /// Usable bytes (beyond the margin) that let the smallest file left fit.
    smallest: u64,
    /// The free space already showed room when a write failed: polling it cannot tell more.
    blind: bool,
    /// When the round is tried again anyway.
    until: tokio::time::Instant,
}

/// What a pause is shown as, and the usable bytes when it was looked at.
struct Looked {
    status: DiskFull,
    usable: u64,
}

/// Looks at the file system holding `root` for a round that did not fit.
async fn disk_full(root: &Path, short: Shortage) -> Looked {
    let dir = root.to_path_buf();
    let looked =
        tokio::task::spawn_blocking(move || (space::space(&dir), space::mount_point(&dir))).await;
    let (room, mount) = match looked {
        Ok((Ok(room), mount)) => (Some(room), mount),
        Ok((Err(_), mount)) => (None, mount),
        Err(_) => (None, root.to_path_buf()),
    };
    Looked {
        status: DiskFull {
            needed_bytes: short.total,
            files: short.files,
            free_bytes: room.map_or(0, |r| r.available),
            kept_free_bytes: room.map_or(0, |r| space::margin(r.total)),
            mount,
        },
        // Unknown room: treated as none, so the free space is polled.
        usable: room.map_or(0, |r| r.usable()),
    }
}

/// The temporary file `need` is assembled in, if it needs one.
fn temp_of(config: &PullerConfig, need: &Need) -> Option<PathBuf> {
    (!need.version_only && !need.target.deleted && need.target.kind != Kind::Dir)
        .then(|| temp_path(&abs(root(config), &need.path), &need.target.hash))
}

/// Removes the temporaries of earlier rounds that no need of this plan resumes into: the
/// version they were for lost (a newer edit, a conflict settled) or arrived by other means (the
/// same file made here). Without this they stayed on disk for good, hidden but taking its space.
fn remove_unneeded_temps(config: &PullerConfig, shared: &Shared, wanted: &HashSet<PathBuf>) {
    let mut temps = lock(&shared.temps);
    temps.retain(|temp| {
        if wanted.contains(temp) {
            return true;
        }
        index(config).assembled(temp);
        match fs::remove_file(temp) {
            Ok(()) => {
                debug!(namespace = %config.name, temp = %temp.display(), "removed a temporary file no longer needed");
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                warn!(namespace = %config.name, temp = %temp.display(), "cannot remove a temporary file no longer needed: {e}");
                true
            }
        }
    });
}

/// One round: every stage over the planned needs. `Err` says why some of the work was left.
///
/// Large files are pulled last, and while they are, what changes meanwhile (a peer's new small
/// file, a rename, a deletion) is planned and pulled beside them ([`meanwhile`]): a file of many
/// gigabytes behind slow links does not hold everything else back until it is all there.
async fn pull(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    needs: Vec<Need>,
    wanted: HashSet<PathBuf>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Unfinished> {
    let files = needs.iter().filter(|n| !n.version_only).count() as u64;
    let bytes: u64 = needs.iter().map(Need::bytes).sum();
    let was_paused = shared.status().state == SyncState::Paused;
    shared.bytes_done.store(0, Ordering::Relaxed);
    *lock(&shared.round_started) = Some(Instant::now());
    shared.update(|s| {
        // A round tried while paused stays shown as paused until it gets through.
        if s.state != SyncState::Paused {
            s.state = SyncState::Syncing;
        }
        s.files_left = files;
        s.bytes_left = bytes;
    });
    if files > 0 {
        info!(namespace = %config.name, files, mb = bytes / 1_000_000, "syncing");
    }
    let mut errors = Errors::default();
    let (large, rest): (Vec<Need>, Vec<Need>) = needs.into_iter().partition(is_large);
    if large.is_empty() {
        errors.merge(apply(config, shared, rest, stop).await);
    } else {
        // Deletions after every file: a renamed file's new name is assembled from the old one.
        let (deletions, now): (Vec<Need>, Vec<Need>) = rest
            .into_iter()
            .partition(|n| n.target.deleted && !n.version_only);
        errors.merge(apply(config, shared, now, stop).await);
        if !*stop.borrow() {
            // Nor are the deletions left for later pulled beside them.
            let busy: HashSet<String> = large
                .iter()
                .chain(&deletions)
                .map(|n| n.path.clone())
                .collect();
            let (done, lane_done) = watch::channel(false);
            let lane = async {
                let e = pull_files(config, shared, large, stop).await;
                let _ = done.send(true);
                e
            };
            let (e, m) = tokio::join!(
                lane,
                meanwhile(config, shared, &busy, lane_done, stop.clone())
            );
            errors.merge(e);
            errors.merge(m);
        }
        if !*stop.borrow() {
            errors.merge(apply(config, shared, deletions, stop).await);
        }
    }
    if *stop.borrow() {
        return Err(Unfinished {
            why: "stopping".into(),
            short: None,
        });
    }
    if errors.short.is_some() && !was_paused {
        // Entering a pause: temporaries of content no longer wanted only take room.
        let dir = root(config).to_path_buf();
        let removed =
            tokio::task::spawn_blocking(move || remove_stale_temporaries(&dir, &wanted)).await;
        if let Ok((n, bytes)) = removed
            && n > 0
        {
            info!(namespace = %config.name, files = n, freed = %space::human(bytes), "removed temporaries of content no longer wanted");
        }
    }
    errors.into_result()
}

/// A file whose pull lets the rest go on beside it ([`meanwhile`]): content to bring in, not small.
fn is_large(need: &Need) -> bool {
    !need.version_only && !need.target.deleted && need.target.kind == Kind::File && !is_small(need)
}

/// Versions, directories, files (small ones first), then deletions (children first).
async fn apply(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    needs: Vec<Need>,
    stop: &watch::Receiver<bool>,
) -> Errors {
    let mut errors = Errors::default();
    let (versions, rest): (Vec<Need>, Vec<Need>) = needs.into_iter().partition(|n| n.version_only);
    let (deletions, rest): (Vec<Need>, Vec<Need>) =
        rest.into_iter().partition(|n| n.target.deleted);
    let (dirs, files): (Vec<Need>, Vec<Need>) =
        rest.into_iter().partition(|n| n.target.kind == Kind::Dir);
    if !versions.is_empty() {
        errors.merge(blocking(config, move |c| record_versions(c, versions)).await);
    }
    if !dirs.is_empty() {
        let n = dirs.len() as u64;
        errors.merge(blocking(config, move |c| make_dirs(c, dirs)).await);
        shared.update(|s| s.files_left = s.files_left.saturating_sub(n));
    }
    errors.merge(pull_files(config, shared, files, stop).await);
    if !deletions.is_empty() && !*stop.borrow() {
        let n = deletions.len() as u64;
        let mut deletions = deletions;
        // Children before their parents.
        deletions.sort_by(|a, b| b.path.cmp(&a.path));
        errors.merge(blocking(config, move |c| delete(c, deletions)).await);
        shared.update(|s| s.files_left = s.files_left.saturating_sub(n));
    }
    errors
}

/// Files in groups, smallest first (a huge file does not hold back everything behind it); each
/// group is assembled while the one before it is finished.
async fn pull_files(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    mut files: Vec<Need>,
    stop: &watch::Receiver<bool>,
) -> Errors {
    let mut errors = Errors::default();
    files.sort_by_key(|n| n.target.size);
    let mut group: Vec<Need> = Vec::new();
    let mut group_bytes = 0;
    let mut small_bytes = 0;
    let mut finishing: Option<(JoinHandle<Errors>, u64)> = None;
    let mut files = files.into_iter().peekable();
    while let Some(need) = files.next() {
        if is_small(&need) {
            small_bytes += need.bytes();
        } else {
            group_bytes += need.bytes();
        }
        group.push(need);
        if group.len() >= GROUP_FILES
            || group_bytes >= GROUP_BYTES
            || small_bytes >= GROUP_SMALL_BYTES
            || files.peek().is_none()
        {
            let n = group.len() as u64;
            let batch = std::mem::take(&mut group);
            lock(&shared.temps).extend(batch.iter().filter_map(|n| temp_of(config, n)));
            group_bytes = 0;
            small_bytes = 0;
            // Pipelined: this group is assembled while the previous one is being finished.
            let (ready, e) = assemble_group(config, shared, batch).await;
            errors.merge(e);
            if let Some((previous, m)) = finishing.take() {
                errors.merge(joined(previous.await));
                shared.update(|s| s.files_left = s.files_left.saturating_sub(m));
            }
            let (config, shared2) = (config.clone(), shared.clone());
            finishing = Some((
                tokio::task::spawn_blocking(move || finish(&config, &shared2, ready)),
                n,
            ));
            if *stop.borrow() {
                break;
            }
        }
    }
    if let Some((last, m)) = finishing.take() {
        errors.merge(joined(last.await));
        shared.update(|s| s.files_left = s.files_left.saturating_sub(m));
    }
    errors
}

/// How long changes may keep coming before what changed beside a large file is planned.
const MEANWHILE_SETTLE: Duration = Duration::from_millis(20);
/// At least this long between two such plans: each reads the whole index, and a namespace of
/// many files changing all the time beside a large file would be planned again without pause.
const MEANWHILE_EVERY: Duration = Duration::from_millis(250);

/// While the large files `busy` are pulled: whatever else changes (a peer's new record, a local
/// change) is planned again and pulled at once, until `lane_done`. New large files wait for the
/// next round. The errors of the last attempt are what is left undone.
async fn meanwhile(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    busy: &HashSet<String>,
    mut lane_done: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Errors {
    let mut changes = index(config).subscribe_needs();
    changes.borrow_and_update();
    let mut errors = Errors::default();
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = lane_done.changed() => return errors,
            _ = stop.changed() => return errors,
            r = changes.changed() => if r.is_err() { return errors },
        }
        let settled = tokio::time::Instant::now() + MEANWHILE_SETTLE;
        tokio::time::sleep_until(last.map_or(settled, |l| settled.max(l + MEANWHILE_EVERY))).await;
        if *lane_done.borrow() || *stop.borrow() {
            return errors;
        }
        last = Some(tokio::time::Instant::now());
        changes.borrow_and_update();
        let Ok(Ok(needs)) = planned(config).await else {
            // Planned again by the next round.
            continue;
        };
        let needs: Vec<Need> = needs
            .into_iter()
            .filter(|n| !busy.contains(&n.path) && !is_large(n))
            .collect();
        if needs.is_empty() {
            errors = Errors::default();
            continue;
        }
        let files = needs.iter().filter(|n| !n.version_only).count() as u64;
        let bytes: u64 = needs.iter().map(Need::bytes).sum();
        debug!(namespace = %config.name, files, "pulling what changed beside the large files");
        shared.update(|s| {
            s.files_left += files;
            s.bytes_left += bytes;
        });
        errors = apply(config, shared, needs, &stop).await;
    }
}

/// Deletes every temporary file under `root` (not in `.sync/`) that is not in `wanted`: what is
/// left of transfers of versions since replaced. Returns how many and their bytes on disk.
fn remove_stale_temporaries(root: &Path, wanted: &HashSet<PathBuf>) -> (u64, u64) {
    remove_temporaries(root, |p| !wanted.contains(p))
}

/// Deletes every temporary file under `root` (not in `.sync/`) that `stale` says is: how many,
/// and their bytes on disk.
fn remove_temporaries(root: &Path, stale: impl Fn(&Path) -> bool) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            if kind.is_dir() {
                if !(dir == root && e.file_name() == ".sync") {
                    dirs.push(path);
                }
            } else if shoal_core::ignore::is_temp_name(&e.file_name().to_string_lossy())
                && stale(&path)
            {
                let size = space::allocated(&path);
                if fs::remove_file(&path).is_ok() {
                    files += 1;
                    bytes += size;
                }
            }
        }
    }
    (files, bytes)
}

/// Work a round left undone: why, and whether it is because the disk is full.
#[derive(Debug)]
struct Unfinished {
    why: String,
    short: Option<Shortage>,
}

/// Files that did not fit on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shortage {
    files: u64,
    /// Bytes all of them still need, and the fewest any one needs.
    total: u64,
    smallest: u64,
}

impl Shortage {
    fn merge(a: Option<Shortage>, b: Option<Shortage>) -> Option<Shortage> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Shortage {
                files: a.files + b.files,
                total: a.total.saturating_add(b.total),
                smallest: a.smallest.min(b.smallest),
            }),
            (a, b) => a.or(b),
        }
    }
}

/// Failures of a stage: how many, the first reason, and what did not fit on the disk.
#[derive(Debug, Default)]
struct Errors {
    count: u64,
    first: Option<String>,
    short: Option<Shortage>,
}

impl Errors {
    fn add(&mut self, path: &str, why: impl std::fmt::Display) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("{path}: {why}"));
        }
    }

    /// `path` did not fit: it still needs `needed` bytes.
    fn no_space(&mut self, path: &str, needed: u64, why: impl std::fmt::Display) {
        self.add(path, why);
        let one = Shortage {
            files: 1,
            total: needed,
            smallest: needed,
        };
        self.short = Shortage::merge(self.short, Some(one));
    }

    /// An I/O failure for `path`, which needs `needed` more bytes should it be the disk's.
    fn io(&mut self, path: &str, e: &io::Error, needed: u64) {
        if space::is_no_space(e) {
            self.no_space(path, needed, e);
        } else {
            self.add(path, e);
        }
    }

    /// A failure of the index (on the same disk, often).
    fn index(&mut self, e: &shoal_index::IndexError) {
        if space::error_is_no_space(e) {
            self.no_space("(index)", METADATA_BYTES, e);
        } else {
            self.add("(index)", e);
        }
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
        self.short = Shortage::merge(self.short, other.short);
    }

    fn into_result(self) -> Result<(), Unfinished> {
        let why = match (self.count, self.first) {
            (0, _) => return Ok(()),
            (1, Some(first)) => first,
            (n, Some(first)) => format!("{n} paths not synced yet; first: {first}"),
            (n, None) => format!("{n} paths not synced yet"),
        };
        Err(Unfinished {
            why,
            short: self.short,
        })
    }
}

async fn blocking(
    config: &Arc<PullerConfig>,
    f: impl FnOnce(&PullerConfig) -> Errors + Send + 'static,
) -> Errors {
    let config = config.clone();
    joined(tokio::task::spawn_blocking(move || f(&config)).await)
}

fn root(config: &PullerConfig) -> &Path {
    config.scanner.root()
}

fn index(config: &PullerConfig) -> &Index {
    config.scanner.index()
}

fn abs(root: &Path, path: &str) -> PathBuf {
    root.join(path)
}

/// True when the disk and the index still hold at `path` what the plan saw.
fn unchanged(config: &PullerConfig, need: &Need) -> bool {
    let indexed = index(config).get(&need.path).ok().flatten();
    if indexed.as_ref().map(|e| e.seq) != need.local.as_ref().map(|e| e.seq) {
        return false;
    }
    let on_disk = fs::symlink_metadata(abs(root(config), &need.path));
    match (&need.local, on_disk) {
        (None, Err(e)) => e.kind() == io::ErrorKind::NotFound,
        (Some(l), Err(e)) => l.deleted && e.kind() == io::ErrorKind::NotFound,
        (None, Ok(_)) => false,
        (Some(l), Ok(m)) => {
            DiskStat::from_metadata(&m).is_some_and(|d| Stamp::from(l).unchanged(&d))
        }
    }
}

/// The target entry as recorded after it was written: the disk's local stat.
fn recorded(need: &Need, path: &Path) -> io::Result<Entry> {
    let m = fs::symlink_metadata(path)?;
    let d = DiskStat::from_metadata(&m)
        .ok_or_else(|| io::Error::other("not a file, directory or symlink"))?;
    let mut e = need.target.clone();
    if d.kind != e.kind || (e.kind == Kind::File && d.size != e.size) {
        return Err(io::Error::other("changed while it was being written"));
    }
    if d.mode != e.mode || d.mtime_ns != e.mtime_ns {
        // The scanner would take the difference for a local edit; say why instead.
        warn!(path = %path.display(), "the file system did not keep the mode or mtime exactly");
    }
    e.local = d.local;
    Ok(e)
}

fn record_versions(config: &PullerConfig, needs: Vec<Need>) -> Errors {
    let mut errors = Errors::default();
    let _exclusive = config.scanner.exclusive();
    let mut batch = index(config).batch();
    for need in needs {
        if unchanged(config, &need) {
            batch.put(&need.path, need.target);
        } else {
            errors.add(&need.path, "changed locally meanwhile");
        }
    }
    if let Err(e) = batch.commit() {
        errors.index(&e);
    }
    errors
}

fn make_dirs(config: &PullerConfig, needs: Vec<Need>) -> Errors {
    let mut errors = Errors::default();
    let root = root(config);
    let _exclusive = config.scanner.exclusive();
    let mut batch = index(config).batch();
    let mut parents = BTreeSet::new();
    for need in needs {
        if !unchanged(config, &need) {
            errors.add(&need.path, "changed locally meanwhile");
            continue;
        }
        let result = (|| -> io::Result<(Entry, PathBuf)> {
            let path = beneath::made(root, &need.path)?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    set_aside(config, &need, &path)?;
                    fs::create_dir(&path)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&path)?,
                Err(e) => return Err(e),
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(need.target.mode))?;
            Ok((recorded(&need, &path)?, path))
        })();
        match result {
            Ok((entry, path)) => {
                batch.put(&need.path, entry);
                parents.extend(path.parent().map(Path::to_path_buf));
            }
            Err(e) => errors.io(&need.path, &e, METADATA_BYTES),
        }
    }
    sync_dirs(&parents);
    if let Err(e) = batch.commit() {
        errors.index(&e);
    }
    errors
}

/// The local file at `path` is about to be replaced: keep it as a conflict copy if it lost a
/// conflict, else move it to the archive (or remove it).
fn set_aside(config: &PullerConfig, need: &Need, path: &Path) -> io::Result<()> {
    let Some(local) = need.local.as_ref().filter(|l| !l.deleted) else {
        return Ok(());
    };
    if need.keep_local_as_conflict {
        let name = conflict_name(&need.path, local.mtime_ns, local.modified_by);
        let copy = abs(root(config), &name);
        if fs::symlink_metadata(&copy).is_err() {
            info!(namespace = %config.name, path = %need.path, copy = %name, "conflict: keeping this node's version as a copy");
            fs::rename(path, &copy)?;
            return Ok(());
        }
    }
    match local.kind {
        Kind::Dir => fs::remove_dir(path),
        Kind::Symlink => fs::remove_file(path),
        Kind::File if config.archive => archive(root(config), &need.path, path),
        Kind::File => fs::remove_file(path),
    }
}

/// Moves `path` (namespace-relative `rel`) into the archive, keeping older archived versions.
fn archive(root: &Path, rel: &str, path: &Path) -> io::Result<()> {
    let mut dest = beneath::made(root, &format!("{ARCHIVE_DIR}/{rel}"))?;
    if fs::symlink_metadata(&dest).is_ok() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{stamp}"));
        dest.set_file_name(name);
    }
    fs::rename(path, dest)
}

/// Makes the renames and removals in `dirs` durable: an fsync per directory when there are a few,
/// one `syncfs` of the file system when there are many (one journal commit instead of one each;
/// 100 directory fsyncs were a third of the time of a group of small files).
fn sync_dirs(dirs: &BTreeSet<PathBuf>) {
    const FSYNC_AT_MOST: usize = 4;
    if dirs.len() > FSYNC_AT_MOST
        && let Some(first) = dirs.iter().next()
        && let Ok(f) = File::open(first)
    {
        let _ = nix::unistd::syncfs(&f);
        return;
    }
    for d in dirs {
        if let Ok(f) = File::open(d) {
            let _ = f.sync_all();
        }
    }
}

/// A file or symlink assembled in its temporary file, ready to be renamed over its target.
struct Ready {
    need: Need,
    temp: PathBuf,
}

fn is_small(need: &Need) -> bool {
    need.target.kind == Kind::Symlink || need.target.size <= SMALL_FILE
}

/// The result of a finisher run on the blocking pool.
fn joined(result: Result<Errors, tokio::task::JoinError>) -> Errors {
    result.unwrap_or_else(|e| {
        let mut errors = Errors::default();
        errors.add("(puller)", e);
        errors
    })
}

/// Copier and fetcher for one group of files: every file ready in its temporary, to be finished.
async fn assemble_group(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    group: Vec<Need>,
) -> (Vec<Ready>, Errors) {
    let mut errors = Errors::default();
    let group = fitting(root(config), group, &mut errors);
    let fetches = Arc::new(Semaphore::new(FETCHES_AT_ONCE));
    let (small, large): (Vec<Need>, Vec<Need>) = group.into_iter().partition(is_small);
    let mut ready = Vec::new();
    if !small.is_empty() {
        let (r, e) = pull_small(config, shared, small, fetches.clone()).await;
        ready.extend(r);
        errors.merge(e);
    }
    let files = Arc::new(Semaphore::new(FILES_AT_ONCE));
    let mut tasks = JoinSet::new();
    for need in large {
        let config = config.clone();
        let shared = shared.clone();
        let files = files.clone();
        let fetches = fetches.clone();
        tasks.spawn(async move {
            let _permit = files.acquire_owned().await;
            let path = need.path.clone();
            let temp = temp_path(&abs(root(&config), &need.path), &need.target.hash);
            let size = need.target.size;
            assemble(&config, &shared, need, fetches)
                .await
                .map_err(|e| (path, e, size.saturating_sub(space::allocated(&temp))))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(r)) => ready.push(r),
            Ok(Err((path, f, left))) if f.no_space => errors.no_space(&path, left, f.why),
            Ok(Err((path, f, _))) => errors.add(&path, f.why),
            Err(e) => errors.add("(puller)", e),
        }
    }
    (ready, errors)
}

/// The files of `group` (smallest first) that fit on the disk together, keeping the margin free;
/// the others are recorded as not fitting, their temporaries kept, and left for a later round.
/// A file is never started only to fill the disk halfway: the index, on the same disk as a rule,
/// and everything else there must still be able to write.
fn fitting(root: &Path, group: Vec<Need>, errors: &mut Errors) -> Vec<Need> {
    let Ok(room) = space::space(root) else {
        // The file system does not say: the writes will.
        return group;
    };
    let mut usable = room.usable();
    let mut fit = Vec::with_capacity(group.len());
    for need in group {
        let needed = match need.target.kind {
            Kind::Symlink | Kind::Dir => 0,
            // Rewritten whole.
            Kind::File if is_small(&need) => need.target.size,
            // What its temporary does not hold yet.
            Kind::File => need.target.size.saturating_sub(space::allocated(&temp_path(
                &abs(root, &need.path),
                &need.target.hash,
            ))),
        };
        if needed <= usable {
            usable -= needed;
            fit.push(need);
        } else {
            let why = format!(
                "does not fit: {} to write, {} free, {} kept free",
                space::human(needed),
                space::human(room.available),
                space::human(space::margin(room.total)),
            );
            errors.no_space(&need.path, needed, why);
        }
    }
    fit
}

/// Why one file could not be assembled.
#[derive(Debug)]
struct Failure {
    why: String,
    /// Because the disk is full.
    no_space: bool,
}

impl Failure {
    fn io(context: impl std::fmt::Display, e: &io::Error) -> Failure {
        Failure {
            why: format!("{context}: {e}"),
            no_space: space::is_no_space(e),
        }
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure {
            why,
            no_space: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Failure {
        Failure::from(why.to_owned())
    }
}

/// Small files: every chunk gathered in memory (local copies in one pass, the rest fetched all at
/// once), then every temporary file written by one thread.
async fn pull_small(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    needs: Vec<Need>,
    fetches: Arc<Semaphore>,
) -> (Vec<Ready>, Errors) {
    let mut errors = Errors::default();
    let started = Instant::now();
    // Copier: what this node already has.
    let wanted: Vec<(Hash, u32, Vec<PeerKey>)> = needs
        .iter()
        .flat_map(|n| {
            n.target
                .chunks
                .iter()
                .map(|c| (c.hash, c.len, n.sources.clone()))
        })
        .collect();
    let gathered = {
        let config = config.clone();
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut have: HashMap<Hash, Vec<u8>> = HashMap::new();
            let mut missing: HashMap<Hash, (u32, Vec<PeerKey>)> = HashMap::new();
            for (hash, len, sources) in wanted {
                if have.contains_key(&hash) || missing.contains_key(&hash) {
                    continue;
                }
                if let Some(buf) = index(&config).read_chunk(root(&config), &hash) {
                    shared.copied.fetch_add(u64::from(len), Ordering::Relaxed);
                    shared
                        .bytes_done
                        .fetch_add(u64::from(len), Ordering::Relaxed);
                    have.insert(hash, buf);
                } else {
                    missing.insert(hash, (len, sources));
                }
            }
            (have, missing)
        })
        .await
    };
    let Ok((mut have, missing)) = gathered else {
        errors.add("(puller)", "the copier failed");
        return (Vec::new(), errors);
    };
    // Fetcher: everything missing at once, bounded.
    let mut tasks = JoinSet::new();
    for (hash, (len, sources)) in missing {
        let source = config.source.clone();
        let fetches = fetches.clone();
        tasks.spawn(async move {
            let _permit = fetches.acquire_owned().await;
            let mut last = String::from("no peer announced it");
            for _ in 0..FETCH_ATTEMPTS {
                if sources.is_empty() {
                    break;
                }
                match source.fetch(hash, sources.clone()).await {
                    Ok(bytes) if bytes.len() == len as usize && Hash::of(&bytes) == hash => {
                        return (hash, Ok(bytes));
                    }
                    Ok(_) => last = "a peer sent a chunk that does not verify".into(),
                    Err(e) => last = e,
                }
            }
            (hash, Err(last))
        });
    }
    let copied = started.elapsed();
    let mut failed: HashMap<Hash, String> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((hash, Ok(bytes))) => {
                shared
                    .fetched
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                shared
                    .bytes_done
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                have.insert(hash, bytes);
            }
            Ok((hash, Err(why))) => {
                failed.insert(hash, why);
            }
            Err(e) => errors.add("(puller)", e),
        }
    }
    let fetched = started.elapsed();
    let files = needs.len();
    // Writers: one thread per core, each with whole directories (creating a file takes its
    // directory's lock, and on ext4 an inode search in the directory's block group).
    let config = config.clone();
    let written = tokio::task::spawn_blocking(move || {
        let mut shares = by_directory(needs, writers());
        let (have, failed) = (&have, &failed);
        let config = &config;
        // The last share is written on this thread: a group of one file (a one-line change)
        // starts no thread.
        let here = shares.pop().unwrap_or_default();
        std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .into_iter()
                .map(|share| scope.spawn(move || write_smalls(config, share, have, failed)))
                .collect();
            let (mut ready, mut errors) = write_smalls(config, here, have, failed);
            for handle in handles {
                match handle.join() {
                    Ok((r, e)) => {
                        ready.extend(r);
                        errors.merge(e);
                    }
                    Err(_) => errors.add("(puller)", "a writer thread panicked"),
                }
            }
            (ready, errors)
        })
    })
    .await;
    debug!(
        files,
        copier = copied.as_secs_f32(),
        fetcher = (fetched - copied).as_secs_f32(),
        writers = (started.elapsed() - fetched).as_secs_f32(),
        "small files ready"
    );
    match written {
        Ok((ready, e)) => {
            errors.merge(e);
            (ready, errors)
        }
        Err(e) => {
            errors.add("(puller)", e);
            (Vec::new(), errors)
        }
    }
}

/// How many threads write small files: the cores this process may use, at most 4.
fn writers() -> usize {
    shoal_scan::cores().min(4)
}

/// `needs` in up to `n` shares of about equal size, each holding whole directories; the order of
/// files inside a directory is kept.
fn by_directory(needs: Vec<Need>, n: usize) -> Vec<Vec<Need>> {
    let mut dirs: BTreeMap<String, Vec<Need>> = BTreeMap::new();
    for need in needs {
        let dir = need
            .path
            .rsplit_once('/')
            .map_or("", |(dir, _)| dir)
            .to_owned();
        dirs.entry(dir).or_default().push(need);
    }
    let mut shares: Vec<Vec<Need>> = (0..n.max(1)).map(|_| Vec::new()).collect();
    // Largest directories first, each to the share with the fewest files so far.
    let mut dirs: Vec<Vec<Need>> = dirs.into_values().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for dir in dirs {
        let least = shares
            .iter_mut()
            .min_by_key(|s| s.len())
            .expect("at least one share");
        least.extend(dir);
    }
    shares.retain(|s| !s.is_empty());
    shares
}

/// One writer's share of a group of small files, written one after another.
fn write_smalls(
    config: &PullerConfig,
    needs: Vec<Need>,
    have: &HashMap<Hash, Vec<u8>>,
    failed: &HashMap<Hash, String>,
) -> (Vec<Ready>, Errors) {
    let mut ready = Vec::new();
    let mut errors = Errors::default();
    for need in needs {
        if let Some(why) = need.target.chunks.iter().find_map(|c| failed.get(&c.hash)) {
            errors.add(&need.path, why);
            continue;
        }
        match write_small(config, &need, have) {
            Ok(temp) => ready.push(Ready { need, temp }),
            Err(e) => errors.io(&need.path, &e, need.target.size),
        }
    }
    (ready, errors)
}

fn write_small(
    config: &PullerConfig,
    need: &Need,
    have: &HashMap<Hash, Vec<u8>>,
) -> io::Result<PathBuf> {
    let path = beneath::made(root(config), &need.path)?;
    let temp = temp_path(&path, &need.target.hash);
    if need.target.kind == Kind::Symlink {
        let link = need.target.target.as_deref().unwrap_or_default();
        if let Err(e) = symlink(link, &temp) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            fs::remove_file(&temp)?;
            symlink(link, &temp)?;
        }
        set_mtime(&temp, need.target.mtime_ns)?;
    } else {
        // A leftover from an interrupted attempt is simply rewritten.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(need.target.mode)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&temp)?;
        for c in &need.target.chunks {
            let bytes = have
                .get(&c.hash)
                .ok_or_else(|| io::Error::other("a chunk went missing"))?;
            io::Write::write_all(&mut file, bytes)?;
        }
        file.set_permissions(fs::Permissions::from_mode(need.target.mode))?;
        // Through the open file: no second walk of the path.
        let (secs, nanos) = split_ns(need.target.mtime_ns);
        nix::sys::stat::futimens(&file, &TimeSpec::UTIME_OMIT, &TimeSpec::new(secs, nanos))
            .map_err(io::Error::from)?;
    }
    Ok(temp)
}

/// The temporary file for `target`: hidden, in the same directory (so the rename is atomic),
/// named after the content (so an interrupted download resumes into the same file).
fn temp_path(path: &Path, hash: &Hash) -> PathBuf {
    let hex = hash.to_hex();
    hidden_beside(path, &format!("{}.tmp", &hex[..16]))
}

/// A hidden temporary beside `path`: `.~shoal.<name>.<suffix>`, the name cut to 120 bytes (on a
/// character boundary) so that the whole stays within a file name's 255.
fn hidden_beside(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut short = name.as_str();
    while short.len() > 120 {
        let mut end = 120.min(short.len() - 1);
        while !short.is_char_boundary(end) {
            end -= 1;
        }
        short = &short[..end];
    }
    path.with_file_name(format!("{TEMP_PREFIX}{short}.{suffix}"))
}

async fn assemble(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    need: Need,
    fetches: Arc<Semaphore>,
) -> Result<Ready, Failure> {
    let path = beneath::made(root(config), &need.path)
        .map_err(|e| Failure::io("cannot create its directory", &e))?;
    let temp = temp_path(&path, &need.target.hash);
    if need.target.kind == Kind::Symlink {
        let link = need.target.target.clone().unwrap_or_default();
        let _ = fs::remove_file(&temp);
        symlink(&link, &temp).map_err(|e| Failure::io("cannot create the symlink", &e))?;
        set_mtime(&temp, need.target.mtime_ns)
            .map_err(|e| Failure::io("cannot set its mtime", &e))?;
        return Ok(Ready { need, temp });
    }
    // What was fetched ahead of the record, if anything: its temporary becomes this one.
    let ahead = ahead::adopt(config, shared, &need.path, &temp).await;
    // What is there (resumed, fetched ahead), what local files hold, what to fetch: off the
    // async threads.
    let started = Instant::now();
    let cannot_write =
        |e: &io::Error| Failure::io(format_args!("cannot write {}", temp.display()), e);
    let Local {
        filling,
        to_copy,
        missing,
    } = {
        let (config, shared, into) = (config.clone(), shared.clone(), temp.clone());
        let chunks: Vec<_> = need.target.chunks_with_offsets().collect();
        tokio::task::spawn_blocking(move || {
            plan_local(&config, &shared, &into, chunks, ahead.as_ref())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| cannot_write(&e))?
    };
    debug!(path = %need.path, copy = to_copy.len(), missing = missing.len(), "copier and fetcher");
    // The copier and the fetcher at once; the copier is always waited for (it writes into the
    // temporary until it is done, whatever the fetcher met).
    let copying = {
        let (config, shared, filling) = (config.clone(), shared.clone(), filling.clone());
        tokio::task::spawn_blocking(move || copy_planned(&config, &shared, &filling, to_copy))
    };
    let fetched = if missing.is_empty() {
        Ok(())
    } else {
        fetch_missing(
            config,
            shared,
            &need,
            filling.clone(),
            missing,
            fetches.clone(),
        )
        .await
    };
    let failed = copying
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| cannot_write(&e))?;
    fetched?;
    if !failed.is_empty() {
        // Their file changed or went since it was indexed.
        fetch_missing(config, shared, &need, filling.clone(), failed, fetches).await?;
    }
    debug!(path = %need.path, secs = started.elapsed().as_secs_f32(), "copier and fetcher done");
    // The last handle on the temporary: closed before its mtime is set.
    let file = filling.file;
    let target = need.target.clone();
    let temp2 = temp.clone();
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        file.set_len(target.size)?;
        file.set_permissions(fs::Permissions::from_mode(target.mode))?;
        drop(file);
        set_mtime(&temp2, target.mtime_ns)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| Failure::io(format_args!("cannot finish {}", temp.display()), &e))?;
    Ok(Ready { need, temp })
}

/// Fetcher: the chunks of `need` still `missing` from peers, verified, written into the
/// temporary being filled by one thread (writers of one file only take turns on its inode lock;
/// several spun on it, and blocked async workers meanwhile). A full disk stops everything at once.
async fn fetch_missing(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    need: &Need,
    filling: Filling,
    missing: Vec<shoal_core::chunk::Chunk>,
    fetches: Arc<Semaphore>,
) -> Result<(), Failure> {
    if need.sources.is_empty() {
        return Err("no peer announced this version".into());
    }
    let (to_writer, writes) =
        tokio::sync::mpsc::channel::<(shoal_core::chunk::Chunk, Vec<u8>)>(WRITES_QUEUED);
    let writer = {
        let shared = shared.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || write_fetched(&config, filling, &shared, None, writes))
    };
    let mut tasks = JoinSet::new();
    let near_at = near_chunks(config, need, &missing);
    debug!(path = %need.path, missing = missing.len(), near = near_at.as_ref().map_or(0, |(_, at)| at.len()), "fetcher");
    for chunk in in_windows(missing, FETCH_WINDOW, shuffler()) {
        let source = config.source.clone();
        let sources = need.sources.clone();
        let fetches = fetches.clone();
        let to_writer = to_writer.clone();
        let shared = shared.clone();
        let near = near_at
            .as_ref()
            .and_then(|(old, at)| Some((old.clone(), *at.get(&chunk.offset)?)));
        tasks.spawn(async move {
            let _permit = fetches.acquire_owned().await;
            let in_flight = shared.pace.admit(u64::from(chunk.len)).await;
            let bytes = match near {
                Some((old, from)) => {
                    fetch_near_verified(&*source, &sources, &chunk, old, from).await?
                }
                None => fetch_verified(&*source, &sources, &chunk).await?,
            };
            in_flight.arrived();
            // Fails only if the writer stopped: its error is the one reported.
            to_writer
                .send((chunk, bytes))
                .await
                .map_err(|_| Failure::from("the writer stopped"))
        });
    }
    drop(to_writer);
    let mut first_error: Option<Failure> = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined
            .map_err(|e| Failure::from(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
        if writer.is_finished() {
            // Only an error ends it early (a full disk): what is still fetched would be
            // thrown away.
            tasks.abort_all();
        }
    }
    let written = writer.await.map_err(|e| Failure::from(e.to_string()))?;
    if let Err(e) = written {
        return Err(Failure::io("cannot write", &e));
    }
    first_error.map_or(Ok(()), Err)
}

/// The file `need` replaces, if it is there, and the missing chunks to ask for as the pieces that
/// differ from what it holds in their place ([`ChunkSource::fetch_near`]), each with where in it
/// that is ([`near_offsets`]). An edit changes a range; the chunks around its ends hold unchanged
/// bytes up to the boundaries, and those fall in place again only a chunk or three later: ~300 KiB
/// either side of a 1 MiB edit, sent again for nothing. Where at most a quarter of the file is
/// missing (an edit, not a new file), every missing chunk is asked for so; elsewhere the first and
/// last [`EDGE_CHUNKS`] of each run of missing chunks, the rest being new through and through
/// (reading and hashing the old bytes would be for nothing).
fn near_chunks(
    config: &PullerConfig,
    need: &Need,
    missing: &[shoal_core::chunk::Chunk],
) -> Option<(Arc<File>, HashMap<u64, i64>)> {
    let absent: HashSet<u64> = missing.iter().map(|c| c.offset).collect();
    let missing_bytes: u64 = missing.iter().map(|c| u64::from(c.len)).sum();
    let edit = missing_bytes <= need.target.size / 4;
    let at = near_offsets(need, &absent, edit);
    if at.is_empty() {
        return None;
    }
    let old = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(beneath::checked(root(config), &need.path).ok()?)
        .ok()?;
    old.metadata()
        .is_ok_and(|m| m.is_file())
        .then(|| (Arc::new(old), at))
}

/// Missing chunks asked for as pieces at each end of a run of them ([`near_chunks`]).
const EDGE_CHUNKS: usize = 2;

/// Where in the file being replaced (`need.local`, as this node indexed it) the bytes of the
/// missing chunks (offsets in `absent`) to ask for as pieces most likely are — all of them when
/// `every`, else the [`EDGE_CHUNKS`] at each end of each run: their offset in the new version,
/// less how far the content around them moved. A chunk both versions have tells how far it moved (its new
/// offset less its old); a run of missing chunks takes the shift of the chunk before it, and its
/// last chunk the shift of the chunk after it — so an insert or a delete, which moves everything
/// after it, leaves the pieces after it in place: 1 byte inserted at the start of a file makes its
/// first chunk new through and through at the same offset, and one piece of it new at the shifted
/// one. An overwrite moves nothing: the same offset. May be before the file's start (the caller
/// reads what there is).
fn near_offsets(need: &Need, absent: &HashSet<u64>, every: bool) -> HashMap<u64, i64> {
    // Old offsets of each chunk of the replaced version.
    let mut old: HashMap<Hash, Vec<u64>> = HashMap::new();
    if let Some(local) = need.local.as_ref().filter(|l| !l.deleted) {
        for c in local.chunks_with_offsets() {
            old.entry(c.hash).or_default().push(c.offset);
        }
    }
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    // The shift of each chunk of the new version found in the old one (the nearest copy).
    let shift_of = |c: &shoal_core::chunk::Chunk| -> Option<i64> {
        let offsets = old.get(&c.hash)?;
        let nearest = offsets.iter().min_by_key(|o| o.abs_diff(c.offset))?;
        Some(as_i64(c.offset) - as_i64(*nearest))
    };
    let mut at = HashMap::new();
    let mut before: Option<i64> = None;
    let mut run: Vec<u64> = Vec::new();
    let mut settle = |run: &mut Vec<u64>, before: Option<i64>, after: Option<i64>| {
        let n = run.len();
        for (i, offset) in run.drain(..).enumerate() {
            if !every && i >= EDGE_CHUNKS && i + EDGE_CHUNKS < n {
                continue;
            }
            let shift = if i + 1 == n {
                after.or(before)
            } else {
                before.or(after)
            };
            at.insert(offset, as_i64(offset) - shift.unwrap_or(0));
        }
    };
    for c in need.target.chunks_with_offsets() {
        if absent.contains(&c.offset) {
            run.push(c.offset);
            continue;
        }
        // A chunk this node has elsewhere but not in this file tells nothing of a shift.
        if let Some(shift) = shift_of(&c) {
            settle(&mut run, before, Some(shift));
            before = Some(shift);
        }
    }
    settle(&mut run, before, None);
    at
}

/// A chunk of a file being edited ([`near_chunks`]): the pieces that differ from what `old` holds
/// at `from` (where its bytes most likely are; before the file's start reads as zeros), put
/// together with the rest and verified; if that fails, the whole chunk ([`fetch_verified`]).
async fn fetch_near_verified(
    source: &dyn ChunkSource,
    sources: &[PeerKey],
    chunk: &shoal_core::chunk::Chunk,
    old: Arc<File>,
    from: i64,
) -> Result<Vec<u8>, Failure> {
    let len = chunk.len as usize;
    let near = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; len];
        // Bytes before the file's start stay zeros: their pieces are sent.
        let pad = usize::try_from(from.min(0).unsigned_abs())
            .unwrap_or(len)
            .min(len);
        let start = u64::try_from(from.max(0)).unwrap_or(0);
        let mut n = pad;
        while n < len {
            match old.read_at(&mut buf[n..], start + (n - pad) as u64) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        buf.truncate(n);
        buf
    })
    .await
    .unwrap_or_default();
    if near.is_empty() {
        return fetch_verified(source, sources, chunk).await;
    }
    match source
        .fetch_near(chunk.hash, sources.to_vec(), near, chunk.len)
        .await
    {
        Ok(bytes) if bytes.len() == len && Hash::of(&bytes) == chunk.hash => return Ok(bytes),
        Ok(_) => {
            debug!(chunk = %&chunk.hash.to_hex()[..12], "a chunk put together from pieces did not verify: fetched whole")
        }
        Err(e) => {
            debug!(chunk = %&chunk.hash.to_hex()[..12], "a chunk asked for as pieces: {e}; fetched whole")
        }
    }
    fetch_verified(source, sources, chunk).await
}

/// One chunk from one of `sources`, verified; tried [`FETCH_ATTEMPTS`] times.
async fn fetch_verified(
    source: &dyn ChunkSource,
    sources: &[PeerKey],
    chunk: &shoal_core::chunk::Chunk,
) -> Result<Vec<u8>, Failure> {
    let mut last = String::new();
    for _ in 0..FETCH_ATTEMPTS {
        match source.fetch(chunk.hash, sources.to_vec()).await {
            Ok(bytes) if bytes.len() == chunk.len as usize && Hash::of(&bytes) == chunk.hash => {
                return Ok(bytes);
            }
            Ok(_) => last = "a peer sent a chunk that does not verify".into(),
            Err(e) => last = e,
        }
    }
    Err(Failure::from(format!(
        "chunk {}: {last}",
        &chunk.hash.to_hex()[..12]
    )))
}

/// A temporary being filled: where it is (the chunks written into it are offered to peers from
/// there), the open file, and its write-behind window, which the copier and the fetcher's writer
/// share when both fill it at once (a window that did not know what the other wrote would never
/// see its front move past the first range it missed).
#[derive(Clone)]
struct Filling {
    path: Arc<Path>,
    file: Arc<File>,
    behind: Arc<Mutex<WriteBehind>>,
}

impl Filling {
    fn new(path: Arc<Path>, file: File) -> Filling {
        Filling {
            path,
            file: Arc::new(file),
            behind: Arc::default(),
        }
    }

    /// The temporary now holds `offset..end`.
    fn wrote(&self, offset: u64, end: u64) {
        lock(&self.behind).wrote(&self.file, offset, end);
    }
}

/// Fetched chunks waiting for the file's writer.
const WRITES_QUEUED: usize = 8;

/// Writes fetched chunks into a temporary as they come, through a write-behind window (written
/// out as it goes, then out of the page cache), and offers them to peers pulling the same file
/// (announced a few at a time, and whenever no more are waiting). On an error (a full disk),
/// stops at once: the fetchers then stop too.
fn write_fetched(
    config: &PullerConfig,
    filling: Filling,
    shared: &Shared,
    ahead: Option<&Mutex<ahead::Written>>,
    mut writes: tokio::sync::mpsc::Receiver<(shoal_core::chunk::Chunk, Vec<u8>)>,
) -> io::Result<()> {
    let mut fresh = Vec::new();
    while let Some((chunk, bytes)) = writes.blocking_recv() {
        filling.file.write_all_at(&bytes, chunk.offset)?;
        let n = bytes.len() as u64;
        filling.wrote(chunk.offset, chunk.offset + n);
        shared.fetched.fetch_add(n, Ordering::Relaxed);
        match ahead {
            // Counted in a round's progress when its pull adopts it.
            Some(written) => {
                lock(written).insert(chunk.offset, (chunk.hash, chunk.len));
            }
            None => {
                shared.bytes_done.fetch_add(n, Ordering::Relaxed);
            }
        }
        if index(config).assembling(&filling.path, chunk.hash, chunk.offset, chunk.len) {
            fresh.push(chunk.hash);
        }
        if fresh.len() >= ANNOUNCE_AT || (!fresh.is_empty() && writes.is_empty()) {
            config.source.have(std::mem::take(&mut fresh));
        }
    }
    Ok(())
}

/// Chunks written are announced to peers at least this many at a time (or when the writer has
/// nothing else to do).
const ANNOUNCE_AT: usize = 32;

/// A large file's chunks are fetched in windows of this many, each in a random order: nodes
/// pulling the same file at once then seldom ask its source for the same chunk at the same time,
/// and pass on to each other (`Have`) what each got. (In file order they would all ask for the
/// same chunks at the same moment; rotated windows still had a node that got ahead through
/// chunks passed on to it catch up with another and march with it in step.) A window (~256 MiB)
/// bounds how far the writes scatter ahead of the write-behind window.
const FETCH_WINDOW: usize = 1024;

/// `chunks` (in file order) in windows of `window`, each in the order [`shuffle_steps`] gives.
fn in_windows(chunks: Vec<Chunk>, window: usize, mut random: impl FnMut() -> u64) -> Vec<Chunk> {
    let mut out = Vec::with_capacity(chunks.len());
    let mut rest = chunks.into_iter().peekable();
    while rest.peek().is_some() {
        let mut w: Vec<Chunk> = rest.by_ref().take(window.max(1)).collect();
        shuffle_steps(&mut w, &mut random);
        out.extend(w);
    }
    out
}

/// Orders `chunks` (in file order) by the write-back steps they start in
/// ([`shoal_scan::writeback::STEP`], 8 MiB), the steps in a random order and each step's chunks
/// shuffled. Chunks shuffled over a whole window made whole steps only near its end: writeback
/// of most of a window started at once, ~300 MB were dirty when a 1 GiB pull was all there, and
/// its final sync waited 0.75 s for them; step after step, writeback follows the fetches.
fn shuffle_steps(chunks: &mut Vec<Chunk>, random: &mut impl FnMut() -> u64) {
    let step = shoal_scan::writeback::STEP;
    let mut runs: Vec<Vec<Chunk>> = Vec::new();
    for c in chunks.drain(..) {
        match runs.last_mut() {
            Some(run) if run[0].offset / step == c.offset / step => run.push(c),
            _ => runs.push(vec![c]),
        }
    }
    shuffle(&mut runs, random);
    for mut run in runs {
        shuffle(&mut run, random);
        chunks.extend(run);
    }
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], random: &mut impl FnMut() -> u64) {
    for i in (1..items.len()).rev() {
        let j = (random() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// A fast generator seeded from the system's randomness (xorshift64*: the order of fetches
/// needs to differ between nodes, not to be unpredictable).
fn shuffler() -> impl FnMut() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let mut x = u64::from_le_bytes(b) | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What [`plan_local`] found for a temporary: the temporary, the chunks a local file holds (for
/// [`copy_planned`]), and those that must be fetched.
struct Local {
    filling: Filling,
    to_copy: Vec<shoal_core::chunk::Chunk>,
    missing: Vec<shoal_core::chunk::Chunk>,
}

/// Opens (or creates) the temporary file, reserves its room ([`preallocate`]), keeps every chunk
/// already there (`ahead`: the chunks written in a temporary fetched ahead, which holds nothing
/// else; or a temporary being resumed), and tells the chunks a local file holds — for
/// [`copy_planned`] to copy — from those to fetch. The two then fill the temporary at once: an
/// edit of a large file is a copy of most of it and a fetch of the rest, and takes as long as
/// the longer of them, not both.
fn plan_local(
    config: &PullerConfig,
    shared: &Shared,
    temp: &Path,
    chunks: Vec<shoal_core::chunk::Chunk>,
    ahead: Option<&ahead::Written>,
) -> io::Result<Local> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(temp)?;
    let have = file.metadata()?.len();
    let size = chunks.last().map_or(0, |c| c.offset + u64::from(c.len));
    preallocate(&file, have, size)?;
    let filling = Filling::new(temp.into(), file);
    let (mut to_copy, mut missing) = (Vec::new(), Vec::new());
    let mut buf = Vec::new();
    for chunk in chunks {
        let len = u64::from(chunk.len);
        // A temporary fetched ahead holds what it wrote and nothing else: not read again.
        let there = match ahead {
            Some(written) => written.get(&chunk.offset) == Some(&(chunk.hash, chunk.len)),
            None => chunk.offset + len <= have && holds(&filling.file, &mut buf, &chunk),
        };
        if there {
            filling.wrote(chunk.offset, chunk.offset + len);
            shared.bytes_done.fetch_add(len, Ordering::Relaxed);
        } else if index(config).holds(&chunk.hash) {
            // Where a local file still does is for the copier to find.
            to_copy.push(chunk);
        } else {
            missing.push(chunk);
        }
    }
    Ok(Local {
        filling,
        to_copy,
        missing,
    })
}

/// Copier: copies `to_copy` into the temporary from the local files holding them; returns those
/// it could not (their file changed or went since it was indexed), to be fetched.
///
/// A chunk of a local file whose stat is still the one it was indexed with is copied in the
/// kernel (`copy_file_range`, runs of neighbouring chunks in one call) without being read here:
/// the same trust the scanner gives an unchanged stat (a write since the scanner's stat gets a new
/// ctime). If the file's stat has moved by the end of the copy, what came from it is read back
/// from the temporary and verified. Chunks of any other file are read and verified first.
fn copy_planned(
    config: &PullerConfig,
    shared: &Shared,
    filling: &Filling,
    to_copy: Vec<shoal_core::chunk::Chunk>,
) -> io::Result<Vec<shoal_core::chunk::Chunk>> {
    // Copied bytes count as done; those that failed to verify after all are taken back.
    let count = |chunk: &shoal_core::chunk::Chunk, copied: bool| {
        for counter in [&shared.copied, &shared.bytes_done] {
            if copied {
                counter.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            } else {
                counter.fetch_sub(u64::from(chunk.len), Ordering::Relaxed);
            }
        }
    };
    let mut copier = Copier::new(config, filling);
    let mut failed = Vec::new();
    for chunk in to_copy {
        if copier.copy_from_local(&chunk)? {
            count(&chunk, true);
        } else {
            failed.push(chunk);
        }
    }
    for chunk in copier.finish()? {
        count(&chunk, false);
        failed.push(chunk);
    }
    Ok(failed)
}

/// [`plan_local`] then [`copy_planned`], one after the other: the temporary, and every chunk
/// still missing.
#[cfg(test)]
fn copy_local(
    config: &PullerConfig,
    shared: &Shared,
    temp: &Path,
    chunks: Vec<shoal_core::chunk::Chunk>,
    ahead: Option<&ahead::Written>,
) -> io::Result<(Filling, Vec<shoal_core::chunk::Chunk>)> {
    let Local {
        filling,
        to_copy,
        mut missing,
    } = plan_local(config, shared, temp, chunks, ahead)?;
    missing.extend(copy_planned(config, shared, &filling, to_copy)?);
    missing.sort_by_key(|c| c.offset);
    Ok((filling, missing))
}

/// Reserves the blocks of a temporary `size` bytes long that holds `have` bytes so far: the room
/// the fit check found is then the file's, whoever else writes to the disk meanwhile, and chunks
/// written in any order land in blocks already allocated (on ext4, 1 GiB written in shuffled
/// 1 MiB pieces took 0.22 CPU-s, and 1.2–1.7 s in half the runs, without; 0.14 s with). The size
/// is set at once; what was never written is a hole (see [`never_written`]), so a resumed
/// download checks only the chunks it had written. A file system that cannot preallocate is
/// written as before. No room is the disk-full error, the reservation given back.
fn preallocate(file: &File, have: u64, size: u64) -> io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let (Ok(offset), Ok(len)) = (
        i64::try_from(have),
        i64::try_from(size.saturating_sub(have)),
    ) else {
        return Ok(());
    };
    if len == 0 {
        return Ok(());
    }
    match fallocate(file, FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        Err(e @ (nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT)) => {
            file.set_len(have)?;
            Err(e.into())
        }
        Err(e) => {
            debug!(error = %e, "cannot preallocate; writing without");
            Ok(())
        }
    }
}

/// True when `len` bytes at `offset` of `file` lie in a hole (`SEEK_DATA` finds no data before
/// their end). False when it cannot tell.
fn never_written(file: &File, offset: u64, len: u32) -> bool {
    use nix::unistd::{Whence, lseek};
    let Ok(at) = i64::try_from(offset) else {
        return false;
    };
    match lseek(file, at, Whence::SeekData) {
        Ok(data) => u64::try_from(data).is_ok_and(|d| d >= offset + u64::from(len)),
        Err(nix::errno::Errno::ENXIO) => true,
        Err(_) => false,
    }
}

/// Whether the temporary `file` holds `chunk` (read into `buf`). One lying wholly in a hole was
/// never written (the temporary is preallocated, and file systems show blocks reserved but never
/// written as holes): not read, so resuming a large download reads what it had, not the whole
/// file.
fn holds(file: &File, buf: &mut Vec<u8>, chunk: &shoal_core::chunk::Chunk) -> bool {
    if never_written(file, chunk.offset, chunk.len) {
        return false;
    }
    buf.resize(chunk.len as usize, 0);
    file.read_exact_at(buf, chunk.offset).is_ok() && Hash::of(buf) == chunk.hash
}

/// Fills one temporary from local files.
struct Copier<'a> {
    config: &'a PullerConfig,
    filling: &'a Filling,
    sources: Sources,
    /// Chunks waiting to be copied in one call.
    run: Option<Run>,
    /// Chunks copied unread, with the source they came from.
    unread: Vec<(usize, shoal_core::chunk::Chunk)>,
    buf: Vec<u8>,
}

impl<'a> Copier<'a> {
    fn new(config: &'a PullerConfig, filling: &'a Filling) -> Copier<'a> {
        Copier {
            config,
            filling,
            sources: Sources::default(),
            run: None,
            unread: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Copies `chunk` from a local file that has it, if one does; false if none.
    fn copy_from_local(&mut self, chunk: &shoal_core::chunk::Chunk) -> io::Result<bool> {
        let locations = index(self.config)
            .chunk_locations(&chunk.hash)
            .unwrap_or_default();
        for loc in locations.iter().filter(|l| l.len == chunk.len) {
            let Some((at, trusted)) = self.sources.open(root(self.config), loc) else {
                continue;
            };
            if trusted {
                self.queue(Run {
                    source: at,
                    from: loc.offset,
                    to: chunk.offset,
                    len: u64::from(chunk.len),
                })?;
                self.unread.push((at, *chunk));
                return Ok(true);
            }
            self.buf.resize(chunk.len as usize, 0);
            if self.sources.list[at]
                .file
                .read_exact_at(&mut self.buf, loc.offset)
                .is_ok()
                && Hash::of(&self.buf) == chunk.hash
            {
                self.filling.file.write_all_at(&self.buf, chunk.offset)?;
                self.filling
                    .wrote(chunk.offset, chunk.offset + u64::from(chunk.len));
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Adds `next` to the waiting run if it continues it, else copies the run and starts anew.
    fn queue(&mut self, next: Run) -> io::Result<()> {
        match &mut self.run {
            Some(r)
                if r.source == next.source
                    && r.from + r.len == next.from
                    && r.to + r.len == next.to
                    && r.len < RUN_MAX =>
            {
                r.len += next.len;
            }
            _ => {
                if let Some(r) = self.run.replace(next) {
                    self.copy(r)?;
                }
            }
        }
        Ok(())
    }

    fn copy(&mut self, run: Run) -> io::Result<()> {
        let (source, start, end) = (run.source, run.to, run.to + run.len);
        if !run.copy(&self.sources, &self.filling.file)? {
            self.sources.list[source].cut_short = true;
        }
        self.filling.wrote(start, end);
        Ok(())
    }

    /// Copies what is still waiting, then reads back and verifies every chunk copied unread from
    /// a source whose stat moved meanwhile; returns those that do not verify.
    fn finish(mut self) -> io::Result<Vec<shoal_core::chunk::Chunk>> {
        if let Some(r) = self.run.take() {
            self.copy(r)?;
        }
        let moved: Vec<bool> = self
            .sources
            .list
            .iter()
            .map(|s| s.cut_short || !s.still())
            .collect();
        let mut failed = Vec::new();
        for (at, chunk) in std::mem::take(&mut self.unread) {
            if moved[at] && !holds(&self.filling.file, &mut self.buf, &chunk) {
                failed.push(chunk);
            }
        }
        Ok(failed)
    }
}

/// Local files chunks are copied from, each opened once per temporary.
#[derive(Default)]
struct Sources {
    by_path: HashMap<String, Option<usize>>,
    list: Vec<Source>,
}

struct Source {
    file: File,
    /// Its metadata when opened.
    opened: Option<fs::Metadata>,
    /// A copy from it stopped early: what came from it is verified.
    cut_short: bool,
}

impl Sources {
    /// The source holding `loc`, opened on first use (`None` if it cannot be), and whether the
    /// chunk can be copied unread: the file showed, when opened, the stamp the offsets were
    /// indexed with (`Stamp::still_describes`, the test `Index::read_chunk` makes too).
    fn open(&mut self, root: &Path, loc: &shoal_index::ChunkLocation) -> Option<(usize, bool)> {
        let list = &mut self.list;
        let at = self.by_path.entry(loc.path.clone()).or_insert_with(|| {
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(beneath::checked(root, &loc.path).ok()?)
                .ok()?;
            let opened = file.metadata().ok();
            list.push(Source {
                file,
                opened,
                cut_short: false,
            });
            Some(list.len() - 1)
        });
        let at = (*at)?;
        let trusted = self.list[at]
            .opened
            .as_ref()
            .is_some_and(|m| loc.stamp.still_describes(m));
        Some((at, trusted))
    }
}

impl Source {
    /// The file still has the stat it was opened with.
    fn still(&self) -> bool {
        let stat = |m: &fs::Metadata| DiskStat::from_metadata(m);
        match (self.file.metadata(), &self.opened) {
            (Ok(now), Some(then)) => stat(&now).is_some() && stat(&now) == stat(then),
            _ => false,
        }
    }
}

/// Neighbouring chunks copied from one source in one call.
struct Run {
    source: usize,
    from: u64,
    to: u64,
    len: u64,
}

/// Runs are copied in pieces of about this much, so that the disk writes one while the next is
/// copied (copying 512 MiB, then writing it out, took ~1.5x as long).
const RUN_MAX: u64 = 32 << 20;

impl Run {
    /// Copies the run; false if the source ended early or could not be read (what was copied
    /// from it must then be verified). Errors are the destination's.
    fn copy(self, sources: &Sources, to: &File) -> io::Result<bool> {
        let from = &sources.list[self.source].file;
        for (off_in, off_out, len) in clonable_pieces(self.from, self.to, self.len) {
            if !copy_range(from, off_in, to, off_out, len)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The block size file systems clone (share extents) in: offsets and lengths must be multiples.
const CLONE_BLOCK: u64 = 4096;

/// A run to copy as pieces `(from, to, len)`: its whole blocks in one piece, the ragged ends
/// around them in others, when source and destination are equally placed within a block (as
/// every run of a file edited in place is). `copy_file_range` on a file system that shares
/// extents (XFS, btrfs) then clones the middle piece — metadata only, whatever its size — where
/// a range that is not block-aligned is copied byte by byte, whole. Elsewhere (ext4) every piece
/// is copied as the whole run was.
fn clonable_pieces(from: u64, to: u64, len: u64) -> Vec<(u64, u64, u64)> {
    let head = (CLONE_BLOCK - from % CLONE_BLOCK) % CLONE_BLOCK;
    if from % CLONE_BLOCK != to % CLONE_BLOCK || len < head + CLONE_BLOCK {
        return vec![(from, to, len)];
    }
    let middle = (len - head) / CLONE_BLOCK * CLONE_BLOCK;
    let tail = len - head - middle;
    [
        (from, to, head),
        (from + head, to + head, middle),
        (from + head + middle, to + head + middle, tail),
    ]
    .into_iter()
    .filter(|&(_, _, n)| n > 0)
    .collect()
}

/// Copies `len` bytes at `off_in` of `from` to `off_out` of `to`, in the kernel where it can;
/// false if the source ended early or could not be read (what was copied from it must then be
/// verified). Errors are the destination's.
fn copy_range(from: &File, off_in: u64, to: &File, off_out: u64, len: u64) -> io::Result<bool> {
    let (mut off_in, mut off_out) = (off_in as i64, off_out as i64);
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want) {
            // The source shrank: it changed, and `Copier::finish` verifies what came from it.
            Ok(0) => return Ok(false),
            Ok(n) => left -= n as u64,
            Err(nix::errno::Errno::EINTR) => {}
            // Another file system under the namespace, or none that can: copy by hand.
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => {
                let mut buf = vec![0u8; left.min(1 << 20) as usize];
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if from.read_exact_at(&mut buf[..n], off_in as u64).is_err() {
                        return Ok(false);
                    }
                    to.write_all_at(&buf[..n], off_out as u64)?;
                    off_in += n as i64;
                    off_out += n as i64;
                    left -= n as u64;
                }
            }
            // The disk holding the temporary is full: the caller pauses.
            Err(e @ (nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT)) => {
                return Err(io::Error::from(e));
            }
            // Anything else may be the source's: what was copied is verified.
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

/// Nanoseconds since the epoch as whole seconds and the nanoseconds past them (also before 1970).
fn split_ns(ns: i64) -> (i64, i64) {
    (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

fn set_mtime(path: &Path, mtime_ns: i64) -> io::Result<()> {
    let (secs, nanos) = split_ns(mtime_ns);
    let mtime = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// The finisher: durable data, then atomic replacement of every target that is still what the
/// plan saw, then one index transaction.
fn finish(config: &PullerConfig, shared: &Shared, ready: Vec<Ready>) -> Errors {
    let mut errors = Errors::default();
    if ready.is_empty() {
        return errors;
    }
    let root = root(config);
    let started = Instant::now();
    if let Ok(dir) = File::open(root) {
        let _ = nix::unistd::syncfs(&dir);
    }
    debug!(namespace = %config.name, files = ready.len(), secs = started.elapsed().as_secs_f32(), "synced the file system");
    let _exclusive = config.scanner.exclusive();
    let mut batch = index(config).batch();
    let mut parents = BTreeSet::new();
    let mut pulled = 0;
    let mut conflicts = 0;
    // Their chunks are served from the index once it is committed, no longer from the temporary.
    let mut renamed = Vec::new();
    for r in ready {
        let path = abs(root, &r.need.path);
        if !unchanged(config, &r.need) {
            // A local edit since the plan: never clobbered. The scanner records it and the next
            // round resolves the two versions (a conflict copy if they are concurrent).
            errors.add(&r.need.path, "changed locally while it was being replaced");
            continue;
        }
        let result = (|| -> io::Result<Entry> {
            beneath::checked(root, &r.need.path)?;
            if r.need.local.as_ref().is_some_and(|l| !l.deleted) {
                set_aside(config, &r.need, &path)?;
            }
            fs::rename(&r.temp, &path)?;
            recorded(&r.need, &path)
        })();
        match result {
            Ok(entry) => {
                lock(&shared.temps).remove(&r.temp);
                renamed.push(r.temp.clone());
                if r.need.keep_local_as_conflict {
                    conflicts += 1;
                }
                pulled += 1;
                batch.put(&r.need.path, entry);
                parents.extend(path.parent().map(Path::to_path_buf));
            }
            Err(e) => errors.io(&r.need.path, &e, METADATA_BYTES),
        }
    }
    sync_dirs(&parents);
    if let Err(e) = batch.commit() {
        errors.index(&e);
    }
    for temp in &renamed {
        index(config).assembled(temp);
    }
    shared.update(|s| {
        s.files_pulled += pulled;
        s.conflicts += conflicts;
    });
    errors
}

fn delete(config: &PullerConfig, needs: Vec<Need>) -> Errors {
    let mut errors = Errors::default();
    let root = root(config);
    let _exclusive = config.scanner.exclusive();
    let mut batch = index(config).batch();
    let mut parents = BTreeSet::new();
    for need in needs {
        if !unchanged(config, &need) {
            errors.add(&need.path, "changed locally meanwhile");
            continue;
        }
        let path = abs(root, &need.path);
        let result = match &need.local {
            Some(l) if !l.deleted => {
                beneath::checked(root, &need.path).and_then(|at| match l.kind {
                    Kind::File if config.archive => archive(root, &need.path, &at),
                    Kind::File | Kind::Symlink => fs::remove_file(&at),
                    Kind::Dir => fs::remove_dir(&at),
                })
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => {
                let mut tombstone = need.target.clone();
                tombstone.local = Default::default();
                batch.put(&need.path, tombstone);
                parents.extend(path.parent().map(Path::to_path_buf));
            }
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                errors.add(
                    &need.path,
                    "deleted on a peer, but holds files this node does not sync (ignored?); kept",
                );
            }
            Err(e) => errors.io(&need.path, &e, METADATA_BYTES),
        }
    }
    sync_dirs(&parents);
    if let Err(e) = batch.commit() {
        errors.index(&e);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        let mut errors = Errors::default();
        errors.add("a", "no peer announced it");
        errors.io("b", &io::Error::from(nix::errno::Errno::EACCES), 10);
        assert_eq!(errors.short, None);
        let mut full = Errors::default();
        full.io("c", &io::Error::from(nix::errno::Errno::ENOSPC), 300);
        full.no_space("d", 100, "does not fit");
        let mut quota = Errors::default();
        quota.io("e", &io::Error::from(nix::errno::Errno::EDQUOT), 50);
        full.merge(quota);
        errors.merge(full);
        let Err(u) = errors.into_result() else {
            panic!("errors were recorded")
        };
        assert_eq!(
            u.short,
            Some(Shortage {
                files: 3,
                total: 450,
                smallest: 50
            })
        );
        assert_eq!(
            u.why,
            "5 paths not synced yet; first: a: no peer announced it"
        );
        assert!(Errors::default().into_result().is_ok());
    }

    struct NoPeers;
    impl ChunkSource for NoPeers {
        fn fetch(&self, _: Hash, _: Vec<PeerKey>) -> Fetching {
            Box::pin(async { Err("no peers in this test".to_owned()) })
        }
    }

    /// A namespace whose index records `files`, and a puller's view of it.
    fn namespace(files: &[(&str, &[u8])]) -> (tempfile::TempDir, PullerConfig) {
        let tmp = must(tempfile::tempdir());
        let root = tmp.path().join("ns");
        must(fs::create_dir_all(root.join(".sync")));
        for (name, bytes) in files {
            must(fs::write(root.join(name), bytes));
        }
        let share = shoal_core::secret::ShareId([1; 16]);
        let index = must(Index::open(&tmp.path().join("state/ns.redb"), &share));
        let scanner = Scanner::new(root, Arc::new(index), shoal_core::version::DeviceId(1));
        must(scanner.scan_all());
        let config = PullerConfig {
            name: "test".into(),
            scanner: Arc::new(scanner),
            source: Arc::new(NoPeers),
            archive: false,
            archive_keep: Duration::from_secs(1),
        };
        (tmp, config)
    }

    #[test]
    fn chunks_are_fetched_shuffled_within_windows_only_a_step_at_a_time() {
        let step = shoal_scan::writeback::STEP;
        // 2,500 chunks of 100 KiB: ~82 to a step.
        let chunks: Vec<Chunk> = (0..2500u64)
            .map(|i| Chunk {
                offset: (i * 100) << 10,
                len: 100 << 10,
                hash: Hash::of(&i.to_le_bytes()),
            })
            .collect();
        let order = in_windows(chunks.clone(), 1000, shuffler());
        assert_eq!(order.len(), chunks.len());
        for (w, part) in order.chunks(1000).enumerate() {
            let mut sorted = part.to_vec();
            sorted.sort_unstable_by_key(|c| c.offset);
            let end = (w * 1000 + 1000).min(2500);
            assert_eq!(
                sorted,
                chunks[w * 1000..end],
                "window {w} holds its own chunks, each once"
            );
            // A step's chunks come together: each step is started once.
            let mut started = std::collections::HashSet::new();
            for (i, c) in part.iter().enumerate() {
                if i == 0 || part[i - 1].offset / step != c.offset / step {
                    assert!(
                        started.insert(c.offset / step),
                        "step {} split",
                        c.offset / step
                    );
                }
            }
        }
        assert_ne!(order, chunks, "shuffled");
        let steps: Vec<u64> = order.iter().map(|c| c.offset / step).collect();
        assert!(!steps.is_sorted(), "the steps too");
        // Two nodes pull in different orders.
        assert_ne!(order, in_windows(chunks.clone(), 1000, shuffler()));
        // Degenerate sizes.
        assert_eq!(
            in_windows(chunks[..1].to_vec(), 1000, shuffler()),
            chunks[..1]
        );
        assert!(in_windows(Vec::new(), 1000, shuffler()).is_empty());
        assert_eq!(in_windows(chunks[..2].to_vec(), 0, shuffler()).len(), 2);
    }

    #[test]
    fn small_files_are_shared_out_by_whole_directories_in_order() {
        let need = |path: &str| Need {
            path: path.to_owned(),
            target: Entry {
                kind: Kind::File,
                deleted: false,
                size: 1,
                mode: 0o644,
                mtime_ns: 0,
                local: Default::default(),
                chunks: Vec::new(),
                hash: Hash::of(b""),
                target: None,
                version: Default::default(),
                modified_by: shoal_core::version::DeviceId(1),
                seq: 0,
            },
            sources: Vec::new(),
            local: None,
            keep_local_as_conflict: false,
            version_only: false,
        };
        let paths = ["a/1", "b/1", "a/2", "top", "c/d/1", "a/3", "b/2", "c/1"];
        let shares = by_directory(paths.iter().map(|p| need(p)).collect(), 2);
        assert_eq!(shares.len(), 2);
        let names: Vec<Vec<&str>> = shares
            .iter()
            .map(|s| s.iter().map(|n| n.path.as_str()).collect())
            .collect();
        // Every directory in one share, its files in their order; every file somewhere once.
        for dir in ["a/", "b/", "c/d/", "c/1"] {
            let holders: Vec<_> = names
                .iter()
                .filter(|s| s.iter().any(|p| p.starts_with(dir)))
                .collect();
            assert_eq!(holders.len(), 1, "{dir} split across shares: {names:?}");
        }
        assert_eq!(
            names
                .iter()
                .flatten()
                .filter(|p| p.starts_with("a/"))
                .collect::<Vec<_>>(),
            [&"a/1", &"a/2", &"a/3"]
        );
        let mut all: Vec<&str> = names.concat();
        all.sort_unstable();
        let mut want = paths.to_vec();
        want.sort_unstable();
        assert_eq!(all, want);
        // Balanced: the largest directory (3 files) alone against the rest (5) at worst.
        assert!(names.iter().all(|s| s.len() <= 5), "{names:?}");
        // Fewer files than writers: no empty share.
        assert_eq!(by_directory(vec![need("x")], 4).len(), 1);
        assert!(by_directory(Vec::new(), 4).is_empty());
    }

    #[test]
    fn runs_are_cut_so_that_whole_blocks_can_be_cloned() {
        let b = CLONE_BLOCK;
        // Equally placed: ragged head, whole blocks, ragged tail; together the run exactly.
        for (from, to, len) in [
            (100, 100, 10 * b),
            (b + 7, 3 * b + 7, 5 * b + 1),
            (0, 0, 8 * b),
        ] {
            let pieces = clonable_pieces(from, to, len);
            let mut at = (from, to);
            for &(f, t, n) in &pieces {
                assert_eq!((f, t), at, "pieces follow each other");
                assert!(n > 0);
                at = (f + n, t + n);
            }
            assert_eq!(at, (from + len, to + len), "the whole run");
            let whole: Vec<_> = pieces
                .iter()
                .filter(|(f, t, n)| f % b == 0 && t % b == 0 && n % b == 0)
                .collect();
            assert_eq!(whole.len(), 1, "{pieces:?}");
            assert!(whole[0].2 >= len - 2 * b, "{pieces:?}");
        }
        // Placed differently (an insert shifted the content), or under a block: one piece.
        assert_eq!(clonable_pieces(0, 1, 10 * b), vec![(0, 1, 10 * b)]);
        assert_eq!(clonable_pieces(5, 5, b), vec![(5, 5, b)]);
    }

    /// Serves the chunks of the contents it was made with.
    struct Holds(HashMap<Hash, Vec<u8>>);
    impl ChunkSource for Holds {
        fn fetch(&self, hash: Hash, _: Vec<PeerKey>) -> Fetching {
            let answer = self.0.get(&hash).cloned().ok_or_else(|| "none".to_owned());
            Box::pin(async move { answer })
        }
    }

    /// Serves the chunks of one content, counting the bytes it sends; asked near what the asker
    /// holds, only the pieces that differ (or, if it `lies`, wrong ones).
    struct Pieces {
        holds: HashMap<Hash, Vec<u8>>,
        sent: Arc<AtomicU64>,
        lies: bool,
    }
    impl ChunkSource for Pieces {
        fn fetch(&self, hash: Hash, _: Vec<PeerKey>) -> Fetching {
            let answer = self
                .holds
                .get(&hash)
                .cloned()
                .ok_or_else(|| "none".to_owned());
            if let Ok(bytes) = &answer {
                self.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Box::pin(async move { answer })
        }

        fn fetch_near(&self, hash: Hash, _: Vec<PeerKey>, near: Vec<u8>, len: u32) -> Fetching {
            use shoal_core::chunk::{differing, patched, piece_hashes};
            let chunk = self.holds.get(&hash).cloned().unwrap_or_default();
            let (indices, mut bytes) = differing(&chunk, &piece_hashes(&near));
            self.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if self.lies {
                bytes.iter_mut().for_each(|b| *b ^= 1);
            }
            let answer =
                patched(&near, len as usize, &indices, &bytes).ok_or_else(|| "unfit".into());
            Box::pin(async move { answer })
        }
    }

    /// The chunks of `new` by hash (what a peer holding it answers with), and the bytes of those
    /// `old` does not have.
    fn chunks_and_fresh(old: &[u8], new: &[u8]) -> (HashMap<Hash, Vec<u8>>, u64) {
        let old_chunks = shoal_core::chunk::chunk_bytes(old);
        let mut holds = HashMap::new();
        let mut fresh = 0;
        for c in shoal_core::chunk::chunk_bytes(new) {
            let range = c.offset as usize..(c.offset + u64::from(c.len)) as usize;
            holds.insert(c.hash, new[range].to_vec());
            if !old_chunks.iter().any(|o| o.hash == c.hash) {
                fresh += u64::from(c.len);
            }
        }
        (holds, fresh)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_edited_in_place_is_fetched_as_the_pieces_that_differ() {
        use shoal_core::chunk::PIECE;
        let old = shoal_core::testing::noise(8 << 20, 31);
        let mut new = old.clone();
        let at = (3 << 20) + 5000;
        new[at..at + 100_000].copy_from_slice(&shoal_core::testing::noise(100_000, 32));
        let (holds, fresh) = chunks_and_fresh(&old, &new);
        for lies in [false, true] {
            let (_tmp, mut config) = namespace(&[("big", &old)]);
            let sent = Arc::new(AtomicU64::new(0));
            config.source = Arc::new(Pieces {
                holds: holds.clone(),
                sent: sent.clone(),
                lies,
            });
            let config = Arc::new(config);
            let shared = Arc::new(Shared::default());
            let need = wanted("big", Kind::File, &new);
            let Ok(ready) = assemble(&config, &shared, need, Arc::new(Semaphore::new(8))).await
            else {
                panic!("not assembled");
            };
            assert!(must(fs::read(&ready.temp)) == new, "assembled wrong");
            let sent = sent.load(Ordering::Relaxed);
            if lies {
                // Pieces that do not verify: the chunks are fetched whole.
                assert!(sent > fresh, "{sent} of {fresh}");
            } else {
                // The edit, and at most a piece either side of it; not the chunks around it.
                assert!(sent <= 100_000 + 2 * PIECE as u64, "{sent} bytes sent");
                assert!(fresh > 2 * sent, "{fresh} bytes in the chunks changed");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_inserted_or_deleted_are_fetched_as_the_pieces_that_moved() {
        use shoal_core::chunk::PIECE;
        let old = shoal_core::testing::noise(8 << 20, 33);
        let old_chunks = shoal_core::chunk::chunk_bytes(&old);
        // 1 byte inserted at the start; 3 bytes deleted just after the third chunk's start.
        let mut inserted = vec![0xa5];
        inserted.extend_from_slice(&old);
        let cut = old_chunks[2].offset as usize + 10;
        let mut deleted = old[..cut].to_vec();
        deleted.extend_from_slice(&old[cut + 3..]);
        for (what, new) in [("inserted", inserted), ("deleted", deleted)] {
            let (holds, fresh) = chunks_and_fresh(&old, &new);
            let (_tmp, mut config) = namespace(&[("big", &old)]);
            let sent = Arc::new(AtomicU64::new(0));
            config.source = Arc::new(Pieces {
                holds,
                sent: sent.clone(),
                lies: false,
            });
            let mut need = wanted("big", Kind::File, &new);
            need.local = must(index(&config).get("big"));
            let config = Arc::new(config);
            let shared = Arc::new(Shared::default());
            let Ok(ready) = assemble(&config, &shared, need, Arc::new(Semaphore::new(8))).await
            else {
                panic!("{what}: not assembled");
            };
            assert!(
                must(fs::read(&ready.temp)) == new,
                "{what}: assembled wrong"
            );
            // The piece holding the change, and at most one more; not the chunk around it.
            let sent = sent.load(Ordering::Relaxed);
            assert!(sent <= 2 * PIECE as u64, "{what}: {sent} bytes sent");
            assert!(
                fresh >= 4 * PIECE as u64,
                "{what}: {fresh} bytes in the chunks changed"
            );
        }
    }

    /// Answers with whole chunks, and notes whether it was asked for one while the temporary did
    /// not yet hold `probe` (bytes the copier writes last).
    struct Watches {
        holds: HashMap<Hash, Vec<u8>>,
        temp: PathBuf,
        probe: (u64, Vec<u8>),
        early: Arc<std::sync::atomic::AtomicBool>,
    }
    impl Watches {
        fn answer(&self, hash: Hash) -> Fetching {
            let mut there = vec![0; self.probe.1.len()];
            let read =
                File::open(&self.temp).and_then(|f| f.read_exact_at(&mut there, self.probe.0));
            if read.is_err() || there != self.probe.1 {
                self.early.store(true, Ordering::Relaxed);
            }
            let answer = self.holds.get(&hash).cloned().ok_or_else(|| "none".into());
            Box::pin(async move { answer })
        }
    }
    impl ChunkSource for Watches {
        fn fetch(&self, hash: Hash, _: Vec<PeerKey>) -> Fetching {
            self.answer(hash)
        }
        fn fetch_near(&self, hash: Hash, _: Vec<PeerKey>, _: Vec<u8>, _: u32) -> Fetching {
            self.answer(hash)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edit_is_fetched_while_the_rest_is_copied() {
        // 64 MiB with 100 kB changed near the start: the copier writes the unchanged end last.
        let old = shoal_core::testing::noise(64 << 20, 41);
        let mut new = old.clone();
        new[1 << 20..(1 << 20) + 100_000].copy_from_slice(&shoal_core::testing::noise(100_000, 42));
        let chunks = shoal_core::chunk::chunk_bytes(&new);
        let holds: HashMap<Hash, Vec<u8>> = chunks
            .iter()
            .map(|c| {
                (
                    c.hash,
                    new[c.offset as usize..(c.offset + u64::from(c.len)) as usize].to_vec(),
                )
            })
            .collect();
        let last = chunks.last().expect("chunks");
        let (_tmp, mut config) = namespace(&[("big", &old)]);
        let need = wanted("big", Kind::File, &new);
        let early = Arc::new(std::sync::atomic::AtomicBool::new(false));
        config.source = Arc::new(Watches {
            holds,
            temp: temp_path(&root(&config).join("big"), &need.target.hash),
            probe: (last.offset, new[last.offset as usize..].to_vec()),
            early: early.clone(),
        });
        let (config, shared) = (Arc::new(config), Arc::new(Shared::default()));
        let Ok(ready) = assemble(&config, &shared, need, Arc::new(Semaphore::new(8))).await else {
            panic!("not assembled");
        };
        assert!(must(fs::read(&ready.temp)) == new, "assembled wrong");
        assert!(
            early.load(Ordering::Relaxed),
            "the changed chunks were asked for only once the copy was done"
        );
        let copied = shared.copied.load(Ordering::Relaxed);
        assert!(copied > 60 << 20, "{copied} bytes copied");
    }

    /// What a peer's record of `path` with these contents (a file) or link target asks for.
    fn wanted(path: &str, kind: Kind, bytes: &[u8]) -> Need {
        let chunks = shoal_core::chunk::chunk_bytes(bytes);
        let mut target = Entry {
            kind,
            deleted: false,
            size: bytes.len() as u64,
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000,
            local: Default::default(),
            chunks: Vec::new(),
            hash: Hash::of(bytes),
            target: None,
            version: Default::default(),
            modified_by: shoal_core::version::DeviceId(2),
            seq: 0,
        };
        match kind {
            Kind::File => {
                target.hash = shoal_core::chunk::file_hash(&chunks);
                target.chunks = chunks
                    .iter()
                    .map(|c| shoal_index::ChunkRef {
                        len: c.len,
                        hash: c.hash,
                    })
                    .collect();
            }
            Kind::Symlink => target.target = Some(String::from_utf8_lossy(bytes).into_owned()),
            Kind::Dir => target.size = 0,
        }
        Need {
            path: path.to_owned(),
            target,
            sources: vec![[9; 32]],
            local: None,
            keep_local_as_conflict: false,
            version_only: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_written_through_a_symlink_on_the_way() {
        let (tmp, mut config) = namespace(&[]);
        let root = root(&config).to_path_buf();
        let outside = tmp.path().join("outside");
        must(fs::create_dir(&outside));
        // A local symlink, not indexed yet, where a peer has a directory.
        must(symlink(&outside, root.join("link")));
        let small = b"a small file".to_vec();
        let large = shoal_core::testing::noise(3 << 20, 5);
        let mut holds = HashMap::new();
        for bytes in [&small, &large] {
            for c in shoal_core::chunk::chunk_bytes(bytes) {
                let range = c.offset as usize..(c.offset + u64::from(c.len)) as usize;
                holds.insert(c.hash, bytes[range].to_vec());
            }
        }
        config.source = Arc::new(Holds(holds));
        let config = Arc::new(config);
        let needs = vec![
            wanted("link/dir", Kind::Dir, b""),
            wanted("link/small", Kind::File, &small),
            wanted("link/large", Kind::File, &large),
            wanted("link/symlink", Kind::Symlink, b"/etc/passwd"),
            wanted("link/new/deeper/small", Kind::File, &small),
            wanted("fine/small", Kind::File, &small),
            wanted("fine/large", Kind::File, &large),
        ];
        let shared = Arc::new(Shared::default());
        let (_stop, mut stopped) = watch::channel(false);
        let result = pull(&config, &shared, needs, HashSet::new(), &mut stopped).await;

        let Err(unfinished) = result else {
            panic!("a pull through a symlink succeeded")
        };
        assert!(
            unfinished.why.starts_with("5 paths not synced yet")
                && unfinished.why.contains("symbolic link"),
            "{}",
            unfinished.why
        );
        let made: Vec<_> = must(fs::read_dir(&outside)).flatten().collect();
        assert!(made.is_empty(), "written outside the namespace: {made:?}");
        // Everything not under the symlink was pulled.
        assert_eq!(must(fs::read(root.join("fine/small"))), small);
        assert_eq!(must(fs::read(root.join("fine/large"))), large);
    }

    #[test]
    fn the_copier_copies_unchanged_files_unread_and_verifies_changed_ones() {
        let old = shoal_core::testing::noise(40 << 20, 21);
        // The new version: the old one with 1 MiB overwritten in the middle.
        let mut new = old.clone();
        new[20 << 20..21 << 20].copy_from_slice(&shoal_core::testing::noise(1 << 20, 22));
        let chunks = shoal_core::chunk::chunk_bytes(&new);
        let fresh: u64 = chunks
            .iter()
            .filter(|c| !shoal_core::chunk::chunk_bytes(&old).contains(c))
            .map(|c| u64::from(c.len))
            .sum();

        // Unchanged since indexed: every old chunk copied in the kernel, the rest missing.
        let (_tmp, config) = namespace(&[("big", &old)]);
        let shared = Shared::default();
        let temp = root(&config).join("t1");
        let (filling, missing) = must(copy_local(&config, &shared, &temp, chunks.clone(), None));
        drop(filling);
        let missing_bytes: u64 = missing.iter().map(|c| u64::from(c.len)).sum();
        assert_eq!(missing_bytes, fresh);
        let got = must(fs::read(&temp));
        for c in &chunks {
            let range = c.offset as usize..(c.offset + u64::from(c.len)) as usize;
            if !missing.contains(c) {
                assert_eq!(Hash::of(&got[range]), c.hash, "chunk at {}", c.offset);
            }
        }

        // Changed since indexed (same size, a chunk overwritten): nothing is copied unread, and
        // the overwritten chunk is not taken for what the index says.
        let mut edited = old.clone();
        edited[1 << 20..(1 << 20) + 10].fill(7);
        must(fs::write(root(&config).join("big"), &edited));
        let temp = root(&config).join("t2");
        let (filling, missing2) = must(copy_local(&config, &shared, &temp, chunks.clone(), None));
        drop(filling);
        assert!(missing2.len() > missing.len());
        let got = must(fs::read(&temp));
        for c in chunks.iter().filter(|c| !missing2.contains(c)) {
            let range = c.offset as usize..(c.offset + u64::from(c.len)) as usize;
            assert_eq!(Hash::of(&got[range]), c.hash, "chunk at {}", c.offset);
        }
    }

    #[test]
    fn a_source_cut_short_during_the_copy_is_verified_not_trusted() {
        let old = shoal_core::testing::noise(40 << 20, 23);
        let chunks = shoal_core::chunk::chunk_bytes(&old);
        let (_tmp, config) = namespace(&[("big", &old)]);
        let temp = must(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(root(&config).join("t")),
        );
        let filling = Filling::new(root(&config).join("t").into(), temp);
        let mut copier = Copier::new(&config, &filling);
        for c in &chunks {
            assert!(must(copier.copy_from_local(c)), "chunk at {}", c.offset);
        }
        // Most of the file is still waiting to be copied when the source is cut to half.
        let big = must(
            OpenOptions::new()
                .write(true)
                .open(root(&config).join("big")),
        );
        must(big.set_len(20 << 20));
        let failed = must(copier.finish());
        assert!(!failed.is_empty());
        let got = must(fs::read(root(&config).join("t")));
        for c in chunks.iter().filter(|c| !failed.contains(c)) {
            let range = c.offset as usize..(c.offset + u64::from(c.len)) as usize;
            assert_eq!(Hash::of(&got[range]), c.hash, "chunk at {}", c.offset);
        }
        // What was still waiting (past the first 32 MiB run, copied before the cut) failed;
        // what was copied before the cut verified and stays.
        let waiting = RUN_MAX + u64::from(shoal_core::chunk::MAX_SIZE);
        assert!(
            chunks
                .iter()
                .filter(|c| c.offset >= waiting)
                .all(|c| failed.contains(c))
        );
        assert!(
            chunks
                .iter()
                .filter(|c| c.offset < 20 << 20)
                .all(|c| !failed.contains(c))
        );
    }

    #[test]
    fn preallocating_keeps_what_a_temporary_holds_and_reserves_the_rest() {
        use std::os::unix::fs::MetadataExt;
        let dir = must(tempfile::tempdir());
        let path = dir.path().join("t");
        must(fs::write(&path, b"already fetched"));
        let file = must(OpenOptions::new().read(true).write(true).open(&path));
        must(preallocate(&file, 15, 8 << 20));
        let meta = must(file.metadata());
        assert_eq!(meta.len(), 8 << 20);
        let bytes = must(fs::read(&path));
        assert_eq!(&bytes[..15], b"already fetched");
        assert!(bytes[15..].iter().all(|&b| b == 0));
        // Reserved, not sparse (where the file system can preallocate at all).
        if meta.blocks() > 8 {
            assert!(meta.blocks() * 512 >= 8 << 20, "{} blocks", meta.blocks());
        }
        // What was written is data; the reserved rest reads as a hole where the file system
        // says so (then nothing in it is read on resuming).
        assert!(!never_written(&file, 0, 15));
        assert!(!never_written(&file, 10, 1 << 20));
        if never_written(&file, 4 << 20, 1 << 20) {
            assert!(never_written(&file, (8 << 20) - 10, 10));
        }
        // Nothing to reserve: nothing changes.
        must(preallocate(&file, 8 << 20, 8 << 20));
        must(preallocate(&file, 8 << 20, 0));
        assert_eq!(must(file.metadata()).len(), 8 << 20);
    }

    #[test]
    fn only_temporaries_no_longer_wanted_are_removed() {
        let dir = must(tempfile::tempdir());
        let root = dir.path();
        let h = |b: &[u8]| Hash::of(b);
        must(fs::create_dir_all(root.join("sub/deeper")));
        must(fs::create_dir_all(root.join(".sync/Archive")));
        let wanted_temp = temp_path(&root.join("sub/file"), &h(b"new"));
        let stale_temp = temp_path(&root.join("sub/file"), &h(b"old"));
        let stale_deep = temp_path(&root.join("sub/deeper/x"), &h(b"x"));
        let in_sync = temp_path(&root.join(".sync/Archive/y"), &h(b"y"));
        for (p, len) in [
            (&wanted_temp, 3000),
            (&stale_temp, 5000),
            (&stale_deep, 10),
            (&in_sync, 1),
        ] {
            must(fs::write(p, vec![1u8; len]));
        }
        must(fs::write(root.join("sub/file"), b"a real file"));
        must(fs::write(root.join("tmp.txt"), b"a real file"));
        let wanted = std::collections::HashSet::from([wanted_temp.clone()]);
        let (n, bytes) = remove_stale_temporaries(root, &wanted);
        assert_eq!(n, 2);
        assert!(bytes > 0);
        assert!(!stale_temp.exists() && !stale_deep.exists());
        for kept in [
            wanted_temp,
            in_sync,
            root.join("sub/file"),
            root.join("tmp.txt"),
        ] {
            assert!(kept.exists(), "{kept:?} was removed");
        }
    }
}
