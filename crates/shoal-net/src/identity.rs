//! The node's identity: one Ed25519 key pair, kept in the state directory for the node's life.
//!
//! A node is known to its peers by its [`NodeId`], the 32-byte Ed25519 public key. The same key
//! signs the node's self-signed TLS certificate, so a TLS handshake proves the peer holds the
//! private half of the ID it claims, and pinning a peer means pinning this ID (see `tls`). The key
//! is not a namespace key: namespaces have their own keys derived from their secrets.
//!
//! The private key is stored as its 32 raw seed bytes in `STATE_DIR/identity.key`, mode 0600,
//! written atomically (temp file, fsync, rename, fsync dir) so that a crash never leaves a half key
//! that would silently become a new identity. A key file of the wrong size is an error, never
//! replaced: losing the identity would make every peer that pinned this node refuse it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};

/// File name of the key inside the state directory.
pub const KEY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read node identity {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write node identity {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "node identity {path} is {len} bytes, expected 32: refusing to replace it (move it aside to start as a new node)"
    )]
    Corrupt { path: PathBuf, len: usize },
    #[error("cannot generate a node identity: the operating system's random source failed: {0}")]
    Random(String),
}

/// A node's public identity: its Ed25519 verifying key. Shown as 64 lowercase hex digits;
/// [`NodeId::short`] gives the first 12 for logs.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub [u8; 32]);

/// The node's key pair.
pub struct NodeIdentity {
    key: SigningKey,
}

impl NodeIdentity {
    /// Loads `state_dir/identity.key`, or creates it (and `state_dir`) if absent.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, IdentityError> {
        let path = state_dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let seed: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| IdentityError::Corrupt {
                            path: path.clone(),
                            len: bytes.len(),
                        })?;
                warn_if_readable_by_others(&path);
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let identity = Self::generate()?;
                write_atomically(state_dir, &path, &identity.key.to_bytes()).map_err(|source| {
                    IdentityError::Write {
                        path: path.clone(),
                        source,
                    }
                })?;
                tracing::info!(node = %identity.node_id(), path = %path.display(), "created node identity");
                Ok(identity)
            }
            Err(source) => Err(IdentityError::Read { path, source }),
        }
    }

    /// A fresh identity that is not stored anywhere (tests, benchmarks).
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// The private seed; only the TLS layer needs it, to sign handshakes.
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeIdentity({})", self.node_id())
    }
}

impl NodeId {
    /// The Ed25519 key, if these 32 bytes are a valid curve point.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }

    /// The first 12 hex digits, for log lines.
    pub fn short(&self) -> String {
        self.to_string().chars().take(12).collect()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// Why a string is not a node ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node ID {0:?}: a node ID is 64 hex digits")]
pub struct NodeIdParseError(pub String);

impl FromStr for NodeId {
    type Err = NodeIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NodeIdParseError(s.chars().take(80).collect());
        if s.len() != 64 || !s.is_ascii() {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| err())?;
            *slot = u8::from_str_radix(text, 16).map_err(|_| err())?;
        }
        Ok(NodeId(out))
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{KEY_FILE}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only when the file is created: make sure a stale temp file is private too.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "node identity key is accessible to other users; it should be mode 0600");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = NodeIdentity::load_or_create(&state).unwrap();
        let b = NodeIdentity::load_or_create(&state).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        let mode = fs::metadata(state.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_key_is_an_error_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let err = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::Corrupt { len: 5, .. }),
            "{err}"
        );
        assert_eq!(fs::read(dir.path().join(KEY_FILE)).unwrap(), b"short");
    }

    #[test]
    fn node_id_text_round_trips() {
        let id = NodeIdentity::generate().unwrap().node_id();
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.short().len(), 12);
        assert!("xyz".parse::<NodeId>().is_err());
    }
}
