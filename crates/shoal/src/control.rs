//! The control socket: how `ctl` talks to a running daemon.
//!
//! A unix stream socket in the state directory (mode 0600, owned by the daemon's user; root reaches
//! it through `docker exec` as btsync.docker's ctl did). One request per connection: the client
//! writes one JSON line, the daemon answers one JSON line and closes. The daemon replies only once the
//! change is applied, so a change is live when `ctl` returns.
//!
//! The client is blocking (std only): `ctl` is a short-lived process and needs no runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest a `ctl` waits for the daemon to answer. Adding a namespace creates a directory and
/// starts its workers, which takes milliseconds; a minute means the daemon is stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Requests must stay small; anything larger is not from our `ctl`.
pub const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Add {
        namespace: String,
        secret: Option<String>,
    },
    Del {
        namespace: String,
    },
    Status,
    Reload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// On failure: the message for the user, and the exit code `ctl` should use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Reply {
    pub fn ok(data: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            error: None,
            code: 0,
            data,
        }
    }
    pub fn err(code: i32, message: String) -> Reply {
        Reply {
            ok: false,
            error: Some(message),
            code,
            data: serde_json::Value::Null,
        }
    }
}

/// What came of trying to reach the daemon.
#[derive(Debug)]
pub enum Outcome {
    /// No daemon is listening on this state directory.
    NotRunning,
    Replied(Reply),
}

/// Sends `request` to the daemon listening at `socket`, if there is one.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Outcome> {
    use std::io::ErrorKind::*;
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        // No socket, or a socket file left by a daemon that died: nobody is listening.
        Err(e) if matches!(e.kind(), NotFound | ConnectionRefused) => {
            return Ok(Outcome::NotRunning);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot reach the daemon at {}", socket.display())));
        }
    };
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(16 * 1024 * 1024)
        .read_line(&mut answer)
        .map_err(|e| anyhow::anyhow!("the daemon did not answer in time: {e}"))?;
    if answer.is_empty() {
        anyhow::bail!(
            "the daemon closed the control connection without answering (is it shutting down?)"
        );
    }
    let reply = serde_json::from_str(&answer).map_err(|e| {
        anyhow::anyhow!("the daemon sent a reply this ctl does not understand: {e}")
    })?;
    Ok(Outcome::Replied(reply))
}
