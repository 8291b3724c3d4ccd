//! A sim's root file system on the host, under `$DTS_HOME/sims/NAME/root`, written before its
//! processes start. What the mount namespace adds on top is in [`super::init`].
//!
//! ```text
//! root/
//!   usr            mount point: the host's /usr, read-only (private /usr/local on top:
//!                  DIR/local, with dt-agent bind-mounted at bin/dt-agent)
//!   bin sbin lib lib64 …  symlinks into usr, as on merged-/usr Debian (or read-only binds)
//!   etc/           private: passwd group shadow (root, duckie 1000, sshd, avahi), sudoers(.d),
//!                  pam.d, hosts hostname resolv.conf nsswitch.conf ld.so.cache alternatives,
//!                  ssh/sshd_config + host key, dt-agent/robot.yaml, avahi/ ([`super::avahi`])
//!   home/duckie/.ssh/authorized_keys   root/   var/ (lib/dt-agent, log, run -> /run)   data/   tmp/
//!   proc sys dev run                    mount points: proc, sysfs + the host's cgroups,
//!                                       a tmpfs /dev (see init), a tmpfs /run
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};

use super::avahi::AVAHI_ID;
use super::{DevNode, SimError, SimInfo, io};
use crate::profile::RobotProfile;

/// duckie's uid and gid, as on a Duckiebot image.
pub const DUCKIE_ID: u32 = 1000;
/// Top-level directories that merged-/usr Debian makes symlinks into `usr`.
const USR_LINKS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Host directories the agent may need, bind-mounted read-only when present (CNI plugins).
const OPTIONAL_RO: &[&str] = &["/opt/cni"];
/// Groups every sim has: (name, gid). Role groups not listed get gids from 990 down.
const BASE_GROUPS: &[(&str, u32)] = &[
    ("root", 0),
    ("tty", 5),
    ("dialout", 20),
    ("sudo", 27),
    ("video", 44),
    ("shadow", 42),
    ("avahi", AVAHI_ID),
    ("i2c", 998),
    ("gpio", 997),
    ("nogroup", 65534),
];

/// The device nodes a sim of this profile gets: every `sim.nodes` entry, plus each role node
/// (non-glob) at its robot path, numbered by `sim.nodes` or, for a configuration without its
/// own (real hardware: `/dev/duckiebot/hat-i2c` → `/dev/i2c-1`), by the virtual profile's
/// numbers for the node's container path. Returns the nodes and the role nodes left without.
pub fn device_nodes(profile: &RobotProfile) -> (Vec<DevNode>, Vec<String>) {
    let virt = RobotProfile::builtin("virtual")
        .map(|p| p.sim_nodes)
        .unwrap_or_default();
    let mut group_of: BTreeMap<String, String> = BTreeMap::new();
    let mut role_nodes: Vec<(String, String)> = Vec::new();
    for role in profile.roles.values() {
        for n in &role.nodes {
            if n.is_glob() {
                continue;
            }
            if let Some(g) = role.groups.first() {
                group_of.entry(n.host.clone()).or_insert_with(|| g.clone());
            }
            role_nodes.push((n.host.clone(), n.container_path().to_owned()));
        }
    }
    let mut out: BTreeMap<String, DevNode> = BTreeMap::new();
    for (path, s) in &profile.sim_nodes {
        out.insert(
            path.clone(),
            DevNode {
                path: path.clone(),
                kind: s.kind,
                major: s.major,
                minor: s.minor,
                group: group_of.get(path).cloned(),
            },
        );
    }
    let mut skipped = BTreeSet::new();
    for (host, container) in role_nodes {
        if out.contains_key(&host) {
            continue;
        }
        match virt.get(&container).or_else(|| virt.get(&host)) {
            Some(s) => {
                out.insert(
                    host.clone(),
                    DevNode {
                        path: host.clone(),
                        kind: s.kind,
                        major: s.major,
                        minor: s.minor,
                        group: group_of.get(&host).cloned(),
                    },
                );
            }
            None => {
                skipped.insert(host);
            }
        }
    }
    (out.into_values().collect(), skipped.into_iter().collect())
}

/// Host directories bind-mounted read-only at the same path: top-level dirs that are not
/// symlinks into `/usr` on this host, and [`OPTIONAL_RO`] ones that exist.
pub fn ro_binds() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in USR_LINKS {
        let p = Path::new("/").join(d);
        if let Ok(m) = fs::symlink_metadata(&p)
            && m.is_dir()
        {
            v.push(p);
        }
    }
    for d in OPTIONAL_RO {
        if Path::new(d).is_dir() {
            v.push(PathBuf::from(d));
        }
    }
    v
}

pub(super) fn write(path: &Path, text: &str, mode: u32) -> Result<(), SimError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    fs::write(path, text).map_err(io("write", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

pub(super) fn mkdir(path: &Path, mode: u32) -> Result<(), SimError> {
    fs::create_dir_all(path).map_err(io("create", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), SimError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io("chown", path))
}

/// Copies a host file or symlink into the sim's `/etc` when it exists.
fn copy_etc(root: &Path, rel: &str) -> Result<(), SimError> {
    let src = Path::new("/etc").join(rel);
    let dst = root.join("etc").join(rel);
    let Ok(m) = fs::symlink_metadata(&src) else {
        return Ok(());
    };
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    if m.file_type().is_symlink() {
        let target = fs::read_link(&src).map_err(io("read link", &src))?;
        symlink(&target, &dst).map_err(io("make symlink", &dst))
    } else if m.is_dir() {
        fs::create_dir_all(&dst).map_err(io("create", &dst))?;
        let rd = fs::read_dir(&src).map_err(io("list", &src))?;
        for e in rd.flatten() {
            let name = e.file_name();
            copy_etc(root, &format!("{rel}/{}", name.to_string_lossy()))?;
        }
        Ok(())
    } else {
        fs::copy(&src, &dst).map_err(io("copy to", &dst))?;
        Ok(())
    }
}

/// The groups of a sim: [`BASE_GROUPS`] plus every group a role names.
fn groups(profile: &RobotProfile) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = BASE_GROUPS
        .iter()
        .map(|(n, g)| ((*n).to_owned(), *g))
        .collect();
    let mut next = 990;
    let wanted: BTreeSet<&String> = profile.roles.values().flat_map(|r| &r.groups).collect();
    for g in wanted {
        if g.parse::<u32>().is_err() && !v.iter().any(|(n, _)| n == g) {
            v.push((g.clone(), next));
            next -= 1;
        }
    }
    v
}

/// Writes the root file system for `info` (see the module doc). `authorized_keys` becomes
/// duckie's `~/.ssh/authorized_keys`. The host key is generated here with ssh-keygen.
pub fn build(
    info: &SimInfo,
    profile: &RobotProfile,
    authorized_keys: &str,
) -> Result<(), SimError> {
    let root = &info.root;
    let name = &info.name;
    layout(info, authorized_keys)?;
    let etc = root.join("etc");
    accounts(&etc, profile)?;
    system_files(info, &etc)?;
    sudo(&etc)?;

    // sshd, with its own host key (also recorded in $DTS_HOME/known_hosts by the caller).
    let ssh = etc.join("ssh");
    mkdir(&ssh, 0o755)?;
    write(
        &ssh.join("sshd_config"),
        &format!(
            "# dts sim: virtual robot `{name}`\n\
             Port 22\nListenAddress {}\n\
             HostKey /etc/ssh/ssh_host_ed25519_key\n\
             PermitRootLogin no\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             AuthorizedKeysFile .ssh/authorized_keys\n\
             UsePAM no\nPrintMotd no\nPidFile /run/sshd.pid\n\
             AcceptEnv LANG LC_*\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            info.address
        ),
        0o644,
    )?;
    let key = ssh.join("ssh_host_ed25519_key");
    super::net::run_tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            &format!("root@{name}"),
            "-f",
            &key.to_string_lossy(),
        ],
    )?;

    super::avahi::write_config(root, name, profile)?;

    write(
        &etc.join("dt-agent/robot.yaml"),
        &format!(
            "# dts sim: virtual robot\nhostname: {name}\ntype: {}\nconfiguration: {}\n",
            profile.robot_type, profile.configuration
        ),
        0o644,
    )?;
    Ok(())
}

/// The directories, the links into the host's `/usr`, the private `/usr/local`, `/data` and
/// duckie's home with `authorized_keys`.
fn layout(info: &SimInfo, authorized_keys: &str) -> Result<(), SimError> {
    let root = &info.root;
    mkdir(root, 0o755)?;
    for d in [
        "usr", "proc", "sys", "dev", "run", "etc", "var", "home", "opt",
    ] {
        mkdir(&root.join(d), 0o755)?;
    }
    mkdir(&root.join("root"), 0o700)?;
    mkdir(&root.join("tmp"), 0o1777)?;
    mkdir(&root.join("var/tmp"), 0o1777)?;
    for d in ["var/lib/dt-agent", "var/log", "var/cache", "etc/dt-agent"] {
        mkdir(&root.join(d), 0o755)?;
    }
    // As on Debian: stacks name `/var/run/avahi-daemon/socket`, which lives in the tmpfs /run.
    let var_run = root.join("var/run");
    symlink("/run", &var_run).map_err(io("make symlink", &var_run))?;
    let ro = ro_binds();
    for d in USR_LINKS {
        let host = Path::new("/").join(d);
        let here = root.join(d);
        if ro.contains(&host) {
            mkdir(&here, 0o755)?;
        } else if let Ok(t) = fs::read_link(&host) {
            symlink(&t, &here).map_err(io("make symlink", &here))?;
        }
    }
    for d in OPTIONAL_RO {
        if Path::new(d).is_dir() {
            mkdir(&root.join(d.trim_start_matches('/')), 0o755)?;
        }
    }
    // A private /usr/local, mounted over the host's, holding the agent.
    let local = info.dir.join("local");
    for d in ["bin", "sbin", "lib", "share"] {
        mkdir(&local.join(d), 0o755)?;
    }
    write(&local.join("bin/dt-agent"), "", 0o755)?;

    let data = root.join("data");
    mkdir(&data, 0o755)?;
    chown(&data, DUCKIE_ID, DUCKIE_ID)?;
    let home = root.join("home/duckie");
    mkdir(&home.join(".ssh"), 0o700)?;
    write(&home.join(".ssh/authorized_keys"), authorized_keys, 0o600)?;
    for p in [
        home.join(".ssh/authorized_keys"),
        home.join(".ssh"),
        home.clone(),
    ] {
        chown(&p, DUCKIE_ID, DUCKIE_ID)?;
    }
    Ok(())
}

/// `/etc/passwd`, `group` (duckie in the profile's device groups) and `shadow`.
fn accounts(etc: &Path, profile: &RobotProfile) -> Result<(), SimError> {
    let groups = groups(profile);
    let gid = |n: &str| groups.iter().find(|(g, _)| g == n).map(|(_, id)| *id);
    write(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:/bin/bash\n\
             sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             avahi:x:{AVAHI_ID}:{AVAHI_ID}:Avahi mDNS daemon,,,:/run/avahi-daemon:/usr/sbin/nologin\n\
             duckie:x:{DUCKIE_ID}:{DUCKIE_ID}:Duckie:/home/duckie:/bin/bash\n"
        ),
        0o644,
    )?;
    let mut group = String::new();
    for (g, id) in &groups {
        let members = if matches!(g.as_str(), "root" | "tty" | "shadow" | "nogroup" | "avahi") {
            ""
        } else {
            "duckie"
        };
        group.push_str(&format!("{g}:x:{id}:{members}\n"));
    }
    group.push_str(&format!("duckie:x:{DUCKIE_ID}:\n"));
    write(&etc.join("group"), &group, 0o644)?;
    // `*`: no password, yet not locked (sshd refuses locked accounts to keys too).
    write(
        &etc.join("shadow"),
        "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n\
         nobody:*:19000:0:99999:7:::\navahi:*:19000:0:99999:7:::\n\
         duckie:*:19000:0:99999:7:::\n",
        0o640,
    )?;
    chown(&etc.join("shadow"), 0, gid("shadow").unwrap_or(0))?;
    Ok(())
}

/// The host name, name resolution, shells, profile, and what is copied from the host's `/etc`.
fn system_files(info: &SimInfo, etc: &Path) -> Result<(), SimError> {
    let name = &info.name;
    let root = &info.root;
    write(&etc.join("hostname"), &format!("{name}\n"), 0o644)?;
    write(
        &etc.join("hosts"),
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{name}.local {name}\n{}\t{name}\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n",
            info.address
        ),
        0o644,
    )?;
    let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    write(&etc.join("resolv.conf"), &resolv, 0o644)?;
    write(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\ngshadow: files\nhosts: files dns\n\
         networks: files\nprotocols: db files\nservices: db files\nethers: db files\nrpc: db files\n",
        0o644,
    )?;
    write(
        &etc.join("shells"),
        "/bin/sh\n/bin/bash\n/usr/bin/bash\n",
        0o644,
    )?;
    write(&etc.join("environment"), "", 0o644)?;
    write(
        &etc.join("profile"),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PATH\n",
        0o644,
    )?;
    symlink("../proc/self/mounts", etc.join("mtab")).map_err(io("make symlink", etc))?;
    for f in [
        "ld.so.cache",
        "ld.so.conf",
        "ld.so.conf.d",
        "alternatives",
        "os-release",
        "localtime",
        "timezone",
        "ssl",
        "ca-certificates.conf",
        "mime.types",
        "protocols",
        "services",
        "inputrc",
        "bash.bashrc",
        "ssh/moduli",
    ] {
        copy_etc(root, f)?;
    }
    Ok(())
}

/// sudo: duckie without a password, as on a Duckiebot. PAM kept to what sudo needs.
fn sudo(etc: &Path) -> Result<(), SimError> {
    write(
        &etc.join("sudoers"),
        "Defaults env_reset\n\
         Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
         root ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n",
        0o440,
    )?;
    write(
        &etc.join("sudoers.d/duckie"),
        "duckie ALL=(ALL:ALL) NOPASSWD: ALL\n",
        0o440,
    )?;
    mkdir(&etc.join("sudoers.d"), 0o755)?;
    write(
        &etc.join("pam.d/sudo"),
        "auth required pam_unix.so\naccount required pam_permit.so\n\
         session required pam_permit.so\n",
        0o644,
    )?;
    write(
        &etc.join("pam.d/other"),
        "auth required pam_deny.so\naccount required pam_deny.so\n\
         password required pam_deny.so\nsession required pam_deny.so\n",
        0o644,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_nodes_carry_real_numbers() {
        let (nodes, skipped) = device_nodes(&RobotProfile::builtin("virtual").unwrap());
        let i2c = nodes.iter().find(|n| n.path == "/dev/i2c-1").unwrap();
        assert_eq!((i2c.major, i2c.minor), (89, 1));
        assert_eq!(i2c.group.as_deref(), Some("i2c"));
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn hardware_nodes_borrow_the_virtual_numbers() {
        let (nodes, _) = device_nodes(&RobotProfile::builtin("DB21J").unwrap());
        let hat = nodes
            .iter()
            .find(|n| n.path == "/dev/duckiebot/hat-i2c")
            .expect("the HAT's bus gets a node");
        assert_eq!((hat.major, hat.minor), (89, 1));
    }
}
