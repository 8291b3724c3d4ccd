//! `dts devel deploy ROBOT [SERVICE] [--watch]` and `dts devel build -H ROBOT`: flags and
//! printing; the work is `ops::devel`'s.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::{Exit, GlobalArgs, Printer, human_size, reporter};
use crate::api::ReleaseState;
use crate::build::{MountInputs, SecretSource};
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

/// `--secret` and `--ssh`: what `RUN --mount=type=secret|ssh` may use (docs/cli.md).
#[derive(Args, Debug, Clone, Default)]
pub struct MountFlags {
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR (repeatable)
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    secrets: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh: `default` ($SSH_AUTH_SOCK) or ID=SOCKET
    /// (repeatable)
    #[arg(long = "ssh", value_name = "default|ID=SOCKET")]
    ssh: Vec<String>,
}

impl MountFlags {
    /// The flags as the builder takes them; a missing agent or a malformed spec is an error now,
    /// before anything is built.
    pub(super) fn inputs(&self) -> Result<MountInputs> {
        let mut inputs = MountInputs::default();
        for s in &self.secrets {
            let (id, source) = parse_secret(s).map_err(|e| anyhow::anyhow!("--secret {s}: {e}"))?;
            inputs.secrets.insert(id, source);
        }
        for s in &self.ssh {
            let (id, path) = parse_ssh(s, std::env::var_os("SSH_AUTH_SOCK"))
                .map_err(|e| anyhow::anyhow!("--ssh {s}: {e}"))?;
            inputs.ssh.insert(id, path);
        }
        Ok(inputs)
    }
}

/// `id=ID,src=FILE`, `id=ID,env=VAR`, `id=ID,type=env` (as buildx): an id alone names the
/// environment variable of that name.
fn parse_secret(spec: &str) -> std::result::Result<(String, SecretSource), String> {
    let (mut id, mut src, mut env, mut typ) = (None, None, None, None);
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got `{field}`"))?;
        match k {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" if matches!(v, "file" | "env") => typ = Some(v.to_string()),
            "type" => return Err(format!("unknown secret type `{v}` (file or env)")),
            other => return Err(format!("unknown field `{other}` (id, src, env, type)")),
        }
    }
    let id = match (&id, &src, &env) {
        (Some(id), _, _) => id.clone(),
        (None, Some(p), _) => p.rsplit('/').next().unwrap_or(p).to_string(),
        (None, None, Some(e)) => e.clone(),
        (None, None, None) => return Err("needs id=…".into()),
    };
    let source = match (typ.as_deref(), src, env) {
        (_, _, Some(e)) => SecretSource::Env(e),
        (Some("env"), Some(v), None) => SecretSource::Env(v),
        (_, Some(p), None) => SecretSource::File(PathBuf::from(p)),
        (Some("file"), None, None) => SecretSource::File(PathBuf::from(&id)),
        (_, None, None) => SecretSource::Env(id.clone()),
    };
    if let SecretSource::File(p) = &source
        && !p.is_file()
    {
        return Err(format!("no file at `{}`", p.display()));
    }
    Ok((id, source))
}

/// `default` (the agent of `$SSH_AUTH_SOCK`), `ID` (the same agent under another id) or
/// `ID=SOCKET`.
fn parse_ssh(
    spec: &str,
    auth_sock: Option<std::ffi::OsString>,
) -> std::result::Result<(String, PathBuf), String> {
    let (id, path) = match spec.split_once('=') {
        Some((id, p)) if !id.is_empty() && !p.is_empty() => (id, PathBuf::from(p)),
        Some(_) => return Err("expected ID=SOCKET".into()),
        None => match auth_sock.filter(|s| !s.is_empty()) {
            Some(sock) => (spec, PathBuf::from(sock)),
            None => {
                return Err(
                    "SSH_AUTH_SOCK is not set: no SSH agent to forward (start one with                      `eval $(ssh-agent)` and `ssh-add`, or give ID=SOCKET)"
                        .into(),
                );
            }
        },
    };
    if !path.exists() {
        return Err(format!("no SSH agent socket at `{}`", path.display()));
    }
    Ok((id.to_string(), path))
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
    #[command(flatten)]
    mounts: MountFlags,
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
    fn build_args(&self) -> Result<BuildArgs> {
        Ok(BuildArgs {
            context: self.context.clone(),
            dockerfile: self.file.clone(),
            tags: self.tags.clone(),
            platforms: Vec::new(),
            build_args: self.build_args.iter().cloned().collect(),
            target: self.target.clone(),
            no_cache: self.no_cache,
            insecure: self.insecure,
            mounts: self.mounts.inputs()?,
        })
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
    let args = a.build_args()?;
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

/// `dts devel prune --cache`: removes the cache mounts of `RUN --mount=type=cache`.
pub fn prune_cache(json: bool, p: &Printer) -> Result<Exit> {
    let dir = crate::ops::dts_home().join("build");
    let found = crate::build::prune_cache_mounts(&dir)?;
    let removed: Vec<_> = found.iter().filter(|c| !c.in_use).collect();
    let bytes: u64 = removed.iter().map(|c| c.bytes).sum();
    if json {
        p.json(&serde_json::json!({
            "removed": removed,
            "in_use": found.iter().filter(|c| c.in_use).collect::<Vec<_>>(),
            "bytes": bytes,
        }));
        return Ok(Exit::Ok);
    }
    for c in &found {
        let what = if c.in_use { "in use, kept" } else { "removed" };
        p.info(&format!(
            "{} ({}): {} {what}",
            c.id,
            c.platform,
            human_size(c.bytes)
        ));
    }
    p.info(&format!(
        "removed {} cache mount(s), {}",
        removed.len(),
        human_size(bytes)
    ));
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_ssh_specs() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let path = f.path().display().to_string();
        let (id, src) = parse_secret(&format!("id=tok,src={path}")).unwrap();
        assert_eq!(
            (id.as_str(), src),
            ("tok", SecretSource::File(f.path().into()))
        );
        assert_eq!(
            parse_secret("id=tok,env=TOKEN").unwrap().1,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            parse_secret("id=X").unwrap().1,
            SecretSource::Env("X".into())
        );
        assert!(parse_secret("id=x,src=/nonexistent/file").is_err());
        assert!(parse_secret("id=x,colour=red").is_err());
        let e = parse_ssh("default", None).unwrap_err();
        assert!(e.contains("SSH_AUTH_SOCK is not set"), "{e}");
        let (id, p) = parse_ssh("default", Some(path.clone().into())).unwrap();
        assert_eq!((id.as_str(), p), ("default", f.path().to_path_buf()));
        assert_eq!(parse_ssh(&format!("gh={path}"), None).unwrap().0, "gh");
    }
}
