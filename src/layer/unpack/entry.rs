//! What a layer entry becomes under the unpack policy ([`UnpackOptions`]): the owner it is
//! given and the metadata a [`FileSink`](super::FileSink) is told, the same whether the layer
//! is applied ([`unpack_with`](super::unpack_with)) or only recorded
//! ([`record_with`](super::record_with)).

use std::path::Path;

use rustix::fs::{Gid, Uid};

use super::{FileMeta, UnpackError, UnpackOptions, hostile, xattr_allowed};
use crate::layer::TarEntry;

/// The owner to give an entry: its own with [`UnpackOptions::same_owner`], else none.
pub(super) fn owner_of(
    opts: &UnpackOptions,
    shown: &Path,
    e: &TarEntry,
) -> Result<Option<(Uid, Gid)>, UnpackError> {
    if !opts.same_owner {
        return Ok(None);
    }
    let id = |v: u64, what| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| hostile(shown, format!("{what} {v} is out of range")))
    };
    Ok(Some((
        Uid::from_raw(id(e.uid, "uid")?),
        Gid::from_raw(id(e.gid, "gid")?),
    )))
}

/// What the sink is told about a regular file: the unpacker's policy applied (owner only with
/// `same_owner`, only the xattrs it would set).
pub(super) fn file_meta<'e>(
    opts: &UnpackOptions,
    e: &'e TarEntry,
    path: &'e Path,
    owner: Option<(Uid, Gid)>,
) -> FileMeta<'e> {
    FileMeta {
        path,
        size: e.size,
        mode: e.mode & 0o7777,
        owner: owner.map(|(u, g)| (u.as_raw(), g.as_raw())),
        mtime: e.mtime,
        xattrs: e
            .xattrs
            .iter()
            .filter(|(k, _)| opts.xattrs && xattr_allowed(k))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect(),
    }
}
