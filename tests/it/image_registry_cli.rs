//! `dts image push/pull` through the binary against a real registry with token auth, with
//! credentials from `$DOCKER_CONFIG/config.json` as users have them, and skopeo on the other end.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use crate::support::images::multi_arch_layout;
use crate::support::registry::{Auth, Registry};

fn dts(home: &Path, docker_config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dts"))
        .args(args)
        .env("DTS_HOME", home)
        .env("DOCKER_CONFIG", docker_config)
        .output()
        .expect("run dts")
}

#[track_caller]
fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "dts failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn push_then_pull_one_platform_with_token_auth() {
    let auth = Auth::token("student", "duckie-pass");
    if let Some(why) = Registry::unavailable(&auth) {
        support::skip(&why);
        return;
    }
    if !support::require_cmd("skopeo") {
        return;
    }
    let reg = Registry::start(auth);
    let t = tempfile::tempdir().unwrap();
    let cfg_dir = t.path().join("docker");
    reg.docker_config(&cfg_dir);
    let home = t.path().join("home");
    let name = format!("{}/duckietown/dt-core:daffy", reg.addr);
    let (idx, ws) = multi_arch_layout(&t.path().join("layout"), &name);
    json(&dts(
        &home,
        &cfg_dir,
        &[
            "image",
            "load",
            "-i",
            t.path().join("layout").to_str().unwrap(),
            "--json",
        ],
    ));

    let first = json(&dts(&home, &cfg_dir, &["image", "push", &name, "--json"]));
    assert_eq!(first["digest"], idx.digest.to_string());
    assert_eq!(
        first["blobs_uploaded"], 5,
        "2 configs, 1 shared base layer, 2 arch layers"
    );
    let again = json(&dts(&home, &cfg_dir, &["image", "push", &name, "--json"]));
    assert_eq!(again["blobs_uploaded"], 0);
    assert_eq!(again["bytes_uploaded"], 0);

    // skopeo, with the same credentials, sees our index byte for byte.
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--authfile",
        ])
        .arg(cfg_dir.join("config.json"))
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dts::oci::Digest::of(&out.stdout), idx.digest);

    // A second machine pulls only the armhf variant.
    let home2 = t.path().join("home2");
    let pulled = json(&dts(
        &home2,
        &cfg_dir,
        &["image", "pull", &name, "--platform", "arm32v7", "--json"],
    ));
    assert_eq!(pulled["digest"], ws[1].manifest.digest.to_string());
    assert_eq!(pulled["source_digest"], idx.digest.to_string());
    let ls = json(&dts(&home2, &cfg_dir, &["image", "ls", "--json"]));
    assert_eq!(ls[0]["platforms"], serde_json::json!(["linux/arm/v7"]));

    // Without credentials: a clear failure, exit 1, naming the registry.
    let empty = t.path().join("nocreds");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dts(&t.path().join("home3"), &empty, &["image", "pull", &name]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&reg.addr) && err.contains("not authorized"),
        "{err}"
    );

    // Several platforms in one flag: here every platform the image has, and since its index
    // is canonical JSON the new index is the same document.
    let out = dts(
        &t.path().join("home4"),
        &cfg_dir,
        &[
            "image",
            "pull",
            &name,
            "--platform",
            "linux/arm64,linux/arm/v7",
            "--json",
        ],
    );
    let two = json(&out);
    assert_eq!(two["digest"], idx.digest.to_string());
}
