//! `dts devel deploy ROBOT [SERVICE] [--watch]` and `dts devel build -H ROBOT`: flags and
//! printing; the work is `ops::devel`'s.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::{Exit, GlobalArgs, Printer, human_size, reporter};
use crate::api::ReleaseState;
use crate::ops::build::BuildArgs;
use crate::ops::devel::{self, DevelReport, Mode, watch};
use crate::ops::robot::SshArgs;

/// The SSH flags of the `devel` commands that reach a robot (docs/cli.md, "Robots").
#[derive(Args, Debug, Clone, Default)]
pub struct DevelSsh {
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

impl DevelSsh {
    pub(super) fn args(&self) -> SshArgs {
        SshArgs {
            identity: self.identity.clone(),
            known_hosts: self.known_hosts.clone(),
            accept_new_host_key: self.accept_new_host_key,
        }
    }
}

/// `dts devel deploy` flags.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The robot (a name, `[user@]host[:port]`, or a `dts sim`)
    robot: String,
    /// The service of the running release to replace (default: the one whose image has the
    /// built image's repository)
    service: Option<String>,
    #[command(flatten)]
    ssh: DevelSsh,
    /// The build context directory
    #[arg(short = 'C', long = "context", default_value = ".")]
    context: PathBuf,
    /// The Dockerfile (default: <context>/Dockerfile)
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name the image (repeatable; default Duckietown's `duckietown/<repo>:<branch>-<arch>`)
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Build argument KEY=VALUE (repeatable)
    #[arg(long = "build-arg", value_parser = parse_kv)]
    build_args: Vec<(String, String)>,
    /// Build this stage instead of the last
    #[arg(long)]
    target: Option<String>,
    /// Do not use the build cache
    #[arg(long)]
    no_cache: bool,
    /// Pull base images over plain HTTP (lab registries)
    #[arg(long)]
    insecure: bool,
    /// Rebuild and redeploy on every saved change of the context, until Ctrl-C
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// Wait for the release's probation to end (committed or rolled back) instead of
    /// returning once its services run
    #[arg(long)]
    wait: bool,
    /// Do not wait for containers that hold their update lock: switch now
    #[arg(long)]
    force: bool,
    /// One JSON document on stdout
    #[arg(long)]
    json: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

impl DeployArgs {
    fn build_args(&self) -> BuildArgs {
        BuildArgs {
            context: self.context.clone(),
            dockerfile: self.file.clone(),
            tags: self.tags.clone(),
            platforms: Vec::new(),
            build_args: self.build_args.iter().cloned().collect(),
            target: self.target.clone(),
            no_cache: self.no_cache,
            insecure: self.insecure,
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `dts devel deploy`.
pub fn deploy(a: &DeployArgs, g: &GlobalArgs, p: &Printer) -> Result<Exit> {
    let started = Instant::now();
    let store = crate::ops::image::open_store()?;
    let log = reporter(g);
    let args = a.build_args();
    let mode = Mode {
        wait: a.wait,
        force: a.force,
    };
    let rt = runtime()?;
    if a.watch {
        let ssh = a.ssh.args();
        let w = watch::Watch {
            robot: &a.robot,
            ssh: &ssh,
            store: &store,
            args: &args,
            service: a.service.as_deref(),
            mode,
            log: &*log,
        };
        rt.block_on(w.run(interrupted(), &mut |round| print_round(p, round)))?;
        p.info("stopped watching");
        return Ok(Exit::Ok);
    }
    let (report, outcome) = rt.block_on(async {
        let mut link = crate::ops::robot::connect(&a.robot, &a.ssh.args()).await?;
        for w in &link.hello.warnings {
            p.info(&format!("warning: {}: {w}", a.robot));
        }
        devel::build_and_deploy(
            &mut link,
            &store,
            &args,
            a.service.as_deref(),
            mode,
            started,
            &*log,
        )
        .await
    })?;
    if a.json {
        p.json(&report);
    } else {
        print_report(p, &report, "command");
    }
    Ok(match outcome.state {
        ReleaseState::Committed | ReleaseState::Probation => Exit::Ok,
        _ => Exit::Failed,
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// One line for people: the release, the service and image, what crossed and the time to
/// running.
fn print_report(p: &Printer, r: &DevelReport, since: &str) {
    let running = match r.state.as_str() {
        "probation" => "running",
        other => other,
    };
    p.info(&format!(
        "{}: `{}` runs {} (release {} {running}) {:.1}s after the {}; built in {:.1}s ({} step(s) run, {} cached); sent {}, received {} ({} object(s), {}; {} of {} layer(s) already there)",
        r.robot,
        r.service,
        r.image,
        r.release,
        r.duration_ms as f64 / 1000.0,
        since,
        r.build_ms as f64 / 1000.0,
        r.steps_run,
        r.steps_cached,
        human_size(r.bytes_sent),
        human_size(r.bytes_received),
        r.objects_sent,
        human_size(r.object_bytes),
        r.layers_skipped,
        r.layers_total,
    ));
    if r.state == "probation" {
        p.info(&format!(
            "{}: the robot finishes probation by itself (`dts duckiebot history {}`)",
            r.robot, r.robot
        ));
    } else if !r.message.is_empty() {
        p.info(&r.message);
    }
}

fn print_round(p: &Printer, round: watch::Round) {
    match round {
        watch::Round::Changed(paths) => {
            let shown: Vec<String> = paths
                .iter()
                .take(5)
                .map(|x| x.display().to_string())
                .collect();
            let more = paths.len().saturating_sub(shown.len());
            p.info(&format!(
                "changed: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        watch::Round::Deployed(r) => print_report(p, &r, "change"),
        watch::Round::Same(b) => p.info(&format!(
            "{} is unchanged ({}): nothing to deploy",
            b.tag,
            b.manifest.short()
        )),
        watch::Round::BuildFailed(e) => {
            p.error(&e);
            p.info("build failed: the robot keeps running the last release; watching for the next change");
        }
        watch::Round::DeployFailed(e) => {
            p.error(&e);
            p.info("deploy failed; watching for the next change");
        }
    }
}

/// `dts devel build -H ROBOT`: the digest on stdout, as `devel build`; the name and platform
/// on stderr.
pub fn build_for_robot(
    robot: &str,
    ssh: &DevelSsh,
    args: &BuildArgs,
    json: bool,
    g: &GlobalArgs,
    p: &Printer,
) -> Result<Exit> {
    let store = crate::ops::image::open_store()?;
    let log = reporter(g);
    let (platform, built) = runtime()?.block_on(devel::build_for_robot(
        robot,
        &ssh.args(),
        &store,
        args,
        &*log,
    ))?;
    if json {
        p.json(&serde_json::json!({
            "digest": built.manifest,
            "media_type": built.media_type,
            "platforms": [{"platform": platform.to_string(), "digest": built.manifest}],
            "steps_run": built.steps_run,
            "steps_cached": built.steps_cached,
            "name": built.tag,
        }));
    } else {
        p.info(&format!("{} for {robot} ({platform})", built.tag));
        p.out(&built.manifest.to_string());
    }
    Ok(Exit::Ok)
}
