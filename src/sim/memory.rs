//! A virtual robot's memory size (`dts sim up --memory 1g`): a memory cgroup
//! `dts-sim-NAME` under the one `dts` runs in, with that limit, which the holder enters before
//! it starts anything, so sshd, `dt-agent` and whatever they start stay in it. A 1 GB
//! Raspberry Pi 3 is then what the agent sees (`dt-agent` sizes its wire decoders by the
//! smaller of RAM and its cgroup's limit), and what its memory use is held to.

use std::fs;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{SimError, io};
use crate::util::cgroup::{MemoryCgroup, SYS_FS_CGROUP};

/// The least memory a sim may be given: sshd, sudo and the agent need a few tens of MiB.
pub const MIN_MEMORY: u64 = 128 << 20;

/// Checks a `--memory` size before anything is made.
pub fn check(bytes: u64) -> Result<(), SimError> {
    if bytes < MIN_MEMORY {
        return Err(SimError::BadMemory(format!(
            "--memory {bytes}: a virtual robot needs at least {} MiB",
            MIN_MEMORY >> 20
        )));
    }
    Ok(())
}

/// Makes the cgroup of sim `name` with `bytes` as its limit; returns its directory.
pub fn make(name: &str, bytes: u64) -> Result<PathBuf, SimError> {
    check(bytes)?;
    let own = MemoryCgroup::own().ok_or_else(|| {
        io(
            "find the memory cgroup of this process under",
            Path::new(SYS_FS_CGROUP),
        )(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "--memory needs the memory controller (cgroup v1 or v2) mounted there",
        ))
    })?;
    let cg = own.child(&format!("{}{name}", super::NETNS_PREFIX));
    fs::create_dir_all(&cg.dir).map_err(io("create", &cg.dir))?;
    let limit = cg.dir.join(cg.limit_file);
    fs::write(&limit, bytes.to_string()).map_err(io("write", &limit))?;
    Ok(cg.dir)
}

/// `cgroup.procs` of `dir`, opened for the holder to write itself into after its fork.
pub fn procs_file(dir: &Path) -> Result<OwnedFd, SimError> {
    let p = dir.join("cgroup.procs");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(io("open", &p))?;
    Ok(f.into())
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `fd` ("0" is the
/// writer). Async-signal-safe: for `pre_exec`.
pub fn enter(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: write(2) of a static buffer to an fd we own.
    if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the cgroup once its processes are gone (they may take a moment after SIGKILL).
pub fn remove(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("cgroup {}: {e}", dir.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
