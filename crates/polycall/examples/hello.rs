//! A server and a client in one process: serve a method, call it, stop.
//!
//! `cargo run -p polycall --no-default-features --features net --example hello`

use polycall::net::{Channel, Server, ServerConfig};
use polycall::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};

async fn greet(call: Call) -> Result<Reply, Status> {
    let name = String::from_utf8_lossy(&call.payload.bytes).into_owned();
    Ok(Reply::new(Payload::raw(format!("hello, {name}"))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::new().route(
        "greeter.greet",
        MethodInfo::new("greets"),
        handler_fn(greet),
    )?;
    let server =
        Server::serve_router("127.0.0.1:0".parse()?, ServerConfig::default(), router).await?;

    let channel = Channel::connect(server.local_endpoint().clone()).await?;
    let reply = channel
        .call(Call::new("greeter.greet", Payload::raw("polycall"))?)
        .await?;
    println!("{}", String::from_utf8_lossy(&reply.payload.bytes));

    server.shutdown().await;
    Ok(())
}
