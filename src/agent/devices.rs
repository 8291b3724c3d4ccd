//! Device passthrough by role, resolved on the robot at container start.
//!
//! A stack grants a container roles (`x-duckiebot.devices: [camera, motors]`); the robot's
//! effective roles (`profile::effective_roles`) say which nodes, mounts and groups each role is.
//! This module turns that into what the runtime writes into the OCI spec: every node `stat`ed
//! for its type and major:minor *now* (numbers such as gpiochip's are dynamic, and udev names
//! are symlinks whose targets move between boots), wildcards expanded against the live
//! filesystem, groups looked up in the robot's `/etc/group`. It reads; it never creates or
//! changes a node, and it knows nothing of runc.
//!
//! A role's `cdi:` devices are resolved against the robot's CDI specs (`agent::cdi`) and
//! merged with its nodes and mounts.
//!
//! A node that is missing fails the start, naming the role and the node, unless the role is
//! `optional`, in which case it is a warning; a path that exists but is not a device (a regular
//! file left where a node should be) is always an error.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use serde::Serialize;

use crate::profile::RoleSpec;
pub use crate::profile::robot::DeviceKind;
use crate::util::fs::{PathContext, PathError};

/// One device node for the container's `linux.devices` and its device cgroup allow-list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceNode {
    /// Path on the robot, as matched (the udev symlink, not its target).
    pub host_path: PathBuf,
    /// Path inside the container.
    pub container_path: PathBuf,
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number of the node's target.
    pub major: u32,
    /// Minor number of the node's target.
    pub minor: u32,
    /// Permission bits of the host node (`0o660`), for the container's copy.
    pub file_mode: u32,
    /// Owner of the host node.
    pub uid: u32,
    /// Group of the host node.
    pub gid: u32,
    /// Device cgroup access (`rwm`; a CDI spec may say less).
    pub access: String,
}

/// A bind mount a role grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindMount {
    /// Path on the robot.
    pub host: PathBuf,
    /// Path inside the container.
    pub container: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// A mount a CDI device grants, with the spec's type and options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CdiMount {
    /// Source on the robot.
    pub host: PathBuf,
    /// Target inside the container.
    pub container: PathBuf,
    /// File system type (`bind` unless the spec says otherwise).
    pub typ: String,
    /// Mount options, as the spec gives them.
    pub options: Vec<String>,
}

/// Everything a set of granted roles gives one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResolvedDevices {
    /// Device nodes, in grant order, one per container path.
    pub devices: Vec<DeviceNode>,
    /// Bind mounts, in grant order, one per container path.
    pub mounts: Vec<BindMount>,
    /// Supplementary group ids, ascending.
    pub gids: Vec<u32>,
    /// What an optional role could not grant.
    pub warnings: Vec<String>,
    /// Mounts of the roles' CDI devices.
    pub cdi_mounts: Vec<CdiMount>,
    /// `K=V` the roles' CDI devices add to the environment.
    pub env: Vec<String>,
    /// OCI hooks of the roles' CDI devices.
    pub hooks: Vec<crate::cdi::Hook>,
}

/// Why a container's devices could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The stack grants a role the robot does not define.
    #[error("unknown device role `{role}` (this robot has: {})", .known.join(", "))]
    UnknownRole {
        /// The role asked for.
        role: String,
        /// The robot's roles.
        known: Vec<String>,
    },
    /// A node of a required role is not there.
    #[error("role {role}: {}: no such device node", .path.display())]
    Missing {
        /// The role.
        role: String,
        /// The node.
        path: PathBuf,
    },
    /// A wildcard of a required role matched nothing.
    #[error("role {role}: {pattern}: no device node matches")]
    NoMatch {
        /// The role.
        role: String,
        /// The pattern.
        pattern: String,
    },
    /// The path exists but is not a character or block device.
    #[error("role {role}: {}: not a device node (a {found})", .path.display())]
    NotADevice {
        /// The role.
        role: String,
        /// The path.
        path: PathBuf,
        /// What it is instead.
        found: &'static str,
    },
    /// A bind-mount source of a required role is not there.
    #[error("role {role}: {}: nothing there to mount", .path.display())]
    MountMissing {
        /// The role.
        role: String,
        /// The mount source.
        path: PathBuf,
    },
    /// A path could not be examined.
    #[error("role {role}: {source}")]
    Io {
        /// The role.
        role: String,
        /// The failed call and its path.
        #[source]
        source: PathError,
    },
    /// A group name of a required role is not in the robot's group file.
    #[error("role {role}: group `{group}` is not in {}", .file.display())]
    UnknownGroup {
        /// The role.
        role: String,
        /// The group.
        group: String,
        /// The group file read.
        file: PathBuf,
    },
    /// The group file could not be read.
    #[error(transparent)]
    Groups(PathError),
    /// A CDI device of a role cannot be granted.
    #[error("role {role}: CDI device {device}: {reason}")]
    Cdi {
        /// The role.
        role: String,
        /// The qualified device name.
        device: String,
        /// Why.
        reason: String,
    },
    /// Two roles put different things at one container path.
    #[error("{}: role {first} and role {second} grant different {what} there", .container_path.display())]
    Conflict {
        /// Where in the container.
        container_path: PathBuf,
        /// The role that placed it first.
        first: String,
        /// The role that disagrees.
        second: String,
        /// `devices` or `mounts`.
        what: &'static str,
    },
}

impl DeviceError {
    /// Whether the deploy's input is at fault (exit 2) rather than the robot's state.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, DeviceError::UnknownRole { .. })
    }
}

/// Resolves the roles `granted` to one container. `roles` are the robot's effective roles;
/// group names are looked up in `etc_group_root/etc/group` (`/` on a robot).
pub fn resolve(
    roles: &BTreeMap<String, RoleSpec>,
    granted: &[String],
    etc_group_root: &Path,
) -> Result<ResolvedDevices, DeviceError> {
    let mut out = ResolvedDevices::default();
    // container path → (role, node) that placed it, to merge duplicates and catch conflicts.
    let mut placed: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut mounted: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut gids = BTreeSet::new();
    let mut groups: Option<BTreeMap<String, u32>> = None;
    let group_file = etc_group_root.join("etc/group");
    let mut seen = BTreeSet::new();
    let mut cdi_registry = None; // the CDI specs, read once when a role lists a CDI device

    for role_name in granted {
        if !seen.insert(role_name.as_str()) {
            continue;
        }
        let role = roles
            .get(role_name)
            .ok_or_else(|| DeviceError::UnknownRole {
                role: role_name.clone(),
                known: roles.keys().cloned().collect(),
            })?;
        for node in &role.nodes {
            for found in expand(role_name, &node.host, role.optional, &mut out.warnings)? {
                let container = if node.is_glob() {
                    found.clone()
                } else {
                    PathBuf::from(node.container_path())
                };
                let Some(dev) = stat_node(
                    role_name,
                    &found,
                    container,
                    role.optional,
                    node.is_glob(),
                    &mut out.warnings,
                )?
                else {
                    continue;
                };
                match placed.get(&dev.container_path) {
                    None => {
                        placed.insert(dev.container_path.clone(), role_name.clone());
                        out.devices.push(dev);
                    }
                    Some(first) => {
                        let prev = out
                            .devices
                            .iter()
                            .find(|d| d.container_path == dev.container_path)
                            .expect("placed devices are in the list");
                        if (prev.kind, prev.major, prev.minor) != (dev.kind, dev.major, dev.minor) {
                            return Err(DeviceError::Conflict {
                                container_path: dev.container_path,
                                first: first.clone(),
                                second: role_name.clone(),
                                what: "devices",
                            });
                        }
                    }
                }
            }
        }
        for m in &role.mounts {
            let host = PathBuf::from(&m.host);
            match std::fs::metadata(&host) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if role.optional {
                        out.warnings.push(format!(
                            "role {role_name}: {}: nothing there to mount; skipped (optional role)",
                            host.display()
                        ));
                        continue;
                    }
                    return Err(DeviceError::MountMissing {
                        role: role_name.clone(),
                        path: host,
                    });
                }
                Err(e) => {
                    return Err(DeviceError::Io {
                        role: role_name.clone(),
                        source: Err::<(), _>(e).at("stat", &host).unwrap_err(),
                    });
                }
            }
            let container = PathBuf::from(m.container_path());
            match mounted.get(&container) {
                None => {
                    mounted.insert(container.clone(), role_name.clone());
                    out.mounts.push(BindMount {
                        host,
                        container,
                        read_only: m.read_only,
                    });
                }
                Some(first) => {
                    let prev = out
                        .mounts
                        .iter_mut()
                        .find(|b| b.container == container)
                        .expect("mounted paths are in the list");
                    if prev.host != host {
                        return Err(DeviceError::Conflict {
                            container_path: container,
                            first: first.clone(),
                            second: role_name.clone(),
                            what: "mounts",
                        });
                    }
                    // Both roles were granted, so the container gets the wider of the two.
                    prev.read_only &= m.read_only;
                }
            }
        }
        for g in &role.groups {
            if let Ok(n) = g.parse::<u32>() {
                gids.insert(n);
                continue;
            }
            if groups.is_none() {
                groups = Some(read_groups(&group_file)?);
            }
            match groups.as_ref().expect("just read").get(g) {
                Some(&gid) => {
                    gids.insert(gid);
                }
                None if role.optional => out.warnings.push(format!(
                    "role {role_name}: group `{g}` is not in {}; not added (optional role)",
                    group_file.display()
                )),
                None => {
                    return Err(DeviceError::UnknownGroup {
                        role: role_name.clone(),
                        group: g.clone(),
                        file: group_file,
                    });
                }
            }
        }
        grant_cdi(role_name, role, &mut cdi_registry, &mut out)?;
    }
    gids.extend(out.gids.iter().copied());
    out.gids = gids.into_iter().collect();
    Ok(out)
}

/// A role's CDI devices into `out`; `registry` is read on first use.
fn grant_cdi(
    role_name: &str,
    role: &RoleSpec,
    registry: &mut Option<crate::cdi::Registry>,
    out: &mut ResolvedDevices,
) -> Result<(), DeviceError> {
    for name in &role.cdi {
        super::cdi::grant(role_name, name, registry, out)?;
    }
    Ok(())
}

/// `name → gid` from a group(5) file.
fn read_groups(file: &Path) -> Result<BTreeMap<String, u32>, DeviceError> {
    let text = std::fs::read_to_string(file)
        .at("read", file)
        .map_err(DeviceError::Groups)?;
    Ok(parse_groups(&text))
}

/// Lines that do not parse are skipped: group(5) files carry NIS `+` entries and comments
/// that name no local group.
fn parse_groups(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.trim();
            let _password = f.next()?;
            let gid = f.next()?.trim().parse().ok()?;
            (!name.is_empty() && !name.starts_with(['#', '+', '-']))
                .then(|| (name.to_string(), gid))
        })
        .collect()
}

/// The paths a node spec names: itself, or for a pattern every match, sorted. A pattern
/// matching nothing is an error (or a warning for an optional role) here; a plain path is
/// passed through and checked by [`stat_node`].
fn expand(
    role: &str,
    pattern: &str,
    optional: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<PathBuf>, DeviceError> {
    if !pattern.contains(['*', '?']) {
        return Ok(vec![PathBuf::from(pattern)]);
    }
    let mut found = vec![PathBuf::from("/")];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &found {
            if !comp.contains(['*', '?']) {
                next.push(dir.join(comp));
                continue;
            }
            let entries = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                // A directory of the pattern is missing: simply no matches under it.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(DeviceError::Io {
                        role: role.to_string(),
                        source: Err::<(), _>(e).at("list", dir).unwrap_err(),
                    });
                }
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.at("list", dir).map_err(|source| DeviceError::Io {
                    role: role.to_string(),
                    source,
                })?;
                if let Some(name) = entry.file_name().to_str() {
                    // As in a shell, `*` does not match a leading dot.
                    if name.starts_with('.') && !comp.starts_with('.') {
                        continue;
                    }
                    if wildcard_match(comp, name) {
                        names.push(name.to_string());
                    }
                }
            }
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        found = next;
    }
    if found.is_empty() {
        if optional {
            warnings.push(format!(
                "role {role}: {pattern}: no device node matches; skipped (optional role)"
            ));
        } else {
            return Err(DeviceError::NoMatch {
                role: role.to_string(),
                pattern: pattern.to_string(),
            });
        }
    }
    Ok(found)
}

pub use crate::util::glob::wildcard_match;

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

/// Stats `host` (through symlinks: udev names point at the kernel's node). `None` when an
/// optional role's node is missing, or a wildcard matched something that is not a device.
fn stat_node(
    role: &str,
    host: &Path,
    container: PathBuf,
    optional: bool,
    from_glob: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<DeviceNode>, DeviceError> {
    let st = match rustix::fs::stat(host) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => {
            if optional {
                warnings.push(format!(
                    "role {role}: {}: no such device node; skipped (optional role)",
                    host.display()
                ));
                return Ok(None);
            }
            return Err(DeviceError::Missing {
                role: role.to_string(),
                path: host.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(DeviceError::Io {
                role: role.to_string(),
                source: Err::<(), _>(io::Error::from(e))
                    .at("stat", host)
                    .unwrap_err(),
            });
        }
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::CharacterDevice => DeviceKind::Char,
        FileType::BlockDevice => DeviceKind::Block,
        other if from_glob => {
            warnings.push(format!(
                "role {role}: {}: matched, but is a {}, not a device node; skipped",
                host.display(),
                type_name(other)
            ));
            return Ok(None);
        }
        other => {
            return Err(DeviceError::NotADevice {
                role: role.to_string(),
                path: host.to_path_buf(),
                found: type_name(other),
            });
        }
    };
    Ok(Some(DeviceNode {
        host_path: host.to_path_buf(),
        container_path: container,
        kind,
        major: rustix::fs::major(st.st_rdev),
        minor: rustix::fs::minor(st.st_rdev),
        file_mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        access: "rwm".into(),
    }))
}

/// The robot's device roles and the paths each grants (node paths on the robot and in the
/// container, mount sources, CDI names), as `robot.yaml` (`DT_AGENT_CONFIG`) and its profile
/// define them, for the hello (a deploy turns compose's `privileged` and host `devices` into
/// them); `None` when they cannot be read.
pub fn role_paths() -> Option<BTreeMap<String, Vec<String>>> {
    use crate::profile::robot::{DEFAULT_ROBOT_YAML, RobotConfig, effective_roles};
    let path = std::env::var_os("DT_AGENT_CONFIG").unwrap_or(DEFAULT_ROBOT_YAML.into());
    let roles = effective_roles(&RobotConfig::load(Path::new(&path)).ok()?).ok()?;
    Some(
        roles
            .into_iter()
            .map(|(name, r)| {
                let mut paths: Vec<String> = Vec::new();
                for n in &r.nodes {
                    paths.push(n.host.clone());
                    paths.extend(n.container.clone());
                }
                paths.extend(r.mounts.iter().map(|m| m.host.clone()));
                paths.extend(r.cdi.iter().cloned());
                (name, paths)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{MountSpec, NodeSpec};

    #[test]
    fn wildcards() {
        for (p, n, want) in [
            ("i2c-*", "i2c-1", true),
            ("i2c-*", "i2c-", true),
            ("i2c-?", "i2c-13", false),
            ("i2c-1?", "i2c-13", true),
            ("nvhost-*", "nvhost-ctrl-gpu", true),
            ("*gpu", "nvhost-ctrl-gpu", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("video0", "video0", true),
            ("video0", "video01", false),
            ("*", "", true),
        ] {
            assert_eq!(wildcard_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn group_file() {
        let g = parse_groups("root:x:0:\n# comment\n+nis\ni2c:x:998:duckie\nvideo:x:44:\nbad\n");
        assert_eq!(g.get("i2c"), Some(&998));
        assert_eq!(g.get("video"), Some(&44));
        assert_eq!(g.len(), 3);
    }

    fn role(nodes: &[&str], mounts: &[&str], groups: &[&str], optional: bool) -> RoleSpec {
        RoleSpec {
            nodes: nodes.iter().map(|n| NodeSpec::parse(n).unwrap()).collect(),
            mounts: mounts
                .iter()
                .map(|m| MountSpec::parse(m).unwrap())
                .collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            optional,
            ..Default::default()
        }
    }

    #[test]
    fn roles_without_root() {
        // /dev/null is a character device 1:3 on every Linux: enough to check resolution
        // without mknod; the root-only cases live in tests/it/profile.rs.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/group"), "i2c:x:998:\n").unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        let roles: BTreeMap<String, RoleSpec> = [
            (
                "motors",
                role(&["/dev/null:/dev/i2c-1"], &[], &["i2c", "20"], false),
            ),
            (
                "leds",
                role(&["/dev/null:/dev/i2c-1"], &[], &["i2c"], false),
            ),
            ("missing", role(&["/nonexistent/dev/x"], &[], &[], false)),
            (
                "maybe",
                role(
                    &["/nonexistent/dev/x"],
                    &["/nonexistent/sock"],
                    &["nogroup-here"],
                    true,
                ),
            ),
            ("file", role(&[file.to_str().unwrap()], &[], &[], false)),
            (
                "nogroup",
                role(&["/dev/null"], &[], &["nogroup-here"], false),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let grant = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            resolve(&roles, &names, dir.path())
        };
        let r = grant(&["motors", "leds"]).unwrap();
        assert_eq!(r.devices.len(), 1, "one node for two roles: {r:?}");
        let d = &r.devices[0];
        assert_eq!((d.kind, d.major, d.minor), (DeviceKind::Char, 1, 3));
        assert_eq!(d.container_path, Path::new("/dev/i2c-1"));
        assert_eq!(r.gids, [20, 998]);

        let e = grant(&["missing"]).unwrap_err().to_string();
        assert_eq!(e, "role missing: /nonexistent/dev/x: no such device node");
        let e = grant(&["file"]).unwrap_err().to_string();
        assert!(
            e.contains("role file") && e.contains("not a device node (a regular file)"),
            "{e}"
        );
        let e = grant(&["nogroup"]).unwrap_err().to_string();
        assert!(e.contains("group `nogroup-here`"), "{e}");
        let e = grant(&["camera"]).unwrap_err();
        assert!(e.is_bad_input());
        assert!(
            e.to_string()
                .contains("file, leds, maybe, missing, motors, nogroup"),
            "{e}"
        );

        let r = grant(&["maybe"]).unwrap();
        assert!(r.devices.is_empty() && r.mounts.is_empty() && r.gids.is_empty());
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
    }
}
