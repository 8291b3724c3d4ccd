//! CDI devices through `dt-agent daemon` with real runc: the Jetson camera of a virtual DB21J
//! from a fake L4T tree (NVIDIA-format CSV files, libraries as files, nodes made by mknod, a
//! listening argus socket), vendor specs in the CDI example's and nvidia-ctk's formats, a
//! malformed spec beside them, and `dt-agent cdi export`.
//!
//! The robot's own root: the daemon runs in a private mount namespace (as in `agent_run`) in
//! which the test's directories are bind-mounted over `/dev`, `/tmp` and
//! `/usr/lib/aarch64-linux-gnu`, so the shipped DB21J profile and the CSV files name the real
//! L4T paths while every node and library lives in the test's temp dir, never in the host's
//! `/dev`. The state directory is under `/var/tmp`, outside the `/tmp` the robot gets.
//!
//! Every spec dt-agent writes is read back by its own strict parser; with
//! `DTS_CDI_VALIDATOR=PROGRAM` (a program that exits 0 for a valid spec file, such as one
//! calling `container_device_interface::schema::validate_builtin`, the CDI JSON schema) the
//! generated and exported specs are checked by it as well.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::images::{Entry, Layout};
use crate::support::netns::{Robot, TestNet};
use dts::oci::Platform;

const BUSYBOX: &str = "/var/cache/dts-fixtures/busybox/amd64/busybox";
const APPLETS: &[&str] = &["sh", "cat", "ls", "mknod", "test", "echo", "true", "env"];
const TEGRA: &str = "/usr/lib/aarch64-linux-gnu/tegra";

fn can_run() -> bool {
    if !support::require_root("runs containers: overlay mounts, cgroups, namespaces, mknod") {
        return false;
    }
    if !support::netns::require_netns("the daemon runs in a network namespace of its own") {
        return false;
    }
    for cmd in ["runc", "unshare", "nsenter", "ldconfig"] {
        if !support::require_cmd(cmd) {
            return false;
        }
    }
    if !Path::new(BUSYBOX).exists() || !Path::new("/usr/lib/aarch64-linux-gnu").is_dir() {
        support::skip(&format!(
            "needs {BUSYBOX} (`bash scripts/fixtures`) and /usr/lib/aarch64-linux-gnu to mount over"
        ));
        return false;
    }
    true
}

/// A virtual robot: its fake root (`dev`, `tmp`, `aarch64`) and state under one temp dir.
struct Jetson {
    base: PathBuf,
    robot: Robot,
    daemon: Option<Child>,
    _argus: std::os::unix::net::UnixListener,
    _tmp: tempfile::TempDir,
}

fn mknod(path: &Path, major: u32, minor: u32) {
    crate::support::mknod_char(path, major, minor, 0o666);
}

impl Jetson {
    fn new(net: &mut TestNet, extra_yaml: &str) -> Jetson {
        let tmp = tempfile::Builder::new()
            .prefix("dts-cdi")
            .tempdir_in("/var/tmp")
            .unwrap();
        let base = tmp.path().to_path_buf();
        for d in [
            "state",
            "dev",
            "tmp",
            "aarch64/tegra",
            "csv",
            "etc-cdi",
            "run-cdi",
        ] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        // The robot's /dev: what the daemon and runc use, and the Jetson's nodes. Majors 240+
        // are for local use: no driver answers, so an open reaches "no such device".
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
            ("nvmap", 240, 0),
            ("nvhost-ctrl", 240, 1),
            ("nvhost-vi", 240, 2),
        ] {
            mknod(&base.join("dev").join(name), major, minor);
        }
        let argus = std::os::unix::net::UnixListener::bind(base.join("tmp/argus_socket")).unwrap();
        let tegra = base.join("aarch64/tegra");
        std::fs::write(tegra.join("libnvargus.so"), "libargus\n").unwrap();
        std::fs::write(tegra.join("libnvbuf_utils.so.1.0.0"), "nvbuf\n").unwrap();
        std::os::unix::fs::symlink("libnvbuf_utils.so.1.0.0", tegra.join("libnvbuf_utils.so"))
            .unwrap();
        std::fs::create_dir_all(base.join("aarch64/gstreamer-1.0")).unwrap();
        std::fs::write(
            base.join("aarch64/gstreamer-1.0/libgstnvarguscamerasrc.so"),
            "plugin\n",
        )
        .unwrap();
        // NVIDIA's CSV format with L4T's paths (a few of l4t.csv's kinds of line), and a CUDA
        // file the camera must not get.
        std::fs::write(
            base.join("csv/l4t.csv"),
            format!(
                "dev, /dev/nvmap\ndev, /dev/nvhost-ctrl\ndev, /dev/nvhost-vi\n\
                 lib, {TEGRA}/libnvargus.so\nlib, {TEGRA}/libnvbuf_utils.so.1.0.0\n\
                 sym, {TEGRA}/libnvbuf_utils.so\n\
                 lib, /usr/lib/aarch64-linux-gnu/gstreamer-1.0/libgstnvarguscamerasrc.so\n\
                 lib, {TEGRA}/libnot-on-this-jetson.so\n"
            ),
        )
        .unwrap();
        std::fs::write(tegra.join("libcudart.so"), "cuda\n").unwrap();
        std::fs::write(
            base.join("csv/cuda.csv"),
            format!("lib, {TEGRA}/libcudart.so\n"),
        )
        .unwrap();
        let yaml = format!("hostname: jetson\ntype: duckiebot\nconfiguration: DB21J\n{extra_yaml}");
        std::fs::write(base.join("state/robot.yaml"), yaml).unwrap();
        // The daemon runs with the fake /tmp bound over /tmp, where the build's own binary may
        // live (a clone under /tmp): it runs a copy beside the fake root instead.
        std::fs::copy(env!("CARGO_BIN_EXE_dt-agent"), base.join("dt-agent")).unwrap();
        let robot = net.robot("jetson");
        let mut j = Jetson {
            base,
            robot,
            daemon: None,
            _argus: argus,
            _tmp: tmp,
        };
        j.start_daemon();
        j
    }

    fn state(&self) -> PathBuf {
        self.base.join("state")
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("DT_AGENT_ROOT", self.state())
            .env("DT_AGENT_CONFIG", self.state().join("robot.yaml"))
            .env("DT_AGENT_L4T_CSV_DIR", self.base.join("csv"))
            .env(
                "DT_AGENT_CDI_SPEC_DIRS",
                format!(
                    "{}:{}",
                    self.base.join("etc-cdi").display(),
                    self.base.join("run-cdi").display()
                ),
            );
    }

    /// `unshare --mount` with the fake root mounted over the robot's paths, then `args`.
    fn in_robot(&self, args: &[&str]) -> Command {
        let b = self.base.display().to_string();
        let script = format!(
            "mount --bind {b}/dev /dev && mount --bind {b}/tmp /tmp && \
             mount --bind {b}/aarch64 /usr/lib/aarch64-linux-gnu && exec \"$@\""
        );
        let mut cmd = Command::new(support::find_cmd("unshare").unwrap());
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(args);
        self.env(&mut cmd);
        cmd
    }

    fn start_daemon(&mut self) {
        let agent = self.base.join("dt-agent").display().to_string();
        let netns = format!("--net=/run/netns/{}", self.robot.ns);
        let nsenter = support::find_cmd("nsenter").unwrap();
        let child = self
            .in_robot(&[
                nsenter.to_str().unwrap(),
                &netns,
                "--",
                &agent,
                "daemon",
                "--ssh-host-key",
                "/nonexistent",
                "--avahi-services-dir",
                "/nonexistent",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.cli(&["ps"]).status.success() {
            assert!(Instant::now() < deadline, "the daemon did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dt-agent"));
        cmd.args(args).stdin(Stdio::null());
        self.env(&mut cmd);
        cmd.output().unwrap()
    }

    /// A `dt-agent` command seeing the robot's paths (as the daemon does).
    fn cli_in_robot(&self, args: &[&str]) -> Output {
        let agent = self.base.join("dt-agent").display().to_string();
        let mut all = vec![agent.as_str()];
        all.extend_from_slice(args);
        self.in_robot(&all).stdin(Stdio::null()).output().unwrap()
    }

    fn image(&self) -> &'static str {
        let name = "example.com/test/busybox:cdi";
        let mut entries = vec![
            Entry::Dir("bin/", 0o755),
            Entry::File("bin/busybox", 0o755, std::fs::read(BUSYBOX).unwrap()),
            Entry::Dir("etc/", 0o755),
            Entry::File(
                "etc/passwd",
                0o644,
                b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            ),
            Entry::File("etc/group", 0o644, b"root:x:0:\nvideo:x:44:\n".to_vec()),
            Entry::Dir("tmp/", 0o1777),
        ];
        for a in APPLETS {
            let path: &'static str = Box::leak(format!("bin/{a}").into_boxed_str());
            entries.push(Entry::Symlink(path, "busybox"));
        }
        let layout = self.base.join("layout");
        let l = Layout::new(&layout);
        let w = l.image(
            &Platform::host(),
            &[support::images::layer_tar(&entries)],
            &["true"],
        );
        l.finish(&[(name, w.manifest)]);
        let out = self.cli(&["image", "import", layout.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        name
    }
}

impl Drop for Jetson {
    fn drop(&mut self) {
        if let Ok(ps) =
            serde_json::from_slice::<serde_json::Value>(&self.cli(&["ps", "-a", "--json"]).stdout)
        {
            for c in ps.as_array().into_iter().flatten() {
                let _ = self.cli(&["rm", "-f", c["name"].as_str().unwrap_or_default()]);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_db21j_camera_gets_the_l4t_libraries_nodes_and_socket_and_nothing_else() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    let j = Jetson::new(&mut net, "");
    // The daemon made the spec at start: one device per CSV file, and `all`.
    let spec = j.base.join("run-cdi/nvidia-l4t.yaml");
    let text_spec = std::fs::read_to_string(&spec).unwrap();
    let list = j.cli(&["cdi", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "nvidia.com/gpu=all",
            "nvidia.com/gpu=cuda",
            "nvidia.com/gpu=l4t"
        ],
        "{text_spec}"
    );
    assert_eq!(list["devices"][2]["roles"], serde_json::json!(["camera"]));
    assert!(!text_spec.contains("libnot-on-this-jetson"), "{text_spec}");
    if let Some(validator) = std::env::var_os("DTS_CDI_VALIDATOR") {
        let out = Command::new(validator).arg(&spec).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let image = j.image();

    let probe = format!(
        "ls -l /dev/nvmap /dev/nvhost-ctrl /dev/nvhost-vi; \
         cat {TEGRA}/libnvargus.so {TEGRA}/libnvbuf_utils.so \
         /usr/lib/aarch64-linux-gnu/gstreamer-1.0/libgstnvarguscamerasrc.so; \
         test -S /tmp/argus_socket && echo socket-ok; \
         test -e {TEGRA}/libcudart.so || echo no-cuda; \
         test -s /etc/ld.so.cache && echo ldcache-ok; \
         cat /dev/nvmap; cat /dev/nvhost-vi"
    );
    let out = j.cli(&[
        "run",
        "--rm",
        "--device-role",
        "camera",
        image,
        "sh",
        "-c",
        &probe,
    ]);
    let t = text(&out);
    for want in [
        "240,   0",
        "240,   1",
        "240,   2",
        "libargus\n",
        "nvbuf\n",
        "plugin\n",
        "socket-ok",
        "no-cuda",
        "ldcache-ok",
        "No such device",
    ] {
        assert!(t.contains(want), "`{want}` missing:\n{t}");
    }
    assert!(!t.contains("Operation not permitted"), "{t}");

    // The same through a stack's Docker-style `devices:` (via run's --device): granted by
    // camera, refused without it, naming the device and the role that grants it.
    let out = j.cli(&[
        "run",
        "--rm",
        "--device-role",
        "camera",
        "--device",
        "nvidia.com/gpu=l4t",
        image,
        "true",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = j.cli(&[
        "run",
        "--rm",
        "--device",
        "nvidia.com/gpu=l4t",
        image,
        "true",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("nvidia.com/gpu=l4t") && t.contains("camera"),
        "{t}"
    );

    // Not granted: no libraries, no socket, no nodes, and making the node is refused.
    let out = j.cli(&[
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        &format!(
            "ls {TEGRA} /tmp/argus_socket /dev/nvmap; mknod /tmp/nvmap c 240 0 && cat /tmp/nvmap"
        ),
    ]);
    let t = text(&out);
    assert_eq!(t.matches("No such file or directory").count(), 3, "{t}");
    assert!(t.contains("Operation not permitted"), "{t}");
}

/// The CDI specification example's format (JSON, numbers given) and nvidia-ctk's (YAML,
/// numbers read from the node), a malformed spec beside them, and the export.
#[test]
fn vendor_specs_inject_a_bad_one_is_named_and_export_validates() {
    if !can_run() {
        return;
    }
    let mut net = TestNet::new();
    let roles = "devices:\n  vendor:\n    cdi: [vendor.com/device=myDevice, nvidia.com/gpu=ctk]\n  \
                 broken:\n    cdi: [broken.example/x=y]\n";
    let j = Jetson::new(&mut net, roles);
    let image = j.image();
    let lib = j.base.join("aarch64/libVendor.so.0");
    std::fs::write(&lib, "vendor lib\n").unwrap();
    std::fs::write(
        j.base.join("etc-cdi/vendor.json"),
                    r#"{
  "cdiVersion": "0.6.0",
  "kind": "vendor.com/device",
  "devices": [
    {"name": "myDevice", "containerEdits": {
      "deviceNodes": [{"hostPath": "/dev/nvhost-ctrl", "path": "/dev/card1", "type": "c", "major": 240, "minor": 1, "fileMode": 384, "permissions": "rw"}]
    }}
  ],
  "containerEdits": {
    "env": ["FOO=VALID_SPEC"],
    "mounts": [{"hostPath": "/usr/lib/aarch64-linux-gnu/libVendor.so.0", "containerPath": "/usr/lib/libVendor.so.0", "options": ["ro", "nosuid", "nodev", "bind"]}]
  }
}"#
        ,
    )
    .unwrap();
    std::fs::write(
        j.base.join("etc-cdi/nvidia.yaml"),
        "---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\ncontainerEdits:\n  env:\n  - NVIDIA_VISIBLE_DEVICES=void\n\
         devices:\n- name: ctk\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvhost-vi\n",
    )
    .unwrap();
    std::fs::write(
        j.base.join("etc-cdi/broken.yaml"),
        "cdiVersion: 0.6.0\nkind: broken.example/x\ndevices:\n- name: y\n  containerEdits:\n    mounts: [{hostPath: /x, containerPath: relative}]\n",
    )
    .unwrap();

    let out = j.cli(&[
        "run",
        "--rm",
        "--device-role",
        "vendor",
        image,
        "sh",
        "-c",
        "ls -l /dev/card1 /dev/nvhost-vi; cat /usr/lib/libVendor.so.0; env; cat /dev/card1",
    ]);
    let t = text(&out);
    for want in [
        "240,   1",
        "240,   2",
        "vendor lib",
        "FOO=VALID_SPEC",
        "NVIDIA_VISIBLE_DEVICES=void",
        "No such device",
    ] {
        assert!(t.contains(want), "`{want}` missing:\n{t}");
    }
    assert!(!t.contains("Operation not permitted"), "{t}");
    // The broken spec is named with its field; the others still serve.
    let out = j.cli(&["run", "--rm", "--device-role", "broken", image, "true"]);
    let t = text(&out);
    assert_ne!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("broken.yaml")
            && t.contains("devices[0].containerEdits.mounts[0].containerPath"),
        "{t}"
    );
    let out = j.cli(&["cdi", "list"]);
    let t = text(&out);
    assert!(
        t.contains("vendor.com/device=myDevice") && t.contains("not used"),
        "{t}"
    );

    // The export, made where the robot's paths are, is a valid spec with every role that
    // resolves; an external validator (the crate's) checks it too when given.
    let out = j.cli_in_robot(&["cdi", "export", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let path = j.base.join("export.json");
    std::fs::write(&path, &out.stdout).unwrap();
    let spec = dts::cdi::parse_spec(&path, &String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(spec.kind, "duckietown.org/role");
    let camera = spec.devices.iter().find(|d| d.name == "camera").unwrap();
    let e = &camera.container_edits;
    assert!(
        e.device_nodes
            .iter()
            .any(|n| n.path == "/dev/nvmap" && n.major == Some(240))
    );
    assert!(
        e.mounts
            .iter()
            .any(|m| m.container_path == "/tmp/argus_socket")
    );
    assert!(
        e.mounts
            .iter()
            .any(|m| m.container_path == format!("{TEGRA}/libnvargus.so"))
    );
    assert_eq!(e.additional_gids, [44]);
    assert!(!spec.devices.iter().any(|d| d.name == "broken"));
    if let Some(validator) = std::env::var_os("DTS_CDI_VALIDATOR") {
        let out = Command::new(validator).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}
