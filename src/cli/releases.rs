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

use super::{Exit, Printer};
use crate::agent::daemon::{Client, ClientError, Request};
use crate::agent::release::{DeployOutcome, ReleaseRecord, ReleaseSpec, ReleaseState};
use crate::oci::Digest;

/// Release commands sent to a daemon.
#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Apply a release spec (JSON, as `dts duckiebot deploy` sends it) as a new release: switch
    /// containers in stage order, watch probation, roll back by itself if it fails (exit 1)
    Deploy {
        /// The release spec: `stack`, `services`, `probation` (for tests and offline use)
        file: PathBuf,
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
                    .is_some_and(|c| matches!(c, ClientError::Remote(r) if r.bad_input))
                    || c.is::<serde_json::Error>()
            });
            if bad { Exit::BadInput } else { Exit::Failed }
        }
    }
}

fn dispatch(c: &ReleaseCommand, root: &Path, printer: &Printer) -> Result<Exit> {
    match c {
        ReleaseCommand::Deploy { file, json } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("read `{}`", file.display()))?;
            let spec: ReleaseSpec = serde_json::from_slice(&bytes)
                .with_context(|| format!("`{}` is not a release spec", file.display()))?;
            let v = Client::connect(root)?.call(&Request::Deploy {
                spec: Box::new(spec),
            })?;
            let out: DeployOutcome = serde_json::from_value(v)?;
            Ok(print_outcome(printer, &out, *json))
        }
        ReleaseCommand::History { json } => {
            let v = Client::connect(root)?.call(&Request::History)?;
            let list: Vec<ReleaseRecord> = serde_json::from_value(v)?;
            print_history(printer, &list, *json);
            Ok(Exit::Ok)
        }
        ReleaseCommand::Rollback { to, json } => {
            let v = Client::connect(root)?.call(&Request::Rollback { to: *to })?;
            let out: DeployOutcome = serde_json::from_value(v)?;
            Ok(print_outcome(printer, &out, *json))
        }
    }
}

/// Prints a deploy's or rollback's outcome and returns its exit: 0 when committed (or
/// unchanged), 1 when rolled back or failed, with the reason on stderr.
pub fn print_outcome(printer: &Printer, out: &DeployOutcome, json: bool) -> Exit {
    let ok = out.unchanged || out.state == ReleaseState::Committed;
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

/// `history --json`: the fields of cli.md and the rest of the record, without the spec.
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
    printer.out(&format!(
        "{:<9} {:<12} {:<21} {:<20} SERVICES",
        "RELEASE", "STATE", "CREATED", "STACK"
    ));
    for r in list {
        let services: Vec<String> = r
            .services
            .iter()
            .map(|(k, v)| format!("{k}={}", v.short()))
            .collect();
        printer.out(&format!(
            "{:<9} {:<12} {:<21} {:<20} {}",
            format!("{}{}", r.release, if r.current { " *" } else { "" }),
            r.state.as_str(),
            r.created,
            r.stack,
            services.join(",")
        ));
        if let Some(reason) = &r.reason {
            printer.out(&format!("          {reason}"));
        }
    }
}
