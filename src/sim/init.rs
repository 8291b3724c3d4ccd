//! A sim's processes: the holder that outlives `dts sim up`, and pid 1 of the sim's pid
//! namespace, which builds the mount namespace, pivots into the sim's root and supervises sshd
//! and `dt-agent daemon`.
//!
//! ```text
//! dts sim up ──spawn, setsid──► holder `dts sim __init DIR`     (host mount ns, own session)
//!    setns(netns dts-sim-NAME); unshare(UTS | PID)
//!    ──spawn, PDEATHSIG=KILL──► pid 1 `dts sim __pid1 DIR`       (writes DIR/init.pid)
//!         unshare(NS); / rprivate; sethostname(NAME)
//!         DIR/root bound on itself; /usr ro; DIR/local at /usr/local (dt-agent bound ro in it);
//!         proc; sysfs + rbind of the host's /sys/fs/cgroup (runc needs it); tmpfs /dev with
//!         null zero full random urandom tty ptmx+pts shm and the role nodes (mknod); tmpfs /run
//!         pivot_root; old root detached
//!         ├── /usr/sbin/avahi-daemon               (restarted if it dies; see super::avahi)
//!         ├── /usr/sbin/sshd -D -e                 (restarted if it dies)
//!         └── /usr/local/bin/dt-agent daemon       (restarted if it dies)
//! ```
//!
//! Killing the holder kills pid 1 (its parent-death signal), and with pid 1 the kernel kills
//! every process of the pid namespace; the mount namespace goes with its last process, so no
//! mount of a sim is ever visible in the host's namespace (`/` is made private first).

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::{SimError, SimInfo, io};
use crate::profile::robot::DeviceKind;

/// PATH inside the sim.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where pid 1 tells the host its pid.
const INIT_PID: &str = "init.pid";

/// Starts the holder for `info` (recording its pid) and waits for pid 1 to report.
pub fn spawn_holder(info: &mut SimInfo) -> Result<(), SimError> {
    let exe = std::env::current_exe().map_err(io("find", Path::new("/proc/self/exe")))?;
    let log_path = info.dir.join("sim.log");
    let log = fs::File::create(&log_path).map_err(io("create", &log_path))?;
    let log2 = log.try_clone().map_err(io("open", &log_path))?;
    let _ = fs::remove_file(info.dir.join(INIT_PID));
    // The holder enters the sim's memory cgroup (`--memory`) before it starts anything.
    let procs = info
        .cgroup
        .as_deref()
        .map(super::memory::procs_file)
        .transpose()?;
    let mut cmd = Command::new(&exe);
    cmd.args(["sim", "__init"])
        .arg(&info.dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe; the holder leaves the terminal's session so Ctrl-C
    // in the shell that ran `dts sim up` does not reach it.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if let Some(fd) = &procs {
                super::memory::enter(fd)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io("start", &exe))?;
    info.holder_pid = Some(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(15);
    let pid_file = info.dir.join(INIT_PID);
    loop {
        if let Ok(t) = fs::read_to_string(&pid_file)
            && let Ok(p) = t.trim().parse()
        {
            info.init_pid = Some(p);
            return Ok(());
        }
        if !info.is_running() || Instant::now() > deadline {
            return Err(SimError::NotUp {
                name: info.name.clone(),
                reason: "its holder process did not start the sim".into(),
                logs: Vec::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load(dir: &Path) -> Result<SimInfo> {
    let p = dir.join(super::SIM_JSON);
    let text = fs::read(&p).with_context(|| format!("reading `{}`", p.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing `{}`", p.display()))
}

fn check(r: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!("{}: {e}", what());
    }
    Ok(())
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("paths have no NUL")
}

/// `dts sim __init DIR`: joins the sim's netns, makes UTS and pid namespaces, starts pid 1 in
/// them and waits for it. Returns pid 1's exit code.
pub fn holder_main(dir: &Path) -> Result<i32> {
    let info = load(dir)?;
    let ns = Path::new("/run/netns").join(&info.netns);
    let f = fs::File::open(&ns).with_context(|| format!("opening netns `{}`", ns.display()))?;
    // SAFETY: plain syscalls on an fd we own.
    check(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        || format!("joining netns `{}`", ns.display()),
    )?;
    check(
        unsafe { libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWPID) },
        || "making UTS and pid namespaces".into(),
    )?;
    let exe = std::env::current_exe().context("finding the dts executable")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["sim", "__pid1"]).arg(dir).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe: pid 1 (and so the whole sim) dies with the holder.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", exe.display()))?;
    let pid_file = dir.join(INIT_PID);
    fs::write(&pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("writing `{}`", pid_file.display()))?;
    let status = child.wait().context("waiting for the sim's pid 1")?;
    eprintln!("dts sim: pid 1 of `{}` ended: {status}", info.name);
    Ok(status.code().unwrap_or(1))
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let s = src.map(cstr);
    let d = cstr(dst);
    let t = fstype.map(|t| CString::new(t).expect("no NUL"));
    let o = data.map(|o| CString::new(o).expect("no NUL"));
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a valid C string or null, alive for the call.
    let r = unsafe {
        libc::mount(
            p(&s),
            d.as_ptr(),
            p(&t),
            flags,
            p(&o) as *const libc::c_void,
        )
    };
    check(r, || {
        format!(
            "mounting {} on `{}`",
            src.map_or_else(
                || fstype.unwrap_or("?").to_owned(),
                |s| format!("`{}`", s.display())
            ),
            dst.display()
        )
    })
}

/// Binds `src` at `dst`, read-only.
fn bind_ro(src: &Path, dst: &Path) -> Result<()> {
    mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
    mount(
        None,
        dst,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    )
}

fn mknod(path: &Path, kind: DeviceKind, major: u32, minor: u32, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating `{}`", parent.display()))?;
    }
    let t = match kind {
        DeviceKind::Char => libc::S_IFCHR,
        DeviceKind::Block => libc::S_IFBLK,
    };
    let c = cstr(path);
    // SAFETY: valid C string; makedev is pure.
    let r = unsafe { libc::mknod(c.as_ptr(), t | mode, libc::makedev(major, minor)) };
    check(r, || format!("mknod `{}` {major}:{minor}", path.display()))?;
    // The umask must not narrow the mode.
    // SAFETY: as above.
    check(unsafe { libc::chmod(c.as_ptr(), mode) }, || {
        format!("chmod `{}`", path.display())
    })
}

/// The tmpfs `/dev` at `dev`: the basics and `info`'s role nodes.
fn make_dev(info: &SimInfo, dev: &Path) -> Result<()> {
    mount(
        None,
        dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        mknod(&dev.join(name), DeviceKind::Char, major, minor, 0o666)?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).with_context(|| format!("creating `{}`", pts.display()))?;
    mount(
        None,
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).with_context(|| format!("creating `{}`", shm.display()))?;
    mount(
        None,
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .with_context(|| format!("linking `{}`", dev.join(link).display()))?;
    }
    let groups = fs::read_to_string(info.root.join("etc/group")).unwrap_or_default();
    for n in &info.devices {
        let rel = n.path.strip_prefix("/dev/").unwrap_or(&n.path);
        let path = dev.join(rel.trim_start_matches('/'));
        mknod(&path, n.kind, n.major, n.minor, 0o660)?;
        let gid = n
            .group
            .as_deref()
            .and_then(|g| {
                groups
                    .lines()
                    .find(|l| l.split(':').next() == Some(g))
                    .and_then(|l| l.split(':').nth(2))
                    .and_then(|id| id.parse().ok())
            })
            .unwrap_or(0);
        std::os::unix::fs::chown(&path, Some(0), Some(gid))
            .with_context(|| format!("chown `{}`", path.display()))?;
    }
    Ok(())
}

/// `dts sim __pid1 DIR`: pid 1 of the sim. Never returns while the sim runs.
pub fn pid1_main(dir: &Path) -> Result<i32> {
    let info = load(dir)?;
    let r = &info.root;
    // SAFETY: plain syscalls.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "making a mount namespace".into()
    })?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let host = CString::new(info.name.as_str()).context("robot name")?;
    // SAFETY: valid buffer and length.
    check(
        unsafe { libc::sethostname(host.as_ptr(), info.name.len()) },
        || format!("setting the hostname `{}`", info.name),
    )?;

    mount(Some(r), r, None, libc::MS_BIND | libc::MS_REC, None)?;
    bind_ro(Path::new("/usr"), &r.join("usr"))?;
    mount(
        Some(&dir.join("local")),
        &r.join("usr/local"),
        None,
        libc::MS_BIND,
        None,
    )?;
    bind_ro(&info.agent, &r.join("usr/local/bin/dt-agent"))?;
    for d in &info.ro_binds {
        bind_ro(d, &r.join(d.strip_prefix("/").unwrap_or(d)))?;
    }
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(None, &r.join("proc"), Some("proc"), nosuid, None)?;
    let sys = r.join("sys");
    if mount(None, &sys, Some("sysfs"), nosuid, None).is_err() {
        mount(
            Some(Path::new("/sys")),
            &sys,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
    } else {
        mount(
            Some(Path::new("/sys/fs/cgroup")),
            &sys.join("fs/cgroup"),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
    }
    make_dev(&info, &r.join("dev"))?;
    let run = r.join("run");
    mount(
        None,
        &run,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=755,size=10%"),
    )?;
    for (d, mode) in [("sshd", 0o755), ("lock", 0o1777), ("user", 0o755)] {
        let p = run.join(d);
        fs::create_dir(&p).with_context(|| format!("creating `{}`", p.display()))?;
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .with_context(|| format!("chmod `{}`", p.display()))?;
    }

    let old = r.join(".oldroot");
    fs::create_dir_all(&old).with_context(|| format!("creating `{}`", old.display()))?;
    let (new_c, old_c) = (cstr(r), cstr(&old));
    // SAFETY: valid C strings.
    check(
        unsafe { libc::syscall(libc::SYS_pivot_root, new_c.as_ptr(), old_c.as_ptr()) } as i32,
        || format!("pivot_root into `{}`", r.display()),
    )?;
    std::env::set_current_dir("/").context("chdir /")?;
    let old_in = CString::new("/.oldroot").expect("no NUL");
    // SAFETY: valid C string.
    check(
        unsafe { libc::umount2(old_in.as_ptr(), libc::MNT_DETACH) },
        || "detaching the old root".into(),
    )?;
    let _ = fs::remove_dir("/.oldroot");
    eprintln!("dts sim: `{}` is up at {}", info.name, info.address);
    supervise()
}

fn log_file(name: &str) -> Stdio {
    let p = Path::new("/var/log").join(name);
    match fs::OpenOptions::new().create(true).append(true).open(&p) {
        Ok(f) => f.into(),
        Err(_) => Stdio::null(),
    }
}

fn start(what: &str) -> Option<u32> {
    let mut cmd = match what {
        // In the foreground, logging to stderr; it drops to the sim's `avahi` user and
        // makes /run/avahi-daemon itself, as on a robot.
        "avahi-daemon" => {
            let mut c = Command::new(super::avahi::AVAHI_DAEMON);
            c.args(["-f", super::avahi::CONFIG]);
            c
        }
        "sshd" => {
            let mut c = Command::new(super::tools::SSHD);
            c.args(["-D", "-e", "-f", "/etc/ssh/sshd_config"]);
            c
        }
        _ => {
            let mut c = Command::new("/usr/local/bin/dt-agent");
            c.args([
                "daemon",
                "--ssh-host-key",
                "/etc/ssh/ssh_host_ed25519_key.pub",
            ])
            .env("DT_AGENT_ROOT", "/var/lib/dt-agent")
            .env("DT_AGENT_CONFIG", "/etc/dt-agent/robot.yaml");
            c
        }
    };
    let log = log_file(&format!("{what}.log"));
    cmd.env("PATH", PATH)
        .env("HOME", "/root")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    match cmd.spawn() {
        Ok(c) => Some(c.id()),
        Err(e) => {
            eprintln!("dts sim: cannot start {what}: {e}");
            None
        }
    }
}

/// How long an orphan pid 1 inherited stays a zombie before pid 1 collects it.
///
/// A shim that cannot be the child subreaper (an arm64 or armhf agent under QEMU user
/// emulation, which does not pass `PR_SET_CHILD_SUBREAPER` on before QEMU 8) loses its
/// container's init to pid 1 here; it reads the exit status from `/proc/PID/stat` while the
/// zombie is still there (it polls every 100 ms), so pid 1 leaves orphans a moment first.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Starts avahi, sshd and the agent, restarts them when they die, reaps every orphan (after
/// [`ORPHAN_GRACE`]). avahi comes first: the agent's own advert then finds `NAME.local`
/// already claimed by it, as on a robot where avahi starts at boot.
fn supervise() -> ! {
    let names = ["avahi-daemon", "sshd", "dt-agent"];
    let mut pids: Vec<Option<u32>> = names.iter().map(|n| start(n)).collect();
    let mut orphans: Vec<(i32, Instant)> = Vec::new();
    loop {
        // Ours first, by pid: collected and restarted at once.
        for (i, p) in pids.iter_mut().enumerate() {
            if let Some(pid) = *p {
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid status pointer.
                if unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) } <= 0 {
                    continue;
                }
                eprintln!(
                    "dts sim: {} (pid {pid}) ended ({status:#x}); restarting",
                    names[i]
                );
                std::thread::sleep(Duration::from_secs(1));
            }
            *p = start(names[i]);
        }
        // Then any other dead child, without collecting it yet (WNOWAIT): an orphan.
        // SAFETY: siginfo_t is plain data; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid siginfo pointer; P_ALL ignores the id.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid is set for a waitable child, zero when there is none.
        let dead = if r == 0 { unsafe { info.si_pid() } } else { 0 };
        if dead > 0
            && !pids.contains(&Some(dead as u32))
            && !orphans.iter().any(|(o, _)| *o == dead)
        {
            orphans.push((dead, Instant::now()));
        }
        orphans.retain(|(o, since)| {
            if since.elapsed() < ORPHAN_GRACE {
                return true;
            }
            let mut status = 0;
            // SAFETY: waitpid on a zombie child of ours.
            unsafe { libc::waitpid(*o, &mut status, libc::WNOHANG) };
            false
        });
        // waitid(P_ALL, WNOWAIT) keeps naming the same child while an orphan waits out its
        // grace, so this polls rather than blocks.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` runs and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is a live holder or pid 1 of the sim in `dir`.
pub fn is_our_process(pid: i32, dir: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let args = cmdline(pid);
    let d = dir.to_string_lossy();
    args.iter().any(|a| a == "__init" || a == "__pid1") && args.iter().any(|a| *a == d)
}

/// Every live holder and pid 1 of the sim in `dir`.
pub fn processes_of(dir: &Path) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| is_our_process(*p, dir))
        .collect()
}

/// Mount points in this process's namespace at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(&dir))
        .collect();
    // Deepest first.
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(oct) = std::str::from_utf8(&b[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `umount -l`.
pub fn umount_detach(p: &Path) -> std::io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn our_own_process_is_not_a_sim() {
        assert!(alive(std::process::id() as i32));
        assert!(!is_our_process(
            std::process::id() as i32,
            Path::new("/nonexistent")
        ));
    }
}
