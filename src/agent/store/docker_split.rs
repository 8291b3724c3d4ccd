//! Docker's own tar-split (`layerdb/sha256/<chain>/tar-split.json.gz`, the vbatts/tar-split
//! format) read back into the layer's tar stream, byte for byte, from the layer's unpacked
//! files (`overlay2/<cache-id>/diff/`). This is how dockerd itself produces a layer for
//! `docker save`; `dt-agent image import --docker-root` does it in-process so nothing is staged.
//!
//! The format: gzip of JSON lines, one per entry, in stream order. `{"type":2,"payload":<base64>}`
//! is a raw segment (headers, padding, the end blocks) copied as is; `{"type":1,"name":…,
//! "size":N,"payload":<crc64>}` is a file body: its N bytes are the file `name` (or the bytes of
//! `name_raw`, base64, for names that are not UTF-8) under the diff directory. Every entry
//! carries its `position`, 0, 1, 2, ….
//!
//! Everything read here is untrusted (a container may have written into Docker's data root, and
//! the agent runs as root): lines are bounded, names are resolved inside the diff directory
//! only (`..` refused, symlinks never lead out of it: crate::layer's in-root resolver), a body
//! must be a regular file of exactly the size recorded, and the whole stream must hash to the
//! layer's diff_id — checked at its end (by the reader, or by the import's tar reader, which
//! hashes the stream anyway), so a mismatch fails the layer before anything built from it is
//! committed. The reader also tells the object store which file each body is
//! ([`BodySource`]), so that a new object can be a hard link to it rather than a copy.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::read::GzDecoder;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::object::{BodySource, SourceCell};
use crate::layer::{Resolver, Root};
use crate::oci::Digest;

/// Longest JSON line taken: a raw segment is a header (with PAX records) or the end padding;
/// Docker's are a few KiB.
pub(super) const MAX_LINE: usize = 4 << 20;

/// One entry of a tar-split.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum SplitEntry {
    /// Bytes of the stream as they are.
    Raw(Vec<u8>),
    /// A file body: `size` bytes of the file at `name` (relative, cleaned components).
    File { name: Vec<u8>, size: u64 },
}

/// A line as tar-split writes it.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    payload: Option<String>,
    position: u64,
}

/// Reads a tar-split's entries in order.
pub(super) struct SplitReader<R> {
    src: BufReader<R>,
    what: String,
    next: u64,
    line: Vec<u8>,
}

impl SplitReader<GzDecoder<File>> {
    /// Opens `tar-split.json.gz`.
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let f = File::open(path).map_err(|e| named(path, e))?;
        Ok(SplitReader::new(
            GzDecoder::new(f),
            path.display().to_string(),
        ))
    }
}

impl<R: Read> SplitReader<R> {
    /// Reads the (decompressed) lines from `src`; `what` names it in errors.
    pub(super) fn new(src: R, what: String) -> Self {
        SplitReader {
            src: BufReader::new(src),
            what,
            next: 0,
            line: Vec::new(),
        }
    }

    fn bad(&self, reason: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{}`, entry {}: {reason}", self.what, self.next),
        )
    }

    /// The next entry, or `None` at the end.
    pub(super) fn next_entry(&mut self) -> io::Result<Option<SplitEntry>> {
        self.line.clear();
        let n = (&mut self.src)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| io::Error::new(e.kind(), format!("reading `{}`: {e}", self.what)))?;
        if n == 0 {
            return Ok(None);
        }
        if self.line.len() > MAX_LINE {
            return Err(self.bad(format!("a line longer than {MAX_LINE} bytes")));
        }
        let line: Line = serde_json::from_slice(&self.line).map_err(|e| self.bad(e))?;
        if line.position != self.next {
            return Err(self.bad(format!("its position is {}", line.position)));
        }
        let payload = match &line.payload {
            Some(p) => STANDARD
                .decode(p)
                .map_err(|e| self.bad(format!("payload: {e}")))?,
            None => Vec::new(),
        };
        let entry = match line.kind {
            2 => SplitEntry::Raw(payload),
            1 => {
                let raw = match (&line.name_raw, &line.name) {
                    (Some(r), _) if !r.is_empty() => STANDARD
                        .decode(r)
                        .map_err(|e| self.bad(format!("name_raw: {e}")))?,
                    (_, Some(n)) => n.as_bytes().to_vec(),
                    _ => Vec::new(),
                };
                let name = clean_name(&raw).map_err(|r| self.bad(r))?;
                SplitEntry::File {
                    name,
                    size: line.size,
                }
            }
            k => return Err(self.bad(format!("unknown type {k}"))),
        };
        self.next += 1;
        Ok(Some(entry))
    }
}

/// A tar name as a relative path: `./` and leading `/` dropped, `..` refused.
fn clean_name(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "name `{}` has a `..` component",
                    String::from_utf8_lossy(raw)
                ));
            }
            c if c.contains(&0) => return Err("a name with a NUL byte".into()),
            c => out.push(c),
        }
    }
    Ok(out.join(&b'/'))
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("`{}`: {e}", path.display()))
}

/// Bytes of the tar a tar-split describes (a first pass: for progress, and to check it reads).
pub(super) fn tar_size(split: &Path) -> io::Result<u64> {
    let mut r = SplitReader::open(split)?;
    let mut size = 0u64;
    while let Some(e) = r.next_entry()? {
        size += match e {
            SplitEntry::Raw(b) => b.len() as u64,
            SplitEntry::File { size, .. } => size,
        };
    }
    Ok(size)
}

/// What went wrong with the source (not with the store), kept for the caller: the reader's
/// error goes through the layer unpacker, which does not know whose fault it is.
pub(super) type Fault = std::rc::Rc<std::cell::RefCell<Option<String>>>;

/// The layer's tar stream, reassembled as it is read. At its end, its sha256 must be
/// `diff_id` when one is given, or the read fails (and `fault` says why); without one the
/// caller checks the digest (the import's tar reader hashes the stream anyway: hashing it
/// twice would cost a second pass over every byte).
pub(super) struct Reassembly<R> {
    split: SplitReader<R>,
    root: Root,
    diff_dir: PathBuf,
    diff_id: Option<Digest>,
    hasher: Sha256,
    /// Told which file each body comes from, for the object store to link it.
    source: Option<SourceCell>,
    len: u64,
    cur: Current,
    fault: Fault,
    done: bool,
}

enum Current {
    None,
    Raw(Vec<u8>, usize),
    File(File, Vec<u8>, u64),
}

impl<R: Read> Reassembly<R> {
    /// Reads `split`'s entries, bodies from `diff_dir`.
    pub(super) fn new(
        split: SplitReader<R>,
        diff_dir: &Path,
        diff_id: Option<Digest>,
        fault: Fault,
    ) -> io::Result<Self> {
        let root = Root::open(diff_dir, Resolver::Auto).map_err(|e| named(diff_dir, e))?;
        Ok(Reassembly {
            split,
            root,
            diff_dir: diff_dir.to_path_buf(),
            diff_id,
            hasher: Sha256::new(),
            source: None,
            len: 0,
            cur: Current::None,
            fault,
            done: false,
        })
    }

    /// Tells `cell` which file each body comes from ([`BodySource`]).
    pub(super) fn with_source(mut self, cell: SourceCell) -> Self {
        self.source = Some(cell);
        self
    }

    fn fail(&self, reason: String) -> io::Error {
        *self.fault.borrow_mut() = Some(reason.clone());
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }

    /// Opens a body: a regular file of exactly `size` bytes, resolved inside the diff dir.
    fn open_body(&self, name: &[u8], size: u64) -> io::Result<File> {
        let shown = || {
            format!(
                "`{}/{}`",
                self.diff_dir.display(),
                String::from_utf8_lossy(name)
            )
        };
        let comps: Vec<&[u8]> = name.split(|b| *b == b'/').collect();
        let Some((last, parents)) = comps.split_last().filter(|(l, _)| !l.is_empty()) else {
            return Err(self.fail(format!("a body of {size} bytes with an empty name")));
        };
        let opened = self.root.dir(parents, false).and_then(|dir| {
            // Only a regular file is opened: opening a device node can do things (a watchdog
            // starts), so the type is checked before, and again on the open file.
            let st = rustix::fs::statat(dir.as_fd(), *last, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Err(io::Error::other("not a regular file"));
            }
            Ok(rustix::fs::openat(
                dir.as_fd(),
                *last,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        });
        let fd = opened.map_err(|e| self.fail(format!("{}: {e}", shown())))?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| self.fail(format!("{}: {e}", shown())))?;
        if !meta.is_file() || meta.len() != size {
            return Err(self.fail(format!(
                "{} is {}, the layer's tar-split says a file of {size} bytes",
                shown(),
                if meta.is_file() {
                    format!("{} bytes", meta.len())
                } else {
                    "not a regular file".into()
                }
            )));
        }
        Ok(file)
    }

    /// Moves to the next entry with bytes; false at the end.
    fn advance(&mut self) -> io::Result<bool> {
        if let Some(cell) = &self.source {
            *cell.borrow_mut() = None;
        }
        loop {
            let next = self
                .split
                .next_entry()
                .map_err(|e| self.fail(e.to_string()))?;
            match next {
                None => return Ok(false),
                Some(SplitEntry::Raw(b)) if b.is_empty() => {}
                Some(SplitEntry::Raw(b)) => {
                    self.cur = Current::Raw(b, 0);
                    return Ok(true);
                }
                Some(SplitEntry::File { size: 0, .. }) => {}
                Some(SplitEntry::File { name, size }) => {
                    let f = self.open_body(&name, size)?;
                    if let Some(cell) = &self.source {
                        *cell.borrow_mut() = Some(BodySource {
                            file: f.try_clone().map_err(|e| self.fail(e.to_string()))?,
                            start: self.len,
                            size,
                            delivered: 0,
                        });
                    }
                    self.cur = Current::File(f, name, size);
                    return Ok(true);
                }
            }
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        self.done = true;
        let Some(want) = &self.diff_id else {
            return Ok(());
        };
        let got = Digest::from_hex(&hex::encode(self.hasher.clone().finalize())).expect("hex");
        if got != *want {
            return Err(self.fail(format!(
                "the tar rebuilt from `{}` ({} bytes) hashes to {got}, not to the layer's \
                 diff_id {}: the diff directory was changed",
                self.diff_dir.display(),
                self.len,
                want
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for Reassembly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            let n = match &mut self.cur {
                Current::None => 0,
                Current::Raw(b, at) => {
                    let n = (b.len() - *at).min(buf.len());
                    buf[..n].copy_from_slice(&b[*at..*at + n]);
                    *at += n;
                    n
                }
                Current::File(f, name, left) => {
                    let want = (*left).min(buf.len() as u64) as usize;
                    let n = f.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        let name = String::from_utf8_lossy(name).into_owned();
                        return Err(self.fail(format!(
                            "`{}/{name}` shrank while it was read",
                            self.diff_dir.display()
                        )));
                    }
                    *left -= n as u64;
                    if let Some(cell) = &self.source
                        && let Some(src) = cell.borrow_mut().as_mut()
                    {
                        src.delivered += n as u64;
                    }
                    n
                }
            };
            if n > 0 {
                if self.diff_id.is_some() {
                    self.hasher.update(&buf[..n]);
                }
                self.len += n as u64;
                return Ok(n);
            }
            if !self.advance()? {
                self.finish()?;
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn entries(bytes: Vec<u8>) -> io::Result<Vec<SplitEntry>> {
        let mut r = SplitReader::new(GzDecoder::new(io::Cursor::new(bytes)), "t".into());
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn reads_raw_and_file_entries_and_name_raw() {
        let raw = STANDARD.encode(b"hdr");
        let nr = STANDARD.encode(b"d/\xff.bin");
        let text = format!(
            "{{\"type\":2,\"payload\":\"{raw}\",\"position\":0}}\n\
             {{\"type\":1,\"name\":\"./a/b\",\"size\":3,\"payload\":\"AAAAAAAAAAA=\",\"position\":1}}\n\
             {{\"type\":1,\"name\":\"x\",\"name_raw\":\"{nr}\",\"size\":0,\"position\":2}}\n"
        );
        let got = entries(gz(&text)).unwrap();
        assert_eq!(
            got,
            vec![
                SplitEntry::Raw(b"hdr".to_vec()),
                SplitEntry::File {
                    name: b"a/b".to_vec(),
                    size: 3
                },
                SplitEntry::File {
                    name: b"d/\xff.bin".to_vec(),
                    size: 0
                },
            ]
        );
    }

    #[test]
    fn refuses_dotdot_bad_positions_oversized_lines_and_truncated_gzip() {
        let e = entries(gz(
            "{\"type\":1,\"name\":\"a/../../etc/shadow\",\"size\":3,\"position\":0}\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("`..`"), "{e}");
        let e = entries(gz("{\"type\":2,\"payload\":\"\",\"position\":5}\n")).unwrap_err();
        assert!(e.to_string().contains("position"), "{e}");
        let long = format!(
            "{{\"type\":2,\"payload\":\"{}\",\"position\":0}}\n",
            "A".repeat(MAX_LINE + 4)
        );
        let e = entries(gz(&long)).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let mut cut = gz("{\"type\":2,\"payload\":\"\",\"position\":0}\n"
            .repeat(50)
            .as_str());
        cut.truncate(cut.len() - 12);
        assert!(entries(cut).is_err());
    }

    /// A real tar, split by hand: raw headers and padding, bodies from a directory.
    fn split_of(tar: &[u8], files: &[(&str, usize)]) -> String {
        let mut lines = String::new();
        let mut at = 0;
        let mut pos = 0;
        let push_raw = |lines: &mut String, b: &[u8], pos: &mut u64| {
            lines.push_str(&format!(
                "{{\"type\":2,\"payload\":\"{}\",\"position\":{pos}}}\n",
                STANDARD.encode(b)
            ));
            *pos += 1;
        };
        for (name, size) in files {
            push_raw(&mut lines, &tar[at..at + 512], &mut pos);
            at += 512;
            lines.push_str(&format!(
                "{{\"type\":1,\"name\":\"{name}\",\"size\":{size},\"position\":{pos}}}\n"
            ));
            pos += 1;
            at += size;
            let pad = (512 - size % 512) % 512;
            push_raw(&mut lines, &tar[at..at + pad], &mut pos);
            at += pad;
        }
        push_raw(&mut lines, &tar[at..], &mut pos);
        lines
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn rebuild(dir: &Path, split: &str, diff_id: Digest) -> (io::Result<Vec<u8>>, Fault) {
        let fault = Fault::default();
        let r = SplitReader::new(GzDecoder::new(io::Cursor::new(gz(split))), "t".into());
        let mut out = Vec::new();
        let res = Reassembly::new(r, dir, Some(diff_id), fault.clone())
            .and_then(|mut a| a.read_to_end(&mut out))
            .map(|_| out);
        (res, fault)
    }

    #[test]
    fn reassembles_byte_for_byte_and_refuses_changed_or_escaping_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hosts"), b"127.0.0.1 x\n").unwrap();
        let tar = tar_of(&[("etc/hosts", b"127.0.0.1 x\n")]);
        let split = split_of(&tar, &[("etc/hosts", 12)]);
        let (got, fault) = rebuild(dir.path(), &split, Digest::of(&tar));
        assert_eq!(got.unwrap(), tar);
        assert!(fault.borrow().is_none());

        // Same size, other bytes: the hash says so.
        std::fs::write(dir.path().join("etc/hosts"), b"127.0.0.1 y\n").unwrap();
        let (got, fault) = rebuild(dir.path(), &split, Digest::of(&tar));
        assert!(got.is_err());
        assert!(fault.borrow().as_ref().unwrap().contains("diff_id"));

        // A byte appended: the size says so.
        std::fs::write(dir.path().join("etc/hosts"), b"127.0.0.1 x\n!").unwrap();
        let (got, fault) = rebuild(dir.path(), &split, Digest::of(&tar));
        assert!(got.is_err());
        assert!(fault.borrow().as_ref().unwrap().contains("13 bytes"));

        // A FIFO where the file was: not opened (it would block), refused.
        std::fs::remove_file(dir.path().join("etc/hosts")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("etc/hosts"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let (got, fault) = rebuild(dir.path(), &split, Digest::of(&tar));
        assert!(got.is_err());
        assert!(
            fault
                .borrow()
                .as_ref()
                .unwrap()
                .contains("not a regular file")
        );
        std::fs::remove_file(dir.path().join("etc/hosts")).unwrap();

        // A symlink to a file outside the diff dir is not followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"127.0.0.1 x\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("etc/hosts"))
            .unwrap();
        let (got, _) = rebuild(dir.path(), &split, Digest::of(&tar));
        assert!(got.is_err());
        // … nor is a directory symlink leading out.
        std::fs::remove_file(dir.path().join("etc/hosts")).unwrap();
        std::fs::remove_dir(dir.path().join("etc")).unwrap();
        std::fs::create_dir(outside.path().join("etc")).unwrap();
        std::fs::write(outside.path().join("etc/hosts"), b"127.0.0.1 x\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("etc"), dir.path().join("etc")).unwrap();
        let (got, _) = rebuild(dir.path(), &split, Digest::of(&tar));
        assert!(
            got.is_err(),
            "an absolute symlink is resolved in the diff dir, not followed out"
        );
    }
}
