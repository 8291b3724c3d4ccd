//! The build context's file-hash cache: the sha256 of each context file a build hashed for a
//! COPY/ADD cache key, kept between builds so an unchanged file is not read again (git's index,
//! BuildKit's contenthash cache). A file's hash is reused only when its path and its
//! `(dev, ino, size, mtime ns, ctime ns, mode)` are all unchanged.
//!
//! ```text
//! $DTS_HOME/build/context-hashes/
//!   <sha256 of the canonical context root>.json   one cache per context root
//! ```
//!
//! A cache file is one header line, `dts-context-hashes 1 <sha256 of the rest>`, then JSON
//! `{"root": "/abs/ctx", "entries": {"rel/path": [dev, ino, size, mtime_ns, ctime_ns, mode,
//! "sha256 hex"]}}`. It is written atomically at the end of a build; one that does not parse,
//! whose checksum, version or root is not ours, or that is larger than [`MAX_BYTES`] is ignored
//! (and replaced by the next build), never trusted. At most [`MAX_ENTRIES`] entries per root
//! and [`MAX_CACHES`] roots are kept (the least recently written go first).
//!
//! Racy files (git's "racily clean" rule): a file whose mtime or ctime is not older than the
//! moment it was hashed by more than [`RACY_NS`] could have been changed again within the same
//! timestamp tick, so its hash is never stored; and on load, entries whose times are not older
//! than the cache file's own write time by that margin are dropped. The margin covers coarse
//! file-system clocks (kernel ticks; FAT's 2 s) so a same-tick edit is always re-hashed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::util::fs::{PathContext, PathError, atomic_write, create_dir_all, read_limited};

/// The header's first words; the number after it is the format version.
const MAGIC: &str = "dts-context-hashes";
/// The format version this code reads and writes.
const VERSION: u32 = 1;
/// The most entries kept per context root.
pub const MAX_ENTRIES: usize = 1 << 20;
/// The most context roots with a cache.
pub const MAX_CACHES: usize = 64;
/// A cache file larger than this is ignored.
pub const MAX_BYTES: u64 = 256 << 20;
/// How much older than "now" a file's times must be for its hash to be stored (2 s: FAT's
/// granularity, the coarsest a context could sit on).
pub const RACY_NS: i64 = 2_000_000_000;

/// What identifies one version of a file: `(dev, ino, size, mtime ns, ctime ns, mode)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat(u64, u64, u64, i64, i64, u32);

impl FileStat {
    /// The stat of `meta`.
    pub fn of(meta: &fs::Metadata) -> FileStat {
        FileStat(
            meta.dev(),
            meta.ino(),
            meta.len(),
            ns(meta.mtime(), meta.mtime_nsec()),
            ns(meta.ctime(), meta.ctime_nsec()),
            meta.mode(),
        )
    }

    /// The later of mtime and ctime, in ns since the epoch.
    fn newest(&self) -> i64 {
        self.3.max(self.4)
    }
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry(u64, u64, u64, i64, i64, u32, String);

impl Entry {
    fn new(stat: FileStat, hash: &[u8; 32]) -> Entry {
        let FileStat(a, b, c, d, e, f) = stat;
        Entry(a, b, c, d, e, f, hex::encode(hash))
    }

    fn stat(&self) -> FileStat {
        FileStat(self.0, self.1, self.2, self.3, self.4, self.5)
    }

    fn hash(&self) -> Option<[u8; 32]> {
        hex::decode(&self.6).ok()?.try_into().ok()
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    root: String,
    entries: BTreeMap<String, Entry>,
}

#[derive(Default)]
struct Inner {
    /// What the cache file held (racy entries dropped).
    loaded: HashMap<String, Entry>,
    /// Files this build hashed or checked: their stat, hash, and whether it may be stored.
    seen: HashMap<String, (FileStat, [u8; 32], bool)>,
}

/// One context root's file hashes: loaded at the start of a build, saved at its end, shared by
/// the build's platform threads.
pub struct HashCache {
    file: Option<PathBuf>,
    root: String,
    inner: Mutex<Inner>,
}

impl HashCache {
    /// A cache that is never loaded nor saved: each file is hashed once per build.
    pub fn memory() -> HashCache {
        HashCache {
            file: None,
            root: String::new(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The cache of context `root`, kept under `dir`. An unreadable or invalid cache file is
    /// ignored: the cache starts empty.
    pub fn load(dir: &Path, root: &Path) -> HashCache {
        let root = fs::canonicalize(root)
            .unwrap_or_else(|_| root.to_path_buf())
            .to_string_lossy()
            .into_owned();
        let file = dir.join(format!("{}.json", hex::encode(Sha256::digest(&root))));
        let loaded = read(&file, &root).unwrap_or_default();
        HashCache {
            file: Some(file),
            root,
            inner: Mutex::new(Inner {
                loaded,
                seen: HashMap::new(),
            }),
        }
    }

    /// Where this cache is saved, if anywhere.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The sha256 of the file at `host` (`rel` to the context root), from the cache when its
    /// stat is unchanged, else read and hashed.
    pub fn hash(&self, rel: &str, host: &Path) -> Result<[u8; 32], PathError> {
        let before = FileStat::of(&fs::metadata(host).at("stat", host)?);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((stat, hash, _)) = inner.seen.get(rel)
                && *stat == before
            {
                return Ok(*hash);
            }
            if let Some(e) = inner.loaded.get(rel)
                && e.stat() == before
                && let Some(hash) = e.hash()
            {
                inner.seen.insert(rel.to_string(), (before, hash, true));
                return Ok(hash);
            }
        }
        let started = now_ns();
        let hash = hash_file(host)?;
        let after = FileStat::of(&fs::metadata(host).at("stat", host)?);
        // Changed while read, or changed within the racy margin: usable for this build (as an
        // uncached build would have read it), never stored.
        let storable = after == before && before.newest() < started.saturating_sub(RACY_NS);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seen.insert(rel.to_string(), (before, hash, storable));
        Ok(hash)
    }

    /// Writes the cache: the storable entries this build saw, then what the file held for
    /// files this build did not look at, up to [`MAX_ENTRIES`]. Then drops the least recently
    /// written caches of other roots past [`MAX_CACHES`].
    pub fn save(&self) -> Result<(), PathError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.seen.is_empty() {
            return Ok(());
        }
        let mut entries: BTreeMap<String, Entry> = inner
            .seen
            .iter()
            .filter(|(_, (_, _, storable))| *storable)
            .map(|(rel, (stat, hash, _))| (rel.clone(), Entry::new(*stat, hash)))
            .take(MAX_ENTRIES)
            .collect();
        for (rel, e) in &inner.loaded {
            if entries.len() >= MAX_ENTRIES {
                break;
            }
            if !inner.seen.contains_key(rel) {
                entries.insert(rel.clone(), e.clone());
            }
        }
        let body = serde_json::to_vec(&Body {
            root: self.root.clone(),
            entries,
        })
        .expect("the cache serializes");
        let mut bytes =
            format!("{MAGIC} {VERSION} {}\n", hex::encode(Sha256::digest(&body))).into_bytes();
        bytes.extend_from_slice(&body);
        let dir = file.parent().unwrap_or(Path::new("."));
        create_dir_all(dir)?;
        atomic_write(file, &bytes)?;
        prune(dir, file);
        Ok(())
    }
}

/// The entries of a valid cache file for `root`, racy ones dropped; None if it is missing or
/// invalid in any way.
fn read(file: &Path, root: &str) -> Option<HashMap<String, Entry>> {
    let bytes = read_limited(file, MAX_BYTES).ok()?;
    let written = fs::metadata(file).ok()?;
    let written = ns(written.mtime(), written.mtime_nsec());
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let body = &bytes[nl + 1..];
    let mut words = header.split(' ');
    if words.next()? != MAGIC || words.next()? != VERSION.to_string() {
        return None;
    }
    if words.next()? != hex::encode(Sha256::digest(body)) || words.next().is_some() {
        return None;
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    if body.root != root || body.entries.len() > MAX_ENTRIES {
        return None;
    }
    Some(
        body.entries
            .into_iter()
            .filter(|(_, e)| e.hash().is_some() && e.stat().newest() < written - RACY_NS)
            .collect(),
    )
}

/// Removes the oldest cache files (and stale temp files) of `dir` past [`MAX_CACHES`], keeping
/// `keep`. Best effort: a cache is only an optimisation.
fn prune(dir: &Path, keep: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut caches: Vec<(SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path() != keep && e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if caches.len() < MAX_CACHES {
        return;
    }
    caches.sort();
    for (_, p) in &caches[..caches.len() + 1 - MAX_CACHES] {
        let _ = fs::remove_file(p);
    }
}

/// The sha256 of a file's bytes.
pub fn hash_file(path: &Path) -> Result<[u8; 32], PathError> {
    let mut f = fs::File::open(path).at("open", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).at("read", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - std::time::Duration::from_secs(secs);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn reuses_unchanged_files_and_rehashes_changed_ones() {
        let d = tempfile::tempdir().unwrap();
        let (dir, root) = (d.path().join("cache"), d.path().join("ctx"));
        fs::create_dir_all(&root).unwrap();
        let f = root.join("a");
        fs::write(&f, "one").unwrap();
        let c = HashCache::load(&dir, &root);
        assert_eq!(c.hash("a", &f).unwrap(), hash_file(&f).unwrap());
        c.save().unwrap();
        // Just written (ctime is now): racy, so not stored.
        let c = HashCache::load(&dir, &root);
        assert!(c.inner.lock().unwrap().loaded.is_empty());

        // A stored entry whose stat matches is used without reading the file: prove it by
        // planting a wrong hash under the file's true stat in an old enough cache.
        let stat = FileStat::of(&fs::metadata(&f).unwrap());
        let c = HashCache::load(&dir, &root);
        c.inner
            .lock()
            .unwrap()
            .seen
            .insert("a".into(), (stat, [7; 32], true));
        c.save().unwrap();
        let loaded = read(c.file().unwrap(), &c.root).unwrap();
        // The file's ctime is within RACY_NS of the cache's write: dropped on load.
        assert!(loaded.is_empty(), "racily clean entries are not trusted");
        let mut c = HashCache::load(&dir, &root);
        let entry = Entry::new(stat, &[7; 32]);
        c.inner.get_mut().unwrap().loaded.insert("a".into(), entry);
        assert_eq!(c.hash("a", &f).unwrap(), [7; 32], "stat unchanged: reused");

        // Same size, other mtime ns: re-hashed.
        fs::write(&f, "two").unwrap();
        age(&f, 10);
        let mut c = HashCache::load(&dir, &root);
        let old = FileStat(stat.0, stat.1, stat.2, stat.3, stat.4, stat.5);
        c.inner
            .get_mut()
            .unwrap()
            .loaded
            .insert("a".into(), Entry::new(old, &[7; 32]));
        assert_eq!(c.hash("a", &f).unwrap(), hash_file(&f).unwrap());
    }

    #[test]
    fn invalid_or_foreign_caches_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let (dir, root) = (d.path().join("cache"), d.path().join("ctx"));
        fs::create_dir_all(&root).unwrap();
        let c = HashCache::load(&dir, &root);
        let file = c.file().unwrap().to_path_buf();
        fs::create_dir_all(&dir).unwrap();
        let body = br#"{"root":"/elsewhere","entries":{}}"#;
        let header = format!("{MAGIC} {VERSION} {}\n", hex::encode(Sha256::digest(body)));
        for bytes in [
            b"garbage".to_vec(),
            [header.as_bytes(), body].concat(),
            [b"dts-context-hashes 2 00\n".as_slice(), body].concat(),
            [header.as_bytes(), b"{}"].concat(),
        ] {
            fs::write(&file, &bytes).unwrap();
            age(&file, 0);
            assert!(read(&file, &c.root).is_none());
            let c = HashCache::load(&dir, &root);
            assert!(c.inner.lock().unwrap().loaded.is_empty());
        }
    }
}
