//! What builds keep of the store's layers outside it, and its removal once the layers go:
//! unpacked snapshots (`build/snapshots/layers`, `flat`), layer listings (`build/views`) and
//! cache records naming a removed layer (`build/cache`). Called by `dts image prune` and
//! `dts image rm` while the store is locked exclusively, so no build of this `DTS_HOME` is
//! running (each holds the store's shared lock) and none of it is mounted.
//!
//! A snapshot is the unpacked copy of a layer, as containerd's snapshotter keeps one per
//! layer: without this, every base a laptop ever built on stayed unpacked (a gigabyte for
//! the Duckietown compilers' image) after the image itself was removed.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::BuildError;
use super::exec::record_layer;
use super::snapshot::WHITEOUTS_MARKER;
use super::view::listing_blob;
use crate::oci::digest::chain_id;
use crate::oci::{ImageConfig, media};
use crate::store::Store;
use crate::util::fs::PathContext;

/// Config blobs are small; this bounds a damaged one.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// What [`prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BuildPruneReport {
    /// Unpacked layers and flattened chains.
    pub snapshots: usize,
    /// Their bytes (file sizes, as `du --apparent-size` counts them).
    pub snapshot_bytes: u64,
    /// Layer listings and cache records of removed layers.
    pub records: usize,
}

/// The layers the store's named images hold: their diff_ids and the chain ids of every prefix
/// (what `flat/` is keyed by).
fn live_layers(store: &Store) -> Result<(BTreeSet<String>, BTreeSet<String>), BuildError> {
    let (mut layers, mut chains) = (BTreeSet::new(), BTreeSet::new());
    for img in store.images()? {
        for d in store.reachable(&img.descriptor)? {
            if d.media_type != media::OCI_CONFIG && d.media_type != media::DOCKER_CONFIG {
                continue;
            }
            let bytes = store.read_blob(&d.digest, MAX_CONFIG_BYTES)?;
            let what = format!("config {}", d.digest);
            let Ok(config) = ImageConfig::parse(&what, &bytes) else {
                continue;
            };
            let ids = &config.rootfs.diff_ids;
            for (n, id) in ids.iter().enumerate() {
                layers.insert(id.hex().to_string());
                if let Some(c) = chain_id(&ids[..=n]) {
                    chains.insert(c.hex().to_string());
                }
            }
        }
    }
    Ok((layers, chains))
}

/// Removes from `state_dir` (`$DTS_HOME/build`) what only layers no longer in `store` used.
/// The caller holds the store's exclusive lock.
pub fn prune(state_dir: &Path, store: &Store) -> Result<BuildPruneReport, BuildError> {
    let (layers, chains) = live_layers(store)?;
    let mut report = BuildPruneReport::default();
    let snapshots = state_dir.join("snapshots");
    // `layers/<hex>` and its `<hex>.whiteouts` marker; `flat/<chain hex>`.
    for (dir, live) in [("layers", &layers), ("flat", &chains)] {
        let dir = snapshots.join(dir);
        for (name, path) in entries(&dir)? {
            let hex = name.strip_suffix(WHITEOUTS_MARKER).unwrap_or(&name);
            if live.contains(hex) || !is_hex_digest(hex) {
                continue;
            }
            if path.is_dir() {
                report.snapshot_bytes += apparent_size(&path);
                fs::remove_dir_all(&path).at("remove", &path)?;
                report.snapshots += 1;
            } else {
                fs::remove_file(&path).at("remove", &path)?;
            }
        }
    }
    let views = state_dir.join("views");
    for (name, path) in entries(&views)? {
        let gone = listing_blob(&name).is_some_and(|d| !store.has_blob(&d));
        if gone {
            fs::remove_file(&path).at("remove", &path)?;
            report.records += 1;
        }
    }
    let cache = state_dir.join("cache");
    for (_, path) in entries(&cache)? {
        if record_layer_gone(store, &path) {
            fs::remove_file(&path).at("remove", &path)?;
            report.records += 1;
        }
    }
    Ok(report)
}

/// A build cache record whose layer blob is gone (a miss for every build from now on).
fn record_layer_gone(store: &Store, path: &Path) -> bool {
    record_layer(path).is_some_and(|l| !store.has_blob(&l.descriptor.digest))
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A directory's entries by name; none when it does not exist (no build has made it).
fn entries(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, BuildError> {
    let listing = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.at("list", dir)?,
    };
    let mut out = Vec::new();
    for e in listing {
        let e = e.at("list", dir)?;
        if let Some(name) = e.file_name().to_str() {
            out.push((name.to_string(), e.path()));
        }
    }
    Ok(out)
}

/// The bytes of the files under `dir` (best effort: what cannot be read counts nothing).
fn apparent_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(listing) = fs::read_dir(&d) else {
            continue;
        };
        for e in listing.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::config::RootFs;
    use crate::oci::{Descriptor, Digest, Manifest, Reference};

    /// An image named `name` of uncompressed layers `layers` (their diff_ids are their digests).
    fn image(store: &Store, name: &str, layers: &[&[u8]]) -> Vec<Digest> {
        let blobs: Vec<Digest> = layers.iter().map(|l| store.put_blob(l).unwrap()).collect();
        let cfg = ImageConfig {
            architecture: "arm64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                diff_ids: blobs.clone(),
                ..Default::default()
            },
            ..Default::default()
        }
        .to_canonical_json();
        let c = store.put_blob(&cfg).unwrap();
        let m = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(media::OCI_CONFIG, c, cfg.len() as u64),
            layers: blobs
                .iter()
                .zip(layers)
                .map(|(d, l)| Descriptor::new(media::OCI_LAYER, d.clone(), l.len() as u64))
                .collect(),
            subject: None,
            annotations: Default::default(),
        };
        let bytes = crate::oci::json::canonical(&m);
        let d = store.put_blob(&bytes).unwrap();
        let desc = Descriptor::new(media::OCI_MANIFEST, d, bytes.len() as u64);
        store
            .set_names(&[(Reference::parse(name).unwrap(), desc)])
            .unwrap();
        blobs
    }

    fn record(layer: &Digest) -> String {
        format!(
            r#"{{"layer":{{"descriptor":{{"mediaType":"{}","digest":"{layer}","size":1}},"diff_id":"{layer}"}}}}"#,
            media::OCI_LAYER
        )
    }

    #[test]
    fn what_only_removed_layers_used_goes_with_them() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let kept = image(&store, "demo/kept:1", &[b"base", b"top"]);
        let gone = image(&store, "demo/gone:1", &[b"base", b"other"]);
        let state = t.path().join("build");
        let snap = state.join("snapshots");
        let chain = |ids: &[Digest]| chain_id(ids).unwrap().hex().to_string();
        let dirs = [
            snap.join("layers").join(kept[0].hex()),
            snap.join("layers").join(kept[1].hex()),
            snap.join("layers").join(gone[1].hex()),
            snap.join("flat").join(chain(&kept)),
            snap.join("flat").join(chain(&gone)),
            snap.join("tmp/run-1-0-0.tmp"),
        ];
        for d in &dirs {
            fs::create_dir_all(d.join("usr")).unwrap();
            fs::write(d.join("usr/f"), b"12345").unwrap();
        }
        let marker = snap
            .join("layers")
            .join(format!("{}.whiteouts", gone[1].hex()));
        fs::write(&marker, b"").unwrap();
        fs::create_dir_all(state.join("views")).unwrap();
        fs::create_dir_all(state.join("cache")).unwrap();
        let view = |d: &Digest| state.join("views").join(format!("{}.json.zst", d.hex()));
        for d in [&kept[1], &gone[1]] {
            fs::write(view(d), b"listing").unwrap();
        }
        fs::write(state.join("cache/a.json"), record(&kept[1])).unwrap();
        fs::write(state.join("cache/b.json"), record(&gone[1])).unwrap();

        // Nothing is removed while both images are named.
        let none = store.prune_and(|s| prune(&state, s)).unwrap().1.unwrap();
        assert_eq!(none, BuildPruneReport::default());

        store
            .remove_name(&Reference::parse("demo/gone:1").unwrap())
            .unwrap();
        let (blobs, report) = store.prune_and(|s| prune(&state, s)).unwrap();
        assert_eq!(blobs.blobs, 3, "config, manifest, `other`");
        assert_eq!(
            report.unwrap(),
            BuildPruneReport {
                snapshots: 2,
                snapshot_bytes: 10,
                records: 2,
            }
        );
        for (d, live) in dirs.iter().zip([true, true, false, true, false, true]) {
            assert_eq!(d.exists(), live, "{}", d.display());
        }
        assert!(!marker.exists());
        assert!(view(&kept[1]).exists() && !view(&gone[1]).exists());
        assert!(state.join("cache/a.json").exists() && !state.join("cache/b.json").exists());
    }

    #[test]
    fn a_home_without_build_state_prunes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let r = prune(&t.path().join("build"), &store).unwrap();
        assert_eq!(r, BuildPruneReport::default());
    }

    #[test]
    fn a_state_directory_that_cannot_be_read_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let state = t.path().join("build");
        fs::create_dir_all(state.join("snapshots")).unwrap();
        fs::write(state.join("snapshots/layers"), b"not a directory").unwrap();
        let e = prune(&state, &store).unwrap_err().to_string();
        assert!(e.contains("snapshots/layers"), "{e}");
    }
}
