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
    let truncated = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    };
    // The start of the body tells a `ChunkData`, whose bytes are then read into their own
    // buffer: decoding them out of `buf` copied every chunk received once more.
    let mut head = [0u8; CHUNK_HEAD_MAX];
    let peeked = len.min(CHUNK_HEAD_MAX);
    reader
        .read_exact(&mut head[..peeked])
        .await
        .map_err(truncated)?;
    if let Some((id, data_len, used)) = parse_chunk_head(&head[..peeked])
        && used + data_len == len
    {
        let mut bytes = Vec::with_capacity(data_len);
        bytes.extend_from_slice(&head[used..peeked]);
        let rest = (data_len - bytes.len()) as u64;
        (&mut *reader)
            .take(rest)
            .read_to_end(&mut bytes)
            .await
            .map_err(truncated)?;
        if bytes.len() != data_len {
            return Err(FrameError::Truncated);
        }
        return Ok(Some(Message::ChunkData { id, bytes }));
    }
    buf.clear();
    buf.extend_from_slice(&head[..peeked]);
    buf.resize(len, 0);
    reader
        .read_exact(&mut buf[peeked..])
        .await
        .map_err(truncated)?;
    decode_body(buf).map(Some)
}

/// The longest `ChunkData` prefix: its variant tag, id and length, each a varint.
const CHUNK_HEAD_MAX: usize = 3 * 10;

/// The encoding of `ChunkData`'s variant tag (postcard: the variant's index as a varint).
fn chunk_data_tag() -> &'static [u8] {
    static TAG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let empty = Message::ChunkData {
            id: 0,
            bytes: Vec::new(),
        };
        let mut body = postcard::to_allocvec(&empty).unwrap_or_default();
        // id 0 and length 0 are one byte each.
        body.truncate(body.len().saturating_sub(2));
        body
    })
}

/// Bytes of `v` as a (shortest) varint.
fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(7).max(1)
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The body prefix of `ChunkData { id, bytes }` with `len` bytes: exactly what postcard writes
/// before the bytes themselves.
fn chunk_head(id: u64, len: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(CHUNK_HEAD_MAX);
    head.extend_from_slice(chunk_data_tag());
    push_varint(&mut head, id);
    push_varint(&mut head, len as u64);
    head
}

/// `(id, bytes' length, prefix length)` if `body` starts with a `ChunkData` prefix written as
/// [`chunk_head`] writes it. Anything else (other messages, unusual encodings) is left to the
/// full decoder, so both readings of a frame always agree.
fn parse_chunk_head(body: &[u8]) -> Option<(u64, usize, usize)> {
    let rest = body.strip_prefix(chunk_data_tag())?;
    let (id, a) = take_varint(rest)?;
    let (len, b) = take_varint(&rest[a..])?;
    let len = usize::try_from(len).ok()?;
    let used = chunk_data_tag().len() + a + b;
    // Only the canonical (shortest) encoding, the one this side would write itself.
    let canonical = varint_len(id) == a && varint_len(len as u64) == b;
    (canonical && len <= MAX_CHUNK).then_some((id, len, used))
}

fn take_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            // The tenth byte may only hold the top bit of a u64.
            return (i < 9 || b <= 1).then_some((v, i + 1));
        }
    }
    None
}

/// The start of a `ChunkData` frame answering request `id` with `len` bytes: header and body
/// prefix, in a buffer with room for the rest. Appending exactly `len` bytes completes it (the
/// same bytes [`encode`] would produce); the chunk is read straight into the frame.
pub fn chunk_data_frame_head(id: u64, len: usize) -> Vec<u8> {
    let head = chunk_head(id, len);
    let body = head.len() + len;
    let mut frame = Vec::with_capacity(HEADER_LEN + body);
    frame.extend_from_slice(&(body as u32).to_be_bytes());
    frame.extend_from_slice(&head);
    frame
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
        check(Message::Have {
            share_id,
            hashes: vec![[3; 32]; crate::MAX_HAVE],
        });
        let preview = Message::Preview {
            share_id,
            path: "dir/big.iso".into(),
            size: 1 << 40,
            chunks: vec![
                crate::PreviewChunk {
                    offset: u64::MAX - 5,
                    len: u32::MAX,
                    hash: [4; 32],
                };
                crate::MAX_PREVIEW
            ],
        };
        // A full preview is a control message, well within the control frame limit.
        assert!(!preview.is_bulk());
        assert!(encode(&preview).unwrap().len() < MAX_CONTROL_FRAME / 4);
        check(preview);
        // As many of the longest paths as one may carry: a control message within the limit.
        let resend = Message::IndexResend {
            share_id,
            paths: vec!["p".repeat(4096); crate::MAX_RESEND],
        };
        assert!(!resend.is_bulk());
        assert!(encode(&resend).unwrap().len() < MAX_CONTROL_FRAME);
        check(resend);
        let near = Message::ChunkNear {
            share_id,
            hash: [6; 32],
            id: 3,
            pieces: vec![[7; 16]; crate::MAX_PIECES],
        };
        assert!(!near.is_bulk());
        assert!(encode(&near).unwrap().len() < MAX_CONTROL_FRAME);
        check(near);
        let pieces = Message::ChunkPieces {
            id: 3,
            pieces: vec![0, 5, 1023],
            bytes: vec![8; 40_000],
        };
        assert!(pieces.is_bulk());
        check(pieces);
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
    fn chunk_frames_built_in_place_are_what_encode_writes() {
        for (id, len) in [
            (0, 0),
            (1, 300),
            (127, 128),
            (128, 16_383),
            (u64::MAX, 1 << 20),
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut frame = chunk_data_frame_head(id, len);
            frame.extend_from_slice(&bytes);
            let message = Message::ChunkData { id, bytes };
            assert_eq!(frame, encode(&message).unwrap(), "id {id} len {len}");
        }
    }

    fn read_all(frames: &[u8]) -> Vec<Result<Option<Message>, String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut reader = frames;
            let mut buf = Vec::new();
            let mut out = Vec::new();
            loop {
                let r = read_frame(&mut reader, &mut buf).await;
                let end = !matches!(r, Ok(Some(_)));
                out.push(r.map_err(|e| e.to_string()));
                if end {
                    return out;
                }
            }
        })
    }

    #[test]
    fn chunk_data_read_from_a_stream_matches_the_buffer_decoder() {
        let mut stream = Vec::new();
        let messages = [
            Message::ChunkData {
                id: 3,
                bytes: vec![9; 70_000],
            },
            Message::Ping,
            Message::ChunkData {
                id: 1 << 40,
                bytes: vec![],
            },
            Message::ChunkUnavailable { id: 5 },
        ];
        for m in &messages {
            stream.extend_from_slice(&encode(m).unwrap());
        }
        let read = read_all(&stream);
        assert_eq!(read.len(), messages.len() + 1);
        for (r, m) in read.iter().zip(&messages) {
            assert_eq!(r.as_ref().unwrap().as_ref().unwrap(), m);
        }
        assert!(matches!(read.last(), Some(Ok(None))));
        // A frame cut short, a length claiming more than the frame: errors, as decode_frame says.
        let whole = encode(&messages[0]).unwrap();
        let cut = read_all(&whole[..whole.len() - 1]);
        assert_eq!(
            cut.last().unwrap().as_ref().unwrap_err(),
            "connection ended in the middle of a frame"
        );
        let mut lying = whole.clone();
        lying.truncate(HEADER_LEN + 100);
        lying[..HEADER_LEN].copy_from_slice(&100u32.to_be_bytes());
        let read = read_all(&lying);
        assert_eq!(
            read[0].as_ref().unwrap_err(),
            &decode_frame(&lying).unwrap_err().to_string()
        );
    }

    proptest::proptest! {
        #[test]
        fn any_frame_reads_as_the_buffer_decoder_reads_it(body in proptest::collection::vec(proptest::num::u8::ANY, 0..64), tag in 0u8..16) {
            let mut frame = (body.len() as u32 + 1).to_be_bytes().to_vec();
            frame.push(tag);
            frame.extend_from_slice(&body);
            let want = decode_frame(&frame).map(|m| m.map(|(m, _)| m)).map_err(|e| e.to_string());
            let got = read_all(&frame).remove(0);
            proptest::prop_assert_eq!(got, want);
        }
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
