//! The laptop's end: a [`Connection`] over any `AsyncRead + AsyncWrite` (the SSH channel of
//! `dt-agent serve --stdio`, or a child's stdin/stdout in tests): the hello, the relayed daemon
//! requests, and [`Connection::transfer`], which is plan-then-execute: [`plan`] asks the robot
//! what it has and decides what to send ([`TransferPlan`], public and serialisable, what
//! `deploy --dry-run` prints), `send` sends exactly that.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{Frame, Kind, read_frame_async, write_frame_async};
use super::stream::{Adapt, Compressor};
use super::{ClientHello, FromRobot, MAJOR, MINOR, ToRobot, WireError, check_version};
use crate::api::{HeldImage, LogLine, Request, ResolveQuery};
use crate::oci::Digest;
use crate::progress::Reporter;
use crate::store::Store;

mod hub;
mod plan;
mod send;
mod space;

pub use super::RobotHello;
pub use hub::{HUB_MAX_RATIO, HUB_MIN_DIRECT, direct_estimate, older_robot_note, via_hub};
pub use plan::{
    Detail, LayerHow, Objects, PlannedDocument, PlannedImage, PlannedLayer, TransferPlan,
};

/// Uncompressed bytes per object batch (one zstd stream; committed together on the robot).
const BATCH_BYTES: u64 = 4 << 20;
/// Objects per batch.
const BATCH_OBJECTS: usize = 4096;
/// zstd level of `--patch-from` deltas of large changed files.
const PATCH_LEVEL: i32 = 3;
/// zstd level of tar-splits and documents (small; deltas are long matches any level finds).
const META_LEVEL: i32 = 9;
/// Where the object stream's level starts, and how high it may adapt.
const START_LEVEL: i32 = 9;
const MAX_LEVEL: i32 = 19;
/// The object stream's window: 128 MiB at most (the robot's decoder holds one window).
const MAX_STREAM_WINDOW_LOG: u32 = 27;

/// The object stream's level when `DTS_WIRE_LEVEL` fixes it.
fn fixed_level() -> Option<i32> {
    std::env::var("DTS_WIRE_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|l| (1..=22).contains(l))
}

/// What a transfer did. Byte counts are the connection's totals (hello included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransferReport {
    /// Images transferred (named on the robot).
    pub images: usize,
    /// Layers of those images.
    pub layers_total: usize,
    /// Layers the robot had.
    pub layers_skipped: usize,
    /// Layers sent.
    pub layers_sent: usize,
    /// Objects sent (whole or as patches).
    pub objects_sent: u64,
    /// Their uncompressed bytes.
    pub object_bytes: u64,
    /// Objects sent as patches.
    pub patches_sent: u64,
    /// Tar-splits sent as deltas against a base layer.
    pub split_deltas: usize,
    /// Manifests, indexes and configs sent.
    pub documents_sent: usize,
    /// Bytes of compressed tar-splits sent.
    pub split_bytes: u64,
    /// Bytes of the content queries (both ways).
    pub query_bytes: u64,
    /// Snapshots the robot built.
    pub snapshots_built: usize,
    /// Layers the robot fetched from a lab hub itself (`deploy --via`); not in `layers_sent`.
    #[serde(skip_serializing_if = "is_zero")]
    pub hub_layers: usize,
    /// Blob bytes it downloaded from the hub (not on this channel).
    #[serde(skip_serializing_if = "is_zero")]
    pub hub_bytes: u64,
    /// Bytes written to the channel.
    pub bytes_sent: u64,
    /// Bytes read from the channel.
    pub bytes_received: u64,
    /// Wall time.
    pub duration_ms: u64,
}

/// An open session with a robot's agent.
pub struct Connection<IO> {
    io: IO,
    hello: RobotHello,
    sent: u64,
    received: u64,
    cache: PathBuf,
    batch_bytes: u64,
    batch_objects: usize,
    adapt: Adapt,
    window_log: u32,
    compressor: Option<Compressor>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Says hello and reads the robot's: a different major version is
    /// [`WireError::Version`].
    pub async fn open(io: IO) -> Result<(Connection<IO>, RobotHello), WireError> {
        let placeholder = RobotHello {
            platform: crate::oci::Platform::host(),
            hostname: String::new(),
            agent_version: String::new(),
            free_bytes: 0,
            images: Vec::new(),
            has_objects: true,
            protocol: String::new(),
            window_log_max: super::LEGACY_WINDOW_LOG,
            warnings: Vec::new(),
            roles: None,
        };
        let mut c = Connection {
            io,
            hello: placeholder,
            sent: 0,
            received: 0,
            cache: crate::paths::dts_home().join("cache/layers"),
            batch_bytes: BATCH_BYTES,
            batch_objects: BATCH_OBJECTS,
            adapt: fixed_level().map_or(Adapt::new(START_LEVEL, MAX_LEVEL), Adapt::fixed),
            window_log: MAX_STREAM_WINDOW_LOG,
            compressor: None,
        };
        let hello = Frame::hello(
            MAJOR,
            MINOR,
            &ClientHello {
                client: format!("dts {}", env!("CARGO_PKG_VERSION")),
            },
        );
        c.write(&[hello]).await?;
        let Some(first) = c.read().await? else {
            return Err(WireError::Closed);
        };
        if first.kind != Kind::Hello {
            // An agent that failed before its hello says why.
            if let Ok(FromRobot::Error { message, bad_input }) = first.message() {
                return Err(WireError::Robot { message, bad_input });
            }
        }
        let (major, minor, body) = first.parse_hello()?;
        check_version(major, minor)?;
        let mut hello: RobotHello = serde_json::from_slice(body)
            .map_err(|e| WireError::Protocol(format!("the robot's hello: {e}")))?;
        hello.protocol = format!("{major}.{minor}");
        c.hello = hello.clone();
        Ok((c, hello))
    }

    /// The robot's hello.
    pub fn hello(&self) -> &RobotHello {
        &self.hello
    }

    /// (bytes sent, bytes received) on the channel so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// Uses `dir` for the per-layer file index cache (default `$DTS_HOME/cache/layers`).
    pub fn set_cache_dir(&mut self, dir: PathBuf) {
        self.cache = dir;
    }

    /// Cuts object batches (one commit on the robot each; the object stream is flushed at
    /// each) at `bytes` of content or `objects` objects, whichever comes first (defaults:
    /// 4 MiB, 4096). Smaller batches lose less to a cut link and compress a little worse.
    pub fn set_batch_limits(&mut self, bytes: u64, objects: usize) {
        self.batch_bytes = bytes.max(1);
        self.batch_objects = objects.max(1);
    }

    /// Fixes the object stream's zstd level (otherwise it starts at 9 and adapts to the
    /// link; `DTS_WIRE_LEVEL` fixes it too). Takes effect before the first object is sent.
    pub fn set_level(&mut self, level: i32) {
        self.adapt = Adapt::fixed(level.clamp(1, 22));
    }

    async fn write(&mut self, frames: &[Frame]) -> Result<(), WireError> {
        for f in frames {
            let r = write_frame_async(&mut self.io, f).await;
            if let Err(e) = r {
                return Err(self.explain(e).await);
            }
            self.sent += 5 + f.payload.len() as u64;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        if let Err(e) = self.io.flush().await {
            return Err(self.explain(WireError::Io(e)).await);
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<Option<Frame>, WireError> {
        let f = read_frame_async(&mut self.io).await?;
        if let Some(f) = &f {
            self.received += 5 + f.payload.len() as u64;
        }
        Ok(f)
    }

    /// A write failed: the robot may have said why before it stopped reading.
    async fn explain(&mut self, e: WireError) -> WireError {
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), self.read()).await;
        if let Ok(Ok(Some(f))) = read
            && let Ok(FromRobot::Error { message, bad_input }) = f.message()
        {
            return WireError::Robot { message, bad_input };
        }
        e
    }

    /// Sends `msg` and reads the answer; a robot `error` is [`WireError::Robot`].
    async fn call(&mut self, msg: &ToRobot) -> Result<FromRobot, WireError> {
        self.write(&[Frame::control(msg)]).await?;
        self.flush().await?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<FromRobot, WireError> {
        let Some(f) = self.read().await? else {
            return Err(WireError::Closed);
        };
        match f.message::<FromRobot>()? {
            FromRobot::Error { message, bad_input } => Err(WireError::Robot { message, bad_input }),
            m => Ok(m),
        }
    }

    /// What `names` mean in the robot's store, for its platform (one round trip): for each,
    /// the image the robot holds whole under that name, or `None`. A robot older than
    /// protocol 2.3 cannot say, and is asked nothing: every answer is `None`, and the deploy
    /// ships or pulls those images as it did before.
    pub async fn resolve_on_robot(
        &mut self,
        names: &[String],
    ) -> Result<Vec<Option<HeldImage>>, WireError> {
        if names.is_empty() || !self.hello.resolves() {
            return Ok(vec![None; names.len()]);
        }
        let images = names
            .iter()
            .map(|n| ResolveQuery {
                name: n.clone(),
                platform: self.hello.platform.clone(),
            })
            .collect();
        match self.call(&ToRobot::Resolve { images }).await? {
            FromRobot::Resolved { images } if images.len() == names.len() => Ok(images),
            other => Err(unexpected(&other)),
        }
    }

    /// Relays a request to the robot's daemon and returns its answer.
    pub async fn daemon(&mut self, request: &Request) -> Result<Value, WireError> {
        let msg = ToRobot::Daemon {
            request: request.clone(),
        };
        match self.call(&msg).await? {
            FromRobot::DaemonOk { value } => Ok(value),
            FromRobot::DaemonError { error } => Err(WireError::Daemon(error)),
            other => Err(unexpected(&other)),
        }
    }

    /// Relays a request whose answer may follow notices (a `deploy` with `notices`), passing
    /// each to `on_notice`.
    pub async fn daemon_with_notices(
        &mut self,
        request: &Request,
        on_notice: &mut (dyn FnMut(String) + Send),
    ) -> Result<Value, WireError> {
        let msg = ToRobot::Daemon {
            request: request.clone(),
        };
        let mut next = self.call(&msg).await?;
        loop {
            match next {
                FromRobot::DaemonNotice { message } => on_notice(message),
                FromRobot::DaemonOk { value } => return Ok(value),
                FromRobot::DaemonError { error } => return Err(WireError::Daemon(error)),
                other => return Err(unexpected(&other)),
            }
            next = self.answer().await?;
        }
    }

    /// Relays a streaming request (`logs`), passing each line to `on_line`; returns the exit
    /// code the stream ended with.
    pub async fn daemon_logs(
        &mut self,
        request: &Request,
        on_line: &mut (dyn FnMut(LogLine) + Send),
    ) -> Result<Option<i32>, WireError> {
        let msg = ToRobot::Daemon {
            request: request.clone(),
        };
        let mut next = self.call(&msg).await?;
        loop {
            match next {
                FromRobot::DaemonLine { line } => on_line(line),
                FromRobot::DaemonEnd { exit_code } => return Ok(exit_code),
                FromRobot::DaemonError { error } => return Err(WireError::Daemon(error)),
                other => return Err(unexpected(&other)),
            }
            next = self.answer().await?;
        }
    }

    /// Ends the session politely.
    pub async fn close(mut self) -> Result<(), WireError> {
        self.write(&[Frame::control(&ToRobot::Bye)]).await?;
        self.flush().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// Gives the robot the images `images` (name, manifest or index digest in `store`; an
    /// index is resolved to the robot's platform), sending only what it lacks, and names them:
    /// [`Connection::plan_transfer`] then [`Connection::execute`].
    pub async fn transfer(
        &mut self,
        store: &Store,
        images: &[(String, Digest)],
        reporter: &dyn Reporter,
    ) -> Result<TransferReport, WireError> {
        self.transfer_with_held(store, images, &[], reporter).await
    }

    /// [`Connection::transfer`] of `images` plus `held`, images the robot's own store holds
    /// ([`Connection::plan_with_held`]): those send no content, at most their names. (Through
    /// a lab hub, `ops::hub::Via::transfer` composes the same steps with the robot's fetches.)
    pub async fn transfer_with_held(
        &mut self,
        store: &Store,
        images: &[(String, Digest)],
        held: &[HeldImage],
        reporter: &dyn Reporter,
    ) -> Result<TransferReport, WireError> {
        let started = Instant::now();
        let plan = self
            .plan_with_held(store, images, held, Detail::Layers)
            .await?;
        self.check_space(store, &plan)?;
        let mut report = self.execute(store, &plan, reporter).await?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn unexpected(m: &FromRobot) -> WireError {
    let s = serde_json::to_string(m).unwrap_or_default();
    WireError::Protocol(format!(
        "an unexpected answer: {}",
        s.chars().take(200).collect::<String>()
    ))
}
