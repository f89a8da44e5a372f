//! The daemon's life: live changes through ctl, config edits picked up, signals, one daemon per state.

mod common;

use std::time::Duration;

use common::{MAKEFILE_SECRET, Node, assert_bad_input, stderr, stdout, wait_until};
use nix::sys::signal::Signal;

#[test]
fn ctl_add_and_del_are_live_when_ctl_returns() {
    let node = Node::new();
    let _daemon = node.start_daemon(&[]);
    assert!(node.running_namespaces().is_empty());

    let out = node.ctl(&["add", "gitlab", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(reply["live"], true, "went through the daemon");
    // No waiting: the daemon answers only once the namespace runs.
    assert_eq!(node.running_namespaces(), ["gitlab"]);
    assert!(node.data.join("gitlab/.sync").is_dir());
    assert_eq!(stdout(&node.ctl(&["list"])), "gitlab\n");

    assert_bad_input(&node.ctl(&["add", "gitlab"]), "already exists");
    assert_bad_input(&node.ctl(&["add", "../x"]), "'/'");
    assert_bad_input(
        &node.ctl(&["add", "--secret=e3hryu35qegqery4w5y164u5u", "y"]),
        "invalid secret",
    );

    assert!(node.ctl(&["del", "gitlab"]).status.success());
    assert!(node.running_namespaces().is_empty());
    assert_bad_input(&node.ctl(&["del", "gitlab"]), "no namespace gitlab");
}

#[test]
fn status_reports_namespaces_and_says_when_no_daemon_runs() {
    let node = Node::new();
    assert!(
        node.ctl(&["add", "--secret", MAKEFILE_SECRET, "gitlab"])
            .status
            .success()
    );
    let out = node.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(3), "not running");
    assert!(stdout(&out).contains("not running") && stdout(&out).contains("gitlab"));

    let daemon = node.start_daemon(&[]);
    // "starting" until the first scan of the namespace is done.
    wait_until(Duration::from_secs(10), "the namespace to be idle", || {
        node.status_json()["namespaces"][0]["state"] == "idle"
    });
    let status = node.status_json();
    assert_eq!(status["pid"], daemon.pid());
    let ns = &status["namespaces"][0];
    assert_eq!(
        (
            ns["name"].as_str(),
            ns["state"].as_str(),
            ns["access"].as_str()
        ),
        (Some("gitlab"), Some("idle"), Some("read-write"))
    );
    let text = stdout(&node.ctl(&["status"]));
    assert!(
        text.contains("running, pid") && text.contains("gitlab"),
        "{text}"
    );
}

#[test]
fn config_file_edits_are_applied_within_the_interval() {
    let node = Node::new();
    assert!(node.ctl(&["add", "first"]).status.success());
    let daemon = node.start_daemon(&[]);
    assert_eq!(node.running_namespaces(), ["first"]);

    // Edit the file as an operator (or btsync.docker's tooling) would, behind the daemon's back.
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let path = node.config_path();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        f(&mut config);
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON")).expect("write");
    };
    std::fs::create_dir_all(node.data.join("second")).expect("mkdir");
    let dir = node.data.join("second").display().to_string();
    edit(&|c| {
        c["shared_folders"]
            .as_array_mut()
            .expect("array")
            .push(serde_json::json!({ "secret": MAKEFILE_SECRET, "dir": dir }))
    });
    // CONFIG_INTERVAL_CHECK=1: applied within a couple of intervals, with no restart.
    wait_until(Duration::from_secs(5), "the added namespace", || {
        node.running_namespaces().len() == 2
    });

    // A broken file is reported and the daemon keeps running what it had.
    std::fs::write(node.config_path(), "{ broken").expect("write");
    wait_until(Duration::from_secs(5), "the error in the log", || {
        daemon.log().contains("invalid")
    });
    assert_eq!(node.running_namespaces().len(), 2);

    edit_fresh(&node, &[]);
    wait_until(Duration::from_secs(5), "the removal", || {
        node.running_namespaces().is_empty()
    });
}

fn edit_fresh(node: &Node, dirs: &[&str]) {
    let folders: Vec<serde_json::Value> = dirs
        .iter()
        .map(|d| serde_json::json!({ "secret": MAKEFILE_SECRET, "dir": d }))
        .collect();
    let config = serde_json::json!({ "device_name": "n", "shared_folders": folders });
    std::fs::write(node.config_path(), config.to_string()).expect("write");
}

#[test]
fn sigterm_and_sigint_stop_cleanly_within_five_seconds() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let node = Node::new();
        assert!(node.ctl(&["add", "gitlab"]).status.success());
        let mut daemon = node.start_daemon(&[]);
        assert!(node.pid_path().exists(), "PID file written");
        let pid: i32 = std::fs::read_to_string(node.pid_path())
            .expect("pid")
            .trim()
            .parse()
            .expect("number");
        assert_eq!(pid, daemon.pid());
        let (status, took) = daemon.stop_with(signal, Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{signal}: log:\n{}", daemon.log());
        assert!(took < Duration::from_secs(5));
        assert!(!node.pid_path().exists(), "PID file removed");
        assert!(!node.socket_path().exists(), "socket removed");
        assert_eq!(node.ctl(&["status"]).status.code(), Some(3));
    }
}

#[test]
fn a_second_daemon_on_the_same_state_is_refused() {
    let node = Node::new();
    let first = node.start_daemon(&[]);
    let out = node.run(&["daemon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&first.pid().to_string()),
        "{}",
        stderr(&out)
    );
    // The first is unharmed.
    assert_eq!(node.status_json()["pid"], first.pid());
}

#[test]
fn bootstrap_adds_then_runs_and_is_idempotent_on_restart() {
    let node = Node::new();
    let mut daemon = node.spawn_daemon(&["bootstrap", MAKEFILE_SECRET, "testing", "other"]);
    assert_eq!(node.running_namespaces(), ["other", "testing"]);
    // Two namespaces cannot share one secret: each gets its own, derived alike on every node.
    let rw = |ns: &str| -> String {
        let v: serde_json::Value = node.ctl_json(&["secret", ns]);
        v["read_write"].as_str().expect("rw").to_owned()
    };
    let (testing, other) = (rw("testing"), rw("other"));
    assert_ne!(testing, other);
    let elsewhere = Node::new();
    let mut second = elsewhere.spawn_daemon(&["bootstrap", MAKEFILE_SECRET, "testing", "other"]);
    let theirs: serde_json::Value = elsewhere.ctl_json(&["secret", "testing"]);
    assert_eq!(theirs["read_write"].as_str(), Some(testing.as_str()));
    second.stop_with(Signal::SIGTERM, Duration::from_secs(5));
    daemon.stop_with(Signal::SIGTERM, Duration::from_secs(5));

    // One namespace gets the secret itself, as with btsync.docker.
    let single = Node::new();
    let mut third = single.spawn_daemon(&["bootstrap", MAKEFILE_SECRET, "solo"]);
    let solo: serde_json::Value = single.ctl_json(&["secret", "solo"]);
    assert_eq!(solo["read_write"], MAKEFILE_SECRET);
    third.stop_with(Signal::SIGTERM, Duration::from_secs(5));

    // The container restarts with the same arguments: fine.
    let mut daemon = node.spawn_daemon(&["bootstrap", MAKEFILE_SECRET, "testing", "other"]);
    assert_eq!(stdout(&node.ctl(&["list"])), "testing other\n");
    daemon.stop_with(Signal::SIGTERM, Duration::from_secs(5));

    // The same name with another secret is a conflict, not a silent change of share.
    let other = stdout(&node.run(&["secret"]));
    let out = node.run(&["bootstrap", other.trim(), "testing", "other"]);
    assert_bad_input(&out, "different secret");
    assert_bad_input(
        &node.run(&["bootstrap", "e3hryu35qegqery4w5y164u5u", "x"]),
        "invalid secret",
    );
    assert_bad_input(&node.run(&["bootstrap", MAKEFILE_SECRET, ".x"]), "'.'");
}

#[test]
fn a_namespace_whose_directory_vanished_is_an_error_not_an_empty_folder() {
    let node = Node::new();
    assert!(node.ctl(&["add", "gitlab"]).status.success());
    std::fs::remove_dir_all(node.data.join("gitlab")).expect("rm");
    let _daemon = node.start_daemon(&[]);
    let ns = &node.status_json()["namespaces"][0];
    assert_eq!(ns["state"], "error");
    assert!(
        ns["detail"]
            .as_str()
            .expect("detail")
            .contains("does not exist")
    );
    assert!(!node.data.join("gitlab").exists(), "not silently recreated");
}

#[test]
fn started_as_root_the_daemon_drops_to_uid_and_gid() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the privilege drop is exercised only when the tests run as root");
        return;
    }
    let node = Node::new().env("UID", "4242").env("GID", "4343");
    // The temp dir is 0700; the daemon's user must be able to reach DATA_PATH inside it.
    std::fs::set_permissions(
        node.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    assert!(node.ctl(&["add", "gitlab"]).status.success());
    let daemon = node.start_daemon(&[]);
    // The control socket is bound while still root (it may live in a root-only directory) and
    // accepts connections from then on: the drop follows a moment later. (Read at once, a busy
    // CI machine saw uid 0.)
    let read_status =
        || std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).expect("proc");
    let dropped = |status: &str| {
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && !l.split_whitespace().skip(1).any(|id| id == "0"))
    };
    common::poll_until(Duration::from_secs(10), || dropped(&read_status()));
    let status = read_status();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .expect(name)
            .to_owned()
    };
    assert!(
        field("Uid:")
            .split_whitespace()
            .skip(1)
            .all(|id| id == "4242"),
        "{}",
        field("Uid:")
    );
    assert!(
        field("Gid:")
            .split_whitespace()
            .skip(1)
            .all(|id| id == "4343"),
        "{}",
        field("Gid:")
    );
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(node.data.join("gitlab")).expect("stat");
    assert_eq!(
        (owner.uid(), owner.gid()),
        (4242, 4343),
        "ctl as root gives new namespaces to the daemon's user"
    );
    // ctl (as root) still works against the unprivileged daemon.
    assert!(node.ctl(&["add", "wiki"]).status.success());
    assert_eq!(node.running_namespaces(), ["gitlab", "wiki"]);
}
