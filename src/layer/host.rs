//! Directory-fd helpers shared by the writer, the differ and the applier: `lstat`, listing,
//! opening without following symlinks, xattrs on open fds, and recursive removal.
//!
//! Every call takes a directory fd and one name. None of them follows a symlink in the last
//! component, and none takes a multi-component path, so none can leave the tree it started in.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// The metadata of one inode, with the platform-dependent `stat` field types flattened.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub kind: FileType,
    /// Permission bits plus setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// Whole seconds.
    pub mtime: i64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

// `stat` field widths differ between targets (armhf vs aarch64 vs x86_64); the casts are no-ops
// on some of them.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
impl From<&Stat> for Meta {
    fn from(st: &Stat) -> Meta {
        let rdev = st.st_rdev as u64;
        Meta {
            kind: FileType::from_raw_mode(st.st_mode as _),
            mode: (st.st_mode as u32) & 0o7777,
            uid: st.st_uid as u64,
            gid: st.st_gid as u64,
            size: st.st_size as u64,
            mtime: st.st_mtime as i64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            rdev_major: rustix::fs::major(rdev as _),
            rdev_minor: rustix::fs::minor(rdev as _),
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Meta> {
    Ok(Meta::from(&rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// `fstat(fd)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    Ok(Meta::from(&rustix::fs::fstat(fd)?))
}

/// Opens the directory `name` in `dir` for reading, refusing symlinks (`ELOOP`/`ENOTDIR`).
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Reopens a directory fd (possibly `O_PATH`) so it can be read with `getdents`.
pub(crate) fn reopen_dir(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a regular file `name` in `dir` for reading without following a symlink and without
/// blocking on a FIFO or opening a device's driver if the name was swapped meanwhile (the caller
/// checks the type with [`fstat`] afterwards).
pub(crate) fn open_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in a readable directory fd, without `.` and `..`, sorted bytewise.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Reads one xattr of an open (not `O_PATH`) fd; `None` when it is absent or the file system
/// has no xattrs.
pub(crate) fn get_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    // security.capability is at most 24 bytes and overlay markers are one; 4 KiB leaves room
    // for redirect paths, which we only test for presence.
    let mut buf = vec![0u8; 4096];
    match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(e) if e == rustix::io::Errno::NODATA || e == rustix::io::Errno::OPNOTSUPP => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from `dir` whatever it is; a directory is emptied first, depth-first, through
/// fds opened with `O_NOFOLLOW`, so a symlink inside is unlinked, never followed. A missing name
/// is not an error.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let meta = match lstat_at(dir, name) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.kind == FileType::Directory {
        let sub = open_dir(dir, name)?;
        for child in list_dir(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn remove_all_never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"y").unwrap();
        symlink(&outside, root.join("d/link")).unwrap();
        symlink(&outside, root.join("d/e/link2")).unwrap();
        let fd =
            rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert_eq!(list_dir(fd.as_fd()).unwrap(), vec![b"d".to_vec()]);
        remove_all_at(fd.as_fd(), b"d").unwrap();
        remove_all_at(fd.as_fd(), b"missing").unwrap();
        assert!(!root.join("d").exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"x");
    }
}
