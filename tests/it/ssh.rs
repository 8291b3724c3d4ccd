//! The SSH layer (`dts::ssh`) against a real OpenSSH `sshd`, started per test on 127.0.0.1 with
//! a random port, its own host key, `authorized_keys` and config in a temp dir (nothing in
//! /etc is touched; `/run/sshd`, sshd's privilege-separation directory, is created if
//! missing). Needs root (sshd's privilege separation) and `sshd`, `ssh-keygen`; skips with a
//! reason otherwise. The client side never reads the real `~/.ssh` or `SSH_AUTH_SOCK`: every
//! test builds [`SshOptions::with_home`] on a temp home.
//!
//! Covered: host key pinning (unknown refused before authentication, accept-new records then
//! works, changed refused naming file:line, hashed entries, `[host]:port`, `@revoked`), key
//! file auth (ed25519 and RSA with SHA-2), ssh-agent auth, refused and encrypted keys, exec
//! (10 MB through `cat` with EOF, exit status and signals, stderr), `~/.ssh/config`
//! resolution, and the connect errors (refused, timeout) that need no sshd.

use crate::support;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dts::ssh::{ExitStatus, Session, SshError, SshOptions, Target};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ssh-keygen` a key pair at `path` (and `path.pub`), with an optional passphrase.
fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", "dts-test", "-f"])
        .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run_ok(&mut cmd);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `type base64` of a public key file (comment dropped).
fn key_line(pub_file: &Path) -> String {
    let text = read(pub_file);
    let mut f = text.split_whitespace();
    format!("{} {}", f.next().unwrap(), f.next().unwrap())
}

/// A real sshd on 127.0.0.1, killed on drop.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Sshd {
    /// `None` (after a SKIP line) when the machine cannot run one.
    fn start() -> Option<Sshd> {
        if !support::require_root("sshd needs root for privilege separation")
            || !support::require_cmd("sshd")
            || !support::require_cmd("ssh-keygen")
        {
            return None;
        }
        let sshd = support::find_cmd("sshd").unwrap();
        // sshd refuses to start without its privilege-separation directory; Debian makes it
        // at boot through systemd, which a container may not run.
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_ed25519"), "ed25519", "");
        keygen(&d.join("client"), "ed25519", "");
        keygen(&d.join("client_rsa"), "rsa", "");
        let mut auth = read(&d.join("client.pub"));
        auth.push_str(&read(&d.join("client_rsa.pub")));
        std::fs::write(d.join("authorized_keys"), auth).unwrap();
        std::fs::create_dir_all(d.join("home/.ssh")).unwrap();
        // A free port: the kernel picks one, we let it go and sshd takes it. Another process
        // could grab it in between; then sshd fails to bind and we try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nPidFile {d}/sshd.pid\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel VERBOSE\n",
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawning sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Sshd { dir, port, child });
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start; its log:\n{}",
            read(&dir.path().join("sshd.log"))
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn target(&self) -> Target {
        Target::parse(&format!("root@127.0.0.1:{}", self.port)).unwrap()
    }

    fn known_hosts(&self) -> PathBuf {
        self.path("home/.ssh/known_hosts")
    }

    /// The line `known_hosts` needs for this server.
    fn host_entry(&self) -> String {
        format!(
            "[127.0.0.1]:{} {}",
            self.port,
            key_line(&self.path("host_ed25519.pub"))
        )
    }

    /// Options on the temp home that trust this server and log in with the ed25519 key.
    fn options(&self) -> SshOptions {
        std::fs::write(self.known_hosts(), format!("{}\n", self.host_entry())).unwrap();
        let mut o = self.bare_options();
        o.identities = vec![self.path("client")];
        o
    }

    /// Options on the temp home with no key and whatever known_hosts the test wrote.
    fn bare_options(&self) -> SshOptions {
        let mut o = SshOptions::with_home(&self.path("home"));
        o.default_identities = false;
        o.connect_timeout = Duration::from_secs(15);
        o
    }

    fn log(&self) -> String {
        read(&self.path("sshd.log"))
    }

    /// `SHA256:…` of the host key, as ssh-keygen prints it.
    fn fingerprint(&self) -> String {
        let out = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.path("host_ed25519.pub")),
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(sshd: &Sshd, o: &SshOptions) -> Result<Session, SshError> {
    Session::connect(&sshd.target(), o).await
}

#[tokio::test]
async fn unknown_host_key_is_refused_before_authentication() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.bare_options();
    o.identities = vec![sshd.path("client")];
    let err = connect(&sshd, &o)
        .await
        .err()
        .expect("an unknown key must be refused");
    let SshError::UnknownHostKey {
        ref addr,
        ref fingerprint,
        ..
    } = err
    else {
        panic!("wanted UnknownHostKey, got {err:?}");
    };
    assert_eq!(addr, &format!("127.0.0.1:{}", sshd.port));
    assert_eq!(fingerprint, &sshd.fingerprint());
    let msg = err.to_string();
    assert!(msg.contains("--accept-new-host-key"), "{msg}");
    assert!(msg.contains(&sshd.fingerprint()), "{msg}");
    assert!(!sshd.known_hosts().exists(), "nothing may be recorded");
    // sshd saw no authentication attempt: we hung up during key exchange.
    std::thread::sleep(Duration::from_millis(200));
    let log = sshd.log();
    assert!(
        !log.contains("publickey") && !log.contains("Accepted") && !log.contains("Failed"),
        "sshd saw authentication:\n{log}"
    );
}

#[tokio::test]
async fn accept_new_records_the_key_and_then_it_is_known() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.bare_options();
    o.identities = vec![sshd.path("client")];
    // A file without a final newline: the new entry must still land on a line of its own.
    std::fs::write(sshd.known_hosts(), "# mine").unwrap();
    o.accept_new_host_key = true;
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(
        read(&sshd.known_hosts()),
        format!("# mine\n{}\n", sshd.host_entry())
    );
    // Now known without the flag, and nothing appended twice.
    o.accept_new_host_key = false;
    let s = connect(&sshd, &o).await.unwrap();
    let out = s.run("echo hi").await.unwrap();
    assert_eq!(out.stdout, b"hi\n");
    s.close().await.unwrap();
    assert_eq!(read(&sshd.known_hosts()).lines().count(), 2);
}

#[tokio::test]
async fn a_changed_key_is_refused_naming_the_old_entry() {
    let Some(sshd) = Sshd::start() else { return };
    keygen(&sshd.path("other"), "ed25519", "");
    let old = format!(
        "[127.0.0.1]:{} {}",
        sshd.port,
        key_line(&sshd.path("other.pub"))
    );
    std::fs::write(sshd.known_hosts(), format!("# robots\n{old}\n")).unwrap();
    let mut o = sshd.bare_options();
    o.identities = vec![sshd.path("client")];
    // Even with accept-new: a changed key is never accepted.
    o.accept_new_host_key = true;
    let err = connect(&sshd, &o).await.err().expect("refused");
    assert!(matches!(err, SshError::ChangedHostKey { .. }), "{err:?}");
    let msg = err.to_string();
    let at = format!("{}:2", sshd.known_hosts().display());
    assert!(msg.contains(&at), "{msg}");
    assert!(msg.contains(&sshd.fingerprint()), "{msg}");
    assert_eq!(read(&sshd.known_hosts()), format!("# robots\n{old}\n"));
}

/// A robot found by mDNS is pinned under `NAME.local` (`host_key_alias`): at an address
/// known_hosts has never seen (DHCP gave it another), its key is still known.
#[tokio::test]
async fn a_robot_pinned_by_name_is_known_at_a_new_address() {
    let Some(sshd) = Sshd::start() else { return };
    let entry = format!(
        "[bot.local]:{} {}",
        sshd.port,
        key_line(&sshd.path("host_ed25519.pub"))
    );
    std::fs::write(sshd.known_hosts(), format!("{entry}\n")).unwrap();
    let mut o = sshd.bare_options();
    o.identities = vec![sshd.path("client")];
    o.host_key_alias = Some("bot.local".into());
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(
        read(&sshd.known_hosts()),
        format!("{entry}\n"),
        "nothing recorded"
    );
    // The same name answering with another robot's key: refused, even with accept-new.
    keygen(&sshd.path("other"), "ed25519", "");
    let other = format!(
        "[bot.local]:{} {}",
        sshd.port,
        key_line(&sshd.path("other.pub"))
    );
    std::fs::write(sshd.known_hosts(), format!("{other}\n")).unwrap();
    o.accept_new_host_key = true;
    let err = connect(&sshd, &o).await.err().expect("refused");
    let SshError::ChangedHostKey { ref lookup, .. } = err else {
        panic!("wanted ChangedHostKey, got {err:?}");
    };
    assert_eq!(lookup, &format!("[bot.local]:{}", sshd.port));
    let msg = err.to_string();
    assert!(msg.contains("bot.local"), "{msg}");
    assert_eq!(read(&sshd.known_hosts()), format!("{other}\n"));
}

/// A known_hosts written before names were used vouches by address once, and the key is then
/// filed under the name too.
#[tokio::test]
async fn an_address_entry_files_the_key_under_the_name() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.options();
    o.host_key_alias = Some("bot.local".into());
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
    let text = read(&sshd.known_hosts());
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("[bot.local]:{} ssh-ed25519 ", sshd.port)),
        "{text}"
    );
    // Filed once: the next connection adds nothing.
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(read(&sshd.known_hosts()), text);
}

/// An ed25519 key that is not the one the robot advertised is refused, however known.
#[tokio::test]
async fn a_key_other_than_the_advertised_one_is_refused() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.options();
    keygen(&sshd.path("other"), "ed25519", "");
    let out = run_ok(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(sshd.path("other.pub")),
    );
    let other_fp = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    o.advertised_fingerprint = Some(other_fp.clone());
    let err = connect(&sshd, &o).await.err().expect("refused");
    let SshError::AdvertisedKeyDiffers {
        ref fingerprint,
        ref advertised,
        ..
    } = err
    else {
        panic!("wanted AdvertisedKeyDiffers, got {err:?}");
    };
    assert_eq!(fingerprint, &sshd.fingerprint());
    assert_eq!(advertised, &other_fp);
    // The advertised key itself: connects.
    o.advertised_fingerprint = Some(sshd.fingerprint());
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
}

#[tokio::test]
async fn hashed_entries_from_ssh_keygen_are_honoured() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.options();
    run_ok(
        Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(sshd.known_hosts()),
    );
    let text = read(&sshd.known_hosts());
    assert!(text.starts_with("|1|"), "not hashed: {text}");
    o.accept_new_host_key = false;
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_port_22_entry_does_not_vouch_for_another_port() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.bare_options();
    o.identities = vec![sshd.path("client")];
    let plain = format!("127.0.0.1 {}\n", key_line(&sshd.path("host_ed25519.pub")));
    std::fs::write(sshd.known_hosts(), &plain).unwrap();
    let err = connect(&sshd, &o).await.err().expect("refused");
    assert!(matches!(err, SshError::UnknownHostKey { .. }), "{err:?}");
    // The `[127.0.0.1]:PORT` form in a comma list, in an extra (read-only) file, is accepted.
    let extra = sshd.path("dts_known_hosts");
    std::fs::write(
        &extra,
        format!(
            "bot,[127.0.0.1]:{} {}\n",
            sshd.port,
            key_line(&sshd.path("host_ed25519.pub"))
        ),
    )
    .unwrap();
    o.extra_known_hosts = vec![extra];
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(
        read(&sshd.known_hosts()),
        plain,
        "the user's file is left alone"
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_even_when_also_listed() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.options();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(sshd.known_hosts())
        .unwrap();
    writeln!(f, "@revoked * {}", key_line(&sshd.path("host_ed25519.pub"))).unwrap();
    o.accept_new_host_key = true;
    let err = connect(&sshd, &o).await.err().expect("refused");
    let SshError::RevokedHostKey { ref entry, .. } = err else {
        panic!("wanted RevokedHostKey, got {err:?}");
    };
    assert_eq!(entry.line, 2);
}

#[tokio::test]
async fn key_file_auth_ed25519_and_rsa_sha2() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.options();
    let s = connect(&sshd, &o).await.unwrap();
    assert_eq!(s.run("whoami").await.unwrap().stdout, b"root\n");
    s.close().await.unwrap();
    o.identities = vec![sshd.path("client_rsa")];
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
    // sshd names the signature algorithm it accepted: SHA-2, never ssh-rsa (SHA-1).
    let log = sshd.log();
    assert!(
        log.contains("Accepted publickey for root") && log.contains("RSA SHA256:"),
        "{log}"
    );
}

#[tokio::test]
async fn default_key_files_are_found_in_the_ssh_dir() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.options();
    o.identities.clear();
    o.default_identities = true;
    // Only id_rsa exists: id_ed25519 and id_ecdsa are skipped quietly.
    std::fs::copy(sshd.path("client_rsa"), sshd.path("home/.ssh/id_rsa")).unwrap();
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
}

/// `ssh-agent -D` in the foreground (so it is our child to kill), with `keys` added.
struct Agent {
    child: Child,
    sock: PathBuf,
}

impl Agent {
    fn start(dir: &Path, keys: &[PathBuf]) -> Option<Agent> {
        if !support::require_cmd("ssh-agent") || !support::require_cmd("ssh-add") {
            return None;
        }
        let sock = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning ssh-agent");
        let agent = Agent { child, sock };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !agent.sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        for k in keys {
            run_ok(
                Command::new("ssh-add")
                    .arg("-q")
                    .arg(k)
                    .env("SSH_AUTH_SOCK", &agent.sock),
            );
        }
        Some(agent)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn agent_auth_and_encrypted_keys() {
    let Some(sshd) = Sshd::start() else { return };
    // A passphrase-protected copy of a key sshd accepts.
    keygen(&sshd.path("locked"), "ed25519", "secret words");
    let mut auth = read(&sshd.path("authorized_keys"));
    auth.push_str(&read(&sshd.path("locked.pub")));
    std::fs::write(sshd.path("authorized_keys"), auth).unwrap();

    // Without an agent the encrypted key cannot be used, and the error says what to do.
    let mut o = sshd.options();
    o.identities = vec![sshd.path("locked")];
    let err = connect(&sshd, &o).await.err().expect("no usable key");
    assert!(matches!(err, SshError::Auth { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("passphrase-protected") && msg.contains("ssh-add"),
        "{msg}"
    );

    // Through the agent (holding the RSA key: ssh-add cannot be fed a passphrase without a
    // terminal, and what is tested is the agent's signing, rsa-sha2 included).
    let Some(agent) = Agent::start(sshd.dir.path(), &[sshd.path("client_rsa")]) else {
        return;
    };
    o.agent_socket = Some(agent.sock.clone());
    o.identities.clear();
    let s = connect(&sshd, &o).await.unwrap();
    assert_eq!(s.run("true").await.unwrap().status, ExitStatus::Code(0));
    s.close().await.unwrap();
    assert!(sshd.log().contains("RSA SHA256:"), "{}", sshd.log());

    // IdentitiesOnly: with a key sshd does not know, the agent's (accepted) key is not offered,
    // so proving that one key logs in cannot be fooled by another key in the agent.
    keygen(&sshd.path("unknown"), "ed25519", "");
    o.identities = vec![sshd.path("unknown")];
    o.identities_only = true;
    let err = connect(&sshd, &o)
        .await
        .err()
        .expect("only the unknown key");
    assert!(matches!(err, SshError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("agent key"), "{err}");
    // …and the agent still signs for the identity when it holds it.
    o.identities = vec![sshd.path("client_rsa")];
    let s = connect(&sshd, &o).await.unwrap();
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_listing_what_was_tried() {
    let Some(sshd) = Sshd::start() else { return };
    keygen(&sshd.path("stranger"), "ed25519", "");
    let mut o = sshd.options();
    o.identities = vec![sshd.path("stranger")];
    o.password = Some("not-a-password".into());
    let err = connect(&sshd, &o).await.err().expect("refused");
    let SshError::Auth {
        ref tried,
        ref addr,
        ref user,
    } = err
    else {
        panic!("wanted Auth, got {err:?}");
    };
    assert_eq!(
        (addr.as_str(), user.as_str()),
        (format!("127.0.0.1:{}", sshd.port).as_str(), "root")
    );
    assert_eq!(tried.len(), 2, "{tried:?}");
    assert!(
        tried[0].contains("stranger") && tried[0].contains("refused"),
        "{tried:?}"
    );
    assert!(tried[1].starts_with("password"), "{tried:?}");
    // A missing -i file is named, not skipped.
    o.identities = vec![sshd.path("typo")];
    let err = connect(&sshd, &o).await.err().expect("refused");
    assert!(matches!(err, SshError::Identity { .. }), "{err:?}");
    assert!(err.to_string().contains("typo"), "{err}");
}

#[tokio::test]
async fn cat_round_trips_ten_megabytes_exactly() {
    let Some(sshd) = Sshd::start() else { return };
    let s = connect(&sshd, &sshd.options()).await.unwrap();
    // Incompressible-looking, position-dependent bytes: a dropped or repeated chunk shows.
    let mut data = vec![0u8; 10 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let ch = s.exec("cat").await.unwrap();
    let counters = ch.counters();
    let (mut stdin, mut stdout, waiter) = ch.into_parts();
    let input = data.clone();
    let writer = tokio::spawn(async move {
        // Odd-sized writes, so chunking is not aligned with SSH packets.
        for chunk in input.chunks(100_003) {
            stdin.write_all(chunk).await.unwrap();
        }
        stdin.shutdown().await.unwrap(); // EOF: `cat` ends
    });
    let mut got = Vec::with_capacity(data.len());
    stdout.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    let exit = waiter.wait().await.unwrap();
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    assert_eq!(counters.sent(), data.len() as u64);
    assert_eq!(counters.received(), data.len() as u64);
    assert_eq!(s.counters().sent(), data.len() as u64);
    s.close().await.unwrap();
}

#[tokio::test]
async fn exit_status_signals_and_stderr() {
    let Some(sshd) = Sshd::start() else { return };
    let s = connect(&sshd, &sshd.options()).await.unwrap();
    let out = s.run("echo out; echo err >&2; exit 3").await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let out = s.run("kill -KILL $$").await.unwrap();
    assert!(
        matches!(&out.status, ExitStatus::Signal { name, .. } if name == "KILL"),
        "{:?}",
        out.status
    );
    let out = s.run_with_input("tr a-z A-Z", b"robot").await.unwrap();
    assert_eq!(out.stdout, b"ROBOT");
    // Several channels on one session, one after the other and at once.
    let (a, b) = tokio::join!(s.run("echo a"), s.run("echo b"));
    assert_eq!(
        (a.unwrap().stdout, b.unwrap().stdout),
        (b"a\n".to_vec(), b"b\n".to_vec())
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn ssh_config_gives_hostname_user_port_and_identity() {
    let Some(sshd) = Sshd::start() else { return };
    let mut o = sshd.options();
    o.identities.clear();
    std::fs::copy(sshd.path("client"), sshd.path("home/.ssh/robot_key")).unwrap();
    std::fs::write(
        sshd.path("home/.ssh/config"),
        format!(
            "Host mybot other\n  HostName 127.0.0.1\n  User root\n  Port {}\n  \
             IdentityFile ~/.ssh/robot_key\n\nHost *\n  User nobody\n  Port 1\n",
            sshd.port
        ),
    )
    .unwrap();
    let s = Session::connect(&Target::parse("mybot").unwrap(), &o)
        .await
        .unwrap();
    assert_eq!(s.addr(), format!("127.0.0.1:{}", sshd.port));
    assert_eq!(s.user(), "root");
    assert_eq!(s.run("whoami").await.unwrap().stdout, b"root\n");
    s.close().await.unwrap();
    // The command line beats the config. (sshd's AuthorizedKeysFile here is one file for every
    // user, so `nobody` is let in; whoever logs in, the name used is the command line's.)
    let s = Session::connect(&Target::parse("nobody@mybot").unwrap(), &o)
        .await
        .unwrap();
    assert_eq!(s.user(), "nobody");
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_naming_host_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = SshOptions::with_home(dir.path());
    let t = Target::parse(&format!("127.0.0.1:{port}")).unwrap();
    let err = Session::connect(&t, &o)
        .await
        .err()
        .expect("nothing listens");
    assert!(matches!(err, SshError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts TCP, never says a word.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (sock, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(sock);
    });
    let mut o = SshOptions::with_home(dir.path());
    o.connect_timeout = Duration::from_millis(500);
    let t = Target::parse(&format!("127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = Session::connect(&t, &o).await.err().expect("timed out");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, SshError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    hold.abort();
}
