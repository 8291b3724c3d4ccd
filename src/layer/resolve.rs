//! Resolving a path inside an image root as if that root were `/` (chroot semantics), without a
//! chroot: `..` at the root stays at the root, absolute symlinks restart at the root, and nothing
//! outside the root can be reached.
//!
//! Two implementations with the same semantics:
//! - [`Resolver::Kernel`]: one `openat2(root, path, O_PATH, RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)` call (Linux ≥ 5.6). The kernel does the walk, race-free.
//! - [`Resolver::Userspace`]: a component-by-component walk with `openat(O_PATH | O_NOFOLLOW)`,
//!   reading each symlink ourselves and keeping `..` on our own stack. For kernels without
//!   `openat2` (Jetson Nano's 4.9, Ubuntu 20.04's 5.4 on the Pi; docs/duckietown.md).
//!   It is exact unless another process renames directories inside the root during the walk;
//!   like containerd we assume a root under extraction is not shared.
//!
//! Creating missing directories (`create`) always takes the userspace walk, which makes them where
//! the resolution leads — through a dangling `lib -> usr/lib`, `lib/x` creates `usr/lib`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::host;

/// How paths inside an image root are resolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2(RESOLVE_IN_ROOT)` when the kernel has it, else [`Resolver::Userspace`].
    #[default]
    Auto,
    /// Always `openat2`; fails with `ENOSYS` on kernels older than 5.6.
    Kernel,
    /// Always the userspace walk (the fallback for old kernels; selectable to test it).
    Userspace,
}

/// Symlinks followed while resolving one path, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;
/// `openat2` returns `EAGAIN` when a rename raced with `RESOLVE_IN_ROOT`; retry a few times.
const EAGAIN_RETRIES: usize = 16;
/// Mode of directories created because an entry's parent was missing (containerd's `mkparent`).
pub(crate) const IMPLICIT_DIR_MODE: u32 = 0o755;

/// An open image root and the resolver chosen for it.
pub(crate) struct Root {
    fd: OwnedFd,
    kernel: bool,
}

impl Root {
    /// Opens `path` (trusted: it is ours, not the image's) as the root.
    pub(crate) fn open(path: &Path, resolver: Resolver) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let kernel = match resolver {
            Resolver::Userspace => false,
            Resolver::Kernel => true,
            Resolver::Auto => match openat2_in_root(fd.as_fd(), b".") {
                Ok(_) => true,
                // ENOSYS: old kernel; EPERM: an old seccomp profile that predates openat2.
                Err(e) if e == Errno::NOSYS || e == Errno::PERM => false,
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Root { fd, kernel })
    }

    /// Resolves `comps` (a cleaned path split in components) to an `O_PATH` directory fd inside
    /// the root, following symlinks in-root. With `create`, missing directories are made with
    /// mode 0755 along the way.
    pub(crate) fn dir(&self, comps: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
        if self.kernel {
            let joined = if comps.is_empty() {
                b".".to_vec()
            } else {
                comps.join(&b'/')
            };
            match openat2_in_root(self.fd.as_fd(), &joined) {
                Ok(fd) => return Ok(fd),
                Err(e) if e == Errno::NOENT && create => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(comps, create)
    }

    /// The userspace resolver. Holds one fd at a time; `..` re-walks the (symlink-free) prefix
    /// from the root, so fd use does not grow with depth.
    fn walk(&self, comps: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
        let mut todo: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut stack: Vec<Vec<u8>> = Vec::new();
        let mut cur = dup_path(self.fd.as_fd())?;
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.pop().is_some() {
                        cur = self.reopen(&stack)?;
                    }
                    continue;
                }
                _ => {}
            }
            let fd = match open_path_nofollow(cur.as_fd(), &c) {
                Ok(fd) => fd,
                Err(e) if e == Errno::NOENT && create => {
                    match rustix::fs::mkdirat(
                        cur.as_fd(),
                        c.as_slice(),
                        Mode::from_raw_mode(IMPLICIT_DIR_MODE),
                    ) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_path_nofollow(cur.as_fd(), &c)?
                }
                Err(e) => return Err(e.into()),
            };
            let meta = host::fstat(fd.as_fd())?;
            if meta.kind == FileType::Directory {
                stack.push(c);
                cur = fd;
            } else if meta.kind == FileType::Symlink {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::LOOP.into());
                }
                let target = rustix::fs::readlinkat(fd.as_fd(), c"", Vec::new())?.into_bytes();
                if target.first() == Some(&b'/') {
                    stack.clear();
                    cur = dup_path(self.fd.as_fd())?;
                }
                for t in target.split(|b| *b == b'/').rev() {
                    todo.push_front(t.to_vec());
                }
            } else {
                return Err(Errno::NOTDIR.into());
            }
        }
        Ok(cur)
    }

    /// Re-opens a prefix made only of real directories (no symlinks), refusing any symlink that
    /// appeared there since.
    fn reopen(&self, stack: &[Vec<u8>]) -> io::Result<OwnedFd> {
        let mut cur = dup_path(self.fd.as_fd())?;
        for c in stack {
            let fd = rustix::fs::openat(
                cur.as_fd(),
                c.as_slice(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            cur = fd;
        }
        Ok(cur)
    }
}

fn openat2_in_root(root: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            r => return r,
        }
    }
}

fn open_path_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn dup_path(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        fd,
        c".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The in-root path of a resolved fd, read back from /proc (test only).
    fn where_is(root: &Path, fd: &OwnedFd) -> String {
        use std::os::fd::AsRawFd;
        let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        format!("/{}", p.strip_prefix(&root).unwrap().display())
    }

    #[test]
    fn both_resolvers_agree_and_stay_in_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(outside.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        symlink(&outside, root.join("out")).unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        symlink("usr/../usr/./lib", root.join("rel")).unwrap();
        for resolver in [Resolver::Kernel, Resolver::Userspace] {
            let r = Root::open(&root, resolver).unwrap();
            let at = |p: &str| {
                let comps: Vec<&[u8]> = p.split('/').map(str::as_bytes).collect();
                r.dir(&comps, false).map(|fd| where_is(&root, &fd))
            };
            assert_eq!(at("lib").unwrap(), "/usr/lib", "{resolver:?}");
            assert_eq!(at("up").unwrap(), "/", "{resolver:?}");
            assert_eq!(at("up/usr/lib").unwrap(), "/usr/lib", "{resolver:?}");
            assert_eq!(at("rel").unwrap(), "/usr/lib", "{resolver:?}");
            assert_eq!(at("lib/../..").unwrap(), "/", "{resolver:?}");
            let e = at("a").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{resolver:?}");
            // `out` points at the host's `outside`, which does not exist inside the root.
            assert_eq!(at("out").unwrap_err().kind(), io::ErrorKind::NotFound);
            // Creating through the escaping symlink creates inside the root.
            let comps: Vec<&[u8]> = vec![b"out", b"made"];
            let fd = r.dir(&comps, true).unwrap();
            let inside = where_is(&root, &fd);
            assert!(inside.ends_with("/outside/made"), "{inside}");
            assert!(root.join(inside.trim_start_matches('/')).is_dir());
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
            std::fs::remove_dir_all(root.join(t.path().strip_prefix("/").unwrap())).unwrap();
        }
    }
}
