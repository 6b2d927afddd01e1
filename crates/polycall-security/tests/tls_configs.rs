//! The CA, references and TLS configurations, with in-memory rustls handshakes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use polycall_security::rustls::{self, ClientConnection, ServerConnection};
use polycall_security::rustls_pki_types::pem::PemObject;
use polycall_security::rustls_pki_types::{CertificateDer, ServerName};
use polycall_security::{
    ALPN, Ca, ClientAuth, ClientTls, IssueOptions, SecretRef, ServerTls, peer_identity, spiffe_id,
    write_private,
};

fn tmp(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "polycall-security-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes an issued certificate and key; returns (cert ref, key ref).
fn store(
    dir: &std::path::Path,
    name: &str,
    i: &polycall_security::Issued,
) -> (SecretRef, SecretRef) {
    let c = dir.join(format!("{name}.pem"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, &i.cert_pem).unwrap();
    write_private(&k, i.key_pem.as_bytes()).unwrap();
    (SecretRef::File(c), SecretRef::File(k))
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs a handshake in memory; Ok(server connection) or the first error (side, error).
fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), (&'static str, rustls::Error)> {
    let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().map_err(|e| ("server", e))?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().map_err(|e| ("client", e))?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish")
}

struct Fixture {
    dir: PathBuf,
    ca: Ca,
    server: (SecretRef, SecretRef),
}

fn fixture(tag: &str) -> Fixture {
    let dir = tmp(tag);
    let ca = Ca::init(dir.join("ca")).unwrap();
    let server = ca
        .issue(
            "node-a",
            Some("spiffe://test.local/node-a"),
            IssueOptions::default().with_loopback(),
        )
        .unwrap();
    let server = store(&dir, "server", &server);
    Fixture { dir, ca, server }
}

impl Fixture {
    fn ca_ref(&self) -> SecretRef {
        SecretRef::File(self.dir.join("ca").join("ca.pem"))
    }
    fn server_tls(&self, auth: ClientAuth) -> ServerTls {
        ServerTls::default()
            .cert_chain(self.server.0.clone())
            .key(self.server.1.clone())
            .ca(self.ca_ref())
            .client_auth(auth)
    }
    fn client(&self, name: &str, options: IssueOptions) -> ClientTls {
        let i = self
            .ca
            .issue(name, Some(&format!("spiffe://test.local/{name}")), options)
            .unwrap();
        let (c, k) = store(&self.dir, name, &i);
        ClientTls::default().ca(self.ca_ref()).cert_chain(c).key(k)
    }
}

#[test]
fn ca_files_have_private_modes_and_load_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp("ca").join("ca");
    let ca = Ca::init(&dir).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert!(
        Ca::init(&dir)
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );

    let loaded = Ca::load(&dir).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    // A certificate from the loaded CA verifies against the original bundle.
    let i = loaded.issue("svc", None, IssueOptions::default()).unwrap();
    let f = Fixture {
        server: store(dir.parent().unwrap(), "svc", &i),
        dir: dir.parent().unwrap().to_owned(),
        ca,
    };
    let server = ServerTls::default()
        .cert_chain(f.server.0.clone())
        .key(f.server.1.clone())
        .build()
        .unwrap();
    let client = ClientTls::default().ca(f.ca_ref()).build().unwrap();
    // "svc" is not "localhost": the name check fails, the chain itself is fine.
    let (side, e) = handshake(client, server).unwrap_err();
    assert_eq!(side, "client");
    assert!(e.to_string().contains("not valid for name"), "{e}");

    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Ca::load(&dir).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
}

#[test]
fn identity_is_spiffe_else_dns() {
    let dir = tmp("id");
    let ca = Ca::init(dir.join("ca")).unwrap();
    let a = ca
        .issue(
            "node-a",
            Some("spiffe://test.local/ns/a"),
            IssueOptions::default(),
        )
        .unwrap();
    assert_eq!(
        peer_identity(&certs(&a.cert_pem))
            .map(|p| p.to_string())
            .as_deref(),
        Some("spiffe://test.local/ns/a")
    );
    assert_eq!(
        spiffe_id(&certs(&a.cert_pem)).as_deref(),
        Some("spiffe://test.local/ns/a")
    );
    let b = ca.issue("node-b", None, IssueOptions::default()).unwrap();
    assert_eq!(
        peer_identity(&certs(&b.cert_pem))
            .map(|p| p.to_string())
            .as_deref(),
        Some("dns:node-b")
    );
    assert_eq!(spiffe_id(&certs(&b.cert_pem)), None);
    assert_eq!(peer_identity(&[]), None);
    for bad in [
        "http://x/y",
        "spiffe://",
        "spiffe://UPPER/x",
        "spiffe://d//x",
        "spiffe://d/x?q",
    ] {
        assert!(
            ca.issue("n", Some(bad), IssueOptions::default()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn tls13_handshake_with_alpn_and_mtls_identity() {
    let f = fixture("ok");
    let server = f.server_tls(ClientAuth::Required).build().unwrap();
    let client = f
        .client("client-a", IssueOptions::default())
        .build()
        .unwrap();
    let (c, s) = handshake(client, server).unwrap();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(s.alpn_protocol(), Some(ALPN));
    assert_eq!(
        peer_identity(s.peer_certificates().unwrap())
            .map(|p| p.to_string())
            .as_deref(),
        Some("spiffe://test.local/client-a")
    );
    assert_eq!(
        peer_identity(c.peer_certificates().unwrap())
            .map(|p| p.to_string())
            .as_deref(),
        Some("spiffe://test.local/node-a")
    );
}

#[test]
fn tls12_only_client_is_refused() {
    let f = fixture("tls12");
    let server = f.server_tls(ClientAuth::Off).build().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(f.ca.cert_pem()));
    let client = rustls::ClientConfig::builder_with_provider(polycall_security::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (side, e) = handshake(Arc::new(client), server).unwrap_err();
    assert_eq!(side, "server", "{e}");
    assert!(
        matches!(e, rustls::Error::PeerIncompatible(_)),
        "expected a version mismatch, got {e:?}"
    );
}

#[test]
fn client_auth_modes() {
    let f = fixture("modes");
    let anonymous = ClientTls::default().ca(f.ca_ref()).build().unwrap();
    // Off and Optional let a client without a certificate in; Required does not.
    handshake(
        anonymous.clone(),
        f.server_tls(ClientAuth::Off).build().unwrap(),
    )
    .unwrap();
    let (_, s) = handshake(
        anonymous.clone(),
        f.server_tls(ClientAuth::Optional).build().unwrap(),
    )
    .unwrap();
    assert!(s.peer_certificates().is_none());
    let (side, e) = handshake(
        anonymous,
        f.server_tls(ClientAuth::Required).build().unwrap(),
    )
    .unwrap_err();
    assert_eq!(side, "server");
    assert!(matches!(e, rustls::Error::NoCertificatesPresented), "{e:?}");
    // Optional with a certificate verifies it.
    let client = f
        .client("client-o", IssueOptions::default())
        .build()
        .unwrap();
    let (_, s) = handshake(client, f.server_tls(ClientAuth::Optional).build().unwrap()).unwrap();
    assert!(s.peer_certificates().is_some());
    // Client authentication without a bundle is a configuration error.
    let mut no_ca = f.server_tls(ClientAuth::Required);
    no_ca.ca = None;
    assert!(no_ca.build().unwrap_err().to_string().contains("CA bundle"));
}

#[test]
fn bad_client_certificates_are_refused() {
    let f = fixture("bad");
    // Another CA.
    let other = fixture("other");
    let client = other.client("stranger", IssueOptions::default());
    let client = client.ca(f.ca_ref()).build().unwrap();
    let (side, e) =
        handshake(client, f.server_tls(ClientAuth::Required).build().unwrap()).unwrap_err();
    assert_eq!(side, "server");
    assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");

    // Expired.
    let client = f.client("old", IssueOptions::expired()).build().unwrap();
    let (_, e) =
        handshake(client, f.server_tls(ClientAuth::Required).build().unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                )
        ),
        "{e:?}"
    );

    // Revoked, with a CRL on the server; a sibling not on the CRL still gets in.
    let i =
        f.ca.issue("revoked", None, IssueOptions::default())
            .unwrap();
    let (c, k) = store(&f.dir, "revoked", &i);
    let crl = f.dir.join("ca.crl");
    std::fs::write(
        &crl,
        f.ca.crl(std::slice::from_ref(&i.serial), Duration::from_secs(3600))
            .unwrap(),
    )
    .unwrap();
    let mut server = f.server_tls(ClientAuth::Required);
    server.crls = vec![SecretRef::File(crl)];
    let server = server.build().unwrap();
    let client = ClientTls::default()
        .ca(f.ca_ref())
        .cert_chain(c)
        .key(k)
        .build()
        .unwrap();
    let (_, e) = handshake(client, server.clone()).unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        ),
        "{e:?}"
    );
    let good = f.client("good", IssueOptions::default()).build().unwrap();
    handshake(good, server).unwrap();
}

#[test]
fn server_from_another_ca_is_refused_by_the_client() {
    let f = fixture("srv");
    let other = fixture("srv-other");
    let client = ClientTls::default().ca(other.ca_ref()).build().unwrap();
    let (side, e) = handshake(client, f.server_tls(ClientAuth::Off).build().unwrap()).unwrap_err();
    assert_eq!(side, "client");
    assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
}

#[test]
fn errors_name_references_not_contents() {
    let dir = tmp("err");
    let key = dir.join("not-a-key.pem");
    std::fs::write(&key, "top-secret-words\n").unwrap();
    let e = polycall_security::load_key(&SecretRef::File(key.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&key.display().to_string()), "{e}");
    assert!(!e.contains("top-secret-words"), "{e}");
}

/// A key from `env:NAME`. `std::env::set_var` is unsafe in edition 2024 and the
/// workspace forbids unsafe code, so the test re-runs itself in a child process with
/// the variable set.
#[test]
fn key_from_environment() {
    const VAR: &str = "POLYCALL_TEST_TLS_KEY";
    let f = fixture("env");
    let Ok(key_pem) = std::env::var(VAR) else {
        let i = f.ca.issue("envy", None, IssueOptions::default()).unwrap();
        let (c, _) = store(&f.dir, "envy", &i);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["key_from_environment", "--exact", "--nocapture"])
            .env(VAR, &i.key_pem)
            .env("POLYCALL_TEST_TLS_CERT", c.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        return;
    };
    assert!(key_pem.contains("PRIVATE KEY"));
    let cert: SecretRef = std::env::var("POLYCALL_TEST_TLS_CERT")
        .unwrap()
        .parse()
        .unwrap();
    ServerTls::default()
        .cert_chain(cert)
        .key(format!("env:{VAR}").parse().unwrap())
        .build()
        .unwrap();
}
