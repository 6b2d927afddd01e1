//! One member of a cluster: its raft, its replicated map, and the way to the leader.
//!
//! Any node takes writes and reads. A write on a follower is forwarded to the leader
//! (`raft.forward.write`) and acknowledged once the leader has it committed by a
//! majority and applied. A linearizable read asks the leader for its read index
//! (`raft.forward.read_index`: the leader confirms with a quorum that it still leads),
//! waits until this node has applied that far, and reads locally; a stale read reads
//! locally at once and says how far this node has applied. Membership changes and the
//! cluster status go to the leader as well.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use polycall_core::{Call, Code, MethodInfo, Reply, Router, Status, handler_fn};
use polycall_net::{Channel, ChannelConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::network::{self, Networks, Peers, RaftSlot, decode, encode};
use super::{Applied, Batch, Command, NodeId, Proposal, ReplicatedMap, TypeConfig};

/// How a node joins its cluster.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// This node's id (unique in the cluster, not 0).
    pub id: NodeId,
    /// The cluster's voters when it forms: id → the address its polycall server listens
    /// on. A node listed here forms the cluster with the others when its disk is empty;
    /// a node not listed waits until a leader adds it (`add_learner`).
    pub members: BTreeMap<NodeId, String>,
    /// The redb file holding this node's raft log and state.
    pub data_file: PathBuf,
    /// How often the leader heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in `[min, 2·min)` stands for
    /// election.
    pub election_timeout: Duration,
    /// Take a snapshot of the replicated state after this many log entries; the log
    /// before it is then dropped but for the last tenth (at most 1000 entries), and a
    /// follower further behind than that catches up by receiving the snapshot.
    pub snapshot_every: u64,
    /// How this node reaches its peers (transport, TLS, credentials).
    pub channel: ChannelConfig,
}

impl NodeConfig {
    /// A node `id` of a cluster formed by `members`, its data in `data_file`.
    pub fn new(id: NodeId, members: BTreeMap<NodeId, String>, data_file: PathBuf) -> Self {
        Self {
            id,
            members,
            data_file,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            snapshot_every: 5000,
            channel: ChannelConfig::default(),
        }
    }

    /// Sets how many log entries a snapshot is taken after.
    pub fn snapshot_every(mut self, entries: u64) -> Self {
        self.snapshot_every = entries.max(1);
        self
    }

    /// Sets how this node reaches its peers.
    pub fn channel(mut self, channel: ChannelConfig) -> Self {
        self.channel = channel;
        self
    }

    /// Sets the heartbeat interval and the election timeout.
    pub fn timing(mut self, heartbeat: Duration, election_timeout: Duration) -> Self {
        self.heartbeat = heartbeat;
        self.election_timeout = election_timeout;
        self
    }
}

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// No leader is known right now (an election is running, or this side of a
    /// partition has no majority): retry later.
    #[error("no leader is known right now (an election or a partition); retry shortly")]
    NoLeader,
    /// The leader could not be reached or did not answer in time.
    #[error("the leader (node {leader}) cannot be reached: {reason}")]
    LeaderUnreachable {
        /// The leader this node knows of.
        leader: NodeId,
        /// What went wrong.
        reason: String,
    },
    /// The membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// This node's raft has stopped (its storage failed or it is shutting down).
    #[error("this node's raft has stopped: {0}")]
    Stopped(String),
    /// The request was malformed.
    #[error("{0}")]
    InvalidInput(String),
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        let text = e.to_string();
        match e {
            ClusterError::NoLeader | ClusterError::LeaderUnreachable { .. } => {
                Status::unavailable(text)
            }
            ClusterError::Membership(_) => Status::new(Code::FailedPrecondition, text),
            ClusterError::Stopped(_) => Status::internal(text),
            ClusterError::InvalidInput(_) => Status::invalid_input(text),
        }
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (read-index through the
    /// leader).
    #[default]
    Linearizable,
    /// Whatever this node has applied; the answer says how far that is.
    Stale,
}

/// A value read from the replicated map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    /// The value and its version (the log index that wrote it), when the key exists.
    pub value: Option<(u64, Vec<u8>)>,
    /// The last log index applied on the node that answered.
    pub applied_index: u64,
}

/// A write the cluster committed and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The log index of the write.
    pub index: u64,
    /// What applying it did.
    pub applied: Applied,
}

/// One member as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The node's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: String,
    /// Whether it votes (otherwise it is a learner).
    pub voter: bool,
    /// The last log index the leader knows it holds (only known on the leader).
    pub matched: Option<u64>,
    /// How far it is behind the leader's log, in entries (only known on the leader).
    pub lag: Option<u64>,
}

/// A node's view of the cluster (the leader's, when it could be asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    /// Its role: `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its last log index.
    pub last_log_index: u64,
    /// Its last applied index.
    pub applied_index: u64,
    /// The last index its newest snapshot covers (0: none).
    pub snapshot_index: u64,
    /// Whether the membership is a joint configuration (a change is under way).
    pub joint: bool,
    /// The members.
    pub members: Vec<MemberStatus>,
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a non-voting member that receives the log (and a snapshot when far behind);
    /// answers once it has caught up.
    AddLearner {
        /// Its id.
        id: NodeId,
        /// Where it listens.
        addr: String,
    },
    /// Makes a learner a voter (through joint consensus).
    Promote {
        /// Its id.
        id: NodeId,
    },
    /// Removes a member (voter or learner; through joint consensus).
    Remove {
        /// Its id.
        id: NodeId,
    },
}

/// A member of a cluster.
pub struct Node {
    id: NodeId,
    raft: Raft<TypeConfig>,
    map: ReplicatedMap,
    channel: ChannelConfig,
    /// Channels to other nodes, by address, for forwarding.
    peers: tokio::sync::Mutex<HashMap<String, Channel>>,
    /// When this process started the node (microseconds since the epoch), and the requests
    /// proposed since: with the node id, unique request ids across restarts.
    booted: u64,
    requests: std::sync::atomic::AtomicU32,
    /// Proposals on their way into the leader's next log entry (see [`batcher`]).
    batcher: tokio::sync::mpsc::UnboundedSender<Pending>,
}

/// A proposal waiting for its entry, and where its answer goes.
type Pending = (
    Proposal,
    tokio::sync::oneshot::Sender<Result<Written, ClusterError>>,
);

/// Log entries proposed and not yet answered, at most. (Two, so the leader writes the
/// next entry while followers store the previous one, measured no better in
/// `cargo xtask bench cluster`: smaller entries, more fsyncs.)
const IN_FLIGHT: usize = 1;

/// The most proposals one log entry carries.
const MAX_BATCH: usize = 1024;

/// Gathers the proposals that arrive while the previous entry is being committed into
/// the next one (group commit: openraft 0.9 fsyncs each entry it is given before taking
/// the next), in arrival order; a proposal whose key is already in the entry waits for
/// the following one, so each key changes at most once per entry.
async fn batcher(raft: Raft<TypeConfig>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // At most IN_FLIGHT entries between proposal and answer: the leader writes the
        // next entry while followers store the previous one; what arrives meanwhile
        // joins the next entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut keys = std::collections::HashSet::new();
        keys.insert(first.0.command.key().to_string());
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            if keys.insert(next.0.command.key().to_string()) {
                batch.push(next);
            } else {
                carried = Some(next);
                break;
            }
        }
        let (proposals, replies): (Vec<Proposal>, Vec<_>) = batch.into_iter().unzip();
        let answer = match raft.client_write_ff(Batch(proposals)).await {
            Ok(answer) => answer,
            Err(fatal) => {
                let e = stopped(fatal);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let result = match answer.await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(write_error(RaftError::APIError(e))),
                Err(_) => Err(ClusterError::Stopped("raft dropped the write".into())),
            };
            drop(permit);
            match result {
                Ok(r) => {
                    for (reply, applied) in replies.into_iter().zip(r.data) {
                        let _ = reply.send(Ok(Written {
                            index: r.log_id.index,
                            applied,
                        }));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

fn stopped(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Stopped(e.to_string())
}

impl Node {
    /// Opens this node's data and starts its raft. When the data is empty and this node
    /// is one of `members`, it forms the cluster with them (every listed node may do so:
    /// they all propose the same first membership).
    pub async fn start(config: NodeConfig, slot: RaftSlot) -> Result<Arc<Node>, ClusterError> {
        if config.id == 0 {
            return Err(ClusterError::InvalidInput(
                "node ids start at 1 (0 is reserved)".into(),
            ));
        }
        let election = config.election_timeout.as_millis().max(2) as u64;
        let raft_config = openraft::Config {
            cluster_name: "polycall".into(),
            heartbeat_interval: config.heartbeat.as_millis().max(1) as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: (config.snapshot_every / 10).min(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::InvalidInput(e.to_string()))?;
        let (log, map) = super::open(&config.data_file).await.map_err(stopped)?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            Networks::new(config.channel.clone()),
            log,
            map.clone(),
        )
        .await
        .map_err(stopped)?;
        let _ = slot.set(raft.clone());
        let node = Arc::new(Node {
            id: config.id,
            raft: raft.clone(),
            map,
            channel: config.channel.clone(),
            peers: tokio::sync::Mutex::new(HashMap::new()),
            booted: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            requests: std::sync::atomic::AtomicU32::new(0),
            batcher: {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(batcher(raft.clone(), rx));
                tx
            },
        });
        if config.members.contains_key(&config.id)
            && !raft.is_initialized().await.map_err(stopped)?
            && !node.cluster_exists(&config.members).await
        {
            let members: BTreeMap<NodeId, BasicNode> = config
                .members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                // Another member's first membership reached this node first: fine.
                tracing::debug!(error = %e, "cluster already formed");
            }
        }
        Ok(node)
    }

    /// Whether a reachable peer has seen an election (term above 0): then the cluster
    /// exists and this empty node (new, or its disk wiped) must not propose a first
    /// membership of its own; the leader brings it up to date (by snapshot when the log
    /// it needs is gone).
    async fn cluster_exists(&self, members: &BTreeMap<NodeId, String>) -> bool {
        for (_, addr) in members.iter().filter(|(id, _)| **id != self.id) {
            if let Some(status) = self.hello(addr).await
                && status.term > 0
            {
                return true;
            }
        }
        false
    }

    /// Asks the node at `addr` for its own view (`None`: no answer within half a second).
    async fn hello(&self, addr: &str) -> Option<ClusterStatus> {
        let endpoint = addr.parse().ok()?;
        let limit = Duration::from_millis(500);
        let channel =
            tokio::time::timeout(limit, Channel::with_config(endpoint, self.channel.clone()))
                .await
                .ok()?
                .ok()?;
        let call = Call::new("raft.hello", encode(&()).ok()?).ok()?;
        let reply = tokio::time::timeout(limit, channel.call(call))
            .await
            .ok()?
            .ok()?;
        decode::<ClusterStatus>(&reply.payload, "raft.hello").ok()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's raft.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// This node's replicated map, as applied here.
    pub fn map(&self) -> &ReplicatedMap {
        &self.map
    }

    /// Stops this node's raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// The leader this node knows of, with its address.
    fn leader(&self) -> Result<(NodeId, String), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader.ok_or(ClusterError::NoLeader)?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .ok_or(ClusterError::NoLeader)?;
        Ok((id, addr))
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Calls `method` on the leader with `req`.
    async fn forward<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, ClusterError> {
        let (leader, addr) = self.leader()?;
        if leader == self.id {
            // Leader a moment ago, not any more: the caller retries.
            return Err(ClusterError::NoLeader);
        }
        let unreachable = |e: &dyn std::fmt::Display| ClusterError::LeaderUnreachable {
            leader,
            reason: e.to_string(),
        };
        let channel = {
            let mut peers = self.peers.lock().await;
            match peers.get(&addr) {
                Some(c) => c.clone(),
                None => {
                    let endpoint = addr.parse().map_err(|e| unreachable(&e))?;
                    let c = tokio::time::timeout(
                        Duration::from_secs(5),
                        Channel::with_config(endpoint, self.channel.clone()),
                    )
                    .await
                    .map_err(|e| unreachable(&e))?
                    .map_err(|e| unreachable(&e))?;
                    peers.insert(addr.clone(), c.clone());
                    c
                }
            }
        };
        let payload = encode(req).map_err(|e| ClusterError::InvalidInput(e.to_string()))?;
        let call = Call::new(method, payload)
            .map_err(|e| ClusterError::InvalidInput(e.to_string()))?
            .with_metadata(
                polycall_core::Metadata::default()
                    .with_timeout(std::time::Instant::now(), Duration::from_secs(10)),
            );
        match channel.call(call).await {
            Ok(reply) => decode::<Result<Resp, ClusterError>>(&reply.payload, method)
                .map_err(|e| unreachable(&e))?,
            Err(status) => {
                if matches!(status.code, Code::Unavailable | Code::DeadlineExceeded) {
                    self.peers.lock().await.remove(&addr);
                }
                Err(unreachable(&status))
            }
        }
    }

    /// Runs `here` when this node leads, or forwards to the leader; a leadership change
    /// under way is waited out (a few tries over about two election timeouts).
    async fn on_leader<T, F, Fut>(
        &self,
        method: &str,
        req: &(impl Serialize + Sync),
        here: F,
    ) -> Result<T, ClusterError>
    where
        T: DeserializeOwned,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let mut last = ClusterError::NoLeader;
        for attempt in 0..20u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(4)))).await;
            }
            let result = if self.is_leader() {
                here().await
            } else {
                self.forward(method, req).await
            };
            match result {
                Err(e @ (ClusterError::NoLeader | ClusterError::LeaderUnreachable { .. })) => {
                    last = e
                }
                other => return other,
            }
        }
        Err(last)
    }

    /// Proposes `command`; answers once a majority has it and it is applied. Retried
    /// through a leadership change under one request id: it takes effect at most once.
    pub async fn write(&self, command: Command) -> Result<Written, ClusterError> {
        let n = self
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let proposal = Proposal {
            request: (u128::from(self.id) << 96) | (u128::from(self.booted) << 32) | u128::from(n),
            command,
        };
        self.on_leader("raft.forward.write", &proposal, || {
            self.write_here(proposal.clone())
        })
        .await
    }

    /// On the leader: hands `proposal` to the batcher and waits for its entry.
    async fn write_here(&self, proposal: Proposal) -> Result<Written, ClusterError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.batcher
            .send((proposal, tx))
            .map_err(|_| ClusterError::Stopped("the write batcher has stopped".into()))?;
        rx.await
            .map_err(|_| ClusterError::Stopped("the write batcher has stopped".into()))?
    }

    /// Reads `key` as `consistency` asks.
    pub async fn read(&self, key: &str, consistency: Consistency) -> Result<Read, ClusterError> {
        if consistency == Consistency::Linearizable {
            let index: u64 = self
                .on_leader("raft.forward.read_index", &(), || self.read_index_here())
                .await?;
            self.raft
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(stopped)?;
        }
        Ok(Read {
            value: self.map.get(key),
            applied_index: self.map.applied_index().unwrap_or(0),
        })
    }

    /// On the leader: confirms leadership with a quorum and answers the index a read
    /// must see applied.
    async fn read_index_here(&self) -> Result<u64, ClusterError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(_)) => Err(ClusterError::NoLeader),
            Err(RaftError::Fatal(f)) => Err(stopped(f)),
        }
    }

    /// Waits until this node has applied at least `index` (at most `timeout`).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(stopped)
    }

    /// Changes the membership (on the leader).
    pub async fn change(&self, change: MembershipChange) -> Result<ClusterStatus, ClusterError> {
        self.on_leader("raft.forward.membership", &change, || {
            self.change_here(change.clone())
        })
        .await
    }

    async fn change_here(&self, change: MembershipChange) -> Result<ClusterStatus, ClusterError> {
        let result = match change {
            MembershipChange::AddLearner { id, addr } => {
                if id == 0 {
                    return Err(ClusterError::InvalidInput("node ids start at 1".into()));
                }
                self.raft.add_learner(id, BasicNode { addr }, true).await
            }
            MembershipChange::Promote { id } => {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
            }
            MembershipChange::Remove { id } => {
                let m = self.raft.metrics().borrow().clone();
                let voter = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id);
                let change = if voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft.change_membership(change, false).await
            }
        };
        result.map_err(|e| match write_error(e) {
            ClusterError::Stopped(s) => ClusterError::Stopped(s),
            ClusterError::NoLeader => ClusterError::NoLeader,
            other => ClusterError::Membership(other.to_string()),
        })?;
        Ok(self.local_status())
    }

    /// The cluster as the leader sees it (each member's matched index and lag); this
    /// node's own view when no leader answers.
    pub async fn status(&self) -> ClusterStatus {
        if self.is_leader() {
            return self.local_status();
        }
        match self.forward("raft.forward.status", &()).await {
            Ok(s) => s,
            Err(_) => self.local_status(),
        }
    }

    /// This node's own view of the cluster.
    pub fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map(|l| l.index).unwrap_or(0))
                    .or((*id == m.id).then_some(last));
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag: matched.map(|i| last.saturating_sub(i)),
                }
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Follower if !voters.contains(&m.id) => "learner",
            ServerState::Follower => "follower",
            ServerState::Shutdown => "stopped",
        };
        ClusterStatus {
            node: m.id,
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: last,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            joint: membership.get_joint_config().len() > 1,
            members,
        }
    }

    /// The methods a node serves to its peers: raft's own (`raft.append`, `raft.vote`,
    /// `raft.snapshot`) and the forwarded operations (`raft.forward.*`).
    pub fn router(node: &Arc<Node>, slot: RaftSlot, peers: Peers) -> Router {
        let mut r = network::router(slot, peers.clone());
        let weak = Arc::downgrade(node);
        let add = |r: Router, name: &str, summary: &str, h| {
            r.route(name, MethodInfo::new(summary), h)
                .unwrap_or_else(|e| panic!("cluster method names are valid: {e}"))
        };
        macro_rules! forwarded {
            ($name:literal, $summary:literal, |$node:ident, $req:ident: $ty:ty| $body:expr) => {{
                let weak = weak.clone();
                let peers = peers.clone();
                r = add(
                    r,
                    $name,
                    $summary,
                    polycall_core::BoxHandler::new(handler_fn(move |c: Call| {
                        let weak = weak.clone();
                        let admitted = peers.admit(&c);
                        async move {
                            admitted?;
                            let $req: $ty = decode(&c.payload, $name)?;
                            let $node = weak
                                .upgrade()
                                .ok_or_else(|| Status::unavailable("cluster node stopped"))?;
                            // Only the leader answers forwarded requests: a follower
                            // that received one sends the caller back to look again.
                            let answer = if $node.is_leader() {
                                $body
                            } else {
                                Err(ClusterError::NoLeader)
                            };
                            encode(&answer).map(Reply::new)
                        }
                    })),
                );
            }};
        }
        let hello = weak.clone();
        let hello_peers = peers.clone();
        r = add(
            r,
            "raft.hello",
            "this node's own view of the cluster (peers only)",
            polycall_core::BoxHandler::new(handler_fn(move |c: Call| {
                let weak = hello.clone();
                let admitted = hello_peers.admit(&c);
                async move {
                    admitted?;
                    let node = weak
                        .upgrade()
                        .ok_or_else(|| Status::unavailable("cluster node stopped"))?;
                    encode(&node.local_status()).map(Reply::new)
                }
            })),
        );
        forwarded!(
            "raft.forward.write",
            "a write forwarded to the leader (peers only)",
            |node, proposal: Proposal| node.write_here(proposal).await
        );
        forwarded!(
            "raft.forward.read_index",
            "a read index asked of the leader (peers only)",
            |node, _unit: ()| node.read_index_here().await
        );
        forwarded!(
            "raft.forward.membership",
            "a membership change forwarded to the leader (peers only)",
            |node, change: MembershipChange| node.change_here(change).await
        );
        forwarded!(
            "raft.forward.status",
            "the leader's view of the cluster (peers only)",
            |node, _unit: ()| Ok::<_, ClusterError>(node.local_status())
        );
        r
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ClusterError::Membership(c.to_string())
        }
        RaftError::Fatal(f) => stopped(f),
    }
}
