//! Keeping the daemon's memory small at rest (target: ≤ 30 MiB per node after syncing 10,000
//! files; measured in BENCHMARKS.md).
//!
//! glibc gives each thread that allocates its own arena (up to 8 per core) and keeps freed memory
//! in them. A sync node's work comes in bursts on many threads (tokio workers, blocking pool), so
//! after a burst most of the peak stays resident though nothing uses it. Two arenas are plenty
//! for this workload, and a periodic trim returns what a burst left behind.

use std::time::Duration;

use tokio::sync::watch;

/// How often free memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(3);

/// Buffers up to this size come from the heap and are reused, instead of each being mapped
/// afresh (and page-faulted in, and zeroed, and unmapped): an NFS READ or WRITE and a chunk are
/// 1 MiB, and that cost per request was a tenth of an NFS read's CPU.
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory at the top of the heap is kept up to this much between periodic trims (which
/// return it all), so that a burst does not hand pages back and fault them in again per request.
const TRIM_THRESHOLD: i32 = 8 << 20;

/// Limits glibc to two arenas and keeps request-sized buffers on the heap. Call before the
/// runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code, reason = "mallopt has no safe wrapper")]
    // SAFETY: mallopt only sets allocator parameters, each to a value in its documented range.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Trims every [`TRIM_EVERY`] until stopped.
pub async fn trim_periodically(mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            () = tokio::time::sleep(TRIM_EVERY) => {
                let _ = tokio::task::spawn_blocking(shoal_scan::release_memory).await;
            }
        }
    }
}
