//! Acceptance tests of issue 7 (`dts duckiebot provision`) against fresh robots
//! (tests/it/support/fresh_robot.rs): a stock Debian root file system in its own namespaces with
//! the Duckietown defaults — `duckie`/`quackquack` with NOPASSWD sudo, the shared DT2018key,
//! password SSH, Docker's API on 2375, host keys shared by every robot of the image.
//!
//! - end to end (amd64 and arm64 under QEMU with the cross-compiled agent): after provisioning,
//!   a key login works, a password login is refused, DT2018key is gone, 2375 is closed, the
//!   agent's unit runs, hostname and /data/config are set, the host key changed and the new one
//!   is the only one known_hosts holds, `dts fleet discover` (run in a namespace on the same
//!   bridge) finds the robot under its new name, and a deploy of a busybox stack commits; a
//!   second provision exits 0, says "already provisioned" and leaves the root file system as it
//!   was;
//! - `--dry-run`: on a fresh robot it names every step, says which would change, and changes
//!   nothing; on a provisioned one every check passes;
//! - faults: an unreachable host, a wrong password, an unsupported arch (a fake `uname`), and a
//!   run killed half-way — each a clear error naming the host, the robot still reachable, and a
//!   re-run finishing the job.
//!
//! The laptop is the test process's host side with a HOME and DTS_HOME of its own; its key is
//! `HOME/.ssh/id_ed25519`. Needs root; prints a SKIP line otherwise.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::fresh_robot::{self, FreshRobot, STOCK_PASSWORD, STOCK_USER};
use crate::support::netns::TestNet;
use serde_json::Value;

const DT2018_BLOB: &str = "AAAAB3NzaC1yc2EAAAADAQABAAABAQDFiaiFeU0Pc3ZjiGbjJOIx28ghcWPoem8jU1OSeJnbTkKT79vrzjIbYjkBg7uBlXb6kLnbHLWHUnPlLk2IUQTxHHvakubEJkJxePdN6XO+q1sKpEvz+1GL60iBKhRljCZ9h/CcJ78kkyNQkexHT15ZDMhOnUd8c9zxwUHxSjzPSOH5ns8bxjU3oSjmzDEojPnQJmY6Evhf5DVcKXenxkzs4XgDEo+ldKo37i30iUoFCL30OsXCP2tPcn1j39qjL7vnaUBO9WqY8eOssOHAX7/K1dNN1lDvNCKspq/2f05Ss8LopSpe6hOiMnPB0RlotJbZn+784kV1B4nJpqLj+EQr";

fn can_run() -> bool {
    support::require_root("boots fresh robots: namespaces, mounts, links")
        && support::require_cmd("ssh-keygen")
}

/// The laptop: a HOME with a key pair, a DTS_HOME, a work dir.
struct Laptop {
    home: tempfile::TempDir,
    dts_home: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Laptop {
    fn new() -> Laptop {
        let l = Laptop {
            home: tempfile::tempdir().unwrap(),
            dts_home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        };
        let ssh = l.home.path().join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let st = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "student@laptop",
                "-f",
            ])
            .arg(ssh.join("id_ed25519"))
            .status()
            .unwrap();
        assert!(st.success());
        l
    }

    fn key(&self) -> PathBuf {
        self.home.path().join(".ssh/id_ed25519")
    }

    fn known_hosts(&self) -> PathBuf {
        self.home.path().join(".ssh/known_hosts")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dts"));
        c.args(args)
            .env("DTS_HOME", self.dts_home.path())
            .env("HOME", self.home.path())
            .env_remove("SSH_AUTH_SOCK");
        c
    }

    /// `dts ARGS` with `stdin` fed in.
    fn dts(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut i = child.stdin.take().unwrap();
        let _ = i.write_all(stdin.as_bytes());
        drop(i);
        child.wait_with_output().unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str], stdin: &str) -> (String, String) {
        let out = self.dts(args, stdin);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "dts {args:?} failed ({:?}):\n{o}\n{e}",
            out.status.code()
        );
        (o, e)
    }

    /// `dts duckiebot provision` of `robot` with the stock password; returns the JSON report.
    #[track_caller]
    fn provision(&self, robot: &FreshRobot, hostname: &str, cfg: &str, extra: &[&str]) -> Value {
        let target = format!("{STOCK_USER}@{}", robot.addr());
        let mut args = vec![
            "duckiebot",
            "provision",
            &target,
            "--hostname",
            hostname,
            "--configuration",
            cfg,
            "--accept-new-host-key",
            "--password-stdin",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (out, _) = self.ok(&args, &format!("{STOCK_PASSWORD}\n"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Logs in with exactly these credentials (the library's SSH client, host key checked
    /// against the laptop's known_hosts); the error text on failure.
    fn login(
        &self,
        robot: &FreshRobot,
        key: Option<&Path>,
        password: Option<&str>,
    ) -> Result<String, String> {
        let mut o = dts::ssh::SshOptions::with_home(self.home.path());
        o.config_file = Some(self.home.path().join("no-config"));
        o.default_identities = false;
        o.identities = key.map(|k| vec![k.to_owned()]).unwrap_or_default();
        o.password = password.map(str::to_owned);
        o.connect_timeout = Duration::from_secs(20);
        let target = dts::ssh::Target::parse(&format!("{STOCK_USER}@{}", robot.addr())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = dts::ssh::Session::connect(&target, &o)
                .await
                .map_err(|e| e.to_string())?;
            let out = s.run("hostname").await.map_err(|e| e.to_string())?;
            let _ = s.close().await;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
    }
}

fn read(robot: &FreshRobot, path: &str) -> String {
    std::fs::read_to_string(robot.root().join(path.trim_start_matches('/'))).unwrap_or_default()
}

fn exec_ok(robot: &FreshRobot, cmd: &[&str]) -> String {
    let out = robot.exec(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} in the robot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every acceptance check of a provisioned robot but discovery and deploy.
fn assert_provisioned(l: &Laptop, robot: &FreshRobot, hostname: &str, cfg: &str, hardware: &str) {
    // Key login works and sees the new name; the password is refused.
    assert_eq!(
        l.login(robot, Some(&l.key()), None).as_deref(),
        Ok(hostname)
    );
    let pw = l.login(robot, None, Some(STOCK_PASSWORD));
    let err = pw.expect_err("password login still works");
    assert!(err.contains("refused every authentication method"), "{err}");
    // DT2018key gone from every authorized_keys; ours is there.
    let ak = read(robot, "/home/duckie/.ssh/authorized_keys");
    assert!(
        !ak.contains(DT2018_BLOB),
        "DT2018key still in authorized_keys:\n{ak}"
    );
    let ours = std::fs::read_to_string(l.key().with_extension("pub")).unwrap();
    assert!(ak.contains(ours.split_whitespace().nth(1).unwrap()), "{ak}");
    // Docker's TCP API is closed.
    assert!(
        robot.wait_port(fresh_robot::DOCKER_TCP_PORT, false, Duration::from_secs(15)),
        "port 2375 still open"
    );
    assert!(!read(robot, fresh_robot::DOCKER_DROPIN).contains("tcp://"));
    // Identity.
    assert_eq!(exec_ok(robot, &["hostname"]).trim(), hostname);
    assert_eq!(read(robot, "/etc/hostname").trim(), hostname);
    assert!(read(robot, "/etc/hosts").contains(&format!("127.0.1.1\t{hostname}")));
    assert_eq!(read(robot, "/data/config/robot_type").trim(), "duckiebot");
    assert_eq!(read(robot, "/data/config/robot_configuration").trim(), cfg);
    assert_eq!(read(robot, "/data/config/robot_hardware").trim(), hardware);
    let yaml = read(robot, "/etc/dt-agent/robot.yaml");
    assert!(yaml.contains(&format!("hostname: {hostname}\n")), "{yaml}");
    assert!(yaml.contains(&format!("configuration: {cfg}\n")), "{yaml}");
    // The agent: installed, its unit enabled and running, its status answering.
    assert_eq!(
        exec_ok(robot, &["systemctl", "is-enabled", "dt-agent.service"]).trim(),
        "enabled"
    );
    assert_eq!(
        exec_ok(robot, &["systemctl", "is-active", "dt-agent.service"]).trim(),
        "active"
    );
    let status: Value = serde_json::from_str(&exec_ok(
        robot,
        &["/usr/local/bin/dt-agent", "status", "--json"],
    ))
    .unwrap();
    assert_eq!(
        status["arch"],
        format!("linux/{}", robot.arch()),
        "{status}"
    );
    assert_eq!(status["hostname"], hostname, "{status}");
    // sudoers: exactly the agent's protocol end.
    let sudoers = read(robot, "/etc/sudoers.d/dt-agent");
    assert!(
        sudoers.contains("duckie ALL=(root) NOPASSWD: /usr/local/bin/dt-agent serve --stdio"),
        "{sudoers}"
    );
    // Host keys: new ones, and only they are known for the robot.
    let kh = std::fs::read_to_string(l.known_hosts()).unwrap();
    let ed = read(robot, "/etc/ssh/ssh_host_ed25519_key.pub");
    let blob = ed.split_whitespace().nth(1).unwrap();
    let lines: Vec<&str> = kh
        .lines()
        .filter(|x| x.starts_with(&robot.addr().to_string()))
        .collect();
    assert!(lines.iter().any(|x| x.contains(blob)), "{kh}");
    assert!(
        lines.iter().all(|x| {
            let b = x.split_whitespace().nth(2).unwrap_or_default();
            read(robot, "/etc/ssh/ssh_host_rsa_key.pub").contains(b)
                || read(robot, "/etc/ssh/ssh_host_ecdsa_key.pub").contains(b)
                || ed.contains(b)
        }),
        "known_hosts keeps an old key of the robot:\n{kh}"
    );
}

/// The agent's state on a file system of its own, as on a robot's SD card (ext4): the fresh
/// robot's root is an overlayfs, and a container's overlay cannot have its upper directory on
/// one.
fn data_partition(robot: &FreshRobot) {
    // The image has no `mount`: the static busybox fixture of the robot's arch does it.
    let busybox = format!("/var/cache/dts-fixtures/busybox/{}/busybox", robot.arch());
    std::fs::copy(&busybox, robot.root().join("tmp/busybox"))
        .unwrap_or_else(|e| panic!("{busybox}: {e} (run `bash scripts/fixtures`)"));
    exec_ok(
        robot,
        &[
            "sh",
            "-c",
            "chmod 755 /tmp/busybox && mkdir -p /var/lib/dt-agent && \
             /tmp/busybox mount -t tmpfs -o mode=0700,size=512m dt-agent /var/lib/dt-agent",
        ],
    );
}

/// On an emulated robot, runc runs natively, as on the real one: runc under qemu-user cannot
/// re-execute itself into a container ("could not ensure we are a cloned binary"). The host's
/// runc replaces the image's, with the host libraries it links (their x86-64 paths do not
/// collide with the robot's aarch64 ones). The agent itself stays the emulated aarch64 binary.
fn native_runc(robot: &FreshRobot) {
    if robot.arch() == "amd64" {
        return;
    }
    let root = robot.root();
    let runc = support::find_cmd("runc").expect("runc on the host");
    let ldd = Command::new("ldd").arg(&runc).output().unwrap();
    let mut libs: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    for lib in libs {
        let real = std::fs::canonicalize(&lib).unwrap();
        // Into /usr/…: the image's /lib and /lib64 may be links into /usr (merged /usr).
        let dest = root.join("usr").join(
            lib.strip_prefix("/")
                .unwrap()
                .strip_prefix("usr")
                .unwrap_or(lib.strip_prefix("/").unwrap()),
        );
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&real, &dest).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
        let top = lib.iter().nth(1).unwrap().to_owned();
        let link = root.join(&top);
        if !link.exists() && !link.is_symlink() {
            std::os::unix::fs::symlink(PathBuf::from("usr").join(&top), &link).unwrap();
        }
    }
    let dest = root.join("usr/sbin/runc");
    let _ = std::fs::remove_file(&dest);
    std::fs::copy(&runc, &dest).unwrap();
    let v = exec_ok(robot, &["/usr/sbin/runc", "--version"]);
    assert!(v.contains("runc version"), "{v}");
}

/// A robot's host keys as the image shipped them (shared by every robot of the image).
fn host_keys(robot: &FreshRobot) -> String {
    read(robot, "/etc/ssh/ssh_host_ed25519_key.pub")
}

/// `dts fleet discover --json` from a namespace on `net`: the hostnames found.
fn discovered(net: &mut TestNet) -> Vec<String> {
    let laptop = net.robot("laptop");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = laptop.exec(&[
            env!("CARGO_BIN_EXE_dts"),
            "fleet",
            "discover",
            "--json",
            "--timeout",
            "4",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let names: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["hostname"].as_str().map(str::to_owned))
            .collect();
        if !names.is_empty() || Instant::now() > deadline {
            return names;
        }
    }
}

/// The keys provision made are filed under `NAME.local` too: with every entry for the address
/// removed (DHCP handed out another one), `dts duckiebot ps NAME` from a laptop on the LAN
/// finds the robot over mDNS and trusts its key without `--accept-new-host-key`.
fn by_name_at_any_address(l: &Laptop, net: &mut TestNet, robot: &FreshRobot, name: &str) {
    let st = Command::new("ssh-keygen")
        .arg("-R")
        .arg(robot.addr().to_string())
        .arg("-f")
        .arg(l.known_hosts())
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let known = std::fs::read_to_string(l.known_hosts()).unwrap();
    assert!(
        !known.contains(&robot.addr().to_string()),
        "address entries left: {known}"
    );
    assert!(known.contains(&format!("{name}.local ")), "{known}");
    let laptop = net.robot("laptop-by-name");
    let out = laptop
        .command(&[env!("CARGO_BIN_EXE_dts"), "duckiebot", "ps", name, "--json"])
        .env("DTS_HOME", l.dts_home.path())
        .env("HOME", l.home.path())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "ps by name failed:\n{o}\n{e}");
    assert!(o.contains("\"service\": \"app\""), "{o}");
    assert_eq!(
        std::fs::read_to_string(l.known_hosts()).unwrap(),
        known,
        "nothing new recorded"
    );
}

fn busybox(arch: &str) -> String {
    format!("/var/cache/dts-fixtures/busybox/{arch}/busybox")
}

/// Builds `me/app:1`, busybox sleeping, for `arch` into the laptop's store.
fn build_image(l: &Laptop, arch: &str) {
    let ctx = l.work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(busybox(arch), ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sleep\", \"3600\"]\n",
    )
    .unwrap();
    let dt_arch = if arch == "arm64" { "arm64v8" } else { "amd64" };
    l.ok(
        &[
            "devel",
            "build",
            "-C",
            ctx.to_str().unwrap(),
            "-t",
            "me/app:1",
            "--arch",
            dt_arch,
        ],
        "",
    );
}

/// Deploys a one-service stack of `me/app:1` to `robot`: the deploy summary.
fn deploy(l: &Laptop, robot: &FreshRobot) -> Value {
    let stack = l.work.path().join("stack.yaml");
    std::fs::write(
        &stack,
        "services:\n  app:\n    image: me/app:1\n    network_mode: host\n",
    )
    .unwrap();
    let (out, _) = l.ok(
        &[
            "duckiebot",
            "deploy",
            &robot.addr().to_string(),
            "--stack",
            stack.to_str().unwrap(),
            "--json",
        ],
        "",
    );
    serde_json::from_str(&out).unwrap()
}

fn end_to_end(arch: &str, cfg: &str, hardware: &str) {
    if !can_run() {
        return;
    }
    if !Path::new(&busybox(arch)).exists() {
        support::skip("no static busybox fixture: run `bash scripts/fixtures`");
        return;
    }
    let mut net = TestNet::new();
    let Some(robot) = FreshRobot::boot_on(&mut net, arch, &format!("prov-{arch}")) else {
        return;
    };
    data_partition(&robot);
    native_runc(&robot);
    let l = Laptop::new();
    let shared_host_key = host_keys(&robot);
    let name = format!("bot{arch}");

    // --dry-run changes nothing.
    let before = robot.snapshot();
    let plan = l.provision(&robot, &name, cfg, &["--dry-run"]);
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert!(plan["changed"].as_array().unwrap().len() > 5, "{plan}");
    let d = fresh_robot::diff(&before, &robot.snapshot());
    assert!(d.is_empty(), "--dry-run changed the robot:\n{d}");

    build_image(&l, arch);
    let report = l.provision(&robot, &name, cfg, &["--preload", "me/app:1"]);
    assert_eq!(report["robot"], format!("{STOCK_USER}@{}", robot.addr()));
    assert_eq!(report["arch"], arch, "{report}");
    assert_eq!(report["already_provisioned"], false);
    let changed: Vec<&str> = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for step in [
        "authorized-key",
        "agent",
        "udev-rules",
        "robot-yaml",
        "data-config",
        "hostname",
        "sudoers",
        "host-keys",
        "ssh-password-login",
        "shared-key",
        "password-lock",
        "docker-tcp",
        "systemd-unit",
        "agent-service",
        "preload",
        "marker",
    ] {
        assert!(changed.contains(&step), "`{step}` not in {changed:?}");
    }
    assert_ne!(
        host_keys(&robot),
        shared_host_key,
        "host keys not regenerated"
    );
    assert_provisioned(&l, &robot, &name, cfg, hardware);

    // Discovered under the new name by a laptop on the same LAN.
    let names = discovered(&mut net);
    assert!(
        names.contains(&name),
        "discover found {names:?}, not `{name}`"
    );

    // The agent is reached the way every robot command reaches it (key login, `sudo -n
    // dt-agent serve --stdio`, the daemon), and holds the preloaded image.
    let (ps, _) = l.ok(
        &["duckiebot", "ps", &robot.addr().to_string(), "--json"],
        "",
    );
    assert_eq!(ps.trim(), "[]");
    let images = exec_ok(
        &robot,
        &["/usr/local/bin/dt-agent", "image", "ls", "--json"],
    );
    assert!(
        images.contains("me/app:1"),
        "--preload did not ship the image: {images}"
    );
    // A deploy works, and sends nothing: the image is there.
    let dep = deploy(&l, &robot);
    assert_eq!(dep["state"], "committed", "{dep}");
    assert_eq!(dep["objects_sent"], 0, "{dep}");

    // Second run: key login only, nothing changes, "already provisioned".
    let before = robot.snapshot();
    let (out, err) = l.ok(
        &[
            "duckiebot",
            "provision",
            &robot.addr().to_string(),
            "--hostname",
            &name,
            "--configuration",
            cfg,
            "--json",
        ],
        "",
    );
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["already_provisioned"], true, "{again}\n{err}");
    assert_eq!(again["changed"], Value::Array(vec![]), "{again}");
    let d = fresh_robot::diff(&without_caches(before), &without_caches(robot.snapshot()));
    assert!(d.is_empty(), "the second provision changed the robot:\n{d}");
    let (_, human) = l.ok(
        &[
            "duckiebot",
            "provision",
            &robot.addr().to_string(),
            "--hostname",
            &name,
            "--configuration",
            cfg,
        ],
        "",
    );
    assert!(human.contains("already provisioned"), "{human}");

    // `--restore-docker` on a robot whose Docker stack was never adopted: exit 1 saying so,
    // nothing changed.
    let before = robot.snapshot();
    let out = l.dts(
        &[
            "duckiebot",
            "provision",
            &robot.addr().to_string(),
            "--restore-docker",
        ],
        "",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing to restore"), "{err}");
    assert!(err.contains("never adopted"), "{err}");
    let d = fresh_robot::diff(&before, &robot.snapshot());
    assert!(d.is_empty(), "--restore-docker changed the robot:\n{d}");

    // Last: it forgets the address entries every step above used.
    by_name_at_any_address(&l, &mut net, &robot, &name);
}

#[test]
fn provision_amd64_end_to_end() {
    end_to_end("amd64", "virtual", "virtual");
}

/// The robot is arm64 under QEMU and gets the cross-compiled aarch64 agent.
#[test]
fn provision_arm64_end_to_end() {
    if support::require_agent("arm64").is_none() {
        return;
    }
    end_to_end("arm64", "DB21J", "jetson_nano");
}

/// `dts duckiebot provision` expecting failure: (exit code, stderr).
fn provision_fails(l: &Laptop, target: &str, password: &str) -> (Option<i32>, String) {
    let out = l.dts(
        &[
            "duckiebot",
            "provision",
            target,
            "--hostname",
            "faulty",
            "--configuration",
            "virtual",
            "--accept-new-host-key",
            "--password-stdin",
        ],
        &format!("{password}\n"),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn faults_are_clear_and_a_rerun_finishes() {
    if !can_run() {
        return;
    }
    let Some(robot) = FreshRobot::boot("amd64", "prov-faults") else {
        return;
    };
    let l = Laptop::new();
    let target = format!("{STOCK_USER}@{}", robot.addr());
    let pristine = robot.snapshot();

    // Unreachable: an address on the robot's LAN where nothing answers.
    let octets = robot.addr().octets();
    let nobody = format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], 250);
    let (code, err) = provision_fails(&l, &format!("{STOCK_USER}@{nobody}"), STOCK_PASSWORD);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&nobody), "{err}");
    assert!(
        err.contains("cannot connect") || err.contains("timed out"),
        "{err}"
    );

    // Wrong password: an authentication error naming user and host; nothing changed.
    let (code, err) = provision_fails(&l, &target, "not-the-password");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("{target}:22")), "{err}");
    assert!(err.contains("password: refused"), "{err}");
    let d = fresh_robot::diff(&pristine, &robot.snapshot());
    assert!(d.is_empty(), "a refused login changed the robot:\n{d}");

    // Unsupported arch: a `uname` that says mips.
    let fake = robot.root().join("usr/local/bin/uname");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = -m ]; then echo mips; else exec /bin/uname \"$@\"; fi\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, err) = provision_fails(&l, &target, STOCK_PASSWORD);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`mips` machine"), "{err}");
    assert!(err.contains(&robot.addr().to_string()), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    std::fs::remove_file(&fake).unwrap();
    assert!(read(&robot, "/etc/dt-agent/robot.yaml").is_empty());

    // Killed half-way: once robot.yaml is written (the agent is in, nothing is hardened yet).
    kill_provision_when(&l, &robot, &target, "survivor", "etc/dt-agent/robot.yaml");
    // Still reachable with the stock password (nothing was hardened) and with the key.
    assert!(l.login(&robot, None, Some(STOCK_PASSWORD)).is_ok());
    assert!(l.login(&robot, Some(&l.key()), None).is_ok());
    assert!(!Path::new(&robot.root().join("etc/dt-agent/provisioned.json")).exists());

    // The re-run finishes the job.
    let report = l.provision(&robot, "survivor", "virtual", &[]);
    assert_eq!(report["already_provisioned"], false, "{report}");
    assert_provisioned(&l, &robot, "survivor", "virtual", "virtual");
}

/// A robot whose sudo wants the password (no NOPASSWD rule) and lectures each time it asks:
/// provisioning feeds it to `sudo -S`, keeps the password (sudo needs it) while SSH stops taking it, and the sudoers
/// drop-in still lets `dts` reach the agent without one.
#[test]
fn provision_with_a_sudo_password() {
    if !can_run() {
        return;
    }
    let Some(robot) = FreshRobot::boot("amd64", "prov-sudopw") else {
        return;
    };
    exec_ok(
        &robot,
        &[
            "sed",
            "-i",
            "s/^duckie ALL=(ALL) NOPASSWD:ALL$/duckie ALL=(ALL) ALL/",
            "/etc/sudoers",
        ],
    );
    assert!(!read(&robot, "/etc/sudoers").contains("NOPASSWD"));
    // And it lectures, every time, in words that look like sudo's own complaints.
    exec_ok(
        &robot,
        &[
            "sh",
            "-c",
            "printf 'sudo: this robot belongs to the lab\\nsudo: think before you type\\n' > /etc/sudo_lecture && \
             printf 'Defaults lecture=always\\nDefaults lecture_file=/etc/sudo_lecture\\n' > /etc/sudoers.d/lecture && \
             chmod 440 /etc/sudoers.d/lecture",
        ],
    );
    let out = robot.exec(&[
        "su",
        "-s",
        "/bin/sh",
        "duckie",
        "-c",
        "echo quackquack | sudo -k -S -p '' true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("belongs to the lab"), "no lecture: {err}");
    let l = Laptop::new();
    let report = l.provision(&robot, "pwbot", "DB21M", &[]);
    assert_eq!(report["already_provisioned"], false, "{report}");
    let notes = report["notes"].to_string();
    assert!(notes.contains("sudo needs it"), "{report}");
    // SSH refuses the password, the key works, DT2018key is gone, the password is intact.
    assert!(l.login(&robot, None, Some(STOCK_PASSWORD)).is_err());
    assert_eq!(
        l.login(&robot, Some(&l.key()), None).as_deref(),
        Ok("pwbot")
    );
    assert!(!read(&robot, "/home/duckie/.ssh/authorized_keys").contains(DT2018_BLOB));
    let shadow = exec_ok(&robot, &["getent", "shadow", "duckie"]);
    assert!(
        !shadow
            .split(':')
            .nth(1)
            .unwrap_or("*")
            .starts_with(['*', '!']),
        "{shadow}"
    );
    assert_eq!(
        read(&robot, "/data/config/robot_hardware").trim(),
        "jetson_nano"
    );
    // The agent is reachable through the drop-in: `ps` over `sudo -n dt-agent serve --stdio`.
    let (out, _) = l.ok(
        &["duckiebot", "ps", &robot.addr().to_string(), "--json"],
        "",
    );
    assert_eq!(out.trim(), "[]");
}

/// Starts a provision of `robot` as `hostname` and kills it (SIGKILL) as soon as `path` (in
/// the robot's root) exists.
fn kill_provision_when(l: &Laptop, robot: &FreshRobot, target: &str, hostname: &str, path: &str) {
    let mut child = l
        .command(&[
            "duckiebot",
            "provision",
            target,
            "--hostname",
            hostname,
            "--configuration",
            "virtual",
            "--accept-new-host-key",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut i = child.stdin.take().unwrap();
        i.write_all(format!("{STOCK_PASSWORD}\n").as_bytes())
            .unwrap();
    }
    let file = robot.root().join(path);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !file.exists() {
        assert!(Instant::now() < deadline, "provision never wrote /{path}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "provision ended before writing /{path}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Killed right after the robot got its new host keys (sshd reloading, known_hosts holding old
/// and new): the robot stays reachable with the recorded keys, and a re-run finishes, leaving
/// only the new keys in known_hosts.
#[test]
fn killed_after_new_host_keys_a_rerun_finishes() {
    if !can_run() {
        return;
    }
    let Some(robot) = FreshRobot::boot("amd64", "prov-hostkeys") else {
        return;
    };
    let l = Laptop::new();
    let target = format!("{STOCK_USER}@{}", robot.addr());
    let old = host_keys(&robot);
    kill_provision_when(
        &l,
        &robot,
        &target,
        "keys",
        "etc/dt-agent/host-keys-regenerated",
    );
    assert_ne!(host_keys(&robot), old, "host keys not regenerated");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match l.login(&robot, Some(&l.key()), None) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "robot unreachable: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = l.provision(&robot, "keys", "virtual", &[]);
    assert_eq!(report["already_provisioned"], false, "{report}");
    assert_provisioned(&l, &robot, "keys", "virtual", "virtual");
}

/// The steps of a provision report, in order: (name, whether it changed or would change).
fn steps_of(report: &Value) -> Vec<(String, bool)> {
    report["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {report}"))
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["changed"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// `--dry-run` is a provision's checks without its changes: on a fresh robot it names every
/// step in order, says which would change the robot, and changes nothing; once the robot is
/// provisioned, every check finds it as it should be.
#[test]
fn a_dry_run_checks_every_step_and_changes_nothing() {
    if !can_run() {
        return;
    }
    let Some(robot) = FreshRobot::boot("amd64", "prov-dryrun") else {
        return;
    };
    let l = Laptop::new();
    let pristine = robot.snapshot();
    let plan = l.provision(&robot, "dry", "virtual", &["--dry-run"]);
    assert_eq!(plan["dry_run"], true, "{plan}");
    let steps = steps_of(&plan);
    let names: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
    // No key login: the key is not on the robot yet. No preload: none was asked for.
    assert_eq!(
        names,
        [
            "detect",
            "authorized-key",
            "runc",
            "agent",
            "udev-rules",
            "robot-yaml",
            "data-config",
            "sudoers",
            "host-keys",
            "ssh-password-login",
            "shared-key",
            "password-lock",
            "docker-tcp",
            "hostname",
            "systemd-unit",
            "agent-service",
            "marker",
        ],
        "{plan}"
    );
    let would: Vec<&str> = steps.iter().filter(|s| s.1).map(|s| s.0.as_str()).collect();
    let changed: Vec<&str> = plan["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(changed, would, "{plan}");
    for step in [
        "authorized-key",
        "agent",
        "udev-rules",
        "robot-yaml",
        "data-config",
        "sudoers",
        "host-keys",
        "ssh-password-login",
        "shared-key",
        "password-lock",
        "docker-tcp",
        "hostname",
        "systemd-unit",
        "agent-service",
        "marker",
    ] {
        assert!(would.contains(&step), "`{step}` would not change: {plan}");
    }
    let d = fresh_robot::diff(&pristine, &robot.snapshot());
    assert!(d.is_empty(), "--dry-run changed the robot:\n{d}");

    l.provision(&robot, "dry", "virtual", &[]);
    let before = robot.snapshot();
    let (out, err) = l.ok(
        &[
            "duckiebot",
            "provision",
            &robot.addr().to_string(),
            "--hostname",
            "dry",
            "--configuration",
            "virtual",
            "--dry-run",
            "--json",
        ],
        "",
    );
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["dry_run"], true, "{again}\n{err}");
    assert_eq!(again["already_provisioned"], true, "{again}");
    assert_eq!(again["changed"], Value::Array(vec![]), "{again}");
    let steps = steps_of(&again);
    assert!(steps.iter().all(|s| !s.1), "{again}");
    // Now the key is in: its login is checked, right after the key itself.
    let at = |n: &str| steps.iter().position(|s| s.0 == n);
    assert_eq!(
        at("key-login"),
        at("authorized-key").map(|i| i + 1),
        "{again}"
    );
    let d = fresh_robot::diff(&before, &robot.snapshot());
    assert!(d.is_empty(), "a dry run changed a provisioned robot:\n{d}");
}

/// Issue 13, "a robot whose sudo warns": every `sudo` on this robot prints `sudo: unable to
/// resolve host …` (its name is not in /etc/hosts, and hosts are looked up in DNS alone, which
/// answers nothing), before and after provisioning. Provision judges each step by its exit
/// status and the agent's hello, so it succeeds and a second run changes nothing. A third run
/// renaming the robot keeps what the user put in /etc/hosts and robot.yaml (`devices:`), and
/// /etc/hosts is replaced by a rename that keeps its owner and mode.
#[test]
fn provision_when_sudo_warns_and_merges_what_the_user_added() {
    if !can_run() {
        return;
    }
    let Some(robot) = FreshRobot::boot("amd64", "prov-warns") else {
        return;
    };
    exec_ok(
        &robot,
        &[
            "sh",
            "-c",
            "sed -i '/duckiebot/d' /etc/hosts && printf '10.9.8.7\\tlabserver labserver.lan\\n' >> /etc/hosts && \
             chgrp adm /etc/hosts && chmod 664 /etc/hosts && \
             sed -i 's/^hosts:.*/hosts: dns/' /etc/nsswitch.conf && \
             rm -f /etc/resolv.conf && echo 'nameserver 127.0.0.1' > /etc/resolv.conf",
        ],
    );
    let warns = |when: &str| {
        let out = robot.exec(&["su", "-s", "/bin/sh", "duckie", "-c", "sudo -n true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{when}: {err}");
        assert!(
            err.contains("sudo: unable to resolve host"),
            "{when}: sudo does not warn: {err}"
        );
    };
    warns("before");
    let l = Laptop::new();
    let report = l.provision(&robot, "warnbot", "DB21J", &[]);
    assert_eq!(report["already_provisioned"], false, "{report}");
    assert_provisioned(&l, &robot, "warnbot", "DB21J", "jetson_nano");
    warns("after");
    let hosts = read(&robot, "/etc/hosts");
    assert!(
        hosts.contains("10.9.8.7\tlabserver labserver.lan\n"),
        "{hosts}"
    );

    let again = |name: &str| -> Value {
        let (out, err) = l.ok(
            &[
                "duckiebot",
                "provision",
                &robot.addr().to_string(),
                "--hostname",
                name,
                "--configuration",
                "DB21J",
                "--json",
            ],
            "",
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"))
    };
    // The user gives the camera another node, with a comment.
    let yaml_path = robot.root().join("etc/dt-agent/robot.yaml");
    let edited = format!(
        "{}# our camera is on the second node\ndevices:\n  camera:\n    nodes: [\"/dev/video2:/dev/video0\"]\n    groups: [video]\n",
        read(&robot, "/etc/dt-agent/robot.yaml")
    );
    std::fs::write(&yaml_path, &edited).unwrap();
    let before = robot.snapshot();
    let second = again("warnbot");
    assert_eq!(second["already_provisioned"], true, "{second}");
    assert_eq!(second["changed"], Value::Array(vec![]), "{second}");
    let d = fresh_robot::diff(&without_caches(before), &without_caches(robot.snapshot()));
    assert!(d.is_empty(), "the second provision changed the robot:\n{d}");
    assert_eq!(read(&robot, "/etc/dt-agent/robot.yaml"), edited);

    // Renamed: provision's keys change, the user's stay; /etc/hosts is a new file (renamed
    // into place) with the old one's owner and mode, and no temp file is left in /etc.
    use std::os::unix::fs::MetadataExt as _;
    let hosts_path = robot.root().join("etc/hosts");
    let old = std::fs::metadata(&hosts_path).unwrap();
    let third = again("warnbot2");
    let changed = third["changed"].to_string();
    assert!(
        changed.contains("robot-yaml") && changed.contains("hostname"),
        "{third}"
    );
    let yaml = read(&robot, "/etc/dt-agent/robot.yaml");
    let c = dts::profile::robot::RobotConfig::from_str("robot.yaml", &yaml).unwrap();
    assert_eq!(c.hostname, "warnbot2", "{yaml}");
    assert_eq!(c.configuration, "DB21J", "{yaml}");
    assert_eq!(
        c.devices["camera"].nodes[0].to_string(),
        "/dev/video2:/dev/video0",
        "{yaml}"
    );
    let new = std::fs::metadata(&hosts_path).unwrap();
    assert_ne!(
        new.ino(),
        old.ino(),
        "/etc/hosts was not replaced by a rename"
    );
    assert_eq!(
        (new.mode() & 0o7777, new.uid(), new.gid()),
        (old.mode() & 0o7777, old.uid(), old.gid())
    );
    let hosts = read(&robot, "/etc/hosts");
    assert!(
        hosts.contains("10.9.8.7\tlabserver labserver.lan\n"),
        "{hosts}"
    );
    assert!(hosts.contains("127.0.1.1\twarnbot2\n"), "{hosts}");
    assert!(!hosts.contains("warnbot\n"), "{hosts}");
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
    let leftovers: Vec<_> = std::fs::read_dir(robot.root().join("etc"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".dts."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(exec_ok(&robot, &["hostname"]).trim(), "warnbot2");
    warns("renamed");
}

/// A robot's files without the agent's caches: any session with the agent may write them (the
/// second provision's hello decides the runtime advisory and remembers it), and they are
/// decided again when missing (`runtime/advisory.json`, src/runtime/advisory.rs). They are not
/// something provisioning sets up.
fn without_caches(mut s: fresh_robot::Snapshot) -> fresh_robot::Snapshot {
    s.remove(Path::new("var/lib/dt-agent/runtime/advisory.json"));
    s
}
