//! Frames: the units of the polycall protocol, and their exact byte layout.
//!
//! Every frame is a 12-byte header, a body, and — when CRC32C was negotiated — a 4-byte
//! trailer. All integers are little-endian. `docs/protocol.md` specifies each body.
//!
//! ```text
//! 0      4    5     6          8         12
//! +------+----+-----+----------+---------+-------------+-----------+
//! | len  |type|flags| reserved | call id | body (len)  | [crc32c]  |
//! +------+----+-----+----------+---------+-------------+-----------+
//! ```
//!
//! ```
//! use bytes::BytesMut;
//! use polycall_proto::frame::{self, Frame};
//!
//! let bytes = Frame::Ping { opaque: 7 }.to_bytes(false);
//! let mut buf = BytesMut::from(&bytes[..]);
//! let decoded = frame::decode(&mut buf, 1 << 20, false)?.expect("a whole frame");
//! assert_eq!(decoded, Frame::Ping { opaque: 7 });
//! # Ok::<(), polycall_proto::FrameError>(())
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use polycall_core::{Code, ContentType, MethodName, ServiceName, Status, split_full_name};

use crate::compress::Algorithm;
use crate::error::FrameError;
use crate::meta::WireMeta;
use crate::wire::{Reader, clip, put_list8, put_str8, put_str16};

/// Length of the frame header.
pub const HEADER_LEN: usize = 12;
/// Length of the CRC32C trailer.
pub const CRC_LEN: usize = 4;
/// Longest message text in error and goaway frames, in bytes.
pub const MAX_MESSAGE_TEXT: usize = 4096;

/// Frame flag bits. Each frame type allows only the bits listed for it in
/// `docs/protocol.md`; any other bit is an error.
pub mod flags {
    /// The message continues in the next `DATA` frame of the call.
    pub const MORE: u8 = 0x01;
    /// `CALL`: the caller sends further messages (a client stream) ended by `END`.
    /// `REPLY`: further reply messages follow (a server stream) ended by `END`.
    pub const STREAM: u8 = 0x02;
    /// `CALL`: the method's name is in the frame (and may bind an interned id).
    pub const NAMED: u8 = 0x04;
    /// `DATA`: this frame starts a new message of a stream.
    pub const FIRST: u8 = 0x08;
    /// `CALL`/`REPLY` with `STREAM`: the frame opens the stream without a message (its
    /// first message, if any, follows as `DATA` with `FIRST`). The same bit as `FIRST`,
    /// on other frame types.
    pub const EMPTY: u8 = 0x08;
    /// `DATA` with `FIRST` (never `MORE`): the frame carries several whole messages of
    /// a stream, each a u32 little-endian length and its bytes (feature
    /// [`crate::features::PACKED`]).
    pub const PACKED: u8 = 0x10;
}

macro_rules! frame_types {
    ($($(#[$doc:meta])* $name:ident = $value:literal, flags = $flags:expr, call = $call:expr;)*) => {
        /// The type byte of a frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameType {
            $($(#[$doc])* $name = $value,)*
        }

        impl FrameType {
            /// Every frame type.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$name),*];

            /// The type of a type byte.
            pub fn from_u8(v: u8) -> Option<FrameType> {
                match v { $($value => Some(FrameType::$name),)* _ => None }
            }

            /// Flag bits this type allows.
            pub fn allowed_flags(self) -> u8 {
                match self { $(FrameType::$name => $flags,)* }
            }

            /// Whether frames of this type belong to a call (non-zero call id). `ERROR`
            /// may be either: call id 0 is a connection error.
            pub fn is_call_frame(self) -> Option<bool> {
                match self { $(FrameType::$name => $call,)* }
            }
        }
    };
}

frame_types! {
    /// Client's opening offer.
    Hello = 0x01, flags = 0, call = Some(false);
    /// Server's answer to `HELLO`: what was agreed.
    Welcome = 0x02, flags = 0, call = Some(false);
    /// An authentication exchange step (reserved; see the security issue).
    Auth = 0x03, flags = 0, call = Some(false);
    /// Opens a call.
    Call = 0x10, flags = flags::MORE | flags::STREAM | flags::NAMED | flags::EMPTY, call = Some(true);
    /// The successful reply of a call.
    Reply = 0x11, flags = flags::MORE | flags::STREAM | flags::EMPTY, call = Some(true);
    /// A call failed, or (call id 0) the connection failed.
    Error = 0x12, flags = 0, call = None;
    /// The caller gave up on a call.
    Cancel = 0x13, flags = 0, call = Some(true);
    /// A continuation fragment, or a further message of a stream.
    Data = 0x14, flags = flags::MORE | flags::FIRST | flags::PACKED, call = Some(true);
    /// The sender's stream of messages on a call is complete.
    End = 0x15, flags = 0, call = Some(true);
    /// Liveness probe.
    Ping = 0x20, flags = 0, call = Some(false);
    /// Answer to `PING`.
    Pong = 0x21, flags = 0, call = Some(false);
    /// The sender will open no new calls and serve none above a call id.
    GoAway = 0x22, flags = 0, call = Some(false);
    /// Flow-control credit.
    Credit = 0x23, flags = 0, call = Some(false);
    /// Flow-control credit of one call's stream (streaming only).
    StreamCredit = 0x24, flags = 0, call = Some(true);
    /// A zstd dictionary the sender will compress messages with
    /// ([`crate::features::ZSTD_DICTIONARIES`] only).
    Dictionary = 0x25, flags = 0, call = Some(false);
    /// A provider announces methods it serves.
    Register = 0x30, flags = 0, call = Some(true);
    /// A provider withdraws methods.
    Unregister = 0x31, flags = 0, call = Some(true);
}

/// Client's opening offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version offered.
    pub min_version: u16,
    /// Highest protocol version offered.
    pub max_version: u16,
    /// Feature bits offered ([`crate::features`]); unknown bits are ignored.
    pub features: u64,
    /// The client's receive limits.
    pub limits: crate::Limits,
    /// Payload codec ids ([`ContentType`]) the client can read, preferred first.
    pub codecs: Vec<u8>,
    /// Compression algorithm ids ([`Algorithm`]) the client can read, preferred first.
    pub compressions: Vec<u8>,
    /// Authentication method ids ([`crate::AuthMethod`]) the client can perform.
    pub auth_methods: Vec<u8>,
    /// Free text naming the implementation, e.g. `polycall-rust/0.1.0`.
    pub agent: String,
}

/// Server's answer to a `HELLO`: the agreed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The agreed protocol version.
    pub version: u16,
    /// The agreed feature bits (a subset of those offered).
    pub features: u64,
    /// The server's receive limits.
    pub limits: crate::Limits,
    /// Codec ids both can read, server's preference first.
    pub codecs: Vec<u8>,
    /// Compression ids both can read, server's preference first.
    pub compressions: Vec<u8>,
    /// The authentication method the client must perform next (0 = none).
    pub auth_method: u8,
    /// Free text naming the implementation.
    pub agent: String,
}

/// One step of an authentication exchange (reserved in this version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The method ([`crate::AuthMethod`] id).
    pub method: u8,
    /// Step number within the method's exchange.
    pub step: u8,
    /// Method-specific bytes.
    pub data: Bytes,
}

/// A method reference in a `CALL` frame: an interned id, a name, or both (binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRef {
    /// Interned id: 0 = not interned; otherwise the id bound (with `name`) or used.
    pub id: u16,
    /// The method's names; present on first use or when not interned.
    pub name: Option<(ServiceName, MethodName)>,
}

/// Opens a call, carrying the first (or only) fragment of the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFrame {
    /// The call (odd when the client opened it, even when the server did).
    pub call_id: u32,
    /// Which method.
    pub method: MethodRef,
    /// How the request message is encoded.
    pub content_type: ContentType,
    /// How the request message is compressed.
    pub compression: Algorithm,
    /// Deadline, priority, trace context and the rest.
    pub meta: WireMeta,
    /// The message continues in `DATA` frames.
    pub more: bool,
    /// With `more`: the whole message's length on the wire (all fragments), so the
    /// receiver can refuse it at once or allocate it once.
    pub message_len: Option<u32>,
    /// Further request messages follow (client stream), ended by `END`.
    pub stream: bool,
    /// With `stream`: the frame opens the stream without a message (`payload` is empty,
    /// content type raw, compression none, no `more`).
    pub empty: bool,
    /// The first fragment of the (possibly compressed) request message.
    pub payload: Bytes,
}

/// The success reply of a call, carrying the first fragment of the reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    /// The call.
    pub call_id: u32,
    /// How the reply message is encoded.
    pub content_type: ContentType,
    /// How the reply message is compressed.
    pub compression: Algorithm,
    /// The message continues in `DATA` frames.
    pub more: bool,
    /// With `more`: the whole message's length on the wire (all fragments).
    pub message_len: Option<u32>,
    /// Further reply messages follow (server stream), ended by `END`.
    pub stream: bool,
    /// With `stream`: the frame opens the reply stream without a message (as
    /// [`CallFrame::empty`]).
    pub empty: bool,
    /// The first fragment of the reply message.
    pub payload: Bytes,
}

/// A failed call, or (call id 0) a failed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The call, or 0 for the connection.
    pub call_id: u32,
    /// The status code number ([`Code`]); kept raw so unknown codes pass through.
    pub code: u16,
    /// What went wrong (at most 4096 bytes).
    pub message: String,
    /// When a retry may succeed, in milliseconds.
    pub retry_after_ms: Option<u32>,
    /// The versions the sender supports (sent with `version_mismatch`).
    pub supported_versions: Option<(u16, u16)>,
    /// Detail entries of tags this version does not know, passed on unchanged.
    pub extensions: Vec<(u8, Bytes)>,
}

impl ErrorFrame {
    /// The error frame of `status` for `call_id`.
    pub fn from_status(call_id: u32, status: &Status) -> Self {
        Self {
            call_id,
            code: status.code as u16,
            message: clip(&status.message, MAX_MESSAGE_TEXT).to_owned(),
            retry_after_ms: status
                .retry_after
                .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            supported_versions: None,
            extensions: Vec::new(),
        }
    }

    /// The status this frame carries.
    pub fn status(&self) -> Status {
        let mut s = Status::new(Code::from_u16(self.code), self.message.clone());
        s.retry_after = self
            .retry_after_ms
            .map(|ms| Duration::from_millis(ms.into()));
        s
    }
}

/// A fragment of a message: the continuation of the current one, or (with `first`) the
/// start of a further message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// The call.
    pub call_id: u32,
    /// Set when this frame starts a new stream message: its content type and compression.
    pub first: Option<(ContentType, Algorithm)>,
    /// The message continues in the next `DATA` frame.
    pub more: bool,
    /// With `first` and `more`: the whole message's length on the wire.
    pub message_len: Option<u32>,
    /// With `first`: the payload is several whole messages, each a u32 little-endian
    /// length and its bytes ([`flags::PACKED`]; never with `more`).
    pub packed: bool,
    /// The fragment.
    pub payload: Bytes,
}

/// The messages of a packed `DATA` payload (each a u32 little-endian length and its
/// bytes), as slices of it; `None` when the entries do not fill it exactly.
pub fn unpack(payload: &Bytes) -> Option<Vec<Bytes>> {
    packed_valid(payload).then(|| packed_entries(payload).map(|r| payload.slice(r)).collect())
}

/// Whether `payload` is one or more packed entries that fill it exactly.
pub fn packed_valid(payload: &[u8]) -> bool {
    packed_summary(payload).is_some()
}

/// What one walk over a packed payload finds: the number of messages and the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackedSummary {
    pub(crate) count: usize,
    pub(crate) longest: usize,
}

/// The [`PackedSummary`] of `payload`; `None` unless its entries fill it exactly.
pub(crate) fn packed_summary(payload: &[u8]) -> Option<PackedSummary> {
    let mut at = 0;
    let mut s = PackedSummary {
        count: 0,
        longest: 0,
    };
    while at < payload.len() {
        let len = payload.get(at..at + 4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        match (at + 4).checked_add(len) {
            Some(end) if end <= payload.len() => at = end,
            _ => return None,
        }
        s.count += 1;
        s.longest = s.longest.max(len);
    }
    (s.count > 0).then_some(s)
}

/// The byte ranges of the messages of a packed payload that [`packed_valid`] accepted
/// (on another, iteration stops at the first entry that does not fit).
#[inline]
pub fn packed_entries(payload: &[u8]) -> PackedEntries<'_> {
    PackedEntries { payload, at: 0 }
}

/// The iterator of [`packed_entries`].
#[derive(Debug, Clone)]
pub struct PackedEntries<'a> {
    payload: &'a [u8],
    at: usize,
}

impl Iterator for PackedEntries<'_> {
    type Item = std::ops::Range<usize>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let head = self.payload.get(self.at..self.at + 4)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let start = self.at + 4;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= self.payload.len())?;
        self.at = end;
        Some(start..end)
    }
}

/// The sender opens no new calls and serves none above `last_call_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Highest call id opened by the receiver that the sender will still serve.
    pub last_call_id: u32,
    /// Why ([`Code`] number).
    pub code: u16,
    /// Why, for people.
    pub message: String,
}

/// One method a provider announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodEntry {
    /// Service name.
    pub service: ServiceName,
    /// Method name.
    pub method: MethodName,
    /// What the method says about itself.
    pub info: polycall_core::MethodInfo,
}

/// A frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Auth`].
    Auth(Auth),
    /// See [`CallFrame`].
    Call(CallFrame),
    /// See [`ReplyFrame`].
    Reply(ReplyFrame),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
    /// The caller gave up on the call.
    Cancel {
        /// The call.
        call_id: u32,
    },
    /// See [`DataFrame`].
    Data(DataFrame),
    /// The sender's messages on the call are complete.
    End {
        /// The call.
        call_id: u32,
    },
    /// Liveness probe; the receiver answers `PONG` with the same value.
    Ping {
        /// Echoed back.
        opaque: u64,
    },
    /// Answer to `PING`.
    Pong {
        /// The ping's value.
        opaque: u64,
    },
    /// See [`GoAway`].
    GoAway(GoAway),
    /// The receiver may send `increment` more payload bytes.
    Credit {
        /// Bytes of credit added.
        increment: u32,
    },
    /// The receiver may send `increment` more payload bytes on the call's stream.
    StreamCredit {
        /// The call.
        call_id: u32,
        /// Bytes of credit added.
        increment: u32,
    },
    /// A zstd dictionary the sender will compress messages with (as
    /// [`Algorithm::ZstdDict`]); sent before any message that uses it.
    Dictionary {
        /// The dictionary's id, as written in the dictionary and in every zstd
        /// frame compressed with it.
        id: u32,
        /// The dictionary, in zstd's format.
        data: Bytes,
    },
    /// A provider announces methods; answered by `REPLY` or `ERROR` on the same call id.
    Register {
        /// The request's call id.
        call_id: u32,
        /// The methods.
        methods: Vec<MethodEntry>,
    },
    /// A provider withdraws methods; answered by `REPLY` or `ERROR`.
    Unregister {
        /// The request's call id.
        call_id: u32,
        /// The methods.
        methods: Vec<(ServiceName, MethodName)>,
    },
}

mod error_tag {
    pub const RETRY_AFTER_MS: u8 = 1;
    pub const SUPPORTED_VERSIONS: u8 = 2;
}

/// Output of the encoder: small parts are copied into one buffer; large payloads are
/// kept as their own `Bytes` chunks (no copy), so a writer can send everything with
/// one vectored write.
#[derive(Debug, Default)]
pub struct FrameBuf {
    head: BytesMut,
    chunks: VecDeque<Bytes>,
    len: usize,
}

/// Payloads at least this long are not copied into the frame buffer.
const INLINE_MAX: usize = 1024;

impl FrameBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn flush_head(&mut self) {
        if !self.head.is_empty() {
            self.chunks.push_back(self.head.split().freeze());
        }
    }

    /// Appends raw bytes (the connection preface).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.head.put_slice(bytes);
        self.len += bytes.len();
    }

    /// Moves everything buffered in `other` to the end of this buffer.
    pub fn append(&mut self, other: &mut FrameBuf) {
        self.flush_head();
        other.flush_head();
        self.len += other.len;
        self.chunks.extend(other.chunks.drain(..));
        other.len = 0;
    }

    /// Total bytes buffered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes every buffered chunk, in order.
    pub fn drain_chunks(&mut self, out: &mut Vec<Bytes>) {
        self.flush_head();
        out.extend(self.chunks.drain(..));
        self.len = 0;
    }

    /// Takes the next chunk.
    pub fn pop_chunk(&mut self) -> Option<Bytes> {
        if self.chunks.is_empty() {
            self.flush_head();
        }
        let c = self.chunks.pop_front()?;
        self.len -= c.len();
        Some(c)
    }

    /// Everything buffered as one contiguous `Bytes` (copies when there are several
    /// chunks).
    pub fn take_bytes(&mut self) -> Bytes {
        self.flush_head();
        let out = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop_front().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(self.len);
                for c in self.chunks.drain(..) {
                    b.put_slice(&c);
                }
                b.freeze()
            }
        };
        self.len = 0;
        out
    }
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Auth(_) => FrameType::Auth,
            Frame::Call(_) => FrameType::Call,
            Frame::Reply(_) => FrameType::Reply,
            Frame::Error(_) => FrameType::Error,
            Frame::Cancel { .. } => FrameType::Cancel,
            Frame::Data(_) => FrameType::Data,
            Frame::End { .. } => FrameType::End,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::GoAway(_) => FrameType::GoAway,
            Frame::Credit { .. } => FrameType::Credit,
            Frame::StreamCredit { .. } => FrameType::StreamCredit,
            Frame::Dictionary { .. } => FrameType::Dictionary,
            Frame::Register { .. } => FrameType::Register,
            Frame::Unregister { .. } => FrameType::Unregister,
        }
    }

    /// The call id in the header (0 for connection frames).
    pub fn call_id(&self) -> u32 {
        match self {
            Frame::Call(f) => f.call_id,
            Frame::Reply(f) => f.call_id,
            Frame::Error(f) => f.call_id,
            Frame::Data(f) => f.call_id,
            Frame::Cancel { call_id } | Frame::End { call_id } => *call_id,
            Frame::StreamCredit { call_id, .. } => *call_id,
            Frame::Register { call_id, .. } | Frame::Unregister { call_id, .. } => *call_id,
            _ => 0,
        }
    }

    fn flags(&self) -> u8 {
        let bit = |cond: bool, b: u8| if cond { b } else { 0 };
        match self {
            Frame::Call(f) => {
                bit(f.more, flags::MORE)
                    | bit(f.stream, flags::STREAM)
                    | bit(f.method.name.is_some(), flags::NAMED)
                    | bit(f.empty, flags::EMPTY)
            }
            Frame::Reply(f) => {
                bit(f.more, flags::MORE) | bit(f.stream, flags::STREAM) | bit(f.empty, flags::EMPTY)
            }
            Frame::Data(f) => {
                bit(f.more, flags::MORE)
                    | bit(f.first.is_some(), flags::FIRST)
                    | bit(f.packed, flags::PACKED)
            }
            _ => 0,
        }
    }

    /// The payload carried after the fixed fields, if the frame type has one.
    fn payload(&self) -> Option<&Bytes> {
        match self {
            Frame::Call(f) => Some(&f.payload),
            Frame::Reply(f) => Some(&f.payload),
            Frame::Data(f) => Some(&f.payload),
            Frame::Auth(f) => Some(&f.data),
            Frame::Dictionary { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Payload bytes that count against flow control (those of `CALL`, `REPLY` and
    /// `DATA`).
    pub fn flow_len(&self) -> usize {
        match self {
            Frame::Call(_) | Frame::Reply(_) | Frame::Data(_) => {
                self.payload().map_or(0, Bytes::len)
            }
            _ => 0,
        }
    }

    /// Writes the body's fixed fields (everything but the payload).
    fn encode_fields(&self, b: &mut BytesMut) {
        match self {
            Frame::Hello(h) => {
                b.put_u16_le(h.min_version);
                b.put_u16_le(h.max_version);
                b.put_u64_le(h.features);
                h.limits.encode(b);
                put_list8(b, &h.codecs);
                put_list8(b, &h.compressions);
                put_list8(b, &h.auth_methods);
                put_str8(b, clip(&h.agent, 255));
            }
            Frame::Welcome(w) => {
                b.put_u16_le(w.version);
                b.put_u64_le(w.features);
                w.limits.encode(b);
                put_list8(b, &w.codecs);
                put_list8(b, &w.compressions);
                b.put_u8(w.auth_method);
                put_str8(b, clip(&w.agent, 255));
            }
            Frame::Auth(a) => {
                b.put_u8(a.method);
                b.put_u8(a.step);
            }
            Frame::Call(c) => {
                b.put_u16_le(c.method.id);
                if let Some((s, m)) = &c.method.name {
                    b.put_u8((s.as_str().len() + 1 + m.as_str().len()) as u8);
                    b.put_slice(s.as_str().as_bytes());
                    b.put_u8(b'.');
                    b.put_slice(m.as_str().as_bytes());
                }
                b.put_u8(c.content_type.id());
                b.put_u8(c.compression.id());
                let at = b.len();
                b.put_u16_le(0);
                c.meta.encode(b);
                let meta_len = (b.len() - at - 2) as u16;
                b[at..at + 2].copy_from_slice(&meta_len.to_le_bytes());
                if c.more {
                    b.put_u32_le(c.message_len.unwrap_or(0));
                }
            }
            Frame::Reply(r) => {
                b.put_u8(r.content_type.id());
                b.put_u8(r.compression.id());
                if r.more {
                    b.put_u32_le(r.message_len.unwrap_or(0));
                }
            }
            Frame::Error(e) => {
                b.put_u16_le(e.code);
                put_str16(b, clip(&e.message, MAX_MESSAGE_TEXT));
                if let Some(ms) = e.retry_after_ms {
                    b.put_u8(error_tag::RETRY_AFTER_MS);
                    b.put_u16_le(4);
                    b.put_u32_le(ms);
                }
                if let Some((lo, hi)) = e.supported_versions {
                    b.put_u8(error_tag::SUPPORTED_VERSIONS);
                    b.put_u16_le(4);
                    b.put_u16_le(lo);
                    b.put_u16_le(hi);
                }
                for (tag, v) in &e.extensions {
                    b.put_u8(*tag);
                    b.put_u16_le(v.len() as u16);
                    b.put_slice(v);
                }
            }
            Frame::Data(d) => {
                if let Some((ct, alg)) = d.first {
                    b.put_u8(ct.id());
                    b.put_u8(alg.id());
                    if d.more {
                        b.put_u32_le(d.message_len.unwrap_or(0));
                    }
                }
            }
            Frame::Cancel { .. } | Frame::End { .. } => {}
            Frame::Ping { opaque } | Frame::Pong { opaque } => b.put_u64_le(*opaque),
            Frame::Dictionary { id, .. } => b.put_u32_le(*id),
            Frame::GoAway(g) => {
                b.put_u32_le(g.last_call_id);
                b.put_u16_le(g.code);
                put_str16(b, clip(&g.message, MAX_MESSAGE_TEXT));
            }
            Frame::Credit { increment } | Frame::StreamCredit { increment, .. } => {
                b.put_u32_le(*increment)
            }
            Frame::Register { methods, .. } => {
                b.put_u16_le(methods.len() as u16);
                for e in methods {
                    b.put_u8((e.service.as_str().len() + 1 + e.method.as_str().len()) as u8);
                    b.put_slice(e.service.as_str().as_bytes());
                    b.put_u8(b'.');
                    b.put_slice(e.method.as_str().as_bytes());
                    b.put_u8(
                        u8::from(e.info.idempotent)
                            | u8::from(e.info.kind.streams_requests()) << 1
                            | u8::from(e.info.kind.streams_replies()) << 2,
                    );
                    put_str16(b, clip(&e.info.summary, MAX_MESSAGE_TEXT));
                    put_str16(b, clip(&e.info.input, MAX_MESSAGE_TEXT));
                    put_str16(b, clip(&e.info.output, MAX_MESSAGE_TEXT));
                }
            }
            Frame::Unregister { methods, .. } => {
                b.put_u16_le(methods.len() as u16);
                for (s, m) in methods {
                    b.put_u8((s.as_str().len() + 1 + m.as_str().len()) as u8);
                    b.put_slice(s.as_str().as_bytes());
                    b.put_u8(b'.');
                    b.put_slice(m.as_str().as_bytes());
                }
            }
        }
    }

    /// Appends the encoded frame to `out`; with `crc`, a CRC32C trailer follows.
    /// Payloads of 1 KiB or more are not copied: they become their own chunk.
    pub fn encode(&self, out: &mut FrameBuf, crc: bool) {
        let start = out.head.len();
        out.head.reserve(HEADER_LEN + 64);
        out.head.put_u32_le(0); // length, patched below
        out.head.put_u8(self.frame_type() as u8);
        out.head.put_u8(self.flags());
        out.head.put_u16_le(0);
        out.head.put_u32_le(self.call_id());
        self.encode_fields(&mut out.head);
        let fields_len = out.head.len() - start - HEADER_LEN;
        let payload = self.payload().filter(|p| !p.is_empty());
        let body_len = fields_len + payload.map_or(0, Bytes::len);
        out.head[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        let mut sum = if crc {
            crc32c::crc32c(&out.head[start..])
        } else {
            0
        };
        if let Some(p) = payload {
            if crc {
                sum = crc32c::crc32c_append(sum, p);
            }
            if p.len() < INLINE_MAX {
                out.head.put_slice(p);
            } else {
                out.flush_head();
                out.chunks.push_back(p.clone());
            }
        }
        if crc {
            out.head.put_u32_le(sum);
        }
        out.len += HEADER_LEN + body_len + if crc { CRC_LEN } else { 0 };
    }

    /// The encoded frame as one contiguous buffer.
    pub fn to_bytes(&self, crc: bool) -> Bytes {
        let mut out = FrameBuf::new();
        self.encode(&mut out, crc);
        out.take_bytes()
    }
}

/// What a frame header says, read before the body has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length.
    pub len: u32,
    /// Frame type.
    pub frame_type: FrameType,
    /// Flag bits.
    pub flags: u8,
    /// Call id.
    pub call_id: u32,
}

/// Reads and checks a frame header (the first 12 bytes of `b`).
pub fn parse_header(b: &[u8], max_body: u32) -> Result<Header, FrameError> {
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let frame_type = FrameType::from_u8(b[4]).ok_or(FrameError::UnknownType(b[4]))?;
    let flags = b[5];
    let reserved = u16::from_le_bytes([b[6], b[7]]);
    let call_id = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if len > max_body {
        return Err(FrameError::TooLarge { len, max: max_body });
    }
    if flags & !frame_type.allowed_flags() != 0 {
        return Err(FrameError::UnknownFlags {
            frame: frame_type,
            flags: flags & !frame_type.allowed_flags(),
        });
    }
    if reserved != 0 {
        return Err(FrameError::Reserved {
            frame: frame_type,
            value: reserved,
        });
    }
    match frame_type.is_call_frame() {
        Some(true) if call_id == 0 => {
            return Err(FrameError::BadCallId {
                frame: frame_type,
                call_id,
            });
        }
        Some(false) if call_id != 0 => {
            return Err(FrameError::BadCallId {
                frame: frame_type,
                call_id,
            });
        }
        _ => {}
    }
    Ok(Header {
        len,
        frame_type,
        flags,
        call_id,
    })
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more and call
/// again); a header announcing a body over `max_body` fails at once, before the body
/// arrives. On success the frame's bytes are split off `buf` and its payload shares
/// their allocation (no copy). Never panics and never allocates more than the frame's
/// own fields on any input.
pub fn decode(buf: &mut BytesMut, max_body: u32, crc: bool) -> Result<Option<Frame>, FrameError> {
    decode_summarized(buf, max_body, crc, &mut None)
}

/// [`decode`], also giving the [`PackedSummary`] of a packed `DATA` frame's payload
/// (found while checking it, so the connection need not walk the entries again).
pub(crate) fn decode_summarized(
    buf: &mut BytesMut,
    max_body: u32,
    crc: bool,
    summary: &mut Option<PackedSummary>,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = parse_header(&buf[..HEADER_LEN], max_body)?;
    let trailer = if crc { CRC_LEN } else { 0 };
    let total = HEADER_LEN + header.len as usize + trailer;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut bytes = buf.split_to(total).freeze();
    if crc {
        let tail = bytes.split_off(total - CRC_LEN);
        let expected = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let actual = crc32c::crc32c(&bytes);
        if expected != actual {
            return Err(FrameError::Checksum {
                frame: header.frame_type,
                expected,
                actual,
            });
        }
    }
    bytes.advance(HEADER_LEN);
    decode_body(header, &bytes, summary).map(Some)
}

fn full_name(r: &mut Reader<'_>) -> Result<(ServiceName, MethodName), FrameError> {
    let name = r.str8("method name is cut short")?;
    split_full_name(name).map_err(|_| r.err("method name is not a valid SERVICE.METHOD"))
}

/// `EMPTY` opens a stream without a message: only with `STREAM`, never with `MORE`, and
/// the message fields hold nothing (raw, uncompressed, no bytes) so the encoding stays
/// canonical.
fn check_empty(
    r: &Reader<'_>,
    flags: u8,
    content_type: ContentType,
    compression: Algorithm,
    payload: &Bytes,
) -> Result<(), FrameError> {
    if flags & flags::EMPTY == 0 {
        return Ok(());
    }
    if flags & flags::STREAM == 0 {
        return Err(r.err("EMPTY without STREAM"));
    }
    if flags & flags::MORE != 0 {
        return Err(r.err("EMPTY with MORE"));
    }
    if content_type != ContentType::Raw || compression != Algorithm::None || !payload.is_empty() {
        return Err(r.err("EMPTY frame carries a message"));
    }
    Ok(())
}

/// The declared length of a message that continues past its first frame.
fn message_len(r: &mut Reader<'_>, present: bool) -> Result<Option<u32>, FrameError> {
    if !present {
        return Ok(None);
    }
    let len = r.u32("message length is missing")?;
    // The first fragment follows; the message is longer than it, as MORE says.
    if (len as usize) <= r.remaining() {
        return Err(r.err("message length does not exceed the first fragment although MORE is set"));
    }
    Ok(Some(len))
}

fn decode_body(
    h: Header,
    body: &Bytes,
    summary: &mut Option<PackedSummary>,
) -> Result<Frame, FrameError> {
    let mut r = Reader::new(body, h.frame_type);
    let has = |f: u8| h.flags & f != 0;
    let content_type = |r: &mut Reader<'_>| -> Result<ContentType, FrameError> {
        let id = r.u8("content type is missing")?;
        ContentType::from_id(id).ok_or_else(|| r.err("unknown content type id"))
    };
    let algorithm = |r: &mut Reader<'_>| -> Result<Algorithm, FrameError> {
        let id = r.u8("compression id is missing")?;
        Algorithm::from_id(id).ok_or_else(|| r.err("unknown compression id"))
    };
    let frame = match h.frame_type {
        FrameType::Hello => {
            let min_version = r.u16("versions are cut short")?;
            let max_version = r.u16("versions are cut short")?;
            let features = r.u64("features are cut short")?;
            let limits = crate::Limits::decode(&mut r)?;
            let codecs = r.list8("codec list is cut short")?;
            let compressions = r.list8("compression list is cut short")?;
            let auth_methods = r.list8("auth method list is cut short")?;
            let agent = r.str8("agent is cut short")?.to_owned();
            Frame::Hello(Hello {
                min_version,
                max_version,
                features,
                limits,
                codecs,
                compressions,
                auth_methods,
                agent,
            })
        }
        FrameType::Welcome => {
            let version = r.u16("version is cut short")?;
            let features = r.u64("features are cut short")?;
            let limits = crate::Limits::decode(&mut r)?;
            let codecs = r.list8("codec list is cut short")?;
            let compressions = r.list8("compression list is cut short")?;
            let auth_method = r.u8("auth method is missing")?;
            let agent = r.str8("agent is cut short")?.to_owned();
            Frame::Welcome(Welcome {
                version,
                features,
                limits,
                codecs,
                compressions,
                auth_method,
                agent,
            })
        }
        FrameType::Auth => {
            let method = r.u8("auth method is missing")?;
            let step = r.u8("auth step is missing")?;
            Frame::Auth(Auth {
                method,
                step,
                data: r.rest(),
            })
        }
        FrameType::Call => {
            let id = r.u16("method id is missing")?;
            let name = if has(flags::NAMED) {
                Some(full_name(&mut r)?)
            } else {
                None
            };
            if name.is_none() && id == 0 {
                return Err(r.err("method id 0 without a name"));
            }
            let content_type = content_type(&mut r)?;
            let compression = algorithm(&mut r)?;
            let meta_len = r.u16("metadata length is missing")?;
            let meta = r.bytes(meta_len.into(), "metadata is cut short")?;
            let meta = WireMeta::decode(&meta)?;
            let message_len = message_len(&mut r, has(flags::MORE))?;
            let payload = r.rest();
            check_empty(&r, h.flags, content_type, compression, &payload)?;
            Frame::Call(CallFrame {
                call_id: h.call_id,
                method: MethodRef { id, name },
                content_type,
                compression,
                meta,
                more: has(flags::MORE),
                message_len,
                stream: has(flags::STREAM),
                empty: has(flags::EMPTY),
                payload,
            })
        }
        FrameType::Reply => {
            let content_type = content_type(&mut r)?;
            let compression = algorithm(&mut r)?;
            let message_len = message_len(&mut r, has(flags::MORE))?;
            let payload = r.rest();
            check_empty(&r, h.flags, content_type, compression, &payload)?;
            Frame::Reply(ReplyFrame {
                call_id: h.call_id,
                content_type,
                compression,
                more: has(flags::MORE),
                message_len,
                stream: has(flags::STREAM),
                empty: has(flags::EMPTY),
                payload,
            })
        }
        FrameType::Error => {
            let code = r.u16("status code is missing")?;
            let message = r.str16("message is cut short")?;
            if message.len() > MAX_MESSAGE_TEXT {
                return Err(r.err("message longer than 4096 bytes"));
            }
            let mut e = ErrorFrame {
                call_id: h.call_id,
                code,
                message: message.to_owned(),
                retry_after_ms: None,
                supported_versions: None,
                extensions: Vec::new(),
            };
            let mut last = 0u8;
            while r.remaining() > 0 {
                let tag = r.u8("detail tag is missing")?;
                let len = r.u16("detail length is missing")?;
                if tag <= last {
                    return Err(r.err("detail tags are not strictly ascending (or tag 0)"));
                }
                last = tag;
                match tag {
                    error_tag::RETRY_AFTER_MS if len == 4 => {
                        e.retry_after_ms = Some(r.u32("retry-after")?)
                    }
                    error_tag::SUPPORTED_VERSIONS if len == 4 => {
                        e.supported_versions = Some((r.u16("versions")?, r.u16("versions")?));
                    }
                    error_tag::RETRY_AFTER_MS | error_tag::SUPPORTED_VERSIONS => {
                        return Err(r.err("detail entry has the wrong length"));
                    }
                    _ => e
                        .extensions
                        .push((tag, r.bytes(len.into(), "detail entry is cut short")?)),
                }
            }
            Frame::Error(e)
        }
        FrameType::Cancel => Frame::Cancel { call_id: h.call_id },
        FrameType::Data => {
            let first = if has(flags::FIRST) {
                Some((content_type(&mut r)?, algorithm(&mut r)?))
            } else {
                None
            };
            let message_len = message_len(&mut r, first.is_some() && has(flags::MORE))?;
            let packed = has(flags::PACKED);
            let payload = r.rest();
            if packed {
                if first.is_none() || has(flags::MORE) {
                    return Err(r.err("PACKED needs FIRST and excludes MORE"));
                }
                if first.is_some_and(|(_, alg)| alg != Algorithm::None) {
                    return Err(r.err("PACKED messages are not compressed"));
                }
                *summary = packed_summary(&payload);
                if summary.is_none() {
                    return Err(r.err("PACKED entries do not fill the frame"));
                }
            }
            Frame::Data(DataFrame {
                call_id: h.call_id,
                first,
                more: has(flags::MORE),
                message_len,
                packed,
                payload,
            })
        }
        FrameType::End => Frame::End { call_id: h.call_id },
        FrameType::Ping => Frame::Ping {
            opaque: r.u64("ping value is missing")?,
        },
        FrameType::Pong => Frame::Pong {
            opaque: r.u64("pong value is missing")?,
        },
        FrameType::GoAway => {
            let last_call_id = r.u32("last call id is missing")?;
            let code = r.u16("status code is missing")?;
            let message = r.str16("message is cut short")?;
            if message.len() > MAX_MESSAGE_TEXT {
                return Err(r.err("message longer than 4096 bytes"));
            }
            Frame::GoAway(GoAway {
                last_call_id,
                code,
                message: message.to_owned(),
            })
        }
        FrameType::Credit => {
            let increment = r.u32("increment is missing")?;
            if increment == 0 {
                return Err(r.err("credit increment of 0"));
            }
            Frame::Credit { increment }
        }
        FrameType::StreamCredit => {
            let increment = r.u32("increment is missing")?;
            if increment == 0 {
                return Err(r.err("stream credit increment of 0"));
            }
            Frame::StreamCredit {
                call_id: h.call_id,
                increment,
            }
        }
        FrameType::Dictionary => {
            let id = r.u32("dictionary id is missing")?;
            let data = r.rest();
            if data.is_empty() {
                return Err(r.err("empty dictionary"));
            }
            Frame::Dictionary { id, data }
        }
        FrameType::Register => {
            let n = r.u16("method count is missing")?;
            // Each entry takes at least 10 bytes: never reserve more than the body holds.
            let mut methods = Vec::with_capacity(usize::from(n).min(r.remaining() / 10));
            for _ in 0..n {
                let (service, method) = full_name(&mut r)?;
                let flag = r.u8("method flags are missing")?;
                if flag > 0b111 {
                    return Err(r.err("undefined method flag bits"));
                }
                let mut text = || -> Result<String, FrameError> {
                    let s = r.str16("method info is cut short")?;
                    if s.len() > MAX_MESSAGE_TEXT {
                        return Err(r.err("method info text longer than 4096 bytes"));
                    }
                    Ok(s.to_owned())
                };
                let info = polycall_core::MethodInfo {
                    summary: text()?,
                    input: text()?,
                    output: text()?,
                    idempotent: flag & 1 != 0,
                    inline: false,
                    kind: polycall_core::CallKind::from_streams(flag & 2 != 0, flag & 4 != 0),
                };
                methods.push(MethodEntry {
                    service,
                    method,
                    info,
                });
            }
            Frame::Register {
                call_id: h.call_id,
                methods,
            }
        }
        FrameType::Unregister => {
            let n = r.u16("method count is missing")?;
            let mut methods = Vec::with_capacity(usize::from(n).min(r.remaining() / 4));
            for _ in 0..n {
                methods.push(full_name(&mut r)?);
            }
            Frame::Unregister {
                call_id: h.call_id,
                methods,
            }
        }
    };
    r.finish()?;
    Ok(frame)
}
