//! The part of `~/.ssh/config` people use to reach robots: `Host` blocks (patterns with `*`, `?`,
//! `!`, several per line), `HostName` (with `%h`), `User`, `Port`, `IdentityFile` (with `~`,
//! `%d %h %u %r %p %n`), `Include` (globs, relative to `~/.ssh`), `ServerAliveInterval` and
//! `ServerAliveCountMax` (how soon a robot that left the WiFi is given up on). Other keywords are ignored,
//! and `Match` blocks never apply (we cannot evaluate `exec`, so we claim nothing).
//!
//! As in OpenSSH the first value obtained for a keyword wins and `IdentityFile` accumulates;
//! values from the command line beat the file ([`resolve`]). Reading the file is separate from
//! applying it so the table tests need no files.

use std::path::{Path, PathBuf};

use super::SshError;
use super::pattern::list_match;
use super::target::{DEFAULT_PORT, DEFAULT_USER, Target};

/// OpenSSH's own limit on nested `Include`s; beyond it a loop is assumed.
const MAX_INCLUDE_DEPTH: usize = 16;

/// What the config file says about one host alias (raw values: `%` tokens in `IdentityFile`
/// are expanded by [`resolve`], once the remote user and host name are known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `HostName`, with `%h` already replaced by the alias.
    pub hostname: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// Every `IdentityFile`, in file order, unexpanded.
    pub identity_files: Vec<String>,
    /// `ServerAliveInterval`, seconds (0 turns keepalives off, as in OpenSSH).
    pub server_alive_interval: Option<u64>,
    /// `ServerAliveCountMax`.
    pub server_alive_count_max: Option<usize>,
    /// `HostKeyAlias`: the name host keys are filed under instead of `HostName`.
    pub host_key_alias: Option<String>,
}

/// A destination with every default applied: what the connection actually uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The name the user typed (the config's `%n`).
    pub alias: String,
    /// The host to connect to and to look up in `known_hosts`.
    pub hostname: String,
    /// Login name.
    pub user: String,
    /// TCP port.
    pub port: u16,
    /// `IdentityFile`s from the config, expanded, in order (command-line ones are not here).
    pub identity_files: Vec<PathBuf>,
    /// `ServerAliveInterval` in seconds, when the config sets it.
    pub server_alive_interval: Option<u64>,
    /// `ServerAliveCountMax`, when the config sets it.
    pub server_alive_count_max: Option<usize>,
    /// `HostKeyAlias`, when the config sets it.
    pub host_key_alias: Option<String>,
}

impl HostConfig {
    /// Applies config `text` (read from `origin`, for error messages) for host `alias`.
    /// `ssh_dir` is where relative `Include`s are looked up.
    pub fn parse(text: &str, origin: &Path, alias: &str, ssh_dir: &Path) -> Result<Self, SshError> {
        let mut cfg = HostConfig::default();
        apply(text, origin, alias, ssh_dir, 0, &mut cfg)?;
        Ok(cfg)
    }

    /// Reads the config file at `path` for `alias`; a missing file is an empty config.
    pub fn load(path: &Path, alias: &str, ssh_dir: &Path) -> Result<Self, SshError> {
        let mut cfg = HostConfig::default();
        load_into(path, alias, ssh_dir, 0, &mut cfg)?;
        Ok(cfg)
    }
}

fn load_into(
    path: &Path,
    alias: &str,
    ssh_dir: &Path,
    depth: usize,
    cfg: &mut HostConfig,
) -> Result<(), SshError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(SshError::Config {
                path: path.to_owned(),
                line: 0,
                message: format!("cannot read it: {e}"),
            });
        }
    };
    apply(&text, path, alias, ssh_dir, depth, cfg)
}

fn apply(
    text: &str,
    origin: &Path,
    alias: &str,
    ssh_dir: &Path,
    depth: usize,
    cfg: &mut HostConfig,
) -> Result<(), SshError> {
    // Lines before the first `Host` apply to every host.
    let mut active = true;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let err = |message: String| SshError::Config {
            path: origin.to_owned(),
            line: lineno,
            message,
        };
        let Some((keyword, args)) = split_line(raw).map_err(&err)? else {
            continue;
        };
        match keyword.as_str() {
            "host" => {
                if args.is_empty() {
                    return Err(err("`Host` needs at least one pattern".into()));
                }
                active = list_match(args.iter().map(String::as_str), alias);
            }
            // `Match` criteria (exec, canonical, localuser…) are not evaluated: the block is
            // skipped rather than guessed at.
            "match" => active = args.len() == 1 && args[0].eq_ignore_ascii_case("all"),
            _ if !active => {}
            "hostname" => {
                let v = one_arg(&keyword, &args).map_err(&err)?;
                if cfg.hostname.is_none() {
                    cfg.hostname = Some(expand_hostname(v, alias).map_err(&err)?);
                }
            }
            "user" => {
                let v = one_arg(&keyword, &args).map_err(&err)?;
                cfg.user.get_or_insert_with(|| v.to_owned());
            }
            "hostkeyalias" => {
                let v = one_arg(&keyword, &args).map_err(&err)?;
                cfg.host_key_alias.get_or_insert_with(|| v.to_owned());
            }
            "port" => {
                let v = one_arg(&keyword, &args).map_err(&err)?;
                let port = match v.parse::<u16>() {
                    Ok(p) if p != 0 => p,
                    _ => return Err(err(format!("`Port {v}` is not a port (1-65535)"))),
                };
                cfg.port.get_or_insert(port);
            }
            "serveraliveinterval" | "serveralivecountmax" => {
                let v = one_arg(&keyword, &args).map_err(&err)?;
                let Ok(n) = v.parse::<u64>() else {
                    return Err(err(format!("`{keyword} {v}` is not a whole number")));
                };
                if keyword == "serveraliveinterval" {
                    cfg.server_alive_interval.get_or_insert(n);
                } else {
                    cfg.server_alive_count_max.get_or_insert(n as usize);
                }
            }
            "identityfile" => {
                let v = one_arg(&keyword, &args).map_err(&err)?;
                if !v.eq_ignore_ascii_case("none") {
                    cfg.identity_files.push(v.to_owned());
                }
            }
            "include" => {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(err(format!(
                        "more than {MAX_INCLUDE_DEPTH} nested `Include`s (a loop?)"
                    )));
                }
                for pat in &args {
                    for file in include_files(pat, ssh_dir).map_err(&err)? {
                        load_into(&file, alias, ssh_dir, depth + 1, cfg)?;
                    }
                }
                // An included file's `Host` lines end at its end: the including block goes on.
            }
            _ => {}
        }
    }
    Ok(())
}

/// Keyword (lowercased) and arguments of one line, or `None` for blanks and comments.
/// Accepts `Key value` and `Key=value`; double quotes group words.
fn split_line(raw: &str) -> Result<Option<(String, Vec<String>)>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let keyword = line[..end].to_ascii_lowercase();
    let mut rest = line[end..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            break; // a trailing comment
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(ch) => word.push(ch),
                    None => return Err(format!("unterminated quote in `{line}`")),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                word.push(ch);
                chars.next();
            }
        }
        args.push(word);
    }
    Ok(Some((keyword, args)))
}

fn one_arg<'a>(keyword: &str, args: &'a [String]) -> Result<&'a str, String> {
    match args {
        [v] => Ok(v),
        [] => Err(format!("`{keyword}` needs a value")),
        _ => Err(format!("`{keyword}` takes one value, got {}", args.len())),
    }
}

fn expand_hostname(v: &str, alias: &str) -> Result<String, String> {
    expand_tokens(v, &[('h', alias)])
}

/// Replaces `%X` tokens from `table` and `%%`; any other token is an error (OpenSSH refuses
/// them too, and a silently literal `%r` would name the wrong file).
fn expand_tokens(v: &str, table: &[(char, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(t) => match table.iter().find(|(k, _)| *k == t) {
                Some((_, val)) => out.push_str(val),
                None => return Err(format!("unsupported token `%{t}` in `{v}`")),
            },
            None => return Err(format!("lone `%` at the end of `{v}`")),
        }
    }
    Ok(out)
}

fn expand_tilde(v: &str, home: &Path) -> PathBuf {
    if v == "~" {
        home.to_owned()
    } else if let Some(rest) = v.strip_prefix("~/") {
        home.join(rest)
    } else {
        PathBuf::from(v)
    }
}

/// Files an `Include` argument names, sorted like glob(3). Wildcards are honoured in the last
/// path component, which is where people put them (`config.d/*`).
fn include_files(pat: &str, ssh_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let home = ssh_dir.parent().unwrap_or(ssh_dir);
    let p = expand_tilde(pat, home);
    let p = if p.is_absolute() { p } else { ssh_dir.join(p) };
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![p]);
    }
    let dir = p.parent().unwrap_or(Path::new("/"));
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list `{}`: {e}", dir.display())),
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.') && super::pattern::glob_match(&name, &n)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// Applies defaults and precedence: the ROBOT argument's user and port beat the config, which
/// beats `duckie`/22; `HostName` replaces the alias. `home` is the local home directory (`~`,
/// `%d`), `local_user` the local login (`%u`).
pub fn resolve(
    target: &Target,
    cfg: &HostConfig,
    home: &Path,
    local_user: &str,
    origin: &Path,
) -> Result<Resolved, SshError> {
    let hostname = cfg.hostname.clone().unwrap_or_else(|| target.host.clone());
    let user = target
        .user
        .clone()
        .or_else(|| cfg.user.clone())
        .unwrap_or_else(|| DEFAULT_USER.to_owned());
    let port = target.port.or(cfg.port).unwrap_or(DEFAULT_PORT);
    let home_s = home.to_string_lossy();
    let port_s = port.to_string();
    let table = [
        ('d', home_s.as_ref()),
        ('h', hostname.as_str()),
        ('u', local_user),
        ('r', user.as_str()),
        ('p', port_s.as_str()),
        ('n', target.host.as_str()),
    ];
    let mut identity_files = Vec::new();
    for raw in &cfg.identity_files {
        let expanded = expand_tokens(raw, &table).map_err(|message| SshError::Config {
            path: origin.to_owned(),
            line: 0,
            message: format!("IdentityFile: {message}"),
        })?;
        identity_files.push(expand_tilde(&expanded, home));
    }
    Ok(Resolved {
        alias: target.host.clone(),
        hostname,
        user,
        port,
        identity_files,
        server_alive_interval: cfg.server_alive_interval,
        server_alive_count_max: cfg.server_alive_count_max,
        host_key_alias: cfg.host_key_alias.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
# lab robots
Host bot? !bot9
    HostName %h.lab.example
    User student
    IdentityFile ~/.ssh/lab_%r_%h

Host bot1 bot2
    # too late: the block above gave bot1 a User already
    User nobody
    Port 2201

Host=quoted
    HostName="10.0.0.7"
    Port = 2222
    HostKeyAlias quoted.local

Host *
    User fallback
    IdentityFile %d/.ssh/common
"#;

    fn cfg(alias: &str) -> HostConfig {
        HostConfig::parse(CONFIG, Path::new("cfg"), alias, Path::new("/h/.ssh")).unwrap()
    }

    #[test]
    fn first_value_wins_and_identity_files_accumulate() {
        let c = cfg("bot1");
        assert_eq!(c.hostname.as_deref(), Some("bot1.lab.example"));
        assert_eq!(c.user.as_deref(), Some("student"));
        assert_eq!(c.port, Some(2201));
        assert_eq!(c.identity_files, ["~/.ssh/lab_%r_%h", "%d/.ssh/common"]);
    }

    #[test]
    fn negation_vetoes_the_block() {
        let c = cfg("bot9");
        assert_eq!(c.hostname, None);
        assert_eq!(c.user.as_deref(), Some("fallback"));
        assert_eq!(c.port, None);
    }

    #[test]
    fn equals_and_quotes() {
        let c = cfg("quoted");
        assert_eq!(c.hostname.as_deref(), Some("10.0.0.7"));
        assert_eq!(c.port, Some(2222));
        assert_eq!(c.host_key_alias.as_deref(), Some("quoted.local"));
        assert_eq!(cfg("bot1").host_key_alias, None);
    }

    #[test]
    fn resolve_applies_precedence_and_tokens() {
        let home = Path::new("/h");
        let r = resolve(
            &Target::new("bot1"),
            &cfg("bot1"),
            home,
            "me",
            Path::new("cfg"),
        )
        .unwrap();
        assert_eq!(r.hostname, "bot1.lab.example");
        assert_eq!((r.user.as_str(), r.port), ("student", 2201));
        assert_eq!(
            r.identity_files,
            [
                PathBuf::from("/h/.ssh/lab_student_bot1.lab.example"),
                PathBuf::from("/h/.ssh/common")
            ]
        );
        // The command line beats the file.
        let t = Target::parse("root@bot1:22").unwrap();
        let r = resolve(&t, &cfg("bot1"), home, "me", Path::new("cfg")).unwrap();
        assert_eq!((r.user.as_str(), r.port), ("root", 22));
        // No config at all: the Duckiebot defaults.
        let r = resolve(
            &Target::new("x"),
            &HostConfig::default(),
            home,
            "me",
            Path::new("c"),
        );
        let r = r.unwrap();
        assert_eq!(
            (r.hostname.as_str(), r.user.as_str(), r.port),
            ("x", "duckie", 22)
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = HostConfig::parse(
            "Host a\n  Port lots\n",
            Path::new("/c"),
            "a",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/c:2"), "{e}");
        let e = HostConfig::parse("HostName %q\n", Path::new("/c"), "a", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("%q"), "{e}");
    }

    #[test]
    fn server_alive_settings_first_value_wins() {
        let text = "Host bot1\n  ServerAliveInterval 2\nHost *\n  ServerAliveInterval 60\n  ServerAliveCountMax 4\n";
        let c = HostConfig::parse(text, Path::new("c"), "bot1", Path::new("/")).unwrap();
        assert_eq!(
            (c.server_alive_interval, c.server_alive_count_max),
            (Some(2), Some(4))
        );
        let e = HostConfig::parse(
            "ServerAliveCountMax many\n",
            Path::new("/c"),
            "a",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/c:1") && e.contains("many"), "{e}");
    }

    #[test]
    fn match_blocks_are_skipped() {
        let c = HostConfig::parse(
            "Match exec \"true\"\n User m\nHost *\n User h\n",
            Path::new("c"),
            "a",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.user.as_deref(), Some("h"));
    }

    #[test]
    fn include_reads_globbed_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        std::fs::create_dir_all(ssh.join("config.d")).unwrap();
        std::fs::write(ssh.join("config.d/10-a"), "Host bot\n  Port 2010\n").unwrap();
        std::fs::write(
            ssh.join("config.d/20-b"),
            "Host bot\n  Port 2020\n  User b\n",
        )
        .unwrap();
        std::fs::write(ssh.join("config"), "Include config.d/*\nHost *\n  User z\n").unwrap();
        let c = HostConfig::load(&ssh.join("config"), "bot", &ssh).unwrap();
        assert_eq!((c.port, c.user.as_deref()), (Some(2010), Some("b")));
        // A missing config is no config.
        let c = HostConfig::load(&ssh.join("nope"), "bot", &ssh).unwrap();
        assert_eq!(c, HostConfig::default());
    }
}
