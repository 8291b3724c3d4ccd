//! The daemonless image builder: Dockerfile → typed instructions → layers → multi-arch index.
//! Metadata instructions and COPY/ADD are pure Rust; RUN executes under runc with QEMU user
//! emulation for foreign platforms, so a stage without RUN never starts an emulator.
//!
//! ```text
//! Dockerfile ─parse─► stages ─┬─ platform A ─► Executor ─► config + layers ─► manifest ─┐
//!                             └─ platform B ─► Executor ─► config + layers ─► manifest ─┴► index
//!   (a thread per platform, and      │ cache: $DTS_HOME/build/cache/<key>.json
//!    threads for stages it reads)    │ RUN:   $DTS_HOME/build/snapshots (overlay lowers)
//!                                    │ COPY/ADD sources' file hashes:
//!                                    │        $DTS_HOME/build/context-hashes (hashcache.rs)
//!                                    │ RUN --mount=type=cache:
//!                                    │        $DTS_HOME/build/mounts (exec/mounts/cache_dir.rs)
//! ```
//!
//! Builds are reproducible by default: layers are canonical (`layer::write`), configs are
//! canonical JSON, and times come from `SOURCE_DATE_EPOCH` (the context's git commit time when
//! the context is a git checkout).

pub mod context;
pub mod dockerfile;
pub mod dockerignore;
pub mod exec;
pub mod hashcache;
mod prune;
pub mod run;
pub mod snapshot;
pub mod view;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use context::Context;
use dockerfile::{Dockerfile, DockerfileError};
pub use exec::mounts::cache_dir::CacheMountInfo;
pub use exec::mounts::{MountInputs, SecretSource, prune_cache_mounts};
use exec::{BaseResolver, Executor, KeyLocks, Stages, StepCounts, count_steps};
pub use prune::{BuildPruneReport, prune as prune_state};

use crate::oci::json::canonical;
use crate::oci::{Descriptor, Digest, Index, Manifest, Platform, Reference, media};
use crate::progress::{Event, Reporter};
use crate::store::{Store, StoreError};
use crate::util::fs::{PathContext, PathError};

/// Where in a Dockerfile something happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file name as the user gave it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a build failed. [`BuildError::is_bad_input`] tells the input's faults (exit 2) from the
/// build's (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse or expand.
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// An instruction asks for something impossible (a missing COPY source, a bad flag value).
    #[error("{at}: {message}")]
    Input {
        /// Where.
        at: Location,
        /// What.
        message: String,
    },
    /// A base image (or `COPY --from` image) cannot be had for the platform.
    #[error("{at}: base image `{image}`: {reason}")]
    BaseImage {
        /// Where.
        at: Location,
        /// Which image.
        image: String,
        /// Why.
        reason: String,
    },
    /// An ADD URL could not be fetched or did not match its `--checksum`.
    #[error("{at}: ADD {url}: {reason}")]
    Fetch {
        /// Where.
        at: Location,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A RUN exited non-zero.
    #[error("{at}: `{command}` failed with exit code {status}{}", tail_text(tail))]
    RunFailed {
        /// Where.
        at: Location,
        /// The instruction.
        command: String,
        /// Its exit code.
        status: i32,
        /// Its last lines of output.
        tail: Vec<String>,
    },
    /// Stopped because another stage of the build failed, on this platform or another (that
    /// error is the one reported).
    #[error("stopped: another stage of the build failed")]
    Cancelled,
    /// `--target` names no stage.
    #[error("target stage `{0}` is not in the Dockerfile")]
    NoTarget(String),
    /// No OCI runtime can run RUN steps here.
    #[error("cannot run RUN steps: {0}")]
    Runtime(String),
    /// A RUN could not be executed (runtime, mounts, emulation).
    #[error(transparent)]
    Run(#[from] run::RunError),
    /// Writing a layer failed.
    #[error(transparent)]
    Write(#[from] crate::layer::WriteError),
    /// Turning a RUN's changes into a layer failed.
    #[error(transparent)]
    Diff(#[from] crate::layer::DiffError),
    /// Unpacking a layer for RUN failed.
    #[error(transparent)]
    Unpack(#[from] crate::layer::UnpackError),
    /// Reading an image's files failed.
    #[error(transparent)]
    View(#[from] view::ViewError),
    /// The context could not be read.
    #[error(transparent)]
    Context(#[from] context::ContextError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let last: Vec<&str> = tail
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(String::as_str)
        .collect();
    format!("; last output:\n  {}", last.join("\n  "))
}

impl BuildError {
    /// Whether the user's input is at fault (exit 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            BuildError::Dockerfile(_)
                | BuildError::Input { .. }
                | BuildError::NoTarget(_)
                | BuildError::Context(context::ContextError::Ignore { .. })
        )
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `<context>/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// Names for the result.
    pub tags: Vec<Reference>,
    /// Target platforms (default: this machine's).
    pub platforms: Vec<Platform>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target` stage.
    pub target: Option<String>,
    /// Ignore the cache (results are still recorded).
    pub no_cache: bool,
    /// `$DTS_HOME/build`: cache records, snapshots, runtime state, cache mounts.
    pub state_dir: PathBuf,
    /// `--secret`s and `--ssh` agents for `RUN --mount=type=secret|ssh`.
    pub mounts: exec::mounts::MountInputs,
}

/// What a build made.
#[derive(Clone, Debug)]
pub struct BuildReport {
    /// The image: an index for several platforms, else the manifest.
    pub descriptor: Descriptor,
    /// Each platform's manifest.
    pub platforms: Vec<(Platform, Descriptor)>,
    /// Steps run and served from the cache, over all platforms.
    pub steps_run: usize,
    /// Steps served from the cache.
    pub steps_cached: usize,
}

/// Builds per `opts`, naming the result with `opts.tags` in `store`.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    resolver: &dyn BaseResolver,
    reporter: &dyn Reporter,
) -> Result<BuildReport, BuildError> {
    let dockerfile = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile).at("read", &dockerfile)?;
    let display = dockerfile
        .strip_prefix(&opts.context)
        .unwrap_or(&dockerfile)
        .display()
        .to_string();
    let df = Dockerfile::parse(&display, &text)?;
    let target = match &opts.target {
        Some(t) => df
            .stage(t)
            .map(|(i, _)| i)
            .ok_or_else(|| BuildError::NoTarget(t.clone()))?,
        None => df.stages.len() - 1,
    };
    let mut ctx = Context::open(&opts.context, &dockerfile)?;
    if !opts.no_cache {
        ctx = ctx.with_hash_cache(&opts.state_dir.join("context-hashes"));
    }
    let epoch = ctx.source_date_epoch();
    let platforms = if opts.platforms.is_empty() {
        vec![Platform::host()]
    } else {
        opts.platforms.clone()
    };
    let snapshots = snapshot::Snapshots::new(&opts.state_dir.join("snapshots"))?;
    let runtime = OnceLock::new();
    let locks = KeyLocks::default();
    let views = view::ViewCache::on_disk(&opts.state_dir.join("views"));
    let dt = duckietown::Project::detect(&opts.context);
    let total_steps = count_steps(&df, target);
    // One failure flag for all platforms: a step failing on one stops the others.
    let failed = Arc::new(AtomicBool::new(false));

    let results: Vec<Result<(Platform, Descriptor, StepCounts), BuildError>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = platforms
                .iter()
                .map(|p| {
                    let (df, ctx, snapshots, runtime, dt, locks, views) =
                        (&df, &ctx, &snapshots, &runtime, &dt, &locks, &views);
                    let failed = Arc::clone(&failed);
                    scope.spawn(move || {
                        let mut args = dt.as_ref().map(|d| d.build_args(p)).unwrap_or_default();
                        args.extend(opts.build_args.clone());
                        let guessed = dt.as_ref().map(|d| d.guessed_args(p)).unwrap_or_default();
                        let stages = Stages::sharing(failed);
                        let ex = Executor {
                            store,
                            df,
                            ctx,
                            platform: p.clone(),
                            build_platform: Platform::host(),
                            build_args: &args,
                            default_args: &guessed,
                            epoch,
                            no_cache: opts.no_cache,
                            cache_dir: opts.state_dir.join("cache"),
                            locks,
                            snapshots,
                            views,
                            resolver,
                            reporter,
                            runtime,
                            runtime_dir: opts.state_dir.join("runtime"),
                            mount_inputs: &opts.mounts,
                            label: p.duckietown_arch().unwrap_or("?").to_string(),
                            total_steps,
                            stages: &stages,
                        };
                        let mut state = ex.build_target(target)?;
                        // BuildKit: an image built for platforms the user named is for the
                        // target even from a `FROM --platform` stage; with none named it keeps
                        // its base's platform.
                        let p = &if opts.platforms.is_empty() {
                            state.platform.clone()
                        } else {
                            exec::stamp_platform(&mut state.config, p);
                            p.clone()
                        };
                        if let Some(d) = dt {
                            let base = ex.base_of(target)?;
                            d.label(&mut state.config, p, epoch, &base);
                        }
                        state.config.created = Some(exec::rfc3339(epoch));
                        let desc = write_manifest(store, &state)?;
                        Ok((p.clone(), desc, stages.counts()))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a build thread panicked"))
                .collect()
        });
    // Saved whether or not the build succeeded: every stored hash was computed from its file.
    // A cache that cannot be written costs the next build time, not this one its result.
    let _ = ctx.save_hashes();
    let (per_platform, counts) = gather(results)?;
    let descriptor = if per_platform.len() == 1 {
        per_platform[0].1.clone()
    } else {
        let mut index = Index::new();
        index.manifests = per_platform
            .iter()
            .map(|(p, d)| {
                let mut d = d.clone();
                d.platform = Some(p.clone());
                d
            })
            .collect();
        let bytes = canonical(&index);
        let digest = store.put_blob(&bytes)?;
        Descriptor::new(media::OCI_INDEX, digest, bytes.len() as u64)
    };
    let names: Vec<(Reference, Descriptor)> = opts
        .tags
        .iter()
        .map(|t| (t.clone(), descriptor.clone()))
        .collect();
    if !names.is_empty() {
        store.set_names(&names)?;
    }
    reporter.event(Event::note(format!(
        "built {} ({} steps run, {} cached)",
        descriptor.digest, counts.run, counts.cached
    )));
    Ok(BuildReport {
        descriptor,
        platforms: per_platform,
        steps_run: counts.run,
        steps_cached: counts.cached,
    })
}

/// Each platform's manifest, and the steps run and cached on all of them.
type Built = (Vec<(Platform, Descriptor)>, StepCounts);

/// What the platforms' threads built, or the error that stopped the build (not another
/// platform's cancellation it caused).
fn gather(
    results: Vec<Result<(Platform, Descriptor, StepCounts), BuildError>>,
) -> Result<Built, BuildError> {
    let mut per_platform = Vec::new();
    let mut counts = StepCounts::default();
    let mut error: Option<BuildError> = None;
    for r in results {
        match r {
            Ok((p, d, c)) => {
                counts.run += c.run;
                counts.cached += c.cached;
                per_platform.push((p, d));
            }
            Err(e)
                if error
                    .as_ref()
                    .is_none_or(|f| matches!(f, BuildError::Cancelled)) =>
            {
                error = Some(e);
            }
            Err(_) => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok((per_platform, counts)),
    }
}

fn write_manifest(store: &Store, state: &exec::StageState) -> Result<Descriptor, BuildError> {
    let config = state.config.to_canonical_json();
    let cdigest = store.put_blob(&config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.to_string()),
        artifact_type: None,
        config: Descriptor::new(media::OCI_CONFIG, cdigest, config.len() as u64),
        layers: state.layers.iter().map(|l| l.descriptor.clone()).collect(),
        subject: None,
        annotations: BTreeMap::new(),
    };
    let bytes = canonical(&manifest);
    let digest: Digest = store.put_blob(&bytes)?;
    Ok(Descriptor::new(
        media::OCI_MANIFEST,
        digest,
        bytes.len() as u64,
    ))
}

/// Resolves base images from the local store, pulling from their registry when missing.
pub struct StoreOrRegistry<'a> {
    /// The store.
    pub store: &'a Store,
    /// Plain HTTP for lab registries.
    pub insecure: bool,
}

impl BaseResolver for StoreOrRegistry<'_> {
    fn ensure(&self, reference: &Reference, platform: &Platform) -> anyhow::Result<Descriptor> {
        if let Ok(img) = self.store.get(reference) {
            return Ok(img.descriptor);
        }
        let client = crate::registry::Client::new(crate::registry::ClientOptions {
            insecure: self.insecure,
            ..Default::default()
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let report = rt.block_on(client.pull(
            self.store,
            reference,
            Some(std::slice::from_ref(platform)),
            &crate::progress::Silent,
        ))?;
        Ok(report.descriptor)
    }
}

/// Duckietown project conventions: build args and labels the Duckietown shell sets.
pub mod duckietown {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use crate::oci::{ImageConfig, Platform};

    /// A Duckietown project context.
    #[derive(Clone, Debug)]
    pub struct Project {
        root: PathBuf,
        distro: String,
        /// Whether `distro` was read from the project (`dtproject/distro.yaml`, the branch)
        /// rather than guessed.
        distro_known: bool,
        template: Option<(String, String)>,
    }

    fn git(root: &Path, args: &[&str]) -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Why Duckietown's image name cannot be made for a context.
    #[derive(Debug, thiserror::Error)]
    pub enum TagError {
        /// Not in a git checkout, or HEAD on no branch: Duckietown's tag takes the branch.
        #[error(
            "`{0}` is not on a git branch (Duckietown's tag is `duckietown/<repo>:<branch>-<arch>`): check out a branch, or name the image with `-t`"
        )]
        NoBranch(PathBuf),
    }

    /// Duckietown's name for the image of the project at `root` built for `p`, as its shell
    /// tags a `dts devel build`: `duckietown/<repo>:<branch>-<arch>`. `repo` is the project's
    /// name: `dtproject/self.yaml`'s `name`, else the git remote `origin`'s repository, else the
    /// checkout's directory; `branch` is the checked-out branch (`daffy`, `ente`, a topic
    /// branch); `arch` the Duckietown arch tag (`arm64v8`, `arm32v7`, `amd64`).
    pub fn image_tag(root: &Path, p: &Platform) -> Result<String, TagError> {
        let branch = git(root, &["rev-parse", "--abbrev-ref", "HEAD"])
            .filter(|b| b != "HEAD")
            .ok_or_else(|| TagError::NoBranch(root.to_path_buf()))?;
        let from_yaml = std::fs::read_to_string(root.join("dtproject/self.yaml"))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("name:")
                        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
                })
            })
            .filter(|n| !n.is_empty());
        let from_remote = || {
            git(root, &["config", "--get", "remote.origin.url"]).map(|url| {
                url.trim_end_matches('/')
                    .trim_end_matches(".git")
                    .rsplit(['/', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        };
        let from_dir = || {
            git(root, &["rev-parse", "--show-toplevel"])
                .map(PathBuf::from)
                .unwrap_or_else(|| root.to_path_buf())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        };
        let name = from_yaml
            .or_else(from_remote)
            .filter(|n| !n.is_empty())
            .or_else(from_dir)
            .unwrap_or_else(|| "project".into());
        Ok(tag_from(
            &name,
            &branch,
            p.duckietown_arch().unwrap_or("amd64"),
        ))
    }

    /// `duckietown/<name>:<branch>-<arch>` with what an image reference cannot hold mended: the
    /// repository in lower case, a `/` or other character a tag forbids in the branch as `-`.
    pub fn tag_from(name: &str, branch: &str, arch: &str) -> String {
        // Every character a reference part cannot hold becomes `-`.
        let mend = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        };
        let (repo, version) = (mend(&name.to_lowercase()), mend(branch));
        format!("duckietown/{repo}:{version}-{arch}")
    }

    impl Project {
        /// A project if the context has `dependencies-apt.txt`, `.dtproject` or `dtproject/`.
        pub fn detect(root: &Path) -> Option<Project> {
            let is_project = root.join("dependencies-apt.txt").is_file()
                || root.join(".dtproject").is_file()
                || root.join("dtproject").is_dir();
            if !is_project {
                return None;
            }
            let dtproject = std::fs::read_to_string(root.join(".dtproject")).unwrap_or_default();
            let field = |k: &str| {
                dtproject
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string))
            };
            let distro_yaml = std::fs::read_to_string(root.join("dtproject/distro.yaml"))
                .ok()
                .and_then(|t| {
                    t.lines().find_map(|l| {
                        l.trim()
                            .strip_prefix("distro:")
                            .map(|v| v.trim().trim_matches('"').to_string())
                    })
                });
            // daffy projects take the distro from the branch (`daffy`, `daffy-staging`).
            let found = distro_yaml
                .or_else(|| git(root, &["rev-parse", "--abbrev-ref", "HEAD"]))
                .map(|b| b.split('-').next().unwrap_or("ente").to_string())
                .filter(|d| !d.is_empty() && d != "HEAD" && d != "master" && d != "main");
            let distro_known = found.is_some();
            let distro = found.unwrap_or_else(|| "ente".to_string());
            let template = field("TYPE").map(|t| (t, field("TYPE_VERSION").unwrap_or_default()));
            Some(Project {
                root: root.to_path_buf(),
                distro,
                distro_known,
                template,
            })
        }

        /// `ARCH`, `DISTRO`, `BASE_TAG` as the Duckietown shell passes them: build args,
        /// over the Dockerfile's defaults. `DISTRO` and `BASE_TAG` only when the distro was
        /// read from the project; a guess is in [`Project::guessed_args`].
        pub fn build_args(&self, p: &Platform) -> BTreeMap<String, String> {
            let arch = p.duckietown_arch().unwrap_or("amd64").to_string();
            let mut args = BTreeMap::from([("ARCH".to_string(), arch)]);
            if self.distro_known {
                args.extend(self.distro_args(p));
            }
            args
        }

        /// `DISTRO` and `BASE_TAG` from a guessed distro (no `dtproject/distro.yaml`, no
        /// branch): values only for ARGs the Dockerfile declares without a default, so a
        /// guess never overrides the Dockerfile's own `ARG DISTRO=…`.
        pub fn guessed_args(&self, p: &Platform) -> BTreeMap<String, String> {
            if self.distro_known {
                return BTreeMap::new();
            }
            self.distro_args(p)
        }

        fn distro_args(&self, p: &Platform) -> BTreeMap<String, String> {
            let arch = p.duckietown_arch().unwrap_or("amd64");
            BTreeMap::from([
                ("BASE_TAG".to_string(), format!("{}-{arch}", self.distro)),
                ("DISTRO".to_string(), self.distro.clone()),
            ])
        }

        /// Adds the `org.duckietown.label.*` labels.
        pub fn label(
            &self,
            config: &mut ImageConfig,
            p: &Platform,
            epoch: Option<i64>,
            base: &str,
        ) {
            let c = config.config.get_or_insert_with(Default::default);
            let labels = c.labels.get_or_insert_with(BTreeMap::new);
            let mut put = |k: &str, v: String| {
                labels.insert(format!("org.duckietown.label.{k}"), v);
            };
            put(
                "architecture",
                p.duckietown_arch().unwrap_or("amd64").to_string(),
            );
            put("platform.os", p.os.clone());
            put("platform.architecture", p.architecture.clone());
            if let Some(v) = &p.variant {
                put("platform.variant", v.clone());
            }
            put("code.distro", self.distro.clone());
            put("base.image", base.to_string());
            put("time", super::exec::rfc3339(epoch));
            if let Some(sha) = git(&self.root, &["rev-parse", "HEAD"]) {
                put("code.sha", sha);
            }
            if let Some(b) = git(&self.root, &["rev-parse", "--abbrev-ref", "HEAD"]) {
                put("code.branch", b);
            }
            if let Some(url) = git(&self.root, &["config", "--get", "remote.origin.url"]) {
                let repo = url
                    .trim_end_matches(".git")
                    .rsplit(['/', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                put("code.repository", repo);
                put("code.url", url);
            }
            if let Some((name, version)) = &self.template {
                put("template.name", name.clone());
                put("template.version", version.clone());
            }
        }
    }
}
