//! Raft traffic over polycall: each node serves `raft.append`, `raft.vote` and
//! `raft.snapshot` ([`router`]), and reaches its peers through polycall channels
//! ([`Network`]). Requests and answers are postcard bytes; a peer that cannot be reached
//! is `Unreachable` to openraft (which backs off), an error the peer's raft returned is
//! its `RemoteError`.

use std::sync::{Arc, OnceLock};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use polycall_core::{Call, Code, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use polycall_net::{Channel, ChannelConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeId, TypeConfig};

/// A node's raft, set once it is built (its router is served before: peers' addresses
/// are known only once every node listens).
pub type RaftSlot = Arc<OnceLock<Raft<TypeConfig>>>;

pub(super) fn encode<T: Serialize>(v: &T) -> Result<Payload, Status> {
    postcard::to_allocvec(v)
        .map(Payload::raw)
        .map_err(|e| Status::internal(format!("raft: cannot encode: {e}")))
}

pub(super) fn decode<T: DeserializeOwned>(p: &Payload, what: &str) -> Result<T, Status> {
    postcard::from_bytes(&p.bytes)
        .map_err(|e| Status::invalid_input(format!("raft: malformed {what}: {e}")))
}

fn raft_of(slot: &RaftSlot) -> Result<Raft<TypeConfig>, Status> {
    slot.get()
        .cloned()
        .ok_or_else(|| Status::unavailable("raft: this node is still starting"))
}

/// Who may call a node's raft methods: every raft handler asks it first.
#[derive(Clone)]
pub struct Peers(Arc<Admit>);

/// Decides whether a call to a raft method may go on.
type Admit = dyn Fn(&Call) -> Result<(), Status> + Send + Sync;

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peers")
    }
}

impl Peers {
    /// Any caller the server let in (a cluster on loopback, or behind the server's own
    /// authentication and authorization).
    pub fn any() -> Self {
        Peers(Arc::new(|_| Ok(())))
    }

    /// Callers `admit` accepts (say, principals of the nodes' certificates).
    pub fn checked(admit: impl Fn(&Call) -> Result<(), Status> + Send + Sync + 'static) -> Self {
        Peers(Arc::new(admit))
    }

    /// Whether `call` may go on.
    pub fn admit(&self, call: &Call) -> Result<(), Status> {
        (self.0)(call)
    }
}

/// The methods a node serves to its peers, each admitting only `peers`.
pub fn router(slot: RaftSlot, peers: Peers) -> Router {
    let (s1, s2, s3) = (slot.clone(), slot.clone(), slot);
    let (p1, p2, p3) = (peers.clone(), peers.clone(), peers);
    let route =
        |r: Router, name: &str, summary: &str, h| r.route(name, MethodInfo::new(summary), h);
    let r = route(
        Router::new(),
        "raft.append",
        "raft AppendEntries (peers only)",
        polycall_core::BoxHandler::new(handler_fn(move |c: Call| {
            let slot = s1.clone();
            let admitted = p1.admit(&c);
            async move {
                admitted?;
                let req: AppendEntriesRequest<TypeConfig> = decode(&c.payload, "AppendEntries")?;
                let answer = raft_of(&slot)?.append_entries(req).await;
                encode(&answer).map(Reply::new)
            }
        })),
    )
    .and_then(|r| {
        route(
            r,
            "raft.vote",
            "raft RequestVote (peers only)",
            polycall_core::BoxHandler::new(handler_fn(move |c: Call| {
                let slot = s2.clone();
                let admitted = p2.admit(&c);
                async move {
                    admitted?;
                    let req: VoteRequest<NodeId> = decode(&c.payload, "RequestVote")?;
                    let answer = raft_of(&slot)?.vote(req).await;
                    encode(&answer).map(Reply::new)
                }
            })),
        )
    })
    .and_then(|r| {
        route(
            r,
            "raft.snapshot",
            "raft InstallSnapshot (peers only)",
            polycall_core::BoxHandler::new(handler_fn(move |c: Call| {
                let slot = s3.clone();
                let admitted = p3.admit(&c);
                async move {
                    admitted?;
                    let req: InstallSnapshotRequest<TypeConfig> =
                        decode(&c.payload, "InstallSnapshot")?;
                    let answer = raft_of(&slot)?.install_snapshot(req).await;
                    encode(&answer).map(Reply::new)
                }
            })),
        )
    });
    r.unwrap_or_else(|e| panic!("raft method names are valid: {e}"))
}

/// Makes a [`Network`] per peer, each reaching it with the same channel settings
/// (transport, TLS, credentials).
#[derive(Debug, Clone, Default)]
pub struct Networks {
    config: ChannelConfig,
}

impl Networks {
    /// Peers are reached with `config`.
    pub fn new(config: ChannelConfig) -> Self {
        Self { config }
    }
}

impl RaftNetworkFactory<TypeConfig> for Networks {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            target,
            addr: node.addr.clone(),
            config: self.config.clone(),
            channel: None,
            connecting: None,
        }
    }
}

/// The way to one peer: a polycall channel, connected at first use and again after a
/// failure.
#[derive(Debug)]
pub struct Network {
    target: NodeId,
    addr: String,
    config: ChannelConfig,
    channel: Option<Channel>,
    /// A connection being made (see [`Network::call`]).
    connecting: Option<tokio::task::JoinHandle<Result<Channel, Status>>>,
}

/// The longest a connection to a peer may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Network {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &mut self,
        method: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Result<Resp, E>, RPCError<NodeId, BasicNode, E>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: &dyn std::fmt::Display| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())))
        };
        if self.channel.is_none() {
            // Connecting may take longer than one RPC may (a handshake is a few round
            // trips; openraft gives an append one heartbeat): it runs as a task of its
            // own, which outlives an RPC that gave up waiting, and the next RPC takes
            // the connection it made.
            let connecting = self.connecting.get_or_insert_with(|| {
                let (addr, config) = (self.addr.clone(), self.config.clone());
                tokio::spawn(async move {
                    let endpoint = addr
                        .parse()
                        .map_err(|e| Status::invalid_input(format!("peer address {addr}: {e}")))?;
                    tokio::time::timeout(CONNECT_TIMEOUT, Channel::with_config(endpoint, config))
                        .await
                        .map_err(|_| {
                            Status::unavailable(format!("connecting to {addr} timed out"))
                        })?
                })
            });
            let connected = connecting.await;
            self.connecting = None;
            let channel = connected
                .map_err(|e| unreachable(&e))?
                .map_err(|e| unreachable(&e))?;
            self.channel = Some(channel);
        }
        let channel = self.channel.as_ref().expect("connected above");
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let call = Call::new(method, payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .with_metadata(
                polycall_core::Metadata::default()
                    .with_timeout(std::time::Instant::now(), option.hard_ttl()),
            );
        match channel.call(call).await {
            Ok(reply) => decode::<Result<Resp, E>>(&reply.payload, method)
                .map_err(|e| RPCError::Network(NetworkError::new(&e))),
            Err(status) => {
                if matches!(status.code, Code::Unavailable | Code::DeadlineExceeded) {
                    self.channel = None; // reconnect next time
                }
                Err(unreachable(&status))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let target = self.target;
        self.call("raft.append", &rpc, &option)
            .await?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let target = self.target;
        self.call("raft.snapshot", &rpc, &option)
            .await?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let target = self.target;
        self.call("raft.vote", &rpc, &option)
            .await?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }
}
