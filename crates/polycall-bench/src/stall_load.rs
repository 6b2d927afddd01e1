//! `stall-load`: the workload generators of `cargo xtask bench stall`, run beside the
//! pinger (see crate::stall). `cargo xtask bench stall` starts this process with
//! `nice -n 19`: the generators burn CPU of their own (client-side Argon2 for OPAQUE,
//! TLS handshakes, brotli compression) that must not compete, on 2 cores, with the
//! server being measured.
//!
//! - `opaque`: `--concurrency` (20) loops of: a new connection logging in with
//!   `Credentials::password(--user, $--password-env)`, one `sys.ping`, close.
//! - `tls`: `--concurrency` (8) loops of: a new TLS connection (session resumption off,
//!   so the server signs every handshake), the polycall handshake, close.
//! - `brotli`: `--concurrency` (4) connections, each sending `--size` (1 MiB) compressible
//!   bytes to `--method` (`debug.echo`) one after the other; the client offers only
//!   brotli at quality 1 (cheap enough for one core to compress 40 MiB/s; the server's
//!   decompression costs about the same at any quality) and assumes a 1 MB/s link, so
//!   its selector compresses. The connections go
//!   through a byte-counting relay in this process: `wire_ratio` (bytes the server
//!   received ÷ payload bytes sent) shows whether brotli was really used.
//!   `--per-second R` paces the messages (R a second in all, start to start).
//! - `echo` (a control): as `brotli`, uncompressed: what moving the same messages
//!   through the server costs the pings, without any decompression to do.
//! - `cpu` (a control): `--concurrency` (one per core) threads busy-computing, no traffic
//!   to the server at all: what the machine's CPU contention alone does to the pings.
//!
//! Prints one JSON line: operations completed, errors, ops/s, this process's CPU and
//! its nice value (every thread is held at the nice value the process started with,
//! see `hold_niceness`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use polycall_core::{Call, Payload, Status};
use polycall_net::auth::Credentials;
use polycall_net::{ConnectionConfig, Endpoint};
use polycall_proto::compress::Choice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stall::{connect, transport};
use crate::{Args, Ctx, Fail, cpu_seconds};

/// `len` bytes of log-like JSON lines: compressible (brotli makes them about four times
/// smaller) but not trivially (numbers and ids vary), so compressing and decompressing
/// cost real CPU.
pub fn compressible(len: usize) -> Bytes {
    let mut out = String::with_capacity(len + 256);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let levels = ["info", "warn", "debug", "error"];
    let words = [
        "request served",
        "cache miss",
        "retrying upstream",
        "connection reused",
        "slow query",
    ];
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push_str(&format!(
            "{{\"ts\":{},\"level\":\"{}\",\"msg\":\"{}\",\"user\":{},\"latency_us\":{},\"trace\":\"{:016x}\"}}\n",
            1_700_000_000_000u64 + (state >> 40),
            levels[(state % 4) as usize],
            words[((state >> 8) % 5) as usize],
            (state >> 20) % 10_000,
            (state >> 32) % 100_000,
            state
        ));
    }
    let mut b = out.into_bytes();
    b.truncate(len);
    b.into()
}

/// The nice value of this process (field 19 of /proc/self/stat).
fn niceness() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(16)?.parse().ok()
}

/// Keeps every thread of this process at the nice value the process started with.
///
/// polycall's offload runtime sets its threads to an absolute nice of 10 (meant as
/// "lower than the event loop"); in a process started with `nice -n 19` by a user
/// allowed to raise priority (root), that would lift the generators' heaviest work
/// (Argon2, handshakes, brotli) from 19 back to 10, into competition with the measured
/// server. Threads start lazily, so this looks every 20 ms. Returns the lowest nice
/// value seen on any thread (before it was put back).
fn hold_niceness() -> Arc<std::sync::atomic::AtomicI64> {
    let start = rustix::process::getpriority_process(None).unwrap_or(0);
    let lowest = Arc::new(std::sync::atomic::AtomicI64::new(i64::from(start)));
    let seen = lowest.clone();
    std::thread::spawn(move || {
        loop {
            if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
                for e in dir.flatten() {
                    let Some(tid) = e
                        .file_name()
                        .to_str()
                        .and_then(|s| s.parse().ok())
                        .and_then(rustix::process::Pid::from_raw)
                    else {
                        continue;
                    };
                    if let Ok(n) = rustix::process::getpriority_process(Some(tid))
                        && n != start
                    {
                        seen.fetch_min(i64::from(n), Ordering::Relaxed);
                        let _ = rustix::process::setpriority_process(Some(tid), start);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    lowest
}

/// A loopback relay to `target` counting the bytes that go towards it.
async fn relay(target: Endpoint, up: Arc<AtomicU64>) -> Result<Endpoint, Fail> {
    let Endpoint::Tcp(addr) = &target else {
        return Err(Fail::new("relay", "brotli needs a TCP endpoint"));
    };
    let addr = addr.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .ctx("binding the relay")?;
    let local = listener.local_addr().ctx("the relay's address")?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (addr, up) = (addr.clone(), up.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&addr).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let towards = async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        up.fetch_add(n as u64, Ordering::Relaxed);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let back = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(towards, back);
            });
        }
    });
    format!("127.0.0.1:{}", local.port())
        .parse()
        .ctx("the relay's endpoint")
}

/// Runs the workload until `--seconds` have passed; prints one JSON line.
pub async fn run(args: &Args) -> Result<(), Fail> {
    let workload = args.need("--workload")?.to_owned();
    let lowest_nice = hold_niceness();
    let ep: Endpoint = args.need("--endpoint")?.parse().ctx("--endpoint")?;
    let seconds: f64 = args.parse("--seconds")?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(Fail::new("stall-load", "--seconds must be positive"));
    }
    let default_concurrency = match workload.as_str() {
        "opaque" => 20,
        "tls" => 8,
        "brotli" | "echo" => 4,
        "cpu" => std::thread::available_parallelism().map_or(2, |n| n.get()),
        other => {
            return Err(Fail::new(
                "--workload",
                format!("{other:?} is none of opaque, tls, brotli, echo, cpu"),
            ));
        }
    };
    let concurrency: usize = match args.get("--concurrency") {
        Some(_) => args.parse("--concurrency")?,
        None => default_concurrency,
    };
    let size: usize = match args.get("--size") {
        Some(_) => args.parse("--size")?,
        None => 1024 * 1024,
    };
    let method = args.get("--method").unwrap_or("debug.echo").to_owned();
    // brotli / echo: at most this many messages a second in all (start to start).
    let gap = match args.get("--per-second") {
        Some(_) => {
            let r: f64 = args.parse("--per-second")?;
            if r.is_nan() || r <= 0.0 {
                return Err(Fail::new("--per-second", "must be positive"));
            }
            Some(Duration::from_secs_f64(concurrency as f64 / r))
        }
        None => None,
    };

    let mut config = ConnectionConfig::default();
    let mut target = ep.clone();
    let up = Arc::new(AtomicU64::new(0));
    let body = compressible(size);
    match workload.as_str() {
        "opaque" => {
            let user = args.need("--user")?.to_owned();
            let var = args.need("--password-env")?;
            let password = std::env::var(var)
                .map_err(|_| Fail::new("--password-env", format!("{var} is not set")))?;
            config.credentials = Some(Credentials::password(user, password.into_bytes()));
        }
        "brotli" => {
            config.proto.compression.candidates = vec![Choice::brotli(1)];
            config.link_throughput = Some(1e6);
            target = relay(ep.clone(), up.clone()).await?;
        }
        "echo" => {
            config.proto.compression.candidates = Vec::new();
            target = relay(ep.clone(), up.clone()).await?;
        }
        _ => {}
    }
    // Full handshakes for `tls` (resumption would skip the server's signature).
    let transport = transport(args, workload != "tls")?;

    let cpu0 = cpu_seconds(None);
    let begin = Instant::now();
    let end = begin + Duration::from_secs_f64(seconds);
    if workload == "cpu" {
        let spinners: Vec<_> = (0..concurrency)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut ms = 0u64;
                    while Instant::now() < end {
                        crate::stall::spin(Duration::from_millis(1));
                        ms += 1;
                    }
                    ms
                })
            })
            .collect();
        let ops: u64 = spinners.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        let elapsed = begin.elapsed().as_secs_f64();
        let cpu = cpu_seconds(None) - cpu0;
        println!(
            "{}",
            serde_json::json!({
                "workload": workload, "concurrency": concurrency, "ops": ops, "errors": 0,
                "first_error": null, "seconds": elapsed, "ops_per_sec": ops as f64 / elapsed,
                "cpu_s": cpu, "cpu_ms_per_op": cpu * 1000.0 / ops.max(1) as f64,
                "nice": niceness(), "lowest_thread_nice_seen": lowest_nice.load(Ordering::Relaxed),
            })
        );
        return Ok(());
    }
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (transport, target, config, workload, method, body) = (
            transport.clone(),
            target.clone(),
            config.clone(),
            workload.clone(),
            method.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ops = 0u64;
            let mut errors = 0u64;
            let mut first_error: Option<String> = None;
            let mut note = |e: Fail, errors: &mut u64| {
                *errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            };
            if workload == "brotli" || workload == "echo" {
                let conn = match connect(transport.as_ref(), &target, config).await {
                    Ok(c) => c,
                    Err(e) => {
                        note(e, &mut errors);
                        return (ops, errors, first_error);
                    }
                };
                while Instant::now() < end {
                    let started = tokio::time::Instant::now();
                    let call = match Call::new(&method, Payload::raw(body.clone())) {
                        Ok(c) => c,
                        Err(e) => {
                            note(Fail::new("--method", e), &mut errors);
                            break;
                        }
                    };
                    match conn.call(call).await {
                        Ok(_) => ops += 1,
                        Err(e) => {
                            note(Fail::new(format!("calling {method}"), e), &mut errors);
                            if conn.is_closed() {
                                break;
                            }
                        }
                    }
                    if let Some(g) = gap {
                        tokio::time::sleep_until(started + g).await;
                    }
                }
                conn.close(Status::unavailable("done"));
                return (ops, errors, first_error);
            }
            while Instant::now() < end {
                let result = async {
                    let conn = connect(transport.as_ref(), &target, config.clone()).await?;
                    if workload == "opaque" {
                        let call = Call::new("sys.ping", Payload::empty()).ctx("the ping")?;
                        let r = conn.call(call).await.ctx("sys.ping after the login");
                        conn.close(Status::unavailable("done"));
                        r?;
                    } else {
                        conn.close(Status::unavailable("done"));
                    }
                    Ok::<_, Fail>(())
                }
                .await;
                match result {
                    Ok(()) => ops += 1,
                    Err(e) => {
                        note(e, &mut errors);
                        // Do not spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (ops, errors, first_error)
        }));
    }
    let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
    for t in tasks {
        let (o, e, f) = t.await.ctx("a workload task")?;
        ops += o;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let elapsed = begin.elapsed().as_secs_f64();
    let cpu = cpu_seconds(None) - cpu0;
    if ops == 0 {
        return Err(Fail::new(
            format!("stall-load {workload}"),
            format!(
                "no operation succeeded; first error: {}",
                first_error.unwrap_or_default()
            ),
        ));
    }
    let mut v = serde_json::json!({
        "workload": workload,
        "concurrency": concurrency,
        "ops": ops,
        "errors": errors,
        "first_error": first_error,
        "seconds": elapsed,
        "ops_per_sec": ops as f64 / elapsed,
        "cpu_s": cpu,
        "cpu_ms_per_op": cpu * 1000.0 / ops as f64,
        "nice": niceness(),
        "lowest_thread_nice_seen": lowest_nice.load(Ordering::Relaxed),
    });
    if workload == "brotli" || workload == "echo" {
        let sent = up.load(Ordering::Relaxed);
        v["payload_bytes"] = (ops * size as u64).into();
        v["wire_bytes_up"] = sent.into();
        v["wire_ratio"] = (sent as f64 / (ops as f64 * size as f64)).into();
        v["method"] = method.into();
    }
    println!("{v}");
    Ok(())
}
