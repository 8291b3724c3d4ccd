//! `dts duckiebot deploy` end to end, the way a user runs it: images built with `dts devel
//! build` into a temporary `DTS_HOME`, a virtual Duckiebot (`dts sim up`, behind a `tc tbf`
//! link), SSH with pinned host keys, `dt-agent serve --stdio`, releases in the robot's daemon.
//! Faults: a failing health check, a wrong host key, two deploys at once, the link cut (the host
//! end of the robot's veth taken down) at 10, 50 and 90 % of a transfer, the robot's `dt-agent
//! serve` killed mid-transfer, and the robot's disk full — each followed by the deploy that
//! finishes the job sending only what did not arrive.
//!
//! Each test has its own DTS_HOME, HOME, bridge and subnet (`DTS_SIM_BRIDGE`, `DTS_SIM_SUBNET`),
//! so the user's `dts0` is never touched. Needs root; prints a SKIP line otherwise.

use crate::support::{self, TestContext};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn can_run() -> bool {
    support::can_make_virtual_robot() && support::require_busybox("amd64").is_some()
}

/// One test's laptop and robot: the shared [`TestContext`] (which also takes the sim down
/// when dropped) plus the robot's arch, and this module's build and deploy steps.
pub(crate) struct World {
    ctx: TestContext,
    /// The robot's Debian arch (`amd64`, `arm64`, `armhf`): its busybox and images.
    arch: &'static str,
}

impl std::ops::Deref for World {
    type Target = TestContext;

    fn deref(&self) -> &TestContext {
        &self.ctx
    }
}

impl World {
    pub(crate) fn new() -> World {
        World {
            ctx: TestContext::new(),
            arch: "amd64",
        }
    }

    /// A world whose robot is `arch` (`arm64`, `armhf`: its agent under QEMU).
    fn for_arch(arch: &'static str) -> World {
        let mut w = World::new();
        w.arch = arch;
        w
    }

    pub(crate) fn sim_up(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["sim", "up", self.name.as_str()];
        args.extend_from_slice(extra);
        self.ok(&args);
        let ls: serde_json::Value =
            serde_json::from_str(&self.ok(&["sim", "ls", "--json"])).unwrap();
        ls.as_array().unwrap()[0].clone()
    }

    /// Writes the app's build context: busybox, `files` small modules, `big` files of 1 MiB of
    /// noise, and `run.sh` printing `version` and leaving on SIGTERM.
    pub(crate) fn context(&self, version: &str, files: usize, big: usize) -> PathBuf {
        let ctx = self.work.path().join("ctx");
        std::fs::create_dir_all(ctx.join("code")).unwrap();
        std::fs::copy(support::busybox(self.arch), ctx.join("busybox")).unwrap();
        for i in 0..files {
            std::fs::write(
                ctx.join(format!("code/module_{i}.py")),
                format!("# module {i}\n{}\n", "x = 1\n".repeat(i % 50)),
            )
            .unwrap();
        }
        std::fs::write(
            ctx.join("code/version.py"),
            format!("VERSION = {version:?}\n"),
        )
        .unwrap();
        // `big` files of 1 MiB of noise: what a cut link interrupts.
        std::fs::create_dir_all(ctx.join("big")).unwrap();
        let seed = version.bytes().fold(0x2545_f491_4f6c_dd1d_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        for i in 0..big {
            // An even step keeps the seeds distinct after `noise` sets their low bit.
            let data = noise(
                seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c16)),
                1 << 20,
            );
            std::fs::write(ctx.join(format!("big/blob_{i}.bin")), data).unwrap();
        }
        std::fs::write(ctx.join("big/.keep"), b"").unwrap();
        std::fs::write(
            ctx.join("run.sh"),
            "trap 'exit 0' TERM\nbusybox cat /code/version.py\nbusybox touch /ready\nwhile true; do busybox sleep 1 & wait $!; done\n",
        )
        .unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENV PATH=/bin\nCOPY big /opt/big/\nCOPY code /code/\nCOPY run.sh /run.sh\nCMD [\"/bin/busybox\", \"sh\", \"/run.sh\"]\n",
        )
        .unwrap();
        ctx
    }

    pub(crate) fn build(&self, ctx: &Path, tag: &str) {
        let dt_arch = match self.arch {
            "arm64" => "arm64v8",
            "armhf" => "arm32v7",
            other => other,
        };
        self.ok(&[
            "devel",
            "build",
            "-C",
            ctx.to_str().unwrap(),
            "-t",
            tag,
            "--arch",
            dt_arch,
        ]);
    }

    /// A stack of two services on `tag`; the second's health check is `health`.
    pub(crate) fn stack(&self, tag: &str, health: &str) -> PathBuf {
        let p = self.work.path().join("stack.yaml");
        std::fs::write(
            &p,
            format!(
                "services:\n  interface:\n    image: {tag}\n    x-duckiebot: {{stage: 0}}\n  core:\n    image: {tag}\n    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"{health}\", \"-f\", \"/ready\"]\n      interval: 1s\n      retries: 3\n    x-duckiebot: {{stage: 1}}\n"
            ),
        )
        .unwrap();
        p
    }

    pub(crate) fn deploy(&self, stack: &Path) -> (Option<i32>, serde_json::Value, String) {
        self.deploy_with(stack, &[])
    }

    /// `deploy --dry-run --json`, then the deploy (issue 16): the plan lists, layer by layer,
    /// the objects the robot lacks, and the deploy then sends exactly those — as many objects,
    /// as many bytes, the same layers.
    fn deploy_as_planned(&self, stack: &Path) -> (Option<i32>, serde_json::Value, String) {
        let (code, dry, err) = self.deploy_with(stack, &["--dry-run"]);
        assert_eq!(code, Some(0), "{dry} {err}");
        assert_eq!(dry["state"], "planned", "{dry}");
        let layers = dry["plan"]["layers"].as_array().expect("the plan's layers");
        let objects: Vec<&serde_json::Value> = layers
            .iter()
            .flat_map(|l| l["objects"]["objects"].as_array().expect("listed objects"))
            .collect();
        assert_eq!(dry["objects_sent"], objects.len() as u64, "{dry}");
        let bytes: u64 = objects.iter().map(|o| o["size"].as_u64().unwrap()).sum();
        assert_eq!(dry["object_bytes"], bytes, "{dry}");
        let r = self.deploy(stack);
        for k in [
            "objects_sent",
            "object_bytes",
            "layers_total",
            "layers_skipped",
        ] {
            assert_eq!(r.1[k], dry[k], "{k}: planned {dry}\n deployed {}", r.1);
        }
        r
    }

    /// `deploy --stack STACK --json EXTRA…`: (exit code, JSON, stderr).
    pub(crate) fn deploy_with(
        &self,
        stack: &Path,
        extra: &[&str],
    ) -> (Option<i32>, serde_json::Value, String) {
        let mut args = vec![
            "duckiebot",
            "deploy",
            &self.name,
            "--stack",
            stack.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = self.dts(&args);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `history --json`, polled until release `n` is in `state` (the robot decides by itself
    /// after a detached deploy); the deadline only stops a test that would hang.
    fn wait_history(&self, n: u64, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let h: serde_json::Value =
                serde_json::from_str(&self.ok(&["duckiebot", "history", &self.name, "--json"]))
                    .unwrap();
            let r = h
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["release"] == n)
                .cloned();
            if r.as_ref().is_some_and(|r| r["state"] == state) {
                return h;
            }
            assert!(Instant::now() < deadline, "release {n} never {state}: {h}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts a deploy, and once `at` bytes have gone out of the host end `host_if` of the
    /// robot's link, calls `cut`. Returns the bytes out at the cut and the deploy's end, which
    /// must come by itself within a minute: a dead link or agent is noticed, not waited on.
    fn deploy_cut(
        &self,
        stack: &Path,
        host_if: &str,
        at: u64,
        cut: impl FnOnce(),
    ) -> (u64, Option<i32>, String) {
        let before = tx_bytes(host_if);
        let started = Instant::now();
        let mut child = self.deploy_spawn(stack);
        // Getting to the cut may be slow on a loaded machine; noticing the cut must not be.
        let mut deadline = started + Duration::from_secs(600);
        let mut cut = Some(cut);
        let mut at_cut = 0;
        loop {
            let sent = tx_bytes(host_if) - before;
            if cut.is_some() && sent >= at {
                at_cut = sent;
                (cut.take().unwrap())();
                deadline = Instant::now() + Duration::from_secs(60);
                eprintln!("cut after {:?} at {sent} bytes", started.elapsed());
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let sockets = Command::new("ss")
                    .args(["-tnpoi"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let pid = format!("pid={},", child.id());
                for (i, l) in sockets.lines().enumerate() {
                    if l.contains(&pid) {
                        eprintln!("{l}\n{}", sockets.lines().nth(i + 1).unwrap_or(""));
                    }
                }
                if let Ok(o) = Command::new("gdb")
                    .args([
                        "-p",
                        &child.id().to_string(),
                        "-batch",
                        "-ex",
                        "thread apply all bt 25",
                    ])
                    .output()
                {
                    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
                }
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the deploy did not end {:?} after its start (cut: {}, {} bytes out):\n{}",
                    started.elapsed(),
                    cut.is_none(),
                    tx_bytes(host_if) - before,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = child.wait_with_output().unwrap();
        assert!(cut.is_none(), "the deploy ended before {at} bytes were out");
        (
            at_cut,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn deploy_spawn(&self, stack: &Path) -> Child {
        self.dts_command(&[
            "duckiebot",
            "deploy",
            &self.name,
            "--stack",
            stack.to_str().unwrap(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    }
}

#[test]
fn deploy_noop_one_file_change_and_rollback_on_a_failing_health_check() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let ctx = w.context("v1", 300, 0);
    w.build(&ctx, "example.com/dep/app:v1");
    w.sim_up(&[]);
    let stack = w.stack("example.com/dep/app:v1", "test");

    let (code, v, err) = w.deploy_as_planned(&stack);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert_eq!(v["release"], 1);
    for k in [
        "robot",
        "images",
        "layers_total",
        "layers_skipped",
        "objects_sent",
        "bytes_sent",
        "bytes_received",
        "duration_ms",
    ] {
        assert!(!v[k].is_null(), "deploy --json lacks {k}: {v}");
    }
    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
    let names: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["core", "interface"], "{ps}");
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "running" && c["service"].is_string())
    );
    assert!(
        w.ok(&["duckiebot", "logs", &w.name, "core"])
            .contains("VERSION = \"v1\"")
    );

    // The same again: nothing to send, nothing to switch.
    let (code, v, err) = w.deploy(&stack);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "unchanged", "{v}");
    assert_eq!(v["objects_sent"], 0);
    assert!(
        v["bytes_sent"].as_u64().unwrap() <= 8 << 10,
        "no-op protocol bytes: {v}"
    );

    // One small file edited: a few KiB cross the link.
    std::fs::write(ctx.join("code/version.py"), "VERSION = \"v2\"\n").unwrap();
    w.build(&ctx, "example.com/dep/app:v1");
    let (code, v, err) = w.deploy_as_planned(&stack);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert!(
        v["bytes_sent"].as_u64().unwrap() <= 16 << 10,
        "one-file change: {v}"
    );
    assert!(
        w.ok(&["duckiebot", "logs", &w.name, "core"])
            .contains("VERSION = \"v2\"")
    );

    // v3 whose health check fails: rolled back by itself to v2, exit 1.
    std::fs::write(ctx.join("code/version.py"), "VERSION = \"v3\"\n").unwrap();
    w.build(&ctx, "example.com/dep/app:v1");
    let bad = w.stack("example.com/dep/app:v1", "false");
    let (code, v, err) = w.deploy(&bad);
    assert_eq!(code, Some(1), "{v} {err}");
    assert_eq!(v["state"], "rolled-back", "{v}");
    let logs = w.ok(&["duckiebot", "logs", &w.name, "core"]);
    assert!(logs.contains("VERSION = \"v2\""), "v2 runs again: {logs}");
    let history: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "history", &w.name, "--json"])).unwrap();
    let states: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"rolled-back"), "{history}");
}

/// Issue 20: a deploy says on stderr what probation watches and for how long, and with
/// `--detach` returns as soon as every service runs (`state: probation` in its JSON, exit 0);
/// the robot then commits the release, or rolls back one whose health check fails, by itself —
/// as `history` shows afterwards.
#[test]
fn a_detached_deploy_returns_on_probation_and_the_robot_decides_by_itself() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let ctx = w.context("v1", 3, 0);
    w.build(&ctx, "example.com/dep/app:v1");
    w.sim_up(&[]);
    let stack = w.stack("example.com/dep/app:v1", "test");

    let (code, v, err) = w.deploy_with(&stack, &["--detach"]);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "probation", "{v}");
    assert_eq!(v["release"], 1, "{v}");
    assert!(
        err.contains("watching `interface` for 5 s: no health check"),
        "{err}"
    );
    assert!(
        err.contains("watching `core` until its health check `/bin/busybox test -f /ready` passes"),
        "{err}"
    );
    assert!(err.contains("dts duckiebot history"), "{err}");
    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "running"),
        "{ps}"
    );
    let h = w.wait_history(1, "committed");
    assert_eq!(h[0]["current"], true, "{h}");
    let table = w.ok(&["duckiebot", "history", &w.name]);
    assert!(
        table.contains("1 *") && table.contains("committed"),
        "{table}"
    );

    // A new core whose health check fails: detached, the deploy still returns on probation;
    // the robot rolls back to release 1 by itself.
    std::fs::write(ctx.join("code/version.py"), "VERSION = \"v2\"\n").unwrap();
    w.build(&ctx, "example.com/dep/app:v1");
    let bad = w.stack("example.com/dep/app:v1", "false");
    let (code, v, err) = w.deploy_with(&bad, &["-d"]);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "probation", "{v}");
    assert_eq!(v["release"], 2, "{v}");
    let h = w.wait_history(2, "rolled-back");
    let r1 = h
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["release"] == 1)
        .unwrap();
    assert_eq!(r1["current"], true, "{h}");
    let logs = w.ok(&["duckiebot", "logs", &w.name, "core"]);
    assert!(
        logs.contains("VERSION = \"v1\""),
        "release 1 runs again: {logs}"
    );
    let table = w.ok(&["duckiebot", "history", &w.name]);
    assert!(table.contains("rolled-back"), "{table}");
}

#[test]
fn wrong_host_keys_and_concurrent_deploys_are_refused_safely() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let ctx = w.context("v1", 10, 0);
    w.build(&ctx, "example.com/dep/app:v1");
    let sim = w.sim_up(&[]);
    let stack = w.stack("example.com/dep/app:v1", "test");

    // Two deploys at once: one applies, the other waits or is refused — never a mix.
    let a = w.deploy_spawn(&stack);
    let b = w.deploy_spawn(&stack);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let states: Vec<String> = [&a, &b]
        .iter()
        .map(|o| {
            serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("failed: {}", String::from_utf8_lossy(&o.stderr)))
        })
        .collect();
    assert!(states.contains(&"committed".to_string()), "{states:?}");
    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
    let releases: Vec<u64> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["release"].as_u64())
        .collect();
    assert!(
        releases.windows(2).all(|p| p[0] == p[1]),
        "one release runs: {ps}"
    );

    // A changed host key: refused before any protocol byte, whatever the flags.
    let kh = w.dts_home.path().join("known_hosts");
    let text = std::fs::read_to_string(&kh).unwrap();
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let fake = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let fake_key: Vec<&str> = fake.split_whitespace().take(2).collect();
    let addr = sim["address"].as_str().unwrap();
    let changed: String = text
        .lines()
        .map(|l| {
            if l.contains(addr) {
                format!(
                    "{} {}\n",
                    l.split_whitespace().next().unwrap(),
                    fake_key.join(" ")
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&kh, changed).unwrap();
    let out = w.dts(&[
        "duckiebot",
        "deploy",
        &w.name,
        "--stack",
        stack.to_str().unwrap(),
        "--accept-new-host-key",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("host key"), "{err}");
    std::fs::write(&kh, text).unwrap();
}

/// Bytes the host has sent out of `iface` (towards the robot).
fn tx_bytes(iface: &str) -> u64 {
    let p = format!("/sys/class/net/{iface}/statistics/tx_bytes");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

fn ip(args: &[&str]) {
    let st = Command::new(support::find_cmd("ip").unwrap())
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// Waits for the robot's sshd to take connections again after its link came back (its
/// neighbour entry may have gone stale meanwhile), as a user would before retrying.
fn wait_reachable(addr: &str) {
    let sock: std::net::SocketAddr = format!("{addr}:22").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr}:22 unreachable 30 s after the link came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one cold transfer of the `big`-MiB image sends at most: the noise (incompressible),
/// busybox and the small files compressed, protocol and SSH framing.
fn payload(big: usize) -> u64 {
    (big as u64) << 20 | 1 << 20
}

/// Uncompressed bytes per object batch in `src/wire/client.rs`: at most this much of what was
/// on the way when a transfer broke is lost and sent again.
const BATCH: u64 = 4 << 20;

#[test]
fn a_link_cut_at_10_50_and_90_percent_resumes_with_only_the_rest() {
    if !can_run() {
        return;
    }
    let w = World::new();
    // The user's own knobs for how soon a silent robot is given up on (OpenSSH's), so the
    // test does not wait out the 30 s default three times.
    let ssh = w.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(
        ssh.join("config"),
        "Host *\n  ServerAliveInterval 1\n  ServerAliveCountMax 3\n",
    )
    .unwrap();
    let sim = w.sim_up(&["--link-rate", "40mbit"]);
    let host_if = sim["host_interface"].as_str().unwrap().to_owned();
    let big = 12;
    for (i, percent) in [10u64, 50, 90].into_iter().enumerate() {
        let tag = format!("example.com/dep/cut:v{i}");
        let ctx = w.context(&format!("cut-{i}-{percent}"), 20, big);
        w.build(&ctx, &tag);
        let stack = w.stack(&tag, "test");
        let at = payload(big) * percent / 100;
        let (at_cut, code, err) = w.deploy_cut(&stack, &host_if, at, || {
            ip(&["link", "set", &host_if, "down"])
        });
        ip(&["link", "set", &host_if, "up"]);
        wait_reachable(sim["address"].as_str().unwrap());
        assert_eq!(code, Some(1), "cut at {percent} %: {err}");
        assert!(
            err.contains("connection") || err.contains("lost") || err.contains("closed"),
            "cut at {percent} %: the error says the link went away: {err}"
        );

        let (code, v, err) = w.deploy(&stack);
        assert_eq!(code, Some(0), "after the cut at {percent} %: {v} {err}");
        assert_eq!(v["state"], "committed", "{v}");
        let again = v["bytes_sent"].as_u64().unwrap();
        // What arrived before the cut, but for the batch that was on its way, is not sent again.
        let bound = payload(big).saturating_sub(at_cut) + BATCH + (256 << 10);
        assert!(
            again <= bound,
            "cut at {percent} % ({at_cut} bytes out): the next deploy sent {again} > {bound}: {v}"
        );
        eprintln!("cut at {percent} %: {at_cut} bytes out before, {again} after");
    }
}

/// The pid of `dt-agent serve` running in the network namespace `netns`.
fn agent_serve_pid(netns: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let want = std::fs::metadata(format!("/run/netns/{netns}")).ok()?.ino();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
        (ns == want && cmd.contains("dt-agent") && cmd.contains("serve") && !cmd.contains("sudo"))
            .then_some(pid)
    })
}

#[test]
fn an_agent_killed_mid_transfer_resumes_with_only_the_rest() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let sim = w.sim_up(&["--link-rate", "40mbit"]);
    let host_if = sim["host_interface"].as_str().unwrap().to_owned();
    let netns = format!("dts-sim-{}", w.name);
    let big = 12;
    let ctx = w.context("killed", 20, big);
    w.build(&ctx, "example.com/dep/app:v1");
    let stack = w.stack("example.com/dep/app:v1", "test");
    let at = payload(big) * 6 / 10;
    let (at_cut, code, err) = w.deploy_cut(&stack, &host_if, at, || {
        let pid = agent_serve_pid(&netns).expect("dt-agent serve runs on the robot");
        // SAFETY: kill(2) on a pid just read from /proc; the worst case is ESRCH.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("dt-agent") || err.contains("closed") || err.contains("ended"),
        "{err}"
    );

    let (code, v, err) = w.deploy(&stack);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    let again = v["bytes_sent"].as_u64().unwrap();
    let bound = payload(big).saturating_sub(at_cut) + BATCH + (256 << 10);
    assert!(
        again <= bound,
        "{at_cut} bytes out before the kill; then {again} > {bound}: {v}"
    );
}

/// A deploy that cannot fit in what the robot's hello reported free is refused before any
/// content goes; a card that fills up during a transfer anyway (something else on the robot
/// writing) is a clear error; either way the running release stays.
#[test]
fn a_full_robot_disk_is_a_clear_error_and_the_running_release_stays() {
    if !can_run() {
        return;
    }
    let w = World::new();
    // The robot's root file system lives under DTS_HOME/sims: a small tmpfs there is an SD card
    // with little room left, while the laptop's own store stays on the real disk.
    let sims = w.dts_home.path().join("sims");
    std::fs::create_dir_all(&sims).unwrap();
    let Some(_card) = support::Tmpfs::mount(&sims, "256m") else {
        return;
    };
    let ctx = w.context("small", 20, 0);
    w.build(&ctx, "example.com/dep/app:v1");
    // Slow enough that the card can be filled while the transfer is on its way.
    let sim = w.sim_up(&["--link-rate", "40mbit"]);
    let host_if = sim["host_interface"].as_str().unwrap().to_owned();
    let stack = w.stack("example.com/dep/app:v1", "test");
    let (code, v, err) = w.deploy(&stack);
    assert_eq!(code, Some(0), "{v} {err}");

    let filler = sims.join("filler");
    // In 1 MiB writes, watching the free space: the robot may be writing at the same time.
    let fill_leaving = |left: u64| {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        loop {
            let st = rustix::fs::statvfs(&sims).unwrap();
            if st.f_bavail * st.f_frsize <= left + (1 << 20) || f.write_all(&chunk).is_err() {
                break;
            }
        }
    };
    let ctx = w.context("big", 20, 12);
    w.build(&ctx, "example.com/dep/app:v2");
    let stack2 = w.stack("example.com/dep/app:v2", "test");

    // 100 MiB free is room for the 12 MiB, but not with the 128 MiB a robot keeps free:
    // refused with the numbers, and nothing of the image crosses the link.
    fill_leaving(100 << 20);
    let before = tx_bytes(&host_if);
    let (code, v, err) = w.deploy(&stack2);
    let sent = tx_bytes(&host_if) - before;
    assert_eq!(code, Some(1), "{v} {err}");
    assert!(
        err.contains("free") && err.contains("needs about"),
        "the error gives free and needed space: {err}"
    );
    assert!(sent < 512 << 10, "{sent} bytes went before the refusal");
    let running = || {
        let ps: serde_json::Value =
            serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
        let ps = ps.as_array().unwrap().clone();
        assert_eq!(ps.len(), 2, "{ps:?}");
        for c in &ps {
            assert_eq!(c["state"], "running", "{c}");
            assert_eq!(c["release"], 1, "{c}");
        }
        assert!(
            w.ok(&["duckiebot", "logs", &w.name, "core"])
                .contains("VERSION = \"small\"")
        );
    };
    running();

    // Room when the deploy starts; 4 MiB left once 2 MiB are on their way.
    std::fs::remove_file(&filler).unwrap();
    let (_, code, err) = w.deploy_cut(&stack2, &host_if, 2 << 20, || fill_leaving(4 << 20));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("No space left") || err.contains("no space") || err.contains("full"),
        "the error says the robot's disk is full: {err}"
    );
    running();

    // Room again: the deploy finishes the job.
    std::fs::remove_file(&filler).unwrap();
    let (code, v, err) = w.deploy(&stack2);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    w.ok(&["sim", "down", &w.name.clone()]);
}

/// Whether a cross-built `dt-agent` for `arch` is where `dts sim up --arch` looks (and QEMU
/// can run it); prints a SKIP line otherwise.
fn has_agent(arch: &str) -> bool {
    if support::require_agent(arch).is_none() {
        return false;
    }
    let qemu = if arch == "arm64" { "aarch64" } else { "arm" };
    if !Path::new(&format!("/proc/sys/fs/binfmt_misc/qemu-{qemu}")).exists() {
        support::skip(&format!("qemu-{qemu} is not registered in binfmt_misc"));
        return false;
    }
    if !support::busybox(arch).exists() {
        support::skip(&format!(
            "no {arch} busybox fixture: run `bash scripts/fixtures`"
        ));
        return false;
    }
    true
}

/// `bytes` of noise from `seed`.
pub(crate) fn noise(seed: u64, bytes: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Deploy, no-op, a change of one small file and two binaries, and a rollback on a robot of
/// `arch` (its agent under QEMU), with `memory` when given. A 6 MiB and a 9 MiB binary change
/// by a few bytes: on a robot with less than 2 GB (16 MiB zstd windows) only the 6 MiB one can
/// travel as a patch (old and new must fit one window), the 9 MiB one goes whole; on a big
/// robot both are patches.
fn deploy_round_trip_on(arch: &'static str, memory: Option<&str>) {
    if !can_run() || !has_agent(arch) {
        return;
    }
    let w = World::for_arch(arch);
    let ctx = w.context("v1", 100, 0);
    let six = noise(6, 6 << 20);
    let nine = noise(9, 9 << 20);
    std::fs::write(ctx.join("big/six.bin"), &six).unwrap();
    std::fs::write(ctx.join("big/nine.bin"), &nine).unwrap();
    let tag = "example.com/dep/app:v1";
    w.build(&ctx, tag);

    let mut args = vec!["sim", "up", w.name.as_str(), "--arch", arch, "--json"];
    if let Some(m) = memory {
        args.extend(["--memory", m]);
    }
    let up: serde_json::Value = serde_json::from_str(&w.ok(&args)).unwrap();
    let want_arch = if arch == "arm64" {
        "linux/arm64"
    } else {
        "linux/arm/v7"
    };
    assert_eq!(up["status"]["arch"], want_arch, "{up}");
    if memory.is_some() {
        assert_eq!(up["status"]["memory_bytes"], 1u64 << 30, "{up}");
    }
    let stack = w.stack(tag, "test");

    let (code, v, err) = w.deploy(&stack);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert!(
        w.ok(&["duckiebot", "logs", &w.name, "core"])
            .contains("VERSION = \"v1\"")
    );

    let (code, v, err) = w.deploy(&stack);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "unchanged", "{v}");
    assert_eq!(v["objects_sent"], 0, "{v}");

    // One small file and a few bytes of each binary.
    std::fs::write(ctx.join("code/version.py"), "VERSION = \"v2\"\n").unwrap();
    for (name, old) in [("six.bin", &six), ("nine.bin", &nine)] {
        let mut new = old.clone();
        new[old.len() / 2..old.len() / 2 + 12].copy_from_slice(b"edited by v2");
        std::fs::write(ctx.join("big").join(name), new).unwrap();
    }
    w.build(&ctx, tag);
    let (code, v, err) = w.deploy_as_planned(&stack);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert_eq!(v["objects_sent"], 3, "{v}");
    let sent = v["bytes_sent"].as_u64().unwrap();
    if memory.is_some() {
        assert!(
            (9 << 20..10 << 20).contains(&sent),
            "the 9 MiB binary goes whole, the rest as patches: {v}"
        );
    } else {
        assert!(sent < 256 << 10, "both binaries as patches: {v}");
    }
    assert!(
        w.ok(&["duckiebot", "logs", &w.name, "core"])
            .contains("VERSION = \"v2\"")
    );

    w.ok(&["duckiebot", "rollback", &w.name]);
    let logs = w.ok(&["duckiebot", "logs", &w.name, "core"]);
    assert!(logs.contains("VERSION = \"v1\""), "v1 runs again: {logs}");
}

/// A DB18/DB19: Raspberry Pi 3 with 1 GB on a 32-bit OS. 32-bit zstd refuses windows above
/// 1 GiB (asking for 2 GiB failed every deploy), and 1 GB holds 16 MiB windows at most.
#[test]
fn an_armhf_robot_with_1_gb_deploys_noops_patches_and_rolls_back() {
    deploy_round_trip_on("armhf", Some("1g"));
}

/// A DB21 (Jetson Nano, arm64).
#[test]
fn an_arm64_robot_deploys_noops_patches_and_rolls_back() {
    deploy_round_trip_on("arm64", None);
}

/// An image built only for another CPU than the robot's is the user's mistake: exit 2, the
/// image and the platforms it has named, from the dry run and the deploy alike, and the robot
/// keeps what it ran (no release made).
#[test]
fn an_image_without_the_robots_platform_is_bad_input_and_changes_nothing() {
    if !can_run() || support::require_busybox("arm64").is_none() {
        return;
    }
    // An arm64 image (COPY only: no emulator needed) for an amd64 robot.
    let w = World::for_arch("arm64");
    let ctx = w.context("v1", 3, 0);
    w.build(&ctx, "example.com/dep/app:arm-only");
    w.ok(&["sim", "up", &w.name]);
    let stack = w.stack("example.com/dep/app:arm-only", "test");
    for extra in [&["--dry-run"][..], &[]] {
        let (code, v, err) = w.deploy_with(&stack, extra);
        assert_eq!(code, Some(2), "{extra:?}: {v} {err}");
        assert!(
            err.contains("example.com/dep/app:arm-only") && err.contains("linux/arm64"),
            "{extra:?}: names the image and what it has: {err}"
        );
    }
    let h = w.ok(&["duckiebot", "history", &w.name, "--json"]);
    assert_eq!(h.trim(), "[]", "no release was made: {h}");
}
