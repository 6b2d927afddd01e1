//! Memory of the runtime: resident set size idle, and what 1,000 idle connections add.
//! Runs the real `polycall run` binary and reads its RSS from /proc.
//!
//! `cargo xtask bench memory` (or `cargo bench -p polycall-cli --bench memory`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polycall::net::{Channel, Endpoint};
use polycall::{Call, Payload};

const CONNECTIONS: usize = 1000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is readable");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("polycall-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ep_file = dir.join("endpoint");
    let mut child = Command::new(env!("CARGO_BIN_EXE_polycall"))
        .args([
            "--quiet",
            "run",
            "--endpoint",
            "127.0.0.1:0",
            "--endpoint-file",
        ])
        .arg(&ep_file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("polycall runs");
    let started = Instant::now();
    let endpoint: Endpoint = loop {
        if let Ok(t) = std::fs::read_to_string(&ep_file)
            && t.ends_with('\n')
        {
            break t.trim().parse().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the runtime did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let start-up settle, and serve one call so lazily built parts exist.
    let first = Channel::connect(endpoint.clone()).await.unwrap();
    first
        .call(Call::new("sys.ping", Payload::empty()).unwrap())
        .await
        .unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(child.id());

    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let c = Channel::connect(endpoint.clone()).await.unwrap();
        c.call(Call::new("sys.ping", Payload::empty()).unwrap())
            .await
            .unwrap();
        channels.push(c);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let with_conns = rss_kib(child.id());
    let health = channels[0]
        .call(Call::new("sys.health", Payload::empty()).unwrap())
        .await
        .unwrap();
    let health: serde_json::Value = health.payload.to_json().unwrap();
    drop(channels);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let added = with_conns.saturating_sub(idle);
    let per_conn = added as f64 / CONNECTIONS as f64;
    let idle_ok = idle <= 20 * 1024;
    let added_ok = added <= 32 * 1024;
    println!("| measure | value | target | verdict |");
    println!("|---|---|---|---|");
    println!(
        "| runtime RSS idle (after one call) | {:.1} MiB | ≤ 20 MiB | {} |",
        idle as f64 / 1024.0,
        if idle_ok { "met" } else { "MISSED" }
    );
    println!(
        "| RSS added by {CONNECTIONS} idle connections (each after one call) | {:.1} MiB ({per_conn:.1} KiB each) | ≤ 32 MiB | {} |",
        added as f64 / 1024.0,
        if added_ok { "met" } else { "MISSED" }
    );
    println!(
        "(runtime counted {} connections at the second reading)",
        health["connections"]
    );
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out).unwrap();
    let json = serde_json::json!({
        "idle_rss_kib": idle, "rss_with_connections_kib": with_conns, "connections": CONNECTIONS,
        "added_kib": added, "per_connection_kib": per_conn, "idle_ok": idle_ok, "added_ok": added_ok,
    });
    std::fs::write(out.join("memory.json"), format!("{json:#}\n")).unwrap();
}
