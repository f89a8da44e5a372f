//! Chunks between nodes: how many are served at once, and why a fetch failed. (A served chunk is
//! read by [`shoal_index::Index::read_chunk`].)

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
