//! The robot's object store through the `dt-agent` binary: `image import` of docker-archives
//! and OCI archives built here, `image ls`/`rm`, `fsck`, `gc`, `status`; an attack corpus of
//! hostile archives and layers (refused, the canary and the store unchanged); SIGKILL during
//! imports; dedup across images; a full disk; corrupted and missing objects.
//!
//! Every store lives under a temp dir (`DT_AGENT_ROOT`); the disk-full test mounts a small
//! tmpfs (root only, unmounted by a guard) and skips with a `SKIP:` line otherwise.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::hostile::{self, E, Expect};
use crate::support::images::{Entry, Layout, base_layer, gzip, layer_tar};
use dts::oci::json::canonical;
use dts::oci::{Descriptor, Digest, ImageConfig, Manifest, Platform, media};

const NAME: &str = "example.com/duckietown/dt-agent-test:v1";

fn agent(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(args)
        .env("DT_AGENT_ROOT", root)
        .output()
        .expect("run dt-agent")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "dt-agent failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("stdout is one JSON document")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn import(root: &Path, archive: &Path) -> Output {
    agent(root, &["image", "import", p(archive)])
}

/// Tars a directory (an OCI layout) into `dst`.
fn tar_dir(src: &Path, dst: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(dst).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", src).unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

/// An OCI archive of one image (this host's platform) named `name`, from uncompressed layers.
fn oci_archive(dir: &Path, file: &str, name: &str, layers: &[Vec<u8>]) -> PathBuf {
    let layout = dir.join(format!("{file}.layout"));
    let l = Layout::new(&layout);
    let w = l.image(&Platform::host(), layers, &["/bin/sh"]);
    l.finish(&[(name, w.manifest)]);
    let out = dir.join(file);
    tar_dir(&layout, &out);
    std::fs::remove_dir_all(&layout).unwrap();
    out
}

/// A docker-archive (`docker save` layout) of one image, layers stored uncompressed.
fn docker_archive(dir: &Path, file: &str, name: &str, layers: &[Vec<u8>]) -> PathBuf {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    docker_archive_claiming(dir, file, name, layers, &diff_ids)
}

/// [`docker_archive`] whose config claims `diff_ids`.
fn docker_archive_claiming(
    dir: &Path,
    file: &str,
    name: &str,
    layers: &[Vec<u8>],
    diff_ids: &[Digest],
) -> PathBuf {
    let config = ImageConfig {
        architecture: Platform::host().architecture,
        os: "linux".into(),
        rootfs: dts::oci::config::RootFs {
            kind: "layers".into(),
            diff_ids: diff_ids.to_vec(),
        },
        ..Default::default()
    };
    let cbytes = config.to_canonical_json();
    let cname = format!("{}.json", Digest::of(&cbytes).hex());
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    add(&cname, &cbytes);
    let mut paths = Vec::new();
    for l in layers {
        let path = format!("{}/layer.tar", Digest::of(l).hex());
        add(&path, l);
        paths.push(path);
    }
    let manifest = serde_json::json!([{"Config": cname, "RepoTags": [name], "Layers": paths}]);
    add("manifest.json", manifest.to_string().as_bytes());
    let out = dir.join(file);
    std::fs::write(&out, b.into_inner().unwrap()).unwrap();
    out
}

/// Every file and directory under the store with kind, mode and content hash; lock files
/// (opened, never written) excepted.
fn store_state(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let mode = m.mode() & 0o7777;
            if m.is_dir() {
                out.insert(format!("{rel}/"), format!("d {mode:o}"));
                stack.push(path);
            } else if m.file_type().is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("l {}", t.display()));
            } else if !rel.ends_with("lock") {
                let data = std::fs::read(&path).unwrap();
                out.insert(rel, format!("f {mode:o} {}", Digest::of(&data)));
            }
        }
    }
    out
}

/// Disk use of a tree as `du` counts it: allocated blocks, each inode once.
fn du(root: &Path) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    total
}

fn ls(root: &Path) -> Vec<serde_json::Value> {
    json(&agent(root, &["image", "ls", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn rootfs(root: &Path, name: &str) -> PathBuf {
    let images = ls(root);
    let img = images
        .iter()
        .find(|i| i["name"] == name || NAME.ends_with(i["name"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{name} not in {images:?}"));
    root.join("snapshots")
        .join(
            img["chain_id"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        )
        .join("rootfs")
}

#[track_caller]
fn fsck_clean(root: &Path) {
    let out = agent(root, &["fsck"]);
    assert!(
        out.status.success(),
        "fsck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// Objects: (file name, nlink) for every object.
fn objects(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root.join("objects/sha256")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            out.push((
                f.file_name().to_string_lossy().into_owned(),
                f.metadata().unwrap().nlink(),
            ));
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Import, ls, status, rm

#[test]
fn imports_oci_and_docker_archives_as_a_hardlink_farm() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let top = layer_tar(&[
        Entry::Dir("app/", 0o755),
        Entry::File("app/run.sh", 0o4755, b"#!/bin/sh\necho run\n".to_vec()),
        // Same bytes, three modes: two objects, and `same-a`/`same-c` share one inode.
        Entry::File("app/same-a", 0o644, b"same bytes".to_vec()),
        Entry::File("app/same-b", 0o755, b"same bytes".to_vec()),
        Entry::File("app/same-c", 0o644, b"same bytes".to_vec()),
    ]);
    let oci = oci_archive(t.path(), "a.tar", NAME, &[base_layer(), top.clone()]);
    let out = agent(&root, &["image", "import", p(&oci), "--json"]);
    let r = json(&out);
    assert_eq!(r["format"], "oci-archive");
    assert_eq!(r["layers_added"], 2);
    assert_eq!(r["snapshots_added"], 1);
    let images = ls(&root);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["name"], "example.com/duckietown/dt-agent-test:v1");
    assert_eq!(images[0]["platform"], Platform::host().to_string());
    assert_eq!(
        images[0]["size"].as_u64().unwrap(),
        (base_layer().len() + top.len()) as u64
    );

    let fs = rootfs(&root, NAME);
    let meta = |rel: &str| std::fs::symlink_metadata(fs.join(rel)).unwrap();
    // Absolute and relative symlinks kept verbatim; the internal hardlink shares the inode.
    assert_eq!(
        std::fs::read_link(fs.join("lib")).unwrap(),
        Path::new("/usr/lib")
    );
    assert_eq!(
        std::fs::read_link(fs.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(meta("usr/bin/tool").ino(), meta("usr/bin/tool-link").ino());
    assert_eq!(
        std::fs::read(fs.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    // Every regular file is an object: one link in objects/, the others in the snapshot.
    assert_eq!(meta("usr/bin/tool").nlink(), 3);
    assert_eq!(meta("etc/os-release").nlink(), 2);
    assert_eq!(meta("app/run.sh").mode() & 0o7777, 0o4755);
    assert_eq!(meta("app/same-a").mode() & 0o7777, 0o644);
    assert_eq!(meta("app/same-b").mode() & 0o7777, 0o755);
    assert_eq!(meta("app/same-a").ino(), meta("app/same-c").ino());
    assert_ne!(meta("app/same-a").ino(), meta("app/same-b").ino());
    let same = Digest::of(b"same bytes");
    // Objects carry the layer's owner (root here), or the agent's own when it cannot chown.
    let owner = if support::is_root() {
        "0.0".to_string()
    } else {
        format!(
            "{}.{}",
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw()
        )
    };
    let variants: Vec<_> = objects(&root)
        .into_iter()
        .filter(|(n, _)| n.starts_with(same.hex()))
        .collect();
    assert_eq!(variants.len(), 2, "{variants:?}");
    assert!(
        variants
            .iter()
            .any(|(n, l)| n.ends_with(&format!(".0644.{owner}")) && *l == 3),
        "{variants:?}"
    );
    assert!(
        variants
            .iter()
            .any(|(n, l)| n.ends_with(&format!(".0755.{owner}")) && *l == 2),
        "{variants:?}"
    );
    // Objects are kept in a directory only the agent reads.
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
    fsck_clean(&root);

    // Importing again adds nothing; the same image from a docker-archive shares every layer.
    let r = json(&agent(&root, &["image", "import", p(&oci), "--json"]));
    assert_eq!(
        (r["layers_added"].as_u64(), r["objects_added"].as_u64()),
        (Some(0), Some(0))
    );
    let docker = docker_archive(
        t.path(),
        "d.tar",
        "duckietown/other:v2",
        &[base_layer(), top],
    );
    let r = json(&agent(&root, &["image", "import", p(&docker), "--json"]));
    assert_eq!(r["format"], "docker-archive");
    assert_eq!(r["layers_added"], 0);
    assert_eq!(r["objects_added"], 0);
    assert_eq!(ls(&root).len(), 2);

    // status --json
    let s = json(&agent(&root, &["status", "--json"]));
    for k in ["hostname", "arch", "agent_version", "free_bytes", "images"] {
        assert!(!s[k].is_null(), "status lacks {k}: {s}");
    }
    assert!(s["release"].is_null(), "no release deployed: {s}");
    if support::find_cmd("runc").is_some() {
        assert!(
            s["runtime"].as_str().is_some_and(|r| r.ends_with("runc")),
            "{s}"
        );
        assert!(
            s["runtime_version"]
                .as_str()
                .is_some_and(|v| v.contains("runc")),
            "{s}"
        );
    }
    assert_eq!(s["images"].as_array().unwrap().len(), 2);

    // rm drops a name; gc then keeps what the other name uses.
    ok(&agent(&root, &["image", "rm", "duckietown/other:v2"]));
    let e = agent(&root, &["image", "rm", "duckietown/other:v2"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(stderr(&e).contains("no image named"), "{}", stderr(&e));
    let before = objects(&root).len();
    ok(&agent(&root, &["gc"]));
    assert_eq!(
        objects(&root).len(),
        before,
        "the remaining image needs every object"
    );
    fsck_clean(&root);
    ok(&agent(&root, &["image", "rm", NAME]));
    let g = json(&agent(&root, &["gc", "--json"]));
    assert_eq!(g["snapshots_removed"], 1);
    assert!(objects(&root).is_empty());
    assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(root.join("images/sha256"))
            .unwrap()
            .count(),
        0
    );
    fsck_clean(&root);
}

// ---------------------------------------------------------------------------------------------
// (a) Attack corpus through `dt-agent image import`

/// An OCI archive written by hand: `layers` are (media type, blob bytes), `diff_ids` what the
/// config claims; `tamper` edits the layout before it is tarred.
fn custom_oci(
    dir: &Path,
    file: &str,
    layers: &[(&str, Vec<u8>)],
    diff_ids: &[Digest],
    tamper: impl Fn(&Path),
) -> PathBuf {
    let layout = dir.join(format!("{file}.layout"));
    let l = Layout::new(&layout);
    let descs: Vec<Descriptor> = layers.iter().map(|(m, b)| l.blob(m, b)).collect();
    let config = ImageConfig {
        architecture: Platform::host().architecture,
        os: "linux".into(),
        rootfs: dts::oci::config::RootFs {
            kind: "layers".into(),
            diff_ids: diff_ids.to_vec(),
        },
        ..Default::default()
    };
    let cdesc = l.blob(media::OCI_CONFIG, &config.to_canonical_json());
    let m = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: cdesc,
        layers: descs,
        subject: None,
        annotations: BTreeMap::new(),
    };
    let mdesc = l.blob(media::OCI_MANIFEST, &canonical(&m));
    l.finish(&[(NAME, mdesc)]);
    tamper(&layout);
    let out = dir.join(file);
    tar_dir(&layout, &out);
    std::fs::remove_dir_all(&layout).unwrap();
    out
}

/// A tar whose single entry is named as given (the `tar` crate refuses `..`).
fn raw_outer_tar(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = hostile::raw_header(name, b'0', data.len() as u64, b"", 0o644, (0, 0)).to_vec();
    out.extend(data);
    hostile::pad_to_block(&mut out);
    out.extend([0u8; 1024]);
    out
}

#[test]
fn hostile_archives_and_layers_are_refused_and_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let canary = t.path().join("canary");
    hostile::make_canary(&canary);
    let canary_before = store_state(&canary);
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // An image the store already holds, which every refused import must leave alone.
    let base = oci_archive(&work, "base.tar", "duckietown/base:v1", &[base_layer()]);
    ok(&import(&root, &base));

    let mut archives: Vec<(String, PathBuf)> = Vec::new();
    let mut contained = Vec::new();
    for (i, case) in hostile::corpus(&canary).into_iter().enumerate() {
        let default_opts =
            format!("{:?}", case.opts) == format!("{:?}", dts::layer::UnpackOptions::default());
        if !default_opts {
            continue; // the agent's policy is fixed; those limits are tested in tests/it/layer.rs
        }
        let a = oci_archive(&work, &format!("case-{i}.tar"), NAME, &case.layers);
        match case.expect {
            Expect::Refused => archives.push((case.name.to_string(), a)),
            Expect::Contained => contained.push((case, a)),
        }
    }
    let good = layer_tar(&[Entry::File("ok", 0o644, b"fine".to_vec())]);
    let good_gz = gzip(&good);
    let gz = media::OCI_LAYER_GZIP;
    let mut archive = |name: &str, a: PathBuf| archives.push((name.to_string(), a));
    archive(
        "config diff_id does not match the layer",
        custom_oci(
            &work,
            "a1.tar",
            &[(gz, good_gz.clone())],
            &[Digest::of(b"other")],
            |_| {},
        ),
    );
    archive(
        "layer blob altered after its digest was taken",
        custom_oci(
            &work,
            "a2.tar",
            &[(gz, good_gz.clone())],
            &[Digest::of(&good)],
            |l| {
                let blob = l.join("blobs/sha256").join(Digest::of(&good_gz).hex());
                std::fs::write(blob, gzip(b"something else")).unwrap();
            },
        ),
    );
    archive(
        "layer blob missing",
        custom_oci(
            &work,
            "a3.tar",
            &[(gz, good_gz.clone())],
            &[Digest::of(&good)],
            |l| {
                std::fs::remove_file(l.join("blobs/sha256").join(Digest::of(&good_gz).hex()))
                    .unwrap();
            },
        ),
    );
    archive(
        "more diff_ids than layers",
        custom_oci(
            &work,
            "a4.tar",
            &[(gz, good_gz.clone())],
            &[Digest::of(&good), Digest::of(&good)],
            |_| {},
        ),
    );
    let not_tar = vec![b'x'; 3000];
    archive(
        "a layer that is not a tar",
        custom_oci(
            &work,
            "a5.tar",
            &[(gz, gzip(&not_tar))],
            &[Digest::of(&not_tar)],
            |_| {},
        ),
    );
    archive(
        "a gzip layer that does not decompress",
        custom_oci(
            &work,
            "a6.tar",
            &[(gz, vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6])],
            &[Digest::of(&good)],
            |_| {},
        ),
    );
    let outer = work.join("a7.tar");
    std::fs::write(&outer, raw_outer_tar(b"../escaped-from-the-archive", b"x")).unwrap();
    archive("an archive entry named ../x", outer);
    let c = canary.as_os_str().to_str().unwrap().to_string();
    archive(
        "hardlink through a symlink made by the layer below",
        oci_archive(
            &work,
            "c1.tar",
            NAME,
            &[
                hostile::tar(&[E::symlink("evil", &c)]),
                hostile::tar(&[E::hardlink("x", "evil/file")]),
            ],
        ),
    );
    archive(
        "a benign base, then a layer climbing out",
        oci_archive(
            &work,
            "c2.tar",
            NAME,
            &[
                base_layer(),
                hostile::tar(&[E::file("../../canary/pwned", b"x")]),
            ],
        ),
    );
    archive(
        "a benign base, then a huge file",
        oci_archive(
            &work,
            "c3.tar",
            NAME,
            &[
                base_layer(),
                hostile::tar(&[E::file("big", b"").declared(1 << 40)]),
            ],
        ),
    );
    assert!(archives.len() >= 25, "{} hostile archives", archives.len());

    let before = store_state(&root);
    for (name, a) in &archives {
        let out = import(&root, a);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: expected a refusal (exit 2), got {:?}: {err}",
            out.status.code()
        );
        assert!(
            err.contains('`'),
            "{name}: the error names what it is about: {err}"
        );
        // Nothing published: no name, snapshot or document, no staging left. Layers that
        // checked out before the refusal may have been committed (an import commits each layer
        // as it streams by); they are garbage, and gc brings the store back exactly.
        let published = |s: &BTreeMap<String, String>| -> Vec<(String, String)> {
            s.iter()
                .filter(|(k, _)| {
                    *k == "refs.json"
                        || ["snapshots/", "images/", "tmp/"]
                            .iter()
                            .any(|p| k.starts_with(p))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_eq!(
            published(&store_state(&root)),
            published(&before),
            "{name}: something was published"
        );
        ok(&agent(&root, &["gc"]));
        assert_eq!(store_state(&root), before, "{name}: the store changed");
        assert_eq!(
            store_state(&canary),
            canary_before,
            "{name}: the canary changed"
        );
    }
    fsck_clean(&root);
    assert_eq!(ls(&root).len(), 1);
    let fs = rootfs(&root, "duckietown/base:v1");
    assert_eq!(
        std::fs::read(fs.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );

    // The contained cases import, stay inside their snapshot, and leave the canary alone.
    assert!(contained.len() >= 10);
    for (i, (case, a)) in contained.iter().enumerate() {
        let name = format!("example.com/contained/case{i}:v1");
        let out = agent(&root, &["image", "import", "-t", &name, p(a)]);
        ok(&out);
        if let Some(check) = &case.check {
            check(&rootfs(&root, &name), &canary);
        }
        assert_eq!(
            store_state(&canary),
            canary_before,
            "{}: the canary changed",
            case.name
        );
    }
    fsck_clean(&root);
    eprintln!(
        "attack corpus: {} hostile archives refused, {} contained cases imported",
        archives.len(),
        contained.len()
    );
}

// ---------------------------------------------------------------------------------------------
// (b) SIGKILL during import

/// xorshift64*: reproducible bytes and delays without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8))
            .flat_map(|_| self.next().to_le_bytes())
            .take(n)
            .collect()
    }
}

/// A layer of `count` files of `size` random bytes under `dir/`.
fn random_layer(rng: &mut Rng, dir: &'static str, count: usize, size: usize) -> Vec<u8> {
    let mut entries = vec![Entry::Dir(dir, 0o755)];
    for i in 0..count {
        let name: &'static str = Box::leak(format!("{dir}f{i:04}").into_boxed_str());
        entries.push(Entry::File(name, 0o644, rng.bytes(size)));
    }
    layer_tar(&entries)
}

#[test]
fn sigkill_at_any_point_of_an_import_leaves_a_clean_store() {
    let t = tempfile::tempdir().unwrap();
    // SIGKILL does not lose the page cache, so the file system does not change what a kill
    // can leave behind. As root the store lives on a tmpfs: on a shared build machine every
    // syncfs also flushes everyone else's writes, and 50 rounds must fit the time budget.
    let mnt = t.path().join("mnt");
    let _tmpfs = if support::is_root() {
        support::Tmpfs::mount(&mnt, "256m")
    } else {
        None
    };
    let root = mnt.join("store");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let layers = vec![
        base_layer(),
        random_layer(&mut rng, "a/", 100, 2 << 10),
        random_layer(&mut rng, "b/", 40, 4 << 10),
        random_layer(&mut rng, "c/", 2, 64 << 10),
    ];
    let archive = oci_archive(t.path(), "big.tar", NAME, &layers);
    // How long a whole import takes here (warm, the fastest of three), to spread the kills
    // over it.
    let mut full = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        ok(&import(&root, &archive));
        full = full.min(start.elapsed());
        fsck_clean(&root);
        ok(&agent(&root, &["image", "rm", NAME]));
        ok(&agent(&root, &["gc"]));
    }
    let budget = Instant::now() + Duration::from_secs(70);
    let (mut kills, mut finished_first) = (0, 0);
    let mut partial_states = std::collections::BTreeSet::new();
    let count = |dir: &str| {
        let d = root.join(dir);
        std::fs::read_dir(&d).map_or(0, |r| {
            r.map(|e| {
                let p = e.unwrap().path();
                if dir == "objects/sha256" {
                    std::fs::read_dir(p).unwrap().count()
                } else {
                    1
                }
            })
            .sum()
        })
    };
    while kills < 50 || (Instant::now() < budget && kills < 60) {
        assert!(
            Instant::now() < budget + Duration::from_secs(80),
            "crash test too slow: {kills} kills so far"
        );
        // Half the kills anywhere, half in the last third, where the commit renames happen.
        let us = full.as_micros() as u64 + 1;
        let delay = Duration::from_micros(if kills % 2 == 0 {
            rng.next() % us
        } else {
            us * 2 / 3 + rng.next() % (us / 2)
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_dt-agent"))
            .args(["image", "import", p(&archive)])
            .env("DT_AGENT_ROOT", &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let t0 = Instant::now();
        if status.success() {
            finished_first += 1;
        } else {
            kills += 1;
        }
        // What the kill left under final names, to show the kills hit different points.
        partial_states.insert((
            count("objects/sha256"),
            count("layers"),
            count("snapshots"),
            count("images/sha256"),
            std::fs::read_to_string(root.join("refs.json")).is_ok_and(|r| r.contains(NAME)),
        ));
        // fsck: no zero-length or unverified object under a final name, every layer rebuilds.
        fsck_clean(&root);
        // The next import succeeds and gives the complete image.
        let start = Instant::now();
        ok(&import(&root, &archive));
        // Its time (the store had at most what the kill left) keeps the kill window current.
        full = (full * 3 + start.elapsed()) / 4;
        if kills % 10 == 0 {
            fsck_clean(&root);
        }
        let fs = rootfs(&root, NAME);
        assert_eq!(
            std::fs::read(fs.join("usr/bin/tool")).unwrap(),
            b"#!/bin/sh\necho tool\n"
        );
        assert_eq!(std::fs::read_dir(fs.join("a")).unwrap().count(), 100);
        // Back to an empty store for the next round (gc also sweeps what the kill left).
        ok(&agent(&root, &["image", "rm", NAME]));
        ok(&agent(&root, &["gc"]));
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        if kills < 3 {
            eprintln!(
                "crash round: killed after {delay:?}, checks took {:?}",
                t0.elapsed()
            );
        }
    }
    eprintln!(
        "crash test: {kills} imports killed, {finished_first} finished before the kill, \
         whole import {full:?}; (objects, layers, snapshots, documents, refs) left by kills: \
         {partial_states:?}"
    );
    assert!(kills >= 50);
}

/// Where the `n`th (0-based) `layer.tar` entry's data starts in a tar.
fn layer_offset(archive: &[u8], n: usize) -> usize {
    let mut ar = tar::Archive::new(archive);
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().unwrap().to_string_lossy().ends_with("layer.tar"))
        .nth(n)
        .unwrap()
        .raw_file_position() as usize
}

/// `dt-agent image import -` fed `bytes` on standard input, left running.
fn import_from_pipe(root: &Path, bytes: &[u8]) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(["image", "import", "--json", "-"])
        .env("DT_AGENT_ROOT", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(bytes).unwrap();
    stdin.flush().unwrap();
    (child, stdin)
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |r| r.count())
}

fn pending_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("imports")).map_or(0, |r| {
        r.filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".pending")
        })
        .count()
    })
}

#[track_caller]
fn wait_for_layers(root: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&root.join("layers")) < n {
        assert!(Instant::now() < deadline, "no layer committed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Three layers of 8 distinct 128 KiB files each, as a docker-archive.
fn three_layers(dir: &Path, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut rng = Rng(seed);
    let layers: Vec<Vec<u8>> = ["a/", "b/", "c/"]
        .into_iter()
        .map(|d| random_layer(&mut rng, d, 8, 128 << 10))
        .collect();
    let archive = docker_archive(dir, "three.tar", "duckietown/resume:v1", &layers);
    let bytes = std::fs::read(&archive).unwrap();
    (archive, bytes)
}

#[test]
fn a_killed_import_resumes_and_gc_meanwhile_keeps_its_layers() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (archive, bytes) = three_layers(t.path(), 0xada9);
    // The first layer and half of the second: the first is committed as it ends.
    let cut = layer_offset(&bytes, 1) + (64 << 10);
    let (mut child, stdin) = import_from_pipe(&root, &bytes[..cut]);
    wait_for_layers(&root, 1);
    // gc during the import waits for it (the import holds the store lock shared).
    let gc = Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(["gc", "--json"])
        .env("DT_AGENT_ROOT", &root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut gc = gc;
    assert!(gc.try_wait().unwrap().is_none(), "gc ran during the import");
    child.kill().unwrap();
    let _ = child.wait();
    drop(stdin);
    // Then gc keeps what the killed import committed, for its rerun.
    let g: serde_json::Value = serde_json::from_str(&ok(&gc.wait_with_output().unwrap())).unwrap();
    assert_eq!(
        (g["layers_pending"].as_u64(), g["layers_removed"].as_u64()),
        (Some(1), Some(0)),
        "{g}"
    );
    assert_eq!(g["tmp_removed"], 1, "the killed import's staging: {g}");
    assert_eq!(count(&root.join("layers")), 1);
    assert_eq!(pending_files(&root), 1);

    // The rerun only hashes the finished layer: nothing is added twice.
    let r = json(&agent(&root, &["image", "import", "--json", p(&archive)]));
    assert_eq!(
        (r["layers_present"].as_u64(), r["layers_added"].as_u64()),
        (Some(1), Some(2)),
        "{r}"
    );
    assert_eq!(
        r["objects_added"], 16,
        "the 8 files of each of the two new layers: {r}"
    );
    assert_eq!(
        pending_files(&root),
        0,
        "the rerun superseded the killed import"
    );
    assert_eq!(count(&root.join("tmp")), 0);
    fsck_clean(&root);
    // Once named, the layers are gc's like any image's: rm + gc frees them all.
    ok(&agent(&root, &["image", "rm", "duckietown/resume:v1"]));
    ok(&agent(&root, &["gc"]));
    assert_eq!(count(&root.join("layers")), 0);
}

#[test]
fn a_cut_stream_or_a_lying_config_is_refused_and_names_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let (archive, bytes) = three_layers(t.path(), 0xc07);

    // The stream ends inside the second layer: exit 2, the first layer kept for a rerun.
    let cut = layer_offset(&bytes, 1) + (64 << 10);
    let (child, stdin) = import_from_pipe(&root, &bytes[..cut]);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("archive is bad") && err.contains("stream ended"),
        "{err}"
    );
    assert!(err.contains("run the import again"), "{err}");
    assert!(ls(&root).is_empty(), "nothing named");
    assert_eq!(count(&root.join("tmp")), 0, "staging cleaned");
    assert_eq!(count(&root.join("snapshots")), 0);
    assert_eq!(count(&root.join("layers")), 1);
    assert_eq!(pending_files(&root), 1);
    let r = json(&agent(&root, &["image", "import", "--json", p(&archive)]));
    assert_eq!(
        (r["layers_present"].as_u64(), r["layers_added"].as_u64()),
        (Some(1), Some(2)),
        "{r}"
    );
    ok(&agent(&root, &["image", "rm", "duckietown/resume:v1"]));
    ok(&agent(&root, &["gc"]));

    // A config naming a diff_id the stream does not carry: refused, and its layers are garbage.
    let mut rng = Rng(5);
    let layers = vec![
        random_layer(&mut rng, "x/", 2, 4096),
        random_layer(&mut rng, "y/", 2, 4096),
    ];
    let lying = docker_archive_claiming(
        t.path(),
        "lying.tar",
        "duckietown/lying:v1",
        &layers,
        &[Digest::of(&layers[0]), Digest::of(b"not in the archive")],
    );
    let out = import(&root, &lying);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("archive is bad") && err.contains("diff_id"),
        "{err}"
    );
    assert!(ls(&root).is_empty(), "nothing named");
    assert_eq!(count(&root.join("tmp")), 0, "staging cleaned");
    assert_eq!(
        pending_files(&root),
        0,
        "a refused archive keeps nothing for a rerun"
    );
    ok(&agent(&root, &["gc"]));
    assert_eq!(count(&root.join("layers")), 0);
    fsck_clean(&root);
}

// ---------------------------------------------------------------------------------------------
// (c) Images that share files share their disk

#[test]
fn two_images_sharing_most_files_take_about_one_copy() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let mut rng = Rng(0x5eed_cafe);
    let files: Vec<Vec<u8>> = (0..32).map(|_| rng.bytes(64 << 10)).collect();
    let names: Vec<&'static str> = (0..36)
        .map(|i| &*Box::leak(format!("data/f{i:02}").into_boxed_str()))
        .collect();
    // A: 32 files. B: a different layer (other mtimes, order and neighbours) holding 30 of the
    // same files, 2 changed and 2 new: what a rebuild of an image looks like.
    let a_layer = layer_tar(
        &std::iter::once(Entry::Dir("data/", 0o755))
            .chain((0..32).map(|i| Entry::File(names[i], 0o644, files[i].clone())))
            .collect::<Vec<_>>(),
    );
    let mut b_entries = vec![Entry::Dir("data/", 0o755)];
    for i in (0..32).rev() {
        let data = if i < 2 {
            rng.bytes(64 << 10)
        } else {
            files[i].clone()
        };
        b_entries.push(Entry::File(names[i], 0o644, data));
    }
    for name in &names[32..34] {
        b_entries.push(Entry::File(name, 0o644, rng.bytes(64 << 10)));
    }
    let b_layer = layer_tar(&b_entries);
    assert_ne!(Digest::of(&a_layer), Digest::of(&b_layer));
    let a = oci_archive(
        t.path(),
        "a.tar",
        "duckietown/a:v1",
        &[base_layer(), a_layer],
    );
    let b = oci_archive(
        t.path(),
        "b.tar",
        "duckietown/b:v1",
        &[base_layer(), b_layer],
    );

    ok(&agent(&root, &["status"]));
    let empty = du(&root);
    ok(&import(&root, &a));
    let after_a = du(&root);
    let r = json(&agent(&root, &["image", "import", p(&b), "--json"]));
    let after_b = du(&root);
    let (da, db) = (after_a - empty, after_b - after_a);
    eprintln!(
        "dedup: image A added {da} bytes on disk, image B {db} bytes ({} new objects, {} bytes \
         of new content); both {} bytes",
        r["objects_added"],
        r["object_bytes_added"],
        after_b - empty
    );
    // B brought 4 new 64 KiB files; everything else is links and metadata.
    assert_eq!(r["objects_added"], 4);
    assert_eq!(r["object_bytes_added"], 4 * (64 << 10));
    assert!(da >= 32 * (64 << 10), "{da}");
    assert!(
        db < da / 4,
        "the second image took {db} bytes, the first {da}"
    );
    assert!(after_b - empty < da * 13 / 10);
    fsck_clean(&root);
}

// ---------------------------------------------------------------------------------------------
// (d) A full disk

#[test]
fn a_full_disk_fails_clearly_and_commits_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    let Some(_tmpfs) = support::Tmpfs::mount(&mnt, "8m") else {
        return;
    };
    let root = mnt.join("store");
    let small = oci_archive(
        t.path(),
        "small.tar",
        "duckietown/small:v1",
        &[base_layer()],
    );
    ok(&import(&root, &small));
    // 12 MiB of distinct files that compress to almost nothing: the archive fits, its content
    // does not.
    let mut rng = Rng(77);
    let mut entries = vec![Entry::Dir("big/", 0o755)];
    for i in 0..12 {
        let block = rng.bytes(4096);
        let name: &'static str = Box::leak(format!("big/f{i}").into_boxed_str());
        entries.push(Entry::File(name, 0o644, block.repeat(256)));
    }
    let big = oci_archive(
        t.path(),
        "big.tar",
        "duckietown/big:v1",
        &[base_layer(), layer_tar(&entries)],
    );
    assert!(std::fs::metadata(&big).unwrap().len() < 1 << 20);

    let before = store_state(&root);
    let free_before = dts::agent::store::free_bytes(&root).unwrap();
    let out = import(&root, &big);
    let err = stderr(&out);
    eprintln!("disk full: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no space left"), "{err}");
    assert!(err.contains(p(&root)), "the error names the store: {err}");
    assert!(err.contains("dt-agent gc"), "and the fix: {err}");
    assert_eq!(store_state(&root), before, "nothing half-committed");
    assert_eq!(
        dts::agent::store::free_bytes(&root).unwrap(),
        free_before,
        "staging removed"
    );
    fsck_clean(&root);
    let images = ls(&root);
    assert_eq!(images.len(), 1);
    let fs = rootfs(&root, "duckietown/small:v1");
    assert_eq!(
        std::fs::read(fs.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
}

// ---------------------------------------------------------------------------------------------
// (e) fsck finds damage; gc removes what nothing references

fn object_of(root: &Path, content: &[u8]) -> PathBuf {
    let d = Digest::of(content);
    let dir = root.join("objects/sha256").join(&d.hex()[..2]);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(d.hex())
        })
        .unwrap()
}

#[test]
fn fsck_names_corrupted_missing_and_empty_objects() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let extra = layer_tar(&[
        Entry::File("one", 0o644, b"object one".to_vec()),
        Entry::File("two", 0o600, b"object two".to_vec()),
    ]);
    ok(&import(
        &root,
        &oci_archive(t.path(), "a.tar", NAME, &[base_layer(), extra]),
    ));
    fsck_clean(&root);

    let tool = object_of(&root, b"#!/bin/sh\necho tool\n");
    let original = std::fs::read(&tool).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&tool, b"#!/bin/sh\necho pwned\n").unwrap();
    let out = agent(&root, &["fsck"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains(p(&tool)) && report.contains("unverified object"),
        "{report}"
    );
    assert!(
        report.contains("which is damaged"),
        "the layer needing it is named: {report}"
    );
    std::fs::write(&tool, &original).unwrap();
    fsck_clean(&root);

    let one = object_of(&root, b"object one");
    std::fs::remove_file(&one).unwrap();
    let out = agent(&root, &["fsck", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = r["problems"].to_string();
    assert!(
        problems.contains(&format!(
            "needs object {}, which is missing",
            Digest::of(b"object one")
        )),
        "{problems}"
    );

    let two = object_of(&root, b"object two");
    std::fs::write(&two, b"").unwrap();
    let out = agent(&root, &["fsck"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        report.contains(p(&two)) && report.contains("zero-length object"),
        "{report}"
    );
}

#[test]
fn gc_keeps_names_and_roots_and_removes_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let only_b = layer_tar(&[Entry::File("b-only", 0o644, b"only in b".to_vec())]);
    let a = oci_archive(t.path(), "a.tar", "duckietown/a:v1", &[base_layer()]);
    let b = oci_archive(
        t.path(),
        "b.tar",
        "duckietown/b:v1",
        &[base_layer(), only_b],
    );
    ok(&import(&root, &a));
    let a_state = store_state(&root);
    let r = json(&agent(&root, &["image", "import", p(&b), "--json"]));
    let b_manifest = r["images"][0]["manifest"].as_str().unwrap().to_string();
    // A staging directory a crash left, and one still in use (flocked) by a live import.
    let stale = root.join("tmp/import-1-0-0.tmp");
    std::fs::create_dir_all(stale.join("objects")).unwrap();
    std::fs::write(stale.join("objects/x"), b"junk").unwrap();
    let live = root.join("tmp/import-2-0-0.tmp");
    std::fs::create_dir_all(live.join("objects")).unwrap();
    std::fs::write(live.join("objects/y"), b"arriving").unwrap();
    let live_lock = std::fs::File::open(&live).unwrap();
    rustix::fs::flock(&live_lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    // An object committed ahead of its layer by a transfer that was then cut: no layer names
    // it yet, and the next deploy resumes with it.
    let early = b"sent before the link was cut";
    let early_digest = Digest::of(early);
    let early_dir = root.join("objects/sha256").join(&early_digest.hex()[..2]);
    std::fs::create_dir_all(&early_dir).unwrap();
    let early_path = early_dir.join(format!("{}.0644.0.0", early_digest.hex()));
    std::fs::write(&early_path, early).unwrap();
    std::fs::set_permissions(&early_path, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Unnamed but listed under roots/ (what a release will do): kept.
    ok(&agent(&root, &["image", "rm", "duckietown/b:v1"]));
    std::fs::write(
        root.join("roots/release-1"),
        format!("# release 1\n{b_manifest}\n"),
    )
    .unwrap();
    let g = json(&agent(&root, &["gc", "--json"]));
    assert_eq!(
        (g["images_kept"].as_u64(), g["objects_removed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(g["tmp_removed"], 1);
    assert_eq!(g["objects_in_flight"], 1);
    assert!(early_path.is_file(), "gc removed a cut transfer's object");
    assert!(!stale.exists());
    assert_eq!(
        std::fs::read(live.join("objects/y")).unwrap(),
        b"arriving",
        "gc removed a live import's staging"
    );
    drop(live_lock);
    assert!(object_of(&root, b"only in b").is_file());
    fsck_clean(&root);

    // Nothing reaches b any more: its snapshot, layer, object and documents go; a's stay.
    std::fs::remove_file(root.join("roots/release-1")).unwrap();
    let g = json(&agent(&root, &["gc", "--json"]));
    assert_eq!(g["snapshots_removed"], 1);
    assert_eq!(g["layers_removed"], 1);
    assert_eq!(g["objects_removed"], 1);
    assert_eq!(g["documents_removed"], 2);
    fsck_clean(&root);
    assert!(early_path.is_file());
    std::fs::remove_file(&early_path).unwrap();
    std::fs::remove_dir(&early_dir).unwrap();
    let mut now = store_state(&root);
    now.remove("roots/release-1");
    let mut want = a_state.clone();
    want.retain(|k, _| !k.starts_with("tmp/import"));
    now.retain(|k, _| !k.starts_with("tmp/import"));
    assert_eq!(now, want, "back to exactly what image a needs");
    let fs = rootfs(&root, "duckietown/a:v1");
    assert_eq!(
        std::fs::read(fs.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
}

/// `image import --docker-root`: a directory that is not an overlay2 data root is exit 1 naming
/// it and saying to use `docker save`; an image the data root does not hold is exit 2 naming
/// it; neither names anything in the store.
#[test]
fn docker_root_refuses_what_is_not_an_overlay2_root_or_not_there() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("agent");
    let docker = tmp.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let out = agent(
        &root,
        &[
            "image",
            "import",
            "--docker-root",
            p(&docker),
            "busybox:latest",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not the data root of a Docker using the overlay2"),
        "{err}"
    );
    assert!(err.contains(p(&docker)), "{err}");
    assert!(err.contains("docker save"), "{err}");

    std::fs::create_dir_all(docker.join("image/overlay2/imagedb/content/sha256")).unwrap();
    std::fs::create_dir_all(docker.join("overlay2")).unwrap();
    let out = agent(
        &root,
        &[
            "image",
            "import",
            "--docker-root",
            p(&docker),
            "busybox:latest",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("busybox:latest"), "{err}");
    assert!(err.contains("has no image of that name or id"), "{err}");
    assert!(ls(&root).is_empty());
}
