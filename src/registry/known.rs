//! Where we have seen blobs: per registry, the repositories each digest was pulled from or
//! pushed to, kept in `registry-blobs.json` under the store root.
//!
//! A push uses it to ask the registry for a cross-repository mount (`POST
//! …/blobs/uploads/?mount=<digest>&from=<repo>`) instead of uploading bytes the registry
//! already holds under another name. It is only a hint: a stale entry costs one refused mount
//! (the registry then opens a normal upload), so losing the file loses nothing but speed.
//! Writers merge under a lock file and replace the file atomically, so two dts processes do
//! not drop each other's entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::oci::Digest;
use crate::store::Store;
use crate::util::fs::{Lock, PathError, atomic_write, lock_file, read_limited};

const FILE: &str = "registry-blobs.json";
const LOCK: &str = "registry-blobs.lock";
/// Enough to find a mount source; more would only grow the file.
const MAX_REPOS_PER_BLOB: usize = 4;
/// The file is a hint; a corrupt or absurdly large one is ignored rather than parsed.
const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// registry → digest → repositories, most recent first.
    registries: BTreeMap<String, BTreeMap<Digest, Vec<String>>>,
}

/// A read-only snapshot of the record, taken when an operation starts.
#[derive(Debug, Default)]
pub(crate) struct KnownBlobs {
    record: Record,
}

impl KnownBlobs {
    /// Loads the record; a missing or unreadable file is an empty record.
    pub fn load(store: &Store) -> KnownBlobs {
        KnownBlobs {
            record: read(&store.root().join(FILE)).unwrap_or_default(),
        }
    }

    /// Repositories of `registry` other than `except` known to hold `digest`, most recent first.
    pub fn sources(&self, registry: &str, digest: &Digest, except: &str) -> Vec<String> {
        self.record
            .registries
            .get(registry)
            .and_then(|blobs| blobs.get(digest))
            .map(|repos| repos.iter().filter(|r| *r != except).cloned().collect())
            .unwrap_or_default()
    }
}

fn read(path: &Path) -> Option<Record> {
    let bytes = read_limited(path, MAX_FILE_BYTES).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Records that `registry`/`repository` holds each of `digests`.
pub(crate) fn remember(
    store: &Store,
    registry: &str,
    repository: &str,
    digests: &[Digest],
) -> Result<(), PathError> {
    if digests.is_empty() {
        return Ok(());
    }
    let path: PathBuf = store.root().join(FILE);
    let lock_path = store.root().join(LOCK);
    let _lock = lock_file(&lock_path, Lock::Exclusive)?;
    let mut record = read(&path).unwrap_or_default();
    let blobs = record.registries.entry(registry.to_string()).or_default();
    for d in digests {
        let repos = blobs.entry(d.clone()).or_default();
        repos.retain(|r| r != repository);
        repos.insert(0, repository.to_string());
        repos.truncate(MAX_REPOS_PER_BLOB);
    }
    let bytes = serde_json::to_vec(&record).expect("the record always serialises");
    atomic_write(&path, &bytes)
    // The lock is released when `lock` is dropped.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_most_recent_first_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        remember(&store, "r:1", "x/one", &[a.clone(), b.clone()]).unwrap();
        remember(&store, "r:1", "x/two", std::slice::from_ref(&a)).unwrap();
        let k = KnownBlobs::load(&store);
        assert_eq!(k.sources("r:1", &a, "x/three"), ["x/two", "x/one"]);
        assert_eq!(k.sources("r:1", &a, "x/two"), ["x/one"]);
        assert_eq!(k.sources("r:1", &b, "x/one"), Vec::<String>::new());
        assert!(k.sources("other:1", &a, "").is_empty());
        for i in 0..10 {
            remember(&store, "r:1", &format!("n/{i}"), std::slice::from_ref(&a)).unwrap();
        }
        assert_eq!(
            KnownBlobs::load(&store).sources("r:1", &a, "").len(),
            MAX_REPOS_PER_BLOB
        );
        std::fs::write(store.root().join(FILE), b"garbage").unwrap();
        assert!(KnownBlobs::load(&store).sources("r:1", &a, "").is_empty());
        remember(&store, "r:1", "x/one", std::slice::from_ref(&a)).unwrap();
        assert_eq!(KnownBlobs::load(&store).sources("r:1", &a, ""), ["x/one"]);
    }
}
