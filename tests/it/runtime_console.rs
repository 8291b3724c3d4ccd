//! `Runtime::create_with_terminal` against runc (as root): a busybox container created with a
//! terminal hands back its master, on which the window size set before `start` is the
//! process's, Ctrl-C written as a byte interrupts a `sleep` in the foreground, and the output
//! arrives; a process spec without a terminal is refused, not waited on. The container shim's
//! `run -it` is built on it (tests/it/run_tty.rs drives that end to end).

use crate::support;

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dts::runtime::Runtime;

/// A bundle in `dir` whose process runs `script` under busybox's sh, with a terminal if
/// `terminal`.
fn bundle(dir: &Path, bb: &Path, script: &str, terminal: bool) {
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(bb, bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep", "stty", "echo"] {
        symlink("busybox", bin.join(applet)).unwrap();
    }
    let st = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "runc spec");
    let path = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = terminal.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
}

/// Root, runc and the amd64 busybox, or a skip.
fn prerequisites() -> Option<std::path::PathBuf> {
    if !support::require_root("runc creates containers") || !support::require_cmd("runc") {
        return None;
    }
    if std::env::consts::ARCH != "x86_64" {
        support::skip("the busybox fixture used is amd64");
        return None;
    }
    support::require_busybox("amd64")
}

#[test]
fn a_terminal_container_hands_back_its_master() {
    let Some(bb) = prerequisites() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("bundle");
    bundle(
        &dir,
        &bb,
        "stty size; trap 'echo got-INT' INT; sleep 30 & wait; echo after; exit 7",
        true,
    );
    let rt = Runtime::new("runc", work.path().join("state"));
    let id = format!("dts-console-{}", std::process::id());
    let (pid, master) = rt
        .create_with_terminal(&dir, &id, &dir.join("runtime.log"))
        .unwrap();
    assert!(pid > 1);
    assert!(!dir.join("console.sock").exists(), "the socket is removed");
    dts::util::tty::set_size(&master, (33, 111)).unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let sink = Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once the process and its terminal are gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    rt.start(&id).unwrap();
    let seen = |s: &str| String::from_utf8_lossy(&out.lock().unwrap()).contains(s);
    let wait_for = |s: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen(s) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        seen(s)
    };
    let started = Instant::now();
    let size_seen = wait_for("33 111");
    rustix::io::write(&master, b"\x03").unwrap();
    let interrupted = wait_for("after");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let _ = rt.delete(&id);
    assert!(size_seen, "window size not seen: {text:?}");
    assert!(interrupted, "Ctrl-C did not interrupt: {text:?}");
    assert!(text.contains("got-INT"), "{text:?}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}

#[test]
fn a_spec_without_a_terminal_is_refused() {
    let Some(bb) = prerequisites() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("bundle");
    bundle(&dir, &bb, "echo hi", false);
    let rt = Runtime::new("runc", work.path().join("state"));
    let id = format!("dts-noconsole-{}", std::process::id());
    let started = Instant::now();
    let r = rt.create_with_terminal(&dir, &id, &dir.join("runtime.log"));
    let _ = rt.delete(&id);
    let err = r.expect_err("refused");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(err.to_string().contains("create"), "{err}");
}
