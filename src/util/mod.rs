//! Small helpers shared by every module: file operations whose errors name their path.

pub mod cgroup;
pub mod fs;
pub mod glob;
pub mod time;
