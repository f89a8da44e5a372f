//! Namespace names.
//!
//! A namespace `gitlab` lives at `$DATA_PATH/gitlab` and is exported over NFS as `/gitlab`, so its name
//! is a single path component that can never point anywhere else. The rules, and why:
//!
//! - not empty, at most 255 bytes: the longest file name Linux file systems accept;
//! - no `/` and no NUL: it must be exactly one path component;
//! - no leading `.`: rules out `.` and `..`, and keeps `$DATA_PATH/.shoal` (the node's state directory)
//!   and other dot-directories impossible to shadow;
//! - no control characters, no leading or trailing white space: names are typed into shells and shown
//!   in terminals, where those only hide mistakes.

use std::fmt;

/// The longest name accepted, in bytes.
pub const MAX_LEN: usize = 255;

/// A validated namespace name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct NamespaceName(String);

/// Why a string is not a valid namespace name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a namespace name cannot be empty")]
    Empty,
    #[error("namespace name is {0} bytes long; the limit is {MAX_LEN}")]
    TooLong(usize),
    #[error("namespace name {0:?} contains '/': a name is a single directory name")]
    Slash(String),
    #[error("namespace name {0:?} starts with '.': hidden names (and . and ..) are reserved")]
    LeadingDot(String),
    #[error("namespace name {0:?} contains a control character")]
    Control(String),
    #[error("namespace name {0:?} starts or ends with white space")]
    Space(String),
}

impl NamespaceName {
    /// Checks `s` against the rules in the module documentation.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        if s.contains('/') {
            return Err(NameError::Slash(s.to_owned()));
        }
        if s.starts_with('.') {
            return Err(NameError::LeadingDot(s.to_owned()));
        }
        if s.chars().any(char::is_control) {
            return Err(NameError::Control(s.to_owned()));
        }
        if s.trim() != s {
            return Err(NameError::Space(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NamespaceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for NamespaceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "gitlab",
            "a",
            "my-app_2",
            "données",
            "x.y",
            &"a".repeat(255),
        ] {
            assert_eq!(
                NamespaceName::new(ok).map(|n| n.to_string()).as_deref(),
                Ok(ok)
            );
        }
    }

    type Check = fn(&NameError) -> bool;

    #[test]
    fn refuses_names_that_escape_or_hide() {
        let cases: [(&str, Check); 9] = [
            ("", |e| matches!(e, NameError::Empty)),
            ("../x", |e| matches!(e, NameError::Slash(_))),
            ("a/b", |e| matches!(e, NameError::Slash(_))),
            (".hidden", |e| matches!(e, NameError::LeadingDot(_))),
            ("..", |e| matches!(e, NameError::LeadingDot(_))),
            ("a\nb", |e| matches!(e, NameError::Control(_))),
            ("a\0b", |e| matches!(e, NameError::Control(_))),
            (" x", |e| matches!(e, NameError::Space(_))),
            ("x ", |e| matches!(e, NameError::Space(_))),
        ];
        for (bad, want) in cases {
            let err = NamespaceName::new(bad).expect_err(bad);
            assert!(want(&err), "{bad:?} gave {err:?}");
        }
        assert_eq!(
            NamespaceName::new(&"a".repeat(300)),
            Err(NameError::TooLong(300))
        );
    }
}
