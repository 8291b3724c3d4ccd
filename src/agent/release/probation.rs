//! Probation: after a switch, every service of the release is watched. A service with a health
//! check passes once the check passes; one without passes by running for the release's
//! `probation` time. Any service that exits (or is restarted by its policy) meanwhile fails the
//! release, and so does a health check that fails `retries` times in a row.
//!
//! Health checks run inside the container (`runc exec`), with Docker's meaning of the fields,
//! measured from the start of probation: failures during `start_period` do not count; each check
//! is killed after `timeout` (a failure); checks are `interval` apart. Unlike Docker, the first
//! check runs at once and, during the start period, checks are at most 1 s apart, so a
//! service that is ready quickly passes quickly (Docker ≥ 25 has `start_interval` for this).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::spec::{HealthSpec, ReleaseSpec};
use crate::agent::container::logs::LogReader;
use crate::agent::container::{ContainerError, ContainerInfo, Manager};

/// During the start period, checks are at most this far apart.
const START_INTERVAL: Duration = Duration::from_secs(1);
/// How often the watcher looks at the containers.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Why probation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The service at fault.
    pub service: String,
    /// What happened, with what the check or the service printed last.
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.service.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "service `{}` {}", self.service, self.reason)
        }
    }
}

/// The exec form of a health check, or `None` for Docker's `NONE` ([`HealthSpec::command`]).
pub fn command(h: &HealthSpec) -> Option<Vec<String>> {
    h.command()
}

/// What a running container looked like when probation began.
#[derive(Clone, Debug)]
struct Baseline {
    pid: Option<u32>,
    restarts: u32,
}

/// Watches the release's services until they pass or one fails.
pub fn watch(manager: &Arc<Manager>, spec: &ReleaseSpec) -> Result<(), Failure> {
    let start = Instant::now();
    let mut base = BTreeMap::new();
    for s in &spec.services {
        let info = running(manager, &s.name)?;
        base.insert(
            s.name.clone(),
            Baseline {
                pid: info.pid,
                restarts: info.restart_count,
            },
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the checkers however this function returns.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = StopOnDrop(Arc::clone(&stop));
    let (tx, rx) = mpsc::channel();
    let mut checked = BTreeSet::new();
    let mut plain = false;
    for s in &spec.services {
        match s
            .healthcheck
            .as_ref()
            .and_then(|h| command(h).map(|c| (h, c)))
        {
            Some((h, cmd)) => {
                checked.insert(s.name.to_string());
                let (m, name, h, stop, tx) = (
                    Arc::clone(manager),
                    s.name.to_string(),
                    h.clone(),
                    Arc::clone(&stop),
                    tx.clone(),
                );
                // Not scoped: a failure must not wait for another service's slow check.
                std::thread::Builder::new()
                    .name(format!("health-{name}"))
                    .spawn(move || {
                        let r = check_until_decided(&m, &name, &cmd, &h, &stop);
                        let _ = tx.send((name, r));
                    })
                    .map_err(|e| Failure {
                        service: s.name.to_string(),
                        reason: format!("could not start its health check: {e}"),
                    })?;
            }
            None => plain = true,
        }
    }
    drop(tx);
    let mut healthy = BTreeSet::new();
    loop {
        while let Ok((name, r)) = rx.try_recv() {
            match r {
                Ok(()) => {
                    healthy.insert(name);
                }
                Err(reason) => {
                    return Err(Failure {
                        service: name,
                        reason: format!("failed its health check: {reason}"),
                    });
                }
            }
        }
        for s in &spec.services {
            still_running(manager, &s.name, &base[&s.name])?;
        }
        if healthy.len() == checked.len() && (!plain || start.elapsed() >= spec.probation) {
            return Ok(());
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// After a rollback: every container of `names` runs, and still runs a moment later.
pub fn quick_check(manager: &Manager, names: &[String], settle: Duration) -> Result<(), Failure> {
    let mut base = BTreeMap::new();
    for n in names {
        let info = running(manager, n)?;
        base.insert(
            n.clone(),
            Baseline {
                pid: info.pid,
                restarts: info.restart_count,
            },
        );
    }
    std::thread::sleep(settle);
    for n in names {
        still_running(manager, n, &base[n])?;
    }
    Ok(())
}

/// The container of `name`, which must be running.
fn running(manager: &Manager, name: &str) -> Result<ContainerInfo, Failure> {
    match manager.inspect(name) {
        Ok(i) if i.state == "running" && i.pid.is_none_or(pid_alive) => Ok(i),
        Ok(i) => {
            let i = settled(manager, name, i.restart_count).unwrap_or(i);
            Err(exited(manager, name, &i, "exited right after it started"))
        }
        Err(e) => Err(gone(name, &e)),
    }
}

/// The container once the supervisor has recorded its exit (or was restarted), waiting up to
/// half a second.
fn settled(manager: &Manager, name: &str, restarts: u32) -> Option<ContainerInfo> {
    (0..10).find_map(|_| {
        let i = manager.inspect(name).ok()?;
        if i.exit_code.is_some() || i.restart_count != restarts {
            return Some(i);
        }
        std::thread::sleep(Duration::from_millis(50));
        None
    })
}

fn still_running(manager: &Manager, name: &str, base: &Baseline) -> Result<(), Failure> {
    let info = match manager.inspect(name) {
        Ok(i) => i,
        Err(e) => return Err(gone(name, &e)),
    };
    let died = info.state != "running"
        || info.restart_count != base.restarts
        || info.pid != base.pid
        || info.pid.is_some_and(|p| !pid_alive(p));
    if !died {
        return Ok(());
    }
    // Give the supervisor a moment to record the exit code.
    let info = settled(manager, name, base.restarts).unwrap_or(info);
    let what = if info.restart_count != base.restarts {
        "exited and was restarted by its policy during probation"
    } else {
        "exited during probation"
    };
    Err(exited(manager, name, &info, what))
}

fn gone(name: &str, e: &ContainerError) -> Failure {
    Failure {
        service: name.to_string(),
        reason: format!("has no container: {e}"),
    }
}

fn exited(manager: &Manager, name: &str, info: &ContainerInfo, what: &str) -> Failure {
    let mut reason = what.to_string();
    if let Some(c) = info.exit_code {
        reason.push_str(&format!(" (exit code {c})"));
    }
    if let Some(e) = &info.error {
        reason.push_str(&format!(": {e}"));
    }
    let tail = LogReader::open(&manager.logs_dir(name), Some(5))
        .and_then(|mut r| r.poll())
        .unwrap_or_default();
    let text: Vec<String> = tail
        .iter()
        .map(|l| l.log.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if !text.is_empty() {
        reason.push_str(&format!("; its last output: {}", clip(&text.join(" | "))));
    }
    Failure {
        service: name.to_string(),
        reason,
    }
}

fn pid_alive(pid: u32) -> bool {
    crate::util::fs::pid_alive(pid)
}

/// At most 400 characters, keeping the end (where errors are).
fn clip(s: &str) -> String {
    let s = s.trim();
    let n = s.chars().count();
    if n <= 400 {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - 400).collect();
    format!("…{tail}")
}

/// Runs the check until it passes (`Ok`) or fails `retries` times in a row after the start
/// period (`Err` with what the last check printed), or until `stop`.
fn check_until_decided(
    m: &Manager,
    name: &str,
    cmd: &[String],
    h: &HealthSpec,
    stop: &AtomicBool,
) -> Result<(), String> {
    let (interval, timeout, retries) = (self::interval(h), self::timeout(h), self::retries(h));
    let start = Instant::now();
    let mut failures = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err("probation ended".into());
        }
        let last = match m.exec(name, cmd, timeout) {
            Ok(o) if o.code == Some(0) => return Ok(()),
            Ok(o) => {
                let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
                out.push_str(&String::from_utf8_lossy(&o.stderr));
                let status = match o.code {
                    Some(c) => format!("exit code {c}"),
                    None => format!("timed out after {}", secs(timeout)),
                };
                if out.trim().is_empty() {
                    status
                } else {
                    format!("{status}: {}", clip(&out))
                }
            }
            Err(e) => e.to_string(),
        };
        let in_grace = start.elapsed() < h.start_period;
        if !in_grace {
            failures += 1;
            if failures >= retries {
                return Err(format!(
                    "`{}` failed {failures} time(s) in a row; last: {last}",
                    cmd.join(" ")
                ));
            }
        }
        let wait = if in_grace {
            interval.min(START_INTERVAL)
        } else {
            interval
        };
        let next = Instant::now() + wait;
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return Err("probation ended".into());
            }
            std::thread::sleep(Duration::from_millis(20).min(wait));
        }
    }
}

/// Time between checks, Docker's default for zero.
pub fn interval(h: &HealthSpec) -> Duration {
    h.interval()
}

/// How long one check may take, Docker's default for zero.
pub fn timeout(h: &HealthSpec) -> Duration {
    h.timeout()
}

/// Failed checks in a row that fail the service, Docker's default for zero.
pub fn retries(h: &HealthSpec) -> u32 {
    h.retries()
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(test: &[&str]) -> HealthSpec {
        HealthSpec {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::ZERO,
        }
    }

    #[test]
    fn docker_forms_of_a_check() {
        assert_eq!(command(&h(&["NONE"])), None);
        assert_eq!(command(&h(&[])), None);
        assert_eq!(
            command(&h(&["CMD", "test", "-f", "/ready"])),
            Some(vec!["test".into(), "-f".into(), "/ready".into()])
        );
        assert_eq!(
            command(&h(&["CMD-SHELL", "test -f /ready"])),
            Some(vec!["/bin/sh".into(), "-c".into(), "test -f /ready".into()])
        );
        assert_eq!(command(&h(&["true"])), Some(vec!["true".into()]));
        assert_eq!(clip(&"x".repeat(500)).chars().count(), 401);
    }
}
