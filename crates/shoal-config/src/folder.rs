//! One entry of `shared_folders`: a namespace, its directory and its secret.
//!
//! A folder's namespace is not stored: it is the last component of `dir`, exactly as btsync.docker's
//! `ctl` computed it (`path.basename(dir)`), so `/data/gitlab` is namespace `gitlab`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_core::name::{NameError, NamespaceName};
use shoal_core::secret::Secret;

/// An entry of `shared_folders`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedFolder {
    /// The namespace's secret: read-write (`A…`) or read-only (`B…`). Required. Never shown by
    /// `Debug`.
    #[serde(with = "secret_as_string")]
    pub secret: Secret,
    /// The directory shared; absolute, and its last component is the namespace name. Required.
    pub dir: PathBuf,
    /// Compatibility only: shoal has no relay server yet. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_relay_server: Option<bool>,
    /// Compatibility only: shoal has no tracker; it finds peers through `known_hosts`, peer
    /// exchange, the LAN and etcd. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_tracker: Option<bool>,
    /// Look for peers on the LAN by multicast. Default true. Read it with
    /// [`SharedFolder::search_lan`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_lan: Option<bool>,
    /// Move files replaced or deleted by a peer to `.sync/Archive` instead of losing them. Default
    /// true. Read it with [`SharedFolder::use_sync_trash`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sync_trash: Option<bool>,
    /// Read-only folders only: revert local changes to the version the read-write peers have.
    /// Default false. Read it with [`SharedFolder::overwrite_changes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite_changes: Option<bool>,
    /// Compatibility only: BitTorrent Sync 2.x's selective sync. shoal syncs every file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selective_sync: Option<bool>,
    /// Compatibility only: BitTorrent Sync 1.x's DHT peer search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_dht: Option<bool>,
    /// Peers (`host:port`, or `host` for port 55555) tried for this namespace, in addition to the
    /// global `known_hosts`. Default: none. Read it with [`SharedFolder::known_hosts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<Vec<String>>,
}

/// Why a folder's `dir` does not name a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirNameError {
    #[error("{} has no last component to name the namespace after", .dir.display())]
    NoName { dir: PathBuf },
    #[error("the last component of {} is not UTF-8", .dir.display())]
    NotUtf8 { dir: PathBuf },
    #[error("the last component of {} is not a valid namespace name: {name}", .dir.display())]
    BadName { dir: PathBuf, name: NameError },
}

impl SharedFolder {
    /// A folder with btsync.docker's options: relay, tracker, LAN search and archive on.
    pub fn new(secret: Secret, dir: PathBuf) -> SharedFolder {
        SharedFolder {
            secret,
            dir,
            use_relay_server: Some(true),
            use_tracker: Some(true),
            search_lan: Some(true),
            use_sync_trash: Some(true),
            overwrite_changes: None,
            selective_sync: None,
            use_dht: None,
            known_hosts: None,
        }
    }

    /// The namespace: the last component of `dir` (`/data/gitlab` → `gitlab`).
    pub fn namespace(&self) -> Result<NamespaceName, DirNameError> {
        namespace_of(&self.dir)
    }

    /// `search_lan`, default true.
    pub fn search_lan(&self) -> bool {
        self.search_lan.unwrap_or(true)
    }

    /// `use_sync_trash`, default true.
    pub fn use_sync_trash(&self) -> bool {
        self.use_sync_trash.unwrap_or(true)
    }

    /// `overwrite_changes`, default false.
    pub fn overwrite_changes(&self) -> bool {
        self.overwrite_changes.unwrap_or(false)
    }

    /// This folder's own peers; empty when absent.
    pub fn known_hosts(&self) -> &[String] {
        self.known_hosts.as_deref().unwrap_or_default()
    }
}

/// The namespace a directory is shared as: its last component.
pub(crate) fn namespace_of(dir: &Path) -> Result<NamespaceName, DirNameError> {
    let Some(last) = dir.file_name() else {
        return Err(DirNameError::NoName {
            dir: dir.to_path_buf(),
        });
    };
    let Some(last) = last.to_str() else {
        return Err(DirNameError::NotUtf8 {
            dir: dir.to_path_buf(),
        });
    };
    NamespaceName::new(last).map_err(|name| DirNameError::BadName {
        dir: dir.to_path_buf(),
        name,
    })
}

/// As JSON, with the secret replaced by `"<redacted>"`.
impl fmt::Debug for SharedFolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::error::debug_redacted(f, "SharedFolder", self)
    }
}

/// The secret as its string form, through `FromStr`/`Display` only, so that a bad secret's error
/// says which secret (its first characters) and why, at its line and key.
mod secret_as_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use shoal_core::secret::Secret;

    pub fn serialize<S: Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(secret)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<Secret>()
            .map_err(|why| serde::de::Error::custom(without_the_secret(&why.to_string(), &text)))
    }

    /// `SecretError` quotes what it was given, which in a config file is usually a real secret
    /// with a typo; errors end up in logs, so only its first characters are shown.
    fn without_the_secret(message: &str, text: &str) -> String {
        let quoted = |s: &str| format!("{s:?}");
        let mut message = message.to_owned();
        // SecretError shows up to 60 characters; replace the longest quoted prefix it contains.
        for n in (1..=text.chars().count().min(60)).rev() {
            let shown = quoted(&text.chars().take(n).collect::<String>());
            if let Some(at) = message.find(&shown) {
                message.replace_range(at..at + shown.len(), &quoted(&abbreviate(text)));
                break;
            }
        }
        message
    }

    /// The first characters of a (bad) secret: enough to tell which one is meant, not enough to
    /// leak one into a log if it is a real secret with a typo.
    fn abbreviate(text: &str) -> String {
        const SHOWN: usize = 6;
        if text.chars().count() <= SHOWN {
            text.to_owned()
        } else {
            let head: String = text.chars().take(SHOWN).collect();
            format!("{head}…")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_the_last_component_of_dir() {
        for (dir, want) in [
            ("/data/gitlab", "gitlab"),
            ("/data/gitlab/", "gitlab"),
            ("/data/./gitlab/.", "gitlab"),
            ("/x/y/z", "z"),
        ] {
            assert_eq!(
                namespace_of(Path::new(dir))
                    .map(|n| n.to_string())
                    .as_deref(),
                Ok(want)
            );
        }
    }

    #[test]
    fn dirs_that_name_no_namespace() {
        assert!(matches!(
            namespace_of(Path::new("/")),
            Err(DirNameError::NoName { .. })
        ));
        assert!(matches!(
            namespace_of(Path::new("/data/..")),
            Err(DirNameError::NoName { .. })
        ));
        assert!(matches!(
            namespace_of(Path::new("/data/.hidden")),
            Err(DirNameError::BadName { .. })
        ));
        assert!(matches!(
            namespace_of(Path::new("/data/bad\nname")),
            Err(DirNameError::BadName { .. })
        ));
    }
}
