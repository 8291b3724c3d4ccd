//! Turning a stack file into what a robot runs: each service's image resolved for the robot's
//! platform — from the laptop's store, else from the robot's own store (wire `resolve`: such
//! images are never sent), else pulled as `--pull` says ([`PullPolicy`]) — its compose
//! settings mapped onto a container, its health check taken from the stack or the image — a
//! [`ReleaseSpec`] plus the images to ship and those the robot holds — and [`apply`]ing it on
//! the robot, saying what probation will wait for while it does.
//!
//! The robot's daemon runs the release's probation by itself: the laptop only waits for its
//! answer (or, with `detach`, for the answer that every service runs). A laptop that goes away
//! during probation changes nothing on the robot; the release still commits or rolls back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api::{ContainerName, DeployOutcome, HeldImage, ReleaseSpec, ServiceSpec};
use crate::oci::{Digest, Platform, Reference};
use crate::ops::verbs;
use crate::profile::stack::{self, Healthcheck, Stack, StackSource};
use crate::progress::{Event, Reporter};
use crate::store::{PlatformImage, Store, StoreError};

/// How long a service without a health check must keep running before a release is committed.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(5);

/// What a deploy sends and applies.
#[derive(Clone, Debug)]
pub struct DeployPlan {
    /// The release.
    pub spec: ReleaseSpec,
    /// Images to ship from the laptop's store: (name as the stack gives it, the document the
    /// name points at there; the transfer picks the robot's platform of an index).
    pub images: Vec<(String, Digest)>,
    /// Images the robot's own store holds and the laptop lacks: planned "held by robot",
    /// nothing of them is sent.
    pub held: Vec<HeldImage>,
    /// Warnings from the stack (unset variables…).
    pub warnings: Vec<String>,
}

/// The variables a stack is interpolated with: the environment plus `ARCH`, the robot's
/// Duckietown arch tag.
pub fn stack_env(platform: &Platform) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    if let Some(arch) = platform.duckietown_arch() {
        env.insert("ARCH".into(), arch.to_string());
    }
    env
}

/// Loads `--stack` (a file, a directory holding a compose file, or a shipped name; without
/// it the current directory's compose file, else the default stack) for a robot of
/// `platform` and applies `--set`. How `--stack` was understood is among the warnings.
pub fn load_stack(arg: Option<&str>, sets: &[String], platform: &Platform) -> Result<Stack> {
    let (source, notes) = stack::resolve_stack_in(arg, &current_dir()?)?;
    let mut stack = source.load(&stack_env(platform))?;
    stack.warnings.splice(0..0, notes);
    for s in sets {
        stack.apply_set(s)?;
    }
    Ok(stack)
}

fn current_dir() -> Result<std::path::PathBuf> {
    std::env::current_dir().context("the current directory")
}

/// The stack's name as a release records it: a shipped stack's name; a file's stem, or for
/// Docker's compose file names their directory's name (compose's project name).
pub fn stack_name(arg: Option<&str>) -> String {
    let source = current_dir()
        .ok()
        .and_then(|cwd| stack::resolve_stack_in(arg, &cwd).ok())
        .map(|(s, _)| s)
        .unwrap_or_else(|| stack::resolve_stack_arg(arg));
    match source {
        StackSource::Builtin(n) => n,
        StackSource::File(p) => stack::file_stack_name(&p),
    }
}

/// Resolves every service of `stack` for `platform` against the laptop's store only.
pub fn plan(store: &Store, stack: &Stack, name: &str, platform: &Platform) -> Result<DeployPlan> {
    plan_with(store, stack, name, platform, &BTreeMap::new())
}

/// Resolves every service of `stack` for `platform`: from the laptop's store, else from
/// `held`, the images the robot's store holds (by canonical name, as
/// [`resolve_on_robot`] found them). The laptop's copy wins whenever it has the name for the
/// platform, even when the robot holds another digest under it: it is what the user built or
/// pulled.
pub fn plan_with(
    store: &Store,
    stack: &Stack,
    name: &str,
    platform: &Platform,
    held: &BTreeMap<String, HeldImage>,
) -> Result<DeployPlan> {
    // Without the robot's roles, `privileged` and host devices are granted only where the
    // stack names the roles itself; never dropped in silence.
    let granted;
    let stack = if stack.services.values().any(|s| !s.privileges.is_empty()) {
        let mut s = stack.clone();
        s.grant_privileges(None)?;
        granted = s;
        &granted
    } else {
        stack
    };
    let mut services = Vec::new();
    let mut images: Vec<(String, Digest)> = Vec::new();
    let mut robot: Vec<HeldImage> = Vec::new();
    let mut warnings = stack.warnings.clone();
    for stage in stack.start_order() {
        for (order, key) in stage.iter().enumerate() {
            let svc = &stack.services[key];
            let reference = Reference::parse(&svc.image)
                .with_context(|| format!("service `{key}`: image `{}`", svc.image))?;
            let (manifest, config) = match laptop_image(store, &reference, platform) {
                Laptop::Has(img) => {
                    let manifest = img.descriptor.digest.clone();
                    if !images
                        .iter()
                        .any(|(n, d)| *n == svc.image && *d == manifest)
                    {
                        images.push((svc.image.clone(), manifest.clone()));
                    }
                    (manifest, img.config)
                }
                other => match held.get(&reference.to_string()) {
                    Some(h) => {
                        if !robot.iter().any(|r| r.name == h.name) {
                            if !h.platform.matches(platform) {
                                warnings.push(format!(
                                    "image `{}` on the robot is {}, the robot is {platform}: using it as the robot's Docker did (it is the only variant the robot holds)",
                                    svc.image, h.platform
                                ));
                            }
                            robot.push(h.clone());
                        }
                        (h.manifest.clone(), h.config.clone())
                    }
                    None => {
                        return Err(other.into_error(&svc.image))
                            .with_context(|| format!("service `{key}`: image `{}`", svc.image));
                    }
                },
            };
            let healthcheck =
                Healthcheck::resolve(svc.healthcheck.as_ref(), config.config.as_ref());
            services.push(ServiceSpec {
                name: ContainerName::new(svc.container_name_or(key))?,
                stage: svc.stage,
                order: order as u32,
                image_name: svc.image.clone(),
                manifest: manifest.clone(),
                container: svc.container(key, &manifest)?,
                healthcheck,
            });
        }
    }
    Ok(DeployPlan {
        spec: ReleaseSpec {
            stack: name.to_string(),
            services,
            probation: DEFAULT_PROBATION,
        },
        images,
        held: robot,
        warnings,
    })
}

/// `deploy --pull`: when an image comes from a registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only images neither the laptop nor the robot holds (the default).
    #[default]
    Missing,
    /// Every image of the stack, re-checked with its registry (blobs already here are not
    /// downloaded again); the laptop's copy then wins.
    Always,
    /// Never: an image neither side holds is bad input (exit 2) and nothing changes.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<PullPolicy, String> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "`{other}` is not a pull policy: use missing, always or never"
            )),
        }
    }
}

/// How a deploy pulls: the policy and the registry client's options (credentials from
/// Docker's config, `--insecure`).
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// When to pull.
    pub policy: PullPolicy,
    /// The registry client's options.
    pub registry: crate::registry::ClientOptions,
}

/// Images a deploy needs that neither the laptop nor the robot holds, under `--pull never`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} neither on this laptop nor on the robot, and `--pull never` forbids pulling: {}; pull (`dts image pull`), build, or deploy with `--pull missing`",
    if images.len() == 1 { "an image is" } else { "images are" },
    images.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
)]
pub struct NotHeld {
    /// The images, as the stack names them.
    pub images: Vec<String>,
}

/// Resolves `stack` for the robot behind `link` and plans its release: each image from the
/// laptop's store, else from the robot's own store (asked in one round trip), else pulled
/// for the robot's platform only as `pull` says ([`PullPolicy`]). What the robot holds and the
/// laptop lacks lands in [`DeployPlan::held`] and is never sent.
pub async fn plan_for_robot(
    link: &mut crate::ops::robot::RobotLink,
    store: &Store,
    stack: &Stack,
    name: &str,
    pull: &PullOptions,
    log: &dyn Reporter,
) -> Result<DeployPlan> {
    // Compose's `privileged` and host `devices` become the robot's roles, here where its
    // roles are known (the hello), with one warning line per service.
    let mut stack = stack.clone();
    stack.grant_privileges(link.hello.roles.as_ref())?;
    let held = resolve_images(link, store, &stack, pull, log).await?;
    plan_with(store, &stack, name, &link.hello.platform, &held)
}

/// The images of `stack` the robot holds and the laptop lacks, by canonical name, after
/// pulling what `pull` says into the laptop's store.
pub async fn resolve_images(
    link: &mut crate::ops::robot::RobotLink,
    store: &Store,
    stack: &Stack,
    pull: &PullOptions,
    log: &dyn Reporter,
) -> Result<BTreeMap<String, HeldImage>> {
    let platform = link.hello.platform.clone();
    let mut names: Vec<(String, Reference)> = Vec::new();
    for (key, svc) in &stack.services {
        let r = Reference::parse(&svc.image)
            .with_context(|| format!("service `{key}`: image `{}`", svc.image))?;
        if !names.iter().any(|(_, n)| *n == r) {
            names.push((svc.image.clone(), r));
        }
    }
    if pull.policy == PullPolicy::Always {
        for (image, r) in &names {
            pull_for(store, image, r, &platform, pull, log).await?;
        }
        return Ok(BTreeMap::new());
    }
    // Ask the robot about every image the laptop cannot deploy itself.
    let ask: Vec<(String, Reference, bool)> = names
        .into_iter()
        .filter_map(|(image, r)| match laptop_image(store, &r, &platform) {
            Laptop::Has(..) => None,
            Laptop::OtherPlatform(_) => Some((image, r, false)),
            Laptop::Lacks(_) => Some((image, r, true)),
        })
        .collect();
    let canonical: Vec<String> = ask.iter().map(|(_, r, _)| r.to_string()).collect();
    let answers =
        crate::ops::robot::guarded(&link.session, link.conn.resolve_on_robot(&canonical)).await?;
    let mut held = BTreeMap::new();
    let mut missing = Vec::new();
    for ((image, r, lacks), answer) in ask.into_iter().zip(answers) {
        match answer {
            Some(h) => {
                held.insert(r.to_string(), h);
            }
            // The laptop has it for other platforms only: `plan_with` says which (exit 2).
            None if !lacks => {}
            None => missing.push((image, r)),
        }
    }
    if missing.is_empty() {
        return Ok(held);
    }
    if pull.policy == PullPolicy::Never {
        return Err(NotHeld {
            images: missing.into_iter().map(|(i, _)| i).collect(),
        }
        .into());
    }
    for (image, r) in &missing {
        pull_for(store, image, r, &platform, pull, log).await?;
    }
    Ok(held)
}

/// Pulls `image` for the robot's `platform` only into the laptop's store.
async fn pull_for(
    store: &Store,
    image: &str,
    reference: &Reference,
    platform: &Platform,
    pull: &PullOptions,
    log: &dyn Reporter,
) -> Result<()> {
    log.event(Event::note(format!(
        "pulling `{image}` for {platform} (--pull {})",
        match pull.policy {
            PullPolicy::Always => "always",
            _ => "missing",
        }
    )));
    let client = crate::registry::Client::new(pull.registry.clone())?;
    client
        .pull(store, reference, Some(std::slice::from_ref(platform)), log)
        .await
        .with_context(|| format!("pulling `{image}` for {platform}"))?;
    Ok(())
}

/// What the laptop's store has of an image, for the robot's platform.
enum Laptop {
    /// The name (or content), resolved to the platform.
    Has(Box<PlatformImage>),
    /// The name, but not for the platform (nor can it be picked): the error says which it has.
    OtherPlatform(StoreError),
    /// Not the name (nor, for `name@sha256:…`, the content).
    Lacks(StoreError),
}

impl Laptop {
    /// Why the image cannot be deployed from the laptop's store.
    fn into_error(self, image: &str) -> anyhow::Error {
        match self {
            Laptop::Has(..) => anyhow::anyhow!("image `{image}` is on this laptop"),
            Laptop::OtherPlatform(e) => e.into(),
            Laptop::Lacks(e) => anyhow::Error::new(e).context(format!(
                "image `{image}` is neither on this laptop nor on the robot: build it (`dts devel build`), pull it (`dts image pull {image}`), or deploy with `--pull missing`"
            )),
        }
    }
}

/// Looks `reference` up in the laptop's store for `platform`: by name, and for a reference
/// with a digest also by content (as the robot looks it up).
fn laptop_image(store: &Store, reference: &Reference, platform: &Platform) -> Laptop {
    let top = match store.get(reference) {
        Ok(record) => record.descriptor,
        Err(e) => match reference.digest().filter(|d| store.has_blob(d)) {
            Some(d) => match by_content(store, d) {
                Some(desc) => desc,
                None => return Laptop::Lacks(e),
            },
            None => return Laptop::Lacks(e),
        },
    };
    match store.resolve_platform(&reference.familiar(), &top, Some(platform)) {
        Ok(img) => Laptop::Has(Box::new(img)),
        Err(e) if e.is_bad_input() => Laptop::OtherPlatform(e),
        Err(e) => Laptop::Lacks(e),
    }
}

/// The descriptor of the manifest or index `d` in the laptop's store, if it is one.
fn by_content(store: &Store, d: &Digest) -> Option<crate::oci::Descriptor> {
    use crate::oci::{Document, media};
    let bytes = store.read_blob(d, crate::store::MAX_MANIFEST_BYTES).ok()?;
    let media_type = match Document::parse(&format!("manifest {d}"), None, &bytes).ok()? {
        Document::Manifest(m) => m.media_type.unwrap_or_else(|| media::OCI_MANIFEST.into()),
        Document::Index(i) => i.media_type.unwrap_or_else(|| media::OCI_INDEX.into()),
    };
    Some(crate::oci::Descriptor::new(
        &media_type,
        d.clone(),
        bytes.len() as u64,
    ))
}

/// One robot's deploy, as `dts duckiebot deploy` and each robot of `dts fleet deploy` ask for
/// it.
#[derive(Clone, Debug, Default)]
pub struct DeployRequest {
    /// The robot as given (a name, `[user@]host[:port]`, a `dts sim`).
    pub robot: String,
    /// How to log in.
    pub ssh: crate::ops::robot::SshArgs,
    /// `-f/--stack`.
    pub stack: Option<String>,
    /// `--set SERVICE=IMAGE`, in order.
    pub sets: Vec<String>,
    /// `--pull` and the registry client's options.
    pub pull: PullOptions,
    /// `--dry-run`: resolve and plan, send and change nothing.
    pub dry_run: bool,
    /// `--detach`: return once every service runs.
    pub detach: bool,
    /// `--force`: do not wait for update locks.
    pub force: bool,
    /// `--via`: robots fetch large layers from this lab hub; shared by a rollout's robots.
    pub via: Option<std::sync::Arc<crate::ops::hub::Via>>,
}

/// What one robot's deploy did; `deploy --json` prints it (docs/cli.md).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeploySummary {
    /// The robot as given.
    pub robot: String,
    /// The release the robot made (`None` for `--dry-run`).
    pub release: Option<u64>,
    /// The stack's images, as the stack names them.
    pub images: Vec<String>,
    /// Layers of those images.
    pub layers_total: u64,
    /// Layers the robot had.
    pub layers_skipped: u64,
    /// Objects sent.
    pub objects_sent: u64,
    /// Their bytes, uncompressed.
    pub object_bytes: u64,
    /// Bytes on the wire to the robot.
    pub bytes_sent: u64,
    /// Bytes on the wire from the robot.
    pub bytes_received: u64,
    /// From the start (before connecting) to the answer.
    pub duration_ms: u64,
    /// `committed`, `rolled-back`, `failed`, `unchanged` (a no-op), `planned` (`--dry-run`), or
    /// `probation` (`--detach`: every service runs; the robot commits or rolls back by itself).
    pub state: String,
    /// The daemon's message.
    pub message: Option<String>,
    /// `--dry-run`: what the robot lacks, as the deploy would send it (docs/cli.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::wire::client::TransferPlan>,
}

/// A deploy's result: the summary, the release that was planned, and the daemon's outcome
/// (`None` for `--dry-run`).
#[derive(Clone, Debug)]
pub struct Deployed {
    /// What `--json` prints.
    pub summary: DeploySummary,
    /// The release, in start order.
    pub spec: ReleaseSpec,
    /// The daemon's answer.
    pub outcome: Option<DeployOutcome>,
}

/// Deploys `req` to its robot: connects, then [`deploy_on`].
pub async fn deploy(
    req: &DeployRequest,
    log: &dyn Reporter,
    warn: &(dyn Fn(String) + Send + Sync),
) -> Result<Deployed> {
    let started = std::time::Instant::now();
    let mut l = crate::ops::robot::connect(&req.robot, &req.ssh).await?;
    let deployed = deploy_on(&mut l, req, started, log, warn).await?;
    if let Some(via) = &req.via {
        finish_hub(via, log, warn).await;
    }
    Ok(deployed)
}

/// After a deploy or a rollout through a lab hub: [`crate::ops::hub::Via::finish`], its
/// warnings to `warn`.
pub async fn finish_hub(
    via: &crate::ops::hub::Via,
    log: &dyn Reporter,
    warn: &(dyn Fn(String) + Send + Sync),
) {
    match crate::ops::image::open_store() {
        Ok(store) => {
            for w in via.finish(&store, log).await {
                warn(w);
            }
        }
        Err(e) => warn(format!("the lab hub: {e}")),
    }
}

/// Deploys `req` over `l`, a robot connected since `started`: loads the stack for the robot's
/// platform, plans (pulling as `--pull` says), then either lists what the robot lacks
/// (`dry_run`) or ships it and [`apply`]s the release. Warnings (the robot's, the stack's, the
/// plan's) go to `warn` as they arise, before any transfer; progress to `log`.
pub async fn deploy_on(
    l: &mut crate::ops::robot::RobotLink,
    req: &DeployRequest,
    started: std::time::Instant,
    log: &dyn Reporter,
    warn: &(dyn Fn(String) + Send + Sync),
) -> Result<Deployed> {
    use crate::ops::robot;
    let robot_name = req.robot.as_str();
    let store = crate::ops::image::open_store()?;
    for w in &l.hello.warnings {
        warn(format!("{robot_name}: {w}"));
    }
    let platform = l.hello.platform.clone();
    let stack = load_stack(req.stack.as_deref(), &req.sets, &platform)?;
    for w in &stack.warnings {
        warn(w.clone());
    }
    let name = stack_name(req.stack.as_deref());
    let plan = plan_for_robot(l, &store, &stack, &name, &req.pull, log).await?;
    for w in &plan.warnings[stack.warnings.len()..] {
        warn(w.clone());
    }
    let images: Vec<String> =
        plan.images
            .iter()
            .map(|(n, _)| n.clone())
            .chain(plan.held.iter().map(|h| {
                Reference::parse(&h.name).map_or_else(|_| h.name.clone(), |r| r.familiar())
            }))
            .collect();
    let summary = |release, state: String, message| DeploySummary {
        robot: robot_name.to_string(),
        release,
        images: images.clone(),
        layers_total: 0,
        layers_skipped: 0,
        objects_sent: 0,
        object_bytes: 0,
        bytes_sent: 0,
        bytes_received: 0,
        duration_ms: 0,
        state,
        message,
        plan: None,
    };
    if req.dry_run {
        // The plan a deploy makes, with every object listed: what the robot lacks.
        let detail = crate::wire::client::Detail::Objects;
        let tp = robot::guarded(
            &l.session,
            l.conn
                .plan_with_held(&store, &plan.images, &plan.held, detail),
        )
        .await?;
        let mut s = summary(None, "planned".into(), None);
        s.layers_total = tp.layers_total as u64;
        s.layers_skipped = tp.layers_skipped as u64;
        s.objects_sent = tp.objects_sent.unwrap_or(0);
        s.object_bytes = tp.object_bytes.unwrap_or(0);
        (s.bytes_sent, s.bytes_received) = l.conn.counters();
        s.duration_ms = started.elapsed().as_millis() as u64;
        s.plan = Some(tp);
        return Ok(Deployed {
            summary: s,
            spec: plan.spec,
            outcome: None,
        });
    }
    let report = match &req.via {
        Some(via) => {
            via.transfer(l, &store, &plan.images, &plan.held, log)
                .await?
        }
        None => {
            robot::guarded(
                &l.session,
                l.conn
                    .transfer_with_held(&store, &plan.images, &plan.held, log),
            )
            .await?
        }
    };
    let outcome = apply(l, &plan.spec, (req.detach, req.force), log).await?;
    let state = if outcome.unchanged {
        "unchanged".to_string()
    } else {
        outcome.state.to_string()
    };
    let mut s = summary(Some(outcome.release), state, Some(outcome.message.clone()));
    s.layers_total = report.layers_total as u64;
    s.layers_skipped = report.layers_skipped as u64;
    s.objects_sent = report.objects_sent;
    s.object_bytes = report.object_bytes;
    (s.bytes_sent, s.bytes_received) = l.conn.counters();
    s.duration_ms = started.elapsed().as_millis() as u64;
    Ok(Deployed {
        summary: s,
        spec: plan.spec,
        outcome: Some(outcome),
    })
}

/// Switches the robot to `spec` and returns the daemon's outcome: once the release is
/// committed or rolled back, or with `detach` once every service runs (state `probation`; the
/// robot finishes probation by itself). Tells `log` what probation watches first, so a
/// deploy is never silent for the probation time, and why the robot waits when a container
/// holds its update lock; `force` (the second of `(detach, force)`) does not wait.
pub async fn apply(
    link: &mut impl verbs::RobotApi,
    spec: &ReleaseSpec,
    (detach, force): (bool, bool),
    log: &dyn Reporter,
) -> Result<DeployOutcome> {
    for line in watch_lines(spec) {
        log.event(Event::note(line));
    }
    let label = if detach {
        "starting the release's services"
    } else {
        "starting the release's services and watching them"
    };
    log.event(Event::start("release", label, None));
    let outcome = verbs::deploy_with(link, spec, detach, force, &mut |n| {
        log.event(Event::note(n));
    })
    .await;
    let how = match &outcome {
        Ok(o) if o.unchanged => "unchanged".to_string(),
        Ok(o) => o.state.to_string(),
        Err(_) => "failed".to_string(),
    };
    log.event(Event::finish("release", how));
    outcome
}

/// What probation waits for on each service of `spec`, one line each, for people: how long a
/// service without a health check must keep running, or which check must pass and when it
/// counts as failed.
pub fn watch_lines(spec: &ReleaseSpec) -> Vec<String> {
    spec.services
        .iter()
        .map(|s| {
            match s
                .healthcheck
                .as_ref()
                .and_then(|h| h.command().map(|c| (h, c)))
            {
                None => format!(
                    "watching `{}` for {}: no health check",
                    s.name,
                    human_duration(spec.probation)
                ),
                Some((h, cmd)) => {
                    let grace = if h.start_period.is_zero() {
                        String::new()
                    } else {
                        format!(
                            ", not counting the first {}",
                            human_duration(h.start_period)
                        )
                    };
                    format!(
                        "watching `{}` until its health check `{}` passes (every {}, each up to {}); it fails after {} failed check(s) in a row{grace}",
                        s.name,
                        cmd.join(" "),
                        human_duration(h.interval()),
                        human_duration(h.timeout()),
                        h.retries(),
                    )
                }
            }
        })
        .collect()
}

/// `5 s`, `1.5 s`, `200 ms`.
fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ContainerConfig, HealthSpec};

    fn service(name: &str, healthcheck: Option<HealthSpec>) -> ServiceSpec {
        ServiceSpec {
            name: name.parse().unwrap(),
            stage: 0,
            order: 0,
            image_name: "busybox".into(),
            manifest: Digest::of(name.as_bytes()),
            container: ContainerConfig::default(),
            healthcheck,
        }
    }

    #[test]
    fn pull_policies_and_what_never_says() {
        assert_eq!("missing".parse(), Ok(PullPolicy::Missing));
        assert_eq!("always".parse(), Ok(PullPolicy::Always));
        assert_eq!("never".parse(), Ok(PullPolicy::Never));
        assert_eq!(PullPolicy::default(), PullPolicy::Missing);
        let e = "sometimes".parse::<PullPolicy>().unwrap_err();
        assert!(e.contains("missing, always or never"), "{e}");
        let e = NotHeld {
            images: vec!["duckietown/dt-core:daffy".into()],
        }
        .to_string();
        assert!(
            e.contains("`duckietown/dt-core:daffy`") && e.contains("--pull never"),
            "{e}"
        );
    }

    /// Issue 20: a deploy sat silent for the probation time; it now says what it waits for.
    #[test]
    fn probation_says_what_it_watches_and_for_how_long() {
        let check = |test: &[&str], start_period| HealthSpec {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_millis(1500),
            timeout: Duration::ZERO,
            retries: 0,
            start_period,
        };
        let spec = ReleaseSpec {
            stack: "duckiebot".into(),
            services: vec![
                service("interface", None),
                service(
                    "core",
                    Some(check(&["test", "-f", "/ready"], Duration::from_secs(10))),
                ),
                service("car", Some(check(&["NONE"], Duration::ZERO))),
            ],
            probation: DEFAULT_PROBATION,
        };
        assert_eq!(
            watch_lines(&spec),
            [
                "watching `interface` for 5 s: no health check",
                "watching `core` until its health check `test -f /ready` passes (every 1.5 s, each up to 30 s); it fails after 3 failed check(s) in a row, not counting the first 10 s",
                "watching `car` for 5 s: no health check",
            ]
        );
        assert_eq!(human_duration(Duration::from_millis(200)), "200 ms");
    }
}
