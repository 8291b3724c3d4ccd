//! Which releases keep their images on the robot, and freeing the rest: a 16–32 GB card fills
//! up after a few dozen deploys of a 1.5–3 GB stack if nothing ever goes.
//!
//! Kept: the releases a switch in progress may need (the one applied, the current one, its
//! previous), the `keep` newest releases that were ever committed (`robot.yaml`
//! `releases.keep`, default 3: the running one and two to roll back to), and every release
//! newer than the oldest of those (failed attempts in between: the next try of a student's
//! fix still finds their files). Their manifests are the release roots `dt-agent gc` keeps.
//!
//! When a switch ends, each image name that only dropped releases used, and that still points
//! at the manifest they ran, is removed (a name the user moved elsewhere since stays), and the
//! store's gc runs in the background: the answer to the deploy does not wait for it, and gc
//! takes the store's exclusive lock, so it waits for imports and transfers in flight.

use std::collections::{BTreeMap, BTreeSet};

use super::{ReleaseError, Releases};
use crate::agent::store::AgentStore;
use crate::api::ReleaseRecord;
use crate::oci::Reference;

/// The releases of `records` whose images stay, `pinned` included, ascending.
pub(super) fn kept(records: &BTreeMap<u64, ReleaseRecord>, pinned: &[u64], keep: u32) -> Vec<u64> {
    let committed: Vec<u64> = records
        .values()
        .rev()
        .filter(|r| r.committed_at.is_some())
        .map(|r| r.release)
        .take(keep as usize)
        .collect();
    let oldest = committed.last().copied().unwrap_or(u64::MAX);
    let mut out: BTreeSet<u64> = pinned.iter().copied().collect();
    out.extend(committed);
    out.extend(records.keys().filter(|n| **n > oldest));
    out.into_iter().collect()
}

/// Names (canonical, as `refs.json` files them) that releases outside `kept` gave their
/// services and no kept release uses, with the manifest each ran.
fn dropped_names(
    records: &BTreeMap<u64, ReleaseRecord>,
    kept: &[u64],
) -> BTreeMap<String, crate::oci::Digest> {
    let name_of = |image: &str| Reference::parse(image).ok().map(|r| r.to_string());
    let used: BTreeSet<String> = kept
        .iter()
        .filter_map(|n| records.get(n))
        .flat_map(|r| r.spec.services.iter())
        .filter_map(|s| name_of(&s.image_name))
        .collect();
    records
        .values()
        .filter(|r| !kept.contains(&r.release))
        .flat_map(|r| r.spec.services.iter())
        .filter_map(|s| Some((name_of(&s.image_name)?, s.manifest.clone())))
        .filter(|(name, _)| !used.contains(name))
        .collect()
}

impl Releases {
    /// After a switch ended with `pinned` (the release that runs, and the one it would go
    /// back to): writes the release roots, drops the names only older releases used, then
    /// collects the store in the background. Only the roots' failure is returned; the rest is
    /// logged, never the switch's (a full store is reported by the next transfer).
    pub(super) fn retire(&self, pinned: &[u64]) -> Result<(), ReleaseError> {
        // Read again: the caller's records predate the commit that just happened. The roots
        // are the one part that must not fail quietly: gc would collect from stale ones.
        let records = self.dir.all()?;
        self.write_roots(&records, pinned)?;
        let kept = kept(&records, pinned, self.keep);
        let names = dropped_names(&records, &kept);
        let root = self.root.clone();
        let removed = (|| -> Result<usize, ReleaseError> {
            let store = AgentStore::open(&root)?;
            let refs = store.refs()?;
            let mut removed = 0;
            for (name, manifest) in &names {
                if refs.get(name).is_some_and(|e| &e.manifest == manifest)
                    && let Ok(r) = Reference::parse(name)
                {
                    store.remove_name(&r)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })();
        if let Err(e) = &removed {
            eprintln!("dt-agent: releases: removing old releases' image names: {e}");
        }
        let spawned = std::thread::Builder::new()
            .name("release-gc".into())
            .spawn(move || {
                // The lowest CPU priority, for this thread only (Linux's nice is per thread):
                // the release that just started (ROS nodes coming up on a Pi) and any transfer
                // come first; freeing an older release's space can wait for idle time.
                let _ = rustix::process::setpriority_process(None, 19);
                let r = AgentStore::open(&root).and_then(|s| s.gc());
                match r {
                    Ok(g) if g.bytes_freed > 0 => eprintln!(
                        "dt-agent: releases: freed {} of older releases' images",
                        crate::util::human_size(g.bytes_freed)
                    ),
                    Ok(_) => {}
                    Err(e) => eprintln!("dt-agent: releases: gc after a switch: {e}"),
                }
            });
        if let Err(e) = spawned {
            eprintln!("dt-agent: releases: cannot start gc: {e}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ReleaseSpec, ReleaseState};

    fn rec(n: u64, committed: bool) -> ReleaseRecord {
        ReleaseRecord {
            release: n,
            state: if committed {
                ReleaseState::Committed
            } else {
                ReleaseState::RolledBack
            },
            created: String::new(),
            stack: "s".into(),
            services: BTreeMap::new(),
            previous: None,
            committed_at: committed.then(String::new),
            finished_at: None,
            reason: None,
            current: false,
            spec: ReleaseSpec {
                stack: "s".into(),
                services: Vec::new(),
                probation: std::time::Duration::from_secs(1),
            },
        }
    }

    fn records(v: &[(u64, bool)]) -> BTreeMap<u64, ReleaseRecord> {
        v.iter().map(|(n, c)| (*n, rec(*n, *c))).collect()
    }

    #[test]
    fn the_newest_committed_releases_and_failed_tries_between_them() {
        let r = records(&[(1, true), (2, true), (3, true), (4, true)]);
        assert_eq!(kept(&r, &[4], 3), [2, 3, 4]);
        // A rollback to 1 pins it.
        assert_eq!(kept(&r, &[1, 4], 3), [1, 2, 3, 4]);
        // Failed tries after the oldest kept commit stay; older ones go.
        let r = records(&[(1, false), (2, true), (3, false), (4, true), (5, false)]);
        assert_eq!(kept(&r, &[4], 2), [2, 3, 4, 5]);
        assert_eq!(kept(&r, &[4], 1), [4, 5]);
    }
}
