//! Issue 15's lab hub on one virtual Duckiebot: `dts duckiebot deploy --via REGISTRY` pushes
//! the image to a real registry (the fixture, token auth, listening where the sim reaches it)
//! and the robot GETs the large layers from it itself; and `dts fleet hub up --detach`/`down`.
//!
//! What is checked, on counters and logs rather than self-reports: the registry's access log
//! holds the robot's blob GETs (user agent `dt-agent/…`); the SSH channel's `bytes_sent` is far
//! below the layer's size; skopeo reads what was pushed; the robot's token was asked for with
//! `pull` scope only and cannot push; it is nowhere on the robot's disk; a one-file change goes
//! over SSH with no blob GET; a hub the robot cannot reach fails naming it, the robot stays on
//! its release.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::registry::{Auth, Registry};
use crate::support::{self, TestContext};

/// Bytes of incompressible noise in the image's big layer.
const NOISE: usize = 20 << 20;
/// Files the noise is cut into: more than one part of the hub's (4 MiB of tar each in these
/// tests, `DTS_HUB_PART_MIB`).
const NOISE_FILES: usize = 5;
/// The hub's part size here: the noise layer goes in parts.
const PART_MIB: &str = "4";

fn can_run() -> bool {
    if !support::can_make_virtual_robot() {
        return false;
    }
    if let Some(why) = Registry::unavailable(&Auth::token("duckie", "quack")) {
        support::skip(&why);
        return false;
    }
    if !support::require_cmd("skopeo") {
        return false;
    }
    support::require_busybox("amd64").is_some()
}

/// A build context: busybox, `NOISE` bytes of noise seeded by `seed` (the layer worth a hub),
/// a code file saying `version`, and `run.sh` that marks itself ready.
fn context(dir: &Path, version: &str, seed: u64) -> PathBuf {
    let ctx = dir.join(format!("ctx-{version}"));
    std::fs::create_dir_all(ctx.join("code")).unwrap();
    std::fs::create_dir_all(ctx.join("big")).unwrap();
    std::fs::copy(support::busybox("amd64"), ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("code/version.py"), format!("V = {version:?}\n")).unwrap();
    let data = crate::deploy::noise(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(seed), NOISE);
    // Named by seed: another seed's noise is a new file, not a patch of the old one.
    for (i, chunk) in data.chunks(NOISE / NOISE_FILES).enumerate() {
        std::fs::write(ctx.join(format!("big/noise-{seed}-{i}.bin")), chunk).unwrap();
    }
    std::fs::write(
        ctx.join("run.sh"),
        "trap 'exit 0' TERM\nbusybox cat /code/version.py\nbusybox touch /ready\nwhile true; do busybox sleep 1 & wait $!; done\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENV PATH=/bin\nCOPY big /opt/big/\nCOPY code /code/\nCOPY run.sh /run.sh\nCMD [\"/bin/busybox\", \"sh\", \"/run.sh\"]\n",
    )
    .unwrap();
    ctx
}

fn build(ctx: &TestContext, version: &str, seed: u64) -> String {
    let c = context(ctx.work.path(), version, seed);
    let tag = format!("example.com/hub/app:{version}");
    ctx.ok(&[
        "devel",
        "build",
        "-C",
        c.to_str().unwrap(),
        "-t",
        &tag,
        "--arch",
        "amd64",
    ]);
    tag
}

/// `deploy --stack STACK --json EXTRA…`: (exit code, JSON, stderr).
fn deploy(ctx: &TestContext, stack: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut args = vec![
        "duckiebot",
        "deploy",
        ctx.name.as_str(),
        "--stack",
        stack.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = ctx
        .dts_command(&args)
        .env("DTS_HUB_PART_MIB", PART_MIB)
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The robot's blob GETs in the registry's access log (the 200s: a part the laptop has not
/// pushed yet is a 404 the robot asks again).
fn robot_gets(reg: &Registry) -> Vec<String> {
    reg.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.user_agent.starts_with("dt-agent/"))
        .filter_map(|r| {
            assert!(matches!(r.status, 200 | 404), "{r:?}");
            (r.status == 200)
                .then(|| r.blob_digest().map(str::to_string))
                .flatten()
        })
        .collect()
}

/// `~/.docker/config.json` with `duckie:quack` for each host.
fn docker_login(ctx: &TestContext, hosts: &[&str]) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("duckie:quack");
    let auths: serde_json::Map<String, Value> = hosts
        .iter()
        .map(|h| (h.to_string(), serde_json::json!({ "auth": auth })))
        .collect();
    let dir = ctx.home.path().join(".docker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({ "auths": auths }).to_string(),
    )
    .unwrap();
}

/// The status of a `POST /v2/<repo>/blobs/uploads/` (start a push) with `authorization`.
fn push_status(addr: &str, repo: &str, authorization: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Files under `dir` holding `needle` (symlinks and special files skipped).
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            out.extend(files_holding(&e.path(), needle));
        } else if ft.is_file()
            && let Ok(bytes) = std::fs::read(e.path())
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            out.push(e.path());
        }
    }
    out
}

/// A test's laptop with v1 built and a stack of it, and the hub: a token-auth registry on
/// every interface, which robots reach at the sims' bridge address (as a lab robot reaches a
/// wired server); the laptop is logged in to it under both addresses. Returns the hub's
/// address as robots use it.
fn world() -> (TestContext, PathBuf, Registry, String) {
    let ctx = TestContext::new();
    let stack = ctx.work.path().join("stack.yaml");
    std::fs::write(
        &stack,
        "services:\n  app:\n    image: example.com/hub/app:v1\n    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"test\", \"-f\", \"/ready\"]\n      interval: 1s\n      retries: 3\n",
    )
    .unwrap();
    build(&ctx, "v1", 1);
    let reg = Registry::start_listening(Auth::token("duckie", "quack"), "0.0.0.0");
    let host = dts::sim::net::NetConfig::parse(&ctx.bridge, &ctx.subnet)
        .unwrap()
        .host_addr();
    let hub = format!("{host}:{}", reg.port());
    docker_login(&ctx, &[&hub, &reg.addr]);
    (ctx, stack, reg, hub)
}

#[test]
fn deploy_via_a_hub_takes_large_layers_from_it_and_small_changes_over_ssh() {
    if !can_run() {
        return;
    }
    let (ctx, stack, reg, hub) = world();
    ctx.ok(&["sim", "up", &ctx.name]);

    // Cold robot: committed, the noise layer came from the hub, not over SSH.
    let (code, v, err) = deploy(&ctx, &stack, &["--via", &hub, "--insecure"]);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    let gets = robot_gets(&reg);
    assert!(!gets.is_empty(), "no blob GET by the robot:\n{}", reg.log());
    let sent = v["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < (NOISE as u64) / 4,
        "{sent} bytes over SSH for a {NOISE}-byte layer the hub holds: {v}"
    );
    assert!(
        ctx.ok(&["duckiebot", "logs", &ctx.name, "app"])
            .contains("v1")
    );

    // What was pushed is a plain OCI registry's content: skopeo reads and copies it.
    let pushed: Vec<String> = reg
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.is_manifest() && r.status == 201)
        .map(|r| r.path.rsplit('/').next().unwrap().to_string())
        .collect();
    assert!(
        pushed.iter().all(|d| d.starts_with("sha256:")) && !pushed.is_empty(),
        "pushed by digest: {pushed:?}"
    );
    let src = format!("docker://{}/hub/app@{}", reg.addr, pushed.last().unwrap());
    for args in [
        // Pushed by digest: there is no tag to list.
        vec![
            "inspect",
            "--no-tags",
            "--tls-verify=false",
            "--creds",
            "duckie:quack",
            &src,
        ],
        vec![
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            "duckie:quack",
            &src,
            &format!("oci:{}:x", ctx.work.path().join("copied").display()),
        ],
    ] {
        let out = Command::new("skopeo").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The robot's token: asked for with `pull` scope only; it cannot push; nowhere on disk.
    let robot_tokens: Vec<String> = reg
        .token_requests()
        .into_iter()
        .filter(|t| t.scopes == ["repository:hub/app:pull"])
        .filter_map(|t| t.token)
        .collect();
    assert!(!robot_tokens.is_empty(), "{:?}", reg.token_requests());
    for token in &robot_tokens {
        let status = push_status(&reg.addr, "hub/app", &format!("Bearer {token}"));
        assert!(
            matches!(status, 401 | 403),
            "a push with the robot's token: {status}"
        );
        let root = ctx.sim_dir().join("root");
        for dir in [root.join("var/lib/dt-agent"), root.join("etc")] {
            let found = files_holding(&dir, token.as_bytes());
            assert!(found.is_empty(), "the robot's token is stored in {found:?}");
        }
    }

    // The hub's copy is zstd (a third smaller than the store's gzip for real files, and the
    // hub's bytes are the whole rollout's uplink bytes).
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "duckie:quack",
            &src,
        ])
        .output()
        .unwrap();
    let raw: Value = serde_json::from_slice(&inspect.stdout).unwrap_or(Value::Null);
    let types: Vec<&str> = raw["layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["mediaType"].as_str()).collect())
        .unwrap_or_default();
    // The noise layer went in parts, each a layer of the hub's image.
    let zstd_layers = types
        .iter()
        .filter(|t| **t == "application/vnd.oci.image.layer.v1.tar+zstd")
        .count();
    assert!(zstd_layers >= 2, "{raw}");

    // A one-file change goes over SSH: no blob GET, and nothing is pushed to the hub.
    build(&ctx, "v2", 1);
    let before = gets.len();
    let writes = |reg: &Registry| {
        reg.requests()
            .iter()
            .filter(|r| matches!(r.method.as_str(), "PUT" | "PATCH" | "POST"))
            .count()
    };
    let writes_before = writes(&reg);
    let (code, v, err) = deploy(
        &ctx,
        &stack,
        &[
            "--set",
            "app=example.com/hub/app:v2",
            "--via",
            &hub,
            "--insecure",
        ],
    );
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert_eq!(robot_gets(&reg).len(), before, "{}", reg.log());
    assert_eq!(writes(&reg), writes_before, "{}", reg.log());
    assert_eq!(v["objects_sent"], 1, "{v}");

    // A hub the robot cannot reach (this laptop's loopback): the error names it, and the robot
    // stays on its release.
    build(&ctx, "v3", 3);
    let history = |ctx: &TestContext| -> Value {
        serde_json::from_str(&ctx.ok(&["duckiebot", "history", &ctx.name, "--json"])).unwrap()
    };
    let releases = history(&ctx);
    let (code, v, err) = deploy(
        &ctx,
        &stack,
        &[
            "--set",
            "app=example.com/hub/app:v3",
            "--via",
            &reg.addr,
            "--insecure",
        ],
    );
    assert_eq!(code, Some(1), "{v} {err}");
    assert!(
        err.contains(&format!("the lab hub http://{}", reg.addr)),
        "{err}"
    );
    assert_eq!(history(&ctx), releases);
    assert!(
        ctx.ok(&["duckiebot", "logs", &ctx.name, "app"])
            .contains("v2")
    );
    ctx.ok(&["sim", "down", &ctx.name]);
}

/// `dts fleet hub up --detach`: the registry answers `/v2/` on the port given, from the data
/// directory given; `down` stops it; a second `down` says none runs.
#[test]
fn fleet_hub_up_detached_serves_v2_until_down() {
    if Registry::unavailable(&Auth::None).is_some() {
        support::skip("docker-registry not installed");
        return;
    }
    let ctx = TestContext::new();
    let data = ctx.work.path().join("hub");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = ctx.ok(&[
        "fleet",
        "hub",
        "up",
        "--detach",
        "--port",
        &port.to_string(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.contains(&format!("localhost:{port}")), "{out}");
    assert!(data.join("config.yml").is_file());
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /v2/ HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let again = ctx.dts(&[
        "fleet",
        "hub",
        "up",
        "--detach",
        "--port",
        &port.to_string(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && again_err.contains("fleet hub down"),
        "{again_err}"
    );
    let down = ctx.dts(&["fleet", "hub", "down", "--data", data.to_str().unwrap()]);
    let down_err = String::from_utf8_lossy(&down.stderr);
    assert!(
        down.status.success() && down_err.contains("stopped"),
        "{down_err}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers after `down`: {down_err}"
    );
    let down = ctx.dts(&["fleet", "hub", "down", "--data", data.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&down.stderr).contains("no lab hub"));
}

/// Takes the extra sims of a test down, whatever the test did.
struct ExtraSims<'a>(&'a TestContext, Vec<String>);

impl Drop for ExtraSims<'_> {
    fn drop(&mut self) {
        for n in &self.1 {
            let _ = self.0.dts(&["sim", "down", n]);
        }
    }
}

/// `dts fleet deploy` through the hub `fleet.yaml` names: the laptop pushes each blob once for
/// the whole rollout, and every robot GETs the large layer from the hub itself.
#[test]
fn a_fleet_through_its_inventorys_hub_pushes_once_and_each_robot_fetches() {
    if !can_run() {
        return;
    }
    let (ctx, stack, reg, hub) = world();
    let second = format!("{}b", ctx.name);
    ctx.ok(&["sim", "up", &ctx.name]);
    let _extra = ExtraSims(&ctx, vec![second.clone()]);
    ctx.ok(&["sim", "up", &second]);
    let inventory = ctx.work.path().join("fleet.yaml");
    std::fs::write(
        &inventory,
        format!(
            "robots:\n  {}:\n  {second}:\nhub:\n  via: {hub}\n  insecure: true\n",
            ctx.name
        ),
    )
    .unwrap();

    let out = ctx
        .dts_command(&[
            "fleet",
            "deploy",
            "-i",
            inventory.to_str().unwrap(),
            "-f",
            stack.to_str().unwrap(),
            "--json",
        ])
        .env("DTS_HUB_PART_MIB", PART_MIB)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{v} {err}");
    for r in v["robots"].as_array().unwrap() {
        assert_eq!(r["state"], "committed", "{v}");
        let sent = r["bytes_sent"].as_u64().unwrap();
        assert!(sent < (NOISE as u64) / 4, "{sent} bytes over SSH: {v}");
    }
    // Each blob crossed the laptop's uplink once: one committed upload per digest.
    let mut committed: Vec<String> = reg
        .requests()
        .iter()
        .filter_map(|r| r.committed_digest())
        .collect();
    let n = committed.len();
    committed.sort();
    committed.dedup();
    assert_eq!(n, committed.len(), "a blob pushed twice:\n{}", reg.log());
    // Both robots fetched the large layer themselves: the largest blob GET twice.
    let gets = robot_gets(&reg);
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for g in &gets {
        *counts.entry(g.as_str()).or_default() += 1;
    }
    assert!(
        counts.values().any(|&c| c == 2),
        "no layer fetched by both robots: {counts:?}\n{}",
        reg.log()
    );
}
