//! `exec` between `dt-agent exec` and the daemon (`docker exec`'s create, start, attach and
//! resize in one request): the daemon runs `runc exec` with the container's own process spec
//! (`container::exec`), the client's terminal or streams attached.
//!
//! ```text
//! dt-agent exec ──{"op":"exec",…}\n + fds 0,1,2 (no tty)──▶ daemon: runc exec, stdio = those fds
//!               ◀─"started"\n (+ pty master with a tty)──   with a tty: a pty the daemon made,
//!               ◀─{"exit":N}\n───────────────────────────   runc its session leader, slave raw
//! ```
//!
//! Without a terminal the process's stdin, stdout and stderr *are* the client's (passed over
//! the socket, see [`super::fdpass`]): byte for byte, and stdin's end is the process's. Without
//! `-i` its stdin is /dev/null. With a terminal the daemon makes a pseudo-terminal whose slave
//! is runc's stdio and controlling terminal: runc makes the container's own terminal and
//! relays between the two, and resizes it when the slave's size changes (SIGWINCH). The
//! client gets the master, relays its own stdio to it in raw mode and copies its own window
//! size onto it at every SIGWINCH, so Ctrl-C reaches the container's line discipline as a
//! byte and interrupts the process in the foreground there.
//!
//! `attach` (`dt-agent start -a`, what `run -i/-t` in the foreground is) goes the same way but
//! starts the container's own process: its stdio reaches the container's shim, which copies
//! it (`container::attach`), and with a terminal the client gets a duplicate of the master
//! only to set its window size, since the shim reads the output for the log.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::container::attach::{Attach, start_failure_code};
use super::container::{ContainerError, Manager};
use super::fdpass::{LineReader, send_with_fds};
use crate::api::daemon::SOCKET;
use crate::api::{ContainerName, ExecReply, ExecSpec, RemoteError, Request};
use crate::runtime::RuntimeError;
use crate::util::tty;

/// How long the client keeps copying a terminal's output after the process ended (a
/// background job may hold the terminal open).
const DRAIN: Duration = Duration::from_secs(2);

fn reply_line(r: &ExecReply) -> Vec<u8> {
    let mut line = serde_json::to_vec(r).expect("a reply serialises");
    line.push(b'\n');
    line
}

/// The daemon's side of one `exec` request on `conn`, whose line came with `fds`.
pub fn serve(conn: &UnixStream, m: &Manager, spec: &ExecSpec, fds: Vec<OwnedFd>) -> io::Result<()> {
    let started = start(m, spec, fds);
    let (mut child, plan, master) = match started {
        Ok(s) => s,
        Err(e) => {
            let r = ExecReply::Error(RemoteError::from(&e));
            return send_with_fds(conn, &reply_line(&r), &[]);
        }
    };
    let passed: Vec<BorrowedFd<'_>> = master.iter().map(|f| f.as_fd()).collect();
    let sent = send_with_fds(conn, &reply_line(&ExecReply::Started), &passed);
    // Only the client holds the master now: when it goes, the terminal hangs up and runc
    // passes SIGHUP on to the process, as a closed `docker exec -it` does.
    drop(master);
    let status = child.wait();
    sent?;
    let code = match status {
        Ok(s) => crate::runtime::exec_outcome(s, &plan.log).0,
        Err(_) => 126,
    };
    send_with_fds(conn, &reply_line(&ExecReply::Exit(code)), &[])
}

/// The daemon's side of one `attach` request on `conn`, whose line came with `fds`: starts
/// the container with the client attached and answers its exit once it is recorded.
pub fn serve_attach(
    conn: &UnixStream,
    m: &Manager,
    name: &ContainerName,
    size: Option<(u16, u16)>,
    fds: Vec<OwnedFd>,
) -> io::Result<()> {
    let refuse = |e: &ContainerError| {
        let r = ExecReply::Error(RemoteError::from(e));
        send_with_fds(conn, &reply_line(&r), &[])
    };
    let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
        return refuse(&ContainerError::BadSpec(
            "attach needs the client's stdin, stdout and stderr passed with the request (as `dt-agent start -a` does)".into(),
        ));
    };
    let stderr = stdio[2].try_clone()?;
    let mut attached = match m.start_attached(name.as_str(), Attach { stdio, size }) {
        Ok(a) => a,
        // A command that cannot run is the process's failure, as Docker reports it: the
        // runtime's message on the client's stderr, then 127 or 126.
        Err(e) => match start_failure_code(&e) {
            Some(code) => {
                let _ = (&File::from(stderr)).write_all(format!("dt-agent: {e}\n").as_bytes());
                return send_with_fds(conn, &reply_line(&ExecReply::Exit(code)), &[]);
            }
            None => return refuse(&e),
        },
    };
    drop(stderr);
    let master = attached.master.take();
    let passed: Vec<BorrowedFd<'_>> = master.iter().map(|f| f.as_fd()).collect();
    let sent = send_with_fds(conn, &reply_line(&ExecReply::Started), &passed);
    drop(master);
    // Waited for whether or not the client is still there: the exit is recorded (and an
    // `auto_remove` container removed) either way.
    let code = m.wait_attached(name.as_str(), attached);
    sent?;
    let r = match code {
        Ok(c) => ExecReply::Exit(c),
        Err(e) => ExecReply::Error(RemoteError::from(&e)),
    };
    send_with_fds(conn, &reply_line(&r), &[])
}

/// Starts `runc exec` for `spec`: with the client's `fds` as its stdio, or on a new
/// pseudo-terminal whose master is returned.
fn start(
    m: &Manager,
    spec: &ExecSpec,
    fds: Vec<OwnedFd>,
) -> Result<(Child, super::container::exec::ExecPlan, Option<OwnedFd>), ContainerError> {
    let plan = m.exec_plan(spec)?;
    let mut cmd = m
        .runtime()
        .exec_command(&plan.rid, &plan.process, &plan.log);
    let mut master = None;
    if spec.tty {
        let (pty_master, slave) = open_pty().map_err(|e| io_error("open a pseudo-terminal", e))?;
        if let Some(size) = spec.size {
            let _ = tty::set_size(&pty_master, size);
        }
        // Raw from the start: a Ctrl-C typed before runc sets it raw must reach the
        // container's terminal, not signal runc.
        tty::make_raw(&slave).map_err(|e| io_error("set the pseudo-terminal raw", e))?;
        let dup = |f: &File| f.try_clone().map(Stdio::from);
        let dups = (dup(&slave), dup(&slave), dup(&slave));
        let (Ok(i), Ok(o), Ok(e)) = dups else {
            return Err(io_error(
                "duplicate the pseudo-terminal",
                io::Error::last_os_error(),
            ));
        };
        cmd.stdin(i).stdout(o).stderr(e);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
                Ok(())
            });
        }
        master = Some(pty_master);
    } else {
        let [stdin, stdout, stderr]: [OwnedFd; 3] = fds.try_into().map_err(|_| {
            ContainerError::BadSpec(
                "exec without a terminal needs the client's stdin, stdout and stderr passed with the request (as `dt-agent exec` does)".into(),
            )
        })?;
        cmd.stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
    }
    let child = cmd.spawn().map_err(|source| {
        ContainerError::Runtime(RuntimeError::Spawn {
            command: format!("{} exec", m.runtime().command().display()),
            source,
        })
    })?;
    Ok((child, plan, master))
}

fn io_error(action: &'static str, source: io::Error) -> ContainerError {
    ContainerError::Io(crate::util::fs::PathError {
        action,
        path: PathBuf::from("/dev/ptmx"),
        source,
    })
}

/// A new pseudo-terminal: (master, slave).
fn open_pty() -> io::Result<(OwnedFd, File)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?;
    Ok((master, slave))
}

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

/// Why `dt-agent exec` failed before the process ran.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No daemon listens.
    #[error("cannot reach dt-agent daemon at `{}`: {source}; is it running? (`systemctl start dt-agent`, or `dt-agent daemon`)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The daemon refused or failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Talking to the daemon, or relaying the terminal, failed.
    #[error("exec: {0}")]
    Io(#[from] io::Error),
    /// The daemon answered out of step.
    #[error("dt-agent daemon answered unexpectedly: {0}")]
    Protocol(String),
}

/// `dt-agent exec`: runs `spec` through the daemon of the agent at `root` with this process's
/// stdin, stdout and stderr, and returns the process's exit code.
pub fn run(root: &Path, spec: &ExecSpec) -> Result<i32, ExecError> {
    let path = root.join(SOCKET);
    let conn = UnixStream::connect(&path).map_err(|source| ExecError::Connect {
        path: path.clone(),
        source,
    })?;
    let mut line = serde_json::to_vec(&Request::Exec { spec: spec.clone() }).expect("serialises");
    line.push(b'\n');
    if spec.tty {
        send_with_fds(&conn, &line, &[])?;
    } else {
        let (null, own) = (File::open("/dev/null")?, io::stdin());
        let stdin = if spec.interactive {
            own.as_fd()
        } else {
            null.as_fd()
        };
        send_with_fds(
            &conn,
            &line,
            &[stdin, io::stdout().as_fd(), io::stderr().as_fd()],
        )?;
    }
    let mut reader = LineReader::new(conn.try_clone()?);
    match next_reply(&mut reader)? {
        ExecReply::Started => {}
        ExecReply::Error(e) if e.message().contains("unknown variant `exec`") => {
            return Err(RemoteError::new(
                crate::api::ErrorClass::Failed,
                "the dt-agent daemon running is older than this dt-agent and has no exec: restart it (`systemctl restart dt-agent`)",
            )
            .into());
        }
        ExecReply::Error(e) => return Err(e.into()),
        ExecReply::Exit(c) => return Ok(c),
    }
    if !spec.tty {
        return wait_exit(&mut reader);
    }
    let master = reader
        .take_fds()
        .pop()
        .ok_or_else(|| ExecError::Protocol("a terminal without its master".into()))?;
    relay(File::from(master), spec.interactive, true, &mut reader)
}

/// `dt-agent start -a [-i] NAME`: starts the created or exited container `name` through the
/// daemon of the agent at `root` with this process's stdout and stderr (and its stdin with
/// `interactive`) attached, and returns the container's exit code. With a terminal this one
/// goes raw while the container runs, and its size follows.
pub fn attach(root: &Path, name: &ContainerName, interactive: bool) -> Result<i32, ExecError> {
    let path = root.join(SOCKET);
    let conn = UnixStream::connect(&path).map_err(|source| ExecError::Connect {
        path: path.clone(),
        source,
    })?;
    let request = Request::Attach {
        name: name.clone(),
        size: tty::own_size(),
    };
    let mut line = serde_json::to_vec(&request).expect("serialises");
    line.push(b'\n');
    let (null, own) = (File::open("/dev/null")?, io::stdin());
    let stdin = if interactive {
        own.as_fd()
    } else {
        null.as_fd()
    };
    send_with_fds(
        &conn,
        &line,
        &[stdin, io::stdout().as_fd(), io::stderr().as_fd()],
    )?;
    drop(null);
    let mut reader = LineReader::new(conn.try_clone()?);
    match next_reply(&mut reader)? {
        ExecReply::Started => {}
        ExecReply::Error(e) if e.message().contains("unknown variant `attach`") => {
            return Err(RemoteError::new(
                crate::api::ErrorClass::Failed,
                "the dt-agent daemon running is older than this dt-agent and cannot attach: restart it (`systemctl restart dt-agent`)",
            )
            .into());
        }
        ExecReply::Error(e) => return Err(e.into()),
        ExecReply::Exit(c) => return Ok(c),
    }
    match reader.take_fds().pop() {
        None => wait_exit(&mut reader),
        Some(master) => relay(File::from(master), interactive, false, &mut reader),
    }
}

fn next_reply(reader: &mut LineReader) -> Result<ExecReply, ExecError> {
    let line = reader
        .read_line()?
        .ok_or_else(|| ExecError::Protocol("the connection closed".into()))?;
    serde_json::from_slice(&line).map_err(|e| ExecError::Protocol(e.to_string()))
}

fn wait_exit(reader: &mut LineReader) -> Result<i32, ExecError> {
    match next_reply(reader)? {
        ExecReply::Exit(c) => Ok(c),
        ExecReply::Error(e) => Err(e.into()),
        ExecReply::Started => Err(ExecError::Protocol("`started` twice".into())),
    }
}

/// Relays this process's terminal to `master` until the process exits: raw mode (restored on
/// the way out, and on SIGTERM/SIGHUP), window size at every SIGWINCH, and with `streams` the
/// bytes both ways (an attached start's shim copies them itself).
fn relay(
    master: File,
    interactive: bool,
    streams: bool,
    reader: &mut LineReader,
) -> Result<i32, ExecError> {
    let master = Arc::new(master);
    // SAFETY: stdin stays open for the life of the process.
    let stdin: BorrowedFd<'static> = unsafe { BorrowedFd::borrow_raw(0) };
    let raw = Arc::new(if interactive {
        tty::RawMode::enter(stdin)?
    } else {
        None
    });
    let signals = block_signals();
    {
        let (master, raw) = (Arc::clone(&master), Arc::clone(&raw));
        std::thread::spawn(move || watch_signals(signals, &master, &raw));
    }
    if let Some(size) = tty::own_size() {
        let _ = tty::set_size(&*master, size);
    }
    if interactive && streams {
        let master = Arc::clone(&master);
        std::thread::spawn(move || {
            let _ = copy(&mut io::stdin().lock(), &mut &*master);
        });
    }
    let out = streams.then(|| {
        let master = Arc::clone(&master);
        std::thread::spawn(move || {
            let _ = copy(&mut &*master, &mut io::stdout().lock());
        })
    });
    let code = wait_exit(reader);
    let deadline = Instant::now() + DRAIN;
    while out.as_ref().is_some_and(|o| !o.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(r) = raw.as_ref() {
        r.restore();
    }
    code
}

/// Copies until the end, an error (EIO: the terminal's last slave closed) or a failed write,
/// flushing as it goes: a terminal shows bytes as they come.
fn copy(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// Blocks SIGWINCH, SIGTERM, SIGHUP and SIGINT in this thread (and the threads it starts
/// after), so that [`watch_signals`] takes them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGWINCH, libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Copies the window size onto the master at every SIGWINCH; on SIGTERM, SIGHUP or SIGINT
/// restores the terminal and exits as the signal would (`128 + n`).
fn watch_signals(set: libc::sigset_t, master: &File, raw: &Option<tty::RawMode>) {
    loop {
        let mut sig = 0;
        // SAFETY: waits for one of the blocked signals of `set`.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        if sig == libc::SIGWINCH {
            if let Some(size) = tty::own_size() {
                let _ = tty::set_size(master, size);
            }
            continue;
        }
        if let Some(r) = raw {
            r.restore();
        }
        std::process::exit(128 + sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_keep_their_shape() {
        assert_eq!(reply_line(&ExecReply::Started), b"\"started\"\n");
        assert_eq!(reply_line(&ExecReply::Exit(7)), b"{\"exit\":7}\n");
        // What an older daemon answers to an unknown request parses as a refusal.
        let old = br#"{"error":{"message":"bad request: unknown variant `exec`","bad_input":true,"not_found":false}}"#;
        let r: ExecReply = serde_json::from_slice(old).unwrap();
        assert!(matches!(r, ExecReply::Error(e) if e.is_bad_input()));
    }
}
