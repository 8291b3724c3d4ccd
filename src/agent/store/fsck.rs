//! `dt-agent fsck`: re-verifies everything the store holds, because "present" must not mean
//! "trusted forever" (moby#36135, HAOS#4994: corrupted extracted layers survive re-pulls).
//!
//! - every object: a regular file whose content hashes to its name, with the mode and owner
//!   its name says; a zero-length file under a non-empty digest (what a power cut leaves after
//!   an unsynced write, containerd#5854) is named as such;
//! - every layer: its tar-split is rebuilt into the exact tar, from verified objects only, and
//!   hashed: it must give the diff_id the layer is named by, and its own recorded digest;
//! - every document hashes to its name; every name and root reaches its documents, layers and
//!   snapshot; every snapshot is named by the chain id of its layers.
//!
//! Read-only: it reports, it does not repair (`gc` and a re-import do).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::object::ObjectKey;
use super::tarsplit::{self, SplitError};
use super::{AgentStore, AgentStoreError, LayerMeta, SnapshotMeta, io_err, snapshot_id};
use crate::oci::Digest;
use crate::oci::digest::digest_reader;
use crate::oci::json::parse_strict;
use crate::util::fs::{PathContext, read_limited};

/// One thing wrong, naming the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.path.display(), self.what)
    }
}

/// What fsck checked and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    /// Objects verified.
    pub objects: usize,
    /// Their bytes.
    pub object_bytes: u64,
    /// Layers rebuilt.
    pub layers: usize,
    /// Documents verified.
    pub documents: usize,
    /// Names checked.
    pub names: usize,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Staging directories in `tmp/` (in flight, or left by a crash for `gc`).
    pub in_flight: usize,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, path: &Path, what: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_path_buf(),
            what: what.into(),
        });
    }
}

/// Sorted entries of a directory.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, AgentStoreError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).at("list", dir)? {
        let e = e.at("list", dir)?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

pub(super) fn fsck(store: &AgentStore) -> Result<FsckReport, AgentStoreError> {
    let mut r = FsckReport::default();
    let (good, damaged) = check_objects(store, &mut r)?;
    check_layers(store, &good, &damaged, &mut r)?;
    check_documents(store, &mut r)?;
    check_snapshots(store, &mut r)?;
    check_roots(store, &mut r)?;
    r.in_flight = entries(&store.tmp_dir())?.len();
    Ok(r)
}

/// Verifies every object; returns content digest → a verified object, and the digests of
/// damaged ones.
fn check_objects(
    store: &AgentStore,
    r: &mut FsckReport,
) -> Result<(HashMap<Digest, PathBuf>, BTreeSet<Digest>), AgentStoreError> {
    let mut good = HashMap::new();
    let mut damaged = BTreeSet::new();
    for (prefix, dir) in entries(&store.objects_dir())? {
        let is_prefix = prefix.len() == 2 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_prefix || !dir.is_dir() {
            r.problem(&dir, "unexpected entry in the object store");
            continue;
        }
        for (name, path) in entries(&dir)? {
            let Some(key) = ObjectKey::parse(&name).filter(|k| k.digest.hex().starts_with(&prefix))
            else {
                r.problem(
                    &path,
                    "unexpected file in the object store (not an object name)",
                );
                continue;
            };
            let meta = fs::symlink_metadata(&path).at("stat", &path)?;
            if !meta.is_file() {
                r.problem(&path, "object is not a regular file");
                damaged.insert(key.digest);
                continue;
            }
            r.objects += 1;
            r.object_bytes += meta.len();
            if meta.len() == 0 && key.digest != Digest::of(b"") {
                r.problem(
                    &path,
                    format!(
                        "zero-length object under the name of non-empty content {}",
                        key.digest
                    ),
                );
                damaged.insert(key.digest);
                continue;
            }
            let actual = match File::open(&path).and_then(digest_reader) {
                Ok((d, _)) => d,
                Err(e) => {
                    r.problem(&path, format!("cannot be read: {e}"));
                    damaged.insert(key.digest);
                    continue;
                }
            };
            if actual != key.digest {
                r.problem(
                    &path,
                    format!(
                        "unverified object: its content hashes to {actual}, not {}",
                        key.digest
                    ),
                );
                damaged.insert(key.digest);
                continue;
            }
            let mode = meta.mode() & 0o7777;
            if (mode, meta.uid(), meta.gid()) != (key.mode, key.uid, key.gid) {
                r.problem(
                    &path,
                    format!(
                        "object metadata is {mode:04o} {}:{}, its name says {:04o} {}:{}",
                        meta.uid(),
                        meta.gid(),
                        key.mode,
                        key.uid,
                        key.gid
                    ),
                );
            }
            good.entry(key.digest).or_insert(path);
        }
    }
    Ok((good, damaged))
}

fn check_layers(
    store: &AgentStore,
    good: &HashMap<Digest, PathBuf>,
    damaged: &BTreeSet<Digest>,
    r: &mut FsckReport,
) -> Result<(), AgentStoreError> {
    for (name, dir) in entries(&store.layers_dir())? {
        let Ok(diff_id) = Digest::from_hex(&name) else {
            r.problem(&dir, "unexpected entry in layers/");
            continue;
        };
        r.layers += 1;
        let mp = dir.join("meta.json");
        let meta: LayerMeta = match read_limited(&mp, 1 << 20)
            .map_err(|e| e.to_string())
            .and_then(|b| parse_strict("meta.json", &b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                r.problem(&mp, format!("layer metadata unreadable: {e}"));
                continue;
            }
        };
        if meta.diff_id != diff_id {
            r.problem(
                &mp,
                format!("describes layer {}, not {diff_id}", meta.diff_id),
            );
        }
        let split = dir.join(tarsplit::FILE_NAME);
        match tarsplit::rebuild(&split, &mut |d| good.get(d).cloned(), &mut io::sink()) {
            Ok(rb) => {
                if rb.diff_id != diff_id || rb.size != meta.size {
                    r.problem(
                        &dir,
                        format!(
                            "layer {diff_id} rebuilds to {} ({} bytes), not itself ({} bytes)",
                            rb.diff_id, rb.size, meta.size
                        ),
                    );
                }
                if rb.split_digest != meta.tar_split {
                    r.problem(
                        &split,
                        format!(
                            "tar-split hashes to {}, its metadata says {}",
                            rb.split_digest, meta.tar_split
                        ),
                    );
                }
            }
            Err(SplitError::MissingObject(d)) => {
                let state = if damaged.contains(&d) {
                    "damaged"
                } else {
                    "missing"
                };
                r.problem(
                    &dir,
                    format!("layer {diff_id} needs object {d}, which is {state}"),
                );
            }
            Err(e) => r.problem(&dir, format!("layer {diff_id} does not rebuild: {e}")),
        }
    }
    Ok(())
}

fn check_documents(store: &AgentStore, r: &mut FsckReport) -> Result<(), AgentStoreError> {
    for (name, path) in entries(&store.images_dir())? {
        r.documents += 1;
        let Ok(d) = Digest::from_hex(&name) else {
            r.problem(&path, "unexpected file in images/");
            continue;
        };
        match File::open(&path).and_then(digest_reader) {
            Ok((actual, _)) if actual == d => {}
            Ok((actual, _)) => r.problem(&path, format!("document hashes to {actual}")),
            Err(e) => r.problem(&path, format!("cannot be read: {e}")),
        }
    }
    let refs = match store.refs() {
        Ok(refs) => refs,
        Err(e) => {
            r.problem(&store.root().join("refs.json"), e.to_string());
            return Ok(());
        }
    };
    for (name, entry) in refs {
        r.names += 1;
        let doc = store.images_dir().join(entry.digest.hex());
        if !doc.is_file() {
            r.problem(
                &doc,
                format!("`{name}` points at {}, which is missing", entry.digest),
            );
        }
        check_image(store, &name, &entry.manifest, r);
    }
    Ok(())
}

/// A manifest reaches its config, its layers and its snapshot.
fn check_image(store: &AgentStore, what: &str, manifest: &Digest, r: &mut FsckReport) {
    let (_, config) = match store.image_config(manifest) {
        Ok(x) => x,
        Err(e) => {
            r.problem(
                &store.images_dir().join(manifest.hex()),
                format!("`{what}`: {e}"),
            );
            return;
        }
    };
    for d in &config.rootfs.diff_ids {
        if !store.has_layer(d) {
            r.problem(
                &store.layers_dir().join(d.hex()),
                format!("`{what}` needs layer {d}, which is missing"),
            );
        }
    }
    let chain = snapshot_id(&config.rootfs.diff_ids);
    if !store.has_snapshot(&chain) {
        r.problem(
            &store.snapshots_dir().join(chain.hex()),
            format!("`{what}` needs snapshot {chain}, which is missing"),
        );
    }
}

fn check_snapshots(store: &AgentStore, r: &mut FsckReport) -> Result<(), AgentStoreError> {
    for (name, dir) in entries(&store.snapshots_dir())? {
        r.snapshots += 1;
        let mp = dir.join("meta.json");
        let meta: SnapshotMeta = match read_limited(&mp, 1 << 20)
            .map_err(|e| e.to_string())
            .and_then(|b| parse_strict("meta.json", &b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                r.problem(&mp, format!("snapshot metadata unreadable: {e}"));
                continue;
            }
        };
        let chain = snapshot_id(&meta.diff_ids);
        if chain.hex() != name || meta.chain_id != chain {
            r.problem(&dir, format!("snapshot of layers with chain id {chain}"));
        }
        if !dir.join("rootfs").is_dir() {
            r.problem(&dir, "snapshot has no rootfs/");
        }
    }
    Ok(())
}

/// The GC-root hook: each line of each file under `roots/` is a manifest digest.
pub(super) fn read_roots(store: &AgentStore) -> Result<BTreeMap<Digest, PathBuf>, AgentStoreError> {
    let mut out = BTreeMap::new();
    for (_, path) in entries(&store.roots_dir())? {
        let text = fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let d: Digest = line.parse().map_err(|e| AgentStoreError::Corrupt {
                path: path.clone(),
                reason: format!("not a list of manifest digests: {e}"),
            })?;
            out.insert(d, path.clone());
        }
    }
    Ok(out)
}

fn check_roots(store: &AgentStore, r: &mut FsckReport) -> Result<(), AgentStoreError> {
    match read_roots(store) {
        Ok(roots) => {
            for (d, path) in roots {
                check_image(store, &format!("root {d} ({})", path.display()), &d, r);
            }
        }
        Err(e) => r.problem(&store.roots_dir(), e.to_string()),
    }
    Ok(())
}
