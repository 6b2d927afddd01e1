//! The benchmark processes for real: each server subcommand in its own process on
//! loopback, the `load` client against it, and its JSON line read back. The figures
//! themselves are not judged (benchmarks measure, tests check behaviour).

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

mod common;
use common::{BIN, Proc, start, tmp, wait_ready};

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

/// Whether `program` is on the PATH.
fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs nats-server from apt when it is missing, as `cargo xtask bench rpc` and
/// `cargo xtask ci` do (`ensure_apt`). A machine where it cannot be installed fails the
/// test: the NATS peer is never skipped.
fn ensure_nats_server() {
    if on_path("nats-server") {
        return;
    }
    let apt = |args: &[&str]| {
        let out = Command::new("apt-get")
            // Waits for another apt/dpkg run instead of failing on its lock.
            .args(["-o", "DPkg::Lock::Timeout=300", "-q"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "apt-get {} failed ({}):\n{}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Err(format!("apt-get {}: cannot start: {e}", args.join(" "))),
        }
    };
    let installed = apt(&["install", "-y", "nats-server"]).or_else(|first| {
        // A stale or empty package index: refresh it and try once more.
        apt(&["update"]).map_err(|e| format!("{first}\n{e}"))?;
        apt(&["install", "-y", "nats-server"]).map_err(|e| format!("{first}\n{e}"))
    });
    if let Err(e) = installed {
        panic!(
            "nats-server is missing and could not be installed \
             (`apt-get install -y nats-server`; `cargo xtask ci` installs it):\n{e}"
        );
    }
    assert!(
        on_path("nats-server"),
        "apt-get installed nats-server, but it is not on the PATH"
    );
}

#[test]
fn nats_responder_answers_through_nats_server() {
    ensure_nats_server();
    // Started as `cargo xtask bench rpc` starts it: a config file, a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let ep = format!("127.0.0.1:{port}");
    let conf = tmp("nats.conf");
    // The default max_payload (1 MB) already carries the 300 KB payload; said explicitly.
    std::fs::write(&conf, format!("listen: {ep}\nmax_payload: 1048576\n"))
        .expect("write nats.conf");
    let broker_log = tmp("nats-server.log");
    let mut broker = Proc(
        Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&broker_log).expect("nats-server log"))
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
    let exited = broker.0.try_wait().expect("nats-server status");
    assert!(
        exited.is_none(),
        "nats-server exited ({exited:?}):\n{}",
        std::fs::read_to_string(&broker_log).unwrap_or_default()
    );
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
