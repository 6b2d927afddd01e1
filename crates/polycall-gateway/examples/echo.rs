//! A gateway in front of an in-process router: one method, `greet.hello`, called over
//! HTTP by a plain TCP client.
//!
//! ```sh
//! cargo run -p polycall-gateway --example echo
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use polycall_core::{
    BoxFuture, Call, MethodDescription, MethodInfo, Payload, PeerAddr, Principal, Reply, Router,
    Status, handler_fn,
};
use polycall_gateway::{Backend, GatewayConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

/// Everyone may call; calls go to the router.
struct Open(Router);

impl Backend for Open {
    fn authenticate(&self, _bearer: Option<&str>, peer: SocketAddr) -> Result<Principal, Status> {
        Ok(Principal::anonymous(PeerAddr::Ip(peer)))
    }

    fn call(&self, call: Call) -> BoxFuture {
        self.0.clone().call(call)
    }

    fn methods(&self) -> Vec<MethodDescription> {
        self.0.describe()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::new().route(
        "greet.hello",
        MethodInfo::new("says hello").input(r#"{"name": string}"#),
        handler_fn(|call: Call| async move {
            let v: serde_json::Value = call
                .payload
                .to_json()
                .map_err(|e| Status::invalid_input(e.to_string()))?;
            let name = v["name"].as_str().unwrap_or("world");
            Ok(Reply::new(
                Payload::json(&serde_json::json!({"hello": name}))
                    .map_err(|e| Status::internal(e.to_string()))?,
            ))
        }),
    )?;
    let gateway = serve(
        GatewayConfig::new("127.0.0.1:0".parse()?),
        Arc::new(Open(router)),
    )
    .await?;
    let body = r#"{"name": "ada"}"#;
    let mut tcp = tokio::net::TcpStream::connect(gateway.local_addr()).await?;
    tcp.write_all(
        format!(
            "POST /v1/greet/hello HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    println!("{answer}");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with(r#"{"hello":"ada"}"#));
    Ok(())
}
