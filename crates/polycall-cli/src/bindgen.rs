//! `polycall bindgen`: typed bindings from an interface schema or a live runtime, and
//! `polycall bindgen verify`: a binding's own tests plus the live conformance suite.

mod conformance;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use polycall::Status;
use polycall::core as pc_core;
use polycall::net as pc_net;
use polycall::runtime as pc_runtime;
use serde_json::json;

use crate::output::{Out, exit};
use conformance::{Lang, Outcome, ProviderProcess, RustProvider};

/// `polycall bindgen`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BindgenArgs {
    #[command(subcommand)]
    command: Option<BindgenCommand>,
    /// The interface schema (TOML, docs/bindgen.md).
    #[arg(long, conflicts_with = "from_endpoint")]
    schema: Option<PathBuf>,
    /// Read the interface from a live runtime's sys.describe (HOST:PORT).
    #[arg(long)]
    from_endpoint: Option<String>,
    /// The target: python, typescript or markdown.
    #[arg(long)]
    lang: Option<String>,
    /// Where to write the files.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write nothing: compare with what OUT holds, and fail (exit 1) listing the files
    /// that differ.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, clap::Subcommand)]
enum BindgenCommand {
    /// Run a binding's own tests, then the live conformance suite against an in-process
    /// runtime (its provider called from Rust, its client against a Rust provider).
    Verify {
        /// python or typescript.
        #[arg(long)]
        lang: String,
        /// The repository root (default: found upwards from the current directory).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// List the built-in targets.
    Targets,
    /// Calls/s of the Rust client against a runtime's debug.echo (one connection, a
    /// fixed number of calls in flight), measured like the bindings' bench clients
    /// (`cargo xtask bench bindings` runs them side by side).
    #[command(hide = true)]
    Bench {
        /// The runtime (HOST:PORT).
        #[arg(long)]
        endpoint: String,
        /// Payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Calls kept in flight.
        #[arg(long, default_value_t = 16)]
        inflight: usize,
        /// Seconds measured (after the warm-up).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Seconds of warm-up.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
}

fn input_error(msg: impl Into<String>) -> Status {
    Status::invalid_input(msg)
}

async fn load_schema(
    args: &BindgenArgs,
    timeout: Duration,
) -> Result<polycall_bindgen::Schema, Status> {
    match (&args.schema, &args.from_endpoint) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| input_error(format!("cannot read {}: {e}", path.display())))?;
            polycall_bindgen::parse_schema(&text, &path.display().to_string())
                .map_err(|e| input_error(e.to_string()))
        }
        (None, Some(ep)) => {
            let endpoint: pc_net::Endpoint = ep
                .parse()
                .map_err(|e| input_error(format!("--from-endpoint {ep}: {e}")))?;
            let channel = tokio::time::timeout(timeout, pc_net::Channel::connect(endpoint))
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!("connecting to {ep} took over {timeout:?}"))
                })??;
            let call = pc_core::Call::new("sys.describe", pc_core::Payload::empty())
                .map_err(|e| Status::internal(e.to_string()))?;
            let reply = tokio::time::timeout(timeout, channel.call(call))
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!("sys.describe of {ep} took over {timeout:?}"))
                })??;
            let v: serde_json::Value = reply
                .payload
                .to_json()
                .map_err(|e| Status::malformed(format!("sys.describe answered non-JSON: {e}")))?;
            polycall_bindgen::from_describe(&v, ep).map_err(|e| Status::malformed(e.to_string()))
        }
        (None, None) => Err(input_error(
            "give the interface: --schema FILE or --from-endpoint HOST:PORT",
        )),
    }
}

/// Runs `polycall bindgen`.
pub(crate) async fn bindgen(args: BindgenArgs, timeout: Duration, out: Out) -> u8 {
    match args.command {
        Some(BindgenCommand::Targets) => {
            let targets = polycall_bindgen::targets();
            return out.ok("bindgen", json!({"targets": targets}), || {
                targets
                    .iter()
                    .map(|t| format!("{:<12} {}", t.name, t.description))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Some(BindgenCommand::Verify { ref lang, ref root }) => {
            return verify(lang, root.clone(), out).await;
        }
        Some(BindgenCommand::Bench {
            ref endpoint,
            size,
            inflight,
            seconds,
            warmup,
        }) => {
            return match bench(endpoint, size, inflight, seconds, warmup).await {
                Ok(line) => {
                    println!("{line}");
                    exit::OK
                }
                Err(e) => out.fail("bindgen bench", &e),
            };
        }
        None => {}
    }
    let (Some(lang), Some(dir)) = (&args.lang, &args.out) else {
        return out.fail(
            "bindgen",
            &input_error("give --lang (python, typescript, markdown) and --out DIR"),
        );
    };
    let schema = match load_schema(&args, timeout).await {
        Ok(s) => s,
        Err(e) => return out.fail("bindgen", &e),
    };
    let files = match polycall_bindgen::generate(&schema, lang) {
        Ok(f) => f,
        Err(e) => {
            let code = match e {
                polycall_bindgen::GenerateError::UnknownTarget { .. } => exit::INPUT,
                _ => exit::RUNTIME,
            };
            return out.fail_with("bindgen", &Status::invalid_input(e.to_string()), code);
        }
    };
    if args.check {
        let differ: Vec<String> = files
            .iter()
            .filter(|f| {
                std::fs::read_to_string(dir.join(&f.path)).ok().as_deref() != Some(&f.contents)
            })
            .map(|f| dir.join(&f.path).display().to_string())
            .collect();
        if differ.is_empty() {
            return out.ok("bindgen", json!({"checked": files.len()}), || {
                format!("{} files up to date in {}", files.len(), dir.display())
            });
        }
        return out.fail_with(
            "bindgen",
            &Status::new(
                polycall::Code::FailedPrecondition,
                format!(
                    "generated files differ from a fresh generation (regenerate them): {}",
                    differ.join(", ")
                ),
            ),
            exit::RUNTIME,
        );
    }
    let mut written = Vec::new();
    for f in &files {
        let path = dir.join(&f.path);
        let result = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &f.contents));
        if let Err(e) = result {
            return out.fail(
                "bindgen",
                &Status::internal(format!("cannot write {}: {e}", path.display())),
            );
        }
        written.push(path.display().to_string());
    }
    out.ok("bindgen", json!({"written": written}), || {
        format!("wrote {}", written.join(", "))
    })
}

/// The repository root: `start` or the first ancestor holding the conformance schema.
fn find_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|p| p.join("bindings/conformance/conformance.toml").is_file())
        .map(Path::to_path_buf)
}

fn run_step(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("bindgen verify: {what}: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// The binding's own tests (golden vectors included), building it first when needed.
fn unit_tests(lang: Lang, root: &Path) -> Result<(), String> {
    match lang {
        Lang::Python => run_step(
            "python unit tests",
            Command::new("python3")
                .args(["-m", "unittest", "discover", "-s", "tests", "-t", "."])
                .current_dir(root.join("bindings/python")),
        ),
        Lang::TypeScript => {
            let dir = root.join("bindings/typescript");
            if !dir.join("node_modules").is_dir() {
                let verb = if dir.join("package-lock.json").is_file() {
                    "ci"
                } else {
                    "install"
                };
                run_step(
                    "npm install",
                    Command::new("npm").args(["--prefix", &dir.display().to_string(), verb]),
                )?;
            }
            run_step(
                "typescript build",
                Command::new("npm").args(["--prefix", &dir.display().to_string(), "run", "build"]),
            )?;
            run_step(
                "typescript unit tests",
                Command::new("npm").args(["--prefix", &dir.display().to_string(), "test"]),
            )
        }
    }
}

/// The live suite for `lang` against a runtime at `endpoint`: (a) its provider called
/// from Rust, (b) its client against the Rust provider.
async fn live_suite(
    lang: Lang,
    root: &Path,
    endpoint: &pc_net::Endpoint,
) -> Vec<(String, Vec<Outcome>)> {
    let tag = std::process::id();
    let mut sections = Vec::new();
    let service = format!("conformance_{}_{tag}", lang.name());
    let a = match ProviderProcess::start(lang, root, endpoint, &service).await {
        Ok(mut p) => {
            let o = conformance::run_client(endpoint.clone(), &service, &[]).await;
            p.kill();
            o
        }
        Err(e) => conformance::SCENARIOS
            .iter()
            .map(|s| Outcome {
                scenario: (*s).to_owned(),
                ok: false,
                detail: e.clone(),
            })
            .collect(),
    };
    sections.push((format!("{} provider, Rust client", lang.name()), a));
    let service = format!("conformance_rust_{tag}");
    let b = match RustProvider::start(endpoint.clone(), &service).await {
        Ok(p) => {
            let (o, _) = conformance::run_client_process(lang, root, endpoint, &service).await;
            p.stop().await;
            o
        }
        Err(e) => conformance::SCENARIOS
            .iter()
            .map(|s| Outcome {
                scenario: (*s).to_owned(),
                ok: false,
                detail: format!("the Rust provider did not start: {e}"),
            })
            .collect(),
    };
    sections.push((format!("Rust provider, {} client", lang.name()), b));
    sections
}

async fn verify(lang: &str, root: Option<PathBuf>, out: Out) -> u8 {
    let Some(lang) = Lang::parse(lang) else {
        return out.fail(
            "bindgen verify",
            &input_error(format!("--lang {lang}: verify knows python and typescript")),
        );
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let Some(root) = root.or_else(|| find_root(&cwd)) else {
        return out.fail(
            "bindgen verify",
            &input_error(format!(
                "no bindings/conformance/conformance.toml above {}: run from the polycall repository or pass --root",
                cwd.display()
            )),
        );
    };
    let unit = unit_tests(lang, &root);
    let state = std::env::temp_dir().join(format!("polycall-verify-{}", std::process::id()));
    let mut config = pc_runtime::RuntimeConfig::default();
    config.endpoint = match "127.0.0.1:0".parse() {
        Ok(e) => e,
        Err(e) => return out.fail("bindgen verify", &Status::internal(format!("{e}"))),
    };
    config.state_dir = state.clone();
    let runtime = match pc_runtime::Runtime::start(config).await {
        Ok(r) => r,
        Err(e) => return out.fail("bindgen verify", &Status::unavailable(e.to_string())),
    };
    let endpoint = runtime.local_endpoint().clone();
    let sections = live_suite(lang, &root, &endpoint).await;
    runtime.shutdown().await;
    let _ = std::fs::remove_dir_all(&state);
    let passed = sections
        .iter()
        .flat_map(|(_, o)| o)
        .filter(|o| o.ok)
        .count();
    let total = sections.iter().map(|(_, o)| o.len()).sum::<usize>();
    let all_ok = unit.is_ok() && passed == total;
    let data = json!({
        "lang": lang.name(),
        "unit_tests": match &unit { Ok(()) => json!("pass"), Err(e) => json!(e) },
        "sections": sections.iter().map(|(t, o)| json!({
            "title": t,
            "scenarios": o.iter().map(|x| json!({"scenario": x.scenario, "ok": x.ok, "detail": x.detail})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "passed": passed,
        "total": total,
    });
    let text = || {
        let mut s = format!(
            "unit tests ({}): {}\n",
            lang.name(),
            match &unit {
                Ok(()) => "pass".to_owned(),
                Err(e) => format!("FAIL: {e}"),
            }
        );
        for (title, o) in &sections {
            s.push_str(&conformance::table(title, o));
        }
        s.push_str(&format!("{passed} passed, {} failed", total - passed));
        s
    };
    if all_ok {
        out.ok("bindgen verify", data, text)
    } else {
        eprintln!("{}", text());
        out.fail_with(
            "bindgen verify",
            &Status::new(
                polycall::Code::FailedPrecondition,
                format!(
                    "{} conformance: {passed} of {total} scenarios passed{}",
                    lang.name(),
                    if unit.is_err() {
                        "; unit tests failed"
                    } else {
                        ""
                    }
                ),
            ),
            exit::RUNTIME,
        )
    }
}

/// The Rust client's side of `cargo xtask bench bindings`: `inflight` tasks call
/// `debug.echo` with `size` bytes on one connection; one JSON line like the bindings'
/// bench clients print.
async fn bench(
    endpoint: &str,
    size: usize,
    inflight: usize,
    seconds: f64,
    warmup: f64,
) -> Result<serde_json::Value, Status> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;
    if inflight == 0
        || !seconds.is_finite()
        || seconds <= 0.0
        || !warmup.is_finite()
        || warmup < 0.0
    {
        return Err(input_error(
            "--inflight and --seconds must be positive, --warmup at least 0",
        ));
    }
    let ep: pc_net::Endpoint = endpoint
        .parse()
        .map_err(|e| input_error(format!("--endpoint {endpoint}: {e}")))?;
    let channel = pc_net::Channel::connect(ep).await?;
    let payload = pc_core::Payload::raw(conformance::noise(size, 5));
    let counting = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(warmup + seconds);
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let (ch, payload, counting, calls) = (
            channel.clone(),
            payload.clone(),
            counting.clone(),
            calls.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let call = pc_core::Call::new("debug.echo", payload.clone())
                    .map_err(|e| Status::internal(e.to_string()))?;
                let reply = ch.call(call).await?;
                if reply.payload.len() != payload.len() {
                    return Err(Status::internal("debug.echo returned another size"));
                }
                if counting.load(Ordering::Relaxed) {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), Status>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    counting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    for t in tasks {
        t.await.map_err(|e| Status::internal(e.to_string()))??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let n = calls.load(Ordering::Relaxed);
    Ok(json!({
        "lang": "rust",
        "calls": n,
        "seconds": elapsed,
        "calls_per_sec": if elapsed > 0.0 { n as f64 / elapsed } else { 0.0 },
    }))
}
