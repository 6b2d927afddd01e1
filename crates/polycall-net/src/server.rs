//! The server side: an accept loop that runs a connection per peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use polycall_core::{Router, Status};
use polycall_proto::frame::{ErrorFrame, Frame};
use polycall_proto::{PREFACE, Role};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::Endpoint;
use crate::connection::{ConnectionConfig, ConnectionHandle, PendingConnection};
use crate::handler::{RouterHandler, SharedHandler};
use crate::transport::{Listener, Plain, Transport};

/// Builds the handler of each accepted connection, given its handle and peer.
pub type MakeHandler = Arc<dyn Fn(&ConnectionHandle, &str) -> SharedHandler + Send + Sync>;

/// How a [`Server`] accepts.
#[derive(Clone)]
pub struct ServerConfig {
    /// Most connections at once; more are told `busy` and closed.
    pub max_connections: usize,
    /// Time given to calls in flight at shutdown before connections are closed.
    pub drain_timeout: Duration,
    /// Each connection's settings (its in-flight cap is `proto.settings.limits.max_in_flight`).
    pub connection: ConnectionConfig,
    /// The transport.
    pub transport: Arc<dyn Transport>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
            connection: ConnectionConfig::default(),
            transport: Arc::new(Plain),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

type Connections = Arc<Mutex<Vec<ConnectionHandle>>>;

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
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
pub struct Server {
    local: Endpoint,
    stop: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Connections,
    live: Arc<AtomicUsize>,
    drain_timeout: Duration,
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
            Arc::new(move |_: &ConnectionHandle, _: &str| handler.clone()),
        )
        .await
    }

    /// Listens on `endpoint`; `make` builds each connection's handler.
    pub async fn serve(
        endpoint: Endpoint,
        mut config: ServerConfig,
        make: MakeHandler,
    ) -> std::io::Result<Server> {
        if config.transport.authenticates_bytes() {
            config.connection.proto.settings.features &= !polycall_proto::features::CRC32C;
        }
        let listener = config.transport.bind(&endpoint).await?;
        let local = listener.local_endpoint();
        let (stop, stop_rx) = watch::channel(false);
        let connections: Connections = Arc::default();
        let live = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            config.clone(),
            make,
            stop_rx,
            connections.clone(),
            live.clone(),
        ));
        Ok(Server {
            local,
            stop,
            accept: Mutex::new(Some(accept)),
            connections,
            live,
            drain_timeout: config.drain_timeout,
        })
    }

    /// Where the server listens (with the real port when port 0 was asked for).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Graceful shutdown: stop accepting, tell every peer no new calls will be served,
    /// let calls in flight finish within the drain timeout, then close what is left.
    pub async fn shutdown(&self) {
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
        if tokio::time::timeout(self.drain_timeout, all_closed)
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
    }
}

async fn accept_loop(
    mut listener: Box<dyn Listener>,
    config: ServerConfig,
    make: MakeHandler,
    mut stop: watch::Receiver<bool>,
    connections: Connections,
    live: Arc<AtomicUsize>,
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
        if live.load(Ordering::Relaxed) >= config.max_connections {
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
        let pending = PendingConnection::new(peer.clone());
        let handler = make(pending.handle(), &peer);
        match pending.start(io, Role::Server, config.connection.clone(), handler) {
            Ok((handle, _connected)) => {
                live.fetch_add(1, Ordering::Relaxed);
                let mut list = connections.lock().await;
                list.retain(|c| !c.is_closed());
                list.push(handle.clone());
                drop(list);
                let live = live.clone();
                tokio::spawn(async move {
                    handle.closed().await;
                    live.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => tracing::error!(%e, "connection settings are invalid"),
        }
    }
}
