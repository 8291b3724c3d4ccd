//! Shell patterns of the `${V#p}` `${V%p}` `${V/p/r}` forms: `*` and `?` wildcards with `\`
//! escapes, matched shortest or longest (lex.go's regexp translation, without the regexps).

use super::*;

/// One element of a compiled shell pattern (`*`, `?`, literal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
    Lit(char),
    /// `?`: any character but a newline (Go's `.`).
    Any,
    /// `*`: any run of characters but newlines.
    Star,
}

/// A `${V#p}`/`${V/p/r}` pattern: `*` and `?` wildcards, `\*`, `\?`, `\\` escapes.
#[derive(Debug, Clone)]
pub(super) struct ShellPattern {
    toks: Vec<Tok>,
    greedy: bool,
}

impl ShellPattern {
    pub(super) fn compile(
        pattern: &str,
        greedy: bool,
    ) -> std::result::Result<ShellPattern, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '\\' => match chars.get(i) {
                    // `}` and `/` are escaped for the `${}` syntax, not for the pattern.
                    Some('}' | '/') => {}
                    Some(&e @ ('*' | '?' | '\\')) => {
                        toks.push(Tok::Lit(e));
                        i += 1;
                    }
                    Some(e) => return Err(format!("invalid escape '\\{e}'")),
                    None => return Err("invalid escape at end of pattern".to_string()),
                },
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(ShellPattern { toks, greedy })
    }

    /// The end of the first match starting at `start`, in the preference order of a
    /// backtracking regex engine (greedy stars try longest first, lazy ones shortest first).
    pub(super) fn match_at(&self, s: &[char], start: usize) -> Option<usize> {
        let mut failed = std::collections::HashSet::new();
        self.match_from(s, 0, start, &mut failed)
    }

    fn match_from(
        &self,
        s: &[char],
        ti: usize,
        pos: usize,
        failed: &mut std::collections::HashSet<(usize, usize)>,
    ) -> Option<usize> {
        if ti == self.toks.len() {
            return Some(pos);
        }
        if failed.contains(&(ti, pos)) {
            return None;
        }
        let r = match self.toks[ti] {
            Tok::Lit(c) => (s.get(pos) == Some(&c))
                .then_some(())
                .and_then(|_| self.match_from(s, ti + 1, pos + 1, failed)),
            Tok::Any => match s.get(pos) {
                Some(&c) if c != '\n' => self.match_from(s, ti + 1, pos + 1, failed),
                _ => None,
            },
            Tok::Star => {
                let max = s[pos..].iter().take_while(|&&c| c != '\n').count();
                if self.greedy {
                    (0..=max)
                        .rev()
                        .find_map(|k| self.match_from(s, ti + 1, pos + k, failed))
                } else {
                    (0..=max).find_map(|k| self.match_from(s, ti + 1, pos + k, failed))
                }
            }
        };
        if r.is_none() {
            failed.insert((ti, pos));
        }
        r
    }

    /// Leftmost match at or after `from`: `(start, end)` in chars.
    pub(super) fn find(&self, s: &[char], from: usize) -> Option<(usize, usize)> {
        (from..=s.len()).find_map(|start| self.match_at(s, start).map(|end| (start, end)))
    }

    pub(super) fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let s: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut copied = 0; // chars of `s` already copied to `out`
        let mut search = 0;
        let mut last_match_end = None;
        while search <= s.len() {
            let Some((start, end)) = self.find(&s, search) else {
                break;
            };
            // Like Go's ReplaceAll: an empty match right after the previous match is skipped.
            if !(start == end && last_match_end == Some(start)) {
                out.extend(&s[copied..start]);
                out.push_str(replacement);
                copied = end;
                last_match_end = Some(end);
                if !all {
                    break;
                }
            }
            search = if end > start { end } else { start + 1 };
        }
        out.extend(&s[copied.min(s.len())..]);
        out
    }
}

pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String> {
    let pat = ShellPattern::compile(pattern, greedy).map_err(|reason| {
        ExpandErrorKind::InvalidPattern {
            pattern: pattern.to_string(),
            reason,
        }
    })?;
    let s: Vec<char> = value.chars().collect();
    Ok(match pat.match_at(&s, 0) {
        Some(end) => s[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// Reverses a pattern, keeping each `\x` escape in front of the character it escapes.
pub(super) fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let n = p.len();
    let mut out = vec!['\0'; n];
    let mut i = 0;
    while i < n {
        let o = n - 1 - i;
        if p[i] == '\\' && i != n - 1 {
            out[o - 1] = '\\';
            out[o] = p[i + 1];
            i += 2;
        } else {
            out[o] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String> {
    // Shortest/longest *suffix* = shortest/longest prefix of the reversed string.
    let rev_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &rev_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_pattern_keeps_escapes() {
        for (p, want) in [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
        ] {
            assert_eq!(reverse_pattern(p), want, "{p}");
        }
    }

    #[test]
    fn invalid_patterns() {
        for p in ["\\", "\\x", "\\\\\\"] {
            assert!(ShellPattern::compile(p, true).is_err(), "{p}");
        }
        assert!(ShellPattern::compile("(()[]{\\}^$.\\*\\?|\\\\", true).is_ok());
    }
}
