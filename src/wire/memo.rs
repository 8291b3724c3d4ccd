//! What the laptop would otherwise work out once per robot in a rollout, worked out once per
//! process: a layer's cached index and tar-split (decompressed, parsed and checked against its
//! digest), a tar-split's delta against its base (zstd at level 9 with the base as reference
//! prefix) and the small file contents read out of a layer blob. A `fleet deploy` of a
//! one-file change to 30 robots sends every one of them the same delta of the same layer; on
//! a two-core laptop these were a third of dts's own CPU in that rollout.
//!
//! Everything here is keyed by content (digests, and the cache directory the index came
//! from), so an entry never goes stale; each memo is bounded by the bytes it holds and drops
//! its oldest entries first.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A map holding at most `cap` bytes (by the weight given at insertion), oldest out first.
pub(super) struct Memo<K, V> {
    map: HashMap<K, (Arc<V>, usize)>,
    order: VecDeque<K>,
    bytes: usize,
    cap: usize,
}

impl<K: Clone + Eq + Hash, V> Memo<K, V> {
    /// An empty memo of at most `cap` bytes.
    pub(super) fn new(cap: usize) -> Self {
        Memo {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    pub(super) fn get(&self, key: &K) -> Option<Arc<V>> {
        self.map.get(key).map(|(v, _)| v.clone())
    }

    /// Keeps `value` (of `weight` bytes) under `key`, unless it alone is over the cap.
    pub(super) fn insert(&mut self, key: K, value: Arc<V>, weight: usize) {
        if weight > self.cap || self.map.contains_key(&key) {
            return;
        }
        while self.bytes + weight > self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.bytes -= w;
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, (value, weight));
        self.bytes += weight;
    }
}

/// One process-wide memo behind a lock.
pub(super) struct Shared<K, V>(Mutex<Option<Memo<K, V>>>, usize);

impl<K: Clone + Eq + Hash, V> Shared<K, V> {
    /// A memo of at most `cap` bytes, made on first use.
    pub(super) const fn new(cap: usize) -> Self {
        Shared(Mutex::new(None), cap)
    }

    pub(super) fn get(&self, key: &K) -> Option<Arc<V>> {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().and_then(|m| m.get(key))
    }

    pub(super) fn insert(&self, key: K, value: Arc<V>, weight: usize) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .get_or_insert_with(|| Memo::new(self.1))
            .insert(key, value, weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_go_first_and_the_cap_holds() {
        let mut m: Memo<u32, Vec<u8>> = Memo::new(10);
        m.insert(1, Arc::new(vec![1; 4]), 4);
        m.insert(2, Arc::new(vec![2; 4]), 4);
        assert_eq!(m.get(&1).unwrap().len(), 4);
        m.insert(3, Arc::new(vec![3; 4]), 4);
        assert!(m.get(&1).is_none(), "the oldest made room");
        assert!(m.get(&2).is_some() && m.get(&3).is_some());
        m.insert(4, Arc::new(vec![4; 11]), 11);
        assert!(m.get(&4).is_none(), "larger than the whole memo: not kept");
        assert!(m.get(&2).is_some(), "and nothing dropped for it");
        assert!(m.bytes <= m.cap);
    }
}
