//! The authentication exchange between `WELCOME` and the first call: `AUTH` frames in
//! turn, accepted with a principal or refused with an error frame.

use bytes::Bytes;
use polycall_core::{Code, Payload, Status};
use polycall_proto::frame::{Auth, Frame};
use polycall_proto::{
    AUTH_ACCEPTED, AUTH_MAX_STEPS, AuthMethod, Connection, Event, ProtoError, SendError, Settings,
    WireMeta,
};

fn settings(methods: &[AuthMethod]) -> Settings {
    Settings::default().auth_methods(methods.to_vec())
}

/// Moves every queued byte both ways until both sides are quiet; returns the first
/// error either side reported.
fn pump(client: &mut Connection, server: &mut Connection) -> Result<(), ProtoError> {
    loop {
        let mut up = Vec::new();
        let a = client.poll_transmit(usize::MAX, &mut up);
        let mut down = Vec::new();
        let b = server.poll_transmit(usize::MAX, &mut down);
        for c in up {
            server.feed(&c)?;
        }
        for c in down {
            client.feed(&c)?;
        }
        if a == 0 && b == 0 {
            return Ok(());
        }
    }
}

fn next(c: &mut Connection) -> Event {
    c.poll_event().expect("an event")
}

fn pair(method: AuthMethod) -> (Connection, Connection) {
    let mut client = Connection::client(settings(&[method])).unwrap();
    let mut server = Connection::server(settings(&[method, AuthMethod::None])).unwrap();
    pump(&mut client, &mut server).unwrap();
    (client, server)
}

#[test]
fn a_one_round_exchange_opens_the_connection_with_the_principal() {
    let (mut client, mut server) = pair(AuthMethod::Token);
    assert_eq!(
        next(&mut client),
        Event::Authenticate {
            method: AuthMethod::Token,
            step: 0,
            data: Bytes::new()
        }
    );
    assert!(!client.is_open() && !server.is_open());
    // Calls cannot be opened before the server accepts.
    let (s, m) = polycall_core::split_full_name("a.b").unwrap();
    assert!(matches!(
        client.open_call(&s, &m, Payload::empty(), WireMeta::default(), false),
        Err(SendError::NotConnected)
    ));
    client.auth_continue(Bytes::from_static(b"secret")).unwrap();
    pump(&mut client, &mut server).unwrap();
    assert_eq!(
        next(&mut server),
        Event::Authenticate {
            method: AuthMethod::Token,
            step: 1,
            data: Bytes::from_static(b"secret")
        }
    );
    server.auth_accept("token:ci").unwrap();
    assert_eq!(next(&mut server), Event::Connected);
    assert_eq!(server.principal(), Some("token:ci"));
    pump(&mut client, &mut server).unwrap();
    assert_eq!(next(&mut client), Event::Connected);
    assert_eq!(client.principal(), Some("token:ci"));
    // Calls flow afterwards.
    let id = client
        .open_call(&s, &m, Payload::raw(&b"x"[..]), WireMeta::default(), false)
        .unwrap();
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(next(&mut server), Event::Call(c) if c.call_id == id));
}

#[test]
fn a_three_step_exchange_alternates_turns() {
    let (mut client, mut server) = pair(AuthMethod::Opaque);
    assert!(matches!(
        next(&mut client),
        Event::Authenticate { step: 0, .. }
    ));
    client.auth_continue(Bytes::from_static(b"m1")).unwrap();
    // Not our turn any more.
    assert!(client.auth_continue(Bytes::from_static(b"again")).is_err());
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(next(&mut server), Event::Authenticate { step: 1, data, .. } if data == "m1"));
    server.auth_continue(Bytes::from_static(b"m2")).unwrap();
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(next(&mut client), Event::Authenticate { step: 2, data, .. } if data == "m2"));
    client.auth_continue(Bytes::from_static(b"m3")).unwrap();
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(next(&mut server), Event::Authenticate { step: 3, data, .. } if data == "m3"));
    server.auth_accept("user:alice").unwrap();
    pump(&mut client, &mut server).unwrap();
    assert_eq!(next(&mut client), Event::Connected);
    assert_eq!(client.principal(), Some("user:alice"));
}

#[test]
fn a_rejection_closes_both_sides_with_unauthenticated() {
    let (mut client, mut server) = pair(AuthMethod::Token);
    let _ = next(&mut client);
    client.auth_continue(Bytes::from_static(b"wrong")).unwrap();
    pump(&mut client, &mut server).unwrap();
    let _ = next(&mut server);
    server
        .auth_reject(&Status::unauthenticated("the token is not valid"))
        .unwrap();
    assert!(server.is_closed());
    let err = pump(&mut client, &mut server).unwrap_err();
    let ProtoError::Remote(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code, Code::Unauthenticated);
    assert!(status.message.contains("not valid"));
    assert!(client.is_closed());
}

#[test]
fn without_a_method_in_common_the_server_says_so() {
    let mut client = Connection::client(settings(&[AuthMethod::Opaque])).unwrap();
    let mut server = Connection::server(settings(&[AuthMethod::Token])).unwrap();
    let err = pump(&mut client, &mut server).unwrap_err();
    assert_eq!(err.status().code, Code::Unauthenticated);
}

/// A server in the authentication phase, fed raw frames by a hand-written client.
fn raw_server(method: AuthMethod) -> Connection {
    let mut server = Connection::server(settings(&[method])).unwrap();
    let mut hello = Vec::new();
    hello.extend_from_slice(&polycall_proto::PREFACE);
    let mut s = settings(&[method]);
    s.features = 0; // no CRC, to write frames by hand
    hello.extend_from_slice(&Frame::Hello(s.hello()).to_bytes(false));
    server.feed(&hello).unwrap();
    server
}

#[test]
fn frames_out_of_order_are_connection_errors() {
    let auth = |method: u8, step: u8| {
        Frame::Auth(Auth {
            method,
            step,
            data: Bytes::new(),
        })
        .to_bytes(false)
        .to_vec()
    };
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "a call before authentication",
            vec![{
                let (s, m) = polycall_core::split_full_name("a.b").unwrap();
                let mut c = Connection::client(Settings::default().features(0)).unwrap();
                let mut w = Connection::server(Settings::default().features(0)).unwrap();
                pump(&mut c, &mut w).unwrap();
                let _ = c.poll_event();
                c.open_call(&s, &m, Payload::empty(), WireMeta::default(), false)
                    .unwrap();
                let mut out = Vec::new();
                c.poll_transmit(usize::MAX, &mut out);
                out.concat()
            }],
        ),
        ("the wrong method", vec![auth(AuthMethod::Opaque as u8, 1)]),
        ("a skipped step", vec![auth(AuthMethod::Token as u8, 3)]),
        (
            "the server's step from the client",
            vec![auth(AuthMethod::Token as u8, 2)],
        ),
        (
            "the client's accept step",
            vec![auth(AuthMethod::Token as u8, AUTH_ACCEPTED)],
        ),
        (
            "two steps without an answer",
            vec![
                auth(AuthMethod::Token as u8, 1),
                auth(AuthMethod::Token as u8, 3),
            ],
        ),
    ];
    for (name, frames) in cases {
        let mut server = raw_server(AuthMethod::Token);
        let result = frames.iter().try_for_each(|f| server.feed(f));
        let err = result.expect_err(name);
        assert!(matches!(err, ProtoError::Violation(_)), "{name}: {err:?}");
        assert!(server.is_closed(), "{name}");
    }
}

#[test]
fn an_exchange_cannot_go_on_forever() {
    let (mut client, mut server) = pair(AuthMethod::Opaque);
    let _ = next(&mut client);
    let mut steps = 0;
    loop {
        if client.auth_continue(Bytes::from_static(b"more")).is_err() {
            break;
        }
        steps += 1;
        if let Err(e) = pump(&mut client, &mut server) {
            panic!("{e:?}");
        }
        let _ = next(&mut server);
        if server.auth_continue(Bytes::from_static(b"more")).is_err() {
            break;
        }
        steps += 1;
        pump(&mut client, &mut server).unwrap();
        let _ = next(&mut client);
    }
    assert_eq!(steps, AUTH_MAX_STEPS as usize);
    assert!(!server.is_open() && !client.is_open());
}

#[test]
fn the_crc_trailer_covers_auth_frames_when_negotiated() {
    let mut client = Connection::client(settings(&[AuthMethod::Token])).unwrap();
    let mut server = Connection::server(settings(&[AuthMethod::Token])).unwrap();
    pump(&mut client, &mut server).unwrap();
    assert!(
        client
            .negotiated()
            .is_some_and(|n| n.has(polycall_proto::features::CRC32C))
    );
    let _ = next(&mut client);
    client.auth_continue(Bytes::from_static(b"tok")).unwrap();
    let mut out = Vec::new();
    client.poll_transmit(usize::MAX, &mut out);
    let mut bytes = out.concat();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55; // corrupt the trailer
    let err = server.feed(&bytes).unwrap_err();
    assert!(matches!(err, ProtoError::Frame(_)), "{err:?}");
}
