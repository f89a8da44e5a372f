//! Framing: how messages become bytes on the TLS stream and back, with hard size limits.
//!
//! A frame is a 4-byte big-endian body length followed by the body: one postcard-encoded
//! [`Message`]. The length is checked before anything is allocated, so a peer cannot make us
//! reserve more than [`MAX_FRAME`] bytes; after decoding, a control message in a frame larger than
//! [`MAX_CONTROL_FRAME`] is refused too (only bulk messages may be big). A body must decode to
//! exactly one message with no bytes left over. Every violation is a [`FrameError`], and the
//! connection that produced it is closed (see `conn`): there is no resynchronising inside a
//! stream whose framing is in doubt.
//!
//! [`decode_frame`] is the pure decoder over a byte buffer (what the fuzz target drives);
//! [`read_frame`] is the same over an async stream.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::message::{MAX_CHUNK, Message};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Largest frame body: a full chunk plus room for its envelope.
pub const MAX_FRAME: usize = MAX_CHUNK + 64 * 1024;
/// Largest frame body for a control message.
pub const MAX_CONTROL_FRAME: usize = 1 << 20;

/// What is wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{kind} message of {len} bytes exceeds the control-message limit of {max}")]
    ControlTooLarge {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} unexpected bytes after the message in its frame")]
    TrailingBytes(usize),
    #[error("connection ended in the middle of a frame")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Encodes `message` as one frame (header included), refusing what the receiver would refuse.
pub fn encode(message: &Message) -> Result<Vec<u8>, FrameError> {
    let mut start = Vec::with_capacity(HEADER_LEN + message.encoded_len_hint());
    start.resize(HEADER_LEN, 0);
    let buf = postcard::serialize_with_flavor(message, Framed(start))?;
    let len = buf.len() - HEADER_LEN;
    check_len(len, message)?;
    let mut buf = buf;
    let header = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: MAX_FRAME,
    })?;
    buf[..HEADER_LEN].copy_from_slice(&header.to_be_bytes());
    Ok(buf)
}

/// postcard output into a `Vec` by whole slices. (`postcard::to_extend` goes through
/// `Extend<u8>`, byte by byte: encoding a 1 MiB `ChunkData` cost more CPU than encrypting it.)
struct Framed(Vec<u8>);

impl postcard::ser_flavors::Flavor for Framed {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Decodes one frame body (without its header).
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(body)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    check_len(body.len(), &message)?;
    Ok(message)
}

/// Decodes the first frame in `buf`: the message and the bytes it used, or `None` if `buf` does
/// not yet hold a whole frame.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(len) = body_len(buf)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

/// Reads one frame. `Ok(None)` on a clean end of stream between frames. `buf` is reused across
/// calls to avoid an allocation per frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Message>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match reader.read(&mut header[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => filled += n,
        }
    }
    let len = body_len(&header)?.unwrap_or(0);
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_body(buf).map(Some)
}

fn body_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf
        .get(..HEADER_LEN)
        .and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
    else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(Some(len))
}

fn check_len(len: usize, message: &Message) -> Result<(), FrameError> {
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    if !message.is_bulk() && len > MAX_CONTROL_FRAME {
        return Err(FrameError::ControlTooLarge {
            kind: message.kind(),
            len,
            max: MAX_CONTROL_FRAME,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;
    use shoal_core::secret::ShareId;

    fn check(message: Message) {
        let frame = encode(&message).unwrap();
        let (back, used) = decode_frame(&frame).unwrap().unwrap();
        assert_eq!(back, message);
        assert_eq!(used, frame.len());
        assert!(decode_frame(&frame[..frame.len() - 1]).unwrap().is_none());
    }

    #[test]
    fn messages_round_trip() {
        let share_id = ShareId([7; 16]);
        check(Message::Join {
            share_id,
            proof: [1; 32],
        });
        check(Message::ChunkData {
            id: 9,
            bytes: vec![5; 100_000],
        });
        check(Message::Peers {
            share_id,
            addrs: vec!["127.0.0.1:9".parse().unwrap()],
        });
        check(Message::Close {
            reason: "bye".into(),
        });
    }

    #[test]
    fn chunk_data_is_a_length_and_the_raw_bytes() {
        let frame = encode(&Message::ChunkData {
            id: 1,
            bytes: vec![0xAB; 300],
        })
        .unwrap();
        // header, tag, id varint, length varint (2 bytes), the bytes
        assert_eq!(frame.len(), HEADER_LEN + 1 + 1 + 2 + 300);
    }

    #[test]
    fn oversized_header_is_refused_before_reading_the_body() {
        let err = decode_frame(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn large_control_message_is_refused() {
        let err = encode(&Message::Close {
            reason: "x".repeat(MAX_CONTROL_FRAME),
        })
        .unwrap_err();
        assert!(
            matches!(err, FrameError::ControlTooLarge { kind: "Close", .. }),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_and_unknown_tags_are_refused() {
        let mut frame = encode(&Message::ChunkUnavailable { id: 3 }).unwrap();
        frame.push(0);
        frame[3] += 1;
        assert!(matches!(
            decode_frame(&frame),
            Err(FrameError::TrailingBytes(1))
        ));
        assert!(matches!(decode_body(&[200]), Err(FrameError::Malformed(_))));
    }
}
