//! shoal's index: what this node knows about each namespace's files.
//!
//! Files on disk are the truth; the index is what the node knows about them — kind, size, mode,
//! mtime, chunks, version vector — plus a local sequence number per change, so that peers can ask
//! for "everything since N". One redb file per namespace, in the node's state directory, never
//! inside the namespace.
//!
//! **Invariant: no network, no knowledge of peers, no file-system walking** (that is the scanner's).

mod assembling;
mod entry;
mod error;
mod store;

pub use assembling::{ASSEMBLING_MAX, Piece};
pub use entry::{ChunkRef, DiskStat, Entry, Kind, LocalStat, Stamp};
pub use error::IndexError;
pub use store::{Batch, ChunkLocation, Counts, Index, PeerKey, Preview, SCHEMA};
