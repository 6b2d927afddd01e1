//! Through a runtime: an embedded runtime, a provider that registers a method with it,
//! and a client that calls the method by name; then everything stops.
//!
//! `cargo run -p polycall --features runtime --example routed`

use polycall::net::Channel;
use polycall::runtime::{Provider, Runtime, RuntimeConfig};
use polycall::typed::{self, Json};
use polycall::{Call, MethodInfo, Router};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("polycall-routed-{}", std::process::id()));
    let config = RuntimeConfig::default()
        .endpoint("127.0.0.1:0".parse()?)
        .state_dir(dir.clone());
    let runtime = Runtime::start(config).await?;

    let shout = typed::handler(|Json(s): Json<String>| async move { Ok(Json(s.to_uppercase())) });
    let router = Router::new().route("text.shout", MethodInfo::new("upper-cases"), shout)?;
    let provider = Provider::start(runtime.local_endpoint().clone(), router).await?;

    let channel = Channel::connect(runtime.local_endpoint().clone()).await?;
    let request = Json("through the runtime").into_payload()?;
    let reply = channel.call(Call::new("text.shout", request)?).await?;
    println!("{}", Json::<String>::from_payload(&reply.payload)?.0);

    drop(provider); // a dropped provider leaves the runtime
    runtime.shutdown().await;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
