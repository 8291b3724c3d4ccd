//! The laptop's end: a [`Connection`] over any `AsyncRead + AsyncWrite` (the SSH channel of
//! `dt-agent serve --stdio`, or a child's stdin/stdout in tests).
//!
//! [`Connection::transfer`] plans with one round trip (what the robot has, by diff_id, chain
//! id and document digest), then for each missing layer: picks a base layer the robot has (the
//! same position in the robot's current image of that name, else of any image), asks about just
//! the contents that are not in the base, sends the tar-split as a zstd delta against the
//! base's, the missing contents in batches through the session's one object stream
//! (`wire::stream`: compressed on a thread of its own while the link carries the previous
//! output, the level adapting to whichever of the two is slower), and large changed files as
//! `--patch-from`-style deltas. Bytes are counted on the channel (after compression).
//!
//! A robot that had no object at all when the session began (a first deploy) is not asked
//! anything: each layer is read once, its files streamed as they are found, and its tar-split,
//! made on the way, follows its objects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{DATA_CHUNK, Frame, Kind, data_frames, read_frame_async, write_frame_async};
use super::split::{self, LayerInfo};
use super::stream::{Adapt, Compressor, Job, Out, compress};
use super::{
    ClientHello, FromRobot, MAJOR, MINOR, PATCH_MIN, PREFIX_HEX, ToRobot, WireError, bitmap_decode,
    check_version, window_log_for,
};
use crate::agent::container::logs::LogLine;
use crate::agent::daemon::Request;
use crate::agent::store::ObjectSpec;
use crate::oci::{Descriptor, Digest, Document, ImageConfig, Reference, media};
use crate::progress::{Event, Reporter};
use crate::store::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Store};

pub use super::RobotHello;

/// Uncompressed bytes per object batch (one zstd stream; committed together on the robot).
const BATCH_BYTES: u64 = 4 << 20;
/// Objects per batch.
const BATCH_OBJECTS: usize = 4096;
/// zstd level of `--patch-from` deltas of large changed files.
const PATCH_LEVEL: i32 = 3;
/// zstd level of tar-splits and documents (small; deltas are long matches any level finds).
const META_LEVEL: i32 = 9;
/// Where the object stream's level starts, and how high it may adapt.
const START_LEVEL: i32 = 9;
const MAX_LEVEL: i32 = 19;
/// The object stream's window: 128 MiB at most (the robot's decoder holds one window).
const MAX_STREAM_WINDOW_LOG: u32 = 27;

/// The object stream's level when `DTS_WIRE_LEVEL` fixes it.
fn fixed_level() -> Option<i32> {
    std::env::var("DTS_WIRE_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|l| (1..=22).contains(l))
}

/// What a transfer did. Byte counts are the connection's totals (hello included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransferReport {
    /// Images transferred (named on the robot).
    pub images: usize,
    /// Layers of those images.
    pub layers_total: usize,
    /// Layers the robot had.
    pub layers_skipped: usize,
    /// Layers sent.
    pub layers_sent: usize,
    /// Objects sent (whole or as patches).
    pub objects_sent: u64,
    /// Their uncompressed bytes.
    pub object_bytes: u64,
    /// Objects sent as patches.
    pub patches_sent: u64,
    /// Tar-splits sent as deltas against a base layer.
    pub split_deltas: usize,
    /// Manifests, indexes and configs sent.
    pub documents_sent: usize,
    /// Bytes of compressed tar-splits sent.
    pub split_bytes: u64,
    /// Bytes of the content queries (both ways).
    pub query_bytes: u64,
    /// Snapshots the robot built.
    pub snapshots_built: usize,
    /// Bytes written to the channel.
    pub bytes_sent: u64,
    /// Bytes read from the channel.
    pub bytes_received: u64,
    /// Wall time.
    pub duration_ms: u64,
}

/// An open session with a robot's agent.
pub struct Connection<IO> {
    io: IO,
    hello: RobotHello,
    sent: u64,
    received: u64,
    cache: PathBuf,
    batch_bytes: u64,
    batch_objects: usize,
    adapt: Adapt,
    window_log: u32,
    compressor: Option<Compressor>,
}

/// One image to send, resolved to the robot's platform.
struct Plan {
    names: Vec<String>,
    top: Digest,
    top_media_type: String,
    manifest: Digest,
    docs: Vec<(Digest, Vec<u8>)>,
    layers: Vec<(Descriptor, Digest)>,
    chain: Digest,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Says hello and reads the robot's: a different major version is
    /// [`WireError::Version`].
    pub async fn open(io: IO) -> Result<(Connection<IO>, RobotHello), WireError> {
        let placeholder = RobotHello {
            platform: crate::oci::Platform::host(),
            hostname: String::new(),
            agent_version: String::new(),
            free_bytes: 0,
            images: Vec::new(),
            has_objects: true,
            protocol: String::new(),
            window_log_max: super::LEGACY_WINDOW_LOG,
        };
        let mut c = Connection {
            io,
            hello: placeholder,
            sent: 0,
            received: 0,
            cache: crate::paths::dts_home().join("cache/layers"),
            batch_bytes: BATCH_BYTES,
            batch_objects: BATCH_OBJECTS,
            adapt: fixed_level().map_or(Adapt::new(START_LEVEL, MAX_LEVEL), Adapt::fixed),
            window_log: MAX_STREAM_WINDOW_LOG,
            compressor: None,
        };
        let hello = Frame::hello(
            MAJOR,
            MINOR,
            &ClientHello {
                client: format!("dts {}", env!("CARGO_PKG_VERSION")),
            },
        );
        c.write(&[hello]).await?;
        let Some(first) = c.read().await? else {
            return Err(WireError::Closed);
        };
        if first.kind != Kind::Hello {
            // An agent that failed before its hello says why.
            if let Ok(FromRobot::Error { message, bad_input }) = first.message() {
                return Err(WireError::Robot { message, bad_input });
            }
        }
        let (major, minor, body) = first.parse_hello()?;
        check_version(major, minor)?;
        let mut hello: RobotHello = serde_json::from_slice(body)
            .map_err(|e| WireError::Protocol(format!("the robot's hello: {e}")))?;
        hello.protocol = format!("{major}.{minor}");
        c.hello = hello.clone();
        Ok((c, hello))
    }

    /// The robot's hello.
    pub fn hello(&self) -> &RobotHello {
        &self.hello
    }

    /// (bytes sent, bytes received) on the channel so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// Uses `dir` for the per-layer file index cache (default `$DTS_HOME/cache/layers`).
    pub fn set_cache_dir(&mut self, dir: PathBuf) {
        self.cache = dir;
    }

    /// Cuts object batches (one commit on the robot each; the object stream is flushed at
    /// each) at `bytes` of content or `objects` objects, whichever comes first (defaults:
    /// 4 MiB, 4096). Smaller batches lose less to a cut link and compress a little worse.
    pub fn set_batch_limits(&mut self, bytes: u64, objects: usize) {
        self.batch_bytes = bytes.max(1);
        self.batch_objects = objects.max(1);
    }

    /// Fixes the object stream's zstd level (otherwise it starts at 9 and adapts to the
    /// link; `DTS_WIRE_LEVEL` fixes it too). Takes effect before the first object is sent.
    pub fn set_level(&mut self, level: i32) {
        self.adapt = Adapt::fixed(level.clamp(1, 22));
    }

    async fn write(&mut self, frames: &[Frame]) -> Result<(), WireError> {
        for f in frames {
            let r = write_frame_async(&mut self.io, f).await;
            if let Err(e) = r {
                return Err(self.explain(e).await);
            }
            self.sent += 5 + f.payload.len() as u64;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        if let Err(e) = self.io.flush().await {
            return Err(self.explain(WireError::Io(e)).await);
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<Option<Frame>, WireError> {
        let f = read_frame_async(&mut self.io).await?;
        if let Some(f) = &f {
            self.received += 5 + f.payload.len() as u64;
        }
        Ok(f)
    }

    /// A write failed: the robot may have said why before it stopped reading.
    async fn explain(&mut self, e: WireError) -> WireError {
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), self.read()).await;
        if let Ok(Ok(Some(f))) = read
            && let Ok(FromRobot::Error { message, bad_input }) = f.message()
        {
            return WireError::Robot { message, bad_input };
        }
        e
    }

    /// Sends `msg` and reads the answer; a robot `error` is [`WireError::Robot`].
    async fn call(&mut self, msg: &ToRobot) -> Result<FromRobot, WireError> {
        self.write(&[Frame::control(msg)]).await?;
        self.flush().await?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<FromRobot, WireError> {
        let Some(f) = self.read().await? else {
            return Err(WireError::Closed);
        };
        match f.message::<FromRobot>()? {
            FromRobot::Error { message, bad_input } => Err(WireError::Robot { message, bad_input }),
            m => Ok(m),
        }
    }

    /// Relays a request to the robot's daemon and returns its answer.
    pub async fn daemon(&mut self, request: &Request) -> Result<Value, WireError> {
        let msg = ToRobot::Daemon {
            request: request.clone(),
        };
        match self.call(&msg).await? {
            FromRobot::DaemonOk { value } => Ok(value),
            FromRobot::DaemonError { error } => Err(WireError::Daemon(error)),
            other => Err(unexpected(&other)),
        }
    }

    /// Relays a streaming request (`logs`), passing each line to `on_line`; returns the exit
    /// code the stream ended with.
    pub async fn daemon_logs(
        &mut self,
        request: &Request,
        on_line: &mut (dyn FnMut(LogLine) + Send),
    ) -> Result<Option<i32>, WireError> {
        let msg = ToRobot::Daemon {
            request: request.clone(),
        };
        let mut next = self.call(&msg).await?;
        loop {
            match next {
                FromRobot::DaemonLine { line } => on_line(line),
                FromRobot::DaemonEnd { exit_code } => return Ok(exit_code),
                FromRobot::DaemonError { error } => return Err(WireError::Daemon(error)),
                other => return Err(unexpected(&other)),
            }
            next = self.answer().await?;
        }
    }

    /// Ends the session politely.
    pub async fn close(mut self) -> Result<(), WireError> {
        self.write(&[Frame::control(&ToRobot::Bye)]).await?;
        self.flush().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// Gives the robot the images `images` (name, manifest or index digest in `store`; an
    /// index is resolved to the robot's platform), sending only what it lacks, and names them.
    pub async fn transfer(
        &mut self,
        store: &Store,
        images: &[(String, Digest)],
        reporter: &dyn Reporter,
    ) -> Result<TransferReport, WireError> {
        let started = Instant::now();
        let mut report = TransferReport::default();
        let mut plans: Vec<Plan> = Vec::new();
        for (name, digest) in images {
            let canonical = Reference::parse(name)
                .map_err(|e| WireError::Robot {
                    message: format!("image name `{name}`: {e}"),
                    bad_input: true,
                })?
                .to_string();
            if let Some(p) = plans
                .iter_mut()
                .find(|p| p.top == *digest || p.manifest == *digest)
            {
                p.names.push(canonical);
                continue;
            }
            plans.push(self.plan(store, canonical, digest)?);
        }
        // The one round trip: layers (ours and the bases'), snapshots, documents.
        let mut layers: Vec<Digest> = Vec::new();
        let mut seen = HashSet::new();
        for p in &plans {
            for (_, d) in &p.layers {
                if seen.insert(d.clone()) {
                    layers.push(d.clone());
                }
            }
        }
        for img in &self.hello.images {
            for d in &img.diff_ids {
                if seen.insert(d.clone()) {
                    layers.push(d.clone());
                }
            }
        }
        let chains: Vec<Digest> = plans.iter().map(|p| p.chain.clone()).collect();
        let docs: Vec<Digest> = plans
            .iter()
            .flat_map(|p| p.docs.iter().map(|(d, _)| d.clone()))
            .collect();
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
        let mut robot_splits: HashMap<Digest, Digest> = HashMap::new();
        for (d, s) in layers.iter().zip(have_layers) {
            if let Some(s) = s {
                robot_splits.insert(d.clone(), s);
            }
        }
        let have_docs: HashSet<Digest> = docs
            .iter()
            .zip(&have_docs)
            .filter(|(_, h)| **h)
            .map(|(d, _)| d.clone())
            .collect();
        // The object stream's window: what is about to be sent (blobs are compressed, ~4×),
        // so a small deploy does not make the robot's decoder hold 128 MiB.
        let expected: u64 = plans
            .iter()
            .flat_map(|p| &p.layers)
            .filter(|(_, d)| !robot_splits.contains_key(d))
            .map(|(desc, _)| desc.size.saturating_mul(4))
            .sum();
        self.window_log = window_log_for(expected)
            .clamp(20, MAX_STREAM_WINDOW_LOG)
            .min(self.hello.window_log_max);
        let mut sent_docs: HashSet<Digest> = HashSet::new();
        let mut sent_contents: HashSet<Digest> = HashSet::new();
        let mut sent_layers: HashSet<Digest> = HashSet::new();
        let mut blobs: Option<HashMap<Digest, Descriptor>> = None;
        let mut whole: HashSet<Digest> = HashSet::new();
        if !self.hello.has_objects {
            let mut layers = Vec::new();
            for p in &plans {
                for (i, (desc, diff_id)) in p.layers.iter().enumerate() {
                    if robot_splits.contains_key(diff_id) || !whole.insert(diff_id.clone()) {
                        continue;
                    }
                    let label = format!(
                        "send layer {}/{} of {}",
                        i + 1,
                        p.layers.len(),
                        p.names.first().map(String::as_str).unwrap_or("")
                    );
                    layers.push((desc.clone(), diff_id.clone(), label));
                }
            }
            report.layers_sent += layers.len();
            self.send_all_whole(store, layers, &mut sent_contents, &mut report, reporter)
                .await?;
            // A later transfer of this session must ask again.
            self.hello.has_objects = true;
        }
        for (pi, p) in plans.iter().enumerate() {
            report.images += 1;
            let mut changed = !have_chains[pi];
            for (i, (desc, diff_id)) in p.layers.iter().enumerate() {
                report.layers_total += 1;
                if whole.contains(diff_id) {
                    changed = true;
                    continue;
                }
                if robot_splits.contains_key(diff_id) || sent_layers.contains(diff_id) {
                    report.layers_skipped += 1;
                    continue;
                }
                changed = true;
                let label = format!(
                    "send layer {}/{} of {}",
                    i + 1,
                    p.layers.len(),
                    p.names.first().map(String::as_str).unwrap_or("")
                );
                self.send_layer(
                    store,
                    p,
                    i,
                    desc,
                    diff_id,
                    &robot_splits,
                    &mut blobs,
                    &mut sent_contents,
                    &mut report,
                    reporter,
                    label,
                )
                .await?;
                sent_layers.insert(diff_id.clone());
                report.layers_sent += 1;
            }
            for (d, bytes) in &p.docs {
                if have_docs.contains(d) || !sent_docs.insert(d.clone()) {
                    continue;
                }
                changed = true;
                let z = compress(bytes, &[], META_LEVEL, self.hello.window_log_max)
                    .map_err(|e| WireError::Protocol(format!("compressing a document: {e}")))?;
                let mut frames = vec![Frame::control(&ToRobot::Document {
                    digest: d.clone(),
                    size: bytes.len() as u64,
                })];
                frames.extend(data_frames(&z));
                self.write(&frames).await?;
                report.documents_sent += 1;
            }
            let named = p.names.iter().all(|n| {
                self.hello
                    .images
                    .iter()
                    .any(|i| &i.name == n && i.digest == p.top && i.manifest == p.manifest)
            });
            if changed || !named {
                match self
                    .call(&ToRobot::Image {
                        names: p.names.clone(),
                        digest: p.top.clone(),
                        media_type: p.top_media_type.clone(),
                        manifest: p.manifest.clone(),
                    })
                    .await?
                {
                    FromRobot::Image(b) => {
                        if b.snapshot_built {
                            report.snapshots_built += 1;
                        }
                    }
                    other => return Err(unexpected(&other)),
                }
            }
        }
        report.bytes_sent = self.sent;
        report.bytes_received = self.received;
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Resolves one image in the laptop store to the robot's platform.
    fn plan(&self, store: &Store, name: String, digest: &Digest) -> Result<Plan, WireError> {
        let top_bytes = store.read_blob(digest, MAX_MANIFEST_BYTES)?;
        let mut docs = vec![(digest.clone(), top_bytes.clone())];
        let doc = Document::parse(&format!("manifest {digest}"), None, &top_bytes)
            .map_err(crate::store::StoreError::from)?;
        let (top_media_type, manifest_digest, manifest) = match doc {
            Document::Manifest(m) => (
                m.media_type
                    .clone()
                    .unwrap_or_else(|| media::OCI_MANIFEST.to_string()),
                digest.clone(),
                *m,
            ),
            Document::Index(index) => {
                let wanted = &self.hello.platform;
                let entry = index
                    .manifests
                    .iter()
                    .find(|m| m.platform.as_ref().is_some_and(|p| p.matches(wanted)))
                    .ok_or_else(|| WireError::Robot {
                        message: format!(
                            "image `{name}` has no {wanted} variant for this robot (it has: {})",
                            index
                                .manifests
                                .iter()
                                .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        bad_input: true,
                    })?;
                let bytes = store.read_blob(&entry.digest, MAX_MANIFEST_BYTES)?;
                let m = match Document::parse(&format!("manifest {}", entry.digest), None, &bytes)
                    .map_err(crate::store::StoreError::from)?
                {
                    Document::Manifest(m) => *m,
                    Document::Index(_) => {
                        return Err(WireError::Robot {
                            message: format!("image `{name}`: an index inside an index"),
                            bad_input: true,
                        });
                    }
                };
                docs.push((entry.digest.clone(), bytes));
                (
                    index
                        .media_type
                        .clone()
                        .unwrap_or_else(|| media::OCI_INDEX.to_string()),
                    entry.digest.clone(),
                    m,
                )
            }
        };
        let cbytes = store.read_blob(&manifest.config.digest, MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(&format!("config {}", manifest.config.digest), &cbytes)
            .map_err(crate::store::StoreError::from)?;
        docs.push((manifest.config.digest.clone(), cbytes));
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(WireError::Robot {
                message: format!(
                    "image `{name}`: its manifest lists {} layers and its config {} diff_ids",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
                bad_input: true,
            });
        }
        Ok(Plan {
            names: vec![name],
            top: digest.clone(),
            top_media_type,
            manifest: manifest_digest,
            // Configs and manifests before the top document: a name never reaches a
            // document the robot lacks.
            docs: docs.into_iter().rev().collect(),
            chain: crate::agent::store::snapshot_id(&diff_ids),
            layers: manifest.layers.into_iter().zip(diff_ids).collect(),
        })
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

    /// The base layer for position `index` of `plan`: one the robot has, whose tar-split we
    /// can rebuild exactly (its info is cached or its blob is here).
    fn base_for(
        &self,
        store: &Store,
        plan: &Plan,
        index: usize,
        robot_splits: &HashMap<Digest, Digest>,
        blobs: &mut Option<HashMap<Digest, Descriptor>>,
    ) -> Option<(LayerInfo, Option<Descriptor>)> {
        let mut candidates: Vec<&Digest> = Vec::new();
        let same_name = self
            .hello
            .images
            .iter()
            .filter(|i| plan.names.contains(&i.name));
        let others = self
            .hello
            .images
            .iter()
            .filter(|i| !plan.names.contains(&i.name));
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

    #[allow(clippy::too_many_arguments)]
    async fn send_layer(
        &mut self,
        store: &Store,
        plan: &Plan,
        index: usize,
        desc: &Descriptor,
        diff_id: &Digest,
        robot_splits: &HashMap<Digest, Digest>,
        blobs: &mut Option<HashMap<Digest, Descriptor>>,
        sent_contents: &mut HashSet<Digest>,
        report: &mut TransferReport,
        reporter: &dyn Reporter,
        label: String,
    ) -> Result<(), WireError> {
        let id = format!("layer {}", diff_id.short());
        reporter.event(Event::start(id.clone(), label, Some(desc.size)));
        let info = split::layer_info(&self.cache, store, desc, diff_id)?;
        let base = self.base_for(store, plan, index, robot_splits, blobs);
        let base_contents: HashSet<&Digest> = base
            .as_ref()
            .map(|(b, _)| b.files.iter().map(|f| &f.object.digest).collect())
            .unwrap_or_default();
        // Only the contents that are not in the base (nor sent already) are asked about.
        let mut candidates: Vec<ObjectSpec> = Vec::new();
        let mut seen: HashSet<&Digest> = HashSet::new();
        for f in &info.files {
            let d = &f.object.digest;
            if base_contents.contains(d) || sent_contents.contains(d) || !seen.insert(d) {
                continue;
            }
            candidates.push(f.object.clone());
        }
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
            report.query_bytes += self.sent + self.received - before;
            candidates
                .into_iter()
                .zip(have)
                .filter(|(_, h)| !h)
                .map(|(o, _)| o)
                .collect()
        };

        self.send_split(&info, base.as_ref().map(|(b, _)| b), report)
            .await?;

        // Large changed files at a path the base has: patches against the old content.
        let base_paths: HashMap<&str, &ObjectSpec> = base
            .as_ref()
            .map(|(b, _)| {
                b.files
                    .iter()
                    .map(|f| (f.path.as_str(), &f.object))
                    .collect()
            })
            .unwrap_or_default();
        let mut patch_of: BTreeMap<Digest, Digest> = BTreeMap::new();
        if base.as_ref().is_some_and(|(_, d)| d.is_some()) {
            for f in &info.files {
                if f.object.size < PATCH_MIN || !missing.iter().any(|m| m.digest == f.object.digest)
                {
                    continue;
                }
                // The robot decodes a patch with the old file and the new one in one window.
                if let Some(old) = base_paths.get(f.path.as_str())
                    && old.digest != f.object.digest
                    && old.size > 0
                    && old.size.saturating_add(f.object.size) <= 1 << self.hello.window_log_max
                {
                    patch_of
                        .entry(f.object.digest.clone())
                        .or_insert(old.digest.clone());
                }
            }
        }

        // Everything else through the object stream.
        let wanted: HashSet<Digest> = missing.iter().map(|o| o.digest.clone()).collect();
        let mut patch_new: HashMap<Digest, (ObjectSpec, Vec<u8>)> = HashMap::new();
        if !wanted.is_empty() {
            let mut batcher = self.batcher();
            let store_root = store.root().to_path_buf();
            let (desc2, diff2) = (desc.clone(), diff_id.clone());
            let patched: HashSet<Digest> = patch_of.keys().cloned().collect();
            let reader = tokio::task::spawn_blocking(move || {
                let mut aside = HashMap::new();
                let r = Store::open(&store_root)
                    .map_err(WireError::from)
                    .and_then(|store| {
                        split::read_contents(&store, &desc2, &diff2, &wanted, &mut |spec, bytes| {
                            if patched.contains(&spec.digest) {
                                aside.insert(spec.digest.clone(), (spec, bytes));
                                return Ok(());
                            }
                            batcher.push(spec, bytes)
                        })
                    });
                batcher.finish();
                r.map(|()| aside)
            });
            let pumped = self.pump(report, reporter, &id).await.map(|_| ());
            patch_new = self.join_reader(pumped, reader).await?;
            sent_contents.extend(missing.iter().map(|o| o.digest.clone()));
        }
        if !patch_new.is_empty() {
            let (base_info, base_desc) = base.as_ref().expect("patches have a base");
            let base_desc = base_desc.as_ref().expect("patches have a base blob");
            let olds: HashSet<Digest> = patch_of.values().cloned().collect();
            let mut old_bytes: HashMap<Digest, Vec<u8>> = HashMap::new();
            split::read_contents(store, base_desc, &base_info.diff_id, &olds, &mut |s, b| {
                old_bytes.insert(s.digest, b);
                Ok(())
            })?;
            for (new, old) in &patch_of {
                let Some((spec, bytes)) = patch_new.remove(new) else {
                    continue;
                };
                // Against its old version a changed file is mostly long matches, which every
                // level finds: level 3 makes an 8 MB binary's patch in 0.1 s, 19 in 10 s for
                // 20 % fewer of very few bytes.
                let z = compress(
                    &bytes,
                    &old_bytes[old],
                    PATCH_LEVEL,
                    self.hello.window_log_max,
                )
                .map_err(|e| WireError::Protocol(format!("compressing a patch: {e}")))?;
                let mut frames = vec![Frame::control(&ToRobot::Patch {
                    object: spec.clone(),
                    base: old.clone(),
                })];
                frames.extend(data_frames(&z));
                self.write(&frames).await?;
                report.objects_sent += 1;
                report.patches_sent += 1;
                report.object_bytes += spec.size;
            }
        }
        reporter.event(Event::finish(
            id,
            format!("{} object(s) sent", missing.len()),
        ));
        Ok(())
    }

    /// Every layer in `layers` to a robot that had no object when the session began: it has
    /// exactly what this session sent, so nothing needs asking. One reader thread reads each
    /// layer once, in order, finding each file's content and handing the new ones to the
    /// object stream, and makes the layer's tar-split on the way (cached, and sent after its
    /// objects); it goes on to the next layer while the link still carries the last one's.
    async fn send_all_whole(
        &mut self,
        store: &Store,
        layers: Vec<(Descriptor, Digest, String)>,
        sent_contents: &mut HashSet<Digest>,
        report: &mut TransferReport,
        reporter: &dyn Reporter,
    ) -> Result<(), WireError> {
        if layers.is_empty() {
            return Ok(());
        }
        let mut batcher = self.batcher();
        let store_root = store.root().to_path_buf();
        let cache = self.cache.clone();
        let todo: Vec<(Descriptor, Digest)> = layers
            .iter()
            .map(|(d, i, _)| (d.clone(), i.clone()))
            .collect();
        let mut sent = sent_contents.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let read_all = |batcher: &mut Batcher, sent: &mut HashSet<Digest>| {
                let store = Store::open(&store_root)?;
                for (desc, diff_id) in todo {
                    let layer = split::open_layer(&store, &desc)?;
                    let info = split::analyze_with(layer, &diff_id, &mut |spec, bytes| {
                        if !sent.insert(spec.digest.clone()) {
                            return Ok(());
                        }
                        batcher.push(spec, bytes)
                    })?;
                    split::save(&cache, &info)?;
                    batcher.mark(info)?;
                }
                Ok::<(), WireError>(())
            };
            let r = read_all(&mut batcher, &mut sent);
            batcher.finish();
            r.map(|()| sent)
        });
        let start = |(desc, diff_id, label): &(Descriptor, Digest, String)| {
            reporter.event(Event::start(
                format!("layer {}", diff_id.short()),
                label.clone(),
                Some(desc.size),
            ));
        };
        let mut labels = layers.into_iter();
        let mut current = labels.next();
        current.iter().for_each(start);
        let mut pumped = Ok(());
        while let Some((_, diff_id, _)) = &current {
            let id = format!("layer {}", diff_id.short());
            let objects_before = report.objects_sent;
            let info = match self.pump(report, reporter, &id).await {
                Ok(Some(info)) => info,
                // The reader stopped early; it says why.
                Ok(None) => break,
                Err(e) => {
                    pumped = Err(e);
                    break;
                }
            };
            if let Err(e) = self.send_split(&info, None, report).await {
                pumped = Err(e);
                break;
            }
            let n = report.objects_sent - objects_before;
            reporter.event(Event::finish(id, format!("{n} object(s) sent")));
            current = labels.next();
            current.iter().for_each(start);
        }
        if pumped.is_ok() && current.is_none() {
            // The reader's final marker.
            pumped = self.pump(report, reporter, "").await.map(|_| ());
        }
        *sent_contents = self.join_reader(pumped, reader).await?;
        Ok(())
    }

    /// Waits for a reader thread once its output was pumped: after a failed pump the
    /// compressor is stopped first (the reader may be blocked handing it a batch). The pump's
    /// error wins over the reader's.
    async fn join_reader<T>(
        &mut self,
        pumped: Result<(), WireError>,
        reader: tokio::task::JoinHandle<Result<T, WireError>>,
    ) -> Result<T, WireError> {
        if pumped.is_err() {
            self.compressor = None;
        }
        let read = reader
            .await
            .map_err(|e| WireError::Protocol(format!("reading a layer: {e}")))?;
        pumped?;
        read
    }

    /// Sends a layer's tar-split, as a delta against `base`'s when given.
    async fn send_split(
        &mut self,
        info: &LayerInfo,
        base: Option<&LayerInfo>,
        report: &mut TransferReport,
    ) -> Result<(), WireError> {
        let prefix: &[u8] = base.map(|b| &b.split[..]).unwrap_or(&[]);
        let z = compress(&info.split, prefix, META_LEVEL, self.hello.window_log_max)
            .map_err(|e| WireError::Protocol(format!("compressing a tar-split: {e}")))?;
        let mut frames = vec![Frame::control(&ToRobot::Layer {
            diff_id: info.diff_id.clone(),
            split_digest: info.split_digest.clone(),
            split_size: info.split.len() as u64,
            base: base.map(|b| b.diff_id.clone()),
        })];
        frames.extend(data_frames(&z));
        self.write(&frames).await?;
        report.split_bytes += z.len() as u64;
        if base.is_some() {
            report.split_deltas += 1;
        }
        Ok(())
    }

    /// A batcher feeding this session's object stream (started on first use).
    fn batcher(&mut self) -> Batcher {
        let (adapt, window_log) = (self.adapt, self.window_log);
        let jobs = self
            .compressor
            .get_or_insert_with(|| Compressor::start(adapt, window_log))
            .jobs();
        Batcher {
            jobs,
            batch: Vec::new(),
            bytes: 0,
            max_bytes: self.batch_bytes,
            max_objects: self.batch_objects,
        }
    }

    /// Writes what the compressor hands on, batch by batch, until the next marker; returns
    /// the layer info it carries.
    async fn pump(
        &mut self,
        report: &mut TransferReport,
        reporter: &dyn Reporter,
        id: &str,
    ) -> Result<Option<Box<LayerInfo>>, WireError> {
        let mut done = 0u64;
        loop {
            let out = match self.compressor.as_mut() {
                Some(c) => c.next().await,
                None => None,
            };
            match out {
                Some(Out::Begin(objects)) => {
                    report.objects_sent += objects.len() as u64;
                    self.write(&[Frame::control(&ToRobot::Objects { objects })])
                        .await?;
                }
                Some(Out::Chunk(z)) => {
                    let frames: Vec<Frame> = z
                        .chunks(DATA_CHUNK)
                        .map(|c| Frame::data(c.to_vec()))
                        .collect();
                    self.write(&frames).await?;
                }
                Some(Out::End(total)) => {
                    self.write(&[Frame::data(Vec::new())]).await?;
                    report.object_bytes += total;
                    done += total;
                    reporter.event(Event::advance(id.to_string(), done));
                }
                Some(Out::Marker(info)) => return Ok(info),
                Some(Out::Failed(e)) => {
                    self.compressor = None;
                    return Err(WireError::Protocol(format!("compressing objects: {e}")));
                }
                None => {
                    self.compressor = None;
                    return Err(WireError::Protocol("the compressor stopped".into()));
                }
            }
        }
    }
}

/// Cuts a layer's contents into batches for the compressor thread; always ends with a
/// marker, so the link side knows the layer's objects are all out.
struct Batcher {
    jobs: std::sync::mpsc::SyncSender<Job>,
    batch: Vec<(ObjectSpec, Vec<u8>)>,
    bytes: u64,
    max_bytes: u64,
    max_objects: usize,
}

impl Batcher {
    fn push(&mut self, spec: ObjectSpec, bytes: Vec<u8>) -> Result<(), WireError> {
        self.bytes += bytes.len() as u64;
        self.batch.push((spec, bytes));
        if self.bytes >= self.max_bytes || self.batch.len() >= self.max_objects {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WireError> {
        self.bytes = 0;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.send(Job::Batch(batch))
    }

    /// Ends a layer read whole: its last batch, then a marker with its info.
    fn mark(&mut self, info: LayerInfo) -> Result<(), WireError> {
        self.flush()?;
        self.send(Job::Marker(Some(Box::new(info))))
    }

    fn send(&self, job: Job) -> Result<(), WireError> {
        self.jobs
            .send(job)
            .map_err(|_| WireError::Protocol("the compressor stopped".into()))
    }

    /// Sends the last batch and the final marker (also after a failed read: the link side
    /// waits for a marker).
    fn finish(mut self) {
        let _ = self.flush();
        let _ = self.jobs.send(Job::Marker(None));
    }
}

fn unexpected(m: &FromRobot) -> WireError {
    let s = serde_json::to_string(m).unwrap_or_default();
    WireError::Protocol(format!(
        "an unexpected answer: {}",
        s.chars().take(200).collect::<String>()
    ))
}
