//! Stack files: the compose subset users write for Duckiebots (docs/formats.md, "Stack files").
//!
//! ```yaml
//! services:
//!   duckiebot-interface:
//!     image: duckietown/dt-duckiebot-interface:daffy-${ARCH}
//!     volumes: ["/data:/data"]
//!     x-duckiebot: { devices: [camera, motors], stage: 0 }
//! volumes:
//!   logs: {}
//! ```
//!
//! Supported per service: `image` (required: stacks run images, they do not build them),
//! `command`, `entrypoint` (string, split as a shell would, or list), `environment` (map or
//! `K=V` list), `volumes` (`name:/path[:ro]` for a top-level volume, `/host:/path[:ro]`),
//! `ports` (`HOST:CONTAINER[/tcp|/udp]`), `network_mode` (`host`, the default, `none`,
//! `bridge`), `restart`, `depends_on` (list or map), `healthcheck`, `mem_limit`, `cpus`, and
//! `x-duckiebot: { devices: [ROLE…], stage: N }`. Other `x-` keys are ignored, as compose does;
//! top-level `version` is accepted and ignored. Any other key is an error naming its path, and
//! `privileged: true` is refused: least privilege is the point of device roles.
//!
//! Variables are substituted first (see [`super::interpolate`]), in every value but not in keys,
//! so `cpus: ${CPUS:-1.5}` works. YAML anchors and `<<` merge keys are honoured.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::ProfileError;
use super::interpolate::interpolate;
use super::robot::RoleSpec;
use super::yaml::{Doc, Map, index, join, kind, show};
mod release;

pub use crate::api::{NetworkMode, PortMapping, Proto as Protocol};
use crate::util::fs::PathContext;

/// The stack `--stack` defaults to.
pub const DEFAULT_STACK: &str = "duckiebot";

/// Shipped stacks: `(name, file name, text)`.
const BUILTIN: [(&str, &str, &str); 2] = [
    (
        "duckiebot",
        "profiles/stacks/duckiebot.yaml",
        include_str!("../../../profiles/stacks/duckiebot.yaml"),
    ),
    (
        "lane-following",
        "profiles/stacks/lane-following.yaml",
        include_str!("../../../profiles/stacks/lane-following.yaml"),
    ),
];

/// A parsed, interpolated and checked stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// Where it came from (a path, or `profiles/stacks/NAME.yaml`), for messages.
    pub source: String,
    /// Service name → service; each becomes a container of that name.
    pub services: BTreeMap<String, Service>,
    /// Named volumes declared at the top level.
    pub volumes: BTreeSet<String>,
    /// Things worth telling the user that do not stop the deploy (unset variables, ignored
    /// ports); the CLI prints them.
    pub warnings: Vec<String>,
}

/// One service of a stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Image reference, interpolated and checked.
    pub image: String,
    /// Replaces the image's `Cmd`.
    pub command: Option<Vec<String>>,
    /// Replaces the image's `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// Environment added to the image's.
    pub environment: BTreeMap<String, String>,
    /// Volumes and bind mounts.
    pub volumes: Vec<VolumeMount>,
    /// Published ports (meaningful with `bridge` only).
    pub ports: Vec<PortMapping>,
    /// Network namespace.
    pub network_mode: NetworkMode,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Services that must be up first (within the same stage, or an earlier one).
    pub depends_on: Vec<Dependency>,
    /// Health check; `None` keeps the image's own.
    pub healthcheck: Option<Healthcheck>,
    /// Memory limit in bytes.
    pub mem_limit: Option<u64>,
    /// CPU limit in CPUs.
    pub cpus: Option<f64>,
    /// Device roles granted (`x-duckiebot.devices`).
    pub devices: Vec<String>,
    /// Start stage (`x-duckiebot.stage`); lower stages start first and stop last.
    pub stage: u32,
}

/// One entry of a service's `volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// What is mounted.
    pub source: VolumeSource,
    /// Where, inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Source of a [`VolumeMount`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    /// A top-level named volume (kept in the agent's state directory).
    Named(String),
    /// An absolute path on the robot.
    Bind(String),
}

/// `restart`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restarted (compose's default).
    #[default]
    No,
    /// Restarted after a non-zero exit, at most this many times when given.
    OnFailure(Option<u32>),
    /// Always restarted.
    Always,
    /// Restarted unless a person stopped it.
    UnlessStopped,
}

/// One `depends_on` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The service depended on.
    pub service: String,
    /// What "up" means for it.
    pub condition: DependsCondition,
}

/// `depends_on.<service>.condition`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    /// Started.
    #[default]
    ServiceStarted,
    /// Its health check passed.
    ServiceHealthy,
    /// It ran to completion with exit code 0.
    ServiceCompletedSuccessfully,
}

/// `healthcheck`. Unset fields take Docker's defaults ([`Healthcheck::DEFAULT_INTERVAL`]…).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `disable: true` or `test: ["NONE"]`: the image's check is switched off.
    pub disable: bool,
    /// The check; `None` keeps the image's test with these timings.
    pub test: Option<HealthTest>,
    /// Time between checks.
    pub interval: Option<Duration>,
    /// Time one check may take.
    pub timeout: Option<Duration>,
    /// Consecutive failures that make the container unhealthy.
    pub retries: Option<u32>,
    /// Grace period after start in which failures do not count.
    pub start_period: Option<Duration>,
}

/// A health check command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthTest {
    /// `["CMD", args…]`: run directly.
    Exec(Vec<String>),
    /// `["CMD-SHELL", cmd]` or a plain string: run with `/bin/sh -c`.
    Shell(String),
}

impl Healthcheck {
    /// Docker's default interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// Docker's default timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Docker's default retries.
    pub const DEFAULT_RETRIES: u32 = 3;

    /// The interval, or Docker's default.
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Self::DEFAULT_INTERVAL)
    }

    /// The timeout, or Docker's default.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }

    /// The retries, or Docker's default.
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(Self::DEFAULT_RETRIES)
    }

    /// The start period, or none.
    pub fn start_period(&self) -> Duration {
        self.start_period.unwrap_or(Duration::ZERO)
    }
}

/// What `--stack` named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackSource {
    /// A stack file on the laptop.
    File(PathBuf),
    /// A shipped stack, `profiles/stacks/NAME.yaml`.
    Builtin(String),
}

/// Interprets `--stack`: a path when it contains `/` or ends in `.yaml` (or `.yml`), else the
/// name of a shipped stack; no argument is [`DEFAULT_STACK`].
pub fn resolve_stack_arg(arg: Option<&str>) -> StackSource {
    match arg {
        None => StackSource::Builtin(DEFAULT_STACK.to_string()),
        Some(a) if a.contains('/') || a.ends_with(".yaml") || a.ends_with(".yml") => {
            StackSource::File(PathBuf::from(a))
        }
        Some(a) => StackSource::Builtin(a.to_string()),
    }
}

impl StackSource {
    /// Reads (a file) or looks up (a shipped stack) and parses it.
    pub fn load(&self, env: &BTreeMap<String, String>) -> Result<Stack, ProfileError> {
        match self {
            StackSource::File(p) => Stack::load(p, env),
            StackSource::Builtin(name) => Stack::builtin(name, env),
        }
    }
}

/// Keys compose has that people copy from Duckietown's stacks, with what to do instead.
fn hint_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "privileged" | "devices" | "cap_add" | "security_opt" => {
            "grant device roles instead: `x-duckiebot: { devices: [camera, motors] }`; the robot profile maps each role to exactly the nodes it needs"
        }
        "container_name" => "containers are named after their service key",
        "build" => "build the image with `dts devel build` and name it in `image`",
        "runtime" => {
            "the Jetson camera's nodes and argus socket come with the `camera` device role"
        }
        _ => return None,
    })
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    // The agent's rules (`agent::container::check_name`): both names become a directory and
    // a runc id on the robot, which allow at most 64 characters; refusing here names the file.
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name `{name}` must be letters, digits, `_`, `.` and `-`, starting with a letter or digit, at most 64 characters"
        ))
    }
}

impl Stack {
    /// Names of the shipped stacks.
    pub fn known() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _, _)| *n).collect()
    }

    /// A shipped stack.
    pub fn builtin(name: &str, env: &BTreeMap<String, String>) -> Result<Stack, ProfileError> {
        let (_, file, text) = BUILTIN.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
            ProfileError::UnknownStack {
                name: name.to_string(),
                known: Self::known().iter().map(|s| s.to_string()).collect(),
            }
        })?;
        Self::parse(file, text, env)
    }

    /// Reads and parses a stack file.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Stack, ProfileError> {
        let text = std::fs::read_to_string(path).at("read", path)?;
        Self::parse(&path.display().to_string(), &text, env)
    }

    /// Parses a stack file's text; `file` names it in errors, `env` supplies variables.
    pub fn parse(
        file: &str,
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Stack, ProfileError> {
        let doc = Doc { file };
        let mut root = doc.parse(text)?;
        let mut warnings = Vec::new();
        interpolate_tree(doc, "", &mut root, env, &mut warnings)?;
        let top = doc.map("", &root, |k| {
            matches!(k, "services" | "volumes" | "version") || k.starts_with("x-")
        })?;
        let mut volumes = BTreeSet::new();
        if let Some(v) = top.get("volumes") {
            let m = doc.map("volumes", v, |_| true)?;
            for (name, def) in &m.entries {
                let at = m.at(name);
                check_name("volume", name).map_err(|e| doc.err(&at, e))?;
                // Drivers, labels and external volumes are Docker-daemon notions.
                doc.map(&at, def, |_| false)?;
                volumes.insert(name.clone());
            }
        }
        let services_v = top
            .get("services")
            .ok_or_else(|| doc.err("services", "missing: a stack runs at least one service"))?;
        let sm = doc.map("services", services_v, |_| true)?;
        if sm.entries.is_empty() {
            return Err(doc.err("services", "a stack runs at least one service"));
        }
        let mut services = BTreeMap::new();
        for (name, v) in &sm.entries {
            let at = sm.at(name);
            check_name("service", name).map_err(|e| doc.err(&at, e))?;
            let svc = parse_service(doc, &at, v, &volumes, env, &mut warnings)?;
            services.insert(name.clone(), svc);
        }
        let stack = Stack {
            source: file.to_string(),
            services,
            volumes,
            warnings,
        };
        order(&stack.services)
            .map_err(|(svc, msg)| doc.err(&join(&join("services", &svc), "depends_on"), msg))?;
        Ok(stack)
    }

    /// Services in start order: one list per stage, stages ascending, each in an order where
    /// every service comes after what it `depends_on` (ties broken by name). Stopping is the
    /// reverse.
    pub fn start_order(&self) -> Vec<Vec<String>> {
        order(&self.services).expect("checked when the stack was parsed")
    }

    /// Swaps one service's image (`--set SERVICE=IMAGE`).
    pub fn set_image(&mut self, service: &str, image: &str) -> Result<(), ProfileError> {
        let known: Vec<String> = self.services.keys().cloned().collect();
        let svc = self
            .services
            .get_mut(service)
            .ok_or_else(|| ProfileError::UnknownService {
                service: service.to_string(),
                known,
            })?;
        crate::oci::reference::Reference::parse(image).map_err(|e| {
            ProfileError::invalid(
                "--set",
                service,
                format!("`{image}` is not an image reference: {e}"),
            )
        })?;
        svc.image = image.to_string();
        Ok(())
    }

    /// Applies one `--set SERVICE=IMAGE` argument.
    pub fn apply_set(&mut self, arg: &str) -> Result<(), ProfileError> {
        match arg.split_once('=') {
            Some((s, i)) if !s.is_empty() && !i.is_empty() => self.set_image(s, i),
            _ => Err(ProfileError::BadSet {
                arg: arg.to_string(),
            }),
        }
    }

    /// Checks that every role a service asks for is one the robot has.
    pub fn check_roles(&self, roles: &BTreeMap<String, RoleSpec>) -> Result<(), ProfileError> {
        for (name, svc) in &self.services {
            for (i, role) in svc.devices.iter().enumerate() {
                if !roles.contains_key(role) {
                    let known: Vec<&str> = roles.keys().map(String::as_str).collect();
                    return Err(ProfileError::invalid(
                        &self.source,
                        &index(&format!("services.{name}.x-duckiebot.devices"), i),
                        format!(
                            "the robot has no device role `{role}` (it has: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Substitutes variables in every string value (not in keys) of the tree.
fn interpolate_tree(
    doc: Doc<'_>,
    path: &str,
    v: &mut Value,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(), ProfileError> {
    match v {
        Value::String(s) => {
            let out = interpolate(s, env).map_err(|e| doc.err(path, e))?;
            for name in out.missing {
                warnings.push(format!(
                    "{}: {path}: variable `{name}` is not set; using an empty string",
                    doc.file
                ));
            }
            *s = out.text;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(doc, &index(path, i), item, env, warnings)?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => show(other),
                };
                interpolate_tree(doc, &join(path, &key), item, env, warnings)?;
            }
        }
        Value::Tagged(t) => interpolate_tree(doc, path, &mut t.value, env, warnings)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

const SERVICE_KEYS: [&str; 14] = [
    "image",
    "command",
    "entrypoint",
    "environment",
    "volumes",
    "ports",
    "network_mode",
    "restart",
    "depends_on",
    "healthcheck",
    "mem_limit",
    "cpus",
    "x-duckiebot",
    "privileged",
];

fn parse_service(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
    volumes: &BTreeSet<String>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Service, ProfileError> {
    let m = doc
        .map(path, v, |k| {
            SERVICE_KEYS.contains(&k) || k.starts_with("x-")
        })
        .map_err(|e| match &e {
            ProfileError::Invalid { key, .. } => {
                let last = key.rsplit('.').next().unwrap_or_default().to_string();
                match hint_for(&last) {
                    Some(h) => e.with_hint(h),
                    None => e,
                }
            }
            _ => e,
        })?;
    if let Some(p) = m.get("privileged")
        && doc.bool(&m.at("privileged"), p)?
    {
        return Err(doc
            .err(&m.at("privileged"), "`privileged: true` is refused")
            .with_hint(hint_for("privileged").expect("has a hint")));
    }
    let image_at = m.at("image");
    let image = doc.string(
        &image_at,
        m.get("image")
            .ok_or_else(|| doc.err(&image_at, "missing: every service runs an image"))?,
    )?;
    crate::oci::reference::Reference::parse(&image).map_err(|e| {
        doc.err(
            &image_at,
            format!("`{image}` is not an image reference: {e}"),
        )
    })?;
    let words = |key: &str| -> Result<Option<Vec<String>>, ProfileError> {
        let Some(v) = m.get(key) else {
            return Ok(None);
        };
        let at = m.at(key);
        match v {
            Value::String(s) => split_words(s).map(Some).map_err(|e| doc.err(&at, e)),
            Value::Sequence(_) => doc.strings(&at, v).map(Some),
            other => Err(doc.err(
                &at,
                format!("expected a string or a list, found {}", kind(other)),
            )),
        }
    };
    let command = words("command")?;
    let entrypoint = words("entrypoint")?;
    let environment = match m.get("environment") {
        Some(v) => parse_environment(doc, &m.at("environment"), v, env)?,
        None => BTreeMap::new(),
    };
    let mut mounts = Vec::new();
    if let Some(v) = m.get("volumes") {
        let at = m.at("volumes");
        let Value::Sequence(items) = v else {
            return Err(doc.err(&at, format!("expected a list, found {}", kind(v))));
        };
        for (i, item) in items.iter().enumerate() {
            let iat = index(&at, i);
            let s = doc.string(&iat, item).map_err(|e| {
                if item.is_mapping() {
                    doc.err(
                        &iat,
                        "the long volume syntax is not supported; write `SOURCE:TARGET[:ro]`",
                    )
                } else {
                    e
                }
            })?;
            let mount = parse_volume(&s, volumes).map_err(|e| doc.err(&iat, e))?;
            if mounts
                .iter()
                .any(|o: &VolumeMount| o.target == mount.target)
            {
                return Err(doc.err(&iat, format!("`{}` is mounted twice", mount.target)));
            }
            mounts.push(mount);
        }
    }
    let network_mode = match m.get("network_mode") {
        None => NetworkMode::Host,
        Some(v) => {
            let at = m.at("network_mode");
            match doc.string(&at, v)?.as_str() {
                "host" => NetworkMode::Host,
                "none" => NetworkMode::None,
                "bridge" => NetworkMode::Bridge,
                other => {
                    return Err(doc.err(
                        &at,
                        format!("`{other}` is not supported (use `host`, `none` or `bridge`)"),
                    ));
                }
            }
        }
    };
    let mut ports = Vec::new();
    if let Some(v) = m.get("ports") {
        let at = m.at("ports");
        let Value::Sequence(items) = v else {
            return Err(doc.err(&at, format!("expected a list, found {}", kind(v))));
        };
        for (i, item) in items.iter().enumerate() {
            let iat = index(&at, i);
            let s = doc.scalar(&iat, item)?;
            ports.push(parse_port(&s).map_err(|e| doc.err(&iat, e))?);
        }
        if !ports.is_empty() && network_mode != NetworkMode::Bridge {
            warnings.push(format!(
                "{}: {at}: ignored: ports are published only with `network_mode: bridge`",
                doc.file
            ));
        }
    }
    let restart = match m.get("restart") {
        None => RestartPolicy::No,
        // YAML 1.1 readers turn an unquoted `no` into false; accept what the user meant.
        Some(Value::Bool(false)) => RestartPolicy::No,
        Some(v) => {
            let at = m.at("restart");
            parse_restart(&doc.string(&at, v)?).map_err(|e| doc.err(&at, e))?
        }
    };
    let depends_on = match m.get("depends_on") {
        Some(v) => parse_depends(doc, &m.at("depends_on"), v)?,
        None => Vec::new(),
    };
    let healthcheck = match m.get("healthcheck") {
        Some(v) => Some(parse_healthcheck(doc, &m.at("healthcheck"), v)?),
        None => None,
    };
    let mem_limit = match m.get("mem_limit") {
        None => None,
        Some(v) => {
            let at = m.at("mem_limit");
            let bytes = match v {
                Value::Number(n) => n
                    .as_u64()
                    .ok_or_else(|| doc.err(&at, format!("expected a size, found {}", show(v))))?,
                _ => parse_bytes(&doc.string(&at, v)?).map_err(|e| doc.err(&at, e))?,
            };
            // Below a few MB the runtime cannot even start the container's init.
            if bytes < 6 * 1024 * 1024 {
                return Err(doc.err(&at, format!("{bytes} bytes is below the 6 MiB minimum")));
            }
            Some(bytes)
        }
    };
    let cpus = match m.get("cpus") {
        None => None,
        Some(v) => {
            let at = m.at("cpus");
            let c = doc.f64(&at, v)?;
            if !(c.is_finite() && c > 0.0) {
                return Err(doc.err(
                    &at,
                    format!("expected a positive number of CPUs, found {c}"),
                ));
            }
            Some(c)
        }
    };
    let (devices, stage) = match m.get("x-duckiebot") {
        Some(v) => parse_x_duckiebot(doc, &m.at("x-duckiebot"), v)?,
        None => (Vec::new(), 0),
    };
    Ok(Service {
        image,
        command,
        entrypoint,
        environment,
        volumes: mounts,
        ports,
        network_mode,
        restart,
        depends_on,
        healthcheck,
        mem_limit,
        cpus,
        devices,
        stage,
    })
}

fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        Err(format!("`{name}` is not an environment variable name"))
    } else {
        Ok(())
    }
}

/// Map form `{K: V}` or list form `[K=V]`. A name without a value (`K:` or `- K`) takes the
/// value from `env`, and is left out when `env` lacks it, as compose does.
fn parse_environment(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ProfileError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(_) => {
            let m = doc.map(path, v, |_| true)?;
            for (k, val) in &m.entries {
                let at = m.at(k);
                check_env_name(k).map_err(|e| doc.err(&at, e))?;
                if val.is_null() {
                    if let Some(x) = env.get(k) {
                        out.insert(k.clone(), x.clone());
                    }
                } else {
                    out.insert(k.clone(), doc.scalar(&at, val)?);
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = index(path, i);
                let s = doc.string(&at, item)?;
                match s.split_once('=') {
                    Some((k, val)) => {
                        check_env_name(k).map_err(|e| doc.err(&at, e))?;
                        out.insert(k.to_string(), val.to_string());
                    }
                    None => {
                        check_env_name(&s).map_err(|e| doc.err(&at, e))?;
                        if let Some(x) = env.get(&s) {
                            out.insert(s.clone(), x.clone());
                        }
                    }
                }
            }
        }
        other => {
            return Err(doc.err(
                path,
                format!("expected a mapping or a list of K=V, found {}", kind(other)),
            ));
        }
    }
    Ok(out)
}

fn parse_volume(s: &str, declared: &BTreeSet<String>) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [_] => {
            return Err(format!(
                "`{s}`: anonymous volumes are not supported; write `NAME:{s}` with NAME under the top-level `volumes`"
            ));
        }
        [src, dst] => (*src, *dst, None),
        [src, dst, mode] => (*src, *dst, Some(*mode)),
        _ => return Err(format!("`{s}`: expected SOURCE:TARGET[:ro]")),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            return Err(format!(
                "`{s}`: mode `{m}` is not supported (use `ro` or `rw`)"
            ));
        }
    };
    if !target.starts_with('/') {
        return Err(format!(
            "`{s}`: the target `{target}` must be an absolute path"
        ));
    }
    let source = if source.starts_with('/') {
        VolumeSource::Bind(source.to_string())
    } else if source.starts_with('.') || source.starts_with('~') {
        return Err(format!(
            "`{s}`: a bind mount's source is a path on the robot and must be absolute"
        ));
    } else {
        check_name("volume", source)?;
        if !declared.contains(source) {
            return Err(format!(
                "`{s}`: volume `{source}` is not declared under the top-level `volumes`"
            ));
        }
        VolumeSource::Named(source.to_string())
    };
    Ok(VolumeMount {
        source,
        target: target.to_string(),
        read_only,
    })
}

fn parse_port(s: &str) -> Result<PortMapping, String> {
    let (ports, protocol) = match s.split_once('/') {
        None => (s, Protocol::Tcp),
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(format!("`{s}`: protocol `{other}` is not `tcp` or `udp`")),
    };
    let (h, c) = ports
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected HOST:CONTAINER[/tcp|/udp]"))?;
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{s}`: `{p}` is not a port number")),
        }
    };
    Ok(PortMapping {
        host_port: port(h)?,
        container_port: port(c)?,
        protocol,
        host_ip: None,
    })
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    Ok(match s {
        "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure(None),
        other => match other.strip_prefix("on-failure:") {
            Some(n) => RestartPolicy::OnFailure(Some(
                n.parse()
                    .map_err(|_| format!("`{other}`: `{n}` is not a number of retries"))?,
            )),
            None => {
                return Err(format!(
                    "`{other}` is not `no`, `on-failure[:N]`, `always` or `unless-stopped`"
                ));
            }
        },
    })
}

fn parse_depends(doc: Doc<'_>, path: &str, v: &Value) -> Result<Vec<Dependency>, ProfileError> {
    let mut out = Vec::new();
    match v {
        Value::Sequence(_) => {
            for service in doc.strings(path, v)? {
                out.push(Dependency {
                    service,
                    condition: DependsCondition::ServiceStarted,
                });
            }
        }
        Value::Mapping(_) => {
            let m = doc.map(path, v, |_| true)?;
            for (service, spec) in &m.entries {
                let at = m.at(service);
                let sm = doc.map(&at, spec, |k| k == "condition")?;
                let condition = match sm.get("condition") {
                    None => DependsCondition::ServiceStarted,
                    Some(c) => {
                        let cat = sm.at("condition");
                        match doc.string(&cat, c)?.as_str() {
                            "service_started" => DependsCondition::ServiceStarted,
                            "service_healthy" => DependsCondition::ServiceHealthy,
                            "service_completed_successfully" => {
                                DependsCondition::ServiceCompletedSuccessfully
                            }
                            other => {
                                return Err(doc.err(
                                    &cat,
                                    format!(
                                        "`{other}` is not `service_started`, `service_healthy` or `service_completed_successfully`"
                                    ),
                                ));
                            }
                        }
                    }
                };
                out.push(Dependency {
                    service: service.clone(),
                    condition,
                });
            }
        }
        other => {
            return Err(doc.err(
                path,
                format!("expected a list or a mapping, found {}", kind(other)),
            ));
        }
    }
    Ok(out)
}

fn parse_healthcheck(doc: Doc<'_>, path: &str, v: &Value) -> Result<Healthcheck, ProfileError> {
    let m = doc.map(path, v, |k| {
        matches!(
            k,
            "test" | "interval" | "timeout" | "retries" | "start_period" | "disable"
        )
    })?;
    let mut hc = Healthcheck::default();
    if let Some(d) = m.get("disable") {
        hc.disable = doc.bool(&m.at("disable"), d)?;
    }
    if let Some(t) = m.get("test") {
        let at = m.at("test");
        match t {
            Value::String(s) => hc.test = Some(HealthTest::Shell(s.clone())),
            Value::Sequence(_) => {
                let words = doc.strings(&at, t)?;
                match words.split_first() {
                    Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                        hc.test = Some(HealthTest::Exec(rest.to_vec()));
                    }
                    Some((first, [cmd])) if first == "CMD-SHELL" => {
                        hc.test = Some(HealthTest::Shell(cmd.clone()));
                    }
                    Some((first, [])) if first == "NONE" => hc.disable = true,
                    _ => {
                        return Err(doc.err(
                            &at,
                            "expected [\"CMD\", ARG…], [\"CMD-SHELL\", COMMAND] or [\"NONE\"]",
                        ));
                    }
                }
            }
            other => {
                return Err(doc.err(
                    &at,
                    format!("expected a string or a list, found {}", kind(other)),
                ));
            }
        }
        if hc.disable && hc.test.is_some() {
            return Err(doc.err(&at, "a test cannot be given with `disable: true`"));
        }
    }
    let duration = |key: &str| -> Result<Option<Duration>, ProfileError> {
        match m.get(key) {
            None => Ok(None),
            Some(v) => {
                let at = m.at(key);
                let s = doc.scalar(&at, v)?;
                parse_duration(&s).map(Some).map_err(|e| doc.err(&at, e))
            }
        }
    };
    hc.interval = duration("interval")?;
    hc.timeout = duration("timeout")?;
    hc.start_period = duration("start_period")?;
    for (key, d) in [("interval", hc.interval), ("timeout", hc.timeout)] {
        if d == Some(Duration::ZERO) {
            return Err(doc.err(&m.at(key), "must be longer than zero"));
        }
    }
    if let Some(r) = m.get("retries") {
        hc.retries = Some(doc.u32(&m.at("retries"), r)?);
    }
    Ok(hc)
}

fn parse_x_duckiebot(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
) -> Result<(Vec<String>, u32), ProfileError> {
    let m: Map<'_> = doc.map(path, v, |k| matches!(k, "devices" | "stage"))?;
    let mut devices = Vec::new();
    if let Some(d) = m.get("devices") {
        let at = m.at("devices");
        for (i, role) in doc.strings(&at, d)?.into_iter().enumerate() {
            if devices.contains(&role) {
                return Err(doc.err(&index(&at, i), format!("role `{role}` is listed twice")));
            }
            devices.push(role);
        }
    }
    let stage = match m.get("stage") {
        Some(s) => doc.u32(&m.at("stage"), s)?,
        None => 0,
    };
    Ok((devices, stage))
}

/// Splits a command string into words as a POSIX shell would, without expanding anything:
/// compose's string form of `command` is not run through a shell.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(n) => cur.push(n),
                    None => return Err(format!("`{s}` ends in a lone `\\`")),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err(format!("`{s}` has an unterminated `'`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$' | '`')) => cur.push(n),
                            Some('\n') => {}
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return Err(format!("`{s}` has an unterminated `\"`")),
                        },
                        Some(n) => cur.push(n),
                        None => return Err(format!("`{s}` has an unterminated `\"`")),
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err("an empty command".to_string());
    }
    Ok(words)
}

/// Parses a Go-style duration as compose writes them: `1m30s`, `500ms`, `1.5h`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration (e.g. `30s`, `1m30s`, `500ms`)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Parses a memory size as Docker does: bytes, or a number with `b`, `k`, `m`, `g`, `t`
/// (binary multiples; `kb`, `MiB` and friends too).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size (e.g. `512m`, `1g`, or bytes)");
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_end == 0 {
        return Err(bad());
    }
    let n: f64 = t[..num_end].parse().map_err(|_| bad())?;
    let unit = t[num_end..].trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = n * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Orders services by stage, then by `depends_on` inside a stage. The error is
/// `(service, message)` for the first service whose dependencies cannot be met.
fn order(services: &BTreeMap<String, Service>) -> Result<Vec<Vec<String>>, (String, String)> {
    for (name, svc) in services {
        for d in &svc.depends_on {
            let Some(dep) = services.get(&d.service) else {
                return Err((
                    name.clone(),
                    format!("no service `{}` in this stack", d.service),
                ));
            };
            if d.service == *name {
                return Err((
                    name.clone(),
                    "a service cannot depend on itself".to_string(),
                ));
            }
            if dep.stage > svc.stage {
                return Err((
                    name.clone(),
                    format!(
                        "`{}` is in stage {}, which starts after this service's stage {}",
                        d.service, dep.stage, svc.stage
                    ),
                ));
            }
        }
    }
    let stages: BTreeSet<u32> = services.values().map(|s| s.stage).collect();
    let mut out = Vec::new();
    for stage in stages {
        let members: BTreeSet<&str> = services
            .iter()
            .filter(|(_, s)| s.stage == stage)
            .map(|(n, _)| n.as_str())
            .collect();
        // Dependencies inside this stage; earlier stages are already up.
        let deps = |n: &str| -> Vec<&str> {
            services[n]
                .depends_on
                .iter()
                .map(|d| d.service.as_str())
                .filter(|d| members.contains(d))
                .collect()
        };
        let mut placed: Vec<String> = Vec::new();
        let mut left = members.clone();
        while !left.is_empty() {
            // The alphabetically first service whose dependencies are all placed: a stable
            // order, so two deploys of one stack start containers identically.
            let next = left
                .iter()
                .find(|n| deps(n).iter().all(|d| placed.iter().any(|p| p == d)))
                .copied();
            match next {
                Some(n) => {
                    placed.push(n.to_string());
                    left.remove(n);
                }
                None => {
                    let start = *left.iter().next().expect("non-empty");
                    return Err((start.to_string(), cycle_text(start, &left, &deps)));
                }
            }
        }
        out.push(placed);
    }
    Ok(out)
}

/// `a → b → a`: follows unplaced dependencies from `start` until a service repeats.
fn cycle_text<'a>(
    start: &'a str,
    left: &BTreeSet<&'a str>,
    deps: &dyn Fn(&str) -> Vec<&'a str>,
) -> String {
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = deps(cur)
            .into_iter()
            .find(|d| left.contains(d))
            .expect("an unplaced service has an unplaced dependency");
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<&str> = path[pos..].to_vec();
            cycle.push(next);
            return format!("dependency cycle: {}", cycle.join(" → "));
        }
        path.push(next);
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#"bash -c "dt-launcher-${X} \"q\"" 'a b' c\ d"#).unwrap(),
            ["bash", "-c", r#"dt-launcher-${X} "q""#, "a b", "c d"]
        );
        assert_eq!(split_words(r#"a "" b"#).unwrap(), ["a", "", "b"]);
        assert!(split_words("a 'b").is_err());
        assert!(split_words("  ").is_err());
    }

    #[test]
    fn durations() {
        for (s, ms) in [
            ("30s", 30_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("1.5h", 5_400_000),
            ("0", 0),
            ("2m", 120_000),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for s in ["", "30", "s", "1x", "-1s", "1m30"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn sizes() {
        for (s, b) in [
            ("512m", 512 << 20),
            ("1g", 1 << 30),
            ("1G", 1 << 30),
            ("1024", 1024),
            ("64kb", 64 << 10),
            ("2MiB", 2 << 20),
            ("1.5g", 3 << 29),
            ("100b", 100),
        ] {
            assert_eq!(parse_bytes(s).unwrap(), b, "{s}");
        }
        for s in ["", "m", "1x", "-1m", "1 gigabyte"] {
            assert!(parse_bytes(s).is_err(), "{s}");
        }
    }

    #[test]
    fn ports_and_restart() {
        assert_eq!(
            parse_port("8080:80/udp").unwrap(),
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Udp,
                host_ip: None,
            }
        );
        assert_eq!(parse_port("11311:11311").unwrap().protocol, Protocol::Tcp);
        for bad in ["80", "0:80", "80:70000", "80:80/sctp", "a:b"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_restart("on-failure:5").unwrap(),
            RestartPolicy::OnFailure(Some(5))
        );
        assert_eq!(
            parse_restart("on-failure").unwrap(),
            RestartPolicy::OnFailure(None)
        );
        assert!(parse_restart("sometimes").is_err());
        assert!(parse_restart("on-failure:x").is_err());
    }

    #[test]
    fn stack_args() {
        assert_eq!(
            resolve_stack_arg(None),
            StackSource::Builtin("duckiebot".into())
        );
        assert_eq!(
            resolve_stack_arg(Some("lane-following")),
            StackSource::Builtin("lane-following".into())
        );
        assert_eq!(
            resolve_stack_arg(Some("my.yaml")),
            StackSource::File("my.yaml".into())
        );
        assert_eq!(
            resolve_stack_arg(Some("./stack")),
            StackSource::File("./stack".into())
        );
    }
}
