//! The client side: a [`Channel`] of one or more connections to one endpoint.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{BoxFuture, Call, Reply, Status, StreamCall};
use polycall_proto::Role;
use tower_service::Service;

use crate::Endpoint;
use crate::connection::{ConnectionConfig, ConnectionHandle, Streaming, establish};
use crate::handler::{NoHandler, SharedHandler};
use crate::pool::{Backoff, Pool, PoolConfig, spawn_reaper};
use crate::transport::{Plain, Transport};

/// How a [`Channel`] connects.
#[derive(Clone)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// The connections kept to the endpoint: how many (calls go to the least loaded),
    /// when an idle one is closed and when an old one is replaced.
    pub pool: PoolConfig,
    /// Time allowed to open a connection (transport and handshake).
    pub connect_timeout: Duration,
    /// After a failed connect, wait at least this long before trying that slot again…
    pub reconnect_backoff: Duration,
    /// …doubling up to this.
    pub max_reconnect_backoff: Duration,
    /// Each connection's settings.
    pub connection: ConnectionConfig,
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// Serves calls the peer makes on these connections (a provider's router); by
    /// default none are served.
    pub handler: SharedHandler,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            pool: PoolConfig::default(),
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::from_millis(50),
            max_reconnect_backoff: Duration::from_secs(2),
            connection: ConnectionConfig::default(),
            transport: Arc::new(Plain),
            handler: Arc::new(NoHandler),
        }
    }
}

impl ChannelConfig {
    /// Sets how the connections to the endpoint are pooled: how many, when an idle one is
    /// closed and when an old one is replaced.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Sets the time allowed to open a connection (transport and handshake).
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets the least wait after a failed connect before that slot is tried again.
    pub fn reconnect_backoff(mut self, reconnect_backoff: Duration) -> Self {
        self.reconnect_backoff = reconnect_backoff;
        self
    }

    /// Sets the most the reconnect wait grows to, doubling from `reconnect_backoff`.
    pub fn max_reconnect_backoff(mut self, max_reconnect_backoff: Duration) -> Self {
        self.max_reconnect_backoff = max_reconnect_backoff;
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

    /// Sets what serves calls the peer makes on these connections (a provider's router).
    pub fn handler(mut self, handler: SharedHandler) -> Self {
        self.handler = handler;
        self
    }
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("pool", &self.pool)
            .field("connect_timeout", &self.connect_timeout)
            .field("transport", &self.transport.name())
            .finish()
    }
}

struct Inner {
    endpoint: Endpoint,
    config: ChannelConfig,
    pool: Pool,
}

/// A cloneable client of one endpoint over one or more multiplexed connections (a
/// [pool](crate::pool)). Calls go to the connection with the fewest calls in flight; a
/// connection that ends is replaced on the next call (with backoff after failures);
/// idle and old connections are closed or replaced as [`PoolConfig`] says. It is a
/// `tower::Service<Call>`, so resilience layers stack on it.
///
/// ```no_run
/// # async fn demo() -> Result<(), polycall_core::Status> {
/// use polycall_core::{Call, Payload};
/// use polycall_net::Channel;
/// let channel = Channel::connect("127.0.0.1:7000".parse().unwrap()).await?;
/// let reply = channel.call(Call::new("sys.ping", Payload::empty()).unwrap()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

impl Channel {
    /// Connects to `endpoint` with default settings (the first connection is opened now,
    /// so a wrong endpoint fails here).
    pub async fn connect(endpoint: Endpoint) -> Result<Self, Status> {
        Self::with_config(endpoint, ChannelConfig::default()).await
    }

    /// Connects with `config`.
    pub async fn with_config(
        endpoint: Endpoint,
        mut config: ChannelConfig,
    ) -> Result<Self, Status> {
        config.pool.connections = config.pool.connections.max(1);
        crate::transport::settle_crc32c(
            &mut config.connection.proto.settings,
            config.transport.as_ref(),
            Some(&endpoint),
        );
        let pool = Pool::new(
            endpoint.to_string(),
            config.pool.clone(),
            Backoff {
                initial: config.reconnect_backoff,
                max: config.max_reconnect_backoff,
            },
        );
        let channel = Self {
            inner: Arc::new(Inner {
                endpoint,
                config,
                pool,
            }),
        };
        drop(channel.inner.pool.acquire(0, &|| channel.open()).await?);
        spawn_reaper(
            Arc::downgrade(&channel.inner),
            channel.inner.pool.config().reap_interval(),
            |inner: &Arc<Inner>| {
                let r = inner.pool.reap();
                if r.idle + r.retired.len() + r.dead > 0 {
                    tracing::debug!(
                        endpoint = %inner.endpoint,
                        idle = r.idle,
                        retired = r.retired.len(),
                        ended = r.dead,
                        "connection pool reaped"
                    );
                }
                // Retired connections are replaced at once (callers needing the slot
                // meanwhile wait for the new connection or use another slot).
                for i in r.retired {
                    let channel = Channel {
                        inner: inner.clone(),
                    };
                    tokio::spawn(async move {
                        let pool = &channel.inner.pool;
                        if let Err(e) = pool.acquire(i, &|| channel.open()).await {
                            tracing::debug!(%e, "replacing a retired connection failed");
                        }
                    });
                }
            },
        );
        Ok(channel)
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    async fn open(&self) -> Result<ConnectionHandle, Status> {
        let c = &self.inner.config;
        let ep = &self.inner.endpoint;
        let connect = async {
            let io = c.transport.connect(ep).await.map_err(|e| {
                Status::unavailable(format!("cannot connect to {ep}: {e}")).not_executed()
            })?;
            establish(
                io,
                ep.to_string(),
                Role::Client,
                c.connection.clone(),
                c.handler.clone(),
            )
            .await
        };
        tokio::time::timeout(c.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(Status::unavailable(format!(
                    "connecting to {ep} took longer than {:?}",
                    c.connect_timeout
                ))
                .not_executed())
            })
    }

    /// Calls a method on the endpoint.
    pub async fn call(&self, call: Call) -> Result<Reply, Status> {
        // The call is queued on its connection before the slot is let go (so the pool's
        // reaper cannot retire the connection in between).
        let reply = self
            .inner
            .pool
            .dispatch(|| self.open(), |h| h.call(call))
            .await?;
        reply.await
    }

    /// Opens a server-streaming call: one request, the replies as they come.
    ///
    /// ```no_run
    /// # async fn demo(channel: polycall_net::Channel) -> Result<(), polycall_core::Status> {
    /// use futures_util::StreamExt;
    /// use polycall_core::{Call, Payload};
    ///
    /// let call = Call::new("feed.ticks", Payload::raw("3")).expect("a valid name");
    /// let mut ticks = channel.server_stream(call).await?;
    /// while let Some(tick) = ticks.next().await {
    ///     println!("{:?}", tick?.bytes);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn server_stream(&self, call: Call) -> Result<Streaming, Status> {
        self.inner
            .pool
            .dispatch(|| self.open(), |h| h.server_stream(call))
            .await
    }

    /// Opens a client-streaming call: `call.requests` are sent as the server's credit
    /// allows; the result is the one reply.
    pub async fn client_stream(&self, call: StreamCall) -> Result<Reply, Status> {
        let reply = self
            .inner
            .pool
            .dispatch(|| self.open(), |h| h.client_stream(call))
            .await?;
        reply.await
    }

    /// Opens a bidirectional call: `call.requests` are sent while the replies arrive.
    pub async fn bidi(&self, call: StreamCall) -> Result<Streaming, Status> {
        self.inner
            .pool
            .dispatch(|| self.open(), |h| h.bidi(call))
            .await
    }

    /// A live connection (to register methods on, or to learn its peer).
    pub async fn any_connection(&self) -> Result<ConnectionHandle, Status> {
        self.inner
            .pool
            .dispatch(|| self.open(), ConnectionHandle::clone)
            .await
    }

    /// The pool's live connections now (for inspection; calls pick their own).
    pub fn connections(&self) -> Vec<ConnectionHandle> {
        self.inner.pool.live()
    }
}

impl Service<Call> for Channel {
    type Response = Reply;
    type Error = Status;
    type Future = BoxFuture;

    /// Ready when a call can go without waiting: a connection of the pool has room
    /// under the server's `max_in_flight` (or one can be opened). A `Channel` whose
    /// connections are all full is not ready: tower stacks (buffers, balancers, load
    /// shedders) see the backpressure instead of queueing calls on a full connection.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.pool.poll_capacity(cx).map(Ok)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let this = self.clone();
        Box::pin(async move { this.call(call).await })
    }
}
