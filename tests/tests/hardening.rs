//! A runtime's doors: test aids off unless enabled, secrets from the OS and kept
//! private, and a health report that says what is wrong.

use polycall_test_support::TempDir;
use std::path::Path;
use std::time::{Duration, SystemTime};

use polycall_core::{Call, Code, Payload};
use polycall_net::tls::Tls;
use polycall_net::{Channel, ChannelConfig};
use polycall_runtime::{Runtime, RuntimeConfig};
use polycall_security::{Ca, ClientTls, IssueOptions, SecretRef, ServerTls};
use serde_json::{Value, json};

fn config(dir: &Path) -> RuntimeConfig {
    RuntimeConfig::default()
        .endpoint("127.0.0.1:0".parse().unwrap())
        .state_dir(dir.join("state"))
}

async fn call(ch: &Channel, name: &str, input: Value) -> Result<Value, polycall_core::Status> {
    let r = ch
        .call(Call::new(name, Payload::json(&input).unwrap()).unwrap())
        .await?;
    Ok(r.payload.to_json().unwrap_or(Value::Null))
}

#[tokio::test]
async fn debug_methods_are_off_unless_enabled_and_sleep_is_bounded() {
    let dir = TempDir::new("debug");
    let rt = Runtime::start(config(&dir)).await.unwrap();
    let ch = Channel::connect(rt.local_endpoint().clone()).await.unwrap();
    for m in ["debug.echo", "debug.sleep"] {
        let e = call(&ch, m, json!({"ms": 1})).await.unwrap_err();
        assert_eq!(e.code, Code::UnknownMethod, "{m}: {e}");
    }
    rt.shutdown().await;

    let mut c = config(&dir);
    c.debug_methods = true;
    let rt = Runtime::start(c).await.unwrap();
    let ch = Channel::connect(rt.local_endpoint().clone()).await.unwrap();
    assert_eq!(
        call(&ch, "debug.echo", json!({"a": 1})).await.unwrap(),
        json!({"a": 1})
    );
    let e = call(&ch, "debug.sleep", json!({"ms": 3_600_000}))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidInput, "{e}");
    assert!(e.message.contains("at most"), "{e}");
    rt.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_shutdown_token_is_random_and_private() {
    let dir = TempDir::new("token");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let rt = Runtime::start(config(&dir)).await.unwrap();
        let path = dir.join("state").join("runtime.token");
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token, rt.shutdown_token());
        assert_eq!(token.len(), 64, "32 random bytes, hex");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        seen.push(token);
        rt.shutdown().await;
    }
    assert_ne!(seen[0], seen[1]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A runtime serving TLS with a certificate valid for `days` more days, and its health.
async fn health_with_certificate_for(days: u64) -> Value {
    let dir = TempDir::new("cert");
    let ca = Ca::init(dir.join("ca")).unwrap();
    let now = SystemTime::now();
    let options = IssueOptions::default()
        .not_before(now - Duration::from_secs(3600))
        .not_after(now + Duration::from_secs(days * 24 * 3600))
        .with_loopback();
    let issued = ca.issue("node", None, options).unwrap();
    std::fs::write(dir.join("node.pem"), &issued.cert_pem).unwrap();
    polycall_security::write_private(&dir.join("node.key"), issued.key_pem.as_bytes()).unwrap();
    let mut c = config(&dir);
    c.tls = Some(
        ServerTls::default()
            .cert_chain(SecretRef::File(dir.join("node.pem")))
            .key(SecretRef::File(dir.join("node.key"))),
    );
    let rt = Runtime::start(c).await.unwrap();
    let client = ClientTls::default().ca(SecretRef::File(dir.join("ca").join("ca.pem")));
    let ch = Channel::with_config(
        rt.local_endpoint().clone(),
        ChannelConfig::default()
            .transport(std::sync::Arc::new(Tls::client(client.build().unwrap()))),
    )
    .await
    .unwrap();
    let h = call(&ch, "sys.health", json!({})).await.unwrap();
    rt.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    h
}

#[tokio::test]
async fn health_is_degraded_when_the_certificate_is_close_to_expiry() {
    let soon = health_with_certificate_for(2).await;
    assert_eq!(soon["status"], "degraded", "{soon}");
    let why = soon["reasons"].to_string();
    assert!(why.contains("TLS certificate expires in"), "{why}");
    let later = health_with_certificate_for(90).await;
    assert_eq!(later["status"], "ok", "{later}");
    assert_eq!(later["reasons"], json!([]), "{later}");
}
