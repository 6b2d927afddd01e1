//! What the benchmarks that run processes share: building them, starting one with its
//! stderr in a log, waiting for its ready file, killing it when done, and the load average
//! the results are read against.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

/// The release benchmark processes (`polycall-bench`, `polycall`) and a fresh scratch
/// directory under `target/bench/`.
pub(crate) struct BenchProcesses {
    /// `target/release/polycall-bench`.
    pub(crate) bench: PathBuf,
    /// `target/release/polycall`.
    pub(crate) polycall: PathBuf,
    /// The scratch directory, emptied.
    pub(crate) tmp: PathBuf,
}

/// Builds the benchmark processes (release) and empties `target/bench/<scratch>`.
pub(crate) fn build_bench_processes(scratch: &str) -> Result<BenchProcesses> {
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
    let p = BenchProcesses {
        bench: target.join("release/polycall-bench"),
        polycall: target.join("release/polycall"),
        tmp: target.join("bench").join(scratch),
    };
    let _ = std::fs::remove_dir_all(&p.tmp);
    std::fs::create_dir_all(&p.tmp)?;
    Ok(p)
}

/// A benchmark process, killed when dropped.
pub(crate) struct Proc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Proc {
    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited, naming its log.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its stderr is in {}",
                self.what,
                self.log.display()
            );
        }
        Ok(())
    }
}

impl Proc {
    /// Stops the process with SIGTERM (so it, or a tool running it, can finish its
    /// output) and waits for it (30 s at most, then kills it and fails).
    pub(crate) fn terminate(self) -> Result<std::process::ExitStatus> {
        self.stop("-TERM")
    }

    /// Stops the process with SIGINT (perf finishes its output on it) and waits for it
    /// as [`Proc::terminate`] does.
    pub(crate) fn interrupt(self) -> Result<std::process::ExitStatus> {
        self.stop("-INT")
    }

    fn stop(mut self, signal: &str) -> Result<std::process::ExitStatus> {
        let pid = self.pid().to_string();
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .with_context(|| format!("signalling {}", self.what))?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{} did not stop within 30 s of SIGTERM", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server process; its stderr goes to `log`.
pub(crate) fn spawn(what: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    Ok(Proc {
        child,
        what: what.to_owned(),
        log: log.to_owned(),
    })
}

/// Waits (30 s at most) until `file` holds a whole line — what a started process writes
/// when it is ready — and returns it; fails as soon as one of `procs` has exited.
pub(crate) fn wait_ready(file: &Path, procs: &mut [Proc]) -> Result<String> {
    let started = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(file)
            && t.ends_with('\n')
        {
            return Ok(t.trim().to_owned());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{} never became ready", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The 1-minute load average (other work on the machine skews the figures).
pub(crate) fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The median of `xs` (the upper one of an even count; NaN when empty).
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The value after `--name` in `args`, parsed; `default` when the flag is absent.
pub(crate) fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a value of the right kind")),
        None => Ok(default),
    }
}

/// The median of `field` over the rows whose `"system"` is `system`.
pub(crate) fn median_of(rows: &[serde_json::Value], system: &str, field: &str) -> f64 {
    median(
        rows.iter()
            .filter(|r| r["system"] == system)
            .filter_map(|r| r[field].as_f64())
            .collect(),
    )
}

/// Writes `target/bench/NAME.md` and `NAME.json`, prints the Markdown and says where
/// both went.
pub(crate) fn write_report(name: &str, md: &str, json: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context;
    let out_dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join(format!("{name}.md")), md)
        .with_context(|| format!("writing target/bench/{name}.md"))?;
    std::fs::write(
        out_dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    println!("{md}");
    eprintln!("written: target/bench/{name}.md, target/bench/{name}.json");
    Ok(())
}
