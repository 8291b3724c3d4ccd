//! Update locks, balena's supervisor's feature with `flock` as the lock: a process in a
//! release container that holds an exclusive `flock` on `/data/locks/dt-agent-update.lock`
//! (its service's directory `$DT_AGENT_ROOT/locks/<service>/`, which every container gets,
//! agent::container::handover) defers every deploy — as on balena, one service's lock holds
//! the whole release — until it lets go; the deploy waits, telling the client who holds it,
//! and `--force` does not wait. While it switches, the agent holds the locks itself (as
//! balena's supervisor does), so no container takes one in the middle of a switch; they are
//! released once the new containers run. A rollback after a failed health check, a manual
//! rollback and recovery at start are never deferred.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::agent::container::handover::{LOCK_DIR, LOCK_FILE};
use crate::agent::container::{ContainerConfig, Manager};
use crate::util::fs::PathContext;

use super::ReleaseError;

/// What trying the locks found.
pub(super) enum Probe {
    /// Every lock is the agent's now; dropping these releases them.
    Taken(Vec<File>),
    /// These services hold theirs.
    Held(Vec<String>),
}

/// Tries to take the update lock of every running release container's service.
pub(super) fn take(manager: &Manager) -> Result<Probe, ReleaseError> {
    let mut services: Vec<String> = manager
        .list(false)?
        .into_iter()
        .filter(|c| c.release.is_some())
        .map(|c| c.service.unwrap_or(c.name))
        .collect();
    services.sort();
    services.dedup();
    let mut taken = Vec::new();
    let mut held = Vec::new();
    for s in services {
        // Service names come from releases and records, which hold checked names.
        let Ok(name) = crate::api::ContainerName::new(&*s) else {
            continue;
        };
        let cfg = ContainerConfig {
            name: name.clone(),
            service: Some(name),
            ..Default::default()
        };
        let path: PathBuf = manager.lock_dir(&cfg)?.join(LOCK_FILE);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at("open", &path)?;
        // SAFETY: flock on an fd we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            taken.push(f);
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                held.push(s);
            } else {
                return Err(crate::util::fs::PathError {
                    action: "lock",
                    path,
                    source: e,
                }
                .into());
            }
        }
    }
    Ok(if held.is_empty() {
        Probe::Taken(taken)
    } else {
        Probe::Held(held)
    })
}

/// What a deploy that waits says.
pub(super) fn waiting_message(held: &[String]) -> String {
    let who: Vec<String> = held.iter().map(|s| format!("`{s}`")).collect();
    format!(
        "waiting: service {} holds its update lock ({LOCK_DIR}/{LOCK_FILE}); the deploy goes on once it is released (`--force` does not wait)",
        who.join(", ")
    )
}

/// Waits until no service holds its update lock and returns the agent's holds; `on_wait`
/// hears why it waits (every quarter second) and answers whether the client still wants the
/// deploy.
pub(super) fn wait(
    manager: &Manager,
    on_wait: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<File>, ReleaseError> {
    loop {
        match take(manager)? {
            Probe::Taken(files) => return Ok(files),
            Probe::Held(held) => {
                let msg = waiting_message(&held);
                if !on_wait(&msg) {
                    return Err(ReleaseError::Abandoned(msg));
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        }
    }
}
