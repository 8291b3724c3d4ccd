//! What a deploy asks the robot to run: the wire format of a release, shared by the laptop
//! (which resolves a stack file into it) and the daemon (which applies it). Content is referred
//! to by manifest digest only — by the time a release arrives, every image is in the store.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::container::ContainerConfig;
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
    pub name: String,
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
            .map(|s| (s.name.clone(), s.manifest.clone()))
            .collect()
    }
}
