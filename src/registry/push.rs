//! `push`: store → registry. Config and layer blobs first (each checked with `HEAD`, then
//! mounted from another repository of the registry if we know one that has it, else
//! uploaded), then child manifests, then the top manifest or index under the tag — the order
//! registries require, since they refuse a manifest whose blobs they lack.
//!
//! Uploads: blobs up to the chunk size go in one `PUT` after the `POST` that opens the
//! session; larger ones in `PATCH` chunks, each following the `Location` and `Range` the
//! registry answers. When a chunk's connection breaks, the upload's status (`GET` on its URL)
//! says how much the registry kept and the upload resumes there; a registry that dropped the
//! session gets a new one.

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::error::{RegistryError, Result};
use super::known::{self, KnownBlobs};
use super::{Client, MANIFEST_ACCEPT, PushReport, Req, Target, header_digest, http_error};
use crate::oci::{Descriptor, Digest, Reference, media};
use crate::progress::{Event, Reporter};
use crate::store::{MAX_MANIFEST_BYTES, Store, StoreError};
use crate::util::fs::PathError;

/// Consecutive broken chunks (or single-request uploads) tolerated per blob.
const MAX_RETRIES: u32 = 3;

/// How one blob got into the repository.
enum BlobOutcome {
    Existed,
    Mounted,
    /// Bytes sent (more than the blob's size if part had to be sent again).
    Uploaded(u64),
}

impl Client {
    /// Pushes `image` (a manifest or index in `store`, with everything it reaches) to `dest`.
    /// The top document goes under `dest`'s tag, or by digest if `dest` has none. What the
    /// repository already has is checked with `HEAD` and not sent again, so pushing an image
    /// twice uploads nothing the second time.
    pub async fn push(
        &self,
        store: &Store,
        image: &Descriptor,
        dest: &Reference,
        reporter: &dyn Reporter,
    ) -> Result<PushReport> {
        let t = self.target(dest);
        let scopes = vec![t.scope(true)];
        if let Some(pinned) = dest.digest()
            && *pinned != image.digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: t.registry.clone(),
                repository: t.repository.clone(),
                what: format!("image pushed to `{dest}`"),
                expected: pinned.clone(),
                actual: image.digest.clone(),
            });
        }
        store.check_complete(image)?;
        let reachable = store.reachable(image)?;
        let is_document =
            |d: &Descriptor| media::is_manifest(&d.media_type) || media::is_index(&d.media_type);
        let (documents, blobs): (Vec<&Descriptor>, Vec<&Descriptor>) =
            reachable.iter().partition(|d| is_document(d));
        let top_ref = dest
            .tag()
            .map(str::to_string)
            .unwrap_or_else(|| image.digest.to_string());

        // One request before the concurrent part: it settles authentication (one token, not
        // one per blob) and tells whether the tag already names this image.
        let top_present = self
            .manifest_exists(&t, &scopes, &top_ref, &image.digest)
            .await?;

        let known = KnownBlobs::load(store);
        let count = blobs.len();
        // Futures collected first: a stream over a borrowing closure makes this future
        // !Send (rust-lang/rust#102211), and callers spawn pushes.
        let transfers: Vec<_> = blobs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let label = if d.media_type.contains("config") {
                    "config".to_string()
                } else {
                    format!("blob {}/{count}", i + 1)
                };
                self.push_blob(&t, &scopes, store, d, &known, label, reporter)
            })
            .collect();
        let outcomes: Vec<BlobOutcome> = stream::iter(transfers)
            .buffer_unordered(self.opts.concurrency)
            .try_collect()
            .await?;
        let mut report = PushReport::default();
        for o in outcomes {
            match o {
                BlobOutcome::Existed => report.blobs_existing += 1,
                BlobOutcome::Mounted => report.blobs_mounted += 1,
                BlobOutcome::Uploaded(n) => {
                    report.blobs_uploaded += 1;
                    report.bytes_uploaded += n;
                }
            }
        }
        let blob_digests: Vec<Digest> = blobs.iter().map(|d| d.digest.clone()).collect();
        if let Err(e) = known::remember(store, &t.registry, &t.repository, &blob_digests) {
            reporter.event(Event::note(format!(
                "could not record where blobs were pushed (cross-repository mounts will not use them): {e}"
            )));
        }

        // Children before parents: `reachable` lists parents first.
        for d in documents.iter().rev() {
            let is_top = d.digest == image.digest;
            let reference = if is_top {
                top_ref.clone()
            } else {
                d.digest.to_string()
            };
            let id = d.digest.short().to_string();
            reporter.event(Event::start(&id, "manifest", Some(d.size)));
            let present = if is_top {
                top_present
            } else {
                self.manifest_exists(&t, &scopes, &reference, &d.digest)
                    .await?
            };
            if present {
                reporter.event(Event::finish(&id, "exists"));
                continue;
            }
            let bytes = store.read_blob(&d.digest, MAX_MANIFEST_BYTES)?;
            self.put_manifest(&t, &scopes, &reference, d, &bytes)
                .await?;
            report.manifests_pushed += 1;
            reporter.event(Event::finish(&id, "done"));
        }
        Ok(report)
    }

    /// Pushes one blob of `store` into `dest`'s repository, as [`Client::push`] pushes each
    /// of an image's (`HEAD` first, mounted from another repository we pushed it to, else
    /// uploaded), and remembers where it now is. Returns the bytes uploaded (0: it was there
    /// or was mounted). A lab hub's layers go one by one, so robots fetch each as soon as it
    /// is committed (ops::hub).
    pub async fn push_blob_to(
        &self,
        store: &Store,
        desc: &Descriptor,
        dest: &Reference,
        reporter: &dyn Reporter,
    ) -> Result<u64> {
        let t = self.target(dest);
        let scopes = vec![t.scope(true)];
        let known = KnownBlobs::load(store);
        let outcome = self
            .push_blob(&t, &scopes, store, desc, &known, "layer".into(), reporter)
            .await?;
        if let Err(e) = known::remember(
            store,
            &t.registry,
            &t.repository,
            std::slice::from_ref(&desc.digest),
        ) {
            reporter.event(Event::note(format!(
                "could not record where a blob was pushed (cross-repository mounts will not use it): {e}"
            )));
        }
        Ok(match outcome {
            BlobOutcome::Uploaded(n) => n,
            BlobOutcome::Existed | BlobOutcome::Mounted => 0,
        })
    }

    /// Whether `reference` (tag or digest) names `digest` in the repository.
    async fn manifest_exists(
        &self,
        t: &Target,
        scopes: &[String],
        reference: &str,
        digest: &Digest,
    ) -> Result<bool> {
        let req = Req::new(Method::HEAD, t.manifest_url(reference))
            .header(header::ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(t, scopes, &req).await?;
        match resp.status() {
            StatusCode::OK => Ok(match header_digest(resp.headers()) {
                Some(d) => d == *digest,
                // Without the header only a digest reference is known to match.
                None => reference == digest.to_string(),
            }),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(http_error(&req.method, resp).await),
        }
    }

    async fn put_manifest(
        &self,
        t: &Target,
        scopes: &[String],
        reference: &str,
        desc: &Descriptor,
        bytes: &[u8],
    ) -> Result<()> {
        let req = Req::new(Method::PUT, t.manifest_url(reference))
            .header(header::CONTENT_TYPE, desc.media_type.clone())
            .body(bytes);
        let resp = self.send(t, scopes, &req).await?;
        if !resp.status().is_success() {
            return Err(http_error(&req.method, resp).await);
        }
        self.check_registry_digest(t, resp.headers(), &desc.digest, "manifest")
    }

    /// A registry that says which digest it stored must agree with ours.
    fn check_registry_digest(
        &self,
        t: &Target,
        headers: &HeaderMap,
        digest: &Digest,
        what: &str,
    ) -> Result<()> {
        match header_digest(headers) {
            Some(d) if d != *digest => Err(RegistryError::DigestMismatch {
                registry: t.registry.clone(),
                repository: t.repository.clone(),
                what: format!("{what} stored by the registry"),
                expected: digest.clone(),
                actual: d,
            }),
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_blob(
        &self,
        t: &Target,
        scopes: &[String],
        store: &Store,
        desc: &Descriptor,
        known: &KnownBlobs,
        label: String,
        reporter: &dyn Reporter,
    ) -> Result<BlobOutcome> {
        let id = desc.digest.short().to_string();
        reporter.event(Event::start(&id, label, Some(desc.size)));
        let head = Req::new(Method::HEAD, t.blob_url(&desc.digest));
        let resp = self.send(t, scopes, &head).await?;
        match resp.status() {
            StatusCode::OK => {
                reporter.event(Event::finish(&id, "exists"));
                return Ok(BlobOutcome::Existed);
            }
            StatusCode::NOT_FOUND => {}
            _ => return Err(http_error(&head.method, resp).await),
        }

        let mut session = None;
        if let Some(from) = known
            .sources(&t.registry, &desc.digest, &t.repository)
            .first()
        {
            let mut url = t.url("blobs/uploads/");
            url.query_pairs_mut()
                .append_pair("mount", &desc.digest.to_string())
                .append_pair("from", from);
            let mut mount_scopes = scopes.to_vec();
            mount_scopes.push(format!("repository:{from}:pull"));
            let req = Req::new(Method::POST, url).body(&[]);
            match self.send(t, &mount_scopes, &req).await {
                Ok(resp) if resp.status() == StatusCode::CREATED => {
                    reporter.event(Event::finish(&id, "mounted"));
                    return Ok(BlobOutcome::Mounted);
                }
                // The registry would not mount (the source lost the blob, or we may not read
                // it) and opened an ordinary upload instead.
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    session = Some(t.location(&resp, "POST (mount)")?);
                }
                // A mount is only an optimisation: any refusal falls back to uploading.
                Ok(_)
                | Err(RegistryError::Unauthorized { .. })
                | Err(RegistryError::Http { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let sent = self
            .upload(t, scopes, store, desc, session, &id, reporter)
            .await?;
        reporter.event(Event::finish(&id, "uploaded"));
        Ok(BlobOutcome::Uploaded(sent))
    }

    /// Opens an upload session: `POST …/blobs/uploads/` → its URL.
    async fn start_upload(&self, t: &Target, scopes: &[String]) -> Result<Url> {
        let req = Req::new(Method::POST, t.url("blobs/uploads/")).body(&[]);
        let resp = self.send(t, scopes, &req).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(http_error(&req.method, resp).await);
        }
        t.location(&resp, "POST blobs/uploads/")
    }

    /// Uploads a blob's bytes through `session` (or a new one) and commits it under its
    /// digest. Returns the bytes sent.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        t: &Target,
        scopes: &[String],
        store: &Store,
        desc: &Descriptor,
        session: Option<Url>,
        id: &str,
        reporter: &dyn Reporter,
    ) -> Result<u64> {
        let mut location = match session {
            Some(url) => url,
            None => self.start_upload(t, scopes).await?,
        };
        let size = desc.size;
        let chunk = self.opts.chunk_size as u64;
        let mut sent = 0u64;
        let mut failures = 0;

        if size <= chunk {
            // Small enough for one request: the whole blob with the closing PUT.
            let data = read_range(store, &desc.digest, 0, size).await?;
            loop {
                let req = Req::new(Method::PUT, with_digest(&location, &desc.digest))
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(&data);
                sent += size;
                match self.send(t, scopes, &req).await {
                    Ok(resp) if resp.status().is_success() => {
                        reporter.event(Event::advance(id, size));
                        self.check_registry_digest(t, resp.headers(), &desc.digest, "blob")?;
                        return Ok(sent);
                    }
                    Ok(resp) => return Err(http_error(&req.method, resp).await),
                    Err(RegistryError::Transport { .. }) if failures < MAX_RETRIES => {
                        failures += 1;
                        reporter.event(Event::note(format!(
                            "upload of {} broke; starting it again",
                            desc.digest
                        )));
                        location = self.start_upload(t, scopes).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        let mut offset = 0u64;
        while offset < size {
            let n = chunk.min(size - offset);
            let data = read_range(store, &desc.digest, offset, n).await?;
            let req = Req::new(Method::PATCH, location.clone())
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(
                    header::CONTENT_RANGE,
                    format!("{offset}-{}", offset + n - 1),
                )
                .body(&data);
            sent += n;
            match self.send(t, scopes, &req).await {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    location = t.location(&resp, "PATCH")?;
                    // The registry says what it holds; trust it over our arithmetic.
                    offset = committed_end(resp.headers()).unwrap_or(offset + n);
                    failures = 0;
                    reporter.event(Event::advance(id, offset));
                }
                // The registry's idea of the offset differs from ours: ask it.
                Ok(resp)
                    if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE
                        && failures < MAX_RETRIES =>
                {
                    failures += 1;
                    (location, offset, _) = self.resume_point(t, scopes, &location).await?;
                }
                // The registry gave up the session (distribution cancels an upload that a
                // broken chunk left half-written): start a new one.
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND && failures < MAX_RETRIES => {
                    failures += 1;
                    reporter.event(Event::note(format!(
                        "the registry dropped the upload of {}; starting it again",
                        desc.digest
                    )));
                    location = self.start_upload(t, scopes).await?;
                    offset = 0;
                }
                Ok(resp) => return Err(http_error(&req.method, resp).await),
                Err(RegistryError::Transport { .. }) if failures < MAX_RETRIES => {
                    failures += 1;
                    let restarted;
                    (location, offset, restarted) = self.resume_point(t, scopes, &location).await?;
                    reporter.event(Event::note(if restarted {
                        format!(
                            "upload of {} broke and the registry dropped it; starting it again",
                            desc.digest
                        )
                    } else {
                        format!("upload of {} broke; resuming at byte {offset}", desc.digest)
                    }));
                }
                Err(e) => return Err(e),
            }
            if offset > size {
                return Err(t.protocol(format!(
                    "upload of {} claims {offset} bytes of {size}",
                    desc.digest
                )));
            }
        }
        let req = Req::new(Method::PUT, with_digest(&location, &desc.digest))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(&[]);
        let resp = self.send(t, scopes, &req).await?;
        if !resp.status().is_success() {
            return Err(http_error(&req.method, resp).await);
        }
        self.check_registry_digest(t, resp.headers(), &desc.digest, "blob")?;
        Ok(sent)
    }

    /// Where to go on with an upload after a broken chunk: the session's URL and how many
    /// bytes the registry kept (`GET` on the session answers `Range: 0-<last>`), or a fresh
    /// session from byte 0 if the registry no longer has ours (then the flag is true).
    async fn resume_point(
        &self,
        t: &Target,
        scopes: &[String],
        location: &Url,
    ) -> Result<(Url, u64, bool)> {
        let req = Req::new(Method::GET, location.clone());
        if let Ok(resp) = self.send(t, scopes, &req).await
            && (resp.status() == StatusCode::NO_CONTENT || resp.status() == StatusCode::OK)
        {
            let url = match resp.headers().get(header::LOCATION) {
                Some(_) => t.location(&resp, "GET upload status")?,
                None => location.clone(),
            };
            return Ok((url, committed_end(resp.headers()).unwrap_or(0), false));
        }
        Ok((self.start_upload(t, scopes).await?, 0, true))
    }
}

/// The upload URL with `digest=` added (it may already carry a query, e.g. `_state=`).
fn with_digest(location: &Url, digest: &Digest) -> Url {
    let mut url = location.clone();
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    url
}

/// Bytes an upload holds, from `Range: 0-<last>`. distribution answers `0-0` for an empty
/// upload as for a one-byte one; an empty one is the likely case.
fn committed_end(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let v = v.trim().strip_prefix("bytes=").unwrap_or(v.trim());
    let (start, end) = v.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    if start != 0 {
        return None;
    }
    Some(if end == 0 { 0 } else { end + 1 })
}

/// Reads `len` bytes of a stored blob from `offset`.
async fn read_range(store: &Store, digest: &Digest, offset: u64, len: u64) -> Result<Vec<u8>> {
    let path = store.blob_path(digest);
    let io_err = |action: &'static str, source: std::io::Error| {
        RegistryError::Store(StoreError::Io(PathError {
            action,
            path: path.clone(),
            source,
        }))
    };
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| io_err("open", e))?;
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| io_err("seek", e))?;
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf)
        .await
        .map_err(|e| io_err("read", e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn reads_upload_ranges() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(committed_end(&h("0-1023")), Some(1024));
        assert_eq!(committed_end(&h("bytes=0-9")), Some(10));
        assert_eq!(committed_end(&h("0-0")), Some(0));
        assert_eq!(committed_end(&h("5-9")), None);
        assert_eq!(committed_end(&h("junk")), None);
        assert_eq!(committed_end(&HeaderMap::new()), None);
        let u = Url::parse("http://h/v2/a/blobs/uploads/x?_state=abc").unwrap();
        let d = Digest::of(b"");
        assert_eq!(
            with_digest(&u, &d).as_str(),
            format!(
                "http://h/v2/a/blobs/uploads/x?_state=abc&digest=sha256%3A{}",
                d.hex()
            )
        );
    }
}
