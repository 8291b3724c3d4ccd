//! Adopting a stock Duckiebot's images by reading Docker's data root directly (issue 13):
//! `dt-agent image import --docker-root /var/lib/docker IMAGE…` on the robot itself
//! (tests/it/support/stock_robot.rs, real dockerd 20.10, overlay2), with the 40 MiB stand-in of
//! stock_adopt.rs. Checks that every image arrives with Docker's config digest and diff_ids and
//! exactly what the `docker save | dt-agent image import -` path stores (same manifests, same
//! snapshot chain ids); that the peak extra disk (sampled on the agent's root) stays under the
//! largest layer + 64 MiB while dockerd's own temp dir stays empty (what `docker save` stages
//! there is the reason for this mode); that a rerun adds nothing; and that a file appended to
//! in the diff dir of an image no container runs fails the import (exit 1) naming the layer,
//! with nothing named; and that a RepoDigest Docker records becomes an alias of the imported
//! manifest. Prints the measured figures (docs/duckietown.md, "Adoption notes").

use std::path::Path;
use std::time::{Duration, Instant};

use crate::stock_adopt::{
    AGENT, BIG, SLACK, Sampler, by_name, check_against_docker, disk_use, docker_images, import,
    json, mib,
};
use crate::support;
use crate::support::stock_robot::StockRobot;

/// `dt-agent image import --json --docker-root /var/lib/docker IMAGES` into `root`.
fn direct(robot: &StockRobot, root: &str, images: &[String]) -> std::process::Output {
    let mut cmd = vec![
        "env".to_string(),
        format!("DT_AGENT_ROOT={root}"),
        AGENT.into(),
        "image".into(),
        "import".into(),
        "--json".into(),
        "--docker-root".into(),
        "/var/lib/docker".into(),
    ];
    cmd.extend(images.iter().cloned());
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    robot.exec(&cmd)
}

fn direct_ok(robot: &StockRobot, root: &str, images: &[String]) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    let out = direct(robot, root, images);
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "direct import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (json(&String::from_utf8_lossy(&out.stdout)), took)
}

/// The largest layer the store holds (its tar's length, from `layers/*/meta.json`).
fn largest_layer(store: &Path) -> u64 {
    std::fs::read_dir(store.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| {
            let m = json(&std::fs::read_to_string(e.path().join("meta.json")).unwrap());
            m["size"].as_u64().unwrap()
        })
        .max()
        .unwrap()
}

#[test]
fn stock_direct_amd64() {
    direct_adopt("amd64");
}

#[test]
fn stock_direct_arm64() {
    direct_adopt("arm64");
}

fn direct_adopt(arch: &str) {
    let Some(robot) = StockRobot::boot(arch, &format!("direct-{arch}")) else {
        return;
    };
    let agent = robot.root().join(AGENT.trim_start_matches('/'));
    std::fs::copy(env!("CARGO_BIN_EXE_dt-agent"), &agent).unwrap();
    robot.exec_ok(&[
        "bash",
        "-c",
        &format!(
            "set -e; mkdir -p /tmp/big; head -c 40M /dev/urandom > /tmp/big/blob; \
             tar -C /tmp/big -cf - . | docker import - {BIG}; rm -rf /tmp/big"
        ),
    ]);
    let driver = robot.exec_ok(&["docker", "info", "--format", "{{.Driver}}"]);
    assert_eq!(
        driver.trim(),
        "overlay2",
        "the stock robot's storage driver"
    );
    let images = docker_images(&robot);
    assert!(images.len() >= 11, "docker images: {images:?}");
    let all = images.join(" ");
    let mut save_time = Duration::MAX;
    for _ in 0..2 {
        let start = Instant::now();
        robot.exec_ok(&["bash", "-c", &format!("docker save {all} > /dev/null")]);
        save_time = save_time.min(start.elapsed());
    }

    // 1. The direct import, sampled: the agent's root and dockerd's temp dir.
    let root = "/var/lib/dt-agent";
    let store = robot.root().join(root.trim_start_matches('/'));
    let docker_tmp = robot.root().join("var/lib/docker/tmp");
    let sampler = Sampler::start(store.clone());
    let tmp_sampler = Sampler::start(docker_tmp.clone());
    let (report, took) = direct_ok(&robot, root, &images);
    let (peak, _) = sampler.finish();
    let (tmp_peak, _) = tmp_sampler.finish();
    let (after, _) = disk_use(&store);
    let extra = peak.saturating_sub(after);
    let largest = largest_layer(&store);
    support::write_stderr_line(&format!(
        "stock_direct: {arch}: {} images, largest layer {}; direct import {took:.1?} vs docker \
         save > /dev/null {save_time:.1?}; store {} after, peak {} (extra {}); dockerd's tmp \
         peak {}",
        images.len(),
        mib(largest),
        mib(after),
        mib(peak),
        mib(extra),
        mib(tmp_peak),
    ));
    assert_eq!(report["format"], "docker-root", "{report}");
    check_against_docker(&robot, &store, &images, &report);
    assert!(largest >= 40 << 20, "the big stand-in's layer: {largest}");
    assert!(
        extra <= largest + SLACK,
        "peak extra disk {} > largest layer {} + 64 MiB",
        mib(extra),
        mib(largest)
    );
    assert_eq!(tmp_peak, 0, "nothing staged in dockerd's tmp");

    // 2. The same as the `docker save` path stores: manifests, configs, chain ids.
    let tmp_sampler = Sampler::start(docker_tmp.clone());
    let (saved, save_took, _) = import(&robot, "/var/lib/dt-agent-save", &images, 1);
    let (save_tmp_peak, _) = tmp_sampler.finish();
    support::write_stderr_line(&format!(
        "stock_direct: {arch}: docker save | import - {save_took:.1?}, dockerd's tmp peak {}",
        mib(save_tmp_peak)
    ));
    assert_eq!(by_name(&report), by_name(&saved), "direct vs docker save");

    // 3. Again: nothing added.
    let (again, again_time) = direct_ok(&robot, root, &images);
    for k in ["layers_added", "objects_added", "snapshots_added"] {
        assert_eq!(again[k], 0, "second import: {k}: {again}");
    }
    assert_eq!(by_name(&again), by_name(&report));
    support::write_stderr_line(&format!(
        "stock_direct: {arch}: second import {again_time:.1?}, nothing added"
    ));

    // 4. A byte appended to a file of an image no container runs: refused, naming the layer.
    let upper = robot.exec_ok(&[
        "docker",
        "image",
        "inspect",
        "--format",
        "{{.GraphDriver.Data.UpperDir}}",
        BIG,
    ]);
    let layer = robot.exec_ok(&[
        "docker",
        "image",
        "inspect",
        "--format",
        "{{index .RootFS.Layers 0}}",
        BIG,
    ]);
    robot.exec_ok(&["bash", "-c", &format!("printf x >> {}/blob", upper.trim())]);
    let root3 = "/var/lib/dt-agent-tampered";
    let out = direct(&robot, root3, &[BIG.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "tampered: {err}");
    assert!(err.contains(layer.trim()), "names the layer: {err}");
    assert!(err.contains("blob"), "names the file: {err}");
    let ls = robot.exec_ok(&[
        "env",
        &format!("DT_AGENT_ROOT={root3}"),
        AGENT,
        "image",
        "ls",
        "--json",
    ]);
    assert_eq!(json(&ls), serde_json::json!([]), "nothing named");
    support::write_stderr_line(&format!(
        "stock_direct: {arch}: tampered layer refused: {err}"
    ));
    // … and one byte changed, the size kept: the layer's hash says so, before anything is
    // committed (the tar reader's diff_id, compared with Docker's).
    robot.exec_ok(&[
        "bash",
        "-c",
        &format!(
            "f={}/blob; truncate -s -1 $f; printf '\\377\\000\\377\\000\\377\\000\\377\\000' | dd of=$f bs=1 seek=7 conv=notrunc status=none",
            upper.trim()
        ),
    ]);
    let root4 = "/var/lib/dt-agent-tampered-same-size";
    let out = direct(&robot, root4, &[BIG.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "same size: {err}");
    assert!(err.contains(layer.trim()), "names the layer: {err}");
    assert!(err.contains("diff_id"), "says the digest differs: {err}");
    let ls = robot.exec_ok(&[
        "env",
        &format!("DT_AGENT_ROOT={root4}"),
        AGENT,
        "image",
        "ls",
        "--json",
    ]);
    assert_eq!(json(&ls), serde_json::json!([]), "nothing named");

    // 5. A RepoDigest (what `docker pull` records; `docker load` sets none, so one is written
    // into repositories.json here, as dockerd writes it) becomes an alias of the manifest the
    // import wrote, beside the tag; nothing else is added.
    let tag = &images[0];
    let id = robot.exec_ok(&["docker", "image", "inspect", "--format", "{{.Id}}", tag]);
    let repo = tag.rsplit_once(':').unwrap().0;
    let alias = format!("{repo}@sha256:{}", "ab".repeat(32));
    let rp = robot
        .root()
        .join("var/lib/docker/image/overlay2/repositories.json");
    let mut repos = json(&std::fs::read_to_string(&rp).unwrap());
    let (_, entries) = repos["Repositories"]
        .as_object_mut()
        .unwrap()
        .iter_mut()
        .find(|(_, v)| v.as_object().unwrap().values().any(|i| i == id.trim()))
        .expect("the tag's repository");
    entries[alias.as_str()] = serde_json::json!(id.trim());
    std::fs::write(&rp, repos.to_string()).unwrap();
    let (aliased, _) = direct_ok(&robot, root, &[id.trim().to_string()]);
    assert_eq!(aliased["layers_added"], 0, "{aliased}");
    let named = by_name(&aliased);
    let manifest_of = |n: &str| {
        let v = json(
            named
                .get(n)
                .unwrap_or_else(|| panic!("{n} not named: {aliased}")),
        );
        v["manifest"].clone()
    };
    assert_eq!(manifest_of(&alias), manifest_of(tag), "{aliased}");
    let ls = robot.exec_ok(&[
        "env",
        &format!("DT_AGENT_ROOT={root}"),
        AGENT,
        "image",
        "ls",
        "--json",
    ]);
    assert!(ls.contains(&alias), "image ls lists the RepoDigest: {ls}");
}
