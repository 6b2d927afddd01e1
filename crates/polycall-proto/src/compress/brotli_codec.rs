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

/// Decodes `input` into at most `limit` bytes.
pub(super) fn decompress(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressError> {
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
