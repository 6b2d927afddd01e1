//! `cargo xtask bench gateway`: HTTP requests per second through the runtime's gateway
//! to `debug.echo`, beside a minimal hyper JSON echo, both driven by `wrk` (Debian) on
//! loopback in one run.
//!
//! - polycall: `polycall run --http` (release build, defaults), `POST /v1/debug/echo`:
//!   the request passes the gateway, the runtime's QoS stack and routing, and the echo
//!   built-in;
//! - peer: `polycall-bench serve-http-echo` (hyper, the same HTTP/1.1 and HTTP/2 stack),
//!   which answers each request with its body.
//!
//! Both get the same requests (a small JSON object, keep-alive, `--connections`
//! connections from one `wrk` thread), `--seconds` per measurement, the order of the two
//! alternating between rounds; medians are reported.
//!
//! ```text
//! cargo xtask bench gateway [--quick] [--rounds R] [--seconds S] [--connections C]
//! ```
//!
//! Writes `target/bench/gateway.md` and `target/bench/gateway.json`. Target: polycall ≥
//! 0.6× the peer's requests per second.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_procs::{Proc, arg, loadavg, median_of, spawn, wait_ready, write_report};
use crate::{build_bench_processes, ensure_apt};

const BODY: &str = r#"{"hello": "world", "n": 42, "tags": ["a", "b"]}"#;

struct Options {
    rounds: usize,
    seconds: u64,
    connections: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let quick = args.iter().any(|a| a == "--quick");
        let o = Options {
            rounds: arg(args, "--rounds", if quick { 1 } else { 3 })?,
            seconds: arg(args, "--seconds", if quick { 3 } else { 10 })?,
            connections: arg(args, "--connections", 16)?,
        };
        if o.rounds == 0 || o.seconds == 0 || o.connections == 0 {
            bail!("--rounds, --seconds and --connections must be above 0");
        }
        Ok(o)
    }
}

/// Runs `wrk` against `url`: requests per second and the latency percentiles it prints.
fn wrk(url: &str, script: &std::path::Path, o: &Options) -> Result<Value> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", o.connections),
            &format!("-d{}s", o.seconds),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let rps: f64 = field("Requests/sec:")
        .context("wrk printed no Requests/sec")?
        .parse()
        .context("Requests/sec")?;
    let micros = |v: Option<String>| {
        let v = v.unwrap_or_default();
        let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n,
            "ms" => n * 1e3,
            "s" => n * 1e6,
            _ => f64::NAN,
        }
    };
    // Non-2xx answers mean the measurement is of errors: refuse it.
    if let Some(bad) = field("Non-2xx or 3xx responses:") {
        bail!("{url} answered {bad} requests with errors:\n{text}");
    }
    Ok(json!({
        "requests_per_s": rps,
        "p50_us": micros(field("50%")),
        "p99_us": micros(field("99%")),
    }))
}

fn start(p: &crate::BenchProcesses, system: &str, round: usize) -> Result<(Proc, String)> {
    let dir = p.tmp.join(format!("{system}-{round}"));
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready");
    let (mut proc, path) = if system == "polycall" {
        let mut cmd = Command::new(&p.polycall);
        cmd.env("POLYCALL_LOG", "warn")
            .args(["run", "--endpoint", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--http-file")
            .arg(&ready)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--debug-methods");
        (
            spawn("polycall run --http", cmd, &dir.join("log"))?,
            "/v1/debug/echo",
        )
    } else {
        let mut cmd = Command::new(&p.bench);
        cmd.args(["serve-http-echo", "--listen", "127.0.0.1:0", "--ready"])
            .arg(&ready);
        (
            spawn("polycall-bench serve-http-echo", cmd, &dir.join("log"))?,
            "/echo",
        )
    };
    let addr = wait_ready(&ready, std::slice::from_mut(&mut proc))?;
    Ok((proc, format!("http://{addr}{path}")))
}

/// Runs the benchmark.
pub(crate) fn bench_gateway(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    ensure_apt("wrk", "wrk")?;
    let p = build_bench_processes("gateway")?;
    let script = p.tmp.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    let mut rows = Vec::new();
    for round in 0..o.rounds {
        let order = if round % 2 == 0 {
            ["polycall", "hyper"]
        } else {
            ["hyper", "polycall"]
        };
        for system in order {
            let (mut proc, url) = start(&p, system, round)?;
            // A short warm-up, not measured.
            wrk(&url, &script, &Options { seconds: 1, ..o })?;
            let mut v = wrk(&url, &script, &o)?;
            proc.check_alive()?;
            v["system"] = json!(system);
            v["round"] = json!(round);
            eprintln!("round {round} {system}: {v}");
            rows.push(v);
        }
    }
    let pick = |system: &str, field: &str| median_of(&rows, system, field);
    let (pr, hr) = (
        pick("polycall", "requests_per_s"),
        pick("hyper", "requests_per_s"),
    );
    let ratio = pr / hr;
    let md = format!(
        "# Gateway benchmark\n\n`cargo xtask bench gateway{}`: `wrk -t1 -c{}` for {} s per \
         measurement, a {}-byte JSON body, medians of {} round(s). Load average at the end: {:.2}.\n\n\
         | server | requests/s | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|\n\
         | polycall gateway → `debug.echo` | {pr:.0} | {:.0} | {:.0} |\n\
         | minimal hyper JSON echo | {hr:.0} | {:.0} | {:.0} |\n\n\
         Ratio: {ratio:.2}× (target ≥ 0.6×: {}).\n",
        if args.is_empty() {
            String::new()
        } else {
            format!(" {}", args.join(" "))
        },
        o.connections,
        o.seconds,
        BODY.len(),
        o.rounds,
        loadavg(),
        pick("polycall", "p50_us"),
        pick("polycall", "p99_us"),
        pick("hyper", "p50_us"),
        pick("hyper", "p99_us"),
        if ratio >= 0.6 { "met" } else { "not met" },
    );
    write_report("gateway", &md, &json!({"rows": rows, "ratio": ratio}))?;
    Ok(())
}
