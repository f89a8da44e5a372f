//! Two peer layers in one process, on loopback: what each stores of the other's index, and what
//! that costs on the wire.

#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::chunk::{Hash, file_hash};
use shoal_core::secret::{ReadWriteSecret, Secret};
use shoal_core::version::{DeviceId, VersionVector};
use shoal_index::{ChunkRef, Entry, Index, Kind, LocalStat};
use shoal_net::NodeIdentity;
use shoal_peers::{Peers, PeersConfig, Share};
use tokio::sync::watch;

struct Node {
    peers: Peers,
    index: Arc<Index>,
    id: [u8; 32],
    share: shoal_core::secret::ShareId,
    dir: tempfile::TempDir,
}

async fn node(
    secret: &ReadWriteSecret,
    dial: Option<SocketAddr>,
    stop: watch::Receiver<bool>,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(Index::open(&dir.path().join("index.redb"), &secret.share_id()).unwrap());
    let identity = NodeIdentity::generate().unwrap();
    let id = identity.node_id().0;
    let config = PeersConfig {
        identity,
        device_name: "node".into(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        static_peers: dial.iter().map(ToString::to_string).collect(),
        resolve_interval: Duration::from_secs(60),
        lan: None,
    };
    let (peers, _manager) = Peers::start(config, stop).await.unwrap();
    peers
        .add_share(Share {
            name: "ns".into(),
            root: dir.path().into(),
            secret: Secret::ReadWrite(secret.clone()),
            index: index.clone(),
            known_hosts: Vec::new(),
            search_lan: false,
        })
        .await;
    Node {
        peers,
        index,
        id,
        share: secret.share_id(),
        dir,
    }
}

fn chunk(n: u32) -> ChunkRef {
    let mut hash = [0; 32];
    hash[..4].copy_from_slice(&n.to_le_bytes());
    ChunkRef {
        len: 1000 + n % 7,
        hash: Hash(hash),
    }
}

/// A file of these chunks, consistent (size, file hash), as `device` wrote it.
fn file(chunks: Vec<ChunkRef>, device: u64) -> Entry {
    let mut version = VersionVector::new();
    version.bump(DeviceId(device), 1);
    let mut e = Entry {
        kind: Kind::File,
        deleted: false,
        size: chunks.iter().map(|c| u64::from(c.len)).sum(),
        mode: 0o644,
        mtime_ns: 1,
        local: LocalStat::default(),
        chunks,
        hash: Hash([0; 32]),
        target: None,
        version,
        modified_by: DeviceId(device),
        seq: 0,
    };
    let listed: Vec<_> = e.chunks_with_offsets().collect();
    e.hash = file_hash(&listed);
    e
}

/// `e` with chunks `at..at + 3` replaced by five new ones.
fn edited(e: &Entry, at: usize, new: u32) -> Vec<ChunkRef> {
    let mut chunks = e.chunks.clone();
    chunks.splice(at..at + 3, (new..new + 5).map(chunk));
    chunks
}

fn put(index: &Index, path: &str, entry: Entry) {
    let mut b = index.batch();
    b.put(path, entry);
    b.commit().unwrap();
}

/// What `of` stores as `peer`'s chunks of `path`.
fn stored(of: &Node, peer: &Node, path: &str) -> Option<Vec<ChunkRef>> {
    of.index
        .remote_get(&peer.id, path)
        .unwrap()
        .map(|e| e.chunks)
}

async fn bytes_sent(n: &Node) -> u64 {
    n.peers
        .status()
        .await
        .values()
        .flatten()
        .map(|p| p.bytes_sent)
        .sum()
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_files_record_is_a_splice_and_comes_whole_when_it_cannot_be_rebuilt() {
    let secret = ReadWriteSecret::from_bytes([9; 20]);
    let (stop_tx, stop) = watch::channel(false);
    let a = node(&secret, None, stop.clone()).await;
    let b = node(&secret, a.peers.local_addr(), stop).await;

    // Both hold the same version of a file of 4,000 chunks, as after a sync.
    let v1 = file((0..4000).map(chunk).collect(), 1);
    put(&a.index, "big", v1.clone());
    put(&b.index, "big", v1.clone());
    until("each has the other's version", || {
        stored(&b, &a, "big") == Some(v1.chunks.clone())
            && stored(&a, &b, "big") == Some(v1.chunks.clone())
    })
    .await;

    // Edited on one: the other rebuilds the new list from its own version. Listed, the record
    // is ~140 kB.
    let before = bytes_sent(&a).await;
    let v2 = file(edited(&v1, 2000, 10_000), 1);
    put(&a.index, "big", v2.clone());
    until("the edit's record", || {
        stored(&b, &a, "big") == Some(v2.chunks.clone())
    })
    .await;
    let sent = bytes_sent(&a).await - before;
    assert!(
        sent < 10_000,
        "{sent} bytes sent for an edit of 3 chunks in 4,000"
    );

    // What `a` knows of `b`'s version is one `b` holds no more, nor ever had from `a` (as when
    // `b` changed it meanwhile): `a` splices from it, `b` cannot rebuild the list, asks for it
    // again, and gets it whole.
    let gone = file((20_000..24_000).map(chunk).collect(), 2);
    a.index
        .put_remote(&b.id, &[("big".to_owned(), gone.clone())])
        .unwrap();
    let v3 = file(edited(&gone, 100, 30_000), 1);
    put(&a.index, "big", v3.clone());
    until("the record asked for again", || {
        stored(&b, &a, "big") == Some(v3.chunks.clone())
    })
    .await;
    let _ = stop_tx.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_asked_for_near_what_the_asker_holds_comes_as_the_pieces_that_differ() {
    use shoal_core::chunk::PIECE;
    use std::os::unix::fs::MetadataExt;
    let secret = ReadWriteSecret::from_bytes([8; 20]);
    let (stop_tx, stop) = watch::channel(false);
    let a = node(&secret, None, stop.clone()).await;
    let b = node(&secret, a.peers.local_addr(), stop).await;

    // `a` holds a file of one 1 MiB chunk, indexed as it is on disk.
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    std::fs::write(a.dir.path().join("f"), &chunk).unwrap();
    let m = std::fs::metadata(a.dir.path().join("f")).unwrap();
    let mut e = file(
        vec![ChunkRef {
            len: chunk.len() as u32,
            hash: Hash::of(&chunk),
        }],
        1,
    );
    e.mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    e.local = LocalStat {
        inode: m.ino(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    };
    put(&a.index, "f", e);
    until("b has a's index", || stored(&b, &a, "f").is_some()).await;

    // `b` holds what was there before two small writes.
    let mut near = chunk.clone();
    near[5 * PIECE + 3] ^= 1;
    near[60 * PIECE] ^= 1;
    let before = bytes_sent(&a).await;
    let got = b
        .peers
        .fetch_near(
            b.share,
            Hash::of(&chunk),
            vec![shoal_net::NodeId(a.id)],
            near.clone(),
            chunk.len() as u32,
        )
        .await
        .unwrap();
    assert!(got == chunk, "put together wrong");
    let sent = bytes_sent(&a).await - before;
    assert!(sent < 3 * PIECE as u64, "{sent} bytes sent for two pieces");
    let _ = stop_tx.send(true);
}
