//! The spec parser's accepted formats and error paths, and the registry's directory rules.

use super::*;

/// A spec shaped like the CDI specification's own example (`vendor.com/device`, JSON; SPEC.md):
/// numbers, modes and permissions given, spec-wide edits with a tmpfs mount and a hook.
const README_EXAMPLE: &str = r#"{
  "cdiVersion": "0.6.0",
  "kind": "vendor.com/device",
  "devices": [
    {
      "name": "myDevice",
      "containerEdits": {
        "deviceNodes": [
          {"hostPath": "/vendor/dev/card1", "path": "/dev/card1", "type": "c", "major": 25, "minor": 25, "fileMode": 384, "permissions": "rw", "uid": 1000, "gid": 1000},
          {"path": "/dev/card-render1", "type": "c", "major": 25, "minor": 25, "fileMode": 384, "permissions": "rwm", "uid": 1000, "gid": 1000}
        ]
      }
    }
  ],
  "containerEdits": {
    "env": ["FOO=VALID_SPEC", "BAR=BARVALUE1"],
    "deviceNodes": [
      {"path": "/dev/vendorctl", "type": "b", "major": 25, "minor": 25, "fileMode": 384, "permissions": "rw", "uid": 1000, "gid": 1000}
    ],
    "mounts": [
      {"hostPath": "/bin/vendorBin", "containerPath": "/bin/vendorBin"},
      {"hostPath": "/usr/lib/libVendor.so.0", "containerPath": "/usr/lib/libVendor.so.0"},
      {"hostPath": "tmpfs", "containerPath": "/tmp/data", "type": "tmpfs", "options": ["nosuid","strictatime","mode=755","size=65536k"]}
    ],
    "hooks": [
      {"hookName": "createContainer", "path": "/bin/vendor-hook"},
      {"hookName": "startContainer", "path": "/usr/bin/ls", "args": ["/dev"]}
    ]
  }
}"#;

/// A spec in the shape `nvidia-ctk cdi generate` writes (YAML, nodes without numbers, spec-wide
/// mounts and `nvidia-ctk hook` createContainer hooks; paths and versions illustrative).
const NVIDIA_CTK_YAML: &str = r#"---
cdiVersion: 0.5.0
containerEdits:
  deviceNodes:
  - path: /dev/nvidia-modeset
  - path: /dev/nvidia-uvm
  - path: /dev/nvidiactl
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  hooks:
  - args:
    - nvidia-ctk
    - hook
    - update-ldcache
    - --folder
    - /usr/lib/x86_64-linux-gnu
    hookName: createContainer
    path: /usr/bin/nvidia-ctk
  - args:
    - nvidia-ctk
    - hook
    - create-symlinks
    - --link
    - libnvidia-allocator.so.535.104.05::/usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so
    hookName: createContainer
    path: /usr/bin/nvidia-ctk
  mounts:
  - containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05
    hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05
    options:
    - ro
    - nosuid
    - nodev
    - bind
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/dri/card1
  name: "0"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: all
kind: nvidia.com/gpu
"#;

#[test]
fn published_formats_parse() {
    // A stray key inside a hook: strict parsing names it.
    let stray = README_EXAMPLE.replace(
        r#"{"hookName": "createContainer","#,
        r#"{"createContainer": "x", "hookName": "createContainer","#,
    );
    let e = parse_spec(Path::new("/etc/cdi/vendor.json"), &stray).unwrap_err();
    assert!(e.field.contains("hooks[0]"), "{e}");
    assert!(e.message.contains("createContainer"), "{e}");
    let s = parse_spec(Path::new("/etc/cdi/vendor.json"), README_EXAMPLE).unwrap();
    assert_eq!(s.container_edits.hooks[1].args, ["/dev"]);
    assert_eq!(s.kind, "vendor.com/device");
    assert_eq!(
        s.devices[0].container_edits.device_nodes[0].file_mode,
        Some(384)
    );
    assert_eq!(s.container_edits.mounts[2].typ.as_deref(), Some("tmpfs"));

    let s = parse_spec(Path::new("/var/run/cdi/nvidia.yaml"), NVIDIA_CTK_YAML).unwrap();
    assert_eq!(s.devices.len(), 2);
    assert_eq!(s.devices[0].name, "0");
    assert_eq!(s.container_edits.hooks.len(), 2);
}

#[test]
fn names() {
    let n = QualifiedName::parse("nvidia.com/gpu=all").unwrap();
    assert_eq!(
        (n.vendor.as_str(), n.class.as_str(), n.name.as_str()),
        ("nvidia.com", "gpu", "all")
    );
    assert_eq!(n.to_string(), "nvidia.com/gpu=all");
    assert!(QualifiedName::parse("duckietown.org/role=wheel-encoders").is_ok());
    assert!(QualifiedName::parse("vendor.com/class=MIG-1:0").is_ok());
    for bad in [
        "nvidia.com/gpu",
        "gpu=all",
        "nvidia.com/gpu=",
        "1vendor/gpu=all",
        "nvidia.com/g.pu=all",
        "nvidia.com/gpu=-x",
    ] {
        assert!(QualifiedName::parse(bad).is_err(), "{bad}");
    }
    assert!(is_qualified_name("nvidia.com/gpu=all"));
    assert!(!is_qualified_name("/dev/video0:/dev/video0"));
}

#[test]
fn error_paths_name_the_field() {
    let f = Path::new("/etc/cdi/bad.yaml");
    let base = "cdiVersion: 0.6.0\nkind: vendor.com/dev\ndevices:\n- name: a\n  containerEdits:\n    env: [A=1]\n";
    for (text, field, needle) in [
        (
            base.replace("0.6.0", "9.9.9"),
            "cdiVersion",
            "not a CDI version",
        ),
        (
            base.replace("vendor.com/dev", "vendor.com"),
            "kind",
            "vendor.com/class",
        ),
        (
            base.replace("name: a", "name: -a"),
            "devices[0].name",
            "start and end",
        ),
        (
            base.replace("A=1", "A"),
            "devices[0].containerEdits.env[0]",
            "K=V",
        ),
        (
            base.replace("env: [A=1]", "mounts: [{hostPath: /x, containerPath: rel}]"),
            "devices[0].containerEdits.mounts[0].containerPath",
            "absolute",
        ),
        (
            base.replace("env: [A=1]", "deviceNodes: [{path: /dev/x, type: q}]"),
            "devices[0].containerEdits.deviceNodes[0].type",
            "c, b, u, p",
        ),
        (
            base.replace("env: [A=1]", "hooks: [{hookName: beforeAll, path: /bin/x}]"),
            "devices[0].containerEdits.hooks[0].hookName",
            "not an OCI hook",
        ),
        (
            base.replace("env: [A=1]", "envs: [A=1]"),
            "devices[0].containerEdits",
            "unknown field `envs`",
        ),
        (
            base.replace("kind: vendor.com/dev\n", ""),
            "(file)",
            "missing field `kind`",
        ),
        (
            format!("{base}- name: a\n  containerEdits:\n    env: [B=1]\n"),
            "devices[1].name",
            "twice",
        ),
        ("{ not yaml".to_string(), "(file)", ""),
    ] {
        let e = parse_spec(f, &text).unwrap_err();
        assert_eq!(e.field, field, "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
        assert!(
            e.to_string().starts_with("CDI spec /etc/cdi/bad.yaml: "),
            "{e}"
        );
    }
}

#[test]
fn registry_reads_dirs_in_order_and_keeps_the_good_files() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc-cdi");
    let run = tmp.path().join("run-cdi");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let spec = |kind: &str, dev: &str, env: &str| {
        format!(
            "cdiVersion: 0.6.0\nkind: {kind}\ndevices:\n- name: {dev}\n  containerEdits:\n    env: [{env}]\n"
        )
    };
    std::fs::write(
        etc.join("a.yaml"),
        spec("vendor.com/dev", "one", "FROM=etc"),
    )
    .unwrap();
    std::fs::write(etc.join("b.json"), r#"{"cdiVersion":"0.6.0","kind":"vendor.com/dev","devices":[{"name":"two","containerEdits":{"env":["X=1"]}}]}"#).unwrap();
    std::fs::write(etc.join("broken.yaml"), "cdiVersion: 0.6.0\nkind: x\n").unwrap();
    std::fs::write(etc.join("ignored.txt"), "not a spec").unwrap();
    std::fs::write(
        run.join("a.yaml"),
        spec("vendor.com/dev", "one", "FROM=run"),
    )
    .unwrap();
    // Two files of one directory defining one device: neither is used.
    std::fs::write(run.join("c1.yaml"), spec("other.org/x", "d", "A=1")).unwrap();
    std::fs::write(run.join("c2.yaml"), spec("other.org/x", "d", "A=2")).unwrap();
    let reg = Registry::load(&[etc.clone(), run.clone(), tmp.path().join("absent")]);
    assert_eq!(reg.devices["vendor.com/dev=one"].edits.env, ["FROM=run"]);
    assert_eq!(reg.devices["vendor.com/dev=two"].edits.env, ["X=1"]);
    assert!(!reg.devices.contains_key("other.org/x=d"));
    assert!(reg.has_kind("vendor.com/dev"));
    assert_eq!(reg.errors.len(), 2, "{:?}", reg.errors);
    assert!(
        reg.errors[0].file.ends_with("broken.yaml"),
        "{:?}",
        reg.errors
    );
    assert!(
        reg.errors[1].message.contains("neither is used"),
        "{:?}",
        reg.errors
    );
}
