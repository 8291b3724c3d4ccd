//! Stages a target reads from (`COPY --from`, `RUN --mount from=`) run alongside it, as
//! BuildKit's graph solver runs them, and a failure in one stops the build with its own error:
//! the other stages' and platforms' RUNs in progress are killed.
//!
//! Both Dockerfiles build for this machine (no emulator): a `side` stage and the target's own
//! RUN leave the kernel's uptime in files, so the image shows whether they overlapped.

use std::path::Path;

use crate::build::{busybox_context, can_run, dts, file_content, json, p, write};

/// The busybox stage both others start from.
const TOOLS: &str = r#"FROM scratch AS tools
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
"#;

fn uptime(bytes: &[u8]) -> f64 {
    let text = String::from_utf8_lossy(bytes);
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn context(dir: &Path, stages: &str) -> bool {
    if !can_run() {
        return false;
    }
    if std::env::consts::ARCH != "x86_64" {
        crate::support::skip("the stage-graph fixture builds for amd64, this build machine's");
        return false;
    }
    if !busybox_context(dir) {
        return false;
    }
    write(dir, &[("Dockerfile", &format!("{TOOLS}{stages}"))]);
    true
}

fn build(home: &Path, ctx: &Path, extra: &[&str]) -> std::process::Output {
    build_for(home, ctx, "amd64", extra)
}

fn build_for(home: &Path, ctx: &Path, arch: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "devel",
        "build",
        "-C",
        p(ctx),
        "-t",
        "demo/graph:1",
        "--arch",
        arch,
    ];
    args.extend(extra);
    dts(home, &args)
}

#[test]
fn a_stage_read_with_copy_from_runs_while_the_target_runs() {
    let t = tempfile::tempdir().unwrap();
    let (home, ctx) = (t.path().join("home"), t.path().join("ctx"));
    if !context(
        &ctx,
        "FROM tools AS side\n\
         RUN cat /proc/uptime > /side-ran\n\
         FROM tools\n\
         RUN cat /proc/uptime > /main-started && sleep 3 && cat /proc/uptime > /main-ended\n\
         COPY --from=side /side-ran /\n",
    ) {
        return;
    }
    let report = json(&build(&home, &ctx, &["--json"]));
    // tools: COPY + RUN; side: RUN; target: RUN + COPY. Each once, whoever got there first.
    assert_eq!(
        (
            report["steps_run"].as_u64(),
            report["steps_cached"].as_u64()
        ),
        (Some(5), Some(0)),
        "{report}"
    );
    let read = |f: &str| uptime(&file_content(&home, "demo/graph:1", "linux/amd64", f));
    let (side, started, ended) = (read("side-ran"), read("main-started"), read("main-ended"));
    assert!(
        side < ended,
        "the side stage ran at {side}, after the target's 3 s RUN ({started}..{ended})"
    );
}

#[test]
fn a_failing_side_stage_stops_the_build_with_its_own_error() {
    let t = tempfile::tempdir().unwrap();
    let (home, ctx) = (t.path().join("home"), t.path().join("ctx"));
    if !context(
        &ctx,
        "FROM tools AS side\n\
         RUN echo compiling; exit 3\n\
         FROM tools\n\
         RUN sleep 2\n\
         RUN echo the step after > /after\n\
         COPY --from=side /etc /etc\n",
    ) {
        return;
    }
    let out = build(&home, &ctx, &["--progress", "plain"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Dockerfile:7:1") && err.contains("exit code 3") && err.contains("compiling"),
        "the side stage's RUN is the error: {err}"
    );
    assert!(!err.contains("stopped"), "not the cancellation: {err}");
    assert!(
        !err.contains("RUN echo the step after"),
        "the target stopped at its next step: {err}"
    );
}

/// Containers and RUN scratch directories the build left in `home` (none, once it returned).
fn leftovers(home: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for dir in ["build/snapshots/tmp", "build/runtime/runc"] {
        if let Ok(entries) = std::fs::read_dir(home.join(dir)) {
            left.extend(entries.map(|e| format!("{dir}/{}", e.unwrap().file_name().display())));
        }
    }
    left
}

#[test]
fn a_failing_side_stage_kills_the_targets_run_in_progress() {
    let t = tempfile::tempdir().unwrap();
    let (home, ctx) = (t.path().join("home"), t.path().join("ctx"));
    if !context(
        &ctx,
        "FROM tools AS side\n\
         RUN sleep 1; echo compiling; exit 3\n\
         FROM tools\n\
         RUN echo the long step; sleep 120\n\
         COPY --from=side /etc /etc\n",
    ) {
        return;
    }
    let started = std::time::Instant::now();
    let out = build(&home, &ctx, &["--progress", "plain"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("exit code 3") && err.contains("compiling") && !err.contains("stopped"),
        "the side stage's RUN is the error: {err}"
    );
    assert!(
        err.contains("sleep 120: CANCELED") && err.contains("exit 3: ERROR"),
        "{err}"
    );
    // BuildKit cancels the solve's other steps: the 120 s RUN does not hold up the error.
    assert!(
        took < std::time::Duration::from_secs(60),
        "the target's RUN ran on for {took:?}"
    );
    assert_eq!(leftovers(&home), Vec::<String>::new());
}

#[test]
fn a_failure_on_one_platform_stops_the_others() {
    let t = tempfile::tempdir().unwrap();
    let (home, ctx) = (t.path().join("home"), t.path().join("ctx"));
    if !context(
        &ctx,
        "FROM tools\n\
         RUN case $(uname -m) in aarch64) sleep 1; echo broken here; exit 4;; esac; sleep 120\n\
         RUN echo the step after > /after\n",
    ) {
        return;
    }
    let started = std::time::Instant::now();
    let out = build_for(&home, &ctx, "amd64,arm64v8", &["--progress", "plain"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("exit code 4") && err.contains("broken here") && !err.contains("stopped"),
        "arm64v8's RUN is the error, not amd64's cancellation: {err}"
    );
    assert!(
        took < std::time::Duration::from_secs(60),
        "amd64's RUN ran on for {took:?}"
    );
    assert!(!err.contains("RUN echo the step after"), "{err}");
    assert!(
        err.contains("[amd64 7/8] RUN") && err.contains("120: CANCELED"),
        "{err}"
    );
    assert_eq!(leftovers(&home), Vec::<String>::new());
}
