//! How much of a large file is asked of peers at once: about a second of what comes back.
//!
//! A peer answers a node's chunk requests in the order they came, so a request for a small file
//! waits behind every large-file chunk already asked of that peer. With a fixed number of
//! requests in flight (64 chunks, ~16 MiB), behind a 2 MB/s link (or a peer's upload limit) that
//! was eight seconds for a one-line file. So large-file requests are paced: bytes in flight are
//! held to what arrived in about [`IN_FLIGHT_SECS`] (never below [`MIN_IN_FLIGHT`]), measured
//! over windows of [`WINDOW`]. On loopback or a LAN a second's worth is more than the request
//! limit anyway; behind a slow link a small file's request waits about a second.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Bytes that may always be in flight: a few chunks, enough to measure a link by.
pub(crate) const MIN_IN_FLIGHT: u64 = 2 << 20;
/// Seconds of the measured rate that may be in flight.
const IN_FLIGHT_SECS: f64 = 1.0;
/// How long the rate is measured over before it is taken.
const WINDOW: Duration = Duration::from_millis(100);

/// The pace of one namespace's large-file fetches.
#[derive(Debug)]
pub(crate) struct Pace {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    in_flight: u64,
    /// Bytes per second that arrived, smoothed; 0 until measured.
    rate: f64,
    window_start: Option<Instant>,
    window_bytes: u64,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            state: Mutex::new(State {
                in_flight: 0,
                rate: 0.0,
                window_start: None,
                window_bytes: 0,
            }),
            changed: Notify::new(),
        }
    }
}

impl Pace {
    /// Waits until `len` more bytes may be asked for; they count as in flight until the returned
    /// guard is dropped.
    pub(crate) async fn admit(&self, len: u64) -> InFlight<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.in_flight == 0 || s.in_flight + len <= s.allowed() {
                    s.in_flight += len;
                    s.window_start.get_or_insert_with(Instant::now);
                    return InFlight {
                        pace: self,
                        len,
                        arrived: false,
                    };
                }
            }
            changed.await;
        }
    }

    /// Bytes that may be in flight now.
    #[cfg(test)]
    fn allowed(&self) -> u64 {
        self.lock().allowed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done(&self, len: u64, arrived: bool, now: Instant) {
        {
            let mut s = self.lock();
            s.in_flight = s.in_flight.saturating_sub(len);
            if arrived {
                s.window_bytes += len;
            }
            let start = *s.window_start.get_or_insert(now);
            let elapsed = now.saturating_duration_since(start);
            if elapsed >= WINDOW {
                let measured = s.window_bytes as f64 / elapsed.as_secs_f64();
                s.rate = if s.rate == 0.0 {
                    measured
                } else {
                    (s.rate + measured) / 2.0
                };
                s.window_bytes = 0;
                s.window_start = (s.in_flight > 0).then_some(now);
            }
        }
        self.changed.notify_waiters();
    }
}

impl State {
    fn allowed(&self) -> u64 {
        ((self.rate * IN_FLIGHT_SECS) as u64).max(MIN_IN_FLIGHT)
    }
}

/// Bytes asked for and not answered yet.
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    pace: &'a Pace,
    len: u64,
    arrived: bool,
}

impl InFlight<'_> {
    /// The bytes came: they count towards the rate.
    pub(crate) fn arrived(mut self) {
        self.arrived = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.pace.done(self.len, self.arrived, Instant::now());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn about_a_second_of_what_arrives_is_in_flight() {
        let pace = Pace::default();
        // Unmeasured: a few chunks.
        assert_eq!(pace.allowed(), MIN_IN_FLIGHT);
        let first = pace.admit(MIN_IN_FLIGHT).await;
        // Over the allowance, a request waits for one in flight to come back.
        let mut second = Box::pin(pace.admit(1 << 20));
        assert!(futures_poll(&mut second).is_none());
        tokio::time::advance(Duration::from_millis(10)).await;
        first.arrived();
        let second = futures_poll(&mut second).expect("admitted once the first came back");
        // 3 MiB came in the first second: a second of that may be in flight.
        tokio::time::advance(Duration::from_millis(990)).await;
        second.arrived();
        assert_eq!(pace.allowed(), 3 << 20);
        // A fast link: hundreds of MB a second, so as much may be asked.
        for _ in 0..20 {
            let c = pace.admit(8 << 20).await;
            tokio::time::advance(Duration::from_millis(10)).await;
            c.arrived();
        }
        assert!(pace.allowed() > 100 << 20, "{}", pace.allowed());
        // What never arrived (a failed or cancelled request) frees its room but is no rate.
        let lost = pace.admit(1 << 20).await;
        drop(lost);
        assert_eq!(pace.lock().in_flight, 0);
    }

    /// Polls `f` once.
    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
