//! A Rust client: calls a few methods through a runtime and prints what came back.
//!
//! ```sh
//! cargo run -p polycall --example client -- 127.0.0.1:7464
//! ```

use std::time::{Duration, Instant};

use polycall::net::Channel;
use polycall::{Call, Metadata, Payload};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7464".into());
    let channel = Channel::connect(endpoint.parse()?).await?;

    let pong = channel
        .call(Call::new("sys.ping", Payload::empty())?)
        .await?;
    println!(
        "sys.ping → {}",
        String::from_utf8_lossy(&pong.payload.bytes)
    );

    let echo = channel
        .call(Call::new(
            "debug.echo",
            Payload::json(&json!({"hello": "polycall"}))?,
        )?)
        .await?;
    println!(
        "debug.echo → {}",
        String::from_utf8_lossy(&echo.payload.bytes)
    );

    // A deadline travels with the call; the runtime gives up when it passes.
    let md = Metadata::default().with_timeout(Instant::now(), Duration::from_millis(100));
    let slow = Call::new("debug.sleep", Payload::json(&json!({"ms": 1000}))?)?.with_metadata(md);
    match channel.call(slow).await {
        Ok(r) => println!(
            "debug.sleep → {}",
            String::from_utf8_lossy(&r.payload.bytes)
        ),
        Err(status) => println!("debug.sleep with a 100 ms deadline → {status}"),
    }

    let item = Call::new(
        "inventory.get",
        Payload::json(&json!({"item_id": "widget-a"}))?,
    )?;
    match channel.call(item).await {
        Ok(r) => println!(
            "inventory.get → {}",
            String::from_utf8_lossy(&r.payload.bytes)
        ),
        Err(status) => println!("inventory.get → {status} (start the provider example first)"),
    }
    Ok(())
}
