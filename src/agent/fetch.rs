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

/// GETs every blob of `hub` whose layer the store lacks and commits it; `progress` is called
/// with the bytes downloaded so far (all blobs), about once per MiB and every few seconds
/// while a part is awaited, and says whether the laptop is still there (`false` ends the
/// fetch).
pub fn fetch(
    store: &AgentStore,
    hub: &HubFetch,
    window_log: u32,
    progress: &mut dyn FnMut(u64) -> bool,
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
            }]
            .into()
        } else {
            blob.parts
                .iter()
                .map(|p| Get {
                    url: url(&p.digest),
                    size: p.size,
                    digest: Some(p.digest.clone()),
                })
                .collect()
        };
        let failed: Rc<RefCell<Option<String>>> = Rc::default();
        let mut body = Body {
            client: client.clone(),
            authorization: hub.authorization.clone(),
            wait,
            gets,
            current: None,
            read: 0,
            before: out.bytes,
            reported: out.bytes,
            progress: &mut *progress,
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
    progress(out.bytes);
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
            if !status.is_success() {
                let why = match status.as_u16() {
                    401 | 403 => "the hub refused the deploy's credential",
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
    wait: Duration,
    gets: VecDeque<Get>,
    current: Option<Current>,
    /// Bytes read of every GET so far.
    read: u64,
    /// Bytes of earlier blobs, and what was last reported.
    before: u64,
    reported: u64,
    progress: &'p mut dyn FnMut(u64) -> bool,
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
                    if !(self.progress)(total) {
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
                Err(RecvTimeoutError::Timeout) => {
                    let url = c.get.url.clone();
                    if !(self.progress)(self.before + self.read) {
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
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn parts_join_without_their_inner_tar_ends() {
        let end = [0u8; TAR_END as usize];
        let part = |body: &[u8]| [body, &end[..]].concat();
        let (a, b, c) = (part(&[1; 1536]), part(&[2; 512]), part(&[3; 2048]));
        let stream = [a.clone(), b.clone(), c.clone()].concat();
        let sizes = vec![a.len() as u64, b.len() as u64, c.len() as u64];
        let mut out = Vec::new();
        // Small reads: boundaries fall inside them.
        let mut r = DropTarEnds::new(&stream[..], sizes.clone());
        let mut buf = [0u8; 100];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let want = [&[1u8; 1536][..], &[2; 512], &c[..]].concat();
        assert_eq!(out, want);
        // A part whose end is not zero blocks, or parts shorter than said: refused.
        let mut bad = stream.clone();
        bad[1536] = 9;
        let mut out = Vec::new();
        assert!(
            DropTarEnds::new(&bad[..], sizes.clone())
                .read_to_end(&mut out)
                .is_err()
        );
        let mut out = Vec::new();
        let short = &stream[..1000];
        assert!(
            DropTarEnds::new(short, sizes)
                .read_to_end(&mut out)
                .is_err()
        );
    }

    /// A hub on 127.0.0.1 answering every request with `answer(path)` (a status and a body),
    /// one answer per request on a kept-alive connection, as reqwest reuses them. Returns its
    /// URL and how many requests it got.
    fn hub(
        answer: impl Fn(&str) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (counted, answer) = (counted.clone(), answer.clone());
                std::thread::spawn(move || {
                    let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        // A GET has no body: the blank line ends each request.
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            let request: Vec<u8> = head.drain(..end + 4).collect();
                            let request = String::from_utf8_lossy(&request).into_owned();
                            let path = request.split(' ').nth(1).unwrap_or_default();
                            counted.fetch_add(1, Ordering::Relaxed);
                            let (status, body) = answer(path);
                            let reason = reqwest::StatusCode::from_u16(status)
                                .ok()
                                .and_then(|s| s.canonical_reason())
                                .unwrap_or("Whatever");
                            let head = format!(
                                "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            if conn.write_all(&[head.as_bytes(), &body].concat()).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, requests)
    }

    /// A skippable zstd frame holding `payload`: decoders pass over it, so a part whose
    /// payload differs decodes to the same tar, and only the part's digest tells them apart.
    fn skippable(payload: [u8; 8]) -> Vec<u8> {
        [
            &0x184D_2A50u32.to_le_bytes()[..],
            &8u32.to_le_bytes(),
            &payload,
        ]
        .concat()
    }

    /// A layer in two parts as the laptop cuts them (each the tar of one file, with its
    /// closing zero blocks, compressed with zstd), each part followed by a skippable frame.
    /// Returns the parts' bytes and the blob a fetch asks for.
    fn layer_in_parts() -> (Vec<Vec<u8>>, HubBlob) {
        let tar_of = |name: &str, content: &[u8]| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, content).unwrap();
            b.into_inner().unwrap()
        };
        let tars = [tar_of("a", &[b'a'; 3000]), tar_of("b", b"the second part")];
        let layer = [&tars[0][..tars[0].len() - TAR_END as usize], &tars[1][..]].concat();
        let parts: Vec<Vec<u8>> = tars
            .iter()
            .map(|t| [zstd::encode_all(&t[..], 3).unwrap(), skippable([0; 8])].concat())
            .collect();
        let blob = HubBlob {
            repository: "dts/x".into(),
            digest: Digest::of(&layer),
            media_type: crate::oci::media::OCI_LAYER.into(),
            size: layer.len() as u64,
            diff_id: Digest::of(&layer),
            parts: parts
                .iter()
                .zip(&tars)
                .map(|(p, t)| crate::api::HubPart {
                    digest: Digest::of(p),
                    size: p.len() as u64,
                    tar_size: t.len() as u64,
                })
                .collect(),
        };
        (parts, blob)
    }

    /// A hub serving `bodies[k]` for part k of `blob`, and 404 for anything else.
    fn serving(blob: &HubBlob, bodies: Vec<Vec<u8>>) -> String {
        let paths: Vec<String> = blob
            .parts
            .iter()
            .map(|p| format!("/v2/{}/blobs/{}", blob.repository, p.digest))
            .collect();
        hub(move |path| match paths.iter().position(|p| p == path) {
            Some(k) => (200, bodies[k].clone()),
            None => (404, Vec::new()),
        })
        .0
    }

    /// Fetches `blob` from the hub at `url` for a laptop that stays (progress never fails).
    fn fetch_one(
        store: &AgentStore,
        url: &str,
        blob: &HubBlob,
        wait_ms: u64,
    ) -> Result<Fetched, FetchError> {
        let hub = HubFetch {
            url: url.into(),
            authorization: None,
            insecure: true,
            blobs: vec![blob.clone()],
            wait_ms,
        };
        fetch(store, &hub, 27, &mut |_| true)
    }

    /// Another robot's bytes, a proxy's or a disk's: a part that decodes fine but is not the
    /// blob the laptop pushed is refused by its digest, naming it, and the layer is not
    /// committed. The same store then takes the real parts (the failure left nothing in the
    /// way, and the test's layer is one the robot accepts).
    #[test]
    fn a_part_with_other_bytes_than_its_digest_fails_naming_it_and_commits_nothing() {
        let t = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&t.path().join("store")).unwrap();
        let (parts, blob) = layer_in_parts();
        let mut other = parts.clone();
        *other[0].last_mut().unwrap() ^= 1;
        assert_eq!(other[0].len(), parts[0].len());
        assert_eq!(
            zstd::decode_all(&other[0][..]).unwrap(),
            zstd::decode_all(&parts[0][..]).unwrap(),
            "only the digest tells the parts apart"
        );
        let e = fetch_one(&store, &serving(&blob, other.clone()), &blob, 0).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, FetchError::Hub { .. }), "{m}");
        assert!(m.contains(&blob.parts[0].digest.to_string()), "{m}");
        assert!(m.contains(&Digest::of(&other[0]).to_string()), "{m}");
        assert!(!store.has_layer(&blob.diff_id));

        let f = fetch_one(&store, &serving(&blob, parts), &blob, 0).unwrap();
        assert_eq!((f.layers, f.present), (1, 0));
        assert!(store.has_layer(&blob.diff_id));
    }

    /// The laptop said how long each part is: a body shorter or longer (a truncated upload, a
    /// proxy's page) fails saying so, and the layer is not committed.
    #[test]
    fn a_part_shorter_or_longer_than_the_laptop_said_fails_and_commits_nothing() {
        let t = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&t.path().join("store")).unwrap();
        let (parts, blob) = layer_in_parts();
        let last = &parts[1];
        let shorter = last[..last.len() - 5].to_vec();
        let longer = [&last[..], &[0; 5]].concat();
        for (what, body) in [("shorter", shorter), ("longer", longer)] {
            let url = serving(&blob, vec![parts[0].clone(), body]);
            let e = fetch_one(&store, &url, &blob, 0).unwrap_err();
            let m = e.to_string();
            assert!(matches!(e, FetchError::Hub { .. }), "{what}: {m}");
            assert!(m.contains(&blob.parts[1].digest.to_string()), "{what}: {m}");
            assert!(
                m.contains(&format!("{} bytes", last.len())) && m.contains("the laptop said"),
                "{what}: {m}"
            );
            assert!(!store.has_layer(&blob.diff_id), "{what}");
        }
    }

    /// A part the laptop never pushes (its upload failed, the laptop crashed) is asked for
    /// until `wait_ms`, then the fetch fails saying it waited, instead of waiting forever for
    /// a laptop that is still there.
    #[test]
    fn a_part_the_hub_never_gets_fails_after_the_wait_saying_it_waited() {
        let (_, blob) = layer_in_parts();
        let (url, _) = hub(|_| (404, Vec::new()));
        let wait = Duration::from_millis(600);
        // On a thread of its own: a robot that never stops waiting fails this test instead of
        // hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let hub_url = url.clone();
        std::thread::spawn(move || {
            let t = tempfile::tempdir().unwrap();
            let store = AgentStore::open(&t.path().join("store")).unwrap();
            let started = Instant::now();
            let r = fetch_one(&store, &hub_url, &blob, wait.as_millis() as u64);
            let _ = tx.send((r, started.elapsed(), store.has_layer(&blob.diff_id)));
        });
        // Bounded: the wait, not the 30 minutes a deploy gives.
        let (r, elapsed, committed) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the fetch ends once wait_ms has passed");
        let e = r.unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, FetchError::Hub { .. }), "{m}");
        assert!(m.contains(&url), "{m}");
        assert!(m.contains("HTTP 404"), "{m}");
        assert!(
            m.contains("after the time the laptop gave for its push"),
            "{m}"
        );
        assert!(elapsed >= wait, "gave up after {elapsed:?}");
        assert!(!committed);
    }

    /// A part the hub never gets: the robot asks again (404s) and tells the laptop it waits;
    /// once the laptop is gone, it stops instead of asking until `wait_ms`.
    #[test]
    fn waiting_for_a_part_ends_when_the_laptop_is_gone() {
        let (url, gets) = hub(|_| (404, Vec::new()));
        let t = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&t.path().join("store")).unwrap();
        let part = |b: &[u8]| crate::api::HubPart {
            digest: Digest::of(b),
            size: 10,
            tar_size: 2048,
        };
        let hub = HubFetch {
            url,
            authorization: None,
            insecure: true,
            blobs: vec![HubBlob {
                repository: "dts/x".into(),
                digest: Digest::of(b"layer"),
                media_type: crate::oci::media::OCI_LAYER.into(),
                size: 3072,
                diff_id: Digest::of(b"layer"),
                parts: vec![part(b"a"), part(b"b")],
            }],
            wait_ms: 10 * 60 * 1000,
        };
        let started = Instant::now();
        let mut calls = 0;
        let e = fetch(&store, &hub, 27, &mut |_| {
            calls += 1;
            false
        })
        .unwrap_err();
        assert!(e.to_string().contains(LAPTOP_GONE), "{e}");
        assert_eq!(calls, 1);
        assert!(started.elapsed() < KEEPALIVE * 3, "{:?}", started.elapsed());
        assert!(gets.load(Ordering::Relaxed) > 2, "asked again on 404");
        // The GET thread stopped asking.
        let n = gets.load(Ordering::Relaxed);
        std::thread::sleep(POLL_EVERY * 3);
        assert!(gets.load(Ordering::Relaxed) <= n + 1);
    }

    #[test]
    fn repository_names_cannot_leave_the_blob_path() {
        for ok in ["a", "duckietown/dt-core", "dts/lab_1/x.y-z"] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "", "../x", "a/../b", "A/b", "a//b", "a/b?x", "a/b#", "/a", "a/",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }
}
