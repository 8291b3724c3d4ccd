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

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::context::{Context, EntryKind, Source, content_hash};
use super::dockerfile::{
    Add, Command, CommandLine, Copy, Dockerfile, Env, Healthcheck, Instruction, Position, Run,
    Stage, parse_onbuild_trigger,
};
use super::dockerignore::DockerIgnore;
use super::run::{self, Network, RunSpec, Runtime};
use super::snapshot::Snapshots;
use super::view::{FsView, Kind, LayerSource, clean};
use super::{BuildError, Location};
use crate::layer::{self, EntryMeta, LayerBuilder, WriteOptions, canonical_cmp};
use crate::oci::config::{ContainerConfig, Healthcheck as OciHealthcheck, History, RootFs};
use crate::oci::{Compression, Descriptor, Digest, ImageConfig, Platform, Reference, media};
use crate::progress::{Event, Reporter};
use crate::store::Store;
use crate::util::fs::{PathContext, atomic_write, create_dir_all, read_limited};

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
}

/// A cached layer-producing step.
#[derive(Serialize, Deserialize)]
struct CacheRecord {
    layer: Option<LayerRef>,
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

/// Everything one platform's build needs.
pub struct Executor<'a> {
    pub(super) store: &'a Store,
    pub(super) df: &'a Dockerfile,
    pub(super) ctx: &'a Context,
    pub(super) platform: Platform,
    pub(super) build_platform: Platform,
    pub(super) build_args: &'a BTreeMap<String, String>,
    pub(super) epoch: Option<i64>,
    pub(super) no_cache: bool,
    pub(super) cache_dir: PathBuf,
    pub(super) snapshots: &'a Snapshots,
    pub(super) resolver: &'a dyn BaseResolver,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) runtime: &'a std::sync::OnceLock<Result<Runtime, String>>,
    pub(super) runtime_dir: PathBuf,
    pub(super) label: String,
    pub(super) total_steps: usize,
    pub(super) step: usize,
    pub(super) counts: StepCounts,
    /// Built stages, by index.
    pub(super) stages: BTreeMap<usize, StageState>,
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

    /// Builds stage `index` (and, first, what it depends on) and returns its state.
    pub fn build_stage(&mut self, index: usize) -> Result<StageState, BuildError> {
        if let Some(s) = self.stages.get(&index) {
            return Ok(s.clone());
        }
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
            state = self.instruction(state, ins, index)?;
        }
        self.stages.insert(index, state.clone());
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
            }
        } else {
            let reference = Reference::parse(base).map_err(|e| BuildError::Input {
                at: at.clone(),
                message: e.to_string(),
            })?;
            self.image_state(&reference, base_platform, &at)?
        };
        // The image is for the target platform whatever FROM --platform said (BuildKit's
        // finalizeResultImage).
        state.config.architecture = self.platform.architecture.clone();
        state.config.os = self.platform.os.clone();
        state.config.variant = self.platform.variant.clone();
        state.key = sha(&[state.key.as_bytes(), self.platform.to_string().as_bytes()]);
        Ok(state)
    }

    fn progress_step(&mut self, text: &str, cached: Option<bool>) -> String {
        self.step += 1;
        let id = format!("{}-{}", self.label, self.step);
        let label = format!(
            "[{} {}/{}] {}",
            self.label,
            self.step,
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
        let cfg = s.config.config.get_or_insert_with(Default::default);
        let mut empty_layer = true;
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
                        .or_else(|| meta.get(&name).cloned());
                    s.args.insert(name, value);
                }
                self.progress_step(&ins.source, Some(false));
                s.key = sha(&[key.as_bytes(), format!("{:?}", s.args).as_bytes()]);
                return Ok(s);
            }
            Command::Env(kvs) => {
                let list = cfg.env.get_or_insert_with(Vec::new);
                for kv in kvs {
                    set_env(list, &kv.key.value, &kv.value.value);
                }
            }
            Command::Label(kvs) => {
                let labels = cfg.labels.get_or_insert_with(BTreeMap::new);
                for kv in kvs {
                    labels.insert(kv.key.value.clone(), kv.value.value.clone());
                }
            }
            Command::Maintainer(w) => s.config.author = Some(w.value.clone()),
            Command::User(w) => cfg.user = Some(w.value.clone()),
            Command::Volume(v) => {
                let vols = cfg.volumes.get_or_insert_with(BTreeMap::new);
                for p in v {
                    if p.value.is_empty() {
                        return Err(BuildError::Input {
                            at: self.loc(p.pos),
                            message: "VOLUME specified can not be an empty string".into(),
                        });
                    }
                    vols.insert(p.value.clone(), serde_json::json!({}));
                }
            }
            Command::Expose(ports) => {
                let map = cfg.exposed_ports.get_or_insert_with(BTreeMap::new);
                for p in ports {
                    for key in expose_keys(&p.value).map_err(|message| BuildError::Input {
                        at: self.loc(p.pos),
                        message,
                    })? {
                        map.insert(key, serde_json::json!({}));
                    }
                }
            }
            Command::Cmd(c) => {
                let shell = cfg.shell.clone();
                cfg.cmd = Some(command_argv(c, shell.as_deref()));
                cfg.args_escaped = Some(true);
                s.cmd_set = true;
            }
            Command::Entrypoint(c) => {
                let shell = cfg.shell.clone();
                cfg.entrypoint = Some(command_argv(c, shell.as_deref()));
                if !s.cmd_set {
                    cfg.cmd = None;
                }
            }
            Command::Shell(sh) => cfg.shell = Some(sh.clone()),
            Command::Healthcheck(h) => {
                cfg.healthcheck = Some(match h {
                    Healthcheck::None => OciHealthcheck {
                        test: Some(vec!["NONE".into()]),
                        ..Default::default()
                    },
                    Healthcheck::Check(c) => {
                        let ns =
                            |d: std::time::Duration| (!d.is_zero()).then_some(d.as_nanos() as i64);
                        OciHealthcheck {
                            test: Some(c.test.clone()),
                            interval: ns(c.interval),
                            timeout: ns(c.timeout),
                            start_period: ns(c.start_period),
                            start_interval: ns(c.start_interval),
                            retries: (c.retries > 0).then_some(i64::from(c.retries)),
                        }
                    }
                })
            }
            Command::StopSignal(w) => {
                check_signal(&w.value).map_err(|message| BuildError::Input {
                    at: self.loc(w.pos),
                    message,
                })?;
                cfg.stop_signal = Some(w.value.clone());
            }
            Command::OnBuild(o) => cfg
                .on_build
                .get_or_insert_with(Vec::new)
                .push(o.expression.clone()),
            Command::Workdir(w) => {
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
                    if let Some(l) = layer {
                        s.layers.push(l);
                        empty_layer = false;
                    }
                    return Ok(self.finish_step(s, &ins, key, empty_layer));
                }
            }
            Command::Run(_) | Command::Copy(_) | Command::Add(_) => {
                let id = self.progress_step(&ins.source, None);
                let started = std::time::Instant::now();
                let (layer, cached) = match &ins.command {
                    Command::Run(r) => {
                        self.cached_layer(&key, |me| me.run(&s, &ins, r).map(Some))?
                    }
                    Command::Copy(c) => self.copy_step(&s, &ins, &key, c, stage)?,
                    Command::Add(a) => self.add_step(&s, &ins, &key, a)?,
                    _ => unreachable!("matched above"),
                };
                self.finish_progress(&id, cached, started);
                s.layers.extend(layer);
                return Ok(self.finish_step(s, &ins, key, false));
            }
        }
        self.progress_step(&ins.source, Some(false));
        Ok(self.finish_step(s, &ins, key, empty_layer))
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

    /// Serves a layer-producing step from the cache, or runs `make` and records it.
    fn cached_layer(
        &mut self,
        key: &str,
        make: impl FnOnce(&mut Self) -> Result<Option<LayerRef>, BuildError>,
    ) -> Result<(Option<LayerRef>, bool), BuildError> {
        let path = self.cache_dir.join(format!("{key}.json"));
        if !self.no_cache
            && let Ok(bytes) = read_limited(&path, 1 << 20)
            && let Ok(rec) = serde_json::from_slice::<CacheRecord>(&bytes)
            && rec
                .layer
                .as_ref()
                .is_none_or(|l| self.store.has_blob(&l.descriptor.digest))
        {
            self.counts.cached += 1;
            return Ok((rec.layer, true));
        }
        let layer = make(self)?;
        self.counts.run += 1;
        create_dir_all(&self.cache_dir)?;
        let rec = CacheRecord {
            layer: layer.clone(),
        };
        atomic_write(&path, &serde_json::to_vec(&rec).expect("records serialise"))?;
        Ok((layer, false))
    }

    /// A view of a state's file system (for USER and --chown names, WORKDIR, COPY targets).
    fn view(&self, s: &StageState) -> Result<FsView, BuildError> {
        let layers = s
            .layers
            .iter()
            .map(|l| LayerSource {
                path: self.store.blob_path(&l.descriptor.digest),
                compression: Compression::of_media_type(&l.descriptor.media_type)
                    .unwrap_or(Compression::Gzip),
            })
            .collect();
        Ok(FsView::from_layers(layers)?)
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
            .get_or_init(|| Runtime::detect(&self.runtime_dir).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| BuildError::Runtime(e.clone()))
    }

    fn run(&self, s: &StageState, ins: &Instruction, r: &Run) -> Result<LayerRef, BuildError> {
        // Refused rather than ignored: without the mount a cache dir would land in the layer and
        // a secret would be missing, silently.
        let unsupported = [
            (!r.mounts.is_empty(), "--mount"),
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
        spec.platform = self.platform.clone();
        spec.network = match r.network.as_ref().map(|w| w.value.as_str()) {
            Some("none") => Network::None,
            _ => Network::Host,
        };
        let runtime = self.runtime()?;
        let lowers = self.snapshots.lowerdirs(self.store, &s.layers)?;
        let (upper, work) = self.snapshots.scratch()?;
        let label = self.label.clone();
        let reporter = self.reporter;
        let mut out = |line: &str| reporter.event(Event::note(format!("[{label}] {line}")));
        let outcome = run::execute(runtime, &lowers, &upper, &work, &spec, &mut out)?;
        if outcome.status != 0 {
            let _ = fs::remove_dir_all(upper.parent().unwrap_or(&upper));
            return Err(BuildError::RunFailed {
                at: self.loc(ins.span.start),
                command: ins.source.clone(),
                status: outcome.status,
                tail: outcome.output_tail,
            });
        }
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

    fn copy_step(
        &mut self,
        s: &StageState,
        ins: &Instruction,
        key: &str,
        c: &Copy,
        stage: usize,
    ) -> Result<(Option<LayerRef>, bool), BuildError> {
        let at = self.loc(ins.span.start);
        if c.parents {
            return Err(BuildError::Input {
                at,
                message: "COPY --parents is not supported by dts; copy each directory explicitly"
                    .into(),
            });
        }
        let exclude = if c.excludes.is_empty() {
            None
        } else {
            let patterns: Vec<&str> = c.excludes.iter().map(|w| w.value.as_str()).collect();
            Some(DockerIgnore::new(&patterns).map_err(|e| BuildError::Input {
                at: at.clone(),
                message: format!("COPY --exclude: {e}"),
            })?)
        };
        let sources = match &c.from {
            Some(_) if exclude.is_some() => {
                return Err(BuildError::Input {
                    at,
                    message: "COPY --exclude with --from is not supported by dts".into(),
                });
            }
            Some(from) => {
                let src_state = self.copy_from_state(&from.value, stage, &at)?;
                let view = self.view(&src_state)?;
                CopySources::View {
                    view,
                    paths: c.sources.iter().map(|w| w.value.clone()).collect(),
                    key: src_state.key,
                }
            }
            None => {
                let mut out = Vec::new();
                for w in &c.sources {
                    let found = self.ctx.resolve(&w.value).map_err(|e| BuildError::Input {
                        at: self.loc(w.pos),
                        message: format!("COPY source {e}"),
                    })?;
                    out.extend(found);
                }
                if let Some(ex) = &exclude {
                    for src in &mut out {
                        exclude_entries(src, ex);
                    }
                    out.retain(|src| !src.entries.is_empty());
                }
                CopySources::Context(out)
            }
        };
        let inline = heredoc_files(&c.inline);
        let content_key = match &sources {
            CopySources::Context(v) => content_hash(v).map_err(|e| BuildError::Input {
                at: at.clone(),
                message: e.to_string(),
            })?,
            CopySources::View { key, paths, .. } => {
                sha(&[key.as_bytes(), paths.join("\0").as_bytes()])
            }
        };
        let key = sha(&[
            key.as_bytes(),
            content_key.as_bytes(),
            inline_key(&inline).as_bytes(),
        ]);
        let spec = CopySpec::new(
            &c.dest,
            c.chown.as_ref(),
            c.chmod.as_ref(),
            &c.sources,
            c.inline.len(),
            at,
        );
        self.cached_layer(&key, |me| {
            me.copy_layer(s, &spec, &sources, &inline).map(Some)
        })
    }

    fn copy_from_state(
        &mut self,
        from: &str,
        stage: usize,
        at: &Location,
    ) -> Result<StageState, BuildError> {
        if let Some((i, _)) = self.df.stage(from) {
            if i >= stage {
                return Err(BuildError::Input {
                    at: at.clone(),
                    message: format!("COPY --from={from} refers to this or a later stage"),
                });
            }
            return self.build_stage(i);
        }
        if let Ok(i) = from.parse::<usize>()
            && i < stage
        {
            return self.build_stage(i);
        }
        let reference = Reference::parse(from).map_err(|e| BuildError::Input {
            at: at.clone(),
            message: format!("COPY --from: {e}"),
        })?;
        let platform = self.platform.clone();
        self.image_state(&reference, &platform, at)
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
        })
    }

    fn copy_layer(
        &self,
        s: &StageState,
        spec: &CopySpec,
        sources: &CopySources,
        inline: &[InlineFile],
    ) -> Result<LayerRef, BuildError> {
        let view = self.view(s)?;
        let dest_is_dir = spec.dest.ends_with('/') || spec.dest == "." || spec.dest.ends_with("/.");
        let dest = dest_path(s, &spec.dest);
        if spec.multiple && !dest_is_dir {
            return Err(BuildError::Input {
                at: spec.at.clone(),
                message: "when using COPY with more than one source file, the destination must be a directory and end with a /".into(),
            });
        }
        let owner = match &spec.chown {
            Some(u) => Some(
                resolve_owner(&view, u).map_err(|message| BuildError::Input {
                    at: spec.at.clone(),
                    message,
                })?,
            ),
            None => None,
        };
        let chmod = match &spec.chmod {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| BuildError::Input {
                        at: spec.at.clone(),
                        message: format!(
                            "invalid --chmod `{m}`: an octal mode up to 7777 is supported"
                        ),
                    })?,
            ),
            None => None,
        };
        let dest_existing_dir = view
            .resolve(&dest, true)
            .ok()
            .and_then(|p| view.get(&p).cloned())
            .is_some_and(|n| n.kind == Kind::Dir);
        let mut entries: BTreeMap<String, Planned> = BTreeMap::new();
        let target_for = |name: &str, is_dir_source: bool| -> String {
            if is_dir_source {
                dest.clone()
            } else if dest_is_dir || dest_existing_dir {
                format!("{dest}/{name}").trim_start_matches('/').to_string()
            } else {
                dest.clone()
            }
        };
        let dir_owner = owner.unwrap_or((0, 0));
        let epoch = self.epoch;
        let add_file_parents = |entries: &mut BTreeMap<String, Planned>, target: &str| {
            add_parents(
                &view, entries, target, epoch, dir_owner,
                // Docker's MkdirAll: created parents are 0755 whatever --chmod says.
                0o755,
            );
        };
        // The directory a directory source lands in is made the same way: 0755, owned by
        // --chown or root; neither --chmod nor the source directory's own metadata apply.
        let made_dir = EntryMeta {
            mode: 0o755,
            uid: dir_owner.0,
            gid: dir_owner.1,
            mtime: epoch.unwrap_or(0),
            capability: None,
        };
        for f in inline {
            let target = target_for(&f.name, false);
            add_file_parents(&mut entries, &target);
            entries.insert(
                target,
                Planned {
                    meta: EntryMeta {
                        mode: chmod.unwrap_or(f.mode),
                        uid: dir_owner.0,
                        gid: dir_owner.1,
                        mtime: f.mtime.or(epoch).unwrap_or(0),
                        capability: None,
                    },
                    what: What::Bytes(f.bytes.clone()),
                    link: None,
                },
            );
        }
        match sources {
            CopySources::Context(list) => {
                for src in list {
                    let base = Path::new(&src.path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let root = target_for(&base, src.is_dir);
                    add_file_parents(&mut entries, &root);
                    for e in &src.entries {
                        let target = if e.rel.is_empty() {
                            root.clone()
                        } else {
                            format!("{root}/{}", e.rel)
                                .trim_start_matches('/')
                                .to_string()
                        };
                        if target.is_empty() {
                            continue;
                        }
                        let (uid, gid) = owner.unwrap_or((0, 0));
                        let mode = chmod.unwrap_or(e.mode);
                        let meta = if e.rel.is_empty() && src.is_dir {
                            made_dir.clone()
                        } else {
                            EntryMeta {
                                mode,
                                uid,
                                gid,
                                mtime: e.mtime,
                                capability: None,
                            }
                        };
                        let what = match &e.kind {
                            EntryKind::Dir => What::Dir,
                            EntryKind::File => What::HostFile(e.host.clone(), e.size),
                            EntryKind::Symlink(t) => What::Symlink(t.clone()),
                        };
                        // A copied directory over an existing one keeps the existing metadata.
                        if e.rel.is_empty() && src.is_dir && view.exists(&target) {
                            continue;
                        }
                        let link = e.inode.map(|(dev, ino)| format!("inode:{dev}:{ino}"));
                        entries.insert(target, Planned { meta, what, link });
                    }
                }
            }
            CopySources::View {
                view: from, paths, ..
            } => {
                let mut by_layer: BTreeMap<usize, Vec<(usize, String)>> = BTreeMap::new();
                let mut planned: Vec<(String, Planned)> = Vec::new();
                for p in paths {
                    let resolved = from.resolve(p, true).map_err(|e| BuildError::Input {
                        at: spec.at.clone(),
                        message: e.to_string(),
                    })?;
                    let Some(node) = from.get(&resolved).cloned() else {
                        return Err(BuildError::Input {
                            at: spec.at.clone(),
                            message: format!("COPY --from source `{p}` not found"),
                        });
                    };
                    let is_dir = node.kind == Kind::Dir;
                    let base = Path::new(&resolved)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let root = target_for(&base, is_dir);
                    add_file_parents(&mut entries, &root);
                    for (path, n) in from.subtree(&resolved) {
                        let rel = path[resolved.len()..].trim_start_matches('/');
                        let target = if rel.is_empty() {
                            root.clone()
                        } else {
                            format!("{root}/{rel}").trim_start_matches('/').to_string()
                        };
                        if target.is_empty() || (rel.is_empty() && is_dir && view.exists(&target)) {
                            continue;
                        }
                        let (uid, gid) = owner.unwrap_or((n.uid, n.gid));
                        let meta = if rel.is_empty() && is_dir {
                            made_dir.clone()
                        } else {
                            EntryMeta {
                                mode: chmod.unwrap_or(n.mode),
                                uid,
                                gid,
                                mtime: n.mtime as i64,
                                capability: n
                                    .xattrs
                                    .iter()
                                    .find(|(k, _)| k == "security.capability")
                                    .map(|(_, v)| v.clone()),
                            }
                        };
                        // Hard links in the source image share one (layer, entry) in the view.
                        let link = match &n.kind {
                            Kind::File { layer, entry } => Some(format!("entry:{layer}:{entry}")),
                            _ => None,
                        };
                        let what = match &n.kind {
                            Kind::Dir => What::Dir,
                            Kind::Symlink(t) => What::Symlink(t.clone()),
                            Kind::File { layer, entry } => {
                                by_layer
                                    .entry(*layer)
                                    .or_default()
                                    .push((*entry, target.clone()));
                                What::Pending
                            }
                            Kind::Special(_) => continue,
                        };
                        planned.push((target, Planned { meta, what, link }));
                    }
                }
                // Read the files' content: one pass per source layer.
                let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for (layer, wanted) in by_layer {
                    let idx: Vec<usize> = wanted.iter().map(|(e, _)| *e).collect();
                    let mut got = from.read_entries(layer, &idx)?;
                    for (e, target) in wanted {
                        contents.insert(target, got.remove(&e).unwrap_or_default());
                    }
                }
                for (target, mut p) in planned {
                    if let What::Pending = p.what {
                        p.what = What::Bytes(contents.remove(&target).unwrap_or_default());
                    }
                    entries.insert(target, p);
                }
            }
        }
        self.new_layer(|b| write_entries(b, &entries))
    }

    fn add_step(
        &mut self,
        s: &StageState,
        ins: &Instruction,
        key: &str,
        a: &Add,
    ) -> Result<(Option<LayerRef>, bool), BuildError> {
        let at = self.loc(ins.span.start);
        let mut local = Vec::new();
        let mut inline = heredoc_files(&a.inline);
        for w in &a.sources {
            let v = &w.value;
            if v.starts_with("git@") || v.ends_with(".git") || v.contains(".git#") {
                return Err(BuildError::Input {
                    at: self.loc(w.pos),
                    message: format!(
                        "ADD from a git repository (`{v}`) is not supported; clone it in the context"
                    ),
                });
            }
            if v.starts_with("http://") || v.starts_with("https://") {
                let checksum = a.checksum.as_ref().map(|c| c.value.as_str());
                inline.push(fetch_url(v, checksum).map_err(|reason| BuildError::Fetch {
                    at: self.loc(w.pos),
                    url: v.clone(),
                    reason,
                })?);
                continue;
            }
            if v.contains("://") {
                return Err(BuildError::Input {
                    at: self.loc(w.pos),
                    message: format!("ADD source `{v}`: only http and https URLs are supported"),
                });
            }
            let found = self.ctx.resolve(&w.value).map_err(|e| BuildError::Input {
                at: self.loc(w.pos),
                message: format!("ADD source {e}"),
            })?;
            local.extend(found);
        }
        // Local tar archives (detected by content) are extracted; other files are copied.
        let mut archives = Vec::new();
        let mut plain = Vec::new();
        for src in local {
            if !src.is_dir
                && a.unpack != Some(false)
                && is_tar_archive(&self.ctx.root().join(&src.path))
            {
                archives.push(src);
            } else {
                plain.push(src);
            }
        }
        let content_key = content_hash(&archives)
            .and_then(|a| content_hash(&plain).map(|p| format!("{a}{p}")))
            .map_err(|e| BuildError::Input {
                at: at.clone(),
                message: e.to_string(),
            })?;
        let key = sha(&[
            key.as_bytes(),
            content_key.as_bytes(),
            inline_key(&inline).as_bytes(),
        ]);
        let spec = CopySpec::new(
            &a.dest,
            a.chown.as_ref(),
            a.chmod.as_ref(),
            &a.sources,
            a.inline.len(),
            at.clone(),
        );
        self.cached_layer(&key, |me| {
            if archives.is_empty() {
                return me
                    .copy_layer(s, &spec, &CopySources::Context(plain), &inline)
                    .map(Some);
            }
            me.extract_layer(s, &spec, &archives, plain, &inline)
                .map(Some)
        })
    }

    /// ADD of local archives: their entries land under the destination directory, together
    /// with any plain sources of the same instruction.
    fn extract_layer(
        &self,
        s: &StageState,
        spec: &CopySpec,
        archives: &[Source],
        plain: Vec<Source>,
        inline: &[InlineFile],
    ) -> Result<LayerRef, BuildError> {
        // Materialise the plain part as a COPY layer first, then merge the archives' entries.
        let view = self.view(s)?;
        let dest = dest_path(s, &spec.dest);
        let mut entries: BTreeMap<String, Planned> = BTreeMap::new();
        add_parents(
            &view,
            &mut entries,
            &format!("{dest}/x"),
            self.epoch,
            (0, 0),
            0o755,
        );
        for src in archives {
            let host = self.ctx.root().join(&src.path);
            let f = fs::File::open(&host).at("open", &host)?;
            let mut head = [0u8; 4];
            let n = fs::File::open(&host)
                .at("open", &host)?
                .read(&mut head)
                .at("read", &host)?;
            let r = Compression::sniff(&head[..n])
                .decoder(BufReader::new(f))
                .at("decompress", &host)?;
            let mut ar = tar::Archive::new(r);
            for e in ar.entries().at("read archive", &host)? {
                let mut e = e.at("read archive", &host)?;
                let name = clean(&e.path().at("read archive", &host)?.to_string_lossy());
                if name.is_empty() {
                    continue;
                }
                let target = clean(&format!("{dest}/{name}"));
                if e.header().entry_type() == tar::EntryType::Link {
                    // A hard link to an earlier entry of the archive stays a hard link.
                    let linked = e
                        .link_name()
                        .at("read archive", &host)?
                        .map(|l| clean(&format!("{dest}/{}", l.to_string_lossy())));
                    if let Some(first) = linked.filter(|l| entries.contains_key(l)) {
                        let leader = entries.get_mut(&first).expect("checked");
                        leader.link = Some(first.clone());
                        let twin = leader.clone();
                        entries.insert(target, twin);
                    }
                    continue;
                }
                let Some(planned) = planned_from_tar(&mut e, &host)? else {
                    continue;
                };
                add_parents(&view, &mut entries, &target, self.epoch, (0, 0), 0o755);
                entries.insert(target, planned);
            }
        }
        if !plain.is_empty() || !inline.is_empty() {
            // Plain sources next to archives: copy them the COPY way into the same layer.
            let copy = self.copy_layer(s, spec, &CopySources::Context(plain), inline)?;
            let blob = self.store.blob_path(&copy.descriptor.digest);
            let f = self.store.open_blob(&copy.descriptor.digest)?;
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
            for e in ar.entries().at("read layer", &blob)? {
                let mut e = e.at("read layer", &blob)?;
                let name = clean(&e.path().at("read layer", &blob)?.to_string_lossy());
                if let Some(planned) = planned_from_tar(&mut e, &blob)? {
                    entries.insert(name, planned);
                }
            }
        }
        self.new_layer(|b| write_entries(b, &entries))
    }
}

/// A file COPY/ADD writes from memory: a heredoc body or a downloaded URL.
struct InlineFile {
    name: String,
    bytes: Vec<u8>,
    /// Mode when `--chmod` does not say (0644 for heredocs, 0600 for URLs, as BuildKit).
    mode: u32,
    /// Modification time (the epoch for heredocs, `Last-Modified` for URLs).
    mtime: Option<i64>,
}

/// What COPY copies from.
enum CopySources {
    Context(Vec<Source>),
    View {
        view: FsView,
        paths: Vec<String>,
        key: String,
    },
}

struct CopySpec {
    dest: String,
    chown: Option<String>,
    chmod: Option<String>,
    multiple: bool,
    at: Location,
}

/// One entry of a layer being assembled.
#[derive(Clone)]
struct Planned {
    meta: EntryMeta,
    what: What,
    /// Entries with the same key are one file: the first in canonical order carries the
    /// content, the others are written as hard links to it (Docker keeps hard links a COPY
    /// or an ADDed tar has).
    link: Option<String>,
}

#[derive(Clone)]
enum What {
    Dir,
    Symlink(String),
    HostFile(PathBuf, u64),
    Bytes(Vec<u8>),
    Pending,
}

/// Drops what `--exclude` patterns match, relative to the source (a file source by its name);
/// a directory's exclusion takes its contents with it.
fn exclude_entries(src: &mut Source, ex: &DockerIgnore) {
    let name = Path::new(&src.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    src.entries.retain(|e| {
        let rel = if e.rel.is_empty() { &name } else { &e.rel };
        !(ex.matches(rel) && !(e.rel.is_empty() && src.is_dir))
    });
}

/// A COPY/ADD destination as a clean image path: absolute, or relative to WORKDIR.
fn dest_path(s: &StageState, dest: &str) -> String {
    if dest.starts_with('/') {
        return clean(dest);
    }
    let wd = s
        .config
        .config
        .as_ref()
        .and_then(|c| c.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    clean(&format!("{wd}/{dest}"))
}

/// Heredoc sources as files (mode 0644, the build's time).
fn heredoc_files(inline: &[super::dockerfile::InlineSource]) -> Vec<InlineFile> {
    inline
        .iter()
        .map(|i| InlineFile {
            name: i.name.clone(),
            bytes: i.content.clone().into_bytes(),
            mode: 0o644,
            mtime: None,
        })
        .collect()
}

impl CopySpec {
    fn new(
        dest: &super::dockerfile::Word,
        chown: Option<&super::dockerfile::Word>,
        chmod: Option<&super::dockerfile::Word>,
        sources: &[super::dockerfile::Word],
        inline: usize,
        at: Location,
    ) -> CopySpec {
        CopySpec {
            dest: dest.value.clone(),
            chown: chown.map(|w| w.value.clone()),
            chmod: chmod.map(|w| w.value.clone()),
            multiple: sources.len() + inline > 1
                || sources
                    .iter()
                    .any(|w| super::context::has_wildcard(&w.value)),
            at,
        }
    }
}

/// One tar entry as a planned layer entry (content read into memory).
fn planned_from_tar<R: Read>(
    e: &mut tar::Entry<'_, R>,
    archive: &Path,
) -> Result<Option<Planned>, BuildError> {
    let h = e.header();
    let meta = EntryMeta {
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h.mtime().unwrap_or(0) as i64,
        capability: None,
    };
    let what = match h.entry_type() {
        tar::EntryType::Directory => What::Dir,
        tar::EntryType::Symlink => What::Symlink(
            e.link_name()
                .at("read archive", archive)?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).at("read archive", archive)?;
            What::Bytes(buf)
        }
        _ => return Ok(None),
    };
    Ok(Some(Planned {
        meta,
        what,
        link: None,
    }))
}

/// What identifies inline files in a cache key: names, modes and content (not URL mtimes).
fn inline_key(files: &[InlineFile]) -> String {
    let mut parts: Vec<u8> = Vec::new();
    for f in files {
        parts.extend(f.name.as_bytes());
        parts.push(0);
        parts.extend(format!("{:o}", f.mode).as_bytes());
        parts.push(0);
        parts.extend(Digest::of(&f.bytes).to_string().as_bytes());
        parts.push(0);
    }
    sha(&[&parts])
}

/// Downloads an ADD URL: verified against `--checksum` when given, named after the last path
/// segment (`__unnamed__` when there is none), mode 0600, mtime from `Last-Modified`.
fn fetch_url(url: &str, checksum: Option<&str>) -> Result<InlineFile, String> {
    let want = checksum
        .map(|c| c.parse::<Digest>().map_err(|e| format!("--checksum: {e}")))
        .transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (bytes, last_modified) = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(format!("dts/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("the server answered {}", resp.status()));
        }
        let lm = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((body.to_vec(), lm))
    })?;
    let got = Digest::of(&bytes);
    if let Some(want) = want
        && got != want
    {
        return Err(format!(
            "checksum mismatch: expected {want}, downloaded {got}"
        ));
    }
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .splitn(4, '/')
        .nth(3)
        .unwrap_or("");
    let name = path
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("__unnamed__")
        .to_string();
    Ok(InlineFile {
        name,
        bytes,
        mode: 0o600,
        mtime: last_modified,
    })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 IMF-fixdate) → seconds since the epoch.
fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [hh, mm, ss] = t.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Adds the parent directories of `target` that a layer must carry: existing ones with their
/// existing metadata (so the layer does not change them), missing ones as new directories.
fn add_parents(
    view: &FsView,
    entries: &mut BTreeMap<String, Planned>,
    target: &str,
    epoch: Option<i64>,
    owner: (u64, u64),
    mode: u32,
) {
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    let mut path = String::new();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        if entries.contains_key(&path) {
            continue;
        }
        let existing = view
            .resolve(&path, true)
            .ok()
            .and_then(|p| view.get(&p).cloned())
            .filter(|n| n.kind == Kind::Dir);
        let meta = match existing {
            Some(n) => EntryMeta {
                mode: n.mode,
                uid: n.uid,
                gid: n.gid,
                mtime: n.mtime as i64,
                capability: None,
            },
            None => EntryMeta {
                mode,
                uid: owner.0,
                gid: owner.1,
                mtime: epoch.unwrap_or(0),
                capability: None,
            },
        };
        entries.insert(
            path.clone(),
            Planned {
                meta,
                what: What::Dir,
                link: None,
            },
        );
    }
}

fn write_entries(
    b: &mut LayerBuilder<&mut crate::store::BlobWriter>,
    entries: &BTreeMap<String, Planned>,
) -> Result<(), BuildError> {
    let mut order: Vec<&String> = entries.keys().collect();
    order.sort_by(|a, b| canonical_cmp(Path::new(a), Path::new(b)));
    let mut leaders: BTreeMap<&str, &str> = BTreeMap::new();
    for path in &order {
        if let Some(key) = &entries[*path].link {
            leaders.entry(key.as_str()).or_insert(path.as_str());
        }
    }
    for path in order {
        let p = &entries[path];
        if let Some(leader) = p.link.as_deref().and_then(|k| leaders.get(k))
            && *leader != path.as_str()
        {
            b.add_hardlink(Path::new(path.as_str()), &p.meta, Path::new(leader))?;
            continue;
        }
        let path = Path::new(path.as_str());
        match &p.what {
            What::Dir => b.add_dir(path, &p.meta)?,
            What::Symlink(t) => b.add_symlink(path, &p.meta, Path::new(t))?,
            What::HostFile(host, size) => {
                let f = fs::File::open(host).at("open", host)?;
                b.add_file(path, &p.meta, *size, BufReader::new(f))?;
            }
            What::Bytes(bytes) => b.add_file(path, &p.meta, bytes.len() as u64, &bytes[..])?,
            // Filled in before writing; a file whose content was not found is left out.
            What::Pending => {}
        }
    }
    Ok(())
}

/// `user[:group]` → uid/gid, names looked up in the image's `/etc/passwd` and `/etc/group`.
fn resolve_owner(view: &FsView, spec: &str) -> Result<(u64, u64), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Option<(u64, u64)> {
        let text = view.read(file).ok()?;
        String::from_utf8_lossy(&text).lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                let id = f.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
                let gid = f.get(3).and_then(|v| v.parse().ok()).unwrap_or(id);
                (id, gid)
            })
        })
    };
    let (uid, primary) = match user.parse::<u64>() {
        Ok(n) => (n, n),
        Err(_) => lookup("/etc/passwd", user, 2)
            .ok_or_else(|| format!("unable to find user `{user}` in the image's /etc/passwd"))?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u64>() {
            Ok(n) => n,
            Err(_) => lookup("/etc/group", g, 2)
                .map(|(id, _)| id)
                .ok_or_else(|| format!("unable to find group `{g}` in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// Shell form → SHELL + [cmd]; exec form as is.
fn command_argv(c: &CommandLine, shell: Option<&[String]>) -> Vec<String> {
    match c {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(cmd) => {
            let mut v: Vec<String> = shell
                .map(<[String]>::to_vec)
                .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
            v.push(cmd.clone());
            v
        }
    }
}

/// BuildKit's history text: `RUN /bin/sh -c cmd` (with `|N K=V…` for declared args),
/// `COPY src dest # buildkit`, or the instruction as written.
fn history_text(ins: &Instruction, s: &StageState) -> String {
    match &ins.command {
        Command::Run(r) => {
            let shell = s.config.config.as_ref().and_then(|c| c.shell.clone());
            let argv = command_argv(&r.command, shell.as_deref());
            let args: Vec<String> = s
                .args
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                .collect();
            if args.is_empty() {
                format!("RUN {}", argv.join(" "))
            } else {
                format!("RUN |{} {} {}", args.len(), args.join(" "), argv.join(" "))
            }
        }
        Command::Copy(_) | Command::Add(_) => format!("{} # buildkit", ins.source),
        _ => ins.source.clone(),
    }
}

/// EXPOSE words → `port/proto` keys (ranges expanded, proto lower-cased, default tcp).
fn expose_keys(spec: &str) -> Result<Vec<String>, String> {
    let bad = || format!("invalid port `{spec}` for EXPOSE");
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    // `ip:host:container` keeps the container port (BuildKit accepts it with a lint warning).
    let ports = ports.rsplit(':').next().unwrap_or(ports);
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a, b),
        None => (ports, ports),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// STOPSIGNAL: `SIGNAME`, `NAME` or a number.
fn check_signal(s: &str) -> Result<(), String> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if s.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n)) {
        return Ok(());
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    if NAMES.contains(&name) || name.starts_with("RTMIN") || name.starts_with("RTMAX") {
        Ok(())
    } else {
        Err(format!("invalid signal `{s}` for STOPSIGNAL"))
    }
}

fn is_tar_archive(path: &Path) -> bool {
    let Ok(f) = fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 4];
    let mut f2 = match fs::File::open(path) {
        Ok(f) => f,
        Err(_) => return false,
    };
    let n = f2.read(&mut head).unwrap_or(0);
    let Ok(r) = Compression::sniff(&head[..n]).decoder(BufReader::new(f)) else {
        return false;
    };
    let mut block = vec![0u8; 512];
    let mut r = r;
    let mut got = 0;
    while got < 512 {
        match r.read(&mut block[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => got += k,
        }
    }
    // A ustar/GNU header has "ustar" at offset 257 and a valid checksum.
    &block[257..262] == b"ustar" && tar_checksum_ok(&block)
}

fn tar_checksum_ok(block: &[u8]) -> bool {
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    stored == Some(sum)
}

#[cfg(test)]
mod tests {
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
