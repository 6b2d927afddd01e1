//! Frame codec: encode → decode identity for every frame kind, decoding of partial
//! input, and a corpus of malformed frames each mapped to its typed error.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use polycall_core::{ContentType, MethodInfo, MethodName, Priority, ServiceName, TraceContext};
use polycall_proto::compress::Algorithm;
use polycall_proto::frame::{
    self, Auth, CallFrame, DataFrame, ErrorFrame, Frame, FrameType, GoAway, Hello, MethodEntry,
    MethodRef, ReplyFrame, Welcome,
};
use polycall_proto::{FrameError, Limits, WireMeta};
use proptest::prelude::*;

const MAX: u32 = 1 << 20;

fn service() -> impl Strategy<Value = ServiceName> {
    "[a-z][a-z0-9_-]{0,12}(\\.[a-z][a-z0-9]{0,6}){0,2}".prop_map(|s| ServiceName::new(&s).unwrap())
}

fn method() -> impl Strategy<Value = MethodName> {
    "[a-zA-Z][a-zA-Z0-9_-]{0,20}".prop_map(|s| MethodName::new(&s).unwrap())
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn content_type() -> impl Strategy<Value = ContentType> {
    prop::sample::select(ContentType::ALL.to_vec())
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

fn call_id() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn limits() -> impl Strategy<Value = Limits> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c, d)| {
        Limits::default()
            .max_frame(a)
            .max_message(b)
            .max_in_flight(c)
            .initial_window(d)
    })
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max)
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("fits", move |s| s.len() <= max * 4)
}

fn meta() -> impl Strategy<Value = WireMeta> {
    (
        prop::option::of(0u64..u64::MAX / 2),
        prop::option::of(prop::sample::select(vec![
            Priority::Critical,
            Priority::High,
            Priority::Low,
        ])),
        prop::option::of((
            any::<[u8; 16]>(),
            any::<[u8; 8]>(),
            any::<u8>(),
            prop::option::of("[a-z=,0-9]{0,40}"),
        )),
        any::<bool>(),
        prop::option::of("[ -~]{0,40}"),
        prop::option::of("[ -~]{0,40}"),
        prop::collection::btree_map(9u8..=255, bytes(16), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(t, p, tr, idem, key, principal, ext, forwarded)| WireMeta {
                timeout: t.map(Duration::from_micros),
                priority: p,
                trace: tr.map(|(mut id, mut parent, flags, state)| {
                    id[0] |= 1;
                    parent[0] |= 1;
                    TraceContext {
                        trace_id: id,
                        parent_id: parent,
                        flags,
                        tracestate: state,
                    }
                }),
                idempotent: idem,
                idempotency_key: key,
                principal,
                forwarded,
                extensions: ext.into_iter().collect(),
            },
        )
}

fn method_ref() -> impl Strategy<Value = MethodRef> {
    prop_oneof![
        (1u16..=u16::MAX).prop_map(|id| MethodRef { id, name: None }),
        (any::<u16>(), service(), method()).prop_map(|(id, s, m)| MethodRef {
            id,
            name: Some((s, m))
        }),
    ]
}

fn entry() -> impl Strategy<Value = MethodEntry> {
    (
        service(),
        method(),
        text(20),
        text(20),
        text(20),
        any::<bool>(),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(service, method, summary, input, output, idempotent, (requests, replies))| {
                MethodEntry {
                    service,
                    method,
                    info: MethodInfo {
                        summary,
                        input,
                        output,
                        idempotent,
                        inline: false,
                        kind: polycall_core::CallKind::from_streams(requests, replies),
                    },
                }
            },
        )
}

/// Every frame kind, with arbitrary field values.
fn any_frame() -> impl Strategy<Value = Frame> {
    let ids = prop::collection::vec(any::<u8>(), 0..8);
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            limits(),
            ids.clone(),
            ids.clone(),
            ids.clone(),
            "[ -~]{0,30}"
        )
            .prop_map(
                |(
                    min_version,
                    max_version,
                    features,
                    limits,
                    codecs,
                    compressions,
                    auth_methods,
                    agent,
                )| {
                    Frame::Hello(Hello {
                        min_version,
                        max_version,
                        features,
                        limits,
                        codecs,
                        compressions,
                        auth_methods,
                        agent,
                    })
                }
            ),
        (
            any::<u16>(),
            any::<u64>(),
            limits(),
            ids.clone(),
            ids,
            any::<u8>(),
            "[ -~]{0,30}"
        )
            .prop_map(
                |(version, features, limits, codecs, compressions, auth_method, agent)| {
                    Frame::Welcome(Welcome {
                        version,
                        features,
                        limits,
                        codecs,
                        compressions,
                        auth_method,
                        agent,
                    })
                }
            ),
        (any::<u8>(), any::<u8>(), bytes(64)).prop_map(|(method, step, data)| Frame::Auth(Auth {
            method,
            step,
            data
        })),
        (
            call_id(),
            method_ref(),
            content_type(),
            algorithm(),
            meta(),
            any::<bool>(),
            any::<bool>(),
            bytes(300)
        )
            .prop_map(
                |(call_id, method, content_type, compression, meta, more, stream, payload)| {
                    Frame::Call(CallFrame {
                        call_id,
                        method,
                        content_type,
                        compression,
                        meta,
                        more,
                        message_len: more.then_some(payload.len() as u32 + 1),
                        stream,
                        empty: false,
                        payload,
                    })
                }
            ),
        (
            call_id(),
            content_type(),
            algorithm(),
            any::<bool>(),
            any::<bool>(),
            bytes(2000)
        )
            .prop_map(
                |(call_id, content_type, compression, more, stream, payload)| Frame::Reply(
                    ReplyFrame {
                        call_id,
                        content_type,
                        compression,
                        more,
                        message_len: more.then_some(payload.len() as u32 + 7),
                        stream,
                        empty: false,
                        payload,
                    }
                )
            ),
        (
            any::<u32>(),
            any::<u16>(),
            text(60),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<(u16, u16)>()),
            prop::collection::btree_map(3u8..=255, bytes(8), 0..3)
        )
            .prop_map(
                |(call_id, code, message, retry_after_ms, supported_versions, ext)| Frame::Error(
                    ErrorFrame {
                        call_id,
                        code,
                        message,
                        retry_after_ms,
                        supported_versions,
                        extensions: ext.into_iter().collect(),
                    }
                )
            ),
        call_id().prop_map(|call_id| Frame::Cancel { call_id }),
        (
            call_id(),
            prop::option::of((content_type(), algorithm())),
            any::<bool>(),
            bytes(300)
        )
            .prop_map(|(call_id, first, more, payload)| Frame::Data(DataFrame {
                packed: false,
                call_id,
                first,
                more,
                message_len: (first.is_some() && more).then_some(payload.len() as u32 + 1000),
                payload
            })),
        call_id().prop_map(|call_id| Frame::End { call_id }),
        any::<u64>().prop_map(|opaque| Frame::Ping { opaque }),
        any::<u64>().prop_map(|opaque| Frame::Pong { opaque }),
        (any::<u32>(), any::<u16>(), text(60)).prop_map(|(last_call_id, code, message)| {
            Frame::GoAway(GoAway {
                last_call_id,
                code,
                message,
            })
        }),
        (1..=u32::MAX).prop_map(|increment| Frame::Credit { increment }),
        (call_id(), 1..=u32::MAX)
            .prop_map(|(call_id, increment)| Frame::StreamCredit { call_id, increment }),
        (call_id(), method_ref(), meta()).prop_map(|(call_id, method, meta)| Frame::Call(
            CallFrame {
                call_id,
                method,
                content_type: ContentType::Raw,
                compression: Algorithm::None,
                meta,
                more: false,
                message_len: None,
                stream: true,
                empty: true,
                payload: Bytes::new(),
            }
        )),
        call_id().prop_map(|call_id| Frame::Reply(ReplyFrame {
            call_id,
            content_type: ContentType::Raw,
            compression: Algorithm::None,
            more: false,
            message_len: None,
            stream: true,
            empty: true,
            payload: Bytes::new(),
        })),
        (call_id(), prop::collection::vec(entry(), 0..4))
            .prop_map(|(call_id, methods)| Frame::Register { call_id, methods }),
        (
            call_id(),
            prop::collection::vec((service(), method()), 0..4)
        )
            .prop_map(|(call_id, methods)| Frame::Unregister { call_id, methods }),
    ]
}

fn decode_all(bytes: &[u8], crc: bool) -> Result<Option<Frame>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let f = frame::decode(&mut buf, MAX, crc)?;
    assert!(buf.is_empty() || f.is_none(), "decoder left bytes behind");
    Ok(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, .. ProptestConfig::default() })]

    #[test]
    fn encode_decode_identity(f in any_frame(), crc in any::<bool>()) {
        let bytes = f.to_bytes(crc);
        let back = decode_all(&bytes, crc).unwrap().expect("a whole frame");
        prop_assert_eq!(&back, &f);
        // canonical: re-encoding gives the same bytes
        prop_assert_eq!(back.to_bytes(crc), bytes);
    }

    #[test]
    fn every_prefix_asks_for_more(f in any_frame(), crc in any::<bool>()) {
        let bytes = f.to_bytes(crc);
        for cut in [0, 1, 11, 12, bytes.len() / 2, bytes.len() - 1] {
            if cut < bytes.len() {
                prop_assert_eq!(decode_all(&bytes[..cut], crc).unwrap(), None);
            }
        }
    }

    #[test]
    fn flipping_a_bit_under_crc_is_caught(f in any_frame(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = f.to_bytes(true).to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        // A flip in the length field may make the frame look incomplete; any other flip
        // must be refused, never decoded into a different frame.
        if let Ok(Some(g)) = decode_all(&bytes, true) {
            prop_assert!(false, "corrupted frame decoded as {g:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512), crc in any::<bool>()) {
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = frame::decode(&mut buf, 4096, crc) {}
    }
}

#[test]
fn vectored_encoding_keeps_large_payloads_uncopied() {
    let payload = Bytes::from(vec![7u8; 64 * 1024]);
    let f = Frame::Reply(ReplyFrame {
        call_id: 1,
        content_type: ContentType::Raw,
        compression: Algorithm::None,
        more: false,
        message_len: None,
        stream: false,
        empty: false,
        payload: payload.clone(),
    });
    let mut out = frame::FrameBuf::new();
    f.encode(&mut out, true);
    let mut chunks = Vec::new();
    out.drain_chunks(&mut chunks);
    assert_eq!(chunks.len(), 3, "header, payload, trailer");
    assert_eq!(
        chunks[1].as_ptr(),
        payload.as_ptr(),
        "the payload chunk is the caller's buffer"
    );
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(decode_all(&joined, true).unwrap().unwrap(), f);
}

#[test]
fn decoded_payload_shares_the_receive_buffer() {
    let f = Frame::Data(DataFrame {
        packed: false,
        call_id: 3,
        first: None,
        more: true,
        message_len: None,
        payload: Bytes::from_static(b"zero-copy please"),
    });
    let mut buf = BytesMut::from(&f.to_bytes(false)[..]);
    let base = buf.as_ptr() as usize;
    let Some(Frame::Data(d)) = frame::decode(&mut buf, MAX, false).unwrap() else {
        panic!()
    };
    assert_eq!(d.payload.as_ptr() as usize, base + frame::HEADER_LEN);
}

fn header(len: u32, ty: u8, flags: u8, reserved: u16, call: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&len.to_le_bytes());
    v.push(ty);
    v.push(flags);
    v.extend_from_slice(&reserved.to_le_bytes());
    v.extend_from_slice(&call.to_le_bytes());
    v
}

fn with_body(ty: u8, flags: u8, call: u32, body: &[u8]) -> Vec<u8> {
    let mut v = header(body.len() as u32, ty, flags, 0, call);
    v.extend_from_slice(body);
    v
}

/// Malformed frames, each with the error it must produce.
#[test]
fn malformed_corpus() {
    let call = FrameType::Call;
    let corpus: Vec<(&str, Vec<u8>, FrameError)> = vec![
        (
            "oversize body",
            header(MAX + 1, 0x20, 0, 0, 0),
            FrameError::TooLarge {
                len: MAX + 1,
                max: MAX,
            },
        ),
        (
            "length u32::MAX",
            header(u32::MAX, 0x11, 0, 0, 1),
            FrameError::TooLarge {
                len: u32::MAX,
                max: MAX,
            },
        ),
        (
            "unknown type",
            header(0, 0x7f, 0, 0, 0),
            FrameError::UnknownType(0x7f),
        ),
        (
            "type 0",
            header(0, 0x00, 0, 0, 0),
            FrameError::UnknownType(0),
        ),
        (
            "undefined flag on PING",
            header(8, 0x20, 0x01, 0, 0),
            FrameError::UnknownFlags {
                frame: FrameType::Ping,
                flags: 1,
            },
        ),
        (
            "undefined flag 0x10 on CALL",
            header(0, 0x10, 0x10, 0, 1),
            FrameError::UnknownFlags {
                frame: call,
                flags: 0x10,
            },
        ),
        (
            "reserved bytes set",
            header(8, 0x20, 0, 0x0100, 0),
            FrameError::Reserved {
                frame: FrameType::Ping,
                value: 0x100,
            },
        ),
        (
            "call frame with call id 0",
            header(2, 0x11, 0, 0, 0),
            FrameError::BadCallId {
                frame: FrameType::Reply,
                call_id: 0,
            },
        ),
        (
            "ping with a call id",
            header(8, 0x20, 0, 0, 5),
            FrameError::BadCallId {
                frame: FrameType::Ping,
                call_id: 5,
            },
        ),
        (
            "short ping",
            with_body(0x20, 0, 0, &[1, 2, 3]),
            FrameError::Malformed {
                frame: FrameType::Ping,
                reason: "ping value is missing",
            },
        ),
        (
            "ping with trailing bytes",
            with_body(0x20, 0, 0, &[0; 9]),
            FrameError::Malformed {
                frame: FrameType::Ping,
                reason: "trailing bytes after the last field",
            },
        ),
        (
            "cancel with a body",
            with_body(0x13, 0, 1, &[0]),
            FrameError::Malformed {
                frame: FrameType::Cancel,
                reason: "trailing bytes after the last field",
            },
        ),
        (
            "credit of zero",
            with_body(0x23, 0, 0, &[0; 4]),
            FrameError::Malformed {
                frame: FrameType::Credit,
                reason: "credit increment of 0",
            },
        ),
        (
            "reply without content type",
            with_body(0x11, 0, 1, &[]),
            FrameError::Malformed {
                frame: FrameType::Reply,
                reason: "content type is missing",
            },
        ),
        (
            "reply with unknown content type",
            with_body(0x11, 0, 1, &[9, 0]),
            FrameError::Malformed {
                frame: FrameType::Reply,
                reason: "unknown content type id",
            },
        ),
        (
            "reply with unknown compression",
            with_body(0x11, 0, 1, &[0, 9]),
            FrameError::Malformed {
                frame: FrameType::Reply,
                reason: "unknown compression id",
            },
        ),
        (
            "call with method id 0 and no name",
            with_body(0x10, 0, 1, &[0, 0, 0, 0, 0, 0]),
            FrameError::Malformed {
                frame: call,
                reason: "method id 0 without a name",
            },
        ),
        (
            "call name cut short",
            with_body(0x10, 0x04, 1, &[1, 0, 10, b'a']),
            FrameError::Malformed {
                frame: call,
                reason: "method name is cut short",
            },
        ),
        (
            "call name without a dot",
            with_body(0x10, 0x04, 1, &[1, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0]),
            FrameError::Malformed {
                frame: call,
                reason: "method name is not a valid SERVICE.METHOD",
            },
        ),
        (
            "call name not UTF-8",
            with_body(0x10, 0x04, 1, &[1, 0, 3, b'a', b'.', 0xff, 0, 0, 0, 0]),
            FrameError::Malformed {
                frame: call,
                reason: "text is not UTF-8",
            },
        ),
        (
            "metadata longer than the body",
            with_body(0x10, 0, 1, &[1, 0, 0, 0, 50, 0]),
            FrameError::Malformed {
                frame: call,
                reason: "metadata is cut short",
            },
        ),
        (
            "metadata tag 0",
            with_body(0x10, 0, 1, &[1, 0, 0, 0, 3, 0, 0, 0, 0]),
            FrameError::Malformed {
                frame: call,
                reason: "metadata tag 0 is reserved",
            },
        ),
        (
            "metadata tags out of order",
            with_body(0x10, 0, 1, &[1, 0, 0, 0, 7, 0, 5, 0, 0, 5, 0, 0, 0]),
            FrameError::Malformed {
                frame: call,
                reason: "metadata tags are not strictly ascending",
            },
        ),
        (
            "timeout of 3 bytes",
            with_body(0x10, 0, 1, &[1, 0, 0, 0, 6, 0, 1, 3, 0, 1, 2, 3]),
            FrameError::Malformed {
                frame: call,
                reason: "timeout entry is not 8 bytes",
            },
        ),
        (
            "priority 9",
            with_body(0x10, 0, 1, &[1, 0, 0, 0, 4, 0, 2, 1, 0, 9]),
            FrameError::Malformed {
                frame: call,
                reason: "unknown priority class",
            },
        ),
        (
            "explicit normal priority",
            with_body(0x10, 0, 1, &[1, 0, 0, 0, 4, 0, 2, 1, 0, 2]),
            FrameError::Malformed {
                frame: call,
                reason: "priority normal is sent by omitting the entry",
            },
        ),
        (
            "tracestate alone",
            with_body(0x10, 0, 1, &[1, 0, 0, 0, 4, 0, 4, 1, 0, b'a']),
            FrameError::Malformed {
                frame: call,
                reason: "tracestate without traceparent",
            },
        ),
        (
            "all-zero trace id",
            {
                let mut b = vec![1, 0, 0, 0, 28, 0, 3, 25, 0];
                b.extend_from_slice(&[0; 16]);
                b.extend_from_slice(&[1; 8]);
                b.push(1);
                with_body(0x10, 0, 1, &b)
            },
            FrameError::Malformed {
                frame: call,
                reason: "traceparent has an all-zero id",
            },
        ),
        (
            "error message longer than declared",
            with_body(0x12, 0, 1, &[2, 0, 10, 0, b'x']),
            FrameError::Malformed {
                frame: FrameType::Error,
                reason: "message is cut short",
            },
        ),
        (
            "error detail of wrong length",
            with_body(0x12, 0, 1, &[2, 0, 0, 0, 1, 2, 0, 1, 2]),
            FrameError::Malformed {
                frame: FrameType::Error,
                reason: "detail entry has the wrong length",
            },
        ),
        (
            "hello cut in the limits",
            with_body(0x01, 0, 0, &[1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]),
            FrameError::Malformed {
                frame: FrameType::Hello,
                reason: "limits are cut short",
            },
        ),
        (
            "register with a count larger than its entries",
            with_body(0x30, 0, 1, &[200, 0]),
            FrameError::Malformed {
                frame: FrameType::Register,
                reason: "method name is cut short",
            },
        ),
        (
            "EMPTY without STREAM",
            with_body(0x11, 0x08, 1, &[0, 0]),
            FrameError::Malformed {
                frame: FrameType::Reply,
                reason: "EMPTY without STREAM",
            },
        ),
        (
            "EMPTY with MORE",
            with_body(0x11, 0x0B, 1, &[0, 0, 9, 0, 0, 0, 1]),
            FrameError::Malformed {
                frame: FrameType::Reply,
                reason: "EMPTY with MORE",
            },
        ),
        (
            "EMPTY carrying a message",
            with_body(0x11, 0x0A, 1, &[0, 0, 7]),
            FrameError::Malformed {
                frame: FrameType::Reply,
                reason: "EMPTY frame carries a message",
            },
        ),
        (
            "stream credit of 0",
            with_body(0x24, 0, 1, &[0, 0, 0, 0]),
            FrameError::Malformed {
                frame: FrameType::StreamCredit,
                reason: "stream credit increment of 0",
            },
        ),
        (
            "stream credit on call id 0",
            with_body(0x24, 0, 0, &[1, 0, 0, 0]),
            FrameError::BadCallId {
                frame: FrameType::StreamCredit,
                call_id: 0,
            },
        ),
        (
            "PACKED without FIRST",
            with_body(0x14, 0x10, 1, &[5, 0, 0, 0, 1, 2, 3, 4, 5]),
            FrameError::Malformed {
                frame: FrameType::Data,
                reason: "PACKED needs FIRST and excludes MORE",
            },
        ),
        (
            "PACKED entries that do not fill the frame",
            with_body(0x14, 0x18, 1, &[0, 0, 9, 0, 0, 0, 1, 2]),
            FrameError::Malformed {
                frame: FrameType::Data,
                reason: "PACKED entries do not fill the frame",
            },
        ),
        (
            "PACKED messages compressed",
            with_body(0x14, 0x18, 1, &[0, 1, 1, 0, 0, 0, 7]),
            FrameError::Malformed {
                frame: FrameType::Data,
                reason: "PACKED messages are not compressed",
            },
        ),
        (
            "register with undefined method flags",
            {
                let mut b = vec![1, 0, 3, b'a', b'.', b'b', 8];
                b.extend_from_slice(&[0; 6]);
                with_body(0x30, 0, 1, &b)
            },
            FrameError::Malformed {
                frame: FrameType::Register,
                reason: "undefined method flag bits",
            },
        ),
    ];
    for (name, bytes, expected) in corpus {
        let got = decode_all(&bytes, false);
        assert_eq!(got, Err(expected), "{name}");
    }
}

#[test]
fn checksum_mismatch_is_typed() {
    let mut bytes = Frame::Ping { opaque: 1 }.to_bytes(true).to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    assert!(matches!(
        decode_all(&bytes, true),
        Err(FrameError::Checksum {
            frame: FrameType::Ping,
            ..
        })
    ));
}

#[test]
fn oversize_is_refused_before_the_body_arrives() {
    // Only the header: the decoder must refuse now rather than wait for 1 GiB.
    let h = header(1 << 30, 0x14, 0, 0, 1);
    assert!(matches!(
        decode_all(&h, false),
        Err(FrameError::TooLarge { .. })
    ));
}
