//! `ctl`: btsync.docker's commands, with its output and exit codes.
//!
//! Changes (`add`, `del`) go to the running daemon when there is one, so they are live when `ctl`
//! returns; with no daemon, `ctl` edits the config file itself and the daemon picks it up when it
//! starts. Reads (`list`, `has`, `path`, `secret`) come from the config file, which is the truth in
//! both cases. stdout carries only the answer (for `$(ctl path gitlab)`); logs go to stderr.

use std::io::IsTerminal;

use anyhow::Context;
use serde_json::json;
use shoal_core::secret::Secret;
use tracing::debug;

use crate::cli::{Ctl, Scope};
use crate::control::{self, Outcome, Reply, Request};
use crate::error::{EXIT_FAILURE, EXIT_NOT_RUNNING, user_error};
use crate::ops;
use crate::settings::Settings;

/// Runs one ctl command; returns the process exit code.
pub fn run(settings: &Settings, command: Ctl) -> anyhow::Result<i32> {
    let json = settings.global.json;
    match command {
        Ctl::Init => {
            let created = ops::init(settings)?;
            let path = settings.config_path.display();
            if created {
                debug!("wrote a new config to {path}");
            } else {
                debug!("kept the existing config at {path}");
            }
            if json {
                println!(
                    "{}",
                    json!({ "config": settings.config_path, "created": created })
                );
            }
        }
        Ctl::Add { secret, namespace } => {
            let request = Request::Add {
                namespace: namespace.clone(),
                secret: secret.clone(),
            };
            let data = match via_daemon(settings, &request)? {
                Some(data) => data,
                None => {
                    let added = ops::add(settings, &namespace, secret.as_deref(), false)?;
                    json!({ "namespace": added.name, "dir": added.dir, "live": false })
                }
            };
            debug!("added namespace {namespace}");
            if json {
                println!("{data}");
            }
        }
        Ctl::Del { namespace } => {
            let request = Request::Del {
                namespace: namespace.clone(),
            };
            let data = match via_daemon(settings, &request)? {
                Some(data) => data,
                None => {
                    let dir = ops::del(settings, &namespace)?;
                    json!({ "namespace": namespace, "dir": dir, "live": false })
                }
            };
            debug!("removed namespace {namespace}; its files stay on disk");
            if json {
                println!("{data}");
            }
        }
        Ctl::Path { scope, namespace } => {
            let name = ops::parse_name(&namespace)?;
            let config = ops::load(settings)?;
            if config.folder(&name).is_none() {
                return Err(user_error(ops::no_such_namespace(&name, settings)));
            }
            let root = match scope {
                Scope::Host => &settings.host_data_path,
                Scope::Container => &settings.data_path,
            };
            let path = root.join(name.as_str());
            if json {
                println!("{}", json!({ "namespace": name, "path": path }));
            } else {
                println!("{}", path.display());
            }
        }
        Ctl::Has { namespace } => {
            let name = ops::parse_name(&namespace)?;
            let config = ops::load(settings)?;
            return Ok(if config.folder(&name).is_some() {
                0
            } else {
                EXIT_FAILURE
            });
        }
        Ctl::List => {
            let names = ops::load(settings)?.namespaces();
            if json {
                println!("{}", json!(names));
            } else {
                let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
                println!("{}", names.join(" "));
            }
        }
        Ctl::Secret { namespace } => {
            let name = ops::parse_name(&namespace)?;
            let config = ops::load(settings)?;
            let folder = config
                .folder(&name)
                .ok_or_else(|| user_error(ops::no_such_namespace(&name, settings)))?;
            print_secret(&folder.secret, json);
        }
        Ctl::Status => return status(settings, json),
    }
    Ok(0)
}

/// Sends a change to the daemon. `None`: no daemon is running, do it locally.
fn via_daemon(settings: &Settings, request: &Request) -> anyhow::Result<Option<serde_json::Value>> {
    match control::call(&settings.socket_path(), request)? {
        Outcome::NotRunning => Ok(None),
        Outcome::Replied(reply) => reply_data(reply).map(Some),
    }
}

fn reply_data(reply: Reply) -> anyhow::Result<serde_json::Value> {
    if reply.ok {
        return Ok(reply.data);
    }
    let message = reply
        .error
        .unwrap_or_else(|| "the daemon refused the request".to_owned());
    if reply.code == crate::error::EXIT_BAD_INPUT {
        Err(user_error(message))
    } else {
        Err(anyhow::anyhow!(message))
    }
}

pub fn print_secret(secret: &Secret, json: bool) {
    let read_write = match secret {
        Secret::ReadWrite(rw) => Some(rw.to_string()),
        Secret::ReadOnly(_) => None,
    };
    let read_only = secret.read_only().to_string();
    let share_id = secret.share_id().to_string();
    if json {
        println!(
            "{}",
            json!({ "read_write": read_write, "read_only": read_only, "share_id": share_id })
        );
        return;
    }
    match read_write {
        Some(rw) => println!("read-write: {rw}"),
        None => println!("read-write: (not held: this node has the read-only secret)"),
    }
    println!("read-only:  {read_only}");
    println!("share id:   {share_id}");
}

fn status(settings: &Settings, json: bool) -> anyhow::Result<i32> {
    let reply = match control::call(&settings.socket_path(), &Request::Status)? {
        Outcome::Replied(reply) => reply_data(reply)?,
        Outcome::NotRunning => {
            let config = ops::load(settings)?;
            let names = config.namespaces();
            if json {
                println!("{}", json!({ "running": false, "namespaces": names }));
            } else {
                println!(
                    "daemon: not running (state {})",
                    settings.state_path.display()
                );
                for name in names {
                    println!("  {name:<24} stopped");
                }
            }
            return Ok(EXIT_NOT_RUNNING);
        }
    };
    if json {
        println!("{reply}");
        return Ok(0);
    }
    print_status(&reply).context("the daemon's status reply is malformed")?;
    Ok(0)
}

fn print_status(status: &serde_json::Value) -> Option<()> {
    let color = std::io::stdout().is_terminal();
    let (bold, dim, reset) = if color {
        ("\x1b[1m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    println!(
        "{bold}daemon{reset}: running, pid {}, up {}, device {}, shoal {}",
        status.get("pid")?,
        duration(status.get("uptime_secs")?.as_u64()?),
        status.get("device_name")?.as_str()?,
        status.get("version")?.as_str()?,
    );
    let node = status.get("node_id").and_then(|n| n.as_str()).unwrap_or("");
    match status.get("listen").and_then(|l| l.as_str()) {
        Some(listen) => println!(
            "{bold}node{reset}:   {} accepting peers on {listen}",
            short(node)
        ),
        None => println!(
            "{bold}node{reset}:   {} not accepting peers (--listen none)",
            short(node)
        ),
    }
    if let Some(nfs) = status.get("nfs") {
        let allow = nfs
            .get("allow")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        match nfs.get("state").and_then(|s| s.as_str()) {
            Some("serving") => println!(
                "{bold}nfs{reset}:    port {} (mount node:/NAMESPACE), clients from {allow}",
                nfs.get("port").and_then(|p| p.as_u64()).unwrap_or(0)
            ),
            Some("error") => println!(
                "{bold}nfs{reset}:    OFF: {}",
                nfs.get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("unknown error")
            ),
            _ => println!("{bold}nfs{reset}:    off (NFS=off)"),
        }
    }
    let namespaces = status.get("namespaces")?.as_array()?;
    if namespaces.is_empty() {
        println!("no namespaces (add one with `ctl add NAME`)");
    }
    for ns in namespaces {
        println!();
        println!(
            "{bold}{}{reset}  {}  {}  {dim}{}{reset}",
            ns.get("name")?.as_str()?,
            ns.get("state")?.as_str()?,
            ns.get("access")?.as_str()?,
            ns.get("dir")?.as_str()?,
        );
        // Paused: the sync lines below say it, in more detail.
        if let Some(detail) = ns.get("detail").and_then(|d| d.as_str())
            && ns.get("state").and_then(|s| s.as_str()) != Some("paused")
        {
            println!("    {detail}");
        }
        if let Some(c) = ns.get("index").and_then(|i| i.get("counts")) {
            let n = |k: &str| c.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            println!(
                "    {} files, {} ({} directories, {} symlinks, {} deleted)",
                n("files"),
                bytes(n("bytes")),
                n("dirs"),
                n("symlinks"),
                n("deleted"),
            );
        }
        if let Some(scan) = ns.get("scan") {
            print_scan(scan);
        }
        if let Some(sync) = ns.get("sync").filter(|s| !s.is_null()) {
            print_sync(sync);
        }
        let peers = ns.get("peers").and_then(|p| p.as_array());
        match peers {
            Some(peers) if !peers.is_empty() => {
                println!("    peers:");
                for p in peers {
                    print_peer(p)?;
                }
            }
            _ => println!("    no peers yet"),
        }
    }
    Some(())
}

fn print_scan(scan: &serde_json::Value) {
    if let Some(error) = scan.get("error").and_then(|e| e.as_str()) {
        println!("    scan error: {error}");
    }
    let progress = scan.get("progress");
    let p = |k: &str| {
        progress
            .and_then(|p| p.get(k))
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    };
    let scanning = progress
        .and_then(|p| p.get("scanning"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    if scanning {
        let total = p("bytes_total");
        let done = p("bytes_done");
        let percent = if total > 0.0 {
            100.0 * done / total
        } else {
            0.0
        };
        println!(
            "    scanning: {:.0}/{:.0} files, {} of {} ({percent:.0}%), {}/s",
            p("files_done"),
            p("files_total"),
            bytes(done as u64),
            bytes(total as u64),
            bytes(p("bytes_per_s") as u64),
        );
    }
    if scan.get("watching").and_then(|w| w.as_bool()) == Some(false) {
        println!("    not watching for changes: periodic scans only (see the log)");
    }
}

fn print_sync(sync: &serde_json::Value) {
    let n = |k: &str| sync.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    match sync.get("state").and_then(|s| s.as_str()) {
        Some("syncing") => {
            let left = n("bytes_left");
            let done = n("bytes_done");
            let total = left + done;
            let rate = sync
                .get("bytes_per_s")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            let bar = progress_bar(done, total);
            println!(
                "    syncing: {bar} {} files left, {} of {}, {}/s",
                n("files_left"),
                bytes(done),
                bytes(total),
                bytes(rate as u64),
            );
        }
        Some("retrying") => {
            let why = sync.get("error").and_then(|e| e.as_str()).unwrap_or("?");
            println!("    sync retrying: {why}");
        }
        Some("paused") => print_paused(sync),
        _ => {}
    }
    if n("ahead_files") > 0 {
        println!(
            "    fetching ahead: {} new file{} a peer is still reading, {} so far",
            n("ahead_files"),
            if n("ahead_files") == 1 { "" } else { "s" },
            bytes(n("ahead_bytes")),
        );
    }
    if n("files_pulled") > 0 || n("conflicts") > 0 {
        println!(
            "    since start: {} files pulled, {} fetched, {} reused locally, {} conflicts",
            n("files_pulled"),
            bytes(n("fetched_bytes")),
            bytes(n("copied_bytes")),
            n("conflicts"),
        );
    }
}

/// Paused because the disk is full: how much is missing where, and that it resumes by itself.
fn print_paused(sync: &serde_json::Value) {
    let Some(full) = sync.get("disk_full").filter(|f| !f.is_null()) else {
        let why = sync.get("error").and_then(|e| e.as_str()).unwrap_or("?");
        println!("    sync paused: {why}");
        return;
    };
    let n = |k: &str| full.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let mount = full.get("mount").and_then(|m| m.as_str()).unwrap_or("?");
    let files = match n("files") {
        1 => "1 file".to_owned(),
        f => format!("{f} files"),
    };
    println!("    sync paused: the disk is full ({mount})");
    println!(
        "      {} more needed for {files}, {} free ({} always kept free)",
        bytes(n("needed_bytes")),
        bytes(n("free_bytes")),
        bytes(n("kept_free_bytes")),
    );
    println!("      free some space there: syncing resumes by itself");
}

/// `[#####.....]` for `done` of `total`.
fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(0);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize)
    )
}

fn print_peer(p: &serde_json::Value) -> Option<()> {
    let n = |k: &str| p.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let state = p.get("state")?.as_str()?;
    let when = if state == "connected" {
        format!(
            "connected {} ({}), seen {} ago",
            duration(n("connected_for_s")),
            p.get("direction")?.as_str()?,
            duration(n("last_seen_s")),
        )
    } else {
        format!("{state}, last seen {} ago", duration(n("last_seen_s")))
    };
    let refused = match n("records_refused") {
        0 => String::new(),
        r => format!(", {r} refused"),
    };
    println!(
        "      {} ({})  {}  {when}  sent {} received {}  records {}/{}{refused}",
        p.get("device_name")?.as_str()?,
        short(p.get("node_id")?.as_str()?),
        p.get("address")?.as_str()?,
        bytes(n("bytes_sent")),
        bytes(n("bytes_received")),
        n("records_sent"),
        n("records_received"),
    );
    Some(())
}

/// The first 12 hex digits of a node ID, as the logs show it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// 1536 -> "1.5 KiB" (the sync engine's format, so logs and status read alike).
fn bytes(n: u64) -> String {
    shoal_sync::space::human(n)
}

/// 3725 -> "1h2m".
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}
