//! The virtual Duckiebot (`dts sim`): a robot on this machine, reached exactly like a real one —
//! through sshd and `dt-agent serve --stdio` — with no sim-only code path (laptop only, as root).
//!
//! Owns: the sim's records under `$DTS_HOME/sims/NAME/` ([`SimInfo`] in `sim.json`), its network
//! (a veth from the `dts0` bridge into the netns `dts-sim-NAME`, [`net`]), its root file system
//! ([`rootfs`], its avahi in [`avahi`]), its processes (a holder per sim, [`init`]), its host
//! key line in `$DTS_HOME/known_hosts` and the key dts makes for its sims
//! (`$DTS_HOME/sim_key`, both in `keys`), and the check that this machine has every program a
//! sim runs ([`tools`]). Does not own: what runs on the robot (`dt-agent`), how robots are
//! reached (`ssh`), printing (`cli::sim`).
//!
//! ```text
//! host: bridge dts0 10.213.0.1/24 ── veth sim-NAME ══ eth0 10.213.0.N/24 (netns dts-sim-NAME)
//!       holder `dts sim __init DIR` (own session; sim.json: holder_pid)
//!         └── pid 1 of a new pid namespace `dts sim __pid1 DIR` (init_pid): new mount + UTS
//!             namespaces, hostname NAME, pivot_root into DIR/root, then supervises
//!               ├── /usr/sbin/avahi-daemon          (a robot's mDNS: DT::PRESENCE, …, [`avahi`])
//!               ├── /usr/sbin/sshd -D -e            (ListenAddress 10.213.0.N:22)
//!               └── /usr/local/bin/dt-agent daemon  (DT::AGENT adverts inside the netns)
//! ```
//!
//! `up` returns once `sudo -n dt-agent status --json` answers over SSH as `duckie`; `down` kills
//! the holder (pid 1 follows through its parent-death signal, and the whole pid namespace with
//! it), deletes the netns and veth (and the bridge when no port is left), the known_hosts line
//! and the directory. Robot names are looked up here ([`resolve`]) before mDNS.
//!
//! A sim of another CPU (`--arch arm64|armhf`) is that robot as far as `dts` can tell: its agent
//! is the cross-built binary ([`crate::agents`]), run by the kernel through QEMU user emulation
//! (binfmt_misc, F flag), so `status` reports the robot's arch and deploys ship that arch's
//! images. avahi-daemon, sshd, sudo, runc and the CNI plugins stay the host's native ones
//! (namespaces are made natively); only the agent and the containers' own binaries are
//! emulated.

pub mod avahi;
pub mod init;
mod keys;
pub mod memory;
pub mod net;
pub mod rootfs;
pub mod tools;

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::oci::Platform;
use crate::profile::RobotProfile;
use crate::profile::robot::DeviceKind;
use crate::ssh::{Session, SshOptions, Target};

/// `sims/NAME/sim.json`.
const SIM_JSON: &str = "sim.json";
/// The directory of every sim under `$DTS_HOME`.
const SIMS_DIR: &str = "sims";
/// The key dts makes for its sims, under `$DTS_HOME`.
const SIM_KEY: &str = "sim_key";
/// Marks the `known_hosts` lines dts wrote for a sim: `… dts-sim:NAME`.
const KNOWN_HOSTS_MARK: &str = "dts-sim:";
/// Prefix of a sim's network namespace.
pub const NETNS_PREFIX: &str = "dts-sim-";
/// How long `up` waits for the agent to answer over SSH.
const AGENT_WAIT: Duration = Duration::from_secs(60);
/// The login on a sim, as on a real Duckiebot.
pub const SIM_USER: &str = "duckie";

/// What `sim.json` records about one sim. `ls --json` prints `name`, `address`, `arch`,
/// `host_interface` (and a few more).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimInfo {
    /// Robot name: hostname inside, and what `dts duckiebot … NAME` takes.
    pub name: String,
    /// Its address on the bridge.
    pub address: Ipv4Addr,
    /// Platform of its agent (`linux/amd64`).
    pub arch: String,
    /// Host side of its veth (for counters and `tc`).
    pub host_interface: String,
    /// Duckietown configuration (`virtual`, `DB21J`…).
    pub configuration: String,
    /// The bridge its veth is a port of.
    pub bridge: String,
    /// The bridge's subnet (`10.213.0.0/24`).
    pub subnet: String,
    /// Its network namespace (`dts-sim-NAME`).
    pub netns: String,
    /// `--link-rate`, when given.
    pub link_rate: Option<String>,
    /// The holder process (host pid), leader of its own session.
    pub holder_pid: Option<i32>,
    /// Pid 1 of the sim's pid namespace, as the host sees it.
    pub init_pid: Option<i32>,
    /// `$DTS_HOME/sims/NAME`.
    pub dir: PathBuf,
    /// The root file system (`DIR/root`).
    pub root: PathBuf,
    /// The host key's public half, on the host.
    pub host_key: PathBuf,
    /// The `dt-agent` binary bind-mounted at `/usr/local/bin/dt-agent`.
    pub agent: PathBuf,
    /// Device nodes made in its `/dev`.
    pub devices: Vec<DevNode>,
    /// Host directories bind-mounted read-only at the same place (a non-merged `/bin`, `/opt/cni`).
    pub ro_binds: Vec<PathBuf>,
    /// `--memory`, when given: the limit of its memory cgroup.
    #[serde(default)]
    pub memory: Option<u64>,
    /// That cgroup's directory ([`memory`]).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// One device node a sim's `/dev` gets: a role node with a real driver's numbers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevNode {
    /// Absolute path inside the sim.
    pub path: String,
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Group owning it (`i2c`), from the role.
    pub group: Option<String>,
}

impl SimInfo {
    /// Whether its holder process is alive.
    pub fn is_running(&self) -> bool {
        self.holder_pid
            .is_some_and(|p| init::is_our_process(p, &self.dir))
    }

    /// Where to SSH: `duckie@ADDRESS:22`.
    pub fn target(&self) -> Target {
        Target {
            user: Some(SIM_USER.to_owned()),
            host: self.address.to_string(),
            port: Some(22),
        }
    }
}

/// Why a sim command failed. Variants are what callers branch on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// Sims need namespaces, mounts and links.
    #[error("`dts sim` needs root (network namespaces, mounts, device nodes); run it with sudo")]
    NotRoot,
    /// The name is not a hostname.
    #[error(
        "`{0}` is not a robot name: letters, digits and `-`, at most 40, starting with a letter"
    )]
    BadName(String),
    /// No robot of that arch exists (dt-agent is built for amd64, arm64 and armhf only).
    #[error(
        "no virtual robot can be {arch}: dt-agent is built for linux/amd64, linux/arm64 and \
         linux/arm/v7 (this machine is {host})"
    )]
    UnsupportedArch {
        /// What was asked for.
        arch: String,
        /// What this machine runs.
        host: String,
    },
    /// The arch is supported but no binary of the agent for it is on this machine.
    #[error(transparent)]
    NoAgentBinary(Box<crate::agents::AgentBinaryError>),
    /// A foreign-arch sim needs QEMU user emulation registered in binfmt_misc.
    #[error("a {arch} virtual robot runs its agent under QEMU: {source}")]
    NoEmulation {
        /// The sim's arch.
        arch: String,
        /// Why the kernel cannot run its binaries.
        #[source]
        source: Box<crate::binfmt::BinfmtError>,
    },
    /// Programs the sim runs are not installed on this machine.
    #[error(
        "virtual robot `{name}` cannot start: this machine lacks {}; install {} (as root): `{}`",
        .missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        if .missing.len() == 1 { "it" } else { "them" },
        tools::apt_line(.missing)
    )]
    MissingPrograms {
        /// The sim's name.
        name: String,
        /// What is missing, and its package.
        missing: Vec<tools::Missing>,
    },
    /// `--link-rate` is not a tc rate.
    #[error("bad link rate `{0}`: expected a rate like 20mbit, 500kbit, 1gbit")]
    BadRate(String),
    /// `--memory` cannot be given.
    #[error("{0}")]
    BadMemory(String),
    /// `--configuration` names no shipped profile.
    #[error("{0}")]
    BadConfiguration(String),
    /// `DTS_SIM_SUBNET` / `DTS_SIM_BRIDGE` are unusable.
    #[error("{0}")]
    BadNetConfig(String),
    /// The sim is up already.
    #[error(
        "virtual robot `{name}` is already running (address {address}); `dts sim down {name}` first"
    )]
    AlreadyRunning {
        /// Its name.
        name: String,
        /// Its address.
        address: Ipv4Addr,
    },
    /// There is no sim of that name.
    #[error("no virtual robot `{0}` (see `dts sim ls`)")]
    NotFound(String),
    /// Every address of the subnet is taken.
    #[error("no free address left in {0}")]
    SubnetFull(String),
    /// The subnet is routed elsewhere on this machine.
    #[error(
        "subnet {subnet} overlaps `{route}` already on this machine; choose another with \
         DTS_SIM_SUBNET=a.b.c.0/24"
    )]
    SubnetInUse {
        /// Ours.
        subnet: String,
        /// The host's route.
        route: String,
    },
    /// A name we would create is taken by something of the host's.
    #[error("interface `{0}` exists already and is not the sims' bridge; set DTS_SIM_BRIDGE")]
    LinkTaken(String),
    /// The `dt-agent` binary is missing.
    #[error(
        "no dt-agent next to dts at `{}`; build it (`cargo build --bins`) or install it there",
        .0.display()
    )]
    NoAgent(PathBuf),
    /// A tool failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// A file operation failed.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The sim did not come up.
    #[error("virtual robot `{name}` did not come up: {reason}{}", logs_text(.logs))]
    NotUp {
        /// Its name.
        name: String,
        /// What was last seen.
        reason: String,
        /// Tails of its logs: (file, text).
        logs: Vec<(String, String)>,
    },
    /// Taking it down left something behind.
    #[error("removing virtual robot `{name}` left: {}", .left.join("; "))]
    DownIncomplete {
        /// Its name.
        name: String,
        /// What could not be removed.
        left: Vec<String>,
    },
}

fn logs_text(logs: &[(String, String)]) -> String {
    let mut s = String::new();
    for (f, t) in logs {
        s.push_str(&format!("\n--- {f} (last lines) ---\n{}", t.trim_end()));
    }
    s
}

impl SimError {
    /// Whether the user's input is at fault (exit 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SimError::BadName(_)
                | SimError::UnsupportedArch { .. }
                | SimError::BadRate(_)
                | SimError::BadMemory(_)
                | SimError::BadNetConfig(_)
                | SimError::BadConfiguration(_)
        )
    }
}

pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SimError {
    let path = path.to_owned();
    move |source| SimError::Io {
        action,
        path,
        source,
    }
}

/// A robot name: one DNS label, short enough for `sim-NAME` and the netns name.
pub fn check_name(name: &str) -> Result<(), SimError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(SimError::BadName(name.to_owned()))
    }
}

/// `$DTS_HOME/sims`.
pub fn sims_dir(dts_home: &Path) -> PathBuf {
    dts_home.join(SIMS_DIR)
}

/// `$DTS_HOME/sim_key`: the private key dts authorizes on every sim.
pub fn sim_key(dts_home: &Path) -> PathBuf {
    dts_home.join(SIM_KEY)
}

/// The sim named `name` from `$DTS_HOME/sims` (see [`resolve_in`]).
pub fn resolve(name: &str) -> Option<SimInfo> {
    resolve_in(&crate::paths::dts_home(), name)
}

/// The sim named `name` under `dts_home`, when `sim.json` exists and reads; deploy code looks
/// here before mDNS. The sim may be dead ([`SimInfo::is_running`]).
pub fn resolve_in(dts_home: &Path, name: &str) -> Option<SimInfo> {
    check_name(name).ok()?;
    let text = fs::read(sims_dir(dts_home).join(name).join(SIM_JSON)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The key to authenticate to sim `name` with, when `name` is a sim: add it to
/// [`SshOptions::identities`].
pub fn identity_for(name: &str) -> Option<PathBuf> {
    let home = crate::paths::dts_home();
    resolve_in(&home, name)?;
    let key = sim_key(&home);
    key.exists().then_some(key)
}

/// SSH options that reach a sim with nothing of the user's environment: `home` for `~`, the
/// sim key, `$DTS_HOME/known_hosts` only.
pub fn ssh_options(dts_home: &Path, home: &Path) -> SshOptions {
    let mut o = SshOptions::with_home(home);
    o.config_file = Some(dts_home.join("no-ssh-config"));
    o.default_identities = false;
    o.identities = vec![sim_key(dts_home)];
    o.known_hosts = Some(dts_home.join("known_hosts"));
    o.connect_timeout = Duration::from_secs(5);
    o
}

/// Every sim recorded under `dts_home`, by name.
pub fn list(dts_home: &Path) -> Vec<SimInfo> {
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir(sims_dir(dts_home)) else {
        return v;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = resolve_in(dts_home, &name) {
            v.push(s);
        }
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// `dts sim up` arguments.
#[derive(Clone, Debug)]
pub struct UpArgs {
    /// Robot name.
    pub name: String,
    /// Agent platform.
    pub arch: Platform,
    /// Duckietown configuration.
    pub configuration: String,
    /// `tc` rate for both ends of its link.
    pub link_rate: Option<String>,
    /// Its memory size (a memory cgroup's limit), when given.
    pub memory: Option<u64>,
}

/// An exclusive lock on `$DTS_HOME/sims/.lock` (address choice, known_hosts edits).
struct Lock(fs::File);

impl Lock {
    fn take(dts_home: &Path) -> Result<Lock, SimError> {
        let dir = sims_dir(dts_home);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let p = dir.join(".lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io("open", &p))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io("lock", &p)(std::io::Error::last_os_error()));
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn require_root() -> Result<(), SimError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(SimError::NotRoot);
    }
    Ok(())
}

/// The `dt-agent` for `arch`. For this machine's own arch, the one next to the running `dts`
/// comes first: it is built by the same cargo run, so it always speaks the same wire protocol
/// (and need not be static: it runs on this host). Otherwise, or when it is missing, the
/// cross-built binary [`crate::agents::find_agent`] finds; a foreign one runs under QEMU user
/// emulation, so binfmt_misc must have an enabled entry with the F flag for it (registered
/// here when nothing is, as `dts devel build` does).
fn agent_for(arch: &Platform) -> Result<PathBuf, SimError> {
    use crate::agents::{AgentArch, find_agent};
    let host = Platform::host();
    let Some(agent_arch) = AgentArch::from_platform(arch) else {
        return Err(SimError::UnsupportedArch {
            arch: arch.to_string(),
            host: host.to_string(),
        });
    };
    if arch.matches(&host) {
        let exe = std::env::current_exe().map_err(io("find", Path::new("/proc/self/exe")))?;
        let agent = exe.with_file_name("dt-agent");
        if agent.is_file() {
            return Ok(agent);
        }
        return match find_agent(agent_arch) {
            Ok(found) => Ok(found.path),
            Err(crate::agents::AgentBinaryError::NoBinary { .. }) => Err(SimError::NoAgent(agent)),
            Err(e) => Err(SimError::NoAgentBinary(Box::new(e))),
        };
    }
    let found = find_agent(agent_arch).map_err(|e| SimError::NoAgentBinary(Box::new(e)))?;
    crate::binfmt::ensure(arch).map_err(|source| SimError::NoEmulation {
        arch: arch.to_string(),
        source: Box::new(source),
    })?;
    Ok(found.path)
}

/// What `up` reports.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    /// The sim.
    pub sim: SimInfo,
    /// Whether a dead sim of that name was cleaned away first.
    pub replaced_dead: bool,
    /// Role nodes that got no device node (no driver numbers known).
    pub skipped_nodes: Vec<String>,
    /// `dt-agent status --json` as it answered.
    pub status: serde_json::Value,
}

/// `dts sim up`: makes the sim and returns once its agent answers over SSH. On failure,
/// whatever was made is removed again and the error carries the tails of its logs.
pub fn up(dts_home: &Path, args: &UpArgs) -> Result<UpReport, SimError> {
    check_name(&args.name)?;
    let agent = agent_for(&args.arch)?;
    let profile = RobotProfile::builtin(&args.configuration).map_err(|e| {
        SimError::BadConfiguration(format!("--configuration {}: {e}", args.configuration))
    })?;
    if let Some(r) = &args.link_rate {
        net::parse_rate(r).ok_or_else(|| SimError::BadRate(r.clone()))?;
    }
    if let Some(m) = args.memory {
        memory::check(m)?;
    }
    let netcfg = net::NetConfig::from_env()?;
    require_root()?;
    // Before anything is made: a missing sudo or sshd would otherwise show only as an agent
    // that never answers, a minute later.
    let missing = tools::missing(args.link_rate.is_some());
    if !missing.is_empty() {
        return Err(SimError::MissingPrograms {
            name: args.name.clone(),
            missing,
        });
    }

    let lock = Lock::take(dts_home)?;
    let mut replaced_dead = false;
    if let Some(old) = resolve_in(dts_home, &args.name) {
        if old.is_running() {
            return Err(SimError::AlreadyRunning {
                name: old.name,
                address: old.address,
            });
        }
        replaced_dead = true;
    }
    let dir = sims_dir(dts_home).join(&args.name);
    if replaced_dead || dir.exists() || net::netns_exists(&netns_name(&args.name)) {
        down_locked(dts_home, &args.name, &netcfg)?;
    }

    let host_interface = net::host_iface_name(&args.name);
    if net::link_exists(&host_interface) {
        return Err(SimError::LinkTaken(host_interface));
    }
    let taken: Vec<Ipv4Addr> = list(dts_home)
        .iter()
        .filter(|s| s.bridge == netcfg.bridge)
        .map(|s| s.address)
        .collect();
    let address = netcfg
        .free_address(&taken)
        .ok_or_else(|| SimError::SubnetFull(netcfg.cidr()))?;
    let (devices, skipped_nodes) = rootfs::device_nodes(&profile);
    let root = dir.join("root");
    let mut info = SimInfo {
        name: args.name.clone(),
        address,
        arch: args.arch.to_string(),
        host_interface,
        configuration: profile.configuration.clone(),
        bridge: netcfg.bridge.clone(),
        subnet: netcfg.cidr(),
        netns: netns_name(&args.name),
        link_rate: args.link_rate.clone(),
        holder_pid: None,
        init_pid: None,
        host_key: root.join("etc/ssh/ssh_host_ed25519_key.pub"),
        root,
        dir: dir.clone(),
        agent,
        devices,
        ro_binds: rootfs::ro_binds(),
        memory: args.memory,
        cgroup: None,
    };
    // Recorded first, so a half-made sim can be taken down.
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    save(&info)?;

    let made = (|| -> Result<(), SimError> {
        net::ensure_bridge(&netcfg)?;
        net::make_link(&info, &netcfg)?;
        if let Some(rate) = &info.link_rate {
            net::set_rate(&info.host_interface, &info.netns, rate)?;
        }
        let key = keys::ensure_sim_key(dts_home)?;
        let mut authorized = keys::user_public_keys();
        authorized.push(keys::read_pub(&key.with_extension("pub"))?);
        rootfs::build(&info, &profile, &authorized.join(""))?;
        keys::record(dts_home, &info)?;
        if let Some(bytes) = info.memory {
            info.cgroup = Some(memory::make(&info.name, bytes)?);
            save(&info)?;
        }
        init::spawn_holder(&mut info)?;
        save(&info)?;
        Ok(())
    })();
    drop(lock);
    let status = made.and_then(|()| wait_for_agent(dts_home, &info));
    match status {
        Ok(status) => Ok(UpReport {
            sim: info,
            replaced_dead,
            skipped_nodes,
            status,
        }),
        Err(e) => {
            let e = with_logs(e, &info);
            let _ = down(dts_home, &info.name);
            Err(e)
        }
    }
}

fn netns_name(name: &str) -> String {
    format!("{NETNS_PREFIX}{name}")
}

fn save(info: &SimInfo) -> Result<(), SimError> {
    let p = info.dir.join(SIM_JSON);
    let tmp = info.dir.join(".sim.json.tmp");
    let text = serde_json::to_vec_pretty(info).expect("SimInfo serialises");
    fs::write(&tmp, text).map_err(io("write", &tmp))?;
    fs::rename(&tmp, &p).map_err(io("rename into place", &p))
}

/// Turns a failure into [`SimError::NotUp`] carrying the tails of the sim's logs.
fn with_logs(e: SimError, info: &SimInfo) -> SimError {
    let mut logs = Vec::new();
    for p in [
        info.dir.join("sim.log"),
        info.root.join("var/log/avahi-daemon.log"),
        info.root.join("var/log/sshd.log"),
        info.root.join("var/log/dt-agent.log"),
    ] {
        if let Ok(t) = fs::read_to_string(&p) {
            let lines: Vec<&str> = t.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            if !tail.is_empty() {
                logs.push((p.display().to_string(), tail));
            }
        }
    }
    match e {
        SimError::NotUp { name, reason, .. } => SimError::NotUp { name, reason, logs },
        other if logs.is_empty() => other,
        other => SimError::NotUp {
            name: info.name.clone(),
            reason: other.to_string(),
            logs,
        },
    }
}

/// Polls `sudo -n dt-agent status --json` over SSH until it answers.
fn wait_for_agent(dts_home: &Path, info: &SimInfo) -> Result<serde_json::Value, SimError> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let opts = ssh_options(dts_home, &home);
    let target = info.target();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start a runtime for", Path::new("ssh")))?;
    let deadline = Instant::now() + AGENT_WAIT;
    let mut last = String::from("nothing tried yet");
    loop {
        if !info.is_running() {
            return Err(SimError::NotUp {
                name: info.name.clone(),
                reason: format!("its holder process exited ({last})"),
                logs: Vec::new(),
            });
        }
        let attempt = rt.block_on(async {
            let s = Session::connect(&target, &opts)
                .await
                .map_err(|e| e.to_string())?;
            let out = s
                .run("sudo -n dt-agent status --json")
                .await
                .map_err(|e| e.to_string())?;
            let _ = s.close().await;
            if !out.status.success() {
                return Err(format!(
                    "`sudo -n dt-agent status --json`: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map_err(|e| format!("`dt-agent status --json` printed no JSON: {e}"))
        });
        match attempt {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(SimError::NotUp {
                name: info.name.clone(),
                reason: format!(
                    "its agent did not answer over SSH within {}s; last: {last}",
                    AGENT_WAIT.as_secs()
                ),
                logs: Vec::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What `down` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    /// Processes killed.
    pub processes: usize,
    /// Whether the netns was there.
    pub netns: bool,
    /// Whether the veth was there.
    pub link: bool,
    /// Whether the bridge went too (no port left).
    pub bridge: bool,
    /// Whether a known_hosts line went.
    pub known_hosts: bool,
    /// Whether the directory was there.
    pub dir: bool,
}

/// `dts sim down`: removes every process, namespace, link, mount, file and known_hosts line
/// of sim `name`, also of a half-made one.
pub fn down(dts_home: &Path, name: &str) -> Result<DownReport, SimError> {
    check_name(name)?;
    require_root()?;
    let netcfg = net::NetConfig::from_env()?;
    let _lock = Lock::take(dts_home)?;
    down_locked(dts_home, name, &netcfg)
}

fn down_locked(
    dts_home: &Path,
    name: &str,
    netcfg: &net::NetConfig,
) -> Result<DownReport, SimError> {
    let dir = sims_dir(dts_home).join(name);
    let info = resolve_in(dts_home, name);
    let netns = netns_name(name);
    let host_iface = info
        .as_ref()
        .map(|i| i.host_interface.clone())
        .unwrap_or_else(|| net::host_iface_name(name));
    let bridge = info
        .as_ref()
        .map(|i| i.bridge.clone())
        .unwrap_or_else(|| netcfg.bridge.clone());
    let mut r = DownReport {
        dir: dir.exists(),
        netns: net::netns_exists(&netns),
        link: net::link_exists(&host_iface),
        ..DownReport::default()
    };
    let mut left = Vec::new();

    // Processes: the holder (pid 1 follows it), pid 1, anything else in the netns.
    let mut pids = init::processes_of(&dir);
    if r.netns {
        pids.extend(net::netns_pids(&netns));
    }
    pids.sort_unstable();
    pids.dedup();
    r.processes = pids.len();
    for p in &pids {
        // SAFETY: kill with a pid we found for this sim.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| init::alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in pids.iter().filter(|p| init::alive(**p)) {
        left.push(format!("process {p}"));
    }
    // Mounts never reach the host's namespace (the sim's are private); sweep anyway.
    for m in init::mounts_under(&dir) {
        if let Err(e) = init::umount_detach(&m) {
            left.push(format!("mount {}: {e}", m.display()));
        }
    }
    // The veth first: deleting the netns takes its peer with it, asynchronously.
    if net::link_exists(&host_iface)
        && let Err(e) = net::run_tool("ip", &["link", "del", &host_iface])
        && net::link_exists(&host_iface)
    {
        left.push(format!("link {host_iface}: {e}"));
    }
    if r.netns
        && let Err(e) = net::run_tool("ip", &["netns", "del", &netns])
    {
        left.push(format!("netns {netns}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while net::link_exists(&host_iface) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if net::link_exists(&host_iface) {
        left.push(format!("link {host_iface} (still there)"));
    }
    if let Some(cg) = info.as_ref().and_then(|i| i.cgroup.as_ref())
        && let Err(e) = memory::remove(cg)
    {
        left.push(e);
    }
    let others_on_bridge = list(dts_home)
        .iter()
        .any(|s| s.name != name && s.bridge == bridge);
    if !others_on_bridge {
        match net::remove_bridge_if_unused(&bridge) {
            Ok(gone) => r.bridge = gone,
            Err(e) => left.push(format!("bridge {bridge}: {e}")),
        }
    }
    match keys::forget(dts_home, name) {
        Ok(k) => r.known_hosts = k,
        Err(e) => left.push(e.to_string()),
    }
    if dir.exists() {
        if !init::mounts_under(&dir).is_empty() {
            left.push(format!("{} (still has mounts)", dir.display()));
        } else if let Err(e) = fs::remove_dir_all(&dir) {
            left.push(format!("{}: {e}", dir.display()));
        }
    }
    if !left.is_empty() {
        return Err(SimError::DownIncomplete {
            name: name.to_owned(),
            left,
        });
    }
    if !(r.dir || r.netns || r.link || r.known_hosts || r.processes > 0) {
        return Err(SimError::NotFound(name.to_owned()));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["mybot", "a", "sim-1", "DB21x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1bot", "-x", "x-", "a b", "a/b", "a.b", &"x".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sim_info_round_trips() {
        let i = SimInfo {
            name: "b".into(),
            address: Ipv4Addr::new(10, 213, 0, 2),
            arch: "linux/amd64".into(),
            host_interface: "sim-b".into(),
            configuration: "virtual".into(),
            bridge: "dts0".into(),
            subnet: "10.213.0.0/24".into(),
            netns: "dts-sim-b".into(),
            link_rate: None,
            holder_pid: Some(3),
            init_pid: None,
            dir: "/d".into(),
            root: "/d/root".into(),
            host_key: "/d/k.pub".into(),
            agent: "/a".into(),
            devices: vec![DevNode {
                path: "/dev/i2c-1".into(),
                kind: DeviceKind::Char,
                major: 89,
                minor: 1,
                group: Some("i2c".into()),
            }],
            ro_binds: vec![],
            memory: Some(1 << 30),
            cgroup: Some("/sys/fs/cgroup/memory/dts-sim-b".into()),
        };
        let j = serde_json::to_string(&i).unwrap();
        assert!(j.contains("\"host_interface\":\"sim-b\""));
        assert_eq!(serde_json::from_str::<SimInfo>(&j).unwrap(), i);
    }
}
