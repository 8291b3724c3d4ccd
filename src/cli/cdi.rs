//! `dt-agent cdi …`: the Container Device Interface on the robot (docs/cli.md): `generate` (a
//! spec from the Jetson's L4T CSV files), `export` (the robot's roles as a spec for Docker and
//! Podman), `list` (the CDI devices the robot's specs define, and which roles grant them), and
//! the hidden `hook ldconfig` the generated spec names.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::table::Table;
use super::{Exit, Printer};
use crate::agent::cdi as agent_cdi;

/// `dt-agent cdi` subcommands.
#[derive(Subcommand, Debug)]
pub enum CdiCommand {
    /// Write a CDI spec (kind nvidia.com/gpu: one device per CSV file, such as `l4t`, and
    /// `all`) from NVIDIA's L4T CSV files; the daemon does this at start when no spec of that
    /// kind exists
    Generate {
        /// The CSV files' directory
        #[arg(long, env = "DT_AGENT_L4T_CSV_DIR", default_value = crate::cdi::csv::DEFAULT_CSV_DIR)]
        csv_dir: PathBuf,
        /// Where the spec goes (default: the last CDI spec directory, /var/run/cdi)
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Print what was written as JSON
        #[arg(long)]
        json: bool,
    },
    /// Write this robot's device roles as a CDI spec (kind duckietown.org/role), so
    /// `docker run --device duckietown.org/role=motors` grants what dt-agent grants
    Export {
        /// Robot identity and role overrides
        #[arg(long, env = "DT_AGENT_CONFIG", default_value = crate::profile::robot::DEFAULT_ROBOT_YAML)]
        config: PathBuf,
        /// Write the spec here (`.json` or `.yaml`) instead of stdout, e.g.
        /// /etc/cdi/duckietown-roles.yaml
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// JSON rather than YAML on stdout
        #[arg(long)]
        json: bool,
    },
    /// The CDI devices this robot's spec directories define, the roles that grant each, and
    /// the spec files that could not be used
    List {
        /// Robot identity and role overrides
        #[arg(long, env = "DT_AGENT_CONFIG", default_value = crate::profile::robot::DEFAULT_ROBOT_YAML)]
        config: PathBuf,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Internal: OCI hooks the generated specs name
    #[command(hide = true, subcommand)]
    Hook(HookCommand),
}

/// `dt-agent cdi hook …`.
#[derive(Subcommand, Debug)]
pub enum HookCommand {
    /// `createContainer`: run the robot's `ldconfig -r ROOTFS DIR…` (container state on stdin)
    Ldconfig {
        /// Library directories to add to the container's loader cache
        dirs: Vec<String>,
    },
}

/// Runs one `dt-agent cdi` command.
pub fn run(c: &CdiCommand, printer: &Printer) -> Result<Exit> {
    match c {
        CdiCommand::Generate {
            csv_dir,
            output_dir,
            json,
        } => {
            let out_dir = match output_dir {
                Some(d) => d.clone(),
                None => crate::cdi::spec_dirs()
                    .pop()
                    .context("no CDI spec directory")?,
            };
            let exe = std::env::current_exe().context("finding dt-agent's own path")?;
            let g = agent_cdi::generate(csv_dir, &out_dir, &exe)
                .map_err(anyhow::Error::msg)
                .context("generating the L4T CDI spec")?;
            for w in &g.warnings {
                printer.info(&format!("warning: {w}"));
            }
            if *json {
                printer.json(&g);
            } else {
                printer.out(&format!("{}: {}", g.file.display(), g.devices.join(", ")));
            }
            Ok(Exit::Ok)
        }
        CdiCommand::Export {
            config,
            output,
            json,
        } => {
            let roles = roles(config)?;
            let (spec, warnings) = agent_cdi::export(&roles, std::path::Path::new("/"));
            for w in &warnings {
                printer.info(&format!("warning: {w}"));
            }
            let as_json = *json
                || output
                    .as_ref()
                    .is_some_and(|o| o.extension().is_some_and(|x| x == "json"));
            let text = if as_json {
                serde_json::to_string_pretty(&spec)? + "\n"
            } else {
                serde_yaml_ng::to_string(&spec)?
            };
            match output {
                Some(path) => {
                    crate::util::fs::atomic_write(path, text.as_bytes())?;
                    printer.info(&format!(
                        "{}: {} device(s) of kind {}",
                        path.display(),
                        spec.devices.len(),
                        spec.kind
                    ));
                }
                None => printer.out(text.trim_end()),
            }
            Ok(Exit::Ok)
        }
        CdiCommand::List { config, json } => list(config, *json, printer),
        CdiCommand::Hook(HookCommand::Ldconfig { dirs }) => {
            if let Err(e) = agent_cdi::ldconfig_hook(dirs) {
                bail!("cdi hook ldconfig: {e}");
            }
            Ok(Exit::Ok)
        }
    }
}

/// The robot's effective roles; none without a robot.yaml.
fn roles(
    config: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, crate::profile::RoleSpec>> {
    if !config.exists() {
        return Ok(Default::default());
    }
    let rc = crate::profile::robot::RobotConfig::load(config)?;
    Ok(crate::profile::robot::effective_roles(&rc)?)
}

fn list(config: &std::path::Path, json: bool, printer: &Printer) -> Result<Exit> {
    let roles = roles(config)?;
    let reg = crate::cdi::Registry::load(&crate::cdi::spec_dirs());
    let granted_by = |dev: &str| -> Vec<String> {
        roles
            .iter()
            .filter(|(_, r)| r.cdi.iter().any(|c| c == dev))
            .map(|(n, _)| n.clone())
            .collect()
    };
    if json {
        let devices: Vec<serde_json::Value> = reg
            .devices
            .iter()
            .map(|(name, d)| {
                serde_json::json!({
                    "name": name,
                    "file": d.file,
                    "roles": granted_by(name),
                })
            })
            .collect();
        let errors: Vec<String> = reg.errors.iter().map(|e| e.to_string()).collect();
        printer.json(&serde_json::json!({"devices": devices, "errors": errors}));
    } else {
        let mut t = Table::new(&["DEVICE", "SPEC", "ROLES"]);
        for (name, d) in &reg.devices {
            t.row([
                name.clone(),
                d.file.display().to_string(),
                granted_by(name).join(","),
            ]);
        }
        printer.table(&t);
        for e in &reg.errors {
            printer.info(&format!("not used: {e}"));
        }
    }
    Ok(Exit::Ok)
}
