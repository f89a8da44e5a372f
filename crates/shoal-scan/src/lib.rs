//! shoal's file-system layer: keeps each namespace's index equal to its disk.
//!
//! [`walk`] reads the disk (parallel, never following symlinks, skipping `.sync/`, temporary files,
//! ignored and non-UTF-8 names), [`hash`] reads one file without recording a torn state,
//! [`scanner`] turns the difference between disk and index into index changes, and [`folder`] runs
//! one thread per namespace that watches with inotify and rescans what changed. [`writeback`]
//! tells the kernel when to write out and forget what the writers above (puller, NFS) wrote.
//!
//! **Invariant: never writes inside a namespace.** It only reads the disk and writes the index.

pub mod folder;
pub mod hash;
pub mod progress;
pub mod scanner;
pub mod walk;
pub mod writeback;

pub use folder::{Folder, FolderOptions, FolderState, FolderStatus, ScanRequests};
pub use hash::cores;
pub use progress::{Progress, ProgressSnapshot};
pub use scanner::{IGNORE_FILE, ScanError, ScanReport, Scanner, minimal_roots, release_memory};
pub use writeback::{WriteBehind, start_writeback};
