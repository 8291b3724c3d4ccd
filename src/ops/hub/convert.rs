//! What the laptop puts on a lab hub: each layer recompressed with zstd, and a manifest naming
//! those blobs. The hub's blobs cross the laptop's uplink once per rollout, so their size is
//! the rollout's size: a store's gzip layers are about a third larger than the zstd stream the
//! SSH transfer sends (the bench workload's ELF files: 123 MB gzip against 92 MB), and a hub
//! holding gzip would make a fleet cost more uplink than one robot. The layer's tar is
//! unchanged, so its diff_id, the robot's check of what it fetched, is the same.
//!
//! A converted blob is made once and remembered by the store (`zstd/<blob hex>` holds the zstd
//! blob's digest and size); the blob itself is an ordinary store blob that no name reaches, so
//! `dts image prune` may remove it, and the next push makes it again.
//!
//! ```text
//! $DTS_HOME/store/zstd/<hex of the layer blob>    "sha256:<hex of its zstd blob> <size>\n"
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::oci::manifest::Compression;
use crate::oci::{Descriptor, Digest, Manifest, media};
use crate::store::{MAX_MANIFEST_BYTES, Store};
use crate::util::fs::atomic_write;

/// zstd level of a hub layer. Compressing runs ahead of the upload, so it must outpace the
/// uplink by far while the robots' imports share the laptop's cores: level 12 compresses the
/// bench workload's ELF files at ~25 MB/s on one core (a 20 Mbit/s uplink carries 2.5 MB/s).
pub const LEVEL: i32 = 12;
/// Its window (log2 bytes): 16 MiB, what the smallest robots' decoders are given
/// (`wire::SMALL_ROBOT_WINDOW_LOG`), since one blob serves every robot of a fleet.
pub const WINDOW_LOG: u32 = crate::wire::SMALL_ROBOT_WINDOW_LOG;

/// The zstd blob of `layer`, a layer blob of `store`: `layer` itself when it is zstd already,
/// else the remembered conversion, else a new one (blocking: decompresses and compresses the
/// whole layer).
pub fn zstd_layer(store: &Store, layer: &Descriptor) -> Result<Descriptor> {
    let compression = match Compression::of_media_type(&layer.media_type) {
        Some(Compression::Zstd) => return Ok(layer.clone()),
        Some(c) => c,
        None => anyhow::bail!(
            "layer {} has media type `{}`, not a layer this hub push can recompress",
            layer.digest,
            layer.media_type
        ),
    };
    let record = record_path(store, &layer.digest);
    if let Some(d) = remembered(store, &record) {
        return Ok(d);
    }
    let blob = store.open_blob(&layer.digest)?;
    let path = store.blob_path(&layer.digest);
    let mut tar = compression
        .decoder(std::io::BufReader::with_capacity(1 << 20, blob))
        .with_context(|| format!("reading {}", path.display()))?;
    let writer = store.writer()?;
    let tmp = writer.temp_path().to_path_buf();
    let mut enc = zstd::stream::write::Encoder::new(writer, LEVEL)
        .and_then(|mut e| {
            e.window_log(WINDOW_LOG)?;
            e.long_distance_matching(true)?;
            Ok(e)
        })
        .with_context(|| format!("starting zstd for {}", tmp.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = tar
            .read(&mut buf)
            .with_context(|| format!("decompressing {}", path.display()))?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    let writer = enc
        .finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    let (digest, size) = writer.commit(None)?;
    let line = format!("{digest} {size}\n");
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    atomic_write(&record, line.as_bytes())?;
    Ok(Descriptor::new(media::OCI_LAYER_ZSTD, digest, size))
}

fn record_path(store: &Store, layer: &Digest) -> PathBuf {
    store.root().join("zstd").join(layer.hex())
}

/// A remembered conversion whose blob the store still holds.
fn remembered(store: &Store, record: &std::path::Path) -> Option<Descriptor> {
    let line = std::fs::read_to_string(record).ok()?;
    let (digest, size) = line.trim().split_once(' ')?;
    let digest: Digest = digest.parse().ok()?;
    let size: u64 = size.parse().ok()?;
    let on_disk = std::fs::metadata(store.blob_path(&digest)).ok()?.len();
    (on_disk == size).then(|| Descriptor::new(media::OCI_LAYER_ZSTD, digest, size))
}

/// The manifest the hub gets for `manifest` (a manifest of `store`) whose layers `converted`
/// maps (laptop blob → hub blob): an OCI manifest (a Docker one is converted, as skopeo does:
/// its config's bytes are the same) naming the zstd blobs, and the original blobs of layers
/// that were not converted. Stored in `store` (no name reaches it) and returned.
pub fn hub_manifest(
    store: &Store,
    manifest: &Digest,
    converted: &HashMap<Digest, Descriptor>,
) -> Result<Descriptor> {
    let bytes = store.read_blob(manifest, MAX_MANIFEST_BYTES)?;
    let mut m: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("manifest {manifest} in the store"))?;
    m.media_type = Some(media::OCI_MANIFEST.to_string());
    if m.config.media_type == media::DOCKER_CONFIG {
        m.config.media_type = media::OCI_CONFIG.to_string();
    }
    for l in &mut m.layers {
        match converted.get(&l.digest) {
            Some(z) => {
                l.media_type = z.media_type.clone();
                l.digest = z.digest.clone();
                l.size = z.size;
            }
            None => {
                if let Some(c) = Compression::of_media_type(&l.media_type)
                    && l.media_type != media::DOCKER_FOREIGN_LAYER
                {
                    l.media_type = c.oci_media_type().to_string();
                }
            }
        }
    }
    let json = serde_json::to_vec(&m).context("serialising the hub's manifest")?;
    let digest = store.put_blob(&json)?;
    Ok(Descriptor::new(
        media::OCI_MANIFEST,
        digest,
        json.len() as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip layer of `files` (name, content) in `store`.
    fn gzip_layer(store: &Store, files: &[(&str, &[u8])]) -> (Descriptor, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let d = store.put_blob(&gz).unwrap();
        (
            Descriptor::new(media::DOCKER_LAYER_GZIP, d, gz.len() as u64),
            Digest::of(&tar),
        )
    }

    #[test]
    fn a_gzip_layer_becomes_the_same_tar_in_zstd_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let text = b"lane_filter gain 1.0\n".repeat(5000);
        let (layer, diff_id) = gzip_layer(&store, &[("a.txt", &text), ("b.txt", b"b")]);
        let z = zstd_layer(&store, &layer).unwrap();
        assert_eq!(z.media_type, media::OCI_LAYER_ZSTD);
        let blob = store.read_blob(&z.digest, 1 << 30).unwrap();
        assert_eq!(blob.len() as u64, z.size);
        let tar = zstd::decode_all(&blob[..]).unwrap();
        assert_eq!(Digest::of(&tar), diff_id, "the same tar: the same diff_id");
        // Remembered: the same blob, not made again.
        let before = std::fs::metadata(store.blob_path(&z.digest))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(zstd_layer(&store, &layer).unwrap(), z);
        let after = std::fs::metadata(store.blob_path(&z.digest))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        // A zstd layer is pushed as it is.
        assert_eq!(zstd_layer(&store, &z).unwrap(), z);
        // A pruned conversion is made again.
        std::fs::remove_file(store.blob_path(&z.digest)).unwrap();
        assert_eq!(zstd_layer(&store, &layer).unwrap(), z);
        // Not a layer: refused, naming it.
        let cfg = Descriptor::new(media::OCI_CONFIG, layer.digest.clone(), layer.size);
        let e = zstd_layer(&store, &cfg).unwrap_err().to_string();
        assert!(e.contains(&layer.digest.to_string()), "{e}");
    }

    #[test]
    fn the_hub_manifest_is_oci_and_names_the_zstd_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (big, _) = gzip_layer(&store, &[("big", &[7u8; 100_000])]);
        let (small, _) = gzip_layer(&store, &[("small", b"s")]);
        let config = store.put_blob(b"{}").unwrap();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": {"mediaType": media::DOCKER_CONFIG, "digest": config, "size": 2},
            "layers": [big, small],
        });
        let md = store.put_blob(&serde_json::to_vec(&m).unwrap()).unwrap();
        let z = zstd_layer(&store, &big).unwrap();
        let converted: HashMap<Digest, Descriptor> = [(big.digest.clone(), z.clone())].into();
        let hub = hub_manifest(&store, &md, &converted).unwrap();
        let out: Manifest =
            serde_json::from_slice(&store.read_blob(&hub.digest, 1 << 20).unwrap()).unwrap();
        assert_eq!(out.media_type.as_deref(), Some(media::OCI_MANIFEST));
        assert_eq!(out.config.media_type, media::OCI_CONFIG);
        assert_eq!(out.config.digest, config);
        assert_eq!(out.layers[0], z);
        assert_eq!(out.layers[1].digest, small.digest);
        assert_eq!(out.layers[1].media_type, media::OCI_LAYER_GZIP);
        assert_eq!(
            hub.size,
            store.read_blob(&hub.digest, 1 << 20).unwrap().len() as u64
        );
    }
}
