//! Reading the file: JSON → [`Config`], then the checks serde cannot express.
//!
//! Parsing goes through `serde_path_to_error`, so a type error deep in the file still says which
//! key it is at; serde_json supplies the line and column. After parsing, [`Config::validate`]
//! refuses what is well-formed but wrong, naming the key.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use shoal_core::name::NamespaceName;
use shoal_core::secret::ShareId;

use crate::config::Config;
use crate::error::{ConfigError, parse_error, syntax_error};
use crate::folder::namespace_of;
use crate::object::ObjectOnly;

/// The largest file [`Config::load`] reads. A config with ten thousand namespaces is about 2 MB;
/// anything larger is not a config file (or is `/dev/zero`), and reading it would only use memory.
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

impl Config {
    /// Reads and checks the file at `path`. A missing file is [`ConfigError::NotFound`].
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(ConfigError::io("opening", path, e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ConfigError::io("reading", path, e))?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_FILE_SIZE,
            });
        }
        Config::parse_bytes(&bytes, path)
    }

    /// Parses and checks `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::parse_bytes(text.as_bytes(), path)
    }

    /// Like [`Config::parse`], for bytes that may not be UTF-8 (reported as an error at its line).
    pub fn parse_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let ObjectOnly(config): ObjectOnly<Config> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| parse_error(path, bytes, e))?;
        // Trailing text after the object (`{…} x`, or a second object) is a mistake too.
        de.end()
            .map_err(|e| syntax_error(path, bytes, ".".to_owned(), e))?;
        config.validate(path)?;
        Ok(config)
    }

    /// The checks after parsing: each error names `path` and the key at fault. [`Config::save`]
    /// runs them too, so no invalid file is ever written.
    pub fn validate(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if self.listening_port == 0 {
            return Err(invalid(
                "listening_port".into(),
                "0 would pick a random port, where peers cannot find this node; use a fixed port \
                 such as 55555"
                    .into(),
            ));
        }
        if self.folder_rescan_interval == Some(0) {
            return Err(invalid(
                "folder_rescan_interval".into(),
                "must be at least 1 second".into(),
            ));
        }
        check_address(&self.webui.listen).map_err(|why| invalid("webui.listen".into(), why))?;
        check_hosts(self.known_hosts(), "known_hosts").map_err(|(k, why)| invalid(k, why))?;

        let mut names: HashMap<NamespaceName, usize> = HashMap::new();
        let mut shares: HashMap<ShareId, usize> = HashMap::new();
        for (i, folder) in self.shared_folders.iter().enumerate() {
            let key = |field: &str| format!("shared_folders[{i}].{field}");
            if !folder.dir.is_absolute() {
                return Err(invalid(
                    key("dir"),
                    format!("{:?} is not an absolute path", folder.dir),
                ));
            }
            let name = namespace_of(&folder.dir).map_err(|e| invalid(key("dir"), e.to_string()))?;
            if let Some(&j) = names.get(&name) {
                let other = &self.shared_folders[j];
                let message = if other.dir == folder.dir {
                    format!("{:?} is already shared by shared_folders[{j}]", folder.dir)
                } else {
                    format!(
                        "namespace {name} is already shared_folders[{j}] ({}); namespaces are \
                         named after the last component of dir and must be unique",
                        other.dir.display()
                    )
                };
                return Err(invalid(key("dir"), message));
            }
            // A read-write secret and its read-only form are one share: peers could not tell the
            // two folders apart. (Deriving a share ID costs an Ed25519 key derivation: once each.)
            let share = folder.secret.share_id();
            if let Some(&j) = shares.get(&share) {
                return Err(invalid(
                    key("secret"),
                    format!(
                        "the same secret as shared_folders[{j}] (or its read-only form); each \
                         namespace needs its own"
                    ),
                ));
            }
            shares.insert(share, i);
            check_hosts(folder.known_hosts(), &key("known_hosts"))
                .map_err(|(k, why)| invalid(k, why))?;
            names.insert(name, i);
        }
        Ok(())
    }
}

/// `host:port` with a numeric port (the host may be empty, a name, an IPv4 or a `[IPv6]` address).
fn check_address(address: &str) -> Result<(), String> {
    let port = address.rsplit_once(':').map(|(_, port)| port);
    match port.map(str::parse::<u16>) {
        Some(Ok(_)) => Ok(()),
        _ => Err(format!(
            "{address:?} is not address:port (such as \"0.0.0.0:8888\")"
        )),
    }
}

/// Peers are `host` or `host:port`: no spaces, nothing empty.
fn check_hosts(hosts: &[String], key: &str) -> Result<(), (String, String)> {
    for (i, host) in hosts.iter().enumerate() {
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err((
                format!("{key}[{i}]"),
                format!("{host:?} is not host or host:port"),
            ));
        }
    }
    Ok(())
}
