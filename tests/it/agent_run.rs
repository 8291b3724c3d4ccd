//! Containers through `dt-agent daemon` and the `dt-agent run|ps|logs|stop|rm|diff` commands,
//! with real runc, overlayfs, cgroups, CNI and QEMU: kernel-visible effects, not mocks.
//!
//! Each test makes a robot: a network namespace of its own (the daemon advertises over mDNS and
//! CNI makes a bridge there, never on the host's interfaces), a state directory under a temp
//! dir, and the daemon run as `unshare --mount --propagation private nsenter --net=NS
//! dt-agent daemon` — a private mount namespace that still has the host's cgroup mounts (which
//! `ip netns exec` would hide from runc). The CLI talks to it over its socket.
//!
//! Images are made here from the static busybox `scripts/fixtures` caches.

use crate::support;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::images::{Entry, Layout};
use crate::support::netns::{Robot, TestNet};
use dts::oci::Platform;

const FIXTURES: &str = "/var/cache/dts-fixtures/busybox";

/// Applets the test images link to busybox.
pub(crate) const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "mknod", "uname", "httpd", "ls", "seq", "id", "grep", "head",
    "rm", "touch", "mkdir", "true", "false", "wc", "dd",
];

pub(crate) fn busybox(arch: &str) -> Option<PathBuf> {
    let p = Path::new(FIXTURES).join(arch).join("busybox");
    p.exists().then_some(p)
}

/// Root, kernel features and fixtures every test here needs; prints the skip line otherwise.
pub(crate) fn can_run(arch: &str) -> bool {
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
    if busybox(arch).is_none() {
        support::skip(&format!(
            "no static busybox for {arch} in {FIXTURES}: run `bash scripts/fixtures`"
        ));
        return false;
    }
    true
}

/// A busybox image for `platform` as an OCI archive: `/bin/busybox` with applet symlinks, a
/// passwd with root and duckie, a group with i2c.
fn busybox_archive(dir: &Path, arch: &str, platform: &Platform, name: &str) -> PathBuf {
    let bb = std::fs::read(busybox(arch).unwrap()).unwrap();
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::File("bin/busybox", 0o755, bb),
        Entry::Dir("etc/", 0o755),
        Entry::File(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nduckie:x:1000:1000::/home/duckie:/bin/sh\n".to_vec(),
        ),
        Entry::File(
            "etc/group",
            0o644,
            b"root:x:0:\nduckie:x:1000:\ni2c:x:998:duckie\n".to_vec(),
        ),
        Entry::File("etc/os-release", 0o644, b"ID=busybox\n".to_vec()),
        Entry::Dir("tmp/", 0o1777),
        Entry::Dir("www/", 0o755),
        Entry::File(
            "www/index.html",
            0o644,
            b"hello from the container\n".to_vec(),
        ),
        // What real images have: an absolute symlink and an internal hard link.
        Entry::Hardlink("www/copy.html", "www/index.html"),
        Entry::Dir("usr/", 0o755),
        Entry::Dir("usr/lib/", 0o755),
        Entry::File(
            "usr/lib/data.txt",
            0o644,
            b"through an absolute symlink\n".to_vec(),
        ),
        Entry::Symlink("lib", "/usr/lib"),
    ];
    for a in APPLETS {
        let path: &'static str = Box::leak(format!("bin/{a}").into_boxed_str());
        entries.push(Entry::Symlink(path, "busybox"));
    }
    let layer = support::images::layer_tar(&entries);
    let layout = dir.join(format!("{arch}.layout"));
    let l = Layout::new(&layout);
    let w = l.image(platform, &[layer], &["sh", "-c", "echo default command"]);
    l.finish(&[(name, w.manifest)]);
    let out = dir.join(format!("{arch}.tar"));
    let mut b = tar::Builder::new(std::fs::File::create(&out).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    out
}

/// One robot with a daemon.
pub(crate) struct Agent {
    root: PathBuf,
    robot: Robot,
    daemon: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// A robot with `robot.yaml` = `yaml` (with `ROOT` replaced by the state dir's path).
    pub(crate) fn new(net: &mut TestNet, yaml: &str) -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        Agent::at(net, yaml, tmp.path().to_path_buf(), tmp)
    }

    /// A robot whose state directory is `root` (which may be on a file system of the test's).
    fn at(net: &mut TestNet, yaml: &str, root: PathBuf, tmp: tempfile::TempDir) -> Agent {
        std::fs::create_dir_all(&root).unwrap();
        let yaml = yaml.replace("ROOT", root.to_str().unwrap());
        std::fs::write(root.join("robot.yaml"), yaml).unwrap();
        let robot = net.robot("agent");
        let mut a = Agent {
            root,
            robot,
            daemon: None,
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.cli(&["ps"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "the daemon did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dt-agent"))
            .args(args)
            .env("DT_AGENT_ROOT", self.state())
            .stdin(Stdio::null())
            .output()
            .unwrap()
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

    pub(crate) fn import(&self, archive: &Path) {
        self.ok(&["image", "import", archive.to_str().unwrap()]);
    }

    fn inspect(&self, name: &str) -> serde_json::Value {
        let ps: serde_json::Value =
            serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).unwrap();
        ps.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no container {name} in {ps}"))
    }

    /// Waits until `f` holds for container `name`'s ps entry.
    fn wait_for(&self, name: &str, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.inspect(name);
            if f(&c) {
                return;
            }
            assert!(Instant::now() < deadline, "{name}: never {what}: {c}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.daemon.is_none() {
            self.start_daemon();
        }
        if let Ok(ps) =
            serde_json::from_slice::<serde_json::Value>(&self.cli(&["ps", "-a", "--json"]).stdout)
        {
            for c in ps.as_array().into_iter().flatten() {
                let _ = self.cli(&["rm", "-f", c["name"].as_str().unwrap_or_default()]);
            }
        }
        self.kill_daemon();
    }
}

pub(crate) const ROBOT_YAML: &str = "hostname: testbot\ntype: duckiebot\nconfiguration: virtual\n";

fn amd64_image(agent: &Agent) -> &'static str {
    let name = "example.com/test/busybox:amd64";
    let archive = busybox_archive(agent.state(), "amd64", &Platform::host(), name);
    agent.import(&archive);
    name
}

#[test]
fn run_in_the_foreground_streams_output_and_exits_with_the_code() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);

    let out = agent.cli(&[
        "run",
        "--rm",
        "--name",
        "fg",
        image,
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; id -u; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("to-stdout\n0\n"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    // --rm: gone, writable layer and all.
    let ps = agent.ok(&["ps", "-a", "--json"]);
    assert!(!ps.contains("\"fg\""), "{ps}");
    assert!(!agent.state().join("containers/fg").exists());

    // The image's own command, its user override, and Docker's capability set (no SYS_ADMIN).
    let out = agent.ok(&["run", "--rm", image]);
    assert_eq!(out, "default command\n");
    let out = agent.ok(&["run", "--rm", "-u", "duckie", image, "id"]);
    assert!(
        out.starts_with("uid=1000(duckie) gid=1000(duckie)"),
        "{out}"
    );
    let out = agent.ok(&["run", "--rm", image, "grep", "CapBnd", "/proc/self/status"]);
    assert_eq!(
        out.split_whitespace().nth(1),
        Some("00000000a80425fb"),
        "{out}"
    );

    // Failures of the agent itself are 125; bad requests are 2.
    let out = agent.cli(&["run", "--rm", "example.com/not/here:1", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on this robot"));
    let out = agent.cli(&["run", "--rm", "--restart", "sometimes", image, "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn detached_containers_stop_restart_and_show_their_changes() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);

    // on-failure restarts a crashing container; `no` leaves it exited.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "crashy",
        "--restart",
        "on-failure",
        image,
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "once",
        "--restart",
        "no",
        image,
        "sh",
        "-c",
        "exit 1",
    ]);
    agent.wait_for("crashy", "restarted twice", |c| {
        c["restart_count"].as_u64() >= Some(2)
    });
    agent.wait_for("once", "exited", |c| c["state"] == "exited");
    std::thread::sleep(Duration::from_secs(2));
    let once = agent.inspect("once");
    assert_eq!(once["restart_count"], 0, "{once}");
    assert_eq!(once["exit_code"], 1, "{once}");
    let logs = agent.ok(&["logs", "crashy"]);
    assert!(logs.matches("run\n").count() >= 2, "{logs}");
    // Stopping ends the policy's restarts.
    agent.ok(&["stop", "-t", "1", "crashy"]);
    let n = agent.inspect("crashy")["restart_count"].as_u64();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.inspect("crashy")["restart_count"].as_u64(), n);
    assert_eq!(agent.inspect("crashy")["state"], "exited");

    // diff: what the container changed, and only that.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "writer",
        image,
        "sh",
        "-c",
        "echo new > /new-file; rm /etc/os-release; mkdir -p /tmp/x; sleep 1000",
    ]);
    agent.wait_for("writer", "running", |c| c["state"] == "running");
    let deadline = Instant::now() + Duration::from_secs(10);
    let diff = loop {
        let d = agent.ok(&["diff", "writer"]);
        if d.contains("/tmp/x") || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(
        lines,
        [
            "C /etc",
            "D /etc/os-release",
            "A /new-file",
            "C /tmp",
            "A /tmp/x"
        ],
        "{diff}"
    );
    // A running container needs --force; rm deletes the writable layer.
    assert_eq!(agent.cli(&["rm", "writer"]).status.code(), Some(1));
    agent.ok(&["rm", "-f", "writer"]);
    assert!(!agent.state().join("containers/writer").exists());
}

#[test]
fn memory_and_cpu_limits_reach_the_cgroup() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    agent.ok(&[
        "run", "-d", "--name", "limited", "--memory", "64m", "--cpus", "0.5", image, "sleep",
        "1000",
    ]);
    agent.wait_for("limited", "running", |c| c["state"] == "running");
    let v1 = Path::new("/sys/fs/cgroup/memory/dt-agent/limited/memory.limit_in_bytes");
    let v2 = Path::new("/sys/fs/cgroup/dt-agent/limited/memory.max");
    let limit = std::fs::read_to_string(v1)
        .or_else(|_| std::fs::read_to_string(v2))
        .expect("the container's memory cgroup");
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let quota =
        std::fs::read_to_string("/sys/fs/cgroup/cpu,cpuacct/dt-agent/limited/cpu.cfs_quota_us")
            .or_else(|_| {
                std::fs::read_to_string("/sys/fs/cgroup/cpu/dt-agent/limited/cpu.cfs_quota_us")
            })
            .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/dt-agent/limited/cpu.max"));
    let quota = quota.expect("the container's cpu cgroup");
    assert!(quota.starts_with("50000"), "{quota}");
}

#[test]
fn logs_rotate_at_their_size() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    let out = agent.ok(&[
        "run",
        "--name",
        "chatty",
        "--log-max-size",
        "4k",
        "--log-max-files",
        "3",
        image,
        "seq",
        "1",
        "2000",
    ]);
    assert!(
        out.ends_with("1999\n2000\n"),
        "the foreground run saw all output"
    );
    let logs = agent.state().join("containers/chatty/logs");
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["container.log", "container.log.1", "container.log.2"]
    );
    for n in &names {
        let len = std::fs::metadata(logs.join(n)).unwrap().len();
        assert!(len <= 4096, "{n} is {len} bytes");
    }
    let kept = agent.ok(&["logs", "chatty"]);
    assert!(
        kept.ends_with("2000\n") && !kept.starts_with("1\n"),
        "old lines rotated away"
    );
    assert_eq!(agent.ok(&["logs", "--tail", "2", "chatty"]), "1999\n2000\n");
}

#[test]
fn published_ports_reach_a_server_in_its_own_network_namespace() {
    if !can_run("amd64") || !support::require_cmd("iptables") {
        return;
    }
    if !Path::new("/usr/lib/cni/portmap").exists() && !Path::new("/opt/cni/bin/portmap").exists() {
        support::skip("needs the CNI plugins (containernetworking-plugins)");
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    agent.ok(&[
        "run", "-d", "--name", "web", "-p", "8080:80", image, "httpd", "-f", "-p", "80", "-h",
        "/www",
    ]);
    agent.wait_for("web", "running with an address", |c| {
        c["state"] == "running" && c["ip"].is_string()
    });
    // From the host side of the test bridge to the robot's address: DNAT by the portmap plugin
    // inside the robot's namespace, to the container's own namespace.
    let addr = format!("{}:8080", agent.robot.addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let got = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                let mut b = String::new();
                s.read_to_string(&mut b)?;
                Ok(b)
            });
        match got {
            Ok(b) if b.contains("hello from the container") => break b,
            other if Instant::now() > deadline => panic!("no answer from {addr}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 OK"),
        "{body}"
    );
    // The container has its own network: it does not see the robot's eth0.
    let own = agent.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(own.trim(), "lo");
}

#[test]
fn containers_outlive_a_killed_agent_and_are_adopted() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let mut agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "survivor",
        image,
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.2; done",
    ]);
    agent.wait_for("survivor", "running", |c| c["state"] == "running");
    let pid = agent.inspect("survivor")["pid"].as_u64().unwrap();

    agent.kill_daemon();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with the agent"
    );
    let log = agent.state().join("containers/survivor/logs/container.log");
    let before = std::fs::metadata(&log).unwrap().len();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        std::fs::metadata(&log).unwrap().len() > before,
        "the shim kept logging"
    );

    agent.start_daemon();
    let c = agent.inspect("survivor");
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(c["pid"].as_u64(), Some(pid), "same process, adopted");
    agent.ok(&["stop", "-t", "1", "survivor"]);
    assert_eq!(agent.inspect("survivor")["state"], "exited");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn restart_policies_hold_across_an_agent_restart() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let mut agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    // A crash loop: each restart waits twice as long as the one before.
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "crashloop",
        "--restart",
        "always",
        image,
        "sh",
        "-c",
        "exit 3",
    ]);
    // Stopped by hand: Docker brings `always` back when its daemon starts, not `unless-stopped`.
    for (name, policy) in [("steady", "always"), ("parked", "unless-stopped")] {
        agent.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--restart",
            policy,
            image,
            "sleep",
            "1000",
        ]);
        agent.wait_for(name, "running", |c| c["state"] == "running");
        agent.ok(&["stop", "-t", "1", name]);
    }
    // Between two restarts, with a back-off of seconds ahead: the daemon dies there.
    agent.wait_for("crashloop", "in a long back-off", |c| {
        c["state"] == "exited" && c["restart_count"].as_u64().unwrap_or(0) >= 5
    });
    agent.kill_daemon();
    let state = agent.state().join("containers/crashloop/state.json");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let restarts = state["restart_count"].as_u64().unwrap();
    agent.start_daemon();
    agent.wait_for("crashloop", "restarted by the new daemon", |c| {
        c["restart_count"].as_u64().unwrap() > restarts
    });
    agent.wait_for("steady", "back", |c| c["state"] == "running");
    let parked = agent.inspect("parked");
    assert_eq!(
        parked["state"], "exited",
        "unless-stopped came back: {parked}"
    );
    // And the daemon still controls what it brought back.
    agent.ok(&["stop", "-t", "1", "steady"]);
    assert_eq!(agent.inspect("steady")["state"], "exited");
}

/// Compose's `labels`, `ulimits`, `user` and `working_dir` (issue 18), as `run` spells them:
/// the labels in `ps --json`, the limits as the process's rlimits.
#[test]
fn labels_ulimits_user_and_workdir_reach_the_container() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    let out = agent.ok(&[
        "run",
        "--name",
        "limits",
        "--label",
        "org.example.owner=lab-3",
        "-l",
        "tier",
        "--ulimit",
        "nofile=100:200",
        "--ulimit",
        "core=0",
        "-u",
        "1000:1000",
        "-w",
        "/bin",
        image,
        "sh",
        "-c",
        "ulimit -Sn; ulimit -Hn; ulimit -c; id -u; pwd",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["100", "200", "0", "1000", "/bin"], "{out}");
    let c = agent.inspect("limits");
    assert_eq!(
        c["labels"],
        serde_json::json!({"org.example.owner": "lab-3", "tier": ""}),
        "{c}"
    );
    let out = agent.cli(&["run", "--ulimit", "nofiles=1", image, "true"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("unknown ulimit `nofiles`"), "{e}");
}

#[test]
fn volumes_binds_and_overrides_reach_the_container() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    let bind = agent.state().join("from-host");
    std::fs::create_dir_all(&bind).unwrap();
    std::fs::write(bind.join("in.txt"), "from the host\n").unwrap();
    let bind_ro = format!("{}:/host:ro", bind.display());

    let script = "echo $GREETING > note; pwd; hostname; cat /host/in.txt; \
                  touch /host/out 2>/dev/null && echo writable || echo read-only; \
                  cat /lib/data.txt /www/copy.html; ls -i /www/index.html /www/copy.html";
    let out = agent.ok(&[
        "run",
        "--name",
        "first",
        "-v",
        "notes:/data",
        "-v",
        &bind_ro,
        "-e",
        "GREETING=quack",
        "-w",
        "/data",
        "--hostname",
        "duckie1",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        script,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..6],
        &[
            "/data",
            "duckie1",
            "from the host",
            "read-only",
            "through an absolute symlink",
            "hello from the container",
        ],
        "{out}"
    );
    // The image's hard link stays one inode.
    let inode = |l: &str| l.split_whitespace().next().map(str::to_string);
    assert_eq!(inode(lines[6]), inode(lines[7]), "{out}");
    assert!(!bind.join("out").exists());

    // The named volume outlives its container; a new one reads what the first wrote.
    agent.ok(&["rm", "first"]);
    let volumes: serde_json::Value =
        serde_json::from_str(&agent.ok(&["volume", "ls", "--json"])).unwrap();
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "notes"),
        "{volumes}"
    );
    let out = agent.ok(&[
        "run",
        "--rm",
        "-v",
        "notes:/data",
        image,
        "cat",
        "/data/note",
    ]);
    assert_eq!(out, "quack\n");
    // A bind mount without :ro is writable.
    let bind_rw = format!("{}:/host", bind.display());
    agent.ok(&[
        "run",
        "--rm",
        "-v",
        &bind_rw,
        image,
        "sh",
        "-c",
        "echo back > /host/out",
    ]);
    assert_eq!(std::fs::read_to_string(bind.join("out")).unwrap(), "back\n");
    // The image's CMD runs when nothing overrides it; an entrypoint alone drops it.
    assert_eq!(agent.ok(&["run", "--rm", image]), "default command\n");
    assert_eq!(
        agent.ok(&["run", "--rm", "--entrypoint", "/bin/echo", image]),
        "\n"
    );
}

fn mknod(path: &Path, major: u32, minor: u32) {
    crate::support::mknod_char(path, major, minor, 0o660);
}

#[test]
fn device_roles_grant_exactly_their_nodes() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let yaml = format!(
        "{ROBOT_YAML}devices:\n  motors:\n    nodes: [\"ROOT/dev/i2c-1:/dev/i2c-1\"]\n    groups: [\"998\"]\n  camera:\n    nodes: [\"ROOT/dev/missing-video0:/dev/video0\"]\n"
    );
    let agent = Agent::new(&mut net, &yaml);
    let image = amd64_image(&agent);
    let dev = agent.state().join("dev");
    std::fs::create_dir(&dev).unwrap();
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o755)).unwrap();
    // i2c-dev's real numbers: bus 1 is 89:1. No i2c bus 1 exists on the test host, so a
    // driver (if loaded) answers ENXIO/ENODEV, and without one the kernel answers ENXIO.
    mknod(&dev.join("i2c-1"), 89, 1);

    // Granted: the node is there and opening it reaches the driver — not EPERM.
    let out = agent.cli(&[
        "run",
        "--rm",
        "--device-role",
        "motors",
        image,
        "sh",
        "-c",
        "ls -l /dev/i2c-1; id -G; cat /dev/i2c-1",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(" 89,   1 ") || text.contains("89, 1"),
        "{text}"
    );
    assert!(text.contains("998"), "the role's group: {text}");
    assert!(
        text.contains("No such device or address") || text.contains("No such device"),
        "{text}"
    );
    assert!(!text.contains("Operation not permitted"), "{text}");

    // A node the container makes itself is refused by the device cgroup.
    let out = agent.cli(&[
        "run",
        "--rm",
        "--device-role",
        "motors",
        image,
        "sh",
        "-c",
        "mknod /tmp/mem c 1 1 && cat /tmp/mem",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{out:?}");
    // Without the role there is no node at all.
    let out = agent.cli(&["run", "--rm", image, "ls", "/dev/i2c-1"]);
    assert_ne!(out.status.code(), Some(0));
    // A missing node fails the start, naming the role and the node.
    let out = agent.cli(&["run", "--rm", "--device-role", "camera", image, "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("camera") && err.contains("missing-video0"),
        "{err}"
    );
    // An unknown role is a bad request.
    let out = agent.cli(&["run", "--rm", "--device-role", "jetpack", image, "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn arm_images_run_under_qemu() {
    if !can_run("arm64") || !can_run("armhf") {
        return;
    }
    for (arch, platform) in [("arm64", Platform::arm64()), ("armhf", Platform::armhf())] {
        if let Err(e) = dts::binfmt::check(&platform) {
            support::skip(&format!("QEMU for {arch} is not registered: {e}"));
            return;
        }
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    for (arch, platform, machine) in [
        ("arm64", Platform::arm64(), "aarch64"),
        ("armhf", Platform::armhf(), "armv7l"),
    ] {
        let name = format!("example.com/test/busybox:{arch}");
        let archive = busybox_archive(agent.state(), arch, &platform, &name);
        agent.ok(&[
            "image",
            "import",
            "--platform",
            &platform.to_string(),
            archive.to_str().unwrap(),
        ]);
        let out = agent.ok(&["run", "--rm", &name, "uname", "-m"]);
        assert_eq!(out.trim(), machine);
    }
}

#[test]
fn a_full_disk_fails_the_import_and_leaves_running_containers_alone() {
    if !can_run("amd64") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("sd");
    // Mounted before the daemon starts, so its private mount namespace has it too.
    let Some(_tmpfs) = support::Tmpfs::mount(&mnt, "16m") else {
        return;
    };
    let mut net = TestNet::new();
    let agent = Agent::at(
        &mut net,
        ROBOT_YAML,
        mnt.join("dt-agent"),
        tempfile::tempdir().unwrap(),
    );
    let image = amd64_image(&agent);
    agent.ok(&[
        "run",
        "-d",
        "--name",
        "driving",
        image,
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.1; done",
    ]);
    agent.wait_for("driving", "running", |c| c["state"] == "running");
    let pid = agent.inspect("driving")["pid"].as_u64().unwrap();

    // 24 MiB of files that compress to almost nothing: the archive fits, its content does not.
    let mut entries = vec![Entry::Dir("big/", 0o755)];
    for i in 0..24u32 {
        let block: Vec<u8> = (0..4096u32)
            .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8)
            .collect();
        let name: &'static str = Box::leak(format!("big/f{i}").into_boxed_str());
        entries.push(Entry::File(name, 0o644, block.repeat(256)));
    }
    let layout = tempfile::tempdir().unwrap();
    let l = Layout::new(layout.path());
    let w = l.image(
        &Platform::host(),
        &[support::images::layer_tar(&entries)],
        &["true"],
    );
    l.finish(&[("example.com/test/big:1", w.manifest)]);
    let out = agent.cli(&["image", "import", layout.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no space left"), "{err}");

    let c = agent.inspect("driving");
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(
        c["pid"].as_u64(),
        Some(pid),
        "the running container is untouched"
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    agent.ok(&["fsck"]);
    let images = agent.ok(&["image", "ls", "--json"]);
    assert!(!images.contains("big"), "nothing half-committed: {images}");
}

/// Every file, directory and link under `dir` but `skip`: path → kind, mode and contents.
fn tree(dir: &Path, skip: &Path) -> std::collections::BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode();
            let entry = if m.is_dir() {
                todo.push(p.clone());
                ("dir".to_string(), mode, Vec::new())
            } else if m.file_type().is_symlink() {
                let to = std::fs::read_link(&p).unwrap();
                (
                    "link".to_string(),
                    mode,
                    to.into_os_string().into_encoded_bytes(),
                )
            } else {
                ("file".to_string(), mode, std::fs::read(&p).unwrap())
            };
            out.insert(p, entry);
        }
    }
    out
}

/// Requests with `../` in each path-like name (issue 17): what the daemon's socket and
/// `serve --stdio` are sent. Each carries one bad name and is otherwise valid.
fn climbing_requests(image: &str) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    const UP: &str = "../../canary/escaped";
    let config = |patch: serde_json::Value| {
        let mut c = json!({"name": "escape", "image": image, "cmd": ["true"]});
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"op": "create", "start": true, "config": c})
    };
    let deploy = |service: &str, container: &str| {
        json!({"op": "deploy", "detach": true, "spec": {
            "stack": "s", "probation": {"secs": 1, "nanos": 0},
            "services": [{
                "name": service, "stage": 0, "order": 0, "image_name": image,
                "manifest": format!("sha256:{}", "a".repeat(64)), "healthcheck": null,
                "container": {"name": container, "image": image},
            }],
        }})
    };
    let mut out = vec![
        ("container name", config(json!({"name": UP}))),
        ("image", config(json!({"image": UP}))),
        ("service", config(json!({"service": UP}))),
        (
            "volume",
            config(
                json!({"volumes": [{"source": {"named": UP}, "target": "/data", "read_only": false}]}),
            ),
        ),
        ("role", config(json!({"device_roles": [UP]}))),
        (
            "CDI device",
            config(json!({"cdi_devices": [format!("{UP}=x")]})),
        ),
        ("stop signal", config(json!({"stop_signal": UP}))),
        (
            "kill signal",
            json!({"op": "kill", "name": "escape", "signal": UP}),
        ),
        ("release service", deploy(UP, "escape")),
        ("release container", deploy("escape", UP)),
        ("volume create", json!({"op": "volume_create", "name": UP})),
        ("volume rm", json!({"op": "volume_rm", "name": UP})),
    ];
    for op in ["start", "inspect", "diff"] {
        out.push((op, json!({"op": op, "name": UP})));
    }
    out.push(("stop", json!({"op": "stop", "name": UP, "timeout": 1})));
    out.push(("rm", json!({"op": "rm", "name": UP, "force": true})));
    out.push((
        "logs",
        json!({"op": "logs", "name": UP, "follow": false, "tail": null, "until_exit": false}),
    ));
    out
}

/// `dt-agent serve --stdio` on `root` given a hello and `msg`: its exit code and the frames it
/// answered with.
fn serve_once(root: &Path, msg: &serde_json::Value) -> (Option<i32>, Vec<dts::wire::FromRobot>) {
    use dts::wire::frame::{Frame, read_frame};
    let mut child = Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(["serve", "--stdio"])
        .env("DT_AGENT_ROOT", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = Frame::hello(
        dts::wire::MAJOR,
        dts::wire::MINOR,
        &dts::wire::ClientHello {
            client: "test".into(),
        },
    )
    .encode();
    input.extend(Frame::control(msg).encode());
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut stdout = &out.stdout[..];
    let mut frames = Vec::new();
    let _hello = read_frame(&mut stdout).unwrap().unwrap();
    while let Some(f) = read_frame(&mut stdout).unwrap() {
        frames.push(f.message().unwrap());
    }
    (out.status.code(), frames)
}

#[test]
fn requests_naming_paths_out_of_the_root_are_refused_and_touch_nothing() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    // The state dir one level down, so `../../canary` from its `volumes/` or `containers/`
    // lands in the temp dir: a canary tree the test owns, around the agent's root.
    let tmp = tempfile::tempdir().unwrap();
    let canary = tmp.path().join("canary");
    std::fs::create_dir_all(canary.join("deep")).unwrap();
    std::fs::write(canary.join("keep"), b"canary\n").unwrap();
    std::fs::write(canary.join("deep/keep"), b"deeper canary\n").unwrap();
    std::os::unix::fs::symlink("../keep", canary.join("deep/link")).unwrap();
    let top = tmp.path().to_path_buf();
    let state = top.join("state");
    let agent = Agent::at(&mut net, ROBOT_YAML, state.clone(), tmp);
    // An image the requests can name, so only the bad name can stop them.
    let image = amd64_image(&agent);
    let before = tree(&top, &state);
    for (what, request) in climbing_requests(image) {
        // The daemon's socket: refused as bad input, naming the value.
        let mut sock = std::os::unix::net::UnixStream::connect(state.join("daemon.sock")).unwrap();
        sock.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(&sock)
            .read_line(&mut answer)
            .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"]["bad_input"], true, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("../../canary/escaped"),
            "{what}: {message}"
        );
        // `serve --stdio`: the session ends with a bad-input error, and the agent exits 2.
        let msg = serde_json::json!({"op": "daemon", "request": request});
        let (code, frames) = serve_once(&state, &msg);
        assert_eq!(code, Some(2), "{what}: {frames:?}");
        match frames.as_slice() {
            [dts::wire::FromRobot::Error { message, bad_input }] => {
                assert!(bad_input, "{what}: {message}");
                assert!(
                    message.contains("../../canary/escaped"),
                    "{what}: {message}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The CLI refuses them before any request, exit 2.
    for args in [
        &["run", "--name", "../../canary/escaped", image, "true"][..],
        &[
            "run",
            "--name",
            "escape",
            "-v",
            "../../canary/escaped:/data",
            image,
            "true",
        ],
        &[
            "run",
            "--name",
            "escape",
            "--device-role",
            "../../canary",
            image,
            "true",
        ],
        &["volume", "create", "../../canary/escaped"],
        &["rm", "-f", "../../canary"],
        &["logs", "../../canary"],
    ] {
        let out = agent.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    }
    assert_eq!(tree(&top, &state), before, "the canary tree changed");
    assert!(!state.join("containers").join("escape").exists());
    let ps = agent.ok(&["ps", "-a", "--json"]);
    assert!(!ps.contains("escape"), "{ps}");
}

#[test]
fn a_workdir_through_proc_fd_is_refused_before_any_container() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let image = amd64_image(&agent);
    for workdir in ["/proc/self/fd/7", "/proc/thread-self/fd/7/../.."] {
        let out = agent.cli(&["run", "--name", "cve", "-w", workdir, image, "true"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{workdir}: {stderr}");
        assert!(stderr.contains(workdir), "{stderr}");
        assert!(stderr.contains("CVE-2024-21626"), "{stderr}");
        let ps = agent.ok(&["ps", "-a", "--json"]);
        assert!(!ps.contains("\"cve\""), "{ps}");
        assert!(!agent.state().join("containers").join("cve").exists());
    }
}
