//! The listener and one request's way from HTTP to a call and back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use polycall_core::{
    Call, CallKind, ContentType, Metadata, Payload, Principal, Status, StreamCall, TraceContext,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::routes::transform;
use crate::routes::{Found, Route};
use crate::status::{error_body, http_status};
use crate::{Backend, Gateway, GatewayConfig, GatewayError, openapi, sse};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Time allowed for a request's head to arrive, and for a TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

struct Ctx {
    config: GatewayConfig,
    backend: Arc<dyn Backend>,
}

pub(crate) async fn serve(
    config: GatewayConfig,
    backend: Arc<dyn Backend>,
) -> Result<Gateway, GatewayError> {
    if !config.listen.ip().is_loopback() && config.tls.is_none() && !config.allow_remote {
        return Err(GatewayError::Remote(config.listen));
    }
    let tls = config.tls.as_ref().map(|t| {
        let mut t = (**t).clone();
        t.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(t))
    });
    let bind = |source| GatewayError::Bind {
        addr: config.listen,
        source,
    };
    let listener = TcpListener::bind(config.listen).await.map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let (stop, mut stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let ctx = Arc::new(Ctx { config, backend });
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = stopped.changed() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                _ = stopped.changed() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("gateway accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (ctx, tls, mut stop_conn) = (ctx.clone(), tls.clone(), stopped.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let service = |identity: Option<Principal>| {
                    hyper::service::service_fn(move |req| {
                        let (ctx, identity) = (ctx.clone(), identity.clone());
                        async move {
                            let caller = Caller { peer, identity };
                            Ok::<_, Infallible>(handle(req, &caller, &ctx).await)
                        }
                    })
                };
                let mut http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                http.http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let served = async {
                    match tls {
                        None => http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service(None))
                            .await
                            .map_err(|e| e.to_string()),
                        Some(tls) => {
                            let stream = tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream))
                                .await
                                .map_err(|_| "TLS handshake timed out".to_owned())?
                                .map_err(|e| format!("TLS handshake: {e}"))?;
                            // A client certificate the handshake verified names the caller.
                            let identity = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(polycall_security::peer_identity);
                            http.serve_connection(
                                hyper_util::rt::TokioIo::new(stream),
                                service(identity),
                            )
                            .await
                            .map_err(|e| e.to_string())
                        }
                    }
                };
                tokio::select! {
                    r = served => if let Err(e) = r { tracing::debug!(%peer, "gateway connection: {e}") },
                    _ = stop_conn.changed() => {}
                }
            });
        }
    });
    Ok(Gateway { local, stop })
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// An error answer: the code's HTTP status, `{"code", "message"}`, `Retry-After` when
/// the status says when, and a bearer challenge on `unauthenticated`.
fn failure(status: &Status) -> Response<Body> {
    let mut r = json_response(http_status(status.code), &error_body(status));
    if let Some(after) = status.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    if status.code == polycall_core::Code::Unauthenticated {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"polycall\""),
        );
    }
    r
}

/// Who sent a request: its TCP peer and what its TLS client certificate proved.
struct Caller {
    peer: SocketAddr,
    identity: Option<Principal>,
}

async fn handle(req: Request<Incoming>, caller: &Caller, ctx: &Ctx) -> Response<Body> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/healthz" if get => return json_response(StatusCode::OK, &json!({"status": "serving"})),
        "/openapi.json" if get => {
            let doc = openapi::document(
                &ctx.backend.methods(),
                ctx.config.routes.as_deref(),
                &ctx.config.title,
                &ctx.config.version,
            );
            return json_response(StatusCode::OK, &doc);
        }
        "/docs" if get => {
            return full(
                StatusCode::OK,
                "text/html; charset=utf-8",
                openapi::docs_page(
                    &ctx.backend.methods(),
                    ctx.config.routes.as_deref(),
                    &ctx.config.title,
                ),
            );
        }
        _ => {}
    }
    let routes = ctx.config.routes.as_deref();
    let found = match routes.map(|r| r.find(req.method(), req.uri().path())) {
        Some(Found::Route(route, params)) => Ok(Target::Route(route, params)),
        Some(Found::WrongMethod(allowed)) => {
            let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            Err(wrong_method(&req, &names.join(", ")))
        }
        Some(Found::None) | None => {
            let path = req.uri().path();
            match path.strip_prefix("/v1/") {
                Some(rest) if routes.is_none_or(|r| r.expose_methods) => {
                    if req.method() != Method::POST {
                        Err(wrong_method(&req, "POST"))
                    } else {
                        match rest
                            .split_once('/')
                            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
                        {
                            Some((service, method)) => {
                                Ok(Target::Method(format!("{service}.{method}")))
                            }
                            None => Err(failure(&Status::not_found(format!(
                                "no route {path}: the path is /v1/{{service}}/{{method}}"
                            )))),
                        }
                    }
                }
                _ => Err(failure(&Status::not_found(format!(
                    "no route {path}: GET /openapi.json and /docs list what is served"
                )))),
            }
        }
    };
    let target = match found {
        Ok(target) => target,
        Err(response) => return drained(req, response).await,
    };
    let version = match (&target, routes) {
        (Target::Route(r, _), _) => Some(r.version.clone()),
        (Target::Method(_), Some(routes)) => Some(routes.version("v1").clone()),
        (Target::Method(_), None) => None,
    };
    let mut response = match call(req, caller, ctx, &target).await {
        Ok(r) => r,
        Err((status, code)) => {
            let mut r = failure(&status);
            let code = code.or_else(|| match &target {
                Target::Route(route, _) => route.status_of(status.code),
                Target::Method(_) => None,
            });
            if let Some(code) = code {
                *r.status_mut() = code;
            }
            r
        }
    };
    if let Some(version) = version {
        for (name, value) in version.headers() {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

/// `response`, once the request's body (up to 64 KiB, within a second) is read: a
/// connection closed with a body left unread is reset, and the client may never see
/// the answer.
async fn drained(req: Request<Incoming>, response: Response<Body>) -> Response<Body> {
    let body = Limited::new(req.into_body(), 64 << 10).collect();
    let _ = tokio::time::timeout(Duration::from_secs(1), body).await;
    response
}

/// 405 for a path served under other HTTP methods.
fn wrong_method(req: &Request<Incoming>, allow: &str) -> Response<Body> {
    let mut r = failure(&Status::unsupported(format!(
        "{} {}: this path is served for {allow}",
        req.method(),
        req.uri().path()
    )));
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Ok(v) = HeaderValue::from_str(allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// What a request calls: a method at its own path, or a configured route.
enum Target<'a> {
    /// `POST /v1/{service}/{method}`: `service.method`.
    Method(String),
    /// A route and its path parameters.
    Route(&'a Route, Vec<(String, String)>),
}

/// A failed request: its status, and an HTTP status other than the code's when HTTP
/// has a more precise one (415, 413, 410).
type Refusal = (Status, Option<StatusCode>);

fn refuse(status: Status) -> Refusal {
    (status, None)
}

async fn call(
    req: Request<Incoming>,
    caller: &Caller,
    ctx: &Ctx,
    target: &Target<'_>,
) -> Result<Response<Body>, Refusal> {
    let full_name = match target {
        Target::Method(name) => name.as_str(),
        Target::Route(route, _) => route.call.as_str(),
    };
    let (service, method) = full_name.rsplit_once('.').unwrap_or((full_name, ""));
    // The body is taken in before any answer: a connection closed with a request body
    // left unread is reset, and the client may never see the answer (a refusal, say).
    // It is checked as JSON after admission, so refusals keep their order.
    let takes_body = match target {
        Target::Method(_) => true,
        Target::Route(route, _) => route.takes_body(),
    };
    let (parts, incoming) = req.into_parts();
    let body = if takes_body {
        collect_body(&parts.headers, incoming, ctx.config.max_body).await?
    } else {
        Bytes::new()
    };
    let headers = &parts.headers;
    // Admission, cheapest refusal first: a retired version, the API key and its limits,
    // the route's limits; then who the caller is.
    let mut slot = None;
    if let Some(routes) = ctx.config.routes.as_deref() {
        let version = match target {
            Target::Route(route, _) => &route.version,
            Target::Method(_) => routes.version("v1"),
        };
        if let Some(gone) = version.retired(SystemTime::now()) {
            return Err((gone, Some(StatusCode::GONE)));
        }
        if let Some(key) = routes.key(headers).map_err(refuse)? {
            key.admit().map_err(refuse)?;
        }
        if let Target::Route(route, _) = target {
            let what = format!("{} {}", route.method, route.template);
            if let Some(rate) = &route.rate {
                rate.check(&what).map_err(refuse)?;
            }
            if let Some(limit) = &route.concurrency {
                slot = Some(limit.enter(&what).map_err(refuse)?);
            }
        }
    }
    // A bearer token decides; else a verified client certificate the backend takes;
    // else the caller is anonymous (refused when the backend requires authentication).
    let token = bearer(headers).map_err(refuse)?;
    let certified = match (&token, &caller.identity) {
        (None, Some(identity)) => ctx
            .backend
            .authenticate_certificate(identity.clone(), caller.peer),
        _ => None,
    };
    let principal = match certified {
        Some(p) => p,
        None => ctx
            .backend
            .authenticate(token, caller.peer)
            .map_err(refuse)?,
    };
    let kind = ctx.backend.kind(service, method).unwrap_or(CallKind::Unary);
    let now = Instant::now();
    // A stream lives as long as its client wants unless the request sets a deadline.
    let timeout = match (
        kind,
        requested_timeout(headers, ctx.config.max_timeout).map_err(refuse)?,
    ) {
        (_, Some(t)) => Some(t),
        (CallKind::Unary | CallKind::ClientStream, None) => {
            Some(ctx.config.default_timeout.min(ctx.config.max_timeout))
        }
        (_, None) => None,
    };
    let mut metadata = Metadata::default().with_principal(principal);
    if let Some(t) = timeout {
        metadata = metadata.with_timeout(now, t);
    }
    if let Some(tp) = header_str(headers, "traceparent") {
        let trace = TraceContext::parse(tp, header_str(headers, "tracestate"))
            .map_err(|e| refuse(Status::invalid_input(e.to_string())))?;
        metadata = metadata.with_trace(trace);
    }
    if let Some(key) = header_str(headers, "idempotency-key") {
        metadata.idempotency_key = Some(key.to_string());
    }
    let payloads = match target {
        Target::Method(_) => {
            check_json(headers, &body)?;
            if kind.streams_requests() {
                messages(&body, |m| Ok(json_payload(m)))?
            } else {
                vec![json_payload(body)]
            }
        }
        Target::Route(route, params) => {
            let query: Vec<(String, String)> = parts
                .uri
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default();
            let head = headers;
            check_json(headers, &body)?;
            let input = |body: Bytes| {
                let built = route.input.build(&transform::Request {
                    params,
                    query: &query,
                    headers: head,
                    body: &body,
                })?;
                Ok(match built {
                    Some(value) => Payload::new(value.to_string(), ContentType::Json),
                    None => json_payload(body),
                })
            };
            if kind.streams_requests() {
                messages(&body, input)?
            } else {
                vec![input(body).map_err(refuse)?]
            }
        }
    };
    let reshape = |bytes: Bytes| match target {
        Target::Route(route, _) => route.output.apply(bytes),
        Target::Method(_) => bytes,
    };
    let ok = match target {
        Target::Route(route, _) => route.ok,
        Target::Method(_) => StatusCode::OK,
    };
    if kind != CallKind::Unary {
        let call = StreamCall::new(
            full_name,
            Box::pin(polycall_core::stream::iter(payloads.into_iter().map(Ok))),
        )
        .map_err(|e| refuse(Status::not_found(format!("no method {full_name}: {e}"))))?
        .with_metadata(metadata);
        let mut replies = ctx.backend.call_stream(call);
        // An error at the opening (authorization, routing, bad input) answers its HTTP
        // status; one that comes later, once events flow, is an `error` event.
        let first = match tokio::time::timeout(OPENING, replies.next()).await {
            Ok(Some(Err(status))) => return Err(refuse(status)),
            Ok(Some(Ok(first))) => Some(first),
            Ok(None) => None,
            Err(_) => None,
        };
        if kind == CallKind::ClientStream {
            let reply = match first {
                Some(reply) => reply,
                None => {
                    match tokio::time::timeout(timeout.unwrap_or_default(), replies.next()).await {
                        Ok(Some(Ok(reply))) => reply,
                        Ok(Some(Err(status))) => return Err(refuse(status)),
                        Ok(None) => {
                            return Err(refuse(Status::internal(format!(
                                "{full_name} ended without a reply"
                            ))));
                        }
                        Err(_) => {
                            return Err(refuse(Status::deadline_exceeded(format!(
                                "{full_name} did not answer in time"
                            ))));
                        }
                    }
                }
            };
            return Ok(reply_response(ok, reply, &reshape));
        }
        let owned_reshape: Box<dyn Fn(Bytes) -> Bytes + Send> = match target {
            Target::Route(route, _) if !route.output.is_passthrough() => {
                let output = route.output.clone();
                Box::new(move |b| output.apply(b))
            }
            _ => Box::new(|b| b),
        };
        let mut r = Response::new(sse::body(first, replies, owned_reshape, slot));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(r);
    }
    let payload = payloads.into_iter().next().unwrap_or_else(Payload::empty);
    let call = Call::new(full_name, payload)
        .map_err(|e| refuse(Status::not_found(format!("no method {full_name}: {e}"))))?
        .with_metadata(metadata);
    let timeout = timeout.unwrap_or(ctx.config.default_timeout);
    // The backend enforces the deadline; this bounds the wait should it not.
    let reply = tokio::time::timeout(timeout + Duration::from_secs(1), ctx.backend.call(call))
        .await
        .map_err(|_| {
            refuse(Status::deadline_exceeded(format!(
                "{full_name} did not answer within {timeout:?}"
            )))
        })?
        .map_err(refuse)?;
    Ok(reply_response(ok, reply.payload, &reshape))
}

/// How long a stream's opening may take to fail with an HTTP status before its events
/// start (its first message, or headers without one).
const OPENING: Duration = Duration::from_millis(250);

/// A one-message answer: the reply's bytes (reshaped when JSON) with `ok`.
fn reply_response(
    ok: StatusCode,
    reply: Payload,
    reshape: &dyn Fn(Bytes) -> Bytes,
) -> Response<Body> {
    match reply.content_type {
        ContentType::Json => full(ok, "application/json", reshape(reply.bytes)),
        _ => full(ok, "application/octet-stream", reply.bytes),
    }
}

/// The request messages of a client or bidirectional stream: the body is a JSON array,
/// each element one message (built by `one`).
fn messages(
    body: &Bytes,
    one: impl Fn(Bytes) -> Result<Payload, Status>,
) -> Result<Vec<Payload>, Refusal> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|_| {
        refuse(Status::invalid_input(
            "a streaming method's request body is a JSON array of messages",
        ))
    })?;
    items
        .into_iter()
        .map(|m| one(Bytes::from(m.to_string())).map_err(refuse))
        .collect()
}

fn json_payload(body: Bytes) -> Payload {
    if body.is_empty() {
        Payload::empty()
    } else {
        Payload::new(body, ContentType::Json)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The bearer token of the `Authorization` header, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Status> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(Status::unauthenticated(
            "Authorization must be `Bearer TOKEN` (a token the server's [auth] lists)",
        )),
    }
}

/// The deadline the request asks for (`Polycall-Timeout-Ms`), at most `max`.
fn requested_timeout(headers: &HeaderMap, max: Duration) -> Result<Option<Duration>, Status> {
    match header_str(headers, "polycall-timeout-ms") {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms).min(max))),
            _ => Err(Status::invalid_input(format!(
                "Polycall-Timeout-Ms is a whole number of milliseconds above 0, not {v:?}"
            ))),
        },
    }
}

/// The request body, at most `max` bytes (413 beyond).
async fn collect_body(headers: &HeaderMap, body: Incoming, max: usize) -> Result<Bytes, Refusal> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > max
    {
        return Err(too_large(max));
    }
    Limited::new(body, max)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(max)
            } else {
                refuse(Status::malformed(format!(
                    "the request body could not be read: {e}"
                )))
            }
        })
}

/// Checks a body is JSON (or empty) under a JSON content type (415 otherwise).
fn check_json(headers: &HeaderMap, body: &Bytes) -> Result<(), Refusal> {
    if body.is_empty() {
        return Ok(());
    }
    let json = match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.split(';').next())
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("application/json")),
    };
    if !json {
        return Err((
            Status::invalid_input("the body must be JSON (Content-Type: application/json)"),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(refuse(Status::malformed(format!(
            "the body is not JSON: {e}"
        ))));
    }
    Ok(())
}

fn too_large(max: usize) -> Refusal {
    refuse(Status::too_large(format!(
        "the request body is larger than the gateway accepts ({max} bytes)"
    )))
}
