//! Where an unpacked regular file's content goes ([`FileSink`]): copied ([`CopySink`]), copied
//! and hashed ([`HashingSink`]), or put in place by the sink itself (the agent links objects).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::oci::Digest;
use crate::oci::digest::HashingWriter;

/// A regular file the unpacker is about to create, with the metadata it would give it (after
/// the unpacker's own policy: owner only with [`super::UnpackOptions::same_owner`], only the xattrs it
/// would apply). Passed to [`FileSink::place_file`].
#[derive(Clone, Debug)]
pub struct FileMeta<'a> {
    /// The entry's normalised path in the layer.
    pub path: &'a Path,
    /// Its size.
    pub size: u64,
    /// Permission bits plus setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner and group, when the unpacker would chown.
    pub owner: Option<(u32, u32)>,
    /// Modification time, whole seconds.
    pub mtime: i64,
    /// The xattrs the unpacker would set (name, value), in layer order.
    pub xattrs: Vec<(&'a [u8], &'a [u8])>,
}

/// Where regular files' content goes. The default ([`CopySink`]) copies it into the new file;
/// others can hash it on the way ([`HashingSink`]) or redirect it.
///
/// A sink may also put the file in place itself ([`place_file`](FileSink::place_file)), e.g.
/// as a hard link to a content-addressed object: the agent's snapshots are built that way.
pub trait FileSink {
    /// Puts the regular file `file.path` in place itself, as the name `name` in the directory
    /// `dir` (resolved inside the root; nothing is there — the unpacker removed what was). The
    /// sink owns the result entirely: the unpacker sets no owner, mode, time or xattr on it,
    /// because a linked inode may be shared. Returns `Ok(false)` — without reading `content` —
    /// to have the unpacker create the file and call [`write_file`](FileSink::write_file);
    /// returns `Ok(true)` after reading `content` (exactly `file.size` bytes) to its end.
    ///
    /// `name` is one path component; use it only with `*at` calls on `dir` that do not follow
    /// it (`linkat` with no flags, `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`).
    fn place_file(
        &mut self,
        file: &FileMeta<'_>,
        content: &mut dyn Read,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> io::Result<bool> {
        let _ = (file, content, dir, name);
        Ok(false)
    }

    /// Takes the content of the regular file `file.path` when the layer is only recorded
    /// ([`record_with`](super::record_with)): nothing is created on disk for it. Returns
    /// `Ok(true)` after reading `content` (exactly `file.size` bytes) to its end, or
    /// `Ok(false)` without reading it, to have the recorder drain it.
    fn record_file(&mut self, file: &FileMeta<'_>, content: &mut dyn Read) -> io::Result<bool> {
        let _ = (file, content);
        Ok(false)
    }

    /// Writes the content of the regular file `path` (the entry's normalised name in the
    /// layer; it lands where the parent resolved, which may differ through symlinks). `file` is
    /// newly created and empty; `content` yields exactly `size` bytes and must be read to its
    /// end.
    fn write_file(
        &mut self,
        path: &Path,
        size: u64,
        content: &mut dyn Read,
        file: &mut File,
    ) -> io::Result<()>;
}

/// Copies content into the file.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopySink;

impl FileSink for CopySink {
    fn write_file(
        &mut self,
        _path: &Path,
        _size: u64,
        content: &mut dyn Read,
        file: &mut File,
    ) -> io::Result<()> {
        io::copy(content, file).map(|_| ())
    }
}

/// One regular file written, with its content digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    /// The entry's normalised path in the layer.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// sha256 of its content.
    pub digest: Digest,
}

/// Copies content into the file and records each file's sha256 (what the agent's object store
/// keys files by).
#[derive(Clone, Debug, Default)]
pub struct HashingSink {
    /// The files written, in layer order.
    pub files: Vec<FileRecord>,
}

impl FileSink for HashingSink {
    fn write_file(
        &mut self,
        path: &Path,
        _size: u64,
        content: &mut dyn Read,
        file: &mut File,
    ) -> io::Result<()> {
        let mut w = HashingWriter::new(file);
        io::copy(content, &mut w)?;
        let (_, digest, size) = w.finish();
        self.files.push(FileRecord {
            path: path.to_path_buf(),
            size,
            digest,
        });
        Ok(())
    }
}
