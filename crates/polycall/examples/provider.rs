//! A Rust provider: connects to a runtime, registers `inventory.get` (libpolycall's
//! conformance fixture) and serves it until Ctrl-C.
//!
//! ```sh
//! polycall run &                                        # a runtime on 127.0.0.1:7464
//! cargo run -p polycall --features runtime --example provider -- 127.0.0.1:7464
//! polycall call inventory.get --json '{"item_id": "widget-a"}'
//! ```

use polycall::runtime::Provider;
use polycall::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use serde_json::json;

async fn inventory_get(call: Call) -> Result<Reply, Status> {
    let input: serde_json::Value = call
        .payload
        .to_json()
        .map_err(|e| Status::invalid_input(format!("expected {{\"item_id\": string}}: {e}")))?;
    let id = input["item_id"]
        .as_str()
        .ok_or_else(|| Status::invalid_input("item_id is missing"))?;
    let quantity = match id {
        "widget-a" => 42,
        "widget-b" => 7,
        "gadget-c" => 0,
        other => return Err(Status::not_found(format!("no item {other:?}"))),
    };
    let out = json!({"item_id": id, "quantity": quantity, "in_stock": quantity > 0});
    Payload::json(&out)
        .map(Reply::new)
        .map_err(|e| Status::internal(e.to_string()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7464".into());
    let router = Router::new().route(
        "inventory.get",
        MethodInfo::new("reads an item's stock")
            .input(r#"{"item_id": string}"#)
            .output(r#"{"item_id", "quantity", "in_stock"}"#)
            .idempotent(true),
        handler_fn(inventory_get),
    )?;
    let provider = Provider::start(endpoint.parse()?, router).await?;
    println!("serving inventory.get through {endpoint}; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    provider.stop().await;
    Ok(())
}
