//! Streams through a `polycall run` process: a provider streams 1 GiB to a client that
//! reads nothing for 5 s. The runtime forwards no faster than the client reads — its
//! RSS grows by less than twice its windows — and then the whole transfer arrives
//! intact (same BLAKE3 hash on both ends).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Runtime;
use futures_util::StreamExt;
use polycall::net::Channel;
use polycall::runtime::Provider;
use polycall::{Call, CallKind, MessageStream, MethodInfo, Payload, Router, Status, StreamCall};

/// The runtime's flow-control window on each of its connections.
const WINDOW: u64 = 2 * 1024 * 1024;
const TOTAL: u64 = 1024 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `bulk.send` streams `n` bytes (the request, decimal) in 256 KiB messages, each
/// stamped with its index; counts what it produced; hashes what it sent.
fn bulk(produced: Arc<AtomicU64>, sent_hash: Arc<std::sync::Mutex<Option<String>>>) -> Router {
    Router::new()
        .route_stream(
            "bulk.send",
            CallKind::ServerStream,
            MethodInfo::new("streams N bytes"),
            move |call: StreamCall| -> MessageStream {
                let produced = produced.clone();
                let sent_hash = sent_hash.clone();
                let opened = async move {
                    let req = polycall::stream::single(call.requests).await?;
                    let n: u64 = String::from_utf8_lossy(&req.bytes).parse().unwrap_or(0);
                    Ok::<_, Status>((n, produced, sent_hash))
                };
                Box::pin(futures_util::stream::once(opened).flat_map(|r| {
                    let (n, produced, sent_hash) = match r {
                        Ok(v) => v,
                        Err(e) => return polycall::stream::fail(e),
                    };
                    let base: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
                    let hasher = blake3::Hasher::new();
                    let chunks = n.div_ceil(CHUNK as u64);
                    Box::pin(futures_util::stream::unfold(
                        (0u64, hasher),
                        move |(i, mut hasher)| {
                            let produced = produced.clone();
                            let sent_hash = sent_hash.clone();
                            let mut chunk = base.clone();
                            async move {
                                if i == chunks {
                                    *sent_hash.lock().unwrap() =
                                        Some(hasher.finalize().to_hex().to_string());
                                    return None;
                                }
                                chunk[..8].copy_from_slice(&i.to_le_bytes());
                                hasher.update(&chunk);
                                produced.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                                Some((Ok(Payload::raw(chunk)), (i + 1, hasher)))
                            }
                        },
                    )) as MessageStream
                }))
            },
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_stops_the_provider_through_the_runtime() {
    let dir = std::env::temp_dir().join(format!("polycall-stream-bp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("polycall.toml");
    std::fs::write(
        &cfg,
        format!("version = 1\n[limits]\ninitial_window = {WINDOW}\nmax_frame = 262144\n"),
    )
    .unwrap();
    let rt = Runtime::start_with(
        &["--config", cfg.to_str().unwrap()],
        &["--endpoint", "127.0.0.1:0"],
    );
    let pid = rt.child.id();
    let endpoint: polycall::Endpoint = rt.endpoint.parse().unwrap();
    let produced = Arc::new(AtomicU64::new(0));
    let sent_hash = Arc::new(std::sync::Mutex::new(None));
    let provider = Provider::start(endpoint.clone(), bulk(produced.clone(), sent_hash.clone()))
        .await
        .unwrap();
    let client = Channel::connect(endpoint).await.unwrap();
    let limit = Duration::from_secs(240);
    tokio::time::timeout(limit, async {
        // Warm the runtime up with a 32 MiB stream read at once, then take its RSS.
        let warm = client
            .server_stream(Call::new("bulk.send", Payload::raw((32u64 << 20).to_string())).unwrap())
            .await
            .unwrap();
        let warm_bytes: usize = warm
            .map(|m| m.unwrap().len())
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum();
        assert_eq!(warm_bytes as u64, 32 << 20);
        let baseline = rss_kib(pid);
        produced.store(0, Ordering::SeqCst);
        *sent_hash.lock().unwrap() = None;

        let mut stream = client
            .server_stream(Call::new("bulk.send", Payload::raw(TOTAL.to_string())).unwrap())
            .await
            .unwrap();
        let mut hasher = blake3::Hasher::new();
        let first = stream.next().await.unwrap().unwrap();
        hasher.update(&first.bytes);
        let mut received = first.len() as u64;
        // Read nothing for 5 s; watch the runtime's memory and the provider.
        let stalled_at = Instant::now();
        let mut peak = baseline;
        while stalled_at.elapsed() < Duration::from_secs(5) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = produced.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            produced.load(Ordering::SeqCst),
            during,
            "the provider is stopped while the client does not read"
        );
        assert!(
            during < 8 * WINDOW,
            "{during} bytes produced for a reader that took {received}"
        );
        let growth = (peak.saturating_sub(baseline)) * 1024;
        eprintln!(
            "runtime RSS: baseline {baseline} KiB, peak while stalled {peak} KiB (+{} KiB); \
             produced {during} bytes",
            growth / 1024
        );
        assert!(
            growth < 2 * (2 * WINDOW),
            "the runtime's RSS grew by {growth} bytes, over twice its windows ({} bytes)",
            2 * WINDOW
        );
        // Then everything arrives, intact.
        while let Some(m) = stream.next().await {
            let m = m.unwrap();
            received += m.len() as u64;
            hasher.update(&m.bytes);
        }
        assert_eq!(received, TOTAL);
        let sent = sent_hash
            .lock()
            .unwrap()
            .clone()
            .expect("the provider finished");
        assert_eq!(hasher.finalize().to_hex().to_string(), sent, "same bytes");
    })
    .await
    .expect("bounded");
    provider.stop().await;
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn call_stream_prints_json_lines_and_exits_with_the_streams_status() {
    let rt = Runtime::start();
    let o = rt.cli(&[
        "call",
        "debug.stream",
        "--stream",
        "--json",
        r#"{"count": 3}"#,
    ]);
    assert!(o.status.success(), "{o:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"i": 0}),
            serde_json::json!({"i": 1}),
            serde_json::json!({"i": 2})
        ]
    );
    // --count stops (and cancels) a stream that would go on.
    let started = Instant::now();
    let o = rt.cli(&[
        "call",
        "debug.stream",
        "--stream",
        "--count",
        "2",
        "--json",
        r#"{"count": 1000, "interval_ms": 50}"#,
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    // A request stream from a file of JSON lines, echoed back.
    let file = rt.dir.join("requests.jsonl");
    std::fs::write(&file, "{\"n\": 1}\n\n{\"n\": 2}\n").unwrap();
    let o = rt.cli(&[
        "call",
        "debug.echo_stream",
        "--stream",
        "--requests",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec![r#"{"n":1}"#, r#"{"n":2}"#]
    );
    // A stream that fails exits with its status's code; a stream deadline is one.
    let o = rt.cli(&[
        "call",
        "debug.stream",
        "--stream",
        "--json",
        r#"{"nope": 1}"#,
    ]);
    assert_eq!(
        o.status.code(),
        Some(polycall::Code::InvalidInput.exit_code() as i32),
        "{o:?}"
    );
    let o = rt.cli(&[
        "call",
        "debug.stream",
        "--stream",
        "--stream-timeout-ms",
        "300",
        "--json",
        r#"{"count": 1000, "interval_ms": 50}"#,
    ]);
    assert_eq!(
        o.status.code(),
        Some(polycall::Code::DeadlineExceeded.exit_code() as i32),
        "{o:?}"
    );
    // A malformed request line is an input error naming the line.
    std::fs::write(&file, "{\"n\": 1}\nnot json\n").unwrap();
    let o = rt.cli(&[
        "call",
        "debug.echo_stream",
        "--stream",
        "--requests",
        file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("requests.jsonl:2"),
        "{o:?}"
    );
}
