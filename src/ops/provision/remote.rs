//! The provisioning session's reach into the robot: becoming root there ([`Robot`]), the
//! user's key and the logins that prove it ([`user_key`], [`verify_key_login`]), and the
//! multi-command operations a step applies (new host keys, sshd's password settings, waiting
//! for the daemon, shipping preloaded images). Owns no step order: that is [`super::steps`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use russh::keys::PublicKey;

use super::{
    AGENT_PATH, DAEMON_START, HOST_KEYS_RECORD, PRELUDE, ProvisionError, RELOGIN_PAUSE,
    RELOGIN_TRIES, SSHD_DROPIN, SSHD_SETTINGS, sh_quote, sha256_hex,
};
use crate::progress::Reporter;
use crate::ssh::{Output, Session, SshOptions, Target, known_hosts};

/// How the login user becomes root on the robot.
#[derive(Clone)]
pub(super) enum Root {
    /// It is root.
    Already,
    /// `sudo -n` works (the Duckietown image's `NOPASSWD:ALL`).
    NoPassword,
    /// `sudo -S` with this password on stdin.
    Password(String),
}

/// The user's key pair: installed on the robot, then used for every login that verifies it.
#[derive(Clone, Debug)]
pub(super) struct UserKey {
    pub(super) private: PathBuf,
    pub(super) public_line: String,
    pub(super) blob: String,
}

/// One SSH session to the robot, and how to become root in it.
pub(super) struct Robot<'a> {
    pub(super) session: &'a Session,
    pub(super) root: Root,
    pub(super) addr: String,
}

impl Robot<'_> {
    pub(super) fn fail(&self, step: &'static str, message: impl Into<String>) -> anyhow::Error {
        ProvisionError::Step {
            addr: self.addr.clone(),
            step,
            message: message.into(),
        }
        .into()
    }

    /// Runs `script` as root with `input` on its stdin.
    pub(super) async fn root(&self, script: &str, input: &[u8]) -> Result<Output> {
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
    pub(super) async fn root_ok(
        &self,
        step: &'static str,
        script: &str,
        input: &[u8],
    ) -> Result<String> {
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
    pub(super) async fn file_state(
        &self,
        step: &'static str,
        path: &str,
    ) -> Result<Option<(String, String)>> {
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
    pub(super) async fn file_differs(
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
    pub(super) async fn write_file(
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

/// with both halves, else `$DTS_HOME/robot_key`, made with ssh-keygen when missing.
pub(super) fn user_key(
    identity: Option<&Path>,
    ssh_dir: &Path,
    dts_home: &Path,
) -> Result<UserKey> {
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
pub(super) fn key_only(opts: &SshOptions, key: &Path) -> SshOptions {
    let mut o = opts.clone();
    o.password = None;
    o.identities = vec![key.to_owned()];
    o.identities_only = true;
    o.default_identities = false;
    o.accept_new_host_key = false;
    o
}

/// Logs in again with only the user's key and runs `true`; retried while sshd restarts.
pub(super) async fn verify_key_login(
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

/// How long `sudo -n dt-agent serve --stdio` may take to say hello (an arm64 agent under
/// emulation, a slow SD card).
const SERVE_HELLO: Duration = Duration::from_secs(60);

/// Whether the login user may run `sudo -n dt-agent serve --stdio` (as `dts` does) without a
/// password: `Ok(())` once the agent's hello came back over it, else what went wrong, with
/// sudo's own words. Judged by that positive answer alone, never by what sudo prints: sudo
/// warns on healthy robots (`sudo: unable to resolve host …` when the hostname is not in
/// /etc/hosts, lecture banners, `sudo: setrlimit …` in containers).
pub(super) async fn sudo_serve_works(session: &Session) -> Result<Result<(), String>> {
    let command = format!("sudo -n {AGENT_PATH} serve --stdio");
    let mut channel = session.exec(&command).await?;
    let opened = tokio::time::timeout(
        SERVE_HELLO,
        crate::wire::client::Connection::open(&mut channel),
    )
    .await;
    let failed = match opened {
        Ok(Ok((conn, _hello))) => {
            let closed = conn.close().await;
            // The agent ends on the goodbye; its exit status is not the answer, the hello was.
            let _ = tokio::time::timeout(SERVE_HELLO, channel.wait()).await;
            return Ok(closed.map_err(|e| format!("`{command}`: {e}")));
        }
        Ok(Err(e)) => e.to_string(),
        // Not waited for: the command may never end.
        Err(_) => {
            return Ok(Err(format!(
                "`{command}` did not say hello within {}s",
                SERVE_HELLO.as_secs()
            )));
        }
    };
    let said = match tokio::time::timeout(SERVE_HELLO, channel.wait()).await {
        Ok(Ok(exit)) => {
            let err = String::from_utf8_lossy(&exit.stderr);
            format!(
                "{}{}",
                exit.status,
                if err.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", err.trim())
                }
            )
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "it did not end".to_owned(),
    };
    Ok(Err(format!("`{command}` gave no hello ({failed}); {said}")))
}

/// `host` of a `host:port` / `[v6]:port` address.
pub(super) fn target_host(addr: &str) -> String {
    let (h, _) = addr.rsplit_once(':').unwrap_or((addr, ""));
    h.trim_start_matches('[').trim_end_matches(']').to_owned()
}

pub(super) fn target_port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(22)
}

/// The robot's host public keys (`/etc/ssh/ssh_host_*_key.pub`).
pub(super) async fn robot_host_keys(robot: &Robot<'_>) -> Result<Vec<PublicKey>> {
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
pub(super) async fn regenerate_host_keys(
    robot: &Robot<'_>,
    hostname: &str,
    known_file: &Path,
    names: &[String],
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
    for name in names {
        for k in &new_keys {
            known_hosts::append(known_file, name, port, k)?;
        }
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
pub(super) const HOSTS_AWK: &str = "/^127\\.0\\.1\\.1[ \\t]/ { if (!d) { print \"127.0.1.1\\t\" n; d = 1 }; next } \
/^127\\./ && o != \"\" && o != \"localhost\" && o != n { l = $1; for (i = 2; i <= NF; i++) if ($i != o && $i != o \".local\") l = l \"\\t\" $i; if (l != $1) print l; next } \
{ print } END { if (!d) print \"127.0.1.1\\t\" n }";

/// Docker's unauthenticated API port on Duckiebot images.
pub(super) const DOCKER_TCP_PORT: u16 = 2375;

/// Whether anything listens on [`DOCKER_TCP_PORT`] (from /proc: `ss` may be missing).
pub(super) async fn docker_tcp_listening(robot: &Robot<'_>) -> Result<bool> {
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
pub(super) const RELOAD_SSHD: &str = "if [ -d /run/systemd/system ]; then systemctl reload ssh 2>/dev/null || systemctl reload sshd; \
     elif [ -s /run/sshd.pid ]; then kill -HUP \"$(cat /run/sshd.pid)\"; \
     elif [ -s /var/run/sshd.pid ]; then kill -HUP \"$(cat /var/run/sshd.pid)\"; \
     else echo 'cannot find sshd to reload (no systemd, no /run/sshd.pid)' >&2; exit 1; fi";

/// Turns password logins off: a drop-in where sshd_config includes `sshd_config.d`, else an
/// edit of sshd_config itself (old lines commented out, ours first); `sshd -t` validates before
/// sshd is reloaded.
pub(super) async fn disable_password_login(robot: &Robot<'_>) -> Result<()> {
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
pub(super) fn revert_password_login() -> String {
    format!(
        "{PRELUDE} rm -f {SSHD_DROPIN}; c=/etc/ssh/sshd_config; \
         if [ -f \"$c.dts-orig\" ]; then mv -f \"$c.dts-orig\" \"$c\"; fi; {RELOAD_SSHD}"
    )
}

/// Waits until the daemon's control socket exists.
pub(super) async fn wait_for_daemon(robot: &Robot<'_>) -> Result<()> {
    let sock = format!(
        "{}/{}",
        crate::api::daemon::DEFAULT_ROOT,
        crate::api::daemon::SOCKET
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
pub(super) async fn preload(
    session: &Session,
    root: &Root,
    images: &[String],
    reporter: &dyn Reporter,
) -> Result<u64> {
    let store = crate::ops::image::open_store()?;
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
            crate::ops::image::find(&store, name).with_context(|| format!("--preload `{name}`"))?;
        let img = store.resolve_platform(name, &record.descriptor, Some(&hello.platform))?;
        list.push((name.clone(), img.descriptor.digest.clone()));
    }
    let report = conn.transfer(&store, &list, reporter).await?;
    conn.close().await?;
    Ok(report.objects_sent)
}
