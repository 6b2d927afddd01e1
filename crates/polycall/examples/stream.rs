//! Streaming calls in one process: a server-streaming method and a bidirectional one,
//! served and called; the client reads each reply as it arrives.
//!
//! `cargo run -p polycall --no-default-features --features net --example stream`

use polycall::net::{Channel, Server, ServerConfig};
use polycall::stream;
use polycall::{Call, CallKind, MessageStream, Metadata, MethodInfo, Payload, Router, StreamCall};

/// `ticks.count`: as many messages as the one request says.
fn count(request: Payload, _metadata: Metadata) -> MessageStream {
    let n: u32 = String::from_utf8_lossy(&request.bytes).parse().unwrap_or(0);
    let ticks: Vec<_> = (1..=n)
        .map(|i| Ok(Payload::raw(format!("tick {i}"))))
        .collect();
    Box::pin(stream::iter(ticks))
}

/// `chat.shout`: each message back, in capitals, as it arrives.
fn shout(call: StreamCall) -> MessageStream {
    Box::pin(stream::map(call.requests, |m| {
        m.map(|p| Payload::raw(String::from_utf8_lossy(&p.bytes).to_uppercase()))
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::new()
        .route_server_stream("ticks.count", MethodInfo::new("counts"), count)?
        .route_stream(
            "chat.shout",
            CallKind::Bidi,
            MethodInfo::new("shouts back"),
            shout,
        )?;
    let server =
        Server::serve_router("127.0.0.1:0".parse()?, ServerConfig::default(), router).await?;
    let channel = Channel::connect(server.local_endpoint().clone()).await?;

    let mut ticks = channel
        .server_stream(Call::new("ticks.count", Payload::raw("3"))?)
        .await?;
    while let Some(tick) = stream::next_item(&mut ticks).await {
        println!("{}", String::from_utf8_lossy(&tick?.bytes));
    }

    let words: MessageStream = Box::pin(stream::iter(
        ["hello", "streams"].map(|w| Ok(Payload::raw(w))),
    ));
    let mut shouts = channel.bidi(StreamCall::new("chat.shout", words)?).await?;
    while let Some(shout) = stream::next_item(&mut shouts).await {
        println!("{}", String::from_utf8_lossy(&shout?.bytes));
    }
    Ok(()) // dropping the server stops it
}
