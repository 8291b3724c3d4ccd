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
//! The HTTP client (reqwest on rustls with ring, the laptop's own) runs on a thread of its own
//! with a one-thread tokio runtime: `dt-agent serve` is blocking I/O, and the store reads the
//! body as a `Read` through a small bounded channel, so at most a few chunks are in memory.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use crate::agent::store::{AgentStore, AgentStoreError};
use crate::api::{Fetched, HubFetch};
use crate::progress::Silent;

/// Chunks in flight between the HTTP thread and the store.
const CHANNEL_CHUNKS: usize = 16;
/// How often (bytes) progress is reported.
const PROGRESS_EVERY: u64 = 1 << 20;

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
/// with the bytes downloaded so far (all blobs), about once per MiB.
pub fn fetch(
    store: &AgentStore,
    hub: &HubFetch,
    progress: &mut dyn FnMut(u64),
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
    for blob in &hub.blobs {
        if store.has_layer(&blob.diff_id) {
            out.present += 1;
            continue;
        }
        let url = format!("{base}/v2/{}/blobs/{}", blob.repository, blob.digest);
        let failed: Rc<RefCell<Option<String>>> = Rc::default();
        let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
        let thread = spawn_get(client.clone(), url.clone(), hub.authorization.clone(), tx);
        let mut body = Body {
            rx,
            chunk: Vec::new(),
            pos: 0,
            read: 0,
            limit: blob.size,
            before: out.bytes,
            reported: out.bytes,
            progress: &mut *progress,
            failed: failed.clone(),
        };
        let r = store.import_layer_blob(&blob.digest, blob.size, &blob.diff_id, &mut body, &Silent);
        let read = body.read;
        drop(body);
        let _ = thread.join();
        let hub_failure = failed.borrow_mut().take();
        match (r, hub_failure) {
            (_, Some(message)) => {
                return Err(FetchError::Hub {
                    hub: base,
                    message: format!("GET {url}: {message}"),
                });
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
            let mut req = client.get(&url);
            if let Some(a) = &authorization {
                match reqwest::header::HeaderValue::from_str(a) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        req = req.header(reqwest::header::AUTHORIZATION, v);
                    }
                    Err(_) => {
                        let _ = tx.send(Msg::Failed(
                            "the credential holds characters HTTP headers cannot carry".into(),
                        ));
                        return;
                    }
                }
            }
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Msg::Failed(crate::util::error_chain(&e)));
                    return;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                let why = match status.as_u16() {
                    401 | 403 => "the hub refused the deploy's credential",
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

/// The body as a `Read`: at most `limit` bytes (more is an error: the manifest said how many).
struct Body<'p> {
    rx: Receiver<Msg>,
    chunk: Vec<u8>,
    pos: usize,
    read: u64,
    limit: u64,
    /// Bytes of earlier blobs, and what was last reported.
    before: u64,
    reported: u64,
    progress: &'p mut dyn FnMut(u64),
    /// The transport's failure, for the caller to name the hub rather than the blob.
    failed: Rc<RefCell<Option<String>>>,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Msg::Chunk(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Msg::Failed(m)) => {
                    *self.failed.borrow_mut() = Some(m.clone());
                    return Err(io::Error::other(m));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(format!(
                "the blob has more than the {} bytes its manifest says",
                self.limit
            )));
        }
        let total = self.before + self.read;
        if total - self.reported >= PROGRESS_EVERY {
            self.reported = total;
            (self.progress)(total);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
