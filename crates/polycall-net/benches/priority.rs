//! Critical calls beside a saturating low-priority load on the same connection.
//!
//! For each setup: p50 / p99 of 64 B critical calls alone, then while 64 KiB
//! low-priority echoes saturate the same connection, and the loaded/unloaded p99 ratio.
//! Run with `cargo xtask bench priority`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use polycall_core::{Call, Metadata, MethodInfo, Payload, Priority, Reply, Router, handler_fn};
use polycall_net::shape::{Rate, ShapeConfig, ShapeLayer};
use polycall_net::{Channel, ChannelConfig, Plain, Server, ServerConfig, Transport, TunedTcp};
use tower::{Layer, ServiceExt};

const PROBES: usize = 5000;
const LOAD_TASKS: usize = 8;
const LOAD_PAYLOAD: usize = 64 * 1024;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// How the client sends: straight into the channel, or through a per-class shaper.
#[derive(Clone)]
enum Client {
    Direct(Channel),
    Shaped(polycall_net::shape::Shape<Channel>),
}

impl Client {
    async fn call(&self, call: Call) -> Result<Reply, polycall_core::Status> {
        match self {
            Client::Direct(ch) => ch.call(call).await,
            Client::Shaped(s) => s.clone().oneshot(call).await,
        }
    }
}

async fn probe(ch: &Client, class: Priority) -> Vec<Duration> {
    let mut out = Vec::with_capacity(PROBES);
    let started = Instant::now();
    // At most PROBES calls, and at most 3 s of them.
    while out.len() < PROBES && started.elapsed() < Duration::from_secs(3) {
        let call = Call::new("bench.echo", Payload::raw(vec![1u8; 64]))
            .unwrap()
            .with_metadata(Metadata::default().with_priority(class));
        let t = Instant::now();
        ch.call(call).await.unwrap();
        out.push(t.elapsed());
    }
    out
}

struct Outcome {
    name: &'static str,
    unloaded_p50: Duration,
    unloaded_p99: Duration,
    loaded_p50: Duration,
    loaded_p99: Duration,
    load_mb_s: f64,
}

async fn scenario(
    name: &'static str,
    transport: Arc<dyn Transport>,
    probe_class: Priority,
    load_class: Priority,
    grain: Option<(u32, usize)>,
    shape: Option<ShapeConfig>,
) -> Outcome {
    let router = Router::new()
        .route(
            "bench.echo",
            MethodInfo::new("echo"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap();
    let mut sc = ServerConfig::default();
    sc.transport = transport.clone();
    sc.connection.proto.compression.candidates = vec![];
    if let Some((fragment, batch)) = grain {
        sc.connection.proto.fragment_size = fragment;
        sc.connection.write_batch = batch;
    }
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), sc, router)
        .await
        .unwrap();
    let mut cc = ChannelConfig::default();
    cc.transport = transport;
    cc.connection.proto.compression.candidates = vec![];
    if let Some((fragment, batch)) = grain {
        cc.connection.proto.fragment_size = fragment;
        cc.connection.write_batch = batch;
    }
    let channel = Channel::with_config(server.local_endpoint().clone(), cc)
        .await
        .unwrap();
    let ch = match shape {
        Some(config) => Client::Shaped(ShapeLayer::new(config).layer(channel)),
        None => Client::Direct(channel),
    };
    // Warm up, then measure alone.
    let _ = probe(&ch, probe_class).await;
    let mut alone = probe(&ch, probe_class).await;
    // Saturate the connection with low-priority echoes.
    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..LOAD_TASKS {
        let (ch, stop, moved) = (ch.clone(), stop.clone(), moved.clone());
        load.push(tokio::spawn(async move {
            let body = Payload::raw(vec![2u8; LOAD_PAYLOAD]);
            while !stop.load(Ordering::Relaxed) {
                let call = Call::new("bench.echo", body.clone())
                    .unwrap()
                    .with_metadata(Metadata::default().with_priority(load_class));
                ch.call(call).await.unwrap();
                moved.fetch_add(2 * LOAD_PAYLOAD as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = moved.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut loaded = probe(&ch, probe_class).await;
    let load_mb_s =
        (moved.load(Ordering::Relaxed) - before) as f64 / t.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    server.shutdown().await;
    Outcome {
        name,
        unloaded_p50: percentile(&mut alone, 0.5),
        unloaded_p99: percentile(&mut alone, 0.99),
        loaded_p50: percentile(&mut loaded, 0.5),
        loaded_p99: percentile(&mut loaded, 0.99),
        load_mb_s,
    }
}

const REPEATS: usize = 3;

/// The median of one setup's runs by loaded/unloaded p99 ratio, and the ratio's range.
fn median(mut runs: Vec<Outcome>) -> (Outcome, f64, f64) {
    let ratio = |o: &Outcome| o.loaded_p99.as_secs_f64() / o.unloaded_p99.as_secs_f64();
    runs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let (lo, hi) = (ratio(&runs[0]), ratio(&runs[runs.len() - 1]));
    let mid = runs.swap_remove(runs.len() / 2);
    (mid, lo, hi)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tuned: Arc<dyn Transport> = Arc::new(TunedTcp {
        send_buffer: Some(128 * 1024),
        recv_buffer: Some(128 * 1024),
    });
    let plain: Arc<dyn Transport> = Arc::new(Plain);
    // The low class gets 100 MB/s of the connection, paced in 64 KiB bursts; critical
    // is not shaped.
    let allocation = ShapeConfig::default().class(
        Priority::Low,
        Rate {
            bytes_per_sec: 100_000_000,
            burst_bytes: 64 * 1024,
        },
    );
    // The same allocation with probes in the shaped class: what classes buy.
    let same_class = ShapeConfig::default().class(
        Priority::Normal,
        Rate {
            bytes_per_sec: 100_000_000,
            burst_bytes: 64 * 1024,
        },
    );
    let results = rt.block_on(async {
        let mut per_setup: Vec<Vec<Outcome>> = Vec::new();
        for _ in 0..REPEATS {
            let run = vec![
                scenario(
                    "bandwidth by class, 16 KiB fragments: low shaped to 100 MB/s, critical probes",
                    plain.clone(),
                    Priority::Critical,
                    Priority::Low,
                    Some((16 * 1024, 32 * 1024)),
                    Some(allocation.clone()),
                )
                .await,
                scenario(
                    "bandwidth by class: low shaped to 100 MB/s, critical probes",
                    plain.clone(),
                    Priority::Critical,
                    Priority::Low,
                    None,
                    Some(allocation.clone()),
                )
                .await,
                scenario(
                    "same shaper, probes in the shaped class (no priority)",
                    plain.clone(),
                    Priority::Normal,
                    Priority::Normal,
                    None,
                    Some(same_class.clone()),
                )
                .await,
                scenario(
                    "CPU-bound: no shaping, critical over low, bounded socket buffers",
                    tuned.clone(),
                    Priority::Critical,
                    Priority::Low,
                    Some((16 * 1024, 32 * 1024)),
                    None,
                )
                .await,
                scenario(
                    "CPU-bound: no shaping, critical over low, defaults",
                    plain.clone(),
                    Priority::Critical,
                    Priority::Low,
                    None,
                    None,
                )
                .await,
                scenario(
                    "CPU-bound: no shaping, no priority, defaults",
                    plain.clone(),
                    Priority::Normal,
                    Priority::Normal,
                    None,
                    None,
                )
                .await,
            ];
            per_setup.resize_with(run.len(), Vec::new);
            for (i, o) in run.into_iter().enumerate() {
                per_setup[i].push(o);
            }
        }
        per_setup.into_iter().map(median).collect::<Vec<_>>()
    });
    println!(
        "{PROBES} sequential 64 B probe calls; load: {LOAD_TASKS} tasks looping 64 KiB echoes on the same connection\n"
    );
    println!("median of {REPEATS} runs per setup (by the p99 ratio), and the ratio's range\n");
    println!(
        "| setup | unloaded p50 | unloaded p99 | loaded p50 | loaded p99 | p99 loaded / unloaded | range | load moved |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for (o, lo, hi) in &results {
        let ratio = o.loaded_p99.as_secs_f64() / o.unloaded_p99.as_secs_f64();
        println!(
            "| {} | {:?} | {:?} | {:?} | {:?} | {:.2}× | {lo:.2}–{hi:.2}× | {:.0} MB/s |",
            o.name, o.unloaded_p50, o.unloaded_p99, o.loaded_p50, o.loaded_p99, ratio, o.load_mb_s
        );
        json.push(serde_json::json!({"setup": o.name, "unloaded_p50_us": o.unloaded_p50.as_micros() as u64,
            "unloaded_p99_us": o.unloaded_p99.as_micros() as u64, "loaded_p50_us": o.loaded_p50.as_micros() as u64,
            "loaded_p99_us": o.loaded_p99.as_micros() as u64, "ratio": ratio, "load_mb_s": o.load_mb_s}));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("priority.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
