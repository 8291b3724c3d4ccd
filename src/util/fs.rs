//! File operations whose errors carry the path, plus the atomic-write and fsync-directory steps
//! every commit point uses (write a temp file, fsync it, rename it, fsync the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O error with the path it happened on and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action} `{}`: {source}", path.display())]
pub struct PathError {
    /// What was being done ("open", "rename", …).
    pub action: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// Attaches a path and an action to an I/O result.
pub trait PathContext<T> {
    /// `action` on `path` failed.
    fn at(self, action: &'static str, path: &Path) -> Result<T, PathError>;
}

impl<T> PathContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, PathError> {
        self.map_err(|source| PathError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// How [`lock_file`] locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// Many holders at once (readers, writers of content-addressed data).
    Shared,
    /// One holder (rewrites of a mutable file, garbage collection).
    Exclusive,
}

/// Opens (creating) the lock file at `path` and takes an flock on it, waiting for other
/// processes. The lock lasts as long as the returned file is open.
pub fn lock_file(path: &Path, how: Lock) -> Result<File, PathError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at("open", path)?;
    let op = match how {
        Lock::Shared => rustix::fs::FlockOperation::LockShared,
        Lock::Exclusive => rustix::fs::FlockOperation::LockExclusive,
    };
    rustix::fs::flock(&f, op)
        .map_err(io::Error::from)
        .at("lock", path)?;
    Ok(f)
}

/// fsyncs a directory so a rename or create inside it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("sync directory", dir)
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> Result<(), PathError> {
    fs::create_dir_all(dir).at("create directory", dir)
}

/// A name for a temp file that no other process or thread will pick: `.<pid>-<n>-<nanos>.tmp`.
/// The pid lets a later process tell whether the owner is still alive.
pub fn temp_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}-{n}-{nanos}.tmp", std::process::id())
}

/// The pid encoded in a [`temp_name`], if any.
pub fn temp_owner(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory. Readers see the old content or the new, never a mix.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(temp_name("."));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at("create", &tmp)?;
        f.write_all(bytes).at("write", &tmp)?;
        f.sync_all().at("sync", &tmp)?;
        fs::rename(&tmp, path).at("rename into place", path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a whole file, refusing files larger than `limit` (JSON documents we parse in memory).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, PathError> {
    let f = File::open(path).at("open", path)?;
    let len = f.metadata().at("stat", path)?.len();
    if len > limit {
        return Err(PathError {
            action: "read",
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is {len} bytes, more than the {limit} allowed"),
            ),
        });
    }
    let mut buf = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::Read::take(f, limit + 1), &mut buf).at("read", path)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_names_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = atomic_write(&dir.path().join("missing/f"), b"x").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = read_limited(&p, 1).unwrap_err();
        assert!(e.to_string().contains("more than the 1 allowed"), "{e}");
    }

    #[test]
    fn temp_names_carry_the_pid() {
        let n = temp_name("in-");
        assert_eq!(temp_owner(&n, "in-"), Some(std::process::id()));
        assert!(pid_alive(std::process::id()));
    }
}
