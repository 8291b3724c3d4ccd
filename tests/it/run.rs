//! RUN steps for real: busybox root filesystems (from `scripts/fixtures`) run under runc (or
//! whatever `DTS_RUNTIME` names), natively and under QEMU, through `dts::build::run::execute`.
//!
//! Needs root, an OCI runtime and the fixtures (`scripts/fixtures`, cached in
//! `$DTS_FIXTURES`, default `/var/cache/dts-fixtures`); each test prints `SKIP: <test>: <why>`
//! and passes without them. The tests take one lock: they compare the host's mount table before
//! and after. `DTS_RUNTIME` is only ever set in a child process (see `detect_in_child`).

use crate::support;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use dts::binfmt::{self, BinfmtError, Support};
use dts::build::run::{self, Network, RunError, RunOutcome, RunSpec, Runtime};
use dts::oci::Platform;

static LOCK: Mutex<()> = Mutex::new(());

/// The applets the tests use, linked to `/bin/busybox` by hand (running a foreign busybox's
/// `--install` would itself need QEMU).
const APPLETS: &[&str] = &[
    "sh", "uname", "echo", "ls", "id", "cat", "hostname", "touch", "sleep", "pwd", "env", "test",
    "mkdir", "rm", "grep", "wc", "true", "false",
];

fn fixtures_dir() -> PathBuf {
    std::env::var_os("DTS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/dts-fixtures"))
}

/// The busybox for a Debian arch (`amd64`, `arm64`, `armhf`), or a skip.
fn busybox(arch: &str) -> Option<PathBuf> {
    let p = fixtures_dir().join("busybox").join(arch).join("busybox");
    if p.is_file() {
        Some(p)
    } else {
        support::skip(&format!(
            "no fixture `{}`: run scripts/fixtures",
            p.display()
        ));
        None
    }
}

/// Everything a test needs: the lock, a runtime with private state, a scratch dir.
struct Ctx {
    _lock: MutexGuard<'static, ()>,
    runtime: Runtime,
    dir: tempfile::TempDir,
}

fn setup() -> Option<Ctx> {
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !support::require_root("mounts overlayfs and runs containers") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = match Runtime::detect(&dir.path().join("state")) {
        Ok(r) => r,
        Err(e) => {
            support::skip(&format!("no OCI runtime: {e}"));
            return None;
        }
    };
    Some(Ctx {
        _lock: lock,
        runtime,
        dir,
    })
}

/// How [`Ctx::stopped`] stops a command.
#[derive(Clone, Copy)]
enum Stop {
    /// Its RUN's timeout.
    Timeout,
    /// The caller's `cancelled`.
    Caller,
}

impl Ctx {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh upper and work dir pair.
    fn upper_work(&self, name: &str) -> (PathBuf, PathBuf) {
        let upper = self.path(&format!("{name}-upper"));
        let work = self.path(&format!("{name}-work"));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        (upper, work)
    }

    fn execute(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        spec: &RunSpec,
    ) -> (Result<RunOutcome, RunError>, Vec<String>) {
        self.execute_until(lowers, upper, work, spec, &|| false)
    }

    /// [`Ctx::execute`], stopped once `cancelled` says so.
    fn execute_until(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        spec: &RunSpec,
        cancelled: &dyn Fn() -> bool,
    ) -> (Result<RunOutcome, RunError>, Vec<String>) {
        let mut lines = Vec::new();
        let before = our_mounts();
        let r = run::execute(
            &self.runtime,
            lowers,
            upper,
            work,
            spec,
            cancelled,
            &mut |l| lines.push(l.to_string()),
        );
        assert_clean(&self.runtime, &before);
        (r, lines)
    }

    /// Runs `sh -c script` in `lower`, stopped after a second by `how`; it must not run on.
    fn stopped(
        &self,
        lower: &Path,
        script: &str,
        how: Stop,
    ) -> (Result<RunOutcome, RunError>, Vec<String>) {
        let name = format!("stopped{}", self.dir.path().read_dir().unwrap().count());
        let (upper, work) = self.upper_work(&name);
        let mut spec = RunSpec::new(["/bin/sh", "-c", script]);
        if matches!(how, Stop::Timeout) {
            spec.timeout = Some(Duration::from_secs(1));
        }
        let started = std::time::Instant::now();
        let cancelled =
            || matches!(how, Stop::Caller) && started.elapsed() > Duration::from_secs(1);
        let lowers = [lower.to_path_buf()];
        let r = self.execute_until(&lowers, &upper, &work, &spec, &cancelled);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "`{script}` ran on"
        );
        r
    }

    /// Runs `sh -c script` and returns (status, output lines).
    fn sh(
        &self,
        lowers: &[&Path],
        script: &str,
        edit: impl FnOnce(&mut RunSpec),
    ) -> (i32, Vec<String>) {
        let lowers: Vec<PathBuf> = lowers.iter().map(|p| p.to_path_buf()).collect();
        let name = format!("sh{}", self.dir.path().read_dir().unwrap().count());
        let (upper, work) = self.upper_work(&name);
        let mut spec = RunSpec::new(["/bin/sh", "-c", script]);
        edit(&mut spec);
        let (r, lines) = self.execute(&lowers, &upper, &work, &spec);
        let outcome = r.unwrap_or_else(|e| panic!("`{script}`: {e}"));
        assert_eq!(outcome.output_tail, lines[lines.len().saturating_sub(50)..]);
        (outcome.status, lines)
    }
}

/// A root filesystem with busybox, its applets, /etc/passwd, /etc/group and /tmp.
fn rootfs(dir: &Path, busybox: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for a in APPLETS {
        symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nduckie:x:1000:1000::/home/duckie:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        dir.join("etc/group"),
        "root:x:0:\nduckie:x:1000:\nvideo:x:44:duckie\n",
    )
    .unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    dir.to_path_buf()
}

/// Every file below `dir`, relative, sorted, with `/` after directories.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// Mount points of RUN scratch dirs of this process.
fn our_mounts() -> Vec<String> {
    let prefix = format!("dts-run-{}-", std::process::id());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.contains(&prefix))
        .map(str::to_string)
        .collect()
}

/// No mount, container or scratch dir of ours is left.
fn assert_clean(runtime: &Runtime, mounts_before: &[String]) {
    assert_eq!(our_mounts(), mounts_before, "mounts left behind");
    assert_eq!(
        runtime.list().unwrap(),
        Vec::<String>::new(),
        "containers left behind in `{}`",
        runtime.root().display()
    );
    let prefix = format!("dts-run-{}-", std::process::id());
    let left: Vec<_> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "scratch dirs left behind: {left:?}");
}

/// The platform's Debian arch name, or a skip when this kernel cannot run it.
fn runnable(platform: &Platform) -> bool {
    match binfmt::check(platform) {
        Ok(_) => true,
        Err(e) => {
            support::skip(&format!("{platform} binaries cannot run here: {e}"));
            false
        }
    }
}

#[test]
fn uname_reports_each_architecture() {
    let Some(ctx) = setup() else { return };
    for (arch, platform, machine) in [
        ("amd64", Platform::amd64(), "x86_64"),
        ("arm64", Platform::arm64(), "aarch64"),
        ("armhf", Platform::armhf(), "armv7l"),
    ] {
        let Some(bb) = busybox(arch) else { continue };
        if !runnable(&platform) {
            continue;
        }
        let lower = rootfs(&ctx.path(&format!("{arch}-root")), &bb);
        let (status, lines) = ctx.sh(&[&lower], "uname -m", |s| s.platform = platform.clone());
        assert_eq!((status, lines), (0, vec![machine.to_string()]), "{arch}");
    }
}

#[test]
fn writes_land_in_the_upper_dir_only() {
    let Some(ctx) = setup() else { return };
    let Some(bb) = busybox("amd64") else { return };
    let lower = rootfs(&ctx.path("root"), &bb);
    let lower_before = tree(&lower);
    let (upper, work) = ctx.upper_work("w");
    let spec = RunSpec::new(["/bin/sh", "-c", "echo hi > /hello"]);
    let (r, _) = ctx.execute(std::slice::from_ref(&lower), &upper, &work, &spec);
    assert_eq!(r.unwrap().status, 0);
    assert_eq!(tree(&upper), ["hello"]);
    assert_eq!(fs::read_to_string(upper.join("hello")).unwrap(), "hi\n");
    assert_eq!(tree(&lower), lower_before);
    assert!(!lower.join("hello").exists());
}

#[test]
fn exit_status_is_reported_not_an_error() {
    let Some(ctx) = setup() else { return };
    let Some(bb) = busybox("amd64") else { return };
    let lower = rootfs(&ctx.path("root"), &bb);
    let (status, lines) = ctx.sh(&[&lower], "echo before; exit 3", |_| {});
    assert_eq!(status, 3);
    assert_eq!(lines, ["before"]);
    let (status, _) = ctx.sh(&[&lower], "exit 255", |_| {});
    assert_eq!(status, 255);
}

#[test]
fn env_cwd_and_user_are_honoured() {
    let Some(ctx) = setup() else { return };
    let Some(bb) = busybox("amd64") else { return };
    let lower = rootfs(&ctx.path("root"), &bb);
    let script = r#"echo "$FOO"; pwd; id -u; id -g; id -G; echo "$PATH""#;
    let (status, lines) = ctx.sh(&[&lower], script, |s| {
        s.env = vec!["FOO=bar baz".into()];
        s.cwd = "/tmp".into();
        s.user = "1000".into();
    });
    assert_eq!(status, 0);
    assert_eq!(
        lines,
        [
            "bar baz",
            "/tmp",
            "1000",
            "1000",
            "1000 44",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
    // Names resolve through the image's /etc/passwd and /etc/group; PATH is left alone.
    let (_, lines) = ctx.sh(&[&lower], "id -u; id -g; echo $PATH", |s| {
        s.user = "duckie:video".into();
        s.env = vec!["PATH=/bin".into()];
    });
    assert_eq!(lines, ["1000", "44", "/bin"]);
    // A missing working directory is created, as Docker does.
    let (_, lines) = ctx.sh(&[&lower], "pwd", |s| s.cwd = "/work/dir".into());
    assert_eq!(lines, ["/work/dir"]);
    // An unknown user name is an error naming it.
    let (upper, work) = ctx.upper_work("ghost");
    let mut spec = RunSpec::new(["id"]);
    spec.user = "ghost".into();
    let (r, _) = ctx.execute(&[lower], &upper, &work, &spec);
    let err = r.unwrap_err();
    assert!(matches!(err, RunError::User { .. }), "{err}");
    assert!(err.to_string().contains("ghost"), "{err}");
}

#[test]
fn sandbox_hostname_hosts_and_read_only_resolv_conf() {
    let Some(ctx) = setup() else { return };
    let Some(bb) = busybox("amd64") else { return };
    let lower = rootfs(&ctx.path("root"), &bb);
    let script = "hostname; cat /etc/hosts; \
        if { echo x >> /etc/resolv.conf; } 2>/dev/null; then echo writable; else echo read-only; fi; \
        if { echo x >> /etc/hosts; } 2>/dev/null; then echo writable; else echo read-only; fi; \
        grep -c . /etc/resolv.conf >/dev/null || true; \
        grep ' /etc/resolv.conf ' /proc/self/mountinfo | grep -c ' ro,'";
    let (status, lines) = ctx.sh(&[&lower], script, |_| {});
    assert_eq!(status, 0, "{lines:?}");
    let text = lines.join("\n");
    assert_eq!(lines[0], "buildkitsandbox");
    assert!(
        text.contains("127.0.0.1\tlocalhost buildkitsandbox"),
        "{text}"
    );
    assert!(
        text.contains("::1\tlocalhost ip6-localhost ip6-loopback"),
        "{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.as_str() == "read-only").count(),
        2,
        "{text}"
    );
    assert!(!text.contains("writable"), "{text}");
    assert_eq!(lines.last().unwrap(), "1", "{text}");

    // Host network by default; a private one with only loopback for `none`.
    let count = "grep -c : /proc/net/dev";
    let (_, host) = ctx.sh(&[&lower], count, |_| {});
    let (_, none) = ctx.sh(&[&lower], count, |s| s.network = Network::None);
    assert_eq!(none, ["1"], "only lo");
    let host_ifaces = fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .filter(|l| l.contains(':'))
        .count();
    assert_eq!(host, [host_ifaces.to_string()]);
}

#[test]
fn stubs_are_exactly_the_missing_mount_points() {
    let Some(ctx) = setup() else { return };
    let Some(bb) = busybox("amd64") else { return };
    let set = |v: &[PathBuf]| {
        let mut v: Vec<String> = v.iter().map(|p| p.display().to_string()).collect();
        v.sort();
        v
    };

    // /etc exists, none of the mount points do.
    let lower = rootfs(&ctx.path("a"), &bb);
    let (upper, work) = ctx.upper_work("a");
    let spec = RunSpec::new(["/bin/sh", "-c", "test -d /proc/self && test -e /dev/null"]);
    let (r, _) = ctx.execute(std::slice::from_ref(&lower), &upper, &work, &spec);
    let out = r.unwrap();
    assert_eq!(out.status, 0);
    assert_eq!(
        set(&out.stubs),
        ["/dev", "/etc/hosts", "/etc/resolv.conf", "/proc", "/sys"]
    );
    // Made in their own lower layer: neither the upper nor the image has them.
    assert_eq!(tree(&upper), Vec::<String>::new());
    assert!(!lower.join("proc").exists() && !lower.join("etc/hosts").exists());

    // Some exist; resolv.conf is a symlink into a directory that exists.
    let lower = rootfs(&ctx.path("b"), &bb);
    fs::create_dir(lower.join("proc")).unwrap();
    fs::create_dir(lower.join("sys")).unwrap();
    fs::write(lower.join("etc/hosts"), "# image's\n").unwrap();
    fs::create_dir(lower.join("run")).unwrap();
    symlink("../run/resolv.conf", lower.join("etc/resolv.conf")).unwrap();
    let (upper, work) = ctx.upper_work("b");
    let spec = RunSpec::new(["/bin/sh", "-c", "cat /etc/hosts"]);
    let (r, lines) = ctx.execute(std::slice::from_ref(&lower), &upper, &work, &spec);
    let out = r.unwrap();
    assert_eq!(set(&out.stubs), ["/dev", "/run/resolv.conf"]);
    assert!(
        lines.iter().any(|l| l.contains("buildkitsandbox")),
        "{lines:?}"
    );
    assert_eq!(tree(&upper), Vec::<String>::new());

    // No /etc at all: /etc is a stub too.
    let lower = ctx.path("c");
    fs::create_dir_all(lower.join("bin")).unwrap();
    fs::copy(&bb, lower.join("bin/busybox")).unwrap();
    symlink("busybox", lower.join("bin/sh")).unwrap();
    let (upper, work) = ctx.upper_work("c");
    let spec = RunSpec::new(["/bin/sh", "-c", "exit 0"]);
    let (r, _) = ctx.execute(std::slice::from_ref(&lower), &upper, &work, &spec);
    assert_eq!(
        set(&r.unwrap().stubs),
        [
            "/dev",
            "/etc",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/proc",
            "/sys"
        ]
    );
    assert_eq!(tree(&upper), Vec::<String>::new());
}

#[test]
fn layers_stack_top_over_bottom() {
    let Some(ctx) = setup() else { return };
    let Some(bb) = busybox("amd64") else { return };
    let bottom = rootfs(&ctx.path("bottom"), &bb);
    fs::write(bottom.join("etc/msg"), "bottom\n").unwrap();
    fs::write(bottom.join("etc/only-bottom"), "b\n").unwrap();
    let top = ctx.path("top");
    fs::create_dir_all(top.join("etc")).unwrap();
    fs::write(top.join("etc/msg"), "top\n").unwrap();
    let (status, lines) = ctx.sh(&[&bottom, &top], "cat /etc/msg /etc/only-bottom", |_| {});
    assert_eq!(
        (status, lines),
        (0, vec!["top".to_string(), "b".to_string()])
    );

    // Layer paths overlayfs cannot take in its option string (`,` and `:` separate options
    // and layers) go through /proc/self/fd.
    let odd = ctx.path("odd,name:here");
    fs::create_dir_all(odd.join("etc")).unwrap();
    fs::write(odd.join("etc/msg"), "odd\n").unwrap();
    let (status, lines) = ctx.sh(&[&bottom, &odd], "cat /etc/msg", |_| {});
    assert_eq!((status, lines), (0, vec!["odd".to_string()]));

    // No lower layers at all: the root filesystem is what the upper dir already holds.
    let (upper, work) = ctx.upper_work("solo");
    rootfs(&upper, &bb);
    let spec = RunSpec::new(["/bin/sh", "-c", "echo $(id -u) > /made"]);
    let (r, _) = ctx.execute(&[], &upper, &work, &spec);
    assert_eq!(r.unwrap().status, 0);
    assert_eq!(fs::read_to_string(upper.join("made")).unwrap(), "0\n");
}

#[test]
fn failures_and_timeouts_leave_nothing_behind() {
    let Some(ctx) = setup() else { return };
    let Some(bb) = busybox("amd64") else { return };
    let lower = rootfs(&ctx.path("root"), &bb);

    // The runtime cannot start the command: an error with the runtime's message.
    let (upper, work) = ctx.upper_work("missing");
    let spec = RunSpec::new(["/no/such/program"]);
    let (r, _) = ctx.execute(std::slice::from_ref(&lower), &upper, &work, &spec);
    let err = r.unwrap_err();
    assert!(matches!(err, RunError::Runtime { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("/no/such/program"), "{msg}");
    assert!(
        msg.contains(&ctx.runtime.command().display().to_string()),
        "{msg}"
    );

    // A failing command.
    let (status, _) = ctx.sh(&[&lower], "false", |_| {});
    assert_eq!(status, 1);

    // Too slow: killed, and still cleaned up.
    let (r, lines) = ctx.stopped(&lower, "echo started; sleep 60", Stop::Timeout);
    let err = r.unwrap_err();
    assert!(matches!(err, RunError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("started"), "{err}");
    assert_eq!(lines, ["started"]);

    // Stopped by the caller (the builder, when another step failed): killed, cleaned up, and
    // told apart from a timeout.
    let (r, lines) = ctx.stopped(&lower, "echo started; sleep 60", Stop::Caller);
    let err = r.unwrap_err();
    assert!(matches!(err, RunError::Cancelled { .. }), "{err}");
    assert_eq!(lines, ["started"]);

    // A command that prints a line every 10 ms is timed out and stopped all the same.
    let chatty = "while :; do echo tick; sleep 0.01; done";
    let (r, _) = ctx.stopped(&lower, chatty, Stop::Timeout);
    assert!(matches!(r, Err(RunError::Timeout { .. })), "{r:?}");
    let (r, _) = ctx.stopped(&lower, chatty, Stop::Caller);
    assert!(matches!(r, Err(RunError::Cancelled { .. })), "{r:?}");

    // Not a directory.
    let (upper, work) = ctx.upper_work("not-a-directory");
    let (r, _) = ctx.execute(
        &[lower.join("etc/passwd")],
        &upper,
        &work,
        &RunSpec::new(["true"]),
    );
    assert!(matches!(r.unwrap_err(), RunError::Io(_)));

    // A panic in the output callback still cleans up.
    let (upper, work) = ctx.upper_work("panic");
    let before = our_mounts();
    // Quiet: this panic is expected. Only this thread's: the hook is process-wide, and the
    // other modules of tests/it run meanwhile; their panics still print.
    let hook: std::sync::Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        std::panic::take_hook().into();
    let me = std::thread::current().id();
    let others = hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            others(info)
        }
    }));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let spec = RunSpec::new(["/bin/sh", "-c", "echo boom; sleep 2"]);
        run::execute(
            &ctx.runtime,
            std::slice::from_ref(&lower),
            &upper,
            &work,
            &spec,
            &|| false,
            &mut |_| panic!("callback panicked"),
        )
    }));
    std::panic::set_hook(Box::new(move |info| hook(info)));
    assert!(caught.is_err());
    assert_clean(&ctx.runtime, &before);
}

#[test]
fn runtime_client_basics() {
    let Some(ctx) = setup() else { return };
    let version = ctx.runtime.version().unwrap();
    assert!(version.contains("version"), "{version}");
    assert_eq!(ctx.runtime.list().unwrap(), Vec::<String>::new());
    // Deleting what does not exist is fine (cleanup paths call it unconditionally).
    ctx.runtime.delete("dts-build-0-0").unwrap();

    // DTS_RUNTIME picks the runtime, by name or path; nonsense is a typed error.
    let state = ctx.path("state2");
    let cmd = ctx.runtime.command().display().to_string();
    let (command, _) = detect_in_child(&cmd, &state).unwrap();
    assert_eq!(command, ctx.runtime.command());
    let err = detect_in_child("/no/such/runtime", &state).unwrap_err();
    assert!(err.starts_with("bad-override "), "{err}");
    if support::find_cmd("crun").is_some() {
        let (command, root) = detect_in_child("crun", &state).unwrap();
        assert!(command.ends_with("crun"), "{}", command.display());
        assert_eq!(root, state.join("crun"));
    }
}

/// Where the child started by [`detect_in_child`] keeps its runtime state.
const CHILD_STATE_ENV: &str = "DTS_TEST_RUNTIME_STATE";

/// `Runtime::detect(state)` under `DTS_RUNTIME=value`, in a child process: the variable is
/// process-wide, and every module of tests/it shares this process, so setting it here would
/// also reach any `dts` another test spawns meanwhile. The child is this test binary running
/// [`runtime_override_in_child`] alone. `Ok((command, root))`, or `Err("bad-override …")` /
/// `Err("other …")`.
fn detect_in_child(value: &str, state: &Path) -> Result<(PathBuf, PathBuf), String> {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "run::runtime_override_in_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(run::RUNTIME_ENV, value)
        .env(CHILD_STATE_ENV, state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        // libtest prints `test NAME ... ` before the test's own output, on the same line.
        .find_map(|l| l.split_once("DETECTED ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("the child test printed no DETECTED line:\n{stdout}"));
    match line.strip_prefix("ok ") {
        Some(ok) => {
            let (command, root) = ok.split_once('\t').unwrap();
            Ok((PathBuf::from(command), PathBuf::from(root)))
        }
        None => Err(line.to_owned()),
    }
}

#[test]
#[ignore = "run by runtime_client_basics in a child process, with DTS_RUNTIME set"]
fn runtime_override_in_child() {
    let state = std::env::var_os(CHILD_STATE_ENV)
        .map(PathBuf::from)
        .expect("run by runtime_client_basics (detect_in_child), which sets the state dir");
    match Runtime::detect(&state) {
        Ok(r) => println!(
            "DETECTED ok {}\t{}",
            r.command().display(),
            r.root().display()
        ),
        Err(e @ RunError::BadOverride { .. }) => println!("DETECTED bad-override {e}"),
        Err(e) => println!("DETECTED other {e}"),
    }
}

#[test]
fn unregistered_binfmt_is_a_typed_error() {
    // A fixture binfmt_misc directory: nothing on the host is registered or unregistered.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("register"), "").unwrap();
    fs::write(dir.path().join("status"), "enabled\n").unwrap();
    let err = binfmt::check_in(dir.path(), "x86_64", &Platform::arm64()).unwrap_err();
    assert!(matches!(err, BinfmtError::NotRegistered { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("update-binfmts --enable qemu-aarch64"),
        "{msg}"
    );
    assert!(msg.contains("/proc/sys/fs/binfmt_misc/register"), "{msg}");

    fs::write(
        dir.path().join("qemu-aarch64"),
        "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: \noffset 0\n\
         magic 7f454c460201010000000000000000000200b700\n\
         mask ffffffffffffff00fffffffffffffffffeffffff\n",
    )
    .unwrap();
    let err = binfmt::check_in(dir.path(), "x86_64", &Platform::arm64()).unwrap_err();
    assert!(matches!(err, BinfmtError::NoFixBinary { .. }), "{err}");
    assert!(
        err.to_string().contains(":/usr/bin/qemu-aarch64:F'"),
        "{err}"
    );

    assert_eq!(
        binfmt::check_in(dir.path(), "aarch64", &Platform::arm64()).unwrap(),
        Support::Native
    );
}

#[test]
fn stale_runs_of_dead_processes_are_cleaned_up() {
    let Some(ctx) = setup() else { return };
    // A pid that is gone: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let scratch = std::env::temp_dir().join(format!("dts-run-{dead}-0"));
    for sub in ["view", "stubs", "merged", "bundle"] {
        fs::create_dir_all(scratch.join(sub)).unwrap();
    }
    fs::write(scratch.join("bundle/config.json"), "{}").unwrap();
    let merged = scratch.join("merged");
    rustix::mount::mount(
        "tmpfs",
        &merged,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    fs::write(merged.join("inside-the-mount"), "x").unwrap();
    // A live process's scratch dir is not touched.
    let live = std::env::temp_dir().join(format!("dts-run-{}-999999", std::process::id()));
    fs::create_dir_all(&live).unwrap();

    let removed = run::cleanup_stale(&ctx.runtime).unwrap();
    assert!(
        removed.contains(&scratch.display().to_string()),
        "{removed:?}"
    );
    assert!(!scratch.exists());
    assert!(live.exists());
    fs::remove_dir(&live).unwrap();
    let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounted.contains(&scratch.display().to_string()));
}
