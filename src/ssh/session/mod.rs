//! The russh client: connecting (with the host key checked in `check_server_key`, before any
//! authentication or channel byte), authenticating, and exec channels.
//!
//! An exec channel is split in two: the caller writes remote stdin through russh's writer, and a
//! pump task owns the channel's incoming side, feeding remote stdout into an in-memory pipe the
//! caller reads, collecting or forwarding stderr, and keeping the exit status for `wait()`. The
//! pump is needed because russh delivers stdout, stderr and the exit status as one message
//! stream; reading only stdout would lose the rest.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, Disconnect};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::task::JoinHandle;

use crate::ssh::config::{self, HostConfig, Resolved};
use crate::ssh::known_hosts::{self, HostKeyStatus, KnownHosts};
use crate::ssh::target::host_port;
use crate::ssh::{SshError, SshOptions, Target};

mod auth;
mod open;

pub use open::{PtyRequest, WindowChanger};

use auth::authenticate;

/// Bytes buffered between the pump and a caller reading remote stdout. Enough to keep the
/// link busy while the caller works on the previous chunk; russh's own window does the rest.
const STDOUT_PIPE_BYTES: usize = 256 * 1024;
/// Collected stderr keeps at most this much, the tail: the end of a log holds the error.
const STDERR_KEEP_BYTES: usize = 1024 * 1024;
/// Keys tried when neither `-i` nor the config names one, in OpenSSH's order (DSA is gone).
const DEFAULT_KEYS: &[&str] = &["id_ed25519", "id_ecdsa", "id_rsa"];

/// Bytes written to and read from channels, counted at the channel (after the caller's own
/// compression, before SSH's framing): what `deploy --json` reports as `bytes_sent` and
/// `bytes_received`. Stderr is not counted: it is not protocol. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct ByteCounters {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl ByteCounters {
    /// Bytes written to remote stdin so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Bytes of remote stdout received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Adds to a channel's counters and its session's at once.
#[derive(Clone)]
struct Count {
    channel: ByteCounters,
    session: ByteCounters,
}

impl Count {
    fn sent(&self, n: usize) {
        self.channel.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.session.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    fn received(&self, n: usize) {
        self.channel.received.fetch_add(n as u64, Ordering::Relaxed);
        self.session.received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u32),
    /// It was killed by a signal.
    Signal {
        /// Signal name without `SIG`, e.g. `KILL`.
        name: String,
        /// Whether it dumped core.
        core_dumped: bool,
        /// The server's message, often empty.
        message: String,
    },
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
    /// The exit code, if it exited rather than being killed.
    pub fn code(&self) -> Option<u32> {
        match self {
            ExitStatus::Code(c) => Some(*c),
            ExitStatus::Signal { .. } => None,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal { name, .. } => write!(f, "killed by SIG{name}"),
        }
    }
}

/// What a finished exec channel leaves: its status and, with [`Stderr::Collect`], its stderr.
#[derive(Debug, Clone)]
pub struct Exit {
    /// How it ended.
    pub status: ExitStatus,
    /// Collected stderr (its last [`STDERR_KEEP_BYTES`]); empty when forwarded.
    pub stderr: Vec<u8>,
}

/// Result of [`Session::run`].
#[derive(Debug, Clone)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// All of stdout.
    pub stdout: Vec<u8>,
    /// Stderr (its last MiB).
    pub stderr: Vec<u8>,
}

/// Where remote stderr goes.
pub enum Stderr {
    /// Kept in memory and returned by `wait()`.
    Collect,
    /// Written to this sink as it arrives (the CLI passes its stderr, or a log).
    Forward(Box<dyn AsyncWrite + Send + Unpin>),
}

/// What the handler learned that russh's own errors do not carry.
#[derive(Default)]
struct Shared {
    /// A refused host key, as our typed error.
    host_key: Option<SshError>,
    /// Why the connection ended, once it has.
    disconnect: Option<String>,
}

/// russh's handler: pins the host key and remembers why the connection ended.
struct Client {
    /// The name keys are filed under: `HostKeyAlias` when set, else the host connected to.
    host: String,
    /// The host connected to, when keys are filed under an alias: an entry for it vouches
    /// for a key not yet filed under the alias (known_hosts written before aliases existed).
    address_host: Option<String>,
    /// What the robot's mDNS advert said its ed25519 key is.
    advertised: Option<String>,
    port: u16,
    addr: String,
    known: KnownHosts,
    record_in: PathBuf,
    accept_new: bool,
    shared: Arc<Mutex<Shared>>,
}

impl Client {
    fn judge(&self, key: &PublicKey) -> Result<(), SshError> {
        let fingerprint = known_hosts::fingerprint(key);
        let key_type = key.algorithm().as_str().to_owned();
        // Only an ed25519 key is advertised; another type negotiated says nothing either way.
        if let Some(advertised) = &self.advertised
            && key.algorithm() == russh::keys::Algorithm::Ed25519
            && *advertised != fingerprint
        {
            return Err(SshError::AdvertisedKeyDiffers {
                addr: self.addr.clone(),
                fingerprint,
                advertised: advertised.clone(),
            });
        }
        let mut status = self.known.check(&self.host, self.port, key);
        if status == HostKeyStatus::Unknown
            && let Some(address) = &self.address_host
            && let HostKeyStatus::Known(_) = self.known.check(address, self.port, key)
        {
            // Trusted at this address already: file it under the name too, so the next
            // address DHCP hands out finds it.
            known_hosts::append(&self.record_in, &self.host, self.port, key)?;
            status = self.known.check(address, self.port, key);
        }
        match status {
            HostKeyStatus::Known(_) => Ok(()),
            HostKeyStatus::Revoked(entry) => Err(SshError::RevokedHostKey {
                addr: self.addr.clone(),
                fingerprint,
                entry,
            }),
            HostKeyStatus::Changed(old) => Err(SshError::ChangedHostKey {
                addr: self.addr.clone(),
                lookup: known_hosts::lookup_name(&self.host, self.port),
                key_type,
                fingerprint,
                old,
            }),
            HostKeyStatus::Unknown if self.accept_new => {
                known_hosts::append(&self.record_in, &self.host, self.port, key)
            }
            HostKeyStatus::Unknown => Err(SshError::UnknownHostKey {
                addr: self.addr.clone(),
                key_type_short: short_type(&key_type).to_owned(),
                key_type,
                fingerprint,
                record_in: self.record_in.clone(),
            }),
        }
    }
}

/// `ssh-ed25519` → `ed25519`, as in `/etc/ssh/ssh_host_ed25519_key`.
fn short_type(t: &str) -> &str {
    if t.starts_with("ecdsa") {
        "ecdsa"
    } else {
        t.strip_prefix("ssh-").unwrap_or(t)
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A host certificate is judged by its plain key: we trust no `@cert-authority`.
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(c) => PublicKey::from(c.public_key().clone()),
        };
        match self.judge(&key) {
            Ok(()) => Ok(true),
            Err(e) => {
                lock(&self.shared).host_key = Some(e);
                // `false` makes russh drop the connection at once, before authentication.
                Ok(false)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let (text, result) = match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => (
                format!(
                    "the server disconnected ({:?}: {})",
                    info.reason_code, info.message
                ),
                Ok(()),
            ),
            client::DisconnectReason::Error(e) => (describe(&e), Err(e)),
        };
        lock(&self.shared).disconnect.get_or_insert(text);
        result
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic elsewhere cannot leave `Shared` half-written (plain field stores).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// russh's error in words a robot user reads.
fn describe(e: &russh::Error) -> String {
    match e {
        russh::Error::KeepaliveTimeout => {
            "no answer to keepalives (robot off, rebooted, or out of WiFi range)".into()
        }
        russh::Error::InactivityTimeout => "idle too long".into(),
        russh::Error::IO(io) => format!("network error: {io}"),
        other => other.to_string(),
    }
}

/// An authenticated SSH connection to one robot.
pub struct Session {
    handle: Handle<Client>,
    addr: String,
    user: String,
    shared: Arc<Mutex<Shared>>,
    counters: ByteCounters,
}

impl Session {
    /// Resolves `target` through `~/.ssh/config`, connects, pins the host key and
    /// authenticates; all within `options.connect_timeout`.
    pub async fn connect(target: &Target, options: &SshOptions) -> Result<Session, SshError> {
        let cfg_path = options.config_path();
        let host_cfg = HostConfig::load(&cfg_path, &target.host, &options.ssh_dir)?;
        let resolved = config::resolve(target, &host_cfg, &options.home, &local_user(), &cfg_path)?;
        let addr = host_port(&resolved.hostname, resolved.port);
        let known = KnownHosts::load(&options.known_hosts_files())?;
        let stage = Arc::new(Mutex::new("connecting"));
        let work = connect_resolved(&resolved, &addr, known, options, stage.clone());
        match tokio::time::timeout(options.connect_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Timeout {
                addr,
                after: options.connect_timeout,
                stage: *stage.lock().unwrap_or_else(|p| p.into_inner()),
            }),
        }
    }

    /// `host:port` this session is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The login name used.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Totals over every channel of this session.
    pub fn counters(&self) -> ByteCounters {
        self.counters.clone()
    }

    /// Runs `command` (a shell command line, as `ssh host command` would) with stderr
    /// collected.
    pub async fn exec(&self, command: &str) -> Result<ExecChannel, SshError> {
        self.exec_with(command, Stderr::Collect).await
    }

    /// Runs `command` with empty stdin and returns everything it printed and its status.
    pub async fn run(&self, command: &str) -> Result<Output, SshError> {
        self.run_with_input(command, &[]).await
    }

    /// Runs `command` feeding it `input` on stdin (then EOF), reading its output meanwhile.
    pub async fn run_with_input(&self, command: &str, input: &[u8]) -> Result<Output, SshError> {
        let ch = self.exec(command).await?;
        let (mut stdin, mut stdout, waiter) = ch.into_parts();
        let addr = self.addr.clone();
        let feed = async {
            // A command that exits without reading its stdin closes the channel under us:
            // that is its business, not an error of ours; its status tells.
            if stdin.write_all(input).await.is_ok() {
                let _ = stdin.shutdown().await;
            }
        };
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out);
        let ((), read) = tokio::join!(feed, read);
        read.map_err(|e| SshError::Channel {
            addr: addr.clone(),
            message: format!("reading the output of `{command}`: {e}"),
        })?;
        let exit = waiter.wait().await?;
        Ok(Output {
            status: exit.status,
            stdout: out,
            stderr: exit.stderr,
        })
    }

    /// Resolves once the connection has ended (keepalives unanswered, the link gone), with
    /// why. Race long protocol work against it: a channel of a dead connection can stay
    /// pending forever inside russh.
    pub async fn closed(&self) -> SshError {
        while !self.handle.is_closed() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let reason = lock(&self.shared).disconnect.clone().unwrap_or_else(|| {
            "the connection was lost (no answer to keepalives: robot off or out of range)".into()
        });
        SshError::Disconnected {
            addr: self.addr.clone(),
            reason,
        }
    }

    /// Says goodbye to the server. Dropping a session also closes it, without the goodbye.
    pub async fn close(self) -> Result<(), SshError> {
        if self.handle.is_closed() {
            return Ok(());
        }
        match self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await
        {
            Ok(()) | Err(russh::Error::SendError) => Ok(()),
            Err(source) => Err(SshError::Protocol {
                addr: self.addr.clone(),
                source,
            }),
        }
    }

    /// Turns a russh error into ours, preferring the recorded reason the connection ended.
    fn lost_or(&self, e: russh::Error, doing: &str) -> SshError {
        lost_or(&self.shared, &self.addr, e, doing)
    }
}

fn lost_or(shared: &Mutex<Shared>, addr: &str, e: russh::Error, doing: &str) -> SshError {
    if let Some(reason) = lock(shared).disconnect.clone() {
        return SshError::Disconnected {
            addr: addr.to_owned(),
            reason,
        };
    }
    match e {
        russh::Error::ChannelOpenFailure(reason) => SshError::Channel {
            addr: addr.to_owned(),
            message: format!("the server refused {doing}: {reason:?}"),
        },
        russh::Error::SendError | russh::Error::Disconnect => SshError::Disconnected {
            addr: addr.to_owned(),
            reason: format!("closed while {doing}"),
        },
        source => SshError::Protocol {
            addr: addr.to_owned(),
            source,
        },
    }
}

async fn connect_resolved(
    r: &Resolved,
    addr: &str,
    known: KnownHosts,
    options: &SshOptions,
    stage: Arc<Mutex<&'static str>>,
) -> Result<Session, SshError> {
    let set = |s: &'static str| *stage.lock().unwrap_or_else(|p| p.into_inner()) = s;
    set("resolving the host name");
    let addrs: Vec<_> = tokio::net::lookup_host((r.hostname.as_str(), r.port))
        .await
        .map_err(|source| SshError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    set("connecting");
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    let mut stream = None;
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or_else(|| SshError::Connect {
        addr: addr.to_owned(),
        source: last,
    })?;
    // Protocol frames are small and latency-bound (one have/want round trip): no Nagle.
    if let Err(source) = stream.set_nodelay(true) {
        return Err(SshError::Connect {
            addr: addr.to_owned(),
            source,
        });
    }

    // A robot that drops off the WiFi mid-transfer leaves writes blocked on a full window,
    // where SSH keepalives never get their turn: let the kernel give up on unacknowledged
    // data, and probe an idle connection, after the same ~30 s the keepalives allow.
    // `ServerAliveInterval`/`ServerAliveCountMax` in the user's config beat our defaults, as
    // they do for OpenSSH; an interval of 0 turns keepalives off there, so it does here.
    let interval = match r.server_alive_interval {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => Some(options.keepalive_interval),
    };
    let keepalive_max = r
        .server_alive_count_max
        .unwrap_or(options.keepalive_max)
        .max(1);
    let dead_after = interval.map(|i| i * keepalive_max as u32);
    let sock = socket2::SockRef::from(&stream);
    if let (Some(interval), Some(dead_after)) = (interval, dead_after) {
        let _ = sock.set_tcp_user_timeout(Some(dead_after));
        let _ = sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(interval)
                .with_interval(interval)
                .with_retries(keepalive_max as u32),
        );
    }

    set("exchanging keys");
    let shared = Arc::new(Mutex::new(Shared::default()));
    let alias = r
        .host_key_alias
        .clone()
        .or_else(|| options.host_key_alias.clone())
        .filter(|a| !a.eq_ignore_ascii_case(&r.hostname));
    let handler = Client {
        host: alias.clone().unwrap_or_else(|| r.hostname.clone()),
        address_host: alias.as_ref().map(|_| r.hostname.clone()),
        advertised: options.advertised_fingerprint.clone(),
        port: r.port,
        addr: match &alias {
            Some(a) => format!("{a} ({addr})"),
            None => addr.to_owned(),
        },
        known,
        record_in: options.user_known_hosts(),
        accept_new: options.accept_new_host_key,
        shared: shared.clone(),
    };
    let config = client::Config {
        keepalive_interval: interval,
        keepalive_max,
        nodelay: true,
        ..Default::default()
    };
    let handle = match client::connect_stream(Arc::new(config), stream, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(refused) = lock(&shared).host_key.take() {
                return Err(refused);
            }
            return Err(lost_or(&shared, addr, e, "exchanging keys"));
        }
    };
    let mut session = Session {
        handle,
        addr: addr.to_owned(),
        user: r.user.clone(),
        shared,
        counters: ByteCounters::default(),
    };
    set("authenticating");
    authenticate(&mut session, r, options).await?;
    Ok(session)
}

/// The local login name, for `%u` in the config.
fn local_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Some(u) = std::env::var_os(var).filter(|u| !u.is_empty()) {
            return u.to_string_lossy().into_owned();
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }.to_string()
}

/// A running remote command. Reading it reads remote stdout; writing it writes remote stdin
/// and shutting it down sends EOF, so it can be handed as one `AsyncRead + AsyncWrite` to the
/// protocol layer. Read stdout while writing stdin: a command that echoes (like `cat`) stalls
/// when nobody drains its output, as with any pipe.
pub struct ExecChannel {
    stdin: ExecStdin,
    stdout: ExecStdout,
    waiter: ExitWaiter,
    counters: ByteCounters,
}

impl ExecChannel {
    /// This channel's byte counts (the session's [`Session::counters`] include them).
    pub fn counters(&self) -> ByteCounters {
        self.counters.clone()
    }

    /// Sends EOF on remote stdin (same as `shutdown()`).
    pub async fn send_eof(&mut self) -> Result<(), SshError> {
        self.stdin.shutdown().await.map_err(|e| SshError::Channel {
            addr: self.waiter.addr.clone(),
            message: format!("sending EOF: {e}"),
        })
    }

    /// Separate halves, for reading and writing from different tasks.
    pub fn into_parts(self) -> (ExecStdin, ExecStdout, ExitWaiter) {
        (self.stdin, self.stdout, self.waiter)
    }

    /// Waits for the command to end. Remote stdout not read by then is discarded; stdin is
    /// closed by dropping it.
    pub async fn wait(self) -> Result<Exit, SshError> {
        let ExecChannel {
            stdin,
            stdout,
            waiter,
            ..
        } = self;
        drop(stdout);
        drop(stdin);
        waiter.wait().await
    }
}

/// Remote stdin. `shutdown()` sends EOF.
pub struct ExecStdin {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    count: Count,
    /// Completes when the channel's pump ends (the channel closed or the connection died).
    /// russh's writer waits for window space that a dead connection never grants, so a
    /// blocked write must also wake on this. `None` once it has completed.
    pump_gone: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl ExecStdin {
    /// Polls `op` on the writer, failing it instead once the channel is gone.
    fn poll_alive<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut (dyn AsyncWrite + Send)>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let gone = || {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the channel closed (the command ended or the connection was lost)",
            )
        };
        let Some(rx) = self.pump_gone.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        match op(self.inner.as_mut(), cx) {
            Poll::Pending => {
                if Pin::new(rx).poll(cx).is_ready() {
                    self.pump_gone = None;
                    return Poll::Ready(Err(gone()));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

/// Remote stdout; ends (reads 0) when the remote side sends EOF or the channel closes.
pub struct ExecStdout {
    inner: tokio::io::ReadHalf<tokio::io::SimplexStream>,
}

/// The end of a remote command: [`ExitWaiter::wait`] gives its status.
pub struct ExitWaiter {
    done: JoinHandle<Result<Exit, SshError>>,
    addr: String,
}

impl ExitWaiter {
    /// Waits for the exit status (and collected stderr).
    pub async fn wait(self) -> Result<Exit, SshError> {
        match self.done.await {
            Ok(r) => r,
            Err(e) => Err(SshError::Channel {
                addr: self.addr,
                message: format!("the channel task failed: {e}"),
            }),
        }
    }
}

impl AsyncWrite for ExecStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.poll_alive(cx, |w, cx| w.poll_write(cx, buf));
        if let Poll::Ready(Ok(n)) = &r {
            self.count.sent(*n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_alive(cx, |w, cx| w.poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_alive(cx, |w, cx| w.poll_shutdown(cx))
    }
}

impl AsyncRead for ExecStdout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncRead for ExecChannel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for ExecChannel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

/// `KILL` for `Sig::KILL`; russh keeps its own name table private.
fn sig_name(sig: &russh::Sig) -> String {
    match sig {
        russh::Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// The task that owns a channel's incoming messages.
struct Pump {
    /// Dropped when the pump ends: wakes a writer blocked on a window that will never open.
    _alive: tokio::sync::oneshot::Sender<()>,
    addr: String,
    command: String,
    shared: Arc<Mutex<Shared>>,
    count: Count,
}

impl Pump {
    async fn run(
        self,
        mut read: ChannelReadHalf,
        stdout: tokio::io::WriteHalf<tokio::io::SimplexStream>,
        mut stderr: Stderr,
    ) -> Result<Exit, SshError> {
        let mut stdout = Some(stdout);
        let mut status = None;
        let mut refused = false;
        let mut collected: Vec<u8> = Vec::new();
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    self.count.received(data.len());
                    // A caller that dropped stdout no longer wants it: discard, keep pumping
                    // so stderr and the exit status still arrive.
                    if let Some(w) = stdout.as_mut()
                        && w.write_all(&data).await.is_err()
                    {
                        stdout = None;
                    }
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => match &mut stderr {
                    Stderr::Collect => {
                        collected.extend_from_slice(&data);
                        if collected.len() > 2 * STDERR_KEEP_BYTES {
                            collected.drain(..collected.len() - STDERR_KEEP_BYTES);
                        }
                    }
                    Stderr::Forward(w) => {
                        // Nowhere to report a broken forward sink; the command goes on.
                        let _ = w.write_all(&data).await;
                    }
                },
                ChannelMsg::Eof => {
                    if let Some(mut w) = stdout.take() {
                        let _ = w.shutdown().await;
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    status = Some(ExitStatus::Code(exit_status))
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    ..
                } => {
                    status = Some(ExitStatus::Signal {
                        name: sig_name(&signal_name),
                        core_dumped,
                        message: error_message,
                    })
                }
                ChannelMsg::Failure if status.is_none() => refused = true,
                ChannelMsg::Close => break,
                _ => {}
            }
            if refused {
                break;
            }
        }
        drop(stdout);
        if let Stderr::Forward(w) = &mut stderr {
            let _ = w.flush().await;
        }
        if refused {
            return Err(SshError::Channel {
                addr: self.addr,
                message: format!("the server refused to run `{}`", self.command),
            });
        }
        if collected.len() > STDERR_KEEP_BYTES {
            collected.drain(..collected.len() - STDERR_KEEP_BYTES);
        }
        match status {
            Some(status) => Ok(Exit {
                status,
                stderr: collected,
            }),
            None => {
                let reason = lock(&self.shared)
                    .disconnect
                    .clone()
                    .unwrap_or_else(|| format!("`{}` ended without an exit status", self.command));
                Err(SshError::Disconnected {
                    addr: self.addr,
                    reason,
                })
            }
        }
    }
}
