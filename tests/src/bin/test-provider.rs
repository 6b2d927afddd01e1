//! A provider process for tests that kill it: connects to the runtime given as the first
//! argument, registers `slow.wait` (sleeps `{"ms": N}`), prints "ready" and serves.

use std::time::Duration;

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use polycall_runtime::Provider;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .ok_or("usage: test-provider ENDPOINT")?;
    let router = Router::new().route(
        "slow.wait",
        MethodInfo::new("sleeps for ms milliseconds"),
        handler_fn(|c: Call| async move {
            let v: serde_json::Value = c
                .payload
                .to_json()
                .map_err(|e| Status::invalid_input(e.to_string()))?;
            tokio::time::sleep(Duration::from_millis(v["ms"].as_u64().unwrap_or(0))).await;
            Ok(Reply::new(Payload::raw("done")))
        }),
    )?;
    let _provider = Provider::start(endpoint.parse()?, router).await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
