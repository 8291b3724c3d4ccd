//! The keys between the laptop and its sims: the key dts makes for them (`$DTS_HOME/sim_key`,
//! authorized on every sim with the user's own `~/.ssh/id_*.pub`), and each sim's host key line
//! in `$DTS_HOME/known_hosts` (which dts reads besides `~/.ssh/known_hosts`):
//! `NAME,ADDRESS KEYTYPE BASE64 dts-sim:NAME`, written by `up` and removed by `down`; the mark
//! in the comment field is how lines of one sim are told from the user's own.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{KNOWN_HOSTS_MARK, SimError, SimInfo, io, sim_key};

/// `$DTS_HOME/sim_key`, made with ssh-keygen when missing.
pub(super) fn ensure_sim_key(dts_home: &Path) -> Result<PathBuf, SimError> {
    let key = sim_key(dts_home);
    if key.exists() && key.with_extension("pub").exists() {
        return Ok(key);
    }
    let _ = fs::remove_file(&key);
    let _ = fs::remove_file(key.with_extension("pub"));
    fs::create_dir_all(dts_home).map_err(io("create", dts_home))?;
    super::net::run_tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "dts-sim",
            "-f",
            &key.to_string_lossy(),
        ],
    )?;
    Ok(key)
}

pub(super) fn read_pub(p: &Path) -> Result<String, SimError> {
    let mut t = fs::read_to_string(p).map_err(io("read", p))?;
    if !t.ends_with('\n') {
        t.push('\n');
    }
    Ok(t)
}

/// The user's `~/.ssh/id_*.pub`.
pub(super) fn user_public_keys() -> Vec<String> {
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return Vec::new();
    };
    let dir = Path::new(&home).join(".ssh");
    let mut keys = Vec::new();
    let Ok(rd) = fs::read_dir(&dir) else {
        return keys;
    };
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let n = p.file_name().unwrap_or_default().to_string_lossy();
        if n.starts_with("id_")
            && n.ends_with(".pub")
            && let Ok(k) = read_pub(&p)
        {
            keys.push(k);
        }
    }
    keys
}

/// Appends `NAME,ADDRESS KEYTYPE BASE64 dts-sim:NAME` to `$DTS_HOME/known_hosts`, replacing
/// any earlier line of that sim.
pub(super) fn record(dts_home: &Path, info: &SimInfo) -> Result<(), SimError> {
    let key = fs::read_to_string(&info.host_key).map_err(io("read", &info.host_key))?;
    let mut parts = key.split_whitespace();
    let (Some(kt), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(io("parse", &info.host_key)(std::io::Error::other(
            "not an OpenSSH public key",
        )));
    };
    forget(dts_home, &info.name)?;
    let p = dts_home.join("known_hosts");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(io("open", &p))?;
    writeln!(
        f,
        "{},{} {kt} {b64} {KNOWN_HOSTS_MARK}{}",
        info.name, info.address, info.name
    )
    .map_err(io("append to", &p))
}

/// Removes the lines [`record`] wrote for `name`. Returns whether any was there.
pub(super) fn forget(dts_home: &Path, name: &str) -> Result<bool, SimError> {
    let p = dts_home.join("known_hosts");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("read", &p)(e)),
    };
    let (kept, removed) = strip_known_hosts(&text, name);
    if removed {
        let tmp = dts_home.join(".known_hosts.tmp");
        fs::write(&tmp, kept).map_err(io("write", &tmp))?;
        fs::rename(&tmp, &p).map_err(io("rename into place", &p))?;
    }
    Ok(removed)
}

/// `text` without the lines marked for sim `name`.
fn strip_known_hosts(text: &str, name: &str) -> (String, bool) {
    let mark = format!("{KNOWN_HOSTS_MARK}{name}");
    let mut removed = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.split_whitespace().nth(3) == Some(mark.as_str()) {
            removed = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines_of_one_sim_go() {
        let text = "other ssh-ed25519 AAA\nbot,10.0.0.2 ssh-ed25519 BBB dts-sim:bot\n\
                    bot2,10.0.0.3 ssh-ed25519 CCC dts-sim:bot2\n";
        let (kept, removed) = strip_known_hosts(text, "bot");
        assert!(removed);
        assert_eq!(
            kept,
            "other ssh-ed25519 AAA\nbot2,10.0.0.3 ssh-ed25519 CCC dts-sim:bot2\n"
        );
        assert!(!strip_known_hosts(&kept, "bot").1);
    }
}
