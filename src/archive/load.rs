//! `dts image load`: docker-archive, OCI archive (plain, gzip or zstd compressed) or OCI layout
//! directory → the store. Nothing is published until the whole archive has been checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path};

use serde::Deserialize;

use super::ArchiveError;
use crate::oci::digest::digest_reader;
use crate::oci::json::{canonical, parse_strict};
use crate::oci::{
    Compression, Descriptor, Digest, Document, ImageConfig, Manifest, Reference, media,
};
use crate::progress::{Event, Reporter};
use crate::store::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, StagedBlob, Store};
use crate::util::fs::{PathContext, read_limited};

/// What a load did.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// `docker-archive`, `oci-archive` or `oci-layout`.
    pub format: &'static str,
    /// The names given and what they point at.
    pub images: Vec<(Reference, Descriptor)>,
    /// Blobs that were new to the store.
    pub blobs_added: usize,
    /// Blobs the store already had.
    pub blobs_present: usize,
}

/// Loads the archive or layout directory at `input`. `tag` names the image when the archive
/// does not (and is added to its names when it does); it requires a single-image archive.
pub fn load(
    store: &Store,
    input: &Path,
    tag: Option<&Reference>,
    reporter: &dyn Reporter,
) -> Result<LoadReport, ArchiveError> {
    let staged = stage(
        store,
        input,
        &StageOptions {
            check_diff_ids: true,
        },
        reporter,
    )?;
    let planned = apply_tag(staged.planned, tag, input)?;
    commit(store, staged.files, planned, staged.format)
}

/// How [`stage`] checks an archive.
#[derive(Clone, Copy, Debug)]
pub struct StageOptions {
    /// Decompress every layer and check its diff_id against the image config. A caller that
    /// reads the layers itself anyway (the robot's import, which unpacks them) checks them
    /// there and skips the layers it already has.
    pub check_diff_ids: bool,
}

/// An archive whose every file is staged (hashed, synced) in a store's ingest area and whose
/// image graph is checked — every digest, size and document — with nothing published. Shared by
/// `dts image load` and `dt-agent image import`. Dropped, it removes what it staged.
pub struct StagedArchive {
    format: &'static str,
    input: std::path::PathBuf,
    files: Files,
    planned: Vec<Planned>,
}

/// One image of a [`StagedArchive`].
#[derive(Clone, Debug)]
pub struct StagedImage {
    /// The names the archive gives it (maybe none).
    pub names: Vec<Reference>,
    /// Its top-level manifest or index.
    pub top: Descriptor,
}

impl StagedArchive {
    /// `docker-archive`, `oci-archive` or `oci-layout`.
    pub fn format(&self) -> &'static str {
        self.format
    }

    /// The images found, in archive order.
    pub fn images(&self) -> Vec<StagedImage> {
        self.planned
            .iter()
            .map(|p| StagedImage {
                names: p.names.clone(),
                top: p.top.clone(),
            })
            .collect()
    }

    /// The images with their names, `tag` added (or required, when the archive names none) as
    /// `dts image load -t` does.
    pub fn named(&self, tag: Option<&Reference>) -> Result<Vec<StagedImage>, ArchiveError> {
        let mut images = self.images();
        if let Some(t) = tag {
            if images.len() != 1 {
                return Err(ArchiveError::invalid(
                    &self.input,
                    format!(
                        "`-t` names one image but the archive holds {}; import it without `-t`",
                        images.len()
                    ),
                ));
            }
            if !images[0].names.contains(t) {
                images[0].names.push(t.clone());
            }
        }
        if images.iter().any(|p| p.names.is_empty()) {
            return Err(ArchiveError::Unnamed {
                path: self.input.display().to_string(),
            });
        }
        Ok(images)
    }

    /// The staged file holding blob `d` (checked against its descriptor), if the archive has it.
    /// Documents generated for docker-archives are not files: see [`read_blob`](Self::read_blob).
    pub fn blob_path(&self, d: &Digest) -> Option<&Path> {
        self.planned
            .iter()
            .find_map(|p| p.blobs.get(d))
            .and_then(|path| self.files.get(path))
            .map(|b| b.path())
    }

    /// The bytes of a small blob (manifest, index, config), including the manifests generated
    /// for docker-archives; `None` if the archive has no such blob.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Option<Vec<u8>>, ArchiveError> {
        for p in &self.planned {
            if let Some(doc) = p.generated.iter().find(|g| &Digest::of(g) == d) {
                return Ok(Some(doc.clone()));
            }
        }
        match self.blob_path(d) {
            Some(path) => Ok(Some(read_limited(path, limit)?)),
            None => Ok(None),
        }
    }
}

/// Stages the archive or layout directory at `input` in `store`'s ingest area and checks it
/// (see [`StagedArchive`]); nothing is published.
pub fn stage(
    store: &Store,
    input: &Path,
    opts: &StageOptions,
    reporter: &dyn Reporter,
) -> Result<StagedArchive, ArchiveError> {
    // `-` is standard input, so that `docker save … | dt-agent image import -` streams.
    let stdin = input == Path::new("-");
    let meta = if stdin {
        None
    } else {
        Some(std::fs::metadata(input).at("read", input)?)
    };
    let (files, is_dir) = if meta.as_ref().is_some_and(|m| m.is_dir()) {
        (stage_dir(store, input, input)?, true)
    } else {
        let mut f: Box<dyn Read> = if stdin {
            Box::new(io::stdin().lock())
        } else {
            Box::new(File::open(input).at("open", input)?)
        };
        // The compression is sniffed from the same reader, the bytes put back in front: a
        // pipe (`/dev/stdin`, a fifo) cannot be opened twice to read its head again.
        let mut head = [0u8; 4];
        let n = read_full(&mut f, &mut head).at("read", input)?;
        let total = meta.filter(|m| m.is_file()).map(|m| m.len());
        let reader = Progress::new(
            BufReader::new(io::Cursor::new(head[..n].to_vec()).chain(f)),
            reporter,
            total,
        );
        let reader = Compression::sniff(&head[..n])
            .decoder(reader)
            .map_err(|e| ArchiveError::invalid(input, format!("cannot decompress: {e}")))?;
        let files = stage_tar(store, input, reader)?;
        reporter.event(Event::finish("read", "done"));
        (files, false)
    };

    let mut checks = DiffIdChecks::new(opts.check_diff_ids);
    let (format, planned) = if files.contains("oci-layout") && files.contains("index.json") {
        let f = if is_dir { "oci-layout" } else { "oci-archive" };
        (f, plan_oci(&files, input, &mut checks)?)
    } else if files.contains("manifest.json") {
        ("docker-archive", plan_docker(&files, input, &mut checks)?)
    } else {
        return Err(ArchiveError::invalid(
            input,
            "neither an OCI layout (oci-layout + index.json) nor a docker archive (manifest.json); \
             is the archive complete?",
        ));
    };
    checks.run(input)?;
    Ok(StagedArchive {
        format,
        input: input.to_path_buf(),
        files,
        planned,
    })
}

/// An image found in the archive, checked, waiting to be published.
struct Planned {
    names: Vec<Reference>,
    top: Descriptor,
    /// Archive paths of the blobs it needs, by digest.
    blobs: BTreeMap<Digest, String>,
    /// Documents we generated (docker-archive manifests).
    generated: Vec<Vec<u8>>,
}

fn apply_tag(
    mut planned: Vec<Planned>,
    tag: Option<&Reference>,
    input: &Path,
) -> Result<Vec<Planned>, ArchiveError> {
    if let Some(t) = tag {
        if planned.len() != 1 {
            return Err(ArchiveError::invalid(
                input,
                format!(
                    "`-t` names one image but the archive holds {}; load it without `-t`",
                    planned.len()
                ),
            ));
        }
        if !planned[0].names.contains(t) {
            planned[0].names.push(t.clone());
        }
    }
    if planned.iter().any(|p| p.names.is_empty()) {
        return Err(ArchiveError::Unnamed {
            path: input.display().to_string(),
        });
    }
    Ok(planned)
}

fn commit(
    store: &Store,
    mut files: Files,
    planned: Vec<Planned>,
    format: &'static str,
) -> Result<LoadReport, ArchiveError> {
    let mut added = 0;
    let mut present = 0;
    let mut names = Vec::new();
    let mut done = BTreeSet::new();
    for p in planned {
        for (digest, path) in &p.blobs {
            if !done.insert(digest.clone()) {
                continue;
            }
            if store.has_blob(digest) {
                present += 1;
                continue;
            }
            let staged = files
                .take(path)
                .expect("planned blobs were found while planning");
            staged.commit()?;
            added += 1;
        }
        for doc in &p.generated {
            if !store.has_blob(&Digest::of(doc)) {
                added += 1;
            }
            store.put_blob(doc)?;
        }
        for n in p.names {
            names.push((n, p.top.clone()));
        }
    }
    store.set_names(&names)?;
    Ok(LoadReport {
        format,
        images: names,
        blobs_added: added,
        blobs_present: present,
    })
}

// ---------------------------------------------------------------------------------------------
// Staging: every regular file of the archive lands in the ingest area, hashed.

enum Staged {
    File(StagedBlob),
    Link(String),
}

struct Files {
    entries: BTreeMap<String, Staged>,
}

impl Files {
    fn contains(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    /// Follows links (old `docker save` links repeated layers to the first copy).
    fn resolve(&self, path: &str) -> Option<String> {
        let mut p = normalize(path)?;
        for _ in 0..16 {
            match self.entries.get(&p)? {
                Staged::File(_) => return Some(p),
                Staged::Link(target) => p = target.clone(),
            }
        }
        None
    }

    fn get(&self, path: &str) -> Option<&StagedBlob> {
        match self.entries.get(&self.resolve(path)?)? {
            Staged::File(b) => Some(b),
            Staged::Link(_) => None,
        }
    }

    fn take(&mut self, path: &str) -> Option<StagedBlob> {
        let p = self.resolve(path)?;
        match self.entries.remove(&p)? {
            Staged::File(b) => Some(b),
            Staged::Link(_) => None,
        }
    }

    fn read_json(&self, path: &str, limit: u64) -> Option<Result<Vec<u8>, ArchiveError>> {
        let b = self.get(path)?;
        Some(read_limited(b.path(), limit).map_err(ArchiveError::from))
    }
}

/// `./a/b` → `a/b`; `..` that escapes the root → None.
pub(super) fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn stage_tar(store: &Store, input: &Path, reader: impl Read) -> Result<Files, ArchiveError> {
    let bad = |reason: String| ArchiveError::invalid(input, reason);
    let mut entries = BTreeMap::new();
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
            return Err(bad(format!("entry `{raw}` points outside the archive")));
        };
        let kind = entry.header().entry_type();
        let staged = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                let mut w = store.writer()?;
                let dest = w.temp_path().to_path_buf();
                let n = copy_checked(&mut entry, &mut w, dest).map_err(|e| match e {
                    CopyError::Read(e) => bad(format!("entry `{path}` cannot be read: {e}")),
                    CopyError::Write(e) => ArchiveError::Io(e),
                })?;
                if n != size {
                    return Err(bad(format!(
                        "entry `{path}` is truncated ({n} of {size} bytes): the archive is incomplete"
                    )));
                }
                Staged::File(w.finish()?)
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(format!("entry `{path}` has an unreadable link: {e}")))?
                    .ok_or_else(|| bad(format!("link `{path}` has no target")))?
                    .to_string_lossy()
                    .into_owned();
                let joined = if kind == tar::EntryType::Symlink {
                    let parent = Path::new(&path).parent().unwrap_or(Path::new(""));
                    parent.join(&target).to_string_lossy().into_owned()
                } else {
                    target.clone()
                };
                let resolved = normalize(&joined)
                    .ok_or_else(|| bad(format!("link `{path}` points outside the archive")))?;
                Staged::Link(resolved)
            }
            _ => continue,
        };
        if entries.insert(path.clone(), staged).is_some() {
            return Err(bad(format!("entry `{path}` appears twice")));
        }
    }
    Ok(Files { entries })
}

fn stage_dir(store: &Store, root: &Path, dir: &Path) -> Result<Files, ArchiveError> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).at("list", &d)? {
            let entry = entry.at("list", &d)?;
            let p = entry.path();
            let ft = entry.file_type().at("stat", &p)?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                found.push(p);
            }
        }
    }
    // Each file is read, hashed, written and fsynced on one of the cores: a layout's few large
    // layers took their turns on one thread before (the Duckietown bases: 1.3 GB in 1.9 s,
    // most of it the largest file's copy and fsync while the others waited).
    let staged = crate::util::par::map(&found, crate::util::par::cores(), |p| stage_file(store, p));
    let mut files = Files {
        entries: BTreeMap::new(),
    };
    for (p, blob) in found.iter().zip(staged) {
        let rel = p
            .strip_prefix(root)
            .expect("walked below root")
            .to_string_lossy()
            .into_owned();
        files.entries.insert(rel, Staged::File(blob?));
    }
    Ok(files)
}

/// One file of a layout directory, copied into the store's staging area.
fn stage_file(store: &Store, p: &Path) -> Result<StagedBlob, ArchiveError> {
    let mut w = store.writer()?;
    let dest = w.temp_path().to_path_buf();
    let mut f = File::open(p).at("open", p)?;
    copy_checked(&mut f, &mut w, dest).map_err(|e| match e {
        CopyError::Read(e) => ArchiveError::Io(crate::util::fs::PathError {
            action: "read",
            path: p.to_path_buf(),
            source: e,
        }),
        CopyError::Write(e) => ArchiveError::Io(e),
    })?;
    Ok(w.finish()?)
}

enum CopyError {
    Read(io::Error),
    Write(crate::util::fs::PathError),
}

/// Copies to the end, telling read failures (bad input) from write failures (our disk).
fn copy_checked(
    r: &mut impl Read,
    w: &mut impl Write,
    dest: std::path::PathBuf,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n])
            .at("write", &dest)
            .map_err(CopyError::Write)?;
        total += n as u64;
    }
}

pub(super) use crate::util::read_full;

/// Reports bytes read from the archive file.
pub(super) struct Progress<'a, R> {
    inner: R,
    reporter: &'a dyn Reporter,
    done: u64,
    last: u64,
}

impl<'a, R> Progress<'a, R> {
    pub(super) fn new(inner: R, reporter: &'a dyn Reporter, total: Option<u64>) -> Self {
        reporter.event(Event::start("read", "read archive", total));
        Progress {
            inner,
            reporter,
            done: 0,
            last: 0,
        }
    }
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.last >= 4 << 20 || n == 0 {
            self.last = self.done;
            self.reporter.event(Event::advance("read", self.done));
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Checking the image graph.

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Checks one blob against its descriptor and returns its archive path.
fn check_blob(files: &Files, input: &Path, desc: &Descriptor) -> Result<String, ArchiveError> {
    let path = blob_path(&desc.digest);
    let blob = files.get(&path).ok_or_else(|| {
        ArchiveError::invalid(
            input,
            format!("blob {} is missing (expected at `{path}`)", desc.digest),
        )
    })?;
    blob.verify(&desc.digest, desc.size)
        .map_err(|e| ArchiveError::invalid(input, format!("`{path}`: {e}")))?;
    Ok(path)
}

/// The layers whose diff_id a load checks, gathered while the archive is planned and checked
/// after, several at once: decompressing them is most of the time of loading compressed
/// layers (inflating runs at some 250 MB of tar per second and core here; an image's layers
/// are independent). A blob named by several images is checked once.
struct DiffIdChecks {
    enabled: bool,
    /// (blob, diff_id its config gives) → (the blob's file, its archive path).
    todo: BTreeMap<(Digest, Digest), (std::path::PathBuf, String)>,
}

impl DiffIdChecks {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            todo: BTreeMap::new(),
        }
    }

    fn add(&mut self, blob: &StagedBlob, entry: &str, expected: &Digest) {
        if self.enabled {
            self.todo
                .entry((blob.digest().clone(), expected.clone()))
                .or_insert_with(|| (blob.path().to_path_buf(), entry.to_string()));
        }
    }

    /// Every layer's uncompressed digest must be the one its config lists; the first layer (in
    /// digest order) that does not is the error.
    fn run(self, input: &Path) -> Result<(), ArchiveError> {
        let todo: Vec<_> = self.todo.into_iter().collect();
        let found = crate::util::par::map(
            &todo,
            crate::util::par::cores(),
            |((blob, _), (path, entry))| diff_id(path, blob, input, entry),
        );
        for (((_, expected), (_, entry)), actual) in todo.iter().zip(found) {
            let actual = actual?;
            if &actual != expected {
                return Err(ArchiveError::invalid(
                    input,
                    format!(
                        "layer `{entry}` does not match its image config: its content has diff_id {actual}, \
                         the config lists {expected}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The uncompressed digest of the layer blob at `path`, whose digest is `digest`.
fn diff_id(
    path: &Path,
    digest: &Digest,
    input: &Path,
    entry: &str,
) -> Result<Digest, ArchiveError> {
    let mut f = File::open(path).at("open", path)?;
    let mut head = [0u8; 4];
    let n = read_full(&mut f, &mut head).at("read", path)?;
    let compression = Compression::sniff(&head[..n]);
    if compression == Compression::None {
        return Ok(digest.clone());
    }
    let f = File::open(path).at("open", path)?;
    let dec = compression
        .decoder(BufReader::new(f))
        .and_then(|r| digest_reader(r).map(|(d, _)| d))
        .map_err(|e| {
            ArchiveError::invalid(input, format!("layer `{entry}` does not decompress: {e}"))
        })?;
    Ok(dec)
}

fn plan_oci(
    files: &Files,
    input: &Path,
    checks: &mut DiffIdChecks,
) -> Result<Vec<Planned>, ArchiveError> {
    let layout = files
        .read_json("oci-layout", 4096)
        .expect("checked by the caller")?;
    let v: serde_json::Value =
        parse_strict("oci-layout", &layout).map_err(|e| ArchiveError::json(input, e))?;
    if v["imageLayoutVersion"] != "1.0.0" {
        return Err(ArchiveError::invalid(
            input,
            format!("unsupported imageLayoutVersion {}", v["imageLayoutVersion"]),
        ));
    }
    let index_bytes = files
        .read_json("index.json", MAX_MANIFEST_BYTES)
        .expect("checked by the caller")?;
    let index = match Document::parse("index.json", None, &index_bytes)
        .map_err(|e| ArchiveError::json(input, e))?
    {
        Document::Index(i) => i,
        Document::Manifest(_) => {
            return Err(ArchiveError::invalid(
                input,
                "index.json is a manifest, not an index",
            ));
        }
    };
    let mut planned = Vec::new();
    for top in index.manifests {
        let mut blobs = BTreeMap::new();
        check_document(files, input, &top, &mut blobs, 0, checks)?;
        let names = oci_names(&top, input)?;
        let mut desc = top.clone();
        desc.annotations.clear();
        planned.push(Planned {
            names,
            top: desc,
            blobs,
            generated: Vec::new(),
        });
    }
    if planned.is_empty() {
        return Err(ArchiveError::invalid(input, "index.json lists no images"));
    }
    Ok(planned)
}

fn oci_names(desc: &Descriptor, input: &Path) -> Result<Vec<Reference>, ArchiveError> {
    desc.image_names()
        .map_err(|reason| ArchiveError::invalid(input, reason))
}

fn check_document(
    files: &Files,
    input: &Path,
    desc: &Descriptor,
    blobs: &mut BTreeMap<Digest, String>,
    depth: usize,
    checks: &mut DiffIdChecks,
) -> Result<(), ArchiveError> {
    if depth > 4 {
        return Err(ArchiveError::invalid(input, "indexes nested too deeply"));
    }
    if !media::is_index(&desc.media_type) && !media::is_manifest(&desc.media_type) {
        return Err(ArchiveError::invalid(
            input,
            format!(
                "descriptor {} has media type `{}`, which is not an image",
                desc.digest, desc.media_type
            ),
        ));
    }
    let path = check_blob(files, input, desc)?;
    let bytes = files
        .read_json(&path, MAX_MANIFEST_BYTES)
        .expect("check_blob found it")?;
    blobs.insert(desc.digest.clone(), path.clone());
    let doc = Document::parse(&format!("`{path}`"), Some(&desc.media_type), &bytes)
        .map_err(|e| ArchiveError::json(input, e))?;
    match doc {
        Document::Index(i) => {
            for m in &i.manifests {
                check_document(files, input, m, blobs, depth + 1, checks)?;
            }
        }
        Document::Manifest(m) => check_manifest(files, input, &m, blobs, checks)?,
    }
    Ok(())
}

fn check_manifest(
    files: &Files,
    input: &Path,
    m: &Manifest,
    blobs: &mut BTreeMap<Digest, String>,
    checks: &mut DiffIdChecks,
) -> Result<(), ArchiveError> {
    let cpath = check_blob(files, input, &m.config)?;
    let config = read_config(files, input, &cpath)?;
    blobs.insert(m.config.digest.clone(), cpath);
    if config.rootfs.diff_ids.len() != m.layers.len() {
        return Err(ArchiveError::invalid(
            input,
            format!(
                "manifest lists {} layers but its config lists {} diff_ids",
                m.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        ));
    }
    for (layer, diff) in m.layers.iter().zip(&config.rootfs.diff_ids) {
        if Compression::of_media_type(&layer.media_type).is_none() {
            return Err(ArchiveError::invalid(
                input,
                format!(
                    "layer {} has unsupported media type `{}`",
                    layer.digest, layer.media_type
                ),
            ));
        }
        let lpath = check_blob(files, input, layer)?;
        let blob = files.get(&lpath).expect("check_blob found it");
        checks.add(blob, &lpath, diff);
        blobs.insert(layer.digest.clone(), lpath);
    }
    Ok(())
}

fn read_config(files: &Files, input: &Path, path: &str) -> Result<ImageConfig, ArchiveError> {
    let bytes = files.read_json(path, MAX_CONFIG_BYTES).ok_or_else(|| {
        ArchiveError::invalid(
            input,
            format!("config `{path}` is missing from the archive"),
        )
    })??;
    ImageConfig::parse(&format!("config `{path}`"), &bytes)
        .map_err(|e| ArchiveError::json(input, e))
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

fn plan_docker(
    files: &Files,
    input: &Path,
    checks: &mut DiffIdChecks,
) -> Result<Vec<Planned>, ArchiveError> {
    let bytes = files
        .read_json("manifest.json", MAX_MANIFEST_BYTES)
        .expect("checked by the caller")?;
    let entries: Vec<DockerEntry> =
        parse_strict("manifest.json", &bytes).map_err(|e| ArchiveError::json(input, e))?;
    if entries.is_empty() {
        return Err(ArchiveError::invalid(
            input,
            "manifest.json lists no images",
        ));
    }
    let mut planned = Vec::new();
    for e in entries {
        let cblob = files.get(&e.config).ok_or_else(|| {
            ArchiveError::invalid(
                input,
                format!(
                    "manifest.json names config `{}`, which the archive does not contain",
                    e.config
                ),
            )
        })?;
        let config = read_config(files, input, &e.config)?;
        if config.rootfs.diff_ids.len() != e.layers.len() {
            return Err(ArchiveError::invalid(
                input,
                format!(
                    "manifest.json lists {} layers for `{}` but its config lists {} diff_ids",
                    e.layers.len(),
                    e.config,
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let mut blobs = BTreeMap::new();
        blobs.insert(cblob.digest().clone(), e.config.clone());
        let mut layers = Vec::new();
        for (path, diff) in e.layers.iter().zip(&config.rootfs.diff_ids) {
            let blob = files.get(path).ok_or_else(|| {
                ArchiveError::invalid(
                    input,
                    format!(
                        "manifest.json names layer `{path}`, which the archive does not contain"
                    ),
                )
            })?;
            checks.add(blob, path, diff);
            let mut head = [0u8; 4];
            let mut f = File::open(blob.path()).at("open", blob.path())?;
            let n = read_full(&mut f, &mut head).at("read", blob.path())?;
            let media_type = Compression::sniff(&head[..n]).oci_media_type();
            layers.push(Descriptor::new(
                media_type,
                blob.digest().clone(),
                blob.size(),
            ));
            blobs.insert(blob.digest().clone(), path.clone());
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            artifact_type: None,
            config: Descriptor::new(media::OCI_CONFIG, cblob.digest().clone(), cblob.size()),
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        };
        let doc = canonical(&manifest);
        let top = Descriptor::new(media::OCI_MANIFEST, Digest::of(&doc), doc.len() as u64);
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            names.push(Reference::parse(&t).map_err(|err| {
                ArchiveError::invalid(input, format!("manifest.json RepoTags: {err}"))
            })?);
        }
        planned.push(Planned {
            names,
            top,
            blobs,
            generated: vec![doc],
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_archive_paths() {
        assert_eq!(normalize("./a/b").as_deref(), Some("a/b"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("/abs/x").as_deref(), Some("abs/x"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("abc/../../x"), None);
    }
}
