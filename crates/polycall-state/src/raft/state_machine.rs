//! The state machine the raft log is applied to: keys mapped to versioned values, with
//! compare-and-set. Applying is in memory; the state is made durable by snapshots
//! (written to redb with an fsync) and, between them, by the raft log itself, which
//! openraft replays from the snapshot's last index on restart.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{NodeId, StorageError, TypeConfig, blocking};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

pub(super) fn create_tables(db: &Database) -> Result<(), StorageError> {
    let txn = db.begin_write().map_err(|e| StorageIOError::write(&e))?;
    txn.open_table(SNAPSHOT)
        .map_err(|e| StorageIOError::write(&e))?;
    txn.commit().map_err(|e| StorageIOError::write(&e))?;
    Ok(())
}

/// A write to the replicated map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets `key` to `value`. With `expect`, only if the key's version is that (`0`:
    /// the key must not exist).
    Put {
        /// The key.
        key: String,
        /// The value.
        #[serde(with = "super::as_bytes")]
        value: Vec<u8>,
        /// The version the writer read.
        expect: Option<u64>,
    },
    /// Removes `key`. With `expect`, only if its version is that.
    Delete {
        /// The key.
        key: String,
        /// The version the writer read.
        expect: Option<u64>,
    },
}

impl Command {
    /// The key the command writes.
    pub fn key(&self) -> &str {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => key,
        }
    }
}

/// A [`Command`] as the log carries it: with the id of the request that proposed it,
/// so a request retried after its answer was lost (the leader died after committing
/// it) takes effect once — the retry answers what the first application did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Unique per request (0: no deduplication).
    pub request: u128,
    /// The write.
    pub command: Command,
}

impl From<Command> for Proposal {
    fn from(command: Command) -> Self {
        Self {
            request: 0,
            command,
        }
    }
}

/// What one raft log entry carries: proposals made at about the same time, applied in
/// order. The leader gathers what arrives while its previous entry is being committed
/// into the next entry, so one fsync serves many writes (openraft 0.9 writes each entry
/// it is given on its own). The keys of a batch's proposals differ: a key's version is
/// the index of the entry that last changed it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Batch(pub Vec<Proposal>);

impl From<Proposal> for Batch {
    fn from(p: Proposal) -> Self {
        Batch(vec![p])
    }
}

impl From<Command> for Batch {
    fn from(c: Command) -> Self {
        Batch(vec![c.into()])
    }
}

/// How many log entries a request id is remembered for (retries come within seconds).
const REMEMBER_REQUESTS: u64 = 200_000;

/// How many earlier values of a key the map keeps ([`ReplicatedMap::history`]): the
/// reach of point-in-time recovery on a cluster. A constant, so that every node keeps
/// the same and their digests agree.
pub const VERSIONS_KEPT: usize = 32;

/// What applying a log entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The write took effect; the key's version is now this log index (0: deleted).
    Done {
        /// The key's new version.
        version: u64,
    },
    /// The expected version did not match: nothing changed.
    Conflict {
        /// The key's version (0: absent).
        current: u64,
    },
}

/// The replicated data, as snapshots carry it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Data {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// Key → (version: the index of the entry that wrote it, value).
    entries: BTreeMap<String, (u64, Vec<u8>)>,
    /// Key → its earlier values with their versions, oldest first (at most
    /// [`VERSIONS_KEPT`]; dropped with the key when it is deleted).
    history: BTreeMap<String, std::collections::VecDeque<(u64, Vec<u8>)>>,
    /// Requests applied in the last [`REMEMBER_REQUESTS`] entries: id → what applying
    /// did.
    requests: BTreeMap<u128, Applied>,
    /// The same requests by log index, to forget them in order.
    request_order: BTreeMap<u64, u128>,
}

/// A snapshot as stored: its metadata and the encoded [`Data`].
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, BasicNode>,
    #[serde(with = "super::as_bytes")]
    data: Vec<u8>,
}

/// How many recent writes a node remembers for watchers ([`ReplicatedMap::written_after`]).
const FEED_KEPT: usize = 65_536;

/// The keys written by the entries this node applied lately, in order, for watchers;
/// not replicated (each node feeds its own watchers as it applies).
#[derive(Debug)]
struct Feed {
    recent: std::sync::Mutex<std::collections::VecDeque<(u64, String)>>,
    /// Writes at or below this index are no longer in `recent` (or were applied
    /// before this process: from the snapshot it started from).
    floor: std::sync::atomic::AtomicU64,
    applied: tokio::sync::watch::Sender<u64>,
}

/// The replicated map of one node (cheap to clone: clones share the state).
#[derive(Clone)]
pub struct ReplicatedMap {
    db: Arc<Database>,
    data: Arc<RwLock<Data>>,
    snapshots: Arc<std::sync::atomic::AtomicU64>,
    feed: Arc<Feed>,
}

impl std::fmt::Debug for ReplicatedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedMap")
            .field("keys", &self.read().entries.len())
            .finish()
    }
}

fn read_stored(db: &Database) -> Result<Option<Stored>, StorageError> {
    let txn = db
        .begin_read()
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    let t = txn
        .open_table(SNAPSHOT)
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    let Some(v) = t
        .get("current")
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?
    else {
        return Ok(None);
    };
    postcard::from_bytes(v.value())
        .map(Some)
        .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
}

fn write_stored(db: &Database, stored: &Stored) -> Result<(), StorageError> {
    let sig = Some(stored.meta.signature());
    let bytes = postcard::to_allocvec(stored)
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
    let mut txn = db
        .begin_write()
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
    {
        let mut t = txn
            .open_table(SNAPSHOT)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        t.insert("current", bytes.as_slice())
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
    }
    txn.commit()
        .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
    Ok(())
}

impl ReplicatedMap {
    /// The map as the newest snapshot left it (openraft replays the log after it).
    pub(super) async fn open(db: Arc<Database>) -> Result<Self, StorageError> {
        let d = db.clone();
        let data = blocking(move || match read_stored(&d)? {
            None => Ok(Data::default()),
            Some(s) => postcard::from_bytes(&s.data)
                .map_err(|e| StorageIOError::read_snapshot(Some(s.meta.signature()), &e).into()),
        })
        .await?;
        let floor = data.last_applied.map_or(0, |l| l.index);
        Ok(Self {
            db,
            data: Arc::new(RwLock::new(data)),
            snapshots: Arc::default(),
            feed: Arc::new(Feed {
                recent: Default::default(),
                floor: floor.into(),
                applied: tokio::sync::watch::channel(floor).0,
            }),
        })
    }

    /// The keys written by entries applied after index `after`, oldest first, each with
    /// the index that wrote it (at most `limit`), waiting up to `wait` for the first.
    /// `Err(floor)` when writes after `after` are no longer remembered here (they are
    /// at or below `floor`).
    pub async fn written_after(
        &self,
        after: u64,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<(u64, String)>, u64> {
        let floor = self.feed.floor.load(std::sync::atomic::Ordering::Acquire);
        if after < floor {
            return Err(floor);
        }
        let mut rx = self.feed.applied.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|&i| i > after)).await;
        let recent = self.feed.recent.lock().unwrap_or_else(|e| e.into_inner());
        let start = recent.partition_point(|(i, _)| *i <= after);
        Ok(recent.iter().skip(start).take(limit).cloned().collect())
    }

    /// Remembers the keys entry `index` wrote, and that it was applied.
    fn fed(&self, index: u64, keys: Vec<String>) {
        if !keys.is_empty() {
            let mut recent = self.feed.recent.lock().unwrap_or_else(|e| e.into_inner());
            for key in keys {
                if recent.len() == FEED_KEPT
                    && let Some((gone, _)) = recent.pop_front()
                {
                    self.feed
                        .floor
                        .fetch_max(gone, std::sync::atomic::Ordering::AcqRel);
                }
                recent.push_back((index, key));
            }
        }
        self.feed.applied.send_replace(index);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key` and its version, as applied on this node.
    pub fn get(&self, key: &str) -> Option<(u64, Vec<u8>)> {
        self.read().entries.get(key).cloned()
    }

    /// The earlier values of `key` this node keeps (at most [`VERSIONS_KEPT`]), oldest
    /// first, each with its version; the current value is not among them.
    pub fn history(&self, key: &str) -> Vec<(u64, Vec<u8>)> {
        self.read()
            .history
            .get(key)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The last applied index and every key starting with `prefix` with its version and
    /// value, read together (a consistent view while entries keep being applied).
    pub fn scan(&self, prefix: &str) -> (u64, Vec<(String, u64, Vec<u8>)>) {
        let d = self.read();
        let rows = d
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, value))| (k.clone(), *v, value.clone()))
            .collect();
        (d.last_applied.map_or(0, |l| l.index), rows)
    }

    /// The keys starting with `prefix`, in order, with their versions.
    pub fn keys(&self, prefix: &str) -> Vec<(String, u64)> {
        self.read()
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), *v))
            .collect()
    }

    /// The last applied index and BLAKE3 of every key, version and value in order, read
    /// together: two nodes that applied the same log have the same hash.
    pub fn digest(&self) -> (u64, String) {
        let data = self.read();
        let mut h = blake3::Hasher::new();
        let mut add = |k: &str, version: u64, value: &[u8]| {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update(&version.to_le_bytes());
            h.update(&(value.len() as u64).to_le_bytes());
            h.update(value);
        };
        for (k, (version, value)) in &data.entries {
            for (v, old) in data.history.get(k).into_iter().flatten() {
                add(k, *v, old);
            }
            add(k, *version, value);
        }
        (
            data.last_applied.map(|l| l.index).unwrap_or(0),
            h.finalize().to_hex().to_string(),
        )
    }

    /// The index of the last entry applied on this node.
    pub fn applied_index(&self) -> Option<u64> {
        self.read().last_applied.map(|l| l.index)
    }

    /// Applies one proposal at log index `index`: a request id seen in the last
    /// [`REMEMBER_REQUESTS`] entries answers what its first application did.
    fn apply_proposal(d: &mut Data, index: u64, p: &Proposal) -> Applied {
        if p.request != 0
            && let Some(first) = d.requests.get(&p.request)
        {
            return first.clone();
        }
        let applied = Self::apply_command(&mut d.entries, &mut d.history, index, &p.command);
        if p.request != 0 && matches!(applied, Applied::Done { .. }) {
            d.requests.insert(p.request, applied.clone());
            d.request_order.insert(index, p.request);
        }
        while let Some(oldest) = d.request_order.first_entry()
            && *oldest.key() + REMEMBER_REQUESTS < index
        {
            let request = oldest.remove();
            d.requests.remove(&request);
        }
        applied
    }

    /// Applies one command at log index `index` (the pure rule, also used by tests): the
    /// value a `Put` replaces goes to the key's history.
    fn apply_command(
        entries: &mut BTreeMap<String, (u64, Vec<u8>)>,
        history: &mut BTreeMap<String, std::collections::VecDeque<(u64, Vec<u8>)>>,
        index: u64,
        c: &Command,
    ) -> Applied {
        let version_of = |entries: &BTreeMap<String, (u64, Vec<u8>)>, key: &str| {
            entries.get(key).map_or(0, |(v, _)| *v)
        };
        match c {
            Command::Put { key, value, expect } => {
                let current = version_of(entries, key);
                if expect.is_some_and(|e| e != current) {
                    return Applied::Conflict { current };
                }
                if let Some(old) = entries.insert(key.clone(), (index, value.clone())) {
                    let kept = history.entry(key.clone()).or_default();
                    if kept.len() == VERSIONS_KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(old);
                }
                Applied::Done { version: index }
            }
            Command::Delete { key, expect } => {
                let current = version_of(entries, key);
                if expect.is_some_and(|e| e != current) {
                    return Applied::Conflict { current };
                }
                entries.remove(key);
                history.remove(key);
                Applied::Done { version: 0 }
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ReplicatedMap {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last, membership) = {
            let d = self.read();
            let bytes =
                postcard::to_allocvec(&*d).map_err(|e| StorageIOError::read_state_machine(&e))?;
            (bytes, d.last_applied, d.membership.clone())
        };
        let n = self
            .snapshots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("--{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        let stored = Stored {
            meta: meta.clone(),
            data: data.clone(),
        };
        let db = self.db.clone();
        blocking(move || write_stored(&db, &stored)).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ReplicatedMap {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let d = self.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut fed = Vec::new();
        {
            let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                d.last_applied = Some(entry.log_id);
                let index = entry.log_id.index;
                let mut written = Vec::new();
                out.push(match &entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(batch) => batch
                        .0
                        .iter()
                        .map(|p| {
                            let applied = Self::apply_proposal(&mut d, index, p);
                            if let (Applied::Done { version }, Command::Put { key, .. }) =
                                (&applied, &p.command)
                                && *version == index
                            {
                                written.push(key.clone());
                            }
                            applied
                        })
                        .collect(),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Vec::new()
                    }
                });
                fed.push((index, written));
            }
        }
        for (index, keys) in fed {
            self.fed(index, keys);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let data: Data = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = Stored {
            meta: meta.clone(),
            data: bytes,
        };
        let db = self.db.clone();
        blocking(move || write_stored(&db, &stored)).await?;
        let index = data.last_applied.map_or(0, |l| l.index);
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = data;
        // What the snapshot brought was not seen write by write: watchers of earlier
        // indexes are told so.
        self.feed
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.feed
            .floor
            .fetch_max(index, std::sync::atomic::Ordering::AcqRel);
        self.feed.applied.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || read_stored(&db)).await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_set_lets_one_of_two_racing_writers_win() {
        let (mut m, mut h) = (BTreeMap::new(), BTreeMap::new());
        let put = |expect| Command::Put {
            key: "order/1".into(),
            value: b"v".to_vec(),
            expect,
        };
        assert_eq!(
            ReplicatedMap::apply_command(&mut m, &mut h, 5, &put(Some(0))),
            Applied::Done { version: 5 }
        );
        // Both read version 5; the first to be applied wins, the second conflicts.
        assert_eq!(
            ReplicatedMap::apply_command(&mut m, &mut h, 6, &put(Some(5))),
            Applied::Done { version: 6 }
        );
        assert_eq!(
            ReplicatedMap::apply_command(&mut m, &mut h, 7, &put(Some(5))),
            Applied::Conflict { current: 6 }
        );
        assert_eq!(
            ReplicatedMap::apply_command(&mut m, &mut h, 8, &put(Some(0))),
            Applied::Conflict { current: 6 }
        );
        let del = Command::Delete {
            key: "order/1".into(),
            expect: Some(6),
        };
        assert_eq!(
            ReplicatedMap::apply_command(&mut m, &mut h, 9, &del),
            Applied::Done { version: 0 }
        );
        assert!(m.is_empty());
        assert_eq!(
            ReplicatedMap::apply_command(&mut m, &mut h, 10, &put(None)),
            Applied::Done { version: 10 }
        );
    }

    #[test]
    fn values_encode_as_they_did_when_they_were_byte_sequences() {
        // The log on disk and between nodes holds entries written before values were
        // serialized as byte strings: both encodings must be the same bytes.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        enum Before {
            Put {
                key: String,
                value: Vec<u8>,
                expect: Option<u64>,
            },
        }
        let value: Vec<u8> = (0..=255u8).chain(0..40).collect();
        let now = Command::Put {
            key: "k".into(),
            value: value.clone(),
            expect: Some(3),
        };
        let before = Before::Put {
            key: "k".into(),
            value,
            expect: Some(3),
        };
        let bytes = postcard::to_allocvec(&now).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), now);
        assert_eq!(postcard::from_bytes::<Before>(&bytes).unwrap(), before);
    }

    #[test]
    fn a_key_keeps_its_last_values_until_it_is_deleted() {
        let (mut m, mut h) = (BTreeMap::new(), BTreeMap::new());
        for i in 1..=(VERSIONS_KEPT as u64 + 5) {
            let put = Command::Put {
                key: "k".into(),
                value: i.to_le_bytes().to_vec(),
                expect: None,
            };
            ReplicatedMap::apply_command(&mut m, &mut h, i, &put);
        }
        let kept: Vec<u64> = h["k"].iter().map(|(v, _)| *v).collect();
        // The newest VERSIONS_KEPT earlier values, oldest first; the current one apart.
        assert_eq!(kept, (5..=VERSIONS_KEPT as u64 + 4).collect::<Vec<_>>());
        assert_eq!(h["k"][0].1, 5u64.to_le_bytes().to_vec());
        assert_eq!(m["k"].0, VERSIONS_KEPT as u64 + 5);
        let del = Command::Delete {
            key: "k".into(),
            expect: None,
        };
        ReplicatedMap::apply_command(&mut m, &mut h, 100, &del);
        assert!(h.is_empty() && m.is_empty());
    }

    #[test]
    fn a_retried_request_takes_effect_once() {
        let mut d = Data::default();
        let put = |request, value: &str, expect| Proposal {
            request,
            command: Command::Put {
                key: "k".into(),
                value: value.as_bytes().to_vec(),
                expect,
            },
        };
        let first = put(7, "a", None);
        assert_eq!(
            ReplicatedMap::apply_proposal(&mut d, 1, &first),
            Applied::Done { version: 1 }
        );
        ReplicatedMap::apply_proposal(&mut d, 2, &put(8, "b", None));
        // The retry of request 7 (its answer was lost) does not write "a" again.
        assert_eq!(
            ReplicatedMap::apply_proposal(&mut d, 3, &first),
            Applied::Done { version: 1 }
        );
        assert_eq!(d.entries["k"], (2, b"b".to_vec()));
        // Without an id, the same write applies again.
        assert_eq!(
            ReplicatedMap::apply_proposal(&mut d, 4, &put(0, "a", None)),
            Applied::Done { version: 4 }
        );
        // Ids are forgotten after REMEMBER_REQUESTS entries.
        ReplicatedMap::apply_proposal(&mut d, 5 + REMEMBER_REQUESTS, &put(9, "c", None));
        assert!(!d.requests.contains_key(&7) && d.requests.contains_key(&9));
    }
}
