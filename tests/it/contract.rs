//! The laptop↔robot contract (`dts::api`): its serde shapes stay what old robots send and old
//! records hold, a remote error crosses with its class and cause chain, and, against a
//! virtual Duckiebot (as root), a request the robot refuses as bad input exits 2 on the
//! laptop with the robot's message.

use crate::support::{self, TestContext};

use dts::api::{
    ContainerConfig, ErrorClass, ReleaseRecord, ReleaseState, RemoteError, Request, RestartPolicy,
    VolumeSource,
};

#[test]
fn old_records_and_requests_parse_and_keep_their_bytes() {
    // A `container.json` config as the first agents wrote it: every field given.
    let config = r#"{"name":"c","image":"sha256:aa","image_name":null,"entrypoint":null,"cmd":["sh"],"env":["A=1"],"workdir":null,"user":null,"hostname":null,"volumes":[{"source":{"named":"data"},"target":"/data","read_only":true}],"ports":[{"host_port":8080,"container_port":80,"protocol":"tcp","host_ip":null}],"network":"bridge","restart":{"policy":"on-failure","max_retries":3},"memory":null,"cpus":null,"device_roles":["camera"],"service":null,"release":null,"auto_remove":false,"log":{"max_size":10485760,"max_files":3},"stop_timeout":null}"#;
    let c: ContainerConfig = serde_json::from_str(config).unwrap();
    assert_eq!(
        c.restart,
        RestartPolicy::OnFailure {
            max_retries: Some(3)
        }
    );
    assert!(matches!(&c.volumes[0].source, VolumeSource::Named(n) if n.as_str() == "data"));
    assert_eq!(serde_json::to_string(&c).unwrap(), config);
    // A sparse one (`#[serde(default)]`).
    let c: ContainerConfig = serde_json::from_str(r#"{"name":"c","image":"i"}"#).unwrap();
    assert_eq!(c.restart, RestartPolicy::No);

    // A release record without `current` (not stored).
    let record = r#"{"release":2,"state":"rolled-back","created":"2026-01-01T00:00:00Z","stack":"duckiebot","services":{},"previous":1,"committed_at":null,"finished_at":null,"reason":"x","spec":{"stack":"duckiebot","services":[],"probation":{"secs":5,"nanos":0}}}"#;
    let r: ReleaseRecord = serde_json::from_str(record).unwrap();
    assert_eq!(r.state, ReleaseState::RolledBack);
    assert!(!r.current);

    // Requests keep their tags.
    assert_eq!(
        serde_json::to_string(&Request::Ps { all: true }).unwrap(),
        r#"{"op":"ps","all":true}"#
    );
    let old_deploy =
        r#"{"op":"deploy","spec":{"stack":"s","services":[],"probation":{"secs":5,"nanos":0}}}"#;
    assert!(matches!(
        serde_json::from_str::<Request>(old_deploy).unwrap(),
        Request::Deploy { detach: false, .. }
    ));
    // A volume name that would climb out of `volumes/` is refused while parsing.
    let bad = r#"{"op":"create","start":true,"config":{"name":"c","image":"i","volumes":[{"source":{"named":"../x"},"target":"/d","read_only":false}]}}"#;
    assert!(serde_json::from_str::<Request>(bad).is_err());
}

#[test]
fn remote_errors_cross_with_class_and_causes() {
    // What robots before wire 2.2 send: no causes; their class still counts.
    let old =
        r#"{"message":"nothing to roll back to: no release","bad_input":true,"not_found":false}"#;
    let e: RemoteError = serde_json::from_str(old).unwrap();
    assert_eq!(e.class(), ErrorClass::BadInput);
    assert_eq!(serde_json::to_string(&e).unwrap(), old);
    // An answer without a class is a failure.
    let e: RemoteError = serde_json::from_str(r#"{"message":"m"}"#).unwrap();
    assert_eq!(e.class(), ErrorClass::Failed);
    // Now: the chain comes along, and is the error's sources on the laptop.
    let e = RemoteError::new(ErrorClass::NotFound, "no container `x`")
        .with_causes(["reading state.json".to_string()]);
    let back: RemoteError = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert_eq!(back, e);
    assert_eq!(back.causes(), ["reading state.json"]);
    let source = std::error::Error::source(&back).map(|s| s.to_string());
    assert_eq!(source.as_deref(), Some("reading state.json"));
}

// ------------------------------------------------------------------------------------------------
// Against a virtual Duckiebot

fn can_run() -> bool {
    support::can_make_virtual_robot()
}

/// Issue 16: the robot classified a refusal as bad input, and the laptop exited 1 with only
/// the top message. Now it exits 2, as the same mistake made locally does.
#[test]
fn bad_input_found_on_the_robot_exits_2_with_the_robots_message() {
    if !can_run() {
        return;
    }
    let w = TestContext::new();
    w.ok(&["sim", "up", &w.name]);

    // A robot with no release has nothing to roll back to: the request's fault.
    let out = w.dts(&["duckiebot", "rollback", &w.name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nothing to roll back to"), "{err}");

    // A container the robot does not have: not found, a failure (exit 1), not bad input.
    let out = w.dts(&["duckiebot", "rm", &w.name, "no-such-container"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no container `no-such-container`"), "{err}");
}
