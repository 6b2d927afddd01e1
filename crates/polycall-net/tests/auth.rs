//! Authentication in the handshake over real loopback connections: bearer tokens,
//! OPAQUE password logins and TLS client certificates; the session's principal on
//! every call a handler sees; authorization of direct calls.

use std::sync::Arc;
use std::time::Duration;

use polycall_core::{Call, Code, MethodInfo, Payload, Principal, Reply, Router, handler_fn};
use polycall_net::auth::{Credentials, OpaqueUsers, ServerAuth};
use polycall_net::authorize::AuthorizeLayer;
use polycall_net::tls::Tls;
use polycall_net::{
    Channel, ChannelConfig, Server, ServerConfig, ServiceHandler, SharedHandler, Transport,
};
use polycall_security::authz::{Policy, PolicyConfig};
use polycall_security::opaque::{ServerSetup, UserStore};
use polycall_security::token::Tokens;
use polycall_security::{ClientAuth, IssueOptions};
use tower::Layer;

mod common;
use common::{Pki, tmp};

const TOKEN: &[u8] = b"ci-token-0123456789abcdef";

/// `who.ami` answers the principal the handler sees; `kv.get` and `kv.put` echo.
fn router() -> Router {
    let whoami = handler_fn(|c: Call| async move {
        let p = c
            .metadata
            .principal
            .map(|p| p.to_string())
            .unwrap_or_default();
        Ok(Reply::new(Payload::raw(p)))
    });
    let echo = || handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) });
    Router::new()
        .route("who.ami", MethodInfo::new("principal"), whoami)
        .unwrap()
        .route("kv.get", MethodInfo::new("get"), echo())
        .unwrap()
        .route("kv.put", MethodInfo::new("put"), echo())
        .unwrap()
}

async fn server(auth: ServerAuth, transport: Option<Arc<dyn Transport>>) -> Server {
    server_with(auth, transport, None).await
}

async fn server_with(
    auth: ServerAuth,
    transport: Option<Arc<dyn Transport>>,
    policy: Option<Policy>,
) -> Server {
    let mut config = ServerConfig::default();
    config.connection.authenticator = Some(Arc::new(auth));
    if let Some(t) = transport {
        config.transport = t;
    }
    let handler: SharedHandler = match policy {
        Some(p) => Arc::new(ServiceHandler(
            AuthorizeLayer::new(Arc::new(p)).layer(router()),
        )),
        None => Arc::new(polycall_net::RouterHandler(router())),
    };
    Server::serve(
        "127.0.0.1:0".parse().unwrap(),
        config,
        Arc::new(move |_, _| handler.clone()),
    )
    .await
    .unwrap()
}

async fn connect(
    server: &Server,
    credentials: Option<Credentials>,
    transport: Option<Arc<dyn Transport>>,
) -> Result<Channel, polycall_core::Status> {
    let mut config = ChannelConfig::default().connect_timeout(Duration::from_secs(10));
    config.connection.credentials = credentials;
    if let Some(t) = transport {
        config.transport = t;
    }
    Channel::with_config(server.local_endpoint().clone(), config).await
}

async fn call(ch: &Channel, name: &str) -> Result<String, polycall_core::Status> {
    let r = ch.call(Call::new(name, Payload::raw("x")).unwrap()).await?;
    Ok(String::from_utf8(r.payload.bytes.to_vec()).unwrap())
}

fn tokens() -> Tokens {
    let mut t = Tokens::default();
    t.insert("ci", TOKEN).unwrap();
    t
}

#[tokio::test]
async fn a_bearer_token_becomes_the_principal_and_a_wrong_one_is_refused() {
    let s = server(ServerAuth::default().tokens(tokens()), None).await;
    let ch = connect(&s, Some(Credentials::token(TOKEN.to_vec())), None)
        .await
        .unwrap();
    assert_eq!(call(&ch, "who.ami").await.unwrap(), "token:ci");

    let wrong = connect(
        &s,
        Some(Credentials::token(b"not-the-token-at-all".to_vec())),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.code, Code::Unauthenticated, "{wrong}");
    assert!(wrong.message.contains("token"), "{wrong}");
    // The error never repeats the secret.
    assert!(!wrong.to_string().contains("not-the-token"), "{wrong}");

    // Without credentials: no method in common.
    let none = connect(&s, None, None).await.unwrap_err();
    assert_eq!(none.code, Code::Unauthenticated, "{none}");

    // The server keeps serving the good client.
    assert_eq!(call(&ch, "who.ami").await.unwrap(), "token:ci");
    s.shutdown().await;
}

#[tokio::test]
async fn a_claimed_principal_is_replaced_by_the_session_principal() {
    let s = server(ServerAuth::default().tokens(tokens()).anonymous(true), None).await;
    for (creds, expected) in [
        (Some(Credentials::token(TOKEN.to_vec())), "token:ci"),
        (None, ""),
    ] {
        let ch = connect(&s, creds, None).await.unwrap();
        let mut c = Call::new("who.ami", Payload::raw("x")).unwrap();
        c.metadata.principal = Some(Principal::user("root"));
        let r = ch.call(c).await.unwrap();
        assert_eq!(&r.payload.bytes[..], expected.as_bytes());
    }
    s.shutdown().await;
}

fn opaque_users(tag: &str) -> Arc<OpaqueUsers> {
    let dir = tmp(tag);
    let setup = ServerSetup::load_or_create(&dir.join("opaque-setup")).unwrap();
    let mut users = UserStore::open(&dir.join("users.json")).unwrap();
    users
        .add(&setup, "alice", b"correct horse battery staple")
        .unwrap();
    users.save().unwrap();
    Arc::new(OpaqueUsers { setup, users })
}

#[tokio::test]
async fn an_opaque_login_succeeds_with_the_password_and_fails_without_it() {
    let s = server(ServerAuth::default().opaque(opaque_users("opaque")), None).await;
    let ch = connect(
        &s,
        Some(Credentials::password(
            "alice",
            b"correct horse battery staple".to_vec(),
        )),
        None,
    )
    .await
    .unwrap();
    assert_eq!(call(&ch, "who.ami").await.unwrap(), "user:alice");

    for (user, password) in [
        ("alice", &b"Correct horse battery staple"[..]),
        ("mallory", &b"correct horse battery staple"[..]),
    ] {
        let e = connect(
            &s,
            Some(Credentials::password(user, password.to_vec())),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated, "{user}: {e}");
        assert!(!e.to_string().contains("horse"), "{e}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_tls_client_certificate_identity_reaches_the_handler() {
    let pki = Pki::new("mtls-principal");
    let tls = pki.server_tls(ClientAuth::Optional).build().unwrap();
    let (client, _) = pki.client_tls(&pki, Some(("worker-7", IssueOptions::default())));
    let client_tls: Arc<dyn Transport> = Arc::new(Tls::client(client.build().unwrap()));
    let (anon_client, _) = pki.client_tls(&pki, None);
    let anon_tls: Arc<dyn Transport> = Arc::new(Tls::client(anon_client.build().unwrap()));

    // Method `none`: the certificate alone makes the session authenticated.
    let s = server(
        ServerAuth::default().anonymous(true),
        Some(Arc::new(Tls::server(tls.clone()))),
    )
    .await;
    let ch = connect(&s, None, Some(client_tls.clone())).await.unwrap();
    assert_eq!(
        call(&ch, "who.ami").await.unwrap(),
        "spiffe://test.local/worker-7"
    );
    let anon = connect(&s, None, Some(anon_tls.clone())).await.unwrap();
    assert_eq!(call(&anon, "who.ami").await.unwrap(), "");
    s.shutdown().await;

    // Method `certificate` required: a client without a certificate is refused.
    let s = server(
        ServerAuth::default().certificate(true),
        Some(Arc::new(Tls::server(tls))),
    )
    .await;
    let ch = connect(&s, Some(Credentials::Certificate), Some(client_tls))
        .await
        .unwrap();
    assert_eq!(
        call(&ch, "who.ami").await.unwrap(),
        "spiffe://test.local/worker-7"
    );
    let e = connect(&s, Some(Credentials::Certificate), Some(anon_tls))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated, "{e}");
    assert!(e.message.contains("certificate"), "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn direct_calls_are_authorized_exactly_as_configured() {
    let config: PolicyConfig = serde_json::from_str(
        r#"{
            "roles": { "writers": ["user:alice"] },
            "rules": [
                { "service": "who", "allow": ["any"] },
                { "service": "kv", "method": "get", "allow": ["authenticated"] },
                { "service": "kv", "method": "put", "allow": ["role:writers"] }
            ]
        }"#,
    )
    .unwrap();
    let s = server_with(
        ServerAuth::default()
            .tokens(tokens())
            .opaque(opaque_users("authz"))
            .anonymous(true),
        None,
        Some(Policy::new(&config).unwrap()),
    )
    .await;
    let alice = connect(
        &s,
        Some(Credentials::password(
            "alice",
            b"correct horse battery staple".to_vec(),
        )),
        None,
    )
    .await
    .unwrap();
    let ci = connect(&s, Some(Credentials::token(TOKEN.to_vec())), None)
        .await
        .unwrap();
    let anon = connect(&s, None, None).await.unwrap();
    for (who, ch, method, allowed) in [
        ("anonymous", &anon, "who.ami", true),
        ("anonymous", &anon, "kv.get", false),
        ("anonymous", &anon, "kv.put", false),
        ("token:ci", &ci, "kv.get", true),
        ("token:ci", &ci, "kv.put", false),
        ("user:alice", &alice, "kv.get", true),
        ("user:alice", &alice, "kv.put", true),
    ] {
        match call(ch, method).await {
            Ok(_) => assert!(allowed, "{who} should not call {method}"),
            Err(e) => {
                assert!(!allowed, "{who} should call {method}: {e}");
                assert_eq!(e.code, Code::PermissionDenied, "{e}");
                assert!(e.message.contains(method), "{e}");
            }
        }
    }
    s.shutdown().await;
}
