//! COPY/ADD sources and arguments of issue 19 (scope 3) that buildah 1.28 cannot check
//! (tests/it/build_buildah.rs compares the rest): ADD of a git repository served by
//! `git daemon` on loopback (refs, subdirectories, `--keep-git-dir`, the commit as cache key),
//! bad input that must leave the store as it was, and Duckietown's guessed `DISTRO`, which never
//! overrides a Dockerfile's own default.

use crate::support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::{dts, dts_env, image_tree, inspect, json, ok, p, write};

/// `git daemon` serving every repository under a directory, on 127.0.0.1; killed on drop.
pub(crate) struct GitDaemon {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GitDaemon {
    pub(crate) fn start(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // `git-daemon` itself, not `git daemon`: that runs it as a child, which killing `git`
        // would leave behind, holding the test's output open.
        let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
        let exec_path = PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim());
        let child = Command::new(exec_path.join("git-daemon"))
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "git daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        GitDaemon { child, port }
    }

    pub(crate) fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "duckie")
        .env("GIT_AUTHOR_EMAIL", "duckie@example.org")
        .env("GIT_COMMITTER_NAME", "duckie")
        .env("GIT_COMMITTER_EMAIL", "duckie@example.org")
        .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
        .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository `repo.git` (work tree, served as is): `sub/tool` (0755), `sub/readme`, `top.txt`,
/// tagged `v1`, then a second commit on `main` changing `sub/readme`.
pub(crate) fn sample_repo(base: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let repo = base.join("repo.git");
    write(
        &repo,
        &[
            ("sub/tool", "#!/bin/sh\necho tool\n"),
            ("sub/readme", "version 1\n"),
            ("top.txt", "top\n"),
        ],
    );
    std::fs::set_permissions(
        repo.join("sub/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    std::fs::write(repo.join("sub/readme"), "version 2\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    repo
}

fn can_serve_git() -> bool {
    support::require_cmd("git")
}

#[test]
fn add_of_a_git_repository_checks_out_the_ref() {
    if !can_serve_git() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let served = t.path().join("served");
    let repo = sample_repo(&served);
    let daemon = GitDaemon::start(&served);
    let url = daemon.url("repo.git");
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    write(
        &ctx,
        &[(
            "Dockerfile",
            "FROM scratch\nARG REPO\nADD ${REPO}#v1:sub /tag/\nADD ${REPO} /head\nADD --keep-git-dir=true ${REPO}#main /full/\n",
        )],
    );
    let arg = format!("REPO={url}");
    let build = |home: &Path| {
        json(&dts(
            home,
            &[
                "devel",
                "build",
                "-C",
                p(&ctx),
                "-t",
                "demo/git:1",
                "--arch",
                "arm64v8",
                "--build-arg",
                &arg,
                "--json",
            ],
        ))
    };
    let first = build(&home);
    assert_eq!(first["steps_run"], 3, "{first}");
    let tree = image_tree(&home, "demo/git:1", "linux/arm64");
    assert!(tree["tag/tool"].starts_with("file 755 0:0 "), "{tree:?}");
    assert!(tree["tag/readme"].starts_with("file 644 0:0 "), "{tree:?}");
    assert!(!tree.contains_key("tag/top.txt") && !tree.contains_key("tag/sub"));
    assert!(
        tree["head/top.txt"].starts_with("file 644 0:0 "),
        "{tree:?}"
    );
    assert!(tree["head"].starts_with("dir 755 0:0"), "{tree:?}");
    assert!(!tree.keys().any(|k| k.starts_with("head/.git")), "{tree:?}");
    assert!(tree.contains_key("full/.git/HEAD"), "{tree:?}");
    let readme = |path: &str| crate::build::file_content(&home, "demo/git:1", "linux/arm64", path);
    assert_eq!(readme("tag/readme"), b"version 1\n");
    assert_eq!(readme("head/sub/readme"), b"version 2\n");

    // The key is the commit: unchanged refs are cached; a new commit on main is fetched.
    let again = build(&home);
    assert_eq!(
        (again["steps_run"].as_u64(), again["steps_cached"].as_u64()),
        (Some(0), Some(3)),
        "{again}"
    );
    std::fs::write(repo.join("sub/readme"), "version 3\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "three"]);
    let moved = build(&home);
    assert_eq!(
        (moved["steps_run"].as_u64(), moved["steps_cached"].as_u64()),
        (Some(2), Some(1)),
        "{moved}"
    );
    let readme = crate::build::file_content(&home, "demo/git:1", "linux/arm64", "head/sub/readme");
    assert_eq!(readme, b"version 3\n");
}

/// Every file of the store (path and size), to show a failed build left it alone.
fn store_listing(home: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![home.join("store")];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn bad_sources_and_modes_leave_the_store_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let served = t.path().join("served");
    let daemon = can_serve_git().then(|| {
        sample_repo(&served);
        GitDaemon::start(&served)
    });
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    write(
        &ctx,
        &[("f", "x\n"), ("Dockerfile", "FROM scratch\nCOPY f /f\n")],
    );
    // lz4 frame magic, then junk: a compression ADD recognises and cannot unpack.
    std::fs::write(ctx.join("data.tar.lz4"), b"\x04\x22\x4d\x18junk").unwrap();
    ok(&dts(
        &home,
        &["devel", "build", "-C", p(&ctx), "-t", "demo/ok:1"],
    ));
    let before = store_listing(&home);
    let mut cases: Vec<(String, i32, &str)> = vec![
        ("COPY --chmod=u+q f /f".into(), 2, "invalid --chmod `u+q`"),
        ("COPY --chmod=8 f /f".into(), 2, "invalid --chmod `8`"),
        ("ADD --chmod=go=rwz f /f".into(), 2, "invalid --chmod"),
        (
            "ADD --unpack=true data.tar.lz4 /d/".into(),
            2,
            "lz4-compressed",
        ),
        (
            "ADD file:///etc/repo.git /r/".into(),
            2,
            "only http(s) URLs and git repositories",
        ),
    ];
    if let Some(d) = &daemon {
        cases.push((
            format!("ADD {}#no-such-ref /r/", d.url("repo.git")),
            1,
            "no branch, tag or commit `no-such-ref`",
        ));
        cases.push((
            format!("ADD {}#v1:missing /r/", d.url("repo.git")),
            1,
            "`missing` is not a directory",
        ));
        cases.push((
            format!("ADD git://127.0.0.1:{}/nope.git /r/", d.port),
            1,
            "git ls-remote failed",
        ));
    }
    for (line, code, want) in &cases {
        let dockerfile = format!("FROM scratch\nCOPY f /f\n{line}\n");
        std::fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
        let out = dts(
            &home,
            &["devel", "build", "-C", p(&ctx), "-t", "demo/bad:1"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{line}: {err}");
        assert!(
            err.contains("Dockerfile:3:") && err.contains(want),
            "{line}: {err}"
        );
        // The COPY before it is cached (its layer is already in the store).
        assert_eq!(store_listing(&home), before, "{line} changed the store");
    }
    let names = ok(&dts(&home, &["image", "ls"]));
    assert!(!names.contains("demo/bad"), "{names}");
    assert!(
        !home.join("build/git").exists()
            || std::fs::read_dir(home.join("build/git"))
                .unwrap()
                .next()
                .is_none(),
        "no checkout left behind"
    );
}

#[test]
fn a_guessed_distro_never_overrides_the_dockerfiles_default() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ctx = t.path().join("ctx");
    // A Duckietown project outside git: its distro cannot be read, so `ente` is only a guess.
    let dockerfile = "ARG DISTRO=daffy\nFROM scratch\nARG DISTRO\nARG BASE_TAG\nARG ARCH\nLABEL distro=${DISTRO} base_tag=${BASE_TAG} arch=${ARCH}\n";
    write(
        &ctx,
        &[
            ("dependencies-apt.txt", "# a Duckietown project\n"),
            ("Dockerfile", dockerfile),
        ],
    );
    let labels = |extra: &[&str]| {
        let mut args = vec![
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            "demo/distro:1",
            "--arch",
            "arm64v8",
        ];
        args.extend(extra);
        ok(&dts_env(
            &home,
            &args,
            &[("GIT_CEILING_DIRECTORIES", t.path().to_str().unwrap())],
        ));
        inspect(&home, "demo/distro:1", "linux/arm64")["config"]["Labels"].clone()
    };
    let l = labels(&[]);
    assert_eq!(
        l["distro"], "daffy",
        "the Dockerfile's default wins over a guess: {l}"
    );
    assert_eq!(
        l["base_tag"], "ente-arm64v8",
        "no default: the guess fills in: {l}"
    );
    assert_eq!(l["arch"], "arm64v8", "{l}");
    let l = labels(&["--build-arg", "DISTRO=ente"]);
    assert_eq!(l["distro"], "ente", "the user's value wins: {l}");
    // Read from the project: it is the Duckietown shell's build arg, over the default.
    write(&ctx, &[("dtproject/distro.yaml", "distro: ente\n")]);
    let l = labels(&[]);
    assert_eq!(l["distro"], "ente", "{l}");
}
