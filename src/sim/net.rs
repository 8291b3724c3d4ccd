//! A sim's network, made with Debian's `ip` and `tc`: the bridge (`dts0`, or `DTS_SIM_BRIDGE`)
//! with a private subnet (`10.213.0.0/24`, or `DTS_SIM_SUBNET`) whose first address is the
//! host's, and per sim a veth pair from the bridge into the netns `dts-sim-NAME` (inside: `eth0`
//! with the sim's address, a default route via the host, and `224.0.0.0/4` on `eth0` so mDNS
//! leaves by it). `--link-rate` puts a `tc tbf` on both ends. No NAT, no firewall rule: a sim
//! reaches the host and the other sims, nothing else.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::{SimError, SimInfo};

/// The bridge unless `DTS_SIM_BRIDGE` says otherwise.
pub const DEFAULT_BRIDGE: &str = "dts0";
/// The subnet unless `DTS_SIM_SUBNET` says otherwise: unlikely to be a LAN's or a VPN's.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/24";
/// The interface name inside every sim, like a real robot's wired one.
pub const SIM_IFACE: &str = "eth0";
/// Routed out of `eth0` inside the sim, so multicast (mDNS) leaves by the bridge.
const MULTICAST_NET: &str = "224.0.0.0/4";
/// Linux interface names are at most 15 bytes.
const IFNAME_MAX: usize = 15;
/// Directories searched for `ip`, `tc`, `ssh-keygen` after `$PATH` (sudo may drop sbin).
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The bridge and subnet sims go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Bridge interface name.
    pub bridge: String,
    /// Network address.
    pub net: Ipv4Addr,
    /// Prefix length (16..=30).
    pub prefix: u8,
}

impl NetConfig {
    /// From `DTS_SIM_BRIDGE` and `DTS_SIM_SUBNET`, with the defaults above.
    pub fn from_env() -> Result<NetConfig, SimError> {
        let var = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_owned())
        };
        NetConfig::parse(
            &var("DTS_SIM_BRIDGE", DEFAULT_BRIDGE),
            &var("DTS_SIM_SUBNET", DEFAULT_SUBNET),
        )
    }

    /// Checks a bridge name and an `a.b.c.d/len` subnet.
    pub fn parse(bridge: &str, subnet: &str) -> Result<NetConfig, SimError> {
        if bridge.is_empty()
            || bridge.len() > IFNAME_MAX
            || !bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SimError::BadNetConfig(format!(
                "DTS_SIM_BRIDGE `{bridge}` is not an interface name (at most 15 letters, digits, `-`, `_`)"
            )));
        }
        let bad = || {
            SimError::BadNetConfig(format!(
                "DTS_SIM_SUBNET `{subnet}` is not an IPv4 subnet like 10.213.0.0/24 (prefix 16 to 30)"
            ))
        };
        let (a, l) = subnet.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = l.parse().map_err(|_| bad())?;
        if !(16..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(NetConfig {
            bridge: bridge.to_owned(),
            net: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// `a.b.c.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.net, self.prefix)
    }

    /// The host's address on the bridge: the first of the subnet.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    /// The lowest address after the host's that is not in `taken` (and not the broadcast).
    pub fn free_address(&self, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        (2..size - 1)
            .map(|n| Ipv4Addr::from(u32::from(self.net) + n))
            .find(|a| !taken.contains(a))
    }

    fn overlaps(&self, net: Ipv4Addr, prefix: u8) -> bool {
        let p = prefix.min(self.prefix);
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        u32::from(net) & mask == u32::from(self.net) & mask
    }
}

/// A tc rate (`20mbit`, `500kbit`, `1gbit`, `1mbps`, plain bits) in bits per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return None,
    };
    let bits = n * mult;
    (bits.is_finite() && (8_000.0..=100e9).contains(&bits)).then_some(bits as u64)
}

/// The host side of a sim's veth: `sim-NAME`, or `sim-` and a hash of the name when that is too
/// long for an interface name.
pub fn host_iface_name(name: &str) -> String {
    let plain = format!("sim-{name}");
    if plain.len() <= IFNAME_MAX {
        return plain;
    }
    // FNV-1a: stable across runs and versions (unlike std's hasher).
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("sim-{h:08x}")
}

/// Where the host's tools are looked for: `$PATH`, then [`TOOL_DIRS`].
pub fn tool_dirs() -> Vec<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(TOOL_DIRS.iter().map(std::path::PathBuf::from))
        .collect()
}

fn tool_path(name: &str) -> std::path::PathBuf {
    tool_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.into())
}

/// Runs a tool; its stdout, or [`SimError::Command`] with its stderr.
pub fn run_tool(name: &str, args: &[&str]) -> Result<String, SimError> {
    let command = format!("{name} {}", args.join(" "));
    let out = Command::new(tool_path(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| SimError::Command {
            command: command.clone(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SimError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &str) -> Result<String, SimError> {
    run_tool("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// Whether interface `name` exists in the host's netns.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether `ip netns` knows `ns`.
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Pids of the processes in netns `ns`.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    run_tool("ip", &["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Makes the bridge with the host's address when missing. An existing bridge of that name is
/// used as it is (given the host's address if it lacks it); an existing non-bridge is refused,
/// and so is a subnet the host already routes elsewhere.
pub fn ensure_bridge(cfg: &NetConfig) -> Result<(), SimError> {
    let host = format!("{}/{}", cfg.host_addr(), cfg.prefix);
    if link_exists(&cfg.bridge) {
        if !Path::new("/sys/class/net")
            .join(&cfg.bridge)
            .join("bridge")
            .exists()
        {
            return Err(SimError::LinkTaken(cfg.bridge.clone()));
        }
        let addrs = ip(&format!("-4 -o addr show dev {}", cfg.bridge))?;
        if !addrs.contains(&format!(" {host} ")) {
            ip(&format!("addr add {host} dev {}", cfg.bridge))?;
        }
        ip(&format!("link set {} up", cfg.bridge))?;
        return Ok(());
    }
    for line in ip("-4 -o route show table all")?.lines() {
        let mut w = line.split_whitespace();
        let mut first = w.next().unwrap_or_default();
        if matches!(first, "local" | "broadcast" | "unicast" | "multicast") {
            first = w.next().unwrap_or_default();
        }
        let (a, l) = first.split_once('/').unwrap_or((first, "32"));
        if let (Ok(a), Ok(l)) = (a.parse::<Ipv4Addr>(), l.parse::<u8>())
            && l > 0
            && cfg.overlaps(a, l)
            && !line.contains(" dev lo ")
        {
            return Err(SimError::SubnetInUse {
                subnet: cfg.cidr(),
                route: line.trim().to_owned(),
            });
        }
    }
    // No STP and no forward delay: ports forward at once. No multicast snooping: every group is
    // flooded to every port, so mDNS works without an IGMP querier.
    ip(&format!(
        "link add name {} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
        cfg.bridge
    ))?;
    ip(&format!("addr add {host} dev {}", cfg.bridge))?;
    ip(&format!("link set {} up", cfg.bridge))?;
    Ok(())
}

/// The netns and veth pair of one sim, addressed and routed.
pub fn make_link(info: &SimInfo, cfg: &NetConfig) -> Result<(), SimError> {
    let (ns, hv) = (&info.netns, &info.host_interface);
    ip(&format!("netns add {ns}"))?;
    ip(&format!(
        "link add {hv} type veth peer name {SIM_IFACE} netns {ns}"
    ))?;
    ip(&format!("link set {hv} master {}", cfg.bridge))?;
    ip(&format!("link set {hv} up"))?;
    ip(&format!("-n {ns} link set lo up"))?;
    ip(&format!(
        "-n {ns} addr add {}/{} dev {SIM_IFACE}",
        info.address, cfg.prefix
    ))?;
    ip(&format!("-n {ns} link set {SIM_IFACE} up"))?;
    ip(&format!(
        "-n {ns} route add default via {}",
        cfg.host_addr()
    ))?;
    ip(&format!(
        "-n {ns} route add {MULTICAST_NET} dev {SIM_IFACE}"
    ))?;
    Ok(())
}

/// A token bucket of `rate` on both ends of the link, so the limit holds both ways. The
/// bucket holds at least 1/250 s of traffic (a timer tick), and 32 kbit at the least.
pub fn set_rate(host_iface: &str, netns: &str, rate: &str) -> Result<(), SimError> {
    let bits = parse_rate(rate).ok_or_else(|| SimError::BadRate(rate.to_owned()))?;
    let burst = format!("{}", (bits / 8 / 250).max(4096));
    let tbf = [
        "root", "tbf", "rate", rate, "burst", &burst, "latency", "400ms",
    ];
    let mut host = vec!["qdisc", "replace", "dev", host_iface];
    host.extend(tbf);
    run_tool("tc", &host)?;
    let mut sim = vec!["-n", netns, "qdisc", "replace", "dev", SIM_IFACE];
    sim.extend(tbf);
    run_tool("tc", &sim)?;
    Ok(())
}

/// Deletes the bridge when it has no port left. Returns whether it went.
pub fn remove_bridge_if_unused(bridge: &str) -> Result<bool, SimError> {
    let brif = Path::new("/sys/class/net").join(bridge).join("brif");
    let Ok(rd) = std::fs::read_dir(&brif) else {
        return Ok(false);
    };
    if rd.count() > 0 {
        return Ok(false);
    }
    ip(&format!("link del {bridge}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20mbit"), Some(20_000_000));
        assert_eq!(parse_rate("500kbit"), Some(500_000));
        assert_eq!(parse_rate("1.5Mbit"), Some(1_500_000));
        assert_eq!(parse_rate("1mbps"), Some(8_000_000));
        for bad in ["", "fast", "20 mbit", "20mbits", "-1mbit", "1bit"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses() {
        let c = NetConfig::parse("dts0", "10.213.0.7/24").unwrap();
        assert_eq!(c.cidr(), "10.213.0.0/24");
        assert_eq!(c.host_addr(), Ipv4Addr::new(10, 213, 0, 1));
        let a2 = Ipv4Addr::new(10, 213, 0, 2);
        assert_eq!(c.free_address(&[]), Some(a2));
        assert_eq!(c.free_address(&[a2]), Some(Ipv4Addr::new(10, 213, 0, 3)));
        let small = NetConfig::parse("b", "10.0.0.0/30").unwrap();
        assert_eq!(
            small.free_address(&[Ipv4Addr::new(10, 0, 0, 2)]),
            None,
            ".3 is the broadcast"
        );
        assert!(c.overlaps(Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(c.overlaps(Ipv4Addr::new(10, 213, 0, 5), 32));
        assert!(!c.overlaps(Ipv4Addr::new(10, 214, 0, 0), 24));
        for bad in [
            ("dts0", "10.213.0.0"),
            ("dts0", "10.213.0.0/8"),
            ("a b", DEFAULT_SUBNET),
        ] {
            assert!(NetConfig::parse(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn iface_names_fit() {
        assert_eq!(host_iface_name("mybot"), "sim-mybot");
        let long = host_iface_name("a-rather-long-robot-name");
        assert!(
            long.len() <= IFNAME_MAX && long.starts_with("sim-"),
            "{long}"
        );
        assert_eq!(long, host_iface_name("a-rather-long-robot-name"));
        assert_ne!(long, host_iface_name("a-rather-long-robot-namf"));
    }
}
