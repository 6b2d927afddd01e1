//! The runtime secured end to end, over real TLS on loopback: providers and callers
//! authenticate (bearer token, OPAQUE password, client certificate), the caller's
//! principal travels with routed calls to the provider, authorization allows and denies
//! routed calls as configured, certificates reload without a restart, and a runtime
//! others can reach refuses to start unsecured.

use polycall_test_support::TempDir;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use polycall_core::{Call, Code, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use polycall_net::auth::{Credentials, OpaqueUsers, ServerAuth};
use polycall_net::tls::Tls;
use polycall_net::{Channel, ChannelConfig, Endpoint, Transport};
use polycall_runtime::{Provider, ProviderConfig, Runtime, RuntimeConfig, RuntimeError};
use polycall_security::authz::{Policy, PolicyConfig};
use polycall_security::opaque::{ServerSetup, UserStore};
use polycall_security::token::Tokens;
use polycall_security::{Ca, ClientAuth, ClientTls, IssueOptions, SecretRef, ServerTls};

const CI_TOKEN: &[u8] = b"ci-token-0123456789abcdef";
const PROVIDER_TOKEN: &[u8] = b"provider-token-0123456789";
const PASSWORD: &[u8] = b"correct horse battery staple";

/// A CA and the files of one certificate it issued.
struct Pki {
    dir: PathBuf,
    ca: Ca,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let ca = Ca::init_named(dir.join(name), &format!("test CA {name}")).unwrap();
        Self {
            dir: dir.join(name),
            ca,
        }
    }

    fn ca_ref(&self) -> SecretRef {
        SecretRef::File(self.dir.join("ca.pem"))
    }

    /// Writes NAME.pem / NAME.key; returns their references.
    fn issue(&self, name: &str, spiffe: Option<&str>) -> (SecretRef, SecretRef) {
        let i = self
            .ca
            .issue(name, spiffe, IssueOptions::default().with_loopback())
            .unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, i.cert_pem).unwrap();
        polycall_security::write_private(&k, i.key_pem.as_bytes()).unwrap();
        (SecretRef::File(c), SecretRef::File(k))
    }

    fn server_tls(&self) -> ServerTls {
        let (cert_chain, key) = self.issue("node", Some("spiffe://test.local/node"));
        ServerTls::default()
            .cert_chain(cert_chain)
            .key(key)
            .ca(self.ca_ref())
            .client_auth(ClientAuth::Optional)
    }

    fn client(&self, cert: Option<&str>) -> Arc<dyn Transport> {
        let mut t = ClientTls::default().ca(self.ca_ref());
        if let Some(name) = cert {
            let (c, k) = self.issue(name, Some(&format!("spiffe://test.local/{name}")));
            t.cert_chain = Some(c);
            t.key = Some(k);
        }
        Arc::new(Tls::client(t.build().unwrap()))
    }
}

fn server_auth(dir: &Path) -> ServerAuth {
    let mut tokens = Tokens::default();
    tokens.insert("ci", CI_TOKEN).unwrap();
    tokens.insert("provider", PROVIDER_TOKEN).unwrap();
    let setup = ServerSetup::load_or_create(&dir.join("opaque-setup")).unwrap();
    let mut users = UserStore::open(&dir.join("users.json")).unwrap();
    users.add(&setup, "alice", PASSWORD).unwrap();
    ServerAuth::default()
        .tokens(tokens)
        .opaque(Arc::new(OpaqueUsers { setup, users }))
        .certificate(true)
        .anonymous(false)
}

fn policy() -> Policy {
    let config: PolicyConfig = serde_json::from_str(
        r#"{
            "roles": { "writers": ["user:alice"], "providers": ["token:provider"] },
            "rules": [
                { "service": "kv", "method": "get", "allow": ["authenticated"], "provide": ["role:providers"] },
                { "service": "kv", "method": "put", "allow": ["role:writers"], "provide": ["role:providers"] },
                { "service": "sys", "method": "ping", "allow": ["any"] }
            ]
        }"#,
    )
    .unwrap();
    Policy::new(&config).unwrap()
}

/// kv.get and kv.put answer the principal the provider sees.
fn kv_router() -> Router {
    let whoami = || {
        handler_fn(|c: Call| async move {
            let p = c
                .metadata
                .principal
                .map(|p| p.to_string())
                .unwrap_or_default();
            Ok(Reply::new(Payload::raw(p)))
        })
    };
    Router::new()
        .route("kv.get", MethodInfo::new("get"), whoami())
        .unwrap()
        .route("kv.put", MethodInfo::new("put"), whoami())
        .unwrap()
}

async fn secured_runtime(dir: &Path, pki: &Pki) -> Runtime {
    let mut config = RuntimeConfig::default();
    config.endpoint = "127.0.0.1:0".parse().unwrap();
    config.state_dir = dir.join("state");
    config.tls = Some(pki.server_tls());
    config.server.connection.authenticator = Some(Arc::new(server_auth(dir)));
    config.qos.policy = Some(Arc::new(policy()));
    Runtime::start(config).await.unwrap()
}

async fn channel(
    endpoint: &Endpoint,
    transport: Arc<dyn Transport>,
    credentials: Option<Credentials>,
) -> Result<Channel, Status> {
    let mut config = ChannelConfig::default()
        .transport(transport)
        .connect_timeout(Duration::from_secs(10));
    config.connection.credentials = credentials;
    Channel::with_config(endpoint.clone(), config).await
}

async fn call(ch: &Channel, method: &str) -> Result<String, Status> {
    let r = ch
        .call(Call::new(method, Payload::raw("x")).unwrap())
        .await?;
    Ok(String::from_utf8(r.payload.bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn routed_calls_carry_the_principal_and_are_authorized_as_configured() {
    let dir = TempDir::new("routed");
    let pki = Pki::new(&dir, "ca");
    let runtime = secured_runtime(&dir, &pki).await;
    let ep = runtime.local_endpoint().clone();

    // A provider without the `providers` role may not register kv methods.
    let mut intruder = ProviderConfig::default().transport(pki.client(None));
    intruder.connection.credentials = Some(Credentials::password("alice", PASSWORD.to_vec()));
    let refused = Provider::start_with(ep.clone(), kv_router(), intruder)
        .await
        .unwrap_err();
    assert_eq!(refused.code, Code::PermissionDenied, "{refused}");

    let mut provider = ProviderConfig::default().transport(pki.client(None));
    provider.connection.credentials = Some(Credentials::token(PROVIDER_TOKEN.to_vec()));
    let provider = Provider::start_with(ep.clone(), kv_router(), provider)
        .await
        .unwrap();

    let ci = channel(
        &ep,
        pki.client(None),
        Some(Credentials::token(CI_TOKEN.to_vec())),
    )
    .await
    .unwrap();
    let alice = channel(
        &ep,
        pki.client(None),
        Some(Credentials::password("alice", PASSWORD.to_vec())),
    )
    .await
    .unwrap();
    let worker = channel(
        &ep,
        pki.client(Some("worker")),
        Some(Credentials::Certificate),
    )
    .await
    .unwrap();

    // Ok(Some(principal)): allowed, and the provider saw that principal; Ok(None):
    // allowed (a runtime method).
    for (who, ch, method, expected) in [
        ("ci", &ci, "kv.get", Ok(Some("token:ci"))),
        ("ci", &ci, "kv.put", Err(Code::PermissionDenied)),
        ("alice", &alice, "kv.get", Ok(Some("user:alice"))),
        ("alice", &alice, "kv.put", Ok(Some("user:alice"))),
        (
            "worker",
            &worker,
            "kv.get",
            Ok(Some("spiffe://test.local/worker")),
        ),
        ("worker", &worker, "kv.put", Err(Code::PermissionDenied)),
        ("worker", &worker, "sys.ping", Ok(None)),
        ("alice", &alice, "sys.describe", Err(Code::PermissionDenied)),
    ] {
        match (call(ch, method).await, expected) {
            (Ok(_), Ok(None)) => {}
            (Ok(p), Ok(Some(e))) => assert_eq!(p, e, "{who} {method}"),
            (Err(s), Err(code)) => assert_eq!(s.code, code, "{who} {method}: {s}"),
            (got, want) => panic!("{who} {method}: got {got:?}, want {want:?}"),
        }
    }

    // Without credentials, and with wrong ones: refused at the handshake.
    let anon = channel(&ep, pki.client(None), None).await.unwrap_err();
    assert_eq!(anon.code, Code::Unauthenticated, "{anon}");
    let wrong = channel(
        &ep,
        pki.client(None),
        Some(Credentials::password("alice", b"wrong".to_vec())),
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.code, Code::Unauthenticated, "{wrong}");

    provider.stop().await;
    runtime.shutdown().await;
}

#[tokio::test]
async fn certificates_reload_for_new_connections_while_open_ones_keep_working() {
    let dir = TempDir::new("reload");
    let old = Pki::new(&dir, "old");
    let new = Pki::new(&dir, "new");
    let mut config = RuntimeConfig::default();
    config.endpoint = "127.0.0.1:0".parse().unwrap();
    config.state_dir = dir.join("state");
    config.tls = Some(old.server_tls());
    let runtime = Runtime::start(config).await.unwrap();
    let ep = runtime.local_endpoint().clone();

    let open = channel(&ep, old.client(None), None).await.unwrap();
    call(&open, "sys.ping").await.unwrap();
    // A client trusting only the new CA is refused before the reload…
    assert!(channel(&ep, new.client(None), None).await.is_err());

    // …a broken certificate file is refused and the old settings stay…
    let mut broken = new.server_tls();
    broken.cert_chain = Some(SecretRef::File(dir.join("missing.pem")));
    assert!(matches!(
        runtime.reload_tls(Some(broken)),
        Err(RuntimeError::Tls(_))
    ));
    channel(&ep, old.client(None), None).await.unwrap();

    // …and after a good reload new clients see the new certificate.
    assert!(runtime.reload_tls(Some(new.server_tls())).unwrap());
    let fresh = channel(&ep, new.client(None), None).await.unwrap();
    call(&fresh, "sys.ping").await.unwrap();
    assert!(channel(&ep, old.client(None), None).await.is_err());
    // The connection opened before the reload is untouched.
    call(&open, "sys.ping").await.unwrap();
    runtime.shutdown().await;
}

#[tokio::test]
async fn a_runtime_others_can_reach_refuses_to_start_unsecured() {
    let dir = TempDir::new("exposure");
    let pki = Pki::new(&dir, "ca");
    let base = || {
        let mut c = RuntimeConfig::default();
        c.endpoint = "0.0.0.0:0".parse().unwrap();
        c.state_dir = dir.join("state");
        c
    };
    let err = Runtime::start(base()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RuntimeError::InsecureRemote { .. }), "{text}");
    assert!(
        text.contains("TLS and authentication") && text.contains("--insecure-remote"),
        "{text}"
    );

    let mut tls_only = base();
    tls_only.tls = Some(pki.server_tls());
    let err = Runtime::start(tls_only).await.unwrap_err().to_string();
    assert!(err.contains("without authentication"), "{err}");

    let mut secured = base();
    secured.tls = Some(pki.server_tls());
    secured.server.connection.authenticator = Some(Arc::new(server_auth(&dir)));
    Runtime::start(secured).await.unwrap().shutdown().await;

    let mut insecure = base();
    insecure.insecure_remote = true;
    Runtime::start(insecure).await.unwrap().shutdown().await;
}
