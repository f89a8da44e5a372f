//! Where things are: the resolved paths and identities every command works with.
//!
//! The precedence is defaults → config file → environment → command line. clap has already merged
//! the last two into [`Global`] (a flag beats its environment variable); this module adds the
//! defaults of btsync.docker. Settings that also live in the config file (ports, limits) are merged
//! with the file where they are used, since only some commands read the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Global;

/// The defaults of btsync.docker, kept so that existing deployments behave the same.
pub const DEFAULT_HOST_DATA_PATH: &str = "/mnt/resources";
pub const DEFAULT_DATA_PATH: &str = "/data";
pub const DEFAULT_PID_PATH: &str = "/var/run/btsync.pid";
pub const DEFAULT_CONFIG_INTERVAL_CHECK: u64 = 10;
pub const DEFAULT_DEBUG: &str = "btsync:ctl";
pub const DEFAULT_UNAME: &str = "btysnc";
pub const DEFAULT_UID: u32 = 1000;
pub const DEFAULT_GID: u32 = 1000;

/// The name of the control socket inside the state directory.
pub const CONTROL_SOCKET: &str = "control.sock";

#[derive(Debug, Clone)]
pub struct Settings {
    pub host_data_path: PathBuf,
    pub data_path: PathBuf,
    pub config_path: PathBuf,
    pub pid_path: PathBuf,
    pub state_path: PathBuf,
    pub config_interval: Duration,
    pub debug: String,
    pub uname: String,
    pub uid: u32,
    pub gid: u32,
    pub global: Global,
}

impl Settings {
    pub fn resolve(global: &Global) -> Settings {
        let data_path = global
            .data_path
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_PATH.into());
        let state_path = global
            .state_path
            .clone()
            .unwrap_or_else(|| data_path.join(".shoal"));
        let pid_path = global
            .pid_path
            .clone()
            .unwrap_or_else(|| default_pid_path(&state_path));
        Settings {
            host_data_path: global
                .host_data_path
                .clone()
                .unwrap_or_else(|| DEFAULT_HOST_DATA_PATH.into()),
            config_path: global
                .config_path
                .clone()
                .unwrap_or_else(|| data_path.join("btsync.conf")),
            config_interval: Duration::from_secs(
                global
                    .config_interval_check
                    .unwrap_or(DEFAULT_CONFIG_INTERVAL_CHECK)
                    .max(1),
            ),
            debug: global.debug.clone().unwrap_or_else(|| DEFAULT_DEBUG.into()),
            uname: global.uname.clone().unwrap_or_else(|| DEFAULT_UNAME.into()),
            uid: global.uid.unwrap_or(DEFAULT_UID),
            gid: global.gid.unwrap_or(DEFAULT_GID),
            data_path,
            state_path,
            pid_path,
            global: global.clone(),
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_path.join(CONTROL_SOCKET)
    }

    /// Where namespace `name` lives inside this process's view of the disk.
    pub fn namespace_dir(&self, name: &str) -> PathBuf {
        self.data_path.join(name)
    }
}

/// btsync.docker's `/var/run/btsync.pid` when we may write there (root, in a container); a user
/// running shoal by hand gets the PID file in the state directory instead of a permission error.
fn default_pid_path(state_path: &Path) -> PathBuf {
    let run = Path::new(DEFAULT_PID_PATH);
    let writable = run
        .parent()
        .is_some_and(|dir| nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok());
    if writable {
        run.to_path_buf()
    } else {
        state_path.join("shoal.pid")
    }
}
