//! What the robot remembers about releases, under `$DT_AGENT_ROOT/releases/`. Every file is
//! written atomically (temp file, fsync, rename, fsync the directory), so after a power loss
//! each holds its old content or its new, never a mix.
//!
//! ```text
//! releases/
//!   <N>.json      one release: number, state, times, stack, services, the spec it applied
//!   current       the number of the release that runs (absent before the first commit)
//!   switch.json   present only while containers are being switched: what to finish or undo
//!                 if the agent stops half-way (see [`Journal`])
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ReleaseError;
pub use crate::api::release::{ReleaseRecord, ReleaseState};
use crate::util::fs::{PathContext, PathError, atomic_write, read_limited, sync_dir};

/// What a switch was doing, so a restarted agent can finish or undo it (`releases/switch.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// What kind of switch.
    pub op: SwitchOp,
    /// The release being switched to.
    pub release: u64,
    /// The release being switched from (the current one), if any.
    pub from: Option<u64>,
    /// When the switch began.
    pub started: String,
}

/// Kinds of switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchOp {
    /// A new release on probation: an interrupted one goes back to `from`.
    Deploy,
    /// Back to a release that was committed before: an interrupted one is finished.
    Rollback,
}

/// The `releases/` directory.
pub(crate) struct Dir {
    path: PathBuf,
}

/// A sane ceiling for one record (a spec with many services is a few tens of kB).
const MAX_RECORD_BYTES: u64 = 16 << 20;

fn parse<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ReleaseError> {
    let bytes = read_limited(path, MAX_RECORD_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| ReleaseError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), PathError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("records serialise");
    bytes.push(b'\n');
    atomic_write(path, &bytes)
}

impl Dir {
    /// `root/releases`, created if needed.
    pub(crate) fn open(root: &Path) -> Result<Dir, PathError> {
        let path = root.join("releases");
        crate::util::fs::create_dir_all(&path)?;
        Ok(Dir { path })
    }

    fn record_path(&self, n: u64) -> PathBuf {
        self.path.join(format!("{n}.json"))
    }

    /// Every release, by number, with `current` filled in.
    pub(crate) fn all(&self) -> Result<BTreeMap<u64, ReleaseRecord>, ReleaseError> {
        let current = self.current()?;
        let mut out = BTreeMap::new();
        for e in fs::read_dir(&self.path).at("list", &self.path)? {
            let e = e.at("list", &self.path)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(n) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let mut r: ReleaseRecord = parse(&e.path())?;
            if r.release != n {
                return Err(ReleaseError::Corrupt {
                    path: e.path(),
                    reason: format!("it records release {} under the name {n}", r.release),
                });
            }
            r.current = current == Some(n);
            out.insert(n, r);
        }
        Ok(out)
    }

    /// One release.
    pub(crate) fn get(&self, n: u64) -> Result<ReleaseRecord, ReleaseError> {
        let p = self.record_path(n);
        if !p.exists() {
            return Err(ReleaseError::NoRelease(n));
        }
        let mut r: ReleaseRecord = parse(&p)?;
        r.current = self.current()? == Some(n);
        Ok(r)
    }

    /// Writes a release's record.
    pub(crate) fn save(&self, r: &ReleaseRecord) -> Result<(), PathError> {
        let mut r = r.clone();
        r.current = false;
        write(&self.record_path(r.release), &r)
    }

    /// The number of the release that runs.
    pub(crate) fn current(&self) -> Result<Option<u64>, ReleaseError> {
        read_current(&self.path.join("current"))
    }

    /// Records which release runs.
    pub(crate) fn set_current(&self, n: Option<u64>) -> Result<(), PathError> {
        let p = self.path.join("current");
        match n {
            Some(n) => atomic_write(&p, format!("{n}\n").as_bytes()),
            None => match fs::remove_file(&p) {
                Ok(()) => sync_dir(&self.path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).at("remove", &p),
            },
        }
    }

    /// The interrupted switch, if any.
    pub(crate) fn journal(&self) -> Result<Option<Journal>, ReleaseError> {
        let p = self.path.join("switch.json");
        if !p.exists() {
            return Ok(None);
        }
        parse(&p).map(Some)
    }

    /// Records a switch about to start.
    pub(crate) fn begin(&self, j: &Journal) -> Result<(), PathError> {
        write(&self.path.join("switch.json"), j)
    }

    /// Records that the switch is over.
    pub(crate) fn end(&self) -> Result<(), PathError> {
        let p = self.path.join("switch.json");
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at("remove", &p),
        }
    }
}

/// `releases/current` of the agent at `root`, for readers outside the daemon
/// (`dt-agent status`).
pub fn current_release(root: &Path) -> Option<u64> {
    read_current(&root.join("releases").join("current"))
        .ok()
        .flatten()
}

fn read_current(p: &Path) -> Result<Option<u64>, ReleaseError> {
    match fs::read_to_string(p) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ReleaseError::Corrupt {
                path: p.to_path_buf(),
                reason: format!("`{}` is not a release number", s.trim()),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PathError {
            action: "read",
            path: p.to_path_buf(),
            source: e,
        }
        .into()),
    }
}
