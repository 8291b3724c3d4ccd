//! Variable expansion and word splitting with BuildKit's rules (a port of
//! `frontend/dockerfile/shell/lex.go`).
//!
//! Owns: `$V`, `${V}`, the `${V:-w}` `${V-w}` `${V:+w}` `${V+w}` `${V:?m}` `${V?m}` modifiers, the
//! newer `${V#p}` `${V##p}` `${V%p}` `${V%%p}` `${V/p/r}` `${V//p/r}` forms, quote removal
//! (`'…'` literal, `"…"` keeps `$` expansion and only `\"`, `\\`, `\$` escapes) and word
//! splitting after expansion. It does not own *which* instruction fields are expanded: that is
//! [`super::instructions`]. Shell-form RUN/CMD/ENTRYPOINT are never passed through here; the
//! shell in the container does its own expansion.
//!
//! Deliberate differences from lex.go, each on input no real Dockerfile relies on:
//! * lex.go shares one word buffer between nested `${…}` scans, so `ProcessWords("a${X:-b}c")`
//!   loses the `a`; we keep a buffer per scan and return `["abc"]`.
//! * `${V/p/r}` inserts `r` literally; Go's `ReplaceAllString` would also expand `$1`-style
//!   templates in `r`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

mod pattern;

use pattern::{ShellPattern, trim_prefix, trim_suffix};

/// A source of variable values for expansion.
///
/// Implemented for `HashMap<String, String>`, `BTreeMap<String, String>` and [`NoEnv`]. Keys
/// are case-sensitive (Linux semantics).
pub trait Env {
    /// The value of `name`, or `None` when it is unset (an empty value is *set*).
    fn lookup(&self, name: &str) -> Option<String>;
}

impl Env for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn lookup(&self, name: &str) -> Option<String> {
        (**self).lookup(name)
    }
}

/// An environment where nothing is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn lookup(&self, _name: &str) -> Option<String> {
        None
    }
}

/// What went wrong while expanding a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandErrorKind {
    /// `${` without its closing brace.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${}`, `${:…}`, `${{…}`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// `${V/p` without the second `/`.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// A modifier we (and BuildKit) do not support, such as `${V:=w}`.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${V?msg}` with `V` unset, or `${V:?msg}` with `V` unset or empty.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The user's message, or the default one.
        message: String,
    },
    /// A quote that is never closed.
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(&'static str),
    /// A bad `#`, `%` or `/` pattern, such as an escape of an ordinary character.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        /// The pattern as written.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// A word that could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process `{input}`: {kind}")]
pub struct ExpandError {
    /// The word as written.
    pub input: String,
    /// What went wrong.
    pub kind: ExpandErrorKind,
}

/// The result of one expansion, with the variables it looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word, quotes removed, spaces between words kept.
    pub value: String,
    /// The expanded text split into words (quoted spaces do not split).
    pub words: Vec<String>,
    /// Variables that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Variables that were referenced and unset (useful for lint warnings).
    pub unmatched: BTreeSet<String>,
}

/// The expander: an escape character plus the switches BuildKit uses in different places.
///
/// The default is what instruction expansion uses: escape `\`, quotes processed and removed,
/// unset variables expand to the empty string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lex {
    /// The escape character (`\` or `` ` ``, from the `# escape=` directive).
    pub escape: char,
    /// Keep quote characters in the output (they still group words).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters (used for heredoc bodies).
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written (`$X`, `${X:-y}`).
    pub skip_unset_env: bool,
}

impl Default for Lex {
    fn default() -> Self {
        Lex::new('\\')
    }
}

type Result<T> = std::result::Result<T, ExpandErrorKind>;

impl Lex {
    /// A lexer with the given escape character and every switch off.
    pub fn new(escape: char) -> Lex {
        Lex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` as one word (BuildKit `ProcessWord`).
    pub fn process_word(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> std::result::Result<String, ExpandError> {
        self.process(word, env).map(|e| e.value)
    }

    /// Expands `word` and splits the result into words (BuildKit `ProcessWords`).
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> std::result::Result<Vec<String>, ExpandError> {
        self.process(word, env).map(|e| e.words)
    }

    /// Expands `word`, returning the value, the words and the variables looked at.
    pub fn process(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> std::result::Result<Expansion, ExpandError> {
        let mut sw = ShellWord {
            lex: *self,
            chars: word.chars().collect(),
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            Ok((value, words)) => Ok(Expansion {
                value,
                words,
                matched: sw.matched,
                unmatched: sw.unmatched,
            }),
            Err(kind) => Err(ExpandError {
                input: word.to_string(),
                kind,
            }),
        }
    }
}

struct ShellWord<'a> {
    lex: Lex,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Env,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

/// Word accumulation: characters that came from expansion split on whitespace, characters
/// that came from quotes or escapes do not.
#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.chars.get(self.pos).copied();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>)> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn process_stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                '<' => {
                    let tmp = self.process_possible_heredoc();
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '\'' if !self.lex.skip_process_quotes => {
                    let tmp = self.process_single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '"' if !self.lex.skip_process_quotes => {
                    let tmp = self.process_double_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                _ => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape character escapes the next one, except at the end.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        match stop {
            Some('\'') => Err(ExpandErrorKind::Unterminated("single-quote")),
            Some('"') => Err(ExpandErrorKind::Unterminated("double-quote")),
            Some('}') => Err(ExpandErrorKind::Unterminated("}")),
            Some('/') => Err(ExpandErrorKind::Unterminated("/")),
            Some(_) => Err(ExpandErrorKind::Unterminated("character")),
            None => Ok((result, words.finish())),
        }
    }

    fn process_single_quote(&mut self) -> Result<String> {
        // Everything up to the next ' is literal; a ' cannot be escaped inside.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ExpandErrorKind::Unterminated("single-quote")),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String> {
        // Everything up to the next unescaped " is literal except `$`; the escape character
        // only escapes `"`, `$` and itself.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ExpandErrorKind::Unterminated("double-quote")),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(_) => {
                    let mut ch = self.next().expect("peeked");
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // An escape at the very end is dropped.
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                ch = self.next().expect("peeked");
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let v = self.env.lookup(name);
        if v.is_some() {
            self.matched.insert(name.to_string());
        } else {
            self.unmatched.insert(name.to_string());
        }
        v
    }

    fn process_dollar(&mut self) -> Result<String> {
        self.next(); // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next(); // '{'
        match self.peek() {
            None => return Err(ExpandErrorKind::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let ch = self.next();
        let mut modifier: String = ch.map(String::from).unwrap_or_else(|| "\u{FFFD}".into());
        match ch {
            Some('}') => {
                return Ok(match self.get_env(&name) {
                    Some(v) => v,
                    None if self.lex.skip_unset_env => format!("${{{name}}}"),
                    None => String::new(),
                });
            }
            Some('/') => return self.process_replace(&name),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {}
            _ => return Err(ExpandErrorKind::UnsupportedModifier(modifier)),
        }
        let mut op = ch;
        let null_is_unset = op == Some(':');
        if null_is_unset {
            op = self.next();
            modifier.push(op.unwrap_or('\u{FFFD}'));
        }
        let raw = matches!(op, Some('#' | '%'));
        if null_is_unset && raw {
            return Err(ExpandErrorKind::UnsupportedModifier(modifier));
        }
        let word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(_) if self.peek().is_none() => return Err(ExpandErrorKind::MissingBrace),
            Err(e) => return Err(e),
        };
        let value = self.get_env(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let empty_or_unset = value.is_none() || (null_is_unset && value.as_deref() == Some(""));
        match op {
            Some('-') => Ok(if empty_or_unset {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if empty_or_unset { String::new() } else { word }),
            Some('?') => {
                let default = match &value {
                    None => "is not allowed to be unset",
                    Some(v) if null_is_unset && v.is_empty() => "is not allowed to be empty",
                    Some(v) => return Ok(v.clone()),
                };
                let message = if word.is_empty() {
                    default.to_string()
                } else {
                    word
                };
                Err(ExpandErrorKind::Required { name, message })
            }
            Some(c @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                let (greedy, pattern) = match word.strip_prefix(c) {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, word),
                };
                if c == '%' {
                    trim_suffix(&pattern, &value, greedy)
                } else {
                    trim_prefix(&pattern, &value, greedy)
                }
            }
            _ => Err(ExpandErrorKind::UnsupportedModifier(modifier)),
        }
    }

    fn process_replace(&mut self, name: &str) -> Result<String> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(_) if self.peek().is_none() => return Err(ExpandErrorKind::MissingSlash),
            Err(e) => return Err(e),
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(_) if self.peek().is_none() => return Err(ExpandErrorKind::MissingBrace),
            Err(e) => return Err(e),
        };
        let value = self.get_env(name);
        let Some(value) = value.or_else(|| (!self.lex.skip_unset_env).then(String::new)) else {
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        };
        let pat = ShellPattern::compile(&pattern, true).map_err(|reason| {
            ExpandErrorKind::InvalidPattern {
                pattern: pattern.clone(),
                reason,
            }
        })?;
        Ok(pat.replace(&value, &replacement, all))
    }

    fn process_name(&mut self) -> String {
        // A name is letters, digits and `_`; a leading digit reads all digits (positional
        // parameter), and one special parameter character is a name by itself.
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(|c| c.is_ascii_digit()) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next(); // '<'
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.next();
        // `<< EOF` is one word: the blanks after `<<` stay with it.
        let mut out = String::from("<<");
        while let Some(ch) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            out.push(ch);
            self.next();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mandatory_vars() {
        let lex = Lex::default();
        let set = env(&[("VAR", "plain"), ("ARG", "x")]);
        let empty = env(&[("VAR", ""), ("ARG", "x")]);
        let unset = env(&[("ARG", "x")]);
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        assert_eq!(lex.process_word(no_empty, &set).unwrap(), "plain");
        let e = lex.process_word(no_empty, &empty).unwrap_err();
        assert!(e.to_string().contains("message herex"), "{e}");
        assert!(
            lex.process_word(no_empty, &unset)
                .unwrap_err()
                .to_string()
                .contains("message herex")
        );
        assert_eq!(lex.process_word(no_unset, &set).unwrap(), "plain");
        assert_eq!(lex.process_word(no_unset, &empty).unwrap(), "");
        assert!(
            lex.process_word(no_unset, &unset)
                .unwrap_err()
                .to_string()
                .contains("message herex")
        );
        let e = lex.process_word("${X:?}", &NoEnv).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to process `${X:?}`: X: is not allowed to be unset"
        );
    }

    /// Cases from lex_test.go `TestProcessWithMatches`, in our own table form:
    /// (input, env, expected value or None for an error, matched, unmatched).
    /// One expansion case: input, variables, the value (`None`: an error), the variables it
    /// found and those it did not.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
        &'static [&'static str],
        &'static [&'static str],
    );

    fn check_cases(cases: &[Case]) {
        let lex = Lex::default();
        for (input, vars, want, matched, unmatched) in cases {
            let r = lex.process(input, &env(vars));
            match want {
                None => assert!(r.is_err(), "{input}: expected an error, got {r:?}"),
                Some(want) => {
                    let r = r.unwrap_or_else(|e| panic!("{input}: {e}"));
                    assert_eq!(r.value, *want, "{input}");
                    let m: Vec<&str> = r.matched.iter().map(String::as_str).collect();
                    let u: Vec<&str> = r.unmatched.iter().map(String::as_str).collect();
                    let mut em = matched.to_vec();
                    em.sort();
                    let mut eu = unmatched.to_vec();
                    eu.sort();
                    assert_eq!(m, em, "{input} matched");
                    assert_eq!(u, eu, "{input} unmatched");
                }
            }
        }
    }

    #[test]
    fn process_with_matches() {
        let fb: &[(&str, &str)] = &[("FOO", "xxx"), ("BAR", "")];
        check_cases(&[
            ("x", &[("DUMMY", "dummy")], Some("x"), &[], &[]),
            (
                "x ${UNUSED}",
                &[("DUMMY", "dummy")],
                Some("x "),
                &[],
                &["UNUSED"],
            ),
            ("x ${FOO}", &[("FOO", "y")], Some("x y"), &["FOO"], &[]),
            (
                "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
                fb,
                Some("xxx  ccc"),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            (
                "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
                fb,
                Some("xxx bbb ccc"),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            ("${FOO:-}", fb, Some("xxx"), &["FOO"], &[]),
            ("${FOO:-}", &[], Some(""), &[], &["FOO"]),
            (
                "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
                fb,
                Some("aaa bbb "),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            (
                "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
                fb,
                Some("aaa  "),
                &["FOO", "BAR"],
                &["BAZ"],
            ),
            ("${FOO?aaa}", fb, Some("xxx"), &["FOO"], &[]),
            ("${BAR?bbb}", fb, Some(""), &["BAR"], &[]),
            ("${BAZ?ccc}", fb, None, &[], &[]),
            ("${FOO:?aaa}", fb, Some("xxx"), &["FOO"], &[]),
            ("${BAR:?bbb}", fb, None, &[], &[]),
            ("${BAZ:?ccc}", fb, None, &[], &[]),
            ("${BAZ:?}", fb, None, &[], &[]),
            ("${FOO=aaa}", fb, None, &[], &[]),
            ("${FOO=:aaa}", fb, None, &[], &[]),
            ("${FOO=}", &[], None, &[], &[]),
        ]);
    }

    /// The `${V#p}` `${V%p}` `${V/p/r}` forms.
    #[test]
    fn process_with_matches_patterns() {
        check_cases(&[
            (
                "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
                &[("FOO", "()[]{}^$.*?|\\x")],
                Some("x"),
                &["FOO"],
                &[],
            ),
            (
                "${FOO%%\\**}",
                &[("FOO", "xx**")],
                Some("xx"),
                &["FOO"],
                &[],
            ),
            ("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y"), &["FOO"], &[]),
            ("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            (
                "${FOO#$BAR}",
                &[("FOO", "xxyy"), ("BAR", "x")],
                Some("xyy"),
                &["FOO", "BAR"],
                &[],
            ),
            (
                "${FOO#$BAR}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("xxyy"),
                &["FOO", "BAR"],
                &[],
            ),
            ("${FOO#}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            ("${FOO##*x}", &[("FOO", "xxyy")], Some("yy"), &["FOO"], &[]),
            ("${FOO##}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            ("${FOO#?\\?}", &[("FOO", "???y")], Some("?y"), &["FOO"], &[]),
            (
                "${ABC:-.}${FOO%x}${ABC:-.}",
                &[("FOO", "xxyy")],
                Some(".xxyy."),
                &["FOO"],
                &["ABC"],
            ),
            (
                "${FOO%%\\**\\*}",
                &[("FOO", "a***yy*")],
                Some("a"),
                &["FOO"],
                &[],
            ),
            ("${FOO%}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            (
                "${FOO%%$BAR}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("xxyy"),
                &["FOO", "BAR"],
                &[],
            ),
            ("${FOO:#}", &[], None, &[], &[]),
            ("${FOO:##}", &[], None, &[], &[]),
            ("${FOO:%}", &[], None, &[], &[]),
            ("${FOO:%%}", &[], None, &[], &[]),
            (
                "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
                &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
                Some("/foo.*/*.txt - /foo..*.txt"),
                &["FOO", "NEEDLE"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
                Some("/tmp/bar.txt - /bar.txt"),
                &["FOO", "NEEDLE"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "/a/foo/b/c.txt"),
                    ("NEEDLE", "/?/"),
                    ("REPLACEMENT", "/"),
                ],
                Some("/foo/b/c.txt - /foo/c.txt"),
                &["FOO", "NEEDLE", "REPLACEMENT"],
                &[],
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "http://google.de"),
                    ("NEEDLE", "http://"),
                    ("REPLACEMENT", "https://"),
                ],
                Some("https://google.de"),
                &["FOO", "NEEDLE", "REPLACEMENT"],
                &[],
            ),
            (
                "${FOO//\\//\\/}",
                &[("FOO", "/tmp/foo.txt")],
                Some("\\/tmp\\/foo.txt"),
                &["FOO"],
                &[],
            ),
            (
                "${FOO/$BAR/ww}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("wwxxyy"),
                &["FOO", "BAR"],
                &[],
            ),
            ("${FOO//ww}", &[("FOO", "xxyy")], None, &[], &[]),
            ("${FOO//}", &[("FOO", "xxyy")], None, &[], &[]),
            ("${FOO///}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            ("${FOO///}", &[], Some(""), &[], &["FOO"]),
        ]);
    }

    #[test]
    fn platform_style_names() {
        let release = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let lex = Lex::default();
        let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
        let mut e = env(&base);
        e.insert("TARGETARCH".into(), "arm".into());
        e.insert("TARGETVARIANT".into(), "v7".into());
        assert_eq!(
            lex.process_word(release, &e).unwrap(),
            "something-v1.2.3.linux-arm-v7.tar.gz"
        );
        e.insert("TARGETARCH".into(), "arm64".into());
        e.insert("TARGETVARIANT".into(), String::new());
        assert_eq!(
            lex.process_word(release, &e).unwrap(),
            "something-v1.2.3.linux-arm64.tar.gz"
        );
        e.remove("TARGETVARIANT");
        assert_eq!(
            lex.process_word(release, &e).unwrap(),
            "something-v1.2.3.linux-arm64.tar.gz"
        );
    }

    #[test]
    fn raw_modes_keep_what_they_say() {
        let lex = Lex {
            raw_quotes: true,
            skip_unset_env: true,
            ..Lex::default()
        };
        assert_eq!(
            lex.process_word(r#"a"b c"$X ${Y:-z}"#, &NoEnv).unwrap(),
            r#"a"b c"$X ${Y:-z}"#
        );
        let lex = Lex {
            skip_process_quotes: true,
            ..Lex::default()
        };
        assert_eq!(
            lex.process_word(r#"'$A' "b""#, &env(&[("A", "1")]))
                .unwrap(),
            r#"'1' "b""#
        );
        let lex = Lex::new('`');
        assert_eq!(lex.process_word(r"C:\dir`$X", &NoEnv).unwrap(), r"C:\dir$X");
    }

    #[test]
    fn nested_expansion_keeps_preceding_word() {
        // Deviation from lex.go's shared buffer (see the module docs).
        let lex = Lex::default();
        assert_eq!(
            lex.process_words("a${X:-b}c d", &NoEnv).unwrap(),
            vec!["abc", "d"]
        );
    }
}
