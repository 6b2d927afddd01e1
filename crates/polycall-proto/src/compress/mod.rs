//! Adaptive per-message compression.
//!
//! polycall compresses each message on its own, with the algorithm and level
//! that minimise the *expected time to deliver it* - not the best ratio. On a
//! slow link a few microseconds of CPU buy many microseconds of wire time; on
//! a fast one even the quickest compressor costs more than it saves.
//!
//! The pieces:
//!
//! - [`Algorithm`] and [`Choice`]: what can be on the wire (`none`, `zstd`,
//!   `brotli`) and at which level.
//! - [`Compressor`] and [`Decompressor`]: the codecs, with contexts reused
//!   between messages so that small ones do not pay for context setup.
//!   [`Decompressor::decompress`] never allocates past the caller's limit,
//!   whatever the input claims.
//! - [`AdaptiveSelector`]: the cost model that picks a [`Choice`] per
//!   message, learning per method (per `key`) from observations.
//! - [`AdaptiveCompressor`]: selector and compressor together - choose,
//!   compress, time it and learn in one call.
//!
//! ```
//! use bytes::Bytes;
//! use polycall_core::ContentType;
//! use polycall_proto::compress::{AdaptiveCompressor, Algorithm, Decompressor, SelectorConfig};
//!
//! let mut encoder = AdaptiveCompressor::new(
//!     SelectorConfig::default().link_bytes_per_sec(12.5e6), // 100 Mbit/s
//! );
//! let payload = Bytes::from(r#"{"level":"info","msg":"hello"}"#.repeat(200));
//! let (algorithm, wire) = encoder.encode(7, ContentType::Json, &payload, &Algorithm::ALL);
//! assert!(wire.len() <= payload.len());
//!
//! let mut decoder = Decompressor::new();
//! let back = decoder.decompress(algorithm, &wire, 1 << 20)?;
//! assert_eq!(back, payload);
//! # Ok::<(), polycall_proto::compress::CompressError>(())
//! ```

mod adaptive;
#[cfg(feature = "brotli")]
mod brotli_codec;
mod codec;
#[cfg(feature = "zstd")]
pub mod dictionary;
mod model;
mod offload;
mod probe;
mod totals;
#[cfg(feature = "zstd")]
mod zstd_codec;

use std::fmt;

pub use adaptive::{AdaptiveCompressor, AdaptiveSelector, SelectorConfig};
pub use codec::{Compressor, Decompressor};
#[cfg(feature = "zstd")]
pub use dictionary::{TrainJob, TrainedDictionary};
pub use offload::{CompressJob, Compressed, Deferred, DeferredError};
pub use totals::CompressionTotals;

/// A compression algorithm as carried on the wire.
///
/// The discriminant is the wire id ([`Algorithm::id`]).
///
/// ```
/// use polycall_proto::compress::Algorithm;
/// for algorithm in Algorithm::ALL {
///     assert_eq!(Algorithm::from_id(algorithm.id()), Some(algorithm));
/// }
/// assert_eq!(Algorithm::Zstd.name(), "zstd");
/// assert_eq!(Algorithm::from_id(9), None);
/// ```
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Not compressed: the payload as is.
    None = 0,
    /// Zstandard.
    Zstd = 1,
    /// Brotli.
    Brotli = 2,
    /// Zstandard with a dictionary the sender shipped on this connection
    /// (`DICTIONARY` frame); the zstd frame names the dictionary. Used only
    /// when both sides agreed on [`crate::features::ZSTD_DICTIONARIES`]; see
    /// [`dictionary`].
    ZstdDict = 3,
}

impl Algorithm {
    /// Every algorithm, in wire-id order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::None,
        Algorithm::Zstd,
        Algorithm::Brotli,
        Algorithm::ZstdDict,
    ];

    /// The wire id.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The algorithm of a wire id, if known.
    pub fn from_id(id: u8) -> Option<Algorithm> {
        match id {
            0 => Some(Algorithm::None),
            1 => Some(Algorithm::Zstd),
            2 => Some(Algorithm::Brotli),
            3 => Some(Algorithm::ZstdDict),
            _ => None,
        }
    }

    /// Whether this build can compress and decompress it: `none` always,
    /// `zstd` (and `zstd-dict`) and `brotli` with their cargo features. Only
    /// these are offered in the handshake (`zstd-dict` as a feature bit).
    ///
    /// ```
    /// use polycall_proto::compress::Algorithm;
    /// assert!(Algorithm::None.is_built());
    /// assert_eq!(Algorithm::Zstd.is_built(), cfg!(feature = "zstd"));
    /// ```
    pub fn is_built(self) -> bool {
        match self {
            Algorithm::None => true,
            Algorithm::Zstd | Algorithm::ZstdDict => cfg!(feature = "zstd"),
            Algorithm::Brotli => cfg!(feature = "brotli"),
        }
    }

    /// The algorithms this build serves, best first, `none` last: what a
    /// handshake offers by default (`zstd-dict` is not in the list: it is
    /// agreed with a feature bit, [`crate::features::ZSTD_DICTIONARIES`]).
    pub fn built() -> Vec<Algorithm> {
        [Algorithm::Zstd, Algorithm::Brotli, Algorithm::None]
            .into_iter()
            .filter(|a| a.is_built())
            .collect()
    }

    /// A short lowercase name (`none`, `zstd`, `brotli`, `zstd-dict`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::None => "none",
            Algorithm::Zstd => "zstd",
            Algorithm::Brotli => "brotli",
            Algorithm::ZstdDict => "zstd-dict",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An algorithm and a level: one way to encode a message.
///
/// Levels are the algorithm's own: zstd's run from negative "fast" levels to
/// 22, brotli's qualities from 0 to 11. [`Choice::NONE`] has level 0.
///
/// ```
/// use polycall_proto::compress::{Algorithm, Choice};
/// let choice = Choice::zstd(3);
/// assert_eq!(choice.algorithm, Algorithm::Zstd);
/// assert_eq!(choice.to_string(), "zstd:3");
/// assert_eq!(Choice::NONE.to_string(), "none");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Choice {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The algorithm's level (ignored for [`Algorithm::None`]).
    pub level: i32,
}

impl Choice {
    /// Send the payload uncompressed.
    pub const NONE: Choice = Choice {
        algorithm: Algorithm::None,
        level: 0,
    };

    /// zstd at `level`.
    pub fn zstd(level: i32) -> Choice {
        Choice {
            algorithm: Algorithm::Zstd,
            level,
        }
    }

    /// brotli at quality `level` (0 to 11).
    pub fn brotli(level: i32) -> Choice {
        Choice {
            algorithm: Algorithm::Brotli,
            level,
        }
    }
}

impl Default for Choice {
    fn default() -> Self {
        Choice::NONE
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.algorithm {
            Algorithm::None => f.write_str("none"),
            algorithm => write!(f, "{}:{}", algorithm.name(), self.level),
        }
    }
}

/// Why a payload could not be compressed or decompressed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The decompressed payload would be larger than the limit the caller set.
    #[error("decompressed payload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The input is not a valid stream of the algorithm.
    #[error("corrupt {algorithm} payload: {detail}")]
    Corrupt {
        /// The algorithm the input was decoded as.
        algorithm: Algorithm,
        /// What was wrong with it.
        detail: String,
    },
    /// The encoder failed (for example an unsupported level).
    #[error("{algorithm} compression failed: {detail}")]
    Encode {
        /// The algorithm that failed.
        algorithm: Algorithm,
        /// What the encoder reported.
        detail: String,
    },
    /// This build leaves the algorithm out (its cargo feature is off); it
    /// is never offered in the handshake, so only a peer that ignores the
    /// negotiation sends it.
    #[error("{algorithm} is not built into this program (enable polycall's `{algorithm}` feature)")]
    Unsupported {
        /// The algorithm asked for.
        algorithm: Algorithm,
    },
    /// A dictionary the peer shipped was refused (too large, one too many, not in
    /// zstd's format, a repeated id), or a message names a dictionary never shipped.
    #[error("zstd dictionary refused: {detail}")]
    Dictionary {
        /// What was wrong.
        detail: String,
    },
}

impl CompressError {
    #[cfg_attr(not(any(feature = "zstd", feature = "brotli")), allow(dead_code))]
    fn corrupt(algorithm: Algorithm, detail: impl Into<String>) -> Self {
        CompressError::Corrupt {
            algorithm,
            detail: detail.into(),
        }
    }

    #[cfg_attr(not(any(feature = "zstd", feature = "brotli")), allow(dead_code))]
    fn encode(algorithm: Algorithm, detail: impl Into<String>) -> Self {
        CompressError::Encode {
            algorithm,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_ids_round_trip() {
        for algorithm in Algorithm::ALL {
            assert_eq!(Algorithm::from_id(algorithm.id()), Some(algorithm));
        }
        assert_eq!(Algorithm::from_id(3), Some(Algorithm::ZstdDict));
        assert_eq!(Algorithm::from_id(4), None);
        assert_eq!(Algorithm::Brotli.id(), 2);
        assert_eq!(Algorithm::None.name(), "none");
    }

    #[test]
    fn choice_display_and_constructors() {
        assert_eq!(Choice::brotli(5).to_string(), "brotli:5");
        assert_eq!(Choice::zstd(-3).to_string(), "zstd:-3");
        assert_eq!(Choice::default(), Choice::NONE);
    }

    #[test]
    fn errors_have_clear_messages() {
        let e = CompressError::TooLarge { limit: 1024 };
        assert_eq!(
            e.to_string(),
            "decompressed payload exceeds the limit of 1024 bytes"
        );
        let e = CompressError::corrupt(Algorithm::Zstd, "unknown frame");
        assert_eq!(e.to_string(), "corrupt zstd payload: unknown frame");
    }
}
