//! The stock robot's running Docker stack as a dts release: `docker inspect` of each container of
//! the compose project `duckietown` (the running truth: what dockerd made of the compose file,
//! its `${ARCH}` already substituted, the image's defaults merged in) becomes one
//! [`ServiceSpec`] of a [`ReleaseSpec`], the same types `dts duckiebot deploy` sends. Pure: no
//! I/O; what Docker said comes in, the release and one warning line per dropped privilege come
//! out (docs/duckietown.md, "Adoption").
//!
//! What is kept: the image (by the manifest digest the agent imported it under, found by its
//! config digest, which is Docker's image id), entrypoint, command, environment, working
//! directory, user, restart policy, host networking, health check, binds and named volumes.
//! What is dropped, each with a warning: `privileged` (replaced by the device roles the service
//! needs from the robot's profile), `pid: host`, a bind of all of `/tmp` (the camera role mounts
//! what the camera needs), and mounts of Docker's socket (Docker no longer runs the stack).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{
    ContainerConfig, ContainerName, ImageRef, NetworkMode, ReleaseSpec, RestartPolicy, RoleName,
    ServiceSpec, VolumeName, VolumeSource, VolumeSpec,
};
use crate::oci::Digest;
use crate::profile::stack::Healthcheck;

/// The compose project dt-autoboot starts.
pub const PROJECT: &str = "duckietown";
/// The name release 1 records as its stack.
pub const STACK_NAME: &str = "duckietown-adopted";
/// How long an adopted service without a health check must keep running (as a deploy's).
pub const PROBATION: Duration = crate::ops::deploy::DEFAULT_PROBATION;

/// One container as `docker inspect` shows it: the fields adoption reads (and records in
/// `/etc/dt-agent/docker-stack.json`, so a rerun translates what Docker had, not what adoption
/// left).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerContainer {
    /// Full container id.
    pub id: String,
    /// `/name`.
    pub name: String,
    /// The image's config digest (Docker's image id).
    pub image: String,
    /// The effective configuration: the image's defaults with the compose file's over them.
    pub config: crate::oci::config::ContainerConfig,
    /// Privileges, namespaces, restart policy.
    pub host_config: DockerHostConfig,
    /// Binds and volumes as mounted.
    #[serde(default)]
    pub mounts: Vec<DockerMount>,
    /// Whether it runs.
    pub state: DockerState,
}

/// `HostConfig`: the fields adoption reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerHostConfig {
    /// `privileged: true`.
    pub privileged: bool,
    /// `host` for `pid: host`.
    pub pid_mode: String,
    /// `host`, `none`, `default`/`bridge`, a network name.
    pub network_mode: String,
    /// The restart policy.
    pub restart_policy: DockerRestartPolicy,
}

/// `HostConfig.RestartPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerRestartPolicy {
    /// `no` (or empty), `always`, `unless-stopped`, `on-failure`.
    pub name: String,
    /// For `on-failure`.
    pub maximum_retry_count: u32,
}

impl DockerRestartPolicy {
    /// As `docker update --restart` takes it.
    pub fn as_flag(&self) -> String {
        match self.name.as_str() {
            "" => "no".into(),
            "on-failure" if self.maximum_retry_count > 0 => {
                format!("on-failure:{}", self.maximum_retry_count)
            }
            n => n.into(),
        }
    }

    fn to_policy(&self) -> RestartPolicy {
        match self.name.as_str() {
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            "on-failure" => RestartPolicy::OnFailure {
                max_retries: (self.maximum_retry_count > 0).then_some(self.maximum_retry_count),
            },
            _ => RestartPolicy::No,
        }
    }
}

/// One entry of `Mounts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerMount {
    /// `bind`, `volume`, `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// A volume's name (`duckietown_compose-data`).
    #[serde(default)]
    pub name: Option<String>,
    /// The host path (a volume's `_data` directory).
    #[serde(default)]
    pub source: String,
    /// The path in the container.
    pub destination: String,
    /// Writable.
    #[serde(rename = "RW", default)]
    pub rw: bool,
}

/// `State`: the field adoption reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerState {
    /// Whether it runs.
    pub running: bool,
}

impl DockerContainer {
    /// The container's name without Docker's leading `/`.
    pub fn short_name(&self) -> &str {
        self.name.trim_start_matches('/')
    }
}

/// The robot's profile, as far as adoption needs it.
#[derive(Clone, Debug, Default)]
pub struct Roles {
    /// Every role of the robot's configuration, sorted.
    pub all: Vec<String>,
    /// What the camera role mounts (the narrow replacement of `/tmp:/tmp`).
    pub camera_mounts: Vec<String>,
}

/// A Docker named volume to copy: (Docker's `_data` path, the agent volume).
pub type VolumeCopy = (String, VolumeName);

/// What the translation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Adoption {
    /// Release 1.
    pub spec: ReleaseSpec,
    /// One line per dropped privilege or mount, naming the service.
    pub warnings: Vec<String>,
    /// Docker's named volumes to copy into the agent's: (Docker's `_data` path, agent volume).
    pub volumes: Vec<VolumeCopy>,
}

/// Why the stack could not be translated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// The agent does not hold a container's image (the image step did not import it).
    #[error(
        "container `{container}` runs image {image} ({name}), which the agent's store does not hold"
    )]
    ImageMissing {
        /// The container.
        container: String,
        /// Its config digest.
        image: String,
        /// As Docker names it.
        name: String,
    },
    /// A name dts cannot use for a container or volume.
    #[error("container `{0}`: {1}")]
    Invalid(String, String),
}

/// The services that start first: the ROS master and the hardware drivers (as
/// profiles/stacks/duckiebot.yaml stages them); every other service starts in stage 1, after
/// them, as `car-interface` does there.
const STAGE_0: &[&str] = &["ros", "duckiebot-interface"];

/// The image of Duckietown's hardware drivers, which get every role of the robot's profile.
const DRIVERS_REPO: &str = "dt-duckiebot-interface";

/// Translates `containers` (the compose project's, any order) into release 1. `manifests`
/// maps a config digest (Docker's image id) to the manifest the agent holds it under.
pub fn translate(
    containers: &[DockerContainer],
    manifests: &BTreeMap<String, Digest>,
    roles: &Roles,
) -> Result<Adoption, TranslateError> {
    let mut sorted: Vec<&DockerContainer> = containers.iter().collect();
    sorted.sort_by(|a, b| (stage_of(a), a.short_name()).cmp(&(stage_of(b), b.short_name())));
    let mut services = Vec::new();
    let mut warnings = Vec::new();
    let mut volumes = Vec::new();
    let mut order_in = BTreeMap::new();
    for c in sorted {
        let (svc, vols) = service(c, manifests, roles, &mut warnings)?;
        let order = order_in.entry(svc.stage).or_insert(0u32);
        let svc = ServiceSpec {
            order: *order,
            ..svc
        };
        *order += 1;
        for v in vols {
            if !volumes.contains(&v) {
                volumes.push(v);
            }
        }
        services.push(svc);
    }
    Ok(Adoption {
        spec: ReleaseSpec {
            stack: STACK_NAME.into(),
            services,
            probation: PROBATION,
        },
        warnings,
        volumes,
    })
}

fn stage_of(c: &DockerContainer) -> u32 {
    if STAGE_0.contains(&c.short_name()) {
        0
    } else {
        1
    }
}

/// The service's compose name when compose labelled it, else the container's.
fn service_key(c: &DockerContainer) -> String {
    c.short_name().to_owned()
}

fn image_name(c: &DockerContainer) -> String {
    c.config
        .extra
        .get("Image")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| c.image.clone())
}

/// One container's service (its `order` left 0) and the named volumes it uses.
fn service(
    c: &DockerContainer,
    manifests: &BTreeMap<String, Digest>,
    roles: &Roles,
    warnings: &mut Vec<String>,
) -> Result<(ServiceSpec, Vec<VolumeCopy>), TranslateError> {
    let key = service_key(c);
    let Ok(service_name) = ContainerName::new(&*key) else {
        return Err(TranslateError::Invalid(
            key,
            "not a container name dts accepts".into(),
        ));
    };
    let name = image_name(c);
    let manifest =
        manifests
            .get(&c.image)
            .cloned()
            .ok_or_else(|| TranslateError::ImageMissing {
                container: key.clone(),
                image: c.image.clone(),
                name: name.clone(),
            })?;
    let (mounts, vols) = mounts(c, &key, roles, warnings)?;
    let device_roles = privileges(c, &key, roles, warnings)
        .into_iter()
        .map(RoleName::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TranslateError::Invalid(key.clone(), e.to_string()))?;
    let cfg = &c.config;
    let network = match c.host_config.network_mode.as_str() {
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        other => {
            warnings.push(format!(
                "{key}: Docker network `{other}` becomes the agent's bridge; published ports are not carried over"
            ));
            NetworkMode::Bridge
        }
    };
    let container = ContainerConfig {
        name: service_name.clone(),
        image: ImageRef::digest(&manifest),
        image_name: Some(name.clone()),
        entrypoint: cfg.entrypoint.clone(),
        cmd: cfg.cmd.clone(),
        env: cfg.env.clone().unwrap_or_default(),
        workdir: cfg.working_dir.clone().filter(|w| !w.is_empty()),
        user: cfg.user.clone().filter(|u| !u.is_empty()),
        volumes: mounts,
        network,
        restart: c.host_config.restart_policy.to_policy(),
        device_roles,
        service: Some(service_name.clone()),
        ..Default::default()
    };
    let healthcheck = Healthcheck::resolve(None, Some(cfg));
    Ok((
        ServiceSpec {
            name: service_name,
            stage: stage_of(c),
            order: 0,
            image_name: name,
            manifest,
            container,
            healthcheck,
        },
        vols,
    ))
}

/// `privileged` → device roles: the drivers get every role of the profile; any other
/// privileged service gets none (Duckietown's `device-health` reads /sys and /proc, which need
/// no device). `pid: host` is dropped. One warning each.
fn privileges(
    c: &DockerContainer,
    key: &str,
    roles: &Roles,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let hc = &c.host_config;
    let mut granted = Vec::new();
    if hc.privileged {
        if image_name(c).contains(DRIVERS_REPO) {
            granted = roles.all.clone();
            warnings.push(format!(
                "{key}: `privileged` dropped; granted the device roles {}",
                if granted.is_empty() {
                    "(none: the profile has no roles)".to_owned()
                } else {
                    granted.join(", ")
                }
            ));
        } else {
            warnings.push(format!(
                "{key}: `privileged` dropped; no device roles granted (add `x-duckiebot.devices` in a stack to give it some)"
            ));
        }
    }
    if hc.pid_mode == "host" {
        warnings.push(format!(
            "{key}: `pid: host` dropped; it sees only its own processes"
        ));
    }
    granted
}

/// Binds and volumes, minus `/tmp:/tmp` and Docker's socket (each with a warning); named
/// volumes become agent volumes of the same name, whose data is copied from Docker's.
fn mounts(
    c: &DockerContainer,
    key: &str,
    roles: &Roles,
    warnings: &mut Vec<String>,
) -> Result<(Vec<VolumeSpec>, Vec<VolumeCopy>), TranslateError> {
    let mut out = Vec::new();
    let mut vols = Vec::new();
    for m in &c.mounts {
        let read_only = !m.rw;
        match m.kind.as_str() {
            "bind" if m.source == "/tmp" => {
                let narrow = if roles.camera_mounts.is_empty() {
                    "nothing (this profile's camera role needs no socket)".to_owned()
                } else {
                    roles.camera_mounts.join(", ")
                };
                warnings.push(format!(
                    "{key}: bind of all of /tmp dropped; the camera role mounts {narrow}"
                ));
            }
            "bind" if m.source.ends_with("/docker.sock") => warnings.push(format!(
                "{key}: Docker's socket ({}) not mounted: Docker no longer runs the stack",
                m.source
            )),
            "bind" => out.push(VolumeSpec {
                source: VolumeSource::Bind(m.source.clone().into()),
                target: m.destination.clone(),
                read_only,
            }),
            "volume" => {
                let name = m.name.clone().unwrap_or_default();
                let vn = VolumeName::new(name.clone())
                    .map_err(|e| TranslateError::Invalid(key.into(), e.to_string()))?;
                vols.push((m.source.clone(), vn.clone()));
                out.push(VolumeSpec {
                    source: VolumeSource::Named(vn),
                    target: m.destination.clone(),
                    read_only,
                });
            }
            other => warnings.push(format!(
                "{key}: {other} mount at {} not carried over",
                m.destination
            )),
        }
    }
    Ok((out, vols))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `docker inspect` said of two containers of the stock robot (trimmed).
    const INSPECT: &str = r#"[
      {"Id": "aaa", "Name": "/duckiebot-interface",
       "Image": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
       "Config": {"Image": "docker.io/duckietown/dt-duckiebot-interface:daffy-arm64v8",
                  "Cmd": ["sh", "-c", "serve"], "Entrypoint": null,
                  "Env": ["PATH=/bin", "ROBOT=x"], "WorkingDir": "", "User": "",
                  "Hostname": "duckiebot",
                  "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 2000000000}},
       "HostConfig": {"Privileged": true, "PidMode": "host", "NetworkMode": "host",
                      "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                      "Runtime": "nvidia"},
       "Mounts": [
         {"Type": "bind", "Source": "/data", "Destination": "/data", "RW": true},
         {"Type": "bind", "Source": "/tmp", "Destination": "/tmp", "RW": true}],
       "State": {"Running": true}},
      {"Id": "bbb", "Name": "/portainer",
       "Image": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
       "Config": {"Image": "portainer/portainer:linux-arm-1.24.1",
                  "Cmd": ["--no-auth"], "Entrypoint": ["/portainer"], "Env": null,
                  "WorkingDir": "/", "User": "1000"},
       "HostConfig": {"Privileged": false, "PidMode": "", "NetworkMode": "host",
                      "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}},
       "Mounts": [
         {"Type": "volume", "Name": "duckietown_portainer-data",
          "Source": "/var/lib/docker/volumes/duckietown_portainer-data/_data",
          "Destination": "/data", "RW": true},
         {"Type": "bind", "Source": "/var/run/docker.sock",
          "Destination": "/var/run/docker.sock", "RW": true}],
       "State": {"Running": true}},
      {"Id": "ccc", "Name": "/ros",
       "Image": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
       "Config": {"Image": "duckietown/dt-ros-commons:daffy-arm64v8", "Cmd": ["roscore"]},
       "HostConfig": {"NetworkMode": "host",
                      "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}},
       "State": {"Running": true}}
    ]"#;

    fn containers() -> Vec<DockerContainer> {
        serde_json::from_str(INSPECT).unwrap()
    }

    fn manifests() -> BTreeMap<String, Digest> {
        ["1", "2", "3"]
            .iter()
            .map(|d| {
                (
                    format!("sha256:{}", d.repeat(64)),
                    Digest::of(format!("manifest {d}").as_bytes()),
                )
            })
            .collect()
    }

    fn roles() -> Roles {
        Roles {
            all: vec!["camera".into(), "motors".into()],
            camera_mounts: vec!["/tmp/argus_socket".into()],
        }
    }

    #[test]
    fn the_running_stack_becomes_release_one() {
        let a = translate(&containers(), &manifests(), &roles()).unwrap();
        assert_eq!(a.spec.stack, STACK_NAME);
        let names: Vec<(&str, u32, u32)> = a
            .spec
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.stage, s.order))
            .collect();
        assert_eq!(
            names,
            [
                ("duckiebot-interface", 0, 0),
                ("ros", 0, 1),
                ("portainer", 1, 0)
            ]
        );
        let di = &a.spec.services[0];
        assert_eq!(di.manifest, Digest::of(b"manifest 1"));
        assert_eq!(di.container.image, di.manifest.to_string());
        assert_eq!(
            di.image_name,
            "docker.io/duckietown/dt-duckiebot-interface:daffy-arm64v8"
        );
        assert_eq!(
            di.container.cmd.as_deref(),
            Some(&["sh".into(), "-c".into(), "serve".into()][..])
        );
        assert_eq!(di.container.entrypoint, None);
        assert_eq!(di.container.env, ["PATH=/bin", "ROBOT=x"]);
        assert_eq!(di.container.workdir, None);
        assert_eq!(di.container.restart, RestartPolicy::UnlessStopped);
        assert_eq!(di.container.network, NetworkMode::Host);
        assert_eq!(di.container.device_roles, ["camera", "motors"]);
        assert_eq!(di.container.service.as_deref(), Some("duckiebot-interface"));
        let targets: Vec<&str> = di
            .container
            .volumes
            .iter()
            .map(|v| v.target.as_str())
            .collect();
        assert_eq!(targets, ["/data"], "/tmp is not bound whole");
        let hc = di.healthcheck.as_ref().unwrap();
        assert_eq!(hc.test, ["/bin/sh", "-c", "true"]);
        assert_eq!(hc.interval, Duration::from_secs(2));

        let p = &a.spec.services[2];
        assert_eq!(
            p.container.entrypoint.as_deref(),
            Some(&["/portainer".into()][..])
        );
        assert_eq!(p.container.user.as_deref(), Some("1000"));
        assert_eq!(p.container.workdir.as_deref(), Some("/"));
        assert_eq!(p.container.restart, RestartPolicy::Always);
        assert_eq!(p.container.volumes.len(), 1, "no docker.sock");
        assert!(
            matches!(&p.container.volumes[0].source, VolumeSource::Named(n) if n.as_str() == "duckietown_portainer-data")
        );
        assert_eq!(
            a.volumes,
            [(
                "/var/lib/docker/volumes/duckietown_portainer-data/_data".to_owned(),
                VolumeName::new("duckietown_portainer-data").unwrap()
            )]
        );
        assert_eq!(
            a.spec.services[1].container.restart,
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
    }

    #[test]
    fn every_dropped_privilege_is_one_warning() {
        let a = translate(&containers(), &manifests(), &roles()).unwrap();
        assert_eq!(
            a.warnings,
            [
                "duckiebot-interface: bind of all of /tmp dropped; the camera role mounts /tmp/argus_socket",
                "duckiebot-interface: `privileged` dropped; granted the device roles camera, motors",
                "duckiebot-interface: `pid: host` dropped; it sees only its own processes",
                "portainer: Docker's socket (/var/run/docker.sock) not mounted: Docker no longer runs the stack",
            ]
        );
    }

    #[test]
    fn another_privileged_service_gets_no_roles() {
        let mut cs = containers();
        cs[2].host_config.privileged = true;
        let a = translate(&cs, &manifests(), &roles()).unwrap();
        let ros = a.spec.services.iter().find(|s| s.name == "ros").unwrap();
        assert!(ros.container.device_roles.is_empty());
        assert!(
            a.warnings
                .iter()
                .any(|w| w.starts_with("ros: `privileged` dropped; no device roles")),
            "{:?}",
            a.warnings
        );
    }

    #[test]
    fn an_image_the_agent_lacks_is_named() {
        let mut m = manifests();
        m.remove(&format!("sha256:{}", "3".repeat(64)));
        let e = translate(&containers(), &m, &roles()).unwrap_err();
        assert!(
            matches!(e, TranslateError::ImageMissing { ref container, .. } if container == "ros"),
            "{e}"
        );
    }

    #[test]
    fn restart_flags_round_trip_as_docker_update_takes_them() {
        let p = |n: &str, c| DockerRestartPolicy {
            name: n.into(),
            maximum_retry_count: c,
        };
        assert_eq!(p("", 0).as_flag(), "no");
        assert_eq!(p("always", 0).as_flag(), "always");
        assert_eq!(p("on-failure", 5).as_flag(), "on-failure:5");
        assert_eq!(p("on-failure", 0).as_flag(), "on-failure");
    }
}
