//! `dt-agent status`: what a laptop (or a person on the robot) needs to know about this robot
//! at a glance. The JSON field names are a contract (docs/cli.md, "`dt-agent` (on the robot)").

use serde::Serialize;

use super::store::{AgentStore, AgentStoreError, ImageInfo};
use crate::oci::Platform;

/// The robot's status.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The robot's hostname.
    pub hostname: String,
    /// Its platform (`linux/arm64`).
    pub arch: String,
    /// Its Duckietown architecture tag (`arm64v8`), if it has one.
    pub duckietown_arch: Option<&'static str>,
    /// This agent's version.
    pub agent_version: &'static str,
    /// The container runtime (`runc`/`crun`), null when none is installed.
    pub runtime: Option<String>,
    /// Its version line (`runc version 1.1.5+ds1`).
    pub runtime_version: Option<String>,
    /// Bytes free on the store's file system.
    pub free_bytes: u64,
    /// Memory the agent may use: RAM, or its cgroup's smaller limit (null when unknown).
    pub memory_bytes: Option<u64>,
    /// The current release's number (null before the first release is committed).
    pub release: Option<u64>,
    /// The named images.
    pub images: Vec<ImageInfo>,
    /// What the robot's owner should fix (an OCI runtime with a known hole).
    pub warnings: Vec<String>,
}

/// Collects the status.
pub fn status(store: &AgentStore) -> Result<Status, AgentStoreError> {
    let platform = Platform::host().normalized();
    let runtime = crate::runtime::Runtime::detect(&store.root().join("runtime")).ok();
    Ok(Status {
        hostname: hostname(),
        arch: platform.to_string(),
        duckietown_arch: platform.duckietown_arch(),
        agent_version: env!("CARGO_PKG_VERSION"),
        runtime: runtime.as_ref().map(|r| r.command().display().to_string()),
        runtime_version: runtime.as_ref().and_then(|r| r.version().ok()),
        free_bytes: store.free_bytes()?,
        memory_bytes: super::memory::memory_bytes(),
        release: crate::agent::release::current_release(store.root()),
        images: store.images()?,
        warnings: runtime_warnings(runtime.as_ref()),
    })
}

/// [`runtime_warnings`] of the runtime the agent of `store` uses.
pub fn store_runtime_warnings(store: &AgentStore) -> Vec<String> {
    let runtime = crate::runtime::Runtime::detect(&store.root().join("runtime")).ok();
    runtime_warnings(runtime.as_ref())
}

/// What the robot's owner should fix about its OCI runtime (`runtime` as detected): in
/// `status` and in the hello, so every deploy says it too.
pub fn runtime_warnings(runtime: Option<&crate::runtime::Runtime>) -> Vec<String> {
    runtime
        .and_then(|r| {
            // Beside the runtime's state directory (`runtime/runc` → `runtime/advisory.json`).
            let cache = r.root().with_file_name("advisory.json");
            crate::runtime::advisory::cve_2024_21626_cached(
                r.command(),
                std::path::Path::new("/"),
                &cache,
            )
        })
        .into_iter()
        .collect()
}

/// The kernel's hostname (the UTS namespace's, like `hostname`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
