//! How much memory the agent may use on this robot: the smaller of the machine's RAM
//! (`/proc/meminfo`'s `MemTotal`) and the memory limit of the cgroup it runs in and that
//! cgroup's ancestors (v2 `memory.max`, v1 `memory.limit_in_bytes`). A 1 GB Raspberry Pi 3 and
//! a robot whose agent (or virtual robot) is held to 1 GB by its cgroup look the same: the
//! wire's decoders ([`crate::wire::robot_window_log`]) size themselves by this.

use crate::util::cgroup::MemoryCgroup;

/// The memory the agent may use, in bytes; `None` when `/proc/meminfo` cannot be read.
pub fn memory_bytes() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total(&t))?;
    let limit = MemoryCgroup::own().and_then(|c| c.limit());
    Some(limit.map_or(total, |l| l.min(total)))
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_in_bytes() {
        let text = "MemTotal:         948304 kB\nMemFree:          100000 kB\n";
        assert_eq!(mem_total(text), Some(948_304 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
    }
}
