//! LAN discovery between three nodes, inside a network namespace of its own: multicast never
//! leaves this test (the machine's rules: loopback or namespaces we create, nothing else).
#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use shoal_core::secret::ShareId;
use shoal_net::NodeId;
use shoal_peers::lan::{self, LanConfig};
use tokio::sync::{mpsc, watch};

const CHILD: &str = "SHOAL_LAN_TEST_CHILD";

#[test]
fn nodes_sharing_a_namespace_find_each_other_on_the_lan() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    if !Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: a network namespace needs root (unshare --net)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .arg("--net")
        .arg(exe)
        .args([
            "--exact",
            "nodes_sharing_a_namespace_find_each_other_on_the_lan",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs inside the new network namespace: only `lo`, which we bring up with multicast.
fn child() {
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "224.0.0.0/4", "dev", "lo"],
    ] {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {args:?}");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

struct Lan {
    shares: watch::Sender<Vec<ShareId>>,
    found: mpsc::Receiver<SocketAddr>,
}

fn start(id: u8, port: u16, shares: Vec<ShareId>, stop: &watch::Receiver<bool>) -> Lan {
    let config = LanConfig {
        group: SocketAddrV4::new(Ipv4Addr::new(239, 192, 83, 72), 55556),
        interface: Ipv4Addr::LOCALHOST,
        interval: Duration::from_millis(200),
        ttl: 1,
    };
    let (shares_tx, shares_rx) = watch::channel(shares);
    let (found_tx, found) = mpsc::channel(64);
    tokio::spawn(lan::run(
        config,
        NodeId([id; 32]),
        port,
        shares_rx,
        found_tx,
        stop.clone(),
    ));
    Lan {
        shares: shares_tx,
        found,
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

async fn scenario() {
    let (x, y) = (ShareId([1; 16]), ShareId([2; 16]));
    let (_stop_tx, stop) = watch::channel(false);
    let mut a = start(1, 1001, vec![x], &stop);
    let mut b = start(2, 1002, vec![x], &stop);
    let mut c = start(3, 1003, vec![y], &stop);
    let addr = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let wait = Duration::from_millis(800);
    let (ha, hb, hc) = tokio::join!(
        heard(&mut a, wait),
        heard(&mut b, wait),
        heard(&mut c, wait)
    );
    assert_eq!(ha, HashSet::from([addr(1002)]), "A hears B only");
    assert_eq!(hb, HashSet::from([addr(1001)]), "B hears A only");
    assert!(hc.is_empty(), "C shares nothing with them: {hc:?}");
    // C joins X: announced at once, A and B find it.
    c.shares.send(vec![y, x]).unwrap();
    let (ha, hb) = tokio::join!(heard(&mut a, wait), heard(&mut b, wait));
    assert!(ha.contains(&addr(1003)), "{ha:?}");
    assert!(hb.contains(&addr(1003)), "{hb:?}");
    // A no longer shares X: nobody hears of it any more, and it hears nobody.
    a.shares.send(vec![]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = heard(&mut b, Duration::from_millis(10)).await;
    let (ha, hb) = tokio::join!(heard(&mut a, wait), heard(&mut b, wait));
    assert!(ha.is_empty(), "{ha:?}");
    assert!(!hb.contains(&addr(1001)), "{hb:?}");
}
