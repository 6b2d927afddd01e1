//! The store on disk (real redb files): recovery after a restart, snapshots and
//! compaction, point-in-time recovery, backups, group commit, integrity.

use polycall_test_support::TempDir;
use std::path::PathBuf;

use polycall_state::{At, Durability, Machine, StateError, StateHost, StoreConfig, load, now_us};
use serde_json::json;

/// The store's file in a scratch directory.
fn db(dir: &TempDir) -> PathBuf {
    dir.join("state.redb")
}

fn order_with(edit: impl Fn(String) -> String) -> Machine {
    load::from_str(
        &edit(include_str!("machines/order.toml").to_string()),
        "order.toml",
    )
    .unwrap()
}

fn order() -> Machine {
    order_with(|s| s)
}

fn counter(durability: Durability, snapshot_every: u64) -> Machine {
    Machine::compile(
        polycall_state::MachineDef::builder("counter", "on")
            .state("on")
            .transition_def(polycall_state::TransitionDef {
                name: "add".into(),
                from: "on".into(),
                to: "on".into(),
                kind: polycall_state::TransitionKind::Internal,
                action: vec![("n".into(), "context.n + event.by".into())],
                ..Default::default()
            })
            .context("n", json!(0))
            .durability(durability)
            .snapshot_every(snapshot_every)
            .build(),
    )
    .unwrap()
}

fn open(dir: &TempDir, machines: Vec<Machine>) -> StateHost {
    StateHost::open(machines, StoreConfig::new(db(dir))).unwrap()
}

#[tokio::test]
async fn instances_survive_a_restart_with_snapshots_and_log() {
    let dir = TempDir::new("restart");
    let host = open(&dir, vec![order(), counter(Durability::Sync, 5)]);
    host.create("order", Some("o1"), json!({"customer": "ada"}))
        .await
        .unwrap();
    host.fire("o1", "submit", json!({"total": 12}), None)
        .await
        .unwrap();
    host.create("counter", Some("c1"), json!({})).await.unwrap();
    for i in 1..=23 {
        host.fire("c1", "add", json!({"by": i}), None)
            .await
            .unwrap();
    }
    host.set_lock("o1", "active", true).await.unwrap();
    let before_o = host.get("o1").await.unwrap();
    let before_c = host.get("c1").await.unwrap();
    drop(host);

    let host = open(&dir, vec![order(), counter(Durability::Sync, 5)]);
    let o = host.get("o1").await.unwrap();
    let c = host.get("c1").await.unwrap();
    assert_eq!(o.state, before_o.state);
    assert_eq!(c.state, before_c.state);
    assert_eq!(c.state.context["n"], json!(276));
    assert_eq!(o.current, vec!["review"]);
    assert!(o.state.locked.contains("active"));
    // History was compacted behind the snapshots (keep 16 by default; 24 events / 5 < 16: all kept).
    assert_eq!(host.history("c1", 1000).unwrap().len(), 24);
    assert_eq!(
        host.create("order", Some("o1"), json!({}))
            .await
            .unwrap_err(),
        StateError::InstanceExists("o1".into())
    );
}

#[tokio::test]
async fn the_log_is_compacted_behind_kept_snapshots() {
    let dir = TempDir::new("compact");
    let mut cfg = StoreConfig::new(db(&dir));
    cfg.keep_snapshots = 2;
    let host = StateHost::open(vec![counter(Durability::Sync, 10)], cfg.clone()).unwrap();
    host.create("counter", Some("c"), json!({})).await.unwrap();
    for _ in 0..100 {
        host.fire("c", "add", json!({"by": 1}), None).await.unwrap();
    }
    let hist = host.history("c", 1000).unwrap();
    assert!(
        hist.len() <= 21,
        "log kept behind 2 snapshots: {} records",
        hist.len()
    );
    let oldest = hist[0].index;
    // Recovery to before the window is refused, within it works.
    assert!(matches!(
        host.state_at("c", At::Index(oldest - 2)),
        Err(StateError::Precondition(_))
    ));
    assert_eq!(
        host.state_at("c", At::Index(hist.last().unwrap().index))
            .unwrap()
            .unwrap()
            .context["n"],
        json!(100)
    );
    drop(host);
    let host = StateHost::open(vec![counter(Durability::Sync, 10)], cfg).unwrap();
    assert_eq!(host.get("c").await.unwrap().state.context["n"], json!(100));
}

#[tokio::test]
async fn point_in_time_recovery_to_a_time_and_to_an_index() {
    let dir = TempDir::new("pitr");
    let host = open(&dir, vec![counter(Durability::Sync, 4)]);
    host.create("counter", Some("a"), json!({})).await.unwrap();
    host.create("counter", Some("b"), json!({})).await.unwrap();
    let mut marks = Vec::new();
    for i in 1..=10 {
        host.fire("a", "add", json!({"by": 1}), None).await.unwrap();
        let (_, v) = host
            .fire("b", "add", json!({"by": 10}), None)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        marks.push((i, now_us(), v.index));
    }
    host.create("counter", Some("late"), json!({}))
        .await
        .unwrap();
    // Every mark, read without changing anything: exactly the state at that time.
    for &(i, t, idx) in &marks {
        assert_eq!(
            host.state_at("a", At::Time(t)).unwrap().unwrap().context["n"],
            json!(i)
        );
        assert_eq!(
            host.state_at("b", At::Time(t)).unwrap().unwrap().context["n"],
            json!(10 * i)
        );
        assert_eq!(
            host.state_at("b", At::Index(idx)).unwrap().unwrap().context["n"],
            json!(10 * i)
        );
        assert_eq!(
            host.state_at("b", At::Index(idx - 1))
                .unwrap()
                .unwrap()
                .context["n"],
            json!(10 * (i - 1))
        );
    }
    // Restore one instance to mark 3.
    let (_, t3, _) = marks[2];
    let out = host.restore_to(Some("a"), At::Time(t3)).await.unwrap();
    assert_eq!(out[0].1.as_ref().unwrap().state.context["n"], json!(3));
    assert_eq!(
        host.get("b").await.unwrap().state.context["n"],
        json!(100),
        "b untouched"
    );
    // Restore all to mark 6: `late` did not exist then and goes away.
    let (_, t6, _) = marks[5];
    host.restore_to(None, At::Time(t6)).await.unwrap();
    assert_eq!(host.get("a").await.unwrap().state.context["n"], json!(6));
    assert_eq!(host.get("b").await.unwrap().state.context["n"], json!(60));
    assert!(matches!(
        host.get("late").await,
        Err(StateError::UnknownInstance(_))
    ));
    // The recovery is logged: it survives a restart, and events continue from it.
    host.fire("a", "add", json!({"by": 100}), None)
        .await
        .unwrap();
    drop(host);
    let host = open(&dir, vec![counter(Durability::Sync, 4)]);
    assert_eq!(host.get("a").await.unwrap().state.context["n"], json!(106));
    assert_eq!(host.get("b").await.unwrap().state.context["n"], json!(60));
    assert_eq!(host.instances().await, vec!["a", "b"]);
}

#[tokio::test]
async fn backup_under_writes_restores_into_a_fresh_directory() {
    let dir = TempDir::new("backup");
    let host = std::sync::Arc::new(open(&dir, vec![counter(Durability::Sync, 8)]));
    for id in ["x", "y"] {
        host.create("counter", Some(id), json!({})).await.unwrap();
    }
    let writer = {
        let host = host.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                host.fire("x", "add", json!({"by": 1}), None).await.unwrap();
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let file = dir.join("backup.redb");
    let info = host.backup(&file).await.unwrap();
    writer.await.unwrap();
    assert!(host.backup(&file).await.is_err(), "never overwrites");
    // The backup is one consistent point: x's count there equals its log length there.
    let fresh = TempDir::new("backup-restore");
    polycall_state::Store::restore_backup(&file, &db(&fresh)).unwrap();
    assert!(
        polycall_state::Store::restore_backup(&file, &db(&fresh)).is_err(),
        "only into a fresh directory"
    );
    let restored = open(&fresh, vec![counter(Durability::Sync, 8)]);
    let x = restored.get("x").await.unwrap();
    let n = x.state.context["n"].as_u64().unwrap();
    assert_eq!(n, x.state.events, "each event added 1");
    assert_eq!(restored.last_index(), info.last_index);
    assert_eq!(
        restored.get("y").await.unwrap().state,
        host.get("y").await.unwrap().state
    );
    // And it goes on from there.
    restored
        .fire("x", "add", json!({"by": 1}), None)
        .await
        .unwrap();
    // A file that is not a backup is refused.
    let junk = dir.join("junk.redb");
    std::fs::write(&junk, b"not a database").unwrap();
    assert!(polycall_state::Store::restore_backup(&junk, &dir.join("other/state.redb")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_share_commits() {
    let dir = TempDir::new("group");
    let host = std::sync::Arc::new(open(&dir, vec![counter(Durability::Sync, 0)]));
    for i in 0..64 {
        host.create("counter", Some(&format!("c{i}")), json!({}))
            .await
            .unwrap();
    }
    let before = host.store().stats();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                host.fire(&format!("c{i}"), "add", json!({"by": 1}), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = host.store().stats();
    let requests = after.requests - before.requests;
    let syncs = after.syncs - before.syncs;
    assert_eq!(requests, 64 * 20);
    assert!(
        syncs * 4 < requests,
        "group commit: {syncs} fsyncs for {requests} acknowledged events"
    );
    for i in 0..64 {
        assert_eq!(
            host.get(&format!("c{i}")).await.unwrap().state.context["n"],
            json!(20)
        );
    }
}

#[tokio::test]
async fn batched_and_none_modes_are_acknowledged_and_flushed() {
    let dir = TempDir::new("batched");
    let mut cfg = StoreConfig::new(db(&dir));
    cfg.batch_window = std::time::Duration::from_millis(30);
    let host = StateHost::open(vec![counter(Durability::Batched, 0)], cfg.clone()).unwrap();
    host.create("counter", Some("b"), json!({})).await.unwrap();
    for _ in 0..50 {
        host.fire("b", "add", json!({"by": 2}), None).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let stats = host.store().stats();
    assert!(stats.syncs >= 1 && stats.syncs < 10, "{stats:?}");
    drop(host);
    let host = StateHost::open(vec![counter(Durability::Batched, 0)], cfg).unwrap();
    assert_eq!(host.get("b").await.unwrap().state.context["n"], json!(100));
}

#[tokio::test]
async fn a_changed_definition_leaves_old_instances_on_their_version() {
    let dir = TempDir::new("versions");
    let host = open(&dir, vec![order()]);
    host.create("order", Some("old"), json!({})).await.unwrap();
    host.fire("old", "submit", json!({"total": 1}), None)
        .await
        .unwrap();
    drop(host);
    // A new definition: the guard changed.
    let v2 = order_with(|s| s.replace("event.total > 0", "event.total > 100"));
    let host = open(&dir, vec![v2]);
    let old = host.get("old").await.unwrap();
    assert_eq!(
        old.current,
        vec!["review"],
        "replayed with the definition it was created with"
    );
    // It goes on under its own version (as long-running workflows do), until it ends.
    let (_, now) = host
        .fire("old", "approve", json!({}), Some("user:x"))
        .await
        .unwrap();
    assert_eq!(now.state.version, old.state.version);
    assert_ne!(now.state.version, host.machine("order").unwrap().version());
    host.create("order", Some("new"), json!({})).await.unwrap();
    assert!(
        host.fire("new", "submit", json!({"total": 50}), None)
            .await
            .is_err(),
        "new guard"
    );
}

#[tokio::test]
async fn a_tampered_log_is_detected_on_recovery() {
    use redb::{ReadableDatabase, ReadableTable};
    let dir = TempDir::new("tamper");
    let host = open(&dir, vec![counter(Durability::Sync, 0)]);
    host.create("counter", Some("t"), json!({})).await.unwrap();
    host.fire("t", "add", json!({"by": 7}), None).await.unwrap();
    drop(host);
    // Change the logged event behind the store's back (7 → 8), keeping its hash.
    const LOG: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("log");
    {
        let db = redb::Database::open(db(&dir)).unwrap();
        let read = db.begin_read().unwrap();
        let rows: Vec<((String, u64), Vec<u8>)> = read
            .open_table(LOG)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (i, n) = k.value();
                ((i.to_string(), n), v.value().to_vec())
            })
            .collect();
        drop(read);
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for ((i, n), v) in rows {
                let mut rec: polycall_state::Record = postcard::from_bytes(&v).unwrap();
                if let polycall_state::Entry::Fired { event, .. } = &mut rec.entry {
                    *event = event.replace('7', "8");
                    log.insert(
                        (i.as_str(), n),
                        postcard::to_stdvec(&rec).unwrap().as_slice(),
                    )
                    .unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }
    let err = StateHost::open(
        vec![counter(Durability::Sync, 0)],
        StoreConfig::new(db(&dir)),
    )
    .unwrap_err();
    assert!(matches!(err, StateError::Integrity(_)), "{err}");
    assert!(err.to_string().contains("replaying record"), "{err}");
}

#[tokio::test]
async fn watchers_see_changes_as_they_happen() {
    let dir = TempDir::new("watch");
    let host = std::sync::Arc::new(open(&dir, vec![counter(Durability::Sync, 0)]));
    host.create("counter", Some("w"), json!({})).await.unwrap();
    let after = host.last_index();
    let watcher = {
        let host = host.clone();
        tokio::spawn(async move {
            host.changes(after, 100, std::time::Duration::from_secs(5))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    host.fire("w", "add", json!({"by": 3}), Some("user:z"))
        .await
        .unwrap();
    let got = watcher.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event["transition"], json!("add"));
    assert_eq!(got[0].event["principal"], json!("user:z"));
    let none = host
        .changes(host.last_index(), 100, std::time::Duration::from_millis(20))
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn recovery_before_the_window_changes_nothing_and_later_instances_did_not_exist() {
    let dir = TempDir::new("window");
    let mut cfg = StoreConfig::new(db(&dir));
    cfg.keep_snapshots = 1;
    let host = StateHost::open(vec![counter(Durability::Sync, 5)], cfg).unwrap();
    host.create("counter", Some("early"), json!({}))
        .await
        .unwrap();
    for _ in 0..3 {
        host.fire("early", "add", json!({"by": 1}), None)
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let t = now_us();
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    host.create("counter", Some("late"), json!({}))
        .await
        .unwrap();
    for _ in 0..30 {
        host.fire("late", "add", json!({"by": 1}), None)
            .await
            .unwrap();
        host.fire("early", "add", json!({"by": 1}), None)
            .await
            .unwrap();
    }
    // Both logs are compacted behind their newest snapshot.
    assert!(host.history("late", 1000).unwrap().len() < 10);
    // `late` was created after t: it did not exist then, compacted log or not.
    assert_eq!(host.state_at("late", At::Time(t)).unwrap(), None);
    // `early`'s history before t is gone: recovering every instance to t is refused,
    // and refused before anything changed.
    let (early, late) = (
        host.get("early").await.unwrap().state,
        host.get("late").await.unwrap().state,
    );
    let err = host.restore_to(None, At::Time(t)).await.unwrap_err();
    assert!(
        err.to_string().contains("before the recovery window"),
        "{err}"
    );
    assert_eq!(host.get("early").await.unwrap().state, early);
    assert_eq!(host.get("late").await.unwrap().state, late);
}
