//! `RUN --mount` through the binary, beyond the differential case in build_buildah.rs: a cache
//! mount kept between builds (per platform, not in the step's key, emptied by
//! `dts devel prune --cache`), SSH agent forwarding, and the errors that must stop a build
//! before it changes the store.

use std::path::Path;

use crate::build::{
    busybox_context, can_run, dts, dts_env, file_content, json, layers, ok, p, walk, write,
};

const HOST: &str = "linux/amd64";

fn build_round(home: &Path, ctx: &Path, platform: &str, round: &str) -> serde_json::Value {
    json(&dts(
        home,
        &[
            "devel",
            "build",
            "-C",
            p(ctx),
            "-t",
            "mounts:test",
            "--platform",
            platform,
            "--build-arg",
            &format!("ROUND={round}"),
            "--json",
        ],
    ))
}

fn text(home: &Path, platform: &str, path: &str) -> String {
    String::from_utf8(file_content(home, "mounts:test", platform, path)).unwrap()
}

#[test]
fn cache_mounts_persist_per_platform_until_pruned() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    assert!(busybox_context(&ctx));
    write(
        &ctx,
        &[(
            "Dockerfile",
            r#"FROM scratch
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
ARG ROUND
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    ls /var/cache/apt > /seen && echo "deb of round $ROUND" > /var/cache/apt/pkg-$ROUND.deb \
 && stat -c '%a %u:%g' /var/cache/apt > /cache-mode
"#,
        )],
    );
    build_round(&home, &ctx, HOST, "1");
    assert_eq!(text(&home, HOST, "seen"), "");
    assert_eq!(text(&home, HOST, "cache-mode"), "755 0:0\n");
    build_round(&home, &ctx, HOST, "2");
    assert_eq!(
        text(&home, HOST, "seen"),
        "pkg-1.deb\n",
        "the second build sees the first's file"
    );
    // The cache's contents are no input: round 1 again is served from the build cache.
    let again = build_round(&home, &ctx, HOST, "1");
    assert_eq!(again["steps_run"], 0, "{again}");
    for layer in layers(&home, "mounts:test", HOST) {
        assert!(
            !layer.windows(11).any(|w| w == b"deb of roun"),
            "cache bytes in a layer"
        );
    }
    // Another platform has a cache of its own.
    build_round(&home, &ctx, "linux/arm64", "3");
    assert_eq!(text(&home, "linux/arm64", "seen"), "");

    let pruned = json(&dts(&home, &["devel", "prune", "--cache", "--json"]));
    let removed = pruned["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 2, "{pruned}");
    assert!(
        removed.iter().all(|c| c["id"] == "/var/cache/apt"),
        "{pruned}"
    );
    assert!(pruned["bytes"].as_u64().unwrap() > 0, "{pruned}");
    build_round(&home, &ctx, HOST, "4");
    assert_eq!(
        text(&home, HOST, "seen"),
        "",
        "pruned: the cache starts empty"
    );
    let human = ok(&dts(&home, &["devel", "prune", "--cache"]));
    assert!(human.is_empty(), "the report is on stderr: {human}");
}

#[test]
fn ssh_and_secret_env_mounts() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    assert!(busybox_context(&ctx));
    // Any listening socket stands in for the agent: the RUN only checks what it is given.
    let agent = t.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    write(
        &ctx,
        &[(
            "Dockerfile",
            r#"FROM scratch
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
RUN --mount=type=ssh,uid=1000 echo "$SSH_AUTH_SOCK" > /sock \
 && [ -S "$SSH_AUTH_SOCK" ] && stat -c '%a %u' "$SSH_AUTH_SOCK" > /sock-mode
RUN --mount=type=secret,id=tok,env=TOK --mount=type=secret,id=unset \
    echo "${#TOK}" > /tok-len && if [ -e /run/secrets/unset ]; then echo yes; else echo no; fi > /unset \
 && if [ -e /run/secrets/tok ]; then echo yes; else echo no; fi > /tok-file
"#,
        )],
    );
    let out = dts_env(
        &home,
        &[
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            "mounts:test",
            "--ssh",
            "default",
            "--secret",
            "id=tok,env=THE_TOKEN",
        ],
        &[("SSH_AUTH_SOCK", p(&agent)), ("THE_TOKEN", "hunter2-abc")],
    );
    ok(&out);
    assert_eq!(text(&home, HOST, "sock"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(text(&home, HOST, "sock-mode"), "600 1000\n");
    // A secret given as a variable only, and an optional one not given at all.
    assert_eq!(text(&home, HOST, "tok-len"), "11\n");
    assert_eq!(text(&home, HOST, "tok-file"), "no\n");
    assert_eq!(text(&home, HOST, "unset"), "no\n");
    for layer in layers(&home, "mounts:test", HOST) {
        assert!(
            !layer.windows(7).any(|w| w == b"hunter2"),
            "secret in a layer"
        );
    }
    let tree = crate::build::image_tree(&home, "mounts:test", HOST);
    assert!(!tree.keys().any(|k| k.starts_with("run")), "{tree:?}");
}

/// A secret given with `env=` is in the RUN's environment, so in the runtime bundle's
/// config.json: that bundle is a tmpfs, never on disk, and nothing under `DTS_HOME` holds it.
#[test]
fn an_env_secret_is_only_in_memory() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    let tmp = t.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    assert!(busybox_context(&ctx));
    write(
        &ctx,
        &[(
            "Dockerfile",
            "FROM scratch\nARG TARGETARCH\nCOPY busybox/${TARGETARCH}/busybox /bin/busybox\nRUN --mount=type=secret,id=tok,env=TOK [\"/bin/busybox\", \"sleep\", \"3\"]\n",
        )],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dts"))
        .args(["devel", "build", "-C", p(&ctx), "-t", "mounts:env"])
        .args(["--secret", "id=tok,env=THE_TOKEN"])
        .env("DTS_HOME", &home)
        .env("TMPDIR", &tmp)
        .env("THE_TOKEN", "hunter2-env")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = None;
    while seen.is_none() && std::time::Instant::now() < deadline {
        for e in std::fs::read_dir(&tmp).unwrap() {
            let bundle = e.unwrap().path().join("bundle");
            if bundle.join("config.json").is_file() {
                seen = Some(bundle);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let bundle = seen.expect("the RUN's bundle showed up");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fstype = info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split(' ').nth(4)? == p(&bundle)).then(|| post.split(' ').next().unwrap().to_string())
    });
    assert_eq!(fstype.as_deref(), Some("tmpfs"), "{}", bundle.display());
    assert!(child.wait().unwrap().success());
    for f in walk(&home) {
        if let Ok(data) = std::fs::read(&f) {
            assert!(
                !data.windows(11).any(|w| w == b"hunter2-env"),
                "secret in {}",
                f.display()
            );
        }
    }
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "scratch left: {left:?}");
}

/// The store's blobs and names (creating an empty store is no change).
fn store_files(home: &Path) -> (Vec<std::path::PathBuf>, String) {
    let blobs = home.join("store/blobs");
    let files = if blobs.is_dir() {
        walk(&blobs)
    } else {
        Vec::new()
    };
    (files, ok(&dts(home, &["image", "ls", "--json"])))
}

#[test]
fn mount_errors_name_the_line_and_leave_the_store_alone() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let cases = [
        (
            "RUN --mount=type=volume,target=/c true",
            "Dockerfile:2",
            "unsupported mount type `volume`",
        ),
        (
            "RUN --mount=type=cache,target=/c,colour=red true",
            "Dockerfile:2",
            "unknown mount option `colour`",
        ),
        (
            "RUN --mount=type=cache,target=/c,sharing=sometimes true",
            "Dockerfile:2",
            "unsupported sharing value `sometimes`",
        ),
        (
            "RUN --mount=type=secret,id=tok,required true",
            "Dockerfile:2",
            "secret `tok` is required but was not given",
        ),
        (
            "RUN --mount=from=nosuchstage,target=/x true",
            "Dockerfile:2",
            "from=nosuchstage",
        ),
    ];
    let before = store_files(&home);
    for (i, (line, loc, culprit)) in cases.iter().enumerate() {
        let ctx = t.path().join(format!("ctx{i}"));
        write(&ctx, &[("Dockerfile", &format!("FROM scratch\n{line}\n"))]);
        // An unroutable registry mirror is not needed: `nosuchstage` fails to resolve or pull
        // without leaving anything behind either way.
        let out = dts(&home, &["devel", "build", "-C", p(&ctx)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line}: {err}");
        assert!(err.contains(loc) && err.contains(culprit), "{line}: {err}");
        assert_eq!(store_files(&home), before, "{line}: the store changed");
    }
    let ctx = t.path().join("ssh");
    write(
        &ctx,
        &[("Dockerfile", "FROM scratch\nRUN --mount=type=ssh true\n")],
    );
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dts"));
    c.args(["devel", "build", "-C", p(&ctx), "--ssh", "default"])
        .env("DTS_HOME", &home)
        .env_remove("SSH_AUTH_SOCK");
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--ssh default") && err.contains("SSH_AUTH_SOCK is not set"),
        "{err}"
    );
    assert_eq!(store_files(&home), before);
}
