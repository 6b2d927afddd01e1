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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            fragment_size: 64 * 1024,
            compression: SelectorConfig::default(),
            reassembly_budget: 128 * 1024 * 1024,
            max_compress_size: 1024 * 1024,
            defer_decompression_above: None,
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
    },
    /// A further message of a stream (either direction).
    StreamMessage {
        /// The call.
        call_id: u32,
        /// The message.
        payload: Payload,
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
    Many { buf: BytesMut, expected: usize },
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
    /// Peer calls: the name and metadata, until the first message completes.
    pending: Option<Box<PendingCall>>,
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
}

#[derive(Debug)]
enum OutItem {
    Msg(OutMsg),
    End,
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
    queues: IdMap<u32, CallQueue>,
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
            compressor: AdaptiveCompressor::new(config.compression.clone()),
            recv_credit: config.settings.limits.initial_window.into(),
            config,
            state: State::Preface,
            negotiated: None,
            crc: false,
            auth_step: 0,
            auth_our_turn: false,
            principal: None,
            rx: BytesMut::new(),
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
            queues: IdMap::default(),
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
                    let frame = match frame::decode(&mut self.rx, max, crc) {
                        Ok(Some(f)) => f,
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(self.fail(e.into())),
                    };
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

    fn handle_handshake(&mut self, frame: Frame) -> Result<(), ProtoError> {
        match (self.role, frame) {
            (Role::Server, Frame::Hello(hello)) => match negotiate(&self.config.settings, &hello) {
                Ok(welcome) => {
                    let n = Negotiated::for_server(&self.config.settings, &hello, &welcome);
                    Frame::Welcome(welcome).encode(&mut self.out, false);
                    if n.auth_method == AuthMethod::None {
                        self.open(n);
                    } else {
                        // The client speaks first.
                        self.start_auth(n, false);
                    }
                    Ok(())
                }
                Err(ef) => {
                    let status = ef.status();
                    Frame::Error(ef).encode(&mut self.out, false);
                    // The error frame is queued already; close without a second one.
                    self.close_calls(status.clone());
                    self.state = State::Closed;
                    self.events.push_back((
                        Event::Closed {
                            status: status.clone(),
                        },
                        0,
                    ));
                    Err(ProtoError::Handshake(status))
                }
            },
            (Role::Client, Frame::Welcome(w)) => {
                let n = Negotiated::for_client(&self.config.settings, &w)
                    .map_err(ProtoError::Handshake)?;
                let method = n.auth_method;
                if method == AuthMethod::None {
                    self.open(n);
                } else {
                    self.start_auth(n, true);
                    self.events.push_back((
                        Event::Authenticate {
                            method,
                            step: 0,
                            data: Bytes::new(),
                        },
                        0,
                    ));
                }
                Ok(())
            }
            (_, Frame::Error(e)) if e.call_id == 0 => Err(ProtoError::Remote(e.status())),
            (role, f) => Err(Self::violation(format!(
                "{:?} frame during the handshake (expected {})",
                f.frame_type(),
                if role == Role::Server {
                    "HELLO"
                } else {
                    "WELCOME"
                }
            ))),
        }
    }

    fn open(&mut self, n: Negotiated) {
        self.crc = n.has(features::CRC32C);
        self.send_credit = n.peer_limits.initial_window.into();
        self.negotiated = Some(n);
        self.state = State::Open;
        self.events.push_back((Event::Connected, 0));
    }

    /// Enters the authentication exchange: frames after `WELCOME` already carry the
    /// CRC trailer when negotiated, but stay within the handshake's frame limit.
    fn start_auth(&mut self, n: Negotiated, our_turn: bool) {
        self.crc = n.has(features::CRC32C);
        self.negotiated = Some(n);
        self.state = State::Auth;
        self.auth_our_turn = our_turn;
    }

    fn auth_method(&self) -> AuthMethod {
        self.negotiated
            .as_ref()
            .map_or(AuthMethod::None, |n| n.auth_method)
    }

    fn handle_auth(&mut self, frame: Frame) -> Result<(), ProtoError> {
        let a = match frame {
            Frame::Auth(a) => a,
            Frame::Error(e) if e.call_id == 0 => return Err(ProtoError::Remote(e.status())),
            f => {
                return Err(Self::violation(format!(
                    "{:?} frame during authentication (expected AUTH)",
                    f.frame_type()
                )));
            }
        };
        let method = self.auth_method();
        if a.method != method as u8 {
            return Err(Self::violation(format!(
                "AUTH for method {} while method {} was negotiated",
                a.method, method as u8
            )));
        }
        if self.auth_our_turn {
            return Err(Self::violation(
                "AUTH frame out of turn: this side has not answered the last step",
            ));
        }
        if self.role == Role::Client && a.step == AUTH_ACCEPTED {
            let principal = std::str::from_utf8(&a.data)
                .map_err(|_| Self::violation("the accepted principal is not UTF-8"))?;
            if principal.len() > 1024 {
                return Err(Self::violation("the accepted principal exceeds 1024 bytes"));
            }
            self.principal = (!principal.is_empty()).then(|| principal.to_owned());
            let n = self.negotiated.take().expect("negotiated before AUTH");
            self.open(n);
            return Ok(());
        }
        // Client steps are odd, server steps even, each one more than the last.
        let expected = self.auth_step + 1;
        if a.step != expected || expected > AUTH_MAX_STEPS {
            return Err(Self::violation(format!(
                "AUTH step {} where step {expected} was expected (at most {AUTH_MAX_STEPS})",
                a.step
            )));
        }
        self.auth_step = a.step;
        self.auth_our_turn = true;
        self.events.push_back((
            Event::Authenticate {
                method,
                step: a.step,
                data: a.data,
            },
            0,
        ));
        Ok(())
    }

    fn check_auth_turn(&self) -> Result<(), SendError> {
        match self.state {
            State::Auth if self.auth_our_turn => Ok(()),
            State::Closed => Err(SendError::Closed),
            _ => Err(SendError::NotConnected),
        }
    }

    /// Sends this side's next message of the authentication exchange (after an
    /// [`Event::Authenticate`]).
    pub fn auth_continue(&mut self, data: Bytes) -> Result<(), SendError> {
        self.check_auth_turn()?;
        let step = self.auth_step + 1;
        if step > AUTH_MAX_STEPS {
            return Err(SendError::Closed);
        }
        self.auth_step = step;
        self.auth_our_turn = false;
        let method = self.auth_method() as u8;
        Frame::Auth(crate::frame::Auth { method, step, data }).encode(&mut self.out, self.crc);
        Ok(())
    }

    /// The server accepts the client as `principal` (empty: authenticated but unnamed);
    /// the connection opens ([`Event::Connected`]).
    pub fn auth_accept(&mut self, principal: &str) -> Result<(), SendError> {
        self.check_auth_turn()?;
        if self.role != Role::Server {
            return Err(SendError::NotConnected);
        }
        let method = self.auth_method() as u8;
        Frame::Auth(crate::frame::Auth {
            method,
            step: AUTH_ACCEPTED,
            data: Bytes::copy_from_slice(principal.as_bytes()),
        })
        .encode(&mut self.out, self.crc);
        self.principal = (!principal.is_empty()).then(|| principal.to_owned());
        let n = self.negotiated.take().expect("negotiated before AUTH");
        self.open(n);
        Ok(())
    }

    /// The server refuses the client: an `ERROR` frame (call id 0) with `status`
    /// (`unauthenticated`), then the connection closes.
    pub fn auth_reject(&mut self, status: &Status) -> Result<(), SendError> {
        self.check_auth_turn()?;
        Frame::Error(ErrorFrame::from_status(0, status)).encode(&mut self.out, self.crc);
        self.close_calls(status.clone());
        self.state = State::Closed;
        self.events.push_back((
            Event::Closed {
                status: status.clone(),
            },
            0,
        ));
        Ok(())
    }

    /// Who the peer authenticated as: on a server, the principal it accepted; on a
    /// client, the principal the server announced. `None` without authentication.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    fn local_limits(&self) -> crate::Limits {
        self.negotiated
            .as_ref()
            .map_or(self.config.settings.limits, |n| n.local_limits)
    }

    fn check_known_peer_id(&self, id: u32, what: &str) -> Result<(), ProtoError> {
        if self.is_local_id(id) {
            return Err(Self::violation(format!(
                "{what} for call {id}, which this side opened"
            )));
        }
        if id > self.highest_peer_id {
            return Err(Self::violation(format!(
                "{what} for call {id}, which was never opened"
            )));
        }
        Ok(())
    }

    fn check_known_local_id(&self, id: u32, what: &str) -> Result<(), ProtoError> {
        if !self.is_local_id(id) {
            return Err(Self::violation(format!(
                "{what} for call {id}, which the peer opened"
            )));
        }
        if id >= self.next_local_id {
            return Err(Self::violation(format!(
                "{what} for call {id}, which was never opened"
            )));
        }
        Ok(())
    }

    /// Checks a new peer call id; returns whether the call is accepted (false: refused
    /// with busy or unavailable, its data will be discarded).
    fn admit_peer_call(&mut self, call_id: u32, what: &str) -> Result<bool, ProtoError> {
        if self.is_local_id(call_id) {
            return Err(Self::violation(format!(
                "{what} with call id {call_id} of this side's parity"
            )));
        }
        if call_id <= self.highest_peer_id {
            return Err(Self::violation(format!(
                "{what} reuses call id {call_id} (ids must increase; highest so far {})",
                self.highest_peer_id
            )));
        }
        self.highest_peer_id = call_id;
        if self.local_going_away.is_some_and(|last| call_id > last) {
            self.send_status(
                call_id,
                &Status::unavailable("the connection is going away; retry on a new one"),
            );
            return Ok(false);
        }
        let limit = self.local_limits().max_in_flight;
        if self.peer_open >= limit {
            let status = Status::busy(format!(
                "in-flight limit of {limit} calls on this connection reached"
            ))
            .with_retry_after(std::time::Duration::from_millis(10));
            self.send_status(call_id, &status);
            return Ok(false);
        }
        Ok(true)
    }

    fn open_peer_admin(&mut self, call_id: u32, what: &str) -> Result<(), ProtoError> {
        if self.role != Role::Server {
            return Err(Self::violation(format!(
                "{what} sent to the connecting side"
            )));
        }
        if self.admit_peer_call(call_id, what)? {
            let mut c = CallState::new(false, Kind::Admin, 0);
            c.rx_done = true;
            c.rx_started = true;
            c.rx_delivered = true;
            self.calls.insert(call_id, c);
            self.peer_open += 1;
        }
        Ok(())
    }

    fn on_call(&mut self, f: CallFrame) -> Result<(), ProtoError> {
        let (service, method) = self.resolve_method(&f.method)?;
        if f.stream && !self.streaming() {
            return Err(Self::violation(
                "streaming CALL, but streaming was not negotiated",
            ));
        }
        if !self.admit_peer_call(f.call_id, "CALL")? {
            // Refused: later fragments of this call are ignored.
            return Ok(());
        }
        self.peer_open += 1;
        let mut c = CallState::new(false, Kind::Call, method_key(&service, &method));
        c.priority = f.meta.priority.unwrap_or_default();
        c.rx_stream = f.stream;
        c.rx_started = true;
        c.pending = Some(Box::new(PendingCall {
            service,
            method,
            meta: f.meta,
            stream: f.stream,
        }));
        self.calls.insert(f.call_id, c);
        self.start_message(
            f.call_id,
            f.content_type,
            f.compression,
            f.payload,
            f.message_len,
        )
    }

    fn streaming(&self) -> bool {
        self.negotiated
            .as_ref()
            .is_some_and(|n| n.has(features::STREAMING))
    }

    fn resolve_method(&mut self, m: &MethodRef) -> Result<(ServiceName, MethodName), ProtoError> {
        match &m.name {
            Some(names) => {
                if m.id != 0 {
                    if m.id > MAX_INTERNED {
                        return Err(Self::violation(format!(
                            "method id {} above the interning limit of {MAX_INTERNED}",
                            m.id
                        )));
                    }
                    match self.rx_names.entry(m.id) {
                        Entry::Occupied(_) => {
                            return Err(Self::violation(format!("method id {} bound twice", m.id)));
                        }
                        Entry::Vacant(v) => {
                            v.insert(names.clone());
                        }
                    }
                }
                Ok(names.clone())
            }
            None => self.rx_names.get(&m.id).cloned().ok_or_else(|| {
                Self::violation(format!("method id {} was never bound to a name", m.id))
            }),
        }
    }

    fn on_reply(&mut self, f: ReplyFrame) -> Result<(), ProtoError> {
        let streaming = self.streaming();
        let Some(c) = self.calls.get_mut(&f.call_id) else {
            self.check_known_local_id(f.call_id, "REPLY")?;
            return Ok(());
        };
        if !c.local {
            return Err(Self::violation(format!(
                "REPLY on call {}, which the peer opened",
                f.call_id
            )));
        }
        if c.rx_started {
            return Err(Self::violation(format!(
                "second REPLY on call {}",
                f.call_id
            )));
        }
        if f.stream && (!streaming || c.kind == Kind::Admin) {
            return Err(Self::violation(
                "streaming REPLY, but streaming was not negotiated for this call",
            ));
        }
        c.rx_started = true;
        c.rx_stream = f.stream;
        self.start_message(
            f.call_id,
            f.content_type,
            f.compression,
            f.payload,
            f.message_len,
        )
    }

    fn on_data(&mut self, f: DataFrame) -> Result<(), ProtoError> {
        let max = self.local_limits().max_message as usize;
        let Some(c) = self.calls.get_mut(&f.call_id) else {
            if self.is_local_id(f.call_id) {
                self.check_known_local_id(f.call_id, "DATA")?;
            } else {
                self.check_known_peer_id(f.call_id, "DATA")?;
            }
            return Ok(());
        };
        if let Some((ct, alg)) = f.first {
            if !c.rx_started || !c.rx_stream || c.rx_done || c.rx_msg.is_some() {
                return Err(Self::violation(format!(
                    "DATA starting a message on call {}, which has no open stream from the peer",
                    f.call_id
                )));
            }
            return self.start_message(f.call_id, ct, alg, f.payload, f.message_len);
        }
        let Some(msg) = c.rx_msg.as_mut() else {
            return Err(Self::violation(format!(
                "DATA continuing a message on call {}, but no message is in progress",
                f.call_id
            )));
        };
        msg.len += f.payload.len();
        let Received::Many { buf, expected } = &mut msg.data else {
            return Err(Self::violation(
                "DATA continuing a message that was not fragmented",
            ));
        };
        let expected = *expected;
        let wrong = if msg.len > expected {
            Some("its fragments exceed the declared message length")
        } else if !f.more && msg.len != expected {
            Some("its fragments end short of the declared message length")
        } else {
            None
        };
        if let Some(why) = wrong {
            let status = Status::malformed(format!(
                "message on call {}: {why} ({expected} bytes)",
                f.call_id
            ));
            self.refuse_message(f.call_id, status);
            return Ok(());
        }
        debug_assert!(msg.len <= max);
        buf.extend_from_slice(&f.payload);
        if f.more {
            Ok(())
        } else {
            self.complete_message(f.call_id);
            Ok(())
        }
    }

    fn start_message(
        &mut self,
        call_id: u32,
        content_type: ContentType,
        compression: Algorithm,
        payload: Bytes,
        message_len: Option<u32>,
    ) -> Result<(), ProtoError> {
        let max = self.local_limits().max_message as usize;
        let allowed = self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.compressions.contains(&compression));
        let budget = self.config.reassembly_budget;
        let in_use = self.reassembling;
        let Some(c) = self.calls.get_mut(&call_id) else {
            return Ok(());
        };
        let len = payload.len();
        let total = message_len.map_or(len, |n| n as usize);
        let refusal = if !allowed {
            Some(Status::malformed(format!(
                "message compressed with {}, which was not negotiated",
                compression.name()
            )))
        } else if total > max {
            Some(Status::too_large(format!(
                "message of {total} bytes exceeds the limit of {max}"
            )))
        } else if message_len.is_some() && in_use + total > budget {
            Some(
                Status::busy(format!(
                    "{in_use} bytes of partly received messages are held (budget {budget}); retry shortly"
                ))
                .with_retry_after(std::time::Duration::from_millis(20)),
            )
        } else {
            None
        };
        if let Some(status) = refusal {
            self.refuse_message(call_id, status);
            return Ok(());
        }
        let (data, reserved) = match message_len {
            None => (Received::One(payload), 0),
            Some(n) => {
                // Allocated once at the declared size (bounded by max_message and the
                // budget); each fragment is copied in as it arrives.
                let mut buf = BytesMut::with_capacity(n as usize);
                buf.extend_from_slice(&payload);
                (
                    Received::Many {
                        buf,
                        expected: n as usize,
                    },
                    n as usize,
                )
            }
        };
        c.rx_msg = Some(Assembly {
            content_type,
            compression,
            data,
            len,
            reserved,
        });
        self.reassembling += reserved;
        if message_len.is_none() {
            self.complete_message(call_id);
        }
        Ok(())
    }

    /// A message on a call cannot be accepted: the call ends (an error to the peer for
    /// its call, a cancel and a local failure for ours); later frames are ignored.
    fn refuse_message(&mut self, call_id: u32, status: Status) {
        let Some(c) = self.take_call(&call_id) else {
            return;
        };
        self.drop_call_output(call_id);
        if c.local {
            self.local_open = self.local_open.saturating_sub(1);
            Frame::Cancel { call_id }.encode(&mut self.out, self.crc);
            self.events
                .push_back((Event::Failed { call_id, status }, 0));
        } else {
            self.peer_open = self.peer_open.saturating_sub(1);
            if c.pending.is_none() {
                // The application saw the call already: tell it to stop.
                self.events.push_back((Event::Cancelled { call_id }, 0));
            }
            self.send_status(call_id, &status);
        }
    }

    fn complete_message(&mut self, call_id: u32) {
        let max = self.local_limits().max_message as usize;
        let Some(c) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(msg) = c.rx_msg.take() else { return };
        self.reassembling -= msg.reserved;
        let wire_len = msg.len as u64;
        let joined = match msg.data {
            Received::One(b) => b,
            Received::Many { buf, .. } => buf.freeze(),
        };
        // The first message of a call or reply may be handed out still compressed.
        let defer = msg.compression != Algorithm::None
            && !c.rx_delivered
            && (c.pending.is_some() || c.local)
            && self
                .config
                .defer_decompression_above
                .is_some_and(|n| joined.len() > n);
        let bytes = if msg.compression == Algorithm::None || defer {
            joined
        } else {
            match self.decompressor.decompress(msg.compression, &joined, max) {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    let status = match e {
                        crate::compress::CompressError::TooLarge { .. } => {
                            Status::too_large(e.to_string())
                        }
                        _ => Status::malformed(e.to_string()),
                    };
                    self.refuse_message(call_id, status);
                    return;
                }
            }
        };
        let Some(c) = self.calls.get_mut(&call_id) else {
            return;
        };
        let payload = Payload::new(bytes, msg.content_type);
        let first = !c.rx_delivered;
        c.rx_delivered = true;
        if !c.rx_stream {
            c.rx_done = true;
        }
        let event = if let Some(p) = c.pending.take() {
            Event::Call(IncomingCall {
                call_id,
                service: p.service,
                method: p.method,
                payload,
                meta: p.meta,
                stream: p.stream,
            })
        } else if first && c.local {
            Event::Reply {
                call_id,
                payload,
                stream: c.rx_stream,
            }
        } else {
            Event::StreamMessage { call_id, payload }
        };
        let event = if defer {
            Event::Deferred(Deferred {
                event: Box::new(event),
                algorithm: msg.compression,
                limit: max,
            })
        } else {
            event
        };
        self.held_bytes += wire_len;
        self.events.push_back((event, wire_len));
        self.finish_if_done(call_id);
    }

    fn on_end(&mut self, call_id: u32) -> Result<(), ProtoError> {
        let Some(c) = self.calls.get_mut(&call_id) else {
            if self.is_local_id(call_id) {
                return self.check_known_local_id(call_id, "END");
            }
            return self.check_known_peer_id(call_id, "END");
        };
        if !c.rx_started || !c.rx_stream || c.rx_done || c.rx_msg.is_some() {
            return Err(Self::violation(format!(
                "END on call {call_id}, which has no open stream from the peer (or a message in progress)"
            )));
        }
        c.rx_done = true;
        self.events.push_back((Event::StreamEnd { call_id }, 0));
        self.finish_if_done(call_id);
        Ok(())
    }

    fn on_error(&mut self, e: ErrorFrame) -> Result<(), ProtoError> {
        if e.call_id == 0 {
            return Err(ProtoError::Remote(e.status()));
        }
        if !self.is_local_id(e.call_id) {
            return Err(Self::violation(format!(
                "ERROR on call {}, which the peer opened (a caller cancels, it does not fail)",
                e.call_id
            )));
        }
        match self.take_call(&e.call_id) {
            Some(_) => {
                self.drop_call_output(e.call_id);
                self.local_open = self.local_open.saturating_sub(1);
                self.events.push_back((
                    Event::Failed {
                        call_id: e.call_id,
                        status: e.status(),
                    },
                    0,
                ));
                Ok(())
            }
            None => self.check_known_local_id(e.call_id, "ERROR"),
        }
    }

    fn on_goaway(&mut self, g: GoAway) {
        self.peer_going_away = Some(g.last_call_id);
        let mut doomed: Vec<u32> = self
            .calls
            .iter()
            .filter(|(id, c)| c.local && **id > g.last_call_id)
            .map(|(id, _)| *id)
            .collect();
        doomed.sort_unstable();
        for id in doomed {
            if self.take_call(&id).is_some() {
                self.drop_call_output(id);
                self.local_open = self.local_open.saturating_sub(1);
                let status = Status::unavailable(
                    "the peer is going away and did not process this call; retry elsewhere",
                )
                .not_executed();
                self.events.push_back((
                    Event::Failed {
                        call_id: id,
                        status,
                    },
                    0,
                ));
            }
        }
        let status = Status::new(Code::from_u16(g.code), g.message);
        self.events.push_back((
            Event::GoAway {
                last_call_id: g.last_call_id,
                status,
            },
            0,
        ));
    }

    /// A call is over when the callee's answer is complete: for a call this side
    /// opened, when the reply (or its stream) has fully arrived; for the peer's, when
    /// this side's answer is fully queued. Whatever the caller still streams after that
    /// is ignored.
    fn finish_if_done(&mut self, call_id: u32) {
        let Some(c) = self.calls.get(&call_id) else {
            return;
        };
        let done = if c.local { c.rx_done } else { c.tx_done };
        if !done {
            return;
        }
        let local = c.local;
        self.take_call(&call_id);
        if local {
            self.local_open = self.local_open.saturating_sub(1);
            // The answer is complete: whatever of the request is still queued is moot.
            self.drop_call_output(call_id);
        } else {
            self.peer_open = self.peer_open.saturating_sub(1);
        }
    }

    fn drop_call_output(&mut self, call_id: u32) {
        if let Some(q) = self.queues.remove(&call_id) {
            for item in q.items {
                if let OutItem::Msg(m) = item {
                    self.queued_bytes -= m.data.len() - m.offset;
                }
            }
        }
    }

    fn send_status(&mut self, call_id: u32, status: &Status) {
        Frame::Error(ErrorFrame::from_status(call_id, status)).encode(&mut self.out, self.crc);
    }

    // ------------------------------------------------------------------ events

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

    fn maybe_return_credit(&mut self) {
        if self.state != State::Open {
            return;
        }
        let window = u64::from(self.local_limits().initial_window);
        if self.credit_to_return == 0
            || self.credit_to_return < window / 4
            || self.held_bytes >= window / 2
        {
            return;
        }
        while self.credit_to_return > 0 {
            let inc = self.credit_to_return.min(u64::from(u32::MAX)) as u32;
            Frame::Credit { increment: inc }.encode(&mut self.out, self.crc);
            self.credit_to_return -= u64::from(inc);
            self.recv_credit += u64::from(inc);
        }
    }

    // ------------------------------------------------------------------ sending

    fn check_open(&self) -> Result<&Negotiated, SendError> {
        match (self.state, &self.negotiated) {
            (State::Open, Some(n)) => Ok(n),
            (State::Closed, _) => Err(SendError::Closed),
            _ => Err(SendError::NotConnected),
        }
    }

    fn check_payload(&self, payload: &Payload) -> Result<(), SendError> {
        let n = self.check_open()?;
        if payload.len() > n.peer_limits.max_message as usize {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: n.peer_limits.max_message,
            });
        }
        if !n.codecs.contains(&payload.content_type) {
            return Err(SendError::NotNegotiated(match payload.content_type {
                ContentType::Json => "the JSON codec",
                ContentType::Postcard => "the postcard codec",
                ContentType::Raw => "raw payloads",
            }));
        }
        Ok(())
    }

    fn compress(&mut self, key: u64, payload: &Payload) -> (Algorithm, Bytes) {
        if let Some(pre) = self.precompressed.take()
            && pre.key == key
            && pre.input_len == payload.len()
            && pre.content_type == payload.content_type
        {
            self.compressor.selector_mut().observe(
                key,
                pre.content_type,
                pre.choice,
                pre.input_len,
                pre.output_len,
                pre.cpu,
            );
            return (pre.algorithm, pre.data);
        }
        // Compression runs where the connection's frames are produced, so a huge message
        // would hold back every other call for as long as it takes: those go as they are
        // (or compressed by the caller, see `call_compression_job`).
        if payload.len() > self.config.max_compress_size {
            return (Algorithm::None, payload.bytes.clone());
        }
        let allowed = self
            .negotiated
            .as_ref()
            .map_or(&[][..], |n| &n.compressions[..]);
        self.compressor
            .encode(key, payload.content_type, &payload.bytes, allowed)
    }

    fn compression_job(&mut self, key: u64, payload: &Payload) -> Option<CompressJob> {
        if payload.len() <= self.config.max_compress_size {
            return None; // compressed here, when it is sent
        }
        let allowed = self
            .negotiated
            .as_ref()
            .map_or(&[][..], |n| &n.compressions[..]);
        let choice = self.compressor.selector_mut().choose(
            key,
            payload.content_type,
            &payload.bytes,
            allowed,
        );
        (choice.algorithm != Algorithm::None).then(|| CompressJob {
            key,
            choice,
            content_type: payload.content_type,
            input: payload.bytes.clone(),
        })
    }

    /// For a call of `service.method` with a payload too large to compress here
    /// (over [`Config::max_compress_size`]): the compression the selector chooses, to
    /// run elsewhere and send with [`Connection::open_call_compressed`]. `None`: send
    /// it with [`Connection::open_call`] as it is.
    pub fn call_compression_job(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        payload: &Payload,
    ) -> Option<CompressJob> {
        self.compression_job(method_key(service, method), payload)
    }

    /// Like [`Connection::call_compression_job`], for the reply to the peer's call
    /// `call_id` (send with [`Connection::send_reply_compressed`]).
    pub fn reply_compression_job(
        &mut self,
        call_id: u32,
        payload: &Payload,
    ) -> Option<CompressJob> {
        let key = self.calls.get(&call_id)?.method_key;
        self.compression_job(key, payload)
    }

    /// [`Connection::open_call`] with `payload` already compressed by a
    /// [`CompressJob`] of [`Connection::call_compression_job`].
    pub fn open_call_compressed(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        payload: Payload,
        compressed: Compressed,
        meta: WireMeta,
        stream: bool,
    ) -> Result<u32, SendError> {
        self.precompressed = Some(compressed);
        let r = self.open_call(service, method, payload, meta, stream);
        self.precompressed = None;
        r
    }

    /// [`Connection::send_reply`] with `payload` already compressed by a
    /// [`CompressJob`] of [`Connection::reply_compression_job`].
    pub fn send_reply_compressed(
        &mut self,
        call_id: u32,
        payload: Payload,
        compressed: Compressed,
        stream: bool,
    ) -> Result<(), SendError> {
        self.precompressed = Some(compressed);
        let r = self.send_reply(call_id, payload, stream);
        self.precompressed = None;
        r
    }

    fn enqueue(&mut self, call_id: u32, item: OutItem) {
        if let OutItem::Msg(m) = &item {
            self.queued_bytes += m.data.len();
        }
        let class = self
            .calls
            .get(&call_id)
            .map_or(Priority::Normal, |c| c.priority);
        let q = self.queues.entry(call_id).or_insert_with(|| CallQueue {
            class,
            items: VecDeque::new(),
        });
        if q.items.is_empty() {
            self.ready.push(q.class, call_id);
        }
        q.items.push_back(item);
    }

    /// Opens a call of `service.method` with its first request message; with `stream`,
    /// further messages follow through [`Connection::send_message`] and
    /// [`Connection::send_end`]. Returns the call id; the reply arrives as
    /// [`Event::Reply`] or [`Event::Failed`].
    pub fn open_call(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        payload: Payload,
        meta: WireMeta,
        stream: bool,
    ) -> Result<u32, SendError> {
        let n = self.check_open()?;
        if self.peer_going_away.is_some() || self.local_going_away.is_some() {
            return Err(SendError::Closed);
        }
        let limit = n.peer_limits.max_in_flight;
        if self.local_open >= limit {
            return Err(SendError::TooManyInFlight { limit });
        }
        if stream && !n.has(features::STREAMING) {
            return Err(SendError::NotNegotiated("streaming"));
        }
        let fields =
            2 + 1 + service.as_str().len() + 1 + method.as_str().len() + 4 + meta.encoded_len() + 4;
        let n_max_frame = n.peer_limits.max_frame;
        if fields > n_max_frame as usize {
            return Err(SendError::TooLarge {
                len: fields,
                max: n_max_frame,
            });
        }
        self.check_payload(&payload)?;
        let call_id = self.next_local_id;
        if call_id > u32::MAX - 2 {
            return Err(SendError::Closed);
        }
        self.next_local_id += 2;
        let key = method_key(service, method);
        let (compression, data) = self.compress(key, &payload);
        let mut c = CallState::new(true, Kind::Call, key);
        c.priority = meta.priority.unwrap_or_default();
        c.tx_stream = stream;
        c.tx_done = !stream;
        self.calls.insert(call_id, c);
        self.local_open += 1;
        // The CALL frame leaves now, so call ids increase on the wire in the order calls
        // open, whatever their priority. A small message travels whole in it; a large
        // one (or one the credit does not cover) follows as DATA fragments, which the
        // writer schedules by priority class.
        let frame_room = (n_max_frame as usize).saturating_sub(fields);
        let inline_max = INLINE_CALL_MAX
            .min(self.config.fragment_size as usize)
            .min(frame_room);
        let credit = usize::try_from(self.send_credit).unwrap_or(usize::MAX);
        let inline = data.len() <= inline_max && data.len() <= credit;
        let first = if inline { data.clone() } else { Bytes::new() };
        self.send_credit -= first.len() as u64;
        let method_ref = intern(&mut self.tx_names, service, method);
        Frame::Call(CallFrame {
            call_id,
            method: method_ref,
            content_type: payload.content_type,
            compression,
            meta,
            more: !inline,
            message_len: (!inline).then_some(data.len() as u32),
            stream,
            payload: first,
        })
        .encode(&mut self.out, self.crc);
        if !inline {
            self.enqueue(
                call_id,
                OutItem::Msg(OutMsg {
                    kind: OutKind::Message,
                    content_type: payload.content_type,
                    compression,
                    data,
                    offset: 0,
                    started: true,
                }),
            );
        }
        Ok(call_id)
    }

    fn peer_call_mut(&mut self, call_id: u32) -> Result<&mut CallState, SendError> {
        match self.calls.get_mut(&call_id) {
            Some(c) if !c.local => Ok(c),
            Some(_) => Err(SendError::InvalidState {
                call_id,
                reason: "this side opened the call; only the peer replies to it",
            }),
            None => Err(SendError::UnknownCall(call_id)),
        }
    }

    /// Answers a call the peer opened (or a register/unregister request) with its first
    /// reply message; with `stream`, further messages follow through
    /// [`Connection::send_message`] and [`Connection::send_end`].
    pub fn send_reply(
        &mut self,
        call_id: u32,
        payload: Payload,
        stream: bool,
    ) -> Result<(), SendError> {
        let streaming = self.check_open()?.has(features::STREAMING);
        self.check_payload(&payload)?;
        let c = self.peer_call_mut(call_id)?;
        if c.tx_replied {
            return Err(SendError::InvalidState {
                call_id,
                reason: "the call was answered already",
            });
        }
        if stream && (!streaming || c.kind == Kind::Admin) {
            return Err(SendError::NotNegotiated("streaming"));
        }
        c.tx_replied = true;
        c.tx_stream = stream;
        c.tx_done = !stream;
        let key = c.method_key;
        let (compression, data) = self.compress(key, &payload);
        self.enqueue(
            call_id,
            OutItem::Msg(OutMsg {
                kind: OutKind::Reply { stream },
                content_type: payload.content_type,
                compression,
                data,
                offset: 0,
                started: false,
            }),
        );
        self.finish_if_done(call_id);
        Ok(())
    }

    fn stream_call_mut(&mut self, call_id: u32) -> Result<&mut CallState, SendError> {
        let c = self
            .calls
            .get_mut(&call_id)
            .ok_or(SendError::UnknownCall(call_id))?;
        if !c.tx_stream || c.tx_done || (!c.local && !c.tx_replied) {
            return Err(SendError::InvalidState {
                call_id,
                reason: "no open stream from this side on the call",
            });
        }
        Ok(c)
    }

    /// Sends a further message on a stream this side opened (a streaming call or a
    /// streaming reply).
    pub fn send_message(&mut self, call_id: u32, payload: Payload) -> Result<(), SendError> {
        self.check_payload(&payload)?;
        let key = self.stream_call_mut(call_id)?.method_key;
        let (compression, data) = self.compress(key, &payload);
        self.enqueue(
            call_id,
            OutItem::Msg(OutMsg {
                kind: OutKind::Message,
                content_type: payload.content_type,
                compression,
                data,
                offset: 0,
                started: false,
            }),
        );
        Ok(())
    }

    /// Ends this side's stream of messages on the call.
    pub fn send_end(&mut self, call_id: u32) -> Result<(), SendError> {
        self.check_open()?;
        self.stream_call_mut(call_id)?.tx_done = true;
        self.enqueue(call_id, OutItem::End);
        self.finish_if_done(call_id);
        Ok(())
    }

    /// Fails a call the peer opened (or refuses a register/unregister request).
    /// Whatever of its reply was still queued is dropped.
    pub fn send_error(&mut self, call_id: u32, status: &Status) -> Result<(), SendError> {
        self.check_open()?;
        self.peer_call_mut(call_id)?;
        self.take_call(&call_id);
        self.drop_call_output(call_id);
        self.peer_open = self.peer_open.saturating_sub(1);
        self.send_status(call_id, status);
        Ok(())
    }

    /// Gives up on a call this side opened: tells the peer, drops queued request data.
    /// Frames the peer sent before it saw the cancel are ignored.
    pub fn cancel(&mut self, call_id: u32) -> Result<(), SendError> {
        self.check_open()?;
        match self.calls.get(&call_id) {
            Some(c) if c.local => {}
            Some(_) => {
                return Err(SendError::InvalidState {
                    call_id,
                    reason: "the peer opened this call; fail it with send_error",
                });
            }
            None => return Err(SendError::UnknownCall(call_id)),
        }
        self.take_call(&call_id);
        self.drop_call_output(call_id);
        self.local_open = self.local_open.saturating_sub(1);
        Frame::Cancel { call_id }.encode(&mut self.out, self.crc);
        Ok(())
    }

    /// Sends a `PING`; the answer arrives as [`Event::Pong`].
    pub fn ping(&mut self, opaque: u64) -> Result<(), SendError> {
        self.check_open()?;
        Frame::Ping { opaque }.encode(&mut self.out, self.crc);
        Ok(())
    }

    /// Announces that this side opens no new call and serves the peer's calls up to the
    /// highest id seen so far; later calls are refused with `unavailable`.
    pub fn go_away(&mut self, status: &Status) -> Result<(), SendError> {
        self.check_open()?;
        let last = self.highest_peer_id;
        self.local_going_away = Some(last);
        Frame::GoAway(GoAway {
            last_call_id: last,
            code: status.code as u16,
            message: frame_text(&status.message),
        })
        .encode(&mut self.out, self.crc);
        Ok(())
    }

    /// Closes the connection: an `ERROR` frame (call id 0) with `status` is queued and
    /// every open call is failed.
    pub fn close(&mut self, status: Status) {
        if self.state == State::Closed {
            return;
        }
        Frame::Error(ErrorFrame::from_status(0, &status)).encode(&mut self.out, self.crc);
        self.close_calls(status.clone());
        self.state = State::Closed;
        self.events.push_back((Event::Closed { status }, 0));
    }

    /// Announces methods this side serves (connecting side only). The answer arrives
    /// as [`Event::Reply`] (accepted) or [`Event::Failed`] on the returned call id.
    pub fn register(&mut self, methods: Vec<MethodEntry>) -> Result<u32, SendError> {
        let call_id = self.open_admin()?;
        self.admin_frame(Frame::Register { call_id, methods })
    }

    /// Withdraws methods (connecting side only); answered like [`Connection::register`].
    pub fn unregister(
        &mut self,
        methods: Vec<(ServiceName, MethodName)>,
    ) -> Result<u32, SendError> {
        let call_id = self.open_admin()?;
        self.admin_frame(Frame::Unregister { call_id, methods })
    }

    fn open_admin(&mut self) -> Result<u32, SendError> {
        self.check_open()?;
        if self.role != Role::Client {
            return Err(SendError::InvalidState {
                call_id: 0,
                reason: "only the connecting side registers methods",
            });
        }
        if self.peer_going_away.is_some() || self.local_going_away.is_some() {
            return Err(SendError::Closed);
        }
        Ok(self.next_local_id)
    }

    fn admin_frame(&mut self, frame: Frame) -> Result<u32, SendError> {
        let call_id = frame.call_id();
        let mut buf = FrameBuf::new();
        frame.encode(&mut buf, self.crc);
        let max = self.check_open()?.peer_limits.max_frame as usize;
        let body = buf.len() - frame::HEADER_LEN - if self.crc { frame::CRC_LEN } else { 0 };
        if body > max {
            return Err(SendError::TooLarge {
                len: body,
                max: max as u32,
            });
        }
        self.next_local_id += 2;
        let mut c = CallState::new(true, Kind::Admin, 0);
        c.tx_done = true;
        self.calls.insert(call_id, c);
        self.local_open += 1;
        self.out.append(&mut buf);
        Ok(call_id)
    }

    // ------------------------------------------------------------------ output

    /// Payload bytes queued and not yet framed (waiting for their turn or for credit).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether [`Connection::poll_transmit`] has something to return now.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || (!self.ready.is_empty() && self.state == State::Open)
    }

    /// Appends the bytes to send to `out` (in order), framing queued messages until
    /// about `max_bytes` are buffered. Messages are cut into fragments of at most
    /// [`Config::fragment_size`] bytes, and the fragments of concurrent calls take turns,
    /// so one huge message never holds back small ones. Returns the number of bytes
    /// appended.
    pub fn poll_transmit(&mut self, max_bytes: usize, out: &mut Vec<Bytes>) -> usize {
        self.maybe_return_credit();
        if self.state == State::Open {
            let mut stalled = 0;
            while self.out.len() < max_bytes && stalled < self.ready.len() {
                let Some((class, call_id)) = self.ready.pop() else {
                    break;
                };
                if self.emit_one(call_id) {
                    stalled = 0;
                } else {
                    stalled += 1;
                }
                if self
                    .queues
                    .get(&call_id)
                    .is_some_and(|q| !q.items.is_empty())
                {
                    self.ready.push(class, call_id);
                } else {
                    self.queues.remove(&call_id);
                }
            }
        }
        let n = self.out.len();
        self.out.drain_chunks(out);
        n
    }

    /// Frames the next fragment of `call_id`'s queue; false when blocked on credit.
    fn emit_one(&mut self, call_id: u32) -> bool {
        let crc = self.crc;
        let (peer_max_frame, fragment) = match &self.negotiated {
            Some(n) => (
                n.peer_limits.max_frame as usize,
                self.config.fragment_size as usize,
            ),
            None => return false,
        };
        let Some(q) = self.queues.get_mut(&call_id) else {
            return false;
        };
        let q = &mut q.items;
        let Some(item) = q.front_mut() else {
            return false;
        };
        let m = match item {
            OutItem::End => {
                q.pop_front();
                Frame::End { call_id }.encode(&mut self.out, crc);
                return true;
            }
            OutItem::Msg(m) => m,
        };
        let left = m.data.len() - m.offset;
        // Room for the fixed fields of a first frame: content type, compression and
        // the declared message length.
        let fields = 2 + 4;
        let cap = fragment.min(peer_max_frame.saturating_sub(fields)).max(1);
        let credit = usize::try_from(self.send_credit).unwrap_or(usize::MAX);
        let chunk = left.min(cap).min(credit);
        // Wait for credit rather than send slivers (the window is at least 1 KiB).
        if chunk < left.min(cap).min(1024) {
            return false;
        }
        let payload = m.data.slice(m.offset..m.offset + chunk);
        m.offset += chunk;
        let more = m.offset < m.data.len();
        let frame = if m.started {
            Frame::Data(DataFrame {
                call_id,
                first: None,
                more,
                message_len: None,
                payload,
            })
        } else {
            m.started = true;
            let message_len = more.then_some(m.data.len() as u32);
            match &m.kind {
                OutKind::Reply { stream } => Frame::Reply(ReplyFrame {
                    call_id,
                    content_type: m.content_type,
                    compression: m.compression,
                    more,
                    message_len,
                    stream: *stream,
                    payload,
                }),
                OutKind::Message => Frame::Data(DataFrame {
                    call_id,
                    first: Some((m.content_type, m.compression)),
                    more,
                    message_len,
                    payload,
                }),
            }
        };
        if !more {
            q.pop_front();
        }
        self.send_credit -= chunk as u64;
        self.queued_bytes -= chunk;
        frame.encode(&mut self.out, crc);
        true
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
