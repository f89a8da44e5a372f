//! Disk space: telling "the disk is full" apart from other failures, and how much room there is.
//!
//! The puller pauses a namespace whose disk is full instead of retrying blindly: it checks before
//! writing that a file fits (keeping [`margin`] free, so the index and everything else on that
//! disk can still write), recognises `ENOSPC`/`EDQUOT` when the check was not enough, and polls
//! the free space to resume as soon as there is room.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::Serialize;

/// The puller leaves 1% of a file system free, but at least [`MARGIN_MIN`] and at most
/// [`MARGIN_MAX`].
const MARGIN_MAX: u64 = 1 << 30;
const MARGIN_MIN: u64 = 4 << 20;

/// The room on a file system, as an unprivileged writer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes this process may still write (`f_bavail`).
    pub available: u64,
    /// The file system's size.
    pub total: u64,
}

impl Space {
    /// Bytes that can be written while keeping [`margin`] free.
    pub fn usable(&self) -> u64 {
        self.available.saturating_sub(margin(self.total))
    }
}

/// What a namespace paused for: shown by `ctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskFull {
    /// Bytes still to write for the files that did not fit.
    pub needed_bytes: u64,
    /// Files that did not fit.
    pub files: u64,
    /// Bytes free on the file system when last looked at.
    pub free_bytes: u64,
    /// Bytes the puller leaves free on it.
    pub kept_free_bytes: u64,
    /// The mount point of the file system holding the namespace.
    pub mount: PathBuf,
}

impl std::fmt::Display for DiskFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files = if self.files == 1 { "file" } else { "files" };
        write!(
            f,
            "disk full: {} needed for {} {files}, {} free on {} ({} kept free); resumes by itself when there is room",
            human(self.needed_bytes),
            self.files,
            human(self.free_bytes),
            self.mount.display(),
            human(self.kept_free_bytes),
        )
    }
}

/// The room on the file system holding `path`.
pub fn space(path: &Path) -> io::Result<Space> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let unit = (s.fragment_size() as u64).max(1);
    Ok(Space {
        available: (s.blocks_available() as u64).saturating_mul(unit),
        total: (s.blocks() as u64).saturating_mul(unit),
    })
}

/// What the puller leaves free on a file system of `total` bytes: 1%, between 4 MiB and 1 GiB.
pub fn margin(total: u64) -> u64 {
    (total / 100).clamp(MARGIN_MIN, MARGIN_MAX)
}

/// True for "no space left on device" and "disk quota exceeded", however they are reported.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(code) if code == Errno::ENOSPC as i32 || code == Errno::EDQUOT as i32)
}

/// The same for an error of another layer (the index): an `io::Error` anywhere in its chain, or
/// the operating system's message in its text (some layers keep only the text).
pub fn error_is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>().is_some_and(is_no_space) {
            return true;
        }
        next = e.source();
    }
    let text = e.to_string();
    [Errno::ENOSPC, Errno::EDQUOT]
        .iter()
        .any(|code| text.contains(&format!("(os error {})", *code as i32)))
}

/// Bytes a file already takes on disk (its blocks, not its length: temporaries are written out of
/// order and may have holes); 0 when it does not exist.
pub fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.blocks().saturating_mul(512))
}

/// The mount point of the file system holding `path`: the last ancestor on the same device.
pub fn mount_point(path: &Path) -> PathBuf {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(dev) = std::fs::metadata(&path).map(|m| m.dev()) else {
        return path;
    };
    let mut mount = path.as_path();
    while let Some(parent) = mount.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => mount = parent,
            _ => break,
        }
    }
    mount.to_path_buf()
}

/// 1536 -> "1.5 KiB".
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_is_recognised_in_every_form() {
        assert!(is_no_space(&io::Error::from_raw_os_error(
            Errno::ENOSPC as i32
        )));
        assert!(is_no_space(&io::Error::from_raw_os_error(
            Errno::EDQUOT as i32
        )));
        assert!(is_no_space(&io::Error::from(io::ErrorKind::StorageFull)));
        assert!(is_no_space(&io::Error::from(io::ErrorKind::QuotaExceeded)));
        assert!(is_no_space(&io::Error::from(Errno::ENOSPC)));
        for other in [Errno::EIO, Errno::EACCES, Errno::ENOENT, Errno::EROFS] {
            assert!(!is_no_space(&io::Error::from(other)), "{other}");
        }
        assert!(!is_no_space(&io::Error::other("no space")));
    }

    #[test]
    fn no_space_is_found_through_other_layers() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("index")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let full = Wrapper(io::Error::from(Errno::ENOSPC));
        assert!(error_is_no_space(&full));
        let other = Wrapper(io::Error::from(Errno::EIO));
        assert!(!error_is_no_space(&other));
        // A layer that kept only the text.
        let text = io::Error::other(format!("commit: {}", io::Error::from(Errno::ENOSPC)));
        assert!(error_is_no_space(&text));
        let text = io::Error::other("commit: (os error 5)");
        assert!(!error_is_no_space(&text));
    }

    #[test]
    fn space_and_mount_point_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = space(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.total > 0 && s.available <= s.total, "{s:?}");
        assert!(s.usable() <= s.available);
        let mount = mount_point(dir.path());
        let canonical = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
        assert!(canonical.starts_with(&mount), "{mount:?} {canonical:?}");
        assert!(space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn allocated_counts_blocks_not_length() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sparse = dir.path().join("sparse");
        let f = std::fs::File::create(&sparse).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(64 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert!(allocated(&sparse) < 1 << 20, "a hole takes no space");
        assert_eq!(allocated(&dir.path().join("missing")), 0);
    }

    #[test]
    fn margin_is_bounded_and_message_reads_well() {
        assert_eq!(margin(0), 4 << 20);
        assert_eq!(margin(48 << 20), 4 << 20);
        assert_eq!(margin(10 << 30), (10 << 30) / 100);
        assert_eq!(margin(100 << 30), 1 << 30);
        assert_eq!(margin(u64::MAX), 1 << 30);
        let d = DiskFull {
            needed_bytes: 64 << 20,
            files: 1,
            free_bytes: 1536,
            kept_free_bytes: 4 << 20,
            mount: PathBuf::from("/data"),
        };
        assert_eq!(
            d.to_string(),
            "disk full: 64.0 MiB needed for 1 file, 1.5 KiB free on /data (4.0 MiB kept free); resumes by itself when there is room"
        );
    }
}
