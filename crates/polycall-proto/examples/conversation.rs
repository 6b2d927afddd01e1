//! A client and a server state machine talking in memory: the handshake, an interned
//! call, a reply, and the bytes each frame took. No sockets: polycall-proto is sans-IO.
//!
//! `cargo run -p polycall-proto --example conversation`

use bytes::BytesMut;
use polycall_core::{MethodName, Payload, ServiceName};
use polycall_proto::frame;
use polycall_proto::{Connection, Event, PREFACE, Settings, WireMeta};

fn deliver(from: &mut Connection, to: &mut Connection, label: &str, crc: &mut bool) {
    let mut chunks = Vec::new();
    from.poll_transmit(usize::MAX, &mut chunks);
    let mut bytes = BytesMut::new();
    for c in &chunks {
        bytes.extend_from_slice(c);
    }
    let mut view = bytes.clone();
    if view.starts_with(&PREFACE) {
        println!("{label}: preface {:02x?}", &PREFACE);
        let _ = view.split_to(PREFACE.len());
    }
    while !view.is_empty() {
        let before = view.len();
        // Handshake frames never carry the CRC trailer; later ones do when negotiated.
        let is_handshake = matches!(view.get(4), Some(1 | 2));
        match frame::decode(&mut view, u32::MAX, *crc && !is_handshake) {
            Ok(Some(f)) => println!(
                "{label}: {:>4} bytes  {:?}",
                before - view.len(),
                f.frame_type()
            ),
            _ => break,
        }
    }
    to.feed(&bytes).expect("valid bytes");
    if let Some(n) = to.negotiated() {
        *crc = n.has(polycall_proto::features::CRC32C);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut client = Connection::client(Settings::default())?;
    let mut server = Connection::server(Settings::default())?;
    let mut crc = false;
    deliver(&mut client, &mut server, "client → server", &mut crc);
    deliver(&mut server, &mut client, "server → client", &mut crc);
    while let Some(e) = client.poll_event() {
        println!("client event: {e:?}");
    }
    let n = client.negotiated().expect("connected");
    println!(
        "agreed: version {}, crc32c {}, codecs {:?}, compression {:?}, peer {:?}",
        n.version,
        n.has(polycall_proto::features::CRC32C),
        n.codecs,
        n.compressions,
        n.peer_agent
    );

    let (service, method) = (ServiceName::new("debug")?, MethodName::new("echo")?);
    for text in [
        "first call names the method",
        "second call sends only its id",
    ] {
        client.open_call(
            &service,
            &method,
            Payload::raw(text),
            WireMeta::default(),
            false,
        )?;
    }
    deliver(&mut client, &mut server, "client → server", &mut crc);
    while let Some(e) = server.poll_event() {
        if let Event::Call(call) = e {
            println!(
                "server got call {} {}.{}: {:?}",
                call.call_id,
                call.service,
                call.method,
                String::from_utf8_lossy(&call.payload.bytes)
            );
            server.send_reply(call.call_id, call.payload, false)?;
        }
    }
    deliver(&mut server, &mut client, "server → client", &mut crc);
    while let Some(e) = client.poll_event() {
        if let Event::Reply {
            call_id, payload, ..
        } = e
        {
            println!(
                "client got reply {call_id}: {:?}",
                String::from_utf8_lossy(&payload.bytes)
            );
        }
    }
    Ok(())
}
