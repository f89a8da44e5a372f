//! The supervisor: the one actor that owns the set of running namespaces.
//!
//! Everything that changes which namespaces run — a `ctl` request, the periodic look at the config
//! file, SIGHUP — sends a message to this actor's inbox and waits for its reply, so changes are applied
//! one at a time, in order, with no lock shared between tasks. Applying a config is a diff: namespaces
//! that appeared are started, those that disappeared are stopped, those whose secret or directory
//! changed are restarted; the others are not touched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use shoal_config::{Config, SharedFolder};
use shoal_core::chunk::Hash;
use shoal_core::name::NamespaceName;
use shoal_core::secret::Secret;
use shoal_core::version::DeviceId;
use shoal_index::Index;
use shoal_scan::{Folder, FolderOptions, Scanner};
use shoal_sync::puller::Fetching;
use shoal_sync::{ChunkSource, Puller, PullerConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::settings::Settings;

pub enum Command {
    /// Re-read the config file and apply it if it changed.
    Reload(oneshot::Sender<anyhow::Result<()>>),
    Status(oneshot::Sender<serde_json::Value>),
}

/// A cheap, cloneable way to talk to the supervisor.
#[derive(Clone, Debug)]
pub struct Handle(mpsc::Sender<Command>);

impl Handle {
    pub fn new(tx: mpsc::Sender<Command>) -> Handle {
        Handle(tx)
    }

    pub async fn reload(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Command::Reload(tx))
            .await
            .context("the daemon is shutting down")?;
        rx.await.context("the daemon is shutting down")?
    }

    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Command::Status(tx))
            .await
            .context("the daemon is shutting down")?;
        rx.await.context("the daemon is shutting down")
    }
}

#[derive(Debug)]
struct Running {
    folder: Folder,
    puller: Puller,
}

/// Chunks of one namespace, fetched through the peer layer.
struct PeerChunks {
    peers: shoal_peers::Peers,
    share: shoal_core::secret::ShareId,
}

impl ChunkSource for PeerChunks {
    fn fetch(&self, hash: Hash, sources: Vec<shoal_index::PeerKey>) -> Fetching {
        let peers = self.peers.clone();
        let share = self.share;
        Box::pin(async move {
            let sources = sources.into_iter().map(shoal_net::NodeId).collect();
            peers
                .fetch(share, hash, sources)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn fetch_near(
        &self,
        hash: Hash,
        sources: Vec<shoal_index::PeerKey>,
        near: Vec<u8>,
        len: u32,
    ) -> Fetching {
        let peers = self.peers.clone();
        let share = self.share;
        Box::pin(async move {
            let sources = sources.into_iter().map(shoal_net::NodeId).collect();
            peers
                .fetch_near(share, hash, sources, near, len)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn have(&self, hashes: Vec<Hash>) {
        self.peers.announce_blocking(self.share, hashes);
    }
}

/// One running namespace.
#[derive(Debug)]
struct Namespace {
    dir: PathBuf,
    secret: Secret,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Its folder thread keeps the index equal to the disk; its puller brings in peers' changes.
    Running(Box<Running>),
    /// The namespace cannot run; the message says why and what to do.
    Error(String),
}

#[derive(Debug)]
pub struct Supervisor {
    settings: Settings,
    inbox: mpsc::Receiver<Command>,
    stop: watch::Receiver<bool>,
    running: BTreeMap<NamespaceName, Namespace>,
    device_name: String,
    /// This node in version vectors.
    device: DeviceId,
    peers: shoal_peers::Peers,
    /// The NFS server's exports (each running namespace) and what `ctl status` says about it.
    nfs: crate::daemon::Nfs,
    /// The config file's bytes when last read, to apply only real changes and to report a broken
    /// file once rather than at every poll.
    last_seen: Option<Vec<u8>>,
    started: Instant,
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        inbox: mpsc::Receiver<Command>,
        stop: watch::Receiver<bool>,
        device: DeviceId,
        peers: shoal_peers::Peers,
        nfs: crate::daemon::Nfs,
    ) -> Self {
        Supervisor {
            settings,
            inbox,
            stop,
            running: BTreeMap::new(),
            device_name: String::new(),
            device,
            peers,
            nfs,
            last_seen: None,
            started: Instant::now(),
        }
    }

    pub async fn run(mut self, config: Config) {
        self.last_seen = std::fs::read(&self.settings.config_path).ok();
        self.apply(&config).await;
        loop {
            tokio::select! {
                _ = self.stop.changed() => break,
                command = self.inbox.recv() => match command {
                    None => break,
                    Some(Command::Reload(reply)) => { let _ = reply.send(self.reload().await); }
                    Some(Command::Status(reply)) => { let _ = reply.send(self.status().await); }
                },
            }
        }
        let names: Vec<NamespaceName> = self.running.keys().cloned().collect();
        for name in names {
            self.stop_namespace(&name).await;
        }
    }

    async fn reload(&mut self) -> anyhow::Result<()> {
        let path = &self.settings.config_path;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.last_seen.take().is_some() {
                    warn!(
                        "{} disappeared; keeping the namespaces that run",
                        path.display()
                    );
                }
                return Ok(());
            }
            Err(e) => return Err(e).context(format!("reading {}", path.display())),
        };
        if self.last_seen.as_ref() == Some(&bytes) {
            return Ok(());
        }
        self.last_seen = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        match Config::parse(&text, path) {
            Ok(config) => {
                info!("{} changed; applying it", path.display());
                self.apply(&config).await;
                Ok(())
            }
            Err(e) => {
                let e = anyhow::Error::new(e).context(
                    "the config file is invalid; the daemon keeps running the previous one",
                );
                error!("{e:#}");
                Err(e)
            }
        }
    }

    async fn apply(&mut self, config: &Config) {
        self.peers
            .set_limits(config.download_limit, config.upload_limit);
        self.device_name = match config.device_name.as_str() {
            "" => crate::ops::default_device_name(),
            name => name.to_owned(),
        };
        let mut wanted: BTreeMap<NamespaceName, &SharedFolder> = BTreeMap::new();
        for folder in &config.shared_folders {
            match folder.namespace() {
                Ok(name) => {
                    wanted.insert(name, folder);
                }
                Err(e) => error!("skipping shared folder {}: {e}", folder.dir.display()),
            }
        }
        let gone: Vec<NamespaceName> = self
            .running
            .iter()
            .filter(|(name, ns)| {
                wanted
                    .get(*name)
                    .is_none_or(|f| f.secret != ns.secret || f.dir != ns.dir)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.stop_namespace(&name).await;
        }
        let rescan = config.folder_rescan_interval();
        for (name, folder) in wanted {
            if !self.running.contains_key(&name) {
                self.start_namespace(name, folder, rescan, config.sync_trash_ttl())
                    .await;
            }
        }
    }

    async fn start_namespace(
        &mut self,
        name: NamespaceName,
        folder: &SharedFolder,
        rescan_interval: std::time::Duration,
        archive_keep: std::time::Duration,
    ) {
        let dir = folder.dir.clone();
        let started = prepare_dir(&dir).and_then(|()| {
            let index_path = self
                .settings
                .state_path
                .join("index")
                .join(format!("{name}.redb"));
            let index =
                Index::open(&index_path, &folder.secret.share_id()).map_err(|e| e.to_string())?;
            let scanner = Scanner::new(dir.clone(), Arc::new(index), self.device);
            let options = FolderOptions {
                rescan_interval,
                watch: true,
            };
            Folder::start(scanner, options, name.as_str())
                .map_err(|e| format!("cannot start the folder thread: {e}"))
        });
        let state = match started {
            Ok(running) => {
                self.peers
                    .add_share(shoal_peers::Share {
                        name: name.to_string(),
                        root: running.scanner().root().into(),
                        secret: folder.secret.clone(),
                        index: running.scanner().index().clone(),
                        known_hosts: folder.known_hosts().to_vec(),
                        search_lan: folder.search_lan(),
                    })
                    .await;
                let puller = Puller::start(PullerConfig {
                    name: name.to_string(),
                    scanner: running.scanner().clone(),
                    source: Arc::new(PeerChunks {
                        peers: self.peers.clone(),
                        share: folder.secret.share_id(),
                    }),
                    archive: folder.use_sync_trash(),
                    archive_keep,
                });
                let scans = running.scan_requests();
                if let Err(e) = self.nfs.exports.set(
                    name.as_str(),
                    &dir,
                    !folder.secret.is_read_write(),
                    Arc::new(move |paths| scans.scan(paths)),
                ) {
                    warn!(namespace = %name, "cannot export over NFS: {e}");
                }
                State::Running(Box::new(Running {
                    folder: running,
                    puller,
                }))
            }
            Err(why) => {
                error!(namespace = %name, "cannot start: {why}");
                State::Error(why)
            }
        };
        let access = if folder.secret.is_read_write() {
            "read-write"
        } else {
            "read-only"
        };
        info!(namespace = %name, dir = %dir.display(), access, "namespace started");
        self.running.insert(
            name,
            Namespace {
                dir,
                secret: folder.secret.clone(),
                state,
            },
        );
    }

    /// Stops a namespace and waits for its folder thread, so that its index is closed before the
    /// same namespace can start again.
    async fn stop_namespace(&mut self, name: &NamespaceName) {
        if let Some(ns) = self.running.remove(name) {
            self.nfs.exports.remove(name.as_str());
            self.peers.remove_share(ns.secret.share_id()).await;
            if let State::Running(running) = ns.state {
                let Running { folder, puller } = *running;
                puller.stop().await;
                let _ = tokio::task::spawn_blocking(move || folder.stop()).await;
            }
            info!(namespace = %name, "namespace stopped");
        }
    }

    async fn status(&self) -> serde_json::Value {
        let mut peers = self.peers.status().await;
        let namespaces: Vec<serde_json::Value> = self
            .running
            .iter()
            .map(|(name, ns)| {
                let (state, detail, scan, sync, index) = match &ns.state {
                    State::Running(running) => {
                        let status = running.folder.status();
                        let sync = running.puller.status();
                        let index = running.folder.scanner().index();
                        let counts = index.counts().ok();
                        let state = match sync.state {
                            shoal_sync::SyncState::Syncing => json!("syncing"),
                            // The disk is full: nothing is written until there is room again.
                            shoal_sync::SyncState::Paused => json!("paused"),
                            _ => serde_json::to_value(status.state).unwrap_or_default(),
                        };
                        (
                            state,
                            status.error.clone().or_else(|| sync.error.clone()),
                            serde_json::to_value(&status).ok(),
                            serde_json::to_value(&sync).ok(),
                            json!({ "max_seq": index.max_seq(), "counts": counts }),
                        )
                    }
                    State::Error(why) => {
                        (json!("error"), Some(why.clone()), None, None, json!(null))
                    }
                };
                json!({
                    "name": name,
                    "dir": ns.dir,
                    "access": if ns.secret.is_read_write() { "read-write" } else { "read-only" },
                    "share_id": ns.secret.share_id().to_string(),
                    "state": state,
                    "detail": detail,
                    "scan": scan,
                    "sync": sync,
                    "index": index,
                    "peers": peers.remove(name.as_str()).unwrap_or_default(),
                })
            })
            .collect();
        json!({
            "running": true,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "device_name": self.device_name,
            "config_path": self.settings.config_path,
            "state_path": self.settings.state_path,
            "node_id": self.peers.node_id().to_string(),
            "listen": self.peers.local_addr().map(|a| a.to_string()),
            "nfs": self.nfs.status,
            "namespaces": namespaces,
        })
    }
}

/// A namespace runs only in a directory that exists: a missing one may be an unmounted volume,
/// and syncing it would look to every peer as if all its files were deleted. `.sync/` (the marker
/// and home of the archive and ignore list) is created on first start.
fn prepare_dir(dir: &std::path::Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} does not exist (an unmounted volume?); create it, or re-add the namespace",
            dir.display()
        ));
    }
    let marker = dir.join(".sync");
    std::fs::create_dir_all(&marker).map_err(|e| format!("cannot create {}: {e}", marker.display()))
}

/// Looks at the config file every `CONFIG_INTERVAL_CHECK` seconds, as btsync.docker's entrypoint
/// did — but a change is applied live instead of restarting the process.
pub async fn poll_config(settings: Settings, supervisor: Handle, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(settings.config_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                // Errors are logged by the supervisor, once per distinct file content.
                let _ = supervisor.reload().await;
            }
        }
    }
}
