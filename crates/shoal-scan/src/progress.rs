//! Scan progress, shared between the scanning threads and whoever reports it (log, `ctl status`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Progress {
    scanning: AtomicBool,
    files_total: AtomicU64,
    files_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    read_since_start: AtomicU64,
    started: Mutex<Option<Instant>>,
}

/// A moment's view of a scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProgressSnapshot {
    pub scanning: bool,
    /// Files to hash in this scan (known once the walk is done) and hashed so far.
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub elapsed_s: f64,
    /// Hashing rate since the scan began.
    pub bytes_per_s: f64,
    /// Bytes read by every scan since the scanner started, files given up on included: what
    /// scanning has cost the disk.
    pub bytes_read_total: u64,
}

impl Progress {
    pub(crate) fn begin(&self) {
        self.files_total.store(0, Ordering::Relaxed);
        self.files_done.store(0, Ordering::Relaxed);
        self.bytes_total.store(0, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.scanning.store(true, Ordering::Release);
    }

    pub(crate) fn end(&self) {
        self.scanning.store(false, Ordering::Release);
    }

    pub(crate) fn add_work(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        self.read_since_start.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let elapsed = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |s| s.elapsed());
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        ProgressSnapshot {
            scanning: self.scanning.load(Ordering::Acquire),
            files_total: self.files_total.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_done,
            elapsed_s: secs,
            bytes_per_s: if secs > 0.0 {
                bytes_done as f64 / secs
            } else {
                0.0
            },
            bytes_read_total: self.read_since_start.load(Ordering::Relaxed),
        }
    }
}
