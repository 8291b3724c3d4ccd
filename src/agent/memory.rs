//! How much memory the agent may use on this robot: the smaller of the machine's RAM
//! (`/proc/meminfo`'s `MemTotal`) and the memory limit of the cgroup it runs in and that
//! cgroup's ancestors (v2 `memory.max`, v1 `memory.limit_in_bytes`). A 1 GB Raspberry Pi 3 and
//! a robot whose agent (or virtual robot) is held to 1 GB by its cgroup look the same: the
//! wire's decoders ([`crate::wire::robot_window_log`]) size themselves by this, and by what is
//! free right now (`MemAvailable`: a robot whose ROS stack already took most of its memory gets
//! smaller windows still).

use crate::util::cgroup::MemoryCgroup;

/// The memory the agent may use, in bytes; `None` when `/proc/meminfo` cannot be read.
pub fn memory_bytes() -> Option<u64> {
    let total = meminfo_field("MemTotal:")?;
    let limit = MemoryCgroup::own().and_then(|c| c.limit());
    Some(limit.map_or(total, |l| l.min(total)))
}

/// The memory free for new work now (`MemAvailable`: free plus what the kernel can reclaim),
/// in bytes; `None` when unknown.
pub fn available_bytes() -> Option<u64> {
    meminfo_field("MemAvailable:")
}

fn meminfo_field(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    field_bytes(&text, field)
}

/// A `/proc/meminfo` field (`MemTotal:`) in bytes.
fn field_bytes(meminfo: &str, field: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(field))?;
    let mut words = line[field.len()..].split_whitespace();
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
    fn meminfo_fields_in_bytes() {
        let text = "MemTotal:         948304 kB\nMemFree:          100000 kB\nMemAvailable:     400000 kB\n";
        assert_eq!(field_bytes(text, "MemTotal:"), Some(948_304 * 1024));
        assert_eq!(field_bytes(text, "MemAvailable:"), Some(400_000 * 1024));
        assert_eq!(field_bytes("MemFree: 1 kB\n", "MemTotal:"), None);
        assert_eq!(field_bytes("MemTotal: x kB\n", "MemTotal:"), None);
    }
}
