//! The robot's two request decoders under generated and mutated input (issue 17): the
//! daemon's request reader (`agent::daemon::decode_request`, one JSON line from its socket) and
//! `serve --stdio`'s frame decoder (`wire::serve::read_message`, one frame from the laptop).
//!
//! Each case is a request built as JSON, every name in it (container, service, volume, image,
//! role, CDI device, signal) either valid for its kind or hostile (`../`, `/`, NUL, a leading
//! `.`, empty, non-ASCII, very long), fed to both decoders as it is and then with byte-level
//! mutations (flips, insertions of `../` and NUL, deletions, truncation, a broken frame
//! header). Neither decoder may panic; a request carrying a hostile name must be refused (as
//! bad input by the daemon); and whatever does decode must hold only names that stay one path
//! component under the agent's root — the property that keeps a request from creating
//! anything outside it.
//!
//! `DTS_FUZZ_CASES` sets the number of cases (default 2,000, a few seconds in debug); issue 17's
//! run is `DTS_FUZZ_CASES=100000 cargo test --test it decode_fuzz:: -- --nocapture`.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use dts::api::{ContainerConfig, Request, VolumeSource};
use dts::wire::ToRobot;
use dts::wire::frame::{Frame, Kind};

/// What a case says about one name: valid for its kind, or a value every kind refuses.
#[derive(Clone, Debug)]
struct Name {
    text: String,
    hostile: bool,
}

/// Names of one kind: valid ones from `valid`, and hostile ones made from them.
fn names(valid: BoxedStrategy<String>) -> BoxedStrategy<Name> {
    let v = valid.clone();
    let hostile = (valid.clone(), valid, 0..9usize)
        .prop_map(|(a, b, how)| match how {
            0 => format!("../{a}"),
            1 => format!("{a}/../{b}"),
            2 => format!("/{a}"),
            3 => format!("{a}\0{b}"),
            4 => String::new(),
            5 => "..".into(),
            6 => format!(".{a}/x"),
            7 => format!("{a}\u{e9}{b}"),
            _ => format!("../../{}/{a}", "x".repeat(300)),
        })
        .prop_map(|text| Name {
            text,
            hostile: true,
        });
    prop_oneof![
        3 => v.prop_map(|text| Name { text, hostile: false }),
        2 => hostile,
    ]
    .boxed()
}

fn word(first: &'static str, rest: &'static str, max: usize) -> BoxedStrategy<String> {
    let f: Vec<char> = first.chars().collect();
    let r: Vec<char> = rest.chars().collect();
    (
        proptest::sample::select(f),
        proptest::collection::vec(proptest::sample::select(r), 0..max),
    )
        .prop_map(|(c, cs)| std::iter::once(c).chain(cs).collect())
        .boxed()
}

const ALNUM: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";

/// Container, service and volume names: `is_valid_name`.
fn container_name() -> BoxedStrategy<Name> {
    let valid = word(ALNUM, "abcdefghijklmnopqrstuvwxyzABC0123456789_.-", 40);
    names(valid)
}

fn role() -> BoxedStrategy<Name> {
    names(word(LOWER, "abcdefghijklmnopqrstuvwxyz0123456789-", 20))
}

fn cdi_device() -> BoxedStrategy<Name> {
    let valid = (
        word(LOWER, LOWER, 8),
        word(LOWER, LOWER, 8),
        word(ALNUM, ALNUM, 8),
    )
        .prop_map(|(v, c, n)| format!("{v}.com/{c}={n}"))
        .boxed();
    names(valid)
}

fn image() -> BoxedStrategy<Name> {
    let valid = prop_oneof![
        (word(LOWER, LOWER, 10), word(LOWER, LOWER, 10))
            .prop_map(|(a, b)| format!("example.com/{a}/{b}:latest")),
        word(LOWER, LOWER, 12),
        proptest::collection::vec(proptest::sample::select(b"0123456789abcdef".to_vec()), 64)
            .prop_map(|hex| format!("sha256:{}", String::from_utf8(hex).unwrap())),
    ]
    .boxed();
    names(valid)
}

fn signal() -> BoxedStrategy<Name> {
    names(
        proptest::sample::select(vec!["TERM", "SIGKILL", "int", "9", "64"])
            .prop_map(String::from)
            .boxed(),
    )
}

/// A request as JSON, and whether any name in it is hostile.
fn request() -> BoxedStrategy<(Value, bool)> {
    let by_name = (
        proptest::sample::select(vec!["start", "inspect", "diff", "rm", "stop", "logs"]),
        container_name(),
    )
        .prop_map(|(op, n)| {
            let mut v = json!({"op": op, "name": n.text});
            match op {
                "rm" => v["force"] = json!(true),
                "stop" => v["timeout"] = json!(1),
                "logs" => {
                    v["follow"] = json!(false);
                    v["tail"] = json!(10);
                    v["until_exit"] = json!(false);
                }
                _ => {}
            }
            (v, n.hostile)
        });
    let kill = (container_name(), signal()).prop_map(|(n, s)| {
        (
            json!({"op": "kill", "name": n.text, "signal": s.text}),
            n.hostile || s.hostile,
        )
    });
    let volume = (
        proptest::sample::select(vec!["volume_create", "volume_rm"]),
        container_name(),
    )
        .prop_map(|(op, n)| (json!({"op": op, "name": n.text}), n.hostile));
    let create = (config(), any::<bool>())
        .prop_map(|((c, bad), start)| (json!({"op": "create", "config": c, "start": start}), bad));
    let deploy = proptest::collection::vec((container_name(), config()), 1..4).prop_map(|svcs| {
        let mut bad = false;
        let services: Vec<Value> = svcs
            .into_iter()
            .map(|(n, (c, c_bad))| {
                bad |= n.hostile || c_bad;
                json!({
                    "name": n.text, "stage": 0, "order": 0, "image_name": "busybox",
                    "manifest": format!("sha256:{}", "a".repeat(64)),
                    "container": c, "healthcheck": null,
                })
            })
            .collect();
        let spec =
            json!({"stack": "s", "services": services, "probation": {"secs": 1, "nanos": 0}});
        (json!({"op": "deploy", "spec": spec, "detach": true}), bad)
    });
    let exec = (container_name(), any::<bool>()).prop_map(|(n, tty)| {
        (
            json!({"op": "exec", "spec": {"name": n.text, "cmd": ["sh"], "tty": tty}}),
            n.hostile,
        )
    });
    prop_oneof![by_name, kill, volume, create, deploy, exec].boxed()
}

/// A container config as JSON, and whether any name in it is hostile.
fn config() -> BoxedStrategy<(Value, bool)> {
    (
        container_name(),
        image(),
        proptest::option::of(container_name()),
        proptest::collection::vec(container_name(), 0..3),
        proptest::collection::vec(role(), 0..3),
        proptest::collection::vec(cdi_device(), 0..2),
        proptest::option::of(signal()),
    )
        .prop_map(|(name, image, service, volumes, roles, cdi, stop)| {
            let mut bad = name.hostile || image.hostile;
            let mut c = json!({"name": name.text, "image": image.text, "cmd": ["true"]});
            if let Some(s) = service {
                bad |= s.hostile;
                c["service"] = json!(s.text);
            }
            let vols: Vec<Value> = volumes
                .iter()
                .map(|v| {
                    bad |= v.hostile;
                    json!({"source": {"named": v.text}, "target": "/data", "read_only": false})
                })
                .collect();
            c["volumes"] = json!(vols);
            let strs = |ns: &[Name], bad: &mut bool| -> Vec<String> {
                ns.iter()
                    .map(|n| {
                        *bad |= n.hostile;
                        n.text.clone()
                    })
                    .collect()
            };
            c["device_roles"] = json!(strs(&roles, &mut bad));
            c["cdi_devices"] = json!(strs(&cdi, &mut bad));
            if let Some(s) = stop {
                bad |= s.hostile;
                c["stop_signal"] = json!(s.text);
            }
            (c, bad)
        })
        .boxed()
}

/// What mutations insert: path pieces, JSON syntax, an escaped NUL, invalid UTF-8, a name.
const INSERTS: &[&[u8]] = &[
    b"../",
    b"/",
    b"\0",
    b"\\u0000",
    b"\"",
    b"..",
    b"\xff\xfe",
    b"{",
    b"}",
    b",\"name\":\"../x\"",
];

/// One byte-level change to an encoded request.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, &'static [u8]),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), proptest::sample::select(INSERTS.to_vec()))
            .prop_map(|(at, s)| Mutation::Insert(at, s)),
        (any::<usize>(), 1..16usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ];
    proptest::collection::vec(one, 1..6)
}

fn mutate(bytes: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in ms {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *m {
            Mutation::Flip(i, x) if !b.is_empty() => {
                let n = b.len();
                b[i % n] ^= x | 1;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, s) => {
                let p = at(i, b.len());
                b.splice(p..p, s.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let p = at(i, b.len());
                let end = (p + n).min(b.len());
                b.drain(p..end);
            }
            Mutation::Truncate(i) => {
                let p = at(i, b.len());
                b.truncate(p);
            }
        }
    }
    b
}

/// Whether `name` is one path component: joined to the agent's root it names a child of it.
fn one_component(name: &str) -> bool {
    let p = std::path::Path::new(name);
    !name.is_empty()
        && name.len() <= 255
        && !name.contains('\0')
        && p.components().count() == 1
        && matches!(p.components().next(), Some(std::path::Component::Normal(_)))
}

/// Every name a decoded request holds stays inside the root; arguments start no flag.
fn check_names(req: &Request) {
    let config = |c: &ContainerConfig| {
        assert!(one_component(&c.name), "{:?}", c.name);
        if let Some(s) = &c.service {
            assert!(one_component(s), "{s:?}");
        }
        for v in &c.volumes {
            if let VolumeSource::Named(n) = &v.source {
                assert!(one_component(n), "{n:?}");
            }
        }
        for r in &c.device_roles {
            assert!(one_component(r), "{r:?}");
        }
        for d in &c.cdi_devices {
            assert!(
                !d.contains('\0') && !d.starts_with(['-', '.', '/']),
                "{d:?}"
            );
            assert!(!d.split('/').any(|p| p == ".." || p == "."), "{d:?}");
        }
        assert!(
            !c.image.contains('\0') && !c.image.starts_with(['/', '-', '.']),
            "{:?}",
            c.image
        );
        assert!(!c.image.split('/').any(|p| p == ".."), "{:?}", c.image);
        if let Some(s) = &c.stop_signal {
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s:?}");
        }
    };
    match req {
        Request::Create { config: c, .. } => config(c),
        Request::Start { name }
        | Request::Attach { name, .. }
        | Request::Stop { name, .. }
        | Request::Rm { name, .. }
        | Request::Inspect { name }
        | Request::Logs { name, .. }
        | Request::Diff { name } => assert!(one_component(name), "{name:?}"),
        Request::Exec { spec } => assert!(one_component(&spec.name), "{:?}", spec.name),
        Request::Kill { name, signal } => {
            assert!(one_component(name), "{name:?}");
            assert!(
                signal.chars().all(|c| c.is_ascii_alphanumeric()),
                "{signal:?}"
            );
        }
        Request::VolumeCreate { name } | Request::VolumeRm { name } => {
            assert!(one_component(name), "{name:?}")
        }
        Request::Deploy { spec, .. } => {
            for s in &spec.services {
                assert!(one_component(&s.name), "{:?}", s.name);
                config(&s.container);
            }
        }
        Request::Ps { .. }
        | Request::VolumeLs
        | Request::Runtime
        | Request::History
        | Request::Rollback { .. }
        | Request::Release => {}
    }
}

/// Feeds one line to the daemon's reader: `Some(request)` when it decodes (its names checked),
/// `None` when refused (as bad input).
fn daemon(line: &[u8]) -> Option<Request> {
    match dts::agent::daemon::decode_request(line) {
        Ok(r) => {
            check_names(&r);
            Some(r)
        }
        Err(e) => {
            assert!(e.is_bad_input(), "{e}");
            assert!(!e.message().is_empty());
            None
        }
    }
}

/// Feeds bytes to `serve`'s frame decoder until they run out or one fails; whether every frame
/// decoded.
fn serve(bytes: &[u8]) -> bool {
    let mut input = bytes;
    for _ in 0..4 {
        match dts::wire::serve::read_message(&mut input) {
            Ok(None) => return true,
            Ok(Some(ToRobot::Daemon { request })) => check_names(&request),
            Ok(Some(_)) => {}
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return false;
            }
        }
    }
    true
}

#[test]
fn the_robots_decoders_refuse_every_name_out_of_the_root() {
    let cases: u32 = std::env::var("DTS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let (inputs, refused, hostile) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let count = |ok: bool| {
        inputs.fetch_add(1, Ordering::Relaxed);
        if !ok {
            refused.fetch_add(1, Ordering::Relaxed);
        }
    };
    runner
        .run(
            &(request(), mutations(), any::<bool>()),
            |((req, bad), ms, zstd)| {
                if bad {
                    hostile.fetch_add(1, Ordering::Relaxed);
                }
                // As generated: refused exactly when a name is hostile, by both decoders.
                let line = serde_json::to_vec(&req).unwrap();
                let decoded = daemon(&line);
                count(decoded.is_some());
                assert_eq!(decoded.is_none(), bad, "{req}");
                let msg = json!({"op": "daemon", "request": req});
                let mut frame = Frame::control(&msg);
                if zstd {
                    frame = Frame {
                        kind: Kind::CompressedControl,
                        payload: zstd::encode_all(&serde_json::to_vec(&msg).unwrap()[..], 3)
                            .unwrap(),
                    };
                }
                let bytes = frame.encode();
                let ok = serve(&bytes);
                count(ok);
                assert_eq!(ok, !bad, "{msg}");
                // Mutated: no panic, and whatever decodes holds only checked names.
                count(daemon(&mutate(&line, &ms)).is_some());
                count(serve(&mutate(&bytes, &ms)));
                // The JSON inside an intact frame, mutated.
                let inner = mutate(&serde_json::to_vec(&msg).unwrap(), &ms);
                count(serve(
                    &Frame {
                        kind: Kind::Control,
                        payload: inner,
                    }
                    .encode(),
                ));
                Ok(())
            },
        )
        .unwrap();
    eprintln!(
        "decode_fuzz: {cases} cases ({} with a hostile name), {} inputs fed to the two decoders, {} refused, no panic, every decoded name inside the root",
        hostile.load(Ordering::Relaxed),
        inputs.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
}
