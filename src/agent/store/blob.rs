//! One layer blob from a registry, ingested as `dt-agent image import` ingests an archive's
//! layer entry (consume.rs): decompressed (gzip, zstd or none, sniffed), its files made
//! objects, its tar-split recorded and verified by rebuilding the tar, committed at once under
//! its diff_id. Used by `fetch` (src/agent/fetch.rs) for the blobs a robot GETs from a lab hub.
//!
//! The blob is an entry named `blobs/sha256/<hex>`, so the consumer checks its bytes against
//! the digest it was asked for, as for an OCI layout's blob; this file then checks the diff_id
//! the laptop's manifest says. Both checks see the whole stream: a blob that turns out to be a
//! different, valid layer has been committed under its own diff_id (content addressing keeps
//! that harmless: nothing names it, `gc` removes it) and the fetch fails naming both digests.

use std::io::Read;

use super::consume::Consumer;
use super::import::{Tx, clean_tmp, refused};
use super::{AgentStore, AgentStoreError};
use crate::archive::Entry;
use crate::oci::Digest;
use crate::progress::Reporter;

impl AgentStore {
    /// Ingests the layer blob `digest` (`size` bytes, read from `content`), which must be the
    /// layer `diff_id`. Returns whether the layer is new here (false: the store had it and the
    /// blob was only hashed).
    pub fn import_layer_blob(
        &self,
        digest: &Digest,
        size: u64,
        diff_id: &Digest,
        content: &mut dyn Read,
        reporter: &dyn Reporter,
    ) -> Result<bool, AgentStoreError> {
        self.require_writable()?;
        clean_tmp(self)?;
        let tx = Tx::begin(self)?;
        let mut c = Consumer::new(self, &tx.dir, Some(size), reporter);
        let path = format!("blobs/sha256/{}", digest.hex());
        let result = c
            .entry(Entry::File {
                path: &path,
                size,
                content,
            })
            .and_then(|()| match c.layers.get(&path) {
                None => Err(AgentStoreError::bad_archive(format!(
                    "blob {digest} is not a layer (neither a tar nor gzip/zstd of one)"
                ))),
                Some(l) if l.blob_size != size => Err(AgentStoreError::bad_archive(format!(
                    "blob {digest} has {} bytes, its manifest says {size}",
                    l.blob_size
                ))),
                Some(l) if l.diff_id != *diff_id => Err(AgentStoreError::bad_archive(format!(
                    "blob {digest} is the layer {}, its image's config says {diff_id}",
                    l.diff_id
                ))),
                Some(_) => Ok(c.added.contains(diff_id)),
            });
        match result {
            Ok(new) => {
                let consumed = std::iter::once(diff_id.clone()).collect();
                c.pending.finish(self, &consumed)?;
                Ok(new)
            }
            Err(e) => {
                if refused(&e) {
                    c.pending.abandon();
                }
                Err(e)
            }
        }
    }
}
