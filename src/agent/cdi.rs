//! CDI on the robot: a role's `cdi:` devices resolved against the robot's spec directories
//! and turned into what `agent::container::spec` writes (device nodes stat'ed now, mounts,
//! environment, hooks, groups); the check that a container asks only for CDI devices its roles
//! grant; `dt-agent cdi generate` (the Jetson's L4T CSV files as a spec, also at daemon start
//! when no spec of that kind exists); `dt-agent cdi export` (the robot's roles as a spec of
//! kind [`EXPORT_KIND`], so `docker run --device duckietown.org/role=motors` grants what
//! dt-agent grants); and `dt-agent cdi hook ldconfig`, the `createContainer` hook of the
//! generated spec.
//!
//! Hooks of a spec are passed to the runtime as OCI hooks at the stage they name: runc and
//! crun run every stage CDI allows. A spec is trusted as Docker and Podman trust it: only root
//! can write the spec directories, and a hook runs as root on the robot.
//! `intelRdt` and `netDevices` are refused by name: dt-agent does not apply them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::cdi::{self, ContainerEdits, Registry, Spec};
use crate::profile::RoleSpec;

use super::devices::{self, BindMount, DeviceError, DeviceKind, DeviceNode, ResolvedDevices};

/// The kind `dt-agent cdi export` writes.
pub const EXPORT_KIND: &str = "duckietown.org/role";

/// Why a CDI device could not be granted.
pub(super) fn cdi_error(role: &str, device: &str, reason: String) -> DeviceError {
    DeviceError::Cdi {
        role: role.to_string(),
        device: device.to_string(),
        reason,
    }
}

/// Resolves the CDI device `name` of `role` into `out`. `registry` is loaded on first use.
pub(super) fn grant(
    role: &str,
    name: &str,
    registry: &mut Option<Registry>,
    out: &mut ResolvedDevices,
) -> Result<(), DeviceError> {
    let reg = registry.get_or_insert_with(|| Registry::load(&cdi::spec_dirs()));
    let Some(dev) = reg.devices.get(name) else {
        let mut reason = format!(
            "no CDI spec defines it (read {})",
            match reg.files.len() {
                0 => format!("no spec in {}", join_dirs(&cdi::spec_dirs())),
                _ => reg
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        );
        for e in &reg.errors {
            reason.push_str(&format!("; not used: {e}"));
        }
        if name.starts_with(crate::cdi::csv::KIND) {
            reason
                .push_str("; on a Jetson, `dt-agent cdi generate` makes it from the L4T CSV files");
        }
        return Err(cdi_error(role, name, reason));
    };
    apply(role, name, &dev.file, &dev.edits, out)
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds one device's edits to `out`, merging what is already there.
fn apply(
    role: &str,
    name: &str,
    file: &Path,
    edits: &ContainerEdits,
    out: &mut ResolvedDevices,
) -> Result<(), DeviceError> {
    let refuse = |what: &str| {
        cdi_error(
            role,
            name,
            format!("{}: `{what}` is not supported by dt-agent", file.display()),
        )
    };
    if edits.intel_rdt.is_some() {
        return Err(refuse("intelRdt"));
    }
    if !edits.net_devices.is_empty() {
        return Err(refuse("netDevices"));
    }
    for n in &edits.device_nodes {
        let node = node_for(role, name, n)?;
        match out
            .devices
            .iter()
            .find(|d| d.container_path == node.container_path)
        {
            None => out.devices.push(node),
            Some(prev)
                if (prev.kind, prev.major, prev.minor) == (node.kind, node.major, node.minor) => {}
            Some(_) => {
                return Err(DeviceError::Conflict {
                    container_path: node.container_path,
                    first: "an earlier grant".into(),
                    second: format!("{role} ({name})"),
                    what: "devices",
                });
            }
        }
    }
    for m in &edits.mounts {
        let container = PathBuf::from(&m.container_path);
        let host = PathBuf::from(&m.host_path);
        let clash = out
            .mounts
            .iter()
            .map(|b| (&b.container, &b.host))
            .chain(out.cdi_mounts.iter().map(|c| (&c.container, &c.host)))
            .find(|(c, _)| **c == container);
        match clash {
            Some((_, h)) if *h == host => continue,
            Some(_) => {
                return Err(DeviceError::Conflict {
                    container_path: container,
                    first: "an earlier grant".into(),
                    second: format!("{role} ({name})"),
                    what: "mounts",
                });
            }
            None => {}
        }
        if m.typ.as_deref().unwrap_or("bind") == "bind" && std::fs::metadata(&host).is_err() {
            return Err(cdi_error(
                role,
                name,
                format!("{}: nothing there to mount", host.display()),
            ));
        }
        out.cdi_mounts.push(devices::CdiMount {
            host,
            container,
            typ: m.typ.clone().unwrap_or_else(|| "bind".into()),
            options: m.options.clone(),
        });
    }
    for kv in &edits.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        out.env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        out.env.push(kv.clone());
    }
    for h in &edits.hooks {
        if !out.hooks.contains(h) {
            out.hooks.push(h.clone());
        }
    }
    for g in &edits.additional_gids {
        if !out.gids.contains(g) {
            out.gids.push(*g);
        }
    }
    out.gids.sort_unstable();
    Ok(())
}

/// A CDI device node: what the spec says, the rest read from the host node now.
fn node_for(role: &str, name: &str, n: &cdi::DeviceNode) -> Result<DeviceNode, DeviceError> {
    let host = PathBuf::from(n.host_path.as_deref().unwrap_or(&n.path));
    let st = rustix::fs::stat(&host);
    let given = match (n.typ.as_deref(), n.major, n.minor) {
        (Some("b"), Some(ma), Some(mi)) => Some((DeviceKind::Block, ma, mi)),
        (Some("c" | "u"), Some(ma), Some(mi)) => Some((DeviceKind::Char, ma, mi)),
        _ => None,
    };
    if n.typ.as_deref() == Some("p") {
        return Err(cdi_error(
            role,
            name,
            format!("{}: fifo device nodes are not supported", n.path),
        ));
    }
    let (kind, major, minor, mode, uid, gid) = match (&st, given) {
        (_, Some((k, ma, mi))) => {
            let (mode, uid, gid) = st
                .as_ref()
                .map(|s| (s.st_mode & 0o7777, s.st_uid, s.st_gid))
                .unwrap_or((0o666, 0, 0));
            (k, ma as u32, mi as u32, mode, uid, gid)
        }
        (Ok(s), None) => {
            let kind = match rustix::fs::FileType::from_raw_mode(s.st_mode) {
                rustix::fs::FileType::CharacterDevice => DeviceKind::Char,
                rustix::fs::FileType::BlockDevice => DeviceKind::Block,
                _ => {
                    return Err(cdi_error(
                        role,
                        name,
                        format!("{}: not a device node", host.display()),
                    ));
                }
            };
            (
                kind,
                rustix::fs::major(s.st_rdev),
                rustix::fs::minor(s.st_rdev),
                s.st_mode & 0o7777,
                s.st_uid,
                s.st_gid,
            )
        }
        (Err(e), None) => {
            return Err(cdi_error(
                role,
                name,
                format!("{}: {}", host.display(), std::io::Error::from(*e)),
            ));
        }
    };
    Ok(DeviceNode {
        host_path: host,
        container_path: PathBuf::from(&n.path),
        kind,
        major,
        minor,
        file_mode: n.file_mode.unwrap_or(mode) & 0o7777,
        uid: n.uid.unwrap_or(uid),
        gid: n.gid.unwrap_or(gid),
        access: n.permissions.clone().unwrap_or_else(|| "rwm".into()),
    })
}

/// Checks that every CDI device a container asks for (`devices:` of its service) is listed by
/// a role it is granted. The error names the device and the roles that would grant it.
pub fn check_requests(
    roles: &BTreeMap<String, RoleSpec>,
    granted: &[String],
    requested: &[String],
) -> Result<(), String> {
    for name in requested {
        cdi::QualifiedName::parse(name)?;
        let covered = granted
            .iter()
            .any(|r| roles.get(r).is_some_and(|spec| spec.cdi.contains(name)));
        if covered {
            continue;
        }
        let would: Vec<&str> = roles
            .iter()
            .filter(|(_, spec)| spec.cdi.contains(name))
            .map(|(r, _)| r.as_str())
            .collect();
        let granted_text = if granted.is_empty() {
            "none".to_string()
        } else {
            granted.join(", ")
        };
        return Err(if would.is_empty() {
            format!(
                "CDI device `{name}` is not granted: no role of this robot lists it (roles granted: {granted_text})"
            )
        } else {
            format!(
                "CDI device `{name}` is not granted by the roles granted ({granted_text}); grant one of: {} (`x-duckiebot: {{ devices: [{}] }}`)",
                would.join(", "),
                would[0]
            )
        });
    }
    Ok(())
}

/// The robot's roles as one CDI spec of kind [`EXPORT_KIND`], each role a device with exactly
/// what dt-agent resolves for it now (nodes stat'ed, wildcards expanded, groups as numbers,
/// its CDI devices' edits). Roles that resolve to nothing, or fail to resolve, are left out
/// with a warning.
pub fn export(roles: &BTreeMap<String, RoleSpec>, etc_root: &Path) -> (Spec, Vec<String>) {
    let mut warnings = Vec::new();
    let mut devices_out = Vec::new();
    for name in roles.keys() {
        let r = match devices::resolve(roles, std::slice::from_ref(name), etc_root) {
            Ok(r) => r,
            Err(e) => {
                warnings.push(format!("role {name} left out: {e}"));
                continue;
            }
        };
        warnings.extend(r.warnings.iter().cloned());
        let edits = edits_of(&r);
        if edits.is_empty() {
            continue;
        }
        devices_out.push(cdi::Device {
            name: name.clone(),
            container_edits: edits,
            ..Default::default()
        });
    }
    let spec = Spec {
        cdi_version: cdi::WRITE_VERSION.into(),
        kind: EXPORT_KIND.into(),
        devices: devices_out,
        ..Default::default()
    };
    (spec, warnings)
}

fn edits_of(r: &ResolvedDevices) -> ContainerEdits {
    let mut e = ContainerEdits {
        env: r.env.clone(),
        hooks: r.hooks.clone(),
        additional_gids: r.gids.clone(),
        ..Default::default()
    };
    for d in &r.devices {
        e.device_nodes.push(cdi::DeviceNode {
            path: d.container_path.to_string_lossy().into_owned(),
            host_path: (d.host_path != d.container_path)
                .then(|| d.host_path.to_string_lossy().into_owned()),
            typ: Some(match d.kind {
                DeviceKind::Char => "c".into(),
                DeviceKind::Block => "b".into(),
            }),
            major: Some(d.major.into()),
            minor: Some(d.minor.into()),
            file_mode: Some(d.file_mode),
            permissions: Some(d.access.clone()),
            uid: Some(d.uid),
            gid: Some(d.gid),
        });
    }
    for BindMount {
        host,
        container,
        read_only,
    } in &r.mounts
    {
        let mut options = vec!["rbind".to_string(), "rprivate".into()];
        if *read_only {
            options.push("ro".into());
        }
        e.mounts.push(cdi::Mount {
            host_path: host.to_string_lossy().into_owned(),
            container_path: container.to_string_lossy().into_owned(),
            options,
            typ: Some("bind".into()),
        });
    }
    for m in &r.cdi_mounts {
        e.mounts.push(cdi::Mount {
            host_path: m.host.to_string_lossy().into_owned(),
            container_path: m.container.to_string_lossy().into_owned(),
            options: m.options.clone(),
            typ: Some(m.typ.clone()),
        });
    }
    e
}

/// What `cdi generate` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    /// The spec file written.
    pub file: PathBuf,
    /// Its devices (`nvidia.com/gpu=l4t`, …).
    pub devices: Vec<String>,
    /// Paths left out.
    pub warnings: Vec<String>,
}

/// The CSV directory in force: `$DT_AGENT_L4T_CSV_DIR` or JetPack's.
pub fn csv_dir() -> PathBuf {
    std::env::var_os(cdi::csv::CSV_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(cdi::csv::DEFAULT_CSV_DIR))
}

/// Writes the spec made from the CSV files of `csv_dir` into `out_dir` (atomically), with
/// `hook_program` as the ldconfig hook.
pub fn generate(csv_dir: &Path, out_dir: &Path, hook_program: &Path) -> Result<Generated, String> {
    let files = cdi::csv::read_dir(csv_dir)?;
    if files.is_empty() {
        return Err(format!("{}: no *.csv file", csv_dir.display()));
    }
    let ld_conf = Path::new(cdi::csv::LD_CONF);
    let (spec, warnings) = cdi::csv::to_spec(&cdi::csv::Generate {
        files: &files,
        hook_program,
        ld_conf: ld_conf.exists().then_some(ld_conf),
    });
    if spec.devices.is_empty() {
        return Err(format!(
            "{}: nothing the CSV files name is on this robot ({})",
            csv_dir.display(),
            warnings.join("; ")
        ));
    }
    let file = out_dir.join(cdi::csv::SPEC_FILE);
    let mut text = String::from(
        "# Written by `dt-agent cdi generate` from NVIDIA's L4T CSV files; rewritten at boot.\n",
    );
    text.push_str(&serde_yaml_ng::to_string(&spec).map_err(|e| e.to_string())?);
    crate::util::fs::create_dir_all(out_dir).map_err(|e| e.to_string())?;
    crate::util::fs::atomic_write(&file, text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(Generated {
        file,
        devices: spec
            .devices
            .iter()
            .map(|d| format!("{}={}", spec.kind, d.name))
            .collect(),
        warnings,
    })
}

/// At daemon start: generates the L4T spec when the robot has the CSV files and no spec of
/// kind `nvidia.com/gpu` exists (a JetPack with `nvidia-ctk` installs its own). `None` when
/// there was nothing to do.
pub fn generate_at_start(hook_program: &Path) -> Option<Result<Generated, String>> {
    let dir = csv_dir();
    if !dir.is_dir() {
        return None;
    }
    let dirs = cdi::spec_dirs();
    let reg = Registry::load(&dirs);
    let ours = dirs.last()?.join(cdi::csv::SPEC_FILE);
    let others = reg
        .devices
        .iter()
        .any(|(k, d)| k.starts_with(&format!("{}=", cdi::csv::KIND)) && d.file != ours);
    if others {
        return None;
    }
    Some(generate(&dir, dirs.last()?, hook_program))
}

/// `dt-agent cdi hook ldconfig DIR…`, run by the runtime as a `createContainer` hook with the
/// container's state (OCI, JSON) on stdin: runs the robot's `ldconfig -r ROOTFS DIR…` so the
/// loader inside finds the libraries the spec mounted. `-r` chroots before reading anything,
/// so the image's symlinks cannot point ldconfig at the robot's files; the robot's own
/// ldconfig (not the image's) runs, as nvidia-ctk's `update-ldcache` does, because a binary of
/// the image would run with every capability before the container's limits apply.
pub fn ldconfig_hook(dirs: &[String]) -> Result<(), String> {
    let mut state = String::new();
    std::io::stdin()
        .read_to_string(&mut state)
        .map_err(|e| format!("reading the container state: {e}"))?;
    let state: serde_json::Value =
        serde_json::from_str(&state).map_err(|e| format!("the container state: {e}"))?;
    let bundle = state["bundle"]
        .as_str()
        .ok_or("the container state has no bundle")?;
    let config_path = Path::new(bundle).join("config.json");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let root = config["root"]["path"]
        .as_str()
        .ok_or("config.json has no root.path")?;
    let root = Path::new(bundle).join(root);
    let ldconfig = [
        "/sbin/ldconfig.real",
        "/sbin/ldconfig",
        "/usr/sbin/ldconfig",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .ok_or("no ldconfig on this robot (/sbin/ldconfig)")?;
    let dirs: BTreeSet<&String> = dirs.iter().filter(|d| d.starts_with('/')).collect();
    let out = std::process::Command::new(ldconfig)
        .arg("-r")
        .arg(&root)
        .args(dirs)
        .output()
        .map_err(|e| format!("{}: {e}", ldconfig.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -r {}: {}",
            ldconfig.display(),
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The CDI devices' mounts as OCI mounts. A bind mount without `bind` or `rbind` among its
/// options gets `rbind`: runc and crun only bind with the flag.
pub(crate) fn oci_mounts(
    r: &ResolvedDevices,
) -> Result<Vec<oci_spec::runtime::Mount>, crate::runtime::RuntimeError> {
    r.cdi_mounts
        .iter()
        .map(|m| {
            let mut opts: Vec<&str> = m.options.iter().map(String::as_str).collect();
            if m.typ == "bind" && !opts.iter().any(|o| *o == "bind" || *o == "rbind") {
                opts.push("rbind");
            }
            crate::runtime::spec::mount(
                &m.container.to_string_lossy(),
                &m.typ,
                &m.host.to_string_lossy(),
                &opts,
            )
        })
        .collect()
}

/// The CDI devices' environment over the process's (a device's `K=V` replaces `K`).
pub(crate) fn add_env(env: &mut Vec<String>, r: &ResolvedDevices) {
    let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    for kv in &r.env {
        let k = key(kv);
        env.retain(|e| key(e) != k);
        env.push(kv.clone());
    }
}

/// The CDI devices' hooks as the spec's OCI hooks, each at the stage it names; `None` when
/// there are none.
pub(crate) fn oci_hooks(
    r: &ResolvedDevices,
) -> Result<Option<oci_spec::runtime::Hooks>, crate::runtime::RuntimeError> {
    use oci_spec::runtime::{Hook, HookBuilder, HooksBuilder};
    if r.hooks.is_empty() {
        return Ok(None);
    }
    let mut stages: BTreeMap<&str, Vec<Hook>> = BTreeMap::new();
    for h in &r.hooks {
        let mut b = HookBuilder::default().path(&h.path);
        if !h.args.is_empty() {
            b = b.args(h.args.clone());
        }
        if !h.env.is_empty() {
            b = b.env(h.env.clone());
        }
        if let Some(t) = h.timeout {
            b = b.timeout(t);
        }
        stages
            .entry(h.hook_name.as_str())
            .or_default()
            .push(b.build()?);
    }
    let mut hooks = HooksBuilder::default();
    for (stage, list) in stages {
        hooks = match stage {
            "prestart" =>
            {
                #[allow(deprecated)]
                hooks.prestart(list)
            }
            "createRuntime" => hooks.create_runtime(list),
            "createContainer" => hooks.create_container(list),
            "startContainer" => hooks.start_container(list),
            "poststart" => hooks.poststart(list),
            "poststop" => hooks.poststop(list),
            // The parser admits only the names above.
            _ => hooks,
        };
    }
    Ok(Some(hooks.build()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(cdi: &[&str]) -> RoleSpec {
        RoleSpec {
            cdi: cdi.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_must_be_listed_by_a_granted_role() {
        let roles: BTreeMap<String, RoleSpec> = [
            ("camera", role(&["nvidia.com/gpu=l4t"])),
            ("gpu", role(&["nvidia.com/gpu=l4t", "nvidia.com/gpu=all"])),
            ("motors", role(&[])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_requests(&roles, &g(&["camera"]), &g(&["nvidia.com/gpu=l4t"])).unwrap();
        check_requests(&roles, &g(&[]), &g(&[])).unwrap();
        let e = check_requests(&roles, &g(&["motors"]), &g(&["nvidia.com/gpu=l4t"])).unwrap_err();
        assert!(
            e.contains("`nvidia.com/gpu=l4t`")
                && e.contains("(motors)")
                && e.contains("grant one of: camera, gpu"),
            "{e}"
        );
        let e = check_requests(&roles, &g(&[]), &g(&["vendor.com/x=y"])).unwrap_err();
        assert!(
            e.contains("no role of this robot lists it") && e.contains("none"),
            "{e}"
        );
        let e = check_requests(&roles, &g(&["camera"]), &g(&["/dev/video0"])).unwrap_err();
        assert!(e.contains("not a CDI device name"), "{e}");
    }

    #[test]
    fn edits_merge_and_unsupported_ones_are_refused() {
        let mut out = ResolvedDevices::default();
        let edits = ContainerEdits {
            env: vec!["A=1".into(), "B=2".into()],
            device_nodes: vec![cdi::DeviceNode {
                path: "/dev/card0".into(),
                host_path: Some("/dev/null".into()),
                permissions: Some("rw".into()),
                ..Default::default()
            }],
            mounts: vec![cdi::Mount {
                host_path: "/dev/null".into(),
                container_path: "/opt/lib.so".into(),
                options: vec!["ro".into()],
                typ: None,
            }],
            hooks: vec![cdi::Hook {
                hook_name: "createContainer".into(),
                path: "/bin/true".into(),
                ..Default::default()
            }],
            additional_gids: vec![44],
            ..Default::default()
        };
        let f = Path::new("/etc/cdi/x.yaml");
        apply("camera", "x.com/y=z", f, &edits, &mut out).unwrap();
        // Granted twice (two roles listing it): nothing doubles.
        apply("gpu", "x.com/y=z", f, &edits, &mut out).unwrap();
        assert_eq!(out.devices.len(), 1);
        let d = &out.devices[0];
        assert_eq!(
            (d.kind, d.major, d.minor, d.access.as_str()),
            (DeviceKind::Char, 1, 3, "rw")
        );
        assert_eq!(out.cdi_mounts.len(), 1);
        assert_eq!(out.hooks.len(), 1);
        assert_eq!(out.gids, [44]);
        assert_eq!(out.env, ["A=1", "B=2"]);
        let m = oci_mounts(&out).unwrap();
        assert_eq!(m[0].options().as_ref().unwrap(), &["ro", "rbind"]);
        let hooks = oci_hooks(&out).unwrap().unwrap();
        assert_eq!(hooks.create_container().as_ref().unwrap().len(), 1);
        let mut env = vec!["A=0".to_string(), "PATH=/bin".into()];
        add_env(&mut env, &out);
        assert_eq!(env, ["PATH=/bin", "A=1", "B=2"]);

        // Another file at the same container path is a conflict; a missing source is named.
        let mut other = edits.clone();
        other.mounts[0].host_path = "/dev/zero".into();
        let e = apply("imu", "x.com/y=w", f, &other, &mut out).unwrap_err();
        assert!(e.to_string().contains("/opt/lib.so"), "{e}");
        let mut gone = ContainerEdits::default();
        gone.mounts.push(cdi::Mount {
            host_path: "/nonexistent/lib.so".into(),
            container_path: "/lib.so".into(),
            ..Default::default()
        });
        let e = apply("imu", "x.com/y=w", f, &gone, &mut out).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lib.so"), "{e}");
        let rdt = ContainerEdits {
            intel_rdt: Some(serde_yaml_ng::Value::Null),
            ..Default::default()
        };
        let e = apply("imu", "x.com/y=w", f, &rdt, &mut out).unwrap_err();
        assert!(
            e.to_string().contains("intelRdt") && e.to_string().contains("x.yaml"),
            "{e}"
        );
    }
}
