//! Bandwidth limits (`download_limit`, `upload_limit`, kB/s, 0 = unlimited), shared by every
//! peer and namespace of the node and changeable while it runs.
//!
//! A token bucket holding at most one second of traffic: a transfer takes its bytes and, when the
//! bucket runs into debt, waits until the debt is paid back. Waiting after the fact lets chunks
//! (up to 1 MiB) pass whole even under a small limit, while the average holds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    /// Bytes per second; 0: unlimited.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            rate: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }
}

impl RateLimit {
    /// Sets the limit in kB/s (1 kB = 1,000 bytes, as BitTorrent Sync's config); 0 removes it.
    pub fn set_kbps(&self, kbps: u64) {
        self.rate
            .store(kbps.saturating_mul(1000), Ordering::Relaxed);
    }

    /// The limit in bytes per second; 0: none.
    pub fn bytes_per_s(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Accounts for `n` bytes, waiting as long as the limit requires.
    pub async fn take(&self, n: u64) {
        let wait = self.charge(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Charges `n` bytes at `now`; how long the caller must wait.
    fn charge(&self, n: u64, now: Instant) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.at = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimit::default();
        assert_eq!(l.charge(u64::MAX / 2, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn the_average_holds() {
        let l = RateLimit::default();
        l.set_kbps(100); // 100,000 B/s
        let start = Instant::now();
        // 1 MB at once: 10 s of debt.
        let wait = l.charge(1_000_000, start);
        assert!((9.9..10.1).contains(&wait.as_secs_f64()), "{wait:?}");
        // Ten seconds later the debt is paid; 1 s of tokens at most is banked afterwards.
        let later = start + Duration::from_secs(30);
        assert_eq!(l.charge(0, later), Duration::ZERO);
        assert_eq!(l.charge(100_000, later), Duration::ZERO);
        assert!(l.charge(50_000, later) > Duration::ZERO);
        // Changed live: lifting the limit lifts the wait.
        l.set_kbps(0);
        assert_eq!(l.charge(10_000_000, later), Duration::ZERO);
    }
}
