//! `dt-agent gc`: mark and sweep, under the store's exclusive lock (no import, fsck or ls runs
//! meanwhile: they hold the shared one).
//!
//! Roots: every name in `refs.json`, every manifest digest listed under `roots/` (where
//! releases list the current and previous release), and transfers in flight: a live session's
//! staging is flocked, and objects that no layer names yet are kept for [`IN_FLIGHT_GRACE`]. From each root manifest: its
//! documents, the layers of its config's diff_ids, its snapshot, and every object those layers'
//! tar-splits name. Everything is marked before anything is removed, and a root that cannot be
//! read stops the collection (containerd#1674: never collect from an index that did not load).
//!
//! Layers an unfinished import committed (listed in `imports/*.pending`, younger than
//! [`IN_FLIGHT_GRACE`]) are kept like named ones, so a killed adoption's rerun skips them; gc
//! never runs during an import (the import holds the store lock shared, gc waits for it
//! exclusively).
//!
//! Sweep order: abandoned `tmp/` entries, snapshots, layers, then objects — after the
//! snapshots, so an object's link count says whether a kept snapshot still uses that variant:
//! of the variants of a kept content, those linked from a snapshot stay, and one stays anyway
//! (a layer is complete only while each of its contents has an object).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use super::fsck::read_roots;
use super::import::{clean_tmp, remove_tree};
use super::object::ObjectKey;
use super::tarsplit;
use super::{AgentStore, AgentStoreError, io_err, snapshot_id};
use crate::oci::Digest;
use crate::util::fs::PathContext;

/// What gc removed and kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Images kept (names and roots).
    pub images_kept: usize,
    /// Snapshots removed.
    pub snapshots_removed: usize,
    /// Layers removed.
    pub layers_removed: usize,
    /// Objects removed.
    pub objects_removed: usize,
    /// Bytes of removed objects no snapshot shared (freed).
    pub bytes_freed: u64,
    /// Manifests, indexes and configs removed.
    pub documents_removed: usize,
    /// Abandoned staging directories removed.
    pub tmp_removed: usize,
    /// Layers no image needs, kept because an unfinished import committed them (its rerun
    /// skips them).
    pub layers_pending: usize,
    /// Objects kept because no layer names them yet and they are younger than
    /// [`IN_FLIGHT_GRACE`]: a transfer in flight or cut.
    pub objects_in_flight: usize,
}

/// How long an object no layer names survives gc: a deploy cut by the link resumes with what
/// it had sent if it comes back within a day (containerd's leases expire after 24 h too).
pub const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub(super) fn gc(store: &AgentStore) -> Result<GcReport, AgentStoreError> {
    let mut report = GcReport::default();

    // Mark.
    let mut manifests: BTreeSet<Digest> = BTreeSet::new();
    let mut docs: BTreeSet<Digest> = BTreeSet::new();
    for entry in store.refs()?.into_values() {
        docs.insert(entry.digest);
        manifests.insert(entry.manifest);
    }
    manifests.extend(read_roots(store)?.into_keys());
    let mut layers = BTreeSet::new();
    let mut snaps = BTreeSet::new();
    for m in &manifests {
        let (manifest, config) = store.image_config(m)?;
        docs.insert(m.clone());
        docs.insert(manifest.config.digest.clone());
        snaps.insert(snapshot_id(&config.rootfs.diff_ids));
        layers.extend(config.rootfs.diff_ids.iter().cloned());
    }
    report.images_kept = manifests.len();
    // Layers an unfinished import committed, kept for its rerun (pending.rs).
    let pending = super::pending::protected(store)?;
    report.layers_pending = pending.iter().filter(|d| !layers.contains(*d)).count();
    layers.extend(pending);
    let mut contents = BTreeSet::new();
    for d in &layers {
        if !store.has_layer(d) {
            continue; // fsck reports it; nothing of it to keep
        }
        let split = store.layers_dir().join(d.hex()).join(tarsplit::FILE_NAME);
        let objects = tarsplit::objects_of(&split).map_err(|e| AgentStoreError::Corrupt {
            path: split.clone(),
            reason: format!("gc cannot tell which objects layer {d} needs: {e}"),
        })?;
        contents.extend(objects);
    }

    // Objects the layers about to go name: removed with them. Objects no layer names at all
    // arrived ahead of their layer (a transfer in flight, or one cut and waiting for the next
    // deploy to resume it): kept while they are young.
    let mut claimed = BTreeSet::new();
    let layers_dir = store.layers_dir();
    for e in fs::read_dir(&layers_dir).at("list", &layers_dir)? {
        let e = e.at("list", &layers_dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let doomed = Digest::from_hex(name.trim_start_matches(".gc-"))
            .map_or(true, |d| !layers.contains(&d));
        if doomed {
            // A half-removed layer (a crash during an earlier gc) may have lost its tar-split.
            if let Ok(objects) = tarsplit::objects_of(&e.path().join(tarsplit::FILE_NAME)) {
                claimed.extend(objects);
            }
        }
    }
    let young_after = std::time::SystemTime::now()
        .checked_sub(IN_FLIGHT_GRACE)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);

    // Sweep.
    report.tmp_removed = clean_tmp(store)?;
    report.snapshots_removed = sweep_dirs(&store.snapshots_dir(), &snaps)?;
    report.layers_removed = sweep_dirs(&store.layers_dir(), &layers)?;
    let objects = store.objects_dir();
    for e in fs::read_dir(&objects).at("list", &objects)? {
        let dir = e.at("list", &objects)?.path();
        if !dir.is_dir() {
            continue; // fsck names strays; gc removes only what it understands
        }
        let mut variants: BTreeMap<Digest, Vec<(String, u64, u64)>> = BTreeMap::new();
        let mut others = 0;
        for f in fs::read_dir(&dir).at("list", &dir)? {
            let f = f.at("list", &dir)?;
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(key) = ObjectKey::parse(&name) else {
                others += 1;
                continue;
            };
            let m = f.metadata().at("stat", &f.path())?;
            if !contents.contains(&key.digest)
                && !claimed.contains(&key.digest)
                && m.ctime() >= young_after
            {
                report.objects_in_flight += 1;
                others += 1;
                continue;
            }
            variants
                .entry(key.digest)
                .or_default()
                .push((name, m.nlink(), m.len()));
        }
        let mut left = others;
        for (digest, vs) in variants {
            let keep_one = contents.contains(&digest) && vs.iter().all(|(_, nlink, _)| *nlink <= 1);
            for (i, (name, nlink, len)) in vs.iter().enumerate() {
                let keep = contents.contains(&digest) && (*nlink > 1 || (keep_one && i == 0));
                if keep {
                    left += 1;
                    continue;
                }
                let p = dir.join(name);
                fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
                report.objects_removed += 1;
                if *nlink <= 1 {
                    report.bytes_freed += len;
                }
            }
        }
        if left == 0 {
            fs::remove_dir(&dir).map_err(|e| io_err("remove", &dir, e))?;
        }
    }
    let images = store.images_dir();
    for e in fs::read_dir(&images).at("list", &images)? {
        let e = e.at("list", &images)?;
        let keep = e
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
            .is_some_and(|d| docs.contains(&d));
        if !keep {
            let p = e.path();
            fs::remove_file(&p).map_err(|e| io_err("remove", &p, e))?;
            report.documents_removed += 1;
        }
    }
    super::pending::sweep_sources(store)?;
    // One syncfs rather than an fsync per directory touched (up to 256 object directories).
    let f = fs::File::open(store.root()).at("open", store.root())?;
    rustix::fs::syncfs(&f)
        .map_err(std::io::Error::from)
        .at("sync the file system holding", store.root())?;
    Ok(report)
}

/// Removes the entries of `dir` not named by a kept digest; returns how many.
fn sweep_dirs(dir: &std::path::Path, keep: &BTreeSet<Digest>) -> Result<usize, AgentStoreError> {
    let mut removed = 0;
    for e in fs::read_dir(dir).at("list", dir)? {
        let e = e.at("list", dir)?;
        let kept = e
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
            .is_some_and(|d| keep.contains(&d));
        if !kept {
            let p = e.path();
            // Rename out of the way first, so a crash mid-removal never leaves a half-removed
            // layer or snapshot under its name.
            let doomed = dir.join(format!(".gc-{}", e.file_name().to_string_lossy()));
            let target = if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".gc-"))
            {
                p.clone()
            } else {
                fs::rename(&p, &doomed).map_err(|e| io_err("rename", &p, e))?;
                doomed
            };
            remove_tree(&target).map_err(|e| io_err("remove", &target, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}
