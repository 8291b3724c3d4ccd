//! Platforms: the `os/architecture/variant` triple of the OCI image index, parsed from every
//! spelling users type (`linux/arm64`, `arm64v8`, `aarch64`, `linux/arm/v7`, `arm32v7`, `armhf`,
//! `amd64`, `x86_64`) and normalised the way containerd does (`arm64/v8` is `arm64`, bare `arm`
//! is `arm/v7`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An image platform as it appears in an index descriptor or an image config.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, Go spelling (`amd64`, `arm64`, `arm`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// OS version (Windows images only).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant (`v7` for armhf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Reserved by the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// Why a platform string was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown platform `{0}` (use linux/amd64, linux/arm64 or linux/arm/v7; arm64v8, arm32v7, armhf and amd64 work too)"
)]
pub struct PlatformError(pub String);

impl Platform {
    /// A linux platform with the given architecture and variant, normalised.
    pub fn linux(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            os_version: None,
            os_features: None,
            variant: variant.map(str::to_string),
            features: None,
        }
        .normalized()
    }

    /// `linux/amd64`.
    pub fn amd64() -> Platform {
        Platform::linux("amd64", None)
    }

    /// `linux/arm64`.
    pub fn arm64() -> Platform {
        Platform::linux("arm64", None)
    }

    /// `linux/arm/v7`.
    pub fn armhf() -> Platform {
        Platform::linux("arm", Some("v7"))
    }

    /// The platform this program was compiled for.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "x86" => "386",
            other => other,
        };
        Platform::linux(arch, None)
    }

    /// containerd's normalisation: `arm64/v8` → `arm64`, `arm` without variant → `arm/v7`,
    /// Linux kernel names → Go names.
    pub fn normalized(mut self) -> Platform {
        let (arch, variant) = normalize_arch(&self.architecture, self.variant.as_deref());
        let (arch, variant) = (arch.to_string(), variant.map(str::to_string));
        self.architecture = arch;
        self.variant = variant;
        self.os = self.os.to_ascii_lowercase();
        self
    }

    /// Whether an image built for `self` (as written in an index or config) serves `wanted`.
    pub fn matches(&self, wanted: &Platform) -> bool {
        let a = self.clone().normalized();
        let b = wanted.clone().normalized();
        a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
    }

    /// Duckietown's arch tag: `amd64`, `arm64v8`, `arm32v7`.
    pub fn duckietown_arch(&self) -> Option<&'static str> {
        let p = self.clone().normalized();
        match (p.architecture.as_str(), p.variant.as_deref()) {
            ("amd64", _) => Some("amd64"),
            ("arm64", _) => Some("arm64v8"),
            ("arm", Some("v7")) => Some("arm32v7"),
            _ => None,
        }
    }
}

fn normalize_arch<'a>(arch: &'a str, variant: Option<&'a str>) -> (&'a str, Option<&'a str>) {
    match (arch, variant) {
        ("x86_64" | "x86-64" | "amd64", _) => ("amd64", None),
        ("i386" | "i686" | "386", _) => ("386", None),
        ("aarch64" | "arm64", Some("v8") | None) => ("arm64", None),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armel", None) => ("arm", Some("v6")),
        ("armhf" | "arm", None) => ("arm", Some("v7")),
        ("arm" | "armhf" | "armel", Some(v)) => ("arm", Some(v)),
        (a, v) => (a, v),
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        let err = || PlatformError(s.to_string());
        let lower = s.trim().to_ascii_lowercase();
        // Duckietown and Debian spellings first: they carry no os.
        let p = match lower.as_str() {
            "arm64v8" | "aarch64" | "arm64" => Platform::arm64(),
            "arm32v7" | "armhf" | "armv7" | "armv7l" | "arm" => Platform::armhf(),
            "arm32v6" | "armel" | "armv6" | "armv6l" => Platform::linux("arm", Some("v6")),
            "amd64" | "x86_64" | "x86-64" => Platform::amd64(),
            _ => {
                let parts: Vec<&str> = lower.split('/').collect();
                match parts.as_slice() {
                    [os, arch] if !os.is_empty() && !arch.is_empty() => {
                        let mut p: Platform = arch.parse().map_err(|_| err())?;
                        p.os = os.to_string();
                        p
                    }
                    [os, arch, variant]
                        if !os.is_empty() && !arch.is_empty() && !variant.is_empty() =>
                    {
                        Platform {
                            architecture: arch.to_string(),
                            os: os.to_string(),
                            os_version: None,
                            os_features: None,
                            variant: Some(variant.to_string()),
                            features: None,
                        }
                        .normalized()
                    }
                    _ => return Err(err()),
                }
            }
        };
        if p.os != "linux" && p.os != "windows" {
            return Err(err());
        }
        if !matches!(
            p.architecture.as_str(),
            "amd64" | "arm64" | "arm" | "386" | "riscv64" | "ppc64le" | "s390x"
        ) {
            return Err(err());
        }
        Ok(p)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Parses a comma-separated platform list (`linux/arm64,linux/arm/v7`), dropping duplicates.
pub fn parse_list(s: &str) -> Result<Vec<Platform>, PlatformError> {
    let mut out: Vec<Platform> = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let p: Platform = part.parse()?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(PlatformError(s.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling() {
        for (input, want) in [
            ("linux/arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("arm64v8", "linux/arm64"),
            ("aarch64", "linux/arm64"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
            ("arm32v7", "linux/arm/v7"),
            ("armhf", "linux/arm/v7"),
            ("amd64", "linux/amd64"),
            ("x86_64", "linux/amd64"),
            ("linux/amd64", "linux/amd64"),
            ("LINUX/AMD64", "linux/amd64"),
            ("linux/arm/v6", "linux/arm/v6"),
        ] {
            assert_eq!(
                input.parse::<Platform>().unwrap().to_string(),
                want,
                "{input}"
            );
        }
        for bad in [
            "",
            "linux",
            "linux/",
            "mips",
            "darwin/amd64",
            "linux/arm64/v8/x",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_and_duckietown_tags() {
        let indexed = Platform {
            variant: Some("v8".into()),
            ..Platform::arm64()
        };
        assert!(indexed.matches(&"arm64v8".parse().unwrap()));
        assert!(!Platform::armhf().matches(&Platform::arm64()));
        assert!(Platform::linux("arm", None).matches(&Platform::armhf()));
        assert_eq!(Platform::armhf().duckietown_arch(), Some("arm32v7"));
        assert_eq!(Platform::arm64().duckietown_arch(), Some("arm64v8"));
        assert_eq!(Platform::amd64().duckietown_arch(), Some("amd64"));
        assert_eq!(
            parse_list("linux/arm64,arm64v8,armhf").unwrap(),
            vec![Platform::arm64(), Platform::armhf()]
        );
    }

    #[test]
    fn serde_uses_oci_names() {
        let p: Platform =
            serde_json::from_str(r#"{"architecture":"arm","os":"linux","variant":"v7"}"#).unwrap();
        assert_eq!(p, Platform::armhf());
        assert_eq!(
            serde_json::to_string(&Platform::armhf()).unwrap(),
            r#"{"architecture":"arm","os":"linux","variant":"v7"}"#
        );
    }
}
