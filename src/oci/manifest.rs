//! Descriptors, image manifests and image indexes (OCI image-spec and Docker schema 2).
//!
//! Annotations are `BTreeMap`s and unknown fields are kept in `extra`, so what we read we can
//! write back without loss and what we write is deterministic. The bytes of a manifest we did
//! not make are always kept verbatim: these types are for navigating, not for re-serialising.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::digest::Digest;
use super::json::{JsonError, parse_strict};
use super::platform::Platform;

/// OCI and Docker media types we read and write.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer (rare, but `docker save`-derived images carry it).
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker foreign (non-distributable) gzip layer.
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// Whether `m` names a single-platform image manifest.
    pub fn is_manifest(m: &str) -> bool {
        m == OCI_MANIFEST || m == DOCKER_MANIFEST
    }

    /// Whether `m` names a multi-platform index.
    pub fn is_index(m: &str) -> bool {
        m == OCI_INDEX || m == DOCKER_LIST
    }
}

/// The OCI annotation that names an image in an image layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd and `docker save` use for the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// A content descriptor: what a blob is, its digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Alternative download URLs (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of the referenced manifest (in an index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Embedded content (OCI 1.1), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    /// A descriptor with no annotations or platform.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: None,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            data: None,
        }
    }

    /// The names an image layout's `index.json` entry gives its image: the full name of
    /// containerd's annotation, else the OCI ref name when it names a repository (a bare tag,
    /// `latest`, names none: the caller must be told which). Err says which annotation is bad.
    pub fn image_names(&self) -> Result<Vec<super::Reference>, String> {
        let parse = |key: &str, v: &str| {
            super::Reference::parse(v).map_err(|e| format!("index.json annotation {key}: {e}"))
        };
        if let Some(full) = self.annotations.get(ANNOTATION_IMAGE_NAME) {
            return Ok(vec![parse(ANNOTATION_IMAGE_NAME, full)?]);
        }
        match self.annotations.get(ANNOTATION_REF_NAME) {
            Some(r) if r.contains(['/', ':', '@']) => Ok(vec![parse(ANNOTATION_REF_NAME, r)?]),
            _ => Ok(Vec::new()),
        }
    }
}

/// An image manifest: one config and its ordered layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// OCI or Docker manifest media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image configuration.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Referrers API subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (manifest list): one manifest per platform, or named images in a layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// OCI index or Docker list media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
    /// Referrers API subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// An empty OCI index.
    pub fn new() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
        }
    }
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

/// A manifest or index document, told apart by media type (or, when the document does not say,
/// by shape, as registries do).
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    /// A single-platform image.
    Manifest(Box<Manifest>),
    /// A multi-platform image.
    Index(Box<Index>),
}

impl Document {
    /// Parses a manifest or index strictly. `declared` is the media type the descriptor or the
    /// registry gave, if any; it must agree with the document's own.
    pub fn parse(what: &str, declared: Option<&str>, bytes: &[u8]) -> Result<Document, JsonError> {
        let fail = |reason: String| JsonError {
            what: what.to_string(),
            reason,
        };
        let v: Value = parse_strict(what, bytes)?;
        let own = v.get("mediaType").and_then(Value::as_str);
        if let (Some(own), Some(declared)) = (own, declared)
            && own != declared
        {
            return Err(fail(format!(
                "document says media type `{own}` but was described as `{declared}`"
            )));
        }
        let kind = own.or(declared);
        let is_index = match kind {
            Some(m) if media::is_index(m) => true,
            Some(m) if media::is_manifest(m) => false,
            Some(m) => return Err(fail(format!("unsupported media type `{m}`"))),
            None => v.get("manifests").is_some(),
        };
        if v.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return Err(fail("schemaVersion must be 2".into()));
        }
        let doc = if is_index {
            Document::Index(Box::new(
                serde_json::from_value(v).map_err(|e| fail(e.to_string()))?,
            ))
        } else {
            Document::Manifest(Box::new(
                serde_json::from_value(v).map_err(|e| fail(e.to_string()))?,
            ))
        };
        Ok(doc)
    }
}

/// The compression of a layer, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares; `None` if it is not a layer type we know.
    pub fn of_media_type(m: &str) -> Option<Compression> {
        Some(match m {
            media::OCI_LAYER | media::DOCKER_LAYER => Compression::None,
            media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP | media::DOCKER_FOREIGN_LAYER => {
                Compression::Gzip
            }
            media::OCI_LAYER_ZSTD => Compression::Zstd,
            _ => return None,
        })
    }

    /// Sniffs the compression from the first bytes of a blob.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// Wraps `r` in the matching decompressor.
    pub fn decoder<'a, R: std::io::Read + 'a>(
        self,
        r: R,
    ) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn tells_manifests_from_indexes() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{D}","size":0}},"layers":[]}}"#,
            media::OCI_MANIFEST,
            media::OCI_CONFIG
        );
        assert!(matches!(
            Document::parse("m", None, m.as_bytes()).unwrap(),
            Document::Manifest(_)
        ));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            Document::parse("i", None, i.as_bytes()).unwrap(),
            Document::Index(_)
        ));
        let e = Document::parse("m", Some(media::OCI_INDEX), m.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("described as"), "{e}");
        let dup = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"a","digest":"{D}","digest":"{D}","size":0}},"layers":[]}}"#
        );
        let e = Document::parse("m", None, dup.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("duplicate key `digest`"), "{e}");
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }
}
