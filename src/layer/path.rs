//! Entry names: normalising the path of a tar entry (pure, table-tested) and the canonical order
//! of entries in a layer.
//!
//! A layer path is relative to the image root. Inside a layer `/usr` and `usr` name the same
//! thing, `.` components mean nothing, and `..` is resolved lexically; a `..` that would climb
//! above the root is refused, never clamped, because no tool writes one by accident.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Longest entry path (or link target) accepted, in bytes: Linux's `PATH_MAX`. Longer names
/// cannot be created by any `*at` call anyway, so refusing them early gives a typed error.
pub(crate) const MAX_PATH: usize = 4096;
/// Longest single component, in bytes: Linux's `NAME_MAX`.
pub(crate) const MAX_NAME: usize = 255;

/// Normalises a raw entry name: drops leading `/`, empty and `.` components, resolves `..`
/// lexically, and returns the components joined by single `/` (empty for the root itself).
pub(crate) fn clean(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    if raw.len() > MAX_PATH {
        return Err("name is longer than 4096 bytes");
    }
    let mut comps: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if comps.pop().is_none() {
                    return Err("`..` climbs above the root");
                }
            }
            c if c.len() > MAX_NAME => return Err("a component is longer than 255 bytes"),
            c => comps.push(c),
        }
    }
    Ok(comps.join(&b'/'))
}

/// Splits a cleaned path into components (none for the root).
pub(crate) fn components(clean: &[u8]) -> Vec<&[u8]> {
    if clean.is_empty() {
        Vec::new()
    } else {
        clean.split(|b| *b == b'/').collect()
    }
}

/// Splits a cleaned, non-empty path into its parent (possibly empty) and base name.
pub(crate) fn split_last(clean: &[u8]) -> (&[u8], &[u8]) {
    match clean.iter().rposition(|b| *b == b'/') {
        Some(i) => (&clean[..i], &clean[i + 1..]),
        None => (&[], clean),
    }
}

/// Bytes to a path, exactly (Linux paths are bytes).
pub(crate) fn to_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// The canonical order of layer entries: component by component, bytewise. A directory sorts
/// right before its own children and its children before its next sibling (`a/`, `a/b`, `a-b`),
/// which is the order of a depth-first walk with each directory's names sorted — the order
/// BuildKit's differ emits. Leading `/` and `.` components are ignored.
pub fn canonical_cmp(a: &Path, b: &Path) -> Ordering {
    let key = |p: &Path| -> Vec<Vec<u8>> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.as_bytes().to_vec()),
                Component::ParentDir => Some(b"..".to_vec()),
                _ => None,
            })
            .collect()
    };
    key(a).cmp(&key(b))
}

/// Sort key of an entry: its components, plus an empty trailing component for an opaque marker
/// so it sorts right after its directory and before the directory's children.
pub(crate) fn sort_key(clean: &[u8], opaque_marker: bool) -> Vec<Vec<u8>> {
    let mut k: Vec<Vec<u8>> = components(clean).into_iter().map(<[u8]>::to_vec).collect();
    if opaque_marker {
        k.push(Vec::new());
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_table() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"a", b"a"),
            (b"/a/b", b"a/b"),
            (b"./a//b/", b"a/b"),
            (b"a/./b/.", b"a/b"),
            (b"a/../b", b"b"),
            (b"a/b/../../c", b"c"),
            (b"/", b""),
            (b"./", b""),
            (b"a/..", b""),
            (b"///etc/passwd", b"etc/passwd"),
            (b"\xff\xfe/x", b"\xff\xfe/x"),
        ];
        for (raw, want) in ok {
            assert_eq!(
                clean(raw).as_deref(),
                Ok(*want),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = vec![b'a'; 256];
        let very_long = [b"a/".as_slice(); 2049].concat();
        let bad: &[&[u8]] = &[
            b"",
            b"..",
            b"../x",
            b"/../x",
            b"a/../../x",
            b"./../x",
            b"a/\0b",
            &long,
            &very_long,
        ];
        for raw in bad {
            assert!(clean(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn canonical_order_is_depth_first_by_name() {
        let mut v: Vec<&Path> = ["a-b", "a/b", "a", "b", "a/b/c", "/a/a", "A"]
            .iter()
            .map(Path::new)
            .collect();
        v.sort_by(|a, b| canonical_cmp(a, b));
        let got: Vec<_> = v.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(got, ["A", "a", "/a/a", "a/b", "a/b/c", "a-b", "b"]);
        assert!(sort_key(b"a", true) > sort_key(b"a", false));
        assert!(sort_key(b"a", true) < sort_key(b"a/0", false));
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"c"), (&b""[..], &b"c"[..]));
    }
}
