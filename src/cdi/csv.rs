//! NVIDIA's L4T CSV files (`/etc/nvidia-container-runtime/host-files-for-container.d/*.csv`
//! on JetPack 4, what Duckietown flashes on a DB21M/J) as a CDI spec: what
//! `nvidia-container-runtime` injects on a Jetson, made usable by runc and by any CDI runtime.
//!
//! Each line is `KIND, PATH` with KIND `dev` (a device node), `lib` (a library file), `sym` (a
//! symbolic link to a library) or `dir` (a directory); `#` starts a comment. The spec has kind
//! [`KIND`] and one device per CSV file, named after the file (`l4t.csv` → `nvidia.com/gpu=l4t`,
//! the camera's; `cuda`, `cudnn`, …), plus `all` with every file's entries, as
//! `nvidia-ctk cdi generate --mode=csv` names its device.
//!
//! - `dev`: a device node at its path; type and numbers are read from the node at container
//!   start, as for a role's nodes (they are dynamic on some kernels).
//! - `lib` and `dir`: read-only bind mounts at the same path.
//! - `sym`: the file the link finally names, bind-mounted at the link's path. nvidia-ctk
//!   recreates the link with a `create-symlinks` hook; a mount needs no hook binary and gives
//!   the loader the same file under the name it opens.
//! - A path that is not on this robot is left out with a warning (the toolkit does the same):
//!   the CSVs of a JetPack list files of optional packages.
//!
//! The libraries are found through the dynamic loader's cache: one `createContainer` hook runs
//! `dt-agent cdi hook ldconfig` (see `agent::cdi_hook`), which runs the host's `ldconfig -r
//! ROOTFS` over the library directories once the mounts are in place — what nvidia-ctk's
//! `update-ldcache` hook does. `LD_LIBRARY_PATH` would do without a hook, but Duckietown's ROS
//! images set their own, and a container's environment replacing it would break them either
//! way. The robot's `/etc/ld.so.conf.d/nvidia-tegra.conf` is mounted too when present, so an
//! `ldconfig` run later inside the container keeps the L4T directories.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{ContainerEdits, Device, DeviceNode, Hook, Mount, Spec, WRITE_VERSION};

/// Where JetPack 4 keeps the CSV files.
pub const DEFAULT_CSV_DIR: &str = "/etc/nvidia-container-runtime/host-files-for-container.d";

/// Overrides [`DEFAULT_CSV_DIR`] (tests, a JetPack that keeps them elsewhere).
pub const CSV_DIR_ENV: &str = "DT_AGENT_L4T_CSV_DIR";

/// The kind of the generated spec (NVIDIA's own, so stacks written for the toolkit work).
pub const KIND: &str = "nvidia.com/gpu";

/// The loader configuration L4T installs for its libraries.
pub const LD_CONF: &str = "/etc/ld.so.conf.d/nvidia-tegra.conf";

/// The spec file `cdi generate` writes in the last spec directory.
pub const SPEC_FILE: &str = "nvidia-l4t.yaml";

/// What a line gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    /// `dev`.
    Dev,
    /// `lib`.
    Lib,
    /// `sym`.
    Sym,
    /// `dir`.
    Dir,
}

/// One line of a CSV file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its kind.
    pub kind: EntryKind,
    /// Its absolute path.
    pub path: String,
}

/// A line that is not `KIND, PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", .file.display())]
pub struct CsvError {
    /// The file.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses one CSV file's text.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Entry>, CsvError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| CsvError {
            file: file.to_path_buf(),
            line: i + 1,
            message,
        };
        let (kind, path) = line
            .split_once(',')
            .ok_or_else(|| err(format!("`{line}` is not `KIND, PATH`")))?;
        let kind = match kind.trim() {
            "dev" => EntryKind::Dev,
            "lib" => EntryKind::Lib,
            "sym" => EntryKind::Sym,
            "dir" => EntryKind::Dir,
            other => {
                return Err(err(format!("`{other}` is not one of dev, lib, sym, dir")));
            }
        };
        let path = path.trim();
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains(',') {
            return Err(err(format!(
                "`{path}` must be one absolute path without `..`"
            )));
        }
        out.push(Entry {
            kind,
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// Reads every `*.csv` of `dir`, in name order: `(device name, entries)`.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, Vec<Entry>)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let entries = parse(&f, &text).map_err(|e| e.to_string())?;
        out.push((device_name(&f), entries));
    }
    Ok(out)
}

/// `l4t.csv` → `l4t`; characters CDI refuses in a name become `-`.
fn device_name(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if name.is_empty() {
        "csv".into()
    } else {
        name.to_string()
    }
}

/// How to write the spec.
pub struct Generate<'a> {
    /// The CSV files: `(device name, entries)`.
    pub files: &'a [(String, Vec<Entry>)],
    /// The program the ldconfig hook runs (this `dt-agent`).
    pub hook_program: &'a Path,
    /// The loader configuration to mount, when the robot has it.
    pub ld_conf: Option<&'a Path>,
}

/// The spec, and a warning for each path left out.
pub fn to_spec(g: &Generate<'_>) -> (Spec, Vec<String>) {
    let mut warnings = Vec::new();
    let mut devices = Vec::new();
    let mut all = ContainerEdits::default();
    let mut seen_all = BTreeSet::new();
    for (name, entries) in g.files {
        let mut edits = ContainerEdits::default();
        let mut seen = BTreeSet::new();
        for e in entries {
            if !seen.insert((e.kind, e.path.clone())) {
                continue;
            }
            match edit_for(e) {
                Ok(one) => {
                    if seen_all.insert((e.kind, e.path.clone())) {
                        all.append(&one);
                    }
                    edits.append(&one);
                }
                Err(w) => warnings.push(format!("{name}: {w}")),
            }
        }
        finish(&mut edits, g);
        if edits.device_nodes.is_empty() && edits.mounts.is_empty() {
            warnings.push(format!("{name}: nothing of it is on this robot; no device"));
            continue;
        }
        devices.push(Device {
            name: name.clone(),
            container_edits: edits,
            ..Default::default()
        });
    }
    finish(&mut all, g);
    if !all.device_nodes.is_empty() || !all.mounts.is_empty() {
        devices.push(Device {
            name: "all".into(),
            container_edits: all,
            ..Default::default()
        });
    }
    let spec = Spec {
        cdi_version: WRITE_VERSION.into(),
        kind: KIND.into(),
        annotations: [(
            "org.duckietown.dt-agent.generated-from".to_string(),
            "L4T CSV (host-files-for-container.d)".to_string(),
        )]
        .into(),
        devices,
        container_edits: ContainerEdits::default(),
    };
    (spec, warnings)
}

/// Read-only bind options, as nvidia-ctk writes them.
fn ro_bind() -> Vec<String> {
    ["ro", "nosuid", "nodev", "bind"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn edit_for(e: &Entry) -> Result<ContainerEdits, String> {
    let path = Path::new(&e.path);
    let meta =
        std::fs::symlink_metadata(path).map_err(|err| format!("{}: {err}; left out", e.path))?;
    let mut edits = ContainerEdits::default();
    match e.kind {
        EntryKind::Dev => edits.device_nodes.push(DeviceNode {
            path: e.path.clone(),
            ..Default::default()
        }),
        EntryKind::Lib | EntryKind::Dir => edits.mounts.push(Mount {
            host_path: e.path.clone(),
            container_path: e.path.clone(),
            options: if e.kind == EntryKind::Dir {
                vec!["ro".into(), "nosuid".into(), "nodev".into(), "rbind".into()]
            } else {
                ro_bind()
            },
            typ: None,
        }),
        EntryKind::Sym => {
            let target = if meta.file_type().is_symlink() {
                std::fs::canonicalize(path)
                    .map_err(|err| format!("{}: its target: {err}; left out", e.path))?
            } else {
                path.to_path_buf()
            };
            edits.mounts.push(Mount {
                host_path: target.to_string_lossy().into_owned(),
                container_path: e.path.clone(),
                options: ro_bind(),
                typ: None,
            });
        }
    }
    Ok(edits)
}

/// Adds the loader configuration and the ldconfig hook over the directories of the mounted
/// libraries.
fn finish(edits: &mut ContainerEdits, g: &Generate<'_>) {
    let dirs: BTreeSet<String> = edits
        .mounts
        .iter()
        .filter_map(|m| {
            // A library's directory; a `dir` entry (rbind) is a library directory itself.
            if m.options.iter().any(|o| o == "rbind") {
                Some(m.container_path.clone())
            } else {
                Path::new(&m.container_path)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
            }
        })
        .collect();
    if dirs.is_empty() {
        return;
    }
    if let Some(conf) = g.ld_conf {
        edits.mounts.push(Mount {
            host_path: conf.to_string_lossy().into_owned(),
            container_path: LD_CONF.into(),
            options: ro_bind(),
            typ: None,
        });
    }
    let mut args = vec![
        "dt-agent".to_string(),
        "cdi".into(),
        "hook".into(),
        "ldconfig".into(),
    ];
    args.extend(dirs);
    edits.hooks.push(Hook {
        hook_name: "createContainer".into(),
        path: g.hook_program.to_string_lossy().into_owned(),
        args,
        env: Vec::new(),
        timeout: Some(30),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_ones_are_named() {
        let f = Path::new("/x/l4t.csv");
        let e = parse(
            f,
            "# comment\ndev, /dev/nvmap\nlib,/usr/lib/aarch64-linux-gnu/tegra/libnvargus.so\n\n sym , /usr/lib/libcuda.so # trailing\ndir, /usr/lib/aarch64-linux-gnu/tegra-egl\n",
        )
        .unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].kind, EntryKind::Dev);
        assert_eq!(e[2].kind, EntryKind::Sym);
        assert_eq!(e[2].path, "/usr/lib/libcuda.so");
        for (bad, needle) in [
            ("lib /usr/lib/x", "KIND, PATH"),
            ("file, /usr/lib/x", "not one of dev"),
            ("lib, usr/lib/x", "absolute"),
            ("lib, /usr/../etc/shadow", "absolute"),
        ] {
            let err = parse(f, &format!("dev, /dev/nvmap\n{bad}\n")).unwrap_err();
            assert_eq!(err.line, 2, "{bad}");
            assert!(err.to_string().starts_with("/x/l4t.csv:2: "), "{err}");
            assert!(err.message.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn csv_to_spec() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tegra = d.join("usr/lib/aarch64-linux-gnu/tegra");
        std::fs::create_dir_all(&tegra).unwrap();
        std::fs::write(tegra.join("libnvargus.so"), "elf").unwrap();
        std::fs::write(tegra.join("libcuda.so.1.1"), "elf").unwrap();
        std::os::unix::fs::symlink("libcuda.so.1.1", tegra.join("libcuda.so")).unwrap();
        std::fs::create_dir_all(d.join("egl")).unwrap();
        let p = |s: &str| d.join(s).to_string_lossy().into_owned();
        let l4t = vec![
            Entry {
                kind: EntryKind::Dev,
                path: "/dev/null".into(),
            },
            Entry {
                kind: EntryKind::Lib,
                path: p("usr/lib/aarch64-linux-gnu/tegra/libnvargus.so"),
            },
            Entry {
                kind: EntryKind::Sym,
                path: p("usr/lib/aarch64-linux-gnu/tegra/libcuda.so"),
            },
            Entry {
                kind: EntryKind::Dir,
                path: p("egl"),
            },
            Entry {
                kind: EntryKind::Lib,
                path: p("not/here.so"),
            },
        ];
        let cuda = vec![Entry {
            kind: EntryKind::Lib,
            path: p("usr/lib/aarch64-linux-gnu/tegra/libnvargus.so"),
        }];
        let missing = vec![Entry {
            kind: EntryKind::Dev,
            path: p("dev/nvhost-none"),
        }];
        let files = vec![
            ("l4t".to_string(), l4t),
            ("cuda".to_string(), cuda),
            ("gone".to_string(), missing),
        ];
        let (spec, warnings) = to_spec(&Generate {
            files: &files,
            hook_program: Path::new("/usr/bin/dt-agent"),
            ld_conf: None,
        });
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("not/here.so"), "{warnings:?}");
        super::super::validate(&spec).unwrap();
        let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["l4t", "cuda", "all"]);
        let l = &spec.devices[0].container_edits;
        assert_eq!(l.device_nodes[0].path, "/dev/null");
        assert_eq!(l.mounts.len(), 3);
        // The link's name in the container, its final target's content.
        assert_eq!(
            l.mounts[1].container_path,
            p("usr/lib/aarch64-linux-gnu/tegra/libcuda.so")
        );
        assert_eq!(
            l.mounts[1].host_path,
            std::fs::canonicalize(tegra.join("libcuda.so.1.1"))
                .unwrap()
                .to_string_lossy()
        );
        assert_eq!(l.mounts[2].options, ["ro", "nosuid", "nodev", "rbind"]);
        assert_eq!(l.hooks.len(), 1);
        assert_eq!(l.hooks[0].hook_name, "createContainer");
        assert_eq!(
            l.hooks[0].args[4..],
            [p("egl"), p("usr/lib/aarch64-linux-gnu/tegra")]
        );
        // `all` holds each entry once.
        let a = &spec.devices[2].container_edits;
        assert_eq!(a.mounts.len(), 3);
        assert_eq!(a.hooks.len(), 1);
        // Written and read back, it is the same spec.
        let text = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(
            super::super::parse_spec(Path::new("x.yaml"), &text).unwrap(),
            spec
        );
    }
}
