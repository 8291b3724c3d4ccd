//! A container whose process has a terminal (`process.terminal: true`): `create
//! --console-socket`. The runtime makes the pseudo-terminal inside the container (its slave
//! the process's stdio and controlling terminal) and sends the master over a unix socket we
//! listen on (`SCM_RIGHTS`, with the terminal's name as the message); nothing else carries
//! the process's input and output.
//!
//! Why the master and not a relay: whoever holds it is the container's terminal. Writing
//! Ctrl-C to it makes the container's line discipline signal the foreground process group,
//! `TIOCSWINSZ` on it resizes the terminal and signals SIGWINCH, and reading it gives the
//! output, as `docker run -t` does. `run -t` is built on it: the container's shim keeps the
//! master and copies it to the log and to an attached client (`agent::container::shim`).

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

use super::{Runtime, RuntimeError, command_line, read_pid};
use crate::util::fs::PathError;

/// How long `create` may take to send the terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Runtime {
    /// Creates the bundle's container, whose process spec must ask for a terminal, without
    /// starting it (`create --console-socket BUNDLE/console.sock`): the runtime's messages go
    /// to `log`. Returns the container's init pid and the master of its terminal.
    pub fn create_with_terminal(
        &self,
        bundle: &Path,
        id: &str,
        log: &Path,
    ) -> Result<(u32, OwnedFd), RuntimeError> {
        let pid_file = self.prepare_create(bundle, log)?;
        let socket = bundle.join("console.sock");
        let path_error = |action, source| PathError {
            action,
            path: socket.clone(),
            source,
        };
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(path_error("remove", e).into());
            }
            _ => {}
        }
        let listener = UnixListener::bind(&socket).map_err(|e| path_error("listen on", e))?;
        // Non-blocking: a runtime that fails before it connects must not leave us waiting.
        listener
            .set_nonblocking(true)
            .map_err(|e| path_error("listen on", e))?;
        let mut cmd = self.base();
        self.with_log(&mut cmd, log);
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--console-socket")
            .arg(&socket)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id);
        let line = command_line(&cmd);
        let spawned = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = spawned.map_err(|source| RuntimeError::Spawn {
            command: line.clone(),
            source,
        })?;
        let master = accept_master(&listener, &mut child);
        drop(listener);
        let _ = std::fs::remove_file(&socket);
        let out = child
            .wait_with_output()
            .map_err(|source| RuntimeError::Spawn {
                command: line.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(self.failed(line, out.status, &out.stderr, log));
        }
        let master = master.map_err(|e| RuntimeError::Command {
            command: line.clone(),
            status: "success".into(),
            stderr: format!("no terminal came on `{}`: {e}", socket.display()),
        })?;
        Ok((read_pid(&pid_file, line)?, master))
    }
}

/// Waits for the runtime to connect to `listener` and send the terminal's master, while
/// `child` (the `create`) runs.
fn accept_master(listener: &UnixListener, child: &mut Child) -> io::Result<OwnedFd> {
    let deadline = Instant::now() + CONSOLE_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(CONSOLE_TIMEOUT))?;
                return receive_fd(&conn);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if child.try_wait()?.is_some() {
            return Err(io::Error::other("the runtime ended without connecting"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The one descriptor the runtime sends with the terminal's name.
fn receive_fd(conn: &UnixStream) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    loop {
        match recvmsg(
            conn,
            &mut [IoSliceMut::new(&mut name)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => {
                r?;
                break;
            }
        }
    }
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = msg {
            fds.extend(got);
        }
    }
    fds.into_iter()
        .next()
        .ok_or_else(|| io::Error::other("the message carried no descriptor"))
}
