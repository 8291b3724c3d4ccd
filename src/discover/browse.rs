//! The laptop side: listen for robots with mdns-sd, a passive raw-TXT listener and the UDP
//! scan at once, and merge everything into [`Robot`]s.
//!
//! ```text
//!  thread "mdns-events"  mdns-sd browse _duckietown._tcp ─┐
//!  thread "mdns-raw-txt" 224.0.0.251:5353, raw TXT RDATA ──┼─► channel ─► Browser (Fleet) ─► Change
//!  thread "udp-scan"     pings to :11411, pongs ───────────┘
//! ```
//!
//! [`discover`] listens for a while and returns what it heard; [`resolve`] stops as soon as
//! one name is found; [`Browser`] is the live view (`--watch`). Dropping a `Browser` stops its
//! threads and the mdns-sd daemon.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent};

use super::dns::{self, TxtRecord};
use super::fleet::{Fleet, normalise_name};
use super::parse::{self, SERVICE_TYPE};
use super::udp::{self, Answer, ScanOptions};
use super::{DiscoverError, Robot};

/// The mDNS group and port.
const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_PORT: u16 = 5353;
/// How often background threads look at their stop flag.
const POLL: Duration = Duration::from_millis(100);
/// In a live view, scan with UDP again this often…
const RESCAN: Duration = Duration::from_secs(10);
/// …and forget UDP answers older than this (two missed scans and a half).
const PONG_MAX_AGE: Duration = Duration::from_secs(25);
/// A service mdns-sd reports removed stays this long, while the robot is asked again (a new
/// mDNS query, a UDP ping); an answer cancels the removal. Anyone on the LAN can make mdns-sd
/// drop every robot (a PTR record with the cache-flush bit set flushes all instances of the
/// type within a second), so a removal is a question, not an answer. A real goodbye costs
/// this much delay.
const REMOVAL_GRACE: Duration = Duration::from_millis(1500);
/// At most one fresh mDNS query per this interval (RFC 6762 §5.2: no faster than once a
/// second).
const REQUERY_EVERY: Duration = Duration::from_secs(1);

/// What to listen with.
#[derive(Clone, Debug)]
pub struct BrowseOptions {
    /// Browse mDNS (and listen for raw TXT records).
    pub mdns: bool,
    /// Ping the local subnets on [`udp::PORT`].
    pub udp: bool,
    /// Include container bridges and veths in the UDP scan.
    pub all_interfaces: bool,
    /// A live view: scan with UDP again every 10 s and forget robots that stop answering.
    pub live: bool,
    /// The UDP port robots answer on ([`udp::PORT`]; other values are for tests).
    pub udp_port: u16,
}

impl Default for BrowseOptions {
    fn default() -> Self {
        BrowseOptions {
            mdns: true,
            udp: true,
            all_interfaces: false,
            live: false,
            udp_port: udp::PORT,
        }
    }
}

/// A robot appeared, changed or went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// First heard.
    Added(Robot),
    /// Something about it changed.
    Updated(Robot),
    /// Said goodbye, expired, or stopped answering (its last known state).
    Removed(Robot),
}

/// What [`discover`] heard.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// Robots, sorted by host name.
    pub robots: Vec<Robot>,
    /// Things worth telling the user (a listener that could not start…).
    pub warnings: Vec<String>,
}

enum Input {
    Resolved {
        fullname: String,
        addresses: Vec<IpAddr>,
        rdata: Vec<u8>,
    },
    Removed(String),
    RawTxt(TxtRecord),
    Answer(IpAddr, Answer),
    Warning(String),
}

/// A running discovery. See the module docs.
pub struct Browser {
    rx: mpsc::Receiver<Input>,
    fleet: Fleet,
    known: BTreeMap<String, Robot>,
    stop: Arc<AtomicBool>,
    daemon: Option<ServiceDaemon>,
    threads: Vec<JoinHandle<()>>,
    warnings: Vec<String>,
    live: bool,
    next_expiry: Instant,
    /// Removals in their grace period: normalised full name → (full name, when mdns-sd
    /// reported it).
    pending: BTreeMap<String, (String, Instant)>,
    /// Addresses for the UDP scanner to ping again now.
    recheck: Option<mpsc::Sender<IpAddr>>,
}

impl Browser {
    /// Starts listening. Fails only when no listener at all could start; a listener that
    /// failed while another runs becomes a warning.
    pub fn start(opts: &BrowseOptions) -> Result<Browser, DiscoverError> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut b = Browser {
            rx,
            fleet: Fleet::new(),
            known: BTreeMap::new(),
            stop: stop.clone(),
            daemon: None,
            threads: Vec::new(),
            warnings: Vec::new(),
            live: opts.live,
            next_expiry: Instant::now() + RESCAN,
            pending: BTreeMap::new(),
            recheck: None,
        };
        let mdns_err = if opts.mdns {
            match start_mdns(&tx, &stop) {
                Ok((daemon, threads)) => {
                    b.daemon = Some(daemon);
                    b.threads.extend(threads);
                    None
                }
                Err(e) => Some(e),
            }
        } else {
            Some("disabled".to_string())
        };
        let udp_err = if opts.udp {
            let scan_opts = ScanOptions {
                all_interfaces: opts.all_interfaces,
                port: opts.udp_port,
                rescan: opts.live.then_some(RESCAN),
            };
            let (tx, stop) = (tx.clone(), stop.clone());
            let (recheck_tx, recheck_rx) = mpsc::channel();
            b.recheck = Some(recheck_tx);
            match std::thread::Builder::new()
                .name("udp-scan".into())
                .spawn(move || {
                    let res = udp::scan(&scan_opts, &stop, &recheck_rx, |ip, a| {
                        let _ = tx.send(Input::Answer(ip, a));
                    });
                    if let Err(e) = res {
                        let _ = tx.send(Input::Warning(format!("UDP scan stopped: {e}")));
                    }
                }) {
                Ok(t) => {
                    b.threads.push(t);
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        } else {
            Some("disabled".to_string())
        };
        match (mdns_err, udp_err) {
            (Some(mdns), Some(udp)) => Err(DiscoverError::NoListener { mdns, udp }),
            (Some(m), None) if m != "disabled" => {
                b.warnings.push(format!(
                    "mDNS is unavailable ({m}); using the UDP scan only"
                ));
                Ok(b)
            }
            _ => Ok(b),
        }
    }

    /// Waits until something changes or `deadline` passes, and returns the changes (empty at
    /// the deadline).
    pub fn wait(&mut self, deadline: Instant) -> Vec<Change> {
        loop {
            let mut changes = Vec::new();
            let now = Instant::now();
            if self.live && now >= self.next_expiry {
                self.next_expiry = now + Duration::from_secs(1);
                for host in self.fleet.expire_pongs(now, PONG_MAX_AGE) {
                    self.update(&host, &mut changes);
                }
            }
            self.apply_due_removals(now, &mut changes);
            let next_due = self.pending.values().map(|(_, t)| *t + REMOVAL_GRACE).min();
            let until = next_due.map_or(deadline, |d| d.min(deadline));
            let wait = until
                .saturating_duration_since(now)
                .min(Duration::from_secs(1));
            match self.rx.recv_timeout(wait) {
                Ok(input) => {
                    self.apply(input, &mut changes);
                    while let Ok(more) = self.rx.try_recv() {
                        self.apply(more, &mut changes);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Every listener has stopped: nothing more will come.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_secs(1)),
                    );
                }
            }
            if !changes.is_empty() || Instant::now() >= deadline {
                return changes;
            }
        }
    }

    fn apply(&mut self, input: Input, changes: &mut Vec<Change>) {
        let now = Instant::now();
        let host = match input {
            Input::Resolved {
                fullname,
                addresses,
                rdata,
            } => {
                self.pending.remove(&normalise_name(&fullname));
                self.fleet.resolved(&fullname, &addresses, rdata)
            }
            Input::Removed(fullname) => {
                if self.fleet.has_service(&fullname) {
                    let host = parse::parse_instance(&fullname).map(|i| i.hostname);
                    if let (Some(tx), Some(addr)) =
                        (&self.recheck, host.and_then(|h| self.fleet.pong_addr(&h)))
                    {
                        let _ = tx.send(addr);
                    }
                    self.pending
                        .entry(normalise_name(&fullname))
                        .or_insert((fullname, now));
                }
                None
            }
            Input::RawTxt(r) => self.fleet.raw_txt(&r.name, r.ttl, r.rdata),
            Input::Answer(ip, Answer::Pong(p)) => self.fleet.pong(ip, p, now),
            Input::Answer(ip, Answer::Agent(a)) => self.fleet.agent_pong(ip, a, now),
            Input::Warning(w) => {
                self.warnings.push(w);
                None
            }
        };
        if let Some(host) = host {
            self.update(&host, changes);
        }
    }

    /// Removals whose grace period is over, and that nothing contradicted, take effect.
    fn apply_due_removals(&mut self, now: Instant, changes: &mut Vec<Change>) {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, (_, t))| now >= *t + REMOVAL_GRACE)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let Some((name, since)) = self.pending.remove(&key) else {
                continue;
            };
            if let Some(host) = self.fleet.removed(&name, since) {
                self.update(&host, changes);
            }
        }
    }

    fn update(&mut self, host: &str, changes: &mut Vec<Change>) {
        match (self.fleet.robot(host), self.known.get(host)) {
            (Some(new), None) => {
                self.known.insert(host.to_string(), new.clone());
                changes.push(Change::Added(new));
            }
            (Some(new), Some(old)) if new != *old => {
                self.known.insert(host.to_string(), new.clone());
                changes.push(Change::Updated(new));
            }
            (None, Some(_)) => {
                if let Some(old) = self.known.remove(host) {
                    changes.push(Change::Removed(old));
                }
            }
            _ => {}
        }
    }

    /// Every robot known now, sorted by host name.
    pub fn robots(&self) -> Vec<Robot> {
        self.fleet.robots()
    }

    /// The robot called `hostname`, if known.
    pub fn robot(&self, hostname: &str) -> Option<Robot> {
        self.fleet.robot(hostname)
    }

    /// Warnings collected so far (each returned once).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.daemon.take() {
            // Ends the daemon's thread, which closes the browse channel and so the event thread.
            let _ = d.shutdown();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts mdns-sd browsing and the raw TXT listener.
fn start_mdns(
    tx: &mpsc::Sender<Input>,
    stop: &Arc<AtomicBool>,
) -> Result<(ServiceDaemon, Vec<JoinHandle<()>>), String> {
    let daemon = ServiceDaemon::new().map_err(|e| e.to_string())?;
    let mut events = daemon.browse(SERVICE_TYPE).map_err(|e| e.to_string())?;
    let mut threads = Vec::new();
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        let requery = daemon.clone();
        let t = std::thread::Builder::new()
            .name("mdns-events".into())
            .spawn(move || {
                let mut last_query = Instant::now();
                let mut want_query = false;
                // The receiver a re-browse replaced: mdns-sd may still have sent it events
                // (the goodbyes of a robot's other services, in flight when the first one
                // asked for the re-browse) before its thread took the new browse. Read for a
                // second after the swap.
                let mut replaced: Option<(mdns_sd::Receiver<ServiceEvent>, Instant)> = None;
                while !stop.load(Ordering::Relaxed) {
                    // A removal: ask the LAN again (see REMOVAL_GRACE). Browsing anew sends a
                    // fresh query and replays the cache to the new receiver.
                    // (Only once the old receiver is drained: its events would be lost.)
                    if want_query && last_query.elapsed() >= REQUERY_EVERY && events.is_empty() {
                        if let Ok(rx) = requery.browse(SERVICE_TYPE) {
                            replaced = Some((std::mem::replace(&mut events, rx), Instant::now()));
                        }
                        last_query = Instant::now();
                        want_query = false;
                    }
                    let left_over = replaced.as_ref().and_then(|(r, _)| r.try_recv().ok());
                    if left_over.is_none()
                        && replaced
                            .as_ref()
                            .is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(1))
                    {
                        replaced = None;
                    }
                    let event = match left_over
                        .map(Ok)
                        .unwrap_or_else(|| events.recv_timeout(POLL))
                    {
                        Ok(e) => e,
                        Err(mdns_sd::RecvTimeoutError::Timeout) => continue,
                        Err(_) => break,
                    };
                    let input = match event {
                        ServiceEvent::ServiceResolved(s) => Input::Resolved {
                            addresses: s.addresses.iter().map(|a| a.to_ip_addr()).collect(),
                            rdata: parse::rdata_from_strings(
                                s.txt_properties.iter().map(|p| (p.key(), p.val())),
                            ),
                            fullname: s.fullname,
                        },
                        ServiceEvent::ServiceRemoved(_, fullname) => {
                            want_query = true;
                            Input::Removed(fullname)
                        }
                        _ => continue,
                    };
                    if tx.send(input).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        threads.push(t);
    }
    // The raw listener is an extra: without it, malformed python-zeroconf TXT records stay
    // unknown, everything else works.
    match raw_txt_socket() {
        Ok(sock) => {
            let (tx, stop) = (tx.clone(), stop.clone());
            if let Ok(t) = std::thread::Builder::new()
                .name("mdns-raw-txt".into())
                .spawn(move || listen_raw_txt(&sock, &tx, &stop))
            {
                threads.push(t);
            }
        }
        Err(e) => {
            let _ = tx.send(Input::Warning(format!(
                "cannot read raw mDNS records ({e}); malformed TXT records will show as unknown"
            )));
        }
    }
    Ok((daemon, threads))
}

/// A socket that receives every mDNS datagram sent to the IPv4 group. Bound to the group
/// address itself, so it never takes unicast answers meant for mdns-sd's sockets (which share
/// the port through `SO_REUSEPORT`).
fn raw_txt_socket() -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(MDNS_GROUP, MDNS_PORT)).into())?;
    join_all(&s);
    s.set_read_timeout(Some(POLL))?;
    Ok(s.into())
}

/// Joins the mDNS group on every IPv4 interface (again: joining twice is a harmless error).
fn join_all(s: &socket2::Socket) {
    if let Ok(locals) = udp::local_v4() {
        for l in locals {
            let _ = s.join_multicast_v4(&MDNS_GROUP, &l.addr);
        }
    }
}

fn listen_raw_txt(sock: &UdpSocket, tx: &mpsc::Sender<Input>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 9000];
    let mut last_join = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_join.elapsed() > Duration::from_secs(5) {
            // Interfaces that came up since: the kernel only delivers groups joined on them.
            join_all(&socket2::SockRef::from(sock));
            last_join = Instant::now();
        }
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        for r in dns::txt_records(&buf[..n]) {
            if parse::parse_instance(&r.name).is_some() && tx.send(Input::RawTxt(r)).is_err() {
                return;
            }
        }
    }
}

/// Listens for `timeout` and returns every robot heard.
pub fn discover(opts: &BrowseOptions, timeout: Duration) -> Result<Discovery, DiscoverError> {
    let mut b = Browser::start(opts)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        b.wait(deadline);
    }
    Ok(Discovery {
        robots: b.robots(),
        warnings: b.take_warnings(),
    })
}

/// After a robot is first seen, wait this much longer for the rest of its adverts (its agent,
/// its type) to arrive, since they come in separate records.
const RESOLVE_LINGER: Duration = Duration::from_millis(300);

/// Looks for the robot called `name` (`mybot` or `mybot.local`) for at most `timeout`, and
/// returns it as soon as it is heard with an address. `None` when it was not heard, or when no
/// listener could start (see [`try_resolve`] for the reason).
pub fn resolve(name: &str, timeout: Duration) -> Option<Robot> {
    try_resolve(name, timeout).ok().flatten()
}

/// [`resolve`], saying why discovery could not run.
pub fn try_resolve(name: &str, timeout: Duration) -> Result<Option<Robot>, DiscoverError> {
    let wanted = robot_name(name);
    let mut b = Browser::start(&BrowseOptions::default())?;
    let deadline = Instant::now() + timeout;
    let mut found_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = match found_at {
            Some(t) => (t + RESOLVE_LINGER).min(deadline),
            None => deadline,
        };
        if now >= until {
            break;
        }
        b.wait(until);
        if found_at.is_none() && b.robot(&wanted).is_some_and(|r| !r.addresses.is_empty()) {
            found_at = Some(Instant::now());
        }
    }
    Ok(b.robot(&wanted).filter(|r| !r.addresses.is_empty()))
}

/// `mybot`, `MyBot.local` or `mybot.local.` → `mybot`.
pub fn robot_name(name: &str) -> String {
    let n = name.trim_end_matches('.');
    let n = match n.len().checked_sub(".local".len()) {
        Some(cut) if n.is_char_boundary(cut) && n[cut..].eq_ignore_ascii_case(".local") => {
            &n[..cut]
        }
        _ => n,
    };
    n.to_ascii_lowercase()
}

/// How a robot's address was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The system resolver knew `NAME.local` (nss-mdns, /etc/hosts…).
    System(IpAddr),
    /// Discovery heard the robot.
    Discovered(IpAddr, Box<Robot>),
}

impl Resolved {
    /// The address to connect to.
    pub fn address(&self) -> IpAddr {
        match self {
            Resolved::System(a) | Resolved::Discovered(a, _) => *a,
        }
    }
}

/// The address of robot `name`: the system resolver's answer for `NAME.local` if it has one,
/// else discovery's (for at most `timeout`), preferring IPv4. `None` when neither knows it.
pub fn resolve_address(name: &str, timeout: Duration) -> Option<Resolved> {
    let host = format!("{}.local", robot_name(name));
    if let Ok(addrs) = (host.as_str(), 22).to_socket_addrs() {
        let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
        if let Some(a) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
            return Some(Resolved::System(*a));
        }
    }
    let robot = resolve(name, timeout)?;
    let addr = *robot.addresses.first()?;
    Some(Resolved::Discovered(addr, Box::new(robot)))
}

/// What an advertised host key fingerprint says about the key SSH sees. Information only: an
/// advert is unauthenticated, so `Matches` is no reason to trust a key and `Differs` may just
/// be someone else's advert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeardFingerprint {
    /// The robot advertised the same fingerprint.
    Matches,
    /// The robot advertised another one.
    Differs(String),
    /// No fingerprint was heard.
    NotHeard,
}

/// Compares the fingerprint `robot` advertised with `actual` (`SHA256:…`).
pub fn compare_fingerprint(robot: Option<&Robot>, actual: &str) -> HeardFingerprint {
    match robot
        .and_then(|r| r.agent.as_ref())
        .and_then(|a| a.host_key_fingerprint.as_deref())
    {
        None => HeardFingerprint::NotHeard,
        Some(h) if h == actual => HeardFingerprint::Matches,
        Some(h) => HeardFingerprint::Differs(h.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robot_names() {
        assert_eq!(robot_name("mybot"), "mybot");
        assert_eq!(robot_name("MyBot.local"), "mybot");
        assert_eq!(robot_name("mybot.LOCAL."), "mybot");
        assert_eq!(robot_name("local"), "local");
    }

    #[test]
    fn fingerprints_are_information() {
        let mut r = Robot {
            hostname: "b".into(),
            robot_type: None,
            configuration: None,
            hardware: None,
            status: super::super::Status::Unknown,
            addresses: vec![],
            agent: None,
            services: vec![],
            found_by: vec![],
        };
        assert_eq!(
            compare_fingerprint(Some(&r), "SHA256:x"),
            HeardFingerprint::NotHeard
        );
        r.agent = Some(super::super::AgentInfo {
            host_key_fingerprint: Some("SHA256:x".into()),
            ..Default::default()
        });
        assert_eq!(
            compare_fingerprint(Some(&r), "SHA256:x"),
            HeardFingerprint::Matches
        );
        assert_eq!(
            compare_fingerprint(Some(&r), "SHA256:y"),
            HeardFingerprint::Differs("SHA256:x".into())
        );
    }
}
