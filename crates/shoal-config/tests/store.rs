//! Saving and editing: atomic replace, mode and owner kept, concurrent editors all kept.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shoal_config::{Config, ConfigError, edit, edit_or_create, init, lock_path};
use shoal_core::name::NamespaceName;
use shoal_core::secret::Secret;

const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A distinct, well-formed read-write secret for every `n`.
fn secret(n: usize) -> Secret {
    let mut text = String::from("A");
    for i in 0..32 {
        let digit = if i < 4 {
            (n >> (5 * i)) & 31
        } else {
            (i * 7) % 32
        };
        text.push(BASE32[digit] as char);
    }
    text.parse()
        .unwrap_or_else(|_| panic!("{text} is a valid secret"))
}

fn name(s: &str) -> NamespaceName {
    NamespaceName::new(s).expect("valid name")
}

fn node(dir: &Path) -> Config {
    Config::new_default("node-1".into(), dir.to_path_buf())
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    Fixture {
        path: root.join("btsync.conf"),
        root,
        _dir: dir,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

/// Everything in the directory but the config and its lock: leftovers of a save.
fn leftovers(f: &Fixture) -> Vec<String> {
    fs::read_dir(&f.root)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "btsync.conf" && n != "btsync.conf.lock")
        .collect()
}

#[test]
fn save_writes_pretty_json_that_loads_back_as_a_new_0600_file() {
    let f = fixture();
    let mut config = node(&f.root);
    config
        .add_folder(name("gitlab"), secret(1), f.root.join("gitlab"))
        .expect("add");
    config.save(&f.path).expect("save");
    assert_eq!(Config::load(&f.path).expect("load"), config);
    assert_eq!(mode(&f.path), 0o600);
    let text = fs::read_to_string(&f.path).expect("read");
    assert!(
        text.starts_with("{\n  \"device_name\": \"node-1\",\n"),
        "{text}"
    );
    assert!(text.ends_with("}\n"));
    assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
}

#[test]
fn save_keeps_the_mode_of_the_file_it_replaces() {
    let f = fixture();
    node(&f.root).save(&f.path).expect("save");
    fs::set_permissions(&f.path, fs::Permissions::from_mode(0o640)).expect("chmod");
    let inode = fs::metadata(&f.path).expect("metadata").ino();
    let mut config = Config::load(&f.path).expect("load");
    config.device_name = "renamed".into();
    config.save(&f.path).expect("save");
    assert_eq!(mode(&f.path), 0o640);
    assert_ne!(
        fs::metadata(&f.path).expect("metadata").ino(),
        inode,
        "replaced, not rewritten"
    );
    assert_eq!(Config::load(&f.path).expect("load").device_name, "renamed");
}

#[test]
fn a_root_save_keeps_the_daemon_users_ownership() {
    let f = fixture();
    node(&f.root).save(&f.path).expect("save");
    if fs::metadata(&f.path).expect("metadata").uid() != 0 {
        return; // only root can give a file away; nothing to keep otherwise
    }
    std::os::unix::fs::chown(&f.path, Some(1000), Some(1000)).expect("chown");
    node(&f.root).save(&f.path).expect("save as root");
    let meta = fs::metadata(&f.path).expect("metadata");
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
}

#[test]
fn save_writes_through_a_symlink() {
    let f = fixture();
    let real = f.root.join("real.conf");
    node(&f.root).save(&real).expect("save");
    std::os::unix::fs::symlink(&real, &f.path).expect("symlink");
    let mut config = Config::load(&f.path).expect("load");
    config.device_name = "via-link".into();
    config.save(&f.path).expect("save");
    assert!(
        fs::symlink_metadata(&f.path)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(Config::load(&real).expect("load").device_name, "via-link");
}

#[test]
fn save_refuses_an_invalid_config_and_writes_nothing() {
    let f = fixture();
    let mut config = node(&f.root);
    config.listening_port = 0;
    let err = config.save(&f.path).expect_err("invalid");
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
    assert!(!f.path.exists());
}

#[test]
fn twenty_concurrent_editors_are_all_kept() {
    let f = fixture();
    node(&f.root).save(&f.path).expect("save");
    std::thread::scope(|s| {
        for i in 0..20 {
            let (path, root) = (&f.path, &f.root);
            s.spawn(move || {
                let ns = name(&format!("ns{i}"));
                edit(path, |c: &mut Config| {
                    c.add_folder(ns.clone(), secret(i), root.join(ns.as_str()))
                })
                .expect("edit");
            });
        }
    });
    let config = Config::load(&f.path).expect("load");
    let mut names: Vec<String> = config.namespaces().iter().map(|n| n.to_string()).collect();
    names.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("ns{i}")).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
    assert!(lock_path(&f.path).exists(), "the lock file stays");
}

#[test]
fn a_failed_edit_changes_nothing() {
    let f = fixture();
    node(&f.root).save(&f.path).expect("save");
    let before = fs::read(&f.path).expect("read");
    let ino = fs::metadata(&f.path).expect("metadata").ino();
    let result: Result<(), ConfigError> = edit(&f.path, |c| {
        c.device_name = "half-done".into();
        Err(ConfigError::NoSuchNamespace(name("nope")))
    });
    assert!(matches!(result, Err(ConfigError::NoSuchNamespace(_))));
    assert_eq!(fs::read(&f.path).expect("read"), before);

    // An edit that changes nothing does not rewrite the file either.
    let _: Result<(), ConfigError> = edit(&f.path, |_| Ok(()));
    assert_eq!(fs::metadata(&f.path).expect("metadata").ino(), ino);
}

#[test]
fn edit_adds_and_removes_folders() {
    let f = fixture();
    node(&f.root).save(&f.path).expect("save");
    let gitlab = name("gitlab");
    let dir = f.root.join("gitlab");
    edit(&f.path, |c| {
        c.add_folder(gitlab.clone(), secret(1), dir.clone())
    })
    .expect("add");
    let again = edit(&f.path, |c| {
        c.add_folder(gitlab.clone(), secret(2), dir.clone())
    });
    assert!(matches!(again, Err(ConfigError::AlreadyExists(n)) if n == gitlab));
    let same_secret = edit(&f.path, |c| {
        c.add_folder(name("other"), secret(1), f.root.join("other"))
    });
    assert!(
        matches!(same_secret, Err(ConfigError::SecretInUse { .. })),
        "{same_secret:?}"
    );
    let elsewhere = edit(&f.path, |c| {
        c.add_folder(name("x"), secret(3), f.root.join("y"))
    });
    assert!(
        matches!(elsewhere, Err(ConfigError::DirMismatch { .. })),
        "{elsewhere:?}"
    );

    let removed = edit(&f.path, |c| c.remove_folder(&gitlab)).expect("remove");
    assert_eq!(removed.dir, dir);
    let missing = edit(&f.path, |c| c.remove_folder(&gitlab));
    assert!(matches!(missing, Err(ConfigError::NoSuchNamespace(_))));
    assert!(Config::load(&f.path).expect("load").namespaces().is_empty());
}

#[test]
fn edit_of_a_missing_file_is_not_found_unless_asked_to_create() {
    let f = fixture();
    let result: Result<(), ConfigError> = edit(&f.path, |_| Ok(()));
    assert!(matches!(result, Err(ConfigError::NotFound { .. })));
    assert!(!f.path.exists());
    edit_or_create(
        &f.path,
        || node(&f.root),
        |c| c.add_folder(name("a"), secret(1), f.root.join("a")),
    )
    .expect("created");
    assert_eq!(
        Config::load(&f.path).expect("load").namespaces(),
        vec![name("a")]
    );
}

#[test]
fn init_writes_only_a_missing_file() {
    let f = fixture();
    assert!(init(&f.path, || node(&f.root)).expect("init"));
    assert_eq!(Config::load(&f.path).expect("load"), node(&f.root));
    assert_eq!(mode(&f.path), 0o600);

    // An existing file is kept byte for byte, even one that would not load.
    fs::write(&f.path, "{ not json").expect("write");
    let made = std::cell::Cell::new(false);
    let created = init(&f.path, || {
        made.set(true);
        node(&f.root)
    })
    .expect("init");
    assert!(!created && !made.get());
    assert_eq!(fs::read_to_string(&f.path).expect("read"), "{ not json");
}

#[test]
fn errors_convert_into_the_callers_error_type() {
    #[derive(Debug)]
    enum AppError {
        Config(ConfigError),
    }
    impl From<ConfigError> for AppError {
        fn from(e: ConfigError) -> Self {
            AppError::Config(e)
        }
    }
    let f = fixture();
    let result: Result<(), AppError> = edit(&f.path, |_| Ok(()));
    assert!(matches!(
        result,
        Err(AppError::Config(ConfigError::NotFound { .. }))
    ));
}

#[test]
fn a_config_in_a_missing_directory_is_not_found() {
    let f = fixture();
    let path = f.root.join("nowhere").join("btsync.conf");
    let result: Result<(), ConfigError> = edit(&path, |_| Ok(()));
    assert!(
        matches!(result, Err(ConfigError::NotFound { .. })),
        "{result:?}"
    );
}
