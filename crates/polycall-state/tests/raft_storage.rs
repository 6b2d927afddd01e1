//! openraft's storage conformance suite against polycall's raft storage (redb files in
//! a scratch directory per case), and a restart: what was appended, voted and
//! snapshotted is there when the file is opened again.
#![cfg(feature = "raft")]

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, Vote};
use polycall_state::raft::{
    self, Applied, Batch, Command, RaftLog, ReplicatedMap, StorageError, TypeConfig,
};
use polycall_test_support::TempDir;

struct Files;

impl StoreBuilder<TypeConfig, RaftLog, ReplicatedMap, TempDir> for Files {
    async fn build(&self) -> Result<(TempDir, RaftLog, ReplicatedMap), StorageError> {
        let dir = TempDir::new("raft-suite");
        let (log, map) = raft::open(&dir.join("node.redb")).await?;
        Ok((dir, log, map))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Files).expect("every case of openraft's storage suite");
}

fn entry(term: u64, index: u64, command: Batch) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_file_keeps_log_vote_and_snapshot() {
    let dir = TempDir::new("raft-reopen");
    let path = dir.join("node.redb");
    let put = |key: &str| {
        Batch::from(Command::Put {
            key: key.into(),
            value: key.as_bytes().to_vec(),
            expect: Some(0),
        })
    };
    {
        let (mut log, mut map) = raft::open(&path).await.unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entries = vec![
            entry(3, 1, put("a")),
            entry(3, 2, put("b")),
            entry(3, 3, put("a")),
        ];
        // Appends and waits for the flush callback, as openraft does.
        log.blocking_append(entries.clone()).await.unwrap();
        let applied = map.apply(entries).await.unwrap();
        assert_eq!(
            applied,
            vec![
                vec![Applied::Done { version: 1 }],
                vec![Applied::Done { version: 2 }],
                vec![Applied::Conflict { current: 1 }]
            ]
        );
        map.build_snapshot().await.unwrap();
    }
    let (mut log, mut map) = raft::open(&path).await.unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
    assert_eq!(log.try_get_log_entries(2..=3).await.unwrap().len(), 2);
    let (applied, _) = map.applied_state().await.unwrap();
    assert_eq!(
        applied.map(|l| l.index),
        Some(3),
        "restored from the snapshot"
    );
    assert_eq!(map.get("a"), Some((1, b"a".to_vec())));
    assert_eq!(map.get("b"), Some((2, b"b".to_vec())));
}
