//! The robot's object store: files, not tarballs (docs/architecture.md, "The robot's state").
//!
//! Each distinct regular-file content is kept once as a content-addressed object; each layer
//! keeps the tar-split metadata that rebuilds its exact tar (so its diff_id can be re-checked);
//! each named image keeps its manifest and config byte for byte; and each image's layer stack
//! is materialised once as a snapshot — a hardlink farm of objects, so a new snapshot costs
//! metadata operations, not data copies.
//!
//! ```text
//! $DT_AGENT_ROOT/                      0700: snapshots contain setuid files and capabilities
//!   meta.json                          {"version":1,"compat":[],"ro_compat":[],"incompat":[]}
//!   lock                               flock: shared by import/fsck/ls, exclusive for gc
//!   refs.json                          names → image (top digest, chosen manifest); GC roots
//!   refs.lock                          flock: exclusive while refs.json is rewritten
//!   objects/sha256/<aa>/<hex>.<mode>.<uid>.<gid>[.<xattrs>]
//!                                      file content <hex> (sha256) with that inode metadata;
//!                                      written once, never modified, verified before named
//!   layers/<diff_id hex>/tar-split.zst raw tar headers + padding, bodies as object digests
//!   layers/<diff_id hex>/meta.json     diff_id, tar length, digest of the tar-split records
//!   images/sha256/<hex>                manifests, indexes and configs, byte for byte
//!   snapshots/<chain_id hex>/rootfs/   the image's unpacked layer stack: a hardlink farm
//!   snapshots/<chain_id hex>/meta.json chain id and diff_ids
//!   roots/<any>                        GC-root hook: lines of manifest digests (releases)
//!   tmp/import-<pid>-…/                one import's staging area, flocked while in use
//!   imports/<import-…>.pending         layers an unfinished import committed (gc keeps them)
//!   imports/sources/<hex>              which layer an archive entry was (pending.rs)
//! ```
//!
//! **Objects and inode metadata.** A hard link shares its inode, and the inode carries one
//! mode, owner, set of xattrs and mtime. Files with the same bytes but different metadata
//! (an empty file that is 0644 here and 0755 there; the same binary setuid in one image) can
//! therefore not share one inode. We follow ostree's "bare" repository mode, which keys objects
//! by content *and* metadata: an object is named by its content digest plus its mode, uid, gid
//! and (a hash of) its applied xattrs. The alternative — one read-only 0444 root-owned inode per
//! content, with metadata applied elsewhere — needs per-file metadata in the mounted image,
//! which composefs gets from an EROFS image and overlayfs metacopy; a plain directory tree
//! cannot express it. The cost: the same content with two metadata variants takes two copies
//! (rare outside empty files, which cost no data blocks; `copy_file_range` reflinks where the
//! file system can). The mtime is not part of the key, or nothing would be shared across
//! rebuilds of an image: an object keeps the mtime of the first file that created it (close to
//! what Python's `.pyc` checks want), and the exact mtimes live on in the tar-split.
//!
//! **Commit points.** An import streams its archive (import.rs, consume.rs): each layer is
//! unpacked into the import's own `tmp/` directory as it arrives, its tar-split verified by
//! rebuilding the tar from it and the objects and hashing it to the diff_id, and committed at
//! once: `syncfs` (data before names, as containerd's `sync_fs`), the layer listed in the
//! import's `imports/*.pending` file, its new objects renamed into place (`RENAME_NOREPLACE`),
//! `syncfs`, then `layers/<diff>/`. When the archive has ended and every image checks out
//! against the layers it carried: snapshots, then documents, and last `refs.json` (atomic
//! rewrite). A crash at any point leaves only verified objects under final names, complete
//! layers (kept by `gc` for a rerun while their `.pending` file is young) and snapshots, and a
//! `tmp/` entry that the next import or `gc` removes. A refused archive names nothing.
//!
//! **Invariants.** A layer is complete only when all its objects are present (objects are
//! committed first, and `gc` keeps every object a kept layer names), so "what do you have" is
//! asked by diff_id or chain id. Snapshots are read-only by contract (they are overlay lower
//! dirs): writing into one would change an object; `fsck` would see it.
//!
//! What is not here: transfers over the wire, releases (they add files under `roots/`),
//! containers (they use `snapshots/<chain>/rootfs` as their overlay lower dir).

mod blob;
mod consume;
mod docker_root;
mod docker_split;
mod fsck;
mod gc;
mod import;
mod ingest;
mod object;
mod pending;
mod resolve;
mod tarsplit;

pub use fsck::{FsckReport, Problem};
pub use gc::GcReport;
pub use import::{ImportOptions, ImportReport, ImportedImage};
pub use ingest::{BuiltImage, Ingest, MAX_SPLIT_BYTES, ObjectSpec, StagedLayer, content_index_of};
pub use object::ObjectKey;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;
use crate::oci::json::{JsonError, canonical, parse_strict};
use crate::oci::{Digest, Document, ImageConfig, Reference};
use crate::store::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, StoreError};
use crate::util::fs::{Lock, PathContext, PathError, atomic_write, lock_file, read_limited};

/// The on-disk format version this agent writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Features this agent understands (none yet). Unknown `incompat` features refuse the store;
/// unknown `ro_compat` ones allow reading only; unknown `compat` ones are ignored.
const KNOWN_FEATURES: &[&str] = &[];

/// Why a store operation failed. Every variant names the path, digest or image it is about.
#[derive(Debug, thiserror::Error)]
pub enum AgentStoreError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The store was written by a newer agent.
    #[error(
        "store `{}` has format version {found}; this dt-agent reads version {FORMAT_VERSION} (upgrade dt-agent)",
        path.display()
    )]
    NewerFormat {
        /// The store root.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The store uses features this agent does not know.
    #[error(
        "store `{}` uses feature(s) {features} that this dt-agent does not know{} (upgrade dt-agent)",
        path.display(),
        if *read_only { " for writing" } else { "" }
    )]
    UnknownFeatures {
        /// The store root.
        path: PathBuf,
        /// The features, comma-separated.
        features: String,
        /// Whether reading is still allowed.
        read_only: bool,
    },
    /// A store file is not what this agent wrote.
    #[error("`{}`: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The archive is unreadable, incomplete or inconsistent.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The staging area failed.
    #[error(transparent)]
    Staging(#[from] StoreError),
    /// A manifest, index or config is not valid.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// A layer was refused or could not be applied.
    #[error("image `{image}`, layer {index} ({diff_id})")]
    Layer {
        /// The image being imported.
        image: String,
        /// 1-based position of the layer.
        index: usize,
        /// Its diff_id.
        diff_id: Digest,
        /// What went wrong, naming the entry.
        #[source]
        source: crate::layer::UnpackError,
    },
    /// The archive is incomplete or inconsistent (found while streaming it).
    #[error("archive is bad: {reason}")]
    BadArchive {
        /// What is wrong, naming the entry.
        reason: String,
        /// Whether the stream only ended early (the layers before stay for a rerun).
        incomplete: bool,
    },
    /// A layer entry of the archive was refused or could not be applied.
    #[error("archive is bad: layer entry `{entry}`")]
    LayerEntry {
        /// The entry's path in the archive.
        entry: String,
        /// What went wrong, naming the layer's entry.
        #[source]
        source: crate::layer::UnpackError,
    },
    /// Docker's data root (`--docker-root`) is missing, not overlay2's, or inconsistent.
    #[error("Docker data root: `{}`: {reason}", path.display())]
    DockerRoot {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A layer of Docker's data root does not rebuild its diff_id from its files.
    #[error("Docker's layer {diff_id}: {reason}")]
    DockerLayer {
        /// The layer.
        diff_id: Digest,
        /// What differs, naming the file.
        reason: String,
    },
    /// A layer's metadata did not rebuild its tar.
    #[error("layer {diff_id}: its tar-split does not rebuild the layer: {reason}")]
    SplitMismatch {
        /// The layer.
        diff_id: Digest,
        /// What differs.
        reason: String,
    },
    /// An image names something this agent cannot use.
    #[error("image `{image}`: {reason}")]
    BadImage {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// No image has that name.
    #[error("no image named `{0}` on this robot (see `dt-agent image ls`)")]
    NoSuchImage(String),
    /// The device holding the store is full.
    #[error(
        "no space left on the device holding the robot store `{}` ({free_bytes} bytes free); nothing was committed — free space with `dt-agent image rm NAME` and `dt-agent gc`",
        root.display()
    )]
    NoSpace {
        /// The store root.
        root: PathBuf,
        /// Free bytes after the failure.
        free_bytes: u64,
        /// The failed operation.
        #[source]
        source: Box<AgentStoreError>,
    },
}

impl AgentStoreError {
    /// Whether the input (archive, name) is at fault rather than the robot (exit 2 vs 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            AgentStoreError::Archive(a) => a.is_bad_input(),
            // A tar-split that does not rebuild its layer is our fault, not the archive's.
            AgentStoreError::Json(_)
            | AgentStoreError::BadImage { .. }
            | AgentStoreError::BadArchive { .. } => true,
            AgentStoreError::Layer { source, .. } | AgentStoreError::LayerEntry { source, .. } => {
                !matches!(
                    source,
                    crate::layer::UnpackError::Fs { .. } | crate::layer::UnpackError::Root(_)
                )
            }
            _ => false,
        }
    }

    pub(crate) fn bad_archive(reason: impl Into<String>) -> AgentStoreError {
        AgentStoreError::BadArchive {
            reason: reason.into(),
            incomplete: false,
        }
    }

    fn corrupt(path: &Path, reason: impl Into<String>) -> AgentStoreError {
        AgentStoreError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// An I/O error naming its path.
pub(crate) fn io_err(action: &'static str, path: &Path, source: io::Error) -> AgentStoreError {
    AgentStoreError::Io(PathError {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// Whether an error (or anything in its source chain) is "no space left on device".
fn is_no_space(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && (matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || io.kind() == io::ErrorKind::StorageFull
                || io.kind() == io::ErrorKind::QuotaExceeded)
        {
            return true;
        }
        if e.to_string().contains("No space left on device") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// `meta.json`: the format version and feature sets (composefs-rs `doc/repository.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreMeta {
    version: u32,
    #[serde(default)]
    compat: Vec<String>,
    #[serde(default)]
    ro_compat: Vec<String>,
    #[serde(default)]
    incompat: Vec<String>,
}

/// What a name points at (`refs.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefEntry {
    /// The top-level document the name was given to (manifest or index).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The manifest used on this robot (the top one, or the platform's entry of an index).
    pub manifest: Digest,
}

/// `refs.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Refs {
    version: u32,
    refs: BTreeMap<String, RefEntry>,
}

/// A named image, as `dt-agent image ls` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// The digest the name points at (manifest or index).
    pub digest: Digest,
    /// The manifest this robot uses.
    pub manifest: Digest,
    /// Its config's digest: what `docker image inspect` calls the image's `Id`, so an adopting
    /// caller can tell which of Docker's images the robot holds already.
    pub config: Digest,
    /// The platform of that manifest's config (`linux/arm64`).
    pub platform: String,
    /// Bytes of its uncompressed layers (what it unpacks to).
    pub size: u64,
    /// Chain id of its layer stack: its snapshot's name.
    pub chain_id: Digest,
    /// Whether its snapshot is present.
    pub snapshot: bool,
}

/// `layers/<hex>/meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayerMeta {
    pub diff_id: Digest,
    /// Length of the uncompressed tar.
    pub size: u64,
    /// sha256 of the uncompressed tar-split record stream.
    pub tar_split: Digest,
    /// Regular files (bodies) in the layer.
    pub files: u64,
}

/// `snapshots/<hex>/meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotMeta {
    pub chain_id: Digest,
    pub diff_ids: Vec<Digest>,
}

pub use crate::api::transfer::snapshot_id;

/// An open robot store. Holds a shared lock on `lock` for its lifetime.
pub struct AgentStore {
    root: PathBuf,
    lock: File,
    writable: bool,
}

impl AgentStore {
    /// Opens the store at `root`, creating it if needed. Refuses a store written by a newer
    /// agent.
    pub fn open(root: &Path) -> Result<AgentStore, AgentStoreError> {
        if !root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .at("create directory", root)?;
        }
        let lock_path = root.join("lock");
        let lock = lock_file(&lock_path, Lock::Shared)?;
        let meta_path = root.join("meta.json");
        let writable = match fs::read(&meta_path) {
            Ok(bytes) => check_meta(root, &meta_path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A new store: its directory is ours alone (snapshots hold setuid binaries).
                fs::set_permissions(root, fs::Permissions::from_mode(0o700)).at("chmod", root)?;
                let meta = StoreMeta {
                    version: FORMAT_VERSION,
                    compat: Vec::new(),
                    ro_compat: Vec::new(),
                    incompat: Vec::new(),
                };
                atomic_write(&meta_path, &canonical(&meta))?;
                true
            }
            Err(e) => return Err(io_err("read", &meta_path, e)),
        };
        let store = AgentStore {
            root: root.to_path_buf(),
            lock,
            writable,
        };
        for d in [
            store.objects_dir(),
            store.layers_dir(),
            store.images_dir(),
            store.snapshots_dir(),
            store.roots_dir(),
            store.tmp_dir(),
            store.imports_dir(),
        ] {
            if !d.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&d)
                    .at("create directory", &d)?;
            }
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn objects_dir(&self) -> PathBuf {
        self.root.join("objects/sha256")
    }
    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images/sha256")
    }
    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// The GC-root hook: every file here lists manifest digests (`sha256:…`, one per line,
    /// `#` comments) whose images `gc` keeps, named or not. Releases write their files here.
    pub fn roots_dir(&self) -> PathBuf {
        self.root.join("roots")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// What unfinished imports keep (pending.rs).
    pub(crate) fn imports_dir(&self) -> PathBuf {
        self.root.join("imports")
    }
    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    /// Where the snapshot of a layer stack lives: `snapshots/<chain id hex>/rootfs` (whether
    /// or not it is there). Containers use it as their overlay lower dir.
    pub fn snapshot_rootfs(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(chain_id.hex()).join("rootfs")
    }

    /// Whether the layer `diff_id` is complete in the store (all its objects are present).
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layers_dir()
            .join(diff_id.hex())
            .join("meta.json")
            .is_file()
    }

    /// Whether the snapshot named by `chain_id` is present.
    pub fn has_snapshot(&self, chain_id: &Digest) -> bool {
        self.snapshots_dir()
            .join(chain_id.hex())
            .join("meta.json")
            .is_file()
    }

    /// Bytes available to the agent on the store's file system.
    pub fn free_bytes(&self) -> Result<u64, AgentStoreError> {
        free_bytes(&self.root)
    }

    fn require_writable(&self) -> Result<(), AgentStoreError> {
        if self.writable {
            Ok(())
        } else {
            Err(AgentStoreError::UnknownFeatures {
                path: self.root.clone(),
                features: "(ro_compat)".into(),
                read_only: false,
            })
        }
    }

    /// Runs `f` with the store lock held exclusively (no import, fsck or ls runs meanwhile),
    /// then returns to the shared lock.
    fn exclusive<T>(
        &self,
        f: impl FnOnce() -> Result<T, AgentStoreError>,
    ) -> Result<T, AgentStoreError> {
        let lock_path = self.root.join("lock");
        flock(&self.lock, FlockOperation::LockExclusive)
            .map_err(io::Error::from)
            .at("lock", &lock_path)?;
        let result = f();
        flock(&self.lock, FlockOperation::LockShared)
            .map_err(io::Error::from)
            .at("lock", &lock_path)?;
        result
    }

    // -----------------------------------------------------------------------------------------
    // Names

    fn read_refs(&self) -> Result<Refs, AgentStoreError> {
        let p = self.refs_path();
        if !p.exists() {
            return Ok(Refs {
                version: 1,
                refs: BTreeMap::new(),
            });
        }
        let bytes = read_limited(&p, MAX_MANIFEST_BYTES)?;
        Ok(parse_strict("refs.json", &bytes)?)
    }

    /// Every name and what it points at.
    pub fn refs(&self) -> Result<BTreeMap<String, RefEntry>, AgentStoreError> {
        Ok(self.read_refs()?.refs)
    }

    /// Rewrites `refs.json` atomically under `refs.lock`.
    fn edit_refs<T>(&self, f: impl FnOnce(&mut Refs) -> T) -> Result<T, AgentStoreError> {
        let lock_path = self.root.join("refs.lock");
        let _lock = lock_file(&lock_path, Lock::Exclusive)?;
        let mut refs = self.read_refs()?;
        let out = f(&mut refs);
        refs.version = 1;
        atomic_write(&self.refs_path(), &canonical(&refs))?;
        Ok(out)
    }

    /// Drops a name. Its data stays until `gc` (if nothing else uses it).
    pub fn remove_name(&self, name: &Reference) -> Result<(), AgentStoreError> {
        self.require_writable()?;
        let key = name.to_string();
        let found = self.edit_refs(|r| r.refs.remove(&key).is_some())?;
        if found {
            Ok(())
        } else {
            Err(AgentStoreError::NoSuchImage(name.familiar()))
        }
    }

    /// The bytes of a stored manifest, index or config, verified against its digest.
    pub fn read_document(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, AgentStoreError> {
        let p = self.images_dir().join(d.hex());
        let bytes = read_limited(&p, limit)?;
        if &Digest::of(&bytes) != d {
            return Err(AgentStoreError::corrupt(
                &p,
                format!("does not hash to its name (it is {})", Digest::of(&bytes)),
            ));
        }
        Ok(bytes)
    }

    /// The manifest's config and layer diff_ids.
    pub(crate) fn image_config(
        &self,
        manifest: &Digest,
    ) -> Result<(crate::oci::Manifest, ImageConfig), AgentStoreError> {
        let bytes = self.read_document(manifest, MAX_MANIFEST_BYTES)?;
        let m = match Document::parse(&format!("manifest {manifest}"), None, &bytes)? {
            Document::Manifest(m) => *m,
            Document::Index(_) => {
                return Err(AgentStoreError::corrupt(
                    &self.images_dir().join(manifest.hex()),
                    "a name's manifest is an index",
                ));
            }
        };
        let cbytes = self.read_document(&m.config.digest, MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(&format!("config {}", m.config.digest), &cbytes)?;
        Ok((m, config))
    }

    pub(crate) fn layer_meta(&self, diff_id: &Digest) -> Result<LayerMeta, AgentStoreError> {
        let p = self.layers_dir().join(diff_id.hex()).join("meta.json");
        let bytes = read_limited(&p, 1 << 20)?;
        Ok(parse_strict(&p.display().to_string(), &bytes)?)
    }

    /// Every named image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageInfo>, AgentStoreError> {
        let mut out = Vec::new();
        for (name, entry) in self.refs()? {
            let (manifest, config) = self.image_config(&entry.manifest)?;
            let diff_ids = &config.rootfs.diff_ids;
            let mut size = 0;
            for d in diff_ids {
                if let Ok(m) = self.layer_meta(d) {
                    size += m.size;
                }
            }
            let chain_id = snapshot_id(diff_ids);
            out.push(ImageInfo {
                name: Reference::parse(&name)
                    .map(|r| r.familiar())
                    .unwrap_or(name),
                digest: entry.digest,
                manifest: entry.manifest,
                config: manifest.config.digest,
                platform: config.platform().to_string(),
                size,
                snapshot: self.has_snapshot(&chain_id),
                chain_id,
            });
        }
        Ok(out)
    }

    /// What `name` means here for `platform`, when this store holds the image whole (see
    /// `resolve.rs` for the rules); `None` otherwise.
    pub fn resolve(
        &self,
        name: &Reference,
        platform: &crate::oci::Platform,
    ) -> Result<Option<crate::api::HeldImage>, AgentStoreError> {
        resolve::resolve(self, name, platform)
    }

    /// Imports a docker-archive, OCI archive or OCI layout directory; see [`ImportOptions`].
    pub fn import(
        &self,
        input: &Path,
        opts: &ImportOptions<'_>,
        reporter: &dyn crate::progress::Reporter,
    ) -> Result<ImportReport, AgentStoreError> {
        self.require_writable()?;
        import::import(self, input, opts, reporter).map_err(|e| self.no_space(e))
    }

    /// Imports Docker's images `images` (names or ids) straight from its overlay2 data root
    /// `root` (docker_root.rs): what `docker save … | import -` stores, without the archive.
    pub fn import_docker_root(
        &self,
        root: &Path,
        images: &[String],
        opts: &ImportOptions<'_>,
        reporter: &dyn crate::progress::Reporter,
    ) -> Result<ImportReport, AgentStoreError> {
        self.require_writable()?;
        docker_root::import(self, root, images, opts, reporter).map_err(|e| self.no_space(e))
    }

    /// Re-verifies the whole store; see [`FsckReport`].
    pub fn fsck(&self) -> Result<FsckReport, AgentStoreError> {
        fsck::fsck(self)
    }

    /// Removes everything no name and no root reaches, and abandoned staging areas.
    pub fn gc(&self) -> Result<GcReport, AgentStoreError> {
        self.require_writable()?;
        self.exclusive(|| gc::gc(self))
            .map_err(|e| self.no_space(e))
    }

    /// Turns a failure caused by a full disk into [`AgentStoreError::NoSpace`].
    fn no_space(&self, e: AgentStoreError) -> AgentStoreError {
        if matches!(e, AgentStoreError::NoSpace { .. }) || !is_no_space(&e) {
            return e;
        }
        AgentStoreError::NoSpace {
            root: self.root.clone(),
            free_bytes: self.free_bytes().unwrap_or(0),
            source: Box::new(e),
        }
    }
}

/// Checks `meta.json`; returns whether the store may be written.
fn check_meta(root: &Path, path: &Path, bytes: &[u8]) -> Result<bool, AgentStoreError> {
    let meta: StoreMeta = parse_strict("meta.json", bytes).map_err(|e| {
        AgentStoreError::corrupt(path, format!("not a dt-agent store description: {e}"))
    })?;
    if meta.version > FORMAT_VERSION {
        return Err(AgentStoreError::NewerFormat {
            path: root.to_path_buf(),
            found: meta.version,
        });
    }
    let unknown = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|f| !KNOWN_FEATURES.contains(&f.as_str()))
            .cloned()
            .collect()
    };
    let incompat = unknown(&meta.incompat);
    if !incompat.is_empty() {
        return Err(AgentStoreError::UnknownFeatures {
            path: root.to_path_buf(),
            features: incompat.join(", "),
            read_only: false,
        });
    }
    Ok(unknown(&meta.ro_compat).is_empty())
}

/// Bytes available to unprivileged writers on the file system holding `path` (root can use
/// the reserved blocks too, but a robot should not).
pub fn free_bytes(path: &Path) -> Result<u64, AgentStoreError> {
    let st = rustix::fs::statvfs(path)
        .map_err(io::Error::from)
        .at("statvfs", path)?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests;
