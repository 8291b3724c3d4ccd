//! The build cache: one record per layer-producing step under `build/cache/<key>.json`, keyed
//! by the chain of the parent's key, the config so far, the expanded instruction and (for
//! COPY/ADD) a hash of the sources. A record whose layer blob is gone from the store is a miss.
//!
//! Platforms build on threads side by side; a step whose key two of them reach (a stage
//! `FROM --platform=$BUILDPLATFORM` whose inputs do not depend on the target) is made by the
//! first while the second waits on the key's lock ([`KeyLocks`]), then read from the cache.

use super::*;

/// A cached layer-producing step.
#[derive(Serialize, Deserialize)]
struct CacheRecord {
    layer: Option<LayerRef>,
}

/// The layer a cache record names, if the file is a record that names one.
pub(in crate::build) fn record_layer(path: &Path) -> Option<LayerRef> {
    let bytes = read_limited(path, 1 << 20).ok()?;
    serde_json::from_slice::<CacheRecord>(&bytes).ok()?.layer
}

impl Executor<'_> {
    /// Serves a layer-producing step from the cache, or runs `make` and records it. While
    /// `make` runs no other platform's thread works on the same key: it waits, then finds the
    /// record (`make` never takes another key's lock, so waiting cannot deadlock).
    pub(super) fn cached_layer(
        &mut self,
        key: &str,
        make: impl FnOnce(&mut Self) -> Result<Option<LayerRef>, BuildError>,
    ) -> Result<(Option<LayerRef>, bool), BuildError> {
        let path = self.cache_dir.join(format!("{key}.json"));
        let lock = self.locks.of(key);
        let _working = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.no_cache
            && let Ok(bytes) = read_limited(&path, 1 << 20)
            && let Ok(rec) = serde_json::from_slice::<CacheRecord>(&bytes)
            && rec
                .layer
                .as_ref()
                .is_none_or(|l| self.store.has_blob(&l.descriptor.digest))
        {
            self.stages.count(true);
            return Ok((rec.layer, true));
        }
        let layer = make(self)?;
        self.stages.count(false);
        create_dir_all(&self.cache_dir)?;
        let rec = CacheRecord {
            layer: layer.clone(),
        };
        atomic_write(&path, &serde_json::to_vec(&rec).expect("records serialise"))?;
        Ok((layer, false))
    }
}
