//! The runtime's state machines as methods any language can call:
//!
//! - per machine, service `state.<machine>`: `create`, `fire`, `get`, `history`,
//!   `snapshot`, `restore`, `lock`, `unlock`, `recover` (one instance, to a time or log
//!   index), `graph`, `timeline`;
//! - service `state`: `machines`, `watch` (changes after a log index, long-polled),
//!   `backup` and `recover` (every instance) — these two need the runtime's token, like
//!   `sys.shutdown`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use polycall_core::{Call, MethodInfo, Payload, Reply, Router, Status, handler_fn};
use std::future::Future;

use polycall_state::{
    At, BackupInfo, Change, Fired, InstanceView, Machine, Snapshot, StateError, StateHost, graph,
};
use serde_json::{Value as Json, json};

use crate::State;

/// Where and how the runtime keeps state machines.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StateSettings {
    /// A directory of machine definitions (`*.toml`, docs/state.md). No machines: no
    /// state methods and no database.
    pub machine_dir: Option<PathBuf>,
    /// The database file (default: `<state dir>/state.redb`).
    pub database: Option<PathBuf>,
    /// The longest a `batched` machine's acknowledged event waits for its fsync.
    pub batch_window: Duration,
    /// Snapshots kept per instance (the point-in-time recovery window).
    pub keep_snapshots: usize,
    /// Take a backup this often (`None`: never).
    pub backup_every: Option<Duration>,
    /// Backups kept; older ones are deleted.
    pub backup_keep: usize,
    /// Where scheduled backups go (default: `<state dir>/backups`).
    pub backup_dir: Option<PathBuf>,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            machine_dir: None,
            database: None,
            batch_window: Duration::from_millis(50),
            keep_snapshots: 16,
            backup_every: None,
            backup_keep: 7,
            backup_dir: None,
        }
    }
}

impl StateSettings {
    /// Sets the directory of machine definitions (`*.toml`, docs/state.md).
    pub fn machine_dir(mut self, machine_dir: impl Into<PathBuf>) -> Self {
        self.machine_dir = Some(machine_dir.into());
        self
    }

    /// Sets the database file (default: `<state dir>/state.redb`).
    pub fn database(mut self, database: impl Into<PathBuf>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Sets the longest a `batched` machine's acknowledged event waits for its fsync.
    pub fn batch_window(mut self, batch_window: Duration) -> Self {
        self.batch_window = batch_window;
        self
    }

    /// Sets the snapshots kept per instance (the point-in-time recovery window).
    pub fn keep_snapshots(mut self, keep_snapshots: usize) -> Self {
        self.keep_snapshots = keep_snapshots;
        self
    }

    /// Sets how often a backup is taken (never when not set).
    pub fn backup_every(mut self, backup_every: Duration) -> Self {
        self.backup_every = Some(backup_every);
        self
    }

    /// Sets how many backups are kept; older ones are deleted.
    pub fn backup_keep(mut self, backup_keep: usize) -> Self {
        self.backup_keep = backup_keep;
        self
    }

    /// Sets where scheduled backups go (default: `<state dir>/backups`).
    pub fn backup_dir(mut self, backup_dir: impl Into<PathBuf>) -> Self {
        self.backup_dir = Some(backup_dir.into());
        self
    }
}

pub(crate) fn json_reply(v: impl serde::Serialize) -> Result<Reply, Status> {
    Payload::json(&v)
        .map(Reply::new)
        .map_err(|e| Status::internal(e.to_string()))
}

pub(crate) fn input(call: &Call) -> Result<Json, Status> {
    if call.payload.is_empty() {
        return Ok(json!({}));
    }
    match call.payload.to_json::<Json>() {
        Ok(v @ Json::Object(_)) => Ok(v),
        Ok(_) | Err(_) => Err(Status::invalid_input(format!(
            "{} expects a JSON object",
            call.full_name()
        ))),
    }
}

pub(crate) fn field<'a>(v: &'a Json, name: &str, call: &Call) -> Result<&'a str, Status> {
    v[name].as_str().ok_or_else(|| {
        Status::invalid_input(format!(
            "{} needs {{\"{name}\": <string>}}",
            call.full_name()
        ))
    })
}

/// `{"at": "RFC 3339" | micros}` or `{"index": n}`.
fn point(v: &Json) -> Result<At, Status> {
    match (&v["at"], &v["index"]) {
        (Json::String(s), Json::Null) => polycall_state::time::parse(s)
            .map(At::Time)
            .map_err(|e| Status::invalid_input(e.to_string())),
        (Json::Number(n), Json::Null) => n
            .as_u64()
            .map(At::Time)
            .ok_or_else(|| Status::invalid_input("`at` in microseconds is a non-negative integer")),
        (Json::Null, Json::Number(n)) => n
            .as_u64()
            .map(At::Index)
            .ok_or_else(|| Status::invalid_input("`index` is a non-negative integer")),
        _ => Err(Status::invalid_input(
            "give exactly one of {\"at\": \"2026-12-06T03:15:00Z\"} or {\"index\": <log index>}",
        )),
    }
}

pub(crate) fn principal(call: &Call) -> Option<String> {
    call.metadata.principal.as_ref().map(ToString::to_string)
}

/// Runs a database read (and what it feeds) on tokio's blocking pool, off the
/// connection's task.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, polycall_state::StateError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| Status::internal(format!("a state read failed: {e}")))?
        .map_err(Status::from)
}

pub(crate) type Fut =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Status>> + Send>>;

/// Adds a method whose body gets the host, the call and its input (a JSON object).
pub(crate) fn add<H, F>(r: Router, name: &str, info: MethodInfo, host: &Arc<H>, f: F) -> Router
where
    H: Send + Sync + 'static,
    F: Fn(Arc<H>, Call, Json) -> Fut + Clone + Send + Sync + 'static,
{
    let host = host.clone();
    r.route(
        name,
        info,
        handler_fn(move |c: Call| {
            let f = f.clone();
            let host = host.clone();
            async move {
                let v = input(&c)?;
                f(host, c, v).await
            }
        }),
    )
    .unwrap_or_else(|e| panic!("state method names are validated with their machine: {e}"))
}

/// What the instance methods of a machine need from a host: one node's [`StateHost`],
/// or a cluster's replicated host.
pub(crate) trait InstanceHost: Send + Sync + 'static {
    /// Creates an instance of `machine`.
    fn create<'a>(
        &'a self,
        machine: &'a str,
        id: Option<&'a str>,
        context: Json,
    ) -> impl Future<Output = Result<InstanceView, StateError>> + Send + 'a;

    /// Fires `transition` on instance `id`.
    fn fire<'a>(
        &'a self,
        id: &'a str,
        transition: &'a str,
        event: Json,
        principal: Option<&'a str>,
    ) -> impl Future<Output = Result<(Fired, InstanceView), StateError>> + Send + 'a;

    /// Locks or unlocks a state of instance `id`.
    fn set_lock<'a>(
        &'a self,
        id: &'a str,
        state: &'a str,
        lock: bool,
    ) -> impl Future<Output = Result<InstanceView, StateError>> + Send + 'a;

    /// A self-verifying snapshot of instance `id`.
    fn snapshot<'a>(
        &'a self,
        id: &'a str,
    ) -> impl Future<Output = Result<Snapshot, StateError>> + Send + 'a;

    /// Restores instance `id` from a snapshot.
    fn restore<'a>(
        &'a self,
        id: &'a str,
        snapshot: &'a Snapshot,
    ) -> impl Future<Output = Result<InstanceView, StateError>> + Send + 'a;

    /// Point-in-time recovery of instance `id` (or of every instance).
    fn restore_to<'a>(
        &'a self,
        id: Option<&'a str>,
        at: At,
    ) -> impl Future<Output = Result<Recovered, StateError>> + Send + 'a;

    /// An online, consistent backup of every instance to `dest` (a new file).
    fn backup<'a>(
        &'a self,
        dest: &'a Path,
    ) -> impl Future<Output = Result<BackupInfo, StateError>> + Send + 'a;

    /// The instance's changes, oldest first (at most `limit`, the newest), read off the
    /// connection's task.
    fn history(
        self: &Arc<Self>,
        id: String,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Change>, Status>> + Send + 'static;

    /// A loaded machine by name.
    fn machine_named(&self, name: &str) -> Option<&Machine>;

    /// The active states of instance `id`, as this host's plain `get` sees them.
    fn active(
        self: &Arc<Self>,
        id: String,
    ) -> impl Future<Output = Result<Vec<String>, Status>> + Send + 'static;
}

/// What a point-in-time recovery did: each instance touched and what it became.
pub(crate) type Recovered = Vec<(String, Option<InstanceView>)>;

/// The [`InstanceHost`] methods a host has as inherent methods of the same signatures
/// (all but `history`).
macro_rules! inherent_instance_methods {
    ($host:ty) => {
        fn create<'a>(
            &'a self,
            machine: &'a str,
            id: Option<&'a str>,
            context: serde_json::Value,
        ) -> impl std::future::Future<
            Output = Result<polycall_state::InstanceView, polycall_state::StateError>,
        > + Send
        + 'a {
            <$host>::create(self, machine, id, context)
        }

        fn fire<'a>(
            &'a self,
            id: &'a str,
            transition: &'a str,
            event: serde_json::Value,
            principal: Option<&'a str>,
        ) -> impl std::future::Future<
            Output = Result<
                (polycall_state::Fired, polycall_state::InstanceView),
                polycall_state::StateError,
            >,
        > + Send
        + 'a {
            <$host>::fire(self, id, transition, event, principal)
        }

        fn set_lock<'a>(
            &'a self,
            id: &'a str,
            state: &'a str,
            lock: bool,
        ) -> impl std::future::Future<
            Output = Result<polycall_state::InstanceView, polycall_state::StateError>,
        > + Send
        + 'a {
            <$host>::set_lock(self, id, state, lock)
        }

        fn snapshot<'a>(
            &'a self,
            id: &'a str,
        ) -> impl std::future::Future<
            Output = Result<polycall_state::Snapshot, polycall_state::StateError>,
        > + Send
        + 'a {
            <$host>::snapshot(self, id)
        }

        fn restore<'a>(
            &'a self,
            id: &'a str,
            snapshot: &'a polycall_state::Snapshot,
        ) -> impl std::future::Future<
            Output = Result<polycall_state::InstanceView, polycall_state::StateError>,
        > + Send
        + 'a {
            <$host>::restore(self, id, snapshot)
        }

        fn restore_to<'a>(
            &'a self,
            id: Option<&'a str>,
            at: polycall_state::At,
        ) -> impl std::future::Future<
            Output = Result<$crate::state_service::Recovered, polycall_state::StateError>,
        > + Send
        + 'a {
            <$host>::restore_to(self, id, at)
        }

        fn backup<'a>(
            &'a self,
            dest: &'a std::path::Path,
        ) -> impl std::future::Future<
            Output = Result<polycall_state::BackupInfo, polycall_state::StateError>,
        > + Send
        + 'a {
            <$host>::backup(self, dest)
        }
    };
}
// Used by the cluster's replicated host too.
#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use inherent_instance_methods;

impl InstanceHost for StateHost {
    inherent_instance_methods!(StateHost);

    fn history(
        self: &Arc<Self>,
        id: String,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Change>, Status>> + Send + 'static {
        let h = self.clone();
        blocking(move || StateHost::history(&h, &id, limit))
    }

    fn machine_named(&self, name: &str) -> Option<&Machine> {
        self.machine(name)
    }

    fn active(
        self: &Arc<Self>,
        id: String,
    ) -> impl Future<Output = Result<Vec<String>, Status>> + Send + 'static {
        let h = self.clone();
        async move { Ok(h.get(&id).await?.state.active.into_iter().collect()) }
    }
}

/// `state.<name>.create`, `.fire`, `.lock` and `.unlock` over `host`; `acknowledged`
/// says when a write is answered.
pub(crate) fn write_methods<H: InstanceHost>(
    mut r: Router,
    host: &Arc<H>,
    name: &str,
    acknowledged: &str,
) -> Router {
    let svc = format!("state.{name}");
    let m = name.to_string();
    r = add(
        r,
        &format!("{svc}.create"),
        MethodInfo::new(format!(
            "creates an instance of machine {name}; {acknowledged}"
        ))
        .input(r#"{"id"?: string, "context"?: object}"#)
        .output("the instance"),
        host,
        move |h, _c, v| {
            let m = m.clone();
            Box::pin(async move {
                let id = v["id"].as_str();
                json_reply(h.create(&m, id, v["context"].clone()).await?)
            })
        },
    );
    r = add(
        r,
        &format!("{svc}.fire"),
        MethodInfo::new(format!("fires a named transition; {acknowledged}"))
            .input(r#"{"id": string, "transition": string, "event"?: any}"#)
            .output(r#"{"fired": {"transition", "exited", "entered"}, "instance": ...}"#),
        host,
        |h, c, v| {
            Box::pin(async move {
                let (fired, view) = h
                    .fire(
                        field(&v, "id", &c)?,
                        field(&v, "transition", &c)?,
                        v["event"].clone(),
                        principal(&c).as_deref(),
                    )
                    .await?;
                json_reply(json!({"fired": fired, "instance": view}))
            })
        },
    );
    for (method, lock) in [("lock", true), ("unlock", false)] {
        r = add(
            r,
            &format!("{svc}.{method}"),
            MethodInfo::new(format!("{method}s a state of the instance; {acknowledged}"))
                .input(r#"{"id": string, "state": string}"#),
            host,
            move |h, c, v| {
                Box::pin(async move {
                    json_reply(
                        h.set_lock(field(&v, "id", &c)?, field(&v, "state", &c)?, lock)
                            .await?,
                    )
                })
            },
        );
    }
    r
}

/// For each machine of `names` (in name order): its write methods (`acknowledged` says
/// when a write is answered), recovery methods and graph, then what `get` adds (the
/// host's own `get`).
pub(crate) fn machine_methods<'a, H: InstanceHost>(
    mut r: Router,
    host: &Arc<H>,
    names: impl Iterator<Item = &'a str>,
    acknowledged: &str,
    get: impl Fn(Router, &str) -> Router,
) -> Router {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    for name in names {
        r = write_methods(r, host, name, acknowledged);
        r = recovery_methods(r, host, name);
        r = graph_method(r, host, name);
        r = get(r, name);
    }
    r
}

/// The state methods of every machine `host` holds.
pub(crate) fn router(host: &Arc<StateHost>, runtime: Weak<State>) -> Router {
    let mut r = machine_methods(
        Router::new(),
        host,
        host.machines().map(Machine::name),
        "acknowledged once it is in the log",
        |r, name| {
            add(
                r,
                &format!("state.{name}.get"),
                MethodInfo::new("the instance now")
                    .input(r#"{"id": string}"#)
                    .idempotent(true),
                host,
                |h, c, v| Box::pin(async move { json_reply(h.get(field(&v, "id", &c)?).await?) }),
            )
        },
    );
    r = add(
        r,
        "state.machines",
        MethodInfo::new(
            "the loaded machines (name, version, states, transitions) and their instances",
        )
        .idempotent(true),
        host,
        |h, _c, _v| {
            Box::pin(async move {
                let instances = h.instances().await;
                let mut machines: Vec<Json> = h
                    .machines()
                    .map(|m| json!({"name": m.name(), "version": m.version(), "graph": graph::json_graph(m)}))
                    .collect();
                machines.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                json_reply(
                    json!({"machines": machines, "instances": instances, "last_index": h.last_index()}),
                )
            })
        },
    );
    r = watch_methods(r, host);
    backup_methods(r, host, runtime)
}

/// `state.<name>.history`, `.snapshot`, `.restore`, `.recover` and `.timeline` over
/// `host`.
pub(crate) fn recovery_methods<H: InstanceHost>(
    mut r: Router,
    host: &Arc<H>,
    name: &str,
) -> Router {
    let svc = format!("state.{name}");
    r = add(
        r,
        &format!("{svc}.history"),
        MethodInfo::new("the instance's logged events, oldest first")
            .input(r#"{"id": string, "limit"?: u64}"#)
            .idempotent(true),
        host,
        |h, c, v| {
            Box::pin(async move {
                let limit = v["limit"].as_u64().unwrap_or(1000) as usize;
                let id = field(&v, "id", &c)?.to_string();
                json_reply(h.history(id, limit).await?)
            })
        },
    );
    r = add(
        r,
        &format!("{svc}.snapshot"),
        MethodInfo::new("a self-verifying snapshot (state + BLAKE3 integrity hash)")
            .input(r#"{"id": string}"#)
            .idempotent(true),
        host,
        |h, c, v| Box::pin(async move { json_reply(h.snapshot(field(&v, "id", &c)?).await?) }),
    );
    r = add(
        r,
        &format!("{svc}.restore"),
        MethodInfo::new("restores a snapshot (integrity, machine version and locks checked)")
            .input(r#"{"id": string, "snapshot": object}"#),
        host,
        |h, c, v| {
            Box::pin(async move {
                let snap: polycall_state::Snapshot = serde_json::from_value(v["snapshot"].clone())
                    .map_err(|e| Status::invalid_input(format!("`snapshot`: {e}")))?;
                json_reply(h.restore(field(&v, "id", &c)?, &snap).await?)
            })
        },
    );
    r = add(
        r,
        &format!("{svc}.recover"),
        MethodInfo::new("point-in-time recovery of one instance (logged, so it can be undone)")
            .input(r#"{"id": string, "at": "RFC 3339" | micros} or {"id": string, "index": u64}"#),
        host,
        |h, c, v| {
            Box::pin(async move {
                let out = h.restore_to(Some(field(&v, "id", &c)?), point(&v)?).await?;
                recovered_reply(out)
            })
        },
    );
    r = add(
        r,
        &format!("{svc}.timeline"),
        MethodInfo::new("a self-contained HTML timeline of the instance's transitions")
            .input(r#"{"id": string}"#)
            .output(r#"{"html": string}"#)
            .idempotent(true),
        host,
        |h, c, v| {
            Box::pin(async move {
                let id = field(&v, "id", &c)?.to_string();
                let history = h.history(id.clone(), usize::MAX).await?;
                let html = graph::timeline_html(&id, &history);
                json_reply(json!({"html": html}))
            })
        },
    );
    r
}

/// `state.<name>.graph` over `host`: the machine as DOT, Mermaid or JSON, with an
/// instance's active states highlighted.
pub(crate) fn graph_method<H: InstanceHost>(r: Router, host: &Arc<H>, name: &str) -> Router {
    let svc = format!("state.{name}");
    let m = name.to_string();
    add(
        r,
        &format!("{svc}.graph"),
        MethodInfo::new(
            "the machine as DOT, Mermaid or JSON; with an id, its active states highlighted",
        )
        .input(r#"{"format"?: "dot" | "mermaid" | "json", "id"?: string}"#)
        .output(r#"{"format", "text"}"#)
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
                    Some(id) => h.active(id.to_string()).await?,
                    None => Vec::new(),
                };
                let machine = h
                    .machine_named(&m)
                    .ok_or_else(|| Status::not_found(format!("no machine {m}")))?;
                json_reply(
                    json!({"format": v["format"].as_str().unwrap_or("dot"), "text": graph::render(machine, format, &active)}),
                )
            })
        },
    )
}

/// `{"restored": [{"id", "instance"}, …]}`: what a recovery did (`instance` null: the
/// instance was removed).
pub(crate) fn recovered_reply(out: Recovered) -> Result<Reply, Status> {
    let restored: Vec<Json> = out
        .into_iter()
        .map(|(id, s)| json!({"id": id, "instance": s}))
        .collect();
    json_reply(json!({ "restored": restored }))
}

/// `state.backup` and `state.recover` (every instance) over `host`; both need the
/// runtime token.
pub(crate) fn backup_methods<H: InstanceHost>(
    mut r: Router,
    host: &Arc<H>,
    runtime: Weak<State>,
) -> Router {
    let rt = runtime.clone();
    r = add(
        r,
        "state.backup",
        MethodInfo::new(
            "an online consistent backup of every instance to a new file; needs the runtime token",
        )
        .input(r#"{"path": string, "token": string}"#)
        .output(r#"{"path", "records", "last_index", "bytes"}"#),
        host,
        move |h, c, v| {
            let rt = rt.clone();
            Box::pin(async move {
                check_token(&rt, &v)?;
                let path = PathBuf::from(field(&v, "path", &c)?);
                json_reply(h.backup(&path).await?)
            })
        },
    );
    let rt = runtime;
    add(
        r,
        "state.recover",
        MethodInfo::new("point-in-time recovery of every instance; needs the runtime token").input(
            r#"{"at": "RFC 3339" | micros, "token": string} or {"index": u64, "token": string}"#,
        ),
        host,
        move |h, _c, v| {
            let rt = rt.clone();
            Box::pin(async move {
                check_token(&rt, &v)?;
                let out = h.restore_to(None, point(&v)?).await?;
                recovered_reply(out)
            })
        },
    )
}

/// What `state.watch` and `state.subscribe` read: the changes logged after an index —
/// one node's [`StateHost`] log, or what a cluster node applied.
pub(crate) trait ChangeFeed: Send + Sync + 'static {
    /// Changes after `after` (all instances, oldest first, at most `limit`), waiting up
    /// to `wait` for the first.
    fn changes(
        self: &Arc<Self>,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Change>, StateError>> + Send + 'static;

    /// The newest log index.
    fn last_index(&self) -> u64;
}

/// The [`ChangeFeed`] of a host that has `changes` and `last_index` as inherent methods
/// of the same signatures.
macro_rules! inherent_change_feed {
    ($host:ty) => {
        impl $crate::state_service::ChangeFeed for $host {
            fn changes(
                self: &::std::sync::Arc<Self>,
                after: u64,
                limit: usize,
                wait: ::std::time::Duration,
            ) -> impl ::std::future::Future<
                Output = Result<Vec<polycall_state::Change>, polycall_state::StateError>,
            > + Send
            + 'static {
                let h = self.clone();
                async move { <$host>::changes(&h, after, limit, wait).await }
            }

            fn last_index(&self) -> u64 {
                <$host>::last_index(self)
            }
        }
    };
}
#[cfg(feature = "cluster")]
pub(crate) use inherent_change_feed;

inherent_change_feed!(StateHost);

/// `state.watch` (long polling) and `state.subscribe` (a server stream) over `host`'s
/// changes.
pub(crate) fn watch_methods<H: ChangeFeed>(r: Router, host: &Arc<H>) -> Router {
    watch_methods_named(r, host, "state.watch", "state.subscribe")
}

/// The long-poll (`watch`) and the server stream (`subscribe`) of `host`'s changes,
/// under the names given.
pub(crate) fn watch_methods_named<H: ChangeFeed>(
    mut r: Router,
    host: &Arc<H>,
    watch: &str,
    subscribe_as: &str,
) -> Router {
    r = add(
        r,
        watch,
        MethodInfo::new(
            "changes after `after` (all instances), waiting up to wait_ms for the first",
        )
        .input(r#"{"after"?: u64, "limit"?: u64, "wait_ms"?: u64}"#)
        .output(r#"{"changes": [...], "last_index": u64}"#)
        .idempotent(true),
        host,
        |h, c, v| {
            Box::pin(async move {
                let after = v["after"].as_u64().unwrap_or(0);
                let limit = v["limit"].as_u64().unwrap_or(1000).min(10_000) as usize;
                let mut wait =
                    Duration::from_millis(v["wait_ms"].as_u64().unwrap_or(10_000).min(60_000));
                if let Some(d) = c.metadata.deadline {
                    // Answer before the caller gives up.
                    wait = wait.min(
                        d.remaining(std::time::Instant::now())
                            .saturating_sub(Duration::from_millis(50)),
                    );
                }
                let changes = ChangeFeed::changes(&h, after, limit, wait).await?;
                let last = changes.last().map_or(after, |c| c.index);
                json_reply(json!({"changes": changes, "last_index": last}))
            })
        },
    );
    subscribe(r, host, subscribe_as)
}

/// `state.subscribe`: a server stream of every transition logged after `after` (all
/// instances), as it happens, until the caller cancels. `state.watch` long-polls the
/// same changes for clients that do not stream.
fn subscribe<H: ChangeFeed>(r: Router, host: &Arc<H>, name: &str) -> Router {
    use futures_util::StreamExt;
    use polycall_core::{CallKind, MessageStream, StreamCall};

    let host = host.clone();
    r.route_stream(
        name,
        CallKind::ServerStream,
        MethodInfo::new("every change after `after` (all instances), as it happens")
            .input(r#"{"after"?: u64}"#)
            .output(r#"a stream of {"index", "id", "machine", "from", "to", "event", ...}"#),
        move |call: StreamCall| -> MessageStream {
            let host = host.clone();
            let start = async move {
                let request = polycall_core::stream::single(call.requests).await?;
                let v: Json = if request.bytes.is_empty() {
                    json!({})
                } else {
                    request
                        .to_json()
                        .map_err(|e| Status::invalid_input(e.to_string()))?
                };
                let after = match &v["after"] {
                    Json::Null => host.last_index(),
                    a => a
                        .as_u64()
                        .ok_or_else(|| Status::invalid_input("`after` is a log index (u64)"))?,
                };
                Ok::<_, Status>((host, after))
            };
            Box::pin(futures_util::stream::once(start).flat_map(|r| match r {
                Err(e) => polycall_core::stream::fail(e),
                Ok((host, after)) => Box::pin(futures_util::stream::unfold(
                    Some((host, after, std::collections::VecDeque::new())),
                    |state| async move {
                        // `None` once the stream failed: nothing follows an error.
                        let (host, mut after, mut ready) = state?;
                        loop {
                            if let Some(change) = ready.pop_front() {
                                let message = Payload::json(&change)
                                    .map_err(|e| Status::internal(e.to_string()));
                                return Some((message, Some((host, after, ready))));
                            }
                            match ChangeFeed::changes(&host, after, 1000, Duration::from_secs(30))
                                .await
                            {
                                Ok(changes) => {
                                    if let Some(last) = changes.last() {
                                        after = last.index;
                                    }
                                    ready.extend(changes);
                                }
                                Err(e) => return Some((Err(Status::from(e)), None)),
                            }
                        }
                    },
                )) as MessageStream,
            }))
        },
    )
    .expect("a valid name")
}

pub(crate) fn check_token(rt: &Weak<State>, v: &Json) -> Result<(), Status> {
    let state = rt
        .upgrade()
        .ok_or_else(|| Status::unavailable("the runtime is shutting down"))?;
    match v["token"].as_str() {
        Some(t) if state.token_matches(t) => Ok(()),
        Some(_) => Err(Status::permission_denied("wrong runtime token")),
        None => Err(Status::unauthenticated(
            "this method needs {\"token\": ...}; the polycall CLI reads it from the state directory",
        )),
    }
}

/// Takes a backup every `every` into `dir` (`state-<time>.redb`), keeping the newest
/// `keep`.
pub(crate) fn schedule_backups<H: InstanceHost>(
    host: Arc<H>,
    dir: PathBuf,
    every: Duration,
    keep: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::error!(dir = %dir.display(), error = %e, "scheduled backup: cannot create the directory");
                continue;
            }
            let name = format!(
                "state-{}.redb",
                polycall_state::time::format(polycall_state::now_us()).replace(':', "")
            );
            match host.backup(&dir.join(&name)).await {
                Ok(info) => {
                    tracing::info!(file = %info.path.display(), records = info.records, "scheduled backup written")
                }
                Err(e) => tracing::error!(error = %e, "scheduled backup failed"),
            }
            let mut old: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("state-") && n.ends_with(".redb"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            old.sort();
            while old.len() > keep.max(1) {
                let p = old.remove(0);
                if let Err(e) = std::fs::remove_file(&p) {
                    tracing::warn!(file = %p.display(), error = %e, "cannot delete an old backup");
                }
            }
        }
    })
}
