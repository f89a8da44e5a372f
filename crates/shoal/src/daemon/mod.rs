//! `shoal daemon`: the node's process.
//!
//! Start-up runs in a fixed order, each step for a reason:
//! 1. load (or create) the config, so a broken file stops us with its line and key before anything else;
//! 2. take the state directory's lock, so a second daemon on the same state is refused;
//! 3. bind the control socket and write the PID file — while still root, so both can be handed to
//!    the daemon's user;
//! 4. drop to `UID`/`GID` when started as root — before any thread exists, so every thread runs as
//!    that user;
//! 5. start the runtime: the supervisor (one actor owning the running namespaces), the control
//!    server, the config-file poller and the signal handler.
//!
//! Shutdown (SIGTERM, SIGINT) cancels everything through one `watch` channel, waits for the tasks
//! with a deadline well under the 5 s a container engine gives, then removes the socket and PID file.

mod memory;
mod server;
mod supervisor;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::ops;
use crate::settings::Settings;

pub use supervisor::Supervisor;

/// How long shutdown may take before the remaining tasks are abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

pub fn run(settings: Settings) -> anyhow::Result<()> {
    ops::init(&settings)?;
    let config = shoal_config::Config::load(&settings.config_path)?;

    ops::create_dir_for_daemon(&settings.data_path, &settings)?;
    // The daemon's user must be able to create namespaces and replace the config file in
    // DATA_PATH (a Docker volume starts out owned by root). Only the directory itself changes
    // hands, never what is inside it.
    ops::give_to_daemon_user(&settings.data_path, &settings)?;
    ops::create_dir_for_daemon(&settings.state_path, &settings)?;
    std::fs::set_permissions(&settings.state_path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", settings.state_path.display()))?;
    let lock = lock_state(&settings)?;

    memory::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shoal")
        .build()
        .context("starting the async runtime")?;
    // Caught before the control socket exists: once `ctl` can reach the daemon, SIGTERM and SIGINT
    // stop it cleanly instead of killing it with the default action.
    let signals = {
        let _runtime = runtime.enter();
        Signals::new()?
    };

    let socket_path = settings.socket_path();
    // We hold the lock, so a socket file still there was left by a daemon that died.
    match std::fs::remove_file(&socket_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("removing stale {}", socket_path.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(&socket_path)
        .with_context(|| format!("binding the control socket {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    ops::give_to_daemon_user(&socket_path, &settings)?;
    let pid_file = PidFile::write(&settings)?;

    // Bound while still root, so that NFS_PORT may be below 1024 (2049) on a host too.
    let nfs = nfs_listen(&settings)?;
    drop_privileges(&settings)?;
    // Loaded (or created) as the daemon's user, so the key file belongs to it.
    let identity = shoal_net::NodeIdentity::load_or_create(&settings.state_path)
        .context("loading the node identity")?;
    info!(node = %identity.node_id(), "node identity");

    let result = runtime.block_on(serve(settings, config, listener, identity, signals, nfs));
    runtime.shutdown_timeout(Duration::from_millis(500));
    pid_file.remove();
    let _ = std::fs::remove_file(&socket_path);
    drop(lock);
    result
}

async fn serve(
    settings: Settings,
    config: shoal_config::Config,
    listener: std::os::unix::net::UnixListener,
    identity: shoal_net::NodeIdentity,
    signals: Signals,
    nfs: NfsListen,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let device = shoal_core::version::DeviceId::from_node_id(&identity.node_id().0);
    let peers_config = peers_config(&settings, &config, identity)?;
    let (peers, peers_task) = shoal_peers::Peers::start(peers_config, stop_rx.clone())
        .await
        .context("starting the peer listener (another program on the sync port? set --sync-port or listening_port)")?;
    if let Some(addr) = peers.local_addr() {
        info!(%addr, "accepting peers");
    }
    let (nfs, nfs_server) = start_nfs(nfs).await;
    let (supervisor, inbox) = mpsc::channel(64);
    let supervisor = supervisor::Handle::new(supervisor);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(
        Supervisor::new(settings.clone(), inbox, stop_rx.clone(), device, peers, nfs).run(config),
    );
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tasks.spawn(server::serve(
        listener,
        settings.clone(),
        supervisor.clone(),
        stop_rx.clone(),
    ));
    tasks.spawn(memory::trim_periodically(stop_rx.clone()));
    tasks.spawn(supervisor::poll_config(
        settings.clone(),
        supervisor.clone(),
        stop_rx.clone(),
    ));
    info!(
        pid = std::process::id(),
        config = %settings.config_path.display(),
        data = %settings.data_path.display(),
        "shoal daemon started"
    );

    signals.wait(&supervisor).await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                error!("a daemon task failed: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
        tasks.abort_all();
    }
    if let Some(server) = nfs_server {
        server.stop();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), peers_task).await;
    info!("stopped");
    Ok(())
}

/// Where to listen and whom to dial: `--listen`/`SHOAL_LISTEN` on the sync port (`--sync-port`, else
/// the config's `listening_port`), and the config's `known_hosts` plus `--peers`/`SHOAL_PEERS`.
fn peers_config(
    settings: &Settings,
    config: &shoal_config::Config,
    identity: shoal_net::NodeIdentity,
) -> anyhow::Result<shoal_peers::PeersConfig> {
    let port = settings.global.sync_port.unwrap_or(config.listening_port);
    let listen = match settings.global.listen.as_deref().map(str::trim) {
        Some("none") => None,
        None | Some("") => Some(std::net::SocketAddr::from(([0, 0, 0, 0], port))),
        Some(ip) => {
            let ip: std::net::IpAddr = ip.parse().map_err(|_| {
                crate::error::user_error(format!(
                    "SHOAL_LISTEN/--listen: {ip:?} is not an IP address (or `none`)"
                ))
            })?;
            Some(std::net::SocketAddr::new(ip, port))
        }
    };
    let mut static_peers: Vec<String> = config.known_hosts().to_vec();
    if let Some(list) = &settings.global.peers {
        static_peers.extend(
            list.split([',', ' ', '\n', '\t'])
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(shoal_peers::PeersConfig {
        identity,
        device_name: match config.device_name.as_str() {
            "" => crate::ops::default_device_name(),
            name => name.to_owned(),
        },
        listen,
        static_peers,
        resolve_interval: Duration::from_secs(60),
        lan: lan_config(settings.global.lan.as_deref())?,
    })
}

/// The NFS server's exports, filled by the supervisor, and its state for `ctl status`.
#[derive(Debug)]
pub struct Nfs {
    pub exports: std::sync::Arc<shoal_nfs::Exports>,
    pub status: serde_json::Value,
}

/// The NFS port as bound before privileges are dropped: off, bound (with the allowed networks),
/// or why it could not be bound.
#[derive(Debug)]
enum NfsListen {
    Off,
    Bound(std::net::TcpListener, Vec<shoal_nfs::Network>),
    Failed { port: u16, why: String },
}

/// Reads `NFS`, `NFS_PORT`, `NFS_ALLOW` and binds the port. A bad setting stops the daemon with its
/// reason; a port that cannot be bound does not: the node still syncs, and says why NFS is off.
fn nfs_listen(settings: &Settings) -> anyhow::Result<NfsListen> {
    match settings.global.nfs.as_deref().map(str::trim) {
        None | Some("") | Some("on") | Some("true") | Some("1") => {}
        Some("off") | Some("false") | Some("0") => return Ok(NfsListen::Off),
        Some(other) => {
            return Err(crate::error::user_error(format!(
                "NFS/--nfs: {other:?} is not on or off"
            )));
        }
    }
    let allow = match settings.global.nfs_allow.as_deref() {
        None => shoal_nfs::allow::private_networks(),
        Some(text) => shoal_nfs::allow::parse(text)
            .map_err(|e| crate::error::user_error(format!("NFS_ALLOW/--nfs-allow: {e}")))?,
    };
    let port = settings.global.nfs_port.unwrap_or(2049);
    Ok(
        match shoal_nfs::bind(std::net::Ipv4Addr::UNSPECIFIED, port) {
            Ok(listener) => NfsListen::Bound(listener, allow),
            Err(e) => {
                let why = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => format!(
                        "cannot listen on port {port}: {e} (ports below 1024 need root; set NFS_PORT, \
                     or NFS=0)"
                    ),
                    _ => format!("cannot listen on port {port}: {e} (set NFS_PORT, or NFS=0)"),
                };
                warn!("NFS is off: {why}");
                NfsListen::Failed { port, why }
            }
        },
    )
}

/// Starts the NFS server on the port [`nfs_listen`] bound.
async fn start_nfs(listen: NfsListen) -> (Nfs, Option<shoal_nfs::Server>) {
    let exports = std::sync::Arc::new(shoal_nfs::Exports::default());
    let off = |status| {
        (
            Nfs {
                exports: exports.clone(),
                status,
            },
            None,
        )
    };
    match listen {
        NfsListen::Off => off(serde_json::json!({ "state": "off" })),
        NfsListen::Failed { port, why } => {
            off(serde_json::json!({ "state": "error", "port": port, "error": why }))
        }
        NfsListen::Bound(listener, allow) => {
            let allowed: Vec<String> = allow.iter().map(ToString::to_string).collect();
            match shoal_nfs::serve(listener, &allow, exports.clone()).await {
                Ok(server) => {
                    let status = serde_json::json!({
                        "state": "serving", "port": server.port, "allow": allowed,
                    });
                    (Nfs { exports, status }, Some(server))
                }
                Err(e) => {
                    let why = format!("cannot start the NFS server: {e}");
                    warn!("NFS is off: {why}");
                    off(serde_json::json!({ "state": "error", "error": why }))
                }
            }
        }
    }
}

/// `--lan`/`SHOAL_LAN`: `on` (default), `off`, or the IPv4 address of the interface to use.
fn lan_config(value: Option<&str>) -> anyhow::Result<Option<shoal_peers::lan::LanConfig>> {
    let default = shoal_peers::lan::LanConfig::default();
    match value.map(str::trim) {
        None | Some("") | Some("on") | Some("true") | Some("1") => Ok(Some(default)),
        Some("off") | Some("false") | Some("0") => Ok(None),
        Some(ip) => {
            let interface: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                crate::error::user_error(format!(
                    "SHOAL_LAN/--lan: {ip:?} is not on, off or an IPv4 address"
                ))
            })?;
            Ok(Some(shoal_peers::lan::LanConfig {
                interface,
                ..default
            }))
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment this is created.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns on SIGTERM or SIGINT; SIGHUP re-reads the config file at once.
    async fn wait(mut self, supervisor: &supervisor::Handle) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    info!("SIGHUP: re-reading the config file");
                    if let Err(e) = supervisor.reload().await {
                        error!("{e:#}");
                    }
                }
            }
        }
    }
}

/// The state directory's lock, held for the daemon's life: one daemon per state directory.
fn lock_state(settings: &Settings) -> anyhow::Result<File> {
    let path = settings.state_path.join("daemon.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another shoal daemon (pid {}) is already running on {}",
                holder.trim(),
                settings.state_path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).context(format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    ops::give_to_daemon_user(&path, settings)?;
    Ok(file)
}

struct PidFile(PathBuf);

impl PidFile {
    fn write(settings: &Settings) -> anyhow::Result<PidFile> {
        let path = settings.pid_path.clone();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the PID file {}", path.display()))?;
        ops::give_to_daemon_user(&path, settings)?;
        Ok(PidFile(path))
    }

    /// Removes the PID file if it is still ours (a newer daemon may have taken the path over).
    fn remove(self) {
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Drops to `UID`/`GID` when started as root (as btsync.docker's s6-setuidgid did).
fn drop_privileges(settings: &Settings) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    if !nix::unistd::geteuid().is_root() || settings.uid == 0 {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(settings.uid), Gid::from_raw(settings.gid));
    setgroups(&[gid]).context("dropping supplementary groups")?;
    setgid(gid).with_context(|| format!("switching to gid {gid}"))?;
    setuid(uid).with_context(|| format!("switching to uid {uid}"))?;
    info!(uid = settings.uid, gid = settings.gid, user = %settings.uname, "dropped root privileges");
    check_reachable(&settings.data_path, settings)
}

/// After the drop, the data directory must still be usable; say how to fix it if not.
fn check_reachable(dir: &Path, settings: &Settings) -> anyhow::Result<()> {
    use nix::unistd::{AccessFlags, access};
    if access(
        dir,
        AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
    )
    .is_err()
    {
        bail!(
            "after dropping to uid {} gid {}, {} is not readable and writable: give it to that user, \
             or choose another with UID=… GID=… (or --uid/--gid; 0 keeps root)",
            settings.uid,
            settings.gid,
            dir.display()
        );
    }
    Ok(())
}
