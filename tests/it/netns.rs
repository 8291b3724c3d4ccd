//! Tests of the test harness itself (`tests/it/support/netns.rs`): robots on a private bridge reach
//! each other and the host, multicast crosses namespaces (and can be blocked), link shaping is
//! installed, and every resource is gone after drop — also after a panic. Needs root and
//! iproute2; skips with a reason otherwise.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::netns::{Robot, TestNet, require_netns};

/// mDNS group and port: what discovery really uses.
const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_PORT: u16 = 5353;

fn ping(from: &Robot, to: Ipv4Addr) -> std::process::Output {
    from.exec(&["ping", "-n", "-c", "2", "-W", "2", &to.to_string()])
}

fn assert_pings(from: &Robot, to: Ipv4Addr) {
    let out = ping(from, to);
    assert!(
        out.status.success(),
        "{} ({}) cannot ping {to}:\n{}{}",
        from.name,
        from.addr,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn netns_list() -> String {
    let out = Command::new(support::find_cmd("ip").unwrap())
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_list() -> String {
    let out = Command::new(support::find_cmd("ip").unwrap())
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Word-boundary match, so `dth1x1` does not match `dth1x10`.
fn mentions(haystack: &str, name: &str) -> bool {
    haystack
        .split(|c: char| c.is_whitespace() || c == ':' || c == '@')
        .any(|w| w == name)
}

fn assert_gone(ns: &[String], links: &[String]) {
    let (nets, ls) = (netns_list(), link_list());
    for n in ns {
        assert!(!mentions(&nets, n), "netns `{n}` still exists:\n{nets}");
    }
    for l in links {
        assert!(!mentions(&ls, l), "link `{l}` still exists:\n{ls}");
    }
}

#[test]
fn robots_ping_each_other_and_the_host() {
    if !require_netns("creates network namespaces") || !support::require_cmd("ping") {
        return;
    }
    let mut net = TestNet::new();
    let a = net.robot("alpha");
    let b = net.robot("bravo");
    assert_ne!(a.addr, b.addr);
    assert_eq!(a.gateway(), net.host_addr());
    assert_pings(&a, b.addr);
    assert_pings(&b, a.addr);
    assert_pings(&a, net.host_addr());
    // And the host reaches the robot over the bridge.
    let out = Command::new(support::find_cmd("ping").unwrap())
        .args(["-n", "-c", "2", "-W", "2", &b.addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "host cannot ping {}", b.addr);
}

/// Joins the mDNS group in `rx`'s namespace and sends from `tx`'s until one datagram arrives or
/// `wait` passes. Returns the payload and source address, if any.
fn multicast_once(rx: &Robot, tx: &Robot, wait: Duration) -> Option<(String, Ipv4Addr)> {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let receiver = s.spawn(move || {
            rx.in_netns(|| {
                let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MDNS_PORT))
                    .expect("bind 5353 in robot netns");
                sock.join_multicast_v4(&MDNS_GROUP, &Ipv4Addr::UNSPECIFIED)
                    .expect("join 224.0.0.251");
                sock.set_read_timeout(Some(wait)).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 1500];
                match sock.recv_from(&mut buf) {
                    Ok((n, std::net::SocketAddr::V4(from))) => {
                        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), *from.ip()))
                    }
                    Ok(_) => None,
                    Err(_) => None, // timeout
                }
            })
        });
        ready_rx.recv().expect("receiver did not start");
        let deadline = Instant::now() + wait;
        tx.in_netns(|| {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            // Send until the receiver thread is done (it got one, or timed out).
            while !receiver.is_finished() && Instant::now() < deadline {
                // Errors (e.g. EPERM from a blocking rule) are just "not delivered".
                let _ = sock.send_to(b"hello robots", SocketAddrV4::new(MDNS_GROUP, MDNS_PORT));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        receiver.join().unwrap()
    })
}

#[test]
fn udp_multicast_crosses_namespaces_and_can_be_blocked() {
    if !require_netns("creates network namespaces") {
        return;
    }
    let mut net = TestNet::new();
    let a = net.robot("alpha");
    let b = net.robot("bravo");

    let got = multicast_once(&a, &b, Duration::from_secs(5));
    assert_eq!(
        got,
        Some(("hello robots".to_owned(), b.addr)),
        "mDNS multicast b -> a"
    );

    // Blocking on the receiving robot: nothing arrives.
    a.block_multicast();
    let got = multicast_once(&a, &b, Duration::from_millis(1500));
    assert_eq!(
        got, None,
        "multicast arrived although blocked on the receiver"
    );
    a.unblock_multicast();
    // Blocking on the sending robot: nothing leaves.
    b.block_multicast();
    let got = multicast_once(&a, &b, Duration::from_millis(1500));
    assert_eq!(
        got, None,
        "multicast arrived although blocked on the sender"
    );
    b.unblock_multicast();

    let got = multicast_once(&a, &b, Duration::from_secs(5));
    assert!(
        got.is_some(),
        "multicast did not come back after unblocking"
    );
}

#[test]
fn python_multicast_between_spawned_processes() {
    if !require_netns("creates network namespaces") || !support::require_cmd("python3") {
        return;
    }
    let mut net = TestNet::new();
    let a = net.robot("alpha");
    let b = net.robot("bravo");
    // A separate process per namespace, as daemons under test will be.
    let recv = "import socket\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
        s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
        s.bind(('',5353))\n\
        s.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,socket.inet_aton('224.0.0.251')+socket.inet_aton('0.0.0.0'))\n\
        s.settimeout(10)\n\
        print('ready',flush=True)\n\
        d,a=s.recvfrom(1500)\n\
        print(d.decode(),a[0],flush=True)\n";
    let mut rx = a.spawn(&["python3", "-c", recv]);
    let mut lines = BufReader::new(rx.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let send = "import socket,time\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
        [ (s.sendto(b'ping',('224.0.0.251',5353)), time.sleep(0.1)) for _ in range(20) ]\n";
    let out = b.exec(&["python3", "-c", send]);
    assert!(
        out.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.next().unwrap().unwrap(), format!("ping {}", b.addr));
    assert!(rx.wait().unwrap().success());
}

#[test]
fn set_rate_installs_tbf_on_both_ends() {
    if !require_netns("creates network namespaces") || !support::require_cmd("tc") {
        return;
    }
    let mut net = TestNet::new();
    let r = net.robot("slow");
    r.set_rate("1mbit");
    let host = Command::new(support::find_cmd("tc").unwrap())
        .args(["qdisc", "show", "dev", &r.host_iface])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert!(
        host.contains("tbf") && host.contains("rate 1Mbit"),
        "host side: {host}"
    );
    let robot = r.exec(&["tc", "qdisc", "show", "dev", &r.robot_iface]);
    let robot = String::from_utf8_lossy(&robot.stdout);
    assert!(
        robot.contains("tbf") && robot.contains("rate 1Mbit"),
        "robot side: {robot}"
    );
    // Replacing works, and clearing removes it.
    r.set_rate("500kbit");
    r.clear_rate();
    let robot = r.exec(&["tc", "qdisc", "show", "dev", &r.robot_iface]);
    assert!(!String::from_utf8_lossy(&robot.stdout).contains("tbf"));
}

#[test]
fn link_down_cuts_the_robot_off() {
    if !require_netns("creates network namespaces") || !support::require_cmd("ping") {
        return;
    }
    let mut net = TestNet::new();
    let a = net.robot("alpha");
    let b = net.robot("bravo");
    assert_pings(&a, b.addr);
    b.link_down();
    assert!(
        !ping(&a, b.addr).status.success(),
        "ping went through a downed link"
    );
    b.link_up();
    // The veth needs a moment to report carrier again; ping's own retries cover it.
    let out = a.exec(&["ping", "-n", "-c", "1", "-w", "5", &b.addr.to_string()]);
    assert!(out.status.success(), "no ping after link_up");
}

#[test]
fn drop_removes_namespaces_links_and_processes() {
    if !require_netns("creates network namespaces") || !support::require_cmd("sleep") {
        return;
    }
    let mut net = TestNet::new();
    let bridge = net.bridge().to_owned();
    let a = net.robot("alpha");
    let b = net.robot("bravo");
    let (ns, links) = (
        vec![a.ns.clone(), b.ns.clone()],
        vec![bridge.clone(), a.host_iface.clone(), b.host_iface.clone()],
    );
    assert!(mentions(&netns_list(), &a.ns));
    assert!(mentions(&link_list(), &a.host_iface));
    assert!(mentions(&link_list(), &bridge));
    let mut child = a.spawn(&["sleep", "600"]);
    // A daemon that detaches from its parent is killed too: it is still in the namespace.
    let out = b.exec(&["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]);
    let orphan: libc::pid_t = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

    drop(a);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "spawned process was not killed: {status}"
    );
    drop(b);
    drop(net);
    assert_gone(&ns, &links);
    // The orphan was reparented away from us; give the kernel a moment to finish it off.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default();
        if stat.contains(") Z ") || stat.is_empty() {
            break; // a zombie waiting for its reaper is dead enough
        }
        assert!(
            Instant::now() < deadline,
            "orphaned process {orphan} still alive: {stat}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn net_dropped_before_its_robots_still_cleans_up() {
    if !require_netns("creates network namespaces") {
        return;
    }
    let mut net = TestNet::new();
    let a = net.robot("alpha");
    let (ns, links) = (
        vec![a.ns.clone()],
        vec![net.bridge().to_owned(), a.host_iface.clone()],
    );
    drop(net);
    assert_gone(&ns, &links);
    drop(a); // must not panic although everything is gone already
}

#[test]
fn panic_inside_catch_unwind_still_cleans_up() {
    if !require_netns("creates network namespaces") || !support::require_cmd("sleep") {
        return;
    }
    // What the doomed closure made, to check afterwards: (namespaces, links, spawned child).
    let made = std::sync::Mutex::new((Vec::new(), Vec::new(), None));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut net = TestNet::new();
        let a = net.robot("doomed");
        let sleeper = a.spawn(&["sleep", "600"]);
        {
            let mut m = made.lock().unwrap();
            m.0.push(a.ns.clone());
            m.1.extend([net.bridge().to_owned(), a.host_iface.clone()]);
            m.2 = Some(sleeper);
        }
        panic!("deliberate panic with a live TestNet");
    }));
    assert!(result.is_err());
    let (ns, links, sleeper) = made.into_inner().unwrap();
    assert_eq!(ns.len(), 1);
    assert_gone(&ns, &links);
    let status = sleeper.unwrap().wait().unwrap();
    assert!(
        !status.success(),
        "process spawned in the robot survived: {status}"
    );
}

#[test]
fn nets_get_distinct_subnets() {
    if !require_netns("creates network namespaces") {
        return;
    }
    let one = TestNet::new();
    let two = TestNet::new();
    assert_ne!(one.cidr(), two.cidr());
    assert_ne!(one.bridge(), two.bridge());
    let routes = Command::new(support::find_cmd("ip").unwrap())
        .args(["-4", "route"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains(&one.cidr()) && routes.contains(&two.cidr()),
        "{routes}"
    );
}

#[test]
fn new_sweeps_leftovers_of_dead_test_processes() {
    if !require_netns("creates network namespaces") || !support::require_cmd("sleep") {
        return;
    }
    // A pid that certainly belonged to a process that is gone now.
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let pid = dead.id();
    let ip = support::find_cmd("ip").unwrap();
    let ns = format!("dtsns-{pid}-0-leftover");
    let (bridge, veth) = (format!("dtb{pid}x0"), format!("dth{pid}x1"));
    let run = |args: &[&str]| {
        let st = Command::new(&ip).args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    run(&["netns", "add", &ns]);
    run(&["link", "add", &bridge, "type", "bridge"]);
    run(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ]);
    // A stray daemon left running in the namespace.
    let mut stray = Command::new(&ip)
        .args(["netns", "exec", &ns, "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let _net = TestNet::new();
    assert_gone(&[ns], &[bridge, veth]);
    assert!(
        !stray.wait().unwrap().success(),
        "stray process survived the sweep"
    );
}
