//! Robot profiles, `robot.yaml` and stack files: what a robot has and what a deploy runs.
//!
//! Owns the YAML formats of `profiles/robots/<CONFIGURATION>.yaml`, `/etc/dt-agent/robot.yaml`
//! ([`robot`]) and `profiles/stacks/<NAME>.yaml` / user stack files ([`stack`]), as
//! docs/formats.md specifies them. Parsing is pure (`from_str`,
//! `parse`); loading reads one file and nothing else. The shipped profiles are embedded, so both
//! binaries work from anywhere. Turning roles into device nodes on a robot is
//! `agent::devices`, not this module: nothing here looks at `/dev`.
//!
//! Every error names the file and the key path of the offending value
//! (`robot.yaml: devices.motors.nodez: unknown key`), and every one of them is the user's input
//! at fault (exit 2, [`ProfileError::is_bad_input`]) except a file that cannot be read.

pub mod dotenv;
pub mod interpolate;
mod locate;
pub mod robot;
pub mod stack;
mod yaml;

pub use robot::{MountSpec, NodeSpec, RobotConfig, RobotProfile, RoleSpec, effective_roles};
pub use stack::{Stack, StackSource, resolve_stack_arg};

use crate::util::fs::PathError;

/// A profile, robot.yaml or stack file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Not YAML at all; the message carries the parser's line and column.
    #[error("{file}: {message}")]
    Syntax {
        /// Which file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// Valid YAML, but not a valid document of its kind.
    #[error("{}", invalid_text(.file, .pos, .key, .message, .hint.as_deref()))]
    Invalid {
        /// Which file.
        file: String,
        /// `(line, column)` in the file, 1-based, where the key was written (stack files).
        pos: Option<(usize, usize)>,
        /// Dotted key path of the offending value (`services.core.volumes[1]`); empty for the
        /// document itself.
        key: String,
        /// What is wrong with it.
        message: String,
        /// The fix, where there is an obvious one.
        hint: Option<String>,
    },
    /// No profile ships for this configuration.
    #[error("unknown robot configuration `{name}` (known: {})", .known.join(", "))]
    UnknownConfiguration {
        /// The name asked for.
        name: String,
        /// The configurations that ship.
        known: Vec<String>,
    },
    /// `--stack NAME` names no shipped stack.
    #[error(
        "unknown stack `{name}` (known: {}); a stack file is given as a path containing `/` or ending in `.yaml`",
        .known.join(", ")
    )]
    UnknownStack {
        /// The name asked for.
        name: String,
        /// The stacks that ship.
        known: Vec<String>,
    },
    /// `--set SERVICE=IMAGE` names a service the stack does not have.
    #[error("--set: the stack has no service `{service}` (services: {})", .known.join(", "))]
    UnknownService {
        /// The service asked for.
        service: String,
        /// The stack's services.
        known: Vec<String>,
    },
    /// `--set` argument without `=`, or with an empty side.
    #[error("--set `{arg}`: expected SERVICE=IMAGE")]
    BadSet {
        /// The argument as given.
        arg: String,
    },
}

impl ProfileError {
    /// Whether the user's input is at fault (exit 2); an unreadable file is exit 1.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ProfileError::Io(_))
    }

    /// The fix, when the error knows one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ProfileError::Invalid { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn invalid(file: &str, key: &str, message: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            file: file.to_string(),
            pos: None,
            key: key.to_string(),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds where in the file's `text` the error's key was written, when it can be found.
    pub(crate) fn located(mut self, positions: &locate::Positions) -> ProfileError {
        if let ProfileError::Invalid { key, pos, .. } = &mut self
            && pos.is_none()
        {
            *pos = positions.find(key);
        }
        self
    }

    pub(crate) fn with_hint(mut self, text: impl Into<String>) -> ProfileError {
        if let ProfileError::Invalid { hint, .. } = &mut self {
            *hint = Some(text.into());
        }
        self
    }
}

fn invalid_text(
    file: &str,
    pos: &Option<(usize, usize)>,
    key: &str,
    message: &str,
    hint: Option<&str>,
) -> String {
    // `FILE:LINE:COL:` as compilers and compose print it, so editors jump to the key.
    let file = match pos {
        Some((l, c)) => format!("{file}:{l}:{c}"),
        None => file.to_string(),
    };
    let mut s = if key.is_empty() {
        format!("{file}: {message}")
    } else {
        format!("{file}: {key}: {message}")
    };
    // The CLI prints one line per error; the hint rides on it rather than being lost.
    if let Some(h) = hint {
        s.push_str("; hint: ");
        s.push_str(h);
    }
    s
}
