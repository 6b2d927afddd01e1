//! The connection state machine: feed it bytes, take out events and bytes to send.
//!
//! It owns everything that is protocol and nothing that is I/O: the preface and
//! handshake, call ids and the legal sequence of frames on each call, method-name
//! interning, fragmentation and reassembly, compression, flow-control credit, the
//! in-flight limit and goaway. The transport layer reads bytes into
//! [`Connection::recv_buf`] (or [`Connection::feed`]), calls [`Connection::process`],
//! handles [`Connection::poll_event`] and writes what [`Connection::poll_transmit`]
//! returns.
//!
//! The state machine is one type split by concern, as quinn-proto splits its
//! connection: this file holds the types, construction and frame dispatch;
//! `handshake.rs` the handshake and authentication; `inbound.rs` admission and
//! reassembly of what the peer sends; `flow.rs` credit; `outbound.rs` what this side
//! sends and in which order; `compression.rs` compression of outgoing messages.
//!
//! ```
//! use bytes::Bytes;
//! use polycall_core::{MethodName, Payload, ServiceName};
//! use polycall_proto::{Connection, Event, Settings, WireMeta};
//!
//! let mut client = Connection::client(Settings::default()).unwrap();
//! let mut server = Connection::server(Settings::default()).unwrap();
//! // Move bytes between the two until both are quiet.
//! fn pump(a: &mut Connection, b: &mut Connection) {
//!     loop {
//!         let mut chunks = Vec::new();
//!         a.poll_transmit(usize::MAX, &mut chunks);
//!         let mut back = Vec::new();
//!         b.poll_transmit(usize::MAX, &mut back);
//!         if chunks.is_empty() && back.is_empty() { break; }
//!         for c in chunks { b.feed(&c).unwrap(); }
//!         for c in back { a.feed(&c).unwrap(); }
//!     }
//! }
//! pump(&mut client, &mut server);
//! assert!(matches!(client.poll_event(), Some(Event::Connected)));
//! assert!(matches!(server.poll_event(), Some(Event::Connected)));
//!
//! let id = client.open_call(
//!     &ServiceName::new("debug")?, &MethodName::new("echo")?,
//!     Payload::raw("hi"), WireMeta::default(), false,
//! ).unwrap();
//! pump(&mut client, &mut server);
//! let Some(Event::Call(call)) = server.poll_event() else { panic!() };
//! server.send_reply(call.call_id, call.payload, false).unwrap();
//! pump(&mut client, &mut server);
//! let Some(Event::Reply { call_id, payload, .. }) = client.poll_event() else { panic!() };
//! assert_eq!((call_id, &payload.bytes[..]), (id, &b"hi"[..]));
//! # Ok::<(), polycall_core::NameError>(())
//! ```

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::{Bytes, BytesMut};
use polycall_core::{Code, ContentType, IdMap, MethodName, Payload, Priority, ServiceName, Status};

use crate::compress::{
    AdaptiveCompressor, Algorithm, CompressJob, Compressed, Decompressor, Deferred, SelectorConfig,
};
use crate::error::{ConfigError, ProtoError, SendError};
use crate::frame::{
    self, CallFrame, DataFrame, ErrorFrame, Frame, FrameBuf, GoAway, MethodEntry, MethodRef,
    ReplyFrame,
};
use crate::handshake::{
    AuthMethod, HANDSHAKE_MAX_FRAME, Negotiated, Settings, features, negotiate,
};
use crate::meta::WireMeta;

mod buffers;
mod compression;
mod flow;
mod handshake;
mod inbound;
mod outbound;
mod packing;

pub use packing::{PackLimits, PackedMessages, PackedWriter};

/// The 8 bytes each side sends before its first frame. The first byte, 0x89, is
/// neither libpolycall's PCR1 magic (`P`) nor its first-generation version byte (1).
pub const PREFACE: [u8; 8] = *b"\x89POLY\r\n\x1a";

/// Messages up to this size travel whole in their CALL frame.
const INLINE_CALL_MAX: usize = 8 * 1024;

/// Most method names one side may intern on a connection.
pub const MAX_INTERNED: u16 = 4096;

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The connecting side: sends `HELLO`, opens odd call ids.
    Client,
    /// The accepting side: answers with `WELCOME`, opens even call ids.
    Server,
}

/// Configuration of a [`Connection`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Protocol settings offered in the handshake.
    pub settings: Settings,
    /// Largest payload fragment per frame; messages above it are split and their
    /// fragments interleaved with other calls' frames. Capped by the peer's `max_frame`.
    pub fragment_size: u32,
    /// Adaptive compression settings.
    pub compression: SelectorConfig,
    /// Largest message the connection compresses itself, where its frames are
    /// produced; larger ones are sent as they are unless the caller compresses them
    /// elsewhere ([`Connection::call_compression_job`], [`crate::compress::CompressJob`]).
    pub max_compress_size: usize,
    /// Calls and replies whose compressed message is larger than this many bytes are
    /// delivered still compressed, as [`Event::Deferred`], for the caller to decompress
    /// away from the connection. `None`: every message is decompressed here.
    pub defer_decompression_above: Option<usize>,
    /// Most bytes of partly received messages held at once on the connection. A message
    /// that would go over is refused with `busy` (and a retry hint) instead of stalling
    /// the connection. At least `max_message`.
    pub reassembly_budget: usize,
    /// The one source of time of the state machine (it times compression); the
    /// system's monotonic clock by default, a fixed one for deterministic runs.
    pub clock: crate::Clock,
    /// Where to count what this connection compressed as it sent (shared by every
    /// connection given the same totals); `None`: not counted.
    pub compression_totals: Option<std::sync::Arc<crate::compress::CompressionTotals>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            fragment_size: 64 * 1024,
            compression: SelectorConfig::default(),
            reassembly_budget: 128 * 1024 * 1024,
            max_compress_size: 1024 * 1024,
            clock: crate::Clock::system(),
            defer_decompression_above: None,
            compression_totals: None,
        }
    }
}

impl Config {
    /// Sets the protocol settings offered in the handshake.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Sets the largest payload fragment per frame; larger messages are split (capped by
    /// the peer's `max_frame`).
    pub fn fragment_size(mut self, fragment_size: u32) -> Self {
        self.fragment_size = fragment_size;
        self
    }

    /// Sets the adaptive compression settings.
    pub fn compression(mut self, compression: SelectorConfig) -> Self {
        self.compression = compression;
        self
    }

    /// Sets the largest message the connection compresses itself; larger ones are sent as
    /// they are.
    pub fn max_compress_size(mut self, max_compress_size: usize) -> Self {
        self.max_compress_size = max_compress_size;
        self
    }

    /// Sets the compressed size above which calls and replies are delivered still
    /// compressed, as [`Event::Deferred`].
    pub fn defer_decompression_above(mut self, defer_decompression_above: usize) -> Self {
        self.defer_decompression_above = Some(defer_decompression_above);
        self
    }

    /// Counts what the connection compresses as it sends into `totals`.
    pub fn compression_totals(
        mut self,
        totals: std::sync::Arc<crate::compress::CompressionTotals>,
    ) -> Self {
        self.compression_totals = Some(totals);
        self
    }

    /// Sets the state machine's source of time.
    pub fn clock(mut self, clock: crate::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the most bytes of partly received messages held at once on the connection (at
    /// least `max_message`).
    pub fn reassembly_budget(mut self, reassembly_budget: usize) -> Self {
        self.reassembly_budget = reassembly_budget;
        self
    }
}

/// A call opened by the peer, with its complete first request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingCall {
    /// The call id (reply with it).
    pub call_id: u32,
    /// Service called.
    pub service: ServiceName,
    /// Method called.
    pub method: MethodName,
    /// The request message, reassembled and decompressed.
    pub payload: Payload,
    /// Deadline, priority, trace context and the rest.
    pub meta: WireMeta,
    /// Further request messages follow as [`Event::StreamMessage`], ended by
    /// [`Event::StreamEnd`].
    pub stream: bool,
    /// The call opened its request stream without a message (`EMPTY`): `payload` is
    /// empty and is not a message.
    pub empty: bool,
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake (and authentication, when one was negotiated) completed; see
    /// [`Connection::negotiated`] and [`Connection::principal`].
    Connected,
    /// A step of the authentication exchange is this side's to answer.
    ///
    /// On the client, the first arrives right after `WELCOME` with `step` 0 and no data:
    /// send the method's first message with [`Connection::auth_continue`]. Later ones
    /// carry the server's messages. On the server, each carries a client message: answer
    /// with [`Connection::auth_continue`], [`Connection::auth_accept`] or
    /// [`Connection::auth_reject`].
    Authenticate {
        /// The negotiated method.
        method: crate::AuthMethod,
        /// The peer's step number (0 on the client's first event).
        step: u8,
        /// The peer's method-specific bytes.
        data: Bytes,
    },
    /// The peer opened a call.
    Call(IncomingCall),
    /// The reply to a call this side opened.
    Reply {
        /// The call.
        call_id: u32,
        /// The reply message.
        payload: Payload,
        /// Further reply messages follow, ended by [`Event::StreamEnd`].
        stream: bool,
        /// The reply stream opened without a message (`EMPTY`): `payload` is empty and
        /// is not a message.
        empty: bool,
    },
    /// A further message of a stream (either direction).
    StreamMessage {
        /// The call.
        call_id: u32,
        /// The message.
        payload: Payload,
    },
    /// Further messages of a stream that arrived together (a packed `DATA` frame), in
    /// order, still packed: [`crate::frame::packed_entries`] gives each message's bytes
    /// (so whoever reads them slices them, on its own thread). Each counts as one
    /// message for [`Connection::stream_consumed`].
    StreamMessages {
        /// The call.
        call_id: u32,
        /// The messages' content type.
        content_type: ContentType,
        /// The packed messages (u32 little-endian length, bytes; one or more).
        packed: Bytes,
        /// How many messages.
        count: usize,
    },
    /// The peer's stream of messages on the call is complete.
    StreamEnd {
        /// The call.
        call_id: u32,
    },
    /// A call failed: the peer answered with an error, the message was refused
    /// (too large, corrupt), or the connection ended before the call did.
    Failed {
        /// The call.
        call_id: u32,
        /// Why.
        status: Status,
    },
    /// The peer gave up on a call it opened (or the connection ended under it): stop
    /// working on it; no reply is expected.
    Cancelled {
        /// The call.
        call_id: u32,
    },
    /// A provider announces methods. Answer with [`Connection::send_reply`] (empty) or
    /// [`Connection::send_error`].
    Register {
        /// The request's call id.
        call_id: u32,
        /// The methods.
        methods: Vec<MethodEntry>,
    },
    /// A call ([`Event::Call`]) or reply ([`Event::Reply`]) whose payload is still
    /// compressed (see [`Config::defer_decompression_above`]): decompress it with
    /// [`Deferred::decompress`], away from the connection, and handle the event it holds.
    Deferred(Deferred),
    /// A provider withdraws methods. Answer like [`Event::Register`].
    Unregister {
        /// The request's call id.
        call_id: u32,
        /// The methods.
        methods: Vec<(ServiceName, MethodName)>,
    },
    /// Answer to [`Connection::ping`].
    Pong {
        /// The ping's value.
        opaque: u64,
    },
    /// The peer will serve no call above `last_call_id` and open no new call. Calls
    /// this side opened above it were failed with `unavailable` (never processed, safe
    /// to retry elsewhere).
    GoAway {
        /// Highest call id of this side the peer still serves.
        last_call_id: u32,
        /// Why.
        status: Status,
    },
    /// The connection ended; no further events follow.
    Closed {
        /// Why (`ok` for a clean close).
        status: Status,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preface,
    Handshake,
    /// `WELCOME` named an authentication method: `AUTH` frames until the server accepts.
    Auth,
    Open,
    Closed,
}

/// Step number the server sends to accept an authentication (its data: the principal).
pub const AUTH_ACCEPTED: u8 = 0xFF;

/// Most steps an authentication exchange may take (client and server together).
pub const AUTH_MAX_STEPS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Admin,
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Assembly {
    content_type: ContentType,
    compression: Algorithm,
    /// The message so far: the only fragment as received (no copy), or, for a message
    /// of several fragments, a buffer of the declared length filled as they arrive.
    data: Received,
    len: usize,
    /// Bytes reserved against the connection's reassembly budget.
    reserved: usize,
}

#[derive(Debug)]
enum Received {
    One(Bytes),
    Many { buf: Vec<u8>, expected: usize },
}

#[derive(Debug)]
struct CallState {
    local: bool,
    kind: Kind,
    method_key: u64,
    /// Scheduling class of this call's frames (both directions).
    priority: Priority,
    /// Inbound: a message in progress.
    rx_msg: Option<Assembly>,
    /// Inbound: the first message (reply, for a local call) has started.
    rx_started: bool,
    /// Inbound: the peer sends a stream of messages.
    rx_stream: bool,
    /// Inbound: the peer's direction is complete.
    rx_done: bool,
    /// Outbound: further messages may be sent.
    tx_stream: bool,
    /// Outbound: this side's direction is complete.
    tx_done: bool,
    /// Outbound: the first reply was sent (peer calls).
    tx_replied: bool,
    /// Inbound: the first message was delivered.
    rx_delivered: bool,
    /// Peer calls: the name and metadata, until the first message completes (kept
    /// here, not boxed: most calls complete in their first frame, and a box would be
    /// an allocation a call).
    pending: Option<PendingCall>,
    /// Inbound stream: payload bytes the peer may still send on it (§6.1).
    rx_window: u64,
    /// Inbound stream: bytes received whose stream credit is not yet returned.
    rx_to_return: u64,
    /// Inbound stream: the messages delivered and not yet consumed
    /// ([`Connection::stream_consumed`]), oldest first, as runs of (messages, wire
    /// bytes) — a packed frame is one run — and the sum of the bytes.
    rx_held: VecDeque<(u64, u64)>,
    rx_held_bytes: u64,
}

impl CallState {
    fn new(local: bool, kind: Kind, method_key: u64) -> Self {
        Self {
            local,
            kind,
            method_key,
            priority: Priority::Normal,
            rx_msg: None,
            rx_started: false,
            rx_stream: false,
            rx_done: false,
            tx_stream: false,
            tx_done: false,
            tx_replied: false,
            rx_delivered: false,
            pending: None,
            rx_window: 0,
            rx_to_return: 0,
            rx_held: VecDeque::new(),
            rx_held_bytes: 0,
        }
    }
}

#[derive(Debug)]
enum OutKind {
    Reply { stream: bool },
    Message,
}

#[derive(Debug)]
struct OutMsg {
    kind: OutKind,
    content_type: ContentType,
    compression: Algorithm,
    data: Bytes,
    offset: usize,
    started: bool,
}

/// What one call has queued to send, in its class.
#[derive(Debug)]
struct CallQueue {
    class: Priority,
    items: VecDeque<OutItem>,
    /// Payload bytes of `items` not yet framed.
    bytes: usize,
}

#[derive(Debug)]
enum OutItem {
    Msg(OutMsg),
    /// Stream messages a producer packed (see `packing`).
    Packed(packing::OutPacked),
    End,
    /// A stream's failure, after the messages queued before it.
    Fail(Box<ErrorFrame>),
}

impl OutItem {
    /// Payload bytes not yet framed.
    fn unframed(&self) -> usize {
        match self {
            OutItem::Msg(m) => m.data.len() - m.offset,
            OutItem::Packed(p) => p.body.len() - p.offset,
            OutItem::End | OutItem::Fail(_) => 0,
        }
    }
}

fn method_key(service: &ServiceName, method: &MethodName) -> u64 {
    let mut h = DefaultHasher::new();
    service.as_str().hash(&mut h);
    method.as_str().hash(&mut h);
    h.finish()
}

/// The polycall connection state machine (sans-IO). See the [module docs](self).
pub struct Connection {
    role: Role,
    config: Config,
    state: State,
    negotiated: Option<Negotiated>,
    crc: bool,
    /// Last authentication step sent or received.
    auth_step: u8,
    /// Whose turn it is in the authentication exchange: true when this side must answer.
    auth_our_turn: bool,
    /// The authenticated principal: accepted by this server, or announced by the server.
    principal: Option<String>,
    rx: BytesMut,
    /// What decoding the last packed `DATA` frame found in it.
    last_packed: Option<frame::PackedSummary>,
    /// Emptied send queues, reused by the next calls.
    spare_queues: Vec<VecDeque<OutItem>>,
    out: FrameBuf,
    events: VecDeque<(Event, u64)>,
    calls: IdMap<u32, CallState>,
    next_local_id: u32,
    highest_peer_id: u32,
    local_open: u32,
    peer_open: u32,
    tx_names: HashMap<(ServiceName, MethodName), u16>,
    rx_names: HashMap<u16, (ServiceName, MethodName)>,
    send_credit: u64,
    recv_credit: u64,
    credit_to_return: u64,
    held_bytes: u64,
    reassembling: usize,
    /// Spare buffers for messages that arrive in several frames (see `buffers`).
    buffers: std::sync::Arc<buffers::BufferPool>,
    queues: IdMap<u32, CallQueue>,
    /// Stream windows of this side's streaming directions: payload bytes each may still
    /// send (§6.1). Kept until the direction's output is all framed.
    stream_credit: IdMap<u32, u64>,
    ready: polycall_core::ClassQueues<u32>,
    queued_bytes: usize,
    peer_going_away: Option<u32>,
    local_going_away: Option<u32>,
    compressor: AdaptiveCompressor,
    /// A compression done by the caller, for the message being queued now.
    precompressed: Option<Compressed>,
    decompressor: Decompressor,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("calls", &self.calls.len())
            .finish()
    }
}

impl Connection {
    /// The connecting side with default configuration and `settings`. It queues the
    /// preface and `HELLO` at once.
    pub fn client(settings: Settings) -> Result<Self, ConfigError> {
        Self::new(
            Role::Client,
            Config {
                settings,
                ..Config::default()
            },
        )
    }

    /// The accepting side with default configuration and `settings`.
    pub fn server(settings: Settings) -> Result<Self, ConfigError> {
        Self::new(
            Role::Server,
            Config {
                settings,
                ..Config::default()
            },
        )
    }

    /// A connection of `role` with `config`. Fails when the settings are incoherent.
    pub fn new(role: Role, config: Config) -> Result<Self, ConfigError> {
        config.settings.validate()?;
        if config.fragment_size == 0 {
            return Err(ConfigError::Zero {
                field: "fragment_size",
            });
        }
        if config.reassembly_budget < config.settings.limits.max_message as usize {
            return Err(ConfigError::ReassemblyBudget {
                budget: config.reassembly_budget,
                max_message: config.settings.limits.max_message,
            });
        }
        let mut c = Self {
            role,
            compressor: AdaptiveCompressor::new(config.compression.clone())
                .with_clock(config.clock.clone()),
            recv_credit: config.settings.limits.initial_window.into(),
            config,
            state: State::Preface,
            negotiated: None,
            crc: false,
            auth_step: 0,
            auth_our_turn: false,
            principal: None,
            rx: BytesMut::new(),
            last_packed: None,
            spare_queues: Vec::new(),
            out: FrameBuf::new(),
            events: VecDeque::new(),
            calls: IdMap::default(),
            next_local_id: if role == Role::Client { 1 } else { 2 },
            highest_peer_id: 0,
            local_open: 0,
            peer_open: 0,
            tx_names: HashMap::new(),
            rx_names: HashMap::new(),
            send_credit: 0,
            credit_to_return: 0,
            held_bytes: 0,
            reassembling: 0,
            buffers: buffers::BufferPool::new(),
            queues: IdMap::default(),
            stream_credit: IdMap::default(),
            ready: polycall_core::ClassQueues::default(),
            queued_bytes: 0,
            peer_going_away: None,
            local_going_away: None,
            precompressed: None,
            decompressor: Decompressor::new(),
        };
        c.out.push_raw(&PREFACE);
        if role == Role::Client {
            Frame::Hello(c.config.settings.hello()).encode(&mut c.out, false);
        }
        Ok(c)
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// What the handshake agreed, once [`Event::Connected`] has been emitted.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Whether the handshake completed and the connection is not closed.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Number of calls open in either direction.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// Payload bytes this side may still send before the peer grants more credit.
    pub fn send_credit(&self) -> u64 {
        self.send_credit
    }

    /// Gives the link throughput measured by the transport to the compression selector.
    pub fn set_link_throughput(&mut self, bytes_per_sec: f64) {
        self.compressor
            .selector_mut()
            .set_link_throughput(bytes_per_sec);
    }

    // ------------------------------------------------------------------ input

    /// The receive buffer: read from the transport straight into it, then call
    /// [`Connection::process`].
    pub fn recv_buf(&mut self) -> &mut BytesMut {
        &mut self.rx
    }

    /// Appends `data` to the receive buffer and processes it.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        self.rx.extend_from_slice(data);
        self.process()
    }

    /// Decodes and handles every whole frame in the receive buffer. On a connection
    /// error the error frame for the peer is queued, every open call is failed (events),
    /// the connection is closed, and the error is returned.
    pub fn process(&mut self) -> Result<(), ProtoError> {
        loop {
            match self.state {
                State::Closed => return Err(ProtoError::Closed),
                State::Preface => {
                    if self.rx.len() < PREFACE.len() {
                        if !PREFACE.starts_with(&self.rx) {
                            return Err(self
                                .fail(ProtoError::NotPolycall(crate::detect::describe(&self.rx))));
                        }
                        return Ok(());
                    }
                    if self.rx[..PREFACE.len()] != PREFACE {
                        return Err(
                            self.fail(ProtoError::NotPolycall(crate::detect::describe(&self.rx)))
                        );
                    }
                    let _ = self.rx.split_to(PREFACE.len());
                    self.state = State::Handshake;
                }
                State::Handshake | State::Auth | State::Open => {
                    let (max, crc) = match (&self.negotiated, self.state) {
                        (Some(n), State::Open) => (n.local_limits.max_frame, self.crc),
                        (Some(_), _) => (HANDSHAKE_MAX_FRAME, self.crc),
                        (None, _) => (HANDSHAKE_MAX_FRAME, false),
                    };
                    let mut packed = None;
                    let frame = match frame::decode_summarized(&mut self.rx, max, crc, &mut packed)
                    {
                        Ok(Some(f)) => f,
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(self.fail(e.into())),
                    };
                    self.last_packed = packed;
                    if let Err(e) = self.handle(frame) {
                        return Err(self.fail(e));
                    }
                }
            }
        }
    }

    /// Closes the connection because of `err`: tells the peer (unless the peer is the
    /// one who closed), fails every open call.
    fn fail(&mut self, err: ProtoError) -> ProtoError {
        if self.state == State::Closed {
            return err;
        }
        if !matches!(err, ProtoError::Remote(_)) {
            let mut ef = ErrorFrame::from_status(0, &err.status());
            if let ProtoError::Handshake(s) = &err
                && s.code == Code::VersionMismatch
            {
                let (lo, hi) = (
                    self.config.settings.min_version,
                    self.config.settings.max_version,
                );
                ef.supported_versions = Some((lo, hi));
            }
            Frame::Error(ef).encode(&mut self.out, self.crc);
        }
        self.close_calls(err.status());
        self.state = State::Closed;
        self.events.push_back((
            Event::Closed {
                status: err.status(),
            },
            0,
        ));
        err
    }

    fn close_calls(&mut self, status: Status) {
        let mut ids: Vec<u32> = self.calls.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(c) = self.take_call(&id) {
                let ev = if c.local {
                    Event::Failed {
                        call_id: id,
                        status: Status::unavailable(format!(
                            "connection ended before the call completed: {status}"
                        )),
                    }
                } else if c.pending.is_none() {
                    Event::Cancelled { call_id: id }
                } else {
                    continue;
                };
                self.events.push_back((ev, 0));
            }
        }
        self.queues.clear();
        self.stream_credit.clear();
        self.ready.clear();
        self.local_open = 0;
        self.peer_open = 0;
    }

    /// Removes a call, releasing what its partly received message held.
    fn take_call(&mut self, call_id: &u32) -> Option<CallState> {
        let c = self.calls.remove(call_id)?;
        if let Some(m) = &c.rx_msg {
            self.reassembling -= m.reserved;
        }
        Some(c)
    }

    fn violation(msg: impl Into<String>) -> ProtoError {
        ProtoError::Violation(msg.into())
    }

    fn is_local_id(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role == Role::Client)
    }

    fn handle(&mut self, frame: Frame) -> Result<(), ProtoError> {
        if self.state == State::Handshake {
            return self.handle_handshake(frame);
        }
        if self.state == State::Auth {
            return self.handle_auth(frame);
        }
        let flow = frame.flow_len() as u64;
        let flow_call = frame.call_id();
        if flow > 0 {
            if flow > self.recv_credit {
                return Err(ProtoError::FlowControl {
                    used: flow,
                    allowed: self.recv_credit,
                });
            }
            self.recv_credit -= flow;
            self.credit_to_return += flow;
        }
        self.dispatch(frame)?;
        if flow > 0 {
            self.charge_stream(flow_call, flow)?;
        }
        Ok(())
    }

    // Inlined into `handle`: a frame is a large value, moved once less.
    #[inline(always)]
    fn dispatch(&mut self, frame: Frame) -> Result<(), ProtoError> {
        match frame {
            Frame::Hello(_) | Frame::Welcome(_) => {
                Err(Self::violation("handshake frame after the handshake"))
            }
            Frame::Auth(_) => Err(ProtoError::Violation(
                "AUTH frame after the authentication exchange ended".into(),
            )),
            Frame::Call(c) => self.on_call(c),
            Frame::Reply(r) => self.on_reply(r),
            Frame::Data(d) => self.on_data(d),
            Frame::End { call_id } => self.on_end(call_id),
            Frame::Error(e) => self.on_error(e),
            Frame::Cancel { call_id } => {
                if self.is_local_id(call_id) {
                    return Err(Self::violation(format!(
                        "CANCEL of call {call_id}, which this side opened"
                    )));
                }
                if let Some(c) = self.take_call(&call_id) {
                    self.drop_call_output(call_id);
                    self.peer_open = self.peer_open.saturating_sub(1);
                    if c.pending.is_none() {
                        // Only a call the application has seen needs to be stopped.
                        self.events.push_back((Event::Cancelled { call_id }, 0));
                    }
                } else {
                    self.check_known_peer_id(call_id, "CANCEL")?;
                }
                Ok(())
            }
            Frame::Ping { opaque } => {
                Frame::Pong { opaque }.encode(&mut self.out, self.crc);
                Ok(())
            }
            Frame::Pong { opaque } => {
                self.events.push_back((Event::Pong { opaque }, 0));
                Ok(())
            }
            Frame::GoAway(g) => {
                self.on_goaway(g);
                Ok(())
            }
            Frame::Credit { increment } => {
                self.send_credit = self.send_credit.saturating_add(increment.into());
                Ok(())
            }
            Frame::StreamCredit { call_id, increment } => self.on_stream_credit(call_id, increment),
            Frame::Dictionary { id, data } => self.on_dictionary(id, &data),
            Frame::Register { call_id, methods } => {
                self.open_peer_admin(call_id, "REGISTER")?;
                self.events
                    .push_back((Event::Register { call_id, methods }, 0));
                Ok(())
            }
            Frame::Unregister { call_id, methods } => {
                self.open_peer_admin(call_id, "UNREGISTER")?;
                self.events
                    .push_back((Event::Unregister { call_id, methods }, 0));
                Ok(())
            }
        }
    }

    /// The next event, if any.
    ///
    /// Flow control: credit for received payload bytes is returned to the peer as they
    /// arrive, except while the messages waiting here to be taken hold half the
    /// initial window or more. An application that stops taking events thus stops the
    /// peer after at most about one window, and taking events resumes it.
    pub fn poll_event(&mut self) -> Option<Event> {
        let (event, held) = self.events.pop_front()?;
        self.held_bytes -= held;
        self.maybe_return_credit();
        Some(event)
    }

    /// Payload bytes of messages received and not yet taken with
    /// [`Connection::poll_event`].
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }
}

struct PendingCall {
    service: ServiceName,
    method: MethodName,
    meta: WireMeta,
    stream: bool,
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingCall({}.{})", self.service, self.method)
    }
}

fn frame_text(s: &str) -> String {
    crate::wire::clip(s, frame::MAX_MESSAGE_TEXT).to_owned()
}

/// The method reference for a call: the interned id once bound, the name (binding a
/// new id while ids last) on first use.
fn intern(
    names: &mut HashMap<(ServiceName, MethodName), u16>,
    service: &ServiceName,
    method: &MethodName,
) -> MethodRef {
    let key = (service.clone(), method.clone());
    if let Some(&id) = names.get(&key) {
        return MethodRef { id, name: None };
    }
    let next = names.len() as u16 + 1;
    let id = if next <= MAX_INTERNED {
        names.insert(key.clone(), next);
        next
    } else {
        0
    };
    MethodRef {
        id,
        name: Some(key),
    }
}
