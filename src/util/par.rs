//! A function run over a slice on a few threads, its results in the slice's order: for work
//! that is CPU-bound per item (decompressing a layer to check it), so that a laptop's cores
//! share a list of items instead of one core taking them in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many threads CPU-bound work should use: the machine's cores, at least one.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |p| p.get())
}

/// `f` over every item on up to `workers` threads (never more than there are items); the
/// results in the items' order. A panic in `f` is raised again on the caller's thread.
pub fn map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = workers.clamp(1, items.len().max(1));
    if workers == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (next, f) = (&next, &f);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break out };
                        out.push((i, f(item)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_whatever_the_threads() {
        let items: Vec<u64> = (0..100).collect();
        for workers in [0, 1, 2, 7, 500] {
            let out = map(&items, workers, |x| {
                // Uneven work, so that the threads finish items out of order.
                std::thread::sleep(std::time::Duration::from_micros((x % 7) * 50));
                x * 2
            });
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        assert!(map(&[] as &[u8], 4, |x| *x).is_empty());
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            map(&[1, 2, 3, 4], 2, |x| {
                assert_ne!(*x, 3, "item three");
                *x
            })
        });
        assert!(r.is_err());
    }
}
