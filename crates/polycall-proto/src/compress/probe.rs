//! A cheap compressibility probe: the byte entropy of a small sample.
//!
//! Order-0 entropy misses the repetition that LZ compressors feed on, so it
//! is only a starting point (the selector scales it by content type and
//! replaces it with what it learns), but it reliably tells random or already
//! compressed bytes from text, for a fixed cost of a few hundred nanoseconds
//! whatever the payload's size.

use std::sync::OnceLock;

/// How many bytes the probe looks at, at most.
pub(crate) const SAMPLE_LEN: usize = 512;
/// How many evenly spread chunks a larger payload is sampled in.
const CHUNKS: usize = 4;

/// `c * log2(c)` for every count a sample can produce.
fn nlog2n_table() -> &'static [f32; SAMPLE_LEN + 1] {
    static TABLE: OnceLock<[f32; SAMPLE_LEN + 1]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0f32; SAMPLE_LEN + 1];
        for (c, slot) in table.iter_mut().enumerate().skip(1) {
            let c = c as f64;
            *slot = (c * c.log2()) as f32;
        }
        table
    })
}

/// Estimated entropy of `payload` in bits per byte (0 to 8), from a sample of
/// at most [`SAMPLE_LEN`] bytes, with the Miller-Madow correction for the
/// sample's small size (without it, 512 random bytes look like 7.6 bits).
pub(crate) fn entropy_bits_per_byte(payload: &[u8]) -> f64 {
    if payload.is_empty() {
        return 0.0;
    }
    let mut counts = [0u16; 256];
    let sampled = if payload.len() <= SAMPLE_LEN {
        for &b in payload {
            counts[b as usize] += 1;
        }
        payload.len()
    } else {
        let chunk = SAMPLE_LEN / CHUNKS;
        let stride = (payload.len() - chunk) / (CHUNKS - 1);
        for i in 0..CHUNKS {
            let start = i * stride;
            for &b in &payload[start..start + chunk] {
                counts[b as usize] += 1;
            }
        }
        chunk * CHUNKS
    };
    let table = nlog2n_table();
    let mut sum = 0f32;
    let mut distinct = 0u32;
    for &c in &counts {
        sum += table[c as usize];
        distinct += u32::from(c != 0);
    }
    let n = sampled as f64;
    let entropy = n.log2() - f64::from(sum) / n;
    let correction = f64::from(distinct.saturating_sub(1)) / (2.0 * n * std::f64::consts::LN_2);
    (entropy + correction).clamp(0.0, 8.0)
}

/// `len` pseudo-random bytes (xorshift from `seed`), for tests.
#[cfg(test)]
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_bytes_have_no_entropy() {
        assert_eq!(entropy_bits_per_byte(&[7u8; 10_000]), 0.0);
        assert_eq!(entropy_bits_per_byte(&[]), 0.0);
    }

    #[test]
    fn random_bytes_look_random() {
        let bytes = noise(100_000, 0x9e37_79b9_7f4a_7c15);
        let h = entropy_bits_per_byte(&bytes);
        assert!(h > 7.8, "{h}");
    }

    #[test]
    fn text_is_in_between() {
        let text = "the quick brown fox jumps over the lazy dog; ".repeat(100);
        let h = entropy_bits_per_byte(text.as_bytes());
        assert!((3.5..5.0).contains(&h), "{h}");
    }
}
