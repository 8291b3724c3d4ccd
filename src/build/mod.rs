//! The daemonless image builder: Dockerfile → typed instructions → layers → multi-arch index.
//! Metadata instructions and COPY/ADD are pure Rust; RUN executes under runc with QEMU user
//! emulation for foreign platforms.

pub mod context;
pub mod dockerfile;
pub mod dockerignore;
pub mod run;
pub mod view;
