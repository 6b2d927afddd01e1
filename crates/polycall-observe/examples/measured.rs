//! Measures a few calls through a router and serves them on an admin listener, then
//! reads its own `/metrics` back and prints the call families.
//!
//! ```text
//! cargo run -p polycall-observe --example measured
//! ```

use std::io::{Read, Write};
use std::sync::Arc;

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use polycall_observe::admin::{AdminConfig, serve};
use polycall_observe::metrics::Side;
use polycall_observe::trace::{MemoryExporter, Sampler, Tracer};
use polycall_observe::{Observer, Source};
use tower::{Layer, ServiceExt};

/// This example reports nothing beyond the calls.
struct Nothing;
impl Source for Nothing {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spans = MemoryExporter::default();
    let observer = Observer::new(Tracer::start("example", Sampler::Always, spans.clone()));
    let greet = handler_fn(|c: Call| async move {
        if c.payload.is_empty() {
            return Err(Status::invalid_input("say who"));
        }
        Ok(Reply::new(c.payload))
    });
    let router = Router::new().route("greeter.hello", MethodInfo::new("echoes a name"), greet)?;
    let served = observer.layer(Side::Server).layer(router);
    for name in ["ada", "grace", ""] {
        let call = Call::new("greeter.hello", Payload::raw(name))?;
        let _ = served.clone().oneshot(call).await;
    }
    let admin = serve(
        AdminConfig::new("127.0.0.1:0".parse()?),
        observer.clone(),
        Arc::new(Nothing),
    )
    .await?;
    let addr = admin.local_addr();
    let text = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .await??;
    for line in text.lines().filter(|l| l.starts_with("polycall_call")) {
        println!("{line}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the span batch
    println!(
        "{} spans recorded, dashboard at http://{addr}/dashboard while this runs",
        spans.spans().len()
    );
    Ok(())
}
