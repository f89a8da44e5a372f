//! Loading: the btsync.docker file, what it round-trips to, and every error pointing at its cause.

use shoal_config::{Config, ConfigError};
use shoal_core::name::NamespaceName;

const PATH: &str = "/data/btsync.conf";

/// A `btsync.conf` as btsync.docker's `ctl` wrote it (`JSON.stringify`, one line).
const BTSYNC_DOCKER: &str = r#"{"device_name":"btsync-1a2b3c","listening_port":55555,"check_for_updates":false,"use_upnp":false,"download_limit":0,"upload_limit":0,"storage_path":"/data","pid_file":"/var/run/btsync.pid","webui":{"listen":"0.0.0.0:8888","login":"admin","password":"admin","directory_root_policy":"belowroot"},"shared_folders":[{"secret":"A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54","dir":"/data/gitlab","use_relay_server":true,"use_tracker":true,"search_lan":true,"use_sync_trash":true}]}"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, PATH)
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("{text:?} parsed as {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("test JSON")
}

#[test]
fn btsync_docker_config_loads_and_lists_gitlab() {
    let config = parse(BTSYNC_DOCKER).expect("btsync.docker's config loads");
    let gitlab = NamespaceName::new("gitlab").expect("name");
    assert_eq!(config.namespaces(), vec![gitlab.clone()]);
    let folder = config.folder(&gitlab).expect("gitlab is there");
    assert_eq!(folder.dir, std::path::Path::new("/data/gitlab"));
    assert_eq!(
        folder.secret.to_string(),
        "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54"
    );
    assert_eq!(config.listening_port, 55555);
    assert_eq!(config.webui.login.as_deref(), Some("admin"));
}

#[test]
fn btsync_docker_config_round_trips_key_for_key() {
    let config = parse(BTSYNC_DOCKER).expect("loads");
    let saved = config.to_json_pretty().expect("serialises");
    assert_eq!(json(&saved), json(BTSYNC_DOCKER));
    // Same order too: compact, it is the very text btsync.docker wrote.
    assert_eq!(
        serde_json::to_string(&config).expect("serialises"),
        BTSYNC_DOCKER
    );
}

#[test]
fn every_kept_key_round_trips() {
    let all = r#"{
      "device_name": "n", "listening_port": 4000, "check_for_updates": true, "use_upnp": true,
      "download_limit": 100, "upload_limit": 200, "storage_path": "/s", "pid_file": "/p",
      "webui": {
        "listen": "127.0.0.1:9", "login": "l", "password": "p", "password_hash": "h",
        "password_hash_unified": "u", "password_hash_salt_unified": "s",
        "allow_empty_password": false, "api_key": "k", "directory_root": "/",
        "directory_root_policy": "all", "dir_whitelist": ["/a", "b"], "force_https": true,
        "ssl_certificate": "/c.pem", "ssl_private_key": "/k.pem"
      },
      "shared_folders": [{
        "secret": "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54", "dir": "/d/x", "use_relay_server": false,
        "use_tracker": false, "search_lan": false, "use_sync_trash": false,
        "overwrite_changes": true, "selective_sync": false, "use_dht": false,
        "known_hosts": ["10.0.0.1:55555", "peer"]
      }],
      "folder_rescan_interval": 60, "known_hosts": ["node1:55555"], "sync_trash_ttl": 7,
      "use_gui": false, "lan_encrypt_data": true, "lan_use_tcp": false,
      "rate_limit_local_peers": false, "external_port": 1234, "disk_low_priority": true,
      "config_refresh_interval": 3600, "max_file_size_for_versioning": 1000,
      "max_file_size_diff_for_patching": 1000, "sync_max_time_diff": 600,
      "peer_expiration_days": 7, "log_size": 10, "profiler_enabled": false,
      "recv_buf_size": 5, "send_buf_size": 5, "directory_root": "/", "directory_root_policy": "all",
      "proxy_type": "socks5", "proxy_addr": "1.2.3.4", "proxy_port": 1080, "proxy_auth": true,
      "proxy_username": "u", "proxy_password": "p"
    }"#;
    let config = parse(all).expect("every documented key loads");
    assert_eq!(
        json(&config.to_json_pretty().expect("serialises")),
        json(all)
    );
    assert_eq!(config.folder_rescan_interval().as_secs(), 60);
    assert_eq!(config.known_hosts(), ["node1:55555"]);
    assert!(!config.shared_folders[0].use_sync_trash());
}

#[test]
fn an_empty_object_is_a_config_of_defaults_and_stays_small() {
    let config = parse("{}").expect("{} is a config");
    assert_eq!(config, Config::default());
    assert_eq!(config.listening_port, 55555);
    assert_eq!(config.webui.listen, "0.0.0.0:8888");
    assert_eq!(config.folder_rescan_interval().as_secs(), 600);
    assert_eq!(config.sync_trash_ttl().as_secs(), 30 * 24 * 3600);
    // Only the keys shoal requires appear; nothing optional is invented.
    let saved = json(&config.to_json_pretty().expect("serialises"));
    let keys: Vec<&str> = saved
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "device_name",
            "listening_port",
            "download_limit",
            "upload_limit",
            "webui",
            "shared_folders"
        ]
    );
}

#[test]
fn unknown_keys_are_errors_that_name_them() {
    let e = error(&BTSYNC_DOCKER.replace("\"use_upnp\"", "\"use_upnpp\""));
    assert!(e.starts_with("/data/btsync.conf:1:"), "{e}");
    assert!(
        e.contains("use_upnpp: unknown key \"use_upnpp\"; did you mean \"use_upnp\"?"),
        "{e}"
    );

    let e = error(&BTSYNC_DOCKER.replace("\"login\"", "\"colour\""));
    assert!(e.contains("webui.colour: unknown key \"colour\""), "{e}");

    let e = error(&BTSYNC_DOCKER.replace("\"search_lan\"", "\"serch_lan\""));
    assert!(
        e.contains("shared_folders[0].serch_lan: unknown key"),
        "{e}"
    );
    assert!(e.contains("did you mean \"search_lan\""), "{e}");
}

#[test]
fn a_bad_secret_names_the_file_line_and_key() {
    let text = BTSYNC_DOCKER
        .replace(",\"shared_folders\"", ",\n\"shared_folders\"")
        .replace(
            "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54",
            "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT5!",
        );
    let err = parse(&text).expect_err("bad secret");
    let ConfigError::Parse { line, key, .. } = &err else {
        panic!("not a parse error: {err:?}");
    };
    assert_eq!((*line, key.as_str()), (2, "shared_folders[0].secret"));
    let e = err.to_string();
    assert!(e.starts_with("/data/btsync.conf:2:"), "{e}");
    assert!(
        e.contains(": shared_folders[0].secret: invalid secret \"A22QYM…\""),
        "{e}"
    );
    assert!(
        !e.contains("A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT5"),
        "the whole secret leaked: {e}"
    );
}

#[test]
fn malformed_json_names_the_line_and_column() {
    let text = "{\n  \"device_name\": \"x\",\n  \"listening_port\": 55555,,\n}";
    let err = parse(text).expect_err("malformed");
    let ConfigError::Parse { line, column, .. } = err else {
        panic!("not a parse error: {err:?}");
    };
    assert_eq!((line, column), (3, 27));
    assert!(
        error("{\n  // a comment\n}").contains(":2:3: key must be a string (JSON has no comments")
    );
}

#[test]
fn wrong_types_name_the_key() {
    let e = error(r#"{"listening_port": 70000}"#);
    assert!(
        e.contains(": listening_port: invalid value: integer `70000`, expected u16"),
        "{e}"
    );
    let e = error(r#"{"webui": ["0.0.0.0:8888"]}"#);
    assert!(
        e.contains(": webui: invalid type: sequence, expected a JSON object"),
        "{e}"
    );
    let e = error(r#"{"shared_folders": [{"dir": "/data/x"}]}"#);
    assert!(
        e.contains(": shared_folders[0].secret: this key is required"),
        "{e}"
    );
    let e = error(r#"{"device_name": "a", "device_name": "b"}"#);
    assert!(e.contains(": device_name: this key appears twice"), "{e}");
}

#[test]
fn two_folders_for_one_namespace_are_refused() {
    let two = |dir2: &str, secret2: &str| {
        format!(
            r#"{{"shared_folders": [
                {{"secret": "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54", "dir": "/data/gitlab"}},
                {{"secret": "{secret2}", "dir": "{dir2}"}}]}}"#
        )
    };
    let other = "ABCDEFGHIJKLMNOPQRSTUVWXYZ2345672";
    let e = error(&two("/mnt/gitlab", other));
    assert_eq!(
        e,
        "/data/btsync.conf: shared_folders[1].dir: namespace gitlab is already shared_folders[0] \
         (/data/gitlab); namespaces are named after the last component of dir and must be unique"
    );
    let e = error(&two("/data/gitlab/", other));
    assert!(
        e.contains("shared_folders[1].dir: \"/data/gitlab/\" is already shared by"),
        "{e}"
    );
    let e = error(&two("/data/other", "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54"));
    assert!(
        e.contains("shared_folders[1].secret: the same secret as shared_folders[0]"),
        "{e}"
    );
    assert!(parse(&two("/data/other", other)).is_ok());
}

#[test]
fn semantic_errors_name_the_key() {
    let folder = |dir: &str| {
        format!(
            r#"{{"shared_folders": [{{"secret": "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54", "dir": "{dir}"}}]}}"#
        )
    };
    for (text, want) in [
        (
            r#"{"listening_port": 0}"#.to_owned(),
            "/data/btsync.conf: listening_port: 0 would pick",
        ),
        (
            r#"{"folder_rescan_interval": 0}"#.to_owned(),
            ": folder_rescan_interval: must be",
        ),
        (
            r#"{"webui": {"listen": "8888"}}"#.to_owned(),
            ": webui.listen: \"8888\" is not",
        ),
        (
            r#"{"known_hosts": ["a b"]}"#.to_owned(),
            ": known_hosts[0]: \"a b\" is not",
        ),
        (
            folder("data/gitlab"),
            ": shared_folders[0].dir: \"data/gitlab\" is not an absolute",
        ),
        (
            folder("/data/.shoal"),
            ": shared_folders[0].dir: the last component of /data/.shoal",
        ),
        (
            folder("/"),
            ": shared_folders[0].dir: / has no last component",
        ),
    ] {
        let e = error(&text);
        assert!(e.contains(want), "{text}: {e}");
        assert!(parse(&text).is_err_and(|e| e.is_bad_input()));
    }
}

#[test]
fn a_missing_file_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Config::load(dir.path().join("btsync.conf")).expect_err("missing");
    assert!(matches!(err, ConfigError::NotFound { .. }), "{err:?}");
    assert!(!err.is_bad_input());
    assert!(err.to_string().contains("`ctl init`"));
}

#[test]
fn nasty_inputs_are_errors_not_panics() {
    let deep_array = vec![b'['; 10 * 1024 * 1024];
    let deep_object: Vec<u8> = [br#"{"shared_folders":"#.as_slice(), &deep_array].concat();
    let deep_map: Vec<u8> = br#"{"webui":"#.repeat(100_000);
    let inputs: Vec<&[u8]> = vec![
        b"",
        b"   \n",
        b"[]",
        b"{",
        b"}",
        b"null",
        b"0",
        b"\"x\"",
        b"{} {}",
        b"{\"device_name\": \"\xff\xfe\"}",
        b"\xff\xfe\x00{",
        b"\xef\xbb\xbf{}",
        b"{\"listening_port\": -1}",
        b"{\"listening_port\": 1e400}",
        b"{\"download_limit\": 18446744073709551616}",
        b"{\"shared_folders\": [null]}",
        b"{\"shared_folders\": {}}",
        b"{\"shared_folders\": [{\"secret\": 5, \"dir\": []}]}",
        b"{\"device_name\": \"\\ud800\"}",
        &deep_array,
        &deep_object,
        &deep_map,
    ];
    for input in inputs {
        let shown = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
        match Config::parse_bytes(input, PATH) {
            Err(ConfigError::Parse { line, column, .. }) => {
                assert!(line >= 1 && column >= 1, "{shown:?}: {line}:{column}")
            }
            other => panic!("{shown:?} gave {other:?}"),
        }
    }
}

#[test]
fn every_truncation_and_byte_flip_of_a_real_config_is_handled() {
    let text = BTSYNC_DOCKER.as_bytes();
    for end in 0..text.len() {
        assert!(
            Config::parse_bytes(&text[..end], PATH).is_err(),
            "prefix {end} parsed"
        );
    }
    for i in 0..text.len() {
        for byte in [b'"', b'{', b']', b'\\', b'0', 0xff, b'\n', b':'] {
            let mut bad = text.to_vec();
            bad[i] = byte;
            let _ = Config::parse_bytes(&bad, PATH); // must return, whatever it says
        }
    }
}

#[test]
fn debug_output_hides_secrets_and_passwords() {
    let config = parse(BTSYNC_DOCKER).expect("loads");
    let shown = format!(
        "{config:?} {:?} {:?}",
        config.webui, config.shared_folders[0]
    );
    assert!(
        !shown.contains("A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54"),
        "{shown}"
    );
    assert!(!shown.contains("\"password\":\"admin\""), "{shown}");
    assert!(shown.contains("/data/gitlab"), "{shown}");
}

#[test]
fn a_secret_and_its_read_only_form_are_one_share() {
    let rw: shoal_core::secret::Secret =
        "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54".parse().expect("secret");
    let ro = rw.read_only().to_string();
    let text = format!(
        r#"{{"shared_folders": [
            {{"secret": "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54", "dir": "/data/a"}},
            {{"secret": "{ro}", "dir": "/data/b"}}]}}"#
    );
    let e = error(&text);
    assert!(
        e.contains("shared_folders[1].secret: the same secret as shared_folders[0]"),
        "{e}"
    );
    let mut config = parse("{}").expect("empty");
    config
        .add_folder(NamespaceName::new("a").expect("name"), rw, "/data/a".into())
        .expect("add");
    let again = config.add_folder(
        NamespaceName::new("b").expect("name"),
        ro.parse().expect("ro"),
        "/data/b".into(),
    );
    assert!(
        matches!(again, Err(ConfigError::SecretInUse { .. })),
        "{again:?}"
    );
}

#[test]
fn a_bad_secret_is_explained_without_being_shown() {
    let text = BTSYNC_DOCKER.replace(
        "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54",
        "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT5",
    );
    let e = error(&text);
    assert!(
        e.contains("invalid secret \"A22QYM…\": it is 32 characters long"),
        "{e}"
    );
    assert_eq!(e.matches("invalid secret").count(), 1, "{e}");
}
