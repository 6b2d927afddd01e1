//! The processes of `cargo xtask bench stall`, run for a moment each: the direct server,
//! the pinger (idle and beside CPU-bound calls on its own connection) and the brotli
//! workload generator, each printing its JSON line. The figures are not judged.

use std::process::{Command, Output};

mod common;
use common::{BIN, start, tmp, wait_ready};

/// Starts `sub --listen 127.0.0.1:0 --ready F` and returns it with its endpoint.
fn serve(sub: &str) -> (common::Proc, String) {
    let ready = tmp(&format!("stall-{sub}.ready"));
    let p = start(&[
        sub,
        "--listen",
        "127.0.0.1:0",
        "--ready",
        ready.to_str().unwrap(),
    ]);
    let ep = wait_ready(&ready);
    (p, ep)
}

fn json(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

fn ping(ep: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["stall-ping", "--endpoint", ep, "--row", "test"])
        .args([
            "--seconds",
            "0.4",
            "--warmup",
            "0.1",
            "--interval-us",
            "1000",
        ])
        .args(extra)
        .output()
        .expect("run stall-ping");
    json(&out, "stall-ping")
}

#[test]
fn stall_processes_print_their_json_lines() {
    let (_server, ep) = serve("stall-serve");

    let idle = ping(&ep, &[]);
    assert_eq!(idle["row"], "test");
    assert_eq!(idle["tls"], false);
    assert_eq!(idle["spin_in_flight"], 0);
    assert_eq!(idle["errors"], 0, "{idle}");
    assert!(idle["pings"].as_u64().expect("pings") > 0, "{idle}");
    // CPU-bound calls on the pinger's own connection.
    let spun = ping(&ep, &["--spin", "2", "--spin-ms", "5"]);
    assert_eq!(spun["spin_in_flight"], 2);
    assert_eq!(spun["spin_ms"], 5);
    assert!(
        spun["spin_calls"].as_u64().expect("spin_calls") > 0,
        "{spun}"
    );
    assert!(spun["pings"].as_u64().expect("pings") > 0, "{spun}");

    let q = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    for v in [&idle, &spun] {
        assert!(q(v, "p50_us") >= 1, "{v}");
        assert!(q(v, "p50_us") <= q(v, "p90_us"), "{v}");
        assert!(q(v, "p90_us") <= q(v, "p99_us"), "{v}");
        assert!(q(v, "p99_us") <= q(v, "p999_us"), "{v}");
        assert!(q(v, "p999_us") <= q(v, "max_us"), "{v}");
        // Corrected for coordinated omission: more samples, none above the largest.
        assert!(q(v, "p99_corrected_us") <= q(v, "max_us"), "{v}");
        assert!(v["seconds"].as_f64().expect("seconds") >= 0.4, "{v}");
    }

    // The brotli generator against an echo server: it must really compress.
    let (_echo, echo_ep) = serve("serve-polycall");
    let out = Command::new(BIN)
        .args(["stall-load", "--workload", "brotli", "--endpoint", &echo_ep])
        .args(["--method", "bench.echo", "--size", "262144"])
        .args(["--concurrency", "2", "--seconds", "0.5"])
        .output()
        .expect("run stall-load");
    let load = json(&out, "stall-load");
    assert_eq!(load["workload"], "brotli");
    assert_eq!(load["concurrency"], 2);
    assert!(load["ops"].as_u64().expect("ops") > 0, "{load}");
    assert!(load["ops_per_sec"].as_f64().expect("ops/s") > 0.0, "{load}");
    assert!(load["cpu_s"].as_f64().expect("cpu_s") >= 0.0, "{load}");
    let ratio = load["wire_ratio"].as_f64().expect("wire_ratio");
    assert!(ratio > 0.0 && ratio < 0.9, "brotli was not used: {load}");

    // An unknown workload is refused.
    let out = Command::new(BIN)
        .args(["stall-load", "--workload", "gzip", "--endpoint", &echo_ep])
        .args(["--seconds", "0.1"])
        .output()
        .expect("run stall-load");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("none of opaque, tls, brotli, echo, cpu")
    );
}
