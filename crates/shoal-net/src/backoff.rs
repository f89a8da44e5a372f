//! Reconnect pacing: exponential backoff with jitter, reset once a session is established.
//!
//! A pure value the dialer consults, no timers inside, so the simulator can drive it with its own
//! clock. Jitter (±25%) keeps a cluster that lost a node from redialing it in lockstep.

use std::time::Duration;

/// First retry delay.
pub const INITIAL: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub const MAX: Duration = Duration::from_secs(60);

/// Delays between attempts to reach one peer.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The delay before the next attempt; `jitter` in `[0, 1)` (pass a random number).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let base = INITIAL
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(MAX);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Called when a session was established: the next failure starts again from [`INITIAL`].
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay(0.5)).collect();
        assert_eq!(delays[0], INITIAL);
        assert_eq!(delays[1], INITIAL * 2);
        assert_eq!(delays[9], MAX);
        b.reset();
        assert_eq!(b.next_delay(0.0), INITIAL.mul_f64(0.75));
    }
}
