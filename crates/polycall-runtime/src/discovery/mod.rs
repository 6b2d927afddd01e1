//! Runtimes that find each other: each registers itself and the methods its providers
//! serve in a registry, watches the registry, and forwards a call for a method no local
//! provider serves to a healthy runtime that serves it.
//!
//! - **Registries** ([`DiscoveryRegistry`]): static seeds (runtime endpoints listed in the
//!   config; each is asked who it is and what it serves), etcd ([`etcd`]: entries under
//!   a lease, gone within its TTL when a runtime dies) or the targets of a DNS SRV
//!   record ([`dns`]).
//! - **Health**: every `refresh`, each known runtime is asked `sys.discovery.self`
//!   (active check: its name and methods, fresh); a runtime that does not answer in
//!   time is out of rotation until it answers again. A forwarded call that finds the
//!   runtime unreachable ejects it at once (passive).
//! - **Forwarding**: one balancer per method over the healthy runtimes serving it —
//!   power of two choices over peak-EWMA latency (`polycall_net::balance`) — with the
//!   call's remaining deadline and its principal; the call is marked `forwarded`, so the
//!   runtime that receives it serves it locally or answers `unknown_method`, never
//!   forwards it again. Streams are forwarded the same way (to the runtimes serving
//!   them in turn), the reply stream passed through.

mod dns;
mod etcd;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use polycall_core::{BoxFuture, Call, CallKind, MessageStream, Reply, Status, StreamCall};
use polycall_net::balance::{Balance, BalanceConfig};
use polycall_net::{Channel, ChannelConfig};
use serde::{Deserialize, Serialize};
use tower_service::Service;

use crate::State;

pub use polycall_config::DiscoveryRegistry;

/// How a runtime takes part in discovery (`polycall run --discover …`, `[discovery]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiscoverySettings {
    /// Where runtimes find each other.
    pub registry: DiscoveryRegistry,
    /// This runtime's name in the registry (default: its advertised endpoint).
    pub name: Option<String>,
    /// The endpoint other runtimes dial (default: the endpoint it listens on).
    pub advertise: Option<String>,
    /// How long an etcd registration outlives its runtime (default 10 s).
    pub ttl: Duration,
    /// How often the registry is read and every runtime checked (default 1 s).
    pub refresh: Duration,
}

impl DiscoverySettings {
    /// Discovery through `registry`, with the defaults above.
    pub fn new(registry: DiscoveryRegistry) -> Self {
        Self {
            registry,
            name: None,
            advertise: None,
            ttl: Duration::from_secs(10),
            refresh: Duration::from_secs(1),
        }
    }

    /// Sets this runtime's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the endpoint other runtimes dial.
    pub fn advertise(mut self, endpoint: impl Into<String>) -> Self {
        self.advertise = Some(endpoint.into());
        self
    }

    /// Sets the etcd lease's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how often the registry is read and runtimes checked.
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(100));
        self
    }
}

/// What a runtime says of itself in the registry and to `sys.discovery.self`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) endpoint: String,
    /// The methods its providers serve.
    pub(crate) methods: Vec<String>,
    /// The shape of those that stream (the others are unary).
    #[serde(default)]
    pub(crate) streams: BTreeMap<String, CallKind>,
}

/// Another runtime, as this one knows it.
struct Peer {
    endpoint: String,
    /// Its name and methods as it last answered (`None`: never answered).
    entry: Mutex<Option<Entry>>,
    channel: tokio::sync::Mutex<Option<Channel>>,
    /// Answering health checks and not ejected.
    healthy: AtomicBool,
    last_ok: Mutex<Option<Instant>>,
}

/// A peer as a balancer endpoint: calls go over its channel; one that finds it
/// unreachable takes it out of rotation until a health check sees it again.
#[derive(Clone)]
struct PeerService {
    peer: Arc<Peer>,
    channel: Channel,
    discovery: Weak<Discovery>,
}

impl Service<Call> for PeerService {
    type Response = Reply;
    type Error = Status;
    type Future = BoxFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let (peer, channel, discovery) = (
            self.peer.clone(),
            self.channel.clone(),
            self.discovery.clone(),
        );
        Box::pin(async move {
            let r = channel.call(call).await;
            if let Err(s) = &r
                && unreachable(s)
                && let Some(d) = discovery.upgrade()
            {
                d.eject(&peer);
            }
            r
        })
    }
}

/// Where the other runtimes' endpoints come from.
enum Source {
    Seeds(Vec<String>),
    Etcd(etcd::Etcd),
    Dns(dns::DnsSrv),
}

/// A call that never reached the runtime it was sent to (it could not be reached): it
/// did not run, so it may go to another.
fn unreachable(s: &Status) -> bool {
    s.code == polycall_core::Code::Unavailable && s.not_executed
}

/// How many runtimes a call that finds its runtime unreachable tries in all.
const ATTEMPTS: usize = 3;

/// Sends a call to one of the runtimes serving its method.
pub(crate) struct Forwarder {
    balance: Balance<PeerService>,
}

impl Forwarder {
    /// Forwards `call`, marked so the runtime receiving it does not forward it again. A
    /// runtime found unreachable is ejected and the call — which never ran — goes to
    /// another runtime serving the method, up to [`ATTEMPTS`] in all.
    pub(crate) fn send(mut self, mut call: Call) -> BoxFuture {
        call.metadata.forwarded = true;
        Box::pin(async move {
            let mut attempt = 1;
            loop {
                std::future::poll_fn(|cx| self.balance.poll_ready(cx)).await?;
                match self.balance.call(call.clone()).await {
                    Err(s) if unreachable(&s) && attempt < ATTEMPTS && !self.balance.is_empty() => {
                        attempt += 1;
                    }
                    r => return r,
                }
            }
        })
    }
}

/// This runtime's view of the others.
pub(crate) struct Discovery {
    settings: DiscoverySettings,
    /// Taken by the task [`Discovery::start`] spawns.
    source: Mutex<Option<Source>>,
    /// Set by [`Discovery::stop`]: the task withdraws this runtime and ends.
    stop: tokio::sync::watch::Sender<bool>,
    /// Resolves once the task ended (taken by [`Discovery::stop`]).
    done: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    channel_config: ChannelConfig,
    /// Set once the listener is bound.
    me: Mutex<Entry>,
    peers: RwLock<BTreeMap<String, Arc<Peer>>>,
    /// One balancer per method over the healthy runtimes serving it.
    methods: RwLock<HashMap<String, Balance<PeerService>>>,
    /// The streaming methods served elsewhere, their shape and the runtimes in rotation
    /// serving them.
    streams: RwLock<HashMap<String, (CallKind, Vec<PeerService>)>>,
    /// Whether `streams` has any (the common case, none, needs no lookup per call).
    any_streams: AtomicBool,
    /// Turns taken among the runtimes serving a stream.
    turn: std::sync::atomic::AtomicUsize,
}

/// How long a health check waits.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

impl Discovery {
    pub(crate) fn new(
        settings: DiscoverySettings,
        channel_config: ChannelConfig,
    ) -> Result<Self, String> {
        let source = match &settings.registry {
            DiscoveryRegistry::Seeds(seeds) => Source::Seeds(seeds.clone()),
            DiscoveryRegistry::Etcd { endpoints, prefix } => {
                Source::Etcd(etcd::Etcd::new(endpoints, prefix, settings.ttl)?)
            }
            DiscoveryRegistry::DnsSrv { name, server } => {
                Source::Dns(dns::DnsSrv::new(name, server.as_deref())?)
            }
            other => return Err(format!("discovery through {other:?} is not built")),
        };
        Ok(Self {
            source: Mutex::new(Some(source)),
            stop: tokio::sync::watch::channel(false).0,
            done: Mutex::new(None),
            settings,
            channel_config,
            me: Mutex::new(Entry {
                name: String::new(),
                endpoint: String::new(),
                methods: Vec::new(),
                streams: BTreeMap::new(),
            }),
            streams: RwLock::new(HashMap::new()),
            any_streams: AtomicBool::new(false),
            turn: std::sync::atomic::AtomicUsize::new(0),
            peers: RwLock::new(BTreeMap::new()),
            methods: RwLock::new(HashMap::new()),
        })
    }

    /// This runtime's entry now: its name, advertised endpoint, providers' methods.
    pub(crate) fn me(&self, state: &State) -> Entry {
        let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut methods = Vec::new();
        let mut streams = BTreeMap::new();
        for (name, info, _) in state.registry.snapshot() {
            if info.kind != CallKind::Unary {
                streams.insert(name.clone(), info.kind);
            }
            methods.push(name);
        }
        methods.sort();
        me.methods = methods;
        me.streams = streams;
        me
    }

    /// Starts registering, watching and checking, once the runtime listens on
    /// `endpoint`. The task ends when the runtime's state is gone.
    pub(crate) fn start(self: &Arc<Self>, state: Weak<State>, endpoint: String) {
        {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            me.endpoint = self.settings.advertise.clone().unwrap_or(endpoint);
            me.name = self
                .settings
                .name
                .clone()
                .unwrap_or_else(|| me.endpoint.clone());
        }
        let this = self.clone();
        let Some(mut source) = self.source.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return; // started already
        };
        let mut stopping = self.stop.subscribe();
        let (done, ended) = tokio::sync::oneshot::channel();
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(ended);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.settings.refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.changed() => break,
                }
                let Some(state) = state.upgrade() else { break };
                let me = this.me(&state);
                drop(state);
                let endpoints = match &mut source {
                    Source::Etcd(etcd) => {
                        if let Err(e) = etcd.publish(&me).await {
                            tracing::warn!("discovery: registering in etcd: {e}");
                        }
                        match etcd.entries().await {
                            Ok(entries) => Some(
                                entries
                                    .into_iter()
                                    .filter(|e| e.name != me.name)
                                    .map(|e| e.endpoint)
                                    .collect(),
                            ),
                            Err(e) => {
                                tracing::warn!("discovery: reading etcd: {e}");
                                None // keep what is known; health checks go on
                            }
                        }
                    }
                    Source::Seeds(seeds) => Some(seeds.clone()),
                    Source::Dns(srv) => match srv.endpoints().await {
                        Ok(endpoints) => Some(endpoints),
                        Err(e) => {
                            tracing::warn!("discovery: resolving the SRV record: {e}");
                            None // keep what is known; health checks go on
                        }
                    },
                };
                if let Some(endpoints) = endpoints {
                    this.reconcile(endpoints, &me);
                }
                this.check_all(&me).await;
                this.rebalance();
            }
            if let Source::Etcd(etcd) = &mut source {
                etcd.withdraw().await;
            }
            let _ = done.send(());
        });
    }

    /// Takes `peer` out of rotation at once (every method's balancer), until a check
    /// sees it answer again.
    fn eject(&self, peer: &Peer) {
        if peer.healthy.swap(false, Ordering::AcqRel) {
            tracing::info!(peer = %peer.endpoint, "discovery: runtime unreachable, ejected until it answers");
        }
        for balance in self
            .methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            balance.remove(&peer.endpoint);
        }
        for (_, serving) in self
            .streams
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
        {
            serving.retain(|s| s.peer.endpoint != peer.endpoint);
        }
    }

    /// Withdraws this runtime from the registry at once (an etcd entry is deleted with
    /// its lease) and stops checking the others: the first step of a graceful stop.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let ended = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ended) = ended {
            // A registry that does not answer does not hold the stop up for long.
            let _ = tokio::time::timeout(Duration::from_secs(3), ended).await;
        }
    }

    /// Knows exactly the runtimes at `endpoints` (but itself).
    fn reconcile(&self, endpoints: Vec<String>, me: &Entry) {
        let wanted: BTreeSet<String> = endpoints
            .into_iter()
            .filter(|e| *e != me.endpoint)
            .collect();
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        peers.retain(|endpoint, _| wanted.contains(endpoint));
        for endpoint in wanted {
            peers.entry(endpoint.clone()).or_insert_with(|| {
                Arc::new(Peer {
                    endpoint,
                    entry: Mutex::new(None),
                    channel: tokio::sync::Mutex::new(None),
                    healthy: AtomicBool::new(false),
                    last_ok: Mutex::new(None),
                })
            });
        }
    }

    /// Asks every known runtime who it is and what it serves, at once.
    async fn check_all(&self, me: &Entry) {
        let peers: Vec<Arc<Peer>> = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let checks = peers.iter().map(|p| self.check(p, me));
        futures_util::future::join_all(checks).await;
    }

    async fn check(&self, peer: &Arc<Peer>, me: &Entry) {
        let answer = tokio::time::timeout(CHECK_TIMEOUT, async {
            let channel = {
                let mut slot = peer.channel.lock().await;
                if slot.is_none() {
                    let endpoint = peer
                        .endpoint
                        .parse()
                        .map_err(|e| Status::invalid_input(format!("{}: {e}", peer.endpoint)))?;
                    *slot =
                        Some(Channel::with_config(endpoint, self.channel_config.clone()).await?);
                }
                slot.clone().expect("connected above")
            };
            let call = Call::new("sys.discovery.self", polycall_core::Payload::empty())
                .map_err(|e| Status::internal(e.to_string()))?;
            let reply = channel.call(call).await?;
            serde_json::from_slice::<Entry>(&reply.payload.bytes)
                .map_err(|e| Status::malformed(format!("sys.discovery.self: {e}")))
        })
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")));
        match answer {
            Ok(entry) if entry.name == me.name => {
                // Itself, under another address: never a peer.
                peer.healthy.store(false, Ordering::Release);
                *peer.entry.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Ok(entry) => {
                if !peer.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!(peer = %peer.endpoint, name = %entry.name, methods = entry.methods.len(), "discovery: runtime in rotation");
                }
                *peer.entry.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
                *peer.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            Err(e) => {
                if peer.healthy.swap(false, Ordering::AcqRel) {
                    tracing::info!(peer = %peer.endpoint, "discovery: runtime out of rotation: {e}");
                }
                if matches!(
                    e.code,
                    polycall_core::Code::Unavailable | polycall_core::Code::DeadlineExceeded
                ) {
                    *peer.channel.lock().await = None; // dial again next time
                }
            }
        }
    }

    /// Rebuilds each method's balancer from the healthy runtimes serving it, keeping
    /// the latency estimates of runtimes that stay.
    fn rebalance(self: &Arc<Self>) {
        let mut serving: HashMap<String, Vec<PeerService>> = HashMap::new();
        let mut streams: HashMap<String, (CallKind, Vec<PeerService>)> = HashMap::new();
        for peer in self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if !peer.healthy.load(Ordering::Acquire) {
                continue;
            }
            let Some(channel) = peer.channel.try_lock().ok().and_then(|c| c.clone()) else {
                continue;
            };
            let Some(entry) = peer.entry.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
                continue;
            };
            let service = PeerService {
                peer: peer.clone(),
                channel: channel.clone(),
                discovery: Arc::downgrade(self),
            };
            for method in entry.methods {
                match entry.streams.get(&method) {
                    Some(kind) => streams
                        .entry(method)
                        .or_insert_with(|| (*kind, Vec::new()))
                        .1
                        .push(service.clone()),
                    None => serving.entry(method).or_default().push(service.clone()),
                }
            }
        }
        self.any_streams
            .store(!streams.is_empty(), Ordering::Release);
        *self.streams.write().unwrap_or_else(|e| e.into_inner()) = streams;
        let mut methods = self.methods.write().unwrap_or_else(|e| e.into_inner());
        methods.retain(|m, _| serving.contains_key(m));
        for (method, services) in serving {
            let balance = methods
                .entry(method)
                .or_insert_with(|| Balance::new(BalanceConfig::default()));
            let keep: BTreeSet<&str> = services.iter().map(|s| s.peer.endpoint.as_str()).collect();
            for key in balance.keys() {
                if !keep.contains(key.as_str()) {
                    balance.remove(&key);
                }
            }
            for s in services {
                balance.push(s.peer.endpoint.clone(), s);
            }
        }
    }

    /// The way to forward `call` to a healthy runtime serving its method; `None` when
    /// none does, or the call was forwarded already.
    pub(crate) fn forwarder(&self, call: &Call) -> Option<Forwarder> {
        if call.metadata.forwarded {
            return None;
        }
        self.methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&call.full_name())
            .filter(|b| !b.is_empty())
            .cloned()
            .map(|balance| Forwarder { balance })
    }

    /// Whether any stream is served elsewhere now.
    pub(crate) fn stream_kind_known(&self) -> bool {
        self.any_streams.load(Ordering::Acquire)
    }

    /// The shape of `name` when it is a stream another runtime serves.
    pub(crate) fn stream_kind(&self, name: &str) -> Option<CallKind> {
        if !self.any_streams.load(Ordering::Acquire) {
            return None;
        }
        self.streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|(kind, _)| *kind)
    }

    /// Forwards a streaming call to a runtime in rotation serving it (in turn), marked
    /// `forwarded`; `None` when none does or it was forwarded already. The reply
    /// stream is the caller's; dropping it cancels the forwarded stream.
    pub(crate) async fn forward_stream(
        &self,
        mut call: StreamCall,
    ) -> Option<Result<MessageStream, Status>> {
        if call.metadata.forwarded {
            return None;
        }
        let (kind, target) = {
            let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
            let (kind, serving) = streams.get(&call.full_name())?;
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            (*kind, serving.get(turn % serving.len().max(1))?.clone())
        };
        call.metadata.forwarded = true;
        let opened = if kind.streams_requests() {
            target.channel.bidi(call).await
        } else {
            let StreamCall {
                service,
                method,
                metadata,
                requests,
            } = call;
            match polycall_core::stream::single(requests).await {
                Ok(payload) => {
                    target
                        .channel
                        .server_stream(Call {
                            service,
                            method,
                            payload,
                            metadata,
                        })
                        .await
                }
                Err(e) => Err(e),
            }
        };
        if let Err(s) = &opened
            && unreachable(s)
        {
            self.eject(&target.peer);
        }
        Some(opened.map(|s| Box::pin(s) as MessageStream))
    }

    /// `sys.discovery`: this runtime and every runtime it knows.
    pub(crate) fn describe(&self, state: &State) -> serde_json::Value {
        let me = self.me(state);
        let peers: Vec<serde_json::Value> = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| {
                let entry = p.entry.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let seen = p
                    .last_ok
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map(|t| t.elapsed().as_millis() as u64);
                serde_json::json!({
                    "name": entry.as_ref().map(|e| e.name.clone()),
                    "endpoint": p.endpoint,
                    "healthy": p.healthy.load(Ordering::Acquire),
                    "last_seen_ms_ago": seen,
                    "methods": entry.map(|e| e.methods).unwrap_or_default(),
                })
            })
            .collect();
        serde_json::json!({
            "registry": match &self.settings.registry {
                DiscoveryRegistry::Seeds(_) => "static",
                DiscoveryRegistry::Etcd { .. } => "etcd",
                DiscoveryRegistry::DnsSrv { .. } => "dns",
                _ => "other",
            },
            "self": me,
            "peers": peers,
        })
    }
}

/// `sys.discovery` (this runtime and every runtime it knows, for `polycall describe
/// --cluster`) and `sys.discovery.self` (what other runtimes ask in their checks).
pub(crate) fn router(state: Weak<State>) -> polycall_core::Router {
    use polycall_core::{MethodInfo, handler_fn};
    let (s1, s2) = (state.clone(), state);
    let of = |s: &Weak<State>| {
        s.upgrade()
            .ok_or_else(|| Status::unavailable("the runtime is stopping"))
    };
    polycall_core::Router::new()
        .route(
            "sys.discovery",
            MethodInfo::new("this runtime and every runtime discovery knows: endpoint, health, methods")
                .output(r#"{"registry", "self": {"name", "endpoint", "methods"}, "peers": [{"name", "endpoint", "healthy", "last_seen_ms_ago", "methods"}]}"#)
                .idempotent(true),
            handler_fn(move |_c: Call| {
                let s = of(&s1);
                async move {
                    let s = s?;
                    let d = s.discovery.as_ref().ok_or_else(|| Status::unsupported("discovery is off on this runtime"))?;
                    crate::builtins::json_reply(d.describe(&s))
                }
            }),
        )
        .and_then(|r| {
            r.route(
                "sys.discovery.self",
                MethodInfo::new("this runtime's discovery entry: name, endpoint, the methods its providers serve")
                    .output(r#"{"name", "endpoint", "methods"}"#)
                    .idempotent(true)
                    .inline(true),
                handler_fn(move |_c: Call| {
                    let s = of(&s2);
                    async move {
                        let s = s?;
                        let d = s.discovery.as_ref().ok_or_else(|| Status::unsupported("discovery is off on this runtime"))?;
                        crate::builtins::json_reply(serde_json::to_value(d.me(&s)).unwrap_or_default())
                    }
                }),
            )
        })
        .expect("the discovery methods have distinct names")
}
