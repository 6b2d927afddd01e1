//! Maps keyed by call ids and tokens: a keyed integer mix instead of SipHash. Call ids
//! are small increasing integers, looked up several times per call on every connection;
//! SipHash costs more than the rest of the lookup. The key is random per map, so a peer
//! that chooses its call ids cannot aim them at one bucket.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A `HashMap` keyed by integers (call ids, tokens) with [`IdHashState`].
///
/// ```
/// use polycall_core::IdMap;
/// let mut pending: IdMap<u32, &str> = IdMap::default();
/// pending.insert(7, "waiting");
/// assert_eq!(pending.get(&7), Some(&"waiting"));
/// ```
pub type IdMap<K, V> = HashMap<K, V, IdHashState>;

/// Builds [`IdHasher`]s with a key drawn once per map from the OS-seeded std hasher.
#[derive(Debug, Clone, Copy)]
pub struct IdHashState {
    key: u64,
}

impl Default for IdHashState {
    fn default() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        Self { key: h.finish() }
    }
}

impl BuildHasher for IdHashState {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.key }
    }
}

/// Mixes integer keys (two multiply-xorshift rounds over the key and the map's secret).
#[derive(Debug, Clone, Copy)]
pub struct IdHasher {
    state: u64,
}

impl IdHasher {
    fn mix(&mut self, v: u64) {
        let mut x = (self.state ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 32;
        x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
        x ^= x >> 29;
        self.state = x;
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.state
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets() {
        let s = IdHashState::default();
        let low_bits: std::collections::HashSet<u64> =
            (0..1024u32).map(|i| s.hash_one(i * 2 + 1) & 1023).collect();
        assert!(
            low_bits.len() > 550,
            "{} distinct buckets of 1024",
            low_bits.len()
        );
        let top_bits: std::collections::HashSet<u64> =
            (0..1024u32).map(|i| s.hash_one(i * 2 + 1) >> 57).collect();
        assert!(
            top_bits.len() > 100,
            "control bytes vary: {}",
            top_bits.len()
        );
    }

    #[test]
    fn maps_use_different_keys() {
        assert_ne!(
            IdHashState::default().hash_one(1u32),
            IdHashState::default().hash_one(1u32)
        );
    }
}
