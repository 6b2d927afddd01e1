//! Retries: safe, jittered, bounded by the deadline and by a retry budget.
//!
//! [`Retry`] sends a call again after a retryable failure, following these rules:
//!
//! - **Only when safe.** A call is retried only if it is idempotent
//!   ([`Metadata::idempotent`](polycall_core::Metadata::idempotent)) or the failure
//!   proves it never ran ([`Status::never_ran`]: refused before it was sent, refused by
//!   an open circuit, answered `busy`). A non-idempotent call that may have run is never
//!   sent twice.
//! - **Only retryable codes**: [`RetryConfig::retry_on`] (by default `unavailable` and
//!   `busy`; `deadline_exceeded` is left out because a call that used up its own
//!   deadline has no time for another attempt — add it when a per-attempt timeout sits
//!   below this layer).
//! - **At most [`max_attempts`](RetryConfig::max_attempts)** attempts, the first
//!   included.
//! - **Exponential backoff with full jitter**: before retry `n` (1, 2, …) the layer
//!   sleeps a uniformly random time in `[0, min(max_backoff, base_backoff · 2^(n-1))]`
//!   (see [`RetryConfig::backoff_cap`]), so clients that failed together do not retry
//!   together. A [`retry_after`](Status::retry_after) hint in the failure is honoured
//!   as a floor.
//! - **Never past the deadline**: a retry whose backoff would end at or after the
//!   call's deadline is not made (the last error is returned at once instead of
//!   sleeping into certain failure), and no attempt starts after the deadline.
//! - **Within the budget**: a [`RetryBudget`] shared by every clone of the service (and
//!   every service the same [`RetryLayer`] built) caps the extra load retries add.
//!   Each call deposits [`ratio`](BudgetConfig::ratio) tokens, each retry withdraws
//!   one, and a reserve of [`min_per_second`](BudgetConfig::min_per_second) retries per
//!   second lets a quiet client still retry; all of it over a sliding
//!   [`window`](BudgetConfig::window). When the budget is empty the last error is
//!   returned: during an outage retries add at most `ratio` extra load (plus the
//!   reserve) instead of multiplying it by `max_attempts`.
//!
//! Place it below [`DeadlineLayer`](crate::deadline::DeadlineLayer) (so every call has a
//! deadline to respect) and above
//! [`CircuitBreakerLayer`](crate::breaker::CircuitBreakerLayer) (so an open circuit's
//! fast, `not_executed` refusal with its `retry_after` drives the backoff).
//!
//! Time is read from tokio's clock, so tests can drive retries with a paused clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Code, Reply, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_service::Service;

use crate::breaker::SlidingCounts;

crate::response_future! {
    /// The future of [`Retry`]'s calls.
    ResponseFuture
}

/// How much extra load retries may add. See [`RetryBudget`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// Tokens each call deposits; each retry costs one token. 0.2 means retries may add
    /// at most 20 % to the load the callers generate. Default: 0.2.
    pub ratio: f64,
    /// Retries per second allowed regardless of deposits, so a client making few calls
    /// can still retry. Default: 10.
    pub min_per_second: u32,
    /// The sliding window deposits and withdrawals count in. Default: 10 s.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    /// Sets the tokens each call deposits; each retry costs one token (0.2: retries add at
    /// most 20 % to the load).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Sets the retries per second allowed regardless of deposits.
    pub fn min_per_second(mut self, min_per_second: u32) -> Self {
        self.min_per_second = min_per_second;
        self
    }

    /// Sets the sliding window deposits and withdrawals count in.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
}

/// How [`Retry`] retries.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts per call, the first included (1 disables retries). Default: 3.
    pub max_attempts: u32,
    /// The backoff cap of the first retry; it doubles for each further retry.
    /// Default: 50 ms.
    pub base_backoff: Duration,
    /// The largest backoff cap. Default: 2 s.
    pub max_backoff: Duration,
    /// The retry budget of the services this config builds.
    pub budget: BudgetConfig,
    /// The status codes worth retrying (still only when safe: see the
    /// [module docs](self)). Default: `unavailable`, `busy`.
    pub retry_on: Vec<Code>,
    /// Seeds the jitter for reproducible runs (tests); `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            budget: BudgetConfig::default(),
            retry_on: vec![Code::Unavailable, Code::Busy],
            seed: None,
        }
    }
}

impl RetryConfig {
    /// The most the backoff before retry `retry` (1 for the first retry) may be:
    /// `min(max_backoff, base_backoff · 2^(retry-1))`. The actual sleep is uniform in
    /// `[0, cap]`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use polycall_layers::retry::RetryConfig;
    /// let c = RetryConfig::default()
    ///     .base_backoff(Duration::from_millis(10))
    ///     .max_backoff(Duration::from_millis(50));
    /// let caps: Vec<u64> = (1..=5).map(|n| c.backoff_cap(n).as_millis() as u64).collect();
    /// assert_eq!(caps, [10, 20, 40, 50, 50]);
    /// ```
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.base_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }

    /// Sets the attempts per call, the first included (1 disables retries).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the backoff cap of the first retry; it doubles for each further retry.
    pub fn base_backoff(mut self, base_backoff: Duration) -> Self {
        self.base_backoff = base_backoff;
        self
    }

    /// Sets the largest backoff cap.
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets the retry budget of the services this config builds.
    pub fn budget(mut self, budget: BudgetConfig) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the status codes worth retrying (still only when safe: see the [module
    /// docs](crate::retry)).
    pub fn retry_on(mut self, retry_on: impl IntoIterator<Item = Code>) -> Self {
        self.retry_on = retry_on.into_iter().collect();
        self
    }

    /// Sets the seed of the jitter, for reproducible runs (tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

#[derive(Debug)]
struct BudgetState {
    /// deposits (a) and withdrawals (b)
    window: SlidingCounts,
}

/// A retry budget: a token bucket over a sliding window, shared (through an `Arc`) by
/// every service that retries on its behalf.
///
/// Each call (first attempt) deposits [`BudgetConfig::ratio`] tokens; each retry
/// withdraws one. On top of the deposits a reserve of
/// `min_per_second × window` tokens is always available within the window. A retry is
/// only made when a whole token is available.
///
/// ```
/// use std::time::Duration;
/// use polycall_layers::retry::{BudgetConfig, RetryBudget};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let budget = RetryBudget::new(
///     BudgetConfig::default()
///         .ratio(0.5)
///         .min_per_second(0)
///         .window(Duration::from_secs(10)),
/// );
/// budget.deposit();
/// budget.deposit();
/// assert_eq!(budget.available(), 1);
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw(), "empty");
/// assert_eq!((budget.retries(), budget.refused()), (1, 1));
/// # }
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    reserve: f64,
    state: Mutex<BudgetState>,
    calls: AtomicU64,
    retries: AtomicU64,
    refused: AtomicU64,
}

impl RetryBudget {
    /// An empty budget (only the reserve available).
    pub fn new(config: BudgetConfig) -> Self {
        let reserve = f64::from(config.min_per_second) * config.window.as_secs_f64();
        Self {
            state: Mutex::new(BudgetState {
                window: SlidingCounts::new(config.window),
            }),
            reserve,
            config,
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tokens(&self, state: &BudgetState, now: Instant) -> f64 {
        let (deposits, withdrawals) = state.window.totals(now);
        self.reserve + self.config.ratio * deposits as f64 - withdrawals as f64
    }

    /// Records a call (a first attempt): adds [`BudgetConfig::ratio`] tokens.
    pub fn deposit(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.lock().window.add_a(Instant::now(), 1);
    }

    /// Takes one token for a retry; `false` (and the retry must not be made) when the
    /// budget is empty.
    pub fn withdraw(&self) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        if self.tokens(&state, now) >= 1.0 {
            state.window.add_b(now, 1);
            drop(state);
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            drop(state);
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Whole retries the budget allows now.
    pub fn available(&self) -> u64 {
        let tokens = self.tokens(&self.lock(), Instant::now());
        if tokens < 1.0 { 0 } else { tokens as u64 }
    }

    /// Calls (first attempts) deposited since the budget was created.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Retries made (tokens withdrawn) since the budget was created.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries not made because the budget was empty.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }
}

/// Wraps services in [`Retry`]. Every service this layer (or a clone of it) builds
/// shares one [`RetryBudget`] ([`RetryLayer::budget`]): the budget bounds the extra load
/// one client adds, whatever it is split into. Build a layer per destination for
/// separate budgets, or share one explicitly with [`RetryLayer::with_budget`].
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use polycall_core::{handler_fn, Call, Metadata, Payload, Reply, Status};
/// use polycall_layers::retry::{RetryConfig, RetryLayer};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// tokio::time::pause();
/// let attempts = Arc::new(AtomicU32::new(0));
/// let flaky = handler_fn({
///     let attempts = attempts.clone();
///     move |_c: Call| {
///         let n = attempts.fetch_add(1, Ordering::SeqCst);
///         async move {
///             if n < 2 { Err(Status::unavailable("restarting")) } else { Ok(Reply::default()) }
///         }
///     }
/// });
/// let layer = RetryLayer::new(RetryConfig::default().seed(7));
/// let call = Call::new("kv.get", Payload::empty()).unwrap()
///     .with_metadata(Metadata::default().idempotent());
/// layer.layer(flaky).oneshot(call).await.unwrap();
/// assert_eq!(attempts.load(Ordering::SeqCst), 3);
/// assert_eq!(layer.budget().retries(), 2);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer {
    config: Arc<RetryConfig>,
    budget: Arc<RetryBudget>,
    rng: Arc<Mutex<StdRng>>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new(RetryConfig::default())
    }
}

impl RetryLayer {
    /// A layer with `config` and a new budget made of `config.budget`.
    pub fn new(config: RetryConfig) -> Self {
        let budget = Arc::new(RetryBudget::new(config.budget.clone()));
        Self::with_budget(config, budget)
    }

    /// A layer with `config` drawing on an existing `budget` (`config.budget` is then
    /// ignored).
    pub fn with_budget(config: RetryConfig, budget: Arc<RetryBudget>) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            config: Arc::new(config),
            budget,
            rng: Arc::new(Mutex::new(rng)),
        }
    }

    /// The budget shared by this layer's services.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            config: Arc::clone(&self.config),
            budget: Arc::clone(&self.budget),
            rng: Arc::clone(&self.rng),
        }
    }
}

/// A service that retries failed calls when it is safe and worth it. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    config: Arc<RetryConfig>,
    budget: Arc<RetryBudget>,
    rng: Arc<Mutex<StdRng>>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with a new budget (use [`RetryLayer`] to share one).
    pub fn new(inner: S, config: RetryConfig) -> Self {
        RetryLayer::new(config).layer(inner)
    }

    /// The budget this service draws on.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Why a failed attempt is not retried (for tracing).
fn give_up_reason(
    config: &RetryConfig,
    call: &Call,
    err: &Status,
    attempt: u32,
) -> Option<&'static str> {
    if attempt >= config.max_attempts {
        Some("no attempts left")
    } else if !config.retry_on.contains(&err.code) {
        Some("code not retryable")
    } else if !call.metadata.idempotent && !err.never_ran() {
        Some("not idempotent and may have run")
    } else {
        None
    }
}

impl<S> Service<Call> for Retry<S>
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
        self.budget.deposit();
        if self.config.max_attempts <= 1 {
            return ResponseFuture::new(self.inner.call(call));
        }
        // The first attempt uses the service made ready by `poll_ready`; retries wait
        // for the readiness of a clone.
        let first = self.inner.call(call.clone());
        let mut inner = self.inner.clone();
        let config = Arc::clone(&self.config);
        let budget = Arc::clone(&self.budget);
        let rng = Arc::clone(&self.rng);
        ResponseFuture::new(async move {
            let deadline = call.metadata.deadline.map(|d| Instant::from_std(d.0));
            let mut result = first.await;
            let mut attempt = 1;
            loop {
                let err = match result {
                    Ok(reply) => return Ok(reply),
                    Err(err) => err,
                };
                if let Some(reason) = give_up_reason(&config, &call, &err, attempt) {
                    tracing::debug!(call = %call.full_name(), attempt, %err, reason, "not retrying");
                    return Err(err);
                }
                let cap = config.backoff_cap(attempt);
                let jitter = {
                    let mut rng = rng.lock().unwrap_or_else(PoisonError::into_inner);
                    cap.mul_f64(rng.r#gen::<f64>())
                };
                let backoff = err.retry_after.map_or(jitter, |hint| jitter.max(hint));
                let wake = Instant::now() + backoff;
                if deadline.is_some_and(|d| wake >= d) {
                    tracing::debug!(call = %call.full_name(), attempt, %err, ?backoff, "not retrying: the deadline comes first");
                    return Err(err);
                }
                if !budget.withdraw() {
                    tracing::debug!(call = %call.full_name(), attempt, %err, "not retrying: the retry budget is empty");
                    return Err(err);
                }
                tokio::time::sleep_until(wake).await;
                attempt += 1;
                tracing::debug!(call = %call.full_name(), attempt, after = %err, "retrying");
                result = match inner.ready().await {
                    Ok(svc) => svc.call(call.clone()).await,
                    Err(e) => Err(e),
                };
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use polycall_core::{Metadata, Payload};
    use tokio::task::JoinSet;
    use tower::ServiceExt;

    use super::*;
    use polycall_core::BoxFuture;

    fn call(idempotent: bool) -> Call {
        let md = Metadata {
            idempotent,
            ..Metadata::default()
        };
        Call::new("kv.get", Payload::empty())
            .unwrap()
            .with_metadata(md)
    }

    /// An inner service answering from a script (then from `otherwise`), recording when
    /// each attempt started.
    #[derive(Clone)]
    struct Scripted {
        script: Arc<Mutex<VecDeque<Result<(), Status>>>>,
        otherwise: Arc<Mutex<Result<(), Status>>>,
        attempts: Arc<Mutex<Vec<Instant>>>,
    }

    impl Scripted {
        fn new(script: Vec<Result<(), Status>>, otherwise: Result<(), Status>) -> Self {
            Self {
                script: Arc::new(Mutex::new(script.into())),
                otherwise: Arc::new(Mutex::new(otherwise)),
                attempts: Arc::default(),
            }
        }
        fn failing(status: Status) -> Self {
            Self::new(vec![], Err(status))
        }
        fn set_otherwise(&self, r: Result<(), Status>) {
            *self.otherwise.lock().unwrap() = r;
        }
        fn attempts(&self) -> Vec<Instant> {
            self.attempts.lock().unwrap().clone()
        }
        fn count(&self) -> usize {
            self.attempts.lock().unwrap().len()
        }
    }

    impl Service<Call> for Scripted {
        type Response = Reply;
        type Error = Status;
        type Future = BoxFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Call) -> BoxFuture {
            self.attempts.lock().unwrap().push(Instant::now());
            let next = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.otherwise.lock().unwrap().clone());
            Box::pin(async move { next.map(|()| Reply::default()) })
        }
    }

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            budget: BudgetConfig {
                ratio: 0.2,
                min_per_second: 100,
                window: Duration::from_secs(10),
            },
            seed: Some(1),
            ..RetryConfig::default()
        }
    }

    fn down() -> Status {
        Status::unavailable("connection reset")
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotent_call_is_retried_until_it_succeeds() {
        let inner = Scripted::new(vec![Err(down()), Err(down()), Err(down())], Ok(()));
        let svc = Retry::new(inner.clone(), config());
        svc.clone().oneshot(call(true)).await.unwrap();
        assert_eq!(inner.count(), 4);
        assert_eq!(svc.budget().retries(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let inner = Scripted::failing(down());
        let svc = Retry::new(inner.clone(), config());
        let err = svc.oneshot(call(true)).await.unwrap_err();
        assert_eq!(err, down());
        assert_eq!(inner.count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_idempotent_call_is_retried_only_when_it_never_ran() {
        // May have run: not retried.
        let inner = Scripted::failing(down());
        Retry::new(inner.clone(), config())
            .oneshot(call(false))
            .await
            .unwrap_err();
        assert_eq!(inner.count(), 1);

        // Refused before sending: retried.
        let inner = Scripted::new(vec![Err(down().not_executed())], Ok(()));
        Retry::new(inner.clone(), config())
            .oneshot(call(false))
            .await
            .unwrap();
        assert_eq!(inner.count(), 2);

        // Busy always means "never ran".
        let inner = Scripted::new(vec![Err(Status::busy("full"))], Ok(()));
        Retry::new(inner.clone(), config())
            .oneshot(call(false))
            .await
            .unwrap();
        assert_eq!(inner.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn codes_not_listed_are_not_retried() {
        let inner = Scripted::failing(Status::invalid_input("bad key"));
        Retry::new(inner.clone(), config())
            .oneshot(call(true))
            .await
            .unwrap_err();
        assert_eq!(inner.count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_jittered_grows_and_is_capped() {
        let c = RetryConfig {
            max_attempts: 7,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(80),
            budget: BudgetConfig {
                ratio: 10.0,
                ..config().budget
            },
            ..config()
        };
        let caps: Vec<Duration> = (1..=6).map(|n| c.backoff_cap(n)).collect();
        assert_eq!(
            caps,
            [10, 20, 40, 80, 80, 80].map(Duration::from_millis),
            "doubling, capped"
        );
        let layer = RetryLayer::new(c);
        let runs = 200;
        let mut sums = [Duration::ZERO; 6];
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..runs {
            let inner = Scripted::failing(down());
            layer
                .layer(inner.clone())
                .oneshot(call(true))
                .await
                .unwrap_err();
            let at = inner.attempts();
            assert_eq!(at.len(), 7);
            for (n, pair) in at.windows(2).enumerate() {
                let gap = pair[1] - pair[0];
                assert!(
                    gap <= caps[n],
                    "retry {} slept {gap:?} > cap {:?}",
                    n + 1,
                    caps[n]
                );
                sums[n] += gap;
                distinct.insert(gap);
            }
        }
        let means: Vec<f64> = sums
            .iter()
            .map(|s| s.as_secs_f64() * 1e3 / runs as f64)
            .collect();
        // Full jitter: the mean is about half the cap.
        for (mean, cap) in means.iter().zip(&caps) {
            let half = cap.as_secs_f64() * 1e3 / 2.0;
            assert!(
                (mean - half).abs() < half * 0.25,
                "means {means:?} vs caps {caps:?}"
            );
        }
        assert!(means[0] < means[1] && means[1] < means[2] && means[2] < means[3]);
        assert!(distinct.len() > 20, "sleeps are jittered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_hint_is_a_floor() {
        let busy = Status::busy("overloaded").with_retry_after(Duration::from_millis(700));
        let inner = Scripted::new(vec![Err(busy)], Ok(()));
        Retry::new(inner.clone(), config())
            .oneshot(call(false))
            .await
            .unwrap();
        let at = inner.attempts();
        assert_eq!(at[1] - at[0], Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_never_go_past_the_deadline() {
        // Every backoff would end after the deadline: one attempt, then the error at once.
        let inner = Scripted::failing(down().with_retry_after(Duration::from_secs(1)));
        let t0 = Instant::now();
        let md = Metadata::default()
            .idempotent()
            .with_timeout(t0.into_std(), Duration::from_millis(500));
        let err = Retry::new(inner.clone(), config())
            .oneshot(call(true).with_metadata(md))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Unavailable);
        assert_eq!(inner.count(), 1);
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "did not sleep into the deadline"
        );

        // Long backoffs and a 250 ms deadline: every attempt starts before it.
        let c = RetryConfig {
            max_attempts: 100,
            base_backoff: Duration::from_millis(40),
            max_backoff: Duration::from_millis(40),
            ..config()
        };
        let inner = Scripted::failing(down());
        let md = Metadata::default()
            .idempotent()
            .with_timeout(t0.into_std(), Duration::from_millis(250));
        Retry::new(inner.clone(), c)
            .oneshot(call(true).with_metadata(md))
            .await
            .unwrap_err();
        let at = inner.attempts();
        assert!(at.len() > 3, "{} attempts", at.len());
        assert!(at.len() < 100);
        for a in &at {
            assert!(*a - t0 < Duration::from_millis(250));
        }
        assert!(t0.elapsed() < Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_retries_during_an_outage_and_calls_succeed_after() {
        let c = RetryConfig {
            max_attempts: 3,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            budget: BudgetConfig {
                ratio: 0.2,
                min_per_second: 10,
                window: Duration::from_secs(10),
            },
            ..config()
        };
        let reserve = 10 * 10;
        let inner = Scripted::failing(down());
        let svc = Retry::new(inner.clone(), c);
        let budget = Arc::clone(svc.budget());
        assert_eq!(budget.available(), reserve);

        let calls = 1000;
        let mut set = JoinSet::new();
        for _ in 0..calls {
            let svc = svc.clone();
            set.spawn(async move { svc.oneshot(call(true)).await });
        }
        let failed = set.join_all().await.iter().filter(|r| r.is_err()).count();
        assert_eq!(failed, calls);
        let attempts = inner.count() as u64;
        let bound = (calls as f64 * 1.2) as u64 + reserve;
        assert!(attempts <= bound, "{attempts} attempts > {bound}");
        assert!(attempts > calls as u64, "some retries were made");
        assert_eq!(budget.retries(), attempts - calls as u64);
        assert!(budget.refused() > 0, "the budget refused retries");
        assert_eq!(budget.available(), 0);
        assert_eq!(budget.calls(), calls as u64);

        // The outage ends: calls succeed again.
        inner.set_otherwise(Ok(()));
        for _ in 0..10 {
            svc.clone().oneshot(call(true)).await.unwrap();
        }
        // Later the window has slid past the outage and the reserve is back.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(budget.available(), reserve);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let layer = RetryLayer::new(RetryConfig {
            budget: BudgetConfig {
                ratio: 0.0,
                min_per_second: 1,
                window: Duration::from_secs(2),
            },
            ..config()
        });
        let inner = Scripted::failing(down());
        let a = layer.layer(inner.clone());
        let b = a.clone();
        let other = layer.layer(inner.clone());
        a.oneshot(call(true)).await.unwrap_err();
        b.oneshot(call(true)).await.unwrap_err();
        other.oneshot(call(true)).await.unwrap_err();
        // 2 reserve tokens in all, then nothing: 3 calls + 2 retries.
        assert_eq!(inner.count(), 5);
        assert_eq!(layer.budget().retries(), 2);
    }
}
