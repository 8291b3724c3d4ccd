use super::*;

#[test]
fn stubs_copy_parents_and_list_what_they_made() {
    let root = tempfile::tempdir().unwrap();
    let stubs = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::create_dir_all(r.join("proc")).unwrap();
    fs::set_permissions(r.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(r.join("etc/hosts"), "x").unwrap();
    let xattrs = rustix::fs::lsetxattr(
        r.join("etc"),
        "user.dts-test",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    let made = make_stubs(Some(r), stubs.path(), &[]).unwrap();
    assert_eq!(
        made,
        ["/dev", "/sys", "/etc/resolv.conf"].map(PathBuf::from)
    );
    let etc = fs::metadata(stubs.path().join("etc")).unwrap();
    let orig = fs::metadata(r.join("etc")).unwrap();
    assert_eq!(etc.mode(), orig.mode());
    assert_eq!(etc.mtime(), orig.mtime());
    if xattrs {
        let mut v = [0u8; 16];
        let n =
            rustix::fs::lgetxattr(stubs.path().join("etc"), "user.dts-test", &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"kept");
    }
    assert!(stubs.path().join("etc/resolv.conf").is_file());
    assert!(!stubs.path().join("etc/hosts").exists());
    assert!(!stubs.path().join("proc").exists());

    let empty = tempfile::tempdir().unwrap();
    let made = make_stubs(None, empty.path(), &[]).unwrap();
    assert_eq!(
        made,
        [
            "/proc",
            "/dev",
            "/sys",
            "/etc",
            "/etc/hosts",
            "/etc/resolv.conf"
        ]
        .map(PathBuf::from)
    );
}

#[test]
fn spec_has_dockers_sandbox() {
    let mut spec = RunSpec::new(["/bin/sh", "-c", "true"]);
    spec.env = vec!["A=1".into()];
    let user = ExecUser {
        uid: 0,
        gid: 0,
        additional_gids: vec![],
    };
    let s = runtime_spec(&spec, &user, Path::new("/m"), Path::new("/b")).unwrap();
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["hostname"], "buildkitsandbox");
    assert_eq!(v["root"]["path"], "/m");
    assert_eq!(v["root"]["readonly"], false);
    assert_eq!(
        v["process"]["env"],
        serde_json::json!(["A=1", DEFAULT_PATH])
    );
    assert_eq!(v["process"]["noNewPrivileges"], false);
    let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
    assert_eq!(caps.len(), 14);
    assert!(!caps.contains(&serde_json::json!("CAP_SYS_ADMIN")));
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
    let resolv = v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/etc/resolv.conf")
        .unwrap();
    assert_eq!(resolv["source"], "/b/resolv.conf");
    assert!(resolv["options"].as_array().unwrap().contains(&"ro".into()));

    spec.network = Network::None;
    spec.env = vec!["PATH=/x".into()];
    let s = runtime_spec(
        &spec,
        &ExecUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
        },
        Path::new("/m"),
        Path::new("/b"),
    )
    .unwrap();
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["process"]["env"], serde_json::json!(["PATH=/x"]));
    assert!(
        v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network")
    );
    assert_eq!(
        v["process"]["capabilities"]["effective"],
        serde_json::json!([])
    );
}

#[test]
fn sync_calls_return_zero_unless_kept() {
    let user = ExecUser {
        uid: 0,
        gid: 0,
        additional_gids: vec![],
    };
    let mut spec = RunSpec::new(["true"]);
    let s = runtime_spec(&spec, &user, Path::new("/m"), Path::new("/b")).unwrap();
    let v = serde_json::to_value(&s).unwrap();
    let seccomp = &v["linux"]["seccomp"];
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW", "{seccomp}");
    let rules = seccomp["syscalls"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{seccomp}");
    assert_eq!(rules[0]["names"], serde_json::json!(NO_SYNC_SYSCALLS));
    assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO");
    assert_eq!(rules[0]["errnoRet"], 0);
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(
            seccomp["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
    }

    spec.suppress_sync = false;
    let s = runtime_spec(&spec, &user, Path::new("/m"), Path::new("/b")).unwrap();
    let v = serde_json::to_value(&s).unwrap();
    assert!(v["linux"]["seccomp"].is_null(), "{v}");
}
