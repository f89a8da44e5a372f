//! Joining a namespace: proving, over an authenticated session, that both sides hold its secret.
//!
//! The secret never crosses the wire. Each side proves membership with
//! `ReadOnlySecret::prove(transcript)`, a keyed hash whose key only secret holders can derive, over
//! a transcript that binds the proof to this one TLS session and direction:
//!
//! ```text
//! "shoal join v1\0" ‖ exporter (32 bytes, RFC 5705 label "EXPORTER-shoal-join")
//!                   ‖ share_id (16) ‖ prover node ID (32) ‖ verifier node ID (32)
//! ```
//!
//! The exporter value is known only to the two ends of this TLS session, so a proof cannot be
//! replayed on another connection or relayed by a man in the middle; the prover-then-verifier
//! order means the responder cannot reflect the requester's proof back as its own.
//!
//! Sequence: the requester sends `Join { share_id, proof }`. A responder that holds the share and
//! finds the proof valid answers `JoinOk` with its own proof, which the requester checks (so a
//! node cannot pretend to hold a share it does not). Otherwise it answers `JoinRefused` with the
//! same fixed reason whether the share is unknown or the proof wrong, after the same amount of
//! hashing, so a prober learns nothing — not even whether the share exists here.

use shoal_core::secret::{ReadOnlySecret, ShareId};

use crate::identity::NodeId;
use crate::message::Message;

/// The RFC 5705 / RFC 8446 §7.5 exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-shoal-join";
/// The one reason given for every refused join.
pub const REFUSED: &str = "join refused";
const TRANSCRIPT_CONTEXT: &[u8] = b"shoal join v1\0";

/// What binds join proofs to one session: its exporter value and the two node IDs.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinContext {
    exporter: [u8; 32],
    local: NodeId,
    peer: NodeId,
}

impl JoinContext {
    pub fn new(exporter: [u8; 32], local: NodeId, peer: NodeId) -> Self {
        Self {
            exporter,
            local,
            peer,
        }
    }

    /// The `Join` message asking the peer to let us into the share of `secret`.
    pub fn request(&self, secret: &ReadOnlySecret) -> Message {
        let share_id = secret.share_id();
        let proof = secret.prove(&self.transcript(&share_id, self.local, self.peer));
        Message::Join { share_id, proof }
    }

    /// The answer to the peer's `Join { share_id, proof }`; `secret` is ours for that share, if we
    /// hold it. Unknown share and bad proof give the identical `JoinRefused`.
    pub fn respond(
        &self,
        share_id: ShareId,
        proof: &[u8; 32],
        secret: Option<&ReadOnlySecret>,
    ) -> Message {
        let theirs = self.transcript(&share_id, self.peer, self.local);
        let accepted = match secret {
            Some(secret) if secret.share_id() == share_id => secret.verify_proof(&theirs, proof),
            _ => {
                // The same work as a real check, so timing does not tell "unknown" from "wrong".
                let key = blake3::derive_key("shoal join v1 decoy key", &share_id.0);
                std::hint::black_box(
                    blake3::keyed_hash(&key, &theirs) == blake3::Hash::from(*proof),
                );
                false
            }
        };
        match (accepted, secret) {
            (true, Some(secret)) => Message::JoinOk {
                share_id,
                proof: secret.prove(&self.transcript(&share_id, self.local, self.peer)),
            },
            _ => Message::JoinRefused {
                share_id,
                reason: REFUSED.to_owned(),
            },
        }
    }

    /// Whether the proof in the peer's `JoinOk` shows it holds `secret` too.
    pub fn accepted(&self, secret: &ReadOnlySecret, proof: &[u8; 32]) -> bool {
        let share_id = secret.share_id();
        secret.verify_proof(&self.transcript(&share_id, self.peer, self.local), proof)
    }

    fn transcript(&self, share_id: &ShareId, prover: NodeId, verifier: NodeId) -> Vec<u8> {
        let mut t = Vec::with_capacity(TRANSCRIPT_CONTEXT.len() + 32 + 16 + 64);
        t.extend_from_slice(TRANSCRIPT_CONTEXT);
        t.extend_from_slice(&self.exporter);
        t.extend_from_slice(&share_id.0);
        t.extend_from_slice(&prover.0);
        t.extend_from_slice(&verifier.0);
        t
    }
}

impl std::fmt::Debug for JoinContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinContext({:?} ↔ {:?})", self.local, self.peer)
    }
}
