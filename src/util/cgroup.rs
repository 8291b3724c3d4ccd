//! The memory cgroup a process is in, read from `/proc/self/cgroup` and `/sys/fs/cgroup`: where
//! its memory limit is (cgroup v2's unified `memory.max`, or v1's `memory` hierarchy and its
//! `memory.limit_in_bytes`: the L4T 4.9 kernels of Jetson robots and hybrid hosts), and the
//! smallest limit on the way up to the root. Shared by the robot's agent (how much memory it may
//! use) and the virtual robot (which holds a sim to a memory size).

use std::path::{Path, PathBuf};

/// Where cgroup file systems are mounted.
pub const SYS_FS_CGROUP: &str = "/sys/fs/cgroup";

/// A memory cgroup: its directory and the name of its limit file there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    /// `/sys/fs/cgroup/memory/PATH` (v1) or `/sys/fs/cgroup/PATH` (v2).
    pub dir: PathBuf,
    /// `memory.limit_in_bytes` (v1) or `memory.max` (v2).
    pub limit_file: &'static str,
    /// Where the hierarchy's root is (a limit is looked for up to here).
    pub root: PathBuf,
}

impl MemoryCgroup {
    /// The memory cgroup `self_cgroup` (a `/proc/PID/cgroup` text) names under `sys`: v1's
    /// `memory` hierarchy when it has one (a hybrid host puts the controller there), else
    /// the v2 path.
    pub fn of(self_cgroup: &str, sys: &Path) -> Option<MemoryCgroup> {
        let mut v2 = None;
        for line in self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                let root = sys.join("memory");
                return Some(MemoryCgroup {
                    dir: root.join(rel),
                    limit_file: "memory.limit_in_bytes",
                    root,
                });
            }
            if controllers.is_empty() {
                v2 = Some(MemoryCgroup {
                    dir: sys.join(rel),
                    limit_file: "memory.max",
                    root: sys.to_path_buf(),
                });
            }
        }
        v2
    }

    /// This process's memory cgroup.
    pub fn own() -> Option<MemoryCgroup> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        MemoryCgroup::of(&text, Path::new(SYS_FS_CGROUP))
    }

    /// A child cgroup of this one (not made).
    pub fn child(&self, name: &str) -> MemoryCgroup {
        MemoryCgroup {
            dir: self.dir.join(name),
            limit_file: self.limit_file,
            root: self.root.clone(),
        }
    }

    /// The smallest limit set on this cgroup or an ancestor; `None` when there is none (v2's
    /// `max`, v1's near-2^63 default) or nothing can be read.
    pub fn limit(&self) -> Option<u64> {
        let mut best: Option<u64> = None;
        let mut dir = Some(self.dir.as_path());
        while let Some(d) = dir {
            let limit = std::fs::read_to_string(d.join(self.limit_file))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|&l| l < 1 << 62);
            if let Some(l) = limit {
                best = Some(best.map_or(l, |b| b.min(l)));
            }
            dir = d.parent().filter(|_| d != self.root);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_limit_on_the_way_up_counts() {
        let sys = tempfile::tempdir().unwrap();
        // v2: the process's own cgroup has no limit, its parent 1 GiB.
        let own = sys.path().join("robot/agent");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("memory.max"), "max\n").unwrap();
        std::fs::write(sys.path().join("robot/memory.max"), "1073741824\n").unwrap();
        let cg = MemoryCgroup::of("0::/robot/agent\n", sys.path()).unwrap();
        assert_eq!(cg.dir, own);
        assert_eq!(cg.limit(), Some(1 << 30));
        // v1 (a hybrid host): the memory hierarchy wins; its unlimited default is no limit.
        let v1 = sys.path().join("memory/dts-sim-hf");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "536870912\n").unwrap();
        std::fs::write(
            sys.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let text = "12:cpu,cpuacct:/x\n4:memory:/dts-sim-hf\n0::/\n";
        let cg = MemoryCgroup::of(text, sys.path()).unwrap();
        assert_eq!(cg.limit_file, "memory.limit_in_bytes");
        assert_eq!(cg.limit(), Some(512 << 20));
        assert_eq!(cg.child("x").dir, v1.join("x"));
        // Nothing readable: no limit; no cgroup line at all: no cgroup.
        let none = MemoryCgroup::of("0::/nowhere\n", &sys.path().join("none")).unwrap();
        assert_eq!(none.limit(), None);
        assert_eq!(MemoryCgroup::of("", sys.path()), None);
    }
}
