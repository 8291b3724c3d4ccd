//! The `dt-agent` command tree. `daemon` runs the robot's long-lived side (containers,
//! releases, the control socket, and discovery: mDNS adverts and the UDP 11411 responder in
//! [`crate::discover::advertise`]); `serve --stdio` is the wire protocol's robot end; the
//! others are for a person on the robot (docs/cli.md, "`dt-agent` (on the robot)").

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use super::containers::ContainerCommand;
use super::releases::ReleaseCommand;
use super::table::Table;
use super::{Exit, GlobalArgs, Printer, human_size, reporter};
use crate::agent::store::{AgentStore, AgentStoreError, ImportOptions};
use crate::discover::advertise::{self, Identity, Presence, PresenceConfig};
use crate::discover::{AgentInfo, udp};
use crate::oci::Platform;
use crate::oci::Reference;
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
    /// Images on this robot: import an archive (offline preloading), list them, drop a name
    #[command(subcommand)]
    Image(ImageCommand),
    /// Re-verify the store: every object against its digest, every layer rebuilt to its
    /// diff_id, every name to its layers and snapshot; exits 1 if anything is wrong
    Fsck(StoreJsonArgs),
    /// Remove what no image name and no release needs, and what crashed imports left
    Gc(StoreJsonArgs),
    /// This robot at a glance: hostname, arch, agent version, runtime, free space, images
    Status(StoreJsonArgs),
    /// Speak the wire protocol to `dts` on stdin/stdout (run over SSH by `dts duckiebot …`)
    Serve {
        /// Frames on stdin and stdout (the only transport)
        #[arg(long, required = true)]
        stdio: bool,
    },
    /// CDI devices (Container Device Interface): generate the Jetson's spec from its L4T CSV
    /// files, export this robot's roles as a spec, list what the specs define
    #[command(subcommand)]
    Cdi(super::cdi::CdiCommand),
    #[command(flatten)]
    Container(Box<ContainerCommand>),
    #[command(flatten)]
    Release(ReleaseCommand),
    /// Internal: the per-container shim the daemon starts (holds a container's output and
    /// exit status while the daemon restarts)
    #[command(hide = true)]
    Shim {
        /// The container's directory
        dir: PathBuf,
    },
    /// Internal: a container's PID 1 with `init: true` (forwards signals, reaps zombies)
    #[command(hide = true)]
    Init {
        /// The command and its arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// `dt-agent image …`.
#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import a docker-archive or OCI archive (e.g. from a USB stick), or images from Docker's
    /// data root (`--docker-root`): all of it or nothing
    Import(ImportArgs),
    /// The named images: name, digest, platform, size
    Ls(StoreJsonArgs),
    /// Drop a name; `dt-agent gc` then frees what nothing else uses
    Rm {
        /// The image name
        name: String,
    },
}

/// `dt-agent image import` flags.
#[derive(Args, Debug)]
struct ImportArgs {
    /// The archive (`docker save` / `dts image save` output, plain, gzip or zstd; `-` reads it
    /// from standard input) or OCI layout directory; with `--docker-root`, the images to take
    /// (names, or ids as `docker images -q` prints them)
    #[arg(required = true, value_name = "FILE|IMAGE")]
    inputs: Vec<String>,
    /// Take the images straight from this Docker data root (overlay2 storage driver only, e.g.
    /// /var/lib/docker) instead of an archive: no `docker save`, nothing staged
    #[arg(long, value_name = "DIR", conflicts_with = "expect_bytes")]
    docker_root: Option<PathBuf>,
    /// Name the image (needed when the archive names none)
    #[arg(short = 't', long = "tag")]
    tag: Option<String>,
    /// Platform to take from a multi-platform image (default: this robot's)
    #[arg(long)]
    platform: Option<String>,
    /// Print what was imported as JSON
    #[arg(long)]
    json: bool,
    /// Bytes the archive is expected to have, for progress when it comes from a pipe (e.g. the
    /// sum of `docker image inspect --format '{{.Size}}'` of the images saved)
    #[arg(long, value_name = "N")]
    expect_bytes: Option<u64>,
}

/// `--json` for the store commands.
#[derive(Args, Debug)]
struct StoreJsonArgs {
    /// One JSON document on stdout
    #[arg(long)]
    json: bool,
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
    let cli = match super::parse_args::<Cli>() {
        Ok(c) => c,
        Err(exit) => return exit.into(),
    };
    let printer = Printer::new(&cli.global);
    let result = match &cli.command {
        Command::Daemon(args) => daemon(args, &cli.global),
        Command::Image(c) => store_exit(&printer, image(c, &cli.global, &printer)),
        Command::Fsck(a) => store_exit(&printer, fsck(a, &printer)),
        Command::Gc(a) => store_exit(&printer, gc(a, &printer)),
        Command::Status(a) => store_exit(&printer, status(a, &printer)),
        Command::Serve { .. } => return serve(),
        Command::Cdi(c) => super::cdi::run(c, &printer),
        Command::Container(c) => {
            return super::containers::run(c, &crate::agent::agent_root(), &printer).into();
        }
        Command::Release(c) => {
            return super::releases::run(c, &crate::agent::agent_root(), &printer).into();
        }
        Command::Shim { dir } => {
            return std::process::ExitCode::from(crate::agent::container::shim::main(dir) as u8);
        }
        Command::Init { command } => {
            return std::process::ExitCode::from(crate::agent::container::init::main(command) as u8);
        }
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            printer.error(&e);
            let bad_input = e.chain().any(|c| {
                c.downcast_ref::<advertise::AdvertiseError>()
                    .is_some_and(|a| a.is_bad_input())
                    || c.downcast_ref::<crate::profile::ProfileError>()
                        .is_some_and(|p| p.is_bad_input())
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

/// `dt-agent serve --stdio`: the wire protocol on stdin/stdout; errors go to stderr (and to
/// the laptop as a message), never to stdout. Exits 2 when the laptop was at fault.
fn serve() -> ExitCode {
    let root = crate::agent::agent_root();
    let mut input = std::io::stdin().lock();
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    match crate::wire::serve::serve(&root, &mut input, &mut output) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("dt-agent serve: {e}");
            if crate::wire::serve::is_bad_input(&e) {
                Exit::BadInput.into()
            } else {
                Exit::Failed.into()
            }
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
    let containers = start_containers(&args.config, &log)?;
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
    // Containers keep running: the next daemon adopts them.
    if let Some(server) = containers {
        server.shutdown();
    }
    Ok(Exit::Ok)
}

/// The container side of the daemon: the runtime, the robot's device roles, the control
/// socket and the supervisor (which first adopts what an earlier daemon left running).
/// Without an OCI runtime the robot still advertises itself; container requests then fail.
fn start_containers(
    config: &std::path::Path,
    log: &std::sync::Arc<dyn Reporter>,
) -> Result<Option<crate::agent::daemon::Server>> {
    use std::sync::Arc;
    let root = crate::agent::agent_root();
    let runtime = match crate::runtime::Runtime::detect(&root.join("runtime")) {
        Ok(r) => r,
        Err(e) => {
            log.event(Event::note(format!("containers disabled: {e}")));
            return Ok(None);
        }
    };
    // Warned at every start, in the daemon's log (journalctl -u dt-agent) and in `status`.
    if let Some(w) = crate::runtime::advisory::cve_2024_21626(runtime.command(), Path::new("/")) {
        log.event(Event::note(format!("warning: {w}")));
    }
    // A robot.yaml the profiles cannot serve (a watchtower, a configuration this agent does
    // not know yet) must not keep the robot off the network: containers then get no roles.
    let mut keep = crate::profile::robot::DEFAULT_KEEP_RELEASES;
    let roles = if config.exists() {
        match crate::profile::robot::RobotConfig::load(config).and_then(|rc| {
            keep = rc.keep_releases;
            crate::profile::robot::effective_roles(&rc)
        }) {
            Ok(r) => r,
            Err(e) => {
                log.event(Event::note(format!("no device roles for containers: {e}")));
                Default::default()
            }
        }
    } else {
        Default::default()
    };
    crate::util::fs::create_dir_all(&root)?;
    // The Jetson's L4T libraries as a CDI spec in /var/run/cdi (a tmpfs: made at every boot),
    // before any container starts with the camera role.
    if let Ok(exe) = std::env::current_exe() {
        match crate::agent::cdi::generate_at_start(&exe) {
            Some(Ok(g)) => log.event(Event::note(format!(
                "CDI: wrote {} ({})",
                g.file.display(),
                g.devices.join(", ")
            ))),
            Some(Err(e)) => log.event(Event::note(format!("CDI: no L4T spec: {e}"))),
            None => {}
        }
    }
    let manager = Arc::new(crate::agent::container::Manager::new(
        &root,
        runtime,
        roles,
        std::path::Path::new("/"),
    )?);
    let log = Arc::clone(log);
    let note: Arc<dyn Fn(String) + Send + Sync> =
        Arc::new(move |m: String| log.event(Event::note(m)));
    let releases = Arc::new(
        crate::agent::release::Releases::new(&root, Arc::clone(&manager))?.with_keep(keep),
    );
    let server = crate::agent::daemon::Server::start(&root, manager, releases, note)?;
    Ok(Some(server))
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

// ---------------------------------------------------------------------------------------------
// The robot store: image import/ls/rm, fsck, gc, status.

/// Opens the robot store at `$DT_AGENT_ROOT` (default `/var/lib/dt-agent`).
fn open_store() -> Result<AgentStore> {
    let root = crate::agent::agent_root();
    AgentStore::open(&root).with_context(|| format!("opening the robot store `{}`", root.display()))
}

/// Renders a store command's failure here, so its exit code can say whose fault it was: 2 for
/// a bad archive or name, 1 otherwise.
fn store_exit(printer: &Printer, r: Result<Exit>) -> Result<Exit> {
    match r {
        Ok(exit) => Ok(exit),
        Err(e) => {
            printer.error(&e);
            let bad_input = e.chain().any(|c| {
                c.downcast_ref::<AgentStoreError>()
                    .is_some_and(|a| a.is_bad_input())
                    || c.is::<crate::oci::reference::ReferenceError>()
                    || c.is::<crate::oci::platform::PlatformError>()
            });
            Ok(if bad_input {
                Exit::BadInput
            } else {
                Exit::Failed
            })
        }
    }
}

fn image(c: &ImageCommand, g: &GlobalArgs, printer: &Printer) -> Result<Exit> {
    match c {
        ImageCommand::Import(a) => {
            let tag = a.tag.as_deref().map(Reference::parse).transpose()?;
            let platform = a
                .platform
                .as_deref()
                .map(str::parse::<Platform>)
                .transpose()?;
            let opts = ImportOptions {
                tag: tag.as_ref(),
                platform: platform.as_ref(),
                expect_bytes: a.expect_bytes,
            };
            let report = match (&a.docker_root, a.inputs.as_slice()) {
                (Some(root), images) => open_store()?
                    .import_docker_root(root, images, &opts, &*reporter(g))
                    .with_context(|| {
                        format!("importing {} from `{}`", images.join(" "), root.display())
                    })?,
                (None, [file]) => open_store()?
                    .import(Path::new(file), &opts, &*reporter(g))
                    .with_context(|| format!("importing `{file}`"))?,
                (None, _) => {
                    printer.error(&anyhow::anyhow!(
                        "`image import` takes one archive; several images are taken with \
                         `--docker-root DIR IMAGE…`"
                    ));
                    return Ok(Exit::BadInput);
                }
            };
            if a.json {
                printer.json(&report);
            } else {
                for i in &report.images {
                    printer.info(&format!(
                        "imported {} ({}, {})",
                        i.name, i.platform, i.digest
                    ));
                    printer.out(&i.digest.to_string());
                }
                printer.info(&format!(
                    "{} new layer(s), {} present; {} new object(s), {}",
                    report.layers_added,
                    report.layers_present,
                    report.objects_added,
                    human_size(report.object_bytes_added)
                ));
            }
            Ok(Exit::Ok)
        }
        ImageCommand::Ls(a) => {
            let images = open_store()?.images()?;
            if a.json {
                printer.json(&images);
            } else {
                let mut t = Table::new(&["NAME", "PLATFORM", "DIGEST", "SIZE"]).right(3);
                for i in images {
                    t.row([
                        i.name,
                        i.platform.to_string(),
                        i.digest.short().to_string(),
                        human_size(i.size),
                    ]);
                }
                printer.table(&t);
            }
            Ok(Exit::Ok)
        }
        ImageCommand::Rm { name } => {
            let r = Reference::parse(name)?;
            open_store()?.remove_name(&r)?;
            printer.info(&format!(
                "removed the name `{}`; `dt-agent gc` frees what nothing else uses",
                r.familiar()
            ));
            Ok(Exit::Ok)
        }
    }
}

fn fsck(a: &StoreJsonArgs, printer: &Printer) -> Result<Exit> {
    let report = open_store()?.fsck()?;
    if a.json {
        printer.json(&report);
    } else {
        for p in &report.problems {
            printer.out(&format!("problem: {p}"));
        }
        printer.info(&format!(
            "checked {} object(s) ({}), {} layer(s), {} document(s), {} name(s), {} snapshot(s): {}",
            report.objects,
            human_size(report.object_bytes),
            report.layers,
            report.documents,
            report.names,
            report.snapshots,
            if report.is_clean() {
                "clean".to_string()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        ));
    }
    Ok(if report.is_clean() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

fn gc(a: &StoreJsonArgs, printer: &Printer) -> Result<Exit> {
    let report = open_store()?.gc()?;
    if a.json {
        printer.json(&report);
    } else {
        printer.info(&format!(
            "kept {} image(s); removed {} snapshot(s), {} layer(s), {} object(s) ({} freed), {} document(s), {} abandoned import(s)",
            report.images_kept,
            report.snapshots_removed,
            report.layers_removed,
            report.objects_removed,
            human_size(report.bytes_freed),
            report.documents_removed,
            report.tmp_removed
        ));
    }
    Ok(Exit::Ok)
}

fn status(a: &StoreJsonArgs, printer: &Printer) -> Result<Exit> {
    let s = crate::agent::status::status(&open_store()?)?;
    if a.json {
        printer.json(&s);
    } else {
        printer.out(&format!("hostname:      {}", s.hostname));
        printer.out(&format!("arch:          {}", s.arch));
        printer.out(&format!("agent version: {}", s.agent_version));
        printer.out(&format!(
            "runtime:       {}",
            s.runtime_version
                .as_deref()
                .unwrap_or("none (install runc)")
        ));
        printer.out(&format!("free:          {}", human_size(s.free_bytes)));
        printer.out(&format!("images:        {}", s.images.len()));
        for w in &s.warnings {
            printer.info(&format!("warning: {w}"));
        }
    }
    Ok(Exit::Ok)
}
