//! The UDP fallback on port 11411, both sides: Duckietown's "ping everyone on the subnet" scan,
//! added to the Duckietown shell because mDNS is unreliable on lab WiFi, and its responder.
//!
//! ```text
//!  dts (any port P)                                   robot :11411 (dt-agent, or ente's kvstore)
//!  {"version": "1", "port": P}            ───────►
//!                                         ◄───────    {"version": "1", "name", "type",
//!                                                      "configuration", "hardware"}   (to IP:P)
//!  {"version": "dts-agent/1", "port": P}  ───────►    (only to hosts that answered)
//!                                         ◄───────    {"version": "dts-agent/1", "name", "status",
//!                                                      "agent": {version, arch, ssh_port,
//!                                                                host_key_fingerprint}}
//! ```
//!
//! The first exchange is exactly Duckietown's (`utils/udp_responder_utils.py` in the shell,
//! `udp_responder.py` in dt-kvstore), so the Duckietown shell finds dt-agent robots and dts
//! finds stock ones. Both of their sides build packets with `cls(**json)`, which rejects unknown
//! keys: hence no extra keys in the standard pong and a separate agent query, whose only
//! difference is its `version` — which the kvstore does not check, so a stock robot answers it
//! with a second ordinary pong instead of logging a malformed packet.
//!
//! Scans are bounded like the Duckietown shell's: subnets larger than a /16 are skipped, at most
//! [`MAX_HOSTS_PER_INTERFACE`] addresses per interface (the nearest to ours), and container
//! bridges and veths (`docker*`, `br-*`, `veth*`, `virbr*`…) only when asked for.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::parse::{self, clean_text, is_host_label, text_field};
use super::{AgentInfo, Status};

/// The port Duckietown robots answer pings on.
pub const PORT: u16 = 11411;
/// `version` of Duckietown's packets.
pub const VERSION: &str = "1";
/// `version` of dts's agent query and dt-agent's answer to it.
pub const AGENT_VERSION: &str = "dts-agent/1";
/// Subnets with a shorter prefix are not scanned (as in the Duckietown shell).
pub const MIN_PREFIX: u8 = 16;
/// At most this many addresses are pinged per interface (as in the Duckietown shell).
pub const MAX_HOSTS_PER_INTERFACE: usize = 256;
/// Largest datagram read; pings and pongs are ~100 bytes.
const MAX_DATAGRAM: usize = 2048;
/// Pings are sent in bursts of this many, with a short pause between bursts.
const BURST: usize = 10;

/// Interface name prefixes of container and VM plumbing, scanned only when asked for.
const CONTAINER_PREFIXES: &[&str] = &[
    "docker", "br-", "veth", "virbr", "cni", "flannel", "podman", "lxcbr", "lxdbr", "vnet", "tap",
    "tun",
];

/// Duckietown's pong: who a robot is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pong {
    /// `name`: the robot's host name as it reported it (checked: one DNS label).
    pub name: String,
    /// `type` (`duckiebot`…).
    pub robot_type: Option<String>,
    /// `configuration` (`DB21J`…).
    pub configuration: Option<String>,
    /// `hardware` (`physical`, `virtual`, a board name).
    pub hardware: Option<String>,
}

impl Pong {
    /// Reads a pong leniently: a JSON object with at least a valid `name`.
    pub fn parse(bytes: &[u8]) -> Option<Pong> {
        let obj = json_object(bytes)?;
        Pong::from_obj(&obj)
    }

    fn from_obj(obj: &Map<String, Value>) -> Option<Pong> {
        let name = text_field(obj, "name").filter(|n| is_host_label(n))?;
        Some(Pong {
            name,
            robot_type: text_field(obj, "type"),
            configuration: text_field(obj, "configuration"),
            hardware: text_field(obj, "hardware"),
        })
    }

    /// The host name it belongs to (lower case).
    pub fn hostname(&self) -> Option<String> {
        is_host_label(&self.name).then(|| self.name.to_ascii_lowercase())
    }

    /// The wire form: exactly Duckietown's five keys (unknown values as empty strings, since
    /// their `PongPacket` wants strings).
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        json!({
            "version": VERSION,
            "name": self.name,
            "type": s(&self.robot_type),
            "configuration": s(&self.configuration),
            "hardware": s(&self.hardware),
        })
        .to_string()
        .into_bytes()
    }
}

/// dt-agent's answer to the agent query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPong {
    /// The robot's host name.
    pub name: String,
    /// `booting` while the agent starts, then `ready`.
    pub status: Option<Status>,
    /// The agent's advert.
    pub agent: AgentInfo,
}

impl AgentPong {
    /// Reads an agent pong leniently.
    pub fn parse(bytes: &[u8]) -> Option<AgentPong> {
        let obj = json_object(bytes)?;
        AgentPong::from_obj(&obj)
    }

    fn from_obj(obj: &Map<String, Value>) -> Option<AgentPong> {
        if obj.get("version")?.as_str()? != AGENT_VERSION {
            return None;
        }
        let name = text_field(obj, "name").filter(|n| is_host_label(n))?;
        let status = match obj.get("status").and_then(Value::as_str) {
            Some("ready") => Some(Status::Ready),
            Some("booting") => Some(Status::Booting),
            _ => None,
        };
        let agent = match obj.get("agent") {
            Some(Value::Object(a)) => AgentInfo::from_txt(a),
            _ => AgentInfo::default(),
        };
        Some(AgentPong {
            name,
            status,
            agent,
        })
    }

    /// The host name it belongs to (lower case).
    pub fn hostname(&self) -> Option<String> {
        is_host_label(&self.name).then(|| self.name.to_ascii_lowercase())
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let status = match self.status {
            Some(Status::Ready) => Value::from("ready"),
            Some(Status::Booting) => Value::from("booting"),
            _ => Value::Null,
        };
        json!({
            "version": AGENT_VERSION,
            "name": self.name,
            "status": status,
            "agent": self.agent.to_json(),
        })
        .to_string()
        .into_bytes()
    }
}

/// What a datagram received by the scanner turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A Duckietown pong.
    Pong(Pong),
    /// A dt-agent answer to the agent query.
    Agent(AgentPong),
}

impl Answer {
    /// Classifies a datagram; `None` for anything that is neither.
    pub fn parse(bytes: &[u8]) -> Option<Answer> {
        let obj = json_object(bytes)?;
        if obj.get("version").and_then(Value::as_str) == Some(AGENT_VERSION) {
            AgentPong::from_obj(&obj).map(Answer::Agent)
        } else {
            Pong::from_obj(&obj).map(Answer::Pong)
        }
    }
}

/// A ping as a responder reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// Where to send the answer (on the sender's address).
    pub port: u16,
    /// Whether this is dts's agent query rather than Duckietown's ping.
    pub agent_query: bool,
}

impl Ping {
    /// Reads a ping leniently: a JSON object with a string `version` and a `port` 1–65535.
    pub fn parse(bytes: &[u8]) -> Option<Ping> {
        let obj = json_object(bytes)?;
        let version = obj.get("version")?.as_str()?;
        let port = parse::port_field(&obj, "port")?;
        Some(Ping {
            port,
            agent_query: version == AGENT_VERSION,
        })
    }

    /// The wire form of a ping asking for answers on `port`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let version = if self.agent_query {
            AGENT_VERSION
        } else {
            VERSION
        };
        json!({"version": version, "port": self.port})
            .to_string()
            .into_bytes()
    }
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    if bytes.len() > MAX_DATAGRAM {
        return None;
    }
    match serde_json::from_slice::<Value>(bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

impl AgentInfo {
    /// The agent fields of a TXT object or an agent pong; each unknown when absent or odd.
    pub fn from_txt(obj: &Map<String, Value>) -> AgentInfo {
        AgentInfo {
            version: text_field(obj, "version"),
            arch: text_field(obj, "arch"),
            ssh_port: parse::port_field(obj, "ssh_port"),
            host_key_fingerprint: text_field(obj, "host_key_fingerprint"),
        }
    }

    /// The JSON object dt-agent publishes (TXT of `DT::AGENT::<host>`, agent pong).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("version".into(), self.version.clone().into());
        m.insert("arch".into(), self.arch.clone().into());
        m.insert("ssh_port".into(), self.ssh_port.into());
        m.insert(
            "host_key_fingerprint".into(),
            self.host_key_fingerprint.clone().into(),
        );
        m
    }
}

// ---------------------------------------------------------------------------------------------
// Which addresses to ping.

/// An IPv4 address of a local interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalV4 {
    /// Interface name.
    pub interface: String,
    /// Our address on it.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// The IPv4 addresses of this host's interfaces that are up (loopback excluded).
pub fn local_v4() -> io::Result<Vec<LocalV4>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .filter(|i| !i.is_loopback() && i.is_oper_up())
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => Some(LocalV4 {
                interface: i.name,
                addr: v4.ip,
                prefix_len: v4.prefixlen,
            }),
            _ => None,
        })
        .collect())
}

/// Whether an interface name is container or VM plumbing (see [`CONTAINER_PREFIXES`]).
pub fn is_container_interface(name: &str) -> bool {
    CONTAINER_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The addresses to ping, per interface: every host of each subnet of a /16 or smaller, the
/// nearest [`MAX_HOSTS_PER_INTERFACE`] to our own address, never our own, the network or the
/// broadcast address; container interfaces only with `include_containers`. An address appears
/// once even if two interfaces share a subnet.
pub fn candidates(locals: &[LocalV4], include_containers: bool) -> Vec<(String, Vec<Ipv4Addr>)> {
    let mut seen: HashSet<Ipv4Addr> = locals.iter().map(|l| l.addr).collect();
    let mut out: Vec<(String, Vec<Ipv4Addr>)> = Vec::new();
    for l in locals {
        if l.addr.is_loopback() || l.prefix_len < MIN_PREFIX || l.prefix_len > 30 {
            continue;
        }
        if !include_containers && is_container_interface(&l.interface) {
            continue;
        }
        let own = u32::from(l.addr);
        let mask = u32::MAX << (32 - u32::from(l.prefix_len));
        let (first, last) = ((own & mask) + 1, (own | !mask) - 1);
        let mut hosts = Vec::new();
        let mut d = 1u32;
        while hosts.len() < MAX_HOSTS_PER_INTERFACE
            && (own.saturating_sub(first) >= d || last.saturating_sub(own) >= d)
        {
            for h in [own.checked_sub(d), own.checked_add(d)]
                .into_iter()
                .flatten()
            {
                if (first..=last).contains(&h) && hosts.len() < MAX_HOSTS_PER_INTERFACE {
                    let a = Ipv4Addr::from(h);
                    if seen.insert(a) {
                        hosts.push(a);
                    }
                }
            }
            d += 1;
        }
        hosts.sort();
        match out.iter_mut().find(|(n, _)| *n == l.interface) {
            Some((_, v)) => v.extend(hosts),
            None => out.push((l.interface.clone(), hosts)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The scanner (dts side).

/// How to scan.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Include container bridges and veths.
    pub all_interfaces: bool,
    /// Port the robots answer on ([`PORT`]).
    pub port: u16,
    /// Scan again this often (for `--watch`); `None`: one scan (three rounds of pings).
    pub rescan: Option<Duration>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            all_interfaces: false,
            port: PORT,
            rescan: None,
        }
    }
}

/// Pings the local subnets and reports every answer (with its sender) to `on_answer` until
/// `stop` is set. Each scan is three rounds (at 0, 0.3 and 1 s: UDP and first ARP lookups lose
/// packets); every host that answers a ping gets one agent query per scan.
///
/// Addresses arriving on `recheck` get a ping and an agent query at once: the browser asks
/// that when a robot's mDNS adverts went away, to tell a goodbye from a spoofed flush.
pub fn scan(
    opts: &ScanOptions,
    stop: &AtomicBool,
    recheck: &mpsc::Receiver<IpAddr>,
    mut on_answer: impl FnMut(IpAddr, Answer),
) -> io::Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let reply_port = sock.local_addr()?.port();
    let ping = Ping {
        port: reply_port,
        agent_query: false,
    }
    .to_bytes();
    let query = Ping {
        port: reply_port,
        agent_query: true,
    }
    .to_bytes();
    let rounds = [
        Duration::ZERO,
        Duration::from_millis(300),
        Duration::from_secs(1),
    ];
    let mut scan_start = Instant::now();
    let mut round = 0;
    let mut targets: Vec<Ipv4Addr> = Vec::new();
    let mut queried: HashSet<IpAddr> = HashSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        while let Ok(ip) = recheck.try_recv() {
            send_nowait(&sock, &ping, SocketAddr::new(ip, opts.port));
            send_nowait(&sock, &query, SocketAddr::new(ip, opts.port));
        }
        let now = Instant::now();
        if round < rounds.len() && now >= scan_start + rounds[round] {
            if round == 0 {
                targets = candidates(&local_v4()?, opts.all_interfaces)
                    .into_iter()
                    .flat_map(|(_, v)| v)
                    .collect();
                queried.clear();
            }
            for (i, t) in targets.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                send_nowait(&sock, &ping, SocketAddr::from((*t, opts.port)));
                if i % BURST == BURST - 1 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            round += 1;
        } else if round == rounds.len()
            && let Some(every) = opts.rescan
            && now >= scan_start + every
        {
            scan_start = now;
            round = 0;
            continue;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let Some(answer) = Answer::parse(&buf[..n]) else {
                    continue;
                };
                let ip = from.ip();
                if matches!(answer, Answer::Pong(_)) && queried.insert(ip) {
                    send_nowait(&sock, &query, SocketAddr::new(ip, opts.port));
                }
                on_answer(ip, answer);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // ICMP port unreachable from a host that got a ping surfaces here on Linux.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends without blocking. Pings to addresses nobody has wait in the kernel for ARP, and
/// count against the socket's send buffer meanwhile: a blocking send would stall the scan (and
/// its stop) for the ARP timeout. A ping that does not fit now is dropped; the next round
/// sends it again. Unreachable hosts and down links are expected on a scan, too.
fn send_nowait(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket2::SockRef::from(sock).send_to_with_flags(bytes, &to.into(), libc::MSG_DONTWAIT);
}

// ---------------------------------------------------------------------------------------------
// The responder (dt-agent side).

/// What the responder answers with; shared so the daemon can flip `booting` to `ready`.
#[derive(Clone, Debug)]
pub struct Answers {
    /// Answer to Duckietown's ping.
    pub pong: Pong,
    /// Answer to dts's agent query.
    pub agent: AgentPong,
}

/// Answers pings on a UDP port from a thread of its own until stopped or dropped.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    local: SocketAddr,
}

/// Most answers per second: a ping's source address can be forged, and every answer is a few
/// times larger than the ping, so the responder must not be a useful reflector.
const MAX_ANSWERS_PER_SEC: u32 = 64;

impl Responder {
    /// Binds `addr` (normally `0.0.0.0:11411`) and starts answering. An `AddrInUse` error means
    /// something else answers there (on ente robots, the kvstore container).
    pub fn bind(addr: SocketAddr, answers: Arc<Mutex<Answers>>) -> io::Result<Responder> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let local = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("udp-responder".into())
                .spawn(move || respond(&sock, &stop, &answers))?
        };
        Ok(Responder {
            stop,
            thread: Some(thread),
            local,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(sock: &UdpSocket, stop: &AtomicBool, answers: &Mutex<Answers>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (mut window, mut sent) = (Instant::now(), 0u32);
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let Some(ping) = Ping::parse(&buf[..n]) else {
            continue;
        };
        if window.elapsed() >= Duration::from_secs(1) {
            (window, sent) = (Instant::now(), 0);
        }
        if sent >= MAX_ANSWERS_PER_SEC {
            continue;
        }
        sent += 1;
        let reply = {
            let a = answers.lock().unwrap_or_else(|e| e.into_inner());
            if ping.agent_query {
                a.agent.to_bytes()
            } else {
                a.pong.to_bytes()
            }
        };
        // A sender that went away is not our problem.
        let _ = sock.send_to(&reply, (from.ip(), ping.port));
    }
}

/// `s` as a pong `name`, if it is a valid host label (for building answers).
pub fn pong_name(s: &str) -> Option<String> {
    clean_text(s).filter(|n| is_host_label(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_round_trip_and_leniency() {
        let p = Ping {
            port: 40000,
            agent_query: false,
        };
        assert_eq!(Ping::parse(&p.to_bytes()), Some(p));
        assert_eq!(
            Ping::parse(br#"{"version": "1", "port": 5}"#),
            Some(Ping {
                port: 5,
                agent_query: false
            })
        );
        assert!(
            Ping::parse(br#"{"version": "dts-agent/1", "port": 5}"#)
                .unwrap()
                .agent_query
        );
        for bad in [
            &b""[..],
            b"{}",
            br#"{"version": 1, "port": 5}"#,
            br#"{"version": "1", "port": 0}"#,
            br#"{"version": "1", "port": 70000}"#,
            br#"[1]"#,
            b"\xff\xfe",
        ] {
            assert_eq!(Ping::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pong_is_duckietowns_exact_shape() {
        let p = Pong {
            name: "bot".into(),
            robot_type: Some("duckiebot".into()),
            configuration: Some("DB21J".into()),
            hardware: None,
        };
        let v: Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 5);
        for k in ["version", "name", "type", "configuration", "hardware"] {
            assert!(keys.contains(&k.to_string()));
        }
        assert_eq!(
            Answer::parse(&p.to_bytes()),
            Some(Answer::Pong(Pong {
                hardware: None,
                ..p.clone()
            }))
        );
        // The kvstore's exact output.
        let stock = br#"{"version": "1", "name": "autobot01", "type": "duckiebot", "configuration": "DB21J", "hardware": "jetson_nano_4gb"}"#;
        let Some(Answer::Pong(s)) = Answer::parse(stock) else {
            panic!()
        };
        assert_eq!(s.hardware.as_deref(), Some("jetson_nano_4gb"));
        assert_eq!(
            Answer::parse(br#"{"version": "1", "name": "bad name"}"#),
            None
        );
    }

    #[test]
    fn agent_pong_round_trip() {
        let a = AgentPong {
            name: "bot".into(),
            status: Some(Status::Booting),
            agent: AgentInfo {
                version: Some("0.1.0".into()),
                arch: Some("amd64".into()),
                ssh_port: Some(22),
                host_key_fingerprint: None,
            },
        };
        assert_eq!(Answer::parse(&a.to_bytes()), Some(Answer::Agent(a)));
    }

    fn l(i: &str, a: &str, p: u8) -> LocalV4 {
        LocalV4 {
            interface: i.into(),
            addr: a.parse().unwrap(),
            prefix_len: p,
        }
    }

    #[test]
    fn candidates_are_bounded() {
        let c = candidates(&[l("wlan0", "192.168.1.10", 24)], false);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].1.len(), 253);
        assert!(!c[0].1.contains(&"192.168.1.10".parse().unwrap()));
        assert!(!c[0].1.contains(&"192.168.1.0".parse().unwrap()));
        assert!(!c[0].1.contains(&"192.168.1.255".parse().unwrap()));

        let c = candidates(&[l("eth0", "10.1.200.7", 16)], false);
        assert_eq!(c[0].1.len(), MAX_HOSTS_PER_INTERFACE);
        assert!(c[0].1.contains(&"10.1.200.6".parse().unwrap()));
        assert!(c[0].1.contains(&"10.1.200.135".parse().unwrap()));
        assert!(!c[0].1.contains(&"10.1.0.1".parse().unwrap()));

        // At the bottom of a subnet the window slides up.
        let c = candidates(&[l("eth0", "10.1.0.1", 16)], false);
        assert_eq!(c[0].1.len(), MAX_HOSTS_PER_INTERFACE);
        assert_eq!(c[0].1[0], "10.1.0.2".parse::<Ipv4Addr>().unwrap());

        assert!(candidates(&[l("eth0", "10.0.0.1", 8)], false).is_empty());
        assert!(candidates(&[l("eth0", "10.0.0.1", 32)], false).is_empty());
        assert!(candidates(&[l("docker0", "172.17.0.1", 16)], false).is_empty());
        assert!(candidates(&[l("veth1a2b", "10.9.0.1", 24)], false).is_empty());
        assert_eq!(
            candidates(&[l("br-1234", "10.9.0.1", 24)], true)[0].1.len(),
            253
        );
        // Two addresses in one subnet: each host once.
        let c = candidates(
            &[l("eth0", "10.2.0.1", 24), l("eth1", "10.2.0.2", 24)],
            false,
        );
        let total: usize = c.iter().map(|(_, v)| v.len()).sum();
        assert_eq!(total, 252);
    }

    #[test]
    fn responder_answers_and_scanner_hears() {
        let answers = Arc::new(Mutex::new(Answers {
            pong: Pong {
                name: "bot".into(),
                robot_type: Some("duckiebot".into()),
                configuration: Some("DB21J".into()),
                hardware: Some("physical".into()),
            },
            agent: AgentPong {
                name: "bot".into(),
                status: Some(Status::Ready),
                agent: AgentInfo::default(),
            },
        }));
        let r = Responder::bind("127.0.0.1:0".parse().unwrap(), answers).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let port = client.local_addr().unwrap().port();
        let mut buf = [0u8; 2048];
        client.send_to(b"garbage", r.local_addr()).unwrap();
        for agent_query in [false, true] {
            let ping = Ping { port, agent_query }.to_bytes();
            client.send_to(&ping, r.local_addr()).unwrap();
            let (n, _) = client.recv_from(&mut buf).unwrap();
            match Answer::parse(&buf[..n]).unwrap() {
                Answer::Pong(p) => assert!(!agent_query && p.name == "bot"),
                Answer::Agent(a) => assert!(agent_query && a.status == Some(Status::Ready)),
            }
        }
        drop(r);
    }
}
