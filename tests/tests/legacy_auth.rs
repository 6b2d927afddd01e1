//! libpolycall's dialects obey the runtime's authentication policy: with
//! `[auth] anonymous = false`, a PCR1 request or a first-generation command without
//! valid credentials is answered with the dialect's `auth.denied` and never reaches a
//! handler — over plaintext loopback and inside TLS alike. A secured runtime serves the
//! dialects only when `compat.when_secured` says so.

use polycall_test_support::TempDir;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::auth::{Credentials, OpaqueUsers, ServerAuth};
use polycall_net::tls::Tls;
use polycall_net::{BoxIo, ConnectionConfig, Endpoint, Plain, Transport};
use polycall_runtime::{CompatConfig, Provider, ProviderConfig, Runtime, RuntimeConfig};
use polycall_security::opaque::{ServerSetup, UserStore};
use polycall_security::token::Tokens;
use polycall_security::{Ca, ClientAuth, ClientTls, IssueOptions, SecretRef, ServerTls};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "legacy-ci-token-0123456789abcdef";
const PASSWORD: &str = "correct horse battery staple";

/// TLS for the runtime (server certificate for the loopback names) and for clients.
struct Pki {
    server: ServerTls,
    client: ClientTls,
}

fn pki(dir: &std::path::Path) -> Pki {
    let ca = Ca::init(dir.join("ca")).unwrap();
    let issued = ca
        .issue("node", None, IssueOptions::default().with_loopback())
        .unwrap();
    let (cert, key) = (dir.join("node.pem"), dir.join("node.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    polycall_security::write_private(&key, issued.key_pem.as_bytes()).unwrap();
    let ca_file = SecretRef::File(dir.join("ca").join("ca.pem"));
    Pki {
        server: ServerTls::default()
            .cert_chain(SecretRef::File(cert))
            .key(SecretRef::File(key))
            .client_auth(ClientAuth::Off),
        client: ClientTls::default().ca(ca_file),
    }
}

/// A runtime that requires authentication (a token, an OPAQUE user), with a provider
/// of `probe.hit` that counts the calls reaching it.
struct Setup {
    runtime: Runtime,
    endpoint: Endpoint,
    client: Arc<dyn Transport>,
    hits: Arc<AtomicUsize>,
    _provider: Provider,
    _dir: TempDir,
}

async fn setup(tls: bool, when_secured: bool) -> Setup {
    let dir = TempDir::new(if tls { "tls" } else { "plain" });
    let mut tokens = Tokens::default();
    tokens.insert("ci", TOKEN.as_bytes()).unwrap();
    let setup = ServerSetup::load_or_create(&dir.join("opaque-setup")).unwrap();
    let mut users = UserStore::open(&dir.join("users.json")).unwrap();
    users.add(&setup, "alice", PASSWORD.as_bytes()).unwrap();
    let auth = ServerAuth::default()
        .tokens(tokens)
        .opaque(Arc::new(OpaqueUsers { setup, users }))
        .anonymous(false);
    let mut config = RuntimeConfig::default()
        .endpoint("127.0.0.1:0".parse().unwrap())
        .state_dir(dir.join("state"))
        .compat(
            CompatConfig::default()
                .when_secured(when_secured)
                .read_timeout(Duration::from_secs(5)),
        )
        .debug_methods(true);
    config.server.connection.authenticator = Some(Arc::new(auth));
    let client: Arc<dyn Transport> = if tls {
        let p = pki(&dir);
        config.tls = Some(p.server);
        Arc::new(Tls::client(p.client.build().unwrap()))
    } else {
        Arc::new(Plain)
    };
    let runtime = Runtime::start(config).await.unwrap();
    let endpoint = runtime.local_endpoint().clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let router = Router::new()
        .route(
            "probe.hit",
            MethodInfo::new("counts the calls that reach it"),
            handler_fn(move |_c: Call| {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok(Reply::new(Payload::json(&json!({"hits": n})).unwrap())) }
            }),
        )
        .unwrap();
    let mut connection = ConnectionConfig::default();
    connection.credentials = Some(Credentials::token(TOKEN.as_bytes().to_vec()));
    let provider = Provider::start_with(
        endpoint.clone(),
        router,
        ProviderConfig::default()
            .transport(client.clone())
            .connection(connection),
    )
    .await
    .unwrap();
    Setup {
        runtime,
        endpoint,
        client,
        hits,
        _provider: provider,
        _dir: dir,
    }
}

async fn open(s: &Setup) -> BoxIo {
    s.client.connect(&s.endpoint).await.unwrap()
}

// ------------------------------------------------------------------ PCR1

async fn pcr1(io: &mut BoxIo, kind: u8, body: &Value) -> Value {
    let body = body.to_string();
    let mut m = b"PCR1".to_vec();
    m.extend_from_slice(&[kind, 0, 0, 0]);
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body.as_bytes());
    io.write_all(&m).await.unwrap();
    io.flush().await.unwrap();
    let mut h = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut h))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert_eq!(&h[..4], b"PCR1");
    let mut p = vec![0u8; u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as usize];
    io.read_exact(&mut p).await.unwrap();
    serde_json::from_slice(&p).unwrap()
}

fn request(token: Option<&str>) -> Value {
    let mut r = json!({"service": "probe", "operation": "hit", "deadline_ms": 5000, "input": {}});
    if let Some(t) = token {
        r["auth_token"] = t.into();
    }
    r
}

async fn pcr1_obeys_the_policy(tls: bool) {
    let s = setup(tls, true).await;
    // No token, a wrong token: auth.denied, and the handler is never reached.
    for token in [None, Some("not-the-token-at-all-0123456789")] {
        let mut io = open(&s).await;
        let v = pcr1(&mut io, 1, &request(token)).await;
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["error"]["code"], "auth.denied", "{v}");
    }
    // Control messages too (describe would list the methods).
    let mut io = open(&s).await;
    let v = pcr1(&mut io, 3, &json!({"action": "describe"})).await;
    assert_eq!(v["error"]["code"], "auth.denied", "{v}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 0, "a refused request ran");
    // The right token: served, as `token:ci`.
    let mut io = open(&s).await;
    let v = pcr1(&mut io, 1, &request(Some(TOKEN))).await;
    assert_eq!(v, json!({"ok": true, "output": {"hits": 1}}));
    let v = pcr1(&mut io, 3, &json!({"action": "ping", "auth_token": TOKEN})).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
    s.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcr1_without_credentials_is_denied_over_plaintext() {
    pcr1_obeys_the_policy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcr1_without_credentials_is_denied_inside_tls() {
    pcr1_obeys_the_policy(true).await;
}

// ------------------------------------------------------- first generation

fn checksum(p: &[u8]) -> u32 {
    p.iter()
        .fold(0u32, |c, &b| c.rotate_left(5).wrapping_add(u32::from(b)))
}

struct V1 {
    io: BoxIo,
    seq: u32,
}

impl V1 {
    async fn send(&mut self, kind: u8, payload: &[u8]) {
        let mut m = vec![1, kind, 0, 0];
        m.extend_from_slice(&self.seq.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(&checksum(payload).to_le_bytes());
        m.extend_from_slice(payload);
        self.seq += 1;
        self.io.write_all(&m).await.unwrap();
        self.io.flush().await.unwrap();
    }

    async fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(10), self.io.read_exact(&mut h))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let mut p = vec![0u8; len];
        self.io.read_exact(&mut p).await.unwrap();
        (h[1], p)
    }

    async fn call(&mut self, kind: u8, payload: &[u8]) -> (u8, Value) {
        self.send(kind, payload).await;
        let (k, p) = self.recv().await;
        (k, serde_json::from_slice(&p).unwrap_or(Value::Null))
    }

    async fn start(s: &Setup) -> V1 {
        let mut c = V1 {
            io: open(s).await,
            seq: 1,
        };
        let mut hs = 0x0050_4C43u32.to_le_bytes().to_vec();
        hs.push(1);
        hs.extend_from_slice(&[0, 0]);
        c.send(1, &hs).await;
        assert_eq!(c.recv().await.0, 4, "handshake answered");
        c
    }
}

const COMMAND: &[u8] = br#"{"command":"probe.hit","data":{}}"#;

async fn first_generation_obeys_the_policy(tls: bool) {
    let s = setup(tls, true).await;
    // A command before logging in: auth.denied.
    let mut c = V1::start(&s).await;
    let (k, v) = c.call(3, COMMAND).await;
    assert_eq!((k, v["code"].as_str()), (5, Some("auth.denied")), "{v}");
    // Wrong credentials (a token under the wrong name, a wrong password): auth.denied.
    for creds in [
        json!({"username": "other", "password": TOKEN}),
        json!({"username": "alice", "password": "guess"}),
    ] {
        let mut c = V1::start(&s).await;
        let (k, v) = c.call(2, creds.to_string().as_bytes()).await;
        assert_eq!((k, v["code"].as_str()), (5, Some("auth.denied")), "{v}");
    }
    assert_eq!(s.hits.load(Ordering::SeqCst), 0, "a refused command ran");
    // A bearer token (user = its name) and an OPAQUE user's password both log in.
    for creds in [
        json!({"username": "ci", "password": TOKEN}),
        json!({"username": "alice", "password": PASSWORD}),
    ] {
        let mut c = V1::start(&s).await;
        let (k, v) = c.call(2, creds.to_string().as_bytes()).await;
        assert_eq!((k, &v["authenticated"]), (4, &json!(true)), "{v}");
        let (k, v) = c.call(3, COMMAND).await;
        assert_eq!(k, 4, "{v}");
    }
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
    s.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_generation_without_credentials_is_denied_over_plaintext() {
    first_generation_obeys_the_policy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_generation_without_credentials_is_denied_inside_tls() {
    first_generation_obeys_the_policy(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_runtime_serves_no_legacy_dialect_unless_told_to() {
    let s = setup(false, false).await;
    let mut io = open(&s).await;
    let v = pcr1(&mut io, 1, &request(Some(TOKEN))).await;
    assert_eq!(v["error"]["code"], "operation.unsupported", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("compat.when_secured"),
        "{v}"
    );
    let mut c = V1 {
        io: open(&s).await,
        seq: 1,
    };
    let mut hs = 0x0050_4C43u32.to_le_bytes().to_vec();
    hs.extend_from_slice(&[1, 0, 0]);
    let (k, v) = c.call(1, &hs).await;
    assert_eq!(
        (k, v["code"].as_str()),
        (5, Some("operation.unsupported")),
        "{v}"
    );
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);
    s.runtime.shutdown().await;
}
