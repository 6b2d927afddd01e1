//! zstd: one compression context per level, one decompression context, and
//! a decoder that never allocates past the caller's limit.

use std::io::Cursor;

use zstd::zstd_safe::{self, DCtx, zstd_sys::ZSTD_ErrorCode};

use super::codec::{UNKNOWN_SIZE_GUESS_FACTOR, UNKNOWN_SIZE_MIN_GUESS, allocate};
use super::{Algorithm, CompressError};

/// The levels the encoder accepts.
pub(super) fn levels() -> std::ops::RangeInclusive<i32> {
    zstd::compression_level_range()
}

/// One compression context per level, created on first use.
///
/// A context costs tens of microseconds and a few hundred KiB to set up;
/// reusing one makes compressing a 1 KiB message cost a couple of
/// microseconds.
#[derive(Default)]
pub(super) struct Encoders {
    contexts: Vec<(i32, zstd::bulk::Compressor<'static>)>,
}

impl Encoders {
    /// The levels that have a context.
    pub(super) fn levels(&self) -> Vec<i32> {
        self.contexts.iter().map(|(level, _)| *level).collect()
    }

    /// The context for `level`, made if it does not exist yet.
    pub(super) fn context(
        &mut self,
        level: i32,
    ) -> Result<&mut zstd::bulk::Compressor<'static>, CompressError> {
        let index = match self.contexts.iter().position(|(l, _)| *l == level) {
            Some(index) => index,
            None => {
                let context = zstd::bulk::Compressor::new(level)
                    .map_err(|e| CompressError::encode(Algorithm::Zstd, e.to_string()))?;
                self.contexts.push((level, context));
                self.contexts.len() - 1
            }
        };
        Ok(&mut self.contexts[index].1)
    }

    /// Compresses `input` at `level`, appending to `out` (left as it was on error).
    pub(super) fn compress(
        &mut self,
        level: i32,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        let context = self.context(level)?;
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

/// The decompression context, kept between messages.
#[derive(Default)]
pub(super) struct Decoder {
    context: Option<DCtx<'static>>,
}

impl Decoder {
    /// Whether the context has been made.
    pub(super) fn is_ready(&self) -> bool {
        self.context.is_some()
    }

    /// Decodes `input` into at most `limit` bytes.
    pub(super) fn decompress(
        &mut self,
        input: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, CompressError> {
        if input.is_empty() {
            return Err(CompressError::corrupt(Algorithm::Zstd, "empty input"));
        }
        let declared = declared_zstd_size(input)?;
        if declared.known > limit as u64 {
            return Err(CompressError::TooLarge { limit });
        }
        let context = self.context.get_or_insert_with(DCtx::create);
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
