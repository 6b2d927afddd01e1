//! What connections sent: payload bytes before and after compression, per algorithm
//! and per method.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use super::Algorithm;

/// Most distinct methods counted separately; further ones share the entry `other`.
pub const MAX_METHODS: usize = 4096;

/// Bytes sent, before (`raw`) and after (`wire`) compression, per algorithm and per
/// method, shared by the connections configured with it (`Config::compression_totals`).
/// Messages sent as they are count under [`Algorithm::None`] (raw = wire). Counting is
/// relaxed atomics behind a read lock; a method's name is stored the first time a
/// connection opens or receives a call of it.
///
/// ```
/// use polycall_proto::compress::{Algorithm, CompressionTotals};
/// let t = CompressionTotals::default();
/// t.name(7, "bulk", "put");
/// t.add(7, Algorithm::Zstd, 1000, 250);
/// assert_eq!(t.get(Algorithm::Zstd), (1, 1000, 250));
/// assert_eq!(t.methods(), vec![("bulk.put".to_owned(), 1, 1000, 250)]);
/// ```
#[derive(Debug, Default)]
pub struct CompressionTotals {
    /// Per algorithm (wire-id order): messages, raw bytes, wire bytes.
    counts: [[AtomicU64; 3]; 4],
    /// Per method key.
    methods: RwLock<HashMap<u64, Arc<MethodTotals>, BuildHasherDefault<KeyHasher>>>,
}

#[derive(Debug)]
struct MethodTotals {
    name: Arc<str>,
    /// Messages, raw bytes, wire bytes.
    counts: [AtomicU64; 3],
}

/// Method keys are hashes already: used as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl CompressionTotals {
    /// Names the method whose key is `key` (once; later calls cost a read lock).
    pub fn name(&self, key: u64, service: &str, method: &str) {
        if self
            .methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            return;
        }
        let mut m = self.methods.write().unwrap_or_else(|e| e.into_inner());
        let name: Arc<str> = if m.len() >= MAX_METHODS {
            Arc::from("other")
        } else {
            Arc::from(format!("{service}.{method}"))
        };
        m.entry(key).or_insert_with(|| {
            Arc::new(MethodTotals {
                name,
                counts: Default::default(),
            })
        });
    }

    /// Counts one message of the method `key`, `raw` bytes sent as `wire` bytes with
    /// `algorithm`.
    pub fn add(&self, key: u64, algorithm: Algorithm, raw: usize, wire: usize) {
        let c = &self.counts[algorithm as usize];
        c[0].fetch_add(1, Relaxed);
        c[1].fetch_add(raw as u64, Relaxed);
        c[2].fetch_add(wire as u64, Relaxed);
        if let Some(m) = self
            .methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            m.counts[0].fetch_add(1, Relaxed);
            m.counts[1].fetch_add(raw as u64, Relaxed);
            m.counts[2].fetch_add(wire as u64, Relaxed);
        }
    }

    /// `(messages, raw bytes, wire bytes)` sent with `algorithm` so far.
    pub fn get(&self, algorithm: Algorithm) -> (u64, u64, u64) {
        let c = &self.counts[algorithm as usize];
        (c[0].load(Relaxed), c[1].load(Relaxed), c[2].load(Relaxed))
    }

    /// `(service.method, messages, raw bytes, wire bytes)` of every named method with
    /// messages sent, sorted by name (entries past [`MAX_METHODS`] summed as `other`).
    pub fn methods(&self) -> Vec<(String, u64, u64, u64)> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        let mut by: std::collections::BTreeMap<&str, (u64, u64, u64)> = Default::default();
        for t in m.values() {
            let e = by.entry(&t.name).or_default();
            e.0 += t.counts[0].load(Relaxed);
            e.1 += t.counts[1].load(Relaxed);
            e.2 += t.counts[2].load(Relaxed);
        }
        by.into_iter()
            .filter(|(_, c)| c.0 > 0)
            .map(|(n, (a, b, c))| (n.to_owned(), a, b, c))
            .collect()
    }
}
