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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::{Applied, ClusterError, Command, Consistency, Node};
use crate::error::StateError;
use crate::host::InstanceView;
use crate::instance::{Fired, InstanceState};
use crate::machine::Machine;
use crate::store::now_us;

const PREFIX: &str = "instance/";

/// How often a change is run again after losing a race to another node.
const MAX_RACES: usize = 16;

/// An instance as the replicated map holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    state: InstanceState,
    /// The event that produced this state (`{"kind": "created" | "fired" | …}`).
    last: Json,
}

/// Hosts machines over a cluster [`Node`]: the replicated counterpart of
/// [`StateHost`](crate::StateHost), with `create`, `fire`, `lock`/`unlock` and `get`.
pub struct ReplicatedHost {
    machines: HashMap<String, Arc<Machine>>,
    versions: HashMap<String, Arc<Machine>>,
    node: Arc<Node>,
    /// One change at a time per instance on this node (races between nodes are settled
    /// by compare-and-set).
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ReplicatedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedHost")
            .field("machines", &self.machines.keys().collect::<Vec<_>>())
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
        let mut by_name = HashMap::new();
        let mut versions = HashMap::new();
        for m in machines {
            let m = Arc::new(m);
            versions.insert(m.version().to_string(), m.clone());
            if by_name.insert(m.name().to_string(), m.clone()).is_some() {
                return Err(StateError::InvalidInput(format!(
                    "machine `{}` is given twice",
                    m.name()
                )));
            }
        }
        Ok(Self {
            machines: by_name,
            versions,
            node,
            locks: std::sync::Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The cluster node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The loaded machines.
    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.values().map(|m| m.as_ref())
    }

    /// A machine by name.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.get(name).map(|m| m.as_ref())
    }

    fn machine_version(&self, version: &str) -> Result<&Arc<Machine>, StateError> {
        self.versions.get(version).ok_or_else(|| {
            StateError::Store(format!(
                "machine version {version} is not loaded on node {}: every node of a cluster \
                 must load the same machine definitions",
                self.node.id()
            ))
        })
    }

    fn view(&self, state: InstanceState, index: u64) -> InstanceView {
        let (current, is_final) = match self.machine_version(&state.version) {
            Ok(m) => (state.current(m), state.is_final(m)),
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
        let m = self
            .machines
            .get(machine)
            .ok_or_else(|| StateError::UnknownMachine(machine.to_string()))?
            .clone();
        let id = match id {
            Some(id) => {
                crate::host::check_instance_id(id)?;
                id.to_string()
            }
            None => {
                let n = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{}-{:x}-{}-{n}", m.name(), now_us(), self.node.id())
            }
        };
        let state = InstanceState::new(&m, &id, context.clone())?;
        let stored = Stored {
            state,
            last: json!({"kind": "created", "context": context}),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| StateError::Store(e.to_string()))?;
        let written = self
            .node
            .write(Command::Put {
                key: key(&id),
                value,
                expect: Some(0),
            })
            .await
            .map_err(cluster)?;
        match written.applied {
            Applied::Done { version } => Ok(self.view(stored.state, version)),
            Applied::Conflict { .. } => Err(StateError::InstanceExists(id)),
        }
    }

    /// Changes instance `id`: `change` runs on the state as this node has applied it,
    /// and again on the fresh state when another node changed it first.
    async fn change<T>(
        &self,
        id: &str,
        change: impl Fn(&mut InstanceState, &Machine) -> Result<(T, Json), StateError>,
    ) -> Result<(T, InstanceView), StateError> {
        let lock = self.lock_of(id);
        let _serial = lock.lock().await;
        for _ in 0..MAX_RACES {
            let Some((version, bytes)) = self.node.map().get(&key(id)) else {
                return Err(StateError::UnknownInstance(id.to_string()));
            };
            let Stored { mut state, .. } = Self::decode(id, &bytes)?;
            let m = self.machine_version(&state.version)?.clone();
            let (out, last) = change(&mut state, &m)?;
            let stored = Stored { state, last };
            let value =
                serde_json::to_vec(&stored).map_err(|e| StateError::Store(e.to_string()))?;
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
                    return Ok((out, self.view(stored.state, version)));
                }
                Applied::Conflict { current } => {
                    if current == 0 {
                        return Err(StateError::UnknownInstance(id.to_string()));
                    }
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
        let Some((version, bytes)) = read.value else {
            return Err(StateError::UnknownInstance(id.to_string()));
        };
        let stored = Self::decode(id, &bytes)?;
        Ok((self.view(stored.state, version), read.applied_index))
    }

    /// The instances this node has applied, in id order.
    pub fn instances(&self) -> Vec<String> {
        self.node
            .map()
            .keys(PREFIX)
            .into_iter()
            .map(|(k, _)| k[PREFIX.len()..].to_string())
            .collect()
    }
}
