//! Through a runtime: an embedded runtime, a provider that registers a method with it,
//! and a client that calls the method by name; then everything stops.
//!
//! `cargo run -p polycall --features runtime --example routed`

use polycall::net::Channel;
use polycall::runtime::{Provider, Runtime, RuntimeConfig};
use polycall::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};

async fn shout(call: Call) -> Result<Reply, Status> {
    let text = String::from_utf8_lossy(&call.payload.bytes).to_uppercase();
    Ok(Reply::new(Payload::raw(text)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("polycall-routed-{}", std::process::id()));
    let config = RuntimeConfig::default()
        .endpoint("127.0.0.1:0".parse()?)
        .state_dir(dir.clone());
    let runtime = Runtime::start(config).await?;

    let router = Router::new().route(
        "text.shout",
        MethodInfo::new("upper-cases"),
        handler_fn(shout),
    )?;
    let provider = Provider::start(runtime.local_endpoint().clone(), router).await?;

    let channel = Channel::connect(runtime.local_endpoint().clone()).await?;
    let reply = channel
        .call(Call::new(
            "text.shout",
            Payload::raw("through the runtime"),
        )?)
        .await?;
    println!("{}", String::from_utf8_lossy(&reply.payload.bytes));

    provider.stop().await;
    runtime.shutdown().await;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
