//! Writing the file safely, and editing it with other writers around.
//!
//! **Atomic replace.** [`Config::save`] never writes into the file itself: a crash or a full disk
//! half-way would leave a truncated config and a node that forgets its namespaces. It writes a temp
//! file in the same directory (same file system, so the rename is atomic), fsyncs it, renames it
//! over the target and fsyncs the directory so the rename itself survives a power cut. Readers see
//! the old file or the new one, never a mix.
//!
//! **Ownership.** The temp file gets the old file's mode, owner and group. `ctl` often runs as root
//! (`docker exec`) while the daemon runs as `UID`:`GID`; a root `ctl` must not leave a file the
//! daemon can no longer rewrite. When we may not give the file away (we are not root), the owner
//! becomes us and the group is kept if we belong to it. A new file gets mode 0600: it holds secrets.
//!
//! **Locking.** [`edit`] holds an exclusive `flock` on `<path>.lock` around load → change → save.
//! The lock is on a sidecar because the config itself is replaced by every save (a lock on the old
//! inode would not stop the next writer). The sidecar is never deleted: deleting a lock file lets a
//! waiter lock a file that no longer has a name while a newcomer creates and locks another.
//! `flock` belongs to the open file description, so threads of one process exclude each other too,
//! as long as each [`edit`] opens the lock file itself (it does).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Config;
use crate::error::ConfigError;

/// Mode of a config file we create: it holds secrets.
const NEW_FILE_MODE: u32 = 0o600;

/// Mode of the lock file: it holds nothing, and must be openable by both a root `ctl` and the
/// daemon's user (`flock` works on a read-only descriptor).
const LOCK_FILE_MODE: u32 = 0o644;

impl Config {
    /// Validates and writes the config to `path`, atomically (see the module documentation).
    ///
    /// This does not lock: use [`edit`] when someone else may be editing the same file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        self.validate(path)?;
        let text = self
            .to_json_pretty()
            .map_err(|e| ConfigError::io("serialising", path, io::Error::other(e)))?;
        write_atomically(path, text.as_bytes())
    }
}

/// Loads the config at `path`, applies `f`, and saves it if `f` changed it — all under the lock, so
/// concurrent editors never lose each other's changes.
///
/// Do not call [`edit`] (or [`init`]) for the same file from inside `f`: the lock is not
/// re-entrant, and the inner call would wait for the outer one forever.
///
/// `f`'s error is returned as it is, and nothing is saved. Errors of the config itself (a missing
/// file is [`ConfigError::NotFound`]) become `E` through `From`; `anyhow::Error` and
/// [`ConfigError`] both work.
pub fn edit<T, E>(
    path: impl AsRef<Path>,
    f: impl FnOnce(&mut Config) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<ConfigError>,
{
    edit_inner(path.as_ref(), None::<fn() -> Config>, f)
}

/// Like [`edit`], but a missing file starts as `make()` (and is then saved, changed or not).
pub fn edit_or_create<T, E>(
    path: impl AsRef<Path>,
    make: impl FnOnce() -> Config,
    f: impl FnOnce(&mut Config) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<ConfigError>,
{
    edit_inner(path.as_ref(), Some(make), f)
}

/// Writes `make()` to `path` if there is no file there, under the lock. Returns whether it wrote.
/// An existing file is left exactly as it is, even if it is invalid.
pub fn init(path: impl AsRef<Path>, make: impl FnOnce() -> Config) -> Result<bool, ConfigError> {
    let path = path.as_ref();
    let _lock = Lock::acquire(path)?;
    match path.symlink_metadata() {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            make().save(path)?;
            Ok(true)
        }
        Err(e) => Err(ConfigError::io("checking", path, e)),
    }
}

/// The lock file that serialises edits of the config at `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

fn edit_inner<T, E>(
    path: &Path,
    make: Option<impl FnOnce() -> Config>,
    f: impl FnOnce(&mut Config) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<ConfigError>,
{
    let _lock = Lock::acquire(path)?;
    let (before, created) = match (Config::load(path), make) {
        (Ok(config), _) => (config, false),
        (Err(ConfigError::NotFound { .. }), Some(make)) => (make(), true),
        (Err(e), _) => return Err(e.into()),
    };
    let mut config = before.clone();
    let value = f(&mut config)?;
    if created || config != before {
        config.save(path)?;
    }
    Ok(value)
}

/// An exclusive `flock` on `<path>.lock`, released when dropped (closing the file releases it).
struct Lock {
    _file: File,
}

impl Lock {
    fn acquire(path: &Path) -> Result<Lock, ConfigError> {
        let lock_path = lock_path(path);
        let file = open_lock_file(&lock_path).map_err(|e| match e.kind() {
            // No directory for the lock file: no directory for the config either.
            io::ErrorKind::NotFound => ConfigError::NotFound {
                path: path.to_path_buf(),
            },
            _ => ConfigError::io("opening the lock file", &lock_path, e),
        })?;
        file.lock()
            .map_err(|e| ConfigError::io("locking", &lock_path, e))?;
        Ok(Lock { _file: file })
    }
}

fn open_lock_file(lock_path: &Path) -> io::Result<File> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(LOCK_FILE_MODE)
        .open(lock_path);
    let file = match opened {
        Ok(file) => file,
        // Someone else's lock file (root's, seen by the daemon's user): reading is enough to lock.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(lock_path)?,
        Err(e) => return Err(e),
    };
    // The umask may have narrowed the mode; widen it so the other user can open it too. Only the
    // owner may, and failing here only matters to that other user, who will say so.
    if let Ok(meta) = file.metadata()
        && meta.mode() & 0o777 != LOCK_FILE_MODE
    {
        let _ = file.set_permissions(fs::Permissions::from_mode(LOCK_FILE_MODE));
    }
    Ok(file)
}

/// Replaces `path` with `bytes`: temp file, fsync, rename, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let target = resolve_symlink(path)?;
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let old = match fs::metadata(&target) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(ConfigError::io("reading the metadata of", &target, e)),
    };
    let temp = temp_path(&target);
    let written = write_temp(&temp, bytes, old.as_ref())
        .and_then(|()| fs::rename(&temp, &target).map_err(|e| ("replacing", e)));
    if let Err((action, e)) = written {
        let _ = fs::remove_file(&temp);
        return Err(ConfigError::io(action, &target, e));
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ConfigError::io("syncing the directory", &dir, e))
}

/// Writes and syncs the temp file with the old file's mode and owner (0600 and us for a new file).
fn write_temp(
    temp: &Path,
    bytes: &[u8],
    old: Option<&fs::Metadata>,
) -> Result<(), (&'static str, io::Error)> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .open(temp)
        .map_err(|e| ("creating a temp file beside", e))?;
    file.write_all(bytes).map_err(|e| ("writing", e))?;
    if let Some(old) = old {
        copy_owner(&file, old).map_err(|e| ("keeping the owner of", e))?;
        file.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))
            .map_err(|e| ("keeping the mode of", e))?;
    }
    file.sync_all().map_err(|e| ("syncing", e))
}

/// Gives `file` the owner and group of `old`, as far as we are allowed: root may give it to anyone;
/// anyone else keeps the file but may set a group they belong to.
fn copy_owner(file: &File, old: &fs::Metadata) -> io::Result<()> {
    let new = file.metadata()?;
    if new.uid() == old.uid() && new.gid() == old.gid() {
        return Ok(());
    }
    match std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid())) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            if new.gid() != old.gid() {
                let _ = std::os::unix::fs::fchown(file, None, Some(old.gid()));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A fresh name beside `target`: hidden, and unique per process and call.
fn temp_path(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(".");
    name.push(target.file_name().unwrap_or_default());
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    target.with_file_name(name)
}

/// A config that is a symlink (to a file on a mounted secret, say) is written where it points, so
/// the link survives.
fn resolve_symlink(path: &Path) -> Result<PathBuf, ConfigError> {
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|e| ConfigError::io("following the symlink", path, e))
        }
        _ => Ok(path.to_path_buf()),
    }
}
