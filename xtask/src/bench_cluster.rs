//! `cargo xtask bench cluster`: replicated writes per second and their latency on a
//! 3-node polycall cluster beside a 3-node etcd cluster (Debian's `etcd-server`), both
//! on loopback, both fsyncing their raft log before acknowledging, with 1, 16 and 64
//! concurrent writers, in one run.
//!
//! - polycall: three `polycall run --node-id N --cluster …` (release build, defaults:
//!   heartbeat 100 ms, election 500 ms), a `register` machine; a write is
//!   `state.register.fire` (`set`, a 64-byte value by default) on the writer's own instance.
//! - etcd: three `etcd` members (`--initial-cluster-state new`, defaults otherwise); a
//!   write is `KV.Put` of a value of the same size at the writer's own key, over gRPC.
//!
//! Writers are spread round-robin over the three nodes on both systems (a follower
//! forwards to its leader). Every measurement starts from a fresh cluster (empty data
//! directories), and the order of the two systems alternates between rounds. The load
//! generator (`polycall-bench cluster-load`) prints one JSON line per measurement.
//!
//! ```text
//! cargo xtask bench cluster [--quick] [--rounds R] [--seconds S] [--writers 1,16,64] [--value-size N]
//! ```
//!
//! Writes `target/bench/cluster.md` and `target/bench/cluster.json`. Target: polycall
//! ≥ 1× etcd's writes per second at 64 writers, p99 ≤ etcd's.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_procs::{Proc, loadavg, median, spawn, wait_ready};
use crate::{BenchProcesses, ensure_apt, root};

/// The machine every write fires a transition of (shared with the cluster tests).
const REGISTER: &str = include_str!("../../crates/polycall-cli/tests/fixtures/register.toml");

struct Options {
    rounds: usize,
    seconds: f64,
    warmup: f64,
    writers: Vec<usize>,
    value_size: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let quick = args.iter().any(|a| a == "--quick");
        let get = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let mut o = Options {
            rounds: if quick { 1 } else { 3 },
            seconds: if quick { 3.0 } else { 10.0 },
            warmup: if quick { 1.0 } else { 2.0 },
            writers: vec![1, 16, 64],
            value_size: 64,
        };
        if let Some(r) = get("--rounds") {
            o.rounds = r.parse().context("--rounds")?;
        }
        if let Some(s) = get("--seconds") {
            o.seconds = s.parse().context("--seconds")?;
        }
        if let Some(w) = get("--writers") {
            o.writers = w
                .split(',')
                .map(|n| n.parse().context("--writers"))
                .collect::<Result<_>>()?;
        }
        if let Some(v) = get("--value-size") {
            o.value_size = v.parse().context("--value-size")?;
        }
        if o.rounds == 0 || o.writers.is_empty() {
            bail!("--rounds and --writers need at least one");
        }
        Ok(o)
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running 3-node cluster: its processes and the client endpoints.
struct Running {
    _procs: Vec<Proc>,
    endpoints: Vec<String>,
    pids: Vec<u32>,
}

fn start_polycall(p: &BenchProcesses, dir: &Path) -> Result<Running> {
    std::fs::create_dir_all(dir.join("machines"))?;
    std::fs::write(dir.join("machines/register.toml"), REGISTER)?;
    let endpoints: Vec<String> = (0..3)
        .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
        .collect::<Result<_>>()?;
    let members = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for id in 1..=3 {
        let ready = dir.join(format!("node-{id}.endpoint"));
        let mut cmd = Command::new(&p.polycall);
        cmd.env("POLYCALL_LOG", "warn")
            .args(["run", "--node-id", &id.to_string(), "--cluster", &members])
            .arg("--state-dir")
            .arg(dir.join(format!("node-{id}")))
            .arg("--machines")
            .arg(dir.join("machines"))
            .arg("--endpoint-file")
            .arg(&ready);
        procs.push(spawn(
            &format!("polycall node {id}"),
            cmd,
            &dir.join(format!("node-{id}.log")),
        )?);
        wait_ready(&ready, &mut procs)?;
    }
    // Ready when a leader is known and answers.
    let started = Instant::now();
    loop {
        let out = Command::new(&p.polycall)
            .args([
                "--format",
                "json",
                "cluster",
                "status",
                "--endpoint",
                &endpoints[0],
            ])
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["data"]["leader"].is_u64() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the polycall cluster elected no leader in 30 s: {v}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids = procs.iter().map(Proc::pid).collect();
    Ok(Running {
        _procs: procs,
        endpoints,
        pids,
    })
}

fn start_etcd(dir: &Path) -> Result<Running> {
    let client: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let peer: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let initial = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for i in 0..3 {
        let mut cmd = Command::new("etcd");
        cmd.args([
            "--name",
            &format!("e{i}"),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", client[i]),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{}", client[i]),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", peer[i]),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", peer[i]),
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "polycall-bench",
            "--logger",
            "zap",
            "--log-level",
            "error",
        ])
        .arg("--data-dir")
        .arg(dir.join(format!("e{i}")));
        procs.push(spawn(
            &format!("etcd member {i}"),
            cmd,
            &dir.join(format!("e{i}.log")),
        )?);
    }
    let endpoints: Vec<String> = client.iter().map(|c| format!("127.0.0.1:{c}")).collect();
    let started = Instant::now();
    loop {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(","), "endpoint", "health"])
            .output()?;
        if out.status.success() {
            break;
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the etcd cluster was not healthy in 30 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pids = procs.iter().map(Proc::pid).collect();
    Ok(Running {
        _procs: procs,
        endpoints,
        pids,
    })
}

fn measure(
    p: &BenchProcesses,
    o: &Options,
    peer: &str,
    writers: usize,
    dir: &Path,
) -> Result<Value> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let running = match peer {
        "polycall" => start_polycall(p, dir)?,
        _ => start_etcd(dir)?,
    };
    let out = Command::new(&p.bench)
        .args([
            "cluster-load",
            "--peer",
            peer,
            "--endpoints",
            &running.endpoints.join(","),
            "--writers",
            &writers.to_string(),
            "--value-size",
            &o.value_size.to_string(),
            "--seconds",
            &o.seconds.to_string(),
            "--warmup",
            &o.warmup.to_string(),
        ])
        .output()
        .context("running polycall-bench cluster-load")?;
    if !out.status.success() {
        bail!(
            "cluster-load against {peer} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let mut v: Value = serde_json::from_str(line.trim()).context("cluster-load's JSON line")?;
    v["server_pids"] = json!(running.pids);
    v["loadavg"] = json!(loadavg());
    drop(running);
    let _ = std::fs::remove_dir_all(dir);
    Ok(v)
}

/// Runs the benchmark.
pub(crate) fn bench_cluster(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    ensure_apt("etcd", "etcd-server")?;
    ensure_apt("etcdctl", "etcd-client")?;
    let p = crate::bench_procs::build_bench_processes("cluster")?;
    let mut rows: Vec<Value> = Vec::new();
    for round in 0..o.rounds {
        for &w in &o.writers {
            let order: [&str; 2] = if round % 2 == 0 {
                ["polycall", "etcd"]
            } else {
                ["etcd", "polycall"]
            };
            for peer in order {
                let v = measure(&p, &o, peer, w, &p.tmp.join(format!("{peer}-{w}-{round}")))?;
                eprintln!(
                    "round {} {peer:>8} writers {w:>3}: {:>8.0} writes/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
                    round + 1,
                    v["writes_per_s"].as_f64().unwrap_or(0.0),
                    v["p50_us"],
                    v["p99_us"],
                    v["errors"]
                );
                rows.push(v);
            }
        }
    }
    let pick = |peer: &str, w: usize, field: &str| {
        median(
            rows.iter()
                .filter(|r| r["peer"] == peer && r["writers"] == w)
                .filter_map(|r| r[field].as_f64())
                .collect(),
        )
    };
    let mut md = format!(
        "# Cluster benchmark\n\n`cargo xtask bench cluster{}`: 3 nodes on loopback each, \
         {}-byte values, {} s per measurement after {} s of warm-up, medians of {} round(s). \
         Load average at the end: {:.2}.\n\n\
         | writers | polycall writes/s | etcd writes/s | ratio | polycall p50 / p99 (µs) | etcd p50 / p99 (µs) |\n\
         |---:|---:|---:|---:|---:|---:|\n",
        if args.is_empty() {
            String::new()
        } else {
            format!(" {}", args.join(" "))
        },
        o.value_size,
        o.seconds,
        o.warmup,
        o.rounds,
        loadavg()
    );
    let mut summary = Vec::new();
    for &w in &o.writers {
        let (pw, ew) = (
            pick("polycall", w, "writes_per_s"),
            pick("etcd", w, "writes_per_s"),
        );
        let ratio = pw / ew;
        md.push_str(&format!(
            "| {w} | {pw:.0} | {ew:.0} | {ratio:.2}× | {:.0} / {:.0} | {:.0} / {:.0} |\n",
            pick("polycall", w, "p50_us"),
            pick("polycall", w, "p99_us"),
            pick("etcd", w, "p50_us"),
            pick("etcd", w, "p99_us"),
        ));
        summary.push(json!({
            "writers": w,
            "polycall_writes_per_s": pw,
            "etcd_writes_per_s": ew,
            "ratio": ratio,
            "polycall_p99_us": pick("polycall", w, "p99_us"),
            "etcd_p99_us": pick("etcd", w, "p99_us"),
        }));
    }
    if let Some(s) = summary.iter().find(|s| s["writers"] == 64) {
        let ratio = s["ratio"].as_f64().unwrap_or(0.0);
        let (pp, ep) = (
            s["polycall_p99_us"].as_f64().unwrap_or(f64::NAN),
            s["etcd_p99_us"].as_f64().unwrap_or(f64::NAN),
        );
        md.push_str(&format!(
            "\nTarget at 64 writers: ≥ 1× etcd's writes/s — {ratio:.2}× ({}); p99 ≤ etcd's — {pp:.0} µs vs {ep:.0} µs ({}).\n",
            if ratio >= 1.0 { "met" } else { "not met" },
            if pp <= ep { "met" } else { "not met" },
        ));
    }
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("cluster.md"), &md).context("writing target/bench/cluster.md")?;
    std::fs::write(
        out_dir.join("cluster.json"),
        serde_json::to_string_pretty(&json!({"rows": rows, "summary": summary}))?,
    )
    .context("writing target/bench/cluster.json")?;
    println!("{md}");
    eprintln!("written: target/bench/cluster.md, target/bench/cluster.json");
    Ok(())
}
