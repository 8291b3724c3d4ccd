//! A stock Duckiebot for tests, as `dts duckiebot provision` will find one in the field: real
//! systemd as pid 1, a real Docker Engine, and Duckietown's default compose stack already
//! running, started at first boot by dt-autoboot (docs/robots.md, "The stock test robot").
//!
//! ```text
//!  scripts/stock-robot-rootfs ─► /var/cache/dts-test/stock-robot/<hash>/
//!     rootfs/        amd64 Debian: systemd, sshd, sudo, docker.io, containerd, runc,
//!                    docker-compose; stock setup applied (duckie/quackquack, DT2018key, the
//!                    2375 drop-in, daemon.json + stock-runc, /data/autoboot/DB21J.yaml,
//!                    dt-autoboot.service)
//!     docker-amd64/  a dockerd data root holding duckietown/*:daffy-amd64 stand-ins
//!     docker-arm64/  … holding duckietown/*:daffy-arm64v8 stand-ins (run under QEMU)
//!
//!  StockRobot::boot(arch) ─► netns on a support::netns bridge (eth0 = addr())
//!    └ unshare --mount --pid --fork --kill-child  tests/data/stock-robot/boot   (host side:
//!      private mounts only; its pid namespace takes the robot down when nspawn dies)
//!        overlayfs: lower = rootfs/ (shared, read-only), upper = DIR/upper
//!        DIR/docker = a copy of docker-<arch>/, bound at /var/lib/docker
//!        DIR/agent  = empty, bound at /var/lib/dt-agent (the agent's container upper dirs
//!          need a non-overlayfs file system, as dockerd's overlay2 does)
//!        cgroups: a private subtree per robot under the test's own cgroup, the robot's
//!          /sys/fs/cgroup shows only it
//!        exec systemd-nspawn --boot --keep-unit --register=no --network-namespace-path=…
//!          pid 1 = systemd ─► ssh, containerd, docker (+ drop-in: -H tcp://0.0.0.0:2375),
//!            dt-autoboot (first boot: docker-compose --project-name duckietown up -d)
//! ```
//!
//! One robot = one image arch: `amd64` robots hold `daffy-amd64` images, `arm64` robots
//! `daffy-arm64v8` ones (ARCH=arm64v8 for dt-autoboot) whose busybox runs under qemu-aarch64
//! through binfmt_misc; the robot's own OS, dockerd and docker-compose are amd64 in both.
//! [`StockRobot::boot`] returns when multi-user.target is reached (so dt-autoboot has finished),
//! every stack container runs, and sshd (:22) and the Docker API (:2375) answer from the host.
//!
//! Owns: the robot (nspawn and everything under it, all in one pid namespace that dies with
//! nspawn, which dies with the test process through a parent-death signal), its
//! network namespace and veth (through [`super::netns`]), its cgroup subtree and its temp dir
//! `/var/tmp/dts-stock-robot/<pid>-<n>-<name>/` (overlay upper, Docker data root,
//! `console.log`). All of it is removed on drop, also when a test panics; what killed test
//! processes left behind is swept at the next boot. Never written to: the cache. Left on the
//! host: the empty directory `/run/systemd/nspawn` (nspawn's own state goes to a private tmpfs
//! mounted on it).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::netns::{Robot, TestNet};
use super::{find_cmd, is_root, skip};

/// The compose project dt-autoboot starts.
pub const PROJECT: &str = "duckietown";
/// Where the SD card keeps the stack, and the configuration it is named after.
pub const STACK_FILE: &str = "/data/autoboot/DB21J.yaml";
pub const HOSTNAME: &str = "duckiebot";
pub const USER: &str = "duckie";
pub const PASSWORD: &str = "quackquack";
pub const DOCKER_TCP_PORT: u16 = 2375;

/// One service of Duckietown's daffy Duckiebot stack as the stock robot runs it.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// `container_name` (and compose service name).
    pub name: &'static str,
    /// Image repository; the tag is `daffy-<arch tag>` except for portainer's fixed tag.
    pub repo: &'static str,
    pub restart: &'static str,
    pub privileged: bool,
    /// The port its stand-in serves `GET /health` on (host network).
    pub port: u16,
}

/// The stack in `/data/autoboot/DB21J.yaml` (tests/data/stock-robot/duckiebot.yaml).
pub const STACK: &[Service] = &[
    svc("portainer", "portainer/portainer", "always", false, 9000),
    svc(
        "dashboard",
        "duckietown/dt-device-dashboard",
        "unless-stopped",
        false,
        8080,
    ),
    svc(
        "files-api",
        "duckietown/dt-files-api",
        "always",
        false,
        8082,
    ),
    svc("code-api", "duckietown/dt-code-api", "always", false, 8083),
    svc(
        "device-proxy",
        "duckietown/dt-device-proxy",
        "always",
        false,
        8084,
    ),
    svc(
        "device-health",
        "duckietown/dt-device-health",
        "always",
        true,
        8085,
    ),
    svc(
        "device-online",
        "duckietown/dt-device-online",
        "always",
        false,
        8086,
    ),
    svc(
        "ros",
        "duckietown/dt-ros-commons",
        "unless-stopped",
        false,
        11311,
    ),
    svc(
        "duckiebot-interface",
        "duckietown/dt-duckiebot-interface",
        "unless-stopped",
        true,
        8091,
    ),
    svc(
        "car-interface",
        "duckietown/dt-car-interface",
        "unless-stopped",
        false,
        8092,
    ),
    svc(
        "rosbridge-websocket",
        "duckietown/dt-rosbridge-websocket",
        "unless-stopped",
        false,
        9001,
    ),
];

const fn svc(
    name: &'static str,
    repo: &'static str,
    restart: &'static str,
    privileged: bool,
    port: u16,
) -> Service {
    Service {
        name,
        repo,
        restart,
        privileged,
        port,
    }
}

/// Images on the card besides those the stack runs (preloaded, as on real cards).
pub const EXTRA_IMAGES: &[&str] = &[
    "duckietown/dt-base-environment",
    "duckietown/dt-commons",
    "duckietown/dt-core",
];

const TEMP_ROOT: &str = "/var/tmp/dts-stock-robot";
/// Boot (systemd, dockerd, compose creating 11 containers) on a loaded 2-core machine; arm64
/// containers start under QEMU.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const ROBOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Duckietown's arch tag for an image arch (`amd64`, `arm64v8`).
pub fn arch_tag(arch: &str) -> &'static str {
    match arch {
        "amd64" => "amd64",
        "arm64" => "arm64v8",
        _ => panic!("StockRobot: unsupported arch `{arch}` (amd64 or arm64)"),
    }
}

/// The full reference of `service`'s image on a robot of `arch`.
pub fn image_ref(service: &Service, arch: &str) -> String {
    if service.name == "portainer" {
        "portainer/portainer:linux-arm-1.24.1".to_owned()
    } else {
        format!("{}:daffy-{}", service.repo, arch_tag(arch))
    }
}

/// One stock robot. See the module docs.
pub struct StockRobot {
    arch: String,
    /// `unshare --pid --fork … boot …`: its child (pid 1 of a pid namespace) execs
    /// systemd-nspawn, the parent of the robot's systemd.
    holder: Option<Child>,
    /// Host pid of systemd-nspawn.
    nspawn_pid: i32,
    /// Host pid of the robot's pid 1 (systemd).
    init_pid: i32,
    dir: PathBuf,
    robot: Option<Robot>,
    own_net: Option<TestNet>,
    booted_in: Duration,
}

impl StockRobot {
    /// Boot a stock robot whose images are of `arch` (`amd64` or `arm64`) on a bridge of its
    /// own; `name` labels its namespace and temp dir. `None`, after a `SKIP:` line, when not
    /// root or something needed is missing; panics when the robot does not come up.
    pub fn boot(arch: &str, name: &str) -> Option<StockRobot> {
        Self::boot_with_docker(arch, name, None)
    }

    /// [`StockRobot::boot`] with the Docker data root copied from `docker` (a stopped dockerd's
    /// `/var/lib/docker`, e.g. one `scripts/bench adopt` loaded its images into) instead of the
    /// cache's `docker-<arch>/`.
    pub fn boot_with_docker(arch: &str, name: &str, docker: Option<&Path>) -> Option<StockRobot> {
        if !can_boot(arch) {
            return None;
        }
        let cache = cache()?;
        let mut net = TestNet::new();
        let robot = net.robot(name);
        let start = Instant::now();
        let src = docker.map_or_else(|| cache.join(format!("docker-{arch}")), Path::to_path_buf);
        let mut sr = Self::start(arch, name, &cache, &src, robot);
        sr.own_net = Some(net);
        sr.wait_booted(start);
        sr.booted_in = start.elapsed();
        Some(sr)
    }

    /// The robot's IPv4 address on the bridge (reachable from the host).
    pub fn addr(&self) -> Ipv4Addr {
        self.robot().addr
    }

    /// The robot's network namespace name.
    pub fn netns(&self) -> &str {
        &self.robot().ns
    }

    /// The host side of the robot's veth: its `tx_bytes` count what the laptop sent the robot.
    pub fn host_iface(&self) -> &str {
        &self.robot().host_iface
    }

    /// `amd64` or `arm64`: the arch of its images.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Host pid of the robot's systemd.
    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// Host path of the robot's root (`/proc/<pid 1>/root`), valid while it runs.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init_pid))
    }

    /// The temp dir on the host (`upper/`, `docker/`, `console.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`StockRobot::boot`] took, cache lookup excluded.
    pub fn booted_in(&self) -> Duration {
        self.booted_in
    }

    /// The cgroups the robot lives in on the host (one per hierarchy).
    pub fn cgroups(&self) -> Vec<PathBuf> {
        read_cgroups(&self.dir)
    }

    /// nspawn's and the robot's console output so far.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// A `Command` running `cmd` as root inside the robot (all its namespaces, its root, a
    /// clean environment with the robot's PATH).
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new(tool("nsenter"));
        c.arg("-t")
            .arg(self.init_pid.to_string())
            .args(["-a", "-r", "-w", "--"])
            .args(cmd)
            .env_clear()
            .env("PATH", ROBOT_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Run `cmd` as root inside the robot to completion; check `status` yourself.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?} in stock robot `{}`: {e}", self.netns()))
    }

    /// Run `cmd` inside the robot; its stdout, or a panic with its output when it fails.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in stock robot failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether something accepts TCP connections on `addr():port`, seen from the host.
    pub fn port_open(&self, port: u16) -> bool {
        let sa = SocketAddr::from((self.addr(), port));
        TcpStream::connect_timeout(&sa, Duration::from_secs(2)).is_ok()
    }

    /// `name → (running, StartedAt)` of every container of the compose project.
    pub fn stack_state(&self) -> Vec<(String, bool, String)> {
        let ids = self.exec_ok(&[
            "docker",
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={PROJECT}"),
        ]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut cmd = vec![
            "docker",
            "inspect",
            "-f",
            "{{.Name}} {{.State.Running}} {{.State.StartedAt}}",
        ];
        cmd.extend(ids);
        let out = self.exec(&cmd);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.trim_start_matches('/').to_owned(),
                    f.next()? == "true",
                    f.next()?.to_owned(),
                ))
            })
            .collect()
    }

    /// Whether every service of [`STACK`] has a running container.
    pub fn stack_running(&self) -> bool {
        let st = self.stack_state();
        STACK
            .iter()
            .all(|s| st.iter().any(|(n, up, _)| n == s.name && *up))
    }

    /// `systemctl restart docker` in the robot; returns once every stack container is running
    /// again, started anew by dockerd (restart policies), and how long that took. Panics after
    /// [`BOOT_TIMEOUT`].
    pub fn restart_docker(&self) -> Duration {
        let before = self.stack_state();
        let start = Instant::now();
        self.exec_ok(&["systemctl", "restart", "docker.service"]);
        loop {
            let now = self.stack_state();
            let all_new = STACK.iter().all(|s| {
                let old = before.iter().find(|(n, _, _)| n == s.name);
                now.iter().any(|(n, up, started)| {
                    n == s.name && *up && old.is_none_or(|(_, _, o)| o != started)
                })
            });
            if all_new {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < BOOT_TIMEOUT,
                "the stack did not come back after `systemctl restart docker`: {now:?}\n{}",
                self.exec_ok(&["journalctl", "-u", "docker", "-n", "40", "--no-pager"])
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Orderly shutdown: SIGTERM to systemd-nspawn, which halts the robot (units stopped,
    /// dockerd stopping its containers). Waits up to `timeout`, then kills it. Returns whether it
    /// halted in time; idempotent (a stopped robot returns `true`).
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let Some(mut holder) = self.holder.take() else {
            return true;
        };
        if self.nspawn_pid > 0 {
            // SAFETY: plain syscall. nspawn is pid 1 of the holder's pid namespace, which the
            // kernel does not reap (nor reuse its pid) while the holder, our child, waits for it.
            unsafe { libc::kill(self.nspawn_pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + timeout;
        let mut halted = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = holder.try_wait() {
                halted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !halted {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        self.init_pid = 0;
        self.nspawn_pid = 0;
        remove_cgroups(&self.dir);
        halted
    }

    // -----------------------------------------------------------------------------------------

    fn robot(&self) -> &Robot {
        self.robot.as_ref().expect("robot already dropped")
    }

    fn holder_alive(&mut self) -> bool {
        self.holder
            .as_mut()
            .is_some_and(|h| matches!(h.try_wait(), Ok(None)))
    }

    fn start(arch: &str, name: &str, cache: &Path, src: &Path, robot: Robot) -> StockRobot {
        sweep_temp_dirs();
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(30)
            .collect();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = PathBuf::from(TEMP_ROOT).join(format!("{pid}-{seq}-{clean}"));
        let mut sr = StockRobot {
            arch: arch.to_owned(),
            holder: None,
            nspawn_pid: 0,
            init_pid: 0,
            dir: dir.clone(),
            robot: Some(robot),
            own_net: None,
            booted_in: Duration::ZERO,
        };
        for sub in ["upper/etc/default", "work", "merged", "agent"] {
            mkdir_p(&dir.join(sub));
        }
        // The robot's image arch, for dt-autoboot (the only per-robot file of the stock state).
        let env = dir.join("upper/etc/default/dt-autoboot");
        fs::write(
            &env,
            format!("ARCH={}\nREGISTRY=docker.io\n", arch_tag(arch)),
        )
        .unwrap_or_else(|e| panic!("writing `{}`: {e}", env.display()));
        // A private copy of the data root: dockerd writes to it, and its overlay2 driver needs
        // a non-overlayfs backing file system (DIR is on the host's).
        let st = Command::new(tool("cp"))
            .arg("-a")
            .arg(src)
            .arg(dir.join("docker"))
            .status()
            .unwrap_or_else(|e| panic!("running cp: {e}"));
        assert!(st.success(), "copying `{}` failed", src.display());

        let console_path = dir.join("console.log");
        let console = fs::File::create(&console_path)
            .unwrap_or_else(|e| panic!("creating `{}`: {e}", console_path.display()));
        let console2 = console.try_clone().expect("dup console.log");
        let machine = format!("dts-stock-{pid}-{seq}");
        let mut cmd = Command::new(tool("unshare"));
        // A pid namespace of its own whose pid 1 becomes systemd-nspawn: if nspawn dies (or is
        // killed with the test process), the kernel kills the robot with it. `--kill-child`
        // passes our parent-death signal on to that pid 1.
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
        ])
        .arg(tool("bash"))
        .arg(data_dir().join("boot"))
        .arg(cache.join("rootfs"))
        .arg(&dir)
        .arg(sr.netns())
        .arg(&machine)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console2);
        // SAFETY: prctl is async-signal-safe. If the test process dies without dropping us, the
        // holder (systemd-nspawn after the execs) gets SIGKILL, and the robot with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let holder = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the stock robot `{name}`: {e}"));
        let hpid = holder.id();
        sr.holder = Some(holder);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // unshare → systemd-nspawn (once `boot` has exec'd it) → systemd (once nspawn's
            // child has exec'd it): the robot's pid 1.
            let nspawn = children(hpid as i32)
                .into_iter()
                .find(|p| comm(*p) == "systemd-nspawn");
            let init = nspawn.and_then(|n| children(n).into_iter().find(|p| comm(*p) == "systemd"));
            if let (Some(n), Some(pid)) = (nspawn, init) {
                sr.nspawn_pid = n;
                sr.init_pid = pid;
                break;
            }
            if Instant::now() > deadline || !sr.holder_alive() {
                panic!("stock robot `{name}` did not start:\n{}", sr.console());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sr
    }

    fn wait_booted(&mut self, start: Instant) {
        let deadline = start + BOOT_TIMEOUT;
        let mut state = String::new();
        loop {
            if !self.holder_alive() {
                panic!(
                    "stock robot `{}` died while booting:\n{}",
                    self.robot().name,
                    self.console()
                );
            }
            if Instant::now() > deadline {
                let jobs = self.exec(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "stock robot `{}` did not boot in {BOOT_TIMEOUT:?} (system {state:?}, stack {:?}, :22 {}, :{DOCKER_TCP_PORT} {}):\n{}\n{}",
                    self.robot().name,
                    self.stack_state(),
                    self.port_open(22),
                    self.port_open(DOCKER_TCP_PORT),
                    String::from_utf8_lossy(&jobs.stdout),
                    self.console()
                );
            }
            if state != "running" && state != "degraded" {
                let out = self.exec(&["systemctl", "is-system-running"]);
                state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            if (state == "running" || state == "degraded")
                && self.stack_running()
                && self.port_open(22)
                && self.port_open(DOCKER_TCP_PORT)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for StockRobot {
    fn drop(&mut self) {
        if !self.stop(Duration::from_secs(30)) {
            super::write_stderr_line(&format!(
                "support::stock_robot: warning: robot in `{}` did not halt in 30 s; killed",
                self.dir.display()
            ));
        }
        drop(self.robot.take());
        drop(self.own_net.take());
        if self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            super::write_stderr_line(&format!(
                "support::stock_robot: warning: removing `{}`: {e}",
                self.dir.display()
            ));
        }
    }
}

fn can_boot(arch: &str) -> bool {
    if !is_root() {
        skip("needs root: boots a stock robot (systemd-nspawn, namespaces, overlayfs, cgroups)");
        return false;
    }
    if std::env::consts::ARCH != "x86_64" {
        skip("the stock robot's root file system is amd64: needs an x86_64 host");
        return false;
    }
    for cmd in [
        "ip",
        "nsenter",
        "unshare",
        "mount",
        "bash",
        "cp",
        "systemd-nspawn",
    ] {
        if find_cmd(cmd).is_none() {
            skip(&format!(
                "needs `{cmd}` on PATH (not found; systemd-nspawn is in systemd-container)"
            ));
            return false;
        }
    }
    if arch_tag(arch) == "arm64v8" {
        let st = fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
        let flags = st
            .lines()
            .find_map(|l| l.strip_prefix("flags: "))
            .unwrap_or("");
        // F: the kernel holds the interpreter, so it runs inside containers that lack it.
        if st.lines().next() != Some("enabled") || !flags.contains('F') {
            skip(&format!(
                "arm64 containers need qemu-aarch64 enabled in binfmt_misc with the F flag (has `{flags}`; scripts/test registers it)"
            ));
            return false;
        }
    }
    true
}

/// The cache entry `scripts/stock-robot-rootfs` prints (building it when cold: minutes).
/// `None` with a `SKIP:` line when it cannot be built because mmdebstrap is missing.
fn cache() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stock-robot-rootfs");
    let out = Command::new(tool("bash"))
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running `{}`: {e}", script.display()));
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if find_cmd("mmdebstrap").is_none() {
            skip(&format!(
                "no cached stock-robot root file system and no mmdebstrap to build one: {}",
                err.trim()
            ));
            return None;
        }
        panic!("`{}` failed ({}):\n{err}", script.display(), out.status);
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for sub in [
        "rootfs/usr/lib/systemd/systemd",
        "docker-amd64",
        "docker-arm64",
    ] {
        assert!(
            path.join(sub).exists(),
            "`{}` printed `{}`, which has no {sub}",
            script.display(),
            path.display()
        );
    }
    Some(path)
}

/// The children of process `pid` (its main thread's).
fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/stock-robot")
}

fn tool(name: &str) -> PathBuf {
    find_cmd(name).unwrap_or_else(|| name.into())
}

fn mkdir_p(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating `{}`: {e}", dir.display()));
}

/// The cgroup directories `boot` made for the robot of `dir` (listed in `dir/cgroups`).
fn read_cgroups(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string(dir.join("cgroups"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("/sys/fs/cgroup/") && l.contains("/dts-stock-"))
        .map(PathBuf::from)
        .collect()
}

/// Remove a dead robot's cgroup subtrees, deepest first. A cgroup can only be removed once its
/// last process has exited, which the kernel finishes shortly after the pid namespace dies:
/// retry for a few seconds.
fn remove_cgroups(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for cg in read_cgroups(dir) {
        loop {
            let mut dirs = Vec::new();
            collect_dirs(&cg, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            let mut left = false;
            for d in &dirs {
                if fs::remove_dir(d).is_err() && d.exists() {
                    left = true;
                }
            }
            if !left || Instant::now() > deadline {
                if left {
                    super::write_stderr_line(&format!(
                        "support::stock_robot: warning: cgroup `{}` still busy; left in place",
                        cg.display()
                    ));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Remove what robots of dead test processes left: their cgroups, then their temp dirs.
fn sweep_temp_dirs() {
    let Ok(entries) = fs::read_dir(TEMP_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .split('-')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            remove_cgroups(&e.path());
            if let Err(err) = fs::remove_dir_all(e.path()) {
                super::write_stderr_line(&format!(
                    "support::stock_robot: warning: sweeping `{}`: {err}",
                    e.path().display()
                ));
            }
        }
    }
}
