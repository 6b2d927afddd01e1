//! `cargo xtask bench state`: acknowledged transitions per second in `sync` mode (each
//! one fsynced before its acknowledgement) with 1 and with 64 concurrent instances,
//! beside raw redb single-key commits per second with fsync, all on the same disk in
//! one run. Writes `target/bench/state.md` and `state.json`.
//!
//! `--seconds S` per measurement (default 3; `--quick`: 1).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use polycall_state::{
    Durability, Machine, MachineDef, StateHost, StoreConfig, TransitionDef, TransitionKind,
};
use serde_json::json;

fn counter() -> Machine {
    Machine::compile(
        MachineDef::builder("counter", "on")
            .state("on")
            .transition_def(TransitionDef {
                name: "add".into(),
                from: "on".into(),
                to: "on".into(),
                kind: TransitionKind::Internal,
                action: vec![("n".into(), "context.n + event.by".into())],
                ..Default::default()
            })
            .context("n", json!(0))
            .durability(Durability::Sync)
            .build(),
    )
    .expect("valid machine")
}

fn dir(tag: &str) -> std::path::PathBuf {
    // Under target/, on the same disk as the build (not a tmpfs /tmp).
    let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/bench/state-db")
        .join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("bench directory");
    d
}

/// Raw redb: one key per write transaction, Durability::Immediate (an fsync each).
fn raw_redb(secs: f64) -> (u64, f64) {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let d = dir("raw");
    let db = redb::Database::create(d.join("raw.redb")).expect("db");
    let value = [7u8; 64];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut txn = db.begin_write().expect("txn");
        txn.set_durability(redb::Durability::Immediate)
            .expect("durability");
        {
            let mut t = txn.open_table(T).expect("table");
            t.insert(n, value.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        n += 1;
    }
    let el = start.elapsed().as_secs_f64();
    drop(db);
    let _ = std::fs::remove_dir_all(&d);
    (n, el)
}

/// `instances` writers, each firing on its own instance one event at a time.
async fn transitions(instances: usize, secs: f64) -> (u64, f64, u64) {
    let d = dir(&format!("sm{instances}"));
    let host = Arc::new(
        StateHost::open(vec![counter()], StoreConfig::new(d.join("state.redb"))).expect("host"),
    );
    for i in 0..instances {
        host.create("counter", Some(&format!("c{i}")), json!({}))
            .await
            .expect("create");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let before = host.store().stats();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..instances {
        let (host, stop, count) = (host.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("c{i}");
            while !stop.load(Ordering::Relaxed) {
                host.fire(&id, "add", json!({"by": 1}), None)
                    .await
                    .expect("fire");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    let el = start.elapsed().as_secs_f64();
    let syncs = host.store().stats().syncs - before.syncs;
    drop(host);
    let _ = std::fs::remove_dir_all(&d);
    (count.load(Ordering::Relaxed), el, syncs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut secs = if args.iter().any(|a| a == "--quick") {
        1.0
    } else {
        3.0
    };
    if let Some(i) = args.iter().position(|a| a == "--seconds") {
        secs = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(secs);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (raw_n, raw_el) = raw_redb(secs);
    let raw = raw_n as f64 / raw_el;
    let (one_n, one_el, one_syncs) = rt.block_on(transitions(1, secs));
    let (many_n, many_el, many_syncs) = rt.block_on(transitions(64, secs));
    let one = one_n as f64 / one_el;
    let many = many_n as f64 / many_el;
    let md = format!(
        "| measurement | operations | seconds | per second | fsyncs | per fsync | ratio to raw redb |\n\
         |---|---|---|---|---|---|---|\n\
         | raw redb: one key per commit, fsync each | {raw_n} | {raw_el:.2} | {raw:.0} | {raw_n} | 1.0 | 1.00× |\n\
         | sync transitions, 1 instance | {one_n} | {one_el:.2} | {one:.0} | {one_syncs} | {:.1} | {:.2}× |\n\
         | sync transitions, 64 instances | {many_n} | {many_el:.2} | {many:.0} | {many_syncs} | {:.1} | {:.2}× |\n",
        one_n as f64 / one_syncs.max(1) as f64,
        one / raw,
        many_n as f64 / many_syncs.max(1) as f64,
        many / raw,
    );
    println!("\n{md}");
    let verdict = if many >= 5.0 * raw { "PASS" } else { "FAIL" };
    println!(
        "target: 64 instances ≥ 5× raw single-commit rate: {:.2}× {verdict}",
        many / raw
    );
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("state.md"), &md);
    let _ = std::fs::write(
        out.join("state.json"),
        json!({
            "seconds": secs,
            "raw_redb_commits_per_s": raw,
            "sync_1_instance_per_s": one,
            "sync_64_instances_per_s": many,
            "fsyncs_1": one_syncs,
            "fsyncs_64": many_syncs,
            "ratio_64_to_raw": many / raw,
        })
        .to_string(),
    );
}
