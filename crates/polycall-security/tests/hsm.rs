//! TLS keys held in a real SoftHSM2 token.
//!
//! PKCS#11 modules read their configuration once per process (`C_Initialize`), and
//! SoftHSM2 finds its token directory through `SOFTHSM2_CONF`. Setting an environment
//! variable inside a test needs `unsafe` (edition 2024), which this project forbids,
//! and would race with other tests anyway. So each test here prepares its own token
//! directory, then runs one `#[ignore]`d `child_*` test of this same binary in a child
//! process whose environment names that directory (and the PIN variable). The child
//! tests refuse to run without that environment; the parent fails unless the child
//! reports exactly one passed test.
//!
//! Without SoftHSM2 installed these tests fail (they never skip): `apt-get install -y
//! softhsm2`, which `cargo xtask ci` does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use polycall_security::hsm::{HsmAlgorithm, HsmError, HsmKey};
use polycall_security::rustls::{self, HandshakeKind, ProtocolVersion};
use polycall_security::rustls_pki_types::pem::PemObject;
use polycall_security::rustls_pki_types::{CertificateDer, ServerName};
use polycall_security::{
    ALPN, Ca, ClientAuth, ClientTls, Error, IssueOptions, SecretRef, ServerTls, peer_identity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "polycall";
const OTHER_TOKEN: &str = "spare";
const PIN: &str = "271828";
const SO_PIN: &str = "31415926";
const PIN_VAR: &str = "POLYCALL_TEST_HSM_PIN";
/// Where the child finds the directory its parent prepared.
const DIR_VAR: &str = "POLYCALL_TEST_HSM_DIR";

// ---------------------------------------------------------------------------------
// Parent side: a token directory per test, and the child process.

fn tmp(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "polycall-hsm-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A SoftHSM2 configuration of its own with two initialized tokens.
struct SoftHsm {
    dir: PathBuf,
    conf: PathBuf,
}

impl SoftHsm {
    fn new(tag: &str) -> Self {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2 is not installed ({MODULE} is missing): run `apt-get install -y softhsm2` \
             (`cargo xtask ci` installs it)"
        );
        let dir = tmp(tag);
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        for label in [TOKEN, OTHER_TOKEN] {
            let out = Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", SO_PIN, "--pin", PIN])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .expect("softhsm2-util runs (apt-get install -y softhsm2)");
            assert!(
                out.status.success(),
                "softhsm2-util --init-token {label}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self { dir, conf }
    }

    /// Runs `child` in a child process with `SOFTHSM2_CONF` naming this configuration
    /// and the PIN variable set to `pin` (or unset).
    fn run_child(&self, child: &str, pin: Option<&str>) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", &self.conf)
        .env(DIR_VAR, &self.dir)
        .env_remove(PIN_VAR)
        .stdin(Stdio::null());
        if let Some(pin) = pin {
            cmd.env(PIN_VAR, pin);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Shown by the test runner on failure, or with --no-capture.
        println!("--- child {child} stdout\n{stdout}\n--- child stderr\n{stderr}");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child test {child} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        );
    }
}

impl Drop for SoftHsm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn server_handshake_signs_inside_the_token() {
    SoftHsm::new("server").run_child("child_server_handshake_signs_inside_the_token", Some(PIN));
}

#[test]
fn mutual_tls_with_both_keys_in_the_token() {
    SoftHsm::new("mutual").run_child("child_mutual_tls_with_both_keys_in_the_token", Some(PIN));
}

#[test]
fn rsa_pss_key_in_the_token() {
    SoftHsm::new("rsa").run_child("child_rsa_pss_key_in_the_token", Some(PIN));
}

#[test]
fn openssl_s_client_sees_the_hsm_backed_server() {
    SoftHsm::new("openssl").run_child(
        "child_openssl_s_client_sees_the_hsm_backed_server",
        Some(PIN),
    );
}

#[test]
fn wrong_pin_is_a_typed_error() {
    SoftHsm::new("wrong-pin").run_child("child_wrong_pin_is_a_typed_error", Some("000000"));
}

#[test]
fn unset_pin_variable_is_a_typed_error() {
    SoftHsm::new("no-pin").run_child("child_unset_pin_variable_is_a_typed_error", None);
}

#[test]
fn unknown_labels_and_mismatches_are_typed_errors() {
    SoftHsm::new("labels").run_child(
        "child_unknown_labels_and_mismatches_are_typed_errors",
        Some(PIN),
    );
}

#[test]
fn missing_module_is_a_typed_error() {
    let key = HsmKey::new(
        PathBuf::from("/nonexistent/libpkcs11-polycall.so"),
        TOKEN,
        "node",
        PIN_VAR,
    );
    let e = key.load().unwrap_err();
    assert!(matches!(e, HsmError::ModuleMissing { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/libpkcs11-polycall.so") && msg.contains("softhsm2"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------
// Child side.

/// The directory the parent prepared; panics when run on its own.
fn child_dir() -> PathBuf {
    assert!(
        std::env::var_os("SOFTHSM2_CONF").is_some(),
        "this test is run by its parent test (without the `child_` prefix) in a child process"
    );
    PathBuf::from(std::env::var_os(DIR_VAR).expect("the parent sets POLYCALL_TEST_HSM_DIR"))
}

fn hsm_key(token: &str, key: &str) -> HsmKey {
    HsmKey::new(PathBuf::from(MODULE), token, key, PIN_VAR)
}

/// A CA in `dir/ca` and a certificate from it for a key generated in the token.
fn token_cert(ca: &Ca, dir: &Path, key: &HsmKey, algorithm: HsmAlgorithm, name: &str) -> SecretRef {
    let spki = key.generate(algorithm).unwrap();
    let issued = ca
        .issue_for_public_key(
            name,
            Some(&format!("spiffe://test.local/{name}")),
            &spki,
            IssueOptions::default().with_loopback(),
        )
        .unwrap();
    let path = dir.join(format!("{}.pem", key.key_label));
    std::fs::write(&path, &issued.cert_pem).unwrap();
    SecretRef::File(path)
}

fn ca_ref(ca: &Ca) -> SecretRef {
    SecretRef::File(ca.dir().join("ca.pem"))
}

/// No private key in PEM anywhere but the CA's own.
fn assert_no_pem_keys_but_the_cas(dir: &Path, ca: &Ca) {
    for entry in walk(dir) {
        if entry.starts_with(ca.dir()) || entry.starts_with(dir.join("tokens")) {
            continue;
        }
        let text = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains("PRIVATE KEY"),
            "{} holds a private key",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// One TLS connection over loopback: the client sends `ping`, the server answers
/// `pong`. Returns what each side saw of the other.
async fn exchange(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (ServerSaw, ClientSaw) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.expect("server handshake");
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await.unwrap();
        tls.shutdown().await.unwrap();
        let (_, conn) = tls.get_ref();
        ServerSaw {
            client_identity: conn
                .peer_certificates()
                .and_then(peer_identity)
                .map(|p| p.to_string()),
        }
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("client handshake");
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    let (_, conn) = tls.get_ref();
    let client_saw = ClientSaw {
        version: conn.protocol_version(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        kind: conn.handshake_kind(),
        server_cert: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .unwrap()
            .clone()
            .into_owned(),
    };
    (server_task.await.unwrap(), client_saw)
}

struct ServerSaw {
    client_identity: Option<String>,
}

struct ClientSaw {
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    kind: Option<HandshakeKind>,
    server_cert: CertificateDer<'static>,
}

fn cert_der(r: &SecretRef) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(&r.read().unwrap()).unwrap()
}

/// A session of our own on the token, opened directly through cryptoki (not through
/// polycall) and logged in.
fn direct_session() -> cryptoki::session::Session {
    let ctx = Pkcs11::new(MODULE).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(PIN.to_string()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    session
}

/// Checks, on a session of our own, that the private key's secret value cannot be
/// read.
fn assert_token_withholds_value(key_label: &str) {
    let session = direct_session();
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1);
    let info = session
        .get_attribute_info(keys[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "CKA_VALUE must be withheld: {info:?}"
    );
    let got = session
        .get_attributes(keys[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        !got.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the token handed out the private value"
    );
    let flags = session
        .get_attributes(
            keys[0],
            &[AttributeType::Extractable, AttributeType::Sensitive],
        )
        .unwrap();
    assert!(flags.contains(&Attribute::Extractable(false)), "{flags:?}");
    assert!(flags.contains(&Attribute::Sensitive(true)), "{flags:?}");
}

#[tokio::test]
#[ignore = "run by server_handshake_signs_inside_the_token in a child process"]
async fn child_server_handshake_signs_inside_the_token() {
    let dir = child_dir();
    let ca = Ca::init(dir.join("ca")).unwrap();
    let key = hsm_key(TOKEN, "node");
    let cert = token_cert(&ca, &dir, &key, HsmAlgorithm::EcdsaP256, "localhost");
    assert_no_pem_keys_but_the_cas(&dir, &ca);

    let server = ServerTls::default()
        .cert_chain(cert.clone())
        .hsm_key(key.clone())
        .build()
        .unwrap();
    let client = || ClientTls::default().ca(ca_ref(&ca)).build().unwrap();
    // The configuration holds the loaded key; loading again gives that same key.
    let loaded = key.load().unwrap();
    assert_eq!(loaded.sign_count(), 0);

    let (_, saw) = exchange(server.clone(), client()).await;
    assert_eq!(saw.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(saw.alpn.as_deref(), Some(ALPN));
    assert_eq!(saw.kind, Some(HandshakeKind::Full));
    assert_eq!(saw.server_cert, cert_der(&cert));
    assert_eq!(
        loaded.sign_count(),
        1,
        "the token signed the CertificateVerify"
    );

    // Every full handshake signs again, in the token; a resumed one signs nothing.
    let second = client();
    let (_, saw) = exchange(server.clone(), second.clone()).await;
    assert_eq!(saw.kind, Some(HandshakeKind::Full));
    assert_eq!(loaded.sign_count(), 2);
    let (_, saw) = exchange(server.clone(), second).await;
    assert_eq!(saw.kind, Some(HandshakeKind::Resumed));
    assert_eq!(loaded.sign_count(), 2);

    // Logging out (from any session of the process) logs the key's session out too:
    // the next signature logs in again with the kept PIN.
    direct_session().logout().unwrap();
    let (_, saw) = exchange(server, client()).await;
    assert_eq!(saw.kind, Some(HandshakeKind::Full));
    assert_eq!(loaded.sign_count(), 3);

    let p = loaded.protection().unwrap();
    assert!(!p.extractable, "{p:?}");
    assert!(p.sensitive, "{p:?}");
    assert!(p.never_extractable && p.always_sensitive, "{p:?}");
    assert!(!p.value_readable, "{p:?}");
    assert!(p.is_non_extractable());
    assert_token_withholds_value("node");
    assert!(!format!("{loaded:?}").contains(PIN));
}

#[tokio::test]
#[ignore = "run by mutual_tls_with_both_keys_in_the_token in a child process"]
async fn child_mutual_tls_with_both_keys_in_the_token() {
    let dir = child_dir();
    let ca = Ca::init(dir.join("ca")).unwrap();
    let server_key = hsm_key(TOKEN, "server");
    let client_key = hsm_key(TOKEN, "client");
    let server_cert = token_cert(&ca, &dir, &server_key, HsmAlgorithm::EcdsaP256, "localhost");
    let client_cert = token_cert(&ca, &dir, &client_key, HsmAlgorithm::EcdsaP384, "worker");
    assert_no_pem_keys_but_the_cas(&dir, &ca);

    let server = ServerTls::default()
        .cert_chain(server_cert)
        .hsm_key(server_key.clone())
        .ca(ca_ref(&ca))
        .client_auth(ClientAuth::Required)
        .build()
        .unwrap();
    let client = ClientTls::default()
        .ca(ca_ref(&ca))
        .cert_chain(client_cert)
        .hsm_key(client_key.clone())
        .build()
        .unwrap();
    let server_loaded = server_key.load().unwrap();
    let client_loaded = client_key.load().unwrap();
    let (server_saw, _) = exchange(server, client).await;
    assert_eq!(
        server_saw.client_identity.as_deref(),
        Some("spiffe://test.local/worker")
    );
    assert_eq!(server_loaded.sign_count(), 1);
    assert_eq!(
        client_loaded.sign_count(),
        1,
        "the client's CertificateVerify"
    );
    let p = client_loaded.protection().unwrap();
    assert!(p.is_non_extractable(), "{p:?}");
}

#[tokio::test]
#[ignore = "run by rsa_pss_key_in_the_token in a child process"]
async fn child_rsa_pss_key_in_the_token() {
    let dir = child_dir();
    let ca = Ca::init(dir.join("ca")).unwrap();
    let key = hsm_key(TOKEN, "rsa-node");
    let cert = token_cert(&ca, &dir, &key, HsmAlgorithm::Rsa(2048), "localhost");
    let server = ServerTls::default()
        .cert_chain(cert)
        .hsm_key(key.clone())
        .build()
        .unwrap();
    let client = ClientTls::default().ca(ca_ref(&ca)).build().unwrap();
    let loaded = key.load().unwrap();
    exchange(server, client).await;
    assert_eq!(loaded.sign_count(), 1);
    let p = loaded.protection().unwrap();
    assert!(p.is_non_extractable(), "{p:?}");
}

#[test]
#[ignore = "run by openssl_s_client_sees_the_hsm_backed_server in a child process"]
fn child_openssl_s_client_sees_the_hsm_backed_server() {
    let dir = child_dir();
    let ca = Ca::init(dir.join("ca")).unwrap();
    let key = hsm_key(TOKEN, "node");
    let cert = token_cert(&ca, &dir, &key, HsmAlgorithm::EcdsaP256, "localhost");
    let server = ServerTls::default()
        .cert_chain(cert)
        .hsm_key(key.clone())
        .build()
        .unwrap();
    let loaded = key.load().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        // Let the client read the session to its end.
        conn.send_close_notify();
        let _ = conn.complete_io(&mut tcp);
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
    });
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-tls1_3", "-servername", "localhost", "-alpn", "polycall/1"])
        .arg("-CAfile")
        .arg(ca.dir().join("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (apt-get install -y openssl)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    assert!(
        stdout.contains("CN=localhost") || stdout.contains("CN = localhost"),
        "{stdout}"
    );
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(stdout.contains("ALPN protocol: polycall/1"), "{stdout}");
    serving.join().unwrap();
    assert_eq!(loaded.sign_count(), 1);
}

#[test]
#[ignore = "run by wrong_pin_is_a_typed_error in a child process"]
fn child_wrong_pin_is_a_typed_error() {
    let dir = child_dir();
    let key = hsm_key(TOKEN, "node");
    let e = key.load().unwrap_err();
    match &e {
        HsmError::WrongPin { token, var, .. } => {
            assert_eq!(token, TOKEN);
            assert_eq!(var, PIN_VAR);
        }
        other => panic!("expected WrongPin, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(TOKEN) && msg.contains(PIN_VAR), "{msg}");
    assert!(!msg.contains("000000") && !msg.contains(PIN), "{msg}");
    assert!(!format!("{e:?}").contains("000000"));

    // Through a TLS configuration the same error arrives, wrapped.
    let ca = Ca::init(dir.join("ca")).unwrap();
    let issued = ca
        .issue("localhost", None, IssueOptions::default())
        .unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, issued.cert_pem).unwrap();
    let e = ServerTls::default()
        .cert_chain(SecretRef::File(cert))
        .hsm_key(key)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Hsm(HsmError::WrongPin { .. })), "{e:?}");
}

#[test]
#[ignore = "run by unset_pin_variable_is_a_typed_error in a child process"]
fn child_unset_pin_variable_is_a_typed_error() {
    child_dir();
    let e = hsm_key(TOKEN, "node").load().unwrap_err();
    match &e {
        HsmError::PinEnvUnset { var, token } => {
            assert_eq!(var, PIN_VAR);
            assert_eq!(token, TOKEN);
        }
        other => panic!("expected PinEnvUnset, got {other:?}"),
    }
    assert!(e.to_string().contains(PIN_VAR), "{e}");
}

#[test]
#[ignore = "run by unknown_labels_and_mismatches_are_typed_errors in a child process"]
fn child_unknown_labels_and_mismatches_are_typed_errors() {
    let dir = child_dir();

    // A key label the token does not hold.
    let e = hsm_key(TOKEN, "no-such-key").load().unwrap_err();
    assert!(
        matches!(&e, HsmError::KeyNotFound { token, key } if token == TOKEN && key == "no-such-key"),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"no-such-key\""), "{e}");

    // A token label the module does not have: the error lists those it has.
    let e = hsm_key("no-such-token", "node").load().unwrap_err();
    match &e {
        HsmError::TokenNotFound {
            token, available, ..
        } => {
            assert_eq!(token, "no-such-token");
            let mut available = available.clone();
            available.sort();
            assert_eq!(available, vec![TOKEN.to_string(), OTHER_TOKEN.to_string()]);
        }
        other => panic!("expected TokenNotFound, got {other:?}"),
    }

    // Generating over an existing label is refused.
    let key = hsm_key(OTHER_TOKEN, "node");
    key.generate(HsmAlgorithm::EcdsaP256).unwrap();
    let e = key.generate(HsmAlgorithm::EcdsaP256).unwrap_err();
    assert!(matches!(e, HsmError::KeyExists { .. }), "{e:?}");

    // A certificate for another key does not go with the token key.
    let ca = Ca::init(dir.join("ca")).unwrap();
    let issued = ca
        .issue("localhost", None, IssueOptions::default())
        .unwrap();
    let cert = dir.join("other.pem");
    std::fs::write(&cert, issued.cert_pem).unwrap();
    let e = ServerTls::default()
        .cert_chain(SecretRef::File(cert.clone()))
        .hsm_key(key.clone())
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("does not belong to key \"node\""),
        "{e}"
    );

    // Both a PEM key and a token key: refused.
    let pem_key = dir.join("other.key");
    polycall_security::write_private(&pem_key, issued.key_pem.as_bytes()).unwrap();
    let e = ServerTls::default()
        .cert_chain(SecretRef::File(cert))
        .key(SecretRef::File(pem_key))
        .hsm_key(key)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("both key and hsm_key"), "{e}");
}
