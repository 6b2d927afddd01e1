//! A typed server and a typed client in one process: serve a method, call it, stop.
//!
//! `cargo run -p polycall --no-default-features --features net --example hello`

use polycall::net::{Channel, Server, ServerConfig};
use polycall::typed::{self, Json};
use polycall::{Call, MethodInfo, Router};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Greet {
    name: String,
}

#[derive(Serialize, Deserialize)]
struct Greeting {
    text: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let greet = typed::handler(|Json(g): Json<Greet>| async move {
        let text = format!("hello, {}", g.name);
        Ok(Json(Greeting { text }))
    });
    let router = Router::new().route("greeter.greet", MethodInfo::new("greets"), greet)?;
    let server =
        Server::serve_router("127.0.0.1:0".parse()?, ServerConfig::default(), router).await?;

    let channel = Channel::connect(server.local_endpoint().clone()).await?;
    let name = "polycall".to_owned();
    let request = Json(Greet { name }).into_payload()?;
    let reply = channel.call(Call::new("greeter.greet", request)?).await?;
    println!("{}", Json::<Greeting>::from_payload(&reply.payload)?.0.text);
    Ok(()) // dropping the server stops it
}
