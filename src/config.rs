//! Project data files: `targets/*.yaml` (one per robot CPU). Parsing is pure (`parse_*`), loading
//! reads a file (`load_*`); the shipped files are embedded so the binaries work from anywhere.

use std::path::Path;

use serde::Deserialize;

use crate::oci::Platform;
use crate::util::fs::{PathContext, PathError};

/// A target platform: how dts names it and how it builds for it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Short name (`amd64`, `arm64`, `armhf`).
    pub name: String,
    /// OCI platform string.
    pub platform: String,
    /// OCI os.
    pub os: String,
    /// OCI architecture.
    pub architecture: String,
    /// OCI variant.
    pub variant: Option<String>,
    /// Duckietown arch tag (`amd64`, `arm64v8`, `arm32v7`).
    pub duckietown_arch: String,
    /// Rust target triple for the agent.
    pub rust_triple: String,
    /// Extra rustflags for that triple.
    #[serde(default)]
    pub rustflags: Vec<String>,
    /// Linker, when rustc's default will not do.
    pub linker: Option<String>,
    /// C compiler for the C parts of the agent's dependencies (zstd-sys), for `scripts/cross-build`.
    #[serde(default)]
    pub cc: Option<String>,
    /// QEMU user-mode emulator binary, when the target is not native to x86 hosts.
    pub qemu: Option<String>,
    /// What `uname -m` prints on the target.
    pub uname_m: String,
}

/// A target file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Could not read it.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Not valid for its schema; the message names the key and position.
    #[error("{file}: {message}")]
    Invalid {
        /// Which file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

const EMBEDDED: [(&str, &str); 3] = [
    ("targets/amd64.yaml", include_str!("../targets/amd64.yaml")),
    ("targets/arm64.yaml", include_str!("../targets/arm64.yaml")),
    ("targets/armhf.yaml", include_str!("../targets/armhf.yaml")),
];

impl Target {
    /// The OCI platform.
    pub fn oci_platform(&self) -> Platform {
        Platform::linux(&self.architecture, self.variant.as_deref())
    }

    /// Every target dts ships.
    pub fn all() -> Vec<Target> {
        EMBEDDED
            .iter()
            .map(|(file, text)| parse_target(file, text).expect("shipped targets are valid"))
            .collect()
    }

    /// The target for a platform, if dts supports it.
    pub fn for_platform(p: &Platform) -> Option<Target> {
        Target::all()
            .into_iter()
            .find(|t| t.oci_platform().matches(p))
    }
}

/// Parses a target file's text; `file` names it in errors.
pub fn parse_target(file: &str, text: &str) -> Result<Target, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        file: file.to_string(),
        message,
    };
    let t: Target = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let parsed: Platform = t
        .platform
        .parse()
        .map_err(|e: crate::oci::platform::PlatformError| invalid(format!("platform: {e}")))?;
    if !parsed.matches(&t.oci_platform()) {
        return Err(invalid(format!(
            "platform: `{}` disagrees with architecture `{}` / variant `{:?}`",
            t.platform, t.architecture, t.variant
        )));
    }
    if parsed.duckietown_arch() != Some(t.duckietown_arch.as_str()) {
        return Err(invalid(format!(
            "duckietown_arch: `{}` is not the tag of {}",
            t.duckietown_arch, t.platform
        )));
    }
    Ok(t)
}

/// Reads and parses a target file.
pub fn load_target(path: &Path) -> Result<Target, ConfigError> {
    let text = std::fs::read_to_string(path).at("read", path)?;
    parse_target(&path.display().to_string(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_targets_are_consistent() {
        let all = Target::all();
        let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["amd64", "arm64", "armhf"]);
        for p in ["arm64v8", "linux/arm/v7", "x86_64"] {
            assert!(Target::for_platform(&p.parse().unwrap()).is_some(), "{p}");
        }
        let armhf = Target::for_platform(&Platform::armhf()).unwrap();
        assert_eq!(armhf.rust_triple, "armv7-unknown-linux-gnueabihf");
        assert_eq!(armhf.uname_m, "armv7l");
    }

    #[test]
    fn bad_files_name_the_key() {
        let good = EMBEDDED[1].1;
        let e = parse_target(
            "t.yaml",
            &good.replace("duckietown_arch: arm64v8", "duckietown_arch: arm32v7"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("duckietown_arch"), "{e}");
        let e = parse_target("t.yaml", &format!("{good}\nbogus: 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse_target(
            "t.yaml",
            &good.replace("platform: linux/arm64", "platform: linux/mips"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("platform"), "{e}");
    }
}
