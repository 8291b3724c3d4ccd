//! Operations: one function per user-facing verb, composed from the library's modules. They take
//! parsed arguments, return values, and never print; the CLI renders what they return.

#[cfg(feature = "workstation")]
pub mod build;
#[cfg(feature = "workstation")]
pub mod deploy;
#[cfg(feature = "workstation")]
pub mod devel;
#[cfg(feature = "workstation")]
pub mod fleet;
#[cfg(feature = "workstation")]
pub mod hub;
pub mod image;
pub mod local;
#[cfg(feature = "workstation")]
pub mod provision;
#[cfg(feature = "workstation")]
pub mod registry;
#[cfg(feature = "workstation")]
pub mod robot;
pub mod verbs;

/// Kept here too for callers of `ops::dts_home` and `ops::store_dir`; they live in
/// [`crate::paths`] so that modules below `ops` (`wire`, `sim`) can use them.
pub use crate::paths::{dts_home, store_dir};
