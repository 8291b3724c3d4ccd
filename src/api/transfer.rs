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
