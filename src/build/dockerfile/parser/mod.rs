//! Dockerfile text → AST with positions (a port of BuildKit's `frontend/dockerfile/parser`).
//!
//! Owns the lexical layer: the UTF-8 BOM, parser directives (`# syntax=`, `# escape=`,
//! `# check=`), comments, line continuations with the escape character, heredoc bodies,
//! flag extraction (`--name=value` words before the arguments) and the per-instruction argument
//! shapes (JSON array or shell string, whitespace-separated words, `key=value` pairs, ONBUILD's
//! nested instruction). It does not know what instructions *mean* or which flags they take:
//! an unknown instruction parses fine here and is rejected by [`super::instructions`].
//!
//! Positions: every node has its start line, keyword column and end line (continuations and
//! heredoc bodies included); every argument and flag word has the line and column where it
//! starts in the source. Arguments of a JSON array point at their opening quote.
//!
//! Deliberate differences from BuildKit's parser:
//! * flag words are read by character; BuildKit reads them byte by byte and mangles non-ASCII
//!   flag values (`--label=é`).
//! * directive errors name the line of the directive (BuildKit's is one line early).

use super::error::{DockerfileError, ErrorKind, Position, Span};
use super::shell::{Lex, NoEnv};

mod line;

use line::{DirectiveParser, LineMap, node_from_line};

/// A word with the position of its first character in the source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word {
    /// The text, exactly as the parser leaves it (quotes kept, no expansion).
    pub value: String,
    /// Where it starts.
    pub pos: Position,
}

/// One `key=value` (or legacy `key value`) pair of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The key, as written.
    pub key: Word,
    /// The value, as written (quotes kept).
    pub value: Word,
    /// The legacy `ENV KEY value with spaces` form: the value is the rest of the line.
    pub legacy: bool,
}

/// The arguments of an instruction, in the shape its parser gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// A list of words: JSON array elements, whitespace-separated words, or one string holding
    /// the whole rest of the line (shell form). Empty when the instruction has no arguments.
    Words(Vec<Word>),
    /// ENV and LABEL pairs.
    Pairs(Vec<Pair>),
    /// ONBUILD's instruction.
    Sub(Box<Node>),
    /// The raw rest of the line of an instruction the parser does not know.
    Unknown(String),
}

/// A heredoc attached to RUN, COPY or ADD (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heredoc {
    /// The delimiter with quotes removed (`EOF` for `<<'EOF'`).
    pub name: String,
    /// The file descriptor of `3<<EOF`, 0 when none was written.
    pub fd: u32,
    /// Whether variables in the body are expanded (false when any part of the delimiter was
    /// quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body (see [`chomp_heredoc`]) and from the
    /// delimiter line.
    pub chomp: bool,
    /// The body: every line between the instruction and the delimiter, newlines included,
    /// tabs *not* yet stripped.
    pub content: String,
}

/// One instruction as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction name as written (`run`, `COPY`, `Form`).
    pub keyword: String,
    /// Where it is.
    pub span: Span,
    /// The `--flag[=value]` words before the arguments, quotes and escapes removed.
    pub flags: Vec<Word>,
    /// The arguments.
    pub args: Args,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    /// Heredoc bodies, in the order their `<<` words appear.
    pub heredocs: Vec<Heredoc>,
    /// The instruction line with continuations joined (heredoc bodies not included).
    pub original: String,
    /// Comment lines directly above the instruction, `#` and surrounding blanks removed.
    pub comments: Vec<String>,
}

/// A parser directive from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// `syntax`, `escape` or `check` (lower case).
    pub name: String,
    /// The value, case kept.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A problem that does not stop the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Line it refers to.
    pub line: usize,
    /// What it is about.
    pub message: String,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// The file name the caller gave, used in errors.
    pub file: String,
    /// The escape character in force (`\` unless `# escape=` said otherwise).
    pub escape: char,
    /// The parser directives found.
    pub directives: Vec<Directive>,
    /// The instructions, in order.
    pub nodes: Vec<Node>,
    /// Warnings (empty continuation lines).
    pub warnings: Vec<Warning>,
}

impl Ast {
    /// The value of a directive (`syntax`, `escape`, `check`), if given.
    pub fn directive(&self, name: &str) -> Option<&str> {
        self.directives
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.value.as_str())
    }
}

/// Instructions whose arguments may open heredocs.
const HEREDOC_INSTRUCTIONS: [&str; 3] = ["add", "copy", "run"];

/// Parses Dockerfile `text`. `file` is only used to name the file in errors.
pub fn parse(file: &str, text: &str) -> Result<Ast, DockerfileError> {
    let err = |line: usize, column: usize, kind: ErrorKind| {
        DockerfileError::new(file, Position { line, column }, kind)
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut directives = DirectiveParser::default();
    let mut escape = '\\';
    let mut found_directives = Vec::new();
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let lineno = i + 1;
        i += 1;
        let trimmed = trim_newline(raw).trim_start();
        if let Some(c) = trimmed.strip_prefix('#') {
            let c = c.trim();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_string());
            }
        }
        match directives.parse_line(trimmed) {
            Err(kind) => return Err(err(lineno, 1, kind)),
            Ok(Some((name, value))) => {
                if name == "escape" {
                    escape = match value.as_str() {
                        "\\" => '\\',
                        "`" => '`',
                        _ => return Err(err(lineno, 1, ErrorKind::InvalidEscape(value))),
                    };
                }
                comments.pop();
                found_directives.push(Directive {
                    name,
                    value,
                    line: lineno,
                });
            }
            Ok(None) => {}
        }
        let content = if trimmed.starts_with('#') {
            ""
        } else {
            trimmed
        };
        let start_line = lineno;
        let (piece, mut end_of_line) = trim_continuation(content, escape);
        if end_of_line && piece.is_empty() {
            continue;
        }
        let mut buf = String::new();
        let mut map = LineMap::default();
        map.push(&buf, lineno, column_of(raw, piece));
        buf.push_str(piece);
        let mut empty_continuation = false;
        while !end_of_line && i < lines.len() {
            let raw = lines[i];
            let lineno = i + 1;
            i += 1;
            let t = trim_newline(raw);
            if t.trim_start().starts_with('#') {
                continue; // comment lines inside a continuation are dropped
            }
            if t.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (piece, eol) = trim_continuation(t, escape);
            end_of_line = eol;
            map.push(&buf, lineno, column_of(raw, piece));
            buf.push_str(piece);
        }
        if empty_continuation {
            warnings.push(Warning {
                line: i,
                message: format!("empty continuation line found in: {buf}"),
            });
        }
        let pos = |off: usize| map.position(&buf, off);
        let mut node = node_from_line(&buf, &buf, escape, &pos)
            .map_err(|(p, kind)| err(p.line, p.column, kind))?;
        node.span.end_line = i;
        node.comments = std::mem::take(&mut comments);

        if can_contain_heredoc(&node) && buf.contains("<<") {
            let docs = heredocs_from_line(&buf)
                .map_err(|kind| err(start_line, node.span.start.column, kind))?;
            for mut doc in docs {
                let mut terminated = false;
                while i < lines.len() {
                    let raw = lines[i];
                    i += 1;
                    let mut candidate = trim_newline(raw);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(raw);
                }
                if !terminated {
                    return Err(err(
                        start_line,
                        node.span.start.column,
                        ErrorKind::UnterminatedHeredoc {
                            delimiter: doc.name,
                            start_line,
                        },
                    ));
                }
                node.heredocs.push(doc);
            }
            node.span.end_line = i;
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(err(lines.len().max(1), 1, ErrorKind::NoInstructions));
    }
    Ok(Ast {
        file: file.to_string(),
        escape,
        directives: found_directives,
        nodes,
        warnings,
    })
}

/// Removes leading tabs from every line of a `<<-` heredoc body.
pub fn chomp_heredoc(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// Parses one heredoc word such as `<<EOF`, `<<-'EOF'` or `3<<"EOF"`. `Ok(None)` when the word
/// is not a heredoc; an error when it is one with unbalanced quotes.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, ErrorKind> {
    // ^(\d*)<<(-?)\s*([^<]*)$
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start_matches(['\t', '\n', '\x0c', '\r', ' ']);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let fd = word[..digits].parse().unwrap_or(0);
    let mut lex = Lex::new('\\');
    lex.skip_unset_env = true;
    let invalid = |_| ErrorKind::InvalidHeredoc(word.to_string());
    let words = lex.process_words(rest, &NoEnv).map_err(invalid)?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &NoEnv).map_err(invalid)?;
    if raw.len() != 1 {
        return Err(ErrorKind::InvalidHeredoc(word.to_string()));
    }
    // Quotes anywhere in the delimiter (`<<'EOF'`, `<<E"O"F`) turn expansion off: compare the
    // quote count with quotes removed and kept.
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Ok(Some(Heredoc {
        expand: quotes(&words[0]) == quotes(&raw[0]),
        name: words.into_iter().next().unwrap_or_default(),
        fd,
        chomp,
        content: String::new(),
    }))
}

/// The heredocs opened on an instruction line, in order.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, ErrorKind> {
    let mut lex = Lex::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    let words = lex.process_words(line, &NoEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc(&w)? {
            docs.push(h);
        }
    }
    Ok(docs)
}

fn can_contain_heredoc(node: &Node) -> bool {
    let node = match (&node.args, node.keyword.eq_ignore_ascii_case("onbuild")) {
        (Args::Sub(child), true) => child,
        _ => node,
    };
    HEREDOC_INSTRUCTIONS.contains(&node.keyword.to_ascii_lowercase().as_str()) && !node.json
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

/// Strips a trailing line-continuation escape (and blanks after it). `true` when the line
/// does *not* continue. An escaped escape (`\\`) at the end is not a continuation.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape)
        && (before.is_empty() || !before.ends_with(escape))
    {
        return (before, false);
    }
    (line, true)
}

/// 1-based column of `piece` (a subslice of `raw`) in `raw`.
fn column_of(raw: &str, piece: &str) -> usize {
    let off = piece.as_ptr() as usize - raw.as_ptr() as usize;
    raw[..off.min(raw.len())].chars().count() + 1
}

impl Node {
    /// The instruction name, lower case.
    pub fn name(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }

    /// The argument values in order (pairs flattened to key, value; ONBUILD's instruction as its
    /// keyword followed by its arguments).
    pub fn arg_values(&self) -> Vec<String> {
        match &self.args {
            Args::Words(w) => w.iter().map(|w| w.value.clone()).collect(),
            Args::Pairs(p) => p
                .iter()
                .flat_map(|p| [p.key.value.clone(), p.value.value.clone()])
                .collect(),
            Args::Sub(n) => std::iter::once(n.keyword.clone())
                .chain(n.arg_values())
                .collect(),
            Args::Unknown(_) => Vec::new(),
        }
    }

    /// An S-expression in the format of BuildKit's `Node.Dump()` (`(copy ["--from=a"] "x" "/")`
    /// without the outer parentheses), used to compare against BuildKit's parser corpus.
    pub fn dump(&self) -> String {
        let mut s = self.keyword.to_ascii_lowercase();
        if !self.flags.is_empty() {
            let f: Vec<String> = self.flags.iter().map(|w| go_quote(&w.value)).collect();
            s.push_str(&format!(" [{}]", f.join(" ")));
        }
        match &self.args {
            Args::Words(w) => {
                for w in w {
                    s.push(' ');
                    s.push_str(&go_quote(&w.value));
                }
            }
            Args::Pairs(p) => {
                for p in p {
                    let sep = if p.legacy { "" } else { "=" };
                    s.push_str(&format!(
                        " {} {} {}",
                        go_quote(&p.key.value),
                        go_quote(&p.value.value),
                        go_quote(sep)
                    ));
                }
            }
            Args::Sub(n) => s.push_str(&format!(" ({})", n.dump())),
            Args::Unknown(_) => s.push_str(" \"\""),
        }
        s
    }
}

/// Go's `strconv.Quote` for the characters Dockerfiles contain: printable characters as they
/// are, the usual backslash escapes, `\xNN` for other ASCII controls and `\uNNNN` for other
/// control characters.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::line::*;
    use super::*;

    fn p(text: &str) -> Ast {
        parse("Dockerfile", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn words_keep_quotes() {
        for (input, want) in [
            ("foo", vec!["foo"]),
            ("foo bar", vec!["foo", "bar"]),
            ("foo\\ bar", vec!["foo\\ bar"]),
            ("foo=bar", vec!["foo=bar"]),
            ("foo bar 'abc xyz'", vec!["foo", "bar", "'abc xyz'"]),
            (r#"foo bar "abc xyz""#, vec!["foo", "bar", r#""abc xyz""#]),
            ("àöû", vec!["àöû"]),
            (r#"föo bàr "âbc xÿz""#, vec!["föo", "bàr", r#""âbc xÿz""#]),
        ] {
            let got: Vec<String> = parse_words(input, '\\').into_iter().map(|w| w.1).collect();
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn json_arrays() {
        for bad in [
            r#"["a",42,"b"]"#,
            r#"["a",{},"b"]"#,
            r#"["a",["c"],"b"]"#,
            r#"["a",true,"b"]"#,
            r#"["a",null,"b"]"#,
            r#"["a",123.456,"b"]"#,
            r#"["a",{"c": "d"},"b"]"#,
            r#"["a",false,"b"]"#,
        ] {
            assert_eq!(parse_json(bad), Err(ErrorKind::NotStringArray), "{bad}");
        }
        let good: &[(&str, &[&str])] = &[
            ("[]", &[]),
            (r#"[""]"#, &[""]),
            (r#"["a"]"#, &["a"]),
            (r#"["a","b"]"#, &["a", "b"]),
            (r#"[ "a", "b" ]"#, &["a", "b"]),
            ("[\t\"a\",\t\"b\"\t]", &["a", "b"]),
            ("\t[\t\"a\",\t\"b\"\t]\t", &["a", "b"]),
            (
                r#"["abc 123", "♥", "☃", "\" \\ \/ \b \f \n \r \t \u0000"]"#,
                &["abc 123", "♥", "☃", "\" \\ / \u{8} \u{c} \n \r \t \0"],
            ),
        ];
        for (input, want) in good {
            let got: Vec<String> = parse_json(input)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|w| w.1)
                .collect();
            assert_eq!(got, *want, "{input}");
        }
        assert_eq!(parse_json("['a']"), Ok(None));
        assert_eq!(parse_json(r#"["a""#), Ok(None));
    }

    #[test]
    fn name_val_forms() {
        let word = |_: &str, v: String| Word {
            value: v,
            pos: Position::default(),
        };
        let pairs = parse_name_val("foo bar", "label", '\\', &word).unwrap();
        assert_eq!(
            (
                pairs[0].key.value.as_str(),
                pairs[0].value.value.as_str(),
                pairs[0].legacy
            ),
            ("foo", "bar", true)
        );
        let pairs = parse_name_val("foo=bar thing=star", "label", '\\', &word).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(
            (
                pairs[1].key.value.as_str(),
                pairs[1].value.value.as_str(),
                pairs[1].legacy
            ),
            ("thing", "star", false)
        );
        let e = parse_name_val("foo", "env", '\\', &word).unwrap_err();
        assert_eq!(e.to_string(), "ENV must have two arguments");
    }

    #[test]
    fn line_numbers_and_columns() {
        // The layout of BuildKit's testfile-line case: instructions on lines 5, 11-12 and 17-31.
        let text = "\n\n# ESCAPE=\\\n\nFROM brimstone/ubuntu:14.04\n\n\n# TORUN -v /x\n\n\nENV GOPATH \\\n/go\n\n\n\n# Install\nRUN apt-get update \\\n\t&& a \\\n\n\n    && b \\\n    && c \\\n    && d \\\n\n\t&& e \\\n    && f \\\n\n\t&& g \\\n\t&& h \\\n\t&& i \\\n\t&& j\n\n\n\n\n";
        let ast = p(text);
        let spans: Vec<(usize, usize)> = ast
            .nodes
            .iter()
            .map(|n| (n.span.start.line, n.span.end_line))
            .collect();
        assert_eq!(spans, vec![(5, 5), (11, 12), (17, 31)]);
        // ENV's value is on the continuation line.
        let Args::Pairs(pairs) = &ast.nodes[1].args else {
            panic!()
        };
        assert_eq!(
            pairs[0].value.pos,
            Position {
                line: 12,
                column: 1
            }
        );
        assert_eq!(
            pairs[0].key.pos,
            Position {
                line: 11,
                column: 5
            }
        );
    }

    #[test]
    fn columns_of_flags_and_args() {
        let ast = p("FROM x\n  COPY --from=build \\\n      a.txt  /dst/\n");
        let n = &ast.nodes[1];
        assert_eq!(n.span.start, Position { line: 2, column: 3 });
        assert_eq!(n.span.end_line, 3);
        assert_eq!(n.flags[0].pos, Position { line: 2, column: 8 });
        let Args::Words(w) = &n.args else { panic!() };
        assert_eq!(w[0].pos, Position { line: 3, column: 7 });
        assert_eq!(
            w[1].pos,
            Position {
                line: 3,
                column: 14
            }
        );
        let ast = p("FROM x\nCMD [\"a\", \"b c\"]\n");
        let Args::Words(w) = &ast.nodes[1].args else {
            panic!()
        };
        assert_eq!(
            w[1].pos,
            Position {
                line: 2,
                column: 11
            }
        );
    }

    #[test]
    fn directives() {
        let ast = p("#escape=\\\n# key = FOO bar\n\n# smth\nFROM x\n");
        assert_eq!(ast.directives.len(), 1);
        assert_eq!(ast.directive("escape"), Some("\\"));
        let ast = p("# EScape=`\n# SYNTAX = docker/dockerfile:1 \nFROM x\n");
        assert_eq!(ast.escape, '`');
        assert_eq!(ast.directive("syntax"), Some("docker/dockerfile:1"));
        // A blank line ends the directive section.
        let ast = p("# syntax=a\n\n# escape=`\nFROM x\n");
        assert_eq!(ast.escape, '\\');
        // After an unknown directive, later ones are comments.
        let ast = p("# foo=bar\n# escape=`\nFROM x\n");
        assert_eq!(ast.escape, '\\');
        // check= is accepted and ignored.
        let ast = p("# check=skip=all\nFROM x\n");
        assert_eq!(ast.directive("check"), Some("skip=all"));
        let e = parse("Dockerfile", "# escape=`\n# escape=\\\nFROM x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:2:1: only one `escape` parser directive can be used"
        );
        let e = parse("Dockerfile", "# escape=x\nFROM x").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
        assert!(matches!(e.kind, ErrorKind::InvalidEscape(_)));
        // A BOM before the directives is fine.
        assert_eq!(p("\u{feff}# escape=`\nFROM x").escape, '`');
    }

    #[test]
    fn empty_continuation_warns() {
        let ast = p(
            "\nFROM alpine:3.6\n\nRUN valid \\\n    continuation\n\nRUN something \\\n\n    following \\\n\n    more\n\nRUN another \\\n\n    thing\n\nRUN non-indented \\\n# this is a comment\n   after-comment\n\nRUN indented \\\n    # this is an indented comment\n    comment\n\t",
        );
        assert_eq!(ast.warnings.len(), 2);
        assert!(
            ast.warnings[0]
                .message
                .contains("RUN something     following     more")
        );
        assert!(ast.warnings[1].message.contains("RUN another     thing"));
    }

    fn heredocs(text: &str) -> Vec<Vec<Heredoc>> {
        p(text).nodes.into_iter().map(|n| n.heredocs).collect()
    }

    fn hd(name: &str, content: &str, expand: bool, chomp: bool, fd: u32) -> Heredoc {
        Heredoc {
            name: name.into(),
            content: content.into(),
            expand,
            chomp,
            fd,
        }
    }

    /// BuildKit's TestParseExtractsHeredoc, in table form.
    #[test]
    fn extracts_heredocs() {
        let text = "\nFROM alpine:3.6\n\nENV NAME=me\n\nRUN ls\n\nUSER <<INVALID\nINVALID\n\nRUN <<EMPTY\nEMPTY\n\nRUN 3<<EMPTY2\nEMPTY2\n\nRUN \"<<NOHEREDOC\"\n\nRUN <<INDENT\n\tfoo\n\tbar\nINDENT\n\nRUN <<-UNINDENT\n\tbaz\n\tquux\nUNINDENT\n\nRUN <<-UNINDENT2\n\tbaz\n\tquux\n\tUNINDENT2\n\nRUN <<-EXPAND\n\texpand $NAME\nEXPAND\n\nRUN <<-'NOEXPAND'\n\tdon't expand $NAME\nNOEXPAND\n\nRUN <<COPY\necho hello world\necho foo bar\nCOPY\n\nRUN <<COMMENT\n# internal comment\necho hello world\necho foo bar # trailing comment\nCOMMENT\n\nRUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n\nCOPY <<FILE1 <<FILE2 /dest\ncontent 1\nFILE1\ncontent 2\nFILE2\n\nCOPY <<EOF /quotes\n\"foo\"\n'bar'\nEOF\n\nCOPY <<X <<Y /dest\nY\nX\nX\nY\n\nRUN <<COMPLEX python3\nprint('hello world')\nCOMPLEX\n\nCOPY <<file.txt /dest\nhello world\nfile.txt\n\nRUN <<eo'f'\necho foo\neof\n\nRUN <<eo\\'f\necho foo\neo'f\n\nRUN <<'e'o\\'f\necho foo\neo'f\n\nRUN <<'one two'\necho bar\none two\n\nRUN <<$EOF\n$EOF\n\nRUN <<  EOF\nEOF\n\nRUN <<  EOF  > foo\nEOF\n\t";
        let want: Vec<Vec<Heredoc>> = vec![
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![hd("EMPTY", "", true, false, 0)],
            vec![hd("EMPTY2", "", true, false, 3)],
            vec![],
            vec![hd("INDENT", "\tfoo\n\tbar\n", true, false, 0)],
            vec![hd("UNINDENT", "\tbaz\n\tquux\n", true, true, 0)],
            vec![hd("UNINDENT2", "\tbaz\n\tquux\n", true, true, 0)],
            vec![hd("EXPAND", "\texpand $NAME\n", true, true, 0)],
            vec![hd("NOEXPAND", "\tdon't expand $NAME\n", false, true, 0)],
            vec![hd(
                "COPY",
                "echo hello world\necho foo bar\n",
                true,
                false,
                0,
            )],
            vec![hd(
                "COMMENT",
                "# internal comment\necho hello world\necho foo bar # trailing comment\n",
                true,
                false,
                0,
            )],
            vec![hd("MOUNT", "echo hello\n", true, false, 0)],
            vec![
                hd("FILE1", "content 1\n", true, false, 0),
                hd("FILE2", "content 2\n", true, false, 0),
            ],
            vec![hd("EOF", "\"foo\"\n'bar'\n", true, false, 0)],
            vec![
                hd("X", "Y\n", true, false, 0),
                hd("Y", "X\n", true, false, 0),
            ],
            vec![hd("COMPLEX", "print('hello world')\n", true, false, 0)],
            vec![hd("file.txt", "hello world\n", true, false, 0)],
            vec![hd("eof", "echo foo\n", false, false, 0)],
            vec![hd("eo'f", "echo foo\n", true, false, 0)],
            vec![hd("eo'f", "echo foo\n", false, false, 0)],
            vec![hd("one two", "echo bar\n", false, false, 0)],
            vec![hd("$EOF", "", true, false, 0)],
            vec![hd("EOF", "", true, false, 0)],
            vec![hd("EOF", "", true, false, 0)],
        ];
        assert_eq!(heredocs(text), want);
    }

    #[test]
    fn json_form_has_no_heredocs() {
        let got = heredocs(
            "\nFROM alpine:3.6\n\nRUN [\"whoami\"]\nRUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\n\t",
        );
        assert!(got.iter().all(Vec::is_empty));
    }

    #[test]
    fn heredoc_words() {
        for w in [
            "<<EOF",
            "<<'EOF'",
            r#"<<"EOF""#,
            "<<-EOF",
            "<<-'EOF'",
            r#"<<-"EOF""#,
            r#"<<EO"F""#,
            "<< EOF",
            "<<- EOF",
        ] {
            assert_eq!(parse_heredoc(w).unwrap().unwrap().name, "EOF", "{w}");
        }
        for w in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(w).is_err(), "{w}");
        }
        for w in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert_eq!(parse_heredoc(w).unwrap(), None, "{w}");
        }
        for (line, names) in [
            ("RUN <<EOF", vec!["EOF"]),
            ("RUN <<-EOF", vec!["EOF"]),
            // `<<-` and the word are two words here, so this is not a heredoc (as in BuildKit,
            // whose own table passes vacuously on it).
            ("RUN <<- EOF", vec![]),
            ("RUN << -EOF", vec!["-EOF"]),
            ("RUN <<'EOF'", vec!["EOF"]),
            ("RUN 4<<EOF", vec!["EOF"]),
            ("RUN <<EOF <<EOF2", vec!["EOF", "EOF2"]),
            ("RUN '<<EOF'", vec![]),
            (r#"RUN "<<EOF""#, vec![]),
        ] {
            let got: Vec<String> = heredocs_from_line(line)
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect();
            assert_eq!(got, names, "{line}");
        }
        assert_eq!(chomp_heredoc("\thello\n\tworld\n"), "hello\nworld\n");
    }

    #[test]
    fn unterminated_heredoc_names_delimiter_and_line() {
        let e = parse("ci/Dockerfile.arm", "FROM x\n\nRUN <<EOF\necho hi\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ci/Dockerfile.arm:3:1: unterminated heredoc `EOF` started on line 3"
        );
        let ast = p("FROM x\nONBUILD RUN <<EOF\necho\nEOF\n");
        assert_eq!(ast.nodes[1].heredocs.len(), 1);
        assert_eq!(ast.nodes[1].span.end_line, 4);
    }

    #[test]
    fn errors() {
        for text in ["", "# Hello\n# These are just comments\n\n", "\n\n"] {
            let e = parse("Dockerfile", text).unwrap_err();
            assert_eq!(e.kind, ErrorKind::NoInstructions);
        }
        let e = parse("Dockerfile", "FROM busybox\n\nENV PATH\n").unwrap_err();
        assert_eq!(e.to_string(), "Dockerfile:3:5: ENV must have two arguments");
        let e = parse("Dockerfile", "CMD [ \"echo\", [ \"nested json\" ] ]\n").unwrap_err();
        assert_eq!(
            (e.line, e.column, e.kind),
            (1, 5, ErrorKind::NotStringArray)
        );
        let e = parse("Dockerfile", "FROM x\nLABEL a=b c\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Dockerfile:2:7: syntax error - can't find = in `c`"),
            "{e}"
        );
    }

    #[test]
    fn flags_stop_at_double_dash_and_drop_quotes() {
        let ast = p("COPY --chown=\"a b\" --link -- --x /d\n");
        let n = &ast.nodes[0];
        let f: Vec<&str> = n.flags.iter().map(|w| w.value.as_str()).collect();
        assert_eq!(f, ["--chown=a b", "--link"]);
        assert_eq!(n.arg_values(), ["--x", "/d"]);
        let ast = p("COPY --label=é a b\n");
        assert_eq!(ast.nodes[0].flags[0].value, "--label=é");
    }
}
