//! `RUN --mount` with BuildKit's meaning: what each mount adds to the step's cache key, and the
//! host side of each mount for the one RUN that uses it.
//!
//! * `bind`: a context path (the `.dockerignore`d context, copied or hard-linked into scratch),
//!   or a path of a stage or image (its snapshot layers under a read-only overlay; with `rw`
//!   a throw-away upper dir takes the writes).
//! * `cache`: a directory under `$DTS_HOME/build/mounts` ([`cache_dir`]), seeded from
//!   `from=`/`source=` when first made.
//! * `tmpfs`: the runtime mounts it.
//! * `secret`: the bytes of a `--secret` in a private tmpfs, bind-mounted read-only as one
//!   file (and/or set as an environment variable with `env=`).
//! * `ssh`: a proxy socket forwarding to an agent given with `--ssh` ([`agent`]);
//!   `SSH_AUTH_SOCK` names the first.
//!
//! Nothing of a mount reaches the layer: every target is a mount point stub below the upper
//! dir (`run::RunMount`), so the RUN's writes under it go to the mount, not the upper dir.
//!
//! The cache key gains, per mount, its parsed spec and its input: the key of a `from=` stage
//! or image, the content hash of a context bind. Never a cache mount's contents (a cache is
//! not an input, as in BuildKit) and never a secret's value.

use std::io::Write as _;

use super::*;
use crate::build::dockerfile::{MountSpec, MountType, parse_mount};
use crate::build::run::RunMount;
use crate::runtime::overlay::{mount_overlay, unmount};
use crate::runtime::user::resolve_in_root;
use crate::util::fs::PathError;

mod agent;
pub mod cache_dir;

/// Where the bytes of a `--secret` come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file on the laptop (`src=`).
    File(PathBuf),
    /// An environment variable of the `dts` process (`env=`).
    Env(String),
}

impl SecretSource {
    fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            SecretSource::File(p) => {
                fs::read(p).map_err(|e| format!("cannot read `{}`: {e}", p.display()))
            }
            SecretSource::Env(v) => std::env::var_os(v)
                .map(|s| s.into_encoded_bytes())
                .ok_or_else(|| format!("environment variable `{v}` is not set")),
        }
    }
}

/// The secrets and SSH agents a build was given (`--secret`, `--ssh`).
#[derive(Clone, Debug, Default)]
pub struct MountInputs {
    /// Secrets by id.
    pub secrets: BTreeMap<String, SecretSource>,
    /// SSH agent sockets by id (`default` for `--ssh default`).
    pub ssh: BTreeMap<String, PathBuf>,
}

/// Where a bind's files, or a cache's first contents, come from.
enum MountFrom {
    None,
    Context(Source),
    Layers(Vec<LayerRef>),
}

struct PlannedMount {
    spec: MountSpec,
    from: MountFrom,
    at: Location,
}

/// A RUN's mounts, parsed and resolved, before anything exists on the host.
pub(super) struct MountPlan {
    mounts: Vec<PlannedMount>,
    key_parts: Vec<String>,
}

impl MountPlan {
    /// The step's cache key: unchanged without mounts, so earlier records stay valid.
    pub(super) fn key(&self, key: &str) -> String {
        if self.mounts.is_empty() {
            return key.to_string();
        }
        let mut parts: Vec<&[u8]> = vec![key.as_bytes(), b"mounts"];
        parts.extend(self.key_parts.iter().map(|p| p.as_bytes()));
        sha(&parts)
    }
}

impl Executor<'_> {
    /// Parses a RUN's `--mount`s (already expanded) and resolves their `from=`, building the
    /// stages they name first.
    pub(super) fn plan_mounts(
        &mut self,
        s: &StageState,
        r: &Run,
        stage: usize,
    ) -> Result<MountPlan, BuildError> {
        let workdir = s
            .config
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .unwrap_or_else(|| "/".into());
        let mut plan = MountPlan {
            mounts: Vec::new(),
            key_parts: Vec::new(),
        };
        let mut ssh_index = 0;
        for w in &r.mounts {
            let at = self.loc(w.pos);
            let bad = |message: String| BuildError::Input {
                at: at.clone(),
                message: format!("RUN --mount={}: {message}", w.value),
            };
            let spec = parse_mount(&w.value, &workdir, ssh_index).map_err(bad)?;
            ssh_index += usize::from(spec.typ == MountType::Ssh);
            if let Some(t) = &spec.target
                && plan
                    .mounts
                    .iter()
                    .any(|m| m.spec.target.as_ref() == Some(t))
            {
                return Err(bad(format!("another mount of this RUN has target `{t}`")));
            }
            let (from, input) = match (spec.typ, &spec.from) {
                (MountType::Bind, None) => {
                    let src = spec.source.as_deref().unwrap_or(".");
                    let mut found = self
                        .ctx
                        .resolve(src)
                        .map_err(|e| bad(format!("source {e}")))?;
                    if found.len() != 1 {
                        return Err(bad(format!("source `{src}` must name one path")));
                    }
                    let source = found.remove(0);
                    let hash = self
                        .ctx
                        .content_hash(std::slice::from_ref(&source))
                        .map_err(|e| bad(e.to_string()))?;
                    (MountFrom::Context(source), format!("context {hash}"))
                }
                (_, Some(name)) => {
                    let st = self.mount_from_state(name, stage, &at)?;
                    (MountFrom::Layers(st.layers), format!("from {}", st.key))
                }
                _ => (MountFrom::None, String::new()),
            };
            plan.key_parts.push(format!("{spec:?}\n{input}"));
            plan.mounts.push(PlannedMount { spec, from, at });
        }
        Ok(plan)
    }

    /// The state `from=` names: an earlier stage (by name or index), else an image.
    fn mount_from_state(
        &mut self,
        from: &str,
        stage: usize,
        at: &Location,
    ) -> Result<StageState, BuildError> {
        let found = self
            .df
            .stage(from)
            .map(|(i, _)| i)
            .or_else(|| from.parse::<usize>().ok());
        if let Some(i) = found {
            if i >= stage {
                return Err(BuildError::Input {
                    at: at.clone(),
                    message: format!("RUN --mount from={from} refers to this or a later stage"),
                });
            }
            return self.build_stage(i);
        }
        let unknown = |reason: String| BuildError::Input {
            at: at.clone(),
            message: format!(
                "RUN --mount from={from}: no stage of the Dockerfile has that name, and as an \
                 image: {reason}"
            ),
        };
        let reference = Reference::parse(from).map_err(|e| unknown(e.to_string()))?;
        let platform = self.platform.clone();
        self.image_state(&reference, &platform, at)
            .map_err(|e| match e {
                BuildError::BaseImage { reason, .. } => unknown(reason),
                other => other,
            })
    }

    /// Makes each planned mount's source on the host, adds it to `spec` (and its environment
    /// variables), and returns what undoes it all when dropped.
    pub(super) fn prepare_mounts(
        &self,
        plan: &MountPlan,
        spec: &mut RunSpec,
    ) -> Result<Prepared, BuildError> {
        let mut p = Prepared::default();
        if plan.mounts.is_empty() {
            return Ok(p);
        }
        let (upper, _) = self.snapshots.scratch()?;
        p.scratch = upper.parent().map(Path::to_path_buf);
        let mut ssh_env = None;
        for (i, m) in plan.mounts.iter().enumerate() {
            let missing = |what: &str, hint: String| BuildError::Input {
                at: m.at.clone(),
                message: format!(
                    "RUN --mount=type={}: {what} `{}` is required but was not given ({hint})",
                    m.spec.typ.name(),
                    m.spec.id
                ),
            };
            let target = m.spec.target.clone().unwrap_or_default();
            let rw = if m.spec.readonly { "ro" } else { "rw" };
            let bind = |source: PathBuf, file: bool, opts: &[&str]| RunMount {
                target: target.clone(),
                typ: "bind",
                source,
                options: opts.iter().map(|o| o.to_string()).collect(),
                file,
            };
            match m.spec.typ {
                MountType::Bind => {
                    let (source, file) = self.bind_source(&mut p, i, m)?;
                    spec.mounts.push(bind(source, file, &["rbind", rw]));
                }
                MountType::Cache => {
                    let root = self.cache_dir.with_file_name("mounts");
                    let lease = cache_dir::lease(&root, &self.platform, &m.spec)?;
                    if lease.fresh && !matches!(m.from, MountFrom::None) {
                        let (seed, file) = self.bind_source(&mut p, i, m)?;
                        if file {
                            let name = seed.file_name().unwrap_or_default();
                            fs::copy(&seed, lease.dir.join(name)).at("copy", &seed)?;
                        } else {
                            cache_dir::copy_tree(&seed, &lease.dir, false)?;
                        }
                    }
                    spec.mounts
                        .push(bind(lease.dir.clone(), false, &["rbind", rw]));
                    p.leases.push(lease);
                }
                MountType::Tmpfs => {
                    let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                    options.extend(m.spec.size.map(|s| format!("size={s}")));
                    spec.mounts.push(RunMount {
                        target: target.clone(),
                        typ: "tmpfs",
                        source: "tmpfs".into(),
                        options,
                        file: false,
                    });
                }
                MountType::Secret => {
                    let Some(src) = self.mount_inputs.secrets.get(&m.spec.id) else {
                        if m.spec.required {
                            let hint = format!("--secret id={},src=FILE", m.spec.id);
                            return Err(missing("secret", hint));
                        }
                        continue;
                    };
                    let bytes = src.read().map_err(|e| BuildError::Input {
                        at: m.at.clone(),
                        message: format!("secret `{}`: {e}", m.spec.id),
                    })?;
                    if let Some(var) = &m.spec.env {
                        spec.env
                            .push(format!("{var}={}", String::from_utf8_lossy(&bytes)));
                    }
                    if m.spec.target.is_some() {
                        let file = p.secret_file(i, &bytes, &m.spec)?;
                        let opts = ["bind", "ro", "nosuid", "nodev", "noexec"];
                        spec.mounts.push(bind(file, true, &opts));
                    }
                }
                MountType::Ssh => {
                    let Some(agent) = self.mount_inputs.ssh.get(&m.spec.id) else {
                        if m.spec.required {
                            let hint = format!("--ssh {}", m.spec.id);
                            return Err(missing("SSH agent", hint));
                        }
                        continue;
                    };
                    let socket = p.dir()?.join(format!("ssh-{i}.sock"));
                    let owner = (m.spec.uid, m.spec.gid);
                    p.agents.push(agent::AgentProxy::start(
                        &socket,
                        agent,
                        m.spec.mode,
                        owner,
                    )?);
                    spec.mounts.push(bind(socket, true, &["bind"]));
                    ssh_env.get_or_insert(target);
                }
            }
        }
        if let Some(t) = ssh_env {
            set_env(&mut spec.env, "SSH_AUTH_SOCK", &t);
        }
        Ok(p)
    }

    /// The host path holding a bind's `source` (or a cache's seed): returns it and whether it
    /// is a file.
    fn bind_source(
        &self,
        p: &mut Prepared,
        i: usize,
        m: &PlannedMount,
    ) -> Result<(PathBuf, bool), BuildError> {
        let dir = p.dir()?;
        let root = match &m.from {
            MountFrom::None => unreachable!("only binds and seeded caches have a source"),
            MountFrom::Context(src) => {
                // A copy (hard links when read-only) of what the .dockerignore lets through.
                let link = m.spec.readonly;
                let dst = dir.join(format!("context-{i}"));
                return materialize(src, &dst, link).map(|file| (dst, file));
            }
            MountFrom::Layers(layers) => {
                let lowers = self.snapshots.lowerdirs(self.store, layers)?;
                let target = dir.join(format!("from-{i}"));
                create_dir_all(&target)?;
                let mut lowers: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
                let empty = dir.join(format!("empty-{i}"));
                create_dir_all(&empty)?;
                let rw = !m.spec.readonly && m.spec.typ == MountType::Bind;
                if !rw && lowers.is_empty() {
                    // A stage with no layers (FROM scratch): nothing to overlay.
                    empty.clone()
                } else {
                    if lowers.is_empty() || !rw && lowers.len() == 1 {
                        // overlayfs needs two lowers without an upper, one with.
                        lowers.push(&empty);
                    }
                    if rw {
                        let upper = dir.join(format!("upper-{i}"));
                        let work = dir.join(format!("work-{i}"));
                        create_dir_all(&upper)?;
                        create_dir_all(&work)?;
                        mount_overlay(&target, &lowers, Some((&upper, &work)))?;
                    } else {
                        mount_overlay(&target, &lowers, None)?;
                    }
                    p.mounts.push(target.clone());
                    target
                }
            }
        };
        let source = m.spec.source.as_deref().unwrap_or("/");
        let r = resolve_in_root(Some(&root), source)?;
        if !r.missing.is_empty() {
            return Err(BuildError::Input {
                at: m.at.clone(),
                message: format!(
                    "RUN --mount: source `{source}` does not exist in from={}",
                    m.spec.from.as_deref().unwrap_or("")
                ),
            });
        }
        let path = root.join(r.existing.strip_prefix("/").unwrap_or(&r.existing));
        let file = !path.is_dir();
        Ok((path, file))
    }
}

/// Writes a context source into `dst` (a directory, or a file for a file source); returns
/// whether it is a file.
fn materialize(src: &Source, dst: &Path, link: bool) -> Result<bool, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    for e in &src.entries {
        let to = if e.rel.is_empty() {
            dst.to_path_buf()
        } else {
            dst.join(&e.rel)
        };
        match &e.kind {
            EntryKind::Dir => {
                fs::create_dir(&to).at("create directory", &to)?;
            }
            EntryKind::Symlink(t) => {
                std::os::unix::fs::symlink(t, &to).at("create symlink", &to)?;
                continue;
            }
            EntryKind::File => {
                if link && fs::hard_link(&e.host, &to).is_ok() {
                    continue;
                }
                fs::copy(&e.host, &to).at("copy to", &to)?;
            }
        }
        fs::set_permissions(&to, fs::Permissions::from_mode(e.mode)).at("chmod", &to)?;
    }
    Ok(!src.is_dir)
}

/// The host side of a RUN's mounts: scratch directory, overlay mounts, cache locks, secret
/// tmpfs and agent proxies. Dropping it undoes them; the scratch directory is only removed
/// once nothing is mounted in it, so a failed unmount never deletes a layer's files.
#[derive(Default)]
pub(super) struct Prepared {
    scratch: Option<PathBuf>,
    mounts: Vec<PathBuf>,
    leases: Vec<cache_dir::CacheLease>,
    agents: Vec<agent::AgentProxy>,
    secrets: Option<PathBuf>,
}

impl Prepared {
    fn dir(&self) -> Result<PathBuf, BuildError> {
        Ok(self.scratch.clone().expect("scratch made before any mount"))
    }

    /// A secret's bytes as a file in a tmpfs of its own (never on disk), with the mount's
    /// mode and owner.
    fn secret_file(
        &mut self,
        i: usize,
        bytes: &[u8],
        m: &MountSpec,
    ) -> Result<PathBuf, BuildError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = self.dir()?.join("secrets");
        if self.secrets.is_none() {
            create_dir_all(&dir)?;
            let flags = rustix::mount::MountFlags::NOSUID
                | rustix::mount::MountFlags::NODEV
                | rustix::mount::MountFlags::NOEXEC;
            rustix::mount::mount("tmpfs", &dir, "tmpfs", flags, c"mode=0700")
                .map_err(std::io::Error::from)
                .at("mount a tmpfs for secrets on", &dir)?;
            self.mounts.push(dir.clone());
            self.secrets = Some(dir.clone());
        }
        let path = dir.join(format!("secret-{i}"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at("create", &path)?;
        f.write_all(bytes).at("write", &path)?;
        drop(f);
        cache_dir::chown(&path, m.uid, m.gid)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(m.mode)).at("chmod", &path)?;
        Ok(path)
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.agents.clear();
        self.leases.clear();
        let mut all_unmounted = true;
        for m in self.mounts.iter().rev() {
            all_unmounted &= unmount(m).is_ok();
        }
        if let Some(dir) = &self.scratch
            && all_unmounted
        {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// `dts devel prune --cache`: removes the cache mounts kept under `state_dir`
/// (`$DTS_HOME/build`) that no build is using.
pub fn prune_cache_mounts(state_dir: &Path) -> Result<Vec<cache_dir::CacheMountInfo>, PathError> {
    cache_dir::prune(&state_dir.join("mounts"))
}
