//! `dts duckiebot …`: commands for one robot over SSH — deploy a stack as a release, its
//! history and rollback, and Docker-style container commands (`ps`, `logs`, `run`, `stop`,
//! `rm`, `volume`) relayed to the robot's daemon through `dt-agent serve --stdio`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::containers::{RunArgs, print_line, print_ps, volumes_table};
use super::exec::{ExecArgs, LogsArgs};
use super::releases::print_history;
use super::table::{Style, Table};
use super::{Exit, GlobalArgs, Printer, human_size, reporter};
use crate::api::{DeployOutcome, ReleaseSpec, ReleaseState};
use crate::ops::robot::{self, RobotLink, SshArgs};
use crate::ops::verbs;

/// SSH flags (docs/cli.md, "Robots").
#[derive(Args, Debug, Clone)]
pub struct SshFlags {
    /// Identity file to try first
    #[arg(short = 'i', long = "identity")]
    identity: Option<PathBuf>,
    /// known_hosts file (default ~/.ssh/known_hosts; $DTS_HOME/known_hosts is read too)
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Trust and record the host key of a robot seen for the first time
    #[arg(long)]
    accept_new_host_key: bool,
}

/// [`SshFlags`] for `run`, where `-i` is Docker's `--interactive`: the identity is `--identity`.
#[derive(Args, Debug, Clone)]
pub struct RunSshFlags {
    /// Identity file to try first
    #[arg(long = "identity")]
    identity: Option<PathBuf>,
    /// known_hosts file (default ~/.ssh/known_hosts; $DTS_HOME/known_hosts is read too)
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Trust and record the host key of a robot seen for the first time
    #[arg(long)]
    accept_new_host_key: bool,
}

impl From<&RunSshFlags> for SshFlags {
    fn from(f: &RunSshFlags) -> SshFlags {
        SshFlags {
            identity: f.identity.clone(),
            known_hosts: f.known_hosts.clone(),
            accept_new_host_key: f.accept_new_host_key,
        }
    }
}

impl SshFlags {
    pub(super) fn args(&self) -> SshArgs {
        SshArgs {
            identity: self.identity.clone(),
            known_hosts: self.known_hosts.clone(),
            accept_new_host_key: self.accept_new_host_key,
        }
    }
}

/// `dts duckiebot`.
#[derive(Args, Debug)]
pub struct DuckiebotArgs {
    #[command(subcommand)]
    command: DuckiebotCommand,
}

/// The robot commands.
#[derive(Subcommand, Debug)]
enum DuckiebotCommand {
    /// Ship what the robot lacks and apply the stack as a new release (rolled back by itself
    /// when it fails its health checks)
    Deploy {
        /// The robot (a name, `[user@]host[:port]`, or a `dts sim`)
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        /// A stack file, a directory holding a compose file, or the name of a shipped stack
        /// (default: the current directory's compose.yaml/docker-compose.yml, else `duckiebot`)
        #[arg(short = 'f', long, visible_alias = "file")]
        stack: Option<String>,
        /// Swap one service's image for this deploy: `SERVICE=IMAGE`
        #[arg(long = "set")]
        set: Vec<String>,
        #[command(flatten)]
        apply: ApplyFlags,
    },
    /// Deploy the default stack (`duckiebot`): Duckietown's `dts duckiebot update`
    Update {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        #[command(flatten)]
        apply: ApplyFlags,
    },
    /// The robot's releases
    History {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the previous release (or release N); nothing is transferred
    Rollback {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        /// The release to go back to
        #[arg(long)]
        to: Option<u64>,
    },
    /// The robot's containers
    Ps {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        /// Exited ones too
        #[arg(short = 'a', long)]
        all: bool,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// A container's output (a service key of the current release, or a container name)
    Logs {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        #[command(flatten)]
        logs: LogsArgs,
    },
    /// Run a command in a running container (`-it`: an interactive terminal); exits with its
    /// code (126: cannot be executed, 127: not found)
    Exec {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: RunSshFlags,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// One container, docker-run style; ships the image first if the robot lacks it
    Run {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: RunSshFlags,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// Stop a container
    Stop {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        /// The container
        name: String,
        /// Seconds before SIGKILL
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
    },
    /// Delete a container and its writable layer
    Rm {
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        /// The container
        name: String,
        /// Kill it first if it runs
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// First boot of a new robot: install dt-agent, its service, udev rules, identity and your
    /// key, then harden it (password logins off, DT2018key removed, Docker's TCP API off, new
    /// host keys). Safe to run again. A fresh robot's host key is unknown: pass
    /// `--accept-new-host-key` on the first run
    Provision(Box<ProvisionFlags>),
    /// Named volumes on the robot
    Volume {
        /// `create`, `ls` or `rm`
        action: String,
        /// The robot
        robot: String,
        #[command(flatten)]
        ssh: SshFlags,
        /// The volume (create, rm)
        name: Option<String>,
        /// One JSON document on stdout (ls)
        #[arg(long)]
        json: bool,
    },
}

/// How `deploy` and `update` apply a stack (docs/cli.md, "Robots").
#[derive(Args, Debug)]
pub struct ApplyFlags {
    /// When to pull an image from its registry (for the robot's platform only):
    /// `missing` (neither the laptop nor the robot holds it), `always`, `never`
    #[arg(long, value_name = "WHEN", default_value = "missing", value_parser = parse_pull)]
    pull: crate::ops::deploy::PullPolicy,
    /// Talk plain HTTP to registries and skip TLS verification when pulling (lab registries)
    #[arg(long)]
    insecure: bool,
    /// Resolve everything, send and change nothing
    #[arg(long, conflicts_with = "detach")]
    dry_run: bool,
    /// Return as soon as every service runs (state `probation`): the robot then commits
    /// the release or rolls it back by itself (see `dts duckiebot history`)
    #[arg(short = 'd', long)]
    detach: bool,
    /// Do not wait for containers that hold their update lock
    /// (/data/locks/dt-agent-update.lock): switch now
    #[arg(long, conflicts_with = "dry_run")]
    force: bool,
    /// One JSON document on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hub: super::fleet::hub::HubFlags,
}

impl ApplyFlags {
    pub(super) fn how(&self) -> Result<DeployHow> {
        let mut how = DeployHow::new(
            [self.dry_run, self.detach, self.force, self.json],
            self.pull,
            self.insecure,
        )?;
        how.hub = self.hub.args(self.insecure)?;
        Ok(how)
    }

    /// The lab hub flags as given.
    pub(super) fn hub_flags(&self) -> &super::fleet::hub::HubFlags {
        &self.hub
    }
}

/// `dts duckiebot provision` flags (docs/cli.md, "Robots").
#[derive(Args, Debug)]
pub struct ProvisionFlags {
    /// The robot as it is reached now (`[user@]host[:port]`, or a name found over mDNS)
    robot: String,
    /// The robot's new host name
    #[arg(long, value_parser = parse_robot_hostname, required_unless_present = "restore_docker")]
    hostname: Option<String>,
    /// Its Duckietown configuration (a shipped profile: DB21J, DB21M, DBR4, DB19, DB18, virtual)
    #[arg(long, required_unless_present = "restore_docker")]
    configuration: Option<String>,
    /// Login name (a `user@` in ROBOT wins)
    #[arg(long, default_value = crate::ssh::target::DEFAULT_USER)]
    user: String,
    /// Read the login password (the image's default) from the first line of stdin
    #[arg(long)]
    password_stdin: bool,
    /// Key to log in with and to install (its `.pub` beside it); default ~/.ssh/id_*, else a
    /// key made in $DTS_HOME
    #[arg(short = 'i', long = "identity")]
    identity: Option<PathBuf>,
    /// known_hosts file (default ~/.ssh/known_hosts); the robot's new host keys go here
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Trust and record the host key of a robot seen for the first time (the usual case here)
    #[arg(long)]
    accept_new_host_key: bool,
    /// Ship this image from the local store once the agent is installed (repeatable)
    #[arg(long)]
    preload: Vec<String>,
    /// Keep the robot's SSH host keys instead of regenerating them on the first provision
    #[arg(long)]
    keep_host_keys: bool,
    /// Check every step and print the plan; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Give an adopted robot back to Docker: the agent's release of Docker's stack removed,
    /// Docker's containers and restart policies and dt-autoboot as they were
    #[arg(long, conflicts_with_all = ["preload", "hostname", "configuration"])]
    restore_docker: bool,
    /// Once the agent runs the adopted stack, remove Docker's packages and data root (frees the
    /// card; `--restore-docker` is then refused)
    #[arg(long, conflicts_with = "restore_docker")]
    remove_docker: bool,
    /// One JSON document on stdout
    #[arg(long)]
    json: bool,
}

fn parse_pull(s: &str) -> Result<crate::ops::deploy::PullPolicy, String> {
    s.parse()
}

fn parse_robot_hostname(s: &str) -> Result<String, String> {
    crate::ops::provision::check_hostname(s).map(|()| s.to_owned())
}

/// Runs a `dts duckiebot` command.
pub fn run(a: &DuckiebotArgs, g: &GlobalArgs, printer: &Printer) -> Result<Exit> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(dispatch(a, g, printer))
}

async fn link(robot: &str, ssh: &SshFlags) -> Result<RobotLink> {
    robot::connect(robot, &ssh.args()).await
}

async fn dispatch(a: &DuckiebotArgs, g: &GlobalArgs, printer: &Printer) -> Result<Exit> {
    match &a.command {
        DuckiebotCommand::Deploy {
            robot,
            ssh,
            stack,
            set,
            apply,
        } => {
            let how = apply.how()?;
            deploy(robot, stack.as_deref(), set, how, ssh, g, printer).await
        }
        DuckiebotCommand::Update { robot, ssh, apply } => {
            let how = apply.how()?;
            // Always the shipped default, never a compose file of the current directory.
            let default = crate::profile::stack::DEFAULT_STACK;
            deploy(robot, Some(default), &[], how, ssh, g, printer).await
        }
        DuckiebotCommand::History { robot, ssh, json } => {
            let mut l = link(robot, ssh).await?;
            let list = verbs::history(&mut l).await?;
            print_history(printer, &list, *json);
            Ok(Exit::Ok)
        }
        DuckiebotCommand::Rollback { robot, ssh, to } => {
            let mut l = link(robot, ssh).await?;
            let out = verbs::rollback(&mut l, *to).await?;
            printer.info(&format!(
                "{robot}: release {} is {}",
                out.release, out.state
            ));
            Ok(outcome_exit(&out))
        }
        DuckiebotCommand::Ps {
            robot,
            ssh,
            all,
            json,
        } => {
            let mut l = link(robot, ssh).await?;
            let list = verbs::ps(&mut l, *all).await?;
            if *json {
                printer.json(&list);
            } else {
                print_ps(printer, &list);
            }
            Ok(Exit::Ok)
        }
        DuckiebotCommand::Logs { robot, ssh, logs } => {
            let window = logs.window()?;
            let mut l = link(robot, ssh).await?;
            let mut print = logs.printer();
            let (name, tail) = (&logs.name, logs.tail());
            verbs::logs_in(&mut l, name, logs.follow, tail, false, &window, &mut print).await?;
            Ok(Exit::Ok)
        }
        DuckiebotCommand::Exec { robot, ssh, exec } => {
            super::remote_exec::exec(robot, &SshFlags::from(ssh).args(), exec).await
        }
        DuckiebotCommand::Run { robot, ssh, run } => {
            run_container(robot, run, &SshFlags::from(ssh), g).await
        }
        DuckiebotCommand::Stop {
            robot,
            ssh,
            name,
            time,
        } => {
            let mut l = link(robot, ssh).await?;
            verbs::stop(&mut l, name, *time).await?;
            printer.out(name);
            Ok(Exit::Ok)
        }
        DuckiebotCommand::Rm {
            robot,
            ssh,
            name,
            force,
        } => {
            let mut l = link(robot, ssh).await?;
            verbs::rm(&mut l, name, *force).await?;
            printer.out(name);
            Ok(Exit::Ok)
        }
        DuckiebotCommand::Provision(p) => provision(p, g, printer).await,
        DuckiebotCommand::Volume {
            action,
            robot,
            ssh,
            name,
            json,
        } => {
            let need_name = || {
                name.clone()
                    .ok_or_else(|| anyhow::anyhow!("`volume {action}` needs a volume name"))
            };
            let action = action.as_str();
            let name = match action {
                "create" | "rm" => Some(need_name()?),
                "ls" => None,
                other => {
                    return Err(anyhow::Error::new(clap::Error::raw(
                        clap::error::ErrorKind::InvalidValue,
                        format!("unknown volume action `{other}`: use create, ls or rm\n"),
                    )));
                }
            };
            let mut l = link(robot, ssh).await?;
            match (action, name) {
                ("create", Some(n)) => {
                    verbs::volume_create(&mut l, &n).await?;
                    printer.out(&n);
                }
                ("rm", Some(n)) => {
                    verbs::volume_rm(&mut l, &n).await?;
                    printer.out(&n);
                }
                _ => {
                    let list = verbs::volumes(&mut l).await?;
                    if *json {
                        printer.json(&list);
                    } else {
                        printer.table(&volumes_table(&list));
                    }
                }
            }
            Ok(Exit::Ok)
        }
    }
}

/// `provision --json` (docs/cli.md): the report, whose first fields are the documented ones.
async fn provision(p: &ProvisionFlags, g: &GlobalArgs, printer: &Printer) -> Result<Exit> {
    use crate::ops::provision::{self, ProvisionArgs};
    let configuration = p.configuration.clone().unwrap_or_default();
    let hostname = p.hostname.clone().unwrap_or_default();
    if !p.restore_docker {
        crate::profile::robot::RobotProfile::builtin(&configuration)?;
    }
    let password = if p.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        let pw = line.trim_end_matches(['\n', '\r']).to_owned();
        if pw.is_empty() {
            return Err(anyhow::Error::new(clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                "--password-stdin: stdin gave no password\n",
            )));
        }
        Some(pw)
    } else {
        None
    };
    let args = ProvisionArgs {
        robot: p.robot.clone(),
        hostname: hostname.clone(),
        configuration,
        user: p.user.clone(),
        password,
        identity: p.identity.clone(),
        known_hosts: p.known_hosts.clone(),
        accept_new_host_key: p.accept_new_host_key,
        keep_host_keys: p.keep_host_keys,
        preload: p.preload.clone(),
        dry_run: p.dry_run,
        restore_docker: p.restore_docker,
        remove_docker: p.remove_docker,
    };
    let log = reporter(g);
    let report = provision::provision(&args, &*log).await?;
    if p.json {
        printer.json(&report);
    } else {
        if report.dry_run {
            let mut t = Table::new(&["", "STEP", "DETAIL"]).style(Style::Headless);
            for s in &report.steps {
                let mark = if s.changed { "change" } else { "ok" };
                t.row([mark, s.step.as_str(), s.detail.as_str()]);
            }
            printer.table(&t);
        }
        let what = if p.restore_docker {
            if report.changed.is_empty() {
                "Docker's stack already runs as it did before adoption; nothing changed".to_owned()
            } else {
                format!(
                    "given back to Docker: {}",
                    report.steps.last().map(|s| s.detail.as_str()).unwrap_or("")
                )
            }
        } else if report.already_provisioned {
            "already provisioned; nothing changed".to_owned()
        } else if report.dry_run {
            format!("would change: {}", report.changed.join(", "))
        } else if report.changed.is_empty() {
            "nothing needed changing".to_owned()
        } else {
            format!(
                "provisioned as `{}`; changed: {}",
                hostname,
                report.changed.join(", ")
            )
        };
        printer.info(&format!(
            "{} ({}, {}): {what}",
            p.robot, report.arch, report.os
        ));
        if let Some(fp) = &report.host_key_fingerprint {
            printer.info(&format!("host key: {fp}"));
        }
    }
    for n in &report.notes {
        printer.info(&format!("note: {n}"));
    }
    if !p.json {
        for w in &report.warnings {
            printer.info(&format!("warning: {w}"));
        }
        if let Some(r) = report.adopted_release {
            printer.info(&format!(
                "Docker's stack runs as the agent's release {r}; Docker's containers are stopped (`--restore-docker` gives them back)"
            ));
        }
    }
    Ok(Exit::Ok)
}

/// `deploy --dry-run`: what would run, in start order.
fn plan_table(spec: &ReleaseSpec) -> Table {
    let mut t = Table::new(&["STAGE", "SERVICE", "IMAGE", "MANIFEST"]).right(0);
    for s in &spec.services {
        t.row([
            s.stage.to_string(),
            s.name.to_string(),
            s.image_name.clone(),
            s.manifest.to_string(),
        ]);
    }
    t
}

fn outcome_exit(out: &DeployOutcome) -> Exit {
    match out.state {
        // `probation` only answers a detached deploy: every service runs, the robot decides.
        ReleaseState::Committed | ReleaseState::Probation => Exit::Ok,
        _ => Exit::Failed,
    }
}

/// `deploy`'s switches.
#[derive(Clone, Debug)]
pub(super) struct DeployHow {
    pub(super) dry_run: bool,
    pub(super) detach: bool,
    pub(super) force: bool,
    pub(super) json: bool,
    pub(super) pull: crate::ops::deploy::PullOptions,
    /// `--via`: robots fetch large layers from this lab hub.
    pub(super) hub: Option<crate::ops::hub::HubArgs>,
}

impl DeployHow {
    /// The deploy these switches ask of `robot` (the fleet's template when `robot` is empty).
    pub(super) fn request(
        &self,
        robot: &str,
        ssh: crate::ops::robot::SshArgs,
        stack: Option<&str>,
        sets: &[String],
    ) -> Result<crate::ops::deploy::DeployRequest> {
        let via = match self.hub.clone() {
            Some(h) => Some(std::sync::Arc::new(crate::ops::hub::Via::new(h)?)),
            None => None,
        };
        Ok(crate::ops::deploy::DeployRequest {
            robot: robot.to_string(),
            ssh,
            stack: stack.map(str::to_string),
            sets: sets.to_vec(),
            pull: self.pull.clone(),
            dry_run: self.dry_run,
            detach: self.detach,
            force: self.force,
            via,
        })
    }

    /// From `[dry_run, detach, force, json]`, `--pull` and `--insecure` (`update`'s flags).
    fn new(
        [dry_run, detach, force, json]: [bool; 4],
        policy: crate::ops::deploy::PullPolicy,
        insecure: bool,
    ) -> Result<DeployHow> {
        Ok(DeployHow {
            dry_run,
            detach,
            force,
            json,
            pull: crate::ops::deploy::PullOptions {
                policy,
                registry: crate::ops::registry::client_options(insecure)?,
            },
            hub: None,
        })
    }
}

async fn deploy(
    robot: &str,
    stack_arg: Option<&str>,
    sets: &[String],
    how: DeployHow,
    ssh: &SshFlags,
    g: &GlobalArgs,
    printer: &Printer,
) -> Result<Exit> {
    let req = how.request(robot, ssh.args(), stack_arg, sets)?;
    let log = reporter(g);
    let warn = |w: String| printer.info(&format!("warning: {w}"));
    let done = crate::ops::deploy::deploy(&req, &*log, &warn).await?;
    let summary = &done.summary;
    if how.json {
        printer.json(summary);
    } else if how.dry_run {
        printer.table(&plan_table(&done.spec));
        printer.info(&format!(
            "{robot} lacks {} of {} layer(s): {} object(s), {}; {} document(s)",
            summary.plan.as_ref().map_or(0, |p| p.layers_sent),
            summary.layers_total,
            summary.objects_sent,
            human_size(summary.object_bytes),
            summary.plan.as_ref().map_or(0, |p| p.documents.len()),
        ));
    } else {
        printer.info(&format!(
            "{robot}: release {} {}; sent {} in {} object(s), {} of {} layer(s) already there, {:.1}s",
            summary.release.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            summary.state,
            human_size(summary.bytes_sent),
            summary.objects_sent,
            summary.layers_skipped,
            summary.layers_total,
            summary.duration_ms as f64 / 1000.0
        ));
        if let Some(m) = &summary.message {
            printer.info(m);
        }
    }
    if summary.state == "probation" {
        printer.info(&format!(
            "{robot}: not waiting for probation (--detach); `dts duckiebot history {robot}` shows whether release {} was committed or rolled back",
            summary.release.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        ));
    }
    Ok(done.outcome.as_ref().map_or(Exit::Ok, outcome_exit))
}

async fn run_container(robot: &str, a: &RunArgs, ssh: &SshFlags, g: &GlobalArgs) -> Result<Exit> {
    a.check_terminal()?;
    let store = crate::ops::image::open_store()?;
    let mut l = link(robot, ssh).await?;
    let mut config = a.to_config()?;
    if a.attached() {
        super::remote_exec::check_attaches(robot, &l.hello)?;
    }
    let record = crate::ops::image::find(&store, &a.image)?;
    let img = store.resolve_platform(&a.image, &record.descriptor, Some(&l.hello.platform))?;
    let manifest = img.descriptor.digest.clone();
    let log = reporter(g);
    robot::guarded(
        &l.session,
        l.conn
            .transfer(&store, &[(a.image.clone(), manifest.clone())], &*log),
    )
    .await?;
    config.image = crate::api::ImageRef::digest(&manifest);
    config.image_name = Some(a.image.clone());
    let name = config.name.clone();
    if a.attached() {
        verbs::create(&mut l, config, false).await?;
        return super::remote_exec::attach(robot, l, &name, a).await;
    }
    verbs::create(&mut l, config, true).await?;
    if a.detach {
        println!("{name}");
        return Ok(Exit::Ok);
    }
    let code = verbs::logs(&mut l, &name, true, None, true, &mut print_line).await?;
    if a.rm {
        verbs::rm(&mut l, &name, true).await?;
    }
    Ok(match code {
        Some(0) => Exit::Ok,
        Some(c) => Exit::Code(c.clamp(0, 255) as u8),
        None => Exit::Code(125),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: DuckiebotArgs,
    }

    fn parse(args: &[&str]) -> Result<DuckiebotCommand, clap::Error> {
        let argv = std::iter::once("duckiebot").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.args.command)
    }

    /// `-d/--detach` as `run` spells it; `--dry-run` changes nothing, so it cannot detach.
    #[test]
    fn deploy_detach_is_spelled_like_runs_and_refuses_dry_run() {
        for flag in ["-d", "--detach"] {
            match parse(&["deploy", "bot", flag]).unwrap() {
                DuckiebotCommand::Deploy { apply, .. } => {
                    assert!(apply.detach && !apply.dry_run)
                }
                other => panic!("{other:?}"),
            }
        }
        let e = parse(&["deploy", "bot", "--dry-run", "--detach"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        match parse(&["run", "bot", "-d", "busybox"]).unwrap() {
            DuckiebotCommand::Run { run, .. } => assert!(run.detach),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_detached_deploy_on_probation_exits_0() {
        let v = |state| DeployOutcome {
            release: 1,
            state,
            unchanged: false,
            message: String::new(),
            services: Vec::new(),
            reason: None,
            rolled_back_to: None,
            waited_ms: 0,
        };
        assert_eq!(outcome_exit(&v(ReleaseState::Probation)), Exit::Ok);
        assert_eq!(outcome_exit(&v(ReleaseState::Committed)), Exit::Ok);
        assert_eq!(outcome_exit(&v(ReleaseState::RolledBack)), Exit::Failed);
        assert_eq!(outcome_exit(&v(ReleaseState::Failed)), Exit::Failed);
    }
}
