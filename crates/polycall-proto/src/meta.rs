//! Call metadata on the wire: a list of tag-length-value entries.
//!
//! Each entry is `u8 tag, u16 length, value`, tags strictly ascending. Unknown tags are
//! kept (in [`WireMeta::extensions`]) and passed on, so newer peers can add entries.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use polycall_core::{Deadline, Metadata, Principal, Priority, TraceContext};

use crate::error::FrameError;
use crate::frame::FrameType;
use crate::wire::Reader;

/// Metadata entry tags.
pub mod tag {
    /// Remaining time budget, u64 microseconds.
    pub const TIMEOUT: u8 = 1;
    /// Priority class, u8 (0 critical, 1 high, 2 normal, 3 low).
    pub const PRIORITY: u8 = 2;
    /// W3C traceparent, binary: 16-byte trace id, 8-byte parent id, u8 flags.
    pub const TRACEPARENT: u8 = 3;
    /// W3C tracestate, UTF-8 (requires TRACEPARENT).
    pub const TRACESTATE: u8 = 4;
    /// The call is idempotent (empty value).
    pub const IDEMPOTENT: u8 = 5;
    /// Idempotency key, UTF-8.
    pub const IDEMPOTENCY_KEY: u8 = 6;
    /// Principal the call runs as, UTF-8.
    pub const PRINCIPAL: u8 = 7;
    /// A runtime forwarded the call; it is not forwarded again (empty value).
    pub const FORWARDED: u8 = 8;
}

/// Longest text value of a metadata entry, in bytes.
pub const MAX_META_TEXT: usize = 1024;

/// Call metadata as it travels: like [`Metadata`], but with the deadline as a relative
/// timeout so peers' clocks need not agree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireMeta {
    /// Time left until the deadline, at microsecond precision.
    pub timeout: Option<Duration>,
    /// Priority class; absent means normal.
    pub priority: Option<Priority>,
    /// W3C trace context.
    pub trace: Option<TraceContext>,
    /// The call is idempotent.
    pub idempotent: bool,
    /// Deduplication key.
    pub idempotency_key: Option<String>,
    /// Principal the call runs as (trusted only from an authenticated runtime).
    pub principal: Option<String>,
    /// A runtime forwarded the call.
    pub forwarded: bool,
    /// Entries of tags this version does not know, in order, passed on unchanged.
    pub extensions: Vec<(u8, Bytes)>,
}

impl WireMeta {
    /// The wire form of `md` at `now` (the deadline becomes the time left).
    pub fn from_metadata(md: &Metadata, now: Instant) -> Self {
        Self {
            timeout: md.deadline.map(|d| d.remaining(now)),
            priority: (md.priority != Priority::Normal).then_some(md.priority),
            trace: md.trace.clone(),
            idempotent: md.idempotent,
            idempotency_key: md.idempotency_key.clone(),
            principal: md.principal.as_ref().map(|p| {
                // Sized once: rendered into a growing string it took three allocations.
                let mut text = String::with_capacity(64);
                let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{p}"));
                text
            }),
            forwarded: md.forwarded,
            extensions: Vec::new(),
        }
    }

    /// The metadata of this wire form received at `now`.
    pub fn to_metadata(&self, now: Instant) -> Metadata {
        Metadata {
            deadline: self.timeout.map(|t| Deadline::after(now, t)),
            priority: self.priority.unwrap_or_default(),
            trace: self.trace.clone(),
            idempotent: self.idempotent,
            idempotency_key: self.idempotency_key.clone(),
            // A principal this build cannot read is dropped, never guessed at.
            principal: self
                .principal
                .as_deref()
                .and_then(|p| Principal::parse(p).ok()),
            forwarded: self.forwarded,
        }
    }

    /// Whether no entry is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Length of the encoded entries, in bytes.
    pub fn encoded_len(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, |s| 3 + s.len().min(MAX_META_TEXT));
        let mut n = 0;
        n += if self.timeout.is_some() { 3 + 8 } else { 0 };
        n += if self.priority.is_some() { 3 + 1 } else { 0 };
        if let Some(t) = &self.trace {
            n += 3 + 25 + text(&t.tracestate);
        }
        n += if self.idempotent { 3 } else { 0 };
        n += text(&self.idempotency_key) + text(&self.principal);
        n += if self.forwarded { 3 } else { 0 };
        n + self
            .extensions
            .iter()
            .map(|(_, v)| 3 + v.len())
            .sum::<usize>()
    }

    /// Appends the entries to `buf`.
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        let entry = |buf: &mut BytesMut, tag: u8, value: &[u8]| {
            buf.put_u8(tag);
            buf.put_u16_le(value.len() as u16);
            buf.put_slice(value);
        };
        if let Some(t) = self.timeout {
            let micros = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
            entry(buf, tag::TIMEOUT, &micros.to_le_bytes());
        }
        if let Some(p) = self.priority {
            entry(buf, tag::PRIORITY, &[p as u8]);
        }
        if let Some(t) = &self.trace {
            let mut v = [0u8; 25];
            v[..16].copy_from_slice(&t.trace_id);
            v[16..24].copy_from_slice(&t.parent_id);
            v[24] = t.flags;
            entry(buf, tag::TRACEPARENT, &v);
            if let Some(s) = &t.tracestate {
                entry(
                    buf,
                    tag::TRACESTATE,
                    crate::wire::clip(s, MAX_META_TEXT).as_bytes(),
                );
            }
        }
        if self.idempotent {
            entry(buf, tag::IDEMPOTENT, &[]);
        }
        if let Some(k) = &self.idempotency_key {
            entry(
                buf,
                tag::IDEMPOTENCY_KEY,
                crate::wire::clip(k, MAX_META_TEXT).as_bytes(),
            );
        }
        if let Some(p) = &self.principal {
            entry(
                buf,
                tag::PRINCIPAL,
                crate::wire::clip(p, MAX_META_TEXT).as_bytes(),
            );
        }
        if self.forwarded {
            entry(buf, tag::FORWARDED, &[]);
        }
        for (tag, value) in &self.extensions {
            entry(buf, *tag, value);
        }
    }

    /// Reads the entries of `meta` (the metadata section of a call frame).
    pub(crate) fn decode(meta: &Bytes) -> Result<Self, FrameError> {
        let mut r = Reader::new(meta, FrameType::Call);
        let mut m = WireMeta::default();
        let mut last: Option<u8> = None;
        while r.remaining() > 0 {
            let tag = r.u8("metadata entry tag is cut short")?;
            let len = usize::from(r.u16("metadata entry length is cut short")?);
            if tag == 0 {
                return Err(r.err("metadata tag 0 is reserved"));
            }
            if last.is_some_and(|l| tag <= l) {
                return Err(r.err("metadata tags are not strictly ascending"));
            }
            last = Some(tag);
            let text_len = |r: &Reader<'_>| {
                if len > MAX_META_TEXT {
                    Err(r.err("metadata text value longer than 1024 bytes"))
                } else {
                    Ok(len)
                }
            };
            match tag {
                tag::TIMEOUT => {
                    if len != 8 {
                        return Err(r.err("timeout entry is not 8 bytes"));
                    }
                    m.timeout = Some(Duration::from_micros(r.u64("timeout")?));
                }
                tag::PRIORITY => {
                    if len != 1 {
                        return Err(r.err("priority entry is not 1 byte"));
                    }
                    let p = Priority::from_u8(r.u8("priority")?)
                        .ok_or_else(|| r.err("unknown priority class"))?;
                    if p == Priority::Normal {
                        return Err(r.err("priority normal is sent by omitting the entry"));
                    }
                    m.priority = Some(p);
                }
                tag::TRACEPARENT => {
                    if len != 25 {
                        return Err(r.err("traceparent entry is not 25 bytes"));
                    }
                    let v = r.raw(25, "traceparent")?;
                    let mut t = TraceContext {
                        trace_id: [0; 16],
                        parent_id: [0; 8],
                        flags: v[24],
                        tracestate: None,
                    };
                    t.trace_id.copy_from_slice(&v[..16]);
                    t.parent_id.copy_from_slice(&v[16..24]);
                    t.validate()
                        .map_err(|_| r.err("traceparent has an all-zero id"))?;
                    m.trace = Some(t);
                }
                tag::TRACESTATE => {
                    let n = text_len(&r)?;
                    let s = r.str(n, "tracestate")?.to_owned();
                    match &mut m.trace {
                        Some(t) => t.tracestate = Some(s),
                        None => return Err(r.err("tracestate without traceparent")),
                    }
                }
                tag::IDEMPOTENT => {
                    if len != 0 {
                        return Err(r.err("idempotent entry has a value"));
                    }
                    m.idempotent = true;
                }
                tag::IDEMPOTENCY_KEY => {
                    let n = text_len(&r)?;
                    m.idempotency_key = Some(r.str(n, "idempotency key")?.to_owned());
                }
                tag::PRINCIPAL => {
                    let n = text_len(&r)?;
                    m.principal = Some(r.str(n, "principal")?.to_owned());
                }
                tag::FORWARDED => {
                    if len != 0 {
                        return Err(r.err("forwarded entry has a value"));
                    }
                    m.forwarded = true;
                }
                _ => m
                    .extensions
                    .push((tag, r.bytes(len, "metadata extension is cut short")?)),
            }
        }
        Ok(m)
    }
}
