//! Content-defined chunking (FastCDC with normalized chunking) and BLAKE3 chunk hashes.
//!
//! A file is cut where a rolling "gear" hash of its last bytes has its top bits zero, so cut points
//! depend on content, not offsets: inserting a byte near the start of a large file moves only the
//! chunk it lands in, and every later chunk keeps its hash. Cuts are not looked for in the first
//! [`MIN_SIZE`] bytes of a chunk (FastCDC's skip, which also makes it fast), are harder to find
//! before [`AVG_SIZE`] and easier after (normalized chunking: sizes cluster around the average), and
//! are forced at [`MAX_SIZE`]. See docs/chunking.md for the sizes and why.

use std::fmt;

use serde::{Deserialize, Serialize};

/// No chunk but a file's last is shorter.
pub const MIN_SIZE: u32 = 64 * 1024;
/// The size chunks cluster around.
pub const AVG_SIZE: u32 = 256 * 1024;
/// No chunk is longer.
pub const MAX_SIZE: u32 = 1024 * 1024;

/// The gear table: 256 pseudo-random words, part of the on-disk and wire format (changing it moves
/// every cut point). Derived by splitmix64 from a fixed seed, so it is reproducible from this line.
const GEAR: [u64; 256] = gear_table(0x5348_4f41_4c5f_4344); // "SHOAL_CD"

const fn gear_table(seed: u64) -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state = seed;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// A BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    pub fn from_hex(s: &str) -> Option<Hash> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex by table: temporary file names and logs format a hash per file.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            hex[2 * i] = DIGITS[usize::from(b >> 4)];
            hex[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// One chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub len: u32,
    pub hash: Hash,
}

/// Finds chunk boundaries in a stream; the cuts depend only on the content, never on how the
/// caller splits its reads.
#[derive(Clone, Debug)]
pub struct Chunker {
    min: u32,
    avg: u32,
    max: u32,
    /// Cut-point masks before and after `avg`: two bits more and two bits fewer than `avg` calls
    /// for (FastCDC's normalization level 2).
    strict: u64,
    loose: u64,
    /// Bytes of the current chunk seen so far, and the rolling hash.
    len: u32,
    hash: u64,
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker::new()
    }
}

impl Chunker {
    pub fn new() -> Self {
        Chunker::with_sizes(MIN_SIZE, AVG_SIZE, MAX_SIZE)
    }

    /// Custom sizes. Nonsense is made sensible rather than refused: `avg` is rounded down to a power
    /// of two (at least 64), `min` kept below it, `max` kept above it.
    pub fn with_sizes(min: u32, avg: u32, max: u32) -> Self {
        let avg = avg.max(64);
        let avg = 1u32 << (31 - avg.leading_zeros());
        let min = min.min(avg / 2);
        let max = max.max(avg * 2);
        let bits = avg.trailing_zeros();
        Chunker {
            min,
            avg,
            max,
            strict: top_bits(bits + 2),
            loose: top_bits(bits.saturating_sub(2).max(1)),
            len: 0,
            hash: 0,
        }
    }

    /// Consumes bytes of the current chunk from `data`. Returns `Some(n)` when a chunk ends after
    /// `data[..n]` (the chunker then starts a new chunk; call again with `data[n..]`), `None` when
    /// all of `data` belongs to the still-open chunk.
    pub fn next_boundary(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        // No cut can fall within the first `min` bytes: skip them unhashed.
        if self.len < self.min {
            let skip = ((self.min - self.len) as usize).min(data.len());
            self.len += skip as u32;
            i = skip;
            if self.len < self.min {
                return None;
            }
        }
        if self.len < self.avg {
            let n = ((self.avg - self.len) as usize).min(data.len() - i);
            if let Some(at) = self.roll(&data[i..i + n], self.strict) {
                return Some(self.cut(i + at));
            }
            i += n;
            self.len += n as u32;
            if self.len < self.avg {
                return None;
            }
        }
        let n = ((self.max - self.len) as usize).min(data.len() - i);
        if let Some(at) = self.roll(&data[i..i + n], self.loose) {
            return Some(self.cut(i + at));
        }
        i += n;
        self.len += n as u32;
        if self.len >= self.max {
            return Some(self.cut(i));
        }
        None
    }

    /// Rolls the hash over `bytes`; the length up to and including the first cut point, if any.
    ///
    /// Two bytes a step: the hash after both, `(h << 2) + (g0 << 1) + g1`, depends on the hash
    /// before them through one shift and one add, and the hash between them is computed beside
    /// it for the cut test. Byte by byte, every byte waited for the one before (a shift and an
    /// add): the chunker ran at 1.8 GB/s on the benchmark machine (random data, the skipped
    /// `min` bytes included), the largest single cost of hashing a new file; two a step, 2.25
    /// (four a step was no faster). The hashes, and so the cuts, are those of the byte-by-byte
    /// rule exactly.
    #[inline]
    fn roll(&mut self, bytes: &[u8], mask: u64) -> Option<usize> {
        let mut h = self.hash;
        let mut pairs = bytes.chunks_exact(2);
        let mut k = 0;
        for pair in &mut pairs {
            let g0 = GEAR[pair[0] as usize];
            let g1 = GEAR[pair[1] as usize];
            let h1 = (h << 1).wrapping_add(g0);
            let h2 = (h << 2).wrapping_add((g0 << 1).wrapping_add(g1));
            if (h1 & mask == 0) | (h2 & mask == 0) {
                if h1 & mask == 0 {
                    self.hash = h1;
                    return Some(k + 1);
                }
                self.hash = h2;
                return Some(k + 2);
            }
            h = h2;
            k += 2;
        }
        for &b in pairs.remainder() {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            k += 1;
            if h & mask == 0 {
                self.hash = h;
                return Some(k);
            }
        }
        self.hash = h;
        None
    }

    fn cut(&mut self, n: usize) -> usize {
        self.len = 0;
        self.hash = 0;
        n
    }
}

fn top_bits(n: u32) -> u64 {
    let n = n.min(63);
    ((1u64 << n) - 1) << (64 - n)
}

/// Streaming chunker and hasher: feed a file's content in any pieces, get its chunk list.
#[derive(Debug, Default)]
pub struct ChunkHasher {
    chunker: Chunker,
    hasher: blake3::Hasher,
    offset: u64,
    len: u64,
    chunks: Vec<Chunk>,
}

impl ChunkHasher {
    pub fn new() -> Self {
        ChunkHasher::with_chunker(Chunker::new())
    }

    pub fn with_chunker(chunker: Chunker) -> Self {
        ChunkHasher {
            chunker,
            hasher: blake3::Hasher::new(),
            offset: 0,
            len: 0,
            chunks: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.chunker.next_boundary(data) {
                Some(n) => {
                    self.hasher.update(&data[..n]);
                    self.len += n as u64;
                    self.close_chunk();
                    data = &data[n..];
                }
                None => {
                    self.hasher.update(data);
                    self.len += data.len() as u64;
                    data = &[];
                }
            }
        }
    }

    fn close_chunk(&mut self) {
        self.chunks.push(Chunk {
            offset: self.offset,
            len: self.len as u32,
            hash: Hash(*self.hasher.finalize().as_bytes()),
        });
        self.offset += self.len;
        self.len = 0;
        self.hasher.reset();
    }

    /// The chunk list; an empty input has none.
    pub fn finish(mut self) -> Vec<Chunk> {
        if self.len > 0 {
            self.close_chunk();
        }
        self.chunks
    }
}

/// Fills a buffer from an offset of what is chunked (a file, in the daemon).
pub type ReadAt<'a, E> = dyn Fn(u64, &mut [u8]) -> Result<(), E> + Sync + 'a;

/// Bytes read per call by [`chunk_in_parallel`]: large enough for BLAKE3's widest SIMD paths.
const PARALLEL_READ: usize = 1 << 20;

/// Chunks and hashes `len` bytes on `threads` threads: the same chunks, to the bit, as one
/// [`ChunkHasher`] fed the bytes in order. `read_exact_at(offset, buf)` fills `buf` from `offset`
/// (it is called from every thread at once; an error stops the work and is returned).
///
/// Each thread chunks one segment as though a chunk began at its first byte. Where one segment
/// ends, the chunk that was still open is chunked again, in order, from its true start until a cut
/// lands on a cut of a later segment: from a common cut on, both chunkers are in the same state
/// (nothing open, rolling hash zero), so every later cut of that segment is exact. That takes a
/// chunk or two on real data; on data with no cut point at all (zeros) it continues to the end,
/// which is still exact, only not faster.
pub fn chunk_in_parallel<E: Send>(
    len: u64,
    threads: usize,
    read_exact_at: &ReadAt<'_, E>,
) -> Result<Vec<Chunk>, E> {
    chunk_in_parallel_seen(len, threads, read_exact_at, &|_| {})
}

/// Chunks as they are found: called from every chunking thread, in each segment's order.
pub type Seen<'a> = dyn Fn(&[Chunk]) + Sync + 'a;

/// Chunks found are told [`Seen`] this many at a time (~4 MiB), the last of a segment at its end.
const SEEN_AT_ONCE: usize = 16;
/// The first chunks of every segment but the first are not told (see [`chunk_range`]).
const SEEN_SKIPPED: usize = 4;

/// [`chunk_in_parallel`], telling `seen` of chunks as each segment finds them (before the
/// segments are stitched together): every chunk of the result is told, in order within its
/// segment (those just after a segment's start when the stitch settles them), and seldom one
/// the result replaces (a segment that takes more than a few chunks to fall in step). For a node
/// to offer a large file's first chunks while it is still reading the rest.
pub fn chunk_in_parallel_seen<E: Send>(
    len: u64,
    threads: usize,
    read_exact_at: &ReadAt<'_, E>,
    seen: &Seen<'_>,
) -> Result<Vec<Chunk>, E> {
    let threads = threads.clamp(1, 64) as u64;
    let step = len.div_ceil(threads).max(1);
    let bounds: Vec<(u64, u64)> = (0..threads)
        .map(|i| ((i * step).min(len), ((i + 1) * step).min(len)))
        .filter(|(a, b)| a < b)
        .collect();
    if bounds.is_empty() {
        return Ok(Vec::new());
    }
    let pieces = on_threads(&bounds, |&(a, b)| {
        chunk_range(a, b, b == len, read_exact_at, seen)
    });
    let mut pieces = pieces.into_iter().collect::<Result<Vec<_>, E>>()?;
    // Every segment's last chunk ends where the segment was cut, not where the content says.
    // Cuts of every segment but the first (their last chunks' ends excepted): offset ->
    // (segment, index). A re-chunk only runs forward, so it only ever meets later segments' cuts.
    let mut cuts = std::collections::HashMap::new();
    for (s, piece) in pieces.iter().enumerate().skip(1) {
        for (i, c) in piece.iter().enumerate().take(piece.len().saturating_sub(1)) {
            cuts.insert(c.offset + u64::from(c.len), (s, i));
        }
    }
    let mut out = std::mem::take(&mut pieces[0]);
    let mut next = 1;
    while next < pieces.len() {
        let Some(open) = out.pop() else { break };
        let mut hasher = ChunkHasher::new();
        let mut buf = vec![0u8; PARALLEL_READ];
        let mut at = open.offset;
        let mut synced = None;
        'rechunk: while at < len {
            let n = (PARALLEL_READ as u64).min(len - at) as usize;
            read_exact_at(at, &mut buf[..n])?;
            let seen = hasher.chunks.len();
            hasher.update(&buf[..n]);
            at += n as u64;
            for (k, c) in hasher.chunks.iter().enumerate().skip(seen) {
                if let Some(&hit) = cuts.get(&(open.offset + c.offset + u64::from(c.len))) {
                    hasher.chunks.truncate(k + 1);
                    synced = Some(hit);
                    break 'rechunk;
                }
            }
        }
        let redone = if synced.is_some() {
            hasher.chunks
        } else {
            hasher.finish()
        };
        let redone: Vec<Chunk> = redone
            .into_iter()
            .map(|mut c| {
                c.offset += open.offset;
                c
            })
            .collect();
        seen(&redone);
        out.extend(redone);
        match synced {
            Some((s, i)) => {
                // The chunks of segment `s` from the common cut on are the file's: tell those
                // its chunker held back (see `chunk_range`).
                let held =
                    (i + 1)..SEEN_SKIPPED.min(settled(pieces[s].len(), s + 1 == pieces.len()));
                if !held.is_empty() {
                    seen(&pieces[s][held]);
                }
                out.extend(pieces[s].drain(i + 1..));
                next = s + 1;
            }
            None => break,
        }
    }
    Ok(out)
}

/// Of a segment's `n` chunks, how many end where the content says: all in the file's last
/// segment (`last`), all but the one cut off at the segment's end in any other.
fn settled(n: usize, last: bool) -> usize {
    if last { n } else { n.saturating_sub(1) }
}

/// Chunks `start..end` as though a chunk began at `start`; `last`: `end` is the file's end.
fn chunk_range<E>(
    start: u64,
    end: u64,
    last: bool,
    read_exact_at: &ReadAt<'_, E>,
    seen: &Seen<'_>,
) -> Result<Vec<Chunk>, E> {
    let mut hasher = ChunkHasher::new();
    let mut buf = vec![0u8; PARALLEL_READ.min((end - start) as usize)];
    let mut at = start;
    // A segment after the first begins where no chunk does: its first chunks are seldom the
    // file's (the stitch tells the true ones), and a peer fetching them would waste the bytes.
    let mut told = if start == 0 { 0 } else { SEEN_SKIPPED };
    // A few at a time (each call may become a message to every peer), the rest at the end.
    let mut tell = |chunks: &[Chunk], all: bool| {
        if chunks.len() >= told + SEEN_AT_ONCE || (all && chunks.len() > told) {
            let fresh: Vec<Chunk> = chunks[told..]
                .iter()
                .map(|c| Chunk {
                    offset: c.offset + start,
                    ..*c
                })
                .collect();
            told = chunks.len();
            seen(&fresh);
        }
    };
    while at < end {
        let n = (buf.len() as u64).min(end - at) as usize;
        read_exact_at(at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
        tell(&hasher.chunks, false);
    }
    let mut chunks = hasher.finish();
    // The last chunk of a segment before the last ends where the segment was cut, not where the
    // content says: not told (the stitch tells the true one).
    tell(&chunks[..settled(chunks.len(), last)], true);
    for c in &mut chunks {
        c.offset += start;
    }
    Ok(chunks)
}

/// Re-chunks a file of `len` bytes whose chunk list was `old` before it changed: the same chunks,
/// to the bit, as [`chunk_in_parallel`], found mostly by checking the old chunks instead of
/// rolling the gear hash over every byte.
///
/// Why it is exact: a cut resets the chunker (no open chunk, rolling hash zero), so where a chunk
/// ends depends only on its own bytes. If the new file has a cut at `p` and the bytes from `p`
/// are those of an old chunk (its BLAKE3 matches), the chunker finds that chunk's end again —
/// unless the old chunk ended only because the old file did (its last chunk), which is trusted
/// only where the new file ends too. Elsewhere the gear hash runs from the last known cut until a
/// cut lands where an unchanged old chunk starts, or yields a chunk the old file had (content
/// shifted by an insert or a delete), after which old chunks are checked again.
///
/// Why: the gear hash runs at ~2.2 GB/s per core, BLAKE3 several times faster, and the unchanged
/// old chunks are checked on `threads` threads at once. A file mostly unlike its old chunks
/// (less than half the bytes where they were) is chunked by [`chunk_in_parallel`] instead.
/// `old` should come from this chunker (the index's list for the file): a list cut elsewhere keeps
/// its cuts where its chunks still verify (the bytes are exact either way).
pub fn rechunk<E: Send>(
    old: &[Chunk],
    len: u64,
    threads: usize,
    read_exact_at: &ReadAt<'_, E>,
) -> Result<Vec<Chunk>, E> {
    Ok(rechunk_counted(old, len, threads, read_exact_at, &|_| {})?.0)
}

/// [`rechunk`], telling `seen` of the chunks as they are found when the file is mostly unlike
/// its old chunks and chunked anew (see [`chunk_in_parallel_seen`]; nothing otherwise).
pub fn rechunk_seen<E: Send>(
    old: &[Chunk],
    len: u64,
    threads: usize,
    read_exact_at: &ReadAt<'_, E>,
    seen: &Seen<'_>,
) -> Result<Vec<Chunk>, E> {
    Ok(rechunk_counted(old, len, threads, read_exact_at, seen)?.0)
}

/// [`rechunk`], and how many bytes went through the gear hash (`len` when it fell back).
fn rechunk_counted<E: Send>(
    old: &[Chunk],
    len: u64,
    threads: usize,
    read_exact_at: &ReadAt<'_, E>,
    seen: &Seen<'_>,
) -> Result<(Vec<Chunk>, u64), E> {
    let old_len = old.last().map_or(0, |c| c.offset + u64::from(c.len));
    // Usable as a cut: every old chunk but a last one that ends before the new file does.
    let usable = |j: usize, end: u64| j + 1 < old.len() || end == len;
    if mostly_moved(old, len, read_exact_at)? {
        return Ok((
            chunk_in_parallel_seen(len, threads, read_exact_at, seen)?,
            len,
        ));
    }
    let same = unchanged_in_place(old, len, threads, read_exact_at)?;
    let same_bytes: u64 = old
        .iter()
        .zip(&same)
        .filter(|(_, s)| **s)
        .map(|(c, _)| u64::from(c.len))
        .sum();
    if same_bytes * 2 < len.min(old_len) || old.is_empty() {
        return Ok((
            chunk_in_parallel_seen(len, threads, read_exact_at, seen)?,
            len,
        ));
    }
    let mut rolled = 0u64;
    let start_of: std::collections::HashMap<u64, usize> =
        old.iter().enumerate().map(|(j, c)| (c.offset, j)).collect();
    let mut by_hash = std::collections::HashMap::new();
    for (j, c) in old.iter().enumerate() {
        by_hash.entry(c.hash).or_insert(j);
    }
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut at = 0u64;
    // The old chunk that may start at `at`, and whether it is known to be there unchanged.
    let mut candidate: Option<(usize, bool)> = Some((0, same.first() == Some(&true)));
    while at < len {
        if let Some((j, known)) = candidate.take() {
            let c = old[j];
            let end = at + u64::from(c.len);
            let verified = known && c.offset == at
                || end <= len && usable(j, end) && {
                    buf.resize(c.len as usize, 0);
                    read_exact_at(at, &mut buf)?;
                    Hash::of(&buf) == c.hash
                };
            if verified && usable(j, end) {
                out.push(Chunk {
                    offset: at,
                    len: c.len,
                    hash: c.hash,
                });
                at = end;
                candidate = (j + 1 < old.len()).then(|| {
                    let k = j + 1;
                    (k, same[k] && old[k].offset == at)
                });
                continue;
            }
        }
        // The gear hash from `at` (a cut) until a cut meets the old chunks again.
        let mut hasher = ChunkHasher::new();
        let mut pos = at;
        'rolling: loop {
            if pos == len {
                let pushed = hasher.chunks.len();
                for mut c in hasher.finish().into_iter().skip(pushed) {
                    c.offset += at;
                    out.push(c);
                }
                at = len;
                break;
            }
            let n = (PARALLEL_READ as u64).min(len - pos) as usize;
            buf.resize(n, 0);
            read_exact_at(pos, &mut buf)?;
            let seen = hasher.chunks.len();
            hasher.update(&buf);
            pos += n as u64;
            rolled += n as u64;
            for k in seen..hasher.chunks.len() {
                let mut c = hasher.chunks[k];
                c.offset += at;
                out.push(c);
                let end = c.offset + u64::from(c.len);
                let next = start_of
                    .get(&end)
                    .filter(|&&j| same[j])
                    .map(|&j| (j, true))
                    .or_else(|| {
                        let j = by_hash.get(&c.hash)? + 1;
                        (j < old.len()).then_some((j, false))
                    });
                if next.is_some() {
                    candidate = next;
                    at = end;
                    break 'rolling;
                }
            }
        }
    }
    Ok((out, rolled))
}

/// Old chunks checked first, spread over the file, when there are at least twice as many.
const SAMPLE: usize = 16;

/// Whether fewer than half of a sample of the old chunks are still in place: the file was
/// rewritten, or shifted by an insert near its start, and is chunked anew at once. Checking every
/// old chunk first read such a file twice (a 1 GiB file with one byte inserted at its start: ~0.5 s
/// more on the sending node). Only the path is chosen here, never the result: both give the same
/// chunks, and a sample that guesses wrong costs time, not exactness.
fn mostly_moved<E>(old: &[Chunk], len: u64, read_exact_at: &ReadAt<'_, E>) -> Result<bool, E> {
    let fits = fitting(old, len);
    if fits.len() < 2 * SAMPLE {
        return Ok(false);
    }
    let step = fits.len() / SAMPLE;
    let mut buf = Vec::new();
    let mut same = 0;
    for &j in fits.iter().skip(step / 2).step_by(step).take(SAMPLE) {
        if in_place(&old[j], &mut buf, read_exact_at)? {
            same += 1;
        }
    }
    Ok(same * 2 < SAMPLE)
}

/// Indexes of the old chunks that lie wholly within a file of `len` bytes.
fn fitting(old: &[Chunk], len: u64) -> Vec<usize> {
    (0..old.len())
        .filter(|&j| old[j].offset + u64::from(old[j].len) <= len)
        .collect()
}

/// Whether the file still holds old chunk `c` where it was (read into `buf`).
fn in_place<E>(c: &Chunk, buf: &mut Vec<u8>, read_exact_at: &ReadAt<'_, E>) -> Result<bool, E> {
    buf.resize(c.len as usize, 0);
    read_exact_at(c.offset, buf)?;
    Ok(Hash::of(buf) == c.hash)
}

/// For each old chunk, whether the new file holds it unchanged at the same offset (checked on
/// `threads` threads, each a run of neighbouring chunks).
fn unchanged_in_place<E: Send>(
    old: &[Chunk],
    len: u64,
    threads: usize,
    read_exact_at: &ReadAt<'_, E>,
) -> Result<Vec<bool>, E> {
    let fits = fitting(old, len);
    let per = fits.len().div_ceil(threads.clamp(1, 64)).max(1);
    let check = |js: &[usize]| -> Result<Vec<(usize, bool)>, E> {
        let mut buf = Vec::new();
        js.iter()
            .map(|&j| Ok((j, in_place(&old[j], &mut buf, read_exact_at)?)))
            .collect()
    };
    let parts: Vec<&[usize]> = fits.chunks(per).collect();
    let parts = on_threads(&parts, |js| check(js));
    let mut same = vec![false; old.len()];
    for part in parts {
        for (j, s) in part? {
            same[j] = s;
        }
    }
    Ok(same)
}

/// `work` on each of `parts` at once, the first on the calling thread, each other on a thread of
/// its own; the results in the order of `parts`.
fn on_threads<P: Sync, R: Send>(parts: &[P], work: impl Fn(&P) -> R + Sync) -> Vec<R> {
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = parts
            .iter()
            .skip(1)
            .map(|p| scope.spawn(move || work(p)))
            .collect();
        let mut done: Vec<R> = parts.first().map(work).into_iter().collect();
        for handle in others {
            // A thread can only end by returning: chunking and hashing do not panic.
            done.push(
                handle
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
        }
        done
    })
}

/// Whole-buffer convenience: the same chunks as [`ChunkHasher`] fed the same bytes.
pub fn chunk_bytes(data: &[u8]) -> Vec<Chunk> {
    let mut h = ChunkHasher::new();
    h.update(data);
    h.finish()
}

/// A file's identity: BLAKE3 (in its key-derivation mode, so it can never equal a chunk hash) over
/// each chunk's length (u32, little-endian) and hash. An empty file hashes the empty list.
pub fn file_hash(chunks: &[Chunk]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key("shoal 2026-11 file hash v1");
    for c in chunks {
        h.update(&c.len.to_le_bytes());
        h.update(&c.hash.0);
    }
    Hash(*h.finalize().as_bytes())
}

/// Pieces of a chunk that a peer holding something close to it (the same part of the file before
/// it changed) need not be sent again: a chunk is sent as the pieces that differ ([`differing`]).
/// 16 KiB: the edge of a 1 MiB edit costs at most a piece either side, not the ~300 KiB chunk
/// around each edge; a chunk of 256 KiB has 16 pieces (256 bytes of piece hashes to ask with).
pub const PIECE: usize = 16 << 10;

/// A piece's hash: the first 16 bytes of its BLAKE3. Only a guide to which pieces to send: the
/// chunk put together from them is verified by its own hash.
pub type PieceHash = [u8; 16];

/// The hash of each [`PIECE`] of `data` (the last one may be short).
pub fn piece_hashes(data: &[u8]) -> Vec<PieceHash> {
    data.chunks(PIECE)
        .map(|p| {
            let mut h = [0; 16];
            h.copy_from_slice(&blake3::hash(p).as_bytes()[..16]);
            h
        })
        .collect()
}

/// The pieces of `chunk` whose hash is not the one at the same place in `have`: their indices,
/// and their bytes one after another.
pub fn differing(chunk: &[u8], have: &[PieceHash]) -> (Vec<u32>, Vec<u8>) {
    let mut indices = Vec::new();
    let mut bytes = Vec::new();
    for (i, (piece, hash)) in chunk.chunks(PIECE).zip(piece_hashes(chunk)).enumerate() {
        if have.get(i) != Some(&hash) {
            indices.push(i as u32);
            bytes.extend_from_slice(piece);
        }
    }
    (indices, bytes)
}

/// A chunk of `len` bytes put together from `near` (what this node holds in its place) and the
/// pieces a peer sent ([`differing`]); `None` if those do not fit a chunk of that length. The
/// caller verifies the result against the chunk's hash.
pub fn patched(near: &[u8], len: usize, indices: &[u32], bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0; len];
    let shared = near.len().min(len);
    out[..shared].copy_from_slice(&near[..shared]);
    let mut from = 0;
    let mut last = None;
    for &i in indices {
        // Ascending, each once, within the chunk.
        if last.is_some_and(|l| i <= l) {
            return None;
        }
        last = Some(i);
        let start = (i as usize).checked_mul(PIECE)?;
        let end = start.checked_add(PIECE)?.min(len);
        if start >= end {
            return None;
        }
        let piece = bytes.get(from..from + (end - start))?;
        out[start..end].copy_from_slice(piece);
        from += end - start;
    }
    (from == bytes.len()).then_some(out)
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;
