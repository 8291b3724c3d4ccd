//! Test images made in code: layer tars with known file trees, written as an OCI image layout
//! (optionally multi-platform), so tests need no network and know exactly what to expect.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use dts::oci::json::canonical;
use dts::oci::manifest::ANNOTATION_REF_NAME;
use dts::oci::{Descriptor, Digest, ImageConfig, Index, Manifest, Platform, media};

/// One entry of a layer.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A directory with a mode.
    Dir(&'static str, u32),
    /// A regular file with a mode and content.
    File(&'static str, u32, Vec<u8>),
    /// A symlink and its target.
    Symlink(&'static str, &'static str),
    /// A hardlink to an earlier entry of the same layer.
    Hardlink(&'static str, &'static str),
}

/// An uncompressed layer tar of `entries`, in order, mtime 0, owner 0.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match e {
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// gzip at a fixed level, so digests are stable within a run.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A layout being written.
pub struct Layout {
    /// Its directory.
    pub dir: PathBuf,
}

/// What was written for one platform.
#[derive(Clone, Debug)]
pub struct Written {
    /// Manifest descriptor (with platform).
    pub manifest: Descriptor,
    /// Config digest.
    pub config: Digest,
    /// Layer diff_ids.
    pub diff_ids: Vec<Digest>,
}

impl Layout {
    /// An empty layout at `dir`.
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes a blob, returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let d = Digest::of(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        Descriptor::new(media_type, d, bytes.len() as u64)
    }

    /// Writes one platform's image from uncompressed layer tars (stored gzip'd).
    pub fn image(&self, platform: &Platform, layers: &[Vec<u8>], cmd: &[&str]) -> Written {
        self.image_with(platform, layers, cmd, |_| {})
    }

    /// [`Layout::image`], with `edit` changing the image's runtime config (`WorkingDir`…)
    /// before it is written.
    pub fn image_with(
        &self,
        platform: &Platform,
        layers: &[Vec<u8>],
        cmd: &[&str],
        edit: impl FnOnce(&mut dts::oci::config::ContainerConfig),
    ) -> Written {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            diff_ids.push(Digest::of(l));
            descs.push(self.blob(media::OCI_LAYER_GZIP, &gzip(l)));
        }
        let mut config = ImageConfig {
            created: Some("2024-01-01T00:00:00Z".into()),
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            config: Some(dts::oci::config::ContainerConfig {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                env: Some(vec!["PATH=/usr/bin:/bin".into()]),
                labels: Some(BTreeMap::from([(
                    "org.duckietown.label.architecture".to_string(),
                    platform.duckietown_arch().unwrap_or("amd64").to_string(),
                )])),
                ..Default::default()
            }),
            rootfs: dts::oci::config::RootFs {
                kind: "layers".into(),
                diff_ids: diff_ids.clone(),
            },
            ..Default::default()
        };
        edit(config.config.as_mut().expect("set above"));
        let cbytes = config.to_canonical_json();
        let cdesc = self.blob(media::OCI_CONFIG, &cbytes);
        let m = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config: cdesc.clone(),
            layers: descs,
            subject: None,
            annotations: BTreeMap::new(),
        };
        let mut mdesc = self.blob(media::OCI_MANIFEST, &canonical(&m));
        mdesc.platform = Some(platform.clone());
        Written {
            manifest: mdesc,
            config: cdesc.digest,
            diff_ids,
        }
    }

    /// Writes an index of `manifests` and returns its descriptor.
    pub fn index(&self, manifests: &[Written]) -> Descriptor {
        let mut i = Index::new();
        i.manifests = manifests.iter().map(|w| w.manifest.clone()).collect();
        self.blob(media::OCI_INDEX, &canonical(&i))
    }

    /// Writes `index.json` naming each descriptor with `ref.name`.
    pub fn finish(&self, named: &[(&str, Descriptor)]) {
        let mut i = Index::new();
        for (name, d) in named {
            let mut d = d.clone();
            d.annotations
                .insert(ANNOTATION_REF_NAME.into(), name.to_string());
            i.manifests.push(d);
        }
        std::fs::write(self.dir.join("index.json"), canonical(&i)).unwrap();
    }
}

/// The base layer every test image shares: a tiny Debian-like tree with the absolute and
/// relative symlinks real images have, and a hardlink.
pub fn base_layer() -> Vec<u8> {
    layer_tar(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/os-release", 0o644, b"ID=duckie\n".to_vec()),
        Entry::Dir("usr/", 0o755),
        Entry::Dir("usr/bin/", 0o755),
        Entry::File("usr/bin/tool", 0o755, b"#!/bin/sh\necho tool\n".to_vec()),
        Entry::Hardlink("usr/bin/tool-link", "usr/bin/tool"),
        Entry::Symlink("bin", "usr/bin"),
        Entry::Symlink("lib", "/usr/lib"),
        Entry::Dir("usr/lib/", 0o755),
        Entry::File("usr/lib/libx.so", 0o644, vec![0x7f; 4096]),
    ])
}

/// An arch-specific layer (different content per platform).
pub fn arch_layer(p: &Platform) -> Vec<u8> {
    let arch = p.duckietown_arch().unwrap_or("other");
    let data = format!("arch={arch}\n").into_bytes();
    let leaked: &'static str = Box::leak(format!("code/{arch}.txt").into_boxed_str());
    layer_tar(&[
        Entry::Dir("code/", 0o755),
        Entry::File(leaked, 0o600, data),
        Entry::File("code/run.sh", 0o4755, b"#!/bin/sh\n".to_vec()),
    ])
}

/// A two-platform (arm64, arm/v7) image named `name` in a fresh layout at `dir`.
pub fn multi_arch_layout(dir: &Path, name: &str) -> (Descriptor, Vec<Written>) {
    let l = Layout::new(dir);
    let ws: Vec<Written> = [Platform::arm64(), Platform::armhf()]
        .iter()
        .map(|p| l.image(p, &[base_layer(), arch_layer(p)], &["/code/run.sh"]))
        .collect();
    let idx = l.index(&ws);
    l.finish(&[(name, idx.clone())]);
    (idx, ws)
}
