//! A read-only view of an image's filesystem, built from its layer tars without unpacking them.
//!
//! The builder needs to look inside base images and earlier stages: `/etc/passwd` to resolve
//! `USER`/`--chown` names, whether a `WORKDIR` exists, and the files `COPY --from` takes. Reading
//! the tars directly needs no root, no mounts and no disk, and is exact about owners and modes,
//! which an unprivileged unpack would lose. Whiteouts are applied in layer order as the OCI
//! image-spec says; symlinks are resolved inside the view, never on the host.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::oci::Compression;

/// Symlink hops allowed while resolving one path (Linux allows 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// One layer to read: the blob on disk and its compression.
#[derive(Clone, Debug)]
pub struct LayerSource {
    /// The blob file.
    pub path: PathBuf,
    /// Its compression.
    pub compression: Compression,
    /// The blob's digest, under which a [`ViewCache`] keeps its listing on disk (none: not
    /// kept).
    pub digest: Option<crate::oci::Digest>,
}

/// What kind of entry a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file whose content is entry `entry` of layer `layer`.
    File {
        /// Layer index.
        layer: usize,
        /// Entry index within that layer's tar.
        entry: usize,
    },
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(String),
    /// A character or block device or fifo (content-less special files).
    Special(u8),
}

/// One file-system entry with its metadata as the tar header gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Size of a regular file.
    pub size: u64,
    /// Device major:minor (special files).
    pub device: (u32, u32),
    /// Extended attributes kept from PAX `SCHILY.xattr.*` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Which layer last wrote it.
    layer: usize,
}

/// Errors reading a view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// A layer could not be read.
    #[error("layer `{}`: {source}", path.display())]
    Layer {
        /// The layer blob.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A path does not exist in the image.
    #[error("`/{0}` does not exist in the image")]
    NotFound(String),
    /// Symlinks loop.
    #[error("too many levels of symbolic links resolving `/{0}`")]
    Loop(String),
}

/// The merged file tree of a layer stack.
#[derive(Clone, Debug, Default)]
pub struct FsView {
    layers: Vec<LayerSource>,
    nodes: BTreeMap<String, Node>,
}

/// `a/./b/../c/` → `a/c`; `..` at the root stays at the root (as the kernel does for `/..`).
pub fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// How many views a [`ViewCache`] keeps: a stage's latest for each platform and a few stages
/// (`COPY --from`) — a Debian base's view is some megabytes.
const CACHED_VIEWS: usize = 8;

/// The views one build has made, by their layers, so that the steps of a stage — each of which
/// looks at the stage's tree (RUN to tell new files from changed ones, COPY for owners and
/// existing directories, WORKDIR, `COPY --from`) — read a layer once instead of decompressing
/// the whole stack again at every step (a Debian base: hundreds of MB of tar each time). A
/// view is extended from the longest chain it has cached. Shared by the platforms' threads.
///
/// With a directory, each layer's listing is also kept there (`<blob hex>.json.zst`, some
/// hundred kB for a Debian base), so that the next build's views read no layer they have
/// read before: a rebuild that changes one step of a stage on a large base (a C++ package on
/// an image with the compilers) otherwise decompresses the whole base to look at it.
#[derive(Default)]
pub struct ViewCache {
    dir: Option<PathBuf>,
    /// Oldest first.
    views: Mutex<Vec<Arc<FsView>>>,
    /// Chains being read: a second thread wanting the same one (two targets' native stage)
    /// waits for the first's view instead of reading the layers again.
    busy: crate::util::locks::KeyLocks,
}

/// A kept listing is `<blob hex>` and this.
const LISTING_SUFFIX: &str = ".json.zst";

/// The blob whose listing a file of a [`ViewCache`]'s directory is (`None`: not a listing).
pub(super) fn listing_blob(file_name: &str) -> Option<crate::oci::Digest> {
    let hex = file_name.strip_suffix(LISTING_SUFFIX)?;
    crate::oci::Digest::from_hex(hex).ok()
}

impl ViewCache {
    /// A cache that keeps layers' listings in `dir` (made when first written).
    pub fn on_disk(dir: &std::path::Path) -> ViewCache {
        ViewCache {
            dir: Some(dir.to_path_buf()),
            ..ViewCache::default()
        }
    }

    /// The listing of `layer`: from the directory if it has it, else read from the tar and
    /// kept there (best effort: a listing that cannot be written is read again next time).
    fn listing(&self, layer: &LayerSource) -> Result<Vec<Listed>, ViewError> {
        let Some(file) = (self.dir.as_ref())
            .zip(layer.digest.as_ref())
            .map(|(dir, d)| dir.join(format!("{}{LISTING_SUFFIX}", d.hex())))
        else {
            return listing(layer);
        };
        if let Some(l) = std::fs::read(&file)
            .ok()
            .and_then(|b| zstd::decode_all(&b[..]).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            return Ok(l);
        }
        let l = listing(layer)?;
        if let Ok(json) = serde_json::to_vec(&l)
            && let Ok(z) = zstd::encode_all(&json[..], 3)
            && crate::util::fs::create_dir_all(file.parent().expect("a file in a directory"))
                .is_ok()
        {
            let _ = crate::util::fs::atomic_write(&file, &z);
        }
        Ok(l)
    }

    /// The view of `layers` (base first).
    pub fn view(&self, layers: Vec<LayerSource>) -> Result<Arc<FsView>, ViewError> {
        let chain: Vec<String> = layers
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        let lock = self.busy.of(&chain.join("\n"));
        let _reading = lock.lock().unwrap_or_else(|p| p.into_inner());
        let same = |a: &[LayerSource], b: &[LayerSource]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.path == y.path)
        };
        let start = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            let best = (views.iter().enumerate())
                .filter(|(_, v)| v.layers.len() <= layers.len())
                .filter(|(_, v)| same(&v.layers, &layers[..v.layers.len()]))
                .max_by_key(|(_, v)| v.layers.len())
                .map(|(i, _)| i);
            // The one used goes to the end: the oldest unused is dropped first.
            best.map(|i| {
                let v = views.remove(i);
                views.push(Arc::clone(&v));
                v
            })
        };
        if let Some(v) = &start
            && v.layers.len() == layers.len()
        {
            return Ok(Arc::clone(v));
        }
        // Built without the cache's lock: another thread may be reading another chain.
        let mut view = start.map(|v| FsView::clone(&v)).unwrap_or_default();
        for (i, l) in layers.iter().enumerate().skip(view.layers.len()) {
            view.apply(i, &self.listing(l)?);
        }
        view.layers = layers;
        let view = Arc::new(view);
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.push(Arc::clone(&view));
        if views.len() > CACHED_VIEWS {
            views.remove(0);
        }
        Ok(view)
    }
}

/// One tar entry of a layer, as much as a view needs of it: a layer's listing is all of it a
/// view reads, so it can be kept on disk and the view built without decompressing the layer.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Listed {
    /// The entry's number in the tar (where a file's content is).
    n: usize,
    /// Cleaned path; for a whiteout, the path it hides; for an opaque marker, its directory.
    path: String,
    kind: ListedKind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    device: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum ListedKind {
    Opaque,
    Whiteout,
    Dir,
    File,
    Symlink(String),
    /// A hard link to this (cleaned) path.
    Link(String),
    Special(u8),
}

/// Reads a layer's tar into its listing.
fn listing(layer: &LayerSource) -> Result<Vec<Listed>, ViewError> {
    let err = |source| ViewError::Layer {
        path: layer.path.clone(),
        source,
    };
    let f = File::open(&layer.path).map_err(err)?;
    let r = layer.compression.decoder(BufReader::new(f)).map_err(err)?;
    let mut ar = tar::Archive::new(r);
    let mut out = Vec::new();
    for (n, entry) in ar.entries().map_err(err)?.enumerate() {
        let mut entry = entry.map_err(err)?;
        let raw = entry.path().map_err(err)?.to_string_lossy().into_owned();
        let path = clean(&raw);
        if path.is_empty() {
            continue;
        }
        let (dir, name) = path
            .rsplit_once('/')
            .map_or(("", path.as_str()), |(d, n)| (d, n));
        let h = entry.header();
        let mut e = Listed {
            n,
            path: path.clone(),
            kind: ListedKind::Dir,
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            // Some writers leave numeric fields blank; treat that as 0 as GNU tar does.
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
            mtime: h.mtime().unwrap_or(0),
            size: h.size().map_err(err)?,
            device: (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            ),
            xattrs: Vec::new(),
        };
        if name == ".wh..wh..opq" {
            e.path = dir.to_string();
            e.kind = ListedKind::Opaque;
            out.push(e);
            continue;
        }
        if let Some(victim) = name.strip_prefix(".wh.") {
            e.path = if dir.is_empty() {
                victim.to_string()
            } else {
                format!("{dir}/{victim}")
            };
            e.kind = ListedKind::Whiteout;
            out.push(e);
            continue;
        }
        e.kind = match h.entry_type() {
            tar::EntryType::Directory => ListedKind::Dir,
            tar::EntryType::Symlink => ListedKind::Symlink(
                entry
                    .link_name()
                    .map_err(err)?
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::Link => ListedKind::Link(
                entry
                    .link_name()
                    .map_err(err)?
                    .map(|l| clean(&l.to_string_lossy()))
                    .unwrap_or_default(),
            ),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                ListedKind::Special(h.entry_type().as_byte())
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => ListedKind::File,
            _ => continue,
        };
        if let Some(exts) = entry.pax_extensions().map_err(err)? {
            for ext in exts.flatten() {
                if let Ok(key) = ext.key()
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                {
                    e.xattrs
                        .push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        out.push(e);
    }
    Ok(out)
}

impl FsView {
    /// Reads `layers` (base first) into a view.
    pub fn from_layers(layers: Vec<LayerSource>) -> Result<FsView, ViewError> {
        let mut view = FsView::default();
        for (i, l) in layers.iter().enumerate() {
            view.apply(i, &listing(l)?);
        }
        view.layers = layers;
        Ok(view)
    }

    /// Applies layer `index`'s listing to the view (whiteouts as the image spec says).
    fn apply(&mut self, index: usize, listing: &[Listed]) {
        for e in listing {
            let path = e.path.clone();
            let kind = match &e.kind {
                ListedKind::Opaque => {
                    self.nodes
                        .retain(|p, node| !(is_under(p, &path) && node.layer < index));
                    continue;
                }
                ListedKind::Whiteout => {
                    self.remove_tree(&path);
                    continue;
                }
                ListedKind::Link(target) => {
                    // A hardlink shares its target's content and metadata.
                    if let Some(t) = self.nodes.get(target).cloned() {
                        self.insert(path, Node { layer: index, ..t });
                    }
                    continue;
                }
                ListedKind::Dir => Kind::Dir,
                ListedKind::Symlink(target) => Kind::Symlink(target.clone()),
                ListedKind::Special(b) => Kind::Special(*b),
                ListedKind::File => Kind::File {
                    layer: index,
                    entry: e.n,
                },
            };
            let size = if matches!(kind, Kind::File { .. }) {
                e.size
            } else {
                0
            };
            // A directory entry over an existing directory keeps the children.
            if kind != Kind::Dir || !matches!(self.nodes.get(&path), Some(n) if n.kind == Kind::Dir)
            {
                self.remove_tree(&path);
            }
            self.insert(
                path,
                Node {
                    kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime: e.mtime,
                    size,
                    device: e.device,
                    xattrs: e.xattrs.clone(),
                    layer: index,
                },
            );
        }
    }

    fn insert(&mut self, path: String, node: Node) {
        // Layers may omit parent directories; the kernel would have them, so the view does.
        let mut p = parent_of(&path).to_string();
        while !p.is_empty() && !self.nodes.contains_key(&p) {
            self.nodes.insert(
                p.clone(),
                Node {
                    kind: Kind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    size: 0,
                    device: (0, 0),
                    xattrs: Vec::new(),
                    layer: node.layer,
                },
            );
            p = parent_of(&p).to_string();
        }
        self.nodes.insert(path, node);
    }

    fn remove_tree(&mut self, path: &str) {
        self.nodes.remove(path);
        let prefix = format!("{path}/");
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// The node at `path` (no symlink resolution).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&clean(path))
    }

    /// Resolves symlinks in `path` inside the view (absolute targets are relative to the view's
    /// root). With `follow_last` the final component is followed too. Returns the clean path.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<String, ViewError> {
        let mut pending: Vec<String> = clean(path)
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        pending.reverse();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                done.pop();
                continue;
            }
            let candidate = if done.is_empty() {
                part.clone()
            } else {
                format!("{}/{part}", done.join("/"))
            };
            let is_last = pending.is_empty();
            match self.nodes.get(&candidate) {
                Some(Node {
                    kind: Kind::Symlink(target),
                    ..
                }) if !is_last || follow_last => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ViewError::Loop(clean(path)));
                    }
                    if target.starts_with('/') {
                        done.clear();
                    }
                    for p in target
                        .split('/')
                        .rev()
                        .filter(|s| !s.is_empty() && *s != ".")
                    {
                        pending.push(p.to_string());
                    }
                }
                _ => done.push(part),
            }
        }
        Ok(done.join("/"))
    }

    /// Whether `path` resolves to an existing entry.
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path, true)
            .is_ok_and(|p| p.is_empty() || self.nodes.contains_key(&p))
    }

    /// Every entry at or below `dir` (clean, unresolved), in path order, `dir` itself first.
    pub fn subtree(&self, dir: &str) -> Vec<(String, Node)> {
        let dir = clean(dir);
        self.nodes
            .iter()
            .filter(|(p, _)| **p == dir || is_under(p, &dir))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect()
    }

    /// Reads a regular file (following symlinks).
    pub fn read(&self, path: &str) -> Result<Vec<u8>, ViewError> {
        let resolved = self.resolve(path, true)?;
        let node = self
            .nodes
            .get(&resolved)
            .ok_or_else(|| ViewError::NotFound(clean(path)))?;
        let Kind::File { layer, entry } = node.kind else {
            return Err(ViewError::NotFound(clean(path)));
        };
        let mut out = self.read_entries(layer, &[entry])?;
        Ok(out.remove(&entry).unwrap_or_default())
    }

    /// Reads several entries of one layer in one pass.
    pub fn read_entries(
        &self,
        layer: usize,
        wanted: &[usize],
    ) -> Result<BTreeMap<usize, Vec<u8>>, ViewError> {
        let l = &self.layers[layer];
        let err = |source| ViewError::Layer {
            path: l.path.clone(),
            source,
        };
        let f = File::open(&l.path).map_err(err)?;
        let r = l.compression.decoder(BufReader::new(f)).map_err(err)?;
        let mut ar = tar::Archive::new(r);
        let mut out = BTreeMap::new();
        let last = wanted.iter().copied().max().unwrap_or(0);
        for (n, entry) in ar.entries().map_err(err)?.enumerate() {
            if n > last {
                break;
            }
            let mut entry = entry.map_err(err)?;
            if wanted.contains(&n) {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(err)?;
                out.insert(n, buf);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn layer(
        dir: &std::path::Path,
        name: &str,
        build: impl FnOnce(&mut tar::Builder<Vec<u8>>),
    ) -> LayerSource {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&b.into_inner().unwrap())
            .unwrap();
        let digest = crate::oci::Digest::of(&std::fs::read(&path).unwrap());
        LayerSource {
            path,
            compression: Compression::None,
            digest: Some(digest),
        }
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    #[test]
    fn whiteouts_symlinks_and_reads() {
        let d = tempfile::tempdir().unwrap();
        let l0 = layer(d.path(), "0", |b| {
            file(b, "usr/lib/a.so", b"A", 0o644);
            file(b, "usr/lib/b.so", b"B", 0o644);
            file(b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
            symlink(b, "lib", "/usr/lib");
            file(b, "opq/old", b"old", 0o600);
        });
        let l1 = layer(d.path(), "1", |b| {
            file(b, "usr/lib/.wh.a.so", b"", 0o644);
            file(b, "opq/.wh..wh..opq", b"", 0o644);
            file(b, "opq/new", b"new", 0o4755);
            symlink(b, "loop", "loop");
        });
        let v = FsView::from_layers(vec![l0, l1]).unwrap();
        assert!(!v.exists("usr/lib/a.so"));
        assert!(v.exists("/lib/b.so"));
        assert_eq!(v.read("/lib/b.so").unwrap(), b"B");
        assert_eq!(v.resolve("lib/b.so", true).unwrap(), "usr/lib/b.so");
        assert!(v.get("opq/old").is_none());
        assert_eq!(v.get("opq/new").unwrap().mode, 0o4755);
        assert!(v.read("etc/passwd").unwrap().starts_with(b"root"));
        assert!(matches!(v.resolve("loop", true), Err(ViewError::Loop(_))));
        assert_eq!(v.resolve("../../etc/./passwd", true).unwrap(), "etc/passwd");
        assert_eq!(v.subtree("usr").len(), 3);
    }

    #[test]
    fn the_cache_extends_a_cached_chain_and_reads_no_layer_twice() {
        let d = tempfile::tempdir().unwrap();
        let l0 = layer(d.path(), "0", |b| {
            file(b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
            file(b, "gone", b"x", 0o644);
        });
        let l1 = layer(d.path(), "1", |b| {
            file(b, ".wh.gone", b"", 0o644);
            file(b, "app/main.py", b"print()", 0o644);
        });
        let l2 = layer(d.path(), "2", |b| file(b, "app/more.py", b"", 0o600));
        let cache = ViewCache::default();
        let first = cache.view(vec![l0.clone()]).unwrap();
        assert!(first.exists("gone"));
        // The base is read once: gone from disk, it still comes from the cache.
        std::fs::remove_file(&l0.path).unwrap();
        let again = cache.view(vec![l0.clone()]).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let two = cache.view(vec![l0.clone(), l1.clone()]).unwrap();
        assert!(!two.exists("gone") && two.exists("app/main.py"));
        assert!(
            two.read("etc/passwd").is_err(),
            "reading a file still needs its layer"
        );
        assert_eq!(two.read("app/main.py").unwrap(), b"print()");
        let three = cache.view(vec![l0.clone(), l1, l2]).unwrap();
        assert_eq!(three.get("app/more.py").unwrap().mode, 0o600);
        assert!(three.exists("app/main.py") && !three.exists("gone"));
        // Another chain on the same base starts from the base's view.
        let other = layer(d.path(), "3", |b| file(b, "other", b"", 0o644));
        let v = cache.view(vec![l0, other]).unwrap();
        assert!(v.exists("gone") && v.exists("other") && !v.exists("app"));
        assert!(cache.views.lock().unwrap().len() <= CACHED_VIEWS);
    }

    #[test]
    fn listings_kept_on_disk_serve_the_next_builds_views() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("views");
        let l0 = layer(d.path(), "0", |b| {
            file(b, "usr/lib/a.so", b"A", 0o644);
            file(b, "opq/old", b"old", 0o600);
            symlink(b, "lib", "/usr/lib");
        });
        let l1 = layer(d.path(), "1", |b| {
            file(b, "usr/lib/.wh.a.so", b"", 0o644);
            file(b, "opq/.wh..wh..opq", b"", 0o644);
            file(b, "opq/new", b"new", 0o4755);
        });
        let layers = vec![l0.clone(), l1.clone()];
        let direct = FsView::from_layers(layers.clone()).unwrap();
        let first = ViewCache::on_disk(&dir).view(layers.clone()).unwrap();
        assert_eq!(first.nodes, direct.nodes);
        for l in [&l0, &l1] {
            let hex = l.digest.as_ref().unwrap().hex().to_string();
            assert!(dir.join(format!("{hex}.json.zst")).is_file());
        }
        // A new process (a new cache) builds the same view from the listings alone; reading a
        // file's content still goes to its layer.
        let moved = d.path().join("1.moved");
        std::fs::rename(&l1.path, &moved).unwrap();
        let again = ViewCache::on_disk(&dir).view(layers.clone()).unwrap();
        assert_eq!(again.nodes, direct.nodes);
        assert!(again.read("opq/new").is_err());
        std::fs::rename(&moved, &l1.path).unwrap();
        assert_eq!(again.read("opq/new").unwrap(), b"new");
        // A damaged listing is read from the layer again, and written anew.
        let hex = l1.digest.as_ref().unwrap().hex().to_string();
        std::fs::write(dir.join(format!("{hex}.json.zst")), b"not zstd").unwrap();
        let fixed = ViewCache::on_disk(&dir).view(layers).unwrap();
        assert_eq!(fixed.nodes, direct.nodes);
        let kept = std::fs::read(dir.join(format!("{hex}.json.zst"))).unwrap();
        assert!(zstd::decode_all(&kept[..]).is_ok());
    }
}
