//! `cargo xtask bench rpc`: calls/s, latency and CPU of polycall and its peers, each
//! server and client in its own process.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

/// CPU seconds used so far by process `pid` (user + system; USER_HZ is 100).
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// A benchmark process, killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, pin: Option<&str>) -> Result<Proc> {
    let mut c = match pin {
        Some(cpus) => {
            let mut t = Command::new("taskset");
            t.arg("-c")
                .arg(cpus)
                .arg(cmd.get_program())
                .args(cmd.get_args());
            t
        }
        None => std::mem::replace(cmd, Command::new("true")),
    };
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Ok(Proc(c.spawn().context("spawning a benchmark process")?))
}

fn wait_ready(file: &Path) -> Result<String> {
    let started = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(file)
            && t.ends_with('\n')
        {
            return Ok(t.trim().to_owned());
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            bail!("{} never became ready", file.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Calls/s, latency and CPU of raw TCP echo, polycall direct and polycall routed,
/// each server and client in its own process.
pub(crate) fn bench_rpc(quick: bool, pinned: bool) -> Result<()> {
    run(
        "build the benchmark processes (release)",
        cargo().args([
            "build",
            "--release",
            "-p",
            "polycall-bench",
            "-p",
            "polycall-cli",
        ]),
    )?;
    let target = root().join("target");
    let bench = target.join("release/polycall-bench");
    let polycall = target.join("release/polycall");
    let tmp = target.join("bench/rpc-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let (server_pin, client_pin) = if pinned {
        (Some("0"), Some("1"))
    } else {
        (None, None)
    };
    let payloads: &[usize] = if quick {
        &[64, 4096]
    } else {
        &[64, 4096, 262_144]
    };
    let concurrencies: &[usize] = if quick { &[1, 16] } else { &[1, 16, 64] };
    let connections: &[usize] = if quick { &[1] } else { &[1, 4] };
    let seconds = if quick { "1" } else { "3" };
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for system in ["raw", "direct", "routed"] {
        let ready = tmp.join(format!("{system}.ready"));
        let mut procs = Vec::new();
        let endpoint = match system {
            "raw" => {
                procs.push(spawn(
                    Command::new(&bench)
                        .args(["serve-raw", "--listen", "127.0.0.1:0", "--ready"])
                        .arg(&ready),
                    server_pin,
                )?);
                wait_ready(&ready)?
            }
            "direct" => {
                procs.push(spawn(
                    Command::new(&bench)
                        .args(["serve-polycall", "--listen", "127.0.0.1:0", "--ready"])
                        .arg(&ready),
                    server_pin,
                )?);
                wait_ready(&ready)?
            }
            _ => {
                procs.push(spawn(
                    Command::new(&polycall)
                        .args([
                            "--quiet",
                            "run",
                            "--endpoint",
                            "127.0.0.1:0",
                            "--endpoint-file",
                        ])
                        .arg(&ready)
                        .arg("--state-dir")
                        .arg(tmp.join("state")),
                    server_pin,
                )?);
                let ep = wait_ready(&ready)?;
                let provided = tmp.join("provider.ready");
                procs.push(spawn(
                    Command::new(&bench)
                        .args(["provide", "--runtime", &ep, "--ready"])
                        .arg(&provided),
                    server_pin,
                )?);
                wait_ready(&provided)?;
                ep
            }
        };
        let kind = if system == "raw" { "raw" } else { "polycall" };
        for &payload in payloads {
            for &conc in concurrencies {
                for &conns in connections {
                    let server_cpu0: f64 = procs.iter().map(|p| cpu_of(p.0.id())).sum();
                    let mut load = match client_pin {
                        Some(cpus) => {
                            let mut t = Command::new("taskset");
                            t.arg("-c").arg(cpus).arg(&bench);
                            t
                        }
                        None => Command::new(&bench),
                    };
                    let out = load
                        .args(["load", "--kind", kind, "--endpoint", &endpoint])
                        .args([
                            "--payload",
                            &payload.to_string(),
                            "--concurrency",
                            &conc.to_string(),
                        ])
                        .args(["--connections", &conns.to_string(), "--seconds", seconds])
                        .output()
                        .context("running the load generator")?;
                    if !out.status.success() {
                        bail!(
                            "load {system} failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    let server_cpu =
                        procs.iter().map(|p| cpu_of(p.0.id())).sum::<f64>() - server_cpu0;
                    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                    v["system"] = system.into();
                    v["payload"] = payload.into();
                    v["concurrency"] = conc.into();
                    v["connections"] = conns.into();
                    v["server_cpu_s"] = server_cpu.into();
                    let cpu = v["client_cpu_s"].as_f64().unwrap_or(0.0) + server_cpu;
                    v["calls_per_cpu_s"] =
                        (v["calls"].as_f64().unwrap_or(0.0) / cpu.max(1e-9)).into();
                    eprintln!(
                        "{system:>6} {payload:>7} B × {conc:>2} in flight × {conns} conn: {:.0} calls/s",
                        v["calls_per_sec"].as_f64().unwrap_or(0.0)
                    );
                    rows.push(v);
                }
            }
        }
        drop(procs);
    }
    let raw_of = |r: &serde_json::Value| {
        rows.iter()
            .find(|x| {
                x["system"] == "raw"
                    && x["payload"] == r["payload"]
                    && x["concurrency"] == r["concurrency"]
                    && x["connections"] == r["connections"]
            })
            .and_then(|x| x["calls_per_sec"].as_f64())
    };
    let mut table = format!(
        "mode: {}\n\n| system | payload | in flight | conns | calls/s | vs raw TCP | p50 µs | p99 µs | p99.9 µs | client CPU s | server CPU s | calls per CPU-s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        if pinned {
            "pinned (servers on core 0, client on core 1)"
        } else {
            "default OS scheduling"
        }
    );
    for r in &rows {
        let cps = r["calls_per_sec"].as_f64().unwrap_or(0.0);
        let ratio = raw_of(r).map_or("–".to_owned(), |raw| format!("{:.2}×", cps / raw));
        table.push_str(&format!(
            "| {} | {} B | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} | {:.0} |\n",
            r["system"].as_str().unwrap_or(""),
            r["payload"],
            r["concurrency"],
            r["connections"],
            cps,
            ratio,
            r["p50_us"],
            r["p99_us"],
            r["p999_us"],
            r["client_cpu_s"].as_f64().unwrap_or(0.0),
            r["server_cpu_s"].as_f64().unwrap_or(0.0),
            r["calls_per_cpu_s"].as_f64().unwrap_or(0.0)
        ));
    }
    println!("\n{table}");
    std::fs::write(target.join("bench/rpc.md"), &table)?;
    std::fs::write(
        target.join("bench/rpc.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    println!("written: target/bench/rpc.md and target/bench/rpc.json");
    Ok(())
}
