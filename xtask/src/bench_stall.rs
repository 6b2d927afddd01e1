//! `cargo xtask bench stall`: does the server's event loop stall while it does blocking
//! work? `sys.ping` latency (p50 / p99) on ONE open connection, one ping at a time every
//! millisecond, first with the server idle, then while each workload runs, all in one
//! run. Target per workload: p99 ≤ 3× the idle p99 of the same server.
//!
//! Rows against the real runtime (`polycall run`, release build, its defaults: one event
//! loop) configured with TLS whose private key is held in SoftHSM2 (PKCS#11), an OPAQUE
//! user, and anonymous sessions (the pinger proves nothing; it trusts the run's own CA):
//!
//! - `idle`: the baseline;
//! - `opaque`: 20 concurrent OPAQUE password logins in a loop (a new connection each,
//!   the login, one call, close);
//! - `tls-hsm`: full TLS handshakes in a loop (8 concurrent new connections, session
//!   resumption off, so the token signs every one);
//! - `brotli`: 1 MiB compressible messages, compressed with brotli by the client, sent
//!   to `debug.echo` over 4 connections, 40 a second in all;
//! - `echo 1 MiB (control)`: the brotli row's messages, at the same rate, uncompressed:
//!   what moving that traffic through the server's one event loop costs the pings, with
//!   nothing to decompress. Shown, not judged.
//! - `cpu-noise (control)`: the generator process busy-computes on every core and sends
//!   nothing: what CPU contention alone (at nice 19) does to the pings on this machine.
//!   Shown, not judged.
//!
//! Rows against a direct polycall `Server` (library, default `ServerConfig` and
//! `ConnectionConfig`, default multi-thread tokio runtime) with `sys.ping` and
//! `bench.spin`, in its own process, with its own idle baseline:
//!
//! - `idle (direct Server)`, then `cpu-handler`: a handler that busy-computes for 50 ms,
//!   called back to back (one in flight at a time) on the SAME connection as the pings.
//!   (More computing handlers than cores is overload, not a stall: any server that runs
//!   handlers on its I/O threads, tonic included, then shares the cores between them.)
//!
//! Processes: the server; the pinger (`polycall-bench stall-ping`, normal priority);
//! the workload generator (`polycall-bench stall-load`) started under SCHED_IDLE and
//! `nice -n 19`, because it burns CPU of its own (client-side Argon2, TLS handshakes,
//! brotli) that must not compete with the measured server on 2 cores. Each prints a
//! JSON line.
//!
//! The runtime rows run in two layouts (see [`Layout`]), each against a fresh runtime
//! with its own idle row: `pinned`, judged — the runtime and the pinger on core 0, the
//! generator on core 1 — and `shared`, shown beside it — no pinning. `--pinned` or
//! `--unpinned` runs one of them only (then that one is judged).
//!
//! ```text
//! cargo xtask bench stall [--quick] [--seconds S] [--warmup S] [--interval-us N]
//!                         [--worker-threads N] [--pinned | --unpinned]
//! ```
//!
//! Writes `target/bench/stall.md` and `target/bench/stall.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::BenchProcesses as Paths;
use crate::bench_procs::{Proc, loadavg, spawn, wait_ready};
use crate::bench_rpc::pinned;
use crate::{ensure_apt, root};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "polycall";
const KEY: &str = "node";
const PIN: &str = "271828";
const SO_PIN: &str = "31415926";
const PIN_VAR: &str = "POLYCALL_BENCH_HSM_PIN";
const USER: &str = "bench";
const PASSWORD: &str = "stall benchmark pass phrase 5150";
const PASSWORD_VAR: &str = "POLYCALL_BENCH_PASSWORD";
/// Target: loaded p99 ≤ this × the same server's idle p99.
const MAX_RATIO: f64 = 3.0;
/// 1 MiB messages a second in the brotli row and its uncompressed control (about what
/// the generator can compress with brotli on this machine's idle time).
const MESSAGES_PER_SECOND: u32 = 40;

struct Options {
    quick: bool,
    warmup: f64,
    seconds: f64,
    interval_us: u64,
    /// `polycall run --worker-threads` (None: the runtime's default).
    worker_threads: Option<usize>,
    /// The runtime rows' process layouts, in the order they run.
    layouts: Vec<Layout>,
}

/// Where the runtime rows' processes run on the machine's cores.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// Judged. The runtime and the pinger on core 0, the workload generator on core 1
    /// (`taskset`): the generator stands in for clients on other machines, and the
    /// runtime's own blocking work (its offload threads) shares the event loop's core —
    /// the hardest case for the claim "nothing blocks the event loop".
    Pinned,
    /// Shown, not judged: no pinning, the generator free to run on either core. On this
    /// kernel (Linux 6.18, PREEMPT_NONE, HZ 250, under KVM) a normal thread woken onto a
    /// core running the generator's SCHED_IDLE threads was seen to wait up to a tick
    /// (3.6–5.5 ms, `perf sched timehist`): the harness's interference, not the server's.
    Shared,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Pinned => "pinned",
            Layout::Shared => "shared",
        }
    }

    /// `taskset -c` CPU lists: (the runtime and the pinger, the workload generator).
    fn cpus(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Layout::Pinned => (Some("0"), Some("1")),
            Layout::Shared => (None, None),
        }
    }
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let quick = args.iter().any(|a| a == "--quick");
        let value = |f: &str| -> Result<Option<f64>> {
            match args.iter().position(|a| a == f) {
                None => Ok(None),
                Some(i) => args
                    .get(i + 1)
                    .with_context(|| format!("{f} needs a value"))?
                    .parse()
                    .map(Some)
                    .with_context(|| format!("{f}: a number")),
            }
        };
        for a in args {
            if a.starts_with("--")
                && ![
                    "--quick",
                    "--seconds",
                    "--warmup",
                    "--interval-us",
                    "--worker-threads",
                    "--pinned",
                    "--unpinned",
                ]
                .contains(&a.as_str())
            {
                bail!("unknown option {a}; see xtask/src/bench_stall.rs");
            }
        }
        let seconds = value("--seconds")?.unwrap_or(if quick { 1.5 } else { 4.0 });
        let warmup = value("--warmup")?.unwrap_or(if quick { 0.5 } else { 1.0 });
        let interval_us = value("--interval-us")?.unwrap_or(1000.0) as u64;
        if seconds <= 0.0 || warmup < 0.0 || interval_us == 0 {
            bail!("--seconds and --interval-us must be positive, --warmup not negative");
        }
        let worker_threads = value("--worker-threads")?.map(|n| n as usize);
        let pinned = args.iter().any(|a| a == "--pinned");
        let unpinned = args.iter().any(|a| a == "--unpinned");
        let layouts = match (pinned, unpinned) {
            (true, false) => vec![Layout::Pinned],
            (false, true) => vec![Layout::Shared],
            _ => vec![Layout::Pinned, Layout::Shared],
        };
        Ok(Options {
            quick,
            warmup,
            seconds,
            interval_us,
            worker_threads,
            layouts,
        })
    }
}

/// Runs `cmd` to completion; fails with its stderr when it fails.
fn output(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for a child started with piped stdout and reads its one JSON line.
fn json_of(what: &str, mut child: Child, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {:.0} s", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading {what}'s JSON line"))
}

/// One row: what runs beside the pinger.
struct Row {
    name: &'static str,
    /// `stall-load --workload` (run under SCHED_IDLE and `nice -n 19`), if any.
    workload: Option<&'static str>,
    /// bench.spin calls in flight on the pinger's own connection.
    spin: usize,
}

/// Measures one row: the workload generator (if any) and the pinger side by side.
fn run_row(
    p: &Paths,
    o: &Options,
    row: &Row,
    layout: Layout,
    endpoint: &str,
    ca: Option<&Path>,
    server: &mut Proc,
) -> Result<Value> {
    server.check_alive()?;
    let (server_cpus, load_cpus) = layout.cpus();
    let load = match row.workload {
        Some(w) => {
            // SCHED_IDLE (and nice 19): the generator runs only on CPU time nothing else
            // wants, so it never delays the server's or the pinger's wake-ups (with plain
            // nice 19, the kernel's scheduler still lets a running generator thread finish
            // its slice, milliseconds, before a woken server thread runs).
            let mut c = pinned(Path::new("chrt"), load_cpus);
            c.args(["--idle", "0", "nice", "-n", "19"])
                .arg(&p.bench)
                .args(["stall-load", "--workload", w, "--endpoint", endpoint])
                .args(["--seconds", &(o.warmup + o.seconds + 0.3).to_string()]);
            if w == "brotli" || w == "echo" {
                // The same traffic for both: what brotli adds is its decompression.
                c.args(["--per-second", &MESSAGES_PER_SECOND.to_string()]);
            }
            if w == "opaque" {
                c.args(["--user", USER, "--password-env", PASSWORD_VAR])
                    .env(PASSWORD_VAR, PASSWORD);
            }
            if let Some(ca) = ca {
                c.arg("--ca").arg(ca);
            }
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            Some(c.spawn().context("spawning the workload generator")?)
        }
        None => None,
    };
    let mut c = pinned(&p.bench, server_cpus);
    c.args(["stall-ping", "--endpoint", endpoint, "--row", row.name])
        .args(["--seconds", &o.seconds.to_string()])
        .args(["--warmup", &o.warmup.to_string()])
        .args(["--interval-us", &o.interval_us.to_string()]);
    if row.spin > 0 {
        c.args(["--spin", &row.spin.to_string(), "--spin-ms", "50"]);
    }
    if let Some(ca) = ca {
        c.arg("--ca").arg(ca);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limit = Duration::from_secs_f64(o.warmup + o.seconds + 60.0);
    let pinger = c.spawn().context("spawning the pinger")?;
    let ping = json_of("the pinger", pinger, limit);
    let load = load.map(|l| json_of("the workload generator", l, limit));
    let mut v = ping?;
    if let Some(l) = load {
        v["load"] = l?;
    }
    v["layout"] = layout.name().into();
    server.check_alive()?;
    Ok(v)
}

/// The CA, the token with the node's key, the OPAQUE user and polycall.toml; returns
/// the configuration file and the CA certificate.
fn setup_runtime(p: &Paths) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let t = &p.tmp;
    let tokens = t.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = t.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    output(
        "softhsm2-util --init-token",
        Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--so-pin", SO_PIN, "--pin", PIN])
            .env("SOFTHSM2_CONF", &conf),
    )?;
    let polycall = |args: &[&str]| {
        let mut c = Command::new(&p.polycall);
        c.env("POLYCALL_LOG", "warn")
            .env_remove("POLYCALL_CONFIG")
            .env_remove("POLYCALL_ENDPOINT")
            .args(args);
        c
    };
    let ca = t.join("ca");
    output(
        "polycall certs init",
        &mut polycall(&["certs", "init", path(&ca)?]),
    )?;
    let cert = t.join("node.pem");
    output(
        "polycall-bench stall-hsm-cert",
        Command::new(&p.bench)
            .args(["stall-hsm-cert", "--ca", path(&ca)?, "--name", "localhost"])
            .args(["--module", MODULE, "--token", TOKEN, "--key", KEY])
            .args(["--pin-env", PIN_VAR, "--out", path(&cert)?])
            .env("SOFTHSM2_CONF", &conf)
            .env(PIN_VAR, PIN),
    )?;
    let users = t.join("auth/users.json");
    let mut add = polycall(&["users", "add", USER, "--users-file", path(&users)?])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning polycall users add")?;
    add.stdin
        .take()
        .context("users add: stdin")?
        .write_all(format!("{PASSWORD}\n").as_bytes())?;
    let out = add.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "polycall users add failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let config = t.join("polycall.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1
[runtime]
endpoint = "127.0.0.1:0"
state_dir = "{state}"
[log]
level = "warn"
[tls]
enabled = true
cert_file = "{cert}"
hsm_module = "{MODULE}"
hsm_token = "{TOKEN}"
hsm_key = "{KEY}"
hsm_pin_env = "{PIN_VAR}"
[auth]
anonymous = true
users_file = "{users}"
"#,
            state = t.join("state").display(),
            cert = cert.display(),
            users = users.display(),
        ),
    )?;
    Ok((config, ca.join("ca.pem"), conf))
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Event-loop stall: ping latency idle and under each workload; table and JSON.
pub(crate) fn bench_stall(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    ensure_apt("softhsm2-util", "softhsm2")?;
    let p = crate::build_bench_processes("stall-tmp")?;
    let target = root().join("target");
    let started = Instant::now();
    let load_at_start = loadavg();
    eprintln!(
        "\n== stall: workload generators run under SCHED_IDLE and `nice -n 19` (they burn CPU of their own — \
         client-side Argon2, TLS handshakes, brotli — that must not compete with the measured \
         server on {} cores); the pinger and the server run at normal priority",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // The runtime: TLS with the key in SoftHSM2, an OPAQUE user, anonymous sessions.
    let (config, ca, softhsm_conf) = setup_runtime(&p).context("preparing the runtime")?;
    // `debug.echo` (the brotli row's target) is served by default only until the
    // runtime learns `runtime.debug_methods`; then it must be asked for.
    let shown = output(
        "polycall config show",
        Command::new(&p.polycall)
            .env("POLYCALL_LOG", "warn")
            .env("SOFTHSM2_CONF", &softhsm_conf)
            .env(PIN_VAR, PIN)
            .arg("--config")
            .arg(&config)
            .args(["config", "show", "--effective"]),
    )?;
    let debug_methods_key = shown.contains("runtime.debug_methods");
    let runtime_rows = [
        Row {
            name: "idle",
            workload: None,
            spin: 0,
        },
        Row {
            name: "opaque",
            workload: Some("opaque"),
            spin: 0,
        },
        Row {
            name: "tls-hsm",
            workload: Some("tls"),
            spin: 0,
        },
        Row {
            name: "brotli",
            workload: Some("brotli"),
            spin: 0,
        },
        Row {
            name: "echo 1 MiB (control)",
            workload: Some("echo"),
            spin: 0,
        },
        Row {
            name: "cpu-noise (control)",
            workload: Some("cpu"),
            spin: 0,
        },
    ];
    let mut rows = Vec::new();
    let measure =
        |row: &Row, layout: Layout, ep: &str, ca: Option<&Path>, server: &mut Proc, which: &str| {
            let mut v = run_row(&p, &o, row, layout, ep, ca, server).unwrap_or_else(|e| {
                eprintln!("{:>22}: FAILED: {e:#}", row.name);
                json!({"row": row.name, "layout": layout.name(), "error": format!("{e:#}")})
            });
            v["server"] = which.into();
            if v.get("error").is_none() {
                eprintln!(
                    "{:>22}: ping p50 {:>6} µs  p99 {:>6} µs  max {:>6} µs  ({} pings){}",
                    row.name,
                    v["p50_us"],
                    v["p99_us"],
                    v["max_us"],
                    v["pings"],
                    v.get("load")
                        .map(|l| format!(
                            "; workload {:.1} ops/s",
                            l["ops_per_sec"].as_f64().unwrap_or(0.0)
                        ))
                        .unwrap_or_default()
                );
            }
            v
        };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &layout in &o.layouts {
        if layout == Layout::Pinned && cores < 2 {
            bail!(
                "the pinned layout needs 2 cores and this machine has {cores}: \
                 run `cargo xtask bench stall --unpinned`"
            );
        }
        let (server_cpus, _) = layout.cpus();
        let ready = p.tmp.join(format!("runtime-{}.endpoint", layout.name()));
        let mut c = pinned(&p.polycall, server_cpus);
        c.env("POLYCALL_LOG", "warn")
            .env("SOFTHSM2_CONF", &softhsm_conf)
            .env(PIN_VAR, PIN)
            .env_remove("POLYCALL_ENDPOINT")
            .arg("--quiet")
            .arg("--config")
            .arg(&config)
            .args(["run", "--endpoint", "127.0.0.1:0", "--endpoint-file"])
            .arg(&ready);
        if debug_methods_key {
            c.args(["--set", "runtime.debug_methods=true"]);
        }
        if let Some(n) = o.worker_threads {
            c.args(["--worker-threads", &n.to_string()]);
        }
        let log = p.tmp.join(format!("runtime-{}.log", layout.name()));
        let mut runtime = spawn("polycall run", c, &log)?;
        let endpoint = wait_ready(&ready, std::slice::from_mut(&mut runtime))?;
        eprintln!(
            "runtime (TLS, key in SoftHSM2, OPAQUE user, anonymous pinger{}) at {endpoint}, layout {}: {}",
            if debug_methods_key {
                ", --set runtime.debug_methods=true"
            } else {
                ""
            },
            layout.name(),
            match layout {
                Layout::Pinned => "runtime and pinger on core 0, workload generator on core 1",
                Layout::Shared => "no pinning",
            }
        );
        for row in &runtime_rows {
            rows.push(measure(
                row,
                layout,
                &endpoint,
                Some(&ca),
                &mut runtime,
                "runtime",
            ));
        }
        drop(runtime);
    }

    // The direct server: default configuration, sys.ping and bench.spin.
    let ready = p.tmp.join("direct.ready");
    let mut c = Command::new(&p.bench);
    c.args(["stall-serve", "--listen", "127.0.0.1:0", "--ready"])
        .arg(&ready);
    let mut direct = spawn("stall-serve", c, &p.tmp.join("direct.log"))?;
    let endpoint = wait_ready(&ready, std::slice::from_mut(&mut direct))?;
    for row in [
        Row {
            name: "idle (direct Server)",
            workload: None,
            spin: 0,
        },
        Row {
            name: "cpu-handler",
            workload: None,
            spin: 1,
        },
    ] {
        rows.push(measure(
            &row,
            Layout::Shared,
            &endpoint,
            None,
            &mut direct,
            "direct",
        ));
    }
    drop(direct);

    judge(&mut rows);
    let command = format!("cargo xtask bench stall {}", args.join(" "));
    let md = markdown(&o, &rows, command.trim(), load_at_start, debug_methods_key);
    println!("\n{md}");
    std::fs::write(target.join("bench/stall.md"), &md)?;
    let doc = json!({
        "command": command.trim(),
        "quick": o.quick,
        "warmup_s": o.warmup,
        "seconds_per_row": o.seconds,
        "interval_us": o.interval_us,
        "max_ratio": MAX_RATIO,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_1m_at_start": load_at_start,
        "debug_methods_set": debug_methods_key,
        "wall_s": started.elapsed().as_secs_f64(),
        "rows": rows,
    });
    std::fs::write(
        target.join("bench/stall.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    println!("written: target/bench/stall.md and target/bench/stall.json");
    Ok(())
}

/// Whether a row is its server's idle baseline.
fn is_idle(r: &Value) -> bool {
    r["row"].as_str().is_some_and(|n| n.starts_with("idle"))
}

/// Whether a row is a control (no traffic to the server; not judged).
fn is_control(r: &Value) -> bool {
    r["row"].as_str().is_some_and(|n| n.ends_with("(control)"))
}

/// Whether a row's layout is judged: the pinned layout when the run has it (the shared
/// layout is then shown beside it), else the shared one; the direct server's rows (no
/// generator process to place) always.
fn judged_layout(r: &Value, pinned_ran: bool) -> bool {
    r["server"] == "direct" || !pinned_ran || r["layout"] == "pinned"
}

/// Adds, to every loaded row, its server's idle figures (same server, same layout), the
/// p99 ratio and PASS / FAIL (or `control`, or `shown` for a layout not judged).
fn judge(rows: &mut [Value]) {
    let snapshot = rows.to_vec();
    let pinned_ran = snapshot.iter().any(|r| r["layout"] == "pinned");
    for r in rows.iter_mut() {
        let idle = snapshot.iter().find(|x| {
            is_idle(x)
                && x["server"] == r["server"]
                && x["layout"] == r["layout"]
                && x.get("error").is_none()
        });
        if is_idle(r) {
            r["result"] = "baseline".into();
            continue;
        }
        let (Some(idle), Some(p99)) = (idle, r["p99_us"].as_f64()) else {
            r["result"] = "n/a".into();
            continue;
        };
        let base = idle["p99_us"].as_f64().unwrap_or(f64::NAN).max(1.0);
        let ratio = p99 / base;
        r["idle_p50_us"] = idle["p50_us"].clone();
        r["idle_p99_us"] = idle["p99_us"].clone();
        r["p99_ratio"] = ratio.into();
        r["result"] = if is_control(r) {
            "control"
        } else if !judged_layout(r, pinned_ran) {
            "shown"
        } else if ratio <= MAX_RATIO {
            "PASS"
        } else {
            "FAIL"
        }
        .into();
    }
}

/// What the workload achieved, in words.
fn workload(r: &Value) -> String {
    if r["spin_in_flight"].as_u64().unwrap_or(0) > 0 {
        return format!(
            "{} × {} ms spins in flight on the ping connection; {} completed",
            r["spin_in_flight"], r["spin_ms"], r["spin_calls"]
        );
    }
    let Some(l) = r.get("load") else {
        return "none".to_owned();
    };
    let rate = l["ops_per_sec"].as_f64().unwrap_or(0.0);
    let errors = match l["errors"].as_u64().unwrap_or(0) {
        0 => String::new(),
        n => format!(", {n} errors"),
    };
    let nice = match (l["nice"].as_i64(), l["lowest_thread_nice_seen"].as_i64()) {
        (Some(n), Some(low)) if low < n => {
            format!(", nice {n} (threads that set nice {low} were put back)")
        }
        (Some(n), _) => format!(", nice {n}"),
        _ => String::new(),
    };
    match l["workload"].as_str().unwrap_or("") {
        "opaque" => format!(
            "{} concurrent: {rate:.0} logins/s{errors}{nice}",
            l["concurrency"]
        ),
        "tls" => format!(
            "{} concurrent: {rate:.0} full handshakes/s{errors}{nice}",
            l["concurrency"]
        ),
        "cpu" => format!(
            "{} threads busy-computing, no traffic to the server{nice}",
            l["concurrency"]
        ),
        "echo" => format!(
            "{} connections: {rate:.1} × 1 MiB/s, uncompressed (the brotli row's traffic without its decompression){errors}{nice}",
            l["concurrency"]
        ),
        "brotli" => {
            let ratio = l["wire_ratio"].as_f64().unwrap_or(f64::NAN);
            format!(
                "{} connections: {rate:.1} × 1 MiB/s, on the wire {ratio:.2}× ({}){errors}{nice}",
                l["concurrency"],
                if ratio < 0.9 {
                    "compressed"
                } else {
                    "NOT compressed"
                }
            )
        }
        other => format!("{other}: {rate:.0} ops/s{errors}{nice}"),
    }
}

fn markdown(o: &Options, rows: &[Value], command: &str, load: f64, debug_key: bool) -> String {
    let mut md = format!(
        "# Event-loop stall benchmark\n\n`{command}` — `sys.ping` latency on one open connection, one \
         ping at a time every {} µs, {} s per row after {} s of warm-up; {} cores; 1-minute load \
         average at the start {load:.2}. Target: loaded p99 ≤ {MAX_RATIO}× the idle p99 of the same \
         server in the same layout.\n\n\
         Servers: `runtime` = release `polycall run` (defaults: one event loop) with TLS whose key \
         is in SoftHSM2 (PKCS#11), an OPAQUE user and anonymous sessions{}; `direct` = a \
         polycall `Server` with default `ServerConfig` / `ConnectionConfig` on a default \
         multi-thread tokio runtime (`polycall-bench stall-serve`). The workload generators run \
         in their own process under SCHED_IDLE and `nice -n 19`; the pinger runs at normal \
         priority in its own process; the cpu-handler calls share the pinger's connection.\n\n\
         Layouts of the runtime rows: `pinned` (judged) — the runtime and the pinger on core 0, \
         the workload generator on core 1 (`taskset`): the generator stands in for clients on \
         other machines, while the runtime's own blocking work (handshakes, OPAQUE, \
         decompression on its offload threads) shares the event loop's core; `shared` (shown, \
         not judged) — no pinning: the generator's threads, though SCHED_IDLE, were seen \
         (`perf sched timehist`) to keep a woken normal thread waiting up to a scheduler tick \
         on this kernel, which is the harness's interference. The controls are not judged: \
         `echo 1 MiB` is the brotli row's traffic uncompressed (what the traffic alone costs), \
         `cpu-noise` sends nothing (what the generators' CPU use alone costs).\n\n\
         | row | server | layout | idle p50 / p99 µs | loaded p50 / p99 µs | loaded max µs | p99 ratio | target | result | workload during the row |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        o.interval_us,
        o.seconds,
        o.warmup,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if debug_key {
            " (`--set runtime.debug_methods=true`)"
        } else {
            ""
        },
    );
    for r in rows {
        let name = r["row"].as_str().unwrap_or("");
        let server = r["server"].as_str().unwrap_or("");
        let layout = if server == "direct" {
            "—"
        } else {
            r["layout"].as_str().unwrap_or("")
        };
        if let Some(e) = r.get("error") {
            md.push_str(&format!(
                "| {name} | {server} | {layout} | | | | | | failed: {} | |\n",
                e.as_str()
                    .unwrap_or("")
                    .replace('|', "/")
                    .replace('\n', " ")
            ));
            continue;
        }
        let pair = |a: &str, b: &str| format!("{} / {}", r[a], r[b]);
        if is_idle(r) {
            md.push_str(&format!(
                "| {name} | {server} | {layout} | {} | — | {} | — | baseline | — | none |\n",
                pair("p50_us", "p99_us"),
                r["max_us"],
            ));
            continue;
        }
        let ratio = r["p99_ratio"]
            .as_f64()
            .map_or("–".to_owned(), |x| format!("{x:.2}×"));
        md.push_str(&format!(
            "| {name} | {server} | {layout} | {} | {} | {} | {ratio} | {} | {} | {} |\n",
            if r["idle_p50_us"].is_null() {
                "–".to_owned()
            } else {
                pair("idle_p50_us", "idle_p99_us")
            },
            pair("p50_us", "p99_us"),
            r["max_us"],
            if is_control(r) || r["result"] == "shown" {
                "not judged".to_owned()
            } else {
                format!("≤ {MAX_RATIO}×")
            },
            r["result"].as_str().unwrap_or(""),
            workload(r),
        ));
    }
    let pass = rows.iter().filter(|r| r["result"] == "PASS").count();
    let fail = rows.iter().filter(|r| r["result"] == "FAIL").count();
    md.push_str(&format!(
        "\n{pass} rows pass, {fail} fail. `stall.json` also has p90, p99.9 and p99 corrected for \
         coordinated omission (one ping at a time sees one slow sample per stall).\n"
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_judged_against_their_own_servers_idle_p99() {
        let mut rows = vec![
            json!({"row": "idle", "server": "runtime", "layout": "pinned", "p50_us": 50, "p99_us": 100}),
            json!({"row": "opaque", "server": "runtime", "layout": "pinned", "p50_us": 60, "p99_us": 290}),
            json!({"row": "tls-hsm", "server": "runtime", "layout": "pinned", "p50_us": 60, "p99_us": 310}),
            json!({"row": "idle (direct Server)", "server": "direct", "layout": "shared", "p50_us": 30, "p99_us": 1000}),
            json!({"row": "cpu-handler", "server": "direct", "layout": "shared", "p50_us": 900, "p99_us": 2500}),
            json!({"row": "brotli", "server": "runtime", "layout": "pinned", "error": "boom"}),
            json!({"row": "cpu-noise (control)", "server": "runtime", "layout": "pinned", "p50_us": 90, "p99_us": 900}),
            json!({"row": "idle", "server": "runtime", "layout": "shared", "p50_us": 50, "p99_us": 200}),
            json!({"row": "tls-hsm", "server": "runtime", "layout": "shared", "p50_us": 60, "p99_us": 1000}),
        ];
        judge(&mut rows);
        assert_eq!(rows[0]["result"], "baseline");
        assert_eq!(rows[1]["result"], "PASS");
        assert_eq!(rows[2]["result"], "FAIL");
        assert_eq!(
            rows[4]["result"], "PASS",
            "compared with the direct idle row"
        );
        assert_eq!(rows[4]["p99_ratio"], 2.5);
        assert_eq!(rows[5]["result"], "n/a");
        assert_eq!(rows[6]["result"], "control", "a control is never judged");
        assert_eq!(
            rows[8]["p99_ratio"], 5.0,
            "against the idle row of its own layout"
        );
        assert_eq!(
            rows[8]["result"], "shown",
            "the shared layout is shown beside the pinned one"
        );
        let mut alone = vec![rows[7].clone(), rows[8].clone()];
        judge(&mut alone);
        assert_eq!(
            alone[1]["result"], "FAIL",
            "judged when it is the only layout run"
        );
        let o = Options::parse(&["--quick".to_owned()]).expect("valid");
        assert_eq!(o.layouts, [Layout::Pinned, Layout::Shared]);
        let md = markdown(&o, &rows, "cargo xtask bench stall --quick", 0.5, false);
        assert!(
            md.contains("| opaque | runtime | pinned | 50 / 100 | 60 / 290 |"),
            "{md}"
        );
        assert!(md.contains("| cpu-handler | direct | — |"), "{md}");
        assert!(md.contains("failed: boom"), "{md}");
        assert!(md.contains("| 9.00× | not judged | control |"), "{md}");
        assert!(md.contains("| 5.00× | not judged | shown |"), "{md}");
        assert!(md.contains("nice -n 19"), "{md}");
        assert!(Options::parse(&["--bogus".to_owned()]).is_err());
        let pinned = Options::parse(&["--pinned".to_owned()]).expect("valid");
        assert_eq!(pinned.layouts, [Layout::Pinned]);
    }
}
