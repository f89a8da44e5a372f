//! btsync.docker's ctl, run as a user would: the real binary, no daemon, a temp data directory.

mod common;

use common::{MAKEFILE_SECRET, Node, assert_bad_input, stderr, stdout};

#[test]
fn init_writes_the_config_once_and_keeps_an_existing_one() {
    let node = Node::new();
    let out = node.ctl(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = std::fs::read_to_string(node.config_path()).expect("config written");
    let config: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(config["listening_port"], 55555);
    assert_eq!(config["shared_folders"], serde_json::json!([]));

    let edited = first.replacen("55555", "55556", 1);
    std::fs::write(node.config_path(), &edited).expect("edit");
    assert!(node.ctl(&["init"]).status.success());
    assert_eq!(
        std::fs::read_to_string(node.config_path()).expect("read"),
        edited
    );
}

#[test]
fn add_list_has_path_del_round_trip() {
    let node = Node::new();
    let out = node.ctl(&["add", "gitlab"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        node.data.join("gitlab").is_dir(),
        "add creates DATA_PATH/NS"
    );
    assert!(node.ctl(&["add", "star-trek"]).status.success());

    assert_eq!(stdout(&node.ctl(&["list"])), "gitlab star-trek\n");

    let has = node.ctl(&["has", "gitlab"]);
    assert_eq!((has.status.code(), has.stdout.len()), (Some(0), 0));
    let hasnt = node.ctl(&["has", "nope"]);
    assert_eq!((hasnt.status.code(), hasnt.stdout.len()), (Some(1), 0));

    assert_eq!(
        stdout(&node.ctl(&["path", "gitlab"])),
        "/mnt/host-data/gitlab\n"
    );
    assert_eq!(
        stdout(&node.ctl(&["path", "--scope=host", "gitlab"])),
        "/mnt/host-data/gitlab\n"
    );
    let container = stdout(&node.ctl(&["path", "--scope=container", "gitlab"]));
    assert_eq!(
        container,
        format!("{}\n", node.data.join("gitlab").display())
    );

    let out = node.ctl(&["del", "gitlab"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.data.join("gitlab").is_dir(), "del keeps the files");
    assert_eq!(stdout(&node.ctl(&["list"])), "star-trek\n");
    assert!(node.ctl(&["del", "star-trek"]).status.success());
    assert_eq!(
        stdout(&node.ctl(&["list"])),
        "\n",
        "an empty list is an empty line"
    );
}

#[test]
fn list_with_no_config_is_an_empty_line() {
    let node = Node::new();
    let out = node.ctl(&["list"]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), "\n".to_owned())
    );
}

#[test]
fn unknown_or_duplicate_namespaces_are_errors() {
    let node = Node::new();
    assert!(node.ctl(&["add", "gitlab"]).status.success());
    assert_bad_input(&node.ctl(&["add", "gitlab"]), "already exists");
    assert_bad_input(&node.ctl(&["del", "nope"]), "no namespace nope");
    assert_bad_input(&node.ctl(&["path", "nope"]), "no namespace nope");
    assert_bad_input(&node.ctl(&["secret", "nope"]), "no namespace nope");
    assert_bad_input(&node.ctl(&["path", "--scope=moon", "gitlab"]), "moon");
    assert_bad_input(&node.ctl(&["add"]), "NAMESPACE");
    assert_bad_input(&node.ctl(&["frobnicate"]), "frobnicate");
}

#[test]
fn bad_names_are_refused_with_exit_code_2() {
    let node = Node::new();
    let long = "x".repeat(300);
    for (name, why) in [
        ("../x", "'/'"),
        ("a/b", "'/'"),
        (".hidden", "'.'"),
        ("", "empty"),
        (long.as_str(), "255"),
    ] {
        for cmd in ["add", "del", "path", "has", "secret"] {
            assert_bad_input(&node.ctl(&[cmd, name]), why);
        }
    }
    assert_eq!(stdout(&node.ctl(&["list"])), "\n", "nothing was added");
    assert!(
        !node.tmp.path().join("x").exists(),
        "../x created nothing outside DATA_PATH"
    );
}

#[test]
fn secrets_given_generated_shown_and_refused() {
    let node = Node::new();
    let out = node.ctl(&["add", &format!("--secret={MAKEFILE_SECRET}"), "gitlab"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&node.ctl(&["secret", "gitlab"]));
    assert!(
        shown.contains(&format!("read-write: {MAKEFILE_SECRET}")),
        "{shown}"
    );
    let json: serde_json::Value = node.ctl_json(&["secret", "gitlab"]);
    assert_eq!(json["read_write"], MAKEFILE_SECRET);
    let read_only = json["read_only"]
        .as_str()
        .expect("read-only secret")
        .to_owned();
    assert!(read_only.starts_with('B'), "{read_only}");

    // The same share cannot be added twice on one node, not even as its read-only secret.
    assert_bad_input(
        &node.ctl(&["add", "--secret", &read_only, "mirror"]),
        "already used",
    );

    // A read-only node holds only the B secret: it has no read-write secret to show.
    let reader = Node::new();
    assert!(
        reader
            .ctl(&["add", "--secret", &read_only, "mirror"])
            .status
            .success()
    );
    let json: serde_json::Value = reader.ctl_json(&["secret", "mirror"]);
    assert_eq!(
        (json["read_write"].is_null(), json["read_only"].as_str()),
        (true, Some(read_only.as_str()))
    );

    // Without --secret, one is generated, and each is different.
    assert!(node.ctl(&["add", "a"]).status.success());
    assert!(node.ctl(&["add", "b"]).status.success());
    let secret_of = |ns: &str| -> String {
        let v: serde_json::Value = node.ctl_json(&["secret", ns]);
        v["read_write"].as_str().expect("generated rw").to_owned()
    };
    let (a, b) = (secret_of("a"), secret_of("b"));
    assert!(a.starts_with('A') && a.len() == 33 && a != b, "{a} {b}");

    // btsync.docker's README example secret is not a valid one.
    let out = node.ctl(&["add", "--secret=e3hryu35qegqery4w5y164u5u", "bad"]);
    assert_bad_input(&out, "'A' followed by 32");
    assert_eq!(node.ctl(&["has", "bad"]).status.code(), Some(1));
}

#[test]
fn shoal_secret_generates_and_derives() {
    let node = Node::new();
    let one = stdout(&node.run(&["secret"]));
    let two = stdout(&node.run(&["secret"]));
    assert_ne!(one, two);
    let one = one.trim();
    assert!(one.starts_with('A') && one.len() == 33, "{one}");
    let shown = stdout(&node.run(&["secret", "--show", one]));
    assert!(
        shown.contains("read-only:  B") && shown.contains("share id:"),
        "{shown}"
    );
    assert_bad_input(
        &node.run(&["secret", "--show", "nonsense"]),
        "invalid secret",
    );
}

#[test]
fn twenty_parallel_adds_are_all_kept() {
    let node = Node::new();
    assert!(node.ctl(&["init"]).status.success());
    let children: Vec<_> = (0..20)
        .map(|i| {
            node.command(&["ctl", "add", &format!("ns{i:02}")])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success());
    }
    let listed = stdout(&node.ctl(&["list"]));
    let mut names: Vec<&str> = listed.split_whitespace().collect();
    names.sort();
    let want: Vec<String> = (0..20).map(|i| format!("ns{i:02}")).collect();
    assert_eq!(names, want);
}

#[test]
fn an_old_btsync_docker_config_loads_and_keeps_every_key() {
    let node = Node::new();
    std::fs::create_dir_all(&node.data).expect("mkdir");
    let old = r#"{"device_name":"btsync-1a2b3c","listening_port":55555,"check_for_updates":false,"use_upnp":false,"download_limit":0,"upload_limit":0,"storage_path":"/data","pid_file":"/var/run/btsync.pid","webui":{"listen":"0.0.0.0:8888","login":"admin","password":"admin","directory_root_policy":"belowroot"},"shared_folders":[{"secret":"A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54","dir":"/data/gitlab","use_relay_server":true,"use_tracker":true,"search_lan":true,"use_sync_trash":true}]}"#;
    std::fs::write(node.config_path(), old).expect("write");
    assert_eq!(stdout(&node.ctl(&["list"])), "gitlab\n");
    assert_eq!(node.ctl(&["has", "gitlab"]).status.code(), Some(0));

    // A change through ctl keeps every key of the old file with its value.
    let out = node.ctl(&["add", "wiki"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before: serde_json::Value = serde_json::from_str(old).expect("old JSON");
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.config_path()).expect("read"))
            .expect("JSON");
    assert_eq!(stdout(&node.ctl(&["list"])), "gitlab wiki\n");
    for (key, value) in before.as_object().expect("object") {
        if key != "shared_folders" {
            assert_eq!(&after[key], value, "key {key}");
        }
    }
    assert_eq!(after["shared_folders"][0], before["shared_folders"][0]);
}

#[test]
fn a_malformed_config_names_the_file_line_and_key() {
    let node = Node::new();
    std::fs::create_dir_all(&node.data).expect("mkdir");
    let path = node.config_path();
    let path_str = path.display().to_string();

    std::fs::write(
        &path,
        "{\n  \"device_name\": \"x\",\n  \"listening_port\": \"many\"\n}",
    )
    .expect("write");
    let out = node.ctl(&["list"]);
    assert_bad_input(&out, &path_str);
    assert!(
        stderr(&out).contains(":3:") && stderr(&out).contains("listening_port"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&path, "{\"device_name\": \"x\",").expect("write");
    assert_bad_input(&node.ctl(&["list"]), &path_str);

    std::fs::write(
        &path,
        r#"{"shared_folders":[{"secret":"nope","dir":"/data/x"}]}"#,
    )
    .expect("write");
    let out = node.ctl(&["add", "y"]);
    assert_bad_input(&out, "shared_folders[0].secret");

    std::fs::write(&path, r#"{"no_such_key": 1}"#).expect("write");
    assert_bad_input(&node.ctl(&["list"]), "no_such_key");
    assert_bad_input(&node.run(&["daemon"]), "no_such_key");
}

#[test]
fn the_binary_invoked_as_ctl_is_shoal_ctl() {
    let node = Node::new();
    let ctl = node.tmp.path().join("ctl");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_shoal"), &ctl).expect("symlink");
    let out = node
        .command_as(&ctl, &["add", "gitlab"])
        .output()
        .expect("run ctl");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.command_as(&ctl, &["list"]).output().expect("run ctl");
    assert_eq!(stdout(&out), "gitlab\n");
    let out = node
        .command_as(&ctl, &["--help"])
        .output()
        .expect("run ctl");
    assert!(stdout(&out).contains("has"), "{}", stdout(&out));
}

#[test]
fn global_options_are_accepted_before_and_after_the_command() {
    let node = Node::new();
    let alt = node.tmp.path().join("alt");
    let alt_s = alt.display().to_string();
    let out = node.run(&[
        "ctl",
        "--name=node-7",
        "--sync-port=4000",
        "--web-port=9999",
        "--web-user=ops",
        "--web-pass=hunter2hunter2",
        "--download-limit=10",
        "--upload-limit=20",
        "--auto-update=false",
        "--use-upnp=false",
        "--pid-path=/tmp/x.pid",
        "--host-data-path=/srv/host",
        "init",
        "--data-path",
        &alt_s,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(alt.join("btsync.conf")).expect("config under --data-path"),
    )
    .expect("JSON");
    assert_eq!(config["device_name"], "node-7");
    assert_eq!(config["listening_port"], 4000);
    assert_eq!(config["webui"]["listen"], "0.0.0.0:9999");
    assert_eq!(config["webui"]["login"], "ops");
    assert_eq!(config["download_limit"], 10);
    assert_eq!(config["upload_limit"], 20);
    let out = node.run(&[
        "ctl",
        "path",
        "x",
        "--host-data-path=/srv/host",
        "--data-path",
        &alt_s,
    ]);
    assert_bad_input(&out, "no namespace x");
}

#[test]
fn help_and_completions() {
    let node = Node::new();
    for args in [
        &["--help"][..],
        &["ctl", "--help"],
        &["ctl", "add", "--help"],
        &["daemon", "--help"],
        &["bootstrap", "--help"],
    ] {
        let out = node.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(stdout(&out).contains("Usage"), "{args:?}: {}", stdout(&out));
    }
    let out = node.run(&["completions", "bash"]);
    assert!(out.status.success() && stdout(&out).contains("_shoal"));
}

#[test]
fn debug_btsync_ctl_logs_to_stderr_and_keeps_stdout_clean() {
    let node = Node::new().env("DEBUG", "btsync:ctl");
    assert!(node.ctl(&["add", "gitlab"]).status.success());
    let out = node.ctl(&["path", "gitlab"]);
    assert_eq!(stdout(&out), "/mnt/host-data/gitlab\n");
    let out = node.ctl(&["del", "gitlab"]);
    assert!(
        stderr(&out).contains("removed namespace gitlab"),
        "{}",
        stderr(&out)
    );
}
