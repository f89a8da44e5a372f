//! One indexed path: what it is, what is in it, which version it is, and when this node saw it change.

use serde::{Deserialize, Serialize};
use shoal_core::chunk::{Chunk, Hash};
use shoal_core::version::{DeviceId, VersionVector};

/// What a path is. A deleted path keeps the kind it had, so a tombstone of a directory and one of a
/// file can be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// The local stat fields used only to notice changes cheaply; they mean nothing on another node and
/// never cross the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStat {
    pub inode: u64,
    pub ctime_ns: i64,
}

/// A chunk as the index keeps it: its offset is implied by the lengths before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub len: u32,
    pub hash: Hash,
}

/// The record of one path in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// A tombstone: the path was deleted at `version`.
    pub deleted: bool,
    /// Bytes; 0 for directories, the target's length for symlinks.
    pub size: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub local: LocalStat,
    /// Files: the content, chunk by chunk. Empty for everything else and for empty files.
    pub chunks: Vec<ChunkRef>,
    /// Files: [`shoal_core::chunk::file_hash`] of the chunks. Symlinks: the hash of the target.
    pub hash: Hash,
    /// Symlinks: where the link points, as written (never followed).
    pub target: Option<String>,
    pub version: VersionVector,
    /// Who made the change recorded here.
    pub modified_by: DeviceId,
    /// This node's sequence number for the change; assigned by the index on write.
    pub seq: u64,
}

impl Entry {
    /// The chunks with their offsets in the file.
    pub fn chunks_with_offsets(&self) -> impl Iterator<Item = Chunk> + '_ {
        self.chunks.iter().scan(0u64, |offset, c| {
            let chunk = Chunk {
                offset: *offset,
                len: c.len,
                hash: c.hash,
            };
            *offset += u64::from(c.len);
            Some(chunk)
        })
    }

    /// True when `other` describes the same content and metadata as far as peers are concerned
    /// (everything but the local stat, the version and the sequence number).
    pub fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.deleted == other.deleted
            && self.size == other.size
            && self.mode == other.mode
            && self.mtime_ns == other.mtime_ns
            && self.hash == other.hash
            && self.target == other.target
    }

    pub fn is_live(&self) -> bool {
        !self.deleted
    }
}

/// What the scanner needs to decide whether a path changed, without decoding chunk lists twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub kind: Kind,
    pub deleted: bool,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    pub local: LocalStat,
}

impl Stamp {
    /// True when `m` (the metadata of an open file) shows the file this stamp was taken of,
    /// unchanged since: same inode, size, mtime and ctime. (A write after the stamp was taken
    /// gives the file a new ctime; the scanner trusts the same test.)
    pub fn still_describes(&self, m: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        !self.deleted
            && self.kind == Kind::File
            && m.file_type().is_file()
            && m.size() == self.size
            && ns(m.mtime(), m.mtime_nsec()) == self.mtime_ns
            && m.ino() == self.local.inode
            && ns(m.ctime(), m.ctime_nsec()) == self.local.ctime_ns
    }
}

impl From<&Entry> for Stamp {
    fn from(e: &Entry) -> Stamp {
        Stamp {
            kind: e.kind,
            deleted: e.deleted,
            size: e.size,
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            local: e.local,
        }
    }
}
