//! The file-system layer behind the NFS server: namespaces as directories under one export root.
//!
//! Rules that make it safe and correct:
//! - **No escape.** Every path is opened relative to the namespace's directory descriptor with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: `..`, absolute symlinks, symlinked
//!   directories swapped in on disk — the kernel refuses them all. Names from clients are single
//!   components (no `/`, no NUL). Symlinks are created and read, never followed by the server.
//! - **Handles stable across restarts.** A handle is (namespace id, inode, birth time): nothing that
//!   lives only in memory. The inode→path map is a cache, checked on every use (the path must still
//!   name that inode, born at that time); on a miss — after a restart, or a rename on disk — the
//!   namespace is searched. A deleted file's handle finds nothing: `NFS3ERR_STALE`.
//! - **Nothing stale.** Attributes and listings come from the file system on every call, so what
//!   sync or a local process changed is what the next call sees.
//! - **Writes reach sync at once.** Every change made through NFS is handed to the namespace's
//!   scanner (batched over 50 ms) instead of waiting for the watcher.
//! - **Stability as promised.** UNSTABLE writes go to the page cache; DATA_SYNC and FILE_SYNC writes
//!   and COMMIT are on disk before the reply. The write verifier changes only when the kernel
//!   reboots — the only event that loses page-cache data the daemon wrote (see `server.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nfs3_server::nfs3_types::nfs3::{
    FSF3_CANSETTIME, FSF3_HOMOGENEOUS, FSF3_SYMLINK, FSINFO3resok, Nfs3Option, createverf3, fattr3,
    filename3, ftype3, nfspath3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime, specdata3,
    stable_how, wcc_attr,
};
use nfs3_server::vfs::{
    DirEntryPlus, FileHandle, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator,
};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;
use shoal_core::ignore::is_temp_name;
use tracing::{debug, warn};

/// Called with namespace-relative paths changed through NFS (to scan them now).
pub type OnChange = Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// All exports report this file-system id, so a client never mistakes a namespace for a submount.
const FSID: u64 = 0x5348_4f41_4c00_0001;
/// The export root (the list of namespaces) as a file id; no real inode is u64::MAX.
const ROOT_FILEID: u64 = u64::MAX;
/// Changes made over NFS are collected this long before being handed to the scanner.
const CHANGE_BATCH: Duration = Duration::from_millis(50);
/// Bound on the inode→path cache (about 100 bytes an entry); cleared when it grows past this.
const MAX_CACHED_PATHS: usize = 500_000;

/// A namespace as NFS sees it.
struct Export {
    name: String,
    id: u64,
    root: PathBuf,
    root_fd: OwnedFd,
    read_only: bool,
    on_change: OnChange,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("root", &self.root)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// The namespace id in handles: stable for a name, never 0 (0 is the export root).
pub fn namespace_id(name: &str) -> u64 {
    let hash = blake3::hash(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(id).max(1)
}

/// The namespaces currently exported; the daemon adds and removes them while the server runs.
#[derive(Debug, Default)]
pub struct Exports {
    by_id: RwLock<BTreeMap<u64, Arc<Export>>>,
}

impl Exports {
    /// Exports (or re-exports) a namespace's directory.
    pub fn set(
        &self,
        name: &str,
        root: &Path,
        read_only: bool,
        on_change: OnChange,
    ) -> std::io::Result<()> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let export = Export {
            name: name.to_owned(),
            id: namespace_id(name),
            root: root.to_path_buf(),
            root_fd,
            read_only,
            on_change,
        };
        write(&self.by_id).insert(export.id, Arc::new(export));
        Ok(())
    }

    pub fn remove(&self, name: &str) {
        write(&self.by_id).remove(&namespace_id(name));
    }

    pub fn names(&self) -> Vec<String> {
        read(&self.by_id).values().map(|e| e.name.clone()).collect()
    }

    fn get(&self, id: u64) -> Option<Arc<Export>> {
        read(&self.by_id).get(&id).cloned()
    }

    fn by_name(&self, name: &str) -> Option<Arc<Export>> {
        self.get(namespace_id(name)).filter(|e| e.name == name)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An NFS file handle: namespace id, inode number, birth time (ns since the epoch; 0 when the file
/// system does not record it). All zero: the export root.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh([u8; 24]);

impl Fh {
    const ROOT: Fh = Fh([0; 24]);

    fn new(ns: u64, ino: u64, born: u64) -> Fh {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&ns.to_le_bytes());
        b[8..16].copy_from_slice(&ino.to_le_bytes());
        b[16..].copy_from_slice(&born.to_le_bytes());
        Fh(b)
    }

    fn field(&self, i: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
        u64::from_le_bytes(x)
    }

    fn ns(&self) -> u64 {
        self.field(0)
    }

    fn ino(&self) -> u64 {
        self.field(1)
    }

    fn born(&self) -> u64 {
        self.field(2)
    }
}

impl std::fmt::Debug for Fh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fh({:x}:{}:{})", self.ns(), self.ino(), self.born())
    }
}

impl FileHandle for Fh {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Fh)
    }
}

/// What a handle names right now.
struct Located {
    export: Arc<Export>,
    /// Relative to the namespace root, `/`-separated, "" for the root itself.
    rel: String,
    stat: rustix::fs::Statx,
}

enum Node {
    Root,
    Entry(Box<Located>),
}

/// The server's view of all namespaces: implements the protocol library's file-system traits.
#[derive(Clone)]
pub struct ShoalFs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShoalFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShoalFs")
            .field("exports", &self.inner.exports.names())
            .finish_non_exhaustive()
    }
}

struct Inner {
    exports: Arc<Exports>,
    /// (namespace, inode) → path: a cache, verified on every use.
    paths: Mutex<HashMap<(u64, u64), String>>,
    /// Paths changed over NFS and not yet handed to their scanner.
    changed: Mutex<HashMap<u64, BTreeSet<String>>>,
    flush_scheduled: AtomicBool,
    /// WRITEs to one file take turns (striped by inode): a client streams a file with several
    /// WRITEs in flight, and the file system's inode lock made all but one spin on a core.
    writing: [Mutex<()>; WRITE_STRIPES],
    uid: u32,
    gid: u32,
    started: nfstime3,
}

const WRITE_STRIPES: usize = 64;

impl ShoalFs {
    /// READ: appends up to `count` bytes from `offset` to `out` (into its spare capacity: zeroing a
    /// 1 MiB buffer per READ cost more than the copy). Returns the file's attributes as opened and
    /// whether the read reached the end of the file.
    pub(crate) fn read_into(
        &self,
        id: &Fh,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Result<(fattr3, bool), nfsstat3> {
        let (found, mut file) = self.inner.open_file(id, OFlags::RDONLY)?;
        let size = found.stat.stx_size;
        // A client may ask for more than it was offered: it gets what was offered at most.
        let want = u64::from(count.min(crate::MAX_TRANSFER)).min(size.saturating_sub(offset));
        out.reserve(usize::try_from(want).unwrap_or(0));
        let before = out.len();
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(io_errno)?;
        (&mut file).take(want).read_to_end(out).map_err(io_errno)?;
        let done = (out.len() - before) as u64;
        Ok((attributes(&found.stat), offset + done >= size))
    }

    /// WRITE: the file's attributes before (for the client's cache) and after, and the stability
    /// reached.
    pub(crate) fn write_at(
        &self,
        id: &Fh,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(wcc_attr, fattr3, stable_how), nfsstat3> {
        let inner = &self.inner;
        let (found, file) = inner.open_file(id, OFlags::WRONLY)?;
        if found.export.read_only {
            return Err(nfsstat3::NFS3ERR_ROFS);
        }
        let before = wcc_attr {
            size: found.stat.stx_size,
            mtime: time(found.stat.stx_mtime),
            ctime: time(found.stat.stx_ctime),
        };
        {
            let _turn = lock(&inner.writing[(id.ino() % WRITE_STRIPES as u64) as usize]);
            file.write_all_at(data, offset).map_err(io_errno)?;
        }
        match stable {
            // The disk starts on it now, while the client sends more: the COMMIT that follows
            // then waits for what is left, not for all of it.
            stable_how::UNSTABLE => shoal_scan::start_writeback(&file, offset, data.len() as u64),
            stable_how::DATA_SYNC => file.sync_data().map_err(io_errno)?,
            stable_how::FILE_SYNC => file.sync_all().map_err(io_errno)?,
        }
        let stat = statx_fd(file.as_fd())?;
        inner.changed(&found.export, &[&found.rel]);
        Ok((before, attributes(&stat), stable))
    }

    pub fn new(exports: Arc<Exports>) -> ShoalFs {
        ShoalFs {
            inner: Arc::new(Inner {
                exports,
                paths: Mutex::new(HashMap::new()),
                changed: Mutex::new(HashMap::new()),
                flush_scheduled: AtomicBool::new(false),
                writing: std::array::from_fn(|_| Mutex::new(())),
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
                started: nfstime3::try_from(std::time::SystemTime::now()).unwrap_or_default(),
            }),
        }
    }
}

fn errno(e: Errno) -> nfsstat3 {
    match e {
        Errno::NOENT => nfsstat3::NFS3ERR_NOENT,
        Errno::ACCESS => nfsstat3::NFS3ERR_ACCES,
        Errno::PERM => nfsstat3::NFS3ERR_PERM,
        Errno::EXIST => nfsstat3::NFS3ERR_EXIST,
        Errno::NOTDIR => nfsstat3::NFS3ERR_NOTDIR,
        Errno::ISDIR => nfsstat3::NFS3ERR_ISDIR,
        Errno::INVAL => nfsstat3::NFS3ERR_INVAL,
        Errno::FBIG => nfsstat3::NFS3ERR_FBIG,
        Errno::NOSPC => nfsstat3::NFS3ERR_NOSPC,
        Errno::ROFS => nfsstat3::NFS3ERR_ROFS,
        Errno::NAMETOOLONG => nfsstat3::NFS3ERR_NAMETOOLONG,
        Errno::NOTEMPTY => nfsstat3::NFS3ERR_NOTEMPTY,
        Errno::DQUOT => nfsstat3::NFS3ERR_DQUOT,
        Errno::XDEV => nfsstat3::NFS3ERR_XDEV,
        // A symlink or a mount point where the path expected a directory: the kernel refused to
        // leave the namespace.
        Errno::LOOP => nfsstat3::NFS3ERR_ACCES,
        _ => nfsstat3::NFS3ERR_IO,
    }
}

fn io_errno(e: std::io::Error) -> nfsstat3 {
    e.raw_os_error()
        .map_or(nfsstat3::NFS3ERR_IO, |n| errno(Errno::from_raw_os_error(n)))
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens `rel` inside the namespace; never leaves it, never follows a symlink.
fn open_beneath(export: &Export, rel: &str, flags: OFlags) -> Result<OwnedFd, nfsstat3> {
    let path = if rel.is_empty() { "." } else { rel };
    rustix::fs::openat2(
        &export.root_fd,
        path,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )
    .map_err(errno)
}

fn statx_fd(fd: impl AsFd) -> Result<rustix::fs::Statx, nfsstat3> {
    rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )
    .map_err(errno)
}

fn statx_at(dir: impl AsFd, name: &str) -> Result<rustix::fs::Statx, nfsstat3> {
    rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )
    .map_err(errno)
}

fn born(s: &rustix::fs::Statx) -> u64 {
    if s.stx_mask & StatxFlags::BTIME.bits() == 0 {
        return 0;
    }
    u64::try_from(s.stx_btime.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(s.stx_btime.tv_nsec))
}

fn kind(s: &rustix::fs::Statx) -> ftype3 {
    match u32::from(s.stx_mode) & libc::S_IFMT {
        libc::S_IFDIR => ftype3::NF3DIR,
        libc::S_IFLNK => ftype3::NF3LNK,
        libc::S_IFBLK => ftype3::NF3BLK,
        libc::S_IFCHR => ftype3::NF3CHR,
        libc::S_IFSOCK => ftype3::NF3SOCK,
        libc::S_IFIFO => ftype3::NF3FIFO,
        _ => ftype3::NF3REG,
    }
}

fn time(t: rustix::fs::StatxTimestamp) -> nfstime3 {
    nfstime3 {
        seconds: u32::try_from(t.tv_sec.max(0)).unwrap_or(u32::MAX),
        nseconds: t.tv_nsec,
    }
}

fn attributes(s: &rustix::fs::Statx) -> fattr3 {
    fattr3 {
        type_: kind(s),
        mode: u32::from(s.stx_mode) & 0o7777,
        nlink: s.stx_nlink,
        uid: s.stx_uid,
        gid: s.stx_gid,
        size: s.stx_size,
        used: s.stx_blocks.saturating_mul(512),
        rdev: specdata3 {
            specdata1: s.stx_rdev_major,
            specdata2: s.stx_rdev_minor,
        },
        fsid: FSID,
        fileid: s.stx_ino,
        atime: time(s.stx_atime),
        mtime: time(s.stx_mtime),
        ctime: time(s.stx_ctime),
    }
}

/// A single path component from a client, as UTF-8 (names the sync engine cannot carry are
/// refused rather than created).
fn component<'a>(name: &'a filename3<'_>) -> Result<&'a str, nfsstat3> {
    let bytes: &[u8] = name.as_ref();
    if bytes.len() > 255 {
        return Err(nfsstat3::NFS3ERR_NAMETOOLONG);
    }
    let name = std::str::from_utf8(bytes).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    Ok(name)
}

/// A name a client may create: a component, and not `.`/`..`.
fn new_name<'a>(name: &'a filename3<'_>) -> Result<&'a str, nfsstat3> {
    match component(name)? {
        "." | ".." => Err(nfsstat3::NFS3ERR_EXIST),
        // The puller's temporaries: never synced, so clients may not make them.
        name if is_temp_name(name) => Err(nfsstat3::NFS3ERR_ACCES),
        name => Ok(name),
    }
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Inner {
    fn handle(&self, export: &Export, stat: &rustix::fs::Statx) -> Fh {
        Fh::new(export.id, stat.stx_ino, born(stat))
    }

    fn remember(&self, ns: u64, ino: u64, rel: String) {
        let mut paths = lock(&self.paths);
        if paths.len() >= MAX_CACHED_PATHS {
            paths.clear();
        }
        paths.insert((ns, ino), rel);
    }

    fn forget(&self, ns: u64, ino: u64) {
        lock(&self.paths).remove(&(ns, ino));
    }

    /// After a rename: the entry and, for a directory, everything cached under it.
    fn moved(&self, ns: u64, ino: u64, from: &str, to: &str) {
        let mut paths = lock(&self.paths);
        let prefix = format!("{from}/");
        for ((n, _), rel) in paths.iter_mut() {
            if *n == ns && rel.starts_with(&prefix) {
                *rel = format!("{to}/{}", &rel[prefix.len()..]);
            }
        }
        paths.insert((ns, ino), to.to_owned());
    }

    /// Whether `rel` still names the file `fh` names.
    fn check(&self, export: &Arc<Export>, fh: &Fh, rel: &str) -> Option<Located> {
        let fd = open_beneath(export, rel, OFlags::PATH).ok()?;
        let stat = statx_fd(&fd).ok()?;
        (stat.stx_ino == fh.ino() && born(&stat) == fh.born()).then(|| Located {
            export: export.clone(),
            rel: rel.to_owned(),
            stat,
        })
    }

    fn locate(&self, fh: &Fh) -> Result<Node, nfsstat3> {
        if *fh == Fh::ROOT {
            return Ok(Node::Root);
        }
        let export = self.exports.get(fh.ns()).ok_or(nfsstat3::NFS3ERR_STALE)?;
        // The namespace root: one statx on the descriptor we hold, no path walk.
        if let Ok(stat) = statx_fd(&export.root_fd)
            && stat.stx_ino == fh.ino()
            && born(&stat) == fh.born()
        {
            return Ok(Node::Entry(Box::new(Located {
                export,
                rel: String::new(),
                stat,
            })));
        }
        let cached = lock(&self.paths).get(&(fh.ns(), fh.ino())).cloned();
        if let Some(found) = cached.and_then(|rel| self.check(&export, fh, &rel)) {
            return Ok(Node::Entry(Box::new(found)));
        }
        self.search(&export, fh).map(|f| Node::Entry(Box::new(f)))
    }

    /// Finds the inode by walking the namespace (after a restart, or a rename made on disk),
    /// caching the paths it passes.
    fn search(&self, export: &Arc<Export>, fh: &Fh) -> Result<Located, nfsstat3> {
        debug!(namespace = %export.name, ino = fh.ino(), "searching for a handle's file");
        let mut queue = VecDeque::from([String::new()]);
        while let Some(dir) = queue.pop_front() {
            let Ok(fd) = open_beneath(export, &dir, OFlags::RDONLY | OFlags::DIRECTORY) else {
                continue;
            };
            let Ok(entries) = rustix::fs::Dir::new(fd) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(name) = utf8_name(entry.file_name()) else {
                    continue;
                };
                let rel = join(&dir, name);
                if entry.ino() == fh.ino()
                    && let Some(found) = self.check(export, fh, &rel)
                {
                    self.remember(export.id, fh.ino(), rel);
                    return Ok(found);
                }
                if entry.file_type() == rustix::fs::FileType::Directory {
                    self.remember(export.id, entry.ino(), rel.clone());
                    queue.push_back(rel);
                }
            }
        }
        Err(nfsstat3::NFS3ERR_STALE)
    }

    fn entry(&self, fh: &Fh) -> Result<Located, nfsstat3> {
        match self.locate(fh)? {
            Node::Entry(found) => Ok(*found),
            Node::Root => Err(nfsstat3::NFS3ERR_ACCES),
        }
    }

    /// A directory in a namespace that clients may change.
    fn writable_dir(&self, fh: &Fh) -> Result<(Located, OwnedFd), nfsstat3> {
        let dir = match self.locate(fh)? {
            Node::Entry(found) => *found,
            // Namespaces are added with `ctl add`, not by clients.
            Node::Root => return Err(nfsstat3::NFS3ERR_ROFS),
        };
        if dir.export.read_only {
            return Err(nfsstat3::NFS3ERR_ROFS);
        }
        if kind(&dir.stat) != ftype3::NF3DIR {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        let fd = open_beneath(&dir.export, &dir.rel, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok((dir, fd))
    }

    fn root_attributes(&self) -> fattr3 {
        fattr3 {
            type_: ftype3::NF3DIR,
            mode: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            size: 4096,
            used: 4096,
            rdev: specdata3::default(),
            fsid: FSID,
            fileid: ROOT_FILEID,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
        }
    }

    /// Hands changed paths to the namespace's scanner, batched.
    fn changed(self: &Arc<Self>, export: &Export, paths: &[&str]) {
        {
            let mut changed = lock(&self.changed);
            let set = changed.entry(export.id).or_default();
            for p in paths {
                set.insert((*p).to_owned());
            }
        }
        if !self.flush_scheduled.swap(true, Ordering::AcqRel) {
            let inner = self.clone();
            let flush = async move {
                tokio::time::sleep(CHANGE_BATCH).await;
                inner.flush_scheduled.store(false, Ordering::Release);
                let batch = std::mem::take(&mut *lock(&inner.changed));
                for (id, paths) in batch {
                    if let Some(export) = inner.exports.get(id) {
                        (export.on_change)(paths.into_iter().collect());
                    }
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(flush);
                }
                Err(_) => self.flush_scheduled.store(false, Ordering::Release),
            }
        }
    }

    /// Opens a regular file by handle and checks it is still that file; the located entry carries
    /// the open file's own attributes.
    fn open_file(&self, fh: &Fh, flags: OFlags) -> Result<(Located, File), nfsstat3> {
        let mut found = self.entry(fh)?;
        match kind(&found.stat) {
            ftype3::NF3REG => {}
            ftype3::NF3DIR => return Err(nfsstat3::NFS3ERR_ISDIR),
            _ => return Err(nfsstat3::NFS3ERR_INVAL),
        }
        let fd = open_beneath(&found.export, &found.rel, flags)?;
        let stat = statx_fd(&fd)?;
        if stat.stx_ino != fh.ino() {
            // Replaced between the lookup and the open.
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        found.stat = stat;
        Ok((found, File::from(fd)))
    }

    fn apply(&self, fd: &OwnedFd, kind: ftype3, attr: &sattr3) -> Result<(), nfsstat3> {
        if let Nfs3Option::Some(mode) = attr.mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        }
        if let Nfs3Option::Some(size) = attr.size {
            if kind != ftype3::NF3REG {
                return Err(nfsstat3::NFS3ERR_INVAL);
            }
            rustix::fs::ftruncate(fd, size).map_err(errno)?;
        }
        // uid and gid are squashed: every file belongs to the daemon's UID:GID, so a request to
        // change them is accepted and has no effect (as with all_squash in /etc/exports).
        let atime = match attr.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(now()),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(spec(t)),
        };
        let mtime = match attr.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(now()),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(spec(t)),
        };
        if atime.is_some() || mtime.is_some() {
            let times = rustix::fs::Timestamps {
                last_access: atime.unwrap_or(omit()),
                last_modification: mtime.unwrap_or(omit()),
            };
            rustix::fs::futimens(fd, &times).map_err(errno)?;
        }
        Ok(())
    }
}

fn spec(t: nfstime3) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: i64::from(t.seconds),
        tv_nsec: i64::from(t.nseconds.min(999_999_999)),
    }
}

fn now() -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    }
}

fn omit() -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_OMIT,
    }
}

/// A directory entry clients see: UTF-8, not `.`/`..`, not a transfer in progress (the puller's
/// temporaries are not files yet).
fn utf8_name(name: &CStr) -> Option<&str> {
    match name.to_str().ok()? {
        "." | ".." => None,
        name if is_temp_name(name) => None,
        name => Some(name),
    }
}

/// Runs blocking file-system work on a runtime worker without starving the others.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A directory listing in inode order: the cookie is the last inode sent, so a listing resumes in
/// the right place even when entries come and go between calls.
struct Listing {
    inner: Arc<Inner>,
    export: Option<Arc<Export>>,
    dir_fd: Option<OwnedFd>,
    rel: String,
    entries: std::vec::IntoIter<(u64, String)>,
}

impl ReadDirPlusIterator<Fh> for Listing {
    async fn next(&mut self) -> NextResult<DirEntryPlus<Fh>> {
        loop {
            let Some((cookie, name)) = self.entries.next() else {
                return NextResult::Eof;
            };
            let (Some(export), Some(dir_fd)) = (&self.export, &self.dir_fd) else {
                // The export root: each entry is a namespace.
                let Some(export) = self.inner.exports.get(cookie) else {
                    continue;
                };
                let Ok(stat) = statx_fd(&export.root_fd) else {
                    continue;
                };
                return NextResult::Ok(DirEntryPlus {
                    fileid: stat.stx_ino,
                    name: name.into_bytes().into(),
                    cookie,
                    name_attributes: Some(attributes(&stat)),
                    name_handle: Some(self.inner.handle(&export, &stat)),
                });
            };
            // Gone since the directory was read: skip it, as a local `ls` would.
            let Ok(stat) = statx_at(dir_fd, &name) else {
                continue;
            };
            let fh = self.inner.handle(export, &stat);
            self.inner
                .remember(export.id, stat.stx_ino, join(&self.rel, &name));
            return NextResult::Ok(DirEntryPlus {
                fileid: stat.stx_ino,
                name: name.into_bytes().into(),
                cookie,
                name_attributes: Some(attributes(&stat)),
                name_handle: Some(fh),
            });
        }
    }
}

impl NfsReadFileSystem for ShoalFs {
    type Handle = Fh;

    fn root_dir(&self) -> Fh {
        Fh::ROOT
    }

    async fn lookup(&self, dirid: &Fh, filename: &filename3<'_>) -> Result<Fh, nfsstat3> {
        let name = component(filename)?;
        let inner = &self.inner;
        let dir = match inner.locate(dirid)? {
            Node::Root => {
                return match name {
                    "." | ".." => Ok(Fh::ROOT),
                    _ => {
                        let export = inner.exports.by_name(name).ok_or(nfsstat3::NFS3ERR_NOENT)?;
                        let stat = statx_fd(&export.root_fd)?;
                        Ok(inner.handle(&export, &stat))
                    }
                };
            }
            Node::Entry(dir) => *dir,
        };
        if kind(&dir.stat) != ftype3::NF3DIR {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        let rel = match name {
            "." => return Ok(*dirid),
            name if is_temp_name(name) => return Err(nfsstat3::NFS3ERR_NOENT),
            // `..` of a namespace's root is that root: a client cannot climb out of its mount.
            ".." => parent(&dir.rel).to_owned(),
            name => join(&dir.rel, name),
        };
        let fd = open_beneath(&dir.export, &rel, OFlags::PATH)?;
        let stat = statx_fd(&fd)?;
        let fh = inner.handle(&dir.export, &stat);
        if !rel.is_empty() {
            inner.remember(dir.export.id, stat.stx_ino, rel);
        }
        Ok(fh)
    }

    async fn getattr(&self, id: &Fh) -> Result<fattr3, nfsstat3> {
        match self.inner.locate(id)? {
            Node::Root => Ok(self.inner.root_attributes()),
            Node::Entry(found) => Ok(attributes(&found.stat)),
        }
    }

    async fn read(&self, id: &Fh, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
        blocking(|| {
            let mut buf = Vec::new();
            let (_, eof) = self.read_into(id, offset, count, &mut buf)?;
            Ok((buf, eof))
        })
    }

    async fn readdirplus(
        &self,
        dirid: &Fh,
        cookie: u64,
    ) -> Result<impl ReadDirPlusIterator<Fh>, nfsstat3> {
        let inner = self.inner.clone();
        blocking(move || match inner.locate(dirid)? {
            Node::Root => {
                let entries: Vec<(u64, String)> = read(&inner.exports.by_id)
                    .values()
                    .filter(|e| e.id > cookie)
                    .map(|e| (e.id, e.name.clone()))
                    .collect();
                Ok(Listing {
                    inner: inner.clone(),
                    export: None,
                    dir_fd: None,
                    rel: String::new(),
                    entries: entries.into_iter(),
                })
            }
            Node::Entry(dir) => {
                if kind(&dir.stat) != ftype3::NF3DIR {
                    return Err(nfsstat3::NFS3ERR_NOTDIR);
                }
                let fd = open_beneath(&dir.export, &dir.rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
                let dir_fd = fd.try_clone().map_err(io_errno)?;
                let mut entries: Vec<(u64, String)> = rustix::fs::Dir::new(fd)
                    .map_err(errno)?
                    .flatten()
                    .filter(|e| e.ino() > cookie)
                    .filter_map(|e| utf8_name(e.file_name()).map(|n| (e.ino(), n.to_owned())))
                    .collect();
                entries.sort_unstable();
                Ok(Listing {
                    inner: inner.clone(),
                    export: Some(dir.export),
                    dir_fd: Some(dir_fd),
                    rel: dir.rel,
                    entries: entries.into_iter(),
                })
            }
        })
    }

    async fn readlink(&self, id: &Fh) -> Result<nfspath3<'_>, nfsstat3> {
        let found = self.inner.entry(id)?;
        if kind(&found.stat) != ftype3::NF3LNK {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let fd = open_beneath(&found.export, &found.rel, OFlags::PATH)?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(errno)?;
        Ok(target.into_bytes().into())
    }

    async fn fsinfo(&self, root: &Fh) -> Result<FSINFO3resok, nfsstat3> {
        let transfer = crate::MAX_TRANSFER;
        Ok(FSINFO3resok {
            obj_attributes: self
                .getattr(root)
                .await
                .map_or(Nfs3Option::None, Nfs3Option::Some),
            rtmax: transfer,
            rtpref: transfer,
            rtmult: 4096,
            wtmax: transfer,
            wtpref: transfer,
            wtmult: 4096,
            dtpref: 1 << 20,
            // The library's default is 128 GiB; ext4 holds files of up to 16 TiB, XFS more: the
            // file system refuses what it cannot hold (EFBIG), not the export.
            maxfilesize: i64::MAX as u64,
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }
}

impl NfsFileSystem for ShoalFs {
    async fn setattr(&self, id: &Fh, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let inner = &self.inner;
        blocking(|| {
            let found = inner.entry(id)?;
            if found.export.read_only {
                return Err(nfsstat3::NFS3ERR_ROFS);
            }
            let kind = kind(&found.stat);
            if kind == ftype3::NF3LNK {
                // Symlinks have no mode of their own; their times are not synced.
                return Ok(attributes(&found.stat));
            }
            let flags = match (kind, setattr.size) {
                (ftype3::NF3DIR, _) => OFlags::RDONLY | OFlags::DIRECTORY,
                (_, Nfs3Option::Some(_)) => OFlags::WRONLY,
                _ => OFlags::RDONLY,
            };
            let fd = open_beneath(&found.export, &found.rel, flags)?;
            inner.apply(&fd, kind, &setattr)?;
            let stat = statx_fd(&fd)?;
            inner.changed(&found.export, &[&found.rel]);
            Ok(attributes(&stat))
        })
    }

    async fn write(
        &self,
        id: &Fh,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        blocking(|| {
            self.write_at(id, offset, data, stable)
                .map(|(_, after, stable)| (after, stable))
        })
    }

    async fn create(
        &self,
        dirid: &Fh,
        filename: &filename3<'_>,
        attr: sattr3,
    ) -> Result<(Fh, fattr3), nfsstat3> {
        let name = new_name(filename)?;
        let inner = &self.inner;
        blocking(|| {
            let (dir, dir_fd) = inner.writable_dir(dirid)?;
            let mode = match attr.mode {
                Nfs3Option::Some(m) => m & 0o7777,
                Nfs3Option::None => 0o644,
            };
            let fd = rustix::fs::openat(
                &dir_fd,
                name,
                OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )
            .map_err(errno)?;
            inner.apply(&fd, ftype3::NF3REG, &attr)?;
            let stat = statx_fd(&fd)?;
            let rel = join(&dir.rel, name);
            inner.changed(&dir.export, &[&rel]);
            inner.remember(dir.export.id, stat.stx_ino, rel);
            Ok((inner.handle(&dir.export, &stat), attributes(&stat)))
        })
    }

    async fn create_exclusive(
        &self,
        dirid: &Fh,
        filename: &filename3<'_>,
        createverf: createverf3,
    ) -> Result<Fh, nfsstat3> {
        let name = new_name(filename)?;
        let inner = &self.inner;
        // The verifier is kept in the new file's times (RFC 1813 §3.3.8), so a retransmitted
        // CREATE finds its own file; the client then sets the real times with SETATTR.
        let seconds = u32::from_be_bytes([
            createverf.0[0],
            createverf.0[1],
            createverf.0[2],
            createverf.0[3],
        ]);
        let nanos = u32::from_be_bytes([
            createverf.0[4],
            createverf.0[5],
            createverf.0[6],
            createverf.0[7],
        ]) % 1_000_000_000;
        let stamp = rustix::fs::Timespec {
            tv_sec: i64::from(seconds),
            tv_nsec: i64::from(nanos),
        };
        blocking(|| {
            let (dir, dir_fd) = inner.writable_dir(dirid)?;
            let rel = join(&dir.rel, name);
            match rustix::fs::openat(
                &dir_fd,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => {
                    let times = rustix::fs::Timestamps {
                        last_access: stamp,
                        last_modification: stamp,
                    };
                    rustix::fs::futimens(&fd, &times).map_err(errno)?;
                    let stat = statx_fd(&fd)?;
                    inner.changed(&dir.export, &[&rel]);
                    inner.remember(dir.export.id, stat.stx_ino, rel);
                    Ok(inner.handle(&dir.export, &stat))
                }
                Err(Errno::EXIST) => {
                    let stat = statx_at(&dir_fd, name)?;
                    let same = stat.stx_mtime.tv_sec == stamp.tv_sec
                        && i64::from(stat.stx_mtime.tv_nsec) == stamp.tv_nsec
                        && kind(&stat) == ftype3::NF3REG;
                    if same {
                        Ok(inner.handle(&dir.export, &stat))
                    } else {
                        Err(nfsstat3::NFS3ERR_EXIST)
                    }
                }
                Err(e) => Err(errno(e)),
            }
        })
    }

    async fn mkdir(&self, dirid: &Fh, dirname: &filename3<'_>) -> Result<(Fh, fattr3), nfsstat3> {
        let name = new_name(dirname)?;
        let inner = &self.inner;
        blocking(|| {
            let (dir, dir_fd) = inner.writable_dir(dirid)?;
            rustix::fs::mkdirat(&dir_fd, name, Mode::from_raw_mode(0o755)).map_err(errno)?;
            let stat = statx_at(&dir_fd, name)?;
            let rel = join(&dir.rel, name);
            inner.changed(&dir.export, &[&rel]);
            inner.remember(dir.export.id, stat.stx_ino, rel);
            Ok((inner.handle(&dir.export, &stat), attributes(&stat)))
        })
    }

    async fn remove(&self, dirid: &Fh, filename: &filename3<'_>) -> Result<(), nfsstat3> {
        let name = new_name(filename).map_err(|e| match e {
            nfsstat3::NFS3ERR_EXIST => nfsstat3::NFS3ERR_INVAL,
            e => e,
        })?;
        let inner = &self.inner;
        blocking(|| {
            let (dir, dir_fd) = inner.writable_dir(dirid)?;
            let stat = statx_at(&dir_fd, name)?;
            let flags = if kind(&stat) == ftype3::NF3DIR {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            rustix::fs::unlinkat(&dir_fd, name, flags).map_err(errno)?;
            inner.forget(dir.export.id, stat.stx_ino);
            inner.changed(&dir.export, &[&join(&dir.rel, name)]);
            Ok(())
        })
    }

    async fn rename<'a>(
        &self,
        from_dirid: &Fh,
        from_filename: &filename3<'a>,
        to_dirid: &Fh,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let from_name = new_name(from_filename).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        let to_name = new_name(to_filename).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        let inner = &self.inner;
        blocking(|| {
            let (from, from_fd) = inner.writable_dir(from_dirid)?;
            let (to, to_fd) = inner.writable_dir(to_dirid)?;
            if from.export.id != to.export.id {
                return Err(nfsstat3::NFS3ERR_XDEV);
            }
            let stat = statx_at(&from_fd, from_name)?;
            rustix::fs::renameat(&from_fd, from_name, &to_fd, to_name).map_err(errno)?;
            let (old, new) = (join(&from.rel, from_name), join(&to.rel, to_name));
            inner.moved(from.export.id, stat.stx_ino, &old, &new);
            inner.changed(&from.export, &[&old, &new]);
            Ok(())
        })
    }

    async fn symlink<'a>(
        &self,
        dirid: &Fh,
        linkname: &filename3<'a>,
        symlink: &nfspath3<'a>,
        _attr: &sattr3,
    ) -> Result<(Fh, fattr3), nfsstat3> {
        let name = new_name(linkname)?;
        let target: &[u8] = symlink.as_ref();
        if target.is_empty() || target.contains(&0) {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let target = std::str::from_utf8(target).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        let inner = &self.inner;
        blocking(|| {
            let (dir, dir_fd) = inner.writable_dir(dirid)?;
            rustix::fs::symlinkat(target, &dir_fd, name).map_err(errno)?;
            let stat = statx_at(&dir_fd, name)?;
            let rel = join(&dir.rel, name);
            inner.changed(&dir.export, &[&rel]);
            inner.remember(dir.export.id, stat.stx_ino, rel);
            Ok((inner.handle(&dir.export, &stat), attributes(&stat)))
        })
    }

    async fn commit(&self, id: &Fh, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        let inner = &self.inner;
        blocking(|| {
            let (found, file) = match inner.open_file(id, OFlags::RDONLY) {
                Ok(opened) => opened,
                // Only regular files hold data to commit.
                Err(nfsstat3::NFS3ERR_ISDIR | nfsstat3::NFS3ERR_INVAL) => return Ok(()),
                Err(e) => return Err(e),
            };
            file.sync_all().map_err(|e| {
                warn!(namespace = %found.export.name, path = %found.rel, "COMMIT failed: {e}");
                io_errno(e)
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_the_root_is_all_zero() {
        let fh = Fh::new(7, 42, 1_700_000_000_123_456_789);
        assert_eq!(
            (fh.ns(), fh.ino(), fh.born()),
            (7, 42, 1_700_000_000_123_456_789)
        );
        assert_eq!(Fh::from_bytes(fh.as_bytes()), Some(fh));
        assert_eq!(Fh::from_bytes(&[1, 2, 3]), None);
        assert_eq!(Fh::from_bytes(&[0; 24]), Some(Fh::ROOT));
        assert_ne!(namespace_id("gitlab"), 0);
        assert_ne!(namespace_id("gitlab"), namespace_id("gitlab2"));
    }

    #[test]
    fn client_names_are_single_components() {
        for bad in [&b""[..], b"a/b", b"/", b"a\0b", &[0xff, 0xfe]] {
            assert!(component(&bad.into()).is_err(), "{bad:?}");
        }
        assert_eq!(component(&b".."[..].into()), Ok(".."));
        assert_eq!(new_name(&b".."[..].into()), Err(nfsstat3::NFS3ERR_EXIST));
        assert_eq!(
            component(&vec![b'a'; 256].into()),
            Err(nfsstat3::NFS3ERR_NAMETOOLONG)
        );
    }

    #[test]
    fn paths_join_and_split() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
    }
}
