//! What this node needs: for every path, the global version (by [`shoal_core::resolve`]) compared
//! with the local one. Pure over a snapshot of the index: no I/O but reading it.

use std::collections::BTreeMap;

use shoal_core::chunk::Hash;
use shoal_core::resolve::{Candidate, CandidateKind, resolve};
use shoal_core::version::VersionVector;
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
pub fn need_of(path: String, local: Option<Entry>, remote: Vec<(PeerKey, Entry)>) -> Option<Need> {
    let mut entries: Vec<&Entry> = Vec::with_capacity(remote.len() + 1);
    entries.extend(local.as_ref());
    entries.extend(remote.iter().map(|(_, e)| e));
    let candidates: Vec<Candidate> = entries.iter().map(|e| candidate(e)).collect();
    let resolution = resolve(&candidates)?;
    let winner = entries[resolution.winner];
    let same = |a: &Entry, b: &Entry| same_content(a, b);
    if let Some(l) = &local
        && same(l, winner)
    {
        if l.version == resolution.version {
            return None;
        }
        return Some(Need {
            path,
            target: with_version(l, resolution.version),
            sources: Vec::new(),
            local,
            keep_local_as_conflict: false,
            version_only: true,
        });
    }
    let mut target = with_version(winner, resolution.version);
    target.local = Default::default();
    let sources = remote
        .iter()
        .filter(|(_, e)| same(e, winner))
        .map(|(p, _)| *p)
        .collect();
    let keep_local_as_conflict = local.is_some() && resolution.conflict_copies.contains(&0);
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
