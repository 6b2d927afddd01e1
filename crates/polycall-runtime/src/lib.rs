//! # polycall-runtime
//!
//! The embeddable polycall node. Programs in any language connect, register the methods
//! they provide, and call each other's methods through it; the runtime routes each call
//! to a provider (the one with the fewest calls outstanding), forwards the caller's
//! remaining deadline, fails a call at once with `unavailable` when its provider
//! disconnects, and serves its own methods (`sys.ping`, `sys.describe`, `sys.health`,
//! `sys.shutdown`; `debug.echo` and `debug.sleep` when [`RuntimeConfig::debug_methods`]
//! is set).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use polycall_runtime::{Runtime, RuntimeConfig};
//! let config = RuntimeConfig::default().endpoint("127.0.0.1:0".parse()?);
//! let runtime = Runtime::start(config).await?;
//! println!("listening on {}", runtime.local_endpoint());
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```

mod builtins;
mod cluster;
mod compat;
pub mod config;
mod connection;
mod dial;
mod discovery;
mod gateway;
mod observe;
mod provider;
mod registry;
pub mod reload;
mod state_service;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use polycall_core::{BoxHandler, Router};
use polycall_net::{ConnectionHandle, Endpoint, Server, ServerConfig, SharedHandler};
use serde_json::json;
use tokio::sync::watch;

pub use cluster::ClusterSettings;
pub use compat::CompatConfig;
pub use discovery::{DiscoveryRegistry, DiscoverySettings};
pub use gateway::GatewaySettings;
pub use observe::{MAX_EXPORTED_SPANS, ObserveSettings};
pub use polycall_observe::Observer;
pub use provider::{Provider, ProviderConfig};
pub use registry::{Provision, Registry};
pub use state_service::StateSettings;

/// How long before its TLS certificate expires a runtime reports itself `degraded`.
pub const CERT_EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// The endpoint a runtime listens on when none is configured: loopback only.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7464";

/// What a runtime needs to start. Every field has a working default: a runtime runs
/// with no configuration file at all.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Where to listen (port 0: any free port).
    pub endpoint: Endpoint,
    /// Where the runtime keeps its files (`runtime.json`, `runtime.token`).
    pub state_dir: PathBuf,
    /// Listener and connection limits.
    pub server: ServerConfig,
    /// Rate limits, concurrency limits and fault injection applied to every call.
    pub qos: QosConfig,
    /// libpolycall clients (PCR1, first generation) on the same listener.
    pub compat: CompatConfig,
    /// Serve TLS 1.3 with these settings (`None`: plain TCP, loopback only unless
    /// `insecure_remote`).
    pub tls: Option<polycall_security::ServerTls>,
    /// Listen on a non-loopback address without TLS and authentication. Off by
    /// default: such a runtime would let anyone on the network call anything.
    pub insecure_remote: bool,
    /// State machines: where their definitions and their database are.
    pub state: StateSettings,
    /// Serve `debug.echo` and `debug.sleep` (off by default: test aids, not part of a
    /// production surface).
    pub debug_methods: bool,
    /// Metrics, traces, the admin listener.
    pub observe: ObserveSettings,
    /// Membership of a cluster (`None`: a single node). Needs the `cluster` feature.
    pub cluster: Option<ClusterSettings>,
    /// Serve the methods over HTTP/JSON too (`None`: no gateway).
    pub gateway: Option<GatewaySettings>,
    /// Find other runtimes and forward calls to them (`None`: alone).
    pub discovery: Option<DiscoverySettings>,
}

/// What the runtime applies to every call it serves, in this order: authorization, rate
/// limit per client, concurrency limit (shedding low priorities first), fault injection.
/// Each is off when `None`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct QosConfig {
    /// Which principals may call which methods (`permission_denied` otherwise). Checked
    /// first, so denied calls use no rate-limit tokens or concurrency slots.
    pub policy: Option<Arc<polycall_security::authz::Policy>>,
    /// Calls per second per client (per principal; each anonymous connection is a
    /// client of its own); over the rate, `busy` with a retry-after hint.
    pub rate_limit: Option<polycall_net::rate_limit::RateLimitConfig>,
    /// Calls served at once by the whole runtime; over it, `busy` (lower classes first).
    pub concurrency: Option<polycall_net::limit::ConcurrencyLimitConfig>,
    /// Injected delays and failures, for chaos drills.
    pub faults: Option<polycall_net::fault::FaultConfig>,
}

impl QosConfig {
    /// Sets which principals may call which methods (`permission_denied` otherwise).
    pub fn policy(mut self, policy: impl Into<Arc<polycall_security::authz::Policy>>) -> Self {
        self.policy = Some(policy.into());
        self
    }

    /// Sets the calls per second per client; over the rate, `busy` with a retry-after hint.
    pub fn rate_limit(mut self, rate_limit: polycall_net::rate_limit::RateLimitConfig) -> Self {
        self.rate_limit = Some(rate_limit);
        self
    }

    /// Sets the calls served at once by the whole runtime; over it, `busy` (lower classes
    /// first).
    pub fn concurrency(mut self, concurrency: polycall_net::limit::ConcurrencyLimitConfig) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Sets the injected delays and failures, for chaos drills.
    pub fn faults(mut self, faults: polycall_net::fault::FaultConfig) -> Self {
        self.faults = Some(faults);
        self
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let mut server = ServerConfig::default();
        // The runtime's own handlers answer at once or wait without computing (routing
        // forwards to a provider; state methods wait on the store's threads; nothing reads
        // disk or hashes on the connection's task), so they run inside the connection's
        // task, sparing a spawn and a wake-up per routed call.
        server.connection.spawn_handlers = false;
        Self {
            endpoint: DEFAULT_ENDPOINT
                .parse()
                .unwrap_or(Endpoint::Tcp(DEFAULT_ENDPOINT.into())),
            state_dir: PathBuf::from(".polycall"),
            server,
            qos: QosConfig::default(),
            compat: CompatConfig::default(),
            tls: None,
            insecure_remote: false,
            state: StateSettings::default(),
            debug_methods: false,
            observe: ObserveSettings::default(),
            cluster: None,
            gateway: None,
            discovery: None,
        }
    }
}

impl RuntimeConfig {
    /// Sets where to listen (port 0: any free port).
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// Sets where the runtime keeps its files (`runtime.json`, `runtime.token`).
    pub fn state_dir(mut self, state_dir: impl Into<PathBuf>) -> Self {
        self.state_dir = state_dir.into();
        self
    }

    /// Sets the listener and connection limits.
    pub fn server(mut self, server: ServerConfig) -> Self {
        self.server = server;
        self
    }

    /// Sets the rate limits, concurrency limits and fault injection applied to every call.
    pub fn qos(mut self, qos: QosConfig) -> Self {
        self.qos = qos;
        self
    }

    /// Sets how libpolycall clients (PCR1, first generation) are served on the same
    /// listener.
    pub fn compat(mut self, compat: CompatConfig) -> Self {
        self.compat = compat;
        self
    }

    /// Sets the TLS 1.3 settings to serve with (plain TCP when not set).
    pub fn tls(mut self, tls: polycall_security::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets whether to listen on a non-loopback address without TLS and authentication.
    pub fn insecure_remote(mut self, insecure_remote: bool) -> Self {
        self.insecure_remote = insecure_remote;
        self
    }

    /// Serves the methods over HTTP/JSON too (docs/gateway.md).
    pub fn gateway(mut self, gateway: GatewaySettings) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Finds other runtimes and forwards calls for methods served elsewhere
    /// (docs/gateway.md, "Discovery").
    pub fn discovery(mut self, discovery: DiscoverySettings) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Makes this runtime a member of a cluster (needs the `cluster` feature).
    pub fn cluster(mut self, cluster: ClusterSettings) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Sets where the state machines' definitions and their database are.
    pub fn state(mut self, state: StateSettings) -> Self {
        self.state = state;
        self
    }

    /// Sets whether `debug.echo` and `debug.sleep` are served.
    pub fn debug_methods(mut self, debug_methods: bool) -> Self {
        self.debug_methods = debug_methods;
        self
    }

    /// Sets how the runtime measures and shows itself (metrics, traces, admin listener).
    pub fn observe(mut self, observe: ObserveSettings) -> Self {
        self.observe = observe;
        self
    }
}

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The endpoint could not be bound.
    #[error(
        "cannot listen on {endpoint}: {source} (is another runtime running? use --endpoint 127.0.0.1:0 for any free port)"
    )]
    Bind {
        /// The endpoint.
        endpoint: Endpoint,
        /// The cause.
        source: std::io::Error,
    },
    /// A non-loopback endpoint without TLS and authentication.
    #[error(
        "refusing to listen on {endpoint} without {missing}: anyone who can reach it could call every method. \
         Enable [tls] and [auth] (anonymous = false with tokens, users or certificates), listen on 127.0.0.1, \
         or pass --insecure-remote if the network itself is trusted"
    )]
    InsecureRemote {
        /// The endpoint.
        endpoint: Endpoint,
        /// What is missing ("TLS", "authentication", or both).
        missing: String,
    },
    /// The TLS settings could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] polycall_security::Error),
    /// The state machines could not be loaded (definition errors with file:line:col)
    /// or their database could not be opened or recovered.
    #[error("state machines: {0}")]
    State(String),
    /// Something configured that this build leaves out.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The admin listener could not start.
    #[error("admin listener: {0}")]
    Admin(#[from] polycall_observe::admin::AdminError),
    /// The HTTP gateway could not start.
    #[error("HTTP gateway: {0}")]
    Gateway(#[from] polycall_gateway::GatewayError),
    /// The gateway's routes file could not be read or is wrong.
    #[error("HTTP gateway routes: {0}")]
    GatewayRoutes(#[from] polycall_gateway::RouteFileError),
    /// The state directory could not be written.
    #[error("cannot write the state directory {dir}: {source}")]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

pub(crate) struct State {
    pub(crate) registry: Registry,
    /// The state machines and their instances (none loaded: `None`).
    pub(crate) machines: Option<Arc<polycall_state::StateHost>>,
    pub(crate) builtins: Router,
    /// Whether any of the runtime's own methods streams.
    pub(crate) builtins_stream: bool,
    started: Instant,
    token: String,
    shutdown: watch::Sender<bool>,
    endpoint: std::sync::OnceLock<Endpoint>,
    connections: std::sync::OnceLock<Arc<Server>>,
    /// The QoS layers in force, and a counter bumped whenever they change.
    qos: std::sync::RwLock<Arc<Qos>>,
    qos_generation: AtomicU64,
    /// Where the configuration came from and how its last reload went (sys.health).
    config_status: std::sync::Mutex<serde_json::Value>,
    /// When the TLS certificate in force stops being valid (`sys.health` warns ahead).
    tls_not_after: std::sync::Mutex<Option<std::time::SystemTime>>,
    /// Metrics, spans, history, anomalies and ejections.
    pub(crate) observer: Observer,
    /// Whether calls pass the measuring layer.
    pub(crate) observe_metrics: bool,
    /// What every connection sent, per compression algorithm and method (`None` with
    /// observability off).
    pub(crate) compression: Option<Arc<polycall_proto::compress::CompressionTotals>>,
    /// Transitions fired per machine and transition (the state follower counts them).
    pub(crate) transitions: observe::TransitionCounts,
    /// The cluster node, when this runtime is a member of one.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<cluster::Cluster>,
    /// Set once the HTTP gateway serves: its routes file, if any (`sys.describe`
    /// shows each method's HTTP routes).
    pub(crate) gateway_routes: std::sync::OnceLock<Option<Arc<polycall_gateway::Routes>>>,
    /// The other runtimes, when discovery is on.
    pub(crate) discovery: Option<Arc<discovery::Discovery>>,
    /// Each instance's machine and current states, for the dashboard.
    pub(crate) instance_states:
        std::sync::Mutex<std::collections::BTreeMap<String, (String, Vec<String>)>>,
    /// The TLS settings in force and the listener's configuration slot, for reloads.
    tls: std::sync::Mutex<
        Option<(
            polycall_security::ServerTls,
            polycall_net::tls::ServerConfigSlot,
        )>,
    >,
}

/// The runtime's QoS layers over routing, as one connection (or the legacy listener)
/// uses them: rebuilt when the configuration changes, so a reload applies to
/// connections already open without dropping them.
#[derive(Clone)]
pub(crate) struct LiveStack {
    state: Arc<State>,
    cached: Arc<std::sync::Mutex<Stacks>>,
}

/// The layers in force for one configuration generation: over routing (unary calls),
/// and over the admission of a streaming call.
struct Stacks {
    generation: u64,
    route: BoxHandler,
    admit: BoxHandler,
}

impl LiveStack {
    pub(crate) fn new(state: Arc<State>) -> Self {
        let stacks = Self::build(&state);
        Self {
            state,
            cached: Arc::new(std::sync::Mutex::new(stacks)),
        }
    }

    fn build(state: &Arc<State>) -> Stacks {
        let generation = state.qos_generation.load(Ordering::Acquire);
        let qos = state.qos.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut route = qos.stack(connection::Route {
            state: state.clone(),
        });
        if state.observe_metrics {
            // Outermost: refused, shed and failed calls are counted with their codes.
            use tower::Layer;
            route = BoxHandler::new(
                state
                    .observer
                    .layer(polycall_observe::metrics::Side::Server)
                    .layer(route),
            );
        }
        Stacks {
            generation,
            route,
            admit: qos.stack(connection::Admit),
        }
    }

    fn with<T>(&self, pick: impl FnOnce(&Stacks) -> T) -> T {
        let generation = self.state.qos_generation.load(Ordering::Acquire);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.generation != generation {
            *cached = Self::build(&self.state);
        }
        pick(&cached)
    }

    /// The stack in force now.
    pub(crate) fn current(&self) -> BoxHandler {
        self.with(|s| s.route.clone())
    }

    /// The same layers over the admission of a streaming call: authorization, rate
    /// limits and faults apply to a stream as it opens (a concurrency limit counts its
    /// opening, not its whole life).
    pub(crate) fn admission(&self) -> BoxHandler {
        self.with(|s| s.admit.clone())
    }
}

impl State {
    fn token_matches(&self, t: &str) -> bool {
        // The token guards shutdown: compared in constant time.
        polycall_security::token::constant_time_eq(t.as_bytes(), self.token.as_bytes())
    }

    fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// The shape of method `service.method` served here or, through discovery, by
    /// another runtime (`None`: served nowhere this runtime knows). The common case —
    /// nothing streams — needs no lookup.
    pub(crate) fn kind(&self, service: &str, method: &str) -> Option<polycall_core::CallKind> {
        if self.nothing_streams() {
            return Some(polycall_core::CallKind::Unary);
        }
        match (
            polycall_core::ServiceName::new(service),
            polycall_core::MethodName::new(method),
        ) {
            (Ok(s), Ok(m)) => self.kind_of(&s, &m),
            _ => self.builtins.info(service, method).map(|i| i.kind),
        }
    }

    /// Whether no method served here or known through discovery streams.
    fn nothing_streams(&self) -> bool {
        let remote_streams = self
            .discovery
            .as_ref()
            .is_some_and(|d| d.stream_kind_known());
        !self.registry.any_streaming() && !self.builtins_stream && !remote_streams
    }

    /// [`State::kind`] of names already checked (no allocation on the way).
    pub(crate) fn kind_of(
        &self,
        service: &polycall_core::ServiceName,
        method: &polycall_core::MethodName,
    ) -> Option<polycall_core::CallKind> {
        if self.nothing_streams() {
            return Some(polycall_core::CallKind::Unary);
        }
        if let Some(info) = self.builtins.info(service.as_str(), method.as_str()) {
            return Some(info.kind);
        }
        self.registry.kind(service, method).or_else(|| {
            self.discovery
                .as_ref()?
                .stream_kind(&format!("{service}.{method}"))
        })
    }

    fn describe(&self) -> serde_json::Value {
        let mut methods: Vec<serde_json::Value> = self
            .builtins
            .describe()
            .into_iter()
            .map(|d| json!({"name": d.name, "summary": d.info.summary, "input": d.info.input, "output": d.info.output, "idempotent": d.info.idempotent, "kind": d.info.kind, "provided_by": "runtime"}))
            .collect();
        for (name, info, ids) in self.registry.snapshot() {
            methods.push(json!({"name": name, "summary": info.summary, "input": info.input, "output": info.output, "idempotent": info.idempotent, "kind": info.kind, "provided_by": ids.iter().map(|i| format!("provider-{i}")).collect::<Vec<_>>()}));
        }
        if let Some(routes) = self.gateway_routes.get() {
            for m in &mut methods {
                let name = m["name"].as_str().unwrap_or_default().to_owned();
                m["http"] = gateway::http_of(routes.as_deref(), &name);
            }
        }
        json!({ "methods": methods })
    }

    /// Why the runtime is not fully well: a rejected configuration reload, a state
    /// store whose last commit failed, a TLS certificate close to its expiry, a method
    /// behaving anomalously.
    fn degraded_reasons(&self, config: &serde_json::Value) -> Vec<String> {
        let mut reasons = Vec::new();
        for a in self.observer.anomalies() {
            reasons.push(format!("anomaly: {}", a.evidence()));
        }
        let reload = &config["last_reload"];
        if reload["ok"] == json!(false) {
            let first = reload["errors"][0].as_str().unwrap_or("see the log");
            reasons.push(format!(
                "the last configuration reload was rejected ({first}); the previous configuration is running"
            ));
        }
        if let Some(host) = &self.machines {
            let stats = host.store().stats();
            if stats.failing {
                reasons.push(format!(
                    "state store: its last commit failed ({} failed so far), so state writes are refused; see the log",
                    stats.failures
                ));
            }
        }
        let not_after = *self.tls_not_after.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = not_after {
            let now = std::time::SystemTime::now();
            match t.duration_since(now) {
                Err(_) => reasons.push(
                    "the TLS certificate has expired: clients refuse the handshake; issue a new one and reload".into(),
                ),
                Ok(left) if left < CERT_EXPIRY_WARNING => reasons.push(format!(
                    "the TLS certificate expires in {} hours; issue a new one and reload (SIGHUP)",
                    left.as_secs() / 3600
                )),
                Ok(_) => {}
            }
        }
        reasons
    }

    fn health(&self) -> serde_json::Value {
        let config = self
            .config_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reasons = self.degraded_reasons(&config);
        json!({
            "status": if reasons.is_empty() { "ok" } else { "degraded" },
            "reasons": reasons,
            "config": config,
            "version": env!("CARGO_PKG_VERSION"),
            "endpoint": self.endpoint.get().map(ToString::to_string),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "connections": self.connections.get().map_or(0, |s| s.connections()),
            "providers": self.registry.providers(),
            "methods": self.builtins.len() + self.registry.snapshot().len(),
            "anomalies": self.observer.anomalies(),
            "ejected": self.observer.ejections().list().into_iter()
                .map(|(m, e)| json!({"method": m, "provider": format!("provider-{e}")}))
                .collect::<Vec<_>>(),
        })
    }
}

/// A running runtime.
pub struct Runtime {
    state: Arc<State>,
    server: Arc<Server>,
    shutdown_rx: watch::Receiver<bool>,
    admin: Option<polycall_observe::admin::AdminServer>,
    gateway: Option<polycall_gateway::Gateway>,
    source: Arc<observe::RuntimeSource>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("endpoint", self.local_endpoint())
            .finish()
    }
}

/// The runtime's quality-of-service layers, shared by every connection.
struct Qos {
    policy: Option<Arc<polycall_security::authz::Policy>>,
    authorize: Option<polycall_net::authorize::AuthorizeLayer>,
    rate: Option<polycall_net::rate_limit::RateLimitLayer>,
    limit: Option<polycall_net::limit::ConcurrencyLimitLayer>,
    faults: Option<polycall_net::fault::FaultInjectionLayer>,
}

impl Qos {
    fn new(c: &QosConfig) -> Self {
        Self {
            policy: c.policy.clone(),
            authorize: c
                .policy
                .clone()
                .filter(|p| !p.is_open())
                .map(polycall_net::authorize::AuthorizeLayer::new),
            rate: c
                .rate_limit
                .clone()
                .map(polycall_net::rate_limit::RateLimitLayer::new),
            limit: c
                .concurrency
                .clone()
                .map(polycall_net::limit::ConcurrencyLimitLayer::new),
            faults: c
                .faults
                .clone()
                .map(polycall_net::fault::FaultInjectionLayer::new),
        }
    }

    /// authorization → rate limit → concurrency limit → faults → `inner`, each only when
    /// configured.
    fn stack(&self, inner: impl polycall_core::Handler) -> BoxHandler {
        use tower::Layer;
        let mut s = BoxHandler::new(inner);
        if let Some(f) = &self.faults {
            s = BoxHandler::new(f.layer(s));
        }
        if let Some(l) = &self.limit {
            s = BoxHandler::new(l.layer(s));
        }
        if let Some(r) = &self.rate {
            s = BoxHandler::new(r.layer(s));
        }
        if let Some(a) = &self.authorize {
            s = BoxHandler::new(a.layer(s));
        }
        s
    }
}

/// Refuses a listener others can reach unless it is secured (or the operator said the
/// network is trusted).
fn check_exposure(config: &RuntimeConfig) -> Result<(), RuntimeError> {
    if config.insecure_remote || config.endpoint.is_loopback() {
        return Ok(());
    }
    let authenticated = config
        .server
        .connection
        .authenticator
        .as_ref()
        .is_some_and(|a| !a.methods().contains(&polycall_proto::AuthMethod::None));
    let missing = match (config.tls.is_some(), authenticated) {
        (true, true) => return Ok(()),
        (false, true) => "TLS",
        (true, false) => "authentication",
        (false, false) => "TLS and authentication",
    };
    Err(RuntimeError::InsecureRemote {
        endpoint: config.endpoint.clone(),
        missing: missing.into(),
    })
}

/// Loads the machine definitions (none without a machine directory).
fn load_machines(config: &RuntimeConfig) -> Result<Vec<polycall_state::Machine>, RuntimeError> {
    let Some(dir) = &config.state.machine_dir else {
        return Ok(Vec::new());
    };
    let machines =
        polycall_state::load::from_dir(dir).map_err(|e| RuntimeError::State(format!("\n{e}")))?;
    if machines.is_empty() {
        tracing::warn!(dir = %dir.display(), "no machine definitions (*.toml) found");
    }
    Ok(machines)
}

/// Recovers the instances of `machines` from the database.
fn open_machines(
    config: &RuntimeConfig,
    machines: Vec<polycall_state::Machine>,
) -> Result<Option<Arc<polycall_state::StateHost>>, RuntimeError> {
    if machines.is_empty() {
        return Ok(None);
    }
    let db = config
        .state
        .database
        .clone()
        .unwrap_or_else(|| config.state_dir.join("state.redb"));
    let mut store = polycall_state::StoreConfig::new(db);
    store.batch_window = config.state.batch_window;
    store.keep_snapshots = config.state.keep_snapshots;
    let host = polycall_state::StateHost::open(machines, store)
        .map_err(|e| RuntimeError::State(e.to_string()))?;
    tracing::info!(
        machines = host.machines().count(),
        last_index = host.last_index(),
        "state machines loaded and instances recovered"
    );
    Ok(Some(Arc::new(host)))
}

impl Runtime {
    /// Starts listening and serving.
    pub async fn start(mut config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        check_exposure(&config)?;
        let mut tls_slot = None;
        if let Some(tls) = &config.tls {
            let transport = polycall_net::tls::Tls::server(tls.build()?)
                .over(Arc::new(polycall_net::TunedTcp::default()));
            tls_slot = transport.server_config_slot();
            config.server.transport = Arc::new(transport);
        }
        let definitions = load_machines(&config)?;
        #[cfg(feature = "cluster")]
        let (cluster, definitions) = match &config.cluster {
            Some(settings) => (
                Some(cluster::start(&config, settings, definitions).await?),
                Vec::new(),
            ),
            None => (None, definitions),
        };
        #[cfg(not(feature = "cluster"))]
        if config.cluster.is_some() {
            return Err(RuntimeError::State(
                "this build leaves clusters out: enable polycall's `raft` feature".into(),
            ));
        }
        let machines = open_machines(&config, definitions)?;
        let tls_not_after = match &config.tls {
            Some(t) => Some(t.not_after()?),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let observer = Observer::new(config.observe.tracer()?);
        let compression = config
            .observe
            .metrics
            .then(|| Arc::new(polycall_proto::compress::CompressionTotals::default()));
        config.server.connection.proto.compression_totals = compression.clone();
        let discovery = match &config.discovery {
            Some(d) => Some(Arc::new(
                discovery::Discovery::new(d.clone(), dial::peer_channel(&config)?)
                    .map_err(|e| RuntimeError::State(format!("discovery: {e}")))?,
            )),
            None => None,
        };
        let state = Arc::new_cyclic(|weak| {
            let own = builtins::router(weak.clone(), config.debug_methods, config.compat.fixtures)
                .merge(&observe::router(weak.clone()));
            let own = match &discovery {
                Some(_) => own.merge(&discovery::router(weak.clone())),
                None => own,
            };
            let builtins = match &machines {
                Some(host) => own.merge(&state_service::router(host, weak.clone())),
                None => own,
            };
            #[cfg(feature = "cluster")]
            let builtins = match &cluster {
                Some(c) => builtins.merge(&cluster::router(c, weak.clone())),
                None => builtins,
            };
            let builtins_stream = builtins
                .describe()
                .iter()
                .any(|d| d.info.kind.is_streaming());
            State {
                registry: Registry::default(),
                builtins,
                builtins_stream,
                machines: machines.clone(),
                started: Instant::now(),
                token: polycall_security::token::generate(),
                shutdown,
                endpoint: std::sync::OnceLock::new(),
                connections: std::sync::OnceLock::new(),
                qos: std::sync::RwLock::new(Arc::new(Qos::new(&config.qos))),
                qos_generation: AtomicU64::new(0),
                config_status: std::sync::Mutex::new(json!({"source": "embedded defaults"})),
                tls_not_after: std::sync::Mutex::new(tls_not_after),
                tls: std::sync::Mutex::new(config.tls.clone().zip(tls_slot)),
                observer: observer.clone(),
                observe_metrics: config.observe.metrics,
                compression,
                transitions: Default::default(),
                instance_states: Default::default(),
                #[cfg(feature = "cluster")]
                cluster,
                gateway_routes: std::sync::OnceLock::new(),
                discovery: discovery.clone(),
            }
        });
        let source: Arc<observe::RuntimeSource> = Arc::new(observe::RuntimeSource {
            state: Arc::downgrade(&state),
        });
        observer.start_sampler(Some(source.clone()));
        if machines.is_some() {
            observe::follow_state(Arc::downgrade(&state), observer.clone());
        }
        let next_provider = Arc::new(AtomicU64::new(1));
        let make_state = state.clone();
        #[cfg_attr(not(feature = "compat"), allow(unused_mut))]
        let mut server_config = config.server.clone();
        #[cfg(not(feature = "compat"))]
        if config.compat.any() {
            tracing::warn!(
                "libpolycall dialects are not served: this build leaves them out (enable polycall's `compat` feature)"
            );
        }
        #[cfg(feature = "compat")]
        if config.compat.any() {
            let policy = compat::LegacyPolicy::new(
                &config.compat,
                config.server.connection.authenticator.clone(),
                !config.endpoint.is_loopback(),
            );
            if let Some(why) = &policy.refused {
                tracing::warn!("libpolycall dialects are not served: {why}");
            }
            server_config.legacy = Some(Arc::new(compat::Compat::new(
                state.clone(),
                LiveStack::new(state.clone()),
                config.compat.clone(),
                policy,
            )));
        }
        let make = Arc::new(
            move |conn: &ConnectionHandle, peer: &polycall_net::Peer| -> SharedHandler {
                Arc::new(connection::RuntimeConnection {
                    state: make_state.clone(),
                    connection: conn.clone(),
                    provider_id: next_provider.fetch_add(1, Ordering::Relaxed),
                    anonymous: peer.anonymous(),
                    stack: LiveStack::new(make_state.clone()),
                })
            },
        );
        let server = Server::serve(config.endpoint.clone(), server_config, make)
            .await
            .map_err(|source| RuntimeError::Bind {
                endpoint: config.endpoint.clone(),
                source,
            })?;
        let server = Arc::new(server);
        let _ = state.endpoint.set(server.local_endpoint().clone());
        let _ = state.connections.set(server.clone());
        if let Some(every) = config.state.backup_every {
            let dir = config
                .state
                .backup_dir
                .clone()
                .unwrap_or_else(|| config.state_dir.join("backups"));
            let keep = config.state.backup_keep;
            if let Some(host) = &machines {
                state_service::schedule_backups(host.clone(), dir.clone(), every, keep);
            }
            #[cfg(feature = "cluster")]
            if let Some(cluster) = state.cluster.as_ref() {
                // The replicated host's backups hold the eventual instances too.
                match (&cluster.host, &cluster.eventual) {
                    (Some(host), _) => {
                        state_service::schedule_backups(host.clone(), dir, every, keep);
                    }
                    (None, Some(eventual)) => {
                        state_service::schedule_backups(eventual.clone(), dir, every, keep);
                    }
                    (None, None) => {}
                }
            }
        }
        let admin = match config.observe.admin {
            Some(addr) => {
                // Off the connections' event loop: admin requests and their TLS
                // handshakes run on the offload runtime.
                let mut admin_config = polycall_observe::admin::AdminConfig::new(addr)
                    .allow_remote(config.insecure_remote)
                    .runtime(polycall_net::offload::handle().clone());
                let tokens = config
                    .server
                    .connection
                    .authenticator
                    .as_ref()
                    .is_some_and(|a| a.methods().contains(&polycall_proto::AuthMethod::Token));
                let admin_secured = config.tls.is_some() && tokens;
                if let Some(tls) = &config.tls
                    && tokens
                {
                    admin_config =
                        admin_config
                            .tls(tls.build()?)
                            .access(Arc::new(observe::AdminAccess {
                                state: Arc::downgrade(&state),
                            }));
                }
                let admin =
                    polycall_observe::admin::serve(admin_config, observer.clone(), source.clone())
                        .await?;
                tracing::info!(
                    "admin pages on {}://{}/ (metrics, healthz, readyz, dashboard)",
                    if config.tls.is_some() && admin_secured {
                        "https"
                    } else {
                        "http"
                    },
                    admin.local_addr()
                );
                Some(admin)
            }
            None => None,
        };
        let gateway = match &config.gateway {
            Some(g) => {
                let mut gateway_config = polycall_gateway::GatewayConfig::new(g.listen)
                    .max_body(g.max_body)
                    .default_timeout(g.timeout)
                    .allow_remote(config.insecure_remote)
                    .title("polycall runtime");
                let routes = g.compile_routes()?;
                if let Some(routes) = &routes {
                    gateway_config = gateway_config.routes(routes.clone());
                }
                let _ = state.gateway_routes.set(routes);
                if let Some(tls) = &config.tls {
                    gateway_config = gateway_config.tls(tls.build()?);
                }
                let backend = Arc::new(gateway::RuntimeBackend {
                    state: state.clone(),
                    stack: LiveStack::new(state.clone()),
                    auth: config.server.connection.authenticator.clone(),
                });
                let gateway = polycall_gateway::serve(gateway_config, backend).await?;
                tracing::info!(
                    "HTTP gateway on {}://{}/ (POST /v1/{{service}}/{{method}}, /openapi.json, /docs)",
                    if config.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    },
                    gateway.local_addr()
                );
                Some(gateway)
            }
            None => None,
        };
        if let Some(d) = &state.discovery {
            d.start(Arc::downgrade(&state), server.local_endpoint().to_string());
        }
        let runtime = Runtime {
            state,
            server,
            shutdown_rx,
            admin,
            gateway,
            source,
        };
        runtime.write_state(&config.state_dir)?;
        Ok(runtime)
    }

    fn write_state(&self, dir: &std::path::Path) -> Result<(), RuntimeError> {
        let err = |source| RuntimeError::StateDir {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let info = json!({
            "endpoint": self.local_endpoint().to_string(),
            "http": self.gateway.as_ref().map(|g| g.local_addr().to_string()),
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
        });
        std::fs::write(dir.join("runtime.json"), format!("{info:#}\n")).map_err(err)?;
        polycall_security::private_file::replace(
            &dir.join("runtime.token"),
            self.state.token.as_bytes(),
        )
        .map_err(err)?;
        Ok(())
    }

    /// Reads the TLS certificate chain, key, CA bundle and revocation lists again — or
    /// uses `settings` instead, when given — for every connection from now on; open
    /// connections keep theirs. On an error the settings in force stay. Returns false
    /// when the runtime does not serve TLS.
    pub fn reload_tls(
        &self,
        settings: Option<polycall_security::ServerTls>,
    ) -> Result<bool, RuntimeError> {
        let mut tls = self.state.tls.lock().unwrap_or_else(|e| e.into_inner());
        let Some((current, slot)) = tls.as_mut() else {
            return Ok(false);
        };
        let next = settings.unwrap_or_else(|| current.clone());
        slot.replace(next.build()?);
        *self
            .state
            .tls_not_after
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = next.not_after().ok();
        *current = next;
        tracing::info!("TLS certificates reloaded");
        Ok(true)
    }

    /// Replaces the QoS layers (authorization, rate limit, concurrency limit, faults) for
    /// every call from now on, on connections already open too. Rate-limit buckets start
    /// afresh.
    pub fn update_qos(&self, qos: &QosConfig) {
        *self.state.qos.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Qos::new(qos));
        self.state.qos_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes the listener's settings for what comes next: connection cap and drain
    /// timeout at once, connection limits and timeouts for connections accepted from now
    /// on (open ones keep what they negotiated).
    pub fn update_server(&self, f: impl FnOnce(&mut ServerConfig)) {
        let totals = self.state.compression.clone();
        self.server.update(|s| {
            f(s);
            // New connection settings keep counting into the same totals.
            s.connection.proto.compression_totals = totals;
        });
    }

    /// Records where the configuration came from and how its last reload went; shown
    /// under `config` in `sys.health`.
    pub fn set_config_status(&self, status: serde_json::Value) {
        *self
            .state
            .config_status
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Where the runtime listens.
    pub fn local_endpoint(&self) -> &Endpoint {
        self.server.local_endpoint()
    }

    /// The state machines and their instances, when any are loaded.
    pub fn machines(&self) -> Option<&Arc<polycall_state::StateHost>> {
        self.state.machines.as_ref()
    }

    /// Where the admin listener listens, when it runs.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// Where the HTTP gateway listens, when it is on.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway.as_ref().map(|g| g.local_addr())
    }

    /// What the runtime measures: metrics, history, anomalies, ejections.
    pub fn observer(&self) -> &Observer {
        &self.state.observer
    }

    /// Everything `/metrics` serves, in the OpenMetrics text format: the call families,
    /// the runtime's own (providers, QoS, compression, state machines), the process's.
    pub fn metrics_text(&self) -> String {
        use polycall_observe::Source;
        self.state.observer.encode_text(&self.source.families())
    }

    /// The registry of provided methods.
    pub fn registry(&self) -> &Registry {
        &self.state.registry
    }

    /// The token `sys.shutdown` requires (also in `runtime.token` in the state directory).
    pub fn shutdown_token(&self) -> &str {
        &self.state.token
    }

    /// Resolves when someone called `sys.shutdown` with the right token.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown_rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Graceful shutdown: stop accepting, finish calls in flight within the drain
    /// timeout, tell every peer.
    pub async fn shutdown(&self) {
        // Other runtimes stop sending calls here first.
        if let Some(d) = &self.state.discovery {
            d.stop().await;
        }
        self.server.shutdown().await;
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.state.cluster {
            c.node.shutdown().await;
        }
    }

    /// The cluster node, when this runtime is a member of a cluster.
    #[cfg(feature = "cluster")]
    pub fn cluster_node(&self) -> Option<&Arc<polycall_state::raft::Node>> {
        self.state.cluster.as_ref().map(|c| &c.node)
    }
}
