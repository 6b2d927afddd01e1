//! State machines through the `polycall` binary: crash recovery under `kill -9`,
//! point-in-time recovery, backups, graphs, timelines, watching, and invalid
//! definitions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use polycall::net::Channel;
use polycall::{Call, Payload};
use serde_json::{Value, json};

mod common;
use common::{Runtime, bin};

fn machines() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/machines")
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polycall-state-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(dir: &Path) -> Runtime {
    let m = machines();
    Runtime::start_in(
        dir,
        &[],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--machines",
            m.to_str().unwrap(),
        ],
    )
}

async fn call(ch: &Channel, name: &str, input: Value) -> Result<Value, polycall::Status> {
    let c = Call::new(name, Payload::json(&input).unwrap()).unwrap();
    ch.call(c).await.map(|r| r.payload.to_json().unwrap())
}

fn cli_json(rt: &Runtime, args: &[&str]) -> Value {
    let mut full = vec!["--format", "json"];
    full.extend_from_slice(args);
    let o = rt.cli(&full);
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("not JSON: {text} / {}", String::from_utf8_lossy(&o.stderr)))
}

const INSTANCES: usize = 8;

/// One crash cycle: reads what was recovered, puts a load of transitions on the
/// runtime, SIGKILLs it mid-load. Returns (recovered, acknowledged, cut off).
fn crash_cycle(
    tokio: &tokio::runtime::Runtime,
    rt: &mut Runtime,
    cycle: usize,
) -> (Vec<u64>, Vec<u64>, u64) {
    let endpoint = rt.endpoint.clone();
    tokio.block_on(async {
        let ch = Channel::connect(endpoint.parse().unwrap()).await.unwrap();
        let mut recovered = Vec::new();
        for k in 0..INSTANCES {
            let id = format!("c{k}");
            recovered.push(
                match call(&ch, "state.counter.get", json!({"id": id})).await {
                    Ok(v) => v["context"]["n"].as_u64().unwrap(),
                    Err(e) if e.code == polycall::Code::NotFound && cycle == 0 => {
                        call(&ch, "state.counter.create", json!({"id": id}))
                            .await
                            .unwrap();
                        0
                    }
                    Err(e) => panic!("cycle {cycle}: {id}: {e}"),
                },
            );
        }
        // One sequential writer per instance, until the process dies.
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicU64>> =
            Arc::new((0..INSTANCES).map(|_| AtomicU64::new(0)).collect());
        let cut_off = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for k in 0..INSTANCES {
            let (ch, stop, acked, cut_off) =
                (ch.clone(), stop.clone(), acked.clone(), cut_off.clone());
            tasks.push(tokio::spawn(async move {
                let fire = json!({"id": format!("c{k}"), "transition": "add", "event": {"by": 1}});
                while !stop.load(Ordering::Relaxed) {
                    match call(&ch, "state.counter.fire", fire.clone()).await {
                        Ok(_) => {
                            acked[k].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            cut_off.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + 40 * cycle as u64)).await;
        rt.signal("-KILL");
        assert_eq!(
            rt.wait(Duration::from_secs(10)),
            None,
            "killed by a signal: no exit code"
        );
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap();
        }
        let acked = acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        (recovered, acked, cut_off.load(Ordering::Relaxed))
    })
}

#[test]
fn kill_9_under_sync_load_loses_no_acknowledged_transition() {
    let dir = temp("crash");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    // What the runtime acknowledged, per instance, over every cycle so far.
    let mut acknowledged = [0u64; INSTANCES];
    let (mut total_acked, mut total_cut) = (0u64, 0u64);
    let check = |cycle: usize, recovered: &[u64], acknowledged: &[u64; INSTANCES]| {
        for k in 0..INSTANCES {
            // Every acknowledged event is back; at most the one in flight when the
            // process died was applied without its acknowledgement arriving.
            assert!(
                recovered[k] >= acknowledged[k] && recovered[k] <= acknowledged[k] + 1,
                "after crash {cycle}: c{k} recovered {} events, {} were acknowledged",
                recovered[k],
                acknowledged[k]
            );
        }
    };
    for cycle in 0..10 {
        let mut rt = start(&dir);
        let (recovered, acked, cut) = crash_cycle(&tokio, &mut rt, cycle);
        check(cycle, &recovered, &acknowledged);
        for k in 0..INSTANCES {
            acknowledged[k] = recovered[k] + acked[k];
        }
        total_acked += acked.iter().sum::<u64>();
        total_cut += cut;
    }
    // The last crash, checked by one more start.
    let rt = start(&dir);
    let recovered: Vec<u64> = tokio.block_on(async {
        let ch = Channel::connect(rt.endpoint.parse().unwrap())
            .await
            .unwrap();
        let mut out = Vec::new();
        for k in 0..INSTANCES {
            let v = call(&ch, "state.counter.get", json!({"id": format!("c{k}")}))
                .await
                .unwrap();
            out.push(v["context"]["n"].as_u64().unwrap());
        }
        out
    });
    check(10, &recovered, &acknowledged);
    assert!(
        total_acked > 500,
        "the load was real: {total_acked} acknowledged transitions"
    );
    eprintln!(
        "10 kill -9 cycles: {total_acked} acknowledged transitions, all recovered; {total_cut} calls cut off in flight"
    );
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recover_backup_graph_timeline_and_watch_through_the_cli() {
    let dir = temp("e2e");
    let mut rt = start(&dir);
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let ep = rt.endpoint.clone();
    // An order goes through its life, by `polycall call` as any user would.
    let c = |args: &[&str]| cli_json(&rt, args);
    let created = c(&[
        "call",
        "state.order.create",
        "--json",
        r#"{"id": "o-1", "context": {"customer": "ada"}}"#,
    ]);
    assert_eq!(created["ok"], json!(true), "{created}");
    assert_eq!(created["data"]["current"], json!(["draft"]));
    let fired = c(&[
        "call",
        "state.order.fire",
        "--json",
        r#"{"id": "o-1", "transition": "submit", "event": {"total": 40}}"#,
    ]);
    assert_eq!(
        fired["data"]["instance"]["current"],
        json!(["review"]),
        "{fired}"
    );
    std::thread::sleep(Duration::from_millis(20));
    let mark = polycall::state::time::format(polycall::state::now_us());
    std::thread::sleep(Duration::from_millis(20));
    // A wrong transition: a typed error and exit 1 (failed precondition).
    let bad = rt.cli(&[
        "call",
        "state.order.fire",
        "--json",
        r#"{"id": "o-1", "transition": "ship"}"#,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("`ship` fires from approved but the instance is in review")
    );
    // Anonymous callers are not `user:*`: approving is denied (exit 7).
    let denied = rt.cli(&[
        "call",
        "state.order.fire",
        "--json",
        r#"{"id": "o-1", "transition": "approve"}"#,
    ]);
    assert_eq!(
        denied.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // Edit goes back to draft; then recover to the mark: review again.
    c(&[
        "call",
        "state.order.fire",
        "--json",
        r#"{"id": "o-1", "transition": "edit"}"#,
    ]);
    let restored = c(&[
        "state",
        "restore",
        "--at",
        &mark,
        "--machine",
        "order",
        "--instance",
        "o-1",
    ]);
    assert_eq!(
        restored["data"]["restored"][0]["instance"]["current"],
        json!(["review"]),
        "{restored}"
    );
    // Watch sees the next transition (a second process, as a user would run it).
    let watcher = bin()
        .args([
            "--format",
            "json",
            "state",
            "watch",
            "--count",
            "1",
            "--endpoint",
            &ep,
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c(&[
        "call",
        "state.order.fire",
        "--json",
        r#"{"id": "o-1", "transition": "edit"}"#,
    ]);
    let w = watcher.wait_with_output().unwrap();
    let line: Value = serde_json::from_str(String::from_utf8_lossy(&w.stdout).trim()).unwrap();
    assert_eq!(line["event"]["transition"], json!("edit"), "{line}");
    // Graph: DOT from the definitions, rendered by graphviz's dot.
    let dot_file = dir.join("order.dot");
    let o = bin()
        .args(["state", "graph", "order", "--dir"])
        .arg(machines())
        .arg("-o")
        .arg(&dot_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::process::Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot_file)
        .output()
        .expect(
            "graphviz's dot is needed: apt-get install -y graphviz (`cargo xtask ci` installs it)",
        );
    assert!(
        svg.status.success(),
        "graphviz rejected the DOT: {}",
        String::from_utf8_lossy(&svg.stderr)
    );
    let svg = String::from_utf8_lossy(&svg.stdout);
    for needle in ["<svg", "submit [event.total &gt; 0]", "cluster_active"] {
        assert!(svg.contains(needle), "{needle} missing from the SVG");
    }
    let mermaid = rt.cli(&[
        "state", "graph", "order", "--format", "mermaid", "--id", "o-1",
    ]);
    assert!(String::from_utf8_lossy(&mermaid.stdout).starts_with("stateDiagram-v2\n"));
    // As JSON, from the definitions: the states and transitions for tools.
    let graph_json = bin()
        .args(["state", "graph", "order", "--format", "json", "--dir"])
        .arg(machines())
        .output()
        .unwrap();
    let g: Value = serde_json::from_slice(&graph_json.stdout).unwrap();
    assert_eq!(g["initial"], json!("draft"));
    assert_eq!(g["transitions"].as_array().unwrap().len(), 4);
    // dot and mermaid belong to `state graph` only: a usage error elsewhere.
    let misuse = rt.cli(&["--format", "dot", "status"]);
    assert_eq!(misuse.status.code(), Some(2));
    // Timeline: one self-contained HTML page with every event.
    let html_file = dir.join("o-1.html");
    let o = rt.cli(&[
        "state",
        "timeline",
        "order",
        "o-1",
        "-o",
        html_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&html_file).unwrap();
    assert!(
        html.starts_with("<!doctype html>") && !html.contains("<script") && !html.contains("http")
    );
    assert_eq!(
        html.matches("<li class=").count(),
        5,
        "created, submit, edit, restored, edit: {html}"
    );
    // Backup while running, restore into a fresh directory, same state there.
    let backup = dir.join("backup.redb");
    let b = c(&[
        "state",
        "backup",
        backup.to_str().unwrap(),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ]);
    assert_eq!(b["ok"], json!(true), "{b}");
    let before = c(&["call", "state.order.get", "--json", r#"{"id": "o-1"}"#])["data"].clone();
    rt.signal("-TERM");
    rt.wait(Duration::from_secs(10));
    let fresh = temp("e2e-fresh");
    let restore_backup = || {
        bin()
            .args(["state", "restore-backup"])
            .arg(&backup)
            .arg("--state-dir")
            .arg(fresh.join("state"))
            .output()
            .unwrap()
    };
    let o = restore_backup();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(restore_backup().status.code(), Some(3), "never overwrites");
    let rt2 = start(&fresh);
    let after = cli_json(
        &rt2,
        &["call", "state.order.get", "--json", r#"{"id": "o-1"}"#],
    )["data"]
        .clone();
    assert_eq!(after, before);
    drop(rt2);
    drop(tokio);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&fresh);
}

#[test]
fn invalid_definitions_stop_the_runtime_with_positions() {
    let dir = temp("invalid");
    let defs = dir.join("machines");
    std::fs::create_dir_all(&defs).unwrap();
    std::fs::write(
        defs.join("bad.toml"),
        "name = \"bad\"\ninitial = \"a\"\n[[state]]\nname = \"a\"\n[[transition]]\nname = \"go\"\nfrom = \"a\"\nto = \"b\"\nguard = \"event.x >\"\n",
    )
    .unwrap();
    let check = bin().args(["state", "check"]).arg(&defs).output().unwrap();
    assert_eq!(check.status.code(), Some(3));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("bad.toml:5:1: error: transition `go` goes to unknown state `b`"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:9:9: error: transition `go` guard `event.x >` does not compile"),
        "{err}"
    );
    let run = bin()
        .args(["run", "--endpoint", "127.0.0.1:0", "--machines"])
        .arg(&defs)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("bad.toml:5:1"));
    let good = bin()
        .args(["state", "check"])
        .arg(machines())
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
