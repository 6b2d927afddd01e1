//! The TypeScript binding (`bindings/typescript`) against the real runtime: its own unit
//! tests (golden vectors included), its generated stubs against a fresh generation, its
//! provider called from Rust and from Python, and its client against a Rust provider and
//! a Python provider.
//!
//! Needs `node` (≥ 20) and `npm`: the first test to run installs the binding's dev
//! dependencies (`npm ci`) when `node_modules` is missing and compiles it with `tsc`
//! (`npm run build`); the other test processes wait on a lock file meanwhile.

use polycall_test_support::{TempDir, TestRuntime};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use polycall_core as pc_core;
use polycall_core::{Call, Payload};
use polycall_net as pc_net;
use polycall_net::{Channel, Endpoint};
use polycall_runtime as pc_runtime;
use polycall_runtime::Runtime;
use serde_json::{Value, json};

/// The Rust conformance client and provider, shared with `polycall bindgen verify` and
/// the Python runs.
#[path = "../../crates/polycall-cli/src/bindgen/conformance.rs"]
mod conformance;

use conformance::SCENARIOS;

use polycall_tests::typescript::{binding, build_binding, repo, run};

async fn runtime() -> (Runtime, Endpoint, TempDir) {
    let t = TestRuntime::start().await;
    (t.runtime, t.endpoint, t.dir)
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a provider program and waits for its `ready` line.
fn start_provider(program: &str, args: &[&str]) -> Proc {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut r = BufReader::new(stdout);
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the provider never blocks on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{program} {args:?} did not print `ready` within 30 s"));
    assert_eq!(line, "ready\n", "{program} {args:?}: first line");
    Proc(child)
}

/// Runs a conformance client program; returns its scenario lines and whether it exited 0.
fn run_client(program: &str, args: &[&str]) -> (Vec<Value>, bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let ok = child.wait().unwrap().success();
    let lines = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\nstderr: {err}"))
        })
        .collect();
    (lines, ok, err)
}

fn assert_all_passed(who: &str, lines: &[Value], ok: bool, stderr: &str) {
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["scenario"].as_str())
        .collect();
    assert_eq!(
        names, SCENARIOS,
        "{who}: scenarios run, in order\nstderr: {stderr}"
    );
    let failed: Vec<&Value> = lines.iter().filter(|l| l["ok"] != json!(true)).collect();
    assert!(
        failed.is_empty(),
        "{who}: failed scenarios: {failed:#?}\nstderr: {stderr}"
    );
    assert!(
        ok,
        "{who}: the client exited non-zero although every scenario passed\nstderr: {stderr}"
    );
}

fn node_program(rel: &str) -> String {
    build_binding()
        .join("dist")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn python_program(rel: &str) -> String {
    let p = repo().join("bindings").join("python").join(rel);
    assert!(
        p.is_file(),
        "{} is missing: the Python binding's conformance programs are needed for the cross-language runs",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

// ------------------------------------------------------------------ the binding's own tests

#[test]
fn typescript_unit_tests_pass_including_the_golden_vectors() {
    let b = build_binding();
    let out = run(
        Command::new("node")
            .args(["--test", "dist/test/"])
            .current_dir(b),
        "node --test dist/test/",
    );
    let count = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("# {key} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `# {key}` line in the node test output:\n{out}"))
    };
    assert_eq!(count("fail"), 0, "{out}");
    assert!(count("pass") >= 10, "too few TypeScript tests ran:\n{out}");
}

#[test]
fn generated_typescript_stubs_equal_a_fresh_generation() {
    let schema_path = repo().join("bindings/conformance/conformance.toml");
    let text = std::fs::read_to_string(&schema_path).expect("conformance schema");
    let schema = polycall_bindgen::parse_schema(&text, "bindings/conformance/conformance.toml")
        .expect("valid schema");
    let files = polycall_bindgen::generate(&schema, "typescript").expect("generation");
    let dir = binding().join("generated");
    let bless = std::env::var_os("POLYCALL_BLESS").is_some();
    assert!(files.iter().any(|f| f.path.ends_with("conformance.ts")));
    assert!(files.iter().any(|f| f.path.ends_with("conformance.md")));
    for f in &files {
        let path = dir.join(&f.path);
        if bless {
            std::fs::write(&path, &f.contents).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == f.contents,
            "{} differs from a fresh generation: regenerate with \
             `POLYCALL_BLESS=1 cargo nextest run --workspace -E 'test(generated_typescript_stubs)'` \
             (or `polycall bindgen --schema bindings/conformance/conformance.toml --lang typescript --out bindings/typescript/generated`)",
            path.display()
        );
    }
}

// ------------------------------------------------------------------ cross-language runs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_provider_called_from_rust() {
    let provider = node_program("conformance/provider.js");
    let (rt, ep, _dir) = runtime().await;
    let ep_s = ep.to_string();
    let _p = start_provider(
        "node",
        &[&provider, "--endpoint", &ep_s, "--service", "ts_conf"],
    );
    let outcomes = conformance::run_client(ep.clone(), "ts_conf", &[]).await;
    let names: Vec<&str> = outcomes.iter().map(|o| o.scenario.as_str()).collect();
    assert_eq!(names, SCENARIOS, "every scenario ran, in order");
    assert!(
        outcomes.iter().all(|o| o.ok),
        "{}",
        conformance::table("TypeScript provider, Rust client", &outcomes)
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_against_a_rust_provider() {
    let client = node_program("conformance/client.js");
    let (rt, ep, _dir) = runtime().await;
    let provider = conformance::RustProvider::start(ep.clone(), "rust_conf")
        .await
        .expect("Rust provider");
    let ep_s = ep.to_string();
    let (lines, ok, err) = tokio::task::spawn_blocking(move || {
        run_client(
            "node",
            &[&client, "--endpoint", &ep_s, "--service", "rust_conf"],
        )
    })
    .await
    .unwrap();
    assert_all_passed("TypeScript client → Rust provider", &lines, ok, &err);
    provider.stop().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_provider_called_from_python() {
    let provider = node_program("conformance/provider.js");
    let client = python_program("conformance/client.py");
    let (rt, ep, _dir) = runtime().await;
    let ep_s = ep.to_string();
    let _p = start_provider(
        "node",
        &[&provider, "--endpoint", &ep_s, "--service", "ts_conf"],
    );
    let (lines, ok, err) = tokio::task::spawn_blocking(move || {
        run_client(
            "python3",
            &[&client, "--endpoint", &ep_s, "--service", "ts_conf"],
        )
    })
    .await
    .unwrap();
    assert_all_passed("Python client → TypeScript provider", &lines, ok, &err);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_against_a_python_provider() {
    let client = node_program("conformance/client.js");
    let provider = python_program("conformance/provider.py");
    let (rt, ep, _dir) = runtime().await;
    let ep_s = ep.to_string();
    let _p = start_provider(
        "python3",
        &[&provider, "--endpoint", &ep_s, "--service", "py_conf"],
    );
    let (lines, ok, err) = tokio::task::spawn_blocking(move || {
        run_client(
            "node",
            &[&client, "--endpoint", &ep_s, "--service", "py_conf"],
        )
    })
    .await
    .unwrap();
    assert_all_passed("TypeScript client → Python provider", &lines, ok, &err);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_typescript_providers_under_different_names_and_the_bench_client() {
    let provider = node_program("conformance/provider.js");
    let bench = node_program("bench/client.js");
    let (rt, ep, _dir) = runtime().await;
    let ep_s = ep.to_string();
    let _a = start_provider(
        "node",
        &[&provider, "--endpoint", &ep_s, "--service", "ts_a"],
    );
    let _b = start_provider(
        "node",
        &[&provider, "--endpoint", &ep_s, "--service", "ts_b"],
    );
    let ch = Channel::connect(ep.clone()).await.unwrap();
    for svc in ["ts_a", "ts_b"] {
        let rep = ch
            .call(
                Call::new(
                    &format!("{svc}.add"),
                    Payload::json(&json!({"a": 1, "b": 2})).unwrap(),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            rep.payload.to_json::<Value>().unwrap(),
            json!({"sum": 3}),
            "{svc}"
        );
    }
    // The bench client's one line, from a short run (no timing is asserted).
    let out = tokio::task::spawn_blocking(move || {
        run(
            Command::new("node").args([
                bench.as_str(),
                "--endpoint",
                &ep_s,
                "--size",
                "64",
                "--inflight",
                "16",
                "--seconds",
                "1",
            ]),
            "bench client",
        )
    })
    .await
    .unwrap();
    let line: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(line["lang"], "node");
    assert!(line["calls"].as_u64().unwrap_or(0) > 0, "{line}");
    assert!(
        line["calls_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{line}"
    );
    rt.shutdown().await;
}
