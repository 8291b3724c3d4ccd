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
//! `bridge`), `restart`, `depends_on` (list or map), `healthcheck`, `mem_limit`, `cpus`,
//! `stop_signal`, `stop_grace_period`, `init`, `security_opt`, `read_only`, and (`compose.rs`)
//! `labels`, `user`, `working_dir`, `hostname`, `env_file`, `logging`, `ulimits`,
//! `container_name`, `expose`, `privileged` and `devices`, each with Docker's meaning, and
//! `x-duckiebot: { devices: [ROLE…], stage: N }`. Other `x-` keys are ignored, as compose
//! does; top-level `version` is accepted and ignored. Any other key is an error naming its
//! path and `FILE:LINE:COL`, with why for compose's keys that stay refused. `privileged: true`
//! and host-path `devices` are kept for the deploy, which grants them as the robot's device
//! roles ([`Stack::grant_privileges`]): least privilege is the point of device roles.
//!
//! Variables are substituted first (see [`super::interpolate`]), in every value but not in keys,
//! so `cpus: ${CPUS:-1.5}` works, from the caller's variables over the `.env` beside the file.
//! YAML anchors and `<<` merge keys are honoured. Without `--stack`, Docker's compose file
//! names in the current directory are looked for ([`resolve_stack_in`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::ProfileError;
use super::interpolate::interpolate;
use super::robot::RoleSpec;
use super::yaml::{Doc, Map, index, join, kind, show};

pub use crate::api::{NetworkMode, PortMapping, Proto as Protocol};
use crate::util::fs::PathContext;

mod compose;
#[cfg(test)]
mod corpus;
mod parse;
mod release;
mod security;
mod stop;
pub use compose::{Located, Privileges};
pub use stop::parse_signal;

use parse::{order, parse_service};
pub use parse::{parse_bytes, parse_duration, split_words};

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
    /// `security_opt` and `read_only`.
    #[serde(default)]
    pub security: crate::api::seccomp::Security,
    /// CDI devices asked for (`devices: [nvidia.com/gpu=all]`); each must be listed by a
    /// granted role's `cdi:` (checked on the robot).
    #[serde(default)]
    pub cdi_devices: Vec<String>,
    /// `stop_signal`: the signal that asks it to stop (Docker's default: the image's
    /// `StopSignal`, else SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `stop_grace_period`: how long a stop waits before SIGKILL (Docker's default: 10 s).
    #[serde(default)]
    pub stop_grace_period: Option<Duration>,
    /// `init`: a minimal init as PID 1 (`None`: the agent decides, docs/formats.md).
    #[serde(default)]
    pub init: Option<bool>,
    /// `labels`, shown by `ps --json`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `user`: replaces the image's USER.
    #[serde(default)]
    pub user: Option<String>,
    /// `working_dir`: replaces the image's WORKDIR.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `hostname`: its own host name (and UTS namespace).
    #[serde(default)]
    pub hostname: Option<String>,
    /// `ulimits`.
    #[serde(default)]
    pub ulimits: Vec<crate::api::Ulimit>,
    /// `logging`, mapped onto the agent's log rotation; `None`: the agent's default.
    #[serde(default)]
    pub logging: Option<crate::api::LogConfig>,
    /// `container_name`: the container's name on the robot (default: the service key).
    #[serde(default)]
    pub container_name: Option<String>,
    /// `privileged: true` and host-path `devices`, which the deploy grants as device roles.
    #[serde(default)]
    pub privileges: Privileges,
}

impl Service {
    /// The container's name on the robot: `container_name`, else the service key.
    pub fn container_name_or<'a>(&'a self, key: &'a str) -> &'a str {
        self.container_name.as_deref().unwrap_or(key)
    }
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

/// Docker's compose file names, in the order Docker Compose picks them.
pub const COMPOSE_FILE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The compose file Docker Compose would pick in `dir`, and a note when several were there
/// (Docker warns the same way and takes the first).
pub fn find_compose_file(dir: &Path) -> Option<(PathBuf, Option<String>)> {
    let found: Vec<PathBuf> = COMPOSE_FILE_NAMES
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    let first = found.first()?.clone();
    let note = (found.len() > 1).then(|| {
        let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        format!(
            "found several compose files ({}); using `{}`, as Docker Compose does",
            names.join(", "),
            first.display()
        )
    });
    Some((first, note))
}

/// Interprets `--stack` as Docker Compose and the shipped stacks together: a directory (`.`)
/// means the compose file in it; no `--stack` means the compose file of `cwd` when there is
/// one (said in a note: the default stack is `--stack duckiebot` then), else
/// [`DEFAULT_STACK`]. The notes are for the user.
pub fn resolve_stack_in(
    arg: Option<&str>,
    cwd: &Path,
) -> Result<(StackSource, Vec<String>), ProfileError> {
    let mut notes = Vec::new();
    match arg {
        None => {
            if let Some((file, note)) = find_compose_file(cwd) {
                notes.extend(note);
                notes.push(format!(
                    "deploying `{}`, the compose file of the current directory; `--stack {DEFAULT_STACK}` deploys the default stack",
                    file.display()
                ));
                return Ok((StackSource::File(file), notes));
            }
            Ok((resolve_stack_arg(None), notes))
        }
        Some(a) => {
            let p = cwd.join(a);
            if p.is_dir() {
                let (file, note) = find_compose_file(&p).ok_or_else(|| {
                    ProfileError::invalid(
                        a,
                        "",
                        format!(
                            "a directory without a compose file (looked for {})",
                            COMPOSE_FILE_NAMES.join(", ")
                        ),
                    )
                })?;
                notes.extend(note);
                return Ok((StackSource::File(file), notes));
            }
            Ok((resolve_stack_arg(Some(a)), notes))
        }
    }
}

/// The name a release records for a stack file: the directory's name for Docker's compose
/// file names (compose's project name), else the file's stem.
pub fn file_stack_name(p: &Path) -> String {
    let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
    if file
        .as_deref()
        .is_some_and(|f| COMPOSE_FILE_NAMES.contains(&f))
    {
        let dir = std::path::absolute(p).ok().and_then(|a| {
            a.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        });
        if let Some(d) = dir.filter(|d| !d.is_empty()) {
            return d;
        }
    }
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stack".into())
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
        "devices" => {
            "grant device roles instead: `x-duckiebot: { devices: [camera, motors] }`; the robot profile maps each role to exactly the nodes it needs (`devices:` takes host paths, turned into those roles at deploy, and CDI names a granted role lists, e.g. `nvidia.com/gpu=l4t`)"
        }
        _ => return None,
    })
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    // The agent's rules (`agent::container::check_name`): both names become a directory and
    // a runc id on the robot, which allow at most 64 characters; refusing here names the file.
    if crate::api::is_valid_name(name) {
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

    /// Reads and parses a stack file, with the `.env` beside it: its variables interpolate
    /// the file, and `env` (the laptop's environment) wins over them, as in compose.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Stack, ProfileError> {
        let text = std::fs::read_to_string(path).at("read", path)?;
        let dotenv = path.parent().unwrap_or(Path::new("")).join(".env");
        let mut env = env.clone();
        if dotenv.is_file() {
            let t = std::fs::read_to_string(&dotenv).at("read", &dotenv)?;
            for (k, v) in crate::profile::dotenv::parse(&dotenv.display().to_string(), &t, &env)? {
                env.entry(k).or_insert(v);
            }
        }
        Self::parse(&path.display().to_string(), &text, &env)
    }

    /// Parses a stack file's text; `file` names it in errors (as `FILE:LINE:COL` where the
    /// key can be found in `text`), `env` supplies variables.
    pub fn parse(
        file: &str,
        text: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Stack, ProfileError> {
        let positions = crate::profile::locate::Positions::scan(text);
        let mut stack = Self::parse_tree(file, text, env)
            .map_err(|e| Self::also_refused(e, Doc { file }, text).located(&positions))?;
        // Where each privilege was written, for the deploy's warning line.
        for svc in stack.services.values_mut() {
            let p = &mut svc.privileges;
            for at in p
                .privileged
                .iter_mut()
                .chain(p.host_devices.iter_mut().map(|(_, l)| l))
            {
                at.pos = positions.find(&at.key);
            }
        }
        Ok(stack)
    }

    /// A refused key's error, with the file's other refused keys and where each was written.
    fn also_refused(mut e: ProfileError, doc: Doc<'_>, text: &str) -> ProfileError {
        if let ProfileError::Invalid { key, message, .. } = &mut e
            && message.contains("` is refused: ")
        {
            let positions = crate::profile::locate::Positions::scan(text);
            let others: Vec<String> = compose::refused_keys(doc, text)
                .into_iter()
                .filter(|k| k != key)
                .map(|k| match positions.find(&k) {
                    Some((l, c)) => format!("{}:{l}:{c}: {k}", doc.file),
                    None => format!("{}: {k}", doc.file),
                })
                .collect();
            if !others.is_empty() {
                message.push_str(&format!("; also refused: {}", others.join(", ")));
            }
        }
        e
    }

    fn parse_tree(
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
        check_container_names(doc, &services)?;
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

/// Docker's rule: a container name is unique on the host. A service's container is named by
/// its `container_name` or else its key, so no two services may end up with one name.
fn check_container_names(
    doc: Doc<'_>,
    services: &BTreeMap<String, Service>,
) -> Result<(), ProfileError> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, svc) in services {
        let name = svc.container_name_or(key);
        if let Some(other) = seen.insert(name, key) {
            let (at, with) = if svc.container_name.is_some() {
                (key.as_str(), other)
            } else {
                (other, key.as_str())
            };
            return Err(doc.err(
                &join(&join("services", at), "container_name"),
                format!(
                    "container name `{name}` is also the container of service `{with}`: container names are unique on the robot"
                ),
            ));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::parse::{parse_port, parse_restart};
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
