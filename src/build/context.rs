//! The build context: the directory a build reads COPY/ADD sources from, filtered by
//! `.dockerignore`, with Docker's source rules (paths relative to the context root, `..` and a
//! leading `/` stripped, Go `filepath.Match` wildcards, a directory source meaning its contents)
//! and content hashes for cache keys (bytes and metadata, never mtimes; file hashes come from
//! the context's [`HashCache`] when a file's stat is unchanged since an earlier build).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::dockerignore::DockerIgnore;
use super::hashcache::HashCache;
use crate::util::fs::{PathContext, PathError};

/// A file-system entry of the context that a COPY/ADD source selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextEntry {
    /// Path relative to the source (empty for a file source itself; `a/b` inside a dir source).
    pub rel: String,
    /// Absolute host path.
    pub host: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Modification time in seconds (kept by COPY unless clamped by SOURCE_DATE_EPOCH).
    pub mtime: i64,
    /// File size.
    pub size: u64,
    /// `(device, inode)` of a regular file with other hard links, so COPY keeps them linked.
    pub inode: Option<(u64, u64)>,
}

/// Kinds of context entries COPY handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symlink (copied as a link, not followed, inside a directory source).
    Symlink(String),
}

/// One matched source: its context path and what it contains.
#[derive(Clone, Debug)]
pub struct Source {
    /// Path relative to the context root.
    pub path: String,
    /// Whether the source itself is a directory (its contents are copied).
    pub is_dir: bool,
    /// The entries, the source itself first.
    pub entries: Vec<ContextEntry>,
}

/// Errors resolving sources.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A named (non-wildcard) source does not exist or is excluded by .dockerignore.
    #[error("`{0}` not found in the build context (or excluded by .dockerignore)")]
    NotFound(String),
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] PathError),
    /// `.dockerignore` is invalid.
    #[error("{}: {message}", path.display())]
    Ignore {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A build context directory.
pub struct Context {
    root: PathBuf,
    ignore: Option<DockerIgnore>,
    hashes: HashCache,
}

impl Context {
    /// A context at `root` filtered by `ignore` (the parsed `.dockerignore`, if any).
    pub fn new(root: &Path, ignore: Option<DockerIgnore>) -> Context {
        Context {
            root: root.to_path_buf(),
            ignore,
            hashes: HashCache::memory(),
        }
    }

    /// Keeps file hashes between builds in `dir` (`$DTS_HOME/build/context-hashes`), so an
    /// unchanged file is not read again; [`Context::save_hashes`] writes them back.
    pub fn with_hash_cache(mut self, dir: &Path) -> Context {
        self.hashes = HashCache::load(dir, &self.root);
        self
    }

    /// Writes the file hashes this build computed or reused to the hash cache, if it has one.
    pub fn save_hashes(&self) -> Result<(), PathError> {
        self.hashes.save()
    }

    /// Opens the context at `root` for `dockerfile`: `<Dockerfile>.dockerignore` next to the
    /// Dockerfile wins over `.dockerignore` at the root, as BuildKit reads them.
    pub fn open(root: &Path, dockerfile: &Path) -> Result<Context, ContextError> {
        let mut candidates = vec![root.join(".dockerignore")];
        if let Some(name) = dockerfile.file_name() {
            let mut n = name.to_os_string();
            n.push(".dockerignore");
            candidates.insert(0, dockerfile.with_file_name(n));
        }
        for c in candidates {
            match fs::read_to_string(&c) {
                Ok(text) => {
                    let ignore = DockerIgnore::parse(&text).map_err(|e| ContextError::Ignore {
                        path: c.clone(),
                        message: e.to_string(),
                    })?;
                    return Ok(Context::new(root, Some(ignore)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ContextError::Io(
                        Err::<(), _>(e).at("read", &c).unwrap_err(),
                    ));
                }
            }
        }
        Ok(Context::new(root, None))
    }

    /// Whether `path` (slash-separated, relative to the root) is excluded by `.dockerignore`.
    pub fn ignored(&self, path: &str) -> bool {
        self.ignore.as_ref().is_some_and(|i| i.matches(path))
    }

    /// Whether nothing under an ignored directory can be re-included by a `!` exception.
    pub fn skip_dir(&self, path: &str) -> bool {
        self.ignore.as_ref().is_none_or(|i| i.can_skip_dir(path))
    }

    /// The context root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves one COPY/ADD source. A wildcard that matches nothing gives no sources (Docker
    /// allows that); a plain path that does not exist is an error.
    pub fn resolve(&self, source: &str) -> Result<Vec<Source>, ContextError> {
        let clean = clean_source(source);
        let paths = if has_wildcard(&clean) {
            self.glob(&clean)?
        } else {
            let host = self.root.join(&clean);
            let exists = fs::symlink_metadata(&host).is_ok();
            if !exists || (!clean.is_empty() && self.ignored(&clean)) {
                return Err(ContextError::NotFound(source.to_string()));
            }
            vec![clean]
        };
        paths.into_iter().map(|p| self.source(p)).collect()
    }

    fn source(&self, path: String) -> Result<Source, ContextError> {
        let host = self.root.join(&path);
        // The source itself is followed if it is a symlink (Docker's FollowSymlinks on sources).
        let meta = fs::metadata(&host).at("stat", &host)?;
        let mut entries = vec![entry("", &host, &meta, EntryKind::from_meta(&meta, &host)?)];
        if meta.is_dir() {
            self.walk(&path, &host, "", &mut entries)?;
        }
        Ok(Source {
            path,
            is_dir: meta.is_dir(),
            entries,
        })
    }

    fn walk(
        &self,
        ctx_dir: &str,
        host_dir: &Path,
        rel_dir: &str,
        out: &mut Vec<ContextEntry>,
    ) -> Result<(), ContextError> {
        let mut names: Vec<_> = fs::read_dir(host_dir)
            .at("list", host_dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .at("list", host_dir)?;
        names.sort();
        for name in names {
            let name = name.to_string_lossy().into_owned();
            let host = host_dir.join(&name);
            let meta = fs::symlink_metadata(&host).at("stat", &host)?;
            let ctx_path = join(ctx_dir, &name);
            let kind = EntryKind::from_meta(&meta, &host)?;
            let rel = join(rel_dir, &name);
            let is_dir = kind == EntryKind::Dir;
            if self.ignored(&ctx_path) {
                // An excluded directory is still walked when an exception could re-include
                // something inside it (Docker's patternmatcher semantics).
                if is_dir && !self.skip_dir(&ctx_path) {
                    self.walk(&ctx_path, &host, &rel, out)?;
                }
                continue;
            }
            // Sockets, fifos and devices are not copied (Docker skips them too).
            if meta.file_type().is_file() || is_dir || meta.file_type().is_symlink() {
                out.push(entry(&rel, &host, &meta, kind));
            }
            if is_dir {
                self.walk(&ctx_path, &host, &rel, out)?;
            }
        }
        Ok(())
    }

    fn glob(&self, pattern: &str) -> Result<Vec<String>, ContextError> {
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut current = vec![String::new()];
        for (i, part) in parts.iter().enumerate() {
            let last = i == parts.len() - 1;
            let mut next = Vec::new();
            for dir in &current {
                if !has_wildcard(part) {
                    let p = join(dir, part);
                    if fs::symlink_metadata(self.root.join(&p)).is_ok() {
                        next.push(p);
                    }
                    continue;
                }
                let host = self.root.join(dir);
                let Ok(rd) = fs::read_dir(&host) else {
                    continue;
                };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                for n in names {
                    if glob_match(part, &n) {
                        let p = join(dir, &n);
                        if last || self.root.join(&p).is_dir() {
                            next.push(p);
                        }
                    }
                }
            }
            current = next;
        }
        Ok(current.into_iter().filter(|p| !self.ignored(p)).collect())
    }

    /// SOURCE_DATE_EPOCH for this context: the environment's, else the commit time of the
    /// context's git checkout (clean or not), else none.
    pub fn source_date_epoch(&self) -> Option<i64> {
        if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH")
            && let Ok(n) = v.trim().parse()
        {
            return Some(n);
        }
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["log", "-1", "--format=%ct"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

fn entry(rel: &str, host: &Path, meta: &fs::Metadata, kind: EntryKind) -> ContextEntry {
    ContextEntry {
        rel: rel.to_string(),
        host: host.to_path_buf(),
        mode: meta.permissions().mode() & 0o7777,
        mtime: meta.mtime(),
        size: if kind == EntryKind::File {
            meta.len()
        } else {
            0
        },
        inode: (kind == EntryKind::File && meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
        kind,
    }
}

impl EntryKind {
    fn from_meta(meta: &fs::Metadata, host: &Path) -> Result<EntryKind, ContextError> {
        Ok(if meta.is_dir() {
            EntryKind::Dir
        } else if meta.file_type().is_symlink() {
            EntryKind::Symlink(
                fs::read_link(host)
                    .at("read link", host)?
                    .to_string_lossy()
                    .into_owned(),
            )
        } else {
            EntryKind::File
        })
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Docker's source cleaning: relative to the context root, `..` cannot leave it, a leading `/`
/// and a trailing `/` mean nothing.
pub fn clean_source(s: &str) -> String {
    super::view::clean(s)
}

/// Whether a path has Go `filepath.Match` metacharacters.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Go's `filepath.Match` for one path component: `*` (no `/`), `?`, `[a-z]`, `[^x]`, `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| !n[..i].contains(&'/') && rec(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && n[0] != '/' && rec(&p[1..], &n[1..]),
            Some('[') => {
                let Some(&c) = n.first() else { return false };
                let mut i = 1;
                let negate = matches!(p.get(1), Some('^') | Some('!'));
                if negate {
                    i += 1;
                }
                let mut matched = false;
                let mut first = true;
                while i < p.len() && (p[i] != ']' || first) {
                    first = false;
                    let mut lo = p[i];
                    if lo == '\\' && i + 1 < p.len() {
                        i += 1;
                        lo = p[i];
                    }
                    let mut hi = lo;
                    if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                        hi = p[i + 2];
                        i += 2;
                    }
                    if lo <= c && c <= hi {
                        matched = true;
                    }
                    i += 1;
                }
                if i >= p.len() {
                    return false; // unterminated class: Go reports ErrBadPattern
                }
                matched != negate && rec(&p[i + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => !n.is_empty() && n[0] == p[1] && rec(&p[2..], &n[1..]),
            Some(&c) => !n.is_empty() && n[0] == c && rec(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    rec(&p, &n)
}

impl Context {
    /// A content hash of sources for cache keys: paths, kinds, modes, sizes, link targets and
    /// file bytes — never mtimes (BuildKit's tarsum-style rule: touching a file does not bust
    /// the cache). A file's bytes are hashed once per build, and not at all when the hash
    /// cache knows its unchanged stat.
    pub fn content_hash(&self, sources: &[Source]) -> Result<String, ContextError> {
        let mut h = Sha256::new();
        for s in sources {
            h.update(format!("source {}\0{}\0", s.path, s.is_dir).as_bytes());
            for e in &s.entries {
                h.update(format!("{}\0{:o}\0{}\0", e.rel, e.mode, e.size).as_bytes());
                match &e.kind {
                    EntryKind::Dir => h.update(b"d"),
                    EntryKind::Symlink(t) => h.update(format!("l{t}\0").as_bytes()),
                    EntryKind::File => {
                        let rel = e.host.strip_prefix(&self.root).unwrap_or(&e.host);
                        let fh = self.hashes.hash(&rel.to_string_lossy(), &e.host)?;
                        h.update(b"f");
                        h.update(fh);
                    }
                }
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match() {
        for (p, n, want) in [
            ("*", "abc", true),
            ("*.txt", "a.txt", true),
            ("*.txt", "a/b.txt", false),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[!a-c]x", "dx", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a[", "a", false),
            ("*x*y", "axby", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn resolves_sources_like_docker() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("src/sub")).unwrap();
        fs::write(r.join("src/a.py"), "a").unwrap();
        fs::write(r.join("src/sub/b.py"), "b").unwrap();
        fs::write(r.join("src/skip.log"), "x").unwrap();
        fs::write(r.join("top.txt"), "t").unwrap();
        std::os::unix::fs::symlink("a.py", r.join("src/link")).unwrap();
        let ctx = Context::new(r, Some(DockerIgnore::parse("**/*.log\n").unwrap()));
        let s = ctx.resolve("/src/").unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].is_dir);
        let rels: Vec<_> = s[0].entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["", "a.py", "link", "sub", "sub/b.py"]);
        assert!(matches!(s[0].entries[2].kind, EntryKind::Symlink(ref t) if t == "a.py"));
        assert_eq!(ctx.resolve("../../top.txt").unwrap()[0].path, "top.txt");
        assert!(ctx.resolve("nomatch*").unwrap().is_empty());
        assert_eq!(ctx.resolve("src/*.py").unwrap().len(), 1);
        assert!(matches!(
            ctx.resolve("missing"),
            Err(ContextError::NotFound(_))
        ));
        assert!(matches!(
            ctx.resolve("src/skip.log"),
            Err(ContextError::NotFound(_))
        ));

        let h1 = ctx.content_hash(&ctx.resolve("src").unwrap()).unwrap();
        let f = fs::File::options()
            .write(true)
            .open(r.join("src/a.py"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            ctx.content_hash(&ctx.resolve("src").unwrap()).unwrap(),
            h1,
            "mtime is not content"
        );
        fs::write(r.join("src/a.py"), "changed").unwrap();
        assert_ne!(ctx.content_hash(&ctx.resolve("src").unwrap()).unwrap(), h1);
    }
}
