//! Which services of a switch start their new container before the old one stops, and the
//! old ones' stops that go on in the background (docs/architecture.md, "Releases").
//!
//! A service whose container is replaced starts its new container first — the old one is
//! retired (`Manager::retire`: renamed out of the way, still running) and stopped once the new
//! ones run, with its full stop grace period, while probation goes on — unless:
//! - either container holds an exclusive device role (the robot profile's `exclusive`): the
//!   old holder must be gone before the new one starts, so two never drive the hardware;
//! - either publishes ports (`-p`): the host port cannot be bound twice;
//! - the old one runs on the robot's own network and holds a fixed port (a TCP listener or
//!   bound UDP socket outside the ephemeral range: roscore's 11311, a dashboard's 80;
//!   `container::ports`): the new one would fail to bind it while both run;
//! - the old container is not running, or was recorded by an older agent (no runtime id of
//!   its own), or the switch is a rollback after a failure (quick, and it must not overlap the
//!   release that failed).
//!
//! Those are stopped first, as before. A retired container still being stopped when the next
//! switch begins is left to its thread (it holds no exclusive role and is no service's
//! container any more), so back-to-back deploys never wait out an old grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::agent::container::{ContainerInfo, Manager, ports};
use crate::api::NetworkMode;

use super::ReleaseRecord;
use super::spec::{ReleaseSpec, ServiceSpec};

/// The old containers of `replaced` (service spec → its running container and that
/// container's spec) that can hand over in parallel.
pub(super) fn parallel<'a>(
    manager: &Manager,
    replaced: impl Iterator<Item = (&'a ServiceSpec, &'a ContainerInfo, Option<&'a ServiceSpec>)>,
) -> BTreeSet<String> {
    replaced
        .filter(|(new, old, old_spec)| {
            old.state == "running"
                && manager.can_retire(&old.name)
                && manager
                    .exclusive_roles(&new.container.device_roles)
                    .is_empty()
                && manager.exclusive_roles(&old.device_roles).is_empty()
                && new.container.ports.is_empty()
                && old_spec.is_none_or(|s| s.container.ports.is_empty())
                && !(old_spec.is_none_or(|s| s.container.network == NetworkMode::Host)
                    && old.pid.is_none_or(ports::holds_fixed_port))
        })
        .map(|(_, old, _)| old.name.clone())
        .collect()
}

/// Retires the running old containers of `spec`'s replaced services (not in `keep`) that
/// can hand over in parallel; returns (old name, retired name) of each. None for a switch
/// that must not overlap (no target, a quick rollback).
pub(super) fn retire(
    manager: &Manager,
    spec: Option<&ReleaseSpec>,
    existing: &[ContainerInfo],
    keep: &BTreeSet<String>,
    records: &BTreeMap<u64, ReleaseRecord>,
) -> Vec<(String, String)> {
    let spec_of = |c: &ContainerInfo| super::service_spec(records, c);
    let Some(spec) = spec else {
        return Vec::new();
    };
    let replaced = spec.services.iter().filter_map(|s| {
        let c = existing.iter().find(|c| c.name == s.name)?;
        (!keep.contains(s.name.as_str())).then(|| (s, c, spec_of(c)))
    });
    parallel(manager, replaced)
        .into_iter()
        .filter_map(|old| {
            // A retire that fails leaves the container where it was: it is stopped first.
            let new = manager.retire(&old).ok()?;
            Some((old, new))
        })
        .collect()
}

/// Stops and removes retired containers in the background.
#[derive(Default)]
pub(super) struct Retiring {
    pending: Mutex<Vec<JoinHandle<()>>>,
    /// The retired containers whose stop is under way.
    names: Arc<Mutex<BTreeSet<String>>>,
}

impl Retiring {
    /// Stops (with its own grace period) and removes each of `names`, each on its thread.
    pub fn stop_later(&self, manager: &Arc<Manager>, names: Vec<String>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|h| !h.is_finished());
        for name in names {
            let (m, busy) = (Arc::clone(manager), Arc::clone(&self.names));
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone());
            let h = std::thread::Builder::new()
                .name(format!("retire-{name}"))
                .spawn(move || {
                    let _ = m.stop(&name, None);
                    let _ = m.remove(&name, true);
                    busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
                });
            match h {
                Ok(h) => pending.push(h),
                // Left to the next switch, which stops it as any other old container.
                Err(_) => {
                    self.names.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
            }
        }
    }

    /// The retired containers still being stopped: a switch leaves them to their threads
    /// rather than wait out their grace periods again.
    pub fn in_flight(&self) -> BTreeSet<String> {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
