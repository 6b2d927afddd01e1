//! Circuit breaking: stop calling an endpoint that keeps failing, then test it gently.
//!
//! A [`CircuitBreaker`] watches the outcomes of the calls through it and is in one of
//! three [`BreakerState`]s:
//!
//! - **closed** — calls pass. The breaker *trips* (opens) when
//!   [`consecutive_failures`](BreakerConfig::consecutive_failures) calls in a row fail,
//!   or when at least [`min_calls_in_window`](BreakerConfig::min_calls_in_window) calls
//!   completed in the last [`window`](BreakerConfig::window) and the share of failures
//!   among them reached [`failure_rate`](BreakerConfig::failure_rate).
//! - **open** — every call is refused at once, without reaching the inner service, with
//!   `unavailable`, a [`retry_after`](polycall_core::Status::retry_after) of the time
//!   left open and [`not_executed`](polycall_core::Status::not_executed) (so a retry
//!   layer above knows it is safe to retry, and when). This gives a struggling endpoint
//!   room to recover and the caller a fast answer instead of a timeout.
//! - **half-open** — after [`open_for`](BreakerConfig::open_for), the next
//!   [`half_open_probes`](BreakerConfig::half_open_probes) calls are let through as
//!   probes (others are still refused). If every probe succeeds the breaker closes; if
//!   any fails it opens again for another `open_for`.
//!
//! Which outcomes are failures is [`BreakerConfig::is_failure`]: by default the codes
//! that say something about the endpoint's health (`unavailable`, `deadline_exceeded`,
//! `internal`, `busy`). Other errors (`invalid_input`, `not_found`, …) prove the
//! endpoint answered, so they count as successes.
//!
//! One breaker guards one endpoint: each service a [`CircuitBreakerLayer`] builds gets
//! its own breaker, shared by that service's clones. Observe it through a
//! [`BreakerHandle`] ([`CircuitBreaker::handle`], or [`CircuitBreakerLayer::breakers`]
//! for every breaker a layer built).
//!
//! Time is read from tokio's clock, so tests can drive breakers with a paused clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Code, Reply, Status};
use tokio::time::Instant;
use tower::Layer;
use tower_service::Service;

crate::response_future! {
    /// The future of [`CircuitBreaker`]'s calls.
    ResponseFuture
}

/// How a [`CircuitBreaker`] decides to open and to close.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Open after this many failures in a row (0 disables this rule). Default: 5.
    pub consecutive_failures: u32,
    /// Open when at least this share (0.0–1.0) of the calls completed within
    /// `window` failed (a value above 1.0 disables this rule).
    /// Default: 0.5.
    pub failure_rate: f64,
    /// The sliding window over which the failure rate is measured. Default: 10 s.
    pub window: Duration,
    /// The failure rate is only judged once this many calls completed within the
    /// window, so a single early failure does not open the circuit. Default: 20.
    pub min_calls_in_window: u32,
    /// How long the circuit stays open before probing. Default: 5 s.
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close. Default: 3.
    pub half_open_probes: u32,
    /// The status codes counted as failures. Default: `unavailable`,
    /// `deadline_exceeded`, `internal`, `busy`.
    pub is_failure: Vec<Code>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls_in_window: 20,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
            is_failure: vec![
                Code::Unavailable,
                Code::DeadlineExceeded,
                Code::Internal,
                Code::Busy,
            ],
        }
    }
}

impl BreakerConfig {
    /// Sets the failures in a row that open the circuit (0 disables this rule).
    pub fn consecutive_failures(mut self, consecutive_failures: u32) -> Self {
        self.consecutive_failures = consecutive_failures;
        self
    }

    /// Sets the share (0.0–1.0) of the calls completed within the window whose failure
    /// opens the circuit (above 1.0 disables this rule).
    pub fn failure_rate(mut self, failure_rate: f64) -> Self {
        self.failure_rate = failure_rate;
        self
    }

    /// Sets the sliding window over which the failure rate is measured.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets how many calls must complete within the window before the failure rate is
    /// judged.
    pub fn min_calls_in_window(mut self, min_calls_in_window: u32) -> Self {
        self.min_calls_in_window = min_calls_in_window;
        self
    }

    /// Sets how long the circuit stays open before probing.
    pub fn open_for(mut self, open_for: Duration) -> Self {
        self.open_for = open_for;
        self
    }

    /// Sets the calls let through while half-open; all must succeed to close.
    pub fn half_open_probes(mut self, half_open_probes: u32) -> Self {
        self.half_open_probes = half_open_probes;
        self
    }

    /// Sets the status codes counted as failures.
    pub fn is_failure(mut self, is_failure: impl IntoIterator<Item = Code>) -> Self {
        self.is_failure = is_failure.into_iter().collect();
        self
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass; outcomes are watched.
    Closed,
    /// Calls are refused at once.
    Open,
    /// A few probe calls pass to test the endpoint.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (for metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Counts of two kinds of events over a sliding window of `SLOTS` slots. Shared by the
/// breaker (failures / successes) and the retry budget (deposits / withdrawals).
#[derive(Debug)]
pub(crate) struct SlidingCounts {
    slot_len: Duration,
    start: Instant,
    slots: Vec<Slot>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    epoch: u64,
    a: u64,
    b: u64,
}

impl SlidingCounts {
    const SLOTS: u64 = 10;

    /// A window of `window` (at least 10 ms) starting now.
    pub(crate) fn new(window: Duration) -> Self {
        let window = window.max(Duration::from_millis(10));
        Self {
            slot_len: window / Self::SLOTS as u32,
            start: Instant::now(),
            slots: vec![Slot::default(); Self::SLOTS as usize],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(nanos / self.slot_len.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let epoch = self.epoch(now);
        let slot = &mut self.slots[(epoch % Self::SLOTS) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                ..Slot::default()
            };
        }
        slot
    }

    /// Adds to the first count.
    pub(crate) fn add_a(&mut self, now: Instant, n: u64) {
        self.slot(now).a += n;
    }

    /// Adds to the second count.
    pub(crate) fn add_b(&mut self, now: Instant, n: u64) {
        self.slot(now).b += n;
    }

    /// Both counts over the window ending `now`.
    pub(crate) fn totals(&self, now: Instant) -> (u64, u64) {
        let epoch = self.epoch(now);
        self.slots
            .iter()
            .filter(|s| s.epoch <= epoch && epoch - s.epoch < Self::SLOTS)
            .fold((0, 0), |(a, b), s| (a + s.a, b + s.b))
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.slots.fill(Slot::default());
        self.start = Instant::now();
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Machine {
    phase: Phase,
    /// Bumped on every transition: outcomes of calls admitted in an older generation
    /// are ignored.
    generation: u64,
    consecutive: u32,
    /// failures (a) and successes (b) of closed-state calls.
    window: SlidingCounts,
    /// Why the circuit last opened (for the rejection message).
    reason: String,
}

#[derive(Debug)]
struct Shared {
    config: BreakerConfig,
    machine: Mutex<Machine>,
    opened: AtomicU64,
    rejected: AtomicU64,
}

impl Shared {
    fn new(config: BreakerConfig) -> Self {
        Self {
            machine: Mutex::new(Machine {
                phase: Phase::Closed,
                generation: 0,
                consecutive: 0,
                window: SlidingCounts::new(config.window),
                reason: String::new(),
            }),
            config,
            opened: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self, m: &mut Machine, now: Instant, reason: String) {
        m.phase = Phase::Open {
            until: now + self.config.open_for,
        };
        m.generation += 1;
        m.consecutive = 0;
        m.window.clear();
        m.reason = reason;
        self.opened.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = %m.reason, open_for = ?self.config.open_for, "circuit opened");
    }

    /// Admits a call (returning the generation it runs in and whether it is a probe) or
    /// refuses it.
    fn admit(&self, now: Instant) -> Result<(u64, bool), Status> {
        let mut m = self.lock();
        match m.phase {
            Phase::Closed => return Ok((m.generation, false)),
            Phase::Open { until } if now >= until => {
                m.phase = Phase::HalfOpen {
                    admitted: 0,
                    succeeded: 0,
                };
                m.generation += 1;
                tracing::info!("circuit half-open: probing");
            }
            _ => {}
        }
        let probes = self.config.half_open_probes.max(1);
        let status = match &mut m.phase {
            Phase::HalfOpen { admitted, .. } if *admitted < probes => {
                *admitted += 1;
                return Ok((m.generation, true));
            }
            Phase::HalfOpen { .. } => Status::unavailable(format!(
                "circuit half-open: {probes} probe call(s) are testing the endpoint (it \
                 opened after {}); the call was not sent: retry shortly",
                m.reason
            )),
            Phase::Open { until } => {
                let left = until.saturating_duration_since(now);
                Status::unavailable(format!(
                    "circuit open for {left:?} more after {}; the call was not sent: retry \
                     after that or use another endpoint",
                    m.reason
                ))
                .with_retry_after(left)
            }
            Phase::Closed => unreachable!("handled above"),
        };
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(status.not_executed())
    }

    /// Records the outcome of a call admitted in `generation`.
    fn record(&self, generation: u64, probe: bool, failed: Option<Code>) {
        let now = Instant::now();
        let mut m = self.lock();
        if m.generation != generation {
            return;
        }
        let c = &self.config;
        match &mut m.phase {
            Phase::Closed => {
                match failed {
                    Some(_) => {
                        m.consecutive += 1;
                        m.window.add_a(now, 1);
                    }
                    None => {
                        m.consecutive = 0;
                        m.window.add_b(now, 1);
                    }
                }
                let Some(code) = failed else { return };
                let (failures, successes) = m.window.totals(now);
                let total = failures + successes;
                if c.consecutive_failures > 0 && m.consecutive >= c.consecutive_failures {
                    let reason = format!("{} failures in a row (last: {code})", m.consecutive);
                    self.open(&mut m, now, reason);
                } else if total >= u64::from(c.min_calls_in_window.max(1))
                    && failures as f64 >= c.failure_rate * total as f64
                {
                    let reason = format!(
                        "{failures} of {total} calls failed within {:?} (last: {code})",
                        c.window
                    );
                    self.open(&mut m, now, reason);
                }
            }
            Phase::HalfOpen { succeeded, .. } if probe => match failed {
                Some(code) => {
                    let reason = format!("a half-open probe failed with {code}");
                    self.open(&mut m, now, reason);
                }
                None => {
                    *succeeded += 1;
                    if *succeeded >= c.half_open_probes.max(1) {
                        m.phase = Phase::Closed;
                        m.generation += 1;
                        m.consecutive = 0;
                        m.window.clear();
                        tracing::info!("circuit closed: the probes succeeded");
                    }
                }
            },
            _ => {}
        }
    }

    /// A probe ended without an outcome (its future was dropped): free its slot.
    fn abandon_probe(&self, generation: u64) {
        let mut m = self.lock();
        if m.generation == generation
            && let Phase::HalfOpen { admitted, .. } = &mut m.phase
        {
            *admitted = admitted.saturating_sub(1);
        }
    }

    fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            // An expired open period becomes half-open on the next call.
            Phase::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// A view of one breaker's state and counters, for metrics and health pages. Cheap to
/// clone; it keeps the breaker's state alive.
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl BreakerHandle {
    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }

    /// How many times the circuit opened (from closed or from half-open).
    pub fn opened(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// How many calls were refused without being sent.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }
}

/// Wraps a service in a [`CircuitBreaker`]. Every service it builds gets a breaker of
/// its own (one per endpoint); [`CircuitBreakerLayer::breakers`] lists them.
///
/// ```
/// use std::time::Duration;
/// use polycall_core::{handler_fn, Call, Code, Payload, Reply, Status};
/// use polycall_layers::breaker::{BreakerConfig, BreakerState, CircuitBreakerLayer};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let failing = handler_fn(|_c: Call| async move {
///     Err::<Reply, _>(Status::unavailable("down"))
/// });
/// let layer = CircuitBreakerLayer::new(
///     BreakerConfig::default()
///         .consecutive_failures(2)
///         .open_for(Duration::from_secs(1)),
/// );
/// let svc = layer.layer(failing);
/// let call = || Call::new("debug.x", Payload::empty()).unwrap();
/// for _ in 0..2 {
///     svc.clone().oneshot(call()).await.unwrap_err();
/// }
/// assert_eq!(svc.handle().state(), BreakerState::Open);
/// let refused = svc.clone().oneshot(call()).await.unwrap_err();
/// assert!(refused.message.starts_with("circuit open for"));
/// assert!(refused.never_ran() && refused.retry_after.is_some());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerLayer {
    config: BreakerConfig,
    built: Arc<Mutex<Vec<Weak<Shared>>>>,
}

impl CircuitBreakerLayer {
    /// A layer with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            built: Arc::default(),
        }
    }

    /// Handles of the breakers this layer (and its clones) built that are still in
    /// use, in the order they were built.
    pub fn breakers(&self) -> Vec<BreakerHandle> {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        built.retain(|w| w.strong_count() > 0);
        built
            .iter()
            .filter_map(Weak::upgrade)
            .map(|shared| BreakerHandle { shared })
            .collect()
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        let svc = CircuitBreaker::new(inner, self.config.clone());
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        built.retain(|w| w.strong_count() > 0);
        built.push(Arc::downgrade(&svc.shared));
        svc
    }
}

/// A service guarded by a circuit breaker. Clones share the breaker. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CircuitBreaker<S> {
    /// Guards `inner` with a new breaker.
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// A handle on this breaker's state and counters.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Records the outcome of an admitted call, or frees a probe slot when the call's future
/// is dropped before it completes.
struct Outcome {
    shared: Arc<Shared>,
    generation: u64,
    probe: bool,
    recorded: bool,
}

impl Outcome {
    fn record(mut self, failed: Option<Code>) {
        self.recorded = true;
        self.shared.record(self.generation, self.probe, failed);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.shared.abandon_probe(self.generation);
        }
    }
}

impl<S> Service<Call> for CircuitBreaker<S>
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
        let (generation, probe) = match self.shared.admit(Instant::now()) {
            Ok(admitted) => admitted,
            Err(status) => return ResponseFuture::new(std::future::ready(Err(status))),
        };
        let outcome = Outcome {
            shared: Arc::clone(&self.shared),
            generation,
            probe,
            recorded: false,
        };
        let fut = self.inner.call(call);
        ResponseFuture::new(async move {
            let result = fut.await;
            let failed = match &result {
                Err(s) if outcome.shared.config.is_failure.contains(&s.code) => Some(s.code),
                _ => None,
            };
            outcome.record(failed);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use polycall_core::{Payload, handler_fn};
    use tower::ServiceExt;

    use super::*;
    use polycall_core::BoxFuture;

    fn call() -> Call {
        Call::new("debug.x", Payload::empty()).unwrap()
    }

    /// An inner service that fails (with `unavailable`) while `failing` is set, and
    /// counts the calls that reach it.
    #[derive(Clone, Default)]
    struct Scripted {
        failing: Arc<std::sync::atomic::AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    impl Scripted {
        fn set_failing(&self, on: bool) {
            self.failing.store(on, Ordering::SeqCst);
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
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
            self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.failing.load(Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if fail {
                    Err(Status::unavailable("scripted outage"))
                } else {
                    Ok(Reply::default())
                }
            })
        }
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 2.0, // off unless a test sets it
            window: Duration::from_secs(10),
            min_calls_in_window: 10,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
            ..BreakerConfig::default()
        }
    }

    async fn go<S>(svc: &S) -> Result<Reply, Status>
    where
        S: Service<Call, Response = Reply, Error = Status> + Clone,
    {
        svc.clone().oneshot(call()).await
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_rejects_at_once() {
        let inner = Scripted::default();
        inner.set_failing(true);
        let svc = CircuitBreaker::new(inner.clone(), config());
        let h = svc.handle();
        for i in 0..3 {
            assert_eq!(h.state(), BreakerState::Closed, "after {i} failures");
            assert_eq!(go(&svc).await.unwrap_err().code, Code::Unavailable);
        }
        assert_eq!(h.state(), BreakerState::Open);
        assert_eq!(h.opened(), 1);
        assert_eq!(inner.calls(), 3);

        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = Instant::now();
        let err = go(&svc).await.unwrap_err();
        assert_eq!(t0.elapsed(), Duration::ZERO, "refused at once");
        assert_eq!(err.code, Code::Unavailable);
        assert!(err.never_ran());
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        assert!(err.message.starts_with("circuit open for 3s"), "{err}");
        assert!(err.message.contains("3 failures in a row"), "{err}");
        assert_eq!(inner.calls(), 3, "the inner service was not called");
        assert_eq!(h.rejected(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_consecutive_count() {
        let inner = Scripted::default();
        let svc = CircuitBreaker::new(inner.clone(), config());
        for _ in 0..5 {
            inner.set_failing(true);
            go(&svc).await.unwrap_err();
            go(&svc).await.unwrap_err();
            inner.set_failing(false);
            go(&svc).await.unwrap();
        }
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_failure_rate_over_the_window() {
        let inner = Scripted::default();
        let svc = CircuitBreaker::new(
            inner.clone(),
            BreakerConfig {
                consecutive_failures: 0,
                failure_rate: 0.5,
                ..config()
            },
        );
        let h = svc.handle();
        // Alternate: never two failures in a row, but half of the calls fail.
        for i in 0..9 {
            inner.set_failing(i % 2 == 0);
            let _ = go(&svc).await;
        }
        // 9 calls (5 failures): below the minimum of 10.
        assert_eq!(h.state(), BreakerState::Closed);
        inner.set_failing(false);
        go(&svc).await.unwrap(); // 10 calls, 5 failures, but a success does not trip
        inner.set_failing(true);
        go(&svc).await.unwrap_err(); // 11 calls, 6 failures
        assert_eq!(h.state(), BreakerState::Open);
        assert!(
            go(&svc)
                .await
                .unwrap_err()
                .message
                .contains("6 of 11 calls failed")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_slide_out_of_the_window() {
        let inner = Scripted::default();
        let svc = CircuitBreaker::new(
            inner.clone(),
            BreakerConfig {
                consecutive_failures: 0,
                failure_rate: 0.5,
                ..config()
            },
        );
        inner.set_failing(true);
        for _ in 0..9 {
            go(&svc).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        // The nine failures are gone: one more failure is 1 of 1 (below the minimum).
        go(&svc).await.unwrap_err();
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probes_that_succeed_close_the_circuit() {
        let inner = Scripted::default();
        inner.set_failing(true);
        let svc = CircuitBreaker::new(inner.clone(), config());
        let h = svc.handle();
        for _ in 0..3 {
            go(&svc).await.unwrap_err();
        }
        assert_eq!(h.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(h.state(), BreakerState::HalfOpen);
        inner.set_failing(false);
        go(&svc).await.unwrap();
        assert_eq!(h.state(), BreakerState::HalfOpen, "one of two probes done");
        go(&svc).await.unwrap();
        assert_eq!(h.state(), BreakerState::Closed);
        go(&svc).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_only_the_configured_probes() {
        let inner = Scripted::default();
        inner.set_failing(true);
        let svc = CircuitBreaker::new(inner.clone(), config());
        for _ in 0..3 {
            go(&svc).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        inner.set_failing(false);
        let calls_before = inner.calls();
        let mut probes = Vec::new();
        for _ in 0..2 {
            let s = svc.clone();
            probes.push(tokio::spawn(async move { go(&s).await }));
        }
        tokio::task::yield_now().await; // the probes are admitted and in flight
        let err = go(&svc).await.unwrap_err();
        assert!(err.message.starts_with("circuit half-open"), "{err}");
        assert!(err.never_ran());
        for p in probes {
            p.await.unwrap().unwrap();
        }
        assert_eq!(inner.calls() - calls_before, 2);
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_circuit_again() {
        let inner = Scripted::default();
        inner.set_failing(true);
        let svc = CircuitBreaker::new(inner.clone(), config());
        let h = svc.handle();
        for _ in 0..3 {
            go(&svc).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let err = go(&svc).await.unwrap_err();
        assert_eq!(
            err.message, "scripted outage",
            "the probe reached the endpoint"
        );
        assert_eq!(h.state(), BreakerState::Open);
        assert_eq!(h.opened(), 2);
        let err = go(&svc).await.unwrap_err();
        assert!(err.message.contains("a half-open probe failed"), "{err}");
        assert_eq!(err.retry_after, Some(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_its_slot() {
        let inner = Scripted::default();
        inner.set_failing(true);
        let svc = CircuitBreaker::new(inner.clone(), config());
        for _ in 0..3 {
            go(&svc).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        inner.set_failing(false);
        for _ in 0..5 {
            // Started and dropped before completing: never counted as an outcome.
            let mut s = svc.clone();
            drop(s.call(call()));
        }
        go(&svc).await.unwrap();
        go(&svc).await.unwrap();
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_failures_count_as_successes() {
        let svc = CircuitBreaker::new(
            handler_fn(|_c: Call| async move { Err::<Reply, _>(Status::invalid_input("bad")) }),
            config(),
        );
        for _ in 0..10 {
            assert_eq!(go(&svc).await.unwrap_err().code, Code::InvalidInput);
        }
        assert_eq!(svc.handle().state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn each_service_of_a_layer_has_its_own_breaker() {
        let layer = CircuitBreakerLayer::new(config());
        let bad = Scripted::default();
        bad.set_failing(true);
        let a = layer.layer(bad);
        let b = layer.layer(Scripted::default());
        for _ in 0..3 {
            go(&a).await.unwrap_err();
            go(&b).await.unwrap();
        }
        let states: Vec<_> = layer.breakers().iter().map(BreakerHandle::state).collect();
        assert_eq!(states, [BreakerState::Open, BreakerState::Closed]);
        drop(a);
        assert_eq!(layer.breakers().len(), 1);
    }
}
