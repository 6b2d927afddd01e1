//! The connection state machine, two of them wired back to back in memory.

use bytes::{Bytes, BytesMut};
use polycall_core::{
    Code, ContentType, MethodInfo, MethodName, Payload, Priority, ServiceName, Status,
};
use polycall_proto::connection::PackedWriter;
use polycall_proto::frame::{
    self, CallFrame, DataFrame, Frame, MethodEntry, MethodRef, ReplyFrame,
};
use polycall_proto::{
    Config, Connection, Event, PREFACE, ProtoError, Role, SendError, Settings, WireMeta,
};

fn names(full: &str) -> (ServiceName, MethodName) {
    polycall_core::split_full_name(full).unwrap()
}

/// Two connections and the bytes each has sent the other (for inspection).
struct Pair {
    client: Connection,
    server: Connection,
    to_server: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        Self::with(Config::default(), Config::default())
    }

    fn with(client: Config, server: Config) -> Self {
        let mut p = Pair {
            client: Connection::new(Role::Client, client).unwrap(),
            server: Connection::new(Role::Server, server).unwrap(),
            to_server: Vec::new(),
        };
        p.pump();
        assert_eq!(p.client.poll_event(), Some(Event::Connected));
        assert_eq!(p.server.poll_event(), Some(Event::Connected));
        p
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn pump(&mut self) {
        loop {
            let (a, b) = self.step(usize::MAX);
            if a == 0 && b == 0 {
                break;
            }
        }
    }

    /// One round: each side transmits up to `max` bytes, delivered to the other.
    fn step(&mut self, max: usize) -> (usize, usize) {
        let mut up = Vec::new();
        let a = self.client.poll_transmit(max, &mut up);
        let mut down = Vec::new();
        let b = self.server.poll_transmit(max, &mut down);
        for c in up {
            self.to_server.extend_from_slice(&c);
            self.server.feed(&c).unwrap();
        }
        for c in down {
            self.client.feed(&c).unwrap();
        }
        (a, b)
    }

    fn call(&mut self, full: &str, payload: Payload) -> u32 {
        let (s, m) = names(full);
        self.client
            .open_call(&s, &m, payload, WireMeta::default(), false)
            .unwrap()
    }
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Decodes the frames in what the client sent (after preface and HELLO).
fn frames_sent(bytes: &[u8], crc: bool) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = frame::decode(&mut buf, u32::MAX, crc).unwrap() {
        out.push(f);
    }
    out
}

#[test]
fn unary_call_and_reply() {
    let mut p = Pair::new();
    let id = p.call(
        "debug.echo",
        Payload::json(&serde_json::json!({"x": 1})).unwrap(),
    );
    assert_eq!(id, 1, "client calls are odd, starting at 1");
    p.pump();
    let Some(Event::Call(call)) = p.server.poll_event() else {
        panic!("no call")
    };
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        ("debug", "echo")
    );
    assert_eq!(call.payload.content_type, ContentType::Json);
    p.server
        .send_reply(call.call_id, call.payload.clone(), false)
        .unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.client),
        vec![Event::Reply {
            call_id: id,
            payload: call.payload,
            stream: false,
            empty: false
        }]
    );
    assert_eq!(p.client.open_calls(), 0);
    assert_eq!(p.server.open_calls(), 0);
}

#[test]
fn metadata_travels() {
    let mut p = Pair::new();
    let (s, m) = names("a.b");
    let meta = WireMeta {
        timeout: Some(std::time::Duration::from_millis(250)),
        priority: Some(Priority::Critical),
        idempotent: true,
        principal: Some("spiffe://example.org/caller".into()),
        ..WireMeta::default()
    };
    p.client
        .open_call(&s, &m, Payload::empty(), meta.clone(), false)
        .unwrap();
    p.pump();
    let Some(Event::Call(call)) = p.server.poll_event() else {
        panic!()
    };
    assert_eq!(call.meta, meta);
}

#[test]
fn method_names_are_interned_after_first_use() {
    let mut p = Pair::new();
    p.to_server.clear();
    for _ in 0..3 {
        p.call("inventory.get", Payload::raw("x"));
    }
    p.call("inventory.put", Payload::raw("x"));
    p.pump();
    let crc = p
        .client
        .negotiated()
        .unwrap()
        .has(polycall_proto::features::CRC32C);
    let calls: Vec<MethodRef> = frames_sent(&p.to_server, crc)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Call(c) => Some(c.method),
            _ => None,
        })
        .collect();
    let (s, m) = names("inventory.get");
    let (s2, m2) = names("inventory.put");
    assert_eq!(
        calls,
        vec![
            MethodRef {
                id: 1,
                name: Some((s, m))
            },
            MethodRef { id: 1, name: None },
            MethodRef { id: 1, name: None },
            MethodRef {
                id: 2,
                name: Some((s2, m2))
            },
        ]
    );
    let got: Vec<String> = events(&mut p.server)
        .into_iter()
        .filter_map(|e| match e {
            Event::Call(c) => Some(format!("{}.{}", c.service, c.method)),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            "inventory.get",
            "inventory.get",
            "inventory.get",
            "inventory.put"
        ]
    );
}

#[test]
fn a_huge_message_is_fragmented_and_small_calls_interleave() {
    let mut cfg = Config::default();
    cfg.fragment_size = 16 * 1024;
    cfg.compression.candidates = vec![]; // this test is about framing: send bytes as they are
    let mut p = Pair::with(cfg.clone(), cfg);
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big_id = p.call("bulk.put", Payload::raw(big.clone()));
    let mut small_ids = Vec::new();
    let mut small_done_at = Vec::new();
    let mut got_big_at = None;
    for round in 0..2000 {
        if round % 4 == 0 && small_ids.len() < 20 {
            small_ids.push(p.call("debug.echo", Payload::raw("tiny")));
        }
        p.step(64 * 1024);
        for e in events(&mut p.server) {
            match e {
                Event::Call(c) if c.call_id == big_id => {
                    assert_eq!(c.payload.bytes, big, "reassembled intact");
                    got_big_at = Some(round);
                    p.server
                        .send_reply(c.call_id, Payload::empty(), false)
                        .unwrap();
                }
                Event::Call(c) => {
                    small_done_at.push(round);
                    p.server.send_reply(c.call_id, c.payload, false).unwrap();
                }
                _ => {}
            }
        }
        if got_big_at.is_some() && small_done_at.len() == 20 {
            break;
        }
    }
    let big_round = got_big_at.expect("big message delivered");
    assert_eq!(small_done_at.len(), 20);
    // Small calls opened while the big one was being sent were not held behind it.
    let before_big = small_done_at.iter().filter(|&&r| r < big_round).count();
    assert!(
        before_big >= 10,
        "only {before_big} small calls completed before the big one (round {big_round})"
    );
}

#[test]
fn flow_control_stops_a_sender_whose_peer_does_not_take_events() {
    let mut server = Config::default();
    server.settings.limits.initial_window = 64 * 1024;
    let mut client = Config::default();
    client.compression.candidates = vec![]; // count payload bytes as sent
    let mut p = Pair::with(client, server);
    for _ in 0..64 {
        p.call("load.push", Payload::raw(vec![1u8; 8 * 1024]));
    }
    p.pump();
    // The server took no events: the client may send at most about a window.
    let sent_bytes = 64 * 8 * 1024 - p.client.queued_bytes();
    assert!(
        sent_bytes <= 64 * 1024,
        "{sent_bytes} bytes sent with a 64 KiB window"
    );
    assert!(p.server.held_bytes() >= 32 * 1024);
    // Taking the events lets the rest through.
    let mut calls = 0;
    for _ in 0..100 {
        calls += events(&mut p.server)
            .iter()
            .filter(|e| matches!(e, Event::Call(_)))
            .count();
        p.pump();
        if calls == 64 {
            break;
        }
    }
    assert_eq!(calls, 64);
    assert_eq!(p.client.queued_bytes(), 0);
}

#[test]
fn a_message_larger_than_the_window_still_gets_through() {
    let mut server = Config::default();
    server.settings.limits.initial_window = 64 * 1024;
    let mut p = Pair::with(Config::default(), server);
    let id = p.call("bulk.put", Payload::raw(vec![9u8; 1024 * 1024]));
    p.pump();
    let Some(Event::Call(c)) = p.server.poll_event() else {
        panic!("not delivered")
    };
    assert_eq!((c.call_id, c.payload.len()), (id, 1024 * 1024));
}

#[test]
fn cancel_reaches_the_server_and_late_replies_are_ignored() {
    let mut p = Pair::new();
    let id = p.call("debug.sleep", Payload::empty());
    p.pump();
    let Some(Event::Call(c)) = p.server.poll_event() else {
        panic!()
    };
    p.client.cancel(id).unwrap();
    // The server replies before it sees the cancel.
    p.server
        .send_reply(c.call_id, Payload::raw("late"), false)
        .unwrap_or(());
    p.pump();
    assert_eq!(
        events(&mut p.client),
        vec![],
        "the late reply is dropped quietly"
    );
    assert!(p.client.is_open() && p.server.is_open());
    // A cancel that arrives first stops the server's work.
    let id = p.call("debug.sleep", Payload::empty());
    p.pump();
    let _ = events(&mut p.server);
    p.client.cancel(id).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.server),
        vec![Event::Cancelled { call_id: id }]
    );
    assert_eq!(
        p.server.send_reply(id, Payload::empty(), false),
        Err(SendError::UnknownCall(id))
    );
}

#[test]
fn errors_carry_code_message_and_retry_hint() {
    let mut p = Pair::new();
    let id = p.call("x.y", Payload::empty());
    p.pump();
    let _ = events(&mut p.server);
    let status = Status::busy("try later").with_retry_after(std::time::Duration::from_millis(30));
    p.server.send_error(id, &status).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.client),
        vec![Event::Failed {
            call_id: id,
            status
        }]
    );
}

#[test]
fn the_in_flight_limit_is_kept_by_both_sides() {
    let mut server = Config::default();
    server.settings.limits.max_in_flight = 2;
    let mut p = Pair::with(Config::default(), server);
    p.call("a.b", Payload::empty());
    p.call("a.b", Payload::empty());
    let (s, m) = names("a.b");
    assert_eq!(
        p.client
            .open_call(&s, &m, Payload::empty(), WireMeta::default(), false),
        Err(SendError::TooManyInFlight { limit: 2 })
    );
}

/// A server, handshaken, fed by hand-made frames: for peers that break the rules.
fn raw_server(settings: Settings) -> (Connection, bool) {
    raw_server_with(Connection::server(settings).unwrap())
}

/// Completes the handshake of `server` with a default client; returns it and whether
/// CRC32C was negotiated.
fn raw_server_with(mut server: Connection) -> (Connection, bool) {
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&Frame::Hello(Settings::default().hello()).to_bytes(false));
    server.feed(&bytes).unwrap();
    let mut out = Vec::new();
    server.poll_transmit(usize::MAX, &mut out);
    assert_eq!(server.poll_event(), Some(Event::Connected));
    let crc = server
        .negotiated()
        .unwrap()
        .has(polycall_proto::features::CRC32C);
    (server, crc)
}

fn call_frame(id: u32, payload: &'static [u8], more: bool) -> Frame {
    let (s, m) = names("a.b");
    Frame::Call(CallFrame {
        call_id: id,
        method: MethodRef {
            id: 0,
            name: Some((s, m)),
        },
        content_type: ContentType::Raw,
        compression: polycall_proto::compress::Algorithm::None,
        meta: WireMeta::default(),
        more,
        // With MORE, the tests send two more 1-byte fragments.
        message_len: more.then_some(payload.len() as u32 + 2),
        stream: false,
        empty: false,
        payload: Bytes::from_static(payload),
    })
}

fn sent_frames(c: &mut Connection, crc: bool) -> Vec<Frame> {
    let mut out = Vec::new();
    c.poll_transmit(usize::MAX, &mut out);
    let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    frames_sent(&bytes, crc)
}

#[test]
fn a_peer_over_the_in_flight_limit_gets_busy_and_the_connection_lives() {
    let mut settings = Settings::default();
    settings.limits.max_in_flight = 2;
    let (mut server, crc) = raw_server(settings);
    for id in [1, 3, 5] {
        server
            .feed(&call_frame(id, b"x", false).to_bytes(crc))
            .unwrap();
    }
    let frames = sent_frames(&mut server, crc);
    let [Frame::Error(e)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!((e.call_id, Code::from_u16(e.code)), (5, Code::Busy));
    assert!(e.retry_after_ms.is_some());
    assert_eq!(events(&mut server).len(), 2);
    assert!(server.is_open());
}

#[test]
fn protocol_violations_close_the_connection_with_a_typed_error() {
    let cases: Vec<(&str, Vec<Frame>)> = vec![
        (
            "reply to a call never opened",
            vec![Frame::Reply(ReplyFrame {
                call_id: 2,
                content_type: ContentType::Raw,
                compression: polycall_proto::compress::Algorithm::None,
                more: false,
                message_len: None,
                stream: false,
                empty: false,
                payload: Bytes::new(),
            })],
        ),
        (
            "call id of the server's parity",
            vec![call_frame(2, b"", false)],
        ),
        (
            "call id reused",
            vec![call_frame(1, b"", false), call_frame(1, b"", false)],
        ),
        (
            "call ids going down",
            vec![call_frame(5, b"", false), call_frame(3, b"", false)],
        ),
        (
            "continuation without a message",
            vec![Frame::Data(DataFrame {
                packed: false,
                call_id: 1,
                first: None,
                more: false,
                message_len: None,
                payload: Bytes::new(),
            })],
        ),
        (
            "continuation after the message ended",
            vec![
                call_frame(1, b"", false),
                Frame::Data(DataFrame {
                    packed: false,
                    call_id: 1,
                    first: None,
                    more: false,
                    message_len: None,
                    payload: Bytes::new(),
                }),
            ],
        ),
        (
            "stream message on a unary call",
            vec![
                call_frame(1, b"", true),
                Frame::Data(DataFrame {
                    packed: false,
                    call_id: 1,
                    first: Some((ContentType::Raw, polycall_proto::compress::Algorithm::None)),
                    more: false,
                    message_len: None,
                    payload: Bytes::new(),
                }),
            ],
        ),
        (
            "a second hello",
            vec![Frame::Hello(Settings::default().hello())],
        ),
        (
            "an unbound method id",
            vec![Frame::Call(CallFrame {
                method: MethodRef { id: 9, name: None },
                ..match call_frame(1, b"", false) {
                    Frame::Call(c) => c,
                    _ => unreachable!(),
                }
            })],
        ),
        (
            "END for a call never opened",
            vec![Frame::End { call_id: 7 }],
        ),
        (
            "auth without a negotiated method",
            vec![Frame::Auth(polycall_proto::frame::Auth {
                method: 1,
                step: 0,
                data: Bytes::new(),
            })],
        ),
    ];
    for (name, frames) in cases {
        let (mut server, crc) = raw_server(Settings::default());
        let mut result = Ok(());
        for f in frames {
            result = server.feed(&f.to_bytes(crc));
            if result.is_err() {
                break;
            }
        }
        let err = result.expect_err(name);
        assert!(matches!(err, ProtoError::Violation(_)), "{name}: {err:?}");
        assert!(server.is_closed(), "{name}");
        let frames = sent_frames(&mut server, crc);
        let Some(Frame::Error(e)) = frames.last() else {
            panic!("{name}: no error frame, {frames:?}")
        };
        assert_eq!(
            (e.call_id, Code::from_u16(e.code)),
            (0, Code::Malformed),
            "{name}"
        );
        assert!(
            matches!(events(&mut server).last(), Some(Event::Closed { .. })),
            "{name}"
        );
    }
}

#[test]
fn flow_control_violation_is_typed() {
    let mut settings = Settings::default();
    settings.limits.initial_window = 4096;
    let (mut server, crc) = raw_server(settings);
    let err = server
        .feed(&call_frame(1, &[0u8; 5000], false).to_bytes(crc))
        .unwrap_err();
    assert_eq!(
        err,
        ProtoError::FlowControl {
            used: 5000,
            allowed: 4096
        }
    );
}

#[test]
fn a_message_over_the_limit_fails_that_call_only() {
    let mut server = Config::default();
    server.settings.limits.max_message = 100_000;
    let mut client = Config::default();
    // The client does not know (it will, from the handshake): bypass by lying in its own limits.
    client.settings.limits.max_message = 1 << 20;
    let mut p = Pair::with(client, server);
    let (s, m) = names("a.b");
    assert_eq!(
        p.client.open_call(
            &s,
            &m,
            Payload::raw(vec![0u8; 100_001]),
            WireMeta::default(),
            false
        ),
        Err(SendError::TooLarge {
            len: 100_001,
            max: 100_000
        })
    );
    // A hand-made oversize fragment train to a raw server: the call fails, the connection lives.
    let mut settings = Settings::default();
    settings.limits.max_message = 10;
    let (mut raw, crc) = raw_server(settings);
    raw.feed(&call_frame(1, b"0123456789", true).to_bytes(crc))
        .unwrap();
    raw.feed(
        &Frame::Data(DataFrame {
            packed: false,
            call_id: 1,
            first: None,
            more: true,
            message_len: None,
            payload: Bytes::from_static(b"!"),
        })
        .to_bytes(crc),
    )
    .unwrap();
    raw.feed(
        &Frame::Data(DataFrame {
            packed: false,
            call_id: 1,
            first: None,
            more: false,
            message_len: None,
            payload: Bytes::from_static(b"!"),
        })
        .to_bytes(crc),
    )
    .unwrap();
    raw.feed(&call_frame(3, b"ok", false).to_bytes(crc))
        .unwrap();
    let frames = sent_frames(&mut raw, crc);
    let [Frame::Error(e)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!((e.call_id, Code::from_u16(e.code)), (1, Code::TooLarge));
    let evs = events(&mut raw);
    assert!(
        matches!(&evs[..], [Event::Call(c)] if c.call_id == 3),
        "{evs:?}"
    );
}

#[test]
fn goaway_fails_unprocessed_calls_and_refuses_new_ones() {
    let mut p = Pair::new();
    let first = p.call("a.b", Payload::empty());
    p.pump();
    let _ = events(&mut p.server);
    let second = p.call("a.b", Payload::empty());
    p.server.go_away(&Status::unavailable("draining")).unwrap();
    // GOAWAY reaches the client before the server sees the second call.
    let mut down = Vec::new();
    p.server.poll_transmit(usize::MAX, &mut down);
    for c in down {
        p.client.feed(&c).unwrap();
    }
    let evs = events(&mut p.client);
    assert!(
        evs.contains(&Event::Failed {
            call_id: second,
            status: Status::unavailable(
                "the peer is going away and did not process this call; retry elsewhere"
            )
            .not_executed()
        }),
        "{evs:?}"
    );
    assert!(
        matches!(evs.last(), Some(Event::GoAway { last_call_id, .. }) if *last_call_id == first)
    );
    let (s, m) = names("a.b");
    assert_eq!(
        p.client
            .open_call(&s, &m, Payload::empty(), WireMeta::default(), false),
        Err(SendError::Closed)
    );
    // The first call is still served.
    p.server
        .send_reply(first, Payload::raw("done"), false)
        .unwrap();
    p.pump();
    assert!(
        matches!(&events(&mut p.client)[..], [Event::Reply { call_id, .. }] if *call_id == first)
    );
}

#[test]
fn streams_in_both_directions() {
    let mut p = Pair::new();
    let (s, m) = names("log.tail");
    let id = p
        .client
        .open_call(&s, &m, Payload::raw("first"), WireMeta::default(), true)
        .unwrap();
    p.client.send_message(id, Payload::raw("second")).unwrap();
    p.client.send_end(id).unwrap();
    p.pump();
    let evs = events(&mut p.server);
    assert!(matches!(&evs[0], Event::Call(c) if c.stream && &c.payload.bytes[..] == b"first"));
    assert_eq!(
        evs[1],
        Event::StreamMessage {
            call_id: id,
            payload: Payload::raw("second")
        }
    );
    assert_eq!(evs[2], Event::StreamEnd { call_id: id });
    p.server.send_reply(id, Payload::raw("r1"), true).unwrap();
    p.server.send_message(id, Payload::raw("r2")).unwrap();
    p.server.send_end(id).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.client),
        vec![
            Event::Reply {
                call_id: id,
                payload: Payload::raw("r1"),
                stream: true,
                empty: false
            },
            Event::StreamMessage {
                call_id: id,
                payload: Payload::raw("r2")
            },
            Event::StreamEnd { call_id: id },
        ]
    );
    assert_eq!((p.client.open_calls(), p.server.open_calls()), (0, 0));
}

#[test]
fn providers_register_and_unregister() {
    let mut p = Pair::new();
    let (s, m) = names("inventory.get");
    let id = p
        .client
        .register(vec![MethodEntry {
            service: s.clone(),
            method: m.clone(),
            info: MethodInfo::new("reads an item").idempotent(true),
        }])
        .unwrap();
    p.pump();
    let Some(Event::Register { call_id, methods }) = p.server.poll_event() else {
        panic!()
    };
    assert_eq!((call_id, methods[0].info.idempotent), (id, true));
    p.server
        .send_reply(call_id, Payload::empty(), false)
        .unwrap();
    p.pump();
    assert!(matches!(&events(&mut p.client)[..], [Event::Reply { call_id, .. }] if *call_id == id));
    let id = p.client.unregister(vec![(s, m)]).unwrap();
    p.pump();
    let Some(Event::Unregister { call_id, .. }) = p.server.poll_event() else {
        panic!()
    };
    p.server
        .send_error(call_id, &Status::not_found("not registered"))
        .unwrap();
    p.pump();
    assert!(
        matches!(&events(&mut p.client)[..], [Event::Failed { call_id, status }] if *call_id == id && status.code == Code::NotFound)
    );
    assert!(matches!(
        p.server.register(vec![]),
        Err(SendError::InvalidState { .. })
    ));
}

#[test]
fn ping_pong() {
    let mut p = Pair::new();
    p.client.ping(42).unwrap();
    p.pump();
    assert_eq!(events(&mut p.client), vec![Event::Pong { opaque: 42 }]);
}

#[test]
fn a_libpolycall_client_is_told_what_it_reached() {
    let mut server = Connection::server(Settings::default()).unwrap();
    let err = server.feed(b"PCR1\x01\x00\x00\x00").unwrap_err();
    assert!(matches!(err, ProtoError::NotPolycall(m) if m.contains("PCR1")));
    let mut server = Connection::server(Settings::default()).unwrap();
    let err = server.feed(b"GET / HTTP/1.1\r\n").unwrap_err();
    assert!(matches!(err, ProtoError::NotPolycall(_)));
    // A partial preface waits for more.
    let mut server = Connection::server(Settings::default()).unwrap();
    server.feed(&PREFACE[..3]).unwrap();
}

#[test]
fn version_mismatch_ends_the_handshake_on_both_sides() {
    let client = Settings::default().min_version(1).max_version(1);
    let server = Settings::default().min_version(2).max_version(3);
    let mut c = Connection::client(client).unwrap();
    let mut s = Connection::server(server).unwrap();
    let mut up = Vec::new();
    c.poll_transmit(usize::MAX, &mut up);
    let mut err = None;
    for b in up {
        if let Err(e) = s.feed(&b) {
            err = Some(e);
        }
    }
    assert!(matches!(err, Some(ProtoError::Handshake(st)) if st.code == Code::VersionMismatch));
    let mut down = Vec::new();
    s.poll_transmit(usize::MAX, &mut down);
    let mut err = None;
    for b in down {
        if let Err(e) = c.feed(&b) {
            err = Some(e);
        }
    }
    let Some(ProtoError::Remote(st)) = err else {
        panic!("{err:?}")
    };
    assert_eq!(st.code, Code::VersionMismatch);
    assert!(
        st.message.contains("1..=1") && st.message.contains("2..=3"),
        "{}",
        st.message
    );
    assert!(c.is_closed() && s.is_closed());
}

#[test]
fn a_closed_connection_fails_every_open_call() {
    let mut p = Pair::new();
    let a = p.call("a.b", Payload::empty());
    let b = p.call("a.b", Payload::empty());
    p.pump();
    let _ = events(&mut p.server);
    p.server.close(Status::internal("shutting down hard"));
    let mut down = Vec::new();
    p.server.poll_transmit(usize::MAX, &mut down);
    let mut err = None;
    for c in down {
        err = p.client.feed(&c).err();
    }
    assert!(matches!(err, Some(ProtoError::Remote(_))));
    let evs = events(&mut p.client);
    let failed: Vec<u32> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Failed { call_id, status } if status.code == Code::Unavailable => Some(*call_id),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![a, b]);
    assert!(matches!(evs.last(), Some(Event::Closed { .. })));
}

#[test]
fn a_final_reply_ends_a_call_whose_request_stream_is_still_open() {
    let mut p = Pair::new();
    let (s, m) = names("upload.parts");
    let id = p
        .client
        .open_call(&s, &m, Payload::raw("part 1"), WireMeta::default(), true)
        .unwrap();
    p.pump();
    let Some(Event::Call(c)) = p.server.poll_event() else {
        panic!()
    };
    p.server
        .send_reply(c.call_id, Payload::raw("enough"), false)
        .unwrap();
    // The client keeps streaming before it sees the reply: those frames are ignored.
    p.client.send_message(id, Payload::raw("part 2")).unwrap();
    p.pump();
    assert_eq!(events(&mut p.server), vec![]);
    assert_eq!(
        events(&mut p.client),
        vec![Event::Reply {
            call_id: id,
            payload: Payload::raw("enough"),
            stream: false,
            empty: false
        }]
    );
    assert_eq!((p.client.open_calls(), p.server.open_calls()), (0, 0));
    assert!(p.client.send_message(id, Payload::raw("part 3")).is_err());
}

#[test]
#[cfg(feature = "zstd")]
fn compressible_payloads_are_compressed_and_arrive_intact() {
    let mut p = Pair::new();
    p.client.set_link_throughput(12.5e6); // 100 Mbit/s: compression pays
    let record = r#"{"level":"info","service":"checkout","message":"order placed","order_id":12345,"items":3}"#;
    let body = format!("[{}]", vec![record; 400].join(","));
    p.to_server.clear();
    let id = p.call("logs.ingest", Payload::new(body.clone(), ContentType::Json));
    p.pump();
    let Some(Event::Call(c)) = p.server.poll_event() else {
        panic!()
    };
    assert_eq!((c.call_id, c.payload.bytes.as_ref()), (id, body.as_bytes()));
    assert!(
        p.to_server.len() < body.len() / 4,
        "{} bytes on the wire for a {}-byte repetitive JSON body",
        p.to_server.len(),
        body.len()
    );
}

/// 16 MiB of zeros, zstd-compressed to a few hundred bytes: far under any frame limit.
#[cfg(feature = "zstd")]
fn zstd_bomb() -> Bytes {
    let mut c = polycall_proto::compress::Compressor::new();
    let mut out = Vec::new();
    c.compress(
        polycall_proto::compress::Choice::zstd(3),
        &vec![0u8; 16 << 20],
        &mut out,
    )
    .unwrap();
    Bytes::from(out)
}

#[test]
#[cfg(feature = "zstd")]
fn a_decompression_bomb_fails_the_call_not_the_connection() {
    let mut settings = Settings::default();
    settings.limits.max_message = 64 * 1024;
    let (mut raw, crc) = raw_server(settings);
    let bomb = zstd_bomb();
    assert!(bomb.len() < 4096);
    let Frame::Call(mut f) = call_frame(1, b"", false) else {
        unreachable!()
    };
    f.compression = polycall_proto::compress::Algorithm::Zstd;
    f.payload = bomb;
    raw.feed(&Frame::Call(f).to_bytes(crc)).unwrap();
    raw.feed(&call_frame(3, b"fine", false).to_bytes(crc))
        .unwrap();
    let frames = sent_frames(&mut raw, crc);
    let [Frame::Error(e)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!((e.call_id, Code::from_u16(e.code)), (1, Code::TooLarge));
    let evs = events(&mut raw);
    assert!(
        matches!(&evs[..], [Event::Call(c)] if c.call_id == 3),
        "{evs:?}"
    );
    assert!(raw.is_open());
}

fn first_fragment(id: u32, declared: u32, payload: &'static [u8]) -> Frame {
    let Frame::Call(mut f) = call_frame(id, payload, true) else {
        unreachable!()
    };
    f.message_len = Some(declared);
    Frame::Call(f)
}

fn data(id: u32, more: bool, payload: &'static [u8]) -> Frame {
    Frame::Data(DataFrame {
        packed: false,
        call_id: id,
        first: None,
        more,
        message_len: None,
        payload: Bytes::from_static(payload),
    })
}

#[test]
fn a_declared_length_over_the_limit_is_refused_before_the_rest_arrives() {
    let mut settings = Settings::default();
    settings.limits.max_message = 1000;
    let (mut raw, crc) = raw_server(settings);
    raw.feed(&first_fragment(1, 1_000_000, b"head").to_bytes(crc))
        .unwrap();
    let frames = sent_frames(&mut raw, crc);
    let [Frame::Error(e)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!((e.call_id, Code::from_u16(e.code)), (1, Code::TooLarge));
    // The rest of it is ignored; the connection goes on.
    raw.feed(&data(1, false, b"tail").to_bytes(crc)).unwrap();
    raw.feed(&call_frame(3, b"ok", false).to_bytes(crc))
        .unwrap();
    assert!(matches!(&events(&mut raw)[..], [Event::Call(c)] if c.call_id == 3));
}

#[test]
fn fragments_must_add_up_to_the_declared_length() {
    let (mut raw, crc) = raw_server(Settings::default());
    // Overrun: declared 6, sent 4 + 4.
    raw.feed(&first_fragment(1, 6, b"abcd").to_bytes(crc))
        .unwrap();
    raw.feed(&data(1, false, b"efgh").to_bytes(crc)).unwrap();
    // Short: declared 10, sent 4 + 2.
    raw.feed(&first_fragment(3, 10, b"abcd").to_bytes(crc))
        .unwrap();
    raw.feed(&data(3, false, b"ef").to_bytes(crc)).unwrap();
    // Exact.
    raw.feed(&first_fragment(5, 6, b"abcd").to_bytes(crc))
        .unwrap();
    raw.feed(&data(5, false, b"ef").to_bytes(crc)).unwrap();
    let codes: Vec<(u32, Code)> = sent_frames(&mut raw, crc)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Error(e) => Some((e.call_id, Code::from_u16(e.code))),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![(1, Code::Malformed), (3, Code::Malformed)]);
    let evs = events(&mut raw);
    assert!(
        matches!(&evs[..], [Event::Call(c)] if c.call_id == 5 && &c.payload.bytes[..] == b"abcdef"),
        "{evs:?}"
    );
}

#[test]
fn the_reassembly_budget_refuses_with_busy_instead_of_stalling() {
    let mut settings = Settings::default();
    settings.limits.max_message = 1 << 20;
    let mut config = Config::default().settings(settings.clone());
    config.reassembly_budget = 2 << 20;
    let mut raw = Connection::new(Role::Server, config).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&Frame::Hello(Settings::default().hello()).to_bytes(false));
    raw.feed(&hello).unwrap();
    let crc = true;
    raw.poll_transmit(usize::MAX, &mut Vec::new()); // preface and WELCOME
    let _ = events(&mut raw);
    // Two messages of 1 MiB in progress fill the budget; a third is refused.
    for id in [1, 3, 5] {
        raw.feed(&first_fragment(id, 1 << 20, b"x").to_bytes(crc))
            .unwrap();
    }
    let frames = sent_frames(&mut raw, crc);
    let [Frame::Error(e)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!((e.call_id, Code::from_u16(e.code)), (5, Code::Busy));
    assert!(e.retry_after_ms.is_some());
    // Cancelling one frees its share: a new message fits again.
    raw.feed(&Frame::Cancel { call_id: 1 }.to_bytes(crc))
        .unwrap();
    raw.feed(&first_fragment(7, 1 << 20, b"x").to_bytes(crc))
        .unwrap();
    assert_eq!(sent_frames(&mut raw, crc), vec![]);
    assert!(Connection::new(Role::Server, Config::default().reassembly_budget(10)).is_err());
}

#[test]
fn a_critical_call_overtakes_a_low_priority_transfer_at_the_next_fragment() {
    let mut cfg = Config::default();
    cfg.fragment_size = 16 * 1024;
    cfg.compression.candidates = vec![];
    let mut p = Pair::with(cfg.clone(), cfg);
    let (s, m) = names("bulk.put");
    let low = WireMeta {
        priority: Some(Priority::Low),
        ..WireMeta::default()
    };
    let crit = WireMeta {
        priority: Some(Priority::Critical),
        ..WireMeta::default()
    };
    let normal_id = p
        .client
        .open_call(
            &s,
            &m,
            Payload::raw(vec![1u8; 1 << 20]),
            WireMeta::default(),
            false,
        )
        .unwrap();
    let low_id = p
        .client
        .open_call(&s, &m, Payload::raw(vec![2u8; 1 << 20]), low, false)
        .unwrap();
    // Two fragments leave; then a critical call arrives.
    let mut out = Vec::new();
    p.client.poll_transmit(1, &mut out);
    p.client.poll_transmit(1, &mut out);
    let (cs, cm) = names("ops.halt");
    let crit_id = p
        .client
        .open_call(&cs, &cm, Payload::raw("now"), crit, false)
        .unwrap();
    out.clear();
    p.client.poll_transmit(1, &mut out);
    let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let crc = p
        .client
        .negotiated()
        .unwrap()
        .has(polycall_proto::features::CRC32C);
    let next = frames_sent(&bytes, crc);
    assert!(
        matches!(&next[..], [Frame::Call(c)] if c.call_id == crit_id),
        "{next:?}"
    );
    // Normal gets about twice low's share while both send.
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30 {
        out.clear();
        p.client.poll_transmit(1, &mut out);
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        for f in frames_sent(&bytes, crc) {
            *counts.entry(f.call_id()).or_insert(0) += 1;
        }
    }
    let (n, l) = (counts[&normal_id], counts[&low_id]);
    assert!(n >= 2 * l - 1 && n <= 2 * l + 2, "normal {n} vs low {l}");
}

#[test]
fn call_ids_increase_on_the_wire_whatever_the_priorities() {
    let mut cfg = Config::default();
    cfg.compression.candidates = vec![];
    let mut p = Pair::with(cfg.clone(), cfg);
    let (s, m) = names("bulk.put");
    let mut opened = Vec::new();
    for (i, class) in [
        Priority::Low,
        Priority::Low,
        Priority::Normal,
        Priority::Critical,
        Priority::High,
    ]
    .into_iter()
    .enumerate()
    {
        let meta = WireMeta {
            priority: (class != Priority::Normal).then_some(class),
            ..WireMeta::default()
        };
        let size = if i % 2 == 0 { 200 * 1024 } else { 100 };
        opened.push(
            p.client
                .open_call(&s, &m, Payload::raw(vec![i as u8; size]), meta, false)
                .unwrap(),
        );
    }
    p.to_server.clear();
    p.pump(); // the server accepts them all: a decrease would be a protocol violation
    let crc = p
        .client
        .negotiated()
        .unwrap()
        .has(polycall_proto::features::CRC32C);
    let ids: Vec<u32> = frames_sent(&p.to_server, crc)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Call(c) => Some(c.call_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, opened);
    assert_eq!(
        events(&mut p.server)
            .iter()
            .filter(|e| matches!(e, Event::Call(_)))
            .count(),
        5
    );
}

/// Large messages are compressed and decompressed by the caller, away from the
/// connection: a `CompressJob` out, an `Event::Deferred` in; small ones as before.
#[test]
#[cfg(feature = "zstd")]
fn large_messages_are_compressed_and_decompressed_by_the_caller() {
    let mut client = Config::default();
    client.max_compress_size = 64 * 1024;
    client.compression.candidates = vec![polycall_proto::compress::Choice::brotli(5)];
    let totals = std::sync::Arc::new(polycall_proto::compress::CompressionTotals::default());
    client.compression_totals = Some(totals.clone());
    let mut server = Config::default();
    server.defer_decompression_above = Some(0);
    let mut p = Pair::with(client, server);
    p.client.set_link_throughput(1e6); // a slow link: compression pays
    let text: Vec<u8> = (0..1_000_000u32)
        .map(|i| b"polycall "[(i % 9) as usize])
        .collect();
    let payload = Payload::raw(text.clone());
    let (s, m) = names("bulk.put");
    // Over max_compress_size: the connection will not compress it itself…
    let job = p
        .client
        .call_compression_job(&s, &m, &payload)
        .expect("the selector compresses on a slow link");
    assert_eq!(
        job.choice().algorithm,
        polycall_proto::compress::Algorithm::Brotli
    );
    // …the caller runs the job (anywhere) and sends the result.
    let done = job.run();
    assert!(done.len() < text.len() / 10, "{} bytes", done.len());
    let wire = done.len() as u64;
    let id = p
        .client
        .open_call_compressed(&s, &m, payload, done, WireMeta::default(), false)
        .unwrap();
    // Counted as sent: the raw size and the compressed one.
    assert_eq!(
        totals.get(polycall_proto::compress::Algorithm::Brotli),
        (1, 1_000_000, wire)
    );
    assert_eq!(
        totals.methods(),
        vec![("bulk.put".to_owned(), 1, 1_000_000, wire)]
    );
    p.pump();
    let Some(Event::Deferred(d)) = p.server.poll_event() else {
        panic!("a large compressed call is handed out still compressed")
    };
    assert_eq!(d.call_id(), id);
    let Ok(Event::Call(call)) = d.decompress() else {
        panic!("decompresses into the call")
    };
    assert_eq!(&call.payload.bytes[..], &text[..]);
    // A small message is neither handed out nor deferred.
    let small = Payload::raw(vec![b'x'; 4096]);
    assert!(p.client.call_compression_job(&s, &m, &small).is_none());
}

/// A deferred message that would decompress past the message limit fails alone.
#[test]
#[cfg(feature = "zstd")]
fn a_deferred_bomb_is_refused_by_its_limit() {
    let mut config = Config::default();
    config.settings.limits.max_message = 64 * 1024;
    config.defer_decompression_above = Some(16);
    let (mut raw, crc) = raw_server_with(Connection::new(Role::Server, config).unwrap());
    let Frame::Call(mut f) = call_frame(1, b"", false) else {
        unreachable!()
    };
    f.compression = polycall_proto::compress::Algorithm::Zstd;
    f.payload = zstd_bomb();
    raw.feed(&Frame::Call(f).to_bytes(crc)).unwrap();
    let Some(Event::Deferred(d)) = raw.poll_event() else {
        panic!("deferred")
    };
    let e = d.decompress().unwrap_err();
    assert_eq!(e.status.code, Code::TooLarge, "{:?}", e.status);
    assert!(!e.reply);
    assert_eq!(e.call_id, 1);
    // The caller answers it; the connection goes on.
    raw.send_error(1, &e.status).unwrap();
    assert!(raw.is_open());
}

/// With its clock given (here one that advances a microsecond per reading), the state
/// machine is deterministic: the same calls produce the same bytes on the wire, the
/// adaptive compressor's choices included.
#[test]
#[cfg(feature = "zstd")]
fn a_given_clock_makes_the_wire_bytes_repeat() {
    fn run() -> Vec<u8> {
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let clock = polycall_proto::Clock::from_fn(move || {
            let n = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::time::Duration::from_micros(n)
        });
        let config = Config::default().clock(clock);
        let mut p = Pair::with(config.clone(), config);
        p.to_server.clear();
        for i in 0..48u32 {
            let text = format!(
                "{{\"item\":{i},\"note\":\"{}\"}}",
                "stock level ".repeat(40 + i as usize % 7)
            );
            p.call(
                "inventory.put",
                Payload::new(text.into_bytes(), ContentType::Json),
            );
            p.pump();
        }
        p.to_server
    }
    let first = run();
    assert!(first.len() > 1000);
    assert_eq!(
        first,
        run(),
        "two runs with the same clock sent different bytes"
    );
}

/// `n` incompressible bytes (xorshift from `seed`, which advances).
fn noise(n: usize, seed: &mut u64) -> Payload {
    Payload::raw(
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect::<Vec<u8>>(),
    )
}

fn negotiated_crc(c: &Connection) -> bool {
    c.negotiated()
        .unwrap()
        .has(polycall_proto::features::CRC32C)
}

/// A pair whose sides each grant `window` bytes of credit (connection and stream).
fn pair_with_window(window: u32) -> Pair {
    let limits = polycall_proto::Limits::default().initial_window(window);
    let config = Config::default().settings(Settings::default().limits(limits));
    Pair::with(config.clone(), config)
}

#[test]
fn empty_opens_stream_zero_or_more_messages_each_way() {
    let mut p = Pair::new();
    let (s, m) = names("chat.talk");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    p.pump();
    let evs = events(&mut p.server);
    assert!(
        matches!(&evs[..], [Event::Call(c)] if c.stream && c.empty && c.payload.bytes.is_empty()),
        "{evs:?}"
    );
    p.server.open_reply_stream(id).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.client),
        vec![Event::Reply {
            call_id: id,
            payload: Payload::empty(),
            stream: true,
            empty: true
        }]
    );
    p.client.send_message(id, Payload::raw("q1")).unwrap();
    p.client.send_end(id).unwrap();
    p.server.send_message(id, Payload::raw("a1")).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.server),
        vec![
            Event::StreamMessage {
                call_id: id,
                payload: Payload::raw("q1")
            },
            Event::StreamEnd { call_id: id }
        ]
    );
    p.server.send_end(id).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.client),
        vec![
            Event::StreamMessage {
                call_id: id,
                payload: Payload::raw("a1")
            },
            Event::StreamEnd { call_id: id }
        ]
    );
    assert_eq!((p.client.open_calls(), p.server.open_calls()), (0, 0));
}

/// Pumps until quiet, taking the client's events as they come (as an application's
/// connection task does): the stream messages among them, counted.
fn pump_taking_stream_messages(p: &mut Pair) -> (usize, Vec<Event>) {
    let mut messages = 0;
    let mut others = Vec::new();
    loop {
        let (a, b) = p.step(usize::MAX);
        for e in events(&mut p.client) {
            match e {
                Event::StreamMessage { .. } => messages += 1,
                e => others.push(e),
            }
        }
        if a == 0 && b == 0 {
            return (messages, others);
        }
    }
}

#[test]
fn a_stream_that_is_not_read_stops_only_its_producer() {
    let window = 64 * 1024;
    let mut p = pair_with_window(window);
    let stream_id = p.call("feed.ticks", Payload::raw("go"));
    p.pump();
    assert!(matches!(&events(&mut p.server)[..], [Event::Call(_)]));
    p.server.open_reply_stream(stream_id).unwrap();
    // The server streams four windows' worth (incompressible, so the wire carries
    // every byte); the client's application takes the events but consumes nothing.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..64 {
        p.server
            .send_message(stream_id, noise(4096, &mut seed))
            .unwrap();
    }
    let (delivered, _) = pump_taking_stream_messages(&mut p);
    let held = delivered * 4096;
    assert!(
        held >= window as usize && held <= window as usize * 3 / 2 + 4096,
        "{delivered} messages of 4 KiB held for a window of {window}"
    );
    assert_eq!(p.server.stream_queued(stream_id), 64 * 4096 - held);
    // Meanwhile a unary call on the same connection is answered at once.
    let unary = p.call("a.b", Payload::raw("ping"));
    p.pump();
    let evs = events(&mut p.server);
    let Some(Event::Call(c)) = evs.last() else {
        panic!("{evs:?}")
    };
    p.server
        .send_reply(c.call_id, Payload::raw("pong"), false)
        .unwrap();
    let (more, evs) = pump_taking_stream_messages(&mut p);
    assert_eq!(more, 0, "the stream stays stopped");
    assert!(
        matches!(&evs[..], [Event::Reply { call_id, .. }] if *call_id == unary),
        "{evs:?}"
    );
    // The application consumes what it holds: the producer resumes until done.
    let mut total = delivered;
    for _ in 0..16 {
        p.client.stream_consumed(stream_id, usize::MAX);
        total += pump_taking_stream_messages(&mut p).0;
    }
    assert_eq!(total, 64);
    assert_eq!(p.server.stream_queued(stream_id), 0);
}

#[test]
fn stream_bytes_over_the_window_are_a_connection_error() {
    let window = 4096;
    let mut p = pair_with_window(window);
    let (s, m) = names("up.load");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    p.pump();
    let _ = events(&mut p.server);
    let crc = negotiated_crc(&p.client);
    // A peer that ignores its stream window: DATA beyond it, written by hand. The
    // connection window (also 4096) is refreshed by the server as bytes arrive, so
    // only the stream window is broken.
    let mut buf = frame::FrameBuf::new();
    for _ in 0..6 {
        Frame::Data(DataFrame {
            packed: false,
            call_id: id,
            first: Some((ContentType::Raw, polycall_proto::compress::Algorithm::None)),
            more: false,
            message_len: None,
            payload: Bytes::from(vec![0u8; 1800]),
        })
        .encode(&mut buf, crc);
    }
    let mut chunks = Vec::new();
    buf.drain_chunks(&mut chunks);
    let _ = crc;
    let mut result = Ok(());
    for c in chunks {
        result = result.and_then(|_| p.server.feed(&c));
        // The server's application takes the events but consumes none of the stream's
        // messages: connection credit flows, the stream's stays withheld.
        let _ = events(&mut p.server);
        let mut out = Vec::new();
        p.server.poll_transmit(usize::MAX, &mut out);
        for c in out {
            let _ = p.client.feed(&c);
        }
    }
    assert!(
        matches!(result, Err(ProtoError::FlowControl { allowed, .. }) if allowed < 1800),
        "{result:?}"
    );
}

#[test]
fn stream_credit_for_a_call_never_opened_is_a_connection_error() {
    let mut p = Pair::new();
    let mut buf = frame::FrameBuf::new();
    Frame::StreamCredit {
        call_id: 41,
        increment: 10,
    }
    .encode(&mut buf, negotiated_crc(&p.client));
    let mut chunks = Vec::new();
    buf.drain_chunks(&mut chunks);
    let r = chunks.iter().try_for_each(|c| p.server.feed(c));
    assert!(matches!(r, Err(ProtoError::Violation(_))), "{r:?}");
}

/// With the smallest window (1 KiB), a small message followed by one that does not fit
/// the credit left must not stall: the sender sends what the credit allows rather than
/// wait for credit the receiver returns only by quarters of its window.
#[test]
fn the_smallest_window_never_stalls() {
    let mut p = pair_with_window(1024);
    let mut seed = 7u64;
    let mut noise = |n: usize| noise(n, &mut seed);
    let a = p.call("a.b", noise(200));
    let b = p.call("a.b", noise(1000));
    let mut seen = Vec::new();
    for _ in 0..50 {
        p.step(usize::MAX);
        for e in events(&mut p.server) {
            if let Event::Call(c) = e {
                seen.push((c.call_id, c.payload.len()));
            }
        }
    }
    assert_eq!(seen, vec![(a, 200), (b, 1000)]);
}

/// Small messages of a stream travel several to a frame (PACKED) when both sides offer
/// it, arrive whole and in order, and count one by one for the stream's credit.
#[test]
fn small_stream_messages_are_packed_when_both_sides_offer_it() {
    let mut p = Pair::new();
    p.to_server.clear();
    let (s, m) = names("feed.ticks");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    for i in 0..500u32 {
        p.client
            .send_message(id, Payload::raw(format!("tick {i}")))
            .unwrap();
    }
    p.client.send_end(id).unwrap();
    p.pump();
    let crc = negotiated_crc(&p.client);
    let frames = frames_sent(&p.to_server, crc);
    let packed = frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(d) if d.packed))
        .count();
    assert!(
        (1..10).contains(&packed),
        "{packed} packed frames for 500 messages"
    );
    let mut got = Vec::new();
    for e in events(&mut p.server) {
        match e {
            Event::StreamMessages { packed, .. } => {
                got.extend(frame::unpack(&packed).expect("valid entries"))
            }
            Event::StreamMessage { payload, .. } => got.push(payload.bytes),
            _ => {}
        }
    }
    let want: Vec<Bytes> = (0..500u32)
        .map(|i| Bytes::from(format!("tick {i}")))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn without_the_packed_feature_every_message_has_its_frame() {
    let mut settings = Settings::default();
    settings.features &= !polycall_proto::features::PACKED;
    let mut p = Pair::with(Config::default().settings(settings), Config::default());
    p.to_server.clear();
    let (s, m) = names("feed.ticks");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    for i in 0..20u32 {
        p.client
            .send_message(id, Payload::raw(format!("tick {i}")))
            .unwrap();
    }
    p.pump();
    let crc = negotiated_crc(&p.client);
    let frames = frames_sent(&p.to_server, crc);
    assert!(
        frames
            .iter()
            .all(|f| !matches!(f, Frame::Data(d) if d.packed))
    );
    let singles = events(&mut p.server)
        .iter()
        .filter(|e| matches!(e, Event::StreamMessage { .. }))
        .count();
    assert_eq!(singles, 20);
}

#[test]
fn packed_data_the_peer_did_not_agree_to_is_a_connection_error() {
    let mut settings = Settings::default();
    settings.features &= !polycall_proto::features::PACKED;
    let mut p = Pair::with(Config::default(), Config::default().settings(settings));
    let (s, m) = names("up.load");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    p.pump();
    let _ = events(&mut p.server);
    let crc = negotiated_crc(&p.client);
    let mut buf = frame::FrameBuf::new();
    Frame::Data(DataFrame {
        packed: true,
        call_id: id,
        first: Some((ContentType::Raw, polycall_proto::compress::Algorithm::None)),
        more: false,
        message_len: None,
        payload: Bytes::from_static(b"\x01\x00\x00\x00a\x01\x00\x00\x00b"),
    })
    .encode(&mut buf, crc);
    let mut chunks = Vec::new();
    buf.drain_chunks(&mut chunks);
    let r = chunks.iter().try_for_each(|c| p.server.feed(c));
    assert!(matches!(r, Err(ProtoError::Violation(_))), "{r:?}");
}

#[test]
fn send_messages_queues_a_batch_in_order_and_stops_at_the_first_refusal() {
    let limits = polycall_proto::Limits::default().max_message(1024);
    let config = Config::default().settings(Settings::default().limits(limits));
    let mut p = Pair::with(config.clone(), config);
    let (s, m) = names("feed.ticks");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    let batch = vec![
        Payload::raw("a"),
        Payload::raw("b"),
        Payload::raw(vec![0u8; 4096]),
        Payload::raw("never"),
    ];
    let r = p.client.send_messages(id, batch);
    assert!(matches!(r, Err(SendError::TooLarge { .. })), "{r:?}");
    p.pump();
    let mut got = Vec::new();
    for e in events(&mut p.server) {
        match e {
            Event::StreamMessages { packed, .. } => {
                got.extend(frame::unpack(&packed).expect("valid entries"))
            }
            Event::StreamMessage { payload, .. } => got.push(payload.bytes),
            _ => {}
        }
    }
    assert_eq!(got, vec![Bytes::from("a"), Bytes::from("b")]);
}

/// Packed runs are released message by message: consuming part of a run frees its
/// share, consuming all of it frees all of it, and a reader that stops stops the
/// producer of small messages as it stops one of large ones.
#[test]
fn packed_messages_are_held_and_released_one_by_one() {
    let window = 64 * 1024;
    let mut p = pair_with_window(window);
    let id = p.call("feed.ticks", Payload::raw("go"));
    p.pump();
    let _ = events(&mut p.server);
    p.server.open_reply_stream(id).unwrap();
    let total = 8000u32;
    p.server
        .send_messages(id, (0..total).map(|i| Payload::raw(format!("{i:0>60}"))))
        .unwrap();
    let count = |evs: Vec<Event>| -> usize {
        evs.iter()
            .map(|e| match e {
                Event::StreamMessages { count, .. } => *count,
                Event::StreamMessage { .. } => 1,
                _ => 0,
            })
            .sum()
    };
    let mut got = 0;
    for _ in 0..20 {
        p.step(usize::MAX);
        got += count(events(&mut p.client));
    }
    assert!(got > 0 && got < total as usize, "{got} delivered unread");
    assert!(
        got * 64 <= 2 * window as usize && p.server.stream_queued(id) > 0,
        "the producer stops within the window: {got} messages delivered unread"
    );
    // Consume a few at a time: everything arrives.
    for _ in 0..2000 {
        p.client.stream_consumed(id, 7);
        p.step(usize::MAX);
        got += count(events(&mut p.client));
        if got == total as usize {
            break;
        }
    }
    assert_eq!(got, total as usize);
}

/// The stream messages of `evs`, packed or not, in order.
fn stream_messages(evs: Vec<Event>) -> Vec<Bytes> {
    let mut got = Vec::new();
    for e in evs {
        match e {
            Event::StreamMessages { packed, .. } => {
                got.extend(frame::unpack(&packed).expect("valid entries"))
            }
            Event::StreamMessage { payload, .. } => got.push(payload.bytes),
            _ => {}
        }
    }
    got
}

/// Messages a producer packed travel as packed frames, in order with the stream's other
/// messages, and are cut at entry boundaries when the credit is short.
#[test]
fn messages_packed_by_the_producer_travel_as_they_are() {
    let window = 64 * 1024;
    let mut p = pair_with_window(window);
    let (s, m) = names("feed.ticks");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    p.pump();
    let _ = events(&mut p.server);
    let limits = p.client.pack_limits().expect("both sides offer packing");
    assert!(
        limits.max_message >= 64 && limits.room >= 1024,
        "{limits:?}"
    );
    p.client.send_message(id, Payload::raw("first")).unwrap();
    // Three runs of about 40 KiB: more than the window, so runs get cut.
    let mut want = vec![Bytes::from("first")];
    let mut writer = PackedWriter::new(ContentType::Raw, 40 * 1024);
    let mut runs = 0;
    for i in 0..1800u32 {
        let m = Bytes::from(format!("{i:0>60}"));
        if !writer.push(&m) {
            p.client.send_packed(id, writer.finish().unwrap()).unwrap();
            runs += 1;
            assert!(writer.push(&m));
        }
        want.push(m);
    }
    p.client.send_packed(id, writer.finish().unwrap()).unwrap();
    runs += 1;
    p.client.send_message(id, Payload::raw("last")).unwrap();
    want.push(Bytes::from("last"));
    p.client.send_end(id).unwrap();
    p.to_server.clear();
    let mut got = Vec::new();
    for _ in 0..200 {
        p.step(usize::MAX);
        let evs = stream_messages(events(&mut p.server));
        p.server.stream_consumed(id, evs.len());
        got.extend(evs);
        if got.len() == want.len() {
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(p.client.queued_bytes(), 0);
    let packed: Vec<usize> = frames_sent(&p.to_server, negotiated_crc(&p.client))
        .iter()
        .filter_map(|f| match f {
            Frame::Data(d) if d.packed => Some(d.payload.len()),
            _ => None,
        })
        .collect();
    assert_eq!(runs, 3);
    assert!(
        packed.len() > runs && packed.iter().all(|l| l % 64 == 0),
        "runs cut at entries: {packed:?}"
    );
}

#[test]
fn packed_messages_are_refused_when_the_peer_does_not_take_them_or_one_is_too_large() {
    let mut settings = Settings::default();
    settings.features &= !polycall_proto::features::PACKED;
    let mut p = Pair::with(Config::default(), Config::default().settings(settings));
    let (s, m) = names("up.load");
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    assert_eq!(p.client.pack_limits(), None);
    let mut w = PackedWriter::new(ContentType::Raw, 1024);
    assert!(w.push(b"a"));
    let r = p.client.send_packed(id, w.finish().unwrap());
    assert!(matches!(r, Err(SendError::NotNegotiated(_))), "{r:?}");

    // A small fragment size bounds what may travel packed: an entry always fits a frame.
    let small = Config::default().fragment_size(200);
    let p = Pair::with(small, Config::default());
    let limits = p.client.pack_limits().unwrap();
    assert!(limits.max_message + 4 <= limits.room, "{limits:?}");

    let mut p = Pair::new();
    let id = p.client.open_stream(&s, &m, WireMeta::default()).unwrap();
    let limits = p.client.pack_limits().unwrap();
    let mut w = PackedWriter::new(ContentType::Raw, 64 * 1024);
    assert!(w.push(&vec![0u8; limits.max_message + 1]));
    let r = p.client.send_packed(id, w.finish().unwrap());
    assert!(matches!(r, Err(SendError::TooLarge { .. })), "{r:?}");
    assert_eq!(p.client.queued_bytes(), 0);
}

/// A small JSON record of one method: the same fields, varying values.
#[cfg(feature = "zstd")]
fn log_record(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    format!(
        r#"{{"ts":{},"level":"{}","service":"checkout","route":"/api/v2/orders/{}","status":{},"latency_ms":{},"user":"u{}","trace_id":"{:016x}"}}"#,
        1_700_000_000 + i,
        ["info", "warn", "debug", "error"][(next() % 4) as usize],
        next() % 100_000,
        [200, 201, 404, 500][(next() % 4) as usize],
        next() % 2_000,
        next() % 10_000,
        next()
    )
    .into_bytes()
}

/// Sends `records` calls of `logs.put` and checks the server receives each intact.
#[cfg(feature = "zstd")]
fn send_records(p: &mut Pair, records: std::ops::Range<u64>) {
    for i in records.clone() {
        p.call("logs.put", Payload::new(log_record(i), ContentType::Json));
    }
    p.pump();
    let got: Vec<Bytes> = events(&mut p.server)
        .into_iter()
        .filter_map(|e| match e {
            Event::Call(c) => Some(c.payload.bytes),
            _ => None,
        })
        .collect();
    let want: Vec<Bytes> = records.map(|i| Bytes::from(log_record(i))).collect();
    assert_eq!(got, want);
}

/// On a slow link, a method's small messages are sampled, a dictionary is trained
/// from them (a job run by the caller), shipped in a `DICTIONARY` frame ahead of the
/// messages that use it, and then compresses them to under half their size.
#[test]
#[cfg(feature = "zstd")]
fn small_messages_go_with_their_methods_trained_dictionary() {
    use polycall_proto::compress::{Algorithm, CompressionTotals, dictionary};
    let mut client = Config::default();
    let totals = std::sync::Arc::new(CompressionTotals::default());
    client.compression_totals = Some(totals.clone());
    let mut p = Pair::with(client, Config::default());
    assert!(
        p.client
            .negotiated()
            .unwrap()
            .has(polycall_proto::features::ZSTD_DICTIONARIES)
    );
    // 10 Mbit/s: the dictionary pays by far, however slowly a busy machine compresses.
    p.client.set_link_throughput(1.25e6);
    send_records(&mut p, 0..dictionary::SAMPLES as u64);
    let job = p.client.take_dictionary_job().expect("a job once sampled");
    assert!(p.client.take_dictionary_job().is_none());
    let id = p.client.add_dictionary(job.run()).expect("worth shipping");
    assert_eq!(id, dictionary::FIRST_DICTIONARY_ID);
    let before = p.to_server.len();
    send_records(&mut p, 1000..1200);
    let shipped = frames_sent(&p.to_server[before..], negotiated_crc(&p.client));
    assert!(
        matches!(&shipped[0], Frame::Dictionary { id: sent, .. } if *sent == id),
        "the DICTIONARY frame comes first"
    );
    let uses = |f: &Frame| matches!(f, Frame::Call(c) if c.compression == Algorithm::ZstdDict);
    assert!(shipped.iter().any(uses));
    let (messages, raw, wire) = totals.get(Algorithm::ZstdDict);
    assert!(messages >= 190, "{messages} messages with the dictionary");
    assert!(wire * 2 <= raw, "{wire} bytes on the wire for {raw}");
    // On a fast link the dictionary does not pay: messages go as they are.
    p.client.set_link_throughput(1.25e9);
    send_records(&mut p, 2000..2050);
    assert_eq!(totals.get(Algorithm::ZstdDict).0, messages);
}

/// Without both sides agreeing, no samples, no dictionary, no `zstd-dict` message.
#[test]
#[cfg(feature = "zstd")]
fn dictionaries_need_both_sides() {
    use polycall_proto::compress::{Algorithm, CompressionTotals};
    let mut client = Config::default();
    let totals = std::sync::Arc::new(CompressionTotals::default());
    client.compression_totals = Some(totals.clone());
    let mut server = Config::default();
    server.settings.features &= !polycall_proto::features::ZSTD_DICTIONARIES;
    let mut p = Pair::with(client, server);
    p.client.set_link_throughput(12.5e6);
    send_records(&mut p, 0..300);
    assert!(p.client.take_dictionary_job().is_none());
    assert_eq!(totals.get(Algorithm::ZstdDict).0, 0);
    assert!(
        !p.client
            .negotiated()
            .unwrap()
            .compressions
            .contains(&Algorithm::ZstdDict)
    );
    // A DICTIONARY frame the server did not agree to is a connection error.
    let mut buf = frame::FrameBuf::new();
    Frame::Dictionary {
        id: 40_000,
        data: Bytes::from_static(b"anything"),
    }
    .encode(&mut buf, negotiated_crc(&p.client));
    let mut chunks = Vec::new();
    buf.drain_chunks(&mut chunks);
    let r = chunks.iter().try_for_each(|c| p.server.feed(c));
    assert!(
        matches!(&r, Err(ProtoError::Violation(m)) if m.contains("not agreed")),
        "{r:?}"
    );
}

/// A dictionary that is not one fails the connection; a message naming a dictionary
/// never sent fails only its call, and the connection goes on.
#[test]
#[cfg(feature = "zstd")]
fn bad_dictionaries_and_unknown_ones_are_refused() {
    let crc = |p: &Pair| negotiated_crc(&p.client);
    let send = |p: &mut Pair, f: Frame, crc: bool| {
        let mut buf = frame::FrameBuf::new();
        f.encode(&mut buf, crc);
        let mut chunks = Vec::new();
        buf.drain_chunks(&mut chunks);
        chunks.iter().try_for_each(|c| p.server.feed(c))
    };
    let mut p = Pair::new();
    let c = crc(&p);
    let r = send(
        &mut p,
        Frame::Dictionary {
            id: 40_000,
            data: Bytes::from_static(b"not a zstd dictionary"),
        },
        c,
    );
    assert!(
        matches!(&r, Err(ProtoError::Violation(m)) if m.contains("dictionary format")),
        "{r:?}"
    );

    // A message compressed with a dictionary the server never received.
    let mut p = Pair::new();
    let c = crc(&p);
    let samples: Vec<Vec<u8>> = (0..200).map(log_record).collect();
    let mut dict = zstd::dict::from_samples(&samples, 4096).unwrap();
    dict[4..8].copy_from_slice(&40_000u32.to_le_bytes());
    let payload = zstd::bulk::Compressor::with_dictionary(3, &dict)
        .unwrap()
        .compress(&log_record(7))
        .unwrap();
    let Frame::Call(mut call) = call_frame(1, b"", false) else {
        unreachable!()
    };
    call.content_type = ContentType::Json;
    call.compression = polycall_proto::compress::Algorithm::ZstdDict;
    call.payload = Bytes::from(payload);
    send(&mut p, Frame::Call(call), c).expect("only the call fails");
    let answer = sent_frames(&mut p.server, c);
    assert!(
        answer
            .iter()
            .any(|f| matches!(f, Frame::Error(e) if e.call_id == 1
            && e.code == Code::Malformed as u16 && e.message.contains("never sent"))),
        "{answer:?}"
    );
    // The connection goes on.
    send(&mut p, Frame::Ping { opaque: 5 }, c).unwrap();
    assert!(
        sent_frames(&mut p.server, c)
            .iter()
            .any(|f| matches!(f, Frame::Pong { opaque: 5 }))
    );
}
