//! The compose corpus (`tests/data/compose-corpus/`): Duckietown's daffy and ente stacks and
//! typical users' files, each in a directory under one of Docker's compose file names with
//! its `.env` and env files, and an `expect` file: `ok`, or the exact error (`FILE:LINE:COL:
//! key: why`) a refused key gives.

use std::path::{Path, PathBuf};

use super::*;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compose-corpus")
}

fn env() -> BTreeMap<String, String> {
    [("ARCH", "arm64v8"), ("REGISTRY", "docker.io")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(case: &str) -> Result<Stack, ProfileError> {
    let (file, _) = find_compose_file(&corpus().join(case)).expect("a compose file");
    Stack::load(&file, &env())
}

#[test]
fn every_file_parses_or_says_which_key_is_refused_where() {
    let root = corpus();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "{cases:?}");
    let prefix = format!("{}/", root.display());
    for dir in cases {
        let case = dir.file_name().unwrap().to_str().unwrap().to_string();
        let want = std::fs::read_to_string(dir.join("expect")).unwrap();
        let got = match load(&case) {
            Ok(_) => "ok".to_string(),
            Err(e) => {
                assert!(e.is_bad_input(), "{case}: {e}");
                e.to_string().replace(&prefix, "")
            }
        };
        // `DTS_UPDATE_CORPUS=1` rewrites the expectations, to be read in review.
        if std::env::var_os("DTS_UPDATE_CORPUS").is_some() {
            std::fs::write(dir.join("expect"), format!("{got}\n")).unwrap();
            continue;
        }
        assert_eq!(got, want.trim_end(), "{case}");
    }
}

#[test]
fn docker_file_names_in_dockers_order() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(find_compose_file(tmp.path()).is_none());
    for name in [
        "docker-compose.yml",
        "docker-compose.yaml",
        "compose.yml",
        "compose.yaml",
    ] {
        std::fs::write(tmp.path().join(name), "services: {}\n").unwrap();
        let (file, note) = find_compose_file(tmp.path()).unwrap();
        assert_eq!(
            file,
            tmp.path().join(name),
            "the last written is Docker's first"
        );
        assert_eq!(note.is_some(), name != "docker-compose.yml");
    }
    let (src, notes) = resolve_stack_in(None, tmp.path()).unwrap();
    assert_eq!(src, StackSource::File(tmp.path().join("compose.yaml")));
    assert!(
        notes.iter().any(|n| n.contains("--stack duckiebot")),
        "{notes:?}"
    );
    let (src, _) = resolve_stack_in(Some("."), tmp.path()).unwrap();
    assert_eq!(src, StackSource::File(tmp.path().join("./compose.yaml")));
    let empty = tempfile::tempdir().unwrap();
    let (src, notes) = resolve_stack_in(None, empty.path()).unwrap();
    assert_eq!(src, StackSource::Builtin(DEFAULT_STACK.into()));
    assert!(notes.is_empty());
    assert_eq!(
        file_stack_name(&corpus().join("jupyter/compose.yml")),
        "jupyter"
    );
    assert_eq!(file_stack_name(Path::new("my-stack.yaml")), "my-stack");
}

#[test]
fn keys_with_dockers_meaning_reach_the_container() {
    let m: crate::oci::Digest = crate::oci::Digest::of(b"x");
    let s = load("jupyter").unwrap();
    let nb = &s.services["notebook"];
    let c = nb.container("notebook", &m).unwrap();
    assert_eq!(c.name, "notebook");
    assert_eq!(c.user.as_deref(), Some("jovyan"));
    assert_eq!(c.workdir.as_deref(), Some("/home/jovyan/work"));
    assert_eq!(
        nb.image, "jupyter/scipy-notebook:2024-01-15",
        ".env interpolates"
    );
    assert!(
        c.env.contains(&"JUPYTER_TOKEN=$ecret".to_string()),
        "{:?}",
        c.env
    );
    assert_eq!(c.labels["org.example.owner"], "lab-3");

    let s = load("dashboard").unwrap();
    let api = s.services["api"].container("api", &m).unwrap();
    assert_eq!(
        api.name, "dashboard-api",
        "container_name names the container"
    );
    assert_eq!(api.image_name.as_deref(), Some("me/dashboard-api:v2"));
    assert_eq!((api.log.max_size, api.log.max_files), (5 << 20, 2));
    assert!(!api.log.discard);
    assert!(api.env.contains(&"PRICE=$5".to_string()));
    let limits: Vec<(&str, u64, u64)> = api
        .ulimits
        .iter()
        .map(|u| (u.name.as_str(), u.soft, u.hard))
        .collect();
    assert_eq!(limits, [("nofile", 4096, 8192), ("core", 0, 0)]);
    assert_eq!(api.stop_timeout, Some(90));
    let web = s.services["web"].container("web", &m).unwrap();
    assert_eq!(web.labels["traefik.enable"], "false");
    assert_eq!(web.labels["com.example.tier"], "frontend");
    assert!(
        s.services["nolog"]
            .container("nolog", &m)
            .unwrap()
            .log
            .discard
    );

    let s = load("ros-nodes").unwrap();
    let cam = s.services["camera"].container("camera", &m).unwrap();
    // `environment` over `env_file`, as compose does.
    assert!(
        cam.env
            .contains(&"ROS_MASTER_URI=http://localhost:11311".to_string())
    );
    assert!(cam.env.contains(&"ROS_HOSTNAME=duckiebot".to_string()));
    assert!(cam.env.contains(&"LOG_LEVEL=info".to_string()));
    assert_eq!(
        s.services["camera"].privileges.host_devices[0].0,
        "/dev/video0"
    );
    let planner = s.services["planner"].container("planner", &m).unwrap();
    assert_eq!(planner.user.as_deref(), Some("1000:1000"));
    assert!(
        planner
            .env
            .contains(&"ROS_MASTER_URI=http://robot.local:11311".to_string())
    );
}

fn roles() -> BTreeMap<String, Vec<String>> {
    [
        ("camera", vec!["/dev/video0"]),
        ("motors", vec!["/dev/duckiebot/hat-i2c", "/dev/i2c-1"]),
        ("leds", vec!["/dev/duckiebot/hat-i2c", "/dev/i2c-1"]),
        ("gpu", vec!["/dev/nvhost-*"]),
        ("tof", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect()
}

#[test]
fn privileged_and_host_devices_become_roles_with_one_warning_line() {
    let mut s = load("ente").unwrap();
    let before = s.warnings.len();
    s.grant_privileges(Some(&roles())).unwrap();
    let lines = &s.warnings[before..];
    assert_eq!(lines.len(), 2, "one line per service: {lines:?}");
    assert_eq!(
        s.services["duckiebot-interface"].devices,
        ["camera", "leds", "motors", "gpu"]
    );
    let di = lines
        .iter()
        .find(|l| l.contains("duckiebot-interface"))
        .unwrap();
    assert!(
        di.ends_with(
            "ente/docker-compose.yaml:47:5: services.duckiebot-interface.privileged: `privileged: true`, `/dev/video0`, `/dev/i2c-1` not granted as Docker grants them; granted device roles camera, leds, motors, gpu instead"
        ),
        "{di}"
    );
    // A service that names its roles gets exactly those.
    let mut s = load("privileged-roles").unwrap();
    s.grant_privileges(Some(&roles())).unwrap();
    assert_eq!(s.services["drivers"].devices, ["motors", "leds"]);
    let mut s = load("privileged-roles").unwrap();
    s.grant_privileges(None).unwrap();
    assert!(
        s.warnings
            .last()
            .unwrap()
            .contains("granted device roles motors, leds instead")
    );
    // Without the robot's roles, or with a device no role grants: an error at the key.
    let mut s = load("ente").unwrap();
    let e = s.grant_privileges(None).unwrap_err().to_string();
    assert!(e.contains("ente/docker-compose.yaml:"), "{e}");
    assert!(e.contains("does not list its device roles"), "{e}");
    let mut s = load("ros-nodes").unwrap();
    let mut few = roles();
    few.remove("camera");
    let e = s.grant_privileges(Some(&few)).unwrap_err().to_string();
    assert!(
        e.contains("ros-nodes/compose.yaml:22:7: services.camera.devices[0]: `/dev/video0`: no device role of this robot grants it"),
        "{e}"
    );
}

#[test]
fn container_names_are_unique() {
    let text = "services:\n  a:\n    image: x\n    container_name: b\n  b:\n    image: y\n";
    let e = Stack::parse("s.yaml", text, &env())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("s.yaml:4:5: services.a.container_name: container name `b` is also the container of service `b`"),
        "{e}"
    );
}
