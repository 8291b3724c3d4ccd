//! `dts devel deploy ROBOT [SERVICE]` and `dts devel build -H ROBOT`: the development loop.
//! The robot's hello says its platform; the context is built for that platform only, named
//! Duckietown's way when no `-t` is given (`duckietown/<repo>:<branch>-<arch>`,
//! [`crate::build::duckietown::image_tag`]); and the image takes the place of one service in
//! the release the robot runs — the current release's spec with that service's image swapped,
//! as `dts duckiebot deploy --set SERVICE=IMAGE` swaps it in a stack ([`swap`]) — through the
//! same transfer and daemon request as `dts duckiebot deploy`. The deploy is detached by
//! default: it returns once every service of the new release runs, which is the time a
//! developer waits for; the robot then finishes probation by itself.
//!
//! `--watch` ([`watch`]) repeats build and deploy on every saved change of the context over one
//! SSH session.

pub mod watch;

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::api::{DeployOutcome, ImageRef, ReleaseSpec};
use crate::oci::{Digest, Platform, Reference};
use crate::ops::build::BuildArgs;
use crate::ops::robot::{self, RobotLink};
use crate::ops::verbs;
use crate::progress::Reporter;
use crate::store::Store;

/// Why the image cannot take a service's place: the user's input to fix (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum DevelError {
    /// The robot runs no release, so there is no service to replace.
    #[error(
        "robot `{0}` runs no release: deploy a stack first (`dts duckiebot deploy {0} --stack …`), then `dts devel deploy` replaces one of its services"
    )]
    NoRelease(String),
    /// SERVICE is not a service of the current release.
    #[error("release {release} has no service `{service}`; its services: {services}")]
    NoSuchService {
        /// The current release.
        release: u64,
        /// SERVICE as given.
        service: String,
        /// The release's services and their images.
        services: String,
    },
    /// No SERVICE given and no service's image has the built image's repository.
    #[error(
        "no service of release {release} runs an image of `{repository}`: name the service (`dts devel deploy ROBOT SERVICE`); its services: {services}"
    )]
    NoMatch {
        /// The current release.
        release: u64,
        /// The built image's repository.
        repository: String,
        /// The release's services and their images.
        services: String,
    },
    /// No SERVICE given and several services run an image of the repository.
    #[error(
        "several services of release {release} run an image of `{repository}` ({matches}): name the one to replace (`dts devel deploy ROBOT SERVICE`)"
    )]
    Ambiguous {
        /// The current release.
        release: u64,
        /// The built image's repository.
        repository: String,
        /// The services that match.
        matches: String,
    },
}

/// What was built for the robot.
#[derive(Clone, Debug)]
pub struct Built {
    /// The name it got (the first `-t`, else Duckietown's).
    pub tag: String,
    /// Its manifest for the robot's platform.
    pub manifest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// Steps run and served from the cache.
    pub steps_run: usize,
    /// Steps served from the cache.
    pub steps_cached: usize,
    /// How long the build took.
    pub build_ms: u64,
}

/// Builds `args.context` for `platform` only, named by `args.tags`, else Duckietown's way.
pub fn build_for(
    store: &Store,
    args: &BuildArgs,
    platform: &Platform,
    log: &dyn Reporter,
) -> Result<Built> {
    let started = Instant::now();
    let mut args = args.clone();
    args.platforms = vec![platform.clone()];
    if args.tags.is_empty() {
        let root = args
            .context
            .canonicalize()
            .with_context(|| format!("build context `{}`", args.context.display()))?;
        args.tags = vec![crate::build::duckietown::image_tag(&root, platform)?];
    }
    let report = crate::ops::build::build(store, &args, log)?;
    let manifest = report
        .platforms
        .first()
        .map(|(_, d)| d)
        .unwrap_or(&report.descriptor);
    Ok(Built {
        tag: args.tags[0].clone(),
        manifest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        steps_run: report.steps_run,
        steps_cached: report.steps_cached,
        build_ms: started.elapsed().as_millis() as u64,
    })
}

/// `devel deploy --json` (docs/cli.md): one round of build and deploy.
#[derive(Clone, Debug, Serialize)]
pub struct DevelReport {
    /// The robot as given.
    pub robot: String,
    /// The service replaced.
    pub service: String,
    /// The image's name.
    pub image: String,
    /// Its manifest for the robot's platform.
    pub manifest: Digest,
    /// The release made (or, `unchanged`, the one that already ran it).
    pub release: u64,
    /// `probation` (every service runs; the robot commits or rolls back by itself),
    /// `committed` (`--wait`), `unchanged`, `rolled-back` or `failed`.
    pub state: String,
    /// The daemon's message.
    pub message: String,
    /// Build steps run and served from the cache.
    pub steps_run: usize,
    /// Build steps served from the cache.
    pub steps_cached: usize,
    /// Time spent building.
    pub build_ms: u64,
    /// Layers of the image, and those the robot had.
    pub layers_total: u64,
    /// Layers the robot had.
    pub layers_skipped: u64,
    /// File contents sent, and their bytes.
    pub objects_sent: u64,
    /// Bytes of the file contents sent (uncompressed).
    pub object_bytes: u64,
    /// What crossed the SSH channel this round, each way (after compression, before SSH's
    /// framing), as `duckiebot deploy` counts it.
    pub bytes_sent: u64,
    /// Bytes read from the channel this round.
    pub bytes_received: u64,
    /// From the command (or, with `--watch`, the change) to the new release's services
    /// running (with `--wait`: to the release's outcome).
    pub duration_ms: u64,
}

/// The robot's current release, or [`DevelError::NoRelease`].
async fn current_release(link: &mut RobotLink) -> Result<crate::api::ReleaseRecord> {
    let history = verbs::history(link).await?;
    history
        .into_iter()
        .find(|r| r.current)
        .ok_or_else(|| DevelError::NoRelease(link.name.clone()).into())
}

/// The services of `spec` and their images, for error messages.
fn services_list(spec: &ReleaseSpec) -> String {
    spec.services
        .iter()
        .map(|s| format!("`{}` ({})", s.name, s.image_name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The repository of an image name without tag or digest (`docker.io/duckietown/dt-core`).
fn repository(image: &str) -> Option<String> {
    Reference::parse(image).ok().map(|r| r.name())
}

/// `spec` with `tag` (manifest `manifest`) in place of `service`'s image; without `service`,
/// of the one service whose image has `tag`'s repository (tags and digests aside). Everything
/// else of the service — its settings, stage, health check — stays as the release had it.
/// Returns the new spec and the service replaced.
pub fn swap(
    spec: &ReleaseSpec,
    release: u64,
    service: Option<&str>,
    tag: &str,
    manifest: &Digest,
) -> Result<(ReleaseSpec, String), DevelError> {
    let name = match service {
        Some(s) => {
            if !spec.services.iter().any(|x| x.name == s) {
                return Err(DevelError::NoSuchService {
                    release,
                    service: s.to_string(),
                    services: services_list(spec),
                });
            }
            s.to_string()
        }
        None => {
            let repo = repository(tag).unwrap_or_else(|| tag.to_string());
            let matches: Vec<&str> = spec
                .services
                .iter()
                .filter(|s| repository(&s.image_name).as_deref() == Some(repo.as_str()))
                .map(|s| s.name.as_str())
                .collect();
            let familiar = Reference::parse(tag)
                .map(|r| r.name())
                .unwrap_or_else(|_| tag.to_string());
            match matches.as_slice() {
                [one] => one.to_string(),
                [] => {
                    return Err(DevelError::NoMatch {
                        release,
                        repository: familiar,
                        services: services_list(spec),
                    });
                }
                many => {
                    return Err(DevelError::Ambiguous {
                        release,
                        repository: familiar,
                        matches: many
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
    };
    let mut out = spec.clone();
    for s in out.services.iter_mut().filter(|s| s.name == name) {
        s.image_name = tag.to_string();
        s.manifest = manifest.clone();
        s.container.image = ImageRef::digest(manifest);
        s.container.image_name = Some(tag.to_string());
    }
    Ok((out, name))
}

/// How a deploy round runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mode {
    /// Wait for probation's outcome instead of returning once every service runs.
    pub wait: bool,
    /// Do not wait for containers holding their update lock.
    pub force: bool,
}

/// Ships `built` to the robot behind `link` and applies the current release with it in place
/// of `service` (or the service of the same repository). `started` is when the round began:
/// the report's `duration_ms` runs from there.
pub async fn deploy_built(
    link: &mut RobotLink,
    store: &Store,
    built: &Built,
    service: Option<&str>,
    mode: Mode,
    started: Instant,
    log: &dyn Reporter,
) -> Result<(DevelReport, DeployOutcome)> {
    let (sent0, received0) = link.conn.counters();
    let current = current_release(link).await?;
    let (spec, service) = swap(
        &current.spec,
        current.release,
        service,
        &built.tag,
        &built.manifest,
    )?;
    let transfer = robot::guarded(
        &link.session,
        link.conn
            .transfer(store, &[(built.tag.clone(), built.manifest.clone())], log),
    )
    .await?;
    let outcome = crate::ops::deploy::apply(link, &spec, (!mode.wait, mode.force), log).await?;
    let (sent1, received1) = link.conn.counters();
    let state = if outcome.unchanged {
        "unchanged".to_string()
    } else {
        outcome.state.to_string()
    };
    let report = DevelReport {
        robot: link.name.clone(),
        service,
        image: built.tag.clone(),
        manifest: built.manifest.clone(),
        release: outcome.release,
        state,
        message: outcome.message.clone(),
        steps_run: built.steps_run,
        steps_cached: built.steps_cached,
        build_ms: built.build_ms,
        layers_total: transfer.layers_total as u64,
        layers_skipped: transfer.layers_skipped as u64,
        objects_sent: transfer.objects_sent,
        object_bytes: transfer.object_bytes,
        bytes_sent: sent1 - sent0,
        bytes_received: received1 - received0,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    Ok((report, outcome))
}

/// Builds `args` for the robot behind `link` and deploys it in place of `service`.
pub async fn build_and_deploy(
    link: &mut RobotLink,
    store: &Store,
    args: &BuildArgs,
    service: Option<&str>,
    mode: Mode,
    started: Instant,
    log: &dyn Reporter,
) -> Result<(DevelReport, DeployOutcome)> {
    let platform = link.hello.platform.clone();
    let built = build_blocking(store, args, &platform, log)?;
    deploy_built(link, store, &built, service, mode, started, log).await
}

/// [`build_for`] from async code: the build is CPU and disk work that must not hold up the
/// runtime's other tasks (the SSH session's keep-alives).
fn build_blocking(
    store: &Store,
    args: &BuildArgs,
    platform: &Platform,
    log: &dyn Reporter,
) -> Result<Built> {
    tokio::task::block_in_place(|| build_for(store, args, platform, log))
}

/// `dts devel build -H ROBOT`: asks the robot its platform and builds for it; ships nothing.
pub async fn build_for_robot(
    robot_name: &str,
    ssh: &robot::SshArgs,
    store: &Store,
    args: &BuildArgs,
    log: &dyn Reporter,
) -> Result<(Platform, Built)> {
    let link = robot::connect(robot_name, ssh).await?;
    let platform = link.hello.platform.clone();
    // Nothing more to ask: the session ends before the build, which may take minutes.
    drop(link);
    let built = build_blocking(store, args, &platform, log)?;
    Ok((platform, built))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ContainerConfig, ContainerName, ServiceSpec};

    fn service(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            name: ContainerName::new(name).unwrap(),
            stage: 0,
            order: 0,
            image_name: image.into(),
            manifest: Digest::of(image.as_bytes()),
            container: ContainerConfig {
                image: ImageRef::digest(&Digest::of(image.as_bytes())),
                image_name: Some(image.into()),
                ..ContainerConfig::default()
            },
            healthcheck: None,
        }
    }

    fn spec() -> ReleaseSpec {
        ReleaseSpec {
            stack: "lane-following".into(),
            services: vec![
                service("ros", "duckietown/dt-ros-commons:daffy-arm64v8"),
                service("core", "docker.io/duckietown/dt-core:daffy-arm64v8"),
                service("car-interface", "duckietown/dt-car-interface:daffy-arm64v8"),
            ],
            probation: crate::ops::deploy::DEFAULT_PROBATION,
        }
    }

    #[test]
    fn the_service_of_the_same_repository_is_replaced_whatever_its_tag() {
        let m = Digest::of(b"new");
        let (out, name) = swap(&spec(), 4, None, "duckietown/dt-core:devel-arm64v8", &m).unwrap();
        assert_eq!(name, "core");
        let core = out.services.iter().find(|s| s.name == "core").unwrap();
        assert_eq!(core.image_name, "duckietown/dt-core:devel-arm64v8");
        assert_eq!(core.manifest, m);
        assert_eq!(core.container.image, m.to_string());
        assert_eq!(
            core.container.image_name.as_deref(),
            Some("duckietown/dt-core:devel-arm64v8")
        );
        // The others are untouched.
        assert_eq!(out.services[0], spec().services[0]);
        assert_eq!(out.services[2], spec().services[2]);
    }

    #[test]
    fn a_named_service_is_replaced_and_mistakes_name_the_services() {
        let m = Digest::of(b"new");
        let (out, name) = swap(&spec(), 4, Some("ros"), "me/other:x", &m).unwrap();
        assert_eq!(name, "ros");
        assert_eq!(out.services[0].image_name, "me/other:x");
        let e = swap(&spec(), 4, Some("nope"), "me/other:x", &m).unwrap_err();
        assert!(
            e.to_string()
                .contains("`core` (docker.io/duckietown/dt-core"),
            "{e}"
        );
        let e = swap(&spec(), 4, None, "me/other:x", &m).unwrap_err();
        assert!(matches!(e, DevelError::NoMatch { .. }), "{e}");
        let mut two = spec();
        two.services[2].image_name = "duckietown/dt-core:ente-arm64v8".into();
        let e = swap(&two, 4, None, "duckietown/dt-core:x", &m).unwrap_err();
        assert!(e.to_string().contains("`core`, `car-interface`"), "{e}");
    }

    #[test]
    fn duckietowns_tag_mends_what_a_reference_cannot_hold() {
        use crate::build::duckietown::tag_from;
        assert_eq!(
            tag_from("dt-core", "daffy", "arm64v8"),
            "duckietown/dt-core:daffy-arm64v8"
        );
        assert_eq!(
            tag_from("My_Project", "feature/lane fix", "amd64"),
            "duckietown/my_project:feature-lane-fix-amd64"
        );
        Reference::parse(&tag_from("My_Project", "feature/lane fix", "amd64")).unwrap();
    }
}
