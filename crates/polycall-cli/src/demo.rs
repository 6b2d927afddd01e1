//! `polycall demo`: a newcomer's first minute — a runtime, a Rust provider and a client
//! in one process, with a printout of each step.

use std::time::{Duration, Instant};

use polycall::net::Channel;
use polycall::runtime::{Provider, Runtime, RuntimeConfig};
use polycall::{Call, Metadata, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use serde_json::json;

use crate::output::{Out, exit};

fn inventory() -> Result<Router, polycall::NameError> {
    Router::new().route(
        "inventory.get",
        MethodInfo::new("reads an item's stock")
            .input(r#"{"item_id": string}"#)
            .output(r#"{"item_id", "quantity", "in_stock"}"#)
            .idempotent(true),
        handler_fn(|call: Call| async move {
            let input: serde_json::Value = call
                .payload
                .to_json()
                .map_err(|e| Status::invalid_input(e.to_string()))?;
            let id = input["item_id"]
                .as_str()
                .ok_or_else(|| Status::invalid_input("item_id is missing"))?;
            let quantity = match id {
                "widget-a" => 42,
                "widget-b" => 7,
                "gadget-c" => 0,
                other => return Err(Status::not_found(format!("no item {other:?}"))),
            };
            Payload::json(&json!({"item_id": id, "quantity": quantity, "in_stock": quantity > 0}))
                .map(Reply::new)
                .map_err(|e| Status::internal(e.to_string()))
        }),
    )
}

fn show(step: &str, what: &str, result: &Result<Reply, Status>, took: Duration) {
    match result {
        Ok(r) => println!(
            "  {step} {what:<44} → ok in {took:.1?}: {}",
            String::from_utf8_lossy(&r.payload.bytes)
        ),
        Err(s) => println!(
            "  {step} {what:<44} → {} in {took:.1?}: {} (PCR1 {:?}, exit code {})",
            s.code,
            s.message,
            s.code.pcr1(),
            s.code.exit_code()
        ),
    }
}

pub async fn demo(out: Out) -> u8 {
    match run().await {
        Ok(()) => exit::OK,
        Err(e) => out.fail("demo", &e),
    }
}

async fn run() -> Result<(), Status> {
    let state_dir = std::env::temp_dir().join(format!("polycall-demo-{}", std::process::id()));
    let config = RuntimeConfig::default()
        .endpoint(
            "127.0.0.1:0"
                .parse()
                .map_err(|e| Status::internal(format!("{e}")))?,
        )
        .state_dir(state_dir.clone())
        .debug_methods(true);
    println!(
        "polycall demo: a runtime, a provider written in Rust, and a client, in one process.\n"
    );
    let runtime = Runtime::start(config)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let ep = runtime.local_endpoint().clone();
    println!(
        "1. The runtime listens on {ep} (any free port). Programs in any language connect here."
    );

    let router = inventory().map_err(|e| Status::internal(e.to_string()))?;
    let provider = Provider::start(ep.clone(), router).await?;
    println!(
        "2. A provider connected and registered inventory.get (libpolycall's conformance fixture)."
    );

    let client = Channel::connect(ep.clone()).await?;
    println!(
        "3. A client connected. Its calls go through the runtime to whoever provides the method:\n"
    );
    let calls: Vec<(&str, Call)> = vec![
        (
            "sys.ping",
            Call::new("sys.ping", Payload::empty()).map_err(|e| Status::internal(e.to_string()))?,
        ),
        ("inventory.get widget-a", item("widget-a")?),
        ("inventory.get gadget-c", item("gadget-c")?),
        ("inventory.get nope (an unknown item)", item("nope")?),
        (
            "inventory.put (no such method)",
            Call::new("inventory.put", Payload::empty())
                .map_err(|e| Status::internal(e.to_string()))?,
        ),
        ("debug.sleep 500 ms with a 100 ms deadline", {
            let md = Metadata::default().with_timeout(Instant::now(), Duration::from_millis(100));
            Call::new(
                "debug.sleep",
                Payload::json(&json!({"ms": 500})).map_err(|e| Status::internal(e.to_string()))?,
            )
            .map_err(|e| Status::internal(e.to_string()))?
            .with_metadata(md)
        }),
    ];
    for (i, (what, call)) in calls.into_iter().enumerate() {
        let t = Instant::now();
        let r = client.call(call).await;
        show(
            &format!("{}.", (b'a' + i as u8) as char),
            what,
            &r,
            t.elapsed(),
        );
    }

    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.call(item(if i % 2 == 0 { "widget-a" } else { "widget-b" })?)
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await, Ok(Ok(_))) {
            ok += 1;
        }
    }
    println!(
        "\n4. 1000 concurrent calls on one connection, through the runtime to the provider: {ok} ok in {:.1?}.",
        t.elapsed()
    );

    let d = client
        .call(
            Call::new("sys.describe", Payload::empty())
                .map_err(|e| Status::internal(e.to_string()))?,
        )
        .await?;
    let d: serde_json::Value = d
        .payload
        .to_json()
        .map_err(|e| Status::internal(e.to_string()))?;
    println!("5. sys.describe lists what is served and by whom:");
    for m in d["methods"].as_array().into_iter().flatten() {
        let by = match &m["provided_by"] {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            v => v.as_str().unwrap_or("").to_owned(),
        };
        println!(
            "     {:<16} {:<12} {}",
            m["name"].as_str().unwrap_or(""),
            by,
            m["summary"].as_str().unwrap_or("")
        );
    }

    provider.stop().await;
    let t = Instant::now();
    let r = client.call(item("widget-a")?).await;
    println!("\n6. The provider stopped; the same call now gets:");
    show("   ", "inventory.get widget-a", &r, t.elapsed());
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    println!(
        "\nDone. Next: `polycall run --debug-methods` in one terminal, `polycall call debug.echo --json '{{\"hi\": 1}}'` in another."
    );
    Ok(())
}

fn item(id: &str) -> Result<Call, Status> {
    let p = Payload::json(&json!({"item_id": id})).map_err(|e| Status::internal(e.to_string()))?;
    Call::new("inventory.get", p).map_err(|e| Status::internal(e.to_string()))
}
