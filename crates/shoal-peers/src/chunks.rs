//! Chunks between nodes: how many are served at once, and why a fetch failed. (A served chunk is
//! read by [`shoal_index::Index::read_chunk`].)

/// Chunk reads done at once per node, for all peers together.
pub const MAX_SERVING: usize = 16;
/// Answers to one peer read or waiting for its link at once (each holds up to 1 MiB). Per peer,
/// so that a peer that stops reading (frozen, or gone without a TCP reset) holds only its own.
pub const MAX_SERVING_PER_PEER: usize = 16;

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
