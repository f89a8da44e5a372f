//! Establishing a session: TCP, the TLS handshake, the `Hello` exchange, then a [`Connection`].
//!
//! [`connect`] dials (optionally pinned to a node ID), [`accept`] answers a TCP stream from a
//! listener. Both then do the same thing: derive the session's exporter value for join proofs
//! (`join`), send our `Hello`, read the peer's, and check it — same protocol version, the node ID
//! the TLS handshake authenticated, a sane device name. Anything else sends `Close` with the reason
//! and fails; only a fully established peer reaches the owner as a [`Session`]. The whole
//! handshake is bounded by [`HANDSHAKE_TIMEOUT`] so a silent peer cannot hold a slot forever.
//!
//! One connection per pair of nodes carries every namespace. When both dial each other at once,
//! [`keep_new_connection`] decides which one survives, the same way on both sides.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::conn::{Connection, Event};
use crate::frame::{self, FrameError};
use crate::identity::NodeId;
use crate::join::{EXPORTER_LABEL, JoinContext};
use crate::message::{Hello, MAX_DEVICE_NAME, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION};
use crate::tls::{self, SERVER_NAME, TlsError, TlsSetup};

/// How long TCP connect, TLS and the `Hello` exchange may take together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from the socket at once at most. TLS reads it in pieces of 4 to 16 KiB (rustls
/// asks for a 4 KiB read whenever it holds no partial record): one system call each, ~70,000
/// for a GiB received. Read through a buffer this large, the socket gives what it holds in one
/// (~6,000 for a GiB).
const SOCKET_READ: usize = 256 << 10;

/// The TCP stream under TLS: reads gathered ([`SOCKET_READ`]), writes passed straight on (TLS
/// writes its records out together already).
type Tcp = BufReader<TcpStream>;

/// Why a session could not be established.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Config(#[from] TlsError),
    #[error("cannot derive the session exporter: {0}")]
    Exporter(rustls::Error),
    #[error("the peer presented no usable certificate")]
    NoPeerCertificate,
    #[error("hello exchange failed: {0}")]
    Frame(#[from] FrameError),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("handshake with the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// An established, authenticated peer.
#[derive(Debug)]
pub struct Session {
    pub peer: NodeId,
    pub hello: Hello,
    /// Whether we dialed (for [`keep_new_connection`]).
    pub outgoing: bool,
    pub join: JoinContext,
    pub conn: Connection,
    pub events: mpsc::Receiver<Event>,
}

/// Dials `addr`; with `expected`, fails unless the peer is that node.
pub async fn connect(
    setup: &TlsSetup,
    addr: SocketAddr,
    expected: Option<NodeId>,
    hello: &Hello,
) -> Result<Session, SessionError> {
    bounded(async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| SessionError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(SERVER_NAME).map_err(|e| SessionError::Protocol(e.to_string()))?;
        let stream = TlsConnector::from(setup.client_config(expected)?)
            .connect(name, BufReader::with_capacity(SOCKET_READ, tcp))
            .await
            .map_err(SessionError::Tls)?;
        let exporter = stream
            .get_ref()
            .1
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
            .map_err(SessionError::Exporter)?;
        finish(setup, TlsStream::from(stream), exporter, hello, true).await
    })
    .await
}

/// Runs the handshake on a stream accepted by a listener.
pub async fn accept(
    setup: &TlsSetup,
    tcp: TcpStream,
    hello: &Hello,
) -> Result<Session, SessionError> {
    bounded(async {
        let _ = tcp.set_nodelay(true);
        let stream = TlsAcceptor::from(setup.server_config())
            .accept(BufReader::with_capacity(SOCKET_READ, tcp))
            .await
            .map_err(SessionError::Tls)?;
        let exporter = stream
            .get_ref()
            .1
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
            .map_err(SessionError::Exporter)?;
        finish(setup, TlsStream::from(stream), exporter, hello, false).await
    })
    .await
}

/// Of two connections between the same nodes, keep the one dialed by the node with the smaller
/// ID. `new_is_outgoing` says whether the new connection is one we dialed.
pub fn keep_new_connection(local: NodeId, peer: NodeId, new_is_outgoing: bool) -> bool {
    let dialer = if new_is_outgoing { local } else { peer };
    dialer == local.min(peer)
}

async fn bounded<F: Future<Output = Result<Session, SessionError>>>(
    f: F,
) -> Result<Session, SessionError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .unwrap_or(Err(SessionError::Timeout(HANDSHAKE_TIMEOUT)))
}

async fn finish(
    setup: &TlsSetup,
    mut stream: TlsStream<Tcp>,
    exporter: [u8; 32],
    hello: &Hello,
    outgoing: bool,
) -> Result<Session, SessionError> {
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(tls::peer_node_id)
        .ok_or(SessionError::NoPeerCertificate)?
        .map_err(|_| SessionError::NoPeerCertificate)?;
    stream
        .write_all(&frame::encode(&Message::Hello(hello.clone()))?)
        .await
        .map_err(FrameError::Io)?;
    stream.flush().await.map_err(FrameError::Io)?;
    let mut buf = Vec::new();
    let theirs = match frame::read_frame(&mut stream, &mut buf).await? {
        Some(Message::Hello(h)) => h,
        Some(Message::Close { reason }) => return Err(SessionError::Refused(reason)),
        Some(other) => {
            return refuse(stream, format!("expected Hello, got {}", other.kind())).await;
        }
        None => return Err(SessionError::Refused("closed before Hello".into())),
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&theirs.version) {
        let reason = format!(
            "unsupported protocol version {} (we speak {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
            theirs.version
        );
        return refuse(stream, reason).await;
    }
    if theirs.node_id != peer {
        return refuse(
            stream,
            "Hello node ID differs from the TLS certificate".into(),
        )
        .await;
    }
    if theirs.device_name.len() > MAX_DEVICE_NAME {
        return refuse(stream, "device name too long".into()).await;
    }
    let label = format!("{}@{}", peer.short(), theirs.device_name.escape_debug());
    tracing::debug!(peer = %label, outgoing, "peer session established");
    let join = JoinContext::new(exporter, setup.node_id(), peer);
    let (conn, events) = Connection::spawn(stream, label);
    Ok(Session {
        peer,
        hello: theirs,
        outgoing,
        join,
        conn,
        events,
    })
}

async fn refuse(mut stream: TlsStream<Tcp>, reason: String) -> Result<Session, SessionError> {
    tracing::warn!(%reason, "refusing peer during handshake");
    if let Ok(close) = frame::encode(&Message::Close {
        reason: reason.clone(),
    }) {
        let _ = stream.write_all(&close).await;
        let _ = stream.shutdown().await;
    }
    Err(SessionError::Protocol(reason))
}
