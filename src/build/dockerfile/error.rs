//! Errors of the Dockerfile front end. Every one carries the file name the caller gave, the
//! 1-based line and the 1-based column (in characters) of the culprit, and renders as
//! `Dockerfile:LINE:COL: message` — the `file:line:col` form editors and terminals link.

use super::shell::ExpandError;

/// A 1-based position in the Dockerfile. Columns count characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, in characters.
    pub column: usize,
}

/// Where an instruction is: the line it starts on (with the column of its keyword) and the
/// last line it covers, including continuation lines and heredoc bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// Position of the instruction keyword.
    pub start: Position,
    /// Last line of the instruction (inclusive).
    pub end_line: usize,
}

/// What is wrong, without the location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// Nothing but comments and blank lines.
    #[error("file with no instructions")]
    NoInstructions,
    /// A parser directive given twice.
    #[error("only one `{0}` parser directive can be used")]
    DuplicateDirective(String),
    /// `# escape=` with something other than `\` or `` ` ``.
    #[error("invalid escape token `{0}`: must be `\\` or `` ` ``")]
    InvalidEscape(String),
    /// A heredoc whose delimiter line never comes.
    #[error("unterminated heredoc `{delimiter}` started on line {start_line}")]
    UnterminatedHeredoc {
        /// The delimiter word (`EOF`).
        delimiter: String,
        /// The line of the instruction that opened it.
        start_line: usize,
    },
    /// A heredoc word with an unbalanced quote (`<<'EOF`).
    #[error("invalid heredoc `{0}`")]
    InvalidHeredoc(String),
    /// An instruction name we do not know.
    #[error("unknown instruction: {name}{}", did_you_mean(.suggestion))]
    UnknownInstruction {
        /// The name as written.
        name: String,
        /// The closest known instruction, if one is close.
        suggestion: Option<String>,
    },
    /// A `--flag` the instruction does not take.
    #[error("unknown flag --{flag} for {instruction}{}", did_you_mean(.suggestion))]
    UnknownFlag {
        /// The flag name without dashes.
        flag: String,
        /// The instruction, upper case.
        instruction: String,
        /// The closest flag the instruction takes, if one is close.
        suggestion: Option<String>,
    },
    /// A flag given a value it cannot take, or given twice, or without a value.
    #[error("{0}")]
    BadFlag(String),
    /// Too few or too many arguments, or arguments of the wrong shape.
    #[error("{0}")]
    BadArguments(String),
    /// A JSON (exec form) array that contains something other than strings.
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    /// An instruction that only takes the JSON form got something else.
    #[error("{0} requires the arguments to be in JSON form")]
    NotJson(String),
    /// The first instruction is not `FROM` (or `ARG` before the first `FROM`).
    #[error(
        "{0} before the first FROM: a Dockerfile must start with FROM (ARG may come before it)"
    )]
    NoStage(String),
    /// Only ARGs (or nothing typed): no stage to build.
    #[error("no FROM instruction: a Dockerfile needs at least one stage")]
    NoFrom,
    /// A HEALTHCHECK duration that does not parse or is too small.
    #[error("invalid duration `{value}` for --{flag}: {reason}")]
    BadDuration {
        /// The flag (`interval`, `timeout`, …).
        flag: String,
        /// The value as written.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Variable expansion failed (`${X:?must be set}`, unbalanced quotes, …).
    #[error(transparent)]
    Expand(#[from] ExpandError),
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

/// A Dockerfile error at a location: `ci/Dockerfile.arm:3:1: unknown instruction: FORM (did you
/// mean FROM?)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {kind}")]
pub struct DockerfileError {
    /// The file name the caller passed in (not necessarily a path on disk).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl DockerfileError {
    /// An error in `file` at `pos`.
    pub fn new(file: &str, pos: Position, kind: ErrorKind) -> DockerfileError {
        DockerfileError {
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            kind,
        }
    }

    /// The location as a [`Position`].
    pub fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }
}

/// The closest candidate within edit distance 2 (case-insensitive), in the case of `value`
/// (BuildKit's `suggest.Search`). `None` when `value` is itself a candidate.
pub(crate) fn suggest(value: &str, candidates: &[&str]) -> Option<String> {
    let lower = value.to_lowercase();
    let mut best: Option<(&str, usize)> = None;
    for c in candidates {
        let cl = c.to_lowercase();
        if cl == lower {
            return None;
        }
        let d = levenshtein(&lower, &cl);
        if d < 3 && best.is_none_or(|(_, bd)| d < bd) {
            best = Some((c, d));
        }
    }
    let (c, _) = best?;
    Some(if value == value.to_lowercase() {
        c.to_lowercase()
    } else if value == value.to_uppercase() {
        c.to_uppercase()
    } else {
        c.to_string()
    })
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_follow_case() {
        let names = ["FROM", "RUN", "COPY"];
        assert_eq!(suggest("FORM", &names).as_deref(), Some("FROM"));
        assert_eq!(suggest("form", &names).as_deref(), Some("from"));
        assert_eq!(suggest("Form", &names).as_deref(), Some("FROM"));
        assert_eq!(suggest("from", &names), None);
        assert_eq!(suggest("HEALTHCHECK", &names), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn renders_file_line_col() {
        let e = DockerfileError::new(
            "ci/Dockerfile.arm",
            Position { line: 3, column: 1 },
            ErrorKind::UnknownInstruction {
                name: "FORM".into(),
                suggestion: Some("FROM".into()),
            },
        );
        assert_eq!(
            e.to_string(),
            "ci/Dockerfile.arm:3:1: unknown instruction: FORM (did you mean FROM?)"
        );
    }
}
