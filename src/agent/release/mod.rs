//! Releases on the robot: one stack's services applied as release N — staged, switched,
//! probation, committed — with automatic rollback to N-1 (architecture.md, "Releases").

pub mod spec;

pub use spec::{HealthSpec, ReleaseSpec, ServiceSpec};
