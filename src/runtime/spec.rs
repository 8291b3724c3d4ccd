//! Docker's default sandbox as OCI runtime spec pieces: the capability set, masked and
//! read-only paths, the device rules every container gets, the standard mounts. Both the
//! builder's RUN steps and the agent's containers start from these, so a container never gets
//! more than `docker run` would give it without flags.

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType,
};

use super::RuntimeError;

/// Docker's default capability set (`oci/caps/defaults.go`), and no more.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's masked paths (`oci/defaults.go`): files a container must not read.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// One device cgroup rule allowing `access` to `typ major:minor` (`None`: any).
pub fn device_rule(
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup, RuntimeError> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .access(access);
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    Ok(b.build()?)
}

/// One mount of the runtime spec.
pub fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The open-files limit of a RUN: soft 1024 (`select(2)`-safe, and quick for tools that close
/// every descriptor up to the limit), hard 524288 so that programs can raise their own, but
/// never above this process's hard limit: the container's init has no `CAP_SYS_RESOURCE` to
/// raise it, and runc fails with `error setting rlimit type 7: operation not permitted`.
pub fn nofile_limit() -> Result<oci_spec::runtime::PosixRlimit, RuntimeError> {
    let current = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = current.maximum.map_or(524_288, |m| m.min(524_288));
    Ok(PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(hard.min(1024))
        .hard(hard)
        .build()?)
}

/// Docker's default capabilities for a process running as `uid`. A non-root user starts
/// without effective capabilities, as after setuid(2) from root; the bounding set still lets
/// setuid binaries (sudo) get them.
pub fn capabilities_for(uid: u32) -> Result<LinuxCapabilities, RuntimeError> {
    let caps: Capabilities = DEFAULT_CAPS.iter().copied().collect();
    let none = Capabilities::new();
    let (effective, permitted) = if uid == 0 {
        (caps.clone(), caps.clone())
    } else {
        (none.clone(), none.clone())
    };
    Ok(LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(effective)
        .permitted(permitted)
        .inheritable(none.clone())
        .ambient(none)
        .build()?)
}

/// The device cgroup every container starts from: deny everything, then Docker's defaults —
/// mknod of any node (it cannot be opened without a rule of its own), `/dev/null`, `zero`,
/// `full`, `random`, `urandom`, `tty`, `console`, `ptmx` and the pseudo-terminals. Rules for
/// granted devices are appended after these.
pub fn default_device_rules() -> Result<Vec<LinuxDeviceCgroup>, RuntimeError> {
    use LinuxDeviceType::{B, C};
    let mut devices = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
        device_rule(C, None, None, "m")?,
        device_rule(B, None, None, "m")?,
    ];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        devices.push(device_rule(C, Some(major), Some(minor), "rwm")?);
    }
    devices.push(device_rule(C, Some(136), None, "rwm")?); // /dev/pts/*
    Ok(devices)
}

/// The kernel filesystems of Docker's default container: `/proc`, a tmpfs `/dev` with its
/// own `pts`, `shm` and `mqueue`, read-only `/sys` and cgroups. Bind mounts (hosts,
/// resolv.conf, volumes) come after these.
pub fn standard_mounts() -> Result<Vec<Mount>, RuntimeError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}
