//! Streaming methods over HTTP: the reply messages of a server or bidirectional stream
//! as Server-Sent Events (`text/event-stream`).
//!
//! Each reply message is one event: `event: message` with the message's JSON as its
//! data (a message that is not JSON is `event: binary`, base64), numbered by `id:`.
//! The stream's end is `event: end` (`{"code": "ok"}`), a failure after the first
//! message `event: error` (`{"code", "message"}`). An idle stream sends a comment every
//! 15 s so proxies keep the connection. The body is pulled as the client reads, so a
//! client that stops reading stops its producer through the stream's credit; a client
//! that goes away cancels the call.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use polycall_core::{ContentType, MessageStream, Payload, Status};
use tokio::sync::OwnedSemaphorePermit;

use crate::status::error_body;

/// How long an idle stream waits before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event: its optional id, its name, its data (split into `data:` lines).
fn event(name: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    for line in data.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    if data.is_empty() {
        out.push_str("data:\n");
    }
    out.push('\n');
    Bytes::from(out)
}

/// The event of one reply message, reshaped by `reshape` when it is JSON.
fn message(payload: Payload, id: u64, reshape: &dyn Fn(Bytes) -> Bytes) -> Bytes {
    match payload.content_type {
        ContentType::Json => match std::str::from_utf8(&reshape(payload.bytes)) {
            Ok(text) => event("message", Some(id), text),
            Err(_) => event("binary", Some(id), ""),
        },
        _ => event(
            "binary",
            Some(id),
            &base64::engine::general_purpose::STANDARD.encode(&payload.bytes),
        ),
    }
}

/// The event of a failure.
pub(crate) fn failure(status: &Status) -> Bytes {
    event("error", None, &error_body(status).to_string())
}

struct Events {
    first: Option<Payload>,
    messages: MessageStream,
    next_id: u64,
    idle: tokio::time::Interval,
    reshape: Box<dyn Fn(Bytes) -> Bytes + Send>,
    /// A route's concurrency slot, held while the stream lasts.
    _slot: Option<OwnedSemaphorePermit>,
}

/// The SSE body of a stream whose first message (if any) was already read.
pub(crate) fn body(
    first: Option<Payload>,
    messages: MessageStream,
    reshape: Box<dyn Fn(Bytes) -> Bytes + Send>,
    slot: Option<OwnedSemaphorePermit>,
) -> crate::http::Body {
    let start = tokio::time::Instant::now() + KEEP_ALIVE;
    let events = Events {
        first,
        messages,
        next_id: 0,
        idle: tokio::time::interval_at(start, KEEP_ALIVE),
        reshape,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(Some(events), |events| async move {
        // `None` once the end or an error was sent: nothing follows.
        let mut e = events?;
        if let Some(first) = e.first.take() {
            let bytes = message(first, e.next_id, &e.reshape);
            e.next_id += 1;
            return Some((bytes, Some(e)));
        }
        tokio::select! {
            item = e.messages.next() => match item {
                Some(Ok(payload)) => {
                    let bytes = message(payload, e.next_id, &e.reshape);
                    e.next_id += 1;
                    e.idle.reset();
                    Some((bytes, Some(e)))
                }
                Some(Err(status)) => Some((failure(&status), None)),
                None => Some((event("end", None, r#"{"code":"ok"}"#), None)),
            },
            _ = e.idle.tick() => Some((Bytes::from_static(b": keep-alive\n\n"), Some(e))),
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(
        stream.map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_follow_the_format() {
        assert_eq!(
            event("message", Some(3), "{\"a\":\n1}"),
            "id: 3\nevent: message\ndata: {\"a\":\ndata: 1}\n\n"
        );
        assert_eq!(
            message(Payload::raw("\u{0}\u{1}"), 0, &|b| b),
            "id: 0\nevent: binary\ndata: AAE=\n\n"
        );
        assert_eq!(
            failure(&Status::unavailable("gone")),
            "event: error\ndata: {\"code\":\"unavailable\",\"message\":\"gone\"}\n\n"
        );
    }
}
