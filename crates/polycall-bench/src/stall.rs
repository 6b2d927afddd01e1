//! The processes of `cargo xtask bench stall`, which asks whether a server's event loop
//! stalls while it does blocking work: `sys.ping` latency on one open connection, pinged
//! at a steady pace, first with the server idle and then while a workload runs.
//!
//! ```text
//! polycall-bench stall-serve --listen ADDR --ready FILE
//!     a direct polycall Server (default ServerConfig and ConnectionConfig, default
//!     multi-thread tokio runtime) with sys.ping and bench.spin (busy-computes for
//!     the milliseconds its payload names, 50 by default)
//! polycall-bench stall-ping --endpoint EP [--ca FILE] [--server-name NAME] --seconds S
//!     [--warmup S] [--interval-us N] [--spin N] [--spin-ms MS] [--row NAME]
//!     one connection; one sys.ping at a time, one every --interval-us (1,000); with
//!     --spin N, N bench.spin calls kept in flight on the SAME connection
//!     → one JSON line: pings, p50/p90/p99/p99.9/max µs (and p99 corrected for
//!       coordinated omission), errors, spin calls completed
//! polycall-bench stall-load --workload opaque|tls|brotli --endpoint EP [--ca FILE]
//!     [--server-name NAME] --seconds S [--concurrency C] [--user U --password-env VAR]
//!     [--method M] [--size BYTES]
//!     a workload generator (see crate::stall_load) → one JSON line
//! polycall-bench stall-hsm-cert --ca DIR --name NAME --module SO --token LABEL
//!     --key LABEL --pin-env VAR --out FILE
//!     generates an ECDSA P-256 key inside a PKCS#11 token (SOFTHSM2_CONF names
//!     SoftHSM2's configuration) and writes a certificate from the CA in DIR for it
//! ```
//!
//! The workload generators burn CPU of their own (client-side Argon2 for OPAQUE, TLS
//! handshakes, brotli compression): on a 2-core machine they would compete with the
//! server being measured, so `cargo xtask bench stall` starts them with `nice -n 19`,
//! while the pinger and the server run at normal priority, each in its own process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use polycall_core::{Call, MethodInfo, Payload, Reply, Router, handler_fn};
use polycall_net::{ConnectionConfig, ConnectionHandle, Endpoint, NoHandler, Server, ServerConfig};

use crate::{Args, Ctx, Fail};

/// The CPU-bound method of `stall-serve`.
pub const SPIN: &str = "bench.spin";

/// Busy-computes (FNV-1a over a counter, in rounds) for `d`; returns the hash so the
/// work cannot be optimized away.
pub fn spin(d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i: u64 = 0;
    while Instant::now() < end {
        for _ in 0..4096 {
            h ^= i;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i = i.wrapping_add(1);
        }
    }
    std::hint::black_box(h)
}

/// `stall-serve`: a direct polycall server, every setting at its default, with `sys.ping`
/// and `bench.spin`. The spin runs inside the handler's future, as a careless handler
/// would: what it holds up is what the benchmark measures. `sys.ping` answers at once
/// and says so (`MethodInfo::inline`), as the runtime's own `sys.ping` does: it runs in
/// the connection's task, the spin on polycall's handler threads.
pub async fn serve(args: &Args) -> Result<(), Fail> {
    let router = Router::new()
        .route(
            "sys.ping",
            MethodInfo::new("answers pong")
                .idempotent(true)
                .inline(true),
            handler_fn(|_c: Call| async { Ok(Reply::new(Payload::raw("pong"))) }),
        )
        .and_then(|r| {
            r.route(
                SPIN,
                MethodInfo::new("busy-computes for the milliseconds in its payload (50)"),
                handler_fn(|c: Call| async move {
                    let ms = std::str::from_utf8(&c.payload.bytes)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(50);
                    let h = spin(Duration::from_millis(ms));
                    Ok(Reply::new(Payload::raw(h.to_le_bytes().to_vec())))
                }),
            )
        })
        .ctx("building the router")?;
    let listen = args.need("--listen")?.parse().ctx("--listen")?;
    let server = Server::serve_router(listen, ServerConfig::default(), router)
        .await
        .ctx("starting the polycall server")?;
    args.ready(&server.local_endpoint().to_string())?;
    std::future::pending::<()>().await;
    Ok(())
}

/// The transport `--ca` asks for: TLS trusting that CA (optionally with
/// `--server-name`), else plain TCP. `resume = false` turns TLS session resumption
/// off, so every connection is a full handshake (the server signs each one).
pub fn transport(args: &Args, resume: bool) -> Result<Arc<dyn polycall_net::Transport>, Fail> {
    let Some(ca) = args.get("--ca") else {
        return Ok(Arc::new(polycall_net::Plain));
    };
    let built = polycall_security::ClientTls::default()
        .ca(polycall_security::SecretRef::File(ca.into()))
        .build()
        .ctx("--ca: building the TLS client configuration")?;
    let config = if resume {
        built
    } else {
        let mut c = (*built).clone();
        c.resumption = polycall_security::rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    let mut tls = polycall_net::tls::Tls::client(config);
    if let Some(name) = args.get("--server-name") {
        tls = tls.with_server_name(name).ctx("--server-name")?;
    }
    Ok(Arc::new(tls))
}

/// Opens one connection (transport, then the polycall handshake with `config`).
pub async fn connect(
    transport: &dyn polycall_net::Transport,
    ep: &Endpoint,
    config: ConnectionConfig,
) -> Result<ConnectionHandle, Fail> {
    let io = transport
        .connect(ep)
        .await
        .map_err(|e| Fail::new(format!("connecting to {ep}"), e))?;
    polycall_net::establish(
        io,
        ep.to_string(),
        polycall_proto::Role::Client,
        config,
        Arc::new(NoHandler),
    )
    .await
    .map_err(|e| Fail::new(format!("handshake with {ep}"), e))
}

fn histogram() -> Result<Histogram<u64>, Fail> {
    Histogram::new_with_bounds(1, 60_000_000, 3).ctx("creating a histogram")
}

fn opt<T: std::str::FromStr>(args: &Args, name: &str, default: T) -> Result<T, Fail>
where
    T::Err: std::fmt::Display,
{
    match args.get(name) {
        Some(_) => args.parse(name),
        None => Ok(default),
    }
}

/// `stall-ping`: sequential `sys.ping`s on one connection at a steady pace, optionally
/// beside `bench.spin` calls on the same connection; prints one JSON line.
pub async fn ping(args: &Args) -> Result<(), Fail> {
    let ep: Endpoint = args.need("--endpoint")?.parse().ctx("--endpoint")?;
    let seconds: f64 = args.parse("--seconds")?;
    let warmup: f64 = opt(args, "--warmup", 1.0)?;
    let interval_us: u64 = opt(args, "--interval-us", 1_000)?;
    let spin_n: usize = opt(args, "--spin", 0)?;
    let spin_ms: u64 = opt(args, "--spin-ms", 50)?;
    let row = args.get("--row").unwrap_or("ping").to_owned();
    if seconds.is_nan() || seconds <= 0.0 || warmup.is_nan() || warmup < 0.0 || interval_us == 0 {
        return Err(Fail::new(
            "stall-ping",
            "--seconds and --interval-us must be positive, --warmup not negative",
        ));
    }
    let transport = transport(args, true)?;
    let conn = connect(transport.as_ref(), &ep, ConnectionConfig::default()).await?;

    let begin = Instant::now();
    let start = begin + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(seconds);

    // The CPU-bound calls, on the same connection as the pings.
    let mut spinners = Vec::new();
    for _ in 0..spin_n {
        let conn = conn.clone();
        spinners.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut failed = 0u64;
            while Instant::now() < end {
                let call = Call::new(SPIN, Payload::raw(spin_ms.to_string()))
                    .ctx("building the spin call")?;
                match conn.call(call).await {
                    Ok(_) => done += 1,
                    Err(e) => {
                        failed += 1;
                        if failed > 10 {
                            return Err(Fail::new("bench.spin calls", e));
                        }
                    }
                }
            }
            Ok::<_, Fail>(done)
        }));
    }

    let mut h = histogram()?;
    let mut corrected = histogram()?;
    let mut errors = 0u64;
    let mut first_error = None;
    let mut ticker = tokio::time::interval(Duration::from_micros(interval_us));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let t = Instant::now();
        if t >= end {
            break;
        }
        let call = Call::new("sys.ping", Payload::empty()).ctx("building the ping")?;
        match conn.call(call).await {
            Ok(_) if t >= start => {
                let us = t.elapsed().as_micros().max(1) as u64;
                let _ = h.record(us);
                let _ = corrected.record_correct(us, interval_us);
            }
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
                if errors > 10 {
                    return Err(Fail::new("sys.ping", e));
                }
            }
        }
    }
    let measured = start.elapsed().as_secs_f64();
    let mut spin_calls = 0;
    for s in spinners {
        spin_calls += s.await.ctx("a spin task")??;
    }
    conn.close(polycall_core::Status::unavailable("done"));
    if h.is_empty() {
        return Err(Fail::new(
            "stall-ping",
            format!("no ping completed in the window; first error: {first_error:?}"),
        ));
    }
    println!(
        "{}",
        serde_json::json!({
            "row": row,
            "endpoint": ep.to_string(),
            "tls": args.get("--ca").is_some(),
            "interval_us": interval_us,
            "warmup_s": warmup,
            "seconds": measured,
            "pings": h.len(),
            "errors": errors,
            "first_error": first_error,
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "p99_corrected_us": corrected.value_at_quantile(0.99),
            "spin_in_flight": spin_n,
            "spin_ms": spin_ms,
            "spin_calls": spin_calls,
        })
    );
    Ok(())
}

/// `stall-hsm-cert`: a key generated inside the token, and a certificate for it.
pub fn hsm_cert(args: &Args) -> Result<(), Fail> {
    use polycall_security::hsm::{HsmAlgorithm, HsmKey};
    let ca = polycall_security::Ca::load(args.need("--ca")?).ctx("loading the CA")?;
    let key = HsmKey::new(
        args.need("--module")?,
        args.need("--token")?,
        args.need("--key")?,
        args.need("--pin-env")?,
    );
    let spki = key
        .generate(HsmAlgorithm::EcdsaP256)
        .ctx("generating the key in the token")?;
    let issued = ca
        .issue_for_public_key(
            args.need("--name")?,
            None,
            &spki,
            polycall_security::IssueOptions::default().with_loopback(),
        )
        .ctx("issuing the certificate")?;
    std::fs::write(args.need("--out")?, issued.cert_pem).ctx("writing the certificate")?;
    Ok(())
}
