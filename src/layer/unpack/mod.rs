//! Applying a layer tar onto a directory, the way a snapshotter applies a layer over the ones
//! below it — whatever the layer contains.
//!
//! Guarantee: nothing is written, linked, chmodded, chowned or deleted outside `root`, for any
//! input bytes. How:
//!
//! - Every entry name is normalised first (`path::clean`): leading `/` dropped, `..`
//!   resolved lexically, and a `..` that climbs above the root, a NUL, an over-long name refuse
//!   the whole layer ([`UnpackError::Hostile`]).
//! - The entry's *parent* is resolved inside the root with chroot semantics
//!   (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, or the userspace walk on kernels before
//!   5.6): an image's `lib -> /usr/lib` works, and a hostile `evil -> /` or `x -> ../../..` leads
//!   back into the root. Symlinks are created verbatim — they are just data — and every later
//!   write through them stays inside.
//! - The final component is only ever touched with `*at` calls on the parent fd that do not
//!   follow it: `openat(O_CREAT|O_EXCL|O_NOFOLLOW)` after unlinking what was there, `mkdirat`,
//!   `symlinkat`, `linkat` (flags 0: a link to a symlink links the symlink), `mknodat`,
//!   `unlinkat`; ownership, mode and xattrs are set on the opened fd (never by path, the
//!   CVE-2021-32760 lesson), times with `AT_SYMLINK_NOFOLLOW`.
//! - Hard link targets are resolved the same way; a target above the root is refused, and a
//!   directory target is refused.
//! - Whiteouts delete with `unlinkat` through fds opened `O_NOFOLLOW`, depth-first; `.wh.<name>`
//!   and `.wh..wh..opq` only remove what lower layers had (not entries of this same layer, OCI
//!   image-spec "Whiteouts").
//! - Limits: entries, bytes of the stream (after decompression), bytes per file, PAX/long-name
//!   sizes ([`ReadLimits`]); sparse files and unknown types are refused.
//! - Devices are created only when [`DevicePolicy::Create`] (root builders); the agent skips
//!   them. FIFOs are always created.
//!
//! Directory modes and mtimes are applied at the end (children would change the mtime, and a
//! read-only mode would stop a non-root unpack from filling the directory). The root is assumed
//! not to be modified concurrently by anyone else (as containerd assumes for its snapshots).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::host;
use super::path::{self, MAX_PATH, to_path};
use super::read::{EntryKind, ReadError, ReadLimits, TarEntry, TarReader};
use super::resolve::{Resolver, Root};
use super::{OPAQUE_MARKER, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX};
use crate::oci::Digest;
use crate::util::fs::PathError;
use entry::{file_meta, owner_of};

mod entry;
mod record;
mod sink;

pub use record::record_with;
pub use sink::{CopySink, FileMeta, FileRecord, FileSink, HashingSink};

/// What to do with character and block devices in a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Create them with `mknodat` (needs `CAP_MKNOD`: root builders).
    Create,
    /// Skip them and count them in [`UnpackStats::skipped`] (the agent: the device cgroup is
    /// the real gate, a node on disk is only noise).
    #[default]
    Skip,
    /// Refuse the layer.
    Refuse,
}

/// Policy for [`unpack`].
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Give entries the layer's uid/gid (needs `CAP_CHOWN`); otherwise they belong to the
    /// unpacking user.
    pub same_owner: bool,
    /// Device nodes.
    pub devices: DevicePolicy,
    /// Apply `security.capability` and `user.*` xattrs (others, notably `trusted.*` which could
    /// steer overlayfs, are never applied).
    pub xattrs: bool,
    /// Most entries in the layer.
    pub max_entries: u64,
    /// Most bytes in the uncompressed layer stream.
    pub max_total_bytes: u64,
    /// Largest single file.
    pub max_file_bytes: u64,
    /// How paths are resolved in the root.
    pub resolver: Resolver,
    /// If set, the stream's sha256 must be this, or the unpack fails at the end (the root then
    /// holds unverified content: unpack into a staging directory and discard it on error).
    pub expect_diff_id: Option<Digest>,
    /// Hash the stream for the stats' diff_id (and `expect_diff_id`). False for a layer the
    /// caller verified before and only replays: the diff_id is then the digest of nothing.
    pub hash: bool,
    /// The layer is unpacked alone, without the layers below it (to record its files, not to
    /// build an image): a hard link whose target is not in the layer is skipped, not refused.
    /// The unpack onto the real lower layers checks it.
    pub alone: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let l = ReadLimits::default();
        UnpackOptions {
            same_owner: false,
            devices: DevicePolicy::default(),
            xattrs: true,
            max_entries: l.max_entries,
            max_total_bytes: l.max_bytes,
            max_file_bytes: l.max_file_bytes,
            resolver: Resolver::default(),
            expect_diff_id: None,
            hash: true,
            alone: false,
        }
    }
}

impl UnpackOptions {
    /// The layer's tar reader under these limits, hashing unless told not to.
    fn reader<R: Read>(&self, layer: R) -> TarReader<R> {
        let limits = ReadLimits {
            max_entries: self.max_entries,
            max_bytes: self.max_total_bytes,
            max_file_bytes: self.max_file_bytes,
        };
        let reader = TarReader::new(layer, limits);
        if !self.hash && self.expect_diff_id.is_none() {
            reader.unhashed()
        } else {
            reader
        }
    }

    /// Ends the stream: its digest and length into `stats`, checked against
    /// [`expect_diff_id`](Self::expect_diff_id).
    fn finish<R: Read>(
        &self,
        reader: TarReader<R>,
        mut stats: UnpackStats,
    ) -> Result<UnpackStats, UnpackError> {
        let (diff_id, size) = reader.finish()?;
        if let Some(expected) = &self.expect_diff_id
            && *expected != diff_id
        {
            return Err(UnpackError::DiffIdMismatch {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        stats.diff_id = diff_id;
        stats.size = size;
        Ok(stats)
    }
}

/// What an unpack did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the whole uncompressed stream.
    pub diff_id: Digest,
    /// Its length.
    pub size: u64,
    /// Entries read.
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular files written.
    pub file_bytes: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Device nodes and FIFOs created.
    pub specials: u64,
    /// `.wh.<name>` entries applied.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries applied.
    pub opaques: u64,
    /// Entries skipped by policy (devices), aufs meta whiteouts and the root's own entry.
    pub skipped: u64,
    /// xattrs not applied (not allowed, or refused by the file system).
    pub xattrs_skipped: u64,
}

impl UnpackStats {
    /// Nothing done yet.
    fn empty() -> Self {
        UnpackStats {
            diff_id: Digest::of(b""),
            size: 0,
            entries: 0,
            files: 0,
            file_bytes: 0,
            dirs: 0,
            symlinks: 0,
            hardlinks: 0,
            specials: 0,
            whiteouts: 0,
            opaques: 0,
            skipped: 0,
            xattrs_skipped: 0,
        }
    }
}

/// Why a layer could not be applied. Every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer is refused: its entry tries to leave the root or to exceed a limit.
    #[error("refused layer entry `{}`: {reason}", entry.display())]
    Hostile {
        /// The entry's name as written in the layer.
        entry: PathBuf,
        /// Why.
        reason: String,
    },
    /// The entry cannot be applied (missing hard link target, parent not a directory,
    /// unsupported type…).
    #[error("cannot apply layer entry `{}`: {reason}", entry.display())]
    Invalid {
        /// The entry's name as written in the layer.
        entry: PathBuf,
        /// Why.
        reason: String,
    },
    /// The stream is not a tar we accept, or reading it failed.
    #[error(transparent)]
    Read(ReadError),
    /// A file system call failed.
    #[error("{action} for layer entry `{}`: {source}", entry.display())]
    Fs {
        /// The entry's name as written in the layer.
        entry: PathBuf,
        /// The call.
        action: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The root could not be opened.
    #[error(transparent)]
    Root(PathError),
    /// The stream's sha256 is not the expected diff_id.
    #[error("layer diff_id is {actual}, expected {expected}")]
    DiffIdMismatch {
        /// Expected.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
}

impl From<ReadError> for UnpackError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Limit { entry, reason, .. } => UnpackError::Hostile { entry, reason },
            e => UnpackError::Read(e),
        }
    }
}

fn hostile(entry: &Path, reason: impl Into<String>) -> UnpackError {
    UnpackError::Hostile {
        entry: entry.to_path_buf(),
        reason: reason.into(),
    }
}

fn invalid(entry: &Path, reason: impl Into<String>) -> UnpackError {
    UnpackError::Invalid {
        entry: entry.to_path_buf(),
        reason: reason.into(),
    }
}

/// Attaches the entry and the call to a file system error.
trait FsCtx<T> {
    fn fs(self, entry: &Path, action: &'static str) -> Result<T, UnpackError>;
}

impl<T> FsCtx<T> for Result<T, io::Error> {
    fn fs(self, entry: &Path, action: &'static str) -> Result<T, UnpackError> {
        self.map_err(|source| UnpackError::Fs {
            entry: entry.to_path_buf(),
            action,
            source,
        })
    }
}

impl<T> FsCtx<T> for Result<T, Errno> {
    fn fs(self, entry: &Path, action: &'static str) -> Result<T, UnpackError> {
        self.map_err(io::Error::from).fs(entry, action)
    }
}

/// Applies the layer `layer` (an uncompressed tar stream) onto `root`, copying file content.
pub fn unpack<R: Read>(
    layer: R,
    root: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    unpack_with(layer, root, opts, &mut CopySink)
}

/// [`unpack`] with a [`FileSink`] for regular files' content.
pub fn unpack_with<R: Read>(
    layer: R,
    root: &Path,
    opts: &UnpackOptions,
    sink: &mut dyn FileSink,
) -> Result<UnpackStats, UnpackError> {
    let root_dir = Root::open(root, opts.resolver).map_err(|source| {
        UnpackError::Root(PathError {
            action: "open unpack root",
            path: root.to_path_buf(),
            source,
        })
    })?;
    let mut reader = opts.reader(layer);
    let mut u = Unpacker {
        root: root_dir,
        opts,
        stats: UnpackStats::empty(),
        created: HashSet::new(),
        skipped: HashSet::new(),
        dirs: Vec::new(),
    };
    while let Some(entry) = reader.next_entry()? {
        u.entry(&mut reader, entry, sink)?;
    }
    u.finish_dirs()?;
    opts.finish(reader, u.stats)
}

struct Unpacker<'a> {
    root: Root,
    opts: &'a UnpackOptions,
    stats: UnpackStats,
    /// (parent dev, parent ino, name) of everything this layer created: whiteouts must not
    /// remove them.
    created: HashSet<(u64, u64, Vec<u8>)>,
    /// Normalised paths skipped by policy (devices), so hard links to them are skipped too.
    skipped: HashSet<Vec<u8>>,
    /// Directories whose mode and mtime are applied at the end: (normalised path, mode, mtime).
    dirs: Vec<(Vec<u8>, u32, i64)>,
}

/// A `Read` that remembers the stream error it hit, so a sink's `io::Error` can be told apart
/// from a broken layer.
struct Tracked<'r, R> {
    body: super::read::Body<'r, R>,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Tracked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf).inspect_err(|e| {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// Hands the current entry's body to `feed` (a sink reading it), telling the layer's own read
/// errors (the stream is broken) apart from the sink's (`action` failed).
fn feed_body<R: Read, T>(
    reader: &mut TarReader<R>,
    shown: &Path,
    action: &'static str,
    feed: impl FnOnce(&mut dyn Read) -> io::Result<T>,
) -> Result<T, UnpackError> {
    let mut content = Tracked {
        body: reader.body(),
        failed: None,
    };
    let out = feed(&mut content);
    let failed = content.failed.take();
    out.map_err(|source| match failed {
        Some(read_err) => reader.io_err(read_err).into(),
        None => UnpackError::Fs {
            entry: shown.to_owned(),
            action,
            source,
        },
    })
}

/// Fails unless the sink read the entry's body to its end.
fn all_read<R: Read>(
    reader: &TarReader<R>,
    shown: &Path,
    action: &'static str,
) -> Result<(), UnpackError> {
    match reader.remaining() {
        0 => Ok(()),
        n => Err(UnpackError::Fs {
            entry: shown.to_owned(),
            action,
            source: io::Error::other(format!("the file sink left {n} bytes unread")),
        }),
    }
}

impl Unpacker<'_> {
    fn entry<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        e: TarEntry,
        sink: &mut dyn FileSink,
    ) -> Result<(), UnpackError> {
        let shown = e.display_path();
        self.stats.entries += 1;
        let name = path::clean(&e.path).map_err(|r| hostile(&shown, r))?;
        if name.is_empty() {
            if e.kind == EntryKind::Dir {
                self.stats.skipped += 1;
                return Ok(());
            }
            return Err(hostile(
                &shown,
                "a non-directory entry names the root itself",
            ));
        }
        let (parent, base) = path::split_last(&name);
        let pcomps = path::components(parent);

        if base.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout_entry(&shown, &e, &pcomps, base);
        }

        let kind = if e.kind == EntryKind::File && e.path.ends_with(b"/") {
            EntryKind::Dir // old (V7) archives mark directories with a trailing slash only
        } else {
            e.kind
        };
        if self.skip_by_policy(&shown, kind, &name)? {
            return Ok(());
        }
        let owner = self.owner(&shown, &e)?;

        // A hard link's target is resolved before the destination is touched.
        let link_target = if kind == EntryKind::Hardlink {
            match self.link_target(&shown, &e.link)? {
                Some(t) => Some(t),
                None => {
                    self.stats.skipped += 1;
                    return Ok(());
                }
            }
        } else {
            None
        };
        if kind == EntryKind::Symlink
            && (e.link.is_empty() || e.link.contains(&0) || e.link.len() > MAX_PATH)
        {
            return Err(hostile(
                &shown,
                "a symlink target must be 1 to 4096 bytes without NUL",
            ));
        }

        let dir = self.resolve(&shown, &pcomps, true)?;
        let pmeta = host::fstat(dir.as_fd()).fs(&shown, "stat parent")?;
        let existing = match host::lstat_at(dir.as_fd(), base) {
            Ok(m) => Some(m),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).fs(&shown, "stat"),
        };
        let d = dir.as_fd();
        match kind {
            EntryKind::Dir => {
                if existing.is_some_and(|m| m.kind != FileType::Directory) {
                    host::remove_all_at(d, base).fs(&shown, "remove")?;
                }
                if !existing.is_some_and(|m| m.kind == FileType::Directory) {
                    rustix::fs::mkdirat(d, base, Mode::from_raw_mode(0o700)).fs(&shown, "mkdir")?;
                }
                let fd = host::open_dir(d, base).fs(&shown, "open directory")?;
                if let Some((u, g)) = owner {
                    rustix::fs::fchown(&fd, Some(u), Some(g)).fs(&shown, "chown")?;
                }
                self.xattrs(&shown, fd.as_fd(), &e)?;
                self.dirs.push((name.clone(), e.mode & 0o7777, e.mtime));
                self.stats.dirs += 1;
            }
            EntryKind::File => {
                if existing.is_some() {
                    host::remove_all_at(d, base).fs(&shown, "remove")?;
                }
                self.file(reader, &e, sink, &shown, &name, d, base, owner)?;
            }
            EntryKind::Symlink => {
                if existing.is_some() {
                    host::remove_all_at(d, base).fs(&shown, "remove")?;
                }
                rustix::fs::symlinkat(e.link.as_slice(), d, base).fs(&shown, "symlink")?;
                if let Some((u, g)) = owner {
                    rustix::fs::chownat(d, base, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
                        .fs(&shown, "chown")?;
                }
                rustix::fs::utimensat(d, base, &times(e.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .fs(&shown, "set times")?;
                self.stats.symlinks += 1;
            }
            EntryKind::Hardlink => {
                let (tdir, tbase, tmeta) = link_target.expect("resolved above");
                if existing.is_some_and(|m| (m.dev, m.ino) == (tmeta.dev, tmeta.ino)) {
                    // Already this inode (a link to itself, or a repeated entry).
                } else {
                    if existing.is_some() {
                        host::remove_all_at(d, base).fs(&shown, "remove")?;
                    }
                    rustix::fs::linkat(tdir.as_fd(), tbase.as_slice(), d, base, AtFlags::empty())
                        .fs(&shown, "link")?;
                }
                self.stats.hardlinks += 1;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                if existing.is_some() {
                    host::remove_all_at(d, base).fs(&shown, "remove")?;
                }
                self.special(&shown, d, base, &e, kind, owner)?;
                self.stats.specials += 1;
            }
            EntryKind::Other(_) => unreachable!("refused above"),
        }
        self.created.insert((pmeta.dev, pmeta.ino, base.to_vec()));
        Ok(())
    }

    /// A `.wh.` entry: an opaque-directory marker, a whiteout of one name, or AUFS metadata
    /// (skipped).
    fn whiteout_entry(
        &mut self,
        shown: &Path,
        e: &TarEntry,
        pcomps: &[&[u8]],
        base: &[u8],
    ) -> Result<(), UnpackError> {
        if e.kind != EntryKind::File {
            return Err(hostile(shown, "a whiteout must be a regular file"));
        }
        if base == OPAQUE_MARKER.as_bytes() {
            return self.opaque(shown, pcomps);
        }
        if base.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            self.stats.skipped += 1;
            return Ok(());
        }
        let victim = &base[WHITEOUT_PREFIX.len()..];
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(hostile(shown, "the whiteout names no file"));
        }
        self.whiteout(shown, pcomps, victim)
    }

    /// Refuses unknown entry types, and applies the device policy: `Ok(true)` when the entry
    /// is skipped (and remembered, so hard links to it are skipped too).
    fn skip_by_policy(
        &mut self,
        shown: &Path,
        kind: EntryKind,
        name: &[u8],
    ) -> Result<bool, UnpackError> {
        match kind {
            EntryKind::Other(flag) => Err(invalid(
                shown,
                format!("unsupported entry type `{}`", flag.escape_ascii()),
            )),
            EntryKind::CharDevice | EntryKind::BlockDevice => match self.opts.devices {
                DevicePolicy::Create => Ok(false),
                DevicePolicy::Skip => {
                    self.stats.skipped += 1;
                    self.skipped.insert(name.to_vec());
                    Ok(true)
                }
                DevicePolicy::Refuse => Err(hostile(shown, "device nodes are not allowed")),
            },
            _ => Ok(false),
        }
    }

    /// The owner to give the entry: its own with [`UnpackOptions::same_owner`], else none.
    fn owner(&self, shown: &Path, e: &TarEntry) -> Result<Option<(Uid, Gid)>, UnpackError> {
        owner_of(self.opts, shown, e)
    }

    /// A regular file, as `base` in the directory `d` (nothing is there any more): placed by
    /// the sink itself, or created here and filled by it.
    #[allow(clippy::too_many_arguments)]
    fn file<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        e: &TarEntry,
        sink: &mut dyn FileSink,
        shown: &Path,
        name: &[u8],
        d: BorrowedFd<'_>,
        base: &[u8],
        owner: Option<(Uid, Gid)>,
    ) -> Result<(), UnpackError> {
        let clean_path = to_path(name);
        let meta = file_meta(self.opts, e, &clean_path, owner);
        if feed_body(reader, shown, "place", |c| {
            sink.place_file(&meta, c, d, base)
        })? {
            all_read(reader, shown, "place")?;
            self.stats.files += 1;
            self.stats.file_bytes += e.size;
            return Ok(());
        }
        let fd = rustix::fs::openat(
            d,
            base,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .fs(shown, "create")?;
        let mut file = File::from(fd);
        feed_body(reader, shown, "write", |c| {
            sink.write_file(&clean_path, e.size, c, &mut file)
        })?;
        all_read(reader, shown, "write")?;
        self.finish_fd(shown, file.as_fd(), e, owner, true)?;
        self.stats.files += 1;
        self.stats.file_bytes += e.size;
        Ok(())
    }

    /// Resolves a directory in the root, mapping resolution failures to errors naming `entry`.
    fn resolve(&self, entry: &Path, comps: &[&[u8]], create: bool) -> Result<OwnedFd, UnpackError> {
        self.root
            .dir(comps, create)
            .map_err(|err| resolve_error(entry, err))
    }

    /// Resolves a hard link target: (parent fd, name, its metadata), or `None` when the target
    /// was a device skipped by policy.
    fn link_target(
        &self,
        entry: &Path,
        link: &[u8],
    ) -> Result<Option<(OwnedFd, Vec<u8>, host::Meta)>, UnpackError> {
        let target =
            path::clean(link).map_err(|r| hostile(entry, format!("hard link target: {r}")))?;
        if target.is_empty() {
            return Err(hostile(entry, "a hard link to the root"));
        }
        let (tparent, tbase) = path::split_last(&target);
        let missing = || {
            invalid(
                entry,
                format!(
                    "hard link target `{}` is not in this layer or below",
                    to_path(&target).display()
                ),
            )
        };
        let tdir = match self.root.dir(&path::components(tparent), false) {
            Ok(fd) => fd,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return if self.skipped.contains(&target) || self.opts.alone {
                    Ok(None)
                } else {
                    Err(missing())
                };
            }
            Err(err) => return Err(resolve_error(entry, err)),
        };
        let tmeta = match host::lstat_at(tdir.as_fd(), tbase) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return if self.skipped.contains(&target) || self.opts.alone {
                    Ok(None)
                } else {
                    Err(missing())
                };
            }
            Err(err) => return Err(err).fs(entry, "stat hard link target"),
        };
        if tmeta.kind == FileType::Directory {
            return Err(hostile(entry, "a hard link to a directory"));
        }
        Ok(Some((tdir, tbase.to_vec(), tmeta)))
    }

    fn whiteout(
        &mut self,
        entry: &Path,
        pcomps: &[&[u8]],
        victim: &[u8],
    ) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let Some(dir) = self.existing_dir(entry, pcomps)? else {
            return Ok(()); // nothing below to hide
        };
        let m = host::fstat(dir.as_fd()).fs(entry, "stat")?;
        if self.created.contains(&(m.dev, m.ino, victim.to_vec())) {
            return Ok(()); // a whiteout hides lower layers only
        }
        host::remove_all_at(dir.as_fd(), victim).fs(entry, "remove")
    }

    fn opaque(&mut self, entry: &Path, dcomps: &[&[u8]]) -> Result<(), UnpackError> {
        self.stats.opaques += 1;
        let Some(dir) = self.existing_dir(entry, dcomps)? else {
            return Ok(());
        };
        let m = host::fstat(dir.as_fd()).fs(entry, "stat")?;
        let readable = host::reopen_dir(dir.as_fd()).fs(entry, "open directory")?;
        for child in host::list_dir(readable.as_fd()).fs(entry, "list directory")? {
            if !self.created.contains(&(m.dev, m.ino, child.clone())) {
                host::remove_all_at(dir.as_fd(), &child).fs(entry, "remove")?;
            }
        }
        Ok(())
    }

    /// An existing directory, or `None` if the path does not lead to one.
    fn existing_dir(&self, entry: &Path, comps: &[&[u8]]) -> Result<Option<OwnedFd>, UnpackError> {
        match self.root.dir(comps, false) {
            Ok(fd) => Ok(Some(fd)),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                Ok(None)
            }
            Err(err) => Err(resolve_error(entry, err)),
        }
    }

    /// Owner, mode, xattrs and times on an open fd (files, FIFOs).
    fn finish_fd(
        &mut self,
        entry: &Path,
        fd: BorrowedFd<'_>,
        e: &TarEntry,
        owner: Option<(Uid, Gid)>,
        xattrs: bool,
    ) -> Result<(), UnpackError> {
        if let Some((u, g)) = owner {
            rustix::fs::fchown(fd, Some(u), Some(g)).fs(entry, "chown")?;
        }
        // After chown, which clears setuid/setgid (and file capabilities).
        rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode & 0o7777)).fs(entry, "chmod")?;
        if xattrs {
            self.xattrs(entry, fd, e)?;
        }
        rustix::fs::futimens(fd, &times(e.mtime)).fs(entry, "set times")
    }

    fn xattrs(
        &mut self,
        entry: &Path,
        fd: BorrowedFd<'_>,
        e: &TarEntry,
    ) -> Result<(), UnpackError> {
        for (k, v) in &e.xattrs {
            if !self.opts.xattrs || !xattr_allowed(k) {
                self.stats.xattrs_skipped += 1;
                continue;
            }
            match rustix::fs::fsetxattr(fd, k.as_slice(), v, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::PERM | Errno::OPNOTSUPP | Errno::INVAL | Errno::ACCESS) => {
                    self.stats.xattrs_skipped += 1
                }
                Err(err) => return Err(err).fs(entry, "set xattr"),
            }
        }
        Ok(())
    }

    fn special(
        &mut self,
        entry: &Path,
        d: BorrowedFd<'_>,
        base: &[u8],
        e: &TarEntry,
        kind: EntryKind,
        owner: Option<(Uid, Gid)>,
    ) -> Result<(), UnpackError> {
        let (ft, dev) = match kind {
            EntryKind::CharDevice => (
                FileType::CharacterDevice,
                rustix::fs::makedev(e.dev_major, e.dev_minor),
            ),
            EntryKind::BlockDevice => (
                FileType::BlockDevice,
                rustix::fs::makedev(e.dev_major, e.dev_minor),
            ),
            _ => (FileType::Fifo, 0),
        };
        rustix::fs::mknodat(d, base, ft, Mode::from_raw_mode(0o600), dev).fs(entry, "mknod")?;
        if kind == EntryKind::Fifo {
            // Opening a FIFO read-only and non-blocking has no side effect; then use the fd.
            let fd = rustix::fs::openat(
                d,
                base,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .fs(entry, "open fifo")?;
            return self.finish_fd(entry, fd.as_fd(), e, owner, false);
        }
        // A device must not be opened (that would call its driver): use an O_PATH fd, and chmod
        // through its /proc/self/fd link, which names the inode, not a path.
        let fd = rustix::fs::openat(
            d,
            base,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .fs(entry, "open device")?;
        if host::fstat(fd.as_fd()).fs(entry, "stat device")?.kind != ft {
            return Err(invalid(
                entry,
                "the device node was replaced while unpacking",
            ));
        }
        if let Some((u, g)) = owner {
            rustix::fs::chownat(&fd, c"", Some(u), Some(g), AtFlags::EMPTY_PATH)
                .fs(entry, "chown")?;
        }
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(e.mode & 0o7777))
            .fs(entry, "chmod")?;
        rustix::fs::utimensat(d, base, &times(e.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .fs(entry, "set times")
    }

    /// Applies directory modes and mtimes, children before parents.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (name, mode, mtime) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let entry = to_path(&name);
            let (parent, base) = path::split_last(&name);
            let Some(dir) = self.existing_dir(&entry, &path::components(parent))? else {
                continue; // removed by a later whiteout
            };
            let fd = match host::open_dir(dir.as_fd(), base) {
                Ok(fd) => fd,
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
                    ) =>
                {
                    continue; // replaced by a later entry
                }
                Err(err) => return Err(err).fs(&entry, "open directory"),
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).fs(&entry, "chmod")?;
            rustix::fs::futimens(&fd, &times(mtime)).fs(&entry, "set times")?;
        }
        Ok(())
    }
}

/// Whether an xattr of a layer entry is ever applied: `security.capability` (file
/// capabilities, which images rely on for e.g. `ping`) and `user.*`. Others — notably
/// `trusted.*`, which steers overlayfs — never are.
pub fn xattr_allowed(name: &[u8]) -> bool {
    !name.contains(&0) && (name == b"security.capability" || name.starts_with(b"user."))
}

fn resolve_error(entry: &Path, err: io::Error) -> UnpackError {
    match err.raw_os_error() {
        Some(libc::ELOOP) => invalid(
            entry,
            "too many symlinks resolving its parent (a symlink loop?)",
        ),
        Some(libc::ENOTDIR) => invalid(entry, "a parent is not a directory"),
        Some(libc::ENOENT) => invalid(entry, "a parent does not exist"),
        _ => UnpackError::Fs {
            entry: entry.to_path_buf(),
            action: "resolve parent",
            source: err,
        },
    }
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}
