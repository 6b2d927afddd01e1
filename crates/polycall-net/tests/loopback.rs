//! A server and channels on loopback TCP and a Unix socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use polycall_core::{Call, Code, Metadata, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::{Channel, ChannelConfig, Endpoint, Server, ServerConfig};

fn router(hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "debug.echo",
            MethodInfo::new("echo"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap()
        .route(
            "debug.sleep",
            MethodInfo::new("sleeps for the given milliseconds"),
            handler_fn(move |c: Call| {
                let hits = hits.clone();
                async move {
                    let ms: u64 = std::str::from_utf8(&c.payload.bytes)
                        .unwrap()
                        .parse()
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    hits.fetch_add(1, Ordering::SeqCst);
                    Ok(Reply::new(Payload::raw("slept")))
                }
            }),
        )
        .unwrap()
}

async fn serve(endpoint: &str, config: ServerConfig) -> (Server, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let s = Server::serve_router(endpoint.parse().unwrap(), config, router(hits.clone()))
        .await
        .unwrap();
    (s, hits)
}

fn call(name: &str, payload: &str) -> Call {
    Call::new(name, Payload::raw(payload.to_owned())).unwrap()
}

#[tokio::test]
async fn echo_over_tcp_and_unix() {
    let (server, _) = serve("127.0.0.1:0", ServerConfig::default()).await;
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    let r = ch.call(call("debug.echo", "hi")).await.unwrap();
    assert_eq!(&r.payload.bytes[..], b"hi");
    let err = ch.call(call("debug.nope", "")).await.unwrap_err();
    assert_eq!(err.code, Code::UnknownMethod);
    server.shutdown().await;

    let dir = std::env::temp_dir().join(format!("polycall-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let (server, _) = serve(&format!("unix:{}", path.display()), ServerConfig::default()).await;
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    assert_eq!(
        &ch.call(call("debug.echo", "unix"))
            .await
            .unwrap()
            .payload
            .bytes[..],
        b"unix"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_on_one_connection() {
    let mut config = ServerConfig::default();
    config.connection.proto.settings.limits.max_in_flight = 20_000;
    let (server, _) = serve("127.0.0.1:0", config).await;
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10_000u32 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let r = ch.call(call("debug.echo", &i.to_string())).await.unwrap();
            assert_eq!(
                r.payload.bytes,
                i.to_string().into_bytes(),
                "reply reached its own caller"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.connections(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn the_callers_deadline_is_enforced_on_both_sides() {
    let (server, hits) = serve("127.0.0.1:0", ServerConfig::default()).await;
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    let md = Metadata::default().with_timeout(Instant::now(), Duration::from_millis(100));
    let started = Instant::now();
    let err = ch
        .call(call("debug.sleep", "2000").with_metadata(md))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_millis(1000));
    // The server's handler was cancelled too: it never finished its sleep.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_call_future_cancels_it_on_the_server() {
    let (server, hits) = serve("127.0.0.1:0", ServerConfig::default()).await;
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        ch.call(call("debug.sleep", "500")),
    )
    .await;
    assert!(r.is_err());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the handler was aborted");
    // The connection is still fine.
    assert_eq!(
        &ch.call(call("debug.echo", "ok"))
            .await
            .unwrap()
            .payload
            .bytes[..],
        b"ok"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_in_flight_cap_calls_are_refused_busy_not_queued() {
    let mut config = ServerConfig::default();
    config.connection.proto.settings.limits.max_in_flight = 4;
    let (server, _) = serve("127.0.0.1:0", config).await;
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            ch.call(call("debug.sleep", "300")).await
        }));
    }
    let mut busy = 0;
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code == Code::Busy => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, busy), (4, 2));
    server.shutdown().await;
}

#[tokio::test]
async fn the_connection_cap_answers_busy() {
    let mut config = ServerConfig::default();
    config.max_connections = 1;
    let (server, _) = serve("127.0.0.1:0", config).await;
    let first = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    first.call(call("debug.echo", "")).await.unwrap();
    let err = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Busy, "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_calls_in_flight_and_refuses_new_connections() {
    let (server, _) = serve("127.0.0.1:0", ServerConfig::default()).await;
    let ep = server.local_endpoint().clone();
    let ch = Channel::connect(ep.clone()).await.unwrap();
    let slow = tokio::spawn({
        let ch = ch.clone();
        async move { ch.call(call("debug.sleep", "300")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown().await;
    assert_eq!(&slow.await.unwrap().unwrap().payload.bytes[..], b"slept");
    let err = Channel::connect(ep).await.unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
}

#[tokio::test]
async fn a_channel_reconnects_after_the_server_returns() {
    let (server, _) = serve("127.0.0.1:0", ServerConfig::default()).await;
    let ep: Endpoint = server.local_endpoint().clone();
    let mut cfg = ChannelConfig::default();
    cfg.reconnect_backoff = Duration::from_millis(10);
    let ch = Channel::with_config(ep.clone(), cfg).await.unwrap();
    server.shutdown().await;
    let err = ch.call(call("debug.echo", "x")).await.unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
    let (server2, _) = serve(&ep.to_string(), ServerConfig::default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ok = false;
    for _ in 0..20 {
        if ch.call(call("debug.echo", "back")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the channel reconnected");
    server2.shutdown().await;
}

#[tokio::test]
async fn under_load_the_server_dispatches_waiting_calls_by_priority() {
    use polycall_core::Priority;
    let order = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (o, g) = (order.clone(), gate.clone());
    let router = Router::new()
        .route(
            "work.do",
            MethodInfo::new("records its start, then waits for the gate"),
            handler_fn(move |c: Call| {
                let (o, g) = (o.clone(), g.clone());
                async move {
                    o.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&c.payload.bytes).into_owned());
                    g.acquire().await.unwrap().forget();
                    Ok(Reply::default())
                }
            }),
        )
        .unwrap();
    let mut config = ServerConfig::default();
    config.connection.max_concurrent_handlers = 1;
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), config, router)
        .await
        .unwrap();
    let ch = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    let send = |name: &str, p: Priority| {
        let ch = ch.clone();
        let md = Metadata::default().with_priority(p);
        let c = call("work.do", name).with_metadata(md);
        tokio::spawn(async move { ch.call(c).await })
    };
    let mut tasks = vec![send("first", Priority::Normal)];
    tokio::time::sleep(Duration::from_millis(50)).await; // "first" holds the only slot
    for (name, p) in [
        ("low-1", Priority::Low),
        ("low-2", Priority::Low),
        ("normal", Priority::Normal),
        ("critical", Priority::Critical),
    ] {
        tasks.push(send(name, p));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(10);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order[0], "first");
    assert_eq!(order[1], "critical", "{order:?}");
    assert_eq!(order[2], "normal", "{order:?}");
    server.shutdown().await;
}

/// Both ways of running handlers: inside the connection's task (default) and a task per
/// call (`spawn_handlers`): answers, cancellation and deadlines behave the same, and a
/// waiting handler does not hold up the connection's other calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_spawned_handlers_answer_cancel_and_keep_deadlines() {
    for spawn in [false, true] {
        let mut config = ServerConfig::default();
        config.connection.spawn_handlers = spawn;
        let (server, hits) = serve("127.0.0.1:0", config).await;
        let ch = Channel::connect(server.local_endpoint().clone())
            .await
            .unwrap();
        // A slow call in flight; 500 echoes complete meanwhile.
        let slow = tokio::spawn({
            let ch = ch.clone();
            async move { ch.call(call("debug.sleep", "400")).await }
        });
        let echoes: Vec<_> = (0..500)
            .map(|i| {
                let ch = ch.clone();
                tokio::spawn(async move { ch.call(call("debug.echo", &i.to_string())).await })
            })
            .collect();
        for (i, e) in echoes.into_iter().enumerate() {
            let r = e.await.unwrap().unwrap();
            assert_eq!(r.payload.bytes, i.to_string().as_bytes(), "spawn={spawn}");
        }
        assert!(
            !slow.is_finished(),
            "spawn={spawn}: echoes did not wait for the sleeper"
        );
        assert_eq!(&slow.await.unwrap().unwrap().payload.bytes[..], b"slept");
        // Cancelled by the caller: the handler stops.
        let before = hits.load(Ordering::SeqCst);
        let r = tokio::time::timeout(
            Duration::from_millis(50),
            ch.call(call("debug.sleep", "300")),
        )
        .await;
        assert!(r.is_err());
        // Past its deadline: answered deadline_exceeded, the handler stops.
        let md = Metadata::default().with_timeout(Instant::now(), Duration::from_millis(50));
        let err = ch
            .call(call("debug.sleep", "300").with_metadata(md))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::DeadlineExceeded, "spawn={spawn}");
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            hits.load(Ordering::SeqCst),
            before,
            "spawn={spawn}: both handlers were stopped"
        );
        server.shutdown().await;
    }
}
