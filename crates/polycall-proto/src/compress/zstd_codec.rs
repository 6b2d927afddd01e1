//! zstd: one compression context per level, one decompression context, and
//! a decoder that never allocates past the caller's limit.

use std::collections::HashMap;
use std::io::Cursor;

use zstd::zstd_safe::{self, DCtx, DDict, zstd_sys::ZSTD_ErrorCode};

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
        append_frame(out, input.len(), Algorithm::Zstd, |tail| {
            context
                .compress_to_buffer(input, tail)
                .map_err(|e| e.to_string())
        })
    }
}

/// Appends to `out` the zstd frame `compress` writes for an input of `input_len`
/// bytes (room for the worst case is made first); `out` is left as it was on error.
pub(super) fn append_frame(
    out: &mut Vec<u8>,
    input_len: usize,
    algorithm: Algorithm,
    compress: impl FnOnce(&mut Cursor<&mut Vec<u8>>) -> Result<usize, String>,
) -> Result<(), CompressError> {
    let start = out.len();
    out.reserve(zstd_safe::compress_bound(input_len));
    let mut tail = Cursor::new(&mut *out);
    tail.set_position(start as u64);
    if let Err(detail) = compress(&mut tail) {
        out.truncate(start);
        return Err(CompressError::encode(algorithm, detail));
    }
    Ok(())
}

/// The decompression context, kept between messages, and the dictionaries the
/// peer shipped.
#[derive(Default)]
pub(super) struct Decoder {
    context: Option<DCtx<'static>>,
    dictionaries: HashMap<u32, DDict<'static>>,
}

impl Decoder {
    /// Whether the context has been made.
    pub(super) fn is_ready(&self) -> bool {
        self.context.is_some()
    }

    /// Adds dictionary `id` shipped by the peer (see `super::dictionary`).
    pub(super) fn add_dictionary(&mut self, id: u32, data: &[u8]) -> Result<(), CompressError> {
        use super::dictionary::{MAX_DICTIONARIES, check_received};
        check_received(id, data)?;
        let refuse = |detail: String| Err(CompressError::Dictionary { detail });
        if self.dictionaries.contains_key(&id) {
            return refuse(format!("dictionary {id} was sent already"));
        }
        if self.dictionaries.len() >= MAX_DICTIONARIES {
            return refuse(format!(
                "a peer may send at most {MAX_DICTIONARIES} dictionaries"
            ));
        }
        let Some(ddict) = DDict::try_create(data) else {
            return refuse(format!("zstd refused dictionary {id}"));
        };
        self.dictionaries.insert(id, ddict);
        Ok(())
    }

    /// Decodes `input`, compressed with one of the peer's dictionaries, into at
    /// most `limit` bytes. The first zstd frame names the dictionary; zstd refuses a
    /// later frame that names another (one that names none is decoded with it).
    pub(super) fn decompress_with_dictionary(
        &mut self,
        input: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, CompressError> {
        let Some(id) = zstd_safe::get_dict_id_from_frame(input) else {
            return Err(CompressError::corrupt(
                Algorithm::ZstdDict,
                "the frame names no dictionary",
            ));
        };
        let id = id.get();
        let Some(ddict) = self.dictionaries.get(&id) else {
            return Err(CompressError::Dictionary {
                detail: format!("dictionary {id} was never sent"),
            });
        };
        let context = self.context.get_or_insert_with(DCtx::create);
        decode(context, Some(ddict), input, limit)
    }

    /// Decodes `input` into at most `limit` bytes.
    pub(super) fn decompress(
        &mut self,
        input: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, CompressError> {
        let context = self.context.get_or_insert_with(DCtx::create);
        decode(context, None, input, limit)
    }
}

/// Decodes `input` (with `ddict`, if given) into at most `limit` bytes.
fn decode(
    context: &mut DCtx<'static>,
    ddict: Option<&DDict<'static>>,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CompressError> {
    let algorithm = if ddict.is_some() {
        Algorithm::ZstdDict
    } else {
        Algorithm::Zstd
    };
    let mut run = |buffer: &mut Vec<u8>| match ddict {
        Some(d) => context.decompress_using_ddict(buffer, input, d),
        None => context.decompress(buffer, input),
    };
    if input.is_empty() {
        return Err(CompressError::corrupt(algorithm, "empty input"));
    }
    let declared = declared_zstd_size(input)?;
    if declared.known > limit as u64 {
        return Err(CompressError::TooLarge { limit });
    }
    if !declared.unknown {
        // Every frame says how large it is, and all of them fit: decode
        // in one go into a buffer of exactly that size. A frame whose
        // content outgrows its header fails rather than reallocating.
        let size = declared.known as usize;
        let mut buffer = allocate(size, limit)?;
        return match run(&mut buffer) {
            Ok(written) if written == size => Ok(buffer),
            Ok(_) => Err(CompressError::corrupt(
                algorithm,
                "content is shorter than its declared size",
            )),
            Err(code) if is_dst_too_small(code) => Err(CompressError::corrupt(
                algorithm,
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
        match run(&mut buffer) {
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
