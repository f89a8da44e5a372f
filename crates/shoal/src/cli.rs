//! The command line, defined once: parsing, `--help` and shell completions all come from these types.
//!
//! The shape follows btsync.docker: the container's arguments are `ctl …`, `bootstrap SECRET NS…` or
//! nothing (run the daemon), and the binary invoked as `ctl` is `shoal ctl`. Every global option of the
//! old ctl is accepted, with the same environment variables and defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Peer-to-peer folder sync for container clusters (a drop-in for btsync.docker).",
    long_about = "Peer-to-peer folder sync for container clusters.\n\n\
        One daemon per node keeps each namespace (a folder under DATA_PATH) identical on every node \
        that holds its secret. With no command, shoal runs the daemon, as the btsync.docker image did.",
    after_help = "Exit codes: 0 success; 1 `ctl has`: absent, or an operational failure (I/O, daemon \
        unreachable, another daemon running); 2 bad input (usage, names, secrets, config file); 3 \
        `ctl status`: daemon not running."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node: sync every configured namespace, serve ctl on a unix socket.
    Daemon,
    /// Manage namespaces (btsync.docker's ctl). Also available as the `ctl` program.
    Ctl {
        #[command(subcommand)]
        command: Ctl,
    },
    /// Add the namespace(s) with SECRET (idempotent), then run the daemon. The container form.
    Bootstrap {
        /// The read-write (A…) or read-only (B…) secret of the namespaces.
        secret: String,
        /// The namespaces to add.
        #[arg(required = true)]
        namespaces: Vec<String>,
    },
    /// Generate a new read-write secret, or show what derives from a given one.
    Secret {
        /// Show the read-only secret and share ID derived from this secret instead of generating one.
        #[arg(long, value_name = "SECRET")]
        show: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// btsync.docker's ctl commands, plus the extras a user expects.
#[derive(Debug, Subcommand)]
pub enum Ctl {
    /// Write the config file if it is missing; an existing one is kept as it is.
    Init,
    /// Add namespace NS at DATA_PATH/NS (the directory is created). A secret is generated if none is given.
    Add {
        /// The namespace's secret: read-write (A…, 33 characters) or read-only (B…, 53 characters).
        #[arg(long)]
        secret: Option<String>,
        /// The namespace name: one directory name, no '/', not starting with '.'.
        namespace: String,
    },
    /// Remove namespace NS from the config. Its files stay on disk.
    Del { namespace: String },
    /// Print the path of namespace NS: on the host (default) or inside the container.
    Path {
        #[arg(long, value_enum, default_value_t = Scope::Host)]
        scope: Scope,
        namespace: String,
    },
    /// Exit 0 if namespace NS exists, 1 if not; prints nothing.
    Has { namespace: String },
    /// Print the namespaces, space-separated, on one line.
    List,
    /// Show the read-write and read-only secrets and the share ID of namespace NS.
    Secret { namespace: String },
    /// Is the daemon up? Its namespaces, peers and state.
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    Host,
    Container,
}

/// Options accepted everywhere, before or after the command, as btsync.docker's ctl did.
///
/// Each is `Option` so that the precedence defaults → config file → environment → command line can be
/// applied in one place (`settings.rs`); clap fills them from the flag, then from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct Global {
    /// Device name shown to peers, written by `ctl init` [default: the host name].
    #[arg(long, global = true, value_name = "NAME")]
    pub name: Option<String>,
    /// TCP port for peers [env: SHOAL_SYNC_PORT] [default: the config's listening_port, 55555].
    /// 0 lets the daemon pick a free port (shown by `ctl status`).
    #[arg(
        long,
        global = true,
        env = "SHOAL_SYNC_PORT",
        value_name = "PORT",
        hide_env = true
    )]
    pub sync_port: Option<u16>,
    /// Port of the web UI and HTTP API [default: 8888].
    #[arg(long, global = true, value_name = "PORT")]
    pub web_port: Option<u16>,
    /// Web UI login name written by `ctl init`.
    #[arg(long, global = true, value_name = "USER")]
    pub web_user: Option<String>,
    /// Web UI password written by `ctl init`.
    #[arg(long, global = true, value_name = "PASS")]
    pub web_pass: Option<String>,
    /// Download limit in kB/s, 0 = unlimited [default: 0].
    #[arg(long, global = true, value_name = "KBPS")]
    pub download_limit: Option<u64>,
    /// Upload limit in kB/s, 0 = unlimited [default: 0].
    #[arg(long, global = true, value_name = "KBPS")]
    pub upload_limit: Option<u64>,
    /// Accepted for btsync.docker compatibility; shoal never checks for updates.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub auto_update: Option<bool>,
    /// Accepted for btsync.docker compatibility; shoal does no UPnP.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub use_upnp: Option<bool>,
    /// Where DATA_PATH is on the host, for `ctl path --scope=host` [env: HOST_DATA_PATH] [default: /mnt/resources].
    #[arg(
        long,
        global = true,
        env = "HOST_DATA_PATH",
        value_name = "DIR",
        hide_env = true
    )]
    pub host_data_path: Option<PathBuf>,
    /// Directory holding the namespaces [env: DATA_PATH] [default: /data].
    #[arg(
        long,
        global = true,
        env = "DATA_PATH",
        value_name = "DIR",
        hide_env = true
    )]
    pub data_path: Option<PathBuf>,
    /// The config file [env: CONFIG_PATH] [default: DATA_PATH/btsync.conf].
    #[arg(
        long,
        global = true,
        env = "CONFIG_PATH",
        value_name = "FILE",
        hide_env = true
    )]
    pub config_path: Option<PathBuf>,
    /// The daemon's PID file [env: PID_PATH] [default: /var/run/btsync.pid, or STATE_PATH/shoal.pid when
    /// not root and /var/run is not writable].
    #[arg(
        long,
        global = true,
        env = "PID_PATH",
        value_name = "FILE",
        hide_env = true
    )]
    pub pid_path: Option<PathBuf>,
    /// Seconds between checks of the config file for changes [env: CONFIG_INTERVAL_CHECK] [default: 10].
    #[arg(
        long,
        global = true,
        env = "CONFIG_INTERVAL_CHECK",
        value_name = "SECS",
        hide_env = true
    )]
    pub config_interval_check: Option<u64>,
    /// Node state (index, identity, control socket), never inside a namespace [env: STATE_PATH]
    /// [default: DATA_PATH/.shoal].
    #[arg(
        long,
        global = true,
        env = "STATE_PATH",
        value_name = "DIR",
        hide_env = true
    )]
    pub state_path: Option<PathBuf>,
    /// Peers to connect to, `host:port` separated by commas or spaces [env: SHOAL_PEERS]. DNS names
    /// are re-resolved every minute and every address they resolve to is dialed, so a Docker
    /// service name or a Kubernetes headless service reaches every node. One reachable peer is
    /// enough: peers tell each other who else shares a namespace.
    #[arg(
        long,
        global = true,
        env = "SHOAL_PEERS",
        value_name = "HOSTS",
        hide_env = true
    )]
    pub peers: Option<String>,
    /// Address the daemon accepts peers on [env: SHOAL_LISTEN] [default: 0.0.0.0, on the sync
    /// port]. `none` accepts no connections (the node only dials out).
    #[arg(
        long,
        global = true,
        env = "SHOAL_LISTEN",
        value_name = "IP",
        hide_env = true
    )]
    pub listen: Option<String>,
    /// LAN discovery by multicast for namespaces with `search_lan` (the default) [env: SHOAL_LAN]
    /// [default: on]. `off` switches it off for the whole node; an IPv4 address announces on that
    /// interface only. Announcements use 239.192.83.72:55556 with TTL 1: they never leave the LAN.
    #[arg(
        long,
        global = true,
        env = "SHOAL_LAN",
        value_name = "on|off|IP",
        hide_env = true
    )]
    pub lan: Option<String>,
    /// The NFS server: `on` (default) or `off`/`0` [env: NFS]. Each namespace is exported at the
    /// export root: `mount -t nfs -o vers=3,tcp,port=2049,mountport=2049,nolock node:/NS /mnt`.
    #[arg(
        long,
        global = true,
        env = "NFS",
        value_name = "on|off",
        hide_env = true
    )]
    pub nfs: Option<String>,
    /// TCP port of the NFS server; MOUNT and portmap answer on the same port [env: NFS_PORT]
    /// [default: 2049].
    #[arg(
        long,
        global = true,
        env = "NFS_PORT",
        value_name = "PORT",
        hide_env = true
    )]
    pub nfs_port: Option<u16>,
    /// IPv4 networks allowed to use NFS, separated by commas [env: NFS_ALLOW] [default: private,
    /// i.e. 127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10]. `any` allows
    /// every address: only behind a firewall. Other clients are refused (and logged).
    #[arg(
        long,
        global = true,
        env = "NFS_ALLOW",
        value_name = "NETWORKS",
        hide_env = true
    )]
    pub nfs_allow: Option<String>,
    /// Debug log filter, as btsync.docker: e.g. `btsync:ctl`, `shoal:*`, `shoal:daemon,-shoal:ctl`
    /// [env: DEBUG] [default: btsync:ctl]. RUST_LOG, when set, takes precedence.
    #[arg(
        long,
        global = true,
        env = "DEBUG",
        value_name = "FILTER",
        hide_env = true
    )]
    pub debug: Option<String>,
    /// User name the daemon runs as [env: UNAME] [default: btysnc].
    #[arg(
        long,
        global = true,
        env = "UNAME",
        value_name = "NAME",
        hide_env = true
    )]
    pub uname: Option<String>,
    /// User id the daemon drops to when started as root [env: UID] [default: 1000].
    #[arg(long, global = true, env = "UID", value_name = "UID", hide_env = true)]
    pub uid: Option<u32>,
    /// Group id the daemon drops to when started as root [env: GID] [default: 1000].
    #[arg(long, global = true, env = "GID", value_name = "GID", hide_env = true)]
    pub gid: Option<u32>,
    /// Print machine-readable JSON instead of text (list, path, secret, status).
    #[arg(long, global = true)]
    pub json: bool,
}
