//! Confinement through `dt-agent run` with real runc (issue 17): Docker's default seccomp
//! profile in every container (a small static probe makes the blocked syscalls and prints
//! each errno), `seccomp=unconfined` and a profile of one's own, `no-new-privileges`,
//! `--read-only`, a `WorkingDir` through `/proc/self/fd` refused before any container, and
//! the runc version warning of `dt-agent status` (CVE-2024-21626). The robot is
//! `agent_run`'s: a daemon in a network namespace of its own over a temp state directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::agent_run::{APPLETS, Agent, ROBOT_YAML, busybox, can_run};
use crate::support::images::{Entry, Layout};
use crate::support::netns::TestNet;
use crate::support::{self};
use dts::oci::Platform;

/// The probe: each syscall with arguments that a kernel without the filter answers with
/// something other than EPERM (a bad pointer, a query), printed as `name=errno` (0: success).
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>

static void probe(const char *name, long ret) {
    printf("%s=%d\n", name, ret < 0 ? errno : 0);
}

int main(void) {
    probe("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
    /* KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, not creating it */
    probe("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    /* BPF_MAP_CREATE with a NULL attr */
    probe("bpf", syscall(SYS_bpf, 0, 0, 0));
    probe("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    /* UFFD_USER_MODE_ONLY: allowed without privilege where the kernel knows it */
    probe("userfaultfd", syscall(SYS_userfaultfd, 1));
    probe("io_uring_setup", syscall(425, 1, 0));
    probe("clone3", syscall(435, 0, 0));
    probe("personality", syscall(SYS_personality, 0xffffffffUL));
    probe("getpid", syscall(SYS_getpid));
    probe("nosys", syscall(1000));
    return 0;
}
"#;

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;

/// Compiles the probe statically into `dir` (cc, else musl-gcc); `None` with a skip line when
/// neither can.
fn probe(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("probe.c");
    std::fs::write(&src, PROBE_C).unwrap();
    let out = dir.join("probe");
    for cc in ["cc", "musl-gcc"] {
        let Some(cc) = support::find_cmd(cc) else {
            continue;
        };
        let ok = Command::new(cc)
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(out);
        }
    }
    support::skip("no C compiler that links statically (cc -static, musl-gcc) for the probe");
    None
}

/// A busybox image with the probe at `/bin/probe`, imported as `name`; `working_dir` set in
/// its config when given.
fn import_image(agent: &Agent, probe: &Path, name: &str, working_dir: Option<&str>) {
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::File(
            "bin/busybox",
            0o755,
            std::fs::read(busybox("amd64").unwrap()).unwrap(),
        ),
        Entry::File("bin/probe", 0o755, std::fs::read(probe).unwrap()),
        Entry::Dir("etc/", 0o755),
        Entry::File(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        ),
        Entry::File("etc/group", 0o644, b"root:x:0:\n".to_vec()),
        Entry::Dir("tmp/", 0o1777),
    ];
    for a in APPLETS.iter().chain(&["unshare"]) {
        let path: &'static str = Box::leak(format!("bin/{a}").into_boxed_str());
        entries.push(Entry::Symlink(path, "busybox"));
    }
    let dir = agent
        .state()
        .join(format!("layout-{}", name.replace([':', '/'], "-")));
    let l = Layout::new(&dir);
    let w = l.image_with(
        &Platform::host(),
        &[support::images::layer_tar(&entries)],
        &["sh"],
        |c| c.working_dir = working_dir.map(str::to_string),
    );
    l.finish(&[(name, w.manifest)]);
    let tar_path = dir.with_extension("tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", &dir).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    agent.import(&tar_path);
}

/// The probe's answers in a container run with `flags`.
fn run_probe(agent: &Agent, flags: &[&str], image: &str) -> BTreeMap<String, i32> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[image, "/bin/probe"]);
    agent
        .ok(&args)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
        .collect()
}

/// `grep KEY /proc/self/status` inside a container run with `flags`: the value.
fn status_field(agent: &Agent, flags: &[&str], image: &str, key: &str) -> String {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[image, "grep", key, "/proc/self/status"]);
    let out = agent.ok(&args);
    out.split(':').nth(1).unwrap_or_default().trim().to_string()
}

#[test]
fn containers_run_under_dockers_seccomp_profile_and_unconfined_lifts_it() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let Some(probe) = probe(agent.state()) else {
        return;
    };
    let image = "example.com/test/probe:1";
    import_image(&agent, &probe, image, None);

    // The default: a filter, and what Docker blocks fails with EPERM.
    assert_eq!(status_field(&agent, &[], image, "Seccomp:"), "2");
    let got = run_probe(&agent, &[], image);
    for name in [
        "unshare",
        "keyctl",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
    ] {
        assert_eq!(got[name], EPERM, "{name}: {got:?}");
    }
    // clone3 answers ENOSYS (libc falls back to clone), an unknown newer syscall too.
    assert_eq!(got["clone3"], ENOSYS, "{got:?}");
    assert_eq!(got["nosys"], ENOSYS, "{got:?}");
    assert_eq!(got["personality"], 0, "{got:?}");
    assert_eq!(got["getpid"], 0, "{got:?}");
    let out = agent.cli(&["run", "--rm", image, "unshare", "-U", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "unshare -U ran: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    // Busybox itself is unaffected: a shell, a pipeline, files, processes.
    let out = agent.ok(&[
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        "mkdir -p /tmp/a && echo hi > /tmp/a/f && cat /tmp/a/f | grep hi && seq 3 | wc -l && id -u",
    ]);
    assert_eq!(out, "hi\n3\n0\n");

    // seccomp=unconfined: no filter; the same calls reach the kernel.
    let unconfined = ["--security-opt", "seccomp=unconfined"];
    assert_eq!(status_field(&agent, &unconfined, image, "Seccomp:"), "0");
    let got = run_probe(&agent, &unconfined, image);
    assert_eq!(
        got["unshare"], 0,
        "a user namespace without the filter: {got:?}"
    );
    for name in ["keyctl", "perf_event_open"] {
        assert_ne!(got[name], EPERM, "{name}: {got:?}");
    }
    assert_ne!(got["clone3"], ENOSYS, "{got:?}");
    agent.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        image,
        "unshare",
        "-U",
        "true",
    ]);
}

#[test]
fn own_profiles_no_new_privileges_and_a_read_only_root() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let Some(probe) = probe(agent.state()) else {
        return;
    };
    let image = "example.com/test/probe:1";
    import_image(&agent, &probe, image, None);

    // A Docker-format profile of one's own: allow all but mkdir (EACCES).
    let profile = agent.state().join("mine.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = agent.cli(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        image,
        "mkdir",
        "/tmp/x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("Permission denied"), "{err}");
    let got = run_probe(&agent, &["--security-opt", &opt], image);
    assert_ne!(got["keyctl"], EPERM, "{got:?}");

    // A profile that is not one, an option dts does not take: exit 2, no container.
    std::fs::write(&profile, "{\"syscalls\": 3}").unwrap();
    for opt in [
        opt.as_str(),
        "apparmor=unconfined",
        "no-new-privileges=maybe",
    ] {
        let out = agent.cli(&["run", "--name", "bad", "--security-opt", opt, image, "true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{opt}: {err}");
        assert!(!agent.state().join("containers/bad").exists());
    }

    // no-new-privileges; off by default, as in Docker.
    assert_eq!(status_field(&agent, &[], image, "NoNewPrivs:"), "0");
    let nnp = ["--security-opt", "no-new-privileges"];
    assert_eq!(status_field(&agent, &nnp, image, "NoNewPrivs:"), "1");

    // --read-only: the root refuses writes, the standard mounts do not.
    let out = agent.cli(&["run", "--rm", "--read-only", image, "touch", "/x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("Read-only file system"), "{err}");
    agent.ok(&["run", "--rm", "--read-only", image, "touch", "/dev/shm/x"]);
    agent.ok(&["run", "--rm", image, "touch", "/x"]);
}

#[test]
fn an_image_working_dir_through_proc_fd_is_refused_before_any_container() {
    if !can_run("amd64") {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net, ROBOT_YAML);
    let Some(probe) = probe(agent.state()) else {
        return;
    };
    let image = "example.com/test/cwd:1";
    import_image(&agent, &probe, image, Some("/proc/self/fd/7"));
    for args in [
        vec!["run", "--name", "cve", image, "true"],
        vec!["run", "-d", "--name", "cve", image, "true"],
    ] {
        let out = agent.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("/proc/self/fd/7") && stderr.contains("CVE-2024-21626"));
        assert!(!agent.state().join("containers/cve").exists());
        assert!(!agent.ok(&["ps", "-a", "--json"]).contains("\"cve\""));
    }
    // A `-w` of one's own replaces the image's and runs.
    let out = agent.ok(&["run", "--rm", "-w", "/tmp", image, "sh", "-c", "pwd"]);
    assert_eq!(out, "/tmp\n");
}

#[test]
fn status_warns_about_a_runc_without_the_cve_2024_21626_fix() {
    if !support::require_root("dt-agent status reads the agent's root")
        || !support::require_cmd("runc")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let status = |path: Option<&Path>| -> serde_json::Value {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dt-agent"));
        cmd.args(["status", "--json"])
            .env("DT_AGENT_ROOT", tmp.path().join("root"))
            .env_remove("DTS_RUNTIME");
        if let Some(p) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{old}", p.display()));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // A runc on PATH that says 1.1.11, which no package installed: the warning.
    let fake = tmp.path().join("bin");
    std::fs::create_dir_all(&fake).unwrap();
    let runc = fake.join("runc");
    std::fs::write(
        &runc,
        "#!/bin/sh\necho 'runc version 1.1.11'\necho 'commit: v1.1.11-0-g4bccb38c'\n",
    )
    .unwrap();
    std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = status(Some(&fake));
    // The hello of `serve --stdio` carries it too, so `dts duckiebot deploy` prints it.
    let hello_warnings = |path: Option<&Path>| -> Vec<String> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dt-agent"));
        cmd.args(["serve", "--stdio"])
            .env("DT_AGENT_ROOT", tmp.path().join("root"))
            .env_remove("DTS_RUNTIME")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{old}", p.display()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut child = cmd.spawn().unwrap();
            let io = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
            let (_conn, hello) = dts::wire::client::Connection::open(io).await.unwrap();
            hello.warnings
        })
    };
    let hw = hello_warnings(Some(&fake));
    assert_eq!(hw.len(), 1, "{hw:?}");
    assert!(hw[0].contains("CVE-2024-21626"), "{hw:?}");
    assert_eq!(hello_warnings(None), Vec::<String>::new());
    assert_eq!(s["runtime_version"], "runc version 1.1.11", "{s}");
    let warnings = s["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{s}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.contains("CVE-2024-21626") && w.contains(runc.to_str().unwrap()),
        "{w}"
    );

    // This machine's runc: fixed upstream or by its distribution (Debian's 1.1.5+ds1-1+deb12u1
    // records it in its changelog): nothing to say.
    let s = status(None);
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
}
