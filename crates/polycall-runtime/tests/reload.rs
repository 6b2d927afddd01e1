//! Hot reload of polycall.toml: a live edit of the rate limit applies to a connection
//! already open, without dropping it; an invalid edit keeps the running configuration
//! and shows up in sys.health.

use std::sync::Arc;
use std::time::{Duration, Instant};

use polycall_core::{Call, Code, Payload};
use polycall_net::Channel;
use polycall_runtime::Runtime;
use polycall_runtime::config::{Config, RuntimeConfigExt};

fn config_text(dir: &std::path::Path, rate: &str) -> String {
    format!(
        "version = 1\n\n[runtime]\nendpoint = \"127.0.0.1:0\"\ndebug_methods = true\nstate_dir = \"{}\"\n\n[qos]\nrate_limit_per_second = {rate}\nrate_limit_burst = {rate}\n",
        dir.join("state").display()
    )
}

/// sys.health, waiting out the rate limit the test itself sets.
async fn health(ch: &Channel) -> serde_json::Value {
    loop {
        match ch
            .call(Call::new("sys.health", Payload::empty()).unwrap())
            .await
        {
            Ok(r) => return r.payload.to_json().unwrap(),
            Err(e) if e.code == Code::Busy => {
                tokio::time::sleep(e.retry_after.unwrap_or(Duration::from_millis(100))).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

async fn wait_for_reloads(ch: &Channel, n: u64) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let h = health(ch).await;
        if h["config"]["reloads"].as_u64() == Some(n) {
            return h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload seen: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn burst(ch: &Channel, n: usize) -> usize {
    let mut busy = 0;
    for _ in 0..n {
        match ch
            .call(Call::new("debug.echo", Payload::raw("x")).unwrap())
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == Code::Busy => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_rate_limit_edit_applies_without_dropping_the_connection() {
    let dir = std::env::temp_dir().join(format!("polycall-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("polycall.toml");
    std::fs::write(&path, config_text(&dir, "1000")).unwrap();

    let loaded = Config::load(Some(&path), &[], &[]).unwrap();
    let runtime = Arc::new(Runtime::start(loaded.to_runtime_config()).await.unwrap());
    let _watcher =
        polycall_runtime::reload::watch(runtime.clone(), loaded, vec![], vec![], None).unwrap();
    let ch = Channel::connect(runtime.local_endpoint().clone())
        .await
        .unwrap();
    let conn = ch.any_connection().await.unwrap();
    assert_eq!(burst(&ch, 20).await, 0, "1000/s lets 20 calls through");

    // Tighten the limit: the same connection is held to it at once.
    std::fs::write(&path, config_text(&dir, "2")).unwrap();
    let h = wait_for_reloads(&ch, 1).await;
    assert_eq!(h["config"]["last_reload"]["ok"], true, "{h}");
    let applied = h["config"]["last_reload"]["applied"].as_array().unwrap();
    assert!(
        applied.iter().any(|k| k == "qos.rate_limit_per_second"),
        "{h}"
    );
    let busy = burst(&ch, 20).await;
    assert!(busy >= 15, "only {busy} of 20 calls refused at 2/s");
    assert!(
        conn.same_connection(&ch.any_connection().await.unwrap()) && !conn.is_closed(),
        "the connection was kept"
    );

    // An invalid edit is rejected: the running configuration (2/s) stays.
    std::fs::write(&path, config_text(&dir, "\"lots\"")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // let the 2/s bucket refill for the health calls
    let h = wait_for_reloads(&ch, 2).await;
    assert_eq!(h["config"]["last_reload"]["ok"], false, "{h}");
    // Health tells the truth: degraded, and why.
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .contains("reload was rejected"),
        "{h}"
    );
    let errors = h["config"]["last_reload"]["errors"].to_string();
    assert!(
        errors.contains("polycall.toml:"),
        "errors carry positions: {errors}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let busy = burst(&ch, 20).await;
    assert!(
        busy >= 15,
        "the old limit still holds after a rejected edit: {busy} refused"
    );
    assert!(!conn.is_closed());

    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_the_connection_cap_reload_for_new_connections() {
    let dir = std::env::temp_dir().join(format!("polycall-reload-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("polycall.toml");
    let text = |cap: u32, in_flight: u32| {
        format!(
            "version = 1\n\n[runtime]\nendpoint = \"127.0.0.1:0\"\ndebug_methods = true\nstate_dir = \"{}\"\nmax_connections = {cap}\n\n[limits]\nmax_in_flight = {in_flight}\n",
            dir.join("state").display()
        )
    };
    std::fs::write(&path, text(100, 1000)).unwrap();
    let loaded = Config::load(Some(&path), &[], &[]).unwrap();
    let runtime = Arc::new(Runtime::start(loaded.to_runtime_config()).await.unwrap());
    let _watcher =
        polycall_runtime::reload::watch(runtime.clone(), loaded, vec![], vec![], None).unwrap();
    let ep = runtime.local_endpoint().clone();
    let first = Channel::connect(ep.clone()).await.unwrap();

    std::fs::write(&path, text(2, 1)).unwrap();
    let h = wait_for_reloads(&first, 1).await;
    let applied = h["config"]["last_reload"]["applied"].to_string();
    assert!(
        applied.contains("runtime.max_connections") && applied.contains("limits.max_in_flight"),
        "{h}"
    );

    // A second connection fits under the new cap of 2 and gets the new in-flight limit
    // of 1; a third is refused; the first connection is untouched.
    let second = Channel::connect(ep.clone()).await.unwrap();
    let sleeps: Vec<_> = (0..2)
        .map(|_| {
            let c = second.clone();
            tokio::spawn(async move {
                c.call(
                    Call::new(
                        "debug.sleep",
                        Payload::json(&serde_json::json!({"ms": 200})).unwrap(),
                    )
                    .unwrap(),
                )
                .await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for s in sleeps {
        codes.push(
            s.await
                .unwrap()
                .map(|_| Code::Ok)
                .unwrap_or_else(|e| e.code),
        );
    }
    codes.sort();
    assert_eq!(
        codes,
        vec![Code::Ok, Code::Busy],
        "the new connection has an in-flight limit of 1"
    );
    let third = Channel::connect(ep.clone()).await.unwrap_err();
    assert_eq!(third.code, Code::Busy, "{third}");
    let on_first: Vec<_> = (0..2)
        .map(|_| {
            let c = first.clone();
            tokio::spawn(async move {
                c.call(
                    Call::new(
                        "debug.sleep",
                        Payload::json(&serde_json::json!({"ms": 100})).unwrap(),
                    )
                    .unwrap(),
                )
                .await
            })
        })
        .collect();
    for s in on_first {
        s.await
            .unwrap()
            .expect("the first connection keeps the limits it negotiated");
    }
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
