//! Streaming calls between a `Channel` and a `Server` over real sockets: the three
//! shapes, errors and ends, cancellation from either side, deadlines, and backpressure
//! that stops a producer whose consumer does not read while other calls go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;
use polycall_core::{
    Call, CallKind, Code, ContentType, MessageStream, MethodInfo, Payload, Reply, Router, Status,
    StreamCall, handler_fn,
};
use polycall_net::{Channel, Server, ServerConfig};

const LIMIT: Duration = Duration::from_secs(20);

fn text(p: &Payload) -> String {
    String::from_utf8_lossy(&p.bytes).into_owned()
}

fn messages(items: Vec<&'static str>) -> MessageStream {
    Box::pin(stream::iter(
        items
            .into_iter()
            .map(|s| Ok(Payload::raw(s)))
            .collect::<Vec<_>>(),
    ))
}

/// Each message of `feed.ticks`: small enough to be packed (under the compressor's
/// minimum), large enough that a window holds a bounded number (tens of thousands).
static TICK: [u8; 200] = [b't'; 200];

/// Messages of `feed.mixed`.
const MIXED: usize = 3000;

/// `feed.mixed`'s message `i`: mostly small raw ones (packed by the producer), every
/// seventh JSON (a change of content type ends a packed run), every hundredth 5000 bytes
/// (too large to pack).
fn mixed(i: usize) -> Payload {
    if i % 100 == 99 {
        Payload::raw(vec![(i % 251) as u8; 5000])
    } else if i.is_multiple_of(7) {
        Payload::new(format!("{{\"i\":{i}}}"), ContentType::Json)
    } else {
        Payload::raw(i.to_string())
    }
}

/// Sets a flag when dropped: tells a test that a handler's stream was let go.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Fixture {
    server: Server,
    channel: Channel,
    produced: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    /// `feed.ticks`'s count and drop flag.
    ticks_produced: Arc<AtomicUsize>,
    ticks_dropped: Arc<AtomicBool>,
}

async fn fixture() -> Fixture {
    let produced = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let ticks_produced = Arc::new(AtomicUsize::new(0));
    let ticks_dropped = Arc::new(AtomicBool::new(false));
    let router = Router::new()
        .route_stream(
            "feed.count",
            CallKind::ServerStream,
            MethodInfo::new("counts to the number in the request"),
            |call: StreamCall| -> MessageStream {
                Box::pin(
                    stream::once(polycall_core::stream::single(call.requests)).flat_map(|r| {
                        let items: Vec<Result<Payload, Status>> = match r {
                            Ok(p) => {
                                let n: usize = text(&p).parse().unwrap_or(0);
                                (1..=n).map(|i| Ok(Payload::raw(i.to_string()))).collect()
                            }
                            Err(s) => vec![Err(s)],
                        };
                        stream::iter(items)
                    }),
                )
            },
        )
        .unwrap()
        .route_stream(
            "feed.fail",
            CallKind::ServerStream,
            MethodInfo::new("two messages, then not_found"),
            |_call: StreamCall| -> MessageStream {
                Box::pin(stream::iter(vec![
                    Ok(Payload::raw("a")),
                    Ok(Payload::raw("b")),
                    Err(Status::not_found("the third is missing")),
                ]))
            },
        )
        .unwrap()
        .route_stream(
            "feed.forever",
            CallKind::ServerStream,
            MethodInfo::new("64 KiB messages until cancelled; counts what it produced"),
            {
                let produced = produced.clone();
                let dropped = dropped.clone();
                move |_call: StreamCall| -> MessageStream {
                    let produced = produced.clone();
                    let flag = DropFlag(dropped.clone());
                    let chunk = Payload::raw(vec![7u8; 64 * 1024]);
                    Box::pin(stream::repeat(()).map(move |_| {
                        let _keep = &flag;
                        produced.fetch_add(1, Ordering::SeqCst);
                        Ok(chunk.clone())
                    }))
                }
            },
        )
        .unwrap()
        .route_stream(
            "feed.ticks",
            CallKind::ServerStream,
            MethodInfo::new("TICK-byte messages until cancelled, made inline; counts them")
                .inline(true),
            {
                let produced = ticks_produced.clone();
                let dropped = ticks_dropped.clone();
                move |_call: StreamCall| -> MessageStream {
                    let produced = produced.clone();
                    let flag = DropFlag(dropped.clone());
                    Box::pin(stream::repeat(()).map(move |_| {
                        let _keep = &flag;
                        produced.fetch_add(1, Ordering::SeqCst);
                        Ok(Payload::raw(&TICK[..]))
                    }))
                }
            },
        )
        .unwrap()
        .route_stream(
            "feed.mixed",
            CallKind::ServerStream,
            MethodInfo::new("small raw and JSON messages with large ones among them"),
            |_call: StreamCall| -> MessageStream {
                Box::pin(stream::iter((0..MIXED).map(|i| Ok(mixed(i)))))
            },
        )
        .unwrap()
        .route_stream(
            "sum.all",
            CallKind::ClientStream,
            MethodInfo::new("adds the numbers it is sent"),
            polycall_test_support::streams::sum,
        )
        .unwrap()
        .route_stream(
            "chat.upper",
            CallKind::Bidi,
            MethodInfo::new("answers each message in capitals"),
            polycall_test_support::streams::upper,
        )
        .unwrap()
        .route(
            "debug.echo",
            MethodInfo::new("echo"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap();
    let server = Server::serve_router(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::default(),
        router,
    )
    .await
    .unwrap();
    let channel = Channel::connect(server.local_endpoint().clone())
        .await
        .unwrap();
    Fixture {
        server,
        channel,
        produced,
        dropped,
        ticks_produced,
        ticks_dropped,
    }
}

/// Waits until a producer's count holds still (it filled the windows and stopped; a
/// debug build on a busy machine takes a while to get there), checks it stays still,
/// and returns it.
async fn held_still(produced: &AtomicUsize) -> usize {
    let mut stalled = produced.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = produced.load(Ordering::SeqCst);
        if now == stalled {
            break;
        }
        stalled = now;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        produced.load(Ordering::SeqCst),
        stalled,
        "the producer is stopped"
    );
    stalled
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

#[tokio::test]
async fn the_three_shapes_and_their_ends() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let c = &f.channel;
        assert!(
            c.any_connection().await.unwrap().features() & polycall_proto::features::STREAMING != 0,
            "streaming is negotiated"
        );
        let s = c
            .server_stream(Call::new("feed.count", Payload::raw("5")).unwrap())
            .await
            .unwrap();
        assert_eq!(
            collect(s).await,
            ["1", "2", "3", "4", "5"].map(|s| Ok(s.to_owned())).to_vec()
        );
        // A stream with no message at all ends cleanly.
        let s = c
            .server_stream(Call::new("feed.count", Payload::raw("0")).unwrap())
            .await
            .unwrap();
        assert!(collect(s).await.is_empty());
        // A stream that fails ends with its status, after what it sent.
        let s = c
            .server_stream(Call::new("feed.fail", Payload::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            collect(s).await,
            vec![Ok("a".into()), Ok("b".into()), Err(Code::NotFound)]
        );
        let sum = c
            .client_stream(StreamCall::new("sum.all", messages(vec!["1", "20", "300"])).unwrap())
            .await
            .unwrap();
        assert_eq!(text(&sum.payload), "321");
        let none = c
            .client_stream(StreamCall::new("sum.all", messages(vec![])).unwrap())
            .await
            .unwrap();
        assert_eq!(text(&none.payload), "0");
        let s = c
            .bidi(StreamCall::new("chat.upper", messages(vec!["hi", "there"])).unwrap())
            .await
            .unwrap();
        assert_eq!(collect(s).await, vec![Ok("HI".into()), Ok("THERE".into())]);
        f.server.shutdown().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn bidi_replies_as_requests_arrive() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Payload, Status>>();
        let requests: MessageStream = Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        let mut replies = f
            .channel
            .bidi(StreamCall::new("chat.upper", requests).unwrap())
            .await
            .unwrap();
        for word in ["one", "two", "three"] {
            tx.send(Ok(Payload::raw(word))).unwrap();
            let reply = replies.next().await.unwrap().unwrap();
            assert_eq!(
                text(&reply),
                word.to_uppercase(),
                "a reply per request, in turn"
            );
        }
        drop(tx);
        assert!(
            replies.next().await.is_none(),
            "the end follows the requests' end"
        );
        f.server.shutdown().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn shapes_that_do_not_match_are_refused() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let err = f
            .channel
            .call(Call::new("feed.count", Payload::raw("3")).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::InvalidInput, "{err}");
        assert!(err.message.contains("open it as a stream"), "{err}");
        let s = f
            .channel
            .bidi(StreamCall::new("debug.echo", messages(vec!["a", "b"])).unwrap())
            .await
            .unwrap();
        assert_eq!(collect(s).await, vec![Err(Code::InvalidInput)]);
        // A unary method opened as a server stream answers its one reply as the stream.
        let s = f
            .channel
            .server_stream(Call::new("debug.echo", Payload::raw("x")).unwrap())
            .await
            .unwrap();
        assert_eq!(collect(s).await, vec![Ok("x".into())]);
        f.server.shutdown().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_consumer_that_stops_reading_stops_the_producer_and_cancel_ends_it() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let mut s = f
            .channel
            .server_stream(Call::new("feed.forever", Payload::empty()).unwrap())
            .await
            .unwrap();
        assert!(s.next().await.unwrap().is_ok());
        // The reader stops: the producer stops within the windows.
        let stalled = held_still(&f.produced).await;
        // About the stream window (8 MiB, 1.5 at most held) plus the send buffer.
        let bound = (8 * 3 / 2 * 1024 * 1024 + polycall_net::SEND_BUFFER) / (64 * 1024) + 4;
        assert!(
            stalled <= bound,
            "{stalled} messages of 64 KiB produced for a reader that took one (bound {bound})"
        );
        // Meanwhile unary calls on the same connection are answered.
        let r = f
            .channel
            .call(Call::new("debug.echo", Payload::raw("still here")).unwrap())
            .await
            .unwrap();
        assert_eq!(text(&r.payload), "still here");
        // Reading resumes the producer.
        for _ in 0..(stalled + 50) {
            assert!(s.next().await.unwrap().is_ok());
        }
        assert!(f.produced.load(Ordering::SeqCst) > stalled);
        // Dropping the reader cancels the call: the handler's stream is let go.
        drop(s);
        while !f.dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.server.shutdown().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_stream_ends_at_its_deadline() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let mut call = Call::new("feed.forever", Payload::empty()).unwrap();
        call.metadata.deadline = Some(polycall_core::Deadline::after(
            std::time::Instant::now(),
            Duration::from_millis(300),
        ));
        let s = f.channel.server_stream(call).await.unwrap();
        assert_eq!(end_of(s).await, Some(Code::DeadlineExceeded));
        while !f.dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.server.shutdown().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn the_servers_loss_ends_the_stream_with_unavailable() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let mut s = f
            .channel
            .server_stream(Call::new("feed.forever", Payload::empty()).unwrap())
            .await
            .unwrap();
        assert!(s.next().await.unwrap().is_ok());
        for c in f.channel.connections() {
            c.close(Status::unavailable("the test closes it"));
        }
        assert_eq!(end_of(s).await, Some(Code::Unavailable));
        f.server.shutdown().await;
    })
    .await
    .expect("bounded");
}

/// Small messages packed by the producer, JSON among raw, and large ones between them
/// arrive whole, in order and with their content types, read one by one or in batches.
#[tokio::test]
async fn mixed_messages_arrive_in_order_read_one_by_one_or_in_batches() {
    let f = fixture().await;
    let open = || async {
        f.channel
            .server_stream(Call::new("feed.mixed", Payload::raw("")).unwrap())
            .await
            .unwrap()
    };
    let one_by_one: Vec<Payload> =
        tokio::time::timeout(LIMIT, open().await.map(Result::unwrap).collect())
            .await
            .unwrap();
    let mut batched = Vec::new();
    let mut s = open().await;
    while let Some(batch) = tokio::time::timeout(LIMIT, s.next_batch()).await.unwrap() {
        let batch = batch.unwrap();
        assert!(!batch.is_empty(), "a batch holds at least one message");
        assert_eq!(batch.len(), batch.iter().count());
        let borrowed: Vec<(Vec<u8>, ContentType)> = batch
            .iter()
            .map(|m| (m.bytes().to_vec(), m.content_type()))
            .collect();
        let owned: Vec<Payload> = batch.into_payloads().collect();
        assert_eq!(
            borrowed,
            owned
                .iter()
                .map(|p| (p.bytes.to_vec(), p.content_type))
                .collect::<Vec<_>>()
        );
        batched.extend(owned);
    }
    let want: Vec<Payload> = (0..MIXED).map(mixed).collect();
    assert_eq!(one_by_one, want);
    assert_eq!(batched, want);
}

/// A batch read stops before a failure: the messages first, then the error, then the
/// end; reads one by one and in batches mix on one stream.
#[tokio::test]
async fn batches_end_before_the_error_and_mix_with_single_reads() {
    let f = fixture().await;
    let mut s = f
        .channel
        .server_stream(Call::new("feed.fail", Payload::raw("")).unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(batch) = tokio::time::timeout(LIMIT, s.next_batch()).await.unwrap() {
        match batch {
            Ok(b) => got.extend(
                b.iter()
                    .map(|m| String::from_utf8_lossy(m.bytes()).into_owned()),
            ),
            Err(e) => error = Some(e.code),
        }
    }
    assert_eq!(got, ["a", "b"]);
    assert_eq!(error, Some(Code::NotFound));

    let mut s = f
        .channel
        .server_stream(Call::new("feed.count", Payload::raw("500")).unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let one = tokio::time::timeout(LIMIT, s.next()).await.unwrap();
        let Some(one) = one else { break };
        got.push(text(&one.unwrap()));
        match tokio::time::timeout(LIMIT, s.next_batch()).await.unwrap() {
            Some(b) => got.extend(b.unwrap().iter().map(|m| m.to_payload()).map(|p| text(&p))),
            None => break,
        }
    }
    let want: Vec<String> = (1..=500).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

/// An inline producer of small messages (packed on its side, on the connection's
/// runtime) stops within the windows for a reader that stops, goes on when it reads, and
/// is let go when the reader drops the stream.
#[tokio::test]
async fn an_inline_producer_of_small_messages_stops_with_its_reader_and_is_cancelled() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture().await;
        let mut s = f
            .channel
            .server_stream(Call::new("feed.ticks", Payload::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().bytes[..], TICK[..]);
        let stalled = held_still(&f.ticks_produced).await;
        // Each message takes TICK + 4 bytes of the windows (packed: a 4-byte length).
        let bound = (8 * 3 / 2 * 1024 * 1024 + polycall_net::SEND_BUFFER) / (TICK.len() + 4) + 1024;
        assert!(
            stalled > 1000 && stalled <= bound,
            "{stalled} messages produced for a reader that took one (bound {bound})"
        );
        let r = f
            .channel
            .call(Call::new("debug.echo", Payload::raw("still here")).unwrap())
            .await
            .unwrap();
        assert_eq!(text(&r.payload), "still here");
        let mut read = 0;
        while read < stalled + 10_000 {
            let batch = s.next_batch().await.unwrap().unwrap();
            assert!(batch.iter().all(|m| m.bytes() == TICK));
            read += batch.len();
        }
        assert!(f.ticks_produced.load(Ordering::SeqCst) > stalled);
        drop(s);
        while !f.ticks_dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.server.shutdown().await;
    })
    .await
    .expect("bounded");
}
