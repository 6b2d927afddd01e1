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
