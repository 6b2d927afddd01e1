//! Fault injection: make calls slow or make them fail, on purpose, for tests and chaos
//! drills.
//!
//! [`FaultInjection`] decides for each call, independently and with the configured
//! probabilities, whether to
//!
//! - **delay** it: sleep [`FaultConfig::delay`]'s duration before forwarding it (the
//!   call then runs normally; deadlines above this layer keep counting), and/or
//! - **abort** it: answer with [`FaultConfig::abort`]'s status without calling the inner
//!   service at all (after the delay, when both are drawn).
//!
//! [`FaultConfig::only_methods`] limits the faults to some methods; others pass
//! untouched. A [`FaultConfig::seed`] makes the draws reproducible. Put the layer where
//! the fault should appear to come from: right above a `Channel` it looks like a bad
//! network or peer to every layer above (retries, breakers, failover).
//!
//! Give aborts a message that says they are injected (`"injected: …"`), so nobody
//! debugs a drill as a real outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Reply, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::Layer;
use tower_service::Service;

crate::response_future! {
    /// The future of [`FaultInjection`]'s calls.
    ResponseFuture
}

/// Which faults to inject, and how often.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct FaultConfig {
    /// Delay a call by this long, with this probability (0.0–1.0). Default: none.
    pub delay: Option<(Duration, f64)>,
    /// Answer a call with this status instead of calling the inner service, with this
    /// probability (0.0–1.0). Default: none.
    pub abort: Option<(Status, f64)>,
    /// Seeds the random draws, for reproducible runs; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Inject faults only into these methods: full names (`"kv.get"`) or whole services
    /// (`"kv.*"`). `None`: every call.
    pub only_methods: Option<Vec<String>>,
}

impl FaultConfig {
    fn applies_to(&self, call: &Call) -> bool {
        let Some(methods) = &self.only_methods else {
            return true;
        };
        methods.iter().any(|m| match m.strip_suffix(".*") {
            Some(service) => call.service.to_string() == service,
            None => call.full_name() == *m,
        })
    }

    /// Sets the delay given to a call, and the probability (0.0–1.0) that a call is delayed.
    pub fn delay(mut self, delay: Duration, probability: f64) -> Self {
        self.delay = Some((delay, probability));
        self
    }

    /// Sets the status a call is answered with instead of calling the inner service, and
    /// the probability (0.0–1.0) that a call is.
    pub fn abort(mut self, status: Status, probability: f64) -> Self {
        self.abort = Some((status, probability));
        self
    }

    /// Sets the seed of the random draws, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the only methods faults are injected into: full names (`"kv.get"`) or whole
    /// services (`"kv.*"`).
    pub fn only_methods(
        mut self,
        only_methods: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.only_methods = Some(only_methods.into_iter().map(Into::into).collect());
        self
    }
}

/// Counts of the faults injected (shared by a layer and every service it built).
#[derive(Debug, Default)]
pub struct FaultStats {
    delayed: AtomicU64,
    aborted: AtomicU64,
}

impl FaultStats {
    /// Calls delayed.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Calls aborted.
    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Relaxed)
    }
}

/// Wraps services in [`FaultInjection`]. Its services share one random generator and
/// one [`FaultStats`].
///
/// ```
/// use polycall_core::{handler_fn, Call, Code, Payload, Reply, Status};
/// use polycall_layers::fault::{FaultConfig, FaultInjectionLayer};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = FaultInjectionLayer::new(
///     FaultConfig::default()
///         .abort(Status::unavailable("injected: chaos drill"), 1.0)
///         .only_methods(["kv.*"]),
/// );
/// let echo = handler_fn(|c: Call| async move { Ok::<_, Status>(Reply::new(c.payload)) });
/// let svc = layer.layer(echo);
/// let err = svc.clone().oneshot(Call::new("kv.get", Payload::empty()).unwrap()).await;
/// assert_eq!(err.unwrap_err().code, Code::Unavailable);
/// let ok = svc.oneshot(Call::new("debug.echo", Payload::raw("hi")).unwrap()).await;
/// assert!(ok.is_ok(), "other methods are untouched");
/// assert_eq!(layer.stats().aborted(), 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FaultInjectionLayer {
    config: Arc<FaultConfig>,
    rng: Arc<Mutex<StdRng>>,
    stats: Arc<FaultStats>,
}

impl Default for FaultInjectionLayer {
    fn default() -> Self {
        Self::new(FaultConfig::default())
    }
}

impl FaultInjectionLayer {
    /// A layer injecting what `config` says.
    pub fn new(config: FaultConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            config: Arc::new(config),
            rng: Arc::new(Mutex::new(rng)),
            stats: Arc::default(),
        }
    }

    /// Faults injected so far by this layer's services.
    pub fn stats(&self) -> &Arc<FaultStats> {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }
}

impl<S> Layer<S> for FaultInjectionLayer {
    type Service = FaultInjection<S>;

    fn layer(&self, inner: S) -> FaultInjection<S> {
        FaultInjection {
            inner,
            config: Arc::clone(&self.config),
            rng: Arc::clone(&self.rng),
            stats: Arc::clone(&self.stats),
        }
    }
}

/// A service that delays or fails some calls on purpose. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FaultInjection<S> {
    inner: S,
    config: Arc<FaultConfig>,
    rng: Arc<Mutex<StdRng>>,
    stats: Arc<FaultStats>,
}

impl<S> FaultInjection<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: FaultConfig) -> Self {
        FaultInjectionLayer::new(config).layer(inner)
    }

    /// Faults injected so far.
    pub fn stats(&self) -> &Arc<FaultStats> {
        &self.stats
    }
}

impl<S> Service<Call> for FaultInjection<S>
where
    S: Service<Call, Response = Reply, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> ResponseFuture {
        let c = &*self.config;
        if !c.applies_to(&call) {
            return ResponseFuture::new(self.inner.call(call));
        }
        let (delay, abort) = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            let mut draw = |p: f64| p > 0.0 && (p >= 1.0 || rng.r#gen::<f64>() < p);
            let delay = c.delay.filter(|&(_, p)| draw(p)).map(|(d, _)| d);
            let abort = c
                .abort
                .as_ref()
                .filter(|(_, p)| draw(*p))
                .map(|(s, _)| s.clone());
            (delay, abort)
        };
        if delay.is_some() {
            self.stats.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(status) = abort {
            self.stats.aborted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(call = %call.full_name(), %status, ?delay, "injecting an abort");
            return ResponseFuture::new(async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                Err(status)
            });
        }
        match delay {
            None => ResponseFuture::new(self.inner.call(call)),
            Some(d) => {
                tracing::debug!(call = %call.full_name(), delay = ?d, "injecting a delay");
                // Keep the instance `poll_ready` prepared; leave a fresh clone behind.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::new(async move {
                    tokio::time::sleep(d).await;
                    ready.call(call).await
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use polycall_core::{Code, Payload, handler_fn};
    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;

    fn call(name: &str) -> Call {
        Call::new(name, Payload::empty()).unwrap()
    }

    fn counting(
        hits: Arc<AtomicUsize>,
    ) -> impl Service<Call, Response = Reply, Error = Status, Future: Send + 'static>
    + Clone
    + Send
    + 'static {
        handler_fn(move |_c: Call| {
            hits.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Reply::default()) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn probability_one_aborts_every_call_without_calling_inner() {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = FaultInjection::new(
            counting(Arc::clone(&hits)),
            FaultConfig {
                abort: Some((Status::internal("injected: boom"), 1.0)),
                ..FaultConfig::default()
            },
        );
        for _ in 0..100 {
            let err = svc.clone().oneshot(call("kv.get")).await.unwrap_err();
            assert_eq!(err, Status::internal("injected: boom"));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        assert_eq!(svc.stats().aborted(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn probability_one_delays_every_call() {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = FaultInjection::new(
            counting(Arc::clone(&hits)),
            FaultConfig {
                delay: Some((Duration::from_millis(300), 1.0)),
                ..FaultConfig::default()
            },
        );
        for i in 1..=10 {
            let t0 = Instant::now();
            svc.clone().oneshot(call("kv.get")).await.unwrap();
            assert_eq!(t0.elapsed(), Duration::from_millis(300));
            assert_eq!(hits.load(Ordering::SeqCst), i);
        }
        assert_eq!(svc.stats().delayed(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_then_abort() {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = FaultInjection::new(
            counting(Arc::clone(&hits)),
            FaultConfig {
                delay: Some((Duration::from_millis(50), 1.0)),
                abort: Some((Status::unavailable("injected"), 1.0)),
                ..FaultConfig::default()
            },
        );
        let t0 = Instant::now();
        assert_eq!(
            svc.oneshot(call("kv.get")).await.unwrap_err().code,
            Code::Unavailable
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(50));
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_seeded_30_percent_aborts_about_30_percent_reproducibly() {
        let config = FaultConfig {
            abort: Some((Status::unavailable("injected"), 0.3)),
            seed: Some(42),
            ..FaultConfig::default()
        };
        let mut runs = Vec::new();
        for _ in 0..2 {
            let hits = Arc::new(AtomicUsize::new(0));
            let svc = FaultInjection::new(counting(Arc::clone(&hits)), config.clone());
            let mut outcomes = Vec::with_capacity(10_000);
            for _ in 0..10_000 {
                outcomes.push(svc.clone().oneshot(call("kv.get")).await.is_err());
            }
            let aborted = outcomes.iter().filter(|e| **e).count();
            assert!((2_800..=3_200).contains(&aborted), "{aborted} of 10000");
            assert_eq!(hits.load(Ordering::SeqCst), 10_000 - aborted);
            runs.push(outcomes);
        }
        assert_eq!(runs[0], runs[1], "the same seed gives the same faults");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_listed_methods_get_faults() {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = FaultInjection::new(
            counting(Arc::clone(&hits)),
            FaultConfig {
                abort: Some((Status::unavailable("injected"), 1.0)),
                only_methods: Some(vec!["kv.put".into(), "billing.*".into()]),
                ..FaultConfig::default()
            },
        );
        for (name, faulted) in [
            ("kv.put", true),
            ("kv.get", false),
            ("billing.charge", true),
            ("billingx.charge", false),
            ("debug.echo", false),
        ] {
            let r = svc.clone().oneshot(call(name)).await;
            assert_eq!(r.is_err(), faulted, "{name}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn probability_zero_never_injects() {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = FaultInjection::new(
            counting(Arc::clone(&hits)),
            FaultConfig {
                delay: Some((Duration::from_secs(1), 0.0)),
                abort: Some((Status::unavailable("injected"), 0.0)),
                ..FaultConfig::default()
            },
        );
        let t0 = Instant::now();
        for _ in 0..1000 {
            svc.clone().oneshot(call("kv.get")).await.unwrap();
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(hits.load(Ordering::SeqCst), 1000);
    }
}
