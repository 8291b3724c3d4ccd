//! One lock per key, made on first use and shared by a process's threads: for work two threads
//! may reach with the same input (a build step two targets share, a layer both need unpacked),
//! so that the second waits for the first's result instead of doing the work again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The locks, by key.
#[derive(Default)]
pub struct KeyLocks {
    keys: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl KeyLocks {
    /// The lock of `key` (the same one for every caller asking for the same key).
    pub fn of(&self, key: &str) -> Arc<Mutex<()>> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.entry(key.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_key() {
        let locks = KeyLocks::default();
        assert!(Arc::ptr_eq(&locks.of("a"), &locks.of("a")));
        assert!(!Arc::ptr_eq(&locks.of("a"), &locks.of("b")));
        let a = locks.of("a");
        let _held = a.lock().unwrap();
        assert!(locks.of("a").try_lock().is_err(), "held by this caller");
        assert!(locks.of("b").try_lock().is_ok());
    }
}
