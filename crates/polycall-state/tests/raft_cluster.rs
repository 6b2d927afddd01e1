//! Three raft nodes in one process, each behind its own polycall server on loopback:
//! they elect a leader, replicate a compare-and-set write to every node's map, and
//! when the leader goes, the two left elect a new one within 3 s that takes writes.
#![cfg(feature = "raft")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, Raft};
use polycall_net::{Server, ServerConfig};
use polycall_state::raft::network::{Networks, Peers, RaftSlot, router};
use polycall_state::raft::{self, Applied, Batch, Command, ReplicatedMap, TypeConfig};
use polycall_test_support::TempDir;

struct Node {
    raft: Raft<TypeConfig>,
    map: ReplicatedMap,
    server: Server,
}

async fn wait_for_leader(rafts: &[&Raft<TypeConfig>], not: Option<u64>, limit: Duration) -> u64 {
    let started = Instant::now();
    loop {
        for r in rafts {
            let m = r.metrics().borrow().clone();
            if let Some(l) = m.current_leader
                && Some(l) != not
                && m.state.is_leader()
            {
                return l;
            }
        }
        if started.elapsed() > limit {
            let states: Vec<String> = rafts
                .iter()
                .map(|r| {
                    let m = r.metrics().borrow().clone();
                    format!(
                        "{}: {:?} leader {:?} vote {} last log {:?}",
                        m.id, m.state, m.current_leader, m.vote, m.last_log_index
                    )
                })
                .collect();
            panic!("no leader within {limit:?}: {states:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_the_leader() {
    let dir = TempDir::new("raft-cluster");
    // Listen first: every node must know its peers' addresses.
    let mut slots = Vec::new();
    let mut servers = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let slot = RaftSlot::default();
        let server = Server::serve_router(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig::default(),
            router(slot.clone(), Peers::any()),
        )
        .await
        .unwrap();
        members.insert(
            id,
            BasicNode {
                addr: server.local_endpoint().to_string(),
            },
        );
        slots.push(slot);
        servers.push(server);
    }
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let mut nodes = BTreeMap::new();
    for (id, (slot, server)) in (1..=3u64).zip(slots.into_iter().zip(servers)) {
        let (log, map) = raft::open(&dir.join(format!("node-{id}.redb")))
            .await
            .unwrap();
        let raft = Raft::new(id, config.clone(), Networks::default(), log, map.clone())
            .await
            .unwrap();
        assert!(slot.set(raft.clone()).is_ok(), "set once");
        nodes.insert(id, Node { raft, map, server });
    }
    nodes[&1].raft.initialize(members).await.unwrap();
    let all: Vec<&Raft<TypeConfig>> = nodes.values().map(|n| &n.raft).collect();
    let leader = wait_for_leader(&all, None, Duration::from_secs(10)).await;

    // A write through the leader is applied on every node.
    let put = |value: &str, expect| {
        Batch::from(Command::Put {
            key: "order/1".into(),
            value: value.as_bytes().to_vec(),
            expect: Some(expect),
        })
    };
    let written = nodes[&leader]
        .raft
        .client_write(put("created", 0))
        .await
        .unwrap();
    let [Applied::Done { version }] = written.data[..] else {
        panic!("{:?}", written.data)
    };
    // A racing writer that read the same (absent) version loses.
    let lost = nodes[&leader]
        .raft
        .client_write(put("other", 0))
        .await
        .unwrap();
    assert_eq!(lost.data, vec![Applied::Conflict { current: version }]);
    let started = Instant::now();
    while nodes
        .values()
        .any(|n| n.map.get("order/1") != Some((version, b"created".to_vec())))
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not applied everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The leader goes: the two left elect a new one within 3 s, which takes writes.
    let old = nodes.remove(&leader).unwrap();
    old.raft.shutdown().await.unwrap();
    old.server.shutdown().await;
    let gone = Instant::now();
    let left: Vec<&Raft<TypeConfig>> = nodes.values().map(|n| &n.raft).collect();
    let new_leader = wait_for_leader(&left, Some(leader), Duration::from_secs(3)).await;
    assert!(gone.elapsed() < Duration::from_secs(3));
    let next = nodes[&new_leader]
        .raft
        .client_write(put("paid", version))
        .await
        .unwrap();
    assert!(
        matches!(next.data[..], [Applied::Done { .. }]),
        "{:?}",
        next.data
    );
    for n in nodes.values() {
        n.raft.shutdown().await.unwrap();
        n.server.shutdown().await;
    }
}
