//! Release commands on the robot: `dt-agent deploy FILE.json`, `dt-agent history [--json]`,
//! `dt-agent rollback [--to N]`. They talk to `dt-agent daemon` over its control socket; `dts
//! duckiebot deploy|history|rollback` reach the same daemon over SSH and render the same
//! answers ([`print_outcome`], [`print_history`]).
//!
//! Exit codes: 0 committed (or nothing to do), 1 rolled back or failed (the reason on stderr)
//! or the robot failed, 2 a bad spec or request.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;

use super::table::Table;
use super::{Exit, Printer};
use crate::agent::daemon::{Client, ClientError};
use crate::api::{DeployOutcome, ReleaseRecord, ReleaseSpec, ReleaseState};
use crate::oci::Digest;
use crate::ops::verbs::{self, now};

/// Release commands sent to a daemon.
#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Apply a release spec (JSON, as `dts duckiebot deploy` sends it) as a new release: switch
    /// containers in stage order, watch probation, roll back by itself if it fails (exit 1)
    Deploy {
        /// The release spec: `stack`, `services`, `probation` (for tests and offline use)
        file: PathBuf,
        /// Return as soon as every service runs (state `probation`): the daemon then commits
        /// the release or rolls it back by itself (see `dt-agent history`)
        #[arg(short = 'd', long)]
        detach: bool,
        /// Do not wait for containers that hold their update lock
        /// (/data/locks/dt-agent-update.lock): switch now
        #[arg(long)]
        force: bool,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Releases on this robot, oldest first: number, state, created, stack, services
    History {
        /// One JSON document on stdout (`release`, `state`, `created`, `stack`, `services`, …)
        #[arg(long)]
        json: bool,
    },
    /// Switch back to the previous release (or to release N); its images are still here
    Rollback {
        /// The release to go back to (one that was committed once)
        #[arg(long)]
        to: Option<u64>,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

/// Runs a release command against the daemon of the agent at `root`.
pub fn run(c: &ReleaseCommand, root: &Path, printer: &Printer) -> Exit {
    match dispatch(c, root, printer) {
        Ok(exit) => exit,
        Err(e) => {
            printer.error(&e);
            let bad = e.chain().any(|c| {
                c.downcast_ref::<ClientError>()
                    .is_some_and(|c| matches!(c, ClientError::Remote(r) if r.is_bad_input()))
                    || c.is::<serde_json::Error>()
            });
            if bad { Exit::BadInput } else { Exit::Failed }
        }
    }
}

fn dispatch(c: &ReleaseCommand, root: &Path, printer: &Printer) -> Result<Exit> {
    match c {
        ReleaseCommand::Deploy {
            file,
            detach,
            force,
            json,
        } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("read `{}`", file.display()))?;
            let spec: ReleaseSpec = serde_json::from_slice(&bytes)
                .with_context(|| format!("`{}` is not a release spec", file.display()))?;
            let out = now(verbs::deploy_with(
                &mut Client::connect(root)?,
                &spec,
                *detach,
                *force,
                &mut |n| printer.info(&n),
            ))?;
            Ok(print_outcome(printer, &out, *json))
        }
        ReleaseCommand::History { json } => {
            let list = now(verbs::history(&mut Client::connect(root)?))?;
            print_history(printer, &list, *json);
            Ok(Exit::Ok)
        }
        ReleaseCommand::Rollback { to, json } => {
            let out = now(verbs::rollback(&mut Client::connect(root)?, *to))?;
            Ok(print_outcome(printer, &out, *json))
        }
    }
}

/// Prints a deploy's or rollback's outcome and returns its exit: 0 when committed (or
/// unchanged, or on probation: the answer to a detached deploy), 1 when rolled back or failed,
/// with the reason on stderr.
pub fn print_outcome(printer: &Printer, out: &DeployOutcome, json: bool) -> Exit {
    let ok =
        out.unchanged || matches!(out.state, ReleaseState::Committed | ReleaseState::Probation);
    if json {
        printer.json(out);
    } else {
        printer.out(&out.release.to_string());
    }
    if ok {
        printer.info(&out.message);
        Exit::Ok
    } else {
        printer.error(&anyhow::anyhow!("{}", out.message));
        Exit::Failed
    }
}

/// `history --json`: the fields of docs/cli.md and the rest of the record, without the spec.
#[derive(Serialize)]
struct HistoryEntry<'a> {
    release: u64,
    state: ReleaseState,
    created: &'a str,
    stack: &'a str,
    services: &'a std::collections::BTreeMap<String, Digest>,
    current: bool,
    previous: Option<u64>,
    committed_at: Option<&'a str>,
    finished_at: Option<&'a str>,
    reason: Option<&'a str>,
}

/// Prints releases as a table (newest last) or JSON.
pub fn print_history(printer: &Printer, list: &[ReleaseRecord], json: bool) {
    if json {
        let entries: Vec<HistoryEntry<'_>> = list
            .iter()
            .map(|r| HistoryEntry {
                release: r.release,
                state: r.state,
                created: &r.created,
                stack: &r.stack,
                services: &r.services,
                current: r.current,
                previous: r.previous,
                committed_at: r.committed_at.as_deref(),
                finished_at: r.finished_at.as_deref(),
                reason: r.reason.as_deref(),
            })
            .collect();
        printer.json(&entries);
        return;
    }
    for line in history_lines(list, super::table::stdout_width()) {
        printer.out(&line);
    }
}

/// The `history` table for a terminal `width` wide (`None`: never shortened), newest last; a
/// release's reason follows its row on a line of its own, indented under STATE, because it is
/// a sentence, not a column.
pub fn history_lines(list: &[ReleaseRecord], width: Option<usize>) -> Vec<String> {
    let mut t = Table::new(&["RELEASE", "STATE", "CREATED", "STACK", "SERVICES"]);
    for r in list {
        let services: Vec<String> = r
            .services
            .iter()
            .map(|(k, v)| format!("{k}={}", v.short()))
            .collect();
        t.row([
            format!("{}{}", r.release, if r.current { " *" } else { "" }),
            r.state.as_str().to_string(),
            r.created.clone(),
            r.stack.clone(),
            services.join(","),
        ]);
    }
    let mut lines = t.render(width).into_iter();
    let mut out: Vec<String> = lines.next().into_iter().collect();
    let indent = out
        .first()
        .and_then(|h| h.find("STATE"))
        .unwrap_or_default();
    for (r, line) in list.iter().zip(lines) {
        out.push(line);
        if let Some(reason) = &r.reason {
            let text = format!("{}{reason}", " ".repeat(indent));
            out.push(match width {
                Some(w) => super::table::fit(&text, w),
                None => text,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, state: ReleaseState, stack: &str, reason: Option<&str>) -> ReleaseRecord {
        let services = ["interface", "car-interface", "core"]
            .iter()
            .map(|s| (s.to_string(), Digest::of(format!("{s}{n}").as_bytes())))
            .collect();
        ReleaseRecord {
            release: n,
            state,
            created: "2026-12-03T09:41:07Z".into(),
            stack: stack.into(),
            services,
            previous: n.checked_sub(1).filter(|p| *p > 0),
            committed_at: None,
            finished_at: None,
            reason: reason.map(str::to_string),
            current: false,
            spec: ReleaseSpec {
                stack: stack.into(),
                services: Vec::new(),
                probation: std::time::Duration::from_secs(5),
            },
        }
    }

    /// Issue 20: `dts duckiebot history` printed the release number unpadded (a JSON value
    /// ignores `{:<8}`), so its first column was out of line; a long stack name did the same to
    /// the rest.
    #[test]
    fn history_columns_stay_in_line() {
        let mut list: Vec<ReleaseRecord> = (1..=10)
            .map(|n| record(n, ReleaseState::Committed, "duckiebot", None))
            .collect();
        list[8] = record(
            9,
            ReleaseState::RolledBack,
            "lane-following-with-obstacle-avoidance",
            Some("service `core` failed its health check"),
        );
        list[9].current = true;
        let lines = history_lines(&list, None);
        let at = |l: &str, s: &str| l.find(s).unwrap_or_else(|| panic!("`{s}` in `{l}`"));
        let state = at(&lines[0], "STATE");
        let stack = at(&lines[0], "STACK");
        let services = at(&lines[0], "SERVICES");
        let rows: Vec<&String> = lines[1..].iter().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(rows.len(), 10, "{lines:#?}");
        for row in &rows {
            assert!(
                row[state..].starts_with("committed") || row[state..].starts_with("rolled-back"),
                "{lines:#?}"
            );
            assert!(
                row[stack..].starts_with("duckiebot") || row[stack..].starts_with("lane-"),
                "{lines:#?}"
            );
            assert!(row[services..].starts_with("car-interface="), "{lines:#?}");
        }
        assert!(rows[9].starts_with("10 *"), "{lines:#?}");
        // The reason sits under STATE, after its release's row.
        let reason = lines
            .iter()
            .position(|l| l.contains("health check"))
            .unwrap();
        assert!(lines[reason - 1].starts_with("9 "), "{lines:#?}");
        assert_eq!(lines[reason].find("service"), Some(state), "{lines:#?}");
        // A narrow terminal: lines fit, the reason too.
        let narrow = history_lines(&list, Some(60));
        assert!(
            narrow.iter().all(|l| l.chars().count() <= 60),
            "{narrow:#?}"
        );
    }
}
