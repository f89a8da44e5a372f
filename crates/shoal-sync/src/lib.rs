//! shoal's sync engine: [`plan`] computes what this node needs from what its peers announced, and
//! [`puller`] brings it onto the disk — reusing local chunks first, fetching the rest from every
//! peer that has them, and replacing files only atomically, durably, and never over a local edit.

pub mod archive;
mod beneath;
mod pace;
pub mod plan;
pub mod puller;
pub mod space;

pub use plan::{Need, plan};
pub use puller::{ChunkSource, Puller, PullerConfig, SyncState, SyncStatus};
pub use space::DiskFull;
