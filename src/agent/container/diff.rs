//! `dt-agent diff NAME`: what a container changed, read from its overlay upper dir (the
//! writable layer) against the image's snapshot, in `docker diff`'s terms: `A` added, `C`
//! changed, `D` deleted.
//!
//! Overlayfs records a deletion as a 0:0 character device (a whiteout) and a directory replaced
//! wholesale with the `trusted.overlay.opaque` xattr; with `redirect_dir` and `metacopy` off
//! (how the agent mounts) everything else in the upper dir is a plain new or copied-up entry.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub use crate::api::container::Change;
use crate::util::fs::{PathContext, PathError};

/// The changes in `upper` over `lower`, sorted by path. Paths in `skip` (mount points the
/// runtime creates, volumes) and below them are left out.
pub fn diff(upper: &Path, lower: &Path, skip: &[String]) -> Result<Vec<Change>, PathError> {
    let mut out = Vec::new();
    walk(upper, lower, "", skip, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    upper: &Path,
    lower: &Path,
    rel: &str,
    skip: &[String],
    out: &mut Vec<Change>,
) -> Result<(), PathError> {
    let dir = upper.join(rel.trim_start_matches('/'));
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .at("list", &dir)?
        .collect::<Result<_, _>>()
        .at("list", &dir)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = format!("{rel}/{name}");
        if skip.contains(&path) {
            continue;
        }
        let meta = e.path().symlink_metadata().at("stat", &e.path())?;
        let in_lower = lower
            .join(path.trim_start_matches('/'))
            .symlink_metadata()
            .ok();
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            out.push(Change { kind: 'D', path });
            continue;
        }
        let kind = if in_lower.is_some() { 'C' } else { 'A' };
        // Mount points the runtime made for skipped paths leave their parents untouched.
        let only_skipped_below = meta.is_dir()
            && in_lower.as_ref().is_some_and(|m| m.is_dir())
            && skip.iter().any(|s| s.starts_with(&format!("{path}/")))
            && fs::read_dir(e.path())
                .map(|rd| {
                    rd.flatten().all(|c| {
                        let p = format!("{path}/{}", c.file_name().to_string_lossy());
                        skip.contains(&p)
                    })
                })
                .unwrap_or(false);
        if !only_skipped_below {
            out.push(Change {
                kind,
                path: path.clone(),
            });
        }
        if meta.is_dir() {
            if kind == 'C' && is_opaque(&e.path()) {
                // Replaced wholesale: whatever the lower dir had is gone.
                for gone in fs::read_dir(lower.join(path.trim_start_matches('/')))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let child = format!("{path}/{}", gone.file_name().to_string_lossy());
                    if !e.path().join(gone.file_name()).exists() {
                        out.push(Change {
                            kind: 'D',
                            path: child,
                        });
                    }
                }
            }
            walk(upper, lower, &path, skip, out)?;
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    let mut v = [0u8; 4];
    matches!(
        rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut v),
        Ok(1) if v[0] == b'y'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_changed_and_skipped() {
        let upper = tempfile::tempdir().unwrap();
        let lower = tempfile::tempdir().unwrap();
        fs::create_dir_all(lower.path().join("etc")).unwrap();
        fs::write(lower.path().join("etc/a"), "1").unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap();
        fs::write(upper.path().join("etc/a"), "2").unwrap();
        fs::write(upper.path().join("etc/hosts"), "").unwrap();
        fs::write(upper.path().join("new"), "").unwrap();
        fs::create_dir_all(upper.path().join("proc")).unwrap();
        let got = diff(
            upper.path(),
            lower.path(),
            &["/proc".into(), "/etc/hosts".into()],
        )
        .unwrap();
        let got: Vec<String> = got
            .iter()
            .map(|c| format!("{} {}", c.kind, c.path))
            .collect();
        assert_eq!(got, ["C /etc", "C /etc/a", "A /new"]);
    }
}
