//! Concurrency limits and load shedding.
//!
//! Two layers bound how many calls run through a service at once:
//!
//! - [`ConcurrencyLimitLayer`]: a fixed limit. A call over the limit is answered
//!   `busy` with a retry-after hint at once (it never ran), or, when a small queue is
//!   configured, waits at most `queue_timeout` for a slot. Nothing ever queues without
//!   bound. The limit also sheds by [`Priority`]: each class may only fill its share of
//!   the limit ([`ConcurrencyLimitConfig::class_share`]), so under load `Low` calls are
//!   refused first, then `Normal` ones, while the rest of the limit stays reserved for
//!   `Critical` and `High` calls.
//! - [`AdaptiveLimitLayer`]: a limit that follows the callee's latency with the gradient
//!   algorithm of Netflix's concurrency-limits library. It keeps the lowest latency seen
//!   (`min_rtt`, the latency without queueing) and, once per window of samples,
//!   sets `limit = limit × clamp(tolerance × min_rtt / rtt, 0.5, 1) + √limit`
//!   (smoothed, bounded to `[min_limit, max_limit]`). When the callee starts queueing, its
//!   latency rises above `min_rtt` and the limit comes down; the `√limit` allowance
//!   lets it grow again while latency stays flat.
//!
//! A refused call is answered [`Status::busy`] with [`Status::with_retry_after`]: busy
//! always means the call did not run, so callers may retry it anywhere.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Code, Priority, Reply, Status};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Layer;
use tower_service::Service;

crate::response_future! {
    /// The future of [`ConcurrencyLimit`] and [`AdaptiveLimit`]'s calls.
    ResponseFuture
}

fn busy(message: String, retry_after: Duration) -> ResponseFuture {
    ResponseFuture::new(std::future::ready(Err(
        Status::busy(message).with_retry_after(retry_after)
    )))
}

/// Settings of a [`ConcurrencyLimit`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConcurrencyLimitConfig {
    /// Most calls in flight at once (0 is read as 1).
    pub max: usize,
    /// Share of `max` each priority class may fill, indexed by `Priority as usize`
    /// (`[Critical, High, Normal, Low]`). A call of class `p` is admitted only while fewer
    /// than `ceil(max × class_share[p])` calls are in flight, so `1 − share` of the limit
    /// stays reserved for the classes with a larger share. The default
    /// `[1.0, 1.0, 0.8, 0.5]` keeps 20 % for `Critical`/`High` and sheds `Low` calls
    /// once the limit is half used.
    pub class_share: [f64; 4],
    /// Calls over the limit that may wait for a slot; more are refused at once.
    /// 0 (the default) never queues.
    pub queue: usize,
    /// Longest a queued call waits for a slot (and never past its deadline) before it
    /// is refused.
    pub queue_timeout: Duration,
    /// The retry-after hint of refusals.
    pub retry_after: Duration,
}

impl Default for ConcurrencyLimitConfig {
    fn default() -> Self {
        Self {
            max: 256,
            class_share: [1.0, 1.0, 0.8, 0.5],
            queue: 0,
            queue_timeout: Duration::from_millis(50),
            retry_after: Duration::from_millis(50),
        }
    }
}

impl ConcurrencyLimitConfig {
    /// A limit of `max` calls with every class allowed the whole limit (no priority
    /// shedding) and no queue.
    pub fn fixed(max: usize) -> Self {
        Self {
            max,
            class_share: [1.0; 4],
            ..Self::default()
        }
    }

    /// The number of calls in flight below which a call of `priority` is admitted.
    pub fn cap(&self, priority: Priority) -> usize {
        let max = self.max.max(1);
        let share = self.class_share[priority as usize].clamp(0.0, 1.0);
        ((max as f64 * share).ceil() as usize).min(max)
    }

    /// Sets the most calls in flight at once (0 is read as 1).
    pub fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Sets the share of `max` each priority class may fill (indexed by
    /// `Priority as usize`).
    pub fn class_share(mut self, class_share: [f64; 4]) -> Self {
        self.class_share = class_share;
        self
    }

    /// Sets how many calls over the limit may wait for a slot (0 never queues).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Sets the longest a queued call waits for a slot (never past its deadline) before it
    /// is refused.
    pub fn queue_timeout(mut self, queue_timeout: Duration) -> Self {
        self.queue_timeout = queue_timeout;
        self
    }

    /// Sets the retry-after hint of refusals.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }
}

#[derive(Debug)]
struct Shared {
    config: ConcurrencyLimitConfig,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    released: Notify,
    /// Calls refused (`busy`): shed at once or timed out in the queue.
    shed: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn try_acquire(self: &Arc<Self>, cap: usize) -> Option<Permit> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                shared: self.clone(),
            })
    }

    fn refusal(&self, priority: Priority, cap: usize) -> String {
        let max = self.config.max.max(1);
        if cap < max {
            format!(
                "load shedding: {priority:?} calls may fill {cap} of the {max} slots of the \
                 concurrency limit, and they are taken; retry later"
            )
        } else {
            format!("the concurrency limit of {max} calls in flight is reached; retry later")
        }
    }
}

/// A slot of the limit, given back on drop.
struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shared.released.notify_waiters();
    }
}

struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Applies [`ConcurrencyLimit`]; every service it makes shares one limit.
///
/// ```
/// use polycall_core::{handler_fn, Call, Reply};
/// use polycall_layers::limit::{ConcurrencyLimitConfig, ConcurrencyLimitLayer};
/// use tower::Layer;
///
/// // 100 calls at once; Low calls may fill half of them, Normal 80 %.
/// let layer = ConcurrencyLimitLayer::new(ConcurrencyLimitConfig::default().max(100));
/// let handler = handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) });
/// let limited = layer.layer(handler);
/// assert_eq!(limited.in_flight(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    shared: Arc<Shared>,
}

impl ConcurrencyLimitLayer {
    /// A layer enforcing `config`. Services made by this layer (and their clones) share
    /// the limit.
    pub fn new(config: ConcurrencyLimitConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                in_flight: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                released: Notify::new(),
                shed: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Calls being served now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Calls waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Calls refused so far (`busy`: shed at once, or timed out in the queue).
    pub fn shed(&self) -> u64 {
        self.shared.shed.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Bounds the calls in flight through a service; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ConcurrencyLimit<S> {
    /// Limits `inner` alone with `config`.
    pub fn new(inner: S, config: ConcurrencyLimitConfig) -> Self {
        ConcurrencyLimitLayer::new(config).layer(inner)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }
}

impl<S> Service<Call> for ConcurrencyLimit<S>
where
    S: Service<Call, Response = Reply, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Admission is decided per call (so a refusal is an answer, not back-pressure
        // that would queue callers without bound).
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> ResponseFuture {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let priority = call.metadata.priority;
        let cap = shared.config.cap(priority);
        if let Some(permit) = shared.try_acquire(cap) {
            let fut = inner.call(call);
            return ResponseFuture::new(async move {
                let _permit = permit;
                fut.await
            });
        }
        let queue = shared.config.queue;
        let retry_after = shared.config.retry_after;
        if shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < queue).then_some(n + 1)
            })
            .is_err()
        {
            shared.shed.fetch_add(1, Ordering::Relaxed);
            return busy(shared.refusal(priority, cap), retry_after);
        }
        let mut wait_until = Instant::now() + shared.config.queue_timeout;
        if let Some(d) = call.metadata.deadline {
            wait_until = wait_until.min(Instant::from_std(d.0));
        }
        ResponseFuture::new(async move {
            let permit = {
                let _queued = Queued(&shared.queued);
                loop {
                    let released = shared.released.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    if let Some(p) = shared.try_acquire(cap) {
                        break p;
                    }
                    if tokio::time::timeout_at(wait_until, released).await.is_err() {
                        shared.shed.fetch_add(1, Ordering::Relaxed);
                        let mut status = Status::busy(format!(
                            "{} (waited {:?} in the queue)",
                            shared.refusal(priority, cap),
                            shared.config.queue_timeout
                        ))
                        .with_retry_after(retry_after);
                        if call
                            .metadata
                            .deadline
                            .is_some_and(|d| Instant::from_std(d.0) <= wait_until)
                        {
                            status
                                .message
                                .push_str("; the call's deadline passed while queued");
                        }
                        return Err(status);
                    }
                }
            };
            let result = inner.call(call).await;
            drop(permit);
            result
        })
    }
}

// ---------------------------------------------------------------------------------------
// Adaptive limit
// ---------------------------------------------------------------------------------------

/// Settings of an [`AdaptiveLimit`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AdaptiveLimitConfig {
    /// The limit before any latency was measured.
    pub initial_limit: usize,
    /// The limit never goes below this (0 is read as 1).
    pub min_limit: usize,
    /// The limit never goes above this.
    pub max_limit: usize,
    /// How far each update moves the limit toward the newly computed one (0 < s ≤ 1).
    pub smoothing: f64,
    /// How much slower than `min_rtt` a window may be before the limit comes down:
    /// the gradient is `tolerance × min_rtt / rtt`, capped at 1 (and floored at 0.5). A
    /// tolerance above 1 keeps ordinary latency noise from shrinking the limit.
    pub rtt_tolerance: f64,
    /// Latency samples are averaged over windows of at least this long…
    pub window: Duration,
    /// …and at least this many samples; one limit update per window.
    pub min_window_samples: usize,
    /// Every this long, `min_rtt` is forgotten and the limit drops to
    /// `max(min_limit, √limit)` so that the latency without load is measured again (the
    /// callee's baseline may have changed). `None` never probes.
    pub probe_interval: Option<Duration>,
    /// The retry-after hint of refusals.
    pub retry_after: Duration,
}

impl Default for AdaptiveLimitConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 4,
            max_limit: 1000,
            smoothing: 0.2,
            rtt_tolerance: 2.0,
            window: Duration::from_secs(1),
            min_window_samples: 10,
            probe_interval: Some(Duration::from_secs(600)),
            retry_after: Duration::from_millis(50),
        }
    }
}

impl AdaptiveLimitConfig {
    /// Sets the limit before any latency was measured.
    pub fn initial_limit(mut self, initial_limit: usize) -> Self {
        self.initial_limit = initial_limit;
        self
    }

    /// Sets the lowest the limit goes (0 is read as 1).
    pub fn min_limit(mut self, min_limit: usize) -> Self {
        self.min_limit = min_limit;
        self
    }

    /// Sets the highest the limit goes.
    pub fn max_limit(mut self, max_limit: usize) -> Self {
        self.max_limit = max_limit;
        self
    }

    /// Sets how far each update moves the limit toward the newly computed one (0 < s ≤ 1).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// Sets how much slower than `min_rtt` a window may be before the limit comes down.
    pub fn rtt_tolerance(mut self, rtt_tolerance: f64) -> Self {
        self.rtt_tolerance = rtt_tolerance;
        self
    }

    /// Sets the shortest window latency samples are averaged over.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets the fewest samples a window averages; one limit update per window.
    pub fn min_window_samples(mut self, min_window_samples: usize) -> Self {
        self.min_window_samples = min_window_samples;
        self
    }

    /// Sets how often `min_rtt` is forgotten and the limit dropped, to measure the latency
    /// without load again.
    pub fn probe_interval(mut self, probe_interval: Duration) -> Self {
        self.probe_interval = Some(probe_interval);
        self
    }

    /// Sets the retry-after hint of refusals.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }
}

#[derive(Debug)]
struct Gradient {
    limit: f64,
    min_rtt: Option<Duration>,
    window_start: Instant,
    samples: usize,
    rtt_sum: Duration,
    /// Most calls in flight seen at the start of a call of this window.
    max_in_flight: usize,
    dropped: bool,
    last_probe: Instant,
}

#[derive(Debug)]
struct AdaptiveShared {
    config: AdaptiveLimitConfig,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    gradient: Mutex<Gradient>,
}

impl AdaptiveShared {
    fn bounds(&self) -> (f64, f64) {
        let min = self.config.min_limit.max(1) as f64;
        (min, (self.config.max_limit as f64).max(min))
    }

    /// Records one completed call; closes the window and updates the limit when due.
    fn sample(&self, rtt: Duration, in_flight_at_start: usize, dropped: bool) {
        let now = Instant::now();
        let c = &self.config;
        let mut g = self.gradient.lock().unwrap_or_else(|e| e.into_inner());
        if !dropped {
            g.min_rtt = Some(g.min_rtt.map_or(rtt, |m| m.min(rtt)));
            g.rtt_sum += rtt;
            g.samples += 1;
        }
        g.dropped |= dropped;
        g.max_in_flight = g.max_in_flight.max(in_flight_at_start);
        if now - g.window_start < c.window || (g.samples < c.min_window_samples && !g.dropped) {
            return;
        }
        let (min, max) = self.bounds();
        let limit = g.limit;
        let target = if g.dropped {
            // The callee refused calls: back off.
            limit * 0.9
        } else if (g.max_in_flight as f64) < limit / 2.0 {
            // Too little traffic to tell whether the limit is right.
            limit
        } else {
            let rtt = g.rtt_sum.as_secs_f64() / g.samples as f64;
            let min_rtt = g.min_rtt.map_or(rtt, |m| m.as_secs_f64());
            let gradient = if rtt > 0.0 {
                (c.rtt_tolerance * min_rtt / rtt).clamp(0.5, 1.0)
            } else {
                1.0
            };
            limit * gradient + limit.sqrt()
        };
        let s = c.smoothing.clamp(f64::MIN_POSITIVE, 1.0);
        let mut next = (limit * (1.0 - s) + target * s).clamp(min, max);
        if c.probe_interval.is_some_and(|p| now - g.last_probe >= p) {
            g.last_probe = now;
            g.min_rtt = None;
            next = next.sqrt().clamp(min, max);
        }
        if (next - limit).abs() >= 1.0 {
            tracing::debug!(from = limit, to = next, "adaptive concurrency limit");
        }
        g.limit = next;
        g.window_start = now;
        g.samples = 0;
        g.rtt_sum = Duration::ZERO;
        g.max_in_flight = 0;
        g.dropped = false;
        self.limit.store(next as usize, Ordering::Release);
    }
}

/// Releases an adaptive slot; records the latency when the call completed.
struct AdaptivePermit {
    shared: Arc<AdaptiveShared>,
    started: Instant,
    in_flight_at_start: usize,
    /// `Some(dropped)` once the call completed; a cancelled call records nothing.
    outcome: Option<bool>,
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(dropped) = self.outcome {
            self.shared
                .sample(self.started.elapsed(), self.in_flight_at_start, dropped);
        }
    }
}

/// Applies [`AdaptiveLimit`]; every service it makes shares one limit.
///
/// ```
/// use std::time::Duration;
/// use polycall_core::{handler_fn, Call, Reply};
/// use polycall_layers::limit::{AdaptiveLimitConfig, AdaptiveLimitLayer};
/// use tower::Layer;
///
/// let layer = AdaptiveLimitLayer::new(
///     AdaptiveLimitConfig::default()
///         .initial_limit(50)
///         .max_limit(500)
///         .window(Duration::from_millis(500)),
/// );
/// let handler = handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) });
/// let limited = layer.layer(handler);
/// assert_eq!(limited.limit(), 50);
/// ```
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer {
    shared: Arc<AdaptiveShared>,
}

impl AdaptiveLimitLayer {
    /// A layer starting at `config.initial_limit`.
    pub fn new(config: AdaptiveLimitConfig) -> Self {
        let now = Instant::now();
        let min = config.min_limit.max(1);
        let initial = config.initial_limit.clamp(min, config.max_limit.max(min));
        Self {
            shared: Arc::new(AdaptiveShared {
                config,
                limit: AtomicUsize::new(initial),
                in_flight: AtomicUsize::new(0),
                gradient: Mutex::new(Gradient {
                    limit: initial as f64,
                    min_rtt: None,
                    window_start: now,
                    samples: 0,
                    rtt_sum: Duration::ZERO,
                    max_in_flight: 0,
                    dropped: false,
                    last_probe: now,
                }),
            }),
        }
    }
}

impl<S> Layer<S> for AdaptiveLimitLayer {
    type Service = AdaptiveLimit<S>;

    fn layer(&self, inner: S) -> AdaptiveLimit<S> {
        AdaptiveLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Bounds the calls in flight by a limit that adapts to latency; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct AdaptiveLimit<S> {
    inner: S,
    shared: Arc<AdaptiveShared>,
}

impl<S> AdaptiveLimit<S> {
    /// The limit now.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Acquire)
    }

    /// The lowest latency seen since the last probe.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.shared
            .gradient
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .min_rtt
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }
}

impl<S> Service<Call> for AdaptiveLimit<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        let limit = shared.limit.load(Ordering::Acquire);
        let Ok(before) = shared
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
        else {
            return busy(
                format!(
                    "the adaptive concurrency limit ({limit} calls in flight) is reached; \
                     retry later"
                ),
                shared.config.retry_after,
            );
        };
        let mut permit = AdaptivePermit {
            shared: shared.clone(),
            started: Instant::now(),
            in_flight_at_start: before + 1,
            outcome: None,
        };
        let fut = inner.call(call);
        ResponseFuture::new(async move {
            let result = fut.await;
            permit.outcome = Some(matches!(&result, Err(s) if s.code == Code::Busy));
            drop(permit);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use polycall_core::{Metadata, Payload, handler_fn};
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    use super::*;

    fn call(priority: Priority) -> Call {
        Call::new("work.do", Payload::empty())
            .unwrap()
            .with_metadata(Metadata::default().with_priority(priority))
    }

    /// An inner service whose calls wait until the test lets them finish.
    fn gated(
        gate: Arc<Semaphore>,
    ) -> impl Service<Call, Response = Reply, Error = Status, Future: Send> + Clone + Send + 'static
    {
        handler_fn(move |_c: Call| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok(Reply::default())
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_call_over_the_limit_is_refused_at_once() {
        let gate = Arc::new(Semaphore::new(0));
        let svc = ConcurrencyLimit::new(gated(gate.clone()), ConcurrencyLimitConfig::fixed(3));
        let running: Vec<_> = (0..3)
            .map(|_| tokio::spawn(svc.clone().oneshot(call(Priority::Normal))))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(svc.in_flight(), 3);
        let start = Instant::now();
        let err = svc
            .clone()
            .oneshot(call(Priority::Normal))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Busy);
        assert!(err.retry_after.is_some());
        assert!(err.never_ran());
        assert_eq!(Instant::now(), start, "refused without waiting");
        // One finishes: the next call is admitted again.
        gate.add_permits(1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(svc.in_flight(), 2);
        let next = tokio::spawn(svc.clone().oneshot(call(Priority::Normal)));
        tokio::task::yield_now().await;
        assert_eq!(svc.in_flight(), 3);
        gate.add_permits(3);
        next.await.unwrap().unwrap();
        for r in running {
            r.await.unwrap().unwrap();
        }
        assert_eq!(svc.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_queue_waits_then_refuses() {
        let gate = Arc::new(Semaphore::new(0));
        let cfg = ConcurrencyLimitConfig {
            queue: 1,
            queue_timeout: Duration::from_millis(100),
            ..ConcurrencyLimitConfig::fixed(1)
        };
        let svc = ConcurrencyLimit::new(gated(gate.clone()), cfg);
        let first = tokio::spawn(svc.clone().oneshot(call(Priority::Normal)));
        tokio::task::yield_now().await;
        // The second waits in the queue; the third finds the queue full.
        let start = Instant::now();
        let queued = tokio::spawn(svc.clone().oneshot(call(Priority::Normal)));
        tokio::task::yield_now().await;
        let err = svc
            .clone()
            .oneshot(call(Priority::Normal))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Busy);
        assert_eq!(Instant::now(), start);
        // The queued call times out after 100 ms.
        let err = queued.await.unwrap().unwrap_err();
        assert_eq!(err.code, Code::Busy);
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
        // A queued call gets the slot as soon as it frees.
        let queued = tokio::spawn(svc.clone().oneshot(call(Priority::Normal)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        gate.add_permits(2);
        first.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        assert!(Instant::now() - start < Duration::from_millis(140));
    }

    #[tokio::test(start_paused = true)]
    async fn priority_reservation_lets_critical_calls_through_while_normal_ones_are_shed() {
        let gate = Arc::new(Semaphore::new(0));
        let cfg = ConcurrencyLimitConfig {
            max: 10,
            class_share: [1.0, 1.0, 0.8, 0.5],
            ..ConcurrencyLimitConfig::default()
        };
        assert_eq!(cfg.cap(Priority::Normal), 8);
        assert_eq!(cfg.cap(Priority::Low), 5);
        let svc = ConcurrencyLimit::new(gated(gate.clone()), cfg);
        let mut running = Vec::new();
        for _ in 0..8 {
            running.push(tokio::spawn(svc.clone().oneshot(call(Priority::Normal))));
        }
        tokio::task::yield_now().await;
        assert_eq!(svc.in_flight(), 8);
        // Normal and Low are shed now…
        for p in [Priority::Normal, Priority::Low] {
            let err = svc.clone().oneshot(call(p)).await.unwrap_err();
            assert_eq!(err.code, Code::Busy, "{p:?}");
            assert!(err.message.contains("load shedding"), "{}", err.message);
        }
        // …while Critical and High still get the reserved slots.
        running.push(tokio::spawn(svc.clone().oneshot(call(Priority::Critical))));
        running.push(tokio::spawn(svc.clone().oneshot(call(Priority::High))));
        tokio::task::yield_now().await;
        assert_eq!(svc.in_flight(), 10);
        let err = svc
            .clone()
            .oneshot(call(Priority::Critical))
            .await
            .unwrap_err();
        assert!(err.message.contains("limit of 10"), "{}", err.message);
        gate.add_permits(10);
        for r in running {
            r.await.unwrap().unwrap();
        }
        // With the load gone, Low calls are admitted again.
        gate.add_permits(1);
        svc.clone().oneshot(call(Priority::Low)).await.unwrap();
    }

    /// A callee with 10 workers: up to 10 concurrent calls take 10 ms, beyond that
    /// they queue and latency grows with concurrency.
    fn queueing_callee(
        concurrency: Arc<AtomicUsize>,
    ) -> impl Service<Call, Response = Reply, Error = Status, Future: Send> + Clone + Send + 'static
    {
        handler_fn(move |_c: Call| {
            let concurrency = concurrency.clone();
            async move {
                let n = concurrency.fetch_add(1, Ordering::SeqCst) + 1;
                let ms = 10 * n.max(10) as u64 / 10;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                concurrency.fetch_sub(1, Ordering::SeqCst);
                Ok(Reply::default())
            }
        })
    }

    async fn client<S>(svc: S, until: Instant)
    where
        S: Service<Call, Response = Reply, Error = Status> + Clone,
    {
        while Instant::now() < until {
            if let Err(e) = svc.clone().oneshot(call(Priority::Normal)).await {
                assert_eq!(e.code, Code::Busy);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limit_converges_down_when_latency_rises_with_concurrency() {
        let layer = AdaptiveLimitLayer::new(AdaptiveLimitConfig {
            initial_limit: 100,
            min_limit: 2,
            max_limit: 200,
            window: Duration::from_millis(100),
            probe_interval: None,
            ..AdaptiveLimitConfig::default()
        });
        let svc = layer.layer(queueing_callee(Arc::default()));
        // Light load first: the latency without queueing (10 ms) is seen.
        let start = Instant::now();
        client(svc.clone(), start + Duration::from_millis(300)).await;
        assert_eq!(svc.min_rtt(), Some(Duration::from_millis(10)));
        assert_eq!(svc.limit(), 100, "too little traffic to move the limit");
        // Then 60 clients: the callee queues, the limit comes down to where latency
        // stays within the tolerance (2 × 10 ms at ~20 calls, plus √limit).
        let until = Instant::now() + Duration::from_secs(10);
        let clients: Vec<_> = (0..60)
            .map(|_| tokio::spawn(client(svc.clone(), until)))
            .collect();
        let mut seen = Vec::new();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            seen.push(svc.limit());
        }
        for c in clients {
            c.await.unwrap();
        }
        let last = *seen.last().unwrap();
        assert!((15..=35).contains(&last), "limits over time {seen:?}");
        assert!(
            seen[seen.len() - 3..].iter().all(|l| l.abs_diff(last) <= 5),
            "{seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limit_grows_while_latency_stays_flat_and_refuses_beyond_it() {
        let layer = AdaptiveLimitLayer::new(AdaptiveLimitConfig {
            initial_limit: 10,
            max_limit: 40,
            window: Duration::from_millis(100),
            probe_interval: None,
            ..AdaptiveLimitConfig::default()
        });
        // A callee that never queues.
        let flat = handler_fn(|_c: Call| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(Reply::default())
        });
        let svc = layer.layer(flat);
        let until = Instant::now() + Duration::from_secs(5);
        let clients: Vec<_> = (0..60)
            .map(|_| tokio::spawn(client(svc.clone(), until)))
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(svc.in_flight(), 10);
        for c in clients {
            c.await.unwrap();
        }
        assert_eq!(svc.limit(), 40, "grows to max_limit");
    }
}
