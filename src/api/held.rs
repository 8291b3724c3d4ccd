//! Images the robot already holds: the question the laptop asks the robot's store while it
//! plans a deploy ("what does this name mean on you, for this platform?") and the answer,
//! with what a release needs of such an image without the laptop ever holding it: its
//! manifest, layers and image configuration (container settings, health check).
//!
//! Names follow Docker's rules on both ends ([`crate::oci::Reference`]): `ubuntu` is
//! `docker.io/library/ubuntu:latest` on the laptop and on the robot alike. Wire: `resolve` /
//! `resolved` (protocol 2.3, docs/wire.md).

use serde::{Deserialize, Serialize};

use crate::oci::{Descriptor, Digest, ImageConfig, Platform};

/// One name to resolve in the robot's store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolveQuery {
    /// The image as the stack names it (`duckietown/dt-core:daffy-arm64v8`,
    /// `name@sha256:…`); normalised by the robot as by the laptop.
    pub name: String,
    /// The platform wanted (the robot's own, as its hello says).
    pub platform: Platform,
}

/// An image the robot's store holds completely (documents and every layer): what a release
/// needs to run it, and what the laptop's transfer plan needs to skip it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldImage {
    /// The canonical reference asked about (`docker.io/duckietown/dt-core:daffy`).
    pub name: String,
    /// The document the name points at on the robot (manifest or index).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The manifest chosen: the platform's entry of an index, else the only manifest held.
    pub manifest: Digest,
    /// The platform of that manifest's configuration. It differs from the platform asked
    /// for only when the name has no other manifest on the robot (an image Docker ran there).
    pub platform: Platform,
    /// The manifest's layers (blobs as the manifest lists them), bottom first.
    pub layers: Vec<Descriptor>,
    /// The image configuration (diff_ids, `Cmd`, `Env`, `Healthcheck`…).
    pub config: ImageConfig,
    /// Whether the image's snapshot is built.
    pub snapshot: bool,
}

impl HeldImage {
    /// The image's layers by diff_id, bottom first.
    pub fn diff_ids(&self) -> &[Digest] {
        &self.config.rootfs.diff_ids
    }
}
