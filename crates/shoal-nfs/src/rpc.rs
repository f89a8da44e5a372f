//! The RPC transport in front of the protocol library, for one client connection.
//!
//! Records (RFC 5531 record marking) are read straight from the client's socket into the buffer
//! that then holds them until the reply is sent. READ and WRITE — the calls that carry the data —
//! are served here: a WRITE's bytes go from that buffer to the file, a READ's from the file into
//! the reply. Every other call (and any READ or WRITE this module does not take as well-formed
//! and current, so that the library gives the error reply) is passed whole to the protocol
//! library's listener on loopback, and its replies are passed back. Replies of both kinds go out
//! through one writer, each record whole.
//!
//! Why not the library's own transport for everything: it copies each request three times (socket
//! → staging buffer → in-memory pipe → a zeroed record buffer) and the data of a WRITE once more
//! into its arguments, which on two cores cost a quarter of the throughput of a 1 GiB write.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use nfs3_server::nfs3_types::nfs3::{
    Nfs3Option, WRITE3res, WRITE3resfail, WRITE3resok, fattr3, nfsstat3, stable_how, wcc_data,
    writeverf3,
};
use nfs3_server::nfs3_types::xdr_codec::Pack;
use nfs3_server::vfs::FileHandle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tracing::debug;

use crate::fs::{Fh, ShoalFs};

const NFS_PROGRAM: u32 = 100_003;
const NFS_V3: u32 = 3;
const NFSPROC3_READ: u32 = 6;
const NFSPROC3_WRITE: u32 = 7;
/// The largest record taken from a client: a WRITE of the largest size offered, with room for the
/// call around it. Anything larger ends the connection rather than the memory.
const MAX_RECORD: usize = crate::MAX_TRANSFER as usize + (64 << 10);
/// The largest reply taken from the library (trusted, and bounded by what clients ask for).
const MAX_LIBRARY_RECORD: usize = 64 << 20;
/// Replies queued for the client before handlers wait (backpressure on a client that does not read).
const REPLIES_QUEUED: usize = 16;
/// READs and WRITEs of one connection in progress at once (each holds up to 1 MiB): a client that
/// sends requests without reading the replies stops being read, instead of filling the memory.
/// Clients keep far fewer in flight (nfs-rs: 8; Linux: 16 slots by default).
const CALLS_AT_ONCE: usize = 32;
/// Bytes of the record mark in front of every record.
const MARK: usize = 4;
/// A fattr3 in XDR: 21 words.
const FATTR3_LEN: usize = 84;

/// Serves one client connection until either side closes it.
pub(crate) async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    inner_port: u16,
    fs: ShoalFs,
    verifier: [u8; 8],
) {
    let library = match TcpStream::connect((Ipv4Addr::LOCALHOST, inner_port)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot reach the NFS protocol listener: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = library.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_library, mut to_library) = library.into_split();
    let (replies, mut queued) = mpsc::channel::<Vec<u8>>(REPLIES_QUEUED);

    let writer = tokio::spawn(async move {
        while let Some(reply) = queued.recv().await {
            to_client.write_all(&reply).await?;
        }
        to_client.shutdown().await
    });
    let library_replies = replies.clone();
    // Dropped when the library's side ends: then the connection ends too.
    let (library_open, mut library_closed) = tokio::sync::oneshot::channel::<()>();
    let passed_back = tokio::spawn(async move {
        let _open = library_open;
        while let Some(reply) = read_record(&mut from_library, MAX_LIBRARY_RECORD).await? {
            if library_replies.send(reply).await.is_err() {
                break;
            }
        }
        io::Result::Ok(())
    });

    let calls = std::sync::Arc::new(tokio::sync::Semaphore::new(CALLS_AT_ONCE));
    let ended: io::Result<()> = async {
        loop {
            let record = tokio::select! {
                record = read_record(&mut from_client, MAX_RECORD) => record?,
                _ = &mut library_closed => None,
            };
            let Some(record) = record else {
                return Ok(());
            };
            match Fast::parse(&record[MARK..], &verifier) {
                Some(call) => {
                    let Ok(turn) = calls.clone().acquire_owned().await else {
                        return Ok(());
                    };
                    let (fs, replies) = (fs.clone(), replies.clone());
                    tokio::spawn(async move {
                        let _turn = turn;
                        let reply =
                            tokio::task::spawn_blocking(move || call.serve(&fs, &record, verifier))
                                .await;
                        if let Ok(reply) = reply {
                            let _ = replies.send(reply).await;
                        }
                    });
                }
                None => to_library.write_all(&record).await?,
            }
        }
    }
    .await;
    if let Err(e) = &ended {
        debug!(client = %peer, "NFS connection ended: {e}");
    }
    // The library sees the end, answers what it has and closes; the writer ends once every reply
    // in flight has gone out.
    let _ = to_library.shutdown().await;
    drop(replies);
    let _ = passed_back.await;
    let _ = writer.await;
    debug!(client = %peer, "NFS connection closed");
}

/// Reads one record (all its fragments) into a buffer that starts with a record mark for it as a
/// single last fragment, ready to be sent on as it is; at most `max` bytes. `None` at a clean end
/// of the stream.
async fn read_record(from: &mut OwnedReadHalf, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut record: Vec<u8> = Vec::new();
    loop {
        let mut mark = [0u8; MARK];
        match from.read_exact(&mut mark).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && record.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let mark = u32::from_be_bytes(mark);
        let last = mark & 0x8000_0000 != 0;
        let len = (mark & 0x7fff_ffff) as usize;
        let had = record.len().max(MARK);
        if had - MARK + len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a record of more than {max} bytes"),
            ));
        }
        if record.is_empty() {
            record.reserve_exact(MARK + len);
            record.extend_from_slice(&[0; MARK]);
        } else {
            record.reserve(len);
        }
        read_exactly(from, &mut record, len).await?;
        if last {
            let whole = (record.len() - MARK) as u32;
            record[..MARK].copy_from_slice(&(0x8000_0000 | whole).to_be_bytes());
            return Ok(Some(record));
        }
    }
}

/// Appends exactly `len` bytes from `from` to `buf`, into its spare capacity (no zeroing).
async fn read_exactly(
    from: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    len: usize,
) -> io::Result<()> {
    let target = buf.len() + len;
    while buf.len() < target {
        let n = from.take((target - buf.len()) as u64).read_buf(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// XDR, read in place.
struct Xdr<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Xdr<'a> {
    fn u32(&mut self) -> Option<u32> {
        let word = self.buf.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) << 32 | u64::from(self.u32()?))
    }

    /// Variable-length opaque data of at most `max` bytes: its range in the buffer.
    fn opaque(&mut self, max: usize) -> Option<std::ops::Range<usize>> {
        let len = self.u32()? as usize;
        if len > max {
            return None;
        }
        let start = self.at;
        let padded = len.checked_add(3)? & !3;
        if start.checked_add(padded)? > self.buf.len() {
            return None;
        }
        self.at += padded;
        Some(start..start + len)
    }

    fn at_end(&self) -> bool {
        self.at == self.buf.len()
    }
}

/// A READ or WRITE this module serves, parsed from a call record (without its mark).
#[derive(Debug)]
struct Fast {
    xid: u32,
    fh: Fh,
    offset: u64,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Read {
        count: u32,
    },
    /// `data`: where the bytes are in the record (mark included).
    Write {
        stable: stable_how,
        data: std::ops::Range<usize>,
    },
}

impl Fast {
    /// The call if it is an NFSv3 READ or WRITE, well-formed, with a handle of this server's
    /// generation; anything else (other calls, malformed arguments, stale or foreign handles) is
    /// the library's to answer.
    fn parse(call: &[u8], verifier: &[u8; 8]) -> Option<Fast> {
        let mut x = Xdr { buf: call, at: 0 };
        let xid = x.u32()?;
        // CALL, RPC version 2, NFS version 3.
        if x.u32()? != 0 || x.u32()? != 2 || x.u32()? != NFS_PROGRAM || x.u32()? != NFS_V3 {
            return None;
        }
        let procedure = x.u32()?;
        if procedure != NFSPROC3_READ && procedure != NFSPROC3_WRITE {
            return None;
        }
        // Credential and verifier: any flavor (the library authorizes every one; the file system
        // squashes identities), at most 400 bytes each.
        let _flavor = x.u32()?;
        x.opaque(400)?;
        let _flavor = x.u32()?;
        x.opaque(400)?;
        let handle = x.opaque(64)?;
        let handle = &call[handle];
        if handle.len() < 8 || handle[..8] != verifier[..] {
            return None;
        }
        let fh = Fh::from_bytes(&handle[8..])?;
        let offset = x.u64()?;
        let count = x.u32()?;
        let op = if procedure == NFSPROC3_READ {
            Op::Read { count }
        } else {
            let stable = match x.u32()? {
                0 => stable_how::UNSTABLE,
                1 => stable_how::DATA_SYNC,
                2 => stable_how::FILE_SYNC,
                _ => return None,
            };
            let data = x.opaque(MAX_RECORD)?;
            if data.len() != count as usize {
                return None;
            }
            Op::Write {
                stable,
                data: data.start + MARK..data.end + MARK,
            }
        };
        if !x.at_end() {
            return None;
        }
        Some(Fast {
            xid,
            fh,
            offset,
            op,
        })
    }

    /// Serves the call; the reply as a whole record, mark included.
    fn serve(self, fs: &ShoalFs, record: &[u8], verifier: [u8; 8]) -> Vec<u8> {
        match self.op {
            Op::Read { count } => read_reply(fs, self.xid, &self.fh, self.offset, count),
            Op::Write { stable, data } => {
                let data = &record[data];
                let res = match fs.write_at(&self.fh, self.offset, data, stable) {
                    Ok((before, after, committed)) => WRITE3res::Ok(WRITE3resok {
                        file_wcc: wcc_data {
                            before: Nfs3Option::Some(before),
                            after: Nfs3Option::Some(after),
                        },
                        count: data.len() as u32,
                        committed,
                        verf: writeverf3(verifier),
                    }),
                    Err(stat) => {
                        debug!(handle = ?self.fh, "NFS write failed: {stat}");
                        WRITE3res::Err((stat, WRITE3resfail::default()))
                    }
                };
                let mut reply = reply_head(self.xid, 128);
                pack(&res, &mut reply);
                seal(reply)
            }
        }
    }
}

/// A READ reply: the bytes go from the file straight into the reply record.
fn read_reply(fs: &ShoalFs, xid: u32, fh: &Fh, offset: u64, count: u32) -> Vec<u8> {
    let mut reply = reply_head(xid, 128 + count.min(crate::MAX_TRANSFER) as usize);
    let head = reply.len();
    // status, post_op_attr (present + fattr3), count, eof, opaque length: filled in after the read.
    let fixed = 4 + 4 + FATTR3_LEN + 4 + 4 + 4;
    reply.resize(head + fixed, 0);
    match fs.read_into(fh, offset, count, &mut reply) {
        Ok((attributes, eof)) => {
            let n = reply.len() - head - fixed;
            let mut words = Vec::with_capacity(fixed);
            pack(&nfsstat3::NFS3_OK, &mut words);
            pack(&Nfs3Option::<fattr3>::Some(attributes), &mut words);
            pack(&(n as u32), &mut words);
            pack(&eof, &mut words);
            pack(&(n as u32), &mut words);
            debug_assert_eq!(words.len(), fixed);
            reply[head..head + fixed].copy_from_slice(&words);
            reply.resize(reply.len() + (4 - n % 4) % 4, 0);
        }
        Err(stat) => {
            debug!(handle = ?fh, "NFS read failed: {stat}");
            reply.truncate(head);
            pack(&stat, &mut reply);
            pack(&Nfs3Option::<fattr3>::None, &mut reply);
        }
    }
    seal(reply)
}

/// A record mark (filled in by [`seal`]) and an accepted, successful RPC reply header.
fn reply_head(xid: u32, capacity: usize) -> Vec<u8> {
    let mut reply = Vec::with_capacity(MARK + 24 + capacity);
    reply.extend_from_slice(&[0; MARK]);
    // xid, REPLY, MSG_ACCEPTED, verifier AUTH_NONE with no body, SUCCESS.
    for word in [xid, 1, 0, 0, 0, 0] {
        reply.extend_from_slice(&word.to_be_bytes());
    }
    reply
}

fn seal(mut reply: Vec<u8>) -> Vec<u8> {
    let len = (reply.len() - MARK) as u32;
    reply[..MARK].copy_from_slice(&(0x8000_0000 | len).to_be_bytes());
    reply
}

fn pack(value: &impl Pack, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = value.pack(out);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    fn call(procedure: u32, args: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        // xid 9, CALL, RPC 2, NFS, v3, procedure, AUTH_UNIX with an 8-byte body, AUTH_NONE.
        for w in [9, 0, 2, NFS_PROGRAM, NFS_V3, procedure, 1, 8, 0, 0, 0, 0] {
            c.extend_from_slice(&u32::to_be_bytes(w));
        }
        c.extend_from_slice(args);
        c
    }

    fn handle(generation: [u8; 8], fh: [u8; 24]) -> Vec<u8> {
        let mut h = 32u32.to_be_bytes().to_vec();
        h.extend_from_slice(&generation);
        h.extend_from_slice(&fh);
        h
    }

    #[test]
    fn reads_and_writes_are_taken_and_everything_else_passed_on() {
        let generation = 77u64.to_le_bytes();
        let fh = [5u8; 24];
        let mut read = handle(generation, fh);
        read.extend_from_slice(&1000u64.to_be_bytes());
        read.extend_from_slice(&4096u32.to_be_bytes());
        let parsed = Fast::parse(&call(NFSPROC3_READ, &read), &generation).unwrap();
        assert_eq!((parsed.xid, parsed.offset), (9, 1000));
        assert!(matches!(parsed.op, Op::Read { count: 4096 }));

        let mut write = handle(generation, fh);
        write.extend_from_slice(&0u64.to_be_bytes());
        write.extend_from_slice(&5u32.to_be_bytes());
        write.extend_from_slice(&2u32.to_be_bytes());
        write.extend_from_slice(&5u32.to_be_bytes());
        write.extend_from_slice(b"hello\0\0\0");
        let record = call(NFSPROC3_WRITE, &write);
        let parsed = Fast::parse(&record, &generation).unwrap();
        let Op::Write { stable, data } = parsed.op else {
            panic!("not a write")
        };
        assert_eq!(stable, stable_how::FILE_SYNC);
        // The range counts the record mark in front of the call.
        assert_eq!(&record[data.start - MARK..data.end - MARK], b"hello");

        // Left to the library: other procedures, other programs, another generation's handle,
        // a count that is not the data's length, a bad stability, missing or trailing bytes.
        assert!(Fast::parse(&call(1, &read), &generation).is_none());
        let mut other = call(NFSPROC3_READ, &read);
        other[12..16].copy_from_slice(&100_005u32.to_be_bytes());
        assert!(Fast::parse(&other, &generation).is_none());
        assert!(Fast::parse(&call(NFSPROC3_READ, &read), &78u64.to_le_bytes()).is_none());
        let mut bad = write.clone();
        bad[32 + 4 + 8..32 + 4 + 12].copy_from_slice(&6u32.to_be_bytes());
        assert!(Fast::parse(&call(NFSPROC3_WRITE, &bad), &generation).is_none());
        let mut bad = write.clone();
        bad[32 + 4 + 12..32 + 4 + 16].copy_from_slice(&3u32.to_be_bytes());
        assert!(Fast::parse(&call(NFSPROC3_WRITE, &bad), &generation).is_none());
        assert!(
            Fast::parse(
                &call(NFSPROC3_WRITE, &write[..write.len() - 4]),
                &generation
            )
            .is_none()
        );
        let mut long = write.clone();
        long.extend_from_slice(&[0; 4]);
        assert!(Fast::parse(&call(NFSPROC3_WRITE, &long), &generation).is_none());
        for cut in 0..read.len() {
            assert!(Fast::parse(&call(NFSPROC3_READ, &read[..cut]), &generation).is_none());
        }
    }

    #[tokio::test]
    async fn records_are_read_whole_across_fragments_and_refused_when_huge() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // One record in two fragments, then one too large.
            s.write_all(&3u32.to_be_bytes()).await.unwrap();
            s.write_all(b"abc").await.unwrap();
            s.write_all(&(0x8000_0000u32 | 2).to_be_bytes())
                .await
                .unwrap();
            s.write_all(b"de").await.unwrap();
            s.write_all(&(0x8000_0000u32 | (MAX_RECORD as u32 + 1)).to_be_bytes())
                .await
                .unwrap();
            s
        });
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, _w) = s.into_split();
        let record = read_record(&mut r, MAX_RECORD).await.unwrap().unwrap();
        assert_eq!(&record[..MARK], &(0x8000_0000u32 | 5).to_be_bytes());
        assert_eq!(&record[MARK..], b"abcde");
        assert_eq!(
            read_record(&mut r, MAX_RECORD).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        drop(sender.await.unwrap());
        assert!(read_record(&mut r, MAX_RECORD).await.unwrap().is_none());
    }
}
