//! The namespace operations behind `ctl`, shared by both paths: `ctl` runs them itself when no
//! daemon is running, and the daemon runs them when `ctl` asks it over the control socket. Either
//! way the config file is edited under its lock and replaced atomically (see `shoal_config`), so
//! concurrent `ctl`s and the daemon never lose each other's changes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use shoal_config::{Config, ConfigError};
use shoal_core::name::NamespaceName;
use shoal_core::secret::{ReadWriteSecret, Secret};

use crate::error::user_error;
use crate::settings::Settings;

pub fn parse_name(name: &str) -> anyhow::Result<NamespaceName> {
    NamespaceName::new(name).map_err(|e| user_error(e.to_string()))
}

pub fn parse_secret(secret: &str) -> anyhow::Result<Secret> {
    secret
        .parse::<Secret>()
        .map_err(|e| user_error(e.to_string()))
}

/// The config a new node starts with: btsync.docker's `ctl init`, with the global options applied.
pub fn new_config(settings: &Settings) -> Config {
    let g = &settings.global;
    let mut config = Config::new_default(
        g.name.clone().unwrap_or_else(default_device_name),
        settings.data_path.clone(),
    );
    // Port 0 ("any free port") only means something to a running daemon; the file keeps its default.
    if let Some(port) = g.sync_port.filter(|&p| p != 0) {
        config.listening_port = port;
    }
    if let Some(port) = g.web_port {
        config.webui.listen = format!("0.0.0.0:{port}");
    }
    if g.web_user.is_some() {
        config.webui.login = g.web_user.clone();
    }
    if g.web_pass.is_some() {
        config.webui.password = g.web_pass.clone();
    }
    if let Some(limit) = g.download_limit {
        config.download_limit = limit;
    }
    if let Some(limit) = g.upload_limit {
        config.upload_limit = limit;
    }
    config.check_for_updates = g.auto_update.or(Some(false));
    config.use_upnp = g.use_upnp.or(Some(false));
    config.pid_file = Some(settings.pid_path.clone());
    config
}

pub fn default_device_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shoal".to_owned())
}

/// Loads the config; a missing file is a node with no namespaces yet (as btsync.docker's ctl did).
pub fn load(settings: &Settings) -> anyhow::Result<Config> {
    match Config::load(&settings.config_path) {
        Ok(config) => Ok(config),
        Err(ConfigError::NotFound { .. }) => Ok(new_config(settings)),
        Err(e) => Err(e.into()),
    }
}

/// `ctl init`: writes the config file if it is missing. Returns whether it was created.
pub fn init(settings: &Settings) -> anyhow::Result<bool> {
    if let Some(dir) = settings.config_path.parent() {
        create_dir_for_daemon(dir, settings)?;
    }
    let created = shoal_config::init(&settings.config_path, || new_config(settings))?;
    if created {
        give_to_daemon_user(&settings.config_path, settings)?;
    }
    Ok(created)
}

#[derive(Debug)]
pub struct Added {
    pub name: NamespaceName,
    pub dir: PathBuf,
    /// False when the namespace was already there with the same secret (bootstrap on restart).
    pub created: bool,
}

/// `ctl add`: the namespace at `$DATA_PATH/NS` with `secret` (or a new one).
///
/// With `idempotent`, an existing namespace with the same secret is success (what `bootstrap` needs
/// when a container restarts); otherwise adding an existing name is an error.
pub fn add(
    settings: &Settings,
    name: &str,
    secret: Option<&str>,
    idempotent: bool,
) -> anyhow::Result<Added> {
    let name = parse_name(name)?;
    let secret = match secret {
        Some(s) => parse_secret(s)?,
        None => Secret::ReadWrite(ReadWriteSecret::generate().context("generating a secret")?),
    };
    let dir = settings.namespace_dir(name.as_str());
    init(settings)?;
    create_dir_for_daemon(&dir, settings)?;
    // `.sync/` marks a namespace directory as ours: the daemon refuses to sync a directory that
    // vanished (an unmounted volume must never look like "everything was deleted").
    create_dir_for_daemon(&dir.join(".sync"), settings)?;
    let created = shoal_config::edit(&settings.config_path, |config: &mut Config| {
        if let Some(existing) = config.folder(&name) {
            if idempotent && existing.secret == secret {
                return Ok(false);
            }
            let why = if idempotent {
                "with a different secret"
            } else {
                "already"
            };
            return Err(user_error(format!(
                "namespace {name} {why} exists in {} (remove it first with `ctl del {name}`)",
                settings.config_path.display()
            )));
        }
        config
            .add_folder(name.clone(), secret.clone(), dir.clone())
            .map_err(|e| user_error(e.to_string()))?;
        Ok(true)
    })?;
    Ok(Added { name, dir, created })
}

/// `ctl del`: removes the namespace from the config; its files stay on disk.
pub fn del(settings: &Settings, name: &str) -> anyhow::Result<PathBuf> {
    let name = parse_name(name)?;
    let removed = shoal_config::edit(&settings.config_path, |config: &mut Config| {
        config
            .remove_folder(&name)
            .map_err(|_| user_error(no_such_namespace(&name, settings)))
    });
    match removed {
        Ok(folder) => Ok(folder.dir),
        Err(e) if is_not_found(&e) => Err(user_error(no_such_namespace(&name, settings))),
        Err(e) => Err(e),
    }
}

pub fn no_such_namespace(name: &NamespaceName, settings: &Settings) -> String {
    format!(
        "no namespace {name} in {} (see `ctl list`)",
        settings.config_path.display()
    )
}

fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(
            c.downcast_ref::<ConfigError>(),
            Some(ConfigError::NotFound { .. })
        )
    })
}

/// Creates `dir` (and parents); when we are root and the daemon runs as another user, the new
/// directory is given to that user so the daemon can write in it.
pub fn create_dir_for_daemon(dir: &Path, settings: &Settings) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    give_to_daemon_user(dir, settings)
}

pub fn give_to_daemon_user(path: &Path, settings: &Settings) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() && settings.uid != 0 {
        std::os::unix::fs::chown(path, Some(settings.uid), Some(settings.gid)).with_context(
            || {
                format!(
                    "giving {} to uid {} gid {}",
                    path.display(),
                    settings.uid,
                    settings.gid
                )
            },
        )?;
    }
    Ok(())
}
