//! Bounds-checked little-endian reading of frame bodies.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::FrameError;
use crate::frame::FrameType;

/// Reads a frame body. Every read is bounds-checked and fails with
/// [`FrameError::Malformed`]; payload slices share the body's allocation.
pub(crate) struct Reader<'a> {
    body: &'a Bytes,
    pos: usize,
    frame: FrameType,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(body: &'a Bytes, frame: FrameType) -> Self {
        Self {
            body,
            pos: 0,
            frame,
        }
    }

    pub(crate) fn err(&self, reason: &'static str) -> FrameError {
        FrameError::Malformed {
            frame: self.frame,
            reason,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.body.len())
            .ok_or_else(|| self.err(what))?;
        let s = &self.body[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// `n` bytes as a slice of the body (no copy).
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, FrameError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.body.slice(start..self.pos))
    }

    pub(crate) fn raw(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        self.take(n, what)
    }

    pub(crate) fn str(&mut self, n: usize, what: &'static str) -> Result<&'a str, FrameError> {
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| self.err("text is not UTF-8"))
    }

    /// Text prefixed by a u8 length.
    pub(crate) fn str8(&mut self, what: &'static str) -> Result<&'a str, FrameError> {
        let n = self.u8(what)?;
        self.str(n.into(), what)
    }

    /// Text prefixed by a u16 length.
    pub(crate) fn str16(&mut self, what: &'static str) -> Result<&'a str, FrameError> {
        let n = self.u16(what)?;
        self.str(n.into(), what)
    }

    /// A list of u8 ids prefixed by a u8 count.
    pub(crate) fn list8(&mut self, what: &'static str) -> Result<Vec<u8>, FrameError> {
        let n = self.u8(what)?;
        Ok(self.take(n.into(), what)?.to_vec())
    }

    /// Everything left (no copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.body.len();
        self.body.slice(start..)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    /// Fails unless the whole body was read.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        if self.pos == self.body.len() {
            Ok(())
        } else {
            Err(self.err("trailing bytes after the last field"))
        }
    }
}

pub(crate) fn put_str8(buf: &mut BytesMut, s: &str) {
    debug_assert!(s.len() <= usize::from(u8::MAX));
    buf.put_u8(s.len() as u8);
    buf.put_slice(s.as_bytes());
}

pub(crate) fn put_str16(buf: &mut BytesMut, s: &str) {
    debug_assert!(s.len() <= usize::from(u16::MAX));
    buf.put_u16_le(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

pub(crate) fn put_list8(buf: &mut BytesMut, ids: &[u8]) {
    debug_assert!(ids.len() <= usize::from(u8::MAX));
    buf.put_u8(ids.len() as u8);
    buf.put_slice(ids);
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
