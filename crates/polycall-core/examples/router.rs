//! A router with two methods, described and called without any network.
//!
//! `cargo run -p polycall-core --example router`

use std::task::{Context, Poll, Waker};

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use tower_service::Service;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut router = Router::new()
        .route(
            "debug.echo",
            MethodInfo::new("returns its input")
                .input("any")
                .output("the input")
                .idempotent(true),
            handler_fn(|call: Call| async move { Ok(Reply::new(call.payload)) }),
        )?
        .route(
            "inventory.get",
            MethodInfo::new("reads an item")
                .input(r#"{"item_id": string}"#)
                .idempotent(true),
            handler_fn(|call: Call| async move {
                let req: serde_json::Value = call
                    .payload
                    .to_json()
                    .map_err(|e| Status::invalid_input(e.to_string()))?;
                match req["item_id"].as_str() {
                    Some("widget-a") => Ok(Reply::new(
                        Payload::json(&serde_json::json!({"quantity": 42})).expect("json"),
                    )),
                    Some(other) => Err(Status::not_found(format!("no item {other}"))),
                    None => Err(Status::invalid_input("item_id is missing")),
                }
            }),
        )?;
    println!("{}", serde_json::to_string_pretty(&router.describe())?);
    let reply = block_on(router.call(Call::new(
        "inventory.get",
        Payload::json(&serde_json::json!({"item_id": "widget-a"}))?,
    )?));
    println!(
        "inventory.get widget-a → {:?}",
        reply.map(|r| String::from_utf8_lossy(&r.payload.bytes).into_owned())
    );
    let err = block_on(router.call(Call::new(
        "inventory.get",
        Payload::json(&serde_json::json!({"item_id": "nope"}))?,
    )?))
    .expect_err("unknown item");
    println!(
        "inventory.get nope → {err} (PCR1 {:?}, exit code {})",
        err.code.pcr1(),
        err.code.exit_code()
    );
    Ok(())
}
