//! Proves the registry fixture (tests/it/support/registry.rs) with skopeo as the client: push an
//! OCI layout written by hand, pull it back, compare digests, in all three auth modes.

use crate::support;

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::registry::{self, Auth, Registry};
use sha2::{Digest, Sha256};

const TAG: &str = "v1";
const REPO: &str = "test/img";

/// Why these tests can't run here, if they can't.
fn skip_reason(auth: &Auth) -> Option<String> {
    if let Some(why) = Registry::unavailable(auth) {
        return Some(why);
    }
    match Command::new("skopeo").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("not installed: skopeo".to_string()),
    }
}

macro_rules! skip_unless_tools {
    ($auth:expr) => {
        if let Some(why) = skip_reason(&$auth) {
            support::skip(&why);
            return;
        }
    };
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::write(layout.join("blobs/sha256").join(hex), data).unwrap();
    digest
}

/// A gzipped layer tar holding one file.
fn layer(name: &str, contents: &[u8]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, contents).unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256_digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// An OCI image layout at `dir` with `tag` → a two-layer linux/arm64 image.
/// Returns (manifest digest, the blob digests: layers then config).
fn write_oci_layout(dir: &Path, tag: &str) -> (String, Vec<String>) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (name, contents) in [
        ("etc/dts-hello", &b"hello from dts\n"[..]),
        ("etc/dts-bye", b"bye\n"),
    ] {
        let (gz, diff_id) = layer(name, contents);
        let digest = write_blob(dir, &gz);
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": gz.len(),
        }));
        diff_ids.push(diff_id);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "arm64",
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers,
    }))
    .unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let mut blobs: Vec<String> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    blobs.push(config_digest);
    (manifest_digest, blobs)
}

/// The manifest digest `tag` points at in an OCI layout's index.json.
fn layout_digest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("running skopeo")
}

fn push(reg: &Registry, authfile: &Path, layout: &Path) -> Output {
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--authfile",
        &authfile.to_string_lossy(),
        &format!("oci:{}:{TAG}", layout.display()),
        &format!("docker://{}/{REPO}:{TAG}", reg.addr),
    ])
}

fn pull(reg: &Registry, authfile: &Path, layout: &Path) -> Output {
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--authfile",
        &authfile.to_string_lossy(),
        &format!("docker://{}/{REPO}:{TAG}", reg.addr),
        &format!("oci:{}:{TAG}", layout.display()),
    ])
}

fn assert_ok(what: &str, out: &Output, reg: &Registry) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        reg.log()
    );
}

/// Push, pull back, compare; push again and see only existence checks.
fn round_trip(auth: Auth) -> Registry {
    let reg = Registry::start(auth);
    let tmp = tempfile::tempdir().unwrap();
    let authfile = reg.docker_config(&tmp.path().join("docker"));
    let src = tmp.path().join("src");
    let (manifest_digest, blobs) = write_oci_layout(&src, TAG);

    let out = push(&reg, &authfile, &src);
    assert_ok("first push", &out, &reg);
    let first = reg.requests();
    for blob in &blobs {
        assert!(
            first
                .iter()
                .any(|r| r.committed_digest().as_deref() == Some(blob.as_str()) && r.status == 201),
            "no committed upload of {blob}:\n{}",
            reg.log()
        );
    }
    assert!(
        first
            .iter()
            .any(|r| r.method == "PUT" && r.is_manifest() && r.status == 201),
        "no manifest PUT:\n{}",
        reg.log()
    );

    // What the registry serves is byte-for-byte what we pushed.
    let out = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--authfile",
        &authfile.to_string_lossy(),
        &format!("docker://{}/{REPO}:{TAG}", reg.addr),
    ]);
    assert_ok("inspect --raw", &out, &reg);
    assert_eq!(sha256_digest(&out.stdout), manifest_digest);

    let dst = tmp.path().join("dst");
    let out = pull(&reg, &authfile, &dst);
    assert_ok("pull", &out, &reg);
    assert_eq!(layout_digest(&dst, TAG), manifest_digest);
    for blob in &blobs {
        let hex = blob.strip_prefix("sha256:").unwrap();
        let data = fs::read(dst.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(&sha256_digest(&data), blob);
    }

    // An identical second push uploads nothing: skopeo HEADs each blob and finds it.
    let before = reg.requests().len();
    let out = push(&reg, &authfile, &src);
    assert_ok("second push", &out, &reg);
    let second = reg.requests().split_off(before);
    let uploads: Vec<_> = second.iter().filter(|r| r.is_blob_upload()).collect();
    assert!(
        uploads.is_empty(),
        "second push uploaded: {uploads:?}\n{}",
        reg.log()
    );
    for blob in &blobs {
        assert!(
            second.iter().any(|r| r.is_blob_head()
                && r.blob_digest() == Some(blob.as_str())
                && r.status == 200),
            "second push did not HEAD {blob}: {second:?}"
        );
    }
    reg
}

/// A push with a wrong password fails and leaves nothing behind.
fn wrong_password_fails(reg: &Registry) {
    let (user, _) = reg.auth.credentials().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let authfile = reg.docker_config_with(tmp.path(), user, "not-the-password");
    let src = tmp.path().join("src");
    write_oci_layout(&src, TAG);
    let before = reg.requests().len();
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--authfile",
        &authfile.to_string_lossy(),
        &format!("oci:{}:{TAG}", src.display()),
        &format!("docker://{}/{REPO}:other", reg.addr),
    ]);
    assert!(
        !out.status.success(),
        "push with a wrong password succeeded:\n{}",
        reg.log()
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("unauthorized")
            || stderr.contains("authentication required")
            || stderr.contains("401"),
        "unexpected skopeo error: {stderr}"
    );
    let after = reg.requests().split_off(before);
    assert!(
        after.iter().all(|r| r.status == 401),
        "a request got through without valid credentials: {after:?}"
    );
    assert!(!after.is_empty());
}

#[test]
fn no_auth_push_pull() {
    skip_unless_tools!(Auth::None);
    let reg = round_trip(Auth::None);
    let requests = reg.requests();
    assert!(requests.iter().all(|r| r.status != 401));
    // The fixture's readiness probe is the first request and is labelled.
    assert_eq!(requests[0].user_agent, registry::PROBE_USER_AGENT);
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", "/v2/")
    );
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.user_agent.starts_with("skopeo/"))
    );
}

#[test]
fn basic_auth_push_pull() {
    let auth = Auth::basic("alice", "s3cret-Basic");
    skip_unless_tools!(auth);
    let reg = round_trip(auth);
    // Anonymous requests are challenged.
    assert!(reg.requests().iter().any(|r| r.status == 401));
    wrong_password_fails(&reg);
}

#[test]
fn token_auth_push_pull() {
    let auth = Auth::token("bob", "s3cret-Token");
    skip_unless_tools!(auth);
    let reg = round_trip(auth);
    let tokens = reg.token_requests();
    assert!(
        tokens.iter().any(|t| t.status == 200
            && t.service.as_deref() == Some(registry::TOKEN_SERVICE)
            && t.scopes
                .iter()
                .any(|s| s == &format!("repository:{REPO}:pull,push"))),
        "no push token issued: {tokens:?}"
    );
    assert!(
        tokens.iter().any(|t| t.status == 200
            && t.scopes
                .iter()
                .any(|s| s == &format!("repository:{REPO}:pull"))),
        "no pull token issued: {tokens:?}"
    );
    wrong_password_fails(&reg);
    assert!(
        reg.token_requests()
            .iter()
            .any(|t| t.status == 401 && t.user.as_deref() == Some("bob")),
        "{:?}",
        reg.token_requests()
    );
}

#[test]
fn token_server_refuses_missing_credentials_and_answers_expected_json() {
    let auth = Auth::token("carol", "pw");
    if let Some(why) = Registry::unavailable(&auth) {
        support::skip(&why);
        return;
    }
    let reg = Registry::start(auth);
    let realm = reg.token_realm().unwrap();
    let base = realm.strip_prefix("http://").unwrap();
    let (host, path) = base.split_once('/').unwrap();
    let query = format!(
        "/{path}?service={}&scope=repository%3Aa%2Fb%3Apull",
        registry::TOKEN_SERVICE
    );

    let (status, _) = raw_get(host, &query, None);
    assert_eq!(status, 401);
    let (status, body) = raw_get(host, &query, Some(("carol", "pw")));
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let jwt = json["token"].as_str().unwrap();
    assert_eq!(json["access_token"], json["token"]);
    assert_eq!(json["expires_in"], 300);
    let issued_at = json["issued_at"].as_str().unwrap();
    assert!(
        issued_at.len() == 20 && issued_at.ends_with('Z'),
        "{issued_at}"
    );
    let claims = jwt.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "a/b", "actions": ["pull"]}])
    );
    assert_eq!(claims["aud"], registry::TOKEN_SERVICE);
    assert_eq!(claims["sub"], "carol");

    // The token opens the registry: GET /v2/ with it answers 200 (without: 401).
    let (status, _) = raw_get_bearer(&reg.addr, "/v2/", None);
    assert_eq!(status, 401);
    let (status, body) = raw_get_bearer(&reg.addr, "/v2/", Some(jwt));
    assert_eq!(status, 200, "{body}\n{}", reg.log());
}

#[test]
fn helpers() {
    let r = registry::parse_access_line(
        r#"127.0.0.1 - - [28/Nov/2026:00:45:42 +0000] "PUT /v2/a/b/blobs/uploads/1f?_state=x&digest=sha256%3Aab HTTP/1.1" 201 0 "" "skopeo""#,
    )
    .unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.status),
        ("PUT", "/v2/a/b/blobs/uploads/1f", 201)
    );
    assert!(r.is_blob_upload());
    assert_eq!(r.committed_digest().as_deref(), Some("sha256:ab"));
    assert_eq!(r.user_agent, "skopeo");
    let h = registry::parse_access_line(
        r#"127.0.0.1 - - [28/Nov/2026:00:45:42 +0000] "HEAD /v2/a/b/blobs/sha256:cd HTTP/1.1" 200 0 "" "x""#,
    )
    .unwrap();
    assert!(h.is_blob_head() && !h.is_blob_upload());
    assert_eq!(h.blob_digest(), Some("sha256:cd"));
    assert!(
        registry::parse_access_line(r#"time="x" level=info msg="response completed""#).is_none()
    );

    // RFC 4648 test vectors.
    assert_eq!(registry::base32(b"foobar"), "MZXW6YTBOI");
    assert_eq!(registry::base32(b"fooba"), "MZXW6YTB");
    let kid = registry::libtrust_key_id(b"anything");
    assert_eq!(kid.len(), 12 * 4 + 11);
    assert_eq!(kid.split(':').count(), 12);

    assert_eq!(registry::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(registry::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(registry::rfc3339(1_798_418_742), "2026-12-28T00:45:42Z");
    assert_eq!(
        registry::percent_decode("repository%3Aa%2Fb%3Apull%2Cpush"),
        "repository:a/b:pull,push"
    );
}

fn raw_get(host: &str, path: &str, basic: Option<(&str, &str)>) -> (u16, String) {
    use base64::Engine as _;
    let header = basic.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    http_get(host, path, header.as_deref())
}

fn raw_get_bearer(host: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let header = token.map(|t| format!("Bearer {t}"));
    http_get(host, path, header.as_deref())
}

fn http_get(host: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        request.push_str(&format!("Authorization: {a}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
