//! `dts duckiebot provision`: turns a freshly flashed Duckiebot (user `duckie` with the password
//! everyone knows, password-less sudo, the shared `DT2018key`, Docker's API open on TCP 2375,
//! maybe host keys baked into the SD-card image) into one of ours, over one SSH session.
//!
//! Owns: the steps, their order, and how each one checks the robot before changing it. Every
//! step is idempotent: it looks first, changes only what differs, and is recorded in
//! [`ProvisionReport::changed`] only when it did change something, so a second run changes
//! nothing and a run killed half-way is finished by the next. `--dry-run` runs the checks only.
//! The steps are a list ([`steps::STEPS`]), each a check and an apply: [`install`] puts the
//! agent and its configuration on the robot, [`harden`] closes what the image leaves open, and
//! [`remote`] is how they reach the robot.
//! Does not own: SSH itself (`ssh`), finding the agent binary (`agents`), shipping images
//! (`wire`), printing (`cli`).
//!
//! The order keeps the robot reachable at every moment:
//!
//! ```text
//! detect (uname, os-release, sudo) ─► authorized-key ─► key login verified in a new session
//!   ─► runc ─► agent (temp name, sha256 on the robot, rename) ─► udev-rules ─► robot-yaml
//!   ─► data-config ─► hostname ─► sudoers (visudo -cf) ─► host-keys (new keys recorded in
//!   known_hosts before sshd sees them) ─► ssh-password-login off (sshd -t; reverted when key
//!   login then fails) ─► shared-key gone ─► password-lock (reverted likewise) ─► docker-tcp
//!   ─► systemd-unit ─► agent-service ─► preload ─► marker (/etc/dt-agent/provisioned.json)
//! ```
//!
//! Passwords are turned off and `DT2018key` removed only after a key login with the user's own
//! key has worked in a separate session; the first session stays open throughout, so a step
//! that broke key login is undone through it.

mod adopt;
mod harden;
mod install;
mod remote;
mod steps;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::profile::robot::RobotProfile;
use crate::progress::{Event, Reporter};
use crate::ssh::{Session, known_hosts};
use remote::{robot_host_keys, user_key};
use steps::Cx;

/// The shared public key of every Duckietown SD-card image (`DT2018key`), as the images'
/// cloud-config installs it (duckietown-shell-commands `init_sd_card/placeholders/v1.0/
/// CLOUD_CONFIG`; docs/duckietown.md). Provisioning removes every line carrying its key blob,
/// whatever the line's options or comment.
pub const DT2018_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDFiaiFeU0Pc3ZjiGbjJOIx28ghcWPoem8jU1OSeJnbTkKT79vrzjIbYjkBg7uBlXb6kLnbHLWHUnPlLk2IUQTxHHvakubEJkJxePdN6XO+q1sKpEvz+1GL60iBKhRljCZ9h/CcJ78kkyNQkexHT15ZDMhOnUd8c9zxwUHxSjzPSOH5ns8bxjU3oSjmzDEojPnQJmY6Evhf5DVcKXenxkzs4XgDEo+ldKo37i30iUoFCL30OsXCP2tPcn1j39qjL7vnaUBO9WqY8eOssOHAX7/K1dNN1lDvNCKspq/2f05Ss8LopSpe6hOiMnPB0RlotJbZn+784kV1B4nJpqLj+EQr DT2018key";

/// Where the agent goes on the robot (the sudoers drop-in names this exact path).
pub const AGENT_PATH: &str = "/usr/local/bin/dt-agent";
/// The systemd unit.
pub const UNIT_PATH: &str = "/etc/systemd/system/dt-agent.service";
/// The record of a finished provision; its presence makes a robot "already provisioned".
pub const MARKER_PATH: &str = "/etc/dt-agent/provisioned.json";
/// Written when provisioning regenerated the SSH host keys, so a re-run never does it twice.
pub const HOST_KEYS_RECORD: &str = "/etc/dt-agent/host-keys-regenerated";
/// The sudoers drop-in (no `.` in the name: sudo skips such files in `sudoers.d`).
pub const SUDOERS_PATH: &str = "/etc/sudoers.d/dt-agent";
/// The sshd drop-in; `00-` so it precedes cloud-init's `50-cloud-init.conf` (sshd keeps the
/// first value it reads for a keyword).
pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/00-dts-provision.conf";

/// The udev rules installed into `/etc/udev/rules.d/`, embedded from `udev/`.
pub const UDEV_RULES: &[(&str, &str)] = &[(
    "70-duckiebot.rules",
    include_str!("../../../udev/70-duckiebot.rules"),
)];

/// How long a key login may take to come back after sshd reloads (it re-executes itself and
/// briefly has no listener).
const RELOGIN_TRIES: u32 = 10;
const RELOGIN_PAUSE: Duration = Duration::from_millis(500);
/// How long the agent's daemon may take to open its socket after a (re)start.
const DAEMON_START: Duration = Duration::from_secs(30);

/// The shell every robot script starts with: strict, and with root's tool directories on the
/// PATH (sshd, visudo, usermod live in sbin, which a login user's PATH may lack).
const PRELUDE: &str =
    "set -e; PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH; ";

/// What `dts duckiebot provision` was asked to do.
#[derive(Clone, Debug)]
pub struct ProvisionArgs {
    /// The ROBOT argument (`[user@]host[:port]`, a name found over mDNS).
    pub robot: String,
    /// `--hostname`.
    pub hostname: String,
    /// `--configuration` (a shipped robot profile).
    pub configuration: String,
    /// `--user` (a `user@` in ROBOT wins).
    pub user: String,
    /// From `--password-stdin`.
    pub password: Option<String>,
    /// `-i`: the key to log in with and to install (its `.pub` beside it).
    pub identity: Option<PathBuf>,
    /// `--known-hosts`.
    pub known_hosts: Option<PathBuf>,
    /// `--accept-new-host-key`: provisioning is the first contact, so usually given.
    pub accept_new_host_key: bool,
    /// `--keep-host-keys`.
    pub keep_host_keys: bool,
    /// `--preload IMAGE`…: images from the laptop's store to ship once the agent runs.
    pub preload: Vec<String>,
    /// `--dry-run`: check every step, change nothing.
    pub dry_run: bool,
    /// `--restore-docker`: give an adopted robot back to Docker instead of provisioning.
    pub restore_docker: bool,
    /// `--remove-docker`: after a successful adoption, remove Docker's packages and data root.
    pub remove_docker: bool,
}

/// What one step found or did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StepReport {
    /// The step's name (`agent`, `hostname`…), as `changed` lists it.
    pub step: String,
    /// Whether it changed the robot (with `--dry-run`: whether it would).
    pub changed: bool,
    /// What it found or did, for people.
    pub detail: String,
}

/// The outcome of a provision.
#[derive(Clone, Debug, Serialize)]
pub struct ProvisionReport {
    /// The robot as given.
    pub robot: String,
    /// `host:port` connected to.
    pub address: String,
    /// Its CPU as the agent names it (`amd64`, `arm64`, `armhf`).
    pub arch: String,
    /// Its OS (`PRETTY_NAME`).
    pub os: String,
    /// Steps that changed something (would, with `--dry-run`), in order.
    pub changed: Vec<String>,
    /// Every step.
    pub steps: Vec<StepReport>,
    /// The robot had been provisioned before and nothing needed changing.
    pub already_provisioned: bool,
    /// This was a `--dry-run`.
    pub dry_run: bool,
    /// SHA256 fingerprint of the robot's ed25519 host key as recorded at the end.
    pub host_key_fingerprint: Option<String>,
    /// Things the user should know (a step that could not be completed on this robot).
    pub notes: Vec<String>,
    /// One line per privilege or mount the adoption of Docker's stack dropped.
    pub warnings: Vec<String>,
    /// The agent's release that Docker's stack became in this run.
    pub adopted_release: Option<u64>,
}

/// Why provisioning stopped; each names the robot and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// `uname -m` names a CPU we have no agent for.
    #[error(
        "`{addr}` is a `{machine}` machine, which dt-agent does not support (supported: x86_64, aarch64, armv7l); nothing was changed"
    )]
    UnsupportedArch {
        /// `host:port`.
        addr: String,
        /// What `uname -m` said.
        machine: String,
    },
    /// Not Linux.
    #[error("`{addr}` runs `{kernel}`, not Linux; nothing was changed")]
    NotLinux {
        /// `host:port`.
        addr: String,
        /// `uname -s`.
        kernel: String,
    },
    /// The login user may not become root.
    #[error(
        "`{user}@{addr}` cannot run commands as root: sudo wants a password{}",
        if *.password_given { " and refused the one given" } else { "; pass it with `--password-stdin`" }
    )]
    NoSudo {
        /// `host:port`.
        addr: String,
        /// Login name.
        user: String,
        /// Whether `--password-stdin` gave one.
        password_given: bool,
    },
    /// A login with the user's key failed after the key was installed: hardening stops here.
    #[error(
        "`{addr}`: logging in with `{}` failed after installing its public key, so passwords and DT2018key were left on; {reason}",
        key.display()
    )]
    KeyLogin {
        /// `host:port`.
        addr: String,
        /// The private key tried.
        key: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The adopted stack's release failed its health checks or probation; the agent's
    /// containers of it were removed and Docker's stack started again.
    #[error(
        "`{addr}`: Docker's stack, adopted as release {release}, failed on the agent ({reason}); its containers were removed and Docker's stack is running again as before"
    )]
    AdoptionFailed {
        /// `host:port`.
        addr: String,
        /// The release that failed (0: none was recorded).
        release: u64,
        /// The daemon's reason.
        reason: String,
    },
    /// `--restore-docker` on a robot whose Docker stack was never recorded.
    #[error(
        "`{addr}`: nothing to restore: /etc/dt-agent/docker-stack.json is missing, so this robot's Docker stack was never adopted"
    )]
    NothingToRestore {
        /// `host:port`.
        addr: String,
    },
    /// `--restore-docker` after `--remove-docker`: there is no Docker to give the robot to.
    #[error(
        "`{addr}`: cannot restore Docker's stack: `--remove-docker` removed Docker from this robot on {removed_at}; the agent runs the adopted stack"
    )]
    DockerRemoved {
        /// `host:port`.
        addr: String,
        /// When.
        removed_at: String,
    },
    /// `--remove-docker` on a robot whose adopted stack does not run under the agent.
    #[error(
        "`{addr}`: refusing to remove Docker: the agent does not run the adopted stack (provision without `--remove-docker` first)"
    )]
    NotAdopted {
        /// `host:port`.
        addr: String,
    },
    /// A step's command failed on the robot.
    #[error("`{addr}`: step `{step}` failed: {message}")]
    Step {
        /// `host:port`.
        addr: String,
        /// The step.
        step: &'static str,
        /// What the robot said.
        message: String,
    },
}

/// `--hostname` must be a host name label (RFC 1123): what avahi publishes and `NAME.local`
/// resolves.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid robot host name: use 1-63 lowercase letters, digits and `-`, not starting or ending with `-`"
        ))
    }
}

/// A login name we put into sudoers and shell commands.
fn check_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !user.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("`{user}` is not a user name provisioning accepts"))
    }
}

/// The board a configuration runs on, as `/data/config/robot_hardware` names it
/// (no 2gb/4gb suffix there; docs/duckietown.md, "Boards, configurations, arch tags").
pub fn robot_hardware(configuration: &str) -> &'static str {
    match configuration {
        "DB18" | "DB19" | "DB20" | "DD18" | "WT18" | "WT19A" | "WT19B" | "TL18" | "TL19"
        | "DT20" => "raspberry_pi",
        "DB21M" | "DB21J" => "jetson_nano",
        "DBR4" | "WT21A" | "WT21B" | "TL21" | "DT21" | "DD24" => "raspberry_pi_64",
        "virtual" => "virtual",
        _ => "unknown",
    }
}

/// `/etc/dt-agent/robot.yaml` for a robot (docs/formats.md, "robot.yaml"): no
/// `devices`, so the profile of `configuration` applies as shipped.
pub fn robot_yaml(hostname: &str, profile: &RobotProfile) -> String {
    format!(
        "{}hostname: {hostname}\ntype: {ty}\nconfiguration: {cfg}\n",
        robot_yaml_header(profile),
        cfg = profile.configuration,
        ty = profile.robot_type,
    )
}

/// What re-provisioning does to an existing `robot.yaml` ([`merge_robot_yaml`]).
#[derive(Debug, PartialEq, Eq)]
pub enum RobotYamlMerge {
    /// It already says what provision owns, and reads back: left alone, comments and all.
    Unchanged,
    /// Rewritten with this text: provision's keys (`hostname`, `type`, `configuration`) set,
    /// everything else (`devices:`) kept in its place; comments are lost.
    Merged(String),
    /// It could not be kept (not YAML, not a mapping, or wrong once merged: the reason);
    /// replaced with a fresh [`robot_yaml`] after a copy of the old one is kept.
    Replaced(String, String),
}

/// Merges provision's view of the robot into `existing` (a `robot.yaml` found on the robot):
/// provision owns `hostname`, `type` and `configuration`; the user's `devices:` stay. The merge
/// goes through serde_yaml_ng's mapping, which keeps key order but not comments, and the result
/// must read back as a [`crate::profile::robot::RobotConfig`] (what the agent will read).
pub fn merge_robot_yaml(existing: &str, hostname: &str, profile: &RobotProfile) -> RobotYamlMerge {
    use crate::profile::robot::RobotConfig;
    use serde_yaml_ng::Value;
    let file = crate::profile::robot::DEFAULT_ROBOT_YAML;
    if let Ok(c) = RobotConfig::from_str(file, existing)
        && c.hostname == hostname
        && c.configuration == profile.configuration
        && c.robot_type == profile.robot_type
    {
        return RobotYamlMerge::Unchanged;
    }
    let fresh = || robot_yaml(hostname, profile);
    let mut map = match serde_yaml_ng::from_str::<Value>(existing) {
        Ok(Value::Mapping(m)) => m,
        Ok(Value::Null) => return RobotYamlMerge::Merged(fresh()),
        Ok(_) => return RobotYamlMerge::Replaced(fresh(), "it is not a mapping".into()),
        Err(e) => return RobotYamlMerge::Replaced(fresh(), format!("it is not YAML: {e}")),
    };
    for (k, v) in [
        ("hostname", hostname),
        ("type", profile.robot_type.as_str()),
        ("configuration", profile.configuration.as_str()),
    ] {
        map.insert(Value::from(k), Value::from(v));
    }
    let body = match serde_yaml_ng::to_string(&Value::Mapping(map)) {
        Ok(b) => b,
        Err(e) => return RobotYamlMerge::Replaced(fresh(), e.to_string()),
    };
    let text = format!("{}{body}", robot_yaml_header(profile));
    match RobotConfig::from_str(file, &text) {
        Ok(_) => RobotYamlMerge::Merged(text),
        Err(e) => RobotYamlMerge::Replaced(fresh(), e.to_string()),
    }
}

/// The comment `robot.yaml` opens with.
fn robot_yaml_header(profile: &RobotProfile) -> String {
    format!(
        "# Written by `dts duckiebot provision`. `configuration` selects profiles/robots/{cfg}.yaml;\n\
         # add a `devices:` map to replace one of its roles on this robot.\n",
        cfg = profile.configuration,
    )
}

/// The systemd unit running `dt-agent daemon`.
pub fn systemd_unit() -> String {
    format!(
        "# Installed by `dts duckiebot provision`.\n\
         [Unit]\n\
         Description=Duckiebot agent: runs the robot's containers and releases\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={AGENT_PATH} daemon\n\
         Restart=always\n\
         RestartSec=2\n\
         # Containers run under per-container shims that a restarted daemon adopts: stopping or\n\
         # upgrading the daemon must not take the robot's containers down with it.\n\
         KillMode=process\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The sudoers drop-in: `user` may run exactly the agent's protocol end, nothing else.
pub fn sudoers(user: &str) -> String {
    format!(
        "# Installed by `dts duckiebot provision`: `dts` reaches the agent with\n\
         # `ssh {user}@robot sudo -n dt-agent serve --stdio`.\n\
         {user} ALL=(root) NOPASSWD: {AGENT_PATH} serve --stdio\n"
    )
}

/// The sshd drop-in turning password logins off (ChallengeResponseAuthentication is the
/// spelling every OpenSSH since 7.x reads; it also covers PAM's keyboard-interactive prompt).
pub const SSHD_SETTINGS: &str = "# Installed by `dts duckiebot provision`: keys only.\n\
PasswordAuthentication no\n\
ChallengeResponseAuthentication no\n";

/// The marker's content: what was provisioned, by which dts, with which agent.
#[derive(Serialize)]
struct Marker<'a> {
    provisioned_by: String,
    hostname: &'a str,
    configuration: &'a str,
    user: &'a str,
    arch: &'a str,
    agent_sha256: &'a str,
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Lowercase hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Provisions `args.robot`. Progress goes to `reporter`; nothing is printed.
pub async fn provision(args: &ProvisionArgs, reporter: &dyn Reporter) -> Result<ProvisionReport> {
    if !args.restore_docker {
        check_hostname(&args.hostname).map_err(|m| anyhow!(m))?;
    }
    // `--restore-docker` needs no configuration; the steps' context carries one regardless.
    let profile = if args.restore_docker && args.configuration.is_empty() {
        RobotProfile::builtin("virtual")?
    } else {
        RobotProfile::builtin(&args.configuration)?
    };
    let dts_home = super::dts_home();

    let ssh_args = super::robot::SshArgs {
        identity: args.identity.clone(),
        known_hosts: args.known_hosts.clone(),
        accept_new_host_key: args.accept_new_host_key,
    };
    let (mut target, mut opts) = super::robot::resolve(&args.robot, &ssh_args)?;
    if target.user.is_none() {
        target.user = Some(args.user.clone());
    }
    let user = target.user.clone().unwrap_or_default();
    check_user(&user).map_err(|m| anyhow!(m))?;
    opts.password = args.password.clone();
    let key = user_key(args.identity.as_deref(), &opts.ssh_dir, &dts_home)?;
    if !opts.identities.contains(&key.private) {
        opts.identities.push(key.private.clone());
    }

    reporter.event(Event::start(
        "connect",
        format!("connect to {}", args.robot),
        None,
    ));
    let session = Session::connect(&target, &opts)
        .await
        .with_context(|| format!("robot `{}`", args.robot))?;
    reporter.event(Event::finish("connect", "ok"));

    let made_key = key
        .private
        .starts_with(&dts_home)
        .then(|| key.private.clone());
    // The steps borrow the session; it is closed once they are done with it.
    let report = {
        let mut cx = Cx::detect(args, reporter, &session, target, opts, key, user, profile).await?;
        if let Some(made) = made_key {
            // Other robot commands try it after ~/.ssh's keys and the agent (ops::robot::resolve).
            cx.notes.push(format!(
                "you have no ~/.ssh/id_* key, so dts made `{}` and installed it; later dts \
                 commands use it (for ssh, add it as IdentityFile in ~/.ssh/config)",
                made.display()
            ));
        }
        if args.restore_docker {
            cx.restore_docker().await?;
        } else {
            cx.run_steps().await?;
        }

        let fingerprint = if cx.dry || args.restore_docker {
            None
        } else {
            robot_host_keys(&cx.robot)
                .await?
                .iter()
                .find(|k| k.algorithm().as_str() == "ssh-ed25519")
                .map(known_hosts::fingerprint)
        };
        let changed: Vec<String> = cx
            .list
            .iter()
            .filter(|s| s.changed)
            .map(|s| s.step.clone())
            .collect();
        ProvisionReport {
            robot: args.robot.clone(),
            address: cx.robot.addr.clone(),
            arch: cx.arch.to_string(),
            os: cx.os,
            already_provisioned: !cx.first_provision && changed.is_empty(),
            changed,
            steps: cx.list,
            dry_run: cx.dry,
            host_key_fingerprint: fingerprint,
            notes: cx.notes,
            warnings: cx.warnings,
            adopted_release: cx.adopted_release,
        }
    };
    let _ = session.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::remote::{target_host, target_port};
    use super::steps::STEPS;
    use super::*;
    use russh::keys::PublicKey;

    /// Every step has its own name, and the order keeps the robot reachable: the key is in and
    /// proven before any hardening, the marker comes last.
    #[test]
    fn the_steps_are_named_once_and_in_a_safe_order() {
        let names: Vec<&str> = STEPS.iter().map(|s| s.name()).collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        let at = |n: &str| names.iter().position(|s| *s == n).unwrap();
        for hardening in ["ssh-password-login", "shared-key", "password-lock"] {
            assert!(at("key-login") < at(hardening), "{names:?}");
        }
        assert!(at("authorized-key") < at("key-login"));
        assert!(at("agent-service") > at("systemd-unit"));
        assert_eq!(names.last(), Some(&"marker"));
    }

    #[test]
    fn hostnames() {
        for ok in ["mybot", "bot-2", "a", "db21j7"] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-bot",
            "bot-",
            "My_Bot",
            "bot.local",
            "bot bot",
            &"a".repeat(64),
        ] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn robot_yaml_reads_back_as_a_robot_config() {
        for cfg in RobotProfile::known() {
            let p = RobotProfile::builtin(cfg).unwrap();
            let text = robot_yaml("mybot", &p);
            let c = crate::profile::robot::RobotConfig::from_str("robot.yaml", &text).unwrap();
            assert_eq!(c.hostname, "mybot");
            assert_eq!(c.configuration, cfg);
            assert_eq!(c.robot_type, p.robot_type);
            assert!(c.devices.is_empty());
        }
    }

    /// Re-provisioning keeps the user's `devices:` and takes over only hostname, type and
    /// configuration; a file that already agrees is left alone, comments and all.
    #[test]
    fn robot_yaml_merges_keep_the_users_devices() {
        use crate::profile::robot::RobotConfig;
        let db21j = RobotProfile::builtin("DB21J").unwrap();
        let ours = robot_yaml("mybot", &db21j);
        assert_eq!(
            merge_robot_yaml(&ours, "mybot", &db21j),
            RobotYamlMerge::Unchanged
        );
        let edited = format!(
            "{ours}# the camera is on the second bus here\ndevices:\n  camera:\n    nodes: [\"/dev/video2:/dev/video0\"]\n    groups: [video]\n"
        );
        assert_eq!(
            merge_robot_yaml(&edited, "mybot", &db21j),
            RobotYamlMerge::Unchanged
        );
        let devices = RobotConfig::from_str("t", &edited).unwrap().devices;
        assert_eq!(devices.len(), 1);
        // A new name and a new configuration: the devices stay, in their place.
        let db21m = RobotProfile::builtin("DB21M").unwrap();
        let RobotYamlMerge::Merged(text) = merge_robot_yaml(&edited, "other", &db21m) else {
            panic!("not merged");
        };
        let c = RobotConfig::from_str("t", &text).unwrap();
        assert_eq!(c.hostname, "other");
        assert_eq!(c.configuration, "DB21M");
        assert_eq!(c.robot_type, db21m.robot_type);
        assert_eq!(c.devices, devices);
        assert!(
            text.starts_with("# Written by `dts duckiebot provision`"),
            "{text}"
        );
        assert_eq!(
            merge_robot_yaml(&text, "other", &db21m),
            RobotYamlMerge::Unchanged
        );
        // Without `type`, or with an empty file: provision's keys are filled in.
        let bare =
            "hostname: old\nconfiguration: DB21J\ndevices:\n  tof:\n    nodes: [/dev/i2c-9]\n";
        let RobotYamlMerge::Merged(text) = merge_robot_yaml(bare, "mybot", &db21j) else {
            panic!("not merged");
        };
        let c = RobotConfig::from_str("t", &text).unwrap();
        assert_eq!((c.hostname.as_str(), c.devices.len()), ("mybot", 1));
        assert_eq!(
            merge_robot_yaml("", "mybot", &db21j),
            RobotYamlMerge::Merged(ours.clone())
        );
        // What cannot be kept is replaced, with the reason.
        for (bad, why) in [
            ("hostname: [unclosed\n", "not YAML"),
            ("- a list\n", "not a mapping"),
            (
                "hostname: x\nconfiguration: DB21J\ncolour: blue\n",
                "colour",
            ),
            (
                "hostname: x\nconfiguration: DB21J\ndevices:\n  camera:\n    nodez: []\n",
                "nodez",
            ),
        ] {
            match merge_robot_yaml(bad, "mybot", &db21j) {
                RobotYamlMerge::Replaced(text, reason) => {
                    assert_eq!(text, ours);
                    assert!(reason.contains(why), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_shipped_configuration_has_a_board() {
        for cfg in RobotProfile::known() {
            assert_ne!(robot_hardware(cfg), "unknown", "{cfg}");
        }
        assert_eq!(robot_hardware("DB21J"), "jetson_nano");
        assert_eq!(robot_hardware("DB19"), "raspberry_pi");
        assert_eq!(robot_hardware("DBR4"), "raspberry_pi_64");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_shared_key_parses() {
        let k = PublicKey::from_openssh(DT2018_KEY).unwrap();
        assert!(k.algorithm().is_rsa());
    }

    #[test]
    fn sudoers_names_one_command() {
        let s = sudoers("duckie");
        assert!(s.contains("duckie ALL=(root) NOPASSWD: /usr/local/bin/dt-agent serve --stdio\n"));
        assert!(check_user("duckie").is_ok());
        assert!(check_user("x;rm").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(target_host("10.0.0.5:22"), "10.0.0.5");
        assert_eq!(target_port("10.0.0.5:2222"), 2222);
        assert_eq!(target_host("[fe80::1]:22"), "fe80::1");
    }

    /// The unit passes `systemd-analyze verify` (skipped where systemd-analyze is missing).
    #[test]
    fn the_unit_verifies() {
        let Ok(probe) = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        else {
            crate::util::skip_test("no systemd-analyze");
            return;
        };
        if !probe.status.success() {
            crate::util::skip_test("systemd-analyze does not run");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // ExecStart must name an executable that exists: a copy of `true` at the agent's path
        // under a root directory of our own.
        let bin = dir.path().join("usr/local/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/true", bin.join("dt-agent")).unwrap();
        // systemd's own units (the targets the unit names), copied into that root.
        let lib = dir.path().join("usr/lib/systemd");
        std::fs::create_dir_all(&lib).unwrap();
        let st = std::process::Command::new("cp")
            .args(["-r", "/usr/lib/systemd/system"])
            .arg(&lib)
            .status()
            .unwrap();
        assert!(st.success(), "copying /usr/lib/systemd/system");
        let unit_dir = dir.path().join("etc/systemd/system");
        std::fs::create_dir_all(&unit_dir).unwrap();
        std::fs::write(unit_dir.join("dt-agent.service"), systemd_unit()).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", dir.path().display()))
            .arg(unit_dir.join("dt-agent.service"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify failed: {err}");
        assert!(
            !err.contains("dt-agent.service:"),
            "warnings about the unit: {err}"
        );
    }
}
