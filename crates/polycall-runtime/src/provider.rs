//! A Rust provider: connects to a runtime, registers the methods of a [`Router`], serves
//! them, and reconnects (and registers again) when the connection is lost.

use std::sync::Arc;
use std::time::Duration;

use polycall_core::{Router, Status};
use polycall_net::{
    ConnectionConfig, ConnectionHandle, Endpoint, Plain, RouterHandler, Transport, establish,
};
use polycall_proto::Role;
use polycall_proto::frame::MethodEntry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A provider connected to a runtime.
///
/// ```no_run
/// # async fn demo() -> Result<(), polycall_core::Status> {
/// use polycall_core::{handler_fn, Call, MethodInfo, Reply, Router};
/// use polycall_runtime::Provider;
/// let router = Router::new()
///     .route("greet.hello", MethodInfo::new("says hello"),
///            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }))
///     .unwrap();
/// let provider = Provider::start("127.0.0.1:7464".parse().unwrap(), router).await?;
/// // … serves until
/// provider.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping a Provider stops it; keep the handle while it serves"]
pub struct Provider {
    task: JoinHandle<()>,
    current: watch::Receiver<Option<ConnectionHandle>>,
}

fn entries(router: &Router) -> Vec<MethodEntry> {
    router
        .describe()
        .into_iter()
        .filter_map(|d| {
            let (service, method) = polycall_core::split_full_name(&d.name).ok()?;
            Some(MethodEntry {
                service,
                method,
                info: d.info,
            })
        })
        .collect()
}

/// How a provider connects: the transport (TLS, …) and the connection settings
/// (credentials, limits).
#[derive(Clone)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// The transport.
    pub transport: Arc<dyn Transport>,
    /// The connection settings; `credentials` authenticate the provider.
    pub connection: ConnectionConfig,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            transport: Arc::new(Plain),
            connection: ConnectionConfig::default(),
        }
    }
}

impl ProviderConfig {
    /// Sets the transport.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the connection settings (their `credentials` authenticate the provider).
    pub fn connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("transport", &self.transport.name())
            .field("connection", &self.connection)
            .finish()
    }
}

async fn connect_and_register(
    endpoint: &Endpoint,
    router: &Router,
    config: &ProviderConfig,
) -> Result<ConnectionHandle, Status> {
    let transport = config.transport.as_ref();
    let io = transport
        .connect(endpoint)
        .await
        .map_err(|e| Status::unavailable(format!("cannot connect to {endpoint}: {e}")))?;
    let handler = Arc::new(RouterHandler(router.clone()));
    let conn = establish(
        io,
        endpoint.to_string(),
        Role::Client,
        config.connection.clone(),
        handler,
    )
    .await?;
    conn.register(entries(router)).await?;
    Ok(conn)
}

impl Provider {
    /// Connects, registers every method of `router`, and keeps doing so after a lost
    /// connection. Fails if the first connection or registration fails.
    pub async fn start(endpoint: Endpoint, router: Router) -> Result<Provider, Status> {
        Self::start_with(endpoint, router, ProviderConfig::default()).await
    }

    /// Like [`Provider::start`], over `config`'s transport and with its credentials.
    pub async fn start_with(
        endpoint: Endpoint,
        router: Router,
        config: ProviderConfig,
    ) -> Result<Provider, Status> {
        let mut config = config;
        polycall_net::settle_crc32c(
            &mut config.connection.proto.settings,
            config.transport.as_ref(),
            Some(&endpoint),
        );
        let first = connect_and_register(&endpoint, &router, &config).await?;
        let (tx, rx) = watch::channel(Some(first.clone()));
        let task = tokio::spawn(async move {
            let mut conn = first;
            let mut backoff = Duration::from_millis(50);
            loop {
                conn.closed().await;
                let _ = tx.send(None);
                loop {
                    tokio::time::sleep(backoff).await;
                    match connect_and_register(&endpoint, &router, &config).await {
                        Ok(c) => {
                            conn = c;
                            backoff = Duration::from_millis(50);
                            let _ = tx.send(Some(conn.clone()));
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(%e, "provider reconnect failed");
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            }
        });
        Ok(Provider { task, current: rx })
    }

    /// The current connection to the runtime, if connected.
    pub fn connection(&self) -> Option<ConnectionHandle> {
        self.current.borrow().clone()
    }

    /// Stops serving: no reconnects; the connection closes (calls in flight fail), and
    /// this waits (up to a second) until it has.
    pub async fn stop(self) {
        self.task.abort();
        if let Some(c) = self.current.borrow().clone() {
            c.close(Status::unavailable("the provider stopped"));
            let _ = tokio::time::timeout(Duration::from_secs(1), c.closed()).await;
        }
    }
}

/// Dropping a provider stops it as [`Provider::stop`] does, without waiting: no
/// reconnects, and its connection closes.
impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(c) = self.current.borrow().clone() {
            c.close(Status::unavailable("the provider was dropped"));
        }
    }
}
