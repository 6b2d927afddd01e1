//! The admin listener of a `polycall run` process, read by real tools: Prometheus
//! scrapes `/metrics` and answers a PromQL query with the number of calls the test
//! made; `promtool` finds nothing broken in the exposition; health, readiness and bad
//! HTTP are answered as documented.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Runtime;

/// A runtime with its admin listener on a free port; returns it and the admin address.
fn runtime_with_admin(extra: &[&str]) -> (Runtime, SocketAddr) {
    let dir = std::env::temp_dir().join(format!(
        "polycall-observe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let admin_file = dir.join("admin");
    let admin_file_s = admin_file.to_str().unwrap().to_owned();
    let mut run = vec![
        "--endpoint",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--admin-file",
        &admin_file_s,
    ];
    run.extend_from_slice(extra);
    let mut rt = Runtime::start_in(&dir, &[], &run);
    rt.owns_dir = true;
    let started = Instant::now();
    let admin = loop {
        if let Ok(t) = std::fs::read_to_string(&admin_file)
            && t.ends_with('\n')
        {
            break t.trim().parse().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no admin address written"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (rt, admin)
}

/// One HTTP/1.0 request; the status code and the body.
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &Path, target: SocketAddr) -> (Prometheus, SocketAddr) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: polycall\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package `prometheus`; `cargo xtask ci` installs it)");
    (Prometheus(child), web)
}

/// Prometheus scrapes a runtime that served 137 calls of `debug.echo` (and 5 that
/// failed): a PromQL query over its HTTP API answers 137, and the failures by code.
#[test]
fn prometheus_scrapes_the_calls_the_test_made() {
    let (rt, admin) = runtime_with_admin(&[]);
    for i in 0..137 {
        let out = rt.cli(&["call", "debug.echo", "--json", &format!("{{\"i\":{i}}}")]);
        assert!(out.status.success(), "{out:?}");
    }
    for _ in 0..5 {
        let out = rt.cli(&["call", "debug.sleep", "--json", "{\"ms\": 999999999}"]);
        assert!(!out.status.success());
    }
    let (prom, web) = start_prometheus(&rt.dir, admin);
    let query = |q: &str| -> Option<f64> {
        let (code, body) = get(web, &format!("/api/v1/query?query={}", percent_encode(q)));
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let started = Instant::now();
    let calls = loop {
        if let Some(n) = query(r#"sum(polycall_calls_total{method="debug.echo",side="server"})"#) {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Prometheus never had the series"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(calls, 137.0);
    let failed = query(r#"polycall_call_errors_total{method="debug.sleep",code="invalid_input"}"#);
    assert_eq!(failed, Some(5.0));
    let up = query(r#"up{job="polycall"}"#);
    assert_eq!(up, Some(1.0), "the scrape itself succeeded");
    assert!(query("polycall_call_duration_seconds_count{method=\"debug.echo\"}") == Some(137.0));
    drop(prom);
}

/// `promtool check metrics` lints the exposition: exit 1 (broken) fails the test; exit
/// 3 (lint warnings it raises for OpenMetrics names) does not.
#[test]
fn promtool_finds_the_exposition_well_formed() {
    let (rt, admin) = runtime_with_admin(&[]);
    assert!(
        rt.cli(&["call", "debug.echo", "--json", "1"])
            .status
            .success()
    );
    let (code, body) = get(admin, "/metrics");
    assert_eq!(code, 200);
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    for family in [
        "polycall_calls_total",
        "polycall_call_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "polycall_providers",
        "polycall_connections",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool: broken exposition\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Health, readiness, the dashboard page, and what bad requests get: 404, 405, 400 for
/// garbage — after which the listener and the call port still serve.
#[test]
fn admin_pages_answer_and_bad_http_is_refused() {
    let (rt, admin) = runtime_with_admin(&[]);
    let (code, body) = get(admin, "/healthz");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );
    let (code, body) = get(admin, "/readyz");
    assert_eq!(
        (code, body.contains("\"ready\":true")),
        (200, true),
        "{body}"
    );
    let (code, body) = get(admin, "/dashboard");
    assert_eq!(code, 200);
    assert!(
        body.contains("<title>polycall dashboard</title>") && !body.contains("https://"),
        "self-contained"
    );
    let (code, body) = get(admin, "/api/overview");
    assert_eq!(code, 200);
    let o: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        o["methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "sys.ping")
    );
    assert_eq!(get(admin, "/nope").0, 404);
    assert_eq!(
        http(admin, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").0,
        405
    );
    assert_eq!(http(admin, "\x16\x03\x01garbage\r\n\r\n").0, 400);
    // Idle connections that never send a request hold admin slots, not the call port.
    let idle: Vec<TcpStream> = (0..70)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    assert!(rt.cli(&["call", "sys.ping"]).status.success());
    drop(idle);
    assert_eq!(get(admin, "/healthz").0, 200);
}

/// The admin pages show every method: a non-loopback admin address is refused unless
/// the operator said the network is trusted, like the call port.
#[test]
fn a_remote_admin_address_is_refused() {
    let out = common::bin()
        .args([
            "run",
            "--endpoint",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "--state-dir",
        ])
        .arg(std::env::temp_dir().join(format!("polycall-admin-remote-{}", std::process::id())))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve the admin pages on 0.0.0.0:0"),
        "{err}"
    );
}

/// `sys.health` of a runtime without anomalies says so, and `sys.metrics.history`
/// returns the one-second samples `polycall report` draws.
#[test]
fn history_is_retained_for_reports() {
    let (rt, _admin) = runtime_with_admin(&[]);
    for _ in 0..10 {
        assert!(
            rt.cli(&["call", "debug.echo", "--json", "1"])
                .status
                .success()
        );
    }
    std::thread::sleep(Duration::from_millis(2200));
    let out = rt.cli(&[
        "--format",
        "json",
        "call",
        "sys.metrics.history",
        "--json",
        "{}",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = v["data"]["samples"].as_array().cloned().unwrap_or_default();
    let echo: u64 = samples
        .iter()
        .flat_map(|s| s["methods"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["method"] == "debug.echo")
        .map(|m| m["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(echo, 10, "{v}");
}

/// Installs `playwright-core` (no browser download: it drives Debian's Chromium) when
/// `tests/browser/node_modules` lacks it.
fn browser_tests_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .expect("npm");
        assert!(ok.success(), "npm ci in tests/browser failed");
    }
    dir
}

/// Headless Chromium opens `/dashboard`; a transition fired afterwards appears in the
/// machine's graph (the instance's new state lights up) and in the transition list,
/// fed by the page's event stream; the screenshot it saves is not blank.
#[test]
fn the_dashboard_shows_a_state_change_live() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium (`cargo xtask ci` installs it)"
    );
    let machines = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/machines");
    let (rt, admin) = runtime_with_admin(&["--machines", machines.to_str().unwrap()]);
    let out = rt.cli(&["call", "state.order.create", "--json", r#"{"id": "o1"}"#]);
    assert!(out.status.success(), "{out:?}");
    let dir = browser_tests_dir();
    let shot = rt.dir.join("dashboard.png");
    let mut node = Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(format!("http://{admin}/dashboard"))
        .arg(&shot)
        .args(["order", "review"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdout = std::io::BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stdout.read_line(&mut line).unwrap();
    if line.trim() != "READY" {
        let out = node.wait_with_output().unwrap();
        panic!(
            "the page did not get ready: {line}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = rt.cli(&[
        "call",
        "state.order.fire",
        "--json",
        r#"{"id": "o1", "transition": "submit", "event": {"total": 5}}"#,
    ]);
    assert!(out.status.success(), "{out:?}");
    node.stdin.take().unwrap().write_all(b"fired\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = node.wait_with_output().unwrap();
    assert!(
        out.status.success() && rest.contains("OK colors="),
        "{rest}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

/// `polycall report --since 1h -o FILE` writes a self-contained page with the methods
/// called, their plots, the errors by code and the resource plots; a bad `--since`
/// is refused with exit 3.
#[test]
fn report_writes_a_self_contained_page() {
    let (rt, _admin) = runtime_with_admin(&[]);
    for _ in 0..20 {
        assert!(
            rt.cli(&["call", "debug.echo", "--json", "1"])
                .status
                .success()
        );
    }
    assert!(
        !rt.cli(&["call", "debug.sleep", "--json", "{}"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(2200));
    let file = rt.dir.join("report.html");
    let out = rt.cli(&["report", "--since", "1h", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(
        html.contains("<td>debug.echo</td><td class=\"n\">20</td>"),
        "{html}"
    );
    assert!(
        html.contains("<td>debug.sleep</td><td>invalid_input</td>"),
        "top errors: {html}"
    );
    assert!(
        html.matches("<polyline").count() >= 5,
        "throughput, latency and resource plots"
    );
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
    let out = rt.cli(&[
        "report",
        "--since",
        "yesterday",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// With TLS and token authentication on the call port, the admin pages follow the same
/// rules and may listen beyond loopback: HTTPS with the runtime's certificate, a bearer
/// token the call port accepts (401 without one or with a wrong one), and the policy's
/// leave to call `sys.metrics.history` (403 without it). curl is the HTTPS client.
#[test]
fn remote_admin_pages_need_tls_and_a_permitted_token() {
    let d = std::env::temp_dir().join(format!("polycall-admin-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let p = |s: &str| d.join(s).display().to_string();
    let ok = |args: &[&str]| {
        let out = common::bin().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    ok(&["certs", "init", &p("ca")]);
    ok(&[
        "certs",
        "issue",
        "--ca",
        &p("ca"),
        "--name",
        "node",
        "--loopback",
        "--out",
        &p("node"),
    ]);
    std::fs::write(
        d.join("auth.toml"),
        r#"
[tokens]
ops = "env:TEST_OPS_TOKEN"
viewer = "env:TEST_VIEWER_TOKEN"

[[rules]]
service = "sys"
method = "metrics.history"
allow = ["token:ops"]

[[rules]]
service = "sys"
method = "ping"
allow = ["authenticated"]
"#,
    )
    .unwrap();
    let config = d.join("polycall.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1
[runtime]
endpoint = "127.0.0.1:0"
[tls]
enabled = true
cert_file = "{node}/node.pem"
key_file = "{node}/node.key"
[auth]
anonymous = false
file = "auth.toml"
[admin]
listen = "0.0.0.0:0"
"#,
            node = p("node"),
        ),
    )
    .unwrap();
    let (ops, viewer) = (
        "ops-token-0123456789abcdef",
        "viewer-token-0123456789abcdef",
    );
    let admin_file = d.join("admin");
    let mut child = common::bin()
        .env("TEST_OPS_TOKEN", ops)
        .env("TEST_VIEWER_TOKEN", viewer)
        .arg("--config")
        .arg(&config)
        .args(["run", "--state-dir", &p("state"), "--admin-file"])
        .arg(&admin_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let port = loop {
        if let Ok(t) = std::fs::read_to_string(&admin_file)
            && t.ends_with('\n')
        {
            break t.trim().parse::<SocketAddr>().unwrap().port();
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the runtime exited ({status}): {err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no admin address"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let curl = |scheme: &str, token: Option<&str>| -> String {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(d.join("ca/ca.pem"));
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = c
            .arg(format!("{scheme}://127.0.0.1:{port}/metrics"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("https", None), "401");
    assert_eq!(curl("https", Some("not-a-token")), "401");
    assert_eq!(curl("https", Some(viewer)), "403");
    assert_eq!(curl("https", Some(ops)), "200");
    assert_ne!(curl("http", Some(ops)), "200", "plain HTTP is not served");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&d);
}
