//! A running connection: one writer task with two priority queues, one reader task, one inbox.
//!
//! The owner (the daemon's peer actor) holds a [`Connection`] to send and an [`Event`] receiver to
//! hear from the peer. Sending encodes the message in the caller's task (so an oversized message
//! fails at the caller, not in the writer) and queues the frame: control messages on one queue,
//! bulk (chunk data, index transfers) on another. The writer always drains control first — a
//! `biased` select — so a chunk request or a close waits behind at most the one bulk frame
//! already being written, never behind the queued ones. Bulk is bounded (a few frames), so a
//! fast producer is slowed to the speed of the link instead of buffering without limit.
//!
//! The reader decodes frames and forwards messages into the bounded inbox; if the owner stops
//! reading, the reader stops too and TCP flow control pushes back on the peer. Any framing error
//! (malformed, oversized, truncated) closes the connection: the reader logs the reason, asks the
//! writer to send `Close` with it, and delivers [`Event::Closed`] last. A peer cannot crash the
//! node through this path: nothing here panics on input.
//!
//! Both tasks are owned by the [`Connection`]: dropping it aborts them, which closes the socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::frame::{self, FrameError};
use crate::message::Message;

/// Control frames that may wait for the writer.
const CONTROL_QUEUE: usize = 256;
/// Bulk frames that may wait for the writer: enough to keep the link busy, at most 64 MiB.
const BULK_QUEUE: usize = 4;
/// Messages decoded but not yet taken by the owner.
const INBOX: usize = 64;

/// What the owner hears from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    /// The connection is over; nothing follows.
    Closed(Closed),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The peer sent `Close` with this reason.
    ByPeer(String),
    /// The stream ended without a `Close`.
    Ended,
    /// We closed it: the peer broke the framing rules, or the stream failed.
    Error(String),
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot send {kind}: {source}")]
    Encode {
        kind: &'static str,
        source: FrameError,
    },
    #[error("the connection is closed")]
    Closed,
    #[error("the send queue is full")]
    Full,
}

enum Outgoing {
    Frame(Vec<u8>),
    Close(String),
}

/// Bytes of frames written and read on a connection (before TLS), for status pages.
#[derive(Debug, Default)]
pub struct Traffic {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Traffic {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// The sending side of a connection and the owner of its tasks.
#[derive(Debug)]
pub struct Connection {
    label: String,
    traffic: Arc<Traffic>,
    control: mpsc::Sender<Outgoing>,
    bulk: mpsc::Sender<Vec<u8>>,
    writer: Task,
    reader: Task,
}

impl Connection {
    /// Starts the reader and writer over `stream`. `label` names the peer in logs.
    pub fn spawn<S>(stream: S, label: String) -> (Connection, mpsc::Receiver<Event>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
        let (inbox, events) = mpsc::channel(INBOX);
        let traffic = Arc::new(Traffic::default());
        let writer = Task(tokio::spawn(write_loop(
            write,
            control_rx,
            bulk_rx,
            label.clone(),
            traffic.clone(),
        )));
        let reader = Task(tokio::spawn(read_loop(
            read,
            inbox,
            control.clone(),
            label.clone(),
            traffic.clone(),
        )));
        (
            Connection {
                label,
                traffic,
                control,
                bulk,
                writer,
                reader,
            },
            events,
        )
    }

    /// Queues `message`, waiting while its queue is full.
    pub async fn send(&self, message: &Message) -> Result<(), ConnError> {
        let bytes = encode(message)?;
        let sent = if message.is_bulk() {
            self.bulk.send(bytes).await.is_ok()
        } else {
            self.control.send(Outgoing::Frame(bytes)).await.is_ok()
        };
        if sent { Ok(()) } else { Err(ConnError::Closed) }
    }

    /// Queues a bulk frame already encoded (see [`frame::chunk_data_frame_head`]).
    pub async fn send_bulk_frame(&self, frame: Vec<u8>) -> Result<(), ConnError> {
        self.bulk.send(frame).await.map_err(|_| ConnError::Closed)
    }

    /// Queues `message` if its queue has room.
    pub fn try_send(&self, message: &Message) -> Result<(), ConnError> {
        let bytes = encode(message)?;
        let result = if message.is_bulk() {
            self.bulk
                .try_send(bytes)
                .map_err(|e| matches!(e, mpsc::error::TrySendError::Full(_)))
        } else {
            self.control
                .try_send(Outgoing::Frame(bytes))
                .map_err(|e| matches!(e, mpsc::error::TrySendError::Full(_)))
        };
        result.map_err(|full| {
            if full {
                ConnError::Full
            } else {
                ConnError::Closed
            }
        })
    }

    /// Sends `Close` with `reason` after the control messages already queued, and waits until it
    /// is written (queued bulk data is dropped).
    pub async fn close(mut self, reason: &str) {
        tracing::debug!(peer = %self.label, reason, "closing connection");
        if self
            .control
            .send(Outgoing::Close(reason.to_owned()))
            .await
            .is_ok()
        {
            let _ = (&mut self.writer.0).await;
        }
    }

    /// Ends the connection now, for every holder: both tasks stop, which closes the socket, and
    /// every send waiting for room in a queue fails. For a peer given up for dead, whose link
    /// would otherwise keep senders waiting until TCP itself gives up (minutes).
    pub fn abort(&self) {
        self.writer.0.abort();
        self.reader.0.abort();
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Bytes sent and received so far; the counters outlive the connection if kept.
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }
}

fn encode(message: &Message) -> Result<Vec<u8>, ConnError> {
    frame::encode(message).map_err(|source| ConnError::Encode {
        kind: message.kind(),
        source,
    })
}

/// A task that is aborted when its handle is dropped.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_loop<W: AsyncWrite>(
    mut write: WriteHalf<W>,
    mut control: mpsc::Receiver<Outgoing>,
    mut bulk: mpsc::Receiver<Vec<u8>>,
    label: String,
    traffic: Arc<Traffic>,
) {
    loop {
        // Control first, always: this is what keeps requests from waiting behind chunk data.
        let next = tokio::select! {
            biased;
            Some(out) = control.recv() => out,
            Some(bytes) = bulk.recv() => Outgoing::Frame(bytes),
            else => break,
        };
        let result = match next {
            Outgoing::Frame(bytes) => {
                let result = write.write_all(&bytes).await;
                traffic
                    .sent
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                result
            }
            Outgoing::Close(reason) => {
                let close = frame::encode(&Message::Close { reason }).unwrap_or_default();
                let _ = write.write_all(&close).await;
                let _ = write.shutdown().await;
                return;
            }
        };
        // Flush only when nothing else waits: batching small frames into few TLS records.
        let result = match result {
            Ok(()) if control.is_empty() && bulk.is_empty() => write.flush().await,
            other => other,
        };
        if let Err(e) = result {
            tracing::debug!(peer = %label, error = %e, "connection write failed");
            return;
        }
    }
    let _ = write.shutdown().await;
}

async fn read_loop<R: AsyncRead>(
    mut read: tokio::io::ReadHalf<R>,
    inbox: mpsc::Sender<Event>,
    control: mpsc::Sender<Outgoing>,
    label: String,
    traffic: Arc<Traffic>,
) {
    let mut buf = Vec::new();
    let closed = loop {
        let result = frame::read_frame(&mut read, &mut buf).await;
        if matches!(result, Ok(Some(_))) {
            traffic
                .received
                .fetch_add((buf.len() + frame::HEADER_LEN) as u64, Ordering::Relaxed);
        }
        match result {
            Ok(Some(Message::Close { reason })) => break Closed::ByPeer(reason),
            Ok(Some(message)) => {
                if inbox.send(Event::Message(message)).await.is_err() {
                    return; // the owner is gone
                }
            }
            Ok(None) => break Closed::Ended,
            Err(FrameError::Io(e)) => break Closed::Error(format!("read failed: {e}")),
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(peer = %label, %reason, "closing connection: protocol violation");
                let _ = control.try_send(Outgoing::Close(reason.clone()));
                break Closed::Error(reason);
            }
        }
    };
    let _ = inbox.send(Event::Closed(closed)).await;
}
