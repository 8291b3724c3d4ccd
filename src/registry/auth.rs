//! Registry authentication inputs: parsing `WWW-Authenticate` challenges, and finding the
//! user's credentials the way Docker does (`~/.docker/config.json` `auths`, `credHelpers`,
//! `credsStore` and the `docker-credential-*` helper protocol).
//!
//! Credentials are looked up only after a registry answers 401, so anonymous pulls never run a
//! helper (which may prompt or unlock a keyring). A missing helper is not an error by itself:
//! it becomes a note that is shown only if authentication then fails.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::oci::reference::DOCKER_HUB;

/// The key Docker writes Docker Hub credentials under, and the server URL its helpers get.
pub(crate) const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
/// A helper that has not answered in this long is stuck (waiting on a locked keyring, say).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// One parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="…"`: send the user and password with every request.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: get a token from `realm` and send that.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` to ask a token for.
        service: Option<String>,
        /// The scope the registry said it needs, if it said.
        scope: Option<String>,
    },
}

/// Picks the challenge to answer from all `WWW-Authenticate` values: Bearer over Basic (a
/// registry offering both prefers tokens), unknown schemes ignored.
pub(crate) fn pick_challenge<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let all: Vec<Challenge> = values.into_iter().filter_map(parse_challenge).collect();
    all.iter()
        .find(|c| matches!(c, Challenge::Bearer { .. }))
        .or_else(|| all.first())
        .cloned()
}

/// Parses one `WWW-Authenticate` value: a scheme, then `key=value` or `key="quoted value"`
/// parameters separated by commas.
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
            scope: get("scope").filter(|s| !s.is_empty()),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars
            .next_if(|c| c.is_ascii_whitespace() || *c == ',')
            .is_some()
        {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| *c != ',') {
                    value.push(c);
                }
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// A user name and password (or token) for one registry, and where they came from.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub user: String,
    pub password: String,
    /// e.g. `/home/me/.docker/config.json` or `docker-credential-pass`.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never let a password reach a log or an error message.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.user, self.password))
        )
    }
}

/// The outcome of looking up one registry's credentials.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lookup {
    pub credentials: Option<Credentials>,
    /// Why something that might have held credentials did not (missing helper, bad JSON…).
    pub notes: Vec<String>,
}

/// The host names a registry's credentials may be filed under.
fn host_aliases(registry: &str) -> Vec<&str> {
    if registry == DOCKER_HUB {
        vec![
            DOCKER_HUB,
            "index.docker.io",
            "registry-1.docker.io",
            "registry.hub.docker.com",
        ]
    } else {
        vec![registry]
    }
}

/// Docker's `ConvertToHostname`: `https://host:5000/v1/` → `host:5000`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// What a helper is asked about: Docker Hub's legacy URL, or the host itself.
fn helper_server_url(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY
    } else {
        registry
    }
}

/// Finds credentials for `registry` (as [`crate::oci::Reference::registry`] names it) in the
/// Docker config file at `config`: its helper first (`credHelpers[host]`, else `credsStore`),
/// then the `auths` entries.
pub(crate) async fn lookup(config: &Path, registry: &str) -> Lookup {
    let mut out = Lookup::default();
    let doc: Value = match std::fs::read(config) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                out.notes
                    .push(format!("{} is not valid JSON: {e}", config.display()));
                return out;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.notes.push(format!("there is no {}", config.display()));
            return out;
        }
        Err(e) => {
            out.notes
                .push(format!("cannot read {}: {e}", config.display()));
            return out;
        }
    };
    let aliases = host_aliases(registry);
    let helper = doc
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|helpers| {
            helpers
                .iter()
                .find(|(k, _)| aliases.contains(&key_host(k)))
                .and_then(|(_, v)| v.as_str())
        })
        .or_else(|| doc.get("credsStore").and_then(Value::as_str))
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        let program = format!("docker-credential-{helper}");
        match run_helper(OsStr::new(&program), helper_server_url(registry)).await {
            Ok(Some(c)) => {
                out.credentials = Some(c);
                return out;
            }
            Ok(None) => out
                .notes
                .push(format!("{program} has no credentials for {registry}")),
            Err(note) => out.notes.push(note),
        }
    }
    if let Some(auths) = doc.get("auths").and_then(Value::as_object) {
        // An exact key beats a normalised one (`host` over `https://host/v1/`).
        let mut entries: Vec<(&String, &Value)> = auths
            .iter()
            .filter(|(k, _)| aliases.contains(&key_host(k)))
            .collect();
        entries.sort_by_key(|(k, _)| !aliases.contains(&k.as_str()));
        for (key, entry) in entries {
            match auth_entry(entry) {
                Ok(Some((user, password))) => {
                    out.credentials = Some(Credentials {
                        user,
                        password,
                        source: format!("{} (auths.\"{key}\")", config.display()),
                    });
                    return out;
                }
                Ok(None) => {}
                Err(why) => out
                    .notes
                    .push(format!("{} auths.\"{key}\": {why}", config.display())),
            }
        }
    }
    out
}

/// `{"auth": base64("user:pass")}` or `{"username", "password"}`; an entry with neither (what
/// `docker login` leaves when a helper holds the secret) has no credentials.
fn auth_entry(entry: &Value) -> Result<Option<(String, String)>, String> {
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let raw = STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("`auth` is not base64: {e}"))?;
        let text = String::from_utf8(raw).map_err(|_| "`auth` is not UTF-8".to_string())?;
        let (user, password) = text
            .split_once(':')
            .ok_or("`auth` is not `user:password`")?;
        return Ok(Some((user.to_string(), password.to_string())));
    }
    let user = entry.get("username").and_then(Value::as_str).unwrap_or("");
    let password = entry.get("password").and_then(Value::as_str).unwrap_or("");
    if user.is_empty() && password.is_empty() {
        return Ok(None);
    }
    Ok(Some((user.to_string(), password.to_string())))
}

/// Runs `<program> get` with the server URL on stdin (the docker-credential-helpers protocol)
/// and parses `{"Username","Secret"}`. `Ok(None)`: the helper has nothing for this server.
/// `Err`: a note saying why the helper could not be used.
pub(crate) async fn run_helper(
    program: &OsStr,
    server_url: &str,
) -> Result<Option<Credentials>, String> {
    let name = program.to_string_lossy().into_owned();
    let mut child = match tokio::process::Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the Docker config names credential helper {name}, which is not installed"
            ));
        }
        Err(e) => return Err(format!("cannot run {name}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is fine; its answer says what it knows.
        let _ = stdin.write_all(server_url.as_bytes()).await;
    }
    let out = match tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("{name} failed: {e}")),
        Err(_) => {
            return Err(format!(
                "{name} did not answer within {}s",
                HELPER_TIMEOUT.as_secs()
            ));
        }
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string()
            + String::from_utf8_lossy(&out.stderr).trim();
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!("{name} get failed ({}): {said}", out.status));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{name} answered something that is not JSON: {e}"))?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or("");
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or("");
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        user: user.to_string(),
        password: secret.to_string(),
        source: name,
    }))
}

/// Where Docker keeps its config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub(crate) fn default_docker_config() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("config.json");
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".docker/config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm=http://h/t, service="a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: Some("a\"b".into()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            pick_challenge([r#"Basic realm="x""#, r#"Bearer realm="r""#]),
            Some(Challenge::Bearer {
                realm: "r".into(),
                service: None,
                scope: None
            })
        );
    }

    fn write_config(dir: &Path, v: Value) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p
    }

    #[tokio::test]
    async fn finds_credentials_under_every_key_docker_writes() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| STANDARD.encode(s);
        let p = write_config(
            dir.path(),
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pw1")},
                "https://lab.example:5000": {"username": "u2", "password": "pw2"},
                "lab.example:5000": {"auth": b64("u3:pw:3")},
                "other.example": {},
            }}),
        );
        let c = lookup(&p, "docker.io").await.credentials.unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("hub", "pw1"));
        let c = lookup(&p, "lab.example:5000").await.credentials.unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("u3", "pw:3"),
            "the exact key wins, passwords may hold ':'"
        );
        assert!(c.source.contains("config.json"));
        assert!(!format!("{c:?}").contains("pw"), "Debug hides the password");
        assert!(lookup(&p, "other.example").await.credentials.is_none());
        let missing = lookup(&dir.path().join("nope.json"), "x").await;
        assert!(
            missing.notes[0].starts_with("there is no"),
            "{:?}",
            missing.notes
        );
    }

    #[tokio::test]
    async fn a_missing_helper_is_a_note_and_auths_still_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_config(
            dir.path(),
            serde_json::json!({
                "credsStore": "dts-test-no-such-helper",
                "auths": {"h:1": {"auth": STANDARD.encode("a:b")}},
            }),
        );
        let l = lookup(&p, "h:1").await;
        assert_eq!(l.credentials.unwrap().user, "a");
        assert!(
            l.notes[0].contains("docker-credential-dts-test-no-such-helper")
                && l.notes[0].contains("not installed"),
            "{:?}",
            l.notes
        );
    }

    #[tokio::test]
    async fn runs_credential_helpers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\nif [ \"$server\" = known:5000 ]; then\n  printf '{\"ServerURL\":\"%s\",\"Username\":\"bob\",\"Secret\":\"s3\"}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = run_helper(helper.as_os_str(), "known:5000")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "s3"));
        assert_eq!(run_helper(helper.as_os_str(), "other").await, Ok(None));
        let e = run_helper(OsStr::new("/nonexistent/docker-credential-x"), "h")
            .await
            .unwrap_err();
        assert!(e.contains("not installed"), "{e}");
    }
}
