//! Reading the disk: one path's stat, and a parallel walk of a subtree.
//!
//! The walk never follows a symlink (links are recorded as links), never enters `.sync/`, skips
//! shoal's own temporary files and whatever the ignore list names, and skips — with a warning —
//! names that are not valid UTF-8: peers on other systems could not represent them, and a name
//! shoal cannot carry faithfully is better left alone than mangled (Syncthing does the same).

use std::io;
use std::path::Path;
use std::sync::Mutex;

use shoal_core::ignore::{IgnoreList, is_reserved, is_temp_name};
use shoal_index::Kind;
use tracing::{debug, warn};

/// A path as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskEntry {
    /// Namespace-relative, '/'-separated, never empty.
    pub path: String,
    pub stat: DiskStat,
}

pub use shoal_index::DiskStat;

/// What the walk could not read. Index entries under these are left as they are: a directory that
/// cannot be read is not a directory whose files were deleted.
#[derive(Debug, Default)]
pub struct Unreadable(pub Vec<String>);

impl Unreadable {
    pub fn covers(&self, path: &str) -> bool {
        self.0.iter().any(|u| is_under(path, u))
    }
}

/// True when `path` is `dir` or inside it (`dir` empty: the whole namespace).
pub fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// What the walk leaves out: reserved, temporary and ignored paths.
#[derive(Debug)]
pub struct Filter<'a> {
    pub ignore: &'a IgnoreList,
}

impl Filter<'_> {
    pub fn skips(&self, path: &str, is_dir: bool) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        is_reserved(path) || is_temp_name(name) || self.ignore.is_ignored(path, is_dir)
    }

    /// True when `path` or one of its parent directories is left out.
    pub fn skips_with_parents(&self, path: &str, is_dir: bool) -> bool {
        if self.skips(path, is_dir) {
            return true;
        }
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            if self.skips(&path[..slash], true) {
                return true;
            }
            end = slash;
        }
        false
    }
}

/// Joins a namespace-relative path onto the root.
pub fn abs(root: &Path, rel: &str) -> std::path::PathBuf {
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    }
}

/// Walks the directory `start` (namespace-relative; `""` for the root) in parallel; returns every
/// entry under it, sorted by path, and what could not be read.
pub fn walk(root: &Path, start: &str, filter: &Filter<'_>) -> (Vec<DiskEntry>, Unreadable) {
    let found = Mutex::new(Vec::new());
    let unreadable = Mutex::new(Vec::new());
    rayon::scope(|s| walk_dir(s, root, start.to_owned(), filter, &found, &unreadable));
    let mut found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    found.sort_unstable_by(|a: &DiskEntry, b| a.path.cmp(&b.path));
    let unreadable = unreadable.into_inner().unwrap_or_else(|p| p.into_inner());
    (found, Unreadable(unreadable))
}

fn walk_dir<'s>(
    scope: &rayon::Scope<'s>,
    root: &'s Path,
    dir: String,
    filter: &'s Filter<'s>,
    found: &'s Mutex<Vec<DiskEntry>>,
    unreadable: &'s Mutex<Vec<String>>,
) {
    let read = match std::fs::read_dir(abs(root, &dir)) {
        Ok(r) => r,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(dir = %shown(&dir), "cannot read directory, leaving its index entries as they are: {e}");
            }
            lock(unreadable).push(dir);
            return;
        }
    };
    let mut here = Vec::new();
    for item in read {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                warn!(dir = %shown(&dir), "cannot list directory: {e}");
                lock(unreadable).push(dir.clone());
                break;
            }
        };
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            warn!(dir = %shown(&dir), name = ?name, "skipping a name that is not valid UTF-8");
            continue;
        };
        let path = if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        };
        // DirEntry::metadata does not follow symlinks (it is an lstat).
        let meta = match item.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!(path = %path, "cannot stat, leaving its index entry as it is: {e}");
                lock(unreadable).push(path);
                continue;
            }
        };
        let Some(stat) = DiskStat::from_metadata(&meta) else {
            debug!(path = %path, "skipping a special file (socket, FIFO or device)");
            continue;
        };
        if filter.skips(&path, stat.kind == Kind::Dir) {
            continue;
        }
        if stat.kind == Kind::Dir {
            let sub = path.clone();
            scope.spawn(move |s| walk_dir(s, root, sub, filter, found, unreadable));
        }
        here.push(DiskEntry { path, stat });
    }
    lock(found).extend(here);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn shown(dir: &str) -> &str {
    if dir.is_empty() { "." } else { dir }
}
