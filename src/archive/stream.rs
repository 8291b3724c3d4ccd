//! Archives as a stream of entries: each file is handed to a visitor while it streams by, and
//! nothing is staged. The robot's `dt-agent image import` consumes `docker save`'s layers this
//! way (src/agent/store/import.rs), so its peak extra disk is one layer's, not the archive's;
//! `dts image load` keeps staging ([`super::stage`]).
//!
//! Entry paths are normalised (`./a/b` → `a/b`); one that climbs out of the archive, or appears
//! twice, is refused. Links (hard or symbolic; old `docker save` links repeated layers to their
//! first copy) are reported with their target resolved to an archive path. A directory input is
//! walked, sorted, as if it were tarred. A stream that ends inside an entry is reported as an
//! interruption ([`Interrupted`]), not as a broken entry, so the caller can tell a cut pipe from
//! bad content.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use super::ArchiveError;
use super::load::{Progress, normalize, read_full};
use crate::oci::Compression;
use crate::progress::{Event, Reporter};
use crate::util::fs::PathContext;

/// One entry, as it streams by.
pub enum Entry<'a> {
    /// A regular file: read as much of `content` as needed; the rest is skipped.
    File {
        /// Its normalised path.
        path: &'a str,
        /// Its size as its header says.
        size: u64,
        /// Its bytes.
        content: &'a mut dyn Read,
    },
    /// A hard or symbolic link to another entry.
    Link {
        /// Its normalised path.
        path: &'a str,
        /// The entry it points at, normalised.
        target: &'a str,
    },
}

/// Set when the stream ended inside an entry (a cut pipe, a killed `docker save`): the
/// visitor's error is then about the stream, not the entry's content.
#[derive(Clone, Debug, Default)]
pub struct Interrupted(Rc<Cell<Option<(u64, u64)>>>);

impl Interrupted {
    /// (bytes of the entry read, bytes its header declared) if the stream was cut.
    pub fn get(&self) -> Option<(u64, u64)> {
        self.0.get()
    }
}

/// Visits every entry of the archive or layout directory at `input` (`-`: standard input;
/// plain, gzip or zstd compressed). `total` is the expected size to report progress against
/// when the input's own size is unknown (a pipe).
pub fn visit<E: From<ArchiveError>>(
    input: &Path,
    total: Option<u64>,
    interrupted: &Interrupted,
    reporter: &dyn Reporter,
    f: &mut dyn FnMut(Entry<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let stdin = input == Path::new("-");
    let meta = if stdin {
        None
    } else {
        Some(
            std::fs::metadata(input)
                .at("read", input)
                .map_err(ArchiveError::from)?,
        )
    };
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        return visit_dir(input, f);
    }
    let mut src: Box<dyn Read> = if stdin {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            File::open(input)
                .at("open", input)
                .map_err(ArchiveError::from)?,
        )
    };
    // Sniffed from the one reader, the bytes put back: a pipe cannot be read twice.
    let mut head = [0u8; 4];
    let n = read_full(&mut src, &mut head)
        .at("read", input)
        .map_err(ArchiveError::from)?;
    let total = meta.filter(|m| m.is_file()).map(|m| m.len()).or(total);
    let reader = Progress::new(
        BufReader::with_capacity(256 * 1024, io::Cursor::new(head[..n].to_vec()).chain(src)),
        reporter,
        total,
    );
    let reader = Compression::sniff(&head[..n])
        .decoder(reader)
        .map_err(|e| ArchiveError::invalid(input, format!("cannot decompress: {e}")))?;
    visit_tar(input, reader, interrupted, f)?;
    reporter.event(Event::finish("read", "done"));
    Ok(())
}

fn visit_tar<E: From<ArchiveError>>(
    input: &Path,
    reader: impl Read,
    interrupted: &Interrupted,
    f: &mut dyn FnMut(Entry<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let bad = |reason: String| ArchiveError::invalid(input, reason);
    let mut seen = std::collections::BTreeSet::new();
    let mut ar = tar::Archive::new(reader);
    let iter = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("entry with an unreadable name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let Some(path) = normalize(&raw) else {
            return Err(bad(format!("entry `{raw}` points outside the archive")).into());
        };
        let kind = entry.header().entry_type();
        let is_file = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
        let is_link = matches!(kind, tar::EntryType::Link | tar::EntryType::Symlink);
        if (is_file || is_link) && !seen.insert(path.clone()) {
            return Err(bad(format!("entry `{path}` appears twice")).into());
        }
        if is_file {
            let size = entry.size();
            let mut content = Whole {
                inner: &mut entry,
                left: size,
                size,
                cut: interrupted,
            };
            f(Entry::File {
                path: &path,
                size,
                content: &mut content,
            })?;
        } else if is_link {
            let target = entry
                .link_name()
                .map_err(|e| bad(format!("link `{path}` has an unreadable target: {e}")))?
                .ok_or_else(|| bad(format!("link `{path}` has no target")))?
                .to_string_lossy()
                .into_owned();
            // A symlink is relative to its directory; a hard link to the archive root.
            let joined = if kind == tar::EntryType::Symlink {
                Path::new(&path)
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(&target)
                    .to_string_lossy()
                    .into_owned()
            } else {
                target
            };
            let resolved = normalize(&joined)
                .ok_or_else(|| bad(format!("link `{path}` points outside the archive")))?;
            f(Entry::Link {
                path: &path,
                target: &resolved,
            })?;
        }
    }
    Ok(())
}

/// An entry's content that fails, rather than ending early, when the stream is cut.
struct Whole<'a, R> {
    inner: R,
    left: u64,
    size: u64,
    cut: &'a Interrupted,
}

impl<R: Read> Read for Whole<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            let got = self.size - self.left;
            self.cut.0.set(Some((got, self.size)));
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive stream ended inside this entry ({got} of {} bytes)",
                    self.size
                ),
            ));
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

fn visit_dir<E: From<ArchiveError>>(
    root: &Path,
    f: &mut dyn FnMut(Entry<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .at("list", &d)
            .map_err(ArchiveError::from)?
        {
            let entry = entry.at("list", &d).map_err(ArchiveError::from)?;
            let p = entry.path();
            let ft = entry
                .file_type()
                .at("stat", &p)
                .map_err(ArchiveError::from)?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    for p in files {
        let rel = p
            .strip_prefix(root)
            .expect("walked below root")
            .to_string_lossy()
            .into_owned();
        let mut file = File::open(&p).at("open", &p).map_err(ArchiveError::from)?;
        let size = file
            .metadata()
            .at("stat", &p)
            .map_err(ArchiveError::from)?
            .len();
        f(Entry::File {
            path: &rel,
            size,
            content: &mut file,
        })?;
    }
    Ok(())
}
