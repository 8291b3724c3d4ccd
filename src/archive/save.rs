//! `dts image save`: the store → an OCI archive (every platform, or one) or a docker-archive
//! (one platform, uncompressed layers, as `docker load`, skopeo and podman read it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::path::Path;

use super::ArchiveError;
use crate::oci::digest::HashingWriter;
use crate::oci::json::canonical;
use crate::oci::manifest::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use crate::oci::{Compression, Descriptor, Digest, Index, Platform, Reference};
use crate::progress::{Event, Reporter};
use crate::store::{ImageRecord, Store};
use crate::util::fs::{PathContext, PathError, sync_dir, temp_name};

/// Archive formats `save` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFormat {
    /// A tar of an OCI image layout.
    Oci,
    /// What `docker save` writes: `manifest.json`, `repositories`, uncompressed layer tars.
    Docker,
}

/// What a save wrote.
#[derive(Clone, Debug)]
pub struct SaveReport {
    /// Bytes in the archive.
    pub bytes: u64,
    /// Blobs written.
    pub blobs: usize,
}

/// Writes `images` to `out`. With `platform`, each image is reduced to that platform's manifest;
/// a docker-archive needs one platform per image (it cannot hold an index).
pub fn save(
    store: &Store,
    images: &[ImageRecord],
    platform: Option<&Platform>,
    format: SaveFormat,
    out: &Path,
    reporter: &dyn Reporter,
) -> Result<SaveReport, ArchiveError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(temp_name(".dts-save-"));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at("create", &tmp)?;
        let mut tar = TarOut::new(BufWriter::new(file), &tmp);
        let blobs = match format {
            SaveFormat::Oci => write_oci(store, images, platform, &mut tar, reporter)?,
            SaveFormat::Docker => write_docker(store, images, platform, &mut tar, reporter)?,
        };
        let bytes = tar.finish()?;
        Ok(SaveReport { bytes, blobs })
    })();
    match result {
        Ok(r) => {
            fs::rename(&tmp, out).at("rename into place", out)?;
            sync_dir(dir)?;
            Ok(r)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The descriptor to export for an image: the whole image, or one platform's manifest.
fn export_descriptor(
    store: &Store,
    img: &ImageRecord,
    platform: Option<&Platform>,
) -> Result<Descriptor, ArchiveError> {
    Ok(match platform {
        None => img.descriptor.clone(),
        Some(p) => {
            let resolved =
                store.resolve_platform(&img.name.familiar(), &img.descriptor, Some(p))?;
            let mut d = resolved.descriptor;
            d.platform = Some(resolved.config.platform());
            d
        }
    })
}

fn write_oci(
    store: &Store,
    images: &[ImageRecord],
    platform: Option<&Platform>,
    tar: &mut TarOut,
    reporter: &dyn Reporter,
) -> Result<usize, ArchiveError> {
    let mut index = Index::new();
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    for img in images {
        let mut d = export_descriptor(store, img, platform)?;
        for r in store.reachable(&d)? {
            blobs.insert(r.digest, r.size);
        }
        // containerd's convention: ref.name is the tag, the full name has its own annotation.
        if let Some(tag) = img.name.tag() {
            d.annotations
                .insert(ANNOTATION_REF_NAME.into(), tag.to_string());
        }
        d.annotations
            .insert(ANNOTATION_IMAGE_NAME.into(), img.name.to_string());
        index.manifests.push(d);
    }
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", &canonical(&index))?;
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    for (digest, size) in &blobs {
        let id = digest.short().to_string();
        reporter.event(Event::start(
            &id,
            format!("write {}", digest.short()),
            Some(*size),
        ));
        let f = store.open_blob(digest)?;
        tar.file_from(
            &format!("blobs/sha256/{}", digest.hex()),
            *size,
            f,
            &store.blob_path(digest),
        )?;
        reporter.event(Event::finish(&id, "done"));
    }
    Ok(blobs.len())
}

fn write_docker(
    store: &Store,
    images: &[ImageRecord],
    platform: Option<&Platform>,
    tar: &mut TarOut,
    reporter: &dyn Reporter,
) -> Result<usize, ArchiveError> {
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut written = BTreeSet::new();
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    for img in images {
        let resolved = store.resolve_platform(&img.name.familiar(), &img.descriptor, platform)?;
        let config_path = format!("blobs/sha256/{}", resolved.manifest.config.digest.hex());
        if written.insert(resolved.manifest.config.digest.clone()) {
            tar.file(&config_path, &resolved.config_bytes)?;
        }
        let mut layer_paths = Vec::new();
        for (layer, diff_id) in resolved
            .manifest
            .layers
            .iter()
            .zip(&resolved.config.rootfs.diff_ids)
        {
            let path = format!("blobs/sha256/{}", diff_id.hex());
            if written.insert(diff_id.clone()) {
                let id = layer.digest.short().to_string();
                reporter.event(Event::start(
                    &id,
                    format!("write layer {}", diff_id.short()),
                    None,
                ));
                write_uncompressed_layer(store, layer, diff_id, &path, tar)?;
                reporter.event(Event::finish(&id, "done"));
            }
            layer_paths.push(path);
        }
        let tag = img.name.familiar();
        manifest.push(serde_json::json!({
            "Config": config_path,
            "RepoTags": [tag],
            "Layers": layer_paths,
        }));
        if let (Some(t), Some(last)) = (img.name.tag(), resolved.config.rootfs.diff_ids.last()) {
            let repo = Reference::familiar(&img.name.with_tag("x"));
            let repo = repo.trim_end_matches(":x").to_string();
            repositories
                .entry(repo)
                .or_default()
                .insert(t.to_string(), last.hex().to_string());
        }
    }
    tar.file(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("JSON values serialise"),
    )?;
    tar.file("repositories", &canonical(&repositories))?;
    Ok(written.len())
}

/// docker-archive layers are plain tars named by diff_id: decompress into a temp file (the tar
/// header needs the size first) and check the result against the config's diff_id.
fn write_uncompressed_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    path: &str,
    tar: &mut TarOut,
) -> Result<(), ArchiveError> {
    let compression =
        Compression::of_media_type(&layer.media_type).ok_or_else(|| ArchiveError::Invalid {
            path: layer.digest.to_string(),
            reason: format!("unsupported layer media type `{}`", layer.media_type),
        })?;
    let src = store.blob_path(&layer.digest);
    if compression == Compression::None {
        let f = store.open_blob(&layer.digest)?;
        return tar.file_from(path, layer.size, f, &src);
    }
    let tmp = store.root().join("ingest").join(temp_name("in-"));
    let result = (|| {
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at("create", &tmp)?;
        let mut w = HashingWriter::new(BufWriter::new(out));
        let mut dec = compression
            .decoder(io::BufReader::new(store.open_blob(&layer.digest)?))
            .at("decompress", &src)?;
        io::copy(&mut dec, &mut w).at("decompress", &src)?;
        let (out, actual, size) = w.finish();
        if &actual != diff_id {
            return Err(ArchiveError::Invalid {
                path: src.display().to_string(),
                reason: format!("layer decompresses to {actual}, its config says {diff_id}"),
            });
        }
        let out = out
            .into_inner()
            .map_err(|e| e.into_error())
            .at("write", &tmp)?;
        drop(out);
        let f = File::open(&tmp).at("open", &tmp)?;
        tar.file_from(path, size, f, &tmp)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// A deterministic tar writer: ustar headers, mode 0644/0755, owner 0, mtime 0.
struct TarOut<'p> {
    inner: tar::Builder<BufWriter<File>>,
    path: &'p Path,
}

impl<'p> TarOut<'p> {
    fn new(w: BufWriter<File>, path: &'p Path) -> Self {
        TarOut {
            inner: tar::Builder::new(w),
            path,
        }
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn dir(&mut self, name: &str) -> Result<(), ArchiveError> {
        let mut h = Self::header(tar::EntryType::Directory, 0, 0o755);
        self.inner
            .append_data(&mut h, name, io::empty())
            .at("write", self.path)?;
        Ok(())
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let mut h = Self::header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
        self.inner
            .append_data(&mut h, name, bytes)
            .at("write", self.path)?;
        Ok(())
    }

    fn file_from(
        &mut self,
        name: &str,
        size: u64,
        r: impl Read,
        src: &Path,
    ) -> Result<(), ArchiveError> {
        let mut h = Self::header(tar::EntryType::Regular, size, 0o644);
        // A source shorter than its header would corrupt the archive: check what was copied.
        let mut counted = CountingReader { inner: r, n: 0 };
        self.inner
            .append_data(&mut h, name, &mut counted)
            .map_err(|source| PathError {
                action: "copy into archive",
                path: src.to_path_buf(),
                source,
            })?;
        if counted.n != size {
            return Err(ArchiveError::Invalid {
                path: src.display().to_string(),
                reason: format!("blob changed while saving ({} of {size} bytes)", counted.n),
            });
        }
        Ok(())
    }

    fn finish(self) -> Result<u64, ArchiveError> {
        let w = self.inner.into_inner().at("write", self.path)?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .at("write", self.path)?;
        file.sync_all().at("sync", self.path)?;
        Ok(file.metadata().at("stat", self.path)?.len())
    }
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
