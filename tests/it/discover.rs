//! Acceptance tests of issue 6 (`dts fleet discover`), on throwaway networks of robots
//! (tests/it/support/netns.rs). Every advertiser and every scanner runs inside a namespace of its
//! own — avahi-daemon, `dt-agent daemon`, `dts fleet discover`, the crafted-packet sender —
//! never on the host's interfaces. Needs root, iproute2 and (for the real-peer tests)
//! avahi-daemon; skips with a reason otherwise.
//!
//! - real peers: avahi-daemon publishing the service files real Duckiebots carry;
//! - eight robots, avahi and dt-agent mixed: all found within 3 s, once each; `--watch` drops a
//!   stopped one (goodbye) and one whose records expire (TTL), and sees an added address;
//! - hostile packets: crafted raw mDNS into the group while dts listens;
//! - multicast blocked: the UDP fallback still finds the dt-agent robots (and a stock robot's
//!   kvstore-style responder).

use crate::support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::netns::{Robot, TestNet, require_netns};
use serde_json::Value;

const MDNS: (Ipv4Addr, u16) = (Ipv4Addr::new(224, 0, 0, 251), 5353);

/// A fixed host key, so no ssh-keygen is needed; `ssh-keygen -lf` prints this fingerprint.
const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL1sCWPetAc5msZ12t2zkEATcpyS7juOQHL17xDytBoA test\n";
const HOST_KEY_FP: &str = "SHA256:lqixbxgyuRltDGimxFezP9PcYvXSb/B6pDpJok9fWa8";

fn ready(why: &str) -> bool {
    require_netns(why)
}

fn need_avahi() -> bool {
    support::require_cmd("avahi-daemon") && support::require_cmd("unshare")
}

// ---------------------------------------------------------------------------------------------
// Robots.

/// What a real Duckiebot's image carries in /etc/avahi/services (docs/duckietown.md).
fn avahi_file(service: &str, txt: Option<&str>) -> String {
    let txt = txt
        .map(|t| format!("    <txt-record>{t}</txt-record>\n"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" standalone='no'?>\n\
         <!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n\
         <service-group>\n  <name replace-wildcards=\"yes\">DT::{service}::%h</name>\n  <service>\n    \
         <type>_duckietown._tcp</type>\n{txt}    <port>0</port>\n  </service>\n</service-group>\n"
    )
}

/// Writes the service files of a stock robot into `dir`.
fn stock_services(dir: &Path, robot_type: &str, configuration: &str, booting: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let w = |name: &str, body: String| std::fs::write(dir.join(name), body).unwrap();
    w("dt.presence.service", avahi_file("PRESENCE", None));
    w(
        "dt.robot_type.service",
        avahi_file(
            "ROBOT_TYPE",
            Some(&format!("{{\"type\": \"{robot_type}\"}}")),
        ),
    );
    w(
        "dt.robot_configuration.service",
        avahi_file(
            "ROBOT_CONFIGURATION",
            Some(&format!("{{\"configuration\": \"{configuration}\"}}")),
        ),
    );
    w("dt.booting.service.disabled", avahi_file("BOOTING", None));
    if booting {
        w("dt.booting.service", avahi_file("BOOTING", None));
    }
}

/// avahi-daemon for `hostname` in `robot`'s namespace, in a mount namespace of its own: a
/// private /run (pid file, socket) and `services` bind-mounted on /etc/avahi/services. No dbus.
fn start_avahi(robot: &Robot, dir: &Path, hostname: &str, services: &Path) -> Child {
    let conf = dir.join("avahi-daemon.conf");
    std::fs::write(
        &conf,
        format!(
            "[server]\nhost-name={hostname}\ndomain-name=local\nuse-ipv4=yes\nuse-ipv6=no\n\
             allow-interfaces=eth0\nenable-dbus=no\nratelimit-interval-usec=1000000\nratelimit-burst=1000\n\
             [wide-area]\nenable-wide-area=no\n[publish]\npublish-hinfo=no\npublish-workstation=no\n"
        ),
    )
    .unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/avahi-daemon && \
         mount --bind {} /etc/avahi/services && \
         exec avahi-daemon -f {} --no-drop-root --no-chroot --no-rlimits --no-proc-title",
        services.display(),
        conf.display()
    );
    robot
        .command(&[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("avahi.log")).unwrap(),
        ))
        .spawn()
        .expect("starting avahi-daemon")
}

/// `dt-agent daemon` in `robot`'s namespace with its files under `dir`; its log in
/// `dir/agent.log`.
fn start_agent(robot: &Robot, dir: &Path, yaml: &str, avahi_services: Option<&Path>) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("robot.yaml"), yaml).unwrap();
    std::fs::write(dir.join("host.pub"), HOST_KEY).unwrap();
    let empty = dir.join("no-avahi");
    let avahi = avahi_services.unwrap_or(&empty);
    robot
        .command(&[env!("CARGO_BIN_EXE_dt-agent"), "daemon"])
        .env("DT_AGENT_CONFIG", dir.join("robot.yaml"))
        // Each daemon keeps its state (and control socket) in its own directory.
        .env("DT_AGENT_ROOT", dir.join("state"))
        .env("DT_AGENT_SSH_HOST_KEY", dir.join("host.pub"))
        .env("DT_AGENT_AVAHI_SERVICES", avahi)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("agent.log")).unwrap(),
        ))
        .spawn()
        .expect("starting dt-agent daemon")
}

fn yaml(host: &str, ty: &str, cfg: &str) -> String {
    format!("hostname: {host}\ntype: {ty}\nconfiguration: {cfg}\ndevices: {{}}\n")
}

/// Waits until `path` contains `needle` (a daemon's log line).
fn wait_for_log(path: &Path, needle: &str, timeout: Duration) {
    let until = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < until,
            "no `{needle}` in {} after {timeout:?}:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: plain syscall on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
}

// ---------------------------------------------------------------------------------------------
// dts.

/// `dts fleet discover ARGS --json` in `laptop`'s namespace: (robots, wall time, stderr).
fn discover(laptop: &Robot, args: &[&str]) -> (Vec<Value>, Duration, String) {
    let mut cmd = vec![env!("CARGO_BIN_EXE_dts"), "fleet", "discover", "--json"];
    cmd.extend_from_slice(args);
    let start = Instant::now();
    let out = laptop.exec(&cmd);
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "dts {args:?} failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (v.as_array().expect("an array").clone(), took, stderr)
}

fn by_name<'a>(robots: &'a [Value], host: &str) -> &'a Value {
    robots
        .iter()
        .find(|r| r["hostname"] == host)
        .unwrap_or_else(|| panic!("`{host}` not found in {robots:#?}"))
}

fn has_address(r: &Value, addr: Ipv4Addr) -> bool {
    r["addresses"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == &Value::from(addr.to_string())))
}

/// `dts fleet discover --watch --json` in `laptop`: the child and a channel of its JSON lines.
fn watch(laptop: &Robot) -> (Child, mpsc::Receiver<Value>) {
    let mut child = laptop
        .command(&[
            env!("CARGO_BIN_EXE_dts"),
            "fleet",
            "discover",
            "--watch",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting dts --watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("--watch line is not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The first event (after skipping others) for which `pred` holds, within `timeout`.
fn expect_event(
    rx: &mpsc::Receiver<Value>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return v,
            Ok(v) => seen.push(v),
            Err(_) => {
                let brief: Vec<String> = seen
                    .iter()
                    .map(|e| {
                        let r = &e["robot"];
                        format!(
                            "{} {} {} {} {}",
                            e["event"], r["hostname"], r["status"], r["services"], r["found_by"]
                        )
                    })
                    .collect();
                panic!(
                    "no {what} within {timeout:?}; events seen:\n{}",
                    brief.join("\n")
                )
            }
        }
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// Crafted mDNS packets.

fn name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn name_bytes(out: &mut Vec<u8>, labels: &[&[u8]]) {
    for l in labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

fn rr(out: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&0x8001u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// A full advert of `DT::<service>::<host>` (PTR, SRV, TXT with raw `txt`, A) with `ttl`.
fn advert(instance_labels: &[&[u8]], host: &str, addr: Ipv4Addr, txt: &[u8], ttl: u32) -> Vec<u8> {
    let mut p = vec![0, 0, 0x84, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    let mut inst = Vec::new();
    name_bytes(&mut inst, instance_labels);
    let mut ty = Vec::new();
    name(&mut ty, "_duckietown._tcp.local.");
    let mut hostname = Vec::new();
    name(&mut hostname, &format!("{host}.local."));
    rr(&mut p, &ty, 12, ttl, &inst);
    let mut srv = vec![0, 0, 0, 0, 0, 0];
    srv.extend_from_slice(&hostname);
    rr(&mut p, &inst, 33, ttl, &srv);
    rr(&mut p, &inst, 16, ttl, txt);
    rr(&mut p, &hostname, 1, ttl, &addr.octets());
    p
}

fn instance(service: &str, host: &str) -> Vec<Vec<u8>> {
    vec![
        format!("DT::{service}::{host}").into_bytes(),
        b"_duckietown".to_vec(),
        b"_tcp".to_vec(),
        b"local".to_vec(),
    ]
}

fn labels(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

/// One TXT character-string.
fn txt(s: &[u8]) -> Vec<u8> {
    let mut v = vec![s.len().min(255) as u8];
    v.extend_from_slice(&s[..s.len().min(255)]);
    v
}

/// Sends `packets` into the mDNS group from inside `robot`'s namespace.
fn send_mdns(robot: &Robot, packets: &[Vec<u8>]) {
    robot.in_netns(|| {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for p in packets {
            // A packet the kernel refuses (too big) is not the point of the test.
            let _ = s.send_to(p, SocketAddr::from(MDNS));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// Real peer: avahi-daemon publishing the files real Duckiebots carry, one robot booting.
#[test]
fn real_duckiebots_published_by_avahi_are_found() {
    if !ready("runs avahi-daemon in network namespaces") || !need_avahi() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut net = TestNet::new();
    let laptop = net.robot("laptop");
    let alpha = net.robot("alpha");
    let bravo = net.robot("bravo");
    stock_services(
        &tmp.path().join("alpha/services"),
        "duckiebot",
        "DB21J",
        false,
    );
    stock_services(
        &tmp.path().join("bravo/services"),
        "watchtower",
        "WT19A",
        true,
    );
    let avahi_a = start_avahi(
        &alpha,
        &tmp.path().join("alpha"),
        "alpha",
        &tmp.path().join("alpha/services"),
    );
    let avahi_b = start_avahi(
        &bravo,
        &tmp.path().join("bravo"),
        "bravo",
        &tmp.path().join("bravo/services"),
    );
    wait_for_log(
        &tmp.path().join("alpha/avahi.log"),
        "DT::ROBOT_CONFIGURATION::alpha\" (",
        Duration::from_secs(10),
    );
    wait_for_log(
        &tmp.path().join("bravo/avahi.log"),
        "DT::BOOTING::bravo\" (",
        Duration::from_secs(10),
    );

    let (robots, _, _) = discover(&laptop, &["--timeout", "2"]);
    assert_eq!(robots.len(), 2, "{robots:#?}");
    let a = by_name(&robots, "alpha");
    assert_eq!(a["type"], "duckiebot");
    assert_eq!(a["configuration"], "DB21J");
    assert_eq!(a["status"], "ready");
    assert!(has_address(a, alpha.addr), "{a:#?}");
    assert_eq!(a["agent"], Value::Null);
    let b = by_name(&robots, "bravo");
    assert_eq!(b["type"], "watchtower");
    assert_eq!(b["configuration"], "WT19A");
    assert_eq!(b["status"], "booting");
    assert!(has_address(b, bravo.addr), "{b:#?}");

    // The table, and --type.
    let out = laptop.exec(&[
        env!("CARGO_BIN_EXE_dts"),
        "fleet",
        "discover",
        "--timeout",
        "1.5",
        "--type",
        "watchtower",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    for col in ["Type", "Model", "Status", "Hostname", "Agent"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        table.contains("bravo") && table.contains("Booting") && table.contains("bravo.local"),
        "{table}"
    );
    assert!(
        !table.contains("alpha"),
        "--type watchtower listed alpha:\n{table}"
    );
    stop(avahi_a);
    stop(avahi_b);
}

/// Eight robots, avahi and dt-agent mixed (one robot both): all found within 3 s, none twice.
/// Then `--watch`: a dt-agent stopped with SIGTERM (goodbye) and an avahi stopped (goodbye)
/// leave; a crafted advert with a 2 s TTL leaves when it expires; an address added to a running
/// agent's robot is announced.
#[test]
fn eight_robots_found_once_and_watch_follows_them() {
    if !ready("runs avahi-daemon and dt-agent in network namespaces") || !need_avahi() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut net = TestNet::new();
    let laptop = net.robot("laptop");
    let mut robots = Vec::new();
    let mut children = Vec::new();
    for i in 0..8 {
        let host = format!("bot{i}");
        let robot = net.robot(&host);
        let dir = tmp.path().join(&host);
        let services = dir.join("services");
        match i {
            // avahi only, like a stock robot without dt-agent
            0..=3 => {
                stock_services(&services, "duckiebot", &format!("DB21M{i}"), false);
                children.push(start_avahi(&robot, &dir, &host, &services));
            }
            // dt-agent only
            4..=6 => children.push(start_agent(
                &robot,
                &dir,
                &yaml(&host, "duckiebot", &format!("DB21J{i}")),
                None,
            )),
            // both: avahi keeps its services, the agent adds its own
            _ => {
                stock_services(&services, "duckiebot", "DB21J7", false);
                children.push(start_avahi(&robot, &dir, &host, &services));
                wait_for_log(
                    &dir.join("avahi.log"),
                    "Server startup complete",
                    Duration::from_secs(10),
                );
                children.push(start_agent(
                    &robot,
                    &dir,
                    &yaml(&host, "duckiebot", "DB21J7"),
                    Some(&services),
                ));
            }
        }
        robots.push(robot);
    }
    for i in 0..8 {
        let dir = tmp.path().join(format!("bot{i}"));
        if (4..=7).contains(&i) {
            wait_for_log(&dir.join("agent.log"), "ready", Duration::from_secs(10));
        }
        if i <= 3 || i == 7 {
            wait_for_log(
                &dir.join("avahi.log"),
                &format!("DT::ROBOT_CONFIGURATION::bot{i}\" ("),
                Duration::from_secs(10),
            );
        }
    }
    // dt-agent's own adverts finish probing ~0.75 s after it starts.
    std::thread::sleep(Duration::from_millis(1000));
    let log7 = std::fs::read_to_string(tmp.path().join("bot7/agent.log")).unwrap();
    assert!(
        log7.contains("avahi publishes") && log7.contains("advertising AGENT on mDNS"),
        "{log7}"
    );

    let (found, took, stderr) = discover(&laptop, &["--timeout", "3"]);
    assert!(took < Duration::from_secs(5), "discovery took {took:?}");
    let names: Vec<&str> = found
        .iter()
        .filter_map(|r| r["hostname"].as_str())
        .collect();
    let unique: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names.len(), unique.len(), "a robot listed twice: {names:?}");
    let want: BTreeSet<String> = (0..8).map(|i| format!("bot{i}")).collect();
    assert_eq!(unique, want, "{stderr}");
    for (i, robot) in robots.iter().enumerate() {
        let r = by_name(&found, &format!("bot{i}"));
        assert!(has_address(r, robot.addr), "{r:#?}");
        assert_eq!(r["status"], "ready", "{r:#?}");
        assert_eq!(r["type"], "duckiebot");
        if i >= 4 {
            let a = &r["agent"];
            assert_eq!(a["version"], env!("CARGO_PKG_VERSION"), "{r:#?}");
            assert_eq!(a["ssh_port"], 22);
            assert_eq!(a["host_key_fingerprint"], HOST_KEY_FP);
        } else {
            assert_eq!(r["agent"], Value::Null);
        }
    }
    assert_eq!(by_name(&found, "bot7")["configuration"], "DB21J7");
    assert_eq!(by_name(&found, "bot5")["configuration"], "DB21J5");

    // --watch
    let (w, rx) = watch(&laptop);
    let mut added = BTreeSet::new();
    while added.len() < 8 {
        let e = expect_event(&rx, Duration::from_secs(5), "all eight robots added", |e| {
            e["event"] == "added"
        });
        added.insert(e["robot"]["hostname"].as_str().unwrap().to_string());
    }
    // A dt-agent says goodbye on SIGTERM.
    sigterm(&children[4]);
    expect_event(
        &rx,
        // A goodbye, not expiry (UDP pongs go stale after 30 s): under a loaded CI machine the
        // last service's goodbye was seen 5 s late, as avahi's below.
        Duration::from_secs(15),
        "bot4 removed after SIGTERM",
        |e| e["event"] == "removed" && e["robot"]["hostname"] == "bot4",
    );
    wait_for_log(
        &tmp.path().join("bot4/agent.log"),
        "saying goodbye",
        Duration::from_secs(1),
    );
    // So does avahi.
    sigterm(&children[1]);
    expect_event(
        &rx,
        // avahi's goodbye goes out when it stops; under a loaded CI machine it can lag.
        Duration::from_secs(15),
        "bot1 removed after avahi stopped",
        |e| e["event"] == "removed" && e["robot"]["hostname"] == "bot1",
    );
    // A robot that vanishes without a goodbye is dropped when its records expire.
    let ghost = instance("PRESENCE", "ghost");
    send_mdns(
        &robots[0],
        &[advert(&labels(&ghost), "ghost", robots[0].addr, &[0], 2)],
    );
    expect_event(&rx, Duration::from_secs(3), "ghost added", |e| {
        e["event"] == "added" && e["robot"]["hostname"] == "ghost"
    });
    expect_event(
        &rx,
        Duration::from_secs(6),
        "ghost removed when its TTL ran out",
        |e| e["event"] == "removed" && e["robot"]["hostname"] == "ghost",
    );
    // A new address on a running agent's robot is announced (mdns-sd checks every 5 s).
    let extra = Ipv4Addr::from(u32::from(robots[5].addr) + 100);
    let out = robots[5].exec(&["ip", "addr", "add", &format!("{extra}/24"), "dev", "eth0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_event(
        &rx,
        Duration::from_secs(12),
        "bot5's new address announced",
        |e| e["robot"]["hostname"] == "bot5" && has_address(&e["robot"], extra),
    );
    stop(w);
    for c in children {
        stop(c);
    }
}

/// Hostile input on the wire: malformed and giant TXT records, non-UTF-8 names, wrong instance
/// formats, truncated and random packets, sent into the group while dts listens. dts exits 0
/// with valid JSON, lists the real robot and the well-formed crafted one (whose TXT has
/// python-zeroconf's bogus length byte), and nothing else.
#[test]
fn hostile_mdns_packets_are_ignored() {
    if !ready("sends crafted mDNS packets in network namespaces") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut net = TestNet::new();
    let laptop = net.robot("laptop");
    let real = net.robot("real");
    let evil = net.robot("evil");
    let agent = start_agent(
        &real,
        &tmp.path().join("real"),
        &yaml("real", "duckiebot", "DB21J"),
        None,
    );
    wait_for_log(
        &tmp.path().join("real/agent.log"),
        "ready",
        Duration::from_secs(10),
    );

    let a = evil.addr;
    let mut packets: Vec<Vec<u8>> = Vec::new();
    // Well-formed, with python-zeroconf's TXT: b' ' + json.
    let mut zeroconf_txt = b" ".to_vec();
    zeroconf_txt.extend_from_slice(br#"{"type": "duckiedrone"}"#);
    packets.push(advert(
        &labels(&instance("ROBOT_TYPE", "zeta")),
        "zeta",
        a,
        &zeroconf_txt,
        120,
    ));
    packets.push(advert(
        &labels(&instance("PRESENCE", "zeta")),
        "zeta",
        a,
        &[0],
        120,
    ));
    // Malformed and giant TXT on a valid name.
    let giant: Vec<u8> = std::iter::repeat_n(txt(&[b'{'; 255]), 30)
        .flatten()
        .collect();
    packets.push(advert(
        &labels(&instance("ROBOT_CONFIGURATION", "zeta")),
        "zeta",
        a,
        &giant,
        120,
    ));
    packets.push(advert(
        &labels(&instance("ROBOT_HARDWARE", "zeta")),
        "zeta",
        a,
        b"\xff\xfe\x00\x01{{{",
        120,
    ));
    packets.push(advert(
        &labels(&instance("AGENT", "zeta")),
        "zeta",
        a,
        &txt(b"{\"version\": \"\\u001b[2Jpwned\", \"ssh_port\": 99999}"),
        120,
    ));
    // Spoofed goodbyes (TTL 0) for the real robot: a removal is re-checked, not believed.
    for service in ["PRESENCE", "ROBOT_TYPE", "AGENT"] {
        packets.push(advert(
            &labels(&instance(service, "real")),
            "real",
            a,
            &[0],
            0,
        ));
    }
    // Non-UTF-8 names, wrong instance formats.
    packets.push(advert(
        &[b"DT::PRESENCE::\xff\xfe", b"_duckietown", b"_tcp", b"local"],
        "x",
        a,
        &[0],
        120,
    ));
    for bad in [
        "PRESENCE::nodt",
        "DT::PRESENCE",
        "DT::PRESENCE::a::b",
        "DT::::c",
        "XX::PRESENCE::d",
        "DT::PRESENCE::bad name",
        "DT::PRESENCE::-dash",
    ] {
        let mut l = vec![bad.as_bytes().to_vec()];
        l.extend(instance("", "")[1..].iter().cloned());
        packets.push(advert(&labels(&l), "bad", a, &[0], 120));
    }
    // Truncated adverts and random bytes.
    let whole = advert(
        &labels(&instance("PRESENCE", "trunc")),
        "trunc",
        a,
        &[0],
        120,
    );
    for cut in (0..whole.len()).step_by(7) {
        packets.push(whole[..cut].to_vec());
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        let len = (x % 600) as usize;
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p.push(x as u8);
        }
        // Half of them with a response header, so they get past the first check.
        if x.is_multiple_of(2) && p.len() > 12 {
            p[2] = 0x84;
        }
        packets.push(p);
    }
    // A compression loop.
    packets.push(vec![
        0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 1, 0, 0,
    ]);

    let dts = laptop
        .command(&[
            env!("CARGO_BIN_EXE_dts"),
            "fleet",
            "discover",
            "--timeout",
            "3",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..10 {
        send_mdns(&evil, &packets);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = dts.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dts failed ({}): {stderr}",
        out.status
    );
    let robots: Vec<Value> =
        serde_json::from_slice(&out.stdout).expect("valid JSON despite hostile input");
    let names: BTreeSet<&str> = robots
        .iter()
        .filter_map(|r| r["hostname"].as_str())
        .collect();
    let agent_log = std::fs::read_to_string(tmp.path().join("real/agent.log")).unwrap_or_default();
    assert!(
        names.contains("real") && names.contains("zeta"),
        "{robots:#?}\ndts stderr:\n{stderr}\nagent log:\n{agent_log}"
    );
    for n in &names {
        assert!(
            ["real", "zeta", "trunc"].contains(n),
            "unexpected robot `{n}`: {robots:#?}"
        );
    }
    let z = by_name(&robots, "zeta");
    assert_eq!(
        z["type"], "duckiedrone",
        "python-zeroconf TXT not read: {z:#?}"
    );
    assert_eq!(z["configuration"], Value::Null);
    assert_eq!(z["hardware"], Value::Null);
    assert_eq!(z["agent"]["version"], Value::Null);
    assert_eq!(z["agent"]["ssh_port"], Value::Null);
    let r = by_name(&robots, "real");
    assert_eq!(r["configuration"], "DB21J");
    assert_eq!(r["agent"]["host_key_fingerprint"], HOST_KEY_FP);
    // The agent too heard all of it (it listens on 5353) and is still alive.
    let mut agent = agent;
    assert!(agent.try_wait().unwrap().is_none(), "dt-agent died");
    stop(agent);
}

/// Multicast blocked everywhere (nftables/iptables in each namespace): the UDP fallback still
/// finds the dt-agent robots, with their agent, and a stock robot whose port 11411 belongs to a
/// kvstore-style responder (the agent there logs that the port is taken).
#[test]
fn udp_fallback_finds_agents_without_multicast() {
    if !ready("blocks multicast and scans in network namespaces") {
        return;
    }
    if !(support::find_cmd("nft").is_some() || support::require_cmd("iptables")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut net = TestNet::new();
    let laptop = net.robot("laptop");
    let r1 = net.robot("udp1");
    let r2 = net.robot("udp2");
    let stock = net.robot("stock");
    for r in [&laptop, &r1, &r2, &stock] {
        r.block_multicast();
    }
    // A stock ente robot: its kvstore owns 11411 and answers pings with Duckietown's pong.
    let kv = stock.in_netns(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 11411)).unwrap());
    kv.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let kv_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kv_thread = {
        let stop = kv_stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = kv.recv_from(&mut buf) else {
                    continue;
                };
                // `PingPacket(**json)`: exactly version and port, or nothing.
                let Ok(v) = serde_json::from_slice::<Value>(&buf[..n]) else {
                    continue;
                };
                let Some(obj) = v.as_object() else { continue };
                if obj.len() != 2 || !obj["version"].is_string() {
                    continue;
                }
                let Some(port) = obj.get("port").and_then(Value::as_u64) else {
                    continue;
                };
                let pong = br#"{"version": "1", "name": "stock", "type": "duckiebot", "configuration": "DB21J", "hardware": "jetson_nano_4gb"}"#;
                let _ = kv.send_to(pong, (from.ip(), port as u16));
            }
        })
    };
    let c1 = start_agent(
        &r1,
        &tmp.path().join("udp1"),
        &yaml("udp1", "duckiebot", "DB21J"),
        None,
    );
    let c2 = start_agent(
        &r2,
        &tmp.path().join("udp2"),
        &yaml("udp2", "watchtower", "WT19B"),
        None,
    );
    let c3 = start_agent(
        &stock,
        &tmp.path().join("stock"),
        &yaml("stock", "duckiebot", "DB21J"),
        None,
    );
    for h in ["udp1", "udp2", "stock"] {
        wait_for_log(
            &tmp.path().join(h).join("agent.log"),
            "ready",
            Duration::from_secs(10),
        );
    }
    let log = std::fs::read_to_string(tmp.path().join("stock/agent.log")).unwrap();
    assert!(log.contains("UDP port 11411 is taken"), "{log}");

    let (robots, _, stderr) = discover(&laptop, &["--timeout", "2"]);
    let names: BTreeSet<&str> = robots
        .iter()
        .filter_map(|r| r["hostname"].as_str())
        .collect();
    assert_eq!(
        names,
        ["stock", "udp1", "udp2"].into_iter().collect(),
        "{robots:#?}\n{stderr}"
    );
    for (host, robot, ty, cfg) in [
        ("udp1", &r1, "duckiebot", "DB21J"),
        ("udp2", &r2, "watchtower", "WT19B"),
    ] {
        let r = by_name(&robots, host);
        assert_eq!(r["found_by"], serde_json::json!(["udp"]), "{r:#?}");
        assert!(has_address(r, robot.addr));
        assert_eq!(r["type"], ty);
        assert_eq!(r["configuration"], cfg);
        assert_eq!(r["status"], "ready");
        assert_eq!(r["agent"]["host_key_fingerprint"], HOST_KEY_FP);
        assert_eq!(r["agent"]["version"], env!("CARGO_PKG_VERSION"));
    }
    let s = by_name(&robots, "stock");
    assert_eq!(s["hardware"], "jetson_nano_4gb");
    assert_eq!(s["agent"], Value::Null);
    assert!(has_address(s, stock.addr));

    // The table shows the address that answered in the Hostname column.
    let out = laptop.exec(&[
        env!("CARGO_BIN_EXE_dts"),
        "fleet",
        "discover",
        "--timeout",
        "1.5",
        "--no-mdns",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&r1.addr.to_string()), "{table}");

    kv_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = kv_thread.join();
    for c in [c1, c2, c3] {
        stop(c);
    }
}

/// The library entry point other commands use: `resolve(NAME)` finds a robot by name (in the
/// laptop's namespace, from a thread of this process).
#[test]
fn resolve_finds_a_robot_by_name() {
    if !ready("runs dt-agent in a network namespace") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut net = TestNet::new();
    let laptop = net.robot("laptop");
    let bot = net.robot("findme");
    let agent = start_agent(
        &bot,
        &tmp.path().join("findme"),
        &yaml("findme", "duckiebot", "DB21J"),
        None,
    );
    wait_for_log(
        &tmp.path().join("findme/agent.log"),
        "ready",
        Duration::from_secs(10),
    );
    let (found, missing, took) = laptop.in_netns(|| {
        let start = Instant::now();
        let found = dts::discover::resolve("FindMe.local", Duration::from_secs(5));
        let took = start.elapsed();
        (
            found,
            dts::discover::resolve("nosuchbot", Duration::from_millis(800)),
            took,
        )
    });
    let found = found.expect("findme resolved");
    assert_eq!(found.hostname, "findme");
    assert!(
        found.addresses.contains(&std::net::IpAddr::V4(bot.addr)),
        "{found:?}"
    );
    assert!(took < Duration::from_secs(4), "resolve took {took:?}");
    assert!(missing.is_none());
    let fp = found
        .agent
        .as_ref()
        .and_then(|a| a.host_key_fingerprint.clone());
    assert_eq!(fp.as_deref(), Some(HOST_KEY_FP));
    assert_eq!(
        dts::discover::browse::compare_fingerprint(Some(&found), HOST_KEY_FP),
        dts::discover::browse::HeardFingerprint::Matches
    );
    stop(agent);
}
