//! What a stack's service becomes on the robot: its container ([`Service::container`]) and its
//! resolved health check ([`Healthcheck::resolve`]), in the contract's types (`crate::api`).
//! The stack keeps compose's own spellings where they differ from the contract's
//! (`restart: on-failure:3`, a volume's source as written, a health check that may only
//! change timings); this is the one place they are turned into what crosses the wire.

use std::time::Duration;

use super::{HealthTest, Healthcheck, RestartPolicy, Service, VolumeMount, VolumeSource};
use crate::api::{
    self, CdiDevice, ContainerConfig, ContainerName, HealthSpec, ImageRef, RoleName, Signal,
    SpecError, VolumeName, VolumeSpec,
};
use crate::oci::Digest;

impl From<RestartPolicy> for api::RestartPolicy {
    fn from(r: RestartPolicy) -> api::RestartPolicy {
        match r {
            RestartPolicy::No => api::RestartPolicy::No,
            RestartPolicy::OnFailure(n) => api::RestartPolicy::OnFailure { max_retries: n },
            RestartPolicy::Always => api::RestartPolicy::Always,
            RestartPolicy::UnlessStopped => api::RestartPolicy::UnlessStopped,
        }
    }
}

impl VolumeMount {
    /// The mount as a container asks for it. Fails only on a volume name the robot would
    /// refuse, which the stack's own check catches first.
    pub fn to_spec(&self) -> Result<VolumeSpec, SpecError> {
        Ok(VolumeSpec {
            source: match &self.source {
                VolumeSource::Named(n) => api::VolumeSource::Named(VolumeName::new(n.as_str())?),
                VolumeSource::Bind(p) => api::VolumeSource::Bind(p.into()),
            },
            target: self.target.clone(),
            read_only: self.read_only,
        })
    }
}

impl Service {
    /// The container service `key` runs, from the image with manifest `manifest`: named by
    /// its `container_name`, else by the key. A release knows its services by their
    /// containers' names, so the robot's `ps`, `logs` and `history` use that name too. Fails
    /// only on a name the robot would refuse (`api::names`), which the stack's own checks
    /// catch first for service keys, container names and volumes.
    pub fn container(&self, key: &str, manifest: &Digest) -> Result<ContainerConfig, SpecError> {
        let name = ContainerName::new(self.container_name_or(key))?;
        Ok(ContainerConfig {
            name: name.clone(),
            image: ImageRef::digest(manifest),
            image_name: Some(self.image.clone()),
            entrypoint: self.entrypoint.clone(),
            cmd: self.command.clone(),
            env: self
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            volumes: self
                .volumes
                .iter()
                .map(VolumeMount::to_spec)
                .collect::<Result<_, _>>()?,
            ports: self.ports.clone(),
            network: self.network_mode,
            restart: self.restart.into(),
            memory: self.mem_limit,
            cpus: self.cpus,
            device_roles: self
                .devices
                .iter()
                .map(RoleName::new)
                .collect::<Result<_, _>>()?,
            security: self.security.clone(),
            cdi_devices: self
                .cdi_devices
                .iter()
                .map(CdiDevice::new)
                .collect::<Result<_, _>>()?,
            service: Some(name),
            log: self.logging.unwrap_or_default(),
            labels: self.labels.clone(),
            ulimits: self.ulimits.clone(),
            user: self.user.clone(),
            workdir: self.working_dir.clone(),
            hostname: self.hostname.clone(),
            // Docker rounds a grace period down to whole seconds too (`StopTimeout`).
            stop_timeout: self.stop_grace_period.map(|d| d.as_secs()),
            stop_signal: self.stop_signal.as_deref().map(Signal::new).transpose()?,
            init: self.init,
            ..Default::default()
        })
    }
}

impl Healthcheck {
    /// The stack's health check over the image's (Docker's precedence); `None` when neither
    /// has one or the stack disables it.
    pub fn resolve(
        stack_hc: Option<&Healthcheck>,
        image: Option<&crate::oci::config::ContainerConfig>,
    ) -> Option<HealthSpec> {
        let image_hc = image.and_then(|c| c.healthcheck.as_ref());
        let ns = |v: Option<i64>| v.filter(|n| *n > 0).map(|n| Duration::from_nanos(n as u64));
        if stack_hc.is_some_and(|h| h.disable) {
            return None;
        }
        let test = match stack_hc.and_then(|h| h.test.clone()) {
            Some(HealthTest::Exec(args)) => args,
            Some(HealthTest::Shell(cmd)) => vec!["/bin/sh".into(), "-c".into(), cmd],
            None => {
                let t = image_hc?.test.clone()?;
                match t.first().map(String::as_str) {
                    Some("CMD") => t[1..].to_vec(),
                    Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), t[1..].join(" ")],
                    _ => return None,
                }
            }
        };
        if test.is_empty() {
            return None;
        }
        let pick = |s: Option<Duration>, i: Option<Duration>, d: Duration| s.or(i).unwrap_or(d);
        Some(HealthSpec {
            test,
            interval: pick(
                stack_hc.and_then(|h| h.interval),
                ns(image_hc.and_then(|h| h.interval)),
                Healthcheck::DEFAULT_INTERVAL,
            ),
            timeout: pick(
                stack_hc.and_then(|h| h.timeout),
                ns(image_hc.and_then(|h| h.timeout)),
                Healthcheck::DEFAULT_TIMEOUT,
            ),
            retries: stack_hc
                .and_then(|h| h.retries)
                .or(image_hc
                    .and_then(|h| h.retries)
                    .filter(|r| *r > 0)
                    .map(|r| r as u32))
                .unwrap_or(Healthcheck::DEFAULT_RETRIES),
            start_period: pick(
                stack_hc.and_then(|h| h.start_period),
                ns(image_hc.and_then(|h| h.start_period)),
                Duration::ZERO,
            ),
        })
    }
}
