//! The control server: accepts `ctl` connections on the unix socket, one request each.
//!
//! Each connection gets its own task, bounded in number so a misbehaving client cannot exhaust the
//! daemon. Changes to the config file are made with the same code `ctl` uses when no daemon runs
//! (`ops`), on a blocking thread since they fsync; the supervisor then applies the new file before
//! the reply is sent, which is what makes a change live when `ctl` returns.

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use super::supervisor::Handle;
use crate::control::{MAX_REQUEST, Reply, Request};
use crate::error::exit_code;
use crate::ops;
use crate::settings::Settings;

/// At most this many `ctl` requests are handled at once; more wait in the socket's backlog.
const MAX_CONNECTIONS: usize = 32;

pub async fn serve(
    listener: UnixListener,
    settings: Settings,
    supervisor: Handle,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("control socket: accept failed: {e}");
                    continue;
                }
            },
        };
        let settings = settings.clone();
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, settings, supervisor).await {
                debug!("control connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn handle(stream: UnixStream, settings: Settings, supervisor: Handle) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            debug!(?request, "control request");
            answer(request, settings, supervisor).await
        }
        Err(e) => Reply::err(
            crate::error::EXIT_BAD_INPUT,
            format!("malformed control request: {e}"),
        ),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn answer(request: Request, settings: Settings, supervisor: Handle) -> Reply {
    let result = match request {
        Request::Status => supervisor.status().await,
        Request::Reload => supervisor.reload().await.map(|()| json!({})),
        Request::Add { namespace, secret } => {
            let added =
                blocking(move || ops::add(&settings, &namespace, secret.as_deref(), false)).await;
            match added {
                Ok(added) => supervisor
                    .reload()
                    .await
                    .map(|()| json!({ "namespace": added.name, "dir": added.dir, "live": true })),
                Err(e) => Err(e),
            }
        }
        Request::Del { namespace } => {
            let name = namespace.clone();
            match blocking(move || ops::del(&settings, &name)).await {
                Ok(dir) => supervisor
                    .reload()
                    .await
                    .map(|()| json!({ "namespace": namespace, "dir": dir, "live": true })),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(data) => Reply::ok(data),
        Err(e) => Reply::err(exit_code(&e), format!("{e:#}")),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("internal error: {e}"))?
}
