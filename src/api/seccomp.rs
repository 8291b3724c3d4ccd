//! A container's confinement beyond Docker's default capabilities, as `docker run` takes it:
//! `--security-opt seccomp=unconfined|PATH`, `--security-opt no-new-privileges[=true|false]`
//! and `--read-only` ([`Security`]), and a seccomp profile in Docker's JSON format
//! ([`Profile`]: the runtime spec's `linux.seccomp` plus `archMap` and rules that apply only
//! for some capabilities, architectures or kernels). The robot turns a profile into the OCI
//! spec (`agent::container::seccomp`); the laptop parses one only to refuse a bad file early.

use oci_spec::runtime::{Arch, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag};
use serde::{Deserialize, Serialize};

use super::container::SpecError;

/// What confines a container besides its capabilities and namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Security {
    /// Its seccomp filter.
    pub seccomp: Seccomp,
    /// `no_new_privileges`: setuid binaries and file capabilities grant nothing. Off by
    /// default, as in Docker: images use `sudo`/`ping`, and the seccomp filter already keeps
    /// what a regained privilege could reach small.
    pub no_new_privileges: bool,
    /// The root file system is mounted read-only (volumes stay as they are mounted).
    pub read_only: bool,
}

impl Security {
    /// Whether nothing differs from the default (the field is then left out of JSON, so
    /// records and requests keep their bytes).
    pub fn is_default(&self) -> bool {
        *self == Security::default()
    }

    /// Applies one `--security-opt` value; a `seccomp=PATH` is read by `read` (the caller
    /// knows where files are: the laptop, the stack's directory, the robot).
    pub fn apply_opt(
        &mut self,
        opt: &str,
        read: impl FnOnce(&str) -> Result<String, String>,
    ) -> Result<(), SpecError> {
        // Docker's spelling is `key=value`; `key:value` is its older one, still accepted.
        let (key, value) = match opt.split_once('=') {
            Some(kv) => kv,
            None => opt.split_once(':').unwrap_or((opt, "")),
        };
        match (key, value) {
            ("seccomp", "") => Err(SpecError(
                "`seccomp` needs a value: `seccomp=unconfined` or `seccomp=PATH` to a profile"
                    .into(),
            )),
            ("seccomp", "unconfined") => {
                self.seccomp = Seccomp::Unconfined;
                Ok(())
            }
            ("seccomp", path) => {
                let text = read(path)
                    .map_err(|e| SpecError(format!("cannot read seccomp profile `{path}`: {e}")))?;
                Profile::parse(&text)
                    .map_err(|e| SpecError(format!("seccomp profile `{path}`: {}", e.0)))?;
                self.seccomp = Seccomp::Profile(text);
                Ok(())
            }
            ("no-new-privileges", v) => {
                self.no_new_privileges = match v {
                    "" | "true" => true,
                    "false" => false,
                    _ => {
                        return Err(SpecError(format!(
                            "invalid `no-new-privileges` value `{v}`: use true or false"
                        )));
                    }
                };
                Ok(())
            }
            _ => Err(SpecError(format!(
                "unsupported security option `{opt}`: dts takes `seccomp=unconfined`, \
                 `seccomp=PATH` and `no-new-privileges[=true|false]` (robots have no AppArmor \
                 or SELinux policy to name; grant devices with device roles)"
            ))),
        }
    }
}

/// Which seccomp filter a container runs under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// Docker's default profile.
    #[default]
    Default,
    /// None (`seccomp=unconfined`).
    Unconfined,
    /// A Docker-format profile: the file's text, read where the option was given (the
    /// laptop) and carried in the request, so the robot needs no copy of the file.
    Profile(String),
}

/// A seccomp profile in Docker's format (moby's `profiles/seccomp` `Seccomp` type).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// What an unlisted syscall gets.
    pub default_action: LinuxSeccompAction,
    /// The errno of an `SCMP_ACT_ERRNO` default (`1`, EPERM, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Architectures, as the runtime spec lists them (exclusive with `arch_map`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<Arch>,
    /// Per native architecture, the ones its kernel also runs (x86 and x32 on x86_64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchEntry>,
    /// Filter flags, passed through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<LinuxSeccompFilterFlag>,
    /// The rules, in order.
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

/// One `archMap` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchEntry {
    /// The native architecture.
    pub architecture: Arch,
    /// The others its kernel runs.
    #[serde(default)]
    pub sub_architectures: Option<Vec<Arch>>,
}

/// One rule: syscalls, an action, argument conditions, and when the rule applies at all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The syscalls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A single syscall: the old spelling of `names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What they get.
    pub action: LinuxSeccompAction,
    /// The errno of an `SCMP_ACT_ERRNO` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments, all of which must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<LinuxSeccompArg>>,
    /// Why (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The rule applies only when all of these hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<Filter>,
    /// The rule does not apply when any of these holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<Filter>,
}

/// A rule's condition: capabilities the container holds, the robot's architecture, its kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Capabilities (`CAP_SYS_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Architectures in Go's naming, as moby writes them (`amd64`, `arm64`, `arm`, `x86`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    /// A kernel version, `<kernel>.<major>` (`4.8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl Profile {
    /// Parses and checks a profile: what Docker refuses is refused with Docker's reason.
    pub fn parse(text: &str) -> Result<Profile, SpecError> {
        let p: Profile = serde_json::from_str(text)
            .map_err(|e| SpecError(format!("not a Docker seccomp profile: {e}")))?;
        if !p.architectures.is_empty() && !p.arch_map.is_empty() {
            return Err(SpecError(
                "both `architectures` and `archMap` are given: use one".into(),
            ));
        }
        for r in &p.syscalls {
            if r.name.is_some() && !r.names.is_empty() {
                return Err(SpecError(
                    "a rule gives both `name` and `names`: use one".into(),
                ));
            }
            for f in r.includes.iter().chain(&r.excludes) {
                if let Some(k) = &f.min_kernel {
                    parse_kernel(k).map_err(SpecError)?;
                }
            }
        }
        Ok(p)
    }
}

/// `<kernel>.<major>` (`4.8`) as numbers; `4.9.253-tegra` reads as `(4, 9)` too.
pub fn parse_kernel(v: &str) -> Result<(u64, u64), String> {
    let bad = || format!("invalid kernel version `{v}`: expected `<kernel>.<major>`");
    let mut it = v.splitn(3, '.');
    let k = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let digits: String = it
        .next()
        .ok_or_else(bad)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let m = digits.parse().map_err(|_| bad())?;
    if (k, m) == (0, 0) {
        return Err(bad());
    }
    Ok((k, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_file(_: &str) -> Result<String, String> {
        Err("no such file".into())
    }

    #[test]
    fn security_opts_are_read_the_way_docker_reads_them() {
        let mut s = Security::default();
        s.apply_opt("seccomp=unconfined", no_file).unwrap();
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        s.apply_opt("no-new-privileges", no_file).unwrap();
        assert!(s.no_new_privileges);
        s.apply_opt("no-new-privileges:false", no_file).unwrap();
        assert!(!s.no_new_privileges);
        s.apply_opt("no-new-privileges=true", no_file).unwrap();
        assert!(s.no_new_privileges);
        let text = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["bpf"],"action":"SCMP_ACT_ERRNO"}]}"#;
        s.apply_opt("seccomp=/p.json", |p| {
            assert_eq!(p, "/p.json");
            Ok(text.into())
        })
        .unwrap();
        assert_eq!(s.seccomp, Seccomp::Profile(text.into()));

        for (bad, says) in [
            (
                "apparmor=unconfined",
                "unsupported security option `apparmor=unconfined`",
            ),
            ("seccomp=", "needs a value"),
            (
                "seccomp=/nope.json",
                "cannot read seccomp profile `/nope.json`",
            ),
            ("no-new-privileges=maybe", "`maybe`"),
        ] {
            let e = Security::default().apply_opt(bad, no_file).unwrap_err();
            assert!(e.0.contains(says), "{bad}: {e}");
        }
        let e = Security::default()
            .apply_opt("seccomp=x", |_| Ok("{\"syscalls\": 3}".into()))
            .unwrap_err();
        assert!(
            e.0.contains("seccomp profile `x`: not a Docker seccomp profile"),
            "{e}"
        );
    }

    #[test]
    fn the_default_is_left_out_of_json_and_others_round_trip() {
        assert!(Security::default().is_default());
        let s = Security {
            seccomp: Seccomp::Profile("{}".into()),
            no_new_privileges: true,
            read_only: true,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(
            j,
            r#"{"seccomp":{"profile":"{}"},"no_new_privileges":true,"read_only":true}"#
        );
        assert_eq!(serde_json::from_str::<Security>(&j).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<Security>(r#"{"seccomp":"unconfined"}"#)
                .unwrap()
                .seccomp,
            Seccomp::Unconfined
        );
    }

    #[test]
    fn profiles_docker_refuses_are_refused() {
        let both = r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
            "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":null}],"syscalls":[]}"#;
        assert!(Profile::parse(both).unwrap_err().0.contains("archMap"));
        let name_and_names = r#"{"defaultAction":"SCMP_ACT_ERRNO",
            "syscalls":[{"name":"read","names":["write"],"action":"SCMP_ACT_ALLOW"}]}"#;
        assert!(
            Profile::parse(name_and_names)
                .unwrap_err()
                .0
                .contains("`name`")
        );
        let kernel = r#"{"defaultAction":"SCMP_ACT_ERRNO",
            "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"four"}}]}"#;
        assert!(Profile::parse(kernel).unwrap_err().0.contains("`four`"));
        assert_eq!(parse_kernel("4.9.253-tegra").unwrap(), (4, 9));
        assert_eq!(parse_kernel("6.18-rc1").unwrap(), (6, 18));
        assert!(parse_kernel("0.0").is_err());
    }
}
