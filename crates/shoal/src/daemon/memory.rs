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

/// Limits glibc to two arenas. Call before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code, reason = "mallopt has no safe wrapper")]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
