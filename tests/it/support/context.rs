//! [`TestContext`]: one test's laptop — its own `DTS_HOME`, `HOME` and scratch directory — and
//! the virtual Duckiebot it makes with `dts sim up` on a bridge and subnet of its own, torn down
//! when the context drops. Also where the fixtures every robot test needs are: the cross-built
//! agents ([`agent_dir`], [`require_agent`]) and the static busybox ([`busybox`]).
//!
//! One fixture instead of the three "World"s `tests/it/sim.rs`, `tests/it/deploy.rs` and
//! `tests/it/cross.rs` each had (same fields, same `dts` invocation, drifting details such as which
//! of them removed the bridge afterwards). A module adds what only it needs by wrapping it
//! (`deploy::World`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use dts::ssh::Session;

use super::{find_cmd, skip};

/// Numbers this process's contexts: names, bridges and subnets differ per test.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's laptop and (once `dts sim up` ran) its robot.
pub struct TestContext {
    /// `DTS_HOME`: the laptop's store, keys, known_hosts and sims.
    pub dts_home: tempfile::TempDir,
    /// `HOME`, so the real `~/.ssh` and `~/.docker` are never read.
    pub home: tempfile::TempDir,
    /// Scratch space for build contexts, stacks and the like.
    pub work: tempfile::TempDir,
    /// `DTS_SIM_BRIDGE`: the host bridge this test's sims attach to (removed on drop).
    pub bridge: String,
    /// `DTS_SIM_SUBNET`: a /24 no route of this machine uses yet.
    pub subnet: String,
    /// The robot's name, for `dts sim up NAME` (a valid robot name, unique per process).
    pub name: String,
    /// `DTS_AGENT_DIR` for the `dts` it runs (a foreign-arch sim's agent); if `None`, the
    /// test process's own.
    pub agent_dir: Option<PathBuf>,
}

impl TestContext {
    pub fn new() -> TestContext {
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // Without `ip` (a non-root run of a test that never makes a sim) any subnet will do.
        let routes = find_cmd("ip")
            .and_then(|ip| {
                Command::new(ip)
                    .args(["-4", "route", "show", "table", "all"])
                    .output()
                    .ok()
            })
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // Parallel tests start from different octets (seq), so they do not race for one.
        let third = (0..250)
            .map(|i| (pid + seq * 7 + i) % 250 + 1)
            .find(|x| !routes.contains(&format!("10.218.{x}.")))
            .expect("a free 10.218.x.0/24");
        TestContext {
            dts_home: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            // At most 15 bytes (IFNAMSIZ): 4 + 5 + 1 + the sequence number.
            bridge: format!("dtst{}x{seq}", pid % 100_000),
            subnet: format!("10.218.{third}.0/24"),
            name: format!("bot{pid}x{seq}"),
            agent_dir: None,
        }
    }

    /// The same context with `DTS_AGENT_DIR=dir` for its `dts`.
    pub fn with_agent_dir(mut self, dir: PathBuf) -> TestContext {
        self.agent_dir = Some(dir);
        self
    }

    /// `program ARGS` with this laptop's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .env("DTS_HOME", self.dts_home.path())
            .env("HOME", self.home.path())
            .env("DTS_SIM_BRIDGE", &self.bridge)
            .env("DTS_SIM_SUBNET", &self.subnet)
            .env_remove("SSH_AUTH_SOCK")
            // The shipped stacks name `${DISTRO:-daffy}` images.
            .env_remove("DISTRO")
            .stdin(Stdio::null());
        // Otherwise the test run's own (scripts/test sets it) passes through.
        if let Some(d) = &self.agent_dir {
            c.env("DTS_AGENT_DIR", d);
        }
        c
    }

    /// `dts ARGS` (the binary under test) with this laptop's environment.
    pub fn dts_command(&self, args: &[&str]) -> Command {
        self.command(env!("CARGO_BIN_EXE_dts"), args)
    }

    pub fn dts(&self, args: &[&str]) -> Output {
        self.dts_command(args).output().unwrap()
    }

    /// `dts ARGS`, which must succeed: its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.dts(args);
        assert!(
            out.status.success(),
            "dts {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The robot's state directory under `DTS_HOME`.
    pub fn sim_dir(&self) -> PathBuf {
        self.dts_home.path().join("sims").join(&self.name)
    }

    /// The robot's network namespace.
    pub fn netns(&self) -> String {
        format!("dts-sim-{}", self.name)
    }

    /// Runs `cmd` on the robot at `address` over SSH as duckie (dts's own client, the sim key):
    /// (success, stdout, stderr).
    pub fn ssh(&self, address: &str, cmd: &str) -> (bool, String, String) {
        let opts = dts::sim::ssh_options(self.dts_home.path(), self.home.path());
        let target = dts::ssh::Target::parse(&format!("duckie@{address}")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Session::connect(&target, &opts).await.unwrap();
            let out = s.run(cmd).await.unwrap();
            let _ = s.close().await;
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    }

    /// [`TestContext::ssh`], which must succeed: its stdout.
    #[track_caller]
    pub fn ssh_ok(&self, address: &str, cmd: &str) -> String {
        let (ok, out, err) = self.ssh(address, cmd);
        assert!(ok, "`{cmd}` on the sim failed:\n{out}\n{err}");
        out
    }
}

impl Drop for TestContext {
    /// Whatever the test left: its sim (`dts sim down`, also after a panic) and its bridge.
    fn drop(&mut self) {
        if self.sim_dir().exists() || Path::new("/run/netns").join(self.netns()).exists() {
            let _ = self.dts(&["sim", "down", &self.name]);
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists()
            && let Some(ip) = find_cmd("ip")
        {
            let _ = Command::new(ip)
                .args(["link", "del", &self.bridge])
                .output();
        }
    }
}

/// Where the cross-built agents are (`<dir>/<arch>/dt-agent`): `$DTS_AGENT_DIR`, which
/// scripts/test sets, or the repository's `target/agents`, where `scripts/cross-build` writes
/// by default.
pub fn agent_dir() -> PathBuf {
    std::env::var_os("DTS_AGENT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/agents"))
}

/// [`agent_dir`] if it holds a cross-built agent for `arch` (`amd64`, `arm64`, `armhf`);
/// otherwise a SKIP line and `None`.
pub fn require_agent(arch: &str) -> Option<PathBuf> {
    let dir = agent_dir();
    if dir.join(arch).join("dt-agent").is_file() {
        return Some(dir);
    }
    skip(&format!(
        "no cross-built {arch} dt-agent in `{}`: run `scripts/cross-build {arch}`",
        dir.display()
    ));
    None
}

/// The static busybox of a Debian arch (`amd64`, `arm64`, `armhf`) from `scripts/fixtures`:
/// under `$DTS_FIXTURES` (scripts/test sets it), default `/var/cache/dts-fixtures`. It may not
/// exist; see [`require_busybox`].
pub fn busybox(arch: &str) -> PathBuf {
    std::env::var_os("DTS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/dts-fixtures"))
        .join("busybox")
        .join(arch)
        .join("busybox")
}

/// [`busybox`] if it exists; otherwise a SKIP line and `None`.
pub fn require_busybox(arch: &str) -> Option<PathBuf> {
    let p = busybox(arch);
    if p.is_file() {
        return Some(p);
    }
    skip(&format!(
        "no {arch} busybox fixture at `{}`: run `bash scripts/fixtures`",
        p.display()
    ));
    None
}
