//! The daemon's control socket: how `dt-agent run|ps|logs|stop|rm|diff|volume`,
//! `dt-agent deploy|history|rollback` (and `serve`) ask `dt-agent daemon`, the one owner of
//! containers and releases, to act.
//!
//! `$DT_AGENT_ROOT/daemon.sock`, mode 0600 (root only: whoever can talk to it can start
//! containers with devices). One JSON [`Request`] per line; the answer is one JSON line
//! (`{"ok": …}` or `{"error": {…}}`), except `logs`, which answers with a line per log line and
//! ends with `{"end": {"exit_code": …}}`, and `exec` (see [`super::exec`]), whose request line
//! carries the client's stdio as file descriptors. Each connection is served on its own thread, so a
//! follower never holds up anyone else; the supervisor runs on another.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::container::logs::{LogLine, LogReader};
use super::container::{ContainerError, Manager};
use super::fdpass::LineReader;
use super::release::{ReleaseError, ReleaseSpec, Releases};
use crate::api::ErrorClass;
pub use crate::api::daemon::{RemoteError, Request};
use crate::util::fs::{PathContext, PathError};

pub use crate::api::daemon::SOCKET;

/// How often the supervisor looks at the containers.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);

/// The class an error of the daemon's is answered with.
fn class(bad_input: bool, not_found: bool) -> ErrorClass {
    if bad_input {
        ErrorClass::BadInput
    } else if not_found {
        ErrorClass::NotFound
    } else {
        ErrorClass::Failed
    }
}

impl From<&ContainerError> for RemoteError {
    fn from(e: &ContainerError) -> Self {
        RemoteError::from_error(class(e.is_bad_input(), e.is_not_found()), e)
    }
}

impl From<&ReleaseError> for RemoteError {
    fn from(e: &ReleaseError) -> Self {
        RemoteError::from_error(class(e.is_bad_input(), e.is_not_found()), e)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Ok(Value),
    Error(RemoteError),
    Line(LogLine),
    End {
        exit_code: Option<i32>,
    },
    /// Why a deploy waits, before its answer (only to a request that asked for notices).
    Notice(String),
}

/// The daemon's side: listens until [`Server::shutdown`]; containers keep running after it.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Binds the socket under `root`, starts the supervisor (which first adopts what an
    /// earlier daemon left), and serves — after `releases` has undone or finished a switch an
    /// earlier daemon left half-done (requests wait meanwhile). `note` receives what the
    /// supervisor and the recovery did.
    pub fn start(
        root: &Path,
        manager: Arc<Manager>,
        releases: Arc<Releases>,
        note: Arc<dyn Fn(String) + Send + Sync>,
    ) -> Result<Server, PathError> {
        let path = root.join(SOCKET);
        // A stale socket of a dead daemon; a live one would answer.
        if UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).at("listen on", &path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .at("chmod", &path)?;
        let stop = Arc::new(AtomicBool::new(false));

        for n in manager.resume() {
            note(n);
        }
        {
            let (m, stop, note) = (Arc::clone(&manager), Arc::clone(&stop), Arc::clone(&note));
            std::thread::Builder::new()
                .name("supervisor".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for n in m.supervise() {
                            note(n);
                        }
                        std::thread::sleep(SUPERVISE_EVERY);
                    }
                })
                .at("start the supervisor for", &path)?;
        }
        {
            let stop = Arc::clone(&stop);
            let note = Arc::clone(&note);
            std::thread::Builder::new()
                .name("control".into())
                .spawn(move || {
                    for n in releases.recover() {
                        note(n);
                    }
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let m = Arc::clone(&manager);
                        let r = Arc::clone(&releases);
                        let _ = std::thread::Builder::new()
                            .name("client".into())
                            .spawn(move || serve(conn, &m, &r));
                    }
                })
                .at("start the control socket", &path)?;
        }
        Ok(Server { path, stop })
    }

    /// Stops accepting requests and supervising. Containers keep running.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send(conn: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).expect("serialisable");
    line.push(b'\n');
    conn.write_all(&line)
}

fn serve(conn: UnixStream, m: &Manager, releases: &Releases) {
    // Requests are read with `recvmsg`: an `exec` line carries the client's stdio with it.
    let mut reader = LineReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    while let Ok(Some(line)) = reader.read_line() {
        let fds = reader.take_fds();
        let req = match decode_request(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(&mut conn, &Response::Error(e));
                return;
            }
        };
        let done = match req {
            Request::Logs {
                name,
                follow,
                tail,
                until_exit,
                since,
                until,
            } => {
                let window = LogWindow { since, until };
                stream_logs(&mut conn, m, &name, follow, tail, until_exit, &window)
            }
            Request::Exec { spec } => super::exec::serve(&conn, m, &spec, fds),
            Request::Attach { name, size } => super::exec::serve_attach(&conn, m, &name, size, fds),
            Request::Deploy {
                spec,
                detach,
                force,
                notices,
            } => deploy(&mut conn, releases, *spec, detach, force, notices),
            req @ (Request::History | Request::Rollback { .. } | Request::Release) => {
                let r = match handle_release(releases, req) {
                    Ok(v) => Response::Ok(v),
                    Err(e) => Response::Error(RemoteError::from(&e)),
                };
                send(&mut conn, &r)
            }
            other => {
                let r = match handle(m, other) {
                    Ok(v) => Response::Ok(v),
                    Err(e) => Response::Error(RemoteError::from(&e)),
                };
                send(&mut conn, &r)
            }
        };
        if done.is_err() {
            return;
        }
    }
}

/// Decodes one request line, as the daemon reads its socket. Every name in a [`Request`] is a
/// checked type (`api::names`), so a request naming `../x` (or anything else that would not
/// stay a single path component) is refused here, as bad input naming the value, before any
/// code could make a path of it.
pub fn decode_request(line: &[u8]) -> Result<Request, RemoteError> {
    serde_json::from_slice(line.trim_ascii())
        .map_err(|e| RemoteError::new(ErrorClass::BadInput, format!("bad request: {e}")))
}

fn to_value<T: Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("serialisable")
}

fn handle(m: &Manager, req: Request) -> Result<Value, ContainerError> {
    Ok(match req {
        Request::Create { config, start } => {
            let name = config.name.clone();
            let info = m.create(*config)?;
            if start {
                match m.start(&name) {
                    Ok(i) => to_value(i),
                    Err(e) => {
                        // A container that cannot start is not left behind by `run`.
                        let _ = m.remove(&name, true);
                        return Err(e);
                    }
                }
            } else {
                to_value(info)
            }
        }
        Request::Start { name } => to_value(m.start(&name)?),
        Request::Stop { name, timeout } => {
            to_value(m.stop(&name, timeout.map(Duration::from_secs))?)
        }
        Request::Kill { name, signal } => {
            m.kill(&name, &signal)?;
            Value::Null
        }
        Request::Rm { name, force } => {
            m.remove(&name, force)?;
            Value::Null
        }
        Request::Ps { all } => to_value(m.list(all)?),
        Request::Inspect { name } => to_value(m.inspect(&name)?),
        Request::Diff { name } => to_value(m.diff(&name)?),
        Request::VolumeLs => to_value(m.volumes()?),
        Request::VolumeCreate { name } => to_value(m.volume_create(&name)?),
        Request::VolumeRm { name } => {
            m.volume_remove(&name)?;
            Value::Null
        }
        Request::Runtime => to_value(serde_json::json!({
            "command": m.runtime().command(),
            "version": m.runtime().version()?,
        })),
        Request::Logs { .. } | Request::Exec { .. } | Request::Attach { .. } => {
            unreachable!("streamed")
        }
        Request::Deploy { .. } | Request::History | Request::Rollback { .. } | Request::Release => {
            unreachable!("releases")
        }
    })
}

fn handle_release(r: &Releases, req: Request) -> Result<Value, ReleaseError> {
    Ok(match req {
        Request::History => to_value(r.history()?),
        Request::Rollback { to } => to_value(r.rollback(to)?),
        Request::Release => to_value(r.current()?),
        _ => unreachable!("containers"),
    })
}

/// A deploy. Detached, the answer goes out when probation begins, then this thread sees the
/// release through probation to its commit or rollback — whether or not the client is still
/// there, since nothing after the answer reads or writes the connection; a deploy that ends
/// before probation (nothing to do, a failed switch) is answered when it ends. While it waits
/// for an update lock, a client that asked for notices hears why, and a client that went away
/// abandons it.
fn deploy(
    conn: &mut UnixStream,
    releases: &Releases,
    spec: ReleaseSpec,
    detach: bool,
    force: bool,
    notices: bool,
) -> std::io::Result<()> {
    let mut answered = false;
    let mut said: Option<(String, std::time::Instant)> = None;
    let mut probe = conn.try_clone().ok();
    let mut on_wait = |msg: &str| -> bool {
        if !client_there(probe.as_ref()) {
            return false;
        }
        let due = said
            .as_ref()
            .is_none_or(|(m, at)| m != msg || at.elapsed() >= Duration::from_secs(10));
        if notices
            && due
            && let Some(p) = probe.as_mut()
        {
            said = Some((msg.to_string(), std::time::Instant::now()));
            return send(p, &Response::Notice(msg.to_string())).is_ok();
        }
        true
    };
    let r = releases.apply_with(spec, force, &mut on_wait, &mut |out| {
        if !detach {
            return;
        }
        answered = true;
        // A client that went away meanwhile changes nothing: probation goes on.
        let _ = send(conn, &Response::Ok(to_value(out)));
    });
    if answered {
        return Ok(());
    }
    let r = match r {
        Ok(out) => Response::Ok(to_value(out)),
        Err(e) => Response::Error(RemoteError::from(&e)),
    };
    send(conn, &r)
}

/// Whether the client of `conn` is still connected (it sends nothing while it waits for an
/// answer, so a readable end of file means it left).
fn client_there(conn: Option<&UnixStream>) -> bool {
    let Some(c) = conn else { return true };
    let mut b = [0u8; 1];
    // SAFETY: a non-blocking peek into a local buffer.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(c),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n != 0
}

/// The instants `logs --since/--until` keep lines between (RFC 3339, nanoseconds, UTC).
struct LogWindow {
    since: Option<String>,
    until: Option<String>,
}

impl LogWindow {
    /// Whether `line` is inside.
    fn keeps(&self, line: &LogLine) -> bool {
        crate::api::container::log_line_in(line, self.since.as_deref(), self.until.as_deref())
    }

    /// Whether the clock has passed `until`: a follower stops.
    fn over(&self) -> bool {
        self.until
            .as_deref()
            .is_some_and(|u| crate::util::time::now_rfc3339_nanos().as_str() >= u)
    }
}

fn stream_logs(
    conn: &mut UnixStream,
    m: &Manager,
    name: &str,
    follow: bool,
    tail: Option<usize>,
    until_exit: bool,
    window: &LogWindow,
) -> std::io::Result<()> {
    if let Err(e) = m.inspect(name) {
        return send(conn, &Response::Error(RemoteError::from(&e)));
    }
    let mut reader = match LogReader::open(&m.logs_dir(name), tail) {
        Ok(r) => r,
        Err(e) => {
            return send(
                conn,
                &Response::Error(RemoteError::from(&ContainerError::Io(e))),
            );
        }
    };
    loop {
        // Read the state before the lines: lines written before the exit are then all seen.
        let info = m.inspect(name).ok();
        let over = window.over();
        let lines = reader.poll().unwrap_or_default();
        for l in lines.into_iter().filter(|l| window.keeps(l)) {
            send(conn, &Response::Line(l))?;
        }
        let exited = info.as_ref().is_none_or(|i| i.state != "running");
        if !follow || (until_exit && exited) || over {
            return send(
                conn,
                &Response::End {
                    exit_code: info.and_then(|i| i.exit_code),
                },
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The client side, for `dt-agent run|ps|…` (and `serve`).
pub struct Client {
    conn: UnixStream,
    reader: BufReader<UnixStream>,
}

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens.
    #[error("cannot reach dt-agent daemon at `{}`: {source}; is it running? (`systemctl start dt-agent`, or `dt-agent daemon`)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("talking to dt-agent daemon: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with something we do not understand.
    #[error("dt-agent daemon answered unexpectedly: {0}")]
    Protocol(String),
    /// The daemon refused or failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl Client {
    /// Connects to the daemon of the agent at `root`.
    pub fn connect(root: &Path) -> Result<Client, ClientError> {
        let path = root.join(SOCKET);
        let conn = UnixStream::connect(&path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        let reader = BufReader::new(conn.try_clone()?);
        Ok(Client { conn, reader })
    }

    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).expect("serialisable");
        line.push(b'\n');
        self.conn.write_all(&line)?;
        Ok(())
    }

    fn receive(&mut self) -> Result<Response, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Protocol("the connection closed".into()));
        }
        serde_json::from_str(line.trim()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends a request and returns its answer.
    pub fn call(&mut self, req: &Request) -> Result<Value, ClientError> {
        self.send(req)?;
        match self.receive()? {
            Response::Ok(v) => Ok(v),
            Response::Error(e) => Err(e.into()),
            _ => Err(ClientError::Protocol(
                "a log line to a plain request".into(),
            )),
        }
    }

    /// Sends a request that may be answered after notices (a `deploy` asking for them),
    /// passing each notice to `on_notice`.
    pub fn call_with_notices(
        &mut self,
        req: &Request,
        on_notice: &mut dyn FnMut(String),
    ) -> Result<Value, ClientError> {
        self.send(req)?;
        loop {
            match self.receive()? {
                Response::Notice(n) => on_notice(n),
                Response::Ok(v) => return Ok(v),
                Response::Error(e) => return Err(e.into()),
                _ => return Err(ClientError::Protocol("a log line to a deploy".into())),
            }
        }
    }

    /// Sends a `logs` request, passes each line to `on_line`, and returns the exit code the
    /// stream ended with.
    pub fn logs(
        &mut self,
        req: &Request,
        on_line: &mut dyn FnMut(LogLine),
    ) -> Result<Option<i32>, ClientError> {
        self.send(req)?;
        loop {
            match self.receive()? {
                Response::Line(l) => on_line(l),
                Response::End { exit_code } => return Ok(exit_code),
                Response::Error(e) => return Err(e.into()),
                Response::Ok(_) | Response::Notice(_) => {
                    return Err(ClientError::Protocol("a plain answer to `logs`".into()));
                }
            }
        }
    }
}
