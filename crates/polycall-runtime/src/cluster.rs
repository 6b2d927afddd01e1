//! A runtime as a member of a cluster: its raft node on the call port, the cluster's
//! own methods, and state machines whose instances live in the replicated map.
//!
//! - `raft.*`: raft between nodes and what followers forward to the leader (postcard;
//!   peers only: with `peer_identities`, callers whose principal — the SPIFFE ID or DNS
//!   name of their certificate — matches none get `permission_denied`; the runtime's
//!   authorization policy applies to them too, like to every method). Nodes dial each
//!   other with the runtime's own TLS settings: its certificate as their client
//!   certificate, its CA bundle to verify the peer;
//! - `sys.cluster.status`: leader, term, members, each member's log index and lag;
//! - `sys.cluster.digest`: this node's applied index and state hash (convergence checks);
//! - `sys.cluster.add_learner`, `sys.cluster.promote`, `sys.cluster.remove`: membership
//!   changes through joint consensus (they need the runtime token, like `sys.shutdown`);
//! - per machine, `state.<machine>.create|fire|get|lock|unlock|graph` over the
//!   replicated map, and `state.machines`. `get` is linearizable unless the input says
//!   `"consistency": "stale"`; every answer carries the answering node's
//!   `applied_index`. History, snapshots, point-in-time recovery, watching and backups
//!   of a replicated instance answer `unsupported` for now.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How a runtime joins a cluster (`polycall run --node-id N --cluster …`, `[cluster]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterSettings {
    /// This runtime's node id (1 or more, unique in the cluster).
    pub node_id: u64,
    /// The voters the cluster forms with: node id → the call endpoint it listens on
    /// (`HOST:PORT`), this node included. A node not listed joins when a member adds it
    /// (`polycall cluster add-learner`).
    pub members: BTreeMap<u64, String>,
    /// The raft log and replicated state (default: `<state dir>/cluster.redb`).
    pub data_file: Option<PathBuf>,
    /// How often the leader heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for `[t, 2t)` stands for election.
    pub election_timeout: Duration,
    /// Snapshot the replicated state after this many log entries (a node far behind
    /// catches up from the snapshot).
    pub snapshot_every: u64,
    /// Who may call the raft methods: principal patterns of the nodes (e.g.
    /// `spiffe://example.org/polycall/node/*`, the SPIFFE IDs of their certificates).
    /// Empty: any caller the listener lets in — allowed only on loopback (or with
    /// `insecure_remote`).
    pub peer_identities: Vec<String>,
}

impl ClusterSettings {
    /// Node `node_id` of a cluster formed by `members`.
    pub fn new(node_id: u64, members: BTreeMap<u64, String>) -> Self {
        Self {
            node_id,
            members,
            data_file: None,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            snapshot_every: 5000,
            peer_identities: Vec::new(),
        }
    }

    /// Sets who may call the raft methods (principal patterns of the nodes).
    pub fn peer_identities(
        mut self,
        patterns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.peer_identities = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the file of the raft log and the replicated state.
    pub fn data_file(mut self, data_file: impl Into<PathBuf>) -> Self {
        self.data_file = Some(data_file.into());
        self
    }

    /// Sets the heartbeat interval and the election timeout.
    pub fn timing(mut self, heartbeat: Duration, election_timeout: Duration) -> Self {
        self.heartbeat = heartbeat;
        self.election_timeout = election_timeout;
        self
    }

    /// Parses `1=HOST:PORT,2=HOST:PORT,…` (ids from 1, each once).
    pub fn parse_members(
        text: &str,
    ) -> Result<BTreeMap<u64, String>, polycall_config::MembersError> {
        polycall_config::cluster_members(text)
    }
}

#[cfg(feature = "cluster")]
pub(crate) use running::{Cluster, router, start};

#[cfg(feature = "cluster")]
mod running {
    use std::sync::{Arc, Weak};

    use polycall_core::{Call, MethodInfo, Router, Status};
    use polycall_net::ChannelConfig;
    use polycall_security::authz::{Policy, PolicyConfig, RuleConfig};
    use polycall_security::{ClientAuth, ClientTls};
    use polycall_state::graph;
    use polycall_state::raft::network::{Peers, RaftSlot};
    use polycall_state::raft::{Consistency, MembershipChange, Node, NodeConfig, ReplicatedHost};
    use serde_json::{Value as Json, json};

    use crate::state_service::{add, check_token, field, json_reply, write_methods};
    use crate::{RuntimeConfig, RuntimeError, State};

    /// The cluster side of a runtime.
    pub(crate) struct Cluster {
        pub(crate) node: Arc<Node>,
        slot: RaftSlot,
        pub(crate) host: Option<Arc<ReplicatedHost>>,
        peers: Peers,
    }

    /// Opens the node's data and starts its raft (peers are reached once the runtime
    /// listens; until then they see this node as unreachable and retry).
    pub(crate) async fn start(
        config: &RuntimeConfig,
        settings: &super::ClusterSettings,
        machines: Vec<polycall_state::Machine>,
    ) -> Result<Cluster, RuntimeError> {
        let data_file = settings
            .data_file
            .clone()
            .unwrap_or_else(|| config.state_dir.join("cluster.redb"));
        if let Some(dir) = data_file.parent() {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::StateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        let slot = RaftSlot::default();
        let peers = peers(config, settings)?;
        let node_config = NodeConfig::new(settings.node_id, settings.members.clone(), data_file)
            .timing(settings.heartbeat, settings.election_timeout)
            .snapshot_every(settings.snapshot_every)
            .channel(peer_channel(config)?);
        let node = Node::start(node_config, slot.clone())
            .await
            .map_err(|e| RuntimeError::State(format!("cluster node: {e}")))?;
        let host = if machines.is_empty() {
            None
        } else {
            Some(Arc::new(
                ReplicatedHost::new(machines, node.clone())
                    .map_err(|e| RuntimeError::State(e.to_string()))?,
            ))
        };
        tracing::info!(
            node = settings.node_id,
            members = ?settings.members,
            "cluster node started"
        );
        Ok(Cluster {
            node,
            slot,
            host,
            peers,
        })
    }

    /// Who may call the raft methods (see [`ClusterSettings::peer_identities`]).
    fn peers(
        config: &RuntimeConfig,
        settings: &super::ClusterSettings,
    ) -> Result<Peers, RuntimeError> {
        if settings.peer_identities.is_empty() {
            if !config.endpoint.is_loopback() && !config.insecure_remote {
                return Err(RuntimeError::State(
                    "a cluster node reachable from the network needs cluster.peer_identities \
                     (the principals of the nodes' certificates, e.g. spiffe://example.org/polycall/node/*) \
                     and TLS with client certificates"
                        .into(),
                ));
            }
            return Ok(Peers::any());
        }
        let policy = Policy::new(
            &PolicyConfig::default().rules([RuleConfig::new("raft*")
                .method("*")
                .allow(settings.peer_identities.clone())]),
        )
        .map_err(|e| RuntimeError::State(format!("cluster.peer_identities: {e}")))?;
        Ok(Peers::checked(move |c| {
            policy
                .check(
                    c.metadata.principal.as_ref(),
                    c.service.as_str(),
                    c.method.as_str(),
                )
                .map_err(|d| {
                    Status::permission_denied(format!(
                        "{}: only cluster nodes may call {} (cluster.peer_identities)",
                        d.who,
                        c.full_name()
                    ))
                })
        }))
    }

    /// How this node dials its peers: with the runtime's TLS settings when it serves
    /// TLS (its certificate as the client certificate, its CA bundle for the peers').
    fn peer_channel(config: &RuntimeConfig) -> Result<ChannelConfig, RuntimeError> {
        let mut channel = ChannelConfig::default();
        let Some(tls) = &config.tls else {
            return Ok(channel);
        };
        let Some(ca) = &tls.ca else {
            return Err(RuntimeError::State(
                "a cluster node serving TLS needs tls.ca_file: the CA its peers' certificates chain to"
                    .into(),
            ));
        };
        let mut client = ClientTls::default().ca(ca.clone());
        client.cert_chain = tls.cert_chain.clone();
        client.key = tls.key.clone();
        client.hsm_key = tls.hsm_key.clone();
        client.crls = tls.crls.clone();
        client.allow_unknown_revocation = tls.allow_unknown_revocation;
        let built = client
            .build()
            .map_err(|e| RuntimeError::State(format!("the TLS settings to reach peers: {e}")))?;
        channel.transport = Arc::new(polycall_net::tls::Tls::client(built));
        if tls.client_auth != ClientAuth::Off {
            channel.connection.credentials = Some(polycall_net::auth::Credentials::Certificate);
        }
        Ok(channel)
    }

    /// Reads a membership change from a call's input, given the node id.
    type MakeChange = fn(u64, &Json) -> Result<MembershipChange, Status>;

    fn node_id(v: &Json, call: &Call) -> Result<u64, Status> {
        v["id"].as_u64().filter(|id| *id > 0).ok_or_else(|| {
            Status::invalid_input(format!(
                "{} expects {{\"id\": <node id, 1 or more>, …}}",
                call.full_name()
            ))
        })
    }

    /// The raft methods, `sys.cluster.*` and the replicated state methods.
    pub(crate) fn router(cluster: &Cluster, runtime: Weak<State>) -> Router {
        let mut r = Node::router(&cluster.node, cluster.slot.clone(), cluster.peers.clone());
        let node = &cluster.node;
        r = add(
            r,
            "sys.cluster.status",
            MethodInfo::new("leader, term, members and each member's log index and lag")
                .idempotent(true),
            node,
            |n, _c, _v| Box::pin(async move { json_reply(n.status().await) }),
        );
        r = add(
            r,
            "sys.cluster.digest",
            MethodInfo::new(
                "this node's applied index and the BLAKE3 hash of its replicated state (equal on nodes that applied the same log)",
            )
            .idempotent(true),
            node,
            |n, _c, _v| {
                Box::pin(async move {
                    let map = n.map().clone();
                    // Hashing every value is CPU work: off the connection's task.
                    let (applied, hash) = tokio::task::spawn_blocking(move || map.digest())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                    json_reply(json!({
                        "node": n.id(),
                        "applied_index": applied,
                        "state_hash": hash,
                        "snapshot_index": n.local_status().snapshot_index,
                    }))
                })
            },
        );
        let changes: [(&str, &str, MakeChange); 3] = [
            (
                "add_learner",
                "adds a learner (answers once it caught up)",
                |id, v| {
                    let addr = v["addr"].as_str().ok_or_else(|| {
                        Status::invalid_input(
                            "add_learner expects {\"id\", \"addr\": \"HOST:PORT\"}",
                        )
                    })?;
                    Ok(MembershipChange::AddLearner {
                        id,
                        addr: addr.to_string(),
                    })
                },
            ),
            (
                "promote",
                "makes a learner a voter (joint consensus)",
                |id, _| Ok(MembershipChange::Promote { id }),
            ),
            ("remove", "removes a member (joint consensus)", |id, _| {
                Ok(MembershipChange::Remove { id })
            }),
        ];
        for (method, summary, make) in changes {
            let rt = runtime.clone();
            r = add(
                r,
                &format!("sys.cluster.{method}"),
                MethodInfo::new(summary).input(r#"{"id": u64, "addr"?: string, "token": string}"#),
                node,
                move |n, c, v| {
                    let rt = rt.clone();
                    Box::pin(async move {
                        check_token(&rt, &v)?;
                        let change = make(node_id(&v, &c)?, &v)?;
                        json_reply(n.change(change).await?)
                    })
                },
            );
        }
        if let Some(host) = &cluster.host {
            r = r.merge(&state_methods(host));
        }
        r
    }

    fn unsupported(what: &str) -> Status {
        Status::unsupported(format!(
            "{what} is not offered for replicated instances yet (this runtime is a cluster node)"
        ))
    }

    fn consistency(v: &Json) -> Result<Consistency, Status> {
        match v["consistency"].as_str() {
            None | Some("linearizable") => Ok(Consistency::Linearizable),
            Some("stale") => Ok(Consistency::Stale),
            Some(other) => Err(Status::invalid_input(format!(
                "`consistency` is \"linearizable\" (default) or \"stale\", not {other:?}"
            ))),
        }
    }

    crate::state_service::instance_writes!(ReplicatedHost);

    /// The state methods of every machine, over the replicated map.
    fn state_methods(host: &Arc<ReplicatedHost>) -> Router {
        let mut r = Router::new();
        let mut names: Vec<String> = host.machines().map(|m| m.name().to_string()).collect();
        names.sort();
        for name in names {
            let svc = format!("state.{name}");
            r = write_methods(
                r,
                host,
                &name,
                "acknowledged once a majority holds it and it is applied",
            );
            r = add(
                r,
                &format!("{svc}.get"),
                MethodInfo::new(
                    "the instance: linearizable, or {\"consistency\": \"stale\"} for this node's copy",
                )
                .input(r#"{"id": string, "consistency"?: "linearizable" | "stale"}"#)
                .idempotent(true),
                host,
                |h, c, v| {
                    Box::pin(async move {
                        let (view, applied) =
                            h.get(field(&v, "id", &c)?, consistency(&v)?).await?;
                        let mut out = serde_json::to_value(view)
                            .map_err(|e| Status::internal(e.to_string()))?;
                        out["applied_index"] = json!(applied);
                        json_reply(out)
                    })
                },
            );
            let m = name.clone();
            r = add(
                r,
                &format!("{svc}.graph"),
                MethodInfo::new("the machine as a graph (dot, mermaid or json)")
                    .input(r#"{"id"?: string, "format"?: "dot" | "mermaid" | "json"}"#)
                    .idempotent(true),
                host,
                move |h, _c, v| {
                    let m = m.clone();
                    Box::pin(async move {
                        let format: graph::Format = v["format"]
                            .as_str()
                            .unwrap_or("dot")
                            .parse()
                            .map_err(Status::invalid_input)?;
                        let active: Vec<String> = match v["id"].as_str() {
                            Some(id) => h
                                .get(id, Consistency::Stale)
                                .await?
                                .0
                                .state
                                .active
                                .into_iter()
                                .collect(),
                            None => Vec::new(),
                        };
                        let machine = h
                            .machine(&m)
                            .ok_or_else(|| Status::not_found(format!("no machine {m}")))?;
                        json_reply(json!({
                            "format": v["format"].as_str().unwrap_or("dot"),
                            "text": graph::render(machine, format, &active),
                        }))
                    })
                },
            );
            for method in ["history", "snapshot", "restore", "recover", "timeline"] {
                r = add(
                    r,
                    &format!("{svc}.{method}"),
                    MethodInfo::new(format!("{method}: not offered on a cluster node yet")),
                    host,
                    move |_h, _c, _v| Box::pin(async move { Err(unsupported(method)) }),
                );
            }
        }
        r = add(
            r,
            "state.machines",
            MethodInfo::new("the loaded machines, their versions and graphs").idempotent(true),
            host,
            |h, _c, _v| {
                Box::pin(async move {
                    let mut list: Vec<Json> = h
                        .machines()
                        .map(|m| json!({"name": m.name(), "version": m.version(), "graph": graph::json_graph(m)}))
                        .collect();
                    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                    json_reply(json!({
                        "machines": list,
                        "instances": h.instances(),
                        "applied_index": h.node().map().applied_index().unwrap_or(0),
                    }))
                })
            },
        );
        for method in ["watch", "backup", "recover"] {
            r = add(
                r,
                &format!("state.{method}"),
                MethodInfo::new(format!("state.{method}: not offered on a cluster node yet")),
                host,
                move |_h, _c, _v| Box::pin(async move { Err(unsupported(method)) }),
            );
        }
        r
    }
}
