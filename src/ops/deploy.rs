//! Turning a stack file into what a robot runs: each service's image resolved in the laptop's
//! store for the robot's platform, its compose settings mapped onto a container, its health
//! check taken from the stack or the image — a [`ReleaseSpec`] plus the list of images to ship —
//! and [`apply`]ing it on the robot, saying what probation will wait for while it does.
//!
//! The robot's daemon runs the release's probation by itself: the laptop only waits for its
//! answer (or, with `detach`, for the answer that every service runs). A laptop that goes away
//! during probation changes nothing on the robot; the release still commits or rolls back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api::{DeployOutcome, ReleaseSpec, ServiceSpec};
use crate::oci::{Digest, Platform, Reference};
use crate::ops::verbs;
use crate::profile::stack::{self, Healthcheck, Stack, StackSource};
use crate::progress::{Event, Reporter};
use crate::store::Store;

/// How long a service without a health check must keep running before a release is committed.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(5);

/// What a deploy sends and applies.
#[derive(Clone, Debug)]
pub struct DeployPlan {
    /// The release.
    pub spec: ReleaseSpec,
    /// Images to ship: (name as the stack gives it, manifest for the robot's platform).
    pub images: Vec<(String, Digest)>,
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

/// Loads `--stack` (a file or a shipped name) for a robot of `platform` and applies `--set`.
pub fn load_stack(arg: Option<&str>, sets: &[String], platform: &Platform) -> Result<Stack> {
    let mut stack = stack::resolve_stack_arg(arg).load(&stack_env(platform))?;
    for s in sets {
        stack.apply_set(s)?;
    }
    Ok(stack)
}

/// The stack's name as a release records it: a shipped stack's name, a file's stem.
pub fn stack_name(arg: Option<&str>) -> String {
    match stack::resolve_stack_arg(arg) {
        StackSource::Builtin(n) => n,
        StackSource::File(p) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stack".into()),
    }
}

/// Resolves every service of `stack` for `platform` against the laptop's store.
pub fn plan(store: &Store, stack: &Stack, name: &str, platform: &Platform) -> Result<DeployPlan> {
    let mut services = Vec::new();
    let mut images: Vec<(String, Digest)> = Vec::new();
    for stage in stack.start_order() {
        for (order, key) in stage.iter().enumerate() {
            let svc = &stack.services[key];
            let reference = Reference::parse(&svc.image)
                .with_context(|| format!("service `{key}`: image `{}`", svc.image))?;
            let record = store.get(&reference).with_context(|| {
                format!(
                    "service `{key}`: image `{}` is not on this laptop: build it (`dts devel build`) or pull it (`dts image pull {}`)",
                    svc.image, svc.image
                )
            })?;
            let img = store
                .resolve_platform(&svc.image, &record.descriptor, Some(platform))
                .with_context(|| format!("service `{key}`: image `{}`", svc.image))?;
            let manifest = img.descriptor.digest.clone();
            if !images
                .iter()
                .any(|(n, d)| *n == svc.image && *d == manifest)
            {
                images.push((svc.image.clone(), manifest.clone()));
            }
            let healthcheck =
                Healthcheck::resolve(svc.healthcheck.as_ref(), img.config.config.as_ref());
            services.push(ServiceSpec {
                name: key.clone(),
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
        warnings: stack.warnings.clone(),
    })
}

/// Switches the robot to `spec` and returns the daemon's outcome: once the release is
/// committed or rolled back, or with `detach` once every service runs (state `probation`; the
/// robot finishes probation by itself). Tells `log` what probation watches first, so a
/// deploy is never silent for the probation time.
pub async fn apply(
    link: &mut crate::ops::robot::RobotLink,
    spec: &ReleaseSpec,
    detach: bool,
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
    let outcome = verbs::deploy(link, spec, detach).await;
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
            name: name.into(),
            stage: 0,
            order: 0,
            image_name: "busybox".into(),
            manifest: Digest::of(name.as_bytes()),
            container: ContainerConfig::default(),
            healthcheck,
        }
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
