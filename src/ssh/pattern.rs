//! OpenSSH host patterns: `*` (any run of characters), `?` (one character), and pattern lists
//! where a `!` entry vetoes the whole list. Shared by `~/.ssh/config` `Host` lines and the host
//! field of `known_hosts`. Matching is case-insensitive, as OpenSSH lowercases host names.

/// Whether `name` matches the glob `pattern` (`*` and `?` only; no character classes, which
/// OpenSSH does not have either).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    crate::util::glob::wildcard_match(&pattern.to_lowercase(), &name.to_lowercase())
}

/// Whether `name` matches a list of patterns: at least one positive pattern matches and no
/// negated (`!`) one does. A list of only negations matches nothing, as in OpenSSH.
pub fn list_match<'a>(patterns: impl IntoIterator<Item = &'a str>, name: &str) -> bool {
    let mut positive = false;
    for pat in patterns {
        if let Some(neg) = pat.strip_prefix('!') {
            if glob_match(neg, name) {
                return false;
            }
        } else if glob_match(pat, name) {
            positive = true;
        }
    }
    positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("*", "anything", true),
            ("*", "", true),
            ("bot?", "bot1", true),
            ("bot?", "bot12", false),
            ("*.local", "mybot.local", true),
            ("*.local", "mybot.lan", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("MyBot", "mybot", true),
            ("[127.0.0.1]:2222", "[127.0.0.1]:2222", true),
            ("192.168.1.*", "192.168.1.20", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn lists_with_negation() {
        assert!(list_match(["*.local", "!evil.local"], "bot.local"));
        assert!(!list_match(["*.local", "!evil.local"], "evil.local"));
        assert!(!list_match(["!evil.local"], "bot.local"));
        assert!(list_match(["a", "b", "c"], "b"));
    }
}
