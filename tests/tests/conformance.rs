//! The Python binding (`bindings/python`) against the real runtime: its own unit tests
//! (golden vectors included), its conformance provider called from Rust, and its
//! conformance client against the Rust conformance provider — every scenario of
//! `bindings/conformance/` (docs/bindgen.md §4). Needs `python3` (≥ 3.11).

use std::path::{Path, PathBuf};
use std::process::Command;

use polycall_core as pc_core;
use polycall_net as pc_net;
use polycall_runtime as pc_runtime;
use polycall_runtime::Runtime;
use polycall_test_support::{TempDir, TestRuntime};

#[path = "../../crates/polycall-cli/src/bindgen/conformance.rs"]
mod conformance;

use conformance::{Lang, Outcome, ProviderProcess, RustProvider, SCENARIOS};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

async fn runtime(_tag: &str) -> (Runtime, pc_net::Endpoint, TempDir) {
    let t = TestRuntime::start().await;
    (t.runtime, t.endpoint, t.dir)
}

fn assert_all_passed(what: &str, outcomes: &[Outcome]) {
    let names: Vec<&str> = outcomes.iter().map(|o| o.scenario.as_str()).collect();
    assert_eq!(names, SCENARIOS, "{what}: every scenario ran, in order");
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    assert!(
        failed.is_empty(),
        "{what}:\n{}",
        conformance::table(what, outcomes)
    );
}

#[test]
fn python_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."])
        .current_dir(repo().join("bindings/python"))
        .output()
        .expect("python3 runs (cargo xtask ci installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python unit tests failed:\n{stderr}");
    // The golden vectors are among them and ran (not skipped).
    for name in [
        "test_every_golden_frame_decodes_to_its_meaning_and_back",
        "test_every_malformed_vector_fails_as_stated",
        "test_the_zstd_vector_decompresses_to_its_text",
        // Against target/debug/polycall, which the workspace build makes first.
        "test_a_provider_exports_the_server_span_of_a_traced_call",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(name) && l.trim_end().ends_with("... ok")),
            "{name} did not pass:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_provider_called_from_rust() {
    let (rt, ep, _dir) = runtime("py-provider").await;
    let service = "conformance_py";
    let mut provider = ProviderProcess::start(Lang::Python, &repo(), &ep, service)
        .await
        .expect("the Python provider starts and registers");
    let outcomes = conformance::run_client(ep.clone(), service, &[]).await;
    provider.kill();
    assert_all_passed("Python provider, Rust client", &outcomes);
    // exit_now took the provider away: the runtime forgot its methods.
    let registry = rt.registry();
    let names = (
        pc_core::ServiceName::new(service).unwrap(),
        pc_core::MethodName::new("echo").unwrap(),
    );
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        registry
            .pick(&names.0, &names.1, rt.observer().ejections())
            .is_none()
    });
    assert!(gone, "the provider's methods outlive its connection");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_against_the_rust_provider() {
    let (rt, ep, _dir) = runtime("py-client").await;
    let service = "conformance_rs";
    let provider = RustProvider::start(ep.clone(), service)
        .await
        .expect("the Rust provider registers");
    let (outcomes, exited_ok) =
        conformance::run_client_process(Lang::Python, &repo(), &ep, service).await;
    provider.stop().await;
    assert_all_passed("Rust provider, Python client", &outcomes);
    assert!(exited_ok, "the Python client exits 0 when all passed");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reports_failures_and_exits_non_zero() {
    // No provider of the service: every scenario must fail (unknown_method passes, as
    // the runtime answers it), and the client must say so and exit non-zero.
    let (rt, ep, _dir) = runtime("py-nobody").await;
    let (outcomes, exited_ok) =
        conformance::run_client_process(Lang::Python, &repo(), &ep, "nobody_serves_this").await;
    assert!(!exited_ok, "the client exits non-zero when scenarios fail");
    let ok: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| o.scenario.as_str())
        .collect();
    assert_eq!(ok, ["unknown_method"], "{outcomes:?}");
    rt.shutdown().await;
}
