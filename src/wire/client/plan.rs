//! The transfer plan: what the robot lacks of a set of images, decided before any content is
//! sent, as a public, serialisable value ([`TransferPlan`]). `deploy --dry-run` prints it;
//! [`Connection::transfer`] makes one and hands it to [`Connection::execute`], so what a dry
//! run says is what a deploy sends.
//!
//! Planning costs the round trips a transfer makes anyway: one query for the layers,
//! snapshots and documents the robot has, then, for each layer it lacks, one for the contents
//! of that layer that are not in its base layer. A robot that had no object at all when the
//! session began is asked nothing more: each missing layer goes whole, and its objects are
//! found while it is read for sending ([`Objects::Streamed`]); a dry run lists them up front
//! instead ([`Detail::Objects`]), at the cost of reading those layers once more.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::split::{self, LayerInfo};
use super::super::{FromRobot, PATCH_MIN, PREFIX_HEX, ToRobot, WireError, bitmap_decode};
use super::{Connection, unexpected};
use crate::api::{HeldImage, ObjectSpec};
use crate::oci::{Descriptor, Digest, Document, ImageConfig, Reference, media};
use crate::store::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Store};

/// How much a plan says about layers that go whole to a robot with no objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Layers only: their objects are found while they are sent (a real transfer).
    Layers,
    /// Every object too (a dry run): those layers are read once more.
    Objects,
}

/// What a transfer will send, and what it leaves because the robot has it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPlan {
    /// The images, resolved to the robot's platform, in the order given.
    pub images: Vec<PlannedImage>,
    /// The layers to send, in send order.
    pub layers: Vec<PlannedLayer>,
    /// Manifests, indexes and configs the robot lacks, in send order.
    pub documents: Vec<PlannedDocument>,
    /// Layers of all the images, counted per image (a shared layer counts once per image).
    pub layers_total: usize,
    /// Of those, layers the robot has, or which an earlier image of this plan sends.
    pub layers_skipped: usize,
    /// Layers sent (`layers.len()`).
    pub layers_sent: usize,
    /// Objects the robot lacks, sent whole or as patches. `None` only when layers go whole
    /// and the plan was made with [`Detail::Layers`]: then they are counted while sent.
    pub objects_sent: Option<u64>,
    /// Their uncompressed bytes (`None` as `objects_sent`).
    pub object_bytes: Option<u64>,
    /// Objects sent as patches against the old version of the same path.
    pub patches_sent: u64,
    /// Bytes of the content queries made while planning (both ways).
    pub query_bytes: u64,
    /// The object stream's zstd window (log2): what is about to be sent, within the robot's
    /// limit.
    pub window_log: u32,
}

/// One image of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedImage {
    /// The names it gets on the robot (canonical references).
    pub names: Vec<String>,
    /// The document the names point at (an index or a manifest).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The manifest for the robot's platform.
    pub manifest: Digest,
    /// Its layers' chain id (the robot's snapshot of the whole image).
    pub chain: Digest,
    /// Its layers: `(blob, diff_id)`, bottom first.
    pub layers: Vec<(Descriptor, Digest)>,
    /// Its documents, configs before manifests before the top document.
    pub documents: Vec<Digest>,
    /// Whether the robot already has the image's snapshot.
    pub robot_has_snapshot: bool,
    /// Whether the image comes from the robot's own store, not the laptop's: the robot holds
    /// it whole (every layer and document), so nothing of it is sent; at most its name is
    /// given and its snapshot built (`deploy` of an image only the robot holds).
    #[serde(default)]
    pub held_by_robot: bool,
}

/// A layer the robot lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedLayer {
    /// The layer.
    pub diff_id: Digest,
    /// Its blob in the laptop store.
    pub blob: Descriptor,
    /// The first image of the plan that has it, and its position there.
    pub image: String,
    /// Its position in that image (0 = bottom) and the image's layer count.
    pub position: usize,
    /// The image's layer count.
    pub of: usize,
    /// How it goes.
    pub how: LayerHow,
    /// The objects of it the robot lacks.
    pub objects: Objects,
}

/// How a layer's record stream goes to the robot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LayerHow {
    /// Read once and streamed: the robot had no object when the session began.
    Whole,
    /// Its tar-split as a delta against `base` (a layer the robot has, at the same position
    /// of an image it holds), or alone without one.
    Split {
        /// The base layer's diff_id.
        base: Option<Digest>,
        /// The base layer's blob here, when patches need its old file contents.
        base_blob: Option<Box<Descriptor>>,
    },
}

/// The objects of a planned layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Objects {
    /// Found while the layer is read for sending (a whole layer, [`Detail::Layers`]).
    Streamed,
    /// Listed.
    Listed {
        /// The contents the robot lacks (first file with each), in tar order.
        objects: Vec<ObjectSpec>,
        /// Of those, the ones sent as a patch: `(new content, old content at the same path)`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        patches: BTreeMap<Digest, Digest>,
    },
}

/// A document the robot lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDocument {
    /// Its digest (the bytes are read from the laptop store when sent).
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Plans the transfer of `images` (name, manifest or index digest in `store`; an index is
    /// resolved to the robot's platform): asks the robot what it has, sends nothing.
    pub async fn plan_transfer(
        &mut self,
        store: &Store,
        images: &[(String, Digest)],
        detail: Detail,
    ) -> Result<TransferPlan, WireError> {
        self.plan_with_held(store, images, &[], detail).await
    }

    /// [`Connection::plan_transfer`] of `images` from the laptop's store plus `held`, images
    /// the robot's store holds (as [`Connection::resolve_on_robot`] answered): those are
    /// planned `held_by_robot` and send no content. A held image whose layers the robot no
    /// longer has whole is an error naming it (its store changed since it answered).
    pub async fn plan_with_held(
        &mut self,
        store: &Store,
        images: &[(String, Digest)],
        held: &[HeldImage],
        detail: Detail,
    ) -> Result<TransferPlan, WireError> {
        let mut plan = self.resolve_all(store, images)?;
        add_held(&mut plan, held);
        let robot_splits = self.ask_what_robot_has(&mut plan).await?;
        for p in plan.images.iter().filter(|p| p.held_by_robot) {
            if let Some((_, d)) = p.layers.iter().find(|(_, d)| !robot_splits.contains_key(d)) {
                return Err(WireError::Robot {
                    message: format!(
                        "image `{}`: the robot's store resolved it but lacks its layer {d}; `dt-agent fsck` on the robot says why",
                        p.names.first().map(String::as_str).unwrap_or("?")
                    ),
                    bad_input: false,
                });
            }
        }

        // The layers to send, in order; a layer shared by two images goes once.
        let whole = !self.hello.has_objects;
        let mut planned: HashSet<Digest> = HashSet::new();
        let mut todo: Vec<(usize, usize)> = Vec::new();
        for (pi, p) in plan.images.iter().enumerate() {
            for (i, (_, diff_id)) in p.layers.iter().enumerate() {
                plan.layers_total += 1;
                if robot_splits.contains_key(diff_id) {
                    plan.layers_skipped += 1;
                } else if planned.insert(diff_id.clone()) {
                    todo.push((pi, i));
                } else if !whole {
                    // Sent for an earlier image: skipped here. (A whole layer's second image
                    // counts it neither way, as transfers always have.)
                    plan.layers_skipped += 1;
                }
            }
        }
        let mut listed: HashSet<Digest> = HashSet::new();
        let mut blobs: Option<HashMap<Digest, Descriptor>> = None;
        let (mut objects, mut bytes, mut streamed) = (0u64, 0u64, false);
        for (pi, i) in todo {
            let image = &plan.images[pi];
            let (blob, diff_id) = image.layers[i].clone();
            let (how, listing) = if whole {
                let listing = match detail {
                    Detail::Layers => Objects::Streamed,
                    Detail::Objects => {
                        let info = split::layer_info(&self.cache, store, &blob, &diff_id)?;
                        Objects::Listed {
                            objects: firsts(&info, &mut listed),
                            patches: BTreeMap::new(),
                        }
                    }
                };
                (LayerHow::Whole, listing)
            } else {
                self.plan_split(store, image, i, &robot_splits, &mut blobs, &mut listed)
                    .await
                    .map(|(how, listing, q)| {
                        plan.query_bytes += q;
                        (how, listing)
                    })?
            };
            match &listing {
                Objects::Streamed => streamed = true,
                Objects::Listed {
                    objects: o,
                    patches,
                } => {
                    objects += o.len() as u64;
                    bytes += o.iter().map(|o| o.size).sum::<u64>();
                    plan.patches_sent += patches.len() as u64;
                }
            }
            plan.layers.push(PlannedLayer {
                diff_id,
                blob,
                image: image.names.first().cloned().unwrap_or_default(),
                position: i,
                of: image.layers.len(),
                how,
                objects: listing,
            });
        }
        plan.layers_sent = plan.layers.len();
        if !streamed {
            plan.objects_sent = Some(objects);
            plan.object_bytes = Some(bytes);
        }
        Ok(plan)
    }

    /// Resolves `images` to the robot's platform: one [`PlannedImage`] per distinct image
    /// (further names of the same one join it), and their documents, each once.
    fn resolve_all(
        &self,
        store: &Store,
        images: &[(String, Digest)],
    ) -> Result<TransferPlan, WireError> {
        let mut plan = TransferPlan::default();
        for (name, digest) in images {
            let canonical = Reference::parse(name)
                .map_err(|e| WireError::Robot {
                    message: format!("image `{name}`: {e}"),
                    bad_input: true,
                })?
                .to_string();
            if let Some(p) = plan
                .images
                .iter_mut()
                .find(|p| p.digest == *digest || p.manifest == *digest)
            {
                p.names.push(canonical);
                continue;
            }
            let (image, docs) = self.resolve(store, canonical, digest)?;
            plan.images.push(image);
            for d in docs {
                if !plan.documents.iter().any(|x| x.digest == d.digest) {
                    plan.documents.push(d);
                }
            }
        }
        Ok(plan)
    }

    /// The one round trip: which layers (ours and the bases'), snapshots and documents the
    /// robot has. Marks the images whose snapshot it has, drops the documents it has, sets the
    /// object stream's window, and returns the robot's tar-split digest of each layer it has.
    async fn ask_what_robot_has(
        &mut self,
        plan: &mut TransferPlan,
    ) -> Result<HashMap<Digest, Digest>, WireError> {
        let mut layers: Vec<Digest> = Vec::new();
        let mut seen = HashSet::new();
        let ours = plan
            .images
            .iter()
            .flat_map(|p| p.layers.iter().map(|(_, d)| d));
        let theirs = self.hello.images.iter().flat_map(|i| i.diff_ids.iter());
        for d in ours.chain(theirs) {
            if seen.insert(d.clone()) {
                layers.push(d.clone());
            }
        }
        let chains: Vec<Digest> = plan.images.iter().map(|p| p.chain.clone()).collect();
        let docs: Vec<Digest> = plan.documents.iter().map(|d| d.digest.clone()).collect();
        let before = self.sent + self.received;
        let (have_layers, have_chains, have_docs) = match self
            .call(&ToRobot::Query {
                layers: layers.clone(),
                chains: chains.clone(),
                docs: docs.clone(),
            })
            .await?
        {
            FromRobot::Have {
                layers: l,
                chains: c,
                docs: d,
            } if l.len() == layers.len() && c.len() == chains.len() && d.len() == docs.len() => {
                (l, c, d)
            }
            other => return Err(unexpected(&other)),
        };
        plan.query_bytes += self.sent + self.received - before;
        let robot_splits: HashMap<Digest, Digest> = layers
            .iter()
            .zip(have_layers)
            .filter_map(|(d, s)| s.map(|s| (d.clone(), s)))
            .collect();
        for (p, has) in plan.images.iter_mut().zip(have_chains) {
            p.robot_has_snapshot = has;
        }
        let mut have_docs = have_docs.into_iter();
        plan.documents
            .retain(|_| !have_docs.next().unwrap_or(false));
        // The object stream's window: what is about to be sent (blobs are compressed, ~4×),
        // so a small deploy does not make the robot's decoder hold 128 MiB.
        let expected: u64 = plan
            .images
            .iter()
            .flat_map(|p| &p.layers)
            .filter(|(_, d)| !robot_splits.contains_key(d))
            .map(|(desc, _)| desc.size.saturating_mul(4))
            .sum();
        plan.window_log = super::super::window_log_for(expected)
            .clamp(20, super::MAX_STREAM_WINDOW_LOG)
            .min(self.hello.window_log_max);

        Ok(robot_splits)
    }

    /// How layer `index` of `image` goes to a robot that has objects: its base, the contents
    /// not in the base that the robot lacks (one query), and which of them go as patches.
    /// Returns the query's bytes too.
    async fn plan_split(
        &mut self,
        store: &Store,
        image: &PlannedImage,
        index: usize,
        robot_splits: &HashMap<Digest, Digest>,
        blobs: &mut Option<HashMap<Digest, Descriptor>>,
        listed: &mut HashSet<Digest>,
    ) -> Result<(LayerHow, Objects, u64), WireError> {
        let (desc, diff_id) = &image.layers[index];
        let info = split::layer_info(&self.cache, store, desc, diff_id)?;
        let base = self.base_for(store, image, index, robot_splits, blobs);
        let base_contents: HashSet<Digest> = base
            .as_ref()
            .map(|(b, _)| b.files.iter().map(|f| f.object.digest.clone()).collect())
            .unwrap_or_default();
        // Only the contents that are not in the base (nor planned already) are asked about.
        // (`listed` gains only what the robot turns out to lack, below.)
        let mut seen: HashSet<Digest> = HashSet::new();
        let candidates: Vec<ObjectSpec> = info
            .files
            .iter()
            .map(|f| &f.object)
            .filter(|o| {
                !base_contents.contains(&o.digest)
                    && !listed.contains(&o.digest)
                    && seen.insert(o.digest.clone())
            })
            .cloned()
            .collect();
        let mut query_bytes = 0;
        let missing: Vec<ObjectSpec> = if candidates.is_empty() {
            Vec::new()
        } else {
            let prefixes: String = candidates
                .iter()
                .map(|o| &o.digest.hex()[..PREFIX_HEX])
                .collect();
            let before = self.sent + self.received;
            let have = match self.call(&ToRobot::Contents { prefixes }).await? {
                FromRobot::Contents { have } => bitmap_decode(&have, candidates.len())?,
                other => return Err(unexpected(&other)),
            };
            query_bytes = self.sent + self.received - before;
            candidates
                .into_iter()
                .zip(have)
                .filter(|(_, h)| !h)
                .map(|(o, _)| o)
                .collect()
        };
        listed.extend(missing.iter().map(|o| o.digest.clone()));

        // Large changed files at a path the base has: patches against the old content.
        let mut patches: BTreeMap<Digest, Digest> = BTreeMap::new();
        if let Some((b, Some(_))) = &base {
            let base_paths: HashMap<&str, &ObjectSpec> = b
                .files
                .iter()
                .map(|f| (f.path.as_str(), &f.object))
                .collect();
            let missing_set: HashSet<&Digest> = missing.iter().map(|o| &o.digest).collect();
            for f in &info.files {
                if f.object.size < PATCH_MIN || !missing_set.contains(&f.object.digest) {
                    continue;
                }
                // The robot decodes a patch with the old file and the new one in one window.
                if let Some(old) = base_paths.get(f.path.as_str())
                    && old.digest != f.object.digest
                    && old.size > 0
                    && old.size.saturating_add(f.object.size) <= 1 << self.hello.window_log_max
                {
                    patches
                        .entry(f.object.digest.clone())
                        .or_insert(old.digest.clone());
                }
            }
        }
        let how = LayerHow::Split {
            base: base.as_ref().map(|(b, _)| b.diff_id.clone()),
            base_blob: base.and_then(|(_, d)| d).map(Box::new),
        };
        Ok((
            how,
            Objects::Listed {
                objects: missing,
                patches,
            },
            query_bytes,
        ))
    }

    /// Resolves one image in the laptop store to the robot's platform
    /// ([`Store::resolve_platform`], as `ops::deploy` does), with its documents.
    fn resolve(
        &self,
        store: &Store,
        name: String,
        digest: &Digest,
    ) -> Result<(PlannedImage, Vec<PlannedDocument>), WireError> {
        let top_bytes = store.read_blob(digest, MAX_MANIFEST_BYTES)?;
        let doc = Document::parse(&format!("manifest {digest}"), None, &top_bytes)
            .map_err(crate::store::StoreError::from)?;
        let media_type = match &doc {
            Document::Manifest(m) => m.media_type.as_deref().unwrap_or(media::OCI_MANIFEST),
            Document::Index(i) => i.media_type.as_deref().unwrap_or(media::OCI_INDEX),
        }
        .to_string();
        let top = Descriptor::new(&media_type, digest.clone(), top_bytes.len() as u64);
        let img = store
            .resolve_platform(&name, &top, Some(&self.hello.platform))
            .map_err(|e| match e {
                e @ crate::store::StoreError::NoSuchPlatform { .. } => WireError::Robot {
                    message: e.to_string(),
                    bad_input: true,
                },
                e => WireError::Store(e),
            })?;
        let diff_ids = img.config.rootfs.diff_ids.clone();
        if diff_ids.len() != img.manifest.layers.len() {
            return Err(WireError::Robot {
                message: format!(
                    "image `{name}`: its manifest lists {} layers and its config {} diff_ids",
                    img.manifest.layers.len(),
                    diff_ids.len()
                ),
                bad_input: true,
            });
        }
        // Configs and manifests before the top document: a name never reaches a document
        // the robot lacks.
        let mut docs = vec![PlannedDocument {
            digest: img.manifest.config.digest.clone(),
            size: img.config_bytes.len() as u64,
        }];
        if img.descriptor.digest != *digest {
            docs.push(PlannedDocument {
                digest: img.descriptor.digest.clone(),
                size: store
                    .read_blob(&img.descriptor.digest, MAX_MANIFEST_BYTES)?
                    .len() as u64,
            });
        }
        docs.push(PlannedDocument {
            digest: digest.clone(),
            size: top_bytes.len() as u64,
        });
        let image = PlannedImage {
            names: vec![name],
            digest: digest.clone(),
            media_type,
            manifest: img.descriptor.digest,
            chain: crate::api::transfer::snapshot_id(&diff_ids),
            layers: img.manifest.layers.into_iter().zip(diff_ids).collect(),
            documents: docs.iter().map(|d| d.digest.clone()).collect(),
            robot_has_snapshot: false,
            held_by_robot: false,
        };
        Ok((image, docs))
    }

    /// Where the laptop store keeps the blob of each layer it has (by diff_id), starting with
    /// the robot's current manifests.
    fn layer_blobs(&self, store: &Store) -> HashMap<Digest, Descriptor> {
        let mut out = HashMap::new();
        let mut manifests: Vec<Descriptor> = self
            .hello
            .images
            .iter()
            .map(|i| Descriptor::new(media::OCI_MANIFEST, i.manifest.clone(), 0))
            .collect();
        if let Ok(images) = store.images() {
            for r in images {
                match store.read_document(&r.descriptor) {
                    Ok(Document::Index(i)) => manifests.extend(i.manifests),
                    Ok(Document::Manifest(_)) => manifests.push(r.descriptor),
                    Err(_) => {}
                }
            }
        }
        for m in manifests {
            let Ok(bytes) = store.read_blob(&m.digest, MAX_MANIFEST_BYTES) else {
                continue;
            };
            let Ok(Document::Manifest(m)) = Document::parse("manifest", None, &bytes) else {
                continue;
            };
            let Ok(cbytes) = store.read_blob(&m.config.digest, MAX_CONFIG_BYTES) else {
                continue;
            };
            let Ok(config) = ImageConfig::parse("config", &cbytes) else {
                continue;
            };
            for (desc, d) in m.layers.into_iter().zip(config.rootfs.diff_ids) {
                if store.has_blob(&desc.digest) {
                    out.entry(d).or_insert(desc);
                }
            }
        }
        out
    }

    /// The base layer for position `index` of `image`: one the robot has, whose tar-split we
    /// can rebuild exactly (its info is cached or its blob is here).
    fn base_for(
        &self,
        store: &Store,
        image: &PlannedImage,
        index: usize,
        robot_splits: &HashMap<Digest, Digest>,
        blobs: &mut Option<HashMap<Digest, Descriptor>>,
    ) -> Option<(LayerInfo, Option<Descriptor>)> {
        let mut candidates: Vec<&Digest> = Vec::new();
        let same_name = self
            .hello
            .images
            .iter()
            .filter(|i| image.names.contains(&i.name));
        let others = self
            .hello
            .images
            .iter()
            .filter(|i| !image.names.contains(&i.name));
        for img in same_name.chain(others) {
            if let Some(d) = img.diff_ids.get(index)
                && !candidates.contains(&d)
            {
                candidates.push(d);
            }
        }
        for b in candidates {
            let Some(robot_split) = robot_splits.get(b) else {
                continue;
            };
            let desc = blobs
                .get_or_insert_with(|| self.layer_blobs(store))
                .get(b)
                .cloned();
            let info = match split::cached(&self.cache, b) {
                Some(i) => i,
                None => match &desc {
                    Some(desc) => match split::layer_info(&self.cache, store, desc, b) {
                        Ok(i) => i,
                        Err(_) => continue,
                    },
                    None => continue,
                },
            };
            if &info.split_digest == robot_split {
                return Some((info, desc));
            }
        }
        None
    }
}

/// Adds the images the robot holds to `plan`: each once (a further name of the same image
/// joins it), with no documents to send.
fn add_held(plan: &mut TransferPlan, held: &[HeldImage]) {
    for h in held {
        if let Some(p) = plan
            .images
            .iter_mut()
            .find(|p| p.digest == h.digest && p.manifest == h.manifest)
        {
            if !p.names.contains(&h.name) {
                p.names.push(h.name.clone());
            }
            continue;
        }
        plan.images.push(PlannedImage {
            names: vec![h.name.clone()],
            digest: h.digest.clone(),
            media_type: h.media_type.clone(),
            manifest: h.manifest.clone(),
            chain: crate::api::transfer::snapshot_id(h.diff_ids()),
            layers: h
                .layers
                .iter()
                .cloned()
                .zip(h.diff_ids().to_vec())
                .collect(),
            documents: Vec::new(),
            robot_has_snapshot: h.snapshot,
            held_by_robot: true,
        });
    }
}

/// The objects of `info` in tar order, first file of each content only, leaving out those
/// already in `listed` (which gains the rest).
fn firsts(info: &LayerInfo, listed: &mut HashSet<Digest>) -> Vec<ObjectSpec> {
    info.files
        .iter()
        .filter(|f| listed.insert(f.object.digest.clone()))
        .map(|f| f.object.clone())
        .collect()
}
