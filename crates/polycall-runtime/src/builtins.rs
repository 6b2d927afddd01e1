//! Methods every runtime serves itself: `sys.ping`, `sys.describe`, `sys.health`,
//! `sys.shutdown`; `debug.echo`, `debug.sleep`, `debug.stream` and `debug.echo_stream` only when enabled
//! (`runtime.debug_methods`, or `compat.fixtures`, whose conformance suite calls them);
//! with `compat.fixtures` on, also libpolycall's conformance fixture `inventory.get`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use polycall_core::{
    Call, CallKind, MessageStream, MethodInfo, Payload, Reply, Router, Status, StreamCall,
    handler_fn,
};
use serde_json::json;

use crate::State;

pub(crate) fn json_reply(v: serde_json::Value) -> Result<Reply, Status> {
    Payload::json(&v)
        .map(Reply::new)
        .map_err(|e| Status::internal(e.to_string()))
}

fn json_input(call: &Call) -> Result<serde_json::Value, Status> {
    if call.payload.is_empty() {
        return Ok(json!({}));
    }
    call.payload.to_json().map_err(|e| {
        Status::invalid_input(format!("{} expects a JSON object: {e}", call.full_name()))
    })
}

fn upgrade(state: &Weak<State>) -> Result<Arc<State>, Status> {
    state
        .upgrade()
        .ok_or_else(|| Status::unavailable("the runtime is shutting down"))
}

/// libpolycall's conformance fixture: item id → quantity.
const INVENTORY: &[(&str, u64)] = &[("widget-a", 42), ("widget-b", 7), ("gadget-c", 0)];

/// The longest `debug.sleep` accepted: a test aid must not hold a handler for hours.
pub(crate) const MAX_DEBUG_SLEEP_MS: u64 = 60_000;

/// The built-in methods, bound to the runtime's state (weakly: the state owns them);
/// `debug` adds `debug.echo` and `debug.sleep`, `fixtures` libpolycall's
/// `inventory.get` fixture (and the debug methods its suite calls).
/// `debug.stream`: `count` JSON messages, `interval_ms` apart.
fn debug_stream(call: StreamCall) -> MessageStream {
    use futures_util::StreamExt;
    let start = async move {
        let request = polycall_core::stream::single(call.requests).await?;
        let v: serde_json::Value = request
            .to_json()
            .map_err(|_| Status::invalid_input("debug.stream needs {\"count\": <u64>}"))?;
        let count = v["count"]
            .as_u64()
            .ok_or_else(|| Status::invalid_input("debug.stream needs {\"count\": <u64>}"))?;
        let interval = Duration::from_millis(v["interval_ms"].as_u64().unwrap_or(0).min(60_000));
        Ok::<_, Status>((count, interval))
    };
    Box::pin(futures_util::stream::once(start).flat_map(|r| match r {
        Err(e) => polycall_core::stream::fail(e),
        Ok((count, interval)) => Box::pin(futures_util::stream::unfold(0u64, move |i| async move {
            if i == count {
                return None;
            }
            if !interval.is_zero() && i > 0 {
                tokio::time::sleep(interval).await;
            }
            let message =
                Payload::json(&json!({"i": i})).map_err(|e| Status::internal(e.to_string()));
            Some((message, i + 1))
        })) as MessageStream,
    }))
}

pub(crate) fn router(state: Weak<State>, debug: bool, fixtures: bool) -> Router {
    let debug = debug || fixtures;
    let s1 = state.clone();
    let s2 = state.clone();
    let s3 = state;
    let r = Router::new()
        .route(
            "sys.ping",
            MethodInfo::new("answers pong; a liveness check").output(r#"{"pong": true}"#).idempotent(true),
            handler_fn(|_c: Call| async { json_reply(json!({"pong": true})) }),
        )
        .and_then(|r| {
            r.route(
                "sys.describe",
                MethodInfo::new("every method served here and who provides it")
                    .output(r#"{"methods": [{"name", "summary", "input", "output", "idempotent", "provided_by"}]}"#)
                    .idempotent(true),
                handler_fn(move |_c: Call| {
                    let s = s1.clone();
                    async move { json_reply(upgrade(&s)?.describe()) }
                }),
            )
        })
        .and_then(|r| {
            r.route(
                "sys.health",
                MethodInfo::new("runtime status: uptime, connections, providers")
                    .output(r#"{"status", "uptime_ms", "connections", "providers", "methods", "endpoint", "version"}"#)
                    .idempotent(true),
                handler_fn(move |_c: Call| {
                    let s = s2.clone();
                    async move { json_reply(upgrade(&s)?.health()) }
                }),
            )
        })
        .and_then(|r| {
            r.route(
                "sys.shutdown",
                MethodInfo::new("graceful shutdown; needs the token from the runtime's state directory")
                    .input(r#"{"token": string}"#)
                    .output(r#"{"stopping": true}"#),
                handler_fn(move |c: Call| {
                    let s = s3.clone();
                    async move {
                        let s = upgrade(&s)?;
                        let input = json_input(&c)?;
                        match input["token"].as_str() {
                            Some(t) if s.token_matches(t) => {
                                s.request_shutdown();
                                json_reply(json!({"stopping": true}))
                            }
                            Some(_) => Err(Status::permission_denied("wrong shutdown token")),
                            None => Err(Status::unauthenticated(
                                "sys.shutdown needs {\"token\": ...}; `polycall stop` reads it from the state directory",
                            )),
                        }
                    }
                }),
            )
        })
        .and_then(|r| {
            if !debug {
                return Ok(r);
            }
            r.route(
                "debug.echo",
                MethodInfo::new("returns its input").input("any").output("the input").idempotent(true),
                handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
            )
        })
        .and_then(|r| {
            if !debug {
                return Ok(r);
            }
            r.route(
                "debug.sleep",
                MethodInfo::new("sleeps for ms milliseconds (at most 60,000), honouring the deadline")
                    .input(r#"{"ms": u64}"#)
                    .output(r#"{"slept_ms": u64}"#)
                    .idempotent(true),
                handler_fn(|c: Call| async move {
                    let input = json_input(&c)?;
                    let ms = input["ms"]
                        .as_u64()
                        .ok_or_else(|| Status::invalid_input("debug.sleep needs {\"ms\": <milliseconds>}"))?;
                    if ms > MAX_DEBUG_SLEEP_MS {
                        return Err(Status::invalid_input(format!(
                            "debug.sleep sleeps at most {MAX_DEBUG_SLEEP_MS} ms; asked for {ms}"
                        )));
                    }
                    let want = Duration::from_millis(ms);
                    if let Some(d) = c.metadata.deadline
                        && d.remaining(Instant::now()) < want
                    {
                        tokio::time::sleep(d.remaining(Instant::now())).await;
                        return Err(Status::deadline_exceeded(format!(
                            "sleeping {ms} ms would pass the call's deadline"
                        )));
                    }
                    tokio::time::sleep(want).await;
                    json_reply(json!({"slept_ms": ms}))
                }),
            )
        })
        .and_then(|r| {
            if !debug {
                return Ok(r);
            }
            r.route_stream(
                "debug.stream",
                CallKind::ServerStream,
                MethodInfo::new("streams `count` messages {\"i\": 0..count}, one per `interval_ms`")
                    .input(r#"{"count": u64, "interval_ms"?: u64}"#)
                    .output(r#"a stream of {"i": u64}"#),
                debug_stream,
            )
        })
        .and_then(|r| {
            if !debug {
                return Ok(r);
            }
            r.route_stream(
                "debug.echo_stream",
                CallKind::Bidi,
                MethodInfo::new("answers each message of its request stream with that message")
                    .input("a stream of anything")
                    .output("the same stream"),
                |call: StreamCall| -> MessageStream { call.requests },
            )
        })
        .and_then(|r| {
            if !fixtures {
                return Ok(r);
            }
            r.route(
                "inventory.get",
                MethodInfo::new("libpolycall's conformance fixture: stock of widget-a, widget-b, gadget-c")
                    .input(r#"{"item_id": string}"#)
                    .output(r#"{"item_id": string, "quantity": u64, "in_stock": bool}"#)
                    .idempotent(true),
                handler_fn(|c: Call| async move {
                    let input = json_input(&c)?;
                    let id = input["item_id"].as_str().ok_or_else(|| {
                        Status::invalid_input("inventory.get needs {\"item_id\": <string>}")
                    })?;
                    match INVENTORY.iter().find(|(k, _)| *k == id) {
                        Some(&(k, quantity)) => json_reply(
                            json!({"item_id": k, "quantity": quantity, "in_stock": quantity > 0}),
                        ),
                        None => Err(Status::not_found(format!(
                            "no item {id:?}; the fixture holds widget-a, widget-b and gadget-c"
                        ))),
                    }
                }),
            )
        });
    r.unwrap_or_else(|e| panic!("built-in method names are valid: {e}"))
}
