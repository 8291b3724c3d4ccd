//! A brand-new, stock Duckiebot for tests: a Debian root file system booted in its own network,
//! mount, UTS, IPC and pid namespaces, in the state a freshly flashed SD card is in
//! (docs/duckietown.md, "A freshly flashed robot") — what `dts duckiebot provision` starts from.
//!
//! ```text
//!  scripts/fresh-robot-rootfs ARCH  ─► /var/cache/dts-test/rootfs/<arch>-<hash>/   the "image":
//!     mmdebstrap essential + openssh-server sudo runc iproute2 python3-minimal passwd procps;
//!     SSH host keys generated once here, so robots from one cache SHARE them (on purpose)
//!
//!  FreshRobot::boot ─► netns on a support::netns bridge (eth0 = addr(), reachable from the host)
//!    └ nsenter --net  unshare --mount --uts --ipc --pid --fork  tests/data/fresh-robot/enter
//!        overlayfs: lower = the cached image (read-only, shared), upper = a private temp dir
//!        /proc /sys (+ host cgroups for runc) /dev (tmpfs + nodes + devpts) /run /tmp
//!        pivot_root ─► pid 1 = /usr/local/lib/fresh-robot/init (in the robot, its arch):
//!          first boot: stock-setup — user duckie / quackquack, NOPASSWD:ALL sudo, groups
//!            root docker users video, DT2018key in authorized_keys, PasswordAuthentication yes,
//!            docker.service + docker.service.d/options.conf (`-H unix:// -H tcp://0.0.0.0:2375`),
//!            /etc/hostname = duckiebot, no /data/config
//!          boot: `systemctl boot` starts what multi-user.target wants: ssh.service (real sshd,
//!            :22) and docker.service (a fake dockerd answering GET /version, :2375)
//! ```
//!
//! For arm64 every binary of the robot (its bash, sshd, sudo, runc, python) runs under
//! qemu-aarch64 through binfmt_misc, registered by `scripts/test` with the F flag (the
//! interpreter is found from inside the robot's root) and the C flag (setuid sudo works).
//!
//! **systemd.** There is no systemd as pid 1 in the robot. Checked on the development VM (pid 1
//! not systemd, hybrid cgroups): `systemd-nspawn --keep-unit --register=no --private-network
//! --boot` does boot an amd64 Debian with systemd-sysv (without `--keep-unit` it fails: no system
//! bus), but systemd as pid 1 under qemu-user for arm64 was not tried and is not known to be
//! dependable, a systemd boot is slower, and one harness for both arches is simpler. Instead the
//! robot carries test doubles under `/usr/local/bin`: `systemctl`
//! (tests/data/fresh-robot/systemctl: daemon-reload, start/stop/restart/reload, enable/disable
//! [--now], mask, is-active/is-enabled/is-failed, status, show — on the real unit files and
//! drop-ins, each service's ExecStartPre=/ExecStart= run with a pidfile, KillMode=process
//! honoured, a changed unit ignored until daemon-reload as systemd does), `journalctl -u UNIT`
//! and `hostnamectl set-hostname`. `/run/systemd/system` exists, so code that checks for a running systemd the
//! usual way finds one: provisioning just calls `systemctl` (`daemon-reload`, `enable --now
//! dt-agent.service`, `restart docker`, `reload ssh`) as on a real robot. `Restart=` is not
//! modelled: nothing restarts a service that dies. [`FreshRobot::start_unit`] starts a unit by
//! hand.
//!
//! Owns: the robot's processes (everything in its pid namespace), its mounts (all inside its
//! own mount namespace: they vanish with its last process, none is ever made in the host's),
//! its network namespace and veth (through [`super::netns`]) and its temp dir
//! `/var/tmp/dts-fresh-robot/<pid>-<n>-<name>/` (overlay upper + work dirs, `console.log`). All
//! of it is removed on drop, also when a test panics. Directories left by killed test
//! processes are swept at the next boot. Does not own the cached image (never written to).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::netns::{Robot, TestNet};
use super::{find_cmd, is_root, skip};

/// The hostname every stock robot boots with (two fresh robots share it, as two robots flashed
/// with defaults do).
pub const STOCK_HOSTNAME: &str = "duckiebot";
/// The stock login and its password.
pub const STOCK_USER: &str = "duckie";
pub const STOCK_PASSWORD: &str = "quackquack";
/// The stock Docker drop-in and the unauthenticated Docker API port it opens.
pub const DOCKER_DROPIN: &str = "/etc/systemd/system/docker.service.d/options.conf";
pub const DOCKER_TCP_PORT: u16 = 2375;
/// Where temp dirs of robots live on the host.
const TEMP_ROOT: &str = "/var/tmp/dts-fresh-robot";
/// How long a boot may take (arm64 under QEMU on a loaded 2-core machine is the slow case).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// PATH inside the robot.
const ROBOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Paths (relative to the robot's root) left out of [`FreshRobot::snapshot`]: kernel and
/// tmpfs mounts, logs and sshd's/sudo's bookkeeping that every login rewrites.
const VOLATILE: &[&str] = &["proc", "sys", "dev", "run", "tmp", "var/log", "var/tmp"];

/// Files the harness puts into each robot's upper layer: (file in tests/data/fresh-robot,
/// path in the robot, mode).
const ROBOT_FILES: &[(&str, &str, u32)] = &[
    ("init", "usr/local/lib/fresh-robot/init", 0o755),
    (
        "stock-setup",
        "usr/local/lib/fresh-robot/stock-setup",
        0o755,
    ),
    (
        "dt2018key.pub",
        "usr/local/lib/fresh-robot/dt2018key.pub",
        0o644,
    ),
    ("systemctl", "usr/local/bin/systemctl", 0o755),
    ("journalctl", "usr/local/bin/journalctl", 0o755),
    ("hostnamectl", "usr/local/bin/hostnamectl", 0o755),
    ("dockerd", "usr/bin/dockerd", 0o755),
];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What [`FreshRobot::snapshot`] records per path: kind, mode, owner and content digest.
pub type Snapshot = BTreeMap<PathBuf, String>;

/// One fresh robot. See the module docs.
pub struct FreshRobot {
    arch: String,
    /// Host pid of the robot's pid 1 (its init).
    init_pid: i32,
    /// `nsenter … unshare …`: the parent of pid 1.
    holder: Option<Child>,
    dir: PathBuf,
    robot: Option<Robot>,
    /// The bridge, when [`FreshRobot::boot`] made one for this robot alone.
    own_net: Option<TestNet>,
}

impl FreshRobot {
    /// Boot a stock robot of `arch` (`amd64` or `arm64`) on a bridge of its own. `name` labels
    /// the network namespace and temp dir (the robot's hostname is always
    /// [`STOCK_HOSTNAME`]). `None`, after a `SKIP:` line, when not root or something needed is
    /// missing (tools, binfmt for arm64, a cached image that cannot be built); panics when the
    /// robot does not come up.
    pub fn boot(arch: &str, name: &str) -> Option<FreshRobot> {
        if !Self::can_boot(arch) {
            return None;
        }
        let lower = image(arch)?;
        let mut net = TestNet::new();
        let robot = net.robot(name);
        let mut fr = Self::start(arch, name, &lower, robot);
        fr.own_net = Some(net);
        fr.wait_booted();
        Some(fr)
    }

    /// Like [`FreshRobot::boot`], on a bridge the caller owns (so that other namespaces on it —
    /// a laptop, a second robot — reach this robot, mDNS included). The robot's namespace is
    /// also removed when `net` is dropped first.
    pub fn boot_on(net: &mut TestNet, arch: &str, name: &str) -> Option<FreshRobot> {
        if !Self::can_boot(arch) {
            return None;
        }
        let lower = image(arch)?;
        let robot = net.robot(name);
        let mut fr = Self::start(arch, name, &lower, robot);
        fr.wait_booted();
        Some(fr)
    }

    /// The robot's IPv4 address on the bridge (reachable from the host).
    pub fn addr(&self) -> Ipv4Addr {
        self.robot().addr
    }

    /// The robot's network namespace name (for `ip netns exec`, `ip -n`).
    pub fn netns(&self) -> &str {
        &self.robot().ns
    }

    /// The [`super::netns::Robot`] underneath (link shaping, cutting the cable, …).
    pub fn net_robot(&self) -> &Robot {
        self.robot()
    }

    /// `amd64` or `arm64`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Host path of the robot's root file system (`/proc/<pid 1>/root`): read files the robot
    /// sees, write to plant some. Valid while the robot runs.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init_pid))
    }

    /// The robot's temp dir on the host (`upper/` is everything the robot changed;
    /// `console.log` its init's output).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `Command` running `cmd` as root inside the robot (all its namespaces, its root, a
    /// clean environment with the robot's PATH). Configure stdio and spawn it yourself.
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new(tool("nsenter"));
        c.arg("-t")
            .arg(self.init_pid.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"])
            .args(cmd)
            .env_clear()
            .env("PATH", ROBOT_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Run `cmd` as root inside the robot to completion, capturing its output. Panics only if
    /// it cannot be started; check `status` yourself.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?} in robot `{}`: {e}", self.netns()))
    }

    /// Whether something accepts TCP connections on `addr():port`, seen from the host.
    pub fn port_open(&self, port: u16) -> bool {
        let sa = SocketAddr::from((self.addr(), port));
        TcpStream::connect_timeout(&sa, Duration::from_secs(2)).is_ok()
    }

    /// Wait up to `timeout` for [`FreshRobot::port_open`] to be `open`; returns whether it did.
    pub fn wait_port(&self, port: u16, open: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.port_open(port) == open {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `systemctl start UNIT` inside the robot (the double runs the unit's ExecStart); panics
    /// with the unit's log when it fails.
    pub fn start_unit(&self, unit: &str) {
        let out = self.exec(&["systemctl", "start", unit]);
        if !out.status.success() {
            let log = self.exec(&["journalctl", "-u", unit, "-n", "40"]);
            panic!(
                "systemctl start {unit} failed ({}): {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&log.stdout)
            );
        }
    }

    /// Every file, directory and link of the robot's root with its kind, mode, owner and
    /// content digest, leaving out the volatile paths (/proc, /sys, /dev, /run, /tmp, /var/log,
    /// /var/tmp). Compare two to see what a step changed ([`diff`]).
    pub fn snapshot(&self) -> Snapshot {
        let root = self.root();
        let mut out = BTreeMap::new();
        walk(&root, Path::new(""), &mut out);
        out
    }

    /// Kill every process of the robot (its pid namespace goes, and with it the mounts); the
    /// network namespace stays until drop. Idempotent.
    pub fn kill_all(&mut self) {
        if self.init_pid > 0 {
            // SAFETY: plain syscall; the pid is our holder's child (pid 1 of the robot's pid
            // namespace), which cannot be reaped (and its pid reused) while the holder lives.
            unsafe { libc::kill(self.init_pid, libc::SIGKILL) };
        }
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }

    // -----------------------------------------------------------------------------------------

    fn robot(&self) -> &Robot {
        self.robot.as_ref().expect("robot already dropped")
    }

    fn can_boot(arch: &str) -> bool {
        if !is_root() {
            skip("needs root: boots a fresh robot (namespaces, overlayfs, mknod)");
            return false;
        }
        for cmd in ["ip", "nsenter", "unshare", "pivot_root", "mount", "bash"] {
            if find_cmd(cmd).is_none() {
                skip(&format!("needs `{cmd}` on PATH (not found)"));
                return false;
            }
        }
        match arch {
            "amd64" => {
                if std::env::consts::ARCH != "x86_64" {
                    skip("an amd64 fresh robot needs an x86_64 host");
                    return false;
                }
            }
            "arm64" => {
                let st = fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64");
                let Ok(st) = st else {
                    skip("qemu-aarch64 is not registered in binfmt_misc (scripts/test does it)");
                    return false;
                };
                let flags = st
                    .lines()
                    .find_map(|l| l.strip_prefix("flags: "))
                    .unwrap_or("");
                // F: the interpreter is found from inside the robot's root; C: setuid works
                // under emulation (sudo is an aarch64 setuid binary there).
                if st.lines().next() != Some("enabled")
                    || !flags.contains('F')
                    || !flags.contains('C')
                {
                    skip(&format!(
                        "qemu-aarch64 in binfmt_misc needs to be enabled with the F and C flags (has `{flags}`; scripts/test registers it so)"
                    ));
                    return false;
                }
            }
            _ => panic!("FreshRobot: unsupported arch `{arch}` (amd64 or arm64)"),
        }
        true
    }

    fn start(arch: &str, name: &str, lower: &Path, robot: Robot) -> FreshRobot {
        sweep_temp_dirs();
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(30)
            .collect();
        let dir = PathBuf::from(TEMP_ROOT).join(format!(
            "{}-{}-{clean}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut fr = FreshRobot {
            arch: arch.to_owned(),
            init_pid: 0,
            holder: None,
            dir: dir.clone(),
            robot: Some(robot),
            own_net: None,
        };
        for sub in ["upper", "work", "merged"] {
            mkdir_p(&dir.join(sub), 0o755);
        }
        let data = data_dir();
        for (src, dst, mode) in ROBOT_FILES {
            let from = data.join(src);
            let to = dir.join("upper").join(dst);
            mkdir_p(to.parent().unwrap(), 0o755);
            fs::copy(&from, &to).unwrap_or_else(|e| {
                panic!("copying `{}` to `{}`: {e}", from.display(), to.display())
            });
            fs::set_permissions(&to, fs::Permissions::from_mode(*mode))
                .unwrap_or_else(|e| panic!("chmod `{}`: {e}", to.display()));
        }
        let console_path = dir.join("console.log");
        let console = fs::File::create(&console_path)
            .unwrap_or_else(|e| panic!("creating `{}`: {e}", console_path.display()));
        let console2 = console.try_clone().expect("dup console.log");
        let mut cmd = Command::new(tool("nsenter"));
        cmd.arg(format!("--net=/run/netns/{}", fr.netns()))
            .arg("--")
            .arg(tool("unshare"))
            .args([
                "--mount",
                "--uts",
                "--ipc",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "--",
            ])
            .arg(tool("bash"))
            .arg(data.join("enter"))
            .arg(lower)
            .arg(&dir)
            .arg(STOCK_HOSTNAME)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console2);
        // SAFETY: prctl is async-signal-safe. If the test process dies without dropping us, the
        // holder gets SIGKILL, and `--kill-child` takes the robot's pid 1 (and so its whole pid
        // namespace and mounts) with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let holder = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the fresh robot `{name}`: {e}"));
        let holder_pid = holder.id();
        fr.holder = Some(holder);
        // pid 1 of the robot is the holder's only child.
        let deadline = Instant::now() + Duration::from_secs(10);
        let children = format!("/proc/{holder_pid}/task/{holder_pid}/children");
        loop {
            if let Some(pid) = fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            {
                fr.init_pid = pid;
                break;
            }
            if Instant::now() > deadline || !fr.holder_alive() {
                panic!("fresh robot `{name}` did not start:\n{}", fr.console());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        fr
    }

    fn holder_alive(&mut self) -> bool {
        self.holder
            .as_mut()
            .is_some_and(|h| matches!(h.try_wait(), Ok(None)))
    }

    /// The robot's init output so far.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    fn wait_booted(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let marker = self.root().join("run/fresh-robot-booted");
        loop {
            if marker.exists() && self.port_open(22) && self.port_open(DOCKER_TCP_PORT) {
                return;
            }
            if !self.holder_alive() {
                panic!(
                    "fresh robot `{}` died while booting:\n{}",
                    self.robot().name,
                    self.console()
                );
            }
            if Instant::now() > deadline {
                let logs = self.exec(&["sh", "-c", "tail -n 20 /run/systemctl-double/*.log 2>&1"]);
                panic!(
                    "fresh robot `{}` did not boot in {BOOT_TIMEOUT:?} (sshd on :22 {}, :{DOCKER_TCP_PORT} {}):\n{}\n{}",
                    self.robot().name,
                    self.port_open(22),
                    self.port_open(DOCKER_TCP_PORT),
                    self.console(),
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FreshRobot {
    fn drop(&mut self) {
        self.kill_all();
        // The netns (and its veth) go with the Robot; then nothing references the temp dir.
        drop(self.robot.take());
        drop(self.own_net.take());
        if self.dir.exists()
            && let Err(e) = remove_temp_dir(&self.dir)
        {
            super::write_stderr_line(&format!(
                "support::fresh_robot: warning: removing `{}`: {e}",
                self.dir.display()
            ));
        }
    }
}

/// What changed between two snapshots: `+ path`, `- path`, `~ path (before -> after)`, one per
/// line; empty when nothing did.
pub fn diff(before: &Snapshot, after: &Snapshot) -> String {
    let mut s = String::new();
    for (p, a) in after {
        match before.get(p) {
            None => s.push_str(&format!("+ /{} {a}\n", p.display())),
            Some(b) if b != a => s.push_str(&format!("~ /{} ({b} -> {a})\n", p.display())),
            _ => {}
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) {
            s.push_str(&format!("- /{}\n", p.display()));
        }
    }
    s
}

/// The cached base image for `arch` (building it when cold, which takes minutes): the path
/// `scripts/fresh-robot-rootfs` prints. `None` with a `SKIP:` line when it cannot be built here
/// because mmdebstrap is missing; panics on other failures.
fn image(arch: &str) -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fresh-robot-rootfs");
    let out = Command::new(tool("bash"))
        .arg(&script)
        .arg(arch)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running `{}`: {e}", script.display()));
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if find_cmd("mmdebstrap").is_none() {
            skip(&format!(
                "no cached {arch} fresh-robot image and no mmdebstrap to build one: {}",
                err.trim()
            ));
            return None;
        }
        panic!(
            "`{} {arch}` failed ({}):\n{err}",
            script.display(),
            out.status
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.join("usr/sbin/sshd").exists(),
        "`{}` printed `{}`, which has no usr/sbin/sshd",
        script.display(),
        path.display()
    );
    Some(path)
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fresh-robot")
}

fn tool(name: &str) -> PathBuf {
    find_cmd(name).unwrap_or_else(|| name.into())
}

fn mkdir_p(dir: &Path, mode: u32) {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .unwrap_or_else(|e| panic!("creating `{}`: {e}", dir.display()));
}

/// Remove a robot's temp dir. overlayfs leaves `work/work` mode 000, which root may remove.
fn remove_temp_dir(dir: &Path) -> std::io::Result<()> {
    fs::remove_dir_all(dir)
}

/// Remove temp dirs of test processes that no longer exist (their robots died with them: the
/// holder's parent-death signal kills pid 1, and the mounts go with the pid namespace).
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
        if !alive && let Err(err) = remove_temp_dir(&e.path()) {
            super::write_stderr_line(&format!(
                "support::fresh_robot: warning: sweeping `{}`: {err}",
                e.path().display()
            ));
        }
    }
}

fn walk(root: &Path, rel: &Path, out: &mut Snapshot) {
    let dir = root.join(rel);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let rel_path = rel.join(e.file_name());
        if VOLATILE.iter().any(|v| rel_path == Path::new(v)) {
            continue;
        }
        let path = root.join(&rel_path);
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = md.file_type();
        let meta = format!("{:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
        let desc = if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap_or_default();
            format!("link -> {}", target.display())
        } else if ft.is_dir() {
            walk(root, &rel_path, out);
            format!("dir {meta}")
        } else if ft.is_file() {
            format!("file {meta} sha256:{}", file_digest(&path))
        } else {
            use std::os::unix::fs::FileTypeExt as _;
            let kind = if ft.is_char_device() {
                "chr"
            } else if ft.is_block_device() {
                "blk"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "sock"
            };
            format!("{kind} {meta} {:x}", md.rdev())
        };
        out.insert(rel_path, desc);
    }
}

fn file_digest(path: &Path) -> String {
    let mut h = Sha256::new();
    match fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => h.update(&buf[..n]),
                    Err(e) => return format!("unreadable({e})"),
                }
            }
        }
        Err(e) => return format!("unreadable({e})"),
    }
    let d = h.finalize();
    let mut s = String::with_capacity(64);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}
