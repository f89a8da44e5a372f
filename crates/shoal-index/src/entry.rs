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

/// A path's stat as shoal records it (from `lstat`, or `fstat` of an open file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskStat {
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    /// Directories: 0 (a directory's mtime changes with its content; it is not synced).
    pub mtime_ns: i64,
    pub local: LocalStat,
}

impl DiskStat {
    /// `None` for what shoal does not sync: sockets, FIFOs, devices.
    pub fn from_metadata(m: &std::fs::Metadata) -> Option<DiskStat> {
        use std::os::unix::fs::MetadataExt;
        let ft = m.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            return None;
        };
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Some(DiskStat {
            kind,
            size: if kind == Kind::Dir { 0 } else { m.size() },
            mode: m.mode() & 0o7777,
            mtime_ns: if kind == Kind::Dir {
                0
            } else {
                ns(m.mtime(), m.mtime_nsec())
            },
            local: LocalStat {
                inode: m.ino(),
                ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            },
        })
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
    /// True when `d` shows what this stamp was taken of, with its content unchanged since: a live
    /// path of the same kind and, unless a directory, the same inode, size, mtime and ctime (a
    /// write after the stamp was taken gives the file a new ctime, which no one can set).
    pub fn same_content(&self, d: &DiskStat) -> bool {
        !self.deleted
            && d.kind == self.kind
            && (d.kind == Kind::Dir
                || (d.size == self.size && d.mtime_ns == self.mtime_ns && d.local == self.local))
    }

    /// [`Stamp::same_content`] and the same permission bits: nothing to record (the scanner's test).
    pub fn unchanged(&self, d: &DiskStat) -> bool {
        self.same_content(d) && d.mode == self.mode
    }

    /// True when `m` (the metadata of an open file) shows the file this stamp was taken of, its
    /// content unchanged since: the test for trusting the index's chunk hashes of it unread.
    pub fn still_describes(&self, m: &std::fs::Metadata) -> bool {
        self.kind == Kind::File && DiskStat::from_metadata(m).is_some_and(|d| self.same_content(&d))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn stamp_of(d: DiskStat) -> Stamp {
        Stamp {
            kind: d.kind,
            deleted: false,
            size: d.size,
            mode: d.mode,
            mtime_ns: d.mtime_ns,
            local: d.local,
        }
    }

    fn stat(p: &std::path::Path) -> DiskStat {
        DiskStat::from_metadata(&std::fs::symlink_metadata(p).unwrap()).unwrap()
    }

    #[test]
    fn one_rule_says_what_is_unchanged_for_the_scanner_and_for_trusted_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let stamp = stamp_of(stat(&p));
        let open = || std::fs::File::open(&p).unwrap().metadata().unwrap();
        assert!(stamp.unchanged(&stat(&p)) && stamp.still_describes(&open()));

        // Permission bits: something to record, but the content can still be trusted.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let chmodded = stat(&p);
        assert!(!stamp.unchanged(&chmodded));
        // (chmod gives a new ctime, so the stamp no longer describes the content either.)
        assert!(!stamp.same_content(&chmodded));
        let stamp = stamp_of(chmodded);
        assert!(stamp.unchanged(&stat(&p)) && stamp.still_describes(&open()));

        // Rewritten: neither.
        std::fs::write(&p, b"two").unwrap();
        assert!(!stamp.unchanged(&stat(&p)) && !stamp.still_describes(&open()));

        // A tombstone describes nothing; a directory is unchanged whatever its times.
        let mut gone = stamp_of(stat(&p));
        gone.deleted = true;
        assert!(!gone.same_content(&stat(&p)));
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let dir_stamp = stamp_of(stat(&d));
        std::fs::write(d.join("inside"), b"x").unwrap();
        assert!(dir_stamp.unchanged(&stat(&d)));
        // Only files are read through a stamp.
        assert!(!dir_stamp.still_describes(&std::fs::metadata(&d).unwrap()));
    }
}
