//! What a server handle starts, it stops: dropping a `Server` closes its listener and its
//! connections; `serve_until` serves until its signal, then shuts down gracefully.

use std::time::Duration;

use polycall_core::{Call, Code, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::{Channel, Server, ServerConfig};

fn router() -> Router {
    Router::new()
        .route(
            "debug.echo",
            MethodInfo::new("echo"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap()
        .route(
            "debug.hang",
            MethodInfo::new("never answers"),
            handler_fn(|_: Call| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Reply::new(Payload::empty()))
            }),
        )
        .unwrap()
}

fn echo() -> Call {
    Call::new("debug.echo", Payload::raw("hi")).unwrap()
}

#[tokio::test]
async fn dropping_a_server_closes_its_listener_and_connections() {
    let server = Server::serve_router(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::default(),
        router(),
    )
    .await
    .unwrap();
    let endpoint = server.local_endpoint().clone();
    let channel = Channel::connect(endpoint.clone()).await.unwrap();
    channel.call(echo()).await.unwrap();
    let hanging = tokio::spawn({
        let channel = channel.clone();
        async move {
            channel
                .call(Call::new("debug.hang", Payload::empty()).unwrap())
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    drop(server);

    // The call in flight fails instead of hanging for an hour.
    let err = tokio::time::timeout(Duration::from_secs(10), hanging)
        .await
        .expect("the call in flight was not failed")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err}");
    // Nobody listens any more.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(endpoint.to_string())
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener of a dropped server still accepts");
}

#[tokio::test]
async fn serve_until_serves_until_its_signal_then_shuts_down() {
    let server = Server::serve_router(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::default(),
        router(),
    )
    .await
    .unwrap();
    let endpoint = server.local_endpoint().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_until(async {
        let _ = stopped.await;
    }));

    let channel = Channel::connect(endpoint.clone()).await.unwrap();
    let reply = channel.call(echo()).await.unwrap();
    assert_eq!(&reply.payload.bytes[..], b"hi");
    assert!(
        !serving.is_finished(),
        "the server stopped before its signal"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve_until did not return after its signal")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(endpoint.to_string())
            .await
            .is_err(),
        "the listener still accepts after the shutdown"
    );
}
