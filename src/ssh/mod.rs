//! SSH to robots (laptop only): the russh client that reaches `dt-agent serve --stdio`, with
//! OpenSSH's `known_hosts` and the `~/.ssh/config` subset people use, and key, agent and
//! password authentication.
//!
//! Owns: turning a ROBOT argument ([`Target`]) plus [`SshOptions`] into an authenticated
//! [`Session`], pinning host keys (verified in russh's `check_server_key`, before any
//! authentication or channel byte), and exec channels whose stdin/stdout bytes are counted
//! ([`ByteCounters`]). Does not own: the framed protocol spoken over the channel (`transfer`),
//! what command to run (`ops`), printing (`cli`).
//!
//! ```text
//! Target + SshOptions ─► config::resolve ─► TCP (connect timeout) ─► kex ─► check_server_key
//!   (known_hosts: known → go on; unknown → refuse or --accept-new-host-key appends; changed,
//!    revoked → refuse) ─► auth: agent, identity files, default keys, password ─► Session
//! Session::exec ─► ExecChannel: AsyncWrite = remote stdin (shutdown = EOF),
//!                               AsyncRead = remote stdout, stderr collected or forwarded,
//!                               wait() = exit status
//! ```

pub mod config;
pub mod known_hosts;
mod pattern;
mod session;
pub mod target;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use known_hosts::Location;
pub use session::{
    ByteCounters, ExecChannel, ExecStdin, ExecStdout, Exit, ExitStatus, ExitWaiter, Output,
    PtyRequest, Session, Stderr, WindowChanger,
};
pub use target::Target;

/// How long to wait for TCP, key exchange and authentication together. Generous for a robot
/// on a busy lab WiFi, short enough that a powered-off robot fails while the user still waits.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Silence after which a keepalive is sent (a robot that drove out of WiFi range).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered keepalives after which the connection is declared lost (~30 s of silence).
pub const DEFAULT_KEEPALIVE_MAX: usize = 3;

/// How to reach robots: where the user's SSH files are and what the command line said.
#[derive(Clone)]
pub struct SshOptions {
    /// The local home directory (`~` and `%d` in the config).
    pub home: PathBuf,
    /// The user's SSH directory (`~/.ssh`): `config`, `known_hosts`, default keys.
    pub ssh_dir: PathBuf,
    /// The config file; `None` means `ssh_dir/config` (absent is fine).
    pub config_file: Option<PathBuf>,
    /// `-i/--identity` files, tried before the config's `IdentityFile`s.
    pub identities: Vec<PathBuf>,
    /// Whether to try `id_ed25519`, `id_ecdsa`, `id_rsa` in `ssh_dir` after the others.
    pub default_identities: bool,
    /// The ssh-agent socket (`SSH_AUTH_SOCK`); `None`: no agent.
    pub agent_socket: Option<PathBuf>,
    /// `--known-hosts FILE`; `None` means `ssh_dir/known_hosts`. New keys are recorded here.
    pub known_hosts: Option<PathBuf>,
    /// Further `known_hosts` files, read but never written (`$DTS_HOME/known_hosts`, where
    /// `dts sim` records its robots).
    pub extra_known_hosts: Vec<PathBuf>,
    /// `--accept-new-host-key`: record an unknown host's key instead of refusing it.
    pub accept_new_host_key: bool,
    /// OpenSSH's `HostKeyAlias`: the name the host key is looked up and recorded under instead
    /// of the address connected to. A robot found by mDNS is filed under `NAME.local`, so its
    /// key stays pinned when DHCP gives it another address, and an answer pointing its name
    /// at another robot meets the wrong key. The config's `HostKeyAlias` beats this.
    pub host_key_alias: Option<String>,
    /// The ed25519 fingerprint (`SHA256:…`) the robot advertised over mDNS. Never a reason to
    /// trust a key, only to refuse one: an ed25519 key that differs is refused even when
    /// known_hosts would accept it.
    pub advertised_fingerprint: Option<String>,
    /// A password to try last (provisioning a fresh robot with `--password-stdin`).
    pub password: Option<String>,
    /// OpenSSH's `IdentitiesOnly`: only the `identities` are tried — the config's
    /// `IdentityFile`s are skipped and the agent may only sign with the same keys. Provisioning
    /// uses it to prove that the user's own key logs in before passwords are turned off.
    pub identities_only: bool,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// See [`DEFAULT_KEEPALIVE_MAX`].
    pub keepalive_max: usize,
}

impl std::fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so a password never reaches a log line.
        f.debug_struct("SshOptions")
            .field("ssh_dir", &self.ssh_dir)
            .field("config_file", &self.config_file)
            .field("identities", &self.identities)
            .field("default_identities", &self.default_identities)
            .field("agent_socket", &self.agent_socket)
            .field("known_hosts", &self.known_hosts)
            .field("extra_known_hosts", &self.extra_known_hosts)
            .field("accept_new_host_key", &self.accept_new_host_key)
            .field("host_key_alias", &self.host_key_alias)
            .field("advertised_fingerprint", &self.advertised_fingerprint)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl SshOptions {
    /// Options for a user whose home is `home`, touching nothing of the environment: no agent,
    /// no extra `known_hosts`. Tests start here.
    pub fn with_home(home: &Path) -> SshOptions {
        SshOptions {
            home: home.to_owned(),
            ssh_dir: home.join(".ssh"),
            config_file: None,
            identities: Vec::new(),
            default_identities: true,
            agent_socket: None,
            known_hosts: None,
            extra_known_hosts: Vec::new(),
            accept_new_host_key: false,
            host_key_alias: None,
            advertised_fingerprint: None,
            password: None,
            identities_only: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_max: DEFAULT_KEEPALIVE_MAX,
        }
    }

    /// The usual options: `$HOME`, `$SSH_AUTH_SOCK`, and `dts_home/known_hosts` read besides
    /// the user's own (the caller passes `paths::dts_home()`: this module does not look upward).
    pub fn from_env(dts_home: &Path) -> SshOptions {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        let mut o = SshOptions::with_home(&home);
        o.agent_socket = std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        o.extra_known_hosts = vec![dts_home.join("known_hosts")];
        o
    }

    /// The `known_hosts` file new keys go to: `--known-hosts`, else `~/.ssh/known_hosts`.
    pub fn user_known_hosts(&self) -> PathBuf {
        self.known_hosts
            .clone()
            .unwrap_or_else(|| self.ssh_dir.join("known_hosts"))
    }

    /// Every `known_hosts` file read, the user's first.
    pub fn known_hosts_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.user_known_hosts()];
        v.extend(self.extra_known_hosts.iter().cloned());
        v
    }

    /// The config file read: [`Self::config_file`] or `ssh_dir/config`.
    pub fn config_path(&self) -> PathBuf {
        self.config_file
            .clone()
            .unwrap_or_else(|| self.ssh_dir.join("config"))
    }
}

fn list(locs: &[Location]) -> String {
    locs.iter()
        .map(|l| format!("`{l}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn config_at(path: &Path, line: usize) -> String {
    if line == 0 {
        format!("`{}`", path.display())
    } else {
        format!("`{}:{line}`", path.display())
    }
}

/// Why reaching a robot failed. Variants are what callers branch on (a refused host key is a
/// different answer from an unreachable robot); each names the host:port and, where there is
/// one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The ROBOT argument is not `[user@]host[:port]`.
    #[error("bad robot address `{input}`: {reason}; expected `[user@]host[:port]`")]
    BadTarget {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `~/.ssh/config` (or an included file) could not be read or understood.
    #[error("ssh config {}: {message}", config_at(.path, *.line))]
    Config {
        /// The file.
        path: PathBuf,
        /// 1-based line, 0 when not about one line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A `known_hosts` file could not be read or written.
    #[error("cannot {action} known_hosts file `{}`: {source}", path.display())]
    KnownHostsIo {
        /// `read`, `open`, `append to`…
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The robot's host key is in no `known_hosts` file.
    #[error(
        "host key of `{addr}` is not known: {key_type} key {fingerprint}; if that is the robot's \
         key (on the robot: `ssh-keygen -lf /etc/ssh/ssh_host_{key_type_short}_key.pub`), pass \
         `--accept-new-host-key` to record it in `{}`",
        record_in.display()
    )]
    UnknownHostKey {
        /// `host:port`.
        addr: String,
        /// e.g. `ssh-ed25519`.
        key_type: String,
        /// The short type as in host key file names, e.g. `ed25519`.
        key_type_short: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// Where `--accept-new-host-key` would record it.
        record_in: PathBuf,
    },
    /// The robot presents a different key from the one recorded: a re-flashed SD card, or
    /// someone in the middle. Never accepted automatically.
    #[error(
        "host key of `{addr}` CHANGED: it now presents {key_type} key {fingerprint}, which differs \
         from the key recorded at {}; if the robot was re-flashed, delete that line (`ssh-keygen \
         -R '{lookup}'` does it) and connect with `--accept-new-host-key`; otherwise someone may \
         be intercepting the connection",
        list(.old)
    )]
    ChangedHostKey {
        /// `host:port`.
        addr: String,
        /// The name the entries are filed under (`host` or `[host]:port`).
        lookup: String,
        /// Type of the presented key.
        key_type: String,
        /// Fingerprint of the presented key.
        fingerprint: String,
        /// The entries recording other keys for this host.
        old: Vec<Location>,
    },
    /// The robot's ed25519 host key is not the one its mDNS advert names: another machine
    /// answering for its name or address. Refused whatever known_hosts says.
    #[error(
        "host key of `{addr}` is {fingerprint}, but the robot advertised {advertised} over mDNS: \
         another machine may be answering for it; refusing (check the key on the robot with \
         `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`, or connect by address)"
    )]
    AdvertisedKeyDiffers {
        /// `host:port` (with the name it is filed under).
        addr: String,
        /// Fingerprint of the presented key.
        fingerprint: String,
        /// Fingerprint heard in the advert.
        advertised: String,
    },
    /// The key is marked `@revoked`.
    #[error(
        "host key of `{addr}` ({fingerprint}) is revoked by `{entry}`; the robot needs new host \
         keys (re-provision it)"
    )]
    RevokedHostKey {
        /// `host:port`.
        addr: String,
        /// Fingerprint of the presented key.
        fingerprint: String,
        /// The `@revoked` line.
        entry: Location,
    },
    /// The host name did not resolve.
    #[error("cannot resolve `{addr}`: {source}")]
    Resolve {
        /// `host:port`.
        addr: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// TCP connect failed (robot off, wrong address, no sshd).
    #[error("cannot connect to `{addr}`: {source}; is the robot on and on this network?")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// Connecting, key exchange and authentication took longer than the connect timeout.
    #[error("connecting to `{addr}` timed out after {}s (while {stage})", after.as_secs())]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The timeout.
        after: Duration,
        /// What was under way.
        stage: &'static str,
    },
    /// Every authentication method was refused.
    #[error(
        "`{user}@{addr}` refused every authentication method; tried: {}; give a key the robot \
         accepts with `-i FILE`, add it to ssh-agent, or check the user name (and the password, if one was given)",
        if tried.is_empty() { "nothing (no agent, no key files, no password)".to_owned() }
        else { tried.join("; ") }
    )]
    Auth {
        /// `host:port`.
        addr: String,
        /// Login name.
        user: String,
        /// One line per method or key tried, with its outcome.
        tried: Vec<String>,
    },
    /// An identity file given with `-i` is missing or unreadable.
    #[error("identity file `{}`: {message}", path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The connection dropped (keepalives unanswered, robot rebooted…).
    #[error("connection to `{addr}` lost: {reason}")]
    Disconnected {
        /// `host:port`.
        addr: String,
        /// Why, as far as known.
        reason: String,
    },
    /// The server refused a channel or a command.
    #[error("`{addr}`: {message}")]
    Channel {
        /// `host:port`.
        addr: String,
        /// What was refused.
        message: String,
    },
    /// Any other SSH protocol failure.
    #[error("ssh to `{addr}`: {source}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// russh's error.
        source: russh::Error,
    },
}
