//! Hashing one file without ever recording a torn state.
//!
//! The file is opened without following a symlink, stat'ed, read to the end through the chunker,
//! and stat'ed again, by descriptor and by path. If anything moved in between — size, mtime, ctime,
//! or the path now names another inode — the result is thrown away and the file read again; a file
//! that keeps changing is reported as such and left for the next event.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_core::chunk::{ChunkHasher, Hash, file_hash};
use shoal_index::{ChunkRef, Kind};

use crate::progress::Progress;
use crate::walk::DiskStat;

/// Reads per `read` call: large enough that BLAKE3 uses its wide SIMD paths.
const READ_SIZE: usize = 1 << 20;

/// How many times a file that changed while being read is read again before giving up for now.
const ATTEMPTS: usize = 3;

#[derive(Debug)]
pub enum Hashed {
    Done {
        stat: DiskStat,
        chunks: Vec<ChunkRef>,
        hash: Hash,
    },
    /// The file changed during every attempt; the next event or scan will try again.
    Changing,
    /// It is gone, or is no longer a regular file.
    Vanished,
    /// The scan is stopping.
    Stopped,
}

pub fn hash_file(abs: &Path, progress: &Progress, stop: &AtomicBool) -> io::Result<Hashed> {
    let mut buf = Vec::new();
    for _ in 0..ATTEMPTS {
        let mut file = match File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(abs)
        {
            Ok(f) => f,
            Err(e) if gone(&e) => return Ok(Hashed::Vanished),
            Err(e) => return Err(e),
        };
        let before = match DiskStat::from_metadata(&file.metadata()?) {
            Some(s) if s.kind == Kind::File => s,
            _ => return Ok(Hashed::Vanished),
        };
        // Sized to the file (a 1 MiB zeroed buffer per small file was a sixth of a sender's CPU).
        let want = (before.size.saturating_add(4096) as usize).min(READ_SIZE);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut hasher = ChunkHasher::new();
        let mut total = 0u64;
        let mut reads = 0u32;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(Hashed::Stopped);
            }
            // A file still being written (a large copy, an NFS client streaming) is given up on
            // at once, before another MiB is hashed: an fstat costs nothing next to that, and the
            // folder looks again once the writes may be over. Reading up to 16 MiB of it three
            // times at every write event took a core away from the writer.
            reads += 1;
            if reads > 1 && DiskStat::from_metadata(&file.metadata()?) != Some(before) {
                return Ok(Hashed::Changing);
            }
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            total += n as u64;
            progress.add_bytes(n as u64);
        }
        let after = DiskStat::from_metadata(&file.metadata()?);
        let now = match std::fs::symlink_metadata(abs) {
            Ok(m) => DiskStat::from_metadata(&m),
            Err(e) if gone(&e) => return Ok(Hashed::Vanished),
            Err(e) => return Err(e),
        };
        if after == Some(before) && now == Some(before) && total == before.size {
            let chunks: Vec<ChunkRef> = hasher
                .finish()
                .into_iter()
                .map(|c| ChunkRef {
                    len: c.len,
                    hash: c.hash,
                })
                .collect();
            let hash = file_hash_of(&chunks);
            return Ok(Hashed::Done {
                stat: before,
                chunks,
                hash,
            });
        }
    }
    Ok(Hashed::Changing)
}

/// [`file_hash`] over the index's chunk form.
pub fn file_hash_of(chunks: &[ChunkRef]) -> Hash {
    let mut offset = 0u64;
    let full: Vec<shoal_core::chunk::Chunk> = chunks
        .iter()
        .map(|c| {
            let chunk = shoal_core::chunk::Chunk {
                offset,
                len: c.len,
                hash: c.hash,
            };
            offset += u64::from(c.len);
            chunk
        })
        .collect();
    file_hash(&full)
}

fn gone(e: &io::Error) -> bool {
    // ELOOP: the path became a symlink (O_NOFOLLOW); ENOTDIR: a parent became a file.
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || e.raw_os_error() == Some(libc::ELOOP)
}
