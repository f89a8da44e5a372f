//! Conflict resolution: which of several records of one path wins, the same on every node.
//!
//! 1. A record whose version another record strictly supersedes loses, without a conflict.
//! 2. Among the rest (mutually concurrent, or equal) the winner is picked by, in order: a live
//!    record beats a deletion (an edit beats a delete); a live directory beats a file or symlink (a
//!    directory with children is never replaced by a file); the later mtime; the higher device id;
//!    the larger content hash; then mode, kind and the version's text, so that only identical
//!    records tie and the outcome never depends on the order of the input.
//! 3. A concurrent loser that is a live file or symlink with other content than the winner's is kept
//!    as a conflict copy (one per distinct content). Deletions and directories need none, and equal
//!    content is no conflict.
//! 4. When there was a concurrent loser, the path's new version is the merge of every input, so it
//!    supersedes them all and the conflict is settled once recorded; otherwise it is the winner's.
//!
//! Conflict copies are named like Syncthing's: `name.sync-conflict-YYYYMMDD-HHMMSS-<device>.ext`.

use std::cmp::Ordering as CmpOrdering;

use crate::chunk::Hash;
use crate::version::{DeviceId, Ordering, VersionVector};

/// What a path is, for resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateKind {
    File,
    Dir,
    Symlink,
}

/// One device's record of one path, as far as resolution cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub version: VersionVector,
    pub deleted: bool,
    pub kind: CandidateKind,
    pub mtime_ns: i64,
    pub modified_by: DeviceId,
    /// Content identity (file hash / symlink target hash; any fixed value for dirs). Two
    /// candidates with equal kind, deleted, content and mode are "the same content" (for two
    /// deletions of the same kind content and mode do not matter).
    pub content: Hash,
    pub mode: u32,
}

impl Candidate {
    /// Same kind, existence, and (when live) content and mode: nothing to keep apart.
    pub fn same_content(&self, other: &Candidate) -> bool {
        self.deleted == other.deleted
            && self.kind == other.kind
            && (self.deleted || (self.content == other.content && self.mode == other.mode))
    }

    fn is_live_dir(&self) -> bool {
        !self.deleted && self.kind == CandidateKind::Dir
    }
}

/// The outcome of resolving one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Index (into the input slice) of the winning candidate.
    pub winner: usize,
    /// Indices of candidates that lost a real conflict and whose content must be kept as a
    /// conflict copy: live files or symlinks, concurrent with the winner, with other content than
    /// the winner's. Sorted; one index per distinct content (the best-ranked loser holding it).
    pub conflict_copies: Vec<usize>,
    /// The path's version after resolution: the merge of every input version when any candidate
    /// was concurrent with the winner (nodes then record the winner's content under it), else the
    /// winner's version.
    pub version: VersionVector,
}

/// Resolves the records of one path (see the module docs); `None` when there are none.
pub fn resolve(candidates: &[Candidate]) -> Option<Resolution> {
    // The maximal versions: those no other candidate strictly supersedes.
    let maximal: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            !candidates
                .iter()
                .any(|other| other.version.compare(&candidates[i].version) == Ordering::Greater)
        })
        .collect();
    // Equal ranks mean identical candidates, so the index tiebreak never shows in the value.
    let by_rank = |a: &usize, b: &usize| rank(&candidates[*a], &candidates[*b]).then(b.cmp(a));
    let winner = *maximal.iter().max_by(|a, b| by_rank(a, b))?;
    let w = &candidates[winner];
    let mut concurrent: Vec<usize> = maximal
        .into_iter()
        .filter(|&i| candidates[i].version.compare(&w.version) == Ordering::Concurrent)
        .collect();
    if concurrent.is_empty() {
        return Some(Resolution {
            winner,
            conflict_copies: Vec::new(),
            version: w.version.clone(),
        });
    }
    let mut version = VersionVector::new();
    for c in candidates {
        version.merge(&c.version);
    }
    // Best-ranked first, so that the copy kept for each content does not depend on input order.
    concurrent.sort_by(|a, b| by_rank(b, a));
    let mut copies: Vec<usize> = Vec::new();
    for i in concurrent {
        let c = &candidates[i];
        let keep = !c.deleted
            && c.kind != CandidateKind::Dir
            && !c.same_content(w)
            && !copies.iter().any(|&j| candidates[j].same_content(c));
        if keep {
            copies.push(i);
        }
    }
    copies.sort_unstable();
    Some(Resolution {
        winner,
        conflict_copies: copies,
        version,
    })
}

/// Orders concurrent candidates: `Greater` wins. Total over values: only equal candidates tie.
fn rank(a: &Candidate, b: &Candidate) -> CmpOrdering {
    (!a.deleted)
        .cmp(&!b.deleted)
        .then_with(|| a.is_live_dir().cmp(&b.is_live_dir()))
        .then_with(|| a.mtime_ns.cmp(&b.mtime_ns))
        .then_with(|| a.modified_by.cmp(&b.modified_by))
        .then_with(|| a.content.cmp(&b.content))
        .then_with(|| a.mode.cmp(&b.mode))
        .then_with(|| a.kind.cmp(&b.kind))
        .then_with(|| a.version.to_string().cmp(&b.version.to_string()))
}

/// What marks a conflict copy's name.
const MARKER: &str = ".sync-conflict-";

/// The last second a four-digit year can show: 9999-12-31 23:59:59 UTC.
const MAX_SECS: i64 = 253_402_300_799;

/// The name of the conflict copy of `path` (namespace-relative, `/`-separated):
/// `dir/stem.sync-conflict-YYYYMMDD-HHMMSS-<device>.ext`, from the loser's mtime (UTC, clamped to
/// years 1970..=9999) and the first 7 characters of its device's id, so every node that makes the
/// copy gives it the same name. `.ext` is the name's last extension; a name whose only dot leads
/// (`.bashrc`) has none.
pub fn conflict_name(path: &str, mtime_ns: i64, device: DeviceId) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let secs = mtime_ns.div_euclid(1_000_000_000).clamp(0, MAX_SECS);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    let dev = device.to_string();
    let dev = dev.get(..7).unwrap_or(&dev);
    format!(
        "{dir}{stem}{MARKER}{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{dev}{ext}",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// True when the last component of `path` has the shape [`conflict_name`] gives (also Syncthing's
/// own conflict copies): `.sync-conflict-`, 8 digits, `-`, 6 digits, `-`, 1 to 7 ASCII letters or
/// digits, then the end or a `.`.
pub fn is_conflict_copy(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.match_indices(MARKER)
        .any(|(i, _)| is_conflict_suffix(name.as_bytes().get(i + MARKER.len()..).unwrap_or(&[])))
}

/// `YYYYMMDD-HHMMSS-<device>` followed by the end or `.`.
fn is_conflict_suffix(s: &[u8]) -> bool {
    let digits =
        |r: std::ops::Range<usize>| s.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !(digits(0..8) && s.get(8) == Some(&b'-') && digits(9..15) && s.get(15) == Some(&b'-')) {
        return false;
    }
    let rest = s.get(16..).unwrap_or(&[]);
    let dev_len = rest
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    (1..=7).contains(&dev_len) && matches!(rest.get(dev_len), None | Some(b'.'))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
#[path = "resolve_tests.rs"]
mod tests;
