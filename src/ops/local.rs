//! [`RobotApi`] for `dt-agent`'s own commands: the daemon's socket on this robot
//! (`agent::daemon::Client`). Its calls block, so the futures are ready when first polled
//! ([`super::verbs::now`] runs them).

use anyhow::Result;

use super::verbs::RobotApi;
use crate::agent::daemon::{Client, ClientError};
use crate::api::{Answer, LogLine, Request, decode};

impl RobotApi for Client {
    async fn request<T: Answer>(&mut self, req: &Request) -> Result<T> {
        let v = self.call(req)?;
        Ok(decode(v).map_err(|e| ClientError::Protocol(e.to_string()))?)
    }

    async fn stream_logs(
        &mut self,
        req: &Request,
        on_line: &mut (dyn FnMut(LogLine) + Send),
    ) -> Result<Option<i32>> {
        Ok(self.logs(req, &mut |l| on_line(l))?)
    }

    async fn request_with_notices<T: Answer>(
        &mut self,
        req: &Request,
        on_notice: &mut (dyn FnMut(String) + Send),
    ) -> Result<T> {
        let v = self.call_with_notices(req, &mut |n| on_notice(n))?;
        Ok(decode(v).map_err(|e| ClientError::Protocol(e.to_string()))?)
    }

    fn takes_notices(&self) -> bool {
        true
    }
}
