//! What a transfer names: the objects the laptop sends and what the robot answers when it
//! has built an image from them. The frames around them are `wire`'s (docs/wire.md).

use serde::{Deserialize, Serialize};

use crate::oci::Digest;

/// One object as the laptop sends it: content digest and size, and the tar metadata of (the
/// first) file that has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSpec {
    /// sha256 of the content.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
    /// The tar mode (`& 0o7777` is used).
    pub mode: u32,
    /// The tar owner.
    pub uid: u32,
    /// The tar group.
    pub gid: u32,
    /// The tar mtime (the object keeps the mtime of the first file that created it).
    #[serde(default)]
    pub mtime: i64,
    /// The tar xattrs (name, value); only those the unpacker applies count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What the robot did to make an image ready (`Ingest::build_image` on the robot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// The image's snapshot.
    pub chain_id: Digest,
    /// Whether the snapshot was built now (false: it was there).
    pub snapshot_built: bool,
    /// Layers committed now.
    pub layers_committed: usize,
    /// Object variants made from other variants of the same content.
    pub variants_made: usize,
}

/// The chain id an image's snapshot is named by, on the robot and in the laptop's queries; an
/// image without layers gets the digest of the empty string (no layer stack hashes to it).
pub fn snapshot_id(diff_ids: &[Digest]) -> Digest {
    crate::oci::digest::chain_id(diff_ids).unwrap_or_else(|| Digest::of(b""))
}

/// A lab hub's layer blobs a robot is asked to fetch itself (`fetch`, wire 2.7; `deploy
/// --via`): where the registry is, the read-only credential the laptop got for this deploy,
/// and the blobs. The robot keeps the credential in memory for the request only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubFetch {
    /// `http://host:port` or `https://host:port`: the registry's base URL as the robot reaches
    /// it (no path).
    pub url: String,
    /// The `Authorization` header value (`Bearer …` scoped `repository:…:pull`, or `Basic …`
    /// of a read-only user), if the registry wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// Accept an HTTPS hub's certificate unverified (`--insecure`, as for a lab registry).
    #[serde(default)]
    pub insecure: bool,
    /// The layer blobs, in the order to fetch them.
    pub blobs: Vec<HubBlob>,
    /// How long (ms) to keep asking for a part the hub does not hold yet (404): parts are
    /// pushed while robots fetch them (2.8; 0: never ask again).
    #[serde(default)]
    pub wait_ms: u64,
    /// The laptop answers the robot's `need_credential` during this fetch with a fresh
    /// credential ([`FreshCredential`]): a hub that refuses the one given (a pull token that
    /// expired during a long layer) is asked again with it (2.9; false: it fails the fetch).
    #[serde(default)]
    pub refresh: bool,
}

/// A fresh credential for a fetch under way (wire 2.9, the answer to `need_credential`); kept
/// in memory for the request only and never printed, like [`HubFetch::authorization`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreshCredential {
    /// The `Authorization` header value, or none (the laptop has none to give).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
}

impl std::fmt::Debug for FreshCredential {
    /// Never prints the credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshCredential")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl std::fmt::Debug for HubFetch {
    /// Never prints the credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubFetch")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure", &self.insecure)
            .field("blobs", &self.blobs)
            .field("wait_ms", &self.wait_ms)
            .field("refresh", &self.refresh)
            .finish()
    }
}

/// One layer blob on a hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubBlob {
    /// The repository that holds it (`duckietown/dt-core`).
    pub repository: String,
    /// The blob's digest (of its compressed bytes).
    pub digest: Digest,
    /// Its media type (gzip, zstd or uncompressed tar).
    pub media_type: String,
    /// Its length.
    pub size: u64,
    /// The layer's diff_id (sha256 of the uncompressed tar), which the robot verifies.
    pub diff_id: Digest,
    /// When not empty (2.8), the layer comes as these blobs, in order, instead of one: the
    /// zstd frames of runs of its tar entries, each run ended by the tar's two zero blocks so
    /// that every part is a layer of its own on the hub. The layer is their tars concatenated
    /// with every part's last 1024 bytes left out but the last one's; `digest` is then the
    /// diff_id, `media_type` an uncompressed layer's and `size` the tar's length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<HubPart>,
}

/// One part of a layer on a hub ([`HubBlob::parts`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubPart {
    /// The part's blob (zstd).
    pub digest: Digest,
    /// Its length.
    pub size: u64,
    /// The length of its tar (with the closing zero blocks).
    pub tar_size: u64,
}

/// What a robot's `fetch` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// Layers fetched and committed.
    pub layers: usize,
    /// Layers it had already (nothing fetched).
    pub present: usize,
    /// Blob bytes downloaded from the hub.
    pub bytes: u64,
}
