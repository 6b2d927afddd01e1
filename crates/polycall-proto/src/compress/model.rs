//! Priors of the cost model: what each algorithm and level is expected to
//! cost and achieve before anything has been measured.
//!
//! Speeds are for a single core of a current x86-64 server on text and JSON,
//! measured with this crate's codecs; the selector replaces the compression
//! speeds with its own measurements as it goes. Ratios are given relative to
//! zstd level 3 (the reference), as a `gain` on the ratio's excess over one:
//! a candidate with gain `g` is expected to reach `1 + g * (r - 1)` where
//! zstd-3 reaches `r`.

use polycall_core::ContentType;

use super::{Algorithm, Choice};

/// What a candidate is expected to cost and achieve, before measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Prior {
    /// Ratio gain relative to zstd-3 (see the module docs).
    pub gain: f64,
    /// Compression cost per input byte, in nanoseconds.
    pub compress_ns_per_byte: f64,
    /// Fixed compression cost per message, in nanoseconds.
    pub compress_overhead_ns: f64,
    /// Decompression cost per output byte, in nanoseconds.
    pub decompress_ns_per_byte: f64,
    /// Fixed decompression cost per message, in nanoseconds.
    pub decompress_overhead_ns: f64,
}

/// Linear interpolation in a table of `(level, value)` sorted by level,
/// clamped at both ends.
fn interpolate(table: &[(i32, f64)], level: i32) -> f64 {
    let first = table[0];
    if level <= first.0 {
        return first.1;
    }
    for pair in table.windows(2) {
        let (l0, v0) = pair[0];
        let (l1, v1) = pair[1];
        if level <= l1 {
            let t = f64::from(level - l0) / f64::from(l1 - l0);
            return v0 + t * (v1 - v0);
        }
    }
    table[table.len() - 1].1
}

/// zstd: compression ns per byte, by level.
const ZSTD_SPEED: &[(i32, f64)] = &[
    (-7, 0.9),
    (-5, 1.0),
    (-3, 1.1),
    (-1, 1.4),
    (1, 2.0),
    (2, 2.3),
    (3, 2.6),
    (4, 3.2),
    (5, 5.0),
    (6, 7.0),
    (7, 9.0),
    (9, 13.0),
    (12, 25.0),
    (15, 60.0),
    (19, 250.0),
    (22, 600.0),
];

/// zstd: ratio gain over zstd-3, by level.
const ZSTD_GAIN: &[(i32, f64)] = &[
    (-7, 0.45),
    (-5, 0.5),
    (-3, 0.58),
    (-1, 0.72),
    (1, 0.93),
    (2, 0.97),
    (3, 1.0),
    (4, 1.01),
    (5, 1.04),
    (6, 1.07),
    (7, 1.08),
    (9, 1.1),
    (12, 1.12),
    (15, 1.14),
    (19, 1.2),
    (22, 1.22),
];

/// brotli: compression ns per byte, by quality.
const BROTLI_SPEED: &[(i32, f64)] = &[
    (0, 4.0),
    (1, 5.5),
    (2, 6.5),
    (3, 7.0),
    (4, 8.0),
    (5, 13.0),
    (6, 17.0),
    (7, 30.0),
    (8, 40.0),
    (9, 60.0),
    (10, 500.0),
    (11, 1500.0),
];

/// brotli: ratio gain over zstd-3, by quality.
const BROTLI_GAIN: &[(i32, f64)] = &[
    (0, 0.55),
    (1, 0.65),
    (2, 0.9),
    (3, 0.95),
    (4, 1.0),
    (5, 1.08),
    (6, 1.1),
    (7, 1.12),
    (8, 1.13),
    (9, 1.15),
    (10, 1.25),
    (11, 1.3),
];

/// brotli: fixed cost of setting up an encoder, by quality.
const BROTLI_OVERHEAD: &[(i32, f64)] = &[
    (0, 3_000.0),
    (2, 4_000.0),
    (4, 10_000.0),
    (5, 15_000.0),
    (6, 25_000.0),
    (9, 40_000.0),
    (11, 100_000.0),
];

/// The prior for `choice`.
pub(crate) fn prior(choice: Choice) -> Prior {
    match choice.algorithm {
        // Dictionaries are never the selector's candidates: the dictionary
        // module decides for the small messages they serve.
        Algorithm::None | Algorithm::ZstdDict => Prior {
            gain: 0.0,
            compress_ns_per_byte: 0.0,
            compress_overhead_ns: 0.0,
            decompress_ns_per_byte: 0.0,
            decompress_overhead_ns: 0.0,
        },
        Algorithm::Zstd => Prior {
            gain: interpolate(ZSTD_GAIN, choice.level),
            compress_ns_per_byte: interpolate(ZSTD_SPEED, choice.level),
            compress_overhead_ns: if choice.level < 1 { 600.0 } else { 2_000.0 },
            decompress_ns_per_byte: 0.5,
            decompress_overhead_ns: 800.0,
        },
        Algorithm::Brotli => Prior {
            gain: interpolate(BROTLI_GAIN, choice.level),
            compress_ns_per_byte: interpolate(BROTLI_SPEED, choice.level),
            compress_overhead_ns: interpolate(BROTLI_OVERHEAD, choice.level),
            decompress_ns_per_byte: 1.2,
            decompress_overhead_ns: 2_500.0,
        },
    }
}

/// How much more than order-0 entropy coding an LZ compressor is expected to
/// gain on a content type: JSON repeats its keys and structure, postcard has
/// already squeezed most of that out.
pub(crate) fn lz_boost(content_type: ContentType) -> f64 {
    match content_type {
        ContentType::Json => 3.0,
        ContentType::Raw => 2.2,
        ContentType::Postcard => 1.5,
    }
}

/// Below this estimated order-0 saving, data is taken as incompressible.
const INCOMPRESSIBLE_SAVING: f64 = 0.03;

/// The reference (zstd-3) saving expected for a large payload of
/// `content_type` whose bytes carry `entropy` bits each.
pub(crate) fn prior_reference_saving(entropy: f64, content_type: ContentType) -> f64 {
    let order0 = 1.0 - entropy / 8.0;
    if order0 < INCOMPRESSIBLE_SAVING {
        return 0.0;
    }
    let ratio = 1.0 / (1.0 - order0);
    let ratio = 1.0 + (ratio - 1.0) * lz_boost(content_type);
    saving_of_ratio(ratio)
}

/// Messages of about this many bytes reach half the saving of a large one.
pub(crate) const SIZE_KNEE: f64 = 350.0;

/// The share of a large message's saving that one of `len` bytes reaches:
/// small messages give the compressor less history to match against.
pub(crate) fn size_factor(len: usize) -> f64 {
    let n = len as f64;
    n / (n + SIZE_KNEE)
}

/// The highest saving the model believes in.
pub(crate) const MAX_SAVING: f64 = 0.999;

pub(crate) fn saving_of_ratio(ratio: f64) -> f64 {
    (1.0 - 1.0 / ratio.max(1.0)).clamp(0.0, MAX_SAVING)
}

pub(crate) fn ratio_of_saving(saving: f64) -> f64 {
    1.0 / (1.0 - saving.clamp(0.0, MAX_SAVING))
}

/// The saving of a candidate with `gain`, given the reference's saving.
pub(crate) fn from_reference(reference: f64, gain: f64) -> f64 {
    saving_of_ratio(1.0 + gain * (ratio_of_saving(reference) - 1.0))
}

/// The reference's saving, given that of a candidate with `gain`.
pub(crate) fn to_reference(saving: f64, gain: f64) -> f64 {
    if gain <= 0.0 {
        return 0.0;
    }
    saving_of_ratio(1.0 + (ratio_of_saving(saving) - 1.0) / gain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_clamps_and_interpolates() {
        assert_eq!(interpolate(ZSTD_SPEED, -100), 0.9);
        assert_eq!(interpolate(ZSTD_SPEED, 100), 600.0);
        assert_eq!(interpolate(ZSTD_SPEED, 3), 2.6);
        let eight = interpolate(ZSTD_SPEED, 8);
        assert!(eight > 9.0 && eight < 13.0);
    }

    #[test]
    fn reference_mapping_round_trips() {
        for reference in [0.0, 0.2, 0.5, 0.75, 0.9] {
            for gain in [0.5, 1.0, 1.2] {
                let there = from_reference(reference, gain);
                let back = to_reference(there, gain);
                assert!((back - reference).abs() < 1e-9, "{reference} {gain} {back}");
            }
        }
        assert!(from_reference(0.75, 1.1) > 0.75);
        assert!(from_reference(0.75, 0.6) < 0.75);
    }

    #[test]
    fn priors_are_ordered_sensibly() {
        let fast = prior(Choice::zstd(1));
        let slow = prior(Choice::zstd(9));
        assert!(fast.compress_ns_per_byte < slow.compress_ns_per_byte);
        assert!(fast.gain < slow.gain);
        assert!(prior_reference_saving(8.0, ContentType::Json) == 0.0);
        let json = prior_reference_saving(5.2, ContentType::Json);
        let raw = prior_reference_saving(5.2, ContentType::Raw);
        assert!(json > raw && raw > 0.3, "{json} {raw}");
    }
}
