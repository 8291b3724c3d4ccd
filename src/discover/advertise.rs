//! The agent side: what `dt-agent daemon` tells the LAN about its robot, over mDNS (mdns-sd) and
//! on the UDP port 11411.
//!
//! It publishes what a real Duckiebot's avahi publishes — `DT::PRESENCE`, `DT::ROBOT_TYPE`,
//! `DT::ROBOT_CONFIGURATION`, and `DT::BOOTING` while it starts — so the Duckietown shell lists
//! our robots too, plus its own `DT::AGENT::<host>`. Stock images carry those services as avahi
//! files in `/etc/avahi/services`; a service the robot's avahi already publishes is left to it
//! (publishing the same instance name twice would be a name conflict), and so is `BOOTING`,
//! which the image's `dt-init` then manages.
//!
//! Inputs: `robot.yaml` (only `hostname`, `type`, `configuration` are read here), the SSH host
//! public key (for its fingerprint), the avahi services directory. Nothing here prints: the
//! daemon's log lines go to a [`Reporter`] as notes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use mdns_sd::{ServiceDaemon, ServiceInfo, TxtProperty};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::parse::{self, SERVICE_TYPE, Service, is_host_label};
use super::udp::{AgentPong, Answers, Pong, Responder};
use super::{AgentInfo, Status};
use crate::progress::{Event, Reporter};
use crate::util::fs::{PathContext, PathError, read_limited};

/// Where the robot's identity lives (docs/formats.md; override with `DT_AGENT_CONFIG`).
pub const DEFAULT_CONFIG: &str = "/etc/dt-agent/robot.yaml";
/// The host key whose fingerprint is advertised.
pub const DEFAULT_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key.pub";
/// Where avahi reads static services.
pub const DEFAULT_AVAHI_SERVICES: &str = "/etc/avahi/services";
/// What the UDP pong says about the hardware (the ente shell's default for real robots).
const HARDWARE: &str = "physical";
/// Largest file read here (robot.yaml, a public key, an avahi service file).
const MAX_FILE: u64 = 1 << 20;
/// How long a goodbye may take before shutdown goes on regardless.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

/// Who the robot is: the part of `robot.yaml` discovery needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Identity {
    /// Host name, one DNS label (`mybot`).
    pub hostname: String,
    /// Duckietown robot type (`duckiebot`).
    #[serde(rename = "type", default)]
    pub robot_type: Option<String>,
    /// Duckietown configuration (`DB21J`).
    #[serde(default)]
    pub configuration: Option<String>,
}

/// Why the identity or the host key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] PathError),
    /// `robot.yaml` is not what docs/formats.md describes.
    #[error("`{path}`: {message}")]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The host key file is not an OpenSSH public key line.
    #[error("`{path}` is not an OpenSSH public key (`TYPE BASE64 [COMMENT]`)")]
    BadHostKey {
        /// The file.
        path: PathBuf,
    },
    /// Neither mDNS nor the UDP responder could start.
    #[error("cannot advertise the robot: mDNS: {mdns}; UDP: {udp}")]
    NothingStarted {
        /// Why mDNS failed.
        mdns: String,
        /// Why UDP failed.
        udp: String,
    },
}

impl AdvertiseError {
    /// Whether the user's input (a file's content) is at fault.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            AdvertiseError::BadIdentity { .. } | AdvertiseError::BadHostKey { .. }
        )
    }
}

/// Parses `robot.yaml` (other keys, such as `devices`, are ignored here). The text checks:
/// `hostname` must be one DNS label; `type` and `configuration`, when present, printable.
pub fn parse_identity(text: &str) -> Result<Identity, String> {
    let mut id: Identity = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if !is_host_label(&id.hostname) {
        return Err(format!(
            "hostname `{}` is not a host name (letters, digits and inner hyphens, at most 63)",
            id.hostname
        ));
    }
    id.hostname = id.hostname.to_ascii_lowercase();
    for (key, v) in [
        ("type", &id.robot_type),
        ("configuration", &id.configuration),
    ] {
        if let Some(v) = v
            && (parse::clean_text(v).as_deref() != Some(v.as_str()) || v.contains('"'))
        {
            return Err(format!("`{key}` is not a plain word: {v:?}"));
        }
    }
    Ok(id)
}

/// Reads and parses `robot.yaml`.
pub fn load_identity(path: &Path) -> Result<Identity, AdvertiseError> {
    let bytes = read_limited(path, MAX_FILE)?;
    let text = String::from_utf8_lossy(&bytes);
    parse_identity(&text).map_err(|message| AdvertiseError::BadIdentity {
        path: path.to_path_buf(),
        message,
    })
}

/// The identity of a robot without `robot.yaml`: the kernel's host name, type and
/// configuration unknown. `None` if the host name is not a usable label.
pub fn fallback_identity() -> Option<Identity> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let host = host.trim().split('.').next()?.to_ascii_lowercase();
    is_host_label(&host).then_some(Identity {
        hostname: host,
        robot_type: None,
        configuration: None,
    })
}

/// OpenSSH's fingerprint of a public key line (`ssh-ed25519 AAAA… comment`):
/// `SHA256:` + unpadded base64 of the SHA-256 of the key blob, as `ssh-keygen -lf` prints it.
pub fn fingerprint(pubkey_line: &str) -> Option<String> {
    let mut words = pubkey_line.split_whitespace();
    let (_kind, b64) = (words.next()?, words.next()?);
    let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    if blob.is_empty() {
        return None;
    }
    let digest = Sha256::digest(&blob);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

/// Reads a public key file and fingerprints its first key line.
pub fn load_fingerprint(path: &Path) -> Result<String, AdvertiseError> {
    let bytes = read_limited(path, MAX_FILE)?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(fingerprint)
        .ok_or_else(|| AdvertiseError::BadHostKey {
            path: path.to_path_buf(),
        })
}

/// The Duckietown services that avahi service files in `dir` publish for host `hostname`
/// (`<name>` `DT::<SERVICE>::%h` or `DT::<SERVICE>::<hostname>` in a `*.service` file whose
/// type is `_duckietown._tcp`). A missing directory publishes nothing.
pub fn avahi_services(dir: &Path, hostname: &str) -> Result<BTreeSet<Service>, PathError> {
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).at("read directory", dir),
    };
    for entry in entries {
        let path = entry.at("read directory", dir)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("service") {
            continue;
        }
        let bytes = read_limited(&path, MAX_FILE)?;
        out.extend(services_in_avahi_file(
            &String::from_utf8_lossy(&bytes),
            hostname,
        ));
    }
    Ok(out)
}

/// The Duckietown services one avahi service file publishes (see [`avahi_services`]).
pub fn services_in_avahi_file(xml: &str, hostname: &str) -> Vec<Service> {
    if !xml.contains("_duckietown._tcp") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<name") {
        rest = &rest[start + 5..];
        let Some(gt) = rest.find('>') else { break };
        let Some(end) = rest.find("</name>") else {
            break;
        };
        if end < gt {
            continue;
        }
        let name = rest[gt + 1..end].trim().replace("%h", hostname);
        if let Some(inst) = parse::parse_instance(&name)
            && inst.hostname == hostname.to_ascii_lowercase()
        {
            out.push(inst.service);
        }
        rest = &rest[end..];
    }
    out
}

/// One service to publish: instance service, port, TXT JSON (`None`: no TXT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// Which service.
    pub service: Service,
    /// SRV port (0 for Duckietown's flags, the SSH port for the agent).
    pub port: u16,
    /// The TXT record's one string.
    pub txt: Option<String>,
}

/// What dt-agent publishes for `identity`, given what avahi already does. `BOOTING` comes
/// first and only when `PRESENCE` is ours.
pub fn plan(identity: &Identity, agent: &AgentInfo, avahi: &BTreeSet<Service>) -> Vec<Advert> {
    let mut out = Vec::new();
    let ours = |s: &Service| !avahi.contains(s);
    let obj = |k: &str, v: &str| {
        let mut m = Map::new();
        m.insert(k.to_string(), Value::from(v));
        parse::txt_json(&m)
    };
    if ours(&Service::Presence) {
        out.push(Advert {
            service: Service::Booting,
            port: 0,
            txt: None,
        });
        out.push(Advert {
            service: Service::Presence,
            port: 0,
            txt: None,
        });
    }
    if let Some(t) = &identity.robot_type
        && ours(&Service::RobotType)
    {
        out.push(Advert {
            service: Service::RobotType,
            port: 0,
            txt: obj("type", t),
        });
    }
    if let Some(c) = &identity.configuration
        && ours(&Service::RobotConfiguration)
    {
        out.push(Advert {
            service: Service::RobotConfiguration,
            port: 0,
            txt: obj("configuration", c),
        });
    }
    out.push(Advert {
        service: Service::Agent,
        port: agent.ssh_port.unwrap_or(22),
        txt: parse::txt_json(&agent.to_json()),
    });
    out
}

/// The full instance name of `service` on `hostname`.
pub fn fullname(service: &Service, hostname: &str) -> String {
    format!("DT::{}::{hostname}.{SERVICE_TYPE}", service.as_str())
}

/// What the daemon needs to advertise.
#[derive(Clone, Debug)]
pub struct PresenceConfig {
    /// Who the robot is.
    pub identity: Identity,
    /// The agent's advert.
    pub agent: AgentInfo,
    /// Services avahi publishes already (see [`avahi_services`]).
    pub avahi: BTreeSet<Service>,
    /// Where to answer UDP pings (`0.0.0.0:11411`).
    pub udp: SocketAddr,
}

/// The robot's presence on the LAN while the daemon runs: mDNS adverts and the UDP responder.
/// Call [`Presence::ready`] when startup is done and [`Presence::shutdown`] to say goodbye.
pub struct Presence {
    daemon: Option<ServiceDaemon>,
    published: Vec<String>,
    booting: Option<String>,
    responder: Option<Responder>,
    answers: Arc<Mutex<Answers>>,
}

impl Presence {
    /// Starts advertising (with `BOOTING`, when that is ours) and answering pings. A part that
    /// cannot start is logged to `log`; it is an error only when nothing starts.
    pub fn start(cfg: &PresenceConfig, log: &dyn Reporter) -> Result<Presence, AdvertiseError> {
        let note = |m: String| log.event(Event::note(m));
        let host = &cfg.identity.hostname;
        let answers = Arc::new(Mutex::new(Answers {
            pong: Pong {
                name: host.clone(),
                robot_type: cfg.identity.robot_type.clone(),
                configuration: cfg.identity.configuration.clone(),
                hardware: Some(HARDWARE.to_string()),
            },
            agent: AgentPong {
                name: host.clone(),
                status: Some(Status::Booting),
                agent: cfg.agent.clone(),
            },
        }));
        let mut p = Presence {
            daemon: None,
            published: Vec::new(),
            booting: None,
            responder: None,
            answers: answers.clone(),
        };
        let mdns_err = match ServiceDaemon::new() {
            Ok(daemon) => {
                let avahi_owned = !cfg.avahi.is_empty();
                for advert in plan(&cfg.identity, &cfg.agent, &cfg.avahi) {
                    match register(&daemon, &advert, host, avahi_owned) {
                        Ok(name) => {
                            if advert.service == Service::Booting {
                                p.booting = Some(name.clone());
                            }
                            p.published.push(name);
                        }
                        Err(e) => note(format!(
                            "cannot advertise DT::{}::{host}: {e}",
                            advert.service.as_str()
                        )),
                    }
                }
                if !cfg.avahi.is_empty() {
                    let names: Vec<_> = cfg.avahi.iter().map(Service::as_str).collect();
                    note(format!(
                        "avahi publishes {} already; left to it",
                        names.join(", ")
                    ));
                }
                note(format!(
                    "advertising {} on mDNS as {host}",
                    p.published
                        .iter()
                        .map(|n| n.split("::").nth(1).unwrap_or(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                p.daemon = Some(daemon);
                None
            }
            Err(e) => {
                note(format!("mDNS is unavailable, not advertising: {e}"));
                Some(e.to_string())
            }
        };
        let udp_err = match Responder::bind(cfg.udp, answers) {
            Ok(r) => {
                note(format!(
                    "answering Duckietown UDP pings on {}",
                    r.local_addr()
                ));
                p.responder = Some(r);
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                note(format!(
                    "UDP port {} is taken (on ente robots Duckietown's kvstore answers pings there); \
                     not answering pings myself",
                    cfg.udp.port()
                ));
                Some(e.to_string())
            }
            Err(e) => {
                note(format!("cannot answer UDP pings on {}: {e}", cfg.udp));
                Some(e.to_string())
            }
        };
        match (mdns_err, udp_err) {
            (Some(mdns), Some(udp)) if p.daemon.is_none() && p.responder.is_none() => {
                Err(AdvertiseError::NothingStarted { mdns, udp })
            }
            _ => Ok(p),
        }
    }

    /// Startup is over: withdraw `BOOTING` (a goodbye), answer pings with `ready`.
    pub fn ready(&mut self) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .agent
            .status = Some(Status::Ready);
        if let (Some(d), Some(name)) = (&self.daemon, self.booting.take()) {
            self.published.retain(|n| *n != name);
            if let Ok(rx) = d.unregister(&name) {
                let _ = rx.recv_timeout(GOODBYE_WAIT);
            }
        }
    }

    /// Says goodbye (TTL 0 for every advert) and stops answering pings.
    pub fn shutdown(mut self) {
        self.responder.take();
        if let Some(d) = self.daemon.take() {
            let pending: Vec<_> = self
                .published
                .drain(..)
                .filter_map(|n| d.unregister(&n).ok())
                .collect();
            for rx in pending {
                let _ = rx.recv_timeout(GOODBYE_WAIT);
            }
            if let Ok(rx) = d.shutdown() {
                let _ = rx.recv_timeout(GOODBYE_WAIT);
            }
        }
    }
}

/// Registers one advert; returns its full name.
fn register(
    daemon: &ServiceDaemon,
    advert: &Advert,
    hostname: &str,
    avahi_owns_host: bool,
) -> Result<String, mdns_sd::Error> {
    let instance = format!("DT::{}::{hostname}", advert.service.as_str());
    let props: Vec<TxtProperty> = advert
        .txt
        .as_deref()
        .map(|t| vec![TxtProperty::from(t)])
        .unwrap_or_default();
    let mut info = ServiceInfo::new(
        SERVICE_TYPE,
        &instance,
        &format!("{hostname}.local."),
        (),
        advert.port,
        props,
    )?
    .enable_addr_auto();
    // When the robot's avahi runs, it owns `<host>.local` and answers for the same addresses:
    // probing for the host name would meet avahi's answers and rename ours `<host>-2`.
    if avahi_owns_host {
        info.set_requires_probe(false);
    }
    let name = info.get_fullname().to_string();
    daemon.register(info)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files real Duckiebots carry (docs/duckietown.md, "Discovery").
    const PRESENCE: &str = r#"<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name replace-wildcards="yes">DT::PRESENCE::%h</name>
  <service>
    <type>_duckietown._tcp</type>
    <port>0</port>
  </service>
</service-group>
"#;
    const ROBOT_TYPE: &str = r#"<service-group>
<name replace-wildcards="yes">DT::ROBOT_TYPE::%h</name>
<service>
  <type>_duckietown._tcp</type>
  <txt-record>{"type": "duckiebot"}</txt-record>
  <port>0</port>
</service>
</service-group>"#;

    #[test]
    fn identity() {
        let id = parse_identity(
            "hostname: MyBot\ntype: duckiebot\nconfiguration: DB21J\ndevices:\n  motors:\n    nodes: [/dev/i2c-1]\n",
        )
        .unwrap();
        assert_eq!(
            id,
            Identity {
                hostname: "mybot".into(),
                robot_type: Some("duckiebot".into()),
                configuration: Some("DB21J".into()),
            }
        );
        assert!(parse_identity("hostname: my.bot\n").is_err());
        assert!(parse_identity("type: duckiebot\n").is_err());
        assert!(parse_identity("hostname: b\ntype: \"a\\u001b[2J\"\n").is_err());
        assert_eq!(parse_identity("hostname: b\n").unwrap().robot_type, None);
    }

    #[test]
    fn fingerprint_like_ssh_keygen() {
        // `ssh-keygen -lf` of this key prints
        // 256 SHA256:lqixbxgyuRltDGimxFezP9PcYvXSb/B6pDpJok9fWa8 test (ED25519)
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL1sCWPetAc5msZ12t2zkEATcpyS7juOQHL17xDytBoA test";
        assert_eq!(
            fingerprint(line).as_deref(),
            Some("SHA256:lqixbxgyuRltDGimxFezP9PcYvXSb/B6pDpJok9fWa8")
        );
        assert_eq!(fingerprint("ssh-ed25519"), None);
        assert_eq!(fingerprint("ssh-ed25519 !!!"), None);
    }

    #[test]
    fn avahi_files() {
        assert_eq!(
            services_in_avahi_file(PRESENCE, "bot"),
            vec![Service::Presence]
        );
        assert_eq!(
            services_in_avahi_file(ROBOT_TYPE, "bot"),
            vec![Service::RobotType]
        );
        assert!(services_in_avahi_file("<name>DT::PRESENCE::%h</name>", "bot").is_empty());
        assert!(services_in_avahi_file(&PRESENCE.replace("%h", "other"), "bot").is_empty());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dt.presence.service"), PRESENCE).unwrap();
        std::fs::write(
            dir.path().join("dt.booting.service.disabled"),
            PRESENCE.replace("PRESENCE", "BOOTING"),
        )
        .unwrap();
        std::fs::write(dir.path().join("dt.robot_type.service"), ROBOT_TYPE).unwrap();
        let got = avahi_services(dir.path(), "bot").unwrap();
        assert_eq!(
            got,
            [Service::Presence, Service::RobotType]
                .into_iter()
                .collect()
        );
        assert!(
            avahi_services(&dir.path().join("missing"), "bot")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn plans() {
        let id = Identity {
            hostname: "bot".into(),
            robot_type: Some("duckiebot".into()),
            configuration: Some("DB21J".into()),
        };
        let agent = AgentInfo {
            version: Some("0.1.0".into()),
            arch: Some("amd64".into()),
            ssh_port: Some(2222),
            host_key_fingerprint: Some("SHA256:abc+/x".into()),
        };
        let all = plan(&id, &agent, &BTreeSet::new());
        let services: Vec<_> = all.iter().map(|a| a.service.clone()).collect();
        assert_eq!(
            services,
            [
                Service::Booting,
                Service::Presence,
                Service::RobotType,
                Service::RobotConfiguration,
                Service::Agent
            ]
        );
        assert_eq!(all[2].txt.as_deref(), Some(r#"{"type":"duckiebot"}"#));
        let a = all.last().unwrap();
        assert_eq!(a.port, 2222);
        let back = parse::parse_txt(
            &[
                &[a.txt.as_ref().unwrap().len() as u8][..],
                a.txt.as_ref().unwrap().as_bytes(),
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(AgentInfo::from_txt(&back), agent);

        let avahi: BTreeSet<_> = [
            Service::Presence,
            Service::RobotType,
            Service::RobotConfiguration,
        ]
        .into();
        let only = plan(&id, &agent, &avahi);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].service, Service::Agent);
        assert_eq!(
            fullname(&Service::Agent, "bot"),
            "DT::AGENT::bot._duckietown._tcp.local."
        );
    }
}
