//! Layer snapshots for RUN: each layer of a stage, unpacked on its own, is an overlayfs lower
//! directory; a RUN's upper directory, once turned into a layer, becomes that layer's snapshot.
//!
//! ```text
//! $DTS_HOME/build/snapshots/
//!   layers/<diff_id hex>/   one layer in overlay form (its whiteouts are 0:0 devices)
//!   layers/<diff_id hex>.whiteouts   marker: this layer has OCI whiteouts, use flat/
//!   flat/<chain_id hex>/    a whole chain flattened, for chains whose layers carry OCI
//!                           whiteouts (those only mean something applied onto what is below)
//!   tmp/<unique>/           being unpacked, or a RUN's upper and work dirs
//! ```
//!
//! Everything is created under `tmp/` and renamed into place, so a killed build leaves at worst
//! a stale `tmp/` entry and never a half-unpacked snapshot under a final name. Entries are named
//! with their process's pid ([`temp_name`]): the next build removes those of dead processes,
//! unmounting first whatever a killed RUN left mounted under one.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::BuildError;
use super::exec::LayerRef;
use crate::layer::{self, DevicePolicy, UnpackOptions, UnpackStats};
use crate::oci::digest::chain_id;
use crate::oci::{Compression, Digest};
use crate::runtime::overlay::{unescape_mountinfo, unmount};
use crate::store::Store;
use crate::util::fs::{PathContext, create_dir_all, pid_alive, temp_name, temp_owner};
use crate::util::locks::KeyLocks;

/// The suffix of `layers/<hex>.whiteouts`, the marker of a layer that has whiteouts.
pub(super) const WHITEOUTS_MARKER: &str = ".whiteouts";

/// overlayfs takes its lower dirs in one mount option of at most a page; past this many layers
/// the chain is flattened instead.
const MAX_LOWERS: usize = 32;

/// The snapshot directories of one `DTS_HOME`.
pub struct Snapshots {
    root: PathBuf,
    /// Snapshots being unpacked by one of this build's threads.
    busy: KeyLocks,
}

impl Snapshots {
    /// Snapshots under `root`.
    pub fn new(root: &Path) -> Result<Snapshots, BuildError> {
        for d in ["layers", "flat", "tmp"] {
            create_dir_all(&root.join(d))?;
        }
        clean_stale_tmp(&root.join("tmp"))?;
        Ok(Snapshots {
            root: root.to_path_buf(),
            busy: KeyLocks::default(),
        })
    }

    /// A fresh `(upper, work)` pair for a RUN, on the snapshots' file system.
    pub fn scratch(&self) -> Result<(PathBuf, PathBuf), BuildError> {
        let dir = self.root.join("tmp").join(temp_name("run-"));
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        create_dir_all(&upper)?;
        create_dir_all(&work)?;
        Ok((upper, work))
    }

    /// Keeps a RUN's upper dir as the snapshot of the layer made from it.
    pub fn adopt(&self, diff_id: &Digest, upper: &Path) -> Result<(), BuildError> {
        let dest = self.root.join("layers").join(diff_id.hex());
        if !dest.exists() && fs::rename(upper, &dest).is_err() {
            // Another build made the same layer first; its copy is as good as ours.
        }
        if let Some(parent) = upper.parent() {
            let _ = fs::remove_dir_all(parent);
        }
        Ok(())
    }

    /// The lower dirs (bottom first) that present `layers` as one file system.
    pub fn lowerdirs(
        &self,
        store: &Store,
        layers: &[LayerRef],
    ) -> Result<Vec<PathBuf>, BuildError> {
        if layers.len() > MAX_LOWERS {
            return Ok(vec![self.flat(store, layers)?]);
        }
        let mut out = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            match self.alone(store, l)? {
                Some(dir) => out.push(dir),
                None => out = vec![self.flat(store, &layers[..=i])?],
            }
        }
        Ok(out)
    }

    /// The snapshot of layer `l` on its own, unpacked if it is not there yet; `None` for a
    /// layer with whiteouts, which only mean something flattened onto the layers below.
    fn alone(&self, store: &Store, l: &LayerRef) -> Result<Option<PathBuf>, BuildError> {
        let hex = l.diff_id.hex();
        let dir = self.root.join("layers").join(hex);
        // Both targets' threads may need the same layer at once (a native stage's base, the
        // largest there is: compilers): one unpacks it, the other waits and finds it.
        let lock = self.busy.of(hex);
        let _unpacking = lock.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        // A layer with whiteouts is seen as such while it is unpacked (a base's layers almost
        // never have any, so it is read once, not once to look and once to unpack) and
        // remembered by a marker, so that it is not unpacked again to find out.
        let marker = self
            .root
            .join("layers")
            .join(format!("{hex}{WHITEOUTS_MARKER}"));
        if marker.exists() {
            return Ok(None);
        }
        let tmp = self.root.join("tmp").join(temp_name("layer-"));
        create_dir_all(&tmp)?;
        let stats = match unpack_into(store, l, &tmp) {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        if stats.whiteouts + stats.opaques > 0 {
            let _ = fs::remove_dir_all(&tmp);
            fs::write(&marker, b"").at("write", &marker)?;
            return Ok(None);
        }
        if fs::rename(&tmp, &dir).is_err() {
            // Another build (another process) unpacked it first.
            let _ = fs::remove_dir_all(&tmp);
        }
        Ok(Some(dir))
    }

    fn flat(&self, store: &Store, layers: &[LayerRef]) -> Result<PathBuf, BuildError> {
        let ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let chain = chain_id(&ids).expect("a chain has at least one layer");
        let dir = self.root.join("flat").join(chain.hex());
        let lock = self.busy.of(&format!("flat-{}", chain.hex()));
        let _flattening = lock.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.root.join("tmp").join(temp_name("flat-"));
        create_dir_all(&tmp)?;
        for l in layers {
            if let Err(e) = unpack_into(store, l, &tmp) {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        if fs::rename(&tmp, &dir).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        Ok(dir)
    }
}

/// Removes the `tmp/` entries of processes that are gone. Mounts under one are unmounted
/// (innermost first) before anything is deleted; an entry whose mounts will not go is left in
/// place, never deleted across a mount.
fn clean_stale_tmp(tmp: &Path) -> Result<(), BuildError> {
    let listing = fs::read_dir(tmp).at("list", tmp)?;
    let mut stale = Vec::new();
    for item in listing {
        let name = item
            .at("list", tmp)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        let owner = ["run-", "layer-", "flat-"]
            .iter()
            .find_map(|prefix| temp_owner(&name, prefix));
        if owner.is_some_and(|pid| !pid_alive(pid)) {
            stale.push(tmp.join(name));
        }
    }
    if stale.is_empty() {
        return Ok(());
    }
    let info_path = Path::new("/proc/self/mountinfo");
    let info = fs::read_to_string(info_path).at("read", info_path)?;
    'entries: for dir in stale {
        let prefix = format!("{}/", dir.display());
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo)
            .filter(|m| m.starts_with(&prefix))
            .collect();
        points.sort();
        for p in points.iter().rev() {
            if unmount(Path::new(p)).is_err() {
                continue 'entries;
            }
        }
        // Best effort: what cannot be removed now is retried at the next start.
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn open_layer(store: &Store, l: &LayerRef) -> Result<Box<dyn std::io::Read>, BuildError> {
    let f = store.open_blob(&l.descriptor.digest)?;
    let c = Compression::of_media_type(&l.descriptor.media_type).unwrap_or(Compression::Gzip);
    let path = store.blob_path(&l.descriptor.digest);
    Ok(c.decoder(BufReader::new(f)).at("decompress", &path)?)
}

fn unpack_into(store: &Store, l: &LayerRef, dir: &Path) -> Result<UnpackStats, BuildError> {
    // An uncompressed layer's diff_id is its blob's digest, which the store checked when the
    // blob was written: hashing the tar again (a second of CPU for a 900 MB base) would check
    // nothing new. A compressed layer's diff_id is the config's claim, checked here.
    let verified = l.diff_id == l.descriptor.digest
        && Compression::of_media_type(&l.descriptor.media_type) == Some(Compression::None);
    let opts = UnpackOptions {
        same_owner: rustix::process::geteuid().is_root(),
        devices: DevicePolicy::Create,
        expect_diff_id: (!verified).then(|| l.diff_id.clone()),
        hash: !verified,
        ..Default::default()
    };
    Ok(layer::unpack(open_layer(store, l)?, dir, &opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Descriptor, media};

    /// An uncompressed layer of `(path, content)` files, stored; `None` content is a directory.
    fn stored_layer(store: &Store, files: &[(&str, Option<&str>)]) -> LayerRef {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut h = tar::Header::new_ustar();
            let data = content.unwrap_or("").as_bytes();
            h.set_entry_type(if content.is_some() {
                tar::EntryType::Regular
            } else {
                tar::EntryType::Directory
            });
            h.set_mode(if content.is_some() { 0o644 } else { 0o755 });
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let digest = store.put_blob(&tar).unwrap();
        LayerRef {
            descriptor: Descriptor::new(media::OCI_LAYER, digest.clone(), tar.len() as u64),
            diff_id: digest,
        }
    }

    #[test]
    fn a_layer_with_whiteouts_is_flattened_once_and_remembered() {
        if !rustix::process::geteuid().is_root() {
            return crate::util::skip_test("snapshots keep the layers' owners: needs root");
        }
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let snaps = Snapshots::new(&t.path().join("snapshots")).unwrap();
        let base = stored_layer(
            &store,
            &[("a", None), ("a/x", Some("x")), ("a/y", Some("y"))],
        );
        let top = stored_layer(
            &store,
            &[("a", None), ("a/.wh.x", Some("")), ("a/z", Some("z"))],
        );

        let lowers = snaps
            .lowerdirs(&store, &[base.clone(), top.clone()])
            .unwrap();
        assert_eq!(lowers.len(), 1, "{lowers:?}");
        let flat = &lowers[0];
        assert!(flat.starts_with(t.path().join("snapshots/flat")));
        assert!(!flat.join("a/x").exists(), "the whiteout applied");
        assert_eq!(fs::read(flat.join("a/y")).unwrap(), b"y");
        assert_eq!(fs::read(flat.join("a/z")).unwrap(), b"z");
        let layers = t.path().join("snapshots/layers");
        assert!(
            layers.join(base.diff_id.hex()).is_dir(),
            "the base alone is a snapshot"
        );
        assert!(
            !layers.join(top.diff_id.hex()).exists(),
            "no snapshot of the top alone"
        );
        assert!(
            layers
                .join(format!("{}.whiteouts", top.diff_id.hex()))
                .is_file()
        );
        assert!(
            fs::read_dir(t.path().join("snapshots/tmp"))
                .unwrap()
                .next()
                .is_none()
        );

        // Next time the marker and the flat directory answer: the top layer is not read again.
        fs::remove_file(store.blob_path(&top.descriptor.digest)).unwrap();
        assert_eq!(snaps.lowerdirs(&store, &[base, top]).unwrap(), lowers);
    }

    #[test]
    fn tmp_entries_of_dead_processes_go_at_the_next_start() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("tmp");
        // No process has a pid above the kernel's limit (2^22).
        let dead = tmp.join("run-99999999-0-0.tmp");
        let live = tmp.join(temp_name("run-"));
        let other = tmp.join("not-ours");
        for d in [&dead, &live, &other] {
            fs::create_dir_all(d.join("upper/x")).unwrap();
        }
        Snapshots::new(root.path()).unwrap();
        assert!(!dead.exists());
        assert!(live.join("upper/x").is_dir(), "this process's entry stays");
        assert!(other.is_dir(), "a name without a pid stays");
    }
}
