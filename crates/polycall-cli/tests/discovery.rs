//! Runtimes that find each other (`polycall run --discover`): real `polycall run`
//! processes, providers connected to some of them, calls forwarded to the runtime that
//! serves the method; static seeds and Debian's etcd as registries.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Runtime;
use futures_util::StreamExt;
use polycall::runtime::Provider;
use polycall::{
    Call, CallKind, MessageStream, MethodInfo, Payload, Reply, Router, Status, StreamCall,
};
use serde_json::{Value, json};

/// A provider serving `inventory.get` (answering who serves it, the deadline and the
/// principal it saw) on the runtime at `endpoint`.
async fn provider(endpoint: &str, who: &'static str) -> Provider {
    Provider::start(endpoint.parse().unwrap(), inventory(who))
        .await
        .unwrap()
}

fn inventory(who: &'static str) -> Router {
    Router::new()
        .route(
            "inventory.get",
            MethodInfo::new("an item, and who served it"),
            polycall::handler_fn(move |c: Call| async move {
                let left = c
                    .metadata
                    .deadline
                    .map(|d| d.remaining(Instant::now()).as_millis() as u64);
                let input: Value = serde_json::from_slice(&c.payload.bytes).unwrap_or(Value::Null);
                let principal = c.metadata.principal.as_ref().map(ToString::to_string);
                let trace = c.metadata.trace.as_ref().map(|t| {
                    t.trace_id.iter().map(|b| format!("{b:02x}")).collect::<String>()
                });
                Payload::json(&json!({"served_by": who, "deadline_left_ms": left, "input": input, "principal": principal, "trace_id": trace}))
                    .map(Reply::new)
                    .map_err(|e| Status::internal(e.to_string()))
            }),
        )
        .unwrap()
        .route_stream(
            "inventory.watch",
            CallKind::ServerStream,
            MethodInfo::new("`count` messages, and who served them"),
            move |call: StreamCall| -> MessageStream {
                Box::pin(
                    futures_util::stream::once(async move {
                        let request = polycall::stream::single(call.requests).await?;
                        let v: Value = serde_json::from_slice(&request.bytes)
                            .map_err(|e| Status::invalid_input(e.to_string()))?;
                        Ok::<u64, Status>(v["count"].as_u64().unwrap_or(0))
                    })
                    .flat_map(move |n| match n {
                        Ok(n) => Box::pin(futures_util::stream::iter((0..n).map(move |i| {
                            Payload::json(&json!({"i": i, "served_by": who}))
                                .map_err(|e| Status::internal(e.to_string()))
                        }))) as MessageStream,
                        Err(e) => polycall::stream::fail(e),
                    }),
                )
            },
        )
        .unwrap()
        .route_stream(
            "inventory.echo",
            CallKind::Bidi,
            MethodInfo::new("each message back"),
            |call: StreamCall| -> MessageStream { call.requests },
        )
        .unwrap()
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["data"].clone()
}

/// `sys.discovery` of `rt`.
fn discovery(rt: &Runtime) -> Value {
    json_of(&rt.cli(&["--format", "json", "describe", "--cluster"]))
}

/// Waits until `rt` sees `name` healthy and serving `method` (or gone, `present` false).
fn wait_for_peer(
    rt: &Runtime,
    name: &str,
    method: &str,
    present: bool,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let d = discovery(rt);
        let seen = d["peers"].as_array().unwrap().iter().any(|p| {
            p["name"] == json!(name)
                && p["healthy"] == json!(true)
                && p["methods"].as_array().unwrap().contains(&json!(method))
        });
        if seen == present {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "after {limit:?}, {name} serving {method} is {}in the view of {}: {d:#}",
            if present { "not " } else { "still " },
            rt.endpoint
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn call(rt: &Runtime, method: &str, input: &str, timeout_ms: &str) -> std::process::Output {
    rt.cli(&[
        "--format",
        "json",
        "--timeout-ms",
        timeout_ms,
        "call",
        method,
        "--json",
        input,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_seeds_forward_calls_to_the_runtime_that_serves_them() {
    let (pa, pb) = (
        polycall_test_support::free_port(),
        polycall_test_support::free_port(),
    );
    let (ea, eb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let scratch = polycall_test_support::TempDir::new("discovery-static");
    let http_file = scratch.join("http");
    let a = Runtime::start_with(
        &[],
        &[
            "--endpoint",
            &ea,
            "--discover",
            &format!("static:{eb}"),
            "--discover-name",
            "a",
            "--http",
            "127.0.0.1:0",
            "--http-file",
            http_file.to_str().unwrap(),
        ],
    );
    let b = Runtime::start_with(
        &[],
        &[
            "--endpoint",
            &eb,
            "--discover",
            &format!("static:{ea}"),
            "--discover-name",
            "b",
        ],
    );
    let on_b = provider(&eb, "b").await;
    let took = wait_for_peer(&a, "b", "inventory.get", true, Duration::from_secs(10));
    eprintln!("a saw b serving inventory.get after {took:?}");

    // A call to a for a method only b's provider serves: forwarded, with the
    // remaining deadline and the input.
    let reply = json_of(&call(&a, "inventory.get", r#"{"item": 7}"#, "2000"));
    assert_eq!(reply["served_by"], json!("b"), "{reply}");
    assert_eq!(reply["input"], json!({"item": 7}));
    let left = reply["deadline_left_ms"].as_u64().unwrap();
    assert!(
        left > 1000 && left <= 2000,
        "the provider saw {left} ms left of 2000"
    );
    // Over a's HTTP gateway too, the W3C trace context of the request reaching b's
    // provider.
    let http = loop {
        if let Ok(t) = std::fs::read_to_string(&http_file)
            && t.ends_with('\n')
        {
            break t.trim().to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-H",
            "content-type: application/json",
        ])
        .args([
            "-H",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ])
        .args(["-d", r#"{"item": 8}"#])
        .arg(format!("http://{http}/v1/inventory/get"))
        .output()
        .expect("curl runs");
    let over_http: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(over_http["served_by"], json!("b"), "{over_http}");
    assert_eq!(over_http["input"], json!({"item": 8}));
    assert_eq!(
        over_http["trace_id"],
        json!("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{over_http}"
    );
    // Streams served on b, called on a: forwarded, the reply stream passed through.
    let channel = polycall::net::Channel::connect(ea.parse().unwrap())
        .await
        .unwrap();
    let watched: Vec<Value> = channel
        .server_stream(
            Call::new(
                "inventory.watch",
                Payload::json(&json!({"count": 3})).unwrap(),
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .map(|m| serde_json::from_slice::<Value>(&m.unwrap().bytes).unwrap())
        .collect()
        .await;
    assert_eq!(
        watched,
        [0, 1, 2].map(|i| json!({"i": i, "served_by": "b"})),
        "a server stream forwarded to b"
    );
    let requests = futures_util::stream::iter(["x", "y"].map(|m| Ok(Payload::raw(m))));
    let echoed: Vec<Vec<u8>> = channel
        .bidi(StreamCall::new("inventory.echo", Box::pin(requests)).unwrap())
        .await
        .unwrap()
        .map(|m| m.unwrap().bytes.to_vec())
        .collect()
        .await;
    assert_eq!(
        echoed,
        [b"x".to_vec(), b"y".to_vec()],
        "a bidirectional stream forwarded to b"
    );
    // And over a's HTTP gateway as Server-Sent Events.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", r#"{"count": 2}"#])
        .arg(format!("http://{http}/v1/inventory/watch"))
        .output()
        .expect("curl runs");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.contains(r#"data: {"i":1,"served_by":"b"}"#) && events.contains("event: end"),
        "{events}"
    );
    // What nobody serves is unknown everywhere, and is not bounced between runtimes.
    let nowhere = call(&a, "nowhere.none", "{}", "2000");
    assert!(!nowhere.status.success());
    assert!(
        String::from_utf8_lossy(&nowhere.stdout).contains("unknown_method"),
        "{}",
        String::from_utf8_lossy(&nowhere.stdout)
    );
    // describe --cluster: both runtimes, each with its methods.
    let text = a.cli(&["describe", "--cluster"]);
    let table = String::from_utf8_lossy(&text.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("b ")
            && l.contains(&eb)
            && l.contains(" up ")
            && l.contains("inventory.get")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("self")),
        "{table}"
    );

    // b goes away: a takes it out of rotation and answers at once, not after a timeout.
    on_b.stop().await;
    drop(b);
    let gone = wait_for_peer(&a, "b", "inventory.get", false, Duration::from_secs(5));
    eprintln!("a took b out of rotation after {gone:?}");
    let started = Instant::now();
    let after = call(&a, "inventory.get", "{}", "5000");
    assert!(!after.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered in {:?}",
        started.elapsed()
    );
}

/// A one-member etcd on free ports, its data in `dir`.
struct Etcd {
    child: Child,
    client_url: String,
}

impl Etcd {
    fn start(dir: &std::path::Path) -> Self {
        let (client, peer) = (
            polycall_test_support::free_port(),
            polycall_test_support::free_port(),
        );
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "polycall-test", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("polycall-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (Debian package etcd-server; `cargo xtask ci` installs it)");
        let etcd = Self { child, client_url };
        let started = Instant::now();
        while !etcd.healthy() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "etcd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    fn healthy(&self) -> bool {
        Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "1",
                &format!("{}/health", self.client_url),
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("true"))
    }

    /// The runtime names registered now, read by etcdctl.
    fn registered(&self) -> Vec<String> {
        let out = Command::new("etcdctl")
            .args([
                "--endpoints",
                &self.client_url,
                "get",
                "--prefix",
                "--keys-only",
                "/polycall/runtimes/",
            ])
            .output()
            .expect("etcdctl runs (Debian package etcd-client)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("/polycall/runtimes/"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registers_runtimes_spreads_calls_and_forgets_a_dead_runtime_within_its_ttl() {
    let dir = polycall_test_support::TempDir::new("discovery-etcd");
    let etcd = Etcd::start(&dir);
    let registry = format!("etcd:{}", etcd.client_url);
    let start = |name: &str| {
        Runtime::start_with(
            &[],
            &[
                "--endpoint",
                "127.0.0.1:0",
                "--discover",
                &registry,
                "--discover-name",
                name,
                "--set",
                "discovery.ttl_s=3",
                "--set",
                "discovery.refresh_ms=500",
            ],
        )
    };
    let (a, b, mut c) = (start("a"), start("b"), start("c"));
    let _on_b = provider(&b.endpoint, "b").await;
    let _on_c = provider(&c.endpoint, "c").await;
    wait_for_peer(&a, "b", "inventory.get", true, Duration::from_secs(15));
    wait_for_peer(&a, "c", "inventory.get", true, Duration::from_secs(15));
    let mut names = etcd.registered();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    // Calls to a spread over b and c (two choices, latency-weighted).
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        let r = json_of(&call(&a, "inventory.get", "{}", "3000"));
        *served
            .entry(r["served_by"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(served.len(), 2, "both runtimes serve: {served:?}");

    // c dies without a word: its lease runs out within the TTL, a forgets it, and every
    // call is served by b.
    c.signal("-KILL");
    c.wait(Duration::from_secs(5));
    let killed = Instant::now();
    // At once, before any check noticed: a call a sends to c finds it unreachable, never
    // ran, and goes to b instead.
    for _ in 0..6 {
        let r = json_of(&call(&a, "inventory.get", "{}", "3000"));
        assert_eq!(r["served_by"], json!("b"), "{r}");
    }
    loop {
        if !etcd.registered().contains(&"c".to_owned()) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3 + 3),
            "c is still registered {:?} after it died (TTL 3 s)",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("etcd forgot c {:?} after it died", killed.elapsed());
    let started = Instant::now();
    loop {
        let d = discovery(&a);
        if !d["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == json!("c"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a still lists c: {d:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..10 {
        let r = json_of(&call(&a, "inventory.get", "{}", "3000"));
        assert_eq!(r["served_by"], json!("b"));
    }

    // A runtime that stops gracefully withdraws at once, well within the TTL.
    let mut b = b;
    b.signal("-TERM");
    assert!(b.wait(Duration::from_secs(10)).is_some(), "b did not stop");
    assert_eq!(etcd.registered(), ["a"], "b withdrew when it stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_forward_over_mutual_tls_and_the_callee_sees_the_forwarding_runtime() {
    let scratch = polycall_test_support::TempDir::new("discovery-tls");
    let p = |rel: &str| scratch.join(rel).display().to_string();
    common::issue_certs(
        &scratch,
        &[
            ("a", "spiffe://polycall.test/runtime/a"),
            ("b", "spiffe://polycall.test/runtime/b"),
            ("provider", "spiffe://polycall.test/provider/inventory"),
            ("app", "spiffe://polycall.test/app/shop"),
        ],
    );
    std::fs::write(
        scratch.join("auth.toml"),
        r#"
[[rules]]
service = "sys.discovery"
method = "self"
allow = ["spiffe://polycall.test/runtime/*"]

[[rules]]
service = "inventory"
allow = ["spiffe://polycall.test/app/*", "spiffe://polycall.test/runtime/*"]
provide = ["spiffe://polycall.test/provider/*"]
"#,
    )
    .unwrap();
    let (ea, eb) = (
        format!("127.0.0.1:{}", polycall_test_support::free_port()),
        format!("127.0.0.1:{}", polycall_test_support::free_port()),
    );
    let start = |name: &str, own: &str, other: &str| {
        let sets = [
            "tls.enabled=true".to_string(),
            format!("tls.ca_file={}", p("ca/ca.pem")),
            format!("tls.cert_file={}", p(&format!("certs/{name}.pem"))),
            format!("tls.key_file={}", p(&format!("certs/{name}.key"))),
            "tls.client_auth=required".into(),
            "auth.certificate=true".into(),
            "auth.anonymous=false".into(),
            format!("auth.file={}", p("auth.toml")),
        ];
        let mut args = vec![
            "--endpoint".to_string(),
            own.to_string(),
            "--discover".into(),
            format!("static:{other}"),
            "--discover-name".into(),
            name.into(),
        ];
        for s in sets {
            args.push("--set".into());
            args.push(s);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Runtime::start_with(&[], &args)
    };
    let _a = start("a", &ea, &eb);
    let _b = start("b", &eb, &ea);
    // The provider connects to b with its own certificate.
    let tls = polycall::security::ClientTls::default()
        .ca(polycall::security::SecretRef::file(p("ca/ca.pem")))
        .cert_chain(polycall::security::SecretRef::file(p("certs/provider.pem")))
        .key(polycall::security::SecretRef::file(p("certs/provider.key")))
        .build()
        .unwrap();
    let mut connection = polycall::net::ConnectionConfig::default();
    connection.credentials = Some(polycall::net::auth::Credentials::Certificate);
    let config = polycall::runtime::ProviderConfig::default()
        .transport(std::sync::Arc::new(polycall::net::tls::Tls::client(tls)))
        .connection(connection);
    let _on_b = Provider::start_with(eb.parse().unwrap(), inventory("b"), config)
        .await
        .unwrap();
    // The application calls a over mutual TLS; a forwards to b over mutual TLS, and b
    // (and its provider) see a's identity.
    let as_app = |endpoint: &str, args: &[&str]| {
        let (ca, cert, key) = (p("ca/ca.pem"), p("certs/app.pem"), p("certs/app.key"));
        let mut all = vec!["--format", "json", "--timeout-ms", "3000"];
        all.extend_from_slice(args);
        all.extend([
            "--endpoint",
            endpoint,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ]);
        common::bin().args(&all).output().unwrap()
    };
    let started = Instant::now();
    let reply = loop {
        let o = as_app(&ea, &["call", "inventory.get", "--json", "{}"]);
        if o.status.success() {
            break serde_json::from_slice::<Value>(&o.stdout).unwrap()["data"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a does not forward over TLS: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(reply["served_by"], json!("b"), "{reply}");
    assert_eq!(
        reply["principal"],
        json!("spiffe://polycall.test/runtime/a"),
        "{reply}"
    );
    // Called directly, b's provider sees the application.
    let direct = as_app(&eb, &["call", "inventory.get", "--json", "{}"]);
    let direct: Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(
        direct["data"]["principal"],
        json!("spiffe://polycall.test/app/shop"),
        "{direct}"
    );
    // The application is not a runtime: the discovery check is not for it.
    let check = as_app(&ea, &["call", "sys.discovery.self"]);
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("permission_denied"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Debian's dnsmasq on a free UDP port, answering the SRV record
/// `_polycall._tcp.polycall.test` with `rt.polycall.test` (127.0.0.1) at `ports`.
struct Dnsmasq {
    child: Child,
    server: String,
}

impl Dnsmasq {
    fn start(ports: &[u16]) -> Self {
        let port = polycall_test_support::free_port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
        ])
        .args([
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--user=root",
        ])
        .arg(format!("--port={port}"))
        .arg("--pid-file=")
        .arg("--host-record=rt.polycall.test,127.0.0.1");
        for p in ports {
            cmd.arg(format!(
                "--srv-host=_polycall._tcp.polycall.test,rt.polycall.test,{p}"
            ));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (Debian package dnsmasq-base; `cargo xtask ci` installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Self {
            child,
            server: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_srv_record_lists_the_runtimes() {
    let (pa, pb) = (
        polycall_test_support::free_port(),
        polycall_test_support::free_port(),
    );
    let dns = Dnsmasq::start(&[pa, pb]);
    let registry = format!("dns:_polycall._tcp.polycall.test@{}", dns.server);
    let start = |port: u16, name: &str| {
        Runtime::start_with(
            &[],
            &[
                "--endpoint",
                &format!("127.0.0.1:{port}"),
                "--discover",
                &registry,
                "--discover-name",
                name,
            ],
        )
    };
    let (a, b) = (start(pa, "a"), start(pb, "b"));
    let _on_b = provider(&b.endpoint, "b").await;
    wait_for_peer(&a, "b", "inventory.get", true, Duration::from_secs(10));
    let reply = json_of(&call(&a, "inventory.get", "{}", "2000"));
    assert_eq!(reply["served_by"], json!("b"), "{reply}");
    let d = discovery(&a);
    assert_eq!(d["registry"], json!("dns"));
    // The record lists a too: a knows itself when it answers, and is no peer of itself.
    assert_eq!(
        d["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["healthy"] == json!(true))
            .count(),
        1,
        "{d:#}"
    );
}
