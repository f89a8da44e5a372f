//! Chunks this node holds only in the temporaries of files it is still assembling: verified on
//! arrival and written, but not in the index until the file is complete. Peers pulling the same
//! file are told of them (`Have`) and may ask for them, so that a file going to many nodes at once
//! is passed on among them rather than sent whole by its source to each. The chunks of a large
//! file this node is still indexing are kept here too, while it previews them to peers
//! (`Preview`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use shoal_core::chunk::Hash;

use crate::entry::DiskStat;

/// Chunks kept track of at most (about 16 GiB of files on their way at 256 KiB a chunk): past
/// it, new ones are simply not offered to peers. ~100 bytes each.
pub const ASSEMBLING_MAX: usize = 65_536;

/// Where a chunk is in a temporary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub temp: Arc<Path>,
    pub offset: u64,
    pub len: u32,
    /// `Some`: it is in a live file being indexed (a preview), which may change under the reader,
    /// not in a temporary only this node writes; the file's stat when the indexer found it. It is
    /// served as read while the file still shows that stat before and after the read (as a
    /// chunk of an indexed file is: hashing each again cost ~0.35 CPU-s per GiB served, taken
    /// from the indexer it runs beside), hashed again otherwise.
    pub live: Option<DiskStat>,
}

#[derive(Debug, Default)]
pub(crate) struct Assembling {
    chunks: HashMap<Hash, Piece>,
    by_temp: HashMap<Arc<Path>, Vec<Hash>>,
}

impl Assembling {
    /// Records that `temp` holds chunk `hash` at `offset`; false if it was not recorded (full).
    pub fn add(&mut self, hash: Hash, piece: Piece) -> bool {
        if self.chunks.contains_key(&hash) {
            return true;
        }
        if self.chunks.len() >= ASSEMBLING_MAX {
            return false;
        }
        self.by_temp
            .entry(piece.temp.clone())
            .or_default()
            .push(hash);
        self.chunks.insert(hash, piece);
        true
    }

    pub fn get(&self, hash: &Hash) -> Option<Piece> {
        self.chunks.get(hash).cloned()
    }

    /// Forgets every chunk of `temp` (renamed into place, or removed).
    pub fn forget(&mut self, temp: &Path) {
        let Some(hashes) = self.by_temp.remove(temp) else {
            return;
        };
        for h in hashes {
            if self.chunks.get(&h).is_some_and(|p| &*p.temp == temp) {
                self.chunks.remove(&h);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    fn piece(temp: &str, offset: u64) -> Piece {
        Piece {
            temp: Path::new(temp).into(),
            offset,
            len: 10,
            live: None,
        }
    }

    #[test]
    fn chunks_are_forgotten_with_their_temporary_and_bounded() {
        let mut a = Assembling::default();
        assert!(a.add(Hash([1; 32]), piece("/t/a", 0)));
        assert!(a.add(Hash([2; 32]), piece("/t/a", 10)));
        // The same chunk in a second temporary: the first place is kept.
        assert!(a.add(Hash([1; 32]), piece("/t/b", 0)));
        assert!(a.add(Hash([3; 32]), piece("/t/b", 10)));
        assert_eq!(a.get(&Hash([1; 32])), Some(piece("/t/a", 0)));
        a.forget(Path::new("/t/b"));
        assert_eq!(a.get(&Hash([1; 32])), Some(piece("/t/a", 0)));
        assert_eq!(a.get(&Hash([3; 32])), None);
        a.forget(Path::new("/t/a"));
        assert_eq!(a.len(), 0);
        for i in 0..ASSEMBLING_MAX {
            let mut h = [0; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            assert!(a.add(Hash(h), piece("/t/c", i as u64)));
        }
        assert!(!a.add(Hash([9; 32]), piece("/t/c", 1)));
        a.forget(Path::new("/t/c"));
        assert!(a.add(Hash([9; 32]), piece("/t/c", 1)));
    }
}
