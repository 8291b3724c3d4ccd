//! `RUN --mount=type=ssh`: a socket of our own that forwards every connection to the laptop's
//! SSH agent for the length of one RUN. A proxy rather than a bind of the agent's socket, so
//! that the mount's mode and owner apply to our socket and never to the user's.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::util::fs::{PathContext, PathError};

/// A listening proxy socket; dropping it stops accepting (open connections end on their own).
pub(super) struct AgentProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentProxy {
    /// Listens at `socket` (mode and owner set) and forwards to the agent at `agent`.
    pub(super) fn start(
        socket: &Path,
        agent: &Path,
        mode: u32,
        owner: (u32, u32),
    ) -> Result<AgentProxy, PathError> {
        // Fail now, with the agent's path, rather than in the RUN with a silent EOF.
        UnixStream::connect(agent).at("connect to the SSH agent at", agent)?;
        let listener = UnixListener::bind(socket).at("listen on", socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
            .at("chmod", socket)?;
        rustix::fs::chown(
            socket,
            Some(rustix::fs::Uid::from_raw(owner.0)),
            Some(rustix::fs::Gid::from_raw(owner.1)),
        )
        .map_err(io::Error::from)
        .at("chown", socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, agent) = (stop.clone(), agent.to_path_buf());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(upstream) = UnixStream::connect(&agent) else {
                    continue;
                };
                forward(client, upstream);
            }
        });
        Ok(AgentProxy {
            socket: socket.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

/// Copies both ways until either side closes.
fn forward(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pipe = |mut from: UnixStream, mut to: UnixStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    pipe(a, b2);
    pipe(b, a2);
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
