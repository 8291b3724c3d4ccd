//! Cross-compiling stages (issue 19, scope 2): a stage `FROM --platform=$BUILDPLATFORM` runs
//! its RUN steps natively (no emulator) with `TARGETARCH` & co. set per target, is made once
//! for all targets when its inputs are equal (the second target's thread waits for the first
//! and reads the cache), and the final image of each target is for that target.
//!
//! busybox stands in for a compiler: what the native stage "builds" is `uname -m` (the machine
//! it ran on) and a random UUID (equal in two targets' images only if it ran once).

use std::path::Path;

use crate::build::{busybox_context, can_run, dts, file_content, inspect, json, p, write};

const DOCKERFILE: &str = r#"FROM --platform=$BUILDPLATFORM scratch AS tools
ARG BUILDARCH
COPY busybox/${BUILDARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
RUN uname -m > /native-uname && cat /proc/sys/kernel/random/uuid > /ran-at

FROM tools AS per-target
ARG TARGETARCH
ARG TARGETVARIANT
RUN echo "$(uname -m) $TARGETARCH $TARGETVARIANT" > /per-target

FROM scratch
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
COPY --from=tools /native-uname /ran-at /out/
COPY --from=per-target /per-target /out/
"#;

fn host_uname() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        other => other,
    }
}

fn build(home: &Path, ctx: &Path) -> serde_json::Value {
    json(&dts(
        home,
        &[
            "devel",
            "build",
            "-C",
            p(ctx),
            "-t",
            "demo/cross:1",
            "--arch",
            "arm64v8,arm32v7",
            "--json",
        ],
    ))
}

#[test]
fn build_platform_stages_run_natively_once_for_all_targets() {
    if !can_run() {
        return;
    }
    if std::env::consts::ARCH != "x86_64" {
        // The busybox fixtures name amd64 as the build machine's.
        crate::support::skip("the native-stage fixture expects an x86_64 build machine");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    assert!(busybox_context(&ctx));
    write(&ctx, &[("Dockerfile", DOCKERFILE)]);
    let report = build(&home, &ctx);
    // Layer steps per target: tools 3 (COPY, RUN, RUN), per-target 1, final 3. The tools
    // stage's three are made once and served from the cache to the other target.
    assert_eq!(
        (
            report["steps_run"].as_u64(),
            report["steps_cached"].as_u64()
        ),
        (Some(11), Some(3)),
        "{report}"
    );
    let name = "demo/cross:1";
    let mut ran_at = Vec::new();
    for (platform, arch, variant) in [("linux/arm64", "arm64", ""), ("linux/arm/v7", "arm", "v7")] {
        assert_eq!(
            file_content(&home, name, platform, "out/native-uname"),
            format!("{}\n", host_uname()).as_bytes(),
            "the native stage ran without an emulator"
        );
        assert_eq!(
            String::from_utf8(file_content(&home, name, platform, "out/per-target")).unwrap(),
            format!("{} {arch} {variant}\n", host_uname()),
            "a native stage sees the target's TARGETARCH/TARGETVARIANT"
        );
        ran_at.push(file_content(&home, name, platform, "out/ran-at"));
        let cfg = inspect(&home, name, platform);
        assert_eq!(cfg["architecture"], arch, "{cfg}");
        assert_eq!(cfg["os"], "linux");
        if variant.is_empty() {
            assert!(cfg["variant"].is_null(), "{cfg}");
        } else {
            assert_eq!(cfg["variant"], variant, "{cfg}");
        }
        // The target's busybox, not the build machine's (ELF e_machine).
        let bb = file_content(&home, name, platform, "bin/busybox");
        let machine = u16::from_le_bytes([bb[18], bb[19]]);
        assert_eq!(machine, if arch == "arm64" { 0xb7 } else { 0x28 });
    }
    assert_eq!(ran_at[0], ran_at[1], "the shared RUN ran once");

    // Unchanged: everything from the cache.
    let again = build(&home, &ctx);
    assert_eq!(
        (again["steps_run"].as_u64(), again["steps_cached"].as_u64()),
        (Some(0), Some(14)),
        "{again}"
    );
}

/// A last stage `FROM --platform=$BUILDPLATFORM` still makes an image for the target asked for
/// (BuildKit stamps the target on the result when platforms are named).
#[test]
fn a_native_last_stage_gives_the_target_platform() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    write(
        &ctx,
        &[
            (
                "Dockerfile",
                "FROM --platform=$BUILDPLATFORM scratch\nARG TARGETARCH\nLABEL t=$TARGETARCH\nCOPY f /f\n",
            ),
            ("f", "x\n"),
        ],
    );
    ok_build(&home, &ctx, "arm64v8");
    let cfg = inspect(&home, "demo/native-last:1", "linux/arm64");
    assert_eq!(cfg["architecture"], "arm64", "{cfg}");
    assert_eq!(cfg["config"]["Labels"]["t"], "arm64", "{cfg}");
}

fn ok_build(home: &Path, ctx: &Path, arch: &str) {
    crate::build::ok(&dts(
        home,
        &[
            "devel",
            "build",
            "-C",
            p(ctx),
            "-t",
            "demo/native-last:1",
            "--arch",
            arch,
        ],
    ));
}
