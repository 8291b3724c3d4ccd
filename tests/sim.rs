//! `dts sim up|down|ls` against the real kernel and Debian's sshd, sudo, ip and tc: a virtual
//! Duckiebot is reached over SSH as `duckie` like a real one, and `down` leaves nothing behind.
//!
//! Each test uses its own `DTS_HOME` and `HOME` (temp dirs: the real `~/.ssh` is never read
//! or written), a robot name unique to the run, and its own bridge and subnet
//! (`DTS_SIM_BRIDGE`, `DTS_SIM_SUBNET`) so the user's `dts0` is never touched. Needs root;
//! skips otherwise.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use dts::ssh::Session;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn can_run() -> bool {
    if !support::require_root("makes namespaces, mounts, device nodes and links") {
        return false;
    }
    for cmd in ["ip", "tc", "ssh-keygen", "/usr/sbin/sshd", "/usr/bin/sudo"] {
        if !support::require_cmd(cmd) {
            return false;
        }
    }
    true
}

/// One test's sim world: DTS_HOME, HOME, bridge, subnet, robot name.
struct World {
    dts_home: tempfile::TempDir,
    home: tempfile::TempDir,
    bridge: String,
    subnet: String,
    name: String,
}

impl World {
    fn new() -> World {
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let routes = Command::new(support::find_cmd("ip").unwrap())
            .args(["-4", "route", "show", "table", "all"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let third = (0..250)
            .map(|i| (pid + seq * 7 + i) % 250 + 1)
            .find(|x| !routes.contains(&format!("10.218.{x}.")))
            .expect("a free 10.218.x.0/24");
        World {
            dts_home: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            bridge: format!("dtst{}x{seq}", pid % 100_000),
            subnet: format!("10.218.{third}.0/24"),
            name: format!("simt{pid}x{seq}"),
        }
    }

    fn dts(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dts"))
            .args(args)
            .env("DTS_HOME", self.dts_home.path())
            .env("HOME", self.home.path())
            .env("DTS_SIM_BRIDGE", &self.bridge)
            .env("DTS_SIM_SUBNET", &self.subnet)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
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

    fn sim_dir(&self) -> PathBuf {
        self.dts_home.path().join("sims").join(&self.name)
    }

    /// Runs `cmd` on the sim over SSH as duckie (dts's own client, the sim key).
    fn ssh(&self, address: &str, cmd: &str) -> (bool, String, String) {
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

    #[track_caller]
    fn ssh_ok(&self, address: &str, cmd: &str) -> String {
        let (ok, out, err) = self.ssh(address, cmd);
        assert!(ok, "`{cmd}` on the sim failed:\n{out}\n{err}");
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.sim_dir().exists() || Path::new("/run/netns").join(self.netns()).exists() {
            let _ = self.dts(&["sim", "down", &self.name]);
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new(support::find_cmd("ip").unwrap())
                .args(["link", "del", &self.bridge])
                .output();
        }
    }
}

impl World {
    fn netns(&self) -> String {
        format!("dts-sim-{}", self.name)
    }
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(format!("{pid}: {c}"));
            }
        }
    }
    v
}

#[test]
fn a_sim_is_reached_like_a_robot_and_down_leaves_nothing() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let name = w.name.clone();
    let up = w.dts(&["sim", "up", &name, "--link-rate", "20mbit", "--json"]);
    assert!(
        up.status.success(),
        "up failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let address = v["address"].as_str().unwrap().to_owned();
    let host_iface = v["host_interface"].as_str().unwrap().to_owned();
    assert!(address.parse::<Ipv4Addr>().is_ok(), "{v}");

    // Reached over SSH as duckie, like a real robot.
    assert_eq!(w.ssh_ok(&address, "hostname").trim(), name);
    let status: serde_json::Value =
        serde_json::from_str(&w.ssh_ok(&address, "sudo -n dt-agent status --json")).unwrap();
    assert!(
        status["arch"].as_str().unwrap().contains("amd64"),
        "{status}"
    );
    assert_eq!(status["hostname"], name.as_str());

    // The virtual configuration's role nodes, with a real driver's numbers (89 = 0x59).
    let st = w.ssh_ok(&address, "stat -c '%F %t:%T %G' /dev/i2c-1");
    assert_eq!(st.trim(), "character special file 59:1 i2c");
    let (ok, _, err) = w.ssh(&address, "cat /dev/i2c-1");
    assert!(!ok && err.contains("No such device or address"), "{err}");

    // Its /etc and /data are its own.
    let marker = format!("dts-sim-test-{name}");
    w.ssh_ok(
        &address,
        &format!("sudo -n sh -c 'echo sim > /etc/{marker} && echo sim > /data/{marker}'"),
    );
    assert_eq!(w.ssh_ok(&address, &format!("cat /etc/{marker}")), "sim\n");
    assert!(!Path::new("/etc").join(&marker).exists());
    assert!(!Path::new("/data").join(&marker).exists());
    assert!(w.sim_dir().join("root/etc").join(&marker).exists());

    // ls --json.
    let ls: serde_json::Value = serde_json::from_str(&w.ok(&["sim", "ls", "--json"])).unwrap();
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(row["address"], address.as_str());
    assert_eq!(row["host_interface"], host_iface.as_str());
    assert!(row["arch"].as_str().unwrap().contains("amd64"));
    assert_eq!(row["running"], true);

    // --link-rate: a token bucket on the host end (and on the sim's).
    let tc = |args: &[&str]| {
        String::from_utf8_lossy(
            &Command::new(support::find_cmd("tc").unwrap())
                .args(args)
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(
        tc(&["qdisc", "show", "dev", &host_iface]).contains("tbf"),
        "no tbf on {host_iface}"
    );
    assert!(tc(&["-n", &w.netns(), "qdisc", "show", "dev", "eth0"]).contains("tbf"));

    // Known hosts: the sim's key under its name and address.
    let kh = std::fs::read_to_string(w.dts_home.path().join("known_hosts")).unwrap();
    assert!(
        kh.lines()
            .any(|l| l.starts_with(&format!("{name},{address} ssh-ed25519 "))),
        "{kh}"
    );
    // Deploy code looks sims up by name.
    let info = dts::sim::resolve_in(w.dts_home.path(), &name).unwrap();
    assert_eq!(info.address.to_string(), address);
    assert_eq!(info.target().to_string(), format!("duckie@{address}:22"));

    // Up again while running: refused, exit 1.
    let again = w.dts(&["sim", "up", &name]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // Down: nothing left.
    let sim_dir = w.sim_dir();
    w.ok(&["sim", "down", &name]);
    assert!(!Path::new("/run/netns").join(w.netns()).exists());
    assert!(!Path::new("/sys/class/net").join(&host_iface).exists());
    assert!(!Path::new("/sys/class/net").join(&w.bridge).exists());
    let left = processes_naming(&sim_dir.to_string_lossy());
    assert!(left.is_empty(), "{left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*w.dts_home.path().to_string_lossy()));
    let kh = std::fs::read_to_string(w.dts_home.path().join("known_hosts")).unwrap();
    assert!(!kh.contains(&name), "{kh}");
    assert!(!sim_dir.exists());
    let again = w.dts(&["sim", "down", &name]);
    assert_eq!(again.status.code(), Some(1));
}

#[test]
fn a_dead_sim_is_recreated_by_up() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let name = w.name.clone();
    w.ok(&["sim", "up", &name]);
    let info = dts::sim::resolve_in(w.dts_home.path(), &name).unwrap();
    assert!(info.is_running());
    // Killing the holder takes the whole sim down with it (pid 1's parent-death signal).
    // SAFETY: a pid of the sim this test made.
    unsafe { libc::kill(info.holder_pid.unwrap(), libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_naming(&w.sim_dir().to_string_lossy()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sim outlived its holder"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ls: serde_json::Value = serde_json::from_str(&w.ok(&["sim", "ls", "--json"])).unwrap();
    assert_eq!(ls[0]["running"], false, "{ls}");
    let up = w.dts(&["sim", "up", &name]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stderr).contains("dead"));
    let info = dts::sim::resolve_in(w.dts_home.path(), &name).unwrap();
    assert_eq!(w.ssh_ok(&info.address.to_string(), "hostname").trim(), name);
    w.ok(&["sim", "down", &name]);
}

#[test]
fn down_removes_a_half_made_sim() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let name = w.name.clone();
    // What an `up` killed early leaves: a netns, a directory without sim.json, a known_hosts
    // line.
    let ip = support::find_cmd("ip").unwrap();
    assert!(
        Command::new(&ip)
            .args(["netns", "add", &w.netns()])
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir_all(w.sim_dir().join("root/etc")).unwrap();
    std::fs::write(w.sim_dir().join("root/etc/hostname"), "x\n").unwrap();
    std::fs::write(
        w.dts_home.path().join("known_hosts"),
        format!("other ssh-ed25519 AAAA\n{name},10.0.0.9 ssh-ed25519 BBBB dts-sim:{name}\n"),
    )
    .unwrap();
    w.ok(&["sim", "down", &name]);
    assert!(!Path::new("/run/netns").join(w.netns()).exists());
    assert!(!w.sim_dir().exists());
    assert_eq!(
        std::fs::read_to_string(w.dts_home.path().join("known_hosts")).unwrap(),
        "other ssh-ed25519 AAAA\n"
    );
}

#[test]
fn bad_input_is_exit_2_before_anything_is_made() {
    let w = World {
        dts_home: tempfile::tempdir().unwrap(),
        home: tempfile::tempdir().unwrap(),
        bridge: "dtsnever0".into(),
        subnet: "10.218.0.0/24".into(),
        name: "unused".into(),
    };
    for (args, says) in [
        (vec!["sim", "up", "1bad"], "not a robot name"),
        // armv6 (Pi Zero): no dt-agent is built for it (arm64/armhf sims: tests/cross.rs).
        (
            vec!["sim", "up", "bot", "--arch", "arm32v6"],
            "no virtual robot can be",
        ),
        (vec!["sim", "up", "bot", "--link-rate", "fast"], "link rate"),
        (vec!["sim", "up", "bot", "--configuration", "DB99"], "DB99"),
    ] {
        let out = w.dts(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!w.dts_home.path().join("sims").exists());
}
