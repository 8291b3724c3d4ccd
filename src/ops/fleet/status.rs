//! `dts fleet status`: what every robot runs — its release, whether the release's services
//! run, its agent, free disk and last deploy — asked of all robots at once, each within a
//! timeout; a robot that does not answer is a row with its error.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{FleetRobot, reach};
use crate::ops::robot::SshArgs;
use crate::ops::verbs;

/// One robot's row (`--json`: these fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RobotStatus {
    /// Its name.
    pub robot: String,
    /// The release it runs.
    pub release: Option<u64>,
    /// That release's state.
    pub state: Option<String>,
    /// Its stack's name.
    pub stack: Option<String>,
    /// The release's services…
    pub services: usize,
    /// …and how many of them run.
    pub running: usize,
    /// `healthy` (committed, every service runs), `degraded` (not so), `idle` (no release),
    /// `unreachable`.
    pub health: String,
    /// dt-agent's version.
    pub agent_version: Option<String>,
    /// Bytes free in its store.
    pub free_bytes: Option<u64>,
    /// When its newest release was deployed (RFC 3339).
    pub last_deploy: Option<String>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// Asks every robot of `robots` at once, each for at most `timeout`; rows in their order.
pub async fn status(robots: &[FleetRobot], ssh: &SshArgs, timeout: Duration) -> Vec<RobotStatus> {
    let ssh = Arc::new(ssh.clone());
    let tasks: Vec<_> = robots
        .iter()
        .cloned()
        .map(|r| {
            let ssh = ssh.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, one(&r, &ssh)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => unreachable_row(&r.name, super::error_text(&e)),
                    Err(_) => unreachable_row(
                        &r.name,
                        format!("no answer within {} s", timeout.as_secs_f64()),
                    ),
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for (t, r) in tasks.into_iter().zip(robots) {
        out.push(
            t.await
                .unwrap_or_else(|_| unreachable_row(&r.name, "internal error".into())),
        );
    }
    out
}

fn unreachable_row(robot: &str, error: String) -> RobotStatus {
    RobotStatus {
        robot: robot.to_string(),
        health: "unreachable".into(),
        error: Some(error),
        ..RobotStatus::default()
    }
}

async fn one(r: &FleetRobot, ssh: &SshArgs) -> anyhow::Result<RobotStatus> {
    let mut l = reach(r, ssh).await?;
    let history = verbs::history(&mut l).await?;
    let ps = verbs::ps(&mut l, true).await?;
    let current = history.iter().find(|h| h.current);
    let last = history.iter().max_by_key(|h| h.release);
    let mut s = RobotStatus {
        robot: r.name.clone(),
        agent_version: Some(l.hello.agent_version.clone()),
        free_bytes: Some(l.hello.free_bytes),
        last_deploy: last.map(|h| h.created.clone()),
        health: "idle".into(),
        ..RobotStatus::default()
    };
    if let Some(c) = current {
        s.release = Some(c.release);
        s.state = Some(c.state.to_string());
        s.stack = Some(c.stack.clone());
        s.services = c.spec.services.len();
        s.running = c
            .spec
            .services
            .iter()
            .filter(|svc| {
                ps.iter()
                    .any(|p| p.name == svc.name.as_str() && p.state == "running")
            })
            .count();
        let ok = s.state.as_deref() == Some("committed") && s.running == s.services;
        s.health = if ok { "healthy" } else { "degraded" }.into();
    }
    Ok(s)
}
