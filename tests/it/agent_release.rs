//! Releases through `dt-agent daemon` and `dt-agent deploy|history|rollback`, with real runc,
//! overlayfs and busybox images: a 2-stage release commits; the same spec again is a no-op; a
//! release whose health check fails rolls back by itself to the previous one; rollback by hand;
//! two deploys at once are never mixed; a daemon killed during probation rolls back on restart.
//!
//! The robot is made as in tests/it/agent_run.rs: its own network namespace, a temp state
//! directory, the daemon under `unshare --mount … nsenter --net=NS`.

use crate::support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::images::{Entry, Layout};
use crate::support::netns::{Robot, TestNet};
use dts::agent::container::ContainerConfig;
use dts::agent::release::{HealthSpec, ReleaseSpec, ServiceSpec};
use dts::oci::{Digest, Platform};
use serde_json::Value;

const FIXTURES: &str = "/var/cache/dts-fixtures/busybox";

/// Applets the test images link to busybox.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "test", "touch", "rm", "true", "false", "ls",
];

fn busybox() -> Option<PathBuf> {
    let p = Path::new(FIXTURES).join("amd64").join("busybox");
    p.exists().then_some(p)
}

/// Root, kernel features and fixtures every test here needs; prints the skip line otherwise.
pub(crate) fn can_run() -> bool {
    if !support::require_root("runs containers: overlay mounts, cgroups, namespaces") {
        return false;
    }
    if !support::netns::require_netns("the daemon runs in a network namespace of its own") {
        return false;
    }
    for cmd in ["runc", "unshare", "nsenter"] {
        if !support::require_cmd(cmd) {
            return false;
        }
    }
    if busybox().is_none() {
        support::skip(&format!(
            "no static busybox for amd64 in {FIXTURES}: run `bash scripts/fixtures`"
        ));
        return false;
    }
    true
}

/// A busybox image for this machine as an OCI layout, with `/version` holding `version` (so
/// each version is its own manifest).
fn busybox_layout(dir: &Path, version: &str, name: &str) -> PathBuf {
    let bb = std::fs::read(busybox().unwrap()).unwrap();
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::File("bin/busybox", 0o755, bb),
        Entry::Dir("etc/", 0o755),
        Entry::File(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        ),
        Entry::File("etc/group", 0o644, b"root:x:0:\n".to_vec()),
        Entry::File("version", 0o644, version.as_bytes().to_vec()),
        Entry::Dir("tmp/", 0o1777),
    ];
    for a in APPLETS {
        let path: &'static str = Box::leak(format!("bin/{a}").into_boxed_str());
        entries.push(Entry::Symlink(path, "busybox"));
    }
    let layout = dir.join(format!("busybox-{version}.layout"));
    let l = Layout::new(&layout);
    let w = l.image(
        &Platform::host(),
        &[support::images::layer_tar(&entries)],
        &["sh"],
    );
    l.finish(&[(name, w.manifest)]);
    layout
}

/// One robot with a daemon (the fixture of tests/it/agent_run.rs).
pub(crate) struct Agent {
    root: PathBuf,
    robot: Robot,
    daemon: Option<Child>,
    env: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Agent {
    pub(crate) fn new(net: &mut TestNet) -> Agent {
        Agent::with(net, "", &[])
    }

    /// A robot whose `robot.yaml` ends with `extra` and whose daemon has `env` besides.
    pub(crate) fn with(net: &mut TestNet, extra: &str, env: &[(&str, &str)]) -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("agent");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("robot.yaml"),
            format!("hostname: testbot\ntype: duckiebot\nconfiguration: virtual\n{extra}"),
        )
        .unwrap();
        let robot = net.robot("agent");
        let mut a = Agent {
            root,
            robot,
            daemon: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: tmp,
        };
        a.start_daemon();
        a
    }

    pub(crate) fn state(&self) -> &Path {
        &self.root
    }

    fn start_daemon(&mut self) {
        let netns = format!("--net=/run/netns/{}", self.robot.ns);
        let child = Command::new(support::find_cmd("unshare").unwrap())
            .args(["--mount", "--propagation", "private"])
            .arg(support::find_cmd("nsenter").unwrap())
            .args([netns.as_str(), "--"])
            .arg(env!("CARGO_BIN_EXE_dt-agent"))
            .args([
                "daemon",
                "--ssh-host-key",
                "/nonexistent",
                "--avahi-services-dir",
                "/nonexistent",
            ])
            .env("DT_AGENT_ROOT", self.state())
            .env("DT_AGENT_CONFIG", self.state().join("robot.yaml"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.cli(&["ps"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "the daemon did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no clean-up of any kind.
    fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dt-agent"));
        c.args(args)
            .env("DT_AGENT_ROOT", self.state())
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    #[track_caller]
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "dt-agent {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports a busybox image `name` of `version`; returns its manifest digest.
    pub(crate) fn image(&self, version: &str, name: &str) -> Digest {
        let layout = busybox_layout(self.state(), version, name);
        self.ok(&["image", "import", layout.to_str().unwrap()]);
        let images: Value = serde_json::from_str(&self.ok(&["image", "ls", "--json"])).unwrap();
        let i = images
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"].as_str().is_some_and(|n| n.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} not in {images}"));
        i["manifest"].as_str().unwrap().parse().unwrap()
    }

    /// Writes `spec` to a file and returns its path.
    pub(crate) fn spec_file(&self, spec: &ReleaseSpec, tag: &str) -> String {
        let p = self.state().join(format!("release-{tag}.json"));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&serde_json::to_vec_pretty(spec).unwrap())
            .unwrap();
        p.to_str().unwrap().to_string()
    }

    /// `dt-agent deploy FILE --json`: (exit code, outcome, stderr).
    pub(crate) fn deploy(&self, spec: &ReleaseSpec, tag: &str) -> (Option<i32>, Value, String) {
        let file = self.spec_file(spec, tag);
        let out = self.cli(&["deploy", &file, "--json"]);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub(crate) fn ps(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).unwrap();
        v.as_array().unwrap().clone()
    }

    pub(crate) fn container(&self, name: &str) -> Value {
        self.ps()
            .into_iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}: {:?}", self.ps()))
    }

    pub(crate) fn history(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.ok(&["history", "--json"])).unwrap();
        v.as_array().unwrap().clone()
    }

    /// Waits until release `n` is in `state`.
    pub(crate) fn wait_state(&self, n: u64, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let h = self.history();
            if h.iter().any(|r| r["release"] == n && r["state"] == state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "release {n} never {state}: {h:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.daemon.is_none() {
            self.start_daemon();
        }
        if let Ok(ps) = serde_json::from_slice::<Value>(&self.cli(&["ps", "-a", "--json"]).stdout) {
            for c in ps.as_array().into_iter().flatten() {
                let _ = self.cli(&["rm", "-f", c["name"].as_str().unwrap_or_default()]);
            }
        }
        self.kill_daemon();
    }
}

/// A shell loop that leaves at once on SIGTERM (a busybox `sleep` as pid 1 would ignore it).
pub(crate) fn looping(before: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("trap 'exit 0' TERM; {before} while :; do sleep 0.1; done"),
    ]
}

pub(crate) fn service(name: &str, stage: u32, manifest: &Digest, cmd: Vec<String>) -> ServiceSpec {
    ServiceSpec {
        name: name.parse().unwrap(),
        stage,
        order: 0,
        image_name: "example.com/test/busybox".into(),
        manifest: manifest.clone(),
        container: ContainerConfig {
            // The robot names it after the service and runs the manifest (normalize), but a
            // config decodes only with a checked name and image.
            name: name.parse().unwrap(),
            image: dts::api::ImageRef::digest(manifest),
            cmd: Some(cmd),
            stop_timeout: Some(5),
            ..Default::default()
        },
        healthcheck: None,
    }
}

pub(crate) fn health(test: &[&str]) -> Option<HealthSpec> {
    Some(HealthSpec {
        test: test.iter().map(|s| s.to_string()).collect(),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        retries: 3,
        start_period: Duration::ZERO,
    })
}

/// The 2-stage release: `iface` (stage 0, runs) and `core` (stage 1, healthy once it made
/// `/ready`).
fn two_stage(iface: &Digest, core: &Digest, probation: Duration) -> ReleaseSpec {
    let mut c = service("core", 1, core, looping("touch /ready;"));
    c.healthcheck = health(&["test", "-f", "/ready"]);
    ReleaseSpec {
        stack: "duckiebot".into(),
        services: vec![c, service("iface", 0, iface, looping(""))],
        probation,
    }
}

fn pid(c: &Value) -> u64 {
    c["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("not running: {c}"))
}

pub(crate) fn release_of(h: &[Value], n: u64) -> Value {
    h.iter()
        .find(|r| r["release"] == n)
        .cloned()
        .unwrap_or_else(|| panic!("no release {n} in {h:?}"))
}

#[test]
fn releases_commit_do_nothing_twice_roll_back_by_themselves_and_by_hand() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net);
    let v1 = agent.image("v1", "example.com/test/busybox:stable");
    let probation = Duration::from_secs(1);

    // Release 1: both stages, committed.
    let spec1 = two_stage(&v1, &v1, probation);
    let (code, out, err) = agent.deploy(&spec1, "1");
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["release"], 1, "{out}");
    assert_eq!(out["state"], "committed", "{out}");
    assert_eq!(out["unchanged"], false);
    let iface = agent.container("iface");
    let core = agent.container("core");
    for c in [&iface, &core] {
        assert_eq!(c["state"], "running", "{c}");
        assert_eq!(c["release"], 1, "{c}");
        assert_eq!(c["service"], c["name"], "{c}");
    }
    // Stage order: the interface started before core.
    assert!(iface["started_at"].as_str() <= core["started_at"].as_str());
    let status: Value = serde_json::from_str(&agent.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["release"], 1, "{status}");
    let roots = std::fs::read_to_string(agent.state().join("roots/releases")).unwrap();
    assert!(roots.contains(&v1.to_string()), "{roots}");

    // The same spec again: nothing touched.
    let (code, out, _) = agent.deploy(&spec1, "1-again");
    assert_eq!(code, Some(0));
    assert_eq!(out["unchanged"], true, "{out}");
    assert_eq!(out["release"], 1);
    assert_eq!(pid(&agent.container("core")), pid(&core));
    assert_eq!(pid(&agent.container("iface")), pid(&iface));

    // Release 2: core's new image (under the same name, so v1 keeps no name) never gets
    // healthy: rolled back by itself, exit 1 with the reason; iface was never touched.
    let v2 = agent.image("v2", "example.com/test/busybox:stable");
    assert_ne!(v1, v2);
    let mut spec2 = two_stage(&v1, &v2, probation);
    spec2.services[0].healthcheck = health(&["sh", "-c", "echo not ready yet; exit 1"]);
    let t = Instant::now();
    let (code, out, err) = agent.deploy(&spec2, "2");
    assert_eq!(code, Some(1), "{out} {err}");
    assert_eq!(out["state"], "rolled-back", "{out}");
    assert_eq!(out["release"], 2);
    assert_eq!(out["rolled_back_to"], 1);
    assert!(
        err.contains("core") && err.contains("not ready yet") && err.contains("rolled back"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let core_again = agent.container("core");
    assert_eq!(core_again["state"], "running");
    assert_eq!(core_again["release"], 1, "{core_again}");
    assert_eq!(core_again["manifest"], v1.to_string());
    assert_ne!(
        pid(&core_again),
        pid(&core),
        "recreated from release 1's spec"
    );
    assert_eq!(pid(&agent.container("iface")), pid(&iface), "kept");
    let h = agent.history();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(release_of(&h, 1)["state"], "committed");
    assert_eq!(release_of(&h, 1)["current"], true);
    let r2 = release_of(&h, 2);
    assert_eq!(r2["state"], "rolled-back");
    assert_eq!(r2["services"]["core"], v2.to_string());
    assert!(
        r2["reason"].as_str().unwrap().contains("not ready yet"),
        "{r2}"
    );
    for k in ["release", "state", "created", "stack", "services"] {
        assert!(!r2[k].is_null(), "history lacks {k}: {r2}");
    }

    // Release 3: a changed core that is healthy; only core restarts.
    let mut spec3 = two_stage(&v1, &v2, probation);
    spec3.services[0].container.env = vec!["VERSION=3".into()];
    let (code, out, err) = agent.deploy(&spec3, "3");
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["release"], 3);
    let actions: Vec<(String, String)> = out["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("iface".into(), "kept".into()),
            ("core".into(), "started".into())
        ]
    );
    assert_eq!(agent.container("core")["release"], 3);
    assert_eq!(pid(&agent.container("iface")), pid(&iface));

    // By hand: back to release 1 (3's previous), fast, no new number.
    let t = Instant::now();
    let out = agent.cli(&["rollback", "--json"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["release"], 1, "{v}");
    assert!(took < Duration::from_secs(3), "rollback took {took:?}");
    let c = agent.container("core");
    assert_eq!(c["release"], 1);
    assert_eq!(c["manifest"], v1.to_string());
    let h = agent.history();
    assert_eq!(h.len(), 3);
    assert_eq!(release_of(&h, 3)["state"], "rolled-back");
    assert!(
        release_of(&h, 3)["reason"]
            .as_str()
            .unwrap()
            .contains("by hand")
    );
    assert_eq!(release_of(&h, 1)["current"], true);
    let status: Value = serde_json::from_str(&agent.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["release"], 1);

    // A release that never passed probation is not a rollback target; one that did is.
    let out = agent.cli(&["rollback", "--to", "2"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("never passed probation"));
    agent.ok(&["rollback", "--to", "3"]);
    assert_eq!(agent.container("core")["release"], 3);
    let table = agent.ok(&["history"]);
    assert!(table.contains("3 *"), "{table}");
    // The GC keeps what releases 3 and 1 run, though v1 has no name any more.
    agent.ok(&["gc"]);
    agent.ok(&["fsck"]);
    agent.ok(&["rollback"]);
    assert_eq!(agent.container("core")["manifest"], v1.to_string());
}

#[test]
fn two_deploys_at_once_are_never_mixed() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net);
    let v1 = agent.image("v1", "example.com/test/busybox:one");
    let v2 = agent.image("v2", "example.com/test/busybox:two");

    // A: probation of 3 s (iface has no health check). B: other images.
    let a = two_stage(&v1, &v1, Duration::from_secs(3));
    let b = two_stage(&v2, &v2, Duration::from_secs(1));
    let fa = agent.spec_file(&a, "a");
    let fb = agent.spec_file(&b, "b");
    let mut first = agent
        .command(&["deploy", &fa, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_state(1, "probation");
    let second = agent
        .command(&["deploy", &fb, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While A runs, nothing of B may appear.
    let mut samples = 0;
    loop {
        let ps = agent.ps();
        if first.try_wait().unwrap().is_some() {
            break;
        }
        samples += 1;
        for c in &ps {
            assert_eq!(c["release"], 1, "B switched while A was on probation: {c}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(samples > 3, "A's probation was watched");
    let out_a = first.wait_with_output().unwrap();
    let out_b = second.wait_with_output().unwrap();
    assert_eq!(out_a.status.code(), Some(0), "{out_a:?}");
    assert_eq!(out_b.status.code(), Some(0), "{out_b:?}");
    let va: Value = serde_json::from_slice(&out_a.stdout).unwrap();
    let vb: Value = serde_json::from_slice(&out_b.stdout).unwrap();
    assert_eq!(
        (va["release"].as_u64(), vb["release"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(vb["waited_ms"].as_u64().unwrap() > 1000, "{vb}");
    // A's containers were retired and stop in the background (agent::release::handover).
    let t = Instant::now();
    while agent.ps().iter().any(|c| c["release"] == 1) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "A's containers stayed: {:?}",
            agent.ps()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("A's retired containers went after {:?}", t.elapsed());
    for c in agent.ps() {
        assert_eq!(c["release"], 2, "{c}");
        assert_eq!(c["manifest"], v2.to_string(), "{c}");
    }
    let h = agent.history();
    assert_eq!(release_of(&h, 1)["state"], "committed");
    assert_eq!(release_of(&h, 2)["state"], "committed");
    assert_eq!(release_of(&h, 2)["current"], true);
}

#[test]
fn a_daemon_killed_during_probation_rolls_back_when_it_starts_again() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    let mut agent = Agent::new(&mut net);
    let v1 = agent.image("v1", "example.com/test/busybox:one");
    let v2 = agent.image("v2", "example.com/test/busybox:two");

    // A first release that fails has nothing to go back to: failed, nothing left running.
    let mut bad = two_stage(&v1, &v1, Duration::from_secs(1));
    bad.services[0].container.cmd = Some(vec!["sh".into(), "-c".into(), "exit 3".into()]);
    let (code, out, err) = agent.deploy(&bad, "bad");
    assert_eq!(code, Some(1), "{out} {err}");
    assert_eq!(out["state"], "failed", "{out}");
    assert!(
        err.contains("exit code 3") || err.contains("exited"),
        "{err}"
    );
    assert!(agent.ps().is_empty(), "{:?}", agent.ps());

    // A container outside the release with a service's name: refused, exit 2.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "core",
        "example.com/test/busybox:one",
        "true",
    ]);
    let (code, _, err) = agent.deploy(&two_stage(&v1, &v1, Duration::ZERO), "conflict");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("outside a release"), "{err}");
    agent.ok(&["rm", "-f", "core"]);

    let good = two_stage(&v1, &v1, Duration::from_secs(1));
    let (code, out, err) = agent.deploy(&good, "good");
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["release"], 2);
    let iface = agent.container("iface");

    // Release 3 on a long probation; the daemon is SIGKILLed in the middle of it.
    let mut long = two_stage(&v1, &v2, Duration::from_secs(60));
    long.services[0].healthcheck = None;
    let f = agent.spec_file(&long, "long");
    let deploying = agent
        .command(&["deploy", &f])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_state(3, "probation");
    assert_eq!(agent.container("core")["release"], 3);
    agent.kill_daemon();
    let out = deploying.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the client saw the daemon go");
    assert!(agent.state().join("releases/switch.json").exists());

    // The new daemon goes back to release 2 before it answers anything.
    agent.start_daemon();
    let h = agent.history();
    let r3 = release_of(&h, 3);
    assert_eq!(r3["state"], "rolled-back", "{r3}");
    assert!(
        r3["reason"].as_str().unwrap().contains("agent stopped"),
        "{r3}"
    );
    assert_eq!(release_of(&h, 2)["current"], true);
    let core = agent.container("core");
    assert_eq!(core["state"], "running", "{core}");
    assert_eq!(core["release"], 2, "{core}");
    assert_eq!(core["manifest"], v1.to_string());
    assert_eq!(pid(&agent.container("iface")), pid(&iface), "never touched");
    assert!(!agent.state().join("releases/switch.json").exists());
    assert_eq!(agent.ps().len(), 2, "{:?}", agent.ps());
}

/// Issue 20: `deploy --detach` answers as soon as every service runs (state `probation`), and
/// the daemon sees probation through by itself: a good release is committed, one whose health
/// check fails is rolled back. A client that goes away in the middle of a deploy that waits
/// changes nothing either: the daemon still commits.
#[test]
fn a_detached_deploy_answers_on_probation_and_the_daemon_decides_by_itself() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net);
    let v1 = agent.image("v1", "example.com/test/busybox:one");
    let v2 = agent.image("v2", "example.com/test/busybox:two");
    let detached = |spec: &ReleaseSpec, tag: &str| {
        let file = agent.spec_file(spec, tag);
        let out = agent.cli(&["deploy", "--detach", &file, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), v, err)
    };

    // Release 1: `iface` has no health check, so probation lasts 2 s; the answer comes as
    // soon as both services run.
    let spec1 = two_stage(&v1, &v1, Duration::from_secs(2));
    let (code, out, err) = detached(&spec1, "1");
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["release"], 1, "{out}");
    assert_eq!(out["state"], "probation", "{out}");
    assert!(err.contains("on probation"), "{err}");
    let actions: Vec<&str> = out["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["started", "started"], "{out}");
    for c in ["iface", "core"] {
        assert_eq!(agent.container(c)["state"], "running");
    }
    agent.wait_state(1, "committed");
    assert_eq!(release_of(&agent.history(), 1)["current"], true);

    // Release 2: core's health check never passes. Detached, the answer is still `probation`
    // (exit 0); the daemon then rolls back to release 1 by itself.
    let mut spec2 = two_stage(&v1, &v2, Duration::from_secs(2));
    spec2.services[0].healthcheck = health(&["sh", "-c", "echo not ready yet; exit 1"]);
    let (code, out, err) = detached(&spec2, "2");
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(out["release"], 2, "{out}");
    assert_eq!(out["state"], "probation", "{out}");
    agent.wait_state(2, "rolled-back");
    let h = agent.history();
    assert!(
        release_of(&h, 2)["reason"]
            .as_str()
            .unwrap()
            .contains("not ready yet"),
        "{h:?}"
    );
    assert_eq!(release_of(&h, 1)["current"], true, "{h:?}");
    let core = agent.container("core");
    assert_eq!(core["state"], "running", "{core}");
    assert_eq!(core["release"], 1, "{core}");
    assert_eq!(core["manifest"], v1.to_string());

    // Release 3, not detached: its client is killed during probation; the daemon commits
    // anyway.
    let mut spec3 = two_stage(&v1, &v2, Duration::from_secs(2));
    spec3.services[1].container.env = vec!["VERSION=3".into()];
    let f = agent.spec_file(&spec3, "3");
    let mut client = agent
        .command(&["deploy", &f])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    agent.wait_state(3, "probation");
    client.kill().unwrap();
    let _ = client.wait();
    agent.wait_state(3, "committed");
    assert_eq!(agent.container("iface")["release"], 3);
}
