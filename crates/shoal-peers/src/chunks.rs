//! Chunks between nodes: how a peer's requests are answered, and why a fetch failed. (A served
//! chunk is read by [`shoal_index::Index::read_chunk_after`].)

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use shoal_core::chunk::Hash;
use shoal_index::Index;
use shoal_net::{Connection, Message};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::limit::RateLimit;

/// Batches of chunk reads done at once per node, for all peers together.
pub const MAX_SERVING: usize = 16;
/// Requests one peer may have waiting for an answer; one more is answered "unavailable" at once
/// (the peer then asks another node). A puller keeps far fewer in flight.
pub const MAX_QUEUED_PER_PEER: usize = 1024;
/// Requests read in one go at most: small chunks (a folder of small files) cost one hand-off to
/// a blocking thread per batch, not per chunk.
const BATCH_REQUESTS: usize = 64;
/// Bytes read in one go: a batch ends at the chunk that reaches it (large chunks: one per batch).
const BATCH_BYTES: usize = 1 << 20;
/// Batches read at once for one peer, so that large chunks are read in parallel. With the answers
/// waiting to be sent, a peer that stops reading (frozen, or gone without a TCP reset) holds about
/// a dozen batches' bytes, and no node-wide read slot.
const READS_PER_PEER: usize = 8;
/// Requests taken off a peer's queue to be formed into batches.
const WAITING_MAX: usize = BATCH_REQUESTS * READS_PER_PEER;
/// Batches read and waiting for the link.
const ANSWERS_QUEUED: usize = 4;

/// Why a chunk could not be fetched from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no connected peer has this chunk")]
    NoSource,
    #[error("the peer no longer has this chunk")]
    Unavailable,
    #[error("the peer disconnected")]
    Disconnected,
    #[error("the peer did not answer in time")]
    TimedOut,
    #[error("the peer layer is shutting down")]
    Stopped,
    #[error("the peer's answer does not fit the chunk asked for")]
    Unfit,
}

/// A peer's request for a chunk of one of its namespaces.
#[derive(Debug)]
pub(crate) struct Request {
    pub id: u64,
    pub hash: Hash,
    /// The asker's piece hashes (`ChunkNear`): only the pieces that differ are sent.
    pub near: Option<Vec<shoal_core::chunk::PieceHash>>,
    pub root: Arc<Path>,
    pub index: Arc<Index>,
}

/// Answers one peer's chunk requests: a reader task reads queued requests
/// in batches on blocking threads while a sender task sends the batches already read.
#[derive(Debug)]
pub(crate) struct Server {
    queue: mpsc::Sender<Request>,
    conn: Arc<Connection>,
    reader: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl Server {
    /// `reading` bounds the batches read at once node-wide; `upload` is the node's upload limit.
    pub fn start(conn: Arc<Connection>, reading: Arc<Semaphore>, upload: Arc<RateLimit>) -> Server {
        let (queue, requests) = mpsc::channel(MAX_QUEUED_PER_PEER);
        let (answers_tx, answers) = mpsc::channel(ANSWERS_QUEUED);
        let reader = tokio::spawn(read_batches(requests, reading, answers_tx));
        let sender = tokio::spawn(send_answers(answers, conn.clone(), upload));
        Server {
            queue,
            conn,
            reader,
            sender,
        }
    }

    /// Queues `request`; a peer with [`MAX_QUEUED_PER_PEER`] waiting is told "unavailable" now.
    pub fn request(&self, request: Request) {
        let id = request.id;
        if self.queue.try_send(request).is_err() {
            // A full control queue means the peer is not reading; its request times out there.
            let _ = self.conn.try_send(&Message::ChunkUnavailable { id });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.reader.abort();
        self.sender.abort();
    }
}

/// What a request got: the whole `ChunkData` frame, or `None` (tell the peer it is unavailable).
type Answer = (u64, Option<Vec<u8>>);

async fn read_batches(
    mut requests: mpsc::Receiver<Request>,
    reading: Arc<Semaphore>,
    answers: mpsc::Sender<Vec<Answer>>,
) {
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut reads: JoinSet<(Vec<Answer>, VecDeque<Request>)> = JoinSet::new();
    // Requests per batch, from the size of the chunks asked for last: one large chunk, or as many
    // small ones as make up [`BATCH_BYTES`]. (The bytes bound a batch anyway: this spreads large
    // chunks over parallel reads.)
    let mut per_batch = 1;
    let mut open = true;
    loop {
        while reads.len() < READS_PER_PEER && !waiting.is_empty() {
            let batch: VecDeque<Request> = waiting.drain(..per_batch.min(waiting.len())).collect();
            let reading = reading.clone();
            reads.spawn(async move {
                let Ok(_permit) = reading.acquire_owned().await else {
                    return (Vec::new(), VecDeque::new());
                };
                tokio::task::spawn_blocking(move || read_batch(batch))
                    .await
                    .unwrap_or_default()
            });
        }
        if !open && reads.is_empty() {
            return;
        }
        tokio::select! {
            // Taken off the queue only while the reads keep up: a peer that asks faster than
            // this node reads fills its own queue, and then is told "unavailable".
            r = requests.recv(), if open && waiting.len() < WAITING_MAX => match r {
                Some(r) => {
                    waiting.push_back(r);
                    while waiting.len() < WAITING_MAX {
                        match requests.try_recv() {
                            Ok(r) => waiting.push_back(r),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some(done) = reads.join_next() => {
                let Ok((batch, rest)) = done else { return };
                let read: usize = batch.iter().filter_map(|(_, f)| f.as_ref().map(Vec::len)).sum();
                if !batch.is_empty() {
                    let average = (read / batch.len()).max(1);
                    per_batch = (BATCH_BYTES / average).clamp(1, BATCH_REQUESTS);
                }
                // What did not fit is read next.
                for r in rest.into_iter().rev() {
                    waiting.push_front(r);
                }
                if !batch.is_empty() && answers.send(batch).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads requests from the front of `waiting` until [`BATCH_BYTES`] are read (at least one);
/// returns their answers and the requests left.
fn read_batch(mut waiting: VecDeque<Request>) -> (Vec<Answer>, VecDeque<Request>) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while bytes < BATCH_BYTES
        && let Some(r) = waiting.pop_front()
    {
        // Read straight into the answer's frame (no copy of the chunk to encode it).
        let frame = match &r.near {
            None => r.index.read_chunk_after(&r.root, &r.hash, |len| {
                shoal_net::frame::chunk_data_frame_head(r.id, len)
            }),
            Some(have) => r.index.read_chunk(&r.root, &r.hash).and_then(|chunk| {
                let (pieces, bytes) = shoal_core::chunk::differing(&chunk, have);
                let answer = Message::ChunkPieces {
                    id: r.id,
                    pieces,
                    bytes,
                };
                shoal_net::frame::encode(&answer).ok()
            }),
        };
        bytes += frame.as_ref().map_or(0, Vec::len);
        batch.push((r.id, frame));
    }
    (batch, waiting)
}

async fn send_answers(
    mut answers: mpsc::Receiver<Vec<Answer>>,
    conn: Arc<Connection>,
    upload: Arc<RateLimit>,
) {
    while let Some(batch) = answers.recv().await {
        for (id, frame) in batch {
            let sent = match frame {
                Some(frame) => {
                    upload.take(frame.len() as u64).await;
                    conn.send_bulk_frame(frame).await
                }
                None => conn.send(&Message::ChunkUnavailable { id }).await,
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;
    use shoal_core::secret::ShareId;
    use shoal_core::version::{DeviceId, VersionVector};
    use shoal_index::{ChunkRef, Entry, Kind, LocalStat};
    use std::os::unix::fs::MetadataExt;

    /// A namespace holding one file of `n` chunks of 1 MiB, indexed; returns its chunks' bytes.
    fn namespace(n: usize) -> (tempfile::TempDir, Arc<Path>, Arc<Index>, Vec<Vec<u8>>) {
        namespace_of(n, 1 << 20)
    }

    /// A namespace holding one file of `n` chunks of `len` bytes, indexed.
    fn namespace_of(
        n: usize,
        len: usize,
    ) -> (tempfile::TempDir, Arc<Path>, Arc<Index>, Vec<Vec<u8>>) {
        let tmp = tempfile::tempdir().unwrap();
        let root: Arc<Path> = tmp.path().join("ns").into();
        std::fs::create_dir_all(&root).unwrap();
        let index = Index::open(&tmp.path().join("ns.redb"), &ShareId([7; 16])).unwrap();
        let chunks: Vec<Vec<u8>> = (0..n)
            .map(|i| (0..len).map(|j| ((i * 31 + j) % 251) as u8).collect())
            .collect();
        std::fs::write(root.join("f"), chunks.concat()).unwrap();
        let m = std::fs::metadata(root.join("f")).unwrap();
        let device = DeviceId(1);
        let mut version = VersionVector::new();
        version.bump(device, 1);
        let entry = Entry {
            kind: Kind::File,
            deleted: false,
            size: m.len(),
            mode: 0o644,
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            local: LocalStat {
                inode: m.ino(),
                ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            },
            chunks: chunks
                .iter()
                .map(|c| ChunkRef {
                    len: c.len() as u32,
                    hash: Hash::of(c),
                })
                .collect(),
            hash: Hash::of(&chunks.concat()),
            target: None,
            version,
            modified_by: device,
            seq: 0,
        };
        let mut b = index.batch();
        b.put("f", entry);
        b.commit().unwrap();
        (tmp, root, Arc::new(index), chunks)
    }

    #[test]
    fn a_batch_reads_requests_in_order_up_to_its_bytes_and_leaves_the_rest_for_the_next() {
        let (_tmp, root, index, chunks) = namespace(6);
        let request = |id: u64, hash: Hash| Request {
            id,
            hash,
            near: None,
            root: root.clone(),
            index: index.clone(),
        };
        // Six chunks of 1 MiB, with one this node does not have in the middle.
        let mut waiting: VecDeque<Request> = VecDeque::new();
        waiting.push_back(request(10, Hash::of(&chunks[5])));
        waiting.push_back(request(11, Hash([9; 32])));
        for (i, c) in chunks.iter().take(5).enumerate() {
            waiting.push_back(request(20 + i as u64, Hash::of(c)));
        }
        // Batches of 1 MiB: each ends at the chunk that reaches it; the one not here is
        // answered unavailable and costs nothing.
        let mut batches: Vec<Vec<u64>> = Vec::new();
        let mut answers: Vec<Answer> = Vec::new();
        while !waiting.is_empty() {
            let (batch, rest) = read_batch(waiting);
            batches.push(batch.iter().map(|(id, _)| *id).collect());
            answers.extend(batch);
            waiting = rest;
        }
        assert_eq!(
            batches,
            [
                vec![10],
                vec![11, 20],
                vec![21],
                vec![22],
                vec![23],
                vec![24]
            ]
        );
        assert!(
            answers[1].1.is_none(),
            "a chunk not here is answered unavailable"
        );
        let sent: Vec<&Vec<u8>> = answers.iter().filter_map(|(_, f)| f.as_ref()).collect();
        let want = [
            &chunks[5], &chunks[0], &chunks[1], &chunks[2], &chunks[3], &chunks[4],
        ];
        for (frame, want) in sent.iter().zip(want) {
            assert!(frame.ends_with(want), "the frame carries the chunk");
            assert_eq!(
                frame.len(),
                shoal_net::frame::chunk_data_frame_head(0, want.len()).len() + want.len()
            );
        }
        // Small chunks: many to a batch.
        let (_tmp2, root2, index2, small) = namespace_of(40, 4096);
        let waiting: VecDeque<Request> = small
            .iter()
            .enumerate()
            .map(|(i, c)| Request {
                id: i as u64,
                hash: Hash::of(c),
                near: None,
                root: root2.clone(),
                index: index2.clone(),
            })
            .collect();
        let (batch, rest) = read_batch(waiting);
        assert_eq!(batch.len(), 40);
        assert!(rest.is_empty());
        assert!(
            batch
                .iter()
                .zip(&small)
                .all(|((_, f), c)| f.as_ref().unwrap().ends_with(c))
        );
        // A batch reads at least one request, however large.
        let mut one = VecDeque::new();
        one.push_back(request(30, Hash::of(&chunks[0])));
        assert_eq!(read_batch(one).0.len(), 1);
    }

    #[test]
    fn a_chunk_asked_for_near_what_the_asker_holds_is_answered_with_the_pieces_that_differ() {
        use shoal_core::chunk::{PIECE, patched, piece_hashes};
        let (_tmp, root, index, chunks) = namespace(2);
        let chunk = &chunks[1];
        let mut near = chunk.clone();
        near[3 * PIECE + 1] ^= 0xff;
        near[40 * PIECE] ^= 0xff;
        let mut waiting = VecDeque::new();
        waiting.push_back(Request {
            id: 7,
            hash: Hash::of(chunk),
            near: Some(piece_hashes(&near)),
            root: root.clone(),
            index: index.clone(),
        });
        let (batch, _) = read_batch(waiting);
        let frame = batch[0].1.as_ref().unwrap();
        let (answer, _) = shoal_net::frame::decode_frame(frame).unwrap().unwrap();
        let Message::ChunkPieces { id, pieces, bytes } = answer else {
            panic!("{answer:?}");
        };
        assert_eq!((id, pieces.as_slice()), (7, &[3, 40][..]));
        assert_eq!(bytes.len(), 2 * PIECE);
        assert_eq!(
            patched(&near, chunk.len(), &pieces, &bytes).as_ref(),
            Some(chunk)
        );
    }
}
