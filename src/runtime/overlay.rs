//! Overlayfs roots: mounting a stack of read-only layers with an optional writable upper dir,
//! and unmounting without ever recursing into what is mounted.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use rustix::mount::{MountFlags, UnmountFlags};

use super::RuntimeError;
use crate::util::fs::PathContext;

/// Overlay mount options. Paths that overlayfs cannot take in its option string (`,` `:` `\`)
/// or a string longer than a page are passed as `/proc/self/fd/N` of directories we hold open.
pub fn overlay_options(
    lowers_top_first: &[&Path],
    upper_work: Option<(&Path, &Path)>,
    extra: &str,
    held: &mut Vec<OwnedFd>,
) -> Result<String, RuntimeError> {
    let mut paths: Vec<&Path> = lowers_top_first.to_vec();
    if let Some((upper, work)) = upper_work {
        paths.extend([upper, work]);
    }
    let lowers = lowers_top_first.len();
    let assemble = |names: &[String]| {
        let mut o = format!("lowerdir={}", names[..lowers].join(":"));
        if let [upper, work] = &names[lowers..] {
            o.push_str(&format!(",upperdir={upper},workdir={work}"));
        }
        if !extra.is_empty() {
            o.push(',');
            o.push_str(extra);
        }
        o
    };
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let literal = names.iter().all(|n| !n.contains([',', ':', '\\', '\n']));
    let options = assemble(&names);
    // mount(2) copies at most one page of options.
    if literal && options.len() < 4000 {
        return Ok(options);
    }
    let mut names = Vec::with_capacity(paths.len());
    for p in paths {
        let fd = rustix::fs::open(
            p,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(io::Error::from)
        .at("open", p)?;
        names.push(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        held.push(fd);
    }
    Ok(assemble(&names))
}

/// Options that keep the upper dir a plain description of the changes: no redirects or
/// metadata-only copy-ups (an upper-dir walk would miss renamed directories and file data),
/// no inode index.
pub const OVERLAY_EXTRA: &str = "index=off,redirect_dir=off,metacopy=off";

/// Mounts an overlay of `lowers_top_first` at `target`: read-only without `upper_work`,
/// else writable into the upper dir (with its work dir).
pub fn mount_overlay(
    target: &Path,
    lowers_top_first: &[&Path],
    upper_work: Option<(&Path, &Path)>,
) -> Result<(), RuntimeError> {
    let flags = if upper_work.is_none() {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    let mut held = Vec::new();
    let mut last = None;
    // Kernels before 4.19 do not know every option in OVERLAY_EXTRA; they also predate
    // metacopy and default to no redirects, so the plain mount is equivalent there.
    for extra in [OVERLAY_EXTRA, ""] {
        let options = overlay_options(lowers_top_first, upper_work, extra, &mut held)?;
        let data =
            std::ffi::CString::new(options.clone()).map_err(|_| RuntimeError::ImagePath {
                path: options.clone(),
                reason: "NUL byte in a layer path".to_string(),
            })?;
        match rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str()) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let source = io::Error::from(e);
                let retry = e == rustix::io::Errno::INVAL && !extra.is_empty();
                last = Some(RuntimeError::Mount {
                    fstype: "overlay",
                    target: target.to_path_buf(),
                    options,
                    hint: match e {
                        rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => {
                            "; RUN steps mount overlayfs and start containers, which needs root"
                        }
                        rustix::io::Errno::NODEV => {
                            "; this kernel has no overlayfs (`modprobe overlay`)"
                        }
                        _ => "",
                    },
                    source,
                });
                if !retry {
                    break;
                }
            }
        }
    }
    Err(last.expect("at least one mount attempt"))
}

/// Whether `p` is a mount point (its device differs from its parent's, or it is listed as one).
pub fn is_mount_point(p: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (
        fs::symlink_metadata(p),
        p.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    if me.dev() != parent.dev() {
        return true;
    }
    // A bind mount of the same filesystem keeps the device; mountinfo knows.
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            let want = p.to_string_lossy();
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|m| unescape_mountinfo(m) == want)
        })
        .unwrap_or(false)
}

/// Undoes `/proc/self/mountinfo`'s octal escapes (`\\040` for a space).
pub fn unescape_mountinfo(s: &str) -> String {
    // The kernel writes space, tab, newline and backslash as `\ooo` octal escapes.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
        });
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(v) if b[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `target`, waiting briefly while it is busy and then detaching it (nothing of ours
/// uses it any more; the kernel frees it once the last user is gone). Not mounted is success.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    let mut tries = 0;
    loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INVAL) if !is_mount_point(target) => return Ok(()),
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::BUSY) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(rustix::io::Errno::BUSY) => {
                return rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(|e| {
                    RuntimeError::Unmount {
                        target: target.to_path_buf(),
                        source: e.into(),
                    }
                });
            }
            Err(e) => {
                return Err(RuntimeError::Unmount {
                    target: target.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn overlay_options_order_and_escaping() {
        let mut held = Vec::new();
        let o = overlay_options(
            &[Path::new("/s"), Path::new("/top"), Path::new("/bottom")],
            Some((Path::new("/u"), Path::new("/w"))),
            "index=off",
            &mut held,
        )
        .unwrap();
        assert_eq!(
            o,
            "lowerdir=/s:/top:/bottom,upperdir=/u,workdir=/w,index=off"
        );
        assert!(held.is_empty());
        let odd = tempfile::tempdir().unwrap();
        let weird = odd.path().join("a:b,c");
        fs::create_dir(&weird).unwrap();
        let o = overlay_options(&[&weird, odd.path()], None, "", &mut held).unwrap();
        assert!(o.starts_with("lowerdir=/proc/self/fd/"), "{o}");
        assert_eq!(held.len(), 2);
    }

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }
}
