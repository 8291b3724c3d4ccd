//! A real OCI registry for integration tests: Debian's `docker-registry` (CNCF distribution 2.8)
//! started on 127.0.0.1 in a temp dir, with no auth, htpasswd Basic auth, or Docker Hub-style
//! bearer tokens issued by a small token server that runs inside the test process.
//!
//! ```ignore
//! let reg = Registry::start(Auth::token("alice", "s3cret"));
//! let authfile = reg.docker_config(tmp.path());
//! // ... push to reg.addr ...
//! assert!(reg.requests().iter().any(|r| r.is_blob_upload()));
//! ```
//!
//! Everything the fixture makes lives in one temp dir removed on drop; the registry process is
//! killed on drop, and also (via PR_SET_PDEATHSIG) when the test process dies.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// `service` of the token-auth registry (the JWT `aud`).
pub const TOKEN_SERVICE: &str = "test-registry";
/// `issuer` of the token-auth registry (the JWT `iss`).
pub const TOKEN_ISSUER: &str = "test-issuer";
/// Lifetime of issued tokens, in seconds (distribution adds 60 s of leeway on top).
pub const TOKEN_EXPIRES_IN: u64 = 300;

/// User-Agent of the fixture's readiness probe (`GET /v2/`), to tell it apart in `requests()`.
pub const PROBE_USER_AGENT: &str = "dts-test-registry-probe";

const REGISTRY_BIN: &str = "docker-registry";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How the registry authenticates clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous push and pull.
    None,
    /// HTTP Basic against an htpasswd (bcrypt) file.
    Basic { user: String, password: String },
    /// Bearer tokens: the registry answers 401 with
    /// `WWW-Authenticate: Bearer realm="http://127.0.0.1:P/token",service="test-registry",scope=…`,
    /// and the in-process token server hands out JWTs for Basic credentials.
    Token { user: String, password: String },
}

impl Auth {
    pub fn basic(user: &str, password: &str) -> Auth {
        Auth::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    pub fn token(user: &str, password: &str) -> Auth {
        Auth::Token {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// `(user, password)`, or None for `Auth::None`.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Auth::None => None,
            Auth::Basic { user, password } | Auth::Token { user, password } => {
                Some((user.as_str(), password.as_str()))
            }
        }
    }
}

/// One line of the registry's HTTP access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request URI as sent, query included.
    pub uri: String,
    /// `uri` without the query string.
    pub path: String,
    pub status: u16,
    /// The `User-Agent` (the fixture's own readiness probe sends [`PROBE_USER_AGENT`]).
    pub user_agent: String,
}

impl Request {
    /// A step of a blob upload: `POST …/blobs/uploads/` (start or cross-repo mount),
    /// `PATCH …/blobs/uploads/<id>` (chunk) or `PUT …/blobs/uploads/<id>?digest=…` (commit).
    pub fn is_blob_upload(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PATCH" | "PUT")
            && self.path.contains("/blobs/uploads/")
    }

    /// The (decoded) digest of a `PUT …/blobs/uploads/<id>?digest=sha256%3A…` that completes an
    /// upload, if this is one.
    pub fn committed_digest(&self) -> Option<String> {
        if self.method != "PUT" || !self.path.contains("/blobs/uploads/") {
            return None;
        }
        query_param(&self.uri, "digest").map(percent_decode)
    }

    /// `HEAD /v2/<name>/blobs/<digest>`: an existence check.
    pub fn is_blob_head(&self) -> bool {
        self.method == "HEAD" && blob_digest(&self.path).is_some()
    }

    /// `<digest>` of `/v2/<name>/blobs/<digest>` (not of upload URLs).
    pub fn blob_digest(&self) -> Option<&str> {
        blob_digest(&self.path)
    }

    /// `/v2/<name>/manifests/<reference>`, any method.
    pub fn is_manifest(&self) -> bool {
        self.path.starts_with("/v2/") && self.path.contains("/manifests/")
    }
}

fn blob_digest(path: &str) -> Option<&str> {
    let (_, rest) = path.rsplit_once("/blobs/")?;
    if rest.starts_with("uploads") || rest.contains('/') {
        return None;
    }
    Some(rest)
}

fn query_param<'a>(uri: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = uri.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    pub path: String,
    /// `service=` query parameter.
    pub service: Option<String>,
    /// Every `scope=` query parameter, decoded (e.g. `repository:test/img:pull,push`).
    pub scopes: Vec<String>,
    /// `account=` query parameter (Docker sends it; containers/image does too).
    pub account: Option<String>,
    /// User of the Basic `Authorization` header, if any was sent (right or wrong).
    pub user: Option<String>,
    /// 200 when a token was issued, 401 for missing or wrong credentials, 404/405 otherwise.
    pub status: u16,
    /// The token issued, if one was (tests look for it where it must not be).
    pub token: Option<String>,
}

/// A running registry. Dropping it kills the registry and stops the token server.
pub struct Registry {
    /// `127.0.0.1:PORT`: the registry host as it appears in image references and config.json.
    pub addr: String,
    pub auth: Auth,
    child: Child,
    token: Option<TokenServer>,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Why this machine can't run a registry with `auth`, if it can't (a missing tool).
    /// Tests pass it to `support::skip` and return when this is Some.
    pub fn unavailable(auth: &Auth) -> Option<String> {
        let mut tools = vec![REGISTRY_BIN];
        match auth {
            Auth::None => {}
            Auth::Basic { .. } => tools.push("htpasswd"),
            Auth::Token { .. } => tools.push("openssl"),
        }
        let missing: Vec<&str> = tools.into_iter().filter(|t| !on_path(t)).collect();
        if missing.is_empty() {
            None
        } else {
            Some(format!("not installed: {}", missing.join(", ")))
        }
    }

    /// Starts a registry on a free 127.0.0.1 port and waits until `GET /v2/` answers 200 or 401.
    /// Panics (with the registry's log) if it can't.
    pub fn start(auth: Auth) -> Registry {
        Registry::start_listening(auth, "127.0.0.1")
    }

    /// [`Registry::start`] listening on `ip` (`0.0.0.0`: every interface, so virtual robots
    /// reach it at the sims' bridge address); `addr` stays `127.0.0.1:PORT`.
    pub fn start_listening(auth: Auth, ip: &str) -> Registry {
        if let Some(why) = Registry::unavailable(&auth) {
            panic!("cannot start a test registry: {why}");
        }
        let dir = tempfile::Builder::new()
            .prefix("dts-registry-")
            .tempdir()
            .expect("creating the registry's temp dir");
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("storage")).unwrap();

        let (auth_yaml, token) = match &auth {
            Auth::None => (String::new(), None),
            Auth::Basic { user, password } => {
                let htpasswd = root.join("htpasswd");
                write_htpasswd(&htpasswd, user, password);
                let yaml = format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: \"{}\"\n",
                    htpasswd.display()
                );
                (yaml, None)
            }
            Auth::Token { user, password } => {
                let server = TokenServer::start(&root, user, password);
                let yaml = format!(
                    "auth:\n  token:\n    realm: \"{}\"\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: \"{}\"\n",
                    server.realm(),
                    server.cert.display()
                );
                (yaml, Some(server))
            }
        };

        let mut failure = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut child = spawn_registry(&root, &format!("{ip}:{port}"), &auth_yaml);
            match wait_ready(&mut child, &addr) {
                Ok(()) => {
                    return Registry {
                        addr,
                        auth,
                        child,
                        token,
                        dir,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = read_log(&root, &addr, &auth, token.as_ref());
                    let lost_port_race = log.contains("address already in use");
                    failure = format!("{why}\n{log}");
                    if !lost_port_race {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry did not come up: {failure}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fixture's temp dir (config, logs, storage, keys).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The filesystem storage driver's root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The token server's realm (`http://127.0.0.1:P/token`), for `Auth::Token`.
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(|t| t.realm())
    }

    /// The registry's log so far: its stderr (logrus), its stdout (the HTTP access log), and
    /// the token server's requests.
    pub fn log(&self) -> String {
        read_log(self.dir.path(), &self.addr, &self.auth, self.token.as_ref())
    }

    /// Every request the registry has logged so far, oldest first, read fresh from the access
    /// log. distribution writes a request's line when its handler returns, which for a large
    /// body can be just after the client has read it, so this first waits (≤ 0.5 s) for the log
    /// to stop growing for 25 ms.
    pub fn requests(&self) -> Vec<Request> {
        let path = self.dir.path().join("access.log");
        let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut last = len(&path);
        loop {
            thread::sleep(Duration::from_millis(25));
            let now = len(&path);
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let stdout = fs::read_to_string(&path).unwrap_or_default();
        stdout.lines().filter_map(parse_access_line).collect()
    }

    /// Every request the token server has answered so far (empty unless `Auth::Token`).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(|t| t.requests())
            .unwrap_or_default()
    }

    /// Writes `dir/config.json` in ~/.docker/config.json format with this registry's
    /// credentials (`{"auths": {}}` for `Auth::None`) and returns its path.
    pub fn docker_config(&self, dir: &Path) -> PathBuf {
        match self.auth.credentials() {
            Some((user, password)) => self.docker_config_with(dir, user, password),
            None => write_docker_config(dir, serde_json::json!({ "auths": {} })),
        }
    }

    /// Like `docker_config`, with other credentials (e.g. a wrong password).
    pub fn docker_config_with(&self, dir: &Path, user: &str, password: &str) -> PathBuf {
        let auth = STANDARD.encode(format!("{user}:{password}"));
        let mut auths = serde_json::Map::new();
        auths.insert(self.addr.clone(), serde_json::json!({ "auth": auth }));
        write_docker_config(dir, serde_json::json!({ "auths": auths }))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        // `token` drops after this, stopping its thread.
    }
}

fn spawn_registry(root: &Path, addr: &str, auth_yaml: &str) -> Child {
    let config = root.join("config.yml");
    fs::write(&config, registry_config(root, addr, auth_yaml)).unwrap();
    let stdout = File::create(root.join("access.log")).unwrap();
    let stderr = File::create(root.join("registry.log")).unwrap();
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(&config)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // distribution overrides any config key from REGISTRY_* variables; keep the developer's
    // environment out of the fixture.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    spawn_tied_to_process(cmd).expect("spawning docker-registry")
}

fn wait_ready(child: &mut Child, addr: &str) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("docker-registry exited with {status}"));
        }
        if let Ok(status) = http_get_status(addr, "/v2/") {
            if status == 200 || status == 401 {
                return Ok(());
            }
            return Err(format!("GET /v2/ answered {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("GET /v2/ did not answer within {START_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(root: &Path, addr: &str, auth: &Auth, token: Option<&TokenServer>) -> String {
    let stderr = fs::read_to_string(root.join("registry.log")).unwrap_or_default();
    let stdout = fs::read_to_string(root.join("access.log")).unwrap_or_default();
    let mut out = format!(
        "=== docker-registry {addr} ({auth:?}) stderr ===\n{stderr}=== stdout (access log) ===\n{stdout}"
    );
    if let Some(token) = token {
        out.push_str("=== token server requests ===\n");
        for r in token.requests() {
            out.push_str(&format!("{r:?}\n"));
        }
    }
    out
}

fn write_docker_config(dir: &Path, value: serde_json::Value) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join("config.json");
    fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    path
}

fn registry_config(root: &Path, addr: &str, auth_yaml: &str) -> String {
    // Access log (gorilla's combined format) goes to stdout, logrus to stderr.
    // Upload purging and the storage health check are off: nothing runs in the background.
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: \"{storage}\"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: dts-test-registry-secret
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
{auth_yaml}",
        storage = root.join("storage").display()
    )
}

/// `127.0.0.1 - - [28/Nov/2026:00:45:42 +0000] "HEAD /v2/a/b/blobs/sha256:… HTTP/1.1" 404 157 "" "curl/7.88.1"`
pub(crate) fn parse_access_line(line: &str) -> Option<Request> {
    let (_, rest) = line.split_once("] \"")?;
    let (request_line, rest) = rest.split_once('"')?;
    let mut parts = request_line.split(' ');
    let method = parts.next()?.to_string();
    let uri = parts.next()?.to_string();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    // ` 201 0 "referer" "user agent"`
    let user_agent = rest
        .trim_end()
        .strip_suffix('"')
        .and_then(|r| r.rsplit_once('"'))
        .map(|(_, ua)| ua.to_string())
        .unwrap_or_default();
    let path = uri.split('?').next().unwrap_or("").to_string();
    Some(Request {
        method,
        uri,
        path,
        status,
        user_agent,
    })
}

fn write_htpasswd(path: &Path, user: &str, password: &str) {
    // distribution only accepts bcrypt entries.
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("running htpasswd");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    fs::write(path, format!("{}\n", line.trim())).unwrap();
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A free port on 127.0.0.1 (bind :0, read, release; the caller retries if it loses the race).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Status code of `GET path` on `addr`, with a tiny HTTP/1.1 client.
fn http_get_status(addr: &str, path: &str) -> io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {PROBE_USER_AGENT}\r\nConnection: close\r\n\r\n"
    )?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line)?;
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` with PR_SET_PDEATHSIG=SIGKILL from a thread that lives as long as the process,
/// so the child dies with the test process even if a Registry is leaked (e.g. in a static) or
/// the test binary is killed. (The signal follows the *thread* that forked, hence the
/// dedicated thread instead of the calling test's.)
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("registry-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

// ---------------------------------------------------------------------------------------------
// Token server
// ---------------------------------------------------------------------------------------------

/// Docker Hub-style token endpoint on 127.0.0.1, in a thread of the test process.
///
/// `GET /token?service=…&scope=repository:NAME:pull,push[&scope=…]` with Basic credentials →
/// `{"token", "access_token", "expires_in", "issued_at"}`; 401 without or with wrong ones.
/// Tokens are RS256 JWTs whose header carries `kid` = libtrust key ID of the key in the
/// registry's `rootcertbundle`; they grant exactly the scopes asked for.
struct TokenServer {
    addr: String,
    cert: PathBuf,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    thread: Option<JoinHandle<()>>,
}

struct Issuer {
    key: PathBuf,
    kid: String,
    user: String,
    password: String,
}

impl TokenServer {
    fn start(root: &Path, user: &str, password: &str) -> TokenServer {
        let key = root.join("token-key.pem");
        let cert = root.join("token-cert.pem");
        run_openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha256",
                "-days",
                "3650",
                "-subj",
                "/CN=dts test token issuer",
                "-keyout",
                &key.to_string_lossy(),
                "-out",
                &cert.to_string_lossy(),
            ],
            None,
        );
        let spki = run_openssl(
            &[
                "pkey",
                "-in",
                &key.to_string_lossy(),
                "-pubout",
                "-outform",
                "DER",
            ],
            None,
        );
        let issuer = Arc::new(Issuer {
            kid: libtrust_key_id(&spki),
            key,
            user: user.to_string(),
            password: password.to_string(),
        });

        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, log) = (stop.clone(), log.clone());
            thread::Builder::new()
                .name("token-server".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let (issuer, log) = (issuer.clone(), log.clone());
                        thread::spawn(move || {
                            if let Some(entry) = serve_token_request(stream, &issuer) {
                                log.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
                            }
                        });
                    }
                })
                .expect("starting the token server thread")
        };
        TokenServer {
            addr,
            cert,
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        if let Ok(s) = TcpStream::connect(&self.addr) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Handles one connection (one request, then `Connection: close`).
fn serve_token_request(stream: TcpStream, issuer: &Issuer) -> Option<TokenRequest> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    if content_length > 0 {
        let mut body = vec![0; content_length.min(1 << 20)];
        let _ = reader.read_exact(&mut body);
    }

    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut entry = TokenRequest {
        method: method.clone(),
        path: path.to_string(),
        service: None,
        scopes: Vec::new(),
        account: None,
        user: None,
        status: 0,
        token: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match percent_decode(k).as_str() {
            "service" => entry.service = Some(v),
            "scope" => entry
                .scopes
                .extend(v.split(' ').filter(|s| !s.is_empty()).map(String::from)),
            "account" => entry.account = Some(v),
            _ => {}
        }
    }
    let credentials = authorization
        .as_deref()
        .and_then(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
        })
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    entry.user = credentials.as_ref().map(|(u, _)| u.clone());

    let mut stream = stream;
    let response = if path != "/token" {
        entry.status = 404;
        http_response(404, "Not Found", &[], r#"{"details":"not found"}"#)
    } else if method != "GET" {
        entry.status = 405;
        http_response(405, "Method Not Allowed", &[("Allow", "GET")], "{}")
    } else if credentials
        .as_ref()
        .is_none_or(|(u, p)| *u != issuer.user || *p != issuer.password)
    {
        entry.status = 401;
        http_response(
            401,
            "Unauthorized",
            &[("WWW-Authenticate", "Basic realm=\"dts-test-token-server\"")],
            r#"{"details":"incorrect username or password"}"#,
        )
    } else {
        let service = entry.service.as_deref().unwrap_or(TOKEN_SERVICE);
        let now = unix_now();
        let jwt = issue_jwt(issuer, service, &entry.scopes, now);
        let body = serde_json::json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": TOKEN_EXPIRES_IN,
            "issued_at": rfc3339(now),
        })
        .to_string();
        entry.status = 200;
        entry.token = Some(jwt);
        http_response(200, "OK", &[], &body)
    };
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
    Some(entry)
}

fn http_response(code: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

fn issue_jwt(issuer: &Issuer, service: &str, scopes: &[String], now: u64) -> String {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            // type:name:actions; the name may itself contain ':' (e.g. a host:port prefix).
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            Some(serde_json::json!({ "type": kind, "name": name, "actions": actions }))
        })
        .collect();
    let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "kid": issuer.kid });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": issuer.user,
        "aud": service,
        "exp": now + TOKEN_EXPIRES_IN,
        "nbf": now - 1,
        "iat": now,
        "jti": format!("{now}-{}", JTI.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // RSASSA-PKCS1-v1_5 with SHA-256 = JWS "RS256".
    let key = issuer.key.to_string_lossy();
    let signature = run_openssl(
        &["dgst", "-sha256", "-sign", &key],
        Some(signing_input.as_bytes()),
    );
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// libtrust's key ID, which distribution uses to find a token's `kid` among the public keys of
/// `rootcertbundle`: base32 (RFC 4648, unpadded) of the first 240 bits of SHA-256(DER SPKI),
/// in 12 groups of 4 characters joined by ':'.
pub(crate) fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let b32 = base32(&digest[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

pub(crate) fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn run_openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub(crate) fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `2026-11-28T00:45:42Z`
pub(crate) fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
