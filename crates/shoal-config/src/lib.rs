//! shoal's configuration file: BitTorrent Sync's `sync.conf`, as btsync.docker wrote it.
//!
//! The file at `CONFIG_PATH` (default `/data/btsync.conf`) is JSON in the shape of the `sync.conf`
//! that btsync.docker's `ctl` generated, so an existing deployment keeps its file: it loads
//! unchanged, and saving it gives back every key with the value it had. This crate owns that file
//! and nothing else — it knows nothing of the daemon, the network or the environment.
//!
//! What it promises, and how:
//!
//! - **Typed, and strict about spelling.** [`Config`], [`WebUi`] and [`SharedFolder`] name every key
//!   shoal acts on and every documented BitTorrent Sync key people have in their files. A key that
//!   is none of these is an error that names it (with a "did you mean" when it is a typo), never a
//!   silent drop: a misspelt `use_sync_trash` must not quietly turn the archive off.
//! - **Round-trips.** Keys shoal does not need are `Option`s, skipped when absent, so load → save
//!   adds nothing the file did not have (except the handful shoal requires, with their defaults)
//!   and loses nothing it had.
//! - **Errors point at the mistake.** A parse error names the file, line, column and key path:
//!   `/data/btsync.conf:1:312: shared_folders[0].secret: invalid secret …` ([`ConfigError`]).
//!   A missing file is [`ConfigError::NotFound`], so callers can say "run `ctl init`". No input,
//!   however broken, makes this crate panic.
//! - **Writes are atomic and never lose another writer's change.** [`Config::save`] writes a temp
//!   file beside the target, fsyncs, renames over and fsyncs the directory, keeping the file's mode
//!   and owner. [`edit`] runs load → change → save under an exclusive lock on `<path>.lock`, so
//!   concurrent `ctl`s and the daemon serialise instead of overwriting each other.
//!
//! ```no_run
//! use shoal_config::{Config, ConfigError};
//! use shoal_core::name::NamespaceName;
//!
//! # fn main() -> Result<(), ConfigError> {
//! let path = "/data/btsync.conf";
//! shoal_config::init(path, || Config::new_default("node-1".into(), "/data".into()))?;
//! let gitlab = NamespaceName::new("gitlab").expect("a valid name");
//! let secret = "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54".parse().expect("a valid secret");
//! shoal_config::edit(path, |config: &mut Config| {
//!     config.add_folder(gitlab.clone(), secret, "/data/gitlab".into())
//! })?;
//! assert_eq!(Config::load(path)?.namespaces(), vec![gitlab]);
//! # Ok(())
//! # }
//! ```
//!
//! The precedence defaults → file → environment → command line is applied by the binary; this crate
//! supplies the first two. `docs/config.md` documents every key for users.

mod config;
mod error;
mod folder;
mod load;
mod object;
mod store;
mod webui;

pub use config::{
    Config, DEFAULT_FOLDER_RESCAN_INTERVAL, DEFAULT_LISTENING_PORT, DEFAULT_SYNC_TRASH_TTL_DAYS,
};
pub use error::ConfigError;
pub use folder::{DirNameError, SharedFolder};
pub use load::MAX_FILE_SIZE;
pub use store::{edit, edit_or_create, init, lock_path};
pub use webui::{DEFAULT_WEBUI_LISTEN, WebUi};
