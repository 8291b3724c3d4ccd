//! Small helpers shared by every module: file operations whose errors name their path.

pub mod cgroup;
pub mod fs;
pub mod glob;
pub mod locks;
pub mod par;
pub mod time;
pub mod tty;

/// For unit tests that cannot run on this machine: prints `SKIP: <test>: <reason>` (as
/// `tests/it/support`'s `skip` does) and the caller returns; under `CI=true`, panics with that line.
///
/// Why CI fails: CI runs `scripts/test` as root, which installs what every test needs, so a
/// skip there is an install bug that a passing test would hide (issue 16). The line goes to
/// the stderr handle directly: libtest captures `eprintln!` of passing tests, so a skip printed
/// that way is never seen.
#[cfg(test)]
pub(crate) fn skip_test(reason: &str) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let line = format!(
        "SKIP: {}: {reason}",
        thread.name().unwrap_or("<unnamed test>")
    );
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!(
            "{line}\n(CI=true: a skip in CI is a failure; scripts/test must install what this test needs)"
        );
    }
    // Nothing to do if stderr is gone; the test passes as skipped either way.
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// `1.5 MB`-style sizes (decimal, as Docker prints them).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// An error and its sources, outermost first, joined by `: `, each said once (reqwest's own
/// message is often just "error sending request": the cause is further down).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Reads until `buf` is full or the input ends; the bytes read (a short count only at the end,
/// where `read_exact` would fail and lose what it read).
pub fn read_full(r: &mut (impl std::io::Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
