//! The wire messages: what peers say to each other once TLS is up, and signed change records.
//!
//! One enum, [`Message`], encoded with postcard (see `frame` and docs/protocol.md). Variants are
//! only ever appended — a variant's position is its tag on the wire — and a change of meaning
//! bumps [`PROTOCOL_VERSION`]. Messages are plain data; what to do with them belongs to the
//! connection owner (the daemon), never to this crate.
//!
//! Messages are either *control* (small, latency-sensitive: hello, joins, requests, peer lists,
//! close) or *bulk* (chunk data and index transfers). The split decides both the frame size limit
//! and the send queue (see `conn`), so a chunk request never waits behind megabytes of chunk data.
//!
//! [`SignedRecord`] is how read-only enforcement works: every change record carries an Ed25519
//! signature by the namespace's read-write key, and every receiver checks it against the
//! verifying key its secret gives it. The record body is opaque here; the engine defines it.

use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use shoal_core::secret::ShareId;

use crate::identity::NodeId;
use crate::wire;

/// The protocol version sent in [`Hello`]. Version 3 added [`Message::Preview`]; version 4 records
/// that give a large file's chunks as a splice of a version the receiver holds (the records are
/// the engine's), [`Message::IndexResend`], and chunks sent as the pieces that differ from what
/// the asker holds ([`Message::ChunkNear`], [`Message::ChunkPieces`]). Each is sent only to peers
/// that speak it.
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest version still spoken: peers with an older (or a newer) one are refused.
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// Most chunks one `Preview` carries.
pub const MAX_PREVIEW: usize = 256;
/// Most piece hashes one `ChunkNear` carries: a chunk of [`MAX_CHUNK`] has this many pieces.
pub const MAX_PIECES: usize = MAX_CHUNK / shoal_core::chunk::PIECE;
/// Most paths one `IndexResend` carries.
pub const MAX_RESEND: usize = 128;
/// Most chunk hashes one `Have` carries.
pub const MAX_HAVE: usize = 1024;
/// Largest chunk a `ChunkData` may carry.
pub const MAX_CHUNK: usize = 16 << 20;
/// Largest device name accepted in a `Hello`, in bytes.
pub const MAX_DEVICE_NAME: usize = 255;

/// Prefix of every signed record's message, so a record signature can never be replayed as a
/// signature over anything else made with the same key.
const RECORD_CONTEXT: &[u8] = b"shoal 2026-11 change record v1\0";

/// The first message each side sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Must equal the ID the TLS handshake authenticated.
    pub node_id: NodeId,
    pub device_name: String,
    /// Where this node accepts connections (0: it does not), for peer exchange.
    pub listen_port: u16,
}

/// Every message of protocol version 4 (version 3: all but `IndexResend`, `ChunkNear` and
/// `ChunkPieces`; 2: nor `Preview`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    /// "I hold this share; here is my proof bound to this TLS session."
    Join {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        #[serde(with = "wire::array")]
        proof: [u8; 32],
    },
    /// The join was accepted; the responder proves it holds the share too.
    JoinOk {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        #[serde(with = "wire::array")]
        proof: [u8; 32],
    },
    /// Unknown share or bad proof: the two are indistinguishable by design.
    JoinRefused {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        reason: String,
    },
    /// The sender's whole index of a share as of its sequence `seq` (possibly split over several).
    IndexFull {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        seq: u64,
        records: Vec<SignedRecord>,
    },
    /// Records changed after `since_seq`.
    IndexUpdate {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        since_seq: u64,
        records: Vec<SignedRecord>,
    },
    ChunkRequest {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        #[serde(with = "wire::array")]
        hash: [u8; 32],
        id: u64,
    },
    /// The answer to `ChunkRequest` number `id`.
    ChunkData {
        id: u64,
        #[serde(with = "wire::bytes")]
        bytes: Vec<u8>,
    },
    /// The sender does not have the chunk asked for by request `id`.
    ChunkUnavailable {
        id: u64,
    },
    /// Other nodes known to share `share_id` (peer exchange).
    Peers {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        addrs: Vec<SocketAddr>,
    },
    /// The sender is closing the connection, and why.
    Close {
        reason: String,
    },
    /// Keepalive: sent when a connection has been quiet; any message proves the peer is alive.
    Ping,
    /// "I now hold these chunks of `share_id`" — chunks of a file this node is still assembling,
    /// which its index does not list yet. A hint for peers pulling the same file: they may ask
    /// this node for them instead of waiting on the node the file came from.
    Have {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        hashes: Vec<[u8; 32]>,
    },
    /// Since protocol 3. "I am reading new file `path` of `share_id` (`size` bytes); these are
    /// chunks of it found so far." Sent while a large file is still being indexed, before its
    /// record exists: peers may start fetching the chunks then, and keep what they fetched once
    /// the signed record arrives and lists them. Only a hint: nothing is changed on its word, and
    /// every chunk is verified by its hash.
    Preview {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        path: String,
        size: u64,
        chunks: Vec<PreviewChunk>,
    },
    /// Since protocol 4. "Send your entries for these paths of `share_id` again, every chunk
    /// listed": the receiver of a record could not rebuild them from the versions it holds (at
    /// most [`MAX_RESEND`] paths).
    IndexResend {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        paths: Vec<String>,
    },
    /// Since protocol 4. A `ChunkRequest` from a node that holds data close to the chunk (the same
    /// place of the file before an edit): `pieces` are the hashes of its pieces
    /// ([`shoal_core::chunk::piece_hashes`], at most [`MAX_PIECES`]). Answered by `ChunkPieces`,
    /// `ChunkData` or `ChunkUnavailable`.
    ChunkNear {
        #[serde(with = "wire::share_id")]
        share_id: ShareId,
        #[serde(with = "wire::array")]
        hash: [u8; 32],
        id: u64,
        pieces: Vec<[u8; 16]>,
    },
    /// Since protocol 4. The answer to `ChunkNear` number `id`: the pieces of the chunk whose hash
    /// differs from the asker's (their indices, ascending), their bytes one after another.
    ChunkPieces {
        id: u64,
        pieces: Vec<u32>,
        #[serde(with = "wire::bytes")]
        bytes: Vec<u8>,
    },
}

/// One chunk of a [`Message::Preview`]: where it is in the file, and its BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewChunk {
    pub offset: u64,
    pub len: u32,
    #[serde(with = "wire::array")]
    pub hash: [u8; 32],
}

impl Message {
    /// Bulk messages go to the low-priority queue and may use the large frame limit.
    pub fn is_bulk(&self) -> bool {
        matches!(
            self,
            Message::ChunkData { .. }
                | Message::ChunkPieces { .. }
                | Message::IndexFull { .. }
                | Message::IndexUpdate { .. }
        )
    }

    /// About how many bytes the message encodes to, so that its buffer is allocated once.
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            Message::ChunkData { bytes, .. } => bytes.len() + 16,
            Message::ChunkPieces { pieces, bytes, .. } => bytes.len() + pieces.len() * 5 + 24,
            Message::IndexFull { records, .. } | Message::IndexUpdate { records, .. } => records
                .iter()
                .map(|r| r.payload.len() + 100)
                .sum::<usize>()
                .saturating_add(64),
            _ => 128,
        }
    }

    /// The variant's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Join { .. } => "Join",
            Message::JoinOk { .. } => "JoinOk",
            Message::JoinRefused { .. } => "JoinRefused",
            Message::IndexFull { .. } => "IndexFull",
            Message::IndexUpdate { .. } => "IndexUpdate",
            Message::ChunkRequest { .. } => "ChunkRequest",
            Message::ChunkData { .. } => "ChunkData",
            Message::ChunkUnavailable { .. } => "ChunkUnavailable",
            Message::Peers { .. } => "Peers",
            Message::Close { .. } => "Close",
            Message::Ping => "Ping",
            Message::Have { .. } => "Have",
            Message::Preview { .. } => "Preview",
            Message::IndexResend { .. } => "IndexResend",
            Message::ChunkNear { .. } => "ChunkNear",
            Message::ChunkPieces { .. } => "ChunkPieces",
        }
    }
}

/// A change record (opaque bytes) signed by a namespace's read-write key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    #[serde(with = "wire::bytes")]
    pub payload: Vec<u8>,
    /// The verifying key that made `signature`.
    #[serde(with = "wire::array")]
    pub signer: [u8; 32],
    #[serde(with = "wire::array")]
    pub signature: [u8; 64],
}

/// Why a record is not a valid change of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record signed by a key other than the namespace's read-write key")]
    WrongSigner,
    #[error("record signature does not verify")]
    BadSignature,
}

impl SignedRecord {
    pub fn sign(payload: Vec<u8>, key: &SigningKey) -> Self {
        let signature = key.sign(&signed_message(&payload)).to_bytes();
        Self {
            payload,
            signer: key.verifying_key().to_bytes(),
            signature,
        }
    }

    /// Checks that the namespace's read-write key (`namespace`) signed this record.
    pub fn verify(&self, namespace: &VerifyingKey) -> Result<(), RecordError> {
        if self.signer != namespace.to_bytes() {
            return Err(RecordError::WrongSigner);
        }
        namespace
            .verify_strict(
                &signed_message(&self.payload),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| RecordError::BadSignature)
    }
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(RECORD_CONTEXT.len() + payload.len());
    message.extend_from_slice(RECORD_CONTEXT);
    message.extend_from_slice(payload);
    message
}

impl std::fmt::Debug for SignedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SignedRecord({} bytes, signer {:02x?}..)",
            self.payload.len(),
            &self.signer[..4]
        )
    }
}
