//! Cache mounts on the laptop, kept between builds until `dts devel prune --cache`:
//!
//! ```text
//! $DTS_HOME/build/mounts/<os>-<arch>[-<variant>]/<first 16 hex of sha256(id)>/
//! ├── id          the cache id, for prune's report
//! ├── lock-0      flock: shared users hold it shared, `sharing=locked` exclusive
//! ├── 0/          the cache's directory (mounted at the target)
//! ├── lock-1, 1/  further instances made by `sharing=private` while 0 was in use
//! ```
//!
//! Per platform by default, because what tools leave in a cache (compiled objects, downloaded
//! `.deb`s) is often for one architecture; a shared id across platforms would mix them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::build::dockerfile::{MountSpec, Sharing};
use crate::oci::Platform;
use crate::util::fs::{PathContext, PathError, create_dir_all};

/// The directory of one cache mount id for one platform.
pub(super) fn cache_base(root: &Path, platform: &Platform, id: &str) -> PathBuf {
    let slug = platform.to_string().replace('/', "-");
    let hash = hex::encode(Sha256::digest(id.as_bytes()));
    root.join(slug).join(&hash[..16])
}

/// A cache directory in use by one RUN: the lock is held until this is dropped.
pub(super) struct CacheLease {
    /// The directory to mount.
    pub dir: PathBuf,
    /// Made just now (to be seeded from `from=`).
    pub fresh: bool,
    _lock: File,
}

fn open_lock(path: &Path) -> Result<File, PathError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at("open", path)
}

fn flock(f: &File, path: &Path, op: rustix::fs::FlockOperation) -> Result<bool, PathError> {
    match rustix::fs::flock(f, op) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(io::Error::from(e)).at("lock", path),
    }
}

/// Takes the cache directory `spec` asks for, per its sharing mode, creating it (owned by
/// `uid:gid`, mode `mode`) when it does not exist yet.
pub(super) fn lease(
    root: &Path,
    platform: &Platform,
    spec: &MountSpec,
) -> Result<CacheLease, PathError> {
    use rustix::fs::FlockOperation as Op;
    let base = cache_base(root, platform, &spec.id);
    create_dir_all(&base)?;
    let id_file = base.join("id");
    if !id_file.exists() {
        fs::write(&id_file, &spec.id).at("write", &id_file)?;
    }
    let mut n = 0;
    let lock = loop {
        let path = base.join(format!("lock-{n}"));
        let f = open_lock(&path)?;
        let got = match spec.sharing {
            Sharing::Shared => flock(&f, &path, Op::LockShared)?,
            Sharing::Locked => flock(&f, &path, Op::LockExclusive)?,
            Sharing::Private => flock(&f, &path, Op::NonBlockingLockExclusive)?,
        };
        if got {
            break f;
        }
        n += 1;
    };
    let dir = base.join(n.to_string());
    let fresh = !dir.exists();
    if fresh {
        // Made aside and renamed, so a crash never leaves a half-made root with the wrong owner.
        let tmp = base.join(format!(".new-{n}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).at("create directory", &tmp)?;
        chown(&tmp, spec.uid, spec.gid)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(spec.mode)).at("chmod", &tmp)?;
        fs::rename(&tmp, &dir).at("rename", &tmp)?;
    }
    Ok(CacheLease {
        dir,
        fresh,
        _lock: lock,
    })
}

pub(super) fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), PathError> {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(io::Error::from)
    .at("chown", path)
}

/// Copies the tree under `src` into the existing directory `dst`, keeping modes, owners and
/// symlinks; with `link`, files are hard-linked where the file system allows.
pub(super) fn copy_tree(src: &Path, dst: &Path, link: bool) -> Result<(), PathError> {
    let mut names: Vec<_> = fs::read_dir(src)
        .at("list", src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .at("list", src)?;
    names.sort();
    for name in names {
        let (from, to) = (src.join(&name), dst.join(&name));
        let meta = fs::symlink_metadata(&from).at("stat", &from)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&from).at("read link", &from)?;
            std::os::unix::fs::symlink(&target, &to).at("create symlink", &to)?;
            rustix::fs::chownat(
                rustix::fs::CWD,
                &to,
                Some(rustix::fs::Uid::from_raw(meta.uid())),
                Some(rustix::fs::Gid::from_raw(meta.gid())),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from)
            .at("chown", &to)?;
            continue;
        }
        if ft.is_dir() {
            fs::create_dir(&to).at("create directory", &to)?;
            copy_tree(&from, &to, link)?;
        } else if ft.is_file() {
            if link && fs::hard_link(&from, &to).is_ok() {
                continue;
            }
            fs::copy(&from, &to).at("copy to", &to)?;
        } else {
            // Sockets, fifos and devices are not carried into a mount.
            continue;
        }
        chown(&to, meta.uid(), meta.gid())?;
        fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .at("chmod", &to)?;
    }
    Ok(())
}

/// One cache mount on the laptop, as `dts devel prune --cache` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct CacheMountInfo {
    /// The cache id (the target path unless `id=` was given).
    pub id: String,
    /// The platform it was used for (`linux-arm64`).
    pub platform: String,
    /// Bytes of its files, over all instances.
    pub bytes: u64,
    /// In use by a build: left alone.
    pub in_use: bool,
}

fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Removes every cache mount under `root` that no build is using; returns what it found.
pub fn prune(root: &Path) -> Result<Vec<CacheMountInfo>, PathError> {
    let mut out = Vec::new();
    let platforms = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).at("list", root),
    };
    for p in platforms {
        let p = p.at("list", root)?;
        let pdir = p.path();
        if !pdir.is_dir() {
            continue;
        }
        let mut caches: Vec<PathBuf> = fs::read_dir(&pdir)
            .at("list", &pdir)?
            .flatten()
            .map(|e| e.path())
            .collect();
        caches.sort();
        for base in caches {
            let id = fs::read_to_string(base.join("id")).unwrap_or_default();
            // Every instance's lock, taken without waiting: a cache in use is left alone.
            let mut locks = Vec::new();
            let mut in_use = false;
            for e in fs::read_dir(&base).at("list", &base)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("lock-") {
                    let f = open_lock(&e.path())?;
                    let op = rustix::fs::FlockOperation::NonBlockingLockExclusive;
                    in_use |= !flock(&f, &e.path(), op)?;
                    locks.push(f);
                }
            }
            let bytes = tree_bytes(&base);
            if !in_use {
                fs::remove_dir_all(&base).at("remove", &base)?;
            }
            out.push(CacheMountInfo {
                id,
                platform: p.file_name().to_string_lossy().into_owned(),
                bytes,
                in_use,
            });
        }
        let _ = fs::remove_dir(&pdir);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::dockerfile::parse_mount;

    fn spec(sharing: &str) -> MountSpec {
        parse_mount(
            &format!("type=cache,target=/c,sharing={sharing},mode=0700"),
            "/",
            0,
        )
        .unwrap()
    }

    #[test]
    fn sharing_modes() {
        let root = tempfile::tempdir().unwrap();
        let p = Platform::host();
        let a = lease(root.path(), &p, &spec("shared")).unwrap();
        assert!(a.fresh);
        let mode = fs::metadata(&a.dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        let b = lease(root.path(), &p, &spec("shared")).unwrap();
        assert_eq!((a.dir.clone(), b.fresh), (b.dir.clone(), false));
        // In use: a private user gets a directory of its own, made fresh.
        let c = lease(root.path(), &p, &spec("private")).unwrap();
        assert_ne!(c.dir, a.dir);
        assert!(c.fresh);
        drop((b, c));
        // A locked user waits for the shared one to finish.
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, pl) = (root.path().to_path_buf(), p.clone());
        let waiter = std::thread::spawn(move || {
            let l = lease(&r, &pl, &spec("locked")).unwrap();
            tx.send(l.dir.clone()).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            rx.try_recv().is_err(),
            "locked must wait while the cache is in use"
        );
        let dir = a.dir.clone();
        drop(a);
        assert_eq!(rx.recv().unwrap(), dir);
        waiter.join().unwrap();
        let found = prune(root.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].id.as_str(), found[0].in_use), ("/c", false));
        assert!(!dir.exists());
    }
}
