//! A multiplexed polycall connection over one byte stream.
//!
//! One task per connection drives the sans-IO state machine of `polycall-proto`: it
//! reads into the state machine's receive buffer (payloads are slices of it, never
//! copied), dispatches replies to waiting callers and incoming calls to the
//! [`ConnectionHandler`], and is the only writer: everything queued while it ran leaves
//! in one vectored write. Callers talk to it through a cheap, cloneable
//! [`ConnectionHandle`].
//!
//! Limits enforced here: the handshake must finish within
//! [`ConnectionConfig::handshake_timeout`]; a frame started must be completed within
//! [`ConnectionConfig::frame_timeout`] (a peer that trickles bytes costs a timer, not a
//! worker); a peer that stops reading while replies wait is disconnected after
//! [`ConnectionConfig::write_stall_timeout`]. Deadlines are enforced on both sides: a
//! caller stops waiting (and cancels) when its deadline passes; a handler is cancelled
//! when the deadline it received passes.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use polycall_core::{
    Call, ClassQueues, Code, IdMap, MethodName, Reply, ServiceName, Status, StreamCall,
};
use polycall_proto::frame::MethodEntry;
use polycall_proto::{Connection as Proto, Event, Role, WireMeta};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

use crate::auth::{Authenticator, ClientExchange, Credentials, ServerExchange, Step};

mod batch;
mod handler_run;
mod inline_handlers;
mod producer;
mod streams;
use crate::handler::SharedHandler;
use crate::transport::{BoxIo, Peer};
pub use batch::{MessageBatch, MessageRef};
use streams::{OpenStream, StreamKey, Streams};
pub use streams::{SEND_BUFFER, Streaming};

/// Settings of one connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Protocol settings and fragmentation.
    pub proto: polycall_proto::Config,
    /// Time allowed for the preface and handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to complete a frame once its first byte arrived.
    pub frame_timeout: Duration,
    /// Time a peer may leave our writes blocked (not reading) before it is dropped.
    pub write_stall_timeout: Duration,
    /// Bytes framed per write batch.
    pub write_batch: usize,
    /// Most handlers running at once for this connection's incoming calls. Calls beyond
    /// wait (within the protocol's in-flight cap) and are dispatched by priority class:
    /// critical first, then high, normal and low 4 : 2 : 1.
    pub max_concurrent_handlers: usize,
    /// Server side: the methods clients may authenticate with and how they are checked
    /// (`None`: anonymous sessions only, or the TLS client certificate's identity).
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Client side: what this side proves when the server asks.
    pub credentials: Option<Credentials>,
    /// Run each incoming call's handler in a tokio task of its own (`true`, the default,
    /// as tonic does: a handler that computes for long holds up one worker thread, never
    /// the connection's other calls, and handlers of one connection run in parallel on
    /// every core) instead of inside the connection's task (`false`: no spawn, channel
    /// message or wake-up per call, and replies leave in the same write as the other
    /// replies of that round — an optimisation for handlers known to answer at once,
    /// such as a router forwarding calls; one handler that computes then stalls every
    /// call of its connection).
    pub spawn_handlers: bool,
    /// Where spawned handlers run (with [`ConnectionConfig::spawn_handlers`]). `None`, the
    /// default: [`crate::offload::handlers`], threads of their own, so a handler that
    /// computes never keeps a thread that polls sockets from doing so. `Some(handle)`:
    /// that runtime (`Some(Handle::current())` for the connection's own, as tonic does —
    /// cheaper, but a handler that blocks a worker there also delays the connections
    /// that worker would have polled).
    pub handler_runtime: Option<tokio::runtime::Handle>,
    /// The link's throughput in bytes per second, as the compression selector should
    /// assume it at first (`None`: 1.25 GB/s for loopback and Unix-socket peers, where
    /// compression cannot pay, 12.5 MB/s otherwise). The writer keeps measuring the link
    /// and updates the figure; set it for a link you know is slow.
    pub link_throughput: Option<f64>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        let mut proto = polycall_proto::Config::default();
        // Compressing or decompressing a large message takes milliseconds: above these
        // sizes it runs on the offload runtime, never on the connection's task.
        proto.max_compress_size = OFFLOAD_COMPRESS_ABOVE;
        proto.defer_decompression_above = Some(OFFLOAD_DECOMPRESS_ABOVE);
        Self {
            proto,
            handshake_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(30),
            write_batch: 256 * 1024,
            max_concurrent_handlers: 4096,
            authenticator: None,
            credentials: None,
            spawn_handlers: true,
            handler_runtime: None,
            link_throughput: None,
        }
    }
}

impl ConnectionConfig {
    /// Sets the protocol settings and fragmentation.
    pub fn proto(mut self, proto: polycall_proto::Config) -> Self {
        self.proto = proto;
        self
    }

    /// Sets the time allowed for the preface and handshake.
    pub fn handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// Sets the time allowed to complete a frame once its first byte arrived.
    pub fn frame_timeout(mut self, frame_timeout: Duration) -> Self {
        self.frame_timeout = frame_timeout;
        self
    }

    /// Sets the time a peer may leave our writes blocked (not reading) before it is
    /// dropped.
    pub fn write_stall_timeout(mut self, write_stall_timeout: Duration) -> Self {
        self.write_stall_timeout = write_stall_timeout;
        self
    }

    /// Sets the bytes framed per write batch.
    pub fn write_batch(mut self, write_batch: usize) -> Self {
        self.write_batch = write_batch;
        self
    }

    /// Sets the most handlers running at once for this connection's incoming calls.
    pub fn max_concurrent_handlers(mut self, max_concurrent_handlers: usize) -> Self {
        self.max_concurrent_handlers = max_concurrent_handlers;
        self
    }

    /// Sets, on the server side, the methods clients may authenticate with and how they are
    /// checked.
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// Sets, on the client side, what this side proves when the server asks.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Sets whether each incoming call's handler runs in a tokio task of its own (the
    /// default) or inside the connection's task.
    pub fn spawn_handlers(mut self, spawn_handlers: bool) -> Self {
        self.spawn_handlers = spawn_handlers;
        self
    }

    /// Sets the runtime spawned handlers run on (instead of [`crate::offload::handlers`]).
    pub fn handler_runtime(mut self, handler_runtime: tokio::runtime::Handle) -> Self {
        self.handler_runtime = Some(handler_runtime);
        self
    }

    /// Sets the link's throughput in bytes per second, as the compression selector should
    /// assume it at first.
    pub fn link_throughput(mut self, link_throughput: f64) -> Self {
        self.link_throughput = Some(link_throughput);
        self
    }
}

/// Messages larger than this are compressed on the [`crate::offload`] runtime.
pub const OFFLOAD_COMPRESS_ABOVE: usize = 64 * 1024;
/// Received messages whose compressed form is larger than this are decompressed on the
/// [`crate::offload`] runtime: all of them, since a few hundred compressed bytes may
/// decompress to megabytes (up to the message limit), whatever their size on the wire.
pub const OFFLOAD_DECOMPRESS_ABOVE: usize = 0;

/// A running handler: in its own task, or inside the connection's task (its slot).
enum Serving {
    Task(tokio::task::AbortHandle),
    Inline(usize),
}

enum Command {
    Call {
        call: Call,
        token: u64,
        reply: oneshot::Sender<Result<Reply, Status>>,
    },
    Cancel(u64),
    Register {
        methods: Vec<MethodEntry>,
        reply: oneshot::Sender<Result<Reply, Status>>,
    },
    Unregister {
        methods: Vec<(ServiceName, MethodName)>,
        reply: oneshot::Sender<Result<Reply, Status>>,
    },
    GoAway(Status),
    Close(Status),
    Answer(u32, Result<Reply, Status>),
    /// A server authentication step computed off the event loop.
    ServerAuthStep(Box<dyn ServerExchange>, Step),
    /// A client authentication step computed off the event loop.
    ClientAuthStep(Box<ClientExchange>, Result<Bytes, Status>),
    /// A received message decompressed off the event loop: the event it held.
    Decompressed(Event),
    /// A received message that did not decompress.
    DecompressFailed(polycall_proto::compress::DeferredError),
    /// A reply compressed off the event loop, ready to send.
    ReplyCompressed(
        u32,
        polycall_core::Payload,
        polycall_proto::compress::Compressed,
    ),
    /// A call whose payload was compressed off the event loop, ready to open.
    CallCompressed(Box<CompressedCall>),
    /// A method's dictionary trained off the event loop, ready to ship and use.
    #[cfg(feature = "zstd")]
    DictionaryTrained(Box<polycall_proto::compress::TrainedDictionary>),
    /// Opens a streaming call.
    OpenStream(Box<OpenStream>),
    /// A producer put messages in its stream's empty outbox.
    StreamReady(StreamKey),
    /// This side's stream is complete.
    StreamEnd(StreamKey),
    /// This side's stream failed: the call fails (or, opened by this side, is cancelled).
    StreamFail(StreamKey, Status),
    /// The reader of an incoming stream took this many more messages.
    StreamConsumed(StreamKey, usize),
    /// The reader of an incoming stream is gone: drop what still arrives.
    StreamDiscard(StreamKey),
}

/// A call and its payload compressed off the event loop.
struct CompressedCall {
    call: Call,
    token: u64,
    reply: oneshot::Sender<Result<Reply, Status>>,
    compressed: polycall_proto::compress::Compressed,
}

#[derive(Debug)]
struct Shared {
    peer: Peer,
    next_token: AtomicU64,
    in_flight: AtomicUsize,
    closed: AtomicBool,
    going_away: AtomicBool,
    done: tokio::sync::Notify,
    /// Who the peer authenticated as (server side), or who the server says this side
    /// is (client side); set once the connection is open.
    principal: std::sync::OnceLock<Option<polycall_core::Principal>>,
    /// The negotiated feature bits, once open.
    features: AtomicU64,
    /// The most calls the peer takes at once (its `max_in_flight`), once open.
    peer_max_in_flight: AtomicUsize,
    /// Who waits for this connection to have room for a call (`Channel::poll_ready`).
    capacity_waiters: CapacityWaiters,
}

/// The least-loaded pick, the one rule behind a `Channel`'s choice of connection and the
/// runtime's choice of provider: of the `items` whose connection is open and not going
/// away, the one with the fewest calls in flight (the first of equals).
///
/// ```no_run
/// # fn demo(connections: Vec<polycall_net::ConnectionHandle>) {
/// let pick = polycall_net::least_loaded(connections.iter(), |c| *c);
/// # let _ = pick; }
/// ```
pub fn least_loaded<T>(
    items: impl IntoIterator<Item = T>,
    connection: impl Fn(&T) -> &ConnectionHandle,
) -> Option<T> {
    items
        .into_iter()
        .filter(|item| {
            let c = connection(item);
            !c.is_closed() && !c.is_going_away()
        })
        .min_by_key(|item| connection(item).in_flight())
}

/// Wakers to wake when a connection has room for another call (one of its calls ended)
/// or ended. Empty in the common case, where checking costs one atomic load.
#[derive(Debug, Default)]
struct CapacityWaiters {
    any: AtomicBool,
    wakers: std::sync::Mutex<Vec<std::task::Waker>>,
}

impl CapacityWaiters {
    fn register(&self, waker: &std::task::Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.any.store(true, Ordering::Release);
    }

    fn wake_all(&self) {
        // The common case, nobody waiting, costs one load.
        if !self.any.load(Ordering::Acquire) || !self.any.swap(false, Ordering::AcqRel) {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        wakers.into_iter().for_each(std::task::Waker::wake);
    }
}

/// A handle to a running connection: make calls, register methods, shut it down.
/// Cloning is cheap; the connection lives while its task runs, not while handles exist
/// (a client connection with no handles and no calls closes itself).
#[derive(Clone)]
pub struct ConnectionHandle {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("peer", &self.shared.peer)
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Sends a cancel for the call when the caller's future is dropped before the reply,
/// and keeps the connection's in-flight count.
struct CancelOnDrop {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    token: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.shared.capacity_waiters.wake_all();
        if self.armed {
            let _ = self.commands.send(Command::Cancel(self.token));
        }
    }
}

impl ConnectionHandle {
    /// Calls `call.service.call.method` on the peer. The call is counted in flight and
    /// queued at once, before the returned future is first polled (so balancers that
    /// pick by [`ConnectionHandle::in_flight`] see it). Dropping the future cancels the
    /// call (the peer is told); when the call's deadline passes first, the result is
    /// `deadline_exceeded` and the call is cancelled.
    pub fn call(&self, call: Call) -> impl Future<Output = Result<Reply, Status>> + Send + use<> {
        let (token, mut guard) = self.begin_call();
        let deadline = call.metadata.deadline;
        let (tx, rx) = oneshot::channel();
        let sent = self
            .commands
            .send(Command::Call {
                call,
                token,
                reply: tx,
            })
            .is_ok();
        async move {
            let closed = |g: &CancelOnDrop| {
                Status::unavailable(format!("the connection to {} is closed", g.shared.peer))
            };
            if !sent {
                guard.armed = false;
                return Err(closed(&guard).not_executed());
            }
            let result = match deadline {
                Some(d) => match tokio::time::timeout_at(d.0.into(), rx).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(Status::deadline_exceeded(
                            "the call's deadline passed before its reply arrived",
                        ));
                    }
                },
                None => rx.await,
            };
            guard.armed = false;
            result.unwrap_or_else(|_| Err(closed(&guard)))
        }
    }

    /// A new call's token, counted in flight until the returned guard drops (which
    /// cancels the call while armed).
    fn begin_call(&self) -> (u64, CancelOnDrop) {
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = CancelOnDrop {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
            token,
            armed: true,
        };
        (token, guard)
    }

    fn closed_status(&self) -> Status {
        Status::unavailable(format!("the connection to {} is closed", self.shared.peer))
    }

    async fn admin(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Reply, Status>>) -> Command,
    ) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| self.closed_status())?;
        rx.await
            .unwrap_or_else(|_| Err(self.closed_status()))
            .map(|_| ())
    }

    /// Announces methods this side serves (a provider registering with a runtime).
    pub async fn register(&self, methods: Vec<MethodEntry>) -> Result<(), Status> {
        self.admin(|reply| Command::Register { methods, reply })
            .await
    }

    /// Withdraws methods.
    pub async fn unregister(&self, methods: Vec<(ServiceName, MethodName)>) -> Result<(), Status> {
        self.admin(|reply| Command::Unregister { methods, reply })
            .await
    }

    /// Starts a graceful close: the peer is told no new calls will be served; the
    /// connection closes once the calls in flight are done.
    pub fn go_away(&self, status: Status) {
        let _ = self.commands.send(Command::GoAway(status));
    }

    /// Closes at once; calls in flight fail with `unavailable`.
    pub fn close(&self, status: Status) {
        let _ = self.commands.send(Command::Close(status));
    }

    /// Calls this side is waiting on.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The most calls the peer takes at once (its negotiated `max_in_flight`; unbounded
    /// until the connection is open).
    pub fn max_in_flight(&self) -> usize {
        self.shared.peer_max_in_flight.load(Ordering::Relaxed)
    }

    /// Whether another call fits now: the connection is open and fewer than
    /// [`max_in_flight`](Self::max_in_flight) calls are waiting.
    pub fn has_capacity(&self) -> bool {
        !self.is_closed() && self.in_flight() < self.max_in_flight()
    }

    /// Wakes `waker` once one of this connection's calls ends or the connection does.
    pub(crate) fn wake_on_capacity(&self, waker: &std::task::Waker) {
        self.shared.capacity_waiters.register(waker);
    }

    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the peer announced it is going away (open new calls elsewhere).
    pub fn is_going_away(&self) -> bool {
        self.shared.going_away.load(Ordering::Acquire)
    }

    /// Who the peer is: its address and what its transport proved.
    pub fn peer(&self) -> &Peer {
        &self.shared.peer
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.done.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// The session's principal once the connection is open: on a server, who the
    /// client proved to be (authentication, or its TLS certificate); on a client, the
    /// principal the server accepted. `None` for anonymous sessions.
    pub fn principal(&self) -> Option<&polycall_core::Principal> {
        self.shared.principal.get().and_then(Option::as_ref)
    }

    /// The protocol features both sides agreed on in the handshake
    /// ([`polycall_proto::features`]); 0 before the connection is open.
    pub fn features(&self) -> u64 {
        self.shared.features.load(Ordering::Acquire)
    }

    /// Whether two handles are of the same connection.
    pub fn same_connection(&self, other: &ConnectionHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// The parts of a connection before its task starts: the handle exists first, so a
/// handler that needs to know its own connection can be built with it.
pub struct PendingConnection {
    handle: ConnectionHandle,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl PendingConnection {
    /// A connection to `peer`, not yet running.
    pub fn new(peer: impl Into<Peer>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            handle: ConnectionHandle {
                commands: tx,
                shared: Arc::new(Shared {
                    peer: peer.into(),
                    next_token: AtomicU64::new(1),
                    in_flight: AtomicUsize::new(0),
                    closed: AtomicBool::new(false),
                    going_away: AtomicBool::new(false),
                    done: tokio::sync::Notify::new(),
                    principal: std::sync::OnceLock::new(),
                    features: AtomicU64::new(0),
                    peer_max_in_flight: AtomicUsize::new(usize::MAX),
                    capacity_waiters: CapacityWaiters::default(),
                }),
            },
            commands: rx,
        }
    }

    /// The handle of the connection to be.
    pub fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }

    /// Starts the connection's task over `io`. The returned receiver resolves when the
    /// handshake completes (or fails).
    pub fn start(
        self,
        io: BoxIo,
        role: Role,
        config: ConnectionConfig,
        handler: SharedHandler,
    ) -> Result<(ConnectionHandle, oneshot::Receiver<Result<(), Status>>), Status> {
        let mut proto_config = config.proto.clone();
        match role {
            Role::Server => {
                if let Some(a) = &config.authenticator {
                    proto_config.settings.auth_methods = a.methods();
                }
            }
            Role::Client => {
                if let Some(c) = &config.credentials {
                    proto_config.settings.auth_methods = vec![c.method()];
                }
            }
        }
        let mut proto =
            Proto::new(role, proto_config).map_err(|e| Status::invalid_input(e.to_string()))?;
        let mut link = LinkEstimate::for_peer(&self.handle.shared.peer);
        if let Some(rate) = config.link_throughput.filter(|r| *r > 0.0) {
            link.bytes_per_sec = rate;
        }
        proto.set_link_throughput(link.bytes_per_sec);
        let (connected_tx, connected_rx) = oneshot::channel();
        let handle = self.handle.clone();
        let driver = Driver {
            io,
            proto,
            role,
            handshake: Some(Box::pin(tokio::time::sleep(config.handshake_timeout))),
            frame_timer: None,
            stall_timer: None,
            config,
            commands: self.commands,
            commands_open: true,
            answers: self.handle.commands.downgrade(),
            shared: self.handle.shared.clone(),
            handler,
            connected: Some(connected_tx),
            waiting: Vec::new(),
            pending: IdMap::default(),
            tokens: IdMap::default(),
            serving: IdMap::default(),
            streams: Streams::default(),
            handlers: Default::default(),
            backlog: ClassQueues::default(),
            out: VecDeque::new(),
            out_front: 0,
            link,
            read_size: MIN_READ,
            wake_bytes: 0,
            yielding: None,
            draining: false,
            finished: false,
            peer_eof: false,
            server_auth: None,
            client_auth: None,
            principal: None,
        };
        tokio::spawn(driver);
        Ok((handle, connected_rx))
    }
}

/// Runs a connection over `io` and waits for its handshake.
pub async fn establish(
    io: BoxIo,
    peer: impl Into<Peer>,
    role: Role,
    config: ConnectionConfig,
    handler: SharedHandler,
) -> Result<ConnectionHandle, Status> {
    let (handle, connected) = PendingConnection::new(peer).start(io, role, config, handler)?;
    match connected.await {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::unavailable(
            "the connection ended during the handshake",
        )),
    }
}

struct PendingCall {
    reply: oneshot::Sender<Result<Reply, Status>>,
    token: Option<u64>,
}

struct Driver {
    io: BoxIo,
    proto: Proto,
    role: Role,
    config: ConnectionConfig,
    handshake: Option<Pin<Box<Sleep>>>,
    frame_timer: Option<Pin<Box<Sleep>>>,
    stall_timer: Option<Pin<Box<Sleep>>>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    /// Handler tasks send their answers through the command channel, without keeping
    /// it open on their own.
    answers: mpsc::WeakUnboundedSender<Command>,
    shared: Arc<Shared>,
    handler: SharedHandler,
    connected: Option<oneshot::Sender<Result<(), Status>>>,
    /// Commands that arrived before the handshake completed.
    waiting: Vec<Command>,
    pending: IdMap<u32, PendingCall>,
    tokens: IdMap<u64, u32>,
    serving: IdMap<u32, Serving>,
    /// Streaming calls in progress: their readers and producers.
    streams: Streams,
    /// Handlers run inside this task (`spawn_handlers = false`, or inline methods).
    handlers: inline_handlers::InlineHandlers,
    /// Incoming calls waiting for a free handler, by class.
    backlog: ClassQueues<(u32, Call)>,
    out: VecDeque<Bytes>,
    out_front: usize,
    link: LinkEstimate,
    read_size: usize,
    /// Bytes read and written in this wake-up (see [`WAKE_IO_BUDGET`]).
    wake_bytes: usize,
    /// A yield in progress once a wake-up's budget is used: tokio's `yield_now`, which
    /// lets the I/O driver run before this task does again (a plain self-wake would keep
    /// the scheduler busy with tasks while sockets wait to be polled).
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    draining: bool,
    finished: bool,
    peer_eof: bool,
    server_auth: Option<Box<dyn ServerExchange>>,
    client_auth: Option<ClientExchange>,
    /// The session's principal, stamped on every incoming call (server side).
    principal: Option<polycall_core::Principal>,
}

const MAX_SLICES: usize = 64;
/// Work done per wake-up before yielding to other tasks: a connection moving a huge
/// message must not hold a worker thread for long (the machine may have two).
const ROUNDS_PER_WAKE: usize = 4;
/// Socket reads per round.
const READS_PER_ROUND: usize = 4;
/// Bytes read and written per wake-up before yielding: a connection moving large
/// messages (decrypting and encrypting them, under TLS) must not hold the event loop for
/// long while other connections wait for their turn.
const WAKE_IO_BUDGET: usize = 64 * 1024;
/// Read buffer growth: from this…
const MIN_READ: usize = 8 * 1024;
/// …to this, while reads keep filling it.
const MAX_READ: usize = 256 * 1024;

/// The link's throughput as the writer sees it, for the compression selector: seeded by
/// the kind of peer, then measured over busy periods (from the moment bytes are queued
/// until the queue is empty again).
struct LinkEstimate {
    bytes_per_sec: f64,
    busy_since: Option<Instant>,
    busy_bytes: usize,
}

impl LinkEstimate {
    fn for_peer(peer: &Peer) -> Self {
        let local = peer.addr.is_local();
        Self {
            // Loopback and Unix sockets move gigabytes a second: compression cannot pay.
            bytes_per_sec: if local { 1.25e9 } else { 12.5e6 },
            busy_since: None,
            busy_bytes: 0,
        }
    }

    fn queued(&mut self) {
        if self.busy_since.is_none() {
            self.busy_since = Some(Instant::now());
            self.busy_bytes = 0;
        }
    }

    fn wrote(&mut self, n: usize) {
        self.busy_bytes += n;
    }

    /// The queue is empty: a new sample when the busy period was long enough to mean
    /// something. Returns the new estimate.
    fn idle(&mut self) -> Option<f64> {
        let since = self.busy_since.take()?;
        let elapsed = since.elapsed().as_secs_f64();
        if elapsed < 0.002 || self.busy_bytes < 256 * 1024 {
            return None;
        }
        let sample = self.busy_bytes as f64 / elapsed;
        self.bytes_per_sec = 0.8 * self.bytes_per_sec + 0.2 * sample;
        Some(self.bytes_per_sec)
    }
}

impl Driver {
    fn fail_everything(&mut self, status: &Status) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(Status::unavailable(format!(
                "connection to {} lost: {}",
                self.shared.peer, status.message
            ))));
        }
        self.tokens.clear();
        self.streams.close_all(&Status::unavailable(format!(
            "connection to {} lost: {}",
            self.shared.peer, status.message
        )));
        for (_, h) in self.serving.drain() {
            if let Serving::Task(h) = h {
                h.abort();
            }
        }
        self.handlers = Default::default();
        self.backlog.clear();
        for cmd in self.waiting.drain(..) {
            reject(cmd, status);
        }
        if let Some(c) = self.connected.take() {
            let _ = c.send(Err(status.clone()));
        }
    }

    fn finish(&mut self, status: Status) {
        if self.finished {
            return;
        }
        self.finished = true;
        if status.code != Code::Ok {
            tracing::debug!(peer = %self.shared.peer, %status, "connection closed");
        }
        self.fail_everything(&status);
        self.shared.closed.store(true, Ordering::Release);
        self.shared.done.notify_waiters();
        self.shared.capacity_waiters.wake_all();
        self.handler.closed();
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Authenticate { method, step, data } => self.authenticate(method, step, &data),
            Event::Connected => {
                self.handshake = None;
                let principal = match self.proto.principal() {
                    Some(p) => polycall_core::Principal::parse(p).ok(),
                    // Without an exchange, a verified TLS client certificate still says
                    // who the client is.
                    None if self.role == Role::Server => self.shared.peer.identity.clone(),
                    None => None,
                };
                let _ = self.shared.principal.set(principal.clone());
                if let Some(n) = self.proto.negotiated() {
                    self.shared.features.store(n.features, Ordering::Release);
                    self.shared
                        .peer_max_in_flight
                        .store(n.peer_limits.max_in_flight as usize, Ordering::Relaxed);
                }
                self.principal = principal;
                if let Some(c) = self.connected.take() {
                    let _ = c.send(Ok(()));
                }
                for cmd in std::mem::take(&mut self.waiting) {
                    self.on_command(cmd);
                }
            }
            Event::Call(c) => {
                let now = Instant::now();
                let call_id = c.call_id;
                let mut metadata = c.meta.to_metadata(now);
                if self.role == Role::Server {
                    // A server never trusts the principal a caller claims; a client
                    // (a provider) trusts the runtime it connected to.
                    metadata.principal = self.principal.clone();
                }
                let kind = self.handler.kind(&c.service, &c.method);
                if c.stream || kind.is_streaming() {
                    if c.stream && !kind.streams_requests() {
                        let status = Status::invalid_input(format!(
                            "{}.{} takes one request message ({kind}), not a stream",
                            c.service, c.method
                        ));
                        let _ = self.proto.send_error(call_id, &status);
                        return;
                    }
                    let requests = if c.stream {
                        let first = (!c.empty).then_some(c.payload);
                        self.incoming_stream(call_id, first).boxed()
                    } else {
                        Box::pin(polycall_core::stream::iter([Ok(c.payload)]))
                    };
                    let call = StreamCall {
                        service: c.service,
                        method: c.method,
                        metadata,
                        requests,
                    };
                    self.serve_stream(call_id, call, kind);
                    return;
                }
                let call = Call {
                    service: c.service,
                    method: c.method,
                    payload: c.payload,
                    metadata,
                };
                if self.serving.len() < self.config.max_concurrent_handlers {
                    self.spawn_handler(call_id, call);
                } else {
                    self.backlog.push(call.metadata.priority, (call_id, call));
                }
            }
            Event::Reply {
                call_id,
                payload,
                stream,
                empty,
            } => {
                if let Some(p) = self.pending.remove(&call_id) {
                    if let Some(t) = p.token {
                        self.tokens.remove(&t);
                    }
                    if stream {
                        // A unary caller cannot take a stream: the call is given up.
                        let _ = self.proto.cancel(call_id);
                        let _ = p.reply.send(Err(Status::invalid_input(
                            "the method answers with a stream of replies; open it as a stream \
                             (server_stream or bidi)",
                        )));
                    } else {
                        let _ = p.reply.send(Ok(Reply::new(payload)));
                    }
                } else if self.streams.incoming.contains_key(&call_id) {
                    if !empty {
                        self.streams.deliver(call_id, Ok(payload));
                    }
                    if !stream {
                        // A one-message answer to a stream: it ends here.
                        self.end_local_stream(call_id, None);
                    }
                }
            }
            Event::StreamMessage { call_id, payload } => {
                if !self.streams.deliver(call_id, Ok(payload)) {
                    // Nobody reads it any more.
                    self.proto.stream_consumed(call_id, 1);
                }
            }
            Event::StreamMessages {
                call_id,
                content_type,
                packed,
                count,
            } => {
                if !self
                    .streams
                    .deliver_packed(call_id, packed, content_type, count)
                {
                    self.proto.stream_consumed(call_id, count);
                }
            }
            Event::StreamEnd { call_id } => {
                if self.streams.tokens.contains_key(&call_id) {
                    // The replies of a call this side opened: the call is over.
                    self.end_local_stream(call_id, None);
                } else {
                    // The requests of a call the peer opened: the reader sees the end;
                    // the answer goes on.
                    self.streams.incoming.remove(&call_id);
                }
            }
            Event::Failed { call_id, status } => {
                if let Some(p) = self.pending.remove(&call_id) {
                    if let Some(t) = p.token {
                        self.tokens.remove(&t);
                    }
                    let _ = p.reply.send(Err(status));
                } else if self.streams.tokens.contains_key(&call_id) {
                    self.end_local_stream(call_id, Some(status));
                }
            }
            Event::Cancelled { call_id } => {
                if self.streams_open() {
                    self.streams.close(call_id, None);
                }
                match self.serving.remove(&call_id) {
                    Some(serving) => {
                        match serving {
                            Serving::Task(h) => h.abort(),
                            Serving::Inline(slot) => self.handlers.cancel(slot),
                        }
                        self.dispatch_backlog();
                    }
                    None => {
                        self.backlog.remove_first(|(id, _)| *id == call_id);
                    }
                }
            }
            Event::Register { call_id, methods } => {
                let r = self.handler.register(methods);
                self.answer_admin(call_id, r);
            }
            Event::Unregister { call_id, methods } => {
                let r = self.handler.unregister(methods);
                self.answer_admin(call_id, r);
            }
            Event::GoAway { .. } => {
                self.shared.going_away.store(true, Ordering::Release);
            }
            Event::Closed { status } => {
                self.finish(status);
            }
            Event::Deferred(deferred) => {
                // A large compressed message: decompressed on the offload runtime (in
                // steps, with a pause between them), then handled like any other event.
                self.offload_command(move || {
                    match deferred.decompress_pausing(&mut crate::offload::pause) {
                        Ok(ev) => Command::Decompressed(ev),
                        Err(e) => Command::DecompressFailed(e),
                    }
                });
            }
            Event::Pong { .. } => {}
        }
    }

    /// One step of the authentication exchange that is this side's to answer. OPAQUE
    /// steps cost milliseconds of CPU: they run on the offload runtime and come back as
    /// a command; the others are answered at once.
    fn authenticate(&mut self, method: polycall_proto::AuthMethod, step: u8, data: &[u8]) {
        let offload = method == polycall_proto::AuthMethod::Opaque;
        match self.role {
            Role::Server => {
                let mut exchange = match (self.server_auth.take(), &self.config.authenticator) {
                    (Some(x), _) => x,
                    (None, Some(a)) => a.start(method, self.shared.peer.identity.as_ref()),
                    // Not reachable: without an authenticator only `none` is offered.
                    (None, None) => Box::new(RefuseAll),
                };
                if offload {
                    let data = data.to_vec();
                    self.offload_command(move || {
                        let step = exchange.step(&data);
                        Command::ServerAuthStep(exchange, step)
                    });
                } else {
                    let step = exchange.step(data);
                    self.server_auth_step(exchange, step);
                }
            }
            Role::Client => {
                let Some(credentials) = &self.config.credentials else {
                    self.close_now(Status::unauthenticated(
                        "the server asks for authentication but no credentials are configured",
                    ));
                    return;
                };
                let mut exchange = self
                    .client_auth
                    .take()
                    .unwrap_or_else(|| credentials.start());
                if offload {
                    let data = data.to_vec();
                    self.offload_command(move || {
                        let r = exchange.step(step, &data);
                        Command::ClientAuthStep(Box::new(exchange), r)
                    });
                } else {
                    let r = exchange.step(step, data);
                    self.client_auth_step(exchange, r);
                }
            }
        }
    }

    /// Runs `work` on the offload runtime; the command it makes comes back to this task.
    fn offload_command(&mut self, work: impl FnOnce() -> Command + Send + 'static) {
        let Some(back) = self.answers.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            match crate::offload::run(work).await {
                Ok(cmd) => {
                    let _ = back.send(cmd);
                }
                Err(status) => {
                    let _ = back.send(Command::Close(status));
                }
            }
        });
    }

    fn server_auth_step(&mut self, exchange: Box<dyn ServerExchange>, step: Step) {
        let sent = match step {
            Step::Continue(bytes) => {
                self.server_auth = Some(exchange);
                self.proto.auth_continue(bytes)
            }
            Step::Accept(principal) => {
                tracing::debug!(peer = %self.shared.peer, %principal, "authenticated");
                self.proto.auth_accept(&principal.to_string())
            }
            Step::Reject(status) => {
                tracing::info!(peer = %self.shared.peer, %status, "authentication refused");
                self.proto.auth_reject(&status)
            }
        };
        if let Err(e) = sent {
            self.close_now(e.status());
        }
    }

    fn client_auth_step(&mut self, exchange: ClientExchange, r: Result<Bytes, Status>) {
        match r {
            Ok(bytes) => {
                self.client_auth = Some(exchange);
                if let Err(e) = self.proto.auth_continue(bytes) {
                    self.close_now(e.status());
                }
            }
            Err(status) => self.close_now(status),
        }
    }

    fn close_now(&mut self, status: Status) {
        self.proto.close(status.clone());
        self.finish(status);
    }

    /// Starts the handler of an incoming call, within the call's deadline: inside this
    /// task (polled with the connection), or in a task of its own.
    fn spawn_handler(&mut self, call_id: u32, call: Call) {
        let deadline = call.metadata.deadline;
        let inline = !self.config.spawn_handlers || self.handler.runs_inline(&call);
        let run =
            handler_run::HandlerRun::new(call_id, self.handler.call(call), deadline.map(|d| d.0));
        if inline {
            let slot = self.handlers.push(run);
            self.serving.insert(call_id, Serving::Inline(slot));
            return;
        }
        let Some(answers) = self.answers.upgrade() else {
            return;
        };
        let answer = async move {
            let (call_id, result) = run.await;
            let _ = answers.send(Command::Answer(call_id, result));
        };
        let task = match &self.config.handler_runtime {
            Some(rt) => rt.spawn(answer),
            None => crate::offload::handlers().spawn(answer),
        };
        self.serving
            .insert(call_id, Serving::Task(task.abort_handle()));
    }

    /// Polls the handlers running inside this task; answers the finished ones.
    fn poll_handlers(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        for _ in 0..1024 {
            match self.handlers.poll_next(cx) {
                Poll::Ready(Some((call_id, result))) => {
                    progressed = true;
                    self.answer(call_id, result);
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        progressed
    }

    /// Sends a handler's result, unless the call was cancelled meanwhile.
    fn answer(&mut self, call_id: u32, result: Result<Reply, Status>) {
        if self.serving.remove(&call_id).is_none() {
            return; // cancelled meanwhile
        }
        if self.streams_open() {
            // A client stream answered: whatever of its requests still arrives is moot.
            self.streams.close(call_id, None);
        }
        self.dispatch_backlog();
        let sent = match result {
            Ok(reply) => match self.proto.reply_compression_job(call_id, &reply.payload) {
                // Too large to compress here: compressed on the offload runtime.
                Some(job) => {
                    let payload = reply.payload;
                    self.offload_command(move || {
                        Command::ReplyCompressed(call_id, payload, job.run())
                    });
                    return;
                }
                None => self.proto.send_reply(call_id, reply.payload, false),
            },
            Err(status) => self.proto.send_error(call_id, &status),
        };
        if let Err(e) = sent {
            let _ = self.proto.send_error(call_id, &e.status());
        }
    }

    /// Hands waiting calls to free handler slots, most urgent class first.
    fn dispatch_backlog(&mut self) {
        while self.serving.len() < self.config.max_concurrent_handlers {
            let Some((_, (call_id, call))) = self.backlog.pop() else {
                break;
            };
            self.spawn_handler(call_id, call);
        }
    }

    fn answer_admin(&mut self, call_id: u32, r: Result<(), Status>) {
        let _ = match r {
            Ok(()) => self
                .proto
                .send_reply(call_id, polycall_core::Payload::empty(), false),
            Err(s) => self.proto.send_error(call_id, &s),
        };
    }

    fn on_command(&mut self, cmd: Command) {
        let handshake_step = matches!(
            cmd,
            Command::Close(_) | Command::ServerAuthStep(..) | Command::ClientAuthStep(..)
        );
        if !self.proto.is_open() && !self.proto.is_closed() && !handshake_step {
            self.waiting.push(cmd);
            return;
        }
        match cmd {
            Command::Call { call, token, reply } => {
                if reply.is_closed() {
                    return; // the caller gave up before the call left
                }
                if let Some(job) =
                    self.proto
                        .call_compression_job(&call.service, &call.method, &call.payload)
                {
                    // Too large to compress here: compressed on the offload runtime, opened
                    // when done (a cancel meanwhile drops the caller's side, seen then).
                    self.offload_command(move || {
                        Command::CallCompressed(Box::new(CompressedCall {
                            call,
                            token,
                            reply,
                            compressed: job.run(),
                        }))
                    });
                    return;
                }
                self.open_call(call, token, reply, None);
            }
            Command::CallCompressed(c) => {
                let CompressedCall {
                    call,
                    token,
                    reply,
                    compressed,
                } = *c;
                if !reply.is_closed() {
                    self.open_call(call, token, reply, Some(compressed));
                }
            }
            Command::ReplyCompressed(call_id, payload, compressed) => {
                // Unknown by now when the call was cancelled meanwhile.
                if let Err(e) = self
                    .proto
                    .send_reply_compressed(call_id, payload, compressed, false)
                    && !matches!(e, polycall_proto::SendError::UnknownCall(_))
                {
                    let _ = self.proto.send_error(call_id, &e.status());
                }
            }
            Command::Decompressed(ev) => {
                if !self.finished {
                    self.on_event(ev);
                }
            }
            Command::DecompressFailed(e) => {
                if e.reply {
                    if let Some(p) = self.pending.remove(&e.call_id) {
                        if let Some(t) = p.token {
                            self.tokens.remove(&t);
                        }
                        let _ = p.reply.send(Err(e.status));
                    }
                } else {
                    let _ = self.proto.send_error(e.call_id, &e.status);
                }
            }
            Command::Cancel(token) => {
                if let Some(id) = self.tokens.remove(&token) {
                    self.pending.remove(&id);
                    if self.streams_open() {
                        self.end_local_stream(id, None);
                    }
                    let _ = self.proto.cancel(id);
                }
            }
            Command::OpenStream(open) => self.open_stream_call(*open),
            #[cfg(feature = "zstd")]
            Command::DictionaryTrained(trained) => {
                if let Some(id) = self.proto.add_dictionary(*trained) {
                    tracing::debug!(peer = %self.shared.peer, id, "dictionary shipped");
                }
            }
            Command::StreamReady(key) => self.stream_ready(key),
            Command::StreamEnd(key) => self.stream_end(key),
            Command::StreamFail(key, status) => self.stream_fail(key, status),
            Command::StreamConsumed(key, n) => self.stream_consumed(key, n),
            Command::StreamDiscard(key) => self.stream_discard(key),
            Command::Register { methods, reply } => {
                let opened = self.proto.register(methods);
                self.admin(opened, reply);
            }
            Command::Unregister { methods, reply } => {
                let opened = self.proto.unregister(methods);
                self.admin(opened, reply);
            }
            Command::GoAway(status) => {
                if self.proto.go_away(&status).is_ok() {
                    self.draining = true;
                }
            }
            Command::Close(status) => {
                self.proto.close(status.clone());
                while let Some(ev) = self.proto.poll_event() {
                    self.on_event(ev);
                }
                self.finish(status);
            }
            Command::Answer(call_id, result) => self.answer(call_id, result),
            Command::ServerAuthStep(exchange, step) => {
                if !self.finished {
                    self.server_auth_step(exchange, step);
                }
            }
            Command::ClientAuthStep(exchange, r) => {
                if !self.finished {
                    self.client_auth_step(*exchange, r);
                }
            }
        }
    }

    /// Opens `call` on the wire (with its payload compressed already, or not).
    fn open_call(
        &mut self,
        call: Call,
        token: u64,
        reply: oneshot::Sender<Result<Reply, Status>>,
        compressed: Option<polycall_proto::compress::Compressed>,
    ) {
        let meta = WireMeta::from_metadata(&call.metadata, Instant::now());
        let opened = match compressed {
            Some(c) => self.proto.open_call_compressed(
                &call.service,
                &call.method,
                call.payload,
                c,
                meta,
                false,
            ),
            None => self
                .proto
                .open_call(&call.service, &call.method, call.payload, meta, false),
        };
        match opened {
            Ok(id) => {
                self.tokens.insert(token, id);
                self.pending.insert(
                    id,
                    PendingCall {
                        reply,
                        token: Some(token),
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(Err(e.status()));
            }
        }
    }

    fn admin(
        &mut self,
        opened: Result<u32, polycall_proto::SendError>,
        reply: oneshot::Sender<Result<Reply, Status>>,
    ) {
        match opened {
            Ok(id) => {
                self.pending.insert(id, PendingCall { reply, token: None });
            }
            Err(e) => {
                let _ = reply.send(Err(e.status()));
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.proto.poll_event() {
            self.on_event(ev);
        }
    }

    /// Reads what is available; false when nothing was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        for _ in 0..READS_PER_ROUND {
            if self.finished || self.peer_eof || self.wake_bytes >= WAKE_IO_BUDGET {
                break;
            }
            let read_size = self.read_size;
            let buf = self.proto.recv_buf();
            if buf.capacity() - buf.len() < read_size / 2 {
                buf.reserve(read_size);
            }
            let spare = buf.capacity() - buf.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, buf) {
                Poll::Ready(Ok(0)) => {
                    self.peer_eof = true;
                    let lost = if self.proto.is_open()
                        && (self.pending.is_empty()
                            && self.serving.is_empty()
                            && !self.streams_open())
                    {
                        Status::new(Code::Ok, "the peer closed the connection")
                    } else {
                        Status::unavailable("the peer closed the connection")
                    };
                    self.finish(lost);
                    return true;
                }
                Poll::Ready(Ok(n)) => {
                    progressed = true;
                    self.wake_bytes += n;
                    // Reads that fill the buffer ask for a bigger one (bulk transfer);
                    // small ones keep an idle connection's footprint small.
                    if n == spare {
                        self.read_size = (self.read_size * 2).min(MAX_READ);
                    }
                    let r = self.proto.process();
                    self.drain_events();
                    if let Err(e) = r {
                        self.finish(e.status());
                        return true;
                    }
                    let streaming = self.streams_open();
                    let buf = self.proto.recv_buf();
                    if buf.is_empty()
                        && buf.capacity() > MIN_READ * 4
                        && (n < MIN_READ || !streaming)
                    {
                        // Drained after a bulk transfer: give the memory back. While a
                        // stream is open and reads stay large the buffer is kept, its
                        // pages mapped, so a stream does not fault them in again each
                        // time a read happens to end on a frame's end.
                        *buf = bytes::BytesMut::new();
                        self.read_size = MIN_READ;
                    }
                    if self.proto.recv_buf().is_empty() {
                        self.frame_timer = None;
                    } else if self.frame_timer.is_none() {
                        self.frame_timer =
                            Some(Box::pin(tokio::time::sleep(self.config.frame_timeout)));
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.finish(Status::unavailable(format!(
                        "read from {} failed: {e}",
                        self.shared.peer
                    )));
                    return true;
                }
                Poll::Pending => break,
            }
        }
        progressed
    }

    /// Writes what is queued; false when nothing was written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        loop {
            if self.wake_bytes >= WAKE_IO_BUDGET {
                return progressed;
            }
            if self.out.is_empty() {
                #[cfg(feature = "zstd")]
                self.train_dictionaries();
                let mut chunks = Vec::new();
                self.proto
                    .poll_transmit(self.config.write_batch, &mut chunks);
                if !self.streams.outgoing.is_empty() {
                    self.refresh_producers();
                }
                if chunks.is_empty() {
                    self.stall_timer = None;
                    if let Some(rate) = self.link.idle() {
                        self.proto.set_link_throughput(rate);
                    }
                    return progressed;
                }
                self.link.queued();
                self.out.extend(chunks);
                self.out_front = 0;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (i, c) in self.out.iter().take(MAX_SLICES).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &c[self.out_front..] } else { c });
                n += 1;
            }
            match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    self.finish(Status::unavailable("the peer stopped accepting bytes"));
                    return true;
                }
                Poll::Ready(Ok(mut written)) => {
                    progressed = true;
                    self.wake_bytes += written;
                    self.link.wrote(written);
                    self.stall_timer = None;
                    while written > 0 {
                        let front_left = self.out[0].len() - self.out_front;
                        if written >= front_left {
                            written -= front_left;
                            self.out.pop_front();
                            self.out_front = 0;
                        } else {
                            self.out_front += written;
                            written = 0;
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.finish(Status::unavailable(format!(
                        "write to {} failed: {e}",
                        self.shared.peer
                    )));
                    return true;
                }
                Poll::Pending => {
                    if self.stall_timer.is_none() {
                        self.stall_timer = Some(Box::pin(tokio::time::sleep(
                            self.config.write_stall_timeout,
                        )));
                    }
                    let _ = Pin::new(&mut self.io).poll_flush(cx);
                    return progressed;
                }
            }
        }
    }

    /// Trains the dictionaries of methods whose small messages were sampled, on the
    /// offload runtime (milliseconds of CPU each).
    #[cfg(feature = "zstd")]
    fn train_dictionaries(&mut self) {
        while let Some(job) = self.proto.take_dictionary_job() {
            self.offload_command(move || Command::DictionaryTrained(Box::new(job.run())));
        }
    }

    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(t) = &mut self.handshake
            && t.as_mut().poll(cx).is_ready()
        {
            self.handshake = None;
            let s = Status::deadline_exceeded(format!(
                "the handshake with {} did not complete within {:?}",
                self.shared.peer, self.config.handshake_timeout
            ));
            self.proto.close(s.clone());
            self.finish(s);
            return true;
        }
        if let Some(t) = &mut self.frame_timer
            && t.as_mut().poll(cx).is_ready()
        {
            self.frame_timer = None;
            let s = Status::deadline_exceeded(format!(
                "{} started a frame and did not complete it within {:?}",
                self.shared.peer, self.config.frame_timeout
            ));
            self.proto.close(s.clone());
            self.finish(s);
            return true;
        }
        if let Some(t) = &mut self.stall_timer
            && t.as_mut().poll(cx).is_ready()
        {
            self.stall_timer = None;
            self.finish(Status::unavailable(format!(
                "{} has not read for {:?}; disconnected",
                self.shared.peer, self.config.write_stall_timeout
            )));
            return true;
        }
        false
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        for _ in 0..1024 {
            if !self.commands_open {
                break;
            }
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(cmd)) => {
                    progressed = true;
                    self.on_command(cmd);
                    if self.finished {
                        break;
                    }
                }
                Poll::Ready(None) => {
                    self.commands_open = false;
                    progressed = true;
                }
                Poll::Pending => break,
            }
        }
        // A client nobody can call through any more, with nothing left to do, closes.
        if !self.commands_open
            && self.role == Role::Client
            && self.pending.is_empty()
            && self.serving.is_empty()
            && !self.streams_open()
        {
            if !self.finished {
                self.proto
                    .close(Status::new(Code::Ok, "closed by its owner"));
                self.finish(Status::new(Code::Ok, "closed by its owner"));
            }
            return true;
        }
        progressed
    }
}

fn reject(cmd: Command, status: &Status) {
    // These commands never reached the wire.
    let s = Status::unavailable(format!("connection closed: {}", status.message)).not_executed();
    match cmd {
        Command::Call { reply, .. }
        | Command::Register { reply, .. }
        | Command::Unregister { reply, .. } => {
            let _ = reply.send(Err(s));
        }
        Command::CallCompressed(c) => {
            let _ = c.reply.send(Err(s));
        }
        Command::OpenStream(mut o) => {
            o.replies.send(Err(s));
        }
        _ => {}
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(y) = &mut this.yielding {
            if y.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.yielding = None;
        }
        this.wake_bytes = 0;
        for _ in 0..ROUNDS_PER_WAKE {
            if this.finished || this.wake_bytes >= WAKE_IO_BUDGET {
                break;
            }
            let mut progressed = this.poll_commands(cx);
            progressed |= this.poll_read(cx);
            // What the reads delivered reaches the streams' readers, a batch each.
            this.streams.flush();
            progressed |= this.poll_handlers(cx);
            progressed |= this.poll_write(cx);
            progressed |= this.poll_timers(cx);
            if this.draining
                && this.pending.is_empty()
                && this.serving.is_empty()
                && !this.streams_open()
                && this.backlog.is_empty()
                && this.out.is_empty()
            {
                let s = Status::new(Code::Ok, "drained");
                this.proto.close(s.clone());
                this.finish(s);
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        if this.finished {
            // Best effort: flush what is queued (a final error frame), then close.
            let _ = this.poll_write(cx);
            let _ = Pin::new(&mut this.io).poll_shutdown(cx);
            // Commands still queued get a clear answer.
            while let Poll::Ready(Some(cmd)) = this.commands.poll_recv(cx) {
                reject(cmd, &Status::unavailable("closed"));
            }
            this.commands.close();
            return Poll::Ready(());
        }
        // Budget used: let other tasks and the I/O driver run, then continue.
        let mut y: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(tokio::task::yield_now());
        if y.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        } else {
            this.yielding = Some(y);
        }
        Poll::Pending
    }
}

/// The exchange of a server that has no authenticator (never chosen in practice: such
/// a server offers only `none`).
struct RefuseAll;

impl ServerExchange for RefuseAll {
    fn step(&mut self, _: &[u8]) -> Step {
        Step::Reject(Status::unauthenticated(
            "this endpoint does not authenticate clients",
        ))
    }
}
