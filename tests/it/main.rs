//! The integration tests: one test binary (`cargo test --test it`), one module per area, and the
//! shared fixtures in [`support`] (the style of uv's `crates/uv/tests/it`).
//!
//! Why one binary: each file of `tests/` is its own crate, linked against `dts` and every
//! dependency; 23 of them made CI spend minutes linking, and every file carried a copy of the
//! fixtures it needed (`mod support;` with a blanket `dead_code` allowance, three laptop+robot
//! "World" fixtures). Here a fixture lives once in `support`, unused code is a warning again, and
//! libtest spreads all tests over the cores instead of running the files one after another.
//!
//! Run one area with a name filter: `cargo test --test it netns::`, or
//! `bash scripts/test --no-install --no-lint -- --test it netns::`.
//! `tests/architecture.rs` stays a binary of its own: it reads `src/`, needs none of this, and
//! links in a second.

mod agent_cdi;
mod agent_net;
mod agent_release;
mod agent_run;
mod agent_seccomp;
mod agent_store;
mod agent_switch;
mod bench_adopt;
mod build;
mod build_buildah;
mod build_duckietown;
mod build_graph;
mod build_mounts;
mod build_native;
mod build_prune;
mod build_sources;
mod compose;
mod contract;
mod cross;
mod decode_fuzz;
mod deploy;
mod deploy_keep;
mod deploy_pull;
mod devel_deploy;
mod discover;
mod discover_parse;
mod exec;
mod fleet;
mod fresh_robot;
mod hub;
mod image_cli;
mod image_registry_cli;
mod layer;
mod netns;
mod profile;
mod provision;
mod registry_client;
mod registry_fixture;
mod run;
mod run_tty;
mod runtime_console;
mod sim;
mod ssh;
mod stock_adopt;
mod stock_direct;
mod stock_provision;
mod stock_robot;
mod wire;
mod wire_hub;

mod support;
