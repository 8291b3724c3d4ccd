//! Container commands with Docker's flags: `run`, `ps`, `logs`, `stop`, `rm`, `diff`,
//! `volume`. `dt-agent` sends them to its daemon over the control socket; `dts duckiebot`
//! reuses the same flag definitions ([`RunArgs`]) and renderers for a robot over SSH.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::exec::{ExecArgs, LogsArgs};
use super::table::Table;
use super::{Exit, Printer};
use crate::agent::daemon::{Client, ClientError};
use crate::api::seccomp::Security;
use crate::api::{
    CdiDevice, ContainerConfig, ContainerInfo, ContainerName, ImageRef, LogConfig, LogLine,
    NetworkMode, RestartPolicy, RoleName, VolumeInfo, VolumeSpec,
};
use crate::ops::verbs::{self, now};

/// `run` flags, as `docker run` spells them.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Run in the background and print the container's name
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// The container's name (default: derived from the image)
    #[arg(long)]
    pub name: Option<String>,
    /// Its own hostname (and UTS namespace)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Environment variable `K=V`
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Named volume or bind mount `SRC:DST[:ro]`
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Publish a port `[IP:]HOST:CONTAINER[/tcp|udp]` (gives the container its own network)
    #[arg(short = 'p', long = "publish")]
    pub ports: Vec<String>,
    /// Grant a device role of this robot (`camera`, `motors`, `leds`, …)
    #[arg(long = "device-role")]
    pub device_roles: Vec<String>,
    /// A CDI device (`nvidia.com/gpu=l4t`) a granted role lists
    #[arg(long = "device", value_name = "VENDOR/CLASS=NAME")]
    pub cdi_devices: Vec<String>,
    /// `host` (default, as ROS needs), `none`, or `bridge`
    #[arg(long, default_value = "host")]
    pub network: String,
    /// `no`, `on-failure[:N]`, `always`, `unless-stopped`
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Memory limit (`512m`, `1g`, bytes)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPU limit (`1.5`)
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Override the image's ENTRYPOINT
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Run as `user[:group]`
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// `seccomp=unconfined`, `seccomp=PROFILE.json` (Docker's format, read where this runs and
    /// sent along) or `no-new-privileges[=true|false]`
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Mount the container's root file system read-only
    #[arg(long)]
    pub read_only: bool,
    /// A label `KEY=VALUE` (repeatable), shown by `ps --json`
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// A resource limit `NAME=SOFT[:HARD]` (repeatable; `-1` unlimited), Docker's `--ulimit`
    #[arg(long = "ulimit", value_parser = parse_ulimit)]
    pub ulimits: Vec<crate::api::Ulimit>,
    /// Rotate the log at this size (`10m`)
    #[arg(long, default_value = "10m")]
    pub log_max_size: String,
    /// Log files kept
    #[arg(long, default_value_t = 3)]
    pub log_max_files: u32,
    /// Seconds between the stop signal and SIGKILL
    #[arg(long)]
    pub stop_timeout: Option<u64>,
    /// Keep stdin open: in the foreground, this terminal's (or pipe's) input is the process's
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// A pseudo-terminal: stdout and stderr merge there; with -i this terminal goes raw, its
    /// size follows and Ctrl-C reaches the process
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The image (a name on the robot, or a manifest digest)
    pub image: String,
    /// Command and arguments, replacing the image's CMD
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Parses `512m`, `1g`, `10k`, `1048576`, `1.5g` (binary units, as Docker).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| *n >= 0.0 && n.is_finite())
        .with_context(|| format!("invalid size `{s}`: use bytes or a number with k, m or g"))?;
    Ok((n * mult as f64) as u64)
}

impl RunArgs {
    /// Whether this run attaches its stdio to the container (`-i` or `-t` in the foreground),
    /// rather than following its log.
    pub fn attached(&self) -> bool {
        (self.interactive || self.tty) && !self.detach
    }

    /// Refuses `-it` when stdin is not a terminal, as Docker does.
    pub fn check_terminal(&self) -> Result<()> {
        if self.attached() && self.tty && self.interactive && !std::io::stdin().is_terminal() {
            return Err(crate::api::SpecError(
                "the input device is not a TTY: drop -t to pipe data through run -i, or run this in a terminal"
                    .into(),
            )
            .into());
        }
        Ok(())
    }

    /// The container this asks for.
    pub fn to_config(&self) -> Result<ContainerConfig> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => default_name(&self.image),
        };
        let volumes = self
            .volumes
            .iter()
            .map(|v| v.parse::<VolumeSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        let ports = self
            .ports
            .iter()
            .map(|p| p.parse())
            .collect::<Result<Vec<_>, _>>()?;
        for e in &self.env {
            if !e.contains('=') || e.starts_with('=') {
                anyhow::bail!("invalid -e `{e}`: use KEY=VALUE");
            }
        }
        if self.cpus.is_some_and(|c| c <= 0.0 || !c.is_finite()) {
            anyhow::bail!("--cpus must be a positive number");
        }
        let mut security = Security {
            read_only: self.read_only,
            ..Default::default()
        };
        for opt in &self.security_opt {
            security.apply_opt(opt, |path| {
                std::fs::read_to_string(path).map_err(|e| e.to_string())
            })?;
        }
        Ok(ContainerConfig {
            name: ContainerName::new(name)?,
            image: ImageRef::new(&*self.image)?,
            image_name: None,
            entrypoint: self.entrypoint.as_ref().map(|e| vec![e.clone()]),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            security,
            hostname: self.hostname.clone(),
            volumes,
            ports,
            network: self.network.parse::<NetworkMode>()?,
            restart: self.restart.parse::<RestartPolicy>()?,
            memory: self.memory.as_deref().map(parse_size).transpose()?,
            cpus: self.cpus,
            device_roles: self
                .device_roles
                .iter()
                .map(RoleName::new)
                .collect::<Result<_, _>>()?,
            cdi_devices: self
                .cdi_devices
                .iter()
                .map(CdiDevice::new)
                .collect::<Result<_, _>>()?,
            service: None,
            release: None,
            // In the foreground without a terminal `run` removes it itself after the last
            // log line; attached, the daemon does, when the exit is recorded.
            auto_remove: self.rm && (self.detach || self.attached()),
            tty: self.tty,
            stdin_open: self.interactive,
            log: LogConfig {
                max_size: parse_size(&self.log_max_size)?.max(1),
                max_files: self.log_max_files.max(1),
                discard: false,
            },
            stop_timeout: self.stop_timeout,
            stop_signal: None,
            init: None,
            labels: self
                .labels
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            ulimits: self.ulimits.clone(),
        })
    }
}

/// `--ulimit NAME=SOFT[:HARD]`, as Docker reads it (`-1` is unlimited).
fn parse_ulimit(s: &str) -> Result<crate::api::Ulimit, String> {
    let bad = || format!("`{s}`: expected NAME=SOFT[:HARD] (`nofile=1024:4096`)");
    let (name, limits) = s.split_once('=').ok_or_else(bad)?;
    let n = |v: &str| -> Result<u64, String> {
        match v.trim() {
            "-1" => Ok(u64::MAX),
            v => v.parse().map_err(|_| bad()),
        }
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((a, b)) => (n(a)?, n(b)?),
        None => (n(limits)?, n(limits)?),
    };
    let u = crate::api::Ulimit {
        name: name.to_string(),
        soft,
        hard,
    };
    u.check().map_err(|e| e.0)?;
    Ok(u)
}

/// A name from the image's last path component plus a few random hex digits
/// (`dt-core-3fa2`), since Docker's adjective_noun names mean nothing on a robot.
fn default_name(image: &str) -> String {
    let base = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split([':', '@'])
        .next()
        .unwrap_or("container");
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let mut bytes = [0u8; 2];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    let base = if base.is_empty() { "c".into() } else { base };
    format!("{base}-{}", hex::encode(bytes))
}

/// Container commands sent to a daemon.
#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Create and start a container: in the foreground it streams the output and exits with
    /// the container's code (125 when the agent failed)
    Run(Box<RunArgs>),
    /// Containers: name, image, state, pid, device roles
    Ps {
        /// Exited containers too
        #[arg(short = 'a', long)]
        all: bool,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// A container's output
    Logs(LogsArgs),
    /// Run a command in a running container (`-it`: an interactive terminal); exits with its
    /// code (126: cannot be executed, 127: not found)
    Exec(ExecArgs),
    /// Start a stopped container again (`-a`: attached, exiting with its code, as `docker
    /// start -a`)
    Start {
        /// The container
        name: String,
        /// Attach this process's stdout and stderr (and its terminal, when the container has
        /// one) until the container exits; exit with its code
        #[arg(short = 'a', long)]
        attach: bool,
        /// With --attach, this process's stdin is the container's
        #[arg(short = 'i', long, requires = "attach")]
        interactive: bool,
    },
    /// Stop a container: its stop signal, then SIGKILL after the timeout
    Stop {
        /// The container
        name: String,
        /// Seconds to wait before SIGKILL (default 10)
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
    },
    /// Send a signal to a container
    Kill {
        /// The container
        name: String,
        /// The signal
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
    },
    /// Delete a container and its writable layer
    Rm {
        /// The container
        name: String,
        /// Kill it first if it runs
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// What a container changed in its writable layer (A added, C changed, D deleted)
    Diff {
        /// The container
        name: String,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Named volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
}

/// `volume …`.
#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a named volume
    Create {
        /// Its name
        name: String,
    },
    /// List named volumes
    Ls {
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Delete a named volume and its data
    Rm {
        /// Its name
        name: String,
    },
}

/// The exit for a failed request: 2 for a bad request, 1 otherwise (125 for `run`).
fn remote_exit(e: &anyhow::Error, run: bool) -> Exit {
    let bad = e.chain().any(|c| {
        c.downcast_ref::<ClientError>()
            .is_some_and(|c| matches!(c, ClientError::Remote(r) if r.is_bad_input()))
            || c.downcast_ref::<crate::agent::container::ContainerError>()
                .is_some_and(|c| c.is_bad_input())
            || c.downcast_ref::<crate::api::RemoteError>()
                .is_some_and(|r| r.is_bad_input())
            || c.is::<crate::api::SpecError>()
            || c.is::<crate::api::PortSpecError>()
    });
    match (run, bad) {
        (_, true) => Exit::BadInput,
        (true, false) => Exit::Code(125),
        (false, false) => Exit::Failed,
    }
}

/// Runs a container command against the daemon of the agent at `root`.
pub fn run(c: &ContainerCommand, root: &std::path::Path, printer: &Printer) -> Exit {
    let is_run = matches!(
        c,
        ContainerCommand::Run(_) | ContainerCommand::Start { attach: true, .. }
    );
    match dispatch(c, root, printer) {
        Ok(exit) => exit,
        Err(e) => {
            printer.error(&e);
            remote_exit(&e, is_run)
        }
    }
}

fn dispatch(c: &ContainerCommand, root: &std::path::Path, printer: &Printer) -> Result<Exit> {
    // The verbs are `ops::verbs`', shared with `dts duckiebot`; the daemon's client blocks,
    // so each runs to its end at once.
    let client = || Client::connect(root);
    match c {
        ContainerCommand::Run(a) => {
            let config = a.to_config()?;
            let name = config.name.clone();
            let mut cl = client()?;
            if a.attached() {
                a.check_terminal()?;
                now(verbs::create(&mut cl, config, false))?;
                return attach(root, &name, a.interactive);
            }
            now(verbs::create(&mut cl, config, true))?;
            if a.detach {
                printer.out(&name);
                return Ok(Exit::Ok);
            }
            let code = now(verbs::logs(
                &mut cl,
                &name,
                true,
                None,
                true,
                &mut print_line,
            ))?;
            if a.rm {
                now(verbs::rm(&mut client()?, &name, true))?;
            }
            Ok(match code {
                Some(0) => Exit::Ok,
                Some(c) => Exit::Code(c.clamp(0, 255) as u8),
                None => Exit::Code(125),
            })
        }
        ContainerCommand::Ps { all, json } => {
            let list = now(verbs::ps(&mut client()?, *all))?;
            if *json {
                printer.json(&list);
            } else {
                print_ps(printer, &list);
            }
            Ok(Exit::Ok)
        }
        ContainerCommand::Logs(l) => {
            let window = l.window()?;
            let mut print = l.printer();
            now(verbs::logs_in(
                &mut client()?,
                &l.name,
                l.follow,
                l.tail(),
                false,
                &window,
                &mut print,
            ))?;
            Ok(Exit::Ok)
        }
        ContainerCommand::Exec(a) => {
            let spec = a.to_spec(crate::util::tty::own_size())?;
            if a.tty && a.interactive && !std::io::stdin().is_terminal() {
                return Err(crate::api::SpecError(
                    "the input device is not a TTY: drop -t, or run this in a terminal".into(),
                )
                .into());
            }
            // The daemon's refusal itself, so that its class decides the exit (2 for bad input).
            let code = crate::agent::exec::run(root, &spec).map_err(|e| match e {
                crate::agent::exec::ExecError::Remote(r) => anyhow::Error::from(r),
                other => other.into(),
            })?;
            Ok(if code == 0 {
                Exit::Ok
            } else {
                Exit::Code(code.clamp(0, 255) as u8)
            })
        }
        ContainerCommand::Start {
            name,
            attach: true,
            interactive,
        } => self::attach(root, &ContainerName::new(name.clone())?, *interactive),
        ContainerCommand::Start { name, .. } => {
            now(verbs::start(&mut client()?, name))?;
            printer.out(name);
            Ok(Exit::Ok)
        }
        ContainerCommand::Stop { name, time } => {
            now(verbs::stop(&mut client()?, name, *time))?;
            printer.out(name);
            Ok(Exit::Ok)
        }
        ContainerCommand::Kill { name, signal } => {
            now(verbs::kill(&mut client()?, name, signal))?;
            printer.out(name);
            Ok(Exit::Ok)
        }
        ContainerCommand::Rm { name, force } => {
            now(verbs::rm(&mut client()?, name, *force))?;
            printer.out(name);
            Ok(Exit::Ok)
        }
        ContainerCommand::Diff { name, json } => {
            let changes = now(verbs::diff(&mut client()?, name))?;
            if *json {
                printer.json(&changes);
            } else {
                for c in changes {
                    printer.out(&format!("{} {}", c.kind, c.path));
                }
            }
            Ok(Exit::Ok)
        }
        ContainerCommand::Volume(v) => match v {
            VolumeCommand::Create { name } => {
                now(verbs::volume_create(&mut client()?, name))?;
                printer.out(name);
                Ok(Exit::Ok)
            }
            VolumeCommand::Ls { json } => {
                let list = now(verbs::volumes(&mut client()?))?;
                if *json {
                    printer.json(&list);
                } else {
                    printer.table(&volumes_table(&list));
                }
                Ok(Exit::Ok)
            }
            VolumeCommand::Rm { name } => {
                now(verbs::volume_rm(&mut client()?, name))?;
                printer.out(name);
                Ok(Exit::Ok)
            }
        },
    }
}

/// `start -a`: the container's exit code as ours (125 when the agent failed, 126/127 when
/// the command could not run).
fn attach(root: &std::path::Path, name: &ContainerName, interactive: bool) -> Result<Exit> {
    // The daemon's refusal itself, so that its class decides the exit (2 for bad input).
    let code = crate::agent::exec::attach(root, name, interactive).map_err(|e| match e {
        crate::agent::exec::ExecError::Remote(r) => anyhow::Error::from(r),
        other => other.into(),
    })?;
    Ok(if code == 0 {
        Exit::Ok
    } else {
        Exit::Code(code.clamp(0, 255) as u8)
    })
}

/// Writes a container's line to our stdout or stderr, as it wrote it.
pub fn print_line(l: LogLine) {
    super::exec::print_line_as(l, false);
}

/// The `ps` table (`dt-agent ps`, `dts duckiebot ps`).
pub fn print_ps(printer: &Printer, list: &[ContainerInfo]) {
    printer.table(&ps_table(list));
}

/// The rows of `ps`: columns as wide as their longest value.
pub fn ps_table(list: &[ContainerInfo]) -> Table {
    let mut t = Table::new(&["NAME", "IMAGE", "STATE", "PID", "RESTARTS", "ROLES"])
        .right(3)
        .right(4);
    for c in list {
        let state = match (c.state.as_str(), c.exit_code) {
            ("exited", Some(code)) => format!("exited({code})"),
            (s, _) => s.to_string(),
        };
        t.row([
            c.name.clone(),
            c.image.clone(),
            state,
            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.restart_count.to_string(),
            c.device_roles.join(","),
        ]);
    }
    t
}

/// The `volume ls` table (`dt-agent volume ls`, `dts duckiebot volume ls`).
pub fn volumes_table(list: &[VolumeInfo]) -> Table {
    let mut t = Table::new(&["NAME", "USED BY"]);
    for v in list {
        t.row([v.name.clone(), v.used_by.join(",")]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        let n = default_name("duckietown/dt-core:daffy-arm64v8");
        assert!(
            n.starts_with("dt-core-") && n.len() == "dt-core-".len() + 4,
            "{n}"
        );
    }

    fn container(name: &str, image: &str, state: &str, pid: Option<u32>) -> ContainerInfo {
        serde_json::from_value(serde_json::json!({
            "name": name, "service": name, "release": 1, "image": image,
            "manifest": crate::oci::Digest::of(image.as_bytes()), "state": state, "pid": pid,
            "device_roles": ["camera", "motors"], "started_at": null, "finished_at": null,
            "exit_code": if state == "exited" { Some(1) } else { None },
            "restart_count": 0, "restart": {"policy": "no"}, "ip": null, "error": null,
        }))
        .unwrap()
    }

    /// The display column of `cell` in `line`.
    fn col(line: &str, cell: &str) -> usize {
        let at = line
            .find(cell)
            .unwrap_or_else(|| panic!("`{cell}` in `{line}`"));
        line[..at].chars().count()
    }

    /// Issue 20: a real Duckietown image name (longer than the old fixed 40 columns) pushed
    /// every later column of `ps` out of line.
    #[test]
    fn ps_keeps_its_columns_in_line_with_real_image_names() {
        let list = [
            container(
                "interface",
                "duckietown/dt-duckiebot-interface:daffy-arm64v8",
                "running",
                Some(4242),
            ),
            container("core", "duckietown/dt-core:daffy-arm64v8", "exited", None),
        ];
        let lines = ps_table(&list).render(None);
        let state = col(&lines[0], "STATE");
        assert_eq!(col(&lines[1], "running"), state, "{lines:#?}");
        assert_eq!(col(&lines[2], "exited(1)"), state, "{lines:#?}");
        let roles = col(&lines[0], "ROLES");
        assert_eq!(col(&lines[1], "camera,motors"), roles, "{lines:#?}");
        assert_eq!(col(&lines[2], "camera,motors"), roles, "{lines:#?}");
        // PID is right-aligned under its header.
        let pid_end = col(&lines[0], "PID") + 3;
        assert_eq!(col(&lines[1], "4242") + 4, pid_end, "{lines:#?}");
        assert_eq!(col(&lines[2], " - ") + 2, pid_end, "{lines:#?}");
        // A pipe gets the whole name.
        assert!(lines[1].contains("duckietown/dt-duckiebot-interface:daffy-arm64v8"));
        // A narrow terminal gets it shortened, the other columns still in line.
        let narrow = ps_table(&list).render(Some(80));
        assert!(
            narrow.iter().all(|l| l.chars().count() <= 80),
            "{narrow:#?}"
        );
        assert!(narrow[1].contains('…'), "{narrow:#?}");
        let state = col(&narrow[0], "STATE");
        assert_eq!(col(&narrow[1], "running"), state, "{narrow:#?}");
    }

    #[test]
    fn volume_ls_has_a_header_and_long_names_stay_in_line() {
        let list: Vec<VolumeInfo> = serde_json::from_value(serde_json::json!([
            {"name": "a-very-long-volume-name-for-the-camera-calibration-data", "path": "/x", "used_by": ["core"]},
            {"name": "logs", "path": "/y", "used_by": []},
        ]))
        .unwrap();
        let lines = volumes_table(&list).render(None);
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "USED", "BY"]
        );
        assert_eq!(
            col(&lines[1], "core"),
            col(&lines[0], "USED BY"),
            "{lines:#?}"
        );
        assert_eq!(lines[2], "logs");
    }
}
