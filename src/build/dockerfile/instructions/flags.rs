//! Instruction flags (`--name=value`), as BuildKit's `bflag`: each instruction declares the
//! flags it takes and their kinds; anything else is an error with a suggestion.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagKind {
    Bool,
    String,
    Strings,
}

/// Parsed `--flags` of one instruction (BuildKit's `BFlags`).
pub(super) struct Flags {
    values: Vec<(String, FlagValue)>,
}

pub(super) enum FlagValue {
    Bool(bool),
    Str(Word),
    Strs(Vec<Word>),
}

impl Flags {
    pub(super) fn parse(
        instruction: &str,
        words: &[Word],
        specs: &[(&str, FlagKind)],
    ) -> Fallible<Flags> {
        let mut values: Vec<(String, FlagValue)> = Vec::new();
        for w in words {
            let err = |msg: String| (w.pos, ErrorKind::BadFlag(msg));
            let Some(body) = w.value.strip_prefix("--") else {
                return Err(err(format!("arg should start with -- : {}", w.value)));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(_, kind)) = specs.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = specs.iter().map(|(n, _)| *n).collect();
                let suggestion = (!names.is_empty())
                    .then(|| suggest_exact(name, &names))
                    .flatten();
                return Err((
                    w.pos,
                    ErrorKind::UnknownFlag {
                        flag: name.to_string(),
                        instruction: instruction.to_string(),
                        suggestion: suggestion.map(|s| format!("--{s}")),
                    },
                ));
            };
            let existing = values.iter().position(|(n, _)| n == name);
            if existing.is_some() && kind != FlagKind::Strings {
                return Err(err(format!("duplicate flag specified: --{name}")));
            }
            let word = |v: &str| Word {
                value: v.to_string(),
                pos: w.pos,
            };
            let v = match (kind, value) {
                (FlagKind::Bool, Some("")) => {
                    return Err(err(format!("missing a value on flag: --{name}")));
                }
                (FlagKind::Bool, None) => FlagValue::Bool(true),
                (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => FlagValue::Bool(true),
                    "false" => FlagValue::Bool(false),
                    _ => {
                        return Err(err(format!(
                            "expecting boolean value for flag --{name}, not: {v}"
                        )));
                    }
                },
                (_, None) => return Err(err(format!("missing a value on flag: --{name}"))),
                (FlagKind::String, Some(v)) => FlagValue::Str(word(v)),
                (FlagKind::Strings, Some(v)) => {
                    if let Some(i) = existing {
                        if let FlagValue::Strs(list) = &mut values[i].1 {
                            list.push(word(v));
                        }
                        continue;
                    }
                    FlagValue::Strs(vec![word(v)])
                }
            };
            values.push((name.to_string(), v));
        }
        Ok(Flags { values })
    }

    pub(super) fn take(&mut self, name: &str) -> Option<FlagValue> {
        let i = self.values.iter().position(|(n, _)| n == name)?;
        Some(self.values.remove(i).1)
    }

    pub(super) fn string(&mut self, name: &str) -> Option<Word> {
        match self.take(name) {
            Some(FlagValue::Str(w)) => Some(w),
            _ => None,
        }
    }

    pub(super) fn bool(&mut self, name: &str) -> Option<bool> {
        match self.take(name) {
            Some(FlagValue::Bool(b)) => Some(b),
            _ => None,
        }
    }

    pub(super) fn strings(&mut self, name: &str) -> Vec<Word> {
        match self.take(name) {
            Some(FlagValue::Strs(w)) => w,
            _ => Vec::new(),
        }
    }
}

/// Case-sensitive suggestion for flag names (BuildKit passes `caseSensitive=true`).
pub(super) fn suggest_exact(name: &str, candidates: &[&str]) -> Option<String> {
    if candidates.contains(&name) {
        return None;
    }
    suggest(name, candidates)
}
