//! `dts image …` end to end through the binary: load/save round trips, interop with skopeo,
//! umoci and podman, bad input (exit 2, store untouched) and SIGKILL during a load.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::images::{self, Layout, multi_arch_layout};
use dts::oci::json::canonical;
use dts::oci::{Digest, Platform, media};

const NAME: &str = "example.com/duckietown/dt-test:v1";

fn dts(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dts"))
        .args(args)
        .env("DTS_HOME", home)
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("run dts")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "dts failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("stdout is one JSON document")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every file under the store with its content hash (locks excluded: they are opened, never
/// written).
fn snapshot(home: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = home.join("store");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"), String::new());
                stack.push(path);
            } else if !rel.ends_with("lock") {
                out.insert(rel, Digest::of(&std::fs::read(&path).unwrap()).to_string());
            }
        }
    }
    out
}

/// Every blob in the store hashes to its name.
fn assert_blobs_verified(home: &Path) {
    let blobs = home.join("store/blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let actual = Digest::of(&std::fs::read(e.path()).unwrap());
        assert_eq!(actual.hex(), name, "blob under a name it does not hash to");
    }
}

fn loaded_digest(home: &Path, name: &str) -> String {
    let ls = json(&dts(home, &["image", "ls", "--json"]));
    ls.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {ls}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn load_save_load_keeps_every_digest() {
    let t = tempfile::tempdir().unwrap();
    let (idx, _) = multi_arch_layout(&t.path().join("layout"), NAME);
    let home = t.path().join("home");
    let r = json(&dts(
        &home,
        &["image", "load", "-i", p(&t.path().join("layout")), "--json"],
    ));
    assert_eq!(r["format"], "oci-layout");
    assert_eq!(r["images"][0]["name"], NAME);
    assert_eq!(r["images"][0]["digest"], idx.digest.to_string());

    let ls = json(&dts(&home, &["image", "ls", "--json"]));
    assert_eq!(
        ls[0]["platforms"],
        serde_json::json!(["linux/arm64", "linux/arm/v7"])
    );
    assert!(ls[0]["size"].as_u64().unwrap() > 0);

    // OCI keeps every platform; saving twice gives the same bytes.
    let a = t.path().join("a.tar");
    let b = t.path().join("b.tar");
    ok(&dts(&home, &["image", "save", NAME, "-o", p(&a)]));
    ok(&dts(&home, &["image", "save", NAME, "-o", p(&b)]));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let home2 = t.path().join("home2");
    let r = json(&dts(&home2, &["image", "load", "-i", p(&a), "--json"]));
    assert_eq!(r["format"], "oci-archive");
    assert_eq!(loaded_digest(&home2, NAME), idx.digest.to_string());
    let c = t.path().join("c.tar");
    ok(&dts(&home2, &["image", "save", NAME, "-o", p(&c)]));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());

    // A docker-archive holds one platform; the config (the image ID) survives the trip.
    let d = t.path().join("d.tar");
    let e = dts(
        &home,
        &["image", "save", NAME, "--format", "docker", "-o", p(&d)],
    );
    assert_eq!(
        e.status.code(),
        Some(2),
        "multi-arch needs --platform: {}",
        String::from_utf8_lossy(&e.stderr)
    );
    assert!(String::from_utf8_lossy(&e.stderr).contains("--platform"));
    ok(&dts(
        &home,
        &[
            "image",
            "save",
            NAME,
            "--format",
            "docker",
            "--platform",
            "arm32v7",
            "-o",
            p(&d),
        ],
    ));
    let home3 = t.path().join("home3");
    let r = json(&dts(&home3, &["image", "load", "-i", p(&d), "--json"]));
    assert_eq!(r["format"], "docker-archive");
    assert_eq!(r["images"][0]["name"], NAME);
    let want = dts(
        &home,
        &[
            "image",
            "inspect",
            NAME,
            "--platform",
            "linux/arm/v7",
            "--json",
        ],
    );
    let got = dts(&home3, &["image", "inspect", NAME, "--json"]);
    assert_eq!(ok(&want), ok(&got), "config bytes identical");
    let d2 = t.path().join("d2.tar");
    ok(&dts(
        &home3,
        &["image", "save", NAME, "--format", "docker", "-o", p(&d2)],
    ));
    assert_eq!(std::fs::read(&d).unwrap(), std::fs::read(&d2).unwrap());

    // tag, rm and prune.
    ok(&dts(
        &home,
        &["image", "tag", NAME, "duckietown/dt-test:copy"],
    ));
    assert_eq!(
        loaded_digest(&home, "docker.io/duckietown/dt-test:copy"),
        idx.digest.to_string()
    );
    ok(&dts(&home, &["image", "rm", NAME]));
    ok(&dts(&home, &["image", "rm", "duckietown/dt-test:copy"]));
    assert_eq!(
        json(&dts(&home, &["image", "ls", "--json"])),
        serde_json::json!([])
    );
    let blobs = std::fs::read_dir(home.join("store/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "rm of the last name frees its content");
    let e = dts(&home, &["image", "inspect", NAME]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("no image named"));
}

#[test]
fn skopeo_reads_what_we_save_and_we_read_what_it_writes() {
    if !support::require_cmd("skopeo") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (idx, ws) = multi_arch_layout(&t.path().join("layout"), NAME);
    let home = t.path().join("home");
    ok(&dts(
        &home,
        &["image", "load", "-i", p(&t.path().join("layout"))],
    ));
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .arg("--insecure-policy")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };

    let oci = t.path().join("img.oci.tar");
    ok(&dts(&home, &["image", "save", NAME, "-o", p(&oci)]));
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}:v1", p(&oci))]);
    assert_eq!(
        Digest::of(&raw),
        idx.digest,
        "skopeo sees our index byte for byte"
    );
    let copied = t.path().join("copied");
    skopeo(&[
        "copy",
        "--all",
        &format!("oci-archive:{}:v1", p(&oci)),
        &format!("oci:{}:v1", p(&copied)),
    ]);

    let docker = t.path().join("img.docker.tar");
    ok(&dts(
        &home,
        &[
            "image",
            "save",
            NAME,
            "--format",
            "docker",
            "--platform",
            "linux/arm64",
            "-o",
            p(&docker),
        ],
    ));
    let cfg = skopeo(&[
        "inspect",
        "--config",
        "--raw",
        &format!("docker-archive:{}", p(&docker)),
    ]);
    assert_eq!(
        Digest::of(&cfg),
        ws[0].config,
        "same config through docker-archive"
    );
    let info: serde_json::Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}", p(&docker)),
    ]))
    .unwrap();
    assert_eq!(info["Architecture"], "arm64");
    assert_eq!(
        info["RepoTags"],
        serde_json::json!(["example.com/duckietown/dt-test:v1"])
            .get(0)
            .map(|_| info["RepoTags"].clone())
            .unwrap()
    );
    skopeo(&[
        "copy",
        &format!("docker-archive:{}", p(&docker)),
        &format!("oci:{}:x", p(&t.path().join("from-docker"))),
    ]);

    // What skopeo writes, we load: a docker-archive and an OCI layout.
    let sk = t.path().join("skopeo.docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:v1", p(&copied)),
        &format!("docker-archive:{}:duckietown/from-skopeo:1", p(&sk)),
        "--override-arch",
        "arm",
        "--override-variant",
        "v7",
    ]);
    let home2 = t.path().join("home2");
    let r = json(&dts(&home2, &["image", "load", "-i", p(&sk), "--json"]));
    assert_eq!(r["images"][0]["name"], "docker.io/duckietown/from-skopeo:1");
    let cfg: serde_json::Value = serde_json::from_str(&ok(&dts(
        &home2,
        &["image", "inspect", "duckietown/from-skopeo:1", "--json"],
    )))
    .unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(ws[1].diff_ids));
    let r = json(&dts(
        &home2,
        &[
            "image",
            "load",
            "-i",
            p(&copied),
            "-t",
            "copied:all",
            "--json",
        ],
    ));
    assert_eq!(r["images"][0]["digest"], idx.digest.to_string());
}

#[test]
fn umoci_unpacks_the_tree_we_put_in() {
    if !support::require_cmd("umoci")
        || !support::require_root("umoci keeps file owners only as root")
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    multi_arch_layout(&t.path().join("layout"), NAME);
    let home = t.path().join("home");
    ok(&dts(
        &home,
        &["image", "load", "-i", p(&t.path().join("layout"))],
    ));
    let out = t.path().join("arm64.tar");
    ok(&dts(
        &home,
        &[
            "image",
            "save",
            NAME,
            "--platform",
            "linux/arm64",
            "-o",
            p(&out),
        ],
    ));
    let dir = t.path().join("extracted");
    std::fs::create_dir(&dir).unwrap();
    tar::Archive::new(std::fs::File::open(&out).unwrap())
        .unpack(&dir)
        .unwrap();
    let bundle = t.path().join("bundle");
    let st = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:v1", p(&dir)), p(&bundle)])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&st.stderr)
    );

    // The tree umoci made is the tree our layers describe.
    let want = expected_tree(&[images::base_layer(), images::arch_layer(&Platform::arm64())]);
    let got = tree(&bundle.join("rootfs"));
    assert_eq!(got, want);
}

/// path → "kind mode content-hash|target" for the layers applied in order (no whiteouts here).
fn expected_tree(layers: &[Vec<u8>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in layers {
        let mut ar = tar::Archive::new(&l[..]);
        let mut links = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            let mode = e.header().mode().unwrap() & 0o7777;
            let v = match e.header().entry_type() {
                tar::EntryType::Directory => format!("dir {mode:o}"),
                tar::EntryType::Symlink => {
                    format!("symlink {}", e.link_name().unwrap().unwrap().display())
                }
                tar::EntryType::Link => {
                    links.push((
                        path.clone(),
                        e.link_name().unwrap().unwrap().display().to_string(),
                    ));
                    continue;
                }
                _ => {
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                    format!("file {mode:o} {}", Digest::of(&data))
                }
            };
            out.insert(path, v);
        }
        for (path, target) in links {
            let v = out[&target].clone();
            out.insert(path, v);
        }
    }
    out
}

fn tree(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let v = if m.file_type().is_symlink() {
                format!("symlink {}", std::fs::read_link(&path).unwrap().display())
            } else if m.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                format!(
                    "file {mode:o} {}",
                    Digest::of(&std::fs::read(&path).unwrap())
                )
            };
            out.insert(rel, v);
        }
    }
    out
}

#[test]
fn podman_loads_our_docker_archive() {
    if !support::require_cmd("podman") || !support::require_root("podman's vfs storage as root") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    multi_arch_layout(&t.path().join("layout"), NAME);
    let home = t.path().join("home");
    ok(&dts(
        &home,
        &["image", "load", "-i", p(&t.path().join("layout"))],
    ));
    let out = t.path().join("img.tar");
    ok(&dts(
        &home,
        &[
            "image",
            "save",
            NAME,
            "--format",
            "docker",
            "--platform",
            "linux/arm64",
            "-o",
            p(&out),
        ],
    ));
    let podman = |args: &[&str]| {
        Command::new("podman")
            .args([
                "--root",
                p(&t.path().join("proot")),
                "--runroot",
                p(&t.path().join("prun")),
            ])
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let l = podman(&["load", "-i", p(&out)]);
    assert!(
        l.status.success(),
        "podman load: {}",
        String::from_utf8_lossy(&l.stderr)
    );
    let imgs = podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        String::from_utf8_lossy(&imgs.stdout).contains(NAME),
        "podman images: {}",
        String::from_utf8_lossy(&imgs.stdout)
    );
}

/// A layout whose one image is broken in a way `corrupt` decides.
fn broken_layout(dir: &Path, corrupt: impl FnOnce(&Layout, &mut dts::oci::Manifest)) {
    let l = Layout::new(dir);
    let layer = images::base_layer();
    let ldesc = l.blob(media::OCI_LAYER_GZIP, &images::gzip(&layer));
    let cfg = dts::oci::ImageConfig {
        architecture: "arm64".into(),
        os: "linux".into(),
        rootfs: dts::oci::config::RootFs {
            kind: "layers".into(),
            diff_ids: vec![Digest::of(&layer)],
        },
        ..Default::default()
    };
    let cdesc = l.blob(media::OCI_CONFIG, &cfg.to_canonical_json());
    let mut m = dts::oci::Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: cdesc,
        layers: vec![ldesc],
        subject: None,
        annotations: Default::default(),
    };
    corrupt(&l, &mut m);
    let mdesc = l.blob(media::OCI_MANIFEST, &canonical(&m));
    l.finish(&[("broken/image:1", mdesc)]);
}

#[test]
fn bad_input_exits_2_names_the_problem_and_leaves_the_store_alone() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    multi_arch_layout(&t.path().join("good"), NAME);
    ok(&dts(
        &home,
        &["image", "load", "-i", p(&t.path().join("good"))],
    ));
    let good_tar = t.path().join("good.tar");
    ok(&dts(&home, &["image", "save", NAME, "-o", p(&good_tar)]));
    let before = snapshot(&home);

    let mut cases: Vec<(&str, PathBuf, Vec<&str>, &str)> = Vec::new();

    // A truncated archive.
    let bytes = std::fs::read(&good_tar).unwrap();
    let trunc = t.path().join("truncated.tar");
    std::fs::write(&trunc, &bytes[..bytes.len() * 2 / 3]).unwrap();
    cases.push(("truncated", trunc, vec![], "truncated"));

    // A layer whose content does not match the digest the manifest gives.
    let dir = t.path().join("mismatch");
    broken_layout(&dir, |l, m| {
        let path = l.dir.join("blobs/sha256").join(m.layers[0].digest.hex());
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n / 2] ^= 0xff;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&path, data).unwrap();
    });
    cases.push(("digest mismatch", dir, vec![], "does not match its digest"));

    // A config whose diff_id disagrees with the layer.
    let dir = t.path().join("diffid");
    broken_layout(&dir, |l, m| {
        let cfg = dts::oci::ImageConfig {
            architecture: "arm64".into(),
            os: "linux".into(),
            rootfs: dts::oci::config::RootFs {
                kind: "layers".into(),
                diff_ids: vec![Digest::of(b"something else")],
            },
            ..Default::default()
        };
        m.config = l.blob(media::OCI_CONFIG, &cfg.to_canonical_json());
    });
    cases.push((
        "diff_id mismatch",
        dir,
        vec![],
        "does not match its image config",
    ));

    // A manifest with a duplicate key (correctly digested, so only the JSON is wrong).
    let dir = t.path().join("dupkeys");
    {
        let l = Layout::new(&dir);
        let layer = images::base_layer();
        let ldesc = l.blob(media::OCI_LAYER, &layer);
        let cfg = dts::oci::ImageConfig {
            architecture: "arm64".into(),
            os: "linux".into(),
            rootfs: dts::oci::config::RootFs {
                kind: "layers".into(),
                diff_ids: vec![Digest::of(&layer)],
            },
            ..Default::default()
        };
        let cdesc = l.blob(media::OCI_CONFIG, &cfg.to_canonical_json());
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{m}","config":{{"mediaType":"{c}","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"{lm}","digest":"{ld}","size":{ls}}}],"layers":[]}}"#,
            m = media::OCI_MANIFEST,
            c = media::OCI_CONFIG,
            cd = cdesc.digest,
            cs = cdesc.size,
            lm = media::OCI_LAYER,
            ld = ldesc.digest,
            ls = ldesc.size
        );
        let mdesc = l.blob(media::OCI_MANIFEST, doc.as_bytes());
        l.finish(&[("dup/keys:1", mdesc)]);
    }
    cases.push(("duplicate keys", dir, vec![], "duplicate key `layers`"));

    // An invalid reference given with -t, and one inside the archive.
    cases.push((
        "invalid -t",
        t.path().join("good"),
        vec!["-t", "Upper/Case"],
        "must be lowercase",
    ));
    let dir = t.path().join("badname");
    multi_arch_layout(&dir, "bad//name");
    cases.push((
        "invalid name in archive",
        dir,
        vec![],
        "empty path component",
    ));

    // Not an archive at all.
    let junk = t.path().join("junk.tar");
    std::fs::write(
        &junk,
        b"this is not a tar file, not even close\n".repeat(40),
    )
    .unwrap();
    cases.push(("junk", junk, vec![], "not a valid tar archive"));

    for (what, input, extra, needle) in cases {
        let mut args = vec!["image", "load", "-i", p(&input)];
        args.extend(extra);
        let out = dts(&home, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: exit code; stderr: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{what}: expected `{needle}` in: {stderr}"
        );
        assert_eq!(snapshot(&home), before, "{what}: the store changed");
    }

    // Invalid references elsewhere are input errors too.
    for args in [
        vec!["image", "inspect", "Bad/Name"],
        vec!["image", "tag", NAME, "a//b"],
        vec!["image", "inspect", NAME, "--platform", "mips"],
    ] {
        let out = dts(&home, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(snapshot(&home), before);
}

/// Deterministic incompressible bytes (xorshift), fast enough for tens of MB.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn sigkill_during_load_never_leaves_a_bad_blob() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("big"));
    let layers: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let data = noise(12 << 20, 0x9e37_79b9_7f4a_7c15 + i);
            let name: &'static str = Box::leak(format!("blob{i}").into_boxed_str());
            images::layer_tar(&[images::Entry::File(name, 0o644, data)])
        })
        .collect();
    let w = l.image(&Platform::arm64(), &layers, &["/bin/true"]);
    l.finish(&[("big/image:1", w.manifest.clone())]);
    let home = t.path().join("home");
    let archive = t.path().join("big.tar");
    ok(&dts(&home, &["image", "load", "-i", p(&l.dir)]));
    ok(&dts(
        &home,
        &["image", "save", "big/image:1", "-o", p(&archive)],
    ));
    ok(&dts(&home, &["image", "rm", "big/image:1"]));

    for delay_ms in [0u64, 5, 20, 50, 100, 200, 400, 800] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dts"))
            .args(["image", "load", "-i", p(&archive)])
            .env("DTS_HOME", &home)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert_blobs_verified(&home);
        let ls = dts(&home, &["image", "ls", "--json"]);
        assert!(
            ls.status.success(),
            "after a kill at {delay_ms} ms the store opens"
        );
        // The next process clears the dead one's temp files.
        assert_eq!(
            std::fs::read_dir(home.join("store/ingest"))
                .unwrap()
                .count(),
            0
        );
        // Whether or not the load got as far as naming the image, start the next round clean.
        let _ = dts(&home, &["image", "rm", "big/image:1"]);
    }
    let r = json(&dts(&home, &["image", "load", "-i", p(&archive), "--json"]));
    assert_eq!(r["images"][0]["digest"], w.manifest.digest.to_string());
    assert_blobs_verified(&home);
}

/// Issue 20: `dts image ls` cut its NAME column at a fixed 50 characters' worth of padding, so a
/// longer name pushed DIGEST, PLATFORMS and SIZE out of line. Piped (as here), nothing is
/// shortened either: the whole name is printed.
#[test]
fn image_ls_keeps_columns_in_line_with_a_long_name() {
    let t = tempfile::tempdir().unwrap();
    let long = "registry.duckietown.example.com/duckietown/dt-duckiebot-interface:daffy-arm64v8";
    let (_, _) = multi_arch_layout(&t.path().join("long"), long);
    let (_, _) = multi_arch_layout(&t.path().join("short"), "dt-core:v1");
    let home = t.path().join("home");
    for d in ["long", "short"] {
        ok(&dts(&home, &["image", "load", "-i", p(&t.path().join(d))]));
    }
    let out = ok(&dts(&home, &["image", "ls"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let at = |l: &str, s: &str| l.find(s).unwrap_or_else(|| panic!("`{s}` in:\n{out}"));
    let (digest, platforms) = (at(lines[0], "DIGEST"), at(lines[0], "PLATFORMS"));
    for row in &lines[1..] {
        let d = &row[digest..digest + 13];
        assert!(
            d[..12].chars().all(|c| c.is_ascii_hexdigit()) && d.ends_with(' '),
            "DIGEST out of line:\n{out}"
        );
        assert!(
            row[platforms..].starts_with("linux/arm64,linux/arm/v7"),
            "{out}"
        );
        // SIZE is right-aligned: every line ends in the same column, with no trailing blank.
        assert_eq!(row.len(), lines[0].len(), "{out}");
        assert!(!row.ends_with(' '), "{out}");
    }
    assert!(
        out.contains(&format!("{long} ")),
        "a pipe gets the whole name:\n{out}"
    );
}
