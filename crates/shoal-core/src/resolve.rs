//! Conflict resolution: which of several records of one path wins, on every node alike.
//!
//! Versions strictly older than another (by version vector) lose without a conflict. Among the
//! remaining, mutually concurrent versions the winner is chosen by fixed rules: a live record beats
//! a deletion (an edit beats a delete), a live directory beats a file or symlink (a directory with
//! children is never replaced by a file), then the later mtime, then the higher device, then the
//! larger content hash. Losing live files and symlinks with other content are kept as conflict
//! copies. The resolved version is the merge of every input, so that it supersedes them all and
//! the question is settled everywhere once it is recorded.

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
    /// Content identity; equal kind, existence, content and mode mean "the same content".
    pub content: Hash,
    pub mode: u32,
}

impl Candidate {
    fn same_content(&self, other: &Candidate) -> bool {
        self.deleted == other.deleted
            && self.kind == other.kind
            && (self.deleted || (self.content == other.content && self.mode == other.mode))
    }
}

/// The outcome for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Index of the winning candidate.
    pub winner: usize,
    /// Indices of losers to keep as conflict copies (sorted; one per distinct content).
    pub conflict_copies: Vec<usize>,
    /// The path's version after resolution.
    pub version: VersionVector,
}

/// Resolves the records of one path; `None` for no candidates.
pub fn resolve(candidates: &[Candidate]) -> Option<Resolution> {
    if candidates.is_empty() {
        return None;
    }
    // The maximal versions: those no other candidate strictly supersedes.
    let maximal: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            !candidates
                .iter()
                .any(|other| other.version.compare(&candidates[i].version) == Ordering::Greater)
        })
        .collect();
    let winner = *maximal
        .iter()
        .max_by(|&&a, &&b| rank(&candidates[a], &candidates[b]).then(b.cmp(&a)))?;
    let w = &candidates[winner];
    let concurrent: Vec<usize> = maximal
        .iter()
        .copied()
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

/// Orders concurrent candidates: `Greater` wins.
fn rank(a: &Candidate, b: &Candidate) -> CmpOrdering {
    (!a.deleted)
        .cmp(&!b.deleted)
        .then_with(|| is_live_dir(a).cmp(&is_live_dir(b)))
        .then_with(|| a.mtime_ns.cmp(&b.mtime_ns))
        .then_with(|| a.modified_by.0.cmp(&b.modified_by.0))
        .then_with(|| a.content.0.cmp(&b.content.0))
        .then_with(|| a.mode.cmp(&b.mode))
        .then_with(|| a.kind.cmp(&b.kind))
        .then_with(|| a.version.to_string().cmp(&b.version.to_string()))
}

fn is_live_dir(c: &Candidate) -> bool {
    !c.deleted && c.kind == CandidateKind::Dir
}

const MARKER: &str = ".sync-conflict-";

/// `dir/name.sync-conflict-YYYYMMDD-HHMMSS-<device>.ext`: the name of a conflict copy, from the
/// loser's mtime (UTC) and device, so every node that makes it makes the same one.
pub fn conflict_name(path: &str, mtime_ns: i64, device: DeviceId) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let secs = mtime_ns.div_euclid(1_000_000_000).clamp(0, 253_402_300_799);
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

/// True for a name made by [`conflict_name`].
pub fn is_conflict_copy(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.contains(MARKER)
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
