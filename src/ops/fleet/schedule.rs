//! The rollout's order, apart from what each robot does: at most `max_parallel` robots at
//! once, the first `canary` robots alone first (the rest start only once every canary
//! succeeded), and no new robot after `max_failures` failed. Generic over the per-robot work
//! so that its rules are tested without robots.

use std::future::Future;

use tokio::task::JoinSet;

/// The rollout's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Robots at once (at least 1).
    pub max_parallel: usize,
    /// Robots that go first, alone.
    pub canary: usize,
    /// After this many failed robots no new robot starts.
    pub max_failures: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_parallel: DEFAULT_PARALLEL,
            canary: 0,
            max_failures: None,
        }
    }
}

/// `--max-parallel`'s default: enough for a class, few enough for a laptop's uplink and CPU.
pub const DEFAULT_PARALLEL: usize = 8;

/// Whether one robot's work counts as a success.
pub trait Succeeded {
    /// It did.
    fn succeeded(&self) -> bool;
}

/// Why a robot was never started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// A canary failed.
    CanaryFailed,
    /// `max_failures` robots failed.
    TooManyFailures(usize),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::CanaryFailed => f.write_str("not started: a canary failed"),
            Skipped::TooManyFailures(n) => {
                write!(f, "not started: {n} robot(s) failed (--max-failures)")
            }
        }
    }
}

/// Runs `work(i)` for `i` in `0..n` as [`Limits`] say; each result in its robot's place.
/// A task that panics is counted as failed and reported by `panicked(i)`.
pub async fn run<R, F, Fut>(
    n: usize,
    limits: Limits,
    mut work: F,
    panicked: impl Fn(usize) -> R,
) -> Vec<Result<R, Skipped>>
where
    R: Succeeded + Send + 'static,
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let parallel = limits.max_parallel.max(1);
    let canary = limits.canary.min(n);
    let mut results: Vec<Option<Result<R, Skipped>>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    let (mut next, mut failures) = (0, 0);
    let mut stop: Option<Skipped> = None;
    let mut canary_phase = canary > 0;
    loop {
        let end = if canary_phase { canary } else { n };
        while stop.is_none() && set.len() < parallel && next < end {
            let fut = work(next);
            let i = next;
            let handle = set.spawn(fut);
            ids.insert(handle.id(), i);
            next += 1;
        }
        match set.join_next_with_id().await {
            None => {
                if canary_phase && stop.is_none() {
                    canary_phase = false;
                    let canaries_ok = results[..canary]
                        .iter()
                        .all(|r| matches!(r, Some(Ok(r)) if r.succeeded()));
                    if !canaries_ok {
                        stop = Some(Skipped::CanaryFailed);
                    }
                    if next < n && stop.is_none() {
                        continue;
                    }
                }
                break;
            }
            Some(done) => {
                let (i, r) = match done {
                    Ok((id, r)) => (ids[&id], r),
                    Err(e) => {
                        let i = ids[&e.id()];
                        (i, panicked(i))
                    }
                };
                if !r.succeeded() {
                    failures += 1;
                    if stop.is_none() && limits.max_failures.is_some_and(|f| failures >= f) {
                        stop = Some(Skipped::TooManyFailures(failures));
                    }
                }
                results[i] = Some(Ok(r));
            }
        }
    }
    let why = stop.unwrap_or(Skipped::CanaryFailed);
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(why.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    impl Succeeded for bool {
        fn succeeded(&self) -> bool {
            *self
        }
    }

    /// Runs a fake rollout where robot `i` fails when `fails(i)`; returns the results and the
    /// order robots started in, with the most that ran at once.
    async fn fake(
        n: usize,
        limits: Limits,
        fails: impl Fn(usize) -> bool,
    ) -> (Vec<Result<bool, Skipped>>, Vec<usize>, usize) {
        let log = Arc::new(Mutex::new((Vec::new(), 0usize, 0usize)));
        let l = log.clone();
        let r = run(
            n,
            limits,
            move |i| {
                let l = l.clone();
                let ok = !fails(i);
                async move {
                    {
                        let mut g = l.lock().unwrap();
                        g.0.push(i);
                        g.1 += 1;
                        g.2 = g.2.max(g.1);
                    }
                    // Later robots finish sooner: order must come from the limits, not luck.
                    tokio::time::sleep(Duration::from_millis(5 * (n - i) as u64)).await;
                    l.lock().unwrap().1 -= 1;
                    ok
                }
            },
            |_| false,
        )
        .await;
        let g = log.lock().unwrap();
        (r, g.0.clone(), g.2)
    }

    #[tokio::test]
    async fn parallel_up_to_the_limit_and_a_failure_stops_nobody() {
        let limits = Limits {
            max_parallel: 3,
            ..Limits::default()
        };
        let (r, started, most) = fake(7, limits, |i| i == 2).await;
        assert_eq!(most, 3);
        assert_eq!(started.len(), 7);
        assert_eq!(r.iter().filter(|r| matches!(r, Ok(true))).count(), 6);
        assert_eq!(r[2], Ok(false));
    }

    #[tokio::test]
    async fn canaries_go_first_and_a_failed_one_skips_the_rest() {
        let limits = Limits {
            max_parallel: 8,
            canary: 2,
            max_failures: None,
        };
        let (r, started, _) = fake(5, limits, |_| false).await;
        assert!(r.iter().all(|r| *r == Ok(true)));
        let mut first: Vec<usize> = started[..2].to_vec();
        first.sort();
        assert_eq!(first, [0, 1]);
        let (r, started, _) = fake(5, limits, |i| i == 1).await;
        assert_eq!(started.len(), 2);
        assert_eq!(r[0], Ok(true));
        assert_eq!(r[1], Ok(false));
        assert!(r[2..].iter().all(|r| *r == Err(Skipped::CanaryFailed)));
    }

    #[tokio::test]
    async fn max_failures_stops_new_robots_only() {
        let limits = Limits {
            max_parallel: 1,
            canary: 0,
            max_failures: Some(2),
        };
        let (r, started, _) = fake(6, limits, |i| i == 1 || i == 3).await;
        assert_eq!(started, [0, 1, 2, 3]);
        assert_eq!(&r[..4], &[Ok(true), Ok(false), Ok(true), Ok(false)]);
        assert!(
            r[4..]
                .iter()
                .all(|r| *r == Err(Skipped::TooManyFailures(2)))
        );
        // Robots in flight when the limit is reached still finish.
        let limits = Limits {
            max_parallel: 4,
            canary: 0,
            max_failures: Some(1),
        };
        let (r, started, _) = fake(6, limits, |i| i == 3).await;
        assert_eq!(started.len(), 4);
        assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 4);
    }

    #[tokio::test]
    async fn no_robots_and_a_panicking_task() {
        let (r, _, _) = fake(0, Limits::default(), |_| false).await;
        assert!(r.is_empty());
        let r = run(
            2,
            Limits::default(),
            |i| async move {
                assert!(i != 1, "boom");
                true
            },
            |_| false,
        )
        .await;
        assert_eq!(r, [Ok(true), Ok(false)]);
    }
}
