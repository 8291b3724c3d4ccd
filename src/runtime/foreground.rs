//! Running a container in the foreground (`run`, the builder's RUN) and a command inside one
//! (`exec`, health checks): output pumped line by line, deadlines, and the runtime's own log
//! read when it failed.

use super::*;

impl Runtime {
    /// Runs `args` inside a running container (`exec`), with its output captured; used for
    /// health checks. Killed after `timeout`.
    pub fn exec(
        &self,
        id: &str,
        args: &[String],
        env: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut cmd = self.base();
        cmd.args(["exec"]);
        for e in env {
            cmd.arg("--env").arg(e);
        }
        cmd.arg(id).args(args);
        let line = command_line(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                command: line.clone(),
                source,
            })?;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut o = Vec::new();
            let mut e = Vec::new();
            let _ = out.read_to_end(&mut o);
            let _ = err.read_to_end(&mut e);
            (o, e)
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(RuntimeError::Spawn {
                        command: line,
                        source,
                    });
                }
            }
        };
        let (stdout, stderr) = reader.join().unwrap_or_default();
        Ok(ExecOutput {
            code: status.map(exit_code),
            stdout,
            stderr,
        })
    }

    /// `exec --process PROCESS ID` (`docker exec`): the command of a running container's
    /// process file, its stdio left to the caller (the runtime passes it through, or with a
    /// terminal in the process, relays its own stdin/stdout as the terminal's). The runtime's
    /// own messages go to `log` ([`exec_outcome`] reads them).
    pub fn exec_command(&self, id: &str, process: &Path, log: &Path) -> Command {
        let mut cmd = self.base();
        self.with_log(&mut cmd, log);
        cmd.arg("exec").arg("--process").arg(process).arg(id);
        cmd
    }

    /// Runs the bundle's container in the foreground (`run --bundle BUNDLE ID`) and waits for
    /// it. Its stdout and stderr are merged into one pipe; each line goes to `output` as it
    /// arrives (`\r` ends a line too, so progress bars show), and the last lines are kept.
    /// After `timeout` the container is killed and [`RuntimeError::Timeout`] returned; once
    /// `cancelled` answers true (it is asked every 100 ms) it is killed and
    /// [`RuntimeError::Cancelled`] returned. The container is deleted before this returns,
    /// whatever happened.
    ///
    /// A non-zero exit is returned as `Ok`: it is the command's. When the runtime itself failed
    /// (bad spec, command not found), its log (`BUNDLE/runtime.log`) tells, and that is
    /// [`RuntimeError::Runtime`].
    pub fn run(
        &self,
        bundle: &Path,
        id: &str,
        timeout: Option<Duration>,
        cancelled: &dyn Fn() -> bool,
        output: &mut dyn FnMut(&str),
    ) -> Result<RunExit, RuntimeError> {
        crate::util::fs::create_dir_all(&self.root)?;
        let log = bundle.join("runtime.log");
        match fs::remove_file(&log) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(PathError {
                    action: "remove",
                    path: log,
                    source: e,
                }
                .into());
            }
            _ => {}
        }
        // A container left behind by a crashed process with our pid would make `run` fail.
        self.delete(id)?;

        let mut cmd = self.base();
        if self.is_crun() {
            cmd.arg(format!("--log=file:{}", log.display()))
                .arg("--log-format=json");
        } else {
            cmd.arg("--log").arg(&log).args(["--log-format", "json"]);
        }
        cmd.arg("run").arg("--bundle").arg(bundle).arg(id);
        let line = command_line(&cmd);

        let (mut child, reader) = spawn_merged(cmd, &line)?;

        let (tx, rx) = mpsc::channel::<String>();
        let pump = std::thread::Builder::new()
            .name(format!("{id}-output"))
            .spawn(move || pump_lines(File::from(reader), &tx));
        let pump = match pump {
            Ok(p) => p,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                self.delete(id)?;
                return Err(RuntimeError::Spawn {
                    command: format!("output reader for `{line}`"),
                    source,
                });
            }
        };

        let deadline = timeout.map(|t| Instant::now() + t);
        let watched = self.watch(id, &mut child, &rx, deadline, cancelled, output);
        let (tail, killed, abandoned) = (watched.tail, watched.killed, watched.abandoned);
        let status = child.wait().map_err(|source| RuntimeError::Spawn {
            command: line.clone(),
            source,
        });
        let pumped = if abandoned { Ok(Ok(())) } else { pump.join() };
        let deleted = self.delete(id);
        let status = status?;
        let output_tail: Vec<String> = tail.into();
        if let Ok(Err(source)) = pumped {
            return Err(PathError {
                action: "read the output of",
                path: PathBuf::from(&self.command),
                source,
            }
            .into());
        }
        if let Some(why) = killed {
            let err = match why {
                Kill::Deadline => RuntimeError::Timeout {
                    command: line,
                    after: timeout.unwrap_or_default(),
                    output: output_tail,
                },
                Kill::Cancelled => RuntimeError::Cancelled { command: line },
            };
            return Err(match deleted {
                Err(cleanup) => RuntimeError::Cleanup {
                    error: Box::new(err),
                    cleanup: Box::new(cleanup),
                },
                Ok(()) => err,
            });
        }
        deleted?;
        if !status.success() {
            let errors = runtime_errors(&log)?;
            if !errors.is_empty() {
                return Err(RuntimeError::Runtime {
                    command: line,
                    status: status.to_string(),
                    log: tail_str(&errors.join("\n"), ERROR_BYTES),
                    output: output_tail,
                });
            }
        }
        Ok(RunExit {
            status,
            output_tail,
        })
    }

    /// Passes the container's output lines on as they come, keeping the last [`TAIL_LINES`],
    /// until the output ends; past `deadline`, or once `cancelled`, kills the container, then
    /// the runtime, and at last gives up on a pipe something still holds.
    fn watch(
        &self,
        id: &str,
        child: &mut std::process::Child,
        rx: &mpsc::Receiver<String>,
        deadline: Option<Instant>,
        cancelled: &dyn Fn() -> bool,
        output: &mut dyn FnMut(&str),
    ) -> Watched {
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let mut killed: Option<Kill> = None;
        let mut killed_at: Option<Instant> = None;
        let mut abandoned = false;
        const POLL: Duration = Duration::from_millis(100);
        let mut checked = Instant::now();
        loop {
            match rx.recv_timeout(POLL) {
                Ok(l) => {
                    output(&l);
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(l);
                    // A command that never stops talking is still timed and stopped.
                    if checked.elapsed() < POLL {
                        continue;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            checked = now;
            let why = if deadline.is_some_and(|d| now >= d) {
                Some(Kill::Deadline)
            } else if cancelled() {
                Some(Kill::Cancelled)
            } else {
                None
            };
            match killed_at {
                None if why.is_some() => {
                    killed = why;
                    killed_at = Some(now);
                    // May fail when the container is not created yet or already gone; the
                    // `delete --force` below is what has to succeed.
                    let _ = self.kill(id, "KILL");
                }
                Some(t) if now >= t + 2 * KILL_GRACE => {
                    // Something (a process stuck in the kernel) still holds the pipe: stop
                    // reading and leave the reader thread to finish on its own.
                    abandoned = true;
                    break;
                }
                Some(t) if now >= t + KILL_GRACE => {
                    // The runtime did not exit after its container was killed: kill it, and
                    // the container with it.
                    let _ = child.kill();
                    let _ = self.delete(id);
                }
                _ => {}
            }
        }
        Watched {
            tail,
            killed,
            abandoned,
        }
    }
}

/// What [`Runtime::watch`] saw.
struct Watched {
    tail: VecDeque<String>,
    /// Why the container was killed, if it was.
    killed: Option<Kill>,
    /// The output pipe was given up on.
    abandoned: bool,
}

/// Why [`Runtime::watch`] killed a container.
#[derive(Clone, Copy)]
enum Kill {
    /// It ran past its deadline.
    Deadline,
    /// The caller asked it to stop.
    Cancelled,
}

/// Spawns `cmd` with stdout and stderr on one pipe, returning its read end.
fn spawn_merged(
    mut cmd: Command,
    line: &str,
) -> Result<(std::process::Child, std::os::fd::OwnedFd), RuntimeError> {
    let (reader, writer) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
            RuntimeError::Spawn {
                command: line.to_owned(),
                source: e.into(),
            }
        })?;
    let writer2 = writer.try_clone().map_err(|source| RuntimeError::Spawn {
        command: line.to_owned(),
        source,
    })?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    let spawned = cmd.spawn();
    // The Command holds our copies of the pipe's write end; EOF comes only once they close.
    drop(cmd);
    let child = spawned.map_err(|source| RuntimeError::Spawn {
        command: line.to_owned(),
        source,
    })?;

    Ok((child, reader))
}

/// The error-level messages in a runtime's JSON log (runc: `{"level":"error","msg":…}`; crun
/// writes the same keys). Lines that are not JSON count as errors: something went wrong.
/// How an exec ended, as `docker exec` reports it: the process's code; when the runtime
/// could not start it, 127 for a command not found, 126 for one that cannot be executed
/// (or any other refusal), with the runtime's message.
pub fn exec_outcome(status: ExitStatus, log: &Path) -> (i32, Option<String>) {
    let code = exit_code(status);
    let errors = runtime_errors(log).unwrap_or_default();
    if code == 0 || errors.is_empty() {
        return (code, None);
    }
    let text = errors.join("; ");
    let lower = text.to_lowercase();
    let code = if lower.contains("not found") || lower.contains("no such file or directory") {
        127
    } else {
        126
    };
    (code, Some(text))
}

pub(crate) fn runtime_errors(log: &Path) -> Result<Vec<String>, RuntimeError> {
    let text = match fs::read(log) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PathError {
                action: "read",
                path: log.to_path_buf(),
                source,
            }
            .into());
        }
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => {
                let level = v.get("level").and_then(|x| x.as_str()).unwrap_or("error");
                matches!(level, "error" | "fatal" | "panic").then(|| {
                    v.get("msg")
                        .and_then(|x| x.as_str())
                        .unwrap_or(l)
                        .to_string()
                })
            }
            Err(_) => Some(l.to_string()),
        })
        .collect())
}

/// Reads `r` to EOF, sending each line (`\n` or `\r` terminated, at most [`MAX_LINE`] bytes).
pub(crate) fn pump_lines(mut r: File, tx: &mpsc::Sender<String>) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut after_cr = false;
    let send = |line: &mut Vec<u8>| {
        // The receiver only goes away when the caller panicked; nothing to do then.
        let _ = tx.send(String::from_utf8_lossy(line).into_owned());
        line.clear();
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in &buf[..n] {
            match b {
                b'\n' => {
                    if !(after_cr && line.is_empty()) {
                        send(&mut line);
                    }
                    after_cr = false;
                }
                b'\r' => {
                    if !line.is_empty() {
                        send(&mut line);
                    }
                    after_cr = true;
                }
                _ => {
                    after_cr = false;
                    line.push(b);
                    if line.len() >= MAX_LINE {
                        send(&mut line);
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        send(&mut line);
    }
    Ok(())
}
