use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompOperator};

use super::*;
use crate::runtime::spec::DEFAULT_CAPS;

fn docker_caps() -> Vec<String> {
    DEFAULT_CAPS.iter().map(|c| format!("CAP_{c}")).collect()
}

fn target(arches: &[&'static str], caps: Vec<String>, kernel: (u64, u64)) -> Target {
    Target {
        arches: arches.to_vec(),
        caps,
        kernel: Some(kernel),
    }
}

/// The names allowed unconditionally (no argument condition) by `s`.
fn allowed(s: &LinuxSeccomp) -> Vec<String> {
    s.syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
        .flat_map(|r| r.names().clone())
        .collect()
}

#[test]
fn docker_caps_on_amd64_get_mobys_filter() {
    let t = target(&["amd64"], docker_caps(), (6, 1));
    let s = to_oci(&default_profile(), &t).unwrap().unwrap();
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(s.default_errno_ret(), Some(1));
    assert_eq!(
        s.architectures().as_deref().unwrap(),
        [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    );
    let ok = allowed(&s);
    for name in [
        "read",
        "openat",
        "futex",
        "arch_prctl",
        "chroot",
        "ptrace",
        "io_pgetevents",
    ] {
        assert!(ok.iter().any(|n| n == name), "{name} allowed");
    }
    for name in [
        "unshare",
        "setns",
        "mount",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "kexec_load",
        "init_module",
        "reboot",
        "settimeofday",
        "open_by_handle_at",
        "set_tls",
    ] {
        assert!(!ok.iter().any(|n| n == name), "{name} is not allowed");
    }
    let rules = s.syscalls().as_ref().unwrap();
    // `clone` only without CLONE_NEW* flags, in argument 0 off s390.
    let clone = rules
        .iter()
        .find(|r| r.names() == &["clone"])
        .expect("a clone rule");
    let arg = clone.args().as_ref().unwrap()[0];
    assert_eq!(
        (arg.index(), arg.value(), arg.op()),
        (0, 0x7E02_0000, LinuxSeccompOperator::ScmpCmpMaskedEq)
    );
    assert_eq!(rules.iter().filter(|r| r.names() == &["clone"]).count(), 1);
    // `clone3` answers ENOSYS so glibc falls back to `clone`.
    let clone3 = rules.iter().find(|r| r.names() == &["clone3"]).unwrap();
    assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3.errno_ret(), Some(38));
    // `socket` for every family but AF_ALG (38) and AF_VSOCK (40); `personality` for five values.
    let socket: Vec<_> = rules
        .iter()
        .filter(|r| r.names() == &["socket"])
        .map(|r| r.args().as_ref().unwrap()[0].value())
        .collect();
    assert_eq!(socket, [38, 39, 40]);
    assert_eq!(
        rules
            .iter()
            .filter(|r| r.names() == &["personality"])
            .count(),
        5
    );
}

#[test]
fn arm_robots_get_their_own_architectures() {
    let s = to_oci(
        &default_profile(),
        &target(&["arm64"], docker_caps(), (4, 9)),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        s.architectures().as_deref().unwrap(),
        [Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    );
    let ok = allowed(&s);
    assert!(ok.iter().any(|n| n == "set_tls"), "the arm-only rule");
    assert!(!ok.iter().any(|n| n == "arch_prctl"), "not the x86 one");
    let spec = serde_json::to_value(&s).unwrap();
    assert_eq!(
        spec["architectures"],
        serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
    );

    let s = to_oci(&default_profile(), &target(&["arm"], docker_caps(), (4, 9)))
        .unwrap()
        .unwrap();
    assert_eq!(s.architectures().as_deref().unwrap(), [Arch::ScmpArchArm]);
    // An arm64 agent under QEMU on an amd64 kernel: both, and the native x86 rules.
    let s = to_oci(
        &default_profile(),
        &target(&["arm64", "amd64"], docker_caps(), (6, 1)),
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.architectures().as_ref().unwrap().len(), 5);
    assert!(allowed(&s).iter().any(|n| n == "arch_prctl"));
}

#[test]
fn capabilities_and_the_kernel_decide_the_conditional_rules() {
    let mut caps = docker_caps();
    caps.push("CAP_SYS_ADMIN".into());
    let s = to_oci(&default_profile(), &target(&["amd64"], caps, (6, 1)))
        .unwrap()
        .unwrap();
    let ok = allowed(&s);
    for name in ["unshare", "mount", "setns", "clone", "clone3", "bpf"] {
        assert!(ok.iter().any(|n| n == name), "{name} with CAP_SYS_ADMIN");
    }
    let rules = s.syscalls().as_ref().unwrap();
    assert!(!rules.iter().any(|r| r.errno_ret() == Some(38)));

    // No CAP_SYS_CHROOT: no chroot. A 4.4 kernel: no ptrace (it could step around the filter).
    let caps: Vec<String> = docker_caps()
        .into_iter()
        .filter(|c| c != "CAP_SYS_CHROOT")
        .collect();
    let ok = allowed(
        &to_oci(&default_profile(), &target(&["amd64"], caps, (4, 4)))
            .unwrap()
            .unwrap(),
    );
    assert!(!ok.iter().any(|n| n == "chroot" || n == "ptrace"));
}

#[test]
fn apply_sets_the_filter_no_new_privileges_and_the_read_only_root() {
    let mut spec = Spec::default();
    let exe = std::env::current_exe().unwrap();
    apply(&mut spec, &Security::default(), &exe).unwrap();
    let filter = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
    assert_eq!(filter.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(
        spec.process().as_ref().unwrap().no_new_privileges(),
        Some(false)
    );
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));

    let unconfined = Security {
        seccomp: Seccomp::Unconfined,
        no_new_privileges: true,
        read_only: true,
    };
    apply(&mut spec, &unconfined, &exe).unwrap();
    assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
    assert_eq!(
        spec.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));

    // A user's profile: evaluated the same way; a bad one is bad input.
    let own = Security {
        seccomp: Seccomp::Profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#
                .into(),
        ),
        ..Default::default()
    };
    check(&own).unwrap();
    apply(&mut spec, &own, &exe).unwrap();
    let filter = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
    assert_eq!(filter.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(filter.syscalls().as_ref().unwrap()[0].names(), &["mkdir"]);
    assert_eq!(
        filter.architectures().as_deref().unwrap(),
        [Arch::ScmpArchX86_64]
    );
    let bad = Security {
        seccomp: Seccomp::Profile("{".into()),
        ..Default::default()
    };
    assert!(check(&bad).unwrap_err().is_bad_input());
}

#[test]
fn the_runtimes_architecture_comes_from_its_elf_header() {
    let exe = std::env::current_exe().unwrap();
    let want = go_arch(&Platform::host().normalized().architecture);
    assert_eq!(elf_arch(&exe), want);
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("runc");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    assert_eq!(elf_arch(&script), None);
    assert_eq!(elf_arch(&tmp.path().join("absent")), None);
}
