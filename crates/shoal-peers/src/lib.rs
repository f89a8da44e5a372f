//! shoal's peer layer: finds the nodes that share each namespace, proves membership, and exchanges
//! signed indexes with them.
//!
//! [`manager`] owns every session (one per pair of nodes, carrying every shared namespace);
//! [`record`] turns index entries into records signed with the namespace's read-write key and
//! checks the ones that arrive. **Invariant: nothing from a peer reaches the index unverified** —
//! a record must carry the namespace's read-write signature and a path that stays inside the
//! namespace.

pub mod chunks;
mod hints;
pub mod lan;
pub mod limit;
pub mod manager;
pub mod record;

pub use chunks::FetchError;
pub use manager::{PeerStatus, Peers, PeersConfig, Share, resolve_all};
