//! The per-container shim (`dt-agent shim DIR`): one small process per running container that
//! outlives the daemon.
//!
//! It makes itself the child subreaper, gives `runc create` two pipes as the container's stdout
//! and stderr, attaches the network namespace to the CNI bridge when the container has one,
//! `runc start`s, and answers the daemon with one JSON line on its stdout ([`ShimReply`]). Then
//! it copies the container's output into the rotated log, waits for the container's init (which
//! the kernel re-parents to it when `runc create` exits), writes `exit.json`, detaches the
//! network and deletes the runtime's container. The daemon learns everything it needs from
//! `exit.json` and the shim's pid, so a daemon restarted in between adopts it unchanged.
//!
//! A container with a terminal (`tty`, `run -t`) is created with `--console-socket`
//! ([`Runtime::create_with_terminal`]) and the shim holds the terminal's master: its output
//! is the log's `stdout`. An attached client (`start -a`, `run -i/-t` in the foreground)
//! sends its stdin, stdout and stderr along with the first line the daemon writes on the
//! shim's stdout, a unix socket: the shim copies the output to them as well as to the log
//! (and the terminal's input from the client's stdin), or without a terminal gives the
//! client's stdin to the container as its own, so the bytes are the process's. Its answer then
//! carries a duplicate of the master (the daemon sets the window size on it), and once the
//! container's exit is recorded it tells the daemon the code on the same socket.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::logs::{LogConfig, LogWriter};
use super::{ExitRecord, read_json, write_json};
use crate::agent::fdpass::{LineReader, send_with_fds};
use crate::agent::net::{Network, PortMapping};
use crate::runtime::{Runtime, RuntimeError};

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 16 << 10;

/// `bundle/shim.json`: everything the shim needs, written by the daemon before it starts one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The runtime's container id (the container's name).
    pub id: String,
    /// runc or crun.
    pub runtime: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// The OCI bundle.
    pub bundle: PathBuf,
    /// Where the output goes.
    pub logs: PathBuf,
    /// Rotation.
    pub log: LogConfig,
    /// CNI wiring, for a container with its own network namespace on the bridge.
    pub network: Option<ShimNetwork>,
    /// The process has a terminal, whose master the shim holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// A client is attached: its stdio comes on the shim's stdout socket before anything runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// The terminal's size at start (rows, columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<(u16, u16)>,
}

/// The CNI part of [`ShimConfig`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimNetwork {
    /// The agent's CNI state directory.
    pub state_dir: PathBuf,
    /// Published ports.
    pub ports: Vec<PortMapping>,
}

/// The shim's one-line answer to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ShimReply {
    /// The container runs.
    Started {
        /// Its init's pid.
        pid: u32,
        /// Its address on the bridge.
        ip: Option<String>,
    },
    /// It does not, and why.
    Failed {
        /// The explanation.
        error: String,
    },
    /// Its process exited with this code (to an attached start only, after `exit.json`).
    Exited {
        /// The exit code (`128 + n` for signal `n`).
        code: i32,
    },
}

fn line_of(r: &ShimReply) -> Vec<u8> {
    let mut line = serde_json::to_vec(r).expect("serialisable");
    line.push(b'\n');
    line
}

/// Answers the daemon on our stdout, with `fds` when it is a socket (an attached start), and
/// returns the socket kept for the exit line when `keep`.
fn reply(r: &ShimReply, fds: &[std::os::fd::BorrowedFd<'_>], keep: bool) -> Option<UnixStream> {
    let sock = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(UnixStream::from);
    match (&sock, fds.is_empty()) {
        (Some(s), false) => {
            let _ = send_with_fds(s, &line_of(r), fds);
        }
        _ => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line_of(r));
            let _ = out.flush();
        }
    }
    // Our stdout is the daemon's socket: close it so the daemon does not wait for more, and so
    // a daemon that went away cannot make us fail with EPIPE.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 replaces our stdout; nothing else holds a borrow of it.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    sock.filter(|_| keep)
}

/// The attached client's stdin, stdout and stderr, sent by the daemon on our stdout socket.
fn receive_client() -> Result<[File; 3], String> {
    let sock = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("the daemon's socket: {e}"))?;
    let mut r = LineReader::new(UnixStream::from(sock));
    r.read_line()
        .map_err(|e| format!("reading the attached client: {e}"))?;
    let fds: [OwnedFd; 3] = r
        .take_fds()
        .try_into()
        .map_err(|_| "the attached client's stdin, stdout and stderr did not come".to_string())?;
    Ok(fds.map(File::from))
}

/// Where the container's output is read from, and who else gets it.
enum Streams {
    /// stdout and stderr pipes; the client's stdout and stderr.
    Pipes {
        out: File,
        err: File,
        client: Option<[File; 2]>,
    },
    /// The terminal's master; the client's stdin and stdout.
    Terminal {
        master: File,
        client: Option<[File; 2]>,
    },
}

/// `runc create`: with pipes as stdout and stderr (and the client's stdin as the process's),
/// or with a terminal. The init's pid and the streams to copy.
fn create(
    runtime: &Runtime,
    cfg: &ShimConfig,
    client: Option<[File; 3]>,
) -> Result<(u32, Streams), String> {
    let log_path = cfg.bundle.join("runtime.log");
    if cfg.tty {
        let (pid, master) = runtime
            .create_with_terminal(&cfg.bundle, &cfg.id, &log_path)
            .map_err(|e: RuntimeError| e.to_string())?;
        if let Some(size) = cfg.size {
            let _ = crate::util::tty::set_size(&master, size);
        }
        let client = client.map(|[i, o, _]| [i, o]);
        let master = File::from(master);
        return Ok((pid, Streams::Terminal { master, client }));
    }
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let ((out_r, out_w), (err_r, err_w)) = pipe()
        .and_then(|o| pipe().map(|e| (o, e)))
        .map_err(|e| format!("pipe: {e}"))?;
    let (stdin, client) = match client {
        Some([i, o, e]) => (Stdio::from(i), Some([o, e])),
        None => (Stdio::null(), None),
    };
    let pid = runtime
        .create(
            &cfg.bundle,
            &cfg.id,
            [stdin, Stdio::from(out_w), Stdio::from(err_w)],
            &log_path,
        )
        .map_err(|e| e.to_string())?;
    let (out, err) = (File::from(out_r), File::from(err_r));
    Ok((pid, Streams::Pipes { out, err, client }))
}

impl Streams {
    /// A duplicate of the terminal's master, for the daemon (an attached start only).
    fn master_for_daemon(&self) -> Option<OwnedFd> {
        match self {
            Streams::Terminal {
                master,
                client: Some(_),
            } => master.as_fd().try_clone_to_owned().ok(),
            _ => None,
        }
    }

    /// Starts the threads that copy the output to the log (and the client), and the client's
    /// keys to the terminal; returns the output copiers.
    fn copy(self, w: &Arc<Mutex<LogWriter>>) -> Vec<std::thread::JoinHandle<()>> {
        let (sources, sinks) = match self {
            Streams::Pipes { out, err, client } => {
                let (o, e) = match client {
                    Some([o, e]) => (Some(o), Some(e)),
                    None => (None, None),
                };
                (vec![(out, "stdout"), (err, "stderr")], vec![o, e])
            }
            Streams::Terminal { master, client } => {
                let mut sinks = vec![None];
                if let Some([input, output]) = client {
                    sinks[0] = Some(output);
                    if let Ok(to) = master.try_clone() {
                        std::thread::spawn(move || copy_keys(input, to));
                    }
                }
                (vec![(master, "stdout")], sinks)
            }
        };
        sources
            .into_iter()
            .zip(sinks)
            .map(|((f, stream), sink)| {
                let w = Arc::clone(w);
                std::thread::spawn(move || copy_lines(f, stream, &w, sink))
            })
            .collect()
    }
}

/// The client's keys to the terminal, until either end goes.
fn copy_keys(mut from: File, mut to: File) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs the shim for the container in `dir`; returns the process exit code.
pub fn main(dir: &Path) -> i32 {
    let fail = |error: String| {
        eprintln!("shim: {error}");
        reply(&ShimReply::Failed { error }, &[], false);
        1
    };
    let cfg: ShimConfig = match read_json(&dir.join("bundle").join("shim.json")) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    // SAFETY: prctl with these arguments only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        let err = std::io::Error::last_os_error();
        // QEMU user emulation before 8.x (an arm64 agent on an x86 test host: `dts sim up
        // --arch arm64`) answers EINVAL: it does not pass this prctl on. The container's init
        // then goes to the namespace's reaper, and `wait_for` reads its status from /proc.
        if err.raw_os_error() != Some(libc::EINVAL) {
            return fail(format!("cannot become a subreaper: {err}"));
        }
        eprintln!("shim: cannot become a subreaper ({err}); watching the container through /proc");
    }
    // From here on the container's directory is the working directory and its files are
    // reached relative to it: a release switch renames the directory of a container it
    // retires (agent::container::handover) while this shim still runs, and the exit record
    // and the logs must follow it rather than land in the new container's directory.
    if let Err(e) = std::env::set_current_dir(dir) {
        return fail(format!("cannot enter {}: {e}", dir.display()));
    }
    let logs_dir = cfg
        .logs
        .strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| cfg.logs.clone());
    let runtime = Runtime::new(&cfg.runtime, &cfg.runtime_root);
    let client = match cfg.attached.then(receive_client).transpose() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (pid, streams) = match create(&runtime, &cfg, client) {
        Ok(c) => c,
        Err(e) => {
            let _ = runtime.delete(&cfg.id);
            return fail(e);
        }
    };
    let (ip, attached) = match start(&runtime, &cfg, pid) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let detach = |attached: &Option<(Network, Vec<PortMapping>)>| {
        if let Some((net, ports)) = attached
            && let Err(e) = net.detach(&cfg.id, None, ports)
        {
            eprintln!("shim: detaching the network: {e}");
        }
    };
    let writer = match LogWriter::open(&logs_dir, cfg.log) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            let _ = runtime.kill(&cfg.id, "KILL");
            let _ = runtime.delete(&cfg.id);
            detach(&attached);
            return fail(e.to_string());
        }
    };
    let master = streams.master_for_daemon();
    let passed: Vec<_> = master.iter().map(|m| m.as_fd()).collect();
    let daemon = reply(&ShimReply::Started { pid, ip }, &passed, cfg.attached);
    drop(master);
    let readers = streams.copy(&writer);

    let code = wait_for(pid);
    // Daemonised grandchildren may hold the pipes open: give the readers a moment, not forever.
    let deadline = Instant::now() + Duration::from_secs(2);
    for r in readers {
        while !r.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
    let record = ExitRecord {
        code,
        finished_at: crate::util::time::rfc3339(crate::util::time::now_secs()),
    };
    if let Err(e) = write_json(Path::new("./exit.json"), &record) {
        eprintln!("shim: {e}");
    }
    // The attached client's answer waits for this: its output is all written by now.
    if let Some(mut d) = daemon {
        let _ = d.write_all(&line_of(&ShimReply::Exited { code }));
    }
    detach(&attached);
    if let Err(e) = runtime.delete(&cfg.id) {
        eprintln!("shim: {e}");
    }
    0
}

/// Wires the created container's network and starts its process: its address on the bridge
/// and the network to detach at the end. On failure the runtime's container is deleted.
#[allow(clippy::type_complexity)]
fn start(
    runtime: &Runtime,
    cfg: &ShimConfig,
    pid: u32,
) -> Result<(Option<String>, Option<(Network, Vec<PortMapping>)>), String> {
    let mut attached: Option<(Network, Vec<PortMapping>)> = None;
    let mut ip = None;
    if let Some(n) = &cfg.network {
        let wired = Network::new(&n.state_dir).and_then(|net| {
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            net.attach(&cfg.id, &netns, &n.ports).map(|a| (net, a))
        });
        match wired {
            Ok((net, a)) => {
                ip = Some(a.ip.to_string());
                attached = Some((net, n.ports.clone()));
            }
            Err(e) => {
                let _ = runtime.delete(&cfg.id);
                return Err(e.to_string());
            }
        }
    }
    if let Err(e) = runtime.start(&cfg.id) {
        let _ = runtime.delete(&cfg.id);
        if let Some((net, ports)) = &attached {
            let _ = net.detach(&cfg.id, None, ports);
        }
        return Err(e.to_string());
    }
    Ok((ip, attached))
}

/// Waits for the container's init: reaps every child (the runtime's intermediate processes
/// are re-parented to us too) until it is the one. Its exit code, `128 + n` for signal `n`.
fn wait_for(pid: u32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid as i32 {
            return decode_status(status);
        }
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // Not our child after all (no subreaper support): watch it until it is gone. Its
            // status can be read while it is a zombie its reaper has not collected yet
            // (`exit_code`, field 52 of /proc/PID/stat, Linux 3.5+); otherwise it is lost.
            eprintln!("shim: waitpid: {err}; polling pid {pid}");
            while let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(status) = zombie_status(&stat) {
                    return decode_status(status);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return 255;
        }
    }
}

/// A wait status as an exit code: `128 + n` for signal `n`.
fn decode_status(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// The wait status in a `/proc/PID/stat` line, if the process is a zombie.
fn zombie_status(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); exit_code is field 52.
    if fields.first() != Some(&"Z") {
        return None;
    }
    fields.get(52 - 3)?.parse().ok()
}

/// Copies `f` into the log line by line (`\n`-terminated, or [`MAX_LINE`] pieces), and to an
/// attached client's `sink` as each read returns (a prompt has no newline), until the client
/// goes away.
fn copy_lines(mut f: File, stream: &'static str, w: &Mutex<LogWriter>, mut sink: Option<File>) {
    let log = |piece: &[u8]| {
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write(stream, piece) {
            eprintln!("shim: {e}");
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO from a terminal's master: its last slave closed.
            Err(_) => break,
        };
        let mut rest = &buf[..n];
        if let Some(s) = &mut sink
            && s.write_all(rest).is_err()
        {
            sink = None;
        }
        while !rest.is_empty() {
            let room = rest.len().min(MAX_LINE - line.len());
            let take = rest[..room]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(room, |i| i + 1);
            line.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if line.ends_with(b"\n") || line.len() >= MAX_LINE {
                log(&line);
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        log(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::container::logs::LogReader;

    #[test]
    fn output_goes_to_the_client_as_read_and_to_the_log_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let w = Mutex::new(LogWriter::open(dir.path(), LogConfig::default()).unwrap());
        let mut source = tempfile::tempfile().unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut bytes = b"one\n/ # ".to_vec();
        bytes.extend_from_slice(&long);
        source.write_all(&bytes).unwrap();
        use std::io::Seek;
        source.rewind().unwrap();
        let sink_path = dir.path().join("client");
        let sink = File::create(&sink_path).unwrap();
        copy_lines(source, "stdout", &w, Some(sink));
        assert_eq!(std::fs::read(&sink_path).unwrap(), bytes);
        let lines = LogReader::open(dir.path(), None).unwrap().poll().unwrap();
        let logged: Vec<&str> = lines.iter().map(|l| l.log.as_str()).collect();
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert_eq!(logged[0], "one\n");
        assert_eq!(logged[1].len(), MAX_LINE);
        assert!(logged[1].starts_with("/ # x"));
        assert_eq!(logged[2], "x".repeat(14));
        assert!(lines.iter().all(|l| l.stream == "stdout"));
    }
}
