//! Opening an exec channel: plainly (the wire protocol, provisioning's commands), or on a
//! pseudo-terminal the server allocates (`ssh -t`: `dts duckiebot exec -t`), whose window size
//! follows the laptop's through [`WindowChanger`].

use std::sync::Arc;

use russh::client::Msg;
use russh::{ChannelWriteHalf, Pty};

use super::{
    ByteCounters, Count, ExecChannel, ExecStdin, ExecStdout, ExitWaiter, Pump, STDOUT_PIPE_BYTES,
    Session, Stderr,
};
use crate::ssh::SshError;

/// The pseudo-terminal asked for with a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtyRequest {
    /// `TERM` (`xterm-256color`).
    pub term: String,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Tells the server the terminal's new size (`window-change`); its pty then signals the
/// command (SIGWINCH).
#[derive(Clone)]
pub struct WindowChanger {
    write: Arc<ChannelWriteHalf<Msg>>,
}

impl WindowChanger {
    /// Sends the new size. A channel that closed meanwhile makes this a no-op.
    pub async fn resize(&self, rows: u16, cols: u16) {
        let _ = self
            .write
            .window_change(u32::from(cols), u32::from(rows), 0, 0)
            .await;
    }
}

impl Session {
    /// Runs `command` with stderr going where `stderr` says.
    pub async fn exec_with(&self, command: &str, stderr: Stderr) -> Result<ExecChannel, SshError> {
        Ok(self.open(command, stderr, None).await?.0)
    }

    /// Runs `command` on a pseudo-terminal of the server's (stdout and stderr merge there),
    /// with a [`WindowChanger`] for its size.
    pub async fn exec_tty(
        &self,
        command: &str,
        pty: &PtyRequest,
    ) -> Result<(ExecChannel, WindowChanger), SshError> {
        let (channel, write) = self.open(command, Stderr::Collect, Some(pty)).await?;
        Ok((channel, WindowChanger { write }))
    }

    async fn open(
        &self,
        command: &str,
        stderr: Stderr,
        pty: Option<&PtyRequest>,
    ) -> Result<(ExecChannel, Arc<ChannelWriteHalf<Msg>>), SshError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.lost_or(e, "opening a channel"))?;
        if let Some(p) = pty {
            // Raw from birth, as the laptop's terminal is: bytes typed before the command
            // makes it raw are neither echoed nor cooked there (the container's terminal
            // does both).
            let raw = [
                (Pty::ECHO, 0),
                (Pty::ICANON, 0),
                (Pty::ISIG, 0),
                (Pty::IEXTEN, 0),
                (Pty::ICRNL, 0),
                (Pty::IXON, 0),
                (Pty::OPOST, 0),
                (Pty::CS8, 1),
            ];
            channel
                .request_pty(
                    true,
                    &p.term,
                    u32::from(p.cols),
                    u32::from(p.rows),
                    0,
                    0,
                    &raw,
                )
                .await
                .map_err(|e| self.lost_or(e, "asking for a terminal"))?;
        }
        // want_reply: a server that refuses to run it says so with `Failure`, seen by the pump.
        channel
            .exec(true, command)
            .await
            .map_err(|e| self.lost_or(e, "starting the command"))?;
        let (read, write) = channel.split();
        let count = Count {
            channel: ByteCounters::default(),
            session: self.counters.clone(),
        };
        let (pipe_rx, pipe_tx) = tokio::io::simplex(STDOUT_PIPE_BYTES);
        let (alive, pump_gone) = tokio::sync::oneshot::channel();
        let pump = Pump {
            _alive: alive,
            addr: self.addr.clone(),
            command: command.to_owned(),
            shared: self.shared.clone(),
            count: count.clone(),
        };
        let done = tokio::spawn(pump.run(read, pipe_tx, stderr));
        let exec = ExecChannel {
            stdin: ExecStdin {
                inner: Box::pin(write.make_writer()),
                count: count.clone(),
                pump_gone: Some(pump_gone),
            },
            stdout: ExecStdout { inner: pipe_rx },
            waiter: ExitWaiter {
                done,
                addr: self.addr.clone(),
            },
            counters: count.channel,
        };
        Ok((exec, Arc::new(write)))
    }
}
