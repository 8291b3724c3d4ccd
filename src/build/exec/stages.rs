//! Which stages a target needs, and building the ones it only reads from (`COPY --from`,
//! `RUN --mount from=`) side by side with it, as BuildKit solves a Dockerfile as a graph.
//!
//! Without this a consumer built a stage it reads from when it reached the line naming it: in
//! the Duckietown project the native C++ stage (unpacking the build machine's 900 MB compiler
//! image, then compiling) started only after the emulated apt and pip steps, on the build's
//! critical path, while those steps left cores idle waiting on the mirror. Each platform's
//! thread now builds such stages on up to a thread per core beside it; the stages of a
//! platform are claimed in [`Stages`], so a stage two threads reach is built once and the
//! other waits for it.
//!
//! A failure anywhere stops the build's other threads, on every platform (the flag in
//! [`Stages::sharing`]): at their next step, and a RUN in progress is killed. They return
//! [`BuildError::Cancelled`], and the build reports the error that caused it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{Executor, StageState, StepCounts};
use crate::build::BuildError;
use crate::build::dockerfile::{self, Command, Dockerfile};

/// A stage's place in [`Stages`].
enum Slot {
    /// A thread is building it.
    Building,
    Built(Box<StageState>),
    Failed,
}

/// One platform's stages and step numbers, shared by the threads building them.
#[derive(Default)]
pub struct Stages {
    slots: Mutex<BTreeMap<usize, Slot>>,
    settled: Condvar,
    /// Set when a stage fails; shared by the build's platforms.
    failed: Arc<AtomicBool>,
    step: AtomicUsize,
    run: AtomicUsize,
    cached: AtomicUsize,
}

impl Stages {
    /// A platform's stages whose failure flag is `failed`: one flag for all the platforms of
    /// a build, so a failure on one stops the others, as BuildKit fails a multi-platform
    /// build as a whole.
    pub fn sharing(failed: Arc<AtomicBool>) -> Stages {
        Stages {
            failed,
            ..Stages::default()
        }
    }

    /// The built state of stage `index`, waiting while another thread builds it; `None`: the
    /// caller is to build it (and then [`Stages::settle`] it).
    fn claim(&self, index: usize) -> Result<Option<StageState>, BuildError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match slots.get(&index) {
                None => {
                    slots.insert(index, Slot::Building);
                    return Ok(None);
                }
                Some(Slot::Building) => {
                    slots = self.settled.wait(slots).unwrap_or_else(|e| e.into_inner());
                }
                Some(Slot::Built(s)) => return Ok(Some(StageState::clone(s))),
                Some(Slot::Failed) => return Err(BuildError::Cancelled),
            }
        }
    }

    fn settle(&self, index: usize, state: Option<&StageState>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match state {
            Some(s) => Slot::Built(Box::new(s.clone())),
            None => {
                self.failed.store(true, Ordering::SeqCst);
                Slot::Failed
            }
        };
        slots.insert(index, slot);
        self.settled.notify_all();
    }

    /// `Cancelled` once any stage of the build has failed.
    pub(super) fn check(&self) -> Result<(), BuildError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(BuildError::Cancelled);
        }
        Ok(())
    }

    /// The next step's number (1-based, in the order steps start).
    pub(super) fn next_step(&self) -> usize {
        self.step.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Counts a layer-producing step.
    pub(super) fn count(&self, cached: bool) {
        let n = if cached { &self.cached } else { &self.run };
        n.fetch_add(1, Ordering::SeqCst);
    }

    /// Steps run and served from the cache so far.
    pub fn counts(&self) -> StepCounts {
        StepCounts {
            run: self.run.load(Ordering::SeqCst),
            cached: self.cached.load(Ordering::SeqCst),
        }
    }
}

impl Executor<'_> {
    /// Builds stage `index` (and, first, what it depends on) and returns its state; a stage
    /// another thread of the platform has claimed is waited for, not built again.
    pub fn build_stage(&mut self, index: usize) -> Result<StageState, BuildError> {
        if let Some(s) = self.stages.claim(index)? {
            return Ok(s);
        }
        let r = self.build_stage_steps(index);
        self.stages.settle(index, r.as_ref().ok());
        r
    }

    /// Builds `target` with the stages it reads from started at once on other threads (up to
    /// one per core). The error reported is the one that stopped the build, not a thread's
    /// cancellation.
    pub fn build_target(&self, target: usize) -> Result<StageState, BuildError> {
        let side = side_stages(self.df, target);
        std::thread::scope(|scope| {
            // At most a thread per core takes the side stages in order (a stage's own
            // dependencies come first, built by whichever thread needs them first): a
            // Dockerfile of many stages does not start all their RUNs at once.
            let sides = scope.spawn(|| {
                crate::util::par::map(&side, crate::util::par::cores(), |&i| {
                    self.clone().build_stage(i).map(drop)
                })
            });
            let main = self.clone().build_stage(target);
            let others = sides
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            match main {
                // A stage it read from failed: report why. A side stage the target did not
                // reach in the end (its failure stopped nothing) does not fail the build.
                Err(BuildError::Cancelled) => Err(others
                    .into_iter()
                    .filter_map(Result::err)
                    .find(|e| !matches!(e, BuildError::Cancelled))
                    .unwrap_or(BuildError::Cancelled)),
                main => main,
            }
        })
    }
}

/// The earlier stages a stage names: its `FROM` (if a stage) and those of `COPY --from` and
/// `RUN --mount from=`, by name or index. Unexpanded, as BuildKit reads `--from` (a `FROM`
/// naming a stage through an ARG is found when it runs, and is simply not started early).
fn stage_deps(df: &Dockerfile, i: usize) -> (Option<usize>, Vec<usize>) {
    let earlier = |name: &str| {
        df.stage(name)
            .map(|(j, _)| j)
            .or_else(|| name.parse::<usize>().ok())
            .filter(|j| *j < i)
    };
    let s = &df.stages[i];
    let mut reads = Vec::new();
    for ins in &s.instructions {
        match &ins.command {
            Command::Copy(c) => reads.extend(c.from.as_ref().and_then(|f| earlier(&f.value))),
            Command::Run(r) => reads.extend(
                r.mounts
                    .iter()
                    .filter_map(|m| dockerfile::parse_mount(&m.value, "/", 0).ok()?.from)
                    .filter_map(|f| earlier(&f)),
            ),
            _ => {}
        }
    }
    (earlier(&s.base.value), reads)
}

/// Which stages building `target` runs.
fn needed(df: &Dockerfile, target: usize) -> Vec<bool> {
    let mut needed = vec![false; df.stages.len()];
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if !needed[i] {
            needed[i] = true;
            let (base, reads) = stage_deps(df, i);
            todo.extend(base.into_iter().chain(reads));
        }
    }
    needed
}

/// The steps building `target` runs: each needed stage's FROM and instructions.
pub fn count_steps(df: &Dockerfile, target: usize) -> usize {
    df.stages
        .iter()
        .zip(needed(df, target))
        .filter(|(_, n)| *n)
        .map(|(s, _)| 1 + s.instructions.len())
        .sum()
}

/// The needed stages off `target`'s own `FROM` chain: what can start before the target
/// reaches the line that reads them.
fn side_stages(df: &Dockerfile, target: usize) -> Vec<usize> {
    let mut off_chain = needed(df, target);
    let mut at = Some(target);
    while let Some(i) = at {
        off_chain[i] = false;
        at = stage_deps(df, i).0;
    }
    (0..df.stages.len()).filter(|i| off_chain[*i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Dockerfile {
        Dockerfile::parse("Dockerfile", text).unwrap()
    }

    #[test]
    fn side_stages_are_the_needed_ones_off_the_from_chain() {
        let df = parse(
            "FROM alpine AS tools\nRUN true\n\
             FROM alpine AS unused\n\
             FROM tools AS cpp\nRUN make\n\
             FROM alpine AS base\n\
             FROM alpine AS data\n\
             FROM base\nCOPY --from=cpp /a /a\nRUN --mount=type=bind,from=data,target=/d true\n",
        );
        // tools (the FROM of cpp) and cpp and data are read; base is the target's own chain.
        assert_eq!(side_stages(&df, 5), vec![0, 2, 4]);
        assert_eq!(count_steps(&df, 5), 2 + 2 + 1 + 1 + 3);
        assert!(
            side_stages(&df, 2).is_empty(),
            "a chain of FROMs runs in order"
        );
        assert_eq!(
            needed(&df, 5),
            vec![true, false, true, true, true, true],
            "`unused` is not built"
        );
    }

    #[test]
    fn a_stage_is_claimed_once_and_waiters_see_its_outcome() {
        let stages = Stages::default();
        assert!(
            stages.claim(0).unwrap().is_none(),
            "the first caller builds"
        );
        std::thread::scope(|s| {
            let waiter = s.spawn(|| stages.claim(0));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "waits while stage 0 is being built");
            stages.settle(0, None);
            assert!(matches!(waiter.join().unwrap(), Err(BuildError::Cancelled)));
        });
        assert!(matches!(stages.check(), Err(BuildError::Cancelled)));
        assert_eq!(stages.next_step(), 1);
        assert_eq!(stages.next_step(), 2);
    }
}
