//! Index entries as signed change records on the wire.
//!
//! A record is a batch of entries (up to the 1,000 of one index message), encoded with postcard and
//! signed once with the namespace's read-write key. Every receiver checks the signature against the
//! verifying key it derives from its own secret, so a node holding only the read-only secret — which
//! cannot sign — can never get a change accepted, and a node that forwards records cannot alter
//! them. One signature per batch rather than per entry: verifying is ~50 µs, which per entry was
//! a fifth of the CPU of syncing 10,000 small files.
//!
//! Since protocol 4 a large file's chunks may be sent as a splice of a version the receiver holds
//! ([`Format::Spliced`]): its own version of the path, as it last announced it, or the sender's
//! previous one. A 1 MiB edit of a 1 GiB file changes ~5 of its ~4,000 chunks; listing them all
//! cost ~150 kB each way (the edit to the peer, the peer's record of the same version back), a
//! tenth of the edit's whole traffic, and 15 MB per change of a 100 GiB disk image. The receiver
//! rebuilds the list and checks it against the file hash the record signs; one it cannot rebuild
//! (its versions moved meanwhile) it asks for again in full ([`shoal_net::Message::IndexResend`]).

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use shoal_core::chunk::Hash;
use shoal_core::version::{DeviceId, VersionVector};
use shoal_index::{ChunkRef, Entry, Kind, LocalStat};
use shoal_net::SignedRecord;

/// Longest path accepted from a peer, in bytes (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// What a record carries: an entry without this node's local stat. `C` is how a file's chunks
/// are given: a list (protocol 2 and 3) or [`Chunks`] (4).
#[derive(Debug, Serialize, Deserialize)]
struct Wire<C> {
    path: String,
    kind: Kind,
    deleted: bool,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    chunks: C,
    hash: Hash,
    target: Option<String>,
    version: VersionVector,
    modified_by: DeviceId,
    seq: u64,
}

/// A file's chunks in a record of protocol 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Chunks {
    Listed(Vec<ChunkRef>),
    Spliced(Splice),
}

/// Protocol 2 and 3 list every chunk.
impl From<Vec<ChunkRef>> for Chunks {
    fn from(listed: Vec<ChunkRef>) -> Chunks {
        Chunks::Listed(listed)
    }
}

/// The chunks of the version whose file hash is `base`, with the `removed` chunks from index
/// `at` on replaced by `inserted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Splice {
    base: Hash,
    at: u32,
    removed: u32,
    inserted: Vec<ChunkRef>,
}

/// How a peer reads records, from the protocol version it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Every chunk listed (protocol 2 and 3).
    Listed,
    /// Large files' chunks as splices where that is shorter (protocol 4).
    Spliced,
}

impl Format {
    pub fn of(version: u32) -> Format {
        if version >= 4 {
            Format::Spliced
        } else {
            Format::Listed
        }
    }
}

/// Files of fewer chunks are always listed (no base is looked up for them).
pub const SPLICE_FROM: usize = 32;

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

/// Signs a batch of entries as one record in `format`. `base` gives, for a path, the version
/// to splice a large file's chunks from: the receiver's own as it announced it.
pub fn sign_batch(
    entries: &[(String, Entry)],
    key: &SigningKey,
    format: Format,
    base: impl Fn(&str) -> Option<Entry>,
) -> Option<SignedRecord> {
    let payload = match format {
        Format::Listed => {
            let wire: Vec<Wire<Vec<ChunkRef>>> = entries
                .iter()
                .map(|(p, e)| to_wire(p, e, e.chunks.clone()))
                .collect();
            postcard::to_allocvec(&wire).ok()?
        }
        Format::Spliced => {
            let wire: Vec<Wire<Chunks>> = entries
                .iter()
                .map(|(p, e)| to_wire(p, e, chunks_for(p, e, &base)))
                .collect();
            postcard::to_allocvec(&wire).ok()?
        }
    };
    Some(SignedRecord::sign(payload, key))
}

fn to_wire<C>(path: &str, entry: &Entry, chunks: C) -> Wire<C> {
    Wire {
        path: path.to_owned(),
        kind: entry.kind,
        deleted: entry.deleted,
        size: entry.size,
        mode: entry.mode,
        mtime_ns: entry.mtime_ns,
        chunks,
        hash: entry.hash,
        target: entry.target.clone(),
        version: entry.version.clone(),
        modified_by: entry.modified_by,
        seq: entry.seq,
    }
}

/// `entry`'s chunks as a splice of `base(path)` where that is at most half as long as the list.
fn chunks_for(path: &str, entry: &Entry, base: &impl Fn(&str) -> Option<Entry>) -> Chunks {
    let listed = || Chunks::Listed(entry.chunks.clone());
    if entry.chunks.len() < SPLICE_FROM || !entry.is_live() || entry.kind != Kind::File {
        return listed();
    }
    let Some(old) = base(path).filter(|b| b.is_live() && b.kind == Kind::File) else {
        return listed();
    };
    let (new, old_chunks) = (&entry.chunks, &old.chunks);
    let before = new
        .iter()
        .zip(old_chunks)
        .take_while(|(a, b)| a == b)
        .count();
    let most_after = new.len().min(old_chunks.len()) - before;
    let after = new
        .iter()
        .rev()
        .zip(old_chunks.iter().rev())
        .take(most_after)
        .take_while(|(a, b)| a == b)
        .count();
    let inserted = &new[before..new.len() - after];
    if inserted.len() * 2 > new.len() {
        return listed();
    }
    Chunks::Spliced(Splice {
        base: old.hash,
        at: before as u32,
        removed: (old_chunks.len() - before - after) as u32,
        inserted: inserted.to_vec(),
    })
}

/// One entry of a record as received: its chunks are known, or must be rebuilt from a version
/// the receiver holds ([`Received::base`], [`Received::rebuilt`]).
#[derive(Debug)]
pub struct Received {
    path: String,
    entry: Entry,
    splice: Option<Splice>,
}

impl Received {
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file hash of the version its chunks are spliced from, if they are.
    pub fn base(&self) -> Option<&Hash> {
        self.splice.as_ref().map(|s| &s.base)
    }

    /// The entry, its chunks rebuilt from `base` (the chunks of the version [`Received::base`]
    /// names, when it has one) and checked against its file hash: `None` if they cannot be.
    pub fn rebuilt(self, base: Option<&[ChunkRef]>) -> Option<(String, Entry)> {
        let Received {
            path,
            mut entry,
            splice,
        } = self;
        let Some(s) = splice else {
            return Some((path, entry));
        };
        let base = base?;
        let (at, removed) = (s.at as usize, s.removed as usize);
        let kept = base.get(at.checked_add(removed)?..)?;
        let mut chunks = Vec::with_capacity(at + s.inserted.len() + kept.len());
        chunks.extend_from_slice(base.get(..at)?);
        chunks.extend(s.inserted);
        chunks.extend_from_slice(kept);
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        entry.chunks = chunks;
        let listed: Vec<_> = entry.chunks_with_offsets().collect();
        (total == entry.size && shoal_core::chunk::file_hash(&listed) == entry.hash)
            .then_some((path, entry))
    }
}

/// One entry of a record: accepted, or why not.
pub type Opened = Result<Received, Rejected>;

/// Verifies a record (in the `format` its sender writes) and decodes its entries, each checked on
/// its own (a safe path inside the namespace, consistent fields). A bad signature or encoding
/// refuses the whole record.
pub fn open_batch(
    record: &SignedRecord,
    key: &VerifyingKey,
    format: Format,
) -> Result<Vec<Opened>, Rejected> {
    record.verify(key)?;
    Ok(match format {
        Format::Listed => {
            let wire: Vec<Wire<Vec<ChunkRef>>> =
                postcard::from_bytes(&record.payload).map_err(|_| Rejected::Decode)?;
            wire.into_iter().map(from_wire).collect()
        }
        Format::Spliced => {
            let wire: Vec<Wire<Chunks>> =
                postcard::from_bytes(&record.payload).map_err(|_| Rejected::Decode)?;
            wire.into_iter().map(from_wire).collect()
        }
    })
}

fn from_wire(wire: Wire<impl Into<Chunks>>) -> Result<Received, Rejected> {
    if !safe_path(&wire.path) {
        return Err(Rejected::Path(wire.path));
    }
    let (listed, splice) = match wire.chunks.into() {
        Chunks::Listed(c) => (Some(c), None),
        Chunks::Spliced(s) => (None, Some(s)),
    };
    let consistent = match (&listed, wire.kind, wire.deleted) {
        // Spliced chunks are checked once rebuilt (`Received::rebuilt`).
        (None, kind, deleted) => kind == Kind::File && !deleted && wire.target.is_none(),
        (Some(c), _, true) => c.is_empty(),
        (Some(c), Kind::File, false) => {
            c.iter().map(|c| u64::from(c.len)).sum::<u64>() == wire.size && wire.target.is_none()
        }
        (Some(c), Kind::Dir, false) => c.is_empty() && wire.target.is_none(),
        (Some(c), Kind::Symlink, false) => c.is_empty() && wire.target.is_some(),
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
        chunks: listed.unwrap_or_default(),
        hash: wire.hash,
        target: wire.target,
        version: wire.version,
        modified_by: wire.modified_by,
        seq: wire.seq,
    };
    Ok(Received {
        path: wire.path,
        entry,
        splice,
    })
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

    const FORMATS: [Format; 2] = [Format::Listed, Format::Spliced];

    fn sign(path: &str, entry: &Entry, key: &SigningKey, f: Format) -> Option<SignedRecord> {
        sign_batch(&[(path.to_owned(), entry.clone())], key, f, |_| None)
    }

    /// Opens a record of one entry (whose chunks are listed).
    fn open(
        record: &SignedRecord,
        key: &VerifyingKey,
        f: Format,
    ) -> Result<(String, Entry), Rejected> {
        let mut entries = open_batch(record, key, f)?;
        match (entries.pop(), entries.is_empty()) {
            (Some(one), true) => Ok(one?.rebuilt(None).unwrap()),
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
        for f in FORMATS {
            a_signed_record_opens_with_the_namespace_key_only_in(f);
        }
    }

    fn a_signed_record_opens_with_the_namespace_key_only_in(f: Format) {
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let record = sign("a/b.txt", &entry(), &secret.signing_key(), f).unwrap();
        let (path, e) = open(&record, &secret.read_only().verifying_key(), f).unwrap();
        assert_eq!(path, "a/b.txt");
        assert_eq!(e.seq, 9);
        assert_eq!(
            e.local,
            LocalStat::default(),
            "local stat never crosses the wire"
        );

        let other = ReadWriteSecret::from_bytes([5; 20]);
        assert!(open(&record, &other.read_only().verifying_key(), f).is_err());
        // A record signed by another key (e.g. a node's own) is refused even if it claims to be valid.
        let forged = sign("a/b.txt", &entry(), &other.signing_key(), f).unwrap();
        assert!(open(&forged, &secret.read_only().verifying_key(), f).is_err());
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
        for f in FORMATS {
            let record = sign("../escape", &entry(), &secret.signing_key(), f).unwrap();
            assert!(matches!(
                open(&record, &secret.read_only().verifying_key(), f),
                Err(Rejected::Path(_))
            ));
        }
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let mut e = entry();
        e.size = 11;
        for f in FORMATS {
            let record = sign("a", &e, &secret.signing_key(), f).unwrap();
            assert!(matches!(
                open(&record, &secret.read_only().verifying_key(), f),
                Err(Rejected::Inconsistent(_))
            ));
        }
        // Spliced chunks for anything but a live file.
        let mut dir = entry();
        (dir.kind, dir.chunks, dir.size) = (Kind::Dir, Vec::new(), 0);
        let mut w = to_wire("d", &dir, Chunks::Listed(Vec::new()));
        w.chunks = Chunks::Spliced(Splice {
            base: Hash([0; 32]),
            at: 0,
            removed: 0,
            inserted: Vec::new(),
        });
        let record = SignedRecord::sign(
            postcard::to_allocvec(&vec![w]).unwrap(),
            &secret.signing_key(),
        );
        let opened = open_batch(
            &record,
            &secret.read_only().verifying_key(),
            Format::Spliced,
        );
        assert!(matches!(
            opened.unwrap().pop().unwrap(),
            Err(Rejected::Inconsistent(_))
        ));
    }

    fn chunk(n: u32) -> ChunkRef {
        let mut hash = [0; 32];
        hash[..4].copy_from_slice(&n.to_le_bytes());
        ChunkRef {
            len: 1000 + n,
            hash: Hash(hash),
        }
    }

    /// A file of these chunks, its size and hash consistent.
    fn file(chunks: Vec<ChunkRef>) -> Entry {
        let mut e = entry();
        e.size = chunks.iter().map(|c| u64::from(c.len)).sum();
        e.chunks = chunks;
        let listed: Vec<_> = e.chunks_with_offsets().collect();
        e.hash = shoal_core::chunk::file_hash(&listed);
        e
    }

    #[test]
    fn a_large_file_edited_is_sent_as_a_splice_of_the_receivers_version() {
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let (key, verifying) = (secret.signing_key(), secret.read_only().verifying_key());
        let old = file(
            (0..4000)
                .collect::<Vec<_>>()
                .into_iter()
                .map(chunk)
                .collect(),
        );
        // An edit in the middle: chunks 2000..2003 replaced by five new ones.
        let mut chunks = old.chunks.clone();
        chunks.splice(2000..2003, (9000..9005).map(chunk));
        let new = file(chunks);
        let batch = [("big".to_owned(), new.clone())];

        let listed = sign_batch(&batch, &key, Format::Listed, |_| Some(old.clone())).unwrap();
        let spliced = sign_batch(&batch, &key, Format::Spliced, |_| Some(old.clone())).unwrap();
        assert!(listed.payload.len() > 130_000, "{}", listed.payload.len());
        assert!(spliced.payload.len() < 1_000, "{}", spliced.payload.len());

        let received = open_batch(&spliced, &verifying, Format::Spliced)
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(received.base(), Some(&old.hash));
        assert_eq!(received.path(), "big");
        let (path, got) = received.rebuilt(Some(&old.chunks)).unwrap();
        assert_eq!(path, "big");
        assert_eq!(got.chunks, new.chunks);
        assert_eq!((got.size, got.hash), (new.size, new.hash));

        // Any other base does not rebuild it: the signed file hash tells.
        let open = || {
            open_batch(&spliced, &verifying, Format::Spliced)
                .unwrap()
                .pop()
                .unwrap()
                .unwrap()
        };
        assert!(open().rebuilt(None).is_none());
        assert!(open().rebuilt(Some(&new.chunks)).is_none());
        assert!(open().rebuilt(Some(&old.chunks[..2001])).is_none());
        let mut other = old.chunks.clone();
        other[10] = chunk(7777);
        assert!(open().rebuilt(Some(&other)).is_none());
    }

    #[test]
    fn a_version_the_receiver_holds_already_is_sent_as_an_empty_splice() {
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let same = file((0..100).map(chunk).collect());
        let batch = [("f".to_owned(), same.clone())];
        let record = sign_batch(&batch, &secret.signing_key(), Format::Spliced, |_| {
            Some(same.clone())
        })
        .unwrap();
        assert!(record.payload.len() < 200, "{}", record.payload.len());
        let got = open_batch(
            &record,
            &secret.read_only().verifying_key(),
            Format::Spliced,
        )
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
        .rebuilt(Some(&same.chunks))
        .unwrap();
        assert_eq!(got.1.chunks, same.chunks);
    }

    #[test]
    fn small_files_unrelated_versions_and_old_peers_get_the_whole_list() {
        let secret = ReadWriteSecret::from_bytes([4; 20]);
        let verifying = secret.read_only().verifying_key();
        let small = file((0..SPLICE_FROM as u32 - 1).map(chunk).collect());
        let unrelated = file((100..200).map(chunk).collect());
        let large = file((0..100).map(chunk).collect());
        let mut gone = large.clone();
        gone.deleted = true;
        for (entry, base, format) in [
            (&small, &small, Format::Spliced),
            (&large, &unrelated, Format::Spliced),
            (&large, &gone, Format::Spliced),
            (&large, &large, Format::Listed),
        ] {
            let batch = [("f".to_owned(), entry.clone())];
            let base = base.clone();
            let record = sign_batch(&batch, &secret.signing_key(), format, |_| {
                Some(base.clone())
            })
            .unwrap();
            let got = open_batch(&record, &verifying, format)
                .unwrap()
                .pop()
                .unwrap()
                .unwrap();
            assert_eq!(got.base(), None);
            assert_eq!(got.rebuilt(None).unwrap().1.chunks, entry.chunks);
        }
    }
}
