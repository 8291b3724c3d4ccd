//! Objects: regular-file contents keyed by sha256 plus the inode metadata they carry (see the
//! store's module doc for why metadata is part of the key), and the [`FileSink`] that puts a
//! layer's files into a snapshot as hard links to them instead of writing copies.
//!
//! ```text
//! objects/sha256/<hex[..2]>/<hex>.<mode 4 octal>.<uid>.<gid>[.<xattrs: 16 hex>]
//!   e.g. 9f86d081…0a08.0755.0.0          an executable owned by root
//!        9f86d081…0a08.4755.0.0          the same bytes, setuid: a separate object
//!        e3b0c442…b855.0644.1000.1000    an empty file owned by the default user
//! ```
//!
//! A file body is hashed as it is read; bodies up to [`SMALL_BODY`] stay in memory, so
//! re-importing content the store has costs no writes at all. A new object is staged in the
//! import's `tmp/` directory with its metadata applied (owner, then mode — chown clears setuid —
//! then xattrs, then mtime) and linked into the snapshot being built; the import renames it to
//! its final name after the whole archive checked out.
//!
//! When the layer stream is rebuilt from files on the same file system (Docker's overlay2 diff
//! dirs, `--docker-root`), a new object is that file itself, hard-linked, when its inode
//! already carries the key's metadata ([`BodySource`]): adopting a robot's images then writes
//! no file data at all, and Docker's copy and the store's share their blocks.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use super::tarsplit::SplitWriter;
use crate::layer::{FileMeta, FileSink};
use crate::oci::Digest;

/// Bodies up to this size are hashed in memory before anything is written: most files of an
/// image are small, and most of a re-import's files are already objects.
const SMALL_BODY: usize = 256 * 1024;

/// An object's identity: content digest plus the inode metadata it carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// sha256 of the content.
    pub digest: Digest,
    /// Permission bits plus setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// First 16 hex digits of the sha256 of the applied xattrs (sorted, length-prefixed), or
    /// `None` without xattrs.
    pub xattrs: Option<String>,
}

impl ObjectKey {
    /// The object's file name.
    pub fn file_name(&self) -> String {
        let mut s = format!(
            "{}.{:04o}.{}.{}",
            self.digest.hex(),
            self.mode,
            self.uid,
            self.gid
        );
        if let Some(x) = &self.xattrs {
            s.push('.');
            s.push_str(x);
        }
        s
    }

    /// Its path below `objects/sha256/`.
    pub fn rel_path(&self) -> PathBuf {
        PathBuf::from(&self.digest.hex()[..2]).join(self.file_name())
    }

    /// Parses a file name written by [`file_name`](Self::file_name); `None` for anything else.
    pub fn parse(name: &str) -> Option<ObjectKey> {
        let mut it = name.split('.');
        let digest = Digest::from_hex(it.next()?).ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let xattrs = it.next().map(str::to_string);
        let xattrs_ok = xattrs.as_deref().is_none_or(|x| {
            x.len() == 16
                && x.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if it.next().is_some() || mode > 0o7777 || !xattrs_ok {
            return None;
        }
        let key = ObjectKey {
            digest,
            mode,
            uid,
            gid,
            xattrs,
        };
        (key.file_name() == name).then_some(key)
    }
}

/// The xattr part of an object key.
pub(crate) fn xattrs_key(xattrs: &[(&[u8], &[u8])]) -> Option<String> {
    if xattrs.is_empty() {
        return None;
    }
    let mut sorted = xattrs.to_vec();
    sorted.sort();
    let mut h = Sha256::new();
    for (k, v) in sorted {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    Some(hex::encode(h.finalize())[..16].to_string())
}

/// The tar-split being recorded for a layer, and whether the bytes read now are a file body
/// (which the sink records as a digest) or raw tar bytes.
pub(crate) struct Recorder {
    pub split: SplitWriter,
    pub in_body: bool,
    /// Bytes of the decompressed stream the [`Tee`] has passed on: where a body starts and
    /// ends, for [`BodySource`]'s check.
    pub pos: u64,
}

/// Shared between the [`Tee`] under the tar reader and the [`LinkSink`] above it.
pub(crate) type SharedRecorder = Rc<RefCell<Recorder>>;

/// Passes a decompressed layer through to the tar reader, recording every byte that is not a
/// file body into the tar-split.
pub(crate) struct Tee<R> {
    pub inner: R,
    pub rec: Option<SharedRecorder>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(rec) = &self.rec {
            let mut rec = rec.borrow_mut();
            if !rec.in_body {
                rec.split.raw(&buf[..n])?;
            }
            rec.pos += n as u64;
        }
        Ok(n)
    }
}

/// New objects of one import and where each content can be read.
pub(crate) struct Staging {
    /// The import's staging directory for objects.
    pub dir: PathBuf,
    /// The store's `objects/sha256`.
    pub objects: PathBuf,
    /// Objects created by this import: file name → staged path.
    pub staged: BTreeMap<String, PathBuf>,
    /// A readable path (staged or final) for every content digest this import used.
    pub content: HashMap<Digest, PathBuf>,
    /// Bytes of new objects.
    pub added_bytes: u64,
    /// Files linked into snapshots.
    pub linked: u64,
    /// Files copied because an object had reached the file system's link limit.
    pub copied: u64,
    /// Owner given to objects when the unpacker does not chown (not root).
    pub ids: (u32, u32),
    /// New objects that are their source's file, linked ([`BodySource`]), not copies.
    pub shared: u64,
    spills: u64,
}

/// A body, hashed.
enum Body {
    Mem(Vec<u8>),
    Spilled(PathBuf),
    /// Already stored, at this path (some variant of the content): read only when a new
    /// variant must be made.
    Stored(PathBuf),
    /// Exactly the bytes of this file, hashed as they streamed by ([`BodySource`]): a new
    /// object can be the file itself.
    Source(File),
    /// Hashed only: a large body whose bytes were expected to come from one file and did not.
    Dropped,
}

/// The file the bytes being read come from, when the layer stream is rebuilt from files
/// (Docker's diff dirs, docker_split.rs): the reader sets it as it opens each body and clears
/// it at every other entry. [`LinkSink`] takes it once a body is read, and only if the body
/// was that file's bytes and nothing else, by position in the stream.
pub(crate) struct BodySource {
    /// The file, open for reading.
    pub file: File,
    /// Offset in the (uncompressed) layer stream of its first byte.
    pub start: u64,
    /// Its size, as the stream's recipe says.
    pub size: u64,
    /// Bytes of it the reader has given out.
    pub delivered: u64,
}

/// Shared between the stream's reader and the [`LinkSink`].
pub(crate) type SourceCell = Rc<RefCell<Option<BodySource>>>;

/// The content of the file being unpacked, when the reader already knows it: a layer the store
/// committed (and verified) before, replayed from its tar-split to build another snapshot.
/// The reader sets it as each file's first body byte is read; [`LinkSink`] takes it instead of
/// reading and hashing the body again.
pub(crate) type KnownContent = std::rc::Rc<std::cell::RefCell<Option<(Digest, PathBuf)>>>;

impl Staging {
    pub(crate) fn new(dir: PathBuf, objects: PathBuf) -> Staging {
        Staging {
            dir,
            objects,
            staged: BTreeMap::new(),
            content: HashMap::new(),
            added_bytes: 0,
            linked: 0,
            copied: 0,
            ids: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            shared: 0,
            spills: 0,
        }
    }

    /// Reads a body to its end, hashing it; large ones spill into a staging file, or with
    /// `keep_large` false are only hashed ([`Body::Dropped`]: the caller has them elsewhere).
    fn read_body(
        &mut self,
        content: &mut dyn Read,
        size: u64,
        keep_large: bool,
    ) -> io::Result<(Body, Digest)> {
        let mut h = Sha256::new();
        let mut mem = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(SMALL_BODY));
        let mut buf = vec![0u8; 256 * 1024];
        let mut spill: Option<(PathBuf, File)> = None;
        let mut dropped = false;
        let mut total = 0u64;
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if let Some((p, _)) = &spill {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(e);
                }
            };
            h.update(&buf[..n]);
            total += n as u64;
            match &mut spill {
                Some((_, f)) => f.write_all(&buf[..n])?,
                None if dropped => {}
                None if mem.len() + n <= SMALL_BODY => mem.extend_from_slice(&buf[..n]),
                None if !keep_large => {
                    dropped = true;
                    mem = Vec::new();
                }
                None => {
                    self.spills += 1;
                    let p = self.dir.join(format!(".spill-{}", self.spills));
                    let mut f = File::options().write(true).create_new(true).open(&p)?;
                    f.write_all(&mem)?;
                    f.write_all(&buf[..n])?;
                    mem = Vec::new();
                    spill = Some((p, f));
                }
            }
        }
        if total != size {
            if let Some((p, _)) = &spill {
                let _ = std::fs::remove_file(p);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file body has {total} bytes, its header says {size}"),
            ));
        }
        let digest = Digest::from_hex(&hex::encode(h.finalize())).expect("sha256 hex");
        Ok(match spill {
            Some((p, _)) => (Body::Spilled(p), digest),
            None if dropped => (Body::Dropped, digest),
            None => (Body::Mem(mem), digest),
        })
    }

    /// Finds or creates the object for `key` and links it as `name` in `dir`.
    fn place(
        &mut self,
        key: &ObjectKey,
        body: Body,
        meta: &FileMeta<'_>,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> io::Result<()> {
        let src = self.stage(key, body, meta)?;
        match rustix::fs::linkat(rustix::fs::CWD, &src, dir, name, AtFlags::empty()) {
            Ok(()) => self.linked += 1,
            // ext4 allows 65000 links per inode; a very common object (an empty
            // `__init__.py`) can get there across many snapshots. ostree copies then; so do we.
            Err(Errno::MLINK) => {
                copy_into(&src, dir, name, key, meta)?;
                self.copied += 1;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Finds the object for `key`, or stages it from `body`; returns its path.
    fn stage(&mut self, key: &ObjectKey, body: Body, meta: &FileMeta<'_>) -> io::Result<PathBuf> {
        let fname = key.file_name();
        let final_path = self.objects.join(key.rel_path());
        let src = if final_path.is_file() {
            discard(body);
            final_path
        } else if let Some(p) = self.staged.get(&fname) {
            discard(body);
            p.clone()
        } else {
            let p = self.dir.join(&fname);
            let file = match body {
                Body::Source(from) if link_source(&from, key, meta, &p) => {
                    self.shared += 1;
                    None
                }
                Body::Source(from) => Some(copy_source(&from, meta.size, &p)?),
                Body::Dropped => {
                    return Err(io::Error::other(format!(
                        "`{}`: its body was not kept",
                        meta.path.display()
                    )));
                }
                Body::Mem(bytes) => {
                    let mut f = File::options().write(true).create_new(true).open(&p)?;
                    f.write_all(&bytes)?;
                    Some(f)
                }
                Body::Spilled(s) => {
                    std::fs::rename(&s, &p)?;
                    Some(File::options().write(true).open(&p)?)
                }
                Body::Stored(s) => {
                    let mut from = File::open(&s)?;
                    let mut f = File::options().write(true).create_new(true).open(&p)?;
                    io::copy(&mut from, &mut f)?;
                    Some(f)
                }
            };
            if let Some(file) = file {
                apply_meta(file.as_fd(), key, meta)?;
            }
            self.added_bytes += meta.size;
            self.staged.insert(fname, p.clone());
            p
        };
        self.content
            .entry(key.digest.clone())
            .or_insert_with(|| src.clone());
        Ok(src)
    }
}

fn discard(body: Body) {
    if let Body::Spilled(p) = body {
        // Best effort: the staging directory is removed with the import anyway.
        let _ = std::fs::remove_file(p);
    }
}

/// Links `from` as the new object `to` when the file already is what the object must be: the
/// key's mode and owner, the tar's mtime and size, and no xattrs at all (the key has none
/// either). Sharing the inode is sound because neither side writes it again: the store never
/// changes an object in place (a new variant is a new file), and Docker never rewrites a
/// committed layer's files (containers see them read-only, as overlay lower dirs; removing an
/// image unlinks them, which leaves the object whole). False whenever a link cannot be made
/// (another file system, the link limit, no permission): the caller copies.
fn link_source(from: &File, key: &ObjectKey, meta: &FileMeta<'_>, to: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(st) = from.metadata() else {
        return false;
    };
    if key.xattrs.is_some()
        || !st.is_file()
        || (st.mode() & 0o7777, st.uid(), st.gid()) != (key.mode, key.uid, key.gid)
        || st.mtime() != meta.mtime
        || st.len() != meta.size
    {
        return false;
    }
    let mut names = [0u8; 64];
    match rustix::fs::flistxattr(from, &mut names[..]) {
        Ok(0) | Err(Errno::OPNOTSUPP) => {}
        _ => return false,
    }
    // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH (root has it); /proc's link does not.
    rustix::fs::linkat(from, "", rustix::fs::CWD, to, AtFlags::EMPTY_PATH).is_ok()
        || rustix::fs::linkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", from.as_raw_fd()),
            rustix::fs::CWD,
            to,
            AtFlags::SYMLINK_FOLLOW,
        )
        .is_ok()
}

/// A new file `to` holding the first `size` bytes of `from`, read by offset (the reader that
/// opened `from` keeps its own position).
fn copy_source(from: &File, size: u64, to: &Path) -> io::Result<File> {
    use std::os::unix::fs::FileExt as _;
    let mut f = File::options().write(true).create_new(true).open(to)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    while at < size {
        let want = buf
            .len()
            .min(usize::try_from(size - at).unwrap_or(usize::MAX));
        let n = from.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("`{}`: the source file shrank", to.display()),
            ));
        }
        f.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(f)
}

/// Owner, then mode (chown clears setuid), then xattrs (chown clears file capabilities), then
/// the mtime.
pub(crate) fn apply_meta(
    fd: BorrowedFd<'_>,
    key: &ObjectKey,
    meta: &FileMeta<'_>,
) -> io::Result<()> {
    if meta.owner.is_some() {
        rustix::fs::fchown(
            fd,
            Some(Uid::from_raw(key.uid)),
            Some(Gid::from_raw(key.gid)),
        )?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(key.mode))?;
    for (k, v) in &meta.xattrs {
        match rustix::fs::fsetxattr(fd, *k, v, XattrFlags::empty()) {
            Ok(()) => {}
            // As the unpacker: a file system or a user that cannot hold the xattr skips it.
            Err(Errno::PERM | Errno::OPNOTSUPP | Errno::INVAL | Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let t = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: 0,
    };
    rustix::fs::futimens(
        fd,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
    )?;
    Ok(())
}

/// A copy of object `src` as `name` in `dir`, with the object's metadata.
fn copy_into(
    src: &Path,
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &ObjectKey,
    meta: &FileMeta<'_>,
) -> io::Result<()> {
    let mut from = File::open(src)?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut to = File::from(fd);
    io::copy(&mut from, &mut to)?;
    apply_meta(to.as_fd(), key, meta)
}

/// Puts each regular file of a layer into the snapshot as a hard link to its object, and
/// records its body in the tar-split if one is being written.
pub(crate) struct LinkSink<'a> {
    pub staging: &'a mut Staging,
    pub recorder: Option<SharedRecorder>,
    /// Set for layers replayed from a committed tar-split (see [`KnownContent`]).
    pub known: Option<KnownContent>,
    /// Set when the stream is rebuilt from files (see [`BodySource`]); needs `recorder`.
    pub source: Option<SourceCell>,
}

impl FileSink for LinkSink<'_> {
    fn write_file(
        &mut self,
        path: &Path,
        _size: u64,
        _content: &mut dyn Read,
        _file: &mut File,
    ) -> io::Result<()> {
        // Never called: place_file places every file.
        Err(io::Error::other(format!(
            "`{}`: the object sink places files, it does not write them",
            path.display()
        )))
    }

    fn place_file(
        &mut self,
        file: &FileMeta<'_>,
        content: &mut dyn Read,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> io::Result<bool> {
        let (key, body) = self.object(file, content)?;
        self.staging.place(&key, body, file, dir, name)?;
        Ok(true)
    }

    fn record_file(&mut self, file: &FileMeta<'_>, content: &mut dyn Read) -> io::Result<bool> {
        let (key, body) = self.object(file, content)?;
        self.staging.stage(&key, body, file)?;
        Ok(true)
    }
}

impl LinkSink<'_> {
    /// Reads a file's body (recording it in the tar-split being written, if any): its object
    /// key and where its bytes are.
    fn object(
        &mut self,
        file: &FileMeta<'_>,
        content: &mut dyn Read,
    ) -> io::Result<(ObjectKey, Body)> {
        if let Some(r) = &self.recorder {
            r.borrow_mut().in_body = true;
        }
        let (body, digest) = if let Some(known) = self.known.as_ref().filter(|_| file.size > 0) {
            // The reader announces a body when its first byte is read (the unpacker never
            // reads past a header before placing the file), then gives zeros: drain them.
            let mut first = [0u8; 1];
            content.read_exact(&mut first)?;
            let Some((digest, path)) = known.borrow_mut().take() else {
                return Err(io::Error::other(format!(
                    "`{}`: the layer's tar-split announced no content",
                    file.path.display()
                )));
            };
            io::copy(content, &mut io::sink())?;
            (Body::Stored(path), digest)
        } else if self.source.is_some() && file.size > 0 {
            let start = self.recorder.as_ref().map(|r| r.borrow().pos);
            let (body, digest) = self.read_recorded(content, file.size, false)?;
            match (self.source_of(start, file.size), body) {
                (Some(f), _) => (Body::Source(f), digest),
                (None, Body::Dropped) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "`{}`: its {} bytes are not one whole file of the layer's source",
                            file.path.display(),
                            file.size
                        ),
                    ));
                }
                (None, body) => (body, digest),
            }
        } else {
            self.read_recorded(content, file.size, true)?
        };
        let (uid, gid) = file.owner.unwrap_or(self.staging.ids);
        let key = ObjectKey {
            digest,
            mode: file.mode,
            uid,
            gid,
            xattrs: xattrs_key(&file.xattrs),
        };
        Ok((key, body))
    }

    /// The file the body just read came from, if its bytes were exactly that file's: the
    /// body began at `start` in the stream, ended where the recorder is now, and the source
    /// the reader opened covers the same bytes, all given out.
    fn source_of(&mut self, start: Option<u64>, size: u64) -> Option<File> {
        let end = self.recorder.as_ref()?.borrow().pos;
        let src = self.source.as_ref()?.borrow_mut().take()?;
        (Some(src.start) == start
            && src.size == size
            && src.delivered == size
            && end.checked_sub(src.start) == Some(size))
        .then_some(src.file)
    }

    /// Reads and hashes a body, recording it in the tar-split being written, if any.
    fn read_recorded(
        &mut self,
        content: &mut dyn Read,
        size: u64,
        keep_large: bool,
    ) -> io::Result<(Body, Digest)> {
        let body = self.staging.read_body(content, size, keep_large);
        if let Some(r) = &self.recorder {
            let mut r = r.borrow_mut();
            r.in_body = false;
            if let Ok((_, d)) = &body {
                r.split.file(size, d)?;
            }
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    /// A source file whose inode carries the key's metadata becomes the object (same inode);
    /// one that does not (another mode) is copied, and the copy gets the key's metadata.
    #[test]
    fn source_bodies_are_linked_when_their_metadata_is_the_keys() {
        let t = tempfile::tempdir().unwrap();
        let (objects, tmp, snap) = (t.path().join("o"), t.path().join("t"), t.path().join("s"));
        for d in [&objects, &tmp, &snap] {
            std::fs::create_dir(d).unwrap();
        }
        let src = t.path().join("src");
        std::fs::write(&src, b"body").unwrap();
        std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let mtime = std::fs::metadata(&src).unwrap().mtime();
        let mut staging = Staging::new(tmp.clone(), objects);
        let snap_dir = File::open(&snap).unwrap();
        for (mode, name) in [(0o640, "same"), (0o644, "other")] {
            let meta = FileMeta {
                path: Path::new(name),
                size: 4,
                mode,
                owner: None,
                mtime,
                xattrs: Vec::new(),
            };
            let key = ObjectKey {
                digest: Digest::of(b"body"),
                mode,
                uid: staging.ids.0,
                gid: staging.ids.1,
                xattrs: None,
            };
            let body = Body::Source(File::open(&src).unwrap());
            staging
                .place(&key, body, &meta, snap_dir.as_fd(), name.as_bytes())
                .unwrap();
        }
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&snap.join("same")), ino(&src));
        assert_ne!(ino(&snap.join("other")), ino(&src));
        assert_eq!(std::fs::read(snap.join("other")).unwrap(), b"body");
        let m = std::fs::metadata(snap.join("other")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!(staging.shared, 1);
    }

    #[test]
    fn object_names_round_trip_and_refuse_others() {
        let k = ObjectKey {
            digest: Digest::of(b"x"),
            mode: 0o4755,
            uid: 0,
            gid: 1000,
            xattrs: None,
        };
        let n = k.file_name();
        assert!(n.ends_with(".4755.0.1000"), "{n}");
        assert_eq!(ObjectKey::parse(&n), Some(k.clone()));
        let kx = ObjectKey {
            xattrs: xattrs_key(&[(b"security.capability", b"\x01")]),
            ..k.clone()
        };
        assert_eq!(ObjectKey::parse(&kx.file_name()), Some(kx.clone()));
        assert_eq!(
            kx.rel_path().parent().unwrap(),
            Path::new(&k.digest.hex()[..2])
        );
        let hex = k.digest.hex().to_string();
        for bad in [
            hex.clone(),
            format!("{hex}.755.0.0"),
            format!("{hex}.17777.0.0"),
            format!("{hex}.0755.-1.0"),
            format!("{hex}.0755.0.0.a.b"),
            format!("{hex}.0755.00.0"),
            "x.0755.0.0".into(),
            format!("{hex}.0755.0.0.tmp"),
        ] {
            assert_eq!(ObjectKey::parse(&bad), None, "{bad}");
        }
        // The xattr key does not depend on order.
        assert_eq!(
            xattrs_key(&[(b"user.a", b"1"), (b"user.b", b"2")]),
            xattrs_key(&[(b"user.b", b"2"), (b"user.a", b"1")])
        );
    }
}
