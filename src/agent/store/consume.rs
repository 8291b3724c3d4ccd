//! The streaming half of `dt-agent image import`: each archive entry as it streams by.
//!
//! ```text
//! tmp/import-<pid>-…/        the import's staging area (import.rs)
//!   layer/                   tar-split.zst + meta.json of the layer being consumed
//!   objects/<object name>    its new objects, metadata applied
//! ```
//!
//! A layer (a `<id>/layer.tar`, or any entry that is a tar or a gzip/zstd stream) goes through
//! a hasher (its blob digest), the decompressor, the [`Tee`] recording its tar-split, and the
//! layer recorder (crate::layer's `record_with`: the unpacker's checks, nothing created) with
//! the [`LinkSink`], which hashes every body and makes each new content an object; its diff_id is the sha256 of the decompressed stream. If the store
//! already holds that layer, all of it is discarded (its objects were all there: nothing was
//! written but bodies over 256 KiB, spilled and removed). Otherwise the tar-split is verified
//! by rebuilding the tar from it, and the layer is committed at once — `syncfs`, listed in the
//! import's `.pending` file, objects renamed into place, `syncfs`, `layers/<diff>/` renamed
//! into place — so the peak extra disk is one layer's new objects and spills, and an import
//! killed later keeps it (pending.rs). An entry whose layer a previous import recorded
//! (`imports/sources/`), and which the store holds, is only hashed.
//!
//! Everything else (configs, `manifest.json`, `repositories`, OCI manifests and indexes) is
//! small and kept in memory for the end, when import.rs plans the images.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

use super::import::{commit_objects, remove_tree, rename_noreplace, syncfs};
use super::object::{LinkSink, Recorder, SourceCell, Staging, Tee};
use super::pending::{self, Pending};
use super::tarsplit::{self, SplitWriter};
use super::{AgentStore, AgentStoreError, LayerMeta};
use crate::archive::Entry;
use crate::layer::{DevicePolicy, UnpackOptions, record_with};
use crate::oci::json::canonical;
use crate::oci::{Compression, Digest};
use crate::progress::{Event, Reporter};
use crate::store::MAX_CONFIG_BYTES;
use crate::util::fs::PathContext;
use crate::util::read_full;

/// Most bytes of small entries kept in memory (configs of hundreds of images fit).
const MAX_SMALL_TOTAL: u64 = 64 << 20;

/// A layer entry, consumed.
#[derive(Clone, Debug)]
pub(super) struct ConsumedLayer {
    /// sha256 of its uncompressed tar.
    pub diff_id: Digest,
    /// sha256 of the entry's bytes as the archive holds them (compressed or not).
    pub blob: Digest,
    /// Their length.
    pub blob_size: u64,
    /// How they are compressed.
    pub compression: Compression,
}

/// What the entries brought, and what consuming them did.
pub(super) struct Consumer<'a> {
    store: &'a AgentStore,
    dir: PathBuf,
    is_root: bool,
    reporter: &'a dyn Reporter,
    expect: Option<u64>,
    /// Small entries by archive path.
    pub small: BTreeMap<String, Vec<u8>>,
    small_bytes: u64,
    /// Links: archive path → archive path.
    pub links: BTreeMap<String, String>,
    /// Layer entries by archive path.
    pub layers: BTreeMap<String, ConsumedLayer>,
    /// Layers this import committed.
    pub added: BTreeSet<Digest>,
    /// Objects it committed, and their bytes.
    pub objects_added: usize,
    pub object_bytes_added: u64,
    /// Bytes of entries read.
    pub bytes_read: u64,
    /// Its `.pending` file.
    pub pending: Pending,
    /// The diff_id the next layer entry must have, and what its bytes were rebuilt from (a
    /// layer rebuilt from Docker's files is checked here, by the tar reader's own hash, before
    /// it is committed).
    pub expect_diff_id: Option<(Digest, PathBuf)>,
    /// Where the next layer entry's bodies come from, when it is rebuilt from files.
    pub source: Option<SourceCell>,
}

impl<'a> Consumer<'a> {
    pub(super) fn new(
        store: &'a AgentStore,
        dir: &Path,
        expect: Option<u64>,
        reporter: &'a dyn Reporter,
    ) -> Consumer<'a> {
        Consumer {
            store,
            dir: dir.to_path_buf(),
            is_root: rustix::process::geteuid().is_root(),
            reporter,
            expect,
            small: BTreeMap::new(),
            small_bytes: 0,
            links: BTreeMap::new(),
            layers: BTreeMap::new(),
            added: BTreeSet::new(),
            objects_added: 0,
            object_bytes_added: 0,
            bytes_read: 0,
            pending: Pending::new(store),
            expect_diff_id: None,
            source: None,
        }
    }

    /// Follows links (at most 16) to the entry a path names.
    pub(super) fn resolve<'p>(&'p self, path: &'p str) -> &'p str {
        let mut p = path;
        for _ in 0..16 {
            match self.links.get(p) {
                Some(t) => p = t,
                None => break,
            }
        }
        p
    }

    /// Takes one entry.
    pub(super) fn entry(&mut self, e: Entry<'_>) -> Result<(), AgentStoreError> {
        let (path, size, content) = match e {
            Entry::Link { path, target } => {
                self.links.insert(path.to_string(), target.to_string());
                return Ok(());
            }
            Entry::File {
                path,
                size,
                content,
            } => (path, size, content),
        };
        let mut head = vec![0u8; usize::try_from(size.min(512)).unwrap_or(512)];
        read_full(content, &mut head).map_err(|e| stream_err(path, e))?;
        if is_layer(path, &head, size) {
            return self.layer(path, size, head, content);
        }
        if size > MAX_CONFIG_BYTES || self.small_bytes + size > MAX_SMALL_TOTAL {
            return Err(AgentStoreError::bad_archive(format!(
                "entry `{path}` ({size} bytes) is neither a layer nor a document this size"
            )));
        }
        let mut bytes = head;
        content
            .read_to_end(&mut bytes)
            .map_err(|e| stream_err(path, e))?;
        self.bytes_read += size;
        self.small_bytes += size;
        self.small.insert(path.to_string(), bytes);
        Ok(())
    }

    fn layer(
        &mut self,
        path: &str,
        size: u64,
        head: Vec<u8>,
        content: &mut dyn Read,
    ) -> Result<(), AgentStoreError> {
        let n = self.layers.len() + 1;
        let id = format!("entry {path}");
        self.reporter.event(Event::start(
            id.clone(),
            format!("layer {n}: `{path}`"),
            Some(size),
        ));
        let compression = Compression::sniff(&head);
        let mut raw = Hashing {
            inner: io::Cursor::new(head).chain(content),
            hasher: Sha256::new(),
            // An uncompressed entry's digest is its diff_id, which the tar reader computes (it
            // reads to the end of the stream): one pass over the bytes, not two.
            on: compression != Compression::None,
            len: 0,
        };
        let key = pending::source_key(path);
        let known = key
            .and_then(|k| pending::source(self.store, k))
            .or_else(|| {
                // An uncompressed OCI blob is named by its diff_id.
                let hex = path.strip_prefix("blobs/sha256/")?;
                let d = Digest::from_hex(hex).ok()?;
                (compression == Compression::None && self.store.has_layer(&d)).then_some(d)
            });
        let was_known = known.is_some();
        let (diff_id, outcome) = match known {
            Some(expected) => {
                let diff_id = hash_only(&mut raw, compression, path)?;
                if diff_id != expected {
                    if let Some(k) = key {
                        pending::drop_source(self.store, k);
                    }
                    return Err(AgentStoreError::bad_archive(format!(
                        "entry `{path}` is not the layer {expected} it was at an earlier import \
                         (it is {diff_id}); run the import again"
                    )));
                }
                (diff_id, "present (hashed only)")
            }
            None => self.unpack(path, &mut raw, compression)?,
        };
        let drained = io::copy(&mut raw, &mut io::sink()).map_err(|e| stream_err(path, e))?;
        let blob = if raw.on {
            Digest::from_hex(&hex::encode(raw.hasher.finalize())).expect("sha256 hex")
        } else if drained == 0 {
            diff_id.clone()
        } else {
            return Err(AgentStoreError::bad_archive(format!(
                "entry `{path}` has {drained} bytes after its tar's end"
            )));
        };
        if let Some(hex) = path.strip_prefix("blobs/sha256/")
            && hex != blob.hex()
        {
            return Err(AgentStoreError::bad_archive(format!(
                "entry `{path}` hashes to {blob}, not to its name"
            )));
        }
        // An uncompressed blob is named by its diff_id already; the others are remembered.
        if let Some(k) = key
            && !was_known
            && (compression != Compression::None || path.ends_with("/layer.tar"))
        {
            pending::set_source(self.store, k, &diff_id)?;
        }
        self.bytes_read += raw.len;
        self.layers.insert(
            path.to_string(),
            ConsumedLayer {
                diff_id,
                blob,
                blob_size: raw.len,
                compression,
            },
        );
        self.reporter
            .event(Event::finish(id, format!("{outcome}{}", self.progress())));
        Ok(())
    }

    /// `; 120.0 of ~1400.0 MiB (8%)` when the caller said how much to expect.
    fn progress(&self) -> String {
        let mib = |n: u64| n as f64 / (1 << 20) as f64;
        match self.expect {
            Some(total) if total > 0 => format!(
                "; {:.1} of ~{:.1} MiB read ({}%)",
                mib(self.bytes_read),
                mib(total),
                (self.bytes_read * 100 / total).min(100)
            ),
            _ => format!("; {:.1} MiB read", mib(self.bytes_read)),
        }
    }

    /// Records a layer's objects and tar-split (nothing of it unpacked); commits it unless the store
    /// has it. Returns its diff_id and what happened.
    fn unpack(
        &mut self,
        path: &str,
        raw: &mut dyn Read,
        compression: Compression,
    ) -> Result<(Digest, &'static str), AgentStoreError> {
        let layer_dir = self.dir.join("layer");
        let objects = self.dir.join("objects");
        for d in [&layer_dir, &objects] {
            remove_tree(d).at("remove", d)?;
        }
        for d in [&layer_dir, &objects] {
            fs::create_dir(d).at("create directory", d)?;
        }
        let split_path = layer_dir.join(tarsplit::FILE_NAME);
        let recorder = Rc::new(RefCell::new(Recorder {
            split: SplitWriter::create(&split_path).at("create", &split_path)?,
            in_body: false,
            pos: 0,
        }));
        let dec = compression.decoder(raw).map_err(|e| {
            AgentStoreError::bad_archive(format!("`{path}` does not decompress: {e}"))
        })?;
        let mut staging = Staging::new(objects.clone(), self.store.objects_dir());
        let opts = UnpackOptions {
            same_owner: self.is_root,
            // The device cgroup is the gate; a node on disk would only be noise (docs/security.md).
            devices: DevicePolicy::Skip,
            ..UnpackOptions::default()
        };
        let tee = Tee {
            inner: dec,
            rec: Some(recorder.clone()),
        };
        let mut sink = LinkSink {
            staging: &mut staging,
            recorder: Some(recorder.clone()),
            known: None,
            // Positions are the source's only when nothing decompresses in between.
            source: self
                .source
                .clone()
                .filter(|_| compression == Compression::None),
        };
        // Recorded, not unpacked: the objects and the tar-split are all the store keeps of
        // a layer; snapshots are built from them later (layer::unpack::record).
        let stats =
            record_with(tee, &opts, &mut sink).map_err(|source| AgentStoreError::LayerEntry {
                entry: path.to_string(),
                source,
            })?;
        drop(sink);
        let diff_id = stats.diff_id.clone();
        if let Some((want, from)) = self.expect_diff_id.as_ref().filter(|(w, _)| *w != diff_id) {
            return Err(AgentStoreError::DockerLayer {
                diff_id: want.clone(),
                reason: format!(
                    "the tar rebuilt from `{}` ({} bytes) hashes to {diff_id}, not to the \
                     layer's diff_id: the diff directory was changed",
                    from.display(),
                    stats.size
                ),
            });
        }
        let rec = Rc::try_unwrap(recorder)
            .ok()
            .expect("the tee and the sink are gone")
            .into_inner();
        if self.store.has_layer(&diff_id) || self.added.contains(&diff_id) {
            // Every object it names is here already (a complete layer's are).
            drop(rec);
            for d in [&layer_dir, &objects] {
                remove_tree(d).at("remove", d)?;
            }
            return Ok((diff_id, "present"));
        }
        let (split_digest, tar_len, files) = rec.split.finish(&diff_id).at("write", &split_path)?;
        let mismatch = |reason: String| AgentStoreError::SplitMismatch {
            diff_id: diff_id.clone(),
            reason,
        };
        let rebuilt = tarsplit::rebuild(
            &split_path,
            &mut |d| staging.content.get(d).cloned(),
            &mut io::sink(),
        )
        .map_err(|e| mismatch(e.to_string()))?;
        if rebuilt.diff_id != diff_id
            || rebuilt.size != stats.size
            || tar_len != stats.size
            || rebuilt.split_digest != split_digest
            || rebuilt.claimed != (diff_id.clone(), stats.size)
        {
            return Err(mismatch(format!(
                "rebuilt {} bytes hashing to {}, the layer has {} bytes",
                rebuilt.size, rebuilt.diff_id, stats.size
            )));
        }
        let meta = LayerMeta {
            diff_id: diff_id.clone(),
            size: stats.size,
            tar_split: split_digest,
            files,
        };
        let mp = layer_dir.join("meta.json");
        fs::write(&mp, canonical(&meta)).at("write", &mp)?;
        self.commit(&staging, &layer_dir, &diff_id)?;
        remove_tree(&objects).at("remove", &objects)?;
        Ok((diff_id, "new"))
    }

    /// The store's commit order for one layer: data, the `.pending` line, objects, layer.
    fn commit(
        &mut self,
        staging: &Staging,
        layer_dir: &Path,
        diff_id: &Digest,
    ) -> Result<(), AgentStoreError> {
        syncfs(&self.dir)?;
        self.pending.add(diff_id)?;
        let (added, bytes) = commit_objects(self.store, staging)?;
        self.objects_added += added;
        self.object_bytes_added += bytes;
        syncfs(&self.dir)?;
        let dest = self.store.layers_dir().join(diff_id.hex());
        match rename_noreplace(layer_dir, &dest) {
            Ok(()) => {}
            // Another import committed it meanwhile: the same layer.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                remove_tree(layer_dir).at("remove", layer_dir)?;
            }
            Err(e) => return Err(super::io_err("rename into place", &dest, e)),
        }
        self.added.insert(diff_id.clone());
        Ok(())
    }
}

/// Whether an entry is a layer: named so, compressed, or a tar (ustar magic, or the empty
/// tar: zero blocks).
fn is_layer(path: &str, head: &[u8], size: u64) -> bool {
    path.ends_with("layer.tar")
        || Compression::sniff(head) != Compression::None
        || head.get(257..262) == Some(b"ustar")
        || (size >= 1024 && head.len() == 512 && head.iter().all(|b| *b == 0))
}

/// Hashes an entry known to be a stored layer; returns its diff_id.
fn hash_only(
    raw: &mut dyn Read,
    compression: Compression,
    path: &str,
) -> Result<Digest, AgentStoreError> {
    let dec = compression
        .decoder(raw)
        .map_err(|e| AgentStoreError::bad_archive(format!("`{path}` does not decompress: {e}")))?;
    crate::oci::digest::digest_reader(dec)
        .map(|(d, _)| d)
        .map_err(|e| stream_err(path, e))
}

/// A read failure of an entry: the stream's (cut) or the content's.
fn stream_err(path: &str, e: io::Error) -> AgentStoreError {
    AgentStoreError::bad_archive(format!("reading `{path}`: {e}"))
}

/// Hashes (when `on`) and counts the bytes read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    on: bool,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.on {
            self.hasher.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }
}
