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
