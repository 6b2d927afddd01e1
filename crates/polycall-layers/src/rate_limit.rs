//! Rate limiting: calls per second per client key.
//!
//! [`RateLimit`] keeps one GCRA bucket per client key (a [`governor`] keyed rate
//! limiter): `per_second` calls per second sustained, `burst` at once. A call over its
//! key's rate is answered [`Status::busy`] at once, with the retry-after hint governor
//! computes (when the key's next call would conform); it never ran. Keys are
//! independent: one client over its rate does not slow the others.
//!
//! The key is the caller's authenticated [`Principal`](polycall_core::Principal)
//! ([`RateKey::Principal`]), a function of the call ([`RateKey::Function`]), or one key
//! for all calls ([`RateKey::Global`]).
//!
//! The limiter reads tokio's clock ([`TokioClock`]), so it follows `tokio::time::pause`
//! in tests. Keys that have been quiet long enough to be indistinguishable from new
//! ones are dropped now and then, so memory follows the active clients.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use polycall_core::{Call, Reply, Status};
use tower::Layer;
use tower_service::Service;

crate::response_future! {
    /// The future of [`RateLimit`]'s calls.
    ResponseFuture
}

/// A function deriving the rate-limit key of a call.
pub type RateKeyFn = Arc<dyn Fn(&Call) -> String + Send + Sync>;

/// Which calls share a bucket.
#[derive(Clone, Default)]
pub enum RateKey {
    /// One bucket per `metadata.principal`; calls without a principal share the bucket
    /// of the key `"<anonymous>"`.
    #[default]
    Principal,
    /// One bucket per value of the function.
    Function(RateKeyFn),
    /// One bucket for every call.
    Global,
}

impl RateKey {
    /// The key of `call`.
    pub fn key(&self, call: &Call) -> String {
        match self {
            RateKey::Principal => call
                .metadata
                .principal
                .as_ref()
                .map_or_else(|| ANONYMOUS.to_owned(), ToString::to_string),
            RateKey::Function(f) => f(call),
            RateKey::Global => String::new(),
        }
    }
}

impl fmt::Debug for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateKey::Principal => f.write_str("Principal"),
            RateKey::Function(_) => f.write_str("Function(..)"),
            RateKey::Global => f.write_str("Global"),
        }
    }
}

const ANONYMOUS: &str = "<anonymous>";

/// Settings of a [`RateLimit`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Sustained calls per second of each key (0 is read as 1).
    pub per_second: u32,
    /// Calls a key may make at once after a quiet period (0 is read as 1).
    pub burst: u32,
    /// Which calls share a bucket.
    pub key: RateKey,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 100,
            burst: 100,
            key: RateKey::Principal,
        }
    }
}

impl RateLimitConfig {
    fn quota(&self) -> Quota {
        let per_second = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(per_second).allow_burst(burst)
    }

    /// Sets the sustained calls per second of each key (0 is read as 1).
    pub fn per_second(mut self, per_second: u32) -> Self {
        self.per_second = per_second;
        self
    }

    /// Sets the calls a key may make at once after a quiet period (0 is read as 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Sets which calls share a bucket.
    pub fn key(mut self, key: RateKey) -> Self {
        self.key = key;
        self
    }
}

/// A [`governor`] clock reading `tokio::time::Instant`, so rate limits follow tokio's
/// clock (and its paused test clock).
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, TokioClock, NoOpMiddleware<Nanos>>;

/// Calls between two sweeps of quiet keys.
const SWEEP_EVERY: u64 = 4096;

struct Shared {
    limiter: Limiter,
    clock: TokioClock,
    key: RateKey,
    per_second: u32,
    checks: AtomicU64,
    /// Calls refused for their rate.
    limited: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_second", &self.per_second)
            .field("key", &self.key)
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl Shared {
    /// `Err(wait)` when the call is over its key's rate.
    fn check(&self, key: &String) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Applies [`RateLimit`]; every service it makes shares the buckets (so a layer used on
/// every connection limits each client across its connections).
///
/// ```
/// use polycall_core::{handler_fn, Call, Reply};
/// use polycall_layers::rate_limit::{RateKey, RateLimitConfig, RateLimitLayer};
/// use tower::Layer;
///
/// // 20 calls per second per principal, bursts of 5.
/// let layer = RateLimitLayer::new(
///     RateLimitConfig::default()
///         .per_second(20)
///         .burst(5)
///         .key(RateKey::Principal),
/// );
/// let handler = handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) });
/// let limited = layer.layer(handler);
/// # let _ = limited;
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A layer enforcing `config`.
    pub fn new(config: RateLimitConfig) -> Self {
        let clock = TokioClock::default();
        let limiter = RateLimiter::new(
            config.quota(),
            DefaultKeyedStateStore::default(),
            clock.clone(),
        );
        Self {
            shared: Arc::new(Shared {
                limiter,
                clock,
                key: config.key,
                per_second: config.per_second.max(1),
                checks: AtomicU64::new(0),
                limited: AtomicU64::new(0),
            }),
        }
    }

    /// Calls refused so far for their rate (`busy`).
    pub fn limited(&self) -> u64 {
        self.shared.limited.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Limits the call rate of each client key; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    /// Limits `inner` alone with `config`.
    pub fn new(inner: S, config: RateLimitConfig) -> Self {
        RateLimitLayer::new(config).layer(inner)
    }

    /// Keys with state now (recently active clients).
    pub fn keys(&self) -> usize {
        self.shared.limiter.len()
    }
}

impl<S> Service<Call> for RateLimit<S>
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
        let key = self.shared.key.key(&call);
        match self.shared.check(&key) {
            Ok(()) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::new(inner.call(call))
            }
            Err(wait) => {
                self.shared.limited.fetch_add(1, Ordering::Relaxed);
                let who = if key.is_empty() {
                    "all callers together".to_owned()
                } else {
                    format!("{key:?}")
                };
                let status = Status::busy(format!(
                    "rate limit: {who} may make {} calls per second; retry in {wait:?}",
                    self.shared.per_second
                ))
                .with_retry_after(wait);
                ResponseFuture::new(std::future::ready(Err(status)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use polycall_core::{Code, Metadata, Payload, Principal, handler_fn};
    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;

    fn call_as(who: Option<&str>) -> Call {
        let mut md = Metadata::default();
        if let Some(w) = who {
            md = md.with_principal(Principal::user(w));
        }
        Call::new("api.get", Payload::empty())
            .unwrap()
            .with_metadata(md)
    }

    fn echo()
    -> impl Service<Call, Response = Reply, Error = Status, Future: Send> + Clone + Send + 'static
    {
        handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) })
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_rate_is_refused_and_others_are_not() {
        let svc = RateLimit::new(
            echo(),
            RateLimitConfig {
                per_second: 10,
                burst: 3,
                key: RateKey::Principal,
            },
        );
        for _ in 0..3 {
            svc.clone().oneshot(call_as(Some("alice"))).await.unwrap();
        }
        let err = svc
            .clone()
            .oneshot(call_as(Some("alice")))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Busy);
        assert!(err.never_ran());
        assert!(err.message.contains("\"user:alice\""), "{}", err.message);
        let wait = err.retry_after.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Bob has his own bucket, and so do anonymous callers.
        for _ in 0..3 {
            svc.clone().oneshot(call_as(Some("bob"))).await.unwrap();
            svc.clone().oneshot(call_as(None)).await.unwrap();
        }
        assert_eq!(svc.keys(), 3);
        // After the hinted wait, Alice gets through again — once.
        tokio::time::sleep(wait).await;
        svc.clone().oneshot(call_as(Some("alice"))).await.unwrap();
        let err = svc
            .clone()
            .oneshot(call_as(Some("alice")))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Busy);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sustained_rate_is_per_second() {
        let svc = RateLimit::new(
            echo(),
            RateLimitConfig {
                per_second: 50,
                burst: 1,
                key: RateKey::Global,
            },
        );
        // A client retrying on the hint for 2 s gets ~100 calls through (plus the burst).
        let start = Instant::now();
        let mut ok = 0;
        while Instant::now() - start < Duration::from_secs(2) {
            match svc.clone().oneshot(call_as(Some("anyone"))).await {
                Ok(_) => ok += 1,
                Err(e) => tokio::time::sleep(e.retry_after.unwrap()).await,
            }
        }
        assert!((100..=102).contains(&ok), "{ok} calls in 2 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_function_chooses_the_bucket() {
        let by_method: RateKeyFn = Arc::new(|c: &Call| c.full_name());
        let layer = RateLimitLayer::new(RateLimitConfig {
            per_second: 1,
            burst: 1,
            key: RateKey::Function(by_method),
        });
        // Two services of one layer share its buckets.
        let a = layer.layer(echo());
        let b = layer.layer(echo());
        a.clone().oneshot(call_as(Some("x"))).await.unwrap();
        let err = b.clone().oneshot(call_as(Some("y"))).await.unwrap_err();
        assert!(err.message.contains("api.get"), "{}", err.message);
        let other = Call::new("api.put", Payload::empty()).unwrap();
        b.clone().oneshot(other).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_keys_are_swept() {
        let svc = RateLimit::new(
            echo(),
            RateLimitConfig {
                per_second: 1000,
                burst: 1,
                key: RateKey::Principal,
            },
        );
        for i in 0..SWEEP_EVERY - 1 {
            svc.clone()
                .oneshot(call_as(Some(&format!("client-{i}"))))
                .await
                .unwrap();
        }
        assert_eq!(svc.keys() as u64, SWEEP_EVERY - 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        svc.clone().oneshot(call_as(Some("late"))).await.unwrap();
        assert!(svc.keys() <= 1, "{} keys left", svc.keys());
    }
}
