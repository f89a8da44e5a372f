//! The file-system layer driven directly through the protocol library's traits: handles that
//! survive restarts and renames on disk, stale handles, and every way out of a namespace.
#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nfs3_server::nfs3_types::nfs3::{Nfs3Option, filename3, ftype3, nfsstat3, sattr3, stable_how};
use nfs3_server::vfs::{
    FileHandle, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator,
};
use shoal_nfs::fs::Fh;
use shoal_nfs::{Exports, ShoalFs};

fn name(s: &str) -> filename3<'static> {
    s.as_bytes().to_vec().into()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    exports: Arc<Exports>,
    changed: Arc<Mutex<Vec<String>>>,
}

fn setup(read_only: bool) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("gitlab");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/file.txt"), b"hello").unwrap();
    std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
    std::fs::write(tmp.path().join("outside/secret"), b"secret").unwrap();
    let exports = Arc::new(Exports::default());
    let changed = Arc::new(Mutex::new(Vec::new()));
    let sink = changed.clone();
    exports
        .set(
            "gitlab",
            &root,
            read_only,
            Arc::new(move |paths| sink.lock().unwrap().extend(paths)),
        )
        .unwrap();
    Setup {
        _tmp: tmp,
        root,
        exports,
        changed,
    }
}

async fn walk(fs: &ShoalFs, path: &str) -> Result<Fh, nfsstat3> {
    let mut fh = fs.root_dir();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        fh = fs.lookup(&fh, &name(part)).await?;
    }
    Ok(fh)
}

async fn list(fs: &ShoalFs, dir: &Fh) -> Vec<String> {
    let mut it = fs.readdirplus(dir, 0).await.unwrap();
    let mut names = Vec::new();
    while let NextResult::Ok(e) = it.next().await {
        names.push(String::from_utf8(e.name.0.to_vec()).unwrap());
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_survive_a_restart_and_a_rename_on_disk() {
    let s = setup(false);
    let fs = ShoalFs::new(s.exports.clone());
    assert_eq!(list(&fs, &fs.root_dir()).await, ["gitlab"]);
    let fh = walk(&fs, "gitlab/a/b/file.txt").await.unwrap();
    let bytes = fh.as_bytes().to_vec();

    // A new server (empty caches): the same bytes still name the file.
    let fs = ShoalFs::new(s.exports.clone());
    let fh = Fh::from_bytes(&bytes).unwrap();
    assert_eq!(
        fs.read(&fh, 0, 100).await.unwrap(),
        (b"hello".to_vec(), true)
    );

    // Moved on disk (as sync would): found again by search.
    std::fs::create_dir_all(s.root.join("c")).unwrap();
    std::fs::rename(s.root.join("a/b"), s.root.join("c/moved")).unwrap();
    let attr = fs.getattr(&fh).await.unwrap();
    assert_eq!(attr.size, 5);
    assert_eq!(fs.read(&fh, 1, 2).await.unwrap(), (b"el".to_vec(), false));

    // Deleted, then the name reused: the old handle is stale, not the new file.
    std::fs::remove_file(s.root.join("c/moved/file.txt")).unwrap();
    assert_eq!(fs.getattr(&fh).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    std::fs::write(s.root.join("c/moved/file.txt"), b"new").unwrap();
    assert_eq!(
        fs.read(&fh, 0, 10).await.unwrap_err(),
        nfsstat3::NFS3ERR_STALE
    );
    let fresh = walk(&fs, "gitlab/c/moved/file.txt").await.unwrap();
    assert_eq!(fs.read(&fresh, 0, 10).await.unwrap().0, b"new");

    // A namespace removed at run time: its handles are stale, the root no longer lists it.
    s.exports.remove("gitlab");
    assert_eq!(
        fs.getattr(&fresh).await.unwrap_err(),
        nfsstat3::NFS3ERR_STALE
    );
    assert!(list(&fs, &fs.root_dir()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outside_the_namespace_is_reachable() {
    let s = setup(false);
    let fs = ShoalFs::new(s.exports.clone());
    // `..` at the namespace root is the root itself.
    let ns = walk(&fs, "gitlab").await.unwrap();
    assert_eq!(fs.lookup(&ns, &name("..")).await.unwrap(), ns);
    assert_eq!(
        walk(&fs, "gitlab/../outside/secret").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    // Names with a slash are refused whole.
    assert_eq!(
        fs.lookup(&ns, &name("../outside")).await.unwrap_err(),
        nfsstat3::NFS3ERR_INVAL
    );
    // A symlink to the outside is a symlink: never followed by the server.
    let outside = s.root.parent().unwrap().join("outside");
    symlink(&outside, s.root.join("escape")).unwrap();
    let link = walk(&fs, "gitlab/escape").await.unwrap();
    assert_eq!(fs.getattr(&link).await.unwrap().type_, ftype3::NF3LNK);
    assert!(fs.lookup(&link, &name("secret")).await.is_err());
    assert!(fs.read(&link, 0, 10).await.is_err());
    // A directory swapped for a symlink on disk after its handle was given out.
    let a = walk(&fs, "gitlab/a").await.unwrap();
    std::fs::rename(s.root.join("a"), s.root.join("a.old")).unwrap();
    symlink(&outside, s.root.join("a")).unwrap();
    let found = fs.lookup(&a, &name("b")).await.unwrap();
    assert_eq!(
        fs.getattr(&found).await.unwrap().type_,
        ftype3::NF3DIR,
        "the handle follows its inode (now a.old), not the name"
    );
    assert!(walk(&fs, "gitlab/a/secret").await.is_err());
    // Crafted handles: unknown namespace, an inode outside the namespace, garbage.
    let secret_ino =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(outside.join("secret")).unwrap());
    let mut crafted = ns.as_bytes().to_vec();
    crafted[8..16].copy_from_slice(&secret_ino.to_le_bytes());
    crafted[16..].copy_from_slice(&0u64.to_le_bytes());
    let crafted = Fh::from_bytes(&crafted).unwrap();
    assert_eq!(
        fs.read(&crafted, 0, 10).await.unwrap_err(),
        nfsstat3::NFS3ERR_STALE
    );
    let unknown = Fh::from_bytes(&[0xab; 24]).unwrap();
    assert_eq!(
        fs.getattr(&unknown).await.unwrap_err(),
        nfsstat3::NFS3ERR_STALE
    );
    assert!(Fh::from_bytes(&[1; 7]).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_made_on_disk_and_handed_to_sync() {
    let s = setup(false);
    let fs = ShoalFs::new(s.exports.clone());
    let ns = walk(&fs, "gitlab").await.unwrap();
    let (fh, _) = fs
        .create(&ns, &name("new.txt"), sattr3::default())
        .await
        .unwrap();
    let (attr, how) = fs
        .write(&fh, 0, b"0123456789", stable_how::UNSTABLE)
        .await
        .unwrap();
    assert_eq!((attr.size, how), (10, stable_how::UNSTABLE));
    let (_, how) = fs
        .write(&fh, 10, b"!", stable_how::FILE_SYNC)
        .await
        .unwrap();
    assert_eq!(how, stable_how::FILE_SYNC);
    fs.commit(&fh, 0, 0).await.unwrap();
    assert_eq!(
        std::fs::read(s.root.join("new.txt")).unwrap(),
        b"0123456789!"
    );

    let (dir, _) = fs.mkdir(&ns, &name("dir")).await.unwrap();
    fs.rename(&ns, &name("new.txt"), &dir, &name("moved.txt"))
        .await
        .unwrap();
    assert_eq!(fs.read(&fh, 0, 100).await.unwrap().0, b"0123456789!");
    let truncate = sattr3 {
        size: Nfs3Option::Some(4),
        mode: Nfs3Option::Some(0o600),
        ..sattr3::default()
    };
    fs.setattr(&fh, truncate).await.unwrap();
    assert_eq!(
        std::fs::read(s.root.join("dir/moved.txt")).unwrap(),
        b"0123"
    );
    fs.symlink(
        &dir,
        &name("ln"),
        &b"moved.txt"[..].into(),
        &sattr3::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_link(s.root.join("dir/ln")).unwrap(),
        Path::new("moved.txt")
    );
    fs.remove(&dir, &name("ln")).await.unwrap();
    assert_eq!(
        fs.remove(&ns, &name("dir")).await.unwrap_err(),
        nfsstat3::NFS3ERR_NOTEMPTY
    );
    assert_eq!(
        fs.create(&ns, &name(".."), sattr3::default())
            .await
            .unwrap_err(),
        nfsstat3::NFS3ERR_EXIST
    );
    // A transfer in progress (the puller's temporary) is neither listed nor reachable nor creatable.
    std::fs::write(s.root.join(".~shoal.big.bin.1f2e.tmp"), b"partial").unwrap();
    assert!(
        !list(&fs, &ns)
            .await
            .iter()
            .any(|n| n.starts_with(".~shoal."))
    );
    assert_eq!(
        fs.lookup(&ns, &name(".~shoal.big.bin.1f2e.tmp"))
            .await
            .unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    assert_eq!(
        fs.create(&ns, &name(".~shoal.x.1.tmp"), sattr3::default())
            .await
            .unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    // Exclusive create is idempotent for its own verifier and refuses another.
    let verf = nfs3_server::nfs3_types::nfs3::createverf3([1, 2, 3, 4, 5, 6, 7, 8]);
    let x = fs.create_exclusive(&ns, &name("x"), verf).await.unwrap();
    assert_eq!(fs.create_exclusive(&ns, &name("x"), verf).await.unwrap(), x);
    let other = nfs3_server::nfs3_types::nfs3::createverf3([9; 8]);
    assert_eq!(
        fs.create_exclusive(&ns, &name("x"), other)
            .await
            .unwrap_err(),
        nfsstat3::NFS3ERR_EXIST
    );

    // Every change reached the scanner (batched), with namespace-relative paths.
    let want = ["new.txt", "dir", "dir/moved.txt", "dir/ln", "x"];
    let told = |seen: &[String]| want.iter().all(|w| seen.iter().any(|p| p == w));
    let reached = tokio::task::block_in_place(|| {
        shoal_core::testing::poll_until(std::time::Duration::from_secs(5), || {
            told(&s.changed.lock().unwrap())
        })
    });
    assert!(reached, "scanner told only {:?}", s.changed.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_namespace_refuses_every_change() {
    let s = setup(true);
    let fs = ShoalFs::new(s.exports.clone());
    let ns = walk(&fs, "gitlab").await.unwrap();
    let file = walk(&fs, "gitlab/a/b/file.txt").await.unwrap();
    let rofs = nfsstat3::NFS3ERR_ROFS;
    assert_eq!(
        fs.write(&file, 0, b"x", stable_how::FILE_SYNC)
            .await
            .unwrap_err(),
        rofs
    );
    assert_eq!(
        fs.create(&ns, &name("n"), sattr3::default())
            .await
            .unwrap_err(),
        rofs
    );
    assert_eq!(fs.mkdir(&ns, &name("d")).await.unwrap_err(), rofs);
    assert_eq!(fs.remove(&ns, &name("a")).await.unwrap_err(), rofs);
    assert_eq!(
        fs.setattr(&file, sattr3::default()).await.unwrap_err(),
        rofs
    );
    assert_eq!(fs.read(&file, 0, 5).await.unwrap().0, b"hello");
    assert_eq!(
        std::fs::read(s.root.join("a/b/file.txt")).unwrap(),
        b"hello"
    );
    // The export root is never writable.
    assert_eq!(
        fs.mkdir(&fs.root_dir(), &name("new-ns")).await.unwrap_err(),
        rofs
    );
}
