//! The command line: clap trees, output, progress rendering, error rendering and exit codes.
//! This is the only code that writes to stdout or stderr.
//!
//! Exit codes (docs/cli.md): 0 ok, 1 the operation failed, 2 usage or input error.

pub mod agent;
pub mod cdi;
pub mod containers;
#[cfg(feature = "workstation")]
pub mod devel;
#[cfg(feature = "workstation")]
pub mod dts;
#[cfg(feature = "workstation")]
pub mod duckiebot;
pub mod exec;
#[cfg(feature = "workstation")]
pub mod fleet_hub;
mod habits;
pub mod releases;
#[cfg(feature = "workstation")]
mod remote_exec;
mod report;
#[cfg(feature = "workstation")]
pub mod sim;
pub mod table;

use std::io::{IsTerminal, Write};

use clap::{Args, ValueEnum};

pub use report::reporter;

/// Flags every command takes.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Less output (errors only)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More output (before the subcommand: after `run`, `-v` is Docker's `--volume`)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// When to colour output
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// How to show progress: bars on a terminal, plain lines, or JSON lines (all on stderr)
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Bars.
    Tty,
    /// Plain lines.
    Plain,
    /// JSON lines.
    Json,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Ok,
    /// 1: the operation failed.
    Failed,
    /// 2: usage or input error.
    BadInput,
    /// A code passed through (a container's).
    Code(u8),
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(match e {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::BadInput => 2,
            Exit::Code(c) => c,
        })
    }
}

/// The one writer of human and machine output.
pub struct Printer {
    quiet: bool,
    color: bool,
}

impl Printer {
    /// A printer for these flags.
    pub fn new(g: &GlobalArgs) -> Printer {
        let color = match g.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        Printer {
            quiet: g.quiet,
            color,
        }
    }

    /// Data for stdout (tables, digests, JSON). A closed pipe ends quietly.
    pub fn out(&self, text: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{text}");
    }

    /// A table on stdout; shortened to the terminal's width only when stdout is a terminal.
    pub fn table(&self, t: &table::Table) {
        for line in t.render(table::stdout_width()) {
            self.out(&line);
        }
    }

    /// A JSON document on stdout.
    pub fn json<T: serde::Serialize>(&self, value: &T) {
        self.out(&serde_json::to_string_pretty(value).expect("values serialise"));
    }

    /// Information for people, on stderr (suppressed by `-q`).
    pub fn info(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// An error with its causes and, where we know one, the fix.
    pub fn error(&self, err: &anyhow::Error) {
        let (red, bold, reset) = if self.color {
            ("\x1b[31m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "")
        };
        let mut chain = err.chain();
        let top = chain.next().map(|e| e.to_string()).unwrap_or_default();
        eprintln!("{red}{bold}error{reset}: {top}");
        let mut last = top;
        for cause in chain {
            let c = cause.to_string();
            // thiserror's `transparent` and `#[from]` wrappers repeat their source's message.
            if last.contains(&c) {
                continue;
            }
            eprintln!("  {bold}Caused by{reset}: {c}");
            last = c;
        }
    }
}

/// Parses the process arguments; on failure prints clap's message and returns the exit
/// (`--help`/`--version` are 0, usage errors 2 as docs/cli.md says, not clap's own codes).
pub fn parse_args<C: clap::Parser>() -> Result<C, Exit> {
    let argv = habits::normalize(&C::command(), std::env::args_os().collect()).map_err(|e| {
        eprintln!("error: {e}");
        Exit::BadInput
    })?;
    C::try_parse_from(argv).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            Exit::BadInput
        } else {
            Exit::Ok
        }
    })
}

/// `dts duckiebot provision`: Docker's stack, adopted, failed as the agent's release and runs
/// under Docker again (docs/cli.md, "Exit codes").
pub const ADOPTION_FAILED: u8 = 3;

/// The exit code for an error: 2 when the user's input is at fault, 3 when an adopted stack
/// failed and Docker runs it again, 1 otherwise.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    use crate::archive::ArchiveError;
    use crate::oci::digest::DigestError;
    use crate::oci::json::JsonError;
    use crate::oci::platform::PlatformError;
    use crate::oci::reference::ReferenceError;
    use crate::store::StoreError;
    for cause in err.chain() {
        #[cfg(feature = "workstation")]
        if let Some(crate::ops::provision::ProvisionError::AdoptionFailed { .. }) =
            cause.downcast_ref()
        {
            return Exit::Code(ADOPTION_FAILED);
        }
        if cause.is::<ReferenceError>()
            || cause.is::<PlatformError>()
            || cause.is::<DigestError>()
            || cause.is::<JsonError>()
            || cause.is::<clap::Error>()
        {
            return Exit::BadInput;
        }
        // `deploy --pull never` and an image neither side holds: the user's choice to fix.
        #[cfg(feature = "workstation")]
        if cause.is::<crate::ops::deploy::NotHeld>()
            || cause.is::<crate::ops::devel::DevelError>()
            || cause.is::<crate::build::duckietown::TagError>()
        {
            return Exit::BadInput;
        }
        #[cfg(feature = "workstation")]
        if let Some(b) = cause.downcast_ref::<crate::build::BuildError>() {
            return if b.is_bad_input() {
                Exit::BadInput
            } else {
                Exit::Failed
            };
        }
        if let Some(p) = cause.downcast_ref::<crate::profile::ProfileError>() {
            return if p.is_bad_input() {
                Exit::BadInput
            } else {
                Exit::Failed
            };
        }
        if let Some(a) = cause.downcast_ref::<ArchiveError>() {
            return if a.is_bad_input() {
                Exit::BadInput
            } else {
                Exit::Failed
            };
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return if s.is_bad_input() {
                Exit::BadInput
            } else {
                Exit::Failed
            };
        }
        // What the robot refused: its class decides, as if it had happened here.
        if let Some(w) = cause.downcast_ref::<crate::wire::WireError>() {
            return if w.is_bad_input() {
                Exit::BadInput
            } else {
                Exit::Failed
            };
        }
        if let Some(r) = cause.downcast_ref::<crate::api::RemoteError>() {
            return if r.is_bad_input() {
                Exit::BadInput
            } else {
                Exit::Failed
            };
        }
        if cause.is::<crate::api::SpecError>() || cause.is::<crate::api::PortSpecError>() {
            return Exit::BadInput;
        }
    }
    Exit::Failed
}

/// Whether progress should be drawn as bars.
fn use_bars(mode: ProgressMode) -> bool {
    match mode {
        ProgressMode::Tty => true,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
        ProgressMode::Plain | ProgressMode::Json => false,
    }
}

pub use crate::util::human_size;
