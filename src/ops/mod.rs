//! Operations: one function per user-facing verb, composed from the library's modules. They take
//! parsed arguments, return values, and never print; the CLI renders what they return.

#[cfg(feature = "workstation")]
pub mod build;
#[cfg(feature = "workstation")]
pub mod deploy;
pub mod image;
#[cfg(feature = "workstation")]
pub mod provision;
#[cfg(feature = "workstation")]
pub mod registry;
#[cfg(feature = "workstation")]
pub mod robot;

use std::path::PathBuf;

/// The laptop state directory: `$DTS_HOME`, else `$XDG_DATA_HOME/dts`, else `~/.local/share/dts`.
pub fn dts_home() -> PathBuf {
    if let Some(h) = std::env::var_os("DTS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("dts");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/dts")
}

/// The laptop image store's directory.
pub fn store_dir() -> PathBuf {
    dts_home().join("store")
}
