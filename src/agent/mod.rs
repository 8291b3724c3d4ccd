//! The robot side: what `dt-agent` keeps and does on a Duckiebot.
//!
//! Owns the robot's state directory (`/var/lib/dt-agent`, override `DT_AGENT_ROOT`;
//! docs/architecture.md, "The robot's state"): the object store ([`store`]: images as
//! content-addressed file objects, tar-split metadata and hardlink-farm snapshots), containers
//! ([`container`]: overlay roots, runtime bundles, per-container shims, logs), their networks
//! ([`net`]: CNI), device roles ([`devices`]) and the CDI devices they list ([`cdi`]; specs in `/etc/cdi`,
//! `/var/run/cdi`), and the daemon's control socket ([`daemon`]).
//!
//! ```text
//! $DT_AGENT_ROOT/            (0700: snapshots hold setuid files and capabilities)
//!   meta.json, lock, refs.json, objects/, layers/, images/, snapshots/, roots/, tmp/
//!                            see [`store`] for each
//!   containers/, volumes/, runtime/   see [`container`]
//!   net/                     CNI state, see [`net`]
//!   daemon.sock              the daemon's control socket, see [`daemon`]
//! ```
//!
//! Like every robot-side module it must build without the laptop-only dependencies
//! (`--no-default-features --features agent`) and never imports `build`, `registry`, `ssh` or
//! `provision` (tests/architecture.rs).

pub mod cdi;
pub mod container;
pub mod daemon;
pub mod devices;
pub mod exec;
pub mod fdpass;
pub mod fetch;
pub mod memory;
pub mod net;
pub mod release;
pub mod status;
pub mod store;

use std::path::PathBuf;

pub use crate::api::daemon::DEFAULT_ROOT;

/// The agent's state directory: `$DT_AGENT_ROOT`, else [`DEFAULT_ROOT`].
pub fn agent_root() -> PathBuf {
    std::env::var_os("DT_AGENT_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}
