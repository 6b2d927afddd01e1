//! polycall's own automation.
//!
//! ```text
//! cargo xtask ci                      everything CI checks: fmt, clippy, tests, doctests, ring guard,
//!                                     the facade's feature matrix
//! cargo xtask features                the feature matrix alone
//! cargo xtask api                     API rules alone (no public fn returns Result<_, String>)
//! cargo xtask bench proto [--quick]   framing and compression benchmarks → target/bench/
//! cargo xtask bench memory            runtime RSS idle and with 1,000 idle connections
//! cargo xtask bench tls [--quick]      handshake cost and call throughput, TLS against plain TCP
//! cargo xtask bench priority          critical calls beside saturating low-priority load
//! cargo xtask bench rpc [--quick] [--pinned | --unpinned] [--seconds S] [--peers LIST]
//!                                     calls/s, latency and CPU: polycall direct and routed against raw
//!                                     TCP, tonic and nats-server; default and pinned scheduling
//! cargo xtask bench bindings [--seconds S]
//!                                     Python and Node client calls/s against the runtime beside Rust's
//! cargo xtask bench micro [--quick]   microbenchmarks: framing, compression choice, routing, writer
//! cargo xtask bench state [--quick] [--seconds S]  sync transitions/s (1 and 64 instances) beside raw redb commits/s
//! cargo xtask bench cluster [--quick] [--rounds R] [--seconds S] [--writers 1,16,64]
//!                                     replicated writes/s and p50/p99: 3 polycall nodes beside 3 etcd members
//! cargo xtask bench stall [--quick] [--seconds S]  event-loop stalls: sys.ping p50/p99 on one connection, idle
//!                                     and beside OPAQUE logins, HSM-signed TLS handshakes, brotli
//!                                     messages and a CPU-bound handler (target: p99 ≤ 3× idle)
//! cargo xtask fuzz [TARGET] [--runs N] [--seconds S]
//!                                     cargo-fuzz targets under fuzz/ (default: all, 1,000,000 runs each)
//! ```
//!
//! Each command installs the tools it needs when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod api_guard;
mod bench_allocs;
mod bench_bindings;
mod bench_cluster;
mod bench_forward;
mod bench_gateway;
mod bench_micro;
mod bench_procs;
mod bench_rpc;
mod bench_stall;
mod bench_stream;
mod features;
use bench_micro::bench_micro;
pub(crate) use bench_procs::{BenchProcesses, build_bench_processes};
use bench_rpc::bench_rpc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("features") => features::feature_matrix(),
        Some("api") => {
            api_guard::no_string_errors().and_then(|()| api_guard::configs_are_non_exhaustive())
        }
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask ci | bench proto|memory|priority|micro|state|stall [--quick] | bench rpc [--quick] [--pinned|--unpinned] [--seconds S] [--peers raw,direct,routed,routed-bare,tonic,nats] | bench allocs [--calls N] | bench stream [--quick] [--pinned|--unpinned] [--runs N] | bench cluster [--quick] [--rounds R] [--seconds S] [--writers 1,16,64] | fuzz [frame_decode|connection] [--runs N] [--seconds S]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs `cmd`, echoing it; fails when it fails.
fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n==> {what}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start {what}"))?;
    eprintln!(
        "<== {what}: {status} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn ensure_cargo_tool(subcommand: &str, krate: &str) -> Result<()> {
    if cargo()
        .args([subcommand, "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        return Ok(());
    }
    run(
        &format!("install {krate}"),
        cargo().args(["install", krate, "--locked"]),
    )
}

/// Installs a Debian package when its program is missing (tests use real foreign
/// clients: `openssl s_client` is the TLS 1.2 client the TLS tests must refuse). An
/// error when the install fails or the program is still missing: CI fails, it never
/// goes on to tests that would lack the tool.
fn ensure_apt(program: &str, package: &str) -> Result<()> {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if found() {
        return Ok(());
    }
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=300", "-q"]);
        c
    };
    // A failed update is not fatal by itself (the index may be recent enough); the
    // install that follows decides.
    let _ = run("apt-get update", apt().arg("update"));
    run(
        &format!("apt-get install {package}"),
        apt().args(["install", "-y", package]),
    )?;
    if !found() {
        bail!("apt-get installed {package}, but `{program}` is still not on the PATH");
    }
    Ok(())
}

fn ci() -> Result<()> {
    ensure_cargo_tool("nextest", "cargo-nextest")?;
    ensure_apt("openssl", "openssl")?;
    ensure_apt("python3", "python3")?;
    bench_bindings::ensure_pip("zstandard", "zstandard")?;
    ensure_apt("node", "nodejs")?; // the TypeScript binding's tests (bindings/typescript)
    ensure_apt("npm", "npm")?;
    ensure_apt("softhsm2-util", "softhsm2")?;
    ensure_apt("dot", "graphviz")?; // renders the state-machine DOT in a test
    ensure_apt("nats-server", "nats-server")?; // the NATS benchmark peer's test (polycall-bench)
    ensure_apt("prometheus", "prometheus")?; // scrapes the admin listener (polycall-cli tests/observe.rs)
    ensure_apt("chromium", "chromium")?; // opens the dashboard (headless, through playwright-core)
    ensure_apt("ip", "iproute2")?; // network namespaces for the cluster partition test (polycall-cli tests/cluster.rs)
    bench_bindings::ensure_pip("grpc", "grpcio")?; // the OTLP receiver of the cross-language trace test
    bench_bindings::ensure_pip("opentelemetry.proto", "opentelemetry-proto")?;
    ensure_apt("curl", "curl")?; // the HTTP gateway's tests (polycall-cli tests/gateway.rs)
    bench_bindings::ensure_pip("openapi_spec_validator", "openapi-spec-validator")?;
    bench_bindings::ensure_pip("schemathesis", "schemathesis")?; // fuzzes the gateway (tests/gateway.rs)
    ensure_apt("etcd", "etcd-server")?; // the discovery registry (polycall-cli tests/discovery.rs)
    ensure_apt("etcdctl", "etcd-client")?;
    ensure_apt("dnsmasq", "dnsmasq-base")?; // the DNS SRV registry (tests/discovery.rs)
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "cargo nextest run",
        cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]),
    )?;
    run(
        "cargo test --doc",
        cargo().args(["test", "--doc", "--workspace"]),
    )?;
    ring_guard()?;
    api_guard::no_string_errors()?;
    api_guard::configs_are_non_exhaustive()?;
    features::feature_matrix()?;
    eprintln!("\nxtask ci: all checks passed");
    Ok(())
}

/// Exactly one rustls crypto provider: `ring` must not be in the normal dependency graph
/// (with aws-lc-rs also present, rustls panics at run time).
fn ring_guard() -> Result<()> {
    eprintln!("\n==> ring guard");
    let out = cargo()
        .args(["tree", "--workspace", "-e", "normal", "-p", "ring"])
        .output()
        .context("cargo tree")?;
    if out.status.success() {
        bail!(
            "the crate `ring` is in the dependency graph; keep default-features = false on quinn, rcgen and \
             web-transport (see ../shared/DEPENDENCIES.md):\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    eprintln!("<== ring guard: ring is absent");
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    match args.first().map(String::as_str) {
        Some("proto") => bench_proto(quick),
        Some("memory") => run(
            "runtime memory benchmark",
            cargo().args(["bench", "-p", "polycall-cli", "--bench", "memory"]),
        ),
        Some("allocs") => bench_allocs::bench_allocs(&args[1..]),
        Some("bindings") => bench_bindings::bench_bindings(&args[1..]),
        Some("cluster") => bench_cluster::bench_cluster(&args[1..]),
        Some("forward") => bench_forward::bench_forward(&args[1..]),
        Some("gateway") => bench_gateway::bench_gateway(&args[1..]),
        Some("rpc") => bench_rpc(&args[1..]),
        Some("micro") => bench_micro(quick),
        Some("stall") => bench_stall::bench_stall(&args[1..]),
        Some("stream") => bench_stream::bench_stream(&args[1..]),
        Some("tls") => {
            let mut c = cargo();
            c.args(["bench", "-p", "polycall-net", "--bench", "tls", "--"]);
            if quick {
                c.arg("--quick");
            }
            run("TLS and authentication benchmark", &mut c)
        }
        Some("state") => {
            let mut c = cargo();
            c.args(["bench", "-p", "polycall-state", "--bench", "state", "--"]);
            c.args(&args[1..]);
            run("state machine persistence benchmark", &mut c)
        }
        Some("priority") => run(
            "priority benchmark",
            cargo().args(["bench", "-p", "polycall-net", "--bench", "priority"]),
        ),
        other => {
            bail!(
                "unknown bench {other:?}; available: proto, memory, priority, rpc, stream, micro, tls, state, stall, bindings, cluster, gateway, forward"
            )
        }
    }
}

fn bench_proto(quick: bool) -> Result<()> {
    let mut frames = cargo();
    frames.args(["bench", "-p", "polycall-proto", "--bench", "frames", "--"]);
    if quick {
        frames.arg("--quick");
    }
    run("framing benchmark (criterion)", &mut frames)?;
    let mut selector = cargo();
    selector.args(["bench", "-p", "polycall-proto", "--bench", "selector", "--"]);
    if quick {
        selector.arg("--quick");
    }
    run("adaptive compression benchmark", &mut selector)?;
    let table = frames_table()?;
    let out = root().join("target/bench/frames.md");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(&out, &table)?;
    println!("\n{table}");
    println!("written: {} and target/bench/selector.json", out.display());
    Ok(())
}

/// Encode + decode time per frame from criterion's estimates.
fn frames_table() -> Result<String> {
    let dir = root().join("target/criterion");
    let mut rows = Vec::new();
    for group in ["encode", "decode", "roundtrip"] {
        for size in ["64B", "4KiB", "256KiB"] {
            for crc in ["plain", "crc32c"] {
                let est = dir.join(format!("{group}/{size}_{crc}/new/estimates.json"));
                let Ok(text) = std::fs::read_to_string(&est) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let ns = v["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
                let bytes: f64 = match size {
                    "64B" => 64.0,
                    "4KiB" => 4096.0,
                    _ => 262_144.0,
                };
                rows.push(format!(
                    "| {group} | {size} | {crc} | {} | {:.2} GB/s |",
                    fmt_ns(ns),
                    bytes / ns
                ));
            }
        }
    }
    if rows.is_empty() {
        bail!("no criterion results under {}", dir.display());
    }
    Ok(format!(
        "| operation | payload | integrity | median time per frame | payload throughput |\n|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    ))
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

fn fuzz(args: &[String]) -> Result<()> {
    let mut runs: u64 = 1_000_000;
    let mut seconds: Option<u64> = None;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs N")?.parse().context("--runs N")?,
            "--seconds" => {
                seconds = Some(
                    it.next()
                        .context("--seconds S")?
                        .parse()
                        .context("--seconds S")?,
                )
            }
            t if !t.starts_with('-') => targets.push(t.to_owned()),
            other => bail!("unknown option {other}"),
        }
    }
    if targets.is_empty() {
        targets = vec!["frame_decode".into(), "connection".into()];
    }
    ensure_cargo_tool("fuzz", "cargo-fuzz")?;
    for t in targets {
        let corpus = root().join("fuzz/corpus").join(&t);
        std::fs::create_dir_all(&corpus)?;
        seed_corpus(&t, &corpus)?;
        let mut cmd = cargo();
        // cargo-fuzz needs nightly-only flags (-Zsanitizer); the machine has one stable
        // toolchain, which accepts them with RUSTC_BOOTSTRAP (a no-op on nightly).
        cmd.env("RUSTC_BOOTSTRAP", "1");
        cmd.args([
            "fuzz",
            "run",
            &t,
            "--",
            &format!("-runs={runs}"),
            "-max_len=8192",
            "-print_final_stats=1",
        ]);
        if let Some(s) = seconds {
            cmd.arg(format!("-max_total_time={s}"));
        }
        let started = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("cargo fuzz run {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let done = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("");
        let execs = log
            .lines()
            .find(|l| l.starts_with("stat::number_of_executed_units:"))
            .and_then(|l| l.split(':').nth(3).or_else(|| l.rsplit(':').next()))
            .map(str::trim)
            .unwrap_or("?");
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {t} failed ({}):\n{}",
                out.status,
                tail.join("\n")
            );
        }
        println!(
            "fuzz {t}: {execs} inputs executed without a crash in {:.0}s ({done})",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Seeds a target's corpus with the golden vectors, so fuzzing starts from valid frames.
fn seed_corpus(target: &str, dir: &Path) -> Result<()> {
    let path = root().join("tests/vectors/frames.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    for (i, v) in doc["vectors"].as_array().into_iter().flatten().enumerate() {
        let hex = v["hex"].as_str().unwrap_or_default();
        let mut bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|j| u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).ok())
            .collect();
        let crc = v["crc32c"].as_bool().unwrap_or(false);
        // First byte selects the mode: frame_decode bit 0 = crc; connection bit 1 = no crc.
        let mode = match target {
            "frame_decode" => u8::from(crc) | 2,
            _ => {
                if crc {
                    0
                } else {
                    2
                }
            }
        };
        bytes.insert(0, mode);
        std::fs::write(dir.join(format!("vector-{i:02}")), bytes)?;
    }
    Ok(())
}
