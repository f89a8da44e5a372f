//! Files fetched ahead of their records.
//!
//! A peer indexing a large new file tells its members the chunks it has found so far
//! (`Preview`), long before the file's signed record exists (1 GiB took ~0.5 s to index on the
//! benchmark machine, during which nothing could move). This node fetches those chunks at once
//! from that peer into a temporary of its own for the path, `.~shoal.<name>.ahead.tmp`. When the
//! record arrives, the file's pull adopts the temporary ([`adopt`]): renamed to the pull's own,
//! it starts from the chunks already written there, verified on arrival, at the offsets the
//! record lists (any other is simply fetched).
//!
//! A preview changes nothing: it is never the source of a file, only of chunks whose hashes the
//! record must then list. A temporary that no record claims within [`KEEP`] of its last preview
//! is removed, and so is every one when the puller stops (nothing could resume into it). A path
//! whose directory is not here yet (a new directory's records come with the file's) is fetched
//! ahead into `.sync/ahead/` (creating the directory would be a change); an ignored one never.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_core::chunk::{Chunk, Hash};
use shoal_core::ignore::TEMP_PREFIX;
use shoal_index::{PeerKey, Preview};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::beneath;

use super::{
    FETCH_WINDOW, Filling, PullerConfig, Shared, WRITES_QUEUED, fetch_verified, hidden_beside,
    index, lock, preallocate, remove_temporaries, root, shuffle_steps, shuffler, write_fetched,
};

/// Chunk fetches in flight at once per file fetched ahead.
const AT_ONCE: usize = 32;
/// A file fetched ahead whose record has not come this long after its last preview is dropped.
pub(super) const KEEP: Duration = Duration::from_secs(60);
/// How long a halted fetch ahead waits for the answers still on their way.
const HALT_WAIT: Duration = Duration::from_secs(2);
/// How often files fetched ahead are looked at for [`KEEP`].
const SWEEP: Duration = Duration::from_secs(10);

/// Chunks written into a temporary fetched ahead: offset → (hash, length).
pub(super) type Written = HashMap<u64, (Hash, u32)>;

/// One file being fetched ahead.
pub(super) struct Ahead {
    temp: Arc<Path>,
    size: u64,
    from: PeerKey,
    written: Arc<Mutex<Written>>,
    /// Chunks previewed since the fetch began.
    more: mpsc::UnboundedSender<Vec<Chunk>>,
    /// Set to start no more fetches (the ones in flight are finished and written).
    halt: Arc<AtomicBool>,
    task: JoinHandle<io::Result<()>>,
    last: Instant,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("temp", &self.temp)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Ahead {
    /// Stops fetching; the chunks in flight are written. The temporary is left.
    async fn halt(self) -> (Arc<Path>, Arc<Mutex<Written>>, io::Result<()>) {
        self.halt.store(true, Ordering::Relaxed);
        drop(self.more);
        let done = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e.to_string())),
        };
        (self.temp, self.written, done)
    }
}

/// How many files are being fetched ahead, and the bytes written into them so far.
pub(super) fn status(shared: &Shared) -> (u64, u64) {
    let aheads = lock(&shared.aheads);
    let bytes = aheads
        .values()
        .map(|a| {
            lock(&a.written)
                .values()
                .map(|(_, len)| u64::from(*len))
                .sum::<u64>()
        })
        .sum();
    (aheads.len() as u64, bytes)
}

/// Whether `path` is a temporary a file was fetched ahead into.
fn is_ahead_path(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".ahead.tmp"))
}

/// The temporary a file is fetched ahead into, beside it.
fn ahead_path(path: &Path) -> PathBuf {
    hidden_beside(path, "ahead.tmp")
}

/// Where files whose directory is not here yet are fetched ahead, under the namespace's root.
const AHEAD_DIR: &str = ".sync/ahead";

/// The temporary the file `path` under `root` is fetched ahead into: beside it when its directory
/// is here, else in [`AHEAD_DIR`], named by the path's hash (a new directory's record comes with
/// the file's, after its source has indexed it: a large file in a new directory was not fetched
/// ahead at all). `None` when the namespace's `.sync` is not there, or a symlink is on the way.
fn ahead_temp(root: &Path, path: &str) -> Option<PathBuf> {
    match beneath::checked(root, path) {
        Ok(at) => return Some(ahead_path(&at)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // Under a symlink or a file here: its pull will say why.
        Err(_) => return None,
    }
    // `.sync` is never made here (without it, this is no namespace); `.sync/ahead` is.
    beneath::checked(root, AHEAD_DIR).ok()?;
    let id = Hash::of(path.as_bytes()).to_hex();
    beneath::made(
        root,
        &format!("{AHEAD_DIR}/{TEMP_PREFIX}{}.ahead.tmp", &id[..32]),
    )
    .ok()
}

/// Takes peers' previews for as long as the puller runs; removes what it fetched ahead when it
/// stops, and what an earlier run left (killed before it could).
pub(super) async fn take_previews(
    config: Arc<PullerConfig>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut previews = index(&config).subscribe_peer_previews();
    let dir = root(&config).to_path_buf();
    if let Ok((n, bytes)) = tokio::task::spawn_blocking(move || {
        let (n, bytes) = remove_temporaries(&dir, is_ahead_path);
        let (m, more) = remove_temporaries(&dir.join(AHEAD_DIR), is_ahead_path);
        (n + m, bytes + more)
    })
    .await
        && n > 0
    {
        debug!(namespace = %config.name, files = n, bytes, "removed what an earlier run fetched ahead");
    }
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            p = previews.recv() => match p {
                Ok(p) => take(&config, &shared, &p).await,
                Err(RecvError::Lagged(n)) => debug!(namespace = %config.name, "{n} previews missed"),
                Err(RecvError::Closed) => break,
            },
            _ = sweep.tick() => drop_older(&config, &shared, KEEP).await,
        }
    }
    drop_older(&config, &shared, Duration::ZERO).await;
}

/// Starts fetching what `preview` lists, or adds it to the file's fetch under way.
async fn take(config: &Arc<PullerConfig>, shared: &Arc<Shared>, preview: &Preview) {
    let Some(from) = preview.from else { return };
    if config.scanner.skips(&preview.path, false) {
        return;
    }
    let chunks: Vec<Chunk> = preview
        .chunks
        .iter()
        .filter(|c| c.offset + u64::from(c.len) <= preview.size)
        .copied()
        .collect();
    let replaced = {
        let mut aheads = lock(&shared.aheads);
        if let Some(a) = aheads.get_mut(&preview.path)
            && a.from == from
            && a.size == preview.size
        {
            a.last = Instant::now();
            let _ = a.more.send(chunks);
            return;
        }
        aheads.remove(&preview.path)
    };
    // Another source, or another file at that path: start over (in the same temporary, so the
    // old one goes first).
    if let Some(old) = replaced {
        discard(config.clone(), old).await;
    }
    if recorded(config, from, preview) {
        return;
    }
    let Some(temp) = ahead_temp(root(config), &preview.path) else {
        return;
    };
    let temp: Arc<Path> = temp.into();
    let (more, incoming) = mpsc::unbounded_channel();
    let _ = more.send(chunks);
    let written = Arc::new(Mutex::new(Written::new()));
    let halt = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(fetch_ahead(
        config.clone(),
        shared.clone(),
        temp.clone(),
        preview.size,
        from,
        written.clone(),
        halt.clone(),
        incoming,
    ));
    debug!(namespace = %config.name, path = %preview.path, size = preview.size, "fetching ahead of its record");
    lock(&shared.aheads).insert(
        preview.path.clone(),
        Ahead {
            temp,
            size: preview.size,
            from,
            written,
            more,
            halt,
            task,
            last: Instant::now(),
        },
    );
}

/// Whether the file `preview` is of is already recorded here: the peer's record of it came first
/// (its pull needs no help), or this node has it.
fn recorded(config: &PullerConfig, from: PeerKey, preview: &Preview) -> bool {
    let Some(first) = preview.chunks.first() else {
        return false;
    };
    let lists = |entry: Option<shoal_index::Entry>| {
        entry.is_some_and(|e| {
            e.is_live()
                && e.size == preview.size
                && e.chunks_with_offsets()
                    .any(|c| c.offset == first.offset && c.hash == first.hash)
        })
    };
    let index = index(config);
    lists(index.remote_get(&from, &preview.path).ok().flatten())
        || lists(index.get(&preview.path).ok().flatten())
}

/// Fetches the chunks previewed for one file into its temporary, [`AT_ONCE`] at a time, until
/// halted; chunks this node already has are left for the pull's copier. Each chunk is asked of
/// the peer that previewed it, or of a member that said it has it.
#[allow(clippy::too_many_arguments)]
async fn fetch_ahead(
    config: Arc<PullerConfig>,
    shared: Arc<Shared>,
    temp: Arc<Path>,
    size: u64,
    from: PeerKey,
    written: Arc<Mutex<Written>>,
    halt: Arc<AtomicBool>,
    mut incoming: mpsc::UnboundedReceiver<Vec<Chunk>>,
) -> io::Result<()> {
    let file = {
        let temp = temp.clone();
        tokio::task::spawn_blocking(move || open_ahead(&temp, size))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??
    };
    let (to_writer, writes) = mpsc::channel::<(Chunk, Vec<u8>)>(WRITES_QUEUED);
    let writer = {
        let (config, shared) = (config.clone(), shared.clone());
        let filling = Filling::new(temp.clone(), file);
        tokio::task::spawn_blocking(move || {
            write_fetched(&config, filling, &shared, Some(written.as_ref()), writes)
        })
    };
    let slots = Arc::new(Semaphore::new(AT_ONCE));
    let mut fetches = JoinSet::new();
    // Chunks previewed and not asked for yet, by offset, taken a window at a time in a random
    // order (`shuffle_steps`): nodes fetching the same file ahead then seldom ask its source for
    // the same chunk at once, and pass on to each other (`Have`) what each got; the windows keep
    // the writes near the front of the write-behind window, which drops what lies behind it
    // (picked at random from all that was previewed, the writes scattered over the whole file:
    // with three peers fetching 1 GiB ahead, 2.5 GB of new page cache, 1.8 GB of it dirty at
    // once, where each new page costs this VM a fault to the host).
    let mut pending: BTreeMap<u64, Chunk> = BTreeMap::new();
    let mut window: Vec<Chunk> = Vec::new();
    let mut random = shuffler();
    while !halt.load(Ordering::Relaxed) {
        while let Ok(batch) = incoming.try_recv() {
            pending.extend(batch.into_iter().map(|c| (c.offset, c)));
        }
        if window.is_empty() {
            if pending.is_empty() {
                match incoming.recv().await {
                    Some(batch) => {
                        pending.extend(batch.into_iter().map(|c| (c.offset, c)));
                        continue;
                    }
                    None => break,
                }
            }
            window = next_window(&mut pending);
            shuffle_steps(&mut window, &mut random);
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(chunk) = window.pop() else {
            continue;
        };
        if index(&config).holds(&chunk.hash) {
            continue;
        }
        let (source, to_writer) = (config.source.clone(), to_writer.clone());
        let shared = shared.clone();
        fetches.spawn(async move {
            let _slot = slot;
            let in_flight = shared.pace.admit(u64::from(chunk.len)).await;
            if let Ok(bytes) = fetch_verified(&*source, &[from], &chunk).await {
                in_flight.arrived();
                let _ = to_writer.send((chunk, bytes)).await;
            }
        });
        while fetches.try_join_next().is_some() {}
    }
    // Halted: what is still on its way is waited for a moment (its bytes are on the wire), not
    // longer (a peer that stopped answering would hold the file's pull up until its request
    // timed out); the pull fetches whatever it needs that did not come.
    let _ = tokio::time::timeout(HALT_WAIT, async {
        while fetches.join_next().await.is_some() {}
    })
    .await;
    fetches.shutdown().await;
    drop(to_writer);
    writer.await.map_err(|e| io::Error::other(e.to_string()))?
}

/// The next window of chunks to fetch ahead, taken from `pending`: its lowest chunks, at most
/// [`FETCH_WINDOW`] of them, and none further than a window's span (`FETCH_WINDOW` average
/// chunks) above the lowest — a file's previews come from each of its indexer's segments at once
/// (the second from the middle of the file on), and while few have come, a window of all of them
/// would have scattered writes over the whole file.
fn next_window(pending: &mut BTreeMap<u64, Chunk>) -> Vec<Chunk> {
    let span = FETCH_WINDOW as u64 * u64::from(shoal_core::chunk::AVG_SIZE);
    let Some(&low) = pending.keys().next() else {
        return Vec::new();
    };
    let mut window = Vec::new();
    while window.len() < FETCH_WINDOW {
        match pending.first_entry() {
            Some(e) if *e.key() < low.saturating_add(span) => window.push(e.remove()),
            _ => break,
        }
    }
    window
}

/// Creates (or empties) the temporary and reserves its room: at most half of what the disk can
/// spare (a preview is any member's word; a full disk would pause the pulls of real records).
fn open_ahead(temp: &Path, size: u64) -> io::Result<File> {
    let dir = temp.parent().unwrap_or(Path::new("."));
    if size > crate::space::space(dir)?.usable() / 2 {
        return Err(io::Error::other("not enough room to fetch it ahead"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(temp)?;
    preallocate(&file, 0, size)?;
    Ok(file)
}

/// Drops the files fetched ahead whose last preview is older than `age`.
async fn drop_older(config: &Arc<PullerConfig>, shared: &Arc<Shared>, age: Duration) {
    let old: Vec<(String, Ahead)> = {
        let mut aheads = lock(&shared.aheads);
        let paths: Vec<String> = aheads
            .iter()
            .filter(|(_, a)| a.last.elapsed() >= age)
            .map(|(p, _)| p.clone())
            .collect();
        paths
            .into_iter()
            .filter_map(|p| aheads.remove(&p).map(|a| (p, a)))
            .collect()
    };
    for (path, ahead) in old {
        debug!(namespace = %config.name, %path, "no record came for a file fetched ahead: dropped");
        discard(config.clone(), ahead).await;
    }
}

/// Halts a fetch ahead and removes its temporary.
async fn discard(config: Arc<PullerConfig>, ahead: Ahead) {
    let (temp, _, _) = ahead.halt().await;
    index(&config).assembled(&temp);
    let _ = tokio::task::spawn_blocking(move || fs::remove_file(&temp)).await;
}

/// Hands the file at `path` fetched ahead, if any, to its pull, whose temporary is `temp`: the
/// fetch is halted, its temporary renamed to `temp`, and the chunks written in it returned (the
/// pull keeps those its record lists at those offsets). `None` if nothing was fetched ahead for
/// `path`, or if `temp` already exists (a pull resumed: it has its own).
pub(super) async fn adopt(
    config: &Arc<PullerConfig>,
    shared: &Arc<Shared>,
    path: &str,
    temp: &Path,
) -> Option<Written> {
    let ahead = lock(&shared.aheads).remove(path)?;
    let (from, written, done) = ahead.halt().await;
    index(config).assembled(&from);
    let to: Arc<Path> = temp.into();
    let adopted = {
        let (from, to) = (from.clone(), to.clone());
        tokio::task::spawn_blocking(move || -> io::Result<bool> {
            done?;
            if fs::symlink_metadata(&to).is_ok() {
                return Ok(false);
            }
            fs::rename(&from, &to)?;
            Ok(true)
        })
        .await
    };
    if !matches!(adopted, Ok(Ok(true))) {
        let _ = tokio::task::spawn_blocking(move || fs::remove_file(&from)).await;
        return None;
    }
    let written = std::mem::take(&mut *lock(&written));
    for (&offset, &(hash, len)) in &written {
        index(config).assembling(&to, hash, offset, len);
    }
    debug!(namespace = %config.name, %path, chunks = written.len(), "adopted what was fetched ahead");
    Some(written)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use std::os::unix::fs::FileExt;

    use shoal_core::chunk::chunk_bytes;
    use shoal_index::Index;
    use shoal_scan::Scanner;

    use super::super::{ChunkSource, Fetching, copy_local};
    use super::*;

    #[test]
    fn windows_follow_the_front_of_what_was_previewed() {
        let avg = u64::from(shoal_core::chunk::AVG_SIZE);
        let chunk = |offset: u64| Chunk {
            offset,
            len: shoal_core::chunk::AVG_SIZE,
            hash: Hash::of(&offset.to_le_bytes()),
        };
        // Two segments told at once: a few chunks from the start, a few from the middle.
        let middle = 4 * FETCH_WINDOW as u64 * avg;
        let mut pending: BTreeMap<u64, Chunk> = (0..8)
            .chain(4 * FETCH_WINDOW as u64..4 * FETCH_WINDOW as u64 + 8)
            .map(|i| (i * avg, chunk(i * avg)))
            .collect();
        let window = next_window(&mut pending);
        assert_eq!(window.len(), 8, "the middle is more than a span away");
        assert!(window.iter().all(|c| c.offset < middle));
        // More from the start than a window holds: the lowest first, the rest later.
        pending.extend((8..2 * FETCH_WINDOW as u64).map(|i| (i * avg, chunk(i * avg))));
        let window = next_window(&mut pending);
        assert_eq!(window.len(), FETCH_WINDOW);
        assert_eq!(window[0].offset, 8 * avg);
        assert_eq!(
            window[FETCH_WINDOW - 1].offset,
            (FETCH_WINDOW as u64 + 7) * avg
        );
        let window = next_window(&mut pending);
        assert_eq!(window.len(), FETCH_WINDOW - 8);
        // Only what is far away is left: it is the next window (nothing is held back for good).
        let window = next_window(&mut pending);
        assert_eq!(window.len(), 8);
        assert_eq!(window[0].offset, middle);
        assert!(pending.is_empty());
        assert!(next_window(&mut pending).is_empty());
    }

    /// A peer that has every chunk of `data`, counting what it is asked for.
    struct Peer {
        chunks: HashMap<Hash, Vec<u8>>,
        asked: Mutex<HashMap<Hash, usize>>,
    }

    impl ChunkSource for Peer {
        fn fetch(&self, hash: Hash, sources: Vec<PeerKey>) -> Fetching {
            assert_eq!(sources, vec![[7; 32]], "asked of the peer that previewed");
            *lock(&self.asked).entry(hash).or_default() += 1;
            let answer = self.chunks.get(&hash).cloned().ok_or_else(|| "none".into());
            Box::pin(async move { answer })
        }
    }

    fn setup(data: &[u8]) -> (tempfile::TempDir, Arc<PullerConfig>, Arc<Peer>, Vec<Chunk>) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ns");
        fs::create_dir_all(root.join(".sync")).unwrap();
        let share = shoal_core::secret::ShareId([1; 16]);
        let index = Index::open(&tmp.path().join("state/ns.redb"), &share).unwrap();
        let scanner = Scanner::new(root, Arc::new(index), shoal_core::version::DeviceId(1));
        scanner.scan_all().unwrap();
        let chunks = chunk_bytes(data);
        let peer = Arc::new(Peer {
            chunks: chunks
                .iter()
                .map(|c| {
                    let at = c.offset as usize;
                    (c.hash, data[at..at + c.len as usize].to_vec())
                })
                .collect(),
            asked: Mutex::new(HashMap::new()),
        });
        let config = Arc::new(PullerConfig {
            name: "test".into(),
            scanner: Arc::new(scanner),
            source: peer.clone(),
            archive: false,
            archive_keep: Duration::from_secs(1),
        });
        (tmp, config, peer, chunks)
    }

    fn preview(chunks: &[Chunk], size: u64) -> Preview {
        Preview {
            from: Some([7; 32]),
            path: "big".into(),
            size,
            chunks: chunks.to_vec(),
        }
    }

    /// Waits until `n` chunks of the file fetched ahead are written.
    async fn written(shared: &Shared, n: usize) {
        for _ in 0..500 {
            let now = lock(&shared.aheads)
                .get("big")
                .map_or(0, |a| lock(&a.written).len());
            if now >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the chunks previewed were not fetched");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_fetched_ahead_are_adopted_by_the_pull_and_never_fetched_again() {
        let data = shoal_core::testing::noise(5 << 20, 3);
        let (_tmp, config, peer, chunks) = setup(&data);
        assert!(chunks.len() >= 8, "{} chunks", chunks.len());
        let shared = Arc::new(Shared::default());
        let size = data.len() as u64;
        let half = chunks.len() / 2;
        // The source previews its first half, in two messages.
        take(&config, &shared, &preview(&chunks[..2], size)).await;
        take(&config, &shared, &preview(&chunks[2..half], size)).await;
        written(&shared, half).await;
        let bytes: u64 = chunks[..half].iter().map(|c| u64::from(c.len)).sum();
        assert_eq!(status(&shared), (1, bytes), "shown in the status");
        // The record arrives: the pull's temporary is the one fetched ahead.
        let temp = config.scanner.root().join(".~shoal.big.0123.tmp");
        let adopted = adopt(&config, &shared, "big", &temp).await.unwrap();
        assert_eq!(adopted.len(), half);
        assert_eq!(status(&shared), (0, 0));
        assert!(lock(&shared.aheads).is_empty());
        assert!(!ahead_path(&config.scanner.root().join("big")).exists());
        let held = fs::read(&temp).unwrap();
        assert_eq!(held.len() as u64, size, "its room reserved");
        for c in &chunks[..half] {
            let at = c.offset as usize;
            assert!(held[at..at + c.len as usize] == data[at..at + c.len as usize]);
        }
        // The copier keeps them without reading them again; the rest is missing.
        let (filling, missing) =
            copy_local(&config, &shared, &temp, chunks.clone(), Some(&adopted)).unwrap();
        assert_eq!(missing, chunks[half..].to_vec());
        // Passed on to other peers from the adopted temporary.
        let served = index(&config)
            .read_chunk_after(config.scanner.root(), &chunks[0].hash, |_| Vec::new())
            .unwrap();
        assert!(served == data[..chunks[0].len as usize]);
        drop(filling);
        let asked = lock(&peer.asked).clone();
        assert_eq!(asked.len(), half);
        assert!(asked.values().all(|n| *n == 1), "{asked:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_an_earlier_run_fetched_ahead_is_removed_when_the_puller_starts() {
        let (_tmp, config, _peer, _) = setup(b"x");
        let root = config.scanner.root().to_path_buf();
        fs::create_dir_all(root.join("sub")).unwrap();
        let left = [
            ahead_path(&root.join("big")),
            ahead_path(&root.join("sub/other")),
            ahead_temp(&root, "gone/big").unwrap(),
        ];
        let resumable = root.join(".~shoal.big.0123456789abcdef.tmp");
        for f in left.iter().chain([&resumable]) {
            fs::write(f, b"left by a killed run").unwrap();
        }
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(take_previews(config.clone(), shared, stopped));
        for _ in 0..500 {
            if left.iter().all(|f| !f.exists()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(left.iter().all(|f| !f.exists()));
        assert!(
            resumable.exists(),
            "a pull's own temporary is kept to resume into"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_no_record_claims_is_removed_and_a_resumed_pull_keeps_its_own() {
        let data = shoal_core::testing::noise(3 << 20, 4);
        let (_tmp, config, _peer, chunks) = setup(&data);
        let shared = Arc::new(Shared::default());
        let size = data.len() as u64;
        let temp = ahead_path(&config.scanner.root().join("big"));
        take(&config, &shared, &preview(&chunks, size)).await;
        written(&shared, chunks.len()).await;
        assert!(temp.exists());
        // Not claimed in time: halted and removed, its chunks no longer offered.
        drop_older(&config, &shared, Duration::ZERO).await;
        assert!(lock(&shared.aheads).is_empty());
        assert!(!temp.exists());
        assert!(
            index(&config)
                .read_chunk_after(config.scanner.root(), &chunks[0].hash, |_| Vec::new())
                .is_none()
        );
        // A pull that resumes into its own temporary keeps it; what was fetched ahead goes.
        take(&config, &shared, &preview(&chunks, size)).await;
        written(&shared, chunks.len()).await;
        let own = config.scanner.root().join(".~shoal.big.0123.tmp");
        fs::write(&own, b"resumed").unwrap();
        assert!(adopt(&config, &shared, "big", &own).await.is_none());
        assert_eq!(fs::read(&own).unwrap(), b"resumed");
        assert!(!temp.exists());
        // A path whose directory is not here yet is fetched ahead under `.sync/ahead`, and no
        // directory of the namespace is made for it; its record comes (the directory's first):
        // the pull adopts it there.
        let root = config.scanner.root().to_path_buf();
        let mut elsewhere = preview(&chunks, size);
        elsewhere.path = "new/dir/big".into();
        take(&config, &shared, &elsewhere).await;
        let away = lock(&shared.aheads)
            .get("new/dir/big")
            .map(|a| a.temp.to_path_buf())
            .unwrap();
        assert!(away.starts_with(root.join(AHEAD_DIR)), "{away:?}");
        assert!(is_ahead_path(&away));
        for _ in 0..500 {
            let done = lock(&shared.aheads)
                .get("new/dir/big")
                .is_some_and(|a| lock(&a.written).len() == chunks.len());
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!root.join("new").exists(), "no directory is made for it");
        fs::create_dir_all(root.join("new/dir")).unwrap();
        let own = root.join("new/dir/.~shoal.big.0123.tmp");
        let adopted = adopt(&config, &shared, "new/dir/big", &own).await;
        assert_eq!(adopted.map(|w| w.len()), Some(chunks.len()));
        assert!(!away.exists());
        assert!(fs::read(&own).unwrap() == data);
        // Another size starts over.
        take(&config, &shared, &preview(&chunks[..1], size)).await;
        take(&config, &shared, &preview(&chunks[..1], size + 1)).await;
        assert_eq!(
            lock(&shared.aheads).get("big").map(|a| a.size),
            Some(size + 1)
        );
        written(&shared, 1).await;
        let file = File::open(&temp).unwrap();
        let mut first = vec![0; chunks[0].len as usize];
        file.read_exact_at(&mut first, 0).unwrap();
        assert!(first == data[..first.len()]);
        // A file this node already has is not fetched ahead (nor one whose record came first).
        drop_older(&config, &shared, Duration::ZERO).await;
        fs::write(config.scanner.root().join("big"), &data).unwrap();
        config.scanner.scan_all().unwrap();
        take(&config, &shared, &preview(&chunks, size)).await;
        assert!(lock(&shared.aheads).is_empty());
        assert!(!temp.exists());
    }

    #[test]
    fn a_file_is_fetched_ahead_into_a_hidden_temporary_beside_it() {
        let t = ahead_path(Path::new("/ns/dir/big.iso"));
        assert_eq!(t, Path::new("/ns/dir/.~shoal.big.iso.ahead.tmp"));
        assert!(is_ahead_path(&t));
        assert!(!is_ahead_path(Path::new(
            "/ns/dir/.~shoal.big.iso.0123abcd.tmp"
        )));
        assert!(shoal_core::ignore::is_temp_name(
            &t.file_name().unwrap_or_default().to_string_lossy()
        ));
        let long = "é".repeat(200);
        let t = ahead_path(&Path::new("/ns").join(&long));
        assert!(t.file_name().unwrap_or_default().len() < 160);
    }

    #[test]
    fn nothing_is_fetched_ahead_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ns");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join(".sync")).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        assert_eq!(ahead_temp(&root, "link/big"), None);
        assert_eq!(ahead_temp(&root, "link/new/big"), None);
        // Not into a `.sync/ahead` that is a symlink either.
        std::os::unix::fs::symlink(&outside, root.join(AHEAD_DIR)).unwrap();
        assert_eq!(ahead_temp(&root, "new/big"), None);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        // Beside the file, or in `.sync/ahead` when its directory is not here yet.
        fs::remove_file(root.join(AHEAD_DIR)).unwrap();
        let beside = ahead_temp(&root, "big").unwrap();
        assert_eq!(beside, ahead_path(&root.join("big")));
        let away = ahead_temp(&root, "new/big").unwrap();
        assert!(away.starts_with(root.join(AHEAD_DIR)), "{away:?}");
    }
}
