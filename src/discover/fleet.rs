//! What has been heard so far, merged into one [`Robot`] per host name. Pure: the browser feeds
//! it events (an mDNS service resolved or removed, raw TXT bytes, a UDP pong) and reads robots
//! back; nothing here does I/O or looks at the clock except through the times it is given.
//!
//! Everything fed in is bounded: at most [`MAX_HOSTS`] hosts, [`MAX_SERVICES`] services per
//! host and [`MAX_RAW_TXT`] remembered raw TXT records, so a flood of fake adverts costs memory
//! proportional to those limits and no more (excess adverts are dropped).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::parse::{self, Instance, Service};
use super::udp::{AgentPong, Pong};
use super::{AgentInfo, Robot, Status};

/// Most hosts tracked at once (a lab has tens of robots).
pub const MAX_HOSTS: usize = 1024;
/// Most services tracked per host (a robot announces about six).
pub const MAX_SERVICES: usize = 32;
/// Most raw TXT records remembered from the passive listener.
pub const MAX_RAW_TXT: usize = 4096;
/// Most addresses kept per service.
const MAX_ADDRESSES: usize = 16;

/// Where a robot was heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An mDNS advert.
    Mdns,
    /// A UDP pong on port 11411.
    Udp,
}

#[derive(Clone, Debug, Default)]
struct Host {
    /// Keyed by normalised full instance name.
    services: BTreeMap<String, Heard>,
    pong: Option<(IpAddr, Pong, Instant)>,
    agent_pong: Option<(IpAddr, AgentPong, Instant)>,
}

#[derive(Clone, Debug)]
struct Heard {
    service: Service,
    addresses: BTreeSet<IpAddr>,
    /// TXT RDATA as rebuilt from mdns-sd's key/value strings.
    rdata: Vec<u8>,
}

/// The merge state. See the module docs.
#[derive(Debug, Default)]
pub struct Fleet {
    hosts: BTreeMap<String, Host>,
    /// Raw TXT RDATA heard by the passive listener, by normalised full instance name.
    raw_txt: BTreeMap<String, Vec<u8>>,
}

/// A full instance name as a map key: ASCII-lower-cased, with the trailing dot.
pub fn normalise_name(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

impl Fleet {
    /// An empty fleet.
    pub fn new() -> Fleet {
        Fleet::default()
    }

    /// mdns-sd resolved (or re-resolved) `fullname` with these addresses and TXT RDATA.
    /// Returns the host name it belongs to, or `None` when the name is not a Duckietown
    /// instance or a limit was reached.
    pub fn resolved(
        &mut self,
        fullname: &str,
        addresses: &[IpAddr],
        rdata: Vec<u8>,
    ) -> Option<String> {
        let Instance { service, hostname } = parse::parse_instance(fullname)?;
        let key = normalise_name(fullname);
        if !self.hosts.contains_key(&hostname) && self.hosts.len() >= MAX_HOSTS {
            return None;
        }
        let host = self.hosts.entry(hostname.clone()).or_default();
        if !host.services.contains_key(&key) && host.services.len() >= MAX_SERVICES {
            return None;
        }
        let addresses = addresses
            .iter()
            .copied()
            .filter(usable_address)
            .take(MAX_ADDRESSES)
            .collect();
        host.services.insert(
            key,
            Heard {
                service,
                addresses,
                rdata,
            },
        );
        Some(hostname)
    }

    /// `fullname` said goodbye or expired, as reported at `since`. Returns its host name if it
    /// was known. When that was the host's last advert, UDP answers older than `since` go too:
    /// they are older news than the goodbye (a robot that still answers pings stays, or comes
    /// back with the next scan).
    pub fn removed(&mut self, fullname: &str, since: Instant) -> Option<String> {
        let Instance { hostname, .. } = parse::parse_instance(fullname)?;
        let key = normalise_name(fullname);
        self.raw_txt.remove(&key);
        let host = self.hosts.get_mut(&hostname)?;
        host.services.remove(&key)?;
        if host.services.is_empty() {
            if host.pong.as_ref().is_some_and(|(_, _, t)| *t < since) {
                host.pong = None;
            }
            if host.agent_pong.as_ref().is_some_and(|(_, _, t)| *t < since) {
                host.agent_pong = None;
            }
        }
        self.drop_if_empty(&hostname);
        Some(hostname)
    }

    /// Whether `fullname` is a service currently known.
    pub fn has_service(&self, fullname: &str) -> bool {
        parse::parse_instance(fullname).is_some_and(|i| {
            self.hosts
                .get(&i.hostname)
                .is_some_and(|h| h.services.contains_key(&normalise_name(fullname)))
        })
    }

    /// The address that last answered a UDP ping for `hostname`, if any.
    pub fn pong_addr(&self, hostname: &str) -> Option<IpAddr> {
        let h = self.hosts.get(hostname)?;
        h.agent_pong
            .as_ref()
            .map(|(a, _, _)| *a)
            .or(h.pong.as_ref().map(|(a, _, _)| *a))
    }

    /// The passive listener heard a TXT record for `fullname` (`ttl` 0: a goodbye). Returns the
    /// host name when that changes what is known about a host.
    pub fn raw_txt(&mut self, fullname: &str, ttl: u32, rdata: Vec<u8>) -> Option<String> {
        let Instance { hostname, .. } = parse::parse_instance(fullname)?;
        let key = normalise_name(fullname);
        if ttl == 0 {
            self.raw_txt.remove(&key);
        } else if self.raw_txt.contains_key(&key) || self.raw_txt.len() < MAX_RAW_TXT {
            if rdata.len() > parse::MAX_TXT {
                return None;
            }
            self.raw_txt.insert(key.clone(), rdata);
        } else {
            return None;
        }
        self.hosts
            .get(&hostname)?
            .services
            .contains_key(&key)
            .then_some(hostname)
    }

    /// A UDP pong from `from`. Returns the host name, or `None` when the pong names no valid
    /// host or a limit was reached.
    pub fn pong(&mut self, from: IpAddr, pong: Pong, now: Instant) -> Option<String> {
        let hostname = pong.hostname()?;
        let host = self.host_for_udp(&hostname)?;
        host.pong = Some((from, pong, now));
        Some(hostname)
    }

    /// A dt-agent's answer to the agent query, from `from`.
    pub fn agent_pong(&mut self, from: IpAddr, pong: AgentPong, now: Instant) -> Option<String> {
        let hostname = pong.hostname()?;
        let host = self.host_for_udp(&hostname)?;
        host.agent_pong = Some((from, pong, now));
        Some(hostname)
    }

    fn host_for_udp(&mut self, hostname: &str) -> Option<&mut Host> {
        if !self.hosts.contains_key(hostname) && self.hosts.len() >= MAX_HOSTS {
            return None;
        }
        Some(self.hosts.entry(hostname.to_string()).or_default())
    }

    /// Forgets UDP answers older than `max_age` (a robot that stopped answering pings); returns
    /// the hosts that changed.
    pub fn expire_pongs(&mut self, now: Instant, max_age: Duration) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, host) in &mut self.hosts {
            let old = |t: &Instant| now.saturating_duration_since(*t) > max_age;
            let mut hit = false;
            if host.pong.as_ref().is_some_and(|(_, _, t)| old(t)) {
                host.pong = None;
                hit = true;
            }
            if host.agent_pong.as_ref().is_some_and(|(_, _, t)| old(t)) {
                host.agent_pong = None;
                hit = true;
            }
            if hit {
                changed.push(name.clone());
            }
        }
        for name in &changed {
            self.drop_if_empty(name);
        }
        changed
    }

    fn drop_if_empty(&mut self, hostname: &str) {
        if self
            .hosts
            .get(hostname)
            .is_some_and(|h| h.services.is_empty() && h.pong.is_none() && h.agent_pong.is_none())
        {
            self.hosts.remove(hostname);
        }
    }

    /// The robot record for `hostname`, if anything is known about it.
    pub fn robot(&self, hostname: &str) -> Option<Robot> {
        let host = self.hosts.get(hostname)?;
        Some(self.build(hostname, host))
    }

    /// Every robot, sorted by host name.
    pub fn robots(&self) -> Vec<Robot> {
        self.hosts
            .iter()
            .map(|(name, host)| self.build(name, host))
            .collect()
    }

    fn build(&self, hostname: &str, host: &Host) -> Robot {
        let mut robot = Robot {
            hostname: hostname.to_string(),
            robot_type: None,
            configuration: None,
            hardware: None,
            status: Status::Unknown,
            addresses: Vec::new(),
            agent: None,
            services: Vec::new(),
            found_by: Vec::new(),
        };
        let mut addresses = BTreeSet::new();
        let (mut presence, mut booting) = (false, false);
        let mut services = BTreeSet::new();
        for (key, heard) in &host.services {
            services.insert(heard.service.as_str().to_string());
            addresses.extend(heard.addresses.iter().copied());
            let rdata = self.raw_txt.get(key).unwrap_or(&heard.rdata);
            let txt = parse::parse_txt(rdata);
            let field = |k: &str| txt.as_ref().and_then(|o| parse::text_field(o, k));
            match &heard.service {
                Service::Presence => presence = true,
                Service::Booting => booting = true,
                Service::RobotType => robot.robot_type = field("type"),
                Service::RobotConfiguration => robot.configuration = field("configuration"),
                Service::RobotHardware => robot.hardware = field("hardware"),
                Service::Agent => {
                    robot.agent = Some(match &txt {
                        Some(obj) => AgentInfo::from_txt(obj),
                        None => AgentInfo::default(),
                    })
                }
                Service::Other(_) => {}
            }
        }
        if !host.services.is_empty() {
            robot.found_by.push(Source::Mdns);
        }
        let mut udp_status = None;
        if let Some((from, pong, _)) = &host.pong {
            addresses.insert(*from);
            robot.robot_type = robot.robot_type.take().or_else(|| pong.robot_type.clone());
            robot.configuration = robot
                .configuration
                .take()
                .or_else(|| pong.configuration.clone());
            robot.hardware = robot.hardware.take().or_else(|| pong.hardware.clone());
        }
        if let Some((from, ap, _)) = &host.agent_pong {
            addresses.insert(*from);
            if robot.agent.is_none() {
                robot.agent = Some(ap.agent.clone());
            }
            udp_status = ap.status;
        }
        if host.pong.is_some() || host.agent_pong.is_some() {
            robot.found_by.push(Source::Udp);
        }
        robot.status = if booting {
            Status::Booting
        } else if presence {
            Status::Ready
        } else {
            udp_status.unwrap_or(Status::Unknown)
        };
        // IPv4 first (what people type), then IPv6; each in address order.
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addresses.into_iter().partition(IpAddr::is_ipv4);
        robot.addresses = v4.into_iter().chain(v6).collect();
        robot.services = services.into_iter().collect();
        robot
    }
}

/// Addresses worth showing: not unspecified, not multicast, not broadcast.
fn usable_address(a: &IpAddr) -> bool {
    !a.is_unspecified() && !a.is_multicast() && !matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(s: &str) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const T: &str = "._duckietown._tcp.local.";

    #[test]
    fn merges_services_of_one_host() {
        let mut f = Fleet::new();
        let a = [ip("10.0.0.2"), ip("fe80::1")];
        f.resolved(&format!("DT::PRESENCE::bot{T}"), &a, vec![0]);
        f.resolved(
            &format!("DT::ROBOT_TYPE::bot{T}"),
            &a,
            txt(r#"{"type": "duckiebot"}"#),
        );
        f.resolved(
            &format!("DT::ROBOT_CONFIGURATION::BOT{T}"),
            &[ip("10.0.0.3")],
            txt(r#"{"configuration": "DB21J"}"#),
        );
        let robots = f.robots();
        assert_eq!(robots.len(), 1);
        let r = &robots[0];
        assert_eq!(r.hostname, "bot");
        assert_eq!(r.robot_type.as_deref(), Some("duckiebot"));
        assert_eq!(r.configuration.as_deref(), Some("DB21J"));
        assert_eq!(r.status, Status::Ready);
        assert_eq!(
            r.addresses,
            vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("fe80::1")]
        );
        assert!(r.agent.is_none());
        assert_eq!(r.found_by, vec![Source::Mdns]);
    }

    #[test]
    fn booting_wins_and_goodbye_removes() {
        let mut f = Fleet::new();
        f.resolved(&format!("DT::PRESENCE::bot{T}"), &[ip("10.0.0.2")], vec![0]);
        f.resolved(&format!("DT::BOOTING::bot{T}"), &[ip("10.0.0.2")], vec![0]);
        assert_eq!(f.robot("bot").unwrap().status, Status::Booting);
        assert_eq!(
            f.removed(&format!("DT::BOOTING::bot{T}"), Instant::now())
                .as_deref(),
            Some("bot")
        );
        assert_eq!(f.robot("bot").unwrap().status, Status::Ready);
        f.removed(&format!("DT::PRESENCE::bot{T}"), Instant::now());
        assert!(f.robot("bot").is_none());
        f.resolved(&format!("DT::ROBOT_TYPE::x{T}"), &[], txt("{}"));
        assert_eq!(f.robot("x").unwrap().status, Status::Unknown);
    }

    #[test]
    fn raw_txt_overrides_rebuilt_one() {
        let mut f = Fleet::new();
        let name = format!("DT::ROBOT_TYPE::bot{T}");
        // mdns-sd lost the malformed record: nothing usable.
        f.resolved(&name, &[ip("10.0.0.2")], vec![]);
        assert_eq!(f.robot("bot").unwrap().robot_type, None);
        let mut raw = vec![b' '];
        raw.extend_from_slice(br#"{"type": "watchtower"}"#);
        assert_eq!(
            f.raw_txt(&name.to_uppercase(), 120, raw).as_deref(),
            Some("bot")
        );
        assert_eq!(
            f.robot("bot").unwrap().robot_type.as_deref(),
            Some("watchtower")
        );
        f.raw_txt(&name, 0, vec![]);
        assert_eq!(f.robot("bot").unwrap().robot_type, None);
    }

    #[test]
    fn agent_txt() {
        let mut f = Fleet::new();
        f.resolved(
            &format!("DT::AGENT::bot{T}"),
            &[ip("10.0.0.2")],
            txt(r#"{"version": "0.1.0", "arch": "arm64v8", "ssh_port": 22, "host_key_fingerprint": "SHA256:abc"}"#),
        );
        let a = f.robot("bot").unwrap().agent.unwrap();
        assert_eq!(a.version.as_deref(), Some("0.1.0"));
        assert_eq!(a.arch.as_deref(), Some("arm64v8"));
        assert_eq!(a.ssh_port, Some(22));
        assert_eq!(a.host_key_fingerprint.as_deref(), Some("SHA256:abc"));
        // A malformed agent TXT: the agent is there, its fields unknown.
        f.resolved(&format!("DT::AGENT::bot{T}"), &[], txt("garbage"));
        assert_eq!(f.robot("bot").unwrap().agent, Some(AgentInfo::default()));
    }

    #[test]
    fn udp_and_mdns_merge_by_hostname() {
        let mut f = Fleet::new();
        let now = Instant::now();
        let pong = Pong::parse(
            br#"{"version":"1","name":"Bot","type":"duckiebot","configuration":"DB21M","hardware":"physical"}"#,
        )
        .unwrap();
        assert_eq!(f.pong(ip("10.0.0.2"), pong, now).as_deref(), Some("bot"));
        f.resolved(&format!("DT::PRESENCE::bot{T}"), &[ip("10.0.0.2")], vec![0]);
        let r = f.robot("bot").unwrap();
        assert_eq!(f.robots().len(), 1);
        assert_eq!(r.configuration.as_deref(), Some("DB21M"));
        assert_eq!(r.addresses, vec![ip("10.0.0.2")]);
        assert_eq!(r.found_by, vec![Source::Mdns, Source::Udp]);
        assert_eq!(
            f.expire_pongs(now + Duration::from_secs(60), Duration::from_secs(30)),
            vec!["bot"]
        );
        assert_eq!(f.robot("bot").unwrap().found_by, vec![Source::Mdns]);
        // A goodbye of the last advert also ends what pings said before it, not after it.
        let pong = Pong::parse(br#"{"version":"1","name":"bot"}"#).unwrap();
        f.pong(ip("10.0.0.2"), pong.clone(), now);
        assert_eq!(f.pong_addr("bot"), Some(ip("10.0.0.2")));
        assert!(f.has_service(&format!("DT::PRESENCE::BOT{T}")));
        f.removed(
            &format!("DT::PRESENCE::bot{T}"),
            now - Duration::from_secs(1),
        );
        assert_eq!(f.robot("bot").unwrap().found_by, vec![Source::Udp]);
        f.resolved(&format!("DT::PRESENCE::bot{T}"), &[ip("10.0.0.2")], vec![0]);
        f.removed(
            &format!("DT::PRESENCE::bot{T}"),
            now + Duration::from_secs(1),
        );
        assert!(f.robot("bot").is_none());
    }

    #[test]
    fn ignores_foreign_names_and_bounds_hosts() {
        let mut f = Fleet::new();
        assert_eq!(f.resolved("printer._ipp._tcp.local.", &[], vec![]), None);
        assert_eq!(
            f.raw_txt("DT::X::bad name._duckietown._tcp.local.", 1, vec![]),
            None
        );
        for i in 0..MAX_HOSTS + 10 {
            f.resolved(&format!("DT::PRESENCE::h{i}{T}"), &[], vec![]);
        }
        assert_eq!(f.robots().len(), MAX_HOSTS);
        for i in 0..MAX_SERVICES + 10 {
            f.resolved(&format!("DT::S{i}::h0{T}"), &[], vec![]);
        }
        assert!(f.robot("h0").unwrap().services.len() <= MAX_SERVICES);
    }
}
