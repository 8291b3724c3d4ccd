//! Groundwork for adopting a stock Duckiebot (issue 13): every image the robot's real dockerd
//! holds, streamed by `docker save IMAGE… | dt-agent image import -` into the agent's store on
//! the robot itself (tests/it/support/stock_robot.rs). Checks that every image arrives with
//! Docker's config digest (`docker image inspect .Id`), diff_ids (`RootFS.Layers`) and repo tags;
//! that a second import adds nothing (the import's own JSON counters: no layer, object or
//! snapshot added); that the peak extra disk use during the import stays under the largest
//! layer + 64 MiB (sampled on the agent's root while it runs); and that an import killed midway
//! leaves only its flocked staging directory, which the rerun removes before it finishes.
//! Prints the measured figures (docs/duckietown.md, "Adoption notes"). Needs what the stock
//! robot needs; skips otherwise.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::stock_robot::StockRobot;

const AGENT: &str = "/usr/local/bin/dt-agent";
const SLACK: u64 = 64 << 20;

/// Disk use of a tree: allocated bytes of each inode once (snapshots are hardlink farms), and
/// the largest regular file. Files vanishing under the walk (the import renames and removes)
/// are skipped.
fn disk_use(root: &Path) -> (u64, u64) {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut largest = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            }
            if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
                if m.is_file() {
                    largest = largest.max(m.len());
                }
            }
        }
    }
    (total, largest)
}

/// Samples [`disk_use`] of `root` until dropped: (peak total, largest file seen).
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl Sampler {
    fn start(root: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut peak, mut largest) = (0, 0);
            loop {
                let done = s.load(Ordering::Relaxed);
                let (t, l) = disk_use(&root);
                peak = peak.max(t);
                largest = largest.max(l);
                if done {
                    return (peak, largest);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// The tagged images of the robot's dockerd.
fn docker_images(robot: &StockRobot) -> Vec<String> {
    let out = robot.exec_ok(&["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| !l.contains("<none>") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn import(robot: &StockRobot, root: &str, images: &[String]) -> (serde_json::Value, Duration) {
    let cmd = format!(
        "set -o pipefail; docker save {} | DT_AGENT_ROOT={root} {AGENT} image import --json -",
        images.join(" ")
    );
    let start = Instant::now();
    let out = robot.exec_ok(&["bash", "-c", &cmd]);
    (json(&out), start.elapsed())
}

/// A document of the agent's store (manifest or config), read from the robot's disk.
fn doc(store: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let p = store.join("images/sha256").join(hex);
    json(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// The images of an import report by name (`docker save` orders its manifest.json freely).
fn by_name(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i.to_string()))
        .collect()
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

/// Checks the import against `docker image inspect`: every repo tag named, config digest and
/// diff_ids equal.
fn check_against_docker(
    robot: &StockRobot,
    store: &Path,
    images: &[String],
    report: &serde_json::Value,
) {
    let imported: BTreeMap<String, &serde_json::Value> = report["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i))
        .collect();
    let want: BTreeSet<&str> = images.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = imported.keys().map(String::as_str).collect();
    assert_eq!(got, want, "names imported vs docker's repo tags");
    for name in images {
        let inspect = json(&robot.exec_ok(&["docker", "image", "inspect", name]));
        let inspect = &inspect[0];
        let tags = inspect["RepoTags"].as_array().unwrap();
        assert!(
            tags.iter().any(|t| t == name.as_str()),
            "{name}: tags {tags:?}"
        );
        let layers: Vec<&str> = inspect["RootFS"]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        let i = imported[name.as_str()];
        let manifest = doc(store, i["manifest"].as_str().unwrap());
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        assert_eq!(
            config_digest, inspect["Id"],
            "{name}: config digest vs docker's Id"
        );
        let config = doc(store, config_digest);
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert_eq!(diff_ids, layers, "{name}: diff_ids vs RootFS.Layers");
    }
}

/// Host pids of the children of `pid`.
fn children(pid: u32) -> Vec<i32> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let p = t.unwrap().path().join("children");
        for c in std::fs::read_to_string(p)
            .unwrap_or_default()
            .split_whitespace()
        {
            v.push(c.parse().unwrap());
        }
    }
    v
}

/// `docker save` fed by the host into an import, which is SIGKILLed once `feed` bytes have
/// reached it and its staging directory holds at least as much: a crash mid-stream.
fn killed_import(robot: &StockRobot, root: &str, images: &[String], feed: u64) {
    let mut save_cmd = vec!["docker", "save"];
    save_cmd.extend(images.iter().map(String::as_str));
    let mut save = robot
        .command(&save_cmd)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = robot
        .command(&[
            "env",
            &format!("DT_AGENT_ROOT={root}"),
            AGENT,
            "image",
            "import",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut from = save.stdout.take().unwrap();
    let mut to = agent.stdin.take().unwrap();
    let mut buf = vec![0; 64 << 10];
    let mut sent = 0u64;
    while sent < feed {
        let n = from.read(&mut buf).unwrap();
        assert!(n > 0, "docker save ended after {sent} bytes");
        to.write_all(&buf[..n]).unwrap();
        sent += n as u64;
    }
    // Wait until the agent has staged most of what it was sent, then kill it (nsenter forked
    // it into the robot's pid namespace: its host pid is nsenter's child).
    let tmp = robot.root().join(root.trim_start_matches('/')).join("tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while disk_use(&tmp).0 < sent / 2 {
        assert!(Instant::now() < deadline, "the import staged nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kids = children(agent.id());
    assert_eq!(kids.len(), 1, "nsenter's children: {kids:?}");
    // SAFETY: plain syscall on a process this test started.
    unsafe { libc::kill(kids[0], libc::SIGKILL) };
    let status = agent.wait().unwrap();
    assert!(!status.success(), "killed import exited {status}");
    drop(to);
    drop(from);
    let _ = save.wait();
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "the killed import's staging dir is left");
    support::write_stderr_line(&format!(
        "stock_adopt: killed the import after {} fed, {} staged",
        mib(sent),
        mib(disk_use(&tmp).0)
    ));
}

#[test]
fn stock_adopt_amd64() {
    adopt("amd64");
}

#[test]
fn stock_adopt_arm64() {
    adopt("arm64");
}

fn adopt(arch: &str) {
    let Some(robot) = StockRobot::boot(arch, &format!("adopt-{arch}")) else {
        return;
    };
    // The host build is what is tested (the host and the robot are both Debian 12).
    let agent = robot.root().join(AGENT.trim_start_matches('/'));
    std::fs::copy(env!("CARGO_BIN_EXE_dt-agent"), &agent).unwrap();
    let images = docker_images(&robot);
    assert!(images.len() >= 10, "docker images: {images:?}");
    let all = images.join(" ");

    // What docker save writes: its size, its largest layer, where manifest.json comes.
    let listing = robot.exec_ok(&["bash", "-c", &format!("docker save {all} | tar -tvf -")]);
    let entries: Vec<(u64, &str)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2].parse().unwrap(), *f.last().unwrap())
        })
        .collect();
    let largest_layer = entries
        .iter()
        .filter(|(_, p)| p.ends_with("layer.tar"))
        .map(|(n, _)| *n)
        .max()
        .unwrap();
    let archive: u64 = robot
        .exec_ok(&["bash", "-c", &format!("docker save {all} | wc -c")])
        .trim()
        .parse()
        .unwrap();
    let tail: Vec<&str> = entries.iter().rev().take(2).map(|(_, p)| *p).collect();
    let mut save_time = Duration::MAX;
    for _ in 0..2 {
        let start = Instant::now();
        robot.exec_ok(&["bash", "-c", &format!("docker save {all} > /dev/null")]);
        save_time = save_time.min(start.elapsed());
    }

    // 1. The import, sampled.
    let root = "/var/lib/dt-agent";
    let store = robot.root().join(root.trim_start_matches('/'));
    let sampler = Sampler::start(store.clone());
    let (report, import_time) = import(&robot, root, &images);
    let (peak, largest_file) = sampler.finish();
    let (after, _) = disk_use(&store);
    let extra = peak.saturating_sub(after);
    support::write_stderr_line(&format!(
        "stock_adopt: {arch}: {} images, archive {} (last entries {tail:?}), largest layer {}; \
         import {import_time:.1?} vs docker save > /dev/null {save_time:.1?}; store {} after, \
         peak {} (extra {}), largest staged file {}",
        images.len(),
        mib(archive),
        mib(largest_layer),
        mib(after),
        mib(peak),
        mib(extra),
        mib(largest_file),
    ));
    assert_eq!(report["format"], "docker-archive");
    check_against_docker(&robot, &store, &images, &report);
    assert!(
        extra <= largest_layer + SLACK,
        "peak extra disk {} > largest layer {} + 64 MiB",
        mib(extra),
        mib(largest_layer)
    );
    assert!(report["layers_added"].as_u64().unwrap() > 0, "{report}");
    let ls = json(&robot.exec_ok(&[AGENT, "image", "ls", "--json"]));
    let listed: BTreeSet<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = images.iter().map(String::as_str).collect();
    assert_eq!(listed, want, "dt-agent image ls");

    // 2. Again: the counters say nothing was added.
    let (again, again_time) = import(&robot, root, &images);
    for k in ["layers_added", "objects_added", "snapshots_added"] {
        assert_eq!(again[k], 0, "second import: {k}: {again}");
    }
    assert_eq!(
        again["layers_present"], report["layers_added"],
        "second import: {again}"
    );
    assert_eq!(
        by_name(&again),
        by_name(&report),
        "same names, same digests"
    );
    support::write_stderr_line(&format!(
        "stock_adopt: {arch}: second import {again_time:.1?}, nothing added"
    ));

    // 3. Killed midway, then rerun into a store of its own.
    let root2 = "/var/lib/dt-agent-killed";
    let store2 = robot.root().join(root2.trim_start_matches('/'));
    killed_import(
        &robot,
        root2,
        &images,
        (archive / 2).min(archive - (1 << 20)),
    );
    let (rerun, _) = import(&robot, root2, &images);
    check_against_docker(&robot, &store2, &images, &rerun);
    assert_eq!(rerun["layers_added"], report["layers_added"], "{rerun}");
    let left: Vec<_> = std::fs::read_dir(store2.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    let fsck = robot.exec(&["env", &format!("DT_AGENT_ROOT={root2}"), AGENT, "fsck"]);
    assert!(
        fsck.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}
