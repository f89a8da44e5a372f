#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::testing::noise;

fn assert_well_formed(data: &[u8], chunks: &[Chunk]) {
    let mut offset = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.offset, offset, "chunk {i} is not contiguous");
        assert!(c.len <= MAX_SIZE, "chunk {i} is {} bytes", c.len);
        if i + 1 < chunks.len() {
            assert!(c.len >= MIN_SIZE, "chunk {i} is {} bytes", c.len);
        }
        let bytes = &data[c.offset as usize..c.offset as usize + c.len as usize];
        assert_eq!(c.hash, Hash::of(bytes), "chunk {i} hash");
        offset += u64::from(c.len);
    }
    assert_eq!(offset, data.len() as u64);
}

/// Bytes of `new`'s chunks that `old` does not have: what a peer holding `old` must fetch.
fn new_bytes(old: &[Chunk], new: &[Chunk]) -> u64 {
    let have: HashSet<Hash> = old.iter().map(|c| c.hash).collect();
    new.iter()
        .filter(|c| !have.contains(&c.hash))
        .map(|c| u64::from(c.len))
        .sum()
}

#[test]
fn chunks_are_contiguous_verified_and_within_bounds() {
    let data = noise(40 << 20, 7);
    let chunks = chunk_bytes(&data);
    assert_well_formed(&data, &chunks);
    let mean = data.len() as f64 / chunks.len() as f64;
    assert!(
        (0.6 * f64::from(AVG_SIZE)..1.6 * f64::from(AVG_SIZE)).contains(&mean),
        "mean chunk {mean:.0} bytes"
    );
}

#[test]
fn zeros_and_tiny_inputs() {
    assert!(chunk_bytes(&[]).is_empty());
    let one = chunk_bytes(b"x");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].hash, Hash::of(b"x"));
    // A run of zeros never hits a cut point: it is cut at MAX_SIZE.
    let zeros = vec![0u8; 3 * MAX_SIZE as usize + 5];
    let chunks = chunk_bytes(&zeros);
    assert_well_formed(&zeros, &chunks);
    assert_eq!(chunks.len(), 4);
    // The same chunk three times: the chunk list says so, so it is stored and fetched once.
    assert_eq!(chunks[0].hash, chunks[2].hash);
}

#[test]
fn one_byte_inserted_at_the_start_changes_only_the_first_chunks() {
    let data = noise(64 << 20, 11);
    let before = chunk_bytes(&data);
    let mut inserted = Vec::with_capacity(data.len() + 1);
    inserted.push(0x5a);
    inserted.extend_from_slice(&data);
    let after = chunk_bytes(&inserted);
    let changed = after
        .iter()
        .filter(|c| !before.iter().any(|b| b.hash == c.hash))
        .count();
    assert!(changed <= 2, "{changed} chunks changed");
    assert!(new_bytes(&before, &after) <= 2 * u64::from(MAX_SIZE));
}

#[test]
fn one_mib_overwritten_in_the_middle_costs_about_one_mib() {
    let data = noise(64 << 20, 13);
    let before = chunk_bytes(&data);
    let mut edited = data.clone();
    let at = 30 << 20;
    edited[at..at + (1 << 20)].copy_from_slice(&noise(1 << 20, 99));
    let after = chunk_bytes(&edited);
    let fetched = new_bytes(&before, &after);
    assert!(fetched >= 1 << 20);
    assert!(
        fetched <= (1 << 20) + 2 * u64::from(MAX_SIZE),
        "{fetched} bytes to fetch"
    );
}

fn in_parallel(data: &[u8], threads: usize) -> Vec<Chunk> {
    let read = |at: u64, buf: &mut [u8]| -> Result<(), ()> {
        let at = at as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    };
    chunk_in_parallel(data.len() as u64, threads, &read).unwrap()
}

#[test]
fn chunking_in_parallel_gives_the_same_chunks_as_in_order() {
    // Noise (cuts found quickly), zeros (no cut point but every 1 MiB: segments never agree, the
    // stitch re-chunks to the end), a mix, and segments shorter than a chunk.
    let mut mixed = noise(9 << 20, 3);
    mixed[2 << 20..5 << 20].fill(0);
    let inputs = [
        noise(23 << 20, 11),
        noise((7 << 20) + 12_345, 12),
        vec![0u8; (5 << 20) + 77],
        mixed,
        noise(3 << 20, 13),
    ];
    for data in &inputs {
        let want = chunk_bytes(data);
        for threads in [1, 2, 3, 4, 7, 16, 40] {
            assert_eq!(
                in_parallel(data, threads),
                want,
                "{} bytes on {threads} threads",
                data.len()
            );
        }
    }
    assert!(in_parallel(&[], 4).is_empty());
    assert_eq!(in_parallel(&[1, 2, 3], 4), chunk_bytes(&[1, 2, 3]));
}

#[test]
fn chunks_seen_while_chunking_in_parallel_include_every_chunk_and_are_all_real() {
    let mut mixed = noise(9 << 20, 5);
    mixed[2 << 20..5 << 20].fill(0);
    // On noise segments fall in step within a few chunks, and those are not told until the
    // stitch; on zeros they never do (see `chunk_in_parallel`).
    for (data, few) in [
        (noise(23 << 20, 21), true),
        (mixed, false),
        (vec![0u8; (3 << 20) + 5], false),
    ] {
        let read = |at: u64, buf: &mut [u8]| -> Result<(), ()> {
            let at = at as usize;
            buf.copy_from_slice(&data[at..at + buf.len()]);
            Ok(())
        };
        for threads in [1, 2, 3] {
            let seen = std::sync::Mutex::new(Vec::new());
            let told = |chunks: &[Chunk]| seen.lock().unwrap().extend_from_slice(chunks);
            let chunks = chunk_in_parallel_seen(data.len() as u64, threads, &read, &told).unwrap();
            assert_eq!(chunks, chunk_bytes(&data), "{threads} threads");
            let seen = seen.into_inner().unwrap();
            for c in &chunks {
                assert!(seen.contains(c), "{c:?} never told ({threads} threads)");
            }
            // Any the stitch replaced are real chunks of the bytes too, and on noise none.
            for c in &seen {
                let bytes = &data[c.offset as usize..(c.offset + u64::from(c.len)) as usize];
                assert_eq!(Hash::of(bytes), c.hash);
            }
            let extra = seen.iter().filter(|c| !chunks.contains(c)).count();
            assert!(
                !few || extra == 0,
                "{extra} chunks told that are not the file's ({threads} threads)"
            );
        }
    }
}

fn rechunked(old: &[u8], new: &[u8], threads: usize) -> Vec<Chunk> {
    rechunked_rolling(old, new, threads).0
}

/// The chunks, and the bytes that went through the gear hash.
fn rechunked_rolling(old: &[u8], new: &[u8], threads: usize) -> (Vec<Chunk>, u64) {
    let (chunks, rolled, _) = rechunked_reading(old, new, threads);
    (chunks, rolled)
}

/// The chunks, the bytes that went through the gear hash, and the bytes read.
fn rechunked_reading(old: &[u8], new: &[u8], threads: usize) -> (Vec<Chunk>, u64, u64) {
    let read = std::sync::atomic::AtomicU64::new(0);
    let at = |at: u64, buf: &mut [u8]| -> Result<(), ()> {
        read.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let at = at as usize;
        buf.copy_from_slice(&new[at..at + buf.len()]);
        Ok(())
    };
    let (chunks, rolled) =
        rechunk_counted(&chunk_bytes(old), new.len() as u64, threads, &at, &|_| {}).unwrap();
    (chunks, rolled, read.into_inner())
}

#[test]
fn rechunking_after_a_change_gives_the_same_chunks_as_chunking_anew() {
    let old = noise(12 << 20, 21);
    let edits: Vec<(&str, Vec<u8>)> = vec![
        ("unchanged", old.clone()),
        ("1 MiB overwritten in the middle", {
            let mut d = old.clone();
            d[5 << 20..6 << 20].copy_from_slice(&noise(1 << 20, 22));
            d
        }),
        ("one byte changed in the first and in the last chunk", {
            let mut d = old.clone();
            d[10] ^= 1;
            let n = d.len();
            d[n - 10] ^= 1;
            d
        }),
        ("bytes inserted in the middle (the rest shifted)", {
            let mut d = old[..7 << 20].to_vec();
            d.extend_from_slice(&noise(333, 23));
            d.extend_from_slice(&old[7 << 20..]);
            d
        }),
        ("bytes deleted in the middle", {
            let mut d = old[..8 << 20].to_vec();
            d.extend_from_slice(&old[(8 << 20) + 100_000..]);
            d
        }),
        ("appended to", {
            let mut d = old.clone();
            d.extend_from_slice(&noise(50_000, 24));
            d
        }),
        ("truncated", old[..(9 << 20) + 4321].to_vec()),
        ("one byte inserted at the start", {
            let mut d = vec![1u8];
            d.extend_from_slice(&old);
            d
        }),
        ("rewritten", noise(12 << 20, 25)),
        ("emptied", Vec::new()),
        ("zeros in the middle (no cut point)", {
            let mut d = old.clone();
            d[4 << 20..8 << 20].fill(0);
            d
        }),
    ];
    for (what, new) in &edits {
        let want = chunk_bytes(new);
        for threads in [1, 2, 5] {
            assert_eq!(
                rechunked(&old, new, threads),
                want,
                "{what}, {threads} threads"
            );
        }
    }
    // The point: only around a change does the gear hash run (1 MiB read per roll).
    let rolled = |i: usize| rechunked_rolling(&old, &edits[i].1, 2).1;
    assert_eq!(rolled(0), 0, "{}", edits[0].0);
    for i in [1, 2, 3, 4, 5, 6] {
        assert!(
            rolled(i) <= 4 << 20,
            "{}: {} bytes rolled",
            edits[i].0,
            rolled(i)
        );
    }
    // Mostly unlike the old chunks where they were: chunked anew, on every thread, having read a
    // sample of the old chunks first (it checked every old chunk first: more than twice the file
    // was read, 27 MB of this one).
    assert_eq!(rolled(7), (12 << 20) + 1, "{}", edits[7].0);
    assert_eq!(rolled(8), 12 << 20, "{}", edits[8].0);
    for i in [7, 8] {
        let new = &edits[i].1;
        let (got, _, read) = rechunked_reading(&old, new, 2);
        assert_eq!(got, chunk_bytes(new));
        let len = new.len() as u64;
        assert!(read < 2 * len, "{}: read {read} of {len}", edits[i].0);
    }
    // From an empty or a tiny old file.
    assert_eq!(rechunked(&[], &old, 2), chunk_bytes(&old));
    assert_eq!(rechunked(&[7; 10], &old, 2), chunk_bytes(&old));
}

#[test]
fn a_read_error_in_any_segment_is_returned() {
    let data = noise(8 << 20, 5);
    let read = |at: u64, buf: &mut [u8]| -> Result<(), u64> {
        if at >= 6 << 20 {
            return Err(at);
        }
        let at = at as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    };
    assert!(chunk_in_parallel(data.len() as u64, 4, &read).is_err());
}

#[test]
fn the_file_hash_depends_on_every_chunk_and_is_not_a_chunk_hash() {
    let data = noise(4 << 20, 17);
    let chunks = chunk_bytes(&data);
    let h = file_hash(&chunks);
    assert_eq!(h, file_hash(&chunk_bytes(&data)));
    let mut other = data.clone();
    other[3 << 20] ^= 1;
    assert_ne!(h, file_hash(&chunk_bytes(&other)));
    assert_ne!(file_hash(&[]), Hash::of(b""));
    let single = chunk_bytes(b"tiny");
    assert_ne!(file_hash(&single), single[0].hash);
}

/// The cut rule, byte by byte as FastCDC states it: what [`Chunker`] must find, however it rolls.
fn cuts_byte_by_byte(data: &[u8], min: u32, avg: u32, max: u32) -> Vec<usize> {
    let c = Chunker::with_sizes(min, avg, max);
    let (min, avg, max) = (c.min as usize, c.avg as usize, c.max as usize);
    let (mut cuts, mut start, mut h) = (Vec::new(), 0usize, 0u64);
    for (i, &b) in data.iter().enumerate() {
        let len = i + 1 - start;
        if len <= min {
            continue;
        }
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        let mask = if len <= avg { c.strict } else { c.loose };
        if h & mask == 0 || len == max {
            cuts.push(i + 1);
            start = i + 1;
            h = 0;
        }
    }
    if start < data.len() {
        cuts.push(data.len());
    }
    cuts
}

#[test]
fn the_chunker_cuts_where_the_byte_by_byte_rule_does() {
    // Small sizes: thousands of cuts, at odd and even offsets, under both masks and at the max.
    for (seed, (min, avg, max)) in [
        (64, 256, 1024),
        (0, 64, 128),
        (100, 512, 4096),
        (1, 128, 200),
    ]
    .into_iter()
    .enumerate()
    {
        let data = noise(1 << 20, seed as u64 + 11);
        let want = cuts_byte_by_byte(&data, min, avg, max);
        assert!(want.len() > 200, "{} cuts", want.len());
        let mut chunker = Chunker::with_sizes(min, avg, max);
        let mut got = Vec::new();
        let mut at = 0;
        // Fed in uneven pieces, as files are read.
        for piece in data.chunks(4093) {
            let mut rest = piece;
            while let Some(n) = chunker.next_boundary(rest) {
                at += n;
                got.push(at);
                rest = &rest[n..];
            }
            at += rest.len();
        }
        if got.last() != Some(&data.len()) {
            got.push(data.len());
        }
        assert_eq!(got, want, "sizes {min}/{avg}/{max}");
    }
}

/// The gear table and the cut points are part of the format: peers must cut the same file the same
/// way. If this test fails, the change breaks deduplication against every existing node.
#[test]
fn the_format_is_pinned() {
    assert_eq!(GEAR[0], 0x25a2_9dd2_7978_d217, "GEAR[0] = {:#x}", GEAR[0]);
    assert_eq!(
        GEAR[255], 0x5a22_8b2f_9493_a89b,
        "GEAR[255] = {:#x}",
        GEAR[255]
    );
    let cuts: Vec<u32> = chunk_bytes(&noise(2 << 20, 1))
        .iter()
        .map(|c| c.len)
        .collect();
    assert_eq!(
        cuts,
        [
            297866, 291534, 276041, 194163, 281182, 349554, 186919, 72803, 147090
        ],
        "cut lengths"
    );
}

#[test]
fn hex_round_trips() {
    let h = Hash::of(b"abc");
    assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
    assert_eq!(h.to_string(), h.to_hex());
    let counting: [u8; 32] = std::array::from_fn(|i| (i * 8) as u8);
    let want: String = (0..32).map(|i| format!("{:02x}", i * 8)).collect();
    assert_eq!(Hash(counting).to_hex(), want);
    assert_eq!(Hash([0xab; 32]).to_hex(), "ab".repeat(32));
    assert_eq!(Hash::from_hex("zz"), None);
    assert_eq!(Hash::from_hex(&"0".repeat(63)), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However a stream is split into reads, the chunks are the same.
    #[test]
    fn streaming_equals_whole(seed in any::<u64>(), len in 0usize..3_000_000, cuts in prop::collection::vec(1usize..400_000, 0..40)) {
        let data = noise(len, seed);
        let whole = chunk_bytes(&data);
        let mut h = ChunkHasher::new();
        let mut rest = &data[..];
        for c in cuts {
            let n = c.min(rest.len());
            h.update(&rest[..n]);
            rest = &rest[n..];
        }
        h.update(rest);
        prop_assert_eq!(h.finish(), whole);
    }

    /// Any edit of any file: rechunking from the old chunks is chunking anew.
    #[test]
    fn rechunking_equals_chunking(seed in any::<u64>(), len in 0usize..4_000_000, edits in prop::collection::vec((0usize..4_000_000, 0usize..300_000, 0usize..3), 0..4)) {
        let old = noise(len, seed);
        let mut new = old.clone();
        for (i, (at, n, kind)) in edits.into_iter().enumerate() {
            let at = at.min(new.len());
            let fresh = noise(n, seed ^ (i as u64 + 1));
            match kind {
                0 => {
                    let end = (at + n).min(new.len());
                    new[at..end].copy_from_slice(&fresh[..end - at]);
                }
                1 => {
                    new.splice(at..at, fresh);
                }
                _ => {
                    let end = (at + n).min(new.len());
                    new.drain(at..end);
                }
            }
        }
        prop_assert_eq!(rechunked(&old, &new, 3), chunk_bytes(&new));
    }

    /// Custom sizes are made sensible and respected.
    #[test]
    fn custom_sizes_hold(min in 0u32..100_000, avg in 0u32..300_000, max in 0u32..600_000) {
        let data = noise(2 << 20, u64::from(min ^ avg ^ max));
        let mut h = ChunkHasher::with_chunker(Chunker::with_sizes(min, avg, max));
        h.update(&data);
        let chunks = h.finish();
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        prop_assert_eq!(total, data.len() as u64);
        let c = Chunker::with_sizes(min, avg, max);
        prop_assert!(c.min < c.avg && c.avg < c.max && c.avg.is_power_of_two());
        for ch in &chunks {
            prop_assert!(ch.len <= c.max);
        }
    }
}

#[test]
fn a_chunk_close_to_one_held_is_sent_as_the_pieces_that_differ() {
    let len = 5 * PIECE + 123;
    let chunk: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    // What this node holds in its place: the same but for a few bytes in pieces 1 and 5, and
    // shorter (the old file ended inside the last piece).
    let mut near = chunk.clone();
    near[PIECE + 10] ^= 1;
    near.truncate(5 * PIECE + 50);
    let (indices, bytes) = differing(&chunk, &piece_hashes(&near));
    assert_eq!(indices, [1, 5]);
    assert_eq!(bytes.len(), PIECE + 123);
    assert_eq!(patched(&near, len, &indices, &bytes).unwrap(), chunk);

    // Nothing held: every piece; all held: none.
    let (all, bytes) = differing(&chunk, &[]);
    assert_eq!(all, [0, 1, 2, 3, 4, 5]);
    assert_eq!(patched(&[], len, &all, &bytes).unwrap(), chunk);
    let (none, bytes) = differing(&chunk, &piece_hashes(&chunk));
    assert!(none.is_empty() && bytes.is_empty());
    assert_eq!(patched(&chunk, len, &none, &bytes).unwrap(), chunk);

    // Answers that do not fit are refused, not trusted.
    let (indices, bytes) = differing(&chunk, &piece_hashes(&near));
    assert!(
        patched(&near, len, &[5, 1], &bytes).is_none(),
        "out of order"
    );
    assert!(patched(&near, len, &[1, 1], &bytes).is_none(), "twice");
    assert!(
        patched(&near, len, &[1, 6], &bytes).is_none(),
        "past the end"
    );
    assert!(
        patched(&near, len, &indices, &bytes[1..]).is_none(),
        "short"
    );
    assert!(
        patched(&near, len, &[1], &bytes).is_none(),
        "bytes left over"
    );
    assert!(patched(&near, len, &[u32::MAX], &bytes).is_none());
}
