//! `dts duckiebot provision`: turns a freshly flashed Duckiebot (user `duckie` with the password
//! everyone knows, password-less sudo, the shared `DT2018key`, Docker's API open on TCP 2375,
//! maybe host keys baked into the SD-card image) into one of ours, over one SSH session.
//!
//! Owns: the steps, their order, and how each one checks the robot before changing it. Every
//! step is idempotent: it looks first, changes only what differs, and is recorded in
//! [`ProvisionReport::changed`] only when it did change something, so a second run changes
//! nothing and a run killed half-way is finished by the next. `--dry-run` runs the checks only.
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use russh::keys::PublicKey;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::agents::{AgentArch, find_agent};
use crate::profile::robot::RobotProfile;
use crate::progress::{Event, Reporter};
use crate::ssh::{Output, Session, SshOptions, Target, known_hosts};

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
        "# Written by `dts duckiebot provision`. `configuration` selects profiles/robots/{cfg}.yaml;\n\
         # add a `devices:` map to replace one of its roles on this robot.\n\
         hostname: {hostname}\ntype: {ty}\nconfiguration: {cfg}\n",
        cfg = profile.configuration,
        ty = profile.robot_type,
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

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How the login user becomes root on the robot.
#[derive(Clone)]
enum Root {
    /// It is root.
    Already,
    /// `sudo -n` works (the Duckietown image's `NOPASSWD:ALL`).
    NoPassword,
    /// `sudo -S` with this password on stdin.
    Password(String),
}

/// The user's key pair: installed on the robot, then used for every login that verifies it.
#[derive(Clone, Debug)]
struct UserKey {
    private: PathBuf,
    public_line: String,
    blob: String,
}

/// One SSH session to the robot, and how to become root in it.
struct Robot<'a> {
    session: &'a Session,
    root: Root,
    addr: String,
}

impl Robot<'_> {
    fn fail(&self, step: &'static str, message: impl Into<String>) -> anyhow::Error {
        ProvisionError::Step {
            addr: self.addr.clone(),
            step,
            message: message.into(),
        }
        .into()
    }

    /// Runs `script` as root with `input` on its stdin.
    async fn root(&self, script: &str, input: &[u8]) -> Result<Output> {
        let body = format!("{PRELUDE}{script}");
        let (command, input) = match &self.root {
            Root::Already => (format!("sh -c {}", sh_quote(&body)), input.to_vec()),
            Root::NoPassword => (format!("sudo -n sh -c {}", sh_quote(&body)), input.to_vec()),
            Root::Password(pw) => {
                // -k: always ask, so the password line is never left for the script to read;
                // sudo reads the password byte by byte, so what follows the line is the
                // script's stdin.
                let mut v = Vec::with_capacity(pw.len() + 1 + input.len());
                v.extend_from_slice(pw.as_bytes());
                v.push(b'\n');
                v.extend_from_slice(input);
                (format!("sudo -k -S -p '' sh -c {}", sh_quote(&body)), v)
            }
        };
        Ok(self.session.run_with_input(&command, &input).await?)
    }

    /// [`Self::root`], failing with the step's name and the script's stderr unless it exits 0;
    /// returns stdout.
    async fn root_ok(&self, step: &'static str, script: &str, input: &[u8]) -> Result<String> {
        let out = self.root(script, input).await?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            return Err(self.fail(
                step,
                if err.is_empty() {
                    format!("{} (no message)", out.status)
                } else {
                    format!("{}: {err}", out.status)
                },
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The sha256 and octal mode of `path`, or `None` when it is not a regular file.
    async fn file_state(&self, step: &'static str, path: &str) -> Result<Option<(String, String)>> {
        let p = sh_quote(path);
        let out = self
            .root_ok(
                step,
                &format!(
                    "if [ -f {p} ] && [ ! -L {p} ]; then sha256sum {p} | cut -c1-64; stat -c %a {p}; fi"
                ),
                &[],
            )
            .await?;
        let mut lines = out.lines();
        Ok(match (lines.next(), lines.next()) {
            (Some(h), Some(m)) => Some((h.trim().to_owned(), m.trim().to_owned())),
            _ => None,
        })
    }

    /// Whether `path` differs from `content` with `mode` (octal, e.g. `644`).
    async fn file_differs(
        &self,
        step: &'static str,
        path: &str,
        content: &[u8],
        mode: &str,
    ) -> Result<bool> {
        Ok(match self.file_state(step, path).await? {
            Some((h, m)) => h != sha256_hex(content) || m != mode,
            None => true,
        })
    }

    /// Writes `content` to `path` (owner root, `mode`) through a temporary file in the same
    /// directory and a rename; `validate` (a shell command with `"$tmp"` for the new file) runs
    /// before the rename and a failure leaves the old file in place.
    async fn write_file(
        &self,
        step: &'static str,
        path: &str,
        content: &[u8],
        mode: &str,
        validate: Option<&str>,
    ) -> Result<()> {
        let p = Path::new(path);
        let dir = p
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or("/".into());
        let base = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let check = validate
            .map(|v| {
                format!("{v} >&2 || {{ echo 'the new file did not validate' >&2; exit 1; }}; ")
            })
            .unwrap_or_default();
        let script = format!(
            "mkdir -p {d}; tmp=$(mktemp {d}/.{b}.dts.XXXXXX); trap 'rm -f \"$tmp\"' EXIT; \
             cat > \"$tmp\"; chown root:root \"$tmp\"; chmod {mode} \"$tmp\"; {check}\
             mv -f \"$tmp\" {p}; trap - EXIT",
            d = sh_quote(&dir),
            b = base,
            p = sh_quote(path),
        );
        self.root_ok(step, &script, content).await.map(|_| ())
    }
}

/// Collects step outcomes and reports progress.
struct Steps<'a> {
    reporter: &'a dyn Reporter,
    list: Vec<StepReport>,
    dry_run: bool,
}

impl Steps<'_> {
    fn start(&self, step: &str, label: &str) {
        self.reporter.event(Event::start(step, label, None));
    }
    fn done(&mut self, step: &str, changed: bool, detail: impl Into<String>) {
        let outcome = match (changed, self.dry_run) {
            (false, _) => "ok",
            (true, false) => "changed",
            (true, true) => "would change",
        };
        self.reporter.event(Event::finish(step, outcome));
        self.list.push(StepReport {
            step: step.to_owned(),
            changed,
            detail: detail.into(),
        });
    }
    fn changed(&self, step: &str) -> bool {
        self.list.iter().any(|s| s.step == step && s.changed)
    }
}

/// Picks the key to install: `-i KEY` (and `KEY.pub`), else the user's first `~/.ssh/id_*`
/// with both halves, else `$DTS_HOME/robot_key`, made with ssh-keygen when missing.
fn user_key(identity: Option<&Path>, ssh_dir: &Path, dts_home: &Path) -> Result<UserKey> {
    let from = |private: &Path| -> Result<UserKey> {
        let pubpath = PathBuf::from(format!("{}.pub", private.display()));
        let text = std::fs::read_to_string(&pubpath).with_context(|| {
            format!(
                "reading the public key `{}` (the one installed on the robot)",
                pubpath.display()
            )
        })?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| anyhow!("`{}` holds no public key", pubpath.display()))?;
        let key = PublicKey::from_openssh(line)
            .with_context(|| format!("`{}` is not an OpenSSH public key", pubpath.display()))?;
        let blob = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("`{}` holds no key blob", pubpath.display()))?
            .to_owned();
        let comment = line
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
            .join("_");
        let comment = if comment.is_empty() {
            "dts-provision".to_owned()
        } else {
            comment
        };
        let public_line = format!("{} {blob} {comment}", key.algorithm().as_str());
        Ok(UserKey {
            private: private.to_owned(),
            public_line,
            blob,
        })
    };
    if let Some(i) = identity {
        if !i.is_file() {
            bail!("identity file `{}` does not exist", i.display());
        }
        return from(i);
    }
    for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let p = ssh_dir.join(name);
        if p.is_file() && Path::new(&format!("{}.pub", p.display())).is_file() {
            return from(&p);
        }
    }
    let p = dts_home.join("robot_key");
    if !(p.is_file() && Path::new(&format!("{}.pub", p.display())).is_file()) {
        std::fs::create_dir_all(dts_home)
            .with_context(|| format!("creating `{}`", dts_home.display()))?;
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(format!("{}.pub", p.display()));
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "dts-robot", "-f"])
            .arg(&p)
            .status()
            .with_context(|| format!("running ssh-keygen to make `{}`", p.display()))?;
        if !st.success() {
            bail!("ssh-keygen could not make `{}` ({st})", p.display());
        }
    }
    from(&p)
}

/// SSH options that log in with `key` only: no password, no other keys (not the config's,
/// and the agent signs only with `key`: it may hold it when the file is passphrase-protected,
/// and it may hold DT2018key, whose success would prove nothing), host keys strictly checked.
fn key_only(opts: &SshOptions, key: &Path) -> SshOptions {
    let mut o = opts.clone();
    o.password = None;
    o.identities = vec![key.to_owned()];
    o.identities_only = true;
    o.default_identities = false;
    o.accept_new_host_key = false;
    o
}

/// Logs in again with only the user's key and runs `true`; retried while sshd restarts.
async fn verify_key_login(
    target: &Target,
    opts: &SshOptions,
    key: &UserKey,
    addr: &str,
) -> Result<()> {
    let o = key_only(opts, &key.private);
    let mut last = String::new();
    for attempt in 0..RELOGIN_TRIES {
        if attempt > 0 {
            tokio::time::sleep(RELOGIN_PAUSE).await;
        }
        match Session::connect(target, &o).await {
            Ok(s) => {
                let out = s.run("true").await;
                let _ = s.close().await;
                match out {
                    Ok(o) if o.status.success() => return Ok(()),
                    Ok(o) => last = format!("`true` ended with {}", o.status),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e @ crate::ssh::SshError::Connect { .. })
            | Err(e @ crate::ssh::SshError::Disconnected { .. }) => last = e.to_string(),
            Err(e) => {
                last = e.to_string();
                break;
            }
        }
    }
    Err(ProvisionError::KeyLogin {
        addr: addr.to_owned(),
        key: key.private.clone(),
        reason: last,
    }
    .into())
}

/// Provisions `args.robot`. Progress goes to `reporter`; nothing is printed.
pub async fn provision(args: &ProvisionArgs, reporter: &dyn Reporter) -> Result<ProvisionReport> {
    check_hostname(&args.hostname).map_err(|m| anyhow!(m))?;
    let profile = RobotProfile::builtin(&args.configuration)?;
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

    let mut steps = Steps {
        reporter,
        list: Vec::new(),
        dry_run: args.dry_run,
    };
    steps.start("connect", &format!("connect to {}", args.robot));
    let session = Session::connect(&target, &opts)
        .await
        .with_context(|| format!("robot `{}`", args.robot))?;
    let addr = session.addr().to_owned();
    steps.reporter.event(Event::finish("connect", "ok"));

    // ---- detect
    steps.start("detect", "detect arch, OS and sudo");
    let out = session
        .run("uname -s; uname -m; (. /etc/os-release 2>/dev/null && echo \"${PRETTY_NAME:-unknown}\") || echo unknown; id -u")
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(str::trim);
    let kernel = lines.next().unwrap_or_default().to_owned();
    let machine = lines.next().unwrap_or_default().to_owned();
    let os = lines.next().unwrap_or("unknown").to_owned();
    let uid = lines.next().unwrap_or_default().to_owned();
    if kernel != "Linux" {
        return Err(ProvisionError::NotLinux { addr, kernel }.into());
    }
    let arch = AgentArch::from_uname(&machine).ok_or_else(|| ProvisionError::UnsupportedArch {
        addr: addr.clone(),
        machine: machine.clone(),
    })?;
    let agent = find_agent(arch)?;
    let root = if uid == "0" {
        Root::Already
    } else if session.run("sudo -n true").await?.status.success() {
        Root::NoPassword
    } else if let Some(pw) = &args.password {
        let out = session
            .run_with_input("sudo -k -S -p '' true", format!("{pw}\n").as_bytes())
            .await?;
        if !out.status.success() {
            return Err(ProvisionError::NoSudo {
                addr,
                user,
                password_given: true,
            }
            .into());
        }
        Root::Password(pw.clone())
    } else {
        return Err(ProvisionError::NoSudo {
            addr,
            user,
            password_given: false,
        }
        .into());
    };
    let robot = Robot {
        session: &session,
        root: root.clone(),
        addr: addr.clone(),
    };
    let marker_before = robot
        .root_ok(
            "detect",
            &format!("cat {MARKER_PATH} 2>/dev/null || true"),
            &[],
        )
        .await?;
    let first_provision = marker_before.trim().is_empty();
    steps.done(
        "detect",
        false,
        format!(
            "{machine} ({arch}), {os}, {}",
            if first_provision {
                "not provisioned"
            } else {
                "provisioned before"
            }
        ),
    );

    let mut notes = Vec::new();
    if key.private.starts_with(&dts_home) {
        // Other robot commands try it after ~/.ssh's keys and the agent (ops::robot::resolve).
        notes.push(format!(
            "you have no ~/.ssh/id_* key, so dts made `{}` and installed it; later dts \
             commands use it (for ssh, add it as IdentityFile in ~/.ssh/config)",
            key.private.display()
        ));
    }
    let dry = args.dry_run;
    let home_of = format!("$(getent passwd {u} | cut -d: -f6)", u = sh_quote(&user));

    // ---- authorized-key
    steps.start("authorized-key", "install your public key");
    let has = robot
        .root_ok(
            "authorized-key",
            &format!(
                "h={home_of}; [ -n \"$h\" ] || {{ echo 'no user {user}' >&2; exit 1; }}; \
                 if [ -f \"$h/.ssh/authorized_keys\" ] && grep -qF {b} \"$h/.ssh/authorized_keys\"; then echo yes; else echo no; fi",
                b = sh_quote(&key.blob)
            ),
            &[],
        )
        .await?;
    let need = has.trim() != "yes";
    if need && !dry {
        robot
            .root_ok(
                "authorized-key",
                &format!(
                    "u={u}; h={home_of}; g=$(id -gn \"$u\"); install -d -m 700 -o \"$u\" -g \"$g\" \"$h/.ssh\"; \
                     f=\"$h/.ssh/authorized_keys\"; touch \"$f\"; \
                     if [ -s \"$f\" ] && [ -n \"$(tail -c1 \"$f\")\" ]; then echo >> \"$f\"; fi; \
                     printf '%s\\n' {line} >> \"$f\"; chown \"$u:$g\" \"$f\"; chmod 600 \"$f\"",
                    u = sh_quote(&user),
                    line = sh_quote(&key.public_line),
                ),
                &[],
            )
            .await?;
    }
    steps.done(
        "authorized-key",
        need,
        format!("{} in ~{user}/.ssh/authorized_keys", key.private.display()),
    );
    let key_installed = !need || !dry;
    if key_installed {
        steps.start("key-login", "log in with your key");
        verify_key_login(&target, &opts, &key, &addr).await?;
        steps.done("key-login", false, "a login with your key works");
    }

    // ---- runc
    steps.start("runc", "container runtime");
    let has = robot
        .root_ok("runc", "command -v runc || command -v crun || true", &[])
        .await?;
    let need = has.trim().is_empty();
    if need && !dry {
        robot
            .root_ok(
                "runc",
                "export DEBIAN_FRONTEND=noninteractive; \
                 apt-get install -y --no-install-recommends runc </dev/null >&2 \
                 || { apt-get update >&2 && apt-get install -y --no-install-recommends runc </dev/null >&2; }",
                &[],
            )
            .await?;
    }
    steps.done(
        "runc",
        need,
        if need {
            "runc installed with apt-get".to_owned()
        } else {
            format!("found {}", has.trim())
        },
    );

    // ---- agent
    steps.start("agent", &format!("dt-agent for {arch}"));
    let current = robot
        .root_ok(
            "agent",
            &format!("if [ -f {AGENT_PATH} ]; then sha256sum {AGENT_PATH} | cut -c1-64; fi"),
            &[],
        )
        .await?;
    let need = current.trim() != agent.sha256;
    if need && !dry {
        let bytes = std::fs::read(&agent.path)
            .with_context(|| format!("reading `{}`", agent.path.display()))?;
        let got = sha256_hex(&bytes);
        if got != agent.sha256 {
            bail!(
                "`{}` changed while provisioning (sha256 {got}, expected {})",
                agent.path.display(),
                agent.sha256
            );
        }
        reporter.event(Event::start(
            "agent-upload",
            format!("upload dt-agent ({arch})"),
            Some(agent.size),
        ));
        robot
            .root_ok(
                "agent",
                &format!(
                    "d=$(dirname {AGENT_PATH}); mkdir -p \"$d\"; tmp=$(mktemp \"$d/.dt-agent.XXXXXX\"); \
                     trap 'rm -f \"$tmp\"' EXIT; cat > \"$tmp\"; \
                     got=$(sha256sum \"$tmp\" | cut -c1-64); \
                     if [ \"$got\" != {want} ]; then echo \"the upload arrived with sha256 $got, not {want}\" >&2; exit 1; fi; \
                     chown root:root \"$tmp\"; chmod 755 \"$tmp\"; \
                     \"$tmp\" --version >/dev/null || {{ echo 'the uploaded dt-agent does not run on this robot' >&2; exit 1; }}; \
                     mv -f \"$tmp\" {AGENT_PATH}; trap - EXIT",
                    want = agent.sha256,
                ),
                &bytes,
            )
            .await?;
        reporter.event(Event::finish("agent-upload", "done"));
    }
    steps.done(
        "agent",
        need,
        format!(
            "{AGENT_PATH} sha256 {}",
            &agent.sha256[..12.min(agent.sha256.len())]
        ),
    );

    // ---- udev rules
    steps.start("udev-rules", "udev rules");
    let mut need = false;
    for (name, text) in UDEV_RULES {
        let path = format!("/etc/udev/rules.d/{name}");
        if robot
            .file_differs("udev-rules", &path, text.as_bytes(), "644")
            .await?
        {
            need = true;
            if !dry {
                robot
                    .write_file("udev-rules", &path, text.as_bytes(), "644", None)
                    .await?;
            }
        }
    }
    if need && !dry {
        // Without a running udevd (a container) the rules apply at the next boot. Only the
        // subsystems the rules name are re-added: all of them would include the WiFi interface
        // this session runs over.
        robot
            .root_ok(
                "udev-rules",
                "if [ -S /run/udev/control ] && command -v udevadm >/dev/null; then \
                 udevadm control --reload-rules && \
                 udevadm trigger --action=add --subsystem-match=i2c-dev --subsystem-match=gpio --subsystem-match=video4linux; fi",
                &[],
            )
            .await?;
    }
    steps.done("udev-rules", need, "/etc/udev/rules.d/70-duckiebot.rules");

    // ---- robot.yaml
    steps.start("robot-yaml", "/etc/dt-agent/robot.yaml");
    let yaml = robot_yaml(&args.hostname, &profile);
    let need = robot
        .file_differs(
            "robot-yaml",
            crate::profile::robot::DEFAULT_ROBOT_YAML,
            yaml.as_bytes(),
            "644",
        )
        .await?;
    if need && !dry {
        robot
            .write_file(
                "robot-yaml",
                crate::profile::robot::DEFAULT_ROBOT_YAML,
                yaml.as_bytes(),
                "644",
                None,
            )
            .await?;
    }
    steps.done(
        "robot-yaml",
        need,
        format!(
            "{} {} ({})",
            profile.robot_type, profile.configuration, args.hostname
        ),
    );

    // ---- /data/config
    steps.start("data-config", "/data/config");
    let hardware = robot_hardware(&profile.configuration);
    let files = [
        ("robot_type", profile.robot_type.as_str()),
        ("robot_configuration", profile.configuration.as_str()),
        ("robot_hardware", hardware),
    ];
    let mut need = false;
    for (name, value) in files {
        let path = format!("/data/config/{name}");
        let content = format!("{value}\n");
        if robot
            .file_differs("data-config", &path, content.as_bytes(), "644")
            .await?
        {
            need = true;
            if !dry {
                robot
                    .write_file("data-config", &path, content.as_bytes(), "644", None)
                    .await?;
            }
        }
    }
    steps.done(
        "data-config",
        need,
        format!(
            "robot_type={} robot_configuration={} robot_hardware={hardware}",
            profile.robot_type, profile.configuration
        ),
    );

    // ---- sudoers
    steps.start("sudoers", "sudoers drop-in for dt-agent serve");
    let text = sudoers(&user);
    let need = robot
        .file_differs("sudoers", SUDOERS_PATH, text.as_bytes(), "440")
        .await?;
    if need && !dry {
        robot
            .write_file(
                "sudoers",
                SUDOERS_PATH,
                text.as_bytes(),
                "440",
                Some("visudo -cf \"$tmp\""),
            )
            .await?;
    }
    // sudo obeys the LAST rule that matches, and stock images append the user's own rule to
    // /etc/sudoers after its `@includedir`: a password-wanting `duckie ALL=(ALL) ALL` there
    // would shadow the drop-in. Asking sudo itself is the only reliable check; the fix is an
    // `#include` of the drop-in at the very end of /etc/sudoers (validated first).
    let mut need = need;
    if !matches!(root, Root::Already) && (!need || !dry) && !sudo_serve_works(&session).await? {
        need = true;
        if !dry {
            robot
                .root_ok(
                    "sudoers",
                    &format!(
                        "s=/etc/sudoers; tmp=$(mktemp /etc/.sudoers.dts.XXXXXX); trap 'rm -f \"$tmp\"' EXIT; \
                         cat \"$s\" > \"$tmp\"; \
                         if [ -n \"$(tail -c1 \"$s\")\" ]; then echo >> \"$tmp\"; fi; \
                         printf '%s\\n' '# dts duckiebot provision: the dt-agent rule, last so that it wins' '#include {SUDOERS_PATH}' >> \"$tmp\"; \
                         chown root:root \"$tmp\"; chmod 440 \"$tmp\"; visudo -cf \"$tmp\" >&2; mv -f \"$tmp\" \"$s\"; trap - EXIT"
                    ),
                    &[],
                )
                .await?;
            if !sudo_serve_works(&session).await? {
                return Err(robot.fail(
                    "sudoers",
                    format!("{user} still cannot run `sudo -n {AGENT_PATH} serve --stdio`"),
                ));
            }
        }
    }
    steps.done(
        "sudoers",
        need,
        format!("{user} may run `{AGENT_PATH} serve --stdio`"),
    );

    // ---- hardening. Only with the user's key proven to work (not on a dry run that has not
    // installed it: then these are checks only).
    let known_file = opts.user_known_hosts();
    let port = target_port(&addr);
    let host = target_host(&addr);

    // host keys
    steps.start("host-keys", "unique SSH host keys");
    let regenerated = robot
        .root_ok(
            "host-keys",
            &format!("[ -f {HOST_KEYS_RECORD} ] && echo yes || true"),
            &[],
        )
        .await?
        .trim()
        == "yes";
    let need = !args.keep_host_keys && first_provision && !regenerated;
    let mut detail = if args.keep_host_keys {
        "kept (--keep-host-keys)".to_owned()
    } else if !need {
        "regenerated by an earlier provision".to_owned()
    } else {
        "regenerated".to_owned()
    };
    if need && !dry {
        regenerate_host_keys(&robot, &args.hostname, &known_file, &host, port).await?;
    }
    if (need || regenerated) && !dry {
        // Only the robot's current keys stay in known_hosts (also finishing a run killed
        // between installing the new keys and forgetting the old ones).
        let current = robot_host_keys(&robot).await?;
        verify_key_login(&target, &opts, &key, &addr).await?;
        let dropped = known_hosts::forget_other_keys(&known_file, &host, port, &current)?;
        if dropped > 0 && !need {
            detail = format!(
                "forgot {dropped} old host key(s) in {}",
                known_file.display()
            );
        }
    }
    steps.done("host-keys", need, detail);

    // password logins
    steps.start("ssh-password-login", "password SSH login off");
    let effective = robot
        .root_ok(
            "ssh-password-login",
            "sshd -T 2>&1 | grep -Ei '^(passwordauthentication|kbdinteractiveauthentication|challengeresponseauthentication) ' || true",
            &[],
        )
        .await?;
    let on = effective
        .lines()
        .any(|l| l.trim().to_lowercase().ends_with(" yes"));
    if effective.trim().is_empty() {
        return Err(robot.fail(
            "ssh-password-login",
            "`sshd -T` printed no authentication settings",
        ));
    }
    if on && !dry {
        if !key_installed {
            unreachable!("the key is installed unless this is a dry run");
        }
        disable_password_login(&robot).await?;
        if let Err(e) = verify_key_login(&target, &opts, &key, &addr).await {
            let _ = robot.root(&revert_password_login(), &[]).await;
            return Err(e);
        }
    }
    if first_provision && !on && !dry {
        // The drop-in may be on disk from a run killed before the reload: `sshd -T` reads the
        // files, the running sshd may not have.
        robot
            .root_ok("ssh-password-login", RELOAD_SSHD, &[])
            .await?;
    }
    steps.done(
        "ssh-password-login",
        on,
        "sshd: PasswordAuthentication no, ChallengeResponseAuthentication no",
    );

    // the shared key
    steps.start("shared-key", "remove DT2018key");
    let blob = DT2018_KEY.split_whitespace().nth(1).unwrap_or_default();
    let files_glob = format!(
        "for f in /root/.ssh/authorized_keys /root/.ssh/authorized_keys2 /home/*/.ssh/authorized_keys /home/*/.ssh/authorized_keys2 \"{home_of}/.ssh/authorized_keys\"; do [ -f \"$f\" ] && echo \"$f\"; done | sort -u"
    );
    let found = robot
        .root_ok(
            "shared-key",
            &format!(
                "{files_glob} | while read -r f; do grep -lF {b} \"$f\" || true; done",
                b = sh_quote(blob)
            ),
            &[],
        )
        .await?;
    let holders: Vec<String> = found
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    let need = !holders.is_empty();
    if need && !dry {
        if key.blob == blob {
            bail!(
                "refusing to install DT2018key as your key: it is the key every Duckiebot image shares"
            );
        }
        robot
            .root_ok(
                "shared-key",
                &format!(
                    "{files_glob} | while read -r f; do \
                     if grep -qF {b} \"$f\"; then \
                       tmp=$(mktemp \"$f.XXXXXX\"); awk -v b={b} '{{for(i=1;i<=NF;i++) if($i==b) next}} {{print}}' \"$f\" > \"$tmp\"; \
                       chown --reference=\"$f\" \"$tmp\"; chmod --reference=\"$f\" \"$tmp\"; mv -f \"$tmp\" \"$f\"; \
                     fi; done",
                    b = sh_quote(blob)
                ),
                &[],
            )
            .await?;
        verify_key_login(&target, &opts, &key, &addr).await?;
    }
    steps.done(
        "shared-key",
        need,
        if need {
            format!("removed from {}", holders.join(", "))
        } else {
            "not present".into()
        },
    );

    // the login password
    steps.start("password-lock", &format!("lock {user}'s password"));
    let hash = robot
        .root_ok(
            "password-lock",
            &format!("getent shadow {u} | cut -d: -f2", u = sh_quote(&user)),
            &[],
        )
        .await?;
    let hash = hash.trim().to_owned();
    let locked = hash.starts_with('!') || hash.starts_with('*');
    let mut need = false;
    let detail;
    if uid == "0" {
        detail = "root: left as it is".to_owned();
    } else if matches!(root, Root::Password(_)) {
        detail = format!("kept: {user} needs it for sudo (the robot has no NOPASSWD rule)");
        notes.push(format!(
            "{user}'s password was kept because sudo needs it on this robot; SSH no longer accepts it"
        ));
    } else if locked {
        detail = "no usable password".to_owned();
    } else {
        need = true;
        detail = "set to `*`: no password matches; key logins and sudo go on".to_owned();
        if !dry {
            // `*`, not `passwd -l`'s `!`: sshd without PAM refuses even key logins to a
            // `!`-locked account.
            robot
                .root_ok(
                    "password-lock",
                    &format!("usermod -p '*' {}", sh_quote(&user)),
                    &[],
                )
                .await?;
            if let Err(e) = verify_key_login(&target, &opts, &key, &addr).await {
                let _ = robot
                    .root(
                        &format!("usermod -p {} {}", sh_quote(&hash), sh_quote(&user)),
                        &[],
                    )
                    .await;
                return Err(e);
            }
        }
    }
    steps.done("password-lock", need, detail);

    // Docker's TCP API
    steps.start("docker-tcp", "Docker API on TCP off");
    let tcp_files = robot
        .root_ok(
            "docker-tcp",
            "for f in /etc/systemd/system/docker.service.d/*.conf /etc/default/docker; do \
             [ -f \"$f\" ] && grep -lE '(-H|--host)(=|[[:space:]]+)tcp://' \"$f\" || true; done",
            &[],
        )
        .await?;
    let tcp_files: Vec<String> = tcp_files
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    let json_tcp = robot
        .root_ok(
            "docker-tcp",
            "grep -l 'tcp://' /etc/docker/daemon.json 2>/dev/null || true",
            &[],
        )
        .await?;
    if !json_tcp.trim().is_empty() {
        notes.push(format!(
            "/etc/docker/daemon.json on `{addr}` lists a tcp:// host; remove it by hand and restart docker"
        ));
    }
    // A run killed between the edit and the restart left docker listening: while the robot is
    // not provisioned yet, a listener on 2375 is reason enough to restart it.
    let listening = first_provision && docker_tcp_listening(&robot).await?;
    let need = !tcp_files.is_empty() || listening;
    if need && !dry {
        let quoted: Vec<String> = tcp_files.iter().map(|f| sh_quote(f)).collect();
        let edit = if quoted.is_empty() {
            String::new()
        } else {
            format!(
                "sed -E -i 's#[[:space:]]+(-H|--host)(=|[[:space:]]+)tcp://[^[:space:]\"]*##g' {}; ",
                quoted.join(" ")
            )
        };
        let restarted = robot
            .root_ok(
                "docker-tcp",
                &format!(
                    "{edit}if [ -d /run/systemd/system ]; then systemctl daemon-reload; \
                       if systemctl -q is-active docker; then systemctl restart docker; fi; echo restarted; fi"
                ),
                &[],
            )
            .await?;
        if restarted.trim() != "restarted" {
            notes.push("systemd is not running: docker listens on TCP until it restarts".into());
        } else if docker_tcp_listening(&robot).await? {
            return Err(robot.fail(
                "docker-tcp",
                format!(
                    "something still listens on TCP {DOCKER_TCP_PORT} after docker was restarted without its tcp:// host; check /etc/docker/daemon.json and docker.service"
                ),
            ));
        }
    }
    steps.done(
        "docker-tcp",
        need,
        if need {
            format!("removed -H tcp://… from {}", tcp_files.join(", "))
        } else {
            "not listening on TCP".into()
        },
    );

    // ---- hostname. After hardening: renaming restarts avahi, and the re-logins that prove
    // the key still works may be going to the old NAME.local.
    steps.start("hostname", &format!("hostname {}", args.hostname));
    let name = sh_quote(&args.hostname);
    let state = robot
        .root_ok(
            "hostname",
            &format!(
                "[ \"$(cat /etc/hostname 2>/dev/null)\" = {name} ] && echo file; \
                 [ \"$(hostname)\" = {name} ] && echo kernel; \
                 grep -Eq \"^127\\.0\\.1\\.1[[:space:]]+\"{name}\"([[:space:]]|\\$)\" /etc/hosts 2>/dev/null && echo hosts; true"
            ),
            &[],
        )
        .await?;
    let need = !(state.contains("file") && state.contains("kernel") && state.contains("hosts"));
    if need && !dry {
        // /etc/hostname and /etc/hosts are written in place, not renamed over: in a container
        // they are bind mounts.
        robot
            .root_ok(
                "hostname",
                &format!(
                    "tmp=$(mktemp); trap 'rm -f \"$tmp\"' EXIT; \
                     o=$(cat /etc/hostname 2>/dev/null || true); [ -n \"$o\" ] || o=$(hostname); \
                     awk -v n={name} -v o=\"$o\" '{HOSTS_AWK}' /etc/hosts > \"$tmp\"; \
                     cat \"$tmp\" > /etc/hosts; printf '%s\\n' {name} > /etc/hostname; hostname {name}; \
                     if [ -d /run/systemd/system ] && systemctl -q is-active avahi-daemon 2>/dev/null; then systemctl restart avahi-daemon; fi"
                ),
                &[],
            )
            .await?;
    }
    steps.done("hostname", need, args.hostname.clone());

    // ---- the agent's service
    steps.start("systemd-unit", UNIT_PATH);
    let unit = systemd_unit();
    let need = robot
        .file_differs("systemd-unit", UNIT_PATH, unit.as_bytes(), "644")
        .await?;
    if need && !dry {
        robot
            .write_file("systemd-unit", UNIT_PATH, unit.as_bytes(), "644", None)
            .await?;
    }
    steps.done(
        "systemd-unit",
        need,
        "dt-agent.service runs `dt-agent daemon`",
    );

    steps.start("agent-service", "enable and start dt-agent.service");
    let restart = [
        "agent",
        "robot-yaml",
        "hostname",
        "systemd-unit",
        "host-keys",
    ]
    .iter()
    .any(|s| steps.changed(s))
        // A run killed after replacing the agent or unit but before the restart.
        || first_provision;
    let state = robot
        .root_ok(
            "agent-service",
            "if [ -d /run/systemd/system ]; then echo systemd; \
               systemctl -q is-enabled dt-agent.service 2>/dev/null && echo enabled; \
               systemctl -q is-active dt-agent.service 2>/dev/null && echo active; \
             else [ -L /etc/systemd/system/multi-user.target.wants/dt-agent.service ] && echo enabled; fi; true",
            &[],
        )
        .await?;
    let systemd = state.contains("systemd");
    let enabled = state.contains("enabled");
    let active = state.contains("active");
    let need = !enabled || (systemd && (!active || restart));
    if need && !dry {
        if systemd {
            robot
                .root_ok(
                    "agent-service",
                    "systemctl daemon-reload; systemctl enable dt-agent.service >&2; systemctl restart dt-agent.service",
                    &[],
                )
                .await?;
            wait_for_daemon(&robot).await?;
        } else {
            // Without a running systemd (a container), `systemctl enable` cannot be asked;
            // the symlink it would make is made here and the unit starts at the next boot.
            robot
                .root_ok(
                    "agent-service",
                    "mkdir -p /etc/systemd/system/multi-user.target.wants; \
                     ln -sfn /etc/systemd/system/dt-agent.service /etc/systemd/system/multi-user.target.wants/dt-agent.service",
                    &[],
                )
                .await?;
        }
    }
    if !systemd {
        notes.push(format!(
            "systemd is not running on `{addr}`: dt-agent.service is enabled for the next boot, not started"
        ));
    }
    steps.done(
        "agent-service",
        need,
        match (systemd, restart) {
            (false, _) => "enabled (systemd not running: starts at boot)".to_owned(),
            (true, true) => "enabled, restarted".to_owned(),
            (true, false) => "enabled, running".to_owned(),
        },
    );

    // ---- preload
    if !args.preload.is_empty() {
        steps.start("preload", "ship images");
        let sent = if dry {
            0
        } else {
            preload(&session, &root, &args.preload, reporter).await?
        };
        steps.done(
            "preload",
            sent > 0 || dry,
            format!("{}; {sent} object(s) sent", args.preload.join(", ")),
        );
    }

    // ---- marker
    steps.start("marker", MARKER_PATH);
    let marker = serde_json::to_string_pretty(&Marker {
        provisioned_by: format!("dts {}", env!("CARGO_PKG_VERSION")),
        hostname: &args.hostname,
        configuration: &profile.configuration,
        user: &user,
        arch: arch.as_str(),
        agent_sha256: &agent.sha256,
    })
    .expect("the marker serialises")
        + "\n";
    let need = marker_before != marker;
    if need && !dry {
        robot
            .write_file("marker", MARKER_PATH, marker.as_bytes(), "644", None)
            .await?;
    }
    steps.done("marker", need, "provisioned.json");

    let fingerprint = if dry {
        None
    } else {
        robot_host_keys(&robot)
            .await?
            .iter()
            .find(|k| k.algorithm().as_str() == "ssh-ed25519")
            .map(known_hosts::fingerprint)
    };
    let _ = session.close().await;
    let changed: Vec<String> = steps
        .list
        .iter()
        .filter(|s| s.changed)
        .map(|s| s.step.clone())
        .collect();
    Ok(ProvisionReport {
        robot: args.robot.clone(),
        address: addr,
        arch: arch.to_string(),
        os,
        already_provisioned: !first_provision && changed.is_empty(),
        changed,
        steps: steps.list,
        dry_run: dry,
        host_key_fingerprint: fingerprint,
        notes,
    })
}

/// Whether the login user may run `sudo -n dt-agent serve --stdio` (as `dts` does) without a
/// password. The agent answers a closed stdin by ending; only sudo's refusal says `sudo:`.
async fn sudo_serve_works(session: &Session) -> Result<bool> {
    let out = session
        .run(&format!(
            "LC_ALL=C sudo -n {AGENT_PATH} serve --stdio </dev/null 2>&1 >/dev/null | grep -c '^sudo:' || true"
        ))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `host` of a `host:port` / `[v6]:port` address.
fn target_host(addr: &str) -> String {
    let (h, _) = addr.rsplit_once(':').unwrap_or((addr, ""));
    h.trim_start_matches('[').trim_end_matches(']').to_owned()
}

fn target_port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(22)
}

/// The robot's host public keys (`/etc/ssh/ssh_host_*_key.pub`).
async fn robot_host_keys(robot: &Robot<'_>) -> Result<Vec<PublicKey>> {
    let text = robot
        .root_ok(
            "host-keys",
            "cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null || true",
            &[],
        )
        .await?;
    let mut keys = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        if let (Some(t), Some(b)) = (f.next(), f.next())
            && let Ok(k) = PublicKey::from_openssh(&format!("{t} {b}"))
        {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// Host keys made on the robot (`ssh-keygen`, as `ssh-keygen -A` makes them) in a staging
/// directory, recorded in known_hosts next to the old ones, checked with `sshd -t -h`, then
/// each renamed over its old file (sshd has a key at every moment a crash or power cut could
/// pick), other old key types removed last, sshd reloaded; a run killed anywhere in between
/// leaves a robot whose key known_hosts accepts.
async fn regenerate_host_keys(
    robot: &Robot<'_>,
    hostname: &str,
    known_file: &Path,
    host: &str,
    port: u16,
) -> Result<()> {
    let staging = "/etc/ssh/.dts-new-host-keys";
    let pubs = robot
        .root_ok(
            "host-keys",
            &format!(
                "d={staging}; rm -rf \"$d\"; mkdir -m 700 \"$d\"; \
                 for t in rsa ecdsa ed25519; do ssh-keygen -q -t $t -N '' -C root@{h} -f \"$d/ssh_host_${{t}}_key\" </dev/null >&2; done; \
                 cat \"$d\"/*.pub",
                h = sh_quote(hostname)
            ),
            &[],
        )
        .await?;
    let mut new_keys = Vec::new();
    for line in pubs.lines().filter(|l| !l.trim().is_empty()) {
        let k = PublicKey::from_openssh(line.trim()).map_err(|e| {
            robot.fail(
                "host-keys",
                format!("ssh-keygen made an unreadable key: {e}"),
            )
        })?;
        new_keys.push(k);
    }
    if new_keys.is_empty() {
        return Err(robot.fail("host-keys", "ssh-keygen made no keys"));
    }
    for k in &new_keys {
        known_hosts::append(known_file, host, port, k)?;
    }
    robot
        .root_ok(
            "host-keys",
            &format!(
                "d={staging}; mkdir -p /etc/dt-agent; \
                 sshd -t -h \"$d/ssh_host_rsa_key\" -h \"$d/ssh_host_ecdsa_key\" -h \"$d/ssh_host_ed25519_key\" >&2; \
                 for f in \"$d\"/*; do mv -f \"$f\" /etc/ssh/; done; \
                 for f in /etc/ssh/ssh_host_*; do case \"${{f##*/}}\" in ssh_host_rsa_key*|ssh_host_ecdsa_key*|ssh_host_ed25519_key*) ;; *_key|*_key.pub) rm -f \"$f\";; esac; done; \
                 rmdir \"$d\"; sync; sshd -t >&2; date -u +%Y-%m-%dT%H:%M:%SZ > {HOST_KEYS_RECORD}; {reload}",
                reload = RELOAD_SSHD
            ),
            &[],
        )
        .await?;
    Ok(())
}

/// Rewrites /etc/hosts for the new name `n`: one `127.0.1.1 n` line (Debian's convention), and
/// the old name `o` taken off the other loopback lines (Duckietown's dt-init writes
/// `127.0.0.1 NAME NAME.local`), a line left with nothing but its address dropped.
const HOSTS_AWK: &str = "/^127\\.0\\.1\\.1[ \\t]/ { if (!d) { print \"127.0.1.1\\t\" n; d = 1 }; next } \
/^127\\./ && o != \"\" && o != \"localhost\" && o != n { l = $1; for (i = 2; i <= NF; i++) if ($i != o && $i != o \".local\") l = l \"\\t\" $i; if (l != $1) print l; next } \
{ print } END { if (!d) print \"127.0.1.1\\t\" n }";

/// Docker's unauthenticated API port on Duckiebot images.
const DOCKER_TCP_PORT: u16 = 2375;

/// Whether anything listens on [`DOCKER_TCP_PORT`] (from /proc: `ss` may be missing).
async fn docker_tcp_listening(robot: &Robot<'_>) -> Result<bool> {
    let out = robot
        .root_ok(
            "docker-tcp",
            &format!(
                "awk '$2 ~ /:{DOCKER_TCP_PORT:04X}$/ && $4 == \"0A\" {{ f = 1 }} END {{ if (f) print \"listening\" }}' /proc/net/tcp /proc/net/tcp6 2>/dev/null; true"
            ),
            &[],
        )
        .await?;
    Ok(out.contains("listening"))
}

/// Makes sshd re-read its configuration and host keys (existing sessions stay).
const RELOAD_SSHD: &str = "if [ -d /run/systemd/system ]; then systemctl reload ssh 2>/dev/null || systemctl reload sshd; \
     elif [ -s /run/sshd.pid ]; then kill -HUP \"$(cat /run/sshd.pid)\"; \
     elif [ -s /var/run/sshd.pid ]; then kill -HUP \"$(cat /var/run/sshd.pid)\"; \
     else echo 'cannot find sshd to reload (no systemd, no /run/sshd.pid)' >&2; exit 1; fi";

/// Turns password logins off: a drop-in where sshd_config includes `sshd_config.d`, else an
/// edit of sshd_config itself (old lines commented out, ours first); `sshd -t` validates before
/// sshd is reloaded.
async fn disable_password_login(robot: &Robot<'_>) -> Result<()> {
    let settings = sh_quote(SSHD_SETTINGS);
    robot
        .root_ok(
            "ssh-password-login",
            &format!(
                "c=/etc/ssh/sshd_config; \
                 if grep -Eiq '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\\.d/' \"$c\"; then \
                   mkdir -p /etc/ssh/sshd_config.d; printf '%s' {settings} > {SSHD_DROPIN}.dts-new; \
                   chmod 644 {SSHD_DROPIN}.dts-new; mv -f {SSHD_DROPIN}.dts-new {SSHD_DROPIN}; \
                   sshd -t >&2 || {{ rm -f {SSHD_DROPIN}; echo 'sshd -t refused the drop-in; removed it' >&2; exit 1; }}; \
                 else \
                   [ -f \"$c.dts-orig\" ] || cp -p \"$c\" \"$c.dts-orig\"; \
                   {{ printf '%s' {settings}; \
                      sed -E 's/^([[:space:]]*(PasswordAuthentication|ChallengeResponseAuthentication|KbdInteractiveAuthentication)[[:space:]])/# dts: \\1/I' \"$c\"; }} > \"$c.dts-new\"; \
                   chmod 644 \"$c.dts-new\"; sshd -t -f \"$c.dts-new\" >&2; mv -f \"$c.dts-new\" \"$c\"; \
                 fi; {RELOAD_SSHD}"
            ),
            &[],
        )
        .await
        .map(|_| ())
}

/// Undoes [`disable_password_login`] (used when key login then fails).
fn revert_password_login() -> String {
    format!(
        "{PRELUDE} rm -f {SSHD_DROPIN}; c=/etc/ssh/sshd_config; \
         if [ -f \"$c.dts-orig\" ]; then mv -f \"$c.dts-orig\" \"$c\"; fi; {RELOAD_SSHD}"
    )
}

/// Waits until the daemon's control socket exists.
async fn wait_for_daemon(robot: &Robot<'_>) -> Result<()> {
    let sock = format!(
        "{}/{}",
        crate::agent::DEFAULT_ROOT,
        crate::agent::daemon::SOCKET
    );
    let deadline = tokio::time::Instant::now() + DAEMON_START;
    loop {
        let out = robot
            .root_ok(
                "agent-service",
                &format!(
                    "[ -S {sock} ] && systemctl -q is-active dt-agent.service && echo up || true"
                ),
                &[],
            )
            .await?;
        if out.trim() == "up" {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let log = robot
                .root(
                    "journalctl -u dt-agent.service -n 20 --no-pager 2>&1 || true",
                    &[],
                )
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            return Err(robot.fail(
                "agent-service",
                format!(
                    "dt-agent.service did not open {sock} within {}s; its log:\n{log}",
                    DAEMON_START.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Ships `images` over `dt-agent serve --stdio` (the deploy transfer); returns objects sent.
async fn preload(
    session: &Session,
    root: &Root,
    images: &[String],
    reporter: &dyn Reporter,
) -> Result<u64> {
    let store = super::image::open_store()?;
    // The sudoers drop-in lets the login user run exactly this without a password.
    let command = match root {
        Root::Already => format!("{AGENT_PATH} serve --stdio"),
        _ => format!("sudo -n {AGENT_PATH} serve --stdio"),
    };
    let channel = session
        .exec(&command)
        .await
        .with_context(|| format!("starting `{command}`"))?;
    let (mut conn, hello) = crate::wire::client::Connection::open(channel)
        .await
        .with_context(|| format!("`{command}` did not answer"))?;
    let mut list = Vec::new();
    for name in images {
        let record =
            super::image::find(&store, name).with_context(|| format!("--preload `{name}`"))?;
        let img = store.resolve_platform(name, &record.descriptor, Some(&hello.platform))?;
        list.push((name.clone(), img.descriptor.digest.clone()));
    }
    let report = conn.transfer(&store, &list, reporter).await?;
    conn.close().await?;
    Ok(report.objects_sent)
}

#[cfg(test)]
mod tests {
    use super::*;

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
