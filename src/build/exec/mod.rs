//! Executing a parsed Dockerfile for one platform: stage by stage, instruction by instruction,
//! with one environment snapshot per instruction, content-based cache keys, pure-Rust COPY/ADD
//! and metadata steps, and RUN under the OCI runtime on overlay snapshots of the layers so far.
//!
//! The state of a stage is an image config plus a list of layers in the store; every step
//! returns a new state. Layer-producing steps (RUN, COPY, ADD, WORKDIR) look their cache key up
//! first; a key chains the parent's key, the config so far, the expanded instruction and, for
//! COPY/ADD, a hash of the source bytes and metadata (never mtimes).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::context::{Context, EntryKind, Source};
use super::dockerfile::{
    Add, Command, CommandLine, Copy, Dockerfile, Env, Healthcheck, Instruction, Position, Run,
    Stage, parse_onbuild_trigger,
};
use super::dockerignore::DockerIgnore;
use super::run::{self, Network, RunSpec, Runtime};
use super::snapshot::Snapshots;
use super::view::{FsView, Kind, LayerSource, ViewCache, clean};
use super::{BuildError, Location};
use crate::layer::{self, EntryMeta, LayerBuilder, WriteOptions, canonical_cmp};
use crate::oci::config::{ContainerConfig, Healthcheck as OciHealthcheck, History, RootFs};
use crate::oci::{Compression, Descriptor, Digest, ImageConfig, Platform, Reference, media};
use crate::progress::{Event, Reporter};
use crate::store::Store;
use crate::util::fs::{PathContext, atomic_write, create_dir_all, read_limited};

mod add;
mod cache;
pub(super) use cache::record_layer;
mod chmod;
mod config;
mod copy;
mod fetch;
mod git;
pub mod mounts;
mod stages;

pub use crate::util::locks::KeyLocks;
pub use stages::{Stages, count_steps};

use config::history_text;
use copy::{add_parents, resolve_owner, write_entries};

/// Docker's default PATH for Linux images.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The shell RUN/CMD/ENTRYPOINT shell forms use unless SHELL says otherwise.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// Version of the cache key recipe: bump it when a key's meaning changes.
const CACHE_VERSION: &str = "dts-build-cache-1";

/// One layer of a stage's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRef {
    /// The blob in the store.
    pub descriptor: Descriptor,
    /// Its uncompressed digest.
    pub diff_id: Digest,
}

/// The image being built by one stage.
#[derive(Clone, Debug)]
pub struct StageState {
    /// Config so far.
    pub config: ImageConfig,
    /// Layers so far, base first.
    pub layers: Vec<LayerRef>,
    /// ARGs declared in this stage (value `None`: declared without a value).
    args: BTreeMap<String, Option<String>>,
    /// Whether CMD was set in this stage (ENTRYPOINT clears an inherited CMD otherwise).
    cmd_set: bool,
    /// Cache key of the state.
    key: String,
    /// The platform the stage's files are for, which its RUN steps execute as: its base's
    /// (`FROM --platform=$BUILDPLATFORM` makes a native stage), not always the target's.
    pub platform: Platform,
}

/// What an executed step did, for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepCounts {
    /// Steps that ran.
    pub run: usize,
    /// Steps served from the cache.
    pub cached: usize,
}

/// Resolves `FROM` images and `COPY --from` images: the local store, else a registry.
pub trait BaseResolver: Sync {
    /// Makes sure `reference` is in the store for `platform` and returns its top descriptor.
    fn ensure(&self, reference: &Reference, platform: &Platform) -> anyhow::Result<Descriptor>;
}

/// Everything one platform's build needs (cloned for each thread building a stage of it).
#[derive(Clone)]
pub struct Executor<'a> {
    pub(super) store: &'a Store,
    pub(super) df: &'a Dockerfile,
    pub(super) ctx: &'a Context,
    pub(super) platform: Platform,
    pub(super) build_platform: Platform,
    pub(super) build_args: &'a BTreeMap<String, String>,
    /// Values for ARGs the Dockerfile declares without a default (Duckietown's guessed
    /// `DISTRO`): never over a default the Dockerfile gives, unlike `build_args`.
    pub(super) default_args: &'a BTreeMap<String, String>,
    pub(super) epoch: Option<i64>,
    pub(super) no_cache: bool,
    pub(super) cache_dir: PathBuf,
    /// Steps in progress on every platform's thread, so a step two targets share (a native
    /// stage's) runs once and the other thread takes the result from the cache.
    pub(super) locks: &'a KeyLocks,
    pub(super) snapshots: &'a Snapshots,
    /// The stages' file trees, read once per layer for every step that looks at them.
    pub(super) views: &'a ViewCache,
    pub(super) resolver: &'a dyn BaseResolver,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) runtime: &'a std::sync::OnceLock<Result<Runtime, String>>,
    pub(super) runtime_dir: PathBuf,
    /// `--secret`s and `--ssh` agents for `RUN --mount`.
    pub(super) mount_inputs: &'a mounts::MountInputs,
    pub(super) label: String,
    pub(super) total_steps: usize,
    /// The platform's stages, step numbers and counts, shared by its threads.
    pub(super) stages: &'a Stages,
}

fn sha(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// `KEY=value` list → map (last wins, as the kernel's getenv would see it).
fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

fn set_env(list: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match list
        .iter_mut()
        .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == key)
    {
        Some(slot) => *slot = entry,
        None => list.push(entry),
    }
}

/// The `created` time we stamp: SOURCE_DATE_EPOCH when set, else now.
pub fn rfc3339(epoch: Option<i64>) -> String {
    crate::util::time::rfc3339(epoch.unwrap_or_else(crate::util::time::now_secs))
}

/// The platform args BuildKit defines (`TARGETPLATFORM` includes the variant).
pub fn platform_args(target: &Platform, build: &Platform) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        m.insert(format!("{prefix}PLATFORM"), p.to_string());
        m.insert(format!("{prefix}OS"), p.os.clone());
        m.insert(format!("{prefix}ARCH"), p.architecture.clone());
        m.insert(
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        );
    }
    m
}

impl<'a> Executor<'a> {
    fn loc(&self, pos: Position) -> Location {
        Location {
            file: self.df.file.clone(),
            line: pos.line,
            column: pos.column,
        }
    }

    /// The meta-arg environment for FROM lines: automatic platform args, then the ARGs before
    /// the first FROM with build-arg overrides.
    fn meta_env(&self) -> Result<BTreeMap<String, String>, BuildError> {
        let mut env = platform_args(&self.platform, &self.build_platform);
        for ins in &self.df.meta_args {
            let ins = ins.expand(&self.df.expander(&env))?;
            if let Command::Arg(defs) = ins.command {
                for d in defs {
                    let name = d.name.value.clone();
                    if let Some(v) = self.build_args.get(&name) {
                        env.insert(name, v.clone());
                    } else if let Some(def) = d.default {
                        env.insert(name, def.value);
                    } else if let Some(v) = self.default_args.get(&name) {
                        env.insert(name, v.clone());
                    }
                }
            }
        }
        Ok(env)
    }

    /// The base a stage names in its FROM line, expanded with the meta args.
    pub fn base_of(&self, index: usize) -> Result<String, BuildError> {
        let meta = self.meta_env()?;
        Ok(self.df.stages[index]
            .expand_base(&self.df.expander(&meta))?
            .0)
    }

    /// Builds stage `index`, which this thread has claimed ([`Executor::build_stage`]).
    fn build_stage_steps(&mut self, index: usize) -> Result<StageState, BuildError> {
        let df = self.df;
        let stage = &df.stages[index];
        let meta = self.meta_env()?;
        let (base, platform_flag) = stage.expand_base(&df.expander(&meta))?;
        let base_platform = match platform_flag {
            Some(p) => p.parse::<Platform>().map_err(|e| BuildError::Input {
                at: self.loc(stage.span.start),
                message: format!("FROM --platform: {e}"),
            })?,
            None => self.platform.clone(),
        };
        let mut state = self.from(stage, index, &base, &base_platform)?;
        self.progress_step(&stage.source, Some(false));
        // Triggers of the base image run first, then are cleared (Docker's ONBUILD).
        let triggers = state
            .config
            .config
            .as_mut()
            .and_then(|c| c.on_build.take())
            .unwrap_or_default();
        for t in triggers {
            let ins = parse_onbuild_trigger(&df.file, &t)?;
            state = self.instruction(state, &ins, index)?;
        }
        for ins in &stage.instructions {
            self.stages.check()?;
            state = self.instruction(state, ins, index)?;
        }
        Ok(state)
    }

    fn from(
        &mut self,
        stage: &Stage,
        index: usize,
        base: &str,
        base_platform: &Platform,
    ) -> Result<StageState, BuildError> {
        let at = self.loc(stage.span.start);
        // A previous stage, by name or index.
        if let Some((i, _)) = self.df.stage(base).filter(|(i, _)| *i < index) {
            let mut s = self.build_stage(i)?;
            s.args.clear();
            s.cmd_set = false;
            return Ok(s);
        }
        let mut state = if base.eq_ignore_ascii_case("scratch") {
            let mut config = ImageConfig {
                rootfs: RootFs::default(),
                ..Default::default()
            };
            config.config = Some(ContainerConfig {
                env: Some(vec![format!("PATH={DEFAULT_PATH}")]),
                working_dir: Some("/".to_string()),
                ..Default::default()
            });
            StageState {
                config,
                layers: Vec::new(),
                args: BTreeMap::new(),
                cmd_set: false,
                key: sha(&[CACHE_VERSION.as_bytes(), b"scratch"]),
                platform: base_platform.clone(),
            }
        } else {
            let reference = Reference::parse(base).map_err(|e| BuildError::Input {
                at: at.clone(),
                message: e.to_string(),
            })?;
            self.image_state(&reference, base_platform, &at)?
        };
        // The stage is for its base's platform: the target's, or what FROM --platform says
        // (`$BUILDPLATFORM`: a native stage, whose steps two targets share when their inputs
        // are equal). The final image is stamped with the target in `build::build`.
        state.platform = base_platform.clone();
        stamp_platform(&mut state.config, base_platform);
        state.key = sha(&[state.key.as_bytes(), base_platform.to_string().as_bytes()]);
        Ok(state)
    }

    fn progress_step(&mut self, text: &str, cached: Option<bool>) -> String {
        let step = self.stages.next_step();
        let id = format!("{}-{}", self.label, step);
        let label = format!(
            "[{} {}/{}] {}",
            self.label,
            step,
            self.total_steps,
            text.lines().next().unwrap_or("")
        );
        self.reporter.event(Event::start(&id, label, None));
        if let Some(c) = cached {
            self.reporter
                .event(Event::finish(&id, if c { "CACHED" } else { "done" }));
        }
        id
    }

    /// Ends a step's progress line: `CACHED`, or `done` with the time it took (as BuildKit).
    fn finish_progress(&self, id: &str, cached: bool, started: std::time::Instant) {
        let outcome = if cached {
            "CACHED".to_string()
        } else {
            format!("done {:.1}s", started.elapsed().as_secs_f64())
        };
        self.reporter.event(Event::finish(id, outcome));
    }

    /// The environment an instruction's words expand with: declared ARGs, then the config's
    /// ENV (ENV beats ARG).
    fn expansion_env(&self, s: &StageState) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = s
            .args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        if let Some(e) = s.config.config.as_ref().and_then(|c| c.env.as_ref()) {
            env.extend(env_map(e));
        }
        env
    }

    fn instruction(
        &mut self,
        mut s: StageState,
        ins: &Instruction,
        stage: usize,
    ) -> Result<StageState, BuildError> {
        let env = self.expansion_env(&s);
        let ex = self.df.expander(&env as &dyn Env);
        let ins = ins.expand(&ex)?;
        // History carries build times; what a step does depends on the rest of the config.
        let mut keyed = s.config.clone();
        keyed.history.clear();
        keyed.created = None;
        let before = crate::oci::json::canonical(&keyed);
        let key = sha(&[
            s.key.as_bytes(),
            &before,
            format!("{:?}", ins.command).as_bytes(),
        ]);
        match &ins.command {
            Command::Arg(defs) => {
                let meta = self.meta_env()?;
                for d in defs {
                    let name = d.name.value.clone();
                    let value = self
                        .build_args
                        .get(&name)
                        .cloned()
                        .or_else(|| d.default.as_ref().map(|w| w.value.clone()))
                        .or_else(|| meta.get(&name).cloned())
                        .or_else(|| self.default_args.get(&name).cloned());
                    s.args.insert(name, value);
                }
                self.progress_step(&ins.source, Some(false));
                s.key = sha(&[key.as_bytes(), format!("{:?}", s.args).as_bytes()]);
                return Ok(s);
            }
            Command::Workdir(w) => {
                let cfg = s.config.config.get_or_insert_with(Default::default);
                let prev = cfg.working_dir.clone().unwrap_or_else(|| "/".into());
                let wd = if w.value.starts_with('/') {
                    format!("/{}", clean(&w.value))
                } else {
                    format!("/{}", clean(&format!("{prev}/{}", w.value)))
                };
                cfg.working_dir = Some(wd.clone());
                if wd != "/" {
                    let (layer, cached) =
                        self.cached_layer(&key, |me| me.workdir_layer(&s, &wd))?;
                    self.progress_step(&ins.source, Some(cached));
                    let empty_layer = layer.is_none();
                    s.layers.extend(layer);
                    return Ok(self.finish_step(s, &ins, key, empty_layer));
                }
            }
            Command::Run(_) | Command::Copy(_) | Command::Add(_) => {
                // Before the progress line: a mount's `from=` may build another stage first.
                let plan = match &ins.command {
                    Command::Run(r) => Some(self.plan_mounts(&s, r, stage)?),
                    _ => None,
                };
                let key = plan.as_ref().map_or(key.clone(), |p| p.key(&key));
                let id = self.progress_step(&ins.source, None);
                let started = std::time::Instant::now();
                let done = match (&ins.command, &plan) {
                    (Command::Run(r), Some(plan)) => {
                        self.cached_layer(&key, |me| me.run(&s, &ins, r, plan).map(Some))
                    }
                    (Command::Copy(c), _) => self.copy_step(&s, &ins, &key, c, stage),
                    (Command::Add(a), _) => self.add_step(&s, &ins, &key, a),
                    _ => unreachable!("matched above"),
                };
                let (layer, cached) = match done {
                    Ok(done) => done,
                    Err(e) => {
                        // BuildKit's words: the step that failed, and those stopped for it.
                        let outcome = match e {
                            BuildError::Cancelled => "CANCELED",
                            _ => "ERROR",
                        };
                        self.reporter.event(Event::finish(&id, outcome));
                        return Err(e);
                    }
                };
                self.finish_progress(&id, cached, started);
                s.layers.extend(layer);
                return Ok(self.finish_step(s, &ins, key, false));
            }
            config => self.set_config(&mut s, config)?,
        }
        self.progress_step(&ins.source, Some(false));
        Ok(self.finish_step(s, &ins, key, true))
    }

    fn finish_step(
        &self,
        mut s: StageState,
        ins: &Instruction,
        key: String,
        empty_layer: bool,
    ) -> StageState {
        s.config.history.push(History {
            created: Some(rfc3339(self.epoch)),
            created_by: Some(history_text(ins, &s)),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer,
            ..Default::default()
        });
        s.config.rootfs.diff_ids = s.layers.iter().map(|l| l.diff_id.clone()).collect();
        s.key = key;
        s
    }

    /// A view of a state's file system (for USER and --chown names, WORKDIR, COPY targets).
    fn view(&self, s: &StageState) -> Result<Arc<FsView>, BuildError> {
        let layers = s
            .layers
            .iter()
            .map(|l| LayerSource {
                path: self.store.blob_path(&l.descriptor.digest),
                digest: Some(l.descriptor.digest.clone()),
                compression: Compression::of_media_type(&l.descriptor.media_type)
                    .unwrap_or(Compression::Gzip),
            })
            .collect();
        Ok(self.views.view(layers)?)
    }

    fn new_layer(
        &self,
        write: impl FnOnce(&mut LayerBuilder<&mut crate::store::BlobWriter>) -> Result<(), BuildError>,
    ) -> Result<LayerRef, BuildError> {
        let mut blob = self.store.writer()?;
        let opts = WriteOptions { epoch: self.epoch };
        let mut b = LayerBuilder::new(&mut blob, Compression::Gzip, &opts)?;
        write(&mut b)?;
        let written = b.finish()?;
        let (digest, size) = blob.commit(Some((&written.digest, written.size)))?;
        Ok(LayerRef {
            descriptor: Descriptor::new(media::OCI_LAYER_GZIP, digest, size),
            diff_id: written.diff_id,
        })
    }

    fn workdir_layer(&self, s: &StageState, wd: &str) -> Result<Option<LayerRef>, BuildError> {
        let view = self.view(s)?;
        if view.exists(wd) {
            return Ok(None);
        }
        let (uid, gid) = match s.config.config.as_ref().and_then(|c| c.user.as_deref()) {
            Some(u) if !u.is_empty() => resolve_owner(&view, u).unwrap_or((0, 0)),
            _ => (0, 0),
        };
        let mut entries = BTreeMap::new();
        add_parents(
            &view,
            &mut entries,
            &format!("{}/x", clean(wd)),
            self.epoch,
            (uid, gid),
            0o755,
        );
        Ok(Some(self.new_layer(|b| write_entries(b, &entries))?))
    }

    fn runtime(&self) -> Result<&Runtime, BuildError> {
        self.runtime
            .get_or_init(|| {
                let runtime = Runtime::detect(&self.runtime_dir).map_err(|e| e.to_string())?;
                // What killed builds left (containers, scratch mounts): best effort, a
                // failure here is no reason to fail this build.
                let _ = run::cleanup_stale(&runtime);
                Ok(runtime)
            })
            .as_ref()
            .map_err(|e| BuildError::Runtime(e.clone()))
    }

    fn run(
        &self,
        s: &StageState,
        ins: &Instruction,
        r: &Run,
        plan: &mounts::MountPlan,
    ) -> Result<LayerRef, BuildError> {
        // Refused rather than ignored: the step would silently run with other rights.
        let unsupported = [
            (r.security.is_some(), "--security"),
            (!r.devices.is_empty(), "--device"),
        ];
        if let Some((_, flag)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(BuildError::Input {
                at: self.loc(ins.span.start),
                message: format!("RUN {flag} is not supported by dts yet"),
            });
        }
        let cfg = s.config.config.clone().unwrap_or_default();
        let shell: Vec<String> = cfg
            .shell
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
        let args = match &r.command {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell(cmd) => {
                let mut line = cmd.clone();
                let lone_heredoc = r.heredocs.len() == 1
                    && cmd.trim_start().starts_with("<<")
                    && !cmd.trim().contains(' ');
                if lone_heredoc {
                    let h = &r.heredocs[0];
                    line = if h.chomp {
                        super::dockerfile::parser::chomp_heredoc(&h.content)
                    } else {
                        h.content.clone()
                    };
                } else {
                    for h in &r.heredocs {
                        line.push('\n');
                        line.push_str(&h.content);
                        line.push_str(&h.name);
                    }
                }
                let mut a = shell.clone();
                a.push(line);
                a
            }
        };
        let mut env = cfg.env.clone().unwrap_or_default();
        let env_keys: BTreeSet<String> = env_map(&env).into_keys().collect();
        for (k, v) in &s.args {
            if let Some(v) = v
                && !env_keys.contains(k)
            {
                env.push(format!("{k}={v}"));
            }
        }
        let mut spec = RunSpec::new(args.clone());
        spec.env = env;
        spec.cwd = cfg.working_dir.clone().unwrap_or_else(|| "/".into());
        spec.user = cfg.user.clone().unwrap_or_default();
        spec.platform = s.platform.clone();
        // DTS_BUILD_FSYNC=1 keeps the sync calls real (to measure what suppressing them saves,
        // or to build on a file system where it matters): docs/cli.md.
        spec.suppress_sync = std::env::var_os("DTS_BUILD_FSYNC").is_none_or(|v| v != "1");
        spec.network = match r.network.as_ref().map(|w| w.value.as_str()) {
            Some("none") => Network::None,
            _ => Network::Host,
        };
        // Held until the RUN is over: cache locks, mounts, secret files, agent proxies.
        let _mounts = self.prepare_mounts(plan, &mut spec)?;
        // A failure elsewhere in the build while this waited for a cache mount's lock: do not
        // start what would be killed at once.
        self.stages.check()?;
        let runtime = self.runtime()?;
        let lowers = self.snapshots.lowerdirs(self.store, &s.layers)?;
        let (upper, work) = self.snapshots.scratch()?;
        let label = self.label.clone();
        let reporter = self.reporter;
        let mut out = |line: &str| reporter.event(Event::note(format!("[{label}] {line}")));
        // A failure elsewhere while it runs kills it, as BuildKit cancels a solve's other
        // steps: a long compile beside a broken stage does not hold up the error.
        let cancelled = || self.stages.check().is_err();
        let outcome =
            match run::execute(runtime, &lowers, &upper, &work, &spec, &cancelled, &mut out) {
                Ok(o) if o.status == 0 => o,
                other => {
                    let _ = fs::remove_dir_all(upper.parent().unwrap_or(&upper));
                    return Err(match other {
                        Ok(o) => BuildError::RunFailed {
                            at: self.loc(ins.span.start),
                            command: ins.source.clone(),
                            status: o.status,
                            tail: o.output_tail,
                        },
                        Err(run::RunError::Cancelled { .. }) => BuildError::Cancelled,
                        Err(e) => e.into(),
                    });
                }
            };
        let view = self.view(s)?;
        let existed = |p: &Path| view.exists(&p.to_string_lossy());
        let diff = layer::DiffOptions {
            mount_stubs: &outcome.stubs,
            existed_in_lower: &existed,
        };
        let mut blob = self.store.writer()?;
        let written = layer::write_overlay_layer(
            &upper,
            &diff,
            &mut blob,
            Compression::Gzip,
            &WriteOptions { epoch: self.epoch },
        )?;
        let (digest, size) = blob.commit(Some((&written.digest, written.size)))?;
        // The upper dir is this layer in overlay form: keep it as the layer's snapshot.
        self.snapshots.adopt(&written.diff_id, &upper)?;
        Ok(LayerRef {
            descriptor: Descriptor::new(media::OCI_LAYER_GZIP, digest, size),
            diff_id: written.diff_id,
        })
    }

    /// The state an image starts a stage with: its config and layers for `platform`, fetched
    /// by the resolver if the store lacks it.
    fn image_state(
        &self,
        reference: &Reference,
        platform: &Platform,
        at: &Location,
    ) -> Result<StageState, BuildError> {
        self.reporter.event(Event::note(format!(
            "[{}] resolving {}",
            self.label,
            reference.familiar()
        )));
        let base_error = |reason: String| BuildError::BaseImage {
            at: at.clone(),
            image: reference.familiar(),
            reason,
        };
        let desc = self
            .resolver
            .ensure(reference, platform)
            .map_err(|e| base_error(format!("{e:#}")))?;
        let img = self
            .store
            .resolve_platform(&reference.familiar(), &desc, Some(platform))
            .map_err(|e| base_error(e.to_string()))?;
        let layers = img
            .manifest
            .layers
            .iter()
            .zip(&img.config.rootfs.diff_ids)
            .map(|(d, id)| LayerRef {
                descriptor: d.clone(),
                diff_id: id.clone(),
            })
            .collect();
        // Keyed by what later steps see (layers and config), not by the manifest digest: a base
        // rebuilt unchanged but stamped with a new `created` keeps its children cached, as
        // BuildKit's key from the layer chain does.
        let mut keyed = img.config.clone();
        keyed.history.clear();
        keyed.created = None;
        Ok(StageState {
            key: sha(&[
                CACHE_VERSION.as_bytes(),
                &crate::oci::json::canonical(&keyed),
            ]),
            config: img.config,
            layers,
            args: BTreeMap::new(),
            cmd_set: false,
            platform: platform.clone(),
        })
    }

    /// Where ADD checks git repositories out (`$DTS_HOME/build/git`).
    fn git_dir(&self) -> PathBuf {
        self.cache_dir.with_file_name("git")
    }
}

/// Sets an image config's platform fields.
pub fn stamp_platform(config: &mut ImageConfig, p: &Platform) {
    config.architecture = p.architecture.clone();
    config.os = p.os.clone();
    config.variant = p.variant.clone();
}

#[cfg(test)]
mod tests {
    use super::config::{check_signal, expose_keys};
    use super::fetch::parse_http_date;
    use super::*;

    #[test]
    fn dates_and_ports_and_signals() {
        assert_eq!(rfc3339(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(rfc3339(Some(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(Some(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(expose_keys("80").unwrap(), ["80/tcp"]);
        assert_eq!(expose_keys("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(expose_keys("8000-8002").unwrap().len(), 3);
        assert!(expose_keys("x").is_err());
        assert!(check_signal("SIGINT").is_ok());
        assert!(check_signal("9").is_ok());
        assert!(check_signal("SIGFOO").is_err());
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        set_env(&mut env, "A", "3");
        assert_eq!(env, ["A=3", "B=2"]);
    }
}
