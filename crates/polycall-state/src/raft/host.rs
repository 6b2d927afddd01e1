//! State machines whose instances live in the cluster's replicated map.
//!
//! An instance is one key (`instance/<id>`) whose value is its state and the event
//! that produced it; every transition is one raft log entry. A change runs the pure
//! transition rules on the instance as this node has applied it and proposes the
//! result expecting the version it read: when another node's change got there first,
//! the write answers `Conflict`, this node waits to apply that change and runs the
//! transition again on the fresh state. So a `fire` is acknowledged only once a
//! majority holds it and it is applied, and two racing `fire`s on one instance are
//! serialized exactly as on one node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::backup::{self, BackupFile};
use super::machines::{NodeMachines, instance_id};
use super::{Applied, ClusterError, Command, Consistency, EventualHost, Node};
use crate::error::StateError;
use crate::host::{At, Change, InstanceView};
use crate::instance::{Fired, InstanceState, Snapshot};
use crate::machine::Machine;
use crate::store::BackupInfo;
use crate::store::now_us;

const PREFIX: &str = "instance/";

/// How often a change is run again after losing a race to another node.
const MAX_RACES: usize = 16;

/// An instance as the replicated map holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    /// `None`: removed by a point-in-time recovery to before its creation (kept as a
    /// value, so that its earlier values stay in the key's history).
    state: Option<InstanceState>,
    /// The event that produced this state (`{"kind": "created" | "fired" | …}`).
    last: Json,
    /// When the node that proposed it accepted the event (microseconds since the epoch):
    /// what point-in-time recovery by time goes by.
    #[serde(default)]
    ts_us: u64,
}

impl Stored {
    fn new(state: Option<InstanceState>, last: Json) -> Self {
        Self {
            state,
            last,
            ts_us: now_us(),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(self).map_err(|e| StateError::Store(e.to_string()))
    }

    /// The change this value records, as history shows it (`version`: its log index).
    fn change(&self, id: &str, version: u64) -> Change {
        Change {
            index: version,
            ts_us: self.ts_us,
            instance: id.to_string(),
            event: self.last.clone(),
            integrity: self
                .state
                .as_ref()
                .map(InstanceState::integrity)
                .unwrap_or_default(),
        }
    }
}

/// What [`ReplicatedHost::replace`] makes of an instance's current state: a result,
/// and the new state with the event that says why (or `None`: leave it).
type NextValue<'a, T> = &'a (
        dyn Fn(
    Option<InstanceState>,
) -> Result<(T, Option<(Option<InstanceState>, Json)>), StateError>
            + Sync
    );

/// Hosts machines over a cluster [`Node`]: the replicated counterpart of
/// [`StateHost`](crate::StateHost), with `create`, `fire`, `lock`/`unlock` and `get`.
pub struct ReplicatedHost {
    machines: NodeMachines,
    node: Arc<Node>,
    /// One change at a time per instance on this node (races between nodes are settled
    /// by compare-and-set).
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// The node's eventual machines, whose instances its backups hold too.
    eventual: Option<Arc<EventualHost>>,
}

impl std::fmt::Debug for ReplicatedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedHost")
            .field("machines", &self.machines)
            .field("node", &self.node.id())
            .finish()
    }
}

fn cluster(e: ClusterError) -> StateError {
    match e {
        ClusterError::InvalidInput(s) => StateError::InvalidInput(s),
        ClusterError::Stopped(s) => StateError::Store(s),
        other => StateError::Unavailable(other.to_string()),
    }
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl ReplicatedHost {
    /// Hosts `machines` over `node`. Every node of a cluster must load the same
    /// definitions: an instance is changed with the definition of the version it was
    /// created with.
    pub fn new(machines: Vec<Machine>, node: Arc<Node>) -> Result<Self, StateError> {
        Ok(Self {
            machines: NodeMachines::new(machines, node.id())?,
            node,
            locks: std::sync::Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            eventual: None,
        })
    }

    /// Makes this node's backups hold the instances of its eventual machines as well
    /// (as `eventual` has merged them), and its restores put them back.
    pub fn with_eventual(mut self, eventual: Arc<EventualHost>) -> Self {
        self.eventual = Some(eventual);
        self
    }

    /// The cluster node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The loaded machines.
    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.iter()
    }

    /// A machine by name.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.get(name)
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > 4096 {
            // Forget instances nobody is changing right now.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<Stored, StateError> {
        serde_json::from_slice(bytes)
            .map_err(|e| StateError::Store(format!("instance {id} is unreadable: {e}")))
    }

    /// Creates an instance of `machine` (`id`: given, or generated).
    pub async fn create(
        &self,
        machine: &str,
        id: Option<&str>,
        context: Json,
    ) -> Result<InstanceView, StateError> {
        let m = self.machines.named(machine)?;
        let id = instance_id(id, || {
            let n = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("{}-{:x}-{}-{n}", m.name(), now_us(), self.node.id())
        })?;
        let state = InstanceState::new(&m, &id, context.clone())?;
        let stored = Stored::new(
            Some(state.clone()),
            json!({"kind": "created", "machine": m.name(), "context": context}),
        );
        let value = stored.encode()?;
        // A key holding a removed instance (a recovery to before its creation) may be
        // created again; its history stays.
        let expect = match self.node.map().get(&key(&id)) {
            Some((version, bytes)) if Self::decode(&id, &bytes)?.state.is_none() => version,
            _ => 0,
        };
        let written = self
            .node
            .write(Command::Put {
                key: key(&id),
                value,
                expect: Some(expect),
            })
            .await
            .map_err(cluster)?;
        match written.applied {
            Applied::Done { version } => Ok(self.machines.view(state, version)),
            Applied::Conflict { .. } => Err(StateError::InstanceExists(id)),
        }
    }

    /// Changes instance `id`: `change` runs on the state as this node has applied it,
    /// and again on the fresh state when another node changed it first.
    async fn change<T>(
        &self,
        id: &str,
        change: impl Fn(&mut InstanceState, &Machine) -> Result<(T, Json), StateError> + Sync,
    ) -> Result<(T, InstanceView), StateError> {
        let (out, view) = self
            .replace(id, &|current| {
                let Some(mut state) = current else {
                    return Err(StateError::UnknownInstance(id.to_string()));
                };
                let m = self.machines.version(&state.version)?;
                let (out, last) = change(&mut state, &m)?;
                Ok((out, Some((Some(state), last))))
            })
            .await?;
        let view = view.ok_or_else(|| StateError::Store(format!("instance {id} vanished")))?;
        Ok((out, view))
    }

    /// Replaces instance `id`'s value with what `next` makes of the state this node
    /// has applied (`None`: absent or removed): a new state (or `None` to remove it) and
    /// the event that says why, or nothing to leave it as it is. Runs `next` again on
    /// the fresh state when another node changed it first. Answers the instance as it
    /// then is.
    async fn replace<T>(
        &self,
        id: &str,
        next: NextValue<'_, T>,
    ) -> Result<(T, Option<InstanceView>), StateError> {
        let lock = self.lock_of(id);
        let _serial = lock.lock().await;
        let mut fresh = false;
        for _ in 0..MAX_RACES {
            let (version, current) = match self.node.map().get(&key(id)) {
                Some((version, bytes)) => (version, Self::decode(id, &bytes)?.state),
                None => (0, None),
            };
            let (out, change) = match next(current.clone()) {
                Ok(decided) => decided,
                // A refusal (no such instance, a guard, a lock…) may come of this node
                // lagging behind writes acknowledged elsewhere: decide again on what
                // the leader had committed when asked. (A write on a stale copy is
                // caught by compare-and-set instead.)
                Err(_) if !fresh => {
                    self.catch_up(id).await?;
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some((state, last)) = change else {
                return Ok((out, current.map(|s| self.machines.view(s, version))));
            };
            let stored = Stored::new(state, last);
            let value = stored.encode()?;
            let written = self
                .node
                .write(Command::Put {
                    key: key(id),
                    value,
                    expect: Some(version),
                })
                .await
                .map_err(cluster)?;
            match written.applied {
                Applied::Done { version } => {
                    // Read-your-writes on this node: it has applied what it acknowledges.
                    let _ = self
                        .node
                        .wait_applied(written.index, Duration::from_secs(2))
                        .await;
                    return Ok((out, stored.state.map(|s| self.machines.view(s, version))));
                }
                Applied::Conflict { current } => {
                    // Another node's change won: apply it here and run ours again.
                    self.node
                        .wait_applied(current, Duration::from_secs(5))
                        .await
                        .map_err(cluster)?;
                }
            }
        }
        Err(StateError::Unavailable(format!(
            "instance {id} changed under this node {MAX_RACES} times in a row; retry"
        )))
    }

    /// Fires `transition` on instance `id` with `event`, on behalf of `principal`.
    pub async fn fire(
        &self,
        id: &str,
        transition: &str,
        event: Json,
        principal: Option<&str>,
    ) -> Result<(Fired, InstanceView), StateError> {
        self.change(id, |s, m| {
            let fired = s.fire(m, transition, &event, principal)?;
            let last = json!({
                "kind": "fired",
                "transition": transition,
                "event": event,
                "principal": principal,
            });
            Ok((fired, last))
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
        let (_, view) = self
            .change(id, |s, m| {
                s.set_lock(m, state, lock)?;
                let kind = if lock { "locked" } else { "unlocked" };
                Ok(((), json!({"kind": kind, "state": state})))
            })
            .await?;
        Ok(view)
    }

    /// The instance, as fresh as `consistency` asks, with the applied index of the node
    /// that answered.
    pub async fn get(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<(InstanceView, u64), StateError> {
        let read = self
            .node
            .read(&key(id), consistency)
            .await
            .map_err(cluster)?;
        let state = match read.value {
            Some((version, bytes)) => Self::decode(id, &bytes)?.state.map(|s| (version, s)),
            None => None,
        };
        let Some((version, state)) = state else {
            return Err(StateError::UnknownInstance(id.to_string()));
        };
        Ok((self.machines.view(state, version), read.applied_index))
    }

    /// The instances this node has applied, in id order.
    pub fn instances(&self) -> Vec<String> {
        self.values()
            .into_iter()
            .filter(|(_, _, s)| s.state.is_some())
            .map(|(id, _, _)| id)
            .collect()
    }

    /// Every instance key this node has applied (removed ones included): id, version,
    /// value.
    fn values(&self) -> Vec<(String, u64, Stored)> {
        let (_, rows) = self.node.map().scan(PREFIX);
        rows.into_iter()
            .filter_map(|(k, version, bytes)| {
                let id = k[PREFIX.len()..].to_string();
                match Self::decode(&id, &bytes) {
                    Ok(stored) => Some((id, version, stored)),
                    Err(e) => {
                        tracing::error!(error = %e, "skipping an unreadable instance");
                        None
                    }
                }
            })
            .collect()
    }

    /// An online, consistent backup of every instance, as of everything committed when
    /// it was asked for, to `dest` (a new redb file; never overwritten), with the
    /// instances of the node's eventual machines as it has merged them
    /// ([`ReplicatedHost::with_eventual`]). Restore it on any cluster with
    /// [`ReplicatedHost::restore_backup`].
    pub async fn backup(&self, dest: &std::path::Path) -> Result<BackupInfo, StateError> {
        self.catch_up("").await?;
        let (taken_at, rows) = self.node.map().scan(PREFIX);
        let file = BackupFile {
            taken_at,
            instances: rows
                .into_iter()
                .map(|(k, _, value)| (k[PREFIX.len()..].to_string(), value))
                .collect(),
            eventual: match &self.eventual {
                Some(e) => e.backup_rows()?,
                None => Vec::new(),
            },
            replicated: true,
        };
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || backup::write(&dest, &file))
            .await
            .map_err(|e| StateError::Store(e.to_string()))?
    }

    /// Puts every instance back to its state in the backup at `path` (one change per
    /// instance, through the log); replicated instances the backup does not hold are
    /// removed (unless it is the backup of a node without replicated machines: then they
    /// stay). Eventual instances it holds are put back as new changes on this node
    /// ([`EventualHost::restore_rows`]). The whole backup is read and checked first
    /// (every machine version it names must be loaded, every snapshot whole): a backup
    /// that fails the check changes nothing.
    pub async fn restore_backup(
        &self,
        path: &std::path::Path,
    ) -> Result<Vec<(String, Option<InstanceView>)>, StateError> {
        let p = path.to_owned();
        let file = tokio::task::spawn_blocking(move || backup::read(&p))
            .await
            .map_err(|e| StateError::Store(e.to_string()))??;
        let eventual = match (&self.eventual, file.eventual.is_empty()) {
            (_, true) => None,
            (Some(host), false) => Some((host, host.check_rows(file.eventual)?)),
            (None, false) => {
                return Err(StateError::InvalidInput(format!(
                    "{} holds instances of eventual machines, and this node loads none",
                    path.display()
                )));
            }
        };
        if !file.replicated {
            // A backup of a node with eventual machines only: it says nothing of the
            // replicated instances, which stay as they are.
            return match eventual {
                Some((host, checked)) => host.restore_rows(checked).await,
                None => Ok(Vec::new()),
            };
        }
        let mut targets = BTreeMap::new();
        for (id, bytes) in file.instances {
            let stored = Self::decode(&id, &bytes)?;
            if let Some(s) = &stored.state {
                self.machines.version(&s.version)?;
            }
            targets.insert(id, stored.state);
        }
        self.catch_up("").await?;
        for (id, _, _) in self.values() {
            targets.entry(id).or_insert(None);
        }
        let mut out = self
            .put_back(
                targets.into_iter().collect(),
                json!({"backup": path.display().to_string(), "index": file.taken_at}),
            )
            .await?;
        if let Some((host, checked)) = eventual {
            out.extend(host.restore_rows(checked).await?);
        }
        Ok(out)
    }

    /// Waits until this node has applied everything the leader had committed when
    /// asked (a linearizable read of `id`'s key).
    async fn catch_up(&self, id: &str) -> Result<(), StateError> {
        self.node
            .read(&key(id), Consistency::Linearizable)
            .await
            .map_err(cluster)?;
        Ok(())
    }

    /// A self-verifying snapshot of the instance (a linearizable read).
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, StateError> {
        let (view, _) = self.get(id, Consistency::Linearizable).await?;
        Ok(view.state.snapshot())
    }

    /// Restores the instance from a snapshot (integrity, version and locks checked),
    /// through the log like any change.
    pub async fn restore(&self, id: &str, snapshot: &Snapshot) -> Result<InstanceView, StateError> {
        let (_, view) = self
            .change(id, |s, m| {
                s.restore(m, snapshot)?;
                Ok((
                    (),
                    json!({"kind": "restored", "active": s.active, "context": s.context}),
                ))
            })
            .await?;
        Ok(view)
    }

    /// Changes applied on this node after log index `after` (all instances, oldest
    /// first, at most `limit`), waiting up to `wait` for the first: what `state.watch`
    /// and `state.subscribe` serve on a cluster node. A change whose value was replaced
    /// more than [`super::VERSIONS_KEPT`] times since is left out; changes this node no
    /// longer remembers (or received in a snapshot) are refused, so a watcher knows to
    /// start again from now.
    pub async fn changes(
        &self,
        after: u64,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<Change>, StateError> {
        let written = self
            .node
            .map()
            .written_after(after, limit, wait)
            .await
            .map_err(|floor| {
                StateError::InvalidInput(format!(
                    "changes up to log index {floor} are not kept on this node: watch from {floor} or from now (no `after`)"
                ))
            })?;
        let map = self.node.map();
        let mut out = Vec::new();
        for (index, k) in written {
            let Some(id) = k.strip_prefix(PREFIX) else {
                continue;
            };
            let value = map
                .get(&k)
                .filter(|(v, _)| *v == index)
                .or_else(|| map.history(&k).into_iter().find(|(v, _)| *v == index));
            if let Some((_, bytes)) = value {
                out.push(Self::decode(id, &bytes)?.change(id, index));
            }
        }
        Ok(out)
    }

    /// The index of the last log entry this node applied.
    pub fn last_index(&self) -> u64 {
        self.node.map().applied_index().unwrap_or(0)
    }

    /// The instance's changes this node keeps (its last [`super::VERSIONS_KEPT`] earlier
    /// values and the current one), oldest first, at most `limit` (the newest).
    pub async fn history(&self, id: &str, limit: usize) -> Result<Vec<Change>, StateError> {
        self.catch_up(id).await?;
        let k = key(id);
        let Some((version, bytes)) = self.node.map().get(&k) else {
            return Err(StateError::UnknownInstance(id.to_string()));
        };
        let mut out = Vec::new();
        for (v, old) in self.node.map().history(&k) {
            out.push(Self::decode(id, &old)?.change(id, v));
        }
        out.push(Self::decode(id, &bytes)?.change(id, version));
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }

    /// The instance as it was at `at` (`None`: it did not exist then), from the values
    /// this node keeps; a point before the oldest kept value of an instance created
    /// earlier is refused ("before the recovery window").
    fn state_at(&self, id: &str, at: At) -> Result<Option<InstanceState>, StateError> {
        let k = key(id);
        let map = self.node.map();
        let mut values = map.history(&k);
        values.extend(map.get(&k));
        let mut found: Option<Stored> = None;
        let mut oldest: Option<Stored> = None;
        for (version, bytes) in values {
            let stored = Self::decode(id, &bytes)?;
            let before = match at {
                At::Index(i) => version <= i,
                At::Time(t) => stored.ts_us <= t,
            };
            if oldest.is_none() {
                oldest = Some(stored.clone());
            }
            if before {
                found = Some(stored);
            }
        }
        match (found, oldest) {
            (Some(stored), _) => Ok(stored.state),
            (None, Some(first)) if first.last["kind"] == "created" => Ok(None),
            (None, Some(_)) => Err(StateError::InvalidInput(format!(
                "instance {id}: that point is before the recovery window (a cluster keeps the \
                 last {} values of each instance)",
                super::VERSIONS_KEPT
            ))),
            (None, None) => Ok(None),
        }
    }

    /// Point-in-time recovery: puts instance `id` (or every instance, `None`) back to
    /// its state at `at`, each through the log (so it can be undone the same way).
    /// Every instance's past is found first: one before the recovery window refuses the
    /// whole recovery before anything changed. Instances created after `at` are
    /// removed. Returns each instance touched and what it became.
    pub async fn restore_to(
        &self,
        id: Option<&str>,
        at: At,
    ) -> Result<Vec<(String, Option<InstanceView>)>, StateError> {
        let ids: Vec<String> = match id {
            Some(id) => {
                // A removed instance may be recovered too (undoing the recovery that
                // removed it).
                self.catch_up(id).await?;
                if self.node.map().get(&key(id)).is_none() {
                    return Err(StateError::UnknownInstance(id.to_string()));
                }
                vec![id.to_string()]
            }
            None => {
                self.catch_up("").await?;
                self.values().into_iter().map(|(id, _, _)| id).collect()
            }
        };
        let mut pasts = Vec::with_capacity(ids.len());
        for id in ids {
            let past = self.state_at(&id, at)?;
            pasts.push((id, past));
        }
        let what = match at {
            At::Index(i) => json!({"index": i}),
            At::Time(t) => json!({"at": crate::time::format(t)}),
        };
        self.put_back(pasts, what).await
    }

    /// Sets each instance to the given state (`None`: removed), each as one change
    /// logged as `{"kind": "restored" | "removed", "to": to}`; instances already so are
    /// left alone.
    async fn put_back(
        &self,
        targets: Vec<(String, Option<InstanceState>)>,
        to: Json,
    ) -> Result<Vec<(String, Option<InstanceView>)>, StateError> {
        let mut out = Vec::new();
        for (id, past) in targets {
            let ((), view) = self
                .replace(&id, &|current| {
                    let same = match (&past, &current) {
                        (None, None) => true,
                        (Some(p), Some(c)) => p.canonical() == c.canonical(),
                        _ => false,
                    };
                    if same {
                        return Ok(((), None));
                    }
                    let next = past.clone().map(|mut p| {
                        // Keep the event count increasing.
                        p.events = current.as_ref().map_or(p.events, |c| c.events.max(p.events)) + 1;
                        p
                    });
                    let last = match &next {
                        Some(s) => json!({"kind": "restored", "to": to, "active": s.active, "context": s.context}),
                        None => json!({"kind": "removed", "to": to}),
                    };
                    Ok(((), Some((next, last))))
                })
                .await?;
            out.push((id, view));
        }
        Ok(out)
    }
}
