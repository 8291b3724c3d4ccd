//! `dt-agent image import --docker-root DIR IMAGE…`: Docker's images taken straight from its
//! data root (overlay2 driver), without `docker save`, whose Docker 20.10 implementation
//! stages the whole archive in `DIR/tmp` before it streams a byte (docs/duckietown.md).
//!
//! ```text
//! DIR/image/overlay2/repositories.json                 names → image ids
//! DIR/image/overlay2/imagedb/content/sha256/<id>       the config; its sha256 is the id
//! DIR/image/overlay2/layerdb/sha256/<chain id>/        diff, cache-id, tar-split.json.gz
//! DIR/overlay2/<cache-id>/diff/                        the layer's files
//! ```
//!
//! Each layer's tar is reassembled from its tar-split and files (docker_split.rs) and handed to
//! the very consumer a streamed docker-archive's `layer.tar` goes to (consume.rs): the same
//! objects, tar-split, commit, `.pending` protection and resume. The configs (their exact
//! bytes) and a `manifest.json` naming them are handed over as the archive's small entries, and
//! import.rs's `finish` plans, snapshots and names the images as for `docker save`'s archive —
//! the same manifests, the same snapshot chain ids. Layers the store holds are not read.
//!
//! A layer whose files do not rebuild its diff_id fails the import (exit 1, a failure of the
//! source, naming the layer): nothing is named; the layers committed before stay for a rerun.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::consume::{ConsumedLayer, Consumer};
use super::docker_split::{self, Fault, Reassembly, SplitReader};
use super::import::{ImportOptions, ImportReport, Tx, clean_tmp, finish, refused};
use super::object::SourceCell;
use super::{AgentStore, AgentStoreError};
use crate::archive::Entry;
use crate::oci::digest::chain_id;
use crate::oci::{Compression, Digest, ImageConfig, Reference};
use crate::progress::Reporter;
use crate::store::MAX_CONFIG_BYTES;

/// Largest `repositories.json` read (a robot's is a few KiB).
const MAX_REPOSITORIES_BYTES: u64 = 16 << 20;

/// A failure of Docker's data root (missing, not overlay2, or inconsistent).
fn source_err(path: &Path, reason: impl std::fmt::Display) -> AgentStoreError {
    AgentStoreError::DockerRoot {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, AgentStoreError> {
    use std::io::Read;
    let f = fs::File::open(path).map_err(|e| source_err(path, e))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| source_err(path, e))?;
    if buf.len() as u64 > limit {
        return Err(source_err(path, format!("larger than {limit} bytes")));
    }
    Ok(buf)
}

fn read_line(path: &Path) -> Result<String, AgentStoreError> {
    let b = read_small(path, 4096)?;
    String::from_utf8(b)
        .map(|s| s.trim().to_string())
        .map_err(|_| source_err(path, "not UTF-8"))
}

#[derive(Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

/// Docker's overlay2 data root.
pub(super) struct DockerRoot {
    root: PathBuf,
    image: PathBuf,
    /// `repo:tag` → image id.
    tags: Vec<(Reference, Digest)>,
    /// `repo@sha256:…` → image id: Docker's RepoDigests, the registry manifests an image was
    /// pulled by. The import cannot reproduce those manifests (they name compressed layers), so
    /// they become aliases of the manifest it writes: a stack pinned by digest still finds
    /// the image on the robot.
    repo_digests: Vec<(Reference, Digest)>,
}

/// One layer to take.
struct LayerSrc {
    diff_id: Digest,
    split: PathBuf,
    diff_dir: PathBuf,
}

impl DockerRoot {
    pub(super) fn open(root: &Path) -> Result<DockerRoot, AgentStoreError> {
        let image = root.join("image/overlay2");
        if !image.join("imagedb").is_dir() || !root.join("overlay2").is_dir() {
            return Err(source_err(
                root,
                "not the data root of a Docker using the overlay2 storage driver (no \
                 image/overlay2/imagedb or overlay2/); import `docker save` output instead",
            ));
        }
        let rp = image.join("repositories.json");
        let mut tags = Vec::new();
        let mut repo_digests = Vec::new();
        if rp.exists() {
            let r: Repositories = serde_json::from_slice(&read_small(&rp, MAX_REPOSITORIES_BYTES)?)
                .map_err(|e| source_err(&rp, e))?;
            for (name, id) in r.repositories.into_values().flatten() {
                let (Ok(r), Ok(d)) = (Reference::parse(&name), id.parse::<Digest>()) else {
                    return Err(source_err(&rp, format!("bad entry `{name}`: `{id}`")));
                };
                if r.digest().is_some() {
                    repo_digests.push((r, d));
                } else {
                    tags.push((r, d));
                }
            }
        }
        Ok(DockerRoot {
            root: root.to_path_buf(),
            image,
            tags,
            repo_digests,
        })
    }

    /// An image by name (`repo:tag`) or id (`sha256:<hex>`, or a prefix of at least 12 hex):
    /// its id and the names to give it (the name given; for an id, every tag pointing at it).
    fn find(&self, arg: &str) -> Result<(Digest, Vec<Reference>), AgentStoreError> {
        let not_found = |reason: String| AgentStoreError::BadImage {
            image: arg.to_string(),
            reason,
        };
        let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
        if hex.len() >= 12 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let dir = self.image.join("imagedb/content/sha256");
            let mut found = Vec::new();
            for e in fs::read_dir(&dir).map_err(|e| source_err(&dir, e))? {
                let name = e.map_err(|e| source_err(&dir, e))?.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&hex.to_ascii_lowercase()) {
                    found.push(name.into_owned());
                }
            }
            if found.len() == 1 {
                let id = Digest::from_hex(&found[0]).map_err(|e| source_err(&dir, e))?;
                let names = self
                    .tags
                    .iter()
                    .filter(|(_, d)| *d == id)
                    .map(|(r, _)| r.clone())
                    .collect();
                return Ok((id, names));
            }
            if found.len() > 1 {
                return Err(not_found(format!(
                    "{} images have that id prefix",
                    found.len()
                )));
            }
        }
        let r = Reference::parse(arg).map_err(|e| not_found(e.to_string()))?;
        match self.tags.iter().find(|(t, _)| *t == r) {
            Some((_, id)) => Ok((id.clone(), vec![r])),
            None => Err(not_found(format!(
                "Docker's data root `{}` has no image of that name or id",
                self.root.display()
            ))),
        }
    }

    /// The config's exact bytes, checked against its id.
    fn config(&self, id: &Digest) -> Result<(Vec<u8>, ImageConfig), AgentStoreError> {
        let p = self.image.join("imagedb/content/sha256").join(id.hex());
        let bytes = read_small(&p, MAX_CONFIG_BYTES)?;
        if Digest::of(&bytes) != *id {
            return Err(source_err(&p, "does not hash to its name"));
        }
        let config = ImageConfig::parse(&p.display().to_string(), &bytes)?;
        Ok((bytes, config))
    }

    /// The layer stack of `diff_ids` in layerdb; each one's `diff` must be its diff_id.
    fn layers(&self, diff_ids: &[Digest]) -> Result<Vec<LayerSrc>, AgentStoreError> {
        let mut out = Vec::new();
        for i in 0..diff_ids.len() {
            let chain = chain_id(&diff_ids[..=i]).expect("one layer at least");
            let dir = self.image.join("layerdb/sha256").join(chain.hex());
            let diff = read_line(&dir.join("diff"))?;
            if diff != diff_ids[i].to_string() {
                return Err(source_err(
                    &dir,
                    format!("its diff is {diff}, the config says {}", diff_ids[i]),
                ));
            }
            let cache = read_line(&dir.join("cache-id"))?;
            if cache.is_empty() || cache.contains('/') || cache.starts_with('.') {
                return Err(source_err(&dir.join("cache-id"), "not a cache id"));
            }
            out.push(LayerSrc {
                diff_id: diff_ids[i].clone(),
                split: dir.join("tar-split.json.gz"),
                diff_dir: self.root.join("overlay2").join(cache).join("diff"),
            });
        }
        Ok(out)
    }
}

/// `manifest.json` as `docker save` writes it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn entry_path(diff_id: &Digest) -> String {
    // Not `<64 hex>/layer.tar`: pending.rs would remember it as a docker v1 layer id.
    format!("docker-root/{}/layer.tar", diff_id.hex())
}

pub(super) fn import(
    store: &AgentStore,
    root: &Path,
    images: &[String],
    opts: &ImportOptions<'_>,
    reporter: &dyn Reporter,
) -> Result<ImportReport, AgentStoreError> {
    let docker = DockerRoot::open(root)?;
    // Plan before touching the store: every image found, every config and layerdb entry read.
    let mut saves = Vec::new();
    let mut configs = BTreeMap::new();
    let mut todo: BTreeMap<Digest, LayerSrc> = BTreeMap::new();
    let mut known: BTreeMap<Digest, u64> = BTreeMap::new();
    for arg in images {
        let (id, names) = docker.find(arg)?;
        let (bytes, config) = docker.config(&id)?;
        for l in docker.layers(&config.rootfs.diff_ids)? {
            if store.has_layer(&l.diff_id) {
                known.insert(l.diff_id.clone(), store.layer_meta(&l.diff_id)?.size);
            } else {
                todo.entry(l.diff_id.clone()).or_insert(l);
            }
        }
        saves.push(SaveEntry {
            config: format!("{}.json", id.hex()),
            // The names, then the RepoDigests as aliases of the same image.
            repo_tags: names
                .iter()
                .chain(
                    docker
                        .repo_digests
                        .iter()
                        .filter(|(_, d)| *d == id)
                        .map(|(r, _)| r),
                )
                .map(Reference::familiar)
                .collect(),
            layers: config.rootfs.diff_ids.iter().map(entry_path).collect(),
        });
        configs.insert(format!("{}.json", id.hex()), bytes);
    }
    let mut sizes = BTreeMap::new();
    for (d, l) in &todo {
        let size = docker_split::tar_size(&l.split).map_err(|e| source_err(&l.split, e))?;
        sizes.insert(d.clone(), size);
    }
    let expect: u64 = sizes.values().sum();

    clean_tmp(store)?;
    let tx = Tx::begin(store)?;
    let mut c = Consumer::new(store, &tx.dir, Some(expect), reporter);
    let fault = Fault::default();
    let mut consumed = Ok(());
    for (d, l) in &todo {
        consumed = take_layer(&mut c, l, sizes[d], &fault);
        if consumed.is_err() {
            break;
        }
    }
    for (d, size) in &known {
        c.layers.insert(
            entry_path(d),
            ConsumedLayer {
                diff_id: d.clone(),
                blob: d.clone(),
                blob_size: *size,
                compression: Compression::None,
            },
        );
    }
    let result = consumed.and_then(|()| {
        for (p, b) in configs {
            c.small.insert(p, b);
        }
        c.small.insert(
            "manifest.json".into(),
            serde_json::to_vec(&saves).expect("json"),
        );
        finish(store, &tx, &c, root, opts, reporter)
    });
    match result {
        Ok(mut report) => {
            report.format = "docker-root".into();
            let used: BTreeSet<Digest> = c.layers.values().map(|l| l.diff_id.clone()).collect();
            c.pending.finish(store, &used)?;
            Ok(report)
        }
        Err(e) => {
            if refused(&e) {
                c.pending.abandon();
            }
            Err(e)
        }
    }
}

/// One layer reassembled and consumed as a docker-archive's `layer.tar` would be.
fn take_layer(
    c: &mut Consumer<'_>,
    l: &LayerSrc,
    size: u64,
    fault: &Fault,
) -> Result<(), AgentStoreError> {
    let split = SplitReader::open(&l.split).map_err(|e| source_err(&l.split, e))?;
    let source = SourceCell::default();
    // The consumer's tar reader checks the diff_id (before the layer is committed), so the
    // reassembly does not hash the stream a second time.
    let mut reader = Reassembly::new(split, &l.diff_dir, None, fault.clone())
        .map_err(|e| source_err(&l.diff_dir, e))?
        .with_source(source.clone());
    let path = entry_path(&l.diff_id);
    c.expect_diff_id = Some((l.diff_id.clone(), l.diff_dir.clone()));
    c.source = Some(source);
    let r = c.entry(Entry::File {
        path: &path,
        size,
        content: &mut reader,
    });
    c.expect_diff_id = None;
    c.source = None;
    match (r, fault.borrow_mut().take()) {
        (_, Some(reason)) => Err(AgentStoreError::DockerLayer {
            diff_id: l.diff_id.clone(),
            reason,
        }),
        (r, None) => r,
    }
}
