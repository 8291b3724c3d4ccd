//! The programs a virtual robot needs from this machine, checked by `dts sim up` before it
//! makes anything, so a machine without one gets the `apt-get install` line at once instead of
//! a sim that never answers.
//!
//! Two kinds: the host's tools that `dts` runs itself (`ip`, `tc`, `ssh-keygen`, found like
//! [`super::net::run_tool`] finds them), and the robot's own programs. A sim's `/usr` is the
//! host's, read-only, so those are looked up in the host's `/usr` the way the sim will: the
//! daemons pid 1 starts by absolute path ([`SSHD`], [`super::avahi::AVAHI_DAEMON`]), `sudo` on
//! the robot's `PATH`, and the OCI runtime the agent picks ([`crate::runtime`]'s order: runc,
//! or crun on a cgroup-v2-only host). Nothing here prints or changes anything.

use std::path::{Path, PathBuf};

/// sshd, as pid 1 starts it.
pub const SSHD: &str = "/usr/sbin/sshd";
/// Directories of the robot's `PATH` that are the host's (its `/usr/local` is its own and holds
/// only dt-agent).
const ROBOT_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A program the sim needs that is not here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// What is missing (`sudo`).
    pub program: &'static str,
    /// Where it was looked for: a directory, or `PATH`-like directories.
    pub looked_in: String,
    /// The Debian package that has it.
    pub package: &'static str,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (not in {})", self.program, self.looked_in)
    }
}

/// `apt-get install P…` for `missing`, each package once, in order.
pub fn apt_line(missing: &[Missing]) -> String {
    let mut pkgs: Vec<&str> = Vec::new();
    for m in missing {
        if !pkgs.contains(&m.package) {
            pkgs.push(m.package);
        }
    }
    format!("apt-get install {}", pkgs.join(" "))
}

/// Whether `p` is a regular file (after symlinks) with an execute bit.
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

fn robot_dirs() -> Vec<PathBuf> {
    ROBOT_DIRS.iter().map(PathBuf::from).collect()
}

fn shown(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `/sys/fs/cgroup` is the unified hierarchy alone: crun runs containers only there
/// (the same test the agent makes when it picks a runtime).
fn cgroup_v2_only() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // f_type is i64 here, i32 on 32-bit ARM.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs("/sys/fs/cgroup").is_ok_and(|s| s.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// What a sim needs and this machine lacks; `link_rate`: whether `tc` is needed too. Empty
/// when everything is there.
pub fn missing(link_rate: bool) -> Vec<Missing> {
    let mut out = Vec::new();
    let host = super::net::tool_dirs();
    let mut host_tools = vec![("ip", "iproute2"), ("ssh-keygen", "openssh-client")];
    if link_rate {
        host_tools.push(("tc", "iproute2"));
    }
    for (program, package) in host_tools {
        if find_in(&host, program).is_none() {
            out.push(Missing {
                program,
                looked_in: shown(&host),
                package,
            });
        }
    }
    let by_path = [
        ("sshd", SSHD, "openssh-server"),
        ("avahi-daemon", super::avahi::AVAHI_DAEMON, "avahi-daemon"),
    ];
    for (program, path, package) in by_path {
        let path = Path::new(path);
        if !is_executable(path) {
            out.push(Missing {
                program,
                looked_in: path.parent().unwrap_or(path).display().to_string(),
                package,
            });
        }
    }
    let robot = robot_dirs();
    if find_in(&robot, "sudo").is_none() {
        out.push(Missing {
            program: "sudo",
            looked_in: shown(&robot),
            package: "sudo",
        });
    }
    let runtime = find_in(&robot, "runc").is_some()
        || (find_in(&robot, "crun").is_some() && cgroup_v2_only());
    if !runtime {
        out.push(Missing {
            program: "runc",
            looked_in: shown(&robot),
            package: "runc",
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_apt_line_names_each_package_once() {
        let m = |program, package| Missing {
            program,
            looked_in: "/usr/bin".into(),
            package,
        };
        let missing = [
            m("sudo", "sudo"),
            m("ip", "iproute2"),
            m("tc", "iproute2"),
            m("sshd", "openssh-server"),
        ];
        assert_eq!(
            apt_line(&missing),
            "apt-get install sudo iproute2 openssh-server"
        );
        assert_eq!(missing[0].to_string(), "sudo (not in /usr/bin)");
    }

    #[test]
    fn a_directory_or_a_plain_file_is_not_a_program() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("sudo")).unwrap();
        std::fs::write(t.path().join("sshd"), "").unwrap();
        let dirs = [t.path().to_owned()];
        assert_eq!(find_in(&dirs, "sudo"), None);
        assert_eq!(find_in(&dirs, "sshd"), None);
    }
}
