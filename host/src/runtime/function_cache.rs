//! Compiled functions kept in memory between compilations (wasmtime's
//! incremental compilation), so compiling a component whose functions were
//! compiled before costs little: the configured snapshot of a plugin has the
//! same code as the plugin itself (Wizer changes only its data), and a
//! settings edit recompiles nothing but that data.
//!
//! Bounded: when the entries pass their limit ([`MAX_BYTES`] by default),
//! the oldest half goes.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use wasmtime::CacheStore;

/// Bytes of compiled functions kept at most.
pub const MAX_BYTES: usize = 256 << 20;

/// An in-memory [`CacheStore`].
#[derive(Debug)]
pub struct FunctionCache {
    inner: Mutex<Inner>,
    limit: usize,
}

impl Default for FunctionCache {
    fn default() -> Self {
        Self::with_limit(MAX_BYTES)
    }
}

impl FunctionCache {
    /// A cache holding at most about `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self { inner: Mutex::default(), limit }
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys in insertion order, for eviction.
    order: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let inner = self.inner.lock().ok()?;
        inner.entries.get(key).map(|value| Cow::Owned(value.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let Ok(mut inner) = self.inner.lock() else { return false };
        if inner.entries.contains_key(key) {
            return true;
        }
        inner.bytes += key.len() + value.len();
        inner.entries.insert(key.to_vec(), value);
        inner.order.push_back(key.to_vec());
        if inner.bytes > self.limit {
            // Drop the oldest half: recent plugins are the ones recompiled.
            let drop = inner.order.len() / 2;
            for _ in 0..drop {
                if let Some(old) = inner.order.pop_front()
                    && let Some(value) = inner.entries.remove(&old)
                {
                    inner.bytes -= old.len() + value.len();
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_it_was_given_and_forgets_the_oldest_past_its_limit() {
        let cache = FunctionCache::with_limit(100);
        assert!(cache.insert(b"a", vec![1; 30]));
        assert_eq!(cache.get(b"a").as_deref(), Some(&[1u8; 30][..]));
        assert!(cache.get(b"b").is_none());
        cache.insert(b"b", vec![2; 30]);
        cache.insert(b"c", vec![3; 30]);
        cache.insert(b"d", vec![4; 30]); // 124 bytes: the oldest half goes
        assert!(cache.get(b"a").is_none() && cache.get(b"b").is_none());
        assert!(cache.get(b"c").is_some() && cache.get(b"d").is_some());
    }
}
