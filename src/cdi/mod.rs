//! The Container Device Interface (CDI, CNCF; <https://github.com/cncf-tags/container-device-interface>):
//! the spec files vendors install in `/etc/cdi` and `/var/run/cdi`, the fully-qualified device
//! names (`nvidia.com/gpu=all`) that select a device of a spec, and the registry of every
//! device the robot's spec directories define. [`csv`] turns NVIDIA's L4T CSV files into a
//! spec (the Jetson camera). Injection into a container's OCI spec is `agent::cdi` and
//! `agent::devices` (nodes stat'ed at start) with `agent::container::spec`; `agent::cdi` also
//! writes a robot's roles as a spec (`dt-agent cdi export`).
//!
//! Why not the `container-device-interface` crate (cncf-tags, 1.1.1): it builds on the same
//! `oci-spec` 0.10, but its dependencies are not optional and include `jsonschema` (which pulls
//! `reqwest`, `hyper`, `rustls` and `tokio-util` for remote `$ref`s), `clap`, `regex`,
//! `serde_yaml` 0.9 and `lazy_static` — about 450 crates in `cargo tree`, against a robot
//! binary built for size and cross-compiled static for arm64 and armhf. What dt-agent needs of
//! it is small: a serde model of the spec, the name rules, the directory order, and applying
//! edits, which this module and `agent::devices` do in a few hundred lines
//! (docs/security.md, "CDI").
//!
//! Semantics follow the CDI specification (v0.3.0 to v1.1.0): spec files are `*.json` and
//! `*.yaml` in each directory, read in name order; a later directory overrides a device of
//! an earlier one (`/var/run/cdi`, generated at boot, over `/etc/cdi`); two files of one
//! directory defining the same device are a conflict and neither is used. A spec's own
//! `containerEdits` apply with each of its devices, before the device's. A file that does not
//! parse or validate is reported by name and field, and the other files still serve.

pub mod csv;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where specs are read, lowest priority first (CDI's defaults).
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// Overrides [`DEFAULT_SPEC_DIRS`]: directories separated by `:`, lowest priority first.
pub const SPEC_DIRS_ENV: &str = "DT_AGENT_CDI_SPEC_DIRS";

/// The CDI versions whose specs this reader understands.
pub const KNOWN_VERSIONS: [&str; 9] = [
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "0.9.0", "1.0.0", "1.1.0",
];

/// The version dt-agent writes (`cdi generate`, `cdi export`): the oldest that has everything
/// written (`additionalGids` came with 0.7.0), so older Docker and Podman read it.
pub const WRITE_VERSION: &str = "0.7.0";

/// The spec directories in force: `$DT_AGENT_CDI_SPEC_DIRS` or the defaults.
pub fn spec_dirs() -> Vec<PathBuf> {
    match std::env::var(SPEC_DIRS_ENV) {
        Ok(v) if !v.trim().is_empty() => v
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        _ => DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// A CDI spec file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// The CDI version the file follows.
    pub cdi_version: String,
    /// `vendor/class`, e.g. `nvidia.com/gpu`.
    pub kind: String,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The devices.
    pub devices: Vec<Device>,
    /// Edits applied with every device of the spec.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device of a spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// The name after `=`.
    pub name: String,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// What granting it does.
    pub container_edits: ContainerEdits,
}

/// What a device does to a container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    /// `K=V` added to the process's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    /// OCI hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Supplementary groups of the process (CDI 0.7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    /// Intel RDT class (CDI 0.7): parsed so a spec using it is refused by name, not by
    /// "unknown field".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<serde_yaml_ng::Value>,
    /// Network devices moved into the container (CDI 1.0): refused, as `intelRdt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<serde_yaml_ng::Value>,
}

/// A device node edit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// Path on the host; `path` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`; the host node's when absent.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Major number; the host node's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// Minor number; the host node's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// Permission bits of the container's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// Device cgroup access, some of `rwm`; `rwm` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// Owner of the container's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group of the container's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A mount edit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// Source on the host.
    pub host_path: String,
    /// Target inside the container.
    pub container_path: String,
    /// Mount options (`ro`, `nosuid`, `bind`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// File system type; `bind` when absent.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// A hook edit (an OCI hook with the stage it runs at).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    /// `prestart`, `createRuntime`, `createContainer`, `startContainer`, `poststart` or
    /// `poststop`.
    pub hook_name: String,
    /// Absolute path of the program, on the host.
    pub path: String,
    /// Its argv, `argv[0]` included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Seconds before the runtime kills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// The OCI hook stages a CDI hook may name.
pub const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

impl ContainerEdits {
    /// Whether it edits nothing.
    pub fn is_empty(&self) -> bool {
        self == &ContainerEdits::default()
    }

    /// Appends `other`'s edits after this one's.
    pub fn append(&mut self, other: &ContainerEdits) {
        self.env.extend(other.env.iter().cloned());
        self.device_nodes.extend(other.device_nodes.iter().cloned());
        self.hooks.extend(other.hooks.iter().cloned());
        self.mounts.extend(other.mounts.iter().cloned());
        self.additional_gids
            .extend(other.additional_gids.iter().copied());
        if other.intel_rdt.is_some() {
            self.intel_rdt = other.intel_rdt.clone();
        }
        self.net_devices.extend(other.net_devices.iter().cloned());
    }
}

/// A fully-qualified device name: `vendor.com/class=name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    /// `vendor.com`.
    pub vendor: String,
    /// `class`.
    pub class: String,
    /// `name`.
    pub name: String,
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}={}", self.vendor, self.class, self.name)
    }
}

impl QualifiedName {
    /// Parses `vendor.com/class=name`, checking each part by CDI's rules.
    pub fn parse(s: &str) -> Result<QualifiedName, String> {
        let (kind, name) = s.split_once('=').ok_or_else(|| {
            format!("`{s}` is not a CDI device name (expected vendor.com/class=name)")
        })?;
        let (vendor, class) = parse_kind(kind).map_err(|e| format!("`{s}`: {e}"))?;
        check_device_name(name).map_err(|e| format!("`{s}`: {e}"))?;
        Ok(QualifiedName {
            vendor,
            class,
            name: name.to_string(),
        })
    }

    /// `vendor/class`.
    pub fn kind(&self) -> String {
        format!("{}/{}", self.vendor, self.class)
    }
}

/// Whether `s` looks like a CDI device name rather than a host path (`/dev/…`): compose's
/// `devices:` holds both kinds.
pub fn is_qualified_name(s: &str) -> bool {
    !s.starts_with('/') && s.contains('=') && s.contains('/')
}

/// Splits and checks `vendor/class`. A vendor is letters, digits, `-`, `_` and `.`, starting
/// with a letter and ending with a letter or digit; a class the same without `.`.
pub fn parse_kind(kind: &str) -> Result<(String, String), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("kind `{kind}` is not vendor.com/class"))?;
    let part = |what: &str, s: &str, extra: &str| -> Result<(), String> {
        let ok = s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{what} `{s}` must start with a letter, end with a letter or digit, and hold only letters, digits and `{extra}`"
            ))
        }
    };
    part("vendor", vendor, "-_.")?;
    part("class", class, "-_")?;
    Ok((vendor.to_string(), class.to_string()))
}

/// A device name: letters, digits, `-`, `_`, `.` and `:`, starting and ending with a letter or
/// digit.
pub fn check_device_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "device name `{name}` must start and end with a letter or digit and hold only letters, digits, `-`, `_`, `.` and `:`"
        ))
    }
}

/// Why a spec file is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CDI spec {}: {field}: {message}", .file.display())]
pub struct SpecError {
    /// The file.
    pub file: PathBuf,
    /// Where in it (`devices[1].containerEdits.mounts[0].containerPath`), or `(file)`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Parses a spec from JSON or YAML text (JSON is YAML) and validates it; `file` names it in
/// errors.
pub fn parse_spec(file: &Path, text: &str) -> Result<Spec, SpecError> {
    let err = |field: &str, message: String| SpecError {
        file: file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let spec: Spec = serde_yaml_ng::from_str(text).map_err(|e| {
        // serde_yaml_ng says `devices[0].containerEdits: unknown field ...`: split the path off.
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((path, rest))
                if !path.contains(' ') && !path.is_empty() && path != "invalid type" =>
            {
                err(path, rest.to_string())
            }
            _ => err("(file)", msg),
        }
    })?;
    validate(&spec).map_err(|(field, message)| err(&field, message))?;
    Ok(spec)
}

/// Checks a parsed spec against CDI's rules; the error is `(field, message)`.
pub fn validate(spec: &Spec) -> Result<(), (String, String)> {
    if !KNOWN_VERSIONS.contains(&spec.cdi_version.as_str()) {
        return Err((
            "cdiVersion".into(),
            format!(
                "`{}` is not a CDI version this agent knows ({})",
                spec.cdi_version,
                KNOWN_VERSIONS.join(", ")
            ),
        ));
    }
    parse_kind(&spec.kind).map_err(|e| ("kind".to_string(), e))?;
    if spec.devices.is_empty() {
        return Err(("devices".into(), "a spec must define a device".into()));
    }
    validate_edits("containerEdits", &spec.container_edits)?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, d) in spec.devices.iter().enumerate() {
        let at = format!("devices[{i}]");
        check_device_name(&d.name).map_err(|e| (format!("{at}.name"), e))?;
        if !seen.insert(d.name.as_str()) {
            return Err((
                format!("{at}.name"),
                format!("device `{}` is defined twice", d.name),
            ));
        }
        validate_edits(&format!("{at}.containerEdits"), &d.container_edits)?;
        if d.container_edits.is_empty() && spec.container_edits.is_empty() {
            return Err((
                format!("{at}.containerEdits"),
                "a device must edit something".into(),
            ));
        }
    }
    Ok(())
}

fn validate_edits(at: &str, e: &ContainerEdits) -> Result<(), (String, String)> {
    let abs = |field: String, p: &str| -> Result<(), (String, String)> {
        if p.starts_with('/') && !p.split('/').any(|c| c == "..") {
            Ok(())
        } else {
            Err((
                field,
                format!("`{p}` must be an absolute path without `..`"),
            ))
        }
    };
    for (i, kv) in e.env.iter().enumerate() {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err((format!("{at}.env[{i}]"), format!("`{kv}` is not K=V")));
        }
    }
    for (i, n) in e.device_nodes.iter().enumerate() {
        let f = format!("{at}.deviceNodes[{i}]");
        abs(format!("{f}.path"), &n.path)?;
        if let Some(h) = &n.host_path {
            abs(format!("{f}.hostPath"), h)?;
        }
        if let Some(t) = &n.typ
            && !matches!(t.as_str(), "c" | "b" | "u" | "p")
        {
            return Err((
                format!("{f}.type"),
                format!("`{t}` is not one of c, b, u, p"),
            ));
        }
        if let Some(p) = &n.permissions
            && (p.is_empty() || !p.chars().all(|c| "rwm".contains(c)))
        {
            return Err((
                format!("{f}.permissions"),
                format!("`{p}` is not some of r, w, m"),
            ));
        }
        if n.typ.as_deref() == Some("p") && (n.major.is_some() || n.minor.is_some()) {
            return Err((f, "a fifo (type p) has no major or minor".into()));
        }
    }
    for (i, m) in e.mounts.iter().enumerate() {
        let f = format!("{at}.mounts[{i}]");
        if m.host_path.is_empty() {
            return Err((format!("{f}.hostPath"), "missing".into()));
        }
        abs(format!("{f}.containerPath"), &m.container_path)?;
    }
    for (i, h) in e.hooks.iter().enumerate() {
        let f = format!("{at}.hooks[{i}]");
        if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
            return Err((
                format!("{f}.hookName"),
                format!(
                    "`{}` is not an OCI hook ({})",
                    h.hook_name,
                    HOOK_NAMES.join(", ")
                ),
            ));
        }
        abs(format!("{f}.path"), &h.path)?;
    }
    Ok(())
}

/// One device the registry can grant.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredDevice {
    /// The spec file it came from.
    pub file: PathBuf,
    /// The spec's edits followed by the device's.
    pub edits: ContainerEdits,
}

/// Every device of the robot's spec directories, and the files that could not be used.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Qualified name → device.
    pub devices: BTreeMap<String, RegisteredDevice>,
    /// Spec files read, in order.
    pub files: Vec<PathBuf>,
    /// Files (or devices) left out, with why.
    pub errors: Vec<SpecError>,
}

impl Registry {
    /// Reads every `*.json`, `*.yaml` and `*.yml` of `dirs` (lowest priority first; a missing
    /// directory is empty).
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut reg = Registry::default();
        for dir in dirs {
            let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension()
                            .and_then(|x| x.to_str())
                            .is_some_and(|x| matches!(x, "json" | "yaml" | "yml"))
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    reg.errors.push(SpecError {
                        file: dir.clone(),
                        field: "(directory)".into(),
                        message: format!("cannot list: {e}"),
                    });
                    continue;
                }
            };
            names.sort();
            // Devices of this directory: a second file defining one is a conflict.
            let mut here: BTreeMap<String, PathBuf> = BTreeMap::new();
            let mut conflicted = std::collections::BTreeSet::new();
            for file in names {
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        reg.errors.push(SpecError {
                            file: file.clone(),
                            field: "(file)".into(),
                            message: format!("cannot read: {e}"),
                        });
                        continue;
                    }
                };
                reg.files.push(file.clone());
                let spec = match parse_spec(&file, &text) {
                    Ok(s) => s,
                    Err(e) => {
                        reg.errors.push(e);
                        continue;
                    }
                };
                for (i, d) in spec.devices.iter().enumerate() {
                    let name = format!("{}={}", spec.kind, d.name);
                    if let Some(first) = here.get(&name) {
                        reg.errors.push(SpecError {
                            file: file.clone(),
                            field: format!("devices[{i}].name"),
                            message: format!(
                                "{name} is also defined by {}; neither is used",
                                first.display()
                            ),
                        });
                        conflicted.insert(name);
                        continue;
                    }
                    here.insert(name.clone(), file.clone());
                    let mut edits = spec.container_edits.clone();
                    edits.append(&d.container_edits);
                    reg.devices.insert(
                        name,
                        RegisteredDevice {
                            file: file.clone(),
                            edits,
                        },
                    );
                }
            }
            for name in conflicted {
                reg.devices.remove(&name);
            }
        }
        reg
    }

    /// Whether some spec defines a device of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.devices
            .keys()
            .any(|k| k.split_once('=').is_some_and(|(kd, _)| kd == kind))
    }
}

#[cfg(test)]
mod tests;
