//! The robot verbs (`ps`, `logs`, `start`, `stop`, `kill`, `rm`, `diff`, `volume`, `run`'s
//! create, `deploy`, `history`, `rollback`), written once for both binaries against
//! [`RobotApi`]: `dts duckiebot …` reaches the robot's daemon over SSH and the wire
//! (`ops::robot::RobotLink`), `dt-agent …` on the robot over its socket
//! (`agent::daemon::Client`, see `ops::local`). Each verb sends one `api::Request` and returns
//! its typed answer; `cli` only parses flags and prints.

use std::future::Future;

use anyhow::Result;

use crate::api::{
    Answer, Change, ContainerConfig, ContainerInfo, ContainerName, DeployOutcome, LogLine,
    ReleaseRecord, ReleaseSpec, Request, Signal, VolumeInfo, VolumeName,
};

/// A way to a robot's daemon.
pub trait RobotApi {
    /// Sends `req` and returns its typed answer.
    fn request<T: Answer>(&mut self, req: &Request) -> impl Future<Output = Result<T>>;

    /// Sends a `logs` request, passes each line to `on_line`, and returns the exit code the
    /// stream ended with.
    fn stream_logs(
        &mut self,
        req: &Request,
        on_line: &mut (dyn FnMut(LogLine) + Send),
    ) -> impl Future<Output = Result<Option<i32>>>;

    /// [`RobotApi::request`] for a request whose answer may follow notices (a `deploy` that
    /// waits for an update lock), passing each to `on_notice`. Without its own, notices are
    /// not asked for.
    fn request_with_notices<T: Answer>(
        &mut self,
        req: &Request,
        on_notice: &mut (dyn FnMut(String) + Send),
    ) -> impl Future<Output = Result<T>> {
        let _ = on_notice;
        self.request(req)
    }

    /// Whether [`RobotApi::request_with_notices`] passes notices on.
    fn takes_notices(&self) -> bool {
        false
    }
}

/// The containers (exited ones too with `all`).
pub async fn ps(r: &mut impl RobotApi, all: bool) -> Result<Vec<ContainerInfo>> {
    r.request(&Request::Ps { all }).await
}

/// A container's output: the last `tail` lines kept, then, with `follow`, new ones, until the
/// container exits when `until_exit`. Returns its exit code when it exited.
pub async fn logs(
    r: &mut impl RobotApi,
    name: &str,
    follow: bool,
    tail: Option<usize>,
    until_exit: bool,
    on_line: &mut (dyn FnMut(LogLine) + Send),
) -> Result<Option<i32>> {
    let window = LogWindow::default();
    logs_in(r, name, follow, tail, until_exit, &window, on_line).await
}

/// The instants `logs --since/--until` keep lines between, written as log lines stamp them
/// (`util::time::rfc3339_nanos`).
#[derive(Clone, Debug, Default)]
pub struct LogWindow {
    /// Lines stamped at or after this.
    pub since: Option<String>,
    /// Lines stamped at or before this; a follower stops once the clock passes it.
    pub until: Option<String>,
}

/// [`logs`] of the lines in `window` (`--tail` counts before the window, as Docker's does).
/// Lines are filtered here too: a robot before wire 2.5 ignores the window.
pub async fn logs_in(
    r: &mut impl RobotApi,
    name: &str,
    follow: bool,
    tail: Option<usize>,
    until_exit: bool,
    window: &LogWindow,
    on_line: &mut (dyn FnMut(LogLine) + Send),
) -> Result<Option<i32>> {
    let req = Request::Logs {
        name: ContainerName::new(name)?,
        follow,
        tail,
        until_exit,
        since: window.since.clone(),
        until: window.until.clone(),
    };
    let (since, until) = (window.since.as_deref(), window.until.as_deref());
    let mut keep = |l: LogLine| {
        if crate::api::container::log_line_in(&l, since, until) {
            on_line(l);
        }
    };
    r.stream_logs(&req, &mut keep).await
}

/// Creates a container, and starts it with `start` (a container that cannot start is removed).
pub async fn create(
    r: &mut impl RobotApi,
    config: ContainerConfig,
    start: bool,
) -> Result<ContainerInfo> {
    let req = Request::Create {
        config: Box::new(config),
        start,
    };
    r.request(&req).await
}

/// Starts a container.
pub async fn start(r: &mut impl RobotApi, name: &str) -> Result<ContainerInfo> {
    r.request(&Request::Start {
        name: ContainerName::new(name)?,
    })
    .await
}

/// Stops a container, killing it after `timeout` seconds.
pub async fn stop(
    r: &mut impl RobotApi,
    name: &str,
    timeout: Option<u64>,
) -> Result<ContainerInfo> {
    r.request(&Request::Stop {
        name: ContainerName::new(name)?,
        timeout,
    })
    .await
}

/// Signals a container.
pub async fn kill(r: &mut impl RobotApi, name: &str, signal: &str) -> Result<()> {
    r.request(&Request::Kill {
        name: ContainerName::new(name)?,
        signal: Signal::new(signal)?,
    })
    .await
}

/// Removes a container (killing it first with `force`).
pub async fn rm(r: &mut impl RobotApi, name: &str, force: bool) -> Result<()> {
    r.request(&Request::Rm {
        name: ContainerName::new(name)?,
        force,
    })
    .await
}

/// What a container changed.
pub async fn diff(r: &mut impl RobotApi, name: &str) -> Result<Vec<Change>> {
    r.request(&Request::Diff {
        name: ContainerName::new(name)?,
    })
    .await
}

/// The named volumes.
pub async fn volumes(r: &mut impl RobotApi) -> Result<Vec<VolumeInfo>> {
    r.request(&Request::VolumeLs).await
}

/// Creates a named volume.
pub async fn volume_create(r: &mut impl RobotApi, name: &str) -> Result<VolumeInfo> {
    r.request(&Request::VolumeCreate {
        name: VolumeName::new(name)?,
    })
    .await
}

/// Removes a named volume.
pub async fn volume_rm(r: &mut impl RobotApi, name: &str) -> Result<()> {
    r.request(&Request::VolumeRm {
        name: VolumeName::new(name)?,
    })
    .await
}

/// Applies a release; with `detach`, answers once every service runs.
pub async fn deploy(
    r: &mut impl RobotApi,
    spec: &ReleaseSpec,
    detach: bool,
) -> Result<DeployOutcome> {
    deploy_with(r, spec, detach, false, &mut |_| {}).await
}

/// [`deploy`] that tells `on_notice` why it waits (a container holds its update lock) and,
/// with `force`, does not wait.
pub async fn deploy_with(
    r: &mut impl RobotApi,
    spec: &ReleaseSpec,
    detach: bool,
    force: bool,
    on_notice: &mut (dyn FnMut(String) + Send),
) -> Result<DeployOutcome> {
    let req = Request::Deploy {
        spec: Box::new(spec.clone()),
        detach,
        force,
        notices: r.takes_notices(),
    };
    r.request_with_notices(&req, on_notice).await
}

/// Every release, oldest first.
pub async fn history(r: &mut impl RobotApi) -> Result<Vec<ReleaseRecord>> {
    r.request(&Request::History).await
}

/// Switches back to the previous release, or to `to`.
pub async fn rollback(r: &mut impl RobotApi, to: Option<u64>) -> Result<DeployOutcome> {
    r.request(&Request::Rollback { to }).await
}

/// Runs `work` (a verb against a robot whose answers never wait, such as the local daemon's
/// blocking client) to its end on this thread.
pub fn now<T>(work: impl Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = work.as_mut().poll(&mut cx) {
            return v;
        }
        // Not reached with a blocking client; a pending future is polled again.
        std::thread::yield_now();
    }
}
