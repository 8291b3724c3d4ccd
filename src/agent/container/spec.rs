//! A container's OCI runtime spec: the image's defaults, the user's overrides, the devices its
//! roles grant, and Docker's default sandbox (`runtime::spec`) — nothing more. No
//! `--privileged`, no CAP_SYS_ADMIN: a role adds device nodes, a device cgroup rule for each
//! node, bind mounts and supplementary groups.

use std::path::Path;

use oci_spec::runtime::{
    Linux, LinuxBuilder, LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResources, LinuxResourcesBuilder, Mount, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::{ContainerConfig, ContainerError, NetworkMode, VolumeSource};
use crate::agent::devices::{DeviceKind, ResolvedDevices};
use crate::oci::config::ImageConfig;
use crate::runtime::RuntimeError;
use crate::runtime::spec::{
    MASKED_PATHS, READONLY_PATHS, capabilities_for, default_device_rules, device_rule, mount,
    nofile_limit, standard_mounts,
};
use crate::runtime::user::ExecUser;

/// `PATH` for an image that sets none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The cgroup parent of every container: `/sys/fs/cgroup/<controller>/dt-agent/<name>` on
/// cgroup v1, `/sys/fs/cgroup/dt-agent/<name>` on v2.
pub const CGROUP_PARENT: &str = "/dt-agent";

/// The process a container runs: Docker's rules for ENTRYPOINT and CMD. An entrypoint given
/// at run time drops the image's CMD as well.
pub fn command_line(cfg: &ContainerConfig, image: &ImageConfig) -> Vec<String> {
    let ic = image.config.clone().unwrap_or_default();
    match &cfg.entrypoint {
        Some(ep) => ep.iter().chain(cfg.cmd.iter().flatten()).cloned().collect(),
        None => ic
            .entrypoint
            .iter()
            .flatten()
            .chain(cfg.cmd.as_ref().or(ic.cmd.as_ref()).into_iter().flatten())
            .cloned()
            .collect(),
    }
}

/// The environment: the image's, then the user's (a user's `K=V` replaces the image's `K`),
/// with a `PATH` when neither sets one and `HOSTNAME` as Docker sets it.
pub fn environment(cfg: &ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let ic = image.config.clone().unwrap_or_default();
    let mut env: Vec<String> = ic.env.unwrap_or_default();
    let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    for kv in &cfg.env {
        let k = key(kv);
        env.retain(|e| key(e) != k);
        env.push(kv.clone());
    }
    if !env.iter().any(|e| key(e) == "PATH") {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| key(e) == "HOSTNAME") {
        env.insert(0, format!("HOSTNAME={hostname}"));
    }
    env
}

/// The process's working directory: the user's `--workdir`, else the image's `WorkingDir`,
/// else `/` — refused when [`check_workdir`] refuses it.
pub fn working_dir(cfg: &ContainerConfig, image: &ImageConfig) -> Result<String, ContainerError> {
    let from_image = image.config.as_ref().and_then(|c| c.working_dir.clone());
    let cwd = cfg
        .workdir
        .clone()
        .or(from_image)
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    check_workdir(&cwd).map_err(ContainerError::BadSpec)?;
    Ok(cwd)
}

/// Refuses a working directory through a process's file descriptors (`/proc/self/fd/N`,
/// `/proc/thread-self/fd/N`, `/proc/<pid>/fd/N`, `/proc/<pid>/task/<tid>/fd/N`).
///
/// CVE-2024-21626: runc before 1.1.12 leaked a host directory fd (the cgroup root) into the
/// container's init, and `chdir` to `/proc/self/fd/N` then gave the process a working
/// directory on the host — a full escape from an image's `WorkingDir` or a `-w` flag. The
/// robot's runc may be old or patched (distributions backport without changing the version),
/// so this does not depend on the version: no real workload needs its cwd there. The path is
/// walked lexically (`//`, `.`, `..`) so `/x/../proc/self/fd/7` and `/proc/self/fd/7/../..`
/// are caught too; a symlink inside the image pointing there is runc's fix's to catch.
pub fn check_workdir(cwd: &str) -> Result<(), String> {
    let under_fd = |parts: &[&str]| {
        parts.first() == Some(&"proc")
            && match parts.get(1) {
                Some(&"self" | &"thread-self") => true,
                Some(p) => p.bytes().all(|b| b.is_ascii_digit()),
                None => false,
            }
            && parts.iter().skip(2).any(|p| *p == "fd")
    };
    // Every step of the walk is checked, not only where it ends: the kernel resolves
    // `/proc/self/fd/7/../..` through the descriptor and then up the *host's* tree, so a `..`
    // after the fd must not make the path look harmless.
    let mut parts: Vec<&str> = Vec::new();
    let mut through_fd = false;
    for c in cwd.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
        through_fd |= under_fd(&parts);
    }
    if through_fd {
        return Err(format!(
            "working directory `{cwd}` is refused: a path under /proc/<pid>/fd (or /proc/self/fd, \
             /proc/thread-self/fd) can reach the host through a leaked descriptor \
             (CVE-2024-21626); use a directory inside the image"
        ));
    }
    Ok(())
}

/// Everything the spec is made of.
pub struct SpecInput<'a> {
    /// What the user asked for.
    pub config: &'a ContainerConfig,
    /// The image's configuration.
    pub image: &'a ImageConfig,
    /// The container's root (the overlay's mount point).
    pub rootfs: &'a Path,
    /// Where `hosts`, `hostname` and `resolv.conf` for the container were written.
    pub bundle: &'a Path,
    /// The user, resolved against the image.
    pub user: ExecUser,
    /// The granted roles' devices, mounts and groups.
    pub devices: &'a ResolvedDevices,
    /// Where named volumes live.
    pub volumes_dir: &'a Path,
    /// The hostname inside.
    pub hostname: String,
    /// The working directory, from [`working_dir`] (checked).
    pub cwd: String,
}

/// Builds the spec.
pub fn runtime_spec(input: &SpecInput<'_>) -> Result<Spec, RuntimeError> {
    let cfg = input.config;
    let process = process_for(input)?;
    // Host network means the host's UTS namespace as well (ROS resolves peers by hostname),
    // unless a hostname was asked for.
    let own_net = cfg.network != NetworkMode::Host;
    let uts = own_net || cfg.hostname.is_some();
    let linux = linux_for(input, own_net, uts)?;
    let mounts = mounts_for(input)?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(false)
                .build()?,
        )
        .hostname(input.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?;
    if !uts {
        // The host's UTS namespace: runc refuses to set a hostname there.
        spec.set_hostname(None);
    }
    spec.set_hooks(super::super::cdi::oci_hooks(input.devices)?);
    Ok(spec)
}

/// The container's process: command line, environment, working directory, and the user with
/// the supplementary groups its devices need, under Docker's default capabilities and limits.
fn process_for(input: &SpecInput<'_>) -> Result<Process, RuntimeError> {
    let cfg = input.config;
    let args = command_line(cfg, input.image);
    let mut env = environment(cfg, input.image, &input.hostname);
    super::super::cdi::add_env(&mut env, input.devices);
    let cwd = input.cwd.clone();

    let mut gids = input.user.additional_gids.clone();
    for g in &input.devices.gids {
        if !gids.contains(g) && *g != input.user.gid {
            gids.push(*g);
        }
    }
    Ok(ProcessBuilder::default()
        .terminal(cfg.tty)
        .user(
            UserBuilder::default()
                .uid(input.user.uid)
                .gid(input.user.gid)
                .additional_gids(gids)
                .umask(0o022u32)
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities_for(input.user.uid)?)
        .no_new_privileges(false)
        .rlimits(rlimits_for(cfg)?)
        .build()?)
}

/// The process's resource limits: the default open-files limit unless the container sets its
/// own, then each of its `ulimits` (names checked at create).
fn rlimits_for(cfg: &ContainerConfig) -> Result<Vec<PosixRlimit>, RuntimeError> {
    let mut out = Vec::new();
    if !cfg.ulimits.iter().any(|u| u.name == "nofile") {
        out.push(nofile_limit()?);
    }
    for u in &cfg.ulimits {
        // oci-spec names the types as the runtime spec does: `RLIMIT_NOFILE`.
        let typ: PosixRlimitType = serde_json::from_value(serde_json::Value::String(format!(
            "RLIMIT_{}",
            u.name.to_ascii_uppercase()
        )))
        .map_err(|_| {
            RuntimeError::Spec(oci_spec::OciSpecError::Other(format!(
                "unknown ulimit `{}`",
                u.name
            )))
        })?;
        out.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(u.soft)
                .hard(u.hard)
                .build()?,
        );
    }
    Ok(out)
}

/// The `linux` section: namespaces (`own_net` and `uts` say whether the network and UTS
/// namespaces are the container's own), the role devices with their cgroup rules, the cgroup
/// path and resource limits, and the masked and read-only paths.
fn linux_for(input: &SpecInput<'_>, own_net: bool, uts: bool) -> Result<Linux, RuntimeError> {
    let cfg = input.config;
    let mut ns_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
    ];
    if uts {
        ns_types.push(LinuxNamespaceType::Uts);
    }
    if own_net {
        ns_types.push(LinuxNamespaceType::Network);
    }
    let namespaces: Vec<LinuxNamespace> = ns_types
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<_, _>>()?;

    let (devices, rules) = devices_for(input.devices)?;
    let resources = resources_for(cfg, rules)?;

    Ok(LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(devices)
        .cgroups_path(format!("{CGROUP_PARENT}/{}", cfg.name))
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .resources(resources)
        .build()?)
}

/// The role devices as OCI device nodes, and the device cgroup rules: Docker's defaults plus
/// one `rwm` rule for each node.
fn devices_for(
    resolved: &ResolvedDevices,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), RuntimeError> {
    let mut rules = default_device_rules()?;
    let mut devices = Vec::new();
    for d in &resolved.devices {
        let typ = match d.kind {
            DeviceKind::Char => LinuxDeviceType::C,
            DeviceKind::Block => LinuxDeviceType::B,
        };
        devices.push(
            LinuxDeviceBuilder::default()
                .path(d.container_path.clone())
                .typ(typ)
                .major(d.major as i64)
                .minor(d.minor as i64)
                .file_mode(d.file_mode & 0o7777)
                .uid(d.uid)
                .gid(d.gid)
                .build()?,
        );
        rules.push(device_rule(
            typ,
            Some(d.major as i64),
            Some(d.minor as i64),
            &d.access,
        )?);
    }
    Ok((devices, rules))
}

/// The cgroup resources: the device `rules`, and the memory and CPU limits the user asked for.
fn resources_for(
    cfg: &ContainerConfig,
    rules: Vec<LinuxDeviceCgroup>,
) -> Result<LinuxResources, RuntimeError> {
    let mut resources = LinuxResourcesBuilder::default().devices(rules);
    if let Some(limit) = cfg.memory {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit as i64)
                // No swap beyond the limit: an SD card must not become the robot's RAM.
                .swap(limit as i64)
                .build()?,
        );
    }
    if let Some(cpus) = cfg.cpus {
        let period: u64 = 100_000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((cpus * period as f64).round() as i64)
                .build()?,
        );
    }
    Ok(resources.build()?)
}

/// The mounts: Docker's standard set, the bundle's hosts/hostname/resolv.conf read-only, the
/// user's volumes, then the bind mounts the roles grant.
fn mounts_for(input: &SpecInput<'_>) -> Result<Vec<Mount>, RuntimeError> {
    let cfg = input.config;
    let mut mounts = standard_mounts()?;
    let ro = ["rbind", "ro", "nosuid", "nodev", "noexec"];
    for (dest, file) in [
        ("/etc/hosts", "hosts"),
        ("/etc/hostname", "hostname"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        let src = input.bundle.join(file);
        mounts.push(mount(dest, "bind", &src.to_string_lossy(), &ro)?);
    }
    for v in &cfg.volumes {
        let src = match &v.source {
            VolumeSource::Named(name) => input.volumes_dir.join(name),
            VolumeSource::Bind(path) => path.clone(),
        };
        mounts.push(bind(&v.target, &src, v.read_only)?);
    }
    for m in &input.devices.mounts {
        mounts.push(bind(&m.container.to_string_lossy(), &m.host, m.read_only)?);
    }
    mounts.extend(super::super::cdi::oci_mounts(input.devices)?);
    Ok(mounts)
}

fn bind(dest: &str, src: &Path, read_only: bool) -> Result<Mount, RuntimeError> {
    let mut opts = vec!["rbind", "rprivate"];
    if read_only {
        opts.push("ro");
    }
    mount(dest, "bind", &src.to_string_lossy(), &opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compose's `ulimits` become the process's OCI rlimits; a `nofile` of its own replaces
    /// the default open-files limit.
    #[test]
    fn ulimits_are_rlimits() {
        let ul = |name: &str, soft, hard| crate::api::Ulimit {
            name: name.into(),
            soft,
            hard,
        };
        let kinds = |cfg: &ContainerConfig| -> Vec<(String, u64, u64)> {
            rlimits_for(cfg)
                .unwrap()
                .iter()
                .map(|r| (format!("{:?}", r.typ()), r.soft(), r.hard()))
                .collect()
        };
        let plain = kinds(&ContainerConfig::default());
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].0, "RlimitNofile");
        let cfg = ContainerConfig {
            ulimits: vec![
                ul("nofile", 100, 200),
                ul("core", 0, 0),
                ul("memlock", u64::MAX, u64::MAX),
            ],
            ..Default::default()
        };
        assert_eq!(
            kinds(&cfg),
            [
                ("RlimitNofile".to_string(), 100, 200),
                ("RlimitCore".to_string(), 0, 0),
                ("RlimitMemlock".to_string(), u64::MAX, u64::MAX)
            ]
        );
        assert!(ul("nofiles", 1, 1).check().is_err());
        assert!(ul("nofile", 2, 1).check().is_err());
    }

    #[test]
    fn working_dirs_through_proc_fd_are_refused() {
        for bad in [
            "/proc/self/fd/7",
            "/proc/self/fd",
            "/proc/thread-self/fd/3",
            "/proc/1/fd/7",
            "/proc/1234/task/1234/fd/7",
            "//proc//self/./fd/7/..",
            "/tmp/../proc/self/fd/7",
            "proc/self/fd/7",
            "/proc/self/fd/7/../../fd/8",
            "/proc/self/fd/7/../..",
            "/proc/self/fd/7/../../../../../etc",
        ] {
            let e = check_workdir(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
            assert!(e.contains("CVE-2024-21626"), "{e}");
        }
        for ok in [
            "/",
            "/data",
            "/proc",
            "/proc/self",
            "/proc/self/fdinfo",
            "/srv/fd/1",
            "/proc/sys/fd",
            "/home/duckie/proc/self/fd",
        ] {
            assert!(check_workdir(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_image_working_dir_is_checked_too() {
        let image: ImageConfig = serde_json::from_value(serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"WorkingDir": "/proc/self/fd/5"}
        }))
        .unwrap();
        let cfg = ContainerConfig::default();
        let e = working_dir(&cfg, &image).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        assert!(e.to_string().contains("/proc/self/fd/5"), "{e}");
        // A `-w` replaces the image's and is what counts.
        let cfg = ContainerConfig {
            workdir: Some("/data".into()),
            ..Default::default()
        };
        assert_eq!(working_dir(&cfg, &image).unwrap(), "/data");
        let cfg = ContainerConfig {
            workdir: Some("/proc/thread-self/fd/9".into()),
            ..Default::default()
        };
        assert!(working_dir(&cfg, &image).unwrap_err().is_bad_input());
        assert_eq!(
            working_dir(&ContainerConfig::default(), &ImageConfig::default()).unwrap(),
            "/"
        );
    }
}
