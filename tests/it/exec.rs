//! `dts duckiebot exec` and `logs` against a virtual Duckiebot (as root): a busybox container
//! run with `dts duckiebot run -d`, then commands in it. Without `-t` the streams are separate
//! and byte-exact (10 MB through `exec -i cat`), the exit code is the process's (126/127 when
//! it cannot run), and the process has the container's limits; with `-it` under a real
//! pseudo-terminal an interactive shell sees the window size and its change, Ctrl-C
//! interrupts a `sleep`, `exit 7` exits 7 and the terminal gets its settings back. The
//! fixtures and the terminal's drive are `run -i/-t`'s too (`run_tty`).

use crate::support::{self, TestContext};

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::termios;

/// A sim with container `box` (busybox with its applets, sleeping) running on it.
fn robot_with_a_box() -> Option<TestContext> {
    let w = robot_with_the_box_image()?;
    w.ok(&[
        "duckiebot",
        "run",
        &w.name,
        "-d",
        "--name",
        "box",
        "exec/box:1",
    ]);
    Some(w)
}

/// A sim, and image `exec/box:1` (busybox with its applets; sleeps) in the laptop's store.
pub(crate) fn robot_with_the_box_image() -> Option<TestContext> {
    if !support::can_make_virtual_robot() {
        return None;
    }
    let bb = support::require_busybox("amd64")?;
    let w = TestContext::new();
    let ctx = w.work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(&bb, ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN [\"/bin/mkdir\", \"-p\", \"/tmp\", \"/etc\"]\n\
         CMD [\"/bin/sleep\", \"3600\"]\n",
    )
    .unwrap();
    w.ok(&[
        "devel",
        "build",
        "-C",
        ctx.to_str().unwrap(),
        "-t",
        "exec/box:1",
    ]);
    w.ok(&["sim", "up", &w.name]);
    Some(w)
}

/// `dts duckiebot exec ROBOT ARGS…` with `input` on stdin: (code, stdout, stderr).
fn exec(w: &TestContext, args: &[&str], input: &[u8]) -> (Option<i32>, Vec<u8>, String) {
    let mut all = vec!["duckiebot", "exec", w.name.as_str()];
    all.extend_from_slice(args);
    dts_with_input(w, &all, input)
}

/// `dts ARGS…` with `input` on stdin (written while it runs): (code, stdout, stderr).
pub(crate) fn dts_with_input(
    w: &TestContext,
    all: &[&str],
    input: &[u8],
) -> (Option<i32>, Vec<u8>, String) {
    let mut child = w
        .dts_command(all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // `exec` without -i never reads it: a broken pipe is expected then.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn noise(bytes: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn exec_without_a_terminal_is_byte_exact_and_exits_as_the_process() {
    let Some(w) = robot_with_a_box() else { return };

    // Separate streams, the process's code.
    let (code, out, err) = exec(
        &w,
        &["box", "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
        b"",
    );
    assert_eq!(code, Some(7), "{err}");
    assert_eq!(out, b"out\n");
    assert!(err.contains("err\n"), "{err}");

    // 10 MB of binary through `exec -i cat`, and back unchanged; stdin's end ends cat.
    let data = noise(10 << 20);
    let (code, out, err) = exec(&w, &["-i", "box", "--", "cat"], &data);
    assert_eq!(code, Some(0), "{err}");
    assert!(out == data, "{} bytes back of {}", out.len(), data.len());

    // Without -i the process reads nothing.
    let (code, out, err) = exec(&w, &["box", "--", "cat"], b"ignored");
    assert_eq!((code, out.as_slice()), (Some(0), &b""[..]), "{err}");

    // Docker's codes for what cannot run.
    let (code, _, err) = exec(&w, &["box", "--", "no-such-command"], b"");
    assert_eq!(code, Some(127), "{err}");
    assert!(
        err.contains("no-such-command"),
        "the runtime's message: {err}"
    );
    let (code, _, err) = exec(&w, &["box", "--", "/etc"], b"");
    assert_eq!(code, Some(126), "{err}");

    // User, environment and working directory as `docker exec -u -e -w`.
    let (code, out, err) = exec(
        &w,
        &[
            "-u",
            "1000:1000",
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "box",
            "--",
            "sh",
            "-c",
            "id -u; id -g; echo $FOO; pwd",
        ],
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "1000\n1000\nbar\n/tmp\n");

    // The container's limits: its bounding set, its seccomp filter, no_new_privileges.
    let status = |pid: &str| {
        let (code, out, err) = exec(
            &w,
            &["box", "--", "cat", &format!("/proc/{pid}/status")],
            b"",
        );
        assert_eq!(code, Some(0), "{err}");
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| {
                l.starts_with("CapBnd") || l.starts_with("Seccomp:") || l.starts_with("NoNewPrivs")
            })
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let own = status("self");
    assert_eq!(
        own,
        status("1"),
        "an exec'd process has its container's limits"
    );
    assert!(
        own.iter()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "{own:?}"
    );
    assert!(
        !own.iter().any(|l| l.contains("000001ffffffffff")),
        "{own:?}"
    );

    // --privileged is refused before anything runs; a stopped container is an error.
    let (code, _, err) = exec(&w, &["--privileged", "box", "--", "true"], b"");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--privileged"), "{err}");
    // What only the robot finds wrong is bad input there too.
    let (code, _, err) = exec(&w, &["-e", "NOEQUALS", "box", "--", "true"], b"");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("NOEQUALS"), "{err}");
    let (code, _, err) = exec(&w, &["nobox", "--", "true"], b"");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no container `nobox`"), "{err}");
    w.ok(&["duckiebot", "stop", &w.name, "box", "-t", "1"]);
    let (code, _, err) = exec(&w, &["box", "--", "true"], b"");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exec needs a running container"), "{err}");
}

/// A pseudo-terminal for `dts` to run on: (master, slave).
pub(crate) fn open_pty(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    set_size(&master, rows, cols);
    (std::fs::File::from(master), slave)
}

pub(crate) fn set_size(fd: impl AsFd, rows: u16, cols: u16) {
    let size = termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    termios::tcsetwinsize(fd, size).unwrap();
}

/// What `dts` wrote to the terminal so far, read on a thread.
pub(crate) struct Screen {
    text: Arc<Mutex<Vec<u8>>>,
}

impl Screen {
    pub(crate) fn watch(master: &std::fs::File) -> Screen {
        let text = Arc::new(Mutex::new(Vec::new()));
        let (mut m, t) = (master.try_clone().unwrap(), Arc::clone(&text));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    return;
                }
                t.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Screen { text }
    }

    pub(crate) fn wait_for(&self, needle: &str, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned();
            if text.contains(needle) {
                return;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                panic!("no `{needle}` on the terminal; it shows:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn exec_it_is_an_interactive_terminal() {
    let Some(w) = robot_with_a_box() else { return };
    let status = drive_a_shell(
        &w,
        &["duckiebot", "exec", &w.name, "-it", "box", "--", "sh"],
        &[],
    );
    assert_eq!(status.code(), Some(7));
}

/// Runs `dts ARGS` (an interactive shell) on a pseudo-terminal of its own and drives it: the
/// size it started with and a change of it, Ctrl-C interrupting a `sleep`, each of `lines`
/// typed, then `exit 7`; checks the terminal gets its settings back and returns how `dts`
/// exited.
pub(crate) fn drive_a_shell(
    w: &TestContext,
    args: &[&str],
    lines: &[&str],
) -> std::process::ExitStatus {
    let (mut master, slave) = open_pty(33, 101);
    let before = termios::tcgetattr(&slave).unwrap();
    let mut cmd: Command = w.dts_command(args);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .env("TERM", "xterm");
    // SAFETY: only system calls between fork and exec: `dts` leads a session whose
    // controlling terminal is the slave, as a shell in a terminal would start it.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let screen = Screen::watch(&master);
    let mut type_in = |s: &str| master.write_all(s.as_bytes()).unwrap();

    // The size it started with, then a change (SIGWINCH to `dts`, window-change over SSH).
    type_in("stty size\r");
    screen.wait_for("33 101", &mut child);
    set_size(&slave, 40, 120);
    // The new size reaches the shell's terminal asynchronously: ask until it shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        type_in("stty size\r");
        std::thread::sleep(Duration::from_millis(300));
        let text = String::from_utf8_lossy(&screen.text.lock().unwrap()).into_owned();
        if text.contains("40 120") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new size never arrived:\n{text}"
        );
    }

    // Ctrl-C travels as a byte and interrupts the sleep in the container's foreground (the
    // shell drops the rest of the line, as it does at a keyboard).
    type_in("sleep 30\r");
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    type_in("\x03");
    type_in("echo rc=$?\r");
    screen.wait_for("rc=130", &mut child);
    assert!(started.elapsed() < Duration::from_secs(20));
    for l in lines {
        type_in(&format!("{l}\r"));
    }

    type_in("exit 7\r");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "`exit 7` did not end dts");
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = termios::tcgetattr(&slave).unwrap();
    assert_eq!(
        after.local_modes, before.local_modes,
        "the terminal's settings came back"
    );
    assert_eq!(after.input_modes, before.input_modes);
    let _ = master.as_raw_fd();
    status
}

#[test]
fn logs_take_since_until_timestamps_and_tail() {
    let Some(w) = robot_with_a_box() else { return };
    w.ok(&[
        "duckiebot",
        "run",
        &w.name,
        "-d",
        "--name",
        "talker",
        "exec/box:1",
        "sh",
        "-c",
        // `three` a second after `two`: `--until <two's time>` must not catch it, and two
        // lines read in the same instant from stdout and stderr would share a timestamp.
        "echo one; sleep 2; echo two; sleep 1; echo three >&2; sleep 3600",
    ]);
    let logs = |args: &[&str]| {
        let mut all = vec!["duckiebot", "logs", w.name.as_str()];
        all.extend_from_slice(args);
        let out = w.dts(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logs(&["talker"]).1.contains("three") {
        assert!(
            Instant::now() < deadline,
            "the container never wrote its lines"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (out, err) = logs(&["talker", "-t"]);
    let first = out.lines().next().unwrap();
    let (stamp, text) = first.split_once(' ').unwrap();
    assert_eq!(text, "one");
    assert_eq!(stamp.len(), 30, "RFC 3339 with nine digits: {stamp}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{stamp}"
    );
    assert!(err.trim_end().ends_with(" three"), "{err}");
    let two_at = out
        .lines()
        .nth(1)
        .unwrap()
        .split_once(' ')
        .unwrap()
        .0
        .to_string();

    // --since keeps lines at or after the instant, --until at or before it.
    let (out, _) = logs(&["talker", "--since", &two_at]);
    assert_eq!(out, "two\n");
    let (out, err) = logs(&["talker", "--until", &two_at]);
    assert_eq!((out.as_str(), err.as_str()), ("one\ntwo\n", ""));
    let (out, _) = logs(&["talker", "--since", "1h"]);
    assert_eq!(out, "one\ntwo\n");
    let (out, _) = logs(&["talker", "--until", "1h"]);
    assert_eq!(out, "");
    // --tail counts lines kept, before the window; `all` is every line.
    let (out, err) = logs(&["talker", "--tail", "1"]);
    assert_eq!((out.as_str(), err.as_str()), ("", "three\n"));
    let (out, _) = logs(&["talker", "--tail", "all"]);
    assert_eq!(out, "one\ntwo\n");
    // A follower with --until stops when the clock passes it.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3;
    let started = Instant::now();
    let (out, _) = logs(&["talker", "-f", "--until", &soon.to_string()]);
    assert_eq!(out, "one\ntwo\n");
    assert!(started.elapsed() < Duration::from_secs(20));
    let out = w.dts(&[
        "duckiebot",
        "logs",
        &w.name,
        "talker",
        "--since",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
