//! Processes of the RPC benchmark, each run by `cargo xtask bench rpc` on its own:
//!
//! ```text
//! polycall-bench serve-raw --listen ADDR --ready FILE        pipelined length-prefixed TCP echo
//! polycall-bench serve-polycall --listen ADDR --ready FILE   a polycall Server with bench.echo
//! polycall-bench provide --runtime EP --ready FILE           bench.echo as a provider of a runtime
//! polycall-bench load --kind raw|polycall --endpoint EP --payload N --concurrency C
//!                     --connections K --seconds S            → one JSON line of results
//! ```
//!
//! The raw echo is the practical limit of any framed protocol here: a 4-byte
//! little-endian length, the payload, echoed back in order, pipelined.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use polycall_core::{Call, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::{Channel, ChannelConfig, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn need(args: &[String], name: &str) -> String {
    arg(args, name).unwrap_or_else(|| {
        eprintln!("missing {name}");
        std::process::exit(2)
    })
}

/// CPU seconds this process used so far (user + system, from /proc; USER_HZ is 100).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn echo_router() -> Router {
    Router::new()
        .route(
            "bench.echo",
            MethodInfo::new("returns its input").idempotent(true),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ready(args: &[String], what: &str) {
    if let Some(f) = arg(args, "--ready") {
        std::fs::write(f, format!("{what}\n"))
            .unwrap_or_else(|e| panic!("cannot write the ready file: {e}"));
    }
}

async fn serve_raw(args: &[String]) {
    let listener = TcpListener::bind(need(args, "--listen")).await.unwrap();
    ready(args, &listener.local_addr().unwrap().to_string());
    loop {
        let (s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                // Echo every whole frame in the buffer with one write: pipelined.
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let mut end = 0;
                while buf.len() >= end + 4 {
                    let len =
                        u32::from_le_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]])
                            as usize;
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    end += 4 + len;
                }
                if end > 0 {
                    let out = buf.split_to(end);
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

async fn serve_polycall(args: &[String]) {
    let mut config = ServerConfig::default();
    config.connection.proto.compression.candidates = vec![];
    let server = Server::serve_router(
        need(args, "--listen").parse().unwrap(),
        config,
        echo_router(),
    )
    .await
    .unwrap();
    ready(args, &server.local_endpoint().to_string());
    std::future::pending::<()>().await;
}

async fn provide(args: &[String]) {
    let ep = need(args, "--runtime").parse().unwrap();
    let _p = polycall_runtime::Provider::start(ep, echo_router())
        .await
        .unwrap();
    ready(args, "providing bench.echo");
    std::future::pending::<()>().await;
}

/// A pipelined raw connection: requests go out in order, answers come back in order.
#[derive(Clone)]
struct RawConn {
    tx: mpsc::UnboundedSender<(Bytes, oneshot::Sender<usize>)>,
}

impl RawConn {
    async fn open(ep: &str) -> RawConn {
        let s = TcpStream::connect(ep).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (mut r, mut w) = s.into_split();
        let waiting: Arc<Mutex<VecDeque<oneshot::Sender<usize>>>> = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Bytes, oneshot::Sender<usize>)>();
        let w_waiting = waiting.clone();
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for (payload, done) in batch {
                    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    out.extend_from_slice(&payload);
                    w_waiting.lock().unwrap().push_back(done);
                }
                if w.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        });
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if r.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    if buf.len() < 4 {
                        break;
                    }
                    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() < 4 + len {
                        break;
                    }
                    let _ = buf.split_to(4 + len);
                    if let Some(done) = waiting.lock().unwrap().pop_front() {
                        let _ = done.send(len);
                    }
                }
            }
        });
        RawConn { tx }
    }

    async fn call(&self, payload: Bytes) -> usize {
        let (tx, rx) = oneshot::channel();
        self.tx.send((payload, tx)).unwrap();
        rx.await.unwrap()
    }
}

async fn load(args: &[String]) {
    let kind = need(args, "--kind");
    let ep = need(args, "--endpoint");
    let payload_len: usize = need(args, "--payload").parse().unwrap();
    let concurrency: usize = need(args, "--concurrency").parse().unwrap();
    let connections: usize = need(args, "--connections").parse().unwrap();
    let seconds: f64 = need(args, "--seconds").parse().unwrap();
    let warmup = Duration::from_secs_f64((seconds / 5.0).min(1.0));
    let payload = Bytes::from(vec![0x5au8; payload_len]);

    enum Client {
        Raw(Vec<RawConn>),
        Polycall(Channel),
    }
    let client = Arc::new(match kind.as_str() {
        "raw" => {
            let mut v = Vec::new();
            for _ in 0..connections {
                v.push(RawConn::open(&ep).await);
            }
            Client::Raw(v)
        }
        _ => {
            let mut config = ChannelConfig::default();
            config.pool.connections = connections;
            config.connection.proto.compression.candidates = vec![];
            let ch = Channel::with_config(ep.parse().unwrap(), config)
                .await
                .unwrap();
            // Open every pooled connection before measuring.
            let mut warm = Vec::new();
            for _ in 0..connections * 4 {
                let c = ch.clone();
                warm.push(tokio::spawn(async move {
                    c.call(Call::new("bench.echo", Payload::empty()).unwrap())
                        .await
                }));
            }
            for w in warm {
                let _ = w.await;
            }
            Client::Polycall(ch)
        }
    });
    let start = Instant::now() + warmup;
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (client, payload) = (client.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut calls = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                match &*client {
                    Client::Raw(conns) => {
                        let n = conns[i % conns.len()].call(payload.clone()).await;
                        assert_eq!(n, payload.len());
                    }
                    Client::Polycall(ch) => {
                        let r = ch
                            .call(Call::new("bench.echo", Payload::raw(payload.clone())).unwrap())
                            .await
                            .unwrap();
                        assert_eq!(r.payload.len(), payload.len());
                    }
                }
                if t >= start {
                    calls += 1;
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                }
            }
            (calls, h)
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = cpu_seconds();
    let mut total = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut calls = 0;
    for t in tasks {
        let (n, h) = t.await.unwrap();
        calls += n;
        total.add(h).unwrap();
    }
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{}",
        serde_json::json!({
            "calls": calls, "seconds": seconds, "calls_per_sec": calls as f64 / seconds,
            "p50_us": total.value_at_quantile(0.5), "p99_us": total.value_at_quantile(0.99),
            "p999_us": total.value_at_quantile(0.999), "client_cpu_s": cpu,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("serve-raw") => serve_raw(&args).await,
            Some("serve-polycall") => serve_polycall(&args).await,
            Some("provide") => provide(&args).await,
            Some("load") => load(&args).await,
            _ => {
                eprintln!("usage: polycall-bench serve-raw|serve-polycall|provide|load …");
                std::process::exit(2);
            }
        }
    });
}
