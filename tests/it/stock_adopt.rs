//! Adopting a stock Duckiebot's images (issue 13): every image the robot's real dockerd holds,
//! streamed by `docker save IMAGE… | dt-agent image import --expect-bytes N -` into the agent's
//! store on the robot itself (tests/it/support/stock_robot.rs), plus one stand-in with a 40 MiB
//! random layer made in the booted robot (`docker import`), so that the largest layer is a
//! large part of the stream. Checks that every image arrives with Docker's config digest
//! (`docker image inspect .Id`, also what `dt-agent image ls --json` reports as `config`),
//! diff_ids (`RootFS.Layers`) and repo tags; that progress is reported against the expected
//! bytes; that the peak extra disk use during the import (sampled on the agent's root while it
//! runs) stays under the largest layer + 64 MiB and well under the stream (which staging the
//! whole archive would need); that a second import adds nothing (the import's own JSON
//! counters); and that an import killed midway keeps the layers it finished, which the rerun
//! reports present without adding their objects again. Prints the measured figures
//! (docs/duckietown.md, "Adoption notes"). Needs what the stock robot needs; skips otherwise.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::stock_robot::StockRobot;

pub(crate) const AGENT: &str = "/usr/local/bin/dt-agent";
pub(crate) const SLACK: u64 = 64 << 20;

/// Disk use of a tree: allocated bytes of each inode once (snapshots are hardlink farms), and
/// the largest regular file. Files vanishing under the walk (the import renames and removes)
/// are skipped.
pub(crate) fn disk_use(root: &Path) -> (u64, u64) {
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
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl Sampler {
    pub(crate) fn start(root: PathBuf) -> Sampler {
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

    pub(crate) fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// The tagged images of the robot's dockerd.
pub(crate) fn docker_images(robot: &StockRobot) -> Vec<String> {
    let out = robot.exec_ok(&["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| !l.contains("<none>") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

pub(crate) fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// `docker save IMAGES | dt-agent image import --json --expect-bytes N -`: (report, time,
/// stderr).
pub(crate) fn import(
    robot: &StockRobot,
    root: &str,
    images: &[String],
    expect: u64,
) -> (serde_json::Value, Duration, String) {
    let cmd = format!(
        "set -o pipefail; docker save {} | DT_AGENT_ROOT={root} {AGENT} image import --json \
         --expect-bytes {expect} -",
        images.join(" ")
    );
    let start = Instant::now();
    let out = robot.exec(&["bash", "-c", &cmd]);
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "import failed: {err}");
    (json(&String::from_utf8_lossy(&out.stdout)), took, err)
}

/// A document of the agent's store (manifest or config), read from the robot's disk.
pub(crate) fn doc(store: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let p = store.join("images/sha256").join(hex);
    json(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// The images of an import report by name (`docker save` orders its manifest.json freely).
pub(crate) fn by_name(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i.to_string()))
        .collect()
}

pub(crate) fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

/// Checks the import against `docker image inspect`: every repo tag named, config digest and
/// diff_ids equal.
pub(crate) fn check_against_docker(
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

/// The archive's first `feed` bytes fed by the host into an import, which is SIGKILLed once
/// it has committed the layers that ended before them (the count of `layers/` settles): a
/// crash mid-stream. Returns how many layers it had committed.
fn killed_import(robot: &StockRobot, root: &str, archive: &[u8], feed: usize) -> usize {
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
    let mut to = agent.stdin.take().unwrap();
    to.write_all(&archive[..feed]).unwrap();
    to.flush().unwrap();
    let store = robot.root().join(root.trim_start_matches('/'));
    let layers = |_: ()| std::fs::read_dir(store.join("layers")).map_or(0, |r| r.count());
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let n = layers(());
        if n != last {
            (last, since) = (n, Instant::now());
        }
        if n > 0 && since.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the import committed no layer");
        std::thread::sleep(Duration::from_millis(50));
    }
    // nsenter forked it into the robot's pid namespace: its host pid is nsenter's child.
    let kids = children(agent.id());
    assert_eq!(kids.len(), 1, "nsenter's children: {kids:?}");
    // SAFETY: plain syscall on a process this test started.
    unsafe { libc::kill(kids[0], libc::SIGKILL) };
    let status = agent.wait().unwrap();
    assert!(!status.success(), "killed import exited {status}");
    drop(to);
    let tmp = store.join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "the killed import's staging dir is left");
    let committed = layers(());
    support::write_stderr_line(&format!(
        "stock_adopt: killed the import after {} fed and {committed} layer(s) committed",
        mib(feed as u64),
    ));
    committed
}

/// Objects in a store.
fn object_count(store: &Path) -> u64 {
    std::fs::read_dir(store.join("objects/sha256"))
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).unwrap().count() as u64)
        .sum()
}

/// `docker save` of `images`, read on the host: the bytes, and where each entry's data starts
/// and ends (path, start, end), in stream order.
fn save_on_host(robot: &StockRobot, images: &[String]) -> (Vec<u8>, Vec<(String, usize, usize)>) {
    let mut cmd = vec!["docker", "save"];
    cmd.extend(images.iter().map(String::as_str));
    let out = robot.exec(&cmd);
    assert!(out.status.success(), "docker save failed");
    let bytes = out.stdout;
    let mut entries = Vec::new();
    let mut ar = tar::Archive::new(&bytes[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let start = e.raw_file_position() as usize;
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let regular = e.header().entry_type().is_file();
        entries.push((
            path,
            start,
            start + if regular { e.size() as usize } else { 0 },
        ));
    }
    (bytes, entries)
}

/// A stand-in with one 40 MiB random layer, made in the booted robot (the cached stand-ins'
/// layers are all small), so that staging the whole stream would show in the disk figures.
pub(crate) const BIG: &str = "duckietown/dt-stand-in-big:adopt";

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
    robot.exec_ok(&[
        "bash",
        "-c",
        &format!(
            "set -e; mkdir -p /tmp/big; head -c 40M /dev/urandom > /tmp/big/blob; \
             tar -C /tmp/big -cf - . | docker import - {BIG}; rm -rf /tmp/big"
        ),
    ]);
    let images = docker_images(&robot);
    assert!(images.len() >= 11, "docker images: {images:?}");
    let all = images.join(" ");

    // What docker save writes: its size, its largest layer, where manifest.json comes; and
    // what the caller can expect it to be (the images' sizes, shared layers counted again).
    let (archive_bytes, entries) = save_on_host(&robot, &images);
    let archive = archive_bytes.len() as u64;
    let layer_entries: Vec<&(String, usize, usize)> = entries
        .iter()
        .filter(|(p, s, e)| p.ends_with("layer.tar") && e > s)
        .collect();
    let largest_layer = layer_entries
        .iter()
        .map(|(_, s, e)| (e - s) as u64)
        .max()
        .unwrap();
    assert!(
        largest_layer >= 40 << 20,
        "the big stand-in's layer: {largest_layer}"
    );
    let tail: Vec<&str> = entries
        .iter()
        .rev()
        .take(2)
        .map(|(p, _, _)| p.as_str())
        .collect();
    let expect: u64 = robot
        .exec_ok(&[
            "bash",
            "-c",
            &format!("docker image inspect --format '{{{{.Size}}}}' {all}"),
        ])
        .lines()
        .map(|l| l.trim().parse::<u64>().unwrap())
        .sum();
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
    // dockerd's own temp dir, where `docker save` may stage what it writes.
    let docker_tmp = Sampler::start(robot.root().join("var/lib/docker/tmp"));
    let (report, import_time, progress) = import(&robot, root, &images, expect);
    let (peak, largest_file) = sampler.finish();
    let (docker_peak, _) = docker_tmp.finish();
    let (after, _) = disk_use(&store);
    let extra = peak.saturating_sub(after);
    support::write_stderr_line(&format!(
        "stock_adopt: {arch}: {} images, archive {} (expected {}; last entries {tail:?}), \
         largest layer {}; import {import_time:.1?} vs docker save > /dev/null {save_time:.1?}; \
         store {} after, peak {} (extra {}), largest file {}; dockerd's tmp peak {}",
        images.len(),
        mib(archive),
        mib(expect),
        mib(largest_layer),
        mib(after),
        mib(peak),
        mib(extra),
        mib(largest_file),
        mib(docker_peak),
    ));
    assert_eq!(report["format"], "docker-archive");
    assert!(
        report["bytes_read"].as_u64().unwrap() <= archive,
        "{report}"
    );
    check_against_docker(&robot, &store, &images, &report);
    assert!(
        extra <= largest_layer + SLACK,
        "peak extra disk {} > largest layer {} + 64 MiB",
        mib(extra),
        mib(largest_layer)
    );
    // Staging the whole stream (what the import did before it streamed) would take about
    // `archive` extra; streaming takes one layer's scratch tree and spills at most.
    assert!(
        extra < archive / 2,
        "peak extra disk {} is not well under the stream's {}",
        mib(extra),
        mib(archive)
    );
    assert!(report["layers_added"].as_u64().unwrap() > 0, "{report}");
    let progress_lines: Vec<&str> = progress
        .lines()
        .filter(|l| l.contains("MiB read ("))
        .collect();
    assert!(
        progress_lines.len() >= layer_entries.len() / 2,
        "progress against the expected bytes on stderr: {progress}"
    );
    let ls = json(&robot.exec_ok(&[AGENT, "image", "ls", "--json"]));
    let listed: BTreeMap<&str, &str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["config"].as_str().unwrap()))
        .collect();
    let want: BTreeSet<&str> = images.iter().map(String::as_str).collect();
    assert_eq!(
        listed.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "dt-agent image ls"
    );
    for name in &images {
        let id = robot.exec_ok(&["docker", "image", "inspect", "--format", "{{.Id}}", name]);
        assert_eq!(
            listed[name.as_str()],
            id.trim(),
            "{name}: ls config vs docker's Id"
        );
    }

    // 2. Again: the counters say nothing was added.
    let (again, again_time, _) = import(&robot, root, &images, expect);
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

    // 3. Killed midway (after the layers that end in the first 60% of the stream), then rerun
    // into the same store: the layers it committed are present, their objects not added again.
    let root2 = "/var/lib/dt-agent-killed";
    let store2 = robot.root().join(root2.trim_start_matches('/'));
    let feed = layer_entries
        .iter()
        .map(|(_, _, e)| *e)
        .filter(|e| (*e as u64) < archive * 6 / 10)
        .max()
        .unwrap_or(layer_entries[0].2)
        + 4096;
    let committed = killed_import(&robot, root2, &archive_bytes, feed);
    let objects_before = object_count(&store2);
    let start = Instant::now();
    let (rerun, _, _) = import(&robot, root2, &images, expect);
    support::write_stderr_line(&format!(
        "stock_adopt: {arch}: rerun after the kill {:.1?}: {} layers present, {} added",
        start.elapsed(),
        rerun["layers_present"],
        rerun["layers_added"]
    ));
    check_against_docker(&robot, &store2, &images, &rerun);
    assert_eq!(rerun["layers_present"], committed as u64, "{rerun}");
    assert_eq!(
        rerun["layers_added"].as_u64().unwrap() + committed as u64,
        report["layers_added"].as_u64().unwrap(),
        "{rerun}"
    );
    assert_eq!(
        rerun["objects_added"].as_u64().unwrap() + objects_before,
        report["objects_added"].as_u64().unwrap(),
        "objects are not added twice: {rerun}"
    );
    let left: Vec<_> = std::fs::read_dir(store2.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    let pending: Vec<_> = std::fs::read_dir(store2.join("imports"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pending"))
        .collect();
    assert!(
        pending.is_empty(),
        "the rerun superseded the killed import: {pending:?}"
    );
    let fsck = robot.exec(&["env", &format!("DT_AGENT_ROOT={root2}"), AGENT, "fsck"]);
    assert!(
        fsck.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}
