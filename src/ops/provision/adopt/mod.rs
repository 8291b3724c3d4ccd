//! Taking over a stock robot's Docker stack (docs/duckietown.md, "Adoption"): the steps
//! `docker-stack` (record what Docker runs, before anything changes it), `adopt-images` (every
//! image Docker holds and the agent lacks, imported on the robot itself, so nothing crosses the
//! WiFi: read straight from Docker's overlay2 store, else streamed `docker save | dt-agent image
//! import -`) and `adopt-stack` (Docker's `duckietown`
//! containers stopped, their translation deployed as release 1, and only once it is committed
//! their restart policies set to `no` and dt-autoboot disabled; if it fails, Docker's stack is
//! started again). [`restore`] is `provision --restore-docker`, which gives the robot back.
//!
//! Docker is asked through its own `docker` CLI on the robot (`--format`/`inspect` JSON), not
//! its API: the CLI is installed wherever the engine is and always speaks the engine's API
//! version, and the agent needs no Docker client of its own. Every check reads the robot first,
//! so each step is idempotent and a run killed anywhere is finished by the next.
//!
//! Owns: the record `/etc/dt-agent/docker-stack.json` ([`DockerStack`]). The translation itself
//! is [`translate`]'s.

mod link;
mod remove;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::remote::Robot;
use super::steps::{Cx, Plan};
use super::{AGENT_PATH, ProvisionError, sh_quote};
use crate::api::daemon::DEFAULT_ROOT;
use crate::api::{ReleaseState, VolumeName};
use crate::oci::Digest;
use crate::progress::Event;
use link::AgentLink;
pub(super) use remove::{apply_remove, check_remove};
use translate::{DockerContainer, PROJECT, Roles};

/// Where provisioning records what Docker ran before adoption changed anything.
pub const RECORD_PATH: &str = "/etc/dt-agent/docker-stack.json";

/// What Docker had: written once, before adoption changes anything, and read by every later
/// step and by `--restore-docker`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DockerStack {
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Whether `dt-autoboot.service` was enabled (`None`: the robot has no such unit).
    pub autoboot_enabled: Option<bool>,
    /// `docker inspect` of every container of the compose project, as it was.
    pub containers: Vec<DockerContainer>,
    /// When `--remove-docker` removed Docker's packages and data root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_removed: Option<String>,
}

impl DockerStack {
    fn names(&self) -> Vec<String> {
        self.containers
            .iter()
            .map(|c| c.short_name().to_owned())
            .collect()
    }
}

/// One image of Docker's store, as `docker image inspect` shows it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    id: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    size: u64,
}

/// One entry of `dt-agent image ls --json`.
#[derive(Clone, Debug, Deserialize)]
struct AgentImage {
    manifest: Digest,
    /// The config digest; agents before the streaming import do not list it.
    #[serde(default)]
    config: Option<Digest>,
}

/// The containers of the compose project as Docker sees them now; `None` when the robot has no
/// Docker (no CLI, or no engine answering) or no such project.
async fn docker_containers(
    robot: &Robot<'_>,
    step: &'static str,
) -> Result<Option<Vec<DockerContainer>>> {
    let out = robot
        .root_ok(
            step,
            &format!(
                "command -v docker >/dev/null 2>&1 || exit 0; \
                 ids=$(docker ps -aq --no-trunc --filter label=com.docker.compose.project={PROJECT} 2>/dev/null) || exit 0; \
                 [ -n \"$ids\" ] || exit 0; docker inspect $ids"
            ),
            &[],
        )
        .await?;
    if out.trim().is_empty() {
        return Ok(None);
    }
    let list: Vec<DockerContainer> = serde_json::from_str(&out).map_err(|e| {
        robot.fail(
            step,
            format!("`docker inspect` gave JSON dts cannot read: {e}"),
        )
    })?;
    Ok(Some(list))
}

/// Whether dt-autoboot is enabled (`None`: no such unit).
async fn autoboot_enabled(robot: &Robot<'_>, step: &'static str) -> Result<Option<bool>> {
    let out = robot
        .root_ok(
            step,
            "s=$(systemctl is-enabled dt-autoboot.service 2>/dev/null) || true; echo \"${s:-none}\"",
            &[],
        )
        .await?;
    Ok(match out.trim() {
        "enabled" => Some(true),
        "none" | "" | "not-found" => None,
        _ => Some(false),
    })
}

/// The record, when one was written.
pub(super) async fn read_record(
    robot: &Robot<'_>,
    step: &'static str,
) -> Result<Option<DockerStack>> {
    let text = robot
        .root_ok(step, &format!("cat {RECORD_PATH} 2>/dev/null || true"), &[])
        .await?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let r = serde_json::from_str(&text).map_err(|e| {
        robot.fail(
            step,
            format!("`{RECORD_PATH}` is not a record dts wrote: {e}"),
        )
    })?;
    Ok(Some(r))
}

/// Whether the agent's daemon answers on its socket (a dry run on a fresh robot has none).
async fn agent_up(robot: &Robot<'_>) -> Result<bool> {
    let sock = format!("{DEFAULT_ROOT}/{}", crate::api::daemon::SOCKET);
    let out = robot
        .root_ok("adopt", &format!("[ -S {sock} ] && echo up || true"), &[])
        .await?;
    Ok(out.trim() == "up")
}

// ---- docker-stack -------------------------------------------------------------------------

/// Part of detection: the record of an earlier run, else the compose project Docker runs now
/// (which the `docker-stack` step records); neither leaves `cx.docker` empty and the adoption
/// steps out of the run.
pub(super) async fn detect(cx: &mut Cx<'_>) -> Result<()> {
    if let Some(r) = read_record(&cx.robot, "detect").await? {
        cx.docker = Some(r);
        cx.docker_recorded = true;
        return Ok(());
    }
    let Some(containers) = docker_containers(&cx.robot, "detect").await? else {
        return Ok(());
    };
    cx.docker = Some(DockerStack {
        recorded_at: crate::util::time::rfc3339(crate::util::time::now_secs()),
        autoboot_enabled: autoboot_enabled(&cx.robot, "detect").await?,
        containers,
        docker_removed: None,
    });
    Ok(())
}

pub(super) async fn check_record(cx: &mut Cx<'_>) -> Result<Plan> {
    let n = cx.docker.as_ref().map_or(0, |d| d.containers.len());
    Ok(if cx.docker_recorded {
        Plan::new(false, format!("recorded before: {n} container(s)"))
    } else {
        Plan::new(
            true,
            format!(
                "Docker runs the `{PROJECT}` stack ({n} container(s)): recorded in {RECORD_PATH}"
            ),
        )
    })
}

pub(super) async fn apply_record(cx: &mut Cx<'_>) -> Result<()> {
    let record = cx.docker.as_ref().expect("check_record found the stack");
    let json = serde_json::to_vec_pretty(record)?;
    cx.robot
        .write_file("docker-stack", RECORD_PATH, &json, "600", None)
        .await
}

// ---- adopt-images -------------------------------------------------------------------------

/// Config digest → manifest digest of every image the agent holds, read from its store on the
/// robot (the manifests name their configs).
async fn agent_configs(robot: &Robot<'_>, step: &'static str) -> Result<BTreeMap<String, Digest>> {
    let ls = robot
        .root_ok(step, &format!("{AGENT_PATH} image ls --json"), &[])
        .await?;
    let images: Vec<AgentImage> = serde_json::from_str(&ls)
        .map_err(|e| robot.fail(step, format!("`dt-agent image ls --json`: {e}")))?;
    let mut map = BTreeMap::new();
    let mut manifests = BTreeSet::new();
    for i in images {
        match i.config {
            Some(c) => {
                map.insert(c.to_string(), i.manifest);
            }
            None => {
                manifests.insert(i.manifest);
            }
        }
    }
    if manifests.is_empty() {
        return Ok(map);
    }
    // An older agent: its manifests, which name their configs, read from its store.
    let hexes: Vec<String> = manifests.iter().map(|d| d.hex().to_owned()).collect();
    let out = robot
        .root_ok(
            step,
            &format!(
                "cd {DEFAULT_ROOT}/images/sha256; for h in {}; do printf '%s ' \"$h\"; tr -d '\\n' < \"$h\"; echo; done",
                hexes.join(" ")
            ),
            &[],
        )
        .await?;
    for line in out.lines() {
        let Some((hex, doc)) = line.split_once(' ') else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(doc).unwrap_or_default();
        if let (Some(cfg), Some(m)) = (
            v.pointer("/config/digest").and_then(|d| d.as_str()),
            manifests.iter().find(|d| d.hex() == hex),
        ) {
            map.insert(cfg.to_owned(), m.clone());
        }
    }
    Ok(map)
}

/// Docker's images the agent lacks (tagged ones: an image without a name is nothing the agent
/// could run by name; the stack's are all tagged).
async fn missing_images(cx: &Cx<'_>) -> Result<(Vec<DockerImage>, usize)> {
    let out = cx
        .robot
        .root_ok(
            "adopt-images",
            "ids=$(docker image ls -q --no-trunc | sort -u); [ -n \"$ids\" ] || exit 0; docker image inspect $ids",
            &[],
        )
        .await?;
    let all: Vec<DockerImage> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out).map_err(|e| {
            cx.robot
                .fail("adopt-images", format!("`docker image inspect`: {e}"))
        })?
    };
    let held = agent_configs(&cx.robot, "adopt-images").await?;
    let total = all.len();
    let missing = all
        .into_iter()
        .filter(|i| !held.contains_key(&i.id))
        .filter(|i| i.repo_tags.as_ref().is_some_and(|t| !t.is_empty()))
        .collect();
    Ok((missing, total))
}

pub(super) async fn check_images(cx: &mut Cx<'_>) -> Result<Plan> {
    if cx
        .docker
        .as_ref()
        .is_some_and(|d| d.docker_removed.is_some())
    {
        return Ok(Plan::new(
            false,
            "Docker was removed; its images are the agent's",
        ));
    }
    if cx.dry && !agent_up(&cx.robot).await? {
        return Ok(Plan::new(true, "every Docker image would be imported"));
    }
    let (missing, total) = missing_images(cx).await?;
    if missing.is_empty() {
        return Ok(Plan::new(
            false,
            format!("all {total} Docker image(s) held"),
        ));
    }
    let bytes: u64 = missing.iter().map(|i| i.size).sum();
    Ok(Plan::new(
        true,
        format!(
            "{} of {total} Docker image(s) imported on the robot ({})",
            missing.len(),
            human(bytes)
        ),
    ))
}

/// One import per image, so a run killed midway keeps every image it finished (the rerun skips
/// them by config digest; the import itself keeps each layer it committed) and progress
/// advances by image. Read from Docker's overlay2 store where Docker uses it: nothing is staged
/// and a layer the agent holds is not read again; else `docker save`, whose layers shared with
/// an earlier image are hashed and discarded by the import. A direct read that fails (a layer
/// whose files no longer rebuild its diff_id) falls back to `docker save` for that image.
pub(super) async fn apply_images(cx: &mut Cx<'_>) -> Result<()> {
    let (missing, _) = missing_images(cx).await?;
    let total: u64 = missing.iter().map(|i| i.size).sum();
    let docker_root = overlay2_root(&cx.robot).await?;
    cx.reporter.event(Event::start(
        "adopt-images/import",
        format!("import {} image(s) from Docker's store", missing.len()),
        Some(total),
    ));
    let mut done = 0;
    for img in &missing {
        let tags: Vec<String> = img
            .repo_tags
            .iter()
            .flatten()
            .map(|t| sh_quote(t))
            .collect();
        let direct = match &docker_root {
            Some(root) => import_direct(&cx.robot, root, img)
                .await
                .inspect_err(|e| {
                    cx.reporter.event(Event::note(format!(
                        "{}: reading Docker's store directly failed ({e:#}); using `docker save`",
                        img.id
                    )))
                })
                .is_ok(),
            None => false,
        };
        if !direct {
            import_saved(&cx.robot, &tags)
                .await
                .with_context(|| format!("importing {} ({})", img.id, tags.join(", ")))?;
        }
        done += img.size;
        cx.reporter
            .event(Event::advance("adopt-images/import", done));
    }
    cx.reporter.event(Event::finish(
        "adopt-images/import",
        format!("{} image(s)", missing.len()),
    ));
    Ok(())
}

/// Docker's data root when its storage driver is overlay2, the layout `dt-agent image import
/// --docker-root` reads (docs/duckietown.md, "Reading Docker's store directly"); `None` for
/// any other driver (the containerd image store says `overlayfs`), which `docker save` serves.
async fn overlay2_root(robot: &Robot<'_>) -> Result<Option<String>> {
    let out = robot
        .root_ok(
            "adopt-images",
            "docker info --format '{{.Driver}} {{.DockerRootDir}}' 2>/dev/null || true",
            &[],
        )
        .await?;
    Ok(match out.trim().split_once(' ') {
        Some(("overlay2", root)) if root.starts_with('/') => Some(root.to_owned()),
        _ => None,
    })
}

/// One image read straight from Docker's overlay2 store: nothing staged on either side (Docker
/// 20.10's `docker save` writes its whole archive to `<root>/tmp` first). Taken by id, so it
/// gets every tag Docker gives it.
async fn import_direct(robot: &Robot<'_>, root: &str, img: &DockerImage) -> Result<()> {
    robot
        .root_ok(
            "adopt-images",
            &format!(
                "{AGENT_PATH} image import --json --docker-root {} {} >/dev/null",
                sh_quote(root),
                sh_quote(&img.id)
            ),
            &[],
        )
        .await
        .map(|_| ())
}

/// One image through `docker save | dt-agent image import -`, for a Docker whose store the
/// agent cannot read.
async fn import_saved(robot: &Robot<'_>, tags: &[String]) -> Result<()> {
    // `sh` has no pipefail: docker save's failure is recorded beside the pipe.
    robot
        .root_ok(
            "adopt-images",
            &format!(
                "f=$(mktemp); (docker save {tags} || echo failed > \"$f\") | {AGENT_PATH} image import --json - >/dev/null; \
                 if [ -s \"$f\" ]; then rm -f \"$f\"; echo 'docker save failed' >&2; exit 1; fi; rm -f \"$f\"",
                tags = tags.join(" ")
            ),
            &[],
        )
        .await
        .map(|_| ())
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

// ---- adopt-stack --------------------------------------------------------------------------

/// What the switch found on the robot.
pub(super) struct Switch {
    /// The agent runs a release whose containers are exactly Docker's stack's names, all
    /// running.
    pub(super) agent_runs: bool,
    /// Docker containers still running, with a restart policy other than `no`.
    docker_running: Vec<String>,
    docker_restarting: Vec<String>,
    autoboot_on: bool,
}

pub(super) async fn look(cx: &Cx<'_>, record: &DockerStack) -> Result<Switch> {
    let now = docker_containers(&cx.robot, "adopt-stack")
        .await?
        .unwrap_or_default();
    let names = record.names();
    let mut link = AgentLink::open(&cx.robot).await?;
    let ps = crate::ops::verbs::ps(&mut link, true).await?;
    link.close().await;
    let agent_runs = names.iter().all(|n| {
        ps.iter()
            .any(|c| c.name == *n && c.release.is_some() && c.state == "running")
    });
    Ok(Switch {
        agent_runs,
        docker_running: now
            .iter()
            .filter(|c| c.state.running)
            .map(|c| c.short_name().to_owned())
            .collect(),
        docker_restarting: now
            .iter()
            .filter(|c| c.host_config.restart_policy.as_flag() != "no")
            .map(|c| c.short_name().to_owned())
            .collect(),
        autoboot_on: autoboot_enabled(&cx.robot, "adopt-stack").await? == Some(true),
    })
}

pub(super) async fn check_stack(cx: &mut Cx<'_>) -> Result<Plan> {
    let record = cx.docker.clone().expect("wanted only with a Docker stack");
    if record.docker_removed.is_some() {
        return Ok(Plan::new(
            false,
            "Docker was removed; the agent runs the adopted stack",
        ));
    }
    if cx.dry && !agent_up(&cx.robot).await? {
        return Ok(Plan::new(
            true,
            "Docker's stack would run as the agent's release 1",
        ));
    }
    let s = look(cx, &record).await?;
    let quiet = s.docker_running.is_empty() && s.docker_restarting.is_empty() && !s.autoboot_on;
    Ok(match (s.agent_runs, quiet) {
        (true, true) => Plan::new(false, "the agent runs the adopted stack; Docker's is stopped"),
        (true, false) => Plan::new(
            true,
            "the agent runs the adopted stack: Docker's containers set not to restart, dt-autoboot disabled",
        )
        .found(vec!["finish".into()]),
        (false, _) => Plan::new(
            true,
            format!(
                "{} Docker container(s) stopped; their translation runs as a release of the agent",
                record.containers.len()
            ),
        ),
    })
}

pub(super) async fn apply_stack(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    let record = cx.docker.clone().expect("check_stack found the record");
    if plan.found.iter().any(|f| f == "finish") {
        return quiet_docker(&cx.robot, &record).await;
    }
    let manifests = agent_configs(&cx.robot, "adopt-stack").await?;
    let roles = roles(&cx.profile);
    let adoption = translate::translate(&record.containers, &manifests, &roles)
        .map_err(|e| cx.robot.fail("adopt-stack", e.to_string()))?;
    for w in &adoption.warnings {
        cx.reporter.event(Event::note(format!("warning: {w}")));
        cx.warnings.push(w.clone());
    }
    copy_volumes(&cx.robot, &adoption.volumes).await?;
    let names = record.names();
    cx.robot
        .root_ok(
            "adopt-stack",
            &format!("docker stop -t 10 {} >/dev/null", quoted(&names)),
            &[],
        )
        .await?;
    let mut link = AgentLink::open(&cx.robot).await?;
    let outcome =
        crate::ops::deploy::apply(&mut link, &adoption.spec, (false, false), cx.reporter).await;
    let failure = match &outcome {
        Ok(o) if o.state == ReleaseState::Committed => None,
        Ok(o) => Some((o.release, o.message.clone())),
        Err(e) => Some((0, format!("{e:#}"))),
    };
    let Some((release, why)) = failure else {
        link.close().await;
        cx.adopted_release = outcome.ok().map(|o| o.release);
        return quiet_docker(&cx.robot, &record).await;
    };
    // Never neither: the agent's containers of the stack go, Docker's come back.
    let ps = crate::ops::verbs::ps(&mut link, true)
        .await
        .unwrap_or_default();
    for c in ps
        .iter()
        .filter(|c| c.release.is_some() && names.contains(&c.name))
    {
        let _ = crate::ops::verbs::rm(&mut link, &c.name, true).await;
    }
    link.close().await;
    start_docker(&cx.robot, &record).await?;
    Err(ProvisionError::AdoptionFailed {
        addr: cx.robot.addr.clone(),
        release,
        reason: why,
    }
    .into())
}

/// The roles of the robot's profile, and what its camera role mounts.
fn roles(profile: &crate::profile::robot::RobotProfile) -> Roles {
    Roles {
        all: profile.roles.keys().cloned().collect(),
        camera_mounts: profile
            .roles
            .get("camera")
            .map(|r| r.mounts.iter().map(|m| m.to_string()).collect())
            .unwrap_or_default(),
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| sh_quote(n))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Docker's named volumes copied into the agent's (once: an existing agent volume is the
/// agent's by now), so the adopted stack keeps its data and Docker's stays as it was for
/// `--restore-docker`.
async fn copy_volumes(robot: &Robot<'_>, volumes: &[(String, VolumeName)]) -> Result<()> {
    for (src, name) in volumes {
        robot
            .root_ok(
                "adopt-stack",
                &format!(
                    "d={DEFAULT_ROOT}/volumes/{n}; [ -e \"$d\" ] && exit 0; mkdir -p {DEFAULT_ROOT}/volumes; \
                     rm -rf \"$d.dts-copy\"; if [ -d {s} ]; then cp -a {s} \"$d.dts-copy\"; else mkdir \"$d.dts-copy\"; fi; \
                     mv \"$d.dts-copy\" \"$d\"",
                    n = name.as_str(),
                    s = sh_quote(src),
                ),
                &[],
            )
            .await?;
    }
    Ok(())
}

/// Docker's containers stopped and set not to restart, dt-autoboot disabled: a reboot or a
/// dockerd restart does not bring them back.
async fn quiet_docker(robot: &Robot<'_>, record: &DockerStack) -> Result<()> {
    let names = quoted(&record.names());
    robot
        .root_ok(
            "adopt-stack",
            &format!(
                "docker stop -t 10 {names} >/dev/null; docker update --restart=no {names} >/dev/null; \
                 if systemctl cat dt-autoboot.service >/dev/null 2>&1; then systemctl disable dt-autoboot.service 2>/dev/null; fi; true"
            ),
            &[],
        )
        .await
        .map(|_| ())
}

/// Each container's recorded restart policy back, and those that ran started.
async fn start_docker(robot: &Robot<'_>, record: &DockerStack) -> Result<()> {
    let mut script = String::new();
    for c in &record.containers {
        let n = sh_quote(c.short_name());
        script.push_str(&format!(
            "docker update --restart={} {n} >/dev/null; ",
            c.host_config.restart_policy.as_flag()
        ));
        if c.state.running {
            script.push_str(&format!("docker start {n} >/dev/null; "));
        }
    }
    robot.root_ok("adopt-stack", &script, &[]).await.map(|_| ())
}

// ---- --restore-docker ---------------------------------------------------------------------

/// `provision --restore-docker`: the agent's release containers removed (so the agent does not
/// start them at boot), each Docker container's restart policy back, those that
/// ran started, dt-autoboot enabled if it was. Returns what it changed (empty: nothing).
pub(super) async fn restore(cx: &mut Cx<'_>) -> Result<Vec<String>> {
    let Some(record) = read_record(&cx.robot, "restore-docker").await? else {
        return Err(ProvisionError::NothingToRestore {
            addr: cx.robot.addr.clone(),
        }
        .into());
    };
    if let Some(removed_at) = record.docker_removed {
        return Err(ProvisionError::DockerRemoved {
            addr: cx.robot.addr.clone(),
            removed_at,
        }
        .into());
    }
    let names = record.names();
    let mut changed = Vec::new();
    if agent_up(&cx.robot).await? {
        let mut link = AgentLink::open(&cx.robot).await?;
        let ps = crate::ops::verbs::ps(&mut link, true).await?;
        // Every container of a release goes, not only those named like Docker's: a service a
        // later deploy added (`core`) would otherwise keep running beside Docker's stack.
        for c in ps
            .iter()
            .filter(|c| c.release.is_some() || names.contains(&c.name))
        {
            if !cx.dry {
                crate::ops::verbs::rm(&mut link, &c.name, true).await?;
            }
            changed.push(format!("removed the agent's container `{}`", c.name));
        }
        link.close().await;
    }
    let now = docker_containers(&cx.robot, "restore-docker")
        .await?
        .unwrap_or_default();
    let mut script = String::new();
    for c in &record.containers {
        let n = c.short_name();
        let cur = now.iter().find(|d| d.short_name() == n);
        let want = c.host_config.restart_policy.as_flag();
        if cur.is_none_or(|d| d.host_config.restart_policy.as_flag() != want) {
            script.push_str(&format!(
                "docker update --restart={want} {} >/dev/null; ",
                sh_quote(n)
            ));
            changed.push(format!("`{n}`: restart policy {want}"));
        }
        if c.state.running && !cur.is_some_and(|d| d.state.running) {
            script.push_str(&format!("docker start {} >/dev/null; ", sh_quote(n)));
            changed.push(format!("`{n}` started"));
        }
    }
    if record.autoboot_enabled == Some(true)
        && autoboot_enabled(&cx.robot, "restore-docker").await? != Some(true)
    {
        script.push_str("systemctl enable dt-autoboot.service 2>/dev/null; ");
        changed.push("dt-autoboot enabled".into());
    }
    if !script.is_empty() && !cx.dry {
        cx.robot.root_ok("restore-docker", &script, &[]).await?;
    }
    Ok(changed)
}
