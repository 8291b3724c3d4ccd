//! `dts fleet discover`: rendering of what `discover` hears.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::super::table::{Style, Table, stdout_width};
use super::super::{Exit, Printer};
use crate::discover::{self, BrowseOptions, Browser, Change, Robot, Status};

/// `dts fleet discover` flags.
#[derive(Args, Debug)]
pub struct DiscoverArgs {
    /// Listen this many seconds (default 3; with --watch, until interrupted)
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Only robots of this type (duckiebot, watchtower, duckiedrone…)
    #[arg(long = "type", value_name = "T")]
    robot_type: Option<String>,
    /// One JSON document on stdout: [{hostname, type, configuration, status, addresses,
    /// agent, …}]; with --watch, one JSON line per change: {event, robot}
    #[arg(long)]
    json: bool,
    /// Keep listening: show robots as they appear, change and leave
    #[arg(long)]
    watch: bool,
    /// Do not listen to mDNS (UDP pings only)
    #[arg(long, conflicts_with = "no_udp")]
    no_mdns: bool,
    /// Do not ping on UDP 11411 (mDNS only)
    #[arg(long)]
    no_udp: bool,
    /// Ping on container bridges and veths too (docker*, br-*, veth*, virbr*…), e.g. to
    /// find virtual robots
    #[arg(long)]
    all_interfaces: bool,
}

pub(super) fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "expected a number of seconds (0 < S <= 86400), got `{s}`"
        )),
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) fn run(args: &DiscoverArgs, p: &Printer) -> Result<Exit> {
    let opts = BrowseOptions {
        mdns: !args.no_mdns,
        udp: !args.no_udp,
        all_interfaces: args.all_interfaces,
        live: args.watch,
        ..BrowseOptions::default()
    };
    if args.watch {
        return watch(args, &opts, p);
    }
    let found = discover::discover(&opts, args.timeout.unwrap_or(DEFAULT_TIMEOUT))?;
    for w in &found.warnings {
        p.info(&format!("warning: {w}"));
    }
    let robots: Vec<Robot> = found
        .robots
        .into_iter()
        .filter(|r| wanted(args, r))
        .collect();
    if args.json {
        p.json(&robots);
    } else if robots.is_empty() {
        p.info("No robots found.");
    } else {
        p.out(&table(&robots));
    }
    Ok(Exit::Ok)
}

fn wanted(args: &DiscoverArgs, r: &Robot) -> bool {
    match &args.robot_type {
        None => true,
        Some(t) => r
            .robot_type
            .as_deref()
            .is_some_and(|rt| rt.eq_ignore_ascii_case(t)),
    }
}

/// `--watch`: a table redrawn in place on a terminal, else one line (or JSON line) per change.
fn watch(args: &DiscoverArgs, opts: &BrowseOptions, p: &Printer) -> Result<Exit> {
    let mut b = Browser::start(opts)?;
    let redraw = !args.json && std::io::stdout().is_terminal();
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut shown: BTreeMap<String, Robot> = BTreeMap::new();
    let mut printed: BTreeMap<String, String> = BTreeMap::new();
    if redraw {
        p.out(&screen(&shown));
    }
    loop {
        let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        if Instant::now() >= until {
            break;
        }
        for w in b.take_warnings() {
            p.info(&format!("warning: {w}"));
        }
        for change in b.wait(until) {
            let (event, robot) = match change {
                Change::Added(r) | Change::Updated(r) if wanted(args, &r) => {
                    let event = if shown.contains_key(&r.hostname) {
                        "updated"
                    } else {
                        "added"
                    };
                    shown.insert(r.hostname.clone(), r.clone());
                    (event, r)
                }
                Change::Added(r) | Change::Updated(r) | Change::Removed(r) => {
                    match shown.remove(&r.hostname) {
                        Some(_) => ("removed", r),
                        None => continue,
                    }
                }
            };
            if redraw {
                continue;
            }
            if args.json {
                p.out(&serde_json::json!({"event": event, "robot": robot}).to_string());
            } else {
                let sign = match event {
                    "added" => '+',
                    "updated" => '~',
                    _ => '-',
                };
                let text = format!("{sign} {}", line(&robot));
                // Changes that do not show in a line (a service heard twice) are not news.
                if printed.get(&robot.hostname) != Some(&text) {
                    p.out(&text);
                    printed.insert(robot.hostname.clone(), text);
                }
            }
        }
        if redraw {
            p.out(&screen(&shown));
        }
    }
    Ok(Exit::Ok)
}

/// The whole terminal: clear, then the table.
fn screen(shown: &BTreeMap<String, Robot>) -> String {
    let robots: Vec<Robot> = shown.values().cloned().collect();
    let body = if robots.is_empty() {
        "Looking for robots… (Ctrl-C to stop)".to_string()
    } else {
        table(&robots)
    };
    format!("\x1b[H\x1b[2J{body}")
}

/// What the Duckietown shell shows (first column unlabeled: the host name; "ND" for no
/// data), plus the agent.
pub(super) fn table(robots: &[Robot]) -> String {
    let mut t =
        Table::new(&["", "Type", "Model", "Status", "Hostname", "Agent"]).style(Style::Ruled);
    for r in robots {
        t.row([
            r.hostname.clone(),
            r.robot_type.clone().unwrap_or_else(|| "ND".into()),
            r.configuration.clone().unwrap_or_else(|| "ND".into()),
            status(r.status).to_string(),
            host_cell(r),
            agent_cell(r),
        ]);
    }
    t.render(stdout_width()).join("\n")
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Ready => "Ready",
        Status::Booting => "Booting",
        Status::Unknown => "ND",
    }
}

/// `<host>.local` when heard over mDNS, else the address that answered the ping.
fn host_cell(r: &Robot) -> String {
    if r.found_by.contains(&discover::Source::Mdns) {
        format!("{}.local", r.hostname)
    } else {
        r.addresses
            .first()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "ND".into())
    }
}

fn agent_cell(r: &Robot) -> String {
    match &r.agent {
        None => "-".into(),
        Some(a) => format!(
            "{} ({})",
            a.version.as_deref().unwrap_or("ND"),
            a.arch.as_deref().unwrap_or("ND")
        ),
    }
}

/// One robot on one line, for `--watch` off a terminal.
fn line(r: &Robot) -> String {
    let addrs: Vec<String> = r.addresses.iter().map(|a| a.to_string()).collect();
    format!(
        "{} type={} configuration={} status={} addresses={} agent={}",
        r.hostname,
        r.robot_type.as_deref().unwrap_or("ND"),
        r.configuration.as_deref().unwrap_or("ND"),
        status(r.status),
        if addrs.is_empty() {
            "ND".into()
        } else {
            addrs.join(",")
        },
        agent_cell(r).replace(' ', ""),
    )
}
