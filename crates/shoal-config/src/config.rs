//! The top level of the file: [`Config`], and the namespace operations `ctl` performs on it.
//!
//! Fields are in the order btsync.docker's `ctl` wrote them, then shoal's own keys, then the
//! BitTorrent Sync keys kept only for compatibility, so a saved file reads like the one it replaced.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_core::name::NamespaceName;
use shoal_core::secret::Secret;

use crate::error::ConfigError;
use crate::folder::SharedFolder;
use crate::webui::WebUi;

/// The TCP port peers connect to when `listening_port` is absent: btsync.docker's `--sync-port`.
pub const DEFAULT_LISTENING_PORT: u16 = 55555;

/// How often every namespace is rescanned in full when `folder_rescan_interval` is absent.
pub const DEFAULT_FOLDER_RESCAN_INTERVAL: Duration = Duration::from_secs(600);

/// The days a file replaced or deleted by a peer stays in `.sync/Archive` when `sync_trash_ttl` is
/// absent (BitTorrent Sync's default).
pub const DEFAULT_SYNC_TRASH_TTL_DAYS: u64 = 30;

/// The whole config file.
///
/// Plain fields are keys shoal needs: absent, they take their default, and are written on save.
/// `Option` fields are absent unless the file has them, and stay absent on save.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name this node shows its peers. Default: empty, meaning the host name; `ctl init` writes
    /// `--name` or the host name.
    #[serde(default)]
    pub device_name: String,
    /// TCP port peers connect to. Default 55555. 0 (BitTorrent Sync's "random port") is refused:
    /// peers could not find a node whose port changes.
    #[serde(default = "default_listening_port")]
    pub listening_port: u16,
    /// Compatibility only: shoal never checks for updates. btsync.docker wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_for_updates: Option<bool>,
    /// Compatibility only: shoal does no UPnP port mapping. btsync.docker wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_upnp: Option<bool>,
    /// Download limit in kB/s over all namespaces; 0 (the default) is unlimited.
    #[serde(default)]
    pub download_limit: u64,
    /// Upload limit in kB/s over all namespaces; 0 (the default) is unlimited.
    #[serde(default)]
    pub upload_limit: u64,
    /// Compatibility only: BitTorrent Sync's own state directory. shoal keeps its state in
    /// `STATE_PATH` (default `$DATA_PATH/.shoal`). `ctl init` writes `DATA_PATH`, as btsync.docker did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_path: Option<PathBuf>,
    /// Informational: the PID file written by `ctl init` from `PID_PATH`. The daemon writes its PID
    /// to `PID_PATH` (environment or `--pid-path`), not to this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// The web UI and HTTP API: address and credentials. Default: listen on `0.0.0.0:8888`.
    #[serde(default, deserialize_with = "crate::object::object")]
    pub webui: WebUi,
    /// The namespaces this node shares, in file order. Default: none.
    #[serde(default, deserialize_with = "crate::object::objects")]
    pub shared_folders: Vec<SharedFolder>,

    // ---- shoal's own keys (folder_rescan_interval is also a BitTorrent Sync key) ----
    /// Seconds between full rescans of every namespace (the watcher catches changes in between).
    /// Default 600; 0 is refused. Read it with [`Config::folder_rescan_interval`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_rescan_interval: Option<u64>,
    /// Peers (`host:port`, or `host` for port 55555) tried for every namespace, in addition to each
    /// folder's own `known_hosts`. DNS names are re-resolved. Default: none.
    /// Read it with [`Config::known_hosts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<Vec<String>>,
    /// Days a file replaced or deleted by a peer stays in `.sync/Archive`. Default 30.
    /// Read it with [`Config::sync_trash_ttl`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_trash_ttl: Option<u64>,

    // ---- BitTorrent Sync keys kept for compatibility; shoal does not act on them ----
    /// Compatibility only (shoal has no GUI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_gui: Option<bool>,
    /// Compatibility only: shoal encrypts every connection (TLS 1.3), on the LAN too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_encrypt_data: Option<bool>,
    /// Compatibility only: shoal always uses TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_use_tcp: Option<bool>,
    /// Compatibility only: whether the limits apply to LAN peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_local_peers: Option<bool>,
    /// Compatibility only: BitTorrent Sync's port announced to peers behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_port: Option<u16>,
    /// Compatibility only: BitTorrent Sync's low I/O priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_low_priority: Option<bool>,
    /// Compatibility only: BitTorrent Sync's config re-read interval; shoal uses
    /// `CONFIG_INTERVAL_CHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_refresh_interval: Option<u64>,
    /// Compatibility only (MB): BitTorrent Sync's limit on archived versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size_for_versioning: Option<u64>,
    /// Compatibility only (MB): BitTorrent Sync's limit on patching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size_diff_for_patching: Option<u64>,
    /// Compatibility only (s): BitTorrent Sync's allowed clock difference between peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_max_time_diff: Option<u64>,
    /// Compatibility only (days): when BitTorrent Sync forgot an unseen peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_expiration_days: Option<u64>,
    /// Compatibility only (MB): BitTorrent Sync's log size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_size: Option<u64>,
    /// Compatibility only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiler_enabled: Option<bool>,
    /// Compatibility only (bytes): socket receive buffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recv_buf_size: Option<u64>,
    /// Compatibility only (bytes): socket send buffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_buf_size: Option<u64>,
    /// Compatibility only: BitTorrent Sync 1.x put the web UI's folder browser root here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_root: Option<String>,
    /// Compatibility only: BitTorrent Sync 1.x put `directory_root_policy` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_root_policy: Option<String>,
    /// Compatibility only: `socks4`, `socks5` or `http_connect`; shoal uses no proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_type: Option<String>,
    /// Compatibility only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_addr: Option<String>,
    /// Compatibility only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_port: Option<u16>,
    /// Compatibility only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_auth: Option<bool>,
    /// Compatibility only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_username: Option<String>,
    /// Compatibility only. Never shown by `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_password: Option<String>,
}

fn default_listening_port() -> u16 {
    DEFAULT_LISTENING_PORT
}

impl Config {
    /// The config `ctl init` writes: no namespaces, peers on 55555, the web UI on `0.0.0.0:8888`
    /// with no credentials (the daemon generates a password on first start), and btsync.docker's
    /// `check_for_updates`/`use_upnp` keys set to `false`, which is what shoal does.
    pub fn new_default(device_name: String, storage_path: PathBuf) -> Config {
        Config {
            device_name,
            check_for_updates: Some(false),
            use_upnp: Some(false),
            storage_path: Some(storage_path),
            ..Config::empty()
        }
    }

    /// Every key at its default: what an empty object `{}` in the file means.
    fn empty() -> Config {
        Config {
            device_name: String::new(),
            listening_port: DEFAULT_LISTENING_PORT,
            check_for_updates: None,
            use_upnp: None,
            download_limit: 0,
            upload_limit: 0,
            storage_path: None,
            pid_file: None,
            webui: WebUi::default(),
            shared_folders: Vec::new(),
            folder_rescan_interval: None,
            known_hosts: None,
            sync_trash_ttl: None,
            use_gui: None,
            lan_encrypt_data: None,
            lan_use_tcp: None,
            rate_limit_local_peers: None,
            external_port: None,
            disk_low_priority: None,
            config_refresh_interval: None,
            max_file_size_for_versioning: None,
            max_file_size_diff_for_patching: None,
            sync_max_time_diff: None,
            peer_expiration_days: None,
            log_size: None,
            profiler_enabled: None,
            recv_buf_size: None,
            send_buf_size: None,
            directory_root: None,
            directory_root_policy: None,
            proxy_type: None,
            proxy_addr: None,
            proxy_port: None,
            proxy_auth: None,
            proxy_username: None,
            proxy_password: None,
        }
    }

    /// Seconds between full rescans of each namespace: `folder_rescan_interval`, default 600.
    pub fn folder_rescan_interval(&self) -> Duration {
        self.folder_rescan_interval
            .map_or(DEFAULT_FOLDER_RESCAN_INTERVAL, Duration::from_secs)
    }

    /// The global peer list (`known_hosts`); empty when absent.
    pub fn known_hosts(&self) -> &[String] {
        self.known_hosts.as_deref().unwrap_or_default()
    }

    /// How long archived files are kept: `sync_trash_ttl` days, default 30.
    pub fn sync_trash_ttl(&self) -> Duration {
        let days = self.sync_trash_ttl.unwrap_or(DEFAULT_SYNC_TRASH_TTL_DAYS);
        Duration::from_secs(days.saturating_mul(24 * 60 * 60))
    }

    /// The folder shared as namespace `name`, if any.
    pub fn folder(&self, name: &NamespaceName) -> Option<&SharedFolder> {
        self.position(name).map(|i| &self.shared_folders[i])
    }

    /// The namespaces, in file order. A folder whose `dir` names no valid namespace is left out
    /// (a loaded config has none: [`Config::parse`] refuses it).
    pub fn namespaces(&self) -> Vec<NamespaceName> {
        self.shared_folders
            .iter()
            .filter_map(|f| f.namespace().ok())
            .collect()
    }

    /// Adds namespace `name`, shared from `dir` with `secret`, with btsync.docker's folder options
    /// (relay, tracker, LAN search and archive all on).
    ///
    /// `dir` must be absolute and end in `name` (the namespace *is* the last component of `dir`),
    /// and neither the name nor the share may be in use already (a read-write secret and its
    /// read-only form are the same share).
    pub fn add_folder(
        &mut self,
        name: NamespaceName,
        secret: Secret,
        dir: PathBuf,
    ) -> Result<(), ConfigError> {
        if self.folder(&name).is_some() {
            return Err(ConfigError::AlreadyExists(name));
        }
        let folder = SharedFolder::new(secret, dir);
        if !folder.dir.is_absolute() || folder.namespace().as_ref() != Ok(&name) {
            return Err(ConfigError::DirMismatch {
                name,
                dir: folder.dir,
            });
        }
        let share = folder.secret.share_id();
        if let Some(other) = self
            .shared_folders
            .iter()
            .find(|f| f.secret.share_id() == share)
        {
            return Err(ConfigError::SecretInUse {
                name,
                used_by: other.dir.clone(),
            });
        }
        self.shared_folders.push(folder);
        Ok(())
    }

    /// Removes namespace `name` and returns its folder (its files are not touched).
    pub fn remove_folder(&mut self, name: &NamespaceName) -> Result<SharedFolder, ConfigError> {
        match self.position(name) {
            Some(i) => Ok(self.shared_folders.remove(i)),
            None => Err(ConfigError::NoSuchNamespace(name.clone())),
        }
    }

    fn position(&self, name: &NamespaceName) -> Option<usize> {
        self.shared_folders
            .iter()
            .position(|f| f.namespace().as_ref() == Ok(name))
    }

    /// The file as [`Config::save`] writes it: pretty JSON, two-space indent, ending in a newline.
    pub fn to_json_pretty(&self) -> serde_json::Result<String> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        Ok(text)
    }
}

/// Prints the config as its JSON, with secrets and passwords replaced by `"<redacted>"`: configs
/// end up in logs, secrets must not.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::error::debug_redacted(f, "Config", self)
    }
}

impl Default for Config {
    /// Every key at its default, as if the file were `{}`.
    fn default() -> Self {
        Config::empty()
    }
}
