//! `.dockerignore`: which paths of the build context a build may see. A port of
//! `moby/patternmatcher` (matching) and its `ignorefile.ReadAll` (file syntax).
//!
//! Owns the pattern language and the match decision for a slash-separated path relative to
//! the context root. It does not walk directories; a walker asks [`DockerIgnore::matches`] per
//! path (or [`DockerIgnore::matches_with_parent`] to reuse its parent's result) and
//! [`DockerIgnore::can_skip_dir`] to know it may prune a whole directory.
//!
//! The rules (Docker's, *not* gitignore's):
//! * patterns are anchored at the context root: `foo` does not match `a/foo`, `*.md` does not
//!   match `docs/x.md` (write `**/*.md`);
//! * `*` is any run of non-`/` characters, `?` one non-`/` character, `[a-z]`/`[^a-z]` a class,
//!   `\` escapes, `**` any number of directories (`**/x`, `a/**`, `a/**/b`);
//! * a pattern matching a directory excludes everything below it;
//! * `!pattern` re-includes; the *last* matching pattern wins;
//! * lines starting with `#` are comments, blank lines are skipped, surrounding spaces are
//!   trimmed, patterns are cleaned like paths (`./a/../b` is `b`) and a leading `/` is dropped.
//!
//! Deliberate differences from patternmatcher, on patterns no one writes on purpose:
//! * a class whose range runs backwards (`[z-a]`) is rejected when the patterns are read;
//!   patternmatcher accepts it and fails on the first match;
//! * `*` and `?` inside `[...]` are ordinary characters of the class (patternmatcher pastes its
//!   own regex for them into the class), and `\d`, `\w`… are the letters `d`, `w` (Go's regexp
//!   would read them as character classes).

/// A pattern that could not be compiled, or a lone `!`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .dockerignore pattern `{pattern}`{}: {reason}", line.map(|l| format!(" on line {l}")).unwrap_or_default())]
pub struct IgnoreError {
    /// The pattern as given.
    pub pattern: String,
    /// Its line in the `.dockerignore` text, when it came from one.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// The path equals the pattern.
    Exact,
    /// `dir/**`: the path starts with `dir/`.
    Prefix,
    /// `**/x`, `**x`: the path ends with what follows `**`.
    Suffix,
    /// Anything else.
    Glob(Vec<Tok>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `*`: `[^/]*`
    Star,
    /// `?`: `[^/]`
    One,
    /// `**` followed by more pattern: `(.*/)?`
    Dirs,
    /// `**` at the end of a pattern that is not a plain prefix: `.*`
    All,
    /// `[...]`
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` (re-include) pattern.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    fn compile(cleaned: String, exclusion: bool) -> Result<Pattern, String> {
        let chars: Vec<char> = cleaned.chars().collect();
        let mut toks = Vec::new();
        let mut kind = Kind::Exact;
        let mut i = 0;
        while i < chars.len() {
            let first = i == 0;
            let ch = chars[i];
            i += 1;
            match ch {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1; // `**/` is `**`
                    }
                    if i == chars.len() {
                        if kind == Kind::Exact {
                            kind = Kind::Prefix;
                        } else {
                            toks.push(Tok::All);
                            kind = Kind::Glob;
                        }
                    } else {
                        toks.push(Tok::Dirs);
                        kind = Kind::Glob;
                    }
                    if first {
                        kind = Kind::Suffix;
                    }
                }
                '*' => {
                    toks.push(Tok::Star);
                    kind = Kind::Glob;
                }
                '?' => {
                    toks.push(Tok::One);
                    kind = Kind::Glob;
                }
                '\\' => match chars.get(i) {
                    Some(&c) => {
                        toks.push(Tok::Lit(c));
                        i += 1;
                        kind = Kind::Glob;
                    }
                    None => return Err("trailing `\\` escapes nothing".into()),
                },
                '[' => {
                    let (class, next) = parse_class(&chars, i)?;
                    toks.push(class);
                    i = next;
                    kind = Kind::Glob;
                }
                ']' => {
                    toks.push(Tok::Lit(']'));
                    kind = Kind::Glob;
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        let matcher = match kind {
            Kind::Exact => Matcher::Exact,
            Kind::Prefix => Matcher::Prefix,
            Kind::Suffix => Matcher::Suffix,
            Kind::Glob => Matcher::Glob(toks),
        };
        Ok(Pattern {
            cleaned,
            exclusion,
            matcher,
        })
    }

    fn is_match(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.cleaned,
            Matcher::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Matcher::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Matcher::Glob(toks) => {
                let s: Vec<char> = path.chars().collect();
                let mut memo = std::collections::HashMap::new();
                glob_match(toks, 0, &s, 0, &mut memo)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Glob,
}

/// Parses a `[...]` class starting after the `[` at `i` (Go `filepath.Match` syntax).
fn parse_class(chars: &[char], mut i: usize) -> Result<(Tok, usize), String> {
    let unterminated = || "unterminated character class".to_string();
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let esc = |i: &mut usize| -> Result<char, String> {
        let c = *chars.get(*i).ok_or_else(unterminated)?;
        match c {
            '-' | ']' => Err("character class item cannot start with `-` or `]`".into()),
            '\\' => {
                *i += 1;
                let c = *chars.get(*i).ok_or_else(unterminated)?;
                *i += 1;
                Ok(c)
            }
            c => {
                *i += 1;
                Ok(c)
            }
        }
    };
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Tok::Class { negated, ranges }, i + 1));
        }
        let lo = esc(&mut i)?;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            i += 1;
            hi = esc(&mut i)?;
            if hi < lo {
                return Err(format!("character class range `{lo}-{hi}` runs backwards"));
            }
        }
        ranges.push((lo, hi));
    }
}

fn glob_match(
    toks: &[Tok],
    ti: usize,
    s: &[char],
    pos: usize,
    memo: &mut std::collections::HashMap<(usize, usize), bool>,
) -> bool {
    if ti == toks.len() {
        return pos == s.len();
    }
    if let Some(&r) = memo.get(&(ti, pos)) {
        return r;
    }
    let rest = &s[pos..];
    let r = match &toks[ti] {
        Tok::Lit(c) => rest.first() == Some(c) && glob_match(toks, ti + 1, s, pos + 1, memo),
        Tok::One => {
            rest.first().is_some_and(|&c| c != '/') && glob_match(toks, ti + 1, s, pos + 1, memo)
        }
        Tok::Class { negated, ranges } => {
            rest.first().is_some_and(|&c| {
                let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                inside != *negated
            }) && glob_match(toks, ti + 1, s, pos + 1, memo)
        }
        Tok::Star => {
            let max = rest.iter().take_while(|&&c| c != '/').count();
            (0..=max).any(|k| glob_match(toks, ti + 1, s, pos + k, memo))
        }
        Tok::All => {
            // Go's `.` does not match a newline.
            let max = rest.iter().take_while(|&&c| c != '\n').count();
            (0..=max).any(|k| glob_match(toks, ti + 1, s, pos + k, memo))
        }
        Tok::Dirs => {
            glob_match(toks, ti + 1, s, pos, memo)
                || rest
                    .iter()
                    .take_while(|&&c| c != '\n')
                    .enumerate()
                    .any(|(k, &c)| c == '/' && glob_match(toks, ti + 1, s, pos + k + 1, memo))
        }
    };
    memo.insert((ti, pos), r);
    r
}

/// What a walker remembers about a directory to match its children cheaply (one flag per
/// pattern: whether the directory or one of its parents matched it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// A compiled `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Reads `.dockerignore` text (BOM, comments, blank lines, `!`, leading `/`) and compiles it.
    pub fn parse(text: &str) -> Result<DockerIgnore, IgnoreError> {
        let mut patterns = Vec::new();
        for (line, p) in read_patterns_with_lines(text) {
            patterns.extend(compile_one(&p).map_err(|reason| IgnoreError {
                pattern: p.clone(),
                line: Some(line),
                reason,
            })?);
        }
        Ok(DockerIgnore { patterns })
    }

    /// Compiles patterns as they are (patternmatcher's `New`): trimmed, cleaned, empty ones
    /// skipped.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<DockerIgnore, IgnoreError> {
        let mut out = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            out.extend(compile_one(p).map_err(|reason| IgnoreError {
                pattern: p.to_string(),
                line: None,
                reason,
            })?);
        }
        Ok(DockerIgnore { patterns: out })
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (slash-separated, relative to the context root) is excluded: the last
    /// pattern matching it or one of its parent directories decides (`MatchesOrParentMatches`).
    /// The context root itself (`.`, ``) is never excluded.
    pub fn matches(&self, path: &str) -> bool {
        let file = clean(path);
        if file == "." {
            return false;
        }
        let parents = parent_dirs(&file);
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue; // only an exception can undo a match, only a pattern can make one
            }
            let hit = p.is_match(&file) || parents.iter().any(|d| p.is_match(d));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// [`DockerIgnore::matches`] for a walker that already matched `path`'s parent directory:
    /// pass the parent's [`MatchInfo`] (the default one for entries of the context root) and
    /// keep the returned one if `path` is a directory (`MatchesUsingParentResults`).
    pub fn matches_with_parent(&self, path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        let file = clean(path);
        let have_parent =
            parent.parent_matched.len() == self.patterns.len() && !self.patterns.is_empty();
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        let mut matched = false;
        for (i, p) in self.patterns.iter().enumerate() {
            let mut hit = have_parent && parent.parent_matched[i];
            if !hit {
                if p.exclusion != matched {
                    continue;
                }
                hit = p.is_match(&file)
                    || (!have_parent && parent_dirs(&file).iter().any(|d| p.is_match(d)));
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !p.exclusion;
            }
        }
        (matched, info)
    }

    /// Whether a walker may skip directory `dir` without looking inside: it is excluded and no
    /// `!` exception could re-include anything below it. Conservative, like BuildKit's walker
    /// (`fsutil`): an exception with wildcards before its last component disables skipping.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        if !self.matches(dir) {
            return false;
        }
        let dir_slash = format!("{}/", clean(dir));
        for p in self.patterns.iter().filter(|p| p.exclusion) {
            let stem = p
                .cleaned
                .strip_suffix("/**")
                .or_else(|| p.cleaned.strip_suffix("/*"))
                .unwrap_or(&p.cleaned);
            if stem.contains(['*', '[', ']', '?', '^', '\\']) {
                return false;
            }
            if format!("{stem}/").starts_with(&dir_slash) {
                return false;
            }
        }
        true
    }
}

fn compile_one(p: &str) -> Result<Option<Pattern>, String> {
    let p = p.trim();
    if p.is_empty() {
        return Ok(None);
    }
    let p = clean(p);
    let (exclusion, body) = match p.strip_prefix('!') {
        Some("") => return Err("illegal exclusion pattern: `!`".into()),
        Some(b) => (true, b.to_string()),
        None => (false, p),
    };
    Pattern::compile(body, exclusion).map(Some)
}

/// The patterns of a `.dockerignore` file, cleaned, in order (moby's `ignorefile.ReadAll`).
pub fn read_patterns(text: &str) -> Vec<String> {
    read_patterns_with_lines(text)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn read_patterns_with_lines(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut p = String::new();
        if !pattern.is_empty() {
            p = clean(pattern);
            if p.len() > 1 && p.starts_with('/') {
                p.remove(0);
            }
        }
        if invert {
            p.insert(0, '!');
        }
        out.push((i + 1, p));
    }
    out
}

/// The parent directories of a cleaned path, shortest first (`a/b/c` → `a`, `a/b`).
fn parent_dirs(file: &str) -> Vec<&str> {
    let Some(last) = file.rfind('/') else {
        return Vec::new();
    };
    let parent = if last == 0 { "/" } else { &file[..last] };
    let mut out = Vec::new();
    for (i, c) in parent.char_indices() {
        if c == '/' {
            out.push(&parent[..i]);
        }
    }
    out.push(parent);
    out
}

/// Go's `path.Clean`: the shortest equivalent path (`.` for empty).
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str], path: &str) -> bool {
        DockerIgnore::new(patterns).unwrap().matches(path)
    }

    /// patternmatcher_test.go `TestMatches`: (pattern, path, expected).
    const SINGLE: &[(&str, &str, bool)] = &[
        ("**", "file", true),
        ("**", "file/", true),
        ("**/", "file", true),
        ("**/", "file/", true),
        ("**", "/", true),
        ("**/", "/", true),
        ("**", "dir/file", true),
        ("**/", "dir/file", true),
        ("**", "dir/file/", true),
        ("**/", "dir/file/", true),
        ("**/**", "dir/file", true),
        ("**/**", "dir/file/", true),
        ("dir/**", "dir/file", true),
        ("dir/**", "dir/file/", true),
        ("dir/**", "dir/dir2/file", true),
        ("dir/**", "dir/dir2/file/", true),
        ("**/dir", "dir", true),
        ("**/dir", "dir/file", true),
        ("**/dir2/*", "dir/dir2/file", true),
        ("**/dir2/*", "dir/dir2/file/", true),
        ("**/dir2/**", "dir/dir2/dir3/file", true),
        ("**/dir2/**", "dir/dir2/dir3/file/", true),
        ("**file", "file", true),
        ("**file", "dir/file", true),
        ("**/file", "dir/file", true),
        ("**file", "dir/dir/file", true),
        ("**/file", "dir/dir/file", true),
        ("**/file*", "dir/dir/file", true),
        ("**/file*", "dir/dir/file.txt", true),
        ("**/file*txt", "dir/dir/file.txt", true),
        ("**/file*.txt", "dir/dir/file.txt", true),
        ("**/file*.txt*", "dir/dir/file.txt", true),
        ("**/**/*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/*.txt", "file.txt", true),
        ("**/**/*.txt", "file.txt", true),
        ("a**/*.txt", "a/file.txt", true),
        ("a**/*.txt", "a/dir/file.txt", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt", "a/dir/file.txt", false),
        ("a/*.txt", "a/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("a[b-d]e", "ae", false),
        ("a[b-d]e", "ace", true),
        ("a[b-d]e", "aae", false),
        ("a[^b-d]e", "aze", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        ("abc.def", "abcZdef", false),
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("a\\\\", "a\\", true),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("abc/**", "abc", false),
        ("abc/**", "abc/def", true),
        ("abc/**", "abc/def/ghi", true),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        ("a\\*b", "a*b", true),
    ];

    /// patternmatcher_test.go `TestMatches`, several patterns each.
    const MULTI: &[(&[&str], &str, bool)] = &[
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        (
            &[
                "**",
                "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            ],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        ),
        (
            &["**", "!dist/*.whl"],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        ),
    ];

    /// Walks `path`'s parents the way a directory walker would, then matches `path`.
    fn walk_match(ig: &DockerIgnore, path: &str) -> bool {
        let file = clean(path);
        let mut info = MatchInfo::default();
        for d in parent_dirs(&file) {
            info = ig.matches_with_parent(d, &info).1;
        }
        ig.matches_with_parent(&file, &info).0
    }

    #[test]
    fn matches_table() {
        for (pattern, path, want) in SINGLE {
            let ig = DockerIgnore::new(&[pattern]).unwrap();
            assert_eq!(ig.matches(path), *want, "pattern {pattern:?} path {path:?}");
            assert_eq!(
                walk_match(&ig, path),
                *want,
                "walk: pattern {pattern:?} path {path:?}"
            );
            assert_eq!(
                ig.matches_with_parent(path, &MatchInfo::default()).0,
                *want,
                "no context: {pattern:?} {path:?}"
            );
        }
        for (patterns, path, want) in MULTI {
            let ig = DockerIgnore::new(patterns).unwrap();
            assert_eq!(
                ig.matches(path),
                *want,
                "patterns {patterns:?} path {path:?}"
            );
            assert_eq!(
                walk_match(&ig, path),
                *want,
                "walk: patterns {patterns:?} path {path:?}"
            );
        }
    }

    #[test]
    fn simple_rules() {
        assert!(m(&["*"], "fileutils.go"));
        assert!(m(&["*.go"], "fileutils.go"));
        assert!(m(&["!fileutils.go", "*.go"], "fileutils.go"));
        assert!(!m(&["docs", "!docs/README.md"], "docs/README.md"));
        assert!(!m(&["docs/", "!docs/README.md"], "docs/README.md"));
        assert!(!m(&["docs/*", "!docs/README.md"], "docs/README.md"));
        assert!(!m(&["*.go", "!fileutils.go"], "fileutils.go"));
        assert!(!m(&["*.go"], "."));
        assert!(!m(&[], "/any/path/there"));
        // Anchored, not gitignore.
        assert!(!m(&["foo"], "a/foo"));
        assert!(!m(&["*.md"], "docs/x.md"));
        assert!(m(&["**/*.md"], "docs/x.md"));
        assert!(m(&["foo"], "foo/bar/baz"));
        assert!(DockerIgnore::new(&["!"]).is_err());
        assert!(DockerIgnore::new(&["["]).is_err());
        let ig = DockerIgnore::new(&["docs", "config", ""]).unwrap();
        assert_eq!(ig.patterns().len(), 2);
        assert!(
            DockerIgnore::new(&["docs", "  !docs/README.md"])
                .unwrap()
                .has_exclusions()
        );
        assert!(
            DockerIgnore::new(&["docs", "!docs/README.md  "])
                .unwrap()
                .has_exclusions()
        );
    }

    /// Go's filepath.Match table as patternmatcher_test.go `TestMatch` runs it (None = bad
    /// pattern).
    #[test]
    fn filepath_match_table() {
        let cases: &[(&str, &str, Option<bool>)] = &[
            ("abc", "abc", Some(true)),
            ("*", "abc", Some(true)),
            ("*c", "abc", Some(true)),
            ("a*", "a", Some(true)),
            ("a*", "abc", Some(true)),
            ("a*", "ab/c", Some(true)),
            ("a*/b", "abc/b", Some(true)),
            ("a*/b", "a/c/b", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Some(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Some(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Some(false)),
            ("ab[c]", "abc", Some(true)),
            ("ab[b-d]", "abc", Some(true)),
            ("ab[e-g]", "abc", Some(false)),
            ("ab[^c]", "abc", Some(false)),
            ("ab[^b-d]", "abc", Some(false)),
            ("ab[^e-g]", "abc", Some(true)),
            ("a\\*b", "a*b", Some(true)),
            ("a\\*b", "ab", Some(false)),
            ("a?b", "a☺b", Some(true)),
            ("a[^a]b", "a☺b", Some(true)),
            ("a???b", "a☺b", Some(false)),
            ("a[^a][^a][^a]b", "a☺b", Some(false)),
            ("[a-ζ]*", "α", Some(true)),
            ("*[a-ζ]", "A", Some(false)),
            ("a?b", "a/b", Some(false)),
            ("a*b", "a/b", Some(false)),
            ("[\\]a]", "]", Some(true)),
            ("[\\-]", "-", Some(true)),
            ("[x\\-]", "x", Some(true)),
            ("[x\\-]", "-", Some(true)),
            ("[x\\-]", "z", Some(false)),
            ("[\\-x]", "x", Some(true)),
            ("[\\-x]", "-", Some(true)),
            ("[\\-x]", "a", Some(false)),
            ("[]a]", "]", None),
            ("[-]", "-", None),
            ("[x-]", "x", None),
            ("[x-]", "-", None),
            ("[x-]", "z", None),
            ("[-x]", "x", None),
            ("[-x]", "-", None),
            ("[-x]", "a", None),
            ("\\", "a", None),
            ("[a-b-c]", "a", None),
            ("[", "a", None),
            ("[^", "a", None),
            ("[^bc", "a", None),
            ("a[", "a", None),
            ("a[", "ab", None),
            ("*x", "xxx", Some(true)),
        ];
        for (pattern, path, want) in cases {
            let got = DockerIgnore::new(&[pattern])
                .map(|ig| ig.matches(path))
                .ok();
            assert_eq!(got, *want, "pattern {pattern:?} path {path:?}");
        }
        // Backwards ranges are rejected up front (see the module docs).
        assert!(DockerIgnore::new(&["[Local-Only]/"]).is_err());
    }

    #[test]
    fn read_all() {
        let text = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        assert_eq!(
            read_patterns(text),
            [
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ]
        );
        assert_eq!(read_patterns(""), Vec::<String>::new());
        assert_eq!(
            read_patterns("\u{feff}./a/../b/\n  # not a comment\n"),
            ["b", "# not a comment"]
        );
        let e = DockerIgnore::parse("a\n!\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid .dockerignore pattern `!` on line 2: illegal exclusion pattern: `!`"
        );
        let ig = DockerIgnore::parse("# comment\n*.md\n!README.md\n/build\n").unwrap();
        assert!(ig.matches("x.md") && !ig.matches("README.md") && ig.matches("build/a/b"));
    }

    #[test]
    fn skipping_directories() {
        let ig = DockerIgnore::new(&[
            "node_modules",
            "build",
            "!build/keep",
            "target/**",
            "!target/**/*.txt",
        ])
        .unwrap();
        assert!(!ig.can_skip_dir("src"));
        assert!(!ig.can_skip_dir("build"));
        assert!(ig.matches("build/other") && !ig.matches("build/keep/x"));
        // The wildcard exception makes skipping unsafe anywhere.
        assert!(!ig.can_skip_dir("node_modules"));
        let ig = DockerIgnore::new(&["node_modules", "build", "!build/keep"]).unwrap();
        assert!(ig.can_skip_dir("node_modules"));
        assert!(!ig.can_skip_dir("build"));
        assert!(ig.can_skip_dir("build/other"));
        let ig = DockerIgnore::new(&["*"]).unwrap();
        assert!(ig.can_skip_dir("anything"));
    }

    #[test]
    fn go_path_clean() {
        for (i, o) in [
            ("", "."),
            (".", "."),
            ("abc/", "abc"),
            ("a//b", "a/b"),
            ("./a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("a/../..", ".."),
            ("/", "/"),
            ("a/./b/", "a/b"),
        ] {
            assert_eq!(clean(i), o, "{i}");
        }
    }
}
