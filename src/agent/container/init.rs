//! The minimal init a container gets with `init: true` (compose's key; Docker's `--init` runs
//! tini): `dt-agent init -- CMD…` as the container's PID 1, the agent's own static binary
//! bind-mounted read-only at [`INIT_PATH`]. It starts CMD as its child, forwards every signal
//! it receives to it and reaps every process that ends in the container, and exits with CMD's
//! status (`128 + n` for a signal).
//!
//! Why: the kernel gives PID 1 no default signal actions, so a shell or a Python script as
//! PID 1 ignores SIGTERM and every stop waits the whole grace period before SIGKILL. Under an
//! init, CMD is PID 2 and SIGTERM kills it at once unless it handles it.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use oci_spec::runtime::{MountBuilder, Spec};

use crate::runtime::RuntimeError;

/// Where the init binary appears inside a container.
pub const INIT_PATH: &str = "/.dt-agent-init";

/// Runs `args` under a forwarding, reaping init; returns the exit status to exit with.
pub fn main(args: &[OsString]) -> i32 {
    let Some(first) = args.first() else {
        eprintln!("dt-agent init: no command given (dt-agent init -- CMD…)");
        return 127;
    };
    let argv: Result<Vec<CString>, _> = args
        .iter()
        .map(|a| CString::new(a.as_bytes().to_vec()))
        .collect();
    let Ok(argv) = argv else {
        eprintln!("dt-agent init: an argument holds a NUL byte");
        return 127;
    };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: plain libc calls on locals; between fork and exec the child only calls
    // async-signal-safe functions (sigprocmask, execvp, write, _exit).
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        // Signals a fault raises are the init's own, not the command's.
        for s in [
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGABRT,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            libc::sigdelset(&mut all, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
        let child = libc::fork();
        if child == 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let msg = b"dt-agent init: cannot run the command\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
        if child < 0 {
            eprintln!(
                "dt-agent init: fork for `{}`: {}",
                first.to_string_lossy(),
                std::io::Error::last_os_error()
            );
            return 126;
        }
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let wait = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            let sig = libc::sigtimedwait(&all, &mut info, &wait);
            if sig > 0 && sig != libc::SIGCHLD {
                libc::kill(child, sig);
            }
            loop {
                let mut status = 0;
                let got = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if got <= 0 {
                    break;
                }
                if got == child {
                    return if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else if libc::WIFSIGNALED(status) {
                        128 + libc::WTERMSIG(status)
                    } else {
                        255
                    };
                }
            }
        }
    }
}

/// Whether the ELF file at `path` is statically linked (has no `PT_INTERP`): only such a
/// binary runs inside any image. A debug `dt-agent` built on a laptop is dynamic.
pub fn is_static(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 0x34 || &b[..4] != b"\x7fELF" || b[5] != 1 {
        return false; // not ELF, or big-endian: not a robot of ours
    }
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")) as usize)
    };
    let (phoff, phentsize, phnum) = match b[4] {
        1 => (u32_at(0x1c), u16_at(0x2a), u16_at(0x2c)),
        2 => (u64_at(0x20), u16_at(0x36), u16_at(0x38)),
        _ => return false,
    };
    let (Some(phoff), Some(size), Some(num)) = (phoff, phentsize, phnum) else {
        return false;
    };
    (0..num).all(|i| u32_at(phoff + i * size).is_some_and(|t| t != 3))
}

/// Puts the init in front of the spec's command and mounts `exe` (the agent's binary) at
/// [`INIT_PATH`], read-only.
pub fn wrap(spec: &mut Spec, exe: &Path) -> Result<(), RuntimeError> {
    if let Some(p) = spec.process_mut() {
        let mut args = vec![INIT_PATH.to_string(), "init".into(), "--".into()];
        args.extend(p.args().clone().unwrap_or_default());
        p.set_args(Some(args));
    }
    let m = MountBuilder::default()
        .destination(INIT_PATH)
        .typ("bind")
        .source(exe)
        .options(vec![
            "rbind".to_string(),
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
        ])
        .build()?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(m);
    spec.set_mounts(Some(mounts));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        // This test binary is dynamic on glibc hosts and static under musl.
        let me = std::env::current_exe().unwrap();
        let interp = std::fs::read(&me)
            .unwrap()
            .windows(b"ld-linux".len())
            .any(|w| w == b"ld-linux");
        if interp {
            assert!(!is_static(&me));
        }
        assert!(!is_static(Path::new("/nonexistent")));
    }
}
