//! Container networking on the robot: a small CNI runtime (what libcni does for podman and CRI-O)
//! driving the standard plugins from Debian's `containernetworking-plugins`.
//!
//! Containers use the host network by default (ROS needs it). One that publishes ports or asks
//! for `bridge` gets a network namespace of its own, which [`Network::attach`] wires into the
//! agent's network `dt-agent` after `runc create` and before `runc start`:
//!
//! ```text
//!  plugin chain (ADD in this order, DEL in reverse; each ADD result is the next one's prevResult)
//!  bridge     dtagent0 on the host, isGateway + ipMasq, veth `eth0` in the container,
//!             address from host-local IPAM (default 10.89.0.0/24, gateway .1)
//!  portmap    DNAT host ports to the container (capabilities.portMappings ← runtimeConfig)
//!  firewall   lets the container's traffic through a FORWARD policy of DROP (Docker hosts)
//!  loopback   `lo` up inside the container
//! ```
//!
//! What it owns: the plugin configuration, running plugins by the CNI 1.0 spec
//! (<https://github.com/containernetworking/cni/blob/main/SPEC.md>), the records of attachments
//! and the pins that keep a container's namespace alive until it is detached. What it does not
//! own: the container's lifecycle (the runtime), the plugins' own state (host-local's leases,
//! the iptables rules) and the host's network: nothing here writes a rule or sysctl itself.
//!
//! ```text
//! <state dir>/                  ($DT_AGENT_ROOT/net on a robot)
//!   lock                        flock: one attach/detach/check at a time
//!   dt-agent.conflist           the network configuration last used (for people and cnitool)
//!   ipam/dt-agent/              host-local's leases (`dataDir`), one file per address in use
//!   attachments/<id>.json       one record per attached container: the exact configuration,
//!                               ports and ADD result, written before ADD and after it
//!   netns/<id>                  bind mount of the container's network namespace, held until
//!                               detach so DEL always finds the veth and the masquerade rules
//! ```
//!
//! A record is written (atomically) *before* the first plugin runs, so an agent that dies in the
//! middle of an ADD still knows what to DEL after a restart. DEL gets the configuration stored in
//! the record, not today's, so changing the subnet never strands an older attachment. After a
//! reboot the pins are empty files: DEL then runs without a namespace, which the spec allows and
//! the plugins handle by releasing the address and removing port forwards.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::api::container::{PortMapping, PortSpecError, Proto};
use crate::util::fs::{
    Lock, PathContext as _, PathError, atomic_write, create_dir_all, lock_file, read_limited,
};

mod exec;
mod netns;
mod subnet;

use netns::{file_id, is_netns, open_netns, pin_netns, unpin};

/// Name of the agent's CNI network (also host-local's lease directory and the comment on every
/// iptables rule the plugins add).
pub const NETWORK_NAME: &str = "dt-agent";
/// Default bridge on the host.
pub const DEFAULT_BRIDGE: &str = "dtagent0";
/// Default subnet: away from Docker's 172.17/16 and podman's 10.88/16.
pub const DEFAULT_SUBNET: &str = "10.89.0.0/24";
/// The spec version we speak; Debian bookworm's plugins (1.1) support it.
pub const CNI_VERSION: &str = "1.0.0";
/// Environment variable replacing [`DEFAULT_PLUGIN_DIRS`] (`:`-separated, like `CNI_PATH`).
pub const PLUGIN_PATH_ENV: &str = "DT_AGENT_CNI_PATH";
/// Where plugins are looked for: Debian's package, then the upstream tarball's location.
pub const DEFAULT_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];
/// The container's interface.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Version of the attachment record format; newer records are refused.
const RECORD_VERSION: u32 = 1;
/// Records are small JSON documents; anything bigger is not one of ours.
const RECORD_LIMIT: u64 = 1 << 20;
/// How much of a plugin's stderr goes into an error.
const STDERR_TAIL: usize = 1024;
/// Linux interface names are at most `IFNAMSIZ - 1` bytes.
const IFNAME_MAX: usize = 15;
/// Plugins not given CHECK. Debian bookworm's portmap (1.1.1) fails CHECK for every container
/// without an IPv6 address, looking for ip6tables rules it never made
/// (containernetworking/plugins#819, fixed upstream in 1.3); its rules are still removed by DEL.
const CHECK_SKIPS: &[&str] = &["portmap"];
/// Plugins exec `iptables`, `ip6tables` and friends through `$PATH`; an agent started with a
/// minimal `PATH` (cron, some init systems) would make every port mapping fail, so these are
/// appended when missing.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// An error of container networking. Every one names the plugin, container or path involved.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The container id cannot be used (CNI allows alphanumerics, `-`, `_` and `.`).
    #[error(
        "invalid container id `{0}`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
    )]
    InvalidContainerId(String),
    /// The bridge name is not a valid interface name.
    #[error("invalid bridge name `{0}`: 1 to 15 letters, digits, `-`, `_` or `.`")]
    InvalidBridge(String),
    /// A plugin binary is in none of the plugin directories.
    #[error("CNI plugin `{plugin}` not found in {}", fmt_dirs(dirs))]
    PluginNotFound {
        /// The plugin (`type` in the configuration).
        plugin: String,
        /// The directories searched, in order.
        dirs: Vec<PathBuf>,
    },
    /// A plugin could not be started.
    #[error("running CNI plugin `{}`: {source}", path.display())]
    Spawn {
        /// The plugin binary.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A plugin reported an error the CNI way (`{code, msg, details}` on stdout).
    #[error(
        "CNI plugin `{plugin}` {command} for container `{container}` failed: {msg}{} (CNI error {code}: {})",
        details.as_deref().filter(|d| !d.is_empty()).map(|d| format!(": {d}")).unwrap_or_default(),
        code_meaning(*code)
    )]
    Plugin {
        /// The plugin.
        plugin: String,
        /// `ADD`, `DEL` or `CHECK`.
        command: &'static str,
        /// The container id.
        container: String,
        /// The CNI error code (1–99 are the spec's, 100+ the plugin's).
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details, if any.
        details: Option<String>,
    },
    /// A plugin failed without a CNI error on stdout (it crashed, or is not a CNI plugin).
    #[error(
        "CNI plugin `{plugin}` {command} for container `{container}` exited with {status}: {stderr}"
    )]
    PluginCrashed {
        /// The plugin.
        plugin: String,
        /// `ADD`, `DEL` or `CHECK`.
        command: &'static str,
        /// The container id.
        container: String,
        /// The exit status.
        status: String,
        /// The end of its stderr (or stdout when stderr was empty).
        stderr: String,
    },
    /// A plugin succeeded but printed something that is not a CNI result.
    #[error("CNI plugin `{plugin}` {command} printed an invalid result: {source}")]
    BadResult {
        /// The plugin.
        plugin: String,
        /// `ADD`, `DEL` or `CHECK`.
        command: &'static str,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The ADD chain finished without an address on the container's interface.
    #[error("the CNI result for container `{0}` has no address on `{CONTAINER_IFNAME}`")]
    NoAddress(String),
    /// The path given as the container's network namespace is not one.
    #[error("`{}` is not a network namespace", .0.display())]
    NotNetns(PathBuf),
    /// Pinning a namespace (bind mount) failed.
    #[error("pinning network namespace `{}` at `{}`: {source}", netns.display(), pin.display())]
    Pin {
        /// The namespace.
        netns: PathBuf,
        /// Where it was to be bind-mounted.
        pin: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// An attachment record does not parse.
    #[error("attachment record `{}`: {source}", path.display())]
    BadRecord {
        /// The record.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// An attachment record was written by a newer agent.
    #[error(
        "attachment record `{}` has version {found}; this agent reads version {RECORD_VERSION}",
        path.display()
    )]
    RecordVersion {
        /// The record.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The container has no attachment record (for [`Network::check`]).
    #[error("container `{0}` is not attached to network `{NETWORK_NAME}`")]
    NotAttached(String),
    /// An ADD failed and undoing it with DEL failed too; the record is kept so that a later
    /// [`Network::detach`] tries again.
    #[error("{add}; undoing it also failed: {del}")]
    Rollback {
        /// Why ADD failed.
        add: Box<NetError>,
        /// Why the DEL after it failed.
        del: Box<NetError>,
    },
}

fn fmt_dirs(dirs: &[PathBuf]) -> String {
    let list: Vec<String> = dirs.iter().map(|d| format!("`{}`", d.display())).collect();
    format!(
        "{} (install Debian's `containernetworking-plugins` or set {PLUGIN_PATH_ENV})",
        if list.is_empty() {
            "no directories".to_owned()
        } else {
            list.join(", ")
        }
    )
}

/// The spec's well-known error codes (SPEC.md "Error"); plugins use 100 and up for their own.
fn code_meaning(code: u32) -> &'static str {
    match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        100.. => "plugin-specific",
        _ => "reserved",
    }
}

// ---------------------------------------------------------------------------------------------
// Port mappings.

impl PortMapping {
    /// The entry portmap expects in `runtimeConfig.portMappings`.
    fn to_cni(self) -> Value {
        let mut v = json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.to_string(),
        });
        if let Some(ip) = self.host_ip {
            v["hostIP"] = json!(ip.to_string());
        }
        v
    }
}

pub use subnet::{Ipv4Subnet, SubnetError};

// ---------------------------------------------------------------------------------------------
// The network.

/// The agent's CNI network: where its state lives, where plugins are, and its addressing.
#[derive(Clone, Debug)]
pub struct Network {
    state_dir: PathBuf,
    plugin_dirs: Vec<PathBuf>,
    subnet: Ipv4Subnet,
    bridge: String,
}

/// What [`Network::attach`] gave a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container's address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Its default gateway (the bridge), when the result names one.
    pub gateway: Option<IpAddr>,
    /// The interface inside the container (`eth0`).
    pub interface: String,
    /// The interface's MAC address, when the result names one.
    pub mac: Option<String>,
}

/// What is kept per attached container (`attachments/<id>.json`).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    container_id: String,
    /// The namespace path the caller gave (for people; the pin is what is used).
    netns: PathBuf,
    /// Device and inode of that namespace, to tell a second attach of the same one.
    netns_dev: u64,
    netns_ino: u64,
    ports: Vec<PortMapping>,
    /// The exact configuration list ADD ran with; DEL and CHECK use it again.
    config: Value,
    /// The final ADD result; `null` while ADD runs (or when it died half-way).
    result: Value,
}

/// CNI commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Add,
    Del,
    Check,
}

impl Cmd {
    fn as_str(self) -> &'static str {
        match self {
            Cmd::Add => "ADD",
            Cmd::Del => "DEL",
            Cmd::Check => "CHECK",
        }
    }
}

/// The part of a CNI result we read (SPEC.md "Success").
#[derive(Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<CniInterface>,
    #[serde(default)]
    ips: Vec<CniIp>,
}

#[derive(Deserialize)]
struct CniInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct CniIp {
    address: String,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

/// A CNI error (SPEC.md "Error").
#[derive(Deserialize)]
struct CniError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: Option<String>,
}

impl Network {
    /// The network with its state under `state_dir` (created if missing, mode 0700), the plugin
    /// directories from `$DT_AGENT_CNI_PATH` or [`DEFAULT_PLUGIN_DIRS`], subnet
    /// [`DEFAULT_SUBNET`] and bridge [`DEFAULT_BRIDGE`].
    pub fn new(state_dir: &Path) -> Result<Network, NetError> {
        for dir in ["", "attachments", "netns", "ipam"] {
            let d = state_dir.join(dir);
            create_dir_all(&d)?;
        }
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
                .at("set permissions of", state_dir)?;
        }
        let plugin_dirs = plugin_dirs_from(std::env::var_os(PLUGIN_PATH_ENV));
        Ok(Network {
            state_dir: state_dir.to_path_buf(),
            plugin_dirs,
            subnet: DEFAULT_SUBNET.parse().expect("the default subnet parses"),
            bridge: DEFAULT_BRIDGE.to_owned(),
        })
    }

    /// Use `subnet` for new attachments (existing ones keep the configuration they were made with).
    pub fn with_subnet(mut self, subnet: Ipv4Subnet) -> Network {
        self.subnet = subnet;
        self
    }

    /// Use bridge `name` for new attachments.
    pub fn with_bridge(mut self, name: &str) -> Result<Network, NetError> {
        let ok = !name.is_empty()
            && name.len() <= IFNAME_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && name != "."
            && name != "..";
        if !ok {
            return Err(NetError::InvalidBridge(name.to_owned()));
        }
        self.bridge = name.to_owned();
        Ok(self)
    }

    /// Look for plugins in `dirs`, in order, instead.
    pub fn with_plugin_dirs(mut self, dirs: Vec<PathBuf>) -> Network {
        self.plugin_dirs = dirs;
        self
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The plugin directories, in search order.
    pub fn plugin_dirs(&self) -> &[PathBuf] {
        &self.plugin_dirs
    }

    /// The subnet new attachments get addresses from.
    pub fn subnet(&self) -> Ipv4Subnet {
        self.subnet
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The configuration list new attachments use (CNI "network configuration list").
    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    // A container can reach its own published ports through the robot's address.
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.state_dir.join("ipam"),
                        "ranges": [[{
                            "subnet": self.subnet.to_string(),
                            "gateway": self.subnet.gateway().to_string(),
                        }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                    },
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    "snat": true,
                },
                // The iptables backend explicitly: the default probes firewalld over D-Bus.
                { "type": "firewall", "backend": "iptables" },
                { "type": "loopback" },
            ],
        })
    }

    /// The path of plugin `name`: the first of [`Network::plugin_dirs`] holding an executable
    /// file of that name.
    pub fn find_plugin(&self, name: &str) -> Result<PathBuf, NetError> {
        use std::os::unix::fs::PermissionsExt as _;
        let not_found = || NetError::PluginNotFound {
            plugin: name.to_owned(),
            dirs: self.plugin_dirs.clone(),
        };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(not_found());
        }
        self.plugin_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| {
                fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(not_found)
    }

    /// Connect container `container_id`, whose network namespace is `netns` (usually
    /// `/proc/<pid>/ns/net` between `runc create` and `runc start`), to the network, publishing
    /// `ports` on the robot.
    ///
    /// Attaching a container that is already attached to the same namespace with the same ports
    /// runs CHECK and returns the existing attachment when it passes; otherwise the old
    /// attachment is detached first. When a plugin fails, what the earlier ones did is undone
    /// (DEL) before the error is returned.
    pub fn attach(
        &self,
        container_id: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Attachment, NetError> {
        validate_id(container_id)?;
        let _lock = self.lock()?;
        let config = self.conflist();
        for plugin in plugins(&config) {
            self.find_plugin(plugin_type(plugin))?;
        }
        let ns_file = open_netns(netns)?;
        let (dev, ino) = file_id(&ns_file, netns)?;

        if let Some(old) = self.load_record(container_id)? {
            let same = old.netns_dev == dev && old.netns_ino == ino && old.ports == ports;
            if same && !old.result.is_null() && self.check_record(&old).is_ok() {
                return attachment_of(container_id, &old.result);
            }
            self.del_record(container_id, Some(old))?;
        }

        let pin = self.pin_path(container_id);
        pin_netns(&ns_file, netns, &pin)?;
        let mut record = Record {
            version: RECORD_VERSION,
            container_id: container_id.to_owned(),
            netns: netns.to_path_buf(),
            netns_dev: dev,
            netns_ino: ino,
            ports: ports.to_vec(),
            config,
            result: Value::Null,
        };
        let saved = self
            .save_record(&record)
            .and_then(|()| self.save_conflist(&record.config));
        if let Err(e) = saved {
            let _ = unpin(&pin);
            let _ = fs::remove_file(self.record_path(container_id));
            return Err(e);
        }

        let added = self
            .run_chain(
                Cmd::Add,
                container_id,
                Some(&pin),
                &record.config,
                ports,
                None,
            )
            .and_then(|result| {
                let attachment = attachment_of(container_id, &result)?;
                Ok((result, attachment))
            });
        match added {
            Ok((result, attachment)) => {
                record.result = result;
                if let Err(e) = self.save_record(&record) {
                    return Err(self.undo(container_id, record, e));
                }
                Ok(attachment)
            }
            Err(e) => Err(self.undo(container_id, record, e)),
        }
    }

    /// After a failed ADD: DEL everything, then return `add` (with the DEL failure, if any).
    fn undo(&self, container_id: &str, record: Record, add: NetError) -> NetError {
        match self.del_record(container_id, Some(record)) {
            Ok(()) => add,
            Err(del) => NetError::Rollback {
                add: Box::new(add),
                del: Box::new(del),
            },
        }
    }

    /// Run CHECK for an attached container: whether its interface, address, routes and port
    /// forwards are still what ADD made. Returns the attachment when they are.
    pub fn check(&self, container_id: &str) -> Result<Attachment, NetError> {
        validate_id(container_id)?;
        let _lock = self.lock()?;
        let record = self
            .load_record(container_id)?
            .filter(|r| !r.result.is_null())
            .ok_or_else(|| NetError::NotAttached(container_id.to_owned()))?;
        self.check_record(&record)?;
        attachment_of(container_id, &record.result)
    }

    fn check_record(&self, record: &Record) -> Result<(), NetError> {
        let pin = self.pin_path(&record.container_id);
        if !is_netns(&pin) {
            return Err(NetError::NotNetns(pin));
        }
        self.run_chain(
            Cmd::Check,
            &record.container_id,
            Some(&pin),
            &record.config,
            &record.ports,
            Some(&record.result),
        )
        .map(drop)
    }

    /// Disconnect container `container_id`: release its address, remove its port forwards and
    /// its interface, forget the attachment. Succeeds when there is nothing to do, also when the
    /// namespace is gone (after a reboot, or a container removed by hand).
    ///
    /// When this agent (or an earlier process of it) attached the container, the record made
    /// then is what is used, and `netns` and `ports` are ignored. Without a record, DEL runs with
    /// today's configuration, `ports` and `netns` (when it still is a network namespace).
    pub fn detach(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        ports: &[PortMapping],
    ) -> Result<(), NetError> {
        validate_id(container_id)?;
        let _lock = self.lock()?;
        match self.load_record(container_id)? {
            Some(record) => self.del_record(container_id, Some(record)),
            None => {
                let netns = netns.filter(|p| is_netns(p));
                self.run_chain(Cmd::Del, container_id, netns, &self.conflist(), ports, None)?;
                self.del_record(container_id, None)
            }
        }
    }

    /// The ids of the containers with an attachment record, sorted (for an agent that restarts
    /// and needs to know what an earlier process attached).
    pub fn attached(&self) -> Result<Vec<String>, NetError> {
        let dir = self.state_dir.join("attachments");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).at("list", &dir)? {
            let entry = entry.at("list", &dir)?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if validate_id(id).is_ok() {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The attachment recorded for `container_id`, if it is attached (without running CHECK).
    pub fn attachment(&self, container_id: &str) -> Result<Option<Attachment>, NetError> {
        validate_id(container_id)?;
        match self.load_record(container_id)? {
            Some(r) if !r.result.is_null() => attachment_of(container_id, &r.result).map(Some),
            _ => Ok(None),
        }
    }

    /// DEL with `record`'s configuration (or, when `record` is `None`, only forget what is on
    /// disk), then unpin and remove the record. The record stays when DEL fails, so that a
    /// later detach tries again.
    fn del_record(&self, container_id: &str, record: Option<Record>) -> Result<(), NetError> {
        let pin = self.pin_path(container_id);
        if let Some(record) = record {
            let netns = is_netns(&pin).then_some(pin.as_path());
            let prev = (!record.result.is_null()).then_some(&record.result);
            self.run_chain(
                Cmd::Del,
                container_id,
                netns,
                &record.config,
                &record.ports,
                prev,
            )?;
        }
        unpin(&pin)?;
        let path = self.record_path(container_id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at("remove", &path)?,
            _ => Ok(()),
        }
    }

    fn lock(&self) -> Result<File, NetError> {
        Ok(lock_file(&self.state_dir.join("lock"), Lock::Exclusive)?)
    }

    fn record_path(&self, container_id: &str) -> PathBuf {
        self.state_dir
            .join("attachments")
            .join(format!("{container_id}.json"))
    }

    fn pin_path(&self, container_id: &str) -> PathBuf {
        self.state_dir.join("netns").join(container_id)
    }

    fn load_record(&self, container_id: &str) -> Result<Option<Record>, NetError> {
        let path = self.record_path(container_id);
        let bytes = match read_limited(&path, RECORD_LIMIT) {
            Ok(b) => b,
            Err(e) if e.source.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(&bytes).map_err(|source| NetError::BadRecord {
            path: path.clone(),
            source,
        })?;
        if v.version > RECORD_VERSION {
            return Err(NetError::RecordVersion {
                path,
                found: v.version,
            });
        }
        let record: Record = serde_json::from_slice(&bytes)
            .map_err(|source| NetError::BadRecord { path, source })?;
        Ok(Some(record))
    }

    fn save_record(&self, record: &Record) -> Result<(), NetError> {
        let bytes = serde_json::to_vec_pretty(record).expect("a record serialises");
        Ok(atomic_write(
            &self.record_path(&record.container_id),
            &bytes,
        )?)
    }

    /// Keep a copy of the configuration for people (`cnitool`, debugging); rewritten only when
    /// it changed.
    fn save_conflist(&self, config: &Value) -> Result<(), NetError> {
        let path = self.state_dir.join(format!("{NETWORK_NAME}.conflist"));
        let mut bytes = serde_json::to_vec_pretty(config).expect("a config serialises");
        bytes.push(b'\n');
        if fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        Ok(atomic_write(&path, &bytes)?)
    }
}

/// The plugin directories for a value of [`PLUGIN_PATH_ENV`] (unset or empty: the defaults).
fn plugin_dirs_from(var: Option<std::ffi::OsString>) -> Vec<PathBuf> {
    match var.filter(|v| !v.is_empty()) {
        Some(v) => std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// CNI container ids: alphanumerics, `-`, `_`, `.` (SPEC.md "Parameters"); we also want a
/// usable file name, so no leading `.` and at most 255 bytes.
fn validate_id(id: &str) -> Result<(), NetError> {
    let ok = id.len() <= 250
        && id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidContainerId(id.to_owned()))
    }
}

fn plugins(config: &Value) -> impl Iterator<Item = &Value> {
    config["plugins"].as_array().into_iter().flatten()
}

fn plugin_type(plugin: &Value) -> &str {
    plugin["type"].as_str().unwrap_or("")
}

/// One plugin's stdin, as libcni builds it: the plugin's own object plus the list's `name` and
/// `cniVersion`, `prevResult`, and `runtimeConfig` for the capabilities it declares.
fn plugin_config(
    config: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    ports: &[PortMapping],
) -> Value {
    let mut c = plugin.clone();
    c["name"] = config["name"].clone();
    c["cniVersion"] = config["cniVersion"].clone();
    if let Some(prev) = prev {
        c["prevResult"] = prev.clone();
    }
    if plugin["capabilities"]["portMappings"] == json!(true) {
        let maps: Vec<Value> = ports.iter().map(|p| p.to_cni()).collect();
        c["runtimeConfig"] = json!({ "portMappings": maps });
    }
    c
}

/// The container's address from a final ADD result: the first IPv4 address (else any) on an
/// interface named `eth0` inside a sandbox.
fn attachment_of(container_id: &str, result: &Value) -> Result<Attachment, NetError> {
    let parsed: CniResult =
        serde_json::from_value(result.clone()).map_err(|source| NetError::BadResult {
            plugin: "(chain)".to_owned(),
            command: "ADD",
            source,
        })?;
    let on_container = |ip: &&CniIp| {
        ip.interface
            .and_then(|i| parsed.interfaces.get(i))
            .is_some_and(|i| {
                i.name == CONTAINER_IFNAME && i.sandbox.as_deref().is_some_and(|s| !s.is_empty())
            })
    };
    let parse = |ip: &CniIp| -> Option<(IpAddr, u8)> {
        let (a, len) = ip.address.split_once('/')?;
        Some((a.parse().ok()?, len.parse().ok()?))
    };
    let chosen = parsed
        .ips
        .iter()
        .filter(on_container)
        .find(|ip| parse(ip).is_some_and(|(a, _)| a.is_ipv4()))
        .or_else(|| parsed.ips.iter().find(on_container))
        .ok_or_else(|| NetError::NoAddress(container_id.to_owned()))?;
    let (ip, prefix_len) =
        parse(chosen).ok_or_else(|| NetError::NoAddress(container_id.to_owned()))?;
    let iface = chosen.interface.and_then(|i| parsed.interfaces.get(i));
    Ok(Attachment {
        ip,
        prefix_len,
        gateway: chosen.gateway,
        interface: iface.map_or_else(|| CONTAINER_IFNAME.to_owned(), |i| i.name.clone()),
        mac: iface.and_then(|i| i.mac.clone()),
    })
}

/// `$PATH` with [`SBIN_DIRS`] appended where missing.
fn path_with_sbin() -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    for d in SBIN_DIRS {
        if !dirs.iter().any(|p| p == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs).unwrap_or(current)
}

/// The last [`STDERR_TAIL`] bytes of a plugin's output, trimmed, lossily decoded.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests;
