//! Real daemons on loopback syncing a namespace: every test compares every file's content hash,
//! mode and kind on every node, never just presence.
#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, Node, wait_until};
use shoal_core::testing::noise;

const NS: &str = "shared";
const CONVERGE: Duration = Duration::from_secs(30);

/// What a path is, as compared between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum What {
    File { hash: String, mode: u32 },
    Dir,
    Link(String),
}

/// Every path under `dir` (leaving out `.sync/` and shoal's temporary files, which must never be
/// visible under a real name anyway).
fn tree(dir: &Path) -> BTreeMap<String, What> {
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, What>) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    // Files may come and go while a node syncs: what vanishes mid-walk is simply not there.
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if path == ".sync" || name.starts_with(".~shoal.") {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.file_type().is_symlink() {
            let Ok(t) = std::fs::read_link(e.path()) else {
                continue;
            };
            out.insert(path, What::Link(t.to_string_lossy().into_owned()));
        } else if m.is_dir() {
            out.insert(path.clone(), What::Dir);
            walk(root, &path, out);
        } else {
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            out.insert(
                path,
                What::File {
                    hash: blake3::hash(&bytes).to_hex().to_string(),
                    mode: m.permissions().mode() & 0o777,
                },
            );
        }
    }
}

/// Any temporary file left visible anywhere (there must be none once converged).
fn temporaries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".~shoal.") {
                found.push(e.path().display().to_string());
            } else if e.file_type().is_ok_and(|t| t.is_dir()) && name != ".sync" {
                stack.push(e.path());
            }
        }
    }
    found
}

struct Cluster {
    nodes: Vec<Node>,
    daemons: Vec<Option<Daemon>>,
}

impl Cluster {
    /// `n` nodes sharing NS with one secret; node i>0 is given node 0's address.
    fn new(n: usize, secret: &str) -> Cluster {
        Cluster::with_init(n, secret, &[])
    }

    /// The same, with extra `ctl init` options for node 0.
    fn with_init(n: usize, secret: &str, init0: &[&str]) -> Cluster {
        Cluster::build(n, secret, init0, |_, node| node)
    }

    /// The same, each node changed by `prepare(i, node)` before it is initialised.
    fn build(
        n: usize,
        secret: &str,
        init0: &[&str],
        mut prepare: impl FnMut(usize, Node) -> Node,
    ) -> Cluster {
        let mut nodes = Vec::new();
        let mut daemons = Vec::new();
        let mut seed = String::new();
        for i in 0..n {
            let mut node = prepare(i, Node::new());
            if i > 0 {
                node = node.env("SHOAL_PEERS", &seed);
            }
            let name = format!("node-{i}");
            let mut init = vec!["init", "--name", name.as_str()];
            if i == 0 {
                init.extend_from_slice(init0);
            }
            let out = node.ctl(&init);
            assert!(out.status.success(), "{}", common::stderr(&out));
            let out = node.ctl(&["add", "--secret", secret, NS]);
            assert!(out.status.success(), "{}", common::stderr(&out));
            let d = node.start_daemon(&[]);
            if i == 0 {
                seed = node.status_json()["listen"].as_str().unwrap().to_owned();
            }
            nodes.push(node);
            daemons.push(Some(d));
        }
        Cluster { nodes, daemons }
    }

    fn dir(&self, i: usize) -> std::path::PathBuf {
        self.nodes[i].data.join(NS)
    }

    /// Waits until every node's tree equals node `from`'s, and returns how long it took.
    fn converge(&self, from: usize, what: &str) -> Duration {
        self.converge_within(from, what, CONVERGE)
    }

    fn converge_within(&self, from: usize, what: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        let differing = || -> Vec<usize> {
            let want = tree(&self.dir(from));
            (0..self.nodes.len())
                .filter(|&i| i != from && tree(&self.dir(i)) != want)
                .collect()
        };
        if !common::poll_until(limit, || differing().is_empty()) {
            let want = tree(&self.dir(from));
            let mut last = String::new();
            for i in differing() {
                last += &format!(
                    "\nnode {i}: {:?}\nwant: {want:?}\nstatus: {}\nlog:\n{}",
                    tree(&self.dir(i)),
                    self.nodes[i].status_json(),
                    self.daemons[i]
                        .as_ref()
                        .map(Daemon::log)
                        .unwrap_or_default()
                );
            }
            panic!("{what}: not converged after {limit:?}{last}");
        }
        for i in 0..self.nodes.len() {
            assert!(
                temporaries(&self.dir(i)).is_empty(),
                "node {i} shows temporaries"
            );
        }
        start.elapsed()
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn two_nodes_converge_on_every_kind_of_change() {
    every_kind_of_change(2);
}

#[test]
fn four_nodes_converge_on_every_kind_of_change() {
    every_kind_of_change(4);
}

/// `n` nodes: changes of every kind made on node 0, then on node 1, reach every node.
fn every_kind_of_change(n: usize) {
    let c = Cluster::new(n, &shoal_secret());
    let a = c.dir(0);
    let b = c.dir(1);

    // Create: small files, a multi-chunk file, nested and empty directories, a symlink.
    write(&a.join("hello.txt"), b"hello");
    write(&a.join("docs/deep/report.txt"), b"numbers");
    write(&a.join("big.bin"), &noise(3 << 20, 1));
    std::fs::create_dir_all(a.join("empty/dir")).unwrap();
    symlink("docs/deep/report.txt", a.join("link")).unwrap();
    c.converge(0, "create");

    // Modify, append, truncate, chmod.
    write(&a.join("hello.txt"), b"hello, world");
    let mut big = noise(3 << 20, 1);
    big[100] ^= 0xff;
    big.extend_from_slice(b"appended");
    write(&a.join("big.bin"), &big);
    std::fs::OpenOptions::new()
        .write(true)
        .open(a.join("docs/deep/report.txt"))
        .unwrap()
        .set_len(3)
        .unwrap();
    std::fs::set_permissions(a.join("hello.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    c.converge(0, "modify");

    // Changes flow the other way too: rename, move between directories, delete, from B.
    std::fs::rename(b.join("big.bin"), b.join("renamed.bin")).unwrap();
    std::fs::rename(b.join("docs/deep/report.txt"), b.join("empty/report.txt")).unwrap();
    std::fs::remove_file(b.join("link")).unwrap();
    std::fs::remove_dir_all(b.join("docs")).unwrap();
    c.converge(1, "rename, move, delete");
    for i in (0..n).filter(|&i| i != 1) {
        let d = c.dir(i);
        assert!(!d.join("docs").exists(), "node {i}");
        assert!(d.join("renamed.bin").exists(), "node {i}");
        // A deleted file went to the archive, not away.
        let archived = d.join(".sync/Archive/link").exists()
            || d.join(".sync/Archive/docs/deep/report.txt").exists()
            || d.join(".sync/Archive/big.bin").exists();
        assert!(
            archived,
            "node {i}: nothing archived: {:?}",
            tree(&d.join(".sync"))
        );
    }
}

#[test]
fn four_nodes_the_btsync_docker_scenario() {
    // btsync.docker's test: 4 nodes, one secret, a 1 MiB file written on one is on all four.
    let c = Cluster::new(4, common::MAKEFILE_SECRET);
    write(&c.dir(2).join("test-file"), &noise(1 << 20, 7));
    let took = c.converge(2, "1 MiB on four nodes");
    eprintln!("1 MiB file on 4 nodes in {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // Many small files from another node.
    for i in 0..300 {
        write(
            &c.dir(3).join(format!("small/{i}.txt")),
            format!("file {i}").as_bytes(),
        );
    }
    let took = c.converge(3, "300 small files on four nodes");
    eprintln!("300 small files on 4 nodes in {took:?}");
}

#[test]
fn concurrent_edits_give_one_winner_and_one_conflict_copy_everywhere() {
    let c = Cluster::new(2, &shoal_secret());
    write(&c.dir(0).join("notes.txt"), b"original");
    c.converge(0, "original");
    // Stop B, edit on both, start B again: the two edits are concurrent.
    let mut c = c;
    let mut d = c.daemons[1].take().unwrap();
    d.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    write(&c.dir(0).join("notes.txt"), b"edited on A");
    write(&c.dir(1).join("notes.txt"), b"edited on B, longer");
    c.daemons[1] = Some(c.nodes[1].start_daemon(&[]));
    c.converge(0, "conflict");
    let t = tree(&c.dir(0));
    let copies: Vec<&String> = t.keys().filter(|k| k.contains(".sync-conflict-")).collect();
    assert_eq!(copies.len(), 1, "{t:?}");
    let contents: Vec<Vec<u8>> = ["notes.txt", copies[0].as_str()]
        .iter()
        .map(|p| std::fs::read(c.dir(0).join(p)).unwrap())
        .collect();
    let mut got = contents.clone();
    got.sort();
    assert_eq!(
        got,
        [b"edited on A".to_vec(), b"edited on B, longer".to_vec()],
        "both edits kept"
    );
}

#[test]
fn a_conflict_lost_on_two_nodes_leaves_one_copy_and_no_temporaries() {
    // Nodes 0 and 1 both hold the losing edit, so both may make the conflict copy and then be
    // offered the other's copy of it: found by `make test`'s partition scenario, where the node
    // that had made its own copy kept the temporary file of the one it no longer needed, for good.
    let mut c = Cluster::new(3, &shoal_secret());
    write(&c.dir(0).join("notes.txt"), b"original");
    c.converge(0, "original");
    let mut d = c.daemons[2].take().unwrap();
    d.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    write(&c.dir(0).join("notes.txt"), b"edited on 0, reaches 1");
    wait_until(CONVERGE, "node 1 has node 0's edit", || {
        std::fs::read(c.dir(1).join("notes.txt")).ok().as_deref()
            == Some(b"edited on 0, reaches 1".as_slice())
    });
    // Node 2's edit is the later one: it wins, and 0 and 1 both hold the loser.
    write(&c.dir(2).join("notes.txt"), b"edited on 2 while offline");
    c.daemons[2] = Some(c.nodes[2].start_daemon(&[]));
    c.converge(2, "the conflict, settled");
    let t = tree(&c.dir(0));
    let copies: Vec<&String> = t.keys().filter(|k| k.contains(".sync-conflict-")).collect();
    assert_eq!(copies.len(), 1, "{t:?}");
    assert_eq!(
        std::fs::read(c.dir(0).join(copies[0])).unwrap(),
        b"edited on 0, reaches 1"
    );
    assert_eq!(
        std::fs::read(c.dir(0).join("notes.txt")).unwrap(),
        b"edited on 2 while offline"
    );
}

#[test]
fn a_read_only_node_receives_but_never_propagates() {
    let secret = shoal_secret();
    let c = Cluster::new(2, &secret);
    let ro = read_only(&c.nodes[0]);
    let reader = Node::new().env(
        "SHOAL_PEERS",
        c.nodes[0].status_json()["listen"].as_str().unwrap(),
    );
    assert!(reader.ctl(&["add", "--secret", &ro, NS]).status.success());
    let _dr = reader.start_daemon(&[]);
    write(&c.dir(0).join("published.txt"), b"for everyone");
    c.converge(0, "published");
    let rdir = reader.data.join(NS);
    wait_until(CONVERGE, "the reader receives the file", || {
        tree(&rdir) == tree(&c.dir(0))
    });
    write(&rdir.join("sneaky.txt"), b"injected");
    write(&rdir.join("published.txt"), b"tampered");
    wait_until(CONVERGE, "the reader records its own changes", || {
        reader.status_json()["namespaces"][0]["index"]["counts"]["files"] == 2
            && reader.status_json()["namespaces"][0]["index"]["max_seq"].as_u64() >= Some(3)
    });
    // A later change from node 0 reaches everyone, the reader included: the links were live after
    // the reader had its changes to offer, and nobody took them.
    write(&c.dir(0).join("marker.txt"), b"m");
    c.converge(0, "the marker");
    wait_until(CONVERGE, "the marker reaches the reader", || {
        rdir.join("marker.txt").exists()
    });
    assert!(!c.dir(0).join("sneaky.txt").exists());
    assert!(!c.dir(1).join("sneaky.txt").exists());
    assert_eq!(
        std::fs::read(c.dir(1).join("published.txt")).unwrap(),
        b"for everyone"
    );
}

#[test]
fn a_node_killed_mid_transfer_resumes_with_no_partial_file() {
    let c = Cluster::new(2, &shoal_secret());
    let mut c = c;
    let data = noise(96 << 20, 3);
    write(&c.dir(0).join("large.bin"), &data);
    // Kill B as soon as it has started on the file (its temporary exists), or after 10 s.
    common::poll_until(Duration::from_secs(10), || {
        !temporaries(&c.dir(1)).is_empty()
    });
    let mut d = c.daemons[1].take().unwrap();
    d.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    // Never a partial file under the real name.
    if let Ok(bytes) = std::fs::read(c.dir(1).join("large.bin")) {
        assert_eq!(
            blake3::hash(&bytes),
            blake3::hash(&data),
            "a torn file is visible"
        );
    }
    c.daemons[1] = Some(c.nodes[1].start_daemon(&[]));
    c.converge(0, "after a kill -9");
}

/// A process stopped with SIGSTOP, continued when this is dropped (a failed assertion too).
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn stop(pid: i32) -> Frozen {
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn a_peer_that_stops_reading_does_not_stall_the_others() {
    // Found by `make test`: a node killed with chunk requests in flight (no TCP reset comes from a
    // vanished container) had the sender's answers to it wait for a link that never drains, and
    // they held every one of the sender's serving slots, so the other nodes got nothing either.
    // A frozen process is the same for its peers: it stops reading, and its kernel still ACKs.
    let c = Cluster::new(3, &shoal_secret());
    let data = noise(160 << 20, 11);
    write(&c.dir(0).join("shared.bin"), &data);
    wait_until(CONVERGE, "node 1 is receiving", || {
        temporaries(&c.dir(1)).iter().any(|t| {
            std::fs::metadata(t)
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= 8 << 20)
        })
    });
    let frozen = Frozen::stop(c.daemons[1].as_ref().unwrap().pid());
    // Well before node 0 gives node 1 up for dead (30 s without a word).
    wait_until(
        Duration::from_secs(20),
        "node 2 to get the file while node 1 is frozen",
        || {
            std::fs::read(c.dir(2).join("shared.bin"))
                .is_ok_and(|b| blake3::hash(&b) == blake3::hash(&data))
        },
    );
    drop(frozen);
    c.converge(0, "node 1 thawed");
}

#[test]
fn a_node_offline_catches_up_with_ten_thousand_files_and_a_gigabyte() {
    let mut c = Cluster::new(2, &shoal_secret());
    let mut d = c.daemons[1].take().unwrap();
    d.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    let a = c.dir(0);
    for i in 0..10_000u64 {
        let bytes = noise(4096, i + 1);
        write(&a.join(format!("many/d{:03}/f{i:05}", i % 100)), &bytes);
    }
    {
        use std::io::Write;
        let mut f = std::fs::File::create(a.join("gigabyte.bin")).unwrap();
        for i in 0..1024u64 {
            f.write_all(&noise(1 << 20, 1000 + i)).unwrap();
        }
    }
    c.daemons[1] = Some(c.nodes[1].start_daemon(&[]));
    let took = c.converge_within(
        0,
        "10,000 files and 1 GiB after being offline",
        Duration::from_secs(240),
    );
    eprintln!("10,000 files and 1 GiB caught up in {took:?}");
}

#[test]
fn the_upload_limit_holds() {
    // 1,000 kB/s out of node 0: 3 MB cannot arrive in much less than 3 s.
    let c = Cluster::with_init(2, &shoal_secret(), &["--upload-limit", "1000"]);
    let start = Instant::now();
    write(&c.dir(0).join("paced.bin"), &noise(3_000_000, 9));
    c.converge(0, "paced");
    let took = start.elapsed();
    assert!(
        took > Duration::from_millis(2500),
        "3 MB at 1,000 kB/s took only {took:?}"
    );
}

#[test]
fn a_small_file_is_not_held_back_by_a_large_one_in_transfer() {
    // 2,000 kB/s out of node 0: 40 MB take ~20 s. A file written, a file renamed and one deleted
    // meanwhile arrive at once, not after the large one.
    let c = Cluster::with_init(2, &shoal_secret(), &["--upload-limit", "2000"]);
    write(&c.dir(0).join("old/renamed.txt"), b"renamed meanwhile");
    write(&c.dir(0).join("old/deleted.txt"), b"deleted meanwhile");
    c.converge(0, "the files changed later");
    let big = noise(40_000_000, 31);
    publish(&c, "large.bin", &big);
    wait_until(CONVERGE, "the large file under way", || {
        ns_status(&c, 1)["sync"]["bytes_done"].as_u64().unwrap_or(0) > 2_000_000
    });
    let (a, b) = (c.dir(0), c.dir(1));
    let start = Instant::now();
    write(&a.join("notes/small.txt"), b"written meanwhile");
    std::fs::rename(a.join("old/renamed.txt"), a.join("notes/renamed.txt")).unwrap();
    std::fs::remove_file(a.join("old/deleted.txt")).unwrap();
    let holds = |rel: &str, bytes: &[u8]| std::fs::read(b.join(rel)).is_ok_and(|got| got == bytes);
    wait_until(CONVERGE, "the changes beside the large file", || {
        holds("notes/small.txt", b"written meanwhile")
            && holds("notes/renamed.txt", b"renamed meanwhile")
            && !b.join("old/renamed.txt").exists()
            && !b.join("old/deleted.txt").exists()
    });
    let took = start.elapsed();
    let large_there = holds("large.bin", &big);
    eprintln!("changes during a large file's transfer: {took:?}");
    assert!(
        !large_there && took < Duration::from_secs(8),
        "the changes took {took:?} (the large file there: {large_there})"
    );
    c.converge_within(0, "the large file", Duration::from_secs(60));
}

#[test]
fn a_file_going_to_several_nodes_is_passed_on_among_them() {
    // Node 0's link (its upload limit) is the bottleneck: sent whole to each of three nodes, the
    // file would leave it three times. The receivers announce what they have written (`Have`)
    // and take chunks from each other.
    let c = Cluster::with_init(4, &shoal_secret(), &["--upload-limit", "3000"]);
    for i in 1..4 {
        wait_until(CONVERGE, "every node connected", || {
            ns_status(&c, i)["peers"]
                .as_array()
                .is_some_and(|p| p.iter().filter(|p| p["state"] == "connected").count() == 3)
        });
    }
    let size = 24 << 20;
    publish(&c, "wide.bin", &noise(size, 21));
    c.converge(0, "the file on every node");
    let sent = |i: usize| -> u64 {
        ns_status(&c, i)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["bytes_sent"].as_u64().unwrap_or(0))
            .sum()
    };
    let from_source = sent(0);
    let passed_on: u64 = (1..4).map(sent).sum();
    eprintln!("node 0 sent {from_source} bytes, the others {passed_on}");
    assert!(
        from_source < (size as u64) * 5 / 2,
        "node 0 sent {from_source} bytes of a {size}-byte file to three nodes"
    );
    assert!(
        passed_on > size as u64 / 2,
        "the receivers passed on only {passed_on} bytes"
    );
}

fn shoal_secret() -> String {
    let n = Node::new();
    let out = n.run(&["secret"]);
    assert!(out.status.success());
    common::stdout(&out).trim().to_owned()
}

fn read_only(node: &Node) -> String {
    node.ctl_json(&["secret", NS])["read_only"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A tmpfs mounted for one test at a directory of its own, unmounted when dropped (also when the
/// test fails). Declared before the cluster using it, so the daemons are gone first.
struct Tmpfs {
    mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount one (not root, or no `CAP_SYS_ADMIN`).
    fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs {
            mnt: mnt.canonicalize().unwrap(),
            _dir: dir,
        })
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(status.success(), "remount {size}: {status}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |args: &[&str]| {
            std::process::Command::new("umount")
                .args(args)
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(&[]) {
            // Still busy (a daemon's child?): detach it, so the directory is removed anyway.
            umount(&["-l"]);
        }
    }
}

/// Writes `path` until the file system is full (`ENOSPC`); returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xa5u8; 1 << 20];
    let mut written = 0;
    loop {
        match f.write(&block) {
            Ok(0) => return written,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                return written;
            }
        }
    }
}

/// Writes `rel` in node 0's namespace at once: written beside it and renamed in, so that node 0
/// never indexes (and sends) a half-written version when a busy disk stalls the writer.
fn publish(c: &Cluster, rel: &str, bytes: &[u8]) {
    let staging = c.nodes[0].tmp.path().join("staging");
    std::fs::write(&staging, bytes).unwrap();
    let path = c.dir(0).join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::rename(&staging, &path).unwrap();
}

/// Node `i`'s namespace status (`ctl status --json`).
fn ns_status(c: &Cluster, i: usize) -> serde_json::Value {
    c.nodes[i].status_json()["namespaces"][0].clone()
}

/// Waits until node `i` is paused for a full disk on `mount`; returns its `disk_full`.
fn wait_paused(c: &Cluster, i: usize, mount: &Path, what: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let paused = common::poll_until(CONVERGE, || {
        last = ns_status(c, i);
        last["state"] == "paused" && last["sync"]["state"] == "paused"
    });
    assert!(
        paused,
        "{what}: node {i} not paused after {CONVERGE:?}: {last}\nlog:\n{}",
        c.daemons[i].as_ref().map(Daemon::log).unwrap_or_default()
    );
    let full = last["sync"]["disk_full"].clone();
    assert_eq!(full["mount"].as_str(), mount.to_str(), "{last}");
    let why = last["sync"]["error"].as_str().unwrap_or_default();
    assert!(why.starts_with("disk full: "), "{last}");
    full
}

/// Waits until node `i` is no longer paused.
fn wait_not_paused(c: &Cluster, i: usize, what: &str) {
    let mut last = serde_json::Value::Null;
    let resumed = common::poll_until(CONVERGE, || {
        last = ns_status(c, i);
        last["state"] != "paused" && last["sync"]["disk_full"].is_null()
    });
    assert!(
        resumed,
        "{what}: node {i} still paused after {CONVERGE:?}: {last}\nlog:\n{}",
        c.daemons[i].as_ref().map(Daemon::log).unwrap_or_default()
    );
}

/// Everything visible under a real name on `to` is on `from` with the same content: no partial
/// file, no temporary under a real name (only hidden `.~shoal.*.tmp` ones may exist).
fn nothing_partial(from: &Path, to: &Path, c: &Cluster) {
    let want = tree(from);
    let got = tree(to);
    for (path, what) in &got {
        assert_eq!(
            want.get(path),
            Some(what),
            "{path} on the paused node\nthere: {got:?}\nwant: {want:?}\nlog:\n{}",
            c.daemons[1].as_ref().map(Daemon::log).unwrap_or_default()
        );
    }
    for t in temporaries(to) {
        let name = Path::new(&t)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.ends_with(".tmp"), "{t}");
    }
}

#[test]
fn a_full_disk_pauses_the_namespace_and_it_resumes_when_there_is_room() {
    let Some(disk) = Tmpfs::mount("48m") else {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    };
    // Node 1's data directory (namespace, index, config) is the 48 MiB tmpfs. Node 0 sends at
    // 8 MB/s, slow enough to fill node 1's disk while a file is on its way.
    let c = Cluster::build(
        2,
        &shoal_secret(),
        &["--upload-limit", "8000"],
        |i, mut n| {
            if i == 1 {
                n.data = disk.mnt.clone();
            }
            n
        },
    );
    let (a, b) = (c.dir(0), c.dir(1));
    let mut total = 0u64;

    // 1. The disk fills while a file is on its way. Its room was reserved when it was started,
    // so it still arrives whole. The index, on the same disk, then cannot record it if its
    // commit needs more room than its file already holds (so far, always): paused, and syncing
    // resumes by itself once the space is freed, without fetching anything again.
    let mid = noise(24 << 20, 50);
    publish(&c, "mid.bin", &mid);
    total += mid.len() as u64;
    wait_until(CONVERGE, "node 1 reserves the room of mid.bin", || {
        temporaries(&b).iter().any(|t| {
            t.contains(".~shoal.mid.bin.")
                && std::fs::metadata(b.join(t)).is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.blocks() * 512 >= mid.len() as u64
                })
        })
    });
    let filler = disk.mnt.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "nothing filled");
    wait_until(CONVERGE, "mid.bin arrives whole on the full disk", || {
        std::fs::read(b.join("mid.bin")).is_ok_and(|got| blake3::hash(&got) == blake3::hash(&mid))
    });
    let status = ns_status(&c, 1);
    if status["state"] == "paused" {
        let full = wait_paused(&c, 1, &disk.mnt, "ENOSPC for the index");
        assert_eq!(full["files"], 1, "{full}");
        let needed = full["needed_bytes"].as_u64().unwrap();
        assert!(needed > 0 && needed < mid.len() as u64, "{full}");
    }
    nothing_partial(&a, &b, &c);
    std::fs::remove_file(&filler).unwrap();
    c.converge(0, "after space was freed");
    wait_not_paused(&c, 1, "node 1 resumes after space was freed");

    // 2. Small files and one larger than the whole disk: the small ones arrive, the large one is
    // never started (no temporary fills the disk), and growing the disk lets it through.
    let small: Vec<(String, Vec<u8>)> = (0..4u64)
        .map(|i| {
            (
                format!("small/{i}.txt"),
                noise(5000 + i as usize * 777, 60 + i),
            )
        })
        .collect();
    for (p, bytes) in &small {
        publish(&c, p, bytes);
        total += bytes.len() as u64;
    }
    let big = noise(64 << 20, 70);
    publish(&c, "big.bin", &big);
    total += big.len() as u64;
    let full = wait_paused(&c, 1, &disk.mnt, "a file larger than the disk");
    assert_eq!(full["files"], 1, "{full}");
    assert_eq!(
        full["needed_bytes"].as_u64(),
        Some(big.len() as u64),
        "{full}"
    );
    assert!(full["free_bytes"].as_u64().unwrap() < 48 << 20, "{full}");
    wait_until(CONVERGE, "the small files arrive while paused", || {
        let t = tree(&b);
        small.iter().all(|(p, bytes)| {
            t.get(p).is_some_and(|w| {
                matches!(w, What::File { hash, .. } if *hash == blake3::hash(bytes).to_hex().to_string())
            })
        })
    });
    nothing_partial(&a, &b, &c);
    assert!(!b.join("big.bin").exists(), "a partial big.bin is visible");
    assert_eq!(
        temporaries(&b),
        Vec::<String>::new(),
        "a file that cannot fit was started"
    );
    let human = c.nodes[1].ctl(&["status"]);
    assert!(human.status.success(), "{}", common::stderr(&human));
    let text = common::stdout(&human);
    eprintln!("ctl status while paused:\n{text}");
    assert!(
        text.contains("shared  paused")
            && text.contains(&format!(
                "sync paused: the disk is full ({})",
                disk.mnt.display()
            ))
            && text.contains("64.0 MiB more needed for 1 file")
            && text.contains("syncing resumes by itself"),
        "{text}"
    );
    disk.resize("256m");
    c.converge(0, "after the disk grew");
    wait_not_paused(&c, 1, "node 1 resumes after the disk grew");

    // Resuming reused what had been written: every byte was fetched once.
    let sync = &ns_status(&c, 1)["sync"];
    let got = sync["fetched_bytes"].as_u64().unwrap() + sync["copied_bytes"].as_u64().unwrap();
    assert_eq!(got, total, "bytes brought in vs. file sizes: {sync}");
}
