//! `load`: a closed-loop load generator. `--concurrency` tasks each keep one call in
//! flight (task `i` on connection `i % connections`); calls that start during the
//! warm-up are left out; CPU seconds of this process and of `--server-pids` are read
//! at the start and the end of the measured window. With `--calls N` instead of
//! `--seconds`, exactly N calls are made, none left out (for counts per call).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use polycall_core::{Call, Payload};
use polycall_net::{Channel, ChannelConfig};

use crate::nats_peer::NatsConn;
use crate::raw::RawConn;
use crate::tonic_peer::TonicConn;
use crate::{Args, Ctx, Fail, cpu_seconds, minor_faults, payload};

enum Client {
    Raw(Vec<RawConn>),
    Polycall(Channel),
    Tonic(Vec<TonicConn>),
    Nats(Vec<NatsConn>),
}

impl Client {
    async fn open(peer: &str, ep: &str, connections: usize) -> Result<Client, Fail> {
        Ok(match peer {
            "raw" => {
                let mut v = Vec::new();
                for _ in 0..connections {
                    v.push(RawConn::open(ep).await?);
                }
                Client::Raw(v)
            }
            "polycall" => {
                let mut config = ChannelConfig::default();
                config.pool.connections = connections;
                config.connection.proto.compression.candidates = vec![];
                let ch = Channel::with_config(ep.parse().ctx("--endpoint")?, config)
                    .await
                    .ctx("connecting the polycall channel")?;
                // Open every pooled connection before the warm-up.
                let mut warm = Vec::new();
                for _ in 0..connections * 4 {
                    let c = ch.clone();
                    let call = Call::new(crate::polycall::METHOD, Payload::empty())
                        .ctx("building the call")?;
                    warm.push(tokio::spawn(async move { c.call(call).await }));
                }
                for w in warm {
                    w.await.ctx("warm-up task")?.ctx("warm-up call")?;
                }
                Client::Polycall(ch)
            }
            "tonic" => {
                let mut v = Vec::new();
                for _ in 0..connections {
                    v.push(TonicConn::open(ep).await?);
                }
                Client::Tonic(v)
            }
            "nats" => {
                let mut v = Vec::new();
                for _ in 0..connections {
                    v.push(NatsConn::open(ep).await?);
                }
                Client::Nats(v)
            }
            other => {
                return Err(Fail::new(
                    "--peer",
                    format!("{other:?} is none of raw, polycall, tonic, nats"),
                ));
            }
        })
    }

    /// One call on the connection for task `i`; returns the reply's payload length.
    async fn call(&self, i: usize, payload: &Bytes) -> Result<usize, Fail> {
        match self {
            Client::Raw(c) => c[i % c.len()].call(payload.clone()).await,
            Client::Polycall(ch) => {
                let call = Call::new(crate::polycall::METHOD, Payload::raw(payload.clone()))
                    .ctx("building the call")?;
                Ok(ch.call(call).await.ctx("polycall call")?.payload.len())
            }
            Client::Tonic(c) => c[i % c.len()].call(payload.clone()).await,
            Client::Nats(c) => c[i % c.len()].call(payload.clone()).await,
        }
    }
}

fn histogram() -> Result<Histogram<u64>, Fail> {
    Histogram::new_with_bounds(1, 60_000_000, 3).ctx("creating a histogram")
}

/// Runs the load and prints one JSON line of results.
pub async fn run(args: &Args) -> Result<(), Fail> {
    let peer = args
        .get("--peer")
        .or_else(|| args.get("--kind"))
        .ok_or_else(|| Fail::new("argument --peer", "missing: raw|polycall|tonic|nats"))?
        .to_owned();
    let ep = args.need("--endpoint")?;
    let payload_len: usize = args.parse("--payload")?;
    let concurrency: usize = args.parse("--concurrency")?;
    let connections: usize = args.parse("--connections")?;
    // `--calls N`: exactly N calls in all, no warm-up, however long they take (what an
    // allocation count needs); else calls for `--seconds` after a warm-up.
    let fixed: Option<u64> = match args.get("--calls") {
        Some(_) => Some(args.parse("--calls")?),
        None => None,
    };
    let seconds: f64 = match fixed {
        Some(_) => 24.0 * 3600.0,
        None => args.parse("--seconds")?,
    };
    let warmup = match (fixed, args.get("--warmup")) {
        (Some(_), _) => 0.0,
        (None, Some(_)) => args.parse::<f64>("--warmup")?,
        (None, None) => (seconds / 5.0).clamp(0.2, 1.0),
    };
    // The calls still to start (only with `--calls`: no shared counter otherwise).
    let left = fixed.map(|n| Arc::new(AtomicU64::new(n)));
    if concurrency == 0 || connections == 0 || seconds.is_nan() || seconds <= 0.0 {
        return Err(Fail::new(
            "load",
            "--concurrency, --connections and --seconds must be positive",
        ));
    }
    let server_pids: Vec<u32> = match args.get("--server-pids") {
        Some(list) => list
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().ctx("--server-pids"))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let server_cpu = || {
        server_pids
            .iter()
            .map(|&p| cpu_seconds(Some(p)))
            .sum::<f64>()
    };
    let server_faults = || {
        server_pids
            .iter()
            .map(|&p| minor_faults(Some(p)))
            .sum::<u64>()
    };
    let body = payload(payload_len);
    let client = Arc::new(Client::open(&peer, ep, connections).await?);

    let start = Instant::now() + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (client, body, left) = (client.clone(), body.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut calls = 0u64;
            loop {
                let t = Instant::now();
                let out_of_calls = left.as_ref().is_some_and(|l| {
                    l.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                });
                if t >= end || out_of_calls {
                    break;
                }
                let n = client.call(i, &body).await?;
                if n != body.len() {
                    return Err(Fail::new(
                        "checking a reply",
                        format!("{n} bytes came back for {} sent", body.len()),
                    ));
                }
                if t >= start {
                    calls += 1;
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                }
            }
            Ok::<_, Fail>((calls, h))
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let (cpu0, server_cpu0) = (cpu_seconds(None), server_cpu());
    let (faults0, server_faults0) = (minor_faults(None), server_faults());
    let mut total = histogram()?;
    let mut calls = 0;
    for t in tasks {
        let (n, h) = t.await.ctx("a load task")??;
        calls += n;
        total.add(h).ctx("merging histograms")?;
    }
    // From the window's start (calls are counted from it) to the last reply.
    let elapsed = start.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds(None) - cpu0;
    let server_cpu = server_cpu() - server_cpu0;
    let cpu = client_cpu + server_cpu;
    let per_call = |n: u64| n as f64 / calls.max(1) as f64;
    let client_faults = per_call(minor_faults(None).saturating_sub(faults0));
    let server_faults = per_call(server_faults().saturating_sub(server_faults0));
    println!(
        "{}",
        serde_json::json!({
            "peer": peer, "payload": payload_len, "concurrency": concurrency,
            "connections": connections,
            "calls": calls, "seconds": elapsed, "warmup_s": warmup,
            "calls_per_sec": calls as f64 / elapsed,
            "p50_us": total.value_at_quantile(0.5), "p99_us": total.value_at_quantile(0.99),
            "p999_us": total.value_at_quantile(0.999), "max_us": total.max(),
            "client_cpu_s": client_cpu, "server_cpu_s": server_cpu,
            "calls_per_cpu_s": if cpu > 0.0 { calls as f64 / cpu } else { 0.0 },
            "client_faults_per_call": client_faults, "server_faults_per_call": server_faults,
        })
    );
    Ok(())
}
