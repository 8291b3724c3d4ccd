//! What a name means in the robot's store, for a platform: the laptop asks while it plans a
//! deploy (`resolve`, docs/wire.md), so an image the robot holds is never sent again, even
//! when the laptop does not hold it (an image adopted from the robot's Docker, one imported
//! with `dt-agent image import`, one an earlier laptop sent).
//!
//! Rules, the same the laptop's store follows where they overlap:
//! - a name is normalised as Docker does (`ubuntu` = `docker.io/library/ubuntu:latest`) and
//!   looked up in `refs.json`; a reference with a digest (`name@sha256:…`) is looked up there
//!   too (an adopted image's RepoDigest is an alias of the manifest the import wrote:
//!   docs/duckietown.md), else by content, whatever names the robot gave it;
//! - an index resolves to its entry for the platform asked; when it has none the robot holds,
//!   and the robot holds exactly one of its manifests, to that one. A single manifest resolves
//!   to itself whatever its platform: the name has no other manifest here, and Docker ran it
//!   on this robot (an arm64 image adopted on an amd64 test robot). The answer carries the
//!   manifest's platform, so the laptop can say so;
//! - only complete images count: every document present and every layer complete. Anything
//!   else (a cut transfer's documents, an unreadable or corrupt document) is "not held", and
//!   the laptop ships or pulls the image as it would have.

use crate::api::HeldImage;
use crate::oci::{Digest, Document, Platform, Reference, media};
use crate::store::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};

use super::{AgentStore, AgentStoreError, snapshot_id};

/// Resolves `name` for `platform` in `store`; `None` when the robot does not hold it whole.
pub(super) fn resolve(
    store: &AgentStore,
    name: &Reference,
    platform: &Platform,
) -> Result<Option<HeldImage>, AgentStoreError> {
    let (top, preferred) = match (store.refs()?.remove(&name.to_string()), name.digest()) {
        (Some(entry), _) => (entry.digest, Some(entry.manifest)),
        (None, Some(d)) => (d.clone(), None),
        (None, None) => return Ok(None),
    };
    let Some((media_type, doc)) = document(store, &top) else {
        return Ok(None);
    };
    let manifest = match doc {
        Document::Manifest(_) => top.clone(),
        Document::Index(index) => {
            let held: Vec<&crate::oci::Descriptor> = index
                .manifests
                .iter()
                .filter(|m| complete(store, &m.digest))
                .collect();
            let for_platform = held
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.matches(platform)));
            match (for_platform, held.as_slice()) {
                (Some(m), _) => m.digest.clone(),
                (None, [only]) => only.digest.clone(),
                // Several manifests held, none for this platform: the name's own choice if it
                // made one (an import's `--platform`), else nothing to pick.
                (None, _) => match preferred.filter(|p| held.iter().any(|m| &m.digest == p)) {
                    Some(p) => p,
                    None => return Ok(None),
                },
            }
        }
    };
    if !complete(store, &manifest) {
        return Ok(None);
    }
    let Ok((m, config)) = store.image_config(&manifest) else {
        return Ok(None);
    };
    let chain = snapshot_id(&config.rootfs.diff_ids);
    Ok(Some(HeldImage {
        name: name.to_string(),
        digest: top,
        media_type,
        manifest,
        platform: config.platform(),
        layers: m.layers,
        snapshot: store.has_snapshot(&chain),
        config,
    }))
}

/// A stored manifest or index and its media type; `None` when absent or unreadable.
fn document(store: &AgentStore, d: &Digest) -> Option<(String, Document)> {
    let bytes = store.read_document(d, MAX_MANIFEST_BYTES).ok()?;
    let doc = Document::parse(&format!("manifest {d}"), None, &bytes).ok()?;
    let media_type = match &doc {
        Document::Manifest(m) => m.media_type.as_deref().unwrap_or(media::OCI_MANIFEST),
        Document::Index(i) => i.media_type.as_deref().unwrap_or(media::OCI_INDEX),
    }
    .to_string();
    Some((media_type, doc))
}

/// Whether the manifest `d`, its config and every layer it names are in the store.
fn complete(store: &AgentStore, d: &Digest) -> bool {
    let Ok((m, config)) = store.image_config(d) else {
        return false;
    };
    m.layers.len() == config.rootfs.diff_ids.len()
        && store
            .read_document(&m.config.digest, MAX_CONFIG_BYTES)
            .is_ok()
        && config.rootfs.diff_ids.iter().all(|l| store.has_layer(l))
}
