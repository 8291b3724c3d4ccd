//! Store behaviour: verified commits, names, completeness, prune, crash leftovers.

use super::*;
use crate::oci::media;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("store")).unwrap();
    (dir, s)
}

fn image(s: &Store, layer: &[u8]) -> Descriptor {
    let l = s.put_blob(layer).unwrap();
    let cfg = ImageConfig {
        architecture: "arm64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    let cfg = cfg.to_canonical_json();
    let c = s.put_blob(&cfg).unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(media::OCI_CONFIG, c, cfg.len() as u64),
        layers: vec![Descriptor::new(media::OCI_LAYER, l, layer.len() as u64)],
        subject: None,
        annotations: Default::default(),
    };
    let bytes = crate::oci::json::canonical(&m);
    let d = s.put_blob(&bytes).unwrap();
    Descriptor::new(media::OCI_MANIFEST, d, bytes.len() as u64)
}

#[test]
fn commit_verifies_and_publishes() {
    let (_d, s) = store();
    let want = Digest::of(b"hello");
    let mut w = s.writer().unwrap();
    w.write_all(b"hello").unwrap();
    assert!(!s.has_blob(&want), "nothing is visible before commit");
    assert_eq!(w.commit(Some((&want, 5))).unwrap(), (want.clone(), 5));
    assert_eq!(fs::read(s.blob_path(&want)).unwrap(), b"hello");

    let mut w = s.writer().unwrap();
    w.write_all(b"evil").unwrap();
    let tmp = w.temp_path().to_path_buf();
    let e = w.commit(Some((&Digest::of(b"good"), 4))).unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(!tmp.exists(), "a refused blob leaves no temp file");
    assert!(!s.has_blob(&Digest::of(b"evil")));
    assert!(!s.has_blob(&Digest::of(b"good")));

    let mut w = s.writer().unwrap();
    w.write_all(b"short").unwrap();
    let e = w.commit(Some((&Digest::of(b"short"), 6))).unwrap_err();
    assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
}

#[test]
fn dropped_writers_and_dead_owners_leave_nothing() {
    let (dir, s) = store();
    let mut w = s.writer().unwrap();
    w.write_all(b"partial").unwrap();
    drop(w);
    assert_eq!(fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);
    // A temp file of a process that no longer exists (pid 0 is never a user process).
    fs::write(s.root().join("ingest/in-999999999-0-0.tmp"), b"x").unwrap();
    drop(s);
    let s = Store::open(&dir.path().join("store")).unwrap();
    assert_eq!(fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);
}

#[test]
fn names_point_at_complete_images_only() {
    let (_d, s) = store();
    let img = image(&s, b"layer-a");
    let name = Reference::parse("duckietown/dt-core:daffy").unwrap();
    s.set_names(&[(name.clone(), img.clone())]).unwrap();
    assert_eq!(s.get(&name).unwrap().descriptor, img);
    assert_eq!(s.images().unwrap().len(), 1);
    assert_eq!(s.platforms(&img).unwrap(), vec![Platform::arm64()]);

    // Re-pointing a name replaces it.
    let img2 = image(&s, b"layer-b");
    s.set_names(&[(name.clone(), img2.clone())]).unwrap();
    assert_eq!(s.images().unwrap().len(), 1);
    assert_eq!(s.get(&name).unwrap().descriptor, img2);

    // An image whose layer is missing cannot be named.
    let broken = image(&s, b"layer-c");
    fs::remove_file(s.blob_path(&Digest::of(b"layer-c"))).unwrap();
    let e = s
        .set_names(&[(Reference::parse("x").unwrap(), broken)])
        .unwrap_err();
    assert!(matches!(e, StoreError::MissingBlob(_)), "{e}");

    assert!(s.remove_name(&name).unwrap());
    assert!(!s.remove_name(&name).unwrap());
    assert!(matches!(s.get(&name), Err(StoreError::NoSuchImage(_))));
}

#[test]
fn prune_keeps_what_names_reach() {
    let (_d, s) = store();
    let keep = image(&s, b"keep");
    let _drop = image(&s, b"drop");
    s.set_names(&[(Reference::parse("keep").unwrap(), keep.clone())])
        .unwrap();
    let before: Vec<_> = s.reachable(&keep).unwrap();
    let report = s.prune().unwrap();
    assert_eq!(report.blobs, 2, "the other image's layer and manifest");
    for d in before {
        assert!(s.has_blob(&d.digest));
    }
    assert!(!s.has_blob(&Digest::of(b"drop")));
    // The shared config stays.
    s.check_complete(&keep).unwrap();
}

#[test]
fn refuses_newer_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    drop(Store::open(&root).unwrap());
    fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"9.0.0"}"#,
    )
    .unwrap();
    let e = Store::open(&root).err().unwrap();
    assert!(e.to_string().contains("upgrade dts"), "{e}");
}

#[test]
fn concurrent_writers_of_one_blob_agree() {
    let (_d, s) = store();
    let s = std::sync::Arc::new(s);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.put_blob(&vec![7u8; 1 << 20]).unwrap())
        })
        .collect();
    let digests: BTreeSet<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(digests.len(), 1);
    assert_eq!(fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);
}
