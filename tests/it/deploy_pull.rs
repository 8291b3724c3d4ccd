//! Images the robot holds and the laptop does not (issue 13, "never re-ship what the robot
//! holds"), and `deploy --pull missing|always|never`.
//!
//! The wire-level tests run a real `dt-agent serve --stdio` child on its own `DT_AGENT_ROOT`,
//! whose store got its images from `dt-agent image import` of an OCI layout the laptop's store
//! never saw: the laptop asks the robot to resolve the names (`resolve`, protocol 2.3), plans
//! them "held by robot", and sends no object. The end-to-end tests deploy to a virtual
//! Duckiebot with `dts duckiebot deploy`, reading the bytes on the link, and pull from the
//! local registry fixture (token auth) standing in for Docker Hub through `registry-mirrors`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::images::{Layout, arch_layer, base_layer, multi_arch_layout};
use dts::oci::{Digest, Platform};
use dts::progress::Silent;
use dts::store::Store;
use dts::wire::client::{Connection, Detail};

type Io = tokio::io::Join<tokio::process::ChildStdout, tokio::process::ChildStdin>;

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
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(["serve", "--stdio"])
        .env("DT_AGENT_ROOT", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dt-agent serve");
    let io = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
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
