//! Robot profiles (`profiles/robots/<CONFIGURATION>.yaml`) and a robot's own `robot.yaml`
//! (`/etc/dt-agent/robot.yaml`): which device roles a robot configuration has and which device
//! nodes, bind mounts, groups and CDI devices each role grants a container.
//!
//! A profile, shipped and embedded:
//!
//! ```yaml
//! configuration: DB21J
//! type: duckiebot
//! description: Jetson Nano 4GB, HUT v3
//! roles:
//!   motors: { nodes: ["/dev/duckiebot/hat-i2c:/dev/i2c-1"], groups: [i2c] }
//!   tof:    { nodes: ["/dev/i2c-*"], groups: [i2c], optional: true }
//! ```
//!
//! `robot.yaml` names the configuration and may replace whole roles under `devices:`
//! (docs/formats.md, "robot.yaml"). A role names *what* a container may touch; resolving it to
//! major:minor numbers happens on the robot, at container start (`agent::devices`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_yaml_ng::Value;

use super::ProfileError;
use super::yaml::{Doc, index, show};
use crate::util::fs::PathContext;

/// Where `dt-agent` reads the robot's identity, unless `DT_AGENT_CONFIG` says otherwise.
pub const DEFAULT_ROBOT_YAML: &str = "/etc/dt-agent/robot.yaml";

/// Shipped robot profiles: `(configuration, file name, text)`.
const BUILTIN: [(&str, &str, &str); 6] = [
    (
        "DB18",
        "profiles/robots/DB18.yaml",
        include_str!("../../profiles/robots/DB18.yaml"),
    ),
    (
        "DB19",
        "profiles/robots/DB19.yaml",
        include_str!("../../profiles/robots/DB19.yaml"),
    ),
    (
        "DB21M",
        "profiles/robots/DB21M.yaml",
        include_str!("../../profiles/robots/DB21M.yaml"),
    ),
    (
        "DB21J",
        "profiles/robots/DB21J.yaml",
        include_str!("../../profiles/robots/DB21J.yaml"),
    ),
    (
        "DBR4",
        "profiles/robots/DBR4.yaml",
        include_str!("../../profiles/robots/DBR4.yaml"),
    ),
    (
        "virtual",
        "profiles/robots/virtual.yaml",
        include_str!("../../profiles/robots/virtual.yaml"),
    ),
];

/// One device node a role grants: `HOST` or `HOST:CONTAINER`.
///
/// `host` may hold `*` and `?` (in any component); every match is granted at its own path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Path on the robot, usually a stable name from `udev/` (`/dev/duckiebot/camera`).
    pub host: String,
    /// Path inside the container, when the drivers open another name than `host`.
    pub container: Option<String>,
}

/// One bind mount a role grants: `HOST[:CONTAINER][:ro]` (sockets such as `/tmp/argus_socket`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Path on the robot.
    pub host: String,
    /// Path inside the container, when it differs.
    pub container: Option<String>,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What one device role grants a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoleSpec {
    /// Device nodes.
    pub nodes: Vec<NodeSpec>,
    /// Bind mounts.
    pub mounts: Vec<MountSpec>,
    /// Supplementary groups, by name (looked up on the robot) or number.
    pub groups: Vec<String>,
    /// A missing node or mount is a warning rather than a failed start (a sensor not every
    /// robot of the configuration has fitted).
    pub optional: bool,
    /// CDI devices (`nvidia.com/gpu=l4t`) granted with the role, from the robot's CDI specs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi: Vec<String>,
    /// One container at a time: a release switch stops the old holder before the new one
    /// starts, so two never drive the hardware at once (profiles/README.md says which and why).
    #[serde(default)]
    pub exclusive: bool,
}

/// A shipped robot profile: the roles of one Duckietown configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RobotProfile {
    /// Duckietown configuration (`DB21J`), or `virtual`.
    pub configuration: String,
    /// Duckietown robot type (`duckiebot`).
    pub robot_type: String,
    /// One line for people.
    pub description: Option<String>,
    /// Role name → what it grants.
    pub roles: BTreeMap<String, RoleSpec>,
    /// Nodes a virtual robot creates in its `/dev` (`sim.nodes`), path → type and numbers.
    /// Empty for real hardware, whose nodes the kernel makes.
    pub sim_nodes: BTreeMap<String, SimNode>,
}

/// Character or block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// `c`.
    Char,
    /// `b`.
    Block,
}

/// A device node a virtual robot mknods: `c 89:1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SimNode {
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl SimNode {
    /// Parses `c MAJOR:MINOR` or `b MAJOR:MINOR`.
    pub fn parse(s: &str) -> Result<SimNode, String> {
        let bad = || format!("`{s}`: expected `c MAJOR:MINOR` or `b MAJOR:MINOR`");
        let (kind, numbers) = s.trim().split_once(' ').ok_or_else(bad)?;
        let kind = match kind {
            "c" => DeviceKind::Char,
            "b" => DeviceKind::Block,
            _ => return Err(bad()),
        };
        let (major, minor) = numbers.trim().split_once(':').ok_or_else(bad)?;
        Ok(SimNode {
            kind,
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

/// A robot's `robot.yaml`: who it is and how its devices differ from its profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RobotConfig {
    /// The robot's hostname.
    pub hostname: String,
    /// Duckietown robot type; the profile's when the file leaves it out.
    pub robot_type: String,
    /// Duckietown configuration; selects the profile.
    pub configuration: String,
    /// Roles that replace the profile's role of the same name (or add new ones).
    pub devices: BTreeMap<String, RoleSpec>,
    /// `releases.keep`: how many releases keep their images on the robot (the current one
    /// included); older releases' images are removed as new ones commit.
    pub keep_releases: u32,
}

/// Releases whose images a robot keeps when `robot.yaml` does not say: the current one and
/// two to roll back to, on a 16 GB card holding a 1.5–3 GB stack.
pub const DEFAULT_KEEP_RELEASES: u32 = 3;

impl fmt::Display for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.container {
            Some(c) => write!(f, "{}:{c}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(c) = &self.container {
            write!(f, ":{c}")?;
        }
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

impl Serialize for NodeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for MountSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// An absolute, normal path: no `..`, no empty text. `what` names it in the message.
fn check_path(p: &str, what: &str, glob_ok: bool) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{what} `{p}` must be an absolute path"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("{what} `{p}` must not contain `..`"));
    }
    if p.contains('[') {
        return Err(format!(
            "{what} `{p}`: only `*` and `?` are supported as wildcards"
        ));
    }
    if !glob_ok && has_glob(p) {
        return Err(format!("{what} `{p}` must not contain wildcards"));
    }
    Ok(())
}

impl NodeSpec {
    /// Parses `HOST` or `HOST:CONTAINER`.
    pub fn parse(s: &str) -> Result<NodeSpec, String> {
        let (host, container) = match s.split_once(':') {
            None => (s, None),
            Some((h, c)) => (h, Some(c)),
        };
        check_path(host, "device node", true)?;
        if let Some(c) = container {
            check_path(c, "container path", false)?;
            if c.contains(':') {
                return Err(format!("`{s}`: expected HOST or HOST:CONTAINER"));
            }
            if has_glob(host) {
                return Err(format!(
                    "`{s}`: a wildcard node is granted at the paths it matches; it cannot name a container path"
                ));
            }
        }
        Ok(NodeSpec {
            host: host.to_string(),
            container: container.map(str::to_string),
        })
    }

    /// Whether `host` is a pattern.
    pub fn is_glob(&self) -> bool {
        has_glob(&self.host)
    }

    /// The path inside the container.
    pub fn container_path(&self) -> &str {
        self.container.as_deref().unwrap_or(&self.host)
    }
}

impl MountSpec {
    /// Parses `HOST[:CONTAINER][:ro|:rw]`.
    pub fn parse(s: &str) -> Result<MountSpec, String> {
        let mut parts: Vec<&str> = s.split(':').collect();
        let mut read_only = false;
        if parts.len() > 1 {
            match *parts.last().expect("non-empty") {
                "ro" => {
                    read_only = true;
                    parts.pop();
                }
                "rw" => {
                    parts.pop();
                }
                _ => {}
            }
        }
        let (host, container) = match parts.as_slice() {
            [h] => (*h, None),
            [h, c] => (*h, Some(*c)),
            _ => return Err(format!("`{s}`: expected HOST[:CONTAINER][:ro]")),
        };
        check_path(host, "mount source", false)?;
        if let Some(c) = container {
            check_path(c, "mount target", false)?;
        }
        Ok(MountSpec {
            host: host.to_string(),
            container: container.map(str::to_string),
            read_only,
        })
    }

    /// The path inside the container.
    pub fn container_path(&self) -> &str {
        self.container.as_deref().unwrap_or(&self.host)
    }
}

// Role names are what stack files and `--device-role` say: the contract's rule, which a
// container's `api::RoleName` checks too.
use crate::api::names::check_role_name;

fn check_group(g: &str) -> Result<(), String> {
    let ok = !g.is_empty()
        && g.len() <= 32
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("`{g}` is not a group name or number"))
    }
}

/// Reads a `roles:` / `devices:` mapping.
fn parse_roles(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
) -> Result<BTreeMap<String, RoleSpec>, ProfileError> {
    let map = doc.map(path, v, |_| true)?;
    let mut roles = BTreeMap::new();
    for (name, value) in &map.entries {
        let at = map.at(name);
        check_role_name(name).map_err(|m| doc.err(&at, m))?;
        roles.insert(name.clone(), parse_role(doc, &at, value)?);
    }
    Ok(roles)
}

fn parse_role(doc: Doc<'_>, path: &str, v: &Value) -> Result<RoleSpec, ProfileError> {
    let m = doc.map(path, v, |k| {
        matches!(
            k,
            "nodes" | "mounts" | "groups" | "optional" | "cdi" | "exclusive"
        )
    })?;
    let mut role = RoleSpec::default();
    if let Some(v) = m.get("nodes") {
        let at = m.at("nodes");
        for (i, s) in doc.strings(&at, v)?.iter().enumerate() {
            role.nodes
                .push(NodeSpec::parse(s).map_err(|e| doc.err(&index(&at, i), e))?);
        }
    }
    if let Some(v) = m.get("mounts") {
        let at = m.at("mounts");
        for (i, s) in doc.strings(&at, v)?.iter().enumerate() {
            role.mounts
                .push(MountSpec::parse(s).map_err(|e| doc.err(&index(&at, i), e))?);
        }
    }
    if let Some(v) = m.get("groups") {
        let at = m.at("groups");
        let Value::Sequence(items) = v else {
            return Err(doc.err(
                &at,
                format!("expected a list of group names, found {}", show(v)),
            ));
        };
        for (i, item) in items.iter().enumerate() {
            let g = doc.scalar(&index(&at, i), item)?;
            check_group(&g).map_err(|e| doc.err(&index(&at, i), e))?;
            role.groups.push(g);
        }
    }
    if let Some(v) = m.get("optional") {
        role.optional = doc.bool(&m.at("optional"), v)?;
    }
    if let Some(v) = m.get("cdi") {
        let at = m.at("cdi");
        for (i, s) in doc.strings(&at, v)?.iter().enumerate() {
            crate::cdi::QualifiedName::parse(s).map_err(|e| doc.err(&index(&at, i), e))?;
            if !role.cdi.contains(s) {
                role.cdi.push(s.clone());
            }
        }
    }
    if let Some(v) = m.get("exclusive") {
        role.exclusive = doc.bool(&m.at("exclusive"), v)?;
    }
    Ok(role)
}

fn parse_sim(doc: Doc<'_>, v: &Value) -> Result<BTreeMap<String, SimNode>, ProfileError> {
    let m = doc.map("sim", v, |k| k == "nodes")?;
    let mut out = BTreeMap::new();
    if let Some(v) = m.get("nodes") {
        let nodes = doc.map("sim.nodes", v, |_| true)?;
        for (path, value) in &nodes.entries {
            let at = nodes.at(path);
            check_path(path, "sim node", false).map_err(|e| doc.err(&at, e))?;
            let text = doc.string(&at, value)?;
            out.insert(
                path.clone(),
                SimNode::parse(&text).map_err(|e| doc.err(&at, e))?,
            );
        }
    }
    Ok(out)
}

impl RobotProfile {
    /// The configurations with a shipped profile.
    pub fn known() -> Vec<&'static str> {
        BUILTIN.iter().map(|(name, _, _)| *name).collect()
    }

    /// The shipped profile of a configuration (`DB21J`, `virtual`).
    pub fn builtin(configuration: &str) -> Result<RobotProfile, ProfileError> {
        let (_, file, text) = BUILTIN
            .iter()
            .find(|(name, _, _)| *name == configuration)
            .ok_or_else(|| ProfileError::UnknownConfiguration {
                name: configuration.to_string(),
                known: Self::known().iter().map(|s| s.to_string()).collect(),
            })?;
        Self::parse(file, text)
    }

    /// Parses a profile; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<RobotProfile, ProfileError> {
        let doc = Doc { file };
        let root = doc.parse(text)?;
        let m = doc.map("", &root, |k| {
            matches!(
                k,
                "configuration" | "type" | "description" | "roles" | "sim"
            )
        })?;
        let required = |key: &str| -> Result<String, ProfileError> {
            let v = m.get(key).ok_or_else(|| doc.err(key, "missing"))?;
            doc.string(key, v)
        };
        Ok(RobotProfile {
            configuration: required("configuration")?,
            robot_type: required("type")?,
            description: m
                .get("description")
                .map(|v| doc.string("description", v))
                .transpose()?,
            roles: match m.get("roles") {
                Some(v) => parse_roles(doc, "roles", v)?,
                None => BTreeMap::new(),
            },
            sim_nodes: match m.get("sim") {
                Some(v) => parse_sim(doc, v)?,
                None => BTreeMap::new(),
            },
        })
    }

    /// Reads and parses a profile file.
    pub fn load(path: &Path) -> Result<RobotProfile, ProfileError> {
        let text = std::fs::read_to_string(path).at("read", path)?;
        Self::parse(&path.display().to_string(), &text)
    }
}

/// A hostname as mDNS and `/etc/hostname` take it: one DNS label.
fn check_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a hostname (letters, digits and `-`, at most 63, no leading or trailing `-`)"
        ))
    }
}

impl RobotConfig {
    /// Parses `robot.yaml`; `file` names it in errors. The configuration must have a shipped
    /// profile, and `type`, when given, must agree with it.
    pub fn from_str(file: &str, text: &str) -> Result<RobotConfig, ProfileError> {
        let doc = Doc { file };
        let root = doc.parse(text)?;
        let m = doc.map("", &root, |k| {
            matches!(
                k,
                "hostname" | "type" | "configuration" | "devices" | "releases"
            )
        })?;
        let required = |key: &str| -> Result<String, ProfileError> {
            let v = m.get(key).ok_or_else(|| doc.err(key, "missing"))?;
            doc.string(key, v)
        };
        let hostname = required("hostname")?;
        check_hostname(&hostname).map_err(|e| doc.err("hostname", e))?;
        let configuration = required("configuration")?;
        let profile = RobotProfile::builtin(&configuration).map_err(|e| match e {
            ProfileError::UnknownConfiguration { name, known } => doc.err(
                "configuration",
                format!("no profile for `{name}` (known: {})", known.join(", ")),
            ),
            other => other,
        })?;
        let robot_type = match m.get("type") {
            Some(v) => {
                let t = doc.string("type", v)?;
                if t != profile.robot_type {
                    return Err(doc.err(
                        "type",
                        format!(
                            "`{t}` disagrees with configuration {configuration}, a `{}`",
                            profile.robot_type
                        ),
                    ));
                }
                t
            }
            None => profile.robot_type,
        };
        Ok(RobotConfig {
            hostname,
            robot_type,
            configuration,
            devices: match m.get("devices") {
                Some(v) => parse_roles(doc, "devices", v)?,
                None => BTreeMap::new(),
            },
            keep_releases: match m.get("releases") {
                Some(v) => {
                    let r = doc.map("releases", v, |k| k == "keep")?;
                    match r.get("keep") {
                        Some(k) => match doc.u32("releases.keep", k)? {
                            0 => {
                                return Err(doc.err(
                                    "releases.keep",
                                    "must be at least 1 (the release that runs)",
                                ));
                            }
                            n => n,
                        },
                        None => DEFAULT_KEEP_RELEASES,
                    }
                }
                None => DEFAULT_KEEP_RELEASES,
            },
        })
    }

    /// Reads and parses a `robot.yaml`.
    pub fn load(path: &Path) -> Result<RobotConfig, ProfileError> {
        let text = std::fs::read_to_string(path).at("read", path)?;
        Self::from_str(&path.display().to_string(), &text)
    }
}

/// The roles a robot has: its profile's, with each role in `robot.yaml`'s `devices:` replacing
/// the profile's role of that name whole (not merged: a robot with the camera on another bus
/// says so completely, and nothing of the profile's camera leaks through).
pub fn effective_roles(config: &RobotConfig) -> Result<BTreeMap<String, RoleSpec>, ProfileError> {
    let mut roles = RobotProfile::builtin(&config.configuration)?.roles;
    for (name, role) in &config.devices {
        roles.insert(name.clone(), role.clone());
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs() {
        let n = NodeSpec::parse("/dev/duckiebot/camera:/dev/video0").unwrap();
        assert_eq!(n.host, "/dev/duckiebot/camera");
        assert_eq!(n.container_path(), "/dev/video0");
        assert_eq!(n.to_string(), "/dev/duckiebot/camera:/dev/video0");
        let g = NodeSpec::parse("/dev/i2c-*").unwrap();
        assert!(g.is_glob());
        assert_eq!(g.container_path(), "/dev/i2c-*");
        for (bad, needle) in [
            ("dev/i2c-1", "absolute"),
            ("/dev/i2c-*:/dev/i2c", "wildcard"),
            ("/dev/a:/dev/b:/dev/c", "HOST or HOST:CONTAINER"),
            ("/dev/../etc/shadow", "`..`"),
            ("/dev/a:/dev/b*", "wildcards"),
            ("/dev/i2c-[12]", "only `*` and `?`"),
        ] {
            let e = NodeSpec::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn mount_specs() {
        let cases = [
            ("/tmp/argus_socket", "/tmp/argus_socket", None, false),
            ("/tmp/argus_socket:ro", "/tmp/argus_socket", None, true),
            ("/a:/b", "/a", Some("/b"), false),
            ("/a:/b:ro", "/a", Some("/b"), true),
            ("/a:/b:rw", "/a", Some("/b"), false),
        ];
        for (s, host, container, ro) in cases {
            let m = MountSpec::parse(s).unwrap();
            assert_eq!(
                (m.host.as_str(), m.container.as_deref(), m.read_only),
                (host, container, ro),
                "{s}"
            );
        }
        assert_eq!(
            MountSpec::parse("/a:/b:ro").unwrap().to_string(),
            "/a:/b:ro"
        );
        for bad in ["tmp/x", "/a:/b:/c", "/a:b", "/tmp/*", "/a:/b:rx"] {
            assert!(MountSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
