//! The `dt-agent` binaries `dts` ships to robots: which robot CPUs have one, and where on this
//! machine the binary for a given CPU is.
//!
//! The binaries are built by `scripts/cross-build` (static: musl for amd64/arm64, glibc with
//! `+crt-static` for armhf), which writes `target/agents/<arch>/dt-agent` plus a `.sha256`
//! next to it. An installed `dts` finds them next to its own executable; a development build
//! finds them in the repository's `target/agents`. The host's own arch can always fall back to
//! the `dt-agent` built alongside `dts` (the amd64 virtual robot runs that one).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::oci::Platform;

/// A robot CPU `dt-agent` is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentArch {
    /// x86_64: laptops, virtual robots, CI.
    Amd64,
    /// aarch64: Jetson Nano (DB21J/DB21M), Raspberry Pi 4 with a 64-bit OS.
    Arm64,
    /// armv7 hard-float: Raspberry Pi 3 (DB18/DB19) on 32-bit HypriotOS.
    Armhf,
}

impl AgentArch {
    /// Every arch: one per `targets/<arch>.yaml`, which `scripts/cross-build` builds from (a unit
    /// test keeps the two in step).
    pub const ALL: [AgentArch; 3] = [AgentArch::Amd64, AgentArch::Arm64, AgentArch::Armhf];

    /// The arch of a robot from its `uname -m`.
    ///
    /// `armv6l` (Raspberry Pi Zero / Pi 1) is deliberately not an armhf robot: the armhf agent
    /// is compiled for ARMv7 (`armv7-unknown-linux-gnueabihf`, Thumb-2 and NEON-less VFPv3) and
    /// would die with SIGILL there; no Duckiebot model uses those boards.
    pub fn from_uname(m: &str) -> Option<AgentArch> {
        match m.trim() {
            "x86_64" | "amd64" => Some(AgentArch::Amd64),
            "aarch64" | "arm64" => Some(AgentArch::Arm64),
            // A 64-bit kernel under a 32-bit userland reports armv8l; it runs armv7 binaries.
            "armv7l" | "armv8l" | "armhf" => Some(AgentArch::Armhf),
            _ => None,
        }
    }

    /// The arch for an OCI platform (`linux/arm/v7` → armhf), `None` for anything else.
    pub fn from_platform(p: &Platform) -> Option<AgentArch> {
        let p = p.clone().normalized();
        if p.os != "linux" {
            return None;
        }
        match (p.architecture.as_str(), p.variant.as_deref()) {
            ("amd64", _) => Some(AgentArch::Amd64),
            ("arm64", None | Some("v8")) => Some(AgentArch::Arm64),
            ("arm", Some("v7")) => Some(AgentArch::Armhf),
            _ => None,
        }
    }

    /// The OCI platform of the arch.
    pub fn platform(&self) -> Platform {
        match self {
            AgentArch::Amd64 => Platform::amd64(),
            AgentArch::Arm64 => Platform::arm64(),
            AgentArch::Armhf => Platform::armhf(),
        }
    }

    /// The name `scripts/cross-build` and the `targets/` files use.
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentArch::Amd64 => "amd64",
            AgentArch::Arm64 => "arm64",
            AgentArch::Armhf => "armhf",
        }
    }

    /// What `uname -m` says on a robot of this arch (what a container there prints, too).
    pub fn uname_m(&self) -> &'static str {
        match self {
            AgentArch::Amd64 => "x86_64",
            AgentArch::Arm64 => "aarch64",
            AgentArch::Armhf => "armv7l",
        }
    }

    /// The Rust target `scripts/cross-build` builds this arch's agent for.
    pub fn rust_triple(&self) -> &'static str {
        match self {
            AgentArch::Amd64 => "x86_64-unknown-linux-musl",
            AgentArch::Arm64 => "aarch64-unknown-linux-musl",
            AgentArch::Armhf => "armv7-unknown-linux-gnueabihf",
        }
    }

    /// The arch of the machine this program runs on, if robots of it exist.
    pub fn host() -> Option<AgentArch> {
        AgentArch::from_platform(&Platform::host())
    }
}

impl fmt::Display for AgentArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AgentArch {
    type Err = String;

    /// `amd64`, `arm64`, `armhf`, or anything [`Platform`] parses to one of them.
    fn from_str(s: &str) -> Result<AgentArch, String> {
        let p: Platform = s
            .parse()
            .map_err(|e: crate::oci::platform::PlatformError| e.to_string())?;
        AgentArch::from_platform(&p).ok_or_else(|| {
            format!("no dt-agent for platform {p} (amd64, arm64 and armhf have one)")
        })
    }
}

/// A `dt-agent` binary found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinary {
    /// The robot CPU it is for.
    pub arch: AgentArch,
    /// Where it is.
    pub path: PathBuf,
    /// Lowercase hex sha256 of its bytes (computed, and checked against a `.sha256` beside it).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why no usable binary was found.
#[derive(Debug, thiserror::Error)]
pub enum AgentBinaryError {
    /// None of the places looked in has one.
    #[error(
        "no dt-agent binary for {arch}; looked in: {}; build it with `scripts/cross-build {arch}` (or set DTS_AGENT_DIR to a directory holding {arch}/dt-agent)",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoBinary {
        /// The arch asked for.
        arch: AgentArch,
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
    },
    /// A binary is there but its `.sha256` disagrees with its bytes (a half-copied or stale file).
    #[error(
        "{path}: sha256 is {actual} but {path}.sha256 says {recorded}; rebuild it with `scripts/cross-build {arch}`",
        path = path.display()
    )]
    ChecksumMismatch {
        /// The arch asked for.
        arch: AgentArch,
        /// The binary.
        path: PathBuf,
        /// What the `.sha256` file says.
        recorded: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// Reading a binary (or the running executable's path) failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Finds the `dt-agent` binary for `arch`, looking (first hit wins) in:
/// 1. `$DTS_AGENT_DIR/<arch>/dt-agent`;
/// 2. next to the running `dts`: `dt-agent-<arch>`, then `agents/<arch>/dt-agent`;
/// 3. the repository's `target/agents/<arch>/dt-agent`, found from a `dts` in
///    `target/<profile>/` (or `target/<triple>/<profile>/`);
/// 4. for the host's own arch only, the `dt-agent` next to `dts` (built by the same cargo run).
pub fn find_agent(arch: AgentArch) -> Result<AgentBinary, AgentBinaryError> {
    let exe = std::env::current_exe().map_err(|source| AgentBinaryError::Io {
        action: "find the running executable",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let agent_dir = std::env::var_os("DTS_AGENT_DIR").map(PathBuf::from);
    find_agent_in(arch, agent_dir.as_deref(), &exe)
}

/// [`find_agent`] with the environment spelled out: `agent_dir` is `$DTS_AGENT_DIR`, `exe` the
/// running `dts`.
pub fn find_agent_in(
    arch: AgentArch,
    agent_dir: Option<&Path>,
    exe: &Path,
) -> Result<AgentBinary, AgentBinaryError> {
    let searched = candidates(arch, agent_dir, exe);
    for path in &searched {
        if path.is_file() {
            return describe(arch, path);
        }
    }
    Err(AgentBinaryError::NoBinary { arch, searched })
}

/// Where [`find_agent_in`] looks, in order.
pub fn candidates(arch: AgentArch, agent_dir: Option<&Path>, exe: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = agent_dir.filter(|d| !d.as_os_str().is_empty()) {
        out.push(dir.join(arch.as_str()).join("dt-agent"));
    }
    // current_exe may be a symlink (an installed /usr/local/bin/dts → /opt/dts/bin/dts); the
    // binaries live beside the real file.
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    if let Some(bin_dir) = exe.parent() {
        out.push(bin_dir.join(format!("dt-agent-{arch}")));
        out.push(bin_dir.join("agents").join(arch.as_str()).join("dt-agent"));
        // A cargo build puts dts in target/<profile>/ (or target/<triple>/<profile>/, or
        // target/<profile>/deps/ for test executables); scripts/cross-build writes
        // target/agents/. Walk up to the first directory named `target`.
        if let Some(target) = bin_dir
            .ancestors()
            .take(4)
            .find(|d| d.file_name().is_some_and(|n| n == "target"))
        {
            out.push(target.join("agents").join(arch.as_str()).join("dt-agent"));
        }
        if AgentArch::host() == Some(arch) {
            out.push(bin_dir.join("dt-agent"));
            // Test executables live in target/<profile>/deps; the binaries one level up.
            if bin_dir.file_name().is_some_and(|n| n == "deps")
                && let Some(profile_dir) = bin_dir.parent()
            {
                out.push(profile_dir.join("dt-agent"));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// Hashes and sizes a found binary, checking a `.sha256` beside it when there is one.
fn describe(arch: AgentArch, path: &Path) -> Result<AgentBinary, AgentBinaryError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| AgentBinaryError::Io {
            action,
            path: p,
            source,
        }
    };
    let mut file = File::open(path).map_err(io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha256 = hex::encode(hasher.finalize());
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".sha256");
    let sidecar = PathBuf::from(sidecar);
    match std::fs::read_to_string(&sidecar) {
        Ok(text) => {
            // `sha256sum` format: "<hex>  <name>"; a bare hex digest works too.
            let recorded = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if recorded != sha256 {
                return Err(AgentBinaryError::ChecksumMismatch {
                    arch,
                    path: path.to_path_buf(),
                    recorded,
                    actual: sha256,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &sidecar)(e)),
    }
    Ok(AgentBinary {
        arch,
        path: path.to_path_buf(),
        sha256,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uname_names() {
        assert_eq!(AgentArch::from_uname("x86_64"), Some(AgentArch::Amd64));
        assert_eq!(AgentArch::from_uname("aarch64\n"), Some(AgentArch::Arm64));
        assert_eq!(AgentArch::from_uname("arm64"), Some(AgentArch::Arm64));
        assert_eq!(AgentArch::from_uname("armv7l"), Some(AgentArch::Armhf));
        assert_eq!(AgentArch::from_uname("armv6l"), None);
        assert_eq!(AgentArch::from_uname("aarch64_be"), None);
        assert_eq!(AgentArch::from_uname("mips"), None);
    }

    #[test]
    fn platforms_round_trip() {
        for a in AgentArch::ALL {
            assert_eq!(AgentArch::from_platform(&a.platform()), Some(a));
            assert_eq!(a.to_string().parse::<AgentArch>().unwrap(), a);
            assert_eq!(AgentArch::from_uname(a.uname_m()), Some(a));
        }
        assert_eq!(
            AgentArch::from_platform(&Platform::linux("arm", Some("v6"))),
            None
        );
        assert_eq!("arm64v8".parse::<AgentArch>().unwrap(), AgentArch::Arm64);
        assert!("arm32v6".parse::<AgentArch>().is_err());
    }

    /// `targets/<arch>.yaml` is the source of truth for the robot CPUs (scripts/cross-build
    /// builds from it, docs/formats.md "Targets"); this enum restates what `dts` needs at run
    /// time, so the two must agree: the same set of arches, and per arch the same name,
    /// platform, `uname -m`, Rust triple and Duckietown arch tag.
    #[test]
    fn agrees_with_the_targets_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut ours: Vec<String> = AgentArch::ALL.iter().map(|a| a.to_string()).collect();
        ours.sort();
        assert_eq!(files, ours, "targets/*.yaml and AgentArch::ALL");
        for a in AgentArch::ALL {
            let path = dir.join(format!("{a}.yaml"));
            let text = std::fs::read_to_string(&path).unwrap();
            let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
            let field = |k: &str| {
                y[k].as_str()
                    .unwrap_or_else(|| panic!("{}: no `{k}`", path.display()))
                    .to_owned()
            };
            assert_eq!(field("name"), a.as_str(), "{}", path.display());
            assert_eq!(
                field("platform"),
                a.platform().to_string(),
                "{}",
                path.display()
            );
            assert_eq!(field("uname_m"), a.uname_m(), "{}", path.display());
            assert_eq!(field("rust_triple"), a.rust_triple(), "{}", path.display());
            assert_eq!(
                field("duckietown_arch").parse::<AgentArch>(),
                Ok(a),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn lookup_order_and_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let bin = root.join("repo/target/debug");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("dts");
        std::fs::write(&exe, b"dts").unwrap();
        let env_dir = root.join("env");

        let err = find_agent_in(AgentArch::Arm64, Some(&env_dir), &exe).unwrap_err();
        let AgentBinaryError::NoBinary { searched, .. } = &err else {
            panic!("{err}")
        };
        let bin = std::fs::canonicalize(&bin).unwrap();
        assert_eq!(searched[0], env_dir.join("arm64/dt-agent"));
        assert_eq!(searched[1], bin.join("dt-agent-arm64"));
        assert_eq!(searched[2], bin.join("agents/arm64/dt-agent"));
        assert_eq!(
            searched[3],
            bin.parent().unwrap().join("agents/arm64/dt-agent")
        );
        assert!(
            err.to_string().contains("scripts/cross-build arm64"),
            "{err}"
        );

        let built = bin.parent().unwrap().join("agents/arm64");
        std::fs::create_dir_all(&built).unwrap();
        std::fs::write(built.join("dt-agent"), b"agent").unwrap();
        let found = find_agent_in(AgentArch::Arm64, Some(&env_dir), &exe).unwrap();
        assert_eq!(found.path, built.join("dt-agent"));
        assert_eq!(found.size, 5);
        assert_eq!(found.sha256, hex::encode(Sha256::digest(b"agent")));

        // An earlier place wins.
        std::fs::create_dir_all(env_dir.join("arm64")).unwrap();
        std::fs::write(env_dir.join("arm64/dt-agent"), b"other").unwrap();
        let found = find_agent_in(AgentArch::Arm64, Some(&env_dir), &exe).unwrap();
        assert_eq!(found.path, env_dir.join("arm64/dt-agent"));

        // A stale .sha256 is refused.
        std::fs::write(env_dir.join("arm64/dt-agent.sha256"), "00  dt-agent\n").unwrap();
        let err = find_agent_in(AgentArch::Arm64, Some(&env_dir), &exe).unwrap_err();
        assert!(
            matches!(err, AgentBinaryError::ChecksumMismatch { .. }),
            "{err}"
        );
        let good = format!("{}  dt-agent\n", hex::encode(Sha256::digest(b"other")));
        std::fs::write(env_dir.join("arm64/dt-agent.sha256"), good).unwrap();
        assert!(find_agent_in(AgentArch::Arm64, Some(&env_dir), &exe).is_ok());

        // The host's own arch falls back to the dt-agent next to dts.
        if let Some(host) = AgentArch::host() {
            std::fs::write(bin.join("dt-agent"), b"native").unwrap();
            let found = find_agent_in(host, None, &exe).unwrap();
            assert!(found.path.starts_with(&bin), "{}", found.path.display());
        }
    }
}
