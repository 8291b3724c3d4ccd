//! Overlayfs upper directory → layer changes, after a RUN.
//!
//! The upper dir of an `overlay` mount holds exactly what the RUN changed (BuildKit's overlay
//! differ, `util/overlay`, walks only it too), in overlayfs's own encoding, which we translate
//! to OCI's:
//!
//! | upper dir                                              | layer                              |
//! |--------------------------------------------------------|------------------------------------|
//! | character device 0:0 `name`                            | `.wh.name` (deleted)               |
//! | dir with `trusted.overlay.opaque=y` (or `user.`)       | `dir/`, then `dir/.wh..wh..opq`    |
//! | anything else                                          | the entry itself (added/modified)  |
//!
//! Choices, and how they differ from BuildKit:
//! - An opaque directory is written with the OCI opaque marker. BuildKit instead walks the
//!   subtree against the lower and writes one explicit whiteout per deleted child (it never emits
//!   `.wh..wh..opq`); both are valid OCI and every applier must accept both. Whiteouts found
//!   below an opaque directory are dropped: the marker already hides the lower content.
//! - Directories present in the upper dir are written with their upper metadata, even when they
//!   are there only because overlayfs copied them up for a child (BuildKit's `sameDirent` drops
//!   those when their metadata equals the lower's). The result is deterministic, not minimal.
//! - Mount stubs (paths the runtime created to mount over: `/proc`, `/dev`, `/sys`,
//!   `/etc/hosts`, `/etc/resolv.conf`, …) are left out when they are empty (an empty regular
//!   file, or a directory with nothing else in the upper dir) and did not exist in the lower
//!   layers; so are the directories the runtime made only to hold them (absent below, empty once
//!   the stub is gone). A stub parent that did exist below keeps its copied-up entry: restore its
//!   mtime after the RUN (as BuildKit's stub cleaner does) if the layer must stay empty.
//! - `redirect_dir` and `metacopy` upper dirs do not hold whole changes (content or renamed
//!   directories live in the lower); they are refused. Mount with both off (the kernel default).
//!
//! The upper dir is only read, never changed, and never followed through a symlink.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::ops::Bound;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::host;
use super::path::{self, to_path};
use super::write::{Change, WriteError, WriteOptions, WrittenLayer, write_changes};
use crate::oci::Compression;
use crate::util::fs::{PathContext, PathError};

/// Deepest directory nesting walked; one fd is held per level.
const MAX_DEPTH: usize = 512;

/// What the differ needs to know beyond the upper dir.
pub struct DiffOptions<'a> {
    /// Paths the runtime may have created as mount points, relative to the image root (a
    /// leading `/` is ignored): `/proc`, `/dev`, `/sys`, `/etc/hosts`, `/etc/resolv.conf`, …
    pub mount_stubs: &'a [PathBuf],
    /// Whether a path (relative to the image root, no leading `/`) existed in the lower layers.
    pub existed_in_lower: &'a dyn Fn(&Path) -> bool,
}

/// Why an upper dir could not be turned into a layer.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Reading the upper dir failed.
    #[error(transparent)]
    Walk(#[from] PathError),
    /// The upper dir uses an overlayfs feature whose changes are not all in the upper dir.
    #[error("`{}`: {reason}", path.display())]
    Unsupported {
        /// The path in the upper dir.
        path: PathBuf,
        /// What was found.
        reason: &'static str,
    },
    /// Writing the layer failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

#[derive(Clone, Copy, Debug)]
struct Node {
    kind: FileType,
    size: u64,
    whiteout: bool,
    opaque: bool,
}

type Key = Vec<Vec<u8>>;

/// The changes an overlayfs upper dir holds, in canonical order.
pub fn overlay_changes(upper: &Path, opts: &DiffOptions<'_>) -> Result<Vec<Change>, DiffError> {
    let root = rustix::fs::open(
        upper,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(io::Error::from)
    .at("open upper dir", upper)?;
    let mut nodes: BTreeMap<Key, Node> = BTreeMap::new();
    walk(upper, root.as_fd(), &mut Vec::new(), false, &mut nodes)?;
    prune_stubs(&mut nodes, opts);

    let mut changes = Vec::with_capacity(nodes.len());
    for (key, node) in &nodes {
        let p = to_path(&key.join(&b'/'));
        if node.whiteout {
            changes.push(Change::Delete(p));
        } else {
            changes.push(Change::Add(p.clone()));
            if node.opaque {
                changes.push(Change::Opaque(p));
            }
        }
    }
    Ok(changes)
}

/// Writes the layer of an overlayfs upper dir (see [`overlay_changes`]).
pub fn write_overlay_layer<W: Write>(
    upper: &Path,
    diff: &DiffOptions<'_>,
    out: W,
    compression: Compression,
    opts: &WriteOptions,
) -> Result<WrittenLayer, DiffError> {
    let changes = overlay_changes(upper, diff)?;
    Ok(write_changes(upper, &changes, out, compression, opts)?)
}

fn xattr_is_y(
    fd: BorrowedFd<'_>,
    names: [&std::ffi::CStr; 2],
    at: &Path,
) -> Result<bool, PathError> {
    for n in names {
        if host::get_xattr(fd, n).at("read xattr of", at)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn has_xattr(
    fd: BorrowedFd<'_>,
    names: [&std::ffi::CStr; 2],
    at: &Path,
) -> Result<bool, PathError> {
    for n in names {
        if host::get_xattr(fd, n).at("read xattr of", at)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn walk(
    upper: &Path,
    dir: BorrowedFd<'_>,
    prefix: &mut Key,
    under_opaque: bool,
    nodes: &mut BTreeMap<Key, Node>,
) -> Result<(), DiffError> {
    let here = upper.join(to_path(&prefix.join(&b'/')));
    if prefix.len() > MAX_DEPTH {
        return Err(PathError {
            action: "walk",
            path: here,
            source: io::Error::other(format!("deeper than {MAX_DEPTH} directories")),
        }
        .into());
    }
    for name in host::list_dir(dir).at("list directory", &here)? {
        let at = here.join(to_path(&name));
        let meta = host::lstat_at(dir, &name).at("stat", &at)?;
        prefix.push(name.clone());
        let whiteout =
            meta.kind == FileType::CharacterDevice && meta.rdev_major == 0 && meta.rdev_minor == 0;
        let mut node = Node {
            kind: meta.kind,
            size: meta.size,
            whiteout,
            opaque: false,
        };
        if whiteout {
            if !under_opaque {
                nodes.insert(prefix.clone(), node);
            }
        } else if meta.kind == FileType::Directory {
            let sub = host::open_dir(dir, &name).at("open directory", &at)?;
            if has_xattr(
                sub.as_fd(),
                [c"trusted.overlay.redirect", c"user.overlay.redirect"],
                &at,
            )? {
                return Err(DiffError::Unsupported {
                    path: at,
                    reason: "overlayfs redirect_dir: a renamed directory's content is in the lower layers",
                });
            }
            node.opaque = xattr_is_y(
                sub.as_fd(),
                [c"trusted.overlay.opaque", c"user.overlay.opaque"],
                &at,
            )?;
            nodes.insert(prefix.clone(), node);
            walk(
                upper,
                sub.as_fd(),
                prefix,
                under_opaque || node.opaque,
                nodes,
            )?;
        } else {
            if meta.kind == FileType::RegularFile {
                let fd = host::open_file(dir, &name).at("open", &at)?;
                if has_xattr(
                    fd.as_fd(),
                    [c"trusted.overlay.metacopy", c"user.overlay.metacopy"],
                    &at,
                )? {
                    return Err(DiffError::Unsupported {
                        path: at,
                        reason: "overlayfs metacopy: the file's data is in the lower layers",
                    });
                }
            }
            nodes.insert(prefix.clone(), node);
        }
        prefix.pop();
    }
    Ok(())
}

/// Whether `key` has a descendant in `nodes`.
fn has_children(nodes: &BTreeMap<Key, Node>, key: &Key) -> bool {
    nodes
        .range::<Key, _>((Bound::Excluded(key), Bound::Unbounded))
        .next()
        .is_some_and(|(k, _)| k.len() > key.len() && k.starts_with(key))
}

fn prune_stubs(nodes: &mut BTreeMap<Key, Node>, opts: &DiffOptions<'_>) {
    let mut stubs: Vec<Key> = opts
        .mount_stubs
        .iter()
        .filter_map(|p| {
            use std::os::unix::ffi::OsStrExt;
            let clean = path::clean(p.as_os_str().as_bytes()).ok()?;
            (!clean.is_empty()).then(|| {
                path::components(&clean)
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect()
            })
        })
        .collect();
    // Deepest first, so `/sys/fs/cgroup` goes before `/sys` can be seen empty.
    stubs.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    stubs.dedup();
    let lower = |k: &Key| (opts.existed_in_lower)(&to_path(&k.join(&b'/')));
    let empty = |nodes: &BTreeMap<Key, Node>, k: &Key| match nodes.get(k) {
        Some(n) if n.whiteout => false,
        Some(n) if n.kind == FileType::RegularFile => n.size == 0,
        Some(n) if n.kind == FileType::Directory => !has_children(nodes, k),
        _ => false,
    };
    for stub in &stubs {
        if !empty(nodes, stub) || lower(stub) {
            continue;
        }
        nodes.remove(stub);
        let mut parent = stub.clone();
        while parent.len() > 1 {
            parent.pop();
            let is_dir = nodes
                .get(&parent)
                .is_some_and(|n| n.kind == FileType::Directory && !n.opaque);
            if is_dir && !stubs.contains(&parent) && empty(nodes, &parent) && !lower(&parent) {
                nodes.remove(&parent);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(kind: FileType, size: u64) -> Node {
        Node {
            kind,
            size,
            whiteout: false,
            opaque: false,
        }
    }

    fn k(p: &str) -> Key {
        p.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn stubs_are_dropped_only_when_empty_and_new() {
        let mut nodes = BTreeMap::new();
        for (p, node) in [
            ("proc", n(FileType::Directory, 0)),
            ("dev", n(FileType::Directory, 0)),
            ("dev/keep", n(FileType::RegularFile, 3)),
            ("etc", n(FileType::Directory, 0)),
            ("etc/hosts", n(FileType::RegularFile, 0)),
            ("etc/resolv.conf", n(FileType::RegularFile, 0)),
            ("sys", n(FileType::Directory, 0)),
            ("sys/fs", n(FileType::Directory, 0)),
            ("sys/fs/cgroup", n(FileType::Directory, 0)),
            ("run", n(FileType::Directory, 0)),
            ("run/secrets", n(FileType::Directory, 0)),
        ] {
            nodes.insert(k(p), node);
        }
        let stubs: Vec<PathBuf> = [
            "/proc",
            "/dev",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/sys",
            "/sys/fs/cgroup",
            "/run/secrets",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        // etc and etc/resolv.conf existed below; run existed below.
        let lower = |p: &Path| {
            ["etc", "etc/resolv.conf", "run"]
                .iter()
                .any(|l| p == Path::new(l))
        };
        let opts = DiffOptions {
            mount_stubs: &stubs,
            existed_in_lower: &lower,
        };
        prune_stubs(&mut nodes, &opts);
        let left: Vec<String> = nodes
            .keys()
            .map(|k| String::from_utf8(k.join(&b'/')).unwrap())
            .collect();
        assert_eq!(left, ["dev", "dev/keep", "etc", "etc/resolv.conf", "run"]);
    }
}
