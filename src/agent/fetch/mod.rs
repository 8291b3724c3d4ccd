//! The robot's half of a lab hub (`dts duckiebot deploy --via`, wire `fetch`, docs/wire.md):
//! GET layer blobs from an OCI registry and commit them to the store, so a fleet's layers cross
//! the laptop's uplink once (to the hub) instead of once per robot.
//!
//! Each blob is `GET /v2/<repository>/blobs/<digest>` with the credential the laptop passed
//! (a pull-only bearer token, or a read-only user's Basic header), following redirects (a
//! registry on S3 answers 307 to a signed URL; reqwest drops the `Authorization` header when a
//! redirect leaves the host). The body streams straight into
//! [`AgentStore::import_layer_blob`], the same ingestion as `dt-agent image import`: digest,
//! size and diff_id verified, nothing staged whole. The credential lives in this request's
//! memory only: it is never written on the robot, never logged, and our errors never print it.
//!
//! A layer may come in parts ([`HubBlob::parts`], 2.8), which the laptop pushes while robots
//! fetch them: each part's GET that finds nothing yet (404) is made again every
//! [`POLL_EVERY`] until the request's `wait_ms` has passed. The parts' bytes are one stream
//! of zstd frames, checked part by part against their digests; decompressed, the closing zero
//! blocks of every part but the last are left out, and what remains is the layer's tar,
//! ingested as an uncompressed blob whose digest is the diff_id.
//!
//! The HTTP client (reqwest on rustls with ring, the laptop's own) runs on a thread of its own
//! with a one-thread tokio runtime: `dt-agent serve` is blocking I/O, and the store reads the
//! body as a `Read` through a small bounded channel, so at most a few chunks are in memory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::agent::store::{AgentStore, AgentStoreError};
use crate::api::{Fetched, HubBlob, HubFetch};
use crate::oci::Digest;
use crate::progress::Silent;

/// Chunks in flight between the HTTP thread and the store.
const CHANNEL_CHUNKS: usize = 16;
/// How often (bytes) progress is reported.
const PROGRESS_EVERY: u64 = 1 << 20;
/// How often a part the hub does not hold yet is asked for again.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// While waiting for a part, how often the laptop is told (progress with the same count):
/// writing to a session the laptop left fails, which ends the wait.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// A part's tar ends with two 512-byte zero blocks, left out where the next part follows.
const TAR_END: u64 = 1024;

/// The laptop's side of a fetch, as the robot's session sees it.
pub trait Laptop {
    /// Tells the laptop `bytes` of blobs arrived (the same count again while the robot waits
    /// for a part): false when it is gone, which ends the fetch.
    fn progress(&mut self, bytes: u64) -> bool;
    /// Asks for a fresh credential after the hub refused the one given (only when the
    /// request's `refresh` offers it): the new `Authorization` value (or none), or `None`
    /// when the laptop gave none.
    fn credential(&mut self) -> Option<Option<String>>;
}

/// A progress callback alone: a laptop that gives no fresh credentials.
impl<F: FnMut(u64) -> bool> Laptop for F {
    fn progress(&mut self, bytes: u64) -> bool {
        self(bytes)
    }

    fn credential(&mut self) -> Option<Option<String>> {
        None
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The hub could not be reached, refused the credential or failed a request.
    #[error("the lab hub {hub}: {message}")]
    Hub {
        /// The hub's URL.
        hub: String,
        /// What went wrong (never the credential).
        message: String,
    },
    /// The blob did not ingest (bad content, a full disk).
    #[error("a layer blob from the lab hub {hub}: {source}")]
    Store {
        /// The hub's URL.
        hub: String,
        /// The store's error (boxed: it is large, and this one is rare).
        #[source]
        source: Box<AgentStoreError>,
    },
}

impl FetchError {
    /// Whether the request was at fault (a blob that is not what its manifest says).
    pub fn is_bad_input(&self) -> bool {
        match self {
            FetchError::Hub { .. } => false,
            FetchError::Store { source, .. } => source.is_bad_input(),
        }
    }
}

/// GETs every blob of `hub` whose layer the store lacks and commits it; `laptop` hears the
/// bytes downloaded so far (all blobs), about once per MiB and every few seconds while a part
/// is awaited, and says whether it is still there (`false` ends the fetch); it is asked for a
/// fresh credential when the hub refuses the one given and `hub.refresh` offers one.
pub fn fetch(
    store: &AgentStore,
    hub: &HubFetch,
    window_log: u32,
    laptop: &mut dyn Laptop,
) -> Result<Fetched, FetchError> {
    let base = hub.url.trim_end_matches('/').to_string();
    let client = http_client(hub).map_err(|message| FetchError::Hub {
        hub: base.clone(),
        message,
    })?;
    if let Some(b) = hub.blobs.iter().find(|b| !valid_repository(&b.repository)) {
        return Err(FetchError::Hub {
            hub: base,
            message: format!("`{}` is not a repository name", b.repository),
        });
    }
    let mut out = Fetched::default();
    let wait = Duration::from_millis(hub.wait_ms);
    for blob in &hub.blobs {
        if store.has_layer(&blob.diff_id) {
            out.present += 1;
            continue;
        }
        let url = |d: &Digest| format!("{base}/v2/{}/blobs/{d}", blob.repository);
        let gets: VecDeque<Get> = if blob.parts.is_empty() {
            // One blob: the store checks its digest.
            [Get {
                url: url(&blob.digest),
                size: blob.size,
                digest: None,
                refreshed: false,
            }]
            .into()
        } else {
            blob.parts
                .iter()
                .map(|p| Get {
                    url: url(&p.digest),
                    size: p.size,
                    digest: Some(p.digest.clone()),
                    refreshed: false,
                })
                .collect()
        };
        let failed: Rc<RefCell<Option<String>>> = Rc::default();
        let mut body = Body {
            client: client.clone(),
            authorization: hub.authorization.clone(),
            refresh: hub.refresh,
            wait,
            gets,
            current: None,
            read: 0,
            before: out.bytes,
            reported: out.bytes,
            laptop: &mut *laptop,
            failed: failed.clone(),
            cancel: Arc::default(),
        };
        let r = ingest(store, blob, &mut body, window_log);
        let read = body.read;
        body.finish();
        drop(body);
        let hub_failure = failed.borrow_mut().take();
        match (r, hub_failure) {
            (_, Some(message)) => {
                return Err(FetchError::Hub { hub: base, message });
            }
            (Err(source), None) => {
                return Err(FetchError::Store {
                    hub: base,
                    source: Box::new(source),
                });
            }
            (Ok(_), None) => {
                out.layers += 1;
                out.bytes += read;
            }
        }
    }
    laptop.progress(out.bytes);
    Ok(out)
}

/// Commits `blob`, read from `body`: the blob as it is, or its parts' tar.
/// `window_log`: the largest zstd window this robot's hello announced (a part asking for more
/// is refused, not allocated).
fn ingest(
    store: &AgentStore,
    blob: &HubBlob,
    body: &mut Body,
    window_log: u32,
) -> Result<bool, AgentStoreError> {
    if blob.parts.is_empty() {
        return store.import_layer_blob(&blob.digest, blob.size, &blob.diff_id, body, &Silent);
    }
    let mut frames = zstd::stream::read::Decoder::new(body)
        .map_err(|e| AgentStoreError::bad_archive(format!("a zstd decoder: {e}")))?;
    frames
        .window_log_max(window_log)
        .map_err(|e| AgentStoreError::bad_archive(format!("a zstd decoder: {e}")))?;
    let mut tar = DropTarEnds::new(frames, blob.parts.iter().map(|p| p.tar_size).collect());
    store.import_layer_blob(&blob.diff_id, blob.size, &blob.diff_id, &mut tar, &Silent)
}

/// The parts' decompressed stream without each part's closing zero blocks but the last's.
struct DropTarEnds<R> {
    inner: R,
    /// Where each part's tar ends in the decompressed stream, and whether it is the last.
    ends: VecDeque<u64>,
    pos: u64,
}

impl<R: Read> DropTarEnds<R> {
    fn new(inner: R, tar_sizes: Vec<u64>) -> Self {
        let mut end = 0;
        let mut ends: VecDeque<u64> = tar_sizes
            .iter()
            .map(|s| {
                end += s;
                end
            })
            .collect();
        ends.pop_back(); // the last part keeps its end
        DropTarEnds {
            inner,
            ends,
            pos: 0,
        }
    }
}

impl<R: Read> Read for DropTarEnds<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(&end) = self.ends.front() else {
                let n = self.inner.read(buf)?;
                self.pos += n as u64;
                return Ok(n);
            };
            if end < TAR_END || self.pos > end - TAR_END {
                return Err(io::Error::other(
                    "a part's tar is shorter than it was said to be",
                ));
            }
            let drop_at = end - TAR_END;
            if self.pos == drop_at {
                let mut zeros = [0u8; TAR_END as usize];
                self.inner.read_exact(&mut zeros)?;
                if zeros.iter().any(|&b| b != 0) {
                    return Err(io::Error::other(
                        "a part does not end with the tar's zero blocks",
                    ));
                }
                self.pos = end;
                self.ends.pop_front();
                continue;
            }
            let room = (drop_at - self.pos).min(buf.len() as u64) as usize;
            let n = self.inner.read(&mut buf[..room])?;
            if n == 0 {
                return Err(io::Error::other("the parts end before their tars do"));
            }
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

fn http_client(hub: &HubFetch) -> Result<reqwest::Client, String> {
    // reqwest is built without a default crypto provider; rustls needs one per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(format!("dt-agent/{}", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        // Per read: a layer may take minutes on a slow link, a stalled socket may not.
        .read_timeout(Duration::from_secs(60))
        .tls_danger_accept_invalid_certs(hub.insecure)
        .build()
        .map_err(|e| crate::util::error_chain(&e))
}

/// A distribution repository name: lowercase path components of `[a-z0-9]` joined by `.`,
/// `_`, `__` or `-` runs, separated by `/` (no `..`, nothing a URL would reinterpret).
fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
                && !c.contains("..")
        })
}

/// What the HTTP thread hands the store: a piece of the body, or why it stopped.
enum Msg {
    Chunk(Vec<u8>),
    Failed(String),
    /// The hub refused the credential (401/403), before any of the body.
    Refused(String),
}

/// GETs `url` on a thread of its own and sends the body in chunks; the channel closing is the
/// body's end.
fn spawn_get(
    client: reqwest::Client,
    url: String,
    authorization: Option<String>,
    wait: Duration,
    cancel: Arc<AtomicBool>,
    tx: SyncSender<Msg>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Msg::Failed(format!("cannot start the HTTP runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            let header = match &authorization {
                None => None,
                Some(a) => match reqwest::header::HeaderValue::from_str(a) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        Some(v)
                    }
                    Err(_) => {
                        let _ = tx.send(Msg::Failed(
                            "the credential holds characters HTTP headers cannot carry".into(),
                        ));
                        return;
                    }
                },
            };
            let deadline = Instant::now() + wait;
            let mut resp = loop {
                let mut req = client.get(&url);
                if let Some(v) = &header {
                    req = req.header(reqwest::header::AUTHORIZATION, v.clone());
                }
                match req.send().await {
                    // Not pushed yet: the laptop is on it (unless the fetch was given up).
                    Ok(r) if r.status() == 404 && Instant::now() < deadline => {
                        if cancel.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::time::sleep(POLL_EVERY).await;
                    }
                    Ok(r) => break r,
                    Err(e) => {
                        let _ = tx.send(Msg::Failed(crate::util::error_chain(&e)));
                        return;
                    }
                }
            };
            let status = resp.status();
            if matches!(status.as_u16(), 401 | 403) {
                let why = "the hub refused the deploy's credential";
                let _ = tx.send(Msg::Refused(format!("HTTP {status}: {why}")));
                return;
            }
            if !status.is_success() {
                let why = match status.as_u16() {
                    404 if !wait.is_zero() => {
                        "the hub still has no such blob in that repository after the time the \
                         laptop gave for its push"
                    }
                    404 => "the hub has no such blob in that repository",
                    _ => "the hub failed the request",
                };
                let _ = tx.send(Msg::Failed(format!("HTTP {status}: {why}")));
                return;
            }
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        if tx.send(Msg::Chunk(c.to_vec())).is_err() {
                            return; // the store stopped reading
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Msg::Failed(crate::util::error_chain(&e)));
                        return;
                    }
                }
            }
        });
    })
}

/// Why a fetch stopped when the laptop's session went away.
const LAPTOP_GONE: &str = "the laptop's session ended while the robot fetched";

/// One GET of a body: a blob, or a part checked against its digest.
struct Get {
    url: String,
    size: u64,
    digest: Option<Digest>,
    /// Already asked again with a fresh credential: a second refusal fails the fetch.
    refreshed: bool,
}

/// The GET under way: its thread, its chunks, what was read of it.
struct Current {
    get: Get,
    rx: Receiver<Msg>,
    thread: std::thread::JoinHandle<()>,
    chunk: Vec<u8>,
    pos: usize,
    read: u64,
    hasher: Option<Sha256>,
}

/// The bodies of `gets`, one after the other, as one `Read`: each at most its `size` bytes
/// (more is an error: the laptop said how many) and, for a part, exactly those bytes with its
/// digest.
struct Body<'p> {
    client: reqwest::Client,
    authorization: Option<String>,
    /// Whether the laptop offered fresh credentials ([`HubFetch::refresh`]).
    refresh: bool,
    wait: Duration,
    gets: VecDeque<Get>,
    current: Option<Current>,
    /// Bytes read of every GET so far.
    read: u64,
    /// Bytes of earlier blobs, and what was last reported.
    before: u64,
    reported: u64,
    laptop: &'p mut dyn Laptop,
    /// The transport's failure, for the caller to name the hub rather than the blob.
    failed: Rc<RefCell<Option<String>>>,
    /// Set when the body is given up: a GET still asking for a part stops.
    cancel: Arc<AtomicBool>,
}

impl Body<'_> {
    fn fail(&self, url: &str, m: String) -> io::Error {
        let message = format!("GET {url}: {m}");
        *self.failed.borrow_mut() = Some(message.clone());
        io::Error::other(message)
    }

    /// Checks the finished GET (a part's size and digest) and waits for its thread.
    fn close(&mut self, c: Current) -> io::Result<()> {
        let _ = c.thread.join();
        if let (Some(want), Some(h)) = (&c.get.digest, c.hasher) {
            let got = Digest::from_hex(&format!("{:x}", h.finalize())).expect("sha256 is a digest");
            if c.read != c.get.size || got != *want {
                return Err(self.fail(
                    &c.get.url,
                    format!(
                        "the part has {} bytes hashing to {got}, the laptop said {} bytes, {want}",
                        c.read, c.get.size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stops a GET still under way (the store stopped reading).
    fn finish(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(c) = self.current.take() {
            drop(c.rx);
            let _ = c.thread.join();
        }
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some(get) = self.gets.pop_front() else {
                    return Ok(0);
                };
                let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
                let thread = spawn_get(
                    self.client.clone(),
                    get.url.clone(),
                    self.authorization.clone(),
                    if get.digest.is_some() {
                        self.wait
                    } else {
                        Duration::ZERO
                    },
                    self.cancel.clone(),
                    tx,
                );
                let hasher = get.digest.as_ref().map(|_| Sha256::new());
                self.current = Some(Current {
                    get,
                    rx,
                    thread,
                    chunk: Vec::new(),
                    pos: 0,
                    read: 0,
                    hasher,
                });
            }
            let c = self.current.as_mut().expect("a GET under way");
            if c.pos < c.chunk.len() {
                let n = buf.len().min(c.chunk.len() - c.pos);
                buf[..n].copy_from_slice(&c.chunk[c.pos..c.pos + n]);
                if let Some(h) = &mut c.hasher {
                    h.update(&buf[..n]);
                }
                c.pos += n;
                c.read += n as u64;
                if c.read > c.get.size {
                    let (url, size) = (c.get.url.clone(), c.get.size);
                    return Err(self.fail(
                        &url,
                        format!("the blob has more than the {size} bytes the laptop said"),
                    ));
                }
                self.read += n as u64;
                let total = self.before + self.read;
                if total - self.reported >= PROGRESS_EVERY {
                    self.reported = total;
                    if !self.laptop.progress(total) {
                        let url = self.current.as_ref().map(|c| c.get.url.clone());
                        return Err(self.fail(&url.unwrap_or_default(), LAPTOP_GONE.into()));
                    }
                }
                return Ok(n);
            }
            match c.rx.recv_timeout(KEEPALIVE) {
                Ok(Msg::Chunk(chunk)) => {
                    c.chunk = chunk;
                    c.pos = 0;
                }
                Ok(Msg::Failed(m)) => {
                    let url = c.get.url.clone();
                    return Err(self.fail(&url, m));
                }
                Ok(Msg::Refused(m)) => {
                    // A pull token may expire during a long layer: once per GET, the laptop
                    // is asked for a fresh one and the GET is made again with it.
                    let fresh = match (self.refresh, c.get.refreshed) {
                        (true, false) => self.laptop.credential(),
                        _ => None,
                    };
                    let c = self.current.take().expect("a GET under way");
                    let _ = c.thread.join();
                    let Some(authorization) = fresh else {
                        return Err(self.fail(&c.get.url, m));
                    };
                    self.authorization = authorization;
                    self.gets.push_front(Get {
                        refreshed: true,
                        ..c.get
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    let url = c.get.url.clone();
                    if !self.laptop.progress(self.before + self.read) {
                        return Err(self.fail(&url, LAPTOP_GONE.into()));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let c = self.current.take().expect("a GET under way");
                    self.close(c)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
