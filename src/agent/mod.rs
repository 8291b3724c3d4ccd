//! The robot side: what `dt-agent` keeps and does on a Duckiebot.
//!
//! Owns the robot's state directory (`/var/lib/dt-agent`, override `DT_AGENT_ROOT`; cli.md
//! "Agent"). Today that is the object store ([`store`]): images imported from archives, kept
//! as content-addressed file objects plus per-layer tar-split metadata, and materialised as
//! hardlink-farm snapshots. Containers, releases and the daemon hang off the same directory
//! later; they are not here yet.
//!
//! ```text
//! $DT_AGENT_ROOT/            (0700: snapshots hold setuid files and capabilities)
//!   meta.json, lock, refs.json, objects/, layers/, images/, snapshots/, roots/, tmp/
//!                            see [`store`] for each
//! ```
//!
//! Like every robot-side module it must build without the laptop-only dependencies
//! (`--no-default-features --features agent`) and never imports `build`, `registry`, `ssh` or
//! `provision` (tests/architecture.rs).

pub mod devices;
pub mod net;
pub mod status;
pub mod store;

use std::path::PathBuf;

/// Default state directory on a robot.
pub const DEFAULT_ROOT: &str = "/var/lib/dt-agent";

/// The agent's state directory: `$DT_AGENT_ROOT`, else [`DEFAULT_ROOT`].
pub fn agent_root() -> PathBuf {
    std::env::var_os("DT_AGENT_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}
