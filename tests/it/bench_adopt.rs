//! `scripts/bench adopt` (issue 13), not a test: `#[ignore]`d, and skipped unless the script
//! sets `DTS_BENCH_OUT`. Two stock robots (tests/it/support/stock_robot.rs) and one link each:
//!
//! - robot A boots with a Docker data root holding the bench's ≥ 1.5 GB stand-in images
//!   (scripts/bench-data/adopt-images; loaded once with the robot's own `docker load`, the stock
//!   stack recreated on them, and the stopped data root cached at `DTS_BENCH_ADOPT_DOCKER`).
//!   Measured on it: `docker save` of every image to /dev/null (before and after the rest),
//!   `dts duckiebot provision` (adopts the robot by default once issue 13's adoption is in:
//!   time and bytes on the link), whether the agent's store then holds every image, the
//!   import adoption does (`docker save … | dt-agent image import -` into a scratch root, the
//!   release agent), and the first `dts duckiebot deploy` of the default stack from a laptop
//!   holding nothing (bytes on the link, outcome);
//! - robot B boots with the stock stand-ins only and is provisioned; the same default stack
//!   is deployed to it from a laptop holding the bench's images (`dts image load` of the
//!   archive): what shipping the images costs when the robot holds none of them.
//!
//! Link bytes are the robot's eth0 rx+tx (`/proc/<its pid 1>/net/dev`) around each command.
//! Everything measured is written as JSON to `DTS_BENCH_OUT`; a step that fails is recorded
//! with its error and the bench goes on, so a partial run still reports what it could.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::support;
use crate::support::stock_robot::{self, StockRobot};

fn var(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")))
}

/// The robot's eth0 bytes, received + sent.
fn link_bytes(robot: &StockRobot) -> u64 {
    let dev = std::fs::read_to_string(format!("/proc/{}/net/dev", robot.init_pid())).unwrap();
    dev.lines()
        .find_map(|l| l.trim().strip_prefix("eth0:"))
        .map(|rest| {
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            f[0] + f[8]
        })
        .unwrap_or(0)
}

/// Runs `cmd` (a laptop command), timing it and counting `robot`'s link bytes.
fn measured(robot: &StockRobot, mut cmd: Command, stdin: &str) -> Value {
    use std::io::Write as _;
    let before = link_bytes(robot);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let bytes = link_bytes(robot) - before;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let tail: String = stderr
        .lines()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    json!({
        "ok": out.status.success(),
        "exit": out.status.code(),
        "seconds": secs,
        "link_bytes": bytes,
        "report": report,
        "stderr_tail": if out.status.success() { String::new() } else { tail },
    })
}

/// Runs `script` with bash in the robot, timed; panics when it fails.
fn timed(robot: &StockRobot, script: &str) -> f64 {
    let start = Instant::now();
    robot.exec_ok(&["bash", "-c", &format!("set -euo pipefail; {script}")]);
    start.elapsed().as_secs_f64()
}

/// A laptop: its own DTS_HOME and HOME with a key, the release `dts`, the release agent.
struct Laptop {
    home: tempfile::TempDir,
    dts: PathBuf,
    agents: PathBuf,
}

impl Laptop {
    fn new(dts: &Path, agents: &Path) -> Laptop {
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(ssh.join("id_ed25519"))
            .status()
            .unwrap();
        assert!(st.success());
        Laptop {
            home,
            dts: dts.to_owned(),
            agents: agents.to_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.dts);
        c.args(args)
            .env("HOME", self.home.path())
            .env("DTS_HOME", self.home.path().join("dts"))
            .env("DTS_AGENT_DIR", &self.agents)
            .env_remove("SSH_AUTH_SOCK");
        c
    }

    fn provision(&self, robot: &StockRobot, hostname: &str) -> Value {
        let target = format!("{}@{}", stock_robot::USER, robot.addr());
        let cmd = self.command(&[
            "duckiebot",
            "provision",
            &target,
            "--hostname",
            hostname,
            // The virtual profile's roles are plain nodes the bench makes in the robot
            // (`make_hardware`); a DB21J's camera role needs Jetson nodes (/dev/nvmap…) no
            // container-booted robot has, so its release could not start.
            "--configuration",
            "virtual",
            "--accept-new-host-key",
            "--password-stdin",
            "--json",
        ]);
        measured(robot, cmd, &format!("{}\n", stock_robot::PASSWORD))
    }

    fn deploy(&self, robot: &StockRobot) -> Value {
        let cmd = self.command(&["duckiebot", "deploy", &robot.addr().to_string(), "--json"]);
        measured(robot, cmd, "")
    }
}

/// The agent's root on the host's disk, as on a robot's ext4 SD card: the stock robot's root is
/// an overlayfs, on which a container's overlay cannot have its upper directory. Inside the
/// robot, /var/lib/docker is such a disk (the harness binds the data root copy there).
fn agent_partition(robot: &StockRobot) {
    robot.exec_ok(&[
        "sh",
        "-c",
        "mkdir -p /var/lib/docker/.dt-agent-bench /var/lib/dt-agent && \
         mount --bind /var/lib/docker/.dt-agent-bench /var/lib/dt-agent && chmod 700 /var/lib/dt-agent",
    ]);
}

/// Makes the cached Docker data root: a stock robot loads `archive` with its own `docker
/// load`, recreates the stock stack on the loaded images, drops the old stand-ins, stops
/// dockerd; its data root is copied to `dest` (through a temp name and a rename).
fn make_data_root(archive: &Path, dest: &Path) {
    let mut robot = StockRobot::boot("amd64", "bench-load").expect("a stock robot");
    let inside = robot.root().join("var/tmp/adopt.tar");
    std::fs::copy(archive, &inside).unwrap();
    timed(
        &robot,
        "docker load -q -i /var/tmp/adopt.tar >&2; rm /var/tmp/adopt.tar; \
         ARCH=amd64 REGISTRY=docker.io docker-compose --project-name duckietown \
           --file /data/autoboot/DB21J.yaml up -d >&2; \
         docker image prune -f >&2; systemctl stop docker.service docker.socket",
    );
    robot.stop(std::time::Duration::from_secs(60));
    let tmp = dest.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let st = Command::new("cp")
        .arg("-a")
        .arg(robot.dir().join("docker"))
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(st.success(), "copying the data root to {}", tmp.display());
    std::fs::rename(&tmp, dest).unwrap();
}

#[test]
#[ignore = "a benchmark: `scripts/bench adopt` runs it"]
fn bench_adopt() {
    if std::env::var_os("DTS_BENCH_OUT").is_none() {
        support::skip("run by `scripts/bench adopt` (DTS_BENCH_OUT is not set)");
        return;
    }
    let out = var("DTS_BENCH_OUT");
    let archive = var("DTS_BENCH_ADOPT_ARCHIVE");
    let docker = var("DTS_BENCH_ADOPT_DOCKER");
    let dts = var("DTS_BENCH_DTS");
    let agents = var("DTS_BENCH_AGENTS");
    let agent = agents.join("amd64/dt-agent");
    let made: Value =
        serde_json::from_str(&std::fs::read_to_string(archive.with_extension("tar.json")).unwrap())
            .unwrap();
    let images: Vec<String> = made["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut r = serde_json::Map::new();
    r.insert("images".into(), json!(images.len()));
    r.insert(
        "distinct_layer_bytes".into(),
        made["distinct_layer_bytes"].clone(),
    );
    let write = |r: &serde_json::Map<String, Value>| {
        std::fs::write(
            &out,
            serde_json::to_string(&Value::Object(r.clone())).unwrap(),
        )
        .unwrap()
    };

    if !docker.exists() {
        let start = Instant::now();
        make_data_root(&archive, &docker);
        r.insert(
            "data_root_made_seconds".into(),
            json!(start.elapsed().as_secs_f64()),
        );
    }

    // Robot A: holds the images.
    let a = StockRobot::boot_with_docker("amd64", "bench-adopt", Some(&docker)).expect("robot A");
    let names = images.join(" ");
    let save_1 = timed(&a, &format!("docker save {names} > /dev/null"));
    r.insert("docker_save_seconds_before".into(), json!(save_1));
    write(&r);
    agent_partition(&a);
    crate::stock_provision::make_hardware(&a);
    let laptop = Laptop::new(&dts, &agents);
    let prov = laptop.provision(&a, "benchbot");
    r.insert("provision".into(), prov);
    let ls = a.exec(&["/usr/local/bin/dt-agent", "image", "ls", "--json"]);
    let held = String::from_utf8_lossy(&ls.stdout);
    let adopted = images.iter().filter(|i| held.contains(i.as_str())).count();
    r.insert("adopted_images".into(), json!(adopted));
    write(&r);
    // The imports adoption can do, with the release agent: read from Docker's overlay2 store
    // (what provision uses there) and `docker save | import -` (its fallback), each into the
    // agent's store when provision did not adopt (so the deploy below finds what adoption
    // would have left), else into a scratch root.
    std::fs::copy(&agent, a.root().join("usr/local/bin/dt-agent-bench")).unwrap();
    let into = |scratch: &str| {
        if adopted < images.len() {
            "/var/lib/dt-agent".to_owned()
        } else {
            format!("/var/lib/docker/.{scratch}")
        }
    };
    if adopted < images.len() {
        r.insert(
            "import_into".into(),
            json!("the agent's store (provision did not adopt)"),
        );
    }
    let root = into("bench-direct");
    let import = timed(
        &a,
        &format!(
            "DT_AGENT_ROOT={root} dt-agent-bench image import --json --docker-root /var/lib/docker {names} >/dev/null; \
             case {root} in /var/lib/docker/.*) rm -rf {root};; esac"
        ),
    );
    r.insert("import_seconds".into(), json!(import));
    let root = into("bench-save");
    let import_save = timed(
        &a,
        &format!(
            "docker save {names} | DT_AGENT_ROOT={root} dt-agent-bench image import --json - >/dev/null; \
             case {root} in /var/lib/docker/.*) rm -rf {root};; esac"
        ),
    );
    r.insert("import_save_seconds".into(), json!(import_save));
    let save_2 = timed(&a, &format!("docker save {names} > /dev/null"));
    r.insert("docker_save_seconds_after".into(), json!(save_2));
    write(&r);
    let first = laptop.deploy(&a);
    r.insert("first_deploy_after_adoption".into(), first);
    write(&r);
    drop(a);

    // Robot B: holds nothing of these images; the laptop holds them.
    let b = StockRobot::boot("amd64", "bench-empty").expect("robot B");
    agent_partition(&b);
    crate::stock_provision::make_hardware(&b);
    let laptop_b = Laptop::new(&dts, &agents);
    let load = laptop_b
        .command(&["image", "load", "-i", archive.to_str().unwrap()])
        .output()
        .unwrap();
    r.insert("laptop_image_load_ok".into(), json!(load.status.success()));
    if !load.status.success() {
        r.insert(
            "laptop_image_load_error".into(),
            json!(String::from_utf8_lossy(&load.stderr)),
        );
    }
    let prov_b = laptop_b.provision(&b, "emptybot");
    r.insert("provision_empty".into(), prov_b);
    write(&r);
    let deploy_b = laptop_b.deploy(&b);
    r.insert("deploy_to_empty".into(), deploy_b);
    write(&r);
}
