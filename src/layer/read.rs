//! A streaming tar reader with hard limits, for layers we did not write.
//!
//! The `tar` crate is used for header *fields* only (`tar::Header` parses numbers and ustar
//! prefixes); the entry loop, PAX records and GNU long names are handled here so that every size
//! is bounded before memory is allocated (a 10 GiB PAX header must not become a 10 GiB `Vec`) and
//! so that ambiguous archives are refused instead of being read one way here and another way by
//! Go's `archive/tar` (parser differentials such as TARmageddon, CVE-2026-33055,
//! GHSA-3pv8-6f4r-ffg2 — parser differentials):
//!
//! - a header-only entry (link, symlink, device, directory, FIFO) that declares data is refused
//!   (Go skips no data for those types, tar-rs skips `size` bytes: they would disagree);
//! - a GNU long name together with a PAX `path`, or two PAX headers in a row, is refused;
//! - non-zero bytes after the end-of-archive marker are refused (a parser that ignores zero
//!   blocks would see more entries);
//! - a global PAX header that would change entries (`path`, `size`, …) and sparse files are
//!   refused.
//!
//! The reader hashes every byte it consumes, so [`TarReader::finish`] returns the diff_id.

use std::io::{self, Read};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::path::{MAX_PATH, to_path};
use crate::oci::Digest;

/// Size of a tar block.
const BLOCK: u64 = 512;
/// Largest PAX extended header accepted. Real ones hold a path, a link target and a few xattrs;
/// 1 MiB is far above that and small enough to hold in memory.
const MAX_PAX_BYTES: u64 = 1 << 20;
/// Largest GNU long name/link body: a path plus its NUL.
const MAX_LONGNAME_BYTES: u64 = MAX_PATH as u64 + 1;

/// PAX records: (key, value), in order.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Limits applied while reading. Exceeding one refuses the layer.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Most entries (not counting PAX and long-name headers).
    pub max_entries: u64,
    /// Most bytes in the whole uncompressed stream, headers and padding included — the
    /// decompression-bomb cap, applied after the decoder.
    pub max_bytes: u64,
    /// Largest single regular file.
    pub max_file_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_entries: 1_000_000,
            max_bytes: 64 << 30,
            max_file_bytes: 16 << 30,
        }
    }
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (`0`, NUL or contiguous `7`).
    File,
    /// A directory (`5`).
    Dir,
    /// A symbolic link (`2`).
    Symlink,
    /// A hard link to an earlier path (`1`).
    Hardlink,
    /// A character device (`3`).
    CharDevice,
    /// A block device (`4`).
    BlockDevice,
    /// A FIFO (`6`).
    Fifo,
    /// Any other type flag (GNU sparse `S`, volume labels, …); callers refuse these.
    Other(u8),
}

impl EntryKind {
    fn from_flag(flag: u8) -> EntryKind {
        match flag {
            b'0' | b'\0' | b'7' => EntryKind::File,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            other => EntryKind::Other(other),
        }
    }

    /// Types whose data, by every tar implementation's reading, is empty.
    fn header_only(self) -> bool {
        !matches!(self, EntryKind::File | EntryKind::Other(_))
    }
}

/// One entry's header, with PAX and GNU extensions applied.
#[derive(Clone, Debug)]
pub struct TarEntry {
    /// Byte offset of the entry's first header block (its PAX or long-name header if any).
    pub offset: u64,
    /// The name, raw (not normalised; may be absolute or contain `..`).
    pub path: Vec<u8>,
    /// Link target of a symlink or hard link, raw.
    pub link: Vec<u8>,
    /// The entry type.
    pub kind: EntryKind,
    /// Data bytes that follow the header.
    pub size: u64,
    /// `mode` field, all bits as written.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, whole seconds since the epoch.
    pub mtime: i64,
    /// Device major (character and block devices).
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` records: name (without the prefix) and value.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl TarEntry {
    /// The raw name as a path, for messages.
    pub fn display_path(&self) -> PathBuf {
        to_path(&self.path)
    }
}

/// Why a layer stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The underlying reader failed (or ended inside an entry).
    #[error("read layer at byte {offset}: {source}")]
    Io {
        /// Stream offset.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a tar we accept.
    #[error("malformed layer tar at byte {offset}: {reason}")]
    Malformed {
        /// Stream offset of the offending header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A limit was exceeded.
    #[error("layer entry `{}` at byte {offset}: {reason}", entry.display())]
    Limit {
        /// The entry's name (empty if not known yet).
        entry: PathBuf,
        /// Stream offset.
        offset: u64,
        /// Which limit.
        reason: String,
    },
}

/// Counts and hashes every byte read, and stops at the byte limit.
struct Counted<R> {
    inner: R,
    hasher: Sha256,
    /// False when the caller does not want the diff_id ([`TarReader::unhashed`]).
    hash: bool,
    count: u64,
    max: u64,
    over: bool,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Allow one byte past the limit so "exactly at the limit" is not an error.
        let room = (self.max - self.count.min(self.max)).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if self.hash {
            self.hasher.update(&buf[..n]);
        }
        self.count += n as u64;
        if self.count > self.max {
            self.over = true;
            return Err(io::Error::other("layer stream exceeds the byte limit"));
        }
        Ok(n)
    }
}

/// Reads a layer tar entry by entry. Call [`next_entry`](TarReader::next_entry) until it
/// returns `None`, read each regular file's data with [`body`](TarReader::body) (unread data is
/// skipped), then [`finish`](TarReader::finish) for the diff_id.
pub struct TarReader<R> {
    inner: Counted<R>,
    limits: ReadLimits,
    /// Data bytes of the current entry not read yet, and its padding.
    remaining: u64,
    padding: u64,
    entries: u64,
    ended: bool,
    /// Name of the current entry, for error messages.
    current: PathBuf,
}

impl<R: Read> TarReader<R> {
    /// Wraps a decompressed layer stream.
    pub fn new(inner: R, limits: ReadLimits) -> Self {
        TarReader {
            inner: Counted {
                inner,
                hasher: Sha256::new(),
                hash: true,
                count: 0,
                max: limits.max_bytes,
                over: false,
            },
            limits,
            remaining: 0,
            padding: 0,
            entries: 0,
            ended: false,
            current: PathBuf::new(),
        }
    }

    /// Does not hash the stream: [`finish`](TarReader::finish) then returns the digest of
    /// nothing. For a caller that verified the layer before and only replays it (hashing
    /// costs more than everything else the reader does).
    pub fn unhashed(mut self) -> Self {
        self.inner.hash = false;
        self
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.inner.count
    }

    /// Classifies an error of the underlying stream (limit or I/O).
    pub(crate) fn io_err(&self, source: io::Error) -> ReadError {
        if self.inner.over {
            ReadError::Limit {
                entry: self.current.clone(),
                offset: self.inner.count,
                reason: format!(
                    "the layer is larger than the {}-byte limit",
                    self.limits.max_bytes
                ),
            }
        } else {
            ReadError::Io {
                offset: self.inner.count,
                source,
            }
        }
    }

    fn malformed(offset: u64, reason: impl Into<String>) -> ReadError {
        ReadError::Malformed {
            offset,
            reason: reason.into(),
        }
    }

    /// Reads and discards `n` bytes.
    fn skip(&mut self, n: u64) -> Result<(), ReadError> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
            .map_err(|e| self.io_err(e))?;
        if copied < n {
            return Err(self.io_err(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// Reads one block; `None` on a clean end of stream at a block boundary.
    fn read_block(&mut self) -> Result<Option<[u8; 512]>, ReadError> {
        let mut block = [0u8; 512];
        let mut got = 0;
        while got < block.len() {
            match self.inner.read(&mut block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
        match got {
            0 => Ok(None),
            512 => Ok(Some(block)),
            _ => Err(Self::malformed(
                self.inner.count - got as u64,
                "the stream ends inside a header block",
            )),
        }
    }

    /// Reads an extension header's body (PAX or long name), bounded by `max`.
    fn read_ext(
        &mut self,
        size: u64,
        max: u64,
        offset: u64,
        what: &str,
    ) -> Result<Vec<u8>, ReadError> {
        if size > max {
            return Err(ReadError::Limit {
                entry: PathBuf::new(),
                offset,
                reason: format!("{what} of {size} bytes is larger than the {max}-byte limit"),
            });
        }
        let mut data = vec![0u8; size as usize];
        self.inner
            .read_exact(&mut data)
            .map_err(|e| self.io_err(e))?;
        self.skip(pad(size))?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, ReadError> {
        if self.ended {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        self.current = PathBuf::new();

        let mut pax: Option<PaxRecords> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut first_offset = None;
        loop {
            let offset = self.inner.count;
            let Some(block) = self.read_block()? else {
                if first_offset.is_some() {
                    return Err(Self::malformed(
                        offset,
                        "an extension header is not followed by an entry",
                    ));
                }
                self.ended = true;
                return Ok(None);
            };
            if block.iter().all(|b| *b == 0) {
                if first_offset.is_some() {
                    return Err(Self::malformed(
                        offset,
                        "an extension header is followed by the end marker",
                    ));
                }
                self.end_of_archive()?;
                return Ok(None);
            }
            first_offset.get_or_insert(offset);
            check_checksum(&block).map_err(|r| Self::malformed(offset, r))?;
            let header = tar::Header::from_byte_slice(&block);
            let flag = block[156];
            let size = numeric(&block[124..136], header.entry_size())
                .map_err(|e| Self::malformed(offset, format!("size field: {e}")))?;
            match flag {
                b'x' => {
                    if pax.is_some() {
                        return Err(Self::malformed(
                            offset,
                            "two PAX headers describe one entry",
                        ));
                    }
                    let data = self.read_ext(size, MAX_PAX_BYTES, offset, "a PAX header")?;
                    pax = Some(parse_pax(&data).map_err(|r| Self::malformed(offset, r))?);
                }
                b'g' => {
                    if first_offset != Some(offset) {
                        return Err(Self::malformed(
                            offset,
                            "a global PAX header between an extension header and its entry",
                        ));
                    }
                    let data = self.read_ext(size, MAX_PAX_BYTES, offset, "a global PAX header")?;
                    for (k, _) in parse_pax(&data).map_err(|r| Self::malformed(offset, r))? {
                        if is_entry_key(&k) {
                            return Err(Self::malformed(
                                offset,
                                format!(
                                    "a global PAX header sets `{}`, which is not supported",
                                    String::from_utf8_lossy(&k)
                                ),
                            ));
                        }
                    }
                    first_offset = None;
                }
                b'L' | b'K' => {
                    let slot = if flag == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.is_some() {
                        return Err(Self::malformed(
                            offset,
                            "two GNU long-name headers describe one entry",
                        ));
                    }
                    let mut data =
                        self.read_ext(size, MAX_LONGNAME_BYTES, offset, "a GNU long name")?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    let slot = if flag == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    *slot = Some(data);
                }
                _ => {
                    let entry = self.entry(
                        header,
                        offset,
                        first_offset.unwrap_or(offset),
                        size,
                        pax,
                        long_name,
                        long_link,
                    )?;
                    return Ok(Some(entry));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        header: &tar::Header,
        offset: u64,
        first_offset: u64,
        mut size: u64,
        pax: Option<PaxRecords>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<TarEntry, ReadError> {
        let header_name = to_path(&header.path_bytes());
        let bad =
            |r: String| Self::malformed(offset, format!("entry `{}`: {r}", header_name.display()));
        let kind = EntryKind::from_flag(header.as_bytes()[156]);
        let mut path = header.path_bytes().into_owned();
        let mut link = header
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default();
        let raw = header.as_bytes();
        let mut uid =
            numeric(&raw[108..116], header.uid()).map_err(|e| bad(format!("uid field: {e}")))?;
        let mut gid =
            numeric(&raw[116..124], header.gid()).map_err(|e| bad(format!("gid field: {e}")))?;
        let mut mtime = numeric(&raw[136..148], header.mtime())
            .map_err(|e| bad(format!("mtime field: {e}")))? as i64;
        let mode =
            numeric(&raw[100..108], header.mode()).map_err(|e| bad(format!("mode field: {e}")))?;
        let (dev_major, dev_minor) =
            if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
                (
                    numeric(&raw[329..337], header.device_major())
                        .map_err(|e| bad(format!("devmajor field: {e}")))?
                        .unwrap_or(0),
                    numeric(&raw[337..345], header.device_minor())
                        .map_err(|e| bad(format!("devminor field: {e}")))?
                        .unwrap_or(0),
                )
            } else {
                (0, 0)
            };
        let gnu_name = long_name.is_some();
        if let Some(n) = long_name {
            path = n;
        }
        if let Some(l) = long_link {
            link = l;
        }
        let mut xattrs = Vec::new();
        for (k, v) in pax.unwrap_or_default() {
            let num = |v: &[u8]| -> Result<u64, ReadError> {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "PAX `{}` is not a number",
                            String::from_utf8_lossy(&k)
                        ))
                    })
            };
            match k.as_slice() {
                b"path" => {
                    if gnu_name {
                        return Err(bad("both a GNU long name and a PAX path".into()));
                    }
                    path = v;
                }
                b"linkpath" => link = v,
                b"size" => size = num(&v)?,
                b"uid" => uid = num(&v)?,
                b"gid" => gid = num(&v)?,
                b"mtime" => {
                    // "123", "123.456" or "-5.5": keep whole seconds.
                    let s = std::str::from_utf8(&v).unwrap_or("");
                    let whole = s.split('.').next().unwrap_or("");
                    mtime = whole
                        .parse::<i64>()
                        .map_err(|_| bad("PAX `mtime` is not a number".into()))?;
                }
                k if k.starts_with(b"SCHILY.xattr.") => {
                    xattrs.push((k[b"SCHILY.xattr.".len()..].to_vec(), v));
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(bad("sparse files are not supported".into()));
                }
                _ => {}
            }
        }
        self.current = to_path(&path);
        if kind.header_only() && size != 0 {
            return Err(Self::malformed(
                offset,
                format!(
                    "entry `{}`: a {kind:?} entry declares {size} bytes of data",
                    self.current.display()
                ),
            ));
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ReadError::Limit {
                entry: self.current.clone(),
                offset,
                reason: format!("more than {} entries", self.limits.max_entries),
            });
        }
        if size > self.limits.max_file_bytes {
            return Err(ReadError::Limit {
                entry: self.current.clone(),
                offset,
                reason: format!(
                    "declares {size} bytes, more than the {}-byte file limit",
                    self.limits.max_file_bytes
                ),
            });
        }
        if self.inner.count.saturating_add(size) > self.limits.max_bytes {
            return Err(ReadError::Limit {
                entry: self.current.clone(),
                offset,
                reason: format!(
                    "declares {size} bytes, past the {}-byte layer limit",
                    self.limits.max_bytes
                ),
            });
        }
        self.remaining = size;
        self.padding = pad(size);
        Ok(TarEntry {
            offset: first_offset,
            path,
            link,
            kind,
            size,
            mode,
            uid,
            gid,
            mtime,
            dev_major,
            dev_minor,
            xattrs,
        })
    }

    /// After the first zero block: the rest must be zeros (the second marker block and any
    /// record padding), and is hashed as part of the diff_id.
    fn end_of_archive(&mut self) -> Result<(), ReadError> {
        self.ended = true;
        let mut buf = [0u8; 8192];
        loop {
            let at = self.inner.count;
            let n = match self.inner.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(e)),
            };
            if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
                return Err(Self::malformed(
                    at + i as u64,
                    "data after the end-of-archive marker",
                ));
            }
        }
    }

    /// The current entry's data (regular files), bounded by its size. Reading less is fine: the
    /// rest is skipped by the next [`next_entry`](TarReader::next_entry).
    pub fn body(&mut self) -> Body<'_, R> {
        Body { reader: self }
    }

    /// Bytes of the current entry's data not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Ends reading: the stream must have reached its end marker. Returns the diff_id (sha256
    /// of every byte of the uncompressed stream) and the stream's length.
    pub fn finish(self) -> Result<(Digest, u64), ReadError> {
        if !self.ended {
            return Err(Self::malformed(
                self.inner.count,
                "finish called before the end of the archive",
            ));
        }
        let hex = hex::encode(self.inner.hasher.finalize());
        let digest = Digest::from_hex(&hex).expect("sha256 hex is a valid digest");
        Ok((digest, self.inner.count))
    }
}

/// The current entry's data; see [`TarReader::body`].
pub struct Body<'a, R> {
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        if r.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(r.remaining).unwrap_or(usize::MAX));
        let n = r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the layer ends {} bytes before the end of `{}`",
                    r.remaining,
                    r.current.display()
                ),
            ));
        }
        r.remaining -= n as u64;
        Ok(n)
    }
}

/// A numeric header field; an empty one (all NUL or spaces) reads as 0, as in Go and GNU tar.
fn numeric<T: Default>(raw: &[u8], parsed: io::Result<T>) -> io::Result<T> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        Ok(T::default())
    } else {
        parsed
    }
}

/// Zero bytes after `size` bytes of data, up to the next block.
fn pad(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// PAX keys that change how an entry is read or named.
fn is_entry_key(k: &[u8]) -> bool {
    matches!(
        k,
        b"path" | b"linkpath" | b"size" | b"uid" | b"gid" | b"mtime"
    ) || k.starts_with(b"GNU.sparse.")
}

/// Verifies the header checksum: the sum of all bytes with the checksum field read as spaces,
/// unsigned or (like Go and GNU tar) signed.
fn check_checksum(block: &[u8; 512]) -> Result<(), &'static str> {
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if digits.is_empty() {
        return Err("the header checksum is not an octal number");
    }
    let want = u64::from_str_radix(std::str::from_utf8(&digits).unwrap_or("x"), 8)
        .map_err(|_| "the header checksum is not an octal number")?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if want == unsigned || i64::try_from(want).ok() == Some(signed) {
        Ok(())
    } else {
        Err("header checksum mismatch")
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`), strictly: every byte must belong to a record.
fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("a PAX record has no length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record length is not a number")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("a PAX record length does not match its record".into());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a PAX record has no `=`")?;
        if eq == 0 {
            return Err("a PAX record has an empty key".into());
        }
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_parse_strictly() {
        let ok = b"30 mtime=1350244992.023960108\n20 path=a/b/c/d/e/f\n";
        let r = parse_pax(ok).unwrap();
        assert_eq!(r[1], (b"path".to_vec(), b"a/b/c/d/e/f".to_vec()));
        for bad in [
            &b"30 mtime=1350244992.023960108"[..],
            b"3 a=\n",
            b"x path=a\n",
            b"9 =value\n",
            b"100 path=a\n",
            b"10 path=a\n\n",
        ] {
            assert!(
                parse_pax(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_pax(b"").unwrap().is_empty());
    }

    fn header(name: &str, flag: u8, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(flag));
        h.set_cksum();
        *h.as_bytes()
    }

    #[test]
    fn refuses_ambiguous_archives() {
        // A symlink with data: Go and tar-rs would disagree on where the next header is.
        let mut t = header("l", b'2', 512).to_vec();
        t.extend([0u8; 512 * 3]);
        let mut r = TarReader::new(&t[..], ReadLimits::default());
        assert!(matches!(r.next_entry(), Err(ReadError::Malformed { .. })));
        // Garbage after the end marker.
        let mut t = header("f", b'0', 0).to_vec();
        t.extend([0u8; 1024]);
        t.extend(header("g", b'0', 0));
        let mut r = TarReader::new(&t[..], ReadLimits::default());
        assert_eq!(r.next_entry().unwrap().unwrap().path, b"f");
        assert!(matches!(r.next_entry(), Err(ReadError::Malformed { .. })));
        // A huge PAX header is refused before allocating.
        let mut t = header("PaxHeaders.0/x", b'x', 1 << 40).to_vec();
        t.extend([0u8; 512]);
        let mut r = TarReader::new(&t[..], ReadLimits::default());
        assert!(matches!(r.next_entry(), Err(ReadError::Limit { .. })));
        // A bad checksum.
        let mut t = header("f", b'0', 0).to_vec();
        t[0] = b'g';
        assert!(matches!(
            TarReader::new(&t[..], ReadLimits::default()).next_entry(),
            Err(ReadError::Malformed { .. })
        ));
    }

    #[test]
    fn diff_id_covers_the_whole_stream() {
        let mut t = header("f", b'0', 3).to_vec();
        t.extend(b"abc");
        t.extend([0u8; 509]);
        t.extend([0u8; 10240 - 1024]);
        let mut r = TarReader::new(&t[..], ReadLimits::default());
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.kind, e.size, e.mode), (EntryKind::File, 3, 0o644));
        let mut s = String::new();
        r.body().read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
        assert!(r.next_entry().unwrap().is_none());
        let (d, n) = r.finish().unwrap();
        assert_eq!((d, n), (Digest::of(&t), t.len() as u64));
        // The byte limit is enforced after decompression, on the stream itself.
        let limits = ReadLimits {
            max_bytes: 1000,
            ..ReadLimits::default()
        };
        let mut r = TarReader::new(&t[..], limits);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.path, b"f");
        assert!(matches!(r.next_entry(), Err(ReadError::Limit { .. })));
    }
}
