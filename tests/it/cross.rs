//! The cross-built robot agents (`scripts/cross-build`, `dts::agents`) and virtual robots of a
//! foreign CPU: the amd64/arm64/armhf `dt-agent` binaries are static and answer
//! `status --json` with their own arch (arm64 and armhf under qemu-user-static), `find_agent`
//! finds them, and `dts sim up --arch arm64` (and armhf) makes a robot whose agent runs under
//! QEMU, lists its containers and runs an arm64 busybox that prints `aarch64`.
//!
//! The build is cached outside the clone: the cargo target dir is `$DTS_CROSS_TARGET_DIR`
//! (default /var/cache/dts-test/cross-target as root) and the binaries go to `$DTS_AGENT_DIR`
//! (default /var/cache/dts-test/agents as root), each with the key of the inputs it was built
//! from: when scripts/test's install phase already built them from these sources, the script
//! only checks that key and the binaries (seconds), and [`agents_are_of_these_sources`] proves
//! the binaries tested are of this checkout. Skips
//! with a reason when the cross tools are missing and cannot be installed (not root: the script
//! exits 3), and the sim tests when not root or QEMU is not registered in binfmt_misc.

use crate::support::{self, TestContext};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use dts::agents::{AgentArch, AgentBinaryError, find_agent_in};
use dts::oci::Platform;

/// Where the test runs put the binaries (as root; otherwise under cargo's tmp dir).
const CACHE: &str = "/var/cache/dts-test";

/// Runs `scripts/cross-build all` once per test process: `Ok(dir)` holding `<arch>/dt-agent`,
/// `Err(reason)` when a prerequisite is missing and cannot be installed (exit 3). Any other
/// failure is a test failure.
fn build_agents() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let (target_dir, default_out) = if support::is_root() {
                (
                    PathBuf::from(CACHE).join("cross-target"),
                    PathBuf::from(CACHE).join("agents"),
                )
            } else {
                // Never cargo's own target dir: `cargo test` holds its lock while tests run.
                let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
                (tmp.join("cross-target"), tmp.join("agents"))
            };
            let target_dir = std::env::var_os("DTS_CROSS_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or(target_dir);
            let out = std::env::var_os("DTS_AGENT_DIR")
                .map(PathBuf::from)
                .unwrap_or(default_out);
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cross-build");
            let mut cmd = Command::new("bash");
            cmd.arg(&script)
                .args(["all", "--out"])
                .arg(&out)
                .env("DTS_CROSS_TARGET_DIR", &target_dir)
                .stdin(Stdio::null());
            if !support::is_root() {
                cmd.arg("--no-install");
            }
            let started = std::time::Instant::now();
            let o = cmd.output().expect("running scripts/cross-build");
            let stderr = String::from_utf8_lossy(&o.stderr);
            support::write_stderr_line(&format!(
                "scripts/cross-build all: exit {:?} after {:.0?}",
                o.status.code(),
                started.elapsed()
            ));
            match o.status.code() {
                Some(0) => Ok(out),
                Some(3) => Err(format!(
                    "cross tools missing: {}",
                    stderr.lines().last().unwrap_or("")
                )),
                _ => panic!("scripts/cross-build all failed ({:?}):\n{stderr}", o.status),
            }
        })
        .clone()
}

/// The agents directory, or a SKIP line and `None`.
fn agents() -> Option<PathBuf> {
    match build_agents() {
        Ok(dir) => Some(dir),
        Err(reason) => {
            support::skip(&reason);
            None
        }
    }
}

fn sha256_hex(p: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// The key of the inputs (`scripts/cross-build --print-key`) recorded beside each binary is
/// this checkout's: the cache never hands out an agent built from other sources.
#[test]
fn agents_are_of_these_sources() {
    let Some(dir) = agents() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cross-build");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-key")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap();
    assert_eq!(key.trim().len(), 64, "{key}");
    for arch in AgentArch::ALL {
        let recorded = dir.join(arch.as_str()).join("dt-agent.inputs");
        assert_eq!(
            std::fs::read_to_string(&recorded).unwrap(),
            key,
            "{}",
            recorded.display()
        );
    }
}

#[test]
fn agents_are_static_and_answer_with_their_arch() {
    let Some(dir) = agents() else { return };
    let file = support::find_cmd("file").expect("cross-build installs or needs `file`");
    for arch in AgentArch::ALL {
        let bin = dir.join(arch.as_str()).join("dt-agent");
        let desc = Command::new(&file).arg("-b").arg(&bin).output().unwrap();
        let desc = String::from_utf8_lossy(&desc.stdout).into_owned();
        assert!(
            desc.contains("statically linked") || desc.contains("static-pie linked"),
            "{arch}: {desc}"
        );
        let machine = match arch {
            AgentArch::Amd64 => "x86-64",
            AgentArch::Arm64 => "ARM aarch64",
            AgentArch::Armhf => "ARM, EABI5",
        };
        assert!(desc.contains(machine), "{arch}: {desc}");

        // The recorded digest is the binary's, and find_agent hands out both.
        let recorded =
            std::fs::read_to_string(dir.join(arch.as_str()).join("dt-agent.sha256")).unwrap();
        assert_eq!(recorded, format!("{}  dt-agent\n", sha256_hex(&bin)));
        let found = find_agent_in(arch, Some(&dir), Path::new("/nonexistent/dts")).unwrap();
        assert_eq!(found.path, bin);
        assert_eq!(found.sha256, sha256_hex(&bin));
        assert_eq!(found.size, std::fs::metadata(&bin).unwrap().len());

        // Run it, foreign ones under the emulator named explicitly (no binfmt needed).
        let mut cmd = match arch {
            AgentArch::Amd64 => Command::new(&bin),
            AgentArch::Arm64 | AgentArch::Armhf => {
                let qemu = if arch == AgentArch::Arm64 {
                    "qemu-aarch64-static"
                } else {
                    "qemu-arm-static"
                };
                let Some(q) = support::find_cmd(qemu) else {
                    support::skip(&format!("needs `{qemu}` (qemu-user-static)"));
                    return;
                };
                let mut c = Command::new(q);
                c.arg(&bin);
                c
            }
        };
        let store = tempfile::tempdir().unwrap();
        let out = cmd
            .args(["status", "--json"])
            .env("DT_AGENT_ROOT", store.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{arch}: status --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            status["arch"],
            arch.platform().to_string(),
            "{arch}: {status}"
        );
    }
}

#[test]
fn a_missing_arch_names_where_it_looked_and_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let exe = empty.path().join("bin/dts");
    let err = find_agent_in(AgentArch::Armhf, Some(empty.path()), &exe).unwrap_err();
    let AgentBinaryError::NoBinary { arch, searched } = &err else {
        panic!("{err}")
    };
    assert_eq!(*arch, AgentArch::Armhf);
    assert_eq!(searched[0], empty.path().join("armhf/dt-agent"));
    let msg = err.to_string();
    assert!(msg.contains("scripts/cross-build armhf"), "{msg}");
    assert!(
        msg.contains(&empty.path().join("armhf/dt-agent").display().to_string()),
        "{msg}"
    );
}

// ------------------------------------------------------------------------------------------------
// Virtual robots of a foreign CPU.

/// Whether a sim of `platform` can be made here; prints the SKIP line when not.
fn can_sim(platform: &Platform) -> bool {
    if !support::can_make_virtual_robot() {
        return false;
    }
    // `dts sim up` registers QEMU itself when nothing is; a disabled entry or one without the
    // F flag is the host's business (scripts/test fixes it), not this test's.
    if let Err(e) = dts::binfmt::ensure(platform) {
        support::skip(&format!("QEMU for {platform}: {e}"));
        return false;
    }
    true
}

/// One test's laptop and foreign robot: the shared [`TestContext`] with the agents just built.
struct World(TestContext);

impl std::ops::Deref for World {
    type Target = TestContext;

    fn deref(&self) -> &TestContext {
        &self.0
    }
}

impl World {
    fn new(agents: PathBuf) -> World {
        World(TestContext::new().with_agent_dir(agents))
    }

    /// `sim up NAME --arch ARCH`, checked against `sim ls` and the agent's own status.
    fn sim_up(&self, arch: AgentArch) {
        let up: serde_json::Value = serde_json::from_str(&self.ok(&[
            "sim",
            "up",
            &self.name,
            "--arch",
            arch.as_str(),
            "--json",
        ]))
        .unwrap();
        let platform = arch.platform().to_string();
        assert_eq!(up["status"]["arch"], platform.as_str(), "{up}");
        let ls: serde_json::Value =
            serde_json::from_str(&self.ok(&["sim", "ls", "--json"])).unwrap();
        let me = &ls.as_array().unwrap()[0];
        assert_eq!(me["arch"], platform.as_str(), "{ls}");
        // The robot's agent, asked over SSH like a real robot's.
        let address = me["address"].as_str().unwrap();
        let status: serde_json::Value =
            serde_json::from_str(&self.ssh_ok(address, "sudo -n dt-agent status --json")).unwrap();
        assert_eq!(status["arch"], platform.as_str(), "{status}");
        // The emulated binary is the cross-built one, not this machine's.
        let sim: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                self.dts_home
                    .path()
                    .join("sims")
                    .join(&self.name)
                    .join("sim.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            sim["agent"],
            self.agent_dir
                .as_ref()
                .unwrap()
                .join(arch.as_str())
                .join("dt-agent")
                .to_str()
                .unwrap()
        );
    }
}

#[test]
fn an_arm64_sim_runs_arm64_containers() {
    if !can_sim(&Platform::arm64()) {
        return;
    }
    let Some(bb) = support::require_busybox("arm64") else {
        return;
    };
    let Some(agents) = agents() else { return };
    let w = World::new(agents);
    w.sim_up(AgentArch::Arm64);

    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
    assert!(ps.is_array() || ps.is_object(), "{ps}");

    // An arm64-only image (COPY only, so the build needs no emulation) run on the robot: the
    // agent under QEMU unpacks it, its shim re-executes itself, runc (native) starts busybox,
    // which the kernel hands to QEMU again.
    let ctx = w.work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(&bb, ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"uname\", \"-m\"]\n",
    )
    .unwrap();
    w.ok(&[
        "devel",
        "build",
        "-C",
        ctx.to_str().unwrap(),
        "-t",
        "cross/uname:1",
        "--arch",
        "arm64v8",
    ]);
    let out = w.ok(&["duckiebot", "run", &w.name, "--rm", "cross/uname:1"]);
    assert_eq!(out.trim(), "aarch64", "{out}");
    // And with a command, the way users poke at a robot.
    let out = w.ok(&[
        "duckiebot",
        "run",
        &w.name,
        "--rm",
        "cross/uname:1",
        "/bin/busybox",
        "echo",
        "hello from arm64",
    ]);
    assert_eq!(out.trim(), "hello from arm64", "{out}");
}

#[test]
fn an_armhf_sim_answers_as_armhf() {
    if !can_sim(&Platform::armhf()) {
        return;
    }
    let Some(agents) = agents() else { return };
    let w = World::new(agents);
    w.sim_up(AgentArch::Armhf);
    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
    assert!(ps.is_array() || ps.is_object(), "{ps}");
}
