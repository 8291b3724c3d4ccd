//! Releases on the robot: one stack's services applied as release N — staged, switched,
//! probation, committed — with automatic rollback to N-1 (docs/architecture.md, "Releases").
//!
//! [`Releases`] is owned by `dt-agent daemon`; the control socket's `deploy`, `rollback`,
//! `history` and `release` requests reach it. One switch runs at a time: a second deploy (or
//! rollback) waits for the first to finish — commit or roll back — and is then applied on top
//! of whatever the first left running; the two are never mixed.
//!
//! **A deploy** ([`Releases::apply`]):
//! 1. a spec equal to the current committed release's, with all its containers running, is a
//!    no-op (`unchanged`, no container touched);
//! 2. *staged*: every image must be in the store with its snapshot (nothing is fetched here);
//!    the record `releases/<N>.json` is written and N's images become GC roots;
//! 3. *switching*: containers of services whose [`ServiceSpec`] is unchanged and that run are
//!    kept running (a change to one service restarts only that one); the others of the old
//!    release are stopped — highest stage first, a stage's containers in parallel, each with
//!    its own stop timeout — and removed; then N's new containers are created (labelled
//!    `release = N`, `service = key`) and started in stage order, each stage running before the
//!    next starts;
//! 4. *probation* ([`probation`]): health checks, or running for `probation`;
//! 5. *committed*: `releases/current` = N; the roots are N's and N-1's images.
//!
//! A failure in 3 or 4 rolls back by itself to N-1: N's new containers are stopped (1 s grace,
//! in parallel) and N-1's missing ones recreated from its recorded spec — its images are still
//! GC roots, so nothing is transferred — and N is recorded `rolled-back` with the reason. With
//! no N-1, N's containers are removed and N is `failed`.
//!
//! A kept container keeps the release label it was created with: `ps` shows the release that
//! started it.
//!
//! **A rollback** ([`Releases::rollback`]) switches to N-1 (or `--to M`, any release that was
//! once committed) without a new release number: the target becomes current and `committed`
//! again, the release left is recorded `rolled-back` with the reason "rolled back by hand", and
//! only a quick running check replaces probation. `history` shows both.
//!
//! **Crashes.** Each switch is journaled in `releases/switch.json` before any container is
//! touched. A daemon that starts and finds one ([`Releases::recover`]) undoes an interrupted
//! deploy — back to N-1, N recorded `rolled-back` ("the agent stopped during probation") — and
//! finishes an interrupted rollback. A release is only ever `committed` by passing probation.

mod handover;
mod locks;
pub mod probation;
pub mod record;
mod retain;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::agent::container::{ContainerError, ContainerInfo, Manager};
use crate::agent::store::{AgentStore, AgentStoreError, snapshot_id};
use crate::oci::Digest;
use crate::util::fs::{PathError, atomic_write};
use crate::util::time::{now_secs, rfc3339};

pub use crate::api::release::{DeployOutcome, ServiceAction, ServiceOutcome};
pub use probation::Failure;
pub use record::{Journal, ReleaseRecord, ReleaseState, SwitchOp, current_release};
pub use spec::{HealthSpec, ReleaseSpec, ServiceSpec};
use spec::{normalize, same_service};

use record::Dir;

/// How long the containers of a release that failed get between SIGTERM and SIGKILL.
const QUICK_STOP: Duration = Duration::from_secs(1);
/// After a rollback's containers start, how long they must keep running.
const SETTLE: Duration = Duration::from_millis(200);

/// Why a release request failed (a release that did not pass probation is not an error: it is
/// a [`DeployOutcome`] in state `rolled-back` or `failed`).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The spec cannot be applied as it is.
    #[error("bad release: {0}")]
    BadSpec(String),
    /// An image of the release is not on this robot.
    #[error(
        "service `{service}`: image {manifest} is not on this robot ({reason}); send it first (`dts duckiebot deploy`) or import it (`dt-agent image import`)"
    )]
    MissingImage {
        /// The service.
        service: String,
        /// Its manifest.
        manifest: Digest,
        /// What is missing.
        reason: String,
    },
    /// A container outside any release has a service's name.
    #[error(
        "a container named `{0}` exists outside a release and a service of this release has that name: remove it first (`dt-agent rm -f {0}`)"
    )]
    Conflict(String),
    /// No release by that number.
    #[error("no release {0} on this robot (see `dt-agent history`)")]
    NoRelease(u64),
    /// There is nothing to roll back to.
    #[error("nothing to roll back to: {0}")]
    NothingToRollBack(String),
    /// The rollback target never passed probation.
    #[error(
        "release {0} never passed probation (it is {1}): roll back to a release that was committed"
    )]
    NotCommitted(u64, ReleaseState),
    /// A rollback's switch failed; the release that ran before it runs again.
    #[error("{0}")]
    Switch(String),
    /// The client went away while the deploy waited for an update lock.
    #[error("deploy abandoned while {0}")]
    Abandoned(String),
    /// A state file is damaged.
    #[error("release state `{}` is damaged: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Containers failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] AgentStoreError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
}

impl ReleaseError {
    /// Whether the request was wrong (exit 2) rather than the robot failing (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ReleaseError::BadSpec(_)
            | ReleaseError::Conflict(_)
            | ReleaseError::NotCommitted(..)
            | ReleaseError::NothingToRollBack(_) => true,
            ReleaseError::Container(c) => c.is_bad_input(),
            _ => false,
        }
    }

    /// Whether something named does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ReleaseError::NoRelease(_) | ReleaseError::MissingImage { .. }
        )
    }
}

/// The robot's releases. One per daemon.
pub struct Releases {
    root: PathBuf,
    dir: Dir,
    manager: Arc<Manager>,
    switch: Mutex<()>,
    /// `robot.yaml`'s `releases.keep` (retain.rs).
    keep: u32,
    retiring: handover::Retiring,
}

impl Releases {
    /// The releases of the agent at `root`, whose containers `manager` runs.
    pub fn new(root: &Path, manager: Arc<Manager>) -> Result<Releases, ReleaseError> {
        Ok(Releases {
            root: root.to_path_buf(),
            dir: Dir::open(root)?,
            manager,
            switch: Mutex::new(()),
            keep: crate::profile::robot::DEFAULT_KEEP_RELEASES,
            retiring: handover::Retiring::default(),
        })
    }

    /// Keeps the images of the `keep` newest committed releases (at least 1) instead of
    /// [`crate::profile::robot::DEFAULT_KEEP_RELEASES`].
    pub fn with_keep(mut self, keep: u32) -> Releases {
        self.keep = keep.max(1);
        self
    }

    /// Every release, oldest first; `current` marks the one that runs.
    pub fn history(&self) -> Result<Vec<ReleaseRecord>, ReleaseError> {
        Ok(self.dir.all()?.into_values().collect())
    }

    /// The release that runs, if any.
    pub fn current(&self) -> Result<Option<ReleaseRecord>, ReleaseError> {
        match self.dir.current()? {
            Some(n) => self.dir.get(n).map(Some),
            None => Ok(None),
        }
    }

    /// Takes the switch lock, waiting for a deploy or rollback in progress.
    fn lock(&self) -> (MutexGuard<'_, ()>, u64) {
        let t = Instant::now();
        let g = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        (g, t.elapsed().as_millis() as u64)
    }

    /// Applies `spec` as a new release (see the module's documentation). A release that fails
    /// its switch or probation is an `Ok` outcome in state `rolled-back` or `failed`; `Err` means
    /// nothing was switched (a bad spec, a missing image, a name taken) or the robot failed.
    pub fn apply(&self, spec: ReleaseSpec) -> Result<DeployOutcome, ReleaseError> {
        self.apply_notify(spec, &mut |_| {})
    }

    /// [`Releases::apply`], calling `on_probation` once every service runs and probation
    /// begins, with an outcome in state `probation`: what a detached deploy answers with
    /// before the release commits or rolls back by itself. It is not called when nothing
    /// changes or the switch fails before probation.
    pub fn apply_notify(
        &self,
        spec: ReleaseSpec,
        on_probation: &mut dyn FnMut(&DeployOutcome),
    ) -> Result<DeployOutcome, ReleaseError> {
        self.apply_with(spec, false, &mut |_| true, on_probation)
    }

    /// [`Releases::apply_notify`] that waits while a container holds its update lock
    /// ([`locks`]) unless `force`; `on_wait` hears why it waits and answers whether the
    /// client still wants the deploy (`false`: it is abandoned, nothing switched).
    pub fn apply_with(
        &self,
        spec: ReleaseSpec,
        force: bool,
        on_wait: &mut dyn FnMut(&str) -> bool,
        on_probation: &mut dyn FnMut(&DeployOutcome),
    ) -> Result<DeployOutcome, ReleaseError> {
        let spec = normalize(spec)?;
        let (_g, waited_ms) = self.lock();
        let records = self.dir.all()?;
        let current = self.dir.current()?;
        let cur = current.and_then(|n| records.get(&n)).cloned();
        if let Some(c) = &cur
            && c.spec == spec
            && self.all_running(&spec)
        {
            return Ok(DeployOutcome {
                release: c.release,
                state: c.state,
                unchanged: true,
                message: format!(
                    "release {} (stack {}) already runs this: nothing to do",
                    c.release, c.stack
                ),
                services: spec
                    .services
                    .iter()
                    .map(|s| ServiceOutcome {
                        name: s.name.to_string(),
                        manifest: s.manifest.clone(),
                        action: ServiceAction::Kept,
                    })
                    .collect(),
                reason: None,
                rolled_back_to: None,
                waited_ms,
            });
        }
        for s in &spec.services {
            if let Ok(info) = self.manager.inspect(&s.name)
                && info.release.is_none()
            {
                return Err(ReleaseError::Conflict(s.name.to_string()));
            }
        }
        self.check_images(&spec)?;
        // Held by the agent until the new containers run.
        let holds = if force {
            Vec::new()
        } else {
            locks::wait(&self.manager, on_wait)?
        };

        // Staged.
        let n = records.keys().next_back().map_or(1, |m| m + 1);
        let mut rec = ReleaseRecord {
            release: n,
            state: ReleaseState::Staged,
            created: rfc3339(now_secs()),
            stack: spec.stack.clone(),
            services: spec.services_map(),
            previous: current,
            committed_at: None,
            finished_at: None,
            reason: None,
            current: false,
            spec: spec.clone(),
        };
        self.dir.save(&rec)?;
        let mut records = records;
        records.insert(n, rec.clone());
        let mut roots = vec![n];
        roots.extend(current);
        roots.extend(cur.as_ref().and_then(|c| c.previous));
        self.write_roots(&records, &roots)?;
        self.dir.begin(&Journal {
            op: SwitchOp::Deploy,
            release: n,
            from: current,
            started: rfc3339(now_secs()),
        })?;

        // Switching, then probation.
        let result = (|| {
            rec.state = ReleaseState::Switching;
            self.save_or_fail(&rec)?;
            let outcomes = self.converge(Some((&spec, n)), &records, false);
            drop(holds);
            let outcomes = outcomes?;
            rec.state = ReleaseState::Probation;
            self.save_or_fail(&rec)?;
            let (started, kept) = counts(&outcomes);
            on_probation(&DeployOutcome {
                release: n,
                state: ReleaseState::Probation,
                unchanged: false,
                message: format!(
                    "release {n} (stack {}) is on probation: {started} service(s) started, {kept} kept running; the robot commits it or rolls it back by itself",
                    spec.stack
                ),
                services: outcomes.clone(),
                reason: None,
                rolled_back_to: None,
                waited_ms,
            });
            probation::watch(&self.manager, &spec)?;
            Ok::<_, Failure>(outcomes)
        })();
        match result {
            Ok(services) => {
                let now = rfc3339(now_secs());
                rec.state = ReleaseState::Committed;
                rec.committed_at = Some(now.clone());
                rec.finished_at = Some(now);
                // `current` first: a reader (history) that sees the record committed must
                // see it current too; a crash between the two leaves it on probation, which
                // recovery undoes.
                self.dir.set_current(Some(n))?;
                self.dir.save(&rec)?;
                self.dir.end()?;
                let mut roots = vec![n];
                roots.extend(current);
                self.retire(&roots)?;
                let (started, kept) = counts(&services);
                Ok(DeployOutcome {
                    release: n,
                    state: ReleaseState::Committed,
                    unchanged: false,
                    message: format!(
                        "release {n} (stack {}) committed: {started} service(s) started, {kept} kept running",
                        spec.stack
                    ),
                    services,
                    reason: None,
                    rolled_back_to: None,
                    waited_ms,
                })
            }
            Err(f) => {
                let mut out = self.undo(rec, f.to_string(), &records)?;
                out.waited_ms = waited_ms;
                Ok(out)
            }
        }
    }

    fn save_or_fail(&self, rec: &ReleaseRecord) -> Result<(), Failure> {
        self.dir.save(rec).map_err(|e| Failure {
            service: String::new(),
            reason: e.to_string(),
        })
    }

    /// Goes back from release `rec` (which failed for `reason`) to its previous release, or
    /// removes its containers when there is none.
    fn undo(
        &self,
        mut rec: ReleaseRecord,
        reason: String,
        records: &BTreeMap<u64, ReleaseRecord>,
    ) -> Result<DeployOutcome, ReleaseError> {
        let n = rec.release;
        let prev = rec.previous.and_then(|p| records.get(&p));
        let (state, message, services, back_to) = match prev {
            Some(p) => {
                let r = self
                    .converge(Some((&p.spec, p.release)), records, true)
                    .and_then(|s| {
                        let names: Vec<String> =
                            p.spec.services.iter().map(|s| s.name.to_string()).collect();
                        probation::quick_check(&self.manager, &names, SETTLE)?;
                        Ok(s)
                    });
                let (services, note) = match r {
                    Ok(s) => (s, String::new()),
                    Err(e) => (
                        Vec::new(),
                        format!("; going back to release {} failed too: {e}", p.release),
                    ),
                };
                rec.reason = Some(format!("{reason}{note}"));
                (
                    ReleaseState::RolledBack,
                    format!(
                        "release {n} rolled back to release {}: {reason}{note}",
                        p.release
                    ),
                    services,
                    Some(p.release),
                )
            }
            None => {
                let note = match self.converge(None, records, true) {
                    Ok(_) => String::new(),
                    Err(e) => format!("; removing its containers failed: {e}"),
                };
                rec.reason = Some(format!("{reason}{note}"));
                (
                    ReleaseState::Failed,
                    format!(
                        "release {n} failed and its containers were removed (no earlier release to go back to): {reason}{note}"
                    ),
                    Vec::new(),
                    None,
                )
            }
        };
        rec.state = state;
        rec.finished_at = Some(rfc3339(now_secs()));
        // As in a commit: `current` before the record says how the release ended.
        self.dir.set_current(back_to)?;
        self.dir.save(&rec)?;
        self.dir.end()?;
        let mut roots: Vec<u64> = back_to.into_iter().collect();
        roots.extend(prev.and_then(|p| p.previous));
        self.retire(&roots)?;
        Ok(DeployOutcome {
            release: n,
            state,
            unchanged: false,
            message,
            services,
            reason: rec.reason,
            rolled_back_to: back_to,
            waited_ms: 0,
        })
    }

    /// Switches back to the previous release of the current one, or to `to`: any release that
    /// was once committed. No new release number; the release left becomes `rolled-back`.
    pub fn rollback(&self, to: Option<u64>) -> Result<DeployOutcome, ReleaseError> {
        let (_g, waited_ms) = self.lock();
        let records = self.dir.all()?;
        let cur = self.dir.current()?.ok_or_else(|| {
            ReleaseError::NothingToRollBack("no release runs on this robot".into())
        })?;
        let cur_rec = records.get(&cur).ok_or(ReleaseError::NoRelease(cur))?;
        let target = to.or(cur_rec.previous).ok_or_else(|| {
            ReleaseError::NothingToRollBack(format!("release {cur} is the first on this robot"))
        })?;
        let t = records
            .get(&target)
            .ok_or(ReleaseError::NoRelease(target))?;
        if target == cur {
            return Ok(DeployOutcome {
                release: cur,
                state: cur_rec.state,
                unchanged: true,
                message: format!("release {cur} is the current release already: nothing to do"),
                services: Vec::new(),
                reason: None,
                rolled_back_to: None,
                waited_ms,
            });
        }
        if t.committed_at.is_none() {
            return Err(ReleaseError::NotCommitted(target, t.state));
        }
        self.check_images(&t.spec)?;
        let mut roots = vec![target, cur];
        roots.extend(t.previous);
        self.write_roots(&records, &roots)?;
        self.dir.begin(&Journal {
            op: SwitchOp::Rollback,
            release: target,
            from: Some(cur),
            started: rfc3339(now_secs()),
        })?;
        let r = self
            .converge(Some((&t.spec, target)), &records, false)
            .and_then(|s| {
                let names: Vec<String> =
                    t.spec.services.iter().map(|s| s.name.to_string()).collect();
                probation::quick_check(&self.manager, &names, SETTLE)?;
                Ok(s)
            });
        match r {
            Ok(services) => {
                self.finish_rollback(&records, target, Some(cur))?;
                Ok(DeployOutcome {
                    release: target,
                    state: ReleaseState::Committed,
                    unchanged: false,
                    message: format!(
                        "release {target} runs again (rolled back from release {cur})"
                    ),
                    services,
                    reason: None,
                    rolled_back_to: Some(target),
                    waited_ms,
                })
            }
            Err(f) => {
                // Back to where we were; an interruption now finishes that instead.
                self.dir.begin(&Journal {
                    op: SwitchOp::Rollback,
                    release: cur,
                    from: None,
                    started: rfc3339(now_secs()),
                })?;
                let restored = self
                    .converge(Some((&cur_rec.spec, cur)), &records, true)
                    .map(|_| format!("release {cur} runs again"))
                    .unwrap_or_else(|e| format!("restoring release {cur} failed too: {e}"));
                self.dir.end()?;
                let mut roots = vec![cur];
                roots.extend(cur_rec.previous);
                self.write_roots(&records, &roots)?;
                Err(ReleaseError::Switch(format!(
                    "rolling back to release {target} failed: {f}; {restored}"
                )))
            }
        }
    }

    /// Records a switch to `target` as done: `from` rolled back by hand, `target` current.
    fn finish_rollback(
        &self,
        records: &BTreeMap<u64, ReleaseRecord>,
        target: u64,
        from: Option<u64>,
    ) -> Result<(), ReleaseError> {
        let now = rfc3339(now_secs());
        if let Some(f) = from.and_then(|f| records.get(&f)) {
            let mut f = f.clone();
            f.state = ReleaseState::RolledBack;
            f.reason = Some(if target < f.release {
                format!("rolled back by hand to release {target}")
            } else {
                format!("replaced by hand with release {target} (`rollback --to`)")
            });
            f.finished_at = Some(now.clone());
            self.dir.save(&f)?;
        }
        let mut t = records
            .get(&target)
            .cloned()
            .ok_or(ReleaseError::NoRelease(target))?;
        if t.state != ReleaseState::Committed {
            t.state = ReleaseState::Committed;
            t.committed_at = Some(now.clone());
        }
        t.finished_at = Some(now);
        self.dir.set_current(Some(target))?;
        self.dir.save(&t)?;
        self.dir.end()?;
        let mut roots = vec![target];
        roots.extend(t.previous);
        self.retire(&roots)?;
        Ok(())
    }

    /// At daemon start: undoes a deploy (or finishes a rollback) that a killed or restarted
    /// agent, or a power loss, interrupted. Returns what it did, for the daemon's log.
    pub fn recover(&self) -> Vec<String> {
        let (_g, _) = self.lock();
        match self.recover_locked() {
            Ok(notes) => notes,
            Err(e) => vec![format!("releases: recovery failed: {e}")],
        }
    }

    fn recover_locked(&self) -> Result<Vec<String>, ReleaseError> {
        let mut notes = Vec::new();
        let records = self.dir.all()?;
        let current = self.dir.current()?;
        match self.dir.journal()? {
            None => {
                // Staged but never switched: no container was touched.
                for r in records.values().filter(|r| r.state.in_progress()) {
                    let mut r = r.clone();
                    r.state = ReleaseState::Failed;
                    r.reason = Some("the agent stopped before its containers were switched".into());
                    r.finished_at = Some(rfc3339(now_secs()));
                    self.dir.save(&r)?;
                    notes.push(format!("release {}: {}", r.release, r.reason.unwrap()));
                }
            }
            Some(j) if j.op == SwitchOp::Deploy => {
                let rec = records
                    .get(&j.release)
                    .cloned()
                    .ok_or(ReleaseError::NoRelease(j.release))?;
                if current == Some(j.release) && rec.state == ReleaseState::Committed {
                    self.dir.end()?;
                } else {
                    let reason = format!(
                        "the agent stopped while it was {} (killed, restarted or power lost), so it was not committed",
                        match rec.state {
                            ReleaseState::Probation => "on probation",
                            _ => "switching containers",
                        }
                    );
                    let out = self.undo(rec, reason, &records)?;
                    notes.push(format!("releases: {}", out.message));
                }
            }
            Some(j) => {
                let t = records
                    .get(&j.release)
                    .ok_or(ReleaseError::NoRelease(j.release))?;
                if let Err(e) = self.converge(Some((&t.spec, j.release)), &records, false) {
                    notes.push(format!(
                        "releases: finishing the rollback to release {}: {e}",
                        j.release
                    ));
                }
                self.finish_rollback(&records, j.release, j.from)?;
                notes.push(format!(
                    "releases: finished the interrupted rollback to release {}",
                    j.release
                ));
            }
        }
        Ok(notes)
    }

    /// Whether every service of `spec` runs in a release container.
    fn all_running(&self, spec: &ReleaseSpec) -> bool {
        spec.services.iter().all(|s| {
            self.manager
                .inspect(&s.name)
                .is_ok_and(|i| i.state == "running" && i.release.is_some())
        })
    }

    /// Every image of `spec` is in the store, with its snapshot.
    fn check_images(&self, spec: &ReleaseSpec) -> Result<(), ReleaseError> {
        let store = AgentStore::open(&self.root)?;
        for s in &spec.services {
            let missing = |reason: String| ReleaseError::MissingImage {
                service: s.name.to_string(),
                manifest: s.manifest.clone(),
                reason,
            };
            let (_, config) = store
                .image_config(&s.manifest)
                .map_err(|e| missing(e.to_string()))?;
            if !store.has_snapshot(&snapshot_id(&config.rootfs.diff_ids)) {
                return Err(missing("its layers are not unpacked".into()));
            }
        }
        Ok(())
    }

    /// `roots/releases`: the manifests of `releases`, which `dt-agent gc` keeps.
    fn write_roots(
        &self,
        records: &BTreeMap<u64, ReleaseRecord>,
        releases: &[u64],
    ) -> Result<(), ReleaseError> {
        let mut manifests = BTreeSet::new();
        let mut listed = Vec::new();
        for n in &retain::kept(records, releases, self.keep) {
            if let Some(r) = records.get(n) {
                listed.push(n.to_string());
                manifests.extend(r.services.values().cloned());
            }
        }
        let mut text = format!(
            "# images of releases {} (dt-agent daemon keeps this file)\n",
            listed.join(", ")
        );
        for m in manifests {
            text.push_str(&format!("{m}\n"));
        }
        let dir = self.root.join("roots");
        crate::util::fs::create_dir_all(&dir)?;
        Ok(atomic_write(&dir.join("releases"), text.as_bytes())?)
    }

    /// Makes the release containers match `target` (`(spec, label)`), or removes them all
    /// (`None`). Containers whose service spec is unchanged and that run are kept. Stops go
    /// highest stage first, a stage in parallel; starts go lowest stage first, each stage
    /// running before the next. `quick` stops with [`QUICK_STOP`] instead of each container's
    /// stop timeout.
    fn converge(
        &self,
        target: Option<(&ReleaseSpec, u64)>,
        records: &BTreeMap<u64, ReleaseRecord>,
        quick: bool,
    ) -> Result<Vec<ServiceOutcome>, Failure> {
        let agent_failure = |e: &dyn std::fmt::Display| Failure {
            service: String::new(),
            reason: e.to_string(),
        };
        // Retired containers of an earlier switch still stopping are left to their threads.
        let stopping = self.retiring.in_flight();
        let existing: Vec<ContainerInfo> = self
            .manager
            .list(true)
            .map_err(|e| agent_failure(&e))?
            .into_iter()
            .filter(|c| c.release.is_some() && !stopping.contains(&c.name))
            .collect();
        let spec_of = |c: &ContainerInfo| service_spec(records, c);
        let mut keep = BTreeSet::new();
        if let Some((spec, _)) = target {
            for s in &spec.services {
                if let Some(c) = existing.iter().find(|c| c.name == s.name)
                    && c.state == "running"
                    && c.pid.is_none_or(crate::util::fs::pid_alive)
                    && spec_of(c).is_some_and(|old| same_service(old, s))
                {
                    keep.insert(s.name.to_string());
                }
            }
        }

        // Replaced services that may hand over in parallel: retired now, stopped once the new
        // containers run (handover). A retire that fails falls back to stop-first.
        let to = target.filter(|_| !quick).map(|t| t.0);
        let retired = handover::retire(&self.manager, to, &existing, &keep, records);
        let handed: BTreeSet<&String> = retired.iter().map(|(old, _)| old).collect();

        // Stop and remove, highest stage first.
        let mut going: Vec<(u32, u32, &ContainerInfo)> = existing
            .iter()
            .filter(|c| !keep.contains(&c.name) && !handed.contains(&c.name))
            .map(|c| {
                let (st, ord) = spec_of(c).map_or((u32::MAX, u32::MAX), |s| (s.stage, s.order));
                (st, ord, c)
            })
            .collect();
        going.sort_by(|a, b| (b.0, b.1, &b.2.name).cmp(&(a.0, a.1, &a.2.name)));
        let grace = quick.then_some(QUICK_STOP);
        let mut i = 0;
        while i < going.len() {
            let stage = going[i].0;
            let group: Vec<&ContainerInfo> = going[i..]
                .iter()
                .take_while(|g| g.0 == stage)
                .map(|g| g.2)
                .collect();
            i += group.len();
            let errors: Vec<Failure> = std::thread::scope(|sc| {
                let handles: Vec<_> = group
                    .iter()
                    .map(|c| {
                        let m = &self.manager;
                        sc.spawn(move || {
                            // Also when it is not running: `stop` marks it stopped, so a
                            // pending policy restart cannot bring it back before it is gone.
                            let _ = m.stop(&c.name, grace);
                            match m.remove(&c.name, true) {
                                Ok(()) | Err(ContainerError::NotFound(_)) => None,
                                Err(e) => Some(Failure {
                                    service: c.name.clone(),
                                    reason: format!("could not be removed: {e}"),
                                }),
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| h.join().ok().flatten())
                    .collect()
            });
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
        }

        // Create and start, lowest stage first.
        let Some((spec, label)) = target else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut services: Vec<&ServiceSpec> = spec.services.iter().collect();
        services.sort_by(|a, b| (a.stage, a.order, &a.name).cmp(&(b.stage, b.order, &b.name)));
        let mut i = 0;
        while i < services.len() {
            let stage = services[i].stage;
            let group: Vec<&ServiceSpec> = services[i..]
                .iter()
                .take_while(|s| s.stage == stage)
                .copied()
                .collect();
            i += group.len();
            let mut started = Vec::new();
            for s in group {
                if keep.contains(s.name.as_str()) {
                    out.push(ServiceOutcome {
                        name: s.name.to_string(),
                        manifest: s.manifest.clone(),
                        action: ServiceAction::Kept,
                    });
                    continue;
                }
                let mut cfg = s.container.clone();
                cfg.name = s.name.clone();
                cfg.service = Some(s.name.clone());
                cfg.release = Some(label);
                cfg.image = crate::api::ImageRef::digest(&s.manifest);
                self.manager.create(cfg).map_err(|e| Failure {
                    service: s.name.to_string(),
                    reason: format!("could not be created: {e}"),
                })?;
                self.manager.start(&s.name).map_err(|e| Failure {
                    service: s.name.to_string(),
                    reason: format!("did not start: {e}"),
                })?;
                started.push(s.name.to_string());
                out.push(ServiceOutcome {
                    name: s.name.to_string(),
                    manifest: s.manifest.clone(),
                    action: ServiceAction::Started,
                });
            }
            // The stage runs before the next one starts.
            probation::quick_check(&self.manager, &started, Duration::ZERO)?;
        }
        self.retiring
            .stop_later(&self.manager, retired.into_iter().map(|(_, n)| n).collect());
        Ok(out)
    }
}

/// How many services of a switch were started and how many kept.
fn counts(services: &[ServiceOutcome]) -> (usize, usize) {
    let started = services
        .iter()
        .filter(|s| s.action == ServiceAction::Started)
        .count();
    (started, services.len() - started)
}

/// The spec of the service container `c` runs, from the release it was created for.
fn service_spec<'a>(
    records: &'a BTreeMap<u64, ReleaseRecord>,
    c: &ContainerInfo,
) -> Option<&'a ServiceSpec> {
    let svc = c.service.as_deref().unwrap_or(&c.name);
    records
        .get(&c.release?)?
        .spec
        .services
        .iter()
        .find(|s| s.name == svc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_spell_as_the_cli_says() {
        assert_eq!(
            serde_json::to_string(&ReleaseState::RolledBack).unwrap(),
            "\"rolled-back\""
        );
        assert_eq!(ReleaseState::Committed.to_string(), "committed");
        assert!(ReleaseState::Probation.in_progress());
        assert!(!ReleaseState::Failed.in_progress());
    }
}
