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

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::logs::{LogConfig, LogWriter};
use super::{ExitRecord, read_json, write_json};
use crate::agent::net::{Network, PortMapping};
use crate::runtime::Runtime;

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
}

fn reply(r: &ShimReply) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(r).expect("serialisable"));
    let _ = out.flush();
    // Our stdout is the daemon's pipe: close it so the daemon does not wait for more, and so
    // a daemon that went away cannot make us fail with EPIPE.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 replaces our stdout; nothing else holds a borrow of it.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Runs the shim for the container in `dir`; returns the process exit code.
pub fn main(dir: &Path) -> i32 {
    let fail = |error: String| {
        eprintln!("shim: {error}");
        reply(&ShimReply::Failed { error });
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
    let pipes = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .and_then(|o| rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map(|e| (o, e)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let log_path = cfg.bundle.join("runtime.log");
    let pid = match runtime.create(
        &cfg.bundle,
        &cfg.id,
        Stdio::from(out_w),
        Stdio::from(err_w),
        &log_path,
    ) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = runtime.delete(&cfg.id);
            return fail(e.to_string());
        }
    };
    let network = cfg
        .network
        .as_ref()
        .map(|n| Network::new(&n.state_dir).map(|net| (net, n.ports.clone())));
    let mut ip = None;
    let mut attached: Option<(Network, Vec<PortMapping>)> = None;
    match network {
        None => {}
        Some(Err(e)) => {
            let _ = runtime.delete(&cfg.id);
            return fail(e.to_string());
        }
        Some(Ok((net, ports))) => {
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            match net.attach(&cfg.id, &netns, &ports) {
                Ok(a) => {
                    ip = Some(a.ip.to_string());
                    attached = Some((net, ports));
                }
                Err(e) => {
                    let _ = runtime.delete(&cfg.id);
                    return fail(e.to_string());
                }
            }
        }
    }
    let detach = |attached: &Option<(Network, Vec<PortMapping>)>| {
        if let Some((net, ports)) = attached
            && let Err(e) = net.detach(&cfg.id, None, ports)
        {
            eprintln!("shim: detaching the network: {e}");
        }
    };
    if let Err(e) = runtime.start(&cfg.id) {
        let _ = runtime.delete(&cfg.id);
        detach(&attached);
        return fail(e.to_string());
    }

    let writer = match LogWriter::open(&logs_dir, cfg.log) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            let _ = runtime.kill(&cfg.id, "KILL");
            let _ = runtime.delete(&cfg.id);
            detach(&attached);
            return fail(e.to_string());
        }
    };
    reply(&ShimReply::Started {
        pid,
        ip: ip.clone(),
    });

    let readers: Vec<_> = [(File::from(out_r), "stdout"), (File::from(err_r), "stderr")]
        .into_iter()
        .map(|(f, stream)| {
            let w = Arc::clone(&writer);
            std::thread::spawn(move || copy_lines(f, stream, &w))
        })
        .collect();

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
    detach(&attached);
    if let Err(e) = runtime.delete(&cfg.id) {
        eprintln!("shim: {e}");
    }
    0
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

/// Copies `f` into the log line by line (`\n`-terminated, or [`MAX_LINE`] pieces).
fn copy_lines(f: File, stream: &'static str, w: &Mutex<LogWriter>) {
    let mut r = BufReader::with_capacity(64 << 10, f);
    loop {
        let mut line = Vec::new();
        match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = w.write(stream, &line) {
                    eprintln!("shim: {e}");
                }
            }
        }
    }
}
