//! Chunks between nodes: reading one from the local namespace to serve a peer, and why a fetch
//! failed.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use shoal_core::chunk::Hash;
use shoal_index::Index;

/// Chunk reads served at once per node (each holds up to 1 MiB while it waits for the link).
pub const MAX_SERVING: usize = 16;

/// Why a chunk could not be fetched from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no connected peer has this chunk")]
    NoSource,
    #[error("the peer no longer has this chunk")]
    Unavailable,
    #[error("the peer disconnected")]
    Disconnected,
    #[error("the peer did not answer in time")]
    TimedOut,
    #[error("the peer layer is shutting down")]
    Stopped,
}

/// Reads chunk `hash` from wherever this node's index says it is, verifying it: a file may have
/// changed since it was indexed, and a peer must never be sent bytes that are not the chunk.
pub fn read_local(root: &Path, index: &Index, hash: &Hash) -> Option<Vec<u8>> {
    let locations = index.chunk_locations(hash).ok()?;
    for loc in locations {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_nofollow())
            .open(root.join(&loc.path))
        else {
            continue;
        };
        let mut buf = vec![0u8; loc.len as usize];
        if read_exact_at(&file, &mut buf, loc.offset).is_ok() && Hash::of(&buf) == *hash {
            return Some(buf);
        }
    }
    None
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// `O_NOFOLLOW`: a chunk is never read through a symlink swapped in after indexing.
fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}
