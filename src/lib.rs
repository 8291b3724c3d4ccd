//! dts: gets software onto Duckiebots.
//!
//! `dts` (the laptop side) builds images without a Docker daemon, keeps them in an OCI image
//! layout, moves them to and from registries and archives, and ships only what a robot lacks;
//! `dt-agent` (the robot side) stores, unpacks and runs them. Binaries are thin: this library
//! returns values and emits progress events, and never prints.
//!
//! Layers, top to bottom: the binaries; `cli`; `ops` (the verbs); `sim`, `wire`; `agent` (robot
//! side), `build` (laptop side); `registry`, `archive`; parts (`store`, `layer`, `profile`,
//! `runtime`, `ssh`, `discover`, …); `api` (the laptop↔robot contract), `oci`, `util`,
//! `progress`, `paths`. A module imports only
//! from below it, and only what its row of the table in `tests/architecture.rs` allows (the
//! robot side never imports laptop-only modules); that test enforces it.
#![deny(missing_docs)]

pub mod agent;
#[cfg(feature = "workstation")]
pub mod agents;
pub mod api;
pub mod archive;
pub mod binfmt;
#[cfg(feature = "workstation")]
pub mod build;
pub mod cdi;
pub mod cli;
pub mod discover;
pub mod layer;
pub mod oci;
pub mod ops;
pub mod paths;
pub mod profile;
pub mod progress;
#[cfg(feature = "workstation")]
pub mod registry;
pub mod runtime;
#[cfg(feature = "workstation")]
pub mod sim;
#[cfg(feature = "workstation")]
pub mod ssh;
pub mod store;
pub mod util;
pub mod wire;
