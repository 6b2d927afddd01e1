//! What TLS and authentication cost, against plain TCP, in one run on this machine.
//!
//! - Handshake: time from `Channel::connect` to a usable connection (TCP + TLS 1.3 +
//!   polycall handshake + authentication), sequential connects, median and p99, for
//!   plain TCP, TLS, TLS with a client certificate (mTLS identity as principal), TLS
//!   with a bearer token, and TLS with an OPAQUE password login.
//! - Throughput: direct calls, 64 B and 256 KiB, 16 in flight on one connection, for a
//!   few seconds each: plain TCP against TLS.
//!
//! Client and server run in this one process (the figures are ratios measured side by
//! side, not absolute limits). Run with `cargo xtask bench tls`; writes
//! `target/bench/tls.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::auth::{Credentials, OpaqueUsers, ServerAuth};
use polycall_net::tls::Tls;
use polycall_net::{Channel, ChannelConfig, Server, ServerConfig, Transport};
use polycall_security::opaque::{ServerSetup, UserStore};
use polycall_security::token::Tokens;
use polycall_security::{Ca, ClientAuth, ClientTls, IssueOptions, SecretRef, ServerTls};

const TOKEN: &[u8] = b"bench-token-0123456789abcdef";
const PASSWORD: &[u8] = b"bench password";

struct Setup {
    name: &'static str,
    server: ServerConfig,
    client: ChannelConfig,
}

fn pki(dir: &std::path::Path) -> (ServerTls, ClientTls, ClientTls) {
    let ca = Ca::init_named(dir.join("ca"), "bench CA").unwrap();
    let write = |name: &str, spiffe: Option<&str>| {
        let i = ca
            .issue(name, spiffe, IssueOptions::default().with_loopback())
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, i.cert_pem).unwrap();
        polycall_security::write_private(&k, i.key_pem.as_bytes()).unwrap();
        (SecretRef::File(c), SecretRef::File(k))
    };
    let ca_ref = SecretRef::File(dir.join("ca/ca.pem"));
    let (sc, sk) = write("node", None);
    let (cc, ck) = write("client", Some("spiffe://bench.local/client"));
    let server = ServerTls::default()
        .cert_chain(sc)
        .key(sk)
        .ca(ca_ref.clone())
        .client_auth(ClientAuth::Optional);
    let client = ClientTls::default().ca(ca_ref.clone());
    let mtls = ClientTls::default().ca(ca_ref).cert_chain(cc).key(ck);
    (server, client, mtls)
}

fn setups(dir: &std::path::Path) -> Vec<Setup> {
    let (server_tls, client_tls, mtls) = pki(dir);
    let server_cfg = server_tls.build().unwrap();
    let tls_server = || -> Arc<dyn Transport> { Arc::new(Tls::server(server_cfg.clone())) };
    let tls_client =
        |t: &ClientTls| -> Arc<dyn Transport> { Arc::new(Tls::client(t.build().unwrap())) };
    let mut tokens = Tokens::default();
    tokens.insert("bench", TOKEN).unwrap();
    let setup = ServerSetup::generate();
    let mut users = UserStore::open(&dir.join("users.json")).unwrap();
    users.add(&setup, "bench", PASSWORD).unwrap();
    let auth = ServerAuth::default()
        .tokens(tokens)
        .opaque(Arc::new(OpaqueUsers { setup, users }))
        .certificate(true)
        .anonymous(true);
    let server = |transport: Option<Arc<dyn Transport>>| {
        let mut s = ServerConfig::default();
        if let Some(t) = transport {
            s.transport = t;
        }
        s.connection.authenticator = Some(Arc::new(auth.clone()));
        s
    };
    let client = |transport: Option<Arc<dyn Transport>>, creds: Option<Credentials>| {
        let mut c = ChannelConfig::default();
        if let Some(t) = transport {
            c.transport = t;
        }
        c.connection.credentials = creds;
        c
    };
    vec![
        Setup {
            name: "plain TCP",
            server: server(None),
            client: client(None, None),
        },
        Setup {
            name: "TLS 1.3",
            server: server(Some(tls_server())),
            client: client(Some(tls_client(&client_tls)), None),
        },
        Setup {
            name: "TLS 1.3 + client certificate",
            server: server(Some(tls_server())),
            client: client(Some(tls_client(&mtls)), Some(Credentials::Certificate)),
        },
        Setup {
            name: "TLS 1.3 + bearer token",
            server: server(Some(tls_server())),
            client: client(
                Some(tls_client(&client_tls)),
                Some(Credentials::token(TOKEN.to_vec())),
            ),
        },
        Setup {
            name: "TLS 1.3 + OPAQUE password",
            server: server(Some(tls_server())),
            client: client(
                Some(tls_client(&client_tls)),
                Some(Credentials::password("bench", PASSWORD.to_vec())),
            ),
        },
    ]
}

fn router() -> Router {
    Router::new()
        .route(
            "bench.echo",
            MethodInfo::new("echo"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn handshakes(s: &Setup, n: usize) -> (Duration, Duration) {
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), s.server.clone(), router())
        .await
        .unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let ch = Channel::with_config(server.local_endpoint().clone(), s.client.clone())
            .await
            .unwrap();
        times.push(t.elapsed());
        drop(ch);
    }
    server.shutdown().await;
    (percentile(&mut times, 0.5), percentile(&mut times, 0.99))
}

async fn throughput(s: &Setup, size: usize, seconds: f64) -> f64 {
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), s.server.clone(), router())
        .await
        .unwrap();
    let ch = Channel::with_config(server.local_endpoint().clone(), s.client.clone())
        .await
        .unwrap();
    let payload = Payload::raw(vec![7u8; size]);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (ch, payload, stop, done, counting) = (
            ch.clone(),
            payload.clone(),
            stop.clone(),
            done.clone(),
            counting.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = ch
                    .call(Call::new("bench.echo", payload.clone()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(r.payload.bytes.len(), payload.bytes.len());
                if counting.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // warm-up
    counting.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let n = done.load(Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    server.shutdown().await;
    n as f64 / elapsed
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("polycall-bench-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let setups = setups(&dir);
    let (n, secs) = if quick { (50, 1.0) } else { (300, 3.0) };
    let mut md = String::from(
        "## TLS and authentication cost (`cargo xtask bench tls`)\n\n\
         Client and server in one process on loopback; sequential connects, then 16 calls in flight on one connection.\n\n\
         | setup | handshake p50 | handshake p99 |\n|---|---|---|\n",
    );
    let mut rows = String::new();
    rt.block_on(async {
        for s in &setups {
            let (p50, p99) = handshakes(s, n).await;
            md.push_str(&format!("| {} | {} | {} |\n", s.name, ms(p50), ms(p99)));
            eprintln!("{}: handshake p50 {} p99 {}", s.name, ms(p50), ms(p99));
        }
        for s in &setups[..2] {
            for size in [64usize, 256 * 1024] {
                let cps = throughput(s, size, secs).await;
                let mbps = cps * size as f64 / 1e6;
                rows.push_str(&format!(
                    "| {} | {} | {:.0} | {:.1} MB/s |\n",
                    s.name,
                    if size == 64 { "64 B" } else { "256 KiB" },
                    cps,
                    mbps
                ));
                eprintln!("{} {size} B: {cps:.0} calls/s", s.name);
            }
        }
    });
    md.push_str(
        "\n| transport | payload | calls/s (16 in flight) | payload throughput |\n|---|---|---|---|\n",
    );
    md.push_str(&rows);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("tls.md"), &md).unwrap();
    println!("{md}");
    let _ = std::fs::remove_dir_all(&dir);
}
