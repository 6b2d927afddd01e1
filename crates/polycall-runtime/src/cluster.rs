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
//! - `sys.cluster.digest`: this node's applied index and state hashes (convergence
//!   checks);
//! - `sys.cluster.add_learner`, `sys.cluster.promote`, `sys.cluster.remove`: membership
//!   changes through joint consensus (they need the runtime token, like `sys.shutdown`);
//! - per linearizable machine, `state.<machine>.create|fire|get|lock|unlock|graph|
//!   history|snapshot|restore|recover|timeline` over the replicated map, and
//!   `state.machines|backup|recover|restore_backup`. `get` is linearizable unless the
//!   input says `"consistency": "stale"`; every answer carries the answering node's
//!   `applied_index`;
//! - per eventual machine, the same methods over this node's merged copy (history and
//!   point-in-time recovery answer `unsupported`; backups hold their instances as this
//!   node merged them), and `cluster.sync` between nodes (peers only);
//! - `state.watch` and `state.subscribe`: the changes this node applies of replicated
//!   machines (on a node with eventual machines only: the changes it made or merged of
//!   those); beside replicated machines, `state.watch_eventual` and
//!   `state.subscribe_eventual` serve the eventual ones, numbered by the node.

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
    use polycall_security::authz::{Policy, PolicyConfig, RuleConfig};

    use polycall_state::Replication;
    use polycall_state::graph;
    use polycall_state::raft::network::{Peers, RaftSlot};
    use polycall_state::raft::{
        Consistency, EventualHost, MembershipChange, Node, NodeConfig, ReplicatedHost,
    };
    use serde_json::{Value as Json, json};

    use crate::state_service::{
        InstanceHost, Recovered, add, backup_methods, check_token, field,
        inherent_instance_methods, json_reply, machine_methods, recovered_reply,
    };
    use crate::{RuntimeConfig, RuntimeError, State};
    use polycall_state::{At, BackupInfo, Fired, InstanceView, Machine, Snapshot, StateError};

    /// The cluster side of a runtime.
    pub(crate) struct Cluster {
        pub(crate) node: Arc<Node>,
        slot: RaftSlot,
        /// The linearizable machines (through the raft log).
        pub(crate) host: Option<Arc<ReplicatedHost>>,
        /// The eventual machines (delta anti-entropy).
        pub(crate) eventual: Option<Arc<EventualHost>>,
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
        let node_config = NodeConfig::new(
            settings.node_id,
            settings.members.clone(),
            data_file.clone(),
        )
        .timing(settings.heartbeat, settings.election_timeout)
        .snapshot_every(settings.snapshot_every)
        .channel(crate::dial::peer_channel(config)?);
        let channel = node_config.channel.clone();
        let node = Node::start(node_config, slot.clone())
            .await
            .map_err(|e| RuntimeError::State(format!("cluster node: {e}")))?;
        let (eventual, machines): (Vec<_>, Vec<_>) = machines
            .into_iter()
            .partition(|m| m.definition().consistency == Replication::Eventual);
        let eventual = if eventual.is_empty() {
            None
        } else {
            let stem = data_file
                .file_stem()
                .map_or("cluster".into(), |s| s.to_string_lossy().into_owned());
            let file = data_file.with_file_name(format!("{stem}-eventual.redb"));
            Some(
                EventualHost::open(eventual, node.clone(), &file, channel)
                    .await
                    .map_err(|e| RuntimeError::State(format!("eventual state: {e}")))?,
            )
        };
        let host = if machines.is_empty() {
            None
        } else {
            let host = ReplicatedHost::new(machines, node.clone())
                .map_err(|e| RuntimeError::State(e.to_string()))?;
            Some(Arc::new(match &eventual {
                // Its backups hold the eventual instances too.
                Some(e) => host.with_eventual(e.clone()),
                None => host,
            }))
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
            eventual,
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
        let policy = Policy::new(&PolicyConfig::default().rules(["raft*", "cluster"].map(
            |service| {
                RuleConfig::new(service)
                    .method("*")
                    .allow(settings.peer_identities.clone())
            },
        )))
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
        let eventual = cluster.eventual.clone();
        r = add(
            r,
            "sys.cluster.digest",
            MethodInfo::new(
                "this node's applied index and the BLAKE3 hashes of its replicated state (equal on nodes that applied the same log) and of its eventual state (equal on nodes that merged the same changes)",
            )
            .idempotent(true),
            node,
            move |n, _c, _v| {
                let eventual = eventual.clone();
                Box::pin(async move {
                    let map = n.map().clone();
                    // Hashing every value is CPU work: off the connection's task.
                    let (applied, hash, eventual_hash) = tokio::task::spawn_blocking(move || {
                        let (applied, hash) = map.digest();
                        (applied, hash, eventual.map(|e| e.digest()))
                    })
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                    json_reply(json!({
                        "node": n.id(),
                        "applied_index": applied,
                        "state_hash": hash,
                        "eventual_hash": eventual_hash,
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
        if let Some(eventual) = &cluster.eventual {
            r = r.merge(&EventualHost::router(eventual, cluster.peers.clone()));
        }
        if cluster.host.is_some() || cluster.eventual.is_some() {
            r = r.merge(&state_methods(cluster, runtime));
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

    crate::state_service::inherent_change_feed!(ReplicatedHost);

    impl InstanceHost for ReplicatedHost {
        inherent_instance_methods!(ReplicatedHost);

        fn history(
            self: &Arc<Self>,
            id: String,
            limit: usize,
        ) -> impl std::future::Future<Output = Result<Vec<polycall_state::Change>, Status>>
        + Send
        + 'static {
            let h = self.clone();
            async move { Ok(ReplicatedHost::history(&h, &id, limit).await?) }
        }

        fn machine_named(&self, name: &str) -> Option<&Machine> {
            self.machine(name)
        }

        fn active(
            self: &Arc<Self>,
            id: String,
        ) -> impl std::future::Future<Output = Result<Vec<String>, Status>> + Send + 'static
        {
            let h = self.clone();
            async move {
                let (view, _) = h.get(&id, Consistency::Stale).await?;
                Ok(view.state.active.into_iter().collect())
            }
        }
    }

    crate::state_service::inherent_change_feed!(EventualHost);

    fn eventual_unsupported(what: &str) -> StateError {
        StateError::Unsupported(format!(
            "{what} is not offered for eventual machines (their history is merged, not logged)"
        ))
    }

    impl InstanceHost for EventualHost {
        fn create<'a>(
            &'a self,
            machine: &'a str,
            id: Option<&'a str>,
            context: Json,
        ) -> impl std::future::Future<Output = Result<InstanceView, StateError>> + Send + 'a
        {
            EventualHost::create(self, machine, id, context)
        }

        fn fire<'a>(
            &'a self,
            id: &'a str,
            transition: &'a str,
            event: Json,
            principal: Option<&'a str>,
        ) -> impl std::future::Future<Output = Result<(Fired, InstanceView), StateError>> + Send + 'a
        {
            EventualHost::fire(self, id, transition, event, principal)
        }

        fn set_lock<'a>(
            &'a self,
            id: &'a str,
            state: &'a str,
            lock: bool,
        ) -> impl std::future::Future<Output = Result<InstanceView, StateError>> + Send + 'a
        {
            EventualHost::set_lock(self, id, state, lock)
        }

        fn snapshot<'a>(
            &'a self,
            id: &'a str,
        ) -> impl std::future::Future<Output = Result<Snapshot, StateError>> + Send + 'a {
            std::future::ready(EventualHost::snapshot(self, id))
        }

        fn restore<'a>(
            &'a self,
            id: &'a str,
            snapshot: &'a Snapshot,
        ) -> impl std::future::Future<Output = Result<InstanceView, StateError>> + Send + 'a
        {
            EventualHost::restore(self, id, snapshot)
        }

        fn restore_to<'a>(
            &'a self,
            _id: Option<&'a str>,
            _at: At,
        ) -> impl std::future::Future<Output = Result<Recovered, StateError>> + Send + 'a {
            std::future::ready(Err(eventual_unsupported("point-in-time recovery")))
        }

        fn backup<'a>(
            &'a self,
            dest: &'a std::path::Path,
        ) -> impl std::future::Future<Output = Result<BackupInfo, StateError>> + Send + 'a {
            EventualHost::backup(self, dest)
        }

        fn history(
            self: &Arc<Self>,
            _id: String,
            _limit: usize,
        ) -> impl std::future::Future<Output = Result<Vec<polycall_state::Change>, Status>>
        + Send
        + 'static {
            std::future::ready(Err(eventual_unsupported("history").into()))
        }

        fn machine_named(&self, name: &str) -> Option<&Machine> {
            self.machine(name)
        }

        fn active(
            self: &Arc<Self>,
            id: String,
        ) -> impl std::future::Future<Output = Result<Vec<String>, Status>> + Send + 'static
        {
            let active = self
                .get(&id)
                .map(|v| v.state.active.into_iter().collect())
                .map_err(Status::from);
            std::future::ready(active)
        }
    }

    /// The state hosts of a cluster node.
    struct Hosts {
        replicated: Option<Arc<ReplicatedHost>>,
        eventual: Option<Arc<EventualHost>>,
    }

    /// `state.restore_backup` on `host`: puts every instance back to its state in a
    /// cluster backup file.
    fn restore_backup_method<H, F, Fut>(
        r: Router,
        host: &Arc<H>,
        runtime: Weak<State>,
        restore: F,
    ) -> Router
    where
        H: Send + Sync + 'static,
        F: Fn(Arc<H>, std::path::PathBuf) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Recovered, StateError>> + Send,
    {
        add(
            r,
            "state.restore_backup",
            MethodInfo::new(
                "puts every instance back to its state in a backup file (state.backup of a cluster node); needs the runtime token",
            )
            .input(r#"{"path": string, "token": string}"#)
            .output(r#"{"restored": [{"id", "instance"}]}"#),
            host,
            move |h, c, v| {
                let (rt, restore) = (runtime.clone(), restore.clone());
                Box::pin(async move {
                    check_token(&rt, &v)?;
                    let path = std::path::PathBuf::from(field(&v, "path", &c)?);
                    recovered_reply(restore(h, path).await?)
                })
            },
        )
    }

    /// The state methods of every machine: linearizable ones over the replicated map,
    /// eventual ones over this node's merged copy.
    fn state_methods(cluster: &Cluster, runtime: Weak<State>) -> Router {
        let mut r = Router::new();
        if let Some(host) = &cluster.host {
            r = machine_methods(
                r,
                host,
                host.machines().map(Machine::name),
                "acknowledged once a majority holds it and it is applied",
                |r, name| {
                    add(
                        r,
                        &format!("state.{name}.get"),
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
                    )
                },
            );
            r = backup_methods(r, host, runtime.clone());
            r = restore_backup_method(r, host, runtime.clone(), |h, path| async move {
                h.restore_backup(&path).await
            });
        }
        if let Some(host) = &cluster.eventual {
            let node = cluster.node.id();
            r = machine_methods(
                r,
                host,
                host.machines().map(Machine::name),
                "eventual: acknowledged once this node holds it, merged into the others' copies",
                |r, name| {
                    add(
                        r,
                        &format!("state.{name}.get"),
                        MethodInfo::new("the instance as this node has merged it (eventual)")
                            .input(r#"{"id": string}"#)
                            .idempotent(true),
                        host,
                        move |h, c, v| {
                            Box::pin(async move {
                                let view = h.get(field(&v, "id", &c)?)?;
                                json_reply(polycall_state::raft::eventual::describe(&view, node))
                            })
                        },
                    )
                },
            );
        }
        let hosts = Arc::new(Hosts {
            replicated: cluster.host.clone(),
            eventual: cluster.eventual.clone(),
        });
        r = add(
            r,
            "state.machines",
            MethodInfo::new("the loaded machines, their versions and graphs").idempotent(true),
            &hosts,
            |h, _c, _v| {
                Box::pin(async move {
                    let describe = |m: &Machine| {
                        json!({
                            "name": m.name(),
                            "version": m.version(),
                            "consistency": m.definition().consistency,
                            "graph": graph::json_graph(m),
                        })
                    };
                    let mut list: Vec<Json> = Vec::new();
                    let mut instances = Vec::new();
                    if let Some(r) = &h.replicated {
                        list.extend(r.machines().map(describe));
                        instances.extend(r.instances());
                    }
                    if let Some(e) = &h.eventual {
                        list.extend(e.machines().map(describe));
                        instances.extend(e.instances());
                    }
                    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                    let applied = h
                        .replicated
                        .as_ref()
                        .and_then(|r| r.node().map().applied_index())
                        .unwrap_or(0);
                    json_reply(json!({
                        "machines": list,
                        "instances": instances,
                        "applied_index": applied,
                    }))
                })
            },
        );
        let mut unsupported_here: Vec<&'static str> = Vec::new();
        match (&cluster.host, &cluster.eventual) {
            (Some(host), eventual) => {
                r = crate::state_service::watch_methods(r, host);
                if let Some(eventual) = eventual {
                    // Numbered by this node, apart from the log's indexes.
                    r = crate::state_service::watch_methods_named(
                        r,
                        eventual,
                        "state.watch_eventual",
                        "state.subscribe_eventual",
                    );
                }
            }
            (None, Some(eventual)) => {
                r = crate::state_service::watch_methods(r, eventual);
                // Backups of the eventual instances alone; point-in-time recovery
                // answers that eventual machines do not offer it.
                r = backup_methods(r, eventual, runtime.clone());
                r = restore_backup_method(r, eventual, runtime, |h, path| async move {
                    h.restore_backup(&path).await
                });
            }
            (None, None) => {
                unsupported_here.extend(["watch", "backup", "recover", "restore_backup"])
            }
        }
        for method in unsupported_here {
            r = add(
                r,
                &format!("state.{method}"),
                MethodInfo::new(format!("state.{method}: not offered on this cluster node")),
                &hosts,
                move |_h, _c, _v| Box::pin(async move { Err(unsupported(method)) }),
            );
        }
        r
    }
}
