//! The codecs: [`Compressor`] and [`Decompressor`], with reusable contexts.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use brotli::enc::StandardAlloc;
use brotli::enc::encode::{
    BrotliEncoderDestroyInstance, BrotliEncoderOperation, BrotliEncoderParameter,
    BrotliEncoderStateStruct,
};
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState};
use zstd::zstd_safe::{self, DCtx, zstd_sys::ZSTD_ErrorCode};

use super::{Algorithm, Choice, CompressError};

/// The smallest and largest brotli window (log2) the encoder uses.
///
/// Windows below 2^18 make brotli's Rust encoder switch to much slower hash
/// tables at qualities 5 and up, for no gain, so small inputs still get 18.
const BROTLI_MIN_LGWIN: u32 = 18;
const BROTLI_MAX_LGWIN: u32 = 24;

/// How much a frame of unknown content size is first assumed to expand.
const UNKNOWN_SIZE_GUESS_FACTOR: usize = 4;
/// The smallest first buffer for a frame of unknown content size.
const UNKNOWN_SIZE_MIN_GUESS: usize = 64 * 1024;

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
    zstd: Vec<(i32, zstd::bulk::Compressor<'static>)>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let levels: Vec<i32> = self.zstd.iter().map(|(level, _)| *level).collect();
        f.debug_struct("Compressor")
            .field("zstd_levels", &levels)
            .finish()
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
            Algorithm::Zstd => self.compress_zstd(choice.level, input, out),
            Algorithm::Brotli => compress_brotli(choice.level, input, out),
        }
    }

    /// Sets up whatever `choice` needs (a zstd context for its level), so
    /// that the first [`compress`](Self::compress) with it does not pay for
    /// that. Returns an error for a level the encoder rejects.
    pub fn prepare(&mut self, choice: Choice) -> Result<(), CompressError> {
        match choice.algorithm {
            Algorithm::None => Ok(()),
            Algorithm::Zstd => self.zstd_context(choice.level).map(|_| ()),
            Algorithm::Brotli if (0..=11).contains(&choice.level) => Ok(()),
            Algorithm::Brotli => Err(CompressError::encode(
                Algorithm::Brotli,
                format!("quality {} is outside 0..=11", choice.level),
            )),
        }
    }

    fn zstd_context(
        &mut self,
        level: i32,
    ) -> Result<&mut zstd::bulk::Compressor<'static>, CompressError> {
        let index = match self.zstd.iter().position(|(l, _)| *l == level) {
            Some(index) => index,
            None => {
                let context = zstd::bulk::Compressor::new(level)
                    .map_err(|e| CompressError::encode(Algorithm::Zstd, e.to_string()))?;
                self.zstd.push((level, context));
                self.zstd.len() - 1
            }
        };
        Ok(&mut self.zstd[index].1)
    }

    fn compress_zstd(
        &mut self,
        level: i32,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let context = self.zstd_context(level)?;
        let start = out.len();
        out.reserve(zstd_safe::compress_bound(input.len()));
        let mut cursor = Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        let result = context.compress_to_buffer(input, &mut cursor);
        if let Err(e) = result {
            out.truncate(start);
            return Err(CompressError::encode(Algorithm::Zstd, e.to_string()));
        }
        Ok(())
    }
}

/// The brotli window (log2) for an input of `len` bytes.
fn brotli_lgwin(len: usize) -> u32 {
    // The window holds 2^lgwin - 16 bytes.
    let needed = usize::BITS - (len.saturating_add(16)).leading_zeros();
    needed.clamp(BROTLI_MIN_LGWIN, BROTLI_MAX_LGWIN)
}

fn compress_brotli(level: i32, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
    if !(0..=11).contains(&level) {
        return Err(CompressError::encode(
            Algorithm::Brotli,
            format!("quality {level} is outside 0..=11"),
        ));
    }
    let start = out.len();
    let bound = brotli::enc::BrotliEncoderMaxCompressedSize(input.len()).max(input.len() + 64);
    out.resize(start + bound, 0);
    let written = catch_unwind(AssertUnwindSafe(|| {
        brotli_encode(level, input, &mut out[start..])
    }));
    match written {
        Ok(Some(written)) => {
            out.truncate(start + written);
            Ok(())
        }
        Ok(None) => {
            out.truncate(start);
            Err(CompressError::encode(
                Algorithm::Brotli,
                "the encoder did not finish the stream",
            ))
        }
        Err(_) => {
            out.truncate(start);
            Err(CompressError::encode(
                Algorithm::Brotli,
                "the encoder panicked",
            ))
        }
    }
}

/// Runs a one-shot brotli encode into `output`; the number of bytes written.
fn brotli_encode(quality: i32, input: &[u8], output: &mut [u8]) -> Option<usize> {
    let mut state = BrotliEncoderStateStruct::new(StandardAlloc::default());
    state.set_parameter(BrotliEncoderParameter::BROTLI_PARAM_QUALITY, quality as u32);
    state.set_parameter(
        BrotliEncoderParameter::BROTLI_PARAM_LGWIN,
        brotli_lgwin(input.len()),
    );
    state.set_parameter(
        BrotliEncoderParameter::BROTLI_PARAM_SIZE_HINT,
        u32::try_from(input.len()).unwrap_or(u32::MAX),
    );
    let mut available_in = input.len();
    let mut in_offset = 0;
    let mut available_out = output.len();
    let mut out_offset = 0;
    let mut total_out = Some(0);
    let mut ok = state.compress_stream(
        BrotliEncoderOperation::BROTLI_OPERATION_FINISH,
        &mut available_in,
        input,
        &mut in_offset,
        &mut available_out,
        output,
        &mut out_offset,
        &mut total_out,
        &mut |_: &mut brotli::interface::PredictionModeContextMap<brotli::InputReferenceMut>,
              _: &mut [brotli::interface::StaticCommand],
              _: brotli::InputPair,
              _: &mut StandardAlloc| (),
    );
    ok &= state.is_finished();
    BrotliEncoderDestroyInstance(&mut state);
    ok.then_some(out_offset)
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
    zstd: Option<DCtx<'static>>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("zstd_context", &self.zstd.is_some())
            .finish()
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
    /// decoder's ring buffer is refused anything past the next power of two
    /// of `limit`.
    pub fn decompress(
        &mut self,
        algorithm: Algorithm,
        input: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, CompressError> {
        match algorithm {
            Algorithm::None => {
                if input.len() > limit {
                    Err(CompressError::TooLarge { limit })
                } else {
                    Ok(input.to_vec())
                }
            }
            Algorithm::Zstd => self.decompress_zstd(input, limit),
            Algorithm::Brotli => decompress_brotli(input, limit),
        }
    }

    fn decompress_zstd(&mut self, input: &[u8], limit: usize) -> Result<Vec<u8>, CompressError> {
        if input.is_empty() {
            return Err(CompressError::corrupt(Algorithm::Zstd, "empty input"));
        }
        let declared = declared_zstd_size(input)?;
        if declared.known > limit as u64 {
            return Err(CompressError::TooLarge { limit });
        }
        let context = self.zstd.get_or_insert_with(DCtx::create);
        if !declared.unknown {
            // Every frame says how large it is, and all of them fit: decode
            // in one go into a buffer of exactly that size. A frame whose
            // content outgrows its header fails rather than reallocating.
            let size = declared.known as usize;
            let mut buffer = allocate(size, limit)?;
            return match context.decompress(&mut buffer, input) {
                Ok(written) if written == size => Ok(buffer),
                Ok(_) => Err(CompressError::corrupt(
                    Algorithm::Zstd,
                    "content is shorter than its declared size",
                )),
                Err(code) if is_dst_too_small(code) => Err(CompressError::corrupt(
                    Algorithm::Zstd,
                    "content is larger than its declared size",
                )),
                Err(code) => Err(zstd_corrupt(code)),
            };
        }
        // Some frame does not record its size. Decoding in one shot needs no
        // window buffer, so guess a size, and double it (up to `limit`) each
        // time the output does not fit: memory stays within `limit`, and the
        // work within about twice that of the final attempt.
        let guess = input
            .len()
            .saturating_mul(UNKNOWN_SIZE_GUESS_FACTOR)
            .max(UNKNOWN_SIZE_MIN_GUESS)
            .max(declared.known as usize);
        let mut capacity = guess.min(limit);
        loop {
            let mut buffer = allocate(capacity, limit)?;
            match context.decompress(&mut buffer, input) {
                Ok(_) => return Ok(buffer),
                Err(code) if is_dst_too_small(code) => {
                    if capacity >= limit {
                        return Err(CompressError::TooLarge { limit });
                    }
                    capacity = capacity.saturating_mul(2).min(limit);
                }
                Err(code) => return Err(zstd_corrupt(code)),
            }
        }
    }
}

/// What the frame headers of a zstd input say about its decompressed size.
struct DeclaredSize {
    /// The total of the frames that record their size.
    known: u64,
    /// Whether some frame does not record its size.
    unknown: bool,
}

fn declared_zstd_size(mut data: &[u8]) -> Result<DeclaredSize, CompressError> {
    let mut declared = DeclaredSize {
        known: 0,
        unknown: false,
    };
    while !data.is_empty() {
        let frame_len = zstd_safe::find_frame_compressed_size(data).map_err(zstd_corrupt)?;
        if frame_len == 0 || frame_len > data.len() {
            return Err(CompressError::corrupt(Algorithm::Zstd, "bad frame length"));
        }
        match zstd_safe::get_frame_content_size(data) {
            Ok(Some(size)) => declared.known = declared.known.saturating_add(size),
            Ok(None) => declared.unknown = true,
            Err(_) => {
                return Err(CompressError::corrupt(Algorithm::Zstd, "bad frame header"));
            }
        }
        data = &data[frame_len..];
    }
    Ok(declared)
}

fn is_dst_too_small(code: zstd_safe::ErrorCode) -> bool {
    zstd_safe::is_error_kind(code, ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall)
}

fn zstd_corrupt(code: zstd_safe::ErrorCode) -> CompressError {
    CompressError::corrupt(Algorithm::Zstd, zstd_safe::get_error_name(code))
}

/// An empty buffer with room for exactly `size` bytes, `size <= limit`.
fn allocate(size: usize, limit: usize) -> Result<Vec<u8>, CompressError> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(size)
        .map_err(|_| CompressError::TooLarge { limit })?;
    Ok(buffer)
}

type BrotliDecoder = BrotliState<BoundedAlloc, StandardAlloc, StandardAlloc>;

/// brotli's byte allocator for decoding: it refuses (with the empty cell the
/// decoder takes as a failed allocation) any single allocation larger than
/// its budget. The only large one is the ring buffer, which a valid stream
/// of at most `limit` bytes never needs larger than the next power of two;
/// a stream that declares more is cut short before it gets the memory.
struct BoundedAlloc {
    budget: usize,
}

/// What the decoder allocates past its ring buffer's size, and some.
const BROTLI_RING_SLACK: usize = 1024;
/// The smallest ring buffer the decoder allocates.
const BROTLI_MIN_RING: usize = 1024;

impl BoundedAlloc {
    fn for_limit(limit: usize) -> Self {
        let ring = limit
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .max(BROTLI_MIN_RING);
        BoundedAlloc {
            budget: ring.saturating_add(BROTLI_RING_SLACK),
        }
    }
}

impl brotli::Allocator<u8> for BoundedAlloc {
    type AllocatedMemory = <StandardAlloc as brotli::Allocator<u8>>::AllocatedMemory;

    fn alloc_cell(&mut self, len: usize) -> Self::AllocatedMemory {
        if len > self.budget {
            return Self::AllocatedMemory::default();
        }
        <StandardAlloc as brotli::Allocator<u8>>::alloc_cell(&mut StandardAlloc::default(), len)
    }

    fn free_cell(&mut self, _data: Self::AllocatedMemory) {}
}

/// Whether the decoder failed because [`BoundedAlloc`] refused it a ring
/// buffer (`BROTLI_DECODER_ERROR_ALLOC_RING_BUFFER_1` and `_2`).
fn refused_ring_buffer(decoder: &BrotliDecoder) -> bool {
    matches!(decoder.error_code as i32, -26 | -27)
}

/// The first output buffer for brotli, before it grows.
const BROTLI_FIRST_BUFFER: usize = 16 * 1024;

fn decompress_brotli(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressError> {
    if input.is_empty() {
        return Err(CompressError::corrupt(Algorithm::Brotli, "empty input"));
    }
    match catch_unwind(AssertUnwindSafe(|| brotli_decode(input, limit))) {
        Ok(result) => result,
        Err(_) => Err(CompressError::corrupt(
            Algorithm::Brotli,
            "the decoder panicked",
        )),
    }
}

/// Streams `input` through a brotli decoder into a buffer that grows, by
/// doubling, up to `limit` bytes and no further.
///
/// The decoder is the strict one (no large windows), and its ring buffer is
/// held to the next power of two of `limit` by [`BoundedAlloc`].
fn brotli_decode(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressError> {
    let mut decoder = BrotliDecoder::new_strict(
        BoundedAlloc::for_limit(limit),
        StandardAlloc::default(),
        StandardAlloc::default(),
    );
    let first = input
        .len()
        .saturating_mul(UNKNOWN_SIZE_GUESS_FACTOR)
        .max(BROTLI_FIRST_BUFFER)
        .min(limit);
    let mut output = vec![0u8; first];
    let mut written = 0;
    let mut available_in = input.len();
    let mut in_offset = 0;
    let mut total_out = 0;
    loop {
        if written == output.len() {
            if output.len() >= limit {
                // The buffer is at the limit: one more byte means too large.
                return match brotli_at_limit(&mut decoder, input, &mut available_in, &mut in_offset)
                {
                    Ok(()) => {
                        output.truncate(written);
                        Ok(output)
                    }
                    Err(e) => Err(e.with_limit(limit)),
                };
            }
            let grown = output.len().saturating_mul(2).clamp(1, limit);
            output.resize(grown, 0);
        }
        let before = (in_offset, written);
        let mut available_out = output.len() - written;
        let mut out_offset = written;
        let result = BrotliDecompressStream(
            &mut available_in,
            &mut in_offset,
            input,
            &mut available_out,
            &mut out_offset,
            &mut output,
            &mut total_out,
            &mut decoder,
        );
        written = out_offset;
        match result {
            BrotliResult::ResultSuccess => {
                if in_offset != input.len() {
                    return Err(CompressError::corrupt(
                        Algorithm::Brotli,
                        "trailing bytes after the end of the stream",
                    ));
                }
                output.truncate(written);
                return Ok(output);
            }
            BrotliResult::NeedsMoreOutput => {
                if written < output.len() && before == (in_offset, written) {
                    return Err(CompressError::corrupt(
                        Algorithm::Brotli,
                        "the decoder made no progress",
                    ));
                }
            }
            BrotliResult::NeedsMoreInput => {
                return Err(CompressError::corrupt(
                    Algorithm::Brotli,
                    "truncated stream",
                ));
            }
            BrotliResult::ResultFailure if refused_ring_buffer(&decoder) => {
                return Err(CompressError::TooLarge { limit });
            }
            BrotliResult::ResultFailure => {
                return Err(CompressError::corrupt(
                    Algorithm::Brotli,
                    format!("invalid stream ({:?})", decoder.error_code),
                ));
            }
        }
    }
}

/// The outcome of decoding past a full output buffer.
enum AtLimit {
    TooLarge,
    Corrupt(CompressError),
}

impl AtLimit {
    fn with_limit(self, limit: usize) -> CompressError {
        match self {
            AtLimit::TooLarge => CompressError::TooLarge { limit },
            AtLimit::Corrupt(e) => e,
        }
    }
}

/// With the output full, checks that the stream ends without another byte.
fn brotli_at_limit(
    decoder: &mut BrotliDecoder,
    input: &[u8],
    available_in: &mut usize,
    in_offset: &mut usize,
) -> Result<(), AtLimit> {
    let mut scratch = [0u8; 1];
    let mut total_out = 0;
    loop {
        let before = *in_offset;
        let mut available_out = 1;
        let mut out_offset = 0;
        let result = BrotliDecompressStream(
            available_in,
            in_offset,
            input,
            &mut available_out,
            &mut out_offset,
            &mut scratch,
            &mut total_out,
            decoder,
        );
        if out_offset > 0 {
            return Err(AtLimit::TooLarge);
        }
        match result {
            BrotliResult::ResultSuccess if *in_offset == input.len() => return Ok(()),
            BrotliResult::ResultSuccess => {
                return Err(AtLimit::Corrupt(CompressError::corrupt(
                    Algorithm::Brotli,
                    "trailing bytes after the end of the stream",
                )));
            }
            BrotliResult::NeedsMoreOutput if *in_offset != before => continue,
            BrotliResult::NeedsMoreOutput => {
                return Err(AtLimit::Corrupt(CompressError::corrupt(
                    Algorithm::Brotli,
                    "the decoder made no progress",
                )));
            }
            BrotliResult::NeedsMoreInput => {
                return Err(AtLimit::Corrupt(CompressError::corrupt(
                    Algorithm::Brotli,
                    "truncated stream",
                )));
            }
            BrotliResult::ResultFailure if refused_ring_buffer(decoder) => {
                return Err(AtLimit::TooLarge);
            }
            BrotliResult::ResultFailure => {
                return Err(AtLimit::Corrupt(CompressError::corrupt(
                    Algorithm::Brotli,
                    format!("invalid stream ({:?})", decoder.error_code),
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
