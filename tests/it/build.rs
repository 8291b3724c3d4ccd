//! `dts devel build` end to end through the binary: every instruction's effect on the config
//! and the file tree, the sample three-stage Duckiebot pipeline for arm64v8 + arm32v7 under
//! QEMU, the cache, reproducibility across directories and mtimes, and bad input.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dts::oci::Digest;

pub(crate) fn dts(home: &Path, args: &[&str]) -> Output {
    dts_env(home, args, &[])
}

pub(crate) fn dts_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dts"));
    c.args(args)
        .env("DTS_HOME", home)
        .env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run dts")
}

#[track_caller]
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "dts failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("one JSON document")
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub(crate) fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// The layer tars of one platform of an image, base first, via a docker-archive.
pub(crate) fn layers(home: &Path, name: &str, platform: &str) -> Vec<Vec<u8>> {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("img.tar");
    ok(&dts(
        home,
        &[
            "image",
            "save",
            name,
            "--format",
            "docker",
            "--platform",
            platform,
            "-o",
            p(&archive),
        ],
    ));
    let mut blobs = BTreeMap::new();
    for e in tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
    {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        blobs.insert(path, data);
    }
    let m: serde_json::Value = serde_json::from_slice(&blobs["manifest.json"]).unwrap();
    m[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blobs[l.as_str().unwrap()].clone())
        .collect()
}

/// The file tree of one platform of an image: path → "kind mode uid:gid content-hash|target",
/// whiteouts applied.
pub(crate) fn image_tree(home: &Path, name: &str, platform: &str) -> BTreeMap<String, String> {
    let mut tree = BTreeMap::new();
    for data in layers(home, name, platform) {
        for e in tar::Archive::new(&data[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let path = path.trim_end_matches('/').to_string();
            let name = path.rsplit('/').next().unwrap().to_string();
            if let Some(victim) = name.strip_prefix(".wh.") {
                let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                let victim = if dir.is_empty() {
                    victim.to_string()
                } else {
                    format!("{dir}/{victim}")
                };
                tree.retain(|k: &String, _| k != &victim && !k.starts_with(&format!("{victim}/")));
                continue;
            }
            let h = e.header();
            let meta = format!(
                "{:o} {}:{}",
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap()
            );
            let v = match h.entry_type() {
                tar::EntryType::Directory => format!("dir {meta}"),
                tar::EntryType::Symlink => {
                    format!("symlink {}", e.link_name().unwrap().unwrap().display())
                }
                tar::EntryType::Link => {
                    format!("hardlink {}", e.link_name().unwrap().unwrap().display())
                }
                _ => {
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                    format!("file {meta} {}", Digest::of(&data).short())
                }
            };
            tree.insert(path, v);
        }
    }
    tree
}

/// The content of `want` in the topmost layer that has it.
pub(crate) fn file_content(home: &Path, name: &str, platform: &str, want: &str) -> Vec<u8> {
    content_in(&layers(home, name, platform), want)
        .unwrap_or_else(|| panic!("{want} not in {name}"))
}

/// The content of `want` in the topmost of `layers` (tars, base first) that has it.
pub(crate) fn content_in(layers: &[Vec<u8>], want: &str) -> Option<Vec<u8>> {
    let mut found = None;
    for data in layers {
        for e in tar::Archive::new(&data[..]).entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().display().to_string() == want {
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut content).unwrap();
                found = Some(content);
            }
        }
    }
    found
}

pub(crate) fn inspect(home: &Path, name: &str, platform: &str) -> serde_json::Value {
    json(&dts(
        home,
        &["image", "inspect", name, "--platform", platform, "--json"],
    ))
}

#[test]
fn metadata_and_copy_instructions_without_run() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(
        &ctx,
        &[
            ("app/main.py", "print('hi')\n"),
            ("app/lib/util.py", "x = 1\n"),
            ("app/skip.log", "noise\n"),
            ("app/lib/util.pyc", "bytecode\n"),
            ("config.yaml", "a: 1\n"),
            ("archive-src/inner.txt", "from the archive\n"),
            (".dockerignore", "**/*.log\n"),
            (
                "Dockerfile",
                r#"# syntax=docker/dockerfile:1
ARG BASE=scratch
FROM ${BASE} AS base
LABEL org.duckietown.label.module.type="demo" maintainer.name="Duckie"
MAINTAINER duckie@duckietown.org
ENV ROS_DISTRO=noetic \
    CATKIN_WS_DIR=/code/catkin_ws
ENV REPO_PATH=${CATKIN_WS_DIR}/src/demo
WORKDIR /code
COPY --exclude=lib/*.pyc app ${REPO_PATH}/
COPY --chmod=600 --chown=1000:1000 config.yaml /data/config/
COPY <<EOF /etc/motd
robot ${ROS_DISTRO}
EOF
ADD layer.tar /opt/
EXPOSE 8080 9090/udp 7000-7001
VOLUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD cat /health
SHELL ["/bin/sh", "-ec"]
ONBUILD COPY . /onbuild
ENTRYPOINT ["/entrypoint.sh"]
CMD echo ${ROS_DISTRO}

FROM base AS final
ARG TARGETARCH
ENV ARCH_SEEN=${TARGETARCH}
COPY --from=base /code/catkin_ws/src/demo/main.py /final/main.py
"#,
            ),
        ],
    );
    // A real tar archive for ADD to extract.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(17);
    h.set_mode(0o644);
    b.append_data(&mut h, "inner.txt", &b"from the archive\n"[..])
        .unwrap();
    std::fs::write(ctx.join("layer.tar"), b.into_inner().unwrap()).unwrap();

    let home = t.path().join("home");
    let out = dts_env(
        &home,
        &[
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            "demo/meta:1",
            "--platform",
            "linux/arm64",
            "--json",
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    let r = json(&out);
    assert_eq!(
        r["steps_run"].as_u64().unwrap(),
        7,
        "WORKDIR, 3 COPY, ADD; ONBUILD's COPY and COPY --from in the child"
    );
    let cfg = inspect(&home, "demo/meta:1", "linux/arm64");
    let c = &cfg["config"];
    assert_eq!(cfg["architecture"], "arm64");
    assert_eq!(cfg["author"], "duckie@duckietown.org");
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    assert_eq!(c["Labels"]["org.duckietown.label.module.type"], "demo");
    assert_eq!(c["Labels"]["maintainer.name"], "Duckie");
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"REPO_PATH=/code/catkin_ws/src/demo"),
        "{env:?}"
    );
    assert!(env.contains(&"ARCH_SEEN=arm64"), "{env:?}");
    assert_eq!(c["WorkingDir"], "/code");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"7000/tcp": {}, "7001/tcp": {}, "8080/tcp": {}, "9090/udp": {}})
    );
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(
        c["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "cat /health"])
    );
    assert_eq!(c["Healthcheck"]["Interval"], 30_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Retries"], 3);
    assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    assert_eq!(c["Entrypoint"], serde_json::json!(["/entrypoint.sh"]));
    // CMD's shell form uses the SHELL in force and is not expanded by the builder.
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["/bin/sh", "-ec", "echo ${ROS_DISTRO}"])
    );
    // The child stage ran the base's ONBUILD trigger and cleared it.
    assert!(c.get("OnBuild").is_none() || c["OnBuild"].is_null());

    let tree = image_tree(&home, "demo/meta:1", "linux/arm64");
    let get = |k: &str| {
        tree.get(k)
            .unwrap_or_else(|| panic!("{k} not in {tree:#?}"))
            .clone()
    };
    assert!(get("code/catkin_ws/src/demo/main.py").starts_with("file 644 0:0"));
    assert!(get("code/catkin_ws/src/demo/lib/util.py").starts_with("file 644 0:0"));
    assert!(
        !tree.contains_key("code/catkin_ws/src/demo/skip.log"),
        ".dockerignore"
    );
    assert!(
        !tree.contains_key("code/catkin_ws/src/demo/lib/util.pyc"),
        "--exclude"
    );
    assert!(get("data/config/config.yaml").starts_with("file 600 1000:1000"));
    assert!(get("etc/motd").starts_with("file 644 0:0"));
    assert!(
        get("opt/inner.txt").starts_with("file 644 0:0"),
        "ADD extracts local tars"
    );
    assert!(get("final/main.py").starts_with("file 644 0:0"));
    assert!(
        tree.contains_key("onbuild/config.yaml"),
        "ONBUILD COPY . ran in the child"
    );
    assert_eq!(
        file_content(&home, "demo/meta:1", "linux/arm64", "etc/motd"),
        b"robot noetic\n"
    );

    // One edited file re-runs from its COPY only.
    std::fs::write(ctx.join("config.yaml"), "a: 2\n").unwrap();
    let r2 = json(&dts_env(
        &home,
        &[
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            "demo/meta:1",
            "--platform",
            "linux/arm64",
            "--json",
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    ));
    assert_eq!(r2["steps_cached"], 2, "WORKDIR and the first COPY: {r2}");
    assert_ne!(r2["digest"], r["digest"]);
}

#[test]
fn bad_dockerfiles_exit_2_with_file_line_col() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let cases = [
        ("FROM scratch\nFORM x\n", "Dockerfile:2:1", "FORM"),
        ("FROM scratch\nRUN <<EOF\necho hi\n", "Dockerfile:2", "EOF"),
        ("ARG B\nFROM ${B}\n", "Dockerfile:2", "base name"),
        (
            "FROM scratch\nCOPY missing.txt /x\n",
            "Dockerfile:2",
            "missing.txt",
        ),
        (
            "FROM scratch\nCOPY a b /not-a-dir\n",
            "Dockerfile:2",
            "must be a directory",
        ),
        (
            "FROM scratch\nSTOPSIGNAL SIGNOPE\n",
            "Dockerfile:2",
            "SIGNOPE",
        ),
        (
            "FROM scratch\nRUN --mount=type=volume,target=/c true\n",
            "Dockerfile:2",
            "unsupported mount type `volume`",
        ),
        (
            "FROM scratch\nCOPY --parents missing/a /x/\n",
            "Dockerfile:2",
            "missing/a",
        ),
        (
            "FROM scratch AS s\nFROM scratch\nCOPY --from=s --exclude=*.c /nothing /x/\n",
            "Dockerfile:3:1",
            "/nothing",
        ),
        (
            "FROM scratch\nADD file:///srv/repo.git /src\n",
            "Dockerfile:2",
            "git repositories",
        ),
        (
            "FROM scratch\nCOPY --chmod=u=rwq a /a\n",
            "Dockerfile:2:1",
            "--chmod",
        ),
        (
            "FROM scratch\nADD ftp://host/file /f\n",
            "Dockerfile:2",
            "http",
        ),
    ];
    for (i, (text, loc, culprit)) in cases.iter().enumerate() {
        let ctx = t.path().join(format!("ctx{i}"));
        write(&ctx, &[("Dockerfile", text), ("a", "a"), ("b", "b")]);
        let out = dts(&home, &["devel", "build", "-C", p(&ctx)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains(loc) && err.contains(culprit),
            "{text:?}: {err}"
        );
    }
    // A base image that cannot be had is the operation failing (exit 1), named.
    let ctx = t.path().join("nobase");
    write(
        &ctx,
        &[("Dockerfile", "FROM 127.0.0.1:9/duckietown/nope:v1\n")],
    );
    let out = dts(&home, &["devel", "build", "-C", p(&ctx), "--insecure"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Dockerfile:1:1") && err.contains("duckietown/nope:v1"),
        "{err}"
    );
}

/// Copies the fixture busybox binaries into a context as `busybox/<TARGETARCH>/busybox`.
pub(crate) fn busybox_context(dir: &Path) -> bool {
    let cache = std::env::var("DTS_FIXTURES").unwrap_or_else(|_| "/var/cache/dts-fixtures".into());
    for (fixture, targetarch) in [("arm64", "arm64"), ("armhf", "arm"), ("amd64", "amd64")] {
        let src = PathBuf::from(&cache)
            .join("busybox")
            .join(fixture)
            .join("busybox");
        if !src.is_file() {
            support::skip(&format!(
                "no busybox fixture at {} (run scripts/fixtures)",
                src.display()
            ));
            return false;
        }
        let dst = dir.join("busybox").join(targetarch);
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(&src, dst.join("busybox")).unwrap();
    }
    true
}

pub(crate) fn can_run() -> bool {
    if !support::require_root("RUN needs overlayfs mounts and runc")
        || !support::require_cmd("runc")
    {
        return false;
    }
    if !Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        support::skip("QEMU is not registered in binfmt_misc (scripts/test registers it)");
        return false;
    }
    true
}

/// The sample pipeline: base (busybox by TARGETARCH) → interface → car-interface → core.
fn pipeline(dir: &Path) {
    write(
        dir,
        &[
            (
                "base/Dockerfile",
                "FROM scratch\nARG TARGETARCH\nCOPY busybox/${TARGETARCH}/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\n",
            ),
            (
                "interface/Dockerfile",
                "ARG BASE\nFROM ${BASE}\nCOPY packages /code/interface/\nRUN uname -m > /code/interface/arch && echo interface > /code/stage\n",
            ),
            ("interface/packages/driver.py", "print('motors')\n"),
            (
                "car/Dockerfile",
                "ARG BASE\nFROM ${BASE}\nCOPY packages /code/car/\nRUN cat /code/interface/arch > /code/car/arch && echo car >> /code/stage\n",
            ),
            ("car/packages/kinematics.py", "print('wheels')\n"),
            (
                "core/Dockerfile",
                "ARG BASE\nFROM ${BASE}\nCOPY packages /code/core/\nRUN uname -m > /code/core/arch && echo core >> /code/stage\nCMD [\"cat\", \"/code/stage\"]\n",
            ),
            ("core/packages/lane_following.py", "print('follow')\n"),
        ],
    );
}

fn build_pipeline(home: &Path, dir: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let arch = "arm64v8,arm32v7";
    let mut digests = Vec::new();
    let mut base = String::new();
    for (stage, tag) in [
        ("base", "sample/base:v1"),
        ("interface", "sample/dt-duckiebot-interface:v1"),
        ("car", "sample/dt-car-interface:v1"),
        ("core", "sample/dt-core:v1"),
    ] {
        let ctx = dir.join(stage);
        if stage == "base" {
            assert!(busybox_context(&ctx));
        }
        let mut args = vec!["devel", "build", "-C", p(&ctx), "-t", tag, "--arch", arch];
        let b = format!("BASE={base}");
        if !base.is_empty() {
            args.extend(["--build-arg", &b]);
        }
        let out = ok(&dts_env(home, &args, env));
        digests.push(out.lines().last().unwrap().to_string());
        base = tag.to_string();
    }
    digests
}

#[test]
fn sample_pipeline_builds_for_arm64_and_armhf_under_qemu() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    pipeline(&t.path().join("src"));
    build_pipeline(&home, &t.path().join("src"), &[]);
    for (platform, uname) in [("linux/arm64", "aarch64\n"), ("linux/arm/v7", "armv7l\n")] {
        let core = "sample/dt-core:v1";
        assert_eq!(
            file_content(&home, core, platform, "code/interface/arch"),
            uname.as_bytes()
        );
        assert_eq!(
            file_content(&home, core, platform, "code/car/arch"),
            uname.as_bytes()
        );
        assert_eq!(
            file_content(&home, core, platform, "code/core/arch"),
            uname.as_bytes()
        );
        assert_eq!(
            file_content(&home, core, platform, "code/stage"),
            b"interface\ncar\ncore\n"
        );
        let cfg = inspect(&home, core, platform);
        assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 8);
    }
    // A failing RUN: exit 1, the Dockerfile line, the exit code and the output.
    let ctx = t.path().join("fail");
    write(
        &ctx,
        &[(
            "Dockerfile",
            "FROM sample/base:v1\nRUN echo about to fail && exit 3\n",
        )],
    );
    let out = dts(
        &home,
        &["devel", "build", "-C", p(&ctx), "--arch", "arm64v8"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Dockerfile:2:1")
            && err.contains("exit code 3")
            && err.contains("about to fail"),
        "{err}"
    );
}

#[test]
fn same_inputs_in_other_directories_give_the_same_index() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    // A checkout's files are newer than its commit: the writer clamps them to the commit time.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (i, mtime) in [(0, now), (1, now + 86_400)] {
        let src = t.path().join(format!("checkout-{i}"));
        pipeline(&src);
        assert!(busybox_context(&src.join("base")));
        // Different mtimes on every file of the two copies.
        for entry in walk(&src) {
            let f = std::fs::File::options().write(true).open(&entry).unwrap();
            f.set_modified(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs((mtime + i) as u64),
            )
            .unwrap();
        }
        // Each copy is a git checkout of the same commit: SOURCE_DATE_EPOCH comes from it.
        for args in [
            &["init", "-q"][..],
            &["add", "."],
            &[
                "-c",
                "user.name=duckie",
                "-c",
                "user.email=d@d",
                "commit",
                "-q",
                "-m",
                "pipeline",
            ],
        ] {
            let st = Command::new("git")
                .arg("-C")
                .arg(&src)
                .args(args)
                .env("GIT_AUTHOR_DATE", "2024-05-01T12:00:00Z")
                .env("GIT_COMMITTER_DATE", "2024-05-01T12:00:00Z")
                .status()
                .unwrap();
            assert!(st.success());
        }
        let home = t.path().join(format!("home-{i}"));
        results.push(build_pipeline(&home, &src, &[]));
    }
    assert_eq!(results[0], results[1], "same inputs, same digests");
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Serves `body` for every GET on 127.0.0.1 until the test ends.
fn serve(body: &'static [u8]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn add_from_a_url_checks_its_checksum() {
    let body: &'static [u8] = b"#!/bin/sh\necho calibrate\n";
    let url = format!("{}/tools/calibrate.sh", serve(body));
    let sum = Digest::of(body);
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ok");
    write(
        &ctx,
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD --checksum={sum} {url} /usr/local/bin/\n"),
        )],
    );
    ok(&dts(
        &home,
        &[
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            "demo/url:1",
            "--platform",
            "linux/arm64",
        ],
    ));
    let tree = image_tree(&home, "demo/url:1", "linux/arm64");
    assert!(
        tree["usr/local/bin/calibrate.sh"].starts_with("file 600 0:0"),
        "{tree:?}"
    );
    let ctx = t.path().join("bad");
    let wrong = Digest::of(b"something else");
    write(
        &ctx,
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD --checksum={wrong} {url} /x\n"),
        )],
    );
    let out = dts(&home, &["devel", "build", "-C", p(&ctx)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Dockerfile:2") && err.contains("checksum mismatch") && err.contains(&url),
        "{err}"
    );
}

#[test]
fn run_heredocs_users_targets_and_duckietown_projects() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    assert!(busybox_context(&ctx));
    let dockerfile = r#"FROM scratch AS base
ARG TARGETARCH
ARG ARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN <<EOF
mkdir -m 1777 /tmp
echo "arch=$ARCH" > /arch-arg
mkdir -p /etc && echo 'duckie:x:1000:1000::/home/duckie:/bin/sh' > /etc/passwd
echo 'duckie:x:1000:' > /etc/group
EOF
RUN cat > /second <<EOF
from a heredoc
EOF
RUN rm /second
USER duckie
RUN id -u > /tmp/uid
RUN --network=none ls /sys/class/net > /tmp/net

FROM base AS unused
RUN exit 1
"#;
    write(
        &ctx,
        &[
            ("dependencies-apt.txt", "# a Duckietown project\n"),
            ("Dockerfile", dockerfile),
        ],
    );
    let out = dts(
        &home,
        &[
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            "demo/run:1",
            "--arch",
            "arm64v8",
            "--target",
            "base",
        ],
    );
    ok(&out);
    let name = "demo/run:1";
    assert_eq!(
        file_content(&home, name, "linux/arm64", "arch-arg"),
        b"arch=arm64v8\n"
    );
    assert_eq!(
        file_content(&home, name, "linux/arm64", "tmp/uid"),
        b"1000\n"
    );
    assert_eq!(file_content(&home, name, "linux/arm64", "tmp/net"), b"lo\n");
    let tree = image_tree(&home, name, "linux/arm64");
    assert!(
        !tree.contains_key("second"),
        "deleted by a later RUN (whiteout)"
    );
    assert!(
        tree["tmp/uid"].contains(" 1000:1000 "),
        "{}",
        tree["tmp/uid"]
    );
    assert!(
        !tree.contains_key("proc") && !tree.contains_key("etc/resolv.conf"),
        "no mount stubs"
    );
    let cfg = inspect(&home, name, "linux/arm64");
    let labels = &cfg["config"]["Labels"];
    assert_eq!(labels["org.duckietown.label.architecture"], "arm64v8");
    assert_eq!(labels["org.duckietown.label.base.image"], "scratch");
    assert_eq!(cfg["config"]["User"], "duckie");

    // A base image in the store without the platform asked for: exit 1, naming image and platform.
    let ctx2 = t.path().join("child");
    write(&ctx2, &[("Dockerfile", "FROM demo/run:1\nRUN true\n")]);
    let out = dts(
        &home,
        &["devel", "build", "-C", p(&ctx2), "--arch", "arm32v7"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("demo/run:1") && err.contains("linux/arm/v7"),
        "{err}"
    );
}

#[test]
fn an_unchanged_base_rebuilt_later_keeps_its_children_cached() {
    // No git and no SOURCE_DATE_EPOCH: every build stamps a new `created`, so the base's digest
    // changes; its children must still hit the cache (their key is the base's content).
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let a = t.path().join("a");
    let b = t.path().join("b");
    write(
        &a,
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "base\n")],
    );
    write(
        &b,
        &[
            ("Dockerfile", "FROM demo/a:1\nCOPY g /g\nLABEL x=y\n"),
            ("g", "child\n"),
        ],
    );
    let build = |ctx: &Path, tag: &str| {
        json(&dts(
            &home,
            &[
                "devel",
                "build",
                "-C",
                p(ctx),
                "-t",
                tag,
                "--platform",
                "linux/arm64",
                "--json",
            ],
        ))
    };
    build(&a, "demo/a:1");
    build(&b, "demo/b:1");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let a2 = build(&a, "demo/a:1");
    assert_eq!(a2["steps_run"], 0);
    let b2 = build(&b, "demo/b:1");
    assert_eq!(b2["steps_run"], 0, "{b2}");
    assert_eq!(b2["steps_cached"], 1);
}

/// The cache file of `ctx` under `home`'s `build/context-hashes`, and the paths it holds.
fn hash_cache(home: &Path) -> (PathBuf, Vec<String>) {
    let dir = home.join("build/context-hashes");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1, "one cache per context root: {files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes[nl + 1..]).unwrap();
    let paths = body["entries"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    (files[0].clone(), paths)
}

/// Rewrites `path` with `content` (its size) and puts its mtime back to `secs`.`nanos`.
fn rewrite_keeping_mtime(path: &Path, content: &str, secs: i64, nanos: u32) {
    let before = std::fs::metadata(path).unwrap().len();
    std::fs::write(path, content).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), before, "same size");
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

#[test]
fn the_context_hash_cache_never_changes_a_result() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(
        &ctx,
        &[
            ("app/a.txt", "aaaa\n"),
            ("app/b.txt", "bbbb\n"),
            ("app/sub/c.txt", "cccc\n"),
            (
                "Dockerfile",
                "FROM scratch\nCOPY app /app/\nCOPY app/a.txt /a.txt\n",
            ),
        ],
    );
    let (home, n) = (t.path().join("home"), std::cell::Cell::new(0));
    let build = |home: &Path| {
        let args = ["devel", "build", "-C", p(&ctx), "-t", "h/c:v1"];
        let out = ok(&dts_env(
            home,
            &args,
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        ));
        out.lines().last().unwrap().to_string()
    };
    // The same context built in a fresh DTS_HOME: no hash cache, no build cache.
    let uncached = || {
        n.set(n.get() + 1);
        build(&t.path().join(format!("fresh-{}", n.get())))
    };
    // Files just written are racily clean: hashed, used, not stored.
    let d0 = build(&home);
    assert!(hash_cache(&home).1.is_empty(), "{:?}", hash_cache(&home).1);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert_eq!(build(&home), d0);
    let (file, paths) = hash_cache(&home);
    assert_eq!(paths, ["app/a.txt", "app/b.txt", "app/sub/c.txt"]);

    // Same size, same mtime second, other nanoseconds.
    let a = ctx.join("app/a.txt");
    let m = std::fs::metadata(&a).unwrap();
    let ns = (m.mtime_nsec() as u32 + 1) % 1_000_000_000;
    rewrite_keeping_mtime(&a, "AAAA\n", m.mtime(), ns);
    let d1 = build(&home);
    assert_ne!(d1, d0, "the edit is seen");
    assert_eq!(d1, uncached());

    // Same size, the very same mtime (ns) right after a build: only the ctime and the racy
    // rule tell; the edited file is never stored while it is that fresh.
    let b = ctx.join("app/b.txt");
    let m = std::fs::metadata(&b).unwrap();
    rewrite_keeping_mtime(&b, "BBBB\n", m.mtime(), m.mtime_nsec() as u32);
    let d2 = build(&home);
    assert!(!hash_cache(&home).1.contains(&"app/b.txt".to_string()));
    rewrite_keeping_mtime(&b, "bBbB\n", m.mtime(), m.mtime_nsec() as u32);
    let d3 = build(&home);
    assert_ne!(d2, d3);
    assert_eq!(d3, uncached());

    // A corrupt cache (cut in half, then garbage) is ignored and replaced.
    for cut in [true, false] {
        let bytes = std::fs::read(&file).unwrap();
        let bad = if cut {
            bytes[..bytes.len() / 2].to_vec()
        } else {
            b"\xff\0junk".to_vec()
        };
        std::fs::write(&file, bad).unwrap();
        std::fs::write(
            ctx.join("app/sub/c.txt"),
            if cut { "CCCC\n" } else { "cCcC\n" },
        )
        .unwrap();
        let d = build(&home);
        assert_eq!(d, uncached());
        assert_eq!(hash_cache(&home).0, file);
    }
}
