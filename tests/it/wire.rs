//! The wire protocol end to end: a real `dt-agent serve --stdio` child (its own
//! `DT_AGENT_ROOT`) with its stdin/stdout as the channel, images built in code and loaded into a
//! laptop store with `dts image load`. Measures the bytes of a cold transfer (against the gzip'd
//! layers), a no-op, a one-file change in a 2,000-file layer and a few bytes changed in an 8 MB
//! binary; kills the agent mid-transfer and checks the next transfer sends only the rest;
//! refuses a corrupted object and a different major version; relays daemon requests.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::task::{Context, Poll};

use crate::support::images::{Entry, Layout, base_layer, gzip, layer_tar};
use dts::oci::{Digest, Platform};
use dts::progress::Silent;
use dts::store::Store;
use dts::wire::client::{Connection, TransferReport};
use dts::wire::frame::{Frame, read_frame, write_frame};
use dts::wire::{FromRobot, ToRobot, WireError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const NAME: &str = "example.com/duckietown/wire-test:dev";

/// A `dt-agent serve --stdio` child's stdout and stdin as one channel.
pub(crate) type Io = tokio::io::Join<tokio::process::ChildStdout, tokio::process::ChildStdin>;

fn agent_cmd(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dt-agent"));
    c.env("DT_AGENT_ROOT", root);
    c
}

fn agent(root: &Path, args: &[&str]) -> Output {
    agent_cmd(root).args(args).output().expect("run dt-agent")
}

fn agent_json(root: &Path, args: &[&str]) -> serde_json::Value {
    let out = agent(root, args);
    assert!(
        out.status.success(),
        "dt-agent {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A `dt-agent serve --stdio` child with its own `DT_AGENT_ROOT`, and its channel.
pub(crate) fn serve(root: &Path) -> (tokio::process::Child, Io) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(["serve", "--stdio"])
        .env("DT_AGENT_ROOT", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dt-agent serve");
    let io = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    (child, io)
}

async fn open(root: &Path, cache: &Path) -> (tokio::process::Child, Connection<Io>) {
    let (child, io) = serve(root);
    let (mut conn, hello) = Connection::open(io).await.expect("hello");
    assert_eq!(hello.platform, Platform::host().normalized());
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    conn.set_cache_dir(cache.to_path_buf());
    (child, conn)
}

/// A deterministic pseudo-random generator (xorshift).
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Text-like source code: words from a small vocabulary.
fn source_file(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "import",
        "rospy",
        "def",
        "self",
        "return",
        "if",
        "else",
        "for",
        "in",
        "range",
        "np.array",
        "msg.header",
        "publish",
        "(",
        ")",
        ":",
        "\n    ",
        "=",
        "+",
        "0.5",
        "lane",
        "pose",
        "duckie",
        "wheel",
        "velocity",
        "omega",
        "class",
        "Node",
        "\n",
        "#",
    ];
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(r() % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Binary-like content: runs of structured "instructions" with some entropy.
fn binary(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(len);
    let ops: Vec<[u8; 4]> = (0..256).map(|_| (r() as u32).to_le_bytes()).collect();
    while out.len() < len {
        let v = r();
        if v.is_multiple_of(16) {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&ops[(v >> 8) as usize % 64]);
        }
    }
    out.truncate(len);
    out
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The code layer: ~2,000 small files in 40 directories; `edit` changes file 1234.
fn code_layer(edit: bool) -> Vec<u8> {
    let mut entries = vec![Entry::Dir("code/", 0o755)];
    for d in 0..40 {
        entries.push(Entry::Dir(leak(format!("code/pkg{d}/")), 0o755));
        for f in 0..50 {
            let i = d * 50 + f;
            let len = if i == 1234 {
                10_000
            } else {
                600 + (i * 37) % 3000
            };
            let mut data = source_file(i as u64 + 7, len);
            if edit && i == 1234 {
                data[5000..5010].copy_from_slice(b"# edited!\n");
            }
            entries.push(Entry::File(
                leak(format!("code/pkg{d}/mod{f}.py")),
                0o644,
                data,
            ));
        }
    }
    layer_tar(&entries)
}

/// The build-output layer: an 8 MB binary (a few bytes changed with `edit`) and some files.
fn build_layer(edit: bool) -> Vec<u8> {
    let mut bin = binary(99, 8 << 20);
    if edit {
        bin[4_000_000..4_000_004].copy_from_slice(b"\x01\x02\x03\x04");
        bin[6_000_000] ^= 0xff;
    }
    layer_tar(&[
        Entry::Dir("opt/", 0o755),
        Entry::File("opt/app", 0o755, bin),
        Entry::File("opt/config.yaml", 0o644, source_file(5, 2000)),
        Entry::File("opt/empty", 0o644, Vec::new()),
        Entry::File("opt/run.sh", 0o4755, b"#!/bin/sh\nexec /opt/app\n".to_vec()),
    ])
}

struct Laptop {
    home: PathBuf,
    cache: PathBuf,
}

impl Laptop {
    fn new(dir: &Path) -> Laptop {
        Laptop {
            home: dir.join("home"),
            cache: dir.join("cache"),
        }
    }

    /// Loads an image of `layers` named `tag` and returns its manifest digest.
    fn load(&self, tag: &str, layers: &[Vec<u8>]) -> Digest {
        let dir = self
            .home
            .join(format!("layout-{}", tag.replace([':', '/'], "_")));
        let l = Layout::new(&dir);
        let w = l.image(&Platform::host().normalized(), layers, &["/opt/run.sh"]);
        l.finish(&[(tag, w.manifest.clone())]);
        let out = Command::new(env!("CARGO_BIN_EXE_dts"))
            .args(["image", "load", "-i", dir.to_str().unwrap()])
            .env("DTS_HOME", &self.home)
            .env_remove("XDG_DATA_HOME")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dts image load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        w.manifest.digest
    }

    fn store(&self) -> Store {
        Store::open(&self.home.join("store")).unwrap()
    }
}

/// The tree under `root`: path → kind, mode, content digest / link target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let v = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {}", Digest::of(&std::fs::read(&p).unwrap()))
            };
            out.insert(rel, v);
        }
    }
    out
}

/// The tree the layers unpack to, by the reference unpacker of the crate.
fn expected_tree(dir: &Path, layers: &[Vec<u8>]) -> BTreeMap<String, String> {
    let root = dir.join("expected");
    std::fs::create_dir_all(&root).unwrap();
    for l in layers {
        dts::layer::unpack(&l[..], &root, &dts::layer::UnpackOptions::default()).unwrap();
    }
    let t = tree(&root);
    std::fs::remove_dir_all(&root).unwrap();
    t
}

fn robot_tree(root: &Path) -> BTreeMap<String, String> {
    let images = agent_json(root, &["image", "ls", "--json"]);
    let img = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().contains("wire-test"))
        .expect("the image is named");
    assert_eq!(img["snapshot"], true);
    let chain: Digest = img["chain_id"].as_str().unwrap().parse().unwrap();
    tree(&root.join("snapshots").join(chain.hex()).join("rootfs"))
}

fn assert_fsck_clean(root: &Path) {
    let r = agent_json(root, &["fsck", "--json"]);
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
}

fn total(r: &TransferReport) -> u64 {
    r.bytes_sent + r.bytes_received
}

async fn transfer(root: &Path, laptop: &Laptop, manifest: &Digest) -> TransferReport {
    let (mut child, mut conn) = open(root, &laptop.cache).await;
    let r = conn
        .transfer(
            &laptop.store(),
            &[(NAME.to_string(), manifest.clone())],
            &Silent,
        )
        .await
        .expect("transfer");
    conn.close().await.unwrap();
    assert!(child.wait().await.unwrap().success());
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    r
}

fn object_count(root: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(root.join("objects/sha256")).unwrap() {
        n += std::fs::read_dir(shard.unwrap().path()).unwrap().count();
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_noop_one_file_and_binary_patch() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("robot");
    let laptop = Laptop::new(t.path());
    let v1 = [base_layer(), code_layer(false), build_layer(false)];
    let v2 = [base_layer(), code_layer(true), build_layer(false)];
    let v3 = [base_layer(), code_layer(true), build_layer(true)];
    let m1 = laptop.load("example.com/me/app:v1", &v1);
    let m2 = laptop.load("example.com/me/app:v2", &v2);
    let m3 = laptop.load("example.com/me/app:v3", &v3);

    // Cold: everything, compressed better than the gzip'd layers.
    let cold = transfer(&root, &laptop, &m1).await;
    let gzipped: u64 = v1.iter().map(|l| gzip(l).len() as u64).sum();
    eprintln!(
        "cold: {} bytes on the wire, gzip'd layers {gzipped} ({:.2}x)",
        total(&cold),
        total(&cold) as f64 / gzipped as f64
    );
    assert_eq!((cold.layers_total, cold.layers_skipped), (3, 0));
    // What `zstd -9 --long` (where the object stream starts; here the pipe is faster than
    // the compressor, so it stays there or goes lower) makes of the layers as whole streams:
    // the object stream, flushed per batch and across layers, must not lose what whole
    // streams find. (Synthetic data: real binaries compress better than gzip by more, see
    // scripts/bench.)
    let whole: u64 = v1
        .iter()
        .map(|l| {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 9).unwrap();
            e.long_distance_matching(true).unwrap();
            e.window_log(27).unwrap();
            e.write_all(l).unwrap();
            e.finish().unwrap().len() as u64
        })
        .sum();
    eprintln!(
        "cold: zstd -9 --long of the layers {whole} ({:.2}x gzip)",
        whole as f64 / gzipped as f64
    );
    assert!(
        cold.bytes_sent <= whole + whole / 20 + 64 * 1024,
        "cold sent {} bytes; zstd -9 --long of the layers is {whole}",
        cold.bytes_sent
    );
    assert_eq!(cold.snapshots_built, 1);
    assert_eq!(robot_tree(&root), expected_tree(t.path(), &v1));
    assert_fsck_clean(&root);

    // No-op: only the hello and one query.
    let noop = transfer(&root, &laptop, &m1).await;
    eprintln!("no-op: {} bytes", total(&noop));
    assert_eq!((noop.layers_skipped, noop.objects_sent), (3, 0));
    assert!(
        total(&noop) <= 8 * 1024,
        "no-op took {} bytes",
        total(&noop)
    );

    // One 10 KB file changed in the 2,000-file layer.
    let one = transfer(&root, &laptop, &m2).await;
    eprintln!("one file: {} bytes", total(&one));
    assert_eq!(
        (one.layers_sent, one.objects_sent, one.split_deltas),
        (1, 1, 1)
    );
    assert!(
        total(&one) <= 16 * 1024,
        "one file took {} bytes",
        total(&one)
    );
    assert_eq!(robot_tree(&root), expected_tree(t.path(), &v2));

    // A few bytes of the 8 MB binary: a patch against the old one.
    let bin = transfer(&root, &laptop, &m3).await;
    eprintln!("8 MB binary: {} bytes", total(&bin));
    assert_eq!((bin.objects_sent, bin.patches_sent), (1, 1));
    assert!(
        total(&bin) <= 256 * 1024,
        "binary took {} bytes",
        total(&bin)
    );
    assert_eq!(robot_tree(&root), expected_tree(t.path(), &v3));
    assert_fsck_clean(&root);
    let ls = agent_json(&root, &["image", "ls", "--json"]);
    assert_eq!(ls[0]["manifest"], m3.to_string());
}

/// A channel that runs `at` once `limit` bytes were written (then keeps passing bytes on).
struct Tripwire<T> {
    inner: T,
    written: u64,
    limit: u64,
    at: Option<Box<dyn FnOnce() + Send + Unpin>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tripwire<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tripwire<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written += *n as u64;
            if self.written >= self.limit
                && let Some(f) = self.at.take()
            {
                f();
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_resumes_with_only_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let laptop = Laptop::new(t.path());
    let v1 = [base_layer(), code_layer(false)];
    let m1 = laptop.load("example.com/me/app:v1", &v1);

    // How many bytes a whole transfer takes, on a robot of its own.
    let full_root = t.path().join("full");
    let (_c, mut conn) = open(&full_root, &laptop.cache).await;
    conn.set_batch_limits(1 << 20, 100);
    conn.set_level(3);
    let full = conn
        .transfer(&laptop.store(), &[(NAME.into(), m1.clone())], &Silent)
        .await
        .unwrap();
    let all_objects = object_count(&full_root);
    assert!(full.objects_sent >= 2000, "{full:?}");

    // The agent is SIGKILLed halfway through.
    let root = t.path().join("robot");
    let (child, io) = serve(&root);
    let pid = child.id().unwrap() as i32;
    let io = Tripwire {
        inner: io,
        written: 0,
        limit: full.bytes_sent / 2,
        at: Some(Box::new(move || unsafe {
            libc::kill(pid, libc::SIGKILL);
        })),
    };
    let (mut conn, _) = Connection::open(io).await.unwrap();
    conn.set_cache_dir(laptop.cache.clone());
    conn.set_batch_limits(1 << 20, 100);
    conn.set_level(3);
    let err = conn
        .transfer(&laptop.store(), &[(NAME.into(), m1.clone())], &Silent)
        .await
        .expect_err("the agent was killed");
    eprintln!("cut: {err}");
    drop(conn);
    drop(child);
    let committed = object_count(&root);
    assert!(
        committed > 0 && committed < all_objects,
        "{committed} of {all_objects}"
    );
    // Nothing half-written has a final name: every object is whole and verified.
    assert_fsck_clean(&root);
    let images = agent_json(&root, &["image", "ls", "--json"]);
    assert_eq!(images, serde_json::json!([]));

    // The next transfer sends exactly the rest.
    let (mut c2, mut conn) = open(&root, &laptop.cache).await;
    conn.set_batch_limits(1 << 20, 100);
    conn.set_level(3);
    let rest = conn
        .transfer(&laptop.store(), &[(NAME.into(), m1.clone())], &Silent)
        .await
        .unwrap();
    conn.close().await.unwrap();
    c2.wait().await.unwrap();
    eprintln!("resumed: {rest:?}");
    assert_eq!(rest.objects_sent as usize, all_objects - committed);
    assert_eq!(object_count(&root), all_objects);
    assert_eq!(robot_tree(&root), expected_tree(t.path(), &v1));
    assert_fsck_clean(&root);
}

/// Blocking frames to and from a serve child.
struct Raw {
    child: std::process::Child,
    out: std::process::ChildStdout,
}

impl Raw {
    fn start(root: &Path) -> Raw {
        Raw::start_in(root, None)
    }

    /// `dt-agent serve` in the memory cgroup whose `cgroup.procs` is `procs`, when given.
    fn start_in(root: &Path, procs: Option<std::fs::File>) -> Raw {
        let mut cmd = agent_cmd(root);
        if let Some(f) = procs {
            use std::os::fd::AsRawFd as _;
            use std::os::unix::process::CommandExt as _;
            // SAFETY: write(2) of a static buffer to an fd we own, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args(["serve", "--stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        Raw { child, out }
    }
    fn send(&mut self, f: &Frame) {
        let stdin = self.child.stdin.as_mut().unwrap();
        write_frame(stdin, f).unwrap();
        stdin.flush().unwrap();
    }
    fn recv(&mut self) -> Option<Frame> {
        read_frame(&mut self.out).unwrap()
    }
    fn stderr(mut self) -> String {
        drop(self.child.stdin.take());
        let mut s = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        self.child.wait().unwrap();
        s
    }
}

#[test]
fn a_different_major_version_is_named_both_ways() {
    let t = tempfile::tempdir().unwrap();
    // The robot refuses a laptop speaking 99.x, after saying its own version.
    let mut raw = Raw::start(&t.path().join("robot"));
    raw.send(&Frame::hello(
        99,
        1,
        &serde_json::json!({"client": "dts 99"}),
    ));
    let hello = raw.recv().unwrap();
    let (major, _, _) = hello.parse_hello().unwrap();
    assert_eq!(major, dts::wire::MAJOR);
    let FromRobot::Error { message, .. } = raw.recv().unwrap().message().unwrap() else {
        panic!("expected an error");
    };
    for want in [
        "99.1",
        &format!("{}.{}", dts::wire::MAJOR, dts::wire::MINOR),
        "re-provision the robot to upgrade dt-agent",
    ] {
        assert!(message.contains(want), "{message}");
    }
    assert!(raw.stderr().contains("re-provision"));

    // The laptop refuses a robot speaking 99.x.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let robot = tokio::spawn(async move {
            let _ = dts::wire::frame::read_frame_async(&mut b).await;
            let hello = Frame::hello(99, 0, &serde_json::json!({}));
            dts::wire::frame::write_frame_async(&mut b, &hello)
                .await
                .unwrap();
            b
        });
        let err = match Connection::open(a).await {
            Err(e) => e,
            Ok(_) => panic!("a 99.0 robot was accepted"),
        };
        robot.await.unwrap();
        assert!(matches!(err, WireError::Version { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("99.0") && msg.contains("re-provision the robot to upgrade dt-agent"),
            "{msg}"
        );
    });
}

#[test]
fn a_corrupted_object_is_refused_and_never_named() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("robot");
    let mut raw = Raw::start(&root);
    raw.send(&Frame::hello(
        dts::wire::MAJOR,
        0,
        &serde_json::json!({"client": "test"}),
    ));
    raw.recv().unwrap();
    let good = b"the content the digest names".to_vec();
    let claimed = Digest::of(&good);
    let spec = dts::agent::store::ObjectSpec {
        digest: claimed.clone(),
        size: good.len() as u64,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: Vec::new(),
    };
    // A good object first (committed), then a corrupted one in the next batch.
    raw.send(&Frame::control(&ToRobot::Objects {
        objects: vec![dts::agent::store::ObjectSpec {
            digest: Digest::of(b"fine"),
            size: 4,
            ..spec.clone()
        }],
    }));
    for f in dts::wire::frame::data_frames(&zstd::encode_all(&b"fine"[..], 3).unwrap()) {
        raw.send(&f);
    }
    let mut evil = good.clone();
    evil[0] ^= 1;
    raw.send(&Frame::control(&ToRobot::Objects {
        objects: vec![spec],
    }));
    for f in dts::wire::frame::data_frames(&zstd::encode_all(&evil[..], 3).unwrap()) {
        raw.send(&f);
    }
    raw.send(&Frame::control(&ToRobot::Sync));
    let FromRobot::Error { message, .. } = raw.recv().unwrap().message().unwrap() else {
        panic!("expected a refusal");
    };
    assert!(
        message.contains("refused") && message.contains(claimed.hex()),
        "{message}"
    );
    let stderr = raw.stderr();
    assert!(stderr.contains("refused"), "{stderr}");
    let names: Vec<String> = walk(&root.join("objects"));
    assert!(
        names.iter().any(|n| n.contains(Digest::of(b"fine").hex())),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains(claimed.hex())),
        "{names:?}"
    );
    // The staging area went with the session.
    assert_eq!(walk(&root.join("tmp")), Vec::<String>::new());

    // A tar-split that does not hash to what was announced is refused too.
    let mut raw = Raw::start(&root);
    raw.send(&Frame::hello(dts::wire::MAJOR, 0, &serde_json::json!({})));
    raw.recv().unwrap();
    let split = b"dts-tar-split\n\x01E".to_vec();
    raw.send(&Frame::control(&ToRobot::Layer {
        diff_id: Digest::of(b"layer"),
        split_digest: Digest::of(b"something else"),
        split_size: split.len() as u64,
        base: None,
    }));
    for f in dts::wire::frame::data_frames(&zstd::encode_all(&split[..], 3).unwrap()) {
        raw.send(&f);
    }
    raw.send(&Frame::control(&ToRobot::Sync));
    let FromRobot::Error { message, .. } = raw.recv().unwrap().message().unwrap() else {
        panic!("expected a refusal");
    };
    assert!(message.contains("refused"), "{message}");
    raw.stderr();
    assert!(
        !root
            .join("layers")
            .join(Digest::of(b"layer").hex())
            .exists()
    );
}

/// A memory cgroup of the test's own, removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let own = dts::util::cgroup::MemoryCgroup::own().expect("a memory cgroup");
        let cg = own.child(&format!("dts-wire-test-{}", std::process::id()));
        std::fs::create_dir_all(&cg.dir).unwrap();
        std::fs::write(cg.dir.join(cg.limit_file), limit.to_string()).unwrap();
        MemoryCgroup(cg.dir)
    }

    fn procs(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.0.join("cgroup.procs"))
            .unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Issue 20: a robot with 1 GiB (here: a `dt-agent serve` held to 1 GiB by its cgroup) says it
/// decodes 16 MiB windows, refuses a patch whose old and new file do not fit one (before it
/// reads the old file), and refuses a stream frame asking for a wider window instead of
/// allocating it; nothing is named either way.
#[test]
fn a_small_robot_refuses_frames_wider_than_the_window_it_said() {
    if !support::require_root("puts dt-agent serve in a memory cgroup of 1 GiB") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("robot");
    let cg = MemoryCgroup::new(1 << 30);
    let hello = |raw: &mut Raw| {
        raw.send(&Frame::hello(
            dts::wire::MAJOR,
            dts::wire::MINOR,
            &serde_json::json!({"client": "test"}),
        ));
        let f = raw.recv().unwrap();
        let (_, _, body) = f.parse_hello().unwrap();
        let h: dts::wire::RobotHello = serde_json::from_slice(body).unwrap();
        h.window_log_max
    };
    let spec = |content: &[u8]| dts::agent::store::ObjectSpec {
        digest: Digest::of(content),
        size: content.len() as u64,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: Vec::new(),
    };
    let refusal = |raw: Raw| {
        let mut raw = raw;
        let FromRobot::Error { message, .. } = raw.recv().unwrap().message().unwrap() else {
            panic!("expected a refusal");
        };
        raw.stderr();
        message
    };

    // A 12 MiB object in a 16 MiB window: taken.
    let old: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut raw = Raw::start_in(&root, Some(cg.procs()));
    assert_eq!(hello(&mut raw), dts::wire::SMALL_ROBOT_WINDOW_LOG);
    raw.send(&Frame::control(&ToRobot::Objects {
        objects: vec![spec(&old)],
    }));
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    enc.window_log(dts::wire::SMALL_ROBOT_WINDOW_LOG).unwrap();
    enc.write_all(&old).unwrap();
    for f in dts::wire::frame::data_frames(&enc.finish().unwrap()) {
        raw.send(&f);
    }
    raw.send(&Frame::control(&ToRobot::Sync));
    assert!(matches!(
        raw.recv().unwrap().message().unwrap(),
        FromRobot::Synced { .. }
    ));
    raw.send(&Frame::control(&ToRobot::Bye));
    raw.stderr();

    // A 6 MiB patch against it: 18 MiB, more than the window; refused before anything is read.
    let new = old[..6 << 20].to_vec();
    let mut raw = Raw::start_in(&root, Some(cg.procs()));
    hello(&mut raw);
    raw.send(&Frame::control(&ToRobot::Patch {
        object: spec(&new),
        base: Digest::of(&old),
    }));
    let message = refusal(raw);
    assert!(message.contains("16 MiB window"), "{message}");

    // A stream frame with a 32 MiB window: refused, not allocated.
    let big = vec![7u8; 1 << 20];
    let mut raw = Raw::start_in(&root, Some(cg.procs()));
    hello(&mut raw);
    raw.send(&Frame::control(&ToRobot::Objects {
        objects: vec![spec(&big)],
    }));
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    enc.window_log(dts::wire::SMALL_ROBOT_WINDOW_LOG + 1)
        .unwrap();
    enc.write_all(&big).unwrap();
    for f in dts::wire::frame::data_frames(&enc.finish().unwrap()) {
        raw.send(&f);
    }
    raw.send(&Frame::control(&ToRobot::Sync));
    let message = refusal(raw);
    // zstd's own words for a frame wider than WindowLogMax.
    assert!(message.contains("too much memory"), "{message}");
    let names = walk(&root.join("objects"));
    assert!(
        !names
            .iter()
            .any(|n| n.contains(Digest::of(&new).hex()) || n.contains(Digest::of(&big).hex())),
        "{names:?}"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_requests_are_relayed_whatever_their_kind() {
    use dts::agent::daemon::Request;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("robot");
    std::fs::create_dir_all(&root).unwrap();
    // A stand-in daemon speaking the socket's JSON lines.
    let listener = std::os::unix::net::UnixListener::bind(root.join("daemon.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let req: serde_json::Value = serde_json::from_str(&line).unwrap();
                let answer = match req["op"].as_str().unwrap() {
                    "logs" => "{\"line\":{\"log\":\"hi\\n\",\"stream\":\"stdout\",\"time\":\"t\"}}\n{\"line\":{\"log\":\"bye\\n\",\"stream\":\"stderr\",\"time\":\"t\"}}\n{\"end\":{\"exit_code\":3}}\n".to_string(),
                    "rm" => "{\"error\":{\"message\":\"no container `x`\",\"bad_input\":true,\"not_found\":true}}\n".to_string(),
                    op => format!("{{\"ok\":{{\"op\":\"{op}\"}}}}\n"),
                };
                conn.write_all(answer.as_bytes()).unwrap();
                line.clear();
            }
        }
    });
    let (mut child, mut conn) = open(&root, &t.path().join("cache")).await;
    let v = conn.daemon(&Request::Ps { all: true }).await.unwrap();
    assert_eq!(v, serde_json::json!({"op": "ps"}));
    let v = conn.daemon(&Request::VolumeLs).await.unwrap();
    assert_eq!(v, serde_json::json!({"op": "volume_ls"}));
    let mut lines = Vec::new();
    let code = conn
        .daemon_logs(
            &Request::Logs {
                name: "x".parse().unwrap(),
                follow: true,
                tail: None,
                until_exit: true,
                since: None,
                until: None,
            },
            &mut |l| lines.push(l.log),
        )
        .await
        .unwrap();
    assert_eq!(
        (lines, code),
        (vec!["hi\n".to_string(), "bye\n".to_string()], Some(3))
    );
    let err = conn
        .daemon(&Request::Rm {
            name: "x".parse().unwrap(),
            force: false,
        })
        .await
        .unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("no container"),
        "{err}"
    );
    conn.close().await.unwrap();
    assert!(child.wait().await.unwrap().success());

    // Without a daemon, the answer says how to start one.
    std::fs::remove_file(root.join("daemon.sock")).unwrap();
    let (_child, mut conn) = open(&root, &t.path().join("cache")).await;
    let err = conn.daemon(&Request::Ps { all: false }).await.unwrap_err();
    assert!(err.to_string().contains("dt-agent daemon"), "{err}");
}
