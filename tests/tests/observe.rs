//! Observability end to end, in process: per-method metrics through the runtime, span
//! propagation, anomaly detection and outlier ejection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use polycall::net::Channel;
use polycall::net::fault::{FaultConfig, FaultInjectionLayer};
use polycall::observe::metrics::Side;
use polycall::observe::trace::{MemoryExporter, Sampler, Tracer};
use polycall::runtime::Provider;
use polycall::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use polycall_test_support::TestRuntime;
use tower::Layer;

/// `work.run` answering with the provider's name, optionally slowed by the fault layer.
fn worker(name: &'static str, delay: Option<Duration>) -> Router {
    let handler =
        handler_fn(move |_c: Call| async move { Ok::<_, Status>(Reply::new(Payload::raw(name))) });
    let info = MethodInfo::new("answers with the provider's name");
    match delay {
        None => Router::new().route("work.run", info, handler),
        Some(d) => Router::new().route(
            "work.run",
            info,
            FaultInjectionLayer::new(FaultConfig::default().delay(d, 1.0)).layer(handler),
        ),
    }
    .unwrap()
}

async fn health(channel: &Channel) -> serde_json::Value {
    channel
        .call(Call::new("sys.health", Payload::empty()).unwrap())
        .await
        .unwrap()
        .payload
        .to_json()
        .unwrap()
}

/// One provider turns slow: within 5 s the runtime reports the anomaly in `sys.health`
/// (degraded, naming the method, with the evidence) and ejects the slow provider, after
/// which (almost) no call reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_is_reported_and_traffic_shifts_away() {
    let rt = TestRuntime::start().await;
    let fast = Provider::start(rt.endpoint.clone(), worker("fast", None))
        .await
        .unwrap();
    let channel = Channel::connect(rt.endpoint.clone()).await.unwrap();
    let to_slow = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four callers in a loop, counting where their calls went.
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (channel, to_slow, total, stop) = (
            channel.clone(),
            to_slow.clone(),
            total.clone(),
            stop.clone(),
        );
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = channel
                    .call(Call::new("work.run", Payload::empty()).unwrap())
                    .await
                    .unwrap();
                total.fetch_add(1, Ordering::Relaxed);
                if &r.payload.bytes[..] == b"slow" {
                    to_slow.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // A baseline with the fast provider alone.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(health(&channel).await["status"], "ok");
    let slow = Provider::start(
        rt.endpoint.clone(),
        worker("slow", Some(Duration::from_millis(60))),
    )
    .await
    .unwrap();
    let joined = Instant::now();
    let (reported, ejected) = loop {
        let h = health(&channel).await;
        let anomalous = h["anomalies"].as_array().is_some_and(|a| !a.is_empty());
        let ejected = h["ejected"].as_array().is_some_and(|a| !a.is_empty());
        if anomalous && ejected {
            break (h, joined.elapsed());
        }
        assert!(
            joined.elapsed() < Duration::from_secs(5),
            "no anomaly and ejection within 5 s of the slow provider joining: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reported["status"], "degraded", "{reported}");
    let reason = reported["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("work.run") && reason.contains("mean latency"),
        "{reason}"
    );
    assert_eq!(reported["anomalies"][0]["method"], "work.run");
    assert_eq!(reported["anomalies"][0]["kind"], "latency");
    assert_eq!(reported["ejected"][0]["method"], "work.run");
    // Traffic has shifted: over the next two seconds, the slow provider gets (almost)
    // nothing.
    let (s0, t0) = (
        to_slow.load(Ordering::Relaxed),
        total.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s1, t1) = (
        to_slow.load(Ordering::Relaxed),
        total.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let share = (s1 - s0) as f64 / (t1 - t0).max(1) as f64;
    assert!(t1 - t0 > 100, "calls went on: {}", t1 - t0);
    assert!(
        share < 0.02,
        "{} of {} calls still reached the slow provider ({ejected:?} after joining)",
        s1 - s0,
        t1 - t0
    );
    slow.stop().await;
    fast.stop().await;
    rt.shutdown().await;
}

/// The runtime counts each routed call once per method, failures by code, and a call
/// made with a sampled trace context carries on into the provider as a child of the
/// runtime's span (which the runtime records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_calls_are_counted_and_their_trace_continues() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let router = Router::new()
        .route(
            "trace.me",
            MethodInfo::new("records the trace context it was called with"),
            handler_fn(move |c: Call| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push(c.metadata.trace.clone());
                    Ok::<_, Status>(Reply::new(Payload::empty()))
                }
            }),
        )
        .unwrap();
    let rt = TestRuntime::start().await;
    let provider = Provider::start(rt.endpoint.clone(), router).await.unwrap();
    let memory = MemoryExporter::default();
    // The client side: its own measuring layer and tracer (every trace sampled).
    let tracer = Tracer::start("rust-client", Sampler::Always, memory.clone());
    let client_metrics = Arc::new(polycall::observe::metrics::CallMetrics::default());
    let channel = Channel::connect(rt.endpoint.clone()).await.unwrap();
    let mut client =
        polycall::observe::MeasureLayer::new(Side::Client, client_metrics.clone(), tracer)
            .layer(channel.clone());
    use tower::{Service, ServiceExt};
    for _ in 0..3 {
        client
            .ready()
            .await
            .unwrap()
            .call(Call::new("trace.me", Payload::empty()).unwrap())
            .await
            .unwrap();
    }
    let err = channel
        .call(Call::new("trace.nothing", Payload::empty()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code, polycall::Code::UnknownMethod);
    // The provider saw each call's trace with a parent that is neither the client's
    // span nor zero: the runtime's.
    tokio::time::sleep(Duration::from_millis(400)).await; // the client's export batch
    let client_spans = memory.spans();
    assert_eq!(client_spans.len(), 3, "{client_spans:?}");
    let seen = seen.lock().unwrap().clone();
    for (span, trace) in client_spans.iter().zip(&seen) {
        let t = trace.as_ref().expect("the provider got trace context");
        assert_eq!(polycall::observe::trace::hex(&t.trace_id), span.trace_id);
        assert_ne!(
            polycall::observe::trace::hex(&t.parent_id),
            span.span_id,
            "the runtime's span sits between"
        );
        assert!(t.sampled());
    }
    let metrics = rt.runtime.observer().encode_text(&[]);
    assert!(
        metrics
            .contains(r#"polycall_calls_total{side="server",method="trace.me",class="normal"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"polycall_call_errors_total{side="server",method="trace.nothing",code="unknown_method"} 1"#), "{metrics}");
    assert_eq!(
        client_metrics.method(Side::Client, "trace", "me").calls(),
        3
    );
    provider.stop().await;
    rt.shutdown().await;
}

/// A child process; killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args…` (stdin piped: closing it stops the helper scripts) and waits
/// at most 20 s for its first stdout line, which must start with `ready`.
fn start_until(program: &str, args: &[&str], ready: &str) -> (Child, String) {
    use std::io::BufRead;
    let mut c = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = c.stdout.take().expect("piped stdout");
    let child = Child(c);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{program} {args:?} did not get ready"));
    assert!(line.starts_with(ready), "{program} {args:?}: {line:?}");
    (child, line.trim().to_owned())
}

/// One call Rust client → runtime → Python provider → runtime → TypeScript provider is
/// one trace: an OTLP/gRPC receiver (PyPI's grpcio and opentelemetry-proto) gets the
/// six spans — the Rust client's, the runtime's for `py.relay`, the Python provider's
/// server and client spans, the runtime's for `ts.upper`, the TypeScript provider's —
/// with one trace id and each span's parent the one before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_across_four_processes_is_one_trace() {
    let repo = polycall_tests::typescript::repo();
    let ts = polycall_tests::typescript::build_binding();
    assert!(ts.join("dist/src/index.js").exists());
    let dir = polycall_test_support::TempDir::new("otlp");
    let received = dir.join("spans.jsonl");
    let otlp = repo.join("tests/otlp");
    let (_receiver, ready) = start_until(
        "python3",
        &[
            otlp.join("receiver.py").to_str().unwrap(),
            received.to_str().unwrap(),
        ],
        "READY",
    );
    let port: u16 = ready.trim_start_matches("READY ").parse().unwrap();
    let collector = format!("http://127.0.0.1:{port}");
    let rt = TestRuntime::start_with(|c| {
        c.observe(
            polycall::runtime::ObserveSettings::default()
                .otlp_endpoint(collector.clone())
                .trace_sample(0.0),
        )
    })
    .await;
    let ep = rt.endpoint.to_string();
    let (_ts, _) = start_until(
        "node",
        &[otlp.join("ts_upper.mjs").to_str().unwrap(), &ep],
        "ready",
    );
    let (_py, _) = start_until(
        "python3",
        &[otlp.join("py_relay.py").to_str().unwrap(), &ep],
        "ready",
    );
    // The Rust client records its own span and exports it to the same collector.
    let tracer = Tracer::start(
        "rust-client",
        Sampler::Always,
        polycall::observe::otlp::OtlpExporter::new(collector.clone()),
    );
    let channel = Channel::connect(rt.endpoint.clone()).await.unwrap();
    let mut client = polycall::observe::MeasureLayer::new(
        Side::Client,
        Arc::new(polycall::observe::metrics::CallMetrics::default()),
        tracer,
    )
    .layer(channel);
    use tower::{Service, ServiceExt};
    let reply = client
        .ready()
        .await
        .unwrap()
        .call(Call::new("py.relay", Payload::raw("trace me")).unwrap())
        .await
        .unwrap();
    assert_eq!(&reply.payload.bytes[..], b"TRACE ME");
    // Wait (at most 15 s) for the six spans.
    let started = Instant::now();
    let spans: Vec<serde_json::Value> = loop {
        let spans: Vec<serde_json::Value> = std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if spans.len() >= 6 {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the collector got {} spans, not 6: {spans:#?}",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let trace = spans[0]["trace_id"].as_str().unwrap();
    assert!(
        spans.iter().all(|s| s["trace_id"] == trace),
        "one trace: {spans:#?}"
    );
    // OTLP span kinds: 2 server, 3 client.
    let find = |service: &str, name: &str, kind: u64| {
        spans
            .iter()
            .find(|s| s["service"] == service && s["name"] == name && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {service} span {name} of kind {kind}: {spans:#?}"))
    };
    let chain = [
        find("rust-client", "py.relay", 3),
        find("polycall-runtime", "py.relay", 2),
        find("py-relay", "py.relay", 2),
        find("py-relay", "ts.upper", 3),
        find("polycall-runtime", "ts.upper", 2),
        find("ts-upper", "ts.upper", 2),
    ];
    assert_eq!(
        chain[0]["parent_span_id"], "",
        "the Rust client's span is the root"
    );
    for pair in chain.windows(2) {
        assert_eq!(
            pair[1]["parent_span_id"], pair[0]["span_id"],
            "{} ({}) is a child of {} ({})",
            pair[1]["name"], pair[1]["service"], pair[0]["name"], pair[0]["service"]
        );
    }
    assert_eq!(chain[1]["attributes"]["rpc.system"], "polycall");
    assert_eq!(chain[2]["attributes"]["polycall.language"], "python");
    assert_eq!(chain[5]["attributes"]["polycall.language"], "typescript");
    rt.shutdown().await;
}

/// A streaming call is counted once it ends: its lifetime as latency, its messages'
/// bytes as reply bytes, and its caller's sampled trace continues into the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_call_is_counted_when_it_ends() {
    use futures_util::StreamExt;
    let rt = TestRuntime::start().await;
    let channel = Channel::connect(rt.endpoint.clone()).await.unwrap();
    let call = Call::new(
        "debug.stream",
        Payload::json(&serde_json::json!({"count": 5})).unwrap(),
    )
    .unwrap();
    let mut replies = channel.server_stream(call).await.unwrap();
    let mut n = 0;
    while let Some(m) = replies.next().await {
        m.unwrap();
        n += 1;
    }
    assert_eq!(n, 5);
    // The stream ended: counted (the runtime records it as the end goes out).
    let started = Instant::now();
    loop {
        let text = rt.runtime.observer().encode_text(&[]);
        // The count and the in-flight gauge are two updates: wait for both.
        if text.contains(
            r#"polycall_calls_total{side="server",method="debug.stream",class="normal"} 1"#,
        ) && text.contains(r#"polycall_calls_in_flight{side="server",method="debug.stream"} 0"#)
        {
            assert!(
                text.contains(
                    r#"polycall_reply_bytes_total{side="server",method="debug.stream"} 35"#
                ),
                "{text}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown().await;
}

/// What the runtime sent is counted per compression algorithm, raw and wire bytes (on
/// loopback the adaptive selector sends as is: `none`, raw = wire; the proto test
/// `large_messages_are_compressed_and_decompressed_by_the_caller` counts a compressed one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_bytes_are_counted_per_compression_algorithm() {
    let rt = TestRuntime::start().await;
    let channel = Channel::connect(rt.endpoint.clone()).await.unwrap();
    let text = "the same line of text, again and again; ".repeat(4000);
    for _ in 0..20 {
        let r = channel
            .call(Call::new("debug.echo", Payload::raw(text.clone())).unwrap())
            .await
            .unwrap();
        assert_eq!(r.payload.bytes.len(), text.len());
    }
    let families = rt.runtime.metrics_text();
    let value = |name: &str, algorithm: &str| -> f64 {
        let prefix = format!("{name}{{algorithm=\"{algorithm}\"}} ");
        families
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}in\n{families}"))
    };
    let mut messages = 0.0;
    let mut raw = 0.0;
    for a in ["none", "zstd", "brotli"] {
        let (r, w) = (
            value("polycall_sent_raw_bytes_total", a),
            value("polycall_sent_wire_bytes_total", a),
        );
        assert!(r >= w, "{a}: {r} raw bytes sent as {w}");
        if a == "none" {
            assert_eq!(r, w);
        }
        messages += value("polycall_sent_messages_total", a);
        raw += r;
    }
    assert!(
        messages >= 20.0 && raw >= 20.0 * text.len() as f64,
        "{messages} messages, {raw} bytes"
    );
    rt.shutdown().await;
}
