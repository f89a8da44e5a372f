//! `.sync/IgnoreList`: which paths of a namespace are never indexed or synced.
//!
//! The syntax is BitTorrent Sync's, so the lists of existing btsync folders keep working:
//!
//! - one pattern a line, UTF-8 (a leading byte-order mark is dropped: Windows editors write one);
//!   white space (`\r` included) around a pattern is dropped; blank lines and lines starting with
//!   `#` are skipped;
//! - `*` matches any run of characters within one name, `?` exactly one character; neither matches
//!   `/`. Both match a leading `.`, so `*` ignores hidden files too. There is no escaping, no negation
//!   and no character class: `!`, `[`, `\` are ordinary characters, as in BitTorrent Sync;
//! - a single name (`*.tmp`, `.DS_Store`, `node_modules`) matches a file or directory of that name at
//!   any depth;
//! - a pattern with a `/` before its last name is anchored to the namespace root and matched against
//!   the path from there: `/build` is only the top-level `build`, `docs/*.tmp` the tmp files directly
//!   in the top-level `docs`. (BitTorrent Sync anchors a two-name pattern `ABC/CDE` the same way,
//!   leading `/` or not; `**/ABC/CDE` matches it at any depth.) Repeated `/` count as one;
//! - a trailing `/` (`cache/`) matches directories only;
//! - matching is case-sensitive, as Linux file names are;
//! - a name that is exactly `**` matches any number of names, none included (`/a/**/x` matches `a/x`
//!   and `a/b/c/x`, `logs/**` matches `logs` and everything in it). This is a shoal extension;
//!   BitTorrent Sync reads `**` as `*`, which is also what `**` inside a longer name means here.
//!
//! A matched directory takes everything under it along: [`IgnoreList::is_ignored`] answers true for
//! `build/x/y.o` under `/build`, so a path can be judged without first judging its parents (the
//! scanner never descends into an ignored directory anyway).
//!
//! A line that can never match a path (`/`, a `.` or `..` name) is skipped with an [`IgnoreWarning`]
//! rather than failing the whole list: one typo must not make shoal sync what the rest of the list
//! keeps out, nor stop it syncing.
//!
//! Patterns are compiled once, at parse time: names split, literal names compared as strings, `*.ext`
//! and `name*` as suffix and prefix checks, the rest by a backtracking glob matcher. Judging a path
//! allocates nothing; it runs for every path of every scan.

use std::fmt;

/// The reserved directory: `.sync` at the namespace root is never indexed or synced, whatever the
/// list says. It holds the list itself, the archive and other per-node state.
pub const SYNC_DIR: &str = ".sync";

/// Prefix of shoal's temporary files (the puller writes `.~shoal.<name>.<random>.tmp` next to the
/// target): a half-written file must never be indexed, or it would be sent to peers.
pub const TEMP_PREFIX: &str = ".~shoal.";

/// Patterns applied on top of every user list by [`IgnoreList::with_defaults`]. They cannot be
/// overridden (the syntax has no negation), so they only name files nobody wants synced:
///
/// - shoal's own temporary files;
/// - what macOS and Windows leave on shared folders (macOS writes `._*` AppleDouble files, and the
///   volume directories, on NFS mounts — which is how shoal's namespaces are exported);
/// - `lost+found` at the root, for a namespace that is a file system of its own: it belongs to root,
///   cannot be read, and means nothing on another node;
/// - what BitTorrent Sync 1.x kept inside a synced folder (2.x moved it under `.sync`, which is
///   reserved anyway), so a folder taken over from btsync does not sync its leftovers.
///
/// Most come from BitTorrent Sync's own default list; its broader entries (`*.tmp`, `~*`, editor
/// swap files) are left out, as they can be real data and a user could not take them back.
pub const DEFAULT_PATTERNS: &[&str] = &[
    ".~shoal.*",
    ".DS_Store",
    "._*",
    ".Spotlight-V100",
    ".Trashes",
    ".fseventsd",
    ".TemporaryItems",
    "Thumbs.db",
    "ehthumbs.db",
    "desktop.ini",
    "/lost+found",
    "/.SyncID",
    "/.SyncIgnore",
    "/.SyncArchive",
    "*.!sync",
];

/// The most names a pattern may have; states of the matcher are bits of a `u128`.
const MAX_NAMES: usize = 100;

/// True for `.sync` and everything under it. Only at the root: `sub/.sync` is an ordinary name.
pub fn is_reserved(path: &str) -> bool {
    path.strip_prefix(SYNC_DIR)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// True for the name (not path) of one of shoal's temporary files.
pub fn is_temp_name(file_name: &str) -> bool {
    file_name.starts_with(TEMP_PREFIX)
}

/// A compiled ignore list: the user's patterns, and the built-in ones once
/// [`with_defaults`](IgnoreList::with_defaults) has added them.
///
/// Patterns are sorted by shape at parse time, so that judging a path splits it once for all the
/// single-name patterns, which are nearly all of them in practice.
#[derive(Clone, Debug, Default)]
pub struct IgnoreList {
    /// Single names without `**` or a `/` before them: tried on every name of the path.
    anywhere: Vec<NameRule>,
    /// `/name`: tried on the path's first name only.
    at_root: Vec<NameRule>,
    /// Everything else: several names, or `**`.
    sequences: Vec<Pattern>,
    user_rules: usize,
    has_defaults: bool,
}

/// A line of the list that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoreWarning {
    /// 1-based line number.
    pub line: usize,
    /// The line, trimmed.
    pub text: String,
    pub reason: String,
}

impl fmt::Display for IgnoreWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignore list line {} ({:?}) skipped: {}",
            self.line, self.text, self.reason
        )
    }
}

impl IgnoreList {
    /// Parses the file content. Never fails: a line that can't be a pattern (e.g. only "/") is
    /// skipped and reported.
    pub fn parse(text: &str) -> (IgnoreList, Vec<IgnoreWarning>) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut list = IgnoreList::default();
        let mut warnings = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match Pattern::compile(line) {
                Ok(pattern) => {
                    list.add(pattern);
                    list.user_rules += 1;
                }
                Err(reason) => warnings.push(IgnoreWarning {
                    line: index + 1,
                    text: line.to_owned(),
                    reason: reason.to_owned(),
                }),
            }
        }
        (list, warnings)
    }

    /// Adds [`DEFAULT_PATTERNS`] on top of the user's list. Idempotent. They are not counted by
    /// [`len`](IgnoreList::len), which stays the number of the user's patterns.
    pub fn with_defaults(mut self) -> IgnoreList {
        if !self.has_defaults {
            for pattern in DEFAULT_PATTERNS
                .iter()
                .filter_map(|p| Pattern::compile(p).ok())
            {
                self.add(pattern);
            }
            self.has_defaults = true;
        }
        self
    }

    fn add(&mut self, pattern: Pattern) {
        if pattern.names.len() != 1 || pattern.any_depth != 0 {
            self.sequences.push(pattern);
            return;
        }
        let (anchored, dir_only) = (pattern.anchored, pattern.dir_only);
        if let Some(name) = Vec::from(pattern.names).pop() {
            let rule = NameRule { name, dir_only };
            if anchored {
                self.at_root.push(rule);
            } else {
                self.anywhere.push(rule);
            }
        }
    }

    /// Whether `path` is left out: it, or a directory it is in, matches a pattern.
    ///
    /// `path` is the namespace-relative path with `/` separators, no leading `/`, never empty;
    /// `is_dir` tells whether it is a directory. [`is_reserved`] and [`is_temp_name`] are separate
    /// checks, applied whatever the list.
    pub fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        for (depth, (name, last)) in names_of(path).enumerate() {
            // A name before the last is a directory, which fits any rule.
            let fits =
                |rule: &NameRule| (!last || is_dir || !rule.dir_only) && rule.name.matches(name);
            if depth == 0 && self.at_root.iter().any(fits) {
                return true;
            }
            if self.anywhere.iter().any(fits) {
                return true;
            }
        }
        self.sequences.iter().any(|p| p.matches(path, is_dir))
    }

    /// True when the user's list has no pattern (the built-in defaults are not counted).
    pub fn is_empty(&self) -> bool {
        self.user_rules == 0
    }

    /// The number of the user's patterns (the built-in defaults are not counted).
    pub fn len(&self) -> usize {
        self.user_rules
    }
}

/// A single-name pattern.
#[derive(Clone, Debug)]
struct NameRule {
    name: Name,
    dir_only: bool,
}

/// One compiled line.
#[derive(Clone, Debug)]
struct Pattern {
    names: Box<[Name]>,
    /// Matched from the root rather than at any depth.
    anchored: bool,
    /// A trailing `/`: the last name only matches a directory.
    dir_only: bool,
    /// Bit `i` set when `names[i]` is `**`.
    any_depth: u128,
}

impl Pattern {
    fn compile(line: &str) -> Result<Pattern, &'static str> {
        let dir_only = line.ends_with('/');
        let parts: Vec<&str> = line.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err("a pattern needs a name, not only '/'");
        }
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err("'.' and '..' never appear in a namespace path");
        }
        // BitTorrent Sync's rule: any '/' before the last name anchors the pattern at the root.
        let anchored = line.trim_end_matches('/').contains('/');
        let mut names: Vec<Name> = Vec::with_capacity(parts.len());
        for part in parts {
            let name = Name::compile(part);
            // `**/**` means what `**` does; collapsing keeps the matcher's state set small.
            if !(matches!(name, Name::AnyDepth) && matches!(names.last(), Some(Name::AnyDepth))) {
                names.push(name);
            }
        }
        if names.len() > MAX_NAMES {
            return Err("a pattern may have at most 100 names");
        }
        let any_depth = names
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n, Name::AnyDepth))
            .fold(0u128, |bits, (i, _)| bits | 1u128 << i);
        Ok(Pattern {
            names: names.into_boxed_slice(),
            anchored,
            dir_only,
            any_depth,
        })
    }

    /// A set-of-states walk over the path's names (bit `i`: `names[..i]` matched so far), so `**`
    /// costs no backtracking whatever the pattern.
    fn matches(&self, path: &str, is_dir: bool) -> bool {
        // The pattern may end on the path's last name only if its kind fits; ending on an earlier
        // name matched a directory the path is in.
        let may_end_on_last = is_dir || !self.dir_only;
        let accept = 1u128 << self.names.len();
        let start = self.skip_any_depth(1);
        let mut states = start;
        for (n, last) in names_of(path) {
            let mut next = 0u128;
            let mut pending = states & (accept - 1);
            while pending != 0 {
                let i = pending.trailing_zeros() as usize;
                pending &= pending - 1;
                match self.names.get(i) {
                    Some(Name::AnyDepth) => next |= 1u128 << i,
                    Some(name) if name.matches(n) => next |= 1u128 << (i + 1),
                    _ => {}
                }
            }
            next = self.skip_any_depth(next);
            if next & accept != 0 && (!last || may_end_on_last) {
                return true;
            }
            if !self.anchored {
                next |= start;
            }
            if next == 0 {
                return false;
            }
            states = next;
        }
        false
    }

    /// Adds the states reached by letting each `**` match no name.
    fn skip_any_depth(&self, mut states: u128) -> u128 {
        loop {
            let grown = states | (states & self.any_depth) << 1;
            if grown == states {
                return states;
            }
            states = grown;
        }
    }
}

/// The names of `path`, each with whether it is the last.
fn names_of(path: &str) -> impl Iterator<Item = (&str, bool)> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let r = rest?;
        // A byte scan: names are short, and this beats a `str` searcher's set-up.
        match r.bytes().position(|b| b == b'/') {
            Some(slash) => {
                rest = r.get(slash + 1..);
                r.get(..slash).map(|name| (name, false))
            }
            None => {
                rest = None;
                Some((r, true))
            }
        }
    })
}

/// One name of a pattern, compiled to the cheapest test that decides it.
#[derive(Clone, Debug)]
enum Name {
    Exact(Box<str>),
    /// `abc*` (and `*` itself, with an empty prefix).
    Prefix(Box<str>),
    /// `*abc`.
    Suffix(Box<str>),
    Glob(Box<[Token]>),
    /// `**`: any number of names.
    AnyDepth,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    /// `?`
    One,
    /// `*`
    Star,
}

impl Name {
    fn compile(part: &str) -> Name {
        if part == "**" {
            return Name::AnyDepth;
        }
        let mut tokens: Vec<Token> = Vec::new();
        let mut literal = String::new();
        for c in part.chars() {
            if c != '*' && c != '?' {
                literal.push(c);
                continue;
            }
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal).into()));
            }
            match c {
                '?' => tokens.push(Token::One),
                _ if tokens.last() != Some(&Token::Star) => tokens.push(Token::Star),
                _ => {}
            }
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal.into()));
        }
        match tokens.as_slice() {
            [Token::Literal(s)] => Name::Exact(s.clone()),
            [Token::Star] => Name::Prefix("".into()),
            [Token::Literal(s), Token::Star] => Name::Prefix(s.clone()),
            [Token::Star, Token::Literal(s)] => Name::Suffix(s.clone()),
            _ => Name::Glob(tokens.into_boxed_slice()),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Name::Exact(s) => name == &**s,
            Name::Prefix(s) => name.starts_with(&**s),
            Name::Suffix(s) => name.ends_with(&**s),
            Name::Glob(tokens) => glob_matches(tokens, name),
            Name::AnyDepth => true,
        }
    }
}

/// `*`/`?` matching over the bytes of `text`, stepping a whole character at a time so `?` is one
/// character, not one byte. Only the latest `*` is ever retried (an earlier one could only absorb
/// what the latest can), so the work is at most name length × pattern length, never exponential.
fn glob_matches(tokens: &[Token], text: &str) -> bool {
    let bytes = text.as_bytes();
    let (mut t, mut at) = (0usize, 0usize);
    // After the latest `*`: the token following it and where its run currently ends.
    let mut retry: Option<(usize, usize)> = None;
    loop {
        let advanced = match tokens.get(t) {
            Some(Token::Star) => {
                retry = Some((t + 1, at));
                t += 1;
                true
            }
            Some(Token::One) if at < bytes.len() => {
                at += utf8_width(bytes[at]);
                t += 1;
                true
            }
            Some(Token::Literal(lit)) if bytes[at..].starts_with(lit.as_bytes()) => {
                at += lit.len();
                t += 1;
                true
            }
            None if at == bytes.len() => return true,
            _ => false,
        };
        if advanced {
            continue;
        }
        match retry {
            Some((after_star, end)) if end < bytes.len() => {
                let end = end + utf8_width(bytes[end]);
                retry = Some((after_star, end));
                t = after_star;
                at = end;
            }
            _ => return false,
        }
    }
}

/// Length of the UTF-8 sequence that `lead` starts.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
#[path = "ignore_tests.rs"]
mod tests;
