//! RUN `--mount` specs, as BuildKit's `commands_runmount.go` reads them: the CSV fields, their
//! aliases (`src`/`source`, `dst`/`destination`/`target`, `ro`/`readonly`, `rw`/`readwrite`),
//! each type's defaults and the combinations it refuses. Pure: the builder parses the expanded
//! value with the working directory in force (a relative target is under it), and the parser
//! checks an unexpanded value early so that a typo fails before anything is built.
//!
//! | type | target | defaults |
//! |---|---|---|
//! | `bind` (default) | required | from the context, `source` its root, read-only |
//! | `cache` | required | `id` = target, `sharing=shared`, mode 0755, uid/gid 0, read-write |
//! | `tmpfs` | required | no size limit |
//! | `secret` | `/run/secrets/<id>` | `id` = basename of target, mode 0400, uid/gid 0, optional |
//! | `ssh` | `/run/buildkit/ssh_agent.<n>` | `id=default`, mode 0600, uid/gid 0, optional |

use super::run::csv_fields;

/// What a mount is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// A directory of the context, a stage or an image.
    Bind,
    /// A directory kept between builds.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A `--secret` given to the build, as a file (and/or an environment variable).
    Secret,
    /// An SSH agent socket given with `--ssh`.
    Ssh,
}

impl MountType {
    /// The name in a Dockerfile.
    pub fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// Everyone uses the same directory at once.
    #[default]
    Shared,
    /// A build that finds the directory in use gets a directory of its own.
    Private,
    /// Builds take turns (an exclusive file lock).
    Locked,
}

/// One `--mount`, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The type.
    pub typ: MountType,
    /// Absolute, clean path in the container; `None` for a secret only given as `env`.
    pub target: Option<String>,
    /// Path inside `from` (bind, cache seeding); `None`: its root.
    pub source: Option<String>,
    /// Stage or image name (bind, cache); `None`: the context (bind) or nothing (cache).
    pub from: Option<String>,
    /// Mounted read-only.
    pub readonly: bool,
    /// Cache, secret or SSH id.
    pub id: String,
    /// Cache sharing.
    pub sharing: Sharing,
    /// Mode of the cache root, secret file or agent socket.
    pub mode: u32,
    /// Owner of the same.
    pub uid: u32,
    /// Group of the same.
    pub gid: u32,
    /// A missing secret or SSH id is an error (else the mount is left out).
    pub required: bool,
    /// tmpfs size limit in bytes.
    pub size: Option<u64>,
    /// Environment variable a secret is also given as.
    pub env: Option<String>,
}

/// Parses one `--mount` value. `workdir` is the working directory a relative target is under;
/// `ssh_index` is the number of SSH mounts before this one in the same RUN.
pub fn parse_mount(value: &str, workdir: &str, ssh_index: usize) -> Result<MountSpec, String> {
    let mut fields: Vec<(String, Option<String>)> = Vec::new();
    let mut typ = MountType::Bind;
    for f in csv_fields(value) {
        let (k, v) = match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (f.trim().to_ascii_lowercase(), None),
        };
        if k == "type" {
            typ = match v.as_deref().unwrap_or("") {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                other => return Err(format!("unsupported mount type `{other}`")),
            };
            continue;
        }
        fields.push((k, v));
    }
    let mut m = MountSpec {
        typ,
        target: None,
        source: None,
        from: None,
        readonly: typ == MountType::Bind,
        id: String::new(),
        sharing: Sharing::Shared,
        mode: match typ {
            MountType::Secret => 0o400,
            MountType::Ssh => 0o600,
            _ => 0o755,
        },
        uid: 0,
        gid: 0,
        required: false,
        size: None,
        env: None,
    };
    for (k, v) in fields {
        field(&mut m, &k, v)?;
    }
    finish(m, workdir, ssh_index)
}

fn field(m: &mut MountSpec, key: &str, value: Option<String>) -> Result<(), String> {
    let typ = m.typ;
    let only = |types: &[MountType]| -> Result<(), String> {
        if types.contains(&typ) {
            Ok(())
        } else {
            Err(format!(
                "option `{key}` is not valid for type={}",
                typ.name()
            ))
        }
    };
    let flag = |v: &Option<String>| -> Result<bool, String> {
        match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(other) => Err(format!("invalid value `{other}` for `{key}`")),
        }
    };
    let text = |v: Option<String>| -> Result<String, String> {
        v.ok_or_else(|| format!("option `{key}` needs a value ({key}=…)"))
    };
    let number = |v: String, radix: u32| -> Result<u32, String> {
        u32::from_str_radix(&v, radix).map_err(|_| format!("invalid value `{v}` for `{key}`"))
    };
    use MountType::*;
    match key {
        "target" | "dst" | "destination" => m.target = Some(text(value)?),
        "source" | "src" => {
            only(&[Bind, Cache])?;
            m.source = Some(text(value)?);
        }
        "from" => {
            only(&[Bind, Cache])?;
            m.from = Some(text(value)?);
        }
        "readonly" | "ro" => {
            only(&[Bind, Cache])?;
            m.readonly = flag(&value)?;
        }
        "readwrite" | "rw" => {
            only(&[Bind, Cache])?;
            m.readonly = !flag(&value)?;
        }
        "id" => {
            only(&[Cache, Secret, Ssh])?;
            m.id = text(value)?;
        }
        "sharing" => {
            only(&[Cache])?;
            m.sharing = match text(value)?.to_ascii_lowercase().as_str() {
                "shared" => Sharing::Shared,
                "private" => Sharing::Private,
                "locked" => Sharing::Locked,
                other => {
                    return Err(format!(
                        "unsupported sharing value `{other}` (shared, private or locked)"
                    ));
                }
            };
        }
        "required" => {
            only(&[Secret, Ssh])?;
            m.required = flag(&value)?;
        }
        "mode" => {
            only(&[Cache, Secret, Ssh])?;
            m.mode = number(text(value)?, 8)?;
        }
        "uid" => {
            only(&[Cache, Secret, Ssh])?;
            m.uid = number(text(value)?, 10)?;
        }
        "gid" => {
            only(&[Cache, Secret, Ssh])?;
            m.gid = number(text(value)?, 10)?;
        }
        "size" => {
            only(&[Tmpfs])?;
            let v = text(value)?;
            m.size = Some(parse_size(&v).ok_or_else(|| format!("invalid tmpfs size `{v}`"))?);
        }
        "env" => {
            only(&[Secret])?;
            m.env = Some(text(value)?);
        }
        other => {
            return Err(format!(
                "unknown mount option `{other}` for type={}",
                typ.name()
            ));
        }
    }
    Ok(())
}

fn finish(mut m: MountSpec, workdir: &str, ssh_index: usize) -> Result<MountSpec, String> {
    let absolute = |t: &str| -> Result<String, String> {
        let joined = if t.starts_with('/') {
            t.to_string()
        } else {
            format!("{workdir}/{t}")
        };
        let clean = clean(&joined);
        if clean.is_empty() {
            return Err("a mount target cannot be `/`".into());
        }
        Ok(format!("/{clean}"))
    };
    match m.typ {
        MountType::Bind | MountType::Cache | MountType::Tmpfs => {
            let Some(t) = m.target.as_deref().filter(|t| !t.is_empty()) else {
                return Err(format!("type={} needs a target", m.typ.name()));
            };
            let t = absolute(t)?;
            if m.typ == MountType::Cache && m.id.is_empty() {
                m.id = t.clone();
            }
            m.target = Some(t);
        }
        MountType::Secret => {
            if m.id.is_empty() {
                let t = m.target.as_deref().unwrap_or("");
                m.id = t.rsplit('/').next().unwrap_or("").to_string();
                if m.id.is_empty() {
                    return Err("type=secret needs an id or a target".into());
                }
            }
            m.target = match (&m.target, &m.env) {
                (Some(t), _) => Some(absolute(t)?),
                (None, Some(_)) => None,
                (None, None) => Some(format!("/run/secrets/{}", m.id)),
            };
        }
        MountType::Ssh => {
            if m.id.is_empty() {
                m.id = "default".into();
            }
            m.target = Some(match &m.target {
                Some(t) => absolute(t)?,
                None => format!("/run/buildkit/ssh_agent.{ssh_index}"),
            });
        }
    }
    Ok(m)
}

/// `a/./b/../c/` → `a/c` (`..` stops at the root).
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// `64m`, `1g`, `4096` (bytes; binary units, as Docker's `RAMInBytes`).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k') => (&s[..i], 1u64 << 10),
        (i, 'm') => (&s[..i], 1 << 20),
        (i, 'g') => (&s[..i], 1 << 30),
        (i, 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_aliases() {
        let c = parse_mount("type=cache,target=var/cache/apt", "/work", 0).unwrap();
        assert_eq!(c.target.as_deref(), Some("/work/var/cache/apt"));
        assert_eq!(
            (c.id.as_str(), c.mode, c.readonly),
            ("/work/var/cache/apt", 0o755, false)
        );
        let b = parse_mount("target=/src,src=app,from=builder", "/", 0).unwrap();
        assert_eq!(b.typ, MountType::Bind);
        assert!(b.readonly);
        assert!(!parse_mount("type=bind,dst=/x,rw", "/", 0).unwrap().readonly);
        let s = parse_mount("type=secret,id=tok,required", "/", 0).unwrap();
        assert_eq!(s.target.as_deref(), Some("/run/secrets/tok"));
        assert_eq!((s.mode, s.required), (0o400, true));
        let s = parse_mount("type=secret,target=/etc/key.pem,mode=0440,uid=7", "/", 0).unwrap();
        assert_eq!((s.id.as_str(), s.mode, s.uid), ("key.pem", 0o440, 7));
        let s = parse_mount("type=secret,id=tok,env=TOKEN", "/", 0).unwrap();
        assert_eq!(s.target, None);
        let h = parse_mount("type=ssh", "/", 1).unwrap();
        assert_eq!(h.target.as_deref(), Some("/run/buildkit/ssh_agent.1"));
        assert_eq!((h.id.as_str(), h.mode), ("default", 0o600));
        let t = parse_mount("type=tmpfs,target=/t,size=64m", "/", 0).unwrap();
        assert_eq!(t.size, Some(64 << 20));
        let l = parse_mount("type=cache,target=/c,sharing=locked,id=x", "/", 0).unwrap();
        assert_eq!((l.sharing, l.id.as_str()), (Sharing::Locked, "x"));
    }

    #[test]
    fn refusals_name_the_problem() {
        for (spec, want) in [
            ("type=volume,target=/x", "unsupported mount type `volume`"),
            (
                "type=cache,target=/x,sharing=sometimes",
                "unsupported sharing value",
            ),
            (
                "type=cache,target=/x,colour=red",
                "unknown mount option `colour`",
            ),
            ("type=tmpfs,target=/x,from=a", "not valid for type=tmpfs"),
            ("type=bind,target=/x,required", "not valid for type=bind"),
            ("type=cache", "needs a target"),
            ("type=secret", "needs an id or a target"),
            ("type=bind,target=/", "cannot be `/`"),
            ("type=cache,target=/x,mode=9", "invalid value `9`"),
        ] {
            let e = parse_mount(spec, "/", 0).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
