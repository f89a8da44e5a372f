//! The index database: one redb file per namespace in the node's state directory.
//!
//! Tables (schema [`SCHEMA`]):
//! - `meta`: `schema` (u32 LE), `share` (the share ID it belongs to), `max_seq` (u64 LE), `counts`.
//! - `files`: path → [`Entry`] (a format byte, then postcard).
//! - `by_seq`: sequence number → path; exactly one row per row of `files`, so "changes since N" is
//!   a range read.
//! - `by_chunk`: the first 8 bytes of a chunk hash → paths holding it (multimap), for "where else do
//!   I have this chunk"; the full hash is checked against the entry on lookup.
//! - `remote`: (peer node ID ‖ path) → that peer's entry, as last announced (verified records only).
//! - `remote_seq`: peer node ID → the highest of its sequence numbers received.
//!
//! Every write goes through a [`Batch`] committed in one redb transaction (fsync'd), so a kill at any
//! moment leaves the last committed state, which a rescan then brings up to date.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use redb::{
    Database, MultimapTableDefinition, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use shoal_core::chunk::{Chunk, Hash};
use shoal_core::secret::ShareId;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::assembling::{Assembling, Piece};
use crate::entry::{DiskStat, Entry, Kind, LocalStat, Stamp};
use crate::error::IndexError;

/// The schema this code writes. Older schemas are migrated forward on open (see [`migrate`]); a
/// newer one is refused rather than misread.
pub const SCHEMA: u32 = 1;

/// The first byte of every encoded entry, so that an entry format change can be read side by side.
const ENTRY_FORMAT: u8 = 1;

/// redb's page cache. The index is read mostly in ordered ranges, so a small cache costs little and
/// keeps a node with 100,000 files within its memory budget. 8 MiB filled up with 10,000 files:
/// the receiving node's RSS was 25–30 MiB against the 30 MiB budget; with 4 MiB 21–24 MiB, the
/// 10,000 files as fast (`bench/sync.py rss`, 3 pairs, BENCHMARKS "Stop 21").
const CACHE_BYTES: usize = 4 << 20;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("by_seq");
const BY_CHUNK: MultimapTableDefinition<u64, &str> = MultimapTableDefinition::new("by_chunk");
const REMOTE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("remote");
const REMOTE_SEQ: TableDefinition<&[u8], u64> = TableDefinition::new("remote_seq");

/// A peer, by its 32-byte node ID.
pub type PeerKey = [u8; 32];

/// What the index holds, kept up to date by every commit (shown by `ctl status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub deleted: u64,
    /// Bytes in live files.
    pub bytes: u64,
}

impl Counts {
    fn apply(&mut self, e: &Entry, sign: i64) {
        let add = |v: &mut u64, n: u64| {
            *v = if sign > 0 {
                v.saturating_add(n)
            } else {
                v.saturating_sub(n)
            }
        };
        if e.deleted {
            add(&mut self.deleted, 1);
            return;
        }
        match e.kind {
            Kind::File => {
                add(&mut self.files, 1);
                add(&mut self.bytes, e.size);
            }
            Kind::Dir => add(&mut self.dirs, 1),
            Kind::Symlink => add(&mut self.symlinks, 1),
        }
    }
}

/// Where a chunk can be read locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub path: String,
    pub offset: u64,
    pub len: u32,
    /// The file as it was stat'ed when indexed with the chunk at `offset`: while the disk still
    /// shows this stamp, the chunk is there.
    pub stamp: Stamp,
}

/// A file's chunks sorted by hash (hash, offset, length), and the stamp they were indexed with.
type SortedChunks = Arc<(Stamp, Vec<(Hash, u64, u32)>)>;

/// The index of one namespace.
#[derive(Debug)]
pub struct Index {
    /// `None` between closing it after a failed write and opening it again (see
    /// [`Index::database`]).
    db: RwLock<Option<Arc<Database>>>,
    /// A write failed for the storage (a full disk, say): redb refuses everything after that
    /// until the database is opened again.
    broken: AtomicBool,
    path: PathBuf,
    seq: watch::Sender<u64>,
    /// Counts commits (of peers' entries or of ours) that may change what this node needs, to
    /// wake whoever computes it.
    needs: watch::Sender<u64>,
    /// Bumped after every commit of local entries: what [`ChunkCache`] was filled under.
    generation: AtomicU64,
    chunk_cache: Mutex<ChunkCache>,
    /// Chunks in the temporaries of files being assembled (see [`crate::assembling`]).
    assembling: Mutex<Assembling>,
    /// This node's previews of large files being indexed, and its peers'.
    previews: broadcast::Sender<Arc<Preview>>,
    peer_previews: broadcast::Sender<Arc<Preview>>,
}

/// Previews queued per subscriber before the oldest are dropped (each up to 256 chunks).
const PREVIEWS_QUEUED: usize = 1024;

/// Chunks of a new file found so far while it is still being indexed (`Preview` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// The peer that sent it; `None` for this node's own.
    pub from: Option<PeerKey>,
    pub path: String,
    pub size: u64,
    pub chunks: Vec<Chunk>,
}

/// Entries with this many chunks or more (16 MiB and up) are kept decoded by [`ChunkCache`].
const CACHE_MIN_CHUNKS: usize = 64;
/// Large files whose chunk lists are kept decoded.
const CACHE_FILES: usize = 4;

/// The chunk lists of the large files whose chunks were looked up last. Serving or copying the
/// chunks of one 1 GiB file decoded its entry (4,000 chunks, ~150 kB) once per chunk: 4,000 times.
#[derive(Debug, Default)]
struct ChunkCache {
    generation: u64,
    /// Most recently used last; each list sorted by hash.
    files: Vec<(String, SortedChunks)>,
}

impl ChunkCache {
    fn get(&mut self, generation: u64, path: &str) -> Option<SortedChunks> {
        if self.generation != generation {
            self.files.clear();
            self.generation = generation;
            return None;
        }
        let at = self.files.iter().position(|(p, _)| p == path)?;
        let hit = self.files.remove(at);
        let chunks = hit.1.clone();
        self.files.push(hit);
        Some(chunks)
    }

    fn put(&mut self, generation: u64, path: &str, chunks: SortedChunks) {
        if self.generation != generation {
            return;
        }
        if self.files.len() >= CACHE_FILES {
            self.files.remove(0);
        }
        self.files.push((path.to_owned(), chunks));
    }
}

impl Index {
    /// Opens (or creates) the index at `path` for the namespace shared as `share`.
    ///
    /// An index that belongs to another share (the namespace was deleted and re-added with another
    /// secret) describes nothing that is true any more: it is removed and a new one begins; the
    /// rescan that follows rebuilds it from the disk.
    pub fn open(path: &Path, share: &ShareId) -> Result<Index, IndexError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| IndexError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        if !path.exists() {
            Self::create(path, share)?;
        }
        let db = open_db(path)?;
        match read_share(&db)? {
            Some(existing) if existing != share.0 => {
                warn!(
                    index = %path.display(),
                    "the index belongs to another secret; starting a new one"
                );
                drop(db);
                std::fs::remove_file(path).map_err(|source| IndexError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                Self::create(path, share)?;
                Self::init(open_db(path)?, path, share)
            }
            _ => Self::init(db, path, share),
        }
    }

    /// Creates a new index beside `path` and renames it into place once initialised: a daemon
    /// killed while creating it leaves no half-made file that would refuse to open on restart.
    fn create(path: &Path, share: &ShareId) -> Result<(), IndexError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| IndexError::Io { path: p, source }
        };
        let name = path
            .file_name()
            .map_or_else(|| "index".into(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.new"));
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        drop(Self::init(open_db(&tmp)?, &tmp, share)?);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io(parent))?;
        }
        Ok(())
    }

    fn init(db: Database, path: &Path, share: &ShareId) -> Result<Index, IndexError> {
        let txn = db.begin_write()?;
        let max_seq;
        {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get("schema")?.map(|v| u32_from(v.value()));
            let schema = match stored {
                Some(v) => v.ok_or(IndexError::Corrupt("schema"))?,
                None => {
                    meta.insert("schema", SCHEMA.to_le_bytes().as_slice())?;
                    meta.insert("share", share.0.as_slice())?;
                    SCHEMA
                }
            };
            if schema > SCHEMA {
                return Err(IndexError::Newer {
                    path: path.to_owned(),
                    found: schema,
                });
            }
            let stored = meta.get("max_seq")?.map(|v| u64_from(v.value()));
            max_seq = match stored {
                Some(v) => v.ok_or(IndexError::Corrupt("max_seq"))?,
                None => 0,
            };
            drop(meta);
            txn.open_table(FILES)?;
            txn.open_table(BY_SEQ)?;
            txn.open_multimap_table(BY_CHUNK)?;
            txn.open_table(REMOTE)?;
            txn.open_table(REMOTE_SEQ)?;
            if schema < SCHEMA {
                migrate(&txn, schema)?;
            }
        }
        txn.commit()?;
        let (seq, _) = watch::channel(max_seq);
        let (needs, _) = watch::channel(0);
        Ok(Index {
            db: RwLock::new(Some(Arc::new(db))),
            broken: AtomicBool::new(false),
            path: path.to_owned(),
            seq,
            needs,
            generation: AtomicU64::new(0),
            chunk_cache: Mutex::default(),
            previews: broadcast::channel(PREVIEWS_QUEUED).0,
            peer_previews: broadcast::channel(PREVIEWS_QUEUED).0,
            assembling: Mutex::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, closed and opened again after a write failed for the storage. Once a write
    /// fails (the disk full, say), redb refuses every later transaction ("Previous I/O error
    /// occurred. Please close and re-open the database"): without this a namespace stayed broken
    /// after the room came back, until the daemon was restarted. redb repairs the file on
    /// opening. While transactions of the old database still hold its file, opening fails and
    /// the next call tries again.
    fn database(&self) -> Result<Arc<Database>, IndexError> {
        if !self.broken.load(Ordering::Acquire)
            && let Some(db) = &*self.db.read().unwrap_or_else(PoisonError::into_inner)
        {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if self.broken.swap(false, Ordering::AcqRel) && slot.take().is_some() {
            warn!(index = %self.path.display(), "a write to the index failed: opening it again");
        }
        if let Some(db) = &*slot {
            return Ok(db.clone());
        }
        let db = Arc::new(open_db(&self.path)?);
        info!(index = %self.path.display(), "index opened again");
        *slot = Some(db.clone());
        Ok(db)
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, IndexError> {
        Ok(self.database()?.begin_read()?)
    }

    fn write_txn(&self) -> Result<redb::WriteTransaction, IndexError> {
        Ok(self.database()?.begin_write()?)
    }

    /// The result of a write, noting a failure of the storage (see [`Index::database`]).
    fn wrote<T>(&self, result: Result<T, IndexError>) -> Result<T, IndexError> {
        if let Err(e) = &result
            && e.is_storage_failure()
        {
            self.broken.store(true, Ordering::Release);
        }
        result
    }

    /// The highest sequence number given out: every change this node recorded has one ≤ this.
    pub fn max_seq(&self) -> u64 {
        *self.seq.borrow()
    }

    /// Follows [`Index::max_seq`]: woken after every commit that recorded a change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }

    /// Woken after a commit that may change what this node needs: of peers' entries
    /// ([`Index::put_remote`]) or of this node's ([`Batch::commit`]). Not when, for every path
    /// committed, each peer's entry (and for peers' entries, the one replaced; for ours, our
    /// previous one) is one this node's version has seen: the resolver supersedes such entries
    /// and merging them adds nothing, so the plan cannot change. Planning anew for each commit
    /// made the node a file came from re-plan its whole namespace once per batch its scanner
    /// committed and per batch a receiver announced back (every pulled file is) — O(files ×
    /// batches); 10,000 files: ~0.2 CPU-s of the sender's, during the transfer.
    pub fn subscribe_needs(&self) -> watch::Receiver<u64> {
        self.needs.subscribe()
    }

    /// Wakes whoever computes what this node needs ([`Index::subscribe_needs`]): something the
    /// index does not hold changed it (the ignore list).
    pub fn needs_changed(&self) {
        self.needs.send_modify(|n| *n += 1);
    }

    pub fn get(&self, path: &str) -> Result<Option<Entry>, IndexError> {
        let txn = self.read_txn()?;
        let files = txn.open_table(FILES)?;
        let found = files.get(path)?;
        found.map(|v| decode(v.value())).transpose()
    }

    pub fn counts(&self) -> Result<Counts, IndexError> {
        let txn = self.read_txn()?;
        let meta = txn.open_table(META)?;
        read_counts(&meta)
    }

    /// Entries changed after sequence `after`, oldest first, at most `limit` of them.
    pub fn changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, IndexError> {
        let txn = self.read_txn()?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let files = txn.open_table(FILES)?;
        let mut out = Vec::new();
        for row in by_seq.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (_, path) = row?;
            let path = path.value().to_owned();
            let entry = files
                .get(path.as_str())?
                .ok_or(IndexError::Corrupt("by_seq"))?;
            let entry = decode(entry.value())?;
            out.push((path, entry));
        }
        Ok(out)
    }

    /// The stamps of `prefix` and everything under it (`""`: the whole namespace), in path order.
    pub fn stamps_under(&self, prefix: &str) -> Result<Vec<(String, Stamp)>, IndexError> {
        let mut out = Vec::new();
        self.for_each_under(prefix, |path, entry| {
            out.push((path.to_owned(), Stamp::from(&entry)));
        })?;
        Ok(out)
    }

    /// Calls `f` for `prefix` and every entry under it, in path order.
    pub fn for_each_under(
        &self,
        prefix: &str,
        mut f: impl FnMut(&str, Entry),
    ) -> Result<(), IndexError> {
        let txn = self.read_txn()?;
        let files = txn.open_table(FILES)?;
        if prefix.is_empty() {
            for row in files.iter()? {
                let (k, v) = row?;
                f(k.value(), decode(v.value())?);
            }
            return Ok(());
        }
        if let Some(v) = files.get(prefix)? {
            f(prefix, decode(v.value())?);
        }
        // Everything under "a" sorts in ["a/", "a0"): '0' is the byte after '/'.
        let lo = format!("{prefix}/");
        let hi = format!("{prefix}0");
        for row in files.range::<&str>(lo.as_str()..hi.as_str())? {
            let (k, v) = row?;
            f(k.value(), decode(v.value())?);
        }
        Ok(())
    }

    /// Whether this node holds a chunk with this hash in a live file (as far as the index knows:
    /// the file may have changed since; an index error counts as not).
    pub fn holds(&self, hash: &Hash) -> bool {
        self.chunk_locations(hash).is_ok_and(|l| !l.is_empty())
    }

    /// Where this node holds a chunk with this hash, in live files.
    pub fn chunk_locations(&self, hash: &Hash) -> Result<Vec<ChunkLocation>, IndexError> {
        // Read before the transaction begins: a commit after this makes anything cached below
        // stale, and the cache then drops it.
        let generation = self.generation.load(Ordering::Acquire);
        let txn = self.read_txn()?;
        let by_chunk = txn.open_multimap_table(BY_CHUNK)?;
        let files = txn.open_table(FILES)?;
        let mut out = Vec::new();
        for path in by_chunk.get(chunk_key(hash))? {
            let path = path?;
            let path = path.value();
            let cached = lock(&self.chunk_cache).get(generation, path);
            let chunks = match cached {
                Some(chunks) => chunks,
                None => {
                    let Some(entry) = files.get(path)? else {
                        continue;
                    };
                    let entry = decode(entry.value())?;
                    if entry.deleted {
                        continue;
                    }
                    let mut chunks: Vec<(Hash, u64, u32)> = entry
                        .chunks_with_offsets()
                        .map(|c| (c.hash, c.offset, c.len))
                        .collect();
                    chunks.sort_unstable_by_key(|c| c.0);
                    let chunks = Arc::new((Stamp::from(&entry), chunks));
                    if chunks.1.len() >= CACHE_MIN_CHUNKS {
                        lock(&self.chunk_cache).put(generation, path, chunks.clone());
                    }
                    chunks
                }
            };
            let (stamp, sorted) = &*chunks;
            let from = sorted.partition_point(|c| c.0 < *hash);
            for &(_, offset, len) in sorted[from..].iter().take_while(|c| c.0 == *hash) {
                out.push(ChunkLocation {
                    path: path.to_owned(),
                    offset,
                    len,
                    stamp: *stamp,
                });
            }
        }
        Ok(out)
    }

    /// Records entries announced by `peer` (already verified), and the highest of its sequence
    /// numbers they carry. An entry replaces the peer's previous one for the same path.
    pub fn put_remote(
        &self,
        peer: &PeerKey,
        entries: &[(String, Entry)],
    ) -> Result<(), IndexError> {
        self.wrote(self.store_remote(peer, entries))
    }

    fn store_remote(&self, peer: &PeerKey, entries: &[(String, Entry)]) -> Result<(), IndexError> {
        let txn = self.write_txn()?;
        let mut news = false;
        {
            let files = txn.open_table(FILES)?;
            let mut remote = txn.open_table(REMOTE)?;
            let mut seqs = txn.open_table(REMOTE_SEQ)?;
            let mut max = seqs.get(peer.as_slice())?.map_or(0, |v| v.value());
            let mut key = Vec::with_capacity(64);
            for (path, entry) in entries {
                key.clear();
                key.extend_from_slice(peer);
                key.extend_from_slice(path.as_bytes());
                let old = remote.insert(key.as_slice(), encode(entry)?.as_slice())?;
                if !news {
                    let old = old.map(|v| decode(v.value())).transpose()?;
                    let local = files.get(path.as_str())?;
                    let local = local.map(|v| decode(v.value())).transpose()?;
                    news = unseen(local.as_ref(), entry)
                        || old.is_some_and(|o| unseen(local.as_ref(), &o));
                }
                max = max.max(entry.seq);
            }
            seqs.insert(peer.as_slice(), max)?;
        }
        txn.commit()?;
        if news {
            self.needs.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// The highest sequence number received from `peer` (0: nothing yet).
    pub fn remote_seq(&self, peer: &PeerKey) -> Result<u64, IndexError> {
        let txn = self.read_txn()?;
        let seqs = txn.open_table(REMOTE_SEQ)?;
        Ok(seqs.get(peer.as_slice())?.map_or(0, |v| v.value()))
    }

    /// `peer`'s entry for `path`, as it last announced it.
    pub fn remote_get(&self, peer: &PeerKey, path: &str) -> Result<Option<Entry>, IndexError> {
        let txn = self.read_txn()?;
        let remote = txn.open_table(REMOTE)?;
        let mut key = peer.to_vec();
        key.extend_from_slice(path.as_bytes());
        let found = remote.get(key.as_slice())?;
        found.map(|v| decode(v.value())).transpose()
    }

    /// Every entry `peer` announced, in path order.
    pub fn remote_entries(&self, peer: &PeerKey) -> Result<Vec<(String, Entry)>, IndexError> {
        let txn = self.read_txn()?;
        let remote = txn.open_table(REMOTE)?;
        let mut out = Vec::new();
        let lo = peer.to_vec();
        let mut hi = peer.to_vec();
        hi.push(0xff);
        for row in remote.range::<&[u8]>(lo.as_slice()..hi.as_slice())? {
            let (k, v) = row?;
            let path = String::from_utf8(k.value()[32..].to_vec())
                .map_err(|_| IndexError::Corrupt("remote path"))?;
            out.push((path, decode(v.value())?));
        }
        Ok(out)
    }

    /// Reads chunk `hash` from wherever under `root` this index says it is: a file may have
    /// changed since it was indexed, and nobody must be handed bytes that are not the chunk, so
    /// the bytes are hashed unless the file's stat is still the indexed one (see below).
    /// Never follows a symlink. `None` when no location still holds it.
    pub fn read_chunk(&self, root: &Path, hash: &Hash) -> Option<Vec<u8>> {
        self.read_chunk_after(root, hash, Vec::with_capacity)
    }

    /// [`Index::read_chunk`] into the end of the buffer `head(len)` returns for a chunk of
    /// `len` bytes (a frame's start, so that the chunk is read straight into it).
    pub fn read_chunk_after(
        &self,
        root: &Path,
        hash: &Hash,
        head: impl Fn(usize) -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        for loc in self.chunk_locations(hash).ok()? {
            let Some(mut file) = open_nofollow(&root.join(&loc.path)) else {
                continue;
            };
            // A file unchanged since it was indexed holds the chunk the index says (the
            // receiver verifies it anyway): hashing it again here was a fifth of a sender's CPU.
            let mut buf = head(loc.len as usize);
            if read_as_chunk(&mut file, loc.offset, loc.len, hash, &mut buf, |m| {
                loc.stamp.still_describes(m)
            }) {
                return Some(buf);
            }
        }
        self.read_assembling(hash, head)
    }

    /// A chunk from the temporary of a file being assembled, as written there (it was verified
    /// on arrival; the asker verifies it again), or from a live file being indexed (a preview:
    /// stat-trusted, see [`Piece::live`]).
    fn read_assembling(&self, hash: &Hash, head: impl Fn(usize) -> Vec<u8>) -> Option<Vec<u8>> {
        let piece = lock(&self.assembling).get(hash)?;
        let mut file = open_nofollow(&piece.temp)?;
        let mut buf = head(piece.len as usize);
        let read = match piece.live {
            None => read_after(&mut file, piece.offset, piece.len, &mut buf),
            Some(live) => read_as_chunk(&mut file, piece.offset, piece.len, hash, &mut buf, |m| {
                DiskStat::from_metadata(m) == Some(live)
            }),
        };
        read.then_some(buf)
    }

    /// Records that the temporary `temp` of a file being assembled holds chunk `hash` at
    /// `offset`, so that peers can be given it before the file is complete. False if not
    /// recorded (more than [`crate::ASSEMBLING_MAX`] chunks are): then it is not to be offered.
    pub fn assembling(&self, temp: &Arc<Path>, hash: Hash, offset: u64, len: u32) -> bool {
        lock(&self.assembling).add(
            hash,
            Piece {
                temp: temp.clone(),
                offset,
                len,
                live: None,
            },
        )
    }

    /// This node is indexing the new file `path` (at `abs`, whose stat was `stat` when the
    /// indexer found it) and has found `chunks` of it so far: they are served from the file
    /// (hashed again unless it still shows `stat`, as it may change) until
    /// [`Index::assembled`]`(abs)`, and told to whoever [`Index::subscribe_previews`] (the peer
    /// layer, which tells the peers: `Preview`). Nothing at all while nobody subscribes (a
    /// read-only holder's peer layer does not: its files never become records).
    pub fn preview(&self, abs: &Arc<Path>, path: &str, stat: DiskStat, chunks: &[Chunk]) {
        if self.previews.receiver_count() == 0 {
            return;
        }
        {
            let mut assembling = lock(&self.assembling);
            for c in chunks {
                assembling.add(
                    c.hash,
                    Piece {
                        temp: abs.clone(),
                        offset: c.offset,
                        len: c.len,
                        live: Some(stat),
                    },
                );
            }
        }
        let _ = self.previews.send(Arc::new(Preview {
            from: None,
            path: path.to_owned(),
            size: stat.size,
            chunks: chunks.to_vec(),
        }));
    }

    /// Peer `from` previewed chunks of a new file (see [`Index::preview`]): told to whoever
    /// [`Index::subscribe_peer_previews`] (the puller, which may fetch them ahead of the record).
    pub fn previewed(&self, from: PeerKey, path: String, size: u64, chunks: Vec<Chunk>) {
        let _ = self.peer_previews.send(Arc::new(Preview {
            from: Some(from),
            path,
            size,
            chunks,
        }));
    }

    /// This node's previews, as [`Index::preview`] makes them. A receiver that lags loses the
    /// oldest (a preview is only a head start).
    pub fn subscribe_previews(&self) -> broadcast::Receiver<Arc<Preview>> {
        self.previews.subscribe()
    }

    /// Peers' previews, as [`Index::previewed`] hands them on.
    pub fn subscribe_peer_previews(&self) -> broadcast::Receiver<Arc<Preview>> {
        self.peer_previews.subscribe()
    }

    /// Forgets the chunks recorded in `temp` (it was renamed into place, or removed).
    pub fn assembled(&self, temp: &Path) {
        lock(&self.assembling).forget(temp);
    }

    /// The peers this index holds entries of.
    pub fn remote_peers(&self) -> Result<Vec<PeerKey>, IndexError> {
        let txn = self.read_txn()?;
        let seqs = txn.open_table(REMOTE_SEQ)?;
        let mut out = Vec::new();
        for row in seqs.iter()? {
            let (k, _) = row?;
            if let Ok(key) = <PeerKey>::try_from(k.value()) {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Starts a set of changes committed together.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            index: self,
            ops: Vec::new(),
        }
    }

    /// Checks that the tables agree with each other; returns what is wrong (empty: consistent).
    pub fn check(&self) -> Result<Vec<String>, IndexError> {
        let txn = self.read_txn()?;
        let files = txn.open_table(FILES)?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let by_chunk = txn.open_multimap_table(BY_CHUNK)?;
        let meta = txn.open_table(META)?;
        let mut problems = Vec::new();
        let mut counts = Counts::default();
        let mut max = 0;
        for row in files.iter()? {
            let (k, v) = row?;
            let path = k.value();
            let entry = match decode(v.value()) {
                Ok(e) => e,
                Err(e) => {
                    problems.push(format!("{path}: {e}"));
                    continue;
                }
            };
            counts.apply(&entry, 1);
            max = max.max(entry.seq);
            match by_seq.get(entry.seq)? {
                Some(p) if p.value() == path => {}
                other => problems.push(format!(
                    "{path}: seq {} maps to {:?}",
                    entry.seq,
                    other.map(|p| p.value().to_owned())
                )),
            }
            if !entry.deleted {
                for c in &entry.chunks {
                    let holders: Result<HashSet<String>, _> = by_chunk
                        .get(chunk_key(&c.hash))?
                        .map(|p| p.map(|p| p.value().to_owned()))
                        .collect();
                    if !holders?.contains(path) {
                        problems.push(format!("{path}: chunk {} not in by_chunk", c.hash));
                    }
                }
            }
        }
        if by_seq.len()? != files.len()? {
            problems.push(format!(
                "by_seq has {} rows, files {}",
                by_seq.len()?,
                files.len()?
            ));
        }
        let stored_max = match meta.get("max_seq")? {
            Some(v) => u64_from(v.value()).unwrap_or(0),
            None => 0,
        };
        if stored_max < max {
            problems.push(format!("max_seq {stored_max} < highest entry seq {max}"));
        }
        let stored = read_counts(&meta)?;
        if stored != counts {
            problems.push(format!("counts {stored:?} != actual {counts:?}"));
        }
        Ok(problems)
    }
}

enum Op {
    Put(String, Entry),
    Stat(String, LocalStat),
}

/// Changes to the index, written in one transaction by [`Batch::commit`].
#[derive(Debug)]
pub struct Batch<'a> {
    index: &'a Index,
    ops: Vec<Op>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put(p, _) => write!(f, "Put({p})"),
            Op::Stat(p, _) => write!(f, "Stat({p})"),
        }
    }
}

impl Batch<'_> {
    /// Records a change to `path`: the entry gets the next sequence number on commit.
    pub fn put(&mut self, path: &str, entry: Entry) {
        self.ops.push(Op::Put(path.to_owned(), entry));
    }

    /// Updates only the local stat of an existing entry (same content seen again with a new inode or
    /// ctime): no new sequence number, nothing for peers.
    pub fn set_local_stat(&mut self, path: &str, local: LocalStat) {
        self.ops.push(Op::Stat(path.to_owned(), local));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Writes every change in one durable transaction; returns the new highest sequence number.
    pub fn commit(self) -> Result<u64, IndexError> {
        let index = self.index;
        index.wrote(self.write())
    }

    fn write(self) -> Result<u64, IndexError> {
        let index = self.index;
        if self.ops.is_empty() {
            return Ok(index.max_seq());
        }
        let txn = index.write_txn()?;
        let mut max_seq = index.max_seq();
        let changed;
        let mut news = false;
        {
            let mut files = txn.open_table(FILES)?;
            let mut by_seq = txn.open_table(BY_SEQ)?;
            let mut by_chunk = txn.open_multimap_table(BY_CHUNK)?;
            let mut meta = txn.open_table(META)?;
            let remote = txn.open_table(REMOTE)?;
            let peers = txn
                .open_table(REMOTE_SEQ)?
                .iter()?
                .map(|row| row.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<Vec<_>, _>>()?;
            let mut counts = read_counts(&meta)?;
            let before = max_seq;
            let mut key = Vec::with_capacity(64);
            for op in self.ops {
                match op {
                    Op::Put(path, mut entry) => {
                        let old = files
                            .get(path.as_str())?
                            .map(|v| decode(v.value()))
                            .transpose()?;
                        // A peer's entry this version has not seen, or the previous one had not.
                        for peer in &peers {
                            if news {
                                break;
                            }
                            key.clear();
                            key.extend_from_slice(peer);
                            key.extend_from_slice(path.as_bytes());
                            if let Some(theirs) = remote.get(key.as_slice())? {
                                let theirs = decode(theirs.value())?;
                                news =
                                    unseen(Some(&entry), &theirs) || unseen(old.as_ref(), &theirs);
                            }
                        }
                        if let Some(old) = &old {
                            by_seq.remove(old.seq)?;
                            for c in &old.chunks {
                                by_chunk.remove(chunk_key(&c.hash), path.as_str())?;
                            }
                            counts.apply(old, -1);
                        }
                        max_seq += 1;
                        entry.seq = max_seq;
                        if !entry.deleted {
                            for c in &entry.chunks {
                                by_chunk.insert(chunk_key(&c.hash), path.as_str())?;
                            }
                        }
                        counts.apply(&entry, 1);
                        files.insert(path.as_str(), encode(&entry)?.as_slice())?;
                        by_seq.insert(max_seq, path.as_str())?;
                    }
                    Op::Stat(path, local) => {
                        let old = files
                            .get(path.as_str())?
                            .map(|v| decode(v.value()))
                            .transpose()?;
                        if let Some(mut entry) = old {
                            entry.local = local;
                            files.insert(path.as_str(), encode(&entry)?.as_slice())?;
                        }
                    }
                }
            }
            meta.insert("max_seq", max_seq.to_le_bytes().as_slice())?;
            let counts = postcard::to_allocvec(&counts).map_err(IndexError::Encode)?;
            meta.insert("counts", counts.as_slice())?;
            changed = max_seq != before;
        }
        txn.commit()?;
        index.generation.fetch_add(1, Ordering::AcqRel);
        if changed {
            index.seq.send_replace(max_seq);
        }
        if news {
            index.needs.send_modify(|n| *n += 1);
        }
        Ok(max_seq)
    }
}

/// A peer's entry that `ours` (this node's entry for the path, if any) has not seen: one that may
/// make this node need something (see [`Index::subscribe_needs`]).
fn unseen(ours: Option<&Entry>, theirs: &Entry) -> bool {
    ours.is_none_or(|o| !o.version.dominates(&theirs.version))
}

fn open_db(path: &Path) -> Result<Database, IndexError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| IndexError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

fn read_share(db: &Database) -> Result<Option<[u8; 16]>, IndexError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let share = meta.get("share")?;
    Ok(share.and_then(|v| v.value().try_into().ok()))
}

fn read_counts(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Counts, IndexError> {
    match meta.get("counts")? {
        Some(v) => postcard::from_bytes(v.value()).map_err(|_| IndexError::Corrupt("counts")),
        None => Ok(Counts::default()),
    }
}

/// Brings an index of an older schema up to [`SCHEMA`], inside the opening transaction. Each step
/// upgrades one version, so any older index reaches the current one.
fn migrate(txn: &redb::WriteTransaction, from: u32) -> Result<(), IndexError> {
    let mut version = from;
    while version < SCHEMA {
        // No older schema exists yet; the first change to the layout adds its step here.
        version += 1;
    }
    let mut meta = txn.open_table(META)?;
    meta.insert("schema", SCHEMA.to_le_bytes().as_slice())?;
    info!(from, to = SCHEMA, "index schema migrated");
    Ok(())
}

/// Opens `path` for reading; never through a symlink.
fn open_nofollow(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()
}

/// Reads `len` bytes at `offset` of `file` onto the end of `buf` as chunk `hash`: taken as read
/// when `unchanged` holds of the file's metadata before and after the read (its stat is still the
/// one the chunk was found with), hashed otherwise. False if it could not be read or is not the
/// chunk.
fn read_as_chunk(
    file: &mut std::fs::File,
    offset: u64,
    len: u32,
    hash: &Hash,
    buf: &mut Vec<u8>,
    unchanged: impl Fn(&std::fs::Metadata) -> bool,
) -> bool {
    let holds = |file: &std::fs::File| file.metadata().is_ok_and(|m| unchanged(&m));
    let start = buf.len();
    let before = holds(file);
    read_after(file, offset, len, buf)
        && ((before && holds(file)) || Hash::of(&buf[start..]) == *hash)
}

/// Appends `len` bytes of `file` at `offset` to `buf`, read into its spare room (no zeroing
/// first); false unless all of them were there.
fn read_after(file: &mut std::fs::File, offset: u64, len: u32, buf: &mut Vec<u8>) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.take(u64::from(len)).read_to_end(buf))
        .ok()
        == Some(len as usize)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The cache holds nothing a panic could leave half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn chunk_key(hash: &Hash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash.0[..8]);
    u64::from_be_bytes(b)
}

fn encode(entry: &Entry) -> Result<Vec<u8>, IndexError> {
    let mut out = vec![ENTRY_FORMAT];
    let body = postcard::to_allocvec(entry).map_err(IndexError::Encode)?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Entry, IndexError> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|_| IndexError::Corrupt("entry"))
        }
        _ => Err(IndexError::Corrupt("entry format")),
    }
}

fn u32_from(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_from(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}
