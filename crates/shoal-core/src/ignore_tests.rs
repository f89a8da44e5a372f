use super::*;
use proptest::prelude::*;

fn list(text: &str) -> IgnoreList {
    let (list, warnings) = IgnoreList::parse(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    list
}

fn file(l: &IgnoreList, path: &str) -> bool {
    l.is_ignored(path, false)
}

fn dir(l: &IgnoreList, path: &str) -> bool {
    l.is_ignored(path, true)
}

#[test]
fn a_single_name_matches_at_any_depth_files_and_directories() {
    let l = list("node_modules\n");
    assert!(dir(&l, "node_modules"));
    assert!(file(&l, "node_modules"));
    assert!(dir(&l, "a/b/node_modules"));
    assert!(
        file(&l, "a/node_modules/x/y.js"),
        "everything under an ignored directory"
    );
    assert!(!file(&l, "node_modules2"));
    assert!(!file(&l, "a/my_node_modules/x"));
}

#[test]
fn star_stays_within_one_name() {
    let l = list("*.tmp\n");
    assert!(file(&l, "x.tmp"));
    assert!(file(&l, "deep/er/x.tmp"));
    assert!(file(&l, ".tmp"), "* matches the empty run");
    assert!(
        file(&l, "a.tmp/inside"),
        "a directory named *.tmp takes its content along"
    );
    assert!(!file(&l, "x.tmp2"));
    assert!(!file(&l, "x.TMP"), "case-sensitive");
    let l = list("/docs/*.tmp\n");
    assert!(file(&l, "docs/a.tmp"));
    assert!(!file(&l, "docs/sub/a.tmp"), "* does not cross '/'");
    assert!(!file(&l, "other/docs/a.tmp"));
    let l = list("a*b\n");
    assert!(file(&l, "ab") && file(&l, "axxb") && file(&l, "d/a/b/ab"));
    assert!(!file(&l, "a/b"), "a*b is one name; it is not a/b");
}

#[test]
fn question_mark_is_exactly_one_character() {
    let l = list("abc?.txt\n");
    assert!(file(&l, "abcd.txt"));
    assert!(file(&l, "x/abcé.txt"), "one character, even of two bytes");
    assert!(file(&l, "abc😀.txt"), "one character, even of four bytes");
    assert!(!file(&l, "abc.txt"));
    assert!(!file(&l, "abcde.txt"));
    let l = list("a?b\n");
    assert!(!file(&l, "a/b"), "? never matches '/'");
}

#[test]
fn globs_backtrack() {
    let l = list("*a*b?c*\n");
    assert!(file(&l, "xxaaab_cyy"));
    assert!(file(&l, "ab_c"));
    assert!(file(&l, "a_b_ab_c"));
    assert!(!file(&l, "abc"));
    assert!(!file(&l, "ba_c"));
    let l = list("*.tar.gz\n");
    assert!(file(&l, "x.tar.gz") && !file(&l, "x.tar.gz.part"));
    let l = list("??\n");
    assert!(file(&l, "éé") && !file(&l, "é") && !file(&l, "ééé"));
}

#[test]
fn leading_slash_anchors_to_the_root() {
    let l = list("/build\n");
    assert!(dir(&l, "build"));
    assert!(file(&l, "build"));
    assert!(file(&l, "build/out.o"));
    assert!(dir(&l, "build/deep/er"));
    assert!(!dir(&l, "sub/build"));
    assert!(!file(&l, "sub/build/kept.o"));
    assert!(!file(&l, "builder"));
}

#[test]
fn an_inner_slash_anchors_too_as_in_bittorrent_sync() {
    let l = list("ABC/CDE F\n");
    assert!(dir(&l, "ABC/CDE F"));
    assert!(file(&l, "ABC/CDE F/x"));
    assert!(!dir(&l, "123/ABC/CDE F"));
    assert!(!dir(&l, "ABC"));
    let l = list("FOO/*\n");
    assert!(file(&l, "FOO/a") && dir(&l, "FOO/sub") && file(&l, "FOO/sub/b"));
    assert!(!dir(&l, "FOO"), "the directory itself stays");
    assert!(!file(&l, "x/FOO/a"));
}

#[test]
fn a_trailing_slash_means_directories_only() {
    let l = list("cache/\n");
    assert!(dir(&l, "cache"));
    assert!(dir(&l, "a/b/cache"));
    assert!(!file(&l, "cache"));
    assert!(!file(&l, "a/cache"));
    assert!(file(&l, "cache/c"), "inside an ignored directory");
    assert!(file(&l, "a/cache/c"));
    let l = list("/out/\n");
    assert!(dir(&l, "out") && !file(&l, "out") && file(&l, "out/x") && !dir(&l, "a/out"));
    let l = list("/a/b/\n");
    assert!(dir(&l, "a/b") && !file(&l, "a/b") && file(&l, "a/b/c"));
}

#[test]
fn double_star_matches_any_number_of_names() {
    let l = list("/a/**/x\n");
    assert!(file(&l, "a/x"), "none");
    assert!(file(&l, "a/b/x"));
    assert!(file(&l, "a/b/c/d/x"));
    assert!(file(&l, "a/b/x/y"), "under a matched directory");
    assert!(!file(&l, "b/a/x"));
    assert!(!file(&l, "a/b/xx"));

    let l = list("**/target\n");
    assert!(dir(&l, "target") && dir(&l, "a/b/target") && file(&l, "a/target/debug/x"));
    assert!(!dir(&l, "a/targets"));

    let l = list("logs/**\n");
    assert!(dir(&l, "logs") && file(&l, "logs/a/b") && !file(&l, "x/logs/a"));

    let l = list("**\n");
    assert!(file(&l, "anything") && file(&l, "a/b/c"));

    let l = list("**/\n");
    assert!(!file(&l, "top-level-file") && dir(&l, "d") && file(&l, "d/f"));

    let l = list("/a/**/b/**/c\n");
    assert!(file(&l, "a/b/c") && file(&l, "a/x/b/y/z/c") && file(&l, "a/b/b/b/c/d"));
    assert!(!file(&l, "a/c/b") && !file(&l, "a/b"));

    // Inside a longer name `**` is `*`, as in BitTorrent Sync.
    let l = list("a**b\n");
    assert!(file(&l, "axyb") && !file(&l, "ax/yb"));
}

#[test]
fn double_star_with_many_names_does_not_blow_up() {
    let pattern = "/**/a".repeat(40);
    let l = list(&pattern);
    let deep = vec!["a"; 39].join("/") + "/b";
    assert!(!file(&l, &deep));
    let deep = vec!["a"; 60].join("/");
    assert!(file(&l, &deep));
}

#[test]
fn comments_blank_lines_whitespace_and_crlf() {
    let text = "\u{feff}# a comment\r\n\r\n   \t\n  *.log  \r\n#*.txt\n  # indented comment\n/only\r\nspace d\n";
    let (l, warnings) = IgnoreList::parse(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(l.len(), 3);
    assert!(file(&l, "x.log"));
    assert!(!file(&l, "x.txt"));
    assert!(!file(&l, "# a comment"));
    assert!(file(&l, "only") && !file(&l, "a/only"));
    assert!(file(&l, "space d"), "inner white space is kept");
    assert!(!file(&l, "\u{feff}# a comment"));
}

#[test]
fn lines_that_cannot_match_are_skipped_and_reported() {
    let (l, warnings) = IgnoreList::parse("ok\n/\n//\n./x\na/../b\n*.tmp\n");
    assert_eq!(l.len(), 2);
    let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, [2, 3, 4, 5]);
    assert_eq!(warnings[0].text, "/");
    let shown = warnings[0].to_string();
    assert!(
        shown.contains("line 2") && shown.contains("\"/\""),
        "{shown}"
    );
    assert!(file(&l, "ok") && file(&l, "a.tmp"));

    let too_long = "x/".repeat(MAX_NAMES + 1);
    let (l, warnings) = IgnoreList::parse(&too_long);
    assert!(l.is_empty());
    assert_eq!(warnings.len(), 1);
}

#[test]
fn repeated_slashes_count_as_one() {
    let l = list("//a//b\n");
    assert!(file(&l, "a/b") && !file(&l, "x/a/b"));
}

#[test]
fn unicode_names() {
    let l = list("résumé*.pdf\n/日本/*\nЖ?\n");
    assert!(file(&l, "docs/résumé-2024.pdf"));
    assert!(!file(&l, "docs/resume-2024.pdf"));
    assert!(file(&l, "日本/語.txt") && !file(&l, "x/日本/語.txt"));
    assert!(file(&l, "Жж") && !file(&l, "Ж"));
}

#[test]
fn an_empty_list_ignores_nothing() {
    let (l, warnings) = IgnoreList::parse("");
    assert!(warnings.is_empty() && l.is_empty());
    assert_eq!(l.len(), 0);
    assert!(!file(&l, ".DS_Store"));
    assert!(!IgnoreList::default().is_ignored("a/b", true));
}

#[test]
fn defaults_apply_on_top_and_are_not_counted() {
    let l = list("*.log\n").with_defaults();
    assert_eq!(l.len(), 1);
    assert!(file(&l, "x.log"));
    for path in [
        ".~shoal.report.pdf.4f2a.tmp",
        "sub/.~shoal.x.1.tmp",
        ".DS_Store",
        "a/b/.DS_Store",
        "._photo.jpg",
        "pics/Thumbs.db",
        "desktop.ini",
        "movie.mp4.!sync",
        ".SyncID",
        ".SyncArchive/old.txt",
        "lost+found/x",
    ] {
        assert!(file(&l, path), "{path}");
    }
    for path in [
        "notes.txt",
        "sub/.SyncID",
        "sub/lost+found",
        "x.tmp",
        "DS_Store",
    ] {
        assert!(!file(&l, path), "{path}");
    }
    let empty_with_defaults = IgnoreList::default().with_defaults();
    assert!(empty_with_defaults.is_empty());
    assert!(file(&empty_with_defaults, ".DS_Store"));
}

#[test]
fn every_default_pattern_compiles_and_with_defaults_is_idempotent() {
    let (l, warnings) = IgnoreList::parse(&DEFAULT_PATTERNS.join("\n"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(l.len(), DEFAULT_PATTERNS.len());
    let once = IgnoreList::default().with_defaults();
    let twice = once.clone().with_defaults();
    let rules = |l: &IgnoreList| l.anywhere.len() + l.at_root.len() + l.sequences.len();
    assert_eq!(rules(&once), DEFAULT_PATTERNS.len());
    assert_eq!(rules(&twice), DEFAULT_PATTERNS.len());
}

#[test]
fn sync_is_reserved_only_at_the_root() {
    assert_eq!(SYNC_DIR, ".sync");
    assert!(is_reserved(".sync"));
    assert!(is_reserved(".sync/IgnoreList"));
    assert!(is_reserved(".sync/Archive/a/b"));
    assert!(!is_reserved("sub/.sync"));
    assert!(!is_reserved("sub/.sync/x"));
    assert!(!is_reserved(".syncthing"));
    assert!(!is_reserved(".sync2/x"));
    assert!(!is_reserved(".syn"));
}

#[test]
fn temp_names() {
    assert!(is_temp_name(".~shoal.report.pdf.4f2a.tmp"));
    assert!(is_temp_name(TEMP_PREFIX));
    assert!(!is_temp_name("report.pdf"));
    assert!(!is_temp_name(".~shoal"));
    assert!(!is_temp_name("x.~shoal.y"));
}

#[test]
fn the_scanners_example_list() {
    let (l, warnings) = IgnoreList::parse("# build output\n*.tmp\n/build\ncache/\n");
    assert!(warnings.is_empty());
    assert_eq!(l.len(), 3);
    let l = l.with_defaults();
    let kept = ["keep.txt", "sub", "sub/build", "sub/build/kept.o"];
    let left_out = [
        "x.tmp",
        "sub/y.tmp",
        "build",
        "build/out.o",
        "cache",
        "sub/.~shoal.file.123.tmp",
    ];
    for p in kept {
        assert!(!l.is_ignored(p, p == "sub" || p == "sub/build"), "{p}");
    }
    for p in left_out {
        assert!(l.is_ignored(p, p == "build" || p == "cache"), "{p}");
    }
}

/// A slow, obviously right matcher for one name: recursion over characters.
fn reference_glob(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('*', rest)) => (0..=text.len()).any(|i| reference_glob(rest, &text[i..])),
        Some(('?', rest)) => !text.is_empty() && reference_glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && reference_glob(rest, &text[1..]),
    }
}

proptest! {
    #[test]
    fn is_ignored_never_panics(text in "\\PC{0,200}", path in "\\PC{1,80}", is_dir in any::<bool>()) {
        let (l, _) = IgnoreList::parse(&text);
        let l = l.with_defaults();
        let _ = l.is_ignored(&path, is_dir);
        let _ = is_reserved(&path);
        let _ = is_temp_name(&path);
    }

    #[test]
    fn is_ignored_never_panics_on_odd_paths(
        pattern in "[ab*?/é]{1,12}",
        path in "[ab/é]{0,16}",
        is_dir in any::<bool>(),
    ) {
        let (l, _) = IgnoreList::parse(&pattern);
        let _ = l.is_ignored(&path, is_dir);
    }

    #[test]
    fn one_name_globs_agree_with_a_reference(pattern in "[ab*?é]{1,10}", name in "[abé]{0,10}") {
        prop_assume!(pattern != "**");
        let (l, _) = IgnoreList::parse(&pattern);
        let p: Vec<char> = pattern.chars().collect();
        let n: Vec<char> = name.chars().collect();
        prop_assume!(!name.is_empty());
        prop_assert_eq!(l.is_ignored(&name, false), reference_glob(&p, &n));
    }

    #[test]
    fn an_ignored_directory_takes_everything_under_it(
        pattern in "/?([ab*?]{1,3}|\\*\\*)(/([ab*?]{1,3}|\\*\\*)){0,3}/?",
        parent in "[ab]{1,2}(/[ab]{1,2}){0,3}",
        child in "[ab]{1,2}(/[ab]{1,2}){0,2}",
        is_dir in any::<bool>(),
    ) {
        let (l, _) = IgnoreList::parse(&pattern);
        if l.is_ignored(&parent, true) {
            let path = format!("{parent}/{child}");
            prop_assert!(l.is_ignored(&path, is_dir), "{} ignored but not {}", parent, path);
        }
    }

    #[test]
    fn unanchored_names_match_at_every_depth(
        name in "[ab*?]{1,4}",
        prefix in "([ab]{1,2}/){0,3}",
        leaf in "[ab]{1,3}",
    ) {
        prop_assume!(name != "**");
        let (l, _) = IgnoreList::parse(&name);
        let nested = format!("{prefix}{leaf}");
        if l.is_ignored(&leaf, false) {
            prop_assert!(l.is_ignored(&nested, false), "{}", nested);
        }
    }
}
