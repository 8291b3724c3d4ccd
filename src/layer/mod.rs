//! Layer tars: the canonical writer, a bounded reader, the overlay upper-dir differ and the
//! safe applier (unpack).
//!
//! Owns how a file tree becomes the bytes of an OCI layer and back; it does not own where layers
//! are stored (`store/`), how they travel, or how snapshots are named. Nothing here prints, and
//! nothing here follows a symlink on the host: every file system call is relative to a directory
//! fd with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, and paths inside an image are resolved as if the
//! unpack root were `/` (`openat2(RESOLVE_IN_ROOT)`, or a userspace walk on older kernels).
//!
//! ```text
//!   directory tree ──walk──┐
//!   overlay upper ──diff───┼─► [Change] ─► LayerBuilder ─► tar ─► (gzip|zstd) ─► out
//!   COPY entries ──add_*───┘                   │ sha256 while writing: diff_id, digest
//!
//!   tar (already decompressed) ─► TarReader ─► unpack ─► root dir   (diff_id checked)
//!                                 (limits)     (whiteouts, in-root resolution, policy)
//! ```
//!
//! Modules:
//! - [`write`](mod@write): canonical layer writer ([`LayerBuilder`], [`write_tree`], [`write_changes`]);
//! - [`read`]: a streaming tar reader with hard limits ([`TarReader`]);
//! - [`diff`]: overlayfs upper dir → changes (whiteouts, opaque dirs, mount stubs);
//! - [`unpack`](mod@unpack): apply a layer onto a directory, containing whatever the layer holds.
//!
//! Whiteouts follow the OCI image spec (`image-spec/layer.md`): `.wh.<name>` deletes `<name>`
//! from lower layers, `<dir>/.wh..wh..opq` hides everything the lower layers had in `<dir>`.

pub mod diff;
mod host;
mod path;
pub mod read;
mod resolve;
pub mod unpack;
pub mod write;

pub use diff::{DiffError, DiffOptions, overlay_changes, write_overlay_layer};
pub use path::canonical_cmp;
pub use read::{EntryKind, ReadError, ReadLimits, TarEntry, TarReader};
pub use resolve::Resolver;
pub(crate) use resolve::Root;
pub use unpack::{
    CopySink, DevicePolicy, FileMeta, FileRecord, FileSink, HashingSink, UnpackError,
    UnpackOptions, UnpackStats, record_with, unpack, unpack_with, xattr_allowed,
};
pub use write::{
    Change, EntryMeta, LayerBuilder, SpecialFile, WriteError, WriteOptions, WrittenLayer,
    write_changes, write_tree,
};

/// Prefix of a whiteout entry's base name (OCI image spec, "Whiteouts").
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Base name of an opaque-directory marker: everything the lower layers had in its directory is
/// hidden.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of whiteout "meta" names (aufs leftovers such as `.wh..wh.plnk`); never real files.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
