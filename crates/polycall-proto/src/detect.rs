//! Telling dialects apart on a connection's first bytes, so one listener can serve
//! polycall, libpolycall's PCR1 and libpolycall's first-generation binary header.
//!
//! ```
//! use polycall_proto::detect::{detect, Detection, Dialect};
//! assert_eq!(detect(b"\x89POLY\r\n\x1a"), Detection::Known(Dialect::Polycall));
//! assert_eq!(detect(b"PCR1\x01"), Detection::Known(Dialect::Pcr1));
//! assert_eq!(detect(&[1, 1, 0, 0]), Detection::Known(Dialect::LegacyV1));
//! assert_eq!(detect(b"\x89PO"), Detection::NeedMore);
//! assert_eq!(detect(b"GET / HTTP/1.1"), Detection::Unknown);
//! ```

use crate::connection::PREFACE;

/// A wire dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// polycall's own protocol (starts with [`PREFACE`]).
    Polycall,
    /// libpolycall's PCR1 framing (starts with ASCII `PCR1`).
    Pcr1,
    /// libpolycall's first-generation 16-byte header (version byte 1, type 1–6).
    LegacyV1,
}

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// The dialect is certain.
    Known(Dialect),
    /// Not enough bytes yet to tell (at most 8 are ever needed).
    NeedMore,
    /// None of the dialects.
    Unknown,
}

/// Tells the dialect from a connection's first bytes.
pub fn detect(prefix: &[u8]) -> Detection {
    let Some(&first) = prefix.first() else {
        return Detection::NeedMore;
    };
    match first {
        0x89 => {
            let n = prefix.len().min(PREFACE.len());
            if prefix[..n] != PREFACE[..n] {
                Detection::Unknown
            } else if n == PREFACE.len() {
                Detection::Known(Dialect::Polycall)
            } else {
                Detection::NeedMore
            }
        }
        b'P' => {
            let n = prefix.len().min(4);
            if prefix[..n] != b"PCR1"[..n] {
                Detection::Unknown
            } else if n == 4 {
                Detection::Known(Dialect::Pcr1)
            } else {
                Detection::NeedMore
            }
        }
        1 => match prefix.get(1) {
            None => Detection::NeedMore,
            Some(1..=6) => Detection::Known(Dialect::LegacyV1),
            Some(_) => Detection::Unknown,
        },
        _ => Detection::Unknown,
    }
}

/// A sentence for the error when a polycall endpoint receives something else.
pub(crate) fn describe(prefix: &[u8]) -> &'static str {
    match detect(prefix) {
        Detection::Known(Dialect::Pcr1) => {
            "it sent libpolycall's PCR1 framing; connect it to a listener with libpolycall compatibility on"
        }
        Detection::Known(Dialect::LegacyV1) => {
            "it sent libpolycall's first-generation header; connect it to a listener with libpolycall compatibility on"
        }
        _ => "its first bytes are not the polycall preface 89 50 4f 4c 59 0d 0a 1a",
    }
}
