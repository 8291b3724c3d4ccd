//! The agent's daemon reached from inside a provision: `dt-agent serve --stdio` on the
//! provisioning session (as root, the way that session becomes root), speaking the wire
//! protocol, so the adoption deploys and inspects releases through the same [`RobotApi`] as
//! `dts duckiebot deploy`.

use anyhow::{Context, Result};

use super::super::AGENT_PATH;
use super::super::remote::{Robot, Root};
use crate::api::{Answer, LogLine, Request, decode};
use crate::ops::robot::guarded;
use crate::ops::verbs::RobotApi;
use crate::ssh::{ExecChannel, Session};
use crate::wire::client::Connection;

/// One protocol session with the agent over the provisioning session.
pub(super) struct AgentLink<'a> {
    session: &'a Session,
    conn: Connection<ExecChannel>,
}

impl<'a> AgentLink<'a> {
    /// Starts `dt-agent serve --stdio` as root.
    pub(super) async fn open(robot: &Robot<'a>) -> Result<AgentLink<'a>> {
        let command = match robot.root {
            Root::Already => format!("{AGENT_PATH} serve --stdio"),
            // The sudoers drop-in lets the login user run exactly this without a password.
            _ => format!("sudo -n {AGENT_PATH} serve --stdio"),
        };
        let channel = robot
            .session
            .exec(&command)
            .await
            .with_context(|| format!("starting `{command}`"))?;
        let (conn, _hello) = Connection::open(channel)
            .await
            .with_context(|| format!("`{command}` did not answer"))?;
        Ok(AgentLink {
            session: robot.session,
            conn,
        })
    }

    /// Ends the protocol session (errors ignored: the work is done).
    pub(super) async fn close(self) {
        let _ = self.conn.close().await;
    }
}

impl RobotApi for AgentLink<'_> {
    async fn request<T: Answer>(&mut self, req: &Request) -> Result<T> {
        let v = guarded(self.session, self.conn.daemon(req)).await?;
        decode(v).context("the robot's agent")
    }

    async fn stream_logs(
        &mut self,
        req: &Request,
        on_line: &mut (dyn FnMut(LogLine) + Send),
    ) -> Result<Option<i32>> {
        guarded(self.session, self.conn.daemon_logs(req, on_line)).await
    }
}
