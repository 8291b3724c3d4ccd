//! ADD of a git repository (`ADD https://host/repo.git#ref:subdir /dst`), with the system `git`:
//! the ref is resolved to a commit with `git ls-remote` first (the commit is the cache key, as
//! in BuildKit), and only on a cache miss fetched (`--depth 1`) into a temporary directory under
//! `$DTS_HOME/build/git`, checked out, and copied like a context directory: files 0644 or 0755
//! as git records them, directories 0755, every mtime the commit's time. `.git` is left out
//! unless `--keep-git-dir`.
//!
//! Transports: `https://` and `http://` URLs whose path ends in `.git`, `git://`, `ssh://` and
//! scp-like `user@host:path` (BuildKit's set). `GIT_ALLOW_PROTOCOL` limits git (and submodules)
//! to those, so neither `file://` nor `ext::` can read the build machine's own files.

use std::process::{Command, Stdio};

use super::*;
use crate::build::context::ContextEntry;

/// What an ADD git source names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GitSource {
    /// The repository URL, without the fragment.
    pub(super) url: String,
    /// The branch, tag or commit after `#` (none: the remote's HEAD).
    pub(super) reference: Option<String>,
    /// The directory after `:` in the fragment (none: the repository's root).
    pub(super) subdir: Option<String>,
}

/// The transports git may use for ADD (and for the repository's submodules).
const ALLOWED_PROTOCOLS: &str = "https:http:git:ssh";

/// Whether an ADD source is a git repository, as BuildKit's `gitutil.ParseGitRef` tells it:
/// `git://`, `ssh://`, scp-like `git@host:path`, or an http(s) URL whose path ends in `.git`.
pub(super) fn parse_git_source(s: &str) -> Option<GitSource> {
    let (url, fragment) = match s.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (s, None),
    };
    let is_git = if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        rest.split('?').next().unwrap_or("").ends_with(".git")
    } else {
        url.starts_with("git://")
            || url.starts_with("ssh://")
            || (url.starts_with("git@") && url.contains(':'))
    };
    if !is_git {
        return None;
    }
    let (reference, subdir) = match fragment {
        None => (None, None),
        Some(f) => match f.split_once(':') {
            Some((r, d)) => (Some(r), Some(d)),
            None => (Some(f), None),
        },
    };
    let non_empty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    Some(GitSource {
        url: url.to_string(),
        reference: non_empty(reference),
        subdir: non_empty(subdir.map(|d| d.trim_matches('/'))),
    })
}

fn git_command() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    c
}

/// Runs git; its stderr's last line is the error.
fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut c = git_command();
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("git {} failed: {}", args[0], last.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl GitSource {
    /// The commit the source names, asked of the remote (`git ls-remote`): a tag (peeled), a
    /// branch, any other full ref name, or the remote's HEAD; a full commit id is taken as is.
    pub(super) fn resolve(&self) -> Result<String, String> {
        if let Some(r) = self.reference.as_deref().filter(|r| is_commit_id(r)) {
            return Ok(r.to_ascii_lowercase());
        }
        let listing = git(None, &["ls-remote", "--", self.url.as_str()])?;
        let refs: BTreeMap<&str, &str> = listing
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(id, name)| (name, id))
            .collect();
        let r = self.reference.as_deref().unwrap_or("HEAD");
        let candidates = [
            format!("refs/tags/{r}^{{}}"),
            format!("refs/tags/{r}"),
            format!("refs/heads/{r}"),
            r.to_string(),
            format!("{r}^{{}}"),
        ];
        candidates
            .iter()
            .find_map(|c| refs.get(c.as_str()))
            .map(|id| id.to_string())
            .ok_or_else(|| format!("the repository has no branch, tag or commit `{r}`"))
    }

    /// Fetches `commit` into `dir` and checks it out (submodules too).
    fn checkout(&self, commit: &str, dir: &Path) -> Result<(), String> {
        git(Some(dir), &["init", "-q"])?;
        // A name is fetched by name (any server allows that), then checked to be the commit
        // resolved; a commit id is fetched as such.
        let want = match self.reference.as_deref() {
            Some(r) if !is_commit_id(r) => r,
            Some(_) => commit,
            None => "HEAD",
        };
        git(
            Some(dir),
            &[
                "fetch",
                "-q",
                "--depth",
                "1",
                "--no-tags",
                "--",
                self.url.as_str(),
                want,
            ],
        )?;
        let fetched = git(Some(dir), &["rev-parse", "FETCH_HEAD^{commit}"])?;
        if fetched.trim() != commit {
            return Err(format!(
                "`{want}` moved while building: it was {commit}, now {}",
                fetched.trim()
            ));
        }
        git(
            Some(dir),
            &["-c", "advice.detachedHead=false", "checkout", "-q", commit],
        )?;
        if dir.join(".gitmodules").exists() {
            git(
                Some(dir),
                &[
                    "submodule",
                    "update",
                    "-q",
                    "--init",
                    "--recursive",
                    "--depth",
                    "1",
                ],
            )?;
        }
        Ok(())
    }
}

/// A checkout being copied by ADD; its directory is removed when dropped.
pub(super) struct Checkout {
    dir: PathBuf,
    /// The checkout (or its subdirectory) as a directory source.
    pub(super) source: Source,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Fetches and checks out `commit` of `src` under `work`, as a directory source.
pub(super) fn checkout(
    src: &GitSource,
    commit: &str,
    keep_git_dir: bool,
    work: &Path,
) -> Result<Checkout, String> {
    create_dir_all(work).map_err(|e| e.to_string())?;
    let dir = tempfile_dir(work)?;
    let mut out = Checkout {
        dir: dir.clone(),
        source: Source {
            path: String::new(),
            is_dir: true,
            entries: Vec::new(),
        },
    };
    src.checkout(commit, &dir)?;
    let time: i64 = git(Some(&dir), &["log", "-1", "--format=%ct", commit])?
        .trim()
        .parse()
        .map_err(|_| "git log gave no commit time".to_string())?;
    let root = match &src.subdir {
        Some(d) => {
            let sub = dir.join(clean(d));
            if !sub.is_dir() {
                return Err(format!("`{d}` is not a directory of the repository"));
            }
            sub
        }
        None => dir.clone(),
    };
    out.source.entries = walk(&root, keep_git_dir, time).map_err(|e| e.to_string())?;
    Ok(out)
}

fn tempfile_dir(work: &Path) -> Result<PathBuf, String> {
    // Unique per process and call: platforms build side by side on threads.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = work.join(format!("{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The checkout's entries as a directory source's: the root first, then depth first in name
/// order; modes as git records them.
fn walk(root: &Path, keep_git_dir: bool, mtime: i64) -> std::io::Result<Vec<ContextEntry>> {
    let mut out = vec![ContextEntry {
        rel: String::new(),
        host: root.to_path_buf(),
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime,
        size: 0,
        inode: None,
    }];
    let mut todo = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = todo.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names.into_iter().rev() {
            let name = name.to_string_lossy().into_owned();
            if rel.is_empty() && name == ".git" && !keep_git_dir {
                continue;
            }
            let host = dir.join(&name);
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(&host)?;
            let (kind, mode) = if meta.is_dir() {
                todo.push((host.clone(), r.clone()));
                (EntryKind::Dir, 0o755)
            } else if meta.file_type().is_symlink() {
                let t = fs::read_link(&host)?;
                (EntryKind::Symlink(t.to_string_lossy().into_owned()), 0o777)
            } else {
                use std::os::unix::fs::PermissionsExt;
                let x = meta.permissions().mode() & 0o100 != 0;
                (EntryKind::File, if x { 0o755 } else { 0o644 })
            };
            out.push(ContextEntry {
                rel: r,
                host,
                size: if kind == EntryKind::File {
                    meta.len()
                } else {
                    0
                },
                kind,
                mode,
                mtime,
                inode: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sources_as_buildkit_tells_them() {
        let g = parse_git_source("https://example.com/a/repo.git#v1.2:src/lib").unwrap();
        assert_eq!(g.url, "https://example.com/a/repo.git");
        assert_eq!(g.reference.as_deref(), Some("v1.2"));
        assert_eq!(g.subdir.as_deref(), Some("src/lib"));
        let g = parse_git_source("git@github.com:duckietown/dt-core.git").unwrap();
        assert_eq!((g.reference, g.subdir), (None, None));
        assert!(parse_git_source("git://127.0.0.1:9418/r.git#main").is_some());
        assert!(parse_git_source("ssh://git@host/r#main").is_some());
        assert!(parse_git_source("https://example.com/file.tar.gz").is_none());
        assert!(parse_git_source("file:///srv/repo.git").is_none());
        assert!(parse_git_source("repo.git").is_none());
        assert!(is_commit_id("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_id("main"));
    }
}
