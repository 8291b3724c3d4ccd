//! Docker's default seccomp profile as a table: the syscall names and conditional rules of
//! moby's `profiles/seccomp/default.json` (github.com/moby/profiles/seccomp v0.2.3), written
//! out here so a robot needs no file for it. `tests/data/seccomp/moby-default.json` is that
//! file, and the test below holds the two equal: update both together.
//!
//! What stays out of a container without the matching capability (Docker's default set has
//! none of these): new namespaces (`unshare`, `setns`, `clone` with `CLONE_NEW*`; a user
//! namespace hands out every capability inside it, the way into most kernel escapes of the
//! last years), mounts, `bpf`, `perf_event_open`, module loading, `reboot`, setting the clock,
//! `ptrace` on kernels before 4.8 (where it could step around the filter). What stays out for
//! everyone: the keyring (`keyctl`, `add_key`, `request_key`), `userfaultfd`, `io_uring_*`,
//! `kexec_*`, `personality` but for the few values programs use, `socket(AF_ALG)` and
//! `socket(AF_VSOCK)`.

use oci_spec::runtime::{Arch, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator};

use crate::api::seccomp::{ArchEntry, Filter, Profile, Rule};

use LinuxSeccompOperator::{
    ScmpCmpEq as Eq, ScmpCmpGt as Gt, ScmpCmpLt as Lt, ScmpCmpMaskedEq as MaskedEq,
};

/// Syscalls any container may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// One conditional rule of the table (the action is ALLOW unless `errno` is set).
struct R {
    names: &'static [&'static str],
    errno: Option<u32>,
    /// One argument condition: index, value, operator.
    arg: Option<(usize, u64, LinuxSeccompOperator)>,
    caps: &'static [&'static str],
    arches: &'static [&'static str],
    min_kernel: Option<&'static str>,
    not_caps: &'static [&'static str],
    not_arches: &'static [&'static str],
}

const ALLOW: R = R {
    names: &[],
    errno: None,
    arg: None,
    caps: &[],
    arches: &[],
    min_kernel: None,
    not_caps: &[],
    not_arches: &[],
};

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: a `clone` with none of these set is a thread or a fork.
const CLONE_NEW_ANY: u64 = 0x7E02_0000;

/// `AF_ALG` (the kernel's crypto API, a steady source of kernel bugs) and `AF_VSOCK` (the
/// hypervisor's channel): sockets of every other family are allowed.
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// The rules that hold only with a capability, on an architecture or kernel, or for some
/// argument values; moby's order.
const RULES: &[R] = &[
    R {
        names: &["process_vm_readv", "process_vm_writev", "ptrace"],
        min_kernel: Some("4.8"),
        ..ALLOW
    },
    R {
        names: &["socket"],
        arg: Some((0, AF_ALG, Lt)),
        ..ALLOW
    },
    R {
        names: &["socket"],
        arg: Some((0, AF_ALG + 1, Eq)),
        ..ALLOW
    },
    R {
        names: &["socket"],
        arg: Some((0, AF_VSOCK, Gt)),
        ..ALLOW
    },
    // PER_LINUX, UNAME26, PER_LINUX32, UNAME26|PER_LINUX32, and 0xffffffff (a query).
    R {
        names: &["personality"],
        arg: Some((0, 0, Eq)),
        ..ALLOW
    },
    R {
        names: &["personality"],
        arg: Some((0, 8, Eq)),
        ..ALLOW
    },
    R {
        names: &["personality"],
        arg: Some((0, 131072, Eq)),
        ..ALLOW
    },
    R {
        names: &["personality"],
        arg: Some((0, 131080, Eq)),
        ..ALLOW
    },
    R {
        names: &["personality"],
        arg: Some((0, 4294967295, Eq)),
        ..ALLOW
    },
    R {
        names: &["sync_file_range2", "swapcontext"],
        arches: &["ppc64le"],
        ..ALLOW
    },
    R {
        names: &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        arches: &["arm", "arm64"],
        ..ALLOW
    },
    R {
        names: &["arch_prctl"],
        arches: &["amd64", "x32"],
        ..ALLOW
    },
    R {
        names: &["modify_ldt"],
        arches: &["amd64", "x32", "x86"],
        ..ALLOW
    },
    R {
        names: &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        arches: &["s390", "s390x"],
        ..ALLOW
    },
    R {
        names: &["riscv_flush_icache"],
        arches: &["riscv64"],
        ..ALLOW
    },
    R {
        names: &["open_by_handle_at"],
        caps: &["CAP_DAC_READ_SEARCH"],
        ..ALLOW
    },
    R {
        names: &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        caps: &["CAP_SYS_ADMIN"],
        ..ALLOW
    },
    R {
        names: &["clone"],
        arg: Some((0, CLONE_NEW_ANY, MaskedEq)),
        not_caps: &["CAP_SYS_ADMIN"],
        not_arches: &["s390", "s390x"],
        ..ALLOW
    },
    R {
        names: &["clone"],
        arg: Some((1, CLONE_NEW_ANY, MaskedEq)),
        arches: &["s390", "s390x"],
        not_caps: &["CAP_SYS_ADMIN"],
        ..ALLOW
    },
    // ENOSYS, not EPERM: glibc then falls back to `clone`, whose flags can be checked.
    R {
        names: &["clone3"],
        errno: Some(38),
        not_caps: &["CAP_SYS_ADMIN"],
        ..ALLOW
    },
    R {
        names: &["reboot"],
        caps: &["CAP_SYS_BOOT"],
        ..ALLOW
    },
    R {
        names: &["chroot"],
        caps: &["CAP_SYS_CHROOT"],
        ..ALLOW
    },
    R {
        names: &["delete_module", "init_module", "finit_module"],
        caps: &["CAP_SYS_MODULE"],
        ..ALLOW
    },
    R {
        names: &["acct"],
        caps: &["CAP_SYS_PACCT"],
        ..ALLOW
    },
    R {
        names: &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        caps: &["CAP_SYS_PTRACE"],
        ..ALLOW
    },
    R {
        names: &["iopl", "ioperm"],
        caps: &["CAP_SYS_RAWIO"],
        ..ALLOW
    },
    R {
        names: &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        caps: &["CAP_SYS_TIME"],
        ..ALLOW
    },
    R {
        names: &["vhangup"],
        caps: &["CAP_SYS_TTY_CONFIG"],
        ..ALLOW
    },
    R {
        names: &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        caps: &["CAP_SYS_NICE"],
        ..ALLOW
    },
    R {
        names: &["syslog"],
        caps: &["CAP_SYSLOG"],
        ..ALLOW
    },
    R {
        names: &["bpf"],
        caps: &["CAP_BPF"],
        ..ALLOW
    },
    R {
        names: &["perf_event_open"],
        caps: &["CAP_PERFMON"],
        ..ALLOW
    },
];

/// Docker's default profile.
pub fn default_profile() -> Profile {
    let mut syscalls = vec![Rule {
        names: ALLOWED.iter().map(|s| s.to_string()).collect(),
        action: LinuxSeccompAction::ScmpActAllow,
        ..Default::default()
    }];
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let filter = |caps: &[&str], arches: &[&str], min_kernel: Option<&str>| {
        let f = Filter {
            caps: strings(caps),
            arches: strings(arches),
            min_kernel: min_kernel.map(str::to_string),
        };
        (f != Filter::default()).then_some(f)
    };
    for r in RULES {
        syscalls.push(Rule {
            names: strings(r.names),
            action: match r.errno {
                Some(_) => LinuxSeccompAction::ScmpActErrno,
                None => LinuxSeccompAction::ScmpActAllow,
            },
            errno_ret: r.errno,
            args: r.arg.map(|(index, value, op)| {
                vec![
                    LinuxSeccompArgBuilder::default()
                        .index(index)
                        .value(value)
                        .op(op)
                        .build()
                        .expect("every field is set"),
                ]
            }),
            includes: filter(r.caps, r.arches, r.min_kernel),
            excludes: filter(r.not_caps, r.not_arches, None),
            ..Default::default()
        });
    }
    let entry = |architecture, sub: Option<Vec<Arch>>| ArchEntry {
        architecture,
        sub_architectures: sub,
    };
    use Arch::*;
    Profile {
        default_action: LinuxSeccompAction::ScmpActErrno,
        // EPERM: what a program that probes for a feature expects to be told.
        default_errno_ret: Some(1),
        architectures: Vec::new(),
        arch_map: vec![
            entry(ScmpArchX86_64, Some(vec![ScmpArchX86, ScmpArchX32])),
            entry(ScmpArchAarch64, Some(vec![ScmpArchArm])),
            entry(ScmpArchMips64, Some(vec![ScmpArchMips, ScmpArchMips64n32])),
            entry(ScmpArchMips64n32, Some(vec![ScmpArchMips, ScmpArchMips64])),
            entry(
                ScmpArchMipsel64,
                Some(vec![ScmpArchMipsel, ScmpArchMipsel64n32]),
            ),
            entry(
                ScmpArchMipsel64n32,
                Some(vec![ScmpArchMipsel, ScmpArchMipsel64]),
            ),
            entry(ScmpArchS390x, Some(vec![ScmpArchS390])),
            entry(ScmpArchRiscv64, None),
            entry(ScmpArchLoongarch64, None),
        ],
        flags: Vec::new(),
        syscalls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// moby's `default.json` (see `tests/data/seccomp/README.md`).
    const MOBY: &str = include_str!("../../../../tests/data/seccomp/moby-default.json");

    #[test]
    fn the_table_is_mobys_default_profile() {
        let mut moby = Profile::parse(MOBY).unwrap();
        for r in &mut moby.syscalls {
            r.comment = None;
        }
        let ours = default_profile();
        assert_eq!(ours.syscalls.len(), moby.syscalls.len());
        for (i, (a, b)) in ours.syscalls.iter().zip(&moby.syscalls).enumerate() {
            assert_eq!(a, b, "rule {i}");
        }
        assert_eq!(ours, moby);
    }
}
