use super::*;
use proptest::prelude::*;

const A: DeviceId = DeviceId(1);
const B: DeviceId = DeviceId(2);
const C: DeviceId = DeviceId(3);

fn vv(pairs: &[(DeviceId, u64)]) -> VersionVector {
    VersionVector::try_from(pairs.to_vec()).unwrap()
}

fn h(n: u8) -> Hash {
    Hash([n; 32])
}

/// A live file at `version`, last changed by `by` at `mtime_ns`, with content `h(content)`.
fn file(version: &[(DeviceId, u64)], by: DeviceId, mtime_ns: i64, content: u8) -> Candidate {
    Candidate {
        version: vv(version),
        deleted: false,
        kind: CandidateKind::File,
        mtime_ns,
        modified_by: by,
        content: h(content),
        mode: 0o644,
    }
}

fn deleted(c: Candidate) -> Candidate {
    Candidate { deleted: true, ..c }
}

fn dir(c: Candidate) -> Candidate {
    Candidate {
        kind: CandidateKind::Dir,
        content: h(0),
        mode: 0o755,
        ..c
    }
}

#[test]
fn no_candidates_resolve_to_none() {
    assert_eq!(resolve(&[]), None);
}

#[test]
fn a_single_candidate_wins() {
    let c = file(&[(A, 1)], A, 10, 1);
    let r = resolve(std::slice::from_ref(&c)).unwrap();
    assert_eq!(
        (r.winner, r.conflict_copies, r.version),
        (0, vec![], c.version)
    );
}

#[test]
fn the_newer_version_wins_without_conflict_whatever_its_mtime() {
    let old = file(&[(A, 1)], A, 1_000, 1);
    let new = file(&[(A, 1), (B, 1)], B, 5, 2);
    for (cands, w) in [(vec![old.clone(), new.clone()], 1), (vec![new, old], 0)] {
        let r = resolve(&cands).unwrap();
        assert_eq!(r.winner, w);
        assert!(r.conflict_copies.is_empty());
        assert_eq!(r.version, vv(&[(A, 1), (B, 1)]));
    }
}

#[test]
fn a_newer_deletion_beats_an_older_edit() {
    let edit = file(&[(A, 2)], A, 1_000, 1);
    let del = deleted(file(&[(A, 2), (B, 1)], B, 5, 1));
    let r = resolve(&[edit, del]).unwrap();
    assert_eq!(r.winner, 1);
    assert!(r.conflict_copies.is_empty());
}

#[test]
fn equal_versions_are_no_conflict_and_the_lowest_index_represents_them() {
    let c = file(&[(A, 3), (B, 1)], A, 10, 1);
    let r = resolve(&[c.clone(), c.clone(), c.clone()]).unwrap();
    assert_eq!(r.winner, 0);
    assert!(r.conflict_copies.is_empty());
    assert_eq!(r.version, c.version);
}

#[test]
fn equal_versions_beat_an_older_one() {
    let old = file(&[(A, 1)], A, 10, 1);
    let c = file(&[(A, 2)], A, 20, 2);
    let r = resolve(&[old, c.clone(), c]).unwrap();
    assert_eq!(r.winner, 1);
    assert!(r.conflict_copies.is_empty());
    assert_eq!(r.version, vv(&[(A, 2)]));
}

#[test]
fn a_concurrent_edit_beats_a_delete_both_ways() {
    let base = [(A, 1), (B, 1)];
    // The deletion is later and by the higher device: it still loses.
    let edit = file(&[(A, 2), (B, 1)], A, 10, 1);
    let del = deleted(file(&[(A, 1), (B, 2)], B, 1_000, 1));
    let older = file(&base, A, 5, 9);
    for cands in [
        vec![edit.clone(), del.clone(), older.clone()],
        vec![older, del, edit],
    ] {
        let r = resolve(&cands).unwrap();
        assert_eq!(cands[r.winner].content, h(1));
        assert!(!cands[r.winner].deleted);
        assert!(r.conflict_copies.is_empty(), "a deletion needs no copy");
        assert_eq!(r.version, vv(&[(A, 2), (B, 2)]));
    }
}

#[test]
fn a_directory_beats_a_concurrent_file_which_is_kept_as_a_copy() {
    let d = dir(file(&[(A, 1)], A, 10, 0));
    let f = file(&[(B, 1)], B, 1_000, 7);
    let r = resolve(&[f.clone(), d.clone()]).unwrap();
    assert_eq!(r.winner, 1);
    assert_eq!(r.conflict_copies, vec![0]);
    assert_eq!(r.version, vv(&[(A, 1), (B, 1)]));
    // A symlink too.
    let l = Candidate {
        kind: CandidateKind::Symlink,
        ..f
    };
    let r = resolve(&[d, l]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (0, vec![1]));
}

#[test]
fn a_deleted_directory_loses_to_a_live_file() {
    let d = deleted(dir(file(&[(A, 1)], A, 1_000, 0)));
    let f = file(&[(B, 1)], B, 10, 7);
    let r = resolve(&[d, f]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (1, vec![]));
}

#[test]
fn concurrent_directories_are_no_conflict() {
    let d1 = dir(file(&[(A, 1)], A, 10, 0));
    let d2 = Candidate {
        mode: 0o700,
        ..dir(file(&[(B, 1)], B, 20, 0))
    };
    let r = resolve(&[d1, d2]).unwrap();
    assert_eq!(r.winner, 1, "the later mtime");
    assert!(r.conflict_copies.is_empty());
    assert_eq!(r.version, vv(&[(A, 1), (B, 1)]));
}

#[test]
fn the_later_mtime_wins_a_conflict() {
    let early = file(&[(A, 1)], B, 100, 1);
    let late = file(&[(B, 1)], A, 200, 2);
    let r = resolve(&[late.clone(), early.clone()]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (0, vec![1]));
    let r = resolve(&[early, late]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (1, vec![0]));
}

#[test]
fn the_higher_device_wins_a_conflict_at_the_same_mtime() {
    let low = file(&[(A, 1)], A, 100, 9);
    let high = file(&[(B, 1)], B, 100, 1);
    let r = resolve(&[high.clone(), low.clone()]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (0, vec![1]));
    let r = resolve(&[low, high]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (1, vec![0]));
}

#[test]
fn the_larger_hash_then_the_version_text_break_the_last_ties() {
    let small = file(&[(A, 1)], A, 100, 1);
    let large = file(&[(B, 1)], A, 100, 2);
    let r = resolve(&[large, small]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (0, vec![1]));
    // Differing in version only: the version's text decides.
    let x = file(&[(A, 1)], A, 100, 1);
    let y = file(&[(B, 1)], A, 100, 1);
    let r = resolve(&[x.clone(), y.clone()]).unwrap();
    assert_eq!(
        r.winner, 1,
        "{{0000000000000002:1}} > {{0000000000000001:1}}"
    );
    assert!(r.conflict_copies.is_empty(), "same content");
    let r = resolve(&[y, x]).unwrap();
    assert_eq!(r.winner, 0);
}

#[test]
fn concurrent_candidates_with_the_same_content_are_no_conflict() {
    let a = file(&[(A, 1)], A, 100, 5);
    let b = file(&[(B, 1)], B, 200, 5);
    let r = resolve(&[a, b]).unwrap();
    assert_eq!(r.winner, 1);
    assert!(r.conflict_copies.is_empty());
    assert_eq!(
        r.version,
        vv(&[(A, 1), (B, 1)]),
        "still merged, to settle it"
    );
}

#[test]
fn a_different_mode_or_kind_is_different_content() {
    let a = file(&[(A, 1)], A, 100, 5);
    let b = Candidate {
        mode: 0o755,
        ..file(&[(B, 1)], B, 200, 5)
    };
    assert_eq!(resolve(&[a.clone(), b]).unwrap().conflict_copies, vec![0]);
    let l = Candidate {
        kind: CandidateKind::Symlink,
        ..file(&[(B, 1)], B, 200, 5)
    };
    assert_eq!(resolve(&[a, l]).unwrap().conflict_copies, vec![0]);
}

#[test]
fn three_way_conflict_keeps_both_losers() {
    let base = file(&[(A, 1), (B, 1), (C, 1)], A, 1, 0);
    let a = file(&[(A, 2), (B, 1), (C, 1)], A, 100, 1);
    let b = file(&[(A, 1), (B, 2), (C, 1)], B, 300, 2);
    let c = file(&[(A, 1), (B, 1), (C, 2)], C, 200, 3);
    let r = resolve(&[a, base, b, c]).unwrap();
    assert_eq!(r.winner, 2);
    assert_eq!(r.conflict_copies, vec![0, 3]);
    assert_eq!(r.version, vv(&[(A, 2), (B, 2), (C, 2)]));
}

#[test]
fn losers_with_the_same_content_get_one_copy_from_the_best_ranked() {
    let a = file(&[(A, 1)], A, 100, 1);
    let c = file(&[(C, 1)], C, 150, 1);
    let b = file(&[(B, 1)], B, 300, 2);
    let r = resolve(&[a.clone(), b.clone(), c.clone()]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (1, vec![2]));
    let r = resolve(&[c, a, b]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (2, vec![0]));
}

#[test]
fn an_older_version_concurrent_with_the_winner_needs_no_copy() {
    // b1 is superseded by b2 (which lost), so only b2's content is kept.
    let a = file(&[(A, 1)], A, 500, 1);
    let b1 = file(&[(B, 1)], B, 100, 2);
    let b2 = file(&[(B, 2)], B, 200, 3);
    let r = resolve(&[a, b1, b2]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (0, vec![2]));
    assert_eq!(r.version, vv(&[(A, 1), (B, 2)]));
}

#[test]
fn all_deleted_is_no_conflict() {
    let a = deleted(file(&[(A, 1)], A, 100, 1));
    let b = deleted(file(&[(B, 1)], B, 200, 2));
    let r = resolve(&[a, b]).unwrap();
    assert_eq!((r.winner, r.conflict_copies), (1, vec![]));
    assert_eq!(r.version, vv(&[(A, 1), (B, 1)]));
}

// --- conflict names -------------------------------------------------------------------------

/// 2026-11-25 04:15:30 UTC: 20_782 days (56 years, 14 of them leap, plus 328 days into 2026)
/// and 15_330 seconds after the epoch.
const T: i64 = (20_782 * 86_400 + 4 * 3600 + 15 * 60 + 30) * 1_000_000_000;
const DEV: DeviceId = DeviceId(0x0123_4567_89ab_cdef);

#[test]
fn conflict_names_keep_the_directory_and_the_last_extension() {
    assert_eq!(T / 1_000_000_000, 1_795_580_130);
    let cases = [
        (
            "docs/report.txt",
            "docs/report.sync-conflict-20261125-041530-0123456.txt",
        ),
        (
            "report.txt",
            "report.sync-conflict-20261125-041530-0123456.txt",
        ),
        ("Makefile", "Makefile.sync-conflict-20261125-041530-0123456"),
        (
            "a/.bashrc",
            "a/.bashrc.sync-conflict-20261125-041530-0123456",
        ),
        (
            "x/y/a.tar.gz",
            "x/y/a.tar.sync-conflict-20261125-041530-0123456.gz",
        ),
        (
            "d.x/Makefile",
            "d.x/Makefile.sync-conflict-20261125-041530-0123456",
        ),
    ];
    for (path, want) in cases {
        assert_eq!(conflict_name(path, T + 999_999_999, DEV), want, "{path}");
    }
}

#[test]
fn conflict_name_dates_are_utc_civil_dates_clamped_to_the_epoch() {
    let d = DeviceId(0xab);
    assert_eq!(
        conflict_name("f", 0, d),
        "f.sync-conflict-19700101-000000-0000000"
    );
    assert_eq!(
        conflict_name("f", -1, d),
        "f.sync-conflict-19700101-000000-0000000"
    );
    assert_eq!(
        conflict_name("f", i64::MIN, d),
        "f.sync-conflict-19700101-000000-0000000"
    );
    // The last second of a leap day.
    assert_eq!(
        conflict_name("f", 1_709_251_199_000_000_000, d),
        "f.sync-conflict-20240229-235959-0000000"
    );
    // The largest time an i64 of nanoseconds holds: 2262-04-11 23:47:16.
    assert_eq!(
        conflict_name("f", i64::MAX, d),
        "f.sync-conflict-22620411-234716-0000000"
    );
}

#[test]
fn civil_dates_match_known_days() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(20_782), (2026, 11, 25));
    assert_eq!(civil_from_days(MAX_SECS / 86_400), (9999, 12, 31));
}

#[test]
fn conflict_copies_are_recognized() {
    for path in ["docs/report.txt", "Makefile", ".bashrc", "a.tar.gz", "x/y"] {
        let name = conflict_name(path, T, DEV);
        assert!(is_conflict_copy(&name), "{name}");
        assert!(!is_conflict_copy(path), "{path}");
    }
    // Syncthing's own, with its 7-character base32 device prefix.
    assert!(is_conflict_copy(
        "a/b.sync-conflict-20240101-120000-ABCDEF7.txt"
    ));
    // A conflict copy of a conflict copy is still one.
    let twice = conflict_name(&conflict_name("a.txt", T, DEV), T, DEV);
    assert!(is_conflict_copy(&twice));
}

#[test]
fn ordinary_names_are_not_conflict_copies() {
    for path in [
        "notes.sync-conflict-ideas.txt",
        "a.sync-conflict-2024010-120000-ABCDEF7",
        "a.sync-conflict-20240101-120000-.txt",
        "a.sync-conflict-20240101-120000-ABCDEFGH",
        "a.sync-conflict-20240101-120000-ABC_DEF",
        "a.sync-conflict-20240101-120000",
        "dir.sync-conflict-20240101-120000-abcdef0/file.txt",
        "sync-conflict-20240101-120000-abcdef0",
        "",
    ] {
        assert!(!is_conflict_copy(path), "{path}");
    }
}

// --- laws ----------------------------------------------------------------------------------

/// A candidate over 2–4 devices with counters 0–3, content, mode, kind, deletion, mtime and
/// device from small sets, so that equal and same-content candidates are common.
fn any_candidate(devices: u64) -> impl Strategy<Value = Candidate> {
    (
        proptest::collection::vec(0u64..4, devices as usize),
        any::<bool>(),
        prop_oneof![
            Just(CandidateKind::File),
            Just(CandidateKind::Dir),
            Just(CandidateKind::Symlink)
        ],
        -1i64..3,
        1u64..4,
        0u8..3,
        prop_oneof![Just(0o644u32), Just(0o755u32)],
    )
        .prop_map(|(counters, deleted, kind, mtime_ns, by, content, mode)| {
            let pairs: Vec<(DeviceId, u64)> = counters
                .into_iter()
                .enumerate()
                .filter(|&(_, c)| c > 0)
                .map(|(d, c)| (DeviceId(d as u64 + 1), c))
                .collect();
            Candidate {
                version: VersionVector::try_from(pairs).unwrap(),
                deleted,
                kind,
                mtime_ns,
                modified_by: DeviceId(by),
                content: h(content),
                mode,
            }
        })
}

fn any_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    (2u64..=4).prop_flat_map(|n| proptest::collection::vec(any_candidate(n), 1..=5))
}

/// Every ordering of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

/// The resolution by value: the winner and the conflict copies as candidates, and the version.
fn by_value(cands: &[Candidate], r: &Resolution) -> (Candidate, Vec<Candidate>, VersionVector) {
    let mut copies: Vec<Candidate> = r
        .conflict_copies
        .iter()
        .map(|&i| cands[i].clone())
        .collect();
    copies.sort_by_key(|c| format!("{c:?}"));
    (cands[r.winner].clone(), copies, r.version.clone())
}

proptest! {
    #[test]
    fn resolution_does_not_depend_on_input_order(cands in any_candidates()) {
        let want = by_value(&cands, &resolve(&cands).unwrap());
        for p in permutations(cands.len()) {
            let permuted: Vec<Candidate> = p.iter().map(|&i| cands[i].clone()).collect();
            let got = by_value(&permuted, &resolve(&permuted).unwrap());
            prop_assert_eq!(&got, &want);
        }
    }

    #[test]
    fn the_resolved_version_dominates_every_input(cands in any_candidates()) {
        let r = resolve(&cands).unwrap();
        for c in &cands {
            prop_assert!(r.version.dominates(&c.version));
        }
        let w = &cands[r.winner];
        prop_assert!(r.version.dominates(&w.version));
        if r.version == w.version {
            // No conflict: the winner supersedes or equals everything.
            prop_assert!(cands.iter().all(|c| w.version.dominates(&c.version)));
        }
    }

    #[test]
    fn the_winner_is_never_superseded(cands in any_candidates()) {
        let r = resolve(&cands).unwrap();
        let w = &cands[r.winner];
        prop_assert!(cands.iter().all(|c| c.version.compare(&w.version) != Ordering::Greater));
    }

    #[test]
    fn conflict_copies_are_live_distinct_concurrent_losers(cands in any_candidates()) {
        let r = resolve(&cands).unwrap();
        let w = &cands[r.winner];
        prop_assert!(r.conflict_copies.windows(2).all(|p| p[0] < p[1]));
        for (n, &i) in r.conflict_copies.iter().enumerate() {
            let c = &cands[i];
            prop_assert!(!c.deleted && c.kind != CandidateKind::Dir);
            prop_assert!(c.version.concurrent_with(&w.version));
            prop_assert!(!c.same_content(w));
            for &j in &r.conflict_copies[n + 1..] {
                prop_assert!(!c.same_content(&cands[j]));
            }
        }
    }

    #[test]
    fn no_concurrent_live_content_is_lost(cands in any_candidates()) {
        let r = resolve(&cands).unwrap();
        let w = &cands[r.winner];
        for c in &cands {
            let superseded = cands.iter().any(|o| o.version.compare(&c.version) == Ordering::Greater);
            if superseded || c.deleted || c.kind == CandidateKind::Dir {
                continue;
            }
            if c.version.concurrent_with(&w.version) {
                prop_assert!(
                    c.same_content(w)
                        || r.conflict_copies.iter().any(|&i| cands[i].same_content(c)),
                    "{c:?} lost"
                );
            }
        }
    }

    #[test]
    fn resolving_again_with_the_result_settles_it(cands in any_candidates()) {
        let r = resolve(&cands).unwrap();
        let settled = Candidate { version: r.version.clone(), ..cands[r.winner].clone() };
        let mut again = vec![settled.clone()];
        again.extend(cands.iter().cloned());
        let r2 = resolve(&again).unwrap();
        let w2 = &again[r2.winner];
        prop_assert!(w2.same_content(&settled));
        prop_assert_eq!(w2.deleted, settled.deleted);
        prop_assert_eq!(&w2.version, &r.version);
        prop_assert!(r2.conflict_copies.is_empty());
        prop_assert_eq!(&r2.version, &r.version);
    }
}
