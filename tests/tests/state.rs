//! State machines through the runtime from another language: a Python program (the
//! binding in `bindings/python`) creates and fires instances of a machine defined in TOML,
//! and sees typed errors; scheduled backups appear and rotate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use polycall_runtime::{Runtime, RuntimeConfig, StateSettings};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn machines() -> PathBuf {
    repo().join("crates/polycall-cli/tests/fixtures/machines")
}

fn temp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("polycall-tests-state-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("temp dir");
    p
}

async fn runtime(dir: &Path, state: StateSettings) -> Runtime {
    Runtime::start(
        RuntimeConfig::default()
            .endpoint("127.0.0.1:0".parse().expect("endpoint"))
            .state_dir(dir.to_path_buf())
            .state(state)
            .debug_methods(true),
    )
    .await
    .expect("runtime starts")
}

const PYTHON: &str = r#"
import asyncio, json, sys
sys.path.insert(0, sys.argv[2])
from polycall import Client
from polycall.errors import PolycallError

async def main():
    async with await Client.connect(sys.argv[1]) as c:
        o = await c.call_json("state.order.create", {"id": "py-1", "context": {"customer": "guido"}})
        assert o["current"] == ["draft"], o
        r = await c.call_json("state.order.fire", {"id": "py-1", "transition": "submit", "event": {"total": 12}})
        assert r["fired"]["entered"] == ["active", "review"], r
        errors = []
        for bad in [{"id": "py-1", "transition": "ship"},
                    {"id": "py-1", "transition": "submit", "event": {"total": 1}},
                    {"id": "nobody", "transition": "edit"}]:
            try:
                await c.call_json("state.order.fire", bad)
            except PolycallError as e:
                errors.append(e.name)
        # 50 instances of the counter, fired concurrently: one event at a time each.
        await asyncio.gather(*[c.call_json("state.counter.create", {"id": f"k{i}"}) for i in range(50)])
        await asyncio.gather(*[c.call_json("state.counter.fire", {"id": f"k{i % 50}", "transition": "add", "event": {"by": 1}})
                               for i in range(500)])
        counts = [ (await c.call_json("state.counter.get", {"id": f"k{i}"}))["context"]["n"] for i in range(50)]
        hist = await c.call_json("state.order.history", {"id": "py-1"})
        print(json.dumps({"errors": errors, "counts": counts, "history": [h["event"]["kind"] for h in hist]}))

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_program_drives_instances_through_the_runtime() {
    let dir = temp("python");
    let rt = runtime(&dir, StateSettings::default().machine_dir(machines())).await;
    let ep = rt.local_endpoint().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                "-c",
                PYTHON,
                &ep,
                repo().join("bindings/python").to_str().expect("utf-8"),
            ])
            .output()
            .expect("python3 runs")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON line");
    assert_eq!(
        v["errors"],
        serde_json::json!(["failed_precondition", "failed_precondition", "not_found"])
    );
    assert_eq!(
        v["counts"],
        serde_json::json!(vec![10; 50]),
        "every event applied exactly once"
    );
    assert_eq!(v["history"], serde_json::json!(["created", "fired"]));
    // The same instance, seen from Rust through the host.
    let host = rt.machines().expect("machines loaded");
    assert_eq!(
        host.get("py-1").await.expect("instance").current,
        vec!["review"]
    );
    rt.shutdown().await;
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_appear_and_rotate() {
    let dir = temp("scheduled");
    let backups = dir.join("backups");
    let rt = runtime(
        &dir,
        StateSettings::default()
            .machine_dir(machines())
            .backup_every(Duration::from_millis(150))
            .backup_keep(2)
            .backup_dir(backups.clone()),
    )
    .await;
    let host = rt.machines().expect("machines loaded").clone();
    host.create("counter", Some("b"), serde_json::json!({}))
        .await
        .expect("create");
    host.fire("b", "add", serde_json::json!({"by": 5}), None)
        .await
        .expect("fire");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&backups)
        .expect("backup directory")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "newest two kept: {files:?}");
    // The newest backup restores into a fresh runtime with the instance in it.
    let fresh = temp("scheduled-fresh");
    polycall_state_restore(&files[1], &fresh.join("state.redb"));
    let rt2 = runtime(&fresh, StateSettings::default().machine_dir(machines())).await;
    let b = rt2
        .machines()
        .expect("machines")
        .get("b")
        .await
        .expect("instance in the backup");
    assert_eq!(b.state.context["n"], serde_json::json!(5));
    rt.shutdown().await;
    rt2.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&fresh);
}

fn polycall_state_restore(backup: &Path, db: &Path) {
    polycall_state::Store::restore_backup(backup, db).expect("backup restores");
}
