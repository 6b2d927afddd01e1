//! The benchmark processes for real: each server subcommand in its own process on
//! loopback, the `load` client against it, and its JSON line read back. The figures
//! themselves are not judged (benchmarks measure, tests check behaviour).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_polycall-bench");

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn polycall-bench"),
    )
}

fn wait_ready(file: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(file)
            && t.ends_with('\n')
        {
            return t.trim().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} never became ready",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("polycall-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join(name);
    let _ = std::fs::remove_file(&f);
    f
}

fn load(peer: &str, endpoint: &str, payload: usize, server_pid: Option<u32>) -> Output {
    let mut c = Command::new(BIN);
    c.args(["load", "--peer", peer, "--endpoint", endpoint])
        .args(["--payload", &payload.to_string()])
        .args(["--concurrency", "4", "--connections", "2"])
        .args(["--seconds", "0.3", "--warmup", "0.1"]);
    if let Some(pid) = server_pid {
        c.args(["--server-pids", &pid.to_string()]);
    }
    c.output().expect("run load")
}

/// Runs the load client and checks its JSON line.
fn check_load(peer: &str, endpoint: &str, server_pid: u32) {
    for payload in [64, 300_000] {
        let out = load(peer, endpoint, payload, Some(server_pid));
        assert!(
            out.status.success(),
            "load --peer {peer} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(v["peer"], peer);
        assert_eq!(v["payload"], payload);
        assert_eq!(v["concurrency"], 4);
        assert_eq!(v["connections"], 2);
        assert!(v["calls"].as_u64().expect("calls") > 0, "{v}");
        let (p50, p99, p999) = (
            v["p50_us"].as_u64().expect("p50"),
            v["p99_us"].as_u64().expect("p99"),
            v["p999_us"].as_u64().expect("p99.9"),
        );
        assert!(p50 >= 1 && p50 <= p99 && p99 <= p999, "{v}");
        assert!(v["seconds"].as_f64().expect("seconds") >= 0.3, "{v}");
        for k in ["client_cpu_s", "server_cpu_s", "calls_per_cpu_s"] {
            assert!(v[k].as_f64().expect(k) >= 0.0, "{v}");
        }
    }
}

fn serve_and_load(sub: &str, peer: &str) {
    let ready = tmp(&format!("{sub}.ready"));
    let server = start(&[
        sub,
        "--listen",
        "127.0.0.1:0",
        "--ready",
        ready.to_str().expect("utf-8 path"),
    ]);
    let ep = wait_ready(&ready);
    check_load(peer, &ep, server.0.id());
}

#[test]
fn raw_echo_serves_the_load_client() {
    serve_and_load("serve-raw", "raw");
}

#[test]
fn polycall_server_serves_the_load_client() {
    serve_and_load("serve-polycall", "polycall");
}

#[test]
fn tonic_server_serves_the_load_client() {
    serve_and_load("serve-tonic", "tonic");
}

#[test]
fn nats_responder_answers_through_nats_server() {
    let found = Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: nats-server is not installed (apt-get install -y nats-server)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let ep = format!("127.0.0.1:{port}");
    let broker = Proc(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server"),
    );
    let ready = tmp("serve-nats.ready");
    let _responder = start(&[
        "serve-nats",
        "--nats",
        &ep,
        "--ready",
        ready.to_str().expect("utf-8 path"),
    ]);
    wait_ready(&ready);
    check_load("nats", &ep, broker.0.id());
}

/// A raw echo that answers one byte short: the load client must fail, not count it.
#[test]
fn a_short_reply_fails_the_load() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ep = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let n = u32::from_le_bytes(len) as usize;
                    let mut body = vec![0u8; n];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let short = n.saturating_sub(1);
                    let mut out = (short as u32).to_le_bytes().to_vec();
                    out.extend_from_slice(&body[..short]);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let out = load("raw", &ep, 64, None);
    assert!(!out.status.success(), "a short reply was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("63 bytes came back for 64 sent"), "{err}");
}

#[test]
fn an_unknown_peer_is_refused() {
    let out = Command::new(BIN)
        .args(["load", "--peer", "grpc-web", "--endpoint", "127.0.0.1:1"])
        .args([
            "--payload",
            "64",
            "--concurrency",
            "1",
            "--connections",
            "1",
        ])
        .args(["--seconds", "1"])
        .output()
        .expect("run load");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("none of raw, polycall, tonic, nats"));
}
