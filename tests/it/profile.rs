//! Robot profiles, robot.yaml, stack files and device-role resolution (`dts::profile`,
//! `dts::agent::devices`): every shipped file parses and agrees with the others, every error
//! names its file and key, and, as root, roles resolve to real character and block nodes made
//! with mknod in a temporary directory (never in the host's /dev).

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;

use dts::agent::devices::{DeviceKind, resolve};
use dts::profile::robot::DEFAULT_ROBOT_YAML;
use dts::profile::stack::{
    DependsCondition, HealthTest, NetworkMode, Protocol, RestartPolicy, VolumeSource,
};
use dts::profile::{
    MountSpec, NodeSpec, ProfileError, RobotConfig, RobotProfile, RoleSpec, Stack, StackSource,
    effective_roles, resolve_stack_arg,
};

/// The roles every shipped profile defines (empty where the hardware is missing), so that one
/// stack grants the same roles on every configuration.
const STANDARD_ROLES: [&str; 9] = [
    "battery",
    "button",
    "camera",
    "display",
    "imu",
    "leds",
    "motors",
    "tof",
    "wheel-encoders",
];

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn arch_env() -> BTreeMap<String, String> {
    env(&[("ARCH", "arm64v8")])
}

fn stack(text: &str) -> Result<Stack, ProfileError> {
    Stack::parse("s.yaml", text, &arch_env())
}

fn stack_err(text: &str) -> String {
    stack(text).unwrap_err().to_string()
}

#[test]
fn every_shipped_profile_parses_and_defines_the_standard_roles() {
    let known = RobotProfile::known();
    assert_eq!(known, ["DB18", "DB19", "DB21M", "DB21J", "DBR4", "virtual"]);
    for cfg in known {
        let p = RobotProfile::builtin(cfg).unwrap();
        assert_eq!(p.configuration, cfg);
        assert_eq!(p.robot_type, "duckiebot");
        assert!(p.description.is_some(), "{cfg}");
        let roles: Vec<&str> = p.roles.keys().map(String::as_str).collect();
        assert_eq!(roles, STANDARD_ROLES, "{cfg}");
        // Drivers open real nodes: the motors are the HAT's I2C bus 1 everywhere.
        let motors = &p.roles["motors"];
        assert!(
            motors
                .nodes
                .iter()
                .any(|n| n.container_path() == "/dev/i2c-1"),
            "{cfg}: {motors:?}"
        );
        assert!(motors.groups.contains(&"i2c".to_string()), "{cfg}");
        for (name, role) in &p.roles {
            for n in &role.nodes {
                assert!(n.host.starts_with("/dev/"), "{cfg}.{name}: {n}");
                assert!(n.container_path().starts_with("/dev/"), "{cfg}.{name}: {n}");
                if let Some(stable) = n.host.strip_prefix("/dev/duckiebot/") {
                    assert!(
                        udev_names().contains(&stable.to_string()),
                        "{cfg}.{name}: {n} has no rule in udev/"
                    );
                }
            }
        }
    }
    let e = RobotProfile::builtin("DB99").unwrap_err().to_string();
    assert!(
        e.contains("DB99") && e.contains("DB21J, DBR4, virtual"),
        "{e}"
    );
}

/// The `/dev/duckiebot/` names the shipped udev rules create.
fn udev_names() -> Vec<String> {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("udev/70-duckiebot.rules"),
    )
    .unwrap();
    rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split("SYMLINK+=\"duckiebot/").nth(1))
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn real_device_facts_per_configuration() {
    let p = |c| RobotProfile::builtin(c).unwrap();
    // 32-bit Pi camera: MMAL over vchiq. 64-bit Pi: V4L2 video0 through the udev name.
    assert_eq!(p("DB19").roles["camera"].nodes[0].host, "/dev/vchiq");
    let dbr4_cam = &p("DBR4").roles["camera"].nodes[0];
    assert_eq!(
        (dbr4_cam.host.as_str(), dbr4_cam.container_path()),
        ("/dev/duckiebot/camera", "/dev/video0")
    );
    // Jetson: argus socket, nvmap and the nvhost engines.
    for cfg in ["DB21M", "DB21J"] {
        let cam = &p(cfg).roles["camera"];
        assert_eq!(cam.mounts[0].host, "/tmp/argus_socket");
        let hosts: Vec<&str> = cam.nodes.iter().map(|n| n.host.as_str()).collect();
        assert_eq!(hosts, ["/dev/nvmap", "/dev/nvhost-*"], "{cfg}");
        // The L4T libraries come as the CDI device dt-agent generates from l4t.csv.
        assert_eq!(cam.cdi, ["nvidia.com/gpu=l4t"], "{cfg}");
        assert!(!p(cfg).roles["imu"].nodes.is_empty(), "{cfg} has an IMU");
        assert!(p(cfg).roles["tof"].optional);
    }
    // Hardware a configuration lacks is an empty role.
    assert_eq!(p("DB18").roles["wheel-encoders"], RoleSpec::default());
    assert_eq!(p("DB19").roles["imu"], RoleSpec::default());
    // The virtual robot's nodes carry the numbers of the drivers they stand for.
    let v = p("virtual");
    for role in v.roles.values() {
        for n in &role.nodes {
            assert!(v.sim_nodes.contains_key(&n.host), "{n} has no sim node");
        }
    }
    let i2c = v.sim_nodes["/dev/i2c-1"];
    assert_eq!((i2c.kind, i2c.major, i2c.minor), (DeviceKind::Char, 89, 1));
    let video = v.sim_nodes["/dev/video0"];
    assert_eq!((video.major, video.minor), (81, 0));
}

#[test]
fn every_shipped_stack_parses_and_grants_roles_every_profile_has() {
    assert_eq!(Stack::known(), ["duckiebot", "lane-following"]);
    for name in Stack::known() {
        let s = Stack::builtin(name, &arch_env()).unwrap();
        assert!(s.warnings.is_empty(), "{name}: {:?}", s.warnings);
        for svc in s.services.values() {
            assert!(
                svc.image.starts_with("duckietown/dt-") && svc.image.ends_with(":daffy-arm64v8"),
                "{}",
                svc.image
            );
            assert_eq!(svc.network_mode, NetworkMode::Host);
        }
        for cfg in RobotProfile::known() {
            s.check_roles(&RobotProfile::builtin(cfg).unwrap().roles)
                .unwrap_or_else(|e| panic!("{name} on {cfg}: {e}"));
        }
    }
    let db = Stack::builtin("duckiebot", &arch_env()).unwrap();
    assert_eq!(
        db.start_order(),
        [vec!["ros", "duckiebot-interface"], vec!["car-interface"]]
    );
    let iface = &db.services["duckiebot-interface"];
    assert_eq!(iface.restart, RestartPolicy::UnlessStopped);
    assert!(iface.devices.contains(&"camera".to_string()));
    assert_eq!(iface.volumes[0].source, VolumeSource::Bind("/data".into()));
    let lf = Stack::builtin("lane-following", &env(&[("ARCH", "arm32v7")])).unwrap();
    assert_eq!(lf.start_order().len(), 3);
    assert_eq!(lf.start_order()[2], ["core"]);
    let core = &lf.services["core"];
    assert_eq!(core.image, "duckietown/dt-core:daffy-arm32v7");
    assert_eq!(core.mem_limit, Some(800 << 20));
    assert_eq!(
        core.command.as_deref(),
        Some(&["dt-launcher-lane_following".to_string()][..])
    );
    // DISTRO swaps the branch of every image.
    let ente = Stack::builtin(
        "duckiebot",
        &env(&[("ARCH", "arm64v8"), ("DISTRO", "ente")]),
    )
    .unwrap();
    assert_eq!(
        ente.services["ros"].image,
        "duckietown/dt-ros-commons:ente-arm64v8"
    );
}

#[test]
fn stack_arguments_and_set() {
    assert_eq!(
        resolve_stack_arg(None),
        StackSource::Builtin("duckiebot".into())
    );
    assert_eq!(
        resolve_stack_arg(Some("stacks/mine")),
        StackSource::File("stacks/mine".into())
    );
    let e = resolve_stack_arg(Some("nope"))
        .load(&arch_env())
        .unwrap_err();
    assert!(e.is_bad_input());
    assert!(
        e.to_string()
            .contains("unknown stack `nope` (known: duckiebot, lane-following)")
    );

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mine.yaml");
    std::fs::write(&f, "services:\n  a:\n    image: x/y:${ARCH}\n").unwrap();
    let s = resolve_stack_arg(Some(f.to_str().unwrap()))
        .load(&arch_env())
        .unwrap();
    assert_eq!(s.services["a"].image, "x/y:arm64v8");
    let e = resolve_stack_arg(Some(dir.path().join("gone.yaml").to_str().unwrap()))
        .load(&arch_env())
        .unwrap_err();
    assert!(
        !e.is_bad_input() && e.to_string().contains("gone.yaml"),
        "{e}"
    );

    let mut s = Stack::builtin("duckiebot", &arch_env()).unwrap();
    s.apply_set("car-interface=me/car:exp1").unwrap();
    assert_eq!(s.services["car-interface"].image, "me/car:exp1");
    let e = s.apply_set("carinterface=me/car:exp1").unwrap_err();
    assert!(e.is_bad_input());
    assert!(
        e.to_string().contains(
            "no service `carinterface` (services: car-interface, duckiebot-interface, ros)"
        ),
        "{e}"
    );
    for bad in ["car-interface", "=x", "car-interface="] {
        assert!(
            matches!(s.apply_set(bad), Err(ProfileError::BadSet { .. })),
            "{bad}"
        );
    }
    let e = s.apply_set("ros=Not A Ref").unwrap_err().to_string();
    assert!(
        e.contains("ros") && e.contains("not an image reference"),
        "{e}"
    );
}

const ROBOT_YAML: &str = "\
hostname: mybot
type: duckiebot
configuration: DB21J
devices:
  motors:
    nodes: [/dev/i2c-7]
    groups: [i2c, 998]
  camera:
    nodes: [\"/dev/duckiebot/camera:/dev/video0\"]
    mounts: [\"/tmp/argus_socket\"]
  sonar:
    nodes: [\"/dev/ttyUSB*\"]
    optional: true
";

#[test]
fn robot_yaml_replaces_whole_roles() {
    let c = RobotConfig::from_str(DEFAULT_ROBOT_YAML, ROBOT_YAML).unwrap();
    assert_eq!(
        (
            c.hostname.as_str(),
            c.robot_type.as_str(),
            c.configuration.as_str()
        ),
        ("mybot", "duckiebot", "DB21J")
    );
    let roles = effective_roles(&c).unwrap();
    let profile = RobotProfile::builtin("DB21J").unwrap();
    // Replaced whole: the profile's GPIO mounts for motors are gone.
    assert_eq!(
        roles["motors"],
        RoleSpec {
            nodes: vec![NodeSpec::parse("/dev/i2c-7").unwrap()],
            mounts: vec![],
            groups: vec!["i2c".into(), "998".into()],
            optional: false,
            ..Default::default()
        }
    );
    assert_eq!(
        roles["camera"].mounts,
        [MountSpec::parse("/tmp/argus_socket").unwrap()]
    );
    assert!(roles["camera"].groups.is_empty());
    // Untouched roles come from the profile; new ones are added.
    assert_eq!(roles["leds"], profile.roles["leds"]);
    assert!(roles["sonar"].optional && roles["sonar"].nodes[0].is_glob());
    assert_eq!(roles.len(), profile.roles.len() + 1);

    // `type` may be left out; then the profile's.
    let c = RobotConfig::from_str("r.yaml", "hostname: a\nconfiguration: virtual\n").unwrap();
    assert_eq!(c.robot_type, "duckiebot");
    assert_eq!(c.keep_releases, 3, "releases.keep defaults to 3");
    let k = "hostname: a\nconfiguration: virtual\nreleases:\n  keep: 5\n";
    assert_eq!(RobotConfig::from_str("r.yaml", k).unwrap().keep_releases, 5);
    assert_eq!(
        effective_roles(&c).unwrap(),
        RobotProfile::builtin("virtual").unwrap().roles
    );

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("robot.yaml");
    std::fs::write(&f, ROBOT_YAML).unwrap();
    assert_eq!(RobotConfig::load(&f).unwrap().hostname, "mybot");
    let e = RobotConfig::load(&dir.path().join("none.yaml")).unwrap_err();
    assert!(
        !e.is_bad_input() && e.to_string().contains("none.yaml"),
        "{e}"
    );
}

#[test]
fn robot_yaml_errors_name_file_and_key() {
    let base = "hostname: mybot\nconfiguration: DB21J\n";
    let cases: &[(&str, &str)] = &[
        (
            "devices:\n  motors:\n    nodez: [/dev/i2c-1]\n",
            "robot.yaml: devices.motors.nodez: unknown key",
        ),
        (
            "devices:\n  motors:\n    nodes: [dev/i2c-1]\n",
            "robot.yaml: devices.motors.nodes[0]: device node `dev/i2c-1` must be an absolute path",
        ),
        (
            "devices:\n  motors:\n    nodes: /dev/i2c-1\n",
            "robot.yaml: devices.motors.nodes: expected a list of strings, found a string",
        ),
        (
            "devices:\n  camera:\n    mounts: [\"/a:/b:/c:ro\"]\n",
            "robot.yaml: devices.camera.mounts[0]: `/a:/b:/c:ro`",
        ),
        (
            "devices:\n  camera:\n    cdi: [nvidia.com/gpu]\n",
            "robot.yaml: devices.camera.cdi[0]: `nvidia.com/gpu` is not a CDI device name",
        ),
        (
            "devices:\n  tof:\n    optional: maybe\n",
            "robot.yaml: devices.tof.optional: expected true or false",
        ),
        (
            "devices:\n  tof:\n    groups: [\"a b\"]\n",
            "robot.yaml: devices.tof.groups[0]: `a b` is not a group name",
        ),
        (
            "devices:\n  Motors: {}\n",
            "robot.yaml: devices.Motors: role name `Motors`",
        ),
        (
            "devices: [motors]\n",
            "robot.yaml: devices: expected a mapping, found a list",
        ),
        ("colour: red\n", "robot.yaml: colour: unknown key"),
        (
            "releases: {keep: 0}\n",
            "robot.yaml: releases.keep: must be at least 1",
        ),
        (
            "releases: {kept: 2}\n",
            "robot.yaml: releases.kept: unknown key",
        ),
        (
            "type: watchtower\n",
            "robot.yaml: type: `watchtower` disagrees with configuration DB21J",
        ),
    ];
    for (extra, want) in cases {
        let e = RobotConfig::from_str("robot.yaml", &format!("{base}{extra}")).unwrap_err();
        assert!(e.is_bad_input(), "{extra}");
        assert!(
            e.to_string().starts_with(want),
            "{extra}\n got: {e}\nwant: {want}"
        );
    }
    for (text, want) in [
        ("configuration: DB21J\n", "robot.yaml: hostname: missing"),
        (
            "hostname: my_bot\nconfiguration: DB21J\n",
            "robot.yaml: hostname: `my_bot` is not a hostname",
        ),
        ("hostname: a\n", "robot.yaml: configuration: missing"),
        (
            "hostname: a\nconfiguration: DB99\n",
            "robot.yaml: configuration: no profile for `DB99` (known: DB18,",
        ),
        ("hostname: [a\n", "robot.yaml: "),
    ] {
        let e = RobotConfig::from_str("robot.yaml", text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(want), "{text}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn stack_errors_name_file_and_key() {
    let svc =
        |body: &str| format!("services:\n  core:\n    image: duckietown/dt-core:daffy\n{body}");
    let cases: Vec<(String, &str)> = vec![
        (
            svc("    imagez: x\n"),
            "s.yaml:4:5: services.core.imagez: unknown key",
        ),
        (
            svc("    pid: host\n"),
            "s.yaml:4:5: services.core.pid: `pid` is refused: every container has its own namespaces",
        ),
        (
            svc("    devices: [video0]\n"),
            "s.yaml:4:5: services.core.devices[0]: `video0`: expected a host device path (`/dev/video0`) or a CDI device name (vendor.com/class=name); hint: grant device roles",
        ),
        (
            svc("    devices: [nvidia.com/gpu=-all]\n"),
            "s.yaml:4:5: services.core.devices[0]: `nvidia.com/gpu=-all`: device name `-all` must start and end",
        ),
        (
            svc("    privileged: maybe\n"),
            "s.yaml:4:5: services.core.privileged: expected true or false, found a string",
        ),
        (
            svc("    x-duckiebot: { devices: [camera], stages: 1 }\n"),
            "s.yaml:4:5: services.core.x-duckiebot.stages: unknown key",
        ),
        (
            svc("    x-duckiebot: { stage: -1 }\n"),
            "s.yaml:4:5: services.core.x-duckiebot.stage: expected a non-negative integer, found `-1`",
        ),
        (
            svc("    x-duckiebot: { devices: [camera, camera] }\n"),
            "s.yaml:4:5: services.core.x-duckiebot.devices[1]: role `camera` is listed twice",
        ),
        (
            svc("    volumes: [\"data:/data\"]\n"),
            "s.yaml:4:5: services.core.volumes[0]: `data:/data`: volume `data` is not declared",
        ),
        (
            svc("    volumes: [\"./code:/code\"]\n"),
            "s.yaml:4:5: services.core.volumes[0]: `./code:/code`: a bind mount's source is a path on the robot",
        ),
        (
            svc("    volumes: [\"/data\"]\n"),
            "s.yaml:4:5: services.core.volumes[0]: `/data`: anonymous volumes are not supported",
        ),
        (
            svc("    volumes: [\"/data:/data:z\"]\n"),
            "s.yaml:4:5: services.core.volumes[0]: `/data:/data:z`: mode `z`",
        ),
        (
            svc("    volumes: [{type: bind, source: /a, target: /b}]\n"),
            "s.yaml:4:5: services.core.volumes[0]: the long volume syntax is not supported",
        ),
        (
            svc("    ports: [\"80\"]\n"),
            "s.yaml:4:5: services.core.ports[0]: `80`: expected HOST:CONTAINER",
        ),
        (
            svc("    network_mode: service:ros\n"),
            "s.yaml:4:5: services.core.network_mode: `service:ros` is not supported",
        ),
        (
            svc("    restart: sometimes\n"),
            "s.yaml:4:5: services.core.restart: `sometimes` is not `no`",
        ),
        (
            svc("    depends_on: { ros: { condition: service_ready } }\n"),
            "s.yaml:4:5: services.core.depends_on.ros.condition: `service_ready`",
        ),
        (
            svc("    depends_on: { ros: { required: true } }\n"),
            "s.yaml:4:5: services.core.depends_on.ros.required: unknown key",
        ),
        (
            svc("    depends_on: [ros]\n"),
            "s.yaml:4:5: services.core.depends_on: no service `ros` in this stack",
        ),
        (
            svc("    depends_on: [core]\n"),
            "s.yaml:4:5: services.core.depends_on: a service cannot depend on itself",
        ),
        (
            svc("    healthcheck: { test: [\"CMD\"] }\n"),
            "s.yaml:4:5: services.core.healthcheck.test: expected [\"CMD\", ARG…]",
        ),
        (
            svc("    healthcheck: { interval: 30 }\n"),
            "s.yaml:4:5: services.core.healthcheck.interval: `30` is not a duration",
        ),
        (
            svc("    healthcheck: { timeout: 0s }\n"),
            "s.yaml:4:5: services.core.healthcheck.timeout: must be longer than zero",
        ),
        (
            svc("    healthcheck: { disable: true, test: [\"CMD\", \"true\"] }\n"),
            "s.yaml:4:5: services.core.healthcheck.test: a test cannot be given with `disable: true`",
        ),
        (
            svc("    healthcheck: { retry: 3 }\n"),
            "s.yaml:4:5: services.core.healthcheck.retry: unknown key",
        ),
        (
            svc("    mem_limit: 1q\n"),
            "s.yaml:4:5: services.core.mem_limit: `1q` is not a size",
        ),
        (
            svc("    mem_limit: 1k\n"),
            "s.yaml:4:5: services.core.mem_limit: 1024 bytes is below the 6 MiB minimum",
        ),
        (
            svc("    cpus: 0\n"),
            "s.yaml:4:5: services.core.cpus: expected a positive number of CPUs",
        ),
        (
            svc("    cpus: many\n"),
            "s.yaml:4:5: services.core.cpus: expected a number, found `many`",
        ),
        (
            svc("    command: \"bash -c 'x\"\n"),
            "s.yaml:4:5: services.core.command: `bash -c 'x` has an unterminated `'`",
        ),
        (
            svc("    entrypoint: 5\n"),
            "s.yaml:4:5: services.core.entrypoint: expected a string or a list, found a number",
        ),
        (
            svc("    environment: [\"=x\"]\n"),
            "s.yaml:4:5: services.core.environment[0]: `` is not an environment variable name",
        ),
        (
            svc("    environment: 5\n"),
            "s.yaml:4:5: services.core.environment: expected a mapping or a list of K=V",
        ),
        (
            svc("    labels: 5\n"),
            "s.yaml:4:5: services.core.labels: expected a mapping or a list of KEY=VALUE, found a number",
        ),
        (
            svc("    command: echo ${HOME\n"),
            "s.yaml:4:5: services.core.command: unterminated `${`",
        ),
        (
            svc("    command: echo $1\n"),
            "s.yaml:4:5: services.core.command: invalid interpolation",
        ),
        (
            svc("    environment: { TAG: \"${TAG:?set TAG to deploy}\" }\n"),
            "s.yaml:4:5: services.core.environment.TAG: required variable `TAG` is not set: set TAG to deploy",
        ),
        (
            "services:\n  core:\n    command: x\n".into(),
            "s.yaml:2:3: services.core.image: missing",
        ),
        (
            "services:\n  core:\n    image: \"dt-core:${NOPE}\"\n".into(),
            "s.yaml:3:5: services.core.image: `dt-core:` is not an image reference",
        ),
        (
            "services:\n  \"my core\":\n    image: a\n".into(),
            "s.yaml:2:3: services.my core: service name `my core`",
        ),
        (
            "services: {}\n".into(),
            "s.yaml:1:1: services: a stack runs at least one service",
        ),
        ("volumes: {}\n".into(), "s.yaml: services: missing"),
        (
            "name: x\nservices:\n  a:\n    image: a\n".into(),
            "s.yaml:1:1: name: unknown key",
        ),
        (
            "services:\n  a:\n    image: a\nvolumes:\n  data:\n    driver: local\n".into(),
            "s.yaml:6:5: volumes.data.driver: unknown key",
        ),
        (
            "services:\n  - a\n".into(),
            "s.yaml:1:1: services: expected a mapping, found a list",
        ),
        ("services:\n  a: {image: a\n".into(), "s.yaml: "),
    ];
    for (text, want) in &cases {
        let e = stack(text).unwrap_err();
        assert!(e.is_bad_input(), "{text}");
        let e = e.to_string();
        assert!(e.starts_with(want), "{text}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn a_full_service() {
    let text = r#"
version: "3.8"
x-common: &common
  restart: on-failure:3
volumes:
  logs:
services:
  api:
    <<: *common
    image: me/api:${TAG:-latest}-${ARCH}
    command: [serve, --port, "8080"]
    entrypoint: /bin/sh -c 'exec "$$0" "$$@"'
    environment:
      A: 1
      B: "two"
      C: true
      HOME:
      MISSING:
    volumes:
      - logs:/var/log/api:ro
      - /data:/data
    ports: ["8080:80", "5353:5353/udp"]
    network_mode: bridge
    depends_on:
      db: { condition: service_healthy }
    healthcheck:
      test: curl -f http://localhost/ || exit 1
      interval: 1m30s
      timeout: 10s
      retries: "5"
      start_period: 500ms
    mem_limit: 512m
    cpus: ${CPUS:-1.5}
    devices: [nvidia.com/gpu=l4t, nvidia.com/gpu=l4t]
    x-duckiebot:
      devices: [camera]
      stage: 2
    x-notes: ignored
  db:
    image: me/db
    environment: ["K=V=W", "HOME", "NOPE"]
    healthcheck: { test: ["CMD", "pg_isready", "-q"] }
    x-duckiebot: { stage: "2" }
  once:
    image: me/once
    restart: no
    healthcheck: { test: ["NONE"] }
  init:
    image: me/init
    healthcheck: { disable: true }
"#;
    let s = Stack::parse(
        "s.yaml",
        text,
        &env(&[("ARCH", "amd64"), ("HOME", "/root")]),
    )
    .unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(s.volumes.iter().collect::<Vec<_>>(), ["logs"]);
    let api = &s.services["api"];
    assert_eq!(api.image, "me/api:latest-amd64");
    assert_eq!(api.restart, RestartPolicy::OnFailure(Some(3)));
    assert_eq!(api.command.as_ref().unwrap(), &["serve", "--port", "8080"]);
    assert_eq!(
        api.entrypoint.as_ref().unwrap(),
        &["/bin/sh", "-c", r#"exec "$0" "$@""#]
    );
    let envs: Vec<(&str, &str)> = api
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        envs,
        [("A", "1"), ("B", "two"), ("C", "true"), ("HOME", "/root")]
    );
    assert_eq!(api.volumes[0].source, VolumeSource::Named("logs".into()));
    assert!(api.volumes[0].read_only);
    assert_eq!(api.volumes[1].source, VolumeSource::Bind("/data".into()));
    assert!(!api.volumes[1].read_only);
    assert_eq!(api.ports[1].protocol, Protocol::Udp);
    assert_eq!(api.network_mode, NetworkMode::Bridge);
    assert_eq!(
        api.depends_on[0].condition,
        DependsCondition::ServiceHealthy
    );
    let hc = api.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test,
        Some(HealthTest::Shell(
            "curl -f http://localhost/ || exit 1".into()
        ))
    );
    assert_eq!(hc.interval().as_secs(), 90);
    assert_eq!(hc.timeout().as_secs(), 10);
    assert_eq!(hc.retries(), 5);
    assert_eq!(hc.start_period().as_millis(), 500);
    assert_eq!(api.mem_limit, Some(512 << 20));
    assert_eq!(api.cpus, Some(1.5));
    assert_eq!(
        (api.devices.as_slice(), api.stage),
        (&["camera".to_string()][..], 2)
    );
    // Compose's `devices:` with CDI names, once each, reaching the container config.
    assert_eq!(api.cdi_devices, ["nvidia.com/gpu=l4t"]);
    let manifest: dts::oci::Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    let c = api.container("api", &manifest).unwrap();
    assert_eq!(c.cdi_devices, ["nvidia.com/gpu=l4t"]);
    let db = &s.services["db"];
    assert_eq!(db.environment["K"], "V=W");
    assert_eq!(db.environment["HOME"], "/root");
    assert!(!db.environment.contains_key("NOPE"));
    assert_eq!(
        db.healthcheck.as_ref().unwrap().test,
        Some(HealthTest::Exec(vec!["pg_isready".into(), "-q".into()]))
    );
    let hc = db.healthcheck.as_ref().unwrap();
    assert_eq!((hc.interval().as_secs(), hc.retries()), (30, 3));
    assert_eq!(s.services["once"].restart, RestartPolicy::No);
    assert!(s.services["once"].healthcheck.as_ref().unwrap().disable);
    assert!(s.services["init"].healthcheck.as_ref().unwrap().disable);
    assert_eq!(s.start_order(), [vec!["init", "once"], vec!["db", "api"]]);
}

#[test]
fn interpolation_through_a_stack() {
    let text = "services:\n  a:\n    image: \"${REG:-docker.io}/me/a:${TAG-x}-$ARCH\"\n    environment:\n      LIT: \"$$HOME\"\n      U: \"${UNSET}\"\n      E: \"${EMPTY:-fallback}\"\n      P: \"${EMPTY+set-but-empty}\"\n";
    let s = Stack::parse("s.yaml", text, &env(&[("ARCH", "arm32v7"), ("EMPTY", "")])).unwrap();
    let a = &s.services["a"];
    assert_eq!(a.image, "docker.io/me/a:x-arm32v7");
    assert_eq!(a.environment["LIT"], "$HOME");
    assert_eq!(a.environment["U"], "");
    assert_eq!(a.environment["E"], "fallback");
    assert_eq!(a.environment["P"], "set-but-empty");
    assert_eq!(
        s.warnings,
        ["s.yaml: services.a.environment.U: variable `UNSET` is not set; using an empty string"]
    );
    // Keys are not interpolated.
    let s = stack("services:\n  a:\n    image: a\n    environment: {\"$ARCH\": v}\n").unwrap();
    assert!(s.services["a"].environment.contains_key("$ARCH"));
    // Ports are ignored off the bridge, and said so.
    let s = stack("services:\n  a:\n    image: a\n    ports: [\"1:2\"]\n").unwrap();
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("services.a.ports: ignored"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn start_order_follows_stages_then_dependencies() {
    let s = stack(
        "services:
  core: { image: c, depends_on: [lane], x-duckiebot: { stage: 2 } }
  lane: { image: l, depends_on: [car], x-duckiebot: { stage: 2 } }
  car: { image: c, depends_on: [iface], x-duckiebot: { stage: 1 } }
  iface: { image: i, depends_on: [ros, zz] }
  ros: { image: r }
  zz: { image: z, depends_on: [ros] }
  aa: { image: a }
",
    )
    .unwrap();
    assert_eq!(
        s.start_order(),
        [
            vec!["aa", "ros", "zz", "iface"],
            vec!["car"],
            vec!["lane", "core"]
        ]
    );
    let e = stack_err(
        "services:\n  a: { image: a, depends_on: [b] }\n  b: { image: b, depends_on: [c] }\n  c: { image: c, depends_on: [a] }\n",
    );
    assert_eq!(
        e,
        "s.yaml:2:3: services.a.depends_on: dependency cycle: a → b → c → a"
    );
    let e = stack_err(
        "services:\n  a: { image: a, depends_on: [b] }\n  b: { image: b, x-duckiebot: { stage: 1 } }\n",
    );
    assert_eq!(
        e,
        "s.yaml:2:3: services.a.depends_on: `b` is in stage 1, which starts after this service's stage 0"
    );
    // The robot's roles are checked against what the stack grants.
    let s =
        stack("services:\n  a: { image: a, x-duckiebot: { devices: [camera, sonar] } }\n").unwrap();
    let e = s
        .check_roles(&RobotProfile::builtin("virtual").unwrap().roles)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "s.yaml: services.a.x-duckiebot.devices[1]: the robot has no device role `sonar`"
        ),
        "{e}"
    );
}

// ---- as root: real nodes ----

struct Nodes {
    dir: tempfile::TempDir,
}

impl Nodes {
    fn new() -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev/duckiebot")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nvideo:x:44:\ni2c:x:998:duckie\ngpio:x:997:\n",
        )
        .unwrap();
        Nodes { dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_string()
    }

    fn mknod(&self, rel: &str, kind: rustix::fs::FileType, major: u32, minor: u32, mode: u32) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            self.dir.path().join(rel),
            kind,
            rustix::fs::Mode::from_raw_mode(mode),
            rustix::fs::makedev(major, minor),
        )
        .unwrap_or_else(|e| panic!("mknod {rel}: {e}"));
        // mknod's mode is filtered by the umask; set it exactly.
        rustix::fs::chmod(
            self.dir.path().join(rel),
            rustix::fs::Mode::from_raw_mode(mode),
        )
        .unwrap();
    }

    fn roles(&self, yaml: &str) -> BTreeMap<String, RoleSpec> {
        let text = format!(
            "hostname: t\nconfiguration: virtual\ndevices:\n{}",
            yaml.replace("@", self.dir.path().to_str().unwrap())
        );
        let c = RobotConfig::from_str("robot.yaml", &text).unwrap();
        c.devices
    }
}

fn granted(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn root_resolves_real_nodes_through_udev_names() {
    if !support::require_root("mknods device nodes in a tempdir") {
        return;
    }
    use rustix::fs::FileType;
    let n = Nodes::new();
    n.mknod("dev/i2c-1", FileType::CharacterDevice, 89, 1, 0o660);
    n.mknod("dev/i2c-13", FileType::CharacterDevice, 89, 13, 0o660);
    n.mknod("dev/video0", FileType::CharacterDevice, 81, 0, 0o660);
    n.mknod("dev/loop7", FileType::BlockDevice, 7, 7, 0o600);
    rustix::fs::chown(
        n.dir.path().join("dev/i2c-1"),
        Some(rustix::fs::Uid::from_raw(0)),
        Some(rustix::fs::Gid::from_raw(998)),
    )
    .unwrap();
    // What the udev rules make: a symlink to the kernel's node.
    std::os::unix::fs::symlink("../video0", n.dir.path().join("dev/duckiebot/camera")).unwrap();
    std::fs::write(n.dir.path().join("dev/not-a-node"), "").unwrap();
    std::fs::write(n.dir.path().join("argus_socket"), "").unwrap();
    let roles = n.roles(
        "  camera:
    nodes: [\"@/dev/duckiebot/camera:/dev/video0\"]
    mounts: [\"@/argus_socket:/tmp/argus_socket\"]
    groups: [video]
  motors: { nodes: [\"@/dev/i2c-1:/dev/i2c-1\"], groups: [i2c] }
  leds: { nodes: [\"@/dev/i2c-1:/dev/i2c-1\"], groups: [i2c, \"4242\"] }
  buses: { nodes: [\"@/dev/i2c-*\"], groups: [i2c] }
  disk: { nodes: [\"@/dev/loop7:/dev/loop0\"] }
  broken: { nodes: [\"@/dev/not-a-node\"] }
  gone: { nodes: [\"@/dev/i2c-99\"] }
  gone-glob: { nodes: [\"@/dev/spi*\"] }
  maybe:
    nodes: [\"@/dev/i2c-99\", \"@/dev/spi*\", \"@/dev/i2c-13:/dev/i2c-13\"]
    mounts: [\"@/nothing\"]
    groups: [nogroup]
    optional: true
  nomount: { mounts: [\"@/nothing\"] }
",
    );
    let root = n.dir.path();
    let r = resolve(
        &roles,
        &granted(&["camera", "motors", "leds", "disk"]),
        root,
    )
    .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let got: Vec<(String, &str, DeviceKind, u32, u32)> = r
        .devices
        .iter()
        .map(|d| {
            (
                d.host_path
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string(),
                d.container_path.to_str().unwrap(),
                d.kind,
                d.major,
                d.minor,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "dev/duckiebot/camera".to_string(),
                "/dev/video0",
                DeviceKind::Char,
                81,
                0
            ),
            (
                "dev/i2c-1".to_string(),
                "/dev/i2c-1",
                DeviceKind::Char,
                89,
                1
            ),
            (
                "dev/loop7".to_string(),
                "/dev/loop0",
                DeviceKind::Block,
                7,
                7
            ),
        ]
    );
    let i2c = &r.devices[1];
    assert_eq!((i2c.file_mode, i2c.uid, i2c.gid), (0o660, 0, 998));
    assert_eq!(r.devices[2].file_mode, 0o600);
    assert_eq!(r.mounts.len(), 1);
    assert_eq!(r.mounts[0].container, Path::new("/tmp/argus_socket"));
    assert!(!r.mounts[0].read_only);
    assert_eq!(r.gids, [44, 998, 4242]);

    // Wildcards expand to every matching node, sorted, each at its own path.
    let r = resolve(&roles, &granted(&["buses"]), root).unwrap();
    let paths: Vec<String> = r
        .devices
        .iter()
        .map(|d| {
            d.container_path
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(paths, ["dev/i2c-1", "dev/i2c-13"]);
    assert_eq!(r.devices[1].minor, 13);

    // Optional: what is missing is a warning, what is there is granted.
    let r = resolve(&roles, &granted(&["maybe"]), root).unwrap();
    assert_eq!(r.devices.len(), 1);
    assert_eq!(r.devices[0].container_path, Path::new("/dev/i2c-13"));
    assert!(r.mounts.is_empty() && r.gids.is_empty());
    assert_eq!(r.warnings.len(), 4, "{:?}", r.warnings);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("i2c-99: no such device node"))
    );

    let err = |names: &[&str]| {
        resolve(&roles, &granted(names), root)
            .unwrap_err()
            .to_string()
            .replace(root.to_str().unwrap(), "@")
    };
    assert_eq!(
        err(&["motors", "gone"]),
        "role gone: @/dev/i2c-99: no such device node"
    );
    assert_eq!(
        err(&["gone-glob"]),
        "role gone-glob: @/dev/spi*: no device node matches"
    );
    assert_eq!(
        err(&["broken"]),
        "role broken: @/dev/not-a-node: not a device node (a regular file)"
    );
    assert_eq!(
        err(&["nomount"]),
        "role nomount: @/nothing: nothing there to mount"
    );
    let e = err(&["sonar"]);
    assert!(
        e.starts_with("unknown device role `sonar` (this robot has: broken, buses, camera,"),
        "{e}"
    );

    // Two roles may grant the same node; not different nodes at one path.
    let clash = n.roles(
        "  a: { nodes: [\"@/dev/i2c-1:/dev/x\"] }\n  b: { nodes: [\"@/dev/i2c-13:/dev/x\"] }\n",
    );
    let e = resolve(&clash, &granted(&["a", "b"]), root)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "/dev/x: role a and role b grant different devices there");

    // Group names come from the given root's /etc/group.
    let e = resolve(&roles, &granted(&["motors"]), &root.join("dev"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("etc/group"), "{e}");
}

#[test]
fn root_the_virtual_profile_resolves_against_its_sim_nodes() {
    if !support::require_root("mknods the virtual profile's nodes in a tempdir") {
        return;
    }
    // What `dts sim up` does in the sim's tmpfs /dev, relocated under a tempdir: every sim
    // node made with its numbers, then every role granted.
    let n = Nodes::new();
    std::fs::write(
        n.dir.path().join("etc/group"),
        "video:x:44:\ni2c:x:998:\ngpio:x:997:\ndialout:x:20:\n",
    )
    .unwrap();
    let profile = RobotProfile::builtin("virtual").unwrap();
    for (path, node) in &profile.sim_nodes {
        let kind = match node.kind {
            DeviceKind::Char => rustix::fs::FileType::CharacterDevice,
            DeviceKind::Block => rustix::fs::FileType::BlockDevice,
        };
        n.mknod(
            path.trim_start_matches('/'),
            kind,
            node.major,
            node.minor,
            0o660,
        );
    }
    let relocated: BTreeMap<String, RoleSpec> = profile
        .roles
        .iter()
        .map(|(name, role)| {
            let mut role = role.clone();
            for node in &mut role.nodes {
                node.container = Some(node.container_path().to_string());
                node.host = n.path(node.host.trim_start_matches('/'));
            }
            (name.clone(), role)
        })
        .collect();
    let all: Vec<String> = relocated.keys().cloned().collect();
    let r = resolve(&relocated, &all, n.dir.path()).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.devices.len(), profile.sim_nodes.len());
    for d in &r.devices {
        let want = profile.sim_nodes[d.container_path.to_str().unwrap()];
        assert_eq!(
            (d.kind, d.major, d.minor),
            (want.kind, want.major, want.minor)
        );
    }
    assert_eq!(r.gids, [20, 44, 997, 998]);
}
