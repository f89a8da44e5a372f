//! Real daemons on loopback finding each other, joining namespaces and exchanging indexes.

mod common;

use std::time::Duration;

use common::{Node, wait_until};

const SECRET: &str = "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54";

/// The address the daemon accepts peers on, from `ctl status`.
fn listen(node: &Node) -> String {
    node.status_json()["listen"]
        .as_str()
        .expect("the daemon listens")
        .to_owned()
}

/// The peers of namespace `ns`, as `ctl status --json` shows them.
fn peers(node: &Node, ns: &str) -> Vec<serde_json::Value> {
    node.status_json()["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|n| n["name"] == ns)
        .and_then(|n| n["peers"].as_array().cloned())
        .unwrap_or_default()
}

/// Files in the index of namespace `ns`, as `ctl status --json` shows them.
fn indexed_files(node: &Node, ns: &str) -> u64 {
    node.status_json()["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|n| n["name"] == ns)
        .and_then(|n| n["index"]["counts"]["files"].as_u64())
        .unwrap_or(0)
}

/// The connected peers' device names, sorted.
fn peer_names(node: &Node, ns: &str) -> Vec<String> {
    let mut names: Vec<String> = peers(node, ns)
        .iter()
        .filter(|p| p["state"] == "connected")
        .map(|p| p["device_name"].as_str().unwrap_or("").to_owned())
        .collect();
    names.sort();
    names
}

fn node(name: &str) -> Node {
    let n = Node::new();
    let out = n.ctl(&["init", "--name", name]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    n
}

fn add(node: &Node, ns: &str, secret: &str) {
    let out = node.ctl(&["add", "--secret", secret, ns]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

const LONG: Duration = Duration::from_secs(20);

#[test]
fn three_nodes_with_one_seed_each_find_each_other_and_reconnect() {
    let a = node("node-a");
    add(&a, "shared", SECRET);
    std::fs::write(a.data.join("shared/hello.txt"), b"hello").expect("write hello.txt");
    let _da = a.start_daemon(&[]);
    let seed_a = listen(&a);

    let b = node("node-b").env("SHOAL_PEERS", &seed_a);
    add(&b, "shared", SECRET);
    let mut db = b.start_daemon(&[]);
    let seed_b = listen(&b);

    // C knows only B; peer exchange introduces it to A.
    let c = node("node-c").env("SHOAL_PEERS", &seed_b);
    add(&c, "shared", SECRET);
    let _dc = c.start_daemon(&[]);

    wait_until(LONG, "A sees B and C", || {
        peer_names(&a, "shared") == ["node-b", "node-c"]
    });
    wait_until(LONG, "B sees A and C", || {
        peer_names(&b, "shared") == ["node-a", "node-c"]
    });
    wait_until(LONG, "C sees A and B", || {
        peer_names(&c, "shared") == ["node-a", "node-b"]
    });
    // A's index reached C: at least hello.txt (and nothing refused).
    wait_until(LONG, "C received A's index", || {
        peers(&c, "shared")
            .iter()
            .any(|p| p["device_name"] == "node-a" && p["records_received"].as_u64() >= Some(1))
    });

    // Killed and restarted, B is back with both.
    db.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    wait_until(LONG, "A notices B is gone", || {
        peer_names(&a, "shared") == ["node-c"]
    });
    let gone = peers(&a, "shared");
    let gone = gone
        .iter()
        .find(|p| p["device_name"] == "node-b")
        .expect("B is still listed, disconnected");
    assert_eq!(gone["state"], "disconnected", "{gone}");
    assert!(gone["bytes_sent"].as_u64() > Some(0), "{gone}");
    let _db = b.start_daemon(&[]);
    wait_until(LONG, "B reconnects to both", || {
        peer_names(&b, "shared") == ["node-a", "node-c"]
    });
    wait_until(LONG, "A sees B again", || {
        peer_names(&a, "shared") == ["node-b", "node-c"]
    });
}

#[test]
fn a_wrong_secret_is_refused_and_a_read_only_one_receives_only() {
    let a = node("owner");
    add(&a, "docs", SECRET);
    std::fs::write(a.data.join("docs/report.txt"), b"numbers").expect("write report.txt");
    let _da = a.start_daemon(&[]);
    let seed = listen(&a);

    // Same namespace name, another secret: connected, but never a member.
    let other = shoal_secret();
    let intruder = node("intruder").env("SHOAL_PEERS", &seed);
    add(&intruder, "docs", &other);
    let _di = intruder.start_daemon(&[]);

    // The read-only secret of the same share.
    let secret_json = a.ctl_json(&["secret", "docs"]);
    let ro = secret_json["read_only"]
        .as_str()
        .expect("read_only secret")
        .to_owned();
    let reader = node("reader").env("SHOAL_PEERS", &seed);
    add(&reader, "docs", &ro);
    let _dr = reader.start_daemon(&[]);

    wait_until(LONG, "the reader receives the index", || {
        peers(&reader, "docs")
            .iter()
            .any(|p| p["device_name"] == "owner" && p["records_received"].as_u64() >= Some(1))
    });
    assert_eq!(peer_names(&a, "docs"), ["reader"]);
    assert!(peer_names(&intruder, "docs").is_empty());

    // A change on the read-only node is never taken by anyone.
    std::fs::write(reader.data.join("docs/sneaky.txt"), b"injected").expect("write sneaky.txt");
    wait_until(LONG, "the reader records its own change", || {
        indexed_files(&reader, "docs") >= 2
    });
    // Then a change from the owner makes the round trip: the session was live, in both
    // directions, after the reader had its change to offer.
    std::fs::write(a.data.join("docs/marker.txt"), b"m").expect("write marker.txt");
    wait_until(LONG, "the owner's next change reaches the reader", || {
        reader.data.join("docs/marker.txt").exists()
    });
    let from_reader = peers(&a, "docs");
    let from_reader = from_reader
        .iter()
        .find(|p| p["device_name"] == "reader")
        .expect("reader is a peer");
    assert_eq!(from_reader["records_received"], 0, "{from_reader}");
    assert!(peer_names(&intruder, "docs").is_empty());
}

#[test]
fn a_namespace_added_live_is_announced_live() {
    let a = node("live-a");
    let _da = a.start_daemon(&[]);
    let b = node("live-b").env("SHOAL_PEERS", &listen(&a));
    let _db = b.start_daemon(&[]);
    let secret = shoal_secret();
    add(&a, "later", &secret);
    add(&b, "later", &secret);
    wait_until(LONG, "both see each other in the new namespace", || {
        peer_names(&a, "later") == ["live-b"] && peer_names(&b, "later") == ["live-a"]
    });
    // Removed live: the peer goes from that namespace.
    let out = b.ctl(&["del", "later"]);
    assert!(out.status.success());
    wait_until(LONG, "the namespace is gone from B", || {
        !b.running_namespaces().contains(&"later".to_owned())
    });
}

/// A fresh read-write secret from the binary itself.
fn shoal_secret() -> String {
    let out = Node::new().run(&["secret"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .split_whitespace()
        .find(|w| w.starts_with('A') && w.len() == 33)
        .expect("a read-write secret")
        .to_owned()
}

#[test]
fn nodes_find_each_other_on_the_lan_without_any_address() {
    // Multicast stays inside a network namespace this test creates.
    let Some(ns) = common::NetNs::new("lan") else {
        eprintln!("SKIPPED: creating a network namespace needs root");
        return;
    };
    let mut nodes = Vec::new();
    let mut daemons = Vec::new();
    for name in ["lan-a", "lan-b"] {
        let mut n = node(name).env("SHOAL_LAN", "127.0.0.1");
        n.wrapper = ns.wrapper();
        add(&n, "shared", SECRET);
        daemons.push(n.start_daemon(&[]));
        nodes.push(n);
    }
    wait_until(LONG, "A and B find each other by LAN announcements", || {
        peer_names(&nodes[0], "shared") == ["lan-b"] && peer_names(&nodes[1], "shared") == ["lan-a"]
    });
    drop(daemons);
}
