//! Network namespaces by path: opened and checked to be one, and pinned by a bind mount so a
//! container's namespace outlives its processes until it is detached.

use super::*;

/// Opens `path` and makes sure it is a network namespace.
pub(super) fn open_netns(path: &Path) -> Result<File, NetError> {
    let f = File::open(path).at("open network namespace", path)?;
    if !same_fs_as_netns(&f) {
        return Err(NetError::NotNetns(path.to_path_buf()));
    }
    Ok(f)
}

/// Whether `path` is (still) a network namespace; an empty pin left by a reboot is not.
pub(super) fn is_netns(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| same_fs_as_netns(&f))
}

/// Namespace files all live on the one internal `nsfs` superblock; comparing the device with
/// our own namespace's avoids statfs's per-architecture `f_type` width. This does not tell a
/// network namespace from another kind; the plugins' own `setns(CLONE_NEWNET)` does.
pub(super) fn same_fs_as_netns(f: &File) -> bool {
    let ours = rustix::fs::stat("/proc/self/ns/net");
    let theirs = rustix::fs::fstat(f);
    matches!((ours, theirs), (Ok(a), Ok(b)) if a.st_dev == b.st_dev)
}

pub(super) fn file_id(f: &File, path: &Path) -> Result<(u64, u64), NetError> {
    use std::os::unix::fs::MetadataExt as _;
    let m = f.metadata().at("stat", path)?;
    Ok((m.dev(), m.ino()))
}

/// Bind-mount the namespace open as `ns` at `pin` (as `ip netns add` does), replacing whatever
/// an earlier crash left there. Bound through `/proc/self/fd` so the namespace pinned is the one
/// checked, even if `/proc/<pid>` has been reused since.
pub(super) fn pin_netns(ns: &File, netns: &Path, pin: &Path) -> Result<(), NetError> {
    unpin(pin)?;
    File::create(pin).at("create", pin)?;
    let src = format!("/proc/self/fd/{}", ns.as_raw_fd());
    rustix::mount::mount_bind(src.as_str(), pin).map_err(|e| {
        let _ = fs::remove_file(pin);
        NetError::Pin {
            netns: netns.to_path_buf(),
            pin: pin.to_path_buf(),
            source: e.into(),
        }
    })
}

/// Unmount (lazily: a plugin may still hold it open) and remove a pin; nothing to do is fine.
pub(super) fn unpin(pin: &Path) -> Result<(), NetError> {
    // Loop: bind mounts stack, and a pin is only gone when nothing is mounted there any more.
    for _ in 0..8 {
        match rustix::mount::unmount(pin, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => continue,
            // EINVAL: not a mount point (a pin from before a reboot); ENOENT: no pin.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => break,
            Err(e) => Err(io::Error::from(e)).at("unmount", pin)?,
        }
    }
    match fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at("remove", pin)?,
        _ => Ok(()),
    }
}
