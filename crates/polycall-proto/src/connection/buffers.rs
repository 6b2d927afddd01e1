//! Buffers for reassembled messages, reused.
//!
//! A message that arrives in several `DATA` frames is copied into one buffer of its
//! declared size. Allocating that buffer fresh for every message costs more than the
//! copy: large allocations come straight from the kernel (or go back to it when freed),
//! and each of their pages is faulted in on first touch — 64 faults for a 256 KiB
//! message, measured at 56 a call on a client of 256 KiB echoes with glibc malloc.
//! A connection therefore keeps a few buffers: a message's payload is a [`Bytes`] that
//! owns its buffer and, when the last reference to it drops (on any thread), gives the
//! buffer back to its connection's pool, pages still mapped.
//!
//! The pool is bounded ([`KEPT_BYTES`] of spare capacity, no buffer larger than
//! [`LARGEST_KEPT`]: sixteen 256 KiB messages in flight fit); buffers returned to a full
//! pool, or after the connection is gone, are freed.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Spare capacity a pool keeps at most.
pub(crate) const KEPT_BYTES: usize = 4 * 1024 * 1024;
/// Messages smaller than this are allocated as usual (the allocator's own caches serve
/// them well).
pub(crate) const SMALLEST_POOLED: usize = 32 * 1024;
/// Buffers larger than this are freed rather than kept.
pub(crate) const LARGEST_KEPT: usize = 4 * 1024 * 1024;

/// A connection's spare reassembly buffers.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    spare: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty buffer with room for `size` bytes: a kept one when one is large enough.
    pub(crate) fn take(&self, size: usize) -> Vec<u8> {
        if size >= SMALLEST_POOLED {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = spare.iter().position(|b| b.capacity() >= size) {
                return spare.swap_remove(i);
            }
        }
        Vec::with_capacity(size)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() < SMALLEST_POOLED || buf.capacity() > LARGEST_KEPT {
            return;
        }
        buf.clear();
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        let kept: usize = spare.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= KEPT_BYTES {
            spare.push(buf);
        }
    }

    /// How many buffers the pool holds now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.spare.lock().map_or(0, |s| s.len())
    }
}

/// A filled buffer as [`Bytes`]: back to `pool` (if it still exists) when the last
/// reference drops. Buffers the pool would not keep become plain `Bytes`.
pub(crate) fn freeze(buf: Vec<u8>, pool: &Arc<BufferPool>) -> Bytes {
    if buf.capacity() < SMALLEST_POOLED || buf.capacity() > LARGEST_KEPT {
        return Bytes::from(buf);
    }
    Bytes::from_owner(Pooled {
        buf,
        pool: Arc::downgrade(pool),
    })
}

/// A buffer on loan from a pool.
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_payload_gives_its_buffer_back_and_the_next_message_reuses_it() {
        let pool = BufferPool::new();
        let mut buf = pool.take(256 * 1024);
        buf.extend_from_slice(&[7u8; 256 * 1024]);
        let address = buf.as_ptr();
        let bytes = freeze(buf, &pool);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.kept(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert_eq!(pool.kept(), 1);
        let again = pool.take(200 * 1024);
        assert_eq!(
            again.as_ptr(),
            address,
            "the same memory, pages still mapped"
        );
        assert!(again.is_empty());
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn the_pool_is_bounded_and_outlived_safely() {
        let pool = BufferPool::new();
        let fit = KEPT_BYTES / SMALLEST_POOLED;
        let held: Vec<Bytes> = (0..fit + 3)
            .map(|_| freeze(pool.take(SMALLEST_POOLED), &pool))
            .collect();
        drop(held);
        assert_eq!(pool.kept(), fit, "no more than KEPT_BYTES");
        // Too small or too large: not pooled.
        drop(freeze(pool.take(100), &pool));
        let mut big = Vec::with_capacity(LARGEST_KEPT + 1);
        big.push(1u8);
        drop(freeze(big, &pool));
        assert_eq!(pool.kept(), fit);
        // A payload that outlives its connection's pool is simply freed.
        let late = freeze(pool.take(SMALLEST_POOLED), &pool);
        drop(pool);
        drop(late);
    }
}
