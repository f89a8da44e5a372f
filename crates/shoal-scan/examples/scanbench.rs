//! Measures the scanner and the watcher (bench/scan.sh drives it; see BENCHMARKS.md).
//!
//! `scanbench scan DIR`     — initial scan of DIR into a fresh index, then a rescan with nothing
//!                            changed; prints one JSON line.
//! `scanbench latency DIR N` — with the watcher running on DIR, writes N files one at a time and
//!                            measures the time from the end of each write to its index commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::secret::ShareId;
use shoal_core::version::DeviceId;
use shoal_index::Index;
use shoal_scan::{Folder, FolderOptions, Scanner};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("scan") if args.len() == 3 => scan(&args[2]),
        Some("latency") if args.len() == 4 => match args[3].parse() {
            Ok(n) => latency(&args[2], n),
            Err(_) => Err("N must be a number".into()),
        },
        _ => Err("usage: scanbench scan DIR | scanbench latency DIR N".into()),
    };
    if let Err(e) = result {
        eprintln!("scanbench: {e}");
        std::process::exit(2);
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn scan(dir: &str) -> Res {
    let state = tempfile::tempdir()?;
    let index_path = state.path().join("bench.redb");
    let rss_before = rss_kib("VmRSS");
    let index = Arc::new(Index::open(&index_path, &ShareId([3; 16]))?);
    let scanner = Scanner::new(dir.into(), index.clone(), DeviceId(1));
    let t = Instant::now();
    let first = scanner.scan_all()?;
    let initial = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let second = scanner.scan_all()?;
    let rescan = t.elapsed().as_secs_f64();
    assert_eq!(second.recorded(), 0, "nothing changed, nothing recorded");
    let counts = index.counts()?;
    let entries = counts.files + counts.dirs + counts.symlinks;
    let rss_after = rss_kib("VmRSS");
    let index_bytes = std::fs::metadata(&index_path)?.len();
    println!(
        "{{\"files\":{},\"bytes\":{},\"initial_s\":{:.3},\"initial_mb_s\":{:.0},\"initial_files_s\":{:.0},\"rescan_s\":{:.3},\"peak_rss_mib\":{:.1},\"rest_rss_bytes_per_entry\":{:.0},\"index_bytes_per_entry\":{:.0},\"hashed_bytes\":{}}}",
        counts.files,
        counts.bytes,
        initial,
        counts.bytes as f64 / initial / 1e6,
        entries as f64 / initial,
        rescan,
        rss_kib("VmHWM") as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / entries.max(1) as f64,
        index_bytes as f64 / entries.max(1) as f64,
        first.hashed_bytes,
    );
    Ok(())
}

fn latency(dir: &str, n: usize) -> Res {
    let state = tempfile::tempdir()?;
    let index = Arc::new(Index::open(
        &state.path().join("bench.redb"),
        &ShareId([3; 16]),
    )?);
    let root = std::path::PathBuf::from(dir);
    let folder = Folder::start(
        Scanner::new(root.clone(), index.clone(), DeviceId(1)),
        FolderOptions::default(),
        "bench",
    )?;
    let settle = Instant::now();
    while folder.status().state != shoal_scan::FolderState::Idle {
        if settle.elapsed() > Duration::from_secs(600) {
            return Err("the first scan did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let before = index.max_seq();
        let path = root.join(format!("latency-{}.txt", i % 50));
        std::fs::write(&path, format!("line {i}\n"))?;
        let t = Instant::now();
        while index.max_seq() == before {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("write {i} never reached the index").into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{{\"writes\":{n},\"p50_ms\":{:.1},\"p90_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1}}}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        samples[samples.len() - 1]
    );
    folder.stop();
    Ok(())
}

/// A field of /proc/self/status in KiB (VmRSS now, VmHWM the peak).
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
