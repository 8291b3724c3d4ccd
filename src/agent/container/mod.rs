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

pub mod diff;
pub mod logs;
pub mod shim;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, BufReader};
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

/// Checks a container or volume name (runc's id rules, Docker's name rules).
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
            service: r.config.service.clone(),
            release: r.config.release,
            image: r
                .config
                .image_name
                .clone()
                .unwrap_or_else(|| r.config.image.clone()),
            manifest: r.manifest.clone(),
            state: s.status.to_string(),
            pid: s.pid.filter(|_| s.status == Status::Running),
            device_roles: r.config.device_roles.clone(),
            started_at: s.started_at.clone(),
            finished_at: s.finished_at.clone(),
            exit_code: s.exit_code,
            restart_count: s.restart_count,
            restart: r.config.restart,
            ip: s.ip.clone(),
            error: s.error.clone(),
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
            if !self.roles.contains_key(role) {
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
        let _g = self.lock();
        let dir = self.dir(&config.name);
        if dir.join("container.json").exists() {
            return Err(ContainerError::Exists(config.name.clone()));
        }
        let store = AgentStore::open(&self.root)?;
        let (manifest, image, chain_id) = self.resolve_image(&store, &config.image)?;
        let platform = image.platform();
        check_platform(&config.image, &platform)?;
        // Before anything is made: a `-w` or an image `WorkingDir` through /proc/*/fd
        // (CVE-2024-21626) is refused as bad input.
        spec::working_dir(&config, &image)?;
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
        let record = Record {
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
        self.start_locked(name, false)?;
        self.info(name)
    }

    fn start_locked(&self, name: &str, by_policy: bool) -> Result<(), ContainerError> {
        let record = self.record(name)?;
        let mut state = self.state(name)?;
        if state.status == Status::Running {
            return Err(ContainerError::State {
                name: name.into(),
                state: "running".into(),
                hint: "stop it first",
            });
        }
        self.inner().restart_at.remove(name);
        match self.launch(&record) {
            Ok((shim_pid, launched)) => {
                state.status = Status::Running;
                state.pid = Some(launched.pid);
                state.shim_pid = Some(shim_pid);
                state.ip = launched.ip;
                state.started_at = Some(crate::util::time::rfc3339(crate::util::time::now_secs()));
                state.exit_code = None;
                state.finished_at = None;
                state.error = None;
                if by_policy {
                    state.restart_count += 1;
                } else {
                    state.stopped_by_user = false;
                }
                self.save_state(name, &state)?;
                Ok(())
            }
            Err(e) => {
                state.status = if state.started_at.is_some() {
                    Status::Exited
                } else {
                    Status::Created
                };
                state.error = Some(e.to_string());
                state.pid = None;
                self.save_state(name, &state)?;
                Err(e)
            }
        }
    }

    /// Mounts the root, writes the bundle, and has a shim create and start the container.
    fn launch(&self, record: &Record) -> Result<(u32, Launched), ContainerError> {
        let cfg = &record.config;
        let name = &cfg.name;
        let dir = self.dir(name);
        let rootfs = dir.join("rootfs");
        let bundle = dir.join("bundle");
        let store = AgentStore::open(&self.root)?;
        let snapshot = store.snapshot_rootfs(&record.chain_id);
        if !snapshot.is_dir() {
            return Err(ContainerError::NoSnapshot(cfg.image.clone()));
        }
        let (_, image) = store.image_config(&record.manifest)?;
        drop(store);
        check_platform(&cfg.image, &image.platform())?;
        // A leftover runtime container (agent killed between create and delete) would make
        // `create` fail with "container exists".
        self.runtime.delete(name)?;

        if !is_mount_point(&rootfs) {
            mount_overlay(
                &rootfs,
                &[snapshot.as_path()],
                Some((&dir.join("upper"), &dir.join("work"))),
            )?;
        }
        let result = self.launch_mounted(record, &image, &rootfs, &bundle);
        if result.is_err() {
            let _ = unmount(&rootfs);
        }
        result
    }

    fn launch_mounted(
        &self,
        record: &Record,
        image: &ImageConfig,
        rootfs: &Path,
        bundle: &Path,
    ) -> Result<(u32, Launched), ContainerError> {
        let cfg = &record.config;
        let name = &cfg.name;
        let user_spec = cfg
            .user
            .clone()
            .or_else(|| image.config.as_ref().and_then(|c| c.user.clone()))
            .unwrap_or_default();
        let user = self.resolve_user(name, rootfs, &user_spec)?;
        let devices =
            devices::resolve(&self.roles, &cfg.device_roles, &self.etc_root).map_err(|source| {
                ContainerError::Device {
                    name: name.clone(),
                    source,
                }
            })?;
        for v in &cfg.volumes {
            match &v.source {
                VolumeSource::Named(n) => {
                    crate::util::fs::create_dir_all(&self.volumes_dir().join(n))?
                }
                VolumeSource::Bind(p) if !p.exists() => {
                    return Err(ContainerError::BadSpec(format!(
                        "bind mount source `{}` does not exist on this robot",
                        p.display()
                    )));
                }
                VolumeSource::Bind(_) => {}
            }
        }
        let hostname = cfg.hostname.clone().unwrap_or_else(|| {
            if cfg.network == NetworkMode::Host {
                host_hostname()
            } else {
                name.clone()
            }
        });
        // Checked again at each start: the image may have been re-imported since create.
        let cwd = spec::working_dir(cfg, image)?;
        self.write_etc(bundle, &hostname, cfg.network)?;
        let spec = spec::runtime_spec(&spec::SpecInput {
            config: cfg,
            image,
            rootfs,
            bundle,
            user,
            devices: &devices,
            volumes_dir: &self.volumes_dir(),
            hostname,
            cwd,
        })?;
        let spec_json = serde_json::to_vec_pretty(&spec).expect("a spec serialises");
        atomic_write(&bundle.join("config.json"), &spec_json)?;
        let shim = shim::ShimConfig {
            id: name.clone(),
            runtime: self.runtime.command().to_path_buf(),
            runtime_root: self.runtime.root().to_path_buf(),
            bundle: bundle.to_path_buf(),
            logs: self.logs_dir(name),
            log: cfg.log,
            network: (cfg.network == NetworkMode::Bridge).then(|| shim::ShimNetwork {
                state_dir: self.root.join("net"),
                ports: cfg.ports.clone(),
            }),
        };
        write_json(&bundle.join("shim.json"), &shim)?;
        let _ = fs::remove_file(self.dir(name).join("exit.json"));
        self.spawn_shim(name, &devices)
    }

    fn resolve_user(
        &self,
        name: &str,
        rootfs: &Path,
        spec: &str,
    ) -> Result<ExecUser, ContainerError> {
        let err = |reason: String| ContainerError::User {
            name: name.to_string(),
            user: spec.to_string(),
            reason,
        };
        let passwd = read_in_root(Some(rootfs), "/etc/passwd").map_err(|e| err(e.to_string()))?;
        let group = read_in_root(Some(rootfs), "/etc/group").map_err(|e| err(e.to_string()))?;
        resolve_user(spec, passwd.as_deref(), group.as_deref()).map_err(err)
    }

    /// `hosts`, `hostname` and `resolv.conf` for the container: the robot's own on the host
    /// network (so names resolve as on the robot), generated ones otherwise.
    fn write_etc(
        &self,
        bundle: &Path,
        hostname: &str,
        net: NetworkMode,
    ) -> Result<(), ContainerError> {
        let host_file = |p: &str| fs::read(p).unwrap_or_default();
        let hosts = if net == NetworkMode::Host {
            host_file("/etc/hosts")
        } else {
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
            )
            .into_bytes()
        };
        atomic_write(&bundle.join("hosts"), &hosts)?;
        atomic_write(&bundle.join("hostname"), format!("{hostname}\n").as_bytes())?;
        let mut resolv = host_file("/etc/resolv.conf");
        if net != NetworkMode::Host {
            // A resolver on the robot's loopback is not reachable from the container's.
            let text = String::from_utf8_lossy(&resolv)
                .lines()
                .filter(|l| {
                    !(l.trim_start().starts_with("nameserver")
                        && l.split_whitespace()
                            .nth(1)
                            .is_some_and(|a| a.starts_with("127.")))
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>();
            resolv = text.into_bytes();
        }
        atomic_write(&bundle.join("resolv.conf"), &resolv)?;
        Ok(())
    }

    fn spawn_shim(
        &self,
        name: &str,
        devices: &ResolvedDevices,
    ) -> Result<(u32, Launched), ContainerError> {
        let dir = self.dir(name);
        let log_path = dir.join("shim.log");
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .at("open", &log_path)?;
        for w in &devices.warnings {
            let _ = std::io::Write::write_all(&mut &shim_log, format!("warning: {w}\n").as_bytes());
        }
        let mut cmd = Command::new(&self.exe);
        cmd.arg("shim").arg(&dir);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(shim_log));
        // A session of its own: the daemon's signals and its death do not reach the shim.
        // SAFETY: setsid is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ContainerError::Start {
            name: name.to_string(),
            message: format!("cannot run `{} shim`: {source}", self.exe.display()),
        })?;
        let shim_pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(SHIM_START_TIMEOUT).unwrap_or_default();
        let reply: Option<shim::ShimReply> = serde_json::from_str(line.trim()).ok();
        match reply {
            Some(shim::ShimReply::Started { pid, ip }) => {
                self.inner().children.insert(name.to_string(), child);
                Ok((shim_pid, Launched { pid, ip }))
            }
            Some(shim::ShimReply::Failed { error }) => {
                let _ = child.wait();
                Err(ContainerError::Start {
                    name: name.to_string(),
                    message: error,
                })
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                Err(ContainerError::Start {
                    name: name.to_string(),
                    message: format!(
                        "the shim gave no answer{}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ": {}",
                                tail.into_iter().rev().collect::<Vec<_>>().join("; ")
                            )
                        }
                    ),
                })
            }
        }
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
            let signal = record.stop_signal.clone().unwrap_or_else(|| "TERM".into());
            let signal = signal.trim_start_matches("SIG").to_string();
            let _ = self.runtime.kill(name, &signal);
        }
        if !self.wait_exit(name, timeout) {
            let _ = self.runtime.kill(name, "KILL");
            self.wait_exit(name, Duration::from_secs(10));
        }
        self.supervise_one(name)?;
        self.info(name)
    }

    /// Sends `signal` to the container's process.
    pub fn kill(&self, name: &str, signal: &str) -> Result<(), ContainerError> {
        self.record(name)?;
        let state = self.state(name)?;
        if state.status != Status::Running {
            return Err(ContainerError::State {
                name: name.into(),
                state: state.status.to_string(),
                hint: "only a running container takes signals",
            });
        }
        Ok(self.runtime.kill(name, signal.trim_start_matches("SIG"))?)
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
        if state.shim_pid.is_some_and(|p| shim_alive(p, &dir)) {
            return true;
        }
        if dir.join("exit.json").exists() {
            return false;
        }
        matches!(self.runtime.state(name), Ok(Some(s)) if s.status == "running" || s.status == "created")
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
            let _ = net.detach(name, None, &record.config.ports);
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
        self.runtime.delete(name)?;
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
        ]
        .map(String::from)
        .to_vec();
        skip.extend(record.config.volumes.iter().map(|v| v.target.clone()));
        Ok(diff::diff(&self.dir(name).join("upper"), &lower, &skip)?)
    }

    /// The daemon's first pass: adopts what an earlier daemon left running and, as Docker
    /// does when its daemon starts, brings back `restart: always` containers that were stopped
    /// by hand (`unless-stopped` ones stay stopped).
    pub fn resume(&self) -> Vec<String> {
        for name in self.names().unwrap_or_default() {
            let _g = self.lock();
            let (Ok(record), Ok(mut state)) = (self.record(&name), self.state(&name)) else {
                continue;
            };
            if record.config.restart == RestartPolicy::Always
                && state.stopped_by_user
                && state.status == Status::Exited
            {
                state.stopped_by_user = false;
                if let Err(e) = self.save_state(&name, &state) {
                    return vec![format!("{name}: {e}")];
                }
            }
        }
        self.supervise()
    }

    /// Notices exited containers and applies restart policies; the daemon calls this a few
    /// times a second.
    pub fn supervise(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let Ok(names) = self.names() else {
            return notes;
        };
        for name in names {
            match self.supervise_one(&name) {
                Ok(Some(note)) => notes.push(note),
                Ok(None) => {}
                // Removed meanwhile.
                Err(ContainerError::NotFound(_)) => {}
                Err(e) => notes.push(format!("{name}: {e}")),
            }
        }
        notes
    }

    fn supervise_one(&self, name: &str) -> Result<Option<String>, ContainerError> {
        let _g = self.lock();
        let record = self.record(name)?;
        let mut state = self.state(name)?;
        let now = Instant::now();
        if state.status == Status::Running {
            if self.alive(name) {
                return Ok(None);
            }
            let exit: Option<ExitRecord> = read_json(&self.dir(name).join("exit.json")).ok();
            // The shim deletes the runtime's container; without a shim (killed, or power lost)
            // it is ours to delete.
            let _ = self.runtime.delete(name);
            let _ = unmount(&self.dir(name).join("rootfs"));
            state.status = Status::Exited;
            state.pid = None;
            state.exit_code = exit.as_ref().map(|e| e.code);
            state.finished_at = Some(
                exit.map(|e| e.finished_at)
                    .unwrap_or_else(|| crate::util::time::rfc3339(crate::util::time::now_secs())),
            );
            self.save_state(name, &state)?;
            if self.should_restart(&record.config, &state) {
                let ran = state
                    .started_at
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(|t| crate::util::time::now_secs() - t)
                    .unwrap_or(0);
                let delay = if ran as u64 >= BACKOFF_RESET.as_secs() {
                    Duration::ZERO
                } else {
                    backoff(state.restart_count)
                };
                self.inner()
                    .restart_at
                    .insert(name.to_string(), now + delay);
            } else if record.config.auto_remove {
                drop(_g);
                self.remove(name, true)?;
                return Ok(Some(format!("{name}: exited, removed")));
            }
            return Ok(Some(format!(
                "{name}: exited with {}",
                state
                    .exit_code
                    .map_or("an unknown status".to_string(), |c| format!("code {c}"))
            )));
        }
        let mut due = self.inner().restart_at.get(name).copied();
        // Back-offs live in this process: a restart an earlier daemon had scheduled (or a
        // policy restart whose start failed) is scheduled again here.
        if due.is_none()
            && state.status == Status::Exited
            && self.should_restart(&record.config, &state)
        {
            let at = now + backoff(state.restart_count);
            self.inner().restart_at.insert(name.to_string(), at);
            due = Some(at);
        }
        if let Some(at) = due
            && at <= now
        {
            self.inner().restart_at.remove(name);
            if state.status == Status::Exited && self.should_restart(&record.config, &state) {
                return match self.start_locked(name, true) {
                    Ok(()) => Ok(Some(format!("{name}: restarted by its policy"))),
                    Err(e) => {
                        // Try again later, backing off further.
                        let mut s = self.state(name)?;
                        s.restart_count += 1;
                        self.save_state(name, &s)?;
                        self.inner()
                            .restart_at
                            .insert(name.to_string(), now + backoff(s.restart_count));
                        Ok(Some(format!("{name}: restart failed: {e}")))
                    }
                };
            }
        }
        Ok(None)
    }

    fn should_restart(&self, cfg: &ContainerConfig, state: &State) -> bool {
        if state.stopped_by_user {
            return false;
        }
        match cfg.restart {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                state.exit_code != Some(0) && max_retries.is_none_or(|m| state.restart_count < m)
            }
        }
    }

    /// Named volumes and the containers using them.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, ContainerError> {
        let dir = self.volumes_dir();
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.names()? {
            if let Ok(r) = self.record(&name) {
                for v in &r.config.volumes {
                    if let VolumeSource::Named(n) = &v.source {
                        users.entry(n.to_string()).or_default().push(name.clone());
                    }
                }
            }
        }
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at("list", &dir)? {
            let e = e.at("list", &dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            out.push(VolumeInfo {
                used_by: users.remove(&name).unwrap_or_default(),
                path: e.path(),
                name,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates a named volume (no-op when it exists).
    pub fn volume_create(&self, name: &str) -> Result<VolumeInfo, ContainerError> {
        check_name(name)?;
        let p = self.volumes_dir().join(name);
        crate::util::fs::create_dir_all(&p)?;
        Ok(VolumeInfo {
            name: name.to_string(),
            path: p,
            used_by: Vec::new(),
        })
    }

    /// Deletes a named volume and its data; refused while a container uses it.
    pub fn volume_remove(&self, name: &str) -> Result<(), ContainerError> {
        check_name(name)?;
        let _g = self.lock();
        let v = self
            .volumes()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ContainerError::Volume {
                name: name.into(),
                reason: "no such volume".into(),
            })?;
        if !v.used_by.is_empty() {
            return Err(ContainerError::Volume {
                name: name.into(),
                reason: format!("in use by {}: remove those first", v.used_by.join(", ")),
            });
        }
        fs::remove_dir_all(&v.path).at("remove", &v.path)?;
        Ok(())
    }

    /// The image config of a container (health checks read it).
    pub fn container_image(&self, name: &str) -> Result<ImageConfig, ContainerError> {
        let r = self.record(name)?;
        self.image_config(&r.manifest)
    }
}

struct Launched {
    pid: u32,
    ip: Option<String>,
}

/// Refuses an image this robot cannot execute: another OS, or a foreign CPU without QEMU
/// registered with the `F` flag (the emulator must be opened at registration, since the
/// container's root has none).
fn check_platform(image: &str, platform: &Platform) -> Result<(), ContainerError> {
    let err = |reason: String| ContainerError::Platform {
        image: image.to_string(),
        platform: platform.to_string(),
        reason,
    };
    if platform.os != "linux" {
        return Err(err("only linux images run here".into()));
    }
    if crate::binfmt::is_native(platform) {
        return Ok(());
    }
    crate::binfmt::check(platform)
        .map(drop)
        .map_err(|e| err(e.to_string()))
}

/// The robot's hostname.
fn host_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
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
