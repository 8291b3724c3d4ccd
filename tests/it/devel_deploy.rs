//! `dts devel deploy` and `dts devel build -H` end to end, as a developer runs them: a git
//! checkout of a Duckietown-like project (its remote names the repository), a virtual arm64
//! Duckiebot (its agent under QEMU) running a release of two services, the code edited in the
//! working tree. Checked: `devel build -H` builds for the robot's platform under Duckietown's
//! tag; `devel deploy` replaces the service of the same repository, which then runs the new
//! code, while the other keeps running; `--watch` deploys at start, redeploys after an edit,
//! prints a broken Dockerfile's error and keeps the release running, redeploys once it is
//! fixed, and ends cleanly on SIGINT.

use crate::support::{self, TestContext};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tag Duckietown's rule gives the checkout: the remote's repository, the branch, arm64v8.
const TAG: &str = "duckietown/dt-demo:devel-arm64v8";

fn can_run() -> Option<PathBuf> {
    if !crate::deploy::can_run() || !support::require_cmd("git") {
        return None;
    }
    let agents = support::require_agent("arm64")?;
    if !Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        support::skip("qemu-aarch64 is not registered in binfmt_misc");
        return None;
    }
    support::require_busybox("arm64")?;
    Some(agents)
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nENV PATH=/bin\nCOPY code /code/\nCOPY run.sh /run.sh\nCMD [\"/bin/busybox\", \"sh\", \"/run.sh\"]\n";

/// A checkout (directory `checkout`, remote `…/duckietown/dt-demo.git`, branch `devel`) whose
/// image prints `/code/version.py` and then idles.
fn checkout(ctx: &TestContext) -> PathBuf {
    let dir = ctx.work.path().join("checkout");
    std::fs::create_dir_all(dir.join("code")).unwrap();
    std::fs::copy(support::busybox("arm64"), dir.join("busybox")).unwrap();
    std::fs::write(dir.join("code/version.py"), "VERSION = \"v1\"\n").unwrap();
    std::fs::write(
        dir.join("run.sh"),
        "trap 'exit 0' TERM\nbusybox cat /code/version.py\nwhile true; do busybox sleep 1 & wait $!; done\n",
    )
    .unwrap();
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(dir.join(".dockerignore"), "notes/\n").unwrap();
    git(&dir, &["init", "-q", "-b", "devel"]);
    git(
        &dir,
        &[
            "remote",
            "add",
            "origin",
            "https://github.com/duckietown/dt-demo.git",
        ],
    );
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "v1"]);
    dir
}

/// Polls `logs ROBOT SERVICE` until it shows `want`.
#[track_caller]
fn wait_logs(ctx: &TestContext, service: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ctx.dts(&["duckiebot", "logs", &ctx.name, service]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{service}` never printed {want:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ps(ctx: &TestContext) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["duckiebot", "ps", &ctx.name, "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

fn container<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container `{name}`: {list:?}"))
}

#[test]
fn devel_deploy_replaces_the_service_of_the_same_repository_and_watch_redeploys() {
    let Some(agents) = can_run() else { return };
    let ctx = TestContext::new().with_agent_dir(agents);
    let dir = checkout(&ctx);
    let c = dir.to_str().unwrap();
    ctx.ok(&["sim", "up", &ctx.name, "--arch", "arm64"]);

    // `devel build -H`: the robot's platform, Duckietown's tag; nothing shipped.
    let out = ctx.dts(&["devel", "build", "-C", c, "-H", &ctx.name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("{TAG} for")), "{err}");
    assert!(err.contains("linux/arm64"), "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&ctx.ok(&[
        "image",
        "inspect",
        TAG,
        "--platform",
        "linux/arm64",
        "--json",
    ]))
    .unwrap();
    assert_eq!(cfg["architecture"], "arm64", "{cfg}");

    // The robot runs two services: `ros` (another repository) and `demo`, the project's.
    ctx.ok(&[
        "devel",
        "build",
        "-C",
        c,
        "-t",
        "example.com/ros:v1",
        "--arch",
        "arm64v8",
    ]);
    let stack = ctx.work.path().join("stack.yaml");
    std::fs::write(
        &stack,
        format!(
            "services:\n  ros:\n    image: example.com/ros:v1\n    x-duckiebot: {{stage: 0}}\n  demo:\n    image: {TAG}\n    x-duckiebot: {{stage: 1}}\n"
        ),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ctx.ok(&[
        "duckiebot",
        "deploy",
        &ctx.name,
        "--stack",
        stack.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["state"], "committed", "{v}");
    wait_logs(&ctx, "demo", "VERSION = \"v1\"");
    let ros_before = container(&ps(&ctx), "ros")["pid"].clone();

    // One file edited in the working tree, then `devel deploy` with neither SERVICE nor -t.
    std::fs::write(dir.join("code/version.py"), "VERSION = \"v2\"\n").unwrap();
    let out = ctx.dts(&["devel", "deploy", &ctx.name, "-C", c, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["service"], "demo", "{r}");
    assert_eq!(r["image"], TAG, "{r}");
    assert_eq!(r["state"], "probation", "{r}");
    assert_eq!(r["release"], 2, "{r}");
    assert_eq!(r["objects_sent"], 1, "only version.py crosses: {r}");
    assert!(r["bytes_sent"].as_u64().unwrap() > 0, "{r}");
    assert!(r["duration_ms"].as_u64().unwrap() > 0, "{r}");
    wait_logs(&ctx, "demo", "VERSION = \"v2\"");
    let list = ps(&ctx);
    assert_eq!(container(&list, "demo")["image"], TAG, "{list:?}");
    assert_eq!(
        container(&list, "ros")["pid"],
        ros_before,
        "ros is kept: {list:?}"
    );

    // A SERVICE that is not in the release is bad input.
    let out = ctx.dts(&["devel", "deploy", &ctx.name, "nope", "-C", c]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`demo`"));

    watch(&ctx, &dir);
}

/// Lines of a child's stderr, collected by a thread.
fn collect(stderr: std::process::ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits until `count` lines of `lines` contain `what`.
#[track_caller]
fn wait_line(lines: &Mutex<Vec<String>>, what: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = lines.lock().unwrap().clone();
        if seen.iter().filter(|l| l.contains(what)).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {count} line(s) with {what:?}:\n{}",
            seen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn watch(ctx: &TestContext, dir: &Path) {
    let mut child = ctx
        .dts_command(&[
            "devel",
            "deploy",
            &ctx.name,
            "-C",
            dir.to_str().unwrap(),
            "--watch",
            "--progress",
            "plain",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect(child.stderr.take().unwrap());
    let runs = format!("`demo` runs {TAG}");
    // At start: built and deployed (the robot already runs it: unchanged).
    wait_line(&lines, &runs, 1);

    // An edit: redeployed.
    std::fs::write(dir.join("code/version.py"), "VERSION = \"v3\"\n").unwrap();
    wait_line(&lines, &runs, 2);
    wait_logs(ctx, "demo", "VERSION = \"v3\"");
    // A file .dockerignore excludes changes nothing.
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    std::fs::write(dir.join("notes/todo.txt"), "x").unwrap();

    // A broken Dockerfile: the error is printed, the robot keeps v3.
    std::fs::write(dir.join("Dockerfile"), "FRM scratch\n").unwrap();
    wait_line(&lines, "build failed", 1);
    let pid = container(&ps(ctx), "demo")["pid"].clone();
    assert!(!pid.is_null());
    {
        let seen = lines.lock().unwrap().join("\n");
        assert!(seen.contains("error:"), "{seen}");
        assert!(!seen.contains("notes/todo.txt"), "{seen}");
    }
    wait_logs(ctx, "demo", "VERSION = \"v3\"");

    // Fixed, with an edit: redeployed.
    std::fs::write(dir.join("code/version.py"), "VERSION = \"v4\"\n").unwrap();
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
    wait_line(&lines, &runs, 3);
    wait_logs(ctx, "demo", "VERSION = \"v4\"");

    // SIGINT: it ends cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "--watch did not end on SIGINT:\n{}",
                lines.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(200));
    let seen = lines.lock().unwrap().join("\n");
    assert!(status.success(), "{status:?}\n{seen}");
    assert!(seen.contains("stopped watching"), "{seen}");
    let h: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["duckiebot", "history", &ctx.name, "--json"])).unwrap();
    let last = h.as_array().unwrap().last().unwrap();
    assert_eq!(last["release"], 4, "v1, v2, v3, v4: {h}");
}
