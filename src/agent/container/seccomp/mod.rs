//! A container's confinement as the spec's last touch: the seccomp filter (Docker's default
//! profile, [`table`], or the user's Docker-format one; none with `seccomp=unconfined`),
//! `no_new_privileges` and a read-only root, from the config's [`Security`].
//!
//! A Docker profile is a template: its rules may hold only with some capabilities, on some
//! architectures or from a kernel version on. [`to_oci`] evaluates them the way moby's
//! `setupSeccomp` does — against the container's bounding capabilities, the robot's
//! architectures and its kernel — and leaves runc (libseccomp) to turn syscall names into
//! numbers for each architecture listed. runc also answers ENOSYS, not the default EPERM, for
//! syscalls newer than any the profile names, so programs that probe for them fall back as
//! they do under Docker.
//!
//! **Architectures.** moby takes the daemon's own; here it is the agent's and the runtime's
//! (read from runc's ELF header) together: on a robot they are the same, but a virtual arm64
//! robot runs its agent under QEMU while runc and the kernel stay native, and every emulated
//! program reaches the kernel with the native calls — the filter must cover those.

mod table;

pub use table::default_profile;

use std::io::Read;
use std::path::Path;

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompBuilder, LinuxSyscallBuilder, Spec};

use super::ContainerError;
use crate::api::seccomp::{Filter, Profile, Seccomp, Security, parse_kernel};
use crate::oci::Platform;

/// What a profile's conditions are evaluated against.
#[derive(Clone, Debug)]
pub struct Target {
    /// Architectures in moby's (Go's) naming: `amd64`, `arm64`, `arm`, `x86`.
    pub arches: Vec<&'static str>,
    /// The container's bounding capabilities (`CAP_CHOWN`).
    pub caps: Vec<String>,
    /// The kernel's `(version, major)`, when known.
    pub kernel: Option<(u64, u64)>,
}

impl Target {
    /// This robot, for a container whose spec is `spec`, run by the runtime at `runtime`.
    pub fn here(spec: &Spec, runtime: &Path) -> Target {
        let mut arches: Vec<&'static str> = go_arch(&Platform::host().normalized().architecture)
            .into_iter()
            .collect();
        if let Some(a) = elf_arch(runtime).filter(|a| !arches.contains(a)) {
            arches.push(a);
        }
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().as_ref())
            .map(|b| b.iter().map(|c| format!("CAP_{c}")).collect())
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| parse_kernel(r.trim()).ok());
        Target {
            arches,
            caps,
            kernel,
        }
    }
}

/// Checks what `security` carries that can be wrong (a profile's text): bad input, before a
/// container is made.
pub fn check(security: &Security) -> Result<(), ContainerError> {
    if let Seccomp::Profile(text) = &security.seccomp {
        Profile::parse(text)
            .map_err(|e| ContainerError::BadSpec(format!("seccomp profile: {}", e.0)))?;
    }
    Ok(())
}

/// Sets the spec's seccomp filter, `no_new_privileges` and read-only root from `security`.
pub fn apply(spec: &mut Spec, security: &Security, runtime: &Path) -> Result<(), ContainerError> {
    let profile = match &security.seccomp {
        Seccomp::Default => Some(default_profile()),
        Seccomp::Unconfined => None,
        Seccomp::Profile(text) => Some(
            Profile::parse(text)
                .map_err(|e| ContainerError::BadSpec(format!("seccomp profile: {}", e.0)))?,
        ),
    };
    let seccomp = match profile {
        Some(p) => to_oci(&p, &Target::here(spec, runtime))?,
        None => None,
    };
    if let Some(linux) = spec.linux_mut() {
        linux.set_seccomp(seccomp);
    }
    if let Some(process) = spec.process_mut() {
        process.set_no_new_privileges(Some(security.no_new_privileges));
    }
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(security.read_only));
    }
    Ok(())
}

/// The runtime spec's filter for `profile` on `target`; `None` when the profile has neither a
/// default action nor rules (Docker's reading: no filter).
pub fn to_oci(profile: &Profile, target: &Target) -> Result<Option<LinuxSeccomp>, ContainerError> {
    let bad = |e: oci_spec::OciSpecError| ContainerError::BadSpec(format!("seccomp profile: {e}"));
    let mut arches: Vec<Arch> = profile.architectures.clone();
    for native in target.arches.iter().filter_map(|a| seccomp_arch(a)) {
        if let Some(e) = profile.arch_map.iter().find(|e| e.architecture == native) {
            for a in
                std::iter::once(e.architecture).chain(e.sub_architectures.iter().flatten().copied())
            {
                if !arches.contains(&a) {
                    arches.push(a);
                }
            }
        }
    }
    // An architecture with no `archMap` entry (armhf) is named on its own: runc would add the
    // native one anyway, but the spec then says what the filter covers.
    if arches.is_empty() && profile.architectures.is_empty() {
        arches.extend(target.arches.iter().filter_map(|a| seccomp_arch(a)));
    }
    let mut syscalls = Vec::new();
    for rule in &profile.syscalls {
        if rule.excludes.as_ref().is_some_and(|f| excluded(f, target))
            || rule.includes.as_ref().is_some_and(|f| !included(f, target))
        {
            continue;
        }
        let names = match &rule.name {
            Some(n) => vec![n.clone()],
            None => rule.names.clone(),
        };
        let mut b = LinuxSyscallBuilder::default()
            .names(names)
            .action(rule.action);
        if let Some(e) = rule.errno_ret {
            b = b.errno_ret(e);
        }
        if let Some(args) = &rule.args {
            b = b.args(args.clone());
        }
        syscalls.push(b.build().map_err(bad)?);
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(profile.default_action)
        .architectures(arches)
        .syscalls(syscalls);
    if let Some(e) = profile.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if !profile.flags.is_empty() {
        b = b.flags(profile.flags.clone());
    }
    Ok(Some(b.build().map_err(bad)?))
}

/// moby's `excludes`: any one condition that holds drops the rule.
fn excluded(f: &Filter, t: &Target) -> bool {
    f.arches.iter().any(|a| t.arches.contains(&a.as_str()))
        || f.caps.iter().any(|c| t.caps.contains(c))
        || f.min_kernel
            .as_deref()
            .is_some_and(|k| kernel_at_least(t, k))
}

/// moby's `includes`: every condition must hold.
fn included(f: &Filter, t: &Target) -> bool {
    (f.arches.is_empty() || f.arches.iter().any(|a| t.arches.contains(&a.as_str())))
        && f.caps.iter().all(|c| t.caps.contains(c))
        && f.min_kernel
            .as_deref()
            .is_none_or(|k| kernel_at_least(t, k))
}

/// Whether the kernel is at least `k`; an unknown kernel counts as old (the rule that needs
/// a newer one is the one left out).
fn kernel_at_least(t: &Target, k: &str) -> bool {
    match (t.kernel, parse_kernel(k)) {
        (Some(have), Ok(want)) => have >= want,
        _ => false,
    }
}

/// A Docker/OCI architecture name as Go spells it (moby's `arches` values).
fn go_arch(oci_arch: &str) -> Option<&'static str> {
    Some(match oci_arch {
        "amd64" => "amd64",
        "arm64" => "arm64",
        "arm" => "arm",
        "386" => "x86",
        _ => return None,
    })
}

/// The native seccomp architecture of a Go architecture.
fn seccomp_arch(go: &str) -> Option<Arch> {
    Some(match go {
        "amd64" => Arch::ScmpArchX86_64,
        "arm64" => Arch::ScmpArchAarch64,
        "arm" => Arch::ScmpArchArm,
        "x86" => Arch::ScmpArchX86,
        _ => return None,
    })
}

/// The architecture an executable is built for, from its ELF header's `e_machine`; `None`
/// for a script or anything unreadable.
fn elf_arch(path: &Path) -> Option<&'static str> {
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        _ => u16::from_be_bytes([head[18], head[19]]),
    };
    Some(match machine {
        62 => "amd64",
        183 => "arm64",
        40 => "arm",
        3 => "x86",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
