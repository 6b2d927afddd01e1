//! The TLS transport on loopback: real rustls on both sides, a real polycall server,
//! and Debian's `openssl s_client` as an independent TLS 1.2 / 1.3 client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::tls::Tls;
use polycall_net::{Channel, ChannelConfig, Endpoint, Server, ServerConfig, Transport};
use polycall_security::{ClientAuth, ClientTls, IssueOptions, SecretRef, ServerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::Pki;

fn router() -> Router {
    Router::new()
        .route(
            "debug.echo",
            MethodInfo::new("echo"),
            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }),
        )
        .unwrap()
}

async fn tls_server(tls: &ServerTls) -> Server {
    let config = ServerConfig::default().transport(Arc::new(Tls::server(tls.build().unwrap())));
    Server::serve_router("127.0.0.1:0".parse().unwrap(), config, router())
        .await
        .unwrap()
}

async fn channel(server: &Server, tls: &ClientTls) -> Result<Channel, polycall_core::Status> {
    let config = ChannelConfig::default()
        .transport(Arc::new(Tls::client(tls.build().unwrap())))
        .connect_timeout(Duration::from_secs(5));
    Channel::with_config(server.local_endpoint().clone(), config).await
}

async fn echo(ch: &Channel, text: &str) -> Result<String, polycall_core::Status> {
    let r = ch
        .call(Call::new("debug.echo", Payload::raw(text.to_owned())).unwrap())
        .await?;
    Ok(String::from_utf8(r.payload.bytes.to_vec()).unwrap())
}

/// A call fails — at connect or at the first call — and says why.
async fn refused(server: &Server, tls: &ClientTls) -> String {
    match channel(server, tls).await {
        Err(e) => e.to_string(),
        Ok(ch) => match echo(&ch, "x").await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the call should have been refused"),
        },
    }
}

#[tokio::test]
async fn call_over_tls_and_over_mutual_tls() {
    let pki = Pki::new("ok");
    let server = tls_server(&pki.server_tls(ClientAuth::Off)).await;
    let (client, _) = pki.client_tls(&pki, None);
    let ch = channel(&server, &client).await.unwrap();
    assert_eq!(echo(&ch, "over tls").await.unwrap(), "over tls");
    server.shutdown().await;

    let server = tls_server(&pki.server_tls(ClientAuth::Required)).await;
    let (client, _) = pki.client_tls(&pki, Some(("client-a", IssueOptions::default())));
    let ch = channel(&server, &client).await.unwrap();
    assert_eq!(echo(&ch, "over mtls").await.unwrap(), "over mtls");
    // Without a client certificate the same server refuses.
    let (anonymous, _) = pki.client_tls(&pki, None);
    let e = refused(&server, &anonymous).await;
    eprintln!("no client certificate: {e}");
    assert!(e.contains("CertificateRequired"), "{e}");
    server.shutdown().await;
}

#[tokio::test]
async fn accept_reports_the_peer_identity_and_survives_stalled_handshakes() {
    let pki = Pki::new("peer");
    let server = Tls::server(pki.server_tls(ClientAuth::Required).build().unwrap())
        .with_handshake_timeout(Duration::from_millis(300));
    let mut listener = server
        .bind(&Endpoint::Tcp("127.0.0.1:0".into()))
        .await
        .unwrap();
    let Endpoint::Tcp(addr) = listener.local_endpoint() else {
        unreachable!()
    };
    // A peer that connects and never says anything does not hold up the next one.
    let _stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, _) = pki.client_tls(&pki, Some(("client-a", IssueOptions::default())));
    let client = Tls::client(client.build().unwrap());
    let endpoint = Endpoint::Tcp(addr.clone());
    let connecting = tokio::spawn(async move {
        let mut io = client.connect(&endpoint).await.unwrap();
        io.write_all(b"ping").await.unwrap();
        io.flush().await.unwrap();
        let mut b = [0u8; 4];
        io.read_exact(&mut b).await.unwrap();
        b
    });
    let (mut io, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("accept was blocked")
        .unwrap();
    assert_eq!(
        peer.identity,
        Some(polycall_core::Principal::Spiffe(
            "spiffe://test.local/client-a".into()
        )),
        "{peer}"
    );
    assert!(
        matches!(peer.addr, polycall_core::PeerAddr::Ip(a) if a.ip().is_loopback()),
        "{peer}"
    );
    let mut b = [0u8; 4];
    io.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    io.write_all(b"pong").await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(&connecting.await.unwrap(), b"pong");
    assert!(server.authenticates_bytes());
}

/// Runs `openssl s_client` against `port`; (success, stdout + stderr).
async fn s_client(port: u16, version_flag: &str, ca: &Path) -> (bool, String) {
    let (flag, ca) = (version_flag.to_owned(), ca.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args([flag.as_str(), "-CAfile"])
            .arg(&ca)
            .args(["-verify_return_error", "-alpn", "polycall/1"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is needed: apt-get install -y openssl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn openssl_tls12_is_refused_and_tls13_is_served() {
    let pki = Pki::new("openssl");
    let server = tls_server(&pki.server_tls(ClientAuth::Off)).await;
    let Endpoint::Tcp(addr) = server.local_endpoint().clone() else {
        unreachable!()
    };
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();

    let (ok, out) = s_client(port, "-tls1_2", &pki.ca_file()).await;
    assert!(!ok, "a TLS 1.2 client must be refused:\n{out}");
    assert!(
        out.contains("alert protocol version") || out.contains("handshake failure"),
        "{out}"
    );

    let (ok, out) = s_client(port, "-tls1_3", &pki.ca_file()).await;
    assert!(ok, "a TLS 1.3 client must be served:\n{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("ALPN protocol: polycall/1"), "{out}");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_certificates_are_refused() {
    let pki = Pki::new("bad");
    let other = Pki::new("other");

    // Client certificate from another CA.
    let server = tls_server(&pki.server_tls(ClientAuth::Required)).await;
    let (stranger, _) = other.client_tls(&pki, Some(("stranger", IssueOptions::default())));
    let e = refused(&server, &stranger).await;
    eprintln!("client certificate from another CA: {e}");
    assert!(e.contains("UnknownCA"), "{e}");

    // Expired client certificate.
    let (old, _) = pki.client_tls(&pki, Some(("old", IssueOptions::expired())));
    let e = refused(&server, &old).await;
    eprintln!("expired client certificate: {e}");
    assert!(e.contains("CertificateExpired"), "{e}");
    server.shutdown().await;

    // Revoked client certificate, with the CA's revocation list on the server.
    let (revoked, issued) = pki.client_tls(&pki, Some(("revoked", IssueOptions::default())));
    let crl = pki.dir.join("ca.crl");
    let crl_pem = pki
        .ca
        .crl(&[issued.unwrap().serial], Duration::from_secs(3600))
        .unwrap();
    std::fs::write(&crl, crl_pem).unwrap();
    let mut tls = pki.server_tls(ClientAuth::Required);
    tls.crls = vec![SecretRef::File(crl)];
    let server = tls_server(&tls).await;
    let e = refused(&server, &revoked).await;
    eprintln!("revoked client certificate: {e}");
    assert!(e.contains("CertificateRevoked"), "{e}");
    // Another certificate from the same CA, not on the list, is served.
    let (good, _) = pki.client_tls(&pki, Some(("good", IssueOptions::default())));
    let ch = channel(&server, &good).await.unwrap();
    assert_eq!(echo(&ch, "still fine").await.unwrap(), "still fine");
    server.shutdown().await;

    // A server certificate the client's bundle does not vouch for.
    let server = tls_server(&pki.server_tls(ClientAuth::Off)).await;
    let (wrong_trust, _) = pki.client_tls(&other, None);
    let e = channel(&server, &wrong_trust)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );
    server.shutdown().await;
}
