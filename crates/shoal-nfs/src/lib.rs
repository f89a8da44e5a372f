//! shoal's NFS server: every namespace at the export root (`node:/gitlab`), so that any container
//! can mount it.
//!
//! - [`fs`]: our file-system layer (handles, no escape, nothing stale, writes handed to sync);
//! - [`allow`]: `NFS_ALLOW`, the client networks;
//! - [`serve`]: NFSv3, MOUNT and portmap on one TCP port (2049 by default), behind a gate that
//!   admits only allowed clients.

pub mod allow;
pub mod fs;
mod rpc;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use tracing::{info, warn};

pub use allow::Network;
pub use fs::{Exports, OnChange, ShoalFs};

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The write verifier, and the generation in every file handle: the kernel's boot time.
///
/// Data the daemon wrote but did not fsync lives in the kernel's page cache, so it survives the
/// daemon restarting and is lost only when the kernel reboots. A verifier that changes exactly then
/// makes clients resend exactly the writes that may be lost — and keeps every handle valid across
/// daemon restarts, which the protocol library ties to the same number.
pub fn generation() -> u64 {
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|s| s.trim().parse::<u64>().ok())
    });
    match boot {
        Some(seconds) => seconds * 1000,
        None => {
            warn!(
                "cannot read the boot time from /proc/stat; NFS handles will not survive a restart"
            );
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64)
        }
    }
}

/// The largest READ and WRITE offered to clients (FSINFO): Linux clients use at most 1 MiB
/// whatever is offered. (4 MiB, which nfs-rs would take, measured no faster: larger buffers cost
/// as much in page faults as fewer calls save.)
pub const MAX_TRANSFER: u32 = 1 << 20;

/// Binds the public NFS port. Separate from [`serve`] so that the daemon can bind it before it
/// drops root (ports below 1024).
pub fn bind(addr: Ipv4Addr, port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((addr, port)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `exports` to the clients in `allow` on `public` (from [`bind`]).
///
/// The protocol library owns its accept loop and never shows the client's address, so it listens on
/// loopback only and the public port is ours: a connection from outside `allow` is closed at once
/// (and logged); an allowed one is served by [`rpc`], which answers READ and WRITE itself and
/// passes every other call to the library.
pub async fn serve(
    public: std::net::TcpListener,
    allow: &[Network],
    exports: Arc<Exports>,
) -> std::io::Result<Server> {
    let fs = ShoalFs::new(exports);
    let generation = generation();
    let inner = NFSTcpListener::bind_with_generation("127.0.0.1:0", fs.clone(), generation).await?;
    let inner_port = inner.get_listen_port();
    let public = tokio::net::TcpListener::from_std(public)?;
    let port = public.local_addr()?.port();
    let networks: Vec<String> = allow.iter().map(ToString::to_string).collect();
    info!(port, allow = %networks.join(","), "NFS server listening");
    let protocol = tokio::spawn(async move {
        if let Err(e) = inner.handle_forever().await {
            warn!("the NFS server stopped: {e}");
        }
    });
    let allow = allow.to_vec();
    let gate = tokio::spawn(async move {
        loop {
            let (client, peer) = match public.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, mostly: wait rather than spin.
                    warn!("NFS accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !allow::allows(&allow, peer.ip()) {
                warn!(client = %peer, "refused an NFS client outside NFS_ALLOW");
                continue;
            }
            tokio::spawn(rpc::connection(
                client,
                peer,
                inner_port,
                fs.clone(),
                generation.to_le_bytes(),
            ));
        }
    });
    Ok(Server {
        port,
        tasks: vec![gate, protocol],
    })
}
