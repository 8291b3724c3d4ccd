//! One logical line → a [`Node`]: offsets in the joined line mapped back to source positions,
//! parser directives, flag words, and the argument shapes (words, `key=value` pairs, JSON
//! arrays). [`super::parse`] joins continuation lines and reads heredoc bodies; this is what it
//! does with each logical line.

use super::*;

/// Maps byte offsets in a joined logical line back to source positions.
#[derive(Default)]
pub(super) struct LineMap {
    /// (offset in the logical line, source line, source column of that offset)
    pieces: Vec<(usize, usize, usize)>,
}

impl LineMap {
    pub(super) fn push(&mut self, buf: &str, line: usize, column: usize) {
        self.pieces.push((buf.len(), line, column));
    }

    pub(super) fn position(&self, buf: &str, off: usize) -> Position {
        let idx = self
            .pieces
            .partition_point(|p| p.0 <= off)
            .saturating_sub(1);
        let Some(&(start, line, column)) = self.pieces.get(idx) else {
            return Position { line: 1, column: 1 };
        };
        let off = off.min(buf.len());
        Position {
            line,
            column: column + buf.get(start..off).map_or(0, |s| s.chars().count()),
        }
    }
}

/// Parser directive state: directives are only recognised until the first line that is not
/// one (a blank line, another comment, an instruction).
#[derive(Default)]
pub(super) struct DirectiveParser {
    done: bool,
    seen: Vec<String>,
}

impl DirectiveParser {
    pub(super) fn parse_line(&mut self, line: &str) -> Result<Option<(String, String)>, ErrorKind> {
        if self.done {
            return Ok(None);
        }
        let Some((key, value)) = line
            .strip_prefix('#')
            .and_then(|l| split_directive(l.trim_start()))
        else {
            self.done = true;
            return Ok(None);
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&key) {
            return Err(ErrorKind::DuplicateDirective(key));
        }
        self.seen.push(key.clone());
        Ok(Some((key, value.to_string())))
    }
}

/// `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` by hand.
pub(super) fn split_directive(s: &str) -> Option<(&str, &str)> {
    let is_ws = |c: char| matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ');
    let name_len = s
        .char_indices()
        .take_while(|&(i, c)| {
            if i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric()
            }
        })
        .count();
    if name_len == 0 {
        return None;
    }
    let (name, rest) = s.split_at(name_len);
    let rest = rest.trim_start_matches(is_ws).strip_prefix('=')?;
    let value = rest.trim_start_matches(is_ws).trim_end_matches(is_ws);
    if !value.is_empty() {
        return Some((name, value));
    }
    // All blanks after `=`: the lazy `.+?` takes the last one (what Go's regexp does).
    let last = rest.chars().last()?;
    Some((name, &rest[rest.len() - last.len_utf8()..]))
}

pub(super) type NodeResult = Result<Node, (Position, ErrorKind)>;

/// Splits a logical line into keyword, flags and arguments and builds its node. `base` is the
/// whole logical line (`line` is a subslice of it) so offsets can be turned into positions.
pub(super) fn node_from_line(
    base: &str,
    line: &str,
    escape: char,
    pos: &dyn Fn(usize) -> Position,
) -> NodeResult {
    let off = |s: &str| s.as_ptr() as usize - base.as_ptr() as usize;
    let trimmed = line.trim();
    let is_sep = |c: char| matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ');
    let (keyword, after) = match trimmed.find(is_sep) {
        Some(k) => (&trimmed[..k], Some(trimmed[k..].trim_start_matches(is_sep))),
        None => (trimmed, None),
    };
    let (args, flags) = match after {
        Some(after) => extract_flags(after, escape),
        None => ("", Vec::new()),
    };
    let args = args.trim();
    let start = pos(off(trimmed));
    let word = |s: &str, value: String| Word {
        value,
        pos: pos(off(s)),
    };
    let flags = flags
        .into_iter()
        .map(|(o, value)| Word {
            value,
            pos: pos(off(after.unwrap_or_default()) + o),
        })
        .collect();
    let mut json = false;
    let at = |s: &str| pos(off(s));
    let words_at = |v: Vec<(usize, String)>, s: &str| -> Vec<Word> {
        v.into_iter()
            .map(|(o, value)| Word {
                value,
                pos: pos(off(s) + o),
            })
            .collect()
    };
    let lower = keyword.to_ascii_lowercase();
    let args = match lower.as_str() {
        "add" | "copy" | "volume" => match parse_json(args).map_err(|k| (at(args), k))? {
            Some(v) => {
                json = true;
                Args::Words(words_at(v, args))
            }
            None => Args::Words(
                split_whitespace(args)
                    .into_iter()
                    .map(|s| word(s, s.to_string()))
                    .collect(),
            ),
        },
        "cmd" | "entrypoint" | "run" | "shell" => {
            let (a, j) = maybe_json(args).map_err(|k| (at(args), k))?;
            json = j;
            Args::Words(words_at(a, args))
        }
        "arg" => Args::Words(words_at(parse_words(args, escape), args)),
        "env" | "label" => {
            Args::Pairs(parse_name_val(args, &lower, escape, &word).map_err(|k| (at(args), k))?)
        }
        "expose" | "from" => Args::Words(
            split_whitespace(args)
                .into_iter()
                .map(|s| word(s, s.to_string()))
                .collect(),
        ),
        "healthcheck" => {
            if args.is_empty() {
                Args::Words(Vec::new())
            } else {
                let sep = args.find(char::is_whitespace).unwrap_or(args.len());
                let typ = &args[..sep];
                let rest = args[sep..].trim_start();
                let (a, j) = maybe_json(rest).map_err(|k| (at(rest), k))?;
                json = j;
                let mut v = vec![word(typ, typ.to_string())];
                v.extend(words_at(a, rest));
                Args::Words(v)
            }
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if args.is_empty() {
                Args::Words(Vec::new())
            } else {
                Args::Words(vec![word(args, args.to_string())])
            }
        }
        "onbuild" => {
            if args.is_empty() {
                Args::Words(Vec::new())
            } else {
                Args::Sub(Box::new(node_from_line(base, args, escape, pos)?))
            }
        }
        _ => Args::Unknown(args.to_string()),
    };
    Ok(Node {
        keyword: keyword.to_string(),
        span: Span {
            start,
            end_line: start.line,
        },
        flags,
        args,
        json,
        heredocs: Vec::new(),
        original: line.to_string(),
        comments: Vec::new(),
    })
}

/// Splits on runs of `[\t\v\f\r ]` (BuildKit's `reWhitespace`); `s` is already trimmed.
pub(super) fn split_whitespace(s: &str) -> Vec<&str> {
    s.split(['\t', '\x0b', '\x0c', '\r', ' '])
        .filter(|w| !w.is_empty())
        .collect()
}

/// Reads leading `--flag` words. Returns the rest of the line and each flag with its byte
/// offset in `line`. Quotes are removed and the escape character escapes the next character
/// in flag words; a lone `--` ends the flags.
pub(super) fn extract_flags(line: &str, escape: char) -> (&str, Vec<(usize, String)>) {
    let mut flags = Vec::new();
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut k = 0;
    loop {
        while k < chars.len() && chars[k].1.is_whitespace() {
            k += 1;
        }
        if k == chars.len() {
            return ("", flags);
        }
        let start = chars[k].0;
        if !line[start..].starts_with("--") {
            return (&line[start..], flags);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut quoted = false;
        while k < chars.len() {
            let ch = chars[k].1;
            if quote.is_none() && ch.is_whitespace() {
                break;
            }
            k += 1;
            match quote {
                None if ch == '\'' || ch == '"' => {
                    quote = Some(ch);
                    quoted = true;
                }
                Some(q) if ch == q => quote = None,
                _ if ch == escape => {
                    if k == chars.len() {
                        quote = None;
                        continue; // an escape at the very end is dropped
                    }
                    word.push(chars[k].1);
                    k += 1;
                }
                _ => word.push(ch),
            }
        }
        if word == "--" {
            let rest = chars.get(k).map_or("", |&(o, _)| &line[o..]);
            return (rest, flags);
        }
        if quoted || !word.is_empty() {
            flags.push((start, word));
        }
    }
}

/// Splits into words on blanks outside quotes; quotes and escapes are kept in the words (they
/// are removed later by expansion). Returns each word with its byte offset.
pub(super) fn parse_words(rest: &str, escape: char) -> Vec<(usize, String)> {
    let mut words = Vec::new();
    let chars: Vec<(usize, char)> = rest.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        while k < chars.len() && chars[k].1.is_whitespace() {
            k += 1;
        }
        if k == chars.len() {
            break;
        }
        let start = chars[k].0;
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        while k < chars.len() {
            let ch = chars[k].1;
            match quote {
                None => {
                    if ch.is_whitespace() {
                        break;
                    }
                    if ch == '\'' || ch == '"' {
                        quote = Some(ch);
                        blank_ok = true;
                    } else if ch == escape {
                        if k + 1 == chars.len() {
                            k += 1;
                            continue; // escape at end of line is dropped
                        }
                        word.push(ch);
                        k += 1;
                    }
                    word.push(chars[k].1);
                    k += 1;
                }
                Some(q) => {
                    if ch == q {
                        quote = None;
                    } else if ch == escape && q != '\'' {
                        if k + 1 == chars.len() {
                            quote = None;
                            k += 1;
                            continue;
                        }
                        word.push(ch);
                        k += 1;
                    }
                    word.push(chars[k].1);
                    k += 1;
                }
            }
        }
        if blank_ok || !word.is_empty() {
            words.push((start, word));
        }
    }
    words
}

/// ENV/LABEL arguments: either the legacy `KEY value with spaces` (when the first word has no
/// `=`) or `key=value` words.
pub(super) fn parse_name_val(
    rest: &str,
    instruction: &str,
    escape: char,
    word: &dyn Fn(&str, String) -> Word,
) -> Result<Vec<Pair>, ErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.1.contains('=') {
        let sep = rest.find(['\t', '\x0b', '\x0c', '\r', ' ']);
        let Some(sep) = sep else {
            return Err(ErrorKind::BadArguments(format!(
                "{} must have two arguments",
                instruction.to_ascii_uppercase()
            )));
        };
        let key = &rest[..sep];
        let value = rest[sep..].trim_start_matches(['\t', '\x0b', '\x0c', '\r', ' ']);
        return Ok(vec![Pair {
            key: word(key, key.to_string()),
            value: word(value, value.to_string()),
            legacy: true,
        }]);
    }
    let mut pairs = Vec::new();
    for (o, w) in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(ErrorKind::BadArguments(format!(
                "syntax error - can't find = in `{w}`. Must be of the form: name=value"
            )));
        };
        let key_src = &rest[o..];
        let key = word(key_src, k.to_string());
        // The value starts after the first `=` in the source word.
        let value_src = key_src.find('=').map_or(key_src, |e| &key_src[e + 1..]);
        pairs.push(Pair {
            key,
            value: word(value_src, v.to_string()),
            legacy: false,
        });
    }
    Ok(pairs)
}

/// `Ok(Some)` for a JSON array of strings (each with the byte offset of its opening quote),
/// `Ok(None)` for anything that is not valid JSON (it is then the shell form), an error for
/// valid JSON with non-string elements.
pub(super) fn parse_json(rest: &str) -> Result<Option<Vec<(usize, String)>>, ErrorKind> {
    let lead = rest.len() - rest.trim_start().len();
    let body = &rest[lead..];
    if !body.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(body) else {
        return Ok(None);
    };
    let mut strings = Vec::new();
    for v in values {
        match v {
            serde_json::Value::String(s) => strings.push(s),
            _ => return Err(ErrorKind::NotStringArray),
        }
    }
    // Offsets of the opening quotes, in order.
    let mut offsets = Vec::new();
    let mut in_str = false;
    let mut esc = false;
    for (i, c) in body.char_indices() {
        if in_str {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            offsets.push(lead + i);
        }
    }
    Ok(Some(
        strings
            .into_iter()
            .zip(offsets)
            .map(|(s, o)| (o, s))
            .collect(),
    ))
}

/// RUN/CMD/ENTRYPOINT/SHELL: a JSON array, or else the whole rest as one string.
pub(super) fn maybe_json(rest: &str) -> Result<(Vec<(usize, String)>, bool), ErrorKind> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match parse_json(rest)? {
        Some(v) => (v, true),
        None => (vec![(0, rest.to_string())], false),
    })
}
