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

/// A hub on 127.0.0.1 answering every request with `answer(path, request head)` (a status
/// and a body), one answer per request on a kept-alive connection, as reqwest reuses them.
/// Returns its URL and how many requests it got.
fn hub(
    answer: impl Fn(&str, &str) -> (u16, Vec<u8>) + Send + Sync + 'static,
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
                        let (status, body) = answer(path, &request);
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
    hub(move |path, _| match paths.iter().position(|p| p == path) {
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
        refresh: false,
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
    let (url, _) = hub(|_, _| (404, Vec::new()));
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
    let (url, gets) = hub(|_, _| (404, Vec::new()));
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
        refresh: false,
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

/// A laptop that stays and answers `need_credential` with `fresh`, counting the asks.
struct Renewing {
    fresh: Option<String>,
    asked: usize,
}

impl Laptop for Renewing {
    fn progress(&mut self, _: u64) -> bool {
        true
    }

    fn credential(&mut self) -> Option<Option<String>> {
        self.asked += 1;
        Some(self.fresh.clone())
    }
}

/// A pull token that expires during a long layer: the hub takes the old token for the first
/// part and refuses it for the second; the robot asks the laptop once for a fresh credential
/// and goes on with it. Without the offer (`refresh` unset: a 2.8 laptop), or when the
/// fresh one is refused too, the fetch fails saying the hub refused the credential, and
/// nothing is committed.
#[test]
fn a_credential_refused_mid_layer_is_renewed_once_through_the_laptop() {
    let (parts, blob) = layer_in_parts();
    let paths: Vec<String> = blob
        .parts
        .iter()
        .map(|p| format!("/v2/{}/blobs/{}", blob.repository, p.digest))
        .collect();
    let (url, _) = hub(move |path, request| {
        let Some(k) = paths.iter().position(|p| p == path) else {
            return (404, Vec::new());
        };
        let auth = request.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        });
        match (k, auth.as_deref()) {
            (_, Some("Bearer new")) | (0, Some("Bearer old")) => (200, parts[k].clone()),
            _ => (401, Vec::new()),
        }
    });
    let fetch_with = |refresh: bool, laptop: &mut Renewing| {
        let t = tempfile::tempdir().unwrap();
        let store = AgentStore::open(&t.path().join("store")).unwrap();
        let hub = HubFetch {
            url: url.clone(),
            authorization: Some("Bearer old".into()),
            insecure: true,
            blobs: vec![blob.clone()],
            wait_ms: 0,
            refresh,
        };
        let r = fetch(&store, &hub, 27, laptop);
        (r, store.has_layer(&blob.diff_id))
    };

    let mut laptop = Renewing {
        fresh: Some("Bearer new".into()),
        asked: 0,
    };
    let (r, committed) = fetch_with(true, &mut laptop);
    assert_eq!(r.unwrap().layers, 1);
    assert!(committed);
    assert_eq!(laptop.asked, 1, "asked once, at the second part");

    let mut laptop = Renewing {
        fresh: Some("Bearer new".into()),
        asked: 0,
    };
    let (r, committed) = fetch_with(false, &mut laptop);
    let m = r.unwrap_err().to_string();
    assert!(m.contains("401") && m.contains("refused"), "{m}");
    assert!(!committed);
    assert_eq!(laptop.asked, 0, "not offered: never asked");

    let mut laptop = Renewing {
        fresh: Some("Bearer stale".into()),
        asked: 0,
    };
    let (r, committed) = fetch_with(true, &mut laptop);
    let m = r.unwrap_err().to_string();
    assert!(m.contains("401") && m.contains("refused"), "{m}");
    assert!(!committed);
    assert_eq!(laptop.asked, 1, "one fresh credential per GET, not a loop");
}
