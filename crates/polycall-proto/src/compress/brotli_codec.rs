//! brotli: a one-shot encoder, and a strict streaming decoder whose memory
//! stays within the caller's limit.

use std::panic::{AssertUnwindSafe, catch_unwind};

use brotli::enc::StandardAlloc;
use brotli::enc::encode::{
    BrotliEncoderDestroyInstance, BrotliEncoderOperation, BrotliEncoderParameter,
    BrotliEncoderStateStruct,
};
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState};

use super::codec::UNKNOWN_SIZE_GUESS_FACTOR;
use super::{Algorithm, CompressError};

/// The smallest and largest brotli window (log2) the encoder uses.
///
/// Windows below 2^18 make brotli's Rust encoder switch to much slower hash
/// tables at qualities 5 and up, for no gain, so small inputs still get 18.
const BROTLI_MIN_LGWIN: u32 = 18;
const BROTLI_MAX_LGWIN: u32 = 24;

/// The qualities the encoder accepts.
pub(super) const QUALITIES: std::ops::RangeInclusive<i32> = 0..=11;

/// The brotli window (log2) for an input of `len` bytes.
fn brotli_lgwin(len: usize) -> u32 {
    // The window holds 2^lgwin - 16 bytes.
    let needed = usize::BITS - (len.saturating_add(16)).leading_zeros();
    needed.clamp(BROTLI_MIN_LGWIN, BROTLI_MAX_LGWIN)
}

/// Compresses `input` at quality `level`, appending to `out` (left as it was on error).
pub(super) fn compress(level: i32, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
    if !QUALITIES.contains(&level) {
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

type BrotliDecoder = BrotliState<BoundedAlloc, StandardAlloc, StandardAlloc>;

/// brotli's byte allocator for decoding: it refuses (with the empty cell the
/// decoder takes as a failed allocation) any single allocation larger than
/// its budget. The only large one is the ring buffer, which a valid stream
/// of at most `limit` bytes never needs larger than the next power of two of
/// `limit + 16` (a window holds 2^lgwin - 16 bytes); a stream that declares
/// more is cut short before it gets the memory.
struct BoundedAlloc {
    budget: usize,
}

/// What the decoder allocates past its ring buffer's size, and some.
const BROTLI_RING_SLACK: usize = 1024;
/// The smallest ring buffer the decoder allocates.
const BROTLI_MIN_RING: usize = 1024;

impl BoundedAlloc {
    fn for_limit(limit: usize) -> Self {
        // A window holds 2^lgwin - 16 bytes: what a `limit`-byte message needs.
        let ring = limit
            .saturating_add(16)
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

/// Compressed bytes handed to the decoder between two calls of the pause hook: a
/// fraction of a millisecond of decoding on a current core (8 KiB of well-compressed
/// text decode to 30–60 KiB).
pub(super) const DECODE_STEP: usize = 8 * 1024;

/// Why [`brotli_decode`] stopped.
enum Refused {
    /// The ring buffer was refused while the input was still going in by steps.
    WindowWhileStepping,
    /// Any other failure: final.
    Error(CompressError),
}

impl From<CompressError> for Refused {
    fn from(e: CompressError) -> Self {
        Refused::Error(e)
    }
}

/// The first output buffer for brotli, before it grows.
const BROTLI_FIRST_BUFFER: usize = 16 * 1024;

/// Decodes `input` into at most `limit` bytes, calling `pause` between steps of
/// [`DECODE_STEP`] input bytes.
pub(super) fn decompress(
    input: &[u8],
    limit: usize,
    pause: &mut dyn FnMut(),
) -> Result<Vec<u8>, CompressError> {
    if input.is_empty() {
        return Err(CompressError::corrupt(Algorithm::Brotli, "empty input"));
    }
    let decode = |step: usize, pause: &mut dyn FnMut()| {
        catch_unwind(AssertUnwindSafe(|| {
            brotli_decode(input, limit, step, pause)
        }))
    };
    let first = match decode(DECODE_STEP, pause) {
        // Fed in steps, the decoder cannot see where the stream ends and asks for the
        // whole window the stream declares; a window past the ring-buffer budget is
        // then refused though the content may fit. Fed at once it sizes the ring
        // buffer to the content: decode again that way.
        Ok(Err(Refused::WindowWhileStepping)) => decode(input.len(), &mut || {}),
        other => other,
    };
    match first.map(|r| {
        r.map_err(|e| match e {
            Refused::WindowWhileStepping => CompressError::TooLarge { limit },
            Refused::Error(e) => e,
        })
    }) {
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
/// held to a window for `limit` bytes by [`BoundedAlloc`]. The input goes
/// in by steps of [`DECODE_STEP`] bytes, with a call to `pause` before each step
/// but the first: the decoder decodes whole meta-blocks as soon as it has them, so
/// a step of input bounds the work done between two pauses (a step of output
/// would not).
fn brotli_decode(
    input: &[u8],
    limit: usize,
    step: usize,
    pause: &mut dyn FnMut(),
) -> Result<Vec<u8>, Refused> {
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
    // `fed`: the input handed to the decoder so far; it has used `in_offset` of it.
    let mut fed = step.min(input.len());
    let mut available_in = fed;
    let mut in_offset = 0;
    let mut total_out = 0;
    let mut hungry = false;
    loop {
        if hungry {
            pause();
            fed += step.min(input.len() - fed);
            available_in = fed - in_offset;
            hungry = false;
        }
        if written == output.len() {
            if output.len() >= limit {
                // The buffer is at the limit: one more byte means too large.
                available_in = input.len() - in_offset;
                return match brotli_at_limit(&mut decoder, input, &mut available_in, &mut in_offset)
                {
                    Ok(()) => {
                        output.truncate(written);
                        Ok(output)
                    }
                    Err(e) => Err(e.with_limit(limit).into()),
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
            &input[..fed],
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
                    )
                    .into());
                }
                output.truncate(written);
                return Ok(output);
            }
            BrotliResult::NeedsMoreOutput => {
                if written < output.len() && before == (in_offset, written) {
                    return Err(CompressError::corrupt(
                        Algorithm::Brotli,
                        "the decoder made no progress",
                    )
                    .into());
                }
            }
            BrotliResult::NeedsMoreInput if fed < input.len() => hungry = true,
            BrotliResult::NeedsMoreInput => {
                return Err(CompressError::corrupt(Algorithm::Brotli, "truncated stream").into());
            }
            BrotliResult::ResultFailure if refused_ring_buffer(&decoder) && fed < input.len() => {
                return Err(Refused::WindowWhileStepping);
            }
            BrotliResult::ResultFailure if refused_ring_buffer(&decoder) => {
                return Err(CompressError::TooLarge { limit }.into());
            }
            BrotliResult::ResultFailure => {
                return Err(CompressError::corrupt(
                    Algorithm::Brotli,
                    format!("invalid stream ({:?})", decoder.error_code),
                )
                .into());
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
