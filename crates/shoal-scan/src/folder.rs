//! A watched folder: one thread per namespace that owns its scanner and keeps the index current.
//!
//! The thread scans everything once, then waits for inotify events (recursive watch, symlinks not
//! followed), gathers them for a short quiet period ([`QUIET`], at most [`MAX_DELAY`]) and rescans just
//! the paths they name — a new directory is walked whole, which also catches files created in it
//! before its watch was in place. A full rescan runs every `rescan_interval`. When inotify cannot
//! watch the tree (watches exhausted), the folder says so once and falls back to periodic scans.
//! Everything that writes this namespace's index runs on this one thread, so scans never race.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use shoal_core::ignore::{is_reserved, is_temp_name};
use tracing::{debug, error, info, warn};

use crate::progress::ProgressSnapshot;
use crate::scanner::{IGNORE_FILE, ScanError, ScanReport, Scanner};

/// Quiet time after the last event before the changed paths are scanned.
pub const QUIET: Duration = Duration::from_millis(10);
/// The longest a change waits for a quiet moment while events keep coming.
pub const MAX_DELAY: Duration = Duration::from_millis(50);
/// Scan interval when inotify is unavailable.
pub const FALLBACK_INTERVAL: Duration = Duration::from_secs(30);
/// A file found changing while read, or still being written, is looked at again after this (then
/// twice as long each time it still is), whatever events it sends meanwhile (a file being streamed
/// sends one per write).
/// Just above the scanner's `BUSY_AGE`, so that a file written once is read at its second look.
const RETRY_CHANGING: Duration = Duration::from_millis(25);
/// The longest such a file waits between two looks while it keeps changing.
const RETRY_CHANGING_MAX: Duration = Duration::from_millis(1600);
/// A scan that failed (the index could not be written: the disk full, say) is tried again after
/// this, its paths kept: they were dropped, and the changes waited for the next full scan. The
/// wait doubles while scans keep failing (a full scan walks the whole folder), up to
/// [`RETRY_FAILED_MAX`].
const RETRY_FAILED: Duration = Duration::from_secs(5);
const RETRY_FAILED_MAX: Duration = Duration::from_secs(300);

/// The wait before trying again after `failures` scans in a row failed.
fn retry_failed(failures: u32) -> Duration {
    RETRY_FAILED
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_FAILED_MAX)
}

#[derive(Clone, Debug)]
pub struct FolderOptions {
    /// Full rescan period (`folder_rescan_interval`).
    pub rescan_interval: Duration,
    /// Use inotify (tests of the periodic fall back turn it off).
    pub watch: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            rescan_interval: Duration::from_secs(600),
            watch: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderState {
    Starting,
    Scanning,
    Idle,
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct FolderStatus {
    pub state: FolderState,
    /// inotify is watching the tree (false: periodic scans only).
    pub watching: bool,
    pub error: Option<String>,
    pub last_scan: Option<ScanReport>,
    pub progress: ProgressSnapshot,
}

enum Msg {
    Events(Vec<PathBuf>),
    Scan(Vec<String>),
    ScanAll,
    WatchLost(String),
    Stop,
}

/// Asks a folder to scan paths now; see [`Folder::scan_requests`].
#[derive(Debug)]
pub struct ScanRequests {
    tx: mpsc::Sender<Msg>,
}

impl ScanRequests {
    pub fn scan(&self, paths: Vec<String>) {
        let _ = self.tx.send(Msg::Scan(paths));
    }
}

/// A running folder thread. Dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Folder {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    scanner: Arc<Scanner>,
    status: Arc<Mutex<FolderStatus>>,
}

impl Folder {
    pub fn start(scanner: Scanner, options: FolderOptions, name: &str) -> std::io::Result<Folder> {
        let scanner = Arc::new(scanner);
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(FolderStatus {
            state: FolderState::Starting,
            watching: false,
            error: None,
            last_scan: None,
            progress: ProgressSnapshot::default(),
        }));
        let worker = Worker {
            scanner: scanner.clone(),
            rx,
            tx: tx.clone(),
            options,
            status: status.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("folder {name}"))
            .spawn(move || worker.run())?;
        Ok(Folder {
            tx,
            thread: Some(thread),
            scanner,
            status,
        })
    }

    pub fn scanner(&self) -> &Arc<Scanner> {
        &self.scanner
    }

    /// Asks for these namespace-relative paths to be scanned now (e.g. written over NFS).
    pub fn scan(&self, paths: Vec<String>) {
        let _ = self.tx.send(Msg::Scan(paths));
    }

    /// A handle that asks for scans from elsewhere (the NFS server); harmless once the folder stops.
    pub fn scan_requests(&self) -> ScanRequests {
        ScanRequests {
            tx: self.tx.clone(),
        }
    }

    pub fn scan_all(&self) {
        let _ = self.tx.send(Msg::ScanAll);
    }

    pub fn status(&self) -> FolderStatus {
        let mut s = lock(&self.status).clone();
        s.progress = self.scanner.progress().snapshot();
        if s.progress.scanning && s.state == FolderState::Idle {
            s.state = FolderState::Scanning;
        }
        s
    }

    /// Stops the thread (a running scan stops between files) and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.scanner.stop_flag().store(true, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            error!("a folder thread panicked");
        }
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    scanner: Arc<Scanner>,
    rx: mpsc::Receiver<Msg>,
    tx: mpsc::Sender<Msg>,
    options: FolderOptions,
    status: Arc<Mutex<FolderStatus>>,
}

impl Worker {
    fn run(self) {
        let root = self.scanner.root().to_owned();
        self.scanner.load_ignore();
        // Watch first, then scan: a change made during the first scan is not missed.
        let mut watcher = if self.options.watch {
            self.watch(&root)
        } else {
            None
        };
        let mut interval = self.interval(watcher.is_some());
        // Files found changing, and when to look at them again.
        let mut hot = Hot::default();
        // The first full scan is due at once (the loop runs it).
        let mut next_full = Instant::now();
        // Scans failed in a row; the paths of those that did, and when to try them again.
        let mut failures = 0;
        let mut failed: Option<(Instant, BTreeSet<String>)> = None;
        let mut pending = BTreeSet::new();
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        loop {
            let now = Instant::now();
            let mut deadline = next_full;
            if let Some(f) = first {
                deadline = deadline.min((last + QUIET).min(f + MAX_DELAY));
            }
            if let Some(at) = hot.next_due() {
                deadline = deadline.min(at);
            }
            if let Some((at, _)) = &failed {
                deadline = deadline.min(*at);
            }
            let mut reload_ignore = false;
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(now))
            {
                Ok(Msg::Events(paths)) => {
                    for p in paths {
                        match relative(&root, &p) {
                            Some(rel) if rel == IGNORE_FILE => reload_ignore = true,
                            // The puller's temporaries send an event per chunk written; the
                            // scanner leaves them out anyway.
                            Some(rel) if is_reserved(&rel) || is_temp_name(file_name(&rel)) => {}
                            Some(rel) => {
                                pending.insert(rel);
                            }
                            None => {}
                        }
                    }
                    first.get_or_insert(Instant::now());
                    last = Instant::now();
                    if pending.is_empty() && !reload_ignore {
                        first = None;
                    }
                }
                Ok(Msg::Scan(paths)) => {
                    pending.extend(paths);
                    first.get_or_insert(Instant::now());
                    last = Instant::now() - QUIET;
                }
                Ok(Msg::ScanAll) => next_full = Instant::now(),
                Ok(Msg::WatchLost(why)) => {
                    warn!(root = %root.display(), "{why}; falling back to a full scan every {}s", FALLBACK_INTERVAL.as_secs());
                    watcher = None;
                    lock(&self.status).watching = false;
                    interval = self.interval(false);
                    next_full = Instant::now();
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.scanner.stop_flag().load(Ordering::Relaxed) {
                break;
            }
            if reload_ignore {
                let n = self.scanner.load_ignore();
                info!(root = %root.display(), rules = n, "ignore list changed; rescanning");
                next_full = Instant::now();
            }
            let now = Instant::now();
            if now >= next_full {
                pending.clear();
                first = None;
                failed = None;
                hot = Hot::default();
                next_full = Instant::now() + interval;
                match self.full_scan() {
                    Some(changing) => {
                        failures = 0;
                        changing
                            .into_iter()
                            .for_each(|p| hot.defer(p, Instant::now()));
                    }
                    None => {
                        failures += 1;
                        next_full = Instant::now() + retry_failed(failures).min(interval);
                    }
                }
                continue;
            }
            if let Some((_, paths)) = failed.take_if(|(at, _)| *at <= now) {
                pending.extend(paths);
                first.get_or_insert(now);
                last = now - QUIET;
            }
            let mut due = hot.take_due(now);
            // A large file that was written again during the second half of its wait is still
            // being streamed: it waits again, unread (each read given up on half-way cost both
            // cores up to a tenth of a second, taken from the writer).
            due.retain(|p| {
                let busy = crate::scanner::busy_within(&root.join(p), hot.last_wait(p) / 2);
                if busy {
                    hot.defer(p.clone(), now);
                }
                !busy
            });
            if !due.is_empty() {
                pending.extend(due);
                first.get_or_insert(now);
                last = now - QUIET;
            }
            // A file still being written waits for its turn, however many events it sends.
            if !hot.due.is_empty() {
                pending.retain(|p| !hot.waiting(p));
            }
            if pending.is_empty() {
                first = None;
            }
            if let Some(f) = first
                && (now >= last + QUIET || now >= f + MAX_DELAY)
            {
                let paths: Vec<String> = std::mem::take(&mut pending).into_iter().collect();
                first = None;
                if paths.is_empty() {
                    continue;
                }
                debug!(root = %root.display(), paths = paths.len(), "scanning changed paths");
                match self.scanner.scan(&paths) {
                    Ok(mut report) => {
                        let changing = std::mem::take(&mut report.changing);
                        hot.settled(&paths, &changing);
                        for p in changing {
                            hot.defer(p, Instant::now());
                        }
                        failures = 0;
                        self.set_ok(report);
                    }
                    Err(e) => {
                        self.set_error(&e);
                        failures += 1;
                        let at = now + retry_failed(failures);
                        let (_, retry) = failed.get_or_insert_with(|| (at, BTreeSet::new()));
                        retry.extend(paths);
                    }
                }
            }
        }
        drop(watcher);
        debug!(root = %root.display(), "folder stopped");
    }

    fn interval(&self, watching: bool) -> Duration {
        if watching {
            self.options.rescan_interval
        } else {
            self.options.rescan_interval.min(FALLBACK_INTERVAL)
        }
    }

    /// Scans everything; returns the files found still changing, `None` if the scan failed.
    fn full_scan(&self) -> Option<Vec<String>> {
        lock(&self.status).state = FolderState::Scanning;
        match self.scanner.scan_all() {
            Ok(mut report) => {
                let changing = std::mem::take(&mut report.changing);
                self.set_ok(report);
                Some(changing)
            }
            Err(e) => {
                self.set_error(&e);
                None
            }
        }
    }

    fn set_ok(&self, report: ScanReport) {
        let mut s = lock(&self.status);
        s.state = FolderState::Idle;
        s.error = None;
        s.last_scan = Some(report);
    }

    fn set_error(&self, e: &ScanError) {
        let why = e.to_string();
        let mut s = lock(&self.status);
        if s.error.as_ref() == Some(&why) {
            // Tried again and failed the same way: said already.
            debug!(root = %self.scanner.root().display(), "scan failed again: {why}");
        } else {
            error!(root = %self.scanner.root().display(), "scan failed: {why}");
        }
        s.state = FolderState::Error;
        s.error = Some(why);
    }

    fn watch(&self, root: &Path) -> Option<notify::RecommendedWatcher> {
        let tx = self.tx.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if event.need_rescan() {
                    let _ = tx.send(Msg::ScanAll);
                } else if !matches!(event.kind, EventKind::Access(_)) {
                    let _ = tx.send(Msg::Events(event.paths));
                }
            }
            Err(e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    let _ = tx.send(Msg::WatchLost(watch_limit_message()));
                } else {
                    warn!("file watcher: {e}");
                }
            }
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = match notify::RecommendedWatcher::new(handler, config) {
            Ok(w) => w,
            Err(e) => {
                warn!(root = %root.display(), "cannot start the file watcher ({e}); falling back to periodic scans");
                return None;
            }
        };
        match watcher.watch(root, RecursiveMode::Recursive) {
            Ok(()) => {
                lock(&self.status).watching = true;
                Some(watcher)
            }
            Err(e) => {
                let why = if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    watch_limit_message()
                } else {
                    format!("cannot watch the folder ({e})")
                };
                warn!(root = %root.display(), "{why}; falling back to a full scan every {}s", FALLBACK_INTERVAL.as_secs());
                None
            }
        }
    }
}

fn watch_limit_message() -> String {
    "inotify watches are exhausted; raise fs.inotify.max_user_watches (e.g. `sysctl -w fs.inotify.max_user_watches=1048576`)".to_owned()
}

fn relative(root: &Path, p: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    // Events name `root` joined with the path: compared as bytes first (`Path::strip_prefix`
    // walks components, a notable cost per event when a peer writes thousands of files).
    let (r, b) = (root.as_os_str().as_bytes(), p.as_os_str().as_bytes());
    let r = r.strip_suffix(b"/").unwrap_or(r);
    let rel = match b.strip_prefix(r) {
        Some(rest) if rest.is_empty() || rest[0] == b'/' => std::str::from_utf8(rest).ok()?,
        _ => p.strip_prefix(root).ok()?.to_str()?,
    };
    Some(rel.trim_matches('/').to_owned())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Files found still being written: when each is looked at again, and how many times in a row
/// it was found so. The wait doubles each time (a file streamed for minutes is read a handful of
/// times, not ten times a second), up to [`RETRY_CHANGING_MAX`].
#[derive(Default)]
struct Hot {
    due: BTreeMap<String, Instant>,
    strikes: std::collections::HashMap<String, u32>,
}

impl Hot {
    fn defer(&mut self, path: String, now: Instant) {
        let strikes = self.strikes.entry(path.clone()).or_insert(0);
        *strikes = strikes.saturating_add(1);
        let wait = Hot::wait(*strikes);
        self.due.insert(path, now + wait);
    }

    /// How long `path` last waited (zero if it never did).
    fn last_wait(&self, path: &str) -> Duration {
        Hot::wait(self.strikes.get(path).copied().unwrap_or(0))
    }

    /// The wait after a file was found changing `strikes` times in a row (none for zero).
    fn wait(strikes: u32) -> Duration {
        match strikes {
            0 => Duration::ZERO,
            n => (RETRY_CHANGING * 2u32.saturating_pow(n - 1)).min(RETRY_CHANGING_MAX),
        }
    }

    fn waiting(&self, path: &str) -> bool {
        self.due.contains_key(path)
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// The files whose wait is over (their strikes are kept until they are read whole).
    fn take_due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, at)| now >= **at)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &due {
            self.due.remove(p);
        }
        due
    }

    /// `scanned` were scanned and all but `changing` recorded: they start afresh.
    fn settled(&mut self, scanned: &[String], changing: &[String]) {
        for p in scanned {
            if !changing.contains(p) {
                self.strikes.remove(p);
            }
        }
    }
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn failed_scans_are_tried_again_ever_less_often() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_failed(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_failed(u32::MAX), RETRY_FAILED_MAX);
        assert_eq!(retry_failed(0), RETRY_FAILED);
    }

    #[test]
    fn an_event_path_is_made_relative_to_the_root_by_whole_components() {
        let root = Path::new("/data/ns");
        let rel = |p: &str| relative(root, Path::new(p));
        assert_eq!(rel("/data/ns/a/b.txt").as_deref(), Some("a/b.txt"));
        assert_eq!(rel("/data/ns").as_deref(), Some(""));
        assert_eq!(rel("/data/ns/").as_deref(), Some(""));
        assert_eq!(
            rel("/data/nsx/a"),
            None,
            "a sibling sharing the prefix is outside"
        );
        assert_eq!(rel("/data/other/a"), None);
        assert_eq!(
            rel("/data//ns/a").as_deref(),
            Some("a"),
            "odd forms go by components"
        );
        assert_eq!(
            relative(Path::new("/data/ns/"), Path::new("/data/ns/a")).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn a_file_found_changing_waits_longer_each_time_and_afresh_once_read() {
        let mut hot = Hot::default();
        let t = Instant::now();
        assert_eq!(hot.last_wait("f"), Duration::ZERO);
        let mut waits = Vec::new();
        for _ in 0..9 {
            hot.defer("f".to_owned(), t);
            waits.push(hot.last_wait("f"));
            assert_eq!(hot.next_due(), Some(t + hot.last_wait("f")));
            assert!(hot.waiting("f"));
            assert_eq!(hot.take_due(t + hot.last_wait("f")), ["f"]);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [25, 50, 100, 200, 400, 800, 1600, 1600, 1600]);
        // Read whole: the next time it is found changing starts from the shortest wait.
        hot.settled(&["f".to_owned()], &[]);
        assert_eq!(hot.last_wait("f"), Duration::ZERO);
        hot.defer("f".to_owned(), t);
        assert_eq!(hot.last_wait("f"), RETRY_CHANGING);
    }

    #[test]
    fn only_a_large_file_written_within_the_quiet_time_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let large = dir.path().join("large");
        let small = dir.path().join("small");
        std::fs::write(&large, vec![1u8; 5 << 20]).unwrap();
        std::fs::write(&small, b"x").unwrap();
        let long = Duration::from_secs(3600);
        assert!(crate::scanner::busy_within(&large, long));
        assert!(!crate::scanner::busy_within(&large, Duration::ZERO));
        assert!(!crate::scanner::busy_within(&small, long));
        assert!(!crate::scanner::busy_within(&dir.path().join("gone"), long));
    }
}
