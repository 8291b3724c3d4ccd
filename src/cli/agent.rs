//! The `dt-agent` command tree. The robot-side commands (serve, daemon, image, run…) arrive
//! with the agent issue; this is the entry point they hang off.

use std::process::ExitCode;

use clap::Parser;

use super::{Exit, GlobalArgs};

/// dt-agent: keeps images and runs containers on a Duckiebot.
#[derive(Parser, Debug)]
#[command(name = "dt-agent", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

/// Runs `dt-agent` with the process arguments.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(_) => Exit::Ok.into(),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                Exit::BadInput.into()
            } else {
                Exit::Ok.into()
            }
        }
    }
}
