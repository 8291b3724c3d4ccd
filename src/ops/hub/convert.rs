//! What the laptop puts on a lab hub: each layer recompressed with zstd and cut into parts,
//! and a manifest naming those blobs. The hub's blobs cross the laptop's uplink once per
//! rollout, so their size is the rollout's size: a store's gzip layers are about a third larger
//! than the zstd stream the SSH transfer sends (the bench workload's ELF files: 123 MB gzip
//! against 92 MB), and a hub holding gzip would make a fleet cost more uplink than one robot.
//!
//! **Parts.** Robots fetch a blob only once the hub has it whole, so a 300 MB base layer pushed
//! as one blob would keep every robot idle for the whole upload and then take as long again to
//! download. Cut into parts of about [`PART_BYTES`] of tar at entry boundaries, each part
//! ending with the tar's two zero blocks (so every part is a valid layer, and the hub's image a
//! valid image with the same files), robots fetch part k while the laptop uploads part k+1:
//! a rollout takes the uplink time of the whole set plus one part. The robot joins the parts
//! back into the layer's exact tar (wire 2.8, `HubBlob::parts`) and checks its diff_id.
//!
//! A conversion is made once per zstd window and part size and remembered by the store
//! (`zstd/<blob hex>-w<window log>-p<part MiB>`, the [`HubLayer`] as JSON); its blobs are
//! ordinary store blobs that no name reaches, so `dts image prune` may remove them, and the
//! next push makes them again.
//!
//! ```text
//! $DTS_HOME/store/zstd/<hex of the layer blob>-w26-p64   {"tar_size": …, "parts": [{digest, size, tar_size, diff_id}, …]}
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::oci::manifest::Compression;
use crate::oci::{Descriptor, Digest, Manifest, media};
use crate::store::{BlobWriter, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Store};
use crate::util::fs::atomic_write;
use crate::util::read_full;

/// zstd level of a hub layer. The whole layer is compressed before its first part is pushed
/// (robots need every part's digest), so it must be fast next to the uplink: level 12
/// compresses the bench workload's ELF files at ~25 MB/s on one core, 5% smaller than level 9,
/// within 1% of 19.
pub const LEVEL: i32 = 12;
/// Tar bytes per part (a part ends at the first entry boundary past this): ~16 MB of zstd for
/// real files, 6.5 s on a 20 Mbit/s link, which is how far robots trail the upload (a rollout
/// takes the upload plus one part's download). Each part is a zstd frame of its own, which
/// starts without history, and its window ([`window_log`]) can cover it whole. Measured on the
/// bench workload's 310 MB of ELF files at level 12 with long-distance matching (bytes of all
/// parts): 32 MiB parts with a 16 MiB window 85.3 MB, with a 32 MiB window 82.8 MB; 64 MiB
/// parts with 16 MiB 83.5 MB, with 64 MiB 80.4 MB; one frame with a 128 MiB window 75.6 MB —
/// and the hub's bytes are the rollout's uplink bytes. `DTS_HUB_PART_MIB` sets another size
/// (the tests make small layers go in parts with it).
pub const PART_BYTES: u64 = 64 << 20;

/// [`PART_BYTES`], or `DTS_HUB_PART_MIB` MiB (1 to 1024).
fn part_bytes() -> u64 {
    std::env::var("DTS_HUB_PART_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|m| (1..=1024).contains(m))
        .map_or(PART_BYTES, |m| m << 20)
}
/// The zstd window (log2 bytes) of the parts made for robots that decode windows up to
/// `robots_max` (the smallest `window_log_max` of their hellos: 16 MiB on a 1 GB Pi, up to
/// 128 MiB on larger robots): as large as they take, no larger than a part needs (a window
/// past the frame's content buys nothing and makes every decoder allocate it).
pub fn window_log(robots_max: u32) -> u32 {
    window_for(robots_max, part_bytes())
}

fn window_for(robots_max: u32, part_bytes: u64) -> u32 {
    let part_log = 64 - part_bytes.saturating_sub(1).leading_zeros();
    robots_max
        .min(part_log)
        .clamp(crate::wire::MIN_WINDOW_LOG, crate::wire::LEGACY_WINDOW_LOG)
}

/// The tar's end: two zero blocks.
const TAR_END: [u8; 1024] = [0; 1024];

/// A layer as the hub gets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubLayer {
    /// The layer's tar length.
    pub tar_size: u64,
    /// Its parts, in order; one part is the whole layer.
    pub parts: Vec<Part>,
}

/// One part: a zstd blob of a valid tar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The blob.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
    /// Its tar's length (with the closing zero blocks).
    pub tar_size: u64,
    /// Its tar's digest (the part's diff_id as a layer of the hub's image).
    pub diff_id: Digest,
}

impl Part {
    /// The part as a layer descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(media::OCI_LAYER_ZSTD, self.digest.clone(), self.size)
    }
}

/// The hub's form of `layer`, a layer blob of `store`, with zstd window `window_log` (see
/// [`window_log`]): remembered, else made (blocking: decompresses the layer and compresses
/// every part).
pub fn hub_layer(store: &Store, layer: &Descriptor, window_log: u32) -> Result<HubLayer> {
    let Some(compression) = Compression::of_media_type(&layer.media_type) else {
        bail!(
            "layer {} has media type `{}`, not a layer this hub push can recompress",
            layer.digest,
            layer.media_type
        );
    };
    let part_bytes = part_bytes();
    let record = record_path(store, &layer.digest, window_log, part_bytes);
    if let Some(l) = remembered(store, &record) {
        return Ok(l);
    }
    let path = store.blob_path(&layer.digest);
    let open = || -> Result<Box<dyn Read + '_>> {
        let blob = store.open_blob(&layer.digest)?;
        compression
            .decoder(std::io::BufReader::with_capacity(1 << 20, blob))
            .with_context(|| format!("reading {}", path.display()))
    };
    let made = split(store, &open, part_bytes, window_log)
        .with_context(|| format!("cutting layer {} into parts", layer.digest))?;
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_vec(&made).expect("a hub layer serialises");
    atomic_write(&record, &json)?;
    Ok(made)
}

/// Cuts the tar `open` reads into parts of at least `part_bytes` at entry boundaries (an
/// extension header — pax `x`/`g`, GNU `L`/`K` — stays with the entry it describes), each
/// compressed into a store blob; every part but the last gets the two zero blocks that end a
/// tar, the last keeps the layer's own end. The cuts are found first (headers only); then the
/// parts, independent zstd frames, are compressed on up to [`MAX_WORKERS`] threads, each
/// reading the layer again from the start (decompressing is fast next to compressing), so
/// nothing is held in memory whatever a file's size.
fn split<'a>(
    store: &Store,
    open: &(dyn Fn() -> Result<Box<dyn Read + 'a>> + Sync),
    part_bytes: u64,
    window_log: u32,
) -> Result<HubLayer> {
    let (cuts, tar_size) = cut_points(open()?, part_bytes)?;
    let n = cuts.len();
    let workers = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .clamp(1, MAX_WORKERS)
        .min(n);
    let results: Vec<Result<Vec<(usize, Part)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let cuts = &cuts;
                scope.spawn(move || -> Result<Vec<(usize, Part)>> {
                    let mut tar = open()?;
                    let mut pos = 0u64;
                    let mut out = Vec::new();
                    for (i, &(start, end)) in cuts.iter().enumerate().skip(w).step_by(workers) {
                        let skipped =
                            std::io::copy(&mut (&mut tar).take(start - pos), &mut std::io::sink())?;
                        let mut pw = PartWriter::new(store, window_log)?;
                        let copied = std::io::copy(&mut (&mut tar).take(end - start), &mut pw)?;
                        if skipped != start - pos || copied != end - start {
                            bail!("the layer changed while it was read");
                        }
                        if i + 1 < n {
                            pw.write_all(&TAR_END)?;
                        }
                        out.push((i, pw.finish()?));
                        pos = end;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a compressing thread panicked")))
            })
            .collect()
    });
    let mut parts: Vec<Option<Part>> = vec![None; n];
    for r in results {
        for (i, p) in r? {
            parts[i] = Some(p);
        }
    }
    Ok(HubLayer {
        tar_size,
        parts: parts
            .into_iter()
            .map(|p| p.expect("every part made"))
            .collect(),
    })
}

/// Threads compressing a layer's parts: parts are independent frames, so two cores halve the
/// wait before robots can start (they need every part's digest); more would take cores from
/// the robots' side of a rollout on a laptop.
const MAX_WORKERS: usize = 2;

/// Where `tar` is cut: each part's `(start, end)` in the tar, the last one's end the tar's
/// length (its zero blocks and padding included), and that length.
fn cut_points(mut tar: impl Read, part_bytes: u64) -> Result<(Vec<(u64, u64)>, u64)> {
    let mut cuts = Vec::new();
    let (mut start, mut pos) = (0u64, 0u64);
    let mut cut = false;
    let mut header = [0u8; 512];
    loop {
        let n = read_full(&mut tar, &mut header)?;
        if n == 0 || header.iter().all(|&b| b == 0) {
            // The end: the zero blocks and any padding after them belong to the last part.
            pos += n as u64 + std::io::copy(&mut tar, &mut std::io::sink())?;
            cuts.push((start, pos));
            return Ok((cuts, pos));
        }
        if n < header.len() {
            bail!("the tar ends inside an entry header");
        }
        if cut {
            cuts.push((start, pos));
            start = pos;
        }
        let data = entry_size(&header)?.div_ceil(512) * 512;
        let skipped = std::io::copy(&mut (&mut tar).take(data), &mut std::io::sink())?;
        if skipped != data {
            bail!("the tar ends inside an entry's data");
        }
        pos += 512 + data;
        let extension = matches!(header[156], b'x' | b'g' | b'L' | b'K');
        cut = !extension && pos - start >= part_bytes;
    }
}

/// An entry's data length from its header: octal, or base-256 when the first byte's high bit
/// is set (GNU, for sizes of 8 GiB and more).
fn entry_size(header: &[u8; 512]) -> Result<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        return Ok(field[1..]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
    }
    let text = std::str::from_utf8(field).context("a tar header's size is not text")?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(digits, 8).with_context(|| format!("a tar header's size `{digits}`"))
}

/// A part being written: its tar hashed and counted, compressed into a store blob.
struct PartWriter {
    enc: zstd::stream::write::Encoder<'static, BlobWriter>,
    hasher: Sha256,
    tar_size: u64,
}

impl PartWriter {
    fn new(store: &Store, window_log: u32) -> Result<PartWriter> {
        let writer = store.writer()?;
        let mut enc = zstd::stream::write::Encoder::new(writer, LEVEL)?;
        enc.window_log(window_log)?;
        enc.long_distance_matching(true)?;
        Ok(PartWriter {
            enc,
            hasher: Sha256::new(),
            tar_size: 0,
        })
    }

    fn finish(self) -> Result<Part> {
        let writer = self.enc.finish()?;
        let (digest, size) = writer.commit(None)?;
        let diff_id =
            Digest::from_hex(&format!("{:x}", self.hasher.finalize())).expect("sha256 is a digest");
        Ok(Part {
            digest,
            size,
            tar_size: self.tar_size,
            diff_id,
        })
    }
}

impl Write for PartWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.enc.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.tar_size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.enc.flush()
    }
}

/// Where the conversion of `layer` with these parameters is remembered: a fleet of small
/// robots and one of large ones get different windows, and each keeps its own.
fn record_path(store: &Store, layer: &Digest, window_log: u32, part_bytes: u64) -> PathBuf {
    store.root().join("zstd").join(format!(
        "{}-w{window_log}-p{}",
        layer.hex(),
        part_bytes >> 20
    ))
}

/// A remembered conversion whose blobs the store still holds.
fn remembered(store: &Store, record: &std::path::Path) -> Option<HubLayer> {
    let bytes = std::fs::read(record).ok()?;
    let l: HubLayer = serde_json::from_slice(&bytes).ok()?;
    l.parts
        .iter()
        .all(|p| std::fs::metadata(store.blob_path(&p.digest)).is_ok_and(|m| m.len() == p.size))
        .then_some(l)
}

/// The manifest the hub gets for `manifest` (a manifest of `store`) whose layers `converted`
/// maps (laptop blob → its hub form): an OCI manifest (a Docker one is converted, as skopeo
/// does) naming each converted layer's parts as layers, and the original blobs of layers that
/// were not converted; a config whose `rootfs.diff_ids` (and history) have the parts' in their
/// place. Both stored in `store` (no name reaches them); returns the manifest.
pub fn hub_manifest(
    store: &Store,
    manifest: &Digest,
    converted: &HashMap<Digest, HubLayer>,
) -> Result<Descriptor> {
    let bytes = store.read_blob(manifest, MAX_MANIFEST_BYTES)?;
    let mut m: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("manifest {manifest} in the store"))?;
    let config_bytes = store.read_blob(&m.config.digest, MAX_CONFIG_BYTES)?;
    let mut config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("config {} in the store", m.config.digest))?;
    let old_ids: Vec<serde_json::Value> = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if old_ids.len() != m.layers.len() {
        bail!(
            "config {} lists {} diff_ids for {} layers",
            m.config.digest,
            old_ids.len(),
            m.layers.len()
        );
    }
    let history = config["history"].as_array().cloned();
    let mut layers = Vec::new();
    let mut ids = Vec::new();
    // Each layer's history entry (the non-empty ones, in order), when they match the layers.
    let mut layer_entries: Vec<Vec<serde_json::Value>> = Vec::new();
    let mut extra_history = false;
    for (i, l) in m.layers.iter().enumerate() {
        match converted.get(&l.digest) {
            Some(h) => {
                layers.extend(h.parts.iter().map(Part::descriptor));
                ids.extend(h.parts.iter().map(|p| p.diff_id.to_string().into()));
                layer_entries.push(vec![serde_json::Value::Null; h.parts.len()]);
                extra_history |= h.parts.len() > 1;
            }
            None => {
                let mut l = l.clone();
                if let Some(c) = Compression::of_media_type(&l.media_type)
                    && l.media_type != media::DOCKER_FOREIGN_LAYER
                {
                    l.media_type = c.oci_media_type().to_string();
                }
                layers.push(l);
                ids.push(old_ids[i].clone());
                layer_entries.push(vec![serde_json::Value::Null]);
            }
        }
    }
    config["rootfs"]["diff_ids"] = serde_json::Value::Array(ids);
    if let (Some(history), true) = (history, extra_history) {
        let non_empty = history
            .iter()
            .filter(|h| h["empty_layer"] != serde_json::Value::Bool(true))
            .count();
        if non_empty == m.layers.len() {
            let mut out = Vec::new();
            let mut layer = 0;
            for h in history {
                if h["empty_layer"] == serde_json::Value::Bool(true) {
                    out.push(h);
                    continue;
                }
                let parts = layer_entries[layer].len();
                for k in 0..parts {
                    let mut e = h.clone();
                    if k > 0 {
                        e["created_by"] =
                            format!("dts lab hub: part {} of {parts} of the layer above", k + 1)
                                .into();
                    }
                    out.push(e);
                }
                layer += 1;
            }
            config["history"] = serde_json::Value::Array(out);
        }
    }
    let config_json = serde_json::to_vec(&config).context("serialising the hub's config")?;
    let config_digest = store.put_blob(&config_json)?;
    m.config = Descriptor::new(media::OCI_CONFIG, config_digest, config_json.len() as u64);
    m.media_type = Some(media::OCI_MANIFEST.to_string());
    m.layers = layers;
    let json = serde_json::to_vec(&m).context("serialising the hub's manifest")?;
    let digest = store.put_blob(&json)?;
    Ok(Descriptor::new(
        media::OCI_MANIFEST,
        digest,
        json.len() as u64,
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A tar of `files` (name, content), with a pax header on the long names.
    pub(in crate::ops::hub) fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if name.len() > 100 {
                b.append_pax_extensions([("path", name.as_bytes())])
                    .unwrap();
                h.set_path("long").unwrap();
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            } else {
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    pub(in crate::ops::hub) fn gzip(store: &Store, tar: &[u8]) -> Descriptor {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(tar).unwrap();
        let gz = gz.finish().unwrap();
        let d = store.put_blob(&gz).unwrap();
        Descriptor::new(media::DOCKER_LAYER_GZIP, d, gz.len() as u64)
    }

    pub(in crate::ops::hub) fn files(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let name = if i % 7 == 3 {
                    format!("deep/{}/f{i}", "d".repeat(120))
                } else {
                    format!("f{i}")
                };
                (
                    name,
                    format!("content {i} ").repeat(100 + i * 37).into_bytes(),
                )
            })
            .collect()
    }

    /// `split`'s way to read `tar` again.
    fn opener<'a>(tar: &'a [u8]) -> impl Fn() -> Result<Box<dyn Read + 'a>> + Sync + 'a {
        move || Ok(Box::new(tar) as Box<dyn Read>)
    }

    /// `layer` (a blob of `store` holding `tar`) cut into parts of about `part_bytes` of tar
    /// with window `window_log`, remembered where [`hub_layer`] looks first: a test's small
    /// layer goes in parts without `DTS_HUB_PART_MIB`, which the whole test process would see.
    pub(in crate::ops::hub) fn remember_in_parts(
        store: &Store,
        layer: &Descriptor,
        tar: &[u8],
        window_log: u32,
        part_bytes: u64,
    ) -> HubLayer {
        let l = split(store, &opener(tar), part_bytes, window_log).unwrap();
        let record = record_path(store, &layer.digest, window_log, super::part_bytes());
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        atomic_write(&record, &serde_json::to_vec(&l).unwrap()).unwrap();
        assert_eq!(
            hub_layer(store, layer, window_log).unwrap(),
            l,
            "remembered"
        );
        l
    }

    /// What the robot does with the parts (agent/fetch.rs): their tars joined, every closing
    /// pair of zero blocks but the last left out.
    fn joined(store: &Store, l: &HubLayer) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in l.parts.iter().enumerate() {
            let blob = store.read_blob(&p.digest, 1 << 30).unwrap();
            assert_eq!(blob.len() as u64, p.size);
            let tar = zstd::decode_all(&blob[..]).unwrap();
            assert_eq!(tar.len() as u64, p.tar_size);
            assert_eq!(Digest::of(&tar), p.diff_id);
            // Every part is a tar of its own, read to its end.
            let entries = tar::Archive::new(&tar[..]).entries().unwrap().count();
            assert!(entries > 0, "part {i} is empty");
            let keep = if i + 1 < l.parts.len() {
                assert!(tar.ends_with(&TAR_END));
                tar.len() - TAR_END.len()
            } else {
                tar.len()
            };
            out.extend_from_slice(&tar[..keep]);
        }
        out
    }

    #[test]
    fn a_layer_is_cut_at_entry_boundaries_and_joins_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&files(60));
        let l = split(&store, &opener(&tar), 16 << 10, 24).unwrap();
        assert!(l.parts.len() > 3, "{} parts", l.parts.len());
        assert_eq!(l.tar_size, tar.len() as u64);
        assert_eq!(joined(&store, &l), tar);
        // A pax header is never the last entry of a part: every part's names are whole.
        for p in &l.parts {
            let t = zstd::decode_all(&store.read_blob(&p.digest, 1 << 30).unwrap()[..]).unwrap();
            for e in tar::Archive::new(&t[..]).entries().unwrap() {
                let e = e.unwrap();
                assert_ne!(e.path().unwrap().to_str(), Some("long"));
            }
        }
        // Small enough: one part, the layer itself.
        let one = split(&store, &opener(&tar), 1 << 30, 24).unwrap();
        assert_eq!(one.parts.len(), 1);
        assert_eq!(one.parts[0].diff_id, Digest::of(&tar));
        // A tar without its closing blocks (some writers stop at the last entry).
        let cut = &tar[..tar.len() - 10240.min(tar.len())];
        let bare = split(&store, &opener(cut), 16 << 10, 24);
        if let Ok(bare) = bare {
            assert_eq!(joined(&store, &bare), cut);
        }
        // Truncated inside an entry: refused.
        assert!(split(&store, &opener(&tar[..700]), 16 << 10, 24).is_err());
    }

    #[test]
    fn a_conversion_is_remembered_and_made_again_when_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&files(20));
        let layer = gzip(&store, &tar);
        let l = hub_layer(&store, &layer, 24).unwrap();
        assert_eq!(joined(&store, &l), tar);
        assert_eq!(hub_layer(&store, &layer, 24).unwrap(), l);
        std::fs::remove_file(store.blob_path(&l.parts[0].digest)).unwrap();
        assert_eq!(
            hub_layer(&store, &layer, 24).unwrap(),
            l,
            "made again, the same"
        );
        assert!(store.has_blob(&l.parts[0].digest));
        // Another window is another conversion, remembered beside the first.
        let wide = hub_layer(&store, &layer, 26).unwrap();
        assert_eq!(joined(&store, &wide), tar);
        let records = std::fs::read_dir(dir.path().join("zstd")).unwrap().count();
        assert_eq!(records, 2, "one record per window");
        assert_eq!(hub_layer(&store, &layer, 24).unwrap(), l);
        let cfg = Descriptor::new(media::OCI_CONFIG, layer.digest.clone(), layer.size);
        let e = hub_layer(&store, &cfg, 24).unwrap_err().to_string();
        assert!(e.contains(&layer.digest.to_string()), "{e}");
    }

    #[test]
    fn the_window_is_what_the_robots_take_and_no_more_than_a_part_needs() {
        assert_eq!(window_for(24, 64 << 20), 24, "a 1 GB Pi's 16 MiB");
        assert_eq!(window_for(27, 64 << 20), 26, "a part's 64 MiB");
        assert_eq!(window_for(31, 1 << 30), 27, "never past 128 MiB");
        assert_eq!(window_for(27, 4 << 20), 22);
        assert_eq!(window_for(27, (4 << 20) + 1), 23);
        assert_eq!(
            window_for(12, 4 << 20),
            20,
            "never below the wire's smallest"
        );
    }

    #[test]
    fn the_hub_manifest_names_the_parts_and_its_config_their_diff_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let big_tar = tar_of(&files(60));
        let small_tar = tar_of(&files(1));
        let (big, small) = (gzip(&store, &big_tar), gzip(&store, &small_tar));
        let config = serde_json::json!({
            "architecture": "arm64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&big_tar), Digest::of(&small_tar)]},
            "history": [
                {"created_by": "FROM"},
                {"created_by": "ENV", "empty_layer": true},
                {"created_by": "COPY"},
            ],
        });
        let cb = serde_json::to_vec(&config).unwrap();
        let cd = store.put_blob(&cb).unwrap();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": {"mediaType": media::DOCKER_CONFIG, "digest": cd, "size": cb.len()},
            "layers": [big, small],
        });
        let md = store.put_blob(&serde_json::to_vec(&m).unwrap()).unwrap();
        let h = split(&store, &opener(&big_tar), 16 << 10, 24).unwrap();
        let n = h.parts.len();
        let converted: HashMap<Digest, HubLayer> = [(big.digest.clone(), h.clone())].into();
        let hub = hub_manifest(&store, &md, &converted).unwrap();
        let out: Manifest =
            serde_json::from_slice(&store.read_blob(&hub.digest, 1 << 20).unwrap()).unwrap();
        assert_eq!(out.media_type.as_deref(), Some(media::OCI_MANIFEST));
        assert_eq!(out.config.media_type, media::OCI_CONFIG);
        assert_eq!(out.layers.len(), n + 1);
        assert_eq!(out.layers[0], h.parts[0].descriptor());
        assert_eq!(out.layers[n].digest, small.digest);
        assert_eq!(out.layers[n].media_type, media::OCI_LAYER_GZIP);
        let c: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&out.config.digest, 1 << 20).unwrap()).unwrap();
        let ids = c["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(ids.len(), n + 1);
        assert_eq!(ids[0], h.parts[0].diff_id.to_string());
        assert_eq!(ids[n], Digest::of(&small_tar).to_string());
        let history = c["history"].as_array().unwrap();
        assert_eq!(history.len(), n + 2);
        let layers_in_history = history
            .iter()
            .filter(|e| e["empty_layer"] != serde_json::Value::Bool(true))
            .count();
        assert_eq!(layers_in_history, n + 1);
    }
}
