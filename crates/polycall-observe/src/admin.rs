//! The admin HTTP listener: `/metrics` (OpenMetrics text), `/healthz` (alive),
//! `/readyz` (ready to serve), `/dashboard` (the live page), `/events` (its
//! server-sent event feed), `/api/overview` and `/api/history` (JSON).
//!
//! It listens on loopback unless told otherwise: the pages show every method, provider
//! and state machine. A non-loopback address needs TLS ([`AdminConfig::tls`]) and an
//! access check on every request ([`AdminConfig::access`]: the runtime accepts the
//! bearer tokens of its call port, and its authorization policy must let the token's
//! principal call `sys.metrics.history`), or the embedding process's explicit
//! [`AdminConfig::allow_remote`] (the runtime's `--insecure-remote`): the same rules as
//! the call port. Requests are read with a header timeout and at most
//! [`MAX_CONNECTIONS`] connections are served at once; connections (their TLS
//! handshakes included) run on [`AdminConfig::runtime`] when one is given, so a slow or
//! hostile HTTP peer holds one admin slot, never the runtime's call port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::{Observer, Source};

/// Connections the admin listener serves at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle event feed sends a keep-alive comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

const DASHBOARD: &str = include_str!("dashboard.html");

/// Decides whether a request may read the admin pages.
pub trait AdminAccess: Send + Sync + 'static {
    /// Checks the request's `Authorization` header (`None` when absent).
    fn check(&self, authorization: Option<&str>) -> Result<(), AccessDenied>;
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessDenied {
    /// No credentials, or credentials nobody accepts (401).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Credentials accepted, access not granted (403).
    #[error("permission denied: {0}")]
    Forbidden(String),
}

/// Where and how the admin listener listens.
#[derive(Clone)]
#[non_exhaustive]
pub struct AdminConfig {
    /// The address (port 0: any free port).
    pub listen: SocketAddr,
    /// Accept a non-loopback address even without TLS and an access check.
    pub allow_remote: bool,
    /// Serve HTTPS with this configuration (its ALPN is set to `http/1.1`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Check every request.
    pub access: Option<Arc<dyn AdminAccess>>,
    /// Run connections (TLS handshakes, requests) on this runtime instead of the
    /// caller's.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("allow_remote", &self.allow_remote)
            .field("tls", &self.tls.is_some())
            .field("access", &self.access.is_some())
            .finish()
    }
}

impl AdminConfig {
    /// Listens on `listen`, loopback only.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            allow_remote: false,
            tls: None,
            access: None,
            runtime: None,
        }
    }

    /// Accepts a non-loopback address even without TLS and an access check.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// Serves HTTPS with `tls` (its ALPN is replaced by `http/1.1`).
    pub fn tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        let mut config = (*tls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Some(Arc::new(config));
        self
    }

    /// Checks every request with `access`.
    pub fn access(mut self, access: Arc<dyn AdminAccess>) -> Self {
        self.access = Some(access);
        self
    }

    /// Runs connections on `runtime`.
    pub fn runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }
}

/// Why the admin listener did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A non-loopback address without TLS and an access check, and without permission.
    #[error(
        "refusing to serve the admin pages on {0} without TLS and authentication: they show every \
         method, provider and state machine. Enable [tls] and token authentication (as for the call \
         port), listen on 127.0.0.1, or pass --insecure-remote if the network itself is trusted"
    )]
    Remote(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen for admin requests on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running admin listener; dropping it stops it.
#[derive(Debug)]
pub struct AdminServer {
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

impl AdminServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// Starts the admin listener on the current tokio runtime.
///
/// ```no_run
/// # async fn demo(observer: polycall_observe::Observer, source: std::sync::Arc<dyn polycall_observe::Source>) -> Result<(), polycall_observe::admin::AdminError> {
/// use polycall_observe::admin::{AdminConfig, serve};
/// let admin = serve(AdminConfig::new("127.0.0.1:0".parse().unwrap()), observer, source).await?;
/// println!("dashboard: http://{}/dashboard", admin.local_addr());
/// # Ok(()) }
/// ```
pub async fn serve(
    config: AdminConfig,
    observer: Observer,
    source: Arc<dyn Source>,
) -> Result<AdminServer, AdminError> {
    let secured = config.tls.is_some() && config.access.is_some();
    if !config.listen.ip().is_loopback() && !config.allow_remote && !secured {
        return Err(AdminError::Remote(config.listen));
    }
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let access = config.access.clone();
    let spawner = config
        .runtime
        .clone()
        .unwrap_or_else(tokio::runtime::Handle::current);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AdminError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AdminError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, mut stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = stopped.changed() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, _) = tokio::select! {
                _ = stopped.changed() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("admin accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let observer = observer.clone();
            let source = source.clone();
            let access = access.clone();
            let tls = tls.clone();
            let mut stop_conn = stopped.clone();
            spawner.spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let observer = observer.clone();
                    let source = source.clone();
                    let access = access.clone();
                    async move {
                        if let Some(access) = &access
                            && let Err(denied) = access.check(
                                req.headers()
                                    .get(hyper::header::AUTHORIZATION)
                                    .and_then(|v| v.to_str().ok()),
                            )
                        {
                            return Ok::<_, Infallible>(refuse(&denied));
                        }
                        Ok::<_, Infallible>(route(req, &observer, &source).await)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .clone();
                let served = async {
                    match tls {
                        None => http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                            .map_err(|e| e.to_string()),
                        Some(tls) => {
                            let stream = tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream))
                                .await
                                .map_err(|_| "TLS handshake timed out".to_owned())?
                                .map_err(|e| format!("TLS handshake: {e}"))?;
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                                .map_err(|e| e.to_string())
                        }
                    }
                };
                tokio::select! {
                    r = served => if let Err(e) = r { tracing::debug!("admin connection: {e}") },
                    _ = stop_conn.changed() => {}
                }
            });
        }
    });
    Ok(AdminServer { local, stop })
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn refuse(denied: &AccessDenied) -> Response<Body> {
    let (status, challenge) = match denied {
        AccessDenied::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, true),
        AccessDenied::Forbidden(_) => (StatusCode::FORBIDDEN, false),
    };
    let mut r = json_response(status, &json!({"error": denied.to_string()}));
    if challenge {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"polycall admin\""),
        );
    }
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn route(
    req: Request<Incoming>,
    observer: &Observer,
    source: &Arc<dyn Source>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the admin pages are read-only: GET\n",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let observer = observer.clone();
            let source = source.clone();
            // /proc reads and formatting: off the event loop.
            let text =
                tokio::task::spawn_blocking(move || observer.encode_text(&source.families()))
                    .await
                    .unwrap_or_default();
            full(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        "/healthz" => json_response(StatusCode::OK, &source.health()),
        "/readyz" => match source.ready() {
            Ok(()) => json_response(StatusCode::OK, &json!({"ready": true})),
            Err(why) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "reason": why.reason}),
            ),
        },
        "/" | "/dashboard" => full(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        "/api/overview" => {
            let since = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                .saturating_sub(300_000);
            let mut v = source.overview();
            v["anomalies"] = json!(observer.anomalies());
            v["ejections"] = json!(observer.recent_ejections());
            v["history"] = json!(observer.history(since));
            v["health"] = source.health();
            json_response(StatusCode::OK, &v)
        }
        "/api/history" => {
            let since = query_u64(&req, "since_ms").unwrap_or(0);
            json_response(
                StatusCode::OK,
                &json!({"samples": observer.history(since), "anomalies": observer.anomalies(), "ejections": observer.recent_ejections()}),
            )
        }
        "/events" => events(observer),
        _ => full(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz, /readyz, /dashboard, /events, /api/overview, /api/history\n",
        ),
    }
}

/// A server-sent event stream of the observer's events.
fn events(observer: &Observer) -> Response<Body> {
    let mut rx = observer.subscribe();
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": polycall events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = tokio::time::timeout(KEEPALIVE, rx.recv()).await;
            let chunk = match next {
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                Ok(Ok(event)) => Bytes::from(format!("data: {event}\n\n")),
                // A slow page missed some: tell it, go on from the newest.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                    Bytes::from(format!("data: {{\"type\":\"lagged\",\"missed\":{n}}}\n\n"))
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
            };
            if tx.send(chunk).await.is_err() {
                break; // the page went away
            }
        }
    });
    let mut r = Response::new(BodyExt::boxed(EventBody(body_rx)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// An HTTP body fed by a channel of chunks.
struct EventBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}
