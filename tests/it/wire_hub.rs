//! The wire's `fetch` end to end with a real `dt-agent serve --stdio` child and a small HTTP
//! hub on 127.0.0.1: a pull token that expires during a layer in parts is renewed through the
//! session (2.9: the robot's `need_credential`, the laptop's `credential`), and a laptop that
//! cannot make a fresh one ends the fetch with its own error, the robot's store untouched.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dts::api::{HubBlob, HubFetch, HubPart};
use dts::oci::Digest;
use dts::progress::Silent;
use dts::wire::WireError;
use dts::wire::client::Connection;

use crate::wire::serve;

/// A layer of two files cut into two parts as the laptop cuts them (each the tar of one
/// file with its zero blocks, zstd): the parts' bytes and the blob a fetch asks for.
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
    let layer = [&tars[0][..tars[0].len() - 1024], &tars[1][..]].concat();
    let parts: Vec<Vec<u8>> = tars
        .iter()
        .map(|t| zstd::encode_all(&t[..], 3).unwrap())
        .collect();
    let blob = HubBlob {
        repository: "lab/x".into(),
        digest: Digest::of(&layer),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: layer.len() as u64,
        diff_id: Digest::of(&layer),
        parts: parts
            .iter()
            .zip(&tars)
            .map(|(p, t)| HubPart {
                digest: Digest::of(p),
                size: p.len() as u64,
                tar_size: t.len() as u64,
            })
            .collect(),
    };
    (parts, blob)
}

/// A hub that serves part 0 to `Bearer old` and every part to `Bearer new`, 401 otherwise.
fn token_hub(parts: Vec<Vec<u8>>, blob: &HubBlob) -> String {
    let paths: Vec<String> = blob
        .parts
        .iter()
        .map(|p| format!("/v2/{}/blobs/{}", blob.repository, p.digest))
        .collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(move |request: &str| {
        let path = request.split(' ').nth(1).unwrap_or_default();
        let auth = request.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        });
        match (paths.iter().position(|p| p == path), auth.as_deref()) {
            (Some(k), Some("Bearer new")) | (Some(k @ 0), Some("Bearer old")) => {
                (200, parts[k].clone())
            }
            (Some(_), _) => (401, Vec::new()),
            (None, _) => (404, Vec::new()),
        }
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let request: Vec<u8> = head.drain(..end + 4).collect();
                        let (status, body) = answer(&String::from_utf8_lossy(&request));
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if conn.write_all(&[reply.as_bytes(), &body].concat()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_expired_hub_token_is_renewed_through_the_session() {
    let t = tempfile::tempdir().unwrap();
    let (parts, blob) = layer_in_parts();
    let url = token_hub(parts, &blob);
    let hub = HubFetch {
        url,
        authorization: Some("Bearer old".into()),
        insecure: true,
        blobs: vec![blob.clone()],
        wait_ms: 0,
        refresh: true,
    };

    // The laptop makes a fresh token when asked: the layer arrives.
    let root = t.path().join("robot");
    std::fs::create_dir_all(&root).unwrap();
    let (_child, io) = serve(&root);
    let (mut conn, hello) = Connection::open(io).await.expect("hello");
    assert!(hello.fetches());
    let asked = AtomicUsize::new(0);
    let fetched = conn
        .fetch_from_hub(hub.clone(), &Silent, || {
            asked.fetch_add(1, Ordering::Relaxed);
            async { Ok(Some("Bearer new".to_string())) }
        })
        .await
        .expect("fetched with the fresh token");
    assert_eq!((fetched.layers, fetched.present), (1, 0));
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    let again = conn
        .fetch_from_hub(hub.clone(), &Silent, || async { Ok(None) })
        .await
        .unwrap();
    assert_eq!(again.present, 1, "the layer is the robot's now");

    // A laptop that cannot make one ends the fetch with its own error; a new robot (its own
    // root) has nothing of the layer.
    let other = t.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_child, io) = serve(&other);
    let (mut conn, _) = Connection::open(io).await.expect("hello");
    let e = conn
        .fetch_from_hub(hub, &Silent, || async {
            Err(WireError::Credential("the token service is down".into()))
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the token service is down"), "{e}");
    drop(conn);
    let layers = other.join("layers");
    let committed = std::fs::read_dir(&layers).map_or(0, |d| d.count());
    assert_eq!(committed, 0, "nothing committed under {}", layers.display());
}
