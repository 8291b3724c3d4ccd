//! Images the robot holds and the laptop does not (issue 13, "never re-ship what the robot
//! holds"), and `deploy --pull missing|always|never`.
//!
//! The wire-level tests run a real `dt-agent serve --stdio` child on its own `DT_AGENT_ROOT`,
//! whose store got its images from `dt-agent image import` of an OCI layout the laptop's store
//! never saw: the laptop asks the robot to resolve the names (`resolve`, protocol 2.3), plans
//! them "held by robot", and sends no object. The end-to-end tests deploy to a virtual
//! Duckiebot with `dts duckiebot deploy`, reading the bytes on the link, and pull from the
//! local registry fixture (token auth) standing in for Docker Hub through `registry-mirrors`.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

use crate::support::images::{Layout, arch_layer, base_layer, multi_arch_layout};
use crate::support::registry::{Auth, Registry};
use crate::support::{self, TestContext};
use dts::oci::{Digest, Platform};
use dts::progress::Silent;
use dts::store::Store;
use dts::wire::client::{Connection, Detail};

use crate::wire::Io;

fn agent(root: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(args)
        .env("DT_AGENT_ROOT", root)
        .output()
        .expect("run dt-agent");
    assert!(
        out.status.success(),
        "dt-agent {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn open(root: &Path, cache: &Path) -> (tokio::process::Child, Connection<Io>) {
    let (child, io) = crate::wire::serve(root);
    let (mut conn, hello) = Connection::open(io).await.expect("hello");
    assert!(hello.resolves(), "a 2.3 robot: {}", hello.protocol);
    conn.set_cache_dir(cache.to_path_buf());
    (child, conn)
}

/// An OCI layout at `dir` holding one image for the host's platform, named `name`.
fn host_layout(dir: &Path, name: &str, seed: &str) -> Digest {
    let l = Layout::new(dir);
    let host = Platform::host().normalized();
    let code = crate::support::images::layer_tar(&[
        crate::support::images::Entry::Dir("opt/", 0o755),
        crate::support::images::Entry::File("opt/seed", 0o644, seed.as_bytes().to_vec()),
    ]);
    let w = l.image(
        &host,
        &[base_layer(), arch_layer(&host), code],
        &["/opt/run"],
    );
    l.finish(&[(name, w.manifest.clone())]);
    w.manifest.digest
}

/// The robot holds `duckietown/dt-ros-commons:daffy-amd64` (imported on the robot), `ubuntu`
/// (Docker Hub's short name), and an arm64-only image; the laptop's store holds none of them.
/// The robot resolves each as Docker would name it, by name and by digest; the plan marks them
/// held by the robot and the transfer sends no object and no document.
#[tokio::test(flavor = "multi_thread")]
async fn images_only_the_robot_holds_are_resolved_there_and_never_sent() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("robot");
    let commons = host_layout(
        &t.path().join("l1"),
        "duckietown/dt-ros-commons:daffy-amd64",
        "c",
    );
    agent(
        &root,
        &["image", "import", t.path().join("l1").to_str().unwrap()],
    );
    let ubuntu = host_layout(&t.path().join("l2"), "ubuntu", "u");
    agent(
        &root,
        &[
            "image",
            "import",
            "-t",
            "ubuntu",
            t.path().join("l2").to_str().unwrap(),
        ],
    );
    // A two-platform index of which the robot imported only arm64 (as adopting a Docker
    // image of another CPU leaves it): the only manifest the name has here.
    let (_, ws) = multi_arch_layout(&t.path().join("l3"), "example.com/dt/arm-only:v1");
    agent(
        &root,
        &[
            "image",
            "import",
            "--platform",
            "linux/arm64",
            t.path().join("l3").to_str().unwrap(),
        ],
    );

    let laptop = Store::open(&t.path().join("laptop/store")).unwrap();
    let (mut child, mut conn) = open(&root, &t.path().join("cache")).await;
    let names: Vec<String> = [
        "duckietown/dt-ros-commons:daffy-amd64".to_string(),
        "docker.io/library/ubuntu:latest".to_string(),
        "ubuntu".to_string(),
        format!("duckietown/dt-ros-commons@{commons}"),
        "example.com/dt/arm-only:v1".to_string(),
        "duckietown/dt-ros-commons:daffy-arm64v8".to_string(),
        format!("example.com/nowhere@{}", Digest::of(b"nothing")),
    ]
    .to_vec();
    let answers = conn.resolve_on_robot(&names).await.expect("resolve");
    let [c, u1, u2, by_digest, arm, absent, absent2] = &answers[..] else {
        panic!("{answers:?}")
    };
    let c = c.as_ref().expect("held by name");
    assert_eq!(c.name, "docker.io/duckietown/dt-ros-commons:daffy-amd64");
    assert_eq!((&c.digest, &c.manifest), (&commons, &commons));
    assert!(c.snapshot);
    assert_eq!(c.layers.len(), 3);
    assert_eq!(c.config.rootfs.diff_ids.len(), 3);
    assert_eq!(
        c.config.config.as_ref().unwrap().cmd.as_deref(),
        Some(&["/opt/run".to_string()][..])
    );
    for u in [u1, u2] {
        let u = u
            .as_ref()
            .expect("Docker Hub's short names are the robot's too");
        assert_eq!(u.name, "docker.io/library/ubuntu:latest");
        assert_eq!(u.manifest, ubuntu);
    }
    assert_eq!(by_digest.as_ref().expect("by digest").manifest, commons);
    let arm = arm.as_ref().expect("the only manifest the name has here");
    assert_eq!(arm.manifest, ws[0].manifest.digest);
    assert!(
        arm.platform.matches(&Platform::arm64()),
        "{:?}",
        arm.platform
    );
    assert!(absent.is_none() && absent2.is_none(), "{answers:?}");

    // Planned held by the robot: nothing to send, not even a document.
    let held: Vec<_> = [c.clone(), answers[1].clone().unwrap()].to_vec();
    let plan = conn
        .plan_with_held(&laptop, &[], &held, Detail::Objects)
        .await
        .expect("plan");
    assert_eq!(plan.images.len(), 2, "{plan:?}");
    assert!(
        plan.images
            .iter()
            .all(|i| i.held_by_robot && i.robot_has_snapshot)
    );
    assert_eq!(plan.layers_sent, 0);
    assert_eq!(plan.layers_skipped, plan.layers_total);
    assert!(plan.documents.is_empty());
    assert_eq!((plan.objects_sent, plan.object_bytes), (Some(0), Some(0)));
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["images"][0]["held_by_robot"], true, "{json}");
    let r = conn
        .transfer_with_held(&laptop, &[], &held, &Silent)
        .await
        .expect("transfer");
    assert_eq!((r.objects_sent, r.object_bytes, r.layers_sent), (0, 0, 0));
    assert_eq!(r.documents_sent, 0);
    conn.close().await.unwrap();
    assert!(child.wait().await.unwrap().success());
}

// ---- End to end: `dts duckiebot deploy` to a virtual Duckiebot -------------------------------

fn can_run_sim() -> bool {
    if !support::can_make_virtual_robot() {
        return false;
    }
    let auth = Auth::token("duckie", "quack");
    if let Some(why) = Registry::unavailable(&auth) {
        support::skip(&why);
        return false;
    }
    support::require_busybox("amd64").is_some()
}

/// A build context: busybox, two 1 MiB files of noise (what re-shipping would cost), a few
/// code files, `code/version.py` saying `version`, and `run.sh` that marks itself ready.
fn context(dir: &Path, version: &str) -> PathBuf {
    let ctx = dir.join(format!("ctx-{version}"));
    std::fs::create_dir_all(ctx.join("code")).unwrap();
    std::fs::create_dir_all(ctx.join("big")).unwrap();
    std::fs::copy(support::busybox("amd64"), ctx.join("busybox")).unwrap();
    for i in 0..20 {
        std::fs::write(ctx.join(format!("code/m{i}.py")), format!("x = {i}\n")).unwrap();
    }
    std::fs::write(ctx.join("code/version.py"), format!("V = {version:?}\n")).unwrap();
    for i in 0..2u64 {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i + 1) | 1;
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(ctx.join(format!("big/b{i}.bin")), data).unwrap();
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

fn tx_bytes(iface: &str) -> u64 {
    let p = format!("/sys/class/net/{iface}/statistics/tx_bytes");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .trim()
        .parse()
        .unwrap()
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
    let out = ctx.dts(&args);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn releases(ctx: &TestContext) -> usize {
    let h: Value =
        serde_json::from_str(&ctx.ok(&["duckiebot", "history", &ctx.name, "--json"])).unwrap();
    h.as_array().unwrap().len()
}

/// `~/.docker/config.json` with these `auths` (host → (user, password)).
fn docker_config(ctx: &TestContext, auths: &[(&str, &str, &str)]) {
    let mut m = serde_json::Map::new();
    for (host, user, password) in auths {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        m.insert(host.to_string(), serde_json::json!({ "auth": auth }));
    }
    let dir = ctx.home.path().join(".docker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({ "auths": m }).to_string(),
    )
    .unwrap();
}

/// Issue 13's deploy acceptance on one virtual Duckiebot:
/// - the robot holds `duckietown/dt-ros-commons:daffy-amd64` (a docker-archive imported on the
///   robot with `dt-agent image import`; the laptop's store lacks it): `--dry-run --json` plans
///   it held by the robot, and the deploy sends no object (link counters);
/// - swapping `core` for an image only the laptop has ships only what the robot lacks;
/// - `--pull missing` of a Docker Hub name, from the local registry standing in for Docker Hub
///   (`registry-mirrors`, token auth, Docker Hub's credentials), pulls only the robot's platform
///   of a two-platform index, then ships; `--pull always` asks the registry again;
/// - `--pull never` with an image neither side holds: exit 2 naming it, no release;
/// - bad inputs: an unknown `--pull`, an unreachable registry, wrong credentials;
/// - both sides holding the name with different digests: the laptop's wins.
#[test]
fn deploy_never_reships_what_the_robot_holds_and_pulls_what_neither_has() {
    if !can_run_sim() {
        return;
    }
    let ctx = TestContext::new();
    let work = ctx.work.path().to_path_buf();
    const COMMONS: &str = "duckietown/dt-ros-commons:daffy-amd64";

    // The robot's image, made on this laptop and then forgotten here.
    let c1 = context(&work, "commons");
    ctx.ok(&[
        "devel",
        "build",
        "-C",
        c1.to_str().unwrap(),
        "-t",
        COMMONS,
        "--arch",
        "amd64",
    ]);
    let archive = work.join("commons.tar");
    ctx.ok(&[
        "image",
        "save",
        COMMONS,
        "-o",
        archive.to_str().unwrap(),
        "--format",
        "docker",
    ]);
    ctx.ok(&["image", "rm", COMMONS]);
    ctx.ok(&["image", "prune"]);

    ctx.ok(&["sim", "up", &ctx.name]);
    let ls: Value = serde_json::from_str(&ctx.ok(&["sim", "ls", "--json"])).unwrap();
    let (address, host_if) = (
        ls[0]["address"].as_str().unwrap().to_string(),
        ls[0]["host_interface"].as_str().unwrap().to_string(),
    );
    std::fs::copy(&archive, ctx.sim_dir().join("root/data/commons.tar")).unwrap();
    ctx.ssh_ok(&address, "sudo -n dt-agent image import /data/commons.tar");

    let stack = work.join("stack.yaml");
    std::fs::write(
        &stack,
        format!(
            "services:\n  interface:\n    image: {COMMONS}\n    x-duckiebot: {{stage: 0}}\n  core:\n    image: {COMMONS}\n    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"test\", \"-f\", \"/ready\"]\n      interval: 1s\n      retries: 3\n    x-duckiebot: {{stage: 1}}\n"
        ),
    )
    .unwrap();

    // Held by the robot: planned so, and nothing of it crosses the link.
    let (code, dry, err) = deploy(&ctx, &stack, &["--dry-run"]);
    assert_eq!(code, Some(0), "{dry} {err}");
    let img = &dry["plan"]["images"][0];
    assert_eq!(img["held_by_robot"], true, "{dry}");
    assert_eq!(img["names"][0], format!("docker.io/{COMMONS}"), "{dry}");
    assert_eq!(dry["plan"]["layers"], serde_json::json!([]), "{dry}");
    assert_eq!(
        (dry["objects_sent"].as_u64(), dry["object_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    let before = tx_bytes(&host_if);
    let (code, v, err) = deploy(&ctx, &stack, &[]);
    let on_link = tx_bytes(&host_if) - before;
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert_eq!(
        (v["objects_sent"].as_u64(), v["object_bytes"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert!(
        on_link < 128 << 10,
        "{on_link} bytes on the link for an image the robot holds: {v}"
    );
    assert!(
        ctx.ok(&["duckiebot", "logs", &ctx.name, "core"])
            .contains("commons")
    );

    // `core` swapped for an image only the laptop has: only what the robot lacks goes (the
    // code layer's one changed file), not the 2 MiB it shares with the robot's image.
    let c2 = context(&work, "laptop");
    ctx.ok(&[
        "devel",
        "build",
        "-C",
        c2.to_str().unwrap(),
        "-t",
        "example.com/dep/app:v2",
        "--arch",
        "amd64",
    ]);
    let (code, v, err) = deploy(&ctx, &stack, &["--set", "core=example.com/dep/app:v2"]);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert_eq!(v["objects_sent"], 1, "only version.py: {v}");
    assert!(v["object_bytes"].as_u64().unwrap() < 64, "{v}");
    assert!(
        ctx.ok(&["duckiebot", "logs", &ctx.name, "core"])
            .contains("laptop")
    );

    // A registry standing in for Docker Hub (token auth) holding a two-platform image.
    let reg = Registry::start(Auth::token("duckie", "quack"));
    docker_config(
        &ctx,
        &[
            (&reg.addr, "duckie", "quack"),
            ("https://index.docker.io/v1/", "duckie", "quack"),
        ],
    );
    std::fs::write(
        ctx.dts_home.path().join("registries.json"),
        serde_json::json!({ "registry-mirrors": [reg.url()] }).to_string(),
    )
    .unwrap();
    let pushed = format!("{}/duckietown/dt-pull-test:v1", reg.addr);
    let c3 = context(&work, "pulled");
    let built: Value = serde_json::from_str(&ctx.ok(&[
        "devel",
        "build",
        "-C",
        c3.to_str().unwrap(),
        "-t",
        &pushed,
        "--arch",
        "amd64,arm64v8",
        "--json",
    ]))
    .unwrap();
    let arm64 = built["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["platform"].as_str().unwrap().contains("arm64"))
        .map(|p| p["digest"].as_str().unwrap().to_string())
        .expect("an arm64 manifest");
    ctx.ok(&["image", "push", &pushed]);
    ctx.ok(&["image", "rm", &pushed]);
    ctx.ok(&["image", "prune"]);

    // `--pull never`: exit 2 naming it, and the robot keeps its release.
    let n = releases(&ctx);
    let (code, v, err) = deploy(
        &ctx,
        &stack,
        &[
            "--set",
            "core=duckietown/dt-pull-test:v1",
            "--pull",
            "never",
        ],
    );
    assert_eq!(code, Some(2), "{v} {err}");
    assert!(
        err.contains("duckietown/dt-pull-test:v1") && err.contains("--pull never"),
        "{err}"
    );
    assert_eq!(releases(&ctx), n, "no release made");

    // `--pull missing` (the default): the robot's platform only, then shipped.
    let (code, v, err) = deploy(&ctx, &stack, &["--set", "core=duckietown/dt-pull-test:v1"]);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    assert!(
        err.contains("pulling `duckietown/dt-pull-test:v1` for linux/amd64"),
        "{err}"
    );
    assert!(
        ctx.ok(&["duckiebot", "logs", &ctx.name, "core"])
            .contains("pulled")
    );
    let images: Value = serde_json::from_str(&ctx.ok(&["image", "ls", "--json"])).unwrap();
    let pulled = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().contains("dt-pull-test"))
        .expect("pulled into the laptop's store");
    assert_eq!(
        pulled["platforms"],
        serde_json::json!(["linux/amd64"]),
        "{pulled}"
    );
    let requests = reg.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.method == "GET" && r.path.contains(&arm64)),
        "the arm64 manifest was fetched: {requests:?}"
    );
    assert!(!reg.token_requests().is_empty(), "token auth was used");

    // Pulled once: the default does not ask again; `--pull always` does.
    let manifests =
        |r: &[crate::support::registry::Request]| r.iter().filter(|r| r.is_manifest()).count();
    let seen = manifests(&reg.requests());
    let (code, v, err) = deploy(
        &ctx,
        &stack,
        &["--set", "core=duckietown/dt-pull-test:v1", "--dry-run"],
    );
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(
        manifests(&reg.requests()),
        seen,
        "missing: no registry request"
    );
    // (`--pull always` needs every image of the stack in a registry, so this stack has none
    // that only the robot holds: that one would be asked of Docker Hub itself.)
    let pulled_only = work.join("pulled.yaml");
    std::fs::write(
        &pulled_only,
        "services:\n  core:\n    image: duckietown/dt-pull-test:v1\n",
    )
    .unwrap();
    let seen = manifests(&reg.requests());
    let (code, v, err) = deploy(&ctx, &pulled_only, &["--pull", "always", "--dry-run"]);
    assert_eq!(code, Some(0), "{v} {err}");
    assert!(
        manifests(&reg.requests()) > seen,
        "always: the registry is asked again"
    );
    assert_eq!(v["objects_sent"], 0, "{v}");

    // Bad inputs.
    let (code, _, err) = deploy(&ctx, &stack, &["--pull", "sometimes"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing, always or never"), "{err}");
    let (code, _, err) = deploy(
        &ctx,
        &stack,
        &["--set", "core=127.0.0.1:1/dt/nowhere:v1", "--dry-run"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("127.0.0.1:1/dt/nowhere:v1"),
        "names the image: {err}"
    );
    docker_config(&ctx, &[(&reg.addr, "duckie", "wrong")]);
    let (code, _, err) = deploy(
        &ctx,
        &stack,
        &["--set", &format!("core={pushed}"), "--dry-run"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("credentials rejected"), "{err}");
    assert_eq!(
        releases(&ctx),
        n + 1,
        "only the pull's deploy made a release"
    );

    // Both sides hold the robot's image's name, with different digests: the laptop's wins
    // (it is what the user built), and it is shipped, not taken from the robot.
    let c4 = context(&work, "rebuilt");
    let rebuilt = ctx
        .ok(&[
            "devel",
            "build",
            "-C",
            c4.to_str().unwrap(),
            "-t",
            COMMONS,
            "--arch",
            "amd64",
        ])
        .trim()
        .to_string();
    let (code, dry, err) = deploy(&ctx, &stack, &["--dry-run"]);
    assert_eq!(code, Some(0), "{dry} {err}");
    let img = &dry["plan"]["images"][0];
    assert_eq!(img["held_by_robot"], false, "{dry}");
    assert_eq!(img["manifest"], rebuilt, "{dry}");
    assert_eq!(dry["objects_sent"], 1, "the rebuilt version.py: {dry}");
}
