//! Containers as the laptop and the robot both see them: what `run` and a release ask for
//! ([`ContainerConfig`] and its parts), what `ps`, `volume ls`, `logs` and `diff` answer
//! ([`ContainerInfo`], [`VolumeInfo`], [`LogLine`], [`Change`]). The robot's records
//! (`container.json`) embed [`ContainerConfig`], so these serde shapes are also an on-disk
//! format: fields are only ever added, with defaults.

use core::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use super::names::{
    CdiDevice, ContainerName, ImageRef, RoleName, Signal, VolumeName, is_valid_name,
};
use crate::oci::Digest;

/// A value that cannot be part of a container (a flag, a name, a field of a request): the
/// request's fault, never the robot's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// The network a container joins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The robot's own network (ROS needs it): the default.
    #[default]
    Host,
    /// Loopback only.
    None,
    /// Its own namespace on the agent's CNI bridge, with published ports.
    Bridge,
}

impl FromStr for NetworkMode {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            "bridge" => Ok(NetworkMode::Bridge),
            _ => Err(SpecError(format!(
                "unknown network `{s}`: use host, none or bridge"
            ))),
        }
    }
}

/// When the daemon restarts a container that exited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// After a non-zero exit, at most `max_retries` times when set.
    OnFailure {
        /// The limit, if any.
        max_retries: Option<u32>,
    },
    /// Always; one stopped by hand comes back when the daemon starts (Docker's rule).
    Always,
    /// Always, unless stopped by hand (also across agent restarts).
    UnlessStopped,
}

impl FromStr for RestartPolicy {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            SpecError(format!(
                "unknown restart policy `{s}`: use no, on-failure[:N], always or unless-stopped"
            ))
        };
        Ok(match s.split_once(':') {
            None => match s {
                "no" => RestartPolicy::No,
                "on-failure" => RestartPolicy::OnFailure { max_retries: None },
                "always" => RestartPolicy::Always,
                "unless-stopped" => RestartPolicy::UnlessStopped,
                _ => return Err(bad()),
            },
            Some(("on-failure", n)) => RestartPolicy::OnFailure {
                max_retries: Some(n.parse().map_err(|_| bad())?),
            },
            _ => return Err(bad()),
        })
    }
}

/// Where a volume's data comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    /// A named volume under the agent's state directory.
    Named(VolumeName),
    /// A path on the robot.
    Bind(PathBuf),
}

/// `-v SRC:DST[:ro|rw]`: SRC starting with `/` is a bind mount, else a named volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The source.
    pub source: VolumeSource,
    /// The path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl FromStr for VolumeSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            SpecError(format!(
                "invalid volume `{s}`: {why} (expected `NAME:/path[:ro]` or `/host/path:/path[:ro]`)"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            [src, dst] => (*src, *dst, None),
            [src, dst, mode] => (*src, *dst, Some(*mode)),
            _ => return Err(bad("wrong number of `:`")),
        };
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(bad(&format!("unknown mode `{m}`"))),
        };
        if !dst.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let source = if src.starts_with('/') {
            VolumeSource::Bind(PathBuf::from(src))
        } else {
            VolumeSource::Named(VolumeName::new(src).map_err(|_| {
                bad("a volume name uses letters, digits, `_`, `.`, `-`, at most 64 characters")
            })?)
        };
        Ok(VolumeSpec {
            source,
            target: dst.to_string(),
            read_only,
        })
    }
}

/// What a container is made of: the image and everything `run` can override.
///
/// Every field but `name` and `image` may be left out of its JSON (the type's default); those
/// two decode only as checked names ([`ContainerName`], [`ImageRef`]), so a config missing
/// one does not decode either.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Its name (also the runtime's container id).
    pub name: ContainerName,
    /// The image as named (`duckietown/dt-core:daffy-arm64v8`) or a manifest digest.
    pub image: ImageRef,
    /// The image's name for people, when `image` is a digest (a release's services).
    #[serde(default)]
    pub image_name: Option<String>,
    /// Replaces the image's ENTRYPOINT (and drops its CMD).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's CMD.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `K=V`, over the image's.
    #[serde(default)]
    pub env: Vec<String>,
    /// Replaces the image's WORKDIR.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Replaces the image's USER (`name[:group]`, or numbers).
    #[serde(default)]
    pub user: Option<String>,
    /// Seccomp, `no_new_privileges`, a read-only root: left out of JSON when Docker's
    /// defaults, so older records and requests keep their bytes.
    #[serde(default, skip_serializing_if = "super::seccomp::Security::is_default")]
    pub security: super::seccomp::Security,
    /// Its own hostname (and UTS namespace).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Volumes and bind mounts.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Published ports (they imply [`NetworkMode::Bridge`]).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Its network.
    #[serde(default)]
    pub network: NetworkMode,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPU limit in CPUs (`1.5`).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Device roles granted.
    #[serde(default)]
    pub device_roles: Vec<RoleName>,
    /// CDI devices asked for (`vendor.com/class=name`), each listed by a granted role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi_devices: Vec<CdiDevice>,
    /// The stack service it runs, when part of a release.
    #[serde(default)]
    pub service: Option<ContainerName>,
    /// The release it belongs to.
    #[serde(default)]
    pub release: Option<u64>,
    /// Removed once it exits (and is not restarted).
    #[serde(default)]
    pub auto_remove: bool,
    /// Its process gets a pseudo-terminal (`run -t`): the shim holds the master, stdout and
    /// stderr merge there. Left out of JSON when false, so older records keep their bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Its process's stdin stays open for an attached client (`run -i`); otherwise it reads
    /// /dev/null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    /// Output kept.
    #[serde(default)]
    pub log: LogConfig,
    /// Seconds between the stop signal and SIGKILL.
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// The stop signal (`SIGTERM`, `SIGINT`, `15`…), over the image's `StopSignal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<Signal>,
    /// Run a minimal init as PID 1 (compose's `init`), which forwards signals to the command
    /// and reaps zombies. `None`: on for a release's service whose image and stack set no
    /// entrypoint (docs/formats.md), off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Labels (compose's `labels`, `docker run --label`): metadata `ps --json` shows.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Resource limits of the container's process (compose's `ulimits`), over the default
    /// open-files limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
}

/// One resource limit of a container's process (`docker run --ulimit nofile=1024:2048`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// The resource as Docker names it, lower case without `RLIMIT_` (`nofile`, `nproc`).
    pub name: String,
    /// The soft limit; `u64::MAX` is unlimited.
    pub soft: u64,
    /// The hard limit; `u64::MAX` is unlimited.
    pub hard: u64,
}

/// The resources `ulimits` may name: setrlimit(2)'s, as Docker spells them.
pub const ULIMIT_NAMES: [&str; 16] = [
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl Ulimit {
    /// Checks the name and that the soft limit is not above the hard one.
    pub fn check(&self) -> Result<(), SpecError> {
        if !ULIMIT_NAMES.contains(&self.name.as_str()) {
            return Err(SpecError(format!(
                "unknown ulimit `{}` (known: {})",
                self.name,
                ULIMIT_NAMES.join(", ")
            )));
        }
        if self.soft > self.hard {
            return Err(SpecError(format!(
                "ulimit `{}`: the soft limit {} is above the hard limit {}",
                self.name, self.soft, self.hard
            )));
        }
        Ok(())
    }
}

/// A container as `ps` shows it (the JSON fields of `dts duckiebot ps --json` and more).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Its name.
    pub name: String,
    /// The stack service, outside a release `null`.
    pub service: Option<String>,
    /// The release.
    pub release: Option<u64>,
    /// The image as named.
    pub image: String,
    /// The manifest it runs.
    pub manifest: Digest,
    /// `created`, `running` or `exited`.
    pub state: String,
    /// The init process's pid while running.
    pub pid: Option<u32>,
    /// Roles granted.
    pub device_roles: Vec<String>,
    /// Last start.
    pub started_at: Option<String>,
    /// Last exit.
    pub finished_at: Option<String>,
    /// Last exit code.
    pub exit_code: Option<i32>,
    /// Restarts by the policy.
    pub restart_count: u32,
    /// The restart policy.
    pub restart: RestartPolicy,
    /// Address on the agent's bridge.
    pub ip: Option<String>,
    /// Why the last start failed.
    pub error: Option<String>,
    /// Its labels (compose's `labels`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A named volume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Where its data is.
    pub path: PathBuf,
    /// Containers that mount it.
    pub used_by: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Port mappings.

/// Transport protocol of a port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

/// A published port, as `docker run -p` takes it: `HOST:CONTAINER[/PROTO]` or
/// `IP:HOST:CONTAINER[/PROTO]` (an IPv6 address in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the robot.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Proto,
    /// Only traffic to this robot address is forwarded; all addresses when `None`.
    pub host_ip: Option<IpAddr>,
}

/// A `-p` value that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid port mapping `{spec}`: {reason} (expected `HOST:CONTAINER[/tcp|udp|sctp]` or `IP:HOST:CONTAINER[/…]`)"
)]
pub struct PortSpecError {
    /// The value given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for PortMapping {
    type Err = PortSpecError;

    fn from_str(spec: &str) -> Result<PortMapping, PortSpecError> {
        let err = |reason: &str| PortSpecError {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (ports, protocol) = match spec.rsplit_once('/') {
            Some((p, proto)) => (
                p,
                match proto {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    "sctp" => Proto::Sctp,
                    _ => return Err(err(&format!("unknown protocol `{proto}`"))),
                },
            ),
            None => (spec, Proto::Tcp),
        };
        let (ip, rest) = if let Some(bracketed) = ports.strip_prefix('[') {
            let (ip, rest) = bracketed
                .split_once(']')
                .ok_or_else(|| err("`[` without `]`"))?;
            let rest = rest
                .strip_prefix(':')
                .ok_or_else(|| err("expected `:` after `]`"))?;
            (Some(ip), rest)
        } else {
            let mut parts = ports.rsplitn(3, ':');
            let _container = parts.next();
            match (parts.next(), parts.next()) {
                (None, _) => {
                    return Err(err(
                        "a host port is required (publishing on a random port is not supported)",
                    ));
                }
                (Some(_), Some(ip)) => (Some(ip), &ports[ip.len() + 1..]),
                (Some(_), None) => (None, ports),
            }
        };
        let (host, container) = rest
            .split_once(':')
            .ok_or_else(|| err("expected `HOST:CONTAINER`"))?;
        let port = |s: &str, what: &str| -> Result<u16, PortSpecError> {
            if s.contains('-') {
                return Err(err("port ranges are not supported"));
            }
            match s.parse::<u16>() {
                Ok(0) => Err(err(&format!("{what} port 0 is not allowed"))),
                Ok(p) => Ok(p),
                Err(_) if s.is_empty() => Err(err(&format!("{what} port is missing"))),
                Err(_) => Err(err(&format!(
                    "{what} port `{s}` is not a number from 1 to 65535"
                ))),
            }
        };
        let host_ip = match ip {
            None => None,
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| err(&format!("`{ip}` is not an IP address")))?,
            ),
        };
        Ok(PortMapping {
            host_port: port(host, "host")?,
            container_port: port(container, "container")?,
            protocol,
            host_ip,
        })
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Output and changes.

/// How much output a container keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// A file is rotated when the next line would take it past this many bytes.
    pub max_size: u64,
    /// Files kept, the current one included (at least 1).
    pub max_files: u32,
    /// Nothing is kept (compose's `logging: {driver: none}`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard: bool,
}

impl Default for LogConfig {
    /// 10 MiB × 3: an SD card has little room, and a robot's output is mostly ROS chatter.
    fn default() -> Self {
        LogConfig {
            max_size: 10 << 20,
            max_files: 3,
            discard: false,
        }
    }
}

/// One line of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The text, with its newline when it had one.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When the shim read it (RFC 3339, UTC, always nine digits of nanoseconds, as Docker's
    /// `json-file` driver writes it: two stamps compare as text as their instants do).
    pub time: String,
}

/// Whether `line` was stamped at or after `since` and at or before `until` (`docker logs
/// --since/--until`; both instants written as [`LogLine::time`] is). A line without a stamp
/// is kept.
pub fn log_line_in(line: &LogLine, since: Option<&str>, until: Option<&str>) -> bool {
    if line.time.is_empty() {
        return true;
    }
    let t = line.time.as_str();
    since.is_none_or(|s| t >= s) && until.is_none_or(|u| t <= u)
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `A`, `C` or `D`.
    pub kind: char,
    /// The path inside the container.
    pub path: String,
}
