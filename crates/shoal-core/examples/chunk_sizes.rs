//! Measures chunk-size choices: speed, mean size, and what an edit costs on the wire.
//!
//! `cargo run --release -p shoal-core --example chunk_sizes [MIB]` (default 256 MiB of noise).
//! The figures in docs/chunking.md come from this program.

use std::collections::HashSet;
use std::time::Instant;

use shoal_core::chunk::{Chunk, ChunkHasher, Chunker, Hash};
use shoal_core::testing::noise;

fn chunk(data: &[u8], sizes: (u32, u32, u32)) -> Vec<Chunk> {
    let mut h = ChunkHasher::with_chunker(Chunker::with_sizes(sizes.0, sizes.1, sizes.2));
    for piece in data.chunks(1 << 20) {
        h.update(piece);
    }
    h.finish()
}

fn fetched(old: &[Chunk], new: &[Chunk]) -> u64 {
    let have: HashSet<Hash> = old.iter().map(|c| c.hash).collect();
    new.iter()
        .filter(|c| !have.contains(&c.hash))
        .map(|c| u64::from(c.len))
        .sum()
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let data = noise(mib << 20, 42);
    let mut inserted = vec![7u8];
    inserted.extend_from_slice(&data);
    let mut overwritten = data.clone();
    let at = data.len() / 2;
    overwritten[at..at + (1 << 20)].copy_from_slice(&noise(1 << 20, 5));

    let start = Instant::now();
    let plain = blake3::hash(&data);
    let blake_s = start.elapsed().as_secs_f64();
    std::hint::black_box(plain);
    println!(
        "{mib} MiB of noise; plain BLAKE3 (one core, no chunking): {:.0} MB/s",
        data.len() as f64 / blake_s / 1e6
    );
    println!(
        "| min / avg / max | chunk+hash MB/s (1 core) | mean chunk | chunks per GiB | index bytes per GiB (~40 B/chunk) | 1 byte inserted at start: fetched | 1 MiB overwritten: fetched |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (min, avg, max) in [
        (2u32 << 10, 8 << 10, 32 << 10),
        (16 << 10, 64 << 10, 256 << 10),
        (64 << 10, 256 << 10, 1 << 20),
        (256 << 10, 1 << 20, 4 << 20),
    ] {
        let mut best = f64::MAX;
        let mut chunks = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            chunks = chunk(&data, (min, avg, max));
            best = best.min(start.elapsed().as_secs_f64());
        }
        let mean = data.len() as f64 / chunks.len() as f64;
        let per_gib = (1u64 << 30) as f64 / mean;
        let ins = fetched(&chunks, &chunk(&inserted, (min, avg, max)));
        let ovw = fetched(&chunks, &chunk(&overwritten, (min, avg, max)));
        println!(
            "| {} / {} / {} KiB | {:.0} | {:.0} KiB | {:.0} | {:.0} KiB | {:.0} KiB | {:.0} KiB |",
            min >> 10,
            avg >> 10,
            max >> 10,
            data.len() as f64 / best / 1e6,
            mean / 1024.0,
            per_gib,
            per_gib * 40.0 / 1024.0,
            ins as f64 / 1024.0,
            ovw as f64 / 1024.0,
        );
    }
}
