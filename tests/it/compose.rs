//! Issue 18 end to end: a compose file as Docker users and Duckietown write it, found by
//! Docker's file name in a directory, with its `.env`, deployed with Duckietown's and Docker's
//! spellings (`-H`, `-f`, `--format json`) to a virtual robot: `privileged: true` and a host
//! device become the robot's roles, each service with one warning line naming them;
//! `container_name` names the container; labels reach `ps --json`.

use crate::deploy::{World, can_run};

#[test]
fn a_compose_file_deploys_with_its_privileges_as_roles() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let ctx = w.context("v1", 1, 0);
    w.build(&ctx, "example.com/dep/app:v1");
    w.sim_up(&[]);
    let dir = w.work.path().join("proj");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "TAG=v1\n").unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        "services:
  drivers:
    image: example.com/dep/app:${TAG}
    container_name: dt-drivers
    privileged: true
    labels: {org.example.owner: lab-3}
  tof:
    image: example.com/dep/app:${TAG}
    devices:
      - /dev/i2c-13:/dev/i2c-13
",
    )
    .unwrap();
    let out = w.dts(&[
        "duckiebot",
        "deploy",
        "-H",
        &w.name,
        "-f",
        dir.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{v} {err}");
    assert_eq!(v["state"], "committed", "{v}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("not granted as Docker grants them"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per service: {err}");
    let all = "battery, button, camera, display, imu, leds, motors, tof, wheel-encoders";
    assert!(
        lines.iter().any(|l| l.contains(
            "compose.yaml:5:5: services.drivers.privileged: `privileged: true` not granted"
        ) && l.ends_with(&format!("granted device roles {all} instead"))),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l
            .contains("compose.yaml:10:7: services.tof.devices[0]: `/dev/i2c-13` not granted")
            && l.ends_with("granted device roles tof instead")),
        "{err}"
    );
    let ps: serde_json::Value =
        serde_json::from_str(&w.ok(&["duckiebot", "ps", "-H", &w.name, "--format=json"])).unwrap();
    let c = |name: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {ps}"))
    };
    let drivers = c("dt-drivers");
    assert_eq!(drivers["labels"]["org.example.owner"], "lab-3", "{drivers}");
    assert_eq!(
        drivers["device_roles"].as_array().unwrap().len(),
        9,
        "{drivers}"
    );
    assert_eq!(c("tof")["device_roles"], serde_json::json!(["tof"]));
    // An unknown format is a usage error, naming the one there is.
    let out = w.dts(&["duckiebot", "ps", &w.name, "--format", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prints only `json`"));
}
