//! `cargo xtask bench bindings`: client calls/s of the language bindings against a
//! release runtime's `debug.echo`, beside the Rust client's, in one run.
//!
//! ```text
//! cargo xtask bench bindings [--seconds S] [--size N] [--inflight K]
//! ```
//!
//! One runtime (`polycall run`, release) serves every client in turn: the Rust client
//! (`polycall bindgen bench`), the Python client (`bindings/python/bench/client.py`) and
//! the Node client (`bindings/typescript/dist/bench/client.js`, built when its sources
//! exist). Each keeps K calls of N bytes in flight on one connection, 1 s of warm-up,
//! then S seconds counted. Writes `target/bench/bindings.md`, `target/bench/bindings.json`
//! and the "Bindings" section of `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench_procs::arg;
use crate::{cargo, root, run};

/// Installs a Python package with pip when `import MODULE` fails; an error when it still
/// does not import. The binding works without these packages (zstd is then negotiated
/// off), but its tests exercise them, so CI and the benchmarks need them installed: a
/// missing package fails, never skips.
pub(crate) fn ensure_pip(module: &str, package: &str) -> Result<()> {
    let importable = |py: &str| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if importable("python3") {
        return Ok(());
    }
    let plain = run(
        &format!("pip install {package}"),
        Command::new("python3").args(["-m", "pip", "install", "--quiet", package]),
    );
    if plain.is_err() {
        // Debian's own python3 refuses pip outside a virtual environment (PEP 668).
        let _ = run(
            &format!("pip install {package} (system python)"),
            Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--break-system-packages",
                package,
            ]),
        );
    }
    if !importable("python3") {
        bail!(
            "python package {package} is not installed and pip could not install it \
             (`python3 -m pip install {package}`); `import {module}` fails"
        );
    }
    Ok(())
}

struct Runtime {
    child: Child,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_runtime(polycall: &Path, dir: &Path) -> Result<(Runtime, String)> {
    let ep_file = dir.join("endpoint");
    let log = std::fs::File::create(dir.join("runtime.log")).context("runtime log")?;
    let child = Command::new(polycall)
        .args([
            "--quiet",
            "run",
            // The bindings' bench clients call debug.echo.
            "--debug-methods",
            "--endpoint",
            "127.0.0.1:0",
            "--endpoint-file",
        ])
        .arg(&ep_file)
        .arg("--state-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", polycall.display()))?;
    let rt = Runtime { child };
    let started = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&ep_file)
            && !s.trim().is_empty()
        {
            return Ok((rt, s.trim().to_owned()));
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "the runtime did not write {} within 20 s (see {})",
                ep_file.display(),
                dir.join("runtime.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs one bench client; its last stdout line is its JSON result.
fn client(what: &str, cmd: &mut Command) -> Result<Value> {
    eprintln!("\n==> {what}: {cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON line: {text}"))?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("{what}: {line}"))?;
    eprintln!("<== {what}: {line}");
    Ok(v)
}

/// Builds the Node bench client when the TypeScript binding exists but is not built.
fn node_client(root: &Path) -> Option<PathBuf> {
    let dir = root.join("bindings/typescript");
    let js = dir.join("dist/bench/client.js");
    if !js.is_file() && dir.join("package.json").is_file() {
        let prefix = dir.display().to_string();
        if !dir.join("node_modules").is_dir() {
            let verb = if dir.join("package-lock.json").is_file() {
                "ci"
            } else {
                "install"
            };
            let _ = run(
                "npm install (typescript binding)",
                Command::new("npm").args(["--prefix", &prefix, verb]),
            );
        }
        let _ = run(
            "npm run build (typescript binding)",
            Command::new("npm").args(["--prefix", &prefix, "run", "build"]),
        );
    }
    js.is_file().then_some(js)
}

pub(crate) fn bench_bindings(args: &[String]) -> Result<()> {
    let seconds: f64 = arg(args, "--seconds", 5.0)?;
    let size: usize = arg(args, "--size", 64)?;
    let inflight: usize = arg(args, "--inflight", 16)?;
    let root = root();
    run(
        "build the runtime and the Rust bench client (release)",
        cargo().args([
            "build",
            "--release",
            "-p",
            "polycall-cli",
            "--bin",
            "polycall",
        ]),
    )?;
    ensure_pip("zstandard", "zstandard")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let polycall = target.join("release/polycall");
    let work = target.join("bench/bindings-run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).context("creating target/bench/bindings-run")?;
    let (rt, ep) = start_runtime(&polycall, &work)?;
    let common = [
        "--endpoint".to_owned(),
        ep.clone(),
        "--size".to_owned(),
        size.to_string(),
        "--inflight".to_owned(),
        inflight.to_string(),
        "--seconds".to_owned(),
        seconds.to_string(),
    ];
    let mut rows = Vec::new();
    rows.push(client(
        "Rust client",
        Command::new(&polycall)
            .args(["bindgen", "bench"])
            .args(&common),
    )?);
    rows.push(client(
        "Python client",
        Command::new("python3")
            .arg(root.join("bindings/python/bench/client.py"))
            .args(&common),
    )?);
    match node_client(&root) {
        Some(js) => rows.push(client(
            "Node client",
            Command::new("node").arg(js).args(&common),
        )?),
        None => eprintln!(
            "xtask: bindings/typescript/dist/bench/client.js is absent; no Node figure in this run"
        ),
    }
    drop(rt);
    let rust = rows
        .iter()
        .find(|r| r["lang"] == "rust")
        .and_then(|r| r["calls_per_sec"].as_f64())
        .unwrap_or(0.0);
    let python_version = Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let node_version = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut md = format!(
        "## Bindings: client calls/s against the runtime — `cargo xtask bench bindings`\n\n\
         Each client keeps {inflight} calls of {size} B in flight on one connection to a release \
         `polycall run` and calls its built-in `debug.echo`; 1 s of warm-up, then {seconds} s counted; \
         the clients run one after another against the same runtime, in one run. \
         {python_version}, node {node_version}, 2 cores.\n\n\
         | client | calls | seconds | calls/s | of Rust |\n|---|---|---|---|---|\n"
    );
    for r in &rows {
        let cps = r["calls_per_sec"].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.2} |\n",
            r["lang"].as_str().unwrap_or("?"),
            r["calls"],
            r["seconds"].as_f64().unwrap_or(0.0),
            cps,
            if rust > 0.0 { cps / rust } else { 0.0 },
        ));
    }
    md.push_str(
        "\nThe Rust client is `polycall bindgen bench`; Python is `bindings/python/bench/client.py` \
         (pure Python, asyncio); Node is `bindings/typescript/dist/bench/client.js`. \
         The runtime and the client share the machine's 2 cores.\n",
    );
    let out_dir = target.join("bench");
    std::fs::write(out_dir.join("bindings.md"), &md).context("writing target/bench/bindings.md")?;
    std::fs::write(
        out_dir.join("bindings.json"),
        serde_json::to_string_pretty(
            &json!({"size": size, "inflight": inflight, "seconds": seconds, "rows": rows}),
        )?,
    )
    .context("writing target/bench/bindings.json")?;
    update_docs(&root.join("docs/benchmarks.md"), &md)?;
    println!("{md}");
    println!(
        "written: target/bench/bindings.md, target/bench/bindings.json, docs/benchmarks.md (Bindings section)"
    );
    Ok(())
}

/// Replaces the "## Bindings" section of the benchmarks page (or appends it).
fn update_docs(path: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let start = text.find("\n## Bindings");
    let new = match start {
        Some(s) => {
            let rest = &text[s + 1..];
            let end = rest[3..].find("\n## ").map(|e| s + 1 + 3 + e + 1);
            match end {
                Some(e) => format!("{}\n{section}\n{}", &text[..s], &text[e..]),
                None => format!("{}\n{section}", &text[..s]),
            }
        }
        None => format!(
            "{}\n{section}",
            text.trim_end_matches('\n').to_owned() + "\n"
        ),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
