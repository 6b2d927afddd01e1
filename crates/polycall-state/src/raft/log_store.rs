//! The raft log and vote in redb: entries by index (postcard), the vote and the last
//! purged log id in a small metadata table. Appends and votes are committed with an
//! fsync before openraft hears they are done.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeId, StorageError, TypeConfig, blocking};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub(super) fn create_tables(db: &Database) -> Result<(), StorageError> {
    let txn = db.begin_write().map_err(|e| StorageIOError::write(&e))?;
    txn.open_table(LOG).map_err(|e| StorageIOError::write(&e))?;
    txn.open_table(META)
        .map_err(|e| StorageIOError::write(&e))?;
    txn.commit().map_err(|e| StorageIOError::write(&e))?;
    Ok(())
}

/// The raft log of one node (cheap to clone: clones share the database).
#[derive(Clone)]
pub struct RaftLog {
    db: Arc<Database>,
    /// The last committed log id openraft reported and no append has stored yet.
    committed: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
}

impl Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftLog")
    }
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError> {
    let txn = db.begin_read().map_err(|e| StorageIOError::read(&e))?;
    let t = txn.open_table(META).map_err(|e| StorageIOError::read(&e))?;
    let Some(v) = t.get(key).map_err(|e| StorageIOError::read(&e))? else {
        return Ok(None);
    };
    postcard::from_bytes(v.value())
        .map(Some)
        .map_err(|e| StorageIOError::read(&e).into())
}

fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), StorageError> {
    let bytes = postcard::to_allocvec(value).map_err(|e| StorageIOError::write(&e))?;
    let mut txn = db.begin_write().map_err(|e| StorageIOError::write(&e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StorageIOError::write(&e))?;
    {
        let mut t = txn
            .open_table(META)
            .map_err(|e| StorageIOError::write(&e))?;
        t.insert(key, bytes.as_slice())
            .map_err(|e| StorageIOError::write(&e))?;
    }
    txn.commit().map_err(|e| StorageIOError::write(&e))?;
    Ok(())
}

/// One write transaction: `change` edits the log (and metadata) tables, then the commit
/// (with an fsync when `durability` is `Immediate`).
fn write_log(
    db: &Database,
    durability: Durability,
    change: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), StorageError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| StorageIOError::write_logs(&e))?;
    txn.set_durability(durability)
        .map_err(|e| StorageIOError::write_logs(&e))?;
    change(&txn).map_err(|e| StorageIOError::write_logs(&e))?;
    txn.commit().map_err(|e| StorageIOError::write_logs(&e))?;
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageIOError::read_logs(&e).into())
}

impl RaftLog {
    pub(super) fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            committed: Arc::default(),
        }
    }
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || {
            let txn = db.begin_read().map_err(|e| StorageIOError::read_logs(&e))?;
            let t = txn
                .open_table(LOG)
                .map_err(|e| StorageIOError::read_logs(&e))?;
            let mut out = Vec::new();
            for row in t.range(bounds).map_err(|e| StorageIOError::read_logs(&e))? {
                let (_, v) = row.map_err(|e| StorageIOError::read_logs(&e))?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged_log_id: Option<LogId<NodeId>> = read_meta(&db, "last_purged")?;
            let txn = db.begin_read().map_err(|e| StorageIOError::read_logs(&e))?;
            let t = txn
                .open_table(LOG)
                .map_err(|e| StorageIOError::read_logs(&e))?;
            let last = match t.last().map_err(|e| StorageIOError::read_logs(&e))? {
                Some((_, v)) => Some(decode(v.value())?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let (db, vote) = (self.db.clone(), *vote);
        blocking(move || write_meta(&db, "vote", &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, "vote")).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        // Kept in memory and stored by the next append, in its transaction: the
        // committed index only lets a restarted node apply sooner, and a stored one that
        // lags is allowed (the node learns the rest from its leader, and its reads wait
        // for that unless they asked for stale data). A transaction of its own — let
        // alone an fsync — would sit on every write's path, inside openraft's core loop.
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        if let Some(c) = *self.committed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(Some(c));
        }
        let db = self.db.clone();
        blocking(move || Ok(read_meta::<Option<LogId<NodeId>>>(&db, "committed")?.flatten())).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            let bytes = postcard::to_allocvec(&e)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, &err))?;
            rows.push((e.log_id.index, bytes));
        }
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|c| postcard::to_allocvec(&Some(c)))
            .transpose()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let db = self.db.clone();
        let written = blocking(move || {
            write_log(&db, Durability::Immediate, |txn| {
                let mut t = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    t.insert(*index, bytes.as_slice())?;
                }
                if let Some(committed) = &committed {
                    txn.open_table(META)?
                        .insert("committed", committed.as_slice())?;
                }
                Ok(())
            })
        })
        .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            write_log(&db, Durability::Immediate, |txn| {
                Ok(txn
                    .open_table(LOG)?
                    .retain_in(log_id.index.., |_, _| false)?)
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            // The purge point first: entries at or before it are ignored from then on, so
            // a crash between the two writes leaves nothing inconsistent.
            write_meta(&db, "last_purged", &log_id)?;
            write_log(&db, Durability::Immediate, |txn| {
                Ok(txn
                    .open_table(LOG)?
                    .retain_in(..=log_id.index, |_, _| false)?)
            })
        })
        .await
    }
}
