//! Loopback throughput: plain TCP, TLS 1.3 (rustls + aws-lc-rs) and shoal's framed `ChunkData`
//! stream over an established session, in one run on the same machine.
//!
//! Both ends run in this process on one 2-worker tokio runtime, so the CPU figure is the sum of
//! sender and receiver (user + system time from /proc/self/stat), per GiB moved. Each mode moves
//! `GIB` GiB in 1 MiB writes/chunks, `RUNS` times; the median run is printed.
//!
//! Run: `cargo run --release --manifest-path bench/net/Cargo.toml [GIB] [RUNS]`

use std::time::Instant;

use rustls::pki_types::ServerName;
use shoal_net::{Event, Hello, Message, NodeIdentity, PROTOCOL_VERSION, TlsSetup};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BLOCK: usize = 1 << 20;
type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let gib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bytes = gib << 30;
    println!("| mode | MB/s | CPU-s per GiB (both sides) |\n|---|---|---|");
    for mode in ["tcp", "tls", "shoal"] {
        let mut results = Vec::new();
        for _ in 0..runs {
            let (cpu0, t0) = (cpu_seconds()?, Instant::now());
            rt.block_on(run(mode, bytes))?;
            let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds()? - cpu0);
            results.push((bytes as f64 / secs / 1e6, cpu / gib as f64));
        }
        results.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mbs, cpu) = results[results.len() / 2];
        println!("| {mode} | {mbs:.0} | {cpu:.2} |");
    }
    Ok(())
}

async fn run(mode: &str, bytes: u64) -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (a, b) = (NodeIdentity::generate()?, NodeIdentity::generate()?);
    let (sa, sb) = (TlsSetup::new(&a)?, TlsSetup::new(&b)?);
    let hello = |id: &NodeIdentity| Hello {
        version: PROTOCOL_VERSION,
        node_id: id.node_id(),
        device_name: "bench".into(),
        listen_port: 0,
    };
    match mode {
        "tcp" => {
            let server = tokio::spawn(async move { sink(listener.accept().await?.0, bytes).await });
            source(&mut TcpStream::connect(addr).await?, bytes).await?;
            server.await??;
        }
        "tls" => {
            let acceptor = tokio_rustls::TlsAcceptor::from(sb.server_config());
            let server = tokio::spawn(async move {
                let tls = acceptor.accept(listener.accept().await?.0).await?;
                sink(tls, bytes).await
            });
            let name = ServerName::try_from("shoal.invalid")?;
            let connector = tokio_rustls::TlsConnector::from(sa.client_config(None)?);
            let mut tls = connector
                .connect(name, TcpStream::connect(addr).await?)
                .await?;
            source(&mut tls, bytes).await?;
            // Keep our end open until the sink has everything: closing a socket with unread
            // session tickets in its receive buffer sends a reset that can overtake the data.
            server.await??;
            drop(tls);
        }
        _ => {
            let hb = hello(&b);
            let server = tokio::spawn(async move {
                let mut s = shoal_net::accept(&sb, listener.accept().await?.0, &hb).await?;
                let mut got = 0u64;
                while got < bytes {
                    match s.events.recv().await {
                        Some(Event::Message(Message::ChunkData { bytes, .. })) => {
                            got += bytes.len() as u64
                        }
                        other => return Err(format!("unexpected {other:?}").into()),
                    }
                }
                Ok::<_, Error>(())
            });
            let s = shoal_net::connect(&sa, addr, None, &hello(&a)).await?;
            let block = vec![0x5a; BLOCK];
            for id in 0..bytes / BLOCK as u64 {
                s.conn
                    .send(&Message::ChunkData {
                        id,
                        bytes: block.clone(),
                    })
                    .await?;
            }
            server.await??;
        }
    }
    Ok(())
}

async fn source<S: AsyncWrite + Unpin>(s: &mut S, bytes: u64) -> Result<(), Error> {
    let block = vec![0x5a; BLOCK];
    for _ in 0..bytes / BLOCK as u64 {
        s.write_all(&block)
            .await
            .map_err(|e| format!("source write: {e}"))?;
    }
    s.flush().await.map_err(|e| format!("source flush: {e}"))?;
    let _ = s.shutdown().await; // the sink may already be gone: it stops once it has every byte
    Ok(())
}

async fn sink<S: AsyncRead + Unpin>(mut s: S, bytes: u64) -> Result<(), Error> {
    let mut buf = vec![0; BLOCK];
    let mut got = 0u64;
    while got < bytes {
        match s
            .read(&mut buf)
            .await
            .map_err(|e| format!("sink read after {got}: {e}"))?
        {
            0 => return Err("stream ended early".into()),
            n => got += n as u64,
        }
    }
    Ok(())
}

/// User + system CPU time of this process, from /proc/self/stat (clock ticks at 100 Hz).
fn cpu_seconds() -> Result<f64, Error> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("bad /proc/self/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}
