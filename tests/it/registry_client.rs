//! The registry client against a real registry (distribution 2.8, from tests/it/support/registry.rs)
//! with skopeo as the independent second opinion: pull by platform, push and read back, no
//! uploads on a second push, Basic and token auth from a docker config.json, wrong passwords,
//! cross-repository mounts, chunked and interrupted uploads — and, against a lying HTTP server
//! in this file, that content which does not match its digest never reaches the store.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::support::registry::{Auth, Registry, Request};
use dts::oci::config::RootFs;
use dts::oci::json::canonical;
use dts::oci::{
    Descriptor, Digest, Document, ImageConfig, Index, Manifest, Platform, Reference, media,
};
use dts::progress::{Event, Reporter, Silent};
use dts::registry::{Client, ClientOptions, RegistryError};
use dts::store::Store;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Why a test needing a registry with `auth` (and maybe skopeo) cannot run here.
fn unavailable(auth: &Auth, skopeo: bool) -> Option<String> {
    if let Some(why) = Registry::unavailable(auth) {
        return Some(why);
    }
    // As it will be run: from $PATH.
    if skopeo
        && !Command::new("skopeo")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Some("not installed: skopeo".into());
    }
    None
}

macro_rules! require {
    ($auth:expr, skopeo) => {
        if let Some(why) = unavailable(&$auth, true) {
            support::skip(&why);
            return;
        }
    };
    ($auth:expr) => {
        if let Some(why) = unavailable(&$auth, false) {
            support::skip(&why);
            return;
        }
    };
}

fn client(opts: ClientOptions) -> Client {
    Client::new(opts).expect("building the client")
}

/// A client that reads credentials from `config` (which need not exist).
fn client_with(config: &Path) -> Client {
    client(ClientOptions {
        docker_config: Some(config.to_path_buf()),
        ..Default::default()
    })
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// An uncompressed layer tar holding `files`.
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An image made with the store API and named `name`.
struct TestImage {
    /// What the name points at (an index for several platforms).
    top: Descriptor,
    /// Each platform's manifest descriptor (with its platform).
    manifests: Vec<Descriptor>,
    /// Layer digests by platform (base first).
    layers: BTreeMap<String, Vec<Digest>>,
    /// Config + layer digests of all platforms, distinct.
    blobs: Vec<Digest>,
}

/// One image per platform sharing a base layer (with `base_size` noise bytes in it) plus a
/// per-platform layer; an OCI index over them when there are several.
fn make_image(
    store: &Store,
    name: &str,
    platforms: &[Platform],
    base_size: usize,
    seed: u64,
) -> TestImage {
    // gzip'd, as registries carry them (skopeo would compress plain tars, changing digests).
    let base_tar = layer_tar(&[
        ("etc/base", format!("base {seed}\n").as_bytes()),
        ("usr/lib/blob", &noise(base_size, seed)),
    ]);
    let base = gzip(&base_tar);
    let base_digest = store.put_blob(&base).unwrap();
    let mut manifests = Vec::new();
    let mut layers = BTreeMap::new();
    let mut blobs = vec![base_digest.clone()];
    for p in platforms {
        let arch_tar = layer_tar(&[("etc/arch", format!("{p} {seed}\n").as_bytes())]);
        let arch = gzip(&arch_tar);
        let arch_digest = store.put_blob(&arch).unwrap();
        let config = ImageConfig {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![Digest::of(&base_tar), Digest::of(&arch_tar)],
            },
            ..Default::default()
        }
        .to_canonical_json();
        let config_digest = store.put_blob(&config).unwrap();
        let m = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(
                media::OCI_CONFIG,
                config_digest.clone(),
                config.len() as u64,
            ),
            layers: vec![
                Descriptor::new(
                    media::OCI_LAYER_GZIP,
                    base_digest.clone(),
                    base.len() as u64,
                ),
                Descriptor::new(
                    media::OCI_LAYER_GZIP,
                    arch_digest.clone(),
                    arch.len() as u64,
                ),
            ],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let bytes = canonical(&m);
        let mut desc = Descriptor::new(
            media::OCI_MANIFEST,
            store.put_blob(&bytes).unwrap(),
            bytes.len() as u64,
        );
        desc.platform = Some(p.clone());
        manifests.push(desc);
        layers.insert(
            p.to_string(),
            vec![base_digest.clone(), arch_digest.clone()],
        );
        blobs.extend([config_digest, arch_digest]);
    }
    let top = if let [only] = manifests.as_slice() {
        let mut d = only.clone();
        d.platform = None;
        d
    } else {
        let index = Index {
            manifests: manifests.clone(),
            ..Index::new()
        };
        let bytes = canonical(&index);
        Descriptor::new(
            media::OCI_INDEX,
            store.put_blob(&bytes).unwrap(),
            bytes.len() as u64,
        )
    };
    store.set_names(&[(reference(name), top.clone())]).unwrap();
    TestImage {
        top,
        manifests,
        layers,
        blobs,
    }
}

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("running skopeo")
}

fn assert_ok(what: &str, out: &Output, reg: &Registry) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        reg.log()
    );
}

/// The digest of the manifest `image` names, as skopeo reads it from the registry.
fn skopeo_digest(reg: &Registry, authfile: Option<&Path>, image: &str) -> Digest {
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    let authfile = authfile.map(|p| p.to_string_lossy().into_owned());
    if let Some(a) = &authfile {
        args.extend(["--authfile", a]);
    }
    let target = format!("docker://{}/{image}", reg.addr);
    args.push(&target);
    let out = skopeo(&args);
    assert_ok("skopeo inspect --raw", &out, reg);
    Digest::of(&out.stdout)
}

/// Blob uploads (POST/PATCH/PUT on …/blobs/uploads/) among `requests`.
fn uploads(requests: &[Request]) -> Vec<&Request> {
    requests.iter().filter(|r| r.is_blob_upload()).collect()
}

/// Collects progress events.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Reporter for Recorder {
    fn event(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

impl Recorder {
    fn outcomes(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Finish { outcome, .. } => Some(outcome.clone()),
                _ => None,
            })
            .collect()
    }
}

fn new_store(dir: &Path, name: &str) -> Store {
    Store::open(&dir.join(name)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Pull
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pulls_one_platform_of_a_multi_arch_image_pushed_by_skopeo() {
    require!(Auth::None, skopeo);
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let src = new_store(tmp.path(), "src");
    let platforms = [Platform::amd64(), Platform::arm64(), Platform::armhf()];
    let image = make_image(&src, "localhost/fixture/multi:v1", &platforms, 4096, 1);
    let out = skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:localhost/fixture/multi:v1", src.root().display()),
        &format!("docker://{}/multi/img:v1", reg.addr),
    ]);
    assert_ok("skopeo copy --all", &out, &reg);
    assert_eq!(
        skopeo_digest(&reg, None, "multi/img:v1"),
        image.top.digest,
        "skopeo kept the index byte for byte"
    );

    let c = client(ClientOptions::default());
    let dst = new_store(tmp.path(), "dst");
    let name = reference(&format!("{}/multi/img:v1", reg.addr));
    let rec = Recorder::default();
    let before = reg.requests().len();
    let r = c
        .pull(&dst, &name, Some(&["linux/arm/v7".parse().unwrap()]), &rec)
        .await
        .unwrap();
    let arm = &image.manifests[2];
    assert_eq!(r.descriptor.digest, arm.digest, "{r:?}");
    assert_eq!(r.descriptor.platform, Some(Platform::armhf()));
    assert_eq!(r.source.digest, image.top.digest);
    assert_eq!((r.blobs_fetched, r.blobs_present), (3, 0), "{r:?}");
    assert_eq!(dst.get(&name).unwrap().descriptor.digest, arm.digest);
    dst.check_complete(&r.descriptor).unwrap();
    let amd64_arch = &image.layers["linux/amd64"][1];
    assert!(
        !dst.has_blob(amd64_arch),
        "another platform's layer was stored"
    );
    assert!(
        !dst.has_blob(&image.top.digest),
        "the name points at the manifest alone"
    );
    let requests = &reg.requests()[before..];
    assert!(
        !requests
            .iter()
            .any(|q| q.blob_digest() == Some(&amd64_arch.to_string())),
        "another platform's layer was fetched: {requests:?}"
    );
    assert_eq!(rec.outcomes(), ["done", "done", "done"]);
    let bytes: u64 = image.layers["linux/arm/v7"]
        .iter()
        .map(|d| dst.blob_path(d).metadata().unwrap().len())
        .sum();
    assert!(r.bytes_downloaded > bytes, "config + layers: {r:?}");

    // Again: everything is there, nothing is downloaded.
    let rec = Recorder::default();
    let again = c
        .pull(&dst, &name, Some(&[Platform::armhf()]), &rec)
        .await
        .unwrap();
    assert_eq!(
        (
            again.blobs_fetched,
            again.blobs_present,
            again.bytes_downloaded
        ),
        (0, 3, 0)
    );
    assert_eq!(rec.outcomes(), ["exists", "exists", "exists"]);

    // Two platforms: a new index listing just those.
    let two = reference(&format!("{}/multi/img:v1", reg.addr));
    let r = c
        .pull(
            &dst,
            &two,
            Some(&[Platform::amd64(), Platform::arm64()]),
            &Silent,
        )
        .await
        .unwrap();
    assert_eq!(r.descriptor.media_type, media::OCI_INDEX);
    let Document::Index(subset) = dst.read_document(&r.descriptor).unwrap() else {
        panic!("not an index")
    };
    let digests: Vec<_> = subset.manifests.iter().map(|m| m.digest.clone()).collect();
    assert_eq!(
        digests,
        [
            image.manifests[0].digest.clone(),
            image.manifests[1].digest.clone()
        ]
    );
    dst.check_complete(&r.descriptor).unwrap();

    // No platform: the whole index, byte for byte.
    let all = new_store(tmp.path(), "all");
    let r = c.pull(&all, &name, None, &Silent).await.unwrap();
    assert_eq!(r.descriptor, r.source);
    assert_eq!(r.descriptor.digest, image.top.digest);
    assert_eq!(r.blobs_fetched, image.blobs.len());
    all.check_complete(&r.descriptor).unwrap();

    // By digest: named repo@digest.
    let pinned = reference(&format!("{}/multi/img@{}", reg.addr, image.top.digest));
    let r = c
        .pull(&all, &pinned, Some(&[Platform::arm64()]), &Silent)
        .await
        .unwrap();
    assert_eq!(r.descriptor.digest, image.manifests[1].digest);
    assert_eq!(
        all.get(&pinned).unwrap().descriptor.digest,
        r.descriptor.digest
    );

    // A platform the image lacks, and a tag that does not exist.
    let e = c
        .pull(
            &dst,
            &name,
            Some(&["linux/arm/v6".parse().unwrap()]),
            &Silent,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NoSuchPlatform { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("(it has: linux/amd64, linux/arm64, linux/arm/v7)"),
        "{e}"
    );
    let missing = reference(&format!("{}/multi/img:nope", reg.addr));
    let e = c.pull(&dst, &missing, None, &Silent).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("multi/img:nope"), "{e}");
}

#[test]
fn pull_and_push_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "s");
    let c = client(ClientOptions::default());
    let r = reference("localhost:1/x:y");
    send(c.pull(&store, &r, None, &Silent));
    let d = Descriptor::new(media::OCI_MANIFEST, Digest::of(b""), 0);
    send(c.push(&store, &d, &r, &Silent));
}

// ---------------------------------------------------------------------------------------------
// Push
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pushes_what_skopeo_reads_back_and_a_second_push_uploads_nothing() {
    require!(Auth::None, skopeo);
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "store");
    let image = make_image(
        &store,
        "localhost/app:v1",
        &[Platform::arm64(), Platform::armhf()],
        100_000,
        2,
    );
    let c = client(ClientOptions::default());
    let dest = reference(&format!("{}/pushed/app:v1", reg.addr));
    let rec = Recorder::default();
    let r = c.push(&store, &image.top, &dest, &rec).await.unwrap();
    assert_eq!(r.blobs_uploaded, image.blobs.len(), "{r:?}");
    assert_eq!((r.blobs_existing, r.blobs_mounted), (0, 0));
    assert_eq!(r.manifests_pushed, 3, "two manifests and the index");
    assert!(r.bytes_uploaded > 100_000);
    assert_eq!(skopeo_digest(&reg, None, "pushed/app:v1"), image.top.digest);
    for m in &image.manifests {
        assert_eq!(
            skopeo_digest(&reg, None, &format!("pushed/app@{}", m.digest)),
            m.digest
        );
    }
    // skopeo verifies every blob it copies.
    let back = tmp.path().join("back");
    let out = skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/pushed/app:v1", reg.addr),
        &format!("oci:{}:v1", back.display()),
    ]);
    assert_ok("skopeo copy back", &out, &reg);
    for d in &image.blobs {
        assert!(back.join("blobs/sha256").join(d.hex()).is_file(), "{d}");
    }

    let before = reg.requests().len();
    let r = c.push(&store, &image.top, &dest, &Silent).await.unwrap();
    assert_eq!(
        (
            r.blobs_uploaded,
            r.blobs_existing,
            r.manifests_pushed,
            r.bytes_uploaded
        ),
        (0, image.blobs.len(), 0, 0),
        "{r:?}"
    );
    let second = &reg.requests()[before..];
    assert!(uploads(second).is_empty(), "{second:?}");
    assert!(
        second.iter().all(|q| q.method == "HEAD"),
        "a second push only checks: {second:?}"
    );
    assert!(
        rec.outcomes()
            .iter()
            .all(|o| o == "uploaded" || o == "done")
    );
}

#[tokio::test]
async fn chunked_uploads_follow_the_registry_and_round_trip() {
    require!(Auth::None, skopeo);
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "store");
    let image = make_image(&store, "localhost/big:v1", &[Platform::arm64()], 300_000, 3);
    let c = client(ClientOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    });
    let dest = reference(&format!("{}/chunked/big:v1", reg.addr));
    let r = c.push(&store, &image.top, &dest, &Silent).await.unwrap();
    assert_eq!(r.blobs_uploaded, 3);
    let requests = reg.requests();
    let patches: Vec<_> = requests
        .iter()
        .filter(|q| q.method == "PATCH" && q.status == 202)
        .collect();
    let base = image.layers["linux/arm64"][0].clone();
    let base_size = store.blob_path(&base).metadata().unwrap().len();
    assert_eq!(
        patches.len() as u64,
        base_size.div_ceil(64 << 10),
        "one PATCH per chunk of the big layer only: {requests:?}"
    );
    assert_eq!(
        skopeo_digest(&reg, None, "chunked/big:v1"),
        image.top.digest
    );

    // And back with dts into an empty store: the same bytes.
    let other = new_store(tmp.path(), "other");
    let r = c.pull(&other, &dest, None, &Silent).await.unwrap();
    assert_eq!(r.descriptor.digest, image.top.digest);
    assert_eq!(
        std::fs::read(other.blob_path(&base)).unwrap(),
        std::fs::read(store.blob_path(&base)).unwrap()
    );
}

#[tokio::test]
async fn a_second_repository_gets_blobs_by_cross_repository_mount() {
    require!(Auth::None);
    let reg = Registry::start(Auth::None);
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "store");
    let image = make_image(&store, "localhost/m:v1", &[Platform::armhf()], 50_000, 4);
    let c = client(ClientOptions::default());
    let one = reference(&format!("{}/team/one:v1", reg.addr));
    let two = reference(&format!("{}/team/two:v1", reg.addr));
    c.push(&store, &image.top, &one, &Silent).await.unwrap();

    let before = reg.requests().len();
    let rec = Recorder::default();
    let r = c.push(&store, &image.top, &two, &rec).await.unwrap();
    assert_eq!(
        (r.blobs_mounted, r.blobs_uploaded, r.bytes_uploaded),
        (3, 0, 0),
        "{r:?}"
    );
    let second = &reg.requests()[before..];
    let mounts: Vec<_> = second
        .iter()
        .filter(|q| {
            q.method == "POST" && q.uri.contains("mount=") && q.uri.contains("from=team%2Fone")
        })
        .collect();
    assert_eq!(mounts.len(), 3, "{second:?}");
    assert!(mounts.iter().all(|q| q.status == 201), "{mounts:?}");
    assert!(
        !second
            .iter()
            .any(|q| q.method == "PATCH"
                || (q.method == "PUT" && q.path.contains("/blobs/uploads/"))),
        "no bytes uploaded: {second:?}"
    );
    assert_eq!(rec.outcomes().iter().filter(|o| *o == "mounted").count(), 3);

    // A record naming a repository that lost the blob costs one refused mount, not a failure.
    let three = reference(&format!("{}/team/three:v1", reg.addr));
    let store2 = new_store(tmp.path(), "store2");
    let other = make_image(&store2, "localhost/m:v1", &[Platform::armhf()], 10_000, 5);
    std::fs::copy(
        store.root().join("registry-blobs.json"),
        store2.root().join("registry-blobs.json"),
    )
    .unwrap();
    let r = c.push(&store2, &other.top, &three, &Silent).await.unwrap();
    assert_eq!((r.blobs_mounted, r.blobs_uploaded), (0, 3), "{r:?}");
}

/// Where a [`CuttingProxy`] cuts its one connection.
#[derive(Clone, Copy)]
enum Cut {
    /// Once the connection has carried this many bytes towards the registry, mid-request
    /// (only uploads send that much): the registry sees part of a chunk.
    AfterBytes(u64),
    /// Instead of forwarding the n-th `PATCH` of a connection: the registry sees none of it.
    AtPatch(u32),
}

/// A TCP proxy to `upstream` that cuts one connection, once.
struct CuttingProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream: &str, how: Cut) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let flag = cut.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    break;
                };
                let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let flag = flag.clone();
                // Towards the registry: count, and cut.
                thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    let (mut bytes, mut patches) = (0u64, 0u32);
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        bytes += n as u64;
                        if buf[..n].starts_with(b"PATCH ") {
                            patches += 1;
                        }
                        let now = match how {
                            Cut::AfterBytes(limit) => bytes > limit,
                            Cut::AtPatch(nth) => patches == nth,
                        };
                        if now && !flag.swap(true, Ordering::SeqCst) {
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            break;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                // Back to the client.
                let (mut from, mut to) = (server, client);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        CuttingProxy { addr, cut }
    }
}

/// Pushes a one-platform image with a 600 kB layer in 128 KiB chunks through a proxy that
/// cuts as told; returns the notes the push reported. skopeo checks the result.
async fn push_through_cut(how: Cut) -> Vec<String> {
    let reg = Registry::start(Auth::None);
    let proxy = CuttingProxy::start(&reg.addr, how);
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "store");
    let image = make_image(&store, "localhost/cut:v1", &[Platform::arm64()], 600_000, 6);
    let c = client(ClientOptions {
        chunk_size: 128 << 10,
        ..Default::default()
    });
    let dest = reference(&format!("{}/cut/img:v1", proxy.addr));
    let rec = Recorder::default();
    let r = match c.push(&store, &image.top, &dest, &rec).await {
        Ok(r) => r,
        Err(e) => panic!("{e}\n{}", reg.log()),
    };
    assert!(proxy.cut.load(Ordering::SeqCst), "the proxy never cut");
    assert_eq!(r.blobs_uploaded, 3, "{r:?}");
    assert_eq!(skopeo_digest(&reg, None, "cut/img:v1"), image.top.digest);
    let notes: Vec<String> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Note { message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    let requests = reg.requests();
    assert!(
        requests
            .iter()
            .any(|q| q.method == "GET" && q.path.contains("/blobs/uploads/")),
        "the client asked where the upload stood: {requests:?}"
    );
    notes
}

#[tokio::test]
async fn an_upload_cut_between_chunks_resumes_where_the_registry_stands() {
    require!(Auth::None, skopeo);
    let notes = push_through_cut(Cut::AtPatch(2)).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    // Which PATCH is cut depends on how the pool spreads requests over connections; the
    // registry kept every whole chunk before it, and the upload goes on from there.
    let at: u64 = notes[0]
        .strip_prefix("upload of ")
        .and_then(|n| n.split_once(" broke; resuming at byte "))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("{notes:?}"));
    assert!(at > 0 && at.is_multiple_of(128 << 10), "{notes:?}");
}

#[tokio::test]
async fn an_upload_cut_mid_chunk_still_completes() {
    require!(Auth::None, skopeo);
    // distribution keeps the half chunk, then refuses the session: the client starts again.
    let notes = push_through_cut(Cut::AfterBytes(200_000)).await;
    assert!(
        notes.iter().any(|n| n.contains("broke"))
            && notes.iter().any(|n| n.contains("starting it again")),
        "{notes:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------------

/// Push and pull with credentials from a docker config; then a wrong password and none.
async fn auth_round_trip(auth: Auth) -> (Registry, tempfile::TempDir) {
    let reg = Registry::start(auth);
    let tmp = tempfile::tempdir().unwrap();
    let config = reg.docker_config(&tmp.path().join("docker"));
    let store = new_store(tmp.path(), "store");
    let image = make_image(&store, "localhost/auth:v1", &[Platform::amd64()], 1000, 7);
    let c = client_with(&config);
    let dest = reference(&format!("{}/private/img:v1", reg.addr));
    let r = c.push(&store, &image.top, &dest, &Silent).await.unwrap();
    assert_eq!(r.blobs_uploaded, 3);
    let mirror = reference(&format!("{}/private/mirror:v1", reg.addr));
    let r = c.push(&store, &image.top, &mirror, &Silent).await.unwrap();
    assert_eq!(r.blobs_mounted, 3, "mounts work with auth too: {r:?}");
    let other = new_store(tmp.path(), "other");
    let r = c.pull(&other, &dest, None, &Silent).await.unwrap();
    assert_eq!(r.descriptor.digest, image.top.digest);

    let wrong = reg.docker_config_with(&tmp.path().join("wrong"), "alice", "not-the-password");
    let e = client_with(&wrong)
        .pull(&other, &dest, None, &Silent)
        .await
        .unwrap_err();
    match &e {
        RegistryError::Unauthorized {
            registry, rejected, ..
        } => {
            assert_eq!(registry, &reg.addr);
            assert!(rejected, "{e}");
        }
        _ => panic!("not Unauthorized: {e}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&reg.addr) && msg.contains("rejected") && msg.contains("alice"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password"), "{msg}");

    let e = client_with(&tmp.path().join("no-such-config.json"))
        .push(&store, &image.top, &dest, &Silent)
        .await
        .unwrap_err();
    match &e {
        RegistryError::Unauthorized { rejected, .. } => assert!(!rejected, "{e}"),
        _ => panic!("not Unauthorized: {e}"),
    }
    assert!(e.to_string().contains("docker login"), "{e}");
    (reg, tmp)
}

#[tokio::test]
async fn basic_auth_with_credentials_from_docker_config() {
    require!(Auth::basic("alice", "s3cret"));
    let (reg, _tmp) = auth_round_trip(Auth::basic("alice", "s3cret")).await;
    assert!(reg.token_requests().is_empty());
}

#[tokio::test]
async fn token_auth_with_credentials_from_docker_config() {
    require!(Auth::token("alice", "s3cret"));
    let (reg, tmp) = auth_round_trip(Auth::token("alice", "s3cret")).await;
    let tokens = reg.token_requests();
    assert!(
        tokens.iter().any(|t| t.status == 200
            && t.user.as_deref() == Some("alice")
            && t.scopes == ["repository:private/img:pull,push"]),
        "{tokens:?}"
    );
    assert!(
        tokens.iter().any(|t| t.status == 200
            && t.scopes
                .contains(&"repository:private/mirror:pull,push".to_string())
            && t.scopes
                .contains(&"repository:private/img:pull".to_string())),
        "{tokens:?}"
    );
    // One token per scope set per client, not one per request: push to img, push to mirror,
    // the mounts (mirror + pull on img), pull from img.
    let issued = tokens.iter().filter(|t| t.status == 200).count();
    assert_eq!(issued, 4, "{tokens:?}");

    // A credential helper named in the config but not installed: a note, then the auths entry.
    let config = tmp.path().join("helper/config.json");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        serde_json::to_vec(&serde_json::json!({
            "credsStore": "dts-test-missing",
        }))
        .unwrap(),
    )
    .unwrap();
    let store = new_store(tmp.path(), "helper-store");
    let e = client_with(&config)
        .pull(
            &store,
            &reference(&format!("{}/private/img:v1", reg.addr)),
            None,
            &Silent,
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("docker-credential-dts-test-missing, which is not installed"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Lying registries
// ---------------------------------------------------------------------------------------------

/// A route of [`serve`] whose first answer breaks off halfway (the connection closes with half
/// the promised body); later requests get `Range`s honoured.
const BREAK_ONCE: &str = "X-Test-Break-Once";

/// What [`serve`] answers: path → (headers, body).
type Routes = BTreeMap<String, (Vec<(String, String)>, Vec<u8>)>;

/// A tiny HTTP server answering GETs from a fixed table (path → headers, body). Returns its
/// address and a log of the requests (`GET /path range=<start>`).
fn serve(routes: Routes) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Arc::new(routes);
    let log = Arc::new(Mutex::new(Vec::new()));
    let broke = Arc::new(AtomicBool::new(false));
    let server_log = log.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let (routes, log, broke) = (routes.clone(), server_log.clone(), broke.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut range: Option<usize> = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("range")
                    {
                        range = v
                            .trim()
                            .strip_prefix("bytes=")
                            .and_then(|v| v.trim_end_matches('-').parse().ok());
                    }
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let path = target.split('?').next().unwrap().to_string();
                log.lock()
                    .unwrap()
                    .push(format!("GET {path} range={range:?}"));
                let (mut status, mut headers, mut body) = match routes.get(&path) {
                    Some((h, b)) => ("200 OK", h.clone(), b.clone()),
                    None => (
                        "404 Not Found",
                        vec![],
                        br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec(),
                    ),
                };
                let break_once = headers.iter().any(|(k, _)| k == BREAK_ONCE);
                if let (Some(start), "200 OK") = (range, status) {
                    headers.push((
                        "Content-Range".into(),
                        format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
                    ));
                    body = body[start..].to_vec();
                    status = "206 Partial Content";
                }
                let mut head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = conn.write_all(head.as_bytes());
                if break_once && range.is_none() && !broke.swap(true, Ordering::SeqCst) {
                    let _ = conn.write_all(&body[..body.len() / 2]);
                    let _ = conn.flush();
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
                let _ = conn.write_all(&body);
                let _ = conn.flush();
            });
        }
    });
    (addr, log)
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_never_reaches_the_store() {
    let good_layer = layer_tar(&[("etc/good", b"good")]);
    let mut evil_layer = good_layer.clone();
    let last = evil_layer.len() - 1;
    evil_layer[100] ^= 0xff;
    evil_layer[last] ^= 0x01;
    let config = ImageConfig {
        architecture: "arm64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![Digest::of(&good_layer)],
        },
        ..Default::default()
    }
    .to_canonical_json();
    let manifest = canonical(&Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(media::OCI_CONFIG, Digest::of(&config), config.len() as u64),
        layers: vec![Descriptor::new(
            media::OCI_LAYER,
            Digest::of(&good_layer),
            good_layer.len() as u64,
        )],
        subject: None,
        annotations: BTreeMap::new(),
    });
    let manifest_type = vec![("Content-Type".to_string(), media::OCI_MANIFEST.to_string())];
    let mut routes = BTreeMap::new();
    routes.insert(
        "/v2/bad/layer/manifests/v1".to_string(),
        (manifest_type.clone(), manifest.clone()),
    );
    routes.insert(
        format!("/v2/bad/layer/blobs/{}", Digest::of(&config)),
        (vec![], config.clone()),
    );
    routes.insert(
        format!("/v2/bad/layer/blobs/{}", Digest::of(&good_layer)),
        (vec![], evil_layer.clone()),
    );
    let mut lying = manifest_type.clone();
    lying.push((
        "Docker-Content-Digest".into(),
        Digest::of(b"something else").to_string(),
    ));
    routes.insert(
        "/v2/bad/header/manifests/v1".to_string(),
        (lying, manifest.clone()),
    );
    let pinned_digest = Digest::of(b"pinned");
    routes.insert(
        format!("/v2/bad/layer/manifests/{pinned_digest}"),
        (manifest_type.clone(), manifest.clone()),
    );
    let (addr, _) = serve(routes);

    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "store");
    let c = client(ClientOptions::default());
    let name = reference(&format!("{addr}/bad/layer:v1"));
    let e = c.pull(&store, &name, None, &Silent).await.unwrap_err();
    match &e {
        RegistryError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &Digest::of(&good_layer));
            assert_eq!(actual, &Digest::of(&evil_layer));
        }
        _ => panic!("not DigestMismatch: {e}"),
    }
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    assert!(!store.has_blob(&Digest::of(&good_layer)));
    assert!(!store.has_blob(&Digest::of(&evil_layer)));
    assert!(store.get(&name).is_err(), "no name for a failed pull");
    assert_eq!(
        std::fs::read_dir(store.root().join("ingest"))
            .unwrap()
            .count(),
        0,
        "no temp file left"
    );

    // A manifest whose bytes are not the digest it was pinned to, or the registry claims.
    let pinned = reference(&format!("{addr}/bad/layer@{pinned_digest}"));
    let e = c.pull(&store, &pinned, None, &Silent).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    let e = c
        .pull(
            &store,
            &reference(&format!("{addr}/bad/header:v1")),
            None,
            &Silent,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert!(!store.has_blob(&Digest::of(&manifest)));
}

#[tokio::test]
async fn a_download_that_breaks_off_resumes_with_a_range_request() {
    let layer = gzip(&layer_tar(&[("big", &noise(300_000, 9))]));
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    }
    .to_canonical_json();
    let manifest = canonical(&Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(media::OCI_CONFIG, Digest::of(&config), config.len() as u64),
        layers: vec![Descriptor::new(
            media::OCI_LAYER_GZIP,
            Digest::of(&layer),
            layer.len() as u64,
        )],
        subject: None,
        annotations: BTreeMap::new(),
    });
    let mut routes = BTreeMap::new();
    routes.insert(
        "/v2/flaky/img/manifests/v1".to_string(),
        (
            vec![("Content-Type".into(), media::OCI_MANIFEST.into())],
            manifest,
        ),
    );
    routes.insert(
        format!("/v2/flaky/img/blobs/{}", Digest::of(&config)),
        (vec![], config),
    );
    let layer_path = format!("/v2/flaky/img/blobs/{}", Digest::of(&layer));
    routes.insert(
        layer_path.clone(),
        (vec![(BREAK_ONCE.into(), "1".into())], layer.clone()),
    );
    let (addr, log) = serve(routes);
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "store");
    let rec = Recorder::default();
    let r = client(ClientOptions::default())
        .pull(
            &store,
            &reference(&format!("{addr}/flaky/img:v1")),
            Some(&[Platform::amd64()]),
            &rec,
        )
        .await
        .unwrap();
    assert_eq!(r.blobs_fetched, 2);
    assert_eq!(
        std::fs::read(store.blob_path(&Digest::of(&layer))).unwrap(),
        layer
    );
    let log = log.lock().unwrap().clone();
    let half = layer.len() / 2;
    assert!(
        log.contains(&format!("GET {layer_path} range=Some({half})")),
        "{log:?}"
    );
    assert!(
        rec.0
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Note { message } if message.contains("resuming"))),
        "a note says so"
    );
}

// ---------------------------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn https_to_a_plain_http_registry_suggests_insecure() {
    require!(Auth::None);
    let reg = Registry::start(Auth::None);
    let addr: SocketAddr = reg.addr.parse().unwrap();
    let resolve = vec![("registry.test".to_string(), addr)];
    let name = reference(&format!("registry.test:{}/lab/img:v1", addr.port()));
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path(), "store");

    let c = client(ClientOptions {
        resolve: resolve.clone(),
        ..Default::default()
    });
    let e = c.pull(&store, &name, None, &Silent).await.unwrap_err();
    match &e {
        RegistryError::Transport { hint, url, .. } => {
            assert!(url.starts_with("https://registry.test:"), "{e}");
            assert!(hint.as_deref().unwrap_or("").contains("--insecure"), "{e}");
        }
        _ => panic!("not Transport: {e}"),
    }

    let c = client(ClientOptions {
        insecure: true,
        resolve,
        ..Default::default()
    });
    let e = c.pull(&store, &name, None, &Silent).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::NotFound { .. }),
        "plain HTTP works: {e}"
    );

    // Nobody listening: a Transport error naming the registry.
    drop(reg);
    let gone = reference(&format!("{addr}/lab/img:v1"));
    let e = client(ClientOptions::default())
        .pull(&store, &gone, None, &Silent)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Transport { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}
