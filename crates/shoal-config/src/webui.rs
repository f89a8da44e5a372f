//! The `webui` object: where the web UI and HTTP API listen, and who may log in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where the web UI and HTTP API listen when `webui.listen` is absent.
pub const DEFAULT_WEBUI_LISTEN: &str = "0.0.0.0:8888";

/// The `webui` object.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebUi {
    /// `address:port` the web UI and HTTP API listen on. Default `0.0.0.0:8888`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Login name. Default: none (the daemon then generates credentials on first start and prints
    /// them once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// Password in clear, as btsync.docker wrote it. Prefer `password_hash`. Never shown by `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Password hash (`crypt(3)` as BitTorrent Sync, or argon2 PHC as shoal writes); used instead of
    /// `password` when both are set. Never shown by `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Compatibility only: BitTorrent Sync 2.x's hash format. Never shown by `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash_unified: Option<String>,
    /// Compatibility only: BitTorrent Sync 2.x's hash salt. Never shown by `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash_salt_unified: Option<String>,
    /// Compatibility only: whether BitTorrent Sync accepted an empty password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_empty_password: Option<bool>,
    /// Compatibility only: BitTorrent Sync's HTTP API key. Never shown by `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Compatibility only: where BitTorrent Sync's folder browser started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_root: Option<String>,
    /// Compatibility only: `all` or `belowroot` (btsync.docker wrote `belowroot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_root_policy: Option<String>,
    /// Compatibility only: directories BitTorrent Sync's folder browser showed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir_whitelist: Option<Vec<String>>,
    /// Serve HTTPS only (requires `ssl_certificate` and `ssl_private_key`). Default: false.
    /// btsync.docker wrote `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_https: Option<bool>,
    /// PEM certificate chain for HTTPS. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_certificate: Option<String>,
    /// PEM private key for HTTPS. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_private_key: Option<String>,
}

fn default_listen() -> String {
    DEFAULT_WEBUI_LISTEN.to_owned()
}

impl Default for WebUi {
    /// Listen on `0.0.0.0:8888`, everything else absent.
    fn default() -> Self {
        WebUi {
            listen: default_listen(),
            login: None,
            password: None,
            password_hash: None,
            password_hash_unified: None,
            password_hash_salt_unified: None,
            allow_empty_password: None,
            api_key: None,
            directory_root: None,
            directory_root_policy: None,
            dir_whitelist: None,
            force_https: None,
            ssl_certificate: None,
            ssl_private_key: None,
        }
    }
}

/// As JSON, with passwords, hashes and the API key replaced by `"<redacted>"`.
impl fmt::Debug for WebUi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::error::debug_redacted(f, "WebUi", self)
    }
}
