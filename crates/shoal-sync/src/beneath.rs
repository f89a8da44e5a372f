//! Where the puller writes: inside the namespace, never through a symbolic link.
//!
//! A path from a peer is checked for its shape (no `..`, no absolute path), but what it names
//! depends on this node's disk: a directory on its way may be a symbolic link here — made by a
//! local program, or a peer's symlink record applied before a record "under" it. Writing through
//! it would put a peer's file anywhere the daemon may write (`/etc/cron.d`, another namespace).
//! So before the puller creates, renames or removes anything at a path, the directories above it
//! are opened from the namespace's root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` —
//! the kernel refuses a symlinked or escaping component — and missing ones are made one at a time,
//! each opened the same way before the next is made in it.
//!
//! The check and the write that follows it are two system calls: a local program that swaps a
//! directory for a symlink between them still wins that race (as against Syncthing's same
//! check). What is closed is every way a peer can make this node write outside its namespace.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `root/rel`, once every directory above it is seen to be a real directory inside `root`.
pub(crate) fn checked(root: &Path, rel: &str) -> io::Result<PathBuf> {
    if let Some(dir) = parent(rel) {
        open_dir(&open_root(root)?, dir).map_err(|e| refused(dir, e))?;
    }
    Ok(root.join(rel))
}

/// `root/rel`, once every directory above it is a real directory inside `root`: the missing
/// ones are made.
pub(crate) fn made(root: &Path, rel: &str) -> io::Result<PathBuf> {
    if let Some(dir) = parent(rel) {
        let root_fd = open_root(root)?;
        match open_dir(&root_fd, dir) {
            Ok(_) => {}
            Err(Errno::NOENT) => make(root_fd, dir)?,
            Err(e) => return Err(refused(dir, e)),
        }
    }
    Ok(root.join(rel))
}

/// The directory part of a namespace-relative path, if it has one.
fn parent(rel: &str) -> Option<&str> {
    rel.rsplit_once('/')
        .map(|(dir, _)| dir)
        .filter(|d| !d.is_empty())
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `rel` under `dir`: never a symlink, never outside.
fn open_dir(dir: &OwnedFd, rel: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )
}

/// Makes the directories of `rel` under `root` one at a time, each opened before the next is
/// made in it.
fn make(root: OwnedFd, rel: &str) -> io::Result<()> {
    let mut at = root;
    let mut end = 0;
    for name in rel.split('/') {
        end += name.len();
        match rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        at = open_dir(&at, name).map_err(|e| refused(&rel[..end], e))?;
        end += 1;
    }
    Ok(())
}

/// The error for a directory the kernel would not open beneath the root.
fn refused(dir: &str, e: Errno) -> io::Error {
    match e {
        // A symlink on the way (or, in a race, one that leaves the namespace).
        Errno::LOOP | Errno::XDEV => io::Error::other(format!(
            "{dir}: a symbolic link on this node where a peer has a directory; nothing is \
             written through it"
        )),
        e => e.into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn paths_through_a_symlink_are_refused_and_real_directories_made() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ns");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("real")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("out")).unwrap();
        symlink("real", root.join("inner")).unwrap();
        symlink("../..", root.join("real/up")).unwrap();

        // At the root and in real directories: the path, as is.
        assert_eq!(checked(&root, "f").unwrap(), root.join("f"));
        assert_eq!(checked(&root, "real/f").unwrap(), root.join("real/f"));
        // The leaf itself may be a symlink: it is replaced, never followed, by the writer.
        assert_eq!(checked(&root, "out").unwrap(), root.join("out"));

        // Through any symlink — out of the namespace, within it, or up — refused, with why.
        for rel in ["out/f", "inner/f", "real/up/f", "out/new/deeper/f"] {
            for result in [checked(&root, rel), made(&root, rel)] {
                let e = result.unwrap_err();
                assert!(e.to_string().contains("symbolic link"), "{rel}: {e}");
            }
        }
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing made outside"
        );

        // Missing directories: refused by `checked`, made (real ones) by `made`.
        let e = checked(&root, "new/deeper/f").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            made(&root, "new/deeper/f").unwrap(),
            root.join("new/deeper/f")
        );
        assert!(
            fs::symlink_metadata(root.join("new/deeper"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(
            made(&root, "real/more/f").unwrap(),
            root.join("real/more/f")
        );
        assert!(root.join("real/more").is_dir());

        // A file where a directory is wanted: the kernel's own error.
        fs::write(root.join("file"), b"x").unwrap();
        let e = made(&root, "file/f").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory);
    }
}
