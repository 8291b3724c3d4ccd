//! OpenSSH `known_hosts`: reading several files, deciding whether a server's host key is
//! known, changed or revoked, and recording a new one.
//!
//! ```text
//! [@revoked|@cert-authority] HOSTS KEYTYPE BASE64 [comment]
//! HOSTS = host,*.lab,!evil.lab,[10.0.0.5]:2222   patterns, `[host]:port` when port != 22
//!       | |1|BASE64(salt)|BASE64(HMAC-SHA1(salt, name))   hashed (`ssh-keygen -H`)
//! ```
//!
//! Policy ([`KnownHosts::check`]): a matching `@revoked` entry refuses the key; a plain entry
//! for the host with the same key accepts it; entries for the host with only other keys (of any
//! type) mean the key changed; no entry means unknown. `@cert-authority` lines are skipped: we
//! never trust a host certificate's CA, a certificate is judged by its plain key. Malformed lines
//! are skipped, as OpenSSH does, and kept in [`KnownHosts::skipped`] for tests and debugging.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use russh::keys::{HashAlg, PublicKey};

use super::SshError;
use super::pattern::list_match;
use super::target::DEFAULT_PORT;

/// The name a host is filed under: `host` on port 22, `[host]:port` otherwise, lowercased
/// (OpenSSH lowercases before matching and hashing).
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_lowercase();
    if port == DEFAULT_PORT {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:…`, the fingerprint `ssh-keygen -lf` and OpenSSH's prompts show.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug, Clone)]
enum Hosts {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<String>),
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Patterns(p) => list_match(p.iter().map(String::as_str), name),
            Hosts::Hashed { salt, hash } => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
            }
        }
    }
}

/// One usable line of a `known_hosts` file.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    line: usize,
    marker: Marker,
    hosts: Hosts,
    key: PublicKey,
}

/// A `file:line` of a `known_hosts` entry, as errors print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// What the files say about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// A plain entry for this host holds this key.
    Known(Location),
    /// Nothing is recorded for this host.
    Unknown,
    /// The host is recorded with other keys only; these are their entries.
    Changed(Vec<Location>),
    /// An `@revoked` entry matching the host names this key.
    Revoked(Location),
}

/// The entries of every `known_hosts` file read, in reading order.
#[derive(Debug, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
    /// Lines that were not understood: `(file:line, why)`.
    pub skipped: Vec<(Location, String)>,
}

impl KnownHosts {
    /// An empty set (every host unknown).
    pub fn new() -> KnownHosts {
        KnownHosts::default()
    }

    /// Reads every file in `paths` that exists; a missing file is an empty one.
    pub fn load(paths: &[PathBuf]) -> Result<KnownHosts, SshError> {
        let mut kh = KnownHosts::new();
        for p in paths {
            match std::fs::read_to_string(p) {
                Ok(text) => kh.add_text(&text, p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SshError::KnownHostsIo {
                        action: "read",
                        path: p.clone(),
                        source,
                    });
                }
            }
        }
        Ok(kh)
    }

    /// Adds the lines of `text`, read from `path` (which errors and [`Location`]s name).
    pub fn add_text(&mut self, text: &str, path: &Path) {
        for (i, raw) in text.lines().enumerate() {
            let loc = Location {
                path: path.to_owned(),
                line: i + 1,
            };
            match parse_line(raw) {
                Ok(None) => {}
                Ok(Some((marker, hosts, key))) => self.entries.push(Entry {
                    path: loc.path,
                    line: loc.line,
                    marker,
                    hosts,
                    key,
                }),
                Err(why) => self.skipped.push((loc, why)),
            }
        }
    }

    /// Judges `key` presented by `host` on `port`; see the module doc for the policy.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
        let name = lookup_name(host, port);
        let for_host = || {
            self.entries
                .iter()
                .filter(|e| e.hosts.matches(&name))
                .map(|e| (e, e.key.key_data() == key.key_data()))
        };
        // Revocation first: a revoked key stays refused even if also listed as good.
        if let Some((e, _)) = for_host().find(|(e, same)| *same && e.marker == Marker::Revoked) {
            return HostKeyStatus::Revoked(e.location());
        }
        let mut others = Vec::new();
        for (e, same) in for_host().filter(|(e, _)| e.marker == Marker::None) {
            if same {
                return HostKeyStatus::Known(e.location());
            }
            others.push(e.location());
        }
        if others.is_empty() {
            HostKeyStatus::Unknown
        } else {
            HostKeyStatus::Changed(others)
        }
    }
}

impl Entry {
    fn location(&self) -> Location {
        Location {
            path: self.path.clone(),
            line: self.line,
        }
    }
}

type Parsed = (Marker, Hosts, PublicKey);

fn parse_line(raw: &str) -> Result<Option<Parsed>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next().unwrap_or_default();
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return Err(format!("unknown marker `{m}`")),
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = fields.next().ok_or("marker without hosts")?;
    }
    let keytype = fields.next().ok_or("no key type")?;
    let blob = fields.next().ok_or("no key")?;
    if marker == Marker::CertAuthority {
        // Never trusted (see the module doc); parsed no further so odd CA keys cannot fail us.
        return Ok(None);
    }
    let hosts = parse_hosts(first)?;
    let key = PublicKey::from_openssh(&format!("{keytype} {blob}"))
        .map_err(|e| format!("bad `{keytype}` key: {e}"))?;
    Ok(Some((marker, hosts, key)))
}

fn parse_hosts(field: &str) -> Result<Hosts, String> {
    if let Some(rest) = field.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|').ok_or("hashed host without `|hash`")?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|e| format!("hashed host salt: {e}"))?;
        let hash = STANDARD
            .decode(hash)
            .map_err(|e| format!("hashed host hash: {e}"))?;
        return Ok(Hosts::Hashed { salt, hash });
    }
    if field.starts_with('|') {
        return Err("unknown hashed host format".into());
    }
    Ok(Hosts::Patterns(
        field
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

/// An I/O error of `action` on the known_hosts file `path`, for `map_err`.
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshError {
    let path = path.to_owned();
    move |source| SshError::KnownHostsIo {
        action,
        path,
        source,
    }
}

/// Records `key` for `host`/`port` at the end of `path` (created 0600, its directory 0700, if
/// missing). The line is appended in one write under an exclusive flock, after a newline if the
/// file lacks a final one, and synced: a crash leaves the file as it was or with the whole line.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> Result<(), SshError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create directory", dir))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io("open", path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(std::io::Error::from)
        .map_err(io("lock", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    let mut needs_newline = false;
    if len > 0 {
        let mut last = [0u8];
        f.read_exact_at(&mut last, len - 1)
            .map_err(io("read", path))?;
        needs_newline = last[0] != b'\n';
    }
    let bare = PublicKey::new(key.key_data().clone(), "");
    let key_text = bare.to_openssh().map_err(|e| SshError::KnownHostsIo {
        action: "encode a key for",
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let line = format!(
        "{}{} {key_text}\n",
        if needs_newline { "\n" } else { "" },
        lookup_name(host, port)
    );
    f.write_all(line.as_bytes())
        .map_err(io("append to", path))?;
    f.sync_data().map_err(io("sync", path))?;
    Ok(())
}

/// Drops from `path` every plain entry for `host`/`port` whose key is not one of `keep`: the
/// robot's old host keys once provisioning has replaced them (OpenSSH's `ssh-keygen -R` also
/// drops a whole line that names other hosts besides). `@revoked` lines, comments and other
/// hosts' lines stay as they are. The file is rewritten through a temporary file and a rename
/// under an exclusive flock, so a crash leaves the old file or the new one. Returns how many
/// lines went; a missing file is 0.
pub fn forget_other_keys(
    path: &Path,
    host: &str,
    port: u16,
    keep: &[PublicKey],
) -> Result<usize, SshError> {
    let f = match std::fs::OpenOptions::new().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("open", path)(e)),
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(std::io::Error::from)
        .map_err(io("lock", path))?;
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    let name = lookup_name(host, port);
    let mut out = String::with_capacity(text.len());
    let mut dropped = 0;
    for raw in text.split_inclusive('\n') {
        let drop = match parse_line(raw) {
            Ok(Some((Marker::None, hosts, key))) => {
                hosts.matches(&name) && !keep.iter().any(|k| k.key_data() == key.key_data())
            }
            _ => false,
        };
        if drop {
            dropped += 1;
        } else {
            out.push_str(raw);
        }
    }
    if dropped == 0 {
        return Ok(0);
    }
    let tmp = path.with_extension("dts-new");
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    w.write_all(out.as_bytes()).map_err(io("write", &tmp))?;
    w.sync_data().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("replace", path))?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn kh(text: &str) -> KnownHosts {
        let mut k = KnownHosts::new();
        k.add_text(text, Path::new("/kh"));
        k
    }

    fn at(line: usize) -> Location {
        Location {
            path: "/kh".into(),
            line,
        }
    }

    #[test]
    fn plain_lists_ports_and_patterns() {
        let k = kh(&format!(
            "# comment\n\nbot1,10.0.0.5 {ED_A}\n[bot2]:2222 {ED_A}\n*.lab,!evil.lab {ED_A} c\n"
        ));
        let a = key(ED_A);
        assert_eq!(k.check("bot1", 22, &a), HostKeyStatus::Known(at(3)));
        assert_eq!(k.check("10.0.0.5", 22, &a), HostKeyStatus::Known(at(3)));
        assert_eq!(k.check("BOT1", 22, &a), HostKeyStatus::Known(at(3)));
        // A port-22 entry does not vouch for another port, nor the reverse.
        assert_eq!(k.check("bot1", 2222, &a), HostKeyStatus::Unknown);
        assert_eq!(k.check("bot2", 2222, &a), HostKeyStatus::Known(at(4)));
        assert_eq!(k.check("bot2", 22, &a), HostKeyStatus::Unknown);
        assert_eq!(k.check("x.lab", 22, &a), HostKeyStatus::Known(at(5)));
        assert_eq!(k.check("evil.lab", 22, &a), HostKeyStatus::Unknown);
    }

    #[test]
    fn changed_and_revoked() {
        let k = kh(&format!("bot1 {ED_A}\n@revoked * {ED_B}\n"));
        assert_eq!(
            k.check("bot1", 22, &key(ED_B)),
            HostKeyStatus::Revoked(at(2))
        );
        assert_eq!(
            k.check("other", 22, &key(ED_B)),
            HostKeyStatus::Revoked(at(2))
        );
        let k = kh(&format!("bot1 {ED_A}\nbot1 {ED_A}\n"));
        assert_eq!(
            k.check("bot1", 22, &key(ED_B)),
            HostKeyStatus::Changed(vec![at(1), at(2)])
        );
        // Revoked beats a good entry for the same key.
        let k = kh(&format!("bot1 {ED_B}\n@revoked bot1 {ED_B}\n"));
        assert_eq!(
            k.check("bot1", 22, &key(ED_B)),
            HostKeyStatus::Revoked(at(2))
        );
    }

    #[test]
    fn hashed_entries() {
        // Made the way `ssh-keygen -H` does: HMAC-SHA1 keyed by a random salt.
        let salt = [7u8; 20];
        let name = "[127.0.0.1]:2222";
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt),
            name.as_bytes(),
        );
        let line = format!(
            "|1|{}|{} {ED_A}\n",
            STANDARD.encode(salt),
            STANDARD.encode(tag.as_ref())
        );
        let k = kh(&line);
        assert_eq!(
            k.check("127.0.0.1", 2222, &key(ED_A)),
            HostKeyStatus::Known(at(1))
        );
        assert_eq!(k.check("127.0.0.1", 22, &key(ED_A)), HostKeyStatus::Unknown);
        assert!(matches!(
            k.check("127.0.0.1", 2222, &key(ED_B)),
            HostKeyStatus::Changed(_)
        ));
    }

    #[test]
    fn odd_lines_are_skipped_not_fatal() {
        let k = kh(&format!(
            "@cert-authority *.lab {ED_B}\nbot1\nbot1 ssh-ed25519 !!!\n@weird bot1 {ED_A}\n|2|x|y {ED_A}\nbot1 {ED_A}\n"
        ));
        assert_eq!(k.check("bot1", 22, &key(ED_A)), HostKeyStatus::Known(at(6)));
        // The CA line never made anything known.
        assert_eq!(k.check("x.lab", 22, &key(ED_B)), HostKeyStatus::Unknown);
        let lines: Vec<usize> = k.skipped.iter().map(|(l, _)| l.line).collect();
        assert_eq!(lines, [2, 3, 4, 5]);
    }

    #[test]
    fn append_adds_a_newline_when_missing_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/known_hosts");
        append(&p, "Bot1", 22, &key(ED_A)).unwrap();
        std::fs::write(
            &p,
            format!("{}other {ED_B}", std::fs::read_to_string(&p).unwrap()),
        )
        .unwrap();
        append(&p, "127.0.0.1", 2222, &key(ED_B)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            format!("bot1 {ED_A}\nother {ED_B}\n[127.0.0.1]:2222 {ED_B}\n")
        );
        let k = KnownHosts::load(&[p.clone(), dir.path().join("missing")]).unwrap();
        assert!(matches!(
            k.check("127.0.0.1", 2222, &key(ED_B)),
            HostKeyStatus::Known(_)
        ));
    }

    #[test]
    fn forget_other_keys_keeps_the_new_key_and_other_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        std::fs::write(
            &p,
            format!("# c\nbot1 {ED_A}\nbot2 {ED_A}\nbot1 {ED_B}\n@revoked bot1 {ED_A}\n"),
        )
        .unwrap();
        assert_eq!(forget_other_keys(&p, "bot1", 22, &[key(ED_B)]).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("# c\nbot2 {ED_A}\nbot1 {ED_B}\n@revoked bot1 {ED_A}\n")
        );
        assert_eq!(forget_other_keys(&p, "bot1", 22, &[key(ED_B)]).unwrap(), 0);
        assert_eq!(
            forget_other_keys(&dir.path().join("none"), "bot1", 22, &[]).unwrap(),
            0
        );
    }
}
