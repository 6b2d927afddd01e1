//! Clusters of `polycall run` processes on loopback, under faults: the leader killed
//! with SIGKILL under write load, a node restarted with its disk wiped. Every client
//! operation is recorded (invoke and return times, values) and the history checked for
//! linearizability; acknowledged transitions are counted and none may be lost.
//!
//! Each test stops by itself: load runs for fixed durations and every wait is bounded.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use polycall::net::Channel;
use polycall::{Call, Payload, Status};
use polycall_test_support::linearizability::{self, Recorder};
use polycall_test_support::{TempDir, free_port};
use serde_json::{Value, json};

const REGISTER: &str = r#"
name = "register"
initial = "on"
durability = "sync"

[context]
value = ""

[[state]]
name = "on"

[[transition]]
name = "set"
from = "on"
to = "on"
kind = "internal"
action = { value = "event.value" }
"#;

const COUNTER: &str = r#"
name = "counter"
initial = "on"
durability = "sync"

[context]
n = 0

[[state]]
name = "on"

[[transition]]
name = "add"
from = "on"
to = "on"
kind = "internal"
action = { n = "context.n + event.by" }
"#;

/// A cluster of `polycall run` processes, each in its own state directory.
struct Cluster {
    dir: TempDir,
    members: String,
    endpoints: Vec<String>,
    children: Vec<Option<Child>>,
    sets: Vec<String>,
}

impl Cluster {
    /// `n` nodes (ids 1..=n) on free loopback ports, with `sets` (`--set KEY=VALUE`).
    fn start(n: usize, sets: &[&str]) -> Self {
        let dir = TempDir::new("cluster");
        std::fs::create_dir_all(dir.join("machines")).unwrap();
        std::fs::write(dir.join("machines/register.toml"), REGISTER).unwrap();
        std::fs::write(dir.join("machines/counter.toml"), COUNTER).unwrap();
        let endpoints: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let members = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{}={e}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir,
            members,
            endpoints,
            children: (0..n).map(|_| None).collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n as u64 {
            c.spawn(id);
        }
        c
    }

    fn state_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: u64) {
        let mut cmd = common::bin();
        cmd.arg("run")
            .args(["--node-id", &id.to_string(), "--cluster", &self.members])
            .arg("--state-dir")
            .arg(self.state_dir(id))
            .arg("--machines")
            .arg(self.dir.join("machines"))
            .args(["--drain-timeout-ms", "500"]);
        for s in &self.sets {
            cmd.args(["--set", s]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join(format!("node-{id}.log")))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .unwrap();
        self.children[id as usize - 1] = Some(child);
    }

    /// SIGKILL: no shutdown, no flush beyond what was already fsynced.
    fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.children[id as usize - 1].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The log of node `id` (for failure messages).
    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Channels to every node, connected lazily and again after a failure.
#[derive(Clone)]
struct Clients {
    endpoints: Arc<Vec<String>>,
    channels: Arc<Vec<tokio::sync::Mutex<Option<Channel>>>>,
}

impl Clients {
    fn new(cluster: &Cluster) -> Self {
        Clients {
            endpoints: Arc::new(cluster.endpoints.clone()),
            channels: Arc::new(
                cluster
                    .endpoints
                    .iter()
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
            ),
        }
    }

    /// Calls `method` on node `id` with a deadline.
    async fn call(
        &self,
        id: u64,
        method: &str,
        input: Value,
        limit: Duration,
    ) -> Result<Value, Status> {
        let i = id as usize - 1;
        let channel = {
            let mut slot = self.channels[i].lock().await;
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let endpoint = self.endpoints[i]
                        .parse()
                        .map_err(|e| Status::invalid_input(format!("{e}")))?;
                    let c =
                        tokio::time::timeout(Duration::from_secs(1), Channel::connect(endpoint))
                            .await
                            .map_err(|_| Status::unavailable("connect timed out"))??;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        let call = Call::new(method, Payload::json(&input).unwrap()).unwrap();
        let result = tokio::time::timeout(limit, channel.call(call))
            .await
            .map_err(|_| Status::unavailable("timed out"))
            .and_then(|r| r);
        match result {
            Ok(reply) => Ok(reply.payload.to_json::<Value>().unwrap()),
            Err(s) => {
                if matches!(
                    s.code,
                    polycall::Code::Unavailable | polycall::Code::DeadlineExceeded
                ) {
                    *self.channels[i].lock().await = None;
                }
                Err(s)
            }
        }
    }

    /// Waits until the nodes in `ids` agree on a leader (other than `not`) and it
    /// answers; returns it.
    async fn leader(&self, ids: &[u64], not: Option<u64>, limit: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let mut seen = Vec::new();
            for &id in ids {
                if let Ok(s) = self
                    .call(
                        id,
                        "sys.cluster.status",
                        json!({}),
                        Duration::from_millis(500),
                    )
                    .await
                {
                    seen.push(s["leader"].as_u64());
                }
            }
            if seen.len() == ids.len()
                && let Some(Some(l)) = seen.first().copied()
                && seen.iter().all(|s| *s == Some(l))
                && Some(l) != not
                && ids.contains(&l)
            {
                return l;
            }
            assert!(
                started.elapsed() < limit,
                "no agreed leader within {limit:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the nodes in `ids` hold the same state: equal state hashes (over
    /// every key, its version — the log index that wrote it — and value). Applied
    /// indexes may still differ by entries that change no key (a new leader's blank
    /// entry reaches a follower's commit index with the next append).
    async fn converged(&self, ids: &[u64], limit: Duration) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let mut digests = Vec::new();
            for &id in ids {
                if let Ok(d) = self
                    .call(
                        id,
                        "sys.cluster.digest",
                        json!({}),
                        Duration::from_millis(500),
                    )
                    .await
                {
                    digests.push(d);
                }
            }
            if digests.len() == ids.len()
                && digests
                    .iter()
                    .all(|d| d["state_hash"] == digests[0]["state_hash"])
            {
                return digests;
            }
            assert!(
                started.elapsed() < limit,
                "the nodes did not converge within {limit:?}: {digests:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the load left: acknowledged and indeterminate counter additions, and when the
/// first write after `killed_at` was acknowledged.
struct Load {
    acked_adds: u64,
    unknown_adds: u64,
    first_write_after_kill: Option<Duration>,
}

/// Runs writers and readers against the nodes in `alive` until `stop`: writers `set`
/// shared registers (recorded), readers read them linearizably (recorded), counter
/// writers `add` 1 (acknowledged ones counted).
async fn load(
    clients: Clients,
    alive: Arc<std::sync::Mutex<Vec<u64>>>,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    killed_at: Arc<std::sync::Mutex<Option<Instant>>>,
) -> Load {
    let acked = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let first_after_kill = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let pick = |alive: &Arc<std::sync::Mutex<Vec<u64>>>, n: u64| {
        let a = alive.lock().unwrap();
        a[(n as usize) % a.len()]
    };
    let mut tasks = Vec::new();
    // Register writers.
    for w in 0..4u64 {
        let (clients, alive, recorder, stop) = (
            clients.clone(),
            alive.clone(),
            recorder.clone(),
            stop.clone(),
        );
        let (killed_at, first_after_kill) = (killed_at.clone(), first_after_kill.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("reg-{}", n % 2);
                let value = format!("w{w}-{n}");
                let node = pick(&alive, w + n);
                let invoked = Instant::now();
                let op = recorder.invoke_write(w as usize, &key, value.clone());
                let r = clients
                    .call(
                        node,
                        "state.register.fire",
                        json!({"id": key, "transition": "set", "event": {"value": value}}),
                        Duration::from_secs(3),
                    )
                    .await;
                match r {
                    Ok(_) => {
                        recorder.complete_write(op);
                        if let Some(k) = *killed_at.lock().unwrap()
                            && invoked > k
                        {
                            let mut f = first_after_kill.lock().unwrap();
                            if f.is_none() {
                                *f = Some(k.elapsed());
                            }
                        }
                    }
                    // Outcome unknown: left open (it may or may not have happened).
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    // Linearizable readers.
    for r in 0..2u64 {
        let (clients, alive, recorder, stop) = (
            clients.clone(),
            alive.clone(),
            recorder.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("reg-{}", n % 2);
                let node = pick(&alive, r + n * 7);
                let op = recorder.invoke_read(10 + r as usize, &key);
                match clients
                    .call(
                        node,
                        "state.register.get",
                        json!({"id": key}),
                        Duration::from_secs(3),
                    )
                    .await
                {
                    Ok(v) => {
                        let seen = v["context"]["value"].as_str().unwrap_or_default();
                        recorder.complete_read(op, (!seen.is_empty()).then(|| seen.to_string()));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    // Counter writers: every acknowledged `add` must be in the final count.
    for c in 0..2u64 {
        let (clients, alive, stop) = (clients.clone(), alive.clone(), stop.clone());
        let (acked, unknown) = (acked.clone(), unknown.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let node = pick(&alive, c * 3 + n);
                match clients
                    .call(
                        node,
                        "state.counter.fire",
                        json!({"id": "hits", "transition": "add", "event": {"by": 1}}),
                        Duration::from_secs(3),
                    )
                    .await
                {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        unknown.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let first = *first_after_kill.lock().unwrap();
    Load {
        acked_adds: acked.load(Ordering::Relaxed),
        unknown_adds: unknown.load(Ordering::Relaxed),
        first_write_after_kill: first,
    }
}

async fn create_instances(clients: &Clients) {
    for id in ["reg-0", "reg-1"] {
        clients
            .call(
                1,
                "state.register.create",
                json!({"id": id}),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    clients
        .call(
            1,
            "state.counter.create",
            json!({"id": "hits"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_nothing_and_a_new_leader_writes_within_3s() {
    let mut cluster = Cluster::start(
        3,
        &["cluster.heartbeat_ms=50", "cluster.election_timeout_ms=300"],
    );
    let clients = Clients::new(&cluster);
    let leader = clients
        .leader(&[1, 2, 3], None, Duration::from_secs(20))
        .await;
    create_instances(&clients).await;

    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(std::sync::Mutex::new(vec![1, 2, 3]));
    let killed_at = Arc::new(std::sync::Mutex::new(None));
    let running = tokio::spawn(load(
        clients.clone(),
        alive.clone(),
        recorder.clone(),
        stop.clone(),
        killed_at.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SIGKILL the leader mid-load; clients move to the nodes left.
    alive.lock().unwrap().retain(|&n| n != leader);
    cluster.kill9(leader);
    *killed_at.lock().unwrap() = Some(Instant::now());
    let left: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let new_leader = clients
        .leader(&left, Some(leader), Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::Relaxed);
    let load = running.await.unwrap();

    let first = load.first_write_after_kill.unwrap_or_else(|| {
        panic!(
            "no write succeeded after the leader ({leader}) was killed; new leader {new_leader}\n{}",
            cluster.log(new_leader)
        )
    });
    assert!(
        first < Duration::from_secs(3),
        "the first write after the kill took {first:?}"
    );

    // The killed node comes back and catches up; every node holds the same state.
    cluster.spawn(leader);
    let digests = clients.converged(&[1, 2, 3], Duration::from_secs(20)).await;

    // No acknowledged `add` is lost, and none is counted twice.
    let count = clients
        .call(
            1,
            "state.counter.get",
            json!({"id": "hits"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap()["context"]["n"]
        .as_u64()
        .unwrap();
    assert!(
        count >= load.acked_adds && count <= load.acked_adds + load.unknown_adds,
        "counter {count}: {} acknowledged, {} unknown",
        load.acked_adds,
        load.unknown_adds
    );
    assert!(load.acked_adds > 10, "too little load: {}", load.acked_adds);

    // Every read saw a state some order of the writes explains.
    let history = recorder.history();
    let completed = history.iter().filter(|o| o.complete.is_some()).count();
    assert!(completed > 20, "too few operations recorded: {completed}");
    if let Err(v) = linearizability::check(&history) {
        panic!("the history is not linearizable: {v}");
    }
    // The checker is not blind: the same history with one stale read served as if it
    // were linearizable — after every write had returned, a read that sees the key's
    // first acknowledged value — is refused.
    let mut stale = history.clone();
    let end = stale.iter().filter_map(|o| o.complete).max().unwrap();
    let key = "reg-0";
    let first = stale
        .iter()
        .filter(|o| o.key == key && o.complete.is_some())
        .find_map(|o| match &o.kind {
            linearizability::Kind::Write { value } => Some(value.clone()),
            _ => None,
        })
        .unwrap();
    let last = stale
        .iter()
        .filter(|o| o.key == key && o.complete.is_some())
        .filter_map(|o| match &o.kind {
            linearizability::Kind::Write { value } => Some((o.complete, value.clone())),
            _ => None,
        })
        .max()
        .unwrap()
        .1;
    assert_ne!(first, last, "one write only: nothing can be stale");
    // Both reads come after everything: the first sees the newest value (a fresh
    // read), the second the oldest (stale).
    for (at, seen) in [(end + 1, last.clone()), (end + 3, first.clone())] {
        stale.push(linearizability::Op {
            client: 99,
            key: key.into(),
            kind: linearizability::Kind::Read { seen: Some(seen) },
            invoke: at,
            complete: Some(at + 1),
        });
    }
    match linearizability::check(&stale) {
        Err(linearizability::Violation::NotLinearizable { key: k, .. }) => assert_eq!(k, key),
        other => panic!("a stale read was not caught: {other:?}"),
    }
    eprintln!(
        "leader {leader} killed; node {new_leader} took writes after {first:?}; {} adds acknowledged, counter {count}; {completed} recorded operations linearizable; digests {digests:?}",
        load.acked_adds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wiped_disk_rejoins_by_snapshot() {
    let mut cluster = Cluster::start(
        3,
        &[
            "cluster.heartbeat_ms=100",
            "cluster.election_timeout_ms=500",
            "cluster.snapshot_every=20",
        ],
    );
    let clients = Clients::new(&cluster);
    let leader = clients
        .leader(&[1, 2, 3], None, Duration::from_secs(20))
        .await;
    create_instances(&clients).await;
    let victim = if leader == 3 { 2 } else { 3 };
    cluster.kill9(victim);
    std::fs::remove_dir_all(cluster.state_dir(victim)).unwrap();
    // Enough writes that the log the victim would need is gone, in a snapshot.
    for n in 0..80u64 {
        clients
            .call(
                leader,
                "state.counter.fire",
                json!({"id": "hits", "transition": "add", "event": {"by": 1}}),
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|s| panic!("write {n}: {s}"));
    }
    cluster.spawn(victim);
    clients.converged(&[1, 2, 3], Duration::from_secs(20)).await;
    let digest = clients
        .call(
            victim,
            "sys.cluster.digest",
            json!({}),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(
        digest["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "the wiped node caught up without a snapshot: {digest}"
    );
    let stale = clients
        .call(
            victim,
            "state.counter.get",
            json!({"id": "hits", "consistency": "stale"}),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(stale["context"]["n"], 80, "{stale}");
}
