//! The record of each fleet rollout, so that `dts fleet rollback` knows what every robot ran
//! before. One JSON file per rollout, written atomically once the rollout ends:
//!
//! ```text
//! $DTS_HOME/fleet/rollouts/<id>.json   {"id", "kind": "deploy"|"rollback", "of", "started",
//!                                        "stack", "robots": [{"robot", "target", "before",
//!                                        "release", "state", "error"}]}
//! ```
//!
//! `id` is the UTC start time (`20261204T171500Z`) plus 4 hex digits, so names sort in time
//! order; `of` names the rollout a rollback undid.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{FleetRobot, RobotResult};

/// What a rollout was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `dts fleet deploy`.
    Deploy,
    /// `dts fleet rollback`.
    Rollback,
}

/// One robot of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotEntry {
    /// Its name.
    pub robot: String,
    /// What was connected to.
    pub target: String,
    /// The release it ran before (`None`: none, or it was not reached).
    pub before: Option<u64>,
    /// The release it runs after.
    pub release: Option<u64>,
    /// Its result's state.
    pub state: String,
    /// Its result's error.
    pub error: Option<String>,
}

/// A rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Its name.
    pub id: String,
    /// Deploy or rollback.
    pub kind: Kind,
    /// For a rollback, the rollout it undid.
    pub of: Option<String>,
    /// When it started (RFC 3339).
    pub started: String,
    /// `-f/--stack` as given.
    pub stack: Option<String>,
    /// Its robots, in order.
    pub robots: Vec<RobotEntry>,
}

/// `$DTS_HOME/fleet/rollouts`.
pub fn dir() -> PathBuf {
    crate::paths::dts_home().join("fleet").join("rollouts")
}

impl Rollout {
    /// The record of a rollout of `robots` that ended with `results`.
    pub fn new(
        kind: Kind,
        of: Option<String>,
        stack: Option<String>,
        robots: &[FleetRobot],
        results: &[RobotResult],
    ) -> Rollout {
        let (secs, nanos) = crate::util::time::now_nanos();
        let started = crate::util::time::rfc3339(secs);
        let stamp: String = started
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        Rollout {
            id: format!("{stamp}-{:04x}", (nanos ^ std::process::id()) & 0xffff),
            kind,
            of,
            started,
            stack,
            robots: robots
                .iter()
                .zip(results)
                .map(|(r, res)| RobotEntry {
                    robot: r.name.clone(),
                    target: r.target.clone(),
                    before: res.before,
                    release: res.release,
                    state: res.state.clone(),
                    error: res.error.clone(),
                })
                .collect(),
        }
    }

    /// Writes it under [`dir`].
    pub fn save(&self) -> Result<()> {
        self.save_in(&dir())
    }

    fn save_in(&self, dir: &Path) -> Result<()> {
        crate::util::fs::create_dir_all(dir)?;
        let json = serde_json::to_vec_pretty(self).expect("a record serialises");
        crate::util::fs::atomic_write(&dir.join(format!("{}.json", self.id)), &json)?;
        Ok(())
    }

    /// Rollout `id`, or without one the newest `dts fleet deploy`.
    pub fn load(id: Option<&str>) -> Result<Rollout> {
        load_in(&dir(), id)
    }
}

/// No such rollout: bad input.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoRollout(pub String);

fn load_in(dir: &Path, id: Option<&str>) -> Result<Rollout> {
    let path = match id {
        Some(id) => {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(NoRollout(format!("`{id}` is not a rollout id")).into());
            }
            let p = dir.join(format!("{id}.json"));
            if !p.is_file() {
                return Err(NoRollout(format!(
                    "no rollout `{id}` in {} (`ls` it for the ids)",
                    dir.display()
                ))
                .into());
            }
            p
        }
        None => {
            let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            };
            names.sort();
            let mut found = None;
            for p in names.into_iter().rev() {
                if read(&p)?.kind == Kind::Deploy {
                    found = Some(p);
                    break;
                }
            }
            found.ok_or_else(|| {
                NoRollout(format!(
                    "no `dts fleet deploy` recorded in {}",
                    dir.display()
                ))
            })?
        }
    };
    read(&path)
}

fn read(path: &Path) -> Result<Rollout> {
    let bytes = crate::util::fs::read_limited(path, 16 << 20)?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a rollout record", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(robot: &str, before: Option<u64>, release: Option<u64>) -> RobotResult {
        RobotResult {
            robot: robot.into(),
            release,
            bytes_sent: 1,
            duration_ms: 2,
            state: "committed".into(),
            error: None,
            before,
        }
    }

    #[test]
    fn records_round_trip_and_the_newest_deploy_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let robots: Vec<FleetRobot> = ["a", "b"]
            .iter()
            .map(|n| Inventory::default().robot(n))
            .collect();
        use super::super::Inventory;
        let mut first = Rollout::new(
            Kind::Deploy,
            None,
            None,
            &robots,
            &[result("a", None, Some(1)), result("b", Some(4), Some(5))],
        );
        first.id = "20260101T000000Z-0001".into();
        first.save_in(dir.path()).unwrap();
        let mut undo = first.clone();
        undo.kind = Kind::Rollback;
        undo.id = "20260101T000001Z-0001".into();
        undo.save_in(dir.path()).unwrap();
        let got = load_in(dir.path(), None).unwrap();
        assert_eq!(got, first);
        assert_eq!(got.robots[1].before, Some(4));
        assert_eq!(load_in(dir.path(), Some(&undo.id)).unwrap(), undo);
        for bad in ["../x", "nope", ""] {
            let e = load_in(dir.path(), Some(bad)).unwrap_err();
            assert!(e.downcast_ref::<NoRollout>().is_some(), "{bad}: {e}");
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(
            load_in(&empty.path().join("none"), None)
                .unwrap_err()
                .downcast_ref::<NoRollout>()
                .is_some()
        );
        assert!(first.id.len() > 10);
    }
}
