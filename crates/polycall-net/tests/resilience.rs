//! The resilience layers on real loopback TCP: failover between two servers, and a full
//! client stack (deadline → retry → circuit breaker → channel) through an outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use polycall_core::{Call, Metadata, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use polycall_net::breaker::{BreakerConfig, BreakerState, CircuitBreakerLayer};
use polycall_net::deadline::DeadlineLayer;
use polycall_net::failover::{Failover, FailoverConfig};
use polycall_net::retry::{BudgetConfig, RetryConfig, RetryLayer};
use polycall_net::{Channel, ChannelConfig, Endpoint, Server, ServerConfig};
use tower::{ServiceBuilder, ServiceExt};

fn server_config() -> ServerConfig {
    ServerConfig::default().drain_timeout(Duration::from_millis(200))
}

fn channel_config() -> ChannelConfig {
    ChannelConfig::default()
        .connect_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(10))
        .max_reconnect_backoff(Duration::from_millis(50))
}

/// A server whose `debug.whoami` answers `name`.
async fn whoami_server(endpoint: &str, name: &'static str) -> Server {
    let router = Router::new()
        .route(
            "debug.whoami",
            MethodInfo::new("answers the server's name").idempotent(true),
            handler_fn(move |_c: Call| async move { Ok(Reply::new(Payload::raw(name))) }),
        )
        .unwrap();
    Server::serve_router(endpoint.parse().unwrap(), server_config(), router)
        .await
        .unwrap()
}

async fn whoami<S>(svc: &S) -> Result<String, Status>
where
    S: tower::Service<Call, Response = Reply, Error = Status> + Clone,
{
    let call = Call::new("debug.whoami", Payload::empty()).unwrap();
    let reply = svc.clone().oneshot(call).await?;
    Ok(String::from_utf8(reply.payload.bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn failover_moves_to_the_secondary_and_back_to_a_restarted_primary() {
    let primary = whoami_server("127.0.0.1:0", "primary").await;
    let secondary = whoami_server("127.0.0.1:0", "secondary").await;
    let primary_ep: Endpoint = primary.local_endpoint().clone();
    let channels = vec![
        Channel::with_config(primary_ep.clone(), channel_config())
            .await
            .unwrap(),
        Channel::with_config(secondary.local_endpoint().clone(), channel_config())
            .await
            .unwrap(),
    ];
    let failover = Failover::new(
        channels,
        FailoverConfig::default()
            .probe_interval(Duration::from_millis(50))
            .probe_timeout(Duration::from_millis(200))
            .recovery_threshold(2),
    );
    for _ in 0..3 {
        assert_eq!(whoami(&failover).await.unwrap(), "primary");
    }
    assert_eq!(failover.active(), 0);

    // The primary goes away: traffic moves within at most one failed call (none when
    // the failed call provably never ran — a refused connection).
    primary.shutdown().await;
    let mut failed = 0;
    let mut answers = Vec::new();
    for _ in 0..5 {
        match whoami(&failover).await {
            Ok(name) => answers.push(name),
            Err(e) => {
                failed += 1;
                assert_eq!(e.code, polycall_core::Code::Unavailable, "{e}");
            }
        }
    }
    println!("after the primary stopped: {failed} failed call(s), answers {answers:?}");
    assert!(failed <= 1, "{failed} calls failed");
    assert!(answers.iter().all(|n| n == "secondary"), "{answers:?}");
    assert_eq!(failover.active(), 1);
    assert!(!failover.is_up(0));

    // A new primary on the same port: probes find it and traffic returns, every call
    // answered meanwhile. Typically within ~100 ms (2 probes 50 ms apart); the 10 s
    // limit only stops a test that would never see it return, so a loaded 2-core
    // machine cannot break it.
    let restarted = whoami_server(&primary_ep.to_string(), "primary (restarted)").await;
    let started = Instant::now();
    let mut back = false;
    while started.elapsed() < Duration::from_secs(10) {
        if whoami(&failover).await.unwrap() == "primary (restarted)" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        back,
        "traffic did not return to the restarted primary in {:?}",
        started.elapsed()
    );
    assert_eq!(failover.active(), 0);
    for _ in 0..5 {
        assert_eq!(whoami(&failover).await.unwrap(), "primary (restarted)");
    }
    restarted.shutdown().await;
    secondary.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stack_bounds_retries_during_an_outage_and_recovers_after() {
    // The server: `debug.flaky` fails with `unavailable` while the outage lasts.
    let outage = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "debug.flaky",
            MethodInfo::new("fails during the outage").idempotent(true),
            handler_fn({
                let (outage, attempts) = (outage.clone(), attempts.clone());
                move |_c: Call| {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let down = outage.load(Ordering::SeqCst);
                    async move {
                        if down {
                            Err(Status::unavailable("outage"))
                        } else {
                            Ok(Reply::new(Payload::raw("ok")))
                        }
                    }
                }
            }),
        )
        .unwrap();
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), server_config(), router)
        .await
        .unwrap();
    let channel = Channel::with_config(server.local_endpoint().clone(), channel_config())
        .await
        .unwrap();

    // The client: Deadline → Retry → CircuitBreaker → Channel.
    let reserve = 10; // min_per_second 1 over a 10 s window
    let retry = RetryLayer::new(
        RetryConfig::default()
            .max_attempts(3)
            .base_backoff(Duration::from_millis(5))
            .max_backoff(Duration::from_millis(40))
            .budget(
                BudgetConfig::default()
                    .ratio(0.2)
                    .min_per_second(1)
                    .window(Duration::from_secs(10)),
            ),
    );
    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::default()
            .consecutive_failures(5)
            .open_for(Duration::from_millis(100))
            .half_open_probes(2),
    );
    let client = ServiceBuilder::new()
        .layer(DeadlineLayer::with_default_timeout(Duration::from_millis(
            300,
        )))
        .layer(retry.clone())
        .layer(breaker.clone())
        .service(channel);
    let budget = Arc::clone(retry.budget());
    let call = || {
        Call::new("debug.flaky", Payload::empty())
            .unwrap()
            .with_metadata(Metadata::default().idempotent())
    };
    client.clone().oneshot(call()).await.unwrap();
    let calls_before = budget.calls();
    let attempts_before = attempts.load(Ordering::SeqCst);

    // The outage: 4 waves of 50 concurrent calls, every one fails.
    outage.store(true, Ordering::SeqCst);
    let waves = 4;
    let per_wave = 50;
    let t0 = Instant::now();
    for _ in 0..waves {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..per_wave {
            let client = client.clone();
            let c = call();
            set.spawn(async move { client.oneshot(c).await });
        }
        for r in set.join_all().await {
            assert!(r.is_err(), "a call succeeded during the outage");
        }
    }
    let outage_time = t0.elapsed();
    let calls = (waves * per_wave) as u64;
    assert_eq!(budget.calls() - calls_before, calls);
    let server_attempts = (attempts.load(Ordering::SeqCst) - attempts_before) as u64;
    let retries = budget.retries();
    let limit = (calls as f64 * 0.2) as u64 + reserve;
    println!(
        "outage: {calls} calls, {server_attempts} server attempts, {retries} retries, \
         {} refused by the budget, breaker opened {} times and rejected {}, {outage_time:?}",
        budget.refused(),
        breaker.breakers()[0].opened(),
        breaker.breakers()[0].rejected(),
    );
    assert!(retries <= limit, "{retries} retries > {limit}");
    assert!(budget.refused() > 0, "the budget stopped retries");
    assert!(
        server_attempts <= calls + limit,
        "{server_attempts} attempts reached the server for {calls} calls"
    );
    let handle = &breaker.breakers()[0];
    assert!(handle.opened() >= 1, "the breaker opened");
    // Each call ends within its 300 ms deadline, so the 4 waves take at most ~1.2 s
    // (typically far less: the breaker and the budget refuse at once). The retry bound
    // is asserted by the counts above; this generous limit only catches calls that
    // outlive their deadline, and a loaded 2-core machine cannot break it.
    assert!(outage_time < Duration::from_secs(15), "{outage_time:?}");

    // The outage ends: the breaker closes through half-open and calls succeed.
    outage.store(false, Ordering::SeqCst);
    let t1 = Instant::now();
    loop {
        if client.clone().oneshot(call()).await.is_ok() {
            break;
        }
        // Typically one open_for (100 ms) and two probes; the limit only stops a test
        // that never recovers, generous so that a loaded 2-core machine cannot break it.
        assert!(t1.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        client.clone().oneshot(call()).await.unwrap();
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_breaker_the_budget_alone_bounds_the_load_on_the_server() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "debug.down",
            MethodInfo::new("always fails").idempotent(true),
            handler_fn({
                let attempts = attempts.clone();
                move |_c: Call| {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async move { Err::<Reply, _>(Status::unavailable("outage")) }
                }
            }),
        )
        .unwrap();
    let server = Server::serve_router("127.0.0.1:0".parse().unwrap(), server_config(), router)
        .await
        .unwrap();
    let channel = Channel::with_config(server.local_endpoint().clone(), channel_config())
        .await
        .unwrap();
    let retry = RetryLayer::new(
        RetryConfig::default()
            .max_attempts(5)
            .base_backoff(Duration::from_millis(2))
            .max_backoff(Duration::from_millis(20))
            .budget(
                BudgetConfig::default()
                    .ratio(0.2)
                    .min_per_second(1)
                    .window(Duration::from_secs(10)),
            ),
    );
    let client = ServiceBuilder::new()
        .layer(DeadlineLayer::with_default_timeout(Duration::from_millis(
            500,
        )))
        .layer(retry.clone())
        .service(channel);
    let calls = 300;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let client = client.clone();
        let call = Call::new("debug.down", Payload::empty())
            .unwrap()
            .with_metadata(Metadata::default().idempotent());
        set.spawn(async move { client.oneshot(call).await });
    }
    assert!(set.join_all().await.iter().all(Result::is_err));
    let server_attempts = attempts.load(Ordering::SeqCst);
    let bound = calls * 12 / 10 + 10;
    println!(
        "no breaker: {calls} calls, {server_attempts} server attempts (bound {bound}), \
         {} retries, {} refused by the budget",
        retry.budget().retries(),
        retry.budget().refused()
    );
    // Without a budget, 5 attempts per call would be 1500.
    assert!(server_attempts <= bound, "{server_attempts} > {bound}");
    assert!(
        server_attempts > calls,
        "retries were made while the budget lasted"
    );
    assert!(retry.budget().refused() > 0);
    server.shutdown().await;
}
