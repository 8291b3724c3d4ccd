//! Releases keep their images on the robot as long as `robot.yaml`'s `releases.keep` says (3
//! by default, the sims' case): after a fourth deploy the first release's image name and its
//! content go by themselves, and rollbacks to the kept releases need nothing sent.

use std::time::{Duration, Instant};

use crate::deploy::{World, can_run};

#[test]
fn a_fourth_deploy_frees_the_first_release_and_keeps_three_to_roll_back_to() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let sim = w.sim_up(&[]);
    let addr = sim["address"].as_str().unwrap().to_owned();
    let tag = |v: u32| format!("example.com/keep/app:v{v}");
    for v in 1..=4 {
        // One MiB of noise of its own per version: what only that release holds.
        let ctx = w.context(&format!("v{v}"), 5, 1);
        w.build(&ctx, &tag(v));
        let (code, out, err) = w.deploy(&w.stack(&tag(v), "test"));
        assert_eq!(code, Some(0), "v{v}: {out} {err}");
        assert_eq!(out["state"], "committed", "v{v}: {out}");
        assert_eq!(out["release"], v, "{out}");
    }

    // The store's gc runs in the background after the commit: the first release's name goes
    // at once, its noise once gc has run (a deploy plan of v1 then needs it again).
    let images = w.ssh_ok(&addr, "sudo -n dt-agent image ls --json");
    assert!(!images.contains(":v1\""), "v1 still named: {images}");
    for v in 2..=4 {
        assert!(images.contains(&format!(":v{v}\"")), "v{v} gone: {images}");
    }
    let v1 = w.stack(&tag(1), "test");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, plan, err) = w.deploy_with(&v1, &["--dry-run"]);
        assert_eq!(code, Some(0), "{plan} {err}");
        if plan["object_bytes"].as_u64().unwrap_or(0) >= 1 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "release 1's content is still on the robot: {plan}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Releases 2–4 are all there: rollbacks switch without a byte of image.
    for to in [2u64, 3, 4] {
        let out = w.dts(&["duckiebot", "rollback", &w.name, "--to", &to.to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rollback to {to}: {err}");
        let logs = w.ok(&["duckiebot", "logs", &w.name, "core"]);
        assert!(logs.contains(&format!("VERSION = \"v{to}\"")), "{logs}");
    }
    // Release 1 is not: refused, naming what is missing, and release 4 keeps running.
    let out = w.dts(&["duckiebot", "rollback", &w.name, "--to", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rollback to a freed release: {err}");
    assert!(err.contains("image") || err.contains("missing"), "{err}");
    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", &w.name, "--json"])).unwrap();
    for c in ps.as_array().unwrap() {
        assert_eq!(c["release"], 4, "{c}");
        assert_eq!(c["state"], "running", "{c}");
    }
    w.ok(&["sim", "down", &w.name.clone()]);
}
