//! What connections compressed as they sent: bytes before and after, per algorithm.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::Algorithm;

/// Bytes sent, per algorithm, before (`raw`) and after (`wire`) compression, shared by
/// the connections configured with it (`Config::compression_totals`); lock-free.
/// Messages sent as they are count under [`Algorithm::None`] (raw = wire).
///
/// ```
/// use polycall_proto::compress::{Algorithm, CompressionTotals};
/// let t = CompressionTotals::default();
/// t.add(Algorithm::Zstd, 1000, 250);
/// assert_eq!(t.get(Algorithm::Zstd), (1, 1000, 250));
/// ```
#[derive(Debug, Default)]
pub struct CompressionTotals {
    /// Per algorithm (wire-id order): messages, raw bytes, wire bytes.
    counts: [[AtomicU64; 3]; 3],
}

impl CompressionTotals {
    /// Counts one message of `raw` bytes sent as `wire` bytes with `algorithm`.
    pub fn add(&self, algorithm: Algorithm, raw: usize, wire: usize) {
        let c = &self.counts[algorithm as usize];
        c[0].fetch_add(1, Relaxed);
        c[1].fetch_add(raw as u64, Relaxed);
        c[2].fetch_add(wire as u64, Relaxed);
    }

    /// `(messages, raw bytes, wire bytes)` sent with `algorithm` so far.
    pub fn get(&self, algorithm: Algorithm) -> (u64, u64, u64) {
        let c = &self.counts[algorithm as usize];
        (c[0].load(Relaxed), c[1].load(Relaxed), c[2].load(Relaxed))
    }
}
