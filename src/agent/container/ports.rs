//! Whether a running container on the robot's own network holds a fixed port: a TCP socket
//! listening, or a UDP socket bound, on a port outside the kernel's ephemeral range. Its
//! replacement would bind the same port while both run (`Address already in use`: roscore's
//! 11311, a dashboard's 80), so such a service is stopped before its new container starts.
//! Ports in the ephemeral range are what `bind(0)` hands out (ROS nodes' XML-RPC and TCPROS
//! servers); a second container gets others.
//!
//! The container's processes are those in its init's PID namespace; their sockets are found
//! through `/proc/PID/fd` and looked up in the network namespace's `/proc/PID/net/{tcp,udp}*`.
//! Anything that cannot be read answers "holds one": stopping first is always safe.

use std::collections::BTreeSet;
use std::fs;

/// Whether the processes of the container whose init is `pid` hold a fixed port.
pub fn holds_fixed_port(pid: u32) -> bool {
    sockets_on_fixed_ports(pid).is_none_or(|found| found)
}

fn sockets_on_fixed_ports(pid: u32) -> Option<bool> {
    let ns = fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    let mut inodes = BTreeSet::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if fs::read_link(format!("/proc/{p}/ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{p}/fd")) else {
            continue; // gone meanwhile
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    if inodes.is_empty() {
        return Some(false);
    }
    let (low, high) = ephemeral_range()?;
    for (file, listen_only) in [
        ("tcp", true),
        ("tcp6", true),
        ("udp", false),
        ("udp6", false),
    ] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue; // no IPv6 on this kernel
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) || (listen_only && *state != "0A") {
                continue;
            }
            let port = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok())?;
            if port != 0 && !(low..=high).contains(&port) {
                return Some(true);
            }
        }
    }
    Some(false)
}

/// `net.ipv4.ip_local_port_range`.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_listening_port_of_this_process_is_seen() {
        let Some((low, _)) = ephemeral_range() else {
            return;
        };
        let me = std::process::id();
        // A port below the ephemeral range, if one is free; else nothing to check. (Not the
        // negative: other tests of this process may hold fixed ports.)
        let Some(l) = (low.saturating_sub(2000)..low.saturating_sub(1000))
            .find_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        else {
            return;
        };
        assert!(holds_fixed_port(me));
        drop(l);
    }
}
