//! Who a peer is, typed; what a connection offers, truthfully; and a handler that computes
//! does not hold up the other calls of its connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use polycall_core::{Call, MethodInfo, Payload, PeerAddr, Reply, Router, handler_fn};
use polycall_net::{
    Channel, ConnectionHandle, Endpoint, Peer, RouterHandler, Server, ServerConfig, SharedHandler,
};

/// A server whose only method answers with the peer its transport reported.
async fn peer_echo_server(endpoint: Endpoint) -> Server {
    Server::serve(
        endpoint,
        ServerConfig::default(),
        Arc::new(|_: &ConnectionHandle, peer: &Peer| -> SharedHandler {
            let text = peer.anonymous().to_string();
            let router = Router::new()
                .route(
                    "who.ami",
                    MethodInfo::new("the transport peer"),
                    handler_fn(move |_c: Call| {
                        let t = text.clone();
                        async move { Ok(Reply::new(Payload::raw(t))) }
                    }),
                )
                .unwrap();
            Arc::new(RouterHandler(router))
        }),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_unix_socket_peer_is_its_kernel_credentials_not_the_socket_path() {
    // A path that looks like an identity must not change who the client is.
    let dir = polycall_test_support::TempDir::new("unix");
    let path = dir.join("token:root@spiffe:evil.sock");
    let server = peer_echo_server(Endpoint::Unix(path.clone())).await;
    let ch = Channel::connect(Endpoint::Unix(path)).await.unwrap();
    let reply = ch
        .call(Call::new("who.ami", Payload::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(reply.payload.bytes.to_vec()).unwrap();
    let principal = polycall_core::Principal::parse(&text).unwrap();
    let polycall_core::Principal::Anonymous(PeerAddr::Unix(creds)) = principal else {
        panic!("not a Unix peer: {text}");
    };
    assert_eq!(creds.uid, rustix::process::getuid().as_raw(), "{text}");
    assert_eq!(creds.gid, rustix::process::getgid().as_raw(), "{text}");
    assert_eq!(creds.pid, Some(std::process::id()), "{text}");
    assert!(!text.contains("evil") && !text.contains("root"), "{text}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_tcp_peer_is_its_address() {
    let server = peer_echo_server("127.0.0.1:0".parse().unwrap()).await;
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    let reply = ch
        .call(Call::new("who.ami", Payload::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(reply.payload.bytes.to_vec()).unwrap();
    let p = polycall_core::Principal::parse(&text).unwrap();
    assert!(
        matches!(&p, polycall_core::Principal::Anonymous(PeerAddr::Ip(a)) if a.ip().is_loopback()),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_turns_streaming_off_gets_a_clear_refusal_for_streams() {
    let server = peer_echo_server("127.0.0.1:0".parse().unwrap()).await;
    let mut config = polycall_net::ChannelConfig::default();
    config.connection.proto.settings.features &= !polycall_proto::features::STREAMING;
    let ch = Channel::with_config(server.local_endpoint().clone(), config)
        .await
        .unwrap();
    ch.call(Call::new("who.ami", Payload::empty()).unwrap())
        .await
        .unwrap();
    let conns = ch.connections();
    assert!(!conns.is_empty());
    for c in &conns {
        assert_eq!(
            c.features() & polycall_proto::features::STREAMING,
            0,
            "streaming not negotiated"
        );
    }
    let requests: polycall_core::MessageStream =
        Box::pin(polycall_core::stream::iter([Ok(Payload::raw("x"))]));
    let mut replies = ch
        .bidi(polycall_core::StreamCall::new("who.ami", requests).unwrap())
        .await
        .unwrap();
    let err = futures_util::StreamExt::next(&mut replies)
        .await
        .expect("an answer")
        .unwrap_err();
    assert_eq!(err.code, polycall_core::Code::Unsupported, "{err}");
    assert!(err.message.contains("streaming"), "{err}");
    server.shutdown().await;
}

/// `spin.wait` computes (a busy loop, never yielding) until `spin.release` is called or
/// 10 s pass; it answers which. With handlers run inside the connection's task, the
/// release could never be read while the spin holds that task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_computes_does_not_hold_up_its_connection() {
    let released = Arc::new(AtomicBool::new(false));
    let spinning = Arc::new(AtomicBool::new(false));
    let (r1, r2, s1) = (released.clone(), released.clone(), spinning.clone());
    let router = Router::new()
        .route(
            "spin.wait",
            MethodInfo::new("busy until released"),
            handler_fn(move |_c: Call| {
                let (r, s) = (r1.clone(), s1.clone());
                async move {
                    s.store(true, Ordering::SeqCst);
                    let start = Instant::now();
                    let mut x = 0u64;
                    while !r.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    let out = if r.load(Ordering::SeqCst) {
                        "released"
                    } else {
                        "starved"
                    };
                    std::hint::black_box(x);
                    Ok(Reply::new(Payload::raw(out)))
                }
            }),
        )
        .unwrap()
        .route(
            "spin.release",
            MethodInfo::new("ends spin.wait"),
            handler_fn(move |_c: Call| {
                let r = r2.clone();
                async move {
                    r.store(true, Ordering::SeqCst);
                    Ok(Reply::new(Payload::empty()))
                }
            }),
        )
        .unwrap();
    // The default server configuration: what a production server gets.
    let server = Server::serve_router(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::default(),
        router,
    )
    .await
    .unwrap();
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    assert_eq!(
        ch.connections().len(),
        1,
        "one connection carries both calls"
    );
    let spin = tokio::spawn({
        let ch = ch.clone();
        async move {
            ch.call(Call::new("spin.wait", Payload::empty()).unwrap())
                .await
        }
    });
    let waited = Instant::now();
    while !spinning.load(Ordering::SeqCst) {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "spin.wait never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ch.call(Call::new("spin.release", Payload::empty()).unwrap())
        .await
        .unwrap();
    let out = spin.await.unwrap().unwrap();
    assert_eq!(&out.payload.bytes[..], b"released");
    server.shutdown().await;
}
