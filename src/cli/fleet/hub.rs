//! The lab hub on the command line: `dts fleet hub up|down` (Debian's registry with a lab
//! config) and deploy's `--via REGISTRY` flags ([`HubFlags`]); the work is `ops::hub`'s.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::{Exit, Printer};
use crate::ops::hub::{self, HubArgs, UpOptions};

/// Where the password of `--hub-user` is read from unless `--hub-password-stdin`.
pub const PASSWORD_ENV: &str = "DTS_HUB_PASSWORD";

/// `deploy`'s lab hub flags.
#[derive(Args, Clone, Debug, Default)]
pub struct HubFlags {
    /// Robots fetch large layers from this OCI registry (HOST[:PORT], a lab hub such as
    /// `dts fleet hub up` starts) instead of over SSH; the laptop pushes what it lacks first.
    /// `--insecure` for a plain-HTTP hub
    #[arg(long, value_name = "REGISTRY")]
    via: Option<String>,
    /// A read-only user robots use on a Basic-auth hub (its password in DTS_HUB_PASSWORD,
    /// or --hub-password-stdin); token hubs need none: robots get a pull-only token
    #[arg(long, value_name = "USER", requires = "via")]
    hub_user: Option<String>,
    /// Read --hub-user's password from the first line of stdin
    #[arg(long, requires = "hub_user")]
    hub_password_stdin: bool,
}

impl HubFlags {
    /// `--via`, `--hub-user` and `--hub-password-stdin` as given elsewhere (`fleet.yaml`'s
    /// `hub:`, with the command line's `--hub-password-stdin`).
    pub fn with(via: &str, hub_user: Option<&str>, hub_password_stdin: bool) -> HubFlags {
        HubFlags {
            via: Some(via.to_string()),
            hub_user: hub_user.map(str::to_string),
            hub_password_stdin,
        }
    }

    /// `--hub-password-stdin`.
    pub fn password_stdin(&self) -> bool {
        self.hub_password_stdin
    }

    /// The hub to deploy through, if `--via` was given.
    pub fn args(&self, insecure: bool) -> Result<Option<HubArgs>> {
        let Some(via) = &self.via else {
            return Ok(None);
        };
        let robot_user = match &self.hub_user {
            None => None,
            Some(user) => {
                let password = if self.hub_password_stdin {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading --hub-user's password from stdin")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                } else {
                    std::env::var(PASSWORD_ENV).map_err(|_| {
                        anyhow::anyhow!(
                            "--hub-user {user}: give its password in {PASSWORD_ENV} or with --hub-password-stdin"
                        )
                    })?
                };
                Some((user.clone(), password))
            }
        };
        // Checked now: a bad --via is a usage error before anything connects.
        hub::hub_host(via, insecure)?;
        Ok(Some(HubArgs {
            hub: via.clone(),
            insecure,
            robot_user,
        }))
    }
}

/// `dts fleet hub`.
#[derive(Subcommand, Debug)]
pub enum FleetHubCmd {
    /// Start a lab hub: Debian's OCI registry (`docker-registry`) on every interface, storage
    /// under --data; robots then deploy with `--via ADDRESS:PORT --insecure`
    Up {
        /// The port to listen on
        #[arg(long, default_value_t = 5000)]
        port: u16,
        /// Its directory: config, storage, log (default: $DTS_HOME/hub)
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Run in the background until `dts fleet hub down`
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Stop the hub `up --detach` started
    Down {
        /// Its directory (default: $DTS_HOME/hub)
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

/// Runs `dts fleet hub …`.
pub fn run(cmd: &FleetHubCmd, p: &Printer) -> Result<Exit> {
    match cmd {
        FleetHubCmd::Up { port, data, detach } => {
            let data = data.clone().unwrap_or_else(hub::default_data_dir);
            let started = hub::up(&UpOptions {
                port: *port,
                data: data.clone(),
                detach: *detach,
            })?;
            p.info(&format!(
                "lab hub (pid {}) serving {} on port {port}; config {}",
                started.pid,
                data.join("data").display(),
                started.config.display()
            ));
            for v in &started.via {
                p.out(&format!("--via {v} --insecure"));
            }
            let Some(mut child) = started.child else {
                p.info("stop it with `dts fleet hub down`");
                return Ok(Exit::Ok);
            };
            p.info("Ctrl-C stops it");
            let status = child.wait().context("waiting for the hub")?;
            if status.success() || status.code().is_none() {
                Ok(Exit::Ok)
            } else {
                bail!("the hub exited with {status}")
            }
        }
        FleetHubCmd::Down { data } => {
            let data = data.clone().unwrap_or_else(hub::default_data_dir);
            match hub::down(&data)? {
                Some(pid) => p.info(&format!("lab hub (pid {pid}) stopped")),
                None => p.info(&format!("no lab hub runs from {}", data.display())),
            }
            Ok(Exit::Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Basic-auth robot user without a password is refused before anything connects, naming
    /// where the password goes; a bad `--via` is refused naming the flag.
    #[test]
    fn a_hub_user_needs_a_password_and_via_a_host() {
        if std::env::var_os(PASSWORD_ENV).is_some() {
            return; // the caller's environment gives one; nothing to check here
        }
        let e = HubFlags::with("hub.lab:5000", Some("robots"), false)
            .args(true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--hub-user robots") && e.contains(PASSWORD_ENV),
            "{e}"
        );
        let e = HubFlags::with("hub.lab/x", None, false)
            .args(true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--via"), "{e}");
        assert!(HubFlags::default().args(false).unwrap().is_none());
    }
}
