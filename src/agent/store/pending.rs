//! What an unfinished import keeps: the layers it committed, protected from `gc` until a rerun
//! finishes the job, and where each archive entry's layer was found, so a rerun can skip a
//! layer it already holds by only hashing it.
//!
//! ```text
//! imports/<import-pid-…>.pending   diff_ids (`sha256:…`, one a line) of the layers an import
//!                                  committed so far; flocked while it runs, removed when it
//!                                  finishes (or refuses the archive)
//! imports/sources/<64 hex>         `sha256:<diff_id>`: the layer the archive entry so named
//!                                  (`docker save`'s `<v1 id>/layer.tar`, or a compressed
//!                                  `blobs/sha256/<hex>`) turned out to be
//! ```
//!
//! An import commits each layer as it finishes, so an import killed midway (or whose stream
//! was cut) has committed layers no name reaches yet. `gc` keeps the layers of every
//! `.pending` file that is locked (its import runs) or younger than [`IN_FLIGHT_GRACE`] (a
//! crashed import a rerun will resume), and removes older ones. A rerun that finishes removes
//! the dead `.pending` files whose layers it used all of: it superseded them. A source entry
//! is only a hint: the rerun still hashes the entry, and one whose layer is gone is ignored
//! (and swept by `gc`).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use super::gc::IN_FLIGHT_GRACE;
use super::{AgentStore, AgentStoreError, io_err};
use crate::oci::Digest;
use crate::util::fs::{PathContext, atomic_write, read_limited, temp_name};

const SUFFIX: &str = ".pending";

/// One import's `.pending` file, made when it commits its first layer.
pub(super) struct Pending {
    path: PathBuf,
    file: Option<File>,
    listed: usize,
}

impl Pending {
    pub(super) fn new(store: &AgentStore) -> Pending {
        Pending {
            path: store
                .imports_dir()
                .join(format!("{}{SUFFIX}", temp_name("import-"))),
            file: None,
            listed: 0,
        }
    }

    /// Lists `diff_id` (durably) before its layer is committed.
    pub(super) fn add(&mut self, diff_id: &Digest) -> Result<(), AgentStoreError> {
        if self.file.is_none() {
            let f = File::options()
                .append(true)
                .create_new(true)
                .open(&self.path)
                .at("create", &self.path)?;
            flock(&f, FlockOperation::NonBlockingLockExclusive)
                .map_err(io::Error::from)
                .at("lock", &self.path)?;
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("just made");
        writeln!(f, "{diff_id}").at("write", &self.path)?;
        f.sync_data().at("sync", &self.path)?;
        self.listed += 1;
        Ok(())
    }

    /// The import refused its archive: what it committed is garbage for `gc`.
    pub(super) fn abandon(self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// The import finished: its file goes, and so do dead ones whose layers it `used` all of.
    pub(super) fn finish(
        self,
        store: &AgentStore,
        used: &BTreeSet<Digest>,
    ) -> Result<(), AgentStoreError> {
        if self.file.is_some() {
            fs::remove_file(&self.path).at("remove", &self.path)?;
        }
        for (path, _) in dead(store)? {
            if read_list(&path)?.is_subset(used) {
                fs::remove_file(&path).at("remove", &path)?;
            }
        }
        Ok(())
    }
}

/// `.pending` files whose import is gone (their flock is free), with their mtime.
fn dead(store: &AgentStore) -> Result<Vec<(PathBuf, i64)>, AgentStoreError> {
    let dir = store.imports_dir();
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).at("list", &dir)? {
        let p = e.at("list", &dir)?.path();
        if !p.to_string_lossy().ends_with(SUFFIX) {
            continue;
        }
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("open", &p, e)),
        };
        match flock(&f, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => continue, // its import runs
            Err(e) => return Err(io_err("lock", &p, e.into())),
        }
        let mtime = f.metadata().at("stat", &p)?.mtime();
        out.push((p, mtime));
    }
    Ok(out)
}

fn read_list(path: &Path) -> Result<BTreeSet<Digest>, AgentStoreError> {
    let bytes = read_limited(path, 64 << 20)?;
    // A torn last line (a crash mid-write) names nothing committed.
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect())
}

/// For `gc`: the layers unfinished imports protect. Files older than [`IN_FLIGHT_GRACE`] are
/// removed (their import is not coming back), and so are sources naming no kept layer.
pub(super) fn protected(store: &AgentStore) -> Result<BTreeSet<Digest>, AgentStoreError> {
    let young_after = std::time::SystemTime::now()
        .checked_sub(IN_FLIGHT_GRACE)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = BTreeSet::new();
    let dir = store.imports_dir();
    for e in fs::read_dir(&dir).at("list", &dir)? {
        let p = e.at("list", &dir)?.path();
        if !p.to_string_lossy().ends_with(SUFFIX) {
            continue;
        }
        // gc holds the store exclusively, so no import runs: every file here is dead.
        let mtime = fs::metadata(&p).at("stat", &p)?.mtime();
        if mtime >= young_after {
            out.extend(read_list(&p)?);
        } else {
            fs::remove_file(&p).at("remove", &p)?;
        }
    }
    Ok(out)
}

/// For `gc`, after the sweep: removes sources whose layer is gone.
pub(super) fn sweep_sources(store: &AgentStore) -> Result<(), AgentStoreError> {
    let dir = store.imports_dir().join("sources");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", &dir, e)),
    };
    for e in rd {
        let p = e.at("list", &dir)?.path();
        if source_of(&p).is_none_or(|d| !store.has_layer(&d)) {
            fs::remove_file(&p).at("remove", &p)?;
        }
    }
    Ok(())
}

fn source_of(path: &Path) -> Option<Digest> {
    let bytes = read_limited(path, 256).ok()?;
    String::from_utf8_lossy(&bytes).trim().parse().ok()
}

/// The key of an archive entry that names its layer without being its content digest:
/// `<64 hex>/layer.tar` (docker's v1 layer id) or a compressed `blobs/sha256/<64 hex>`.
pub(super) fn source_key(path: &str) -> Option<&str> {
    let key = path
        .strip_suffix("/layer.tar")
        .or_else(|| path.strip_prefix("blobs/sha256/"))?;
    (key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())).then_some(key)
}

/// The layer an entry was found to be last time, if the store still holds it.
pub(super) fn source(store: &AgentStore, key: &str) -> Option<Digest> {
    let d = source_of(&store.imports_dir().join("sources").join(key))?;
    store.has_layer(&d).then_some(d)
}

/// Records that the entry `key` is layer `diff_id`.
pub(super) fn set_source(
    store: &AgentStore,
    key: &str,
    diff_id: &Digest,
) -> Result<(), AgentStoreError> {
    let dir = store.imports_dir().join("sources");
    if !dir.is_dir() {
        crate::util::fs::create_dir_all(&dir)?;
    }
    atomic_write(&dir.join(key), format!("{diff_id}\n").as_bytes())?;
    Ok(())
}

/// Forgets a source that turned out wrong.
pub(super) fn drop_source(store: &AgentStore, key: &str) {
    let _ = fs::remove_file(store.imports_dir().join("sources").join(key));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_keeps_young_and_running_imports_layers_and_forgets_old_ones() {
        let t = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&t.path().join("store")).unwrap();
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        // A running import (its file flocked) and a dead young one: both protect their layers.
        let mut live = Pending::new(&store);
        live.add(&a).unwrap();
        let mut dead = Pending::new(&store);
        dead.add(&b).unwrap();
        let dead_path = dead.path.clone();
        drop(dead);
        assert_eq!(
            protected(&store).unwrap(),
            BTreeSet::from([a.clone(), b.clone()])
        );
        // A day old: its import is not coming back.
        let old =
            std::time::SystemTime::now() - IN_FLIGHT_GRACE - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&dead_path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(protected(&store).unwrap(), BTreeSet::from([a.clone()]));
        assert!(!dead_path.exists());
        // A finished import removes its own file and the dead ones it superseded, not others.
        let mut other = Pending::new(&store);
        other.add(&c).unwrap();
        let other_path = other.path.clone();
        drop(other);
        let mut superseded = Pending::new(&store);
        superseded.add(&a).unwrap();
        let superseded_path = superseded.path.clone();
        drop(superseded);
        live.finish(&store, &BTreeSet::from([a.clone()])).unwrap();
        assert!(!superseded_path.exists());
        assert!(other_path.exists());
        assert_eq!(protected(&store).unwrap(), BTreeSet::from([c]));
    }

    #[test]
    fn source_keys_are_docker_v1_ids_and_blob_digests() {
        let hex = Digest::of(b"x").hex().to_string();
        assert_eq!(source_key(&format!("{hex}/layer.tar")), Some(hex.as_str()));
        assert_eq!(
            source_key(&format!("blobs/sha256/{hex}")),
            Some(hex.as_str())
        );
        assert_eq!(source_key("abc/layer.tar"), None);
        assert_eq!(source_key("manifest.json"), None);
    }
}
