//! LAN discovery. The datagram and tag tests run anywhere; the three-node test runs inside a
//! network namespace of its own (the test binary re-executes itself under `unshare --net`), so
//! multicast never leaves this test: the machine's rules allow it on loopback or in namespaces we
//! create, nothing else.
#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use shoal_core::secret::ShareId;
use shoal_net::NodeId;
use shoal_peers::lan::{self, Announcement, HEADER_LEN, LanConfig, MAX_TAGS, share_tag};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Set in the child: which scenario to run inside the new network namespace.
const CHILD: &str = "SHOAL_LAN_TEST_SCENARIO";
const TEST_NAME: &str = "nodes_sharing_a_namespace_find_each_other_on_the_lan";
/// Printed by the child when every assertion held: proves the scenario really ran.
const PASSED: &str = "LAN SCENARIO PASSED";

fn node(b: u8) -> NodeId {
    NodeId([b; 32])
}

#[test]
fn announcements_round_trip_and_split() {
    let tags: Vec<[u8; 8]> = (0..70u8).map(|i| [i; 8]).collect();
    let ds = Announcement::encode(&node(1), 4242, &tags);
    assert_eq!(ds.len(), 2, "70 tags take two datagrams");
    assert_eq!(ds[0].len(), HEADER_LEN + MAX_TAGS * 8);
    assert!(ds.iter().all(|d| d.len() < 1200));
    let a = Announcement::decode(&ds[0]).unwrap();
    let b = Announcement::decode(&ds[1]).unwrap();
    assert_eq!((a.node, a.port), (node(1), 4242));
    assert_eq!((b.node, b.port), (node(1), 4242));
    assert_eq!(a.tags.len(), MAX_TAGS);
    assert_eq!([a.tags, b.tags].concat(), tags);

    let none = Announcement::encode(&node(3), 1, &[]);
    assert_eq!(
        none.len(),
        1,
        "a node without shares still announces itself"
    );
    assert_eq!(
        Announcement::decode(&none[0]).unwrap(),
        Announcement {
            node: node(3),
            port: 1,
            tags: vec![]
        }
    );
    // The layout, byte by byte.
    let d = &Announcement::encode(&node(9), 0x1234, &[[0xab; 8]])[0];
    assert_eq!(&d[..8], b"SHOALLAN");
    assert_eq!(d[8], 1);
    assert_eq!(&d[9..41], &[9; 32]);
    assert_eq!(&d[41..43], &[0x12, 0x34]);
    assert_eq!(d[43], 1);
    assert_eq!(&d[44..], &[0xab; 8]);
}

#[test]
fn malformed_datagrams_are_refused() {
    let good = Announcement::encode(&node(2), 9, &[[7; 8], [8; 8]]).remove(0);
    assert!(Announcement::decode(&good).is_some());
    assert!(Announcement::decode(&[]).is_none());
    assert!(
        Announcement::decode(&good[..HEADER_LEN - 1]).is_none(),
        "short"
    );
    assert!(
        Announcement::decode(&good[..good.len() - 1]).is_none(),
        "cut tag"
    );
    assert!(
        Announcement::decode(&[&good[..], &[0]].concat()).is_none(),
        "trailing byte"
    );
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(Announcement::decode(&bad).is_none(), "magic");
    let mut bad = good.clone();
    bad[8] = 2;
    assert!(Announcement::decode(&bad).is_none(), "version");
    let mut bad = good.clone();
    bad[43] = 3;
    assert!(Announcement::decode(&bad).is_none(), "more tags than bytes");
    let mut bad = good.clone();
    bad[43] = 200;
    assert!(
        Announcement::decode(&bad).is_none(),
        "far more tags than bytes"
    );
    let mut bad = good.clone();
    bad[41..43].copy_from_slice(&[0, 0]);
    assert!(Announcement::decode(&bad).is_none(), "port 0");
    // 65 tags, length consistent with the count: still over the limit.
    let mut big = good[..HEADER_LEN].to_vec();
    big[43] = 65;
    big.extend(std::iter::repeat_n(0u8, 65 * 8));
    assert!(Announcement::decode(&big).is_none(), "more than 64 tags");
    // Junk of every length up to beyond the maximum never panics.
    for len in 0..700 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        assert!(Announcement::decode(&junk).is_none());
    }
}

#[test]
fn tags_differ_per_node_and_share() {
    let (s1, s2) = (ShareId([1; 16]), ShareId([2; 16]));
    assert_ne!(share_tag(&s1, &node(1)), share_tag(&s1, &node(2)));
    assert_ne!(share_tag(&s1, &node(1)), share_tag(&s2, &node(1)));
    assert_eq!(share_tag(&s1, &node(1)), share_tag(&s1, &node(1)));
    // The documented construction, so other implementations can interoperate.
    let key = blake3::derive_key("shoal 2026-11 lan tag v1", &s1.0);
    let want = blake3::keyed_hash(&key, &node(1).0);
    assert_eq!(share_tag(&s1, &node(1)), want.as_bytes()[..8]);
}

#[test]
fn default_config_stays_on_the_local_network() {
    let c = LanConfig::default();
    assert_eq!(c.group.to_string(), "239.192.83.72:55556");
    assert_eq!(c.interface, Ipv4Addr::UNSPECIFIED);
    assert_eq!(c.interval, Duration::from_secs(30));
    assert_eq!(c.ttl, 1);
}

#[test]
fn nodes_sharing_a_namespace_find_each_other_on_the_lan() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let permitted = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !permitted {
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .arg("--net")
        .arg(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "three-nodes")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(PASSED),
        "the scenario failed in its network namespace ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// Runs inside the new network namespace: only `lo`, which we bring up with multicast.
fn child() {
    let scenario = std::env::var(CHILD).unwrap();
    assert_eq!(scenario, "three-nodes", "unknown scenario");
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "224.0.0.0/4", "dev", "lo"],
    ] {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {args:?} failed");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(three_nodes());
    println!("{PASSED}");
}

struct Lan {
    shares: watch::Sender<Vec<ShareId>>,
    found: mpsc::Receiver<SocketAddr>,
    task: JoinHandle<()>,
}

const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 192, 83, 72), 55556);

fn config(interval: Duration) -> LanConfig {
    LanConfig {
        group: GROUP,
        interface: Ipv4Addr::LOCALHOST,
        interval,
        ttl: 1,
    }
}

fn start(
    id: u8,
    port: u16,
    shares: Vec<ShareId>,
    interval: Duration,
    stop: &watch::Receiver<bool>,
) -> Lan {
    let (shares_tx, shares_rx) = watch::channel(shares);
    let (found_tx, found) = mpsc::channel(64);
    let task = tokio::spawn(lan::run(
        config(interval),
        node(id),
        port,
        shares_rx,
        found_tx,
        stop.clone(),
    ));
    Lan {
        shares: shares_tx,
        found,
        task,
    }
}

/// Every address `lan` reports within `wait`.
async fn heard(lan: &mut Lan, wait: Duration) -> HashSet<SocketAddr> {
    let mut out = HashSet::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(a)) = tokio::time::timeout_at(deadline, lan.found.recv()).await {
        out.insert(a);
    }
    out
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn three_nodes() {
    let (x, y) = (ShareId([1; 16]), ShareId([2; 16]));
    let (stop_tx, stop) = watch::channel(false);
    let short = Duration::from_millis(200);
    // C announces only at start and when its shares change: what A and B hear of C later proves
    // the change is announced at once, not at the next interval.
    let long = Duration::from_secs(60);

    // A socket that cannot be set up (no such interface) ends the task quietly.
    let (_shares_tx, shares_rx) = watch::channel(vec![x]);
    let (found_tx, _found_rx) = mpsc::channel(1);
    let bad = LanConfig {
        interface: Ipv4Addr::new(192, 0, 2, 1),
        ..config(short)
    };
    tokio::time::timeout(
        Duration::from_secs(1),
        lan::run(bad, node(9), 9, shares_rx, found_tx, stop.clone()),
    )
    .await
    .expect("run returns when its socket cannot be set up");

    let mut a = start(1, 1001, vec![x], short, &stop);
    let mut b = start(2, 1002, vec![x], short, &stop);
    let mut c = start(3, 1003, vec![y], long, &stop);

    // Junk on the group is ignored, and nobody falls over.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut truncated = Announcement::encode(&node(7), 7, &[share_tag(&x, &node(7))]).remove(0);
    truncated.pop();
    for d in [&b"SHOALLAN"[..], b"", &[0xff; 1500], &truncated] {
        junk.send_to(d, GROUP).unwrap();
    }

    let wait = Duration::from_millis(800);
    let (ha, hb, hc) = tokio::join!(
        heard(&mut a, wait),
        heard(&mut b, wait),
        heard(&mut c, wait)
    );
    assert_eq!(ha, HashSet::from([addr(1002)]), "A finds B only");
    assert_eq!(hb, HashSet::from([addr(1001)]), "B finds A only");
    assert!(hc.is_empty(), "C shares nothing with A or B: {hc:?}");

    // C joins X: announced at once (its interval is a minute), A and B find it, and C finds them.
    c.shares.send(vec![y, x]).unwrap();
    let (ha, hb, hc) = tokio::join!(
        heard(&mut a, wait),
        heard(&mut b, wait),
        heard(&mut c, wait)
    );
    assert!(ha.contains(&addr(1003)), "A finds C: {ha:?}");
    assert!(hb.contains(&addr(1003)), "B finds C: {hb:?}");
    assert_eq!(
        hc,
        HashSet::from([addr(1001), addr(1002)]),
        "C finds A and B"
    );

    // A drops X: nobody finds it any more, and it finds nobody. Announcements A sent before
    // the change may still arrive: B goes a whole window (four of A's intervals) without hearing
    // A, within a deadline.
    a.shares.send(vec![]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // A's own reports from before the change are drained alongside.
        let (_, hb) = tokio::join!(heard(&mut a, wait), heard(&mut b, wait));
        if !hb.contains(&addr(1001)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still finds A: {hb:?}"
        );
    }
    let ha = heard(&mut a, wait).await;
    assert!(ha.is_empty(), "A shares nothing: {ha:?}");

    // Stop ends every task promptly.
    stop_tx.send(true).unwrap();
    for lan in [a, b, c] {
        tokio::time::timeout(Duration::from_secs(1), lan.task)
            .await
            .expect("run ends when stop turns true")
            .unwrap();
    }
}
