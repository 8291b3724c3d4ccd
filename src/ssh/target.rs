//! The ROBOT argument as an SSH destination: `[user@]host[:port]`, IPv6 literals in brackets
//! (`[fe80::1]:2222`). Parsing only; defaults (`duckie`, 22) are applied after `~/.ssh/config`
//! has had its say, in [`super::config::resolve`], so a missing part here stays `None`.

use std::fmt;
use std::str::FromStr;

use super::SshError;

/// Default login on a Duckiebot image.
pub const DEFAULT_USER: &str = "duckie";
/// The SSH port, when neither the ROBOT argument nor the config names one.
pub const DEFAULT_PORT: u16 = 22;

/// Where to connect, as the user wrote it. `host` may be an alias that `~/.ssh/config` maps to
/// another `HostName`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Login name, when given as `user@…`.
    pub user: Option<String>,
    /// Host name, alias or IP address (IPv6 without its brackets).
    pub host: String,
    /// Port, when given as `…:port`.
    pub port: Option<u16>,
}

impl Target {
    /// A target for `host` with no user or port of its own.
    pub fn new(host: impl Into<String>) -> Target {
        Target {
            user: None,
            host: host.into(),
            port: None,
        }
    }

    /// Parses `[user@]host[:port]`; see the module doc.
    pub fn parse(input: &str) -> Result<Target, SshError> {
        let bad = |reason: &str| SshError::BadTarget {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        // The user part ends at the last `@`: a host never contains one, a user name might.
        let (user, rest) = match input.rsplit_once('@') {
            Some((u, r)) => {
                if u.is_empty() {
                    return Err(bad("empty user name before `@`"));
                }
                (Some(u.to_owned()), r)
            }
            None => (None, input),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("`[` without a closing `]`"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected `:PORT` after `]`"))?,
                ),
            };
            (h, port)
        } else if rest.matches(':').count() > 1 {
            // An IPv6 literal without brackets: it cannot carry a port.
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host name"));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("a host name has no spaces or `/`"));
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad(&format!("`{p}` is not a port (1-65535)"))),
                Ok(n) => Some(n),
            },
        };
        Ok(Target {
            user,
            host: host.to_owned(),
            port,
        })
    }
}

impl FromStr for Target {
    type Err = SshError;
    fn from_str(s: &str) -> Result<Target, SshError> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        let bracket = self.host.contains(':');
        match (bracket, self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (true, None) => write!(f, "[{}]", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (false, None) => write!(f, "{}", self.host),
        }
    }
}

/// `host:port` as errors print it (`[v6]:port` for IPv6 literals).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: Option<&str>, host: &str, port: Option<u16>) -> Target {
        Target {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_the_forms_people_type() {
        for (input, want) in [
            ("mybot", t(None, "mybot", None)),
            ("mybot.local", t(None, "mybot.local", None)),
            ("duckie@mybot", t(Some("duckie"), "mybot", None)),
            ("mybot:2222", t(None, "mybot", Some(2222))),
            ("root@10.0.0.5:22", t(Some("root"), "10.0.0.5", Some(22))),
            ("[::1]:2222", t(None, "::1", Some(2222))),
            ("me@[fe80::1%eth0]", t(Some("me"), "fe80::1%eth0", None)),
            ("fe80::1", t(None, "fe80::1", None)),
            ("a@b@host", t(Some("a@b"), "host", None)),
        ] {
            assert_eq!(Target::parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn refuses_malformed_input() {
        for input in [
            "",
            "@host",
            "user@",
            "host:",
            "host:0",
            "host:99999",
            "host:x",
            "[::1",
            "[::1]x",
            "a b",
        ] {
            assert!(Target::parse(input).is_err(), "{input:?} parsed");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in ["mybot", "me@mybot:2200", "[::1]:22", "me@[fe80::1]"] {
            assert_eq!(Target::parse(input).unwrap().to_string(), input);
        }
    }
}
