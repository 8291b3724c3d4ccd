//! `agent::net` against the real CNI plugins (Debian's `containernetworking-plugins`), entirely
//! inside throwaway network namespaces: nothing here touches the host's interfaces, routes,
//! iptables or sysctls.
//!
//! ```text
//!  laptop netns ──┐  (support::netns::TestNet: private bridge, one veth per netns)
//!  robot netns  ──┘  eth0 10.231.X.Y
//!     │  the test thread setns()es here (Robot::in_netns) and calls attach/detach, so every
//!     │  plugin it spawns runs with the robot as its "host": bridge dtagent0, iptables, sysctls
//!     └─ dtagent0 10.89.0.1 ══ veth ══ container netns `dtsns-<pid>-<n>-ctr…` (ip netns add)
//!                                        eth0 10.89.0.x, busybox httpd :80
//! ```
//!
//! The laptop fetches `http://<robot>:<host port>/` and must get the container's page; after
//! detach it must not. Root only (skips with a `SKIP:` line otherwise), as are the CNI plugins.

use crate::support;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::support::netns::{Robot, TestNet, require_netns};
use dts::agent::net::{Attachment, Ipv4Subnet, NetError, Network, PortMapping};

const PAGE: &str = "hello from the container\n";
const PLUGIN_DIR: &str = "/usr/lib/cni";

/// Root, `ip`, `iptables` and the plugins; else one `SKIP:` line.
fn can_run() -> bool {
    if !require_netns("creates network namespaces") || !support::require_cmd("iptables") {
        return false;
    }
    for p in ["bridge", "host-local", "portmap", "firewall", "loopback"] {
        if !Path::new(PLUGIN_DIR).join(p).exists() {
            support::skip(&format!(
                "needs CNI plugin `{p}` in {PLUGIN_DIR} (containernetworking-plugins)"
            ));
            return false;
        }
    }
    if busybox().is_none() {
        support::skip("needs busybox (busybox-static or `bash scripts/fixtures`)");
        return false;
    }
    true
}

fn busybox() -> Option<String> {
    [
        "/var/cache/dts-fixtures/busybox/amd64/busybox",
        "/bin/busybox",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(str::to_owned)
}

/// A bare network namespace standing in for a container's (what `runc create` makes), with the
/// processes started in it; all killed and deleted on drop.
struct Ctr {
    ns: String,
    children: Vec<Child>,
}

static CTR_SEQ: AtomicU32 = AtomicU32::new(0);

impl Ctr {
    fn new() -> Ctr {
        // The TestNet naming scheme, so its sweep removes what a killed run leaves behind.
        let ns = format!(
            "dtsns-{}-{}-ctr",
            std::process::id(),
            5000 + CTR_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &ns]);
        Ctr {
            ns,
            children: Vec::new(),
        }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.ns)
    }

    /// Serve [`PAGE`] on port 80 with busybox httpd.
    fn serve(&mut self, docroot: &Path) {
        std::fs::write(docroot.join("index.html"), PAGE).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(busybox().unwrap())
            .args(["httpd", "-f", "-p", "80", "-h"])
            .arg(docroot)
            .stdin(Stdio::null())
            .spawn()
            .expect("start busybox httpd");
        self.children.push(child);
    }

    fn has_eth0(&self) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns, "link", "show", "eth0"])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Kill the processes and delete the namespace name (as when the container exits); a pin
    /// may still hold the namespace itself.
    fn delete(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        if self.path().exists() {
            run("ip", &["netns", "del", &self.ns]);
        }
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.path().exists() {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(support::find_cmd(cmd).unwrap_or_else(|| cmd.into()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A robot and a laptop on a test bridge, the agent's network state in a temp dir. On drop,
/// whatever is still attached is detached and any pin left is unmounted, so the temp dir can go.
struct Fixture {
    laptop: Robot,
    robot: Robot,
    state: tempfile::TempDir,
    subnet: Ipv4Subnet,
    _net: TestNet,
}

impl Fixture {
    fn new(subnet: &str) -> Fixture {
        let mut net = TestNet::new();
        let robot = net.robot("robot");
        let laptop = net.robot("laptop");
        Fixture {
            laptop,
            robot,
            state: tempfile::tempdir().unwrap(),
            subnet: subnet.parse().unwrap(),
            _net: net,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().join("net")
    }

    /// A `Network` as a freshly started agent would open it.
    fn network(&self) -> Network {
        Network::new(&self.state_dir())
            .unwrap()
            .with_plugin_dirs(vec![PLUGIN_DIR.into()])
            .with_subnet(self.subnet)
    }

    fn attach(&self, id: &str, ctr: &Ctr, ports: &[&str]) -> Result<Attachment, NetError> {
        let ports: Vec<PortMapping> = ports.iter().map(|p| p.parse().unwrap()).collect();
        let net = self.network();
        let path = ctr.path();
        self.robot.in_netns(|| net.attach(id, &path, &ports))
    }

    fn detach(&self, id: &str, netns: Option<&Path>, ports: &[&str]) -> Result<(), NetError> {
        let ports: Vec<PortMapping> = ports.iter().map(|p| p.parse().unwrap()).collect();
        let net = self.network();
        self.robot.in_netns(|| net.detach(id, netns, &ports))
    }

    /// `GET http://<robot>:<port>/` from the laptop (a thread in its namespace); the body, or
    /// `None` on any failure. (Not busybox wget: Debian's static one segfaults on every fetch.)
    fn fetch(&self, port: u16) -> Option<String> {
        let addr = std::net::SocketAddr::from((self.robot.addr, port));
        self.laptop.in_netns(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: robot\r\n\r\n").ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).ok()?;
            let (head, body) = reply.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.").then(|| body.to_owned())
        })
    }

    /// [`Fixture::fetch`], retried for a few seconds while the server starts.
    fn fetch_eventually(&self, port: u16) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(page) = self.fetch(port) {
                return Some(page);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The robot's iptables rules, all tables.
    fn iptables(&self) -> String {
        let out = self.robot.exec(&["iptables-save"]);
        assert!(out.status.success(), "iptables-save in robot");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// host-local's lease files (one per address in use).
    fn leases(&self) -> Vec<String> {
        let dir = self.state_dir().join("ipam/dt-agent");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn dir_entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state_dir().join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let net = self.network();
        let ids = net.attached().unwrap_or_default();
        for id in &ids {
            if let Err(e) = self.robot.in_netns(|| net.detach(id, None, &[])) {
                support::write_stderr_line(&format!("agent_net: cleanup: detach `{id}`: {e}"));
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.state_dir().join("netns")) {
            for e in rd.flatten() {
                let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

fn ports(specs: &[&str]) -> Vec<PortMapping> {
    specs.iter().map(|p| p.parse().unwrap()).collect()
}

#[test]
fn published_port_reaches_the_container_and_detach_removes_it() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new("10.89.0.0/24");
    let docroot = tempfile::tempdir().unwrap();
    let mut ctr = Ctr::new();
    ctr.serve(docroot.path());

    let a = fx.attach("web1", &ctr, &["8080:80"]).unwrap();
    assert_eq!(a.interface, "eth0");
    assert_eq!(a.prefix_len, 24);
    assert_eq!(a.gateway, Some(IpAddr::V4(Ipv4Addr::new(10, 89, 0, 1))));
    let IpAddr::V4(ip) = a.ip else {
        panic!("not IPv4: {a:?}")
    };
    assert_eq!(ip.octets()[..3], [10, 89, 0], "{a:?}");
    assert!(ctr.has_eth0());

    // Everything happened in the robot's namespace, nothing on the host.
    assert!(
        fx.robot
            .exec(&["ip", "link", "show", "dtagent0"])
            .status
            .success()
    );
    assert!(
        !Command::new("ip")
            .args(["link", "show", "dtagent0"])
            .output()
            .unwrap()
            .status
            .success(),
        "dtagent0 appeared on the host"
    );
    let fwd = fx.robot.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    assert_eq!(fx.fetch_eventually(8080).as_deref(), Some(PAGE));
    let rules = fx.iptables();
    assert!(rules.contains("--dport 8080"), "no DNAT rule:\n{rules}");
    assert!(rules.contains(&ip.to_string()), "{rules}");

    // CHECK passes, and attaching again is a no-op that gives the same address.
    let net = fx.network();
    let checked = fx.robot.in_netns(|| net.check("web1")).unwrap();
    assert_eq!(checked, a);
    assert_eq!(fx.attach("web1", &ctr, &["8080:80"]).unwrap(), a);
    assert_eq!(net.attached().unwrap(), ["web1"]);
    assert_eq!(net.attachment("web1").unwrap(), Some(a.clone()));
    assert_eq!(fx.leases(), [ip.to_string()]);

    // A new process (fresh `Network` on the same state) detaches what this one attached.
    fx.detach("web1", None, &[]).unwrap();
    assert_eq!(fx.fetch(8080), None, "port still forwarded after detach");
    let rules = fx.iptables();
    assert!(!rules.contains("--dport 8080"), "DNAT left:\n{rules}");
    assert!(
        !rules.contains(&ip.to_string()),
        "rules for {ip} left:\n{rules}"
    );
    assert!(!rules.contains("web1"), "rules for web1 left:\n{rules}");
    assert!(!ctr.has_eth0());
    assert!(fx.leases().is_empty(), "{:?}", fx.leases());
    assert!(fx.dir_entries("attachments").is_empty());
    assert!(fx.dir_entries("netns").is_empty());
    assert!(matches!(
        fx.robot.in_netns(|| net.check("web1")),
        Err(NetError::NotAttached(_))
    ));

    // Detaching again, or something never attached, is fine.
    fx.detach("web1", None, &[]).unwrap();
    fx.detach("never-attached", None, &["9000:90"]).unwrap();
}

#[test]
fn twenty_attach_detach_cycles_fit_a_slash_29() {
    if !can_run() {
        return;
    }
    // 10.89.1.0/29: .1 is the gateway, .2–.6 for containers (.7 is broadcast).
    let fx = Fixture::new("10.89.1.0/29");
    let ctr = Ctr::new();
    for i in 0..20 {
        let id = format!("cycle{i}");
        let port = format!("{}:80", 8000 + i);
        let a = fx.attach(&id, &ctr, &[&port]).unwrap();
        assert!(ctr.has_eth0());
        assert_eq!(fx.leases(), [a.ip.to_string()]);
        fx.detach(&id, None, &[]).unwrap();
        assert!(fx.leases().is_empty());
    }
    let rules = fx.iptables();
    assert!(
        !rules.contains("cycle"),
        "rules left after 20 cycles:\n{rules}"
    );

    // Five at once get five addresses; the sixth gets host-local's error, named, and nothing
    // of it is left behind.
    let ctrs: Vec<Ctr> = (0..6).map(|_| Ctr::new()).collect();
    let mut ips = Vec::new();
    for (i, c) in ctrs.iter().take(5).enumerate() {
        ips.push(fx.attach(&format!("full{i}"), c, &[]).unwrap().ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 5);
    let e = fx.attach("full5", &ctrs[5], &[]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, NetError::Plugin { plugin, command: "ADD", .. } if plugin == "bridge"),
        "{e:?}"
    );
    assert!(
        msg.contains("full5") && msg.contains("no IP addresses available"),
        "{msg}"
    );
    assert!(!ctrs[5].has_eth0());
    assert_eq!(fx.leases().len(), 5);
    assert_eq!(fx.dir_entries("attachments").len(), 5);
    assert_eq!(fx.dir_entries("netns").len(), 5);
    for i in 0..5 {
        fx.detach(&format!("full{i}"), None, &[]).unwrap();
    }
    assert!(fx.leases().is_empty());
}

#[test]
fn detach_after_the_container_namespace_is_gone() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new("10.89.2.0/24");
    let docroot = tempfile::tempdir().unwrap();

    // The container exits and its namespace name is deleted: the pin keeps the namespace, so
    // DEL still finds the veth and the masquerade rule.
    let mut ctr = Ctr::new();
    ctr.serve(docroot.path());
    let a = fx.attach("gone1", &ctr, &["8081:80"]).unwrap();
    assert_eq!(fx.fetch_eventually(8081).as_deref(), Some(PAGE));
    let path = ctr.path();
    ctr.delete();
    fx.detach("gone1", Some(&path), &[]).unwrap();
    let rules = fx.iptables();
    assert!(!rules.contains(&a.ip.to_string()), "{rules}");
    assert!(!rules.contains("gone1"), "{rules}");
    assert!(fx.leases().is_empty());
    let veths = fx
        .robot
        .exec(&["ip", "-o", "link", "show", "master", "dtagent0"]);
    assert_eq!(
        String::from_utf8_lossy(&veths.stdout).trim(),
        "",
        "veth left"
    );

    // As after a reboot: the pin is an empty file and the namespace is really gone. DEL runs
    // without a namespace; the address is released and the port forward removed.
    let mut ctr = Ctr::new();
    ctr.serve(docroot.path());
    let a = fx.attach("gone2", &ctr, &["8082:80"]).unwrap();
    assert_eq!(fx.fetch_eventually(8082).as_deref(), Some(PAGE));
    let pin = fx.state_dir().join("netns/gone2");
    rustix::mount::unmount(&pin, rustix::mount::UnmountFlags::DETACH).unwrap();
    ctr.delete();
    fx.detach("gone2", None, &[]).unwrap();
    assert!(fx.leases().is_empty());
    let rules = fx.iptables();
    assert!(!rules.contains("--dport 8082"), "DNAT left:\n{rules}");
    assert_eq!(fx.fetch(8082), None);
    assert!(fx.dir_entries("attachments").is_empty());
    assert!(fx.dir_entries("netns").is_empty());
    // The bridge plugin finds its masquerade rule only through the interface in the
    // namespace, so without one that rule (matching only the released address) stays until
    // the next reboot. After a real reboot, the case this path is for, no rules are left.
    let _ = a;
}

#[test]
fn attaching_an_id_to_a_new_namespace_moves_it() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new("10.89.3.0/24");
    let docroot = tempfile::tempdir().unwrap();
    let first = Ctr::new();
    let mut second = Ctr::new();
    second.serve(docroot.path());
    fx.attach("moved", &first, &["8083:80"]).unwrap();
    assert!(first.has_eth0());
    let b = fx.attach("moved", &second, &["8083:80"]).unwrap();
    assert!(!first.has_eth0(), "the old attachment was not detached");
    assert!(second.has_eth0());
    assert_eq!(fx.leases(), [b.ip.to_string()]);
    assert_eq!(fx.fetch_eventually(8083).as_deref(), Some(PAGE));

    // Same namespace, other ports: re-attached with the new ports only.
    let c = fx.attach("moved", &second, &["8084:80"]).unwrap();
    assert_eq!(fx.leases(), [c.ip.to_string()]);
    assert_eq!(fx.fetch_eventually(8084).as_deref(), Some(PAGE));
    assert_eq!(fx.fetch(8083), None);
    fx.detach("moved", None, &[]).unwrap();
}

#[test]
fn a_failing_plugin_is_named_and_undone() {
    if !can_run() {
        return;
    }
    let fx = Fixture::new("10.89.4.0/24");
    // The real plugins, except a `firewall` that refuses ADD the CNI way.
    let plugins = tempfile::tempdir().unwrap();
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        std::os::unix::fs::symlink(Path::new(PLUGIN_DIR).join(p), plugins.path().join(p)).unwrap();
    }
    let fake = plugins.path().join("firewall");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":104,\"msg\":\"no firewall today\",\"details\":\"see the robot\"}'\n\
         exit 1\nfi\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let net = fx
        .network()
        .with_plugin_dirs(vec![plugins.path().to_path_buf()]);
    let ctr = Ctr::new();
    let path = ctr.path();
    let e = fx
        .robot
        .in_netns(|| net.attach("fw1", &path, &ports(&["8085:80"])))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("`firewall` ADD") && msg.contains("no firewall today: see the robot"),
        "{msg}"
    );
    assert!(matches!(e, NetError::Plugin { code: 104, .. }), "{e:?}");
    // What bridge and portmap did is undone.
    assert!(!ctr.has_eth0());
    assert!(fx.leases().is_empty());
    assert!(!fx.iptables().contains("--dport 8085"));
    assert!(fx.dir_entries("attachments").is_empty());
    assert!(fx.dir_entries("netns").is_empty());
}

#[test]
fn a_missing_plugin_is_named_with_the_search_path() {
    // No root needed: plugins are looked for before anything else happens.
    let state = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let net = Network::new(&state.path().join("net"))
        .unwrap()
        .with_plugin_dirs(vec![empty.path().to_path_buf(), "/nonexistent/cni".into()]);
    let e = net
        .attach("c1", Path::new("/proc/self/ns/net"), &[])
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, NetError::PluginNotFound { ref plugin, .. } if plugin == "bridge"));
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    assert!(msg.contains("/nonexistent/cni"), "{msg}");
    assert!(msg.contains("containernetworking-plugins"), "{msg}");
    assert!(net.attached().unwrap().is_empty());
}
