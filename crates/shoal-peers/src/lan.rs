//! LAN discovery (`search_lan`): nodes announce themselves by UDP multicast, and a node that hears
//! an announcement for one of its namespaces reports the announcer's address so the peer manager
//! can dial it (over TLS on TCP, like any other candidate — nothing here is trusted beyond that).
//!
//! # Datagram
//!
//! All integers big-endian; at most 8 + 1 + 32 + 2 + 1 + 64 × 8 = 556 bytes:
//!
//! ```text
//! magic "SHOALLAN" [8] | version u8 = 1 | node ID [32] | TCP port u16 | tag count u8 (≤ 64) | tags [8] × count
//! ```
//!
//! The length must be exactly 44 + 8 × count; anything else (short, long, another magic or version,
//! more than 64 tags, port 0) is ignored. A node with more than 64 shares sends several datagrams
//! per announcement; a node with none still sends one, with no tags.
//!
//! # Tags
//!
//! A tag is [`share_tag`]: a BLAKE3 hash of the announcing node's ID, keyed by a key derived from
//! the share ID, truncated to 8 bytes. A listener computes the tags of its own shares for the
//! announcing node ID and compares. The share ID never appears in clear, and one share's tags differ
//! from node to node, so a listener without the share learns nothing — not even that two other
//! nodes hold the same namespace.
//!
//! # Scope
//!
//! The default group 239.192.83.72 is organisation-local (239.192.0.0/14) and the default TTL 1:
//! announcements never leave the local network. Setting the socket up can fail (no multicast route,
//! a container without one, no permission): the reason is logged once and the task ends; the node
//! goes on without LAN discovery.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use shoal_core::secret::ShareId;
use shoal_net::NodeId;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// The first 8 bytes of every announcement.
pub const MAGIC: &[u8; 8] = b"SHOALLAN";
/// The datagram format's version.
pub const VERSION: u8 = 1;
/// Tags per datagram; more shares take several datagrams.
pub const MAX_TAGS: usize = 64;
/// Bytes before the tags: magic, version, node ID, port, tag count.
pub const HEADER_LEN: usize = 8 + 1 + 32 + 2 + 1;
/// The BLAKE3 `derive_key` context of a share's tag key.
const TAG_CONTEXT: &str = "shoal 2026-11 lan tag v1";
/// After a failed receive, before the next (keeps a persistent error from spinning the loop).
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Where and how often to announce.
#[derive(Clone, Debug)]
pub struct LanConfig {
    /// The multicast group and port. Default: 239.192.83.72:55556 (organisation-local scope).
    pub group: SocketAddrV4,
    /// The interface address to send and join on (0.0.0.0: the system's default).
    pub interface: Ipv4Addr,
    /// Between announcements (default 30 s; the first is sent at once, and again at once whenever
    /// the set of shares changes).
    pub interval: Duration,
    /// Multicast TTL (default 1: never leaves the local network).
    pub ttl: u32,
}

impl Default for LanConfig {
    fn default() -> Self {
        LanConfig {
            group: SocketAddrV4::new(Ipv4Addr::new(239, 192, 83, 72), 55556),
            interface: Ipv4Addr::UNSPECIFIED,
            interval: Duration::from_secs(30),
            ttl: 1,
        }
    }
}

/// The 8-byte tag announcing `share` for `node`: a keyed BLAKE3 hash (key derived from the share ID
/// with `blake3::derive_key("shoal 2026-11 lan tag v1", &share.0)`) of the node ID, truncated.
/// Listeners compute the tags of their own shares for the announcing node ID; a share ID is never
/// sent in clear, and tags of one share differ between nodes (no cross-node linking).
pub fn share_tag(share: &ShareId, node: &NodeId) -> [u8; 8] {
    let key = blake3::derive_key(TAG_CONTEXT, &share.0);
    let hash = blake3::keyed_hash(&key, &node.0);
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&hash.as_bytes()[..8]);
    tag
}

/// One announcement datagram, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The announcing node.
    pub node: NodeId,
    /// The TCP port it accepts peers on.
    pub port: u16,
    /// One [`share_tag`] per share it announces (at most [`MAX_TAGS`]).
    pub tags: Vec<[u8; 8]>,
}

impl Announcement {
    /// The datagrams announcing `tags` for `node`: one per [`MAX_TAGS`] tags, and one (without
    /// tags) when there are none — the node still says it exists.
    pub fn encode(node: &NodeId, port: u16, tags: &[[u8; 8]]) -> Vec<Vec<u8>> {
        let mut chunks: Vec<&[[u8; 8]]> = tags.chunks(MAX_TAGS).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        chunks
            .into_iter()
            .map(|chunk| {
                let mut d = Vec::with_capacity(HEADER_LEN + chunk.len() * 8);
                d.extend_from_slice(MAGIC);
                d.push(VERSION);
                d.extend_from_slice(&node.0);
                d.extend_from_slice(&port.to_be_bytes());
                // `chunks(MAX_TAGS)` keeps this ≤ 64.
                d.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                for tag in chunk {
                    d.extend_from_slice(tag);
                }
                d
            })
            .collect()
    }

    /// Parses one datagram; `None` for anything that is not exactly one announcement (wrong magic,
    /// version or length, more than [`MAX_TAGS`] tags, port 0).
    pub fn decode(d: &[u8]) -> Option<Announcement> {
        let header = d.get(..HEADER_LEN)?;
        if &header[..8] != MAGIC || header[8] != VERSION {
            return None;
        }
        let node = NodeId(header[9..41].try_into().ok()?);
        let port = u16::from_be_bytes([header[41], header[42]]);
        let count = usize::from(header[43]);
        if count > MAX_TAGS || d.len() != HEADER_LEN + count * 8 || port == 0 {
            return None;
        }
        let tags = d[HEADER_LEN..]
            .chunks_exact(8)
            .filter_map(|t| <[u8; 8]>::try_from(t).ok())
            .collect();
        Some(Announcement { node, port, tags })
    }
}

/// The group's socket: bound to 0.0.0.0:port with address and port reuse (several nodes on one
/// host all listen), joined to the group on `interface`, looping back (nodes on one host hear each
/// other).
fn socket(config: &LanConfig) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.group.port())).into())?;
    s.join_multicast_v4(config.group.ip(), &config.interface)?;
    s.set_multicast_loop_v4(true)?;
    s.set_multicast_ttl_v4(config.ttl)?;
    if !config.interface.is_unspecified() {
        s.set_multicast_if_v4(&config.interface)?;
    }
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Runs until `stop` turns true (or its sender is dropped): announces this node (its id, the TCP
/// port it accepts peers on, a tag per share in `shares`) to the group every `interval` — at once
/// on start and at once whenever `shares` changes — listens for other nodes' announcements, and
/// for every announcement from another node (our own node ID is ignored) that carries a tag
/// matching one of OUR shares, sends `SocketAddr::new(sender_ip, announced_port)` on `found`.
///
/// It also ends when the `shares` sender or the `found` receiver is dropped: the node it works for
/// is gone. With `listen_port` 0 it only listens (there is nothing to dial).
///
/// Errors setting up the socket (no multicast route, permission) are logged once with a warning
/// naming the group and interface, and the task returns: LAN discovery is optional and never takes
/// the daemon down. Send errors are logged once; malformed datagrams are ignored (debug log).
/// A full `found` channel drops the address (it is announced again every `interval`).
pub async fn run(
    config: LanConfig,
    me: NodeId,
    listen_port: u16,
    mut shares: watch::Receiver<Vec<ShareId>>,
    found: mpsc::Sender<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) {
    if *stop.borrow_and_update() {
        return;
    }
    let sock = match socket(&config) {
        Ok(s) => s,
        Err(e) => {
            warn!(
                group = %config.group,
                interface = %config.interface,
                "LAN discovery is off: cannot set up the multicast socket: {e}"
            );
            return;
        }
    };
    debug!(group = %config.group, interface = %config.interface, "LAN discovery on");
    // The first tick completes at once: the first announcement.
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut send_warned = false;
    let mut buf = vec![0u8; 2048];
    loop {
        let announce = tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow_and_update() {
                    return;
                }
                false
            }
            r = shares.changed() => {
                if r.is_err() {
                    return;
                }
                true
            }
            _ = tick.tick() => true,
            r = sock.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => {
                        let current = shares.borrow().clone();
                        if !heard(&buf[..n], from, me, &current, &found) {
                            return;
                        }
                    }
                    Err(e) => {
                        debug!(group = %config.group, "LAN receive failed: {e}");
                        tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    }
                }
                false
            }
        };
        if announce && listen_port != 0 {
            let tags: Vec<[u8; 8]> = shares
                .borrow_and_update()
                .iter()
                .map(|s| share_tag(s, &me))
                .collect();
            for d in Announcement::encode(&me, listen_port, &tags) {
                if let Err(e) = sock.send_to(&d, SocketAddr::V4(config.group)).await
                    && !send_warned
                {
                    send_warned = true;
                    warn!(
                        group = %config.group,
                        interface = %config.interface,
                        "cannot send LAN announcements: {e}"
                    );
                }
            }
        }
    }
}

/// Handles one datagram from `from`; false once `found` is closed.
fn heard(
    datagram: &[u8],
    from: SocketAddr,
    me: NodeId,
    shares: &[ShareId],
    found: &mpsc::Sender<SocketAddr>,
) -> bool {
    let Some(a) = Announcement::decode(datagram) else {
        debug!(%from, len = datagram.len(), "ignoring a malformed LAN datagram");
        return true;
    };
    if a.node == me {
        return true;
    }
    let ours = shares
        .iter()
        .any(|s| a.tags.contains(&share_tag(s, &a.node)));
    if !ours {
        return true;
    }
    let addr = SocketAddr::new(from.ip(), a.port);
    debug!(node = %a.node, %addr, "found a peer on the LAN");
    match found.try_send(addr) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            debug!(%addr, "dropping a LAN find: the channel is full");
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}
