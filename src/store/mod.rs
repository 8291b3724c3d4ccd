//! The laptop's image store: an OCI image layout under `$DTS_HOME/store`.
//!
//! ```text
//! $DTS_HOME/store/
//!   oci-layout            {"imageLayoutVersion":"1.0.0"}; a newer version is refused
//!   index.json            one descriptor per image name (annotation org.opencontainers.image.ref.name)
//!   blobs/sha256/<hex>    content, read-only, always verified against its name
//!   ingest/<pid>-…tmp     blobs being written; removed when their writer dies
//!   lock                  flock: shared while a dts process uses the store, exclusive for prune
//!   index.lock            flock: exclusive while index.json is rewritten
//!   registry-blobs.json   where blobs were pushed, for cross-repository mounts (registry::known)
//!   zstd/<hex>            a layer's zstd blob for a lab hub (ops::hub::convert; a cache)
//! ```
//!
//! The commit point of a blob is a rename after hashing and fsync, so a blob's final name is
//! only ever attached to bytes that hash to it; the commit point of a name is the atomic rewrite
//! of `index.json`. Killing a process at any point leaves at worst unreferenced blobs (which
//! [`Store::prune`] removes) and temp files (removed when the store is next opened). This is the
//! vocabulary of containerd's content store: writers ingest, `commit` verifies and publishes.
//! The store knows digests and images, never robots.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::oci::digest::HashingWriter;
use crate::oci::json::JsonError;
use crate::oci::manifest::ANNOTATION_REF_NAME;
use crate::oci::{Descriptor, Digest, Document, ImageConfig, Index, Manifest, Platform, Reference};
use crate::util::fs::{
    Lock, PathContext, PathError, atomic_write, create_dir_all, lock_file, pid_alive, read_limited,
    sync_dir, temp_name, temp_owner,
};

/// The image layout version we write and the only one we read.
const LAYOUT_VERSION: &str = "1.0.0";
/// Registries cap manifests at 4 MiB (distribution's default); we accept the same.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Configs with long histories reach a few hundred KiB; 16 MiB is far beyond any real one.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
const INGEST_PREFIX: &str = "in-";

/// Errors callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Content did not hash to what it was said to be.
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the descriptor said.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Content has the wrong length.
    #[error("blob {digest} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// What the descriptor said.
        expected: u64,
        /// What was written.
        actual: u64,
    },
    /// A blob an image needs is not in the store.
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    /// No image has that name.
    #[error("no image named `{0}` in the local store (see `dts image ls`)")]
    NoSuchImage(String),
    /// A manifest or config is not valid JSON for its type.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The image has no manifest for the wanted platform.
    #[error("image `{image}` has no {wanted} variant (it has: {available})")]
    NoSuchPlatform {
        /// The image.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// What the image offers, comma-separated.
        available: String,
    },
    /// The image is multi-platform and the caller must pick one.
    #[error("image `{image}` has several platforms ({available}); pick one with --platform")]
    AmbiguousPlatform {
        /// The image.
        image: String,
        /// What the image offers, comma-separated.
        available: String,
    },
    /// The layout was written by a newer dts.
    #[error(
        "store `{}` has image layout version {found}; this dts reads {LAYOUT_VERSION} (upgrade dts)",
        path.display()
    )]
    UnsupportedLayout {
        /// The store root.
        path: PathBuf,
        /// The version found.
        found: String,
    },
}

impl StoreError {
    /// Whether the user's request is at fault (a platform the image lacks or must be chosen).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::NoSuchPlatform { .. } | StoreError::AmbiguousPlatform { .. }
        )
    }
}

/// One named image in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    /// Its name.
    pub name: Reference,
    /// Its top-level manifest or index.
    pub descriptor: Descriptor,
}

/// One platform's image, resolved down to its config.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    /// The manifest's descriptor (with the platform filled in when it came from an index).
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: Manifest,
    /// The config blob's exact bytes.
    pub config_bytes: Vec<u8>,
    /// The parsed config.
    pub config: ImageConfig,
}

/// What `prune` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs removed.
    pub blobs: usize,
    /// Bytes freed.
    pub bytes: u64,
    /// Abandoned temp files removed.
    pub temp_files: usize,
}

/// An open store. Holds a shared lock for its lifetime.
pub struct Store {
    root: PathBuf,
    lock: File,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        create_dir_all(&root.join("blobs/sha256"))?;
        create_dir_all(&root.join("ingest"))?;
        let lock_path = root.join("lock");
        let lock = lock_file(&lock_path, Lock::Shared)?;
        let store = Store {
            root: root.to_path_buf(),
            lock,
        };
        let layout = root.join("oci-layout");
        match fs::read(&layout) {
            Ok(bytes) => {
                let v: serde_json::Value = crate::oci::json::parse_strict("oci-layout", &bytes)?;
                let found = v["imageLayoutVersion"].as_str().unwrap_or("").to_string();
                if found != LAYOUT_VERSION {
                    return Err(StoreError::UnsupportedLayout {
                        path: root.to_path_buf(),
                        found,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                atomic_write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            }
            Err(e) => return Err(Err::<(), _>(e).at("read", &layout).unwrap_err().into()),
        }
        if !root.join("index.json").exists() {
            store.write_index(&Index::new())?;
        }
        store.remove_dead_ingests()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether the store has `d`.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(d.clone())
            } else {
                StoreError::Io(PathError {
                    action: "open",
                    path: p,
                    source: e,
                })
            }
        })
    }

    /// Reads a small blob (manifest, index, config) into memory.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        if !self.has_blob(d) {
            return Err(StoreError::MissingBlob(d.clone()));
        }
        Ok(read_limited(&self.blob_path(d), limit)?)
    }

    /// Starts writing a blob.
    pub fn writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = self.root.join("ingest").join(temp_name(INGEST_PREFIX));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at("create", &tmp)?;
        Ok(BlobWriter {
            blobs: self.root.join("blobs/sha256"),
            tmp,
            out: Some(HashingWriter::new(file)),
        })
    }

    /// Stores `bytes` and returns their digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.writer()?;
        w.write_all(bytes).at("write", &w.tmp.clone())?;
        w.commit(Some((&d, bytes.len() as u64)))?;
        Ok(d)
    }

    /// Reads and parses a manifest or index.
    pub fn read_document(&self, desc: &Descriptor) -> Result<Document, StoreError> {
        let bytes = self.read_blob(&desc.digest, MAX_MANIFEST_BYTES)?;
        Ok(Document::parse(
            &format!("manifest {}", desc.digest),
            Some(&desc.media_type),
            &bytes,
        )?)
    }

    /// Every named image.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let index = self.read_index()?;
        Ok(index
            .manifests
            .into_iter()
            .filter_map(|mut d| {
                let name = d.annotations.remove(ANNOTATION_REF_NAME)?;
                let name = Reference::parse(&name).ok()?;
                Some(ImageRecord {
                    name,
                    descriptor: d,
                })
            })
            .collect())
    }

    /// The image with this name.
    pub fn get(&self, name: &Reference) -> Result<ImageRecord, StoreError> {
        self.images()?
            .into_iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| StoreError::NoSuchImage(name.familiar()))
    }

    /// Points names at descriptors (replacing what those names pointed at), in one atomic
    /// rewrite of `index.json`. Every blob the descriptors reach must already be stored.
    pub fn set_names(&self, names: &[(Reference, Descriptor)]) -> Result<(), StoreError> {
        for (_, d) in names {
            self.check_complete(d)?;
        }
        self.edit_index(|index| {
            for (name, desc) in names {
                let key = name.to_string();
                index
                    .manifests
                    .retain(|m| m.annotations.get(ANNOTATION_REF_NAME) != Some(&key));
                let mut d = desc.clone();
                d.annotations.insert(ANNOTATION_REF_NAME.to_string(), key);
                index.manifests.push(d);
            }
        })
    }

    /// Removes a name; returns whether it existed.
    pub fn remove_name(&self, name: &Reference) -> Result<bool, StoreError> {
        let key = name.to_string();
        let mut found = false;
        self.edit_index(|index| {
            let before = index.manifests.len();
            index
                .manifests
                .retain(|m| m.annotations.get(ANNOTATION_REF_NAME) != Some(&key));
            found = index.manifests.len() != before;
        })?;
        Ok(found)
    }

    /// Every blob `desc` reaches (itself, child manifests, configs, layers), in a stable order.
    pub fn reachable(&self, desc: &Descriptor) -> Result<Vec<Descriptor>, StoreError> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        self.walk(desc, &mut out, &mut seen)?;
        Ok(out)
    }

    fn walk(
        &self,
        desc: &Descriptor,
        out: &mut Vec<Descriptor>,
        seen: &mut BTreeSet<Digest>,
    ) -> Result<(), StoreError> {
        if !seen.insert(desc.digest.clone()) {
            return Ok(());
        }
        out.push(desc.clone());
        match self.read_document(desc)? {
            Document::Index(i) => {
                for m in &i.manifests {
                    self.walk(m, out, seen)?;
                }
            }
            Document::Manifest(m) => {
                for d in std::iter::once(&m.config).chain(&m.layers) {
                    if seen.insert(d.digest.clone()) {
                        out.push(d.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Fails unless every blob `desc` reaches is present with the right size.
    pub fn check_complete(&self, desc: &Descriptor) -> Result<(), StoreError> {
        for d in self.reachable(desc)? {
            let p = self.blob_path(&d.digest);
            let len = match fs::metadata(&p) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::MissingBlob(d.digest.clone()));
                }
                Err(e) => return Err(Err::<(), _>(e).at("stat", &p).unwrap_err().into()),
            };
            if len != d.size {
                return Err(StoreError::SizeMismatch {
                    digest: d.digest.clone(),
                    expected: d.size,
                    actual: len,
                });
            }
        }
        Ok(())
    }

    /// The platforms of an image: one per manifest of an index, or the config's for a manifest.
    pub fn platforms(&self, desc: &Descriptor) -> Result<Vec<Platform>, StoreError> {
        Ok(match self.read_document(desc)? {
            Document::Index(i) => i
                .manifests
                .iter()
                .filter_map(|m| m.platform.clone())
                .collect(),
            Document::Manifest(m) => {
                let cfg = self.read_blob(&m.config.digest, MAX_CONFIG_BYTES)?;
                vec![ImageConfig::parse(&format!("config {}", m.config.digest), &cfg)?.platform()]
            }
        })
    }

    /// Resolves an image to one platform. With `wanted` = None, a single-platform image resolves
    /// to itself and a multi-platform one to the host's platform if it has it.
    pub fn resolve_platform(
        &self,
        image: &str,
        desc: &Descriptor,
        wanted: Option<&Platform>,
    ) -> Result<PlatformImage, StoreError> {
        let manifest_desc = match self.read_document(desc)? {
            Document::Manifest(_) => desc.clone(),
            Document::Index(index) => {
                let available = || {
                    index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let pick = |p: &Platform| {
                    index
                        .manifests
                        .iter()
                        .find(|m| m.platform.as_ref().is_some_and(|mp| mp.matches(p)))
                        .cloned()
                };
                match wanted {
                    Some(p) => pick(p).ok_or_else(|| StoreError::NoSuchPlatform {
                        image: image.to_string(),
                        wanted: p.to_string(),
                        available: available(),
                    })?,
                    None if index.manifests.len() == 1 => index.manifests[0].clone(),
                    None => {
                        pick(&Platform::host()).ok_or_else(|| StoreError::AmbiguousPlatform {
                            image: image.to_string(),
                            available: available(),
                        })?
                    }
                }
            }
        };
        let Document::Manifest(manifest) = self.read_document(&manifest_desc)? else {
            return Err(StoreError::Json(JsonError {
                what: format!("manifest {}", manifest_desc.digest),
                reason: "an index inside an index is not supported".into(),
            }));
        };
        let config_bytes = self.read_blob(&manifest.config.digest, MAX_CONFIG_BYTES)?;
        let config =
            ImageConfig::parse(&format!("config {}", manifest.config.digest), &config_bytes)?;
        if let Some(p) = wanted
            && !config.platform().matches(p)
        {
            return Err(StoreError::NoSuchPlatform {
                image: image.to_string(),
                wanted: p.to_string(),
                available: config.platform().to_string(),
            });
        }
        Ok(PlatformImage {
            descriptor: manifest_desc,
            manifest: *manifest,
            config_bytes,
            config,
        })
    }

    /// Removes every blob no name reaches, and abandoned temp files. Waits for other dts
    /// processes to close the store first, so nothing they are writing is collected.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        Ok(self.prune_and(|_| ())?.0)
    }

    /// [`Store::prune`], then `also` while no other dts process has the store open still: for
    /// what others keep of the blobs just removed (a build's unpacked layers).
    pub fn prune_and<T>(
        &self,
        also: impl FnOnce(&Store) -> T,
    ) -> Result<(PruneReport, T), StoreError> {
        let lock_path = self.root.join("lock");
        flock(&self.lock, FlockOperation::LockExclusive)
            .map_err(io::Error::from)
            .at("lock", &lock_path)?;
        let result = self.prune_locked().map(|r| (r, also(self)));
        flock(&self.lock, FlockOperation::LockShared)
            .map_err(io::Error::from)
            .at("lock", &lock_path)?;
        result
    }

    fn prune_locked(&self) -> Result<PruneReport, StoreError> {
        let mut live = BTreeSet::new();
        for img in self.read_index()?.manifests {
            for d in self.reachable(&img)? {
                live.insert(d.digest);
            }
        }
        let mut report = PruneReport::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).at("list", &blobs)? {
            let entry = entry.at("list", &blobs)?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                .is_some_and(|d| live.contains(&d));
            if !keep {
                let p = entry.path();
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).at("remove", &p)?;
                report.blobs += 1;
                report.bytes += len;
            }
        }
        sync_dir(&blobs)?;
        let ingest = self.root.join("ingest");
        for entry in fs::read_dir(&ingest).at("list", &ingest)? {
            let p = entry.at("list", &ingest)?.path();
            fs::remove_file(&p).at("remove", &p)?;
            report.temp_files += 1;
        }
        Ok(report)
    }

    /// The layout's `index.json`.
    pub fn read_index(&self) -> Result<Index, StoreError> {
        let p = self.root.join("index.json");
        let bytes = read_limited(&p, MAX_MANIFEST_BYTES)?;
        Ok(crate::oci::json::parse_strict("index.json", &bytes)?)
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        Ok(atomic_write(
            &self.root.join("index.json"),
            &crate::oci::json::canonical(index),
        )?)
    }

    fn edit_index(&self, f: impl FnOnce(&mut Index)) -> Result<(), StoreError> {
        let lock_path = self.root.join("index.lock");
        let _lock = lock_file(&lock_path, Lock::Exclusive)?;
        let mut index = self.read_index()?;
        f(&mut index);
        // Keep index.json stable for diffing and for tests comparing stores.
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(ANNOTATION_REF_NAME)
                .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
        });
        self.write_index(&index)
    }

    fn remove_dead_ingests(&self) -> Result<(), StoreError> {
        let ingest = self.root.join("ingest");
        for entry in fs::read_dir(&ingest).at("list", &ingest)? {
            let entry = entry.at("list", &ingest)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if temp_owner(&name, INGEST_PREFIX).is_none_or(|pid| !pid_alive(pid)) {
                let p = entry.path();
                fs::remove_file(&p).at("remove", &p)?;
            }
        }
        Ok(())
    }

    /// Total bytes of the distinct blobs `descs` reach.
    pub fn size_of(&self, descs: &[Descriptor]) -> Result<u64, StoreError> {
        let mut sizes = BTreeMap::new();
        for d in descs {
            for r in self.reachable(d)? {
                sizes.insert(r.digest, r.size);
            }
        }
        Ok(sizes.values().sum())
    }
}

/// A blob being written. Dropped without `commit`, it leaves nothing behind.
pub struct BlobWriter {
    blobs: PathBuf,
    tmp: PathBuf,
    out: Option<HashingWriter<File>>,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.as_ref().map_or(0, |o| o.written())
    }

    /// The temp file being written (for error messages).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Publishes the blob: fsync, verify against `expected` (digest and size) if given, rename
    /// to its final name, fsync the directory. Returns the digest and size. If the store already
    /// has the blob, the temp file is discarded.
    pub fn commit(self, expected: Option<(&Digest, u64)>) -> Result<(Digest, u64), StoreError> {
        let staged = self.finish()?;
        if let Some((want, want_size)) = expected {
            staged.verify(want, want_size)?;
        }
        staged.commit()
    }

    /// Ends writing without publishing: the content is synced and hashed, and can be inspected
    /// (read back, checked against other documents) before [`StagedBlob::commit`].
    pub fn finish(mut self) -> Result<StagedBlob, StoreError> {
        let out = self.out.take().expect("finish consumes the writer");
        let (file, digest, size) = out.finish();
        file.sync_all().at("sync", &self.tmp)?;
        drop(file);
        Ok(StagedBlob {
            blobs: self.blobs.clone(),
            tmp: std::mem::take(&mut self.tmp),
            digest,
            size,
        })
    }
}

/// A fully written, hashed blob that is not yet visible under its name. Dropped without
/// `commit`, it leaves nothing behind.
pub struct StagedBlob {
    blobs: PathBuf,
    tmp: PathBuf,
    digest: Digest,
    size: u64,
}

impl StagedBlob {
    /// What the content hashes to.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its length.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The temp file holding it, for reading it back before commit.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Fails unless the content is `want` with `want_size` bytes.
    pub fn verify(&self, want: &Digest, want_size: u64) -> Result<(), StoreError> {
        if &self.digest != want {
            return Err(StoreError::DigestMismatch {
                expected: want.clone(),
                actual: self.digest.clone(),
            });
        }
        if self.size != want_size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest.clone(),
                expected: want_size,
                actual: self.size,
            });
        }
        Ok(())
    }

    /// Publishes it under its digest (a no-op if the store already has that blob).
    pub fn commit(self) -> Result<(Digest, u64), StoreError> {
        let dest = self.blobs.join(self.digest.hex());
        if !dest.exists() {
            fs::set_permissions(&self.tmp, fs::Permissions::from_mode(0o444))
                .at("chmod", &self.tmp)?;
            fs::rename(&self.tmp, &dest).at("rename into place", &dest)?;
            sync_dir(&self.blobs)?;
        }
        Ok((self.digest.clone(), self.size))
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        // After a commit the temp path is gone (renamed); otherwise this discards it.
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.as_mut().expect("write after commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("flush after commit").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // `finish` moves the temp file to a StagedBlob and leaves an empty path here.
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests;
