//! Compose's env files: the `.env` beside a stack file (variables for interpolation) and a
//! service's `env_file:` (variables for its container), in the format Docker Compose reads.
//!
//! ```text
//! # a comment
//! export ROS_MASTER_URI=http://localhost:11311   # `export ` is allowed, comments after ` #`
//! GREETING="hello\nworld"                        # double quotes: escapes, ${VAR} substituted
//! LITERAL='${not} substituted'                   # single quotes: exactly as written
//! FROM_ENV                                       # no `=`: taken from the environment, if set
//! ```
//!
//! Unquoted and double-quoted values are interpolated as compose does, from `env` (the
//! laptop's environment) and the variables defined above in the same file; a double-quoted
//! value may span lines.

use std::collections::BTreeMap;

use super::ProfileError;
use super::interpolate::interpolate;

/// Parses an env file's text into `KEY=VALUE` pairs in file order; `file` names it in errors,
/// `env` supplies variables for interpolation and for names without a value.
pub fn parse(
    file: &str,
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ProfileError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut scope = env.clone();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let err = |msg: String| ProfileError::Invalid {
            file: file.to_string(),
            pos: Some((line_no, 1)),
            key: String::new(),
            message: msg,
            hint: None,
        };
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, raw)) = line.split_once('=') else {
            check_key(line).map_err(err)?;
            if let Some(v) = env.get(line) {
                out.push((line.to_string(), v.clone()));
            }
            continue;
        };
        let key = key.trim();
        check_key(key).map_err(err)?;
        let raw = raw.trim_start();
        let value = if let Some(body) = raw.strip_prefix('\'') {
            let end = body
                .find('\'')
                .ok_or_else(|| err(format!("`{key}`: unterminated `'`")))?;
            body[..end].to_string()
        } else if let Some(body) = raw.strip_prefix('"') {
            // A double-quoted value runs to the closing quote, across lines if need be.
            let mut text = body.to_string();
            let close = loop {
                if let Some(end) = closing_quote(&text) {
                    break end;
                }
                let next = lines
                    .get(i)
                    .ok_or_else(|| err(format!("`{key}`: unterminated `\"`")))?;
                text.push('\n');
                text.push_str(next);
                i += 1;
            };
            let unescaped = unescape(&text[..close]);
            substitute(&unescaped, &scope).map_err(|e| err(format!("`{key}`: {e}")))?
        } else {
            // Unquoted: a ` #` starts a comment.
            let v = match raw.find(" #") {
                Some(c) => &raw[..c],
                None => raw,
            };
            substitute(v.trim_end(), &scope).map_err(|e| err(format!("`{key}`: {e}")))?
        };
        scope
            .entry(key.to_string())
            .or_insert_with(|| value.clone());
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn check_key(key: &str) -> Result<(), String> {
    let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a variable name (expected KEY=VALUE)"
        ))
    }
}

/// Index of the unescaped `"` that closes a double-quoted value.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(o @ ('"' | '\\' | '\'')) => out.push(o),
            // `\$` keeps a literal dollar through interpolation.
            Some('$') => out.push_str("$$"),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn substitute(s: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    // Compose leaves an unset variable in an env file empty, without a warning of its own.
    interpolate(s, env).map(|i| i.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("HOME", "/home/duckie"), ("FROM_ENV", "yes")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn compose_env_file_syntax() {
        let text = "\
# comment
export A=1
B = two words  # trailing comment
C=\"quoted # not a comment\\n${A}\"
D='${A} literal'
E=${HOME}/x
F=\"multi
line\"
FROM_ENV
NOT_SET_ANYWHERE
G=
H=a#b
";
        let got = parse(".env", text, &env()).unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "quoted # not a comment\n1"),
            ("D", "${A} literal"),
            ("E", "/home/duckie/x"),
            ("F", "multi\nline"),
            ("FROM_ENV", "yes"),
            ("G", ""),
            ("H", "a#b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("x.env", "A=1\n2B=3\n", &env()).unwrap_err();
        assert!(e.to_string().starts_with("x.env:2:1: "), "{e}");
        let e = parse("x.env", "A=\"open\n", &env()).unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = parse("x.env", "A=${B:?needs B}\n", &env()).unwrap_err();
        assert!(e.to_string().contains("needs B"), "{e}");
    }
}
