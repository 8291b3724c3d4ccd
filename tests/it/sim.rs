//! `dts sim up|down|ls` against the real kernel and Debian's sshd, sudo, ip and tc: a virtual
//! Duckiebot is reached over SSH as `duckie` like a real one, and `down` leaves nothing behind.
//!
//! Each test uses its own `DTS_HOME` and `HOME` (temp dirs: the real `~/.ssh` is never read
//! or written), a robot name unique to the run, and its own bridge and subnet
//! (`DTS_SIM_BRIDGE`, `DTS_SIM_SUBNET`) so the user's `dts0` is never touched. Needs root;
//! skips otherwise.

use crate::support::{self, TestContext};

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn can_run() -> bool {
    if !support::require_root("makes namespaces, mounts, device nodes and links") {
        return false;
    }
    for cmd in [
        "ip",
        "tc",
        "ssh-keygen",
        "/usr/sbin/sshd",
        "/usr/bin/sudo",
        "/usr/sbin/avahi-daemon",
    ] {
        if !support::require_cmd(cmd) {
            return false;
        }
    }
    true
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
    let w = TestContext::new();
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
    let w = TestContext::new();
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
    let w = TestContext::new();
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
    let w = TestContext::new();
    for (args, says) in [
        (vec!["sim", "up", "1bad"], "not a robot name"),
        // armv6 (Pi Zero): no dt-agent is built for it (arm64/armhf sims: tests/it/cross.rs).
        (
            vec!["sim", "up", "bot", "--arch", "arm32v6"],
            "no virtual robot can be",
        ),
        (vec!["sim", "up", "bot", "--link-rate", "fast"], "link rate"),
        (vec!["sim", "up", "bot", "--configuration", "DB99"], "DB99"),
        (
            vec!["sim", "up", "bot", "--memory", "1m"],
            "at least 128 MiB",
        ),
        (
            vec!["sim", "up", "bot", "--memory", "lots"],
            "is not a size",
        ),
    ] {
        let out = w.dts(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!w.dts_home.path().join("sims").exists());
}

#[test]
fn up_without_sudo_sshd_or_avahi_says_what_to_install_and_makes_nothing() {
    if !can_run() || !support::require_cmd("unshare") || !support::require_cmd("mount") {
        return;
    }
    let w = TestContext::new();
    // This machine as one without sudo, sshd and avahi-daemon: in a mount namespace of the
    // command's own, /dev/null (not a program) is bound over each. The host sees nothing.
    let script = "mount --bind /dev/null /usr/bin/sudo && \
                  mount --bind /dev/null /usr/sbin/sshd && \
                  mount --bind /dev/null /usr/sbin/avahi-daemon && \
                  exec \"$0\" sim up \"$1\"";
    let out = w
        .command(
            support::find_cmd("unshare").unwrap(),
            &[
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                env!("CARGO_BIN_EXE_dts"),
                &w.name,
            ],
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for says in [
        "sudo (not in /usr/sbin:/usr/bin:/sbin:/bin)",
        "sshd (not in /usr/sbin)",
        "avahi-daemon (not in /usr/sbin)",
        "`apt-get install openssh-server avahi-daemon sudo`",
    ] {
        assert!(err.contains(says), "no `{says}` in: {err}");
    }
    assert!(!err.contains("did not come up"), "{err}");
    // Nothing was made: no sim directory, namespace, link, bridge, known_hosts line, process.
    assert!(!w.sim_dir().exists());
    assert!(!Path::new("/run/netns").join(w.netns()).exists());
    assert!(!Path::new("/sys/class/net").join(&w.bridge).exists());
    assert!(
        !Path::new("/sys/class/net")
            .join(dts::sim::net::host_iface_name(&w.name))
            .exists()
    );
    assert!(!w.dts_home.path().join("known_hosts").exists());
    let left = processes_naming(&w.sim_dir().to_string_lossy());
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------------------------------
// The shipped stacks on a sim, and the sim in `dts fleet discover`.

/// The sample pipeline under the names the shipped stacks give (`duckietown/dt-…:daffy-ARCH`),
/// built for one Duckietown arch from the static busybox fixture with COPY steps only (no RUN:
/// no emulation, a few seconds). As in Duckietown, each module is built on the one before it
/// with its tag chosen by `--build-arg ARCH`; every module runs `/run.sh`, which says which
/// module it is, on which CPU, and whether the robot's avahi socket is mounted, then waits for
/// SIGTERM. dt-core carries `dt-launcher-lane_following`, the lane-following stack's command.
fn build_stack_images(w: &TestContext, dt_arch: &str, busybox: &Path) {
    let ctx = w.dts_home.path().join("pipeline");
    let base = ctx.join("dt-ros-commons");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy(busybox, base.join("busybox")).unwrap();
    std::fs::write(
        base.join("run.sh"),
        "trap 'exit 0' TERM\n\
         echo \"$DT_MODULE ${1:-default} on $(busybox uname -m)\"\n\
         if [ -S /var/run/avahi-daemon/socket ]; then echo 'avahi socket mounted'; fi\n\
         while true; do busybox sleep 1 & wait $!; done\n",
    )
    .unwrap();
    std::fs::write(
        base.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\n\
         ENV PATH=/usr/local/bin:/bin DT_MODULE=dt-ros-commons\nCOPY run.sh /run.sh\n\
         CMD [\"/bin/sh\", \"/run.sh\"]\n",
    )
    .unwrap();
    let mut from = "dt-ros-commons";
    for module in ["dt-duckiebot-interface", "dt-car-interface", "dt-core"] {
        let dir = ctx.join(module);
        std::fs::create_dir_all(dir.join("packages")).unwrap();
        std::fs::write(dir.join(format!("packages/{module}.py")), "print('ok')\n").unwrap();
        let mut dockerfile = format!(
            "ARG ARCH\nFROM duckietown/{from}:daffy-${{ARCH}}\nENV DT_MODULE={module}\n\
             COPY packages /code/{module}/packages/\n"
        );
        if module == "dt-core" {
            let launcher = dir.join("dt-launcher-lane_following");
            std::fs::write(
                &launcher,
                "#!/bin/sh\nexec /bin/sh /run.sh lane_following\n",
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
            dockerfile.push_str("COPY dt-launcher-lane_following /usr/local/bin/\n");
        }
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        from = module;
    }
    for module in [
        "dt-ros-commons",
        "dt-duckiebot-interface",
        "dt-car-interface",
        "dt-core",
    ] {
        let tag = format!("duckietown/{module}:daffy-{dt_arch}");
        let arg = format!("ARCH={dt_arch}");
        let dir = ctx.join(module);
        w.ok(&[
            "devel",
            "build",
            "-C",
            dir.to_str().unwrap(),
            "-t",
            &tag,
            "--arch",
            dt_arch,
            "--build-arg",
            &arg,
        ]);
    }
}

/// `dts duckiebot ps NAME --json`: (name, state) by name.
fn containers(w: &TestContext) -> Vec<(String, String)> {
    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
    let mut v: Vec<(String, String)> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `dts duckiebot deploy NAME [ARGS] --json`, which must commit release `release`.
#[track_caller]
fn deploy_commits(w: &TestContext, args: &[&str], release: u64) -> serde_json::Value {
    let mut a = vec!["duckiebot", "deploy", w.name.as_str()];
    a.extend_from_slice(args);
    a.push("--json");
    let v: serde_json::Value = serde_json::from_str(&w.ok(&a)).unwrap();
    assert_eq!(v["state"], "committed", "{v}");
    assert_eq!(v["release"], release, "{v}");
    v
}

/// `sim up` (`--arch arch`), the default stack with no `--stack`, then lane-following: every
/// service runs the image built for the robot's CPU (`uname`) with the avahi socket mounted.
fn shipped_stacks_run(w: &TestContext, arch: &str, dt_arch: &str, busybox: &Path, uname: &str) {
    build_stack_images(w, dt_arch, busybox);
    w.ok(&["sim", "up", &w.name, "--arch", arch]);

    let v = deploy_commits(w, &[], 1);
    let images: Vec<&str> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    for m in [
        "dt-ros-commons",
        "dt-duckiebot-interface",
        "dt-car-interface",
    ] {
        let tag = format!("duckietown/{m}:daffy-{dt_arch}");
        assert!(images.contains(&tag.as_str()), "{tag} not shipped: {v}");
    }
    let running = |names: &[&str]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "running".to_string()))
            .collect()
    };
    assert_eq!(
        containers(w),
        running(&["car-interface", "duckiebot-interface", "ros"])
    );
    for (service, module) in [
        ("ros", "dt-ros-commons"),
        ("duckiebot-interface", "dt-duckiebot-interface"),
        ("car-interface", "dt-car-interface"),
    ] {
        let logs = w.ok(&["duckiebot", "logs", &w.name, service]);
        assert!(
            logs.contains(&format!("{module} default on {uname}"))
                && logs.contains("avahi socket mounted"),
            "{service}: {logs}"
        );
    }

    deploy_commits(w, &["--stack", "lane-following"], 2);
    assert_eq!(
        containers(w),
        running(&["car-interface", "core", "duckiebot-interface", "ros"])
    );
    let logs = w.ok(&["duckiebot", "logs", &w.name, "core"]);
    assert!(
        logs.contains(&format!("dt-core lane_following on {uname}"))
            && logs.contains("avahi socket mounted"),
        "core: {logs}"
    );
    w.ok(&["sim", "down", &w.name]);
}

fn can_deploy() -> bool {
    can_run() && support::require_cmd("runc")
}

#[test]
fn the_shipped_stacks_run_on_an_amd64_sim() {
    if !can_deploy() {
        return;
    }
    let Some(busybox) = support::require_busybox("amd64") else {
        return;
    };
    let w = TestContext::new();
    shipped_stacks_run(&w, "amd64", "amd64", &busybox, "x86_64");
}

/// arm64: the cross-built agent (`DTS_AGENT_DIR`, which scripts/test sets, or
/// `target/agents`) and the containers' busybox run under QEMU.
#[test]
fn the_shipped_stacks_run_on_an_arm64_sim() {
    if !can_deploy() {
        return;
    }
    let Some(busybox) = support::require_busybox("arm64") else {
        return;
    };
    let Some(dir) = support::require_agent("arm64") else {
        return;
    };
    if let Err(e) = dts::binfmt::ensure(&dts::oci::Platform::arm64()) {
        support::skip(&format!("QEMU for arm64: {e}"));
        return;
    }
    let w = TestContext::new().with_agent_dir(dir);
    shipped_stacks_run(&w, "arm64", "arm64v8", &busybox, "aarch64");
}

/// A laptop on a sim's bridge: a network namespace of its own with a veth into the bridge and
/// the subnet's last address, so `dts fleet discover` browses the sims' network and nothing
/// else. Removed when dropped.
struct Laptop {
    netns: String,
    host_iface: String,
}

impl Laptop {
    fn on(w: &TestContext) -> Laptop {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{seq}", std::process::id() % 100_000);
        let l = Laptop {
            netns: format!("dtslap{tag}"),
            host_iface: format!("dtl{tag}"),
        };
        let peer = format!("dtp{tag}");
        let net: Ipv4Addr = w.subnet.split('/').next().unwrap().parse().unwrap();
        let addr = Ipv4Addr::from(u32::from(net) + 254);
        let ip = support::find_cmd("ip").unwrap();
        for args in [
            vec!["netns", "add", &l.netns],
            vec![
                "link",
                "add",
                &l.host_iface,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            vec!["link", "set", &peer, "netns", &l.netns],
            vec!["link", "set", &l.host_iface, "master", &w.bridge, "up"],
            vec!["-n", &l.netns, "link", "set", &peer, "name", "eth0"],
            vec!["-n", &l.netns, "link", "set", "lo", "up"],
            vec!["-n", &l.netns, "link", "set", "eth0", "up"],
        ] {
            let out = Command::new(&ip).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cidr = format!("{addr}/24");
        for args in [
            vec!["-n", &l.netns, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &l.netns, "route", "add", "224.0.0.0/4", "dev", "eth0"],
        ] {
            let out = Command::new(&ip).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        l
    }
}

impl Drop for Laptop {
    fn drop(&mut self) {
        let ip = support::find_cmd("ip").unwrap();
        let _ = Command::new(&ip)
            .args(["link", "del", &self.host_iface])
            .output();
        let _ = Command::new(&ip)
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// Waits until `path` contains `needle` (a daemon's log line): what is waited for, not how
/// long it took, is the test.
fn wait_for_log(path: &Path, needle: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "no `{needle}` in {}:\n{log}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn fleet_discover_finds_a_sim_through_its_avahi() {
    if !can_run() {
        return;
    }
    let w = TestContext::new();
    let name = w.name.clone();
    let up: serde_json::Value =
        serde_json::from_str(&w.ok(&["sim", "up", &name, "--json"])).unwrap();
    let address = up["address"].as_str().unwrap().to_owned();
    let info = dts::sim::resolve_in(w.dts_home.path(), &name).unwrap();

    // The sim's own avahi-daemon publishes what a Duckiebot image's service files say, as
    // `NAME.local` (no `NAME-2`: the agent does not contend for the name) ...
    let logs = w.sim_dir().join("root/var/log");
    for service in ["PRESENCE", "ROBOT_TYPE", "ROBOT_CONFIGURATION"] {
        wait_for_log(
            &logs.join("avahi-daemon.log"),
            &format!("Service \"DT::{service}::{name}\" (/services/dt."),
        );
    }
    let avahi = std::fs::read_to_string(logs.join("avahi-daemon.log")).unwrap();
    assert!(
        avahi.contains(&format!("Host name is {name}.local.")),
        "{avahi}"
    );
    // ... and the agent leaves those to it, advertising only itself.
    let agent = std::fs::read_to_string(logs.join("dt-agent.log")).unwrap();
    assert!(
        agent.contains("avahi publishes PRESENCE, ROBOT_TYPE, ROBOT_CONFIGURATION already"),
        "{agent}"
    );
    assert!(agent.contains("advertising AGENT on mDNS"), "{agent}");
    // Its socket, which the stacks mount into containers, resolves the robot's name.
    let socket = format!(
        "/proc/{}/root/run/avahi-daemon/socket",
        info.init_pid.unwrap()
    );
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    use std::io::{BufRead as _, Write as _};
    writeln!(s, "RESOLVE-HOSTNAME-IPV4 {name}.local").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer).unwrap();
    assert!(
        answer.starts_with('+')
            && answer
                .trim_end()
                .ends_with(&format!("{name}.local {address}")),
        "{answer}"
    );

    // A laptop on the sims' network (with a DTS_HOME of its own: found by mDNS, not by the
    // sim's record) lists it like a real robot.
    let laptop = Laptop::on(&w);
    let laptop_home = tempfile::tempdir().unwrap();
    let out = w
        .command(
            support::find_cmd("ip").unwrap(),
            &[
                "netns",
                "exec",
                &laptop.netns,
                env!("CARGO_BIN_EXE_dts"),
                "fleet",
                "discover",
                "--timeout",
                "3",
                "--json",
            ],
        )
        .env("DTS_HOME", laptop_home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let robots: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let robots = robots.as_array().unwrap();
    assert_eq!(robots.len(), 1, "{robots:#?}");
    let r = &robots[0];
    assert_eq!(r["hostname"], name.as_str(), "{r}");
    assert_eq!(r["type"], "duckiebot", "{r}");
    assert_eq!(r["configuration"], "virtual", "{r}");
    assert_eq!(r["status"], "ready", "{r}");
    assert!(
        r["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == address.as_str())),
        "{r}"
    );
    assert_eq!(r["agent"]["ssh_port"], 22, "{r}");
    drop(laptop);
    w.ok(&["sim", "down", &name]);
}
