//! Runtimes that find each other (`polycall run --discover`): real `polycall run`
//! processes, providers connected to some of them, calls forwarded to the runtime that
//! serves the method; static seeds and Debian's etcd as registries.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Runtime;
use polycall::runtime::Provider;
use polycall::{Call, MethodInfo, Payload, Reply, Router, Status};
use serde_json::{Value, json};

/// A provider serving `inventory.get` (answering who serves it and the deadline it
/// saw) on the runtime at `endpoint`.
async fn provider(endpoint: &str, who: &'static str) -> Provider {
    let router = Router::new()
        .route(
            "inventory.get",
            MethodInfo::new("an item, and who served it"),
            polycall::handler_fn(move |c: Call| async move {
                let left = c
                    .metadata
                    .deadline
                    .map(|d| d.remaining(Instant::now()).as_millis() as u64);
                let input: Value = serde_json::from_slice(&c.payload.bytes).unwrap_or(Value::Null);
                Payload::json(&json!({"served_by": who, "deadline_left_ms": left, "input": input}))
                    .map(Reply::new)
                    .map_err(|e| Status::internal(e.to_string()))
            }),
        )
        .unwrap();
    Provider::start(endpoint.parse().unwrap(), router)
        .await
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
    let a = Runtime::start_with(
        &[],
        &[
            "--endpoint",
            &ea,
            "--discover",
            &format!("static:{eb}"),
            "--discover-name",
            "a",
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
}
