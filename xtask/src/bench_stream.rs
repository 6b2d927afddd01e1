//! `cargo xtask bench stream`: one server stream, read to its end, in every system and
//! both scheduling modes, in one run:
//!
//! - `messages`: 64-byte messages per second on one stream,
//! - `transfer`: 1 GiB in 256 KiB messages, bytes per second.
//!
//! Systems: the raw TCP streamer (4-byte length + payload frames, written in 256 KiB
//! batches: the limit of any framed stream here), polycall direct (a `Server`'s
//! `bench.stream`, read one message at a time and, a second row, in batches with
//! `Streaming::next_batch`), polycall routed (client → `polycall run` → provider), and
//! tonic server streaming. Each server and the client run in their own processes; each cell is
//! measured `--runs` times (3; 1 with `--quick`) and the median is reported.
//!
//! ```text
//! cargo xtask bench stream [--quick] [--pinned | --unpinned | --both] [--runs N]
//! ```
//!
//! Targets (docs/benchmarks.md): messages/s ≥ 2× tonic; transfer ≥ 0.9× raw TCP; both
//! for polycall direct, in each mode. Writes `target/bench/stream.md` and `.json`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_procs::loadavg;
use crate::bench_rpc::{Mode, pinned, start_system};
use crate::{ensure_apt, root};

/// (row, server started, client peer, label). Both polycall direct rows read the same
/// server: one message at a time (`StreamExt::next`, a `Payload` each) and in batches
/// (`Streaming::next_batch`, messages borrowed).
const SYSTEMS: [(&str, &str, &str, &str); 5] = [
    ("raw-stream", "raw-stream", "raw", "raw TCP stream"),
    ("direct", "direct", "polycall", "polycall direct (`next`)"),
    (
        "direct-batch",
        "direct",
        "polycall-batch",
        "polycall direct (`next_batch`)",
    ),
    (
        "routed",
        "routed",
        "polycall",
        "polycall routed (via runtime)",
    ),
    ("tonic", "tonic", "tonic", "tonic (gRPC server stream)"),
];

/// (workload, message size, message count).
fn workloads(quick: bool) -> [(&'static str, usize, u64); 2] {
    [
        ("messages", 64, if quick { 5_000_000 } else { 20_000_000 }),
        ("transfer", 256 * 1024, 4096), // 1 GiB
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn run_once(
    p: &crate::BenchProcesses,
    mode: Mode,
    peer: &str,
    endpoint: &str,
    pids: &str,
    size: usize,
    count: u64,
) -> Result<Value> {
    let (_, pin) = mode.pins();
    let mut cmd = pinned(&p.bench, pin);
    cmd.args(["stream-load", "--peer", peer, "--endpoint", endpoint])
        .args(["--count", &count.to_string(), "--size", &size.to_string()])
        .args(["--server-pids", pids])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning stream-load")?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("stream-load did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "stream-load failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading stream-load's JSON line")
}

pub(crate) fn bench_stream(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let has = |f: &str| args.iter().any(|a| a == f);
    let modes = match (has("--pinned"), has("--unpinned")) {
        (true, false) => vec![Mode::Pinned],
        (false, true) => vec![Mode::Default],
        _ => vec![Mode::Default, Mode::Pinned],
    };
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args
            .get(i + 1)
            .context("--runs N")?
            .parse()
            .context("--runs N")?,
        None if quick => 1,
        None => 3,
    };
    if modes.contains(&Mode::Pinned) {
        ensure_apt("taskset", "util-linux")?;
    }
    let p = crate::build_bench_processes("stream-tmp")?;
    let mut cells = Vec::new();
    let mut loads = Vec::new();
    for &mode in &modes {
        loads.push(json!({"mode": mode.name(), "loadavg_1m_at_start": loadavg()}));
        eprintln!("\n== mode: {}", mode.describe());
        for (system, server, peer, label) in SYSTEMS {
            let (mut procs, endpoint) = start_system(server, mode, &p)
                .with_context(|| format!("starting {server} ({})", mode.name()))?;
            let pids = procs
                .iter()
                .map(|x| x.pid().to_string())
                .collect::<Vec<_>>()
                .join(",");
            for (workload, size, count) in workloads(quick) {
                let mut samples = Vec::new();
                for _ in 0..runs {
                    procs.iter_mut().try_for_each(|x| x.check_alive())?;
                    samples.push(run_once(&p, mode, peer, &endpoint, &pids, size, count)?);
                }
                let pick = |k: &str| median(samples.iter().filter_map(|s| s[k].as_f64()).collect());
                let cell = json!({
                    "mode": mode.name(), "system": system, "label": label, "workload": workload,
                    "size": size, "count": count, "runs": runs,
                    "messages_per_s": pick("messages_per_s"),
                    "bytes_per_s": pick("bytes_per_s"),
                    "client_cpu_s": pick("client_cpu_s"),
                    "server_cpu_s": pick("server_cpu_s"),
                    "samples": samples,
                });
                eprintln!(
                    "{label:>32} {workload:>8}: {:>12.0} msg/s {:>8.1} MB/s",
                    cell["messages_per_s"].as_f64().unwrap_or(f64::NAN),
                    cell["bytes_per_s"].as_f64().unwrap_or(f64::NAN) / 1e6
                );
                cells.push(cell);
            }
        }
    }
    let find = |mode: &str, system: &str, workload: &str, key: &str| {
        cells
            .iter()
            .find(|c| c["mode"] == mode && c["system"] == system && c["workload"] == workload)
            .and_then(|c| c[key].as_f64())
            .unwrap_or(f64::NAN)
    };
    let mut md = format!(
        "# Streaming benchmark\n\n`cargo xtask bench stream{}`: one server stream read to its end; \
         median of {runs} run(s) per cell. Machine load (1 min) at the start of each mode: {}.\n",
        if quick { " --quick" } else { "" },
        loads
            .iter()
            .map(|l| format!(
                "{} {:.2}",
                l["mode"].as_str().unwrap_or("?"),
                l["loadavg_1m_at_start"].as_f64().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut targets = Vec::new();
    for &mode in &modes {
        let m = mode.name();
        md.push_str(&format!(
            "\n## Mode: {}\n\n| system | 64 B messages/s | × raw | 1 GiB transfer MB/s | × raw | client CPU s (transfer) | server CPU s (transfer) |\n|---|---:|---:|---:|---:|---:|---:|\n",
            mode.describe()
        ));
        let raw_msgs = find(m, "raw-stream", "messages", "messages_per_s");
        let raw_bytes = find(m, "raw-stream", "transfer", "bytes_per_s");
        for (system, _, _, label) in SYSTEMS {
            let msgs = find(m, system, "messages", "messages_per_s");
            let bytes = find(m, system, "transfer", "bytes_per_s");
            md.push_str(&format!(
                "| {label} | {msgs:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
                msgs / raw_msgs,
                bytes / 1e6,
                bytes / raw_bytes,
                find(m, system, "transfer", "client_cpu_s"),
                find(m, system, "transfer", "server_cpu_s"),
            ));
        }
        let direct_msgs = find(m, "direct", "messages", "messages_per_s");
        let batch_msgs = find(m, "direct-batch", "messages", "messages_per_s");
        let tonic_msgs = find(m, "tonic", "messages", "messages_per_s");
        let direct_bytes = find(m, "direct", "transfer", "bytes_per_s");
        for (what, ratio, goal) in [
            (
                "direct 64 B messages/s ≥ 2× tonic (`next`)",
                direct_msgs / tonic_msgs,
                2.0,
            ),
            (
                "direct 64 B messages/s ≥ 2× tonic (`next_batch`)",
                batch_msgs / tonic_msgs,
                2.0,
            ),
            (
                "direct 1 GiB transfer ≥ 0.9× raw TCP",
                direct_bytes / raw_bytes,
                0.9,
            ),
        ] {
            let pass = ratio >= goal;
            targets.push(json!({"mode": m, "target": what, "ratio": ratio, "pass": pass}));
        }
    }
    md.push_str("\n## Targets\n\n| mode | target | ratio | result |\n|---|---|---:|---|\n");
    for t in &targets {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {} |\n",
            t["mode"].as_str().unwrap_or("?"),
            t["target"].as_str().unwrap_or("?"),
            t["ratio"].as_f64().unwrap_or(f64::NAN),
            if t["pass"] == true { "PASS" } else { "FAIL" }
        ));
    }
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("stream.md"), &md)?;
    std::fs::write(
        dir.join("stream.json"),
        serde_json::to_string_pretty(&json!({"cells": cells, "targets": targets, "loads": loads}))?,
    )?;
    println!("{md}");
    eprintln!("wrote target/bench/stream.md and stream.json");
    Ok(())
}
