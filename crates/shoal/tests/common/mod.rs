//! Test harness: a node's directories in a temp dir, the real `shoal` binary run against them, and
//! daemons that are always stopped (by the PID we started) even when a test fails.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MAKEFILE_SECRET: &str = "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54";

/// The environment variables shoal reads; cleared for every run so the host's never leak in.
const SHOAL_ENV: &[&str] = &[
    "HOST_DATA_PATH",
    "DATA_PATH",
    "CONFIG_PATH",
    "CONFIG_INTERVAL_CHECK",
    "PID_PATH",
    "DEBUG",
    "UNAME",
    "UID",
    "GID",
    "STATE_PATH",
    "RUST_LOG",
    "SHOAL_PEERS",
    "SHOAL_LISTEN",
    "SHOAL_SYNC_PORT",
    "SHOAL_LAN",
    "NFS",
    "NFS_PORT",
    "NFS_ALLOW",
];

pub struct Node {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub host: PathBuf,
    pub extra_env: Vec<(String, String)>,
    /// A command the binary runs under (e.g. `ip netns exec NAME`).
    pub wrapper: Vec<String>,
}

impl Node {
    pub fn new() -> Node {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        Node {
            host: PathBuf::from("/mnt/host-data"),
            data,
            tmp,
            extra_env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Node {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.data.join("btsync.conf")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.tmp.path().join("shoal.pid")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.data.join(".shoal/control.sock")
    }

    /// `shoal ARGS` with this node's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_as(Path::new(env!("CARGO_BIN_EXE_shoal")), args)
    }

    /// The same binary run under another name (the `ctl` multicall).
    pub fn command_as(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        for key in SHOAL_ENV {
            cmd.env_remove(key);
        }
        cmd.env("DATA_PATH", &self.data)
            .env("HOST_DATA_PATH", &self.host)
            .env("PID_PATH", self.pid_path())
            .env("UID", nix::unistd::getuid().to_string())
            .env("GID", nix::unistd::getgid().to_string())
            .env("DEBUG", "")
            .env("CONFIG_INTERVAL_CHECK", "1")
            // Tests stay on loopback, each daemon on a port of its own.
            .env("SHOAL_LISTEN", "127.0.0.1")
            .env("SHOAL_SYNC_PORT", "0")
            // No multicast outside loopback or namespaces the test creates.
            .env("SHOAL_LAN", "off")
            // Many daemons run at once: NFS only where a test asks for it (on a port of its own).
            .env("NFS", "off")
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run shoal")
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["ctl"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Starts the daemon and waits until its control socket answers.
    pub fn start_daemon(&self, args: &[&str]) -> Daemon {
        let mut all = vec!["daemon"];
        all.extend_from_slice(args);
        self.spawn_daemon(&all)
    }

    pub fn spawn_daemon(&self, args: &[&str]) -> Daemon {
        let log = self.tmp.path().join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn daemon");
        let mut daemon = Daemon {
            child: Some(child),
            log,
        };
        let socket = self.socket_path();
        wait_until(
            Duration::from_secs(10),
            "the daemon's control socket",
            || {
                if let Some(status) = daemon.try_wait() {
                    panic!("daemon exited early with {status}; log:\n{}", daemon.log());
                }
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            },
        );
        daemon
    }

    /// `ctl ARGS --json`, which must succeed, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        assert_eq!(out.status.code(), Some(0), "ctl {args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("ctl --json prints JSON")
    }

    pub fn status_json(&self) -> serde_json::Value {
        self.ctl_json(&["status"])
    }

    pub fn running_namespaces(&self) -> Vec<String> {
        self.status_json()["namespaces"]
            .as_array()
            .expect("namespaces array")
            .iter()
            .map(|n| n["name"].as_str().expect("name").to_owned())
            .collect()
    }
}

/// A daemon we started; killed (by its PID) when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit; panics after `deadline`.
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
        deadline: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("kill");
        let mut status = None;
        let ended = poll_until(deadline, || {
            status = self.try_wait();
            status.is_some()
        });
        assert!(
            ended,
            "daemon still running {deadline:?} after {signal}; log:\n{}",
            self.log()
        );
        self.child = None;
        (status.expect("polled until it ended"), start.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub use shoal_core::testing::{poll_until, wait_until};

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Bad input: exit code 2, a message on stderr, nothing that looks like a panic.
pub fn assert_bad_input(out: &Output, mentions: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "want exit 2; stderr: {err}");
    assert!(
        err.contains(mentions),
        "stderr should mention {mentions:?}: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "panic: {err}"
    );
}

/// A network namespace of our own with multicast on its loopback, removed when dropped. `None`
/// when this process may not create one (not root).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Option<NetNs> {
        let name = format!("shoal-{tag}-{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            return None;
        }
        let ns = NetNs { name };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"],
            &["route", "add", "224.0.0.0/4", "dev", "lo"],
        ] {
            let mut all = vec!["netns", "exec", ns.name.as_str(), "ip"];
            all.extend_from_slice(args);
            assert!(ok(&all), "ip {all:?}");
        }
        Some(ns)
    }

    /// The wrapper that runs a command inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", self.name.as_str()]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
