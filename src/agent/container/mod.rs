//! Containers on the robot: created from a stored image, run by `runc`/`crun` under a
//! per-container shim, supervised by `dt-agent daemon` (the one owner of containers).
//!
//! ```text
//! $DT_AGENT_ROOT/containers/<name>/
//!   container.json   what was asked (ContainerConfig) and the image it resolved to; fixed
//!   state.json       status, pids, times, exit code, restarts; written by the daemon only
//!   exit.json        written by the shim when the container's process has exited
//!   shim.log         the shim's own messages
//!   rootfs/          overlay(snapshot, upper) mount point: the container's root
//!   upper/ work/     the container's writable layer (deleted with the container)
//!   bundle/          config.json (rebuilt at every start), shim.json, hosts, hostname, resolv.conf
//!   logs/            the container's output, rotated (see [`logs`])
//! $DT_AGENT_ROOT/volumes/<name>/   named volumes (outlive containers)
//! $DT_AGENT_ROOT/net/              CNI state (agent::net)
//! $DT_AGENT_ROOT/runtime/<runc|crun>/  the runtime's own state (`--root`)
//! $DT_AGENT_ROOT/roots/containers  manifests of existing containers: GC roots
//! ```
//!
//! **Why a shim.** The shim (`dt-agent shim DIR`, a new session) calls `runc create` with its
//! own pipes as the container's stdout/stderr, wires the network, `runc start`s, and then,
//! as the container's subreaper, holds the pipes, writes the logs and collects the exit status.
//! The daemon can therefore die or be upgraded while containers keep running and keep
//! logging; a new daemon finds them through `state.json` and the shim's pid, and adopts them.
//!
//! Devices are resolved at every start (`agent::devices`): major:minor numbers are dynamic, and a
//! missing node fails the start naming the role and the node.

pub mod attach;
pub mod diff;
pub mod exec;
pub mod handover;
pub mod init;
mod launch;
pub mod logs;
pub mod ports;
pub mod seccomp;
pub mod shim;
pub mod spec;
mod supervise;
mod volumes;

use launch::check_platform;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::devices::{self, DeviceError, ResolvedDevices};
use crate::agent::store::{AgentStore, AgentStoreError, snapshot_id};
use crate::oci::config::ImageConfig;
use crate::oci::{Digest, Platform, Reference};
use crate::profile::RoleSpec;
use crate::runtime::overlay::{is_mount_point, mount_overlay, unmount};
use crate::runtime::user::{ExecUser, read_in_root, resolve_user};
use crate::runtime::{Runtime, RuntimeError};
use crate::util::fs::{PathContext, PathError, atomic_write};

pub use crate::api::container::{
    ContainerConfig, ContainerInfo, NetworkMode, RestartPolicy, VolumeInfo, VolumeName,
    VolumeSource, VolumeSpec,
};
pub use logs::{LogConfig, LogLine};

/// How long `stop` waits after the stop signal before it kills, unless told otherwise
/// (Docker's default).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a shim may take to create and start a container (an emulated arm64 runc hook or a
/// slow SD card can take seconds; a hung one must not hang the daemon).
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Restart back-off: doubles from this…
const BACKOFF_START: Duration = Duration::from_millis(100);
/// …up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before it exited restarts without waiting.
const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// The wait before the restart after `restarts` earlier ones.
fn backoff(restarts: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << restarts.min(16))
        .min(BACKOFF_MAX)
}

/// Why a container operation failed. Callers branch on [`ContainerError::is_bad_input`] and
/// [`ContainerError::is_not_found`].
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No container by that name.
    #[error("no container `{0}` (see `dt-agent ps -a`)")]
    NotFound(String),
    /// The name is taken.
    #[error(
        "a container named `{0}` exists already: remove it (`dt-agent rm -f {0}`) or pick another --name"
    )]
    Exists(String),
    /// The name cannot be a container's.
    #[error(
        "invalid container name `{0}`: use letters, digits, `_`, `.` and `-`, starting with a letter or digit, at most 64 characters"
    )]
    BadName(String),
    /// The operation does not fit the container's state.
    #[error("container `{name}` is {state}: {hint}")]
    State {
        /// The container.
        name: String,
        /// Its state.
        state: String,
        /// What to do.
        hint: &'static str,
    },
    /// A flag's value is wrong.
    #[error("{0}")]
    BadSpec(String),
    /// The image is not on this robot.
    #[error("image `{0}` is not on this robot (`dt-agent image ls`); import it or deploy it first")]
    NoImage(String),
    /// The image's layers are there but not unpacked.
    #[error("image `{0}` has no snapshot on this robot; re-import it")]
    NoSnapshot(String),
    /// The image cannot run here.
    #[error("image `{image}` is for {platform}: {reason}")]
    Platform {
        /// The image.
        image: String,
        /// Its platform.
        platform: String,
        /// Why it cannot run.
        reason: String,
    },
    /// A device role could not be granted.
    #[error("container `{name}`: {source}")]
    Device {
        /// The container.
        name: String,
        /// What is wrong.
        #[source]
        source: DeviceError,
    },
    /// The user in the image or on the command line does not resolve.
    #[error("container `{name}`: user `{user}`: {reason}")]
    User {
        /// The container.
        name: String,
        /// The user spec.
        user: String,
        /// Why.
        reason: String,
    },
    /// The shim could not start the container.
    #[error("container `{name}` did not start: {message}")]
    Start {
        /// The container.
        name: String,
        /// The shim's or runtime's explanation.
        message: String,
    },
    /// A volume is in use or missing.
    #[error("volume `{name}`: {reason}")]
    Volume {
        /// The volume.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No OCI runtime, or it failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] AgentStoreError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
}

impl From<crate::api::SpecError> for ContainerError {
    fn from(e: crate::api::SpecError) -> Self {
        ContainerError::BadSpec(e.0)
    }
}

impl ContainerError {
    /// Whether the request was wrong (exit 2) rather than the robot failing (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ContainerError::BadName(_)
            | ContainerError::BadSpec(_)
            | ContainerError::Exists(_)
            | ContainerError::User { .. } => true,
            ContainerError::Device { source, .. } => source.is_bad_input(),
            _ => false,
        }
    }

    /// Whether the container (or image) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ContainerError::NotFound(_) | ContainerError::NoImage(_)
        )
    }
}

/// `container.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// As asked.
    pub config: ContainerConfig,
    /// The manifest the image resolved to.
    pub manifest: Digest,
    /// The snapshot under the container's writable layer.
    pub chain_id: Digest,
    /// The image's platform.
    pub platform: String,
    /// The image's stop signal, if it sets one.
    pub stop_signal: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// The runtime's id when it is not the name ([`handover`]); absent in records of older
    /// agents, whose containers are never retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    /// The name it had before a release switch retired it ([`handover`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_from: Option<String>,
}

/// A container's lifecycle state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started.
    #[default]
    Created,
    /// Its process runs.
    Running,
    /// Its process ended (or was never seen again after a reboot).
    Exited,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Lifecycle state.
    pub status: Status,
    /// The container's init process (host pid) while it runs.
    pub pid: Option<u32>,
    /// The shim holding it.
    pub shim_pid: Option<u32>,
    /// Last start (RFC 3339).
    pub started_at: Option<String>,
    /// Last exit (RFC 3339).
    pub finished_at: Option<String>,
    /// Last exit code (`128 + n` for signal `n`); `None` when unknown (power lost).
    pub exit_code: Option<i32>,
    /// Restarts done by the policy.
    pub restart_count: u32,
    /// Stopped by a person or a release switch: no policy restarts it.
    pub stopped_by_user: bool,
    /// Why the last start failed.
    pub error: Option<String>,
    /// Its address on the agent's bridge.
    pub ip: Option<String>,
}

/// `exit.json`, from the shim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code (`128 + n` for signal `n`).
    pub code: i32,
    /// When.
    pub finished_at: String,
}

/// The robot's containers. One per daemon; every method is safe to call from several threads.
pub struct Manager {
    root: PathBuf,
    runtime: Runtime,
    roles: BTreeMap<String, RoleSpec>,
    etc_root: PathBuf,
    exe: PathBuf,
    ops: Mutex<()>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Shims this process spawned (reaped here; adopted ones are not our children).
    children: HashMap<String, Child>,
    /// Restarts waiting for their back-off.
    restart_at: HashMap<String, Instant>,
}

/// Names as plain strings, for what reads them as text (answers, role lookups).
pub(crate) fn strings(names: &[impl AsRef<str>]) -> Vec<String> {
    names.iter().map(|n| n.as_ref().to_string()).collect()
}

/// Checks a container or volume name (runc's id rules, Docker's name rules). Requests decode
/// only with checked names (`api::names`); this guards names from elsewhere (a directory
/// listing, a retired container's record) and keeps the agent's own error.
pub fn check_name(name: &str) -> Result<(), ContainerError> {
    if crate::api::is_valid_name(name) {
        Ok(())
    } else {
        Err(ContainerError::BadName(name.to_string()))
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PathError> {
    let bytes = crate::util::fs::read_limited(path, 16 << 20)?;
    serde_json::from_slice(&bytes).map_err(|e| PathError {
        action: "parse",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), PathError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    bytes.push(b'\n');
    atomic_write(path, &bytes)
}

/// Whether `pid` is alive and is the shim of `dir` (pids are reused).
fn shim_alive(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line: it is gone for our purposes.
    let needle = dir.to_string_lossy();
    String::from_utf8_lossy(&cmdline)
        .split('\0')
        .any(|a| a == needle)
}

impl Manager {
    /// The manager of the containers under `root` (the agent's state directory). `roles` are
    /// the robot's effective device roles; groups are looked up in `etc_root/etc/group`.
    pub fn new(
        root: &Path,
        runtime: Runtime,
        roles: BTreeMap<String, RoleSpec>,
        etc_root: &Path,
    ) -> Result<Manager, ContainerError> {
        for d in ["containers", "volumes", "roots"] {
            crate::util::fs::create_dir_all(&root.join(d))?;
        }
        let exe = std::env::current_exe().at("find", Path::new("/proc/self/exe"))?;
        Ok(Manager {
            root: root.to_path_buf(),
            runtime,
            roles,
            etc_root: etc_root.to_path_buf(),
            exe,
            ops: Mutex::new(()),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The OCI runtime in use.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The directory of container `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }

    /// The log directory of container `name`.
    pub fn logs_dir(&self, name: &str) -> PathBuf {
        self.dir(name).join("logs")
    }

    fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, name: &str) -> Result<Record, ContainerError> {
        check_name(name)?;
        let p = self.dir(name).join("container.json");
        if !p.exists() {
            return Err(ContainerError::NotFound(name.to_string()));
        }
        Ok(read_json(&p)?)
    }

    fn state(&self, name: &str) -> Result<State, ContainerError> {
        Ok(read_json(&self.dir(name).join("state.json"))?)
    }

    fn save_state(&self, name: &str, state: &State) -> Result<(), ContainerError> {
        Ok(write_json(&self.dir(name).join("state.json"), state)?)
    }

    /// Every container's name, sorted.
    pub fn names(&self) -> Result<Vec<String>, ContainerError> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at("list", &dir)? {
            let e = e.at("list", &dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            // `.new-*`: a create in progress.
            if !name.starts_with('.') && e.path().join("container.json").exists() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn info(&self, name: &str) -> Result<ContainerInfo, ContainerError> {
        let r = self.record(name)?;
        let s = self.state(name)?;
        Ok(ContainerInfo {
            name: name.to_string(),
            service: r.config.service.as_ref().map(|s| s.to_string()),
            release: r.config.release,
            image: r
                .config
                .image_name
                .clone()
                .unwrap_or_else(|| r.config.image.to_string()),
            manifest: r.manifest.clone(),
            state: s.status.to_string(),
            pid: s.pid.filter(|_| s.status == Status::Running),
            device_roles: strings(&r.config.device_roles),
            started_at: s.started_at.clone(),
            finished_at: s.finished_at.clone(),
            exit_code: s.exit_code,
            restart_count: s.restart_count,
            restart: r.config.restart,
            ip: s.ip.clone(),
            error: s.error.clone(),
            labels: r.config.labels.clone(),
        })
    }

    /// One container.
    pub fn inspect(&self, name: &str) -> Result<ContainerInfo, ContainerError> {
        self.info(name)
    }

    /// Every container (running ones only unless `all`).
    pub fn list(&self, all: bool) -> Result<Vec<ContainerInfo>, ContainerError> {
        let mut out = Vec::new();
        for name in self.names()? {
            match self.info(&name) {
                Ok(i) if all || i.state == "running" => out.push(i),
                Ok(_) => {}
                // Half-removed by a crash: not worth failing `ps` for.
                Err(ContainerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Rewrites `roots/containers`: the manifests containers run on stay through `gc`.
    fn write_roots(&self) -> Result<(), ContainerError> {
        let mut lines = String::new();
        for name in self.names()? {
            if let Ok(r) = self.record(&name) {
                lines.push_str(&format!("{}\n", r.manifest));
            }
        }
        Ok(atomic_write(
            &self.root.join("roots").join("containers"),
            lines.as_bytes(),
        )?)
    }

    /// Looks `image` up in the store: a name or a manifest digest.
    fn resolve_image(
        &self,
        store: &AgentStore,
        image: &str,
    ) -> Result<(Digest, ImageConfig, Digest), ContainerError> {
        let refs = store.refs()?;
        let manifest = if let Ok(d) = image.parse::<Digest>() {
            // Named, or kept unnamed (a release's image whose name moved on: rollbacks
            // recreate containers from digests alone).
            if refs.values().any(|e| e.manifest == d) || store.image_config(&d).is_ok() {
                d
            } else {
                return Err(ContainerError::NoImage(image.to_string()));
            }
        } else {
            let r = Reference::parse(image)
                .map_err(|e| ContainerError::BadSpec(format!("image `{image}`: {e}")))?;
            refs.get(&r.to_string())
                .map(|e| e.manifest.clone())
                .ok_or_else(|| ContainerError::NoImage(image.to_string()))?
        };
        let (_, config) = store.image_config(&manifest)?;
        let chain = snapshot_id(&config.rootfs.diff_ids);
        if !store.has_snapshot(&chain) {
            return Err(ContainerError::NoSnapshot(image.to_string()));
        }
        Ok((manifest, config, chain))
    }

    fn image_config(&self, manifest: &Digest) -> Result<ImageConfig, ContainerError> {
        let store = AgentStore::open(&self.root)?;
        Ok(store.image_config(manifest)?.1)
    }

    /// Creates a container (not started). The image must be in the store; the device roles
    /// must exist on this robot.
    pub fn create(&self, mut config: ContainerConfig) -> Result<ContainerInfo, ContainerError> {
        check_name(&config.name)?;
        if !config.ports.is_empty() && config.network == NetworkMode::Host {
            config.network = NetworkMode::Bridge;
        }
        if !config.ports.is_empty() && config.network == NetworkMode::None {
            return Err(ContainerError::BadSpec(
                "published ports (-p) need a network: drop --network none".into(),
            ));
        }
        for role in &config.device_roles {
            if !self.roles.contains_key(role.as_str()) {
                let mut known: Vec<String> = self.roles.keys().cloned().collect();
                if known.is_empty() {
                    known.push("none: no robot.yaml".into());
                }
                return Err(ContainerError::BadSpec(format!(
                    "unknown device role `{role}` (this robot has: {})",
                    known.join(", ")
                )));
            }
        }
        crate::agent::cdi::check_requests(
            &self.roles,
            &strings(&config.device_roles),
            &strings(&config.cdi_devices),
        )
        .map_err(ContainerError::BadSpec)?;
        for u in &config.ulimits {
            u.check()?;
        }
        let _g = self.lock();
        let dir = self.dir(&config.name);
        if dir.join("container.json").exists() {
            return Err(ContainerError::Exists(config.name.to_string()));
        }
        let store = AgentStore::open(&self.root)?;
        let (manifest, image, chain_id) = self.resolve_image(&store, &config.image)?;
        let platform = image.platform();
        check_platform(&config.image, &platform)?;
        // Before anything is made: a `-w` or an image `WorkingDir` through /proc/*/fd
        // (CVE-2024-21626) is refused as bad input.
        spec::working_dir(&config, &image)?;
        seccomp::check(&config.security)?;
        // A leftover of a crashed create or remove: nothing in it is worth keeping.
        if dir.exists() {
            self.remove_dir(&config.name)?;
        }
        let tmp = self
            .root
            .join("containers")
            .join(format!(".new-{}", config.name));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).at("remove", &tmp)?;
        }
        for sub in ["rootfs", "upper", "work", "bundle", "logs"] {
            let p = tmp.join(sub);
            crate::util::fs::create_dir_all(&p)?;
        }
        let runtime_id = Some(self.fresh_rid(&config.name));
        let record = Record {
            runtime_id,
            retired_from: None,
            stop_signal: image.config.as_ref().and_then(|c| c.stop_signal.clone()),
            config,
            manifest,
            chain_id,
            platform: platform.to_string(),
            created_at: crate::util::time::rfc3339(crate::util::time::now_secs()),
        };
        let name = record.config.name.clone();
        write_json(&tmp.join("state.json"), &State::default())?;
        write_json(&tmp.join("container.json"), &record)?;
        fs::rename(&tmp, &dir).at("rename", &tmp)?;
        crate::util::fs::sync_dir(&self.root.join("containers"))?;
        self.write_roots()?;
        drop(store);
        self.info(&name)
    }

    /// Starts a created or exited container.
    pub fn start(&self, name: &str) -> Result<ContainerInfo, ContainerError> {
        let _g = self.lock();
        self.start_locked(name, false, None)?;
        self.info(name)
    }

    /// Stops a running container: its stop signal (image's, else SIGTERM), then SIGKILL after
    /// `timeout`. No restart policy brings it back.
    pub fn stop(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<ContainerInfo, ContainerError> {
        let record = self.record(name)?;
        let timeout = timeout
            .or(record.config.stop_timeout.map(Duration::from_secs))
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        {
            let _g = self.lock();
            let mut state = self.state(name)?;
            state.stopped_by_user = true;
            self.save_state(name, &state)?;
            self.inner().restart_at.remove(name);
            if state.status != Status::Running {
                return self.info(name);
            }
            // The container's own (`run --stop-signal`, a stack's `stop_signal`), else the
            // image's `StopSignal`, else SIGTERM: Docker's order.
            let signal = record
                .config
                .stop_signal
                .as_ref()
                .map(|s| s.to_string())
                .or_else(|| record.stop_signal.clone())
                .unwrap_or_else(|| "TERM".into());
            let signal = signal.trim_start_matches("SIG").to_string();
            let _ = self.runtime.kill(record.rid(), &signal);
        }
        if !self.wait_exit(name, timeout) {
            let _ = self.runtime.kill(record.rid(), "KILL");
            self.wait_exit(name, Duration::from_secs(10));
        }
        self.supervise_one(name)?;
        self.info(name)
    }

    /// Sends `signal` to the container's process.
    pub fn kill(&self, name: &str, signal: &str) -> Result<(), ContainerError> {
        let record = self.record(name)?;
        let state = self.state(name)?;
        if state.status != Status::Running {
            return Err(ContainerError::State {
                name: name.into(),
                state: state.status.to_string(),
                hint: "only a running container takes signals",
            });
        }
        Ok(self
            .runtime
            .kill(record.rid(), signal.trim_start_matches("SIG"))?)
    }

    /// Whether the container's process (and its shim) are gone, waiting up to `timeout`.
    fn wait_exit(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.alive(name) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the container still runs: its shim, or (when the shim was killed) its process.
    fn alive(&self, name: &str) -> bool {
        let dir = self.dir(name);
        let shim_dir = self.shim_dir(name);
        {
            let mut inner = self.inner();
            if let Some(child) = inner.children.get_mut(name)
                && let Ok(Some(_)) = child.try_wait()
            {
                inner.children.remove(name);
            }
        }
        let Ok(state) = self.state(name) else {
            return false;
        };
        if state.shim_pid.is_some_and(|p| shim_alive(p, &shim_dir)) {
            return true;
        }
        if dir.join("exit.json").exists() {
            return false;
        }
        matches!(self.runtime.state(&self.rid(name)), Ok(Some(s)) if s.status == "running" || s.status == "created")
    }

    /// Removes a container, its writable layer and its logs. A running one needs `force`
    /// (it is killed).
    pub fn remove(&self, name: &str, force: bool) -> Result<(), ContainerError> {
        let record = self.record(name)?;
        let state = self.state(name)?;
        if state.status == Status::Running && self.alive(name) {
            if !force {
                return Err(ContainerError::State {
                    name: name.into(),
                    state: "running".into(),
                    hint: "stop it first, or remove it with --force",
                });
            }
            self.stop(name, Some(Duration::ZERO))?;
        }
        let _g = self.lock();
        if record.config.network == NetworkMode::Bridge
            && let Ok(net) = crate::agent::net::Network::new(&self.root.join("net"))
        {
            let _ = net.detach(record.rid(), None, &record.config.ports);
        }
        self.remove_dir(name)?;
        self.inner().restart_at.remove(name);
        self.inner().children.remove(name);
        self.write_roots()
    }

    /// Deletes the runtime's container, unmounts the root and removes the directory — the
    /// root's mount point only with `rmdir`, so a failed unmount can never delete the image.
    fn remove_dir(&self, name: &str) -> Result<(), ContainerError> {
        let dir = self.dir(name);
        self.runtime.delete(&self.rid(name))?;
        let rootfs = dir.join("rootfs");
        unmount(&rootfs)?;
        // Mark it gone first: a crash from here on leaves a directory `names()` skips and the
        // next create of that name clears.
        let record = dir.join("container.json");
        match fs::remove_file(&record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(PathError {
                    action: "remove",
                    path: record,
                    source: e,
                }
                .into());
            }
            _ => {}
        }
        if rootfs.exists() {
            fs::remove_dir(&rootfs).at("remove", &rootfs)?;
        }
        fs::remove_dir_all(&dir).at("remove", &dir)?;
        Ok(())
    }

    /// What the container changed in its writable layer.
    pub fn diff(&self, name: &str) -> Result<Vec<diff::Change>, ContainerError> {
        let record = self.record(name)?;
        let store = AgentStore::open(&self.root)?;
        let lower = store.snapshot_rootfs(&record.chain_id);
        drop(store);
        let mut skip: Vec<String> = [
            "/proc",
            "/sys",
            "/dev",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            handover::LOCK_DIR,
        ]
        .map(String::from)
        .to_vec();
        skip.extend(record.config.volumes.iter().map(|v| v.target.clone()));
        Ok(diff::diff(&self.dir(name).join("upper"), &lower, &skip)?)
    }

    /// The image config of a container (health checks read it).
    pub fn container_image(&self, name: &str) -> Result<ImageConfig, ContainerError> {
        let r = self.record(name)?;
        self.image_config(&r.manifest)
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(['.', ':'])
        .take(3)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [y, m, day] = d.as_slice() else {
        return None;
    };
    let [hh, mm, ss] = t.as_slice() else {
        return None;
    };
    let y2 = if *m <= 2 { y - 1 } else { *y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if *m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    #[test]
    fn volume_names_are_checked_when_deserialized() {
        // What a daemon request or a release spec carries: serde, not `FromStr`.
        let spec = |name: &str| {
            format!(r#"{{"source":{{"named":"{name}"}},"target":"/data","read_only":false}}"#)
        };
        for bad in [
            "../../x",
            "..",
            "a/b",
            "/abs",
            "",
            ".hidden",
            &"v".repeat(65),
        ] {
            let e = serde_json::from_str::<VolumeSpec>(&spec(bad)).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("invalid volume name `{bad}`")),
                "{bad}: {e}"
            );
        }
        let ok: VolumeSpec = serde_json::from_str(&spec("notes.v1")).unwrap();
        assert_eq!(
            ok.source,
            VolumeSource::Named(VolumeName::new("notes.v1").unwrap())
        );
        // The wire form is unchanged: a plain string.
        assert_eq!(serde_json::to_string(&ok).unwrap(), spec("notes.v1"));
        // And a whole daemon request with one is refused before it reaches the manager.
        let req = format!(
            r#"{{"op":"create","start":true,"config":{{"name":"c","image":"i","volumes":[{}]}}}}"#,
            spec("../../x")
        );
        assert!(serde_json::from_str::<crate::agent::daemon::Request>(&req).is_err());
        let req = req.replace("../../x", "x");
        assert!(serde_json::from_str::<crate::agent::daemon::Request>(&req).is_ok());
    }

    use super::*;

    #[test]
    fn flags_parse_like_docker() {
        assert_eq!("no".parse::<RestartPolicy>().unwrap(), RestartPolicy::No);
        assert_eq!(
            "on-failure:3".parse::<RestartPolicy>().unwrap(),
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        let v: VolumeSpec = "data:/data:ro".parse().unwrap();
        assert_eq!(
            v.source,
            VolumeSource::Named(VolumeName::new("data").unwrap())
        );
        assert!(v.read_only);
        let v: VolumeSpec = "/tmp/x:/x".parse().unwrap();
        assert_eq!(v.source, VolumeSource::Bind("/tmp/x".into()));
        assert!("data:rel".parse::<VolumeSpec>().is_err());
        assert!("a:/b:rx".parse::<VolumeSpec>().is_err());
        assert!(check_name("core").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert_eq!(parse_rfc3339("2026-11-28T03:13:01Z"), Some(1_795_835_581));
    }
}
