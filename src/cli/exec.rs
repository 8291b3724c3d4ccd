//! `exec` and `logs` flags as `docker exec` / `docker logs` spell them, shared by `dt-agent`
//! and `dts duckiebot`, and how a log line is printed (with `--timestamps`, Docker's RFC 3339
//! prefix with nine digits).

use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::api::names::ContainerName;
use crate::api::{ExecSpec, LogLine, SpecError};
use crate::ops::verbs::LogWindow;

/// `exec` flags.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Keep stdin open (attached to the process's stdin)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// A pseudo-terminal: the terminal goes raw, its size follows, Ctrl-C reaches the process
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run as `user[:group]` (names looked up in the container; default: the container's)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Set an environment variable `K=V` (replacing the container's)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container (default: the container's)
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Refused: an exec'd process has exactly the container's privileges
    #[arg(long, hide = true)]
    pub privileged: bool,
    /// The container (or a service of the current release)
    pub container: String,
    /// The command and its arguments (after `--`)
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// What the daemon runs, with the terminal's `size` for `-t`.
    pub fn to_spec(&self, size: Option<(u16, u16)>) -> Result<ExecSpec> {
        if self.privileged {
            return Err(SpecError(
                "--privileged is refused: an exec'd process keeps the container's capabilities, seccomp filter and no_new_privileges, and none can be added".into(),
            )
            .into());
        }
        Ok(ExecSpec {
            name: ContainerName::new(self.container.clone())?,
            cmd: self.command.clone(),
            tty: self.tty,
            interactive: self.interactive,
            user: self.user.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            size: if self.tty { size } else { None },
        })
    }
}

/// `logs` flags.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The container (or a service of the current release)
    pub name: String,
    /// Keep streaming new output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines kept (`all`: every line)
    #[arg(short = 'n', long, value_name = "N|all", value_parser = parse_tail)]
    pub tail: Option<Tail>,
    /// Only lines since this time: RFC 3339 (`2026-01-02T13:23:37Z`), seconds since the
    /// epoch, or a duration back from now (`10m`, `1h30m`)
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines until this time (same forms as --since); a follower stops then
    #[arg(long)]
    pub until: Option<String>,
    /// Prefix each line with the time it was written (RFC 3339, nanoseconds)
    #[arg(short = 't', long)]
    pub timestamps: bool,
}

/// `--tail`'s value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail(pub Option<usize>);

fn parse_tail(s: &str) -> Result<Tail, String> {
    if s == "all" {
        return Ok(Tail(None));
    }
    s.parse::<usize>()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("`{s}` is not a number of lines or `all`"))
}

impl LogsArgs {
    /// `--tail` as the request takes it.
    pub fn tail(&self) -> Option<usize> {
        self.tail.and_then(|t| t.0)
    }

    /// `--since`/`--until` as instants, read against this machine's clock.
    pub fn window(&self) -> Result<LogWindow> {
        let now = crate::util::time::now_nanos();
        let at = |s: &Option<String>, flag: &str| -> Result<Option<String>> {
            s.as_deref()
                .map(|v| {
                    crate::util::time::parse_instant(v, now)
                        .map(|(secs, nanos)| crate::util::time::rfc3339_nanos(secs, nanos))
                        .map_err(|e| SpecError(format!("{flag}: {e}")).into())
                })
                .transpose()
        };
        Ok(LogWindow {
            since: at(&self.since, "--since")?,
            until: at(&self.until, "--until")?,
        })
    }

    /// The printer of a line, with or without its time.
    pub fn printer(&self) -> impl FnMut(LogLine) + Send + use<> {
        let stamped = self.timestamps;
        move |l: LogLine| print_line_as(l, stamped)
    }
}

/// Writes a container's line to our stdout or stderr, as it wrote it; with `stamped`, after
/// its time and a space, as `docker logs -t` does.
pub fn print_line_as(l: LogLine, stamped: bool) {
    let mut bytes = Vec::with_capacity(l.log.len() + 32);
    if stamped {
        bytes.extend_from_slice(l.time.as_bytes());
        bytes.push(b' ');
    }
    bytes.extend_from_slice(l.log.as_bytes());
    let _ = if l.stream == "stderr" {
        let mut e = std::io::stderr().lock();
        e.write_all(&bytes).and_then(|_| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(&bytes).and_then(|_| o.flush())
    };
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Exec {
        #[command(flatten)]
        a: ExecArgs,
    }

    #[derive(Parser, Debug)]
    struct Logs {
        #[command(flatten)]
        a: LogsArgs,
    }

    #[test]
    fn exec_flags_read_as_dockers() {
        let e = Exec::try_parse_from(["x", "c", "-it", "-e", "A=1", "--", "sh", "-c", "exit 7"])
            .unwrap()
            .a;
        assert!(e.interactive && e.tty);
        assert_eq!(e.container, "c");
        assert_eq!(e.command, ["sh", "-c", "exit 7"]);
        let spec = e.to_spec(Some((24, 80))).unwrap();
        assert_eq!(spec.size, Some((24, 80)));
        assert_eq!(spec.env, ["A=1"]);
        let e = Exec::try_parse_from(["x", "-u", "duckie", "-w", "/tmp", "c", "id", "-u"])
            .unwrap()
            .a;
        assert_eq!(e.command, ["id", "-u"]);
        assert_eq!(e.to_spec(Some((1, 1))).unwrap().size, None);
        assert!(Exec::try_parse_from(["x", "c"]).is_err());
        let p = Exec::try_parse_from(["x", "--privileged", "c", "sh"])
            .unwrap()
            .a;
        let err = p.to_spec(None).unwrap_err();
        assert!(err.is::<SpecError>(), "{err}");
    }

    #[test]
    fn logs_flags_read_as_dockers() {
        let l = Logs::try_parse_from(["x", "c", "-f", "-t", "--tail", "all", "--since", "10m"])
            .unwrap()
            .a;
        assert!(l.follow && l.timestamps);
        assert_eq!(l.tail(), None);
        let w = l.window().unwrap();
        assert!(w.since.unwrap().ends_with('Z'));
        assert!(w.until.is_none());
        let l = Logs::try_parse_from(["x", "c", "-n", "5"]).unwrap().a;
        assert_eq!(l.tail(), Some(5));
        assert!(Logs::try_parse_from(["x", "c", "--tail", "some"]).is_err());
        let l = Logs::try_parse_from(["x", "c", "--until", "soon"])
            .unwrap()
            .a;
        assert!(l.window().unwrap_err().is::<SpecError>());
    }
}
