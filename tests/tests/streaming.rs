//! Streaming calls routed by the runtime between Rust processes' connections: every
//! shape, the remaining deadline passed on, cancellation from the caller, the
//! provider's loss, and the runtime's authorization policy applied to streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream;
use polycall_core::{
    Call, CallKind, Code, MessageStream, MethodInfo, Payload, Router, Status, StreamCall,
};
use polycall_net::Channel;
use polycall_runtime::Provider;
use polycall_test_support::TestRuntime;

const LIMIT: Duration = Duration::from_secs(30);

fn text(p: &Payload) -> String {
    String::from_utf8_lossy(&p.bytes).into_owned()
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The provider's methods: `feed.count` (server stream), `feed.sum` (client stream),
/// `feed.upper` (bidi), `feed.forever` (until cancelled; sets `dropped` when let go),
/// `feed.deadline` (one message: the deadline it received, in ms from now).
fn feeds(dropped: Arc<AtomicBool>) -> Router {
    Router::new()
        .route_stream(
            "feed.count",
            CallKind::ServerStream,
            MethodInfo::new("counts to N"),
            |call: StreamCall| -> MessageStream {
                Box::pin(
                    stream::once(polycall_core::stream::single(call.requests)).flat_map(|r| {
                        let items: Vec<Result<Payload, Status>> = match r {
                            Ok(p) => (1..=text(&p).parse::<u32>().unwrap_or(0))
                                .map(|i| Ok(Payload::raw(i.to_string())))
                                .collect(),
                            Err(e) => vec![Err(e)],
                        };
                        stream::iter(items)
                    }),
                )
            },
        )
        .unwrap()
        .route_stream(
            "feed.sum",
            CallKind::ClientStream,
            MethodInfo::new("adds up"),
            polycall_test_support::streams::sum,
        )
        .unwrap()
        .route_stream(
            "feed.upper",
            CallKind::Bidi,
            MethodInfo::new("capitals"),
            polycall_test_support::streams::upper,
        )
        .unwrap()
        .route_stream(
            "feed.forever",
            CallKind::ServerStream,
            MethodInfo::new("ticks until cancelled"),
            move |_call: StreamCall| -> MessageStream {
                let flag = DropFlag(dropped.clone());
                Box::pin(stream::unfold(flag, |flag| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((Ok(Payload::raw("tick")), flag))
                }))
            },
        )
        .unwrap()
        .route_stream(
            "feed.deadline",
            CallKind::ServerStream,
            MethodInfo::new("the deadline it got, in ms from now"),
            |call: StreamCall| -> MessageStream {
                let left = call
                    .metadata
                    .deadline
                    .map(|d| d.0.saturating_duration_since(Instant::now()).as_millis());
                Box::pin(stream::iter([Ok(Payload::raw(format!("{left:?}")))]))
            },
        )
        .unwrap()
}

/// Reads a stream to its end: the code of the error that ended it, if one did.
async fn end_of(mut s: polycall_net::Streaming) -> Option<Code> {
    while let Some(m) = s.next().await {
        if let Err(e) = m {
            return Some(e.code);
        }
    }
    None
}

async fn collect(s: polycall_net::Streaming) -> Vec<Result<String, Code>> {
    s.map(|m| m.map(|p| text(&p)).map_err(|e| e.code))
        .collect()
        .await
}

fn words(w: &[&'static str]) -> MessageStream {
    Box::pin(stream::iter(
        w.iter().map(|s| Ok(Payload::raw(*s))).collect::<Vec<_>>(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_routes_every_shape_of_stream() {
    tokio::time::timeout(LIMIT, async {
        let t = TestRuntime::start().await;
        let dropped = Arc::new(AtomicBool::new(false));
        let provider = Provider::start(t.endpoint.clone(), feeds(dropped.clone()))
            .await
            .unwrap();
        let c = Channel::connect(t.endpoint.clone()).await.unwrap();
        let s = c
            .server_stream(Call::new("feed.count", Payload::raw("4")).unwrap())
            .await
            .unwrap();
        assert_eq!(
            collect(s).await,
            ["1", "2", "3", "4"].map(|s| Ok(s.to_owned())).to_vec()
        );
        let sum = c
            .client_stream(StreamCall::new("feed.sum", words(&["5", "6", "7"])).unwrap())
            .await
            .unwrap();
        assert_eq!(text(&sum.payload), "18");
        let s = c
            .bidi(StreamCall::new("feed.upper", words(&["a", "b", "c"])).unwrap())
            .await
            .unwrap();
        assert_eq!(
            collect(s).await,
            ["A", "B", "C"].map(|s| Ok(s.to_owned())).to_vec()
        );
        // A unary call of a streaming method is told to open a stream.
        let err = c
            .call(Call::new("feed.count", Payload::raw("2")).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::InvalidInput, "{err}");
        // `describe` says which methods stream.
        let d = c
            .call(Call::new("sys.describe", Payload::empty()).unwrap())
            .await
            .unwrap();
        let d: serde_json::Value = d.payload.to_json().unwrap();
        let kinds: Vec<(String, String)> = d["methods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"].as_str().unwrap().starts_with("feed."))
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m["kind"].as_str().unwrap_or("unary").to_owned(),
                )
            })
            .collect();
        assert!(
            kinds.contains(&("feed.upper".into(), "bidi".into())),
            "{kinds:?}"
        );
        provider.stop().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_cancellation_and_the_providers_loss_cross_the_runtime() {
    tokio::time::timeout(LIMIT, async {
        let t = TestRuntime::start().await;
        let dropped = Arc::new(AtomicBool::new(false));
        let provider = Provider::start(t.endpoint.clone(), feeds(dropped.clone()))
            .await
            .unwrap();
        let c = Channel::connect(t.endpoint.clone()).await.unwrap();

        // The provider sees the caller's remaining deadline.
        let mut call = Call::new("feed.deadline", Payload::empty()).unwrap();
        call.metadata.deadline = Some(polycall_core::Deadline::after(
            Instant::now(),
            Duration::from_secs(5),
        ));
        let s = c.server_stream(call).await.unwrap();
        let got = collect(s).await;
        let ms: u128 = got[0]
            .as_ref()
            .unwrap()
            .trim_start_matches("Some(")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        assert!(ms > 3000 && ms <= 5000, "{got:?}");

        // The caller drops its stream: the provider's stream is let go.
        let mut s = c
            .server_stream(Call::new("feed.forever", Payload::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(text(&s.next().await.unwrap().unwrap()), "tick");
        drop(s);
        while !dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // The provider goes away mid-stream: the caller's stream ends `unavailable`.
        let mut s = c
            .server_stream(Call::new("feed.forever", Payload::empty()).unwrap())
            .await
            .unwrap();
        assert!(s.next().await.unwrap().is_ok());
        provider.stop().await;
        assert_eq!(end_of(s).await, Some(Code::Unavailable));
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtimes_policy_applies_to_streams() {
    tokio::time::timeout(LIMIT, async {
        let policy: polycall_security::authz::PolicyConfig = serde_json::from_str(
            r#"{ "rules": [
                { "service": "feed", "method": "count", "allow": ["any"], "provide": ["any"] },
                { "service": "feed", "method": "upper", "allow": ["authenticated"], "provide": ["any"] },
                { "service": "feed", "method": "sum", "allow": ["authenticated"], "provide": ["any"] },
                { "service": "feed", "method": "forever", "allow": ["any"], "provide": ["any"] },
                { "service": "feed", "method": "deadline", "allow": ["any"], "provide": ["any"] }
            ] }"#,
        )
        .unwrap();
        let policy = Arc::new(polycall_security::authz::Policy::new(&policy).unwrap());
        let t = TestRuntime::start_with(|mut c| {
            c.qos.policy = Some(policy);
            c
        })
        .await;
        let provider = Provider::start(t.endpoint.clone(), feeds(Arc::default()))
            .await
            .unwrap();
        let c = Channel::connect(t.endpoint.clone()).await.unwrap();
        let s = c
            .server_stream(Call::new("feed.count", Payload::raw("2")).unwrap())
            .await
            .unwrap();
        assert_eq!(collect(s).await.len(), 2);
        let s = c
            .bidi(StreamCall::new("feed.upper", words(&["x"])).unwrap())
            .await
            .unwrap();
        assert_eq!(collect(s).await, vec![Err(Code::PermissionDenied)]);
        let err = c
            .client_stream(StreamCall::new("feed.sum", words(&["1"])).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::PermissionDenied, "{err}");
        provider.stop().await;
    })
    .await
    .expect("bounded");
}
