use super::*;

#[test]
fn meta_versions_and_features_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let s = AgentStore::open(&root).unwrap();
    assert!(root.join("meta.json").is_file());
    assert!(s.images().unwrap().is_empty());
    drop(s);
    let meta = root.join("meta.json");
    std::fs::write(&meta, br#"{"version":2}"#).unwrap();
    let e = AgentStore::open(&root).err().unwrap();
    assert!(e.to_string().contains("format version 2"), "{e}");
    std::fs::write(&meta, br#"{"version":1,"incompat":["fancy"]}"#).unwrap();
    let e = AgentStore::open(&root).err().unwrap();
    assert!(e.to_string().contains("fancy"), "{e}");
    std::fs::write(&meta, br#"{"version":1,"ro_compat":["fancy"]}"#).unwrap();
    let s = AgentStore::open(&root).unwrap();
    assert!(s.gc().is_err(), "read-only compatible: no writes");
    assert!(s.fsck().unwrap().is_clean());
}

#[test]
fn no_space_is_recognised_through_the_chain() {
    let e = io_err(
        "write",
        Path::new("/x"),
        io::Error::from_raw_os_error(libc::ENOSPC),
    );
    assert!(is_no_space(&e));
    let e = io_err("write", Path::new("/x"), io::Error::other("boom"));
    assert!(!is_no_space(&e));
}
