//! The client side: a [`Channel`] of one or more connections to one endpoint.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use polycall_core::{BoxFuture, Call, Reply, Status};
use polycall_proto::Role;
use tokio::sync::Mutex;
use tower_service::Service;

use crate::Endpoint;
use crate::connection::{ConnectionConfig, ConnectionHandle, establish};
use crate::handler::{NoHandler, SharedHandler};
use crate::transport::{Plain, Transport};

/// How a [`Channel`] connects.
#[derive(Clone)]
pub struct ChannelConfig {
    /// Connections kept to the endpoint; calls go to the least loaded.
    pub connections: usize,
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
            connections: 1,
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::from_millis(50),
            max_reconnect_backoff: Duration::from_secs(2),
            connection: ConnectionConfig::default(),
            transport: Arc::new(Plain),
            handler: Arc::new(NoHandler),
        }
    }
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("connections", &self.connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("transport", &self.transport.name())
            .finish()
    }
}

#[derive(Default)]
struct Slot {
    handle: Option<ConnectionHandle>,
    failures: u32,
    retry_at: Option<Instant>,
}

struct Inner {
    endpoint: Endpoint,
    config: ChannelConfig,
    slots: Vec<Mutex<Slot>>,
}

/// A cloneable client of one endpoint over one or more multiplexed connections. Calls go
/// to the connection with the fewest calls in flight; a connection that ends is
/// replaced on the next call (with backoff after failures). It is a
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
        config.connections = config.connections.max(1);
        if config.transport.authenticates_bytes() {
            config.connection.proto.settings.features &= !polycall_proto::features::CRC32C;
        }
        let slots = (0..config.connections)
            .map(|_| Mutex::new(Slot::default()))
            .collect();
        let channel = Self {
            inner: Arc::new(Inner {
                endpoint,
                config,
                slots,
            }),
        };
        channel.connection(0).await?;
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
            let io = c
                .transport
                .connect(ep)
                .await
                .map_err(|e| Status::unavailable(format!("cannot connect to {ep}: {e}")).not_executed())?;
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

    /// The live connection of slot `i`, opening it when needed.
    async fn connection(&self, i: usize) -> Result<ConnectionHandle, Status> {
        let mut slot = self.inner.slots[i].lock().await;
        if let Some(h) = &slot.handle
            && !h.is_closed()
            && !h.is_going_away()
        {
            return Ok(h.clone());
        }
        if let Some(at) = slot.retry_at
            && Instant::now() < at
        {
            return Err(Status::unavailable(format!(
                "{} is unreachable; retrying in {:?}",
                self.inner.endpoint,
                at - Instant::now()
            ))
            .not_executed());
        }
        match self.open().await {
            Ok(h) => {
                slot.handle = Some(h.clone());
                slot.failures = 0;
                slot.retry_at = None;
                Ok(h)
            }
            Err(e) => {
                slot.handle = None;
                slot.failures += 1;
                let c = &self.inner.config;
                let backoff = c
                    .reconnect_backoff
                    .saturating_mul(1 << slot.failures.min(10))
                    .min(c.max_reconnect_backoff);
                slot.retry_at = Some(Instant::now() + backoff);
                Err(e)
            }
        }
    }

    /// The live connection with the fewest calls in flight.
    async fn pick(&self) -> Result<ConnectionHandle, Status> {
        let mut best: Option<ConnectionHandle> = None;
        let mut dead = Vec::new();
        for (i, slot) in self.inner.slots.iter().enumerate() {
            // A slot being (re)connected by another caller is skipped.
            if let Ok(s) = slot.try_lock() {
                match &s.handle {
                    Some(h) if !h.is_closed() && !h.is_going_away() => {
                        if best.as_ref().is_none_or(|b| h.in_flight() < b.in_flight()) {
                            best = Some(h.clone());
                        }
                    }
                    _ => dead.push(i),
                }
            }
        }
        if let Some(b) = &best
            && (dead.is_empty() || b.in_flight() == 0)
        {
            return Ok(b.clone());
        }
        let mut last_err = None;
        for i in dead {
            match self.connection(i).await {
                Ok(h) => return Ok(h),
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(b) = best {
            return Ok(b);
        }
        match last_err {
            Some(e) => Err(e),
            None => self.connection(0).await,
        }
    }

    /// Calls a method on the endpoint.
    pub async fn call(&self, call: Call) -> Result<Reply, Status> {
        self.pick().await?.call(call).await
    }

    /// A live connection (to register methods on, or to learn its peer).
    pub async fn any_connection(&self) -> Result<ConnectionHandle, Status> {
        self.pick().await
    }
}

impl Service<Call> for Channel {
    type Response = Reply;
    type Error = Status;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let this = self.clone();
        Box::pin(async move { this.call(call).await })
    }
}
