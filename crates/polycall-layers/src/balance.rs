//! Load balancing over a set of endpoints.
//!
//! [`Balance`] spreads calls over endpoint services (typically one `polycall_net::Channel` per
//! endpoint) with one of three [`Strategy`]s:
//!
//! - **Power of two choices over peak EWMA** (the default, as in Finagle, linkerd and
//!   tower): each endpoint keeps an exponentially weighted moving average of its
//!   latency that jumps up to a slower sample at once (the *peak*) and decays toward
//!   faster samples with the time constant `decay`. Its cost is that estimate times
//!   (calls in flight + 1). Each call picks two endpoints at random and goes to the
//!   cheaper one: slow or busy endpoints get little traffic, yet still some, so their
//!   recovery is noticed; an endpoint that got no traffic for a while looks cheap again
//!   (its estimate decays toward zero between samples).
//! - **Round robin**: endpoints in turn.
//! - **Consistent hashing** on a key of the call: a hash ring with `virtual_nodes` points
//!   per endpoint, so the same key goes to the same endpoint while the set is unchanged,
//!   and adding or removing one of N endpoints moves only about 1/N of the keys. The key
//!   is the call's `idempotency_key` when set, else the configured key function, else
//!   `service.method`. The ring's hash is stable (FNV-1a with a 64-bit finalizer), so
//!   every process maps keys the same way.
//!
//! The set changes at run time with [`Balance::push`] and [`Balance::remove`]; clones
//! of a `Balance` share it.
//!

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Reply, Status};
use rand::Rng;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_service::Service;

crate::response_future! {
    /// The future of [`Balance`]'s calls.
    ResponseFuture
}

/// A function giving the consistent-hashing key of a call.
pub type CallKeyFn = Arc<dyn Fn(&Call) -> u64 + Send + Sync>;

/// How [`Balance`] chooses an endpoint.
#[derive(Clone)]
pub enum Strategy {
    /// Two endpoints at random, the one with the lower peak-EWMA cost wins.
    PowerOfTwoChoices {
        /// Time constant of the latency average: a sample `decay` old weighs `1/e` as
        /// much as a new one.
        decay: Duration,
        /// The latency assumed of an endpoint before its first reply.
        default_rtt: Duration,
    },
    /// Endpoints in turn.
    RoundRobin,
    /// A hash ring on a key of the call.
    ConsistentHash {
        /// Points on the ring per endpoint (more points, more even spread; 0 is read
        /// as 1).
        virtual_nodes: usize,
        /// The key of calls without an `idempotency_key`; `None` uses
        /// `service.method`.
        key: Option<CallKeyFn>,
    },
}

impl Strategy {
    /// Power of two choices with a 10 s decay and a 30 ms initial latency.
    pub fn p2c() -> Self {
        Strategy::PowerOfTwoChoices {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }

    /// Consistent hashing with 160 points per endpoint, keyed by the idempotency key or
    /// `service.method`.
    pub fn consistent_hash() -> Self {
        Strategy::ConsistentHash {
            virtual_nodes: 160,
            key: None,
        }
    }
}

impl Default for Strategy {
    fn default() -> Self {
        Self::p2c()
    }
}

impl fmt::Debug for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::PowerOfTwoChoices { decay, default_rtt } => f
                .debug_struct("PowerOfTwoChoices")
                .field("decay", decay)
                .field("default_rtt", default_rtt)
                .finish(),
            Strategy::RoundRobin => f.write_str("RoundRobin"),
            Strategy::ConsistentHash { virtual_nodes, key } => f
                .debug_struct("ConsistentHash")
                .field("virtual_nodes", virtual_nodes)
                .field("key", &key.as_ref().map(|_| ".."))
                .finish(),
        }
    }
}

/// Settings of a [`Balance`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BalanceConfig {
    /// How an endpoint is chosen for each call.
    pub strategy: Strategy,
}

impl BalanceConfig {
    /// Sets how an endpoint is chosen for each call.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
}

/// A stable 64-bit hash: FNV-1a, then MurmurHash3's finalizer for avalanche.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Peak-EWMA latency estimate of one endpoint.
#[derive(Debug)]
struct Ewma {
    rtt_ns: f64,
    updated: Instant,
}

impl Ewma {
    fn observe(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) -> f64 {
        if rtt_ns > self.rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
            let w = (-elapsed / decay_ns).exp();
            self.rtt_ns = self.rtt_ns * w + rtt_ns * (1.0 - w);
        }
        self.updated = now;
        self.rtt_ns
    }
}

#[derive(Debug)]
struct Load {
    in_flight: AtomicUsize,
    ewma: Mutex<Ewma>,
}

impl Load {
    fn new(default_rtt: Duration) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma {
                rtt_ns: default_rtt.as_nanos() as f64,
                updated: Instant::now(),
            }),
        }
    }

    fn ewma(&self) -> std::sync::MutexGuard<'_, Ewma> {
        self.ewma.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Estimate (decayed to now, toward zero) × (in flight + 1).
    fn cost(&self, now: Instant, decay_ns: f64) -> f64 {
        let rtt = self.ewma().observe(0.0, now, decay_ns);
        rtt * (self.in_flight.load(Ordering::Acquire) + 1) as f64
    }
}

struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Endpoint<S> {
    key: String,
    service: S,
    load: Arc<Load>,
}

struct State<S> {
    endpoints: Vec<Endpoint<S>>,
    /// Consistent-hashing ring: (point, endpoint index), sorted by point.
    ring: Vec<(u64, usize)>,
    next: usize,
}

impl<S> State<S> {
    fn rebuild_ring(&mut self, strategy: &Strategy) {
        self.ring.clear();
        let Strategy::ConsistentHash { virtual_nodes, .. } = strategy else {
            return;
        };
        let vnodes = (*virtual_nodes).max(1);
        for (i, e) in self.endpoints.iter().enumerate() {
            for v in 0..vnodes {
                self.ring
                    .push((stable_hash(format!("{}#{v}", e.key).as_bytes()), i));
            }
        }
        // Ties (practically never) are broken by key so every process agrees.
        let endpoints = &self.endpoints;
        self.ring.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| endpoints[a.1].key.cmp(&endpoints[b.1].key))
        });
    }

    fn ring_lookup(&self, key: u64) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let at = self.ring.partition_point(|(p, _)| *p < key);
        Some(self.ring[at % self.ring.len()].1)
    }
}

/// Applies [`Balance`] to a list of `(key, service)` endpoints.
///
/// ```no_run
/// # async fn demo() -> Result<(), polycall_core::Status> {
/// use polycall_core::{Call, Payload};
/// use polycall_net::Channel;
/// use polycall_layers::balance::{BalanceConfig, BalanceLayer, Strategy};
/// use tower::{Layer, ServiceExt};
///
/// let mut endpoints = Vec::new();
/// for addr in ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"] {
///     endpoints.push((addr.to_owned(), Channel::connect(addr.parse().unwrap()).await?));
/// }
/// let balance = BalanceLayer::new(BalanceConfig::default().strategy(Strategy::p2c())).layer(endpoints);
/// let reply = balance.oneshot(Call::new("sys.ping", Payload::empty()).unwrap()).await?;
/// # let _ = reply; Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct BalanceLayer {
    config: BalanceConfig,
}

impl BalanceLayer {
    /// A layer balancing with `config`.
    pub fn new(config: BalanceConfig) -> Self {
        Self { config }
    }
}

impl<S> Layer<Vec<(String, S)>> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, endpoints: Vec<(String, S)>) -> Balance<S> {
        let b = Balance::new(self.config.clone());
        for (key, service) in endpoints {
            b.push(key, service);
        }
        b
    }
}

/// Spreads calls over a set of endpoint services; see the [module docs](self).
pub struct Balance<S> {
    strategy: Arc<Strategy>,
    state: Arc<Mutex<State<S>>>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            strategy: self.strategy.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S> fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("strategy", &self.strategy)
            .field("endpoints", &self.keys())
            .finish()
    }
}

impl<S> Balance<S> {
    /// A balancer with no endpoints yet.
    pub fn new(config: BalanceConfig) -> Self {
        Self {
            strategy: Arc::new(config.strategy),
            state: Arc::new(Mutex::new(State {
                endpoints: Vec::new(),
                ring: Vec::new(),
                next: 0,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<S>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn default_rtt(&self) -> Duration {
        match &*self.strategy {
            Strategy::PowerOfTwoChoices { default_rtt, .. } => *default_rtt,
            _ => Duration::ZERO,
        }
    }

    /// Adds the endpoint `key` (an address, say; it places the endpoint on the hash ring).
    /// An endpoint of the same key is replaced, keeping its place.
    pub fn push(&self, key: impl Into<String>, service: S) {
        let key = key.into();
        let mut st = self.state();
        if let Some(e) = st.endpoints.iter_mut().find(|e| e.key == key) {
            e.service = service;
            return;
        }
        st.endpoints.push(Endpoint {
            key,
            service,
            load: Arc::new(Load::new(self.default_rtt())),
        });
        st.rebuild_ring(&self.strategy);
    }

    /// Removes the endpoint `key`, returning its service. Calls in flight on it finish.
    pub fn remove(&self, key: &str) -> Option<S> {
        let mut st = self.state();
        let i = st.endpoints.iter().position(|e| e.key == key)?;
        let e = st.endpoints.remove(i);
        st.rebuild_ring(&self.strategy);
        Some(e.service)
    }

    /// The endpoints' keys, in the order they were added.
    pub fn keys(&self) -> Vec<String> {
        self.state()
            .endpoints
            .iter()
            .map(|e| e.key.clone())
            .collect()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.state().endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls in flight on the endpoint `key` through this balancer.
    pub fn in_flight(&self, key: &str) -> Option<usize> {
        self.state()
            .endpoints
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.load.in_flight.load(Ordering::Acquire))
    }

    /// The consistent-hashing key of `call`, or `None` for the other strategies.
    pub fn call_key(&self, call: &Call) -> Option<u64> {
        let Strategy::ConsistentHash { key, .. } = &*self.strategy else {
            return None;
        };
        Some(match (&call.metadata.idempotency_key, key) {
            (Some(k), _) => stable_hash(k.as_bytes()),
            (None, Some(f)) => mix(f(call)),
            (None, None) => stable_hash(format!("{}.{}", call.service, call.method).as_bytes()),
        })
    }

    /// The endpoint consistent hashing sends `call` to, or `None` for the other
    /// strategies (whose choice depends on load) or without endpoints.
    pub fn route(&self, call: &Call) -> Option<String> {
        let key = self.call_key(call)?;
        let st = self.state();
        st.ring_lookup(key).map(|i| st.endpoints[i].key.clone())
    }

    fn pick(&self, call: &Call, st: &mut State<S>) -> usize {
        let n = st.endpoints.len();
        match &*self.strategy {
            Strategy::RoundRobin => {
                let i = st.next % n;
                st.next = st.next.wrapping_add(1);
                i
            }
            Strategy::ConsistentHash { .. } => self
                .call_key(call)
                .and_then(|k| st.ring_lookup(k))
                .unwrap_or(0),
            Strategy::PowerOfTwoChoices { decay, .. } => {
                if n == 1 {
                    return 0;
                }
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let mut b = rng.gen_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let now = Instant::now();
                let decay_ns = (decay.as_nanos() as f64).max(1.0);
                let (ca, cb) = (
                    st.endpoints[a].load.cost(now, decay_ns),
                    st.endpoints[b].load.cost(now, decay_ns),
                );
                if cb < ca { b } else { a }
            }
        }
    }
}

impl<S> Service<Call> for Balance<S>
where
    S: Service<Call, Response = Reply, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Readiness is per endpoint: the chosen endpoint is driven ready in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> ResponseFuture {
        let picked = {
            let mut st = self.state();
            if st.endpoints.is_empty() {
                None
            } else {
                let i = self.pick(&call, &mut st);
                let e = &st.endpoints[i];
                e.load.in_flight.fetch_add(1, Ordering::AcqRel);
                Some((e.service.clone(), e.load.clone()))
            }
        };
        let Some((service, load)) = picked else {
            return ResponseFuture::new(std::future::ready(Err(Status::unavailable(
                "the balancer has no endpoints",
            )
            .not_executed())));
        };
        let decay_ns = match &*self.strategy {
            Strategy::PowerOfTwoChoices { decay, .. } => Some((decay.as_nanos() as f64).max(1.0)),
            _ => None,
        };
        ResponseFuture::new(async move {
            let guard = InFlight(load);
            let start = Instant::now();
            let result = service.oneshot(call).await;
            if let Some(decay_ns) = decay_ns {
                let now = Instant::now();
                let rtt = now.saturating_duration_since(start).as_nanos() as f64;
                guard.0.ewma().observe(rtt, now, decay_ns);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use polycall_core::{Metadata, Payload, handler_fn};

    use super::*;

    /// An endpoint that answers with its name after `latency`.
    fn endpoint(
        name: &str,
        latency: Duration,
    ) -> impl Service<Call, Response = Reply, Error = Status, Future: Send> + Clone + Send + use<>
    {
        let name = name.to_owned();
        handler_fn(move |_c: Call| {
            let name = name.clone();
            async move {
                tokio::time::sleep(latency).await;
                Ok(Reply::new(Payload::raw(name)))
            }
        })
    }

    fn call() -> Call {
        Call::new("kv.get", Payload::empty()).unwrap()
    }

    fn keyed(key: &str) -> Call {
        let md = Metadata {
            idempotency_key: Some(key.to_owned()),
            ..Metadata::default()
        };
        call().with_metadata(md)
    }

    async fn who<S>(svc: &S, c: Call) -> String
    where
        S: Service<Call, Response = Reply, Error = Status> + Clone,
    {
        let r = svc.clone().oneshot(c).await.unwrap();
        String::from_utf8(r.payload.bytes.to_vec()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_spreads_evenly() {
        let names = ["a", "b", "c", "d"];
        let b = BalanceLayer::new(BalanceConfig {
            strategy: Strategy::RoundRobin,
        })
        .layer(
            names
                .iter()
                .map(|n| (n.to_string(), endpoint(n, Duration::from_millis(1))))
                .collect(),
        );
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..400 {
            *counts.entry(who(&b, call()).await).or_default() += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_fast_endpoints_and_still_uses_the_slow_one() {
        let b: Balance<_> = Balance::new(BalanceConfig {
            strategy: Strategy::PowerOfTwoChoices {
                decay: Duration::from_secs(1),
                default_rtt: Duration::from_millis(10),
            },
        });
        b.push("fast-1", endpoint("fast-1", Duration::from_millis(5)));
        b.push("fast-2", endpoint("fast-2", Duration::from_millis(5)));
        b.push("slow", endpoint("slow", Duration::from_millis(100)));
        let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let until = Instant::now() + Duration::from_secs(3);
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let (b, counts) = (b.clone(), counts.clone());
                tokio::spawn(async move {
                    while Instant::now() < until {
                        let w = who(&b, call()).await;
                        *counts.lock().unwrap().entry(w).or_default() += 1;
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        let counts = counts.lock().unwrap().clone();
        let total: usize = counts.values().sum();
        let slow = counts.get("slow").copied().unwrap_or(0);
        let (f1, f2) = (counts["fast-1"], counts["fast-2"]);
        assert!(
            slow > 0,
            "the slow endpoint still gets some calls: {counts:?}"
        );
        assert!(
            slow * 50 < total,
            "the slow endpoint gets under 2 %: {counts:?}"
        );
        assert!(
            f1.abs_diff(f2) * 5 < f1 + f2,
            "fast endpoints share evenly: {counts:?}"
        );
        assert_eq!(b.in_flight("slow"), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_notices_a_recovered_endpoint() {
        let b: Balance<_> = Balance::new(BalanceConfig {
            strategy: Strategy::PowerOfTwoChoices {
                decay: Duration::from_secs(1),
                default_rtt: Duration::from_millis(10),
            },
        });
        b.push("a", endpoint("a", Duration::from_millis(10)));
        b.push("b", endpoint("b", Duration::from_millis(200)));
        // One client, one call at a time: after b's slow reply, a is preferred…
        let mut seq = Vec::new();
        for _ in 0..50 {
            seq.push(who(&b, call()).await);
        }
        assert_eq!(seq.iter().filter(|w| *w == "b").count(), 1, "{seq:?}");
        // …b "recovers" (replaced by a fast service under the same key keeps its
        // estimate), and its decayed estimate lets it be tried again.
        b.push("b", endpoint("b", Duration::from_millis(1)));
        // (200 ms decays below a's 10 ms after ln 20 ≈ 3 s, some 300 calls.)
        let mut later = Vec::new();
        for _ in 0..1000 {
            later.push(who(&b, call()).await);
        }
        let tail_b = later[500..].iter().filter(|w| *w == "b").count();
        assert!(
            tail_b > 450,
            "b is preferred once seen fast: {tail_b} of 500"
        );
    }

    fn ring(n: usize) -> Balance<()> {
        let b = Balance::new(BalanceConfig {
            strategy: Strategy::consistent_hash(),
        });
        for i in 0..n {
            b.push(format!("node-{i}"), ());
        }
        b
    }

    #[test]
    fn consistent_hashing_moves_about_one_nth_of_the_keys() {
        let keys: Vec<Call> = (0..10_000).map(|i| keyed(&format!("key-{i}"))).collect();
        let b = ring(10);
        let before: Vec<String> = keys.iter().map(|k| b.route(k).unwrap()).collect();
        // Every endpoint gets a fair share (within ±35 % of 1/10).
        let mut share: HashMap<&str, usize> = HashMap::new();
        for w in &before {
            *share.entry(w).or_default() += 1;
        }
        assert_eq!(share.len(), 10);
        assert!(
            share.values().all(|&c| (650..=1350).contains(&c)),
            "{share:?}"
        );
        // Same key, same endpoint.
        for (k, w) in keys.iter().zip(&before).take(100) {
            assert_eq!(&b.route(k).unwrap(), w);
        }
        b.push("node-10", ());
        let after: Vec<String> = keys.iter().map(|k| b.route(k).unwrap()).collect();
        let moved: Vec<&String> = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| x != y)
            .map(|(_, y)| y)
            .collect();
        let limit = 10_000 / 11 + 300;
        assert!(
            moved.len() <= limit,
            "{} keys moved (limit {limit})",
            moved.len()
        );
        assert!(
            moved.len() >= 10_000 / 11 - 300,
            "{} keys moved",
            moved.len()
        );
        assert!(
            moved.iter().all(|w| *w == "node-10"),
            "keys only move to the new endpoint"
        );
        // Removing it again restores the old mapping exactly.
        b.remove("node-10");
        let back: Vec<String> = keys.iter().map(|k| b.route(k).unwrap()).collect();
        assert_eq!(back, before);
        // Removing another endpoint moves only its keys.
        b.remove("node-3");
        for (k, w) in keys.iter().zip(&before) {
            if w != "node-3" {
                assert_eq!(&b.route(k).unwrap(), w);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consistent_hashing_sends_a_key_to_the_same_endpoint_every_time() {
        let b = BalanceLayer::new(BalanceConfig {
            strategy: Strategy::consistent_hash(),
        })
        .layer(
            (0..5)
                .map(|i| {
                    let n = format!("node-{i}");
                    (n.clone(), endpoint(&n, Duration::from_millis(1)))
                })
                .collect(),
        );
        let mut seen = std::collections::HashSet::new();
        for i in 0..20 {
            let key = format!("user-{i}");
            let first = who(&b, keyed(&key)).await;
            assert_eq!(b.route(&keyed(&key)).unwrap(), first);
            for _ in 0..5 {
                assert_eq!(who(&b, keyed(&key)).await, first, "{key}");
            }
            seen.insert(first);
        }
        assert!(seen.len() >= 3, "keys spread over the endpoints: {seen:?}");
        // Without an idempotency key, service.method is the key.
        let first = who(&b, call()).await;
        for _ in 0..5 {
            assert_eq!(who(&b, call()).await, first);
        }
    }

    #[test]
    fn a_key_function_is_used_when_there_is_no_idempotency_key() {
        let by_len: CallKeyFn = Arc::new(|c: &Call| c.payload.len() as u64);
        let b: Balance<()> = Balance::new(BalanceConfig {
            strategy: Strategy::ConsistentHash {
                virtual_nodes: 100,
                key: Some(by_len),
            },
        });
        for i in 0..8 {
            b.push(format!("n{i}"), ());
        }
        let sized = |n: usize| Call::new("blob.put", Payload::raw(vec![0u8; n])).unwrap();
        let routes: std::collections::HashSet<String> =
            (0..64).map(|n| b.route(&sized(n)).unwrap()).collect();
        assert!(routes.len() >= 4, "{routes:?}");
        assert_eq!(b.route(&sized(7)), b.route(&sized(7)));
        // The idempotency key still wins over the function.
        let mut c = sized(7);
        c.metadata.idempotency_key = Some("k".into());
        assert_eq!(b.route(&c), b.route(&keyed("k")));
    }

    #[tokio::test]
    async fn no_endpoints_is_unavailable_and_not_executed() {
        let b: Balance<tower::util::BoxCloneService<Call, polycall_core::Reply, Status>> =
            Balance::new(BalanceConfig::default());
        let err = b.clone().oneshot(call()).await.unwrap_err();
        assert_eq!(err.code, polycall_core::Code::Unavailable);
        assert!(err.not_executed);
    }
}
