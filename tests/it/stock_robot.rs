//! Tests of the stock-robot harness (`tests/it/support/stock_robot.rs`): a robot of each image arch
//! (amd64, and arm64 whose containers run under QEMU) boots real systemd under systemd-nspawn,
//! its real dockerd runs Duckietown's daffy stack as dt-autoboot started it (project
//! `duckietown`, privileged where the stack says, with its restart policies), the images are
//! named as the stock ones and share their base layers, the containers come back after
//! `systemctl restart docker`, duckie logs in over SSH with the stock password, and the host's
//! hostname and /etc are untouched. One robot per arch for the whole file (a boot is the
//! expensive part); the checks run in order on it. Needs root, systemd-nspawn and sshpass (and
//! binfmt for arm64); skips with a reason otherwise.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::stock_robot::{
    self, EXTRA_IMAGES, HOSTNAME, PASSWORD, PROJECT, STACK, STACK_FILE, StockRobot, USER,
};

/// What of the host a robot must not change.
fn host_state() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let hostname = Command::new("hostname").output().expect("hostname");
    m.insert(
        "hostname".into(),
        String::from_utf8_lossy(&hostname.stdout).trim().to_owned(),
    );
    for f in [
        "/etc/hostname",
        "/etc/hosts",
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/sudoers",
        "/etc/machine-id",
    ] {
        m.insert(f.into(), std::fs::read_to_string(f).unwrap_or_default());
    }
    for d in ["/etc/docker", "/etc/systemd/system", "/var/lib/docker"] {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        m.insert(d.into(), names.join(" "));
    }
    m
}

fn check_systemd(robot: &StockRobot) {
    let comm = robot.exec_ok(&["cat", "/proc/1/comm"]);
    assert_eq!(comm.trim(), "systemd", "pid 1 of the robot");
    // The same process, seen from the host: the robot's systemd, not the host's init.
    let host_comm = std::fs::read_to_string(format!("/proc/{}/comm", robot.init_pid()))
        .expect("the robot's init seen from the host");
    assert_eq!(
        host_comm.trim(),
        "systemd",
        "the robot's init from the host"
    );
    let state = robot.exec(&["systemctl", "is-system-running"]);
    let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
    assert!(
        state == "running" || state == "degraded",
        "is-system-running: {state}\n{}",
        robot.exec_ok(&["systemctl", "--failed", "--no-pager"])
    );
    for unit in ["ssh.service", "containerd.service", "docker.service"] {
        assert_eq!(
            robot.exec_ok(&["systemctl", "is-active", unit]).trim(),
            "active",
            "{unit}"
        );
    }
    // dt-autoboot ran once, at this first boot, and is done.
    let show = robot.exec_ok(&[
        "systemctl",
        "show",
        "dt-autoboot.service",
        "-p",
        "ActiveState",
        "-p",
        "Result",
    ]);
    assert!(
        show.contains("ActiveState=active") && show.contains("Result=success"),
        "{show}"
    );
    assert!(robot.root().join("data/stats/dt-autoboot.done").exists());
    // The Duckietown drop-in is what docker.service runs.
    let exec = robot.exec_ok(&["systemctl", "show", "docker.service", "-p", "ExecStart"]);
    assert!(exec.contains("tcp://0.0.0.0:2375"), "{exec}");
    assert_eq!(robot.exec_ok(&["hostname"]).trim(), HOSTNAME);
}

fn check_stack(robot: &StockRobot) {
    let arch = robot.arch();
    let uname = if arch == "amd64" { "x86_64" } else { "aarch64" };
    for s in STACK {
        let f = "{{index .Config.Labels \"com.docker.compose.project\"}}|{{.Config.Image}}|{{.State.Running}}|{{.HostConfig.Privileged}}|{{.HostConfig.RestartPolicy.Name}}|{{.HostConfig.NetworkMode}}|{{.State.Pid}}";
        let out = robot.exec_ok(&["docker", "inspect", "-f", f, s.name]);
        let v: Vec<&str> = out.trim().split('|').collect();
        assert_eq!(v.len(), 7, "inspect {}: {out}", s.name);
        assert_eq!(v[0], PROJECT, "{}: compose project", s.name);
        let want = stock_robot::image_ref(s, arch);
        assert!(
            v[1] == want || v[1] == format!("docker.io/{want}"),
            "{}: image {} (want {want})",
            s.name,
            v[1]
        );
        assert_eq!(v[2], "true", "{} running", s.name);
        assert_eq!(v[3], s.privileged.to_string(), "{} privileged", s.name);
        assert_eq!(v[4], s.restart, "{} restart policy", s.name);
        assert_eq!(v[5], "host", "{} network", s.name);
        // A real process, a child of containerd's shim, in the robot.
        let ppid = robot.exec_ok(&["ps", "-o", "ppid=", "-p", v[6]]);
        let parent = robot.exec_ok(&["ps", "-o", "comm=", "-p", ppid.trim()]);
        assert!(
            parent.trim().starts_with("containerd-shim"),
            "{}: pid {} has parent {parent}",
            s.name,
            v[6]
        );
    }
    // The containers run the images' own arch (arm64 under QEMU).
    assert_eq!(
        robot
            .exec_ok(&["docker", "exec", "ros", "uname", "-m"])
            .trim(),
        uname
    );
    // Every stand-in answers GET /health on the host network, seen from the host.
    for s in STACK {
        let body = http_get(robot, s.port, "/health");
        assert!(
            body.starts_with("HTTP/1.") && body.contains(" 200 "),
            "{} :{}: {body}",
            s.name,
            s.port
        );
        let image = stock_robot::image_ref(s, arch);
        assert!(body.contains(&image), "{} :{}: {body}", s.name, s.port);
    }
    // The stack file on the card and dt-autoboot's arch.
    assert!(
        robot
            .root()
            .join(STACK_FILE.trim_start_matches('/'))
            .exists()
    );
    let env = robot.exec_ok(&["cat", "/etc/default/dt-autoboot"]);
    assert!(env.contains(&format!("ARCH={}", stock_robot::arch_tag(arch))));
}

fn layers(robot: &StockRobot, image: &str) -> Vec<String> {
    robot
        .exec_ok(&[
            "docker",
            "image",
            "inspect",
            "-f",
            "{{range .RootFS.Layers}}{{.}} {{end}}",
            image,
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn check_images(robot: &StockRobot) {
    let tag = format!("daffy-{}", stock_robot::arch_tag(robot.arch()));
    let listed = robot.exec_ok(&["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for s in STACK {
        let r = stock_robot::image_ref(s, robot.arch());
        assert!(listed.lines().any(|l| l == r), "{r} not in:\n{listed}");
    }
    for e in EXTRA_IMAGES {
        let r = format!("{e}:{tag}");
        assert!(listed.lines().any(|l| l == r), "{r} not in:\n{listed}");
    }
    let commons = layers(robot, &format!("duckietown/dt-commons:{tag}"));
    let ros = layers(robot, &format!("duckietown/dt-ros-commons:{tag}"));
    assert_eq!(commons.len(), 2, "dt-commons: {commons:?}");
    assert_eq!(ros.len(), 3);
    assert!(
        ros.starts_with(&commons),
        "dt-ros-commons derives from dt-commons"
    );
    for s in STACK.iter().filter(|s| s.repo.starts_with("duckietown/")) {
        let l = layers(robot, &stock_robot::image_ref(s, robot.arch()));
        assert!(l.len() >= 3, "{}: {l:?}", s.name);
        assert!(
            l.starts_with(&commons),
            "{} shares dt-commons' layers",
            s.name
        );
        if [
            "ros",
            "duckiebot-interface",
            "car-interface",
            "rosbridge-websocket",
        ]
        .contains(&s.name)
        {
            assert!(
                l.starts_with(&ros),
                "{} shares dt-ros-commons' layers",
                s.name
            );
        }
    }
    let arch = robot.exec_ok(&[
        "docker",
        "image",
        "inspect",
        "-f",
        "{{.Architecture}}",
        &format!("duckietown/dt-duckiebot-interface:{tag}"),
    ]);
    assert_eq!(arch.trim(), robot.arch());
}

fn check_ssh(robot: &StockRobot) {
    let Some(sshpass) = support::find_cmd("sshpass") else {
        support::skip("needs `sshpass` on PATH for the password login (not found)");
        return;
    };
    let out = Command::new(sshpass)
        .args(["-p", PASSWORD, "ssh"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{USER}@{}", robot.addr()))
        .arg("id -un; hostname; sudo -n true && echo sudo-ok; docker ps --format '{{.Names}}' | wc -l")
        .stdin(Stdio::null())
        .output()
        .expect("running sshpass ssh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh as duckie ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&USER), "{text}");
    assert_eq!(lines.get(1), Some(&HOSTNAME), "{text}");
    assert_eq!(lines.get(2), Some(&"sudo-ok"), "{text}");
    // duckie is in the docker group: the unauthenticated engine is his too.
    assert_eq!(
        lines.get(3).map(|l| l.trim()),
        Some(STACK.len().to_string().as_str())
    );
}

/// A raw HTTP/1.0 GET from the host; the whole response.
fn http_get(robot: &StockRobot, port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = TcpStream::connect_timeout(
            &SocketAddr::from((robot.addr(), port)),
            Duration::from_secs(5),
        )
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: robot\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            Ok(resp)
        });
        match r {
            Ok(resp) => return resp,
            Err(e) if Instant::now() > deadline => {
                panic!("GET {path} on {}:{port}: {e}", robot.addr())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn stock_robot(arch: &str) {
    let host_before = host_state();
    let Some(mut robot) = StockRobot::boot(arch, &format!("stock-{arch}")) else {
        return;
    };
    support::write_stderr_line(&format!(
        "stock_robot: {arch} robot booted (stack up) in {:.1?}",
        robot.booted_in()
    ));
    check_systemd(&robot);
    check_stack(&robot);
    check_images(&robot);
    check_ssh(&robot);

    // Restart policies: dockerd stops every container when it stops, and starts them again.
    let took = robot.restart_docker();
    support::write_stderr_line(&format!(
        "stock_robot: {arch} stack back {took:.1?} after `systemctl restart docker`"
    ));
    check_stack(&robot);

    assert_eq!(host_state(), host_before, "the robot changed the host");
    let cgroups = robot.cgroups();
    assert!(!cgroups.is_empty());
    let start = Instant::now();
    assert!(
        robot.stop(Duration::from_secs(60)),
        "the robot did not halt in 60 s:\n{}",
        robot.console()
    );
    support::write_stderr_line(&format!(
        "stock_robot: {arch} robot halted in {:.1?}",
        start.elapsed()
    ));
    for cg in &cgroups {
        assert!(!cg.exists(), "cgroup `{}` left behind", cg.display());
    }
    let dir = robot.dir().to_path_buf();
    drop(robot);
    assert!(!dir.exists(), "`{}` left behind", dir.display());
}

#[test]
fn stock_robot_amd64() {
    stock_robot("amd64");
}

#[test]
fn stock_robot_arm64() {
    stock_robot("arm64");
}
