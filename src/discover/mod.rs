//! Finding robots on the LAN, and being found: mDNS browse (laptop) and advertise (agent) with
//! `mdns-sd`, plus the UDP ping/pong fallback on port 11411. Returns values; never prints.
//!
//! What real Duckiebots say (docs/duckietown.md, "Discovery"): one DNS-SD service type,
//! `_duckietown._tcp.local.`, with the information in the instance names
//! `DT::<SERVICE>::<hostname>` and in TXT records holding one JSON string each:
//!
//! ```text
//!  DT::PRESENCE::mybot              port 0, no TXT            the robot is up
//!  DT::BOOTING::mybot               port 0, no TXT            while dt-init runs (wins)
//!  DT::ROBOT_TYPE::mybot            port 0, {"type": "duckiebot"}
//!  DT::ROBOT_CONFIGURATION::mybot   port 0, {"configuration": "DB21J"}
//!  DT::AGENT::mybot                 ssh port, {"version", "arch", "ssh_port",
//!                                             "host_key_fingerprint"}      (dt-agent only)
//! ```
//!
//! Layout:
//! - [`parse`]: instance names and TXT records (pure, lenient, fuzzed);
//! - [`fleet`]: merging what was heard into one [`Robot`] per host (pure);
//! - [`dns`]: raw TXT records out of mDNS packets, for the passive listener (pure);
//! - [`udp`]: the 11411 ping/pong, scanner and responder;
//! - [`browse`]: the laptop side — [`discover`], [`resolve`], and [`Browser`] for live views;
//! - [`advertise`]: the agent side — what `dt-agent daemon` publishes.
//!
//! Nothing heard here is authenticated: anyone on the LAN can announce any name, address or
//! host key fingerprint. Addresses are where to try; an advertised fingerprint is information
//! to show next to the key SSH actually sees, never a reason to trust it.

pub mod advertise;
pub mod browse;
pub mod dns;
pub mod fleet;
pub mod parse;
pub mod udp;

use std::net::IpAddr;

pub use browse::{BrowseOptions, Browser, Change, Discovery, discover, resolve};
pub use fleet::Source;
pub use parse::SERVICE_TYPE;

/// A robot as discovery sees it. `--json` of `dts fleet discover` prints these (docs/cli.md: at
/// least `hostname`, `type`, `configuration`, `status`, `addresses`, `agent`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Robot {
    /// Host name (lower case, without `.local`).
    pub hostname: String,
    /// Robot type (`duckiebot`, `watchtower`…), from `ROBOT_TYPE` or a pong.
    #[serde(rename = "type")]
    pub robot_type: Option<String>,
    /// Configuration (`DB21J`…), from `ROBOT_CONFIGURATION` or a pong.
    pub configuration: Option<String>,
    /// Hardware (`physical`, `virtual`, a board), from `ROBOT_HARDWARE` or a pong.
    pub hardware: Option<String>,
    /// `booting` if `BOOTING` is announced, else `ready` if `PRESENCE` is, else `unknown`.
    pub status: Status,
    /// Addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// The dt-agent on it, if one announced itself.
    pub agent: Option<AgentInfo>,
    /// The Duckietown services heard (`PRESENCE`, `ROBOT_TYPE`…).
    pub services: Vec<String>,
    /// How it was heard.
    pub found_by: Vec<Source>,
}

/// A robot's state, as its adverts tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `PRESENCE` without `BOOTING`.
    Ready,
    /// `BOOTING`.
    Booting,
    /// Neither.
    Unknown,
}

/// What a dt-agent says about itself. Every field is unknown (`None`) when absent or malformed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentInfo {
    /// dt-agent's version.
    pub version: Option<String>,
    /// Duckietown arch tag (`arm64v8`, `arm32v7`, `amd64`).
    pub arch: Option<String>,
    /// The SSH port to reach it on.
    pub ssh_port: Option<u16>,
    /// `SHA256:…` of the robot's SSH host key, as OpenSSH prints it. Heard, not verified:
    /// show it, never trust it.
    pub host_key_fingerprint: Option<String>,
}

/// Why discovery could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// Neither mDNS nor the UDP scan could start.
    #[error("cannot listen for robots: mDNS: {mdns}; UDP: {udp}")]
    NoListener {
        /// Why mDNS failed (or "disabled").
        mdns: String,
        /// Why the UDP scan failed (or "disabled").
        udp: String,
    },
}
