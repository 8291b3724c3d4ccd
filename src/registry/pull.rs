//! `pull`: registry → store. The manifest (or index, and the children we keep) is fetched and
//! verified first, then config and layer blobs the store lacks stream into verified store
//! commits, a few at a time; the name is set last, so a failed pull leaves no name pointing at
//! an incomplete image (just unreferenced blobs that `prune` collects).

use std::io::Write as _;

use futures_util::{StreamExt as _, stream};
use reqwest::header;
use reqwest::{Method, StatusCode};

use super::error::{RegistryError, Result};
use super::known;
use super::{Client, PullReport, Req, Target, http_error};
use crate::oci::json::canonical;
use crate::oci::{Descriptor, Digest, Document, ImageConfig, Index, Manifest, Platform, Reference};
use crate::progress::{Event, Reporter};
use crate::store::{MAX_CONFIG_BYTES, Store, StoreError};
use crate::util::fs::{PathContext, PathError};

/// How often a broken download is resumed (with a `Range` request) before giving up.
const MAX_RESUMES: u32 = 3;
/// Indexes of indexes exist (attestations, nested lists); deeper nesting is refused.
const MAX_INDEX_DEPTH: u32 = 4;
/// Progress is reported at most every this many bytes per blob.
const PROGRESS_STEP: u64 = 256 << 10;

/// Manifests fetched so far (stored after their blobs) and the images whose blobs we need.
#[derive(Default)]
struct Fetched {
    /// Children before parents, so each is stored before anything that refers to it.
    documents: Vec<(Digest, Vec<u8>)>,
    images: Vec<Manifest>,
}

/// The images' blobs, each once, with a progress label: configs first (they are small and say
/// what the image is), then layers. Also returns the set of their digests.
fn unique_blobs(
    images: &[Manifest],
) -> (
    Vec<(Descriptor, String)>,
    std::collections::BTreeSet<Digest>,
) {
    let mut blobs: Vec<(Descriptor, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let layer_count: usize = images.iter().map(|m| m.layers.len()).sum();
    let mut layer_no = 0;
    for m in images {
        if seen.insert(m.config.digest.clone()) {
            blobs.push((m.config.clone(), "config".to_string()));
        }
    }
    for m in images {
        for l in &m.layers {
            layer_no += 1;
            if seen.insert(l.digest.clone()) {
                blobs.push((l.clone(), format!("layer {layer_no}/{layer_count}")));
            }
        }
    }
    (blobs, seen)
}

impl Client {
    /// Pulls `reference` into `store` and names it `reference` there.
    ///
    /// `platforms`: `None` keeps a multi-platform index whole (every child manifest and its
    /// blobs); one platform stores just that platform's manifest under the name; several store
    /// a new index (same media type as the registry's) listing just those. A single-platform
    /// image must match every platform asked for. Blobs already in the store are not
    /// downloaded.
    ///
    /// A `docker.io` name is tried on each of [`ClientOptions::mirrors`] first
    /// (`super::ClientOptions`), then on Docker Hub, as Docker does; a mirror that fails is a
    /// note on `reporter`.
    pub async fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        platforms: Option<&[Platform]>,
        reporter: &dyn Reporter,
    ) -> Result<PullReport> {
        if reference.registry() == crate::oci::reference::DOCKER_HUB {
            for m in &self.opts.mirrors {
                let t = self.mirror_target(reference, m);
                match self
                    .pull_from(t, store, reference, platforms, reporter)
                    .await
                {
                    Ok(r) => return Ok(r),
                    Err(e) => reporter.event(Event::note(format!(
                        "the Docker Hub mirror {m} failed ({}); trying the next, then Docker Hub",
                        crate::util::error_chain(&e)
                    ))),
                }
            }
        }
        self.pull_from(
            self.target(reference),
            store,
            reference,
            platforms,
            reporter,
        )
        .await
    }

    /// [`Client::pull`] from the registry (or mirror) `t`.
    async fn pull_from(
        &self,
        t: Target,
        store: &Store,
        reference: &Reference,
        platforms: Option<&[Platform]>,
        reporter: &dyn Reporter,
    ) -> Result<PullReport> {
        let scopes = vec![t.scope(false)];
        let full_name = reference.to_string();
        let (source, bytes, doc) = self
            .fetch_manifest(
                &t,
                &scopes,
                &reference.manifest_ref(),
                reference.digest(),
                None,
                &full_name,
            )
            .await?;
        let mut fetched = Fetched::default();
        let mut check_config_platforms: Option<&[Platform]> = None;
        let mut synthetic: Option<Digest> = None;
        let top = match (doc, platforms) {
            (Document::Manifest(m), wanted) => {
                check_config_platforms = wanted;
                fetched.images.push(*m);
                fetched.documents.push((source.digest.clone(), bytes));
                source.clone()
            }
            (Document::Index(index), None) => {
                for child in &index.manifests {
                    self.fetch_child(&t, &scopes, child, &full_name, &mut fetched, 1)
                        .await?;
                }
                fetched.documents.push((source.digest.clone(), bytes));
                source.clone()
            }
            (Document::Index(index), Some(wanted)) => {
                let picked = pick_platforms(&index, wanted, &full_name)?;
                for child in &picked {
                    self.fetch_child(&t, &scopes, child, &full_name, &mut fetched, 1)
                        .await?;
                }
                if let [only] = picked.as_slice() {
                    only.clone()
                } else {
                    // A subset is a new image: an index of the same kind listing just those.
                    let subset = Index {
                        media_type: Some(source.media_type.clone()),
                        manifests: picked,
                        ..Index::new()
                    };
                    let bytes = canonical(&subset);
                    let digest = Digest::of(&bytes);
                    let desc =
                        Descriptor::new(&source.media_type, digest.clone(), bytes.len() as u64);
                    fetched.documents.push((digest.clone(), bytes));
                    synthetic = Some(digest);
                    desc
                }
            }
        };

        let (mut blobs, seen) = unique_blobs(&fetched.images);

        let mut report = PullReport {
            name: reference.clone(),
            descriptor: top.clone(),
            source: source.clone(),
            blobs_fetched: 0,
            blobs_present: 0,
            bytes_downloaded: 0,
        };
        let mut tally = |outcome: Option<u64>| match outcome {
            Some(n) => {
                report.blobs_fetched += 1;
                report.bytes_downloaded += n;
            }
            None => report.blobs_present += 1,
        };

        if let Some(wanted) = check_config_platforms {
            // A single-platform image: make sure it is the platform asked for before spending
            // bandwidth on its layers.
            let (config, label) = blobs.remove(0);
            tally(
                self.download_blob(&t, &scopes, store, &config, label, reporter)
                    .await?,
            );
            let bytes = store.read_blob(&config.digest, MAX_CONFIG_BYTES)?;
            let have = ImageConfig::parse(&format!("config {}", config.digest), &bytes)
                .map_err(|e| t.protocol(e.to_string()))?
                .platform();
            if let Some(missing) = wanted.iter().find(|p| !have.matches(p)) {
                return Err(RegistryError::NoSuchPlatform {
                    reference: full_name,
                    wanted: missing.to_string(),
                    available: have.to_string(),
                });
            }
        }

        let outcomes = self
            .download_all(&t, &scopes, store, &blobs, reporter)
            .await?;
        outcomes.into_iter().for_each(&mut tally);

        for (digest, bytes) in &fetched.documents {
            let stored = store.put_blob(bytes)?;
            debug_assert_eq!(&stored, digest);
        }
        // Everything but an index we made up is in the registry's repository now.
        let mut in_repository: Vec<Digest> = seen.into_iter().collect();
        in_repository.extend(
            fetched
                .documents
                .iter()
                .map(|(d, _)| d.clone())
                .filter(|d| Some(d) != synthetic.as_ref()),
        );
        if let Err(e) = known::remember(store, &t.registry, &t.repository, &in_repository) {
            reporter.event(Event::note(format!(
                "could not record where blobs came from (cross-repository mounts will not use them): {e}"
            )));
        }
        store.set_names(&[(reference.clone(), top)])?;
        Ok(report)
    }

    /// Fetches a child manifest (by digest, verified) and, for a nested index, its children.
    async fn fetch_child(
        &self,
        t: &Target,
        scopes: &[String],
        desc: &Descriptor,
        full_name: &str,
        fetched: &mut Fetched,
        depth: u32,
    ) -> Result<()> {
        if depth > MAX_INDEX_DEPTH {
            return Err(t.protocol(format!(
                "indexes nested more than {MAX_INDEX_DEPTH} deep (at {})",
                desc.digest
            )));
        }
        let (got, bytes, doc) = self
            .fetch_manifest(
                t,
                scopes,
                &desc.digest.to_string(),
                Some(&desc.digest),
                Some(&desc.media_type),
                &format!("{full_name} ({})", desc.digest),
            )
            .await?;
        if got.size != desc.size {
            return Err(RegistryError::SizeMismatch {
                registry: t.registry.clone(),
                repository: t.repository.clone(),
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: got.size,
            });
        }
        match doc {
            Document::Manifest(m) => fetched.images.push(*m),
            Document::Index(i) => {
                for child in &i.manifests {
                    Box::pin(self.fetch_child(t, scopes, child, full_name, fetched, depth + 1))
                        .await?;
                }
            }
        }
        fetched.documents.push((desc.digest.clone(), bytes));
        Ok(())
    }

    /// Downloads `blobs` ([`Client::download_blob`]), `concurrency` at a time. After a
    /// failure no new download starts, but those under way are waited for rather than
    /// dropped: a dropped one's commit goes on in its blocking task, so the pull would return
    /// while a blob is still being written to the store. Returns the first failure, in the
    /// order they happened.
    async fn download_all(
        &self,
        t: &Target,
        scopes: &[String],
        store: &Store,
        blobs: &[(Descriptor, String)],
        reporter: &dyn Reporter,
    ) -> Result<Vec<Option<u64>>> {
        let failed = std::sync::atomic::AtomicBool::new(false);
        // Futures collected first: a stream over a borrowing closure makes this future
        // !Send (rust-lang/rust#102211), and callers spawn pulls.
        let downloads: Vec<_> = blobs
            .iter()
            .map(|(d, label)| {
                let failed = &failed;
                let download = self.download_blob(t, scopes, store, d, label.clone(), reporter);
                async move {
                    if failed.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(None);
                    }
                    let r = download.await;
                    if r.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    r
                }
            })
            .collect();
        let results: Vec<Result<Option<u64>>> = stream::iter(downloads)
            .buffer_unordered(self.opts.concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Downloads one blob into the store unless it is there. `Some(bytes)` when downloaded,
    /// `None` when already present. The bytes stream into a store writer and are published
    /// only if they hash to the descriptor's digest and have its size.
    async fn download_blob(
        &self,
        t: &Target,
        scopes: &[String],
        store: &Store,
        desc: &Descriptor,
        label: String,
        reporter: &dyn Reporter,
    ) -> Result<Option<u64>> {
        let id = desc.digest.short().to_string();
        reporter.event(Event::start(&id, label, Some(desc.size)));
        if store.has_blob(&desc.digest) {
            reporter.event(Event::finish(&id, "exists"));
            return Ok(None);
        }
        let url = t.blob_url(&desc.digest);
        let mut writer = store.writer()?;
        let mut resumes = 0;
        let mut reported = 0;
        'request: loop {
            let offset = writer.written();
            let mut req = Req::new(Method::GET, url.clone());
            if offset > 0 {
                req = req.header(header::RANGE, format!("bytes={offset}-"));
            }
            let mut resp = match self.send(t, scopes, &req).await {
                Ok(r) => r,
                Err(RegistryError::Transport { .. }) if resumes < MAX_RESUMES => {
                    resumes += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match resp.status() {
                StatusCode::OK if offset > 0 => {
                    // The registry (or its storage) ignored the Range: start over.
                    writer = store.writer()?;
                }
                StatusCode::OK => {}
                StatusCode::PARTIAL_CONTENT if offset > 0 => {
                    let starts_at = resp
                        .headers()
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if starts_at != Some(offset) {
                        writer = store.writer()?;
                        resumes += 1;
                        if resumes > MAX_RESUMES {
                            return Err(t.protocol(format!(
                                "blob {} download could not be resumed (bad Content-Range)",
                                desc.digest
                            )));
                        }
                        continue;
                    }
                }
                _ => return Err(http_error(&req.method, resp).await),
            }
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        let done = writer.written() + chunk.len() as u64;
                        if done > desc.size {
                            // Stop at the first byte too many: a registry cannot fill the disk.
                            return Err(RegistryError::SizeMismatch {
                                registry: t.registry.clone(),
                                repository: t.repository.clone(),
                                digest: desc.digest.clone(),
                                expected: desc.size,
                                actual: done,
                            });
                        }
                        let tmp = writer.temp_path().to_path_buf();
                        writer
                            .write_all(&chunk)
                            .at("write", &tmp)
                            .map_err(StoreError::from)?;
                        if done - reported >= PROGRESS_STEP || done == desc.size {
                            reported = done;
                            reporter.event(Event::advance(&id, done));
                        }
                    }
                    Ok(None) => break 'request,
                    Err(e) => {
                        resumes += 1;
                        if resumes > MAX_RESUMES {
                            return Err(RegistryError::Transport {
                                registry: t.registry.clone(),
                                url: url.to_string(),
                                message: crate::util::error_chain(&e),
                                hint: None,
                            });
                        }
                        reporter.event(Event::note(format!(
                            "download of {} broke after {} bytes; resuming",
                            desc.digest,
                            writer.written()
                        )));
                        continue 'request;
                    }
                }
            }
        }
        // Verify and publish off the async workers: the commit fsyncs.
        let tmp = writer.temp_path().to_path_buf();
        let (digest, size) = (desc.digest.clone(), desc.size);
        let committed = tokio::task::spawn_blocking(move || writer.commit(Some((&digest, size))))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io(PathError {
                    action: "commit",
                    path: tmp,
                    source: std::io::Error::other(e.to_string()),
                }))
            });
        match committed {
            Ok(_) => {}
            Err(StoreError::DigestMismatch { expected, actual }) => {
                return Err(RegistryError::DigestMismatch {
                    registry: t.registry.clone(),
                    repository: t.repository.clone(),
                    what: "blob".to_string(),
                    expected,
                    actual,
                });
            }
            Err(StoreError::SizeMismatch {
                digest,
                expected,
                actual,
            }) => {
                return Err(RegistryError::SizeMismatch {
                    registry: t.registry.clone(),
                    repository: t.repository.clone(),
                    digest,
                    expected,
                    actual,
                });
            }
            Err(e) => return Err(e.into()),
        }
        reporter.event(Event::finish(&id, "done"));
        Ok(Some(desc.size))
    }
}

/// The index entries serving `wanted`, in the order asked, without duplicates.
fn pick_platforms(index: &Index, wanted: &[Platform], image: &str) -> Result<Vec<Descriptor>> {
    let mut picked: Vec<Descriptor> = Vec::new();
    for p in wanted {
        let found = index
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|mp| mp.matches(p)))
            .ok_or_else(|| RegistryError::NoSuchPlatform {
                reference: image.to_string(),
                wanted: p.to_string(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if !picked.iter().any(|d| d.digest == found.digest) {
            picked.push(found.clone());
        }
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    #[test]
    fn picks_platforms_and_lists_the_others() {
        let entry = |p: Platform, b: &[u8]| Descriptor {
            platform: Some(p),
            ..Descriptor::new(media::OCI_MANIFEST, Digest::of(b), 1)
        };
        let index = Index {
            manifests: vec![
                entry(Platform::amd64(), b"a"),
                entry(Platform::linux("arm", None), b"b"),
                entry(
                    Platform {
                        os: "unknown".into(),
                        ..Platform::linux("unknown", None)
                    },
                    b"att",
                ),
            ],
            ..Index::new()
        };
        let got = pick_platforms(&index, &[Platform::armhf(), Platform::armhf()], "x").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].digest, Digest::of(b"b"));
        let e = pick_platforms(&index, &[Platform::arm64()], "x").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("has no linux/arm64 variant (it has: linux/amd64, linux/arm/v7)"),
            "{e}"
        );
    }
}
