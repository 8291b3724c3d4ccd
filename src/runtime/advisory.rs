//! Known holes in the robot's OCI runtime that a version says something about: today
//! CVE-2024-21626 (runc before 1.1.12 leaked a host directory descriptor into the container,
//! so a working directory under `/proc/self/fd/N` — from an image, `-w`, or `runc exec --cwd`
//! — escaped to the host).
//!
//! The version string alone does not decide: distributions backport the fix without changing
//! it (Debian bookworm's `1.1.5+ds1-1+deb12u1` is fixed). What counts as a record of the fix:
//! the Debian package that installed the binary (found in dpkg's file lists) has a changelog
//! naming the CVE. Without one the agent warns — never refuses: the working-directory check in
//! `agent::container::spec` already closes the way in through dts, and a robot must keep
//! running its containers.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The CVE this module knows.
pub const CVE: &str = "CVE-2024-21626";

/// The first runc release with the fix.
const FIXED: (u64, u64, u64) = (1, 1, 12);

/// The warning for the runtime at `command`, or `None` when it is fixed, is not runc, or
/// cannot be asked. `system_root` is `/` but in tests (dpkg's database and the changelogs are
/// read under it).
pub fn cve_2024_21626(command: &Path, system_root: &Path) -> Option<String> {
    let out = Command::new(command)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    warning_for(command, &text, system_root)
}

/// [`cve_2024_21626`], remembered in the file `cache` for as long as the runtime's binary and
/// dpkg's database are the ones it was decided for. Every session's hello carries the
/// warning, and deciding it costs a `runc --version` (a Go program's start) and a read of
/// every dpkg file list on the robot: on a Pi, tens of milliseconds of each deploy. A cache
/// that cannot be written (a read-only root) only means asking again next time.
pub fn cve_2024_21626_cached(command: &Path, system_root: &Path, cache: &Path) -> Option<String> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Remembered {
        key: String,
        warning: Option<String>,
    }
    let Some(key) = cache_key(command, system_root) else {
        return cve_2024_21626(command, system_root);
    };
    if let Some(r) = std::fs::read(cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok())
        .filter(|r| r.key == key)
    {
        return r.warning;
    }
    let warning = cve_2024_21626(command, system_root);
    let r = Remembered {
        key,
        warning: warning.clone(),
    };
    let _ = crate::util::fs::atomic_write(cache, &serde_json::to_vec(&r).expect("serialisable"));
    warning
}

/// What the decision depends on: the runtime binary (path, inode, size, mtime) and dpkg's
/// database (an upgrade that brings a changelog rewrites `status`).
fn cache_key(command: &Path, system_root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let real = std::fs::canonicalize(command).ok()?;
    let bin = std::fs::metadata(&real).ok()?;
    let stamp = |m: &std::fs::Metadata| format!("{}:{}.{}", m.size(), m.mtime(), m.mtime_nsec());
    let dpkg = std::fs::metadata(system_root.join("var/lib/dpkg/status"))
        .map(|m| stamp(&m))
        .unwrap_or_default();
    Some(format!(
        "{}:{}:{}:{}|dpkg:{dpkg}",
        real.display(),
        bin.dev(),
        bin.ino(),
        stamp(&bin)
    ))
}

/// [`cve_2024_21626`] for the `--version` output `text`.
pub fn warning_for(command: &Path, text: &str, system_root: &Path) -> Option<String> {
    let version = text
        .lines()
        .next()?
        .trim()
        .strip_prefix("runc version ")?
        .trim();
    let parsed = parse_version(version)?;
    if parsed >= FIXED {
        return None;
    }
    if backport_record(command, system_root).is_some() {
        return None;
    }
    Some(format!(
        "runc {version} ({}) is older than 1.1.12 and nothing on this robot records that the \
         fix for {CVE} (container escape through a leaked file descriptor) was backported: \
         update runc (`apt-get install --only-upgrade runc`, or Docker's containerd.io package). \
         dts refuses working directories under /proc/*/fd, but other ways into the bug remain",
        command.display()
    ))
}

/// `1.1.5+ds1`, `1.1.11`, `1.2.0-rc.1` → the three numbers.
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut nums = v.split(['.', '+', '-', '~']).map(|p| p.parse::<u64>().ok());
    Some((nums.next()??, nums.next()??, nums.next()??))
}

/// The changelog of the Debian package that installed `command`, when it names the CVE.
fn backport_record(command: &Path, system_root: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(command).unwrap_or_else(|_| command.to_path_buf());
    let package = owning_package(&[command, &real], system_root)?;
    let doc = system_root.join("usr/share/doc").join(&package);
    for name in ["changelog.Debian.gz", "changelog.Debian"] {
        let path = doc.join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let mut text = String::new();
        let read = if name.ends_with(".gz") {
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut text)
                .is_ok()
        } else {
            text = String::from_utf8_lossy(&bytes).into_owned();
            true
        };
        if read && text.contains(CVE) {
            return Some(path);
        }
    }
    None
}

/// The dpkg package whose file list holds one of `paths` (`runc` for `/usr/sbin/runc`).
fn owning_package(paths: &[&Path], system_root: &Path) -> Option<String> {
    let info = system_root.join("var/lib/dpkg/info");
    for entry in std::fs::read_dir(&info).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(package) = name.strip_suffix(".list") else {
            continue;
        };
        let Ok(list) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if list
            .lines()
            .any(|l| paths.iter().any(|p| Path::new(l) == *p))
        {
            // `runc:arm64` on multi-arch systems; the doc directory has no suffix.
            return Some(package.split(':').next().unwrap_or(package).to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn debian(root: &Path, changelog: &str) {
        std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
        std::fs::write(
            root.join("var/lib/dpkg/info/runc.list"),
            "/.\n/usr\n/usr/sbin\n/usr/sbin/runc\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("usr/share/doc/runc")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(changelog.as_bytes()).unwrap();
        std::fs::write(
            root.join("usr/share/doc/runc/changelog.Debian.gz"),
            gz.finish().unwrap(),
        )
        .unwrap();
    }

    const DEBIAN: &str = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";

    #[test]
    fn old_runc_warns_unless_its_package_records_the_fix() {
        let runc = Path::new("/usr/sbin/runc");
        let tmp = tempfile::tempdir().unwrap();
        // No dpkg at all: the version decides.
        let w = warning_for(runc, "runc version 1.1.11\n", tmp.path()).unwrap();
        assert!(
            w.contains(CVE) && w.contains("1.1.11") && w.contains("/usr/sbin/runc"),
            "{w}"
        );
        assert!(warning_for(runc, "runc version 1.1.12\n", tmp.path()).is_none());
        assert!(warning_for(runc, "runc version 1.2.0-rc.1\n", tmp.path()).is_none());
        assert!(warning_for(runc, "crun version 1.8\n", tmp.path()).is_none());

        // Debian's 1.1.5 whose changelog names the CVE: no warning.
        debian(
            tmp.path(),
            "runc (1.1.5+ds1-1+deb12u1) bookworm-security; urgency=high\n\n  * CVE-2024-21626: several container breakouts\n",
        );
        assert!(warning_for(runc, DEBIAN, tmp.path()).is_none());
        // The same version from a binary no package installed (a fake on PATH): a warning.
        assert!(warning_for(Path::new("/opt/x/runc"), DEBIAN, tmp.path()).is_some());

        // A changelog that predates the fix: a warning.
        let old = tempfile::tempdir().unwrap();
        debian(old.path(), "runc (1.1.5+ds1-1) unstable; urgency=medium\n");
        assert!(warning_for(runc, DEBIAN, old.path()).is_some());
    }

    #[test]
    fn the_decision_is_remembered_until_the_runtime_changes() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let runc = tmp.path().join("runc");
        let fake = |version: &str| {
            std::fs::write(&runc, format!("#!/bin/sh\necho 'runc version {version}'\n")).unwrap();
            std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        fake("1.1.11");
        let cache = tmp.path().join("advisory.json");
        let w = cve_2024_21626_cached(&runc, tmp.path(), &cache).unwrap();
        assert!(w.contains("1.1.11"), "{w}");
        // Remembered: what the file says is what is answered (the binary is not asked).
        let text = std::fs::read_to_string(&cache).unwrap();
        std::fs::write(&cache, text.replace("1.1.11", "1.1.10")).unwrap();
        let w = cve_2024_21626_cached(&runc, tmp.path(), &cache).unwrap();
        assert!(w.contains("1.1.10"), "from the cache: {w}");
        // An upgraded binary (another size) is asked again.
        fake("1.1.12-new");
        assert_eq!(cve_2024_21626_cached(&runc, tmp.path(), &cache), None);
        // A cache that cannot be written only means asking each time.
        let nowhere = tmp.path().join("missing/advisory.json");
        assert_eq!(cve_2024_21626_cached(&runc, tmp.path(), &nowhere), None);
    }

    #[test]
    fn this_machines_runtime_is_asked_for_real() {
        // Whatever runc is installed: the call works and, on a fixed one, says nothing.
        let Ok(rt) = super::super::Runtime::detect(Path::new("/nonexistent")) else {
            return;
        };
        if let Some(w) = cve_2024_21626(rt.command(), Path::new("/")) {
            assert!(w.contains(CVE), "{w}");
        }
    }
}
