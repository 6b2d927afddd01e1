//! Machines and their instances, live: each instance handles one event at a time (its
//! events queue, first come first served, on the instance's own lock, the way an
//! actor's mailbox does), different instances run in parallel, and an event is
//! acknowledged only after its record is in the log as durably as its machine asks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::definition::Durability;
use crate::error::StateError;
use crate::instance::{Fired, InstanceState, Snapshot};
use crate::machine::Machine;
use crate::store::{
    BackupInfo, CREATED, DEFINITIONS, Entry, INSTANCES, LOG, ORDER, Record, SNAPSHOTS, Store,
    StoreConfig, StoredSnapshot, Write, now_us,
};

use redb::{ReadableDatabase, ReadableTable};

type Slot = Arc<tokio::sync::Mutex<Option<InstanceState>>>;

/// A point in the past to recover to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Microseconds since the Unix epoch: every event accepted at or before it.
    Time(u64),
    /// A log index: every event up to and including it.
    Index(u64),
}

/// An instance as callers see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceView {
    /// The state.
    #[serde(flatten)]
    pub state: InstanceState,
    /// The innermost active states.
    pub current: Vec<String>,
    /// Whether a final state is active.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// BLAKE3 of the state's canonical encoding.
    pub integrity: String,
    /// The log index of the event that produced this state.
    pub index: u64,
}

/// One logged event, as history and watchers see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Log index (global, increasing).
    pub index: u64,
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    /// The instance.
    pub instance: String,
    /// What happened: `{"kind": "created" | "fired" | "locked" | "unlocked" | "restored" | "deleted", …}`.
    pub event: Json,
    /// Integrity hash of the resulting state.
    pub integrity: String,
}

/// Refuses an instance id that is empty, longer than 200 bytes or has control
/// characters.
pub(crate) fn check_instance_id(id: &str) -> Result<(), StateError> {
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(StateError::InvalidInput(format!(
            "instance id {id:?} must be 1 to 200 printable characters"
        )));
    }
    Ok(())
}

/// Hosts machines and their instances over one [`Store`].
pub struct StateHost {
    machines: HashMap<String, Arc<Machine>>,
    versions: std::sync::Mutex<HashMap<String, Arc<Machine>>>,
    store: Arc<Store>,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    last_index: tokio::sync::watch::Sender<u64>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for StateHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHost")
            .field("machines", &self.machines.keys().collect::<Vec<_>>())
            .field("store", &self.store)
            .finish()
    }
}

impl StateHost {
    /// Opens the store and recovers every instance: its latest snapshot, then the log
    /// after it, each record's integrity hash checked against the replayed state.
    pub fn open(machines: Vec<Machine>, config: StoreConfig) -> Result<Self, StateError> {
        let store = Store::open(config)?;
        let mut by_name = HashMap::new();
        let mut versions = HashMap::new();
        for m in machines {
            let def = serde_json::to_string(m.definition())
                .map_err(|e| StateError::Store(e.to_string()))?;
            store.put_definition(m.version(), &def)?;
            let m = Arc::new(m);
            versions.insert(m.version().to_string(), m.clone());
            if by_name.insert(m.name().to_string(), m.clone()).is_some() {
                return Err(StateError::InvalidInput(format!(
                    "machine `{}` is given twice",
                    m.name()
                )));
            }
        }
        let host = Self {
            machines: by_name,
            versions: std::sync::Mutex::new(versions),
            store: Arc::new(store),
            slots: std::sync::Mutex::new(HashMap::new()),
            last_index: tokio::sync::watch::channel(0).0,
            next_id: std::sync::atomic::AtomicU64::new(1),
        };
        host.recover()?;
        Ok(host)
    }

    fn recover(&self) -> Result<(), StateError> {
        let read = self.store.db().begin_read()?;
        let ids: Vec<String> = read
            .open_table(INSTANCES)?
            .iter()?
            .map(|r| r.map(|(k, _)| k.value().to_string()))
            .collect::<Result<_, _>>()?;
        let mut last = 0;
        for id in ids {
            let (state, idx) = self.replay(&read, &id, None)?;
            last = last.max(idx);
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Arc::new(tokio::sync::Mutex::new(state)));
        }
        if let Some(l) = read.open_table(ORDER)?.last()? {
            last = last.max(l.0.value());
        }
        self.last_index.send_replace(last);
        Ok(())
    }

    /// The state of `id` after every event up to `until` (all of them: `None`), from
    /// its newest usable snapshot and the log after it; the index of the last event.
    fn replay(
        &self,
        read: &redb::ReadTransaction,
        id: &str,
        until: Option<At>,
    ) -> Result<(Option<InstanceState>, u64), StateError> {
        let within = |idx: u64, ts: u64| match until {
            None => true,
            Some(At::Index(i)) => idx <= i,
            Some(At::Time(t)) => ts <= t,
        };
        let snaps = read.open_table(SNAPSHOTS)?;
        let mut base: Option<(u64, InstanceState)> = None;
        for row in snaps.range((id, 0)..=(id, u64::MAX))?.rev() {
            let (k, v) = row?;
            let idx = k.value().1;
            let snap: StoredSnapshot =
                postcard::from_bytes(v.value()).map_err(|e| corrupt(id, idx, e))?;
            if within(idx, snap.ts_us) {
                let state: InstanceState =
                    serde_json::from_str(&snap.state).map_err(|e| corrupt(id, idx, e))?;
                if state.integrity() != snap.integrity {
                    return Err(StateError::Integrity(format!(
                        "snapshot of `{id}` at index {idx} is damaged"
                    )));
                }
                base = Some((idx, state));
                break;
            }
        }
        let log = read.open_table(LOG)?;
        let from = base.as_ref().map_or(0, |b| b.0 + 1);
        let mut last = base.as_ref().map_or(0, |b| b.0);
        let mut state = base.map(|b| b.1);
        let mut first = true;
        for row in log.range((id, from)..=(id, u64::MAX))? {
            let (k, v) = row?;
            let idx = k.value().1;
            let rec: Record = postcard::from_bytes(v.value()).map_err(|e| corrupt(id, idx, e))?;
            if first && from == 0 && !matches!(rec.entry, Entry::Created { .. }) {
                // The log before this record was compacted away and no snapshot reaches
                // back to the target: fine if the instance was created after it.
                let created = read.open_table(CREATED)?.get(id)?.map(|v| v.value());
                let before_creation = match (until, created) {
                    (Some(At::Index(i)), Some((ci, _))) => i < ci,
                    (Some(At::Time(t)), Some((_, ct))) => t < ct,
                    _ => false,
                };
                if before_creation {
                    return Ok((None, 0));
                }
                return Err(StateError::Precondition(format!(
                    "instance `{id}`: the requested point is before the recovery window (the oldest kept snapshot)"
                )));
            }
            first = false;
            if !within(idx, rec.ts_us) {
                break;
            }
            state = self.apply(state, id, &rec.entry)?;
            let actual = state
                .as_ref()
                .map(InstanceState::integrity)
                .unwrap_or_default();
            if actual != rec.integrity {
                return Err(StateError::Integrity(format!(
                    "instance `{id}`: replaying record {idx} gives {actual}, the log says {}; the machine definition or the log changed",
                    rec.integrity
                )));
            }
            last = idx;
        }
        Ok((state, last))
    }

    fn machine_named(&self, name: &str) -> Result<&Arc<Machine>, StateError> {
        self.machines
            .get(name)
            .ok_or_else(|| StateError::UnknownMachine(name.to_string()))
    }

    /// The machine of `version`: the loaded one, or an older definition from the store.
    fn machine_version(&self, version: &str) -> Result<Arc<Machine>, StateError> {
        if let Some(m) = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(version)
        {
            return Ok(m.clone());
        }
        let read = self.store.db().begin_read()?;
        let t = read.open_table(DEFINITIONS)?;
        let json = t
            .get(version)?
            .ok_or_else(|| {
                StateError::Store(format!(
                    "no machine definition of version {version} is stored"
                ))
            })?
            .value()
            .to_string();
        let def = serde_json::from_str(&json).map_err(|e| StateError::Store(e.to_string()))?;
        let m = Arc::new(
            Machine::compile(def)
                .map_err(|e| StateError::Store(format!("stored definition {version}: {e}")))?,
        );
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(version.to_string(), m.clone());
        Ok(m)
    }

    /// The one rule that changes instances, used live and in replay.
    fn apply(
        &self,
        state: Option<InstanceState>,
        id: &str,
        entry: &Entry,
    ) -> Result<Option<InstanceState>, StateError> {
        let parse =
            |s: &str| serde_json::from_str::<Json>(s).map_err(|e| StateError::Store(e.to_string()));
        match entry {
            Entry::Created {
                version, context, ..
            } => {
                let m = self.machine_version(version)?;
                InstanceState::new(&m, id, parse(context)?).map(Some)
            }
            Entry::Fired {
                transition,
                event,
                principal,
            } => {
                let mut s = state.ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
                let m = self.machine_version(&s.version)?;
                s.fire(&m, transition, &parse(event)?, principal.as_deref())?;
                Ok(Some(s))
            }
            Entry::Locked(st) | Entry::Unlocked(st) => {
                let mut s = state.ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
                let m = self.machine_version(&s.version)?;
                s.set_lock(&m, st, matches!(entry, Entry::Locked(_)))?;
                Ok(Some(s))
            }
            Entry::Restored(json) => serde_json::from_str(json)
                .map(Some)
                .map_err(|e| StateError::Store(e.to_string())),
            Entry::Deleted => Ok(None),
        }
    }

    fn slot(&self, id: &str) -> Option<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn slot_or_insert(&self, id: &str) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Logs `entry` (as durably as the machine asks) and only then makes `next` the
    /// instance's state.
    async fn log(
        &self,
        guard: &mut tokio::sync::MutexGuard<'_, Option<InstanceState>>,
        id: &str,
        entry: Entry,
        next: Option<InstanceState>,
    ) -> Result<(Option<InstanceState>, u64), StateError> {
        let machine_name = match (&next, guard.as_ref()) {
            (Some(s), _) | (None, Some(s)) => s.machine.clone(),
            (None, None) => return Err(StateError::UnknownInstance(id.to_string())),
        };
        let machine = self.machine_named(&machine_name).ok().cloned();
        let (durability, every) = machine.as_ref().map_or((Durability::Sync, 0), |m| {
            (m.definition().durability, m.definition().snapshot_every)
        });
        let ts_us = now_us();
        let integrity = next
            .as_ref()
            .map(InstanceState::integrity)
            .unwrap_or_default();
        let created = matches!(entry, Entry::Created { .. });
        let record = Record {
            ts_us,
            entry,
            integrity: integrity.clone(),
        };
        let mut writes = vec![Write::Append {
            instance: id.to_string(),
            created: created.then(|| (machine_name.clone(), ts_us)),
            record: postcard::to_stdvec(&record).map_err(|e| StateError::Store(e.to_string()))?,
        }];
        if let Some(s) = &next
            && every > 0
            && s.events > 0
            && s.events % every == 0
        {
            let snap = StoredSnapshot {
                ts_us,
                state: serde_json::to_string(s).map_err(|e| StateError::Store(e.to_string()))?,
                integrity,
            };
            writes.push(Write::Snapshot {
                instance: id.to_string(),
                snapshot: postcard::to_stdvec(&snap)
                    .map_err(|e| StateError::Store(e.to_string()))?,
            });
        }
        let index = self.store.submit(writes, durability).await?;
        **guard = next.clone();
        self.last_index.send_modify(|l| *l = (*l).max(index));
        Ok((next, index))
    }

    fn view(&self, state: InstanceState, index: u64) -> InstanceView {
        let (current, is_final) = match self.machine_version(&state.version) {
            Ok(m) => (state.current(&m), state.is_final(&m)),
            Err(_) => (Vec::new(), false),
        };
        InstanceView {
            integrity: state.integrity(),
            current,
            is_final,
            index,
            state,
        }
    }

    /// The names of the loaded machines.
    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.values().map(|m| m.as_ref())
    }

    /// A machine by name.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.get(name).map(|m| m.as_ref())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates an instance of `machine` (`id`: given, or generated).
    pub async fn create(
        &self,
        machine: &str,
        id: Option<&str>,
        context: Json,
    ) -> Result<InstanceView, StateError> {
        let m = self.machine_named(machine)?.clone();
        let id = match id {
            Some(id) => {
                check_instance_id(id)?;
                id.to_string()
            }
            None => loop {
                let n = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = format!("{}-{:x}-{n}", m.name(), now_us());
                if self.slot(&id).is_none() {
                    break id;
                }
            },
        };
        let slot = self.slot_or_insert(&id);
        let mut guard = slot.lock().await;
        if guard.is_some() {
            return Err(StateError::InstanceExists(id));
        }
        let entry = Entry::Created {
            machine: m.name().to_string(),
            version: m.version().to_string(),
            context: context.to_string(),
        };
        let next = self.apply(None, &id, &entry)?;
        let (state, index) = self.log(&mut guard, &id, entry, next).await?;
        Ok(self.view(
            state.ok_or_else(|| StateError::Store("created nothing".into()))?,
            index,
        ))
    }

    fn existing(&self, id: &str) -> Result<Slot, StateError> {
        self.slot(id)
            .ok_or_else(|| StateError::UnknownInstance(id.to_string()))
    }

    /// Changes an existing instance under its lock: `change` works on a copy and names
    /// the log entry; the copy becomes the instance once the entry is durable.
    async fn change<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut InstanceState, &Machine) -> Result<(T, Entry), StateError>,
    ) -> Result<(T, InstanceView), StateError> {
        let slot = self.existing(id)?;
        let mut guard = slot.lock().await;
        let mut next = guard
            .clone()
            .ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
        let m = self.machine_version(&next.version)?;
        let (out, entry) = change(&mut next, &m)?;
        let (state, index) = self.log(&mut guard, id, entry, Some(next)).await?;
        let state = state.ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
        Ok((out, self.view(state, index)))
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
            let entry = Entry::Fired {
                transition: transition.to_string(),
                event: event.to_string(),
                principal: principal.map(str::to_string),
            };
            Ok((fired, entry))
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
                let entry = if lock {
                    Entry::Locked(state.to_string())
                } else {
                    Entry::Unlocked(state.to_string())
                };
                Ok(((), entry))
            })
            .await?;
        Ok(view)
    }

    /// The instance now.
    pub async fn get(&self, id: &str) -> Result<InstanceView, StateError> {
        let slot = self.existing(id)?;
        let guard = slot.lock().await;
        let s = guard
            .clone()
            .ok_or_else(|| StateError::UnknownInstance(id.to_string()))?;
        drop(guard);
        let id = id.to_string();
        let index = self
            .read_store(move |store| last_index_in(store, &id))
            .await?;
        Ok(self.view(s, index))
    }

    /// Runs a read of the database on tokio's blocking pool: a redb read may wait on the
    /// disk, and must not on the caller's event loop.
    async fn read_store<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| StateError::Store(format!("a database read failed: {e}")))?
    }

    fn last_index_of(&self, id: &str) -> Result<u64, StateError> {
        last_index_in(&self.store, id)
    }

    /// A self-verifying snapshot of the instance.
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, StateError> {
        let slot = self.existing(id)?;
        let guard = slot.lock().await;
        Ok(guard
            .as_ref()
            .ok_or_else(|| StateError::UnknownInstance(id.to_string()))?
            .snapshot())
    }

    /// Restores the instance from a snapshot (integrity, version and locks checked).
    pub async fn restore(&self, id: &str, snapshot: &Snapshot) -> Result<InstanceView, StateError> {
        let (_, view) = self
            .change(id, |s, m| {
                s.restore(m, snapshot)?;
                let json =
                    serde_json::to_string(s).map_err(|e| StateError::Store(e.to_string()))?;
                Ok(((), Entry::Restored(json)))
            })
            .await?;
        Ok(view)
    }

    /// The instance as it was at `at`, without changing anything (`None`: it did not
    /// exist then).
    pub fn state_at(&self, id: &str, at: At) -> Result<Option<InstanceState>, StateError> {
        let read = self.store.db().begin_read()?;
        Ok(self.replay(&read, id, Some(at))?.0)
    }

    /// Point-in-time recovery: puts instance `id` (or every instance, `None`) back to
    /// its state at `at`. The recovery is itself logged, so it can be undone the same
    /// way. Returns each instance touched and what it became.
    pub async fn restore_to(
        &self,
        id: Option<&str>,
        at: At,
    ) -> Result<Vec<(String, Option<InstanceView>)>, StateError> {
        let ids: Vec<String> = match id {
            Some(id) => {
                self.existing(id)?;
                vec![id.to_string()]
            }
            None => {
                let mut v: Vec<String> = self
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                v.sort();
                v
            }
        };
        // Every past state first: one instance before the recovery window refuses the
        // whole recovery, before anything changed.
        let mut pasts = Vec::with_capacity(ids.len());
        for id in ids {
            let past = self.state_at(&id, at)?;
            pasts.push((id, past));
        }
        let mut out = Vec::new();
        for (id, past) in pasts {
            let slot = self.slot_or_insert(&id);
            let mut guard = slot.lock().await;
            let entry = match (&past, guard.as_ref()) {
                (None, None) => continue,
                (None, Some(_)) => Entry::Deleted,
                (Some(p), Some(now)) if p == now => {
                    out.push((
                        id.clone(),
                        Some(self.view(p.clone(), self.last_index_of(&id)?)),
                    ));
                    continue;
                }
                (Some(p), cur) => {
                    let mut p = p.clone();
                    // Keep the event count increasing, so snapshots stay in order.
                    p.events = cur.map_or(p.events, |c| c.events.max(p.events)) + 1;
                    Entry::Restored(
                        serde_json::to_string(&p).map_err(|e| StateError::Store(e.to_string()))?,
                    )
                }
            };
            let next = self.apply(guard.clone(), &id, &entry)?;
            let (s, index) = self.log(&mut guard, &id, entry, next).await?;
            out.push((id, s.map(|s| self.view(s, index))));
        }
        Ok(out)
    }

    /// The instance's logged events still kept (newest last; at most `limit`, the newest).
    pub fn history(&self, id: &str, limit: usize) -> Result<Vec<Change>, StateError> {
        if self.slot(id).is_none() {
            return Err(StateError::UnknownInstance(id.to_string()));
        }
        let read = self.store.db().begin_read()?;
        let log = read.open_table(LOG)?;
        let mut out = Vec::new();
        for row in log.range((id, 0)..=(id, u64::MAX))?.rev().take(limit) {
            let (k, v) = row?;
            let idx = k.value().1;
            let rec: Record = postcard::from_bytes(v.value()).map_err(|e| corrupt(id, idx, e))?;
            out.push(change(idx, id, rec));
        }
        out.reverse();
        Ok(out)
    }

    /// Events logged after index `after` (all instances, oldest first, at most `limit`),
    /// waiting up to `wait` for the first one: a live stream by long polling.
    pub async fn changes(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StateError> {
        let mut rx = self.last_index.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|&l| l > after)).await;
        self.read_store(move |store| {
            let read = store.db().begin_read()?;
            let order = read.open_table(ORDER)?;
            let log = read.open_table(LOG)?;
            let mut out = Vec::new();
            for row in order.range(after.saturating_add(1)..)?.take(limit) {
                let (k, v) = row?;
                let (idx, id) = (k.value(), v.value().to_string());
                if let Some(rec) = log.get((id.as_str(), idx))? {
                    let rec: Record =
                        postcard::from_bytes(rec.value()).map_err(|e| corrupt(&id, idx, e))?;
                    out.push(change(idx, &id, rec));
                }
            }
            Ok(out)
        })
        .await
    }

    /// The newest log index.
    pub fn last_index(&self) -> u64 {
        *self.last_index.borrow()
    }

    /// Every instance id (deleted ones excluded), sorted.
    pub async fn instances(&self) -> Vec<String> {
        let slots: Vec<(String, Slot)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (id, s) in slots {
            if s.lock().await.is_some() {
                out.push(id);
            }
        }
        out.sort();
        out
    }

    /// An online, consistent backup of the whole store to `dest` (a new file).
    pub async fn backup(&self, dest: &Path) -> Result<BackupInfo, StateError> {
        let store = self.store.clone();
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || store.backup(&dest))
            .await
            .map_err(|e| StateError::Store(e.to_string()))?
    }
}

/// The newest log index of instance `id` (0: none).
fn last_index_in(store: &Store, id: &str) -> Result<u64, StateError> {
    let read = store.db().begin_read()?;
    let log = read.open_table(LOG)?;
    let last = log
        .range((id, 0)..=(id, u64::MAX))?
        .next_back()
        .transpose()?;
    Ok(last.map_or(0, |(k, _)| k.value().1))
}

fn corrupt(id: &str, idx: u64, e: impl std::fmt::Display) -> StateError {
    StateError::Integrity(format!(
        "instance `{id}`: record {idx} cannot be decoded: {e}"
    ))
}

fn change(index: u64, id: &str, rec: Record) -> Change {
    let parse = |s: &str| serde_json::from_str::<Json>(s).unwrap_or(Json::String(s.to_string()));
    let event = match rec.entry {
        Entry::Created {
            machine, context, ..
        } => json!({"kind": "created", "machine": machine, "context": parse(&context)}),
        Entry::Fired {
            transition,
            event,
            principal,
        } => {
            json!({"kind": "fired", "transition": transition, "event": parse(&event), "principal": principal})
        }
        Entry::Locked(s) => json!({"kind": "locked", "state": s}),
        Entry::Unlocked(s) => json!({"kind": "unlocked", "state": s}),
        Entry::Restored(s) => {
            let st = parse(&s);
            json!({"kind": "restored", "active": st["active"], "context": st["context"]})
        }
        Entry::Deleted => json!({"kind": "deleted"}),
    };
    Change {
        index,
        ts_us: rec.ts_us,
        instance: id.to_string(),
        event,
        integrity: rec.integrity,
    }
}
