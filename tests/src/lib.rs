//! Shared helpers for polycall's conformance tests: the JSON "meaning" of frames used by
//! the golden vectors in `tests/vectors/`, and the frames those vectors are made of.
//!
//! The vectors are the contract other implementations check: each entry holds the hex
//! bytes of one frame and what they mean. `cargo run -p polycall-tests --bin gen-vectors`
//! writes them; `tests/vectors.rs` checks every one decodes to its meaning and
//! re-encodes to the same bytes.

pub mod typescript;

use std::time::Duration;

use bytes::Bytes;
use polycall_core::{ContentType, MethodInfo, MethodName, Priority, ServiceName, TraceContext};
use polycall_proto::compress::Algorithm;
use polycall_proto::frame::{
    Auth, CallFrame, DataFrame, ErrorFrame, Frame, GoAway, Hello, MethodEntry, MethodRef,
    ReplyFrame, Welcome,
};
use polycall_proto::{FrameError, Limits, WireMeta};
use serde_json::{Value, json};

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes of a hex string (whitespace ignored).
pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn limits(l: &Limits) -> Value {
    json!({"max_frame": l.max_frame, "max_message": l.max_message, "max_in_flight": l.max_in_flight, "initial_window": l.initial_window})
}

fn ct(c: ContentType) -> &'static str {
    c.name()
}

fn alg(a: Algorithm) -> &'static str {
    a.name()
}

fn meta(m: &WireMeta) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(t) = m.timeout {
        o.insert("timeout_us".into(), json!(t.as_micros() as u64));
    }
    if let Some(p) = m.priority {
        o.insert("priority".into(), json!(p));
    }
    if let Some(t) = &m.trace {
        o.insert("traceparent".into(), json!(t.traceparent()));
        if let Some(s) = &t.tracestate {
            o.insert("tracestate".into(), json!(s));
        }
    }
    if m.idempotent {
        o.insert("idempotent".into(), json!(true));
    }
    if let Some(k) = &m.idempotency_key {
        o.insert("idempotency_key".into(), json!(k));
    }
    if let Some(p) = &m.principal {
        o.insert("principal".into(), json!(p));
    }
    if !m.extensions.is_empty() {
        o.insert(
            "extensions".into(),
            m.extensions
                .iter()
                .map(|(t, v)| json!({"tag": t, "value_hex": hex(v)}))
                .collect(),
        );
    }
    Value::Object(o)
}

/// What a frame means, as JSON: `type` plus the frame's fields; bytes as hex.
pub fn frame_to_json(f: &Frame) -> Value {
    match f {
        Frame::Hello(h) => json!({
            "type": "hello", "min_version": h.min_version, "max_version": h.max_version,
            "features": h.features, "limits": limits(&h.limits), "codecs": h.codecs,
            "compressions": h.compressions, "auth_methods": h.auth_methods, "agent": h.agent,
        }),
        Frame::Welcome(w) => json!({
            "type": "welcome", "version": w.version, "features": w.features, "limits": limits(&w.limits),
            "codecs": w.codecs, "compressions": w.compressions, "auth_method": w.auth_method, "agent": w.agent,
        }),
        Frame::Auth(a) => {
            json!({"type": "auth", "method": a.method, "step": a.step, "data_hex": hex(&a.data)})
        }
        Frame::Call(c) => json!({
            "type": "call", "call_id": c.call_id,
            "method_id": c.method.id,
            "method_name": c.method.name.as_ref().map(|(s, m)| format!("{s}.{m}")),
            "content_type": ct(c.content_type), "compression": alg(c.compression),
            "meta": meta(&c.meta), "more": c.more, "message_len": c.message_len, "stream": c.stream, "empty": c.empty, "payload_hex": hex(&c.payload),
        }),
        Frame::Reply(r) => json!({
            "type": "reply", "call_id": r.call_id, "content_type": ct(r.content_type), "compression": alg(r.compression),
            "more": r.more, "message_len": r.message_len, "stream": r.stream, "empty": r.empty, "payload_hex": hex(&r.payload),
        }),
        Frame::Error(e) => json!({
            "type": "error", "call_id": e.call_id, "code": e.code,
            "code_name": polycall_core::Code::from_u16(e.code).name(), "message": e.message,
            "retry_after_ms": e.retry_after_ms, "supported_versions": e.supported_versions,
            "extensions": e.extensions.iter().map(|(t, v)| json!({"tag": t, "value_hex": hex(v)})).collect::<Vec<_>>(),
        }),
        Frame::Cancel { call_id } => json!({"type": "cancel", "call_id": call_id}),
        Frame::Data(d) => json!({
            "type": "data", "call_id": d.call_id,
            "first": d.first.map(|(c, a)| json!({"content_type": ct(c), "compression": alg(a)})),
            "more": d.more, "message_len": d.message_len, "payload_hex": hex(&d.payload),
        }),
        Frame::End { call_id } => json!({"type": "end", "call_id": call_id}),
        Frame::Ping { opaque } => json!({"type": "ping", "opaque": opaque}),
        Frame::Pong { opaque } => json!({"type": "pong", "opaque": opaque}),
        Frame::GoAway(g) => {
            json!({"type": "goaway", "last_call_id": g.last_call_id, "code": g.code, "message": g.message})
        }
        Frame::Credit { increment } => json!({"type": "credit", "increment": increment}),
        Frame::Dictionary { id, data } => {
            json!({"type": "dictionary", "id": id, "data_hex": hex(data)})
        }
        Frame::StreamCredit { call_id, increment } => {
            json!({"type": "stream_credit", "call_id": call_id, "increment": increment})
        }
        Frame::Register { call_id, methods } => json!({
            "type": "register", "call_id": call_id,
            "methods": methods.iter().map(|m| json!({
                "name": format!("{}.{}", m.service, m.method), "idempotent": m.info.idempotent,
                "kind": m.info.kind.as_str(),
                "summary": m.info.summary, "input": m.info.input, "output": m.info.output,
            })).collect::<Vec<_>>(),
        }),
        Frame::Unregister { call_id, methods } => json!({
            "type": "unregister", "call_id": call_id,
            "methods": methods.iter().map(|(s, m)| format!("{s}.{m}")).collect::<Vec<_>>(),
        }),
    }
}

/// The error a malformed vector must produce, as JSON.
pub fn error_to_json(e: &FrameError) -> Value {
    match e {
        FrameError::TooLarge { len, max } => json!({"error": "too_large", "len": len, "max": max}),
        FrameError::UnknownType(t) => json!({"error": "unknown_type", "type": t}),
        FrameError::UnknownFlags { frame, flags } => {
            json!({"error": "unknown_flags", "frame": *frame as u8, "flags": flags})
        }
        FrameError::Reserved { frame, value } => {
            json!({"error": "reserved", "frame": *frame as u8, "value": value})
        }
        FrameError::BadCallId { frame, call_id } => {
            json!({"error": "bad_call_id", "frame": *frame as u8, "call_id": call_id})
        }
        FrameError::Checksum {
            frame,
            expected,
            actual,
        } => {
            json!({"error": "checksum", "frame": *frame as u8, "expected": expected, "actual": actual})
        }
        FrameError::Malformed { frame, reason } => {
            json!({"error": "malformed", "frame": *frame as u8, "reason": reason})
        }
    }
}

fn names(full: &str) -> (ServiceName, MethodName) {
    polycall_core::split_full_name(full).expect("valid name")
}

/// The frames of the golden vectors: `(name, frame, crc)`. One or more of every kind,
/// with and without the CRC trailer, every metadata entry, fragments and streams.
pub fn vector_frames() -> Vec<(&'static str, Frame, bool)> {
    let hello = Hello {
        min_version: 1,
        max_version: 3,
        features: 0b11,
        limits: Limits::default()
            .max_frame(262_144)
            .max_message(67_108_864)
            .max_in_flight(16_384)
            .initial_window(8_388_608),
        codecs: vec![2, 1, 0],
        compressions: vec![1, 2, 0],
        auth_methods: vec![0],
        agent: "polycall-rust/0.1.0".into(),
    };
    let welcome = Welcome {
        version: 1,
        features: 0b11,
        limits: hello.limits,
        codecs: vec![2, 1, 0],
        compressions: vec![1, 2, 0],
        auth_method: 0,
        agent: "polycall-rust/0.1.0".into(),
    };
    let (echo_s, echo_m) = names("debug.echo");
    let trace = TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("congo=t61rcWkgMzE"),
    )
    .expect("valid");
    let full_meta = WireMeta {
        timeout: Some(Duration::from_millis(1500)),
        priority: Some(Priority::High),
        trace: Some(trace),
        idempotent: true,
        idempotency_key: Some("order-7731".into()),
        principal: Some("spiffe://example.org/ns/shop/sa/cart".into()),
        forwarded: false,
        extensions: vec![(200, Bytes::from_static(b"\x01\x02"))],
    };
    let call = CallFrame {
        call_id: 1,
        method: MethodRef {
            id: 1,
            name: Some((echo_s.clone(), echo_m.clone())),
        },
        content_type: ContentType::Json,
        compression: Algorithm::None,
        meta: WireMeta::default(),
        more: false,
        message_len: None,
        stream: false,
        empty: false,
        payload: Bytes::from_static(br#"{"hello":"world"}"#),
    };
    let (inv_s, inv_m) = names("inventory.get");
    vec![
        ("hello", Frame::Hello(hello), false),
        ("welcome", Frame::Welcome(welcome), false),
        ("call binding method id 1", Frame::Call(call.clone()), false),
        (
            "call by interned id",
            Frame::Call(CallFrame {
                call_id: 3,
                method: MethodRef { id: 1, name: None },
                ..call.clone()
            }),
            false,
        ),
        (
            "call with crc32c",
            Frame::Call(CallFrame {
                call_id: 5,
                method: MethodRef { id: 1, name: None },
                ..call.clone()
            }),
            true,
        ),
        (
            "call by name, not interned",
            Frame::Call(CallFrame {
                call_id: 7,
                method: MethodRef {
                    id: 0,
                    name: Some((inv_s.clone(), inv_m.clone())),
                },
                payload: Bytes::from_static(br#"{"item_id":"widget-a"}"#),
                ..call.clone()
            }),
            false,
        ),
        (
            "call with every metadata entry",
            Frame::Call(CallFrame {
                call_id: 9,
                meta: full_meta,
                method: MethodRef { id: 1, name: None },
                ..call.clone()
            }),
            false,
        ),
        (
            "call opening a client stream, first fragment",
            Frame::Call(CallFrame {
                call_id: 11,
                method: MethodRef {
                    id: 2,
                    name: Some((names("log.append").0, names("log.append").1)),
                },
                content_type: ContentType::Raw,
                more: true,
                message_len: Some(13),
                stream: true,
                payload: Bytes::from_static(b"part-1/"),
                ..call.clone()
            }),
            false,
        ),
        (
            "data continuing a message",
            Frame::Data(DataFrame {
                packed: false,
                call_id: 11,
                first: None,
                more: false,
                message_len: None,
                payload: Bytes::from_static(b"part-2"),
            }),
            false,
        ),
        (
            "data starting the next stream message",
            Frame::Data(DataFrame {
                packed: false,
                call_id: 11,
                first: Some((ContentType::Raw, Algorithm::None)),
                more: false,
                message_len: None,
                payload: Bytes::from_static(b"line 2"),
            }),
            false,
        ),
        (
            "end of the client stream",
            Frame::End { call_id: 11 },
            false,
        ),
        (
            "reply",
            Frame::Reply(ReplyFrame {
                call_id: 1,
                content_type: ContentType::Json,
                compression: Algorithm::None,
                more: false,
                message_len: None,
                stream: false,
                empty: false,
                payload: Bytes::from_static(br#"{"hello":"world"}"#),
            }),
            false,
        ),
        (
            "reply, zstd-compressed",
            Frame::Reply(ReplyFrame {
                call_id: 3,
                content_type: ContentType::Json,
                compression: Algorithm::Zstd,
                more: false,
                message_len: None,
                stream: false,
                empty: false,
                payload: Bytes::from(zstd_sample()),
            }),
            true,
        ),
        (
            "call opening an empty request stream",
            Frame::Call(CallFrame {
                call_id: 15,
                method: MethodRef {
                    id: 0,
                    name: Some(names("chat.talk")),
                },
                content_type: ContentType::Raw,
                compression: Algorithm::None,
                meta: WireMeta::default(),
                more: false,
                message_len: None,
                stream: true,
                empty: true,
                payload: Bytes::new(),
            }),
            false,
        ),
        (
            "reply opening an empty reply stream",
            Frame::Reply(ReplyFrame {
                call_id: 15,
                content_type: ContentType::Raw,
                compression: Algorithm::None,
                more: false,
                message_len: None,
                stream: true,
                empty: true,
                payload: Bytes::new(),
            }),
            false,
        ),
        (
            "stream credit",
            Frame::StreamCredit {
                call_id: 15,
                increment: 65_536,
            },
            false,
        ),
        (
            // The frame layer checks only the id and that there are bytes; a
            // connection then refuses anything zstd does not load as a dictionary
            // carrying this id (these bytes start like one: magic, then the id).
            "dictionary",
            Frame::Dictionary {
                id: 32_768,
                data: Bytes::from_static(&[
                    0x37, 0xa4, 0x30, 0xec, 0x00, 0x80, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04,
                ]),
            },
            true,
        ),
        (
            "reply opening a server stream",
            Frame::Reply(ReplyFrame {
                call_id: 13,
                content_type: ContentType::Postcard,
                compression: Algorithm::None,
                more: false,
                message_len: None,
                stream: true,
                empty: false,
                payload: Bytes::from_static(&[0x03, b'a', b'b', b'c']),
            }),
            false,
        ),
        (
            "error with retry hint",
            Frame::Error(ErrorFrame {
                call_id: 5,
                code: polycall_core::Code::Busy as u16,
                message: "in-flight limit of 2 calls on this connection reached".into(),
                retry_after_ms: Some(10),
                supported_versions: None,
                extensions: vec![],
            }),
            false,
        ),
        (
            "connection error: version mismatch",
            Frame::Error(ErrorFrame {
                call_id: 0,
                code: polycall_core::Code::VersionMismatch as u16,
                message: "no common protocol version: client offers 1..=1, server supports 2..=3"
                    .into(),
                retry_after_ms: None,
                supported_versions: Some((2, 3)),
                extensions: vec![],
            }),
            false,
        ),
        ("cancel", Frame::Cancel { call_id: 9 }, false),
        (
            "ping",
            Frame::Ping {
                opaque: 0x0102_0304_0506_0708,
            },
            false,
        ),
        (
            "pong with crc32c",
            Frame::Pong {
                opaque: 0x0102_0304_0506_0708,
            },
            true,
        ),
        (
            "goaway",
            Frame::GoAway(GoAway {
                last_call_id: 41,
                code: polycall_core::Code::Unavailable as u16,
                message: "draining".into(),
            }),
            false,
        ),
        (
            "credit",
            Frame::Credit {
                increment: 2_097_152,
            },
            false,
        ),
        (
            "register",
            Frame::Register {
                call_id: 15,
                methods: vec![
                    MethodEntry {
                        service: inv_s.clone(),
                        method: inv_m.clone(),
                        info: MethodInfo::new("reads an item")
                            .input(r#"{"item_id": string}"#)
                            .output(r#"{"item_id", "quantity", "in_stock"}"#)
                            .idempotent(true),
                    },
                    MethodEntry {
                        service: names("chat.talk").0,
                        method: names("chat.talk").1,
                        info: MethodInfo::new("talks back").kind(polycall_core::CallKind::Bidi),
                    },
                ],
            },
            false,
        ),
        (
            "unregister",
            Frame::Unregister {
                call_id: 17,
                methods: vec![(inv_s, inv_m)],
            },
            false,
        ),
        (
            "auth step (reserved)",
            Frame::Auth(Auth {
                method: 2,
                step: 1,
                data: Bytes::from_static(b"\xaa\xbb"),
            }),
            false,
        ),
    ]
}

/// A zstd frame (content size declared) of `{"a":1}` × 8, made by the zstd CLI at level 3.
fn zstd_sample() -> Vec<u8> {
    // Fixed bytes (not produced at run time, so a zstd upgrade cannot move the vector).
    unhex("28b52ffd20386d0000387b2261223a317d01002a2a46")
}

/// Malformed inputs and the errors they must produce: `(name, hex, crc, max_body)`.
pub fn malformed_vectors() -> Vec<(&'static str, &'static str, bool, u32)> {
    vec![
        (
            "EMPTY without STREAM",
            "02000000 11 08 0000 01000000 0000",
            false,
            65_536,
        ),
        (
            "EMPTY with MORE",
            "07000000 11 0b 0000 01000000 0000 09000000 01",
            false,
            65_536,
        ),
        (
            "EMPTY frame carrying a message",
            "03000000 11 0a 0000 01000000 0000 07",
            false,
            65_536,
        ),
        (
            "dictionary without its id",
            "02000000 25 00 0000 00000000 0080",
            false,
            65_536,
        ),
        (
            "empty dictionary",
            "04000000 25 00 0000 00000000 00800000",
            false,
            65_536,
        ),
        (
            "stream credit of 0",
            "04000000 24 00 0000 01000000 00000000",
            false,
            65_536,
        ),
        (
            "body over the negotiated maximum",
            "01000100 20 00 0000 00000000",
            false,
            65_536,
        ),
        (
            "unknown frame type",
            "00000000 7f 00 0000 00000000",
            false,
            65_536,
        ),
        (
            "undefined flag",
            "08000000 20 01 0000 00000000 0000000000000000",
            false,
            65_536,
        ),
        (
            "reserved bytes set",
            "08000000 20 00 0001 00000000 0000000000000000",
            false,
            65_536,
        ),
        (
            "call frame with call id 0",
            "02000000 11 00 0000 00000000 0000",
            false,
            65_536,
        ),
        (
            "connection frame with a call id",
            "08000000 20 00 0000 05000000 0000000000000000",
            false,
            65_536,
        ),
        (
            "ping cut short",
            "03000000 20 00 0000 00000000 010203",
            false,
            65_536,
        ),
        (
            "trailing bytes",
            "09000000 20 00 0000 00000000 000000000000000000",
            false,
            65_536,
        ),
        (
            "bad checksum",
            "08000000 20 00 0000 00000000 0807060504030201 00000000",
            true,
            65_536,
        ),
        (
            "unknown content type",
            "02000000 11 00 0000 01000000 0900",
            false,
            65_536,
        ),
        (
            "method id 0 without a name",
            "06000000 10 00 0000 01000000 0000 00 00 0000",
            false,
            65_536,
        ),
        (
            "metadata tags out of order",
            "0d000000 10 00 0000 01000000 0100 00 00 0700 050000 050000 00",
            false,
            65_536,
        ),
        (
            "explicit normal priority",
            "0a000000 10 00 0000 01000000 0100 00 00 0400 020100 02",
            false,
            65_536,
        ),
    ]
}
