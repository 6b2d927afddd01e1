//! `cargo xtask bench forward`: a call forwarded between two runtimes against a local
//! routed call, in one run.
//!
//! - local: client → `polycall run` → provider (`bench.echo`), as `bench rpc`'s
//!   `routed`;
//! - forwarded: client → runtime A → runtime B → provider: A and B find each other
//!   through static seeds (`--discover static:…`), the provider is connected to B only,
//!   so A forwards every call to B.
//!
//! Both get the same closed-loop load (`polycall-bench load`: 64 B payloads, 16 calls in
//! flight on one connection, `--seconds` per measurement), the order alternating
//! between rounds; medians are reported with the ratio forwarded / local. A forwarded
//! call crosses one more runtime and one more loopback hop, so about half the local
//! rate is its expected ceiling.
//!
//! ```text
//! cargo xtask bench forward [--quick] [--rounds R] [--seconds S]
//! ```
//!
//! Writes `target/bench/forward.md` and `target/bench/forward.json`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::bench_procs::{Proc, arg, loadavg, median_of, spawn, wait_ready, write_report};
use crate::bench_rpc::{Mode, run_cell, start_system};
use crate::{BenchProcesses, build_bench_processes};

/// 64 B payloads, 16 in flight, one connection.
const CELL: (usize, usize, usize) = (64, 16, 1);

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runtimes A and B discovering each other, the provider on B; A's endpoint once A
/// forwards `bench.echo`.
fn start_forwarded(p: &BenchProcesses, round: usize) -> Result<(Vec<Proc>, String)> {
    let (pa, pb) = (free_port()?, free_port()?);
    let (ea, eb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let mut procs = Vec::new();
    for (name, own, other) in [("b", &eb, &ea), ("a", &ea, &eb)] {
        let dir = p.tmp.join(format!("forward-{round}-{name}"));
        std::fs::create_dir_all(&dir)?;
        let ready = dir.join("endpoint");
        let mut c = Command::new(&p.polycall);
        c.env("POLYCALL_LOG", "warn")
            .args(["--quiet", "run", "--endpoint", own, "--endpoint-file"])
            .arg(&ready)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args([
                "--discover",
                &format!("static:{other}"),
                "--discover-name",
                name,
            ]);
        procs.push(spawn(
            &format!("polycall run ({name})"),
            c,
            &dir.join("log"),
        )?);
        wait_ready(&ready, &mut procs)?;
    }
    let provided = p.tmp.join(format!("forward-{round}-provider.ready"));
    let _ = std::fs::remove_file(&provided);
    let mut c = Command::new(&p.bench);
    c.args(["provide", "--runtime", &eb, "--ready"])
        .arg(&provided);
    procs.push(spawn(
        "provide",
        c,
        &p.tmp.join(format!("forward-{round}-provider.log")),
    )?);
    wait_ready(&provided, &mut procs)?;
    // A forwards once its check of B has seen the provider's method.
    let started = Instant::now();
    loop {
        let out = Command::new(&p.polycall)
            .args([
                "--quiet",
                "--timeout-ms",
                "1000",
                "call",
                "bench.echo",
                "--endpoint",
                &ea,
            ])
            .output()?;
        if out.status.success() {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "runtime A does not forward bench.echo to B after 20 s: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((procs, ea))
}

/// Runs the benchmark.
pub(crate) fn bench_forward(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = arg(args, "--rounds", if quick { 1 } else { 3 })?;
    let seconds: f64 = arg(args, "--seconds", if quick { 2.0 } else { 5.0 })?;
    if rounds == 0 || seconds <= 0.0 {
        bail!("--rounds and --seconds must be above 0");
    }
    let p = build_bench_processes("forward")?;
    let mut rows = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            ["local", "forwarded"]
        } else {
            ["forwarded", "local"]
        };
        for system in order {
            let (mut procs, endpoint) = match system {
                "local" => start_system("routed", Mode::Default, &p)?,
                _ => start_forwarded(&p, round)?,
            };
            let pids: Vec<String> = procs.iter().map(|p| p.pid().to_string()).collect();
            let mut v = run_cell(
                &p,
                Mode::Default,
                "routed",
                &endpoint,
                &pids.join(","),
                CELL,
                seconds,
            )
            .with_context(|| format!("measuring {system}"))?;
            for proc in &mut procs {
                proc.check_alive()?;
            }
            v["system"] = json!(system);
            v["round"] = json!(round);
            eprintln!("round {round} {system}: {v}");
            rows.push(v);
        }
    }
    let pick = |system: &str, field: &str| median_of(&rows, system, field);
    let (fw, lo) = (
        pick("forwarded", "calls_per_sec"),
        pick("local", "calls_per_sec"),
    );
    let ratio = fw / lo;
    let md = format!(
        "# Forwarding benchmark\n\n`cargo xtask bench forward{}`: `polycall-bench load`, 64 B \
         payloads, 16 calls in flight on 1 connection, {seconds} s per measurement, medians of \
         {rounds} round(s). Load average at the end: {:.2}.\n\n\
         | path | calls/s | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|\n\
         | forwarded: client → runtime A → runtime B → provider | {fw:.0} | {:.0} | {:.0} |\n\
         | local: client → runtime → provider | {lo:.0} | {:.0} | {:.0} |\n\n\
         Ratio forwarded / local: {ratio:.2}×.\n",
        if args.is_empty() {
            String::new()
        } else {
            format!(" {}", args.join(" "))
        },
        loadavg(),
        pick("forwarded", "p50_us"),
        pick("forwarded", "p99_us"),
        pick("local", "p50_us"),
        pick("local", "p99_us"),
    );
    write_report("forward", &md, &json!({"rows": rows, "ratio": ratio}))?;
    Ok(())
}
