//! The daemon's requests and answers: what `dt-agent run|ps|…` send over the robot's control
//! socket and what the laptop relays through `dt-agent serve` (docs/wire.md, "Daemon
//! requests"). One JSON [`Request`] per line; the answer is `{"ok": …}` holding the typed
//! answer the request's doc names (see [`Answer`]), or `{"error": …}` holding a
//! [`RemoteError`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::container::{Change, ContainerConfig, ContainerInfo, VolumeInfo};
use super::names::{ContainerName, Signal, VolumeName};
use super::release::{DeployOutcome, ReleaseRecord, ReleaseSpec};

/// Where `dt-agent` keeps its state on a robot unless `DT_AGENT_ROOT` says otherwise: part of
/// the contract, as provisioning waits for the daemon's socket there.
pub const DEFAULT_ROOT: &str = "/var/lib/dt-agent";

/// The daemon's socket: this file name under the agent's state directory.
pub const SOCKET: &str = "daemon.sock";

/// A request to the daemon. Every name in it is a checked type (`api::names`): a request
/// naming `../x` does not decode.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a container, and start it unless `start` is false.
    Create {
        /// What to create.
        config: Box<ContainerConfig>,
        /// Start it too.
        start: bool,
    },
    /// Start a container.
    Start {
        /// Its name.
        name: ContainerName,
    },
    /// Stop a container.
    Stop {
        /// Its name.
        name: ContainerName,
        /// Seconds before SIGKILL.
        timeout: Option<u64>,
    },
    /// Signal a container.
    Kill {
        /// Its name.
        name: ContainerName,
        /// The signal (`TERM`, `SIGKILL`, `9`).
        signal: Signal,
    },
    /// Remove a container.
    Rm {
        /// Its name.
        name: ContainerName,
        /// Kill it first if it runs.
        force: bool,
    },
    /// List containers.
    Ps {
        /// Exited ones too.
        all: bool,
    },
    /// One container.
    Inspect {
        /// Its name.
        name: ContainerName,
    },
    /// A container's output.
    Logs {
        /// Its name.
        name: ContainerName,
        /// Keep streaming new lines.
        follow: bool,
        /// Only the last N lines kept.
        tail: Option<usize>,
        /// Stop following when the container has exited (and report its code).
        until_exit: bool,
        /// Only lines stamped at or after this instant (RFC 3339, UTC, nanoseconds: what
        /// [`crate::api::LogLine::time`] holds). Absent from older clients; an older daemon
        /// ignores it, so the laptop filters too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// Only lines stamped before this instant; a follower stops once the clock passes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    /// What a container changed.
    Diff {
        /// Its name.
        name: ContainerName,
    },
    /// Named volumes.
    VolumeLs,
    /// Create a named volume.
    VolumeCreate {
        /// Its name.
        name: VolumeName,
    },
    /// Remove a named volume.
    VolumeRm {
        /// Its name.
        name: VolumeName,
    },
    /// The runtime in use and its version.
    Runtime,
    /// Apply a release; answers a `DeployOutcome` (also when it rolled back). Waits for a
    /// deploy or rollback in progress.
    Deploy {
        /// What to run.
        spec: Box<ReleaseSpec>,
        /// Answer as soon as every service runs (state `probation`) instead of when the
        /// release is committed or rolled back; the daemon finishes probation by itself either
        /// way. Absent from older clients: they wait.
        #[serde(default)]
        detach: bool,
        /// Do not wait for containers that hold their update lock (`--force`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// The client takes `notice` lines before the answer (why the deploy waits). Absent
        /// from older clients: they get none.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        notices: bool,
    },
    /// Every release, oldest first (`ReleaseRecord`s).
    History,
    /// Switch back to the previous release, or to `to`; answers a `DeployOutcome`.
    Rollback {
        /// The release to go back to (default: the current one's previous).
        to: Option<u64>,
    },
    /// The current release (`ReleaseRecord`, or null).
    Release,
    /// Run a command in a running container, as `docker exec` does. The client's stdin,
    /// stdout and stderr travel with the request line as file descriptors (`SCM_RIGHTS`;
    /// without `tty`), so the streams are the process's own. Answered by [`ExecReply`]s:
    /// `started` (with a `tty`, carrying the terminal's master as a file descriptor), then
    /// `exit`. Daemons before wire 2.5 answer `bad request`.
    Exec {
        /// What to run.
        spec: ExecSpec,
    },
    /// Start a created or exited container with the client attached, as `docker start -a`
    /// (and so `docker run -it`) does: the client's stdin (or /dev/null), stdout and stderr
    /// travel with the request line as file descriptors and the container's shim copies the
    /// process's output to them as well as to its log, and the client's input to the process
    /// (to its terminal with `tty`). Answered by [`ExecReply`]s: `started` (with a `tty`,
    /// carrying a duplicate of the terminal's master, for its window size), then `exit` once
    /// the container has exited (and, with `auto_remove`, is removed). Daemons before wire
    /// 2.6 answer `bad request`.
    Attach {
        /// The container.
        name: ContainerName,
        /// The terminal's size at start (rows, columns), for a container with a `tty`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<(u16, u16)>,
    },
}

/// What `exec` runs, and how (`docker exec`'s flags). The process joins the container's
/// namespaces and cgroup with the container's own process settings (capabilities, seccomp,
/// no_new_privileges, AppArmor, rlimits); only the command, user, working directory and
/// added environment differ.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The container.
    pub name: ContainerName,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// A pseudo-terminal: stdout and stderr merge, Ctrl-C is a byte to its line discipline.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open (`-i`); otherwise the process reads /dev/null.
    #[serde(default)]
    pub interactive: bool,
    /// `user[:group]`, names looked up in the container (default: the container's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `K=V` added to (or replacing in) the container's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The working directory (default: the container's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The terminal's size at start (rows, columns), with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<(u16, u16)>,
}

/// The daemon's answers to [`Request::Exec`], one JSON line each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecReply {
    /// The process was started (with a tty: its terminal's master comes with this line).
    Started,
    /// The process ended with this code (`128 + n` for signal `n`; 126 when it could not be
    /// executed, 127 when the command was not found, as Docker says).
    Exit(i32),
    /// Refused or failed before starting.
    Error(RemoteError),
}

/// The answer to [`Request::Runtime`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// The runtime's command (`/usr/bin/runc`).
    pub command: String,
    /// Its version line.
    pub version: String,
}

/// A typed answer: what the `ok` of a request decodes into. `()` is the `null` of `kill`, `rm`
/// and `volume rm`.
pub trait Answer: DeserializeOwned {}
impl Answer for () {}
impl Answer for ContainerInfo {}
impl Answer for Vec<ContainerInfo> {}
impl Answer for Vec<Change> {}
impl Answer for VolumeInfo {}
impl Answer for Vec<VolumeInfo> {}
impl Answer for RuntimeInfo {}
impl Answer for DeployOutcome {}
impl Answer for Vec<ReleaseRecord> {}
impl Answer for Option<ReleaseRecord> {}

/// An `ok` value that is not the answer its request has: the peer's fault (an agent of
/// another version), never the request's.
#[derive(Debug, thiserror::Error)]
#[error("dt-agent answered with something this version does not read: {0}")]
pub struct AnswerError(#[source] serde_json::Error);

/// Decodes an `ok` value into the answer a request has.
pub fn decode<T: Answer>(value: serde_json::Value) -> Result<T, AnswerError> {
    serde_json::from_value(value).map_err(AnswerError)
}

/// What kind of failure a [`RemoteError`] is: how the laptop and `dt-agent` exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request was wrong (exit 2).
    BadInput,
    /// The robot failed (exit 1): also what an answer without a class means.
    #[default]
    Failed,
    /// The container, image or release named does not exist (exit 1).
    NotFound,
}

/// A failed request, as the other end sees it: the error's message, its class and its causes
/// (outermost first), so the laptop can print the robot's whole chain and exit as the robot
/// classified it. [`std::error::Error::source`] walks the causes.
///
/// Wire form (unchanged since the first daemon, `causes` added in wire protocol 2.2 and left
/// out when empty): `{"message": …, "bad_input": bool, "not_found": bool, "causes": […]}`.
/// An answer without the flags (no agent sends one, but a hand-written one might) is
/// [`ErrorClass::Failed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RemoteErrorWire", into = "RemoteErrorWire")]
pub struct RemoteError {
    message: String,
    bad_input: bool,
    not_found: bool,
    cause: Option<Box<RemoteCause>>,
}

impl RemoteError {
    /// An error of `class` saying `message`, without causes.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> RemoteError {
        RemoteError {
            message: message.into(),
            bad_input: class == ErrorClass::BadInput,
            not_found: class == ErrorClass::NotFound,
            cause: None,
        }
    }

    /// `err` as the other end will see it: its message and its chain of sources. A source
    /// whose text its parent's message already holds (a `{source}` in the message) is
    /// left out, as `dts` prints chains.
    pub fn from_error(class: ErrorClass, err: &(dyn std::error::Error + 'static)) -> RemoteError {
        let message = err.to_string();
        let mut causes = Vec::new();
        let mut last = message.clone();
        let mut next = err.source();
        while let Some(e) = next {
            let text = e.to_string();
            if !last.contains(&text) {
                causes.push(text.clone());
            }
            last = text;
            next = e.source();
        }
        RemoteError::new(class, message).with_causes(causes)
    }

    /// The same error with `causes` (outermost first) instead of its own.
    pub fn with_causes(mut self, causes: impl IntoIterator<Item = String>) -> RemoteError {
        let causes: Vec<String> = causes.into_iter().collect();
        self.cause = causes.into_iter().rev().fold(None, |next, message| {
            Some(Box::new(RemoteCause { message, next }))
        });
        self
    }

    /// What went wrong, naming the thing.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Its class.
    pub fn class(&self) -> ErrorClass {
        if self.bad_input {
            ErrorClass::BadInput
        } else if self.not_found {
            ErrorClass::NotFound
        } else {
            ErrorClass::Failed
        }
    }

    /// Whether the request was at fault (exit 2), not the robot.
    pub fn is_bad_input(&self) -> bool {
        self.bad_input
    }

    /// Whether the thing named does not exist.
    pub fn is_not_found(&self) -> bool {
        self.not_found
    }

    /// The causes, outermost first.
    pub fn causes(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut next = self.cause.as_deref();
        while let Some(c) = next {
            out.push(c.message.as_str());
            next = c.next.as_deref();
        }
        out
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

/// One cause of a [`RemoteError`]: a message and the cause below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCause {
    message: String,
    next: Option<Box<RemoteCause>>,
}

impl std::fmt::Display for RemoteCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next.as_deref().map(|c| c as _)
    }
}

/// [`RemoteError`]'s serde shape.
#[derive(Serialize, Deserialize)]
struct RemoteErrorWire {
    message: String,
    #[serde(default)]
    bad_input: bool,
    #[serde(default)]
    not_found: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    causes: Vec<String>,
}

impl From<RemoteErrorWire> for RemoteError {
    fn from(w: RemoteErrorWire) -> RemoteError {
        RemoteError {
            message: w.message,
            bad_input: w.bad_input,
            not_found: w.not_found,
            cause: None,
        }
        .with_causes(w.causes)
    }
}

impl From<RemoteError> for RemoteErrorWire {
    fn from(e: RemoteError) -> RemoteErrorWire {
        let causes = e.causes().into_iter().map(String::from).collect();
        RemoteErrorWire {
            message: e.message,
            bad_input: e.bad_input,
            not_found: e.not_found,
            causes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_shape_and_gain_causes() {
        // What every daemon so far sends: parsed, and written back byte for byte.
        let old = r#"{"message":"no container `x`","bad_input":false,"not_found":true}"#;
        let e: RemoteError = serde_json::from_str(old).unwrap();
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert!(e.causes().is_empty());
        assert_eq!(serde_json::to_string(&e).unwrap(), old);
        // Without a class: failed.
        let bare: RemoteError = serde_json::from_str(r#"{"message":"m"}"#).unwrap();
        assert_eq!(bare.class(), ErrorClass::Failed);
        // With causes: they round-trip and are the error's sources.
        let e = RemoteError::new(ErrorClass::BadInput, "top")
            .with_causes(["middle".to_string(), "bottom".to_string()]);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"message":"top","bad_input":true,"not_found":false,"causes":["middle","bottom"]}"#
        );
        let back: RemoteError = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        let chain: Vec<String> =
            std::iter::successors(Some(&back as &dyn std::error::Error), |e| e.source())
                .map(|e| e.to_string())
                .collect();
        assert_eq!(chain, ["top", "middle", "bottom"]);
    }

    #[test]
    fn a_chain_leaves_out_what_its_parent_said() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner(#[source] Leaf);
        #[derive(Debug, thiserror::Error)]
        #[error("leaf")]
        struct Leaf;
        let e = RemoteError::from_error(ErrorClass::Failed, &Outer(Inner(Leaf)));
        assert_eq!(e.message(), "outer: inner");
        assert_eq!(e.causes(), ["leaf"]);
    }
}
