//! TLS 1.3 over TCP (or a Unix socket): the [`Tls`] transport.
//!
//! [`Tls`] wraps a byte transport ([`TunedTcp`] by default) with rustls through
//! tokio-rustls. Configurations come from `polycall_security` ([`ServerTls`] and
//! [`ClientTls`], TLS 1.3 only, ALPN `polycall/1`, aws-lc-rs). Because TLS
//! authenticates every byte, [`Transport::authenticates_bytes`] is `true` and the
//! protocol's CRC32C trailer is not negotiated.
//!
//! ## Accepting
//!
//! The listener accepts sockets on a task of its own and runs each TLS handshake on a
//! task per socket, bounded by [`Tls::with_handshake_timeout`] (10 s by default) and by
//! a cap on handshakes in flight; completed streams are handed to
//! [`Listener::accept`] through a channel. A peer that stalls its handshake therefore
//! never holds up the accept loop. Failed handshakes (wrong CA, expired or revoked
//! certificate, TLS 1.2, …) are logged at debug level and dropped.
//!
//! ## Peer identity
//!
//! The [`Peer`] [`Listener::accept`] returns carries, besides the address, the
//! identity a verified client certificate proved
//! ([`polycall_security::peer_identity`]: its SPIFFE ID, else its first DNS name), as a
//! typed [`polycall_core::Principal`]. The connection makes that identity the session's
//! principal (see [`crate::auth`]).
//!
//! ## Off the event loop
//!
//! Handshakes run on the [`crate::offload`] runtime, not on the connection tasks' threads:
//! the signature with the server key (possibly in an HSM, through PKCS#11), key
//! agreement and certificate checks never stall calls on open connections.
//!
//! ## Certificate reload
//!
//! [`Tls::server_config_slot`] gives the listener's configuration; replacing it applies
//! to every handshake after, while open connections keep theirs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use polycall_net::{Server, ServerConfig, tls::Tls};
//! use polycall_security::{ClientAuth, ServerTls};
//! let tls = ServerTls::default()
//!     .cert_chain("file:/etc/polycall/node.pem".parse()?)
//!     .key("file:/etc/polycall/node.key".parse()?)
//!     .ca("file:/etc/polycall/ca.pem".parse()?)
//!     .client_auth(ClientAuth::Required);
//! let config = ServerConfig::default().transport(Arc::new(Tls::server(tls.build()?)));
//! # let _ = config; Ok(()) }
//! ```
//!
//! [`ServerTls`]: polycall_security::ServerTls
//! [`ClientTls`]: polycall_security::ClientTls

use std::io;
use std::sync::Arc;
use std::time::Duration;

use polycall_security::rustls;
use polycall_security::rustls_pki_types::ServerName;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{BoxFuture, BoxIo, Endpoint, Listener, Peer, Transport, TunedTcp};

/// Handshakes in flight per listener; sockets beyond wait in the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// TLS 1.3 over another transport (TCP by default). Give it a server configuration to
/// listen, a client configuration to connect, or both.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<dyn Transport>,
    server: Option<ServerConfigSlot>,
    client: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("inner", &self.inner.name())
            .field("server", &self.server.is_some())
            .field("client", &self.client.is_some())
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// The server configuration a [`Tls`] listener uses for each new handshake; replacing
/// it (new certificates, CA bundle or revocation lists) takes effect for the next
/// connection, without a restart and without touching connections already open.
///
/// ```
/// # fn demo(tls: polycall_net::tls::Tls, fresh: std::sync::Arc<polycall_security::rustls::ServerConfig>) {
/// let slot = tls.server_config_slot().expect("a server transport");
/// slot.replace(fresh); // e.g. after `polycall certs issue` renewed the node certificate
/// # }
/// ```
#[derive(Clone)]
pub struct ServerConfigSlot(Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>);

impl ServerConfigSlot {
    fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(config)))
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Uses `config` for every handshake from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

impl std::fmt::Debug for ServerConfigSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerConfigSlot")
    }
}

impl Tls {
    /// A transport with optional server and client configurations, over TCP with the
    /// kernel's default buffers.
    pub fn new(
        server: Option<Arc<rustls::ServerConfig>>,
        client: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            inner: Arc::new(TunedTcp::default()),
            server: server.map(ServerConfigSlot::new),
            client,
            server_name: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// A listening-only transport.
    pub fn server(config: Arc<rustls::ServerConfig>) -> Self {
        Self::new(Some(config), None)
    }

    /// A connecting-only transport.
    pub fn client(config: Arc<rustls::ClientConfig>) -> Self {
        Self::new(None, Some(config))
    }

    /// Where the server configuration lives, to replace it while listening (certificate
    /// reload); `None` for a connecting-only transport.
    pub fn server_config_slot(&self) -> Option<ServerConfigSlot> {
        self.server.clone()
    }

    /// Runs TLS over `inner` instead of plain TCP (e.g. a [`TunedTcp`] with bounded
    /// buffers, or [`Plain`](crate::Plain) for Unix sockets).
    pub fn over(mut self, inner: Arc<dyn Transport>) -> Self {
        self.inner = inner;
        self
    }

    /// The name the server's certificate must carry. By default the endpoint's host
    /// (a DNS name or an IP address); required for `unix:` endpoints.
    pub fn with_server_name(mut self, name: &str) -> io::Result<Self> {
        let n = ServerName::try_from(name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a TLS server name: {e}"),
            )
        })?;
        self.server_name = Some(n);
        Ok(self)
    }

    /// Time allowed for a TLS handshake, on both sides (10 s by default).
    pub fn with_handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    fn server_name_for(&self, endpoint: &Endpoint) -> io::Result<ServerName<'static>> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let Endpoint::Tcp(hp) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS to {endpoint} needs a server name (Tls::with_server_name)"),
            ));
        };
        let host = hp.rsplit_once(':').map_or(hp.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a TLS server name: {e}"),
            )
        })
    }
}

fn timed_out(what: &str, d: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("TLS handshake {what} took longer than {d:?}"),
    )
}

impl Transport for Tls {
    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<BoxIo>> {
        let this = self.clone();
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let config = this.client.clone().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "this TLS transport has no client configuration",
                )
            })?;
            let name = this.server_name_for(&endpoint)?;
            let io = this.inner.connect(&endpoint).await?;
            let d = this.handshake_timeout;
            // The handshake's crypto (and a client key in an HSM) runs off the caller's
            // event loop.
            let connector = TlsConnector::from(config);
            let tls = crate::offload::spawn(async move {
                tokio::time::timeout(d, connector.connect(name, io)).await
            })
            .await
            .map_err(|_| io::Error::other("the TLS handshake task ended abnormally"))?
            .map_err(|_| timed_out(&format!("with {endpoint}"), d))?
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {endpoint}: {e}")))?;
            Ok(Box::new(tls) as BoxIo)
        })
    }

    fn bind(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let this = self.clone();
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let config = this.server.clone().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "this TLS transport has no server configuration",
                )
            })?;
            let inner = this.inner.bind(&endpoint).await?;
            let local = inner.local_endpoint();
            let (tx, rx) = mpsc::channel(64);
            let task = tokio::spawn(accept_task(inner, config, this.handshake_timeout, tx));
            Ok(Box::new(TlsListener { rx, local, task }) as Box<dyn Listener>)
        })
    }

    fn authenticates_bytes(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "tls"
    }
}

type Accepted = io::Result<(BoxIo, Peer)>;

/// Accepts sockets and runs their handshakes, a task each; ends (aborting the
/// handshakes in flight) when the listener is dropped.
async fn accept_task(
    mut inner: Box<dyn Listener>,
    config: ServerConfigSlot,
    timeout: Duration,
    tx: mpsc::Sender<Accepted>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            a = inner.accept(), if handshakes.len() < MAX_PENDING_HANDSHAKES => match a {
                Ok((io, peer)) => {
                    let (acceptor, tx) = (TlsAcceptor::from(config.current()), tx.clone());
                    handshakes.spawn(async move {
                        let handshake = crate::offload::spawn(async move {
                            tokio::time::timeout(timeout, acceptor.accept(io)).await
                        });
                        let Ok(done) = handshake.await else { return };
                        match done {
                            Ok(Ok(tls)) => {
                                let mut peer = peer;
                                peer.identity = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(polycall_security::peer_identity);
                                let _ = tx.send(Ok((Box::new(tls) as BoxIo, peer))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                            }
                        }
                    });
                }
                // The server logs and backs off; pass the error on.
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

struct TlsListener {
    rx: mpsc::Receiver<Accepted>,
    local: Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl Listener for TlsListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, Peer)>> {
        Box::pin(async move {
            match self.rx.recv().await {
                Some(a) => a,
                None => Err(io::Error::other("the TLS accept task ended")),
            }
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the socket and aborts the handshakes in flight.
        self.task.abort();
    }
}
