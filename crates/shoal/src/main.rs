//! `shoal`: one static binary, multicall. `shoal daemon`, `shoal ctl …`, `shoal bootstrap …`; invoked
//! as `ctl` it is `shoal ctl`; with no arguments it runs the daemon, as btsync.docker's image did.
//!
//! This file only dispatches. The command line is in `cli`, where things are in `settings`, the ctl
//! commands in `ctl` and `ops`, and the node in `daemon`.

mod cli;
mod control;
mod ctl;
mod daemon;
mod error;
mod logging;
mod ops;
mod settings;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::settings::Settings;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("shoal: internal error: {info}\nThis is a bug in shoal; please report it.");
    }));
    let (program, args) = multicall(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Help and version exit 0, usage errors 2: clap knows which.
        Err(e) => e.exit(),
    };
    let settings = Settings::resolve(&cli.global);
    // The daemon keeps SIGPIPE ignored: a closed log pipe must not kill it.
    if !matches!(
        cli.command,
        None | Some(Command::Daemon | Command::Bootstrap { .. })
    ) {
        restore_sigpipe();
    }
    let result = match cli.command {
        None | Some(Command::Daemon) => {
            logging::init(&settings.debug, "info", true);
            daemon::run(settings).map(|()| 0)
        }
        Some(Command::Bootstrap { secret, namespaces }) => {
            logging::init(&settings.debug, "info", true);
            bootstrap(settings, &secret, &namespaces)
        }
        Some(Command::Ctl { command }) => {
            logging::init(&settings.debug, "warn", false);
            ctl::run(&settings, command)
        }
        Some(Command::Secret { show }) => secret(show.as_deref(), settings.global.json),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            error::report(&program, &err);
            ExitCode::from(u8::try_from(error::exit_code(&err)).unwrap_or(1))
        }
    }
}

/// `ctl …` is `shoal ctl …`. Returns the name to print in messages and the arguments for clap.
fn multicall(mut args: Vec<OsString>) -> (String, Vec<OsString>) {
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if invoked == "ctl" {
        args[0] = "shoal".into();
        args.insert(1, "ctl".into());
        return ("ctl".into(), args);
    }
    ("shoal".into(), args)
}

/// The container form: add each namespace (a restart finds them there: not an error), then run the
/// daemon. One namespace gets SECRET itself, as with btsync.docker. Several get each a secret of its
/// own derived from SECRET and its name (a share is identified by its secret, so two namespaces
/// cannot share one); every node bootstrapped with the same arguments derives the same ones.
fn bootstrap(settings: Settings, secret: &str, namespaces: &[String]) -> anyhow::Result<i32> {
    let parsed = ops::parse_secret(secret)?;
    for ns in namespaces {
        ops::parse_name(ns)?;
    }
    for ns in namespaces {
        let secret = match (&parsed, namespaces.len()) {
            (_, 1) => secret.to_owned(),
            (shoal_core::secret::Secret::ReadWrite(rw), _) => rw.child(ns).to_string(),
            (shoal_core::secret::Secret::ReadOnly(_), _) => {
                return Err(error::user_error(
                    "a read-only secret can bootstrap only one namespace: the per-namespace \
                     secrets of several derive from the read-write secret",
                ));
            }
        };
        let added = ops::add(&settings, ns, Some(&secret), true)?;
        if added.created {
            tracing::info!(namespace = %added.name, dir = %added.dir.display(), "namespace added");
        }
    }
    daemon::run(settings).map(|()| 0)
}

fn secret(show: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let secret = match show {
        Some(s) => ops::parse_secret(s)?,
        None => {
            let rw = shoal_core::secret::ReadWriteSecret::generate()?;
            if !json {
                println!("{rw}");
                return Ok(0);
            }
            shoal_core::secret::Secret::ReadWrite(rw)
        }
    };
    ctl::print_secret(&secret, json);
    Ok(0)
}

/// A CLI whose output is piped into `head` must stop quietly when the pipe closes, not report an
/// error: restore the default SIGPIPE action that the Rust runtime replaces with "ignore".
#[allow(
    unsafe_code,
    reason = "setting SIG_DFL installs no handler, so nothing can race"
)]
fn restore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL is not a Rust function; no handler code runs in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
