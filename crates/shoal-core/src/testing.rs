//! Test data shared by the tests of every crate (feature `testing`).

/// Reproducible incompressible bytes (xorshift64*), the same for the same `seed`: the worst case
/// for finding cut points, and content no two tests share by accident.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Polls `check` until it holds or `limit` has passed; whether it held. How the tests of every
/// crate wait for what another thread or process does: never a fixed sleep, always a condition
/// with a deadline (a short pause between looks is the only sleep).
pub fn poll_until(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// [`poll_until`], failing the test with `what` when `check` does not hold in time.
pub fn wait_until(limit: std::time::Duration, what: &str, check: impl FnMut() -> bool) {
    assert!(
        poll_until(limit, check),
        "timed out after {limit:?} waiting for {what}"
    );
}
