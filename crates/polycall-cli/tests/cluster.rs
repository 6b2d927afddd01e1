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

use futures_util::StreamExt;
use polycall::net::Channel;
use polycall::{Call, Payload, Status};
use polycall_test_support::linearizability::{self, Recorder};
use polycall_test_support::{TempDir, free_port};
use serde_json::{Value, json};

const REGISTER: &str = include_str!("fixtures/register.toml");

const COUNTER: &str = include_str!("fixtures/machines/counter.toml");

const CART: &str = include_str!("fixtures/cart.toml");

/// A cluster of `polycall run` processes, each in its own state directory — on
/// loopback, or each in a network namespace of its own on a bridge (see [`Net`]).
struct Cluster {
    dir: TempDir,
    members: String,
    endpoints: Vec<String>,
    children: Vec<Option<Child>>,
    sets: Vec<String>,
    net: Option<Net>,
    /// Nodes that listen elsewhere than their member address (behind a proxy).
    listen: std::collections::HashMap<u64, String>,
    /// `--set`s of one node only.
    node_sets: std::collections::HashMap<u64, Vec<String>>,
}

/// Runs `ip ARGS…`, failing the test on an error.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `ip` (iproute2; these tests need it and root): {e}")
        });
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace per node (`10.99.S.<id>`), joined by a bridge in this
/// namespace (`10.99.S.254`): the test reaches every node, and cuts the way between two
/// nodes with blackhole routes in both of their namespaces (a partition with no proxy
/// in the path), removed again to heal. Removed on drop.
struct Net {
    tag: String,
    subnet: u32,
    nodes: usize,
    cuts: Vec<(u64, u64)>,
}

impl Net {
    fn new(nodes: usize) -> Self {
        let pid = std::process::id();
        let net = Net {
            tag: format!("pc{pid}"),
            subnet: 10 + pid % 240,
            nodes,
            cuts: Vec::new(),
        };
        net.remove(); // leftovers of a run with this pid that was killed
        let bridge = format!("{}b", net.tag);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.addr(254)),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for id in 1..=nodes as u64 {
            let (ns, veth) = (net.namespace(id), format!("{}v{id}", net.tag));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &bridge]);
            ip(&["link", "set", &veth, "up"]);
            let addr = format!("{}/24", net.addr(id as u32));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn addr(&self, host: u32) -> String {
        format!("10.99.{}.{host}", self.subnet)
    }

    fn namespace(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    /// Cuts every way between a node of `a` and a node of `b`, both directions.
    fn partition(&mut self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let dest = format!("{}/32", self.addr(to as u32));
                    ip(&[
                        "-n",
                        &self.namespace(from),
                        "route",
                        "add",
                        "blackhole",
                        &dest,
                    ]);
                    self.cuts.push((from, to));
                }
            }
        }
    }

    /// Restores every way cut.
    fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            let dest = format!("{}/32", self.addr(to as u32));
            ip(&[
                "-n",
                &self.namespace(from),
                "route",
                "del",
                "blackhole",
                &dest,
            ]);
        }
    }

    /// Deletes the namespaces (their veth ends go with them) and the bridge, ignoring
    /// what is not there.
    fn remove(&self) {
        for id in 1..=self.nodes as u64 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.namespace(id)])
                .output();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &format!("{}b", self.tag)])
            .output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Cluster {
    /// `n` nodes (ids 1..=n) on free loopback ports, with `sets` (`--set KEY=VALUE`).
    fn start(n: usize, sets: &[&str]) -> Self {
        let endpoints = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut c = Self::start_on(endpoints, None, sets);
        c.spawn_all();
        c
    }

    /// `n` nodes on loopback, none started yet, node `slow` reached (by its peers and
    /// the test) through a [`DelayProxy`] that holds every byte `delay` in each
    /// direction.
    fn start_with_slow_node(
        n: usize,
        slow: u64,
        delay: Duration,
        sets: &[&str],
    ) -> (Self, DelayProxy) {
        let mut endpoints: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let real = endpoints[slow as usize - 1].clone();
        let proxy = DelayProxy::start(&real, delay);
        endpoints[slow as usize - 1] = proxy.addr.clone();
        let mut c = Self::start_on(endpoints, None, sets);
        c.listen.insert(slow, real);
        (c, proxy)
    }

    /// `n` nodes, each in its own network namespace (see [`Net`]).
    fn start_in_namespaces(n: usize, sets: &[&str]) -> Self {
        let net = Net::new(n);
        let endpoints = (1..=n as u32)
            .map(|id| format!("{}:7464", net.addr(id)))
            .collect();
        let mut c = Self::start_on(endpoints, Some(net), sets);
        c.spawn_all();
        c
    }

    fn start_on(endpoints: Vec<String>, net: Option<Net>, sets: &[&str]) -> Self {
        let n = endpoints.len();
        let dir = TempDir::new("cluster");
        std::fs::create_dir_all(dir.join("machines")).unwrap();
        std::fs::write(dir.join("machines/register.toml"), REGISTER).unwrap();
        std::fs::write(dir.join("machines/counter.toml"), COUNTER).unwrap();
        std::fs::write(dir.join("machines/cart.toml"), CART).unwrap();
        let members = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{}={e}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            dir,
            members,
            endpoints,
            children: (0..n).map(|_| None).collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
            net,
            listen: std::collections::HashMap::new(),
            node_sets: std::collections::HashMap::new(),
        }
    }

    /// Starts every node not running.
    fn spawn_all(&mut self) -> &mut Self {
        for id in 1..=self.endpoints.len() as u64 {
            if self.children[id as usize - 1].is_none() {
                self.spawn(id);
            }
        }
        self
    }

    fn state_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: u64) {
        let mut cmd = match &self.net {
            None => common::bin(),
            Some(net) => {
                // `ip netns exec` execs the runtime: the child's pid is the runtime's.
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", &net.namespace(id)])
                    .arg(env!("CARGO_BIN_EXE_polycall"))
                    .env_remove("POLYCALL_ENDPOINT")
                    .env_remove("POLYCALL_CONFIG")
                    .env("POLYCALL_LOG", "warn");
                c
            }
        };
        cmd.arg("run");
        if self.net.is_some() {
            // A private network of the test's own: no TLS between the nodes.
            cmd.arg("--insecure-remote");
        }
        if let Some(real) = self.listen.get(&id) {
            cmd.args(["--endpoint", real]);
        }
        cmd.args(["--node-id", &id.to_string(), "--cluster", &self.members])
            .arg("--state-dir")
            .arg(self.state_dir(id))
            .arg("--machines")
            .arg(self.dir.join("machines"))
            .args(["--drain-timeout-ms", "500"]);
        for s in self
            .sets
            .iter()
            .chain(self.node_sets.get(&id).into_iter().flatten())
        {
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

    /// The runtime token of node `id` (what `polycall stop` and backups need).
    fn token(&self, id: u64) -> String {
        std::fs::read_to_string(self.state_dir(id).join("runtime.token"))
            .unwrap()
            .trim()
            .to_string()
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

/// A TCP proxy that holds every byte for a fixed delay before passing it on, in both
/// directions. Pipelined: latency grows, throughput does not shrink. It runs on a
/// thread of its own until the test process ends.
struct DelayProxy {
    addr: String,
}

impl DelayProxy {
    fn start(target: &str, delay: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let target = target.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((inbound, _)) = listener.accept().await {
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                        let (from_client, to_client) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        tokio::spawn(Self::pipe(from_client, to_server, delay));
                        Self::pipe(from_server, to_client, delay).await;
                    });
                }
            });
        });
        DelayProxy { addr }
    }

    /// Copies `from` to `to`, each chunk written `delay` after it was read.
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((due, bytes)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        });
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let _ = tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
        }
        drop(tx);
        let _ = writer.await;
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
                        tokio::time::timeout(Duration::from_secs(5), Channel::connect(endpoint))
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

    /// The answers of the nodes in `ids` to `method` (`{}`) that answered within 2 s.
    async fn ask_all(&self, ids: &[u64], method: &str) -> Vec<Value> {
        let mut answers = Vec::new();
        for &id in ids {
            if let Ok(v) = self
                .call(id, method, json!({}), Duration::from_secs(2))
                .await
            {
                answers.push(v);
            }
        }
        answers
    }

    /// Waits until the nodes in `ids` agree on a leader (other than `not`) and it
    /// answers; returns it.
    async fn leader(&self, ids: &[u64], not: Option<u64>, limit: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let seen: Vec<Option<u64>> = self
                .ask_all(ids, "sys.cluster.status")
                .await
                .iter()
                .map(|s| s["leader"].as_u64())
                .collect();
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

    /// Waits until the nodes in `ids` have merged the same eventual state (equal
    /// `eventual_hash`es).
    async fn merged(&self, ids: &[u64], limit: Duration) -> Vec<Value> {
        self.agree_on(ids, "eventual_hash", limit).await
    }

    /// Waits until the nodes in `ids` hold the same state: equal state hashes (over
    /// every key, its version — the log index that wrote it — and value). Applied
    /// indexes may still differ by entries that change no key (a new leader's blank
    /// entry reaches a follower's commit index with the next append).
    async fn converged(&self, ids: &[u64], limit: Duration) -> Vec<Value> {
        self.agree_on(ids, "state_hash", limit).await
    }

    /// Waits until every node in `ids` answers `sys.cluster.digest` with the same
    /// `field`; returns their digests.
    async fn agree_on(&self, ids: &[u64], field: &str, limit: Duration) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let digests = self.ask_all(ids, "sys.cluster.digest").await;
            if digests.len() == ids.len() && digests.iter().all(|d| d[field] == digests[0][field]) {
                return digests;
            }
            assert!(
                started.elapsed() < limit,
                "the nodes' {field} did not agree within {limit:?}: {digests:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The faults a test injects while the load runs, as the load sees them.
#[derive(Default)]
struct Faults {
    /// When the leader was killed.
    killed_at: Option<Instant>,
    /// When a partition began, and the nodes on its minority side.
    partition: Option<(Instant, Vec<u64>)>,
    /// When the partition healed.
    healed_at: Option<Instant>,
    /// When the first write invoked after the kill was acknowledged.
    first_write_after_kill: Option<Duration>,
    /// Writes acknowledged by a minority node, invoked during the partition and
    /// acknowledged before it healed (must stay 0).
    minority_acks: u64,
    /// Writes acknowledged by a majority node during the partition.
    majority_acks: u64,
}

impl Faults {
    /// Notes a write to `node`, invoked at `invoked`, acknowledged now.
    fn acknowledged(&mut self, node: u64, invoked: Instant) {
        let now = Instant::now();
        if let Some(k) = self.killed_at
            && invoked > k
            && self.first_write_after_kill.is_none()
        {
            self.first_write_after_kill = Some(k.elapsed());
        }
        if let Some((start, minority)) = &self.partition
            && invoked > *start
            && self.healed_at.is_none_or(|h| now < h)
        {
            if minority.contains(&node) {
                self.minority_acks += 1;
            } else {
                self.majority_acks += 1;
            }
        }
    }
}

/// What the load left: acknowledged and indeterminate counter additions.
struct Load {
    acked_adds: u64,
    unknown_adds: u64,
}

/// Runs writers and readers against the nodes in `alive` until `stop`: writers `set`
/// shared registers (recorded), readers read them linearizably (recorded), counter
/// writers `add` 1 (acknowledged ones counted).
async fn load(
    clients: Clients,
    alive: Arc<std::sync::Mutex<Vec<u64>>>,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    faults: Arc<std::sync::Mutex<Faults>>,
) -> Load {
    let acked = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
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
        let faults = faults.clone();
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
                        faults.lock().unwrap().acknowledged(node, invoked);
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
        let (acked, unknown, faults) = (acked.clone(), unknown.clone(), faults.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let node = pick(&alive, c * 3 + n);
                let invoked = Instant::now();
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
                        faults.lock().unwrap().acknowledged(node, invoked);
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
    Load {
        acked_adds: acked.load(Ordering::Relaxed),
        unknown_adds: unknown.load(Ordering::Relaxed),
    }
}

/// After the load: no acknowledged `add` is lost and none counted twice (the counter
/// holds every acknowledged one and at most the unacknowledged ones besides), and every
/// read saw a state some order of the writes explains (the history is linearizable).
/// Returns the count and the history.
async fn check_load(
    clients: &Clients,
    load: &Load,
    recorder: &Recorder,
) -> (u64, Vec<linearizability::Op>) {
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
    let history = recorder.history();
    if let Err(v) = linearizability::check(&history) {
        panic!("the history is not linearizable: {v}");
    }
    (count, history)
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
    let faults = Arc::new(std::sync::Mutex::new(Faults::default()));
    let running = tokio::spawn(load(
        clients.clone(),
        alive.clone(),
        recorder.clone(),
        stop.clone(),
        faults.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SIGKILL the leader mid-load; clients move to the nodes left.
    alive.lock().unwrap().retain(|&n| n != leader);
    cluster.kill9(leader);
    faults.lock().unwrap().killed_at = Some(Instant::now());
    let left: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let new_leader = clients
        .leader(&left, Some(leader), Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::Relaxed);
    let load = running.await.unwrap();

    let first = faults.lock().unwrap().first_write_after_kill.unwrap_or_else(|| {
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

    let (count, history) = check_load(&clients, &load, &recorder).await;
    assert!(load.acked_adds > 10, "too little load: {}", load.acked_adds);
    let completed = history.iter().filter(|o| o.complete.is_some()).count();
    assert!(completed > 20, "too few operations recorded: {completed}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_cannot_commit_and_all_five_converge_after_healing() {
    let mut cluster = Cluster::start_in_namespaces(
        5,
        &["cluster.heartbeat_ms=50", "cluster.election_timeout_ms=300"],
    );
    let clients = Clients::new(&cluster);
    let all = [1, 2, 3, 4, 5];
    let leader = clients.leader(&all, None, Duration::from_secs(20)).await;
    create_instances(&clients).await;

    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(std::sync::Mutex::new(all.to_vec()));
    let faults = Arc::new(std::sync::Mutex::new(Faults::default()));
    let running = tokio::spawn(load(
        clients.clone(),
        alive.clone(),
        recorder.clone(),
        stop.clone(),
        faults.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The leader and one follower on one side, the other three on the other. Clients
    // keep calling every node.
    let other = *all.iter().find(|&&n| n != leader).unwrap();
    let minority = vec![leader, other];
    let majority: Vec<u64> = all.into_iter().filter(|n| !minority.contains(n)).collect();
    cluster
        .net
        .as_mut()
        .unwrap()
        .partition(&minority, &majority);
    faults.lock().unwrap().partition = Some((Instant::now(), minority.clone()));
    let new_leader = clients
        .leader(&majority, Some(leader), Duration::from_secs(10))
        .await;
    // The majority goes on: writes through each of its nodes are acknowledged (the
    // load's clients also keep calling the minority, where calls time out).
    let partitioned = Instant::now();
    for (i, node) in majority.iter().cycle().take(12).enumerate() {
        let value = format!("majority-{i}");
        let invoked = Instant::now();
        let op = recorder.invoke_write(50, "reg-0", value.clone());
        clients
            .call(
                *node,
                "state.register.fire",
                json!({"id": "reg-0", "transition": "set", "event": {"value": value}}),
                Duration::from_secs(3),
            )
            .await
            .unwrap_or_else(|s| panic!("a write through majority node {node} failed: {s}"));
        recorder.complete_write(op);
        faults.lock().unwrap().acknowledged(*node, invoked);
    }
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(partitioned.elapsed())).await;

    cluster.net.as_mut().unwrap().heal();
    faults.lock().unwrap().healed_at = Some(Instant::now());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let load = running.await.unwrap();
    let digests = clients.converged(&all, Duration::from_secs(20)).await;

    let (minority_acks, majority_acks) = {
        let f = faults.lock().unwrap();
        (f.minority_acks, f.majority_acks)
    };
    assert_eq!(
        minority_acks, 0,
        "the minority side {minority:?} acknowledged writes while partitioned"
    );
    assert!(
        majority_acks >= 12,
        "the majority side {majority:?} (leader {new_leader}) took only {majority_acks} writes"
    );
    let (_, history) = check_load(&clients, &load, &recorder).await;
    eprintln!(
        "partition {minority:?} | {majority:?}: new leader {new_leader}, {majority_acks} writes on the majority side, none on the minority; {} operations linearizable; converged: {digests:?}",
        history.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_follower_does_not_slow_commits() {
    // Node 3 is 150 ms away each way; 1 and 2 form the majority that commits. (openraft
    // gives an append one heartbeat interval: heartbeats are set above the round trip.)
    let delay = Duration::from_millis(150);
    let (mut cluster, _proxy) = Cluster::start_with_slow_node(
        3,
        3,
        delay,
        &[
            "cluster.heartbeat_ms=500",
            "cluster.election_timeout_ms=2000",
        ],
    );
    cluster.spawn(1);
    cluster.spawn(2);
    let clients = Clients::new(&cluster);
    let leader = clients.leader(&[1, 2], None, Duration::from_secs(20)).await;
    cluster.spawn(3);
    create_instances(&clients).await;
    clients.converged(&[1, 2, 3], Duration::from_secs(20)).await;

    let mut took = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        clients
            .call(
                leader,
                "state.counter.fire",
                json!({"id": "hits", "transition": "add", "event": {"by": 1}}),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    // A commit waiting for node 3 would take at least one round trip to it (300 ms).
    assert!(
        median < delay / 2,
        "commits wait for the slow follower: median {median:?} (all: {took:?})"
    );
    // The slow follower still receives everything.
    let digests = clients.converged(&[1, 2, 3], Duration::from_secs(20)).await;
    eprintln!("median commit {median:?} with node 3 {delay:?} away; converged: {digests:?}");
}

/// Runs `polycall ARGS…` and returns its output.
fn polycall(args: &[&str]) -> std::process::Output {
    common::bin().args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_mutual_tls_and_only_node_identities_may_call_raft() {
    let scratch = TempDir::new("cluster-tls");
    let p = |rel: &str| scratch.join(rel).display().to_string();
    common::issue_certs(
        &scratch,
        &[
            ("node1", "spiffe://polycall.test/node/1"),
            ("node2", "spiffe://polycall.test/node/2"),
            ("node3", "spiffe://polycall.test/node/3"),
            ("app", "spiffe://polycall.test/app/orders"),
        ],
    );
    let endpoints: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let common_sets = [
        "tls.enabled=true".to_string(),
        format!("tls.ca_file={}", p("ca/ca.pem")),
        "tls.client_auth=required".into(),
        "auth.certificate=true".into(),
        "auth.anonymous=false".into(),
        "cluster.peer_identities=spiffe://polycall.test/node/*".into(),
    ];
    let sets: Vec<&str> = common_sets.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_on(endpoints.clone(), None, &sets);
    for id in 1..=3u64 {
        cluster.node_sets.insert(
            id,
            vec![
                format!("tls.cert_file={}", p(&format!("certs/node{id}.pem"))),
                format!("tls.key_file={}", p(&format!("certs/node{id}.key"))),
            ],
        );
    }
    cluster.spawn_all();
    // The application's certificate: authenticated, not a node.
    let as_app = |node: usize, args: &[&str]| {
        let (ca, cert, key) = (p("ca/ca.pem"), p("certs/app.pem"), p("certs/app.key"));
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        all.extend([
            "--endpoint",
            endpoints[node - 1].as_str(),
            "--ca",
            ca.as_str(),
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
        ]);
        let o = polycall(&all);
        (
            o.status.success(),
            serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null),
            o,
        )
    };
    // The nodes find each other over mutual TLS and elect a leader.
    let started = Instant::now();
    let leader = loop {
        let (ok, v, o) = as_app(1, &["cluster", "status"]);
        if ok && v["data"]["leader"].is_u64() {
            break v["data"]["leader"].as_u64().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no leader over TLS: {o:?}\n{}",
            cluster.log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // A write through a follower is forwarded to the leader over TLS.
    let follower = (1..=3).find(|&n| n != leader as usize).unwrap();
    let (ok, v, o) = as_app(
        follower,
        &["call", "state.counter.create", "--json", r#"{"id": "tls"}"#],
    );
    assert!(ok, "{v} {o:?}");
    let (ok, v, o) = as_app(
        follower,
        &[
            "call",
            "state.counter.fire",
            "--json",
            r#"{"id": "tls", "transition": "add", "event": {"by": 5}}"#,
        ],
    );
    assert!(ok, "{v} {o:?}");
    let third = (1..=3)
        .find(|&n| n != leader as usize && n != follower)
        .unwrap();
    let (ok, v, o) = as_app(
        third,
        &["call", "state.counter.get", "--json", r#"{"id": "tls"}"#],
    );
    assert!(ok && v["data"]["context"]["n"] == 5, "{v} {o:?}");

    // The application may not speak raft to a node: its SPIFFE ID is not a node's.
    for method in [
        "raft.vote",
        "raft.append",
        "raft.hello",
        "raft.forward.write",
    ] {
        let (ok, v, o) = as_app(1, &["call", method, "--raw", ""]);
        assert!(!ok, "{method}: {o:?}");
        let text = v.to_string();
        assert!(
            text.contains("permission_denied") && text.contains("only cluster nodes"),
            "{method}: {text}"
        );
    }
    // Nor may anyone without a certificate reach the node at all.
    // A node others can reach must say which identities its peers have.
    let (cert, key) = (p("certs/node1.pem"), p("certs/node1.key"));
    let mut refused = vec!["run", "--node-id", "9", "--cluster", "9=127.0.0.1:1"];
    refused.extend(["--endpoint", "0.0.0.0:0", "--state-dir"]);
    let state = p("refused");
    refused.push(&state);
    let sets = [
        "tls.enabled=true".to_string(),
        format!("tls.cert_file={cert}"),
        format!("tls.key_file={key}"),
        format!("tls.ca_file={}", p("ca/ca.pem")),
        "tls.client_auth=required".into(),
        "auth.certificate=true".into(),
        "auth.anonymous=false".into(),
    ];
    for s in &sets {
        refused.extend(["--set", s.as_str()]);
    }
    let o = polycall(&refused);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("cluster.peer_identities"),
        "{o:?}"
    );
    let ca = p("ca/ca.pem");
    let o = polycall(&[
        "--format",
        "json",
        "call",
        "raft.hello",
        "--raw",
        "",
        "--endpoint",
        &endpoints[0],
        "--ca",
        &ca,
    ]);
    assert!(!o.status.success(), "{o:?}");
}

/// Fires `transition` of the eventual `cart` instance `c-1` on node `id`.
async fn cart(clients: &Clients, id: u64, transition: &str, event: Value) -> Value {
    clients
        .call(
            id,
            "state.cart.fire",
            json!({"id": "c-1", "transition": transition, "event": event}),
            Duration::from_secs(3),
        )
        .await
        .unwrap_or_else(|s| panic!("{transition} on node {id} failed: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_machines_take_writes_on_both_sides_of_a_partition_and_converge_after_healing() {
    let mut cluster = Cluster::start_in_namespaces(
        3,
        &["cluster.heartbeat_ms=50", "cluster.election_timeout_ms=300"],
    );
    let clients = Clients::new(&cluster);
    let all = [1, 2, 3];
    clients.leader(&all, None, Duration::from_secs(20)).await;
    clients
        .call(
            1,
            "state.cart.create",
            json!({"id": "c-1", "context": {"owner": "ada"}}),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    cart(&clients, 1, "add", json!({"item": "cup"})).await;
    // Every node has it before the partition.
    clients.merged(&all, Duration::from_secs(10)).await;

    cluster.net.as_mut().unwrap().partition(&[1], &[2, 3]);
    // Both sides take writes at once: node 1 is alone, nodes 2 and 3 together.
    cart(&clients, 1, "visit", json!({})).await;
    cart(&clients, 1, "visit", json!({})).await;
    cart(&clients, 1, "add", json!({"item": "pen"})).await;
    cart(&clients, 1, "claim", json!({"owner": "bob"})).await;
    for _ in 0..3 {
        cart(&clients, 3, "visit", json!({})).await;
    }
    cart(&clients, 2, "add", json!({"item": "ink"})).await;
    cart(&clients, 3, "remove", json!({"item": "cup"})).await;
    // Nodes 2 and 3 merge each other's changes while cut from node 1.
    clients.merged(&[2, 3], Duration::from_secs(10)).await;
    // The later claim (by the hybrid logical clock) wins.
    let answer = cart(&clients, 2, "claim", json!({"owner": "cy"})).await;
    assert_eq!(
        answer["instance"]["context"]["visits"],
        json!(3),
        "node 2 has merged node 3's visits, not node 1's: {answer}"
    );
    assert_eq!(
        answer["instance"]["context"]["items"],
        json!(["ink"]),
        "{answer}"
    );
    // A linearizable machine cannot commit on node 1's side meanwhile.
    let lonely = clients
        .call(
            1,
            "state.register.create",
            json!({"id": "lonely"}),
            Duration::from_secs(3),
        )
        .await;
    assert!(
        lonely.is_err(),
        "a raft write on the minority side answered {lonely:?}"
    );

    cluster.net.as_mut().unwrap().heal();
    let digests = clients.merged(&all, Duration::from_secs(20)).await;
    for id in all {
        let v = clients
            .call(
                id,
                "state.cart.get",
                json!({"id": "c-1"}),
                Duration::from_secs(3),
            )
            .await
            .unwrap();
        assert_eq!(v["consistency"], json!("eventual"));
        assert_eq!(
            v["context"]["visits"],
            json!(5),
            "node {id}: visits add up: {v}"
        );
        assert_eq!(
            v["context"]["items"],
            json!(["ink", "pen"]),
            "node {id}: cup removed by node 3, pen and ink added on either side: {v}"
        );
        assert_eq!(
            v["context"]["owner"],
            json!("cy"),
            "node {id}: the later owner: {v}"
        );
    }
    // History and point-in-time recovery are of the raft log: an eventual machine says so.
    let history = clients
        .call(
            1,
            "state.cart.history",
            json!({"id": "c-1"}),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    assert_eq!(history.code, polycall::Code::Unsupported, "{history}");
    eprintln!("partitioned writes on both sides converged: {digests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_point_in_time_recovery_and_backups_work_on_a_cluster() {
    let cluster = Cluster::start(
        3,
        &["cluster.heartbeat_ms=50", "cluster.election_timeout_ms=300"],
    );
    let clients = Clients::new(&cluster);
    let all = [1, 2, 3];
    clients.leader(&all, None, Duration::from_secs(20)).await;
    let call = |id: u64, method: &'static str, input: Value| {
        let clients = clients.clone();
        async move {
            clients
                .call(id, method, input, Duration::from_secs(5))
                .await
                .unwrap_or_else(|s| panic!("{method} on node {id}: {s}"))
        }
    };
    let set = |id: u64, value: &'static str| {
        call(
            id,
            "state.register.fire",
            json!({"id": "reg-0", "transition": "set", "event": {"value": value}}),
        )
    };
    // A subscription on node 2, open before the writes: it sees them as node 2
    // applies them.
    let subscriber = Channel::connect(cluster.endpoints[1].parse().unwrap())
        .await
        .unwrap();
    let mut subscription = subscriber
        .server_stream(Call::new("state.subscribe", Payload::json(&json!({})).unwrap()).unwrap())
        .await
        .unwrap();
    call(1, "state.register.create", json!({"id": "reg-0"})).await;
    let a = set(2, "a").await["instance"]["index"].as_u64().unwrap();
    set(3, "b").await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let change = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscription delivers within 10 s")
            .expect("the subscription stays open")
            .unwrap();
        let change: Value = change.to_json().unwrap();
        if change["instance"] == json!("reg-0") {
            seen.push(change);
        }
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|c| c["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "fired", "fired"], "{seen:?}");
    assert_eq!(seen[1]["index"], json!(a));
    // state.watch long-polls the same changes on node 3.
    let watched = call(3, "state.watch", json!({"after": 0, "wait_ms": 2000})).await;
    let indexes: Vec<u64> = watched["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["instance"] == json!("reg-0"))
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        seen.iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        "{watched}"
    );

    // History, from any node: every change with the log index that made it.
    let history = call(1, "state.register.history", json!({"id": "reg-0"})).await;
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "fired", "fired"], "{history}");
    assert_eq!(history[1]["index"], json!(a));
    let timeline = call(2, "state.register.timeline", json!({"id": "reg-0"})).await;
    assert!(timeline["html"].as_str().unwrap().contains("reg-0"));

    // Point-in-time recovery of one instance, through the log: every node sees it.
    call(
        3,
        "state.register.recover",
        json!({"id": "reg-0", "index": a}),
    )
    .await;
    let now = call(1, "state.register.get", json!({"id": "reg-0"})).await;
    assert_eq!(now["context"]["value"], json!("a"), "{now}");

    // A snapshot taken on one node restores on another.
    let snapshot = call(1, "state.register.snapshot", json!({"id": "reg-0"})).await;
    set(1, "c").await;
    call(
        2,
        "state.register.restore",
        json!({"id": "reg-0", "snapshot": snapshot}),
    )
    .await;
    assert_eq!(
        call(3, "state.register.get", json!({"id": "reg-0"})).await["context"]["value"],
        json!("a")
    );

    // An eventual instance too: backups hold it as the node merged it.
    call(1, "state.cart.create", json!({"id": "c-1"})).await;
    cart(&clients, 1, "add", json!({"item": "cup"})).await;
    clients.merged(&all, Duration::from_secs(10)).await;
    cart(&clients, 3, "visit", json!({})).await;
    clients.merged(&all, Duration::from_secs(10)).await;

    // A backup on node 2; later changes, then the backup restored through node 3:
    // reg-0 goes back, an instance created after the backup is removed everywhere,
    // the cart goes back to what it held.
    let file = cluster.dir.join("cluster-backup.redb");
    let backup = call(
        2,
        "state.backup",
        json!({"path": file.display().to_string(), "token": cluster.token(2)}),
    )
    .await;
    assert_eq!(backup["records"], json!(2), "{backup}");
    set(1, "d").await;
    call(1, "state.register.create", json!({"id": "reg-9"})).await;
    cart(&clients, 1, "add", json!({"item": "pen"})).await;
    cart(&clients, 2, "visit", json!({})).await;
    cart(&clients, 2, "claim", json!({"owner": "bob"})).await;
    clients.merged(&all, Duration::from_secs(10)).await;
    // Node 2 numbers its own changes of eventual instances and those it merged.
    let watched = call(2, "state.watch_eventual", json!({"after": 0, "wait_ms": 0})).await;
    let changes = watched["changes"].as_array().unwrap();
    let fired: Vec<&str> = changes
        .iter()
        .filter(|c| c["event"]["kind"] == json!("fired"))
        .map(|c| c["event"]["transition"].as_str().unwrap())
        .collect();
    assert_eq!(fired, ["visit", "claim"], "{watched}");
    assert!(
        changes
            .iter()
            .any(|c| c["event"]["kind"] == json!("merged") && c["instance"] == json!("c-1")),
        "{watched}"
    );
    let wrong = clients
        .call(
            3,
            "state.restore_backup",
            json!({"path": file.display().to_string(), "token": "not-it"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code, polycall::Code::PermissionDenied);
    let restored = call(
        3,
        "state.restore_backup",
        json!({"path": file.display().to_string(), "token": cluster.token(3)}),
    )
    .await;
    assert_eq!(
        restored["restored"].as_array().unwrap().len(),
        3,
        "{restored}"
    );
    clients.merged(&all, Duration::from_secs(10)).await;
    for id in all {
        let c = call(id, "state.cart.get", json!({"id": "c-1"})).await;
        assert_eq!(
            (
                &c["context"]["items"],
                &c["context"]["visits"],
                &c["context"]["owner"]
            ),
            (&json!(["cup"]), &json!(1), &json!("")),
            "node {id}: the cart as backed up: {c}"
        );
    }
    for id in all {
        let v = call(id, "state.register.get", json!({"id": "reg-0"})).await;
        assert_eq!(v["context"]["value"], json!("a"), "node {id}: {v}");
        let gone = clients
            .call(
                id,
                "state.register.get",
                json!({"id": "reg-9"}),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(gone.code, polycall::Code::NotFound, "node {id}: {gone}");
    }
    // Recovering every instance to before reg-9 existed, and before the window.
    call(
        1,
        "state.recover",
        json!({"index": a, "token": cluster.token(1)}),
    )
    .await;
    let too_early = clients
        .call(
            2,
            "state.register.recover",
            json!({"id": "reg-0", "index": 0}),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        too_early.is_ok(),
        "index 0 is before reg-0 was created: it is removed, {too_early:?}"
    );
    let gone = clients
        .call(
            1,
            "state.register.get",
            json!({"id": "reg-0"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(gone.code, polycall::Code::NotFound);
    // …and created again under the same id, its history kept.
    call(2, "state.register.create", json!({"id": "reg-0"})).await;
    let history = call(3, "state.register.history", json!({"id": "reg-0"})).await;
    assert!(history.as_array().unwrap().len() >= 8, "{history}");
    clients.converged(&all, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_eventual_machines_only_backs_them_up_and_restores_them() {
    let endpoints = vec![format!("127.0.0.1:{}", free_port())];
    let mut cluster = Cluster::start_on(endpoints, None, &[]);
    for linearizable in ["register.toml", "counter.toml"] {
        std::fs::remove_file(cluster.dir.join("machines").join(linearizable)).unwrap();
    }
    cluster.spawn_all();
    let clients = Clients::new(&cluster);
    clients.leader(&[1], None, Duration::from_secs(20)).await;
    let call = |method: &'static str, input: Value| {
        let clients = clients.clone();
        async move { clients.call(1, method, input, Duration::from_secs(5)).await }
    };
    call("state.cart.create", json!({"id": "c-1"}))
        .await
        .unwrap();
    cart(&clients, 1, "add", json!({"item": "cup"})).await;
    cart(&clients, 1, "claim", json!({"owner": "ada"})).await;
    let file = cluster.dir.join("eventual-backup.redb");
    let path = file.display().to_string();
    let backup = call(
        "state.backup",
        json!({"path": path, "token": cluster.token(1)}),
    )
    .await
    .unwrap();
    assert_eq!(backup["records"], json!(1), "{backup}");
    cart(&clients, 1, "add", json!({"item": "pen"})).await;
    cart(&clients, 1, "visit", json!({})).await;
    cart(&clients, 1, "claim", json!({"owner": "bob"})).await;
    // Point-in-time recovery is of a log, which eventual machines do not keep.
    let recover = call(
        "state.recover",
        json!({"index": 1, "token": cluster.token(1)}),
    )
    .await
    .unwrap_err();
    assert_eq!(recover.code, polycall::Code::Unsupported, "{recover}");
    // A backup is checked whole before anything changes: a damaged snapshot is refused.
    let damaged = cluster.dir.join("damaged-backup.redb");
    std::fs::copy(&file, &damaged).unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"\"cup\"")
        .expect("the snapshot is in the file");
    bytes[at + 1] = b'C';
    std::fs::write(&damaged, bytes).unwrap();
    let refused = call(
        "state.restore_backup",
        json!({"path": damaged.display().to_string(), "token": cluster.token(1)}),
    )
    .await
    .unwrap_err();
    assert!(refused.message.contains("integrity"), "{refused}");
    let c = call("state.cart.get", json!({"id": "c-1"})).await.unwrap();
    assert_eq!(
        c["context"]["items"],
        json!(["cup", "pen"]),
        "unchanged: {c}"
    );
    let restored = call(
        "state.restore_backup",
        json!({"path": path, "token": cluster.token(1)}),
    )
    .await
    .unwrap();
    assert_eq!(
        restored["restored"].as_array().unwrap().len(),
        1,
        "{restored}"
    );
    let c = call("state.cart.get", json!({"id": "c-1"})).await.unwrap();
    assert_eq!(
        (
            &c["context"]["items"],
            &c["context"]["visits"],
            &c["context"]["owner"]
        ),
        (&json!(["cup"]), &json!(0), &json!("ada")),
        "the cart as backed up: {c}"
    );
    // state.watch serves this node's changes of its eventual machines, numbered by it
    // (from 0: the oldest it keeps).
    let watched = call("state.watch", json!({"after": 0, "wait_ms": 0}))
        .await
        .unwrap();
    let changes = watched["changes"].as_array().unwrap();
    let base = changes[0]["index"].as_u64().unwrap();
    let seen: Vec<(u64, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap() - base,
                c["event"]["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (0, "created"),
            (1, "fired"),
            (2, "fired"),
            (3, "fired"),
            (4, "fired"),
            (5, "fired"),
            (6, "restored")
        ],
        "{watched}"
    );
    assert_eq!(changes[2]["event"]["transition"], json!("claim"));
    let last = base + 6;
    let later = call("state.watch", json!({"after": last, "wait_ms": 100}))
        .await
        .unwrap();
    assert_eq!(later["changes"], json!([]), "{later}");
    // A number this node has not given is refused, not waited on.
    let ahead = call("state.watch", json!({"after": last + 1, "wait_ms": 0}))
        .await
        .unwrap_err();
    assert!(ahead.message.contains("go up to"), "{ahead}");
    // After a restart the numbers go on above the old ones; the old ones are gone.
    cluster.kill9(1);
    cluster.spawn_all();
    clients.leader(&[1], None, Duration::from_secs(20)).await;
    let gone = call("state.watch", json!({"after": last, "wait_ms": 0}))
        .await
        .unwrap_err();
    assert!(gone.message.contains("watch from"), "{gone}");
    cart(&clients, 1, "visit", json!({})).await;
    let after_restart = call("state.watch", json!({"after": 0, "wait_ms": 0}))
        .await
        .unwrap();
    let next = after_restart["changes"][0]["index"].as_u64().unwrap();
    assert!(next > last, "{after_restart}");

    // Restored on a node with replicated machines too, this backup (of eventual
    // instances only) leaves the replicated instances alone.
    let other = Cluster::start(1, &[]);
    let others = Clients::new(&other);
    others.leader(&[1], None, Duration::from_secs(20)).await;
    let on_other = |method: &'static str, input: Value| {
        let others = others.clone();
        async move {
            others
                .call(1, method, input, Duration::from_secs(5))
                .await
                .unwrap_or_else(|s| panic!("{method}: {s}"))
        }
    };
    on_other("state.register.create", json!({"id": "reg-1"})).await;
    let restored = on_other(
        "state.restore_backup",
        json!({"path": path, "token": other.token(1)}),
    )
    .await;
    assert_eq!(
        restored["restored"].as_array().unwrap().len(),
        1,
        "{restored}"
    );
    on_other("state.register.get", json!({"id": "reg-1"})).await;
    let c = on_other("state.cart.get", json!({"id": "c-1"})).await;
    assert_eq!(c["context"]["items"], json!(["cup"]), "{c}");
}
