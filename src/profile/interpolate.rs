//! Compose-style variable interpolation of stack files: `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}`, `$VAR` and
//! `$$` for a literal dollar. Values come from a map the caller builds (the laptop's environment
//! plus `ARCH`); nothing here reads the process environment.
//!
//! As in compose, an unset `${VAR}` becomes the empty string; the caller is told which names
//! were missing so it can warn, because `image: dt-core:daffy-${ARCH}` turning into
//! `dt-core:daffy-` is a mistake worth pointing at.

use std::collections::BTreeMap;

/// Text with its variables substituted, and the variables that were unset and had no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    /// The result.
    pub text: String,
    /// Names used bare (`${X}`, `$X`) that `env` lacks, in order of first use.
    pub missing: Vec<String>,
}

/// Substitutes every variable in `s` from `env`. The error says what is malformed or carries
/// the `${VAR:?message}` text.
pub fn interpolate(s: &str, env: &BTreeMap<String, String>) -> Result<Interpolated, String> {
    let mut missing = Vec::new();
    let text = expand(s, env, &mut missing)?;
    Ok(Interpolated { text, missing })
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn expand(
    s: &str,
    env: &BTreeMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match after.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let close = matching_brace(&after[1..])
                    .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
                let inner = &after[1..1 + close];
                out.push_str(&braced(inner, env, missing)?);
                rest = &after[1 + close + 1..];
            }
            Some(c) if is_name_start(c) => {
                let end = after
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(after.len());
                let name = &after[..end];
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => note_missing(missing, name),
                }
                rest = &after[end..];
            }
            _ => {
                return Err(format!(
                    "invalid interpolation in `{s}`: a `$` must start `${{VAR}}` or `$VAR`; write `$$` for a literal `$`"
                ));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Index in `s` of the `}` closing a `${` whose body starts at `s[0]`; nested `${…}` in defaults
/// are skipped over.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn note_missing(missing: &mut Vec<String>, name: &str) {
    if !missing.iter().any(|m| m == name) {
        missing.push(name.to_string());
    }
}

fn braced(
    inner: &str,
    env: &BTreeMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !is_name_char(c))
        .unwrap_or(inner.len());
    let name = &inner[..name_end];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(format!(
            "invalid interpolation `${{{inner}}}`: expected a variable name"
        ));
    }
    let op = &inner[name_end..];
    let value = env.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    // Each operator: (text, whether ":" makes empty count as unset).
    let (operator, arg) = if op.is_empty() {
        return Ok(match value {
            Some(v) => v.clone(),
            None => {
                note_missing(missing, name);
                String::new()
            }
        });
    } else if let Some(a) = op.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = op.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = op.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = op.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = op.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = op.strip_prefix('+') {
        ("+", a)
    } else {
        return Err(format!(
            "invalid interpolation `${{{inner}}}`: after the name expected `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+`"
        ));
    };
    let present = if operator.starts_with(':') {
        set_nonempty
    } else {
        value.is_some()
    };
    match operator {
        ":-" | "-" => {
            if present {
                Ok(value.cloned().unwrap_or_default())
            } else {
                expand(arg, env, missing)
            }
        }
        ":+" | "+" => {
            if present {
                expand(arg, env, missing)
            } else {
                Ok(String::new())
            }
        }
        _ => {
            if present {
                Ok(value.cloned().unwrap_or_default())
            } else {
                let msg = expand(arg, env, missing)?;
                Err(if msg.is_empty() {
                    format!("required variable `{name}` is not set")
                } else {
                    format!("required variable `{name}` is not set: {msg}")
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("ARCH", "arm64v8"), ("EMPTY", ""), ("TAG", "daffy")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("dt-core:${TAG}-${ARCH}", "dt-core:daffy-arm64v8"),
            ("$ARCH/x", "arm64v8/x"),
            ("$ARCH-x", "arm64v8-x"),
            ("${NOPE:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${NOPE-def}", "def"),
            ("${TAG:-def}", "daffy"),
            ("${NOPE:-${TAG}-x}", "daffy-x"),
            ("${TAG:+yes}", "yes"),
            ("${EMPTY:+yes}", ""),
            ("${EMPTY+yes}", "yes"),
            ("${NOPE+yes}", ""),
            ("$$HOME", "$HOME"),
            ("a$$", "a$"),
            ("$${ARCH}", "${ARCH}"),
            ("${TAG:?must be set}", "daffy"),
        ];
        for (input, want) in cases {
            let got = interpolate(input, &env()).unwrap();
            assert_eq!(got.text, *want, "{input}");
            assert!(got.missing.is_empty(), "{input}: {:?}", got.missing);
        }
    }

    #[test]
    fn missing_variables_are_empty_and_reported_once() {
        let got = interpolate("${X}-$X-${Y}", &env()).unwrap();
        assert_eq!(got.text, "--");
        assert_eq!(got.missing, ["X", "Y"]);
    }

    #[test]
    fn malformed() {
        for (input, needle) in [
            ("${ARCH", "unterminated"),
            ("${}", "variable name"),
            ("${1X}", "variable name"),
            ("${A!b}", "after the name"),
            ("cost $5", "`$$`"),
            ("end $", "`$$`"),
            (
                "${NOPE:?give a tag}",
                "required variable `NOPE` is not set: give a tag",
            ),
            ("${EMPTY:?}", "required variable `EMPTY`"),
        ] {
            let e = interpolate(input, &env()).unwrap_err();
            assert!(e.contains(needle), "{input}: {e}");
        }
        assert_eq!(interpolate("${EMPTY?x}", &env()).unwrap().text, "");
    }
}
