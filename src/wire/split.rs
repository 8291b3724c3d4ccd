//! The laptop's view of a layer: its tar-split (the same record stream the robot's import
//! records, `agent::store` tarsplit.rs: `R` raw tar bytes in chunks of up to 1 MiB, `F` size +
//! sha256 per regular-file body, `E` tar length + diff_id) and its file index, computed from the
//! layer blob once and cached in `$DTS_HOME/cache/layers/<diff_id hex>/` so a re-deploy does
//! not re-read big layers.
//!
//! ```text
//! cache/layers/<diff hex>/tar-split.zst   the record stream, zstd
//! cache/layers/<diff hex>/files.json.zst  {diff_id, split_digest, files: [{path, object}]}
//! ```

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::WireError;
use super::memo::Shared;
use crate::api::ObjectSpec;
use crate::layer::{EntryKind, ReadLimits, TarEntry, TarReader, WHITEOUT_PREFIX};
use crate::oci::{Compression, Descriptor, Digest};
use crate::store::Store;
use crate::util::fs::{PathContext, atomic_write, create_dir_all};

const MAGIC: &[u8] = b"dts-tar-split\n\x01";
const RAW_CHUNK: usize = 1 << 20;

/// One regular file of a layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its path in the layer (lossy UTF-8; used to pair files with the base's).
    pub path: String,
    /// Its content and metadata.
    pub object: ObjectSpec,
}

/// A layer's tar-split and files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The layer.
    pub diff_id: Digest,
    /// sha256 of the record stream.
    pub split_digest: Digest,
    /// Its regular files, in tar order.
    pub files: Vec<FileEntry>,
    /// The record stream itself.
    #[serde(skip)]
    pub split: Vec<u8>,
}

struct Builder {
    out: Vec<u8>,
    pending: Vec<u8>,
    in_body: bool,
    tar_len: u64,
}

impl Builder {
    fn flush(&mut self) {
        let chunk = std::mem::take(&mut self.pending);
        if !chunk.is_empty() {
            self.out.push(b'R');
            self.out.extend((chunk.len() as u32).to_le_bytes());
            self.out.extend(chunk);
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.tar_len += bytes.len() as u64;
        while self.pending.len() >= RAW_CHUNK {
            let rest = self.pending.split_off(RAW_CHUNK);
            let chunk = std::mem::replace(&mut self.pending, rest);
            self.out.push(b'R');
            self.out.extend((chunk.len() as u32).to_le_bytes());
            self.out.extend(chunk);
        }
    }

    fn file(&mut self, size: u64, digest: &Digest) {
        self.flush();
        self.out.push(b'F');
        self.out.extend(size.to_le_bytes());
        self.out
            .extend(hex::decode(digest.hex()).expect("digest hex"));
        self.tar_len += size;
    }
}

struct Tee<R> {
    inner: R,
    b: Rc<RefCell<Builder>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut b = self.b.borrow_mut();
        if !b.in_body {
            b.raw(&buf[..n]);
        }
        Ok(n)
    }
}

/// Whether the robot's unpacker places this entry as a file (whiteouts are not files).
fn is_placed_file(e: &TarEntry) -> bool {
    if e.kind != EntryKind::File {
        return false;
    }
    let base = e.path.rsplit(|b| *b == b'/').find(|s| !s.is_empty());
    !base.is_some_and(|b| b.starts_with(WHITEOUT_PREFIX.as_bytes()))
}

fn spec_of(e: &TarEntry, digest: Digest) -> ObjectSpec {
    ObjectSpec {
        digest,
        size: e.size,
        mode: e.mode & 0o7777,
        uid: e.uid as u32,
        gid: e.gid as u32,
        mtime: e.mtime,
        xattrs: e.xattrs.clone(),
    }
}

/// Takes each file content a layer reader finds.
pub type OnFile<'a> = &'a mut dyn FnMut(ObjectSpec, Vec<u8>) -> Result<(), WireError>;

/// Reads an uncompressed layer tar; checks it hashes to `diff_id`.
pub fn analyze(layer: impl Read, diff_id: &Digest) -> Result<LayerInfo, WireError> {
    analyze_inner(layer, diff_id, None)
}

/// [`analyze`], handing each regular file's content to `on_file` as it is read (every file,
/// in tar order, duplicates included). The layer is only known to hash to `diff_id` once this
/// returns `Ok`: contents handed on before are each checked by their digest on the robot, and
/// no image can use them until the tar-split (sent only after this) names them.
pub fn analyze_with(
    layer: impl Read,
    diff_id: &Digest,
    on_file: OnFile<'_>,
) -> Result<LayerInfo, WireError> {
    analyze_inner(layer, diff_id, Some(on_file))
}

fn analyze_inner(
    layer: impl Read,
    diff_id: &Digest,
    mut on_file: Option<OnFile<'_>>,
) -> Result<LayerInfo, WireError> {
    let bad = |reason: String| WireError::Layer {
        diff_id: diff_id.clone(),
        reason,
    };
    let b = Rc::new(RefCell::new(Builder {
        out: MAGIC.to_vec(),
        pending: Vec::new(),
        in_body: false,
        tar_len: 0,
    }));
    let mut tr = TarReader::new(
        Tee {
            inner: layer,
            b: Rc::clone(&b),
        },
        ReadLimits::default(),
    );
    let mut files = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while let Some(e) = tr.next_entry().map_err(|e| bad(e.to_string()))? {
        if !is_placed_file(&e) {
            continue;
        }
        b.borrow_mut().in_body = true;
        let mut h = Sha256::new();
        let mut body = tr.body();
        let mut content = Vec::new();
        if on_file.is_some() {
            content.reserve(usize::try_from(e.size).unwrap_or(0));
            body.read_to_end(&mut content)
                .map_err(|e| bad(e.to_string()))?;
            h.update(&content);
        } else {
            loop {
                let n = body.read(&mut buf).map_err(|e| bad(e.to_string()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        let digest = Digest::from_hex(&hex::encode(h.finalize())).expect("sha256 hex");
        let mut bm = b.borrow_mut();
        bm.in_body = false;
        bm.file(e.size, &digest);
        drop(bm);
        let object = spec_of(&e, digest);
        if let Some(f) = on_file.as_mut() {
            f(object.clone(), content)?;
        }
        files.push(FileEntry {
            path: String::from_utf8_lossy(&e.path).into_owned(),
            object,
        });
    }
    let (got, len) = tr.finish().map_err(|e| bad(e.to_string()))?;
    if &got != diff_id {
        return Err(bad(format!("its tar hashes to {got}")));
    }
    let mut bm = Rc::try_unwrap(b)
        .ok()
        .expect("the reader is gone")
        .into_inner();
    bm.flush();
    if bm.tar_len != len {
        return Err(bad(format!(
            "recorded {} bytes of a {len}-byte tar",
            bm.tar_len
        )));
    }
    bm.out.push(b'E');
    bm.out.extend(len.to_le_bytes());
    bm.out
        .extend(hex::decode(diff_id.hex()).expect("digest hex"));
    Ok(LayerInfo {
        diff_id: diff_id.clone(),
        split_digest: Digest::of(&bm.out),
        files,
        split: bm.out,
    })
}

/// Opens a layer blob of the laptop store, decompressed.
pub fn open_layer(store: &Store, desc: &Descriptor) -> Result<Box<dyn Read>, WireError> {
    let compression = Compression::of_media_type(&desc.media_type).ok_or_else(|| {
        WireError::Protocol(format!(
            "layer {} has unsupported media type `{}`",
            desc.digest, desc.media_type
        ))
    })?;
    let f = store.open_blob(&desc.digest)?;
    let path = store.blob_path(&desc.digest);
    Ok(compression
        .decoder(BufReader::new(f))
        .at("decompress", &path)?)
}

fn cache_dir(cache: &Path, diff_id: &Digest) -> PathBuf {
    cache.join(diff_id.hex())
}

/// The layer's info from `cache`, if cached and intact.
pub fn cached(cache: &Path, diff_id: &Digest) -> Option<LayerInfo> {
    let key = (cache.to_path_buf(), diff_id.clone());
    if let Some(info) = INFOS.get(&key) {
        return Some(LayerInfo::clone(&info));
    }
    let info = read_cached(cache, diff_id)?;
    // An index entry is a path and an object spec: ~200 bytes in memory.
    let weight = info.split.len() + info.files.len() * 200;
    INFOS.insert(key, Arc::new(info.clone()), weight);
    Some(info)
}

/// Layer infos read from caches this process (see [`super::memo`]): each is read,
/// decompressed and checked once, not once per robot of a rollout.
static INFOS: Shared<(PathBuf, Digest), LayerInfo> = Shared::new(256 << 20);

fn read_cached(cache: &Path, diff_id: &Digest) -> Option<LayerInfo> {
    let dir = cache_dir(cache, diff_id);
    let index = std::fs::read(dir.join("files.json.zst")).ok()?;
    let index = zstd::decode_all(&index[..]).ok()?;
    let mut info: LayerInfo = serde_json::from_slice(&index).ok()?;
    let split = std::fs::read(dir.join("tar-split.zst")).ok()?;
    info.split = zstd::decode_all(&split[..]).ok()?;
    (info.diff_id == *diff_id && Digest::of(&info.split) == info.split_digest).then_some(info)
}

/// The layer's info: cached, or computed from its blob (and cached).
pub fn layer_info(
    cache: &Path,
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
) -> Result<LayerInfo, WireError> {
    if let Some(i) = cached(cache, diff_id) {
        return Ok(i);
    }
    let info = analyze(open_layer(store, desc)?, diff_id)?;
    save(cache, &info)?;
    Ok(info)
}

/// Caches a layer's info in `cache` for [`cached`].
pub fn save(cache: &Path, info: &LayerInfo) -> Result<(), WireError> {
    let dir = cache_dir(cache, &info.diff_id);
    create_dir_all(&dir)?;
    let split = zstd::encode_all(&info.split[..], 3).at("compress", &dir)?;
    atomic_write(&dir.join("tar-split.zst"), &split)?;
    let index = zstd::encode_all(&serde_json::to_vec(info).expect("serialisable")[..], 3)
        .at("compress", &dir)?;
    atomic_write(&dir.join("files.json.zst"), &index)?;
    Ok(())
}

/// Contents [`read_contents`] found, by (layer, content): a rollout's robots want the same
/// changed files of the same layer, which is otherwise decompressed (and every file before
/// them hashed) once per robot.
static CONTENTS: Shared<(Digest, Digest), (ObjectSpec, Vec<u8>)> = Shared::new(64 << 20);
/// Contents larger than this are read again when wanted again.
const MEMO_CONTENT_MAX: usize = 4 << 20;

/// Reads the layer once and hands each wanted content (first file with it) to `on_file`.
pub fn read_contents(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    wanted: &HashSet<Digest>,
    on_file: OnFile<'_>,
) -> Result<(), WireError> {
    let bad = |reason: String| WireError::Layer {
        diff_id: diff_id.clone(),
        reason,
    };
    let mut left: HashSet<Digest> = wanted.clone();
    // Contents read out of this layer before (for another robot of the rollout).
    for d in wanted {
        if let Some(c) = CONTENTS.get(&(diff_id.clone(), d.clone())) {
            left.remove(d);
            on_file(c.0.clone(), c.1.clone())?;
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    let mut tr = TarReader::new(open_layer(store, desc)?, ReadLimits::default());
    while !left.is_empty() {
        let Some(e) = tr.next_entry().map_err(|e| bad(e.to_string()))? else {
            break;
        };
        if !is_placed_file(&e) {
            continue;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(e.size).unwrap_or(0));
        tr.body()
            .read_to_end(&mut bytes)
            .map_err(|e| bad(e.to_string()))?;
        let digest = Digest::of(&bytes);
        if left.remove(&digest) {
            let spec = spec_of(&e, digest);
            if bytes.len() <= MEMO_CONTENT_MAX {
                let key = (diff_id.clone(), spec.digest.clone());
                let weight = bytes.len() + 256;
                CONTENTS.insert(key, Arc::new((spec.clone(), bytes.clone())), weight);
            }
            on_file(spec, bytes)?;
        }
    }
    if !left.is_empty() {
        return Err(bad(format!(
            "{} content(s) of its index are not in its blob (stale cache?)",
            left.len()
        )));
    }
    Ok(())
}
