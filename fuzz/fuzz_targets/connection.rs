//! Any bytes after a valid handshake: the connection state machine never panics, and
//! either keeps going or closes with a typed error. The first input byte picks the side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polycall_proto::frame::Frame;
use polycall_proto::{Clock, Config, Connection, PREFACE, Role, Settings, negotiate};

/// A clock that advances a microsecond per reading: the same input takes the same path.
fn clock() -> Clock {
    let ticks = std::sync::atomic::AtomicU64::new(0);
    Clock::from_fn(move || {
        std::time::Duration::from_micros(ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let mut settings = Settings::default();
    if mode & 2 == 2 {
        settings = Settings::authenticated_transport(); // no CRC: more inputs reach the state machine
    }
    settings.limits.max_in_flight = 8;
    settings.limits.max_message = 1 << 16;
    let mut conn = if mode & 1 == 0 {
        let config = Config::default().settings(settings.clone()).clock(clock());
        let mut c = Connection::new(Role::Server, config).expect("valid settings");
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&Frame::Hello(settings.hello()).to_bytes(false));
        c.feed(&hello).expect("handshake");
        c
    } else {
        let config = Config::default().settings(settings.clone()).clock(clock());
        let mut c = Connection::new(Role::Client, config).expect("valid settings");
        let welcome = negotiate(&settings, &settings.hello()).expect("agree");
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&Frame::Welcome(welcome).to_bytes(false));
        c.feed(&bytes).expect("handshake");
        c
    };
    let mut out = Vec::new();
    for chunk in data.chunks(97) {
        if conn.feed(chunk).is_err() {
            break;
        }
        while let Some(ev) = conn.poll_event() {
            // Answer calls so the sending paths are exercised too.
            if let polycall_proto::Event::Call(c) = ev {
                let _ = conn.send_reply(c.call_id, c.payload, false);
            }
        }
        out.clear();
        conn.poll_transmit(1 << 20, &mut out);
    }
});
