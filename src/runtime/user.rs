//! Users and paths looked up inside an image's root filesystem the way runc and the kernel
//! would with that root as `/`: `USER name[:group]` against its `/etc/passwd` and `/etc/group`,
//! symlinks re-rooted so nothing outside the root is ever read.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::RuntimeError;
use crate::util::fs::{PathContext, PathError};

/// A user resolved against the image: what goes into the runtime spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
}

/// Resolves `user[:group]` the way runc and Docker do (`moby/sys/user.GetExecUser`): a number
/// needs no passwd entry, a name must have one; without an explicit group the primary group
/// comes from passwd and the supplementary groups are those listing the user in `/etc/group`.
/// `passwd`/`group` are the files' text, `None` when absent.
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, String> {
    let (user_arg, group_arg) = spec.split_once(':').unwrap_or((spec, ""));
    let uid_num: Option<u32> = user_arg.parse().ok();
    let gid_num: Option<u32> = group_arg.parse().ok();
    let mut out = ExecUser {
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
    };
    // name:password:uid:gid:gecos:home:shell
    let entry = passwd.unwrap_or("").lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if l.starts_with('#') || f.len() < 4 {
            return None;
        }
        let (uid, gid) = (f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?);
        let hit = match (user_arg, uid_num) {
            ("", _) => uid == 0,
            (_, Some(n)) => uid == n,
            (name, None) => f[0] == name,
        };
        hit.then(|| (f[0].to_string(), uid, gid))
    });
    let mut matched_name = None;
    match entry {
        Some((name, uid, gid)) => {
            out.uid = uid;
            out.gid = gid;
            matched_name = Some(name);
        }
        None if user_arg.is_empty() => {}
        None => match uid_num {
            Some(n) => out.uid = n,
            None if passwd.is_none() => {
                return Err(format!(
                    "the image has no /etc/passwd to look up `{user_arg}` in; use a numeric uid"
                ));
            }
            None => return Err(format!("no user `{user_arg}` in the image's /etc/passwd")),
        },
    }
    // name:password:gid:member,member
    let groups: Vec<(String, u32, Vec<String>)> = group
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3).then_some(())?;
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect();
    if !group_arg.is_empty() {
        let hit = groups.iter().find(|(name, gid, _)| match gid_num {
            Some(n) => *gid == n,
            None => name == group_arg,
        });
        out.gid = match (hit, gid_num) {
            (Some((_, gid, _)), _) => *gid,
            (None, Some(n)) => n,
            (None, None) if group.is_none() => {
                return Err(format!(
                    "the image has no /etc/group to look up `{group_arg}` in; use a numeric gid"
                ));
            }
            (None, None) => {
                return Err(format!("no group `{group_arg}` in the image's /etc/group"));
            }
        };
    } else if let Some(name) = matched_name {
        out.additional_gids = groups
            .iter()
            .filter(|(_, _, members)| members.contains(&name))
            .map(|(_, gid, _)| *gid)
            .collect();
    }
    Ok(out)
}

/// A path looked up inside an image root the way the kernel would with that root as `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The deepest existing path (absolute in the image, no symlinks).
    pub(crate) existing: PathBuf,
    /// The names below it that do not exist.
    pub(crate) missing: Vec<OsString>,
}

/// Resolves `path` inside `root`: symlinks are followed and re-rooted at `root` (absolute
/// targets start again at `root`, `..` stops there), so nothing outside `root` is looked at.
/// `root == None` is an empty root.
pub fn resolve_in_root(root: Option<&Path>, path: &str) -> Result<Resolved, RuntimeError> {
    let bad = |reason: String| RuntimeError::ImagePath {
        path: path.to_string(),
        reason,
    };
    let mut todo: VecDeque<OsString> = components(Path::new(path));
    let mut current = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&name);
        let Some(root) = root else {
            return finish_missing(current, name, todo, path);
        };
        let host = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        let meta = match fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return finish_missing(current, name, todo, path);
            }
            Err(source) => {
                return Err(PathError {
                    action: "look up",
                    path: host,
                    source,
                }
                .into());
            }
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return Err(bad("too many levels of symbolic links".to_string()));
            }
            let target = fs::read_link(&host).at("read link", &host)?;
            if target.is_absolute() {
                current = PathBuf::from("/");
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        if !todo.is_empty() && !meta.is_dir() {
            return Err(bad(format!("`{}` is not a directory", candidate.display())));
        }
        current = candidate;
    }
    Ok(Resolved {
        existing: current,
        missing: Vec::new(),
    })
}

fn finish_missing(
    existing: PathBuf,
    first: OsString,
    rest: VecDeque<OsString>,
    path: &str,
) -> Result<Resolved, RuntimeError> {
    let mut missing = vec![first];
    for c in rest {
        if c == ".." {
            return Err(RuntimeError::ImagePath {
                path: path.to_string(),
                reason: format!(
                    "`..` below the missing `{}`",
                    existing.join(&missing[0]).display()
                ),
            });
        }
        missing.push(c);
    }
    Ok(Resolved { existing, missing })
}

/// The normal and `..` components of a path (`.` and `/` dropped).
pub fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Reads a small file inside the image root, following symlinks inside it; `None` if absent.
pub fn read_in_root(root: Option<&Path>, path: &str) -> Result<Option<String>, RuntimeError> {
    let Some(root_dir) = root else {
        return Ok(None);
    };
    let r = resolve_in_root(root, path)?;
    if !r.missing.is_empty() {
        return Ok(None);
    }
    let host = root_dir.join(r.existing.strip_prefix("/").unwrap_or(&r.existing));
    if !fs::metadata(&host).at("stat", &host)?.is_file() {
        return Ok(None);
    }
    let bytes = crate::util::fs::read_limited(&host, 16 << 20)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nduckie:x:1000:1000::/home/duckie:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nduckie:x:1000:\nvideo:x:44:duckie\ni2c:x:998:duckie,other\n";

    #[test]
    fn users_resolve_like_runc() {
        let r = |s: &str| resolve_user(s, Some(PASSWD), Some(GROUP));
        let u = |uid, gid, add: &[u32]| ExecUser {
            uid,
            gid,
            additional_gids: add.to_vec(),
        };
        assert_eq!(r("").unwrap(), u(0, 0, &[]));
        assert_eq!(r("root").unwrap(), u(0, 0, &[]));
        assert_eq!(r("duckie").unwrap(), u(1000, 1000, &[44, 998]));
        assert_eq!(r("1000").unwrap(), u(1000, 1000, &[44, 998]));
        assert_eq!(r("1000:44").unwrap(), u(1000, 44, &[]));
        assert_eq!(r("duckie:video").unwrap(), u(1000, 44, &[]));
        assert_eq!(r("4242").unwrap(), u(4242, 0, &[]));
        assert_eq!(r("4242:4343").unwrap(), u(4242, 4343, &[]));
        assert!(r("ghost").unwrap_err().contains("no user `ghost`"));
        assert!(
            r("duckie:ghosts")
                .unwrap_err()
                .contains("no group `ghosts`")
        );
        assert_eq!(resolve_user("7:8", None, None).unwrap(), u(7, 8, &[]));
        assert!(
            resolve_user("duckie", None, None)
                .unwrap_err()
                .contains("no /etc/passwd")
        );
    }

    #[test]
    fn resolving_stays_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("run")).unwrap();
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            r.join("etc/resolv.conf"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/../../../../etc", r.join("escape")).unwrap();
        fs::write(r.join("etc/passwd"), "x").unwrap();

        let got = resolve_in_root(Some(r), "/etc/resolv.conf").unwrap();
        assert_eq!(got.existing, Path::new("/run"));
        assert_eq!(got.missing, ["systemd", "resolve", "stub-resolv.conf"]);
        let got = resolve_in_root(Some(r), "/escape/passwd").unwrap();
        assert_eq!(got.existing, Path::new("/etc/passwd"));
        assert!(got.missing.is_empty());
        let got = resolve_in_root(None, "/etc/hosts").unwrap();
        assert_eq!(got.existing, Path::new("/"));
        assert_eq!(got.missing, ["etc", "hosts"]);
        let err = resolve_in_root(Some(r), "/etc/passwd/x").unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let err = resolve_in_root(Some(r), "/loop").unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }
}
