//! `dt-agent image import`: an archive → objects, layers, snapshots, documents and names, all
//! or nothing.
//!
//! ```text
//! tmp/import-<pid>-…/        flocked while the import runs; removed at its end, or by the
//!   stage/                   next import or gc after a crash
//!                            archive blobs, staged and checked (src/archive: the same parser
//!                            as `dts image load`)
//!   objects/<object name>    new objects, metadata applied, linked into the snapshot below
//!   layers/<diff hex>/       tar-split.zst + meta.json of layers the store lacks
//!   snaps/<chain hex>/       rootfs/ (the hardlink farm) + meta.json
//!   docs/                    manifests and configs on their way to images/
//! ```
//!
//! Each layer is read once: the decompressed stream goes through a [`Tee`] that records the
//! tar-split, into the safe unpacker (`layer::unpack_with`: in-root resolution, whiteouts,
//! limits, hostile entries refused with their name), whose [`LinkSink`] hashes every file body
//! and links the object into the snapshot. The unpacker checks the diff_id against the image
//! config; the tar-split is then re-checked by rebuilding the tar from it and hashing it. Only
//! after every image of the archive passed is anything renamed out of `tmp/` (see the store's
//! module doc for the order).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{FlockOperation, RenameFlags, flock};
use rustix::io::Errno;
use serde::Serialize;

use super::object::{LinkSink, ObjectKey, Recorder, Staging, Tee};
use super::tarsplit::{self, SplitWriter};
use super::{AgentStore, AgentStoreError, LayerMeta, RefEntry, SnapshotMeta, snapshot_id};
use crate::archive::{StageOptions, StagedArchive};
use crate::layer::{DevicePolicy, UnpackOptions, unpack_with};
use crate::oci::json::canonical;
use crate::oci::{Compression, Descriptor, Digest, Document, ImageConfig, Platform, Reference};
use crate::progress::{Event, Reporter};
use crate::store::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::util::fs::{PathContext, temp_name};

/// How to import.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions<'a> {
    /// Name for an archive that names no image (added to its names otherwise; one image only).
    pub tag: Option<&'a Reference>,
    /// The platform to take from a multi-platform image (default: this robot's).
    pub platform: Option<&'a Platform>,
}

/// One image an import named.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImportedImage {
    /// The name.
    pub name: String,
    /// What it points at (manifest or index).
    pub digest: Digest,
    /// The manifest used here.
    pub manifest: Digest,
    /// Its platform.
    pub platform: String,
    /// Its snapshot.
    pub chain_id: Digest,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// `docker-archive`, `oci-archive` or `oci-layout`.
    pub format: String,
    /// The names given.
    pub images: Vec<ImportedImage>,
    /// Layers new to the store.
    pub layers_added: usize,
    /// Layers the store had.
    pub layers_present: usize,
    /// Objects new to the store.
    pub objects_added: usize,
    /// Their bytes.
    pub object_bytes_added: u64,
    /// Files linked into new snapshots.
    pub files_linked: u64,
    /// Snapshots new to the store.
    pub snapshots_added: usize,
    /// Snapshots the store had.
    pub snapshots_present: usize,
}

/// One import's staging directory. Dropped, it is removed.
pub(super) struct Tx {
    pub(super) dir: PathBuf,
    _lock: File,
}

impl Tx {
    pub(super) fn begin(store: &AgentStore) -> Result<Tx, AgentStoreError> {
        let dir = store.tmp_dir().join(temp_name("import-"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .at("create directory", &dir)?;
        let lock = File::open(&dir).at("open", &dir)?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(io::Error::from)
            .at("lock", &dir)?;
        for sub in ["objects", "layers", "snaps", "docs"] {
            let p = dir.join(sub);
            fs::create_dir(&p).at("create directory", &p)?;
        }
        Ok(Tx { dir, _lock: lock })
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Best effort: what is left is removed by the next import or gc (its lock is gone).
        let _ = remove_tree(&self.dir);
    }
}

/// Removes a tree we made, whatever the modes the layers gave its directories.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    for e in fs::read_dir(path)? {
        remove_tree(&e?.path())?;
    }
    fs::remove_dir(path)
}

/// Removes staging directories no running import holds (their flock is free).
pub(crate) fn clean_tmp(store: &AgentStore) -> Result<usize, AgentStoreError> {
    let tmp = store.tmp_dir();
    let mut removed = 0;
    for e in fs::read_dir(&tmp).at("list", &tmp)? {
        let p = e.at("list", &tmp)?.path();
        if p.is_dir() {
            let f = File::open(&p).at("open", &p)?;
            match flock(&f, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => continue, // in use
                Err(e) => return Err(super::io_err("lock", &p, io::Error::from(e))),
            }
        }
        remove_tree(&p).at("remove", &p)?;
        removed += 1;
    }
    Ok(removed)
}

/// One image of the archive, resolved to this robot's manifest.
struct Plan {
    names: Vec<Reference>,
    display: String,
    top: Descriptor,
    manifest: Digest,
    platform: String,
    layers: Vec<(Descriptor, Digest)>,
    chain_id: Digest,
}

pub(super) fn import(
    store: &AgentStore,
    input: &Path,
    opts: &ImportOptions<'_>,
    reporter: &dyn Reporter,
) -> Result<ImportReport, AgentStoreError> {
    clean_tmp(store)?;
    let tx = Tx::begin(store)?;
    let staging_store = crate::store::Store::open(&tx.dir.join("stage"))?;
    let staged = crate::archive::stage(
        &staging_store,
        input,
        &StageOptions {
            check_diff_ids: false,
        },
        reporter,
    )?;
    let mut docs: BTreeMap<Digest, Vec<u8>> = BTreeMap::new();
    let mut plans = Vec::new();
    for img in staged.named(opts.tag)? {
        plans.push(plan(&staged, img.names, img.top, opts, &mut docs)?);
    }

    let mut report = ImportReport {
        format: staged.format().to_string(),
        ..Default::default()
    };
    let mut staging = Staging::new(tx.dir.join("objects"), store.objects_dir());
    let mut new_layers: BTreeSet<Digest> = BTreeSet::new();
    let mut new_snaps: BTreeSet<Digest> = BTreeSet::new();
    let is_root = rustix::process::geteuid().is_root();
    for plan in &plans {
        let diff_ids: Vec<Digest> = plan.layers.iter().map(|(_, d)| d.clone()).collect();
        let complete = diff_ids
            .iter()
            .all(|d| store.has_layer(d) || new_layers.contains(d));
        if new_snaps.contains(&plan.chain_id) || (complete && store.has_snapshot(&plan.chain_id)) {
            report.snapshots_present += 1;
            continue;
        }
        let snap = tx.dir.join("snaps").join(plan.chain_id.hex());
        let rootfs = snap.join("rootfs");
        fs::create_dir(&snap).at("create directory", &snap)?;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&rootfs)
            .at("create directory", &rootfs)?;
        let n = plan.layers.len();
        for (i, (desc, diff_id)) in plan.layers.iter().enumerate() {
            let split = !store.has_layer(diff_id) && !new_layers.contains(diff_id);
            let id = format!("layer {}", diff_id.short());
            reporter.event(Event::start(
                id.clone(),
                format!("unpack layer {}/{n} of {}", i + 1, plan.display),
                None,
            ));
            apply_layer(
                &tx,
                &mut staging,
                &staged,
                plan,
                i,
                desc,
                diff_id,
                &rootfs,
                split,
                is_root,
            )?;
            if split {
                new_layers.insert(diff_id.clone());
            }
            reporter.event(Event::finish(id, if split { "new" } else { "linked" }));
        }
        let meta = SnapshotMeta {
            chain_id: plan.chain_id.clone(),
            diff_ids,
        };
        let mp = snap.join("meta.json");
        fs::write(&mp, canonical(&meta)).at("write", &mp)?;
        new_snaps.insert(plan.chain_id.clone());
    }
    let layers_used: BTreeSet<&Digest> = plans
        .iter()
        .flat_map(|p| p.layers.iter().map(|(_, d)| d))
        .collect();
    report.layers_added = new_layers.len();
    report.layers_present = layers_used.len() - new_layers.len();
    report.files_linked = staging.linked;

    // Commit: nothing above touched a final name. One syncfs per step instead of an fsync
    // per file and directory: an image has thousands of files spread over up to 256 object
    // directories, and per-file fsync on SD cards is what made meta-lmp#992 unacceptable
    // (per-file fsync on SD cards); containerd's `sync_fs` does the same.
    syncfs(&tx.dir)?; // data of objects, tar-splits, snapshot trees
    let (added, bytes) = commit_objects(store, &staging)?;
    report.objects_added = added;
    report.object_bytes_added = bytes;
    syncfs(&tx.dir)?; // objects' names, before any layer that needs them
    commit_dirs(&tx.dir.join("layers"), &store.layers_dir(), &new_layers)?;
    report.snapshots_added =
        commit_dirs(&tx.dir.join("snaps"), &store.snapshots_dir(), &new_snaps)?;
    commit_docs(store, &tx, &docs)?;
    syncfs(&tx.dir)?; // layers, snapshots and documents, before the names that reach them
    let mut names = Vec::new();
    for plan in &plans {
        for name in &plan.names {
            names.push((
                name.to_string(),
                RefEntry {
                    digest: plan.top.digest.clone(),
                    media_type: plan.top.media_type.clone(),
                    manifest: plan.manifest.clone(),
                },
            ));
            report.images.push(ImportedImage {
                name: name.familiar(),
                digest: plan.top.digest.clone(),
                manifest: plan.manifest.clone(),
                platform: plan.platform.clone(),
                chain_id: plan.chain_id.clone(),
            });
        }
    }
    store.edit_refs(|r| {
        for (n, e) in names {
            r.refs.insert(n, e);
        }
    })?;
    drop(staged);
    drop(tx);
    Ok(report)
}

/// Resolves an image to the manifest this robot uses and collects its documents.
fn plan(
    staged: &StagedArchive,
    names: Vec<Reference>,
    top: Descriptor,
    opts: &ImportOptions<'_>,
    docs: &mut BTreeMap<Digest, Vec<u8>>,
) -> Result<Plan, AgentStoreError> {
    let display = names
        .first()
        .map(Reference::familiar)
        .unwrap_or_else(|| top.digest.to_string());
    let bad = |reason: String| AgentStoreError::BadImage {
        image: display.clone(),
        reason,
    };
    let read = |d: &Digest, limit: u64| -> Result<Vec<u8>, AgentStoreError> {
        staged
            .read_blob(d, limit)?
            .ok_or_else(|| bad(format!("blob {d} is not in the archive")))
    };
    let top_bytes = read(&top.digest, MAX_MANIFEST_BYTES)?;
    docs.insert(top.digest.clone(), top_bytes.clone());
    let (manifest_digest, manifest) = match Document::parse(
        &format!("manifest {}", top.digest),
        Some(&top.media_type),
        &top_bytes,
    )? {
        Document::Manifest(m) => (top.digest.clone(), *m),
        Document::Index(index) => {
            let wanted = opts.platform.cloned().unwrap_or_else(Platform::host);
            let Some(entry) = index
                .manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.matches(&wanted)))
            else {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                    .collect();
                return Err(bad(format!(
                    "no {wanted} variant (it has: {}); pick one with --platform",
                    available.join(", ")
                )));
            };
            let bytes = read(&entry.digest, MAX_MANIFEST_BYTES)?;
            let m = match Document::parse(
                &format!("manifest {}", entry.digest),
                Some(&entry.media_type),
                &bytes,
            )? {
                Document::Manifest(m) => *m,
                Document::Index(_) => {
                    return Err(bad("an index inside an index is not supported".into()));
                }
            };
            docs.insert(entry.digest.clone(), bytes);
            (entry.digest.clone(), m)
        }
    };
    let cbytes = read(&manifest.config.digest, MAX_CONFIG_BYTES)?;
    let config = ImageConfig::parse(&format!("config {}", manifest.config.digest), &cbytes)?;
    docs.insert(manifest.config.digest.clone(), cbytes);
    if let Some(p) = opts.platform
        && !config.platform().matches(p)
    {
        return Err(bad(format!("it is {}, not {p}", config.platform())));
    }
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != manifest.layers.len() {
        return Err(bad(format!(
            "its manifest lists {} layers and its config {} diff_ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    Ok(Plan {
        names,
        display,
        top,
        manifest: manifest_digest,
        platform: config.platform().to_string(),
        chain_id: snapshot_id(&diff_ids),
        layers: manifest.layers.into_iter().zip(diff_ids).collect(),
    })
}

/// Applies one layer onto `rootfs`, linking its files to objects and, with `split`, recording
/// and verifying its tar-split.
#[allow(clippy::too_many_arguments)]
fn apply_layer(
    tx: &Tx,
    staging: &mut Staging,
    staged: &StagedArchive,
    plan: &Plan,
    index: usize,
    desc: &Descriptor,
    diff_id: &Digest,
    rootfs: &Path,
    split: bool,
    is_root: bool,
) -> Result<(), AgentStoreError> {
    let bad = |reason: String| AgentStoreError::BadImage {
        image: plan.display.clone(),
        reason,
    };
    let blob = staged
        .blob_path(&desc.digest)
        .ok_or_else(|| bad(format!("layer {} is not in the archive", desc.digest)))?;
    let compression = Compression::of_media_type(&desc.media_type).ok_or_else(|| {
        bad(format!(
            "layer {} has unsupported media type `{}`",
            desc.digest, desc.media_type
        ))
    })?;
    let f = File::open(blob).at("open", blob)?;
    let dec = compression
        .decoder(BufReader::new(f))
        .map_err(|e| bad(format!("layer {} does not decompress: {e}", desc.digest)))?;
    let layer_dir = tx.dir.join("layers").join(diff_id.hex());
    let split_path = layer_dir.join(tarsplit::FILE_NAME);
    let recorder = if split {
        fs::create_dir(&layer_dir).at("create directory", &layer_dir)?;
        let w = SplitWriter::create(&split_path).at("create", &split_path)?;
        Some(Rc::new(RefCell::new(Recorder {
            split: w,
            in_body: false,
        })))
    } else {
        None
    };
    let opts = UnpackOptions {
        same_owner: is_root,
        // The device cgroup is the gate; a node on disk would only be noise (docs/security.md).
        devices: DevicePolicy::Skip,
        expect_diff_id: Some(diff_id.clone()),
        ..UnpackOptions::default()
    };
    let tee = Tee {
        inner: dec,
        rec: recorder.clone(),
    };
    let mut sink = LinkSink {
        staging,
        recorder: recorder.clone(),
        known: None,
    };
    let stats =
        unpack_with(tee, rootfs, &opts, &mut sink).map_err(|source| AgentStoreError::Layer {
            image: plan.display.clone(),
            index: index + 1,
            diff_id: diff_id.clone(),
            source,
        })?;
    drop(sink);
    let Some(rec) = recorder else {
        return Ok(());
    };
    let rec = Rc::try_unwrap(rec)
        .ok()
        .expect("the tee and the sink are gone")
        .into_inner();
    let (split_digest, tar_len, files) = rec.split.finish(diff_id).at("write", &split_path)?;
    let mismatch = |reason: String| AgentStoreError::SplitMismatch {
        diff_id: diff_id.clone(),
        reason,
    };
    let rebuilt = tarsplit::rebuild(
        &split_path,
        &mut |d| staging.content.get(d).cloned(),
        &mut io::sink(),
    )
    .map_err(|e| mismatch(e.to_string()))?;
    if rebuilt.diff_id != *diff_id
        || rebuilt.size != stats.size
        || tar_len != stats.size
        || rebuilt.split_digest != split_digest
        || rebuilt.claimed != (diff_id.clone(), stats.size)
    {
        return Err(mismatch(format!(
            "rebuilt {} bytes hashing to {}, the layer has {} bytes",
            rebuilt.size, rebuilt.diff_id, stats.size
        )));
    }
    let meta = LayerMeta {
        diff_id: diff_id.clone(),
        size: stats.size,
        tar_split: split_digest,
        files,
    };
    let mp = layer_dir.join("meta.json");
    fs::write(&mp, canonical(&meta)).at("write", &mp)?;
    Ok(())
}

/// Renames the staged objects to their final names (durable after the caller's syncfs);
/// returns (objects added, their bytes).
pub(super) fn commit_objects(
    store: &AgentStore,
    staging: &Staging,
) -> Result<(usize, u64), AgentStoreError> {
    let objects = store.objects_dir();
    let mut added = 0;
    let mut bytes = 0;
    for (name, path) in &staging.staged {
        let key = ObjectKey::parse(name).expect("staged under its own name");
        let dest = objects.join(key.rel_path());
        let parent = dest.parent().expect("objects have a parent").to_path_buf();
        if !parent.is_dir() {
            match fs::DirBuilder::new().mode(0o700).create(&parent) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(super::io_err("create directory", &parent, e)),
            }
        }
        match rename_noreplace(path, &dest) {
            Ok(()) => {
                added += 1;
                bytes += fs::symlink_metadata(&dest).map(|m| m.len()).unwrap_or(0);
            }
            // Another import committed the same object meanwhile: it is the same bytes and
            // metadata; our snapshot keeps its own inode.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(super::io_err("rename into place", &dest, e)),
        }
    }
    Ok((added, bytes))
}

/// Renames staged directories `from/<hex>` to `to/<hex>`; returns how many were new.
pub(super) fn commit_dirs(
    from: &Path,
    to: &Path,
    ids: &BTreeSet<Digest>,
) -> Result<usize, AgentStoreError> {
    let mut added = 0;
    for id in ids {
        let dest = to.join(id.hex());
        match rename_noreplace(&from.join(id.hex()), &dest) {
            Ok(()) => added += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(super::io_err("rename into place", &dest, e)),
        }
    }
    Ok(added)
}

/// Writes manifests, indexes and configs to `images/sha256/`.
fn commit_docs(
    store: &AgentStore,
    tx: &Tx,
    docs: &BTreeMap<Digest, Vec<u8>>,
) -> Result<(), AgentStoreError> {
    let dir = store.images_dir();
    for (d, bytes) in docs {
        let dest = dir.join(d.hex());
        if dest.is_file() {
            continue;
        }
        let tmp = tx.dir.join("docs").join(d.hex());
        commit_file(&tmp, &dest, bytes)?;
    }
    Ok(())
}

/// The store's commit of one content-addressed file: `bytes` written to the new file `tmp`,
/// fsynced, and renamed to `dest` unless `dest` exists (then it holds the same bytes). The
/// caller syncs `dest`'s directory when the commit must survive a power loss.
pub(super) fn commit_file(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), AgentStoreError> {
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(tmp)
        .at("create", tmp)?;
    f.write_all(bytes).at("write", tmp)?;
    f.sync_all().at("sync", tmp)?;
    match rename_noreplace(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(super::io_err("rename into place", dest, e)),
    }
}

/// `syncfs(2)` on the file system holding `dir`.
pub(super) fn syncfs(dir: &Path) -> Result<(), AgentStoreError> {
    let f = File::open(dir).at("open", dir)?;
    rustix::fs::syncfs(&f)
        .map_err(io::Error::from)
        .at("sync the file system holding", dir)?;
    Ok(())
}

/// `renameat2(RENAME_NOREPLACE)`: an existing destination is `AlreadyExists`, never replaced.
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {
            Err(io::Error::from(io::ErrorKind::AlreadyExists))
        }
        Err(e) => Err(e.into()),
    }
}
