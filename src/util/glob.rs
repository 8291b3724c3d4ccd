//! `*`/`?` wildcards, the only glob syntax robot device nodes (`/dev/i2c-*`) and OpenSSH host
//! patterns use: no character classes, no path semantics.

/// Whether `name` matches `pattern`: `*` any run of characters, `?` exactly one, everything
/// else itself (case-sensitive). An iterative matcher with one backtrack point (the last `*`):
/// never exponential, whatever a config file contains.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was and which name position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
