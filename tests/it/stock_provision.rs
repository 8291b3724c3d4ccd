//! Acceptance tests of issue 13, scope 2: `dts duckiebot provision` takes over a stock robot's
//! Docker stack (tests/it/support/stock_robot.rs: real systemd, dockerd 20.10, the compose
//! project `duckietown` started by dt-autoboot).
//!
//! - adoption, on robots of both image arches: every Docker image is in the agent's store
//!   under Docker's config digest; release 1 runs the same images (by digest) with the same
//!   command and env; Docker's `duckietown` containers are stopped, restart policy `no`, still
//!   stopped after `systemctl restart docker`, and dt-autoboot is disabled; the motors and
//!   camera roles' nodes are in the agent's interface container and in no other; `dts duckiebot
//!   history` shows release 1; a second provision changes nothing;
//! - the first `dts duckiebot deploy` after adoption (amd64 robot): the default stack's images
//!   are all held by the robot, so no object crosses the link (bytes counted on the robot's
//!   veth); `lane-following` with `core` swapped for an image only the laptop has ships only
//!   that image's files the robot lacks (not its busybox, which the stand-ins share);
//! - `--restore-docker` gives the robot back to Docker (containers running with their restart
//!   policies, autoboot enabled, the agent's release gone) and a second run changes nothing;
//! - faults: a provision killed during the image import is finished by the rerun, which imports
//!   nothing twice; release 1 failing its health check leaves Docker's stack running and exits
//!   with the documented code (3);
//! - `--remove-docker`: Docker's packages and data root gone, runc and the adopted stack kept,
//!   `--restore-docker` then refused.
//!
//! The robots are provisioned with `--configuration virtual`: its roles are plain device nodes
//! (`/dev/i2c-1`, `/dev/video0`, …) which the test mknods in the robot, where a DB21J's need
//! the Jetson's sysfs GPIO directories and nvargus socket. Needs root; skips otherwise.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::stock_robot::{PASSWORD, PROJECT, STACK, StockRobot, USER};

fn can_run() -> bool {
    support::require_root("boots stock robots") && support::require_cmd("ssh-keygen")
}

/// The laptop: a HOME with a key pair and a DTS_HOME of its own.
struct Laptop {
    home: tempfile::TempDir,
    dts_home: tempfile::TempDir,
}

impl Laptop {
    fn new() -> Laptop {
        let l = Laptop {
            home: tempfile::tempdir().unwrap(),
            dts_home: tempfile::tempdir().unwrap(),
        };
        let ssh = l.home.path().join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "tech@lab", "-f"])
            .arg(ssh.join("id_ed25519"))
            .status()
            .unwrap();
        assert!(st.success());
        l
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dts"));
        c.args(args)
            .env("DTS_HOME", self.dts_home.path())
            .env("HOME", self.home.path())
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn dts(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut child = self.command(args).spawn().unwrap();
        let mut i = child.stdin.take().unwrap();
        let _ = i.write_all(stdin.as_bytes());
        drop(i);
        child.wait_with_output().unwrap()
    }

    fn provision_args(robot: &StockRobot, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "duckiebot",
            "provision",
            &format!("{USER}@{}", robot.addr()),
            "--hostname",
            "adopted",
            "--configuration",
            "virtual",
            "--accept-new-host-key",
            "--password-stdin",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn provision_raw(&self, robot: &StockRobot, extra: &[&str]) -> Output {
        let args = Self::provision_args(robot, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.dts(&args, &format!("{PASSWORD}\n"))
    }

    #[track_caller]
    fn provision(&self, robot: &StockRobot, extra: &[&str]) -> Value {
        let out = self.provision_raw(robot, extra);
        let (o, e) = text(&out);
        assert!(
            out.status.success(),
            "provision {extra:?} failed ({:?}):\n{o}\n{e}\n{}",
            out.status.code(),
            robot_logs(robot)
        );
        serde_json::from_str(&o).unwrap_or_else(|e| panic!("not JSON ({e}): {o}"))
    }

    /// `dts duckiebot provision ROBOT --restore-docker --json` (key login, as after provisioning).
    #[track_caller]
    fn restore(&self, robot: &StockRobot) -> Value {
        let target = format!("{USER}@{}", robot.addr());
        let args = [
            "duckiebot",
            "provision",
            &target,
            "--restore-docker",
            "--json",
        ];
        let out = self.dts(&args, "");
        let (o, e) = text(&out);
        assert!(
            out.status.success(),
            "--restore-docker failed ({:?}):\n{o}\n{e}",
            out.status.code()
        );
        serde_json::from_str(&o).unwrap_or_else(|e| panic!("not JSON ({e}): {o}"))
    }

    /// `dts duckiebot deploy ROBOT --json EXTRA…` (key login): (exit code, JSON, stderr).
    fn deploy(&self, robot: &StockRobot, extra: &[&str]) -> (Option<i32>, Value, String) {
        let target = format!("{USER}@{}", robot.addr());
        let mut args = vec!["duckiebot", "deploy", &target, "--json"];
        args.extend_from_slice(extra);
        let out = self.dts(&args, "");
        let (o, e) = text(&out);
        (
            out.status.code(),
            serde_json::from_str(&o).unwrap_or(Value::Null),
            e,
        )
    }

    /// `dts duckiebot VERB adopted… --json` after provisioning (key login).
    #[track_caller]
    fn robot_json(&self, robot: &StockRobot, verb: &[&str]) -> Value {
        let target = format!("{USER}@{}", robot.addr());
        let mut args = vec!["duckiebot"];
        args.extend_from_slice(verb);
        args.push(&target);
        args.push("--json");
        let out = self.dts(&args, "");
        let (o, e) = text(&out);
        assert!(out.status.success(), "dts {args:?} failed:\n{o}\n{e}");
        serde_json::from_str(&o).unwrap_or_else(|e| panic!("not JSON ({e}): {o}"))
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn robot_logs(robot: &StockRobot) -> String {
    let out = robot.exec(&["journalctl", "-u", "dt-agent", "-n", "60", "--no-pager"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a Duckiebot's kernel and image have that the stock test robot lacks: the virtual
/// profile's nodes (made as `dts sim up` makes them) and the i2c and gpio groups.
pub(crate) fn make_hardware(robot: &StockRobot) {
    robot.exec_ok(&[
        "sh",
        "-c",
        "mknod -m 660 /dev/video0 c 81 0 && mknod -m 660 /dev/i2c-1 c 89 1 && \
         mknod -m 660 /dev/gpiochip0 c 254 0 && groupadd -rf i2c && groupadd -rf gpio",
    ]);
    if robot.arch() == "arm64" {
        // The agent runs foreign images only where it can see QEMU's binfmt_misc entry (a
        // Jetson runs its arm64 images natively); nspawn does not mount binfmt_misc. The
        // mount is the host's one instance (no user namespace), and the robot's
        // systemd-shutdown writes -1 to its `status` when it halts, which unregisters every
        // entry of the host — so the robot sees it read-only (a per-mount flag; the
        // superblock, and the host's mount, stay writable).
        robot.exec_ok(&[
            "sh",
            "-c",
            "set -e; b=/proc/sys/fs/binfmt_misc; mountpoint -q $b || mount -t binfmt_misc binfmt_misc $b; \
             mount -o remount,bind,ro $b; ! sh -c \"echo 1 > $b/status\" 2>/dev/null",
        ]);
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// `docker inspect` of the stack's containers, by name.
fn docker_inspect(robot: &StockRobot) -> Vec<Value> {
    let ids = robot.exec_ok(&[
        "docker",
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={PROJECT}"),
    ]);
    let mut cmd = vec!["docker", "inspect"];
    cmd.extend(ids.split_whitespace());
    json(&robot.exec_ok(&cmd)).as_array().unwrap().clone()
}

fn name_of(c: &Value) -> &str {
    c["Name"].as_str().unwrap().trim_start_matches('/')
}

/// A file of the robot's agent store.
fn agent_file(robot: &StockRobot, rel: &str) -> Option<String> {
    std::fs::read_to_string(robot.root().join("var/lib/dt-agent").join(rel)).ok()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every Docker image is in the agent's store under Docker's config digest and every tag.
fn assert_images_adopted(robot: &StockRobot) {
    let ids = robot.exec_ok(&["docker", "image", "ls", "-q", "--no-trunc"]);
    let ls = json(&robot.exec_ok(&["dt-agent", "image", "ls", "--json"]));
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let mut ids: Vec<&str> = ids.split_whitespace().collect();
    ids.sort();
    ids.dedup();
    assert!(ids.len() >= STACK.len(), "{ids:?}");
    for id in ids {
        let hex = id.trim_start_matches("sha256:");
        assert!(
            agent_file(robot, &format!("images/sha256/{hex}")).is_some(),
            "config {id} not in the agent's store"
        );
        let tags = json(&robot.exec_ok(&["docker", "image", "inspect", id]));
        for t in tags[0]["RepoTags"].as_array().unwrap() {
            let t = t.as_str().unwrap();
            let familiar = t.trim_start_matches("docker.io/");
            assert!(
                names.iter().any(|n| *n == familiar || *n == t),
                "{t} not named in the agent: {names:?}"
            );
        }
    }
}

/// Release 1 runs Docker's containers: same image (config digest), command, entrypoint, env.
fn assert_release_matches(robot: &StockRobot, docker: &[Value]) {
    for d in docker {
        let name = name_of(d);
        let rec = json(
            &agent_file(robot, &format!("containers/{name}/container.json"))
                .unwrap_or_else(|| panic!("no agent container `{name}`")),
        );
        let cfg = &rec["config"];
        assert_eq!(cfg["release"], 1, "{name}: {cfg}");
        assert_eq!(cfg["cmd"], d["Config"]["Cmd"], "{name}");
        assert_eq!(cfg["entrypoint"], d["Config"]["Entrypoint"], "{name}");
        assert_eq!(cfg["env"], d["Config"]["Env"], "{name}");
        let manifest = cfg["image"].as_str().unwrap().trim_start_matches("sha256:");
        let m = json(&agent_file(robot, &format!("images/sha256/{manifest}")).unwrap());
        assert_eq!(m["config"]["digest"], d["Image"], "{name}: another image");
    }
}

/// Docker's stack: each container's (running, restart policy).
fn docker_states(robot: &StockRobot) -> Vec<(String, bool, String)> {
    docker_inspect(robot)
        .iter()
        .map(|c| {
            (
                name_of(c).to_owned(),
                c["State"]["Running"].as_bool().unwrap(),
                c["HostConfig"]["RestartPolicy"]["Name"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect()
}

fn autoboot(robot: &StockRobot) -> String {
    let out = robot.exec(&["systemctl", "is-enabled", "dt-autoboot.service"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The agent's containers by name: (state, pid).
fn agent_ps(l: &Laptop, robot: &StockRobot) -> Vec<(String, String, Option<u64>)> {
    l.robot_json(robot, &["ps", "--all"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
                c["pid"].as_u64(),
            )
        })
        .collect()
}

/// `stat -c %t:%T` of `node` as the process `pid` of the robot sees it, or `None`.
fn node_in(robot: &StockRobot, pid: u64, node: &str) -> Option<String> {
    let out = robot.exec(&["stat", "-c", "%F %t:%T", &format!("/proc/{pid}/root{node}")]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Provision adopts the stack; everything the issue asks of an adopted robot holds.
fn adopts(arch: &str) -> Option<(Laptop, StockRobot, Vec<Value>)> {
    if !can_run() {
        return None;
    }
    let robot = StockRobot::boot(arch, &format!("sp-{arch}"))?;
    make_hardware(&robot);
    let docker_before = docker_inspect(&robot);
    let states_before = docker_states(&robot);
    let l = Laptop::new();
    let start = Instant::now();
    let report = l.provision(&robot, &[]);
    eprintln!("{arch}: provision with adoption took {:?}", start.elapsed());
    let changed: Vec<&str> = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for s in ["docker-stack", "adopt-images", "adopt-stack"] {
        assert!(changed.contains(&s), "{s} not in {changed:?}");
    }
    assert_eq!(report["adopted_release"], 1, "{report:#}");
    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for w in [
        "duckiebot-interface: `privileged` dropped; granted the device roles",
        "duckiebot-interface: `pid: host` dropped",
        "duckiebot-interface: bind of all of /tmp dropped",
        "device-health: `privileged` dropped; no device roles",
        "portainer: Docker's socket",
        "code-api: Docker's socket",
        "device-online: Docker's socket",
    ] {
        assert!(
            warnings.iter().any(|l| l.starts_with(w)),
            "no warning `{w}…`: {warnings:#?}"
        );
    }

    assert_images_adopted(&robot);
    assert_release_matches(&robot, &docker_before);
    let history = l.robot_json(&robot, &["history"]);
    let r1 = history
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["release"] == 1)
        .unwrap_or_else(|| panic!("no release 1: {history:#}"));
    assert_eq!(r1["state"], "committed", "{r1:#}");
    // Every service answers, now from the agent's containers.
    for s in STACK {
        assert!(
            robot.port_open(s.port),
            "{} does not answer on {}",
            s.name,
            s.port
        );
    }

    // Docker's stack stopped, for good.
    let after = docker_states(&robot);
    assert!(after.iter().all(|(_, up, r)| !up && r == "no"), "{after:?}");
    assert_eq!(autoboot(&robot), "disabled");
    robot.exec_ok(&["systemctl", "restart", "docker.service"]);
    std::thread::sleep(Duration::from_secs(3));
    let after = docker_states(&robot);
    assert!(
        after.iter().all(|(_, up, _)| !up),
        "after a dockerd restart: {after:?}"
    );
    assert!(
        states_before.iter().all(|(_, up, _)| *up),
        "{states_before:?}"
    );

    // The motors' and camera's nodes: in the drivers' container, in no other.
    let ps = agent_ps(&l, &robot);
    let pid = |n: &str| {
        ps.iter()
            .find(|(name, st, _)| name == n && st == "running")
            .and_then(|(_, _, p)| *p)
            .unwrap_or_else(|| panic!("`{n}` not running: {ps:?}"))
    };
    let di = pid("duckiebot-interface");
    assert_eq!(
        node_in(&robot, di, "/dev/i2c-1").as_deref(),
        Some("character special file 59:1")
    );
    assert_eq!(
        node_in(&robot, di, "/dev/video0").as_deref(),
        Some("character special file 51:0")
    );
    for other in ["car-interface", "ros", "device-health", "portainer"] {
        let p = pid(other);
        for n in ["/dev/i2c-1", "/dev/video0"] {
            assert_eq!(node_in(&robot, p, n), None, "{other} sees {n}");
        }
    }

    // A second provision changes nothing.
    let again = l.provision(&robot, &[]);
    assert_eq!(again["changed"], serde_json::json!([]), "{again:#}");
    assert_eq!(again["already_provisioned"], true);
    Some((l, robot, docker_before))
}

#[test]
fn adopts_a_robot_of_amd64_images_and_restores_docker() {
    let Some((l, robot, docker_before)) = adopts("amd64") else {
        return;
    };
    first_deploys_after_adoption(&l, &robot);
    let restored = l.restore(&robot);
    assert_eq!(
        restored["changed"],
        serde_json::json!(["restore-docker"]),
        "{restored:#}"
    );
    wait_for(
        "Docker's stack to run again",
        Duration::from_secs(60),
        || robot.stack_running(),
    );
    let now = docker_states(&robot);
    for c in &docker_before {
        let want = c["HostConfig"]["RestartPolicy"]["Name"].as_str().unwrap();
        assert!(
            now.iter()
                .any(|(n, up, r)| n == name_of(c) && *up && r == want),
            "{}: {now:?}",
            name_of(c)
        );
    }
    assert_eq!(autoboot(&robot), "enabled");
    // None of the agent's release containers is left, `core` (added by a deploy, not a
    // container Docker had) included.
    let ps = agent_ps(&l, &robot);
    assert!(ps.is_empty(), "the agent still has containers: {ps:?}");
    let again = l.restore(&robot);
    assert_eq!(again["changed"], serde_json::json!([]), "{again:#}");
    // Docker's stack comes back after a dockerd restart too, as before adoption.
    robot.restart_docker();
}

fn tx_bytes(iface: &str) -> u64 {
    let p = format!("/sys/class/net/{iface}/statistics/tx_bytes");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// A laptop-only `core`: the fixture busybox (the bytes the stand-ins' base layer holds), the
/// launcher the lane-following stack's `command` names, and a file saying where it was built.
fn laptop_core(dir: &std::path::Path, busybox: &std::path::Path) -> std::path::PathBuf {
    let ctx = dir.join("core");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("built"), "core built on the laptop\n").unwrap();
    std::fs::write(
        ctx.join("dt-launcher-lane_following"),
        "#!/bin/sh\ntrap 'exit 0' TERM\ncat /etc/built\nwhile true; do sleep 1 & wait $!; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let launcher = ctx.join("dt-launcher-lane_following");
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENV PATH=/bin\n\
         COPY built /etc/built\nCOPY dt-launcher-lane_following /bin/dt-launcher-lane_following\n",
    )
    .unwrap();
    ctx
}

/// Issue 13's deploy acceptance on the adopted robot: the default stack sends no object (every
/// image is one the robot's Docker had); `lane-following` with `core` swapped for an image only
/// the laptop has sends only that image's files the robot lacks.
fn first_deploys_after_adoption(l: &Laptop, robot: &StockRobot) {
    const CORE: &str = "example.com/lab/dt-core:laptop";
    let Some(busybox) = support::require_busybox("amd64") else {
        return;
    };
    let iface = robot.host_iface().to_owned();
    let pids_before = agent_ps(l, robot);

    // The default stack: ros, duckiebot-interface, car-interface, all `daffy-amd64` images
    // the robot's Docker held and the laptop never had.
    let before = tx_bytes(&iface);
    let start = Instant::now();
    let (code, v, err) = l.deploy(robot, &[]);
    let on_link = tx_bytes(&iface) - before;
    eprintln!(
        "first deploy after adoption: {on_link} bytes laptop→robot on the link, {} on the SSH channel, {:?}",
        v["bytes_sent"],
        start.elapsed()
    );
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert_eq!(v["state"], "committed", "{v:#}");
    assert_eq!(v["release"], 2, "{v:#}");
    assert_eq!(
        (v["objects_sent"].as_u64(), v["object_bytes"].as_u64()),
        (Some(0), Some(0)),
        "{v:#}"
    );
    assert_eq!(v["layers_skipped"], v["layers_total"], "{v:#}");
    assert!(on_link < 256 << 10, "{on_link} bytes on the link: {v:#}");
    let ps = agent_ps(l, robot);
    let running: Vec<&str> = ps
        .iter()
        .filter(|(_, st, _)| st == "running")
        .map(|(n, _, _)| n.as_str())
        .collect();
    // They are restarted: release 1's specs carry what Docker ran (its image name with
    // `docker.io/`, the image's env and cmd merged in), the stack's only what it sets, so the
    // agent's "same service spec" test fails although the process is the same. Printed, not
    // asserted: keeping them running would be better.
    for s in ["ros", "duckiebot-interface", "car-interface"] {
        assert!(running.contains(&s), "`{s}` not running: {ps:?}");
        let was = pids_before
            .iter()
            .find(|(n, _, _)| n == s)
            .and_then(|c| c.2);
        let now = ps.iter().find(|(n, _, _)| n == s).and_then(|c| c.2);
        eprintln!("`{s}`: pid {was:?} under release 1, {now:?} under release 2");
    }
    assert!(robot.port_open(11311), "the ROS master does not answer");
    let di = ps
        .iter()
        .find(|(n, _, _)| n == "duckiebot-interface")
        .and_then(|c| c.2)
        .unwrap();
    assert!(node_in(robot, di, "/dev/i2c-1").is_some(), "no motors");

    // `core` swapped for an image only the laptop has.
    let work = tempfile::tempdir().unwrap();
    let ctx = laptop_core(work.path(), &busybox);
    let out = l.dts(
        &[
            "devel",
            "build",
            "-C",
            ctx.to_str().unwrap(),
            "-t",
            CORE,
            "--arch",
            "amd64",
        ],
        "",
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let set = format!("core={CORE}");
    let swap = ["--stack", "lane-following", "--set", set.as_str()];
    let (code, dry, err) = l.deploy(robot, &[&swap[..], &["--dry-run"]].concat());
    assert_eq!(code, Some(0), "{dry:#}\n{err}");
    for img in dry["plan"]["images"].as_array().unwrap() {
        let laptop = img["names"].to_string().contains(CORE);
        assert_eq!(img["held_by_robot"], !laptop, "{img:#}");
    }
    let listed: Vec<&Value> = dry["plan"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["how"]["objects"]["objects"].as_array())
        .flatten()
        .collect();
    let size = std::fs::metadata(&busybox).unwrap().len();
    assert!(
        listed.iter().all(|o| o["size"].as_u64() != Some(size)),
        "busybox, which the robot holds, is sent: {dry:#}"
    );
    let before = tx_bytes(&iface);
    let (code, v, err) = l.deploy(robot, &swap);
    let on_link = tx_bytes(&iface) - before;
    eprintln!(
        "core swapped for a laptop image: {on_link} bytes on the link, {} objects ({} bytes)",
        v["objects_sent"], v["object_bytes"]
    );
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert_eq!(v["state"], "committed", "{v:#}");
    assert_eq!(v["release"], 3, "{v:#}");
    assert_eq!(v["objects_sent"], dry["objects_sent"], "{v:#}");
    assert_eq!(v["objects_sent"], 2, "the launcher and /etc/built: {v:#}");
    assert!(v["object_bytes"].as_u64().unwrap() < 1024, "{v:#}");
    assert!(on_link < 256 << 10, "{on_link} bytes on the link: {v:#}");
    let target = format!("{USER}@{}", robot.addr());
    let logs = l.dts(&["duckiebot", "logs", &target, "core"], "");
    assert!(
        text(&logs).0.contains("core built on the laptop"),
        "{:?}",
        text(&logs)
    );
}

#[test]
fn adopts_a_robot_of_arm64_images() {
    let _ = adopts("arm64");
}

/// A provision killed while it imports Docker's images: the rerun finishes, importing only
/// what the killed run had not.
#[test]
fn a_provision_killed_during_adoption_is_finished_by_the_rerun() {
    if !can_run() {
        return;
    }
    let Some(robot) = StockRobot::boot("amd64", "sp-killed") else {
        return;
    };
    make_hardware(&robot);
    let l = Laptop::new();
    let args = Laptop::provision_args(&robot, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = l.command(&args).spawn().unwrap();
    {
        use std::io::Write as _;
        let mut i = child.stdin.take().unwrap();
        i.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    }
    // Killed once the agent holds some of Docker's images but not all.
    let held = || {
        let out = robot.exec(&["dt-agent", "image", "ls", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    };
    wait_for("the first image imported", Duration::from_secs(120), || {
        held() > 0 || child.try_wait().unwrap().is_some()
    });
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let (o, e) = text(&out);
    let images = robot.exec_ok(&[
        "sh",
        "-c",
        "docker image ls -q --no-trunc | sort -u | wc -l",
    ]);
    let images: usize = images.trim().parse().unwrap();
    // The import the killed run had started on the robot ends by itself.
    wait_for(
        "the killed run's import to end",
        Duration::from_secs(60),
        || {
            !robot
                .exec(&["pgrep", "-f", "dt-agent image import"])
                .status
                .success()
        },
    );
    let before = held();
    assert!(
        before < images,
        "the run was killed too late ({before} of {images} held):\n{o}\n{e}"
    );

    let report = l.provision(&robot, &[]);
    let step = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "adopt-images")
        .unwrap();
    let detail = step["detail"].as_str().unwrap();
    assert_eq!(step["changed"], true, "{detail}");
    assert!(
        !detail.starts_with(&format!("{images} of {images}")),
        "imported everything again: {detail}"
    );
    assert_eq!(report["adopted_release"], 1, "{report:#}");
    assert_images_adopted(&robot);
    let fsck = robot.exec(&["dt-agent", "fsck"]);
    assert!(fsck.status.success(), "{}", text(&fsck).1);
}

/// Release 1 failing its health check: Docker's stack is back, exit code 3 says so.
#[test]
fn a_failing_adopted_release_gives_the_robot_back_to_docker() {
    if !can_run() {
        return;
    }
    let Some(robot) = StockRobot::boot("amd64", "sp-fails") else {
        return;
    };
    make_hardware(&robot);
    // `ros` again, with a health check that holds under Docker (which makes /.dockerenv in
    // every container) and fails under the agent.
    let image = robot.exec_ok(&["docker", "inspect", "-f", "{{.Config.Image}}", "ros"]);
    robot.exec_ok(&["docker", "rm", "-f", "ros"]);
    robot.exec_ok(&[
        "docker",
        "run",
        "-d",
        "--name",
        "ros",
        "--label",
        &format!("com.docker.compose.project={PROJECT}"),
        "--label",
        "com.docker.compose.service=ros",
        "--network",
        "host",
        "--restart",
        "unless-stopped",
        "--health-cmd",
        "test -e /.dockerenv",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "-v",
        "/data:/data",
        image.trim(),
    ]);
    wait_for("the new `ros` to run", Duration::from_secs(60), || {
        robot.stack_running()
    });
    let before = docker_states(&robot);
    let l = Laptop::new();
    let out = l.provision_raw(&robot, &[]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{o}\n{e}");
    assert!(e.contains("Docker's stack is running again"), "{e}");
    wait_for(
        "Docker's stack to run again",
        Duration::from_secs(60),
        || robot.stack_running(),
    );
    let mut now = docker_states(&robot);
    let mut before = before;
    now.sort();
    before.sort();
    assert_eq!(
        now.iter().map(|(n, _, r)| (n, r)).collect::<Vec<_>>(),
        before.iter().map(|(n, _, r)| (n, r)).collect::<Vec<_>>(),
        "restart policies changed"
    );
    assert_eq!(autoboot(&robot), "enabled");
    let ps = agent_ps(&l, &robot);
    assert!(
        ps.iter().all(|(n, _, _)| STACK.iter().all(|s| s.name != n)),
        "the agent kept containers of the failed release: {ps:?}"
    );
}

/// `--remove-docker` after the adoption: Docker's packages and data root gone, the adopted
/// stack still running under the agent, `--restore-docker` refused, a rerun changes nothing.
#[test]
fn remove_docker_frees_the_card_and_restore_is_then_refused() {
    if !can_run() {
        return;
    }
    let Some(robot) = StockRobot::boot("amd64", "sp-remove") else {
        return;
    };
    make_hardware(&robot);
    let l = Laptop::new();
    let report = l.provision(&robot, &["--remove-docker"]);
    let changed = report["changed"].as_array().unwrap();
    for s in ["adopt-stack", "remove-docker"] {
        assert!(changed.iter().any(|c| c == s), "{s} not in {changed:?}");
    }
    for cmd in ["dockerd", "docker", "docker-compose", "containerd"] {
        let out = robot.exec(&["sh", "-c", &format!("command -v {cmd}")]);
        assert!(!out.status.success(), "{cmd} still installed");
    }
    assert!(
        robot
            .exec(&["sh", "-c", "command -v runc"])
            .status
            .success(),
        "runc removed"
    );
    let left = robot.exec_ok(&["sh", "-c", "ls -A /var/lib/docker | wc -l"]);
    assert_eq!(left.trim(), "0", "Docker's data root not emptied");
    for s in STACK {
        assert!(
            robot.port_open(s.port),
            "{} does not answer on {}",
            s.name,
            s.port
        );
    }
    let target = format!("{USER}@{}", robot.addr());
    let out = l.dts(&["duckiebot", "provision", &target, "--restore-docker"], "");
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}\n{e}");
    assert!(e.contains("`--remove-docker` removed Docker"), "{e}");
    let again = l.provision(&robot, &["--remove-docker"]);
    assert_eq!(again["changed"], serde_json::json!([]), "{again:#}");
}
