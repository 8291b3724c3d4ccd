//! Layers from a directory on the host: the listed changes of an overlay upper dir
//! ([`write_changes`]) or a whole tree ([`write_tree`]), read through directory fds that never
//! follow a symlink, in canonical order, into a [`LayerBuilder`].

use super::*;

/// The source directory of [`write_changes`]: an fd per directory of the current path, reused
/// while consecutive entries share parents (they do, in canonical order).
struct Source {
    root_path: PathBuf,
    root: OwnedFd,
    chain: Vec<(Vec<u8>, OwnedFd)>,
}

impl Source {
    fn open(root: &Path) -> Result<Source, PathError> {
        let root_fd = rustix::fs::open(
            root,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(io::Error::from)
        .at("open layer source", root)?;
        Ok(Source {
            root_path: root.to_path_buf(),
            root: root_fd,
            chain: Vec::new(),
        })
    }

    fn host(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(to_path(rel))
    }

    /// An fd of the directory `comps` (no symlink is followed on the way).
    fn dir(&mut self, comps: &[&[u8]]) -> Result<BorrowedFd<'_>, PathError> {
        let common = self
            .chain
            .iter()
            .zip(comps)
            .take_while(|((have, _), want)| have.as_slice() == **want)
            .count();
        self.chain.truncate(common);
        if comps.len() > MAX_DEPTH {
            return Err(PathError {
                action: "walk",
                path: self.host(&comps.join(&b'/')),
                source: io::Error::other(format!("deeper than {MAX_DEPTH} directories")),
            });
        }
        for i in common..comps.len() {
            let parent = self
                .chain
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let fd = host::open_dir(parent, comps[i])
                .at("open directory", &self.host(&comps[..=i].join(&b'/')))?;
            self.chain.push((comps[i].to_vec(), fd));
        }
        Ok(self
            .chain
            .last()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }
}

/// Writes the layer made of `changes`, reading added paths from the directory `root` (never
/// following a symlink in it). The list is sorted into canonical order first; a path listed
/// twice is refused. Like BuildKit's writer, every parent directory of a change that is not
/// itself in the list is written too, with its metadata in `root`.
pub fn write_changes<W: Write>(
    root: &Path,
    changes: &[Change],
    out: W,
    compression: Compression,
    opts: &WriteOptions,
) -> Result<WrittenLayer, WriteError> {
    let mut items = Vec::with_capacity(changes.len());
    for c in changes {
        let name = entry_name(c.path())?;
        let key = path::sort_key(&name, matches!(c, Change::Opaque(_)));
        items.push((key, name, c));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = items.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(invalid(w[1].2.path(), "listed twice"));
    }

    let mut src = Source::open(root)?;
    let mut b = LayerBuilder::new(out, compression, opts)?;
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for (_, name, change) in &items {
        // Parents first (for an opaque marker, its directory too).
        let comps = path::components(name);
        let upto = if matches!(change, Change::Opaque(_)) {
            comps.len()
        } else {
            comps.len() - 1
        };
        for i in 1..=upto {
            let parent = comps[..i].join(&b'/');
            if !dirs.contains(&parent) {
                let kind = add_from_source(&mut b, &mut src, &parent, &mut links)?;
                if kind != Some(FileType::Directory) {
                    return Err(invalid(
                        &to_path(&parent),
                        "a parent in the change list is not a directory",
                    ));
                }
                dirs.insert(parent);
            }
        }
        match change {
            Change::Add(_) => {
                if add_from_source(&mut b, &mut src, name, &mut links)? == Some(FileType::Directory)
                {
                    dirs.insert(name.clone());
                }
            }
            Change::Delete(p) => b.add_whiteout(p)?,
            Change::Opaque(p) => b.add_opaque(p)?,
        }
    }
    b.finish()
}

/// Writes the whole tree under `root` (not `root` itself) as one layer.
pub fn write_tree<W: Write>(
    root: &Path,
    out: W,
    compression: Compression,
    opts: &WriteOptions,
) -> Result<WrittenLayer, WriteError> {
    let src = Source::open(root)?;
    let mut changes = Vec::new();
    walk(root, src.root.as_fd(), &mut Vec::new(), &mut changes)?;
    write_changes(root, &changes, out, compression, opts)
}

fn walk(
    root: &Path,
    dir: BorrowedFd<'_>,
    prefix: &mut Vec<u8>,
    out: &mut Vec<Change>,
) -> Result<(), PathError> {
    let here = root.join(to_path(prefix));
    if prefix.split(|b| *b == b'/').count() > MAX_DEPTH {
        return Err(PathError {
            action: "walk",
            path: here,
            source: io::Error::other(format!("deeper than {MAX_DEPTH} directories")),
        });
    }
    for name in host::list_dir(dir).at("list directory", &here)? {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(&name);
        let meta = host::lstat_at(dir, &name).at("stat", &root.join(to_path(prefix)))?;
        out.push(Change::Add(to_path(prefix)));
        if meta.kind == FileType::Directory {
            let sub =
                host::open_dir(dir, &name).at("open directory", &root.join(to_path(prefix)))?;
            walk(root, sub.as_fd(), prefix, out)?;
        }
        prefix.truncate(len);
    }
    Ok(())
}

/// Writes `name` as found in the source; returns its type (`None` for a skipped socket).
fn add_from_source<W: Write>(
    b: &mut LayerBuilder<W>,
    src: &mut Source,
    name: &[u8],
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<Option<FileType>, WriteError> {
    let host_path = src.host(name);
    let rel = to_path(name);
    let (parent, base) = path::split_last(name);
    let dir = src.dir(&path::components(parent))?;
    let meta = host::lstat_at(dir, base).at("stat", &host_path)?;
    let mut em = entry_meta(&meta);
    if meta.kind == FileType::Socket {
        return Ok(None);
    }
    if meta.kind != FileType::Directory && meta.nlink > 1 {
        match links.get(&(meta.dev, meta.ino)) {
            Some(first) => {
                let first = to_path(first);
                b.add_hardlink(&rel, &em, &first)?;
                return Ok(Some(meta.kind));
            }
            None => {
                links.insert((meta.dev, meta.ino), name.to_vec());
            }
        }
    }
    match meta.kind {
        FileType::Directory => b.add_dir(&rel, &em)?,
        FileType::RegularFile => {
            let fd = host::open_file(dir, base).at("open", &host_path)?;
            let now = host::fstat(fd.as_fd()).at("stat", &host_path)?;
            if (now.dev, now.ino) != (meta.dev, meta.ino) || now.kind != FileType::RegularFile {
                return Err(WriteError::Changed {
                    path: host_path,
                    what: "replaced by another file",
                });
            }
            if now.size != meta.size {
                return Err(WriteError::Changed {
                    path: host_path,
                    what: "size changed",
                });
            }
            em.capability = host::get_xattr(fd.as_fd(), c"security.capability")
                .at("read xattr of", &host_path)?;
            let file = std::fs::File::from(fd);
            b.add_file(&rel, &em, meta.size, file)
                .map_err(|e| match e {
                    WriteError::Invalid { reason, .. } if reason.starts_with("content is") => {
                        WriteError::Changed {
                            path: host_path.clone(),
                            what: "size changed while read",
                        }
                    }
                    e => e,
                })?;
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, base, Vec::new())
                .map_err(io::Error::from)
                .at("read link", &host_path)?;
            b.add_symlink(&rel, &em, &to_path(target.as_bytes()))?;
        }
        FileType::CharacterDevice => b.add_special(
            &rel,
            &em,
            SpecialFile::Char {
                major: meta.rdev_major,
                minor: meta.rdev_minor,
            },
        )?,
        FileType::BlockDevice => b.add_special(
            &rel,
            &em,
            SpecialFile::Block {
                major: meta.rdev_major,
                minor: meta.rdev_minor,
            },
        )?,
        FileType::Fifo => b.add_special(&rel, &em, SpecialFile::Fifo)?,
        _ => return Err(invalid(&rel, "unknown file type")),
    }
    Ok(Some(meta.kind))
}

fn entry_meta(m: &Meta) -> EntryMeta {
    EntryMeta {
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        capability: None,
    }
}
