//! OCI runtimes (`runc`, `crun`) as both sides use them: finding the runtime, driving its
//! command line (`create`, also with a terminal, `start`, `run`, `exec`, `state`, `kill`,
//! `delete`, `list`), and the pieces every container of ours shares whoever starts it —
//! Docker's default sandbox ([`spec`]), overlayfs roots ([`overlay`]) and users looked up
//! inside an image ([`user`]).
//!
//! The builder runs RUN steps with it (`build::run`) and the robot's agent runs its containers
//! with it (`agent::container`); neither owns the other's policy.

pub mod advisory;
pub mod overlay;
pub mod spec;
pub mod user;

mod console;
mod foreground;

pub use foreground::exec_outcome;
use foreground::runtime_errors;

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::binfmt::BinfmtError;
use crate::util::fs::PathError;

/// The environment variable that picks the runtime: a name looked up in `PATH` (`runc`, `crun`)
/// or a path.
pub const RUNTIME_ENV: &str = "DTS_RUNTIME";

/// How many lines of output an error or a [`RunOutcome`] keeps.
pub(crate) const TAIL_LINES: usize = 50;

/// A line longer than this is passed on in pieces (a progress bar without newlines must not
/// grow without bound).
pub(crate) const MAX_LINE: usize = 4096;

/// How much of a runtime's stderr or log goes into an error.
pub(crate) const ERROR_BYTES: usize = 2048;

/// How long the runtime gets to exit after the container was killed on timeout.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(10);

/// Runtimes tried in this order when `DTS_RUNTIME` is unset. runc first: crun 1.8 refuses to
/// start containers on hosts with cgroup v1/hybrid hierarchies like Debian 12 VMs.
pub(crate) const RUNTIMES: [&str; 2] = ["runc", "crun"];

/// Directories searched besides `PATH`: runc lives in `/usr/sbin`, which a user's `PATH` often
/// lacks.
pub(crate) const EXTRA_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Why a RUN step could not be carried out. A command that ran and exited non-zero is not an
/// error: see [`RunOutcome::status`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Neither runc nor crun is installed.
    #[error(
        "no OCI runtime found: looked for {} in `{searched}`{skipped}; install one (`apt-get install runc`) or set {RUNTIME_ENV} to its path",
        RUNTIMES.join(" and ")
    )]
    NoRuntime {
        /// The directories searched.
        searched: String,
        /// Why a runtime that was found is not used (empty, or starting with "; ").
        skipped: String,
    },
    /// `DTS_RUNTIME` names nothing executable.
    #[error(
        "{RUNTIME_ENV}=`{value}` is not an executable (a name in PATH or a path): unset it or point it at runc or crun"
    )]
    BadOverride {
        /// The variable's value.
        value: String,
    },
    /// A command could not be started.
    #[error("start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A runtime command (`--version`, `kill`, `delete`, `list`) failed.
    #[error("`{command}` failed ({status}){}", colon_block(stderr))]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// The runtime could not start (or run) the container: the command never ran or was not
    /// found. Its log and the last lines of output are included.
    #[error(
        "`{command}` failed ({status}){}{}",
        colon_block(log),
        output_block(output)
    )]
    Runtime {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// The runtime's error messages.
        log: String,
        /// The last lines of the container's and runtime's output.
        output: Vec<String>,
    },
    /// The command ran longer than allowed and was killed.
    #[error("`{command}` did not finish within {}s and was killed{}", after.as_secs(), output_block(output))]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        after: Duration,
        /// The last lines of output.
        output: Vec<String>,
    },
    /// The caller stopped the command (a RUN beside a step of the build that failed) and it
    /// was killed.
    #[error("`{command}` was stopped and killed: another part of the build failed")]
    Cancelled {
        /// The command line.
        command: String,
    },
    /// A mount failed.
    #[error("mount {fstype} at `{}` (options `{options}`): {source}{hint}", target.display())]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: PathBuf,
        /// The option string.
        options: String,
        /// The error.
        #[source]
        source: io::Error,
        /// What to do about it, if we know.
        hint: &'static str,
    },
    /// An unmount failed; the scratch directory was left in place.
    #[error("unmount `{}`: {source}; unmount it by hand (`umount -l {}`) and remove its directory", target.display(), target.display())]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The RUN's user does not exist in the image.
    #[error("user `{user}`: {reason}")]
    User {
        /// The user spec (`name[:group]`).
        user: String,
        /// What is wrong.
        reason: String,
    },
    /// A path in the image cannot be looked up or used as a mount point.
    #[error("`{path}` in the image: {reason}")]
    ImagePath {
        /// The path inside the image.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The runtime spec could not be built.
    #[error("build the OCI runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    /// The RUN has no command.
    #[error("RUN needs a command")]
    EmptyCommand,
    /// The platform's binaries cannot run here.
    #[error(transparent)]
    Binfmt(#[from] BinfmtError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The step failed, and cleaning up after it failed too.
    #[error("{error}; cleaning up afterwards failed too: {cleanup}")]
    Cleanup {
        /// The first error.
        error: Box<RuntimeError>,
        /// The cleanup error.
        cleanup: Box<RuntimeError>,
    },
}

pub(crate) fn colon_block(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

pub(crate) fn output_block(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\noutput (last {} lines):\n{}",
            lines.len(),
            lines.join("\n")
        )
    }
}

/// The last `max` bytes of `s`, starting at a character boundary.
pub(crate) fn tail_str(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// An OCI runtime client: `command` is runc or crun (same command line), `root` its state
/// directory (`--root`), private to dts so `list` shows only our containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    command: PathBuf,
    root: PathBuf,
}

/// A container as the runtime reports it (`state ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The init process, while there is one.
    pub pid: Option<u32>,
}

/// What an `exec` printed and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Its exit code (`128 + n` for signal `n`); `None` when it was killed on timeout.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

/// How a container run ended.
#[derive(Debug, Clone)]
pub struct RunExit {
    /// The runtime's exit status, which is the container process's (`128 + n` for signal `n`).
    pub status: ExitStatus,
    /// The last lines of output.
    pub output_tail: Vec<String>,
}

impl RunExit {
    /// The exit code: the process's, or `128 + signal` when it was killed.
    pub fn code(&self) -> i32 {
        exit_code(self.status)
    }
}

/// The exit code of a finished process: its own, or `128 + signal` when it was killed.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Looks `name` up the way a shell would, plus the sbin directories; a name with a `/` is a path.
pub(crate) fn find_executable(name: &OsStr) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let path = Path::new(name);
    if path.components().count() > 1 || name.to_string_lossy().contains('/') {
        return is_exec(path).then(|| path.to_path_buf());
    }
    search_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

pub(crate) fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in EXTRA_PATH {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    dirs
}

/// Whether `/sys/fs/cgroup` is the unified (v2) hierarchy alone, not v1 or hybrid.
fn cgroup_v2_only() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // f_type is i64 here, i32 on 32-bit ARM.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs("/sys/fs/cgroup").is_ok_and(|s| s.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// The first of [`RUNTIMES`] that `find` finds and that can run here: crun only on a v2-only
/// cgroup hierarchy.
fn pick_default(
    find: impl Fn(&str) -> Option<PathBuf>,
    v2_only: bool,
) -> Result<PathBuf, RuntimeError> {
    let mut skipped = String::new();
    for n in RUNTIMES {
        let Some(path) = find(n) else { continue };
        if n == "crun" && !v2_only {
            skipped = format!(
                "; {} is there but does not start containers on cgroup v1 or hybrid hosts like this one (set {RUNTIME_ENV}=crun to try anyway)",
                path.display()
            );
            continue;
        }
        return Ok(path);
    }
    Err(RuntimeError::NoRuntime {
        searched: std::env::join_paths(search_dirs())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        skipped,
    })
}

impl Runtime {
    /// A client for `command` (runc or crun) with state under `root`.
    pub fn new(command: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            command: command.into(),
            root: root.into(),
        }
    }

    /// Picks the runtime: `DTS_RUNTIME` when set (a name or a path), else runc, else crun where
    /// the cgroup hierarchy is v2 only (crun refuses v1 and hybrid ones). Its state goes to
    /// `state_dir/<name>` (runc and crun state formats differ).
    pub fn detect(state_dir: &Path) -> Result<Runtime, RuntimeError> {
        let command = match std::env::var_os(RUNTIME_ENV).filter(|v| !v.is_empty()) {
            Some(value) => find_executable(&value).ok_or_else(|| RuntimeError::BadOverride {
                value: value.to_string_lossy().into_owned(),
            })?,
            None => pick_default(|n| find_executable(OsStr::new(n)), cgroup_v2_only())?,
        };
        let name = command
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| OsString::from("runtime"));
        Ok(Runtime {
            root: state_dir.join(name),
            command,
        })
    }

    /// The runtime's executable.
    pub fn command(&self) -> &Path {
        &self.command
    }

    /// The runtime's state directory (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn is_crun(&self) -> bool {
        self.command
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("crun"))
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.command);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// Runs a short runtime command and returns its stdout; stderr goes into the error.
    fn capture(&self, mut cmd: Command) -> Result<String, RuntimeError> {
        let line = command_line(&cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                command: line.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuntimeError::Command {
                command: line,
                status: out.status.to_string(),
                stderr: tail_str(&String::from_utf8_lossy(&out.stderr), ERROR_BYTES),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The first line of `<runtime> --version` (`runc version 1.1.5+ds1`).
    pub fn version(&self) -> Result<String, RuntimeError> {
        let mut cmd = Command::new(&self.command);
        cmd.arg("--version");
        let out = self.capture(cmd)?;
        Ok(out.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Whether the runtime has state for container `id`.
    pub fn exists(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    /// The ids of the containers in this runtime's state directory.
    pub fn list(&self) -> Result<Vec<String>, RuntimeError> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let mut cmd = self.base();
        cmd.args(["list", "-q"]);
        Ok(self
            .capture(cmd)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Sends `signal` (`KILL`, `TERM`…) to the container's init process.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.base();
        cmd.args(["kill", id, signal]);
        self.capture(cmd).map(drop)
    }

    /// Deletes the container, killing it first if it runs (`delete --force`). A container that
    /// does not exist (any more) is not an error.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.exists(id) {
            return Ok(());
        }
        let mut cmd = self.base();
        cmd.args(["delete", "--force", id]);
        match self.capture(cmd) {
            Ok(_) => Ok(()),
            Err(_) if !self.exists(id) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Adds `--log FILE --log-format json` the way this runtime spells it.
    fn with_log(&self, cmd: &mut Command, log: &Path) {
        if self.is_crun() {
            cmd.arg(format!("--log=file:{}", log.display()))
                .arg("--log-format=json");
        } else {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
    }

    /// Turns a failed runtime command into an error carrying the runtime's own messages.
    fn failed(&self, line: String, status: ExitStatus, stderr: &[u8], log: &Path) -> RuntimeError {
        let mut errors = runtime_errors(log).unwrap_or_default();
        let stderr = String::from_utf8_lossy(stderr).trim().to_string();
        if !stderr.is_empty() {
            errors.push(stderr);
        }
        RuntimeError::Runtime {
            command: line,
            status: status.to_string(),
            log: tail_str(&errors.join("\n"), ERROR_BYTES),
            output: Vec::new(),
        }
    }

    /// Creates the bundle's container (`create --bundle BUNDLE --pid-file FILE ID`) without
    /// starting its process: namespaces and cgroup exist, the init waits for [`Runtime::start`].
    /// `stdin`, `stdout` and `stderr` become the container's (the runtime passes them
    /// through); its own messages go to `log`. Returns the container's init pid.
    pub fn create(
        &self,
        bundle: &Path,
        id: &str,
        [stdin, stdout, stderr]: [Stdio; 3],
        log: &Path,
    ) -> Result<u32, RuntimeError> {
        let pid_file = self.prepare_create(bundle, log)?;
        let mut cmd = self.base();
        self.with_log(&mut cmd, log);
        cmd.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id);
        let line = command_line(&cmd);
        let child = cmd
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                command: line.clone(),
                source,
            })?;
        // The container's stdio is the runtime's: its stderr cannot be captured separately,
        // so failures are read from the JSON log.
        let out = child
            .wait_with_output()
            .map_err(|source| RuntimeError::Spawn {
                command: line.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(self.failed(line, out.status, &out.stderr, log));
        }
        read_pid(&pid_file, line)
    }

    /// Before a `create`: the state directory made, a stale pid file and log removed; the pid
    /// file's path.
    fn prepare_create(&self, bundle: &Path, log: &Path) -> Result<PathBuf, RuntimeError> {
        crate::util::fs::create_dir_all(&self.root)?;
        let pid_file = bundle.join("init.pid");
        for stale in [&pid_file, &log.to_path_buf()] {
            match fs::remove_file(stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(PathError {
                        action: "remove",
                        path: stale.clone(),
                        source: e,
                    }
                    .into());
                }
                _ => {}
            }
        }
        Ok(pid_file)
    }

    /// Starts a created container's process.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.base();
        cmd.args(["start", id]);
        self.capture(cmd).map(drop)
    }

    /// The runtime's view of a container: `None` when it has no such container.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        if !self.exists(id) {
            return Ok(None);
        }
        let mut cmd = self.base();
        cmd.args(["state", id]);
        match self.capture(cmd) {
            Ok(out) => {
                let v: serde_json::Value =
                    serde_json::from_str(&out).map_err(|e| RuntimeError::Command {
                        command: format!("{} state {id}", self.command.display()),
                        status: "success".into(),
                        stderr: format!("unreadable state: {e}"),
                    })?;
                Ok(Some(ContainerState {
                    status: v["status"].as_str().unwrap_or("unknown").to_string(),
                    pid: v["pid"].as_u64().map(|p| p as u32).filter(|p| *p != 0),
                }))
            }
            Err(_) if !self.exists(id) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The container init's pid from the pid file a successful `create` (`line`) wrote.
fn read_pid(pid_file: &Path, line: String) -> Result<u32, RuntimeError> {
    let text = fs::read_to_string(pid_file).map_err(|source| PathError {
        action: "read",
        path: pid_file.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| RuntimeError::Command {
        command: line,
        status: "success".into(),
        stderr: format!("pid file `{}` holds `{}`", pid_file.display(), text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::foreground::pump_lines;
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn crun_is_passed_over_on_v1_and_hybrid_hosts_and_the_error_says_so() {
        let only_crun = |n: &str| (n == "crun").then(|| PathBuf::from("/usr/bin/crun"));
        let both = |n: &str| Some(PathBuf::from(format!("/usr/bin/{n}")));
        assert_eq!(
            pick_default(both, false).unwrap(),
            PathBuf::from("/usr/bin/runc")
        );
        assert_eq!(
            pick_default(only_crun, true).unwrap(),
            PathBuf::from("/usr/bin/crun")
        );
        let e = pick_default(only_crun, false).unwrap_err().to_string();
        assert!(e.starts_with("no OCI runtime found"), "{e}");
        assert!(
            e.contains(
                "/usr/bin/crun is there but does not start containers on cgroup v1 or hybrid hosts"
            ),
            "{e}"
        );
        assert!(e.contains("DTS_RUNTIME=crun"), "{e}");
        let none = pick_default(|_| None, false).unwrap_err().to_string();
        assert!(!none.contains("crun is there"), "{none}");
    }

    #[test]
    fn lines_split_on_newline_and_carriage_return() {
        let mut child = Command::new("printf")
            .arg(r"a\nb\r\nc\r50%%\r100%%\n\nlast")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        pump_lines(File::from(OwnedFd::from(out)), &tx).unwrap();
        child.wait().unwrap();
        drop(tx);
        let lines: Vec<String> = rx.into_iter().collect();
        assert_eq!(lines, ["a", "b", "c", "50%", "100%", "", "last"]);
    }
}
