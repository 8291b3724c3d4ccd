//! A sim's avahi-daemon: the configuration and the static services a Duckiebot's image carries,
//! written into the sim's private `/etc/avahi` (never the host's). Pid 1 ([`super::init`])
//! runs the host's `/usr/sbin/avahi-daemon` on them inside the sim's network namespace, so its
//! adverts reach the sims' bridge and nothing else, and its runtime directory (pid file and the
//! socket `/run/avahi-daemon/socket`, which every service of the default stack bind-mounts for
//! mDNS name resolution) lives in the sim's own tmpfs `/run`.
//!
//! ```text
//! root/etc/avahi/avahi-daemon.conf         host-name NAME, IPv4 on eth0 only, no D-Bus
//! root/etc/avahi/services/
//!   dt.presence.service                    DT::PRESENCE::%h
//!   dt.robot_type.service                  DT::ROBOT_TYPE::%h          {"type": "duckiebot"}
//!   dt.robot_configuration.service         DT::ROBOT_CONFIGURATION::%h {"configuration": "virtual"}
//!   dt.booting.service.disabled            what dt-init copies in while a robot boots
//! ```
//!
//! These are the files of docs/duckietown.md, "Discovery". `dt-agent daemon` reads the same
//! directory and leaves every service found there to avahi, so each instance name has one
//! publisher and the agent adds only its own `DT::AGENT::NAME`.

use std::path::Path;

use super::SimError;
use super::rootfs::{mkdir, write};
use crate::profile::RobotProfile;

/// The daemon, as the sim runs it (the host's `/usr` is the sim's).
pub const AVAHI_DAEMON: &str = "/usr/sbin/avahi-daemon";
/// Its configuration inside the sim.
pub const CONFIG: &str = "/etc/avahi/avahi-daemon.conf";
/// The avahi user's uid and gid in the sim (Debian gives the system user whatever is free;
/// only the sim's own `/etc/passwd` names it).
pub const AVAHI_ID: u32 = 105;

/// One static service file in Duckietown's format: `DT::<service>::%h`, port 0, and the TXT
/// record's one JSON string when there is one.
fn service_file(service: &str, txt: Option<&str>) -> String {
    let txt = txt
        .map(|t| format!("    <txt-record>{t}</txt-record>\n"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" standalone='no'?>\n\
         <!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n\
         <service-group>\n  <name replace-wildcards=\"yes\">DT::{service}::%h</name>\n  \
         <service>\n    <type>_duckietown._tcp</type>\n{txt}    <port>0</port>\n  \
         </service>\n</service-group>\n"
    )
}

/// Writes `etc/avahi` under `root` for the robot `name` of `profile`.
pub fn write_config(root: &Path, name: &str, profile: &RobotProfile) -> Result<(), SimError> {
    let dir = root.join("etc/avahi");
    mkdir(&dir.join("services"), 0o755)?;
    // IPv4 on eth0 only: the sim has no other link, and `use-ipv6=no` with
    // `publish-aaaa-on-ipv4=no` is Duckietown's own fix for `NAME-2.local` name conflicts.
    // No D-Bus (this machine runs none): the socket the containers use does not need it.
    write(
        &dir.join("avahi-daemon.conf"),
        &format!(
            "# dts sim: virtual robot `{name}`\n\
             [server]\nhost-name={name}\ndomain-name=local\nuse-ipv4=yes\nuse-ipv6=no\n\
             allow-interfaces=eth0\nenable-dbus=no\n\
             [wide-area]\nenable-wide-area=no\n\
             [publish]\npublish-hinfo=no\npublish-workstation=no\npublish-aaaa-on-ipv4=no\n"
        ),
        0o644,
    )?;
    let services = dir.join("services");
    let files = [
        ("dt.presence.service", service_file("PRESENCE", None)),
        (
            "dt.robot_type.service",
            service_file(
                "ROBOT_TYPE",
                Some(&format!("{{\"type\": \"{}\"}}", profile.robot_type)),
            ),
        ),
        (
            "dt.robot_configuration.service",
            service_file(
                "ROBOT_CONFIGURATION",
                Some(&format!(
                    "{{\"configuration\": \"{}\"}}",
                    profile.configuration
                )),
            ),
        ),
        // A sim is up when `dts sim up` returns: there is no boot for dt-init to mark, but the
        // image's copy is there as on a real card.
        ("dt.booting.service.disabled", service_file("BOOTING", None)),
    ];
    for (file, text) in files {
        write(&services.join(file), &text, 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::advertise::avahi_services;
    use crate::discover::parse::Service;

    #[test]
    fn the_agent_leaves_these_services_to_avahi() {
        let t = tempfile::tempdir().unwrap();
        let profile = RobotProfile::builtin("virtual").unwrap();
        write_config(t.path(), "bot", &profile).unwrap();
        let got = avahi_services(&t.path().join("etc/avahi/services"), "bot").unwrap();
        let want = [
            Service::Presence,
            Service::RobotType,
            Service::RobotConfiguration,
        ];
        assert_eq!(got, want.into_iter().collect());
        let conf = std::fs::read_to_string(t.path().join("etc/avahi/avahi-daemon.conf")).unwrap();
        assert!(conf.contains("host-name=bot\n") && conf.contains("enable-dbus=no\n"));
    }
}
