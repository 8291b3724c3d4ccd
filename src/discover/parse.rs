//! Pure parsers for what robots say about themselves: instance names (`DT::<SERVICE>::<host>`)
//! and TXT records (one JSON string, written by avahi, python-zeroconf or us).
//!
//! Everything here takes bytes or strings heard from the network, so anyone on the LAN chooses
//! the input: nothing panics, nothing allocates more than a bounded amount, and anything odd
//! becomes "unknown" (`None`) rather than an error. Strings that will reach a terminal are
//! checked for control characters (an advertised name must not be able to move the cursor).

use serde_json::{Map, Value};

/// The DNS-SD service type every Duckietown service uses, with its domain.
pub const SERVICE_TYPE: &str = "_duckietown._tcp.local.";

/// TXT records larger than this are ignored: a real one is a few dozen bytes, and a whole mDNS
/// packet is at most 9000 (RFC 6762 §17).
pub const MAX_TXT: usize = 9000;

/// Longest text value we keep from a TXT record or a pong (a type, a configuration, a version,
/// a fingerprint: all far shorter).
pub const MAX_TEXT: usize = 128;

/// A service a robot announces, from the middle part of `DT::<SERVICE>::<host>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// `PRESENCE`: the robot is up (host avahi, static file).
    Presence,
    /// `BOOTING`: `dt-init` (or dt-agent) is still starting the robot.
    Booting,
    /// `ROBOT_TYPE`: TXT `{"type": "duckiebot"}`.
    RobotType,
    /// `ROBOT_CONFIGURATION`: TXT `{"configuration": "DB21J"}`.
    RobotConfiguration,
    /// `ROBOT_HARDWARE`: TXT `{"hardware": "..."}` (ente).
    RobotHardware,
    /// `AGENT`: dt-agent; TXT `{"version","arch","ssh_port","host_key_fingerprint"}`.
    Agent,
    /// Anything else (`DASHBOARD`, `FILES-API`…), kept by name.
    Other(String),
}

impl Service {
    /// The name as it appears in instance names.
    pub fn as_str(&self) -> &str {
        match self {
            Service::Presence => "PRESENCE",
            Service::Booting => "BOOTING",
            Service::RobotType => "ROBOT_TYPE",
            Service::RobotConfiguration => "ROBOT_CONFIGURATION",
            Service::RobotHardware => "ROBOT_HARDWARE",
            Service::Agent => "AGENT",
            Service::Other(s) => s,
        }
    }

    /// The service for a (valid, upper-case) name.
    fn from_name(name: &str) -> Service {
        match name {
            "PRESENCE" => Service::Presence,
            "BOOTING" => Service::Booting,
            "ROBOT_TYPE" => Service::RobotType,
            "ROBOT_CONFIGURATION" => Service::RobotConfiguration,
            "ROBOT_HARDWARE" => Service::RobotHardware,
            "AGENT" => Service::Agent,
            other => Service::Other(other.to_string()),
        }
    }
}

/// A parsed instance name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Which service.
    pub service: Service,
    /// The robot's host name, lower-cased (mDNS names are case-insensitive).
    pub hostname: String,
}

/// Parses `DT::<SERVICE>::<hostname>` — bare, or followed by `._duckietown._tcp.local[.]` as
/// mdns-sd reports full names. `None` for anything else: another service type, another prefix,
/// a wrong number of `::` parts, an empty or odd service, a host name that is not one DNS label.
///
/// The Duckietown shell does the same split (`name.split("::")`, three parts, first `DT`).
pub fn parse_instance(name: &str) -> Option<Instance> {
    let instance = strip_service_type(name).unwrap_or(name);
    let mut parts = instance.split("::");
    let (dt, service, host) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || dt != "DT" {
        return None;
    }
    let service_ok = (1..=32).contains(&service.len())
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !service_ok || !is_host_label(host) {
        return None;
    }
    Some(Instance {
        service: Service::from_name(&service.to_ascii_uppercase()),
        hostname: host.to_ascii_lowercase(),
    })
}

/// `name` without a trailing `._duckietown._tcp.local` (with or without the final dot), compared
/// case-insensitively; `None` if it does not end so.
fn strip_service_type(name: &str) -> Option<&str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let suffix = "._duckietown._tcp.local";
    let cut = name.len().checked_sub(suffix.len())?;
    if !name.is_char_boundary(cut) || !name[cut..].eq_ignore_ascii_case(suffix) {
        return None;
    }
    Some(&name[..cut])
}

/// One DNS label of letters, digits and inner hyphens, 1 to 63 bytes: what a robot's host name
/// can be (Duckietown asks for `[a-z][a-z0-9]*`; we accept any host label).
pub fn is_host_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Reads a TXT record's RDATA as one JSON object, leniently. Tries, in order:
///
/// 1. the record as DNS character-strings (`[len][bytes]…`, RFC 1035 §3.3.14): the first string
///    that is a JSON object, then all strings joined (a long JSON split across strings);
/// 2. everything after the first byte: python-zeroconf's `properties=b' ' + json` puts the
///    JSON right after a bogus length byte (0x20) that may not match the JSON's length;
/// 3. the bytes from the first `{` to the last `}`.
///
/// `None` when none of that is a JSON object, when the record is empty or larger than
/// [`MAX_TXT`], or when it is not UTF-8 — the fields are then unknown.
pub fn parse_txt(rdata: &[u8]) -> Option<Map<String, Value>> {
    if rdata.is_empty() || rdata.len() > MAX_TXT {
        return None;
    }
    if let Some(strings) = character_strings(rdata) {
        if let Some(obj) = strings.iter().find_map(|s| json_object(s)) {
            return Some(obj);
        }
        if strings.len() > 1
            && let Some(obj) = json_object(&strings.concat())
        {
            return Some(obj);
        }
    }
    if let Some(obj) = json_object(&rdata[1..]) {
        return Some(obj);
    }
    let start = rdata.iter().position(|&b| b == b'{')?;
    let end = rdata.iter().rposition(|&b| b == b'}')?;
    if end <= start {
        return None;
    }
    json_object(&rdata[start..=end])
}

/// Splits RDATA into DNS character-strings; `None` when a length runs past the end.
/// Empty strings (avahi writes a single zero byte for "no TXT") are dropped.
fn character_strings(rdata: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rdata.len() {
        let len = usize::from(rdata[i]);
        let s = rdata.get(i + 1..i + 1 + len)?;
        if !s.is_empty() {
            out.push(s);
        }
        i += 1 + len;
    }
    Some(out)
}

/// The bytes as a JSON object, if they are one (serde_json bounds nesting depth, so a hostile
/// `[[[[…` cannot exhaust the stack).
fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    let trimmed = bytes.trim_ascii();
    if !trimmed.starts_with(b"{") {
        return None;
    }
    match serde_json::from_slice::<Value>(trimmed) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Rebuilds TXT RDATA from the key/value strings mdns-sd decoded (`key` or `key=value` per
/// character-string). Used when the raw bytes were not heard: right for every well-formed
/// record, and python-zeroconf's malformed ones come from the raw listener instead.
pub fn rdata_from_strings<'a>(
    strings: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, val) in strings {
        let mut s = key.as_bytes().to_vec();
        if let Some(v) = val {
            s.push(b'=');
            s.extend_from_slice(v);
        }
        s.truncate(255);
        out.push(s.len() as u8);
        out.extend_from_slice(&s);
        if out.len() > MAX_TXT {
            break;
        }
    }
    out
}

/// A text field of a TXT object or a pong: a string of 1 to [`MAX_TEXT`] characters with no
/// control or bidirectional-override characters, trimmed. Anything else is unknown.
pub fn text_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    clean_text(obj.get(key)?.as_str()?)
}

/// `s` if it is safe and sensible to show: see [`text_field`].
pub fn clean_text(s: &str) -> Option<String> {
    let s = s.trim();
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if s.is_empty() || s.chars().count() > MAX_TEXT || s.chars().any(bad) {
        return None;
    }
    Some(s.to_string())
}

/// A port field: a number (or a string of digits) from 1 to 65535.
pub fn port_field(obj: &Map<String, Value>, key: &str) -> Option<u16> {
    match obj.get(key)? {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) if s.len() <= 5 => s.parse::<u16>().ok(),
        _ => None,
    }
    .filter(|&p| p != 0)
}

/// Serialises a TXT object the way it goes on the wire as one character-string: JSON with
/// every non-ASCII character and every `=` written as a `\uXXXX` escape. Still the same JSON
/// to any parser, but safe for mdns-sd, which refuses TXT keys that are not ASCII or contain
/// `=` (a JSON string with no `=` is published as one key without a value). `None` when the
/// result would not fit in one character-string (255 bytes).
pub fn txt_json(obj: &Map<String, Value>) -> Option<String> {
    let json = serde_json::to_string(obj).ok()?;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c == '=' || !c.is_ascii() {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    (out.len() <= 255).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(strings: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in strings {
            out.push(s.len() as u8);
            out.extend_from_slice(s);
        }
        out
    }

    #[test]
    fn instance_names() {
        let cases: &[(&str, Option<(Service, &str)>)] = &[
            ("DT::PRESENCE::mybot", Some((Service::Presence, "mybot"))),
            (
                "DT::ROBOT_TYPE::mybot._duckietown._tcp.local.",
                Some((Service::RobotType, "mybot")),
            ),
            (
                "DT::ROBOT_CONFIGURATION::MyBot._DuckieTown._TCP.local",
                Some((Service::RobotConfiguration, "mybot")),
            ),
            ("DT::AGENT::bot-2", Some((Service::Agent, "bot-2"))),
            (
                "DT::files-api::bot",
                Some((Service::Other("FILES-API".into()), "bot")),
            ),
            ("DT::BOOTING::bot._http._tcp.local.", None),
            ("XX::PRESENCE::bot", None),
            ("DT::PRESENCE", None),
            ("DT::PRESENCE::bot::extra", None),
            ("DT::::bot", None),
            ("DT::PRESENCE::", None),
            ("DT::PRESENCE::bot.local", None),
            ("DT::PRESENCE::-bot", None),
            ("DT::PRESENCE::bot (2)", None),
            ("DT::PRE SENCE::bot", None),
            ("DT::PRESENCE::b\u{1b}[2Jot", None),
            ("DT::PRESENCE::bøt", None),
            ("", None),
            ("._duckietown._tcp.local.", None),
        ];
        for (name, want) in cases {
            let got = parse_instance(name).map(|i| (i.service, i.hostname));
            let want = want.clone().map(|(s, h)| (s, h.to_string()));
            assert_eq!(got, want, "{name:?}");
        }
        let long = format!("DT::PRESENCE::{}", "a".repeat(64));
        assert_eq!(parse_instance(&long), None);
    }

    #[test]
    fn txt_avahi_single_string() {
        let obj = parse_txt(&txt(&[br#"{"type": "duckiebot"}"#])).unwrap();
        assert_eq!(text_field(&obj, "type").as_deref(), Some("duckiebot"));
    }

    #[test]
    fn txt_missing_or_empty() {
        assert_eq!(parse_txt(b""), None);
        assert_eq!(parse_txt(&[0]), None);
        assert_eq!(parse_txt(&txt(&[b"not json"])), None);
        assert_eq!(parse_txt(&txt(&[b"[1,2]"])), None);
        assert_eq!(parse_txt(&txt(&[b"key=value"])), None);
    }

    #[test]
    fn txt_python_zeroconf_bogus_length_byte() {
        // Short JSON: the 0x20 "length" runs past the end.
        let mut short = vec![b' '];
        short.extend_from_slice(br#"{"type": "duckiebot"}"#);
        let obj = parse_txt(&short).unwrap();
        assert_eq!(text_field(&obj, "type").as_deref(), Some("duckiebot"));
        // Long JSON: the 0x20 "length" cuts it in the middle, and the byte after is taken as
        // another length.
        let mut long = vec![b' '];
        long.extend_from_slice(
            br#"{"configuration": "DB21J", "note": "a fairly long payload here"}"#,
        );
        let obj = parse_txt(&long).unwrap();
        assert_eq!(text_field(&obj, "configuration").as_deref(), Some("DB21J"));
    }

    #[test]
    fn txt_split_across_strings_and_garbage_around() {
        let obj = parse_txt(&txt(&[br#"{"type": "#, br#""duckiebot"}"#])).unwrap();
        assert_eq!(text_field(&obj, "type").as_deref(), Some("duckiebot"));
        let obj = parse_txt(b"\x05junk{\"a\": \"b\"}\x00\xff").unwrap();
        assert_eq!(text_field(&obj, "a").as_deref(), Some("b"));
    }

    #[test]
    fn txt_non_utf8_giant_and_deep() {
        assert_eq!(parse_txt(&txt(&[b"{\"type\": \"\xff\xfe\"}"])), None);
        let giant = vec![b'{'; MAX_TXT + 1];
        assert_eq!(parse_txt(&giant), None);
        let mut deep = String::from("{\"a\":");
        deep.push_str(&"[".repeat(5000));
        assert_eq!(parse_txt(deep.as_bytes()), None);
    }

    #[test]
    fn fields_reject_control_and_wrong_types() {
        let obj: Map<String, Value> = serde_json::from_str(
            r#"{"a": "ok", "b": "x\u001b[31m", "c": 5, "d": "", "e": "\u202eevil", "p": 22, "q": "2222", "r": 70000, "s": -1}"#,
        )
        .unwrap();
        assert_eq!(text_field(&obj, "a").as_deref(), Some("ok"));
        assert_eq!(text_field(&obj, "b"), None);
        assert_eq!(text_field(&obj, "c"), None);
        assert_eq!(text_field(&obj, "d"), None);
        assert_eq!(text_field(&obj, "e"), None);
        assert_eq!(text_field(&obj, "missing"), None);
        assert_eq!(port_field(&obj, "p"), Some(22));
        assert_eq!(port_field(&obj, "q"), Some(2222));
        assert_eq!(port_field(&obj, "r"), None);
        assert_eq!(port_field(&obj, "s"), None);
        assert_eq!(clean_text(&"x".repeat(MAX_TEXT + 1)), None);
    }

    #[test]
    fn txt_json_is_ascii_without_equals_and_round_trips() {
        let obj: Map<String, Value> =
            serde_json::from_str(r#"{"version": "1=2", "arch": "ärm", "ssh_port": 22}"#).unwrap();
        let s = txt_json(&obj).unwrap();
        assert!(s.is_ascii() && !s.contains('='), "{s}");
        let back = parse_txt(&txt(&[s.as_bytes()])).unwrap();
        assert_eq!(back, obj);
        let huge: Map<String, Value> =
            serde_json::from_str(&format!(r#"{{"a": "{}"}}"#, "x".repeat(300))).unwrap();
        assert_eq!(txt_json(&huge), None);
    }

    #[test]
    fn rdata_rebuilt_from_mdns_sd_strings() {
        let raw = rdata_from_strings([(r#"{"url": "a"#, Some(&b"b\"}"[..])), ("flag", None)]);
        assert_eq!(raw, txt(&[br#"{"url": "a=b"}"#, b"flag"]));
        let obj = parse_txt(&raw).unwrap();
        assert_eq!(text_field(&obj, "url").as_deref(), Some("a=b"));
    }
}
