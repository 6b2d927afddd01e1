//! A `Channel` reports readiness: when its connection holds as many calls as the server
//! takes at once (the server's `max_in_flight`), `poll_ready` is pending until one ends.

use std::sync::Arc;
use std::time::Duration;

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::{Channel, ChannelConfig, Server, ServerConfig};
use tower::ServiceExt;

#[tokio::test]
async fn a_full_channel_is_not_ready_until_a_call_ends() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let router = Router::new()
        .route(
            "test.wait",
            MethodInfo::new("waits for the gate"),
            handler_fn({
                let gate = gate.clone();
                move |_: Call| {
                    let gate = gate.clone();
                    async move {
                        gate.acquire().await.unwrap().forget();
                        Ok(Reply::new(Payload::raw("passed")))
                    }
                }
            }),
        )
        .unwrap();
    let mut config = ServerConfig::default();
    config.connection.proto.settings.limits.max_in_flight = 2;
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), config, router)
        .await
        .unwrap();
    let channel = Channel::with_config(server.local_endpoint().clone(), ChannelConfig::default())
        .await
        .unwrap();
    let connection = channel
        .connections()
        .pop()
        .expect("the first connection is open");
    assert_eq!(
        connection.max_in_flight(),
        2,
        "the server's limit was negotiated"
    );

    let wait = || Call::new("test.wait", Payload::empty()).unwrap();
    let calls: Vec<_> = (0..2)
        .map(|_| tokio::spawn(channel.clone().oneshot(wait())))
        .collect();
    while connection.in_flight() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Full: not ready (for as long as we care to look).
    let mut svc = channel.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), svc.ready())
            .await
            .is_err(),
        "a channel whose only connection is full reported ready"
    );
    // One call ends: ready.
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), svc.ready())
        .await
        .expect("not ready after a call ended")
        .unwrap();
    gate.add_permits(1);
    for call in calls {
        let reply = call.await.unwrap().unwrap();
        assert_eq!(&reply.payload.bytes[..], b"passed");
    }
}
