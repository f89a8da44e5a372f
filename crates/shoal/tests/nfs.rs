//! The NFS server driven by two independent clients — libnfs's `nfs-ls`/`nfs-cp`/`nfs-cat` and the
//! PyPI package `nfs-rs` — against real daemons that sync with each other. `.ci/run` installs both
//! clients; a missing one fails the test with what to install.
#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Daemon, MAKEFILE_SECRET, Node, wait_until};
use shoal_core::testing::noise;

const NS: &str = "shared";

struct Server {
    node: Node,
    _daemon: Daemon,
    port: u16,
}

impl Server {
    fn start(namespaces: &[(&str, &str)], env: &[(&str, &str)], peer: Option<&str>) -> Server {
        let mut node = Node::new().env("NFS", "on").env("NFS_PORT", "0");
        for (k, v) in env {
            node = node.env(k, v);
        }
        if let Some(peer) = peer {
            node = node.env("SHOAL_PEERS", peer);
        }
        assert!(node.ctl(&["init"]).status.success());
        for (name, secret) in namespaces {
            let out = node.ctl(&["add", "--secret", secret, name]);
            assert!(out.status.success(), "{}", common::stderr(&out));
        }
        let daemon = node.start_daemon(&[]);
        let status = node.status_json();
        assert_eq!(status["nfs"]["state"], "serving", "{status}");
        let port = status["nfs"]["port"].as_u64().unwrap() as u16;
        Server {
            node,
            _daemon: daemon,
            port,
        }
    }

    fn listen(&self) -> String {
        self.node.status_json()["listen"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn dir(&self, ns: &str) -> std::path::PathBuf {
        self.node.data.join(ns)
    }

    /// A libnfs URL for `path` (`NS/file`) on this server.
    fn url(&self, path: &str) -> String {
        let p = self.port;
        format!("nfs://127.0.0.1/{path}?version=3&nfsport={p}&mountport={p}")
    }

    /// Runs a Python snippet with an `nfs_rs.Client` connected to export `/ns` as `c`.
    fn nfs_rs(&self, ns: &str, code: &str) -> Output {
        let script = format!(
            "import hashlib, sys\nimport nfs_rs\n\
             c = nfs_rs.Client.connect('nfs://127.0.0.1:{p}/{ns}?version=3&mountport={p}')\n{code}\n",
            p = self.port
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3");
        if String::from_utf8_lossy(&out.stderr).contains("No module named 'nfs_rs'") {
            panic!("the NFS client nfs-rs is missing: pip install nfs-rs (.ci/run installs it)");
        }
        out
    }

    fn nfs_rs_ok(&self, ns: &str, code: &str) -> String {
        let out = self.nfs_rs(ns, code);
        assert!(out.status.success(), "nfs-rs: {}", common::stderr(&out));
        common::stdout(&out)
    }
}

/// Runs a libnfs tool (bounded: a client that cannot connect retries for minutes).
fn libnfs(tool: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("20")
        .arg(tool)
        .args(args)
        .output()
        .expect("timeout");
    if out.status.code() == Some(127) {
        panic!(
            "the NFS client {tool} is missing: apt-get install libnfs-utils (.ci/run installs it)"
        );
    }
    out
}

fn libnfs_ok(tool: &str, args: &[&str]) -> Output {
    let out = libnfs(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    out
}

fn hash_file(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| blake3::hash(&b).to_hex().to_string())
}

/// Two nodes sharing NS; node A also has a namespace of its own.
fn pair() -> (Server, Server) {
    let solo = shoal_secret();
    let a = Server::start(&[(NS, MAKEFILE_SECRET), ("solo", &solo)], &[], None);
    let b = Server::start(&[(NS, MAKEFILE_SECRET)], &[], Some(&a.listen()));
    (a, b)
}

fn shoal_secret() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("secret")
        .output()
        .unwrap();
    common::stdout(&out).trim().to_owned()
}

#[test]
fn namespaces_at_the_export_root_and_writes_reach_every_node() {
    let (a, b) = pair();
    // The export root lists each node's namespaces; namespace roots list their files.
    let root_a = common::stdout(&libnfs_ok("nfs-ls", &[&a.url("")]));
    assert!(
        root_a.contains(" shared") && root_a.contains(" solo"),
        "{root_a}"
    );
    let root_b = common::stdout(&libnfs_ok("nfs-ls", &[&b.url("")]));
    assert!(
        root_b.contains(" shared") && !root_b.contains("solo"),
        "{root_b}"
    );

    // Written through A's NFS (libnfs): on B's disk, through B's NFS with both clients, identical.
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("in.bin");
    let data = noise(3 << 20, 1);
    std::fs::write(&local, &data).unwrap();
    libnfs_ok(
        "nfs-cp",
        &[local.to_str().unwrap(), &a.url("shared/in.bin")],
    );
    let want = blake3::hash(&data).to_hex().to_string();
    assert_eq!(
        hash_file(&a.dir(NS).join("in.bin")).as_deref(),
        Some(want.as_str())
    );
    wait_until(Duration::from_secs(30), "the file on B's disk", || {
        hash_file(&b.dir(NS).join("in.bin")).as_deref() == Some(want.as_str())
    });
    let cat = libnfs_ok("nfs-cat", &[&b.url("shared/in.bin")]);
    assert_eq!(blake3::hash(&cat.stdout).to_hex().to_string(), want);
    let sha = b.nfs_rs_ok(
        NS,
        "print(hashlib.sha256(c.open('in.bin', 'rb').read()).hexdigest())",
    );
    assert_eq!(sha.trim(), sha256_hex(&data));

    // Many small files written through B's NFS (nfs-rs) arrive on A, every one identical.
    b.nfs_rs_ok(
        NS,
        "c.mkdir('many')\n\
         for i in range(300):\n    \
             with c.open(f'many/{i}.txt', 'wb') as f: f.write(f'file {i} '.encode() * (i + 1))",
    );
    wait_until(Duration::from_secs(30), "300 files on A", || {
        (0..300).all(|i| {
            let want: Vec<u8> = format!("file {i} ").repeat(i + 1).into_bytes();
            std::fs::read(a.dir(NS).join(format!("many/{i}.txt"))).ok() == Some(want)
        })
    });
    let listed = b.nfs_rs_ok(NS, "print(len(c.listdir('many')))");
    assert_eq!(listed.trim(), "300");
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, data).unwrap();
    let out = Command::new("sha256sum").arg(&p).output().unwrap();
    common::stdout(&out)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn disk_changes_show_at_once_and_names_can_be_reused() {
    let (a, _b) = pair();
    let dir = a.dir(NS);
    // Made on disk: visible over NFS at once.
    std::fs::write(dir.join("note.txt"), b"from disk").unwrap();
    let cat = libnfs_ok("nfs-cat", &[&a.url("shared/note.txt")]);
    assert_eq!(cat.stdout, b"from disk");
    // Deleted on disk, then the same name created over NFS.
    std::fs::remove_file(dir.join("note.txt")).unwrap();
    assert!(
        !libnfs("nfs-cat", &[&a.url("shared/note.txt")])
            .status
            .success()
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("n"), b"from nfs").unwrap();
    libnfs_ok(
        "nfs-cp",
        &[
            tmp.path().join("n").to_str().unwrap(),
            &a.url("shared/note.txt"),
        ],
    );
    assert_eq!(std::fs::read(dir.join("note.txt")).unwrap(), b"from nfs");
    // Renamed over NFS, then changed on disk under its new name.
    a.nfs_rs_ok(
        NS,
        "c.mkdir('sub')\nc.rename('note.txt', 'sub/renamed.txt')",
    );
    assert!(!dir.join("note.txt").exists());
    std::fs::write(dir.join("sub/renamed.txt"), b"changed on disk").unwrap();
    let got = a.nfs_rs_ok(
        NS,
        "sys.stdout.write(c.open('sub/renamed.txt', 'rb').read().decode())",
    );
    assert_eq!(got, "changed on disk");

    // A handle held open while the file is deleted on disk: an error, never a crash; the server
    // goes on serving.
    let code = format!(
        "f = c.open('sub/renamed.txt', 'rb')\n\
         import os\nos.remove({:?})\n\
         try:\n    f.read_at(0, 10)\n    print('read a deleted file')\nexcept Exception as e:\n    print('error', type(e).__name__)",
        dir.join("sub/renamed.txt").to_str().unwrap()
    );
    let out = a.nfs_rs_ok(NS, &code);
    assert!(out.starts_with("error"), "{out}");
    // The same for a write through a handle whose file is gone.
    let code = format!(
        "f = c.open('w.txt', 'wb')\nf.write(b'first')\n\
         import os\nos.remove({:?})\n\
         try:\n    f.write_at(b'second', 0)\n    print('wrote a deleted file')\nexcept Exception as e:\n    print('error', type(e).__name__)",
        dir.join("w.txt").to_str().unwrap()
    );
    let out = a.nfs_rs_ok(NS, &code);
    assert!(out.starts_with("error"), "{out}");
    assert!(!dir.join("w.txt").exists());
    assert!(libnfs_ok("nfs-ls", &[&a.url("shared")]).status.success());
}

#[test]
fn clients_cannot_leave_their_namespace() {
    let (a, _b) = pair();
    let dir = a.dir(NS);
    std::fs::write(a.dir("solo").join("private"), b"solo only").unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../solo", dir.join("solo-link")).unwrap();
    for path in [
        "shared/etc-link/passwd",
        "shared/solo-link/private",
        "shared/../solo/private",
        "shared/../../etc/passwd",
    ] {
        let out = libnfs("nfs-cat", &[&a.url(path)]);
        assert!(
            !out.status.success()
                || (!out.stdout.starts_with(b"root:") && out.stdout != b"solo only"),
            "{path} escaped: {}",
            common::stdout(&out)
        );
    }
    for path in [
        "../solo/private",
        "etc-link/passwd",
        "solo-link/private",
        "../../etc/passwd",
    ] {
        let out = a.nfs_rs(NS, &format!("print(c.open({path:?}, 'rb').read())"));
        assert!(
            !out.status.success(),
            "{path} escaped: {}",
            common::stdout(&out)
        );
    }
    // The symlinks themselves are visible as symlinks, with their targets.
    let target = a.nfs_rs_ok(NS, "print(c.readlink('etc-link'))");
    assert_eq!(target.trim(), "/etc");
}

#[test]
fn a_one_gib_file_through_nfs_is_identical_everywhere() {
    let (a, b) = pair();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("big.bin");
    let data = noise(1 << 30, 9);
    std::fs::write(&local, &data).unwrap();
    let want = blake3::hash(&data).to_hex().to_string();
    let sha = sha256_hex(&data);
    drop(data);
    libnfs_ok(
        "nfs-cp",
        &[local.to_str().unwrap(), &a.url("shared/big.bin")],
    );
    wait_until(Duration::from_secs(120), "1 GiB on B's disk", || {
        hash_file(&b.dir(NS).join("big.bin")).as_deref() == Some(want.as_str())
    });
    let read = b.nfs_rs_ok(
        NS,
        "h = hashlib.sha256()\n\
         with c.open('big.bin', 'rb') as f:\n    \
             while True:\n        \
                 b = f.read(1 << 20)\n        \
                 if not b: break\n        \
                 h.update(b)\n\
         print(h.hexdigest())",
    );
    assert_eq!(read.trim(), sha);
}

#[test]
fn read_only_namespaces_and_disallowed_networks() {
    let ro = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["secret", "--show", MAKEFILE_SECRET])
        .output()
        .unwrap();
    let ro = common::stdout(&ro)
        .split_whitespace()
        .find(|w| w.starts_with('B') && w.len() > 40)
        .unwrap()
        .to_owned();
    let node = Server::start(&[(NS, &ro)], &[], None);
    std::fs::write(node.dir(NS).join("existing"), b"x").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"data").unwrap();
    let out = libnfs(
        "nfs-cp",
        &[
            tmp.path().join("f").to_str().unwrap(),
            &node.url("shared/new"),
        ],
    );
    assert!(!out.status.success(), "a read-only namespace took a write");
    assert!(!node.dir(NS).join("new").exists());
    let out = node.nfs_rs(NS, "c.remove('existing')");
    assert!(!out.status.success());
    assert!(node.dir(NS).join("existing").exists());
    assert_eq!(
        libnfs_ok("nfs-cat", &[&node.url("shared/existing")]).stdout,
        b"x"
    );

    // Only 10.0.0.0/8 may connect: loopback clients are dropped before a connection exists.
    let fenced = Server::start(
        &[(NS, MAKEFILE_SECRET)],
        &[("NFS_ALLOW", "10.0.0.0/8")],
        None,
    );
    let out = Command::new("timeout")
        .args(["3", "nfs-ls", &fenced.url("")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", common::stdout(&out));
    let status = fenced.node.status_json();
    assert_eq!(status["nfs"]["allow"][0], "10.0.0.0/8");
}

/// Sockets `pid` holds open.
fn sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|to| to.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn connections_that_end_any_way_leave_nothing_behind() {
    // Each allowed client holds its socket and one to the protocol library; whatever way a
    // connection ends (at once, after a partial request, after garbage, mid-reply), both must go.
    use std::io::{Read, Write};
    let node = Server::start(&[(NS, MAKEFILE_SECRET)], &[], None);
    std::fs::write(node.dir(NS).join("big"), vec![7u8; 8 << 20]).unwrap();
    let pid = node._daemon.pid();
    let addr = ("127.0.0.1", node.port);
    let idle = sockets(pid);
    // While a connection is open, its sockets are there to be seen (and the library's end of the
    // loopback one: three in all).
    let open = std::net::TcpStream::connect(addr).unwrap();
    wait_until(
        Duration::from_secs(10),
        "an open connection's sockets",
        || sockets(pid) == idle + 3,
    );
    drop(open);
    for i in 0..30 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        match i % 3 {
            0 => {}
            // The start of a record marker, and nothing more.
            1 => s.write_all(&[0x80, 0, 0]).unwrap(),
            // A record of garbage.
            _ => s
                .write_all(&[0x80, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
                .unwrap(),
        }
    }
    // A client that goes away in the middle of a large reply.
    let mut reader = Command::new("nfs-cat")
        .arg(node.url("shared/big"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nfs-cat");
    let mut first = [0u8; 4096];
    let _ = reader.stdout.as_mut().unwrap().read(&mut first);
    reader.kill().unwrap();
    reader.wait().unwrap();
    wait_until(
        Duration::from_secs(20),
        "every connection's sockets to close",
        || sockets(pid) == idle,
    );
    // And the server still serves.
    let listed = libnfs_ok("nfs-ls", &[&node.url(NS)]);
    assert!(common::stdout(&listed).contains("big"));
}
