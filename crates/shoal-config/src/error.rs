//! [`ConfigError`], and turning serde's errors into ones that point at the mistake.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use shoal_core::name::NamespaceName;

/// Everything that can go wrong with the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist. `ctl init` creates it.
    #[error("{} does not exist (`ctl init` creates it)", .path.display())]
    NotFound { path: PathBuf },

    /// The file is not valid JSON, or a key is unknown, misspelt or of the wrong type.
    /// `key` is the path to the value (`shared_folders[0].secret`), empty for the whole file.
    #[error("{}:{line}:{column}: {}{message}", .path.display(), KeyPrefix(.key))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },

    /// The file parses but says something shoal refuses: port 0, a relative `dir`, two folders
    /// with the same namespace or secret…
    #[error("{}: {}{message}", .path.display(), KeyPrefix(.key))]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },

    /// The file is larger than [`crate::MAX_FILE_SIZE`]: not a config file.
    #[error("{} is larger than {limit} bytes; it cannot be a config file", .path.display())]
    TooLarge { path: PathBuf, limit: u64 },

    /// Reading, writing, locking or replacing the file failed.
    #[error("{action} {}", .path.display())]
    Io {
        /// What was being done: "reading", "writing", "locking"…
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// [`crate::Config::add_folder`]: the namespace is already shared.
    #[error("namespace {0} already exists")]
    AlreadyExists(NamespaceName),

    /// [`crate::Config::remove_folder`]: there is no such namespace.
    #[error("no namespace {0}")]
    NoSuchNamespace(NamespaceName),

    /// [`crate::Config::add_folder`]: `dir` is not absolute or does not end in the namespace name.
    #[error(
        "namespace {name} cannot live at {}: the directory must be absolute and end in /{name}",
        .dir.display()
    )]
    DirMismatch { name: NamespaceName, dir: PathBuf },

    /// [`crate::Config::add_folder`]: another folder already has this secret, or its read-write or
    /// read-only form (peers tell namespaces apart by their share, so two cannot share one).
    #[error(
        "cannot add namespace {name}: its secret (or its read-only form) is already used by {}",
        .used_by.display()
    )]
    SecretInUse {
        name: NamespaceName,
        used_by: PathBuf,
    },
}

impl ConfigError {
    /// Whether the user can fix this by changing what they typed or wrote in the file (exit code 2
    /// in the binary), as opposed to an I/O failure or a missing file.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ConfigError::NotFound { .. } | ConfigError::Io { .. } => false,
            ConfigError::Parse { .. }
            | ConfigError::Invalid { .. }
            | ConfigError::TooLarge { .. }
            | ConfigError::AlreadyExists(_)
            | ConfigError::NoSuchNamespace(_)
            | ConfigError::DirMismatch { .. }
            | ConfigError::SecretInUse { .. } => true,
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> ConfigError {
        ConfigError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `key: ` before a message, or nothing for the whole file.
struct KeyPrefix<'a>(&'a str);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

/// Builds the [`ConfigError::Parse`] for a serde error found while reading `text` from `path`.
pub(crate) fn parse_error(
    path: &Path,
    text: &[u8],
    err: serde_path_to_error::Error<serde_json::Error>,
) -> ConfigError {
    let segments = err.path().to_string();
    syntax_error(path, text, segments, err.into_inner())
}

/// Builds the [`ConfigError::Parse`] for `inner`, found at key path `segments` (`.` for the root).
pub(crate) fn syntax_error(
    path: &Path,
    text: &[u8],
    segments: String,
    inner: serde_json::Error,
) -> ConfigError {
    let (line, column) = (inner.line(), inner.column());
    // `?` is serde_path_to_error's "key not read yet": the error is in the key's syntax, so the
    // object around it is the most precise place we know.
    let known = segments
        .strip_suffix('?')
        .unwrap_or(&segments)
        .trim_end_matches('.');
    let mut key = if known.is_empty() {
        String::new()
    } else {
        known.to_owned()
    };
    let mut message = without_position(&inner);
    if let Some((unknown, expected)) = unknown_field(&message) {
        // The path usually ends in the unknown key already; make sure it does.
        if key != unknown && !key.ends_with(&format!(".{unknown}")) {
            key = join(&key, &unknown);
        }
        message = match closest(&unknown, &expected) {
            Some(near) => format!("unknown key {unknown:?}; did you mean {near:?}?"),
            None => format!("unknown key {unknown:?} (docs/config.md lists the keys)"),
        };
    } else if let Some(field) = backticked(&message, "duplicate field `") {
        key = join(&key, &field);
        message = "this key appears twice in the same object".to_owned();
    } else if let Some(field) = backticked(&message, "missing field `") {
        key = join(&key, &field);
        message = "this key is required".to_owned();
    } else if inner.is_eof() && text.iter().all(u8::is_ascii_whitespace) {
        message = "the file is empty (the smallest config is {})".to_owned();
    } else if inner.is_syntax() && at_comment(text, line, column) {
        message.push_str(" (JSON has no comments: remove the // or /* */ text)");
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        // serde_json says column 0 for "before the first character"; editors count from 1.
        column: column.max(1),
        key,
        message,
    }
}

/// `parent.child`, or `child` at the top.
fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// The name in serde's "`prefix`name`…" messages.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// serde_json's message without its " at line L column C", which we print in front instead.
fn without_position(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match full.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => full,
    }
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" into `x` and `[a, b]`.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let name = backticked(message, "unknown field `")?;
    let rest = &message["unknown field `".len() + name.len() + 1..];
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), expected))
}

/// The known key nearest to a misspelt one, if it is near enough to be what was meant.
fn closest(unknown: &str, known: &[String]) -> Option<String> {
    let budget = (unknown.chars().count() / 4).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

/// Levenshtein distance over chars, case-insensitive (`Listening_Port` is a typo too).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Whether the byte at 1-based `line`:`column` (or just before it) starts a `//` or `/*` comment.
fn at_comment(text: &[u8], line: usize, column: usize) -> bool {
    let Some(this_line) = text.split(|&b| b == b'\n').nth(line.saturating_sub(1)) else {
        return false;
    };
    let at = column.saturating_sub(1);
    [at, at.saturating_sub(1)].iter().any(|&i| {
        this_line
            .get(i..i + 2)
            .is_some_and(|s| s == b"//" || s == b"/*")
    })
}

/// Shared `Debug` of the config types: their JSON with every secret, password, hash and key
/// replaced by `"<redacted>"`.
pub(crate) fn debug_redacted<T: serde::Serialize>(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    value: &T,
) -> fmt::Result {
    const HIDDEN: [&str; 7] = [
        "secret",
        "password",
        "password_hash",
        "password_hash_unified",
        "password_hash_salt_unified",
        "api_key",
        "proxy_password",
    ];
    fn redact(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if HIDDEN.contains(&k.as_str()) {
                        *v = serde_json::Value::from("<redacted>");
                    } else {
                        redact(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    match serde_json::to_value(value) {
        Ok(mut json) => {
            redact(&mut json);
            write!(f, "{name}({json})")
        }
        Err(_) => write!(f, "{name}(<unprintable>)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("listening_port", "listening_port"), 0);
        assert_eq!(edit_distance("listenig_port", "listening_port"), 1);
        assert_eq!(edit_distance("Use_Sync_Trash", "use_sync_trash"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggests_only_near_keys() {
        let known = ["listening_port".to_owned(), "use_upnp".to_owned()];
        assert_eq!(
            closest("listenig_port", &known).as_deref(),
            Some("listening_port")
        );
        assert_eq!(closest("use_upnpp", &known).as_deref(), Some("use_upnp"));
        assert_eq!(closest("colour", &known), None);
    }

    #[test]
    fn reads_serdes_unknown_field_message() {
        let (name, expected) =
            unknown_field("unknown field `x`, expected one of `a`, `bc`").unwrap_or_default();
        assert_eq!(
            (name.as_str(), expected),
            ("x", vec!["a".to_owned(), "bc".to_owned()])
        );
        assert_eq!(unknown_field("invalid type: map"), None);
    }
}
