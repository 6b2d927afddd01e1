//! The load of the cluster benchmark (`cargo xtask bench cluster`): `--writers W`
//! clients, each with one replicated write in flight at a time, spread round-robin over
//! the cluster's nodes (followers forward to the leader, on both systems), for
//! `--seconds S` after `--warmup`:
//!
//! - `--peer polycall`: `state.register.fire` (`set`, an N-byte value) on the writer's own
//!   instance `w<i>` of a machine with `durability = "sync"`: acknowledged once a
//!   majority has the entry fsynced and it is applied;
//! - `--peer etcd`: `KV.Put` of an N-byte value at the writer's own key `w<i>`, over
//!   etcd's gRPC API (acknowledged once a majority has it fsynced and it is applied).
//!
//! Prints one JSON line: `writes_per_s`, `p50_us`, `p99_us`, `errors`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use polycall_core::{Call, Payload};
use polycall_net::Channel;

use crate::{Args, Ctx, Fail};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// One writer's way to the cluster.
#[derive(Clone)]
enum Writer {
    Polycall(Channel),
    Etcd(etcd::kv_client::KvClient<tonic::transport::Channel>),
}

impl Writer {
    async fn write(&mut self, id: usize, n: u64, value_len: usize) -> Result<(), Fail> {
        let value = value_of(id, n, value_len);
        match self {
            Writer::Polycall(ch) => {
                let input = serde_json::json!({
                    "id": format!("w{id}"),
                    "transition": "set",
                    "event": {"value": value},
                });
                let call = Call::new(
                    "state.register.fire",
                    Payload::json(&input).ctx("encoding the event")?,
                )
                .ctx("building the call")?;
                ch.call(call).await.ctx("state.register.fire")?;
                Ok(())
            }
            Writer::Etcd(kv) => {
                kv.put(etcd::PutRequest {
                    key: format!("w{id}").into_bytes().into(),
                    value: value.into_bytes().into(),
                    ..Default::default()
                })
                .await
                .ctx("etcd Put")?;
                Ok(())
            }
        }
    }
}

/// `len` printable bytes naming the writer and the write (so every value differs).
fn value_of(id: usize, n: u64, len: usize) -> String {
    let mut v = format!("w{id}-{n}-");
    while v.len() < len {
        v.push('x');
    }
    v.truncate(len);
    v
}

/// Runs the load and prints one JSON line of results.
pub async fn run(args: &Args) -> Result<(), Fail> {
    let peer = args.need("--peer")?.to_owned();
    let endpoints: Vec<String> = args
        .need("--endpoints")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let writers: usize = args.parse("--writers")?;
    let value_len: usize = args.parse("--value-size")?;
    let seconds: f64 = args.parse("--seconds")?;
    let warmup: f64 = args.parse("--warmup")?;
    if writers == 0 || seconds <= 0.0 {
        return Err(Fail::new(
            "cluster-load",
            "--writers and --seconds must be positive",
        ));
    }
    // One connection per node, shared by the writers sent there (both clients multiplex).
    let mut ways = Vec::new();
    for ep in &endpoints {
        ways.push(match peer.as_str() {
            "polycall" => Writer::Polycall(
                Channel::connect(ep.parse().ctx("the endpoint")?)
                    .await
                    .ctx("connecting to a runtime")?,
            ),
            "etcd" => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
                    .ctx("the etcd endpoint")?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .ctx("connecting to etcd")?;
                Writer::Etcd(etcd::kv_client::KvClient::new(channel))
            }
            other => {
                return Err(Fail::new(
                    "argument --peer",
                    format!("{other}: polycall|etcd"),
                ));
            }
        });
    }
    if peer == "polycall" {
        // Each writer's instance, once.
        if let Writer::Polycall(ch) = &ways[0] {
            for id in 0..writers {
                let input = serde_json::json!({"id": format!("w{id}")});
                let call = Call::new("state.register.create", Payload::json(&input).ctx("json")?)
                    .ctx("building the call")?;
                match ch.call(call).await {
                    Ok(_) => {}
                    Err(s) if s.code == polycall_core::Code::AlreadyExists => {}
                    Err(s) => return Err(Fail::new("creating the writers' instances", s)),
                }
            }
        }
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let until = measure_from + Duration::from_secs_f64(seconds);
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..writers {
        let mut way = ways[id % ways.len()].clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| Fail::new("histogram", e))?;
            let mut n = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                n += 1;
                match way.write(id, n, value_len).await {
                    Ok(()) if t0 >= measure_from => {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                            eprintln!("cluster-load: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            Ok::<_, Fail>(hist)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ctx("histogram")?;
    for t in tasks {
        let h = t.await.ctx("a writer")??;
        all.add(&h).ctx("merging histograms")?;
    }
    let out = serde_json::json!({
        "peer": peer,
        "writers": writers,
        "value_size": value_len,
        "seconds": seconds,
        "writes": all.len(),
        "writes_per_s": all.len() as f64 / seconds,
        "p50_us": all.value_at_quantile(0.5),
        "p99_us": all.value_at_quantile(0.99),
        "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
    });
    println!("{out}");
    Ok(())
}
