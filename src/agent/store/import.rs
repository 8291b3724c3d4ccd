//! `dt-agent image import`: an archive, streamed → layers committed as they arrive, then
//! snapshots, documents and names, all names at once.
//!
//! ```text
//! tmp/import-<pid>-…/        flocked while the import runs; removed at its end, or by the
//!                            next import or gc after a crash
//!   layer/ scratch/ objects/ the layer being consumed (consume.rs)
//!   snaps/<chain hex>/       rootfs/ (the hardlink farm) + meta.json
//!   docs/                    manifests and configs on their way to images/
//! imports/                   what an unfinished import keeps for its rerun (pending.rs)
//! ```
//!
//! The archive is read once, as a stream of entries ([`crate::archive::visit`]), never staged
//! whole: `docker save` writes `manifest.json` last, so an importer that waits for it before
//! touching a layer needs a second copy of the whole archive. Each layer is consumed as it
//! streams by — hashed, its tar-split recorded, its files made objects — and committed at once
//! under its diff_id (consume.rs), or only hashed when the store has it. Configs, manifests and
//! `manifest.json` are small and kept in memory. After the last entry the images are planned
//! (docker-archive: `manifest.json`; OCI: `index.json`, this robot's platform): every diff_id of
//! every config must be a layer the stream carried, at the place its manifest says, or the
//! archive is refused and nothing is named. Then each image's snapshot is built by replaying
//! its layers' tar-splits as links to their objects (ingest.rs's [`replay_snapshot`]), and
//! snapshots, documents and names are committed in the store's order (see its module doc).
//!
//! What stays after a failure: the layers committed before it (and their objects), listed in
//! the import's `imports/*.pending` file so `gc` keeps them for a rerun, which then only hashes
//! them. A refused archive (bad content) drops that protection; a cut stream, a killed import
//! or a full disk keep it.
//!
//! [`replay_snapshot`]: super::ingest

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, RenameFlags, flock};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::consume::Consumer;
use super::object::{ObjectKey, Staging};
use super::tarsplit;
use super::{AgentStore, AgentStoreError, RefEntry, SnapshotMeta, snapshot_id};
use crate::archive::{ArchiveError, Interrupted};
use crate::oci::json::{canonical, parse_strict};
use crate::oci::{
    Compression, Descriptor, Digest, Document, ImageConfig, Manifest, Platform, Reference, media,
};
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
    /// Bytes the stream is expected to have (progress is reported against it when the input's
    /// own size is unknown: a pipe).
    pub expect_bytes: Option<u64>,
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
    /// Bytes of archive entries read.
    pub bytes_read: u64,
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
    diff_ids: Vec<Digest>,
    chain_id: Digest,
}

/// Documents to store: digest → bytes.
type Docs = BTreeMap<Digest, Vec<u8>>;

/// Reads a small blob of the archive by digest, up to a limit.
type ReadBlob<'a> = dyn Fn(&Digest, u64) -> Result<Vec<u8>, AgentStoreError> + 'a;

pub(super) fn import(
    store: &AgentStore,
    input: &Path,
    opts: &ImportOptions<'_>,
    reporter: &dyn Reporter,
) -> Result<ImportReport, AgentStoreError> {
    clean_tmp(store)?;
    let tx = Tx::begin(store)?;
    let cut = Interrupted::default();
    let mut c = Consumer::new(store, &tx.dir, opts.expect_bytes, reporter);
    let visited = crate::archive::visit(input, opts.expect_bytes, &cut, reporter, &mut |e| {
        c.entry(e)
    });
    let result = visited.and_then(|()| finish(store, &tx, &c, input, opts, reporter));
    match result {
        Ok(report) => {
            let consumed: BTreeSet<Digest> = c.layers.values().map(|l| l.diff_id.clone()).collect();
            c.pending.finish(store, &consumed)?;
            Ok(report)
        }
        Err(e) => {
            let e = match cut.get() {
                Some((got, size)) => AgentStoreError::BadArchive {
                    reason: format!(
                        "the stream ended {got} bytes into an entry of {size} bytes (a cut pipe, \
                         a killed `docker save`?); the {} layer(s) committed before it are kept: \
                         run the import again to resume",
                        c.added.len()
                    ),
                    incomplete: true,
                },
                None => e,
            };
            // A refused archive's layers are garbage for gc; a cut stream's or a full disk's
            // wait for the rerun (pending.rs).
            if refused(&e) {
                c.pending.abandon();
            }
            Err(e)
        }
    }
}

/// Whether the archive's content was refused (rather than cut short, or the robot failing).
pub(super) fn refused(e: &AgentStoreError) -> bool {
    match e {
        AgentStoreError::BadArchive { incomplete, .. } => !incomplete,
        AgentStoreError::Archive(ArchiveError::Unnamed { .. }) => true,
        AgentStoreError::Archive(_) => false,
        e => e.is_bad_input(),
    }
}

/// After the last entry: plans the images from the small entries and the consumed layers,
/// builds their snapshots from tar-splits and objects, and publishes documents and names.
pub(super) fn finish(
    store: &AgentStore,
    tx: &Tx,
    c: &Consumer<'_>,
    input: &Path,
    opts: &ImportOptions<'_>,
    reporter: &dyn Reporter,
) -> Result<ImportReport, AgentStoreError> {
    let has = |p: &str| c.small.contains_key(c.resolve(p));
    let mut docs = Docs::new();
    let (format, plans) = if has("manifest.json") {
        ("docker-archive", plan_docker(c, opts, &mut docs)?)
    } else if has("oci-layout") && has("index.json") {
        let dir = input != Path::new("-") && input.is_dir();
        let f = if dir { "oci-layout" } else { "oci-archive" };
        (f, plan_oci(c, opts, &mut docs)?)
    } else {
        return Err(AgentStoreError::BadArchive {
            reason: format!(
                "after {} entries the stream has neither a docker archive's manifest.json nor \
                 an OCI layout's oci-layout + index.json; is the archive complete? (layers \
                 committed so far are kept: run the import again to resume)",
                c.small.len() + c.layers.len()
            ),
            incomplete: true,
        });
    };
    let plans = name(plans, opts.tag, input)?;
    let mut report = ImportReport {
        format: format.to_string(),
        layers_added: c.added.len(),
        bytes_read: c.bytes_read,
        ..Default::default()
    };
    let objects = tx.dir.join("objects");
    remove_tree(&objects).at("remove", &objects)?;
    fs::create_dir(&objects).at("create directory", &objects)?;
    let mut staging = Staging::new(objects, store.objects_dir());
    let index = super::ingest::content_index(&store.objects_dir())?;
    let is_root = rustix::process::geteuid().is_root();
    let mut new_snaps: BTreeSet<Digest> = BTreeSet::new();
    for plan in &plans {
        if new_snaps.contains(&plan.chain_id) || store.has_snapshot(&plan.chain_id) {
            report.snapshots_present += 1;
            continue;
        }
        let id = format!("snapshot {}", plan.chain_id.short());
        reporter.event(Event::start(
            id.clone(),
            format!("snapshot of {}", plan.display),
            None,
        ));
        let layers: Vec<(Digest, PathBuf)> = plan
            .diff_ids
            .iter()
            .map(|d| {
                (
                    d.clone(),
                    store.layers_dir().join(d.hex()).join(tarsplit::FILE_NAME),
                )
            })
            .collect();
        let snap = tx.dir.join("snaps").join(plan.chain_id.hex());
        super::ingest::replay_snapshot(
            &snap,
            &layers,
            &index,
            &mut staging,
            &plan.display,
            is_root,
        )?;
        let meta = SnapshotMeta {
            chain_id: plan.chain_id.clone(),
            diff_ids: plan.diff_ids.clone(),
        };
        let mp = snap.join("meta.json");
        fs::write(&mp, canonical(&meta)).at("write", &mp)?;
        new_snaps.insert(plan.chain_id.clone());
        reporter.event(Event::finish(id, "built"));
    }
    let used: BTreeSet<&Digest> = plans.iter().flat_map(|p| &p.diff_ids).collect();
    report.layers_present = used.iter().filter(|d| !c.added.contains(**d)).count();
    report.files_linked = staging.linked;

    // Commit: the layers are in place already; variant objects, snapshots, documents, then
    // names. One syncfs per step instead of an fsync per file and directory: per-file fsync
    // on SD cards is what made meta-lmp#992 unacceptable; containerd's `sync_fs` does the same.
    syncfs(&tx.dir)?;
    let (added, bytes) = commit_objects(store, &staging)?;
    report.objects_added = c.objects_added + added;
    report.object_bytes_added = c.object_bytes_added + bytes;
    syncfs(&tx.dir)?; // objects' names, before any snapshot that links them
    report.snapshots_added =
        commit_dirs(&tx.dir.join("snaps"), &store.snapshots_dir(), &new_snaps)?;
    commit_docs(store, tx, &docs)?;
    syncfs(&tx.dir)?; // snapshots and documents, before the names that reach them
    let mut names = Vec::new();
    for plan in &plans {
        for n in &plan.names {
            names.push((
                n.to_string(),
                RefEntry {
                    digest: plan.top.digest.clone(),
                    media_type: plan.top.media_type.clone(),
                    manifest: plan.manifest.clone(),
                },
            ));
            report.images.push(ImportedImage {
                name: n.familiar(),
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
    Ok(report)
}

/// `-t` added to the names (one image only), and every image named.
fn name(
    mut plans: Vec<Plan>,
    tag: Option<&Reference>,
    input: &Path,
) -> Result<Vec<Plan>, AgentStoreError> {
    if let Some(t) = tag {
        if plans.len() != 1 {
            return Err(ArchiveError::invalid(
                input,
                format!(
                    "`-t` names one image but the archive holds {}; import it without `-t`",
                    plans.len()
                ),
            )
            .into());
        }
        if !plans[0].names.contains(t) {
            plans[0].names.push(t.clone());
        }
    }
    if plans.iter().any(|p| p.names.is_empty()) {
        return Err(ArchiveError::Unnamed {
            path: input.display().to_string(),
        }
        .into());
    }
    Ok(plans)
}

/// One entry of a docker-archive `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A docker-archive's images: `manifest.json` names each one's config and layer entries; the
/// manifest is written here (a docker-archive carries none), its layers as they were streamed.
fn plan_docker(
    c: &Consumer<'_>,
    opts: &ImportOptions<'_>,
    docs: &mut Docs,
) -> Result<Vec<Plan>, AgentStoreError> {
    let bad = |r: String| AgentStoreError::bad_archive(r);
    let entries: Vec<DockerEntry> =
        parse_strict("manifest.json", &c.small[c.resolve("manifest.json")])?;
    if entries.is_empty() {
        return Err(bad("manifest.json lists no images".into()));
    }
    let mut plans = Vec::new();
    for e in entries {
        let cbytes = c.small.get(c.resolve(&e.config)).ok_or_else(|| {
            bad(format!(
                "manifest.json names config `{}`, which the archive does not carry",
                e.config
            ))
        })?;
        let config = ImageConfig::parse(&format!("config `{}`", e.config), cbytes)?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != e.layers.len() {
            return Err(bad(format!(
                "manifest.json lists {} layers for `{}` but its config lists {} diff_ids",
                e.layers.len(),
                e.config,
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (path, diff) in e.layers.iter().zip(&diff_ids) {
            let l = c.layers.get(c.resolve(path)).ok_or_else(|| {
                bad(format!(
                    "manifest.json names layer `{path}`, which the archive does not carry as a layer"
                ))
            })?;
            if l.diff_id != *diff {
                return Err(bad(format!(
                    "layer `{path}` has diff_id {}, but config `{}` lists {diff}",
                    l.diff_id, e.config
                )));
            }
            layers.push(Descriptor::new(
                l.compression.oci_media_type(),
                l.blob.clone(),
                l.blob_size,
            ));
        }
        let cdigest = Digest::of(cbytes);
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            artifact_type: None,
            config: Descriptor::new(media::OCI_CONFIG, cdigest.clone(), cbytes.len() as u64),
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        };
        let doc = canonical(&manifest);
        let top = Descriptor::new(media::OCI_MANIFEST, Digest::of(&doc), doc.len() as u64);
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            names.push(
                Reference::parse(&t)
                    .map_err(|err| bad(format!("manifest.json RepoTags `{t}`: {err}")))?,
            );
        }
        let display = names
            .first()
            .map(Reference::familiar)
            .unwrap_or_else(|| cdigest.to_string());
        check_platform(&config, opts, &display)?;
        docs.insert(top.digest.clone(), doc);
        docs.insert(cdigest, cbytes.clone());
        plans.push(Plan {
            names,
            display,
            manifest: top.digest.clone(),
            top,
            platform: config.platform().to_string(),
            chain_id: snapshot_id(&diff_ids),
            diff_ids,
        });
    }
    Ok(plans)
}

fn check_platform(
    config: &ImageConfig,
    opts: &ImportOptions<'_>,
    display: &str,
) -> Result<(), AgentStoreError> {
    match opts.platform {
        Some(p) if !config.platform().matches(p) => Err(AgentStoreError::BadImage {
            image: display.to_string(),
            reason: format!("it is {}, not {p}", config.platform()),
        }),
        _ => Ok(()),
    }
}

/// An OCI archive's or layout's images: `index.json` names each one's manifest or index; the
/// robot's platform is taken from an index; layers are the blobs streamed by.
fn plan_oci(
    c: &Consumer<'_>,
    opts: &ImportOptions<'_>,
    docs: &mut Docs,
) -> Result<Vec<Plan>, AgentStoreError> {
    let bad = |r: String| AgentStoreError::bad_archive(r);
    let layout: serde_json::Value = parse_strict("oci-layout", &c.small[c.resolve("oci-layout")])?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        return Err(bad(format!(
            "`oci-layout`: unsupported imageLayoutVersion {}",
            layout["imageLayoutVersion"]
        )));
    }
    let index = match Document::parse("index.json", None, &c.small[c.resolve("index.json")])? {
        Document::Index(i) => i,
        Document::Manifest(_) => {
            return Err(bad("`index.json` is a manifest, not an index".into()));
        }
    };
    if index.manifests.is_empty() {
        return Err(bad("`index.json` lists no images".into()));
    }
    let read = |d: &Digest, limit: u64| -> Result<Vec<u8>, AgentStoreError> {
        let p = format!("blobs/sha256/{}", d.hex());
        let b = c
            .small
            .get(c.resolve(&p))
            .ok_or_else(|| bad(format!("blob {d} is missing (expected at `{p}`)")))?;
        if Digest::of(b) != *d || b.len() as u64 > limit {
            return Err(bad(format!(
                "`{p}` does not hash to its name, or is too large"
            )));
        }
        Ok(b.clone())
    };
    let mut plans = Vec::new();
    for top in &index.manifests {
        let names = oci_names(top)?;
        let mut top = top.clone();
        top.annotations.clear();
        let display = names
            .first()
            .map(Reference::familiar)
            .unwrap_or_else(|| top.digest.to_string());
        let (manifest_digest, manifest) = resolve_top(&read, &top, opts, &display, docs)?;
        let cbytes = read(&manifest.config.digest, MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(&format!("config {}", manifest.config.digest), &cbytes)?;
        docs.insert(manifest.config.digest.clone(), cbytes);
        check_platform(&config, opts, &display)?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(AgentStoreError::BadImage {
                image: display,
                reason: format!(
                    "its manifest lists {} layers and its config {} diff_ids",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        for (l, diff) in manifest.layers.iter().zip(&diff_ids) {
            let p = format!("blobs/sha256/{}", l.digest.hex());
            if Compression::of_media_type(&l.media_type).is_none() {
                return Err(bad(format!(
                    "layer `{p}` has unsupported media type `{}`",
                    l.media_type
                )));
            }
            let got = c.layers.get(c.resolve(&p)).ok_or_else(|| {
                bad(format!(
                    "layer blob {} is missing (expected at `{p}`)",
                    l.digest
                ))
            })?;
            if got.blob_size != l.size || got.diff_id != *diff {
                return Err(bad(format!(
                    "layer `{p}` has {} bytes and diff_id {}; its manifest says {} bytes and its \
                     config {diff}",
                    got.blob_size, got.diff_id, l.size
                )));
            }
        }
        plans.push(Plan {
            names,
            display,
            top,
            manifest: manifest_digest,
            platform: config.platform().to_string(),
            chain_id: snapshot_id(&diff_ids),
            diff_ids,
        });
    }
    Ok(plans)
}

/// The names an OCI index entry gives its image.
fn oci_names(desc: &Descriptor) -> Result<Vec<Reference>, AgentStoreError> {
    desc.image_names().map_err(AgentStoreError::bad_archive)
}

/// Resolves a top-level manifest or index to the manifest this robot uses; collects the
/// documents on the way.
fn resolve_top(
    read: &ReadBlob<'_>,
    top: &Descriptor,
    opts: &ImportOptions<'_>,
    display: &str,
    docs: &mut Docs,
) -> Result<(Digest, Manifest), AgentStoreError> {
    let bad = |reason: String| AgentStoreError::BadImage {
        image: display.to_string(),
        reason,
    };
    let top_bytes = read(&top.digest, MAX_MANIFEST_BYTES)?;
    docs.insert(top.digest.clone(), top_bytes.clone());
    let index = match Document::parse(
        &format!("manifest {}", top.digest),
        Some(&top.media_type),
        &top_bytes,
    )? {
        Document::Manifest(m) => return Ok((top.digest.clone(), *m)),
        Document::Index(index) => index,
    };
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
    Ok((entry.digest.clone(), m))
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
