//! The codecs: [`Compressor`] and [`Decompressor`], with reusable contexts.
//!
//! Each algorithm lives in its own module behind its cargo feature
//! (`zstd`, `brotli`); an algorithm this build leaves out answers
//! [`CompressError::Unsupported`] and is never offered in the handshake.

#[cfg(feature = "brotli")]
use super::brotli_codec;
#[cfg(feature = "zstd")]
use super::zstd_codec;
use super::{Algorithm, Choice, CompressError};

/// How much a frame of unknown content size is first assumed to expand.
#[cfg_attr(not(any(feature = "zstd", feature = "brotli")), allow(dead_code))]
pub(super) const UNKNOWN_SIZE_GUESS_FACTOR: usize = 4;
/// The smallest first buffer for a frame of unknown content size.
#[cfg_attr(not(feature = "zstd"), allow(dead_code))]
pub(super) const UNKNOWN_SIZE_MIN_GUESS: usize = 64 * 1024;

/// Compresses payloads, keeping a zstd context per level it has used.
///
/// A zstd context costs tens of microseconds and a few hundred KiB to set up;
/// reusing one makes compressing a 1 KiB message cost a couple of
/// microseconds. brotli's encoder has no reusable state, so each brotli
/// message sets one up (which the selector's cost model accounts for).
///
/// ```
/// use polycall_proto::compress::{Choice, Compressor, Decompressor};
///
/// let input = b"polycall polycall polycall polycall polycall polycall".repeat(20);
/// let mut compressor = Compressor::new();
/// let mut wire = Vec::new();
/// compressor.compress(Choice::zstd(3), &input, &mut wire)?;
/// assert!(wire.len() < input.len());
///
/// let back = Decompressor::new().decompress(Choice::zstd(3).algorithm, &wire, input.len())?;
/// assert_eq!(back, input);
/// # Ok::<(), polycall_proto::compress::CompressError>(())
/// ```
#[derive(Default)]
pub struct Compressor {
    /// One zstd context per level, created on first use.
    #[cfg(feature = "zstd")]
    zstd: zstd_codec::Encoders,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Compressor");
        #[cfg(feature = "zstd")]
        debug.field("zstd_levels", &self.zstd.levels());
        debug.finish()
    }
}

impl Compressor {
    /// A compressor with no contexts yet: they are made on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compresses `input` with `choice`, appending the result to `out`.
    ///
    /// Whatever `out` held before is kept; on error it is left as it was.
    /// [`Choice::NONE`] appends `input` unchanged.
    ///
    /// The output is not necessarily smaller than the input (random bytes
    /// grow by a few bytes of framing): callers that want the smaller of the
    /// two compare the lengths, as [`AdaptiveCompressor::encode`] does.
    ///
    /// [`AdaptiveCompressor::encode`]: super::AdaptiveCompressor::encode
    pub fn compress(
        &mut self,
        choice: Choice,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        match choice.algorithm {
            Algorithm::None => {
                out.extend_from_slice(input);
                Ok(())
            }
            #[cfg(feature = "zstd")]
            Algorithm::Zstd => self.zstd.compress(choice.level, input, out),
            #[cfg(feature = "brotli")]
            Algorithm::Brotli => brotli_codec::compress(choice.level, input, out),
            #[cfg(feature = "zstd")]
            Algorithm::ZstdDict => Err(CompressError::Dictionary {
                detail: "a dictionary belongs to a method: AdaptiveCompressor::encode uses it"
                    .to_owned(),
            }),
            #[allow(unreachable_patterns)]
            algorithm => Err(CompressError::Unsupported { algorithm }),
        }
    }

    /// Sets up whatever `choice` needs (a zstd context for its level), so
    /// that the first [`compress`](Self::compress) with it does not pay for
    /// that. Returns an error for a level the encoder rejects, or an
    /// algorithm this build leaves out.
    pub fn prepare(&mut self, choice: Choice) -> Result<(), CompressError> {
        match choice.algorithm {
            Algorithm::None => Ok(()),
            #[cfg(feature = "zstd")]
            Algorithm::Zstd => self.zstd.context(choice.level).map(|_| ()),
            #[cfg(feature = "brotli")]
            Algorithm::Brotli if brotli_codec::QUALITIES.contains(&choice.level) => Ok(()),
            #[cfg(feature = "brotli")]
            Algorithm::Brotli => Err(CompressError::encode(
                Algorithm::Brotli,
                format!("quality {} is outside 0..=11", choice.level),
            )),
            #[cfg(feature = "zstd")]
            Algorithm::ZstdDict => Err(CompressError::Dictionary {
                detail: "a dictionary belongs to a method: AdaptiveCompressor::encode uses it"
                    .to_owned(),
            }),
            #[allow(unreachable_patterns)]
            algorithm => Err(CompressError::Unsupported { algorithm }),
        }
    }
}

/// Decompresses payloads, never allocating past the caller's limit.
///
/// The zstd context is kept between messages. Whatever the input - garbage,
/// a decompression bomb, a frame header that lies about its content size -
/// [`decompress`](Decompressor::decompress) returns an error rather than
/// allocating an output larger than `limit`, and never panics.
///
/// ```
/// use polycall_proto::compress::{Algorithm, CompressError, Decompressor};
///
/// let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 3).unwrap();
/// let mut decompressor = Decompressor::new();
/// let err = decompressor.decompress(Algorithm::Zstd, &bomb, 64 * 1024).unwrap_err();
/// assert!(matches!(err, CompressError::TooLarge { limit: 65536 }));
/// ```
#[derive(Default)]
pub struct Decompressor {
    #[cfg(feature = "zstd")]
    zstd: zstd_codec::Decoder,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Decompressor");
        #[cfg(feature = "zstd")]
        debug.field("zstd_context", &self.zstd.is_ready());
        debug.finish()
    }
}

impl Decompressor {
    /// A decompressor; its zstd context is made on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decompresses `input`, which was compressed with `algorithm`.
    ///
    /// Returns [`CompressError::TooLarge`] when the output would exceed
    /// `limit` bytes, and [`CompressError::Corrupt`] for anything that is not
    /// a valid stream, including truncated input and trailing bytes after a
    /// brotli stream. [`Algorithm::None`] returns a copy of `input`, subject
    /// to the same limit.
    ///
    /// Memory stays within the limit whatever the input claims: a zstd input
    /// whose frames declare their sizes is refused up front when they add up
    /// to more than `limit`, or decoded in one shot into a buffer of exactly
    /// that size (zstd then needs no window buffer); one that does not is
    /// decoded into a buffer that doubles up to `limit` and no further.
    /// brotli is streamed into a buffer that grows the same way, and its
    /// decoder's ring buffer is refused anything past the window a `limit`-byte
    /// message needs (the next power of two of `limit + 16`).
    pub fn decompress(
        &mut self,
        algorithm: Algorithm,
        input: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, CompressError> {
        self.decompress_pausing(algorithm, input, limit, &mut || {})
    }

    /// As [`Decompressor::decompress`], calling `pause` between steps of the work
    /// (brotli: every 16 KiB of compressed input; zstd decodes in one step). A
    /// thread that decodes large messages beside an event loop passes a pause that
    /// gives the core away for a moment (see `polycall_net::offload`).
    pub fn decompress_pausing(
        &mut self,
        algorithm: Algorithm,
        input: &[u8],
        limit: usize,
        pause: &mut dyn FnMut(),
    ) -> Result<Vec<u8>, CompressError> {
        #[cfg(not(feature = "brotli"))]
        let _ = &pause;
        match algorithm {
            Algorithm::None => {
                if input.len() > limit {
                    Err(CompressError::TooLarge { limit })
                } else {
                    Ok(input.to_vec())
                }
            }
            #[cfg(feature = "zstd")]
            Algorithm::Zstd => self.zstd.decompress(input, limit),
            #[cfg(feature = "zstd")]
            Algorithm::ZstdDict => self.zstd.decompress_with_dictionary(input, limit),
            #[cfg(feature = "brotli")]
            Algorithm::Brotli => brotli_codec::decompress(input, limit, pause),
            #[allow(unreachable_patterns)]
            algorithm => Err(CompressError::Unsupported { algorithm }),
        }
    }
}

#[cfg(feature = "zstd")]
impl Decompressor {
    /// Adds dictionary `id` the peer shipped (`DICTIONARY` frame), for its
    /// [`Algorithm::ZstdDict`] messages. Refused with
    /// [`CompressError::Dictionary`]: more than
    /// [`MAX_DICTIONARY_SIZE`](super::dictionary::MAX_DICTIONARY_SIZE) bytes,
    /// more than [`MAX_DICTIONARIES`](super::dictionary::MAX_DICTIONARIES), an id
    /// sent before or below
    /// [`FIRST_DICTIONARY_ID`](super::dictionary::FIRST_DICTIONARY_ID), not zstd's
    /// dictionary format or not carrying `id`.
    pub fn add_dictionary(&mut self, id: u32, data: &[u8]) -> Result<(), CompressError> {
        self.zstd.add_dictionary(id, data)
    }
}

/// An empty buffer with room for exactly `size` bytes, `size <= limit`.
#[cfg_attr(not(feature = "zstd"), allow(dead_code))]
pub(super) fn allocate(size: usize, limit: usize) -> Result<Vec<u8>, CompressError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(size)
        .map_err(|_| CompressError::TooLarge { limit })?;
    Ok(buffer)
}

#[cfg(all(test, feature = "zstd", feature = "brotli"))]
mod tests {
    use super::*;
    use zstd::zstd_safe;

    fn sample_text(len: usize) -> Vec<u8> {
        let words = [
            "alpha ",
            "beta ",
            "gamma ",
            "delta ",
            "{\"id\":",
            "42,",
            "\"ok\":true}\n",
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        }
        out.truncate(len);
        out
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn round_trips_every_algorithm_and_level() {
        let mut compressor = Compressor::new();
        let mut decompressor = Decompressor::new();
        let choices = (-5..=19)
            .map(Choice::zstd)
            .chain((0..=11).map(Choice::brotli))
            .chain([Choice::NONE]);
        for choice in choices {
            for input in [
                Vec::new(),
                b"x".to_vec(),
                sample_text(3000),
                random_bytes(700, 9),
            ] {
                let mut wire = b"header".to_vec();
                compressor.compress(choice, &input, &mut wire).unwrap();
                assert_eq!(&wire[..6], b"header", "{choice}: appends");
                let back = decompressor
                    .decompress(choice.algorithm, &wire[6..], input.len())
                    .unwrap_or_else(|e| panic!("{choice} on {} bytes: {e}", input.len()));
                assert_eq!(back, input, "{choice}");
            }
        }
    }

    #[test]
    fn compresses_repetitive_input() {
        let input = sample_text(64 * 1024);
        let mut compressor = Compressor::new();
        for choice in [
            Choice::zstd(1),
            Choice::zstd(9),
            Choice::brotli(1),
            Choice::brotli(6),
        ] {
            let mut wire = Vec::new();
            compressor.compress(choice, &input, &mut wire).unwrap();
            assert!(wire.len() * 3 < input.len(), "{choice}: {}", wire.len());
        }
    }

    #[test]
    fn large_round_trip_with_brotli_window() {
        let input = sample_text(3 << 20);
        let mut wire = Vec::new();
        Compressor::new()
            .compress(Choice::brotli(2), &input, &mut wire)
            .unwrap();
        let back = Decompressor::new()
            .decompress(Algorithm::Brotli, &wire, input.len())
            .unwrap();
        assert_eq!(back, input);
        let err = Decompressor::new()
            .decompress(Algorithm::Brotli, &wire, input.len() - 1)
            .unwrap_err();
        assert!(matches!(err, CompressError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn invalid_brotli_quality_is_an_error() {
        let mut out = vec![1, 2, 3];
        let err = Compressor::new()
            .compress(Choice::brotli(12), b"abc", &mut out)
            .unwrap_err();
        assert!(matches!(err, CompressError::Encode { .. }), "{err}");
        assert_eq!(out, [1, 2, 3]);
    }

    /// A zstd frame of `len` zeros, written by the streaming encoder without
    /// the content size in its header.
    fn zstd_zeros_unknown_size(len: usize) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.include_contentsize(false).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            encoder.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        encoder.finish().unwrap()
    }

    /// A zstd frame of `len` zeros whose header declares its size.
    fn zstd_zeros_known_size(len: usize) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.set_pledged_src_size(Some(len as u64)).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            encoder.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        encoder.finish().unwrap()
    }

    #[test]
    fn zstd_bomb_is_refused() {
        const LIMIT: usize = 1 << 20;
        let mut decompressor = Decompressor::new();

        // 100 MB of zeros that says so in its header: refused up front.
        let declared = zstd_zeros_known_size(100_000_000);
        assert!(declared.len() < 100_000);
        let err = decompressor
            .decompress(Algorithm::Zstd, &declared, LIMIT)
            .unwrap_err();
        assert!(
            matches!(err, CompressError::TooLarge { limit: LIMIT }),
            "{err}"
        );

        // The same without the size: decoded into at most LIMIT bytes.
        let undeclared = zstd_zeros_unknown_size(100_000_000);
        assert!(matches!(
            zstd_safe::get_frame_content_size(&undeclared),
            Ok(None)
        ));
        let err = decompressor
            .decompress(Algorithm::Zstd, &undeclared, LIMIT)
            .unwrap_err();
        assert!(
            matches!(err, CompressError::TooLarge { limit: LIMIT }),
            "{err}"
        );

        // Exactly at the limit is fine, one byte over is not.
        let exact = zstd_zeros_unknown_size(LIMIT);
        assert_eq!(
            decompressor
                .decompress(Algorithm::Zstd, &exact, LIMIT)
                .unwrap()
                .len(),
            LIMIT
        );
        let over = zstd_zeros_unknown_size(LIMIT + 1);
        assert!(matches!(
            decompressor.decompress(Algorithm::Zstd, &over, LIMIT),
            Err(CompressError::TooLarge { .. })
        ));

        // The context is still good afterwards.
        let frame = zstd::bulk::compress(b"still works", 3).unwrap();
        assert_eq!(
            decompressor
                .decompress(Algorithm::Zstd, &frame, 100)
                .unwrap(),
            b"still works"
        );
    }

    #[test]
    fn zstd_lying_content_size_is_corrupt() {
        // One MiB of zeros in a single-segment frame with a 4-byte size.
        let mut frame = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        let descriptor = frame[4];
        assert_eq!(descriptor >> 6, 2, "4-byte content size field");
        assert_eq!(descriptor & 0x20, 0x20, "single segment");
        // Claim 100 bytes: the decoder must not write past them.
        frame[5..9].copy_from_slice(&100u32.to_le_bytes());
        let err = Decompressor::new()
            .decompress(Algorithm::Zstd, &frame, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, CompressError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn brotli_decodes_in_steps_with_a_pause_between_them() {
        // 1 MiB of random letters from four (about 4:1 compressed): many steps.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let text: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"acgt"[(state >> 62) as usize]
            })
            .collect();
        let mut wire = Vec::new();
        Compressor::new()
            .compress(Choice::brotli(1), &text, &mut wire)
            .unwrap();
        let steps = wire.len().div_ceil(super::brotli_codec::DECODE_STEP);
        assert!(steps >= 8, "{} compressed bytes", wire.len());
        let mut pauses = 0;
        let back = Decompressor::new()
            .decompress_pausing(Algorithm::Brotli, &wire, text.len(), &mut || pauses += 1)
            .unwrap();
        assert_eq!(back, text);
        assert_eq!(pauses, steps - 1, "a pause between every two steps");
        // A stream cut short is still truncated, however it was fed.
        let cut = &wire[..wire.len() - 1];
        let err = Decompressor::new()
            .decompress_pausing(Algorithm::Brotli, cut, text.len(), &mut || {})
            .unwrap_err();
        assert!(matches!(err, CompressError::Corrupt { .. }), "{err}");
        // And one byte over the limit is still too large.
        let err = Decompressor::new()
            .decompress_pausing(Algorithm::Brotli, &wire, text.len() - 1, &mut || {})
            .unwrap_err();
        assert!(matches!(err, CompressError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn brotli_bomb_is_refused() {
        let zeros = vec![0u8; 8 << 20];
        let mut wire = Vec::new();
        Compressor::new()
            .compress(Choice::brotli(5), &zeros, &mut wire)
            .unwrap();
        assert!(wire.len() < 10_000);
        let err = Decompressor::new()
            .decompress(Algorithm::Brotli, &wire, 1 << 20)
            .unwrap_err();
        assert!(
            matches!(err, CompressError::TooLarge { limit: 1048576 }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut decompressor = Decompressor::new();
        for algorithm in [Algorithm::Zstd, Algorithm::Brotli] {
            for garbage in [
                Vec::new(),
                b"definitely not compressed".to_vec(),
                random_bytes(4096, 3),
                vec![0xff; 100],
            ] {
                match decompressor.decompress(algorithm, &garbage, 1 << 20) {
                    Err(CompressError::Corrupt { algorithm: a, .. }) => assert_eq!(a, algorithm),
                    other => panic!("{algorithm} on {} garbage bytes: {other:?}", garbage.len()),
                }
            }
        }
    }

    #[test]
    fn truncated_and_trailing_input_is_corrupt() {
        let input = sample_text(50_000);
        let mut compressor = Compressor::new();
        let mut decompressor = Decompressor::new();
        for choice in [Choice::zstd(3), Choice::brotli(4)] {
            let mut wire = Vec::new();
            compressor.compress(choice, &input, &mut wire).unwrap();
            let cut = &wire[..wire.len() / 2];
            assert!(matches!(
                decompressor.decompress(choice.algorithm, cut, 1 << 20),
                Err(CompressError::Corrupt { .. })
            ));
            wire.extend_from_slice(b"junk");
            assert!(matches!(
                decompressor.decompress(choice.algorithm, &wire, 1 << 20),
                Err(CompressError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn none_respects_the_limit() {
        let mut decompressor = Decompressor::new();
        assert_eq!(
            decompressor.decompress(Algorithm::None, b"abc", 3).unwrap(),
            b"abc"
        );
        assert!(matches!(
            decompressor.decompress(Algorithm::None, b"abcd", 3),
            Err(CompressError::TooLarge { limit: 3 })
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn round_trip(input in proptest::collection::vec(any::<u8>(), 0..4096), level in 1i32..6) {
                let mut compressor = Compressor::new();
                let mut decompressor = Decompressor::new();
                for choice in [Choice::zstd(level), Choice::brotli(level)] {
                    let mut wire = Vec::new();
                    compressor.compress(choice, &input, &mut wire).unwrap();
                    let back = decompressor.decompress(choice.algorithm, &wire, input.len()).unwrap();
                    prop_assert_eq!(&back, &input);
                }
            }

            #[test]
            fn garbage_never_exceeds_the_limit(
                input in proptest::collection::vec(any::<u8>(), 0..512),
                limit in 0usize..4096,
            ) {
                let mut decompressor = Decompressor::new();
                for algorithm in Algorithm::ALL {
                    if let Ok(out) = decompressor.decompress(algorithm, &input, limit) {
                        prop_assert!(out.len() <= limit);
                    }
                }
            }

            #[test]
            fn mangled_streams_never_exceed_the_limit(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                limit in 0usize..20_000,
            ) {
                let input = sample_text(10_000);
                let mut compressor = Compressor::new();
                let mut decompressor = Decompressor::new();
                for choice in [Choice::zstd(3), Choice::brotli(3)] {
                    let mut wire = Vec::new();
                    compressor.compress(choice, &input, &mut wire).unwrap();
                    for (at, byte) in &flips {
                        let at = at % wire.len();
                        wire[at] ^= byte;
                    }
                    if let Ok(out) = decompressor.decompress(choice.algorithm, &wire, limit) {
                        prop_assert!(out.len() <= limit);
                    }
                }
            }
        }
    }
}

/// A build without an algorithm refuses it by name, in both directions.
#[cfg(all(test, not(all(feature = "zstd", feature = "brotli"))))]
mod without_every_algorithm {
    use super::*;

    #[test]
    fn an_algorithm_left_out_is_unsupported() {
        for algorithm in Algorithm::ALL.into_iter().filter(|a| !a.is_built()) {
            let choice = Choice {
                algorithm,
                level: 3,
            };
            let mut out = Vec::new();
            let err = Compressor::new()
                .compress(choice, b"abc", &mut out)
                .unwrap_err();
            assert!(matches!(err, CompressError::Unsupported { algorithm: a } if a == algorithm));
            assert!(out.is_empty());
            let err = Compressor::new().prepare(choice).unwrap_err();
            assert!(matches!(err, CompressError::Unsupported { .. }));
            let err = Decompressor::new()
                .decompress(algorithm, b"abc", 64)
                .unwrap_err();
            assert!(err.to_string().contains("not built"), "{err}");
        }
    }
}
