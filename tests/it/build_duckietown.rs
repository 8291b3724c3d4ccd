//! A Duckietown-like project built for arm64v8 and arm32v7 (issue 19's acceptance): a Debian
//! base image per arch made with mmdebstrap (`scripts/duckietown-base-rootfs`, cached under
//! /var/cache/dts-test/dt-base by `scripts/test`'s install phase) loaded into the test's store;
//! the project in tests/data/duckietown-project installs dependencies-apt.txt with `apt-get`
//! from the Debian mirror and dependencies-py3.txt with pip from PyPI, both with their caches in
//! `RUN --mount=type=cache`, and cross-compiles a catkin-like C++ package in a
//! `FROM --platform=$BUILDPLATFORM` stage with Debian's cross toolchains.
//!
//! Checked per arch: the C++ binary is for the target's machine and runs there (a RUN under
//! QEMU on top of the built image prints its output, with the Python node's, an apt
//! package's and the RUN's seccomp mode: the builder's sync filter is on); every package of dependencies-apt.txt is installed in the layers; nothing of
//! the apt or pip caches, nor of the builder's fsync suppression, is in any layer.
//!
//! Runtime: the two arches' apt and pip steps run under QEMU; the packages are chosen light.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::{can_run, content_in as content, dts, json, layers, ok, p};
use crate::support;

const PROJECT: &str = "demo/dt-project:v1";

/// The build machine's CA bundle for pip (the project's optional secret `ca`): where a proxy
/// re-signs TLS, only this machine's bundle has its CA.
const CA_SECRET: &str = "id=ca,src=/etc/ssl/certs/ca-certificates.crt";

fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/duckietown-project")
}

/// Copies the project into `dst` (a plain copy: the context is a directory, not a checkout).
fn copy_project(dst: &Path) {
    let st = Command::new("cp")
        .args(["-a", "--"])
        .arg(project_dir())
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a of the project");
}

/// The base image layout from the cached mmdebstrap trees (built here when the cache lacks
/// them, which takes minutes), or None with a skip.
fn base_layout(dir: &Path) -> Option<PathBuf> {
    if !support::require_cmd("mmdebstrap") {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/duckietown-base-rootfs");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--layout")
        .arg(dir)
        .output()
        .unwrap();
    if !out.status.success() {
        support::skip(&format!(
            "scripts/duckietown-base-rootfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return None;
    }
    Some(dir.to_path_buf())
}

/// Every path of a platform's layers, in order (whiteouts included, as written).
fn layer_paths(layers: &[Vec<u8>]) -> Vec<Vec<String>> {
    layers
        .iter()
        .map(|data| {
            tar::Archive::new(&data[..])
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect()
        })
        .collect()
}

/// The package names of a dependencies file (comments and blank lines dropped).
fn dependencies(file: &str) -> Vec<String> {
    std::fs::read_to_string(project_dir().join(file))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// What is in no layer the build made (the base's own, layer 0, has apt's empty cache
/// directories): the cache mounts' content and the builder's own sandbox files.
fn assert_no_cache_in(paths: &[Vec<String>], platform: &str) {
    for (i, layer) in paths.iter().enumerate().skip(1) {
        for path in layer {
            let p = path.trim_start_matches("./");
            let cached = (p.starts_with("var/cache/apt/") && p != "var/cache/apt/")
                || (p.starts_with("var/lib/apt/lists/") && p != "var/lib/apt/lists/")
                || p.starts_with("root/.cache");
            assert!(!cached, "{platform} layer {i} holds a cache file: {p}");
            assert!(
                !p.contains("dts-build"),
                "{platform} layer {i} holds a file of the builder's sandbox: {p}"
            );
        }
    }
}

#[test]
fn duckietown_project_builds_for_arm64_and_armhf() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let Some(layout) = base_layout(&t.path().join("base")) else {
        return;
    };
    ok(&dts(&home, &["image", "load", "-i", p(&layout)]));
    let ctx = t.path().join("project");
    copy_project(&ctx);

    let started = std::time::Instant::now();
    let report = json(&dts(
        &home,
        &[
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            PROJECT,
            "--arch",
            "arm64v8,arm32v7",
            "--secret",
            CA_SECRET,
            "--json",
        ],
    ));
    eprintln!(
        "duckietown project, both arches, cold: {:.1} s ({report})",
        started.elapsed().as_secs_f64()
    );
    // Both targets' native C++ stage have equal inputs but TARGETARCH differs, so each ran.
    assert_eq!(report["steps_cached"].as_u64(), Some(0), "{report}");

    let apt = dependencies("dependencies-apt.txt");
    assert!(apt.len() >= 10, "{apt:?}");
    for (platform, machine) in [("linux/arm64", 0xb7u16), ("linux/arm/v7", 0x28)] {
        let layers = layers(&home, PROJECT, platform);
        let node = content(&layers, "code/catkin_ws/install/lib/hello_cpp/hello_node")
            .unwrap_or_else(|| panic!("{platform}: no hello_node"));
        assert_eq!(&node[..4], b"\x7fELF", "{platform}");
        assert_eq!(
            u16::from_le_bytes([node[18], node[19]]),
            machine,
            "{platform}: hello_node is for the target's machine"
        );
        let status = String::from_utf8(content(&layers, "var/lib/dpkg/status").unwrap()).unwrap();
        for pkg in &apt {
            let entry = format!("Package: {pkg}\n");
            let at = status
                .find(&entry)
                .unwrap_or_else(|| panic!("{platform}: {pkg} not in dpkg's status"));
            let block = &status[at..];
            let block = &block[..block.find("\n\n").unwrap_or(block.len())];
            assert!(
                block.contains("Status: install ok installed"),
                "{platform}: {block}"
            );
        }
        let paths = layer_paths(&layers);
        assert!(
            paths
                .iter()
                .flatten()
                .any(|p| p.ends_with("dist-packages/six.py")),
            "{platform}: pip's six is in a layer"
        );
        assert_no_cache_in(&paths, platform);
    }

    // The image runs on each arch: its C++ node, its Python node (importing the pip package)
    // and an apt package, in a RUN on top of it (under QEMU).
    let check = t.path().join("check");
    crate::build::write(
        &check,
        &[(
            "Dockerfile",
            &format!(
                "FROM {PROJECT}\nRUN uname -m > /out && /code/catkin_ws/install/lib/hello_cpp/hello_node >> /out \\\n && python3 -m lane_filter >> /out && echo '{{\"jq\": 1}}' | jq -c . >> /out \\\n && grep '^Seccomp:' /proc/self/status >> /out\n"
            ),
        )],
    );
    ok(&dts(
        &home,
        &[
            "devel",
            "build",
            "-C",
            p(&check),
            "-t",
            "demo/dt-check:v1",
            "--arch",
            "arm64v8,arm32v7",
        ],
    ));
    for (platform, uname) in [("linux/arm64", "aarch64"), ("linux/arm/v7", "armv7l")] {
        let out = String::from_utf8(
            content(&layers(&home, "demo/dt-check:v1", platform), "out").unwrap(),
        )
        .unwrap();
        assert_eq!(
            out,
            format!(
                "{uname}\nhello_node: x=0.099 y=1.091 theta=2.960\nlane_filter gain 1.0 (six 1.16.0)\n{{\"jq\":1}}\nSeccomp:\t2\n"
            ),
            "{platform}"
        );
    }
}
