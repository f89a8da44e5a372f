//! The peer manager: one actor that owns every session with another node.
//!
//! It accepts connections on the sync port, dials the addresses it knows (static hosts, re-resolved
//! DNS names, addresses learned from peers), keeps one session per node (of two, the one dialed by
//! the smaller node ID), joins every shared namespace on every session, and — once a peer has proved
//! it holds a namespace's secret — streams this node's signed index to it and stores the verified
//! records it sends back. Other tasks talk to it through [`Peers`]; no state is shared under a lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use shoal_core::chunk::{Chunk, Hash, PieceHash};
use shoal_core::secret::{Secret, ShareId};
use shoal_index::{Entry, Index, IndexError, Kind, PeerKey};
use shoal_net::backoff::Backoff;
use shoal_net::{
    Closed, Connection, Event, Hello, MAX_HAVE, MAX_PREVIEW, Message, NodeId, NodeIdentity,
    PROTOCOL_VERSION, PreviewChunk, Session, TlsSetup,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::chunks::{self, FetchError};
use crate::hints::Hints;
use crate::lan::{self, LanConfig};
use crate::limit::RateLimit;
use crate::record;

/// Records per index message: keeps every message well under the frame limit.
const RECORDS_PER_MESSAGE: usize = 1_000;
/// How often the dial loop looks for addresses due for a (re)connection.
const DIAL_TICK: Duration = Duration::from_millis(250);
/// A `Ping` goes to every peer this often, so a quiet but healthy connection is never mistaken for
/// a dead one.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Hints of chunks held by members (`Have`) are aged every this many pings: kept 60–120 s.
const HINTS_AGE_PINGS: u64 = 6;
/// Chunk requests of ours one peer may have at once, at most and at first; more wait here, and
/// go to whichever source has room first. Per peer it follows how fast answers come (see
/// [`Window`]): a fast link keeps 64 (16 MiB of 256 KiB chunks) in flight, a slow one few, so that
/// it is not handed what faster peers — or peers that announce the chunk meanwhile — could send.
const REQUESTS_PER_PEER: usize = 64;
const REQUESTS_AT_FIRST: usize = 16;
const REQUESTS_AT_LEAST: usize = 2;
/// Answers quicker than this widen a peer's window by one; slower than [`SLOW_ANSWER`] narrow it
/// by a quarter (additive increase, multiplicative decrease, as TCP's).
const QUICK_ANSWER: Duration = Duration::from_millis(100);
const SLOW_ANSWER: Duration = Duration::from_millis(300);

/// How many requests of ours a peer may have in flight, from how long its answers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window(usize);

impl Default for Window {
    fn default() -> Window {
        Window(REQUESTS_AT_FIRST)
    }
}

impl Window {
    fn answered_after(&mut self, took: Duration) {
        if took < QUICK_ANSWER {
            self.0 = (self.0 + 1).min(REQUESTS_PER_PEER);
        } else if took > SLOW_ANSWER {
            self.0 = self
                .0
                .saturating_sub((self.0 / 4).max(1))
                .max(REQUESTS_AT_LEAST);
        }
    }
}
/// A peer heard nothing from for this long is gone (a cable pulled, a partition: TCP alone can take
/// many minutes to notice). The connection is dropped and redialed with backoff.
const DEAD_AFTER: Duration = Duration::from_secs(30);
/// How long a connection being closed has to send its `Close` before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the peer layer needs to start.
#[derive(Debug)]
pub struct PeersConfig {
    pub identity: NodeIdentity,
    pub device_name: String,
    /// Where to accept peers (None: dial only).
    pub listen: Option<SocketAddr>,
    /// `host:port` entries dialed always: the config's `known_hosts` and `SHOAL_PEERS`. Names are
    /// re-resolved every `resolve_interval`, and every address a name resolves to is dialed.
    pub static_peers: Vec<String>,
    pub resolve_interval: Duration,
    /// LAN discovery by multicast (`search_lan`); `None` switches it off for the whole node.
    pub lan: Option<LanConfig>,
}

/// A namespace as the peer layer sees it.
#[derive(Clone, Debug)]
pub struct Share {
    pub name: String,
    /// The namespace's directory, where chunks asked for by peers are read (shared with each
    /// request).
    pub root: Arc<std::path::Path>,
    pub secret: Secret,
    pub index: Arc<Index>,
    /// This namespace's own `known_hosts`.
    pub known_hosts: Vec<String>,
    /// Announce and look for this namespace on the LAN (`search_lan`).
    pub search_lan: bool,
}

/// One peer of one namespace, as `ctl status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub node_id: String,
    pub device_name: String,
    pub address: String,
    pub direction: &'static str,
    pub state: &'static str,
    pub connected_for_s: u64,
    /// Seconds since anything arrived from this peer.
    pub last_seen_s: u64,
    /// Bytes of frames on the connection to this peer (all namespaces share one connection).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub records_sent: u64,
    pub records_received: u64,
    /// Records refused (bad signature: e.g. changes made on a read-only node).
    pub records_refused: u64,
}

/// The node's bandwidth limits, shared by every session.
#[derive(Clone, Debug, Default)]
struct Limits {
    download: Arc<RateLimit>,
    upload: Arc<RateLimit>,
}

enum Cmd {
    AddShare(Share, oneshot::Sender<()>),
    RemoveShare(ShareId, oneshot::Sender<()>),
    Status(oneshot::Sender<BTreeMap<String, Vec<PeerStatus>>>),
    Addresses(Vec<SocketAddr>),
    Accepted(Result<Session, String>, SocketAddr),
    Dialed(SocketAddr, Result<Session, String>),
    FromPeer(u64, Event),
    Sent(u64, ShareId, u64),
    Received(u64, ShareId, u64, u64),
    /// Entries of a session's peer that could not be rebuilt from a splice: ask for them again.
    Resend(u64, ShareId, Vec<String>),
    Fetch(Fetch),
    /// This node now holds these chunks of files being assembled: tell the share's members.
    Have(ShareId, Vec<Hash>),
    /// This node is indexing a large new file: tell the share's members what it found so far.
    Preview(ShareId, Arc<shoal_index::Preview>),
}

/// A request for one chunk of `share` from one of `sources`.
struct Fetch {
    share: ShareId,
    hash: Hash,
    sources: Vec<NodeId>,
    /// The hashes of the pieces of what this node holds in the chunk's place, if it asks for the
    /// pieces that differ (`ChunkNear`).
    near: Option<Vec<PieceHash>>,
    reply: oneshot::Sender<Result<Answer, FetchError>>,
}

/// What a peer sent for a chunk request.
enum Answer {
    Whole(Vec<u8>),
    /// The pieces that differ from what the asker holds: their indices, their bytes.
    Pieces(Vec<u32>, Vec<u8>),
}

/// A chunk request sent and not yet answered.
struct Pending {
    session: u64,
    /// Sent on a `Have` hint rather than to a node whose index lists the chunk.
    hinted: bool,
    since: Instant,
    reply: oneshot::Sender<Result<Answer, FetchError>>,
}

/// A request unanswered for this long fails, and the caller tries another peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A request sent on a hint fails sooner: the chunk is then asked of the nodes whose index lists
/// it (a peer frozen while assembling the file must not hold its neighbours up for a minute).
const HINTED_TIMEOUT: Duration = Duration::from_secs(4);
/// How often requests are checked for having waited too long.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// A handle on the peer manager.
#[derive(Clone, Debug)]
pub struct Peers {
    tx: mpsc::Sender<Cmd>,
    limits: Limits,
    local_addr: Option<SocketAddr>,
    node_id: NodeId,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl Peers {
    /// Binds the listener (if any) and starts the manager; it stops when `stop` turns true.
    pub async fn start(
        config: PeersConfig,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(Peers, JoinHandle<()>)> {
        let listener = match config.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?),
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let tls =
            TlsSetup::new(&config.identity).map_err(|e| std::io::Error::other(e.to_string()))?;
        let node_id = config.identity.node_id();
        let (tx, rx) = mpsc::channel(256);
        let limits = Limits::default();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node_id,
            device_name: config.device_name.clone(),
            listen_port: local_addr.map_or(0, |a| a.port()),
        };
        let manager = Manager {
            tls: Arc::new(tls),
            hello,
            node_id,
            tx: tx.clone(),
            shares: HashMap::new(),
            sessions: HashMap::new(),
            by_node: HashMap::new(),
            next_id: 1,
            candidates: HashMap::new(),
            myself: HashSet::new(),
            static_peers: config.static_peers,
            share_hosts: HashMap::new(),
            pending: HashMap::new(),
            next_request: 1,
            limits: limits.clone(),
            lan_shares: None,
            serving: Arc::new(tokio::sync::Semaphore::new(chunks::MAX_SERVING)),
            pings: 0,
            in_flight: HashMap::new(),
            deferred: VecDeque::new(),
            windows: HashMap::new(),
        };
        let (lan_shares, lan_rx) = watch::channel(Vec::new());
        if let (Some(lan), Some(addr)) = (config.lan, local_addr) {
            let (found_tx, mut found) = mpsc::channel(64);
            tokio::spawn(lan::run(
                lan,
                node_id,
                addr.port(),
                lan_rx,
                found_tx,
                stop.clone(),
            ));
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(addr) = found.recv().await {
                    if tx.send(Cmd::Addresses(vec![addr])).await.is_err() {
                        return;
                    }
                }
            });
        }
        let mut manager = manager;
        manager.lan_shares = Some(lan_shares);
        let handle = tokio::spawn(manager.run(rx, listener, stop, config.resolve_interval));
        Ok((
            Peers {
                tx,
                limits,
                local_addr,
                node_id,
            },
            handle,
        ))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Starts sharing a namespace: joined on every session at once (a namespace added live is
    /// announced live).
    pub async fn add_share(&self, share: Share) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::AddShare(share, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Fetches chunk `hash` of `share` from one of `sources` (the connected one with the fewest
    /// requests in flight, so that a node filling up spreads its requests over every peer that has
    /// the data). The bytes are the peer's answer: the caller verifies them.
    pub async fn fetch(
        &self,
        share: ShareId,
        hash: Hash,
        sources: Vec<NodeId>,
    ) -> Result<Vec<u8>, FetchError> {
        match self.ask(share, hash, sources, None).await? {
            Answer::Whole(bytes) => Ok(bytes),
            Answer::Pieces(..) => Err(FetchError::Unfit),
        }
    }

    /// [`Peers::fetch`] for a chunk of `len` bytes where this node holds `near` — what was in
    /// its place before the file changed: a peer that speaks protocol 4 sends only the
    /// [`PIECE`](shoal_core::chunk::PIECE)s that differ, put together here with the rest of
    /// `near`. The caller verifies the bytes as for any fetch: a piece of `near` that merely
    /// hashed alike would show there.
    pub async fn fetch_near(
        &self,
        share: ShareId,
        hash: Hash,
        sources: Vec<NodeId>,
        mut near: Vec<u8>,
        len: u32,
    ) -> Result<Vec<u8>, FetchError> {
        near.truncate(len as usize);
        // Hashing up to a chunk's worth is not for the async threads.
        let (near, pieces) = tokio::task::spawn_blocking(move || {
            let pieces = shoal_core::chunk::piece_hashes(&near);
            (near, pieces)
        })
        .await
        .map_err(|_| FetchError::Stopped)?;
        match self.ask(share, hash, sources, Some(pieces)).await? {
            Answer::Whole(bytes) => Ok(bytes),
            Answer::Pieces(indices, bytes) => {
                shoal_core::chunk::patched(&near, len as usize, &indices, &bytes)
                    .ok_or(FetchError::Unfit)
            }
        }
    }

    async fn ask(
        &self,
        share: ShareId,
        hash: Hash,
        sources: Vec<NodeId>,
        near: Option<Vec<PieceHash>>,
    ) -> Result<Answer, FetchError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Fetch(Fetch {
            share,
            hash,
            sources,
            near,
            reply,
        });
        if self.tx.send(cmd).await.is_err() {
            return Err(FetchError::Stopped);
        }
        let answer = rx.await.unwrap_or(Err(FetchError::Stopped))?;
        let received = match &answer {
            Answer::Whole(bytes) | Answer::Pieces(_, bytes) => bytes.len(),
        };
        self.limits.download.take(received as u64).await;
        Ok(answer)
    }

    /// Tells the members of `share` that this node now holds `hashes` (chunks of files it is still
    /// assembling; see [`Message::Have`]). For blocking threads (a file's writer): waits while
    /// the manager's queue is full (news dropped there left peers asking the file's source for
    /// chunks a neighbour had).
    pub fn announce_blocking(&self, share: ShareId, hashes: Vec<Hash>) {
        let _ = self.tx.blocking_send(Cmd::Have(share, hashes));
    }

    /// Sets the node's bandwidth limits in kB/s (0: unlimited); applies at once to every transfer.
    pub fn set_limits(&self, download_kbps: u64, upload_kbps: u64) {
        self.limits.download.set_kbps(download_kbps);
        self.limits.upload.set_kbps(upload_kbps);
    }

    pub async fn remove_share(&self, share: ShareId) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::RemoveShare(share, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Peers per namespace name.
    pub async fn status(&self) -> BTreeMap<String, Vec<PeerStatus>> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Status(tx)).await.is_err() {
            return BTreeMap::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct ShareState {
    share: Share,
    /// Sessions (by id) whose peer proved it holds this share.
    members: HashSet<u64>,
    /// Peers that were members and are gone, shown as disconnected with when they were last seen.
    former: HashMap<NodeId, Former>,
    /// Chunks members hold in files they are still assembling.
    hints: Hints,
    /// Hands this node's previews of large files being indexed to the manager (read-write
    /// holders only: a read-only holder's files never become records). Held to end with it.
    #[allow(dead_code, reason = "held only for its Drop, which ends the task")]
    previews: Option<Aborting>,
}

/// A task that ends with its owner.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The last that was known of a disconnected member.
struct Former {
    device_name: String,
    address: String,
    last_seen: Instant,
    bytes_sent: u64,
    bytes_received: u64,
    records_sent: u64,
    records_received: u64,
    records_refused: u64,
}

/// How many disconnected peers a namespace remembers (the most recently seen are kept).
const MAX_FORMER: usize = 64;

struct Member {
    pusher: JoinHandle<()>,
    /// Paths the peer asked for again (`IndexResend`), to the pusher.
    again: mpsc::UnboundedSender<Vec<String>>,
    /// Stores the last index message received, after the one before it (see [`Member::store`]).
    storing: Option<JoinHandle<()>>,
    records_sent: u64,
    records_received: u64,
    records_refused: u64,
}

struct SessionState {
    peer: NodeId,
    device_name: String,
    addr: SocketAddr,
    /// Where the peer accepts connections (its address with its `listen_port`), for peer exchange.
    listen_addr: Option<SocketAddr>,
    /// The protocol version it speaks (from its `Hello`).
    version: u32,
    outgoing: bool,
    /// The address we dialed, to redial when the session ends.
    dialed: Option<SocketAddr>,
    conn: Arc<Connection>,
    join: shoal_net::JoinContext,
    since: Instant,
    last_seen: Instant,
    shares: HashMap<ShareId, Member>,
    reader: JoinHandle<()>,
    /// Answers this peer's chunk requests.
    server: chunks::Server,
}

struct Candidate {
    backoff: Backoff,
    next_at: Instant,
    dialing: bool,
    /// Once seen, the node at this address.
    node: Option<NodeId>,
}

struct Manager {
    tls: Arc<TlsSetup>,
    hello: Hello,
    node_id: NodeId,
    tx: mpsc::Sender<Cmd>,
    shares: HashMap<ShareId, ShareState>,
    sessions: HashMap<u64, SessionState>,
    by_node: HashMap<NodeId, u64>,
    next_id: u64,
    candidates: HashMap<SocketAddr, Candidate>,
    /// Addresses that turned out to be this node.
    myself: HashSet<SocketAddr>,
    static_peers: Vec<String>,
    share_hosts: HashMap<ShareId, Vec<String>>,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    limits: Limits,
    /// The shares announced on the LAN.
    lan_shares: Option<watch::Sender<Vec<ShareId>>>,
    serving: Arc<tokio::sync::Semaphore>,
    /// Keepalive rounds so far.
    pings: u64,
    /// Requests of ours in flight per session.
    in_flight: HashMap<u64, usize>,
    /// Requests waiting for a source with room (see [`Manager::start_fetch`]).
    deferred: VecDeque<Fetch>,
    /// Requests of ours each session may have in flight.
    windows: HashMap<u64, Window>,
}

impl Manager {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        listener: Option<TcpListener>,
        mut stop: watch::Receiver<bool>,
        resolve_interval: Duration,
    ) {
        if let Some(listener) = listener {
            let tx = self.tx.clone();
            let tls = self.tls.clone();
            let hello = self.hello.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, addr)) => {
                                let (tx, tls, hello) = (tx.clone(), tls.clone(), hello.clone());
                                tokio::spawn(async move {
                                    let session = shoal_net::accept(&tls, tcp, &hello).await.map_err(|e| e.to_string());
                                    let _ = tx.send(Cmd::Accepted(session, addr)).await;
                                });
                            }
                            Err(e) => {
                                warn!("accepting a peer connection: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            });
        }
        let mut tick = tokio::time::interval(DIAL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resolve = tokio::time::interval(resolve_interval);
        resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval(EXPIRY_TICK);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => self.dial_due(),
                _ = ping.tick() => self.keepalive().await,
                _ = expiry.tick() => self.expire_requests(),
                _ = resolve.tick() => self.resolve_hosts(),
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(cmd) => self.handle(cmd).await,
                },
            }
        }
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            self.drop_session(id, Some("node shutting down")).await;
        }
    }

    /// Tells LAN discovery which shares to announce.
    fn announce_lan(&self) {
        if let Some(tx) = &self.lan_shares {
            let shares: Vec<ShareId> = self
                .shares
                .iter()
                .filter(|(_, st)| st.share.search_lan)
                .map(|(id, _)| *id)
                .collect();
            tx.send_replace(shares);
        }
    }

    /// Sends a chunk request to the least busy connected source, or keeps it for later when
    /// every source already has its window of ours ([`Window`]): which peer gets it is then
    /// decided when one has room, by what is known then (a peer may have announced the chunk
    /// meanwhile).
    fn start_fetch(&mut self, fetch: Fetch) {
        if fetch.reply.is_closed() {
            return; // the puller gave up on it
        }
        let Some(state) = self.shares.get(&fetch.share) else {
            let _ = fetch.reply.send(Err(FetchError::NoSource));
            return;
        };
        let busy = |sid: &u64| self.in_flight.get(sid).copied().unwrap_or(0);
        // Members still assembling the file that said they have the chunk come first (a tie
        // goes to them, sparing the file's source), then the nodes whose index lists it.
        let hinted: Vec<u64> = state.hints.holders(&fetch.hash).collect();
        let candidates: Vec<u64> = hinted
            .iter()
            .chain(
                fetch
                    .sources
                    .iter()
                    .filter_map(|node| self.by_node.get(node)),
            )
            .filter(|sid| state.members.contains(sid))
            .copied()
            .collect();
        if candidates.is_empty() {
            let _ = fetch.reply.send(Err(FetchError::NoSource));
            return;
        }
        // The least busy of those with room; none has room: later.
        let chosen = candidates
            .iter()
            .filter(|sid| busy(sid) < self.window(**sid).0)
            .min_by_key(|sid| busy(sid))
            .copied();
        let Some(sid) = chosen else {
            self.deferred.push_back(fetch);
            return;
        };
        let on_hint = hinted.contains(&sid);
        if on_hint && let Some(state) = self.shares.get_mut(&fetch.share) {
            state.hints.used(&fetch.hash, sid);
        }
        let Some(s) = self.sessions.get(&sid) else {
            let _ = fetch.reply.send(Err(FetchError::NoSource));
            return;
        };
        let id = self.next_request;
        self.next_request += 1;
        let request = match fetch.near {
            Some(pieces) if s.version >= 4 => Message::ChunkNear {
                share_id: fetch.share,
                hash: fetch.hash.0,
                id,
                pieces,
            },
            _ => Message::ChunkRequest {
                share_id: fetch.share,
                hash: fetch.hash.0,
                id,
            },
        };
        if s.conn.try_send(&request).is_err() {
            let _ = fetch.reply.send(Err(FetchError::Disconnected));
            return;
        }
        *self.in_flight.entry(sid).or_default() += 1;
        self.pending.insert(
            id,
            Pending {
                session: sid,
                hinted: on_hint,
                since: Instant::now(),
                reply: fetch.reply,
            },
        );
    }

    fn window(&self, session: u64) -> Window {
        self.windows.get(&session).copied().unwrap_or_default()
    }

    /// Request `id` is over (answered, timed out, or its session gone): its peer has room for
    /// another.
    fn finish_request(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(n) = self.in_flight.get_mut(&p.session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(&p.session);
            }
        }
        Some(p)
    }

    /// Tries the requests kept for later again, in the order they came.
    fn start_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.deferred);
        let mut rest = waiting.into_iter();
        for fetch in rest.by_ref() {
            self.start_fetch(fetch);
            // Nothing more can go anywhere: stop looking (the next answer looks again).
            if self.in_flight_full() {
                break;
            }
        }
        self.deferred.extend(rest);
    }

    /// Whether every connected peer has as many of our requests as it may (then nothing
    /// deferred can be sent).
    fn in_flight_full(&self) -> bool {
        self.sessions.keys().all(|sid| {
            self.in_flight
                .get(sid)
                .is_some_and(|n| *n >= self.window(*sid).0)
        })
    }

    /// Tells every member of `share` that this node holds `hashes`. A member whose control queue
    /// is full misses the news (it still gets the chunks from their other sources).
    fn announce_have(&self, share: ShareId, hashes: Vec<Hash>) {
        let Some(state) = self.shares.get(&share) else {
            return;
        };
        for part in hashes.chunks(MAX_HAVE) {
            let have = Message::Have {
                share_id: share,
                hashes: part.iter().map(|h| h.0).collect(),
            };
            for sid in &state.members {
                if let Some(s) = self.sessions.get(sid) {
                    let _ = s.conn.try_send(&have);
                }
            }
        }
    }

    /// Tells every member of `share` that speaks protocol 3 what this node found so far of a large
    /// file it is indexing. A member whose control queue is full misses it (it then fetches the
    /// file once its record arrives).
    fn announce_preview(&self, share: ShareId, preview: &shoal_index::Preview) {
        let Some(state) = self.shares.get(&share) else {
            return;
        };
        let speaking: Vec<&SessionState> = state
            .members
            .iter()
            .filter_map(|sid| self.sessions.get(sid))
            .filter(|s| s.version >= 3)
            .collect();
        if speaking.is_empty() {
            return;
        }
        for part in preview.chunks.chunks(MAX_PREVIEW) {
            let message = Message::Preview {
                share_id: share,
                path: preview.path.clone(),
                size: preview.size,
                chunks: part
                    .iter()
                    .map(|c| PreviewChunk {
                        offset: c.offset,
                        len: c.len,
                        hash: c.hash.0,
                    })
                    .collect(),
            };
            for s in &speaking {
                let _ = s.conn.try_send(&message);
            }
        }
    }

    /// A chunk asked for by session `id`'s peer: served if it is a member of `share`, else the
    /// session is closed.
    async fn chunk_asked(
        &mut self,
        id: u64,
        share: ShareId,
        hash: Hash,
        req: u64,
        near: Option<Vec<PieceHash>>,
    ) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        if s.shares.contains_key(&share) {
            self.serve_chunk(id, share, hash, req, near);
        } else {
            warn!(peer = %s.peer.short(), "chunk request for a namespace it has not joined; closing");
            self.drop_session(id, Some("chunk request for a namespace not joined"))
                .await;
        }
    }

    /// Queues a chunk request from a member with the session's server (see [`chunks::Server`]).
    fn serve_chunk(
        &self,
        session: u64,
        share: ShareId,
        hash: Hash,
        id: u64,
        near: Option<Vec<PieceHash>>,
    ) {
        let (Some(s), Some(state)) = (self.sessions.get(&session), self.shares.get(&share)) else {
            return;
        };
        s.server.request(chunks::Request {
            id,
            hash,
            near,
            root: state.share.root.clone(),
            index: state.share.index.clone(),
        });
    }

    /// Answers a pending request, if `session` is the one it was sent on.
    fn answer(&mut self, session: u64, id: u64, result: Result<Answer, FetchError>) {
        if self.pending.get(&id).is_some_and(|p| p.session == session)
            && let Some(p) = self.finish_request(id)
        {
            self.windows
                .entry(session)
                .or_default()
                .answered_after(p.since.elapsed());
            let _ = p.reply.send(result);
            self.start_deferred();
        }
    }

    /// Fails the requests that waited too long ([`REQUEST_TIMEOUT`], [`HINTED_TIMEOUT`]); the
    /// asker then tries another node, and the slow peer's window closes to the least.
    fn expire_requests(&mut self) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                let waited = p.since.elapsed();
                waited > REQUEST_TIMEOUT || (p.hinted && waited > HINTED_TIMEOUT)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.finish_request(id) {
                self.windows.insert(p.session, Window(REQUESTS_AT_LEAST));
                let _ = p.reply.send(Err(FetchError::TimedOut));
            }
        }
        self.start_deferred();
    }

    /// Pings every peer and drops those silent for [`DEAD_AFTER`].
    async fn keepalive(&mut self) {
        self.pings += 1;
        if self.pings.is_multiple_of(HINTS_AGE_PINGS) {
            for state in self.shares.values_mut() {
                state.hints.age();
            }
        }
        let dead: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_seen.elapsed() > DEAD_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_session(id, Some("no answer for 30 s")).await;
        }
        for s in self.sessions.values() {
            // A full control queue means the peer is not reading; the timeout handles it.
            let _ = s.conn.try_send(&Message::Ping);
        }
    }

    /// Resolves every static and per-namespace host again (DNS answers change: a service name may
    /// gain a node).
    fn resolve_hosts(&self) {
        let hosts: Vec<String> = self
            .static_peers
            .iter()
            .chain(self.share_hosts.values().flatten())
            .cloned()
            .collect();
        if hosts.is_empty() {
            return;
        }
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let addrs = resolve_all(&hosts).await;
            let _ = tx.send(Cmd::Addresses(addrs)).await;
        });
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::AddShare(share, reply) => {
                self.add_share(share).await;
                self.announce_lan();
                let _ = reply.send(());
            }
            Cmd::RemoveShare(id, reply) => {
                if let Some(state) = self.shares.remove(&id) {
                    for sid in state.members {
                        if let Some(s) = self.sessions.get_mut(&sid)
                            && let Some(m) = s.shares.remove(&id)
                        {
                            m.pusher.abort();
                        }
                    }
                }
                self.share_hosts.remove(&id);
                self.announce_lan();
                let _ = reply.send(());
            }
            Cmd::Fetch(fetch) => self.start_fetch(fetch),
            Cmd::Have(share, hashes) => self.announce_have(share, hashes),
            Cmd::Preview(share, preview) => self.announce_preview(share, &preview),
            Cmd::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Cmd::Addresses(addrs) => {
                for addr in addrs {
                    self.add_candidate(addr);
                }
            }
            Cmd::Accepted(result, addr) => match result {
                Ok(session) => self.register(session, addr, None).await,
                Err(e) => debug!(%addr, "incoming connection failed: {e}"),
            },
            Cmd::Dialed(addr, result) => {
                let Some(c) = self.candidates.get_mut(&addr) else {
                    return;
                };
                c.dialing = false;
                match result {
                    Ok(session) => {
                        c.node = Some(session.peer);
                        c.backoff.reset();
                        self.register(session, addr, Some(addr)).await;
                    }
                    Err(e) => {
                        let delay = c.backoff.next_delay(jitter());
                        c.next_at = Instant::now() + delay;
                        debug!(%addr, retry_in = ?delay, "cannot reach peer: {e}");
                    }
                }
            }
            Cmd::FromPeer(id, event) => self.on_peer_event(id, event).await,
            Cmd::Sent(id, share, n) => {
                if let Some(m) = self
                    .sessions
                    .get_mut(&id)
                    .and_then(|s| s.shares.get_mut(&share))
                {
                    m.records_sent += n;
                }
            }
            Cmd::Resend(id, share, paths) => {
                if let Some(s) = self.sessions.get(&id) {
                    let conn = s.conn.clone();
                    tokio::spawn(async move {
                        for paths in paths.chunks(shoal_net::MAX_RESEND) {
                            let again = Message::IndexResend {
                                share_id: share,
                                paths: paths.to_vec(),
                            };
                            if conn.send(&again).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
            Cmd::Received(id, share, ok, refused) => {
                if let Some(m) = self
                    .sessions
                    .get_mut(&id)
                    .and_then(|s| s.shares.get_mut(&share))
                {
                    m.records_received += ok;
                    m.records_refused += refused;
                }
            }
        }
    }

    async fn add_share(&mut self, share: Share) {
        let id = share.secret.share_id();
        if !share.known_hosts.is_empty() {
            let hosts = share.known_hosts.clone();
            self.share_hosts.insert(id, hosts.clone());
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let addrs = resolve_all(&hosts).await;
                let _ = tx.send(Cmd::Addresses(addrs)).await;
            });
        }
        let ro = share.secret.read_only();
        let previews = share.secret.is_read_write().then(|| {
            let mut previews = share.index.subscribe_previews();
            let tx = self.tx.clone();
            Aborting(tokio::spawn(async move {
                loop {
                    match previews.recv().await {
                        Ok(p) => {
                            if tx.send(Cmd::Preview(id, p)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }))
        });
        self.shares.insert(
            id,
            ShareState {
                share,
                members: HashSet::new(),
                former: HashMap::new(),
                hints: Hints::default(),
                previews,
            },
        );
        for s in self.sessions.values() {
            let _ = s.conn.send(&s.join.request(&ro)).await;
        }
    }

    fn add_candidate(&mut self, addr: SocketAddr) {
        if self.myself.contains(&addr) || self.candidates.contains_key(&addr) {
            return;
        }
        self.candidates.insert(
            addr,
            Candidate {
                backoff: Backoff::new(),
                next_at: Instant::now(),
                dialing: false,
                node: None,
            },
        );
    }

    /// Dials every candidate that is due and not already connected.
    fn dial_due(&mut self) {
        let now = Instant::now();
        let connected_addrs: HashSet<SocketAddr> = self
            .sessions
            .values()
            .flat_map(|s| [Some(s.addr), s.listen_addr, s.dialed])
            .flatten()
            .collect();
        for (addr, c) in self.candidates.iter_mut() {
            if c.dialing || c.next_at > now || connected_addrs.contains(addr) {
                continue;
            }
            if c.node.is_some_and(|n| self.by_node.contains_key(&n)) {
                continue;
            }
            c.dialing = true;
            let (tls, hello, tx, addr) =
                (self.tls.clone(), self.hello.clone(), self.tx.clone(), *addr);
            tokio::spawn(async move {
                let result = shoal_net::connect(&tls, addr, None, &hello)
                    .await
                    .map_err(|e| e.to_string());
                let _ = tx.send(Cmd::Dialed(addr, result)).await;
            });
        }
    }

    async fn register(&mut self, session: Session, addr: SocketAddr, dialed: Option<SocketAddr>) {
        if session.peer == self.node_id {
            debug!(%addr, "that address is this node");
            if let Some(d) = dialed {
                self.candidates.remove(&d);
                self.myself.insert(d);
            }
            close_soon(session.conn, "connected to itself");
            return;
        }
        if let Some(&existing) = self.by_node.get(&session.peer) {
            if shoal_net::keep_new_connection(self.node_id, session.peer, session.outgoing) {
                self.drop_session(existing, Some("duplicate connection"))
                    .await;
            } else {
                close_soon(session.conn, "duplicate connection");
                return;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let Session {
            peer,
            hello,
            outgoing,
            join,
            conn,
            mut events,
        } = session;
        let tx = self.tx.clone();
        let reader = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let end = matches!(event, Event::Closed(_));
                if tx.send(Cmd::FromPeer(id, event)).await.is_err() || end {
                    return;
                }
            }
            let _ = tx
                .send(Cmd::FromPeer(id, Event::Closed(Closed::Ended)))
                .await;
        });
        let listen_addr =
            (hello.listen_port != 0).then(|| SocketAddr::new(addr.ip(), hello.listen_port));
        info!(peer = %peer.short(), device = %hello.device_name, %addr, outgoing, "peer connected");
        let conn = Arc::new(conn);
        let server = chunks::Server::start(
            conn.clone(),
            self.serving.clone(),
            self.limits.upload.clone(),
        );
        for state in self.shares.values() {
            let _ = conn
                .send(&join.request(&state.share.secret.read_only()))
                .await;
        }
        self.by_node.insert(peer, id);
        self.sessions.insert(
            id,
            SessionState {
                peer,
                device_name: hello.device_name,
                addr,
                listen_addr,
                version: hello.version,
                outgoing,
                dialed,
                conn,
                join,
                since: Instant::now(),
                last_seen: Instant::now(),
                shares: HashMap::new(),
                reader,
                server,
            },
        );
    }

    async fn drop_session(&mut self, id: u64, reason: Option<&str>) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        if self.by_node.get(&s.peer) == Some(&id) {
            self.by_node.remove(&s.peer);
        }
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.session == id)
            .map(|(req, _)| *req)
            .collect();
        for req in lost {
            if let Some(p) = self.finish_request(req) {
                let _ = p.reply.send(Err(FetchError::Disconnected));
            }
        }
        self.in_flight.remove(&id);
        self.windows.remove(&id);
        let traffic = s.conn.traffic();
        for (share, m) in s.shares {
            m.pusher.abort();
            if let Some(state) = self.shares.get_mut(&share) {
                state.members.remove(&id);
                state.hints.forget_session(id);
                state.remember(
                    s.peer,
                    Former {
                        device_name: s.device_name.clone(),
                        address: s.listen_addr.unwrap_or(s.addr).to_string(),
                        last_seen: s.last_seen,
                        bytes_sent: traffic.sent(),
                        bytes_received: traffic.received(),
                        records_sent: m.records_sent,
                        records_received: m.records_received,
                        records_refused: m.records_refused,
                    },
                );
            }
        }
        s.reader.abort();
        if let Some(d) = s.dialed
            && let Some(c) = self.candidates.get_mut(&d)
        {
            c.next_at = Instant::now() + c.backoff.next_delay(jitter());
        }
        info!(peer = %s.peer.short(), device = %s.device_name, reason = reason.unwrap_or("closed"), "peer disconnected");
        // Tell the peer why when it still listens, then end the connection for every holder:
        // answers waiting for room in its queues hold it too, and a dead peer's link would keep
        // them (and a graceful close awaited here, the whole actor) waiting until TCP gives up.
        let conn = s.conn;
        match reason {
            Some(reason) => {
                let _ = conn.try_send(&Message::Close {
                    reason: reason.to_owned(),
                });
                tokio::spawn(async move {
                    tokio::time::sleep(CLOSE_GRACE).await;
                    conn.abort();
                });
            }
            None => conn.abort(),
        }
    }

    async fn on_peer_event(&mut self, id: u64, event: Event) {
        let message = match event {
            Event::Message(m) => m,
            Event::Closed(why) => {
                let reason = match why {
                    Closed::ByPeer(r) => format!("closed by peer: {r}"),
                    Closed::Ended => "connection ended".to_owned(),
                    Closed::Error(e) => e,
                };
                if self.sessions.contains_key(&id) {
                    debug!(session = id, "{reason}");
                    self.drop_session(id, None).await;
                }
                return;
            }
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.last_seen = Instant::now();
        match message {
            Message::Join { share_id, proof } => {
                let ours = self
                    .shares
                    .get(&share_id)
                    .map(|st| st.share.secret.read_only());
                let reply = s.join.respond(share_id, &proof, ours.as_ref());
                let accepted = matches!(reply, Message::JoinOk { .. });
                let _ = s.conn.send(&reply).await;
                if accepted {
                    self.become_member(id, share_id).await;
                }
            }
            Message::JoinOk { share_id, proof } => {
                let ok = self
                    .shares
                    .get(&share_id)
                    .is_some_and(|st| s.join.accepted(&st.share.secret.read_only(), &proof));
                if ok {
                    self.become_member(id, share_id).await;
                } else {
                    warn!(peer = %s.peer.short(), "a JoinOk with a bad proof; closing");
                    self.drop_session(id, Some("bad join proof")).await;
                }
            }
            Message::JoinRefused { share_id, .. } => {
                if let Some(st) = self.shares.get(&share_id) {
                    debug!(peer = %s.peer.short(), namespace = %st.share.name, "peer does not share this namespace (or holds another secret)");
                }
            }
            Message::IndexFull {
                share_id, records, ..
            }
            | Message::IndexUpdate {
                share_id, records, ..
            } => {
                if !s.shares.contains_key(&share_id) {
                    warn!(peer = %s.peer.short(), "index for a namespace it has not joined; closing");
                    self.drop_session(id, Some("index for a namespace not joined"))
                        .await;
                    return;
                }
                let Some(st) = self.shares.get(&share_id) else {
                    return;
                };
                let Some(member) = s.shares.get_mut(&share_id) else {
                    return;
                };
                let index = st.share.index.clone();
                let key = st.share.secret.read_only().verifying_key();
                let name = st.share.name.clone();
                let peer = s.peer;
                let format = record::Format::of(s.version);
                let tx = self.tx.clone();
                member.store(move || {
                    let mut accepted = Vec::with_capacity(records.len());
                    let mut again = Vec::new();
                    let mut refused = 0u64;
                    let mut why = None;
                    for r in &records {
                        match record::open_batch(r, &key, format) {
                            Ok(entries) => {
                                for e in entries {
                                    match e {
                                        Ok(received) => match rebuilt(&index, &peer.0, received) {
                                            Ok(entry) => accepted.push(entry),
                                            Err(path) => again.push(path),
                                        },
                                        Err(e) => {
                                            refused += 1;
                                            why.get_or_insert(e);
                                        }
                                    }
                                }
                            }
                            Err(e) => {
                                refused += 1;
                                why.get_or_insert(e);
                            }
                        }
                    }
                    if let Some(why) = why {
                        warn!(peer = %peer.short(), namespace = %name, refused, "refused records: {why} (changes made where only the read-only secret is held are never accepted)");
                    }
                    if let Err(e) = index.put_remote(&peer.0, &accepted) {
                        warn!(namespace = %name, "cannot store a peer's index: {e}");
                    }
                    if !again.is_empty() {
                        debug!(peer = %peer.short(), namespace = %name, paths = again.len(), "entries not rebuilt from the versions held here: asked for again");
                        let _ = tx.blocking_send(Cmd::Resend(id, share_id, again));
                    }
                    let _ = tx.blocking_send(Cmd::Received(
                        id,
                        share_id,
                        accepted.len() as u64,
                        refused,
                    ));
                });
            }
            Message::IndexResend { share_id, paths } => match s.shares.get(&share_id) {
                Some(member) => {
                    let paths = paths.into_iter().take(shoal_net::MAX_RESEND).collect();
                    let _ = member.again.send(paths);
                }
                None => {
                    warn!(peer = %s.peer.short(), "IndexResend for a namespace it has not joined; closing");
                    self.drop_session(id, Some("IndexResend for a namespace not joined"))
                        .await;
                }
            },
            Message::Peers { share_id, addrs } => {
                if s.shares.contains_key(&share_id) {
                    for addr in addrs {
                        self.add_candidate(addr);
                    }
                }
            }
            Message::ChunkRequest {
                share_id,
                hash,
                id: req,
            } => self.chunk_asked(id, share_id, Hash(hash), req, None).await,
            Message::ChunkNear {
                share_id,
                hash,
                id: req,
                mut pieces,
            } => {
                pieces.truncate(shoal_net::MAX_PIECES);
                self.chunk_asked(id, share_id, Hash(hash), req, Some(pieces))
                    .await;
            }
            Message::Have { share_id, hashes } => {
                if !s.shares.contains_key(&share_id) {
                    warn!(peer = %s.peer.short(), "chunk news for a namespace it has not joined; closing");
                    self.drop_session(id, Some("Have for a namespace not joined"))
                        .await;
                    return;
                }
                if let Some(state) = self.shares.get_mut(&share_id) {
                    state
                        .hints
                        .add(id, hashes.into_iter().take(MAX_HAVE).map(Hash));
                }
            }
            Message::Preview {
                share_id,
                path,
                size,
                chunks,
            } => {
                if !s.shares.contains_key(&share_id) {
                    warn!(peer = %s.peer.short(), "preview for a namespace it has not joined; closing");
                    self.drop_session(id, Some("Preview for a namespace not joined"))
                        .await;
                    return;
                }
                if !record::safe_path(&path) {
                    debug!(peer = %s.peer.short(), "preview of an unsafe path ignored");
                    return;
                }
                if let Some(state) = self.shares.get(&share_id) {
                    let chunks = chunks
                        .into_iter()
                        .take(MAX_PREVIEW)
                        .map(|c| Chunk {
                            offset: c.offset,
                            len: c.len,
                            hash: Hash(c.hash),
                        })
                        .collect();
                    state.share.index.previewed(s.peer.0, path, size, chunks);
                }
            }
            Message::ChunkData { id: req, bytes } => self.answer(id, req, Ok(Answer::Whole(bytes))),
            Message::ChunkPieces {
                id: req,
                pieces,
                bytes,
            } => self.answer(id, req, Ok(Answer::Pieces(pieces, bytes))),
            Message::ChunkUnavailable { id: req } => {
                self.answer(id, req, Err(FetchError::Unavailable));
            }
            Message::Ping => {}
            Message::Hello(_) => {
                self.drop_session(id, Some("unexpected Hello")).await;
            }
            Message::Close { reason } => {
                debug!(session = id, "peer closing: {reason}");
                self.drop_session(id, None).await;
            }
        }
    }

    /// The peer proved it holds `share`: stream our index to it and tell it who else shares it.
    async fn become_member(&mut self, id: u64, share: ShareId) {
        let Some(state) = self.shares.get_mut(&share) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.shares.contains_key(&share) {
            return;
        }
        state.members.insert(id);
        state.former.remove(&s.peer);
        info!(peer = %s.peer.short(), device = %s.device_name, namespace = %state.share.name, "peer joined namespace");
        let (again, asked) = mpsc::unbounded_channel();
        let pusher = tokio::spawn(push_index(
            Push {
                conn: s.conn.clone(),
                share,
                index: state.share.index.clone(),
                tx: self.tx.clone(),
                session: id,
                peer: s.peer.0,
                format: record::Format::of(s.version),
            },
            state.share.secret.signing_key(),
            asked,
        ));
        s.shares.insert(
            share,
            Member {
                pusher,
                again,
                storing: None,
                records_sent: 0,
                records_received: 0,
                records_refused: 0,
            },
        );
        // Peer exchange: everyone who shares it learns of everyone else.
        let members: Vec<u64> = state.members.iter().copied().collect();
        let addrs_of = |sid: &u64| self.sessions.get(sid).and_then(|s| s.listen_addr);
        let all: Vec<SocketAddr> = members.iter().filter_map(addrs_of).collect();
        for sid in &members {
            let Some(s) = self.sessions.get(sid) else {
                continue;
            };
            let others: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| Some(*a) != s.listen_addr)
                .collect();
            if !others.is_empty() {
                let _ = s
                    .conn
                    .send(&Message::Peers {
                        share_id: share,
                        addrs: others,
                    })
                    .await;
            }
        }
    }

    fn status(&self) -> BTreeMap<String, Vec<PeerStatus>> {
        let mut out = BTreeMap::new();
        for (share_id, state) in &self.shares {
            let mut peers = Vec::new();
            for sid in &state.members {
                let Some(s) = self.sessions.get(sid) else {
                    continue;
                };
                let m = s.shares.get(share_id);
                let traffic = s.conn.traffic();
                peers.push(PeerStatus {
                    node_id: s.peer.to_string(),
                    device_name: s.device_name.clone(),
                    address: s.listen_addr.unwrap_or(s.addr).to_string(),
                    direction: if s.outgoing { "outgoing" } else { "incoming" },
                    state: "connected",
                    connected_for_s: s.since.elapsed().as_secs(),
                    last_seen_s: s.last_seen.elapsed().as_secs(),
                    bytes_sent: traffic.sent(),
                    bytes_received: traffic.received(),
                    records_sent: m.map_or(0, |m| m.records_sent),
                    records_received: m.map_or(0, |m| m.records_received),
                    records_refused: m.map_or(0, |m| m.records_refused),
                });
            }
            for (node, f) in &state.former {
                peers.push(PeerStatus {
                    node_id: node.to_string(),
                    device_name: f.device_name.clone(),
                    address: f.address.clone(),
                    direction: "none",
                    state: "disconnected",
                    connected_for_s: 0,
                    last_seen_s: f.last_seen.elapsed().as_secs(),
                    bytes_sent: f.bytes_sent,
                    bytes_received: f.bytes_received,
                    records_sent: f.records_sent,
                    records_received: f.records_received,
                    records_refused: f.records_refused,
                });
            }
            peers.sort_by(|a, b| {
                (a.state, &a.device_name, &a.node_id).cmp(&(b.state, &b.device_name, &b.node_id))
            });
            out.insert(state.share.name.clone(), peers);
        }
        out
    }
}

impl Member {
    /// Runs `work` (storing one index message) on the blocking pool once the previous message's
    /// has finished. A peer's messages are stored in the order it sent them: stored side by side,
    /// a message that carried a file's older version could be committed after the next one, and
    /// this node would take the peer to hold that older version until the file changed again
    /// (a large `IndexFull` followed by a small update made that likely).
    fn store(&mut self, work: impl FnOnce() + Send + 'static) {
        let before = self.storing.take();
        self.storing = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            let _ = tokio::task::spawn_blocking(work).await;
        }));
    }
}

impl ShareState {
    fn remember(&mut self, node: NodeId, former: Former) {
        self.former.insert(node, former);
        if self.former.len() > MAX_FORMER
            && let Some(oldest) = self
                .former
                .iter()
                .min_by_key(|(_, f)| f.last_seen)
                .map(|(n, _)| *n)
        {
            self.former.remove(&oldest);
        }
    }
}

/// A received entry with its chunks rebuilt if they came as a splice — from this node's own
/// version of the path or the peer's previous one, whichever the splice names; its path if
/// neither is that version any more (it is then asked for again, whole).
fn rebuilt(
    index: &Index,
    peer: &PeerKey,
    received: record::Received,
) -> Result<(String, Entry), String> {
    let base = received.base().and_then(|hash| {
        let path = received.path();
        let is_base = |e: &Entry| e.is_live() && e.kind == Kind::File && e.hash == *hash;
        let own = index.get(path).ok().flatten().filter(is_base);
        own.or_else(|| index.remote_get(peer, path).ok().flatten().filter(is_base))
            .map(|e| e.chunks)
    });
    let path = received.path().to_owned();
    received.rebuilt(base.as_deref()).ok_or(path)
}

/// What streams this node's index of one namespace to one peer.
struct Push {
    conn: Arc<Connection>,
    share: ShareId,
    index: Arc<Index>,
    tx: mpsc::Sender<Cmd>,
    session: u64,
    /// The peer's node: large files are spliced from its own versions, as it announced them.
    peer: PeerKey,
    format: record::Format,
}

/// Streams this node's index of `share` to one peer: everything once, then every new change, and
/// whole the entries it asks for again (`asked`). A node holding only the read-only secret cannot
/// sign, so it announces nothing.
async fn push_index(
    push: Push,
    key: Option<ed25519_dalek::SigningKey>,
    mut asked: mpsc::UnboundedReceiver<Vec<String>>,
) {
    let Some(key) = key else {
        return;
    };
    let key = Arc::new(key);
    let mut changed = push.index.subscribe();
    let mut sent = 0u64;
    let mut waiting = None;
    loop {
        // Asked for before anything was sent: the whole index is on its way anyway.
        let again = waiting
            .take()
            .or_else(|| asked.try_recv().ok())
            .filter(|_| sent > 0);
        let resending = again.is_some();
        let (index, after, key, peer, format) = (
            push.index.clone(),
            sent,
            key.clone(),
            push.peer,
            push.format,
        );
        let signed = tokio::task::spawn_blocking(move || -> Result<_, IndexError> {
            let changes = match again {
                // As they are now, every chunk listed (spliced from nothing).
                Some(paths) => {
                    let mut entries = Vec::new();
                    for path in paths {
                        if let Some(e) = index.get(&path)? {
                            entries.push((path, e));
                        }
                    }
                    return Ok(signed(entries, &key, format, |_| None));
                }
                None => index.changes_since(after, RECORDS_PER_MESSAGE)?,
            };
            Ok(signed(changes, &key, format, |path| {
                index.remote_get(&peer, path).ok().flatten()
            }))
        })
        .await;
        let batches = match signed {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                warn!("reading the index to send: {e}");
                return;
            }
            Err(_) => return,
        };
        if batches.is_empty() {
            if resending {
                continue;
            }
            tokio::select! {
                up = changed.changed() => if up.is_err() {
                    return;
                },
                paths = asked.recv() => match paths {
                    Some(paths) => waiting = Some(paths),
                    None => return,
                },
            }
            continue;
        }
        for (last, n, record) in batches {
            let records: Vec<_> = record.into_iter().collect();
            let message = if sent == 0 && !resending {
                Message::IndexFull {
                    share_id: push.share,
                    seq: last,
                    records,
                }
            } else {
                Message::IndexUpdate {
                    share_id: push.share,
                    since_seq: sent,
                    records,
                }
            };
            if let Err(e) = push.conn.send(&message).await {
                warn!("cannot send index records: {e}");
                return;
            }
            let _ = push.tx.send(Cmd::Sent(push.session, push.share, n)).await;
            // Entries sent again may be newer than what was sent in order: changes between are
            // still to send.
            if !resending {
                sent = sent.max(last);
            }
        }
    }
}

/// Entries as signed records of about [`INDEX_MESSAGE_BYTES`] each, with the highest sequence
/// number and the count of entries in each.
fn signed(
    entries: Vec<(String, Entry)>,
    key: &ed25519_dalek::SigningKey,
    format: record::Format,
    base: impl Fn(&str) -> Option<Entry>,
) -> Vec<(u64, u64, Option<shoal_net::SignedRecord>)> {
    size_bounded(entries)
        .into_iter()
        .map(|batch| {
            let last = batch.iter().map(|(_, e)| e.seq).max().unwrap_or(0);
            let record = record::sign_batch(&batch, key, format, &base);
            (last, batch.len() as u64, record)
        })
        .collect()
}

/// Encoded bytes per index message, well under the frame limit.
const INDEX_MESSAGE_BYTES: usize = 4 << 20;

/// Splits changes into batches of at most about [`INDEX_MESSAGE_BYTES`] encoded (a single entry
/// may exceed it: a file of ~100 GiB has a chunk list that large).
fn size_bounded(changes: Vec<(String, Entry)>) -> Vec<Vec<(String, Entry)>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (path, entry) in changes {
        let size = 96
            + path.len()
            + entry.target.as_ref().map_or(0, String::len)
            + entry.chunks.len() * 38
            + entry.version.iter().count() * 20;
        if !batch.is_empty() && bytes + size > INDEX_MESSAGE_BYTES {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push((path, entry));
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// The port dialed when a host entry names none (BitTorrent Sync's and btsync.docker's).
pub const DEFAULT_PORT: u16 = 55555;

/// `host`, `host:port`, `1.2.3.4`, `::1` or `[::1]:port`, with [`DEFAULT_PORT`] when none is given.
pub fn with_default_port(host: &str) -> String {
    let host = host.trim();
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        SocketAddr::new(ip, DEFAULT_PORT).to_string()
    } else if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{DEFAULT_PORT}")
    }
}

/// Resolves host entries; a name that resolves to several addresses yields them all.
pub async fn resolve_all(hosts: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for host in hosts {
        let host = with_default_port(host);
        match tokio::net::lookup_host(host.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => warn!(host, "cannot resolve peer address: {e}"),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// Closes a connection off the actor: a peer that does not read cannot hold the actor up.
fn close_soon(conn: Connection, reason: &'static str) {
    tokio::spawn(async move {
        // Dropping the connection when the time is up cuts it.
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.close(reason)).await;
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn a_peers_window_follows_how_fast_it_answers() {
        let mut w = Window::default();
        for _ in 0..100 {
            w.answered_after(Duration::from_millis(5));
        }
        assert_eq!(w, Window(REQUESTS_PER_PEER), "a fast peer gets the most");
        w.answered_after(Duration::from_millis(200));
        assert_eq!(w, Window(REQUESTS_PER_PEER), "in between: unchanged");
        w.answered_after(Duration::from_secs(1));
        assert_eq!(w, Window(REQUESTS_PER_PEER * 3 / 4));
        for _ in 0..100 {
            w.answered_after(Duration::from_secs(2));
        }
        assert_eq!(w, Window(REQUESTS_AT_LEAST), "a slow peer still gets some");
        w.answered_after(Duration::from_millis(1));
        assert_eq!(w, Window(REQUESTS_AT_LEAST + 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peers_index_messages_are_stored_in_the_order_sent() {
        let mut m = Member {
            pusher: tokio::spawn(async {}),
            again: mpsc::unbounded_channel().0,
            storing: None,
            records_sent: 0,
            records_received: 0,
            records_refused: 0,
        };
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        for i in 0..8u64 {
            let order = order.clone();
            // The first messages take longest (a large IndexFull before small updates).
            m.store(move || {
                std::thread::sleep(Duration::from_millis(40 - 5 * i));
                order.lock().unwrap().push(i);
            });
        }
        m.storing.take().unwrap().await.unwrap();
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn host_entries_get_the_default_port() {
        assert_eq!(with_default_port("node1"), "node1:55555");
        assert_eq!(with_default_port("node1:4000"), "node1:4000");
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:55555");
        assert_eq!(with_default_port("::1"), "[::1]:55555");
        assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
    }

    #[tokio::test]
    async fn resolving_keeps_every_address() {
        // Only names /etc/hosts answers: tests never ask a public DNS server.
        let addrs = resolve_all(&["127.0.0.1:1".into(), "localhost:2".into()]).await;
        assert!(addrs.contains(&"127.0.0.1:1".parse().unwrap()));
        assert!(addrs.iter().any(|a| a.port() == 2));
    }
}
