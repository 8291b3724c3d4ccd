//! Writing the store from the wire (`dt-agent serve --stdio`, see `src/wire`): objects that
//! arrive one by one, a layer's tar-split sent by the laptop, manifests and configs, and last
//! the snapshot and the name — with the same commit points as an import.
//!
//! ```text
//! tmp/import-<pid>-…/        one serve session's staging area (flocked; see import.rs)
//!   objects/<object name>    received contents, verified, metadata applied, waiting for
//!                            their batch's commit (then renamed to objects/…, final)
//!   layers/<diff hex>/       a received tar-split (+ meta.json when its image commits)
//!   snaps/<chain hex>/       a snapshot being built
//!   docs/                    documents on their way to images/
//! ```
//!
//! **Objects are committed per batch**, not per image: a cut link or a killed agent keeps every
//! batch already committed — verified, final, found by the next deploy's query — so only the
//! rest travels again. Within a batch: stage each object (hashing it as it is written; a content
//! that does not hash to the digest it was sent as is refused and its file removed), `syncfs`,
//! rename each to its final name (`RENAME_NOREPLACE`), `syncfs`.
//!
//! **Object keys.** The laptop sends each object's tar metadata (mode, owner, xattrs); the key
//! is derived here with the unpacker's own policy (owner only when running as root, only the
//! xattrs it would apply), so the snapshot build finds exactly that variant. A variant the
//! snapshot needs and that did not travel (same content, other metadata) is made from any
//! variant of the content, as an import does.
//!
//! **Layers and snapshots.** A received tar-split is checked against the digest the laptop sent
//! and its end record's diff_id, and staged. [`Ingest::build_image`] then rebuilds each layer's
//! tar from its tar-split and the objects and applies it through the import's unpacker and
//! [`LinkSink`] (so the diff_id is checked as the snapshot is built), and commits, in order:
//! variant objects, layers, the snapshot, the name. Documents are committed on receipt
//! ([`AgentStore::put_document`]): they are verified by their digest, and one nothing names is
//! only garbage for `gc`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub use crate::api::transfer::{BuiltImage, ObjectSpec};
use sha2::{Digest as _, Sha256};

use super::import::{Tx, commit_dirs, commit_file, commit_objects, rename_noreplace, syncfs};
use super::object::{KnownContent, LinkSink, ObjectKey, Staging, apply_meta, xattrs_key};
use super::tarsplit::{self, Record, SplitReader};
use super::{AgentStore, AgentStoreError, LayerMeta, RefEntry, SnapshotMeta, io_err, snapshot_id};
use crate::layer::{DevicePolicy, FileMeta, UnpackOptions, unpack_with, xattr_allowed};
use crate::oci::json::canonical;
use crate::oci::{Digest, Reference};
use crate::util::fs::{PathContext, sync_dir, temp_name};

/// Largest tar-split accepted or read into memory (headers of ~1M files).
pub const MAX_SPLIT_BYTES: u64 = 1 << 30;

/// A tar-split received and staged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedLayer {
    /// Its diff_id.
    pub diff_id: Digest,
    /// Regular files in it.
    pub files: u64,
    /// Length of its tar.
    pub size: u64,
    /// Contents it names that the store has no variant of (yet).
    pub missing: Vec<Digest>,
}

/// Every content digest in the store, with the path of one variant of it.
pub(crate) fn content_index(objects: &Path) -> Result<HashMap<Digest, PathBuf>, AgentStoreError> {
    let mut out = HashMap::new();
    let shards = match fs::read_dir(objects) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", objects, e)),
    };
    for shard in shards {
        let shard = shard.at("list", objects)?.path();
        if !shard.is_dir() {
            continue;
        }
        for f in fs::read_dir(&shard).at("list", &shard)? {
            let f = f.at("list", &shard)?;
            if let Some(key) = f.file_name().to_str().and_then(ObjectKey::parse) {
                out.entry(key.digest).or_insert_with(|| f.path());
            }
        }
    }
    Ok(out)
}

/// The key this agent gives an object with tar metadata `spec` (the unpacker's policy: the
/// owner only as root, only the xattrs it applies).
fn key_of(spec: &ObjectSpec, is_root: bool, ids: (u32, u32)) -> ObjectKey {
    let xattrs: Vec<(&[u8], &[u8])> = spec
        .xattrs
        .iter()
        .filter(|(k, _)| xattr_allowed(k))
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let (uid, gid) = if is_root { (spec.uid, spec.gid) } else { ids };
    ObjectKey {
        digest: spec.digest.clone(),
        mode: spec.mode & 0o7777,
        uid,
        gid,
        xattrs: xattrs_key(&xattrs),
    }
}

/// Every content digest in `store`, with the path of one variant of it.
pub fn content_index_of(store: &AgentStore) -> Result<HashMap<Digest, PathBuf>, AgentStoreError> {
    content_index(&store.objects_dir())
}

impl AgentStore {
    /// For each content digest, whether the store has an object with that content (any
    /// metadata variant).
    pub fn has_contents(&self, digests: &[Digest]) -> Result<Vec<bool>, AgentStoreError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let index = content_index(&self.objects_dir())?;
        Ok(digests.iter().map(|d| index.contains_key(d)).collect())
    }

    /// The digest of a complete layer's tar-split record stream, if the layer is here.
    pub fn layer_split_digest(&self, diff_id: &Digest) -> Option<Digest> {
        if !self.has_layer(diff_id) {
            return None;
        }
        self.layer_meta(diff_id).ok().map(|m| m.tar_split)
    }

    /// A complete layer's tar-split record stream (decompressed), verified against its digest.
    pub fn layer_split(&self, diff_id: &Digest) -> Result<Vec<u8>, AgentStoreError> {
        let meta = self.layer_meta(diff_id)?;
        let p = self
            .layers_dir()
            .join(diff_id.hex())
            .join(tarsplit::FILE_NAME);
        let f = File::open(&p).at("open", &p)?;
        let dec = zstd::stream::read::Decoder::new(f).at("read", &p)?;
        let mut out = Vec::new();
        dec.take(MAX_SPLIT_BYTES + 1)
            .read_to_end(&mut out)
            .at("read", &p)?;
        if Digest::of(&out) != meta.tar_split {
            return Err(AgentStoreError::corrupt(
                &p,
                "does not hash to the digest in its meta.json",
            ));
        }
        Ok(out)
    }

    /// Stores a manifest, index or config verified against `digest`: temp file, fsync,
    /// rename, directory fsync. Returns false when it was there already.
    pub fn put_document(&self, digest: &Digest, bytes: &[u8]) -> Result<bool, AgentStoreError> {
        self.require_writable()?;
        let dir = self.images_dir();
        let dest = dir.join(digest.hex());
        if Digest::of(bytes) != *digest {
            return Err(AgentStoreError::corrupt(
                &dest,
                format!(
                    "the document received hashes to {}, not {digest}; refused",
                    Digest::of(bytes)
                ),
            ));
        }
        if dest.is_file() {
            return Ok(false);
        }
        let tmp = self.tmp_dir().join(temp_name("doc-"));
        let result = (|| {
            commit_file(&tmp, &dest, bytes)?;
            sync_dir(&dir)?;
            Ok(true)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Points `name` at an image (atomic rewrite of `refs.json`). The manifest, its config, its
    /// layers and its snapshot must be here.
    pub fn set_name(&self, name: &Reference, entry: RefEntry) -> Result<(), AgentStoreError> {
        self.require_writable()?;
        let (_, config) = self.image_config(&entry.manifest)?;
        let chain = snapshot_id(&config.rootfs.diff_ids);
        if let Some(d) = config.rootfs.diff_ids.iter().find(|d| !self.has_layer(d)) {
            return Err(AgentStoreError::BadImage {
                image: name.familiar(),
                reason: format!("layer {d} is not complete on this robot"),
            });
        }
        if !self.has_snapshot(&chain) {
            return Err(AgentStoreError::BadImage {
                image: name.familiar(),
                reason: format!("its snapshot {chain} is not built"),
            });
        }
        let key = name.to_string();
        self.edit_refs(|r| {
            r.refs.insert(key, entry);
        })
    }

    /// Starts taking objects, layers and images from the wire; see [`Ingest`].
    pub fn begin_ingest(&self) -> Result<Ingest<'_>, AgentStoreError> {
        self.require_writable()?;
        super::import::clean_tmp(self)?;
        let tx = Tx::begin(self)?;
        Ok(Ingest {
            store: self,
            tx,
            pending: Vec::new(),
            splits: BTreeMap::new(),
            is_root: rustix::process::geteuid().is_root(),
            ids: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            objects_committed: 0,
        })
    }
}

/// One serve session's writes: staged objects (committed per batch), staged tar-splits, images
/// built and named. Dropped, its staging area is removed; what was committed stays.
pub struct Ingest<'a> {
    store: &'a AgentStore,
    tx: Tx,
    pending: Vec<(ObjectKey, PathBuf)>,
    splits: BTreeMap<Digest, LayerMeta>,
    is_root: bool,
    ids: (u32, u32),
    objects_committed: u64,
}

impl Ingest<'_> {
    /// Objects committed by this session so far.
    pub fn objects_committed(&self) -> u64 {
        self.objects_committed
    }

    /// Reads one object's content (exactly `spec.size` bytes) from `content`, hashing it as it
    /// is staged; refuses (and removes) content that is not `spec.digest`. The object gets its
    /// final name at the next [`commit_objects`](Self::commit_objects).
    pub fn put_object(
        &mut self,
        spec: &ObjectSpec,
        content: &mut dyn Read,
    ) -> Result<(), AgentStoreError> {
        let key = key_of(spec, self.is_root, self.ids);
        let name = key.file_name();
        let staged = self.tx.dir.join("objects").join(&name);
        let exists = self.store.objects_dir().join(key.rel_path()).is_file()
            || self.pending.iter().any(|(k, _)| k == &key);
        let mut h = Sha256::new();
        let mut out: Option<File> = if exists {
            None
        } else {
            Some(
                File::options()
                    .write(true)
                    .create_new(true)
                    .open(&staged)
                    .at("create", &staged)?,
            )
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = spec.size;
        let result = (|| {
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = match content.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(AgentStoreError::corrupt(
                            &staged,
                            format!(
                                "object {} ended after {} of {} bytes",
                                spec.digest,
                                spec.size - left,
                                spec.size
                            ),
                        ));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("receive", &staged, e)),
                };
                h.update(&buf[..n]);
                if let Some(f) = &mut out {
                    f.write_all(&buf[..n]).at("write", &staged)?;
                }
                left -= n as u64;
            }
            let got = Digest::from_hex(&hex::encode(h.finalize())).expect("sha256 hex");
            if got != spec.digest {
                return Err(AgentStoreError::corrupt(
                    &staged,
                    format!(
                        "object received as {} hashes to {got}; refused",
                        spec.digest
                    ),
                ));
            }
            if let Some(f) = &out {
                let meta = FileMeta {
                    path: Path::new(""),
                    size: spec.size,
                    mode: key.mode,
                    owner: self.is_root.then_some((key.uid, key.gid)),
                    mtime: spec.mtime,
                    xattrs: spec
                        .xattrs
                        .iter()
                        .filter(|(k, _)| xattr_allowed(k))
                        .map(|(k, v)| (k.as_slice(), v.as_slice()))
                        .collect(),
                };
                apply_meta(f.as_fd(), &key, &meta).at("set the metadata of", &staged)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if out.is_some() {
                    self.pending.push((key, staged));
                }
                Ok(())
            }
            Err(e) => {
                drop(out);
                if !exists {
                    let _ = fs::remove_file(&staged);
                }
                Err(self.store.no_space(e))
            }
        }
    }

    /// Gives every staged object its final name: `syncfs` (data before names), rename each
    /// (`RENAME_NOREPLACE`), `syncfs`. Returns how many were new.
    pub fn commit_objects(&mut self) -> Result<usize, AgentStoreError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        syncfs(&self.tx.dir)?;
        let objects = self.store.objects_dir();
        let mut added = 0;
        for (key, path) in std::mem::take(&mut self.pending) {
            let dest = objects.join(key.rel_path());
            let parent = dest.parent().expect("objects have a parent");
            if !parent.is_dir() {
                match fs::DirBuilder::new().mode(0o700).create(parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("create directory", parent, e)),
                }
            }
            match rename_noreplace(&path, &dest) {
                Ok(()) => added += 1,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&path);
                }
                Err(e) => return Err(io_err("rename into place", &dest, e)),
            }
        }
        syncfs(&self.tx.dir)?;
        self.objects_committed += added as u64;
        Ok(added)
    }

    /// Stages the tar-split `split` (the uncompressed record stream) of layer `diff_id`,
    /// checked against `split_digest` (which the laptop computed) and its own end record.
    pub fn put_layer(
        &mut self,
        diff_id: &Digest,
        split_digest: &Digest,
        split: &[u8],
    ) -> Result<StagedLayer, AgentStoreError> {
        let dir = self.tx.dir.join("layers").join(diff_id.hex());
        let path = dir.join(tarsplit::FILE_NAME);
        if Digest::of(split) != *split_digest {
            return Err(AgentStoreError::corrupt(
                &path,
                format!(
                    "the tar-split received for layer {diff_id} hashes to {}, not {split_digest}; refused",
                    Digest::of(split)
                ),
            ));
        }
        if dir.exists() {
            crate::agent::store::import::remove_tree(&dir).at("remove", &dir)?;
        }
        fs::create_dir(&dir).at("create directory", &dir)?;
        let compressed = zstd::encode_all(split, 3).at("compress", &path)?;
        fs::write(&path, compressed).at("write", &path)?;
        let mismatch = |reason: String| AgentStoreError::SplitMismatch {
            diff_id: diff_id.clone(),
            reason,
        };
        let mut r = SplitReader::open(&path).map_err(|e| mismatch(e.to_string()))?;
        let mut files = 0;
        let mut contents = BTreeSet::new();
        while let Some(rec) = r.next_record().map_err(|e| mismatch(e.to_string()))? {
            if let Record::File { digest, .. } = rec {
                files += 1;
                contents.insert(digest);
            }
        }
        let (digest, size, claimed) = r.finish().map_err(|e| mismatch(e.to_string()))?;
        if claimed != *diff_id || digest != *split_digest {
            return Err(mismatch(format!(
                "its end record names layer {claimed}, not {diff_id}"
            )));
        }
        let index = content_index(&self.store.objects_dir())?;
        let missing = contents
            .into_iter()
            .filter(|d| !index.contains_key(d))
            .collect();
        self.splits.insert(
            diff_id.clone(),
            LayerMeta {
                diff_id: diff_id.clone(),
                size,
                tar_split: digest,
                files,
            },
        );
        Ok(StagedLayer {
            diff_id: diff_id.clone(),
            files,
            size,
            missing,
        })
    }

    /// Builds the snapshot of the image whose manifest is `entry.manifest` (its documents must
    /// be stored, each layer complete or staged with all its objects), commits the staged
    /// layers it uses and the snapshot, and gives it `names`.
    pub fn build_image(
        &mut self,
        names: &[Reference],
        entry: &RefEntry,
    ) -> Result<BuiltImage, AgentStoreError> {
        let r = self.build_image_inner(names, entry);
        r.map_err(|e| self.store.no_space(e))
    }

    fn build_image_inner(
        &mut self,
        names: &[Reference],
        entry: &RefEntry,
    ) -> Result<BuiltImage, AgentStoreError> {
        self.commit_objects()?;
        let store = self.store;
        let display = names
            .first()
            .map(Reference::familiar)
            .unwrap_or_else(|| entry.manifest.to_string());
        let bad = |reason: String| AgentStoreError::BadImage {
            image: display.clone(),
            reason,
        };
        if entry.digest != entry.manifest {
            store.read_document(&entry.digest, crate::store::MAX_MANIFEST_BYTES)?;
        }
        let (m, config) = store.image_config(&entry.manifest)?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != m.layers.len() {
            return Err(bad(format!(
                "its manifest lists {} layers and its config {} diff_ids",
                m.layers.len(),
                diff_ids.len()
            )));
        }
        let index = content_index(&store.objects_dir())?;
        let new_layers = self.new_layers(&diff_ids, &index, &display)?;
        let chain_id = snapshot_id(&diff_ids);
        let mut built = BuiltImage {
            chain_id: chain_id.clone(),
            snapshot_built: false,
            layers_committed: 0,
            variants_made: 0,
        };
        let snaps = self.tx.dir.join("snaps");
        let mut staging = Staging::new(self.tx.dir.join("objects"), store.objects_dir());
        if !store.has_snapshot(&chain_id) {
            let snap = snaps.join(chain_id.hex());
            self.unpack_snapshot(
                &snap,
                &diff_ids,
                &new_layers,
                &index,
                &mut staging,
                &display,
            )?;
            let meta = SnapshotMeta {
                chain_id: chain_id.clone(),
                diff_ids: diff_ids.clone(),
            };
            let mp = snap.join("meta.json");
            fs::write(&mp, canonical(&meta)).at("write", &mp)?;
            built.snapshot_built = true;
        }
        for d in &new_layers {
            let meta = &self.splits[d];
            let mp = self.tx.dir.join("layers").join(d.hex()).join("meta.json");
            fs::write(&mp, canonical(meta)).at("write", &mp)?;
        }
        // The import's commit order: data, variant objects, layers, snapshot, names.
        syncfs(&self.tx.dir)?;
        let (variants, _) = commit_objects(store, &staging)?;
        built.variants_made = variants;
        syncfs(&self.tx.dir)?;
        built.layers_committed = commit_dirs(
            &self.tx.dir.join("layers"),
            &store.layers_dir(),
            &new_layers,
        )?;
        for d in &new_layers {
            self.splits.remove(d);
        }
        if built.snapshot_built {
            commit_dirs(
                &snaps,
                &store.snapshots_dir(),
                &BTreeSet::from([chain_id.clone()]),
            )?;
        }
        syncfs(&self.tx.dir)?;
        let keys: Vec<String> = names.iter().map(Reference::to_string).collect();
        if !keys.is_empty() {
            store.edit_refs(|r| {
                for k in keys {
                    r.refs.insert(k, entry.clone());
                }
            })?;
        }
        Ok(built)
    }

    /// The layers of `diff_ids` this image needs committed: each one not stored must have been
    /// staged (`put_layer`) with every object its tar-split names already here.
    fn new_layers(
        &self,
        diff_ids: &[Digest],
        index: &HashMap<Digest, PathBuf>,
        display: &str,
    ) -> Result<BTreeSet<Digest>, AgentStoreError> {
        let bad = |reason: String| AgentStoreError::BadImage {
            image: display.to_string(),
            reason,
        };
        let mut new_layers = BTreeSet::new();
        for d in diff_ids {
            if self.store.has_layer(d) {
                continue;
            }
            if !self.splits.contains_key(d) {
                return Err(bad(format!("layer {d} is neither on this robot nor sent")));
            }
            let split = self
                .tx
                .dir
                .join("layers")
                .join(d.hex())
                .join(tarsplit::FILE_NAME);
            let objects =
                tarsplit::objects_of(&split).map_err(|e| AgentStoreError::SplitMismatch {
                    diff_id: d.clone(),
                    reason: e.to_string(),
                })?;
            let missing = objects.iter().filter(|o| !index.contains_key(o)).count();
            if missing > 0 {
                return Err(bad(format!(
                    "layer {d} still lacks {missing} object(s); nothing was named (send them and retry)"
                )));
            }
            new_layers.insert(d.clone());
        }
        Ok(new_layers)
    }

    /// Unpacks the snapshot of `diff_ids` into `snap` from each layer's tar-split, staged or
    /// stored (see [`replay_snapshot`]).
    fn unpack_snapshot(
        &self,
        snap: &Path,
        diff_ids: &[Digest],
        new_layers: &BTreeSet<Digest>,
        index: &HashMap<Digest, PathBuf>,
        staging: &mut Staging,
        display: &str,
    ) -> Result<(), AgentStoreError> {
        let layers: Vec<(Digest, PathBuf)> = diff_ids
            .iter()
            .map(|d| {
                let dir = if new_layers.contains(d) {
                    self.tx.dir.join("layers").join(d.hex())
                } else {
                    self.store.layers_dir().join(d.hex())
                };
                (d.clone(), dir.join(tarsplit::FILE_NAME))
            })
            .collect();
        replay_snapshot(snap, &layers, index, staging, display, self.is_root)
    }
}

/// Unpacks the snapshot of `layers` (diff_id, tar-split) into `snap` (a staging directory,
/// replaced if a cut build left one) by replaying each layer's tar-split as links to its
/// objects; variants the unpacker needs go to `staging`.
pub(super) fn replay_snapshot(
    snap: &Path,
    layers: &[(Digest, PathBuf)],
    index: &HashMap<Digest, PathBuf>,
    staging: &mut Staging,
    display: &str,
    is_root: bool,
) -> Result<(), AgentStoreError> {
    if snap.exists() {
        super::import::remove_tree(snap).at("remove", snap)?;
    }
    let rootfs = snap.join("rootfs");
    fs::create_dir(snap).at("create directory", snap)?;
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .at("create directory", &rootfs)?;
    for (i, (d, split)) in layers.iter().enumerate() {
        let mut reader = SplitTar::open(split, index)?;
        // Every object was verified by its digest when it arrived (or when the layer it came
        // with was imported), and the tar-split by the digest the laptop sent and its end
        // record's diff_id (or by rebuilding the layer at its import): replaying it only
        // links objects, so building a snapshot does not reread and rehash hundreds of MB to
        // recompute a diff_id. That is `dt-agent fsck`'s job (docs/wire.md, "Verification and
        // interruption"). The unpacker still checks every header.
        let known = Some(KnownContent::default());
        reader.known = known.clone();
        let opts = UnpackOptions {
            same_owner: is_root,
            devices: DevicePolicy::Skip,
            expect_diff_id: None,
            // Nor is the replayed stream hashed: its bodies are zeros here anyway.
            hash: false,
            ..UnpackOptions::default()
        };
        let mut sink = LinkSink {
            staging,
            recorder: None,
            known,
            source: None,
        };
        unpack_with(reader, &rootfs, &opts, &mut sink).map_err(|source| {
            AgentStoreError::Layer {
                image: display.to_string(),
                index: i + 1,
                diff_id: d.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// The tar a tar-split describes, as a stream: raw records as they are, file bodies read from
/// (any variant of) their objects.
struct SplitTar<'a> {
    path: PathBuf,
    reader: SplitReader,
    index: &'a HashMap<Digest, PathBuf>,
    raw: Vec<u8>,
    pos: usize,
    file: Option<(File, PathBuf, u64)>,
    /// When set, file bodies are announced here and read as zeros (see [`KnownContent`]).
    known: Option<KnownContent>,
    /// Zeros left of a known body.
    zeros: u64,
}

impl<'a> SplitTar<'a> {
    fn open(path: &Path, index: &'a HashMap<Digest, PathBuf>) -> Result<Self, AgentStoreError> {
        let reader = SplitReader::open(path).map_err(|e| AgentStoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(SplitTar {
            path: path.to_path_buf(),
            reader,
            index,
            raw: Vec::new(),
            pos: 0,
            file: None,
            known: None,
            zeros: 0,
        })
    }
}

impl Read for SplitTar<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.raw.len() {
                let n = buf.len().min(self.raw.len() - self.pos);
                buf[..n].copy_from_slice(&self.raw[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.zeros > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            if let Some((f, p, left)) = &mut self.file {
                if *left == 0 {
                    self.file = None;
                    continue;
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("object `{}` is shorter than its layer says", p.display()),
                    ));
                }
                *left -= n as u64;
                return Ok(n);
            }
            let rec = self
                .reader
                .next_record()
                .map_err(|e| io::Error::other(e.to_string()))?;
            match rec {
                None => return Ok(0),
                Some(Record::Raw(bytes)) => {
                    self.raw = bytes;
                    self.pos = 0;
                }
                Some(Record::File { size, digest }) => {
                    let p = self.index.get(&digest).cloned().ok_or_else(|| {
                        io::Error::other(format!(
                            "tar-split `{}` names object {digest}, which is missing",
                            self.path.display()
                        ))
                    })?;
                    let f = File::open(&p)?;
                    let len = f.metadata()?.len();
                    if len != size {
                        return Err(io::Error::other(format!(
                            "object `{}` has {len} bytes, the layer needs {size}",
                            p.display()
                        )));
                    }
                    match &self.known {
                        Some(k) => {
                            *k.borrow_mut() = Some((digest, p));
                            self.zeros = size;
                        }
                        None => self.file = Some((f, p, size)),
                    }
                }
            }
        }
    }
}
