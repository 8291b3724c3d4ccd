//! `dts image …`: list, inspect, tag, remove, prune, save and load images in the local store.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::archive::{self, LoadReport, SaveFormat, SaveReport};
#[cfg(feature = "workstation")]
use crate::build::BuildPruneReport;
use crate::oci::{Digest, Platform, Reference};
use crate::progress::Reporter;
use crate::store::{ImageRecord, Store};

/// Opens the laptop store.
pub fn open_store() -> Result<Store> {
    let dir = super::store_dir();
    Store::open(&dir).with_context(|| format!("cannot open the image store at `{}`", dir.display()))
}

/// One row of `dts image ls`.
#[derive(Clone, Debug, Serialize)]
pub struct ImageSummary {
    /// Full name.
    pub name: String,
    /// Digest of the manifest or index.
    pub digest: Digest,
    /// `linux/arm64`, …
    pub platforms: Vec<String>,
    /// Bytes of all blobs it reaches (compressed).
    pub size: u64,
}

/// Every image in the store, sorted by name.
pub fn list(store: &Store) -> Result<Vec<ImageSummary>> {
    let mut out = Vec::new();
    for img in store.images()? {
        out.push(ImageSummary {
            name: img.name.to_string(),
            digest: img.descriptor.digest.clone(),
            platforms: store
                .platforms(&img.descriptor)?
                .iter()
                .map(Platform::to_string)
                .collect(),
            size: store.size_of(std::slice::from_ref(&img.descriptor))?,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Looks an image up by the name the user typed.
pub fn find(store: &Store, name: &str) -> Result<ImageRecord> {
    let r = Reference::parse(name)?;
    Ok(store.get(&r)?)
}

/// The exact config bytes of one platform of an image.
pub fn inspect(store: &Store, name: &str, platform: Option<&Platform>) -> Result<Vec<u8>> {
    let img = find(store, name)?;
    Ok(store
        .resolve_platform(&img.name.familiar(), &img.descriptor, platform)?
        .config_bytes)
}

/// Gives `src`'s image the name `dst` too.
pub fn tag(store: &Store, src: &str, dst: &str) -> Result<Reference> {
    let img = find(store, src)?;
    let dst = Reference::parse(dst)?;
    store.set_names(&[(dst.clone(), img.descriptor)])?;
    Ok(dst)
}

/// What a prune removed: blobs from the store, and what builds kept of their layers.
#[cfg(feature = "workstation")]
#[derive(Clone, Debug, Serialize)]
pub struct Pruned {
    /// Blobs removed.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The builder's unpacked copies of removed layers, their listings and cache records.
    pub build: BuildPruneReport,
    /// Why some of the builder's copies could not be removed (the blobs were): they stay
    /// until the next prune that can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Removes the blobs no name reaches and what builds kept of them (their unpacked layers,
/// listings, cache records): no build of this `DTS_HOME` runs meanwhile (the store's lock).
#[cfg(feature = "workstation")]
pub fn prune(store: &Store) -> Result<Pruned> {
    let state = super::dts_home().join("build");
    let (r, build): (crate::store::PruneReport, _) =
        store.prune_and(|s| crate::build::prune_state(&state, s))?;
    let (build, warning) = match build {
        Ok(b) => (b, None),
        Err(e) => (
            BuildPruneReport::default(),
            Some(format!(
                "the builds' copies of removed layers under {} stay: {e}",
                state.display()
            )),
        ),
    };
    Ok(Pruned {
        blobs: r.blobs,
        bytes: r.bytes,
        build,
        warning,
    })
}

/// Removes names, then the blobs nothing references any more (as [`prune`]).
#[cfg(feature = "workstation")]
pub fn remove(store: &Store, names: &[String]) -> Result<(Vec<Reference>, Pruned)> {
    let mut refs = Vec::new();
    for n in names {
        let r = Reference::parse(n)?;
        store.get(&r)?;
        refs.push(r);
    }
    for r in &refs {
        store.remove_name(r)?;
    }
    Ok((refs, prune(store)?))
}

/// Loads an archive or layout directory.
pub fn load(
    store: &Store,
    input: &Path,
    tag: Option<&str>,
    reporter: &dyn Reporter,
) -> Result<LoadReport> {
    let tag = tag.map(Reference::parse).transpose()?;
    Ok(archive::load(store, input, tag.as_ref(), reporter)?)
}

/// Saves images to an archive.
pub fn save(
    store: &Store,
    names: &[String],
    platform: Option<&Platform>,
    format: SaveFormat,
    out: &Path,
    reporter: &dyn Reporter,
) -> Result<SaveReport> {
    let images = names
        .iter()
        .map(|n| find(store, n))
        .collect::<Result<Vec<_>>>()?;
    Ok(archive::save(
        store, &images, platform, format, out, reporter,
    )?)
}
