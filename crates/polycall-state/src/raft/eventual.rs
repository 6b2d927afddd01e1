//! Eventually consistent state machines on a cluster: every node takes writes at once
//! (on every side of a partition) and ships them to the others by delta anti-entropy.
//!
//! An instance is a [`Doc`](crate::crdt::Doc) of CRDTs. A change runs the same pure
//! transition rules as everywhere, on the instance as this node has merged it, and
//! turns the difference into a delta: the active states as a last-writer-wins register
//! (hybrid logical clock), each context field as the CRDT its machine declares. The
//! delta is joined into the node's copy, fsynced (machines with `durability = "sync"`)
//! and answered; it is then numbered in this node's outbox.
//!
//! Each node sends every peer — the members of the raft membership — the deltas of its
//! outbox the peer has not acknowledged (joined per instance), every 100 ms while there
//! are some and once a second otherwise. A peer joins what it receives, persists it and
//! answers with its replica id. A peer is sent this node's whole state instead when it
//! was never sent anything since this node started (deltas made before a restart are
//! not kept), when its replica id changed (its disk was wiped) or when the outbox
//! dropped deltas it had not acknowledged (more than [`OUTBOX_LIMIT`]). Joins are
//! idempotent and commutative, so a delta sent twice or late does no harm, and nodes
//! that received the same changes hold the same state ([`EventualHost::digest`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use polycall_core::{Call, MethodInfo, Reply, Router, Status, handler_fn};
use polycall_net::{Channel, ChannelConfig};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::backup::{self, BackupFile};
use super::eventual_feed::Feed;
use super::machines::{NodeMachines, instance_id};
use super::network::{Peers, decode, encode};
use super::{Node, NodeId};
use crate::crdt::{Clock, Doc, ReplicaId};
use crate::definition::Durability;
use crate::error::StateError;
use crate::host::{Change, InstanceView};
use crate::instance::{Fired, InstanceState, Snapshot};
use crate::machine::Machine;
use crate::store::{BackupInfo, now_us};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("eventual_docs");
const META: TableDefinition<&str, u64> = TableDefinition::new("eventual_meta");

/// Deltas kept for peers that have not acknowledged them; a peer further behind gets
/// the whole state.
pub const OUTBOX_LIMIT: usize = 100_000;

/// How often deltas are sent while there are some.
const SEND_EVERY: Duration = Duration::from_millis(100);
/// How often a peer is contacted when there is nothing to send (to learn of a wiped
/// disk).
const IDLE_CONTACT: Duration = Duration::from_secs(1);
/// Instances per message of a whole-state transfer.
const CHUNK: usize = 500;

/// What one node sends another: instances to join (deltas or whole docs).
#[derive(Debug, Serialize, Deserialize)]
struct SyncRequest {
    /// The sender's replica id.
    from: ReplicaId,
    docs: Vec<(String, Doc)>,
}

/// The answer: the receiver's replica id (a new one: its disk was wiped).
#[derive(Debug, Serialize, Deserialize)]
struct SyncReply {
    replica: ReplicaId,
}

#[derive(Default)]
struct Outbox {
    /// The number of the last delta made here.
    last: u64,
    deltas: VecDeque<(u64, String, Doc)>,
}

struct Inner {
    docs: BTreeMap<String, Doc>,
    clock: Clock,
    outbox: Outbox,
}

/// Backed-up eventual instances that passed [`EventualHost::check_rows`], ready to be
/// put back.
#[derive(Debug)]
pub struct CheckedRows(Vec<(String, Snapshot)>);

/// Hosts eventual machines on a cluster node.
pub struct EventualHost {
    machines: NodeMachines,
    node: Arc<Node>,
    replica: ReplicaId,
    db: Arc<redb::Database>,
    inner: Mutex<Inner>,
    /// Changes are joined and persisted one at a time (so a doc is never written older
    /// than what is in memory).
    writer: tokio::sync::Mutex<()>,
    /// Wakes the senders when a delta is made.
    changed: tokio::sync::Notify,
    /// Per peer: the number of the last delta it acknowledged (`None`: send it the whole
    /// state).
    acked: Mutex<HashMap<NodeId, Option<u64>>>,
    channel: ChannelConfig,
    /// The changes this node made or merged, for watchers.
    feed: Feed,
}

impl std::fmt::Debug for EventualHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventualHost")
            .field("machines", &self.machines)
            .field("replica", &self.replica)
            .finish()
    }
}

fn store_err(e: impl std::fmt::Display) -> StateError {
    StateError::Store(e.to_string())
}

impl EventualHost {
    /// Opens (creating when missing) the eventual state in `data_file` and starts
    /// sending changes to the peers of `node`'s membership, reached with `channel`.
    pub async fn open(
        machines: Vec<Machine>,
        node: Arc<Node>,
        data_file: &Path,
        channel: ChannelConfig,
    ) -> Result<Arc<Self>, StateError> {
        let machines = NodeMachines::new(machines, node.id())?;
        let path = data_file.to_owned();
        let (db, replica, docs, boot) = tokio::task::spawn_blocking(move || load(&path))
            .await
            .map_err(store_err)??;
        let host = Arc::new(Self {
            machines,
            node,
            replica,
            db: Arc::new(db),
            inner: Mutex::new(Inner {
                docs,
                clock: Clock::new(replica),
                outbox: Outbox::default(),
            }),
            writer: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            acked: Mutex::new(HashMap::new()),
            channel,
            feed: Feed::new(boot),
        });
        tokio::spawn(send_loop(Arc::downgrade(&host)));
        Ok(host)
    }

    /// The loaded machines.
    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.iter()
    }

    /// A machine by name.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.get(name)
    }

    /// This node's replica id (random per data file).
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes instance `id`: `next` gets its state as merged here (`None`: unknown)
    /// and gives the new one; the difference is joined, persisted and queued for the
    /// peers.
    async fn write<T>(
        &self,
        id: &str,
        event: Json,
        next: impl FnOnce(Option<InstanceState>) -> Result<(T, InstanceState), StateError>,
    ) -> Result<(T, InstanceView), StateError> {
        let _writer = self.writer.lock().await;
        let (out, state, doc, delta, durability) = {
            let mut inner = self.lock();
            let base = inner.docs.get(id).cloned().unwrap_or_default();
            let old = base.state();
            let (out, new) = next(old.clone())?;
            let m = self.machines.version(&new.version)?;
            let stamp = inner.clock.tick(now_us());
            let delta = base.change(
                old.as_ref(),
                &new,
                &m.definition().crdt,
                self.replica,
                stamp,
            )?;
            let mut doc = base;
            doc.join(&delta);
            let state = doc
                .state()
                .ok_or_else(|| StateError::Store(format!("instance {id} has no shape")))?;
            (out, state, doc, delta, m.definition().durability)
        };
        let change = Change {
            index: 0,
            ts_us: now_us(),
            instance: id.to_string(),
            event,
            integrity: state.integrity(),
        };
        self.persist(
            vec![(id.to_string(), doc.clone())],
            durability == Durability::Sync,
        )
        .await?;
        {
            let mut inner = self.lock();
            inner.docs.insert(id.to_string(), doc);
            inner.outbox.last += 1;
            let n = inner.outbox.last;
            inner.outbox.deltas.push_back((n, id.to_string(), delta));
            if inner.outbox.deltas.len() > OUTBOX_LIMIT {
                inner.outbox.deltas.pop_front();
            }
        }
        self.feed.record([change]);
        self.changed.notify_waiters();
        let index = state.events;
        Ok((out, self.machines.view(state, index)))
    }

    /// Stores `docs`, fsynced when `sync`.
    async fn persist(&self, docs: Vec<(String, Doc)>, sync: bool) -> Result<(), StateError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(if sync {
                redb::Durability::Immediate
            } else {
                redb::Durability::None
            })?;
            {
                let mut t = txn.open_table(DOCS)?;
                for (id, doc) in &docs {
                    let bytes = postcard::to_allocvec(doc).map_err(store_err)?;
                    t.insert(id.as_str(), bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(store_err)?
    }

    /// Creates an instance of `machine` on this node (`id`: given, or generated).
    pub async fn create(
        &self,
        machine: &str,
        id: Option<&str>,
        context: Json,
    ) -> Result<InstanceView, StateError> {
        let m = self.machines.named(machine)?;
        let id = instance_id(id, || {
            format!("{}-{:x}-{:x}", m.name(), now_us(), self.replica)
        })?;
        let (_, view) = self
            .write(&id, json!({"kind": "created"}), |current| match current {
                Some(_) => Err(StateError::InstanceExists(id.clone())),
                None => Ok(((), InstanceState::new(&m, &id, context)?)),
            })
            .await?;
        Ok(view)
    }

    /// Fires `transition` on instance `id` on this node.
    pub async fn fire(
        &self,
        id: &str,
        transition: &str,
        event: Json,
        principal: Option<&str>,
    ) -> Result<(Fired, InstanceView), StateError> {
        // The feed keeps what was fired and by whom, not the payload: its memory stays
        // bounded by the number of changes it keeps.
        let logged = json!({
            "kind": "fired",
            "transition": transition,
            "principal": principal,
        });
        self.write(id, logged, |current| {
            let mut s = current.ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
            let m = self.machines.version(&s.version)?;
            let fired = s.fire(&m, transition, &event, principal)?;
            Ok((fired, s))
        })
        .await
    }

    /// Locks or unlocks a state of instance `id`.
    pub async fn set_lock(
        &self,
        id: &str,
        state: &str,
        lock: bool,
    ) -> Result<InstanceView, StateError> {
        let kind = if lock { "locked" } else { "unlocked" };
        let ((), view) = self
            .write(id, json!({"kind": kind, "state": state}), |current| {
                let mut s = current.ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
                let m = self.machines.version(&s.version)?;
                s.set_lock(&m, state, lock)?;
                Ok(((), s))
            })
            .await?;
        Ok(view)
    }

    /// Restores instance `id` from a snapshot (integrity, version and locks checked);
    /// merged with the other nodes' changes like any change.
    pub async fn restore(&self, id: &str, snapshot: &Snapshot) -> Result<InstanceView, StateError> {
        let ((), view) = self
            .write(id, json!({"kind": "restored"}), |current| {
                let mut s = current.ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
                let m = self.machines.version(&s.version)?;
                s.restore(&m, snapshot)?;
                Ok(((), s))
            })
            .await?;
        Ok(view)
    }

    /// Every instance as this node has merged it, as self-verifying snapshots (JSON),
    /// in id order: what a cluster backup holds of eventual machines.
    pub fn backup_rows(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let states: Vec<InstanceState> = self.lock().docs.values().filter_map(Doc::state).collect();
        states
            .into_iter()
            .map(|s| {
                let bytes = serde_json::to_vec(&s.snapshot()).map_err(store_err)?;
                Ok((s.id, bytes))
            })
            .collect()
    }

    /// Checks backed-up instances ([`EventualHost::backup_rows`]) before anything is
    /// put back: each snapshot whole and of its id, its machine version one of this
    /// node's eventual machines.
    pub fn check_rows(&self, rows: Vec<(String, Vec<u8>)>) -> Result<CheckedRows, StateError> {
        let mut checked = Vec::with_capacity(rows.len());
        for (id, bytes) in rows {
            let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
                StateError::InvalidInput(format!("eventual instance {id} in the backup: {e}"))
            })?;
            snapshot.verify()?;
            if snapshot.state.id != id {
                return Err(StateError::InvalidInput(format!(
                    "the backup's eventual instance {id} holds a snapshot of {}",
                    snapshot.state.id
                )));
            }
            self.machines.version(&snapshot.state.version)?;
            checked.push((id, snapshot));
        }
        Ok(CheckedRows(checked))
    }

    /// Puts checked instances back: each becomes its backed-up state (locks included)
    /// as a new change made on this node (created when this node does not know it),
    /// merged into the other nodes' copies like any change; nothing is refused once
    /// checked. Instances the backup does not hold stay as they are: an eventual
    /// instance cannot be removed.
    pub async fn restore_rows(
        &self,
        rows: CheckedRows,
    ) -> Result<Vec<(String, Option<InstanceView>)>, StateError> {
        let mut out = Vec::with_capacity(rows.0.len());
        for (id, snapshot) in rows.0 {
            let ((), view) = self
                .write(
                    &id,
                    json!({"kind": "restored", "from": "backup"}),
                    |current| {
                        let mut s = snapshot.state.clone();
                        if let Some(current) = current {
                            s.events = current.events.max(s.events) + 1;
                        }
                        Ok(((), s))
                    },
                )
                .await?;
            out.push((id, Some(view)));
        }
        Ok(out)
    }

    /// A backup of this node's eventual instances alone (a node without replicated
    /// machines), in the cluster backup format.
    pub async fn backup(&self, dest: &Path) -> Result<BackupInfo, StateError> {
        let file = BackupFile {
            taken_at: 0,
            instances: Vec::new(),
            eventual: self.backup_rows()?,
            replicated: false,
        };
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || backup::write(&dest, &file))
            .await
            .map_err(store_err)?
    }

    /// Restores a cluster backup on a node without replicated machines: refused when the
    /// backup holds replicated instances (restore it on a node that loads their
    /// machines).
    pub async fn restore_backup(
        &self,
        path: &Path,
    ) -> Result<Vec<(String, Option<InstanceView>)>, StateError> {
        let p = path.to_owned();
        let file = tokio::task::spawn_blocking(move || backup::read(&p))
            .await
            .map_err(store_err)??;
        if !file.instances.is_empty() {
            return Err(StateError::InvalidInput(format!(
                "{} holds replicated instances, and this node loads no replicated machine",
                path.display()
            )));
        }
        let checked = self.check_rows(file.eventual)?;
        self.restore_rows(checked).await
    }

    /// The changes this node made or merged after number `after` (its own numbering,
    /// all instances, oldest first, at most `limit`), waiting up to `wait` for the
    /// first: what `state.watch` and `state.subscribe` serve of eventual machines.
    pub async fn changes(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StateError> {
        self.feed.after(after, limit, wait).await
    }

    /// The number of the last change this node made or merged.
    pub fn last_index(&self) -> u64 {
        self.feed.last()
    }

    /// The instance as this node has merged it.
    pub fn get(&self, id: &str) -> Result<InstanceView, StateError> {
        let state = self.lock().docs.get(id).and_then(Doc::state);
        state
            .map(|s| {
                let index = s.events;
                self.machines.view(s, index)
            })
            .ok_or_else(|| StateError::UnknownInstance(id.to_string()))
    }

    /// A self-verifying snapshot of the instance as this node has merged it.
    pub fn snapshot(&self, id: &str) -> Result<Snapshot, StateError> {
        Ok(self.get(id)?.state.snapshot())
    }

    /// The instances this node knows, in id order.
    pub fn instances(&self) -> Vec<String> {
        self.lock().docs.keys().cloned().collect()
    }

    /// BLAKE3 over every instance's id and canonical state, in order: equal on nodes
    /// that merged the same changes.
    pub fn digest(&self) -> String {
        let states: Vec<(String, String)> = self
            .lock()
            .docs
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    d.state().map(|s| s.canonical()).unwrap_or_default(),
                )
            })
            .collect();
        let mut h = blake3::Hasher::new();
        for (id, s) in states {
            h.update(&(id.len() as u64).to_le_bytes());
            h.update(id.as_bytes());
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// Joins what a peer sent, persists what changed (fsynced: the peer may drop what
    /// it sees acknowledged) and answers this node's replica id.
    async fn receive(&self, request: SyncRequest) -> Result<SyncReply, StateError> {
        let _writer = self.writer.lock().await;
        // Joined into copies, persisted, and only then taken into memory: a failed or
        // abandoned persist leaves memory as the disk is, and the peer (unanswered)
        // sends the same deltas again.
        let changed: BTreeMap<String, Doc> = {
            let mut inner = self.lock();
            let now = now_us();
            let mut changed: BTreeMap<String, Doc> = BTreeMap::new();
            for (id, delta) in request.docs {
                if let Err(drift) = inner.clock.observe(delta.stamp(), now) {
                    tracing::warn!(from = request.from, error = %drift, "eventual state: a peer's clock is off");
                }
                let before = match changed.get(&id) {
                    Some(doc) => doc.clone(),
                    None => inner.docs.get(&id).cloned().unwrap_or_default(),
                };
                let mut doc = before.clone();
                doc.join(&delta);
                if doc != before {
                    changed.insert(id, doc);
                }
            }
            changed
        };
        if !changed.is_empty() {
            let changed: Vec<(String, Doc)> = changed.into_iter().collect();
            self.persist(changed.clone(), true).await?;
            let now = now_us();
            let from = request.from.to_string();
            let mut merged = Vec::with_capacity(changed.len());
            let mut inner = self.lock();
            for (id, doc) in changed {
                if let Some(state) = doc.state() {
                    merged.push(Change {
                        index: 0,
                        ts_us: now,
                        instance: id.clone(),
                        event: json!({"kind": "merged", "from": from}),
                        integrity: state.integrity(),
                    });
                }
                inner.docs.insert(id, doc);
            }
            drop(inner);
            self.feed.record(merged);
        }
        Ok(SyncReply {
            replica: self.replica,
        })
    }

    /// What to send `peer` now: the deltas after `acked` joined per instance (or every
    /// doc when `acked` is `None` or the outbox no longer reaches back to it), and the
    /// outbox number they go up to.
    fn pending(&self, acked: Option<u64>) -> (Vec<(String, Doc)>, u64) {
        let inner = self.lock();
        let last = inner.outbox.last;
        let reaches = |a: u64| {
            inner
                .outbox
                .deltas
                .front()
                .is_none_or(|(first, _, _)| *first <= a + 1)
        };
        match acked {
            Some(a) if reaches(a) => {
                let mut joined: BTreeMap<String, Doc> = BTreeMap::new();
                for (_, id, delta) in inner.outbox.deltas.iter().filter(|(n, _, _)| *n > a) {
                    joined.entry(id.clone()).or_default().join(delta);
                }
                (joined.into_iter().collect(), last)
            }
            _ => (
                inner
                    .docs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                last,
            ),
        }
    }

    /// Drops the deltas every peer acknowledged.
    fn trim(&self) {
        let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        let Some(min) = acked.values().map(|a| a.unwrap_or(0)).min() else {
            return;
        };
        let mut inner = self.lock();
        while inner
            .outbox
            .deltas
            .front()
            .is_some_and(|(n, _, _)| *n <= min)
        {
            inner.outbox.deltas.pop_front();
        }
    }

    /// `cluster.sync`, admitting only `peers`.
    pub fn router(host: &Arc<EventualHost>, peers: Peers) -> Router {
        let weak = Arc::downgrade(host);
        Router::new()
            .route(
                "cluster.sync",
                MethodInfo::new("eventual state sent by a peer (peers only)"),
                handler_fn(move |c: Call| {
                    let weak = weak.clone();
                    let admitted = peers.admit(&c);
                    async move {
                        admitted?;
                        let request: SyncRequest = decode(&c.payload, "cluster.sync")?;
                        let host = weak
                            .upgrade()
                            .ok_or_else(|| Status::unavailable("this node is stopping"))?;
                        let reply = host.receive(request).await?;
                        encode(&reply).map(Reply::new)
                    }
                }),
            )
            .unwrap_or_else(|e| panic!("a valid method name: {e}"))
    }

    /// The id and address of every other member of the raft membership.
    fn peers(&self) -> Vec<(NodeId, String)> {
        let m = self.node.raft().metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.node.id())
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }
}

/// Opens the data file: its replica id (made when the file is new) and docs.
/// What a node's eventual state file holds: the database, the node's replica id, its
/// instances and how many times it has started (this start included).
type Loaded = (redb::Database, ReplicaId, BTreeMap<String, Doc>, u64);

fn load(path: &Path) -> Result<Loaded, StateError> {
    let db = redb::Database::create(path)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    let replica = {
        let mut meta = txn.open_table(META)?;
        let existing = meta.get("replica")?.map(|v| v.value());
        match existing {
            Some(r) => r,
            None => {
                let r = new_replica_id();
                meta.insert("replica", r)?;
                r
            }
        }
    };
    let boot = {
        let mut meta = txn.open_table(META)?;
        let boot = meta.get("boot")?.map_or(0, |v| v.value()) + 1;
        meta.insert("boot", boot)?;
        boot
    };
    txn.open_table(DOCS)?;
    txn.commit()?;
    let read = db.begin_read()?;
    let t = read.open_table(DOCS)?;
    let mut docs = BTreeMap::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let doc: Doc = postcard::from_bytes(v.value()).map_err(|e| {
            StateError::Integrity(format!(
                "eventual instance {} is unreadable: {e}",
                k.value()
            ))
        })?;
        docs.insert(k.value().to_string(), doc);
    }
    drop((t, read));
    Ok((db, replica, docs, boot))
}

/// A random replica id (never 0).
fn new_replica_id() -> ReplicaId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_us());
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Sends every peer what it lacks, until the host is dropped.
async fn send_loop(host: Weak<EventualHost>) {
    let mut links: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let Some(h) = host.upgrade() else { return };
        let peers = h.peers();
        h.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| peers.iter().any(|(p, _)| p == id));
        drop(h);
        links.retain(|id, task| {
            let keep = peers.iter().any(|(p, _)| p == id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, addr) in peers {
            links
                .entry(id)
                .or_insert_with(|| tokio::spawn(peer_loop(host.clone(), id, addr)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Keeps one peer up to date.
async fn peer_loop(host: Weak<EventualHost>, peer: NodeId, addr: String) {
    let mut channel: Option<Channel> = None;
    let mut incarnation: Option<ReplicaId> = None;
    let mut last_contact = std::time::Instant::now() - IDLE_CONTACT;
    loop {
        let Some(h) = host.upgrade() else { return };
        {
            // Registered before looking, so a delta made meanwhile wakes the wait below.
            let changed = h.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let acked = *h
                .acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(peer)
                .or_insert(None);
            let (docs, upto) = h.pending(acked);
            if docs.is_empty() && acked.is_some() && last_contact.elapsed() < IDLE_CONTACT {
                let _ = tokio::time::timeout(IDLE_CONTACT, changed).await;
            } else {
                match send(&h, &mut channel, &addr, docs).await {
                    Ok(replica) => {
                        last_contact = std::time::Instant::now();
                        let wiped = incarnation.is_some_and(|i| i != replica);
                        incarnation = Some(replica);
                        if wiped {
                            tracing::info!(
                                peer,
                                "eventual state: a peer's data is new; sending it everything"
                            );
                        }
                        let next = if wiped { None } else { Some(upto) };
                        h.acked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(peer, next);
                        h.trim();
                    }
                    Err(e) => {
                        tracing::debug!(peer, error = %e, "eventual state: cannot reach a peer");
                        channel = None;
                    }
                }
            }
        }
        drop(h);
        // Gathers what else comes in the next moment into the same message.
        tokio::time::sleep(SEND_EVERY).await;
    }
}

/// Sends `docs` to the peer at `addr` in chunks; answers its replica id.
async fn send(
    host: &EventualHost,
    channel: &mut Option<Channel>,
    addr: &str,
    docs: Vec<(String, Doc)>,
) -> Result<ReplicaId, Status> {
    if channel.is_none() {
        let endpoint = addr
            .parse()
            .map_err(|e| Status::invalid_input(format!("peer address {addr}: {e}")))?;
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            Channel::with_config(endpoint, host.channel.clone()),
        )
        .await
        .map_err(|_| Status::unavailable(format!("connecting to {addr} timed out")))??;
        *channel = Some(c);
    }
    let c = channel.as_ref().expect("connected above");
    let mut chunks: Vec<Vec<(String, Doc)>> = Vec::new();
    let mut docs = docs.into_iter().peekable();
    while docs.peek().is_some() || chunks.is_empty() {
        chunks.push(docs.by_ref().take(CHUNK).collect());
    }
    let mut replica = 0;
    for chunk in chunks {
        let request = SyncRequest {
            from: host.replica,
            docs: chunk,
        };
        let call = Call::new("cluster.sync", encode(&request)?)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_metadata(
                polycall_core::Metadata::default()
                    .with_timeout(std::time::Instant::now(), Duration::from_secs(5)),
            );
        let reply = c.call(call).await?;
        replica = decode::<SyncReply>(&reply.payload, "cluster.sync")?.replica;
    }
    Ok(replica)
}

/// What an eventual instance reports beside its state.
pub fn describe(view: &InstanceView, node: NodeId) -> Json {
    let mut out = serde_json::to_value(view).unwrap_or_default();
    out["consistency"] = json!("eventual");
    out["node"] = json!(node);
    out
}
