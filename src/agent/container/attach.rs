//! Starting a container with a client attached (`docker start -a`, and so the foreground
//! `docker run -i/-t`): the client's stdin (or /dev/null), stdout and stderr go to the shim
//! that starts it ([`super::shim`]), which copies the process's output to them as well as to
//! the log and, with a terminal, the client's keys to the terminal. The shim's answer carries
//! a duplicate of the terminal's master (the client resizes the terminal through it), and the
//! shim says the exit code on its socket once `exit.json` is written, so the client learns it
//! after all the output, even when `auto_remove` takes the container away at once.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::shim::ShimReply;
use super::{ContainerError, Manager};
use crate::agent::fdpass::LineReader;

/// How long the shim may take to finish (detach the network, delete the runtime's container)
/// after it reported the exit.
const SHIM_END: Duration = Duration::from_secs(10);

/// A client to attach at start.
pub struct Attach {
    /// Its stdin (or /dev/null), stdout and stderr.
    pub stdio: [OwnedFd; 3],
    /// Its terminal's size (rows, columns), for a container with a terminal.
    pub size: Option<(u16, u16)>,
}

/// What an attached start hands back.
pub struct Attached {
    /// A duplicate of the terminal's master, for its window size (with a terminal).
    pub master: Option<OwnedFd>,
    /// The shim's socket, on which the exit comes.
    pub(super) shim: LineReader,
}

impl Manager {
    /// Starts the created or exited container `name` with `attach`'s client. A container that
    /// cannot start is removed when it was to be removed at its exit (`run --rm`), as Docker
    /// does; otherwise it stays, with the error `ps` shows.
    pub fn start_attached(&self, name: &str, attach: Attach) -> Result<Attached, ContainerError> {
        let auto_remove = self.record(name)?.config.auto_remove;
        let started = {
            let _g = self.lock();
            self.start_locked(name, false, Some(attach))
        };
        match started {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(ContainerError::Start {
                name: name.to_string(),
                message: "the shim took no client".into(),
            }),
            Err(e) => {
                if auto_remove {
                    let _ = self.remove(name, true);
                }
                Err(e)
            }
        }
    }

    /// Waits for the attached container's exit and records it as the supervisor does (so a
    /// `ps` right after shows it exited, or gone with `auto_remove`); its exit code (`128 + n`
    /// for signal `n`).
    pub fn wait_attached(&self, name: &str, mut a: Attached) -> Result<i32, ContainerError> {
        drop(a.master.take());
        let mut code = None;
        while let Ok(Some(line)) = a.shim.read_line() {
            if let Ok(ShimReply::Exited { code: c }) = serde_json::from_slice(&line) {
                code = Some(c);
                break;
            }
        }
        self.wait_exit(name, SHIM_END);
        let recorded = match self.supervise_one(name) {
            Ok(_) | Err(ContainerError::NotFound(_)) => self.state(name).ok(),
            Err(e) => return Err(e),
        };
        code.or_else(|| recorded.and_then(|s| s.exit_code))
            .ok_or_else(|| ContainerError::Start {
                name: name.to_string(),
                message: "its shim ended without recording an exit code (see its shim.log)".into(),
            })
    }
}

/// Docker's exit code for a start that failed because the command could not run: 127 when
/// it was not found, 126 when it cannot be executed; `None` for other failures (125).
pub fn start_failure_code(e: &ContainerError) -> Option<i32> {
    let ContainerError::Start { message, .. } = e else {
        return None;
    };
    let lower = message.to_lowercase();
    if !lower.contains("exec:") && !lower.contains("exec format") {
        return None;
    }
    if lower.contains("not found") || lower.contains("no such file or directory") {
        Some(127)
    } else {
        Some(126)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_cannot_run_exits_as_dockers() {
        let start = |m: &str| ContainerError::Start {
            name: "c".into(),
            message: m.into(),
        };
        let missing = start(
            r#"runc create failed: unable to start container process: exec: "nosuch": executable file not found in $PATH"#,
        );
        assert_eq!(start_failure_code(&missing), Some(127));
        let dir = start(
            r#"runc create failed: unable to start container process: exec: "/etc": permission denied"#,
        );
        assert_eq!(start_failure_code(&dir), Some(126));
        assert_eq!(
            start_failure_code(&start("cgroup: no such file or directory")),
            None
        );
        assert_eq!(
            start_failure_code(&ContainerError::NotFound("c".into())),
            None
        );
    }
}
