//! `.sync/Archive/`: where files replaced or deleted by a peer's change are kept, and the cleaner
//! that removes them once they are older than the retention (`sync_trash_ttl`, 30 days).
//!
//! A file's age in the archive is its ctime: moving it there changes its ctime (not its mtime,
//! which is the file's own and kept).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a cleaning removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub files: u64,
    pub bytes: u64,
}

/// Removes archived files older than `keep` under `archive`, and the directories this empties.
/// A missing archive is nothing to clean.
pub fn clean(archive: &Path, keep: Duration) -> io::Result<Cleaned> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let cutoff = now.saturating_sub(keep.as_secs() as i64);
    let mut cleaned = Cleaned::default();
    match fs::symlink_metadata(archive) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(cleaned),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(cleaned),
        Err(e) => return Err(e),
    }
    clean_dir(archive, cutoff, &mut cleaned)?;
    Ok(cleaned)
}

/// Returns whether `dir` is empty afterwards.
fn clean_dir(dir: &Path, cutoff: i64, cleaned: &mut Cleaned) -> io::Result<bool> {
    let mut empty = true;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let m = fs::symlink_metadata(&path)?;
        if m.is_dir() {
            if clean_dir(&path, cutoff, cleaned)? {
                // Keep a directory that was just archived into, even if empty.
                if m.ctime() < cutoff {
                    fs::remove_dir(&path)?;
                    continue;
                }
            }
            empty = false;
        } else if m.ctime() < cutoff {
            fs::remove_file(&path)?;
            cleaned.files += 1;
            cleaned.bytes += m.len();
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn old_files_go_and_new_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("Archive");
        fs::create_dir_all(archive.join("a/b")).unwrap();
        fs::write(archive.join("a/b/old.txt"), b"12345").unwrap();
        fs::write(archive.join("new.txt"), b"1").unwrap();
        // Nothing is older than a day: nothing goes.
        assert_eq!(
            clean(&archive, Duration::from_secs(86_400)).unwrap(),
            Cleaned::default()
        );
        assert!(archive.join("a/b/old.txt").exists());
        // Everything is older than "keep nothing": all go, and the emptied directories too.
        std::thread::sleep(Duration::from_millis(1100));
        let c = clean(&archive, Duration::ZERO).unwrap();
        assert_eq!(c, Cleaned { files: 2, bytes: 6 });
        assert!(!archive.join("a").exists());
        assert!(archive.exists(), "the archive itself stays");
    }

    #[test]
    fn a_missing_archive_is_nothing_to_clean() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            clean(&tmp.path().join("none"), Duration::ZERO).unwrap(),
            Cleaned::default()
        );
    }
}
