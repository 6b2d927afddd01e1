//! The `polycall` binary, run as a user would: exit codes, the JSON envelope, the
//! runtime's life cycle and graceful shutdown on SIGTERM.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Runtime, bin};

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn exit_codes_follow_the_cli_contract() {
    let rt = Runtime::start();
    // 0: ok
    let o = rt.cli(&["call", "debug.echo", "--json", r#"{"hello": "cli"}"#]);
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(stdout(&o).contains("\"hello\": \"cli\""));
    // 0: libpolycall's form SERVICE OPERATION --input-value
    let o = rt.cli(&["call", "debug", "echo", "--input-value", "[1,2]"]);
    assert_eq!(code(&o), 0, "{o:?}");
    // 2: usage
    assert_eq!(code(&bin().args(["call"]).output().unwrap()), 2);
    assert_eq!(code(&bin().args(["frobnicate"]).output().unwrap()), 2);
    assert_eq!(
        code(
            &bin()
                .args(["call", "debug.echo", "--json", "{}", "--raw", "x"])
                .output()
                .unwrap()
        ),
        2
    );
    // 3: invalid input
    let o = rt.cli(&["call", "debug.echo", "--json", "{not json"]);
    assert_eq!(code(&o), 3, "{o:?}");
    let o = rt.cli(&["call", "debug.sleep", "--json", r#"{"ms": "soon"}"#]);
    assert_eq!(code(&o), 3, "{o:?}");
    // 4: unknown method
    let o = rt.cli(&["call", "inventory.get", "--json", "{}"]);
    assert_eq!(code(&o), 4, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("polycall describe"));
    // 5: transport
    let o = bin()
        .args([
            "call",
            "debug.echo",
            "--endpoint",
            "127.0.0.1:1",
            "--timeout-ms",
            "2000",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 5, "{o:?}");
    // 6: deadline
    let t = Instant::now();
    let o = rt.cli(&[
        "call",
        "debug.sleep",
        "--json",
        r#"{"ms": 5000}"#,
        "--timeout-ms",
        "200",
    ]);
    assert_eq!(code(&o), 6, "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(4));
    // 7: auth
    let o = rt.cli(&["stop", "--token", "wrong"]);
    assert_eq!(code(&o), 7, "{o:?}");
    // 4: a capability not built yet
    let o = rt.cli(&["--config", "polycall.toml", "status"]);
    assert_eq!(code(&o), 4, "{o:?}");
}

#[test]
fn the_json_envelope() {
    let rt = Runtime::start();
    let o = rt.cli(&[
        "--format",
        "json",
        "call",
        "debug.echo",
        "--json",
        r#"{"n": 7}"#,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["ok"], true);
    assert_eq!(v["command"], "call");
    assert_eq!(v["data"]["n"], 7);
    assert!(v["error"].is_null());
    let o = rt.cli(&["--format", "json", "call", "nope.nope"]);
    assert_eq!(code(&o), 4);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "unknown_method");
    assert!(v["error"]["hint"].as_str().unwrap().contains("describe"));
    let o = rt.cli(&["--format", "json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["data"]["status"], "ok");
    assert_eq!(v["data"]["endpoint"], rt.endpoint.as_str());
}

#[test]
fn describe_status_and_stop() {
    let mut rt = Runtime::start();
    let o = rt.cli(&["describe"]);
    assert_eq!(code(&o), 0);
    for m in [
        "sys.ping",
        "sys.describe",
        "sys.health",
        "debug.echo",
        "debug.sleep",
    ] {
        assert!(stdout(&o).contains(m), "{m} missing from {}", stdout(&o));
    }
    let o = rt.cli(&["status"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("runtime ok"), "{}", stdout(&o));
    // `stop` reads the token from the state directory.
    let o = bin()
        .args(["stop", "--endpoint", &rt.endpoint, "--state-dir"])
        .arg(rt.dir.join("state"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    assert_eq!(rt.wait(Duration::from_secs(10)), Some(0));
    assert_eq!(
        code(&rt.cli(&["status", "--timeout-ms", "1000"])),
        5,
        "the runtime is gone"
    );
}

#[test]
fn sigterm_finishes_calls_in_flight_refuses_new_connections_and_exits_0() {
    let mut rt = Runtime::start();
    let slow = bin()
        .args([
            "call",
            "debug.sleep",
            "--json",
            r#"{"ms": 1500}"#,
            "--endpoint",
            &rt.endpoint,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    rt.signal("-TERM");
    std::thread::sleep(Duration::from_millis(200));
    // Draining: the listener is closed, new connections are refused.
    let o = rt.cli(&["call", "sys.ping", "--timeout-ms", "1000"]);
    assert_eq!(code(&o), 5, "a new connection during shutdown: {o:?}");
    let slow = slow.wait_with_output().unwrap();
    assert_eq!(code(&slow), 0, "the call in flight completed: {slow:?}");
    assert!(stdout(&slow).contains("slept_ms"));
    assert_eq!(rt.wait(Duration::from_secs(10)), Some(0));
}

#[test]
fn sigint_exits_130() {
    let mut rt = Runtime::start();
    rt.signal("-INT");
    assert_eq!(rt.wait(Duration::from_secs(10)), Some(130));
}

#[test]
fn the_demo_runs() {
    let o = bin().arg("demo").output().unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("1000 ok"), "{out}");
    assert!(out.contains("deadline_exceeded"));
    assert!(out.contains("not_found"));
}

#[test]
fn qos_flags_are_accepted_and_validated() {
    let rt = Runtime::start_with(&[], &["--endpoint", "127.0.0.1:0", "--rate-limit", "1"]);
    let ep = rt.endpoint.clone();
    // The layers themselves are tested in polycall-net and through the runtime; here the
    // flags reach them (a fresh connection is a fresh client, so the first call passes).
    let o = bin()
        .args(["call", "sys.ping", "--endpoint", &ep, "--retries", "3"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    let o = bin()
        .args([
            "call",
            "sys.ping",
            "--endpoint",
            &ep,
            "--priority",
            "urgent",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{o:?}");
    let o = bin()
        .args([
            "call",
            "sys.ping",
            "--endpoint",
            &ep,
            "--priority",
            "critical",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    drop(rt); // stops the runtime, removes its directory
}

fn config_fixtures() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../polycall-runtime/tests/fixtures")
}

fn config_temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polycall-cli-cfg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn config_validate_reports_every_mistake_and_exits_3() {
    let bad = config_fixtures().join("invalid.toml");
    let o = bin()
        .args(["config", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(lines.len(), 14, "{err}");
    assert!(
        lines[0].ends_with(
            "invalid.toml:4:1: error: unknown key `endpont` in [runtime]; did you mean `endpoint`?"
        ),
        "{err}"
    );
    assert!(err.contains("invalid.toml:5:19: error: "), "{err}");
    // JSON: the diagnostics in the envelope.
    let o = bin()
        .args(["--format", "json", "config", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["data"]["diagnostics"].as_array().unwrap().len(), 14);
    assert_eq!(v["data"]["diagnostics"][0]["line"], 4);
    // Valid: 0. Missing: 3.
    let o = bin()
        .args(["config", "validate"])
        .arg(config_fixtures().join("good.toml"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    let o = bin()
        .args(["config", "validate", "/nonexistent/polycall.toml"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{o:?}");
}

#[test]
fn config_show_effective_names_every_source() {
    let good = config_fixtures().join("good.toml");
    let o = bin()
        .env("POLYCALL_QOS__MAX_CONCURRENCY", "8")
        .args(["config", "show", "--effective"])
        .arg(&good)
        .args(["--set", "log.level=debug"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    let out = stdout(&o);
    let line = |k: &str| {
        out.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k} in {out}"))
            .to_owned()
    };
    assert!(
        line("qos.max_concurrency = 8").ends_with("# env POLYCALL_QOS__MAX_CONCURRENCY"),
        "{out}"
    );
    assert!(
        line("log.level = \"debug\"").ends_with("# --set log.level=debug"),
        "{out}"
    );
    assert!(
        line("runtime.max_connections = 100").contains("good.toml:5:1"),
        "{out}"
    );
    assert!(
        line("limits.max_in_flight = 16384").ends_with("# default"),
        "{out}"
    );
    let o = bin()
        .args(["--format", "json", "config", "show", "--effective"])
        .arg(&good)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let values = v["data"]["values"].as_array().unwrap();
    let ep = values
        .iter()
        .find(|x| x["key"] == "runtime.endpoint")
        .unwrap();
    assert_eq!(ep["value"], "127.0.0.1:0");
    assert!(ep["source"].as_str().unwrap().ends_with("good.toml:4:1"));
    assert_eq!(ep["reloadable"], false);
}

#[test]
fn config_migrate_writes_lists_unmapped_and_refuses_to_overwrite() {
    let dir = config_temp("migrate");
    let out_file = dir.join("polycall.toml");
    let o = bin()
        .args(["config", "migrate"])
        .arg(config_fixtures().join("libpolycall"))
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.contains("Polycallfile") && written.contains("max_connections = 2000"));
    assert!(stdout(&o).contains("not migrated: auto_discover"), "{o:?}");
    // Exists: refused without --force, file untouched.
    std::fs::write(&out_file, "mine").unwrap();
    let o = bin()
        .args(["config", "migrate"])
        .arg(config_fixtures().join("libpolycall"))
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "mine");
    let o = bin()
        .args(["config", "migrate", "--force"])
        .arg(config_fixtures().join("libpolycall"))
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(
        std::fs::read_to_string(&out_file)
            .unwrap()
            .starts_with("# polycall.toml")
    );
    // A version-0 polycall.toml comes out as version 1 and validates.
    let v1 = dir.join("v1.toml");
    let o = bin()
        .args(["config", "migrate"])
        .arg(config_fixtures().join("polycall.v0.toml"))
        .arg("--out")
        .arg(&v1)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    let o = bin()
        .args(["config", "validate"])
        .arg(&v1)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_with_a_config_file_starts_and_serves() {
    let dir = config_temp("run");
    let cfg = dir.join("polycall.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[runtime]\nendpoint = \"127.0.0.1:0\"\ndrain_timeout_ms = 1000\n[qos]\nmax_concurrency = 16\n[log]\nlevel = \"warn\"\n",
    )
    .unwrap();
    let rt = Runtime::start_with(&["--config", cfg.to_str().unwrap()], &[]);
    let ep = rt.endpoint.clone();
    assert_ne!(ep, "127.0.0.1:0");
    let o = bin()
        .args([
            "call",
            "debug.echo",
            "--endpoint",
            &ep,
            "--json",
            r#"{"from": "config"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(stdout(&o).contains("config"));
    drop(rt); // stops the runtime, removes its directory
    // Invalid file: 3 with the diagnostics; TLS with unusable PEM files: 3, naming the file.
    let o = bin()
        .arg("--config")
        .arg(config_fixtures().join("invalid.toml"))
        .args(["run", "--endpoint", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid.toml:4:1: error:"));
    std::fs::write(dir.join("c.pem"), "x").unwrap();
    std::fs::write(dir.join("k.pem"), "x").unwrap();
    std::fs::write(
        &cfg,
        "version = 1\n[tls]\nenabled = true\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
    )
    .unwrap();
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--endpoint", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("TLS") && err.contains("c.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_exits_non_zero_when_the_runtime_is_degraded() {
    let dir = config_temp("degraded");
    let cfg = dir.join("polycall.toml");
    std::fs::write(&cfg, "version = 1\n[runtime]\nendpoint = \"127.0.0.1:0\"\n").unwrap();
    let rt = Runtime::start_with(&["--config", cfg.to_str().unwrap()], &[]);
    let o = rt.cli(&["--format", "json", "status"]);
    assert_eq!(code(&o), 0, "{o:?}");
    // A rejected edit: the runtime keeps running on the old configuration, degraded.
    std::fs::write(&cfg, "version = 1\n[runtime]\nendpont = 1\n").unwrap();
    let started = std::time::Instant::now();
    let o = loop {
        let o = rt.cli(&["--format", "json", "status"]);
        if code(&o) != 0 || started.elapsed() > std::time::Duration::from_secs(20) {
            break o;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(code(&o), 1, "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["data"]["status"], "degraded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reload was rejected"),
        "{v}"
    );
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_takes_set_overrides_without_a_file() {
    let rt = Runtime::start_with(
        &[],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--set",
            "limits.max_frame=1K",
            "--set",
            "limits.max_message=1K",
        ],
    );
    let ep = rt.endpoint.clone();
    let small = bin()
        .args(["call", "debug.echo", "--endpoint", &ep, "--raw", "fits"])
        .output()
        .unwrap();
    assert_eq!(code(&small), 0, "{small:?}");
    let big = "x".repeat(2000);
    let o = bin()
        .args(["call", "debug.echo", "--endpoint", &ep, "--raw", &big])
        .output()
        .unwrap();
    assert_eq!(
        code(&o),
        3,
        "a 2,000-byte message over a 1 KiB limit is too large: {o:?}"
    );
    drop(rt); // stops the runtime, removes its directory
    let bad = bin()
        .args([
            "run",
            "--endpoint",
            "127.0.0.1:0",
            "--set",
            "qos.max_concurency=3",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&bad), 3, "{bad:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        all.contains("max_concurrency"),
        "a suggestion names the right key: {all}"
    );
}
