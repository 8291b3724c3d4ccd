//! The agent network's IPv4 subnet: `a.b.c.d/len`, host bits zero, its gateway the first address.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet `a.b.c.d/len` with its host bits zero, 8 ≤ len ≤ 30.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

/// A subnet that cannot be parsed or used.
#[derive(Debug, thiserror::Error)]
#[error("invalid subnet `{spec}`: {reason}")]
pub struct SubnetError {
    /// The value given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Ipv4Subnet {
    type Err = SubnetError;

    fn from_str(spec: &str) -> Result<Ipv4Subnet, SubnetError> {
        let err = |reason| SubnetError {
            spec: spec.to_owned(),
            reason,
        };
        let (addr, len) = spec
            .split_once('/')
            .ok_or_else(|| err("expected `a.b.c.d/len`"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix: u8 = len.parse().map_err(|_| err("bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(err("prefix length must be 8 to 30"));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(addr) & !mask != 0 {
            return Err(err("host bits are set"));
        }
        Ok(Ipv4Subnet { addr, prefix })
    }
}

impl std::fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Ipv4Subnet {
    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first host address, which the bridge holds and containers route through.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }
}
