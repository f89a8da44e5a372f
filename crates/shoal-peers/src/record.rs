//! Index entries as signed change records on the wire.
//!
//! A record is a batch of entries (up to the 1,000 of one index message), encoded with postcard and
//! signed once with the namespace's read-write key. Every receiver checks the signature against the
//! verifying key it derives from its own secret, so a node holding only the read-only secret — which
//! cannot sign — can never get a change accepted, and a node that forwards records cannot alter
//! them. One signature per batch rather than per entry: verifying is ~50 µs, which per entry was
//! a fifth of the CPU of syncing 10,000 small files.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use shoal_core::chunk::Hash;
use shoal_core::version::{DeviceId, VersionVector};
use shoal_index::{ChunkRef, Entry, Kind, LocalStat};
use shoal_net::SignedRecord;

/// Longest path accepted from a peer, in bytes (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// What a record carries: an entry without this node's local stat.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    path: String,
    kind: Kind,
    deleted: bool,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    chunks: Vec<ChunkRef>,
    hash: Hash,
    target: Option<String>,
    version: VersionVector,
    modified_by: DeviceId,
    seq: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("{0}")]
    Signature(#[from] shoal_net::RecordError),
    #[error("undecodable record")]
    Decode,
    #[error("unsafe path {0:?}")]
    Path(String),
    #[error("inconsistent entry for {0:?}")]
    Inconsistent(String),
}

/// Signs a batch of entries as one record.
pub fn sign_batch(entries: &[(String, Entry)], key: &SigningKey) -> Option<SignedRecord> {
    let wire: Vec<Wire> = entries.iter().map(|(p, e)| to_wire(p, e)).collect();
    let payload = postcard::to_allocvec(&wire).ok()?;
    Some(SignedRecord::sign(payload, key))
}

fn to_wire(path: &str, entry: &Entry) -> Wire {
    Wire {
        path: path.to_owned(),
        kind: entry.kind,
        deleted: entry.deleted,
        size: entry.size,
        mode: entry.mode,
        mtime_ns: entry.mtime_ns,
        chunks: entry.chunks.clone(),
        hash: entry.hash,
        target: entry.target.clone(),
        version: entry.version.clone(),
        modified_by: entry.modified_by,
        seq: entry.seq,
    }
}

/// One entry of a record: accepted (path, entry), or why not.
pub type Opened = Result<(String, Entry), Rejected>;

/// Verifies a record and decodes its entries, each checked on its own (a safe path inside the
/// namespace, consistent fields). A bad signature or encoding refuses the whole record.
pub fn open_batch(record: &SignedRecord, key: &VerifyingKey) -> Result<Vec<Opened>, Rejected> {
    record.verify(key)?;
    let wire: Vec<Wire> = postcard::from_bytes(&record.payload).map_err(|_| Rejected::Decode)?;
    Ok(wire.into_iter().map(from_wire).collect())
}

fn from_wire(wire: Wire) -> Result<(String, Entry), Rejected> {
    if !safe_path(&wire.path) {
        return Err(Rejected::Path(wire.path));
    }
    let chunk_total: u64 = wire.chunks.iter().map(|c| u64::from(c.len)).sum();
    let consistent = match (wire.kind, wire.deleted) {
        (_, true) => wire.chunks.is_empty(),
        (Kind::File, false) => chunk_total == wire.size && wire.target.is_none(),
        (Kind::Dir, false) => wire.chunks.is_empty() && wire.target.is_none(),
        (Kind::Symlink, false) => wire.chunks.is_empty() && wire.target.is_some(),
    };
    if !consistent {
        return Err(Rejected::Inconsistent(wire.path));
    }
    let entry = Entry {
        kind: wire.kind,
        deleted: wire.deleted,
        size: wire.size,
        mode: wire.mode & 0o7777,
        mtime_ns: wire.mtime_ns,
        local: LocalStat::default(),
        chunks: wire.chunks,
        hash: wire.hash,
        target: wire.target,
        version: wire.version,
        modified_by: wire.modified_by,
        seq: wire.seq,
    };
    Ok((wire.path, entry))
}

/// A namespace-relative path that cannot leave the namespace or touch shoal's own `.sync/`: no
/// leading `/`, no empty, `.` or `..` component, no NUL, not under `.sync`.
pub fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !shoal_core::ignore::is_reserved(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    fn sign(path: &str, entry: &Entry, key: &SigningKey) -> Option<SignedRecord> {
        sign_batch(&[(path.to_owned(), entry.clone())], key)
    }

    /// Opens a record of one entry.
    fn open(record: &SignedRecord, key: &VerifyingKey) -> Result<(String, Entry), Rejected> {
        let mut entries = open_batch(record, key)?;
        match (entries.pop(), entries.is_empty()) {
            (Some(one), true) => one,
            _ => Err(Rejected::Decode),
        }
    }
    use shoal_core::secret::ReadWriteSecret;

    fn entry() -> Entry {
        Entry {
            kind: Kind::File,
            deleted: false,
            size: 10,
            mode: 0o644,
            mtime_ns: 1,
            local: LocalStat {
                inode: 5,
                ctime_ns: 6,
            },
            chunks: vec![ChunkRef {
                len: 10,
                hash: Hash([1; 32]),
            }],
            hash: Hash([2; 32]),
            target: None,
            version: VersionVector::new(),
            modified_by: DeviceId(3),
            seq: 9,
        }
    }

    #[test]
    fn a_signed_record_opens_with_the_namespace_key_only() {
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let record = sign("a/b.txt", &entry(), &secret.signing_key()).unwrap();
        let (path, e) = open(&record, &secret.read_only().verifying_key()).unwrap();
        assert_eq!(path, "a/b.txt");
        assert_eq!(e.seq, 9);
        assert_eq!(
            e.local,
            LocalStat::default(),
            "local stat never crosses the wire"
        );

        let other = ReadWriteSecret::from_bytes([5; 20]);
        assert!(open(&record, &other.read_only().verifying_key()).is_err());
        // A record signed by another key (e.g. a node's own) is refused even if it claims to be valid.
        let forged = sign("a/b.txt", &entry(), &other.signing_key()).unwrap();
        assert!(open(&forged, &secret.read_only().verifying_key()).is_err());
    }

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            ".sync/IgnoreList",
            ".sync",
            "a\0b",
        ] {
            assert!(!safe_path(bad), "{bad:?}");
        }
        for good in ["a", "a/b", "..a", "a/.sync", "x/.. y"] {
            assert!(safe_path(good), "{good:?}");
        }
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let record = sign("../escape", &entry(), &secret.signing_key()).unwrap();
        assert!(matches!(
            open(&record, &secret.read_only().verifying_key()),
            Err(Rejected::Path(_))
        ));
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let mut e = entry();
        e.size = 11;
        let record = sign("a", &e, &secret.signing_key()).unwrap();
        assert!(matches!(
            open(&record, &secret.read_only().verifying_key()),
            Err(Rejected::Inconsistent(_))
        ));
    }
}
