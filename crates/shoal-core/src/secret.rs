//! Secrets: the capability to a namespace, in BitTorrent Sync's format, with shoal's derivation.
//!
//! - A **read-write secret** is `A` + 32 base32 characters (RFC 4648 alphabet `A–Z2–7`, no padding):
//!   20 random bytes. BitTorrent Sync's format, so secrets in existing configs keep working.
//! - From it, one way only (BLAKE3 `derive_key`), an Ed25519 **signing key**: a read-write holder
//!   signs every change record it makes.
//! - The **read-only secret** is `B` + the base32 of that key's 32-byte *verifying* key (53
//!   characters). A read-only peer must verify signed change records from its secret alone, and a
//!   verifying key cannot be turned back into the signing key — so a read-only peer can check changes
//!   but never forge one. (BitTorrent Sync's read-only secrets are 33 characters; 20 bytes cannot hold
//!   a verifying key, so ours are longer. Read-only secrets were never portable between the two.)
//! - From the verifying key, so that read-write and read-only holders get the same values: the
//!   **share ID** (announced so peers of the same namespace meet; it reveals nothing of the secret)
//!   and the **proof key** (peers prove they hold the secret by a keyed hash over a challenge bound
//!   to their TLS session; the secret itself never crosses the wire).
//!
//! `docs/secrets.md` gives the byte layouts and test vectors; the tests below pin them.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};

const SIGNING_CONTEXT: &str = "shoal 2026-11 namespace signing key v1";
const SHARE_ID_CONTEXT: &str = "shoal 2026-11 share id v1";
const PROOF_CONTEXT: &str = "shoal 2026-11 membership proof key v1";
const CHILD_CONTEXT: &str = "shoal 2026-11 bootstrap child secret v1";

const RW_BYTES: usize = 20;
const RO_BYTES: usize = 32;
/// Length of a read-write secret in characters: `A` + 32.
pub const RW_LEN: usize = 1 + RW_BYTES * 8 / 5;
/// Length of a read-only secret in characters: `B` + 52.
pub const RO_LEN: usize = 1 + (RO_BYTES * 8).div_ceil(5);

const HELP: &str = "a read-write secret is 'A' followed by 32 characters A–Z and 2–7 (33 in all), \
                    a read-only secret is 'B' followed by 52; generate one with 'shoal secret'";

/// Why a string is not a secret. Every message ends with what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("invalid secret {0:?}: it is empty; {HELP}")]
    Empty(String),
    #[error("invalid secret {shown:?}: it starts with {first:?}; {HELP}")]
    Prefix { shown: String, first: char },
    #[error(
        "invalid secret {shown:?}: it is {len} characters long, a {kind} secret is {want}; {HELP}"
    )]
    Length {
        shown: String,
        len: usize,
        kind: &'static str,
        want: usize,
    },
    #[error(
        "invalid secret {shown:?}: character {position} ({ch:?}) is not one of A–Z and 2–7; {HELP}"
    )]
    Character {
        shown: String,
        position: usize,
        ch: char,
    },
    #[error("invalid secret {0:?}: its last character is not a canonical encoding; {HELP}")]
    NonCanonical(String),
    #[error("cannot generate a secret: the operating system's random source failed: {0}")]
    Random(String),
}

/// The read-write secret: 20 bytes. Holding it means being able to sign changes.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadWriteSecret([u8; RW_BYTES]);

/// The read-only secret: the namespace's Ed25519 verifying key.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadOnlySecret(VerifyingKey);

/// Either kind, as found in a config file or on a command line.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    ReadWrite(ReadWriteSecret),
    ReadOnly(ReadOnlySecret),
}

/// What peers of one namespace announce to find each other. Shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShareId(pub [u8; 16]);

impl ReadWriteSecret {
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = [0u8; RW_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; RW_BYTES]) -> Self {
        Self(bytes)
    }

    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&blake3::derive_key(SIGNING_CONTEXT, &self.0))
    }

    pub fn read_only(&self) -> ReadOnlySecret {
        ReadOnlySecret(self.signing_key().verifying_key())
    }

    pub fn share_id(&self) -> ShareId {
        self.read_only().share_id()
    }

    /// A secret of its own for namespace `name`, derived from this one: how `bootstrap SECRET a b`
    /// gives each of several namespaces a distinct share that every node derives alike.
    pub fn child(&self, name: &str) -> ReadWriteSecret {
        let mut material = self.0.to_vec();
        material.extend_from_slice(name.as_bytes());
        let key = blake3::derive_key(CHILD_CONTEXT, &material);
        let mut bytes = [0u8; RW_BYTES];
        bytes.copy_from_slice(&key[..RW_BYTES]);
        ReadWriteSecret(bytes)
    }
}

impl ReadOnlySecret {
    /// The key that verifies change records.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0
    }

    pub fn share_id(&self) -> ShareId {
        let key = blake3::derive_key(SHARE_ID_CONTEXT, self.0.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&key[..16]);
        ShareId(id)
    }

    pub fn proof_key(&self) -> [u8; 32] {
        blake3::derive_key(PROOF_CONTEXT, self.0.as_bytes())
    }

    /// The proof of membership over `transcript` (a challenge bound to the TLS session).
    pub fn prove(&self, transcript: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.proof_key(), transcript).as_bytes()
    }

    /// Checks a peer's proof in constant time.
    pub fn verify_proof(&self, transcript: &[u8], proof: &[u8; 32]) -> bool {
        blake3::keyed_hash(&self.proof_key(), transcript) == blake3::Hash::from_bytes(*proof)
    }
}

impl Secret {
    pub fn read_only(&self) -> ReadOnlySecret {
        match self {
            Secret::ReadWrite(rw) => rw.read_only(),
            Secret::ReadOnly(ro) => ro.clone(),
        }
    }

    pub fn share_id(&self) -> ShareId {
        self.read_only().share_id()
    }

    pub fn is_read_write(&self) -> bool {
        matches!(self, Secret::ReadWrite(_))
    }

    pub fn signing_key(&self) -> Option<SigningKey> {
        match self {
            Secret::ReadWrite(rw) => Some(rw.signing_key()),
            Secret::ReadOnly(_) => None,
        }
    }
}

// ---- text form ----

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes exactly `N` bytes from `text` (the part after the prefix), which must be canonical.
fn decode<const N: usize>(text: &str, shown: &str) -> Result<[u8; N], SecretError> {
    let mut out = [0u8; N];
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for (i, ch) in text.chars().enumerate() {
        let value = match ch {
            'A'..='Z' => ch as u32 - 'A' as u32,
            '2'..='7' => ch as u32 - '2' as u32 + 26,
            _ => {
                return Err(SecretError::Character {
                    shown: shown.to_owned(),
                    position: i + 2,
                    ch,
                });
            }
        };
        acc = (acc << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            if let Some(slot) = out.get_mut(n) {
                *slot = (acc >> bits) as u8;
            }
            n += 1;
        }
    }
    if n != N || acc & ((1 << bits) - 1) != 0 {
        return Err(SecretError::NonCanonical(self::shown(shown)));
    }
    Ok(out)
}

/// Shows at most the first 60 characters of what the user typed in an error.
fn shown(s: &str) -> String {
    s.chars().take(60).collect()
}

impl FromStr for Secret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, SecretError> {
        let first = s
            .chars()
            .next()
            .ok_or_else(|| SecretError::Empty(String::new()))?;
        let len = s.chars().count();
        let (kind, want) = match first {
            'A' => ("read-write", RW_LEN),
            'B' => ("read-only", RO_LEN),
            _ => {
                return Err(SecretError::Prefix {
                    shown: shown(s),
                    first,
                });
            }
        };
        if len != want {
            return Err(SecretError::Length {
                shown: shown(s),
                len,
                kind,
                want,
            });
        }
        let body = &s[1..];
        if first == 'A' {
            return Ok(Secret::ReadWrite(ReadWriteSecret(decode(body, s)?)));
        }
        let key: [u8; RO_BYTES] = decode(body, s)?;
        // Not every 32 bytes are a point on the curve: refuse a key that could never verify.
        let key =
            VerifyingKey::from_bytes(&key).map_err(|_| SecretError::NonCanonical(shown(s)))?;
        Ok(Secret::ReadOnly(ReadOnlySecret(key)))
    }
}

impl FromStr for ReadWriteSecret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, SecretError> {
        match s.parse()? {
            Secret::ReadWrite(rw) => Ok(rw),
            Secret::ReadOnly(_) => Err(SecretError::Prefix {
                shown: shown(s),
                first: 'B',
            }),
        }
    }
}

impl FromStr for ReadOnlySecret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, SecretError> {
        match s.parse()? {
            Secret::ReadOnly(ro) => Ok(ro),
            Secret::ReadWrite(_) => Err(SecretError::Prefix {
                shown: shown(s),
                first: 'A',
            }),
        }
    }
}

impl fmt::Display for ReadWriteSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "A{}", encode(&self.0))
    }
}

impl fmt::Display for ReadOnlySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B{}", encode(self.0.as_bytes()))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::ReadWrite(rw) => rw.fmt(f),
            Secret::ReadOnly(ro) => ro.fmt(f),
        }
    }
}

impl fmt::Display for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

// Debug never shows secret material: logs and panics must not leak it.
impl fmt::Debug for ReadWriteSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadWriteSecret(share {})", self.share_id())
    }
}

impl fmt::Debug for ReadOnlySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadOnlySecret(share {})", self.share_id())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::ReadWrite(rw) => rw.fmt(f),
            Secret::ReadOnly(ro) => ro.fmt(f),
        }
    }
}

impl fmt::Debug for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShareId({self})")
    }
}

macro_rules! serde_as_string {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_string!(Secret, ReadWriteSecret, ReadOnlySecret);

#[cfg(test)]
#[path = "secret_tests.rs"]
mod tests;
