//! An OCI distribution registry client: pull images into the store, push them out of it.
//!
//! Our own client on `reqwest` rather than a crate's, because deployment cost is counted in
//! requests and bytes: we decide exactly when a blob is checked (`HEAD`), mounted from another
//! repository, uploaded in one request or in resumable chunks, and every manifest is kept byte
//! for byte in our own types.
//!
//! Owns: the HTTP conversation (scheme choice, the 401 → challenge → credentials/token → retry
//! dance, token caching), digest verification of everything downloaded, and the record of
//! which repositories hold which blobs (`registry-blobs.json` in the store, for
//! cross-repository mounts). Does not own: names and blobs on disk (that is [`crate::store`]),
//! rendering progress (it emits [`Event`](crate::progress::Event)s), or printing.
//!
//! Nothing downloaded is trusted: manifests are hashed before they are parsed, blobs stream
//! into [`Store::writer`](crate::store::Store::writer) and are published only by a commit that
//! verifies digest and size.

mod auth;
mod error;
mod known;
mod pull;
mod push;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::sync::OnceCell;

use crate::oci::{Descriptor, Digest, Document, Reference, media};

use auth::{Challenge, Lookup};
pub use error::{RegistryError, Result};

/// Blobs up to this size go up in one request; larger ones in chunks of this size.
pub const DEFAULT_CHUNK_SIZE: usize = 8 << 20;
/// Blobs moved at once: enough to fill a link, few enough not to starve one another.
pub const DEFAULT_CONCURRENCY: usize = 3;
/// The `Accept` header of manifest requests: every manifest and index type we understand.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
/// How much of an error body to keep for a message.
const BODY_EXCERPT_BYTES: usize = 512;

/// How to build a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Lab registries: talk plain HTTP to every registry, and do not verify TLS certificates
    /// where HTTPS is still used (token services, blob storage redirects).
    pub insecure: bool,
    /// Docker's config file for credentials; `None` means `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Upload chunk size in bytes; blobs no larger go up in a single request. Default 8 MiB.
    pub chunk_size: usize,
    /// How many blobs are transferred at once. Default 3.
    pub concurrency: usize,
    /// Host names resolved to fixed addresses, like `curl --resolve` (labs without DNS).
    pub resolve: Vec<(String, SocketAddr)>,
    /// Mirrors of Docker Hub, as Docker's `registry-mirrors` (`https://mirror.lab:5000`;
    /// `http://` for a plain-HTTP one): a pull of a `docker.io` name tries each in turn, then
    /// Docker Hub itself. They get Docker Hub's credentials, as Docker's mirrors do.
    pub mirrors: Vec<Url>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            docker_config: None,
            user_agent: format!("dts/{}", env!("CARGO_PKG_VERSION")),
            chunk_size: DEFAULT_CHUNK_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            resolve: Vec::new(),
            mirrors: Vec::new(),
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq)]
pub struct PullReport {
    /// The name the image now has in the store (the reference as given).
    pub name: Reference,
    /// What the name points at: the registry's manifest or index, the one platform's manifest,
    /// or a new index holding just the platforms asked for.
    pub descriptor: Descriptor,
    /// The manifest or index the registry served for the reference.
    pub source: Descriptor,
    /// Config and layer blobs downloaded.
    pub blobs_fetched: usize,
    /// Config and layer blobs the store already had.
    pub blobs_present: usize,
    /// Bytes of config and layer blobs downloaded.
    pub bytes_downloaded: u64,
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Config and layer blobs whose bytes were uploaded.
    pub blobs_uploaded: usize,
    /// Config and layer blobs the repository already had.
    pub blobs_existing: usize,
    /// Config and layer blobs mounted from another repository of the same registry.
    pub blobs_mounted: usize,
    /// Blob bytes uploaded (including any sent again after a broken connection).
    pub bytes_uploaded: u64,
    /// Manifests and indexes uploaded (ones the repository already had are not).
    pub manifests_pushed: usize,
}

/// A registry client. Cheap to share by reference; it caches credentials and tokens per
/// registry for its lifetime, so one client should serve one command.
pub struct Client {
    http: reqwest::Client,
    opts: ClientOptions,
    docker_config: PathBuf,
    /// registry → the challenge it answered last (None until the first 401).
    schemes: Mutex<HashMap<String, Challenge>>,
    /// registry → credentials, looked up once, on the first 401.
    credentials: Mutex<HashMap<String, Arc<OnceCell<Lookup>>>>,
    /// (registry, scopes) → bearer token, behind an async lock held while it is fetched.
    tokens: Mutex<HashMap<(String, String), TokenSlot>>,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<String>>>;

/// One repository on one registry, and how to reach it.
pub(crate) struct Target {
    /// The registry as references name it (`docker.io`, `127.0.0.1:5000`), or a mirror's
    /// host: the key for challenges, tokens and the blob record.
    registry: String,
    /// Whose credentials it gets: the registry's own, Docker Hub's for its mirrors.
    auth: String,
    repository: String,
    /// `scheme://api-host/`.
    base: Url,
}

impl Target {
    fn url(&self, path: &str) -> Url {
        self.base
            .join(&format!("v2/{}/{path}", self.repository))
            .expect("repository names and digests are valid URL path segments")
    }

    fn blob_url(&self, digest: &Digest) -> Url {
        self.url(&format!("blobs/{digest}"))
    }

    fn manifest_url(&self, reference: &str) -> Url {
        self.url(&format!("manifests/{reference}"))
    }

    /// Resolves a `Location` header (absolute, or relative to the registry) to a URL.
    fn location(&self, resp: &Response, what: &str) -> Result<Url> {
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.protocol(format!("{what} answered without a Location header")))?;
        resp.url()
            .join(loc)
            .map_err(|e| self.protocol(format!("{what} answered a bad Location `{loc}`: {e}")))
    }

    fn protocol(&self, reason: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            reason,
        }
    }

    fn scope(&self, push: bool) -> String {
        let actions = if push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", self.repository)
    }
}

/// One request, rebuilt for each attempt (a 401 costs a retry).
pub(crate) struct Req<'a> {
    method: Method,
    url: Url,
    headers: Vec<(HeaderName, String)>,
    body: Option<&'a [u8]>,
}

impl<'a> Req<'a> {
    fn new(method: Method, url: Url) -> Req<'a> {
        Req {
            method,
            url,
            headers: Vec::new(),
            body: None,
        }
    }

    fn header(mut self, name: HeaderName, value: impl Into<String>) -> Req<'a> {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: &'a [u8]) -> Req<'a> {
        self.body = Some(body);
        self
    }
}

impl Client {
    /// Builds a client. Installs rustls' ring provider for the process if none is installed.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        // reqwest is built without a default crypto provider; rustls needs one per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(Duration::from_secs(30))
            // Per read, not per request: a layer may take minutes, a stalled socket may not.
            .read_timeout(Duration::from_secs(120))
            .tls_danger_accept_invalid_certs(opts.insecure);
        for (host, addr) in &opts.resolve {
            builder = builder.resolve(host, *addr);
        }
        let http = builder.build().map_err(|e| RegistryError::Setup {
            reason: crate::util::error_chain(&e),
        })?;
        let docker_config = opts
            .docker_config
            .clone()
            .unwrap_or_else(auth::default_docker_config);
        Ok(Client {
            http,
            opts: ClientOptions {
                chunk_size: opts.chunk_size.max(1),
                concurrency: opts.concurrency.max(1),
                ..opts
            },
            docker_config,
            schemes: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Where `reference`'s repository is: plain HTTP for `--insecure` and for loopback hosts
    /// (as Docker does for localhost), HTTPS otherwise.
    pub(crate) fn target(&self, reference: &Reference) -> Target {
        let host = reference.api_host();
        let scheme = if self.opts.insecure || is_loopback(host) {
            "http"
        } else {
            "https"
        };
        Target {
            registry: reference.registry().to_string(),
            auth: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            base: Url::parse(&format!("{scheme}://{host}/"))
                .expect("reference hosts are valid URL hosts"),
        }
    }

    /// `reference`'s repository (a `docker.io` one) on the Docker Hub mirror at `mirror`,
    /// with Docker Hub's credentials.
    pub(crate) fn mirror_target(&self, reference: &Reference, mirror: &Url) -> Target {
        let host = match (mirror.host_str(), mirror.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => mirror.as_str().to_string(),
        };
        let mut base = mirror.clone();
        base.set_path("/");
        base.set_query(None);
        Target {
            registry: host,
            auth: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            base,
        }
    }

    /// Sends `req`, answering one 401 with credentials or a token and trying again. Returns
    /// any other response as is (callers judge statuses); a second 401, or a 403, is
    /// [`RegistryError::Unauthorized`].
    pub(crate) async fn send(
        &self,
        t: &Target,
        scopes: &[String],
        req: &Req<'_>,
    ) -> Result<Response> {
        // Tokens are cached under the scopes the caller asks for, and asked for with whatever
        // more the registry's challenge names (a mount needs pull on its source repository).
        let mut wanted = scopes.to_vec();
        let mut refused: Option<String> = None;
        loop {
            let (authorization, sent_credentials) = self
                .authorization(t, scopes, &wanted, refused.as_deref())
                .await?;
            let mut rb = self.http.request(req.method.clone(), req.url.clone());
            for (name, value) in &req.headers {
                rb = rb.header(name, value);
            }
            if let Some(a) = &authorization {
                rb = rb.header(header::AUTHORIZATION, sensitive(t, a)?);
            }
            if let Some(body) = req.body {
                rb = rb.body(body.to_vec());
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| self.transport(t, &req.url, &e))?;
            match resp.status() {
                StatusCode::UNAUTHORIZED => {}
                StatusCode::FORBIDDEN => {
                    let body = body_excerpt(resp).await;
                    return Err(RegistryError::Unauthorized {
                        registry: t.registry.clone(),
                        repository: t.repository.clone(),
                        rejected: false,
                        detail: format!("access denied ({} {}): {body}", req.method, req.url),
                    });
                }
                _ => return Ok(resp),
            }
            let challenge = pick_challenge(resp.headers());
            let Some(challenge) = challenge.filter(|_| refused.is_none()) else {
                // Refused twice, or refused without saying how to authenticate.
                let body = body_excerpt(resp).await;
                return Err(self.unauthorized(t, sent_credentials, &body).await);
            };
            if let Challenge::Bearer {
                scope: Some(scope), ..
            } = &challenge
            {
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    if !wanted.iter().any(|have| scope_covers(have, s)) {
                        wanted.push(s.to_string());
                    }
                }
            }
            lock(&self.schemes).insert(t.registry.clone(), challenge);
            refused = Some(authorization.unwrap_or_default());
        }
    }

    /// The `Authorization` header for a request, per the registry's last challenge, and
    /// whether it carries the user's credentials themselves (Basic). A bearer token does not:
    /// the token service already accepted the credentials, so a registry refusing the token
    /// means they lack access, not that they are wrong. `refused` is the header the registry
    /// just turned down: a cached token equal to it is fetched again.
    async fn authorization(
        &self,
        t: &Target,
        key: &[String],
        wanted: &[String],
        refused: Option<&str>,
    ) -> Result<(Option<String>, bool)> {
        let scheme = lock(&self.schemes).get(&t.registry).cloned();
        match scheme {
            None => Ok((None, false)),
            Some(Challenge::Basic) => {
                let lookup = self.lookup(&t.auth).await;
                match &lookup.credentials {
                    Some(c) => Ok((Some(c.basic_header()), true)),
                    None => Err(self.unauthorized(t, false, "").await),
                }
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                let slot = lock(&self.tokens)
                    .entry((t.registry.clone(), key.join(" ")))
                    .or_default()
                    .clone();
                // One fetch per scope: concurrent requests wait for it instead of each
                // asking the token service.
                let mut cached = slot.lock().await;
                if let Some(token) = cached.as_ref() {
                    let header = format!("Bearer {token}");
                    if refused != Some(header.as_str()) {
                        return Ok((Some(header), false));
                    }
                }
                let token = self
                    .fetch_token(t, &realm, service.as_deref(), wanted)
                    .await?;
                *cached = Some(token.clone());
                Ok((Some(format!("Bearer {token}")), false))
            }
        }
    }

    /// Asks a token service for a bearer token for `scopes`, with the user's credentials if
    /// there are any (anonymous tokens serve public repositories).
    async fn fetch_token(
        &self,
        t: &Target,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<String> {
        let mut url = Url::parse(realm).map_err(|e| {
            t.protocol(format!(
                "the registry's token realm `{realm}` is not a URL: {e}"
            ))
        })?;
        let lookup = self.lookup(&t.auth).await;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
            if let Some(c) = &lookup.credentials {
                q.append_pair("account", &c.user);
            }
        }
        let mut rb = self.http.get(url.clone());
        if let Some(c) = &lookup.credentials {
            rb = rb.header(header::AUTHORIZATION, sensitive(t, &c.basic_header())?);
        }
        let resp = rb.send().await.map_err(|e| self.transport(t, &url, &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let body = body_excerpt(resp).await;
            return Err(match &lookup.credentials {
                Some(c) => RegistryError::Unauthorized {
                    registry: t.registry.clone(),
                    repository: t.repository.clone(),
                    rejected: true,
                    detail: format!(
                        "credentials rejected: the token service {realm} refused user `{}` (from {}): {body}",
                        c.user, c.source
                    ),
                },
                None => self.unauthorized(t, false, &body).await,
            });
        }
        if !status.is_success() {
            return Err(http_error(&Method::GET, resp).await);
        }
        let body = read_limited_body(t, resp, 1 << 20, "token response").await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| t.protocol(format!("the token service {realm} answered bad JSON: {e}")))?;
        let token = ["token", "access_token"]
            .iter()
            .find_map(|k| v.get(k).and_then(|t| t.as_str()).filter(|t| !t.is_empty()))
            .ok_or_else(|| t.protocol(format!("the token service {realm} answered no token")))?;
        Ok(token.to_string())
    }

    /// The `Authorization` header a robot sends to pull `repositories` from `registry` (a
    /// `host[:port]`; `deploy --via`), made for this deploy and never the laptop's own
    /// credentials: `None` when the registry serves anonymously; for a token registry, a
    /// bearer token scoped `repository:<name>:pull` for each repository, from its token
    /// service with this laptop's credentials; for a Basic-auth registry, `robot_user` (a
    /// read-only user given for robots), and an error naming the flag when there is none.
    pub async fn robot_authorization(
        &self,
        registry: &str,
        repositories: &[String],
        robot_user: Option<(&str, &str)>,
    ) -> Result<Option<String>> {
        let Some(first) = repositories.first() else {
            return Ok(None);
        };
        let reference =
            Reference::parse(&format!("{registry}/{first}")).map_err(|e| RegistryError::Setup {
                reason: format!("`{registry}/{first}`: {e}"),
            })?;
        let t = self.target(&reference);
        let url = t.base.join("v2/").expect("`v2/` is a valid relative URL");
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| self.transport(&t, &url, &e))?;
        let basic = || {
            robot_user.map(|(u, p)| {
                use base64::Engine as _;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            })
        };
        match resp.status() {
            StatusCode::UNAUTHORIZED => {}
            s if s.is_success() => return Ok(basic()),
            _ => return Err(http_error(&Method::GET, resp).await),
        }
        match pick_challenge(resp.headers()) {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let scopes: Vec<String> = repositories
                    .iter()
                    .map(|r| format!("repository:{r}:pull"))
                    .collect();
                let token = self
                    .fetch_token(&t, &realm, service.as_deref(), &scopes)
                    .await?;
                Ok(Some(format!("Bearer {token}")))
            }
            Some(Challenge::Basic) => {
                basic()
                    .map(Some)
                    .ok_or_else(|| RegistryError::Unauthorized {
                        registry: t.registry.clone(),
                        repository: t.repository.clone(),
                        rejected: false,
                        detail: "the hub uses Basic auth and robots get no credentials of this \
                        laptop: give them a read-only user with --hub-user USER (its password \
                        in DTS_HUB_PASSWORD, or --hub-password-stdin)"
                            .into(),
                    })
            }
            None => Err(RegistryError::Unauthorized {
                registry: t.registry.clone(),
                repository: t.repository.clone(),
                rejected: false,
                detail: "the hub answered 401 without saying how to authenticate".into(),
            }),
        }
    }

    /// The registry's credentials, looked up once per client.
    async fn lookup(&self, registry: &str) -> Lookup {
        let cell = lock(&self.credentials)
            .entry(registry.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| auth::lookup(&self.docker_config, registry))
            .await
            .clone()
    }

    /// The error for a refused request: credentials rejected, or none to offer.
    async fn unauthorized(&self, t: &Target, sent_credentials: bool, body: &str) -> RegistryError {
        let lookup = self.lookup(&t.auth).await;
        let said = if body.is_empty() {
            String::new()
        } else {
            format!(" (registry said: {body})")
        };
        let (rejected, detail) = match (&lookup.credentials, sent_credentials) {
            (Some(c), true) => (
                true,
                format!(
                    "credentials rejected for user `{}` (from {}){said}; check them with `docker login {}`",
                    c.user, c.source, t.registry
                ),
            ),
            (Some(c), false) => (
                false,
                format!(
                    "the credentials of `{}` (from {}) do not grant access{said}",
                    c.user, c.source
                ),
            ),
            (None, _) => {
                let notes = if lookup.notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", lookup.notes.join("; "))
                };
                (
                    false,
                    format!(
                        "the registry wants credentials and none were found for {} in {}{notes}{said}; \
                         log in with `docker login {}` (or the repository does not exist)",
                        t.registry,
                        self.docker_config.display(),
                        t.registry
                    ),
                )
            }
        };
        RegistryError::Unauthorized {
            registry: t.registry.clone(),
            repository: t.repository.clone(),
            rejected,
            detail,
        }
    }

    fn transport(&self, t: &Target, url: &Url, e: &reqwest::Error) -> RegistryError {
        let message = crate::util::error_chain(e);
        let lower = message.to_ascii_lowercase();
        let hint = if url.scheme() == "https"
            && !self.opts.insecure
            && (lower.contains("invalidcontenttype")
                || lower.contains("corrupt message")
                || lower.contains("wrong version number")
                || lower.contains("http request to an https server")
                || lower.contains("invalid tls"))
        {
            Some(format!(
                "{} does not seem to speak HTTPS; if it is a plain-HTTP lab registry, use --insecure",
                t.registry
            ))
        } else {
            None
        };
        RegistryError::Transport {
            registry: t.registry.clone(),
            url: url.to_string(),
            message,
            hint,
        }
    }

    /// `GET`s a manifest or index (by tag or digest) and verifies it: against `expected` when
    /// the caller knows its digest, and against the registry's `Docker-Content-Digest`.
    /// Returns its descriptor (media type from the document, else the response), its bytes
    /// and the parsed document.
    pub(crate) async fn fetch_manifest(
        &self,
        t: &Target,
        scopes: &[String],
        reference: &str,
        expected: Option<&Digest>,
        declared: Option<&str>,
        full_name: &str,
    ) -> Result<(Descriptor, Vec<u8>, Document)> {
        let url = t.manifest_url(reference);
        let req = Req::new(Method::GET, url).header(header::ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(t, scopes, &req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                reference: full_name.to_string(),
            });
        }
        if !resp.status().is_success() {
            return Err(http_error(&req.method, resp).await);
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        let claimed = header_digest(resp.headers());
        let bytes = read_limited_body(
            t,
            resp,
            crate::store::MAX_MANIFEST_BYTES,
            &format!("manifest {reference}"),
        )
        .await?;
        let digest = Digest::of(&bytes);
        let what = || format!("manifest `{reference}`");
        for want in [expected, claimed.as_ref()].into_iter().flatten() {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: t.registry.clone(),
                    repository: t.repository.clone(),
                    what: what(),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        let served = content_type
            .as_deref()
            .filter(|m| media::is_manifest(m) || media::is_index(m));
        let doc = Document::parse(
            &format!("manifest {digest} from {}/{}", t.registry, t.repository),
            declared.or(served),
            &bytes,
        )
        .map_err(|e| t.protocol(e.to_string()))?;
        let own: Option<String> = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            });
        let media_type = own
            .or_else(|| declared.map(str::to_string))
            .or_else(|| served.map(str::to_string))
            .unwrap_or_else(|| match doc {
                Document::Index(_) => media::OCI_INDEX.to_string(),
                Document::Manifest(_) => media::OCI_MANIFEST.to_string(),
            });
        let size = bytes.len() as u64;
        Ok((Descriptor::new(&media_type, digest, size), bytes, doc))
    }
}

/// An `Authorization` header value, marked sensitive so it never shows in debug output.
fn sensitive(t: &Target, value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| RegistryError::Unauthorized {
        registry: t.registry.clone(),
        repository: t.repository.clone(),
        rejected: false,
        detail: "the credentials hold characters HTTP headers cannot carry".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Whether a token for scope `have` also grants `need` (`repository:name:pull,push` covers
/// `repository:name:pull`).
fn scope_covers(have: &str, need: &str) -> bool {
    let split = |s: &str| {
        s.rsplit_once(':').map(|(resource, actions)| {
            (
                resource.to_string(),
                actions.split(',').map(str::to_string).collect::<Vec<_>>(),
            )
        })
    };
    match (split(have), split(need)) {
        (Some((r1, a1)), Some((r2, a2))) => r1 == r2 && a2.iter().all(|a| a1.contains(a)),
        _ => have == need,
    }
}

/// Locks a cache mutex; a panic elsewhere cannot leave these maps inconsistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pick_challenge(headers: &HeaderMap) -> Option<Challenge> {
    auth::pick_challenge(
        headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// `Docker-Content-Digest`, when it is a sha256 digest (other algorithms are not checked).
fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `host`, `host:port`, `[v6]:port`: loopback names and addresses.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The start of a response body, for error messages.
async fn body_excerpt(mut resp: Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < BODY_EXCERPT_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(BODY_EXCERPT_BYTES);
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// [`RegistryError::Http`] for an unexpected response.
async fn http_error(method: &Method, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let url = resp.url().to_string();
    RegistryError::Http {
        status,
        method: method.to_string(),
        url,
        body_excerpt: body_excerpt(resp).await,
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
async fn read_limited_body(
    t: &Target,
    mut resp: Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let url = resp.url().clone();
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| RegistryError::Transport {
        registry: t.registry.clone(),
        url: url.to_string(),
        message: crate::util::error_chain(&e),
        hint: None,
    })? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(t.protocol(format!("{what} is larger than {limit} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_fewer_actions_on_the_same_repository() {
        assert!(scope_covers(
            "repository:a/b:pull,push",
            "repository:a/b:pull"
        ));
        assert!(scope_covers("repository:a/b:pull", "repository:a/b:pull"));
        assert!(!scope_covers(
            "repository:a/b:pull",
            "repository:a/b:pull,push"
        ));
        assert!(!scope_covers(
            "repository:a/b:pull,push",
            "repository:a/c:pull"
        ));
        assert!(scope_covers("registry:catalog:*", "registry:catalog:*"));
    }

    #[test]
    fn loopback_hosts_use_plain_http() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry.lab:5000",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "docker.io",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
        let c = Client::new(ClientOptions::default()).unwrap();
        let r = Reference::parse("ubuntu").unwrap();
        assert_eq!(
            c.target(&r).manifest_url("latest").as_str(),
            "https://registry-1.docker.io/v2/library/ubuntu/manifests/latest"
        );
        let r = Reference::parse("localhost:5000/a/b:1").unwrap();
        assert_eq!(c.target(&r).base.as_str(), "http://localhost:5000/");
        let c = Client::new(ClientOptions {
            insecure: true,
            ..Default::default()
        })
        .unwrap();
        let r = Reference::parse("lab.example:5000/a/b:1").unwrap();
        assert_eq!(c.target(&r).base.as_str(), "http://lab.example:5000/");
    }
}
