//! Replication over raft (feature `raft`): openraft 0.9 with its storage-v2 traits,
//! durable in redb.
//!
//! Nodes talk raft over polycall ([`network`]: `raft.append`, `raft.vote`,
//! `raft.snapshot`, postcard-encoded). The storage half of a replicated state: [`RaftLog`] keeps the raft log and the
//! vote, [`ReplicatedMap`] is the state machine the log is applied to — a map of keys to
//! versioned values with compare-and-set ([`Command`]), which is what a replicated state
//! machine host needs: the leader computes an instance's next state with the pure
//! transition rules and proposes it as a `Put` expecting the version it read, so two
//! writers racing on one instance cannot both win. Both are checked by openraft's own
//! storage conformance suite (`tests/raft_storage.rs`), on real files.
//!
//! Disk work (redb transactions, their fsync) runs on tokio's blocking pool, never on
//! the task that calls the store.

// openraft's storage traits fix the error type (`StorageError`, over 200 bytes); the
// helpers here return the same one rather than converting at every trait method.
#![allow(clippy::result_large_err)]

mod backup;
pub mod eventual;
mod eventual_feed;
mod host;
mod log_store;
mod machines;
pub mod network;
mod node;
mod state_machine;

use std::io::Cursor;

pub use eventual::{CheckedRows, EventualHost};
pub use host::ReplicatedHost;
pub use log_store::RaftLog;
pub use node::{
    ClusterError, ClusterStatus, Consistency, MemberStatus, MembershipChange, Node, NodeConfig,
    Read, Written,
};
pub use state_machine::{Applied, Batch, Command, Proposal, ReplicatedMap, VERSIONS_KEPT};

openraft::declare_raft_types!(
    /// The raft types of a polycall cluster: node ids are `u64`, nodes carry their
    /// address, log entries carry [`Batch`]es of proposals and answer what applying
    /// each did.
    pub TypeConfig:
        D = Batch,
        R = Vec<Applied>,
);

/// A node's id in the cluster.
pub type NodeId = u64;

/// A storage error, as openraft reports it.
pub type StorageError = openraft::StorageError<NodeId>;

/// Opens (creating when missing) the raft log and the state machine kept in one redb
/// file.
///
/// ```no_run
/// # async fn demo() -> Result<(), polycall_state::raft::StorageError> {
/// let (log, map) = polycall_state::raft::open(std::path::Path::new("node-1.redb")).await?;
/// # drop((log, map)); Ok(()) }
/// ```
pub async fn open(path: &std::path::Path) -> Result<(RaftLog, ReplicatedMap), StorageError> {
    let path = path.to_owned();
    let db = blocking(move || {
        let db = redb::Database::create(&path).map_err(io_err)?;
        log_store::create_tables(&db)?;
        state_machine::create_tables(&db)?;
        Ok(std::sync::Arc::new(db))
    })
    .await?;
    let map = ReplicatedMap::open(db.clone()).await?;
    Ok((RaftLog::new(db), map))
}

/// Serde for byte vectors as one byte string (`serialize_bytes`), not a sequence of
/// numbers. In postcard both are a length and the bytes, so the encoding is the same
/// and old entries decode; this only skips the per-byte visitor, which was a tenth of a
/// node's CPU under write load.
mod as_bytes {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

/// An error of the store itself (not of a particular log entry or snapshot).
fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    openraft::StorageIOError::write(&e).into()
}

/// Runs `f` on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| openraft::StorageIOError::write(&e))?
}
