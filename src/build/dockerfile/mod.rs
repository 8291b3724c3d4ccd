//! The Dockerfile front end, a port of BuildKit's (`frontend/dockerfile/{parser,instructions,
//! shell}`): text → [`parser::Ast`] (nodes with line and column spans) → [`Dockerfile`] (typed
//! instructions grouped into stages, plus the ARGs before the first FROM).
//!
//! Everything here is pure: it reads the `&str` it is given and nothing else. Every error is a
//! [`DockerfileError`] that renders as `FILE:LINE:COL: message`, with the file name the caller
//! chose (`Dockerfile`, `ci/Dockerfile.arm`). Variable expansion is not done while parsing: the
//! builder calls [`Instruction::expand`] with the environment in force at each instruction.
//!
//! ```
//! use dts::build::dockerfile::{Command, Dockerfile};
//!
//! let df = Dockerfile::parse("Dockerfile", "FROM alpine AS base\nRUN apk add curl\n").unwrap();
//! assert_eq!(df.stages[0].name.as_ref().unwrap().value, "base");
//! assert!(matches!(df.stages[0].instructions[0].command, Command::Run(_)));
//! let err = Dockerfile::parse("ci/Dockerfile.arm", "FROM a\nFORM b\n").unwrap_err();
//! assert_eq!(err.to_string(), "ci/Dockerfile.arm:2:1: unknown instruction: FORM (did you mean FROM?)");
//! ```

pub mod duration;
pub mod error;
pub mod instructions;
pub mod parser;
pub mod shell;

#[cfg(test)]
mod conformance;

pub use error::{DockerfileError, ErrorKind, Position, Span};
pub use instructions::mount::{MountSpec, MountType, Sharing, parse_mount};
pub use instructions::{
    Add, ArgDef, Command, CommandLine, Copy, Dockerfile, Expander, HealthConfig, Healthcheck,
    InlineSource, Instruction, KeyValue, OnBuild, Run, Stage, parse_onbuild_trigger,
};
pub use parser::{Ast, Heredoc, Node, Word, parse};
pub use shell::{Env, ExpandError, Lex, NoEnv};
