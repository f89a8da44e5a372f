//! shoal's NFS server: every namespace at the export root (`node:/gitlab`), so that any container
//! can mount it.
//!
//! - [`fs`]: our file-system layer (handles, no escape, nothing stale, writes handed to sync);
//! - [`allow`]: `NFS_ALLOW`, the client networks;
//! - [`serve`]: NFSv3, MOUNT and portmap on one TCP port (2049 by default), behind a gate that
//!   admits only allowed clients.

pub mod allow;
pub mod fs;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use tracing::{debug, info, warn};

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

/// Binds the public NFS port. Separate from [`serve`] so that the daemon can bind it before it
/// drops root (ports below 1024).
pub fn bind(addr: Ipv4Addr, port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((addr, port)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Bytes a relay moves per `splice`, and the size of its pipes: NFS moves 1 MiB per READ or WRITE.
const GATE_PIPE: usize = 1 << 20;

/// Serves `exports` to the clients in `allow` on `public` (from [`bind`]).
///
/// The protocol library owns its accept loop and never shows the client's address, so it listens on
/// loopback only and the public port is a gate of ours in front of it: a connection from outside
/// `allow` is closed at once (and logged); an allowed one is relayed by the kernel (`splice`
/// through a pipe, two threads per connection), so the relay copies nothing through user space.
/// (A classic BPF filter on the listening socket would have cost no relay at all, but attaching
/// one needs CAP_NET_ADMIN on current kernels, which containers do not have.)
pub async fn serve(
    public: std::net::TcpListener,
    allow: &[Network],
    exports: Arc<Exports>,
) -> std::io::Result<Server> {
    let fs = ShoalFs::new(exports);
    let inner = NFSTcpListener::bind_with_generation("127.0.0.1:0", fs, generation()).await?;
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
            let client = match client.into_std() {
                Ok(c) => c,
                Err(e) => {
                    warn!(client = %peer, "cannot take over an NFS connection: {e}");
                    continue;
                }
            };
            if let Err(e) = relay_thread(move || relay(client, peer.ip(), inner_port)) {
                warn!(client = %peer, "cannot start an NFS relay: {e}");
            }
        }
    });
    Ok(Server {
        port,
        tasks: vec![gate, protocol],
    })
}

/// Starts a relay thread (named so, for `ps -L` and the tests).
fn relay_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name("nfs-relay".into())
        .spawn(f)
}

/// Relays one allowed client to the protocol listener until either side closes.
fn relay(client: std::net::TcpStream, peer: IpAddr, inner_port: u16) {
    let server = match std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, inner_port)) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot reach the NFS protocol listener: {e}");
            return;
        }
    };
    let prepared = (|| -> std::io::Result<_> {
        client.set_nonblocking(false)?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok((client.try_clone()?, server.try_clone()?))
    })();
    let (client_out, server_in) = match prepared {
        Ok(p) => p,
        Err(e) => {
            warn!(client = %peer, "cannot relay an NFS connection: {e}");
            return;
        }
    };
    let down = relay_thread(move || pump(&server_in, &client_out));
    let up = pump(&client, &server);
    let down = match down {
        Ok(t) => t
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the relay thread failed"))),
        Err(e) => Err(e),
    };
    match (up, down) {
        (Ok(up), Ok(down)) => debug!(client = %peer, up, down, "NFS connection closed"),
        (Err(e), _) | (_, Err(e)) => debug!(client = %peer, "NFS connection ended: {e}"),
    }
}

/// Moves bytes from `from` to `to` through a pipe until `from` ends, then passes the end on. On
/// an error both sockets are shut, so that the other direction ends too.
fn pump(from: &std::net::TcpStream, to: &std::net::TcpStream) -> std::io::Result<u64> {
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    let result = (|| -> std::io::Result<u64> {
        let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC)?;
        // A larger pipe means fewer calls; the default (64 KiB) still works when refused.
        let _ = fcntl_setpipe_size(&pipe_in, GATE_PIPE);
        let mut total = 0u64;
        loop {
            let n = splice(from, None, &pipe_in, None, GATE_PIPE, SpliceFlags::MOVE)?;
            if n == 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                let m = splice(&pipe_out, None, to, None, left, SpliceFlags::MOVE)?;
                if m == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                left -= m;
            }
            total += n as u64;
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        Ok(total)
    })();
    if result.is_err() {
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    }
    result
}
