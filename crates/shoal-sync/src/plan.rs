//! What this node needs: for every path, the global version (by [`shoal_core::resolve`]) compared
//! with the local one. Pure over a snapshot of the index: no I/O but reading it.

use std::collections::BTreeMap;

use shoal_core::chunk::Hash;
use shoal_core::resolve::{Candidate, CandidateKind, resolve};
use shoal_core::version::{Ordering, VersionVector};
use shoal_index::{Entry, Index, IndexError, Kind, PeerKey};

/// One path this node must change.
#[derive(Clone, Debug)]
pub struct Need {
    pub path: String,
    /// What the path must become: the winning record, carrying the resolved version.
    pub target: Entry,
    /// The peers that announced exactly this content (where to fetch it from).
    pub sources: Vec<PeerKey>,
    /// The local entry as the plan saw it; the puller changes nothing if the disk moved on since.
    pub local: Option<Entry>,
    /// The local content lost a real conflict: keep it as a conflict copy before replacing it.
    pub keep_local_as_conflict: bool,
    /// The local content already is the target's: only the recorded version changes.
    pub version_only: bool,
}

impl Need {
    /// Bytes to bring in (an upper bound: chunks found locally cost nothing).
    pub fn bytes(&self) -> u64 {
        if self.version_only || self.target.deleted || self.target.kind != Kind::File {
            0
        } else {
            self.target.size
        }
    }
}

/// The local record of a path, and each peer's.
type Records = (Option<Entry>, Vec<(PeerKey, Entry)>);

/// Computes every need of the namespace behind `index`; `skip` says which paths this node leaves
/// alone (ignored here).
pub fn plan(index: &Index, skip: impl Fn(&str, bool) -> bool) -> Result<Vec<Need>, IndexError> {
    let mut paths: BTreeMap<String, Records> = BTreeMap::new();
    index.for_each_under("", |path, entry| {
        paths.entry(path.to_owned()).or_default().0 = Some(entry);
    })?;
    for peer in index.remote_peers()? {
        for (path, entry) in index.remote_entries(&peer)? {
            paths.entry(path).or_default().1.push((peer, entry));
        }
    }
    let mut needs = Vec::new();
    for (path, (local, remote)) in paths {
        if remote.is_empty() {
            continue;
        }
        if skip(&path, remote.iter().any(|(_, e)| e.kind == Kind::Dir)) {
            continue;
        }
        if let Some(need) = need_of(path, local, remote) {
            needs.push(need);
        }
    }
    Ok(needs)
}

/// The need of one path, if any. The local entry, when present, is candidate 0.
///
/// The version recorded for the path is the merge of the versions whose content nothing is lost
/// by superseding: the winner's, those of the same content, deletions, directories, versions some
/// other record supersedes, and this node's own (kept as the winner, or as a conflict copy made
/// here). A concurrent loser with other content held by another node is left out, so the record
/// never supersedes it: its holder sees the conflict and makes the copy itself. Merging it here
/// (as the resolver's merged version does) let the holder of the winner settle the conflict, and
/// a holder of the loser that saw only the settled record then archived its edit with no copy.
pub fn need_of(path: String, local: Option<Entry>, remote: Vec<(PeerKey, Entry)>) -> Option<Need> {
    let mut entries: Vec<&Entry> = Vec::with_capacity(remote.len() + 1);
    entries.extend(local.as_ref());
    entries.extend(remote.iter().map(|(_, e)| e));
    let candidates: Vec<Candidate> = entries.iter().map(|e| candidate(e)).collect();
    let resolution = resolve(&candidates)?;
    let winner = entries[resolution.winner];
    // A record is superseded when another one's version is strictly greater.
    let superseded = |e: &Entry| {
        entries
            .iter()
            .any(|o| o.version.compare(&e.version) == Ordering::Greater)
    };
    // A live file or symlink, concurrent with the winner (or equal), with other content.
    let loser_with_content =
        |e: &Entry| !e.deleted && e.kind != Kind::Dir && !same_content(e, winner) && !superseded(e);
    let keep_local_as_conflict = local.as_ref().is_some_and(loser_with_content);
    let mut version = winner.version.clone();
    for (i, e) in entries.iter().enumerate() {
        let kept_here = i == 0 && local.is_some();
        if kept_here || !loser_with_content(e) {
            version.merge(&e.version);
        }
    }
    if let Some(l) = &local
        && same_content(l, winner)
    {
        if l.version == version {
            return None;
        }
        return Some(Need {
            path,
            target: with_version(l, version),
            sources: Vec::new(),
            local,
            keep_local_as_conflict: false,
            version_only: true,
        });
    }
    let mut target = with_version(winner, version);
    target.local = Default::default();
    let sources = remote
        .iter()
        .filter(|(_, e)| same_content(e, winner))
        .map(|(p, _)| *p)
        .collect();
    // Neither side has anything, in different ways: a tombstone replacing nothing is just recorded.
    let version_only = target.deleted && local.as_ref().is_none_or(|l| l.deleted);
    Some(Need {
        path,
        target,
        sources,
        local,
        keep_local_as_conflict,
        version_only,
    })
}

fn with_version(e: &Entry, version: VersionVector) -> Entry {
    let mut e = e.clone();
    e.version = version;
    e
}

/// Equal as far as sync is concerned: the same kind, existence, content, mode and (files) mtime.
pub fn same_content(a: &Entry, b: &Entry) -> bool {
    if a.deleted || b.deleted {
        return a.deleted == b.deleted && a.kind == b.kind;
    }
    a.kind == b.kind
        && a.mode == b.mode
        && a.hash == b.hash
        && a.target == b.target
        && (a.kind != Kind::File || (a.size == b.size && a.mtime_ns == b.mtime_ns))
}

fn candidate(e: &Entry) -> Candidate {
    // The content identity covers what `same_content` compares, so that the resolver's idea of
    // "the same content" is this module's.
    let mut h = content_id(e);
    if e.deleted {
        h = Hash([0; 32]);
    }
    Candidate {
        version: e.version.clone(),
        deleted: e.deleted,
        kind: match e.kind {
            Kind::File => CandidateKind::File,
            Kind::Dir => CandidateKind::Dir,
            Kind::Symlink => CandidateKind::Symlink,
        },
        mtime_ns: e.mtime_ns,
        modified_by: e.modified_by,
        content: h,
        mode: e.mode,
    }
}

fn content_id(e: &Entry) -> Hash {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&e.hash.0);
    if e.kind == Kind::File {
        bytes.extend_from_slice(&e.size.to_le_bytes());
        bytes.extend_from_slice(&e.mtime_ns.to_le_bytes());
    }
    if let Some(t) = &e.target {
        bytes.extend_from_slice(t.as_bytes());
    }
    Hash::of(&bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;
    use shoal_core::version::DeviceId;

    const N1: DeviceId = DeviceId(1);
    const N2: DeviceId = DeviceId(2);
    const N3: DeviceId = DeviceId(3);

    fn v(counters: &[(DeviceId, u64)]) -> VersionVector {
        VersionVector::try_from(counters.to_vec()).unwrap()
    }

    /// A file with `content` (its hash), written at `mtime` by `by`, at version `version`.
    fn file(content: u8, mtime: i64, by: DeviceId, version: VersionVector) -> Entry {
        Entry {
            kind: Kind::File,
            deleted: false,
            size: 10,
            mode: 0o644,
            mtime_ns: mtime,
            local: Default::default(),
            chunks: Vec::new(),
            hash: Hash([content; 32]),
            target: None,
            version,
            modified_by: by,
            seq: 0,
        }
    }

    fn peer(n: u8) -> PeerKey {
        [n; 32]
    }

    // The partition of `make test`: n1 and n2 hold edit A (n1's), n3 holds the later edit B; both
    // are edits of the base n1 wrote at {n1:1}.
    fn edit_a() -> Entry {
        file(0xa, 10, N1, v(&[(N1, 2)]))
    }
    fn edit_b() -> Entry {
        file(0xb, 20, N3, v(&[(N1, 1), (N3, 1)]))
    }

    #[test]
    fn the_holder_of_the_loser_keeps_it_as_a_copy_and_settles_the_conflict() {
        let need = need_of("f".into(), Some(edit_a()), vec![(peer(3), edit_b())]).unwrap();
        assert!(need.keep_local_as_conflict);
        assert!(!need.version_only);
        assert_eq!(need.target.hash, edit_b().hash);
        assert_eq!(need.target.version, v(&[(N1, 2), (N3, 1)]));
        assert_eq!(need.sources, vec![peer(3)]);
    }

    #[test]
    fn the_holder_of_the_winner_does_not_settle_a_conflict_whose_loser_it_cannot_keep() {
        // Merging A's version here would make n3's record supersede A: a holder of A that saw only
        // that record would archive A and make no conflict copy (edit A lost from the tree).
        assert!(need_of("f".into(), Some(edit_b()), vec![(peer(1), edit_a())]).is_none());
    }

    #[test]
    fn a_loser_that_sees_only_the_settled_record_of_another_holder_replaces_its_copy_of_it() {
        // n1 made the copy and recorded B at {n1:2, n3:1}; n2 holds the same A at {n1:2}.
        let settled = file(0xb, 20, N3, v(&[(N1, 2), (N3, 1)]));
        let need = need_of("f".into(), Some(edit_a()), vec![(peer(1), settled.clone())]).unwrap();
        assert!(!need.keep_local_as_conflict, "n1 kept A already");
        assert_eq!(need.target.version, settled.version);
        // And the holder of the winner takes the settled version over, content unchanged.
        let need = need_of("f".into(), Some(edit_b()), vec![(peer(1), settled.clone())]).unwrap();
        assert!(need.version_only);
        assert_eq!(need.target.version, settled.version);
    }

    #[test]
    fn every_holder_of_the_loser_keeps_it_whatever_it_sees_first() {
        // n2 holds A too and sees n1's A and n3's B before any settled record.
        let need = need_of(
            "f".into(),
            Some(edit_a()),
            vec![(peer(1), edit_a()), (peer(3), edit_b())],
        )
        .unwrap();
        assert!(need.keep_local_as_conflict);
        // A third content, concurrent with both, is neither kept here nor superseded.
        let c = file(0xc, 15, N2, v(&[(N1, 1), (N2, 1)]));
        let need = need_of(
            "f".into(),
            Some(edit_a()),
            vec![(peer(2), c.clone()), (peer(3), edit_b())],
        )
        .unwrap();
        assert!(need.keep_local_as_conflict);
        assert_eq!(
            need.target.version.compare(&c.version),
            Ordering::Concurrent
        );
    }

    #[test]
    fn an_ordinary_update_or_a_lost_delete_makes_no_copy() {
        let older = file(0xa, 10, N1, v(&[(N1, 1)]));
        let newer = file(0xb, 20, N1, v(&[(N1, 2)]));
        let need = need_of(
            "f".into(),
            Some(older.clone()),
            vec![(peer(1), newer.clone())],
        )
        .unwrap();
        assert!(!need.keep_local_as_conflict);
        assert_eq!(need.target.version, newer.version);
        // A deletion concurrent with an edit: the edit wins everywhere, and both versions merge.
        let mut deleted = older.clone();
        deleted.deleted = true;
        deleted.version = v(&[(N1, 1), (N2, 1)]);
        let need = need_of("f".into(), Some(deleted), vec![(peer(1), newer.clone())]).unwrap();
        assert!(!need.keep_local_as_conflict && !need.target.deleted);
        assert_eq!(need.target.version, v(&[(N1, 2), (N2, 1)]));
        assert!(need_of("f".into(), Some(newer.clone()), vec![(peer(1), newer)]).is_none());
    }
}
