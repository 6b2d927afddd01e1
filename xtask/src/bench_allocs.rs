//! `cargo xtask bench allocs`: heap allocations per call in the serving process, on the
//! release build: counted by Valgrind's DHAT (`valgrind --tool=dhat`) for the direct
//! server, by perf uprobes on mimalloc for the runtime.
//!
//! - **direct**: `polycall-bench serve-polycall` under DHAT, called by `polycall-bench
//!   load` (64 B echoes, 16 in flight, 1 connection);
//! - **routed**: `polycall run` (its defaults), with `polycall-bench provide` serving
//!   `bench.echo` through it, the same load: the runtime's allocations. The runtime
//!   allocates with mimalloc, which DHAT does not see: perf uprobes count its calls to
//!   mimalloc's entry points instead (`mi_malloc_aligned`, `mi_zalloc_aligned`,
//!   `mi_realloc_aligned`: Rust's `alloc`, `alloc_zeroed` and `realloc`, as DHAT counts
//!   blocks), attached only while each load runs.
//!
//! Each system runs twice, with `--calls` small and large; the allocations counted over
//! the process's life, difference over difference, are what a call adds (start-up,
//! connection set-up and shutdown cancel out). Under DHAT a process runs some 50×
//! slower, which changes timing but not what a call allocates.
//!
//! ```text
//! cargo xtask bench allocs [--calls N]   # N: the larger run's calls (default 20000)
//! ```
//!
//! Targets (issue 19): ≤ 3 per direct call, ≤ 6 per routed call in the runtime. Writes
//! `target/bench/allocs.md` and `.json`.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::bench_procs::{BenchProcesses, arg, build_bench_processes, spawn, wait_ready};
use crate::bench_rpc::Mode;
use crate::{ensure_apt, root};

/// What one system's serving process allocated in one run.
struct Counted {
    calls: u64,
    blocks: u64,
    /// Bytes allocated (DHAT only).
    bytes: Option<u64>,
}

/// The mimalloc entry points the runtime's allocator calls (Rust's `alloc`,
/// `alloc_zeroed`, `realloc`), counted with perf uprobes.
const MIMALLOC_ENTRIES: [&str; 3] = [
    "mi_malloc_aligned",
    "mi_zalloc_aligned",
    "mi_realloc_aligned",
];

/// Makes `calls` 64-byte calls (16 in flight, 1 connection) to `endpoint`.
fn load(p: &BenchProcesses, endpoint: &str, calls: u64) -> Result<()> {
    let out = Command::new(&p.bench)
        .args(["load", "--peer", "polycall", "--endpoint", endpoint])
        .args([
            "--payload",
            "64",
            "--concurrency",
            "16",
            "--connections",
            "1",
        ])
        .args(["--calls", &calls.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running polycall-bench load")?;
    if !out.status.success() {
        bail!("the load failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the load's output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    match line["calls"].as_u64() {
        Some(n) if n == calls => Ok(()),
        other => bail!("the load made {other:?} calls, not {calls}"),
    }
}

/// The direct server under DHAT for a load of `calls` calls: DHAT's totals over the
/// process's life.
fn count_direct(p: &BenchProcesses, calls: u64) -> Result<Counted> {
    let tag = format!("direct-{calls}");
    let ready = p.tmp.join(format!("{tag}.ready"));
    let log = p.tmp.join(format!("{tag}.dhat.log"));
    let mut c = Command::new("valgrind");
    c.arg("--tool=dhat")
        .arg(format!(
            "--dhat-out-file={}",
            p.tmp.join(format!("{tag}.dhat.json")).display()
        ))
        .arg(&p.bench)
        .args(["serve-polycall", "--listen", "127.0.0.1:0", "--ready"])
        .arg(&ready);
    let mut procs = vec![spawn("serve-polycall under DHAT", c, &log)?];
    let endpoint = wait_ready(&ready, &mut procs)?;
    load(p, &endpoint, calls)?;
    // DHAT writes its totals as the process exits.
    procs.remove(0).terminate()?;
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let (bytes, blocks) = dhat_total(&text)
        .with_context(|| format!("no DHAT total in {} (did the process exit?)", log.display()))?;
    Ok(Counted {
        calls,
        blocks,
        bytes: Some(bytes),
    })
}

/// A runtime with a provider, and for each of `runs` a load of that many calls with
/// perf counting the runtime's calls into mimalloc (uprobes) while it lasts.
fn count_routed(p: &BenchProcesses, runs: [u64; 2]) -> Result<[Counted; 2]> {
    ensure_apt("perf", "linux-perf")?;
    let _probes = Probes::add(&p.polycall.display().to_string())?;
    // The runtime (first) and a provider, as `bench rpc` starts them.
    let (procs, endpoint) = crate::bench_rpc::start_system("routed", Mode::Default, p)?;
    load(p, &endpoint, 1000)?; // warm-up: pools, the provider's routes
    let runtime = procs[0].pid().to_string();
    let events = MIMALLOC_ENTRIES
        .iter()
        .map(|e| format!("probe_polycall:{e}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut counted = Vec::new();
    for calls in runs {
        let out = p.tmp.join(format!("routed-{calls}.perf"));
        let mut c = Command::new("perf");
        c.args(["stat", "-x", ",", "-e", &events, "-p", &runtime, "-o"])
            .arg(&out);
        let perf = spawn(
            "perf stat",
            c,
            &p.tmp.join(format!("routed-{calls}.perf.log")),
        )?;
        std::thread::sleep(std::time::Duration::from_millis(500)); // attached
        load(p, &endpoint, calls)?;
        // perf writes its counts as it exits.
        perf.interrupt()?;
        let text = std::fs::read_to_string(&out)?;
        counted.push(Counted {
            calls,
            blocks: perf_total(&text).with_context(|| format!("no counts in {}", out.display()))?,
            bytes: None,
        });
    }
    let [a, b]: [Counted; 2] = counted
        .try_into()
        .map_err(|_| anyhow::anyhow!("two runs"))?;
    Ok([a, b])
}

/// The sum of the counts in `perf stat -x ,` output (`COUNT,,EVENT,...` lines): `None`
/// unless every one of [`MIMALLOC_ENTRIES`] has its count.
fn perf_total(text: &str) -> Option<u64> {
    MIMALLOC_ENTRIES
        .iter()
        .map(|entry| {
            let event = format!("probe_polycall:{entry}");
            let line = text.lines().find(|l| l.split(',').any(|f| f == event))?;
            line.split(',').next()?.trim().parse::<u64>().ok()
        })
        .sum()
}

/// The uprobes on mimalloc's entry points, removed when dropped (on every path out).
struct Probes;

impl Probes {
    fn add(binary: &str) -> Result<Probes> {
        let _ = Command::new("perf")
            .args(["probe", "-d", "probe_polycall:*"])
            .output();
        let probes = Probes;
        for entry in MIMALLOC_ENTRIES {
            let out = Command::new("perf")
                .args(["probe", "-x", binary, "--add", entry])
                .output()
                .context("running perf probe")?;
            if !out.status.success() {
                bail!(
                    "perf probe could not add a uprobe on {entry} (root and perf are needed): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(probes)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        let _ = Command::new("perf")
            .args(["probe", "-d", "probe_polycall:*"])
            .output();
    }
}

/// DHAT's summary line `Total:     1,234 bytes in 56 blocks` → (bytes, blocks).
fn dhat_total(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().find(|l| l.contains("Total:"))?;
    let number = |s: &str| s.replace(',', "").parse::<u64>().ok();
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "Total:")?;
    let bytes = number(words.get(at + 1)?)?;
    let blocks = number(words.get(at + 4)?)?;
    (words.get(at + 2) == Some(&"bytes") && words.get(at + 5) == Some(&"blocks"))
        .then_some((bytes, blocks))
}

/// Runs the benchmark: see the module docs.
pub(crate) fn bench_allocs(args: &[String]) -> Result<()> {
    let large: u64 = arg(args, "--calls", 20_000)?;
    if large < 200 {
        bail!("--calls must be at least 200");
    }
    let small = large / 4;
    ensure_apt("valgrind", "valgrind")?;
    let p = build_bench_processes("allocs-tmp")?;
    let mut rows = Vec::new();
    for (system, target) in [("direct", 3.0), ("routed", 6.0)] {
        let [a, b] = match system {
            "direct" => [count_direct(&p, small)?, count_direct(&p, large)?],
            _ => count_routed(&p, [small, large])?,
        };
        let per_call = (b.blocks as f64 - a.blocks as f64) / (b.calls - a.calls) as f64;
        let bytes_per_call = match (a.bytes, b.bytes) {
            (Some(x), Some(y)) => Some((y as f64 - x as f64) / (b.calls - a.calls) as f64),
            _ => None,
        };
        eprintln!("{system:>8}: {per_call:.2} allocations a call");
        rows.push(json!({
            "system": system, "allocations_per_call": per_call, "bytes_per_call": bytes_per_call,
            "target": target, "pass": per_call <= target,
            "runs": [
                {"calls": a.calls, "blocks": a.blocks, "bytes": a.bytes},
                {"calls": b.calls, "blocks": b.blocks, "bytes": b.bytes},
            ],
        }));
    }
    let mut md = format!(
        "# Allocations per call\n\n`cargo xtask bench allocs --calls {large}`: allocations \
         of the serving process (direct: DHAT's blocks; routed: perf uprobes on mimalloc's \
         entry points, which DHAT does not see), runs of {small} and {large} calls (64 B, 16 in \
         flight, 1 connection), difference over difference.\n\n| system | allocations a call | \
         bytes a call | target | result |\n|---|---:|---:|---:|---|\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.2} | {} | ≤ {} | {} |\n",
            r["system"].as_str().unwrap_or("?"),
            r["allocations_per_call"].as_f64().unwrap_or(f64::NAN),
            match r["system"].as_str() {
                Some("direct") =>
                    format!("{:.0}", r["bytes_per_call"].as_f64().unwrap_or(f64::NAN)),
                _ => "not counted".to_owned(),
            },
            r["target"],
            if r["pass"] == true { "PASS" } else { "FAIL" },
        ));
    }
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("allocs.md"), &md)?;
    std::fs::write(
        dir.join("allocs.json"),
        serde_json::to_string_pretty(&json!({ "rows": rows }))?,
    )?;
    println!("{md}");
    eprintln!("wrote target/bench/allocs.md and allocs.json");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dhat_total;

    #[test]
    fn reads_dhat_s_total() {
        let log = "==12== DHAT, a dynamic heap analysis tool\n\
                   ==12== Total:     1,234,567 bytes in 8,910 blocks\n\
                   ==12== At t-gmax: 5 bytes in 1 blocks\n";
        assert_eq!(dhat_total(log), Some((1_234_567, 8_910)));
        assert_eq!(dhat_total("==12== Total: lots"), None);
        assert_eq!(dhat_total("nothing here"), None);
        let perf = "# started on Mon\n\n91954,,probe_polycall:mi_malloc_aligned,1,100.00,,\n\
                    0,,probe_polycall:mi_zalloc_aligned,1,100.00,,\n\
                    10074,,probe_polycall:mi_realloc_aligned,1,100.00,,\n";
        assert_eq!(super::perf_total(perf), Some(102_028));
        assert_eq!(
            super::perf_total("<not counted>,,probe_polycall:mi_malloc_aligned"),
            None
        );
        assert_eq!(super::perf_total("nothing"), None);
        // One event's line missing (cut short): no total rather than a low one.
        let cut = "5,,probe_polycall:mi_malloc_aligned,,\n6,,probe_polycall:mi_zalloc_aligned,,\n";
        assert_eq!(super::perf_total(cut), None);
    }
}
