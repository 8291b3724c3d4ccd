//! Recording a layer without applying it: the tar is read with the same limits, its names
//! cleaned and checked as [`unpack_with`](super::unpack_with) checks them, and every regular
//! file's body goes to the sink's [`record_file`](super::FileSink::record_file) — but nothing
//! is created on disk. The agent's import uses it: it only needs a layer's objects and its
//! tar-split, and a scratch tree of the layer (a `mkdirat` per directory, a link per file,
//! all removed again) was most of an adoption's file system calls on a robot's card.
//!
//! What needs the tree is not checked here: where a name lands through the layer's own
//! symlinks, hard link targets, whiteouts' victims. The unpack that builds a snapshot from the
//! recorded layer, onto its real lower layers, checks all of that before any container sees it.

use std::io::{self, Read};
use std::path::Path;

use super::path::{self, MAX_PATH, to_path};
use super::sink::FileSink;
use super::{
    DevicePolicy, EntryKind, OPAQUE_MARKER, TarEntry, TarReader, UnpackError, UnpackOptions,
    UnpackStats, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX, all_read, feed_body, file_meta, hostile,
    invalid, owner_of,
};

/// Reads the layer `layer` (an uncompressed tar stream) to its end, handing each regular
/// file's body to `sink`, creating nothing. The stats count what an unpack would have
/// created; `diff_id` and `size` are the stream's.
pub fn record_with<R: Read>(
    layer: R,
    opts: &UnpackOptions,
    sink: &mut dyn FileSink,
) -> Result<UnpackStats, UnpackError> {
    let mut reader = opts.reader(layer);
    let mut stats = UnpackStats::empty();
    while let Some(entry) = reader.next_entry()? {
        stats.entries += 1;
        record_entry(&mut reader, &entry, opts, sink, &mut stats)?;
    }
    opts.finish(reader, stats)
}

/// One entry: its name and kind checked, a regular file's body handed to the sink.
fn record_entry<R: Read>(
    reader: &mut TarReader<R>,
    e: &TarEntry,
    opts: &UnpackOptions,
    sink: &mut dyn FileSink,
    stats: &mut UnpackStats,
) -> Result<(), UnpackError> {
    let shown = e.display_path();
    let name = path::clean(&e.path).map_err(|r| hostile(&shown, r))?;
    if name.is_empty() {
        if e.kind == EntryKind::Dir {
            stats.skipped += 1;
            return Ok(());
        }
        return Err(hostile(
            &shown,
            "a non-directory entry names the root itself",
        ));
    }
    let (_, base) = path::split_last(&name);
    if base.starts_with(WHITEOUT_PREFIX.as_bytes()) {
        if e.kind != EntryKind::File {
            return Err(hostile(&shown, "a whiteout must be a regular file"));
        }
        let victim = &base[WHITEOUT_PREFIX.len()..];
        if base == OPAQUE_MARKER.as_bytes() {
            stats.opaques += 1;
        } else if base.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            stats.skipped += 1;
        } else if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(hostile(&shown, "the whiteout names no file"));
        } else {
            stats.whiteouts += 1;
        }
        return Ok(());
    }
    let kind = if e.kind == EntryKind::File && e.path.ends_with(b"/") {
        EntryKind::Dir // old (V7) archives mark directories with a trailing slash only
    } else {
        e.kind
    };
    let owner = owner_of(opts, &shown, e)?;
    match kind {
        EntryKind::Other(flag) => {
            return Err(invalid(
                &shown,
                format!("unsupported entry type `{}`", flag.escape_ascii()),
            ));
        }
        EntryKind::CharDevice | EntryKind::BlockDevice => match opts.devices {
            DevicePolicy::Refuse => return Err(hostile(&shown, "device nodes are not allowed")),
            DevicePolicy::Skip => stats.skipped += 1,
            DevicePolicy::Create => stats.specials += 1,
        },
        EntryKind::Fifo => stats.specials += 1,
        EntryKind::Dir => stats.dirs += 1,
        EntryKind::Symlink => {
            if e.link.is_empty() || e.link.contains(&0) || e.link.len() > MAX_PATH {
                return Err(hostile(
                    &shown,
                    "a symlink target must be 1 to 4096 bytes without NUL",
                ));
            }
            stats.symlinks += 1;
        }
        EntryKind::Hardlink => {
            let target = path::clean(&e.link)
                .map_err(|r| hostile(&shown, format!("hard link target: {r}")))?;
            if target.is_empty() {
                return Err(hostile(&shown, "a hard link to the root"));
            }
            stats.hardlinks += 1;
        }
        EntryKind::File => {
            let clean_path = to_path(&name);
            let meta = file_meta(opts, e, &clean_path, owner);
            record_body(reader, &meta, sink, &shown)?;
            stats.files += 1;
            stats.file_bytes += e.size;
        }
    }
    Ok(())
}

/// Hands a body to the sink, or drains it when the sink does not take it.
fn record_body<R: Read>(
    reader: &mut TarReader<R>,
    meta: &super::FileMeta<'_>,
    sink: &mut dyn FileSink,
    shown: &Path,
) -> Result<(), UnpackError> {
    feed_body(reader, shown, "record", |c| {
        if !sink.record_file(meta, c)? {
            io::copy(c, &mut io::sink())?;
        }
        Ok(())
    })?;
    all_read(reader, shown, "record")
}
