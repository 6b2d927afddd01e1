//! The server side: an accept loop that runs a connection per peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use polycall_core::{Router, Status};
use polycall_proto::detect::{Detection, Dialect, detect};
use polycall_proto::frame::{ErrorFrame, Frame};
use polycall_proto::{PREFACE, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::Endpoint;
use crate::connection::{ConnectionConfig, ConnectionHandle, PendingConnection};
use crate::handler::{RouterHandler, SharedHandler};
use crate::prefixed::Prefixed;
use crate::transport::{BoxFuture, BoxIo, Listener, Peer, Plain, Transport};

/// Builds the handler of each accepted connection, given its handle and peer.
pub type MakeHandler = Arc<dyn Fn(&ConnectionHandle, &Peer) -> SharedHandler + Send + Sync>;

/// A connection that speaks one of libpolycall's dialects, handed to a [`LegacyServe`].
pub struct LegacyConnection {
    /// The dialect its first bytes showed ([`Dialect::Pcr1`] or [`Dialect::LegacyV1`]).
    pub dialect: Dialect,
    /// The stream; its reads return the bytes read to tell the dialect first.
    pub io: BoxIo,
    /// Who the peer is (address, and what the transport proved).
    pub peer: Peer,
    /// Becomes `true` when the server shuts down: finish the message at hand, then
    /// close. Connections still open after the drain timeout are aborted.
    pub stopping: watch::Receiver<bool>,
}

impl std::fmt::Debug for LegacyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyConnection")
            .field("dialect", &self.dialect)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Serves connections in libpolycall's dialects (PCR1, first generation). With one in
/// [`ServerConfig::legacy`], the server reads each connection's first bytes (within
/// the handshake timeout) to tell the dialect, runs polycall connections as usual and
/// hands the others to [`LegacyServe::serve`]. A legacy connection counts towards
/// [`ServerConfig::max_connections`] until the returned future ends.
///
/// ```
/// use std::sync::Arc;
/// use polycall_net::{BoxFuture, LegacyConnection, LegacyServe, ServerConfig};
/// struct Refuse;
/// impl LegacyServe for Refuse {
///     fn serve(&self, conn: LegacyConnection) -> BoxFuture<'static, ()> {
///         Box::pin(async move { drop(conn.io) })
///     }
/// }
/// let config = ServerConfig::default().legacy(Arc::new(Refuse));
/// # let _ = config;
/// ```
pub trait LegacyServe: Send + Sync + 'static {
    /// Serves one connection until it ends.
    fn serve(&self, conn: LegacyConnection) -> BoxFuture<'static, ()>;
}

/// How a [`Server`] accepts.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Most connections at once; more are told `busy` and closed.
    pub max_connections: usize,
    /// Time given to calls in flight at shutdown before connections are closed.
    pub drain_timeout: Duration,
    /// Each connection's settings (its in-flight cap is `proto.settings.limits.max_in_flight`).
    pub connection: ConnectionConfig,
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// Serves libpolycall's dialects on the same listener; `None` (the default): only
    /// polycall is spoken, and a connection is not read before its driver starts.
    pub legacy: Option<Arc<dyn LegacyServe>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
            connection: ConnectionConfig::default(),
            transport: Arc::new(Plain),
            legacy: None,
        }
    }
}

impl ServerConfig {
    /// Sets the most connections at once; more are told `busy` and closed.
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets the time given to calls in flight at shutdown before connections are closed.
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Sets each connection's settings.
    pub fn connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets the transport.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// Sets what serves libpolycall's dialects on the same listener.
    pub fn legacy(mut self, legacy: Arc<dyn LegacyServe>) -> Self {
        self.legacy = Some(legacy);
        self
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("legacy", &self.legacy.is_some())
            .finish()
    }
}

type Connections = Arc<Mutex<Vec<ConnectionHandle>>>;
type LegacyTasks = Arc<std::sync::Mutex<Vec<AbortHandle>>>;

/// A running server. [`Server::shutdown`] stops it gracefully (draining calls in
/// flight); dropping it stops it at once: the listener closes, open connections are
/// closed (their calls in flight fail with `unavailable`) and legacy connections are
/// aborted. Keep the handle for as long as the server should serve.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use polycall_core::{handler_fn, Call, MethodInfo, Reply, Router};
/// use polycall_net::{Server, ServerConfig};
/// let router = Router::new().route("debug.echo", MethodInfo::new("echo"),
///     handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }))?;
/// let server = Server::serve_router("127.0.0.1:0".parse()?, ServerConfig::default(), router).await?;
/// println!("listening on {}", server.local_endpoint());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use = "dropping a Server stops it; keep the handle while it serves"]
pub struct Server {
    local: Endpoint,
    stop: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Connections,
    legacy: LegacyTasks,
    live: Arc<AtomicUsize>,
    /// The settings in force; [`Server::update`] changes them for what comes next.
    config: Arc<std::sync::RwLock<ServerConfig>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Ok(mut accept) = self.accept.try_lock()
            && let Some(task) = accept.take()
        {
            task.abort();
        }
        if let Ok(connections) = self.connections.try_lock() {
            for c in connections.iter() {
                c.close(Status::unavailable("the server was dropped"));
            }
        }
        let legacy = self.legacy.lock().unwrap_or_else(|p| p.into_inner());
        legacy.iter().for_each(AbortHandle::abort);
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .finish()
    }
}

impl Server {
    /// Listens on `endpoint` and serves `router` on every connection.
    pub async fn serve_router(
        endpoint: Endpoint,
        config: ServerConfig,
        router: Router,
    ) -> std::io::Result<Server> {
        let handler: SharedHandler = Arc::new(RouterHandler(router));
        Self::serve(
            endpoint,
            config,
            Arc::new(move |_: &ConnectionHandle, _: &Peer| handler.clone()),
        )
        .await
    }

    /// Listens on `endpoint`; `make` builds each connection's handler.
    pub async fn serve(
        endpoint: Endpoint,
        mut config: ServerConfig,
        make: MakeHandler,
    ) -> std::io::Result<Server> {
        crate::transport::settle_crc32c(
            &mut config.connection.proto.settings,
            config.transport.as_ref(),
            None,
        );
        let listener = config.transport.bind(&endpoint).await?;
        let local = listener.local_endpoint();
        let (stop, stop_rx) = watch::channel(false);
        let connections: Connections = Arc::default();
        let legacy: LegacyTasks = Arc::default();
        let live = Arc::new(AtomicUsize::new(0));
        let shared_config = Arc::new(std::sync::RwLock::new(config));
        let accept = tokio::spawn(accept_loop(
            listener,
            shared_config.clone(),
            make,
            stop_rx,
            Shared {
                connections: connections.clone(),
                legacy: legacy.clone(),
                live: live.clone(),
            },
        ));
        Ok(Server {
            local,
            stop,
            accept: Mutex::new(Some(accept)),
            connections,
            legacy,
            live,
            config: shared_config,
        })
    }

    /// Changes the settings for what comes next: the connection cap and drain timeout
    /// at once, connection settings (limits, timeouts) for connections accepted from now
    /// on — connections already open keep what they negotiated. The endpoint and the
    /// transport stay as bound.
    ///
    /// ```no_run
    /// # fn demo(server: &polycall_net::Server) {
    /// server.update(|c| c.max_connections = 500);
    /// # }
    /// ```
    pub fn update(&self, f: impl FnOnce(&mut ServerConfig)) {
        let mut c = self.config.write().unwrap_or_else(|p| p.into_inner());
        let (transport, legacy) = (c.transport.clone(), c.legacy.clone());
        f(&mut c);
        c.transport = transport;
        c.legacy = legacy;
        let transport = c.transport.clone();
        crate::transport::settle_crc32c(&mut c.connection.proto.settings, transport.as_ref(), None);
    }

    /// The authenticator connections accepted now are checked with (it follows
    /// [`Server::update`]).
    pub fn authenticator(&self) -> Option<Arc<dyn crate::auth::Authenticator>> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .connection
            .authenticator
            .clone()
    }

    fn drain_timeout(&self) -> Duration {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .drain_timeout
    }

    /// Where the server listens (with the real port when port 0 was asked for).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Serves until `shutdown` completes (a signal, a channel, a timer), then shuts down
    /// gracefully ([`Server::shutdown`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use polycall_core::{handler_fn, Call, MethodInfo, Reply, Router};
    /// use polycall_net::{Server, ServerConfig};
    /// let router = Router::new().route("debug.echo", MethodInfo::new("echo"),
    ///     handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }))?;
    /// Server::serve_router("127.0.0.1:7000".parse()?, ServerConfig::default(), router)
    ///     .await?
    ///     .serve_until(async { tokio::signal::ctrl_c().await.unwrap() })
    ///     .await;
    /// # Ok(()) }
    /// ```
    pub async fn serve_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        self.shutdown().await;
    }

    /// Graceful shutdown: stop accepting, tell every peer no new calls will be served,
    /// let calls in flight finish within the drain timeout, then close what is left.
    pub async fn shutdown(&self) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout();
        let _ = self.stop.send(true);
        if let Some(a) = self.accept.lock().await.take() {
            let _ = a.await; // the listener is closed when the loop ends
        }
        let conns: Vec<ConnectionHandle> = self.connections.lock().await.clone();
        for c in &conns {
            c.go_away(Status::unavailable("the server is shutting down"));
        }
        let all_closed = async {
            for c in &conns {
                c.closed().await;
            }
        };
        if tokio::time::timeout(self.drain_timeout(), all_closed)
            .await
            .is_err()
        {
            for c in &conns {
                c.close(Status::unavailable(
                    "the server shut down before the call completed",
                ));
            }
            for c in &conns {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.closed()).await;
            }
        }
        // Legacy connections saw `stopping`; give them what is left of the drain time.
        loop {
            let open: Vec<AbortHandle> = {
                let mut l = self.legacy.lock().unwrap_or_else(|p| p.into_inner());
                l.retain(|h| !h.is_finished());
                l.clone()
            };
            if open.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                open.iter().for_each(AbortHandle::abort);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the accept loop shares with the server.
#[derive(Clone)]
struct Shared {
    connections: Connections,
    legacy: LegacyTasks,
    live: Arc<AtomicUsize>,
}

/// Gives a connection's slot back when dropped (also when its task is aborted).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    mut listener: Box<dyn Listener>,
    current: Arc<std::sync::RwLock<ServerConfig>>,
    make: MakeHandler,
    mut stop: watch::Receiver<bool>,
    shared: Shared,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let (mut io, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The settings in force for this connection (a reload may have changed them).
        let config = current.read().unwrap_or_else(|p| p.into_inner()).clone();
        if shared.live.load(Ordering::Relaxed) >= config.max_connections {
            let max = config.max_connections;
            tokio::spawn(async move {
                let status = Status::busy(format!(
                    "the server's limit of {max} connections is reached; retry later"
                ))
                .with_retry_after(Duration::from_millis(500));
                let mut bytes = PREFACE.to_vec();
                bytes.extend_from_slice(
                    &Frame::Error(ErrorFrame::from_status(0, &status)).to_bytes(false),
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = io.write_all(&bytes).await;
                    let _ = io.shutdown().await;
                })
                .await;
            });
            continue;
        }
        // The slot is taken now, so connections being sniffed count towards the cap.
        shared.live.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(shared.live.clone());
        match config.legacy.clone() {
            None => start_polycall(io, peer, &config, &make, &shared, slot).await,
            Some(hook) => {
                let (config, make, stop, task_shared) =
                    (config.clone(), make.clone(), stop.clone(), shared.clone());
                let task = tokio::spawn(async move {
                    sniff_and_serve(io, peer, hook, config, make, stop, task_shared, slot).await;
                });
                let mut l = shared.legacy.lock().unwrap_or_else(|p| p.into_inner());
                l.retain(|h| !h.is_finished());
                l.push(task.abort_handle());
            }
        }
    }
}

/// Runs the polycall driver over `io`; the slot is given back when it closes.
async fn start_polycall(
    io: BoxIo,
    peer: Peer,
    config: &ServerConfig,
    make: &MakeHandler,
    shared: &Shared,
    slot: Slot,
) {
    let pending = PendingConnection::new(peer.clone());
    let handler = make(pending.handle(), &peer);
    match pending.start(io, Role::Server, config.connection.clone(), handler) {
        Ok((handle, _connected)) => {
            let mut list = shared.connections.lock().await;
            list.retain(|c| !c.is_closed());
            list.push(handle.clone());
            drop(list);
            tokio::spawn(async move {
                handle.closed().await;
                drop(slot);
            });
        }
        Err(e) => tracing::error!(%e, "connection settings are invalid"),
    }
}

/// Reads a connection's first bytes (within the handshake timeout) until the dialect
/// is certain, then serves it: polycall (and anything unrecognised, which the driver
/// refuses with a message naming what it saw) by the driver, libpolycall's dialects by
/// the hook. The bytes read are replayed to whoever serves the connection.
#[allow(clippy::too_many_arguments)]
async fn sniff_and_serve(
    mut io: BoxIo,
    peer: Peer,
    hook: Arc<dyn LegacyServe>,
    config: ServerConfig,
    make: MakeHandler,
    stop: watch::Receiver<bool>,
    shared: Shared,
    slot: Slot,
) {
    let mut seen = BytesMut::with_capacity(64);
    let limit = config.connection.handshake_timeout;
    let sniffed = tokio::time::timeout(limit, async {
        loop {
            match detect(&seen) {
                Detection::NeedMore => {}
                d => return Ok(d),
            }
            if io.read_buf(&mut seen).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
    })
    .await;
    let detection = match sniffed {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection ended before its dialect was known");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, ?limit, "no recognisable first bytes within the handshake timeout");
            return;
        }
    };
    if *stop.borrow() {
        return;
    }
    let io: BoxIo = Box::new(Prefixed::new(seen.freeze(), io));
    match detection {
        Detection::Known(dialect @ (Dialect::Pcr1 | Dialect::LegacyV1)) => {
            tracing::debug!(%peer, ?dialect, "libpolycall connection");
            hook.serve(LegacyConnection {
                dialect,
                io,
                peer,
                stopping: stop,
            })
            .await;
            drop(slot);
        }
        _ => start_polycall(io, peer, &config, &make, &shared, slot).await,
    }
}
