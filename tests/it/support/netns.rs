//! Throwaway networks of "robots" for tests: one private Linux bridge per [`TestNet`], one network
//! namespace per [`Robot`], joined by a veth pair, so discovery, SSH and transfer code can be tested
//! against several hosts on one machine without touching the host's real network.
//!
//! ```text
//!  host netns                                    robot netns `dtsns-<pid>-<n>-<name>`
//!  ───────────────────────────────────           ──────────────────────────────────────
//!  bridge dtb<pid>x<n>   10.231.X.1/24
//!    ├── veth dth<pid>x<n>  ◄══ veth pair ══►    eth0  10.231.X.2/24  (lo up)
//!    │     (tc tbf here …)                         default via 10.231.X.1
//!    │                                             224.0.0.0/4 dev eth0  (mDNS)
//!    │                                             (… and tc tbf here: `set_rate`)
//!    └── veth dth<pid>x<m>  ◄══ veth pair ══►    eth0  10.231.X.3/24  (next robot)
//! ```
//!
//! What it owns: the bridge, the namespaces, the veths and every process running inside a robot's
//! namespace (whether started with [`Robot::spawn`] or not). All of it is removed when the owning
//! value is dropped, also while a test unwinds from a panic; `Drop` only logs failures, it never
//! panics (a panic during unwinding would abort the whole test binary). What it does not own:
//! anything outside these names, nor the host's firewall or `ip_forward` setting. No NAT is set
//! up, so robots reach each other and the host and nothing else — tests must not address
//! anything off the bridge (on a host with `ip_forward=1` such packets would be routed out).
//!
//! Every resource name carries the creating process id, so that [`TestNet::new`] can sweep what a
//! killed test run left behind (names whose pid no longer exists) without touching the resources
//! of test processes that are still running. Subnets are chosen under an `flock` on
//! [`LOCK_PATH`], away from every route and address already on the host, so concurrent test
//! binaries never pick the same /24.
//!
//! Setup helpers panic with the failing command and its stderr: inside a test that is a test
//! failure, and the partially built resources are still removed by `Drop`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{find_cmd, is_root, require_cmd, require_root};

/// Bridge names: `dtb<pid>x<n>`.
const BRIDGE_PREFIX: &str = "dtb";
/// Host-side veth names: `dth<pid>x<n>`. The robot side is always [`ROBOT_IFACE`] in its netns.
const VETH_PREFIX: &str = "dth";
/// Namespace names: `dtsns-<pid>-<n>-<robot name>`.
const NETNS_PREFIX: &str = "dtsns-";
/// Interface name inside every robot namespace; like a real Duckiebot's wired interface, and
/// unique because each robot has a namespace of its own.
const ROBOT_IFACE: &str = "eth0";
/// Where `ip netns add` bind-mounts namespaces (iproute2's `NETNS_RUN_DIR`).
const NETNS_DIR: &str = "/run/netns";
/// Linux interface names are at most `IFNAMSIZ - 1` bytes.
const IFNAME_MAX: usize = 15;
/// Serialises sweep + subnet choice + bridge creation across test processes.
pub const LOCK_PATH: &str = "/run/dts-testnet.lock";
/// Candidate /16s for the per-net /24, tried in order; a base is skipped where the host already
/// routes any part of it (e.g. a VPN that owns all of 10/8).
const SUBNET_BASES: &[[u8; 2]] = &[[10, 231], [10, 232], [172, 31], [192, 168]];
/// Multicast range routed out of the robot's interface, so that mDNS (224.0.0.251) and other
/// groups work even on a robot whose default route is changed by a test.
const MULTICAST_NET: &str = "224.0.0.0/4";
/// Name of the nftables table installed by [`Robot::block_multicast`].
const BLOCK_TABLE: &str = "dts_block_multicast";

/// Per-process counter making names and subnets unique among the nets and robots of one process.
static SEQ: AtomicU32 = AtomicU32::new(0);

fn next_seq() -> u32 {
    // Wrap well below anything that would push an interface name past IFNAME_MAX.
    SEQ.fetch_add(1, Ordering::Relaxed) % 10_000
}

/// `true` when namespaces can be made here (root, `ip` present); otherwise prints the usual
/// `SKIP:` line and returns `false`.
pub fn require_netns(why: &str) -> bool {
    require_root(why) && require_cmd("ip")
}

/// A private bridge with a /24; the host holds `.1`. Robots are added with [`TestNet::robot`].
pub struct TestNet {
    bridge: String,
    /// Network address of the /24 (`a.b.c.0`).
    net: Ipv4Addr,
    /// Last host byte handed out (`1` = the host itself).
    last_host: u8,
    /// Robots made by this net, removed again on drop in case a `Robot` outlives its net.
    robots: Vec<(String, String)>,
}

impl TestNet {
    /// Make a new bridge with a free /24, after sweeping leftovers of dead test processes.
    /// Panics (failing the test) when that is impossible; guard with [`require_netns`].
    pub fn new() -> TestNet {
        assert!(
            is_root(),
            "TestNet::new needs root (guard with support::netns::require_netns)"
        );
        let pid = std::process::id();
        let seq = next_seq();
        let bridge = format!("{BRIDGE_PREFIX}{pid}x{seq}");
        assert!(
            bridge.len() <= IFNAME_MAX,
            "bridge name `{bridge}` too long"
        );

        let _lock = Lock::acquire();
        sweep_leftovers();
        warn_if_host_firewall_drops_bridged();
        let net = pick_subnet(pid, seq);
        // Own the name before creating it, so a failure below still removes the bridge.
        let tn = TestNet {
            bridge,
            net,
            last_host: 1,
            robots: Vec::new(),
        };
        // No STP, no forward delay: ports forward at once. No multicast snooping: the bridge
        // floods every group to every port like a dumb switch, so no IGMP querier is needed.
        ip(&format!(
            "link add name {} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            tn.bridge
        ));
        ip(&format!("addr add {}/24 dev {}", tn.host_addr(), tn.bridge));
        ip(&format!("link set {} up", tn.bridge));
        tn
    }

    /// The bridge's interface name on the host.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The host's address on the bridge (`.1`), every robot's gateway.
    pub fn host_addr(&self) -> Ipv4Addr {
        host(self.net, 1)
    }

    /// The net as `a.b.c.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}/24", self.net)
    }

    /// Add a robot: a namespace with loopback up and `eth0` on the bridge at the next address,
    /// with a default route via the host and a multicast route. `name` is for humans (it is
    /// part of the namespace name, sanitised); it need not be unique.
    pub fn robot(&mut self, name: &str) -> Robot {
        assert!(self.last_host < 254, "TestNet {} is full", self.cidr());
        self.last_host += 1;
        let pid = std::process::id();
        let seq = next_seq();
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let robot = Robot {
            name: name.to_owned(),
            ns: format!("{NETNS_PREFIX}{pid}-{seq}-{clean}"),
            addr: host(self.net, self.last_host),
            gateway: self.host_addr(),
            host_iface: format!("{VETH_PREFIX}{pid}x{seq}"),
            robot_iface: ROBOT_IFACE.to_owned(),
            multicast_blocked_with: std::sync::Mutex::new(None),
        };
        assert!(
            robot.host_iface.len() <= IFNAME_MAX,
            "veth name `{}` too long",
            robot.host_iface
        );
        self.robots
            .push((robot.ns.clone(), robot.host_iface.clone()));

        let (ns, hv, rv) = (&robot.ns, &robot.host_iface, &robot.robot_iface);
        ip(&format!("netns add {ns}"));
        ip(&format!(
            "link add {hv} type veth peer name {rv} netns {ns}"
        ));
        ip(&format!("link set {hv} master {}", self.bridge));
        ip(&format!("link set {hv} up"));
        ip(&format!("-n {ns} link set lo up"));
        ip(&format!("-n {ns} addr add {}/24 dev {rv}", robot.addr));
        ip(&format!("-n {ns} link set {rv} up"));
        ip(&format!("-n {ns} route add default via {}", robot.gateway));
        ip(&format!("-n {ns} route add {MULTICAST_NET} dev {rv}"));
        robot
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for (ns, host_iface) in &self.robots {
            remove_robot(ns, host_iface);
        }
        if link_exists(&self.bridge)
            && let Err(e) = try_cmd("ip", &["link", "del", &self.bridge])
        {
            warn(&format!("removing bridge `{}`: {e}", self.bridge));
        }
    }
}

/// One robot: a network namespace on a [`TestNet`]'s bridge. Dropping it kills every process in
/// the namespace, deletes its veth pair and the namespace.
pub struct Robot {
    /// The name given to [`TestNet::robot`].
    pub name: String,
    /// Network namespace name, for `ip netns exec` / `ip -n`.
    pub ns: String,
    /// The robot's address on the bridge.
    pub addr: Ipv4Addr,
    /// Host-side veth (enslaved to the bridge).
    pub host_iface: String,
    /// Robot-side veth, inside [`Robot::ns`] (always `eth0`).
    pub robot_iface: String,
    gateway: Ipv4Addr,
    /// How `block_multicast` blocked (so `unblock_multicast` can undo it).
    multicast_blocked_with: std::sync::Mutex<Option<Blocker>>,
}

#[derive(Clone, Copy, Debug)]
enum Blocker {
    Nft,
    Iptables,
}

impl Robot {
    /// The robot's default gateway: the host's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// A `Command` running `cmd` inside the namespace (`ip netns exec NS cmd…`), to configure
    /// before running. Processes started this way are killed when the robot is dropped, too.
    /// A bare program name is resolved like [`super::find_cmd`] (so sbin tools are found).
    pub fn command(&self, cmd: &[&str]) -> Command {
        let (program, args) = cmd.split_first().expect("Robot::command: empty command");
        let mut c = Command::new(tool("ip"));
        c.args(["netns", "exec", &self.ns])
            .arg(tool(program))
            .args(args);
        c
    }

    /// Run `cmd` inside the namespace to completion, capturing stdout and stderr. Panics only
    /// when it cannot be started at all; check `status` yourself.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?} in `{}`: {e}", self.ns))
    }

    /// Start `cmd` inside the namespace: stdin null, stdout piped, stderr inherited (so daemon
    /// logs show up in the test output and can never fill a pipe and block). The process — and
    /// anything it leaves running in the namespace — is killed when the robot is dropped; the
    /// returned `Child` is yours to wait on.
    pub fn spawn(&self, cmd: &[&str]) -> Child {
        self.command(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in `{}`: {e}", self.ns))
    }

    /// Run `f` in this process on a fresh thread that has joined the robot's network namespace
    /// (`setns(CLONE_NEWNET)` is per thread), and return its result; a panic in `f` propagates.
    /// Sockets made inside stay in the namespace, and threads started inside (e.g. a tokio
    /// runtime built there) inherit it. Use it to test library code "on the robot" without a
    /// subprocess.
    pub fn in_netns<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("{NETNS_DIR}/{}", self.ns);
        let thread_name = format!("{}@{}", super::test_name(), self.name);
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(thread_name)
                .spawn_scoped(s, move || {
                    let file =
                        File::open(&path).unwrap_or_else(|e| panic!("opening `{path}`: {e}"));
                    // SAFETY: `file` is an open namespace file for the duration of the call; the
                    // call only changes this (new, otherwise unused) thread's network namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        panic!("setns(`{path}`): {}", std::io::Error::last_os_error());
                    }
                    drop(file);
                    f()
                })
                .expect("spawning the in-netns thread");
            handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Shape the robot's link with a token bucket of `rate` (tc syntax: `1mbit`, `500kbit`…) on
    /// both ends — host veth (towards the robot) and robot veth (towards the host) — so the
    /// limit holds in both directions. Calling again replaces the previous rate.
    pub fn set_rate(&self, rate: &str) {
        let tbf = [
            "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
        ];
        let mut host_side = vec!["qdisc", "replace", "dev", &self.host_iface];
        host_side.extend(tbf);
        run_or_panic("tc", &host_side);
        let mut robot_side = vec!["tc", "qdisc", "replace", "dev", &self.robot_iface];
        robot_side.extend(tbf);
        self.exec_or_panic(&robot_side);
    }

    /// Remove what [`Robot::set_rate`] installed (back to the default qdisc on both ends).
    pub fn clear_rate(&self) {
        run_or_panic("tc", &["qdisc", "del", "dev", &self.host_iface, "root"]);
        self.exec_or_panic(&["tc", "qdisc", "del", "dev", &self.robot_iface, "root"]);
    }

    /// Cut the cable: set the host end of the veth down (the robot sees no carrier).
    pub fn link_down(&self) {
        run_or_panic("ip", &["link", "set", &self.host_iface, "down"]);
    }

    /// Plug the cable back in.
    pub fn link_up(&self) {
        run_or_panic("ip", &["link", "set", &self.host_iface, "up"]);
    }

    /// Make the robot deaf and mute to multicast, as on a network that filters it: inside the
    /// namespace, drop IPv4 multicast (224.0.0.0/4), IPv6 multicast other than ICMPv6 (neighbour
    /// discovery keeps working) and UDP port 5353 either way (mDNS, including its unicast
    /// replies), in and out. Unicast to other ports is untouched. Uses nftables, else iptables.
    pub fn block_multicast(&self) {
        let mut guard = self
            .multicast_blocked_with
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            return;
        }
        if find_cmd("nft").is_some() {
            let mut rules = String::new();
            for (chain, hook) in [("in", "input"), ("out", "output")] {
                let _ = write!(
                    rules,
                    "add chain inet {BLOCK_TABLE} {chain} {{ type filter hook {hook} priority -10; policy accept; }}\n\
                     add rule inet {BLOCK_TABLE} {chain} ip daddr 224.0.0.0/4 drop\n\
                     add rule inet {BLOCK_TABLE} {chain} ip6 daddr ff00::/8 meta l4proto != ipv6-icmp drop\n\
                     add rule inet {BLOCK_TABLE} {chain} udp dport 5353 drop\n\
                     add rule inet {BLOCK_TABLE} {chain} udp sport 5353 drop\n"
                );
            }
            let script = format!("add table inet {BLOCK_TABLE}\n{rules}");
            self.exec_stdin_or_panic(&["nft", "-f", "-"], &script);
            *guard = Some(Blocker::Nft);
        } else if find_cmd("iptables").is_some() {
            for rule in iptables_block_rules() {
                let mut cmd = vec!["iptables", "-A"];
                cmd.extend(rule);
                self.exec_or_panic(&cmd);
            }
            *guard = Some(Blocker::Iptables);
        } else {
            panic!("block_multicast needs `nft` or `iptables`");
        }
    }

    /// Undo [`Robot::block_multicast`].
    pub fn unblock_multicast(&self) {
        let mut guard = self
            .multicast_blocked_with
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match guard.take() {
            None => {}
            Some(Blocker::Nft) => {
                self.exec_or_panic(&["nft", "delete", "table", "inet", BLOCK_TABLE])
            }
            Some(Blocker::Iptables) => {
                for rule in iptables_block_rules() {
                    let mut cmd = vec!["iptables", "-D"];
                    cmd.extend(rule);
                    self.exec_or_panic(&cmd);
                }
            }
        }
    }

    fn exec_or_panic(&self, cmd: &[&str]) {
        let out = self.exec(cmd);
        if !out.status.success() {
            panic!(
                "{cmd:?} in `{}` failed ({}): {}",
                self.ns,
                out.status,
                stderr_of(&out)
            );
        }
    }

    fn exec_stdin_or_panic(&self, cmd: &[&str], stdin: &str) {
        let mut child = self
            .command(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in `{}`: {e}", self.ns));
        let written = child
            .stdin
            .take()
            .map(|mut i| i.write_all(stdin.as_bytes()));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
        if let Some(Err(e)) = written {
            panic!("writing stdin of {cmd:?}: {e}");
        }
        if !out.status.success() {
            panic!(
                "{cmd:?} in `{}` failed ({}): {}\ninput:\n{stdin}",
                self.ns,
                out.status,
                stderr_of(&out)
            );
        }
    }
}

impl Drop for Robot {
    fn drop(&mut self) {
        remove_robot(&self.ns, &self.host_iface);
    }
}

/// iptables fallback of `block_multicast` (IPv4 only), as `-A`/`-D` argument tails.
fn iptables_block_rules() -> Vec<Vec<&'static str>> {
    let mut rules = Vec::new();
    for chain in ["INPUT", "OUTPUT"] {
        rules.push(vec![chain, "-d", "224.0.0.0/4", "-j", "DROP"]);
        rules.push(vec![chain, "-p", "udp", "--dport", "5353", "-j", "DROP"]);
        rules.push(vec![chain, "-p", "udp", "--sport", "5353", "-j", "DROP"]);
    }
    rules
}

// ---------------------------------------------------------------------------------------------
// Cleanup: everything below returns errors or logs them; nothing here may panic (Drop).

/// Kill everything in the namespace, delete the veth pair (from the host end, so it is gone at
/// once rather than when the kernel gets round to destroying the namespace) and the namespace.
fn remove_robot(ns: &str, host_iface: &str) {
    let ns_exists = std::path::Path::new(NETNS_DIR).join(ns).exists();
    if ns_exists {
        kill_netns_processes(ns);
    }
    if link_exists(host_iface)
        && let Err(e) = try_cmd("ip", &["link", "del", host_iface])
    {
        warn(&format!("removing veth `{host_iface}`: {e}"));
    }
    if ns_exists && let Err(e) = try_cmd("ip", &["netns", "del", ns]) {
        warn(&format!("removing netns `{ns}`: {e}"));
    }
}

/// SIGKILL every process whose network namespace is `ns` (that is `ip netns pids`: it compares
/// namespace inodes, so a recycled pid elsewhere is never hit). Each namespace is private to one
/// test, so everything in it is ours. Zombies of our own children stay until their `Child` is
/// waited on; they hold no namespace.
fn kill_netns_processes(ns: &str) {
    match try_cmd("ip", &["netns", "pids", ns]) {
        Ok(out) => {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: plain syscall; ESRCH (already gone) is fine.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        Err(e) => warn(&format!("listing processes in netns `{ns}`: {e}")),
    }
}

fn link_exists(name: &str) -> bool {
    try_cmd("ip", &["link", "show", "dev", name]).is_ok()
}

/// Remove resources named after test processes that no longer exist. Best effort: logs failures.
/// Links go first: deleting a namespace destroys its veth asynchronously, which would race with
/// deleting the host end by name.
fn sweep_leftovers() {
    match try_cmd("ip", &["-o", "link", "show"]) {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // `7: dth123x4@if6: <BROADCAST,…> …`
                let Some(name) = line.split(": ").nth(1) else {
                    continue;
                };
                let name = name.split('@').next().unwrap_or(name);
                let pid = owner_pid(name, BRIDGE_PREFIX, 'x')
                    .or_else(|| owner_pid(name, VETH_PREFIX, 'x'));
                if let Some(pid) = pid
                    && !pid_alive(pid)
                {
                    warn(&format!(
                        "sweeping link `{name}` left by dead test process {pid}"
                    ));
                    if let Err(e) = try_cmd("ip", &["link", "del", name]) {
                        warn(&format!("removing link `{name}`: {e}"));
                    }
                }
            }
        }
        Err(e) => warn(&format!("listing links: {e}")),
    }
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name, NETNS_PREFIX, '-')
                && !pid_alive(pid)
            {
                warn(&format!(
                    "sweeping netns `{name}` left by dead test process {pid}"
                ));
                kill_netns_processes(&name);
                if let Err(e) = try_cmd("ip", &["netns", "del", &name]) {
                    warn(&format!("removing netns `{name}`: {e}"));
                }
            }
        }
    }
}

/// With `br_netfilter` loaded and `bridge-nf-call-iptables` on, frames between two ports of a
/// bridge also cross the host's iptables FORWARD chain; Docker hosts set its policy to DROP,
/// which silently cuts robot-to-robot traffic (robot-to-host is unaffected). That is the host's
/// firewall, not ours to change, so say so up front instead of leaving a baffling ping failure.
fn warn_if_host_firewall_drops_bridged() {
    let on = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1");
    if !on || find_cmd("iptables").is_none() {
        return;
    }
    if let Ok(out) = try_cmd("iptables", &["-S", "FORWARD"])
        && String::from_utf8_lossy(&out.stdout).contains("-P FORWARD DROP")
    {
        warn(
            "bridge-nf-call-iptables=1 and the iptables FORWARD policy is DROP (Docker?): \
                 traffic between robots may be dropped; allow it with \
                 `iptables -I FORWARD -i dtb+ -o dtb+ -j ACCEPT`",
        );
    }
}

/// The pid in `<prefix><pid><sep><seq>…`, if `name` has that shape.
fn owner_pid(name: &str, prefix: &str, sep: char) -> Option<libc::pid_t> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, seq) = rest.split_once(sep)?;
    let seq_digits = seq.split('-').next()?;
    if seq_digits.is_empty() || !seq_digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

fn pid_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

// ---------------------------------------------------------------------------------------------
// Subnets.

fn host(net: Ipv4Addr, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, n)
}

/// First /24 in [`SUBNET_BASES`] overlapping no route (any table) and no address on the host.
/// The starting third octet is derived from pid and sequence number to spread concurrent runs.
/// Called with [`LOCK_PATH`] held, and the bridge is created before it is released, so the
/// chosen net is visible (as a route) to the next caller.
fn pick_subnet(pid: u32, seq: u32) -> Ipv4Addr {
    let taken = host_prefixes();
    let start = pid.wrapping_mul(31).wrapping_add(seq.wrapping_mul(7));
    for [a, b] in SUBNET_BASES {
        for i in 0..256u32 {
            let c = ((start + i) % 256) as u8;
            let net = Ipv4Addr::new(*a, *b, c, 0);
            if !taken.iter().any(|&(p, len)| overlaps((net, 24), (p, len))) {
                return net;
            }
        }
    }
    panic!("no free /24 in {SUBNET_BASES:?}; host prefixes: {taken:?}");
}

/// Every IPv4 prefix the host routes (all tables, default routes excluded) or has an address in.
fn host_prefixes() -> Vec<(Ipv4Addr, u8)> {
    const ROUTE_TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    let mut out = Vec::new();
    let routes = run_or_panic("ip", &["-4", "-o", "route", "show", "table", "all"]);
    for line in String::from_utf8_lossy(&routes.stdout).lines() {
        let mut words = line.split_whitespace();
        let mut dst = words.next().unwrap_or("");
        if ROUTE_TYPES.contains(&dst) {
            dst = words.next().unwrap_or("");
        }
        out.extend(parse_prefix(dst));
    }
    let addrs = run_or_panic("ip", &["-4", "-o", "addr", "show"]);
    for line in String::from_utf8_lossy(&addrs.stdout).lines() {
        // `2: eth0    inet 192.0.2.2/24 brd … scope global eth0`
        let mut words = line.split_whitespace().skip_while(|w| *w != "inet");
        out.extend(words.nth(1).and_then(parse_prefix));
    }
    out
}

/// `a.b.c.d/len` or `a.b.c.d` (a /32); `default` and garbage give `None`.
fn parse_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((addr, len))
}

fn overlaps((a, alen): (Ipv4Addr, u8), (b, blen): (Ipv4Addr, u8)) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(a) & mask == u32::from(b) & mask
}

// ---------------------------------------------------------------------------------------------
// Running commands.

/// Cross-process lock held while sweeping and choosing a subnet; released on drop (and by the
/// kernel if the process dies).
struct Lock(Option<File>);

impl Lock {
    fn acquire() -> Lock {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .unwrap_or_else(|e| panic!("opening `{LOCK_PATH}`: {e}"));
        loop {
            // SAFETY: valid fd; flock blocks until the lock is ours.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Lock(Some(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                panic!("flock(`{LOCK_PATH}`): {err}");
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Closing the file releases the lock; spelled out for the reader.
        drop(self.0.take());
    }
}

/// Absolute path of a tool (sbin may be missing from `$PATH`); the bare name if not found, so
/// the spawn error names it.
fn tool(name: &str) -> std::path::PathBuf {
    find_cmd(name).unwrap_or_else(|| name.into())
}

/// Run a tool; `Err` carries the exit status and stderr. Never panics.
fn try_cmd(name: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(tool(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{name}`: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{name} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            stderr_of(&out)
        ))
    }
}

fn run_or_panic(name: &str, args: &[&str]) -> Output {
    try_cmd(name, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip` with whitespace-separated arguments (our names never contain whitespace); panics on
/// failure.
fn ip(args: &str) {
    run_or_panic("ip", &args.split_whitespace().collect::<Vec<_>>());
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// A warning on stderr that cannot panic (unlike `eprintln!`), for use in `Drop`.
fn warn(msg: &str) {
    super::write_stderr_line(&format!("support::netns: warning: {msg}"));
}
