//! shoal's peer transport: who a node is, how it talks to other nodes, and what it says.
//!
//! Layers, bottom up: [`identity`] (the node's persistent Ed25519 key and [`NodeId`]), [`tls`]
//! (TLS 1.3 configs whose certificates are pinned to node IDs), [`message`] and [`frame`] (the
//! wire protocol, docs/protocol.md), [`conn`] (a running connection with prioritised send queues),
//! [`session`] (dial/accept and the `Hello` exchange), [`join`] (proving membership of a
//! namespace without sending its secret), [`backoff`] (reconnect pacing).
//!
//! **Invariant: this crate knows nothing of indexes, files or the sync engine.** Change records
//! are opaque signed bytes here; what a message means for a namespace is the owner's business.
//! **Invariant: nothing a peer sends can panic the node;** bad input closes that connection.

pub mod backoff;
pub mod conn;
pub mod frame;
pub mod identity;
pub mod join;
pub mod message;
pub mod session;
pub mod tls;
mod wire;

pub use conn::{Closed, ConnError, Connection, Event, Traffic};
pub use identity::{IdentityError, NodeId, NodeIdentity};
pub use join::JoinContext;
pub use message::{
    Hello, MAX_HAVE, MAX_PIECES, MAX_PREVIEW, MAX_RESEND, MIN_PROTOCOL_VERSION, Message,
    PROTOCOL_VERSION, PreviewChunk, RecordError, SignedRecord,
};
pub use session::{Session, SessionError, accept, connect, keep_new_connection};
pub use tls::{TlsError, TlsSetup};
