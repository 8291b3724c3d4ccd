//! Shared support for the integration tests (`tests/it`): `use crate::support;` in a module.
//!
//! Owns the skip conventions (a test that cannot run prints one `SKIP: <test>: <reason>` line to
//! stderr and returns early, so `cargo test` passes as non-root; under `CI=true` that line is a
//! panic instead, see [`skip`]) and shared fixtures: [`context`] (one test's laptop and virtual
//! robot, [`TestContext`], and where the agents and busybox are),
//! [`netns`] (throwaway network namespaces on a private bridge), [`fresh_robot`] (a stock
//! Duckiebot booted from a cached Debian root file system), [`images`] (OCI images made in
//! code) and [`registry`] (a real local registry). It does not own fixtures of any one module.

// Some of the harness's methods (`net_robot`, `start_unit`) serve tests still being written.
pub mod context;
#[allow(dead_code)]
pub mod fresh_robot;
pub mod hostile;
pub mod images;
pub mod netns;
pub mod registry;
pub mod stock_robot;

use std::path::{Path, PathBuf};

pub use context::{TestContext, busybox, require_agent, require_busybox};

/// Name of the running test, as libtest names its thread (`module::test_name`).
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned()
}

/// Print the standard skip line for the running test; under `CI=true`, panic with it instead.
///
/// Why CI fails: CI runs `scripts/test` as root, which installs every tool, fixture and kernel
/// feature the tests need, so a skip there is an install bug, and a skipped test that passes
/// would hide it (issue 16: most integration tests passed as SKIP, silently). Locally, as
/// non-root or without a tool, a skip stays a pass.
///
/// Written to the stderr handle directly, not with `eprintln!`: libtest captures the print
/// macros of passing tests, and a skip must be visible in a normal `cargo test` run.
pub fn skip(reason: &str) {
    let line = format!("SKIP: {}: {reason}", test_name());
    if in_ci() {
        panic!(
            "{line}\n(CI=true: a skip in CI is a failure; scripts/test must install what this test needs)"
        );
    }
    write_stderr_line(&line);
}

/// Whether the environment variable `CI` is `true`, as CI services set it (`.ci/run` runs
/// with it): then [`skip`] fails the test.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true")
}

/// One whole line to stderr in a single write (so parallel tests do not interleave mid-line),
/// bypassing libtest's capture; never panics, unlike `eprintln!`, so it is safe in `Drop`.
pub fn write_stderr_line(line: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `true` when running as root; otherwise prints `SKIP: <test>: needs root: <why>` and returns
/// `false`. Use as `if !support::require_root("creates netns") { return; }`.
pub fn require_root(why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(&format!("needs root: {why}"));
    false
}

/// Whether a virtual Duckiebot (`dts sim up`) can be made here: root, and the tools it runs
/// (links and shaping, sshd and sudo, avahi, runc); prints the SKIP line when not.
pub fn can_make_virtual_robot() -> bool {
    if !require_root("makes a virtual Duckiebot: namespaces, mounts, links") {
        return false;
    }
    [
        "ip",
        "tc",
        "ssh-keygen",
        "/usr/sbin/sshd",
        "/usr/bin/sudo",
        "/usr/sbin/avahi-daemon",
        "runc",
    ]
    .into_iter()
    .all(require_cmd)
}

/// `true` when `cmd` is found (see [`find_cmd`]); otherwise prints
/// `SKIP: <test>: needs `<cmd>` on PATH` and returns `false`.
pub fn require_cmd(cmd: &str) -> bool {
    if find_cmd(cmd).is_some() {
        return true;
    }
    skip(&format!("needs `{cmd}` on PATH (not found)"));
    false
}

/// Directories searched after `$PATH`: root's tools (`ip`, `tc`, `nft`) live in sbin, which a
/// non-login shell or `sudo` may have left out of `$PATH`.
const EXTRA_CMD_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Absolute path of an executable named `cmd`, searching `$PATH` then [`EXTRA_CMD_DIRS`].
/// A `cmd` containing `/` is checked as given.
pub fn find_cmd(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_CMD_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(cmd))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A tmpfs mounted on a directory of the test, unmounted when dropped (also on panic).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`8m`) on `dir`; `None` (with a `SKIP:` line) if not root or
    /// if the mount fails.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !require_root("mounts a tmpfs") {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        if !st.success() {
            skip("`mount -t tmpfs` failed");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// Makes a character device node (a real one, not a file) at `path` with `mode`.
pub fn mknod_char(path: &Path, major: u32, minor: u32, mode: u32) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mknod only creates the node.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | mode,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}
