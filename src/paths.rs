//! Where `dts` keeps its state on the laptop: `$DTS_HOME` and the directories under it.
//!
//! Owns only the rule that finds the directory (environment variables, read on each call so a
//! test can point a process at its own home). Does not create anything, and knows nothing of
//! what the directories hold. It sits at the bottom of the module graph so that `wire` (its
//! layer cache) and `sim` (its records and keys) can find the directory without importing the
//! verbs in `ops`, which sit above them (issue 16; tests/architecture.rs).
//!
//! ```text
//! $DTS_HOME/            (else $XDG_DATA_HOME/dts, else ~/.local/share/dts)
//! ├── store/            the laptop image store (store_dir)
//! ├── build/            the builder's state (ops::build)
//! ├── cache/layers/     what the wire session remembers of sent layers
//! ├── sims/NAME/        virtual robots (sim)
//! ├── registries.json   optional: Docker Hub's `registry-mirrors` (ops::registry)
//! ├── known_hosts       host keys dts records itself (its sims'), read besides ~/.ssh's
//! ├── robot_key         the key `dts duckiebot provision` authorises
//! └── sim_key           the key dts authorises on its sims
//! ```

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
