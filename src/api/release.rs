//! Releases as the laptop and the robot both see them: what a deploy asks the robot to run
//! ([`ReleaseSpec`]: content named by manifest digest only, since by the time a release arrives
//! every image is in the robot's store), what the robot records of each release
//! (`releases/<N>.json`, [`ReleaseRecord`]), and what a deploy or rollback answers
//! ([`DeployOutcome`]). The records are on the robot's disk and the specs and outcomes cross
//! the wire: fields are only ever added, with defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::container::ContainerConfig;
use super::names::ContainerName;
use crate::oci::Digest;

/// A release to apply: one stack's services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSpec {
    /// The stack's name (`duckiebot`, `lane-following`, or the file's stem).
    pub stack: String,
    /// The services, in no particular order (`stage` and `order` give the start order).
    pub services: Vec<ServiceSpec>,
    /// How long a service without a health check must keep running to pass probation.
    pub probation: Duration,
}

/// One service of a release: a container named after the service key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The service key; also the container's name.
    pub name: ContainerName,
    /// Start stage: lower stages start first and stop last.
    pub stage: u32,
    /// Position within the stage (a topological order of `depends_on`).
    pub order: u32,
    /// The image as the stack names it, for humans (`duckietown/dt-core:daffy-arm64v8`).
    pub image_name: String,
    /// The manifest that runs (for this robot's platform).
    pub manifest: Digest,
    /// The container: `name` = the service key, `image` = the manifest digest as a string,
    /// `service` = the key, `release` filled in by the robot.
    pub container: ContainerConfig,
    /// Health check; `None` means "running for `probation`" decides.
    pub healthcheck: Option<HealthSpec>,
}

/// A health check, resolved from the stack or the image's HEALTHCHECK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// The command, exec form (`CMD-SHELL x` becomes `["/bin/sh", "-c", "x"]`).
    pub test: Vec<String>,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Consecutive failures that make the service unhealthy.
    pub retries: u32,
    /// Failures during this grace period do not count.
    pub start_period: Duration,
}

impl ReleaseSpec {
    /// The service → manifest map a release records (`history --json`'s `services`).
    pub fn services_map(&self) -> std::collections::BTreeMap<String, Digest> {
        self.services
            .iter()
            .map(|s| (s.name.to_string(), s.manifest.clone()))
            .collect()
    }
}

/// Where a release is in its life.
///
/// ```text
/// staged ─► switching ─► probation ─► committed
///              │             │
///              └─────────────┴─► rolled-back (N-1 runs again) | failed (there was no N-1)
/// ```
/// A committed release becomes `rolled-back` too when someone rolls back from it by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseState {
    /// Recorded, every image present; no container touched yet.
    Staged,
    /// The previous release's containers are being replaced by this one's.
    Switching,
    /// Every container runs; health checks and the probation time are being watched.
    Probation,
    /// Passed probation (or was switched back to by a rollback).
    Committed,
    /// Did not pass (or was rolled back from by hand); the release before it runs.
    RolledBack,
    /// Did not pass and there was nothing to go back to: its containers were removed.
    Failed,
}

impl ReleaseState {
    /// The name as JSON spells it (`rolled-back`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Staged => "staged",
            ReleaseState::Switching => "switching",
            ReleaseState::Probation => "probation",
            ReleaseState::Committed => "committed",
            ReleaseState::RolledBack => "rolled-back",
            ReleaseState::Failed => "failed",
        }
    }

    /// Whether the release is still being applied.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            ReleaseState::Staged | ReleaseState::Switching | ReleaseState::Probation
        )
    }
}

impl std::fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `releases/<N>.json`; `history --json` prints these (docs/cli.md: `release`, `state`, `created`,
/// `stack`, `services`, plus the rest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// Its number: 1, 2, … on this robot.
    pub release: u64,
    /// Where it is in its life.
    pub state: ReleaseState,
    /// When it was deployed (RFC 3339).
    pub created: String,
    /// The stack's name.
    pub stack: String,
    /// Service → manifest digest.
    pub services: BTreeMap<String, Digest>,
    /// The committed release that ran when this one was deployed: where a failed probation
    /// goes back to, and where `rollback` goes by default.
    pub previous: Option<u64>,
    /// When it passed probation (or became current again by a rollback); a release that never
    /// did cannot be rolled back to.
    pub committed_at: Option<String>,
    /// When it reached `committed`, `rolled-back` or `failed` last.
    pub finished_at: Option<String>,
    /// Why it was rolled back or failed: which service, what its health check printed.
    pub reason: Option<String>,
    /// Whether it is the release that runs now (not stored: filled in when read).
    #[serde(default)]
    pub current: bool,
    /// What was applied.
    pub spec: ReleaseSpec,
}

/// What happened to one service in a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    /// Its container ran already with the same spec and was left alone.
    Kept,
    /// Its container was (re)created and started.
    Started,
}

/// One service's part in a deploy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOutcome {
    /// The service key (= container name).
    pub name: String,
    /// Its manifest.
    pub manifest: Digest,
    /// Kept or started.
    pub action: ServiceAction,
}

/// The answer to a deploy or rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployOutcome {
    /// The release applied (for a rollback: the release that runs now).
    pub release: u64,
    /// Its state: `committed`, `rolled-back` or `failed`; `probation` in the answer to a
    /// detached deploy, which comes before probation ends.
    pub state: ReleaseState,
    /// Nothing was done: that release already ran.
    pub unchanged: bool,
    /// One line for people.
    pub message: String,
    /// What happened to each service of the release that was switched to.
    pub services: Vec<ServiceOutcome>,
    /// Why it was rolled back or failed.
    pub reason: Option<String>,
    /// The release that runs again after a failed probation.
    pub rolled_back_to: Option<u64>,
    /// How long this request waited for another deploy or rollback to finish, in ms.
    pub waited_ms: u64,
}

impl HealthSpec {
    /// Docker's interval, for a zero one.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// Docker's timeout, for a zero one.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Docker's retries, for zero.
    pub const DEFAULT_RETRIES: u32 = 3;

    /// The exec form of the check, or `None` for Docker's `NONE`. Tolerates Docker's `CMD` /
    /// `CMD-SHELL` prefixes.
    pub fn command(&self) -> Option<Vec<String>> {
        match self.test.first().map(String::as_str) {
            None | Some("NONE") => None,
            Some("CMD") => Some(self.test[1..].to_vec()).filter(|t| !t.is_empty()),
            Some("CMD-SHELL") => Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                self.test[1..].join(" "),
            ]),
            Some(_) => Some(self.test.clone()),
        }
    }

    /// Time between checks, Docker's default for zero.
    pub fn interval(&self) -> Duration {
        nonzero(self.interval, Self::DEFAULT_INTERVAL)
    }

    /// How long one check may take, Docker's default for zero.
    pub fn timeout(&self) -> Duration {
        nonzero(self.timeout, Self::DEFAULT_TIMEOUT)
    }

    /// Failed checks in a row that fail the service, Docker's default for zero.
    pub fn retries(&self) -> u32 {
        if self.retries == 0 {
            Self::DEFAULT_RETRIES
        } else {
            self.retries
        }
    }
}

fn nonzero(d: Duration, default: Duration) -> Duration {
    if d.is_zero() { default } else { d }
}
