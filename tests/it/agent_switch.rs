//! Release switches that do not wait on the old release (issue 14): a service without an
//! exclusive device role starts its new container while the old one, which ignores SIGTERM,
//! still runs out its grace period; a service with an exclusive role never has two holders
//! (each holder of the role logs its start and then beats into a directory the role mounts: no
//! old beat may follow the new holder's start); an update lock defers a deploy until released, `--force` does not wait, and a
//! failing health check rolls back with the lock held; `init: true` stops a shell at once and
//! `stop_signal` / `stop_grace_period` are honoured.
//!
//! The robot is tests/it/agent_release.rs's; the init needs a static `dt-agent` (the
//! cross-built one, `DTS_AGENT_DIR`), given to the daemon as `DT_AGENT_INIT`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::agent_release::{Agent, can_run, looping, release_of, service};
use crate::support;
use crate::support::netns::TestNet;
use dts::agent::release::{HealthSpec, ReleaseSpec};
use serde_json::Value;

/// A shell that ignores SIGTERM (as PID 1 it would anyway) and runs `before` first.
fn stubborn(before: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("trap '' TERM; {before} while :; do sleep 0.1; done"),
    ]
}

fn running(ps: &[Value], service: &str) -> Vec<Value> {
    ps.iter()
        .filter(|c| c["service"] == service && c["state"] == "running")
        .cloned()
        .collect()
}

#[test]
fn a_switch_starts_free_services_first_and_never_doubles_an_exclusive_role() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    // The camera role mounts a directory where each holder logs its start and then beats.
    let cam = tempfile::tempdir().unwrap();
    let cam_dir = cam.path().to_str().unwrap().to_string();
    let agent = Agent::with(
        &mut net,
        &format!("devices:\n  camera:\n    mounts: [\"{cam_dir}:/cam\"]\n    exclusive: true\n"),
        &[],
    );
    let v1 = agent.image("v1", "example.com/test/busybox:one");
    let v2 = agent.image("v2", "example.com/test/busybox:two");
    let spec = |m| {
        let mut free = service("free", 0, m, stubborn(""));
        free.container.stop_timeout = Some(20);
        // Logs `start VERSION`, then `VERSION` every 50 ms until killed.
        let mut cam = service(
            "cam",
            0,
            m,
            vec![
                "sh".into(),
                "-c".into(),
                "trap '' TERM; v=$(cat /version); echo start $v >>/cam/beats; \
                 while :; do echo $v >>/cam/beats; sleep 0.05; done"
                    .into(),
            ],
        );
        cam.container.stop_timeout = Some(2);
        cam.container.device_roles = vec!["camera".parse().unwrap()];
        ReleaseSpec {
            stack: "duckiebot".into(),
            services: vec![free, cam],
            probation: Duration::from_secs(1),
        }
    };
    let (code, out, err) = agent.deploy(&spec(&v1), "one");
    assert_eq!(code, Some(0), "{out}\n{err}");
    let t = Instant::now();
    let (code, out, err) = agent.deploy(&spec(&v2), "two");
    let took = t.elapsed();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(out["state"], "committed", "{out}");
    // `cam` waited out its 2 s; `free` did not wait its 20 s.
    assert!(
        took < Duration::from_secs(12),
        "the switch waited for the old `free`: {took:?}"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // The old `free` still runs out its grace period beside the new one.
    let ps = agent.ps();
    let free = running(&ps, "free");
    assert_eq!(free.len(), 2, "old and new `free` side by side: {ps:?}");
    assert!(
        free.iter()
            .any(|c| c["name"] == "free" && c["manifest"] == v2.to_string())
    );
    assert!(
        free.iter()
            .any(|c| c["name"] == "free.old1" && c["manifest"] == v1.to_string())
    );
    assert_eq!(running(&ps, "cam").len(), 1, "{ps:?}");
    // And it goes once its grace period ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(&agent.ps(), "free").len() > 1 {
        assert!(Instant::now() < deadline, "the old `free` never went");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(agent.ps().iter().all(|c| c["name"] != "free.old1"));
    // Never two holders: once v2's camera holder started, v1's never beat again.
    let beats = std::fs::read_to_string(cam.path().join("beats")).unwrap();
    let after: Vec<&str> = beats.lines().skip_while(|l| *l != "start v2").collect();
    assert!(!after.is_empty(), "v2 never held the camera: {beats}");
    assert!(
        after.iter().all(|l| !l.contains("v1")),
        "v1 still held the camera after v2 started: {after:?}"
    );
    assert!(beats.lines().filter(|l| *l == "v1").count() > 5, "{beats}");
}

/// Holds the update lock of `service`'s containers from the host: the same file, the same
/// `flock`, as a process in the container would (the busybox fixture has no `flock` applet).
fn hold_update_lock(agent: &Agent, service: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let p = agent
        .state()
        .join("locks")
        .join(service)
        .join("dt-agent-update.lock");
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

#[test]
fn an_update_lock_defers_a_deploy_force_does_not_wait_and_rollback_is_never_deferred() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    let agent = Agent::new(&mut net);
    let v1 = agent.image("v1", "example.com/test/busybox:one");
    let v2 = agent.image("v2", "example.com/test/busybox:two");
    let v3 = agent.image("v3", "example.com/test/busybox:three");
    let spec = |m| ReleaseSpec {
        stack: "duckiebot".into(),
        services: vec![service("locker", 0, m, looping(""))],
        probation: Duration::from_millis(500),
    };
    let (code, out, err) = agent.deploy(&spec(&v1), "one");
    assert_eq!(code, Some(0), "{out}\n{err}");
    // The container sees its lock directory.
    assert!(agent.state().join("locks/locker").is_dir());

    // Deferred: nothing is staged while the lock is held, and the waiting says who holds it.
    let lock = hold_update_lock(&agent, "locker");
    let file = agent.spec_file(&spec(&v2), "two");
    let waiting = agent
        .command(&["deploy", &file, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.history().iter().all(|r| r["release"] != 2),
        "staged while locked"
    );
    drop(lock);
    let out = waiting.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("service `locker` holds its update lock"),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "committed", "{v}");

    // `--force` does not wait, and the failing health check rolls back with the lock held.
    let _lock = hold_update_lock(&agent, "locker");
    let mut failing = spec(&v3);
    failing.services[0].healthcheck = Some(HealthSpec {
        test: vec!["false".into()],
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        retries: 2,
        start_period: Duration::ZERO,
    });
    let file = agent.spec_file(&failing, "three");
    let t = Instant::now();
    let out = agent.cli(&["deploy", &file, "--json", "--force"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        v["state"],
        "rolled-back",
        "{v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["rolled_back_to"], 2, "{v}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let h = agent.history();
    assert_eq!(release_of(&h, 2)["current"], true, "{h:?}");
    let ps = agent.ps();
    assert_eq!(running(&ps, "locker").len(), 1, "{ps:?}");
}

#[test]
fn init_stops_a_shell_at_once_and_stop_signal_and_grace_period_are_honoured() {
    if !can_run() {
        return;
    }
    let Some(dir) = support::context::require_agent("amd64") else {
        return;
    };
    let init = dir.join("amd64/dt-agent");
    let mut net = TestNet::new();
    let agent = Agent::with(&mut net, "", &[("DT_AGENT_INIT", init.to_str().unwrap())]);
    let v1 = agent.image("v1", "example.com/test/busybox:one");
    let mut shell = service(
        "shell",
        0,
        &v1,
        vec!["sh".into(), "-c".into(), "sleep 1000".into()],
    );
    shell.container.init = Some(true);
    shell.container.stop_timeout = Some(10);
    let mut int = service(
        "int",
        0,
        &v1,
        vec![
            "sh".into(),
            "-c".into(),
            "trap 'echo got INT; exit 0' INT; trap '' TERM; while :; do sleep 0.1; done".into(),
        ],
    );
    int.container.stop_signal = Some("SIGINT".parse().unwrap());
    int.container.stop_timeout = Some(10);
    int.container.init = Some(false);
    let mut grace = service(
        "grace",
        0,
        &v1,
        vec!["sh".into(), "-c".into(), "sleep 1000".into()],
    );
    grace.container.stop_timeout = Some(1);
    grace.container.init = Some(false);
    let spec = ReleaseSpec {
        stack: "duckiebot".into(),
        services: vec![shell, int, grace],
        probation: Duration::from_millis(500),
    };
    let (code, out, err) = agent.deploy(&spec, "one");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(out["state"], "committed", "{out}");
    let stop = |name: &str| {
        let t = Instant::now();
        agent.ok(&["stop", name]);
        t.elapsed()
    };
    let t = stop("shell");
    assert!(
        t < Duration::from_secs(2),
        "init: a shell took {t:?} to stop"
    );
    let t = stop("int");
    assert!(t < Duration::from_secs(2), "stop_signal: {t:?}");
    assert!(agent.ok(&["logs", "int"]).contains("got INT"));
    let t = stop("grace");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(4),
        "stop_grace_period 1 s: {t:?}"
    );
}
