//! The `dt-agent` command tree. `daemon` runs the robot's long-lived side; for now its job is
//! discovery (mDNS adverts and the UDP 11411 responder, in [`crate::discover::advertise`]).
//! The other robot-side commands (serve, image, run…) arrive with the agent issue and hang off
//! [`Command`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use super::{Exit, GlobalArgs, Printer, reporter};
use crate::discover::advertise::{self, Identity, Presence, PresenceConfig};
use crate::discover::{AgentInfo, udp};
use crate::oci::Platform;
use crate::progress::{Event, Reporter};

/// dt-agent: keeps images and runs containers on a Duckiebot.
#[derive(Parser, Debug)]
#[command(name = "dt-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// `dt-agent` subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// The robot's daemon (run by systemd): advertises the robot on the LAN over mDNS and
    /// answers Duckietown's UDP pings on port 11411, until SIGTERM or SIGINT
    Daemon(DaemonArgs),
}

/// `dt-agent daemon` flags.
#[derive(Args, Debug)]
struct DaemonArgs {
    /// Robot identity (`hostname`, `type`, `configuration`); without it, the kernel's host name
    #[arg(long, env = "DT_AGENT_CONFIG", default_value = advertise::DEFAULT_CONFIG)]
    config: PathBuf,
    /// SSH host public key whose fingerprint is advertised
    #[arg(long, env = "DT_AGENT_SSH_HOST_KEY", default_value = advertise::DEFAULT_HOST_KEY)]
    ssh_host_key: PathBuf,
    /// SSH port advertised
    #[arg(long, default_value_t = 22)]
    ssh_port: u16,
    /// avahi's static services: Duckietown services found there are left to avahi
    #[arg(long, env = "DT_AGENT_AVAHI_SERVICES", default_value = advertise::DEFAULT_AVAHI_SERVICES)]
    avahi_services_dir: PathBuf,
}

/// Runs `dt-agent` with the process arguments.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::BadInput.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    let printer = Printer::new(&cli.global);
    let result = match &cli.command {
        Command::Daemon(args) => daemon(args, &cli.global),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            printer.error(&e);
            let bad_input = e.chain().any(|c| {
                c.downcast_ref::<advertise::AdvertiseError>()
                    .is_some_and(|a| a.is_bad_input())
            });
            if bad_input {
                Exit::BadInput
            } else {
                Exit::Failed
            }
            .into()
        }
    }
}

/// `dt-agent daemon`: start-up (with `BOOTING` advertised), then run until a signal, then say
/// goodbye. Later issues add their start-up steps before `ready()` and their work after it.
fn daemon(args: &DaemonArgs, g: &GlobalArgs) -> Result<Exit> {
    let log = reporter(g);
    let note = |m: String| log.event(Event::note(m));
    let identity = load_identity(args, &*log)?;
    let host_key_fingerprint = match advertise::load_fingerprint(&args.ssh_host_key) {
        Ok(fp) => Some(fp),
        Err(e) => {
            note(format!("not advertising a host key fingerprint: {e}"));
            None
        }
    };
    let avahi = advertise::avahi_services(&args.avahi_services_dir, &identity.hostname)
        .unwrap_or_else(|e| {
            note(format!("cannot read avahi services, assuming none: {e}"));
            Default::default()
        });
    let cfg = PresenceConfig {
        agent: AgentInfo {
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            arch: Platform::host().duckietown_arch().map(str::to_string),
            ssh_port: Some(args.ssh_port),
            host_key_fingerprint,
        },
        identity,
        avahi,
        udp: SocketAddr::from((Ipv4Addr::UNSPECIFIED, udp::PORT)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Signal handlers first, so a SIGTERM during start-up still ends in a goodbye.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut presence = Presence::start(&cfg, &*log)?;
        presence.ready();
        note("ready".to_string());
        tokio::select! {
            _ = term.recv() => note("SIGTERM: saying goodbye".to_string()),
            _ = tokio::signal::ctrl_c() => note("SIGINT: saying goodbye".to_string()),
        }
        // Blocks the only runtime thread for at most a few seconds; nothing else runs now.
        presence.shutdown();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Exit::Ok)
}

/// robot.yaml, or the kernel's host name when there is none.
fn load_identity(args: &DaemonArgs, log: &dyn Reporter) -> Result<Identity> {
    if args.config.exists() {
        return Ok(advertise::load_identity(&args.config)?);
    }
    let id = advertise::fallback_identity().with_context(|| {
        format!(
            "no `{}` and the kernel's host name is not a usable robot name; write the file (hostname, type, configuration)",
            args.config.display()
        )
    })?;
    log.event(Event::note(format!(
        "no `{}`: advertising as `{}` with unknown type and configuration",
        args.config.display(),
        id.hostname
    )));
    Ok(id)
}
