//! `dts sim up|down|ls` (and the hidden `__init`/`__pid1` the holder processes run): flags,
//! rendering and exit codes. The work is in [`crate::sim`], which prints nothing (it sits below
//! `cli` and `ops`: tests/architecture.rs).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::table::Table;
use super::{Exit, Printer};
use crate::oci::Platform;
use crate::sim::{SimError, UpArgs};

/// `dts sim …`.
// Parsed once per process: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Start a virtual Duckiebot: its own network namespace and file system, sshd, dt-agent,
    /// emulated device nodes; reached like a real robot afterwards
    Up {
        /// Robot name (its hostname)
        name: String,
        /// Robot CPU: amd64, arm64 or armhf (foreign ones run their agent under QEMU; the
        /// binary comes from `scripts/cross-build ARCH`)
        #[arg(short = 'a', long, default_value = "amd64", value_parser = parse_platform)]
        arch: Platform,
        /// Duckietown configuration: selects the device roles and nodes
        #[arg(long, default_value = "virtual")]
        configuration: String,
        /// Limit its link both ways with tc tbf (e.g. 20mbit)
        #[arg(long, value_name = "RATE")]
        link_rate: Option<String>,
        /// Its memory (e.g. 1g, a Raspberry Pi 3): a memory cgroup everything in it runs in,
        /// which its agent sizes itself by
        #[arg(long, value_name = "SIZE", value_parser = crate::profile::stack::parse_bytes)]
        memory: Option<u64>,
        /// One JSON document on stdout: the sim's record and the agent's status
        #[arg(long)]
        json: bool,
    },
    /// Remove a virtual Duckiebot and everything it made
    Down {
        /// Robot name
        name: String,
        /// One JSON document on stdout: what was removed
        #[arg(long)]
        json: bool,
    },
    /// List virtual Duckiebots
    Ls {
        /// One JSON document on stdout: [{name, address, arch, host_interface, …}]
        #[arg(long)]
        json: bool,
    },
    /// The holder process of a sim (internal)
    #[command(name = "__init", hide = true)]
    Init {
        /// The sim's directory
        dir: PathBuf,
    },
    /// Pid 1 of a sim (internal)
    #[command(name = "__pid1", hide = true)]
    Pid1 {
        /// The sim's directory
        dir: PathBuf,
    },
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse::<Platform>().map_err(|e| e.to_string())
}

/// Runs a `dts sim` command; a [`SimError`] is printed here with its exit code (2 for input).
pub fn run(cmd: &SimCommand, p: &Printer) -> Result<Exit> {
    match dispatch(cmd, p) {
        Ok(e) => Ok(e),
        Err(e) => {
            let bad = e.chain().any(|c| {
                c.downcast_ref::<SimError>()
                    .is_some_and(SimError::is_bad_input)
            });
            p.error(&e);
            Ok(if bad { Exit::BadInput } else { Exit::Failed })
        }
    }
}

fn dispatch(cmd: &SimCommand, p: &Printer) -> Result<Exit> {
    // Absolute: the holder runs in `/` and is found again by the path in its arguments.
    let home = crate::paths::dts_home();
    let home = std::path::absolute(&home).unwrap_or(home);
    match cmd {
        SimCommand::Up {
            name,
            arch,
            configuration,
            link_rate,
            memory,
            json,
        } => {
            let args = UpArgs {
                name: name.clone(),
                arch: arch.clone(),
                configuration: configuration.clone(),
                link_rate: link_rate.clone(),
                memory: *memory,
            };
            let r = crate::sim::up(&home, &args)?;
            if r.replaced_dead {
                p.info(&format!("Removed the remains of a dead `{name}` first"));
            }
            for n in &r.skipped_nodes {
                p.info(&format!(
                    "warning: no device numbers known for role node `{n}`; not created"
                ));
            }
            if *json {
                p.json(&serde_json::json!({
                    "name": r.sim.name,
                    "address": r.sim.address,
                    "arch": r.sim.arch,
                    "host_interface": r.sim.host_interface,
                    "configuration": r.sim.configuration,
                    "link_rate": r.sim.link_rate,
                    "memory_bytes": r.sim.memory,
                    "status": r.status,
                }));
            } else {
                p.info(&format!(
                    "Virtual robot `{}` is up at {} ({}, {}; link {} on the host{})",
                    r.sim.name,
                    r.sim.address,
                    r.sim.configuration,
                    r.sim.arch,
                    r.sim.host_interface,
                    r.sim
                        .link_rate
                        .as_deref()
                        .map(|l| format!(", limited to {l}"))
                        .unwrap_or_default()
                ));
            }
        }
        SimCommand::Down { name, json } => {
            let r = crate::sim::down(&home, name)?;
            if *json {
                p.json(&r);
            } else {
                p.info(&format!("Virtual robot `{name}` removed"));
            }
        }
        SimCommand::Ls { json } => {
            let sims = crate::sim::list(&home);
            if *json {
                let rows: Vec<_> = sims
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name,
                            "address": s.address,
                            "arch": s.arch,
                            "host_interface": s.host_interface,
                            "configuration": s.configuration,
                            "link_rate": s.link_rate,
                            "running": s.is_running(),
                        })
                    })
                    .collect();
                p.json(&rows);
            } else if sims.is_empty() {
                p.info("No virtual robots.");
            } else {
                let mut t = Table::new(&[
                    "NAME",
                    "ADDRESS",
                    "ARCH",
                    "CONFIGURATION",
                    "INTERFACE",
                    "STATE",
                ]);
                for s in sims {
                    let state = if s.is_running() { "running" } else { "dead" };
                    t.row([
                        s.name.clone(),
                        s.address.to_string(),
                        s.arch.to_string(),
                        s.configuration.clone(),
                        s.host_interface.clone(),
                        state.to_string(),
                    ]);
                }
                p.table(&t);
            }
        }
        SimCommand::Init { dir } => {
            let code = crate::sim::init::holder_main(dir)?;
            return Ok(Exit::Code(code.clamp(0, 255) as u8));
        }
        SimCommand::Pid1 { dir } => {
            let code = crate::sim::init::pid1_main(dir)?;
            return Ok(Exit::Code(code.clamp(0, 255) as u8));
        }
    }
    Ok(Exit::Ok)
}
