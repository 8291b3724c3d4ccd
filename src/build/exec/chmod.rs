//! `COPY/ADD --chmod`: an octal mode (`0755`), or a symbolic one as chmod(1) reads it
//! (`u=rwx,go=rx`, `+x`, `a+X`, `g=u`), which BuildKit accepts since dockerfile 1.14.
//!
//! A symbolic mode is applied to each copied entry's own mode, so `+x` keeps a file's other
//! bits. A build has no umask: a clause without `ugoa` means `a` (chmod(1) would mask it with
//! the umask, which a container-independent builder does not have).

/// A parsed `--chmod` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Chmod {
    /// An octal mode: every entry gets exactly it.
    Octal(u32),
    /// chmod(1) clauses, applied in order to each entry's mode.
    Symbolic(Vec<Clause>),
}

/// One `who op perms` action of a clause (`go=rx` is one; `u+x-w` two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Clause {
    /// The `ugo` bits the clause touches (`0o7777` masks per class).
    who: u32,
    /// Whether `ugoa` was given (`+t`/`+s` follow it).
    who_given: bool,
    op: char,
    perms: Perms,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Perms {
    /// `rwxXst` letters.
    Letters(String),
    /// `u`, `g` or `o`: the bits of that class in the current mode.
    Copy(char),
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;

impl Chmod {
    /// Parses `--chmod`'s value; the error says what was wrong.
    pub(super) fn parse(s: &str) -> Result<Chmod, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Chmod::Octal)
                .ok_or_else(|| format!("invalid --chmod `{s}`: not an octal mode up to 7777"));
        }
        let bad = |why: &str| format!("invalid --chmod `{s}`: {why}");
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let who_end = part.find(['+', '-', '=']).unwrap_or(part.len());
            let (who_text, mut rest) = part.split_at(who_end);
            let mut who = 0;
            for c in who_text.chars() {
                who |= match c {
                    'u' => USER,
                    'g' => GROUP,
                    'o' => OTHER,
                    'a' => USER | GROUP | OTHER,
                    _ => return Err(bad(&format!("`{c}` is not one of u, g, o, a"))),
                };
            }
            if rest.is_empty() {
                return Err(bad("each clause needs +, - or ="));
            }
            let who_given = who != 0;
            if !who_given {
                who = USER | GROUP | OTHER;
            }
            while let Some(op) = rest.chars().next() {
                let body = &rest[1..];
                let end = body.find(['+', '-', '=']).unwrap_or(body.len());
                let (letters, next) = body.split_at(end);
                let perms = match letters {
                    "u" | "g" | "o" => Perms::Copy(letters.chars().next().expect("one")),
                    l if l.chars().all(|c| "rwxXst".contains(c)) => Perms::Letters(l.into()),
                    l => {
                        return Err(bad(&format!(
                            "`{l}` is neither permissions (rwxXst) nor u, g or o"
                        )));
                    }
                };
                clauses.push(Clause {
                    who,
                    who_given,
                    op,
                    perms,
                });
                rest = next;
            }
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode an entry whose mode is `mode` gets (`is_dir` for `X`).
    pub(super) fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for c in clauses {
            let bits = match &c.perms {
                Perms::Copy(class) => {
                    let rwx = match class {
                        'u' => (mode >> 6) & 7,
                        'g' => (mode >> 3) & 7,
                        _ => mode & 7,
                    };
                    ((rwx << 6) | (rwx << 3) | rwx) & c.who & 0o777
                }
                Perms::Letters(l) => {
                    let mut b = 0;
                    for ch in l.chars() {
                        b |= match ch {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || mode & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            // chmod(1): `+t` alone or with `o`/`a` sets the sticky bit.
                            't' if !c.who_given || c.who & OTHER == OTHER => 0o1000,
                            _ => 0,
                        };
                    }
                    b & c.who
                }
            };
            mode = match c.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => (mode & !(c.who & 0o7777)) | bits,
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str, mode: u32, dir: bool) -> u32 {
        Chmod::parse(s).unwrap().apply(mode, dir)
    }

    #[test]
    fn octal_and_symbolic_modes() {
        assert_eq!(m("755", 0o600, false), 0o755);
        assert_eq!(m("0644", 0o777, false), 0o644);
        assert_eq!(m("u=rwx,go=rx", 0o600, false), 0o755);
        assert_eq!(m("+x", 0o644, false), 0o755);
        assert_eq!(m("a+X", 0o644, false), 0o644);
        assert_eq!(m("a+X", 0o644, true), 0o755);
        assert_eq!(m("a+X", 0o744, false), 0o755);
        assert_eq!(m("go-w", 0o666, false), 0o644);
        assert_eq!(m("g=u", 0o640, false), 0o660);
        assert_eq!(m("o=", 0o757, false), 0o750);
        assert_eq!(m("u+s", 0o755, false), 0o4755);
        assert_eq!(m("g+s", 0o755, true), 0o2755);
        assert_eq!(m("+t", 0o777, true), 0o1777);
        assert_eq!(m("u+t", 0o777, true), 0o777);
        assert_eq!(m("u+x-w", 0o644, false), 0o544);
        assert_eq!(m("u=rw,g=r,o=", 0o777, false), 0o640);
    }

    #[test]
    fn bad_modes_say_why() {
        for bad in ["8", "17777", "u+q", "z+x", "u", "", "u=rwx,", "rwx"] {
            let err = Chmod::parse(bad).unwrap_err();
            assert!(err.contains("invalid --chmod"), "{bad}: {err}");
        }
    }
}
