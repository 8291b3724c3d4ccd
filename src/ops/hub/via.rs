//! `deploy --via HUB`: one robot's transfer through a lab hub, and the pipeline that puts a
//! rollout's layers on the hub, shared by every robot of the rollout ([`Via`]).
//!
//! Each robot plans first; the layers worth fetching from the hub (`wire::client::via_hub`)
//! are requested from the pipeline, which pushes each layer once however many robots want it:
//! recompressed with zstd and cut into parts (convert.rs), one conversion and one upload at a
//! time, smallest layer first. As soon as a layer is converted its parts are known, and the
//! robots fetch it part by part while the laptop uploads those parts (a part not on the hub
//! yet is asked for again: wire 2.8), so a rollout takes about the uplink time of the whole
//! set plus one part, where pushing everything before any robot starts costs the upload and
//! a robot's download in full. Layers no robot asks for are not pushed: a one-file change goes over
//! SSH and puts nothing on the hub. After the rollout, [`Via::finish`] pushes the manifest of
//! each image whose large layers all went through the hub (its config and small layers with
//! it), so the hub holds whole images skopeo and Docker can read.
//!
//! Each fetch carries a credential made for it (a pull-only token lives minutes: a long
//! rollout must not outlive the first one).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use tokio::sync::{mpsc, watch};

use super::convert::{self, HubLayer};
use super::{HubArgs, hub_host};
use crate::api::{Fetched, HeldImage, HubBlob, HubFetch, HubPart};
use crate::oci::{Descriptor, Digest, Reference};
use crate::ops::robot::{RobotLink, guarded};
use crate::progress::{Event, Reporter, Silent};
use crate::registry::Client;
use crate::store::Store;
use crate::wire::WireError;
use crate::wire::client::{
    Detail, HUB_MIN_DIRECT, PlannedLayer, TransferPlan, TransferReport, direct_estimate,
    older_robot_note, via_hub,
};

/// A layer's way onto the hub.
#[derive(Clone, Debug)]
enum Stage {
    /// Being recompressed and cut (or waiting for it).
    Converting,
    /// Its parts are known and being uploaded: robots may fetch it (a part they ask for before
    /// the hub has it is asked for again).
    Pushing(HubBlob),
    /// On the hub whole.
    Pushed(HubBlob, HubLayer),
    /// It will not get there.
    Failed(String),
}

/// How long a robot keeps asking for a part the pipeline has not uploaded yet: parts go in
/// order behind the rest of the rollout's layers, so this bounds a whole rollout's upload.
const PART_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// `--via` for one deploy or a whole rollout (shared by its robots' deploys).
pub struct Via {
    /// The hub as given.
    pub args: HubArgs,
    /// `host[:port]` and whether it is plain HTTP.
    host: String,
    insecure: bool,
    client: Arc<Client>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Via").field("host", &self.host).finish()
    }
}

#[derive(Default)]
struct State {
    /// (Laptop layer blob, zstd window) → its way onto the hub. Robots that decode smaller
    /// windows than the others of a rollout get a conversion of their own.
    blobs: HashMap<(Digest, u32), watch::Receiver<Stage>>,
    /// The images robots asked layers of: manifest digest → (hub repository, layers).
    images: BTreeMap<Digest, (String, Vec<Descriptor>)>,
    /// Manifests pushed by [`Via::finish`].
    finished: Vec<Digest>,
    /// The pipeline's queue, once started.
    queue: Option<mpsc::UnboundedSender<Job>>,
}

/// One layer for the pipeline.
struct Job {
    layer: Descriptor,
    diff_id: Digest,
    repository: String,
    window_log: u32,
    stage: watch::Sender<Stage>,
}

impl Via {
    /// A hub for `args`; nothing is sent until a robot asks.
    pub fn new(args: HubArgs) -> Result<Via> {
        let (host, insecure) = hub_host(&args.hub, args.insecure)?;
        let client = Client::new(crate::ops::registry::client_options(insecure)?)?;
        Ok(Via {
            args,
            host,
            insecure,
            client: Arc::new(client),
            state: Mutex::new(State::default()),
        })
    }

    /// The hub's URL, as robots reach it.
    fn url(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }

    /// [`crate::wire::client::Connection::transfer_with_held`] through the hub: plans, has the
    /// robot fetch the layers [`via_hub`] picks as the pipeline puts them on the hub (a layer
    /// in parts while its parts are uploaded), plans again and sends the rest over SSH. A
    /// robot older than wire 2.8 gets everything over SSH and a note. A hub that fails (a push, or the robot's fetch) fails the transfer, naming
    /// it: falling back to SSH would put every byte back on the shared uplink.
    pub async fn transfer(
        &self,
        l: &mut RobotLink,
        store: &Store,
        images: &[(String, Digest)],
        held: &[HeldImage],
        log: &dyn Reporter,
    ) -> Result<TransferReport> {
        let started = Instant::now();
        let mut plan = plan(l, store, images, held).await?;
        let mut fetched = Fetched::default();
        let wanted: Vec<&PlannedLayer> = plan
            .layers
            .iter()
            .filter(|p| via_hub(direct_estimate(p), p.blob.size))
            .collect();
        if !wanted.is_empty() && !l.conn.hello().fetches() {
            log.event(Event::note(older_robot_note(l.conn.hello())));
        } else if !wanted.is_empty() {
            let window = convert::window_log(l.conn.hello().window_log_max);
            for rx in self.request(store, &plan, &wanted, window) {
                if matches!(*rx.borrow(), Stage::Converting) {
                    log.event(Event::note(
                        "waiting for the laptop to prepare a layer for the hub",
                    ));
                }
                let blob = ready(rx.clone())
                    .await
                    .map_err(|e| anyhow!("the lab hub {}: {e}", self.host))?;
                let repository = blob.repository.clone();
                let authorization = self.robot_credential(&repository).await?;
                let hub = HubFetch {
                    url: self.url(),
                    authorization,
                    insecure: self.insecure,
                    blobs: vec![blob],
                    wait_ms: PART_WAIT.as_millis() as u64,
                    refresh: true,
                };
                // A pull token may expire during a long layer: the robot asks for another.
                let fresh = || {
                    let repository = repository.clone();
                    async move {
                        self.robot_credential(&repository)
                            .await
                            .map_err(|e| WireError::Credential(crate::util::error_chain(&*e)))
                    }
                };
                // A push that fails while the robot waits for its parts ends the wait here.
                let f = tokio::select! {
                    f = guarded(&l.session, l.conn.fetch_from_hub(hub, log, fresh)) => f?,
                    e = failed(rx) => return Err(anyhow!("the lab hub {}: {e}", self.host)),
                };
                fetched.layers += f.layers;
                fetched.bytes += f.bytes;
            }
            // What it fetched, it has: ask again, and send only the rest.
            l.conn.fetched_from_hub();
            let query = plan.query_bytes;
            plan = self::plan(l, store, images, held).await?;
            plan.query_bytes += query;
        }
        let mut report = guarded(&l.session, l.conn.execute(store, &plan, log)).await?;
        report.hub_layers = fetched.layers;
        report.hub_bytes = fetched.bytes;
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// A read-only credential for `repository` on the hub, made for one robot's fetch.
    async fn robot_credential(&self, repository: &str) -> Result<Option<String>> {
        self.client
            .robot_authorization(
                &self.host,
                std::slice::from_ref(&repository.to_string()),
                self.robot_user(),
            )
            .await
            .with_context(|| format!("getting the robot a read-only credential for {}", self.host))
    }

    fn robot_user(&self) -> Option<(&str, &str)> {
        self.args
            .robot_user
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Asks the pipeline for `wanted` (layers of `plan`): returns a receiver per layer, in the
    /// order the pipeline serves them (smallest first), made with zstd window `window_log`.
    /// A layer another robot asked for already (with that window) is not queued again.
    fn request(
        &self,
        store: &Store,
        plan: &TransferPlan,
        wanted: &[&PlannedLayer],
        window_log: u32,
    ) -> Vec<watch::Receiver<Stage>> {
        let mut st = self.state.lock().expect("hub state lock");
        let repository_of = |name: &str| {
            Reference::parse(name).map_or_else(|_| name.to_string(), |r| r.repository().into())
        };
        for img in plan.images.iter().filter(|i| !i.held_by_robot) {
            let Some(name) = img.names.first() else {
                continue;
            };
            st.images.entry(img.manifest.clone()).or_insert_with(|| {
                let layers = img.layers.iter().map(|(b, _)| b.clone()).collect();
                (repository_of(name), layers)
            });
        }
        let mut order = wanted.to_vec();
        order.sort_by_key(|p| p.blob.size);
        let mut out = Vec::with_capacity(order.len());
        for p in order {
            let key = (p.blob.digest.clone(), window_log);
            if let Some(rx) = st.blobs.get(&key) {
                out.push(rx.clone());
                continue;
            }
            let (stage, rx) = watch::channel(Stage::Converting);
            let job = Job {
                layer: p.blob.clone(),
                diff_id: p.diff_id.clone(),
                repository: repository_of(&p.image),
                window_log,
                stage,
            };
            let queue = st
                .queue
                .get_or_insert_with(|| self.start(store.root().to_path_buf()));
            if let Err(mpsc::error::SendError(job)) = queue.send(job) {
                let _ = job
                    .stage
                    .send(Stage::Failed("the push to the hub stopped".into()));
            }
            st.blobs.insert(key, rx.clone());
            out.push(rx);
        }
        out
    }

    /// Starts the pipeline: a converter (blocking, one layer at a time) feeding an uploader
    /// (one blob at a time: concurrent uploads would share the uplink and delay the first
    /// blob every robot waits for).
    fn start(&self, store_root: std::path::PathBuf) -> mpsc::UnboundedSender<Job> {
        let (tx, mut jobs) = mpsc::unbounded_channel::<Job>();
        let (up_tx, mut uploads) = mpsc::unbounded_channel::<(Job, HubBlob, HubLayer)>();
        let root = store_root.clone();
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let (root, layer, window) = (root.clone(), job.layer.clone(), job.window_log);
                let made = tokio::task::spawn_blocking(move || {
                    convert::hub_layer(&Store::open(&root)?, &layer, window)
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
                match made {
                    Ok(h) => {
                        let blob = hub_blob(&job, &h);
                        // Parts may be fetched while they are pushed; one blob only once it
                        // is there.
                        if h.parts.len() > 1 {
                            let _ = job.stage.send(Stage::Pushing(blob.clone()));
                        }
                        if up_tx.send((job, blob, h)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let why = format!(
                            "preparing layer {}: {}",
                            job.layer.digest,
                            crate::util::error_chain(&*e)
                        );
                        let _ = job.stage.send(Stage::Failed(why));
                    }
                }
            }
        });
        let (client, host) = (self.client.clone(), self.host.clone());
        tokio::spawn(async move {
            let store = Store::open(&store_root);
            while let Some((job, blob, h)) = uploads.recv().await {
                let result = match &store {
                    Ok(store) => push_layer(&client, store, &host, &job, &h).await,
                    Err(e) => Err(e.to_string()),
                };
                let _ = job.stage.send(match result {
                    Ok(()) => Stage::Pushed(blob, h),
                    Err(e) => Stage::Failed(e),
                });
            }
        });
        tx
    }

    /// After a rollout: pushes the manifest of every image whose large layers (at least
    /// [`HUB_MIN_DIRECT`]) all went to the hub in it, with the rest of the image (config,
    /// small layers). Returns warnings: a manifest that did not make it leaves every robot's
    /// release as it is, and only the hub without a readable image.
    pub async fn finish(&self, store: &Store, log: &dyn Reporter) -> Vec<String> {
        let (images, blobs) = {
            let st = self.state.lock().expect("hub state lock");
            // A layer converted with two windows: either pushed form will do.
            let mut blobs: HashMap<Digest, Stage> = HashMap::new();
            for ((d, _), rx) in &st.blobs {
                let stage = rx.borrow().clone();
                if matches!(stage, Stage::Pushed(..)) || !blobs.contains_key(d) {
                    blobs.insert(d.clone(), stage);
                }
            }
            let images: Vec<_> = st
                .images
                .iter()
                .filter(|(m, _)| !st.finished.contains(m))
                .map(|(m, v)| (m.clone(), v.clone()))
                .collect();
            (images, blobs)
        };
        let mut warnings = Vec::new();
        for (manifest, (repository, layers)) in images {
            let mut converted = HashMap::new();
            let complete = layers
                .iter()
                .filter(|d| d.size >= HUB_MIN_DIRECT)
                .all(|d| match blobs.get(&d.digest) {
                    Some(Stage::Pushed(_, h)) => {
                        converted.insert(d.digest.clone(), h.clone());
                        true
                    }
                    _ => false,
                });
            if !complete || converted.is_empty() {
                continue;
            }
            match self
                .push_manifest(store, &manifest, &repository, &converted, log)
                .await
            {
                Ok(()) => self
                    .state
                    .lock()
                    .expect("hub state lock")
                    .finished
                    .push(manifest),
                Err(e) => warnings.push(format!(
                    "the lab hub {}: the manifest of {repository} was not pushed, so the hub \
                     holds its layers but no image skopeo or Docker can read (the robots' \
                     releases are as reported): {}",
                    self.host,
                    crate::util::error_chain(&*e)
                )),
            }
        }
        warnings
    }

    async fn push_manifest(
        &self,
        store: &Store,
        manifest: &Digest,
        repository: &str,
        converted: &HashMap<Digest, HubLayer>,
        log: &dyn Reporter,
    ) -> Result<()> {
        let doc = convert::hub_manifest(store, manifest, converted)?;
        let dest = Reference::parse(&format!("{}/{repository}@{}", self.host, doc.digest))?;
        self.client.push(store, &doc, &dest, log).await?;
        Ok(())
    }
}

/// Plans `images` and `held` for the robot of `l` (as a transfer does) and checks its space.
async fn plan(
    l: &mut RobotLink,
    store: &Store,
    images: &[(String, Digest)],
    held: &[HeldImage],
) -> Result<TransferPlan> {
    let p = guarded(
        &l.session,
        l.conn.plan_with_held(store, images, held, Detail::Layers),
    )
    .await?;
    l.conn.check_space(store, &p)?;
    Ok(p)
}

/// What a robot is told to fetch for `job`'s layer, made into `h`: its one blob, or its parts.
fn hub_blob(job: &Job, h: &HubLayer) -> HubBlob {
    match h.parts.as_slice() {
        [one] => HubBlob {
            repository: job.repository.clone(),
            digest: one.digest.clone(),
            media_type: crate::oci::media::OCI_LAYER_ZSTD.into(),
            size: one.size,
            diff_id: job.diff_id.clone(),
            parts: Vec::new(),
        },
        parts => HubBlob {
            repository: job.repository.clone(),
            digest: job.diff_id.clone(),
            media_type: crate::oci::media::OCI_LAYER.into(),
            size: h.tar_size,
            diff_id: job.diff_id.clone(),
            parts: parts
                .iter()
                .map(|p| HubPart {
                    digest: p.digest.clone(),
                    size: p.size,
                    tar_size: p.tar_size,
                })
                .collect(),
        },
    }
}

/// Uploads `h`'s parts, in order, into the job's repository on `host`.
async fn push_layer(
    client: &Client,
    store: &Store,
    host: &str,
    job: &Job,
    h: &HubLayer,
) -> Result<(), String> {
    for p in &h.parts {
        let dest = Reference::parse(&format!("{host}/{}@{}", job.repository, p.digest))
            .map_err(|e| e.to_string())?;
        client
            .push_blob_to(store, &p.descriptor(), &dest, &Silent)
            .await
            .map_err(|e| {
                format!(
                    "pushing layer {}: {}",
                    job.layer.digest,
                    crate::util::error_chain(&e)
                )
            })?;
    }
    Ok(())
}

/// Waits until robots may fetch a layer (its parts are known, or its one blob is on the hub)
/// and says what to fetch, or why it will not be there.
async fn ready(mut rx: watch::Receiver<Stage>) -> Result<HubBlob, String> {
    let s = rx
        .wait_for(|s| !matches!(s, Stage::Converting))
        .await
        .map_err(|_| "the push to the hub stopped".to_string())?;
    match &*s {
        Stage::Pushing(b) | Stage::Pushed(b, _) => Ok(b.clone()),
        Stage::Failed(e) => Err(e.clone()),
        Stage::Converting => unreachable!("waited for another stage"),
    }
}

/// Resolves when the layer's push fails; never when it succeeds or the pipeline is gone.
async fn failed(mut rx: watch::Receiver<Stage>) -> String {
    let why = match rx.wait_for(|s| matches!(s, Stage::Failed(_))).await {
        Ok(s) => match &*s {
            Stage::Failed(e) => Some(e.clone()),
            _ => unreachable!("waited for a failure"),
        },
        Err(_) => None,
    };
    match why {
        Some(e) => e,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::time::Duration;

    use futures_util::FutureExt as _;

    use super::convert::tests::{files, gzip, remember_in_parts, tar_of};
    use super::*;
    use crate::oci::media;
    use crate::wire::client::{LayerHow, Objects};

    /// The zstd window of the tests' conversions (a 1 GB robot's).
    const WINDOW: u32 = 24;
    /// How long a test waits for the pipeline: far more than it needs, even on a loaded machine.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// How a test hub answers a request (method, path): a status and a body.
    type Answer = dyn Fn(&str, &str) -> (u16, Vec<u8>) + Send + Sync;

    /// A hub on 127.0.0.1 answering each request with `answer(method, path)` (a status and a
    /// body; the request's own body is read and dropped), one answer per request on a
    /// kept-alive connection. Returns its `host:port` and the requests it got
    /// (`METHOD path`).
    fn hub(
        answer: impl Fn(&str, &str) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log, answer): (_, Arc<Answer>) = (seen.clone(), Arc::new(answer));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (log, answer) = (log.clone(), answer.clone());
                std::thread::spawn(move || serve(conn, &log, &*answer));
            }
        });
        (host, seen)
    }

    /// One connection of [`hub`].
    fn serve(mut conn: std::net::TcpStream, log: &Mutex<Vec<String>>, answer: &Answer) {
        let (mut pending, mut buf) = (Vec::new(), [0u8; 8192]);
        loop {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while pending.len() < end + 4 + length {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            pending.drain(..end + 4 + length);
            let mut words = head.split(' ');
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            log.lock().unwrap().push(format!("{method} {path}"));
            let (status, body) = answer(method, path);
            let head = format!(
                "HTTP/1.1 {status} Test\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let body = if method == "HEAD" { &[][..] } else { &body[..] };
            if conn.write_all(&[head.as_bytes(), body].concat()).is_err() {
                return;
            }
        }
    }

    fn via(host: &str) -> Via {
        Via::new(HubArgs {
            hub: host.into(),
            insecure: true,
            robot_user: None,
        })
        .unwrap()
    }

    /// `n` bytes that do not compress: a layer blob as large as its files.
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A robot fetching a layer's parts while the laptop uploads them waits on the push: when
    /// the hub refuses the upload, the wait ends with the hub's answer (the request names the
    /// hub), and a robot asking later is told at once. A robot left fetching parts that will
    /// never come would wait the 30 minutes a part is given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_that_fails_while_a_robot_fetches_ends_its_wait_naming_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&files(60));
        let layer = gzip(&store, &tar);
        let h = remember_in_parts(&store, &layer, &tar, WINDOW, 16 << 10);
        assert!(h.parts.len() > 1, "{} parts", h.parts.len());
        // The upload is held until the robot fetches, then refused.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        let (host, seen) = hub(move |method, path| match method {
            "POST" if path.ends_with("/blobs/uploads/") => {
                let _ = held.lock().unwrap().recv_timeout(PATIENCE);
                (500, b"the hub's disk is full".to_vec())
            }
            _ => (404, Vec::new()),
        });
        let via = via(&host);
        let wanted = PlannedLayer {
            diff_id: Digest::of(&tar),
            blob: layer.clone(),
            image: "lab/x:1".into(),
            position: 0,
            of: 1,
            how: LayerHow::Whole,
            objects: Objects::Streamed,
        };
        let mut rxs = via.request(&store, &TransferPlan::default(), &[&wanted], WINDOW);
        let rx = rxs.pop().unwrap();

        let blob = tokio::time::timeout(PATIENCE, ready(rx.clone()))
            .await
            .expect("the parts are known before the upload ends")
            .expect("robots may fetch parts while they are pushed");
        assert_eq!(blob.parts.len(), h.parts.len());
        let mut waiting = Box::pin(failed(rx.clone()));
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "nothing failed yet"
        );
        release.send(()).unwrap();
        let why = tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("the refused upload ends the robot's wait");
        assert!(why.contains(&layer.digest.to_string()), "{why}");
        assert!(why.contains(&host) && why.contains("500"), "{why}");
        assert!(why.contains("disk is full"), "{why}");
        assert_eq!(ready(rx).await.unwrap_err(), why);
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .any(|r| r.starts_with("POST /v2/lab/x/blobs/uploads/")),
            "{seen:?}"
        );
    }

    /// What a robot's wait listens to: a layer's parts becoming known lets it start, its push
    /// failing stops it; a push that succeeds, or a pipeline that is gone once the layer is
    /// up, must not end a fetch under way.
    #[test]
    fn only_a_failed_push_ends_a_robots_wait() {
        let blob = HubBlob {
            repository: "lab/x".into(),
            digest: Digest::of(b"layer"),
            media_type: media::OCI_LAYER.into(),
            size: 3072,
            diff_id: Digest::of(b"layer"),
            parts: Vec::new(),
        };
        let h = HubLayer {
            tar_size: 3072,
            parts: Vec::new(),
        };
        let (tx, rx) = watch::channel(Stage::Converting);
        assert!(ready(rx.clone()).now_or_never().is_none());
        assert!(failed(rx.clone()).now_or_never().is_none());
        tx.send(Stage::Pushing(blob.clone())).unwrap();
        assert_eq!(ready(rx.clone()).now_or_never(), Some(Ok(blob.clone())));
        assert!(failed(rx.clone()).now_or_never().is_none());
        tx.send(Stage::Pushed(blob.clone(), h)).unwrap();
        assert!(failed(rx.clone()).now_or_never().is_none());
        drop(tx);
        assert!(failed(rx).now_or_never().is_none(), "the pipeline ended");

        let (tx, rx) = watch::channel(Stage::Converting);
        tx.send(Stage::Pushing(blob)).unwrap();
        let waiting = failed(rx.clone());
        tx.send(Stage::Failed("pushing layer x: answered 500".into()))
            .unwrap();
        let why = waiting.now_or_never();
        assert_eq!(why.as_deref(), Some("pushing layer x: answered 500"));
        assert_eq!(ready(rx).now_or_never(), Some(Err(why.unwrap())));

        // A pipeline that stopped before the layer got anywhere: robots are told.
        let (tx, rx) = watch::channel(Stage::Converting);
        drop(tx);
        let e = ready(rx).now_or_never().unwrap().unwrap_err();
        assert!(e.contains("stopped"), "{e}");
    }

    /// The manifest comes after the rollout: the robots have their layers and their releases
    /// are as reported, so a hub that refuses it gets a warning naming the hub and the
    /// repository, not an error. Nothing is recorded as finished: a later `finish` (here, once
    /// the hub takes manifests) pushes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_manifest_the_hub_refuses_is_a_warning_naming_the_hub_and_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&[("noise".into(), noise(HUB_MIN_DIRECT as usize + 4096))]);
        let layer = gzip(&store, &tar);
        assert!(
            layer.size >= HUB_MIN_DIRECT,
            "a layer that goes via the hub"
        );
        let h = convert::hub_layer(&store, &layer, WINDOW).unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "arm64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar)]},
        }))
        .unwrap();
        let config = Descriptor::new(
            media::OCI_CONFIG,
            store.put_blob(&config).unwrap(),
            config.len() as u64,
        );
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": config, "layers": [layer],
        }))
        .unwrap();
        let manifest = store.put_blob(&manifest).unwrap();

        // The hub holds every blob (the pipeline pushed the layer) and refuses manifests.
        let takes_manifests = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let takes = takes_manifests.clone();
        let (host, seen) = hub(move |method, path| match method {
            "HEAD" if path.contains("/blobs/") => (200, Vec::new()),
            "PUT" if path.contains("/manifests/") => {
                if takes.load(std::sync::atomic::Ordering::Relaxed) {
                    (201, Vec::new())
                } else {
                    (500, b"the hub's disk is full".to_vec())
                }
            }
            _ => (404, Vec::new()),
        });
        let via = via(&host);
        {
            let mut st = via.state.lock().unwrap();
            let job = Job {
                layer: layer.clone(),
                diff_id: Digest::of(&tar),
                repository: "lab/x".into(),
                window_log: WINDOW,
                stage: watch::channel(Stage::Converting).0,
            };
            let pushed = Stage::Pushed(hub_blob(&job, &h), h.clone());
            st.blobs
                .insert((layer.digest.clone(), WINDOW), watch::channel(pushed).1);
            st.images
                .insert(manifest.clone(), ("lab/x".into(), vec![layer.clone()]));
        }

        let warnings = via.finish(&store, &Silent).await;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = &warnings[0];
        assert!(w.contains(&format!("the lab hub {host}")), "{w}");
        assert!(w.contains("lab/x") && w.contains("500"), "{w}");
        let put_manifest = |seen: &Mutex<Vec<String>>| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|r| r.starts_with("PUT /v2/lab/x/manifests/"))
                .count()
        };
        assert_eq!(put_manifest(&seen), 1, "the manifest was what failed");
        assert!(via.state.lock().unwrap().finished.is_empty());

        takes_manifests.store(true, std::sync::atomic::Ordering::Relaxed);
        let warnings = via.finish(&store, &Silent).await;
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(put_manifest(&seen), 2);
        assert_eq!(via.state.lock().unwrap().finished.len(), 1);
    }
}
