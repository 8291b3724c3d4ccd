//! `dts fleet deploy|rollback|status`: one stack to many robots at once. Robots are chosen
//! by [`inventory`] (names, `--match`, `--group`, `fleet.yaml`), run in the order
//! [`schedule`] allows (parallel, canary first, a failure limit), each doing exactly what
//! `dts duckiebot deploy` does ([`crate::ops::deploy::deploy_on`]); one failing or
//! unreachable robot never stops the others unless the limits say so. Every rollout is
//! recorded ([`record`]) with what each robot ran before, which `dts fleet rollback` goes
//! back to. [`status`] asks every robot what it runs.
//!
//! Progress: each robot's events go through a [`RobotReporter`], which folds the deploy's
//! many units into one line per robot (its phase, its bytes) for `cli/report.rs` to draw.

pub mod inventory;
pub mod record;
pub mod schedule;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::ops::deploy::DeployRequest;
use crate::ops::robot::{self, RobotLink, SshArgs};
use crate::ops::verbs;
use crate::progress::{Event, Reporter};

pub use inventory::{FleetRobot, Inventory, SelectError, Selection};
pub use schedule::Limits;

/// One robot's line of `--json` (docs/cli.md): exactly these fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RobotResult {
    /// The robot's name.
    pub robot: String,
    /// The release it runs after this (`None` when none was made).
    pub release: Option<u64>,
    /// Bytes on the wire to it.
    pub bytes_sent: u64,
    /// From its start to its answer.
    pub duration_ms: u64,
    /// As `dts duckiebot deploy` says it (`committed`, `rolled-back`, `failed`, `unchanged`,
    /// `planned`, `probation`), or `unreachable` (no SSH session or no agent), `skipped` (never
    /// started: a canary failed, or `--max-failures`).
    pub state: String,
    /// Why it did not commit.
    pub error: Option<String>,
    /// The release it ran before (kept for the record, not printed).
    #[serde(skip)]
    pub before: Option<u64>,
}

impl RobotResult {
    fn new(robot: &str, state: &str, error: Option<String>, started: Instant) -> RobotResult {
        RobotResult {
            robot: robot.to_string(),
            release: None,
            bytes_sent: 0,
            duration_ms: started.elapsed().as_millis() as u64,
            state: state.to_string(),
            error,
            before: None,
        }
    }
}

impl schedule::Succeeded for RobotResult {
    fn succeeded(&self) -> bool {
        succeeded(&self.state)
    }
}

/// The states a fleet command exits 0 with: the robot runs what was asked.
pub fn succeeded(state: &str) -> bool {
    matches!(state, "committed" | "unchanged" | "planned" | "probation")
}

/// What `dts fleet deploy` asks of every robot; each robot's inventory variables come on top.
#[derive(Clone, Debug, Default)]
pub struct FleetDeploy {
    /// The stack options every robot shares (its `robot` field is ignored).
    pub request: DeployRequest,
    /// The order's limits.
    pub limits: Limits,
}

/// The request for robot `r`: the shared one with `r`'s stack and `set`s (after the command
/// line's, so the inventory's per-robot values win).
fn request_for(shared: &DeployRequest, r: &FleetRobot) -> DeployRequest {
    let mut req = shared.clone();
    req.robot = r.name.clone();
    if let Some(s) = &r.vars.stack {
        req.stack = Some(s.clone());
    }
    req.sets.extend(r.vars.set.iter().cloned());
    req
}

/// Resolves (off the async threads: a bare name may wait for mDNS) and connects to `r`.
async fn reach(r: &FleetRobot, ssh: &SshArgs) -> Result<RobotLink> {
    let (target, ssh) = (r.target.clone(), ssh.clone());
    let (target, opts) =
        tokio::task::spawn_blocking(move || robot::resolve(&target, &ssh)).await??;
    robot::connect_resolved(&r.name, target, &opts).await
}

/// Reaches `r` and asks which release it runs; a robot that cannot be reached is its
/// result, `unreachable`, already reported.
async fn open(
    r: &FleetRobot,
    ssh: &SshArgs,
    rep: &RobotReporter,
    started: Instant,
) -> Result<(RobotLink, Option<u64>), RobotResult> {
    rep.phase("connecting");
    match reach(r, ssh).await {
        Ok(mut l) => {
            let before = current_release(&mut l).await;
            Ok((l, before))
        }
        Err(e) => Err(rep.done(RobotResult::new(
            &r.name,
            "unreachable",
            Some(error_text(&e)),
            started,
        ))),
    }
}

/// An error and its causes on one line, for a table cell: a cause whose text the line
/// already holds (many errors print their source in their own message) is left out.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// The release `l` runs now, if any.
async fn current_release(l: &mut RobotLink) -> Option<u64> {
    verbs::history(l)
        .await
        .ok()?
        .into_iter()
        .find(|r| r.current)
        .map(|r| r.release)
}

/// Deploys to every robot of `robots` as `d` says; results in `robots`' order. `log` gets
/// one line per robot (see [`RobotReporter`]). The rollout is recorded before it returns.
pub async fn deploy(
    robots: &[FleetRobot],
    d: &FleetDeploy,
    log: Arc<dyn Reporter>,
) -> Result<(record::Rollout, Vec<RobotResult>)> {
    let shared = Arc::new(d.request.clone());
    check_stacks(robots, &shared)?;
    let list: Arc<Vec<FleetRobot>> = Arc::new(robots.to_vec());
    let (l2, s2) = (log.clone(), shared.clone());
    let results = schedule::run(
        robots.len(),
        d.limits,
        move |i| {
            let (list, shared, log) = (list.clone(), s2.clone(), l2.clone());
            async move {
                let r = &list[i];
                deploy_one(r, &request_for(&shared, r), log).await
            }
        },
        |i| task_failed(&robots[i].name),
    )
    .await;
    let results = fill_skipped(robots, results, &*log);
    if let Some(via) = &shared.via {
        let outer = log.clone();
        let warn = move |w: String| outer.event(Event::note(format!("warning: {w}")));
        crate::ops::deploy::finish_hub(via, &*log, &warn).await;
    }
    let rec = record::Rollout::new(
        record::Kind::Deploy,
        None,
        shared.stack.clone(),
        robots,
        &results,
    );
    if !shared.dry_run {
        rec.save()?;
    }
    Ok((rec, results))
}

/// Loads every robot's stack (with its `set`s) once before anything starts, so that a typo
/// or a missing file is bad input (exit 2) for the whole rollout rather than a failure on
/// every robot. The robot's
/// platform is not known yet: `${ARCH}` reads as amd64's here, and the real load is per robot.
fn check_stacks(robots: &[FleetRobot], shared: &DeployRequest) -> Result<()> {
    let platform: crate::oci::Platform = "linux/amd64".parse()?;
    let mut seen: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for r in robots {
        let req = request_for(shared, r);
        let key = (req.stack.clone(), req.sets.clone());
        if seen.contains(&key) {
            continue;
        }
        crate::ops::deploy::load_stack(req.stack.as_deref(), &req.sets, &platform)
            .map_err(|e| SelectError::Usage(format!("robot `{}`: its stack: {e:#}", r.name)))?;
        seen.push(key);
    }
    Ok(())
}

/// A robot whose task panicked: failed, and the rollout goes on.
fn task_failed(robot: &str) -> RobotResult {
    let why = "internal error: its task panicked (a bug in dts)";
    RobotResult::new(robot, "failed", Some(why.into()), Instant::now())
}

/// Results with every never-started robot as `skipped`, saying why.
fn fill_skipped(
    robots: &[FleetRobot],
    results: Vec<Result<RobotResult, schedule::Skipped>>,
    log: &dyn Reporter,
) -> Vec<RobotResult> {
    results
        .into_iter()
        .zip(robots)
        .map(|(r, robot)| {
            r.unwrap_or_else(|why| {
                log.event(Event::note(format!("{}: {why}", robot.name)));
                RobotResult::new(
                    &robot.name,
                    "skipped",
                    Some(why.to_string()),
                    Instant::now(),
                )
            })
        })
        .collect()
}

/// One robot of a fleet deploy: reach it, note its release, [`crate::ops::deploy::deploy_on`].
async fn deploy_one(r: &FleetRobot, req: &DeployRequest, log: Arc<dyn Reporter>) -> RobotResult {
    let started = Instant::now();
    let rep = RobotReporter::new(&r.name, log);
    let (mut l, before) = match open(r, &req.ssh, &rep, started).await {
        Ok(v) => v,
        Err(unreachable) => return unreachable,
    };
    let name = r.name.clone();
    let outer = rep.outer.clone();
    let warn = move |w: String| {
        let w = w
            .strip_prefix(&format!("{name}: "))
            .unwrap_or(&w)
            .to_string();
        outer.event(Event::note(format!("warning: {name}: {w}")));
    };
    let mut res = match crate::ops::deploy::deploy_on(&mut l, req, started, &rep, &warn).await {
        Ok(d) => RobotResult {
            robot: r.name.clone(),
            release: d.summary.release,
            bytes_sent: d.summary.bytes_sent,
            duration_ms: d.summary.duration_ms,
            error: (!succeeded(&d.summary.state)).then(|| {
                d.outcome
                    .as_ref()
                    .and_then(|o| o.reason.clone())
                    .or(d.summary.message.clone())
                    .unwrap_or_else(|| d.summary.state.clone())
            }),
            state: d.summary.state,
            before,
        },
        Err(e) => {
            let mut f = RobotResult::new(&r.name, "failed", Some(error_text(&e)), started);
            f.bytes_sent = l.conn.counters().0;
            f
        }
    };
    res.before = before;
    rep.done(res)
}

/// Rolls every robot of `rollout` that changed release back to the release it ran before
/// (`dts duckiebot rollback --to N` on each, in parallel as `limits` say). Robots the
/// rollout did not change are `skipped`; it is recorded as a rollout of its own.
pub async fn rollback(
    rollout: &record::Rollout,
    ssh: &SshArgs,
    limits: Limits,
    log: Arc<dyn Reporter>,
) -> Result<(record::Rollout, Vec<RobotResult>)> {
    let robots: Vec<FleetRobot> = rollout
        .robots
        .iter()
        .map(|r| FleetRobot {
            name: r.robot.clone(),
            target: r.target.clone(),
            vars: Default::default(),
        })
        .collect();
    let entries = Arc::new(rollout.robots.clone());
    let list = Arc::new(robots.clone());
    let (ssh, l2) = (Arc::new(ssh.clone()), log.clone());
    let results = schedule::run(
        robots.len(),
        limits,
        move |i| {
            let (entries, list, ssh, log) =
                (entries.clone(), list.clone(), ssh.clone(), l2.clone());
            async move { rollback_one(&list[i], &entries[i], &ssh, log).await }
        },
        |i| task_failed(&robots[i].name),
    )
    .await;
    let results = fill_skipped(&robots, results, &*log);
    let rec = record::Rollout::new(
        record::Kind::Rollback,
        Some(rollout.id.clone()),
        rollout.stack.clone(),
        &robots,
        &results,
    );
    rec.save()?;
    Ok((rec, results))
}

async fn rollback_one(
    r: &FleetRobot,
    entry: &record::RobotEntry,
    ssh: &SshArgs,
    log: Arc<dyn Reporter>,
) -> RobotResult {
    let started = Instant::now();
    let rep = RobotReporter::new(&r.name, log);
    let changed = matches!(entry.state.as_str(), "committed" | "probation")
        && entry.release.is_some()
        && entry.release != entry.before;
    if !changed {
        // Nothing to undo: it runs what it ran before the rollout (or was never reached).
        let mut res = RobotResult::new(&r.name, "unchanged", None, started);
        res.release = entry.before;
        res.before = entry.before;
        return rep.done(res);
    }
    let Some(to) = entry.before else {
        let why = "it ran no release before the rollout: nothing to go back to";
        return rep.done(RobotResult::new(
            &r.name,
            "skipped",
            Some(why.into()),
            started,
        ));
    };
    let (mut l, before) = match open(r, ssh, &rep, started).await {
        Ok(v) => v,
        Err(unreachable) => return unreachable,
    };
    rep.phase(&format!("rolling back to release {to}"));
    let mut res = match verbs::rollback(&mut l, Some(to)).await {
        Ok(o) => RobotResult {
            robot: r.name.clone(),
            release: Some(o.release),
            bytes_sent: 0,
            duration_ms: 0,
            state: if o.unchanged {
                "unchanged".into()
            } else {
                o.state.to_string()
            },
            error: (!succeeded(&o.state.to_string()))
                .then(|| o.reason.clone().unwrap_or(o.message.clone())),
            before,
        },
        Err(e) => RobotResult::new(&r.name, "failed", Some(error_text(&e)), started),
    };
    res.bytes_sent = l.conn.counters().0;
    res.duration_ms = started.elapsed().as_millis() as u64;
    res.before = before;
    rep.done(res)
}

/// One robot's progress as one line: a unit `robot` whose label is `robot: phase` (the label
/// of the deploy unit that started last) and whose position is the bytes its units have done
/// ([`Event::Status`] and [`Event::Advance`]); notes are passed on with the robot's name.
pub struct RobotReporter {
    robot: String,
    outer: Arc<dyn Reporter>,
    units: Mutex<HashMap<String, u64>>,
}

impl RobotReporter {
    /// Starts `robot`'s line on `outer`.
    pub fn new(robot: &str, outer: Arc<dyn Reporter>) -> RobotReporter {
        outer.event(Event::start(robot, format!("{robot}: waiting"), None));
        RobotReporter {
            robot: robot.to_string(),
            outer,
            units: Mutex::new(HashMap::new()),
        }
    }

    /// Says what the robot does now.
    pub fn phase(&self, what: &str) {
        self.outer.event(Event::Status {
            id: self.robot.clone(),
            message: format!("{}: {what}", self.robot),
        });
    }

    /// Ends the robot's line with its state, and hands `r` back.
    pub fn done(&self, r: RobotResult) -> RobotResult {
        self.outer
            .event(Event::finish(&self.robot, r.state.clone()));
        r
    }
}

impl Reporter for RobotReporter {
    fn event(&self, e: Event) {
        match e {
            Event::Start { label, .. } => self.phase(&label),
            Event::Advance { id, done } => {
                let total = {
                    let mut u = self.units.lock().expect("not poisoned");
                    u.insert(id, done);
                    u.values().sum()
                };
                self.outer.event(Event::advance(&self.robot, total));
            }
            Event::Finish { .. } | Event::Status { .. } => {}
            Event::Note { message } => self
                .outer
                .event(Event::note(format!("{}: {message}", self.robot))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Event>>);
    impl Reporter for Collect {
        fn event(&self, e: Event) {
            self.0.lock().unwrap().push(e);
        }
    }

    #[test]
    fn a_robots_units_fold_into_one_line() {
        let outer = Arc::new(Collect::default());
        let rep = RobotReporter::new("bot1", outer.clone());
        rep.event(Event::start("l1", "layer 1/2", Some(10)));
        rep.event(Event::advance("l1", 4));
        rep.event(Event::start("l2", "layer 2/2", Some(10)));
        rep.event(Event::advance("l2", 3));
        rep.event(Event::advance("l1", 10));
        rep.event(Event::finish("l1", "done"));
        rep.event(Event::note("watching `core`"));
        rep.done(RobotResult::new("bot1", "committed", None, Instant::now()));
        let ev = outer.0.lock().unwrap().clone();
        assert!(ev.iter().all(|e| match e {
            Event::Start { id, .. }
            | Event::Advance { id, .. }
            | Event::Finish { id, .. }
            | Event::Status { id, .. } => id == "bot1",
            Event::Note { message } => message == "bot1: watching `core`",
        }));
        assert!(ev.contains(&Event::advance("bot1", 13)));
        assert!(ev.contains(&Event::Status {
            id: "bot1".into(),
            message: "bot1: layer 2/2".into()
        }));
        assert_eq!(ev.last(), Some(&Event::finish("bot1", "committed")));
    }

    #[test]
    fn an_error_line_says_each_cause_once() {
        let e = anyhow::anyhow!("Connection refused (os error 111)")
            .context("cannot connect to `x:9`: Connection refused (os error 111)")
            .context("robot `x`");
        assert_eq!(
            error_text(&e),
            "robot `x`: cannot connect to `x:9`: Connection refused (os error 111)"
        );
    }

    #[test]
    fn json_has_exactly_the_documented_fields() {
        let mut r = RobotResult::new("bot1", "committed", None, Instant::now());
        r.before = Some(3);
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bytes_sent",
                "duration_ms",
                "error",
                "release",
                "robot",
                "state"
            ]
        );
        assert!(succeeded("unchanged") && !succeeded("skipped") && !succeeded("rolled-back"));
    }

    #[test]
    fn per_robot_stack_and_sets_come_after_the_command_lines() {
        let inv = Inventory::parse(
            "f",
            "defaults:\n  set: [a=x:1]\nrobots:\n  b1:\n    stack: s.yaml\n    set: [a=x:2]\n",
        )
        .unwrap();
        let shared = DeployRequest {
            stack: Some("cli.yaml".into()),
            sets: vec!["a=x:0".into()],
            ..DeployRequest::default()
        };
        let req = request_for(&shared, &inv.robot("b1"));
        assert_eq!(req.robot, "b1");
        assert_eq!(req.stack.as_deref(), Some("s.yaml"));
        assert_eq!(req.sets, ["a=x:0", "a=x:1", "a=x:2"]);
    }
}
