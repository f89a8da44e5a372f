//! LAN discovery (`search_lan`): nodes announce themselves by UDP multicast, and a node that hears
//! an announcement for one of its namespaces dials the announcer.
//!
//! Datagram (all integers big-endian), at most 8 + 1 + 32 + 2 + 1 + 64 × 8 = 556 bytes:
//!
//! ```text
//! "SHOALLAN" | version u8 = 1 | node ID [32] | TCP port u16 | tag count u8 (≤ 64) | tags [8] × count
//! ```
//!
//! A tag is [`share_tag`]: a keyed hash of the announcing node's ID under a key derived from the
//! share ID. Listeners compute the tags of their own shares for the announcer and compare; the
//! share ID never appears in clear and one share's tags differ from node to node, so a listener
//! without the share learns nothing, not even that two nodes share the same namespace. More than
//! 64 shares take several datagrams.
//!
//! The group is organisation-local (239.192.0.0/14) and the TTL 1: announcements never leave the
//! local network. Joining or sending can fail (no multicast route, a container without one): the
//! reason is logged once and discovery goes on without LAN announcements.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use shoal_core::secret::ShareId;
use shoal_net::NodeId;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

const MAGIC: &[u8; 8] = b"SHOALLAN";
const VERSION: u8 = 1;
/// Tags per datagram.
pub const MAX_TAGS: usize = 64;
const HEADER: usize = 8 + 1 + 32 + 2 + 1;

/// Where and how often to announce.
#[derive(Clone, Debug)]
pub struct LanConfig {
    /// The multicast group and port.
    pub group: SocketAddrV4,
    /// The interface address to send and join on (0.0.0.0: the system's default).
    pub interface: Ipv4Addr,
    /// Between announcements; the first goes at once, and again whenever the shares change.
    pub interval: Duration,
    /// Multicast TTL: 1 never leaves the local network.
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

/// The 8-byte tag announcing `share` for `node`.
pub fn share_tag(share: &ShareId, node: &NodeId) -> [u8; 8] {
    let key = blake3::derive_key("shoal 2026-11 lan tag v1", &share.0);
    let hash = blake3::keyed_hash(&key, &node.0);
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&hash.as_bytes()[..8]);
    tag
}

/// One announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub node: NodeId,
    pub port: u16,
    pub tags: Vec<[u8; 8]>,
}

impl Announcement {
    /// The datagrams announcing `tags` (one even with none: the node exists).
    pub fn encode(node: &NodeId, port: u16, tags: &[[u8; 8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunks: Vec<&[[u8; 8]]> = tags.chunks(MAX_TAGS).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let mut d = Vec::with_capacity(HEADER + chunk.len() * 8);
            d.extend_from_slice(MAGIC);
            d.push(VERSION);
            d.extend_from_slice(&node.0);
            d.extend_from_slice(&port.to_be_bytes());
            d.push(chunk.len() as u8);
            for t in chunk {
                d.extend_from_slice(t);
            }
            out.push(d);
        }
        out
    }

    /// Parses a datagram; `None` for anything that is not exactly one announcement.
    pub fn decode(d: &[u8]) -> Option<Announcement> {
        if d.len() < HEADER || &d[..8] != MAGIC || d[8] != VERSION {
            return None;
        }
        let node = NodeId(d[9..41].try_into().ok()?);
        let port = u16::from_be_bytes([d[41], d[42]]);
        let count = d[43] as usize;
        if count > MAX_TAGS || d.len() != HEADER + count * 8 || port == 0 {
            return None;
        }
        let tags = d[HEADER..]
            .chunks_exact(8)
            .filter_map(|t| <[u8; 8]>::try_from(t).ok())
            .collect();
        Some(Announcement { node, port, tags })
    }
}

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

/// Announces this node and listens for others until `stop` turns true; every announcer holding
/// one of `shares` is sent on `found`. Never fails: LAN discovery is optional.
pub async fn run(
    config: LanConfig,
    me: NodeId,
    listen_port: u16,
    mut shares: watch::Receiver<Vec<ShareId>>,
    found: mpsc::Sender<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) {
    let sock = match socket(&config) {
        Ok(s) => s,
        Err(e) => {
            warn!(group = %config.group, interface = %config.interface, "LAN discovery is off: cannot join the multicast group: {e}");
            return;
        }
    };
    debug!(group = %config.group, interface = %config.interface, "LAN discovery on");
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    let mut buf = vec![0u8; 2048];
    loop {
        let announce = tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
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
                if let Ok((n, from)) = r {
                    let current = shares.borrow().clone();
                    heard(&buf[..n], from, me, &current, &found).await;
                }
                false
            }
        };
        if announce && listen_port != 0 {
            let tags: Vec<[u8; 8]> = shares.borrow().iter().map(|s| share_tag(s, &me)).collect();
            for d in Announcement::encode(&me, listen_port, &tags) {
                if let Err(e) = sock.send_to(&d, SocketAddr::V4(config.group)).await
                    && !warned
                {
                    warned = true;
                    warn!(group = %config.group, "cannot send LAN announcements: {e}");
                }
            }
        }
    }
}

async fn heard(
    datagram: &[u8],
    from: SocketAddr,
    me: NodeId,
    shares: &[ShareId],
    found: &mpsc::Sender<SocketAddr>,
) {
    let Some(a) = Announcement::decode(datagram) else {
        debug!(%from, "ignoring a malformed LAN datagram");
        return;
    };
    if a.node == me {
        return;
    }
    let ours = shares
        .iter()
        .any(|s| a.tags.contains(&share_tag(s, &a.node)));
    if ours {
        let _ = found.send(SocketAddr::new(from.ip(), a.port)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn announcements_round_trip_and_split() {
        let tags: Vec<[u8; 8]> = (0..70u8).map(|i| [i; 8]).collect();
        let ds = Announcement::encode(&node(1), 4242, &tags);
        assert_eq!(ds.len(), 2);
        let a = Announcement::decode(&ds[0]).unwrap();
        let b = Announcement::decode(&ds[1]).unwrap();
        assert_eq!(a.node, node(1));
        assert_eq!(a.port, 4242);
        assert_eq!([a.tags, b.tags].concat(), tags);
        assert_eq!(Announcement::encode(&node(1), 1, &[]).len(), 1);
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let good = Announcement::encode(&node(2), 9, &[[7; 8]]).remove(0);
        assert!(Announcement::decode(&good).is_some());
        assert!(Announcement::decode(&good[..good.len() - 1]).is_none());
        assert!(Announcement::decode(&[good.clone(), vec![0]].concat()).is_none());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(Announcement::decode(&bad).is_none());
        let mut bad = good.clone();
        bad[8] = 2;
        assert!(Announcement::decode(&bad).is_none());
        let mut bad = good.clone();
        bad[43] = 200;
        assert!(Announcement::decode(&bad).is_none());
        assert!(Announcement::decode(&[]).is_none());
    }

    #[test]
    fn tags_differ_per_node_and_share() {
        let (s1, s2) = (ShareId([1; 16]), ShareId([2; 16]));
        assert_ne!(share_tag(&s1, &node(1)), share_tag(&s1, &node(2)));
        assert_ne!(share_tag(&s1, &node(1)), share_tag(&s2, &node(1)));
        assert_eq!(share_tag(&s1, &node(1)), share_tag(&s1, &node(1)));
    }
}
