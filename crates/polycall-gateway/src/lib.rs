//! # polycall-gateway
//!
//! HTTP/JSON for every client: any program that speaks HTTP calls polycall methods
//! without a binding. `POST /v1/{service}/{method}` with a JSON body calls the method
//! and answers its reply; an error answers polycall's code as an HTTP status
//! ([`http_status`]) with `{"code", "message"}`. HTTP/1.1 and HTTP/2 — cleartext (h2c,
//! prior knowledge) or over TLS (ALPN) — on one listener. `GET /openapi.json` is an
//! OpenAPI 3.1 document of the served methods, `GET /docs` a page listing them, `GET
//! /healthz` answers while the gateway serves.
//!
//! The gateway holds no policy of its own: a [`Backend`] authenticates the request's
//! bearer token and runs the call through the same authorization, limits and routing as
//! a native connection's calls.
//!
//! | request header | becomes |
//! |---|---|
//! | `Authorization: Bearer TOKEN` | the call's principal ([`Backend::authenticate`]) |
//! | `Polycall-Timeout-Ms: N` | the call's deadline (default [`GatewayConfig::default_timeout`]) |
//! | `traceparent`, `tracestate` | the call's W3C trace context |
//! | `Idempotency-Key` | the call's idempotency key |
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn polycall_gateway::Backend>) -> Result<(), polycall_gateway::GatewayError> {
//! use polycall_gateway::{GatewayConfig, serve};
//! let gateway = serve(GatewayConfig::new("127.0.0.1:8080".parse().unwrap()), backend).await?;
//! println!("curl -d '{{}}' http://{}/v1/sys/ping", gateway.local_addr());
//! # Ok(()) }
//! ```

mod backend;
mod http;
mod limits;
pub mod openapi;
pub mod routes;
mod sse;
mod status;
mod versions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use backend::Backend;
pub use routes::{HttpRoute, RouteFile, RouteFileError, Routes};
pub use status::http_status;

/// How a gateway listens and what it accepts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Serve TLS with this configuration (the gateway adds ALPN `h2` and `http/1.1`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The largest request body, in bytes (default 4 MiB): larger ones answer 413.
    pub max_body: usize,
    /// A call's deadline when the request states none (default 30 s).
    pub default_timeout: Duration,
    /// The longest deadline a request may ask for (default 5 minutes).
    pub max_timeout: Duration,
    /// Listen beyond loopback without TLS (default: refused).
    pub allow_remote: bool,
    /// The API's title in the OpenAPI document and on the docs page.
    pub title: String,
    /// The API's version in the OpenAPI document.
    pub version: String,
    /// Open connections at most; more wait to be accepted (default 1024).
    pub max_connections: usize,
    /// Configured routes, API versions and keys (`None`: every method at its own path,
    /// nothing more).
    pub routes: Option<Arc<Routes>>,
}

impl GatewayConfig {
    /// A gateway on `listen`, with the defaults above.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            max_body: 4 << 20,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            allow_remote: false,
            title: "polycall".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            max_connections: 1024,
            routes: None,
        }
    }

    /// Serves `routes` (a compiled routes file) too.
    pub fn routes(mut self, routes: Arc<Routes>) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Serves TLS with `tls`.
    pub fn tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the largest request body, in bytes.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets the deadline of requests that state none.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Sets the longest deadline a request may ask for.
    pub fn max_timeout(mut self, timeout: Duration) -> Self {
        self.max_timeout = timeout;
        self
    }

    /// Allows listening beyond loopback without TLS.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// Sets the API's title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the API's version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets how many connections may be open at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// Beyond loopback without TLS, and not allowed.
    #[error(
        "the HTTP gateway would listen on {0} in cleartext: serve TLS, listen on loopback, or allow it (runtime.insecure_remote)"
    )]
    Remote(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running gateway; dropping it stops it (open connections are closed).
#[derive(Debug)]
#[must_use = "dropping the gateway stops it"]
pub struct Gateway {
    local: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts a gateway on the current tokio runtime, serving `backend`.
pub async fn serve(
    config: GatewayConfig,
    backend: Arc<dyn Backend>,
) -> Result<Gateway, GatewayError> {
    http::serve(config, backend).await
}
