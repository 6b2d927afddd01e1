//! libpolycall compatibility end to end: a PCR1 client written in Python from the byte
//! layout alone, a first-generation client in Rust over a raw socket, and a native
//! polycall channel, all on one runtime listener.

use polycall_test_support::TempDir;
use std::time::Duration;

use polycall_core::{Call, Payload};
use polycall_net::{Channel, Endpoint};
use polycall_runtime::{CompatConfig, Runtime, RuntimeConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_TIMEOUT: Duration = Duration::from_millis(800);
const ALICE: &str = "alice-s3cret-token-0123456789";

async fn runtime(concurrency: Option<usize>) -> (Runtime, Endpoint, TempDir) {
    let dir = TempDir::new("tests");
    let mut config = RuntimeConfig::default()
        .endpoint("127.0.0.1:0".parse().unwrap())
        .state_dir(dir.path().to_owned())
        .compat(
            CompatConfig::default()
                .fixtures(true)
                .read_timeout(READ_TIMEOUT),
        );
    // First-generation logins are checked against [auth]: here a token named alice
    // (anonymous sessions stay allowed, so PCR1 clients need no token).
    let mut tokens = polycall_security::token::Tokens::default();
    tokens.insert("alice", ALICE.as_bytes()).unwrap();
    config.server.connection.authenticator = Some(std::sync::Arc::new(
        polycall_net::auth::ServerAuth::default()
            .tokens(tokens)
            .anonymous(true),
    ));
    config.server.connection.handshake_timeout = Duration::from_millis(800);
    if let Some(max) = concurrency {
        config.qos.concurrency = Some(
            polycall_net::limit::ConcurrencyLimitConfig::default()
                .max(max)
                .class_share([1.0; 4]),
        );
    }
    let rt = Runtime::start(config).await.unwrap();
    let ep = rt.local_endpoint().clone();
    (rt, ep, dir)
}

fn host_port(ep: &Endpoint) -> (String, String) {
    let s = ep.to_string();
    let s = s.strip_prefix("tcp://").unwrap_or(&s).to_owned();
    let (h, p) = s.rsplit_once(':').unwrap();
    (h.to_owned(), p.to_owned())
}

/// A PCR1 client written from the byte layout alone (standard library only). It prints
/// one JSON object: case name → the answer(s) it got.
const PCR1_CLIENT: &str = r#"
import json, socket, struct, sys, time

HOST, PORT = sys.argv[1], int(sys.argv[2])
REQUEST, RESPONSE, CONTROL, CONTROL_REPLY = 1, 2, 3, 4

def frame(kind, cid, body):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return b"PCR1" + struct.pack(">BBHII", kind, 0, 0, cid, len(body)) + body

def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out

def read_msg(s):
    magic, kind, flags, reserved, cid, length = struct.unpack(">4sBBHII", recv_exact(s, 16))
    assert magic == b"PCR1", magic
    assert flags == 0 and reserved == 0
    return {"kind": kind, "id": cid, "body": json.loads(recv_exact(s, length))}

def connect():
    s = socket.create_connection((HOST, PORT), timeout=10)
    return s

def closed_after(s):
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True

def one(kind, body, cid=1):
    # libpolycall's clients open one connection per call.
    s = connect()
    s.sendall(frame(kind, cid, body))
    m = read_msg(s)
    s.close()
    return m

def req(service, operation, inp, deadline_ms=2000):
    return {"service": service, "operation": operation, "deadline_ms": deadline_ms, "input": inp}

r = {}
r["echo"] = one(REQUEST, req("debug", "echo", {"hello": [1, 2, 3], "s": "\u00e9"}), cid=7)
r["sleep_ok"] = one(REQUEST, req("debug", "sleep", {"ms": 20}, 2000))
t = time.time()
r["sleep_late"] = one(REQUEST, req("debug", "sleep", {"ms": 3000}, 150))
r["sleep_late_s"] = time.time() - t
for item in ["widget-a", "widget-b", "gadget-c", "sprocket-z"]:
    r["inv_" + item] = one(REQUEST, req("inventory", "get", {"item_id": item}))
r["unknown_op"] = one(REQUEST, req("debug", "nope", {}))
r["unknown_service"] = one(REQUEST, req("nosuch", "thing", {}))
r["invalid_input"] = one(REQUEST, req("debug", "sleep", {"ms": "x"}))
r["malformed"] = one(REQUEST, b'{"service": "debug", "operation": ')
r["missing_field"] = one(REQUEST, {"service": "debug", "input": 1})

# Several requests in sequence on one connection.
s = connect()
seq = []
for i in range(3):
    s.sendall(frame(REQUEST, 100 + i, req("debug", "echo", {"n": i})))
    seq.append(read_msg(s))
r["sequence"] = seq
# ... and pipelined: all sent before any answer is read.
s.sendall(b"".join(frame(REQUEST, 200 + i, req("inventory", "get", {"item_id": "widget-b"})) for i in range(4)))
r["pipelined"] = [read_msg(s) for _ in range(4)]
s.close()

r["ping"] = one(CONTROL, {"action": "ping"})
r["health"] = one(CONTROL, {"action": "health"})
r["describe"] = one(CONTROL, {"action": "describe"})
r["shutdown_wrong"] = one(CONTROL, {"action": "shutdown", "auth_token": "not-the-token"})
r["shutdown_missing"] = one(CONTROL, {"action": "shutdown"})
r["bad_action"] = one(CONTROL, {"action": "reboot"})

# Output over 1 MiB: 1E2 is re-serialised as 100.0, so the echo outgrows the limit.
big = b'{"service":"debug","operation":"echo","deadline_ms":5000,"input":[' + b",".join([b"1E2"] * 200000) + b"]}"
assert len(big) < 1048576
r["too_large_request_len"] = len(big)
r["too_large"] = one(REQUEST, big)

# An oversize length header: the documented error, then the connection closes.
s = connect()
s.sendall(b"PCR1" + struct.pack(">BBHII", REQUEST, 0, 0, 55, 1048577))
r["oversize"] = read_msg(s)
r["oversize_closed"] = closed_after(s)
s.close()

# A bad type byte: an error, then close.
s = connect()
s.sendall(b"PCR1" + struct.pack(">BBHII", 9, 0, 0, 56, 2) + b"{}")
r["bad_type"] = read_msg(s)
r["bad_type_closed"] = closed_after(s)
s.close()

# A trickler: half a header, then nothing; it costs one read timeout.
s = connect()
s.sendall(b"PCR1\x01\x00")
t = time.time()
r["trickle_closed"] = closed_after(s)
r["trickle_s"] = time.time() - t
s.close()

# server.busy: one call in flight fills the runtime's concurrency limit of 1.
a = connect()
a.sendall(frame(REQUEST, 300, req("debug", "sleep", {"ms": 600}, 5000)))
time.sleep(0.2)
r["busy"] = one(REQUEST, req("debug", "echo", 1), cid=301)
r["busy_first"] = read_msg(a)
a.close()

print(json.dumps(r))
"#;

fn ok_output(v: &Value) -> &Value {
    assert_eq!(v["body"]["ok"], true, "expected success: {v}");
    &v["body"]["output"]
}

fn err_code(v: &Value) -> &str {
    assert_eq!(v["body"]["ok"], false, "expected an error: {v}");
    assert!(
        v["body"]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v["body"]["error"]["code"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcr1_client_in_python_gets_every_documented_answer() {
    let (rt, ep, _dir) = runtime(Some(1)).await;
    let (host, port) = host_port(&ep);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(PCR1_CLIENT)
            .arg(host)
            .arg(port)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the Python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Answers carry the type and correlation id.
    assert_eq!(r["echo"]["kind"], 2);
    assert_eq!(r["echo"]["id"], 7);
    assert_eq!(
        ok_output(&r["echo"]),
        &json!({"hello": [1, 2, 3], "s": "é"})
    );
    assert_eq!(ok_output(&r["sleep_ok"]), &json!({"slept_ms": 20}));
    assert_eq!(err_code(&r["sleep_late"]), "deadline.exceeded");
    assert!(
        r["sleep_late_s"].as_f64().unwrap() < 2.0,
        "{}",
        r["sleep_late_s"]
    );
    for (item, qty) in [("widget-a", 42), ("widget-b", 7), ("gadget-c", 0)] {
        assert_eq!(
            ok_output(&r[format!("inv_{item}")]),
            &json!({"item_id": item, "quantity": qty, "in_stock": qty > 0})
        );
    }
    assert_eq!(err_code(&r["inv_sprocket-z"]), "item.unknown");
    assert_eq!(err_code(&r["unknown_op"]), "operation.unknown");
    assert_eq!(err_code(&r["unknown_service"]), "operation.unknown");
    assert_eq!(err_code(&r["invalid_input"]), "input.invalid");
    assert_eq!(err_code(&r["malformed"]), "request.malformed");
    assert_eq!(err_code(&r["missing_field"]), "request.malformed");

    for (i, m) in r["sequence"].as_array().unwrap().iter().enumerate() {
        assert_eq!(m["id"], 100 + i);
        assert_eq!(ok_output(m), &json!({"n": i}));
    }
    for (i, m) in r["pipelined"].as_array().unwrap().iter().enumerate() {
        assert_eq!(m["id"], 200 + i);
        assert_eq!(ok_output(m)["quantity"], 7);
    }

    // Control.
    assert_eq!(r["ping"]["kind"], 4);
    assert_eq!(r["ping"]["body"], json!({"ok": true, "data": "pong"}));
    assert_eq!(r["health"]["body"]["ok"], true);
    assert_eq!(r["health"]["body"]["data"]["status"], "ok");
    let ops = r["describe"]["body"]["data"]["operations"]
        .as_array()
        .unwrap();
    for name in ["debug.echo", "debug.sleep", "inventory.get", "sys.health"] {
        let op = ops
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{op}"
        );
        assert!(op["idempotent"].is_boolean(), "{op}");
        assert!(
            op.get("input").is_some() && op.get("output").is_some(),
            "{op}"
        );
    }
    let inv = ops.iter().find(|o| o["name"] == "inventory.get").unwrap();
    assert_eq!(inv["idempotent"], true);
    assert!(inv["input"].as_str().unwrap().contains("item_id"));
    assert_eq!(r["shutdown_wrong"]["kind"], 4);
    assert_eq!(err_code(&r["shutdown_wrong"]), "auth.denied");
    assert_eq!(err_code(&r["shutdown_missing"]), "auth.denied");
    assert_eq!(err_code(&r["bad_action"]), "request.malformed");

    // Limits.
    assert_eq!(err_code(&r["too_large"]), "output.too_large");
    assert_eq!(r["oversize"]["id"], 55);
    assert_eq!(err_code(&r["oversize"]), "request.malformed");
    assert!(
        r["oversize"]["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048577")
    );
    assert_eq!(r["oversize_closed"], true);
    assert_eq!(r["bad_type"]["id"], 56);
    assert_eq!(err_code(&r["bad_type"]), "request.malformed");
    assert_eq!(r["bad_type_closed"], true);
    assert_eq!(r["trickle_closed"], true);
    let t = r["trickle_s"].as_f64().unwrap();
    // Closed by the 0.8 s read timeout, not sooner (load cannot make it sooner); the upper
    // bound, 10x the typical ~0.8 s and below the client's 10 s socket timeout, is
    // generous so that a loaded 2-core machine cannot break it.
    assert!(
        t >= READ_TIMEOUT.as_secs_f64() * 0.8 && t < 8.0,
        "trickler closed after {t} s"
    );
    assert_eq!(r["busy"]["id"], 301);
    assert_eq!(err_code(&r["busy"]), "server.busy");
    assert_eq!(ok_output(&r["busy_first"]), &json!({"slept_ms": 600}));

    // A wrong token did not stop the runtime.
    let stopped = tokio::time::timeout(Duration::from_millis(50), rt.shutdown_requested()).await;
    assert!(stopped.is_err());
    rt.shutdown().await;
}

// ------------------------------------------------------------- first generation

fn checksum(p: &[u8]) -> u32 {
    p.iter()
        .fold(0u32, |c, &b| c.rotate_left(5).wrapping_add(u32::from(b)))
}

fn v1_message(kind: u8, flags: u16, seq: u32, payload: &[u8], corrupt: bool) -> Vec<u8> {
    let mut m = vec![1, kind];
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let sum = checksum(payload) ^ u32::from(corrupt);
    m.extend_from_slice(&sum.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

struct V1 {
    s: TcpStream,
    seq: u32,
}

impl V1 {
    async fn connect(ep: &Endpoint) -> V1 {
        let (h, p) = host_port(ep);
        V1 {
            s: TcpStream::connect(format!("{h}:{p}")).await.unwrap(),
            seq: 0,
        }
    }

    async fn send(&mut self, kind: u8, flags: u16, payload: &[u8], corrupt: bool) -> u32 {
        self.seq += 1;
        let m = v1_message(kind, flags, self.seq, payload, corrupt);
        self.s.write_all(&m).await.unwrap();
        self.seq
    }

    /// (type, sequence, payload) of the next message.
    async fn recv(&mut self) -> (u8, u32, Vec<u8>) {
        let mut h = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), self.s.read_exact(&mut h))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h[0], 1);
        let le = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut p = vec![0u8; le(8) as usize];
        self.s.read_exact(&mut p).await.unwrap();
        assert_eq!(checksum(&p), le(12), "the server's checksum");
        (h[1], le(4), p)
    }

    async fn call(&mut self, kind: u8, flags: u16, payload: &[u8]) -> (u8, Value) {
        let seq = self.send(kind, flags, payload, false).await;
        let (k, s, p) = self.recv().await;
        assert_eq!(s, seq, "replies are matched by sequence");
        (k, serde_json::from_slice(&p).unwrap_or(Value::Null))
    }

    async fn handshake(&mut self) {
        let mut hs = 0x0050_4C43u32.to_le_bytes().to_vec();
        hs.extend_from_slice(&[1, 0, 0, 0]); // version 1, pad, flags 0
        let seq = self.send(1, 0, &hs, false).await;
        let (k, s, p) = self.recv().await;
        assert_eq!((k, s), (4, seq));
        assert_eq!(&p[..5], &[0x43, 0x4C, 0x50, 0, 1]);
    }

    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_generation_client_and_native_channel_share_the_port() {
    let (rt, ep, _dir) = runtime(None).await;

    // Handshake → auth → commands.
    let mut c = V1::connect(&ep).await;
    c.handshake().await;
    let (k, v) = c
        .call(
            2,
            0,
            format!(r#"{{"username":"alice","password":"{ALICE}"}}"#).as_bytes(),
        )
        .await;
    assert_eq!(k, 4, "{v}");
    assert_eq!(v["authenticated"], true);
    let (k, v) = c
        .call(3, 8, br#"{"command":"debug.echo","data":{"x":[1,"two"]}}"#)
        .await;
    assert_eq!((k, v), (4, json!({"x": [1, "two"]})));
    let (k, v) = c
        .call(
            3,
            0,
            br#"{"command":"inventory.get","data":{"item_id":"widget-a"}}"#,
        )
        .await;
    assert_eq!(k, 4);
    assert_eq!(v["quantity"], 42);
    let (k, v) = c
        .call(
            3,
            0,
            br#"{"command":"inventory.get","data":{"item_id":"nope"}}"#,
        )
        .await;
    assert_eq!((k, v["code"].as_str()), (5, Some("item.unknown")));
    // Heartbeats are echoed; empty payloads are fine.
    let seq = c.send(6, 0, b"", false).await;
    assert_eq!(c.recv().await, (6, seq, vec![]));
    // A flag that cannot be honoured is refused, and the session goes on.
    let (k, v) = c.call(3, 2, br#"{"command":"debug.echo","data":1}"#).await;
    assert_eq!(k, 5);
    assert!(v["message"].as_str().unwrap().contains("compressed"), "{v}");
    let (k, v) = c.call(3, 0, br#"{"command":"debug.echo","data":2}"#).await;
    assert_eq!((k, v), (4, json!(2)));

    // A native channel on the same port, while the legacy session is open.
    let channel = Channel::connect(ep.clone()).await.unwrap();
    let reply = channel
        .call(Call::new("debug.echo", Payload::raw("native")).unwrap())
        .await
        .unwrap();
    assert_eq!(&reply.payload.bytes[..], b"native");
    let (k, _) = c.call(6, 0, b"still here").await;
    assert_eq!(k, 6);

    // Wrong password: refused, then closed.
    let mut c2 = V1::connect(&ep).await;
    c2.handshake().await;
    let (k, v) = c2
        .call(2, 0, br#"{"username":"alice","password":"guess"}"#)
        .await;
    assert_eq!((k, v["code"].as_str()), (5, Some("auth.denied")), "{v}");
    assert!(c2.closed().await);

    // A command before authenticating is refused.
    let mut c3 = V1::connect(&ep).await;
    c3.handshake().await;
    let (k, v) = c3.call(3, 0, br#"{"command":"debug.echo"}"#).await;
    assert_eq!((k, v["code"].as_str()), (5, Some("auth.denied")), "{v}");
    assert!(c3.closed().await);

    // A bad checksum: refused, then closed.
    let mut c4 = V1::connect(&ep).await;
    c4.handshake().await;
    let seq = c4
        .send(
            2,
            0,
            format!(r#"{{"username":"alice","password":"{ALICE}"}}"#).as_bytes(),
            true,
        )
        .await;
    let (k, s, p) = c4.recv().await;
    let v: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!((k, s), (5, seq));
    assert!(v["message"].as_str().unwrap().contains("checksum"), "{v}");
    assert!(c4.closed().await);

    // An oversize length: refused on the header, then closed.
    let mut c5 = V1::connect(&ep).await;
    c5.handshake().await;
    let mut h = v1_message(3, 0, 2, b"", false);
    h[8..12].copy_from_slice(&(2u32 << 20).to_le_bytes());
    c5.s.write_all(&h).await.unwrap();
    let (k, _, p) = c5.recv().await;
    assert_eq!(k, 5);
    assert!(String::from_utf8_lossy(&p).contains("over the limit"));
    assert!(c5.closed().await);

    // The native channel still works after all that.
    let reply = channel
        .call(Call::new("sys.ping", Payload::empty()).unwrap())
        .await
        .unwrap();
    assert!(!reply.payload.is_empty());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_every_first_generation_login_is_refused() {
    let dir = TempDir::new("tests");
    let rt = Runtime::start(
        RuntimeConfig::default()
            .endpoint("127.0.0.1:0".parse().unwrap())
            .state_dir(dir.path().to_owned()),
    )
    .await
    .unwrap();
    let ep = rt.local_endpoint().clone();
    let mut c = V1::connect(&ep).await;
    c.handshake().await;
    let (k, v) = c.call(2, 0, br#"{"username":"","password":""}"#).await;
    assert_eq!((k, v["code"].as_str()), (5, Some("auth.denied")));
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("wrong user name or password"),
        "{v}"
    );
    assert!(c.closed().await);
    // Fixtures are off by default.
    let mut s = TcpStream::connect(host_port(&ep).0 + ":" + &host_port(&ep).1)
        .await
        .unwrap();
    let body = br#"{"service":"inventory","operation":"get","input":{"item_id":"widget-a"}}"#;
    let mut m = b"PCR1\x01\x00\x00\x00\x00\x00\x00\x01".to_vec();
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    s.write_all(&m).await.unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.unwrap();
    let mut p = vec![0u8; u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as usize];
    s.read_exact(&mut p).await.unwrap();
    let v: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(v["error"]["code"], "operation.unknown");
    rt.shutdown().await;
}
