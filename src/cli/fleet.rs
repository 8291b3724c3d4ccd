//! `dts fleet …`: many robots at once — `discover` (who is on the LAN), `deploy` (one stack
//! to many robots: parallel, canary first, a failure limit), `rollback` (a rollout's robots
//! back to what they ran), `status` (what every robot runs). The work is `ops::fleet`'s;
//! this file parses flags and draws the tables.

mod discover;
pub mod hub;

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};

use super::duckiebot::{ApplyFlags, RunSshFlags, SshFlags};
use super::table::Table;
use super::{Exit, GlobalArgs, Printer, human_size, reporter};
use crate::ops::fleet::{self, FleetRobot, Inventory, Limits, RobotResult, Selection};

/// `dts fleet`.
#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// List the robots on the LAN: Duckietown's mDNS adverts, plus pings on UDP 11411 for
    /// networks that lose multicast
    Discover(discover::DiscoverArgs),
    /// Deploy a stack to many robots at once (each as `dts duckiebot deploy` would), canary
    /// first if asked; the rollout is recorded for `dts fleet rollback`
    Deploy(Box<DeployArgs>),
    /// Put every robot of a rollout (default: the last `dts fleet deploy`) back on the
    /// release it ran before; nothing is transferred
    Rollback(RollbackArgs),
    /// Every robot's release, health, agent, free disk and last deploy
    Status(StatusArgs),
    /// A lab hub: an OCI registry robots fetch large layers from (`deploy --via`)
    #[command(subcommand)]
    Hub(hub::FleetHubCmd),
}

/// Which robots (docs/cli.md, "Fleet").
#[derive(Args, Debug, Clone)]
pub struct Choose {
    /// Robots by name (`[user@]host[:port]`, a `dts sim`, or a name of the inventory)
    robots: Vec<String>,
    /// Robots whose names match this pattern (`*`, `?`): the inventory's names, else running
    /// sims and robots heard on the network
    #[arg(short = 'm', long = "match", value_name = "GLOB")]
    pattern: Option<String>,
    /// The robots of this inventory group
    #[arg(short = 'g', long, value_name = "G")]
    group: Option<String>,
    /// The inventory (docs/formats.md, `fleet.yaml`); default ./fleet.yaml when it exists
    #[arg(short = 'i', long, value_name = "FILE")]
    inventory: Option<PathBuf>,
}

/// `dts fleet deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    choose: Choose,
    #[command(flatten)]
    ssh: RunSshFlags,
    /// A stack file, a directory holding a compose file, or a shipped stack's name (as
    /// `dts duckiebot deploy`; an inventory's `stack:` wins for its robot)
    #[arg(short = 'f', long, visible_alias = "file")]
    stack: Option<String>,
    /// Swap one service's image: `SERVICE=IMAGE` (an inventory's `set:` comes after)
    #[arg(long = "set")]
    set: Vec<String>,
    #[command(flatten)]
    apply: ApplyFlags,
    #[command(flatten)]
    limits: LimitFlags,
}

/// How a rollout proceeds.
#[derive(Args, Debug, Clone)]
pub struct LimitFlags {
    /// Robots at once
    #[arg(long, value_name = "N", default_value_t = fleet::schedule::DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..).map(|v| v as usize))]
    max_parallel: usize,
    /// Deploy to the first K robots alone; the rest only once all K committed (passed their
    /// health checks)
    #[arg(long, value_name = "K", default_value_t = 0)]
    canary: usize,
    /// After F robots failed, start no new robot (those not reached keep their release)
    #[arg(long, value_name = "F", value_parser = clap::value_parser!(u16).range(1..).map(|v| v as usize))]
    max_failures: Option<usize>,
}

impl LimitFlags {
    fn limits(&self) -> Limits {
        Limits {
            max_parallel: self.max_parallel,
            canary: self.canary,
            max_failures: self.max_failures,
        }
    }
}

/// `dts fleet rollback`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The rollout (its id, as `dts fleet deploy` printed it); default the last deploy
    rollout: Option<String>,
    #[command(flatten)]
    ssh: SshFlags,
    /// Robots at once
    #[arg(long, value_name = "N", default_value_t = fleet::schedule::DEFAULT_PARALLEL, value_parser = clap::value_parser!(u16).range(1..).map(|v| v as usize))]
    max_parallel: usize,
    /// One JSON document on stdout: {"rollout", "robots": [...]}
    #[arg(long)]
    json: bool,
}

/// `dts fleet status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    choose: Choose,
    #[command(flatten)]
    ssh: RunSshFlags,
    /// Seconds each robot has to answer
    #[arg(long, value_name = "S", default_value = "10", value_parser = discover::parse_seconds)]
    timeout: Duration,
    /// Ask again every few seconds and redraw (until interrupted)
    #[arg(long)]
    watch: bool,
    /// One JSON document on stdout: {"robots": [...]}
    #[arg(long)]
    json: bool,
}

/// Runs a `dts fleet` command.
pub fn run(cmd: &FleetCmd, g: &GlobalArgs, p: &Printer) -> Result<Exit> {
    match cmd {
        FleetCmd::Discover(args) => return discover::run(args, p),
        FleetCmd::Hub(cmd) => return hub::run(cmd, p),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        match cmd {
            FleetCmd::Discover(_) | FleetCmd::Hub(_) => unreachable!("handled above"),
            FleetCmd::Deploy(a) => deploy(a, g, p).await,
            FleetCmd::Rollback(a) => rollback(a, g, p).await,
            FleetCmd::Status(a) => status(a, p).await,
        }
    })
}

/// The robots `c` chooses. Without names, `--match` or an inventory, a bare `dts fleet …`
/// in a directory holding `fleet.yaml` means every robot it lists.
fn choose(c: &Choose) -> Result<Vec<FleetRobot>> {
    Ok(choose_in(c)?.0)
}

/// The robots chosen, and the inventory they were chosen from.
fn choose_in(c: &Choose) -> Result<(Vec<FleetRobot>, Option<Inventory>)> {
    let path = c.inventory.clone().or_else(|| {
        let p = Path::new("fleet.yaml");
        p.is_file().then(|| p.to_path_buf())
    });
    let inventory = path.as_deref().map(Inventory::load).transpose()?;
    let sel = Selection {
        names: c.robots.clone(),
        pattern: c.pattern.clone(),
        group: c.group.clone(),
    };
    let robots = fleet::inventory::choose(&sel, inventory.as_ref(), known_names)?;
    Ok((robots, inventory))
}

/// What `--match` runs over without an inventory: running sims, and what discovery hears in
/// one listen for the whole fleet.
fn known_names() -> Vec<String> {
    let mut names: Vec<String> = crate::sim::list(&crate::paths::dts_home())
        .into_iter()
        .filter(|s| s.is_running())
        .map(|s| s.name)
        .collect();
    let opts = crate::discover::BrowseOptions::default();
    if let Ok(found) = crate::discover::discover(&opts, Duration::from_secs(3)) {
        for r in found.robots {
            if !names.contains(&r.hostname) {
                names.push(r.hostname);
            }
        }
    }
    names
}

async fn deploy(a: &DeployArgs, g: &GlobalArgs, p: &Printer) -> Result<Exit> {
    let (robots, inventory) = choose_in(&a.choose)?;
    let mut how = a.apply.how()?;
    // The inventory's `hub:` unless `--via` says otherwise.
    if let (None, Some(h)) = (&how.hub, inventory.as_ref().and_then(|i| i.hub.as_ref())) {
        let stdin = a.apply.hub_flags().password_stdin();
        how.hub = hub::HubFlags::with(&h.via, h.user.as_deref(), stdin)
            .args(how.pull.registry.insecure || h.insecure)?;
    }
    let ssh = SshFlags::from(&a.ssh).args();
    let d = fleet::FleetDeploy {
        request: how.request("", ssh, a.stack.as_deref(), &a.set)?,
        limits: a.limits.limits(),
    };
    let (rec, results) = fleet::deploy(&robots, &d, reporter(g)).await?;
    Ok(render(
        p,
        how.json,
        &results,
        (!how.dry_run).then_some(&rec.id),
    ))
}

async fn rollback(a: &RollbackArgs, g: &GlobalArgs, p: &Printer) -> Result<Exit> {
    let rollout = fleet::record::Rollout::load(a.rollout.as_deref())?;
    let limits = Limits {
        max_parallel: a.max_parallel,
        ..Limits::default()
    };
    if !a.json {
        p.info(&format!(
            "rolling back rollout {} ({} robot(s), {})",
            rollout.id,
            rollout.robots.len(),
            rollout.started
        ));
    }
    let (rec, results) = fleet::rollback(&rollout, &a.ssh.args(), limits, reporter(g)).await?;
    Ok(render(p, a.json, &results, Some(&rec.id)))
}

/// The table or JSON of a rollout, and its exit code: 0 only when every robot succeeded.
fn render(p: &Printer, json: bool, results: &[RobotResult], id: Option<&String>) -> Exit {
    if json {
        let mut v = serde_json::json!({ "robots": results });
        if let Some(id) = id {
            v["rollout"] = serde_json::Value::String(id.clone());
        }
        p.json(&v);
    } else {
        let mut t = Table::new(&["ROBOT", "RELEASE", "BYTES", "TIME", "STATE", "ERROR"])
            .right(1)
            .right(2)
            .right(3);
        for r in results {
            t.row([
                r.robot.clone(),
                r.release.map_or("-".into(), |n| n.to_string()),
                human_size(r.bytes_sent),
                format!("{:.1}s", r.duration_ms as f64 / 1000.0),
                r.state.clone(),
                r.error.clone().unwrap_or_default().replace('\n', " "),
            ]);
        }
        p.table(&t);
        let ok = results
            .iter()
            .filter(|r| fleet::succeeded(&r.state))
            .count();
        let mut line = format!("{ok} of {} robot(s) succeeded", results.len());
        if let Some(id) = id {
            line.push_str(&format!(
                "; rollout {id} (`dts fleet rollback {id}` undoes it)"
            ));
        }
        p.info(&line);
    }
    if results.iter().all(|r| fleet::succeeded(&r.state)) {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

async fn status(a: &StatusArgs, p: &Printer) -> Result<Exit> {
    let robots = choose(&a.choose)?;
    let ssh = SshFlags::from(&a.ssh).args();
    loop {
        let rows = fleet::status::status(&robots, &ssh, a.timeout).await;
        if a.json {
            p.json(&serde_json::json!({ "robots": rows }));
        } else {
            if a.watch {
                p.out("\x1b[H\x1b[2J");
            }
            p.table(&status_table(&rows));
        }
        if !a.watch {
            let all = rows.iter().all(|r| r.error.is_none());
            return Ok(if all { Exit::Ok } else { Exit::Failed });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn status_table(rows: &[fleet::status::RobotStatus]) -> Table {
    let mut t = Table::new(&[
        "ROBOT",
        "RELEASE",
        "STATE",
        "SERVICES",
        "HEALTH",
        "AGENT",
        "FREE",
        "LAST DEPLOY",
        "ERROR",
    ])
    .right(1);
    for r in rows {
        let dash = || "-".to_string();
        t.row([
            r.robot.clone(),
            r.release.map_or_else(dash, |n| n.to_string()),
            r.state.clone().unwrap_or_else(dash),
            if r.error.is_some() {
                dash()
            } else {
                format!("{}/{} running", r.running, r.services)
            },
            r.health.clone(),
            r.agent_version.clone().unwrap_or_else(dash),
            r.free_bytes.map_or_else(dash, human_size),
            r.last_deploy.clone().unwrap_or_else(dash),
            r.error.clone().unwrap_or_default().replace('\n', " "),
        ]);
    }
    t
}
