//! `dts fleet deploy|rollback|status` against three virtual Duckiebots (`dts sim up`) on one
//! test bridge: a parallel deploy to all; bad input (an inventory group naming an unknown
//! robot, a `--match` that matches nothing) changing nothing; a canary whose health check
//! fails (its stack set by the inventory) rolled back while the others are never started; a
//! robot that cannot be reached (the inventory puts it at a closed port: deterministic, no
//! timing) failing alone while the rest commit; `fleet rollback` putting every robot back;
//! `fleet status` as table and JSON. Needs root; prints a SKIP line otherwise.

use std::path::Path;

use crate::deploy::{World, can_run};
use crate::support;

/// The world plus two more sims on its bridge, taken down before the world's own.
struct Fleet {
    w: World,
    names: Vec<String>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &self.names[1..] {
            let _ = self.w.dts(&["sim", "down", n]);
        }
    }
}

impl Fleet {
    /// `dts ARGS…` → (exit code, stdout JSON, stderr).
    fn run(&self, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
        let out = self.w.dts(args);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Each robot's current release, from `fleet status --json`.
    fn releases(&self) -> Vec<Option<u64>> {
        let mut args = vec!["fleet", "status", "--json"];
        args.extend(self.names.iter().map(String::as_str));
        let (code, v, err) = self.run(&args);
        assert_eq!(code, Some(0), "{v} {err}");
        v["robots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["release"].as_u64())
            .collect()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.w.work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }
}

/// The robots of a `--json` answer as (robot, state, release).
fn rows(v: &serde_json::Value) -> Vec<(String, String, Option<u64>)> {
    v["robots"]
        .as_array()
        .unwrap_or_else(|| panic!("no robots in {v}"))
        .iter()
        .map(|r| {
            (
                r["robot"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
                r["release"].as_u64(),
            )
        })
        .collect()
}

fn copy_stack(from: &Path, to: &Path) -> String {
    std::fs::copy(from, to).unwrap();
    to.to_str().unwrap().to_string()
}

#[test]
fn a_fleet_deploys_in_parallel_survives_a_bad_canary_and_a_lost_robot_and_rolls_back() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let base = w.name.clone();
    w.sim_up(&[]);
    let names = vec![base.clone(), format!("{base}b"), format!("{base}c")];
    for n in &names[1..] {
        w.ok(&["sim", "up", n]);
    }
    let f = Fleet { w, names };
    let w = &f.w;
    let ctx = w.context("v1", 3, 0);
    w.build(&ctx, "fleetapp:v1");
    let good1 = copy_stack(
        &w.stack("fleetapp:v1", "test"),
        &w.work.path().join("good1.yaml"),
    );
    let ctx = w.context("v2", 4, 0);
    w.build(&ctx, "fleetapp:v2");
    let good2 = copy_stack(
        &w.stack("fleetapp:v2", "test"),
        &w.work.path().join("good2.yaml"),
    );
    let bad2 = copy_stack(
        &w.stack("fleetapp:v2", "false"),
        &w.work.path().join("bad2.yaml"),
    );
    let [n1, n2, n3] = [&f.names[0], &f.names[1], &f.names[2]].map(String::as_str);

    // 1. All three at once: each committed, exit 0.
    let (code, v, err) = f.run(&["fleet", "deploy", n1, n2, n3, "-f", &good1, "--json"]);
    assert_eq!(code, Some(0), "{v}\n{err}");
    for (robot, state, release) in rows(&v) {
        assert_eq!(
            (state.as_str(), release),
            ("committed", Some(1)),
            "{robot}: {v}"
        );
    }
    assert!(v["robots"][0]["bytes_sent"].as_u64().unwrap() > 0, "{v}");
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = v["robots"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        k.sort();
        k
    };
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

    // 2. Status: a table and JSON, every robot healthy on release 1.
    let table = w.ok(&["fleet", "status", n1, n2, n3]);
    assert_eq!(table.matches("healthy").count(), 3, "{table}");
    let (code, v, err) = f.run(&["fleet", "status", n1, n2, n3, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    for r in v["robots"].as_array().unwrap() {
        assert_eq!(r["release"], 1, "{v}");
        assert_eq!(r["health"], "healthy", "{v}");
        assert_eq!(r["running"], 2, "{v}");
        assert!(
            r["agent_version"].is_string() && r["free_bytes"].as_u64().unwrap() > 0,
            "{v}"
        );
    }

    // 3. Bad input: exit 2, a clear message, nothing deployed.
    let bad_inv = f.write(
        "bad.yaml",
        &format!("robots:\n  {n1}:\ngroups:\n  class: [{n1}, nobody]\n"),
    );
    let (code, _, err) = f.run(&["fleet", "deploy", "-i", &bad_inv, "-f", &good2, "--json"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad.yaml:4") && err.contains("`nobody`"),
        "{err}"
    );
    let (code, _, err) = f.run(&["fleet", "deploy", "--match", "nomatch-*", "-f", &good2]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = f.run(&["fleet", "deploy", n1, "-f", "/nonexistent/stack.yaml"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(f.releases(), [Some(1); 3]);

    // 4. A canary whose health check fails (the inventory gives it another stack): rolled
    // back by its robot; the others never start.
    let inv = f.write(
        "canary.yaml",
        &format!("robots:\n  {n1}:\n    stack: {bad2}\n  {n2}:\n  {n3}:\n"),
    );
    let (code, v, err) = f.run(&[
        "fleet", "deploy", "-i", &inv, "-f", &good2, "--canary", "1", "--json",
    ]);
    assert_eq!(code, Some(1), "{v}\n{err}");
    let r = rows(&v);
    assert_eq!(r[0].1, "rolled-back", "{v}");
    assert!(v["robots"][0]["error"].is_string(), "{v}");
    assert_eq!(
        (r[1].1.as_str(), r[2].1.as_str()),
        ("skipped", "skipped"),
        "{v}"
    );
    assert_eq!(f.releases(), [Some(1); 3]);

    // 5. A robot that cannot be reached: it fails alone, the rest commit, exit 1.
    let inv = f.write(
        "lost.yaml",
        &format!("robots:\n  {n1}:\n  {n2}:\n  {n3}:\n  gone:\n    host: 127.0.0.1\n    port: 9\n"),
    );
    let (code, v, err) = f.run(&["fleet", "deploy", "-i", &inv, "-f", &good2, "--json"]);
    assert_eq!(code, Some(1), "{v}\n{err}");
    let r = rows(&v);
    assert!(r[..3].iter().all(|(_, s, _)| s == "committed"), "{v}");
    assert_eq!(r[3].1, "unreachable", "{v}");
    assert!(
        v["robots"][3]["error"].as_str().unwrap().contains("gone"),
        "{v}"
    );
    let now = f.releases();
    assert!(now.iter().all(|r| r.unwrap() > 1), "{now:?}");

    // 6. `fleet rollback` (the last deploy): every robot back on release 1; the lost one
    // had nothing to undo.
    let (code, v, err) = f.run(&["fleet", "rollback", "--json"]);
    assert_eq!(code, Some(0), "{v}\n{err}");
    let r = rows(&v);
    assert!(
        r[..3]
            .iter()
            .all(|(_, s, rel)| s == "committed" && *rel == Some(1)),
        "{v}"
    );
    assert_eq!(r[3].1, "unchanged", "{v}");
    assert_eq!(f.releases(), [Some(1); 3]);
    let (code, _, err) = f.run(&["fleet", "rollback", "no-such-rollout"]);
    assert_eq!(code, Some(2), "{err}");
    support::write_stderr_line("fleet: deploy, canary, lost robot, rollback and status checked");
}
