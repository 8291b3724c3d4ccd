//! The canonical layer writer: same tree in, same bytes out, on any machine.
//!
//! Normalisation follows BuildKit's layer writer (containerd `archive.ChangeWriter`, with
//! BuildKit's `rewrite-timestamp`), written with the field encodings of Go's `archive/tar` in
//! PAX format:
//!
//! - ustar headers (`ustar\0` `00`), a PAX `x` header only when a value does not fit (a name
//!   longer than 100 bytes or not ASCII, a long link target, ids ≥ 2²¹, files ≥ 8 GiB) or for the
//!   `security.capability` xattr — the only xattr kept;
//! - entries in canonical order ([`canonical_cmp`](super::canonical_cmp)): depth-first, each
//!   directory's names sorted bytewise, parents before children; directory names end in `/`;
//! - numeric uid/gid, empty uname/gname; mode keeps setuid/setgid/sticky;
//! - mtime in whole seconds, clamped to `SOURCE_DATE_EPOCH` when one is set (`min(mtime,
//!   epoch)`, a clamp, not a reset, like BuildKit's `rewrite-timestamp`); atime/ctime are never
//!   written; mtimes before 1970 are written as 0;
//! - sockets are skipped; FIFOs and devices (with major/minor) are kept;
//! - a file with several links in the layer is written once, later paths as hard links
//!   (`1`) to the first path in canonical order;
//! - whiteouts are empty regular files with mode 0, uid/gid 0 and mtime 0 (containerd ≥ 2.0).
//!
//! Not `tar::HeaderMode::Deterministic`: it replaces modes and owners, which a layer must keep.
//!
//! The compressed blob is deterministic too (gzip level 6 with header mtime 0 and OS byte 255;
//! zstd level 3), but only for the same compressor build: the diff_id is the portable identity.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::host::{self, Meta};
use super::path::{self, MAX_PATH, to_path};
use super::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::oci::digest::HashingWriter;
use crate::oci::{Compression, Digest};
use crate::util::fs::{PathContext, PathError};

mod tree;

pub use tree::{write_changes, write_tree};

/// gzip level for layer blobs. Fixed: a different level gives a different blob digest.
const GZIP_LEVEL: u32 = 6;
/// zstd level for layer blobs (zstd's default). Fixed for the same reason.
const ZSTD_LEVEL: i32 = 3;
/// Largest value of an 11-digit octal field (size, mtime).
const MAX_OCTAL_11: u64 = 0o777_7777_7777;
/// Largest value of a 7-digit octal field (uid, gid, devmajor, devminor).
const MAX_OCTAL_7: u64 = 0o777_7777;
/// Deepest directory nesting walked; one fd is held per level.
const MAX_DEPTH: usize = 512;

/// How to write a layer.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `SOURCE_DATE_EPOCH`: every mtime later than this is written as this.
    pub epoch: Option<i64>,
}

/// Metadata of one entry, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits plus setuid/setgid/sticky (`0o7777` is kept, the rest dropped).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time in seconds (clamped to the epoch when written).
    pub mtime: i64,
    /// Raw value of the `security.capability` xattr (file capabilities), if any.
    pub capability: Option<Vec<u8>>,
}

impl EntryMeta {
    /// `mode`, owned by root, mtime 0.
    pub fn with_mode(mode: u32) -> EntryMeta {
        EntryMeta {
            mode,
            ..EntryMeta::default()
        }
    }
}

/// A device node or FIFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialFile {
    /// A character device.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// One change of a layer, relative to a source directory (see [`write_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `path` was added or modified: write it as it is in the source directory.
    Add(PathBuf),
    /// `path` was deleted: write the whiteout `.wh.<name>`.
    Delete(PathBuf),
    /// The directory `path` hides everything below it in lower layers: write
    /// `<path>/.wh..wh..opq` (right after the directory, before its children).
    Opaque(PathBuf),
}

impl Change {
    fn path(&self) -> &Path {
        match self {
            Change::Add(p) | Change::Delete(p) | Change::Opaque(p) => p,
        }
    }
}

/// Digests and sizes of a written layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenLayer {
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Length of the uncompressed tar.
    pub uncompressed_size: u64,
    /// sha256 of the blob as written (equals `diff_id` when uncompressed).
    pub digest: Digest,
    /// Length of the blob as written.
    pub size: u64,
    /// How the blob is compressed.
    pub compression: Compression,
}

/// Why a layer could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading the source tree failed.
    #[error(transparent)]
    Source(#[from] PathError),
    /// Writing the layer failed.
    #[error("write layer: {0}")]
    Output(#[source] io::Error),
    /// An entry cannot be written as given (bad name, out of canonical order, duplicate, content
    /// of the wrong length, …).
    #[error("layer entry `{}`: {reason}", path.display())]
    Invalid {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading an entry's content failed.
    #[error("read content of layer entry `{}`: {source}", path.display())]
    Content {
        /// The entry.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A source file changed while the layer was being written.
    #[error("`{}` changed while the layer was written: {what}", path.display())]
    Changed {
        /// The file on the host.
        path: PathBuf,
        /// What changed.
        what: &'static str,
    },
}

fn invalid(path: &Path, reason: impl Into<String>) -> WriteError {
    WriteError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The compressor between the tar stream and the output.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<HashingWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<W>>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// Writes a canonical layer entry by entry, hashing as it goes.
///
/// Entries must be added in canonical order ([`canonical_cmp`](super::canonical_cmp); a
/// whiteout sorts by the path it deletes, an opaque marker right after its directory); an entry
/// out of order or twice is refused, so whatever a caller manages to write is canonical. Parent
/// directories are not invented: add them first if the layer should carry their metadata.
pub struct LayerBuilder<W: Write> {
    out: HashingWriter<Encoder<W>>,
    compression: Compression,
    epoch: Option<i64>,
    last: Option<Vec<Vec<u8>>>,
}

impl<W: Write> LayerBuilder<W> {
    /// Starts a layer written to `out`, compressed as asked.
    pub fn new(out: W, compression: Compression, opts: &WriteOptions) -> Result<Self, WriteError> {
        let enc = match compression {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(flate2::GzBuilder::new().mtime(0).write(
                HashingWriter::new(out),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Compression::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(HashingWriter::new(out), ZSTD_LEVEL)
                    .map_err(WriteError::Output)?,
            ),
        };
        Ok(LayerBuilder {
            out: HashingWriter::new(enc),
            compression,
            epoch: opts.epoch,
            last: None,
        })
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &Path, meta: &EntryMeta) -> Result<(), WriteError> {
        let name = entry_name(path)?;
        self.push(path, &name, false, b'5', meta, 0, b"", (0, 0), None)
    }

    /// Adds a regular file of `size` bytes read from `content`, which must yield exactly that
    /// many.
    pub fn add_file(
        &mut self,
        path: &Path,
        meta: &EntryMeta,
        size: u64,
        mut content: impl Read,
    ) -> Result<(), WriteError> {
        let name = entry_name(path)?;
        self.push(
            path,
            &name,
            false,
            b'0',
            meta,
            size,
            b"",
            (0, 0),
            Some(&mut content),
        )
    }

    /// Adds a symbolic link to `target` (written as given).
    pub fn add_symlink(
        &mut self,
        path: &Path,
        meta: &EntryMeta,
        target: &Path,
    ) -> Result<(), WriteError> {
        let name = entry_name(path)?;
        let target = path_bytes(target);
        if target.is_empty() || target.contains(&0) || target.len() > MAX_PATH {
            return Err(invalid(
                path,
                "a symlink target must be 1 to 4096 bytes without NUL",
            ));
        }
        self.push(path, &name, false, b'2', meta, 0, &target, (0, 0), None)
    }

    /// Adds a hard link to `target`, an entry earlier in this layer (or in a lower one).
    pub fn add_hardlink(
        &mut self,
        path: &Path,
        meta: &EntryMeta,
        target: &Path,
    ) -> Result<(), WriteError> {
        let name = entry_name(path)?;
        let target = entry_name(target)?;
        self.push(path, &name, false, b'1', meta, 0, &target, (0, 0), None)
    }

    /// Adds a device node or FIFO.
    pub fn add_special(
        &mut self,
        path: &Path,
        meta: &EntryMeta,
        file: SpecialFile,
    ) -> Result<(), WriteError> {
        let name = entry_name(path)?;
        let (flag, dev) = match file {
            SpecialFile::Char { major, minor } => (b'3', (major, minor)),
            SpecialFile::Block { major, minor } => (b'4', (major, minor)),
            SpecialFile::Fifo => (b'6', (0, 0)),
        };
        if u64::from(dev.0) > MAX_OCTAL_7 || u64::from(dev.1) > MAX_OCTAL_7 {
            return Err(invalid(path, "device numbers do not fit a tar header"));
        }
        self.push(path, &name, false, flag, meta, 0, b"", dev, None)
    }

    /// Adds the whiteout for `path`: lower layers' `path` is deleted.
    pub fn add_whiteout(&mut self, path: &Path) -> Result<(), WriteError> {
        let name = entry_name(path)?;
        let (dir, base) = path::split_last(&name);
        let mut wh = dir.to_vec();
        if !wh.is_empty() {
            wh.push(b'/');
        }
        wh.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
        wh.extend_from_slice(base);
        self.push_whiteout(path, &name, false, wh)
    }

    /// Adds the opaque marker of directory `dir`: everything lower layers have below `dir` is
    /// hidden. Add it right after `dir` itself.
    pub fn add_opaque(&mut self, dir: &Path) -> Result<(), WriteError> {
        let name = entry_name(dir)?;
        let mut wh = name.clone();
        wh.push(b'/');
        wh.extend_from_slice(OPAQUE_MARKER.as_bytes());
        self.push_whiteout(dir, &name, true, wh)
    }

    fn push_whiteout(
        &mut self,
        path: &Path,
        key_name: &[u8],
        opaque: bool,
        wh: Vec<u8>,
    ) -> Result<(), WriteError> {
        self.check_order(path, path::sort_key(key_name, opaque))?;
        // Whiteouts carry no metadata and are not clamped (mtime 0, containerd ≥ 2.0).
        let h = Header {
            name: &wh,
            flag: b'0',
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link: b"",
            dev: (0, 0),
            capability: None,
        };
        self.write_header(&h)
    }

    fn check_order(&mut self, path: &Path, key: Vec<Vec<u8>>) -> Result<(), WriteError> {
        if let Some(last) = &self.last {
            if key == *last {
                return Err(invalid(path, "added twice"));
            }
            if key < *last {
                return Err(invalid(
                    path,
                    format!(
                        "out of canonical order (after `{}`)",
                        to_path(&last.join(&b'/')).display()
                    ),
                ));
            }
        }
        self.last = Some(key);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        path: &Path,
        name: &[u8],
        opaque: bool,
        flag: u8,
        meta: &EntryMeta,
        size: u64,
        link: &[u8],
        dev: (u32, u32),
        content: Option<&mut dyn Read>,
    ) -> Result<(), WriteError> {
        let (_, base) = path::split_last(name);
        if base.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(invalid(
                path,
                "names starting with `.wh.` are reserved for whiteouts",
            ));
        }
        self.check_order(path, path::sort_key(name, opaque))?;
        let mut full = name.to_vec();
        if flag == b'5' {
            full.push(b'/');
        }
        let h = Header {
            name: &full,
            flag,
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime: self.clamp(meta.mtime),
            size,
            link,
            dev,
            capability: meta.capability.as_deref(),
        };
        self.write_header(&h)?;
        if let Some(content) = content {
            self.copy_content(path, size, content)?;
        }
        Ok(())
    }

    fn clamp(&self, mtime: i64) -> u64 {
        let m = match self.epoch {
            Some(e) => mtime.min(e),
            None => mtime,
        };
        (m.max(0) as u64).min(MAX_OCTAL_11)
    }

    fn write_header(&mut self, h: &Header<'_>) -> Result<(), WriteError> {
        let (pax, block) = h.encode();
        if let Some(pax) = pax {
            self.out.write_all(&pax).map_err(WriteError::Output)?;
        }
        self.out.write_all(&block).map_err(WriteError::Output)
    }

    fn copy_content(
        &mut self,
        path: &Path,
        size: u64,
        content: &mut dyn Read,
    ) -> Result<(), WriteError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match content.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(invalid(
                        path,
                        format!("content is {} bytes shorter than the declared {size}", left),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(WriteError::Content {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            };
            self.out.write_all(&buf[..n]).map_err(WriteError::Output)?;
            left -= n as u64;
        }
        let mut probe = [0u8; 1];
        loop {
            match content.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(invalid(
                        path,
                        format!("content is longer than the declared {size} bytes"),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(WriteError::Content {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        self.out
            .write_all(&ZEROS[..pad(size)])
            .map_err(WriteError::Output)
    }

    /// Writes the end-of-archive marker, finishes compression and returns the digests.
    pub fn finish(mut self) -> Result<WrittenLayer, WriteError> {
        self.out
            .write_all(&ZEROS[..1024])
            .map_err(WriteError::Output)?;
        let (enc, diff_id, uncompressed_size) = self.out.finish();
        let blob = match enc {
            Encoder::Plain(mut w) => {
                w.flush().map_err(WriteError::Output)?;
                None
            }
            Encoder::Gzip(e) => Some(e.finish().map_err(WriteError::Output)?),
            Encoder::Zstd(e) => Some(e.finish().map_err(WriteError::Output)?),
        };
        let (digest, size) = match blob {
            None => (diff_id.clone(), uncompressed_size),
            Some(hw) => {
                let (mut w, d, n) = hw.finish();
                w.flush().map_err(WriteError::Output)?;
                (d, n)
            }
        };
        Ok(WrittenLayer {
            diff_id,
            uncompressed_size,
            digest,
            size,
            compression: self.compression,
        })
    }
}

const ZEROS: [u8; 1024] = [0; 1024];

fn pad(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

/// A caller-given entry path, normalised; `..` and the root itself are refused.
fn entry_name(p: &Path) -> Result<Vec<u8>, WriteError> {
    let raw = path_bytes(p);
    if raw.split(|b| *b == b'/').any(|c| c == b"..") {
        return Err(invalid(p, "`..` is not allowed in a layer path"));
    }
    let name = path::clean(&raw).map_err(|r| invalid(p, r))?;
    if name.is_empty() {
        return Err(invalid(p, "the root itself is not an entry"));
    }
    Ok(name)
}

/// One header as Go's `archive/tar` writes it in PAX format.
struct Header<'a> {
    name: &'a [u8],
    flag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: &'a [u8],
    dev: (u32, u32),
    capability: Option<&'a [u8]>,
}

impl Header<'_> {
    /// The optional PAX header (block + records + padding) and the entry's header block.
    fn encode(&self) -> (Option<Vec<u8>>, [u8; 512]) {
        let mut records: Vec<(&[u8], Vec<u8>)> = Vec::new();
        let long = |s: &[u8]| s.len() > 100 || !s.is_ascii();
        if long(self.name) {
            records.push((b"path", self.name.to_vec()));
        }
        if long(self.link) {
            records.push((b"linkpath", self.link.to_vec()));
        }
        let uid = if self.uid > MAX_OCTAL_7 {
            records.push((b"uid", self.uid.to_string().into_bytes()));
            0
        } else {
            self.uid
        };
        let gid = if self.gid > MAX_OCTAL_7 {
            records.push((b"gid", self.gid.to_string().into_bytes()));
            0
        } else {
            self.gid
        };
        let size = if self.size > MAX_OCTAL_11 {
            records.push((b"size", self.size.to_string().into_bytes()));
            0
        } else {
            self.size
        };
        if let Some(cap) = self.capability {
            records.push((b"SCHILY.xattr.security.capability", cap.to_vec()));
        }
        let pax = (!records.is_empty()).then(|| {
            records.sort_by(|a, b| a.0.cmp(b.0));
            let mut data = Vec::new();
            for (k, v) in &records {
                data.extend(pax_record(k, v));
            }
            let mut out = block(
                &pax_header_name(self.name),
                b'x',
                0,
                0,
                0,
                data.len() as u64,
                0,
                b"",
                (0, 0),
            )
            .to_vec();
            let n = data.len() as u64;
            out.extend(data);
            out.extend(&ZEROS[..pad(n)]);
            out
        });
        let b = block(
            self.name, self.flag, self.mode, uid, gid, size, self.mtime, self.link, self.dev,
        );
        (pax, b)
    }
}

/// Go's name for the PAX header of `name`: `<dir>/PaxHeaders.0/<base>`.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let (dir, file) = match name.iter().rposition(|b| *b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (&b""[..], name),
    };
    let mut out = Vec::new();
    if !dir.is_empty() {
        out.extend_from_slice(dir);
        out.push(b'/');
    }
    out.extend_from_slice(b"PaxHeaders.0");
    if !file.is_empty() {
        out.push(b'/');
        out.extend_from_slice(file);
    }
    out
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts the whole record including itself.
fn pax_record(k: &[u8], v: &[u8]) -> Vec<u8> {
    let body = k.len() + v.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() + body > len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(k);
    r.push(b'=');
    r.extend_from_slice(v);
    r.push(b'\n');
    debug_assert_eq!(r.len(), len);
    r
}

/// One ustar header block, with Go's field formats (octal, NUL-terminated; checksum `%06o\0 `).
#[allow(clippy::too_many_arguments)]
fn block(
    name: &[u8],
    flag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &[u8],
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    put_ascii(&mut h.as_old_mut().name, name);
    put_ascii(&mut h.as_old_mut().linkname, link);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::new(flag));
    // Fields fit by construction (values above the octal range went to PAX records).
    let _ = h.set_device_major(dev.0);
    let _ = h.set_device_minor(dev.1);
    let mut b = *h.as_bytes();
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|x| u32::from(*x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b
}

/// Go's best-effort fallback for a field whose real value is in a PAX record: the ASCII bytes,
/// truncated to the field.
fn put_ascii(field: &mut [u8], s: &[u8]) {
    let ascii: Vec<u8> = s
        .iter()
        .copied()
        .filter(|b| b.is_ascii() && *b != 0)
        .collect();
    let n = ascii.len().min(field.len());
    field[..n].copy_from_slice(&ascii[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for n in [
            0usize, 1, 5, 6, 7, 89, 90, 95, 96, 97, 990, 995, 996, 997, 9990, 9996,
        ] {
            let v = vec![b'x'; n];
            let r = pax_record(b"path", &v);
            let len: usize = std::str::from_utf8(&r[..r.iter().position(|b| *b == b' ').unwrap()])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn go_style_names_and_checksums() {
        assert_eq!(pax_header_name(b"a/b"), b"a/PaxHeaders.0/b");
        assert_eq!(pax_header_name(b"b"), b"PaxHeaders.0/b");
        assert_eq!(pax_header_name(b"a/b/"), b"a/b/PaxHeaders.0");
        let b = block(b"etc/", b'5', 0o755, 0, 0, 0, 1, b"", (0, 0));
        assert!(b[148..154].iter().all(|d| (b'0'..=b'7').contains(d)));
        assert_eq!(&b[154..156], b"\0 ");
        let h = tar::Header::from_byte_slice(&b);
        assert_eq!(
            h.cksum().unwrap(),
            b.iter()
                .enumerate()
                .map(|(i, x)| if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*x)
                })
                .sum::<u32>()
        );
        assert_eq!(&b[257..265], b"ustar\x0000");
        assert_eq!(&b[329..337], b"0000000\0");
    }

    #[test]
    fn builder_refuses_disorder_duplicates_and_reserved_names() {
        let mut b =
            LayerBuilder::new(Vec::new(), Compression::None, &WriteOptions::default()).unwrap();
        let m = EntryMeta::with_mode(0o755);
        b.add_dir(Path::new("a"), &m).unwrap();
        b.add_opaque(Path::new("a")).unwrap();
        b.add_file(Path::new("a/b"), &m, 1, &b"x"[..]).unwrap();
        assert!(b.add_dir(Path::new("a"), &m).is_err());
        assert!(b.add_dir(Path::new("a/b"), &m).is_err());
        assert!(b.add_file(Path::new("a/c"), &m, 2, &b"x"[..]).is_err());
        assert!(b.add_file(Path::new("a/d"), &m, 1, &b"xy"[..]).is_err());
        assert!(b.add_dir(Path::new("a/.wh.e"), &m).is_err());
        assert!(b.add_dir(Path::new("a/../f"), &m).is_err());
        b.add_whiteout(Path::new("a/z")).unwrap();
        b.add_dir(Path::new("/b"), &m).unwrap();
        let l = b.finish().unwrap();
        assert_eq!(l.digest, l.diff_id);
    }
}
