//! Streaming methods the tests of several crates serve, on text messages.

use polycall_core::{MessageStream, Payload, StreamCall, stream};

fn text(p: &Payload) -> String {
    String::from_utf8_lossy(&p.bytes).into_owned()
}

/// A client stream: the sum of the decimal numbers it is sent (0 for none), once the
/// requests end.
pub fn sum(call: StreamCall) -> MessageStream {
    Box::pin(stream::Once::new(async move {
        let mut requests = call.requests;
        let mut total = 0u64;
        while let Some(m) = stream::next(&mut requests).await {
            total += text(&m?).parse::<u64>().unwrap_or(0);
        }
        Ok(Payload::raw(total.to_string()))
    }))
}

/// Bidirectional: each message back in capitals, as it arrives.
pub fn upper(call: StreamCall) -> MessageStream {
    Box::pin(stream::map(call.requests, |m| {
        m.map(|p| Payload::raw(text(&p).to_uppercase()))
    }))
}
