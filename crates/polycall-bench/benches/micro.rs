//! Microbenchmarks of the per-call hot path, through public APIs only. Run with
//! `cargo xtask bench micro [--quick]` (summary in `target/bench/micro.md`).
//!
//! - `framing`: encode and decode of a CALL frame (interned method, a deadline).
//! - `compression_select`: the adaptive selector's `choose` for a small message (below
//!   `min_size`), an incompressible 4 KiB one and a JSON 4 KiB one after learning.
//! - `routing`: `Router::handler` in a table of 200 methods, and the runtime's
//!   `Registry::pick` among 4 live provider connections.
//! - `connection_writer`: `Connection::open_call` of N 64 B calls and one
//!   `poll_transmit` (the bytes of one vectored write), on a connected client.
//! - `connection_roundtrip`: N 64 B calls through two connected state machines in
//!   memory: open, transmit, server decode + reply, transmit, client decode.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use polycall_core::{
    Call, ContentType, MethodInfo, MethodName, Payload, Reply, Router, ServiceName, handler_fn,
};
use polycall_net::{Channel, ChannelConfig, Server, ServerConfig};
use polycall_proto::compress::{AdaptiveSelector, Algorithm, Choice, SelectorConfig};
use polycall_proto::frame::{self, CallFrame, Frame, FrameBuf, MethodRef};
use polycall_proto::{Config, Connection, Event, Role, WireMeta};
use polycall_runtime::Registry;

fn bytes_of(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    for (label, size) in [("64B", 64usize), ("4KiB", 4096)] {
        let f = Frame::Call(CallFrame {
            call_id: 12_345,
            method: MethodRef { id: 3, name: None },
            content_type: ContentType::Raw,
            compression: Algorithm::None,
            meta: WireMeta {
                timeout: Some(Duration::from_millis(250)),
                ..WireMeta::default()
            },
            more: false,
            message_len: None,
            stream: false,
            empty: false,
            payload: bytes_of(size),
        });
        let encoded = f.to_bytes(false);
        g.throughput(Throughput::Elements(1));
        let mut out = FrameBuf::new();
        let mut chunks = Vec::with_capacity(4);
        g.bench_function(format!("encode_call_{label}"), |b| {
            b.iter(|| {
                black_box(&f).encode(&mut out, false);
                out.drain_chunks(&mut chunks);
                chunks.clear();
            })
        });
        g.bench_function(format!("decode_call_{label}"), |b| {
            b.iter_batched(
                || BytesMut::from(&encoded[..]),
                |mut buf| black_box(frame::decode(&mut buf, u32::MAX, false).expect("decodes")),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn compression_select(c: &mut Criterion) {
    let mut g = c.benchmark_group("compression_select");
    g.throughput(Throughput::Elements(1));
    let small = bytes_of(64);
    let random = bytes_of(4096);
    let json: Bytes = (0..100)
        .map(|i| format!("{{\"id\":{i},\"name\":\"user-{i}\",\"active\":true}},"))
        .collect::<String>()
        .into_bytes()
        .into();
    let allowed = Algorithm::ALL;
    let mut selector = AdaptiveSelector::new(SelectorConfig::default());
    g.bench_function("choose_64B_below_min_size", |b| {
        b.iter(|| selector.choose(1, ContentType::Raw, black_box(&small), &allowed))
    });
    // Teach the selector about both keys first, as a running connection would have.
    for _ in 0..64 {
        for (key, ct, data) in [
            (2, ContentType::Raw, &random),
            (3, ContentType::Json, &json),
        ] {
            let choice = selector.choose(key, ct, data, &allowed);
            let out_len = if choice == Choice::NONE || ct == ContentType::Raw {
                data.len()
            } else {
                data.len() / 5
            };
            selector.observe(
                key,
                ct,
                choice,
                data.len(),
                out_len,
                Duration::from_micros(8),
            );
        }
    }
    g.bench_function("choose_4KiB_incompressible", |b| {
        b.iter(|| selector.choose(2, ContentType::Raw, black_box(&random), &allowed))
    });
    g.bench_function("choose_4KiB_json", |b| {
        b.iter(|| selector.choose(3, ContentType::Json, black_box(&json), &allowed))
    });
    g.finish();
}

fn echo() -> impl polycall_core::Handler {
    handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) })
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(1));
    let mut router = Router::new();
    for s in 0..20 {
        for m in 0..10 {
            router = router
                .route(
                    &format!("svc{s}.method{m}"),
                    MethodInfo::new("bench"),
                    echo(),
                )
                .expect("valid name");
        }
    }
    g.bench_function("router_handler_200_methods", |b| {
        b.iter(|| black_box(router.handler(black_box("svc13"), black_box("method7"))))
    });

    // The registry picks among live connections: 4 real loopback connections.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (registry, _server, _channel) = rt.block_on(async {
        let server_router = Router::new()
            .route("bench.echo", MethodInfo::new("echo"), echo())
            .expect("valid name");
        let server = Server::serve_router(
            "127.0.0.1:0".parse().expect("endpoint"),
            ServerConfig::default(),
            server_router,
        )
        .await
        .expect("loopback server");
        let mut config = ChannelConfig::default();
        config.pool.connections = 4;
        let channel = Channel::with_config(server.local_endpoint().clone(), config)
            .await
            .expect("channel");
        let mut warm = Vec::new();
        for _ in 0..16 {
            let ch = channel.clone();
            warm.push(tokio::spawn(async move {
                ch.call(Call::new("bench.echo", Payload::empty()).expect("name"))
                    .await
            }));
        }
        for w in warm {
            w.await.expect("task").expect("warm-up call");
        }
        let registry = Registry::default();
        let methods: Vec<(ServiceName, MethodName, MethodInfo)> = (0..200)
            .map(|i| {
                (
                    ServiceName::new(&format!("svc{}", i / 10)).expect("name"),
                    MethodName::new(&format!("method{}", i % 10)).expect("name"),
                    MethodInfo::new("bench"),
                )
            })
            .collect();
        for (id, conn) in channel.connections().iter().enumerate() {
            registry.register(&methods, conn, id as u64);
        }
        (registry, server, channel)
    });
    let none_ejected = polycall_observe::outlier::Ejections::default();
    let (service, method) = (
        polycall_core::ServiceName::new("svc13").unwrap(),
        polycall_core::MethodName::new("method7").unwrap(),
    );
    g.bench_function("registry_pick_200_methods_4_providers", |b| {
        b.iter(|| black_box(registry.pick(black_box(&service), black_box(&method), &none_ejected)))
    });
    g.finish();
    drop(rt);
}

/// A client and a server state machine after the handshake.
fn connected() -> (Connection, Connection) {
    let mut client = Connection::new(Role::Client, Config::default()).expect("client");
    let mut server = Connection::new(Role::Server, Config::default()).expect("server");
    pump(&mut client, &mut server);
    assert_eq!(client.poll_event(), Some(Event::Connected));
    assert_eq!(server.poll_event(), Some(Event::Connected));
    (client, server)
}

/// Moves bytes both ways until neither side has anything to send.
fn pump(a: &mut Connection, b: &mut Connection) {
    let mut out = Vec::new();
    loop {
        let sent_a = a.poll_transmit(usize::MAX, &mut out);
        for chunk in out.drain(..) {
            b.feed(&chunk).expect("a's bytes are valid");
        }
        let sent_b = b.poll_transmit(usize::MAX, &mut out);
        for chunk in out.drain(..) {
            a.feed(&chunk).expect("b's bytes are valid");
        }
        if sent_a == 0 && sent_b == 0 {
            return;
        }
    }
}

fn connection(c: &mut Criterion) {
    let service = ServiceName::new("bench").expect("name");
    let method = MethodName::new("echo").expect("name");
    let body = bytes_of(64);
    let mut g = c.benchmark_group("connection_writer");
    for n in [1usize, 16, 64] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("open_call_and_poll_transmit_{n}x64B"), |b| {
            b.iter_batched(
                || (connected().0, Vec::with_capacity(8)),
                |(mut client, mut out)| {
                    for _ in 0..n {
                        client
                            .open_call(
                                &service,
                                &method,
                                Payload::raw(body.clone()),
                                WireMeta::default(),
                                false,
                            )
                            .expect("open");
                    }
                    black_box(client.poll_transmit(usize::MAX, &mut out));
                    (client, out)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("connection_roundtrip");
    for n in [1usize, 16, 64] {
        g.throughput(Throughput::Elements(n as u64));
        let (mut client, mut server) = connected();
        let mut out = Vec::with_capacity(8);
        g.bench_function(format!("call_reply_{n}x64B"), |b| {
            b.iter(|| {
                for _ in 0..n {
                    client
                        .open_call(
                            &service,
                            &method,
                            Payload::raw(body.clone()),
                            WireMeta::default(),
                            false,
                        )
                        .expect("open");
                }
                client.poll_transmit(usize::MAX, &mut out);
                for chunk in out.drain(..) {
                    server.feed(&chunk).expect("valid");
                }
                while let Some(ev) = server.poll_event() {
                    if let Event::Call(call) = ev {
                        server
                            .send_reply(call.call_id, call.payload, false)
                            .expect("reply");
                    }
                }
                server.poll_transmit(usize::MAX, &mut out);
                for chunk in out.drain(..) {
                    client.feed(&chunk).expect("valid");
                }
                let mut replies = 0;
                while let Some(ev) = client.poll_event() {
                    if let Event::Reply { payload, .. } = ev {
                        assert_eq!(payload.len(), body.len());
                        replies += 1;
                    }
                }
                assert_eq!(replies, n);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = framing, compression_select, routing, connection
}
criterion_main!(micro);
