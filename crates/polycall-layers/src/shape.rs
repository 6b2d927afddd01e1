//! Traffic shaping: token buckets in bytes per second, per priority class and in total.
//!
//! A [`Shape`] wraps one connection's service (one shaper instance = one connection: each
//! [`ShapeLayer::layer`] call makes fresh buckets, clones of the resulting service share
//! them). Before a call is forwarded, the shaper waits until the bucket of the call's
//! [`Priority`] class and the total bucket both hold `payload.len()` tokens, then takes
//! them. Only the request payload is counted.
//!
//! - A bucket refills at `bytes_per_sec` up to `burst_bytes`; a connection that was quiet
//!   may send `burst_bytes` at once.
//! - A payload larger than the burst is not refused: it waits until the bucket is full,
//!   passes, and leaves the bucket in debt. Large messages therefore still flow, at the
//!   configured average rate.
//! - Tokens are reserved when the call arrives, so concurrent calls on one connection are
//!   released in arrival order and never overdraw a bucket together.
//! - The wait respects the call's deadline: when the call could only be sent after its
//!   deadline, it fails at once with `deadline_exceeded` (marked not executed) and takes
//!   no tokens.
//!
//! Time is `tokio::time::Instant`, so the shaper runs on tokio's (pausable) clock.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Priority, Reply, Status};
use tokio::time::Instant;
use tower::Layer;
use tower_service::Service;

crate::response_future! {
    /// The future of [`Shape`]'s calls.
    ResponseFuture
}

/// A byte rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained rate in bytes per second (0 is read as 1).
    pub bytes_per_sec: u64,
    /// Bytes that may pass at once after a quiet period (the bucket's size; 0 is read as 1).
    pub burst_bytes: u64,
}

impl Rate {
    /// `bytes_per_sec` sustained with bursts of up to `burst_bytes`.
    pub fn new(bytes_per_sec: u64, burst_bytes: u64) -> Self {
        Self {
            bytes_per_sec,
            burst_bytes,
        }
    }
}

/// Which rates a [`Shape`] enforces. `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShapeConfig {
    /// Rate of each priority class, indexed by `Priority as usize`
    /// (`[Critical, High, Normal, Low]`).
    pub per_class: [Option<Rate>; 4],
    /// Rate of all classes together.
    pub total: Option<Rate>,
}

impl ShapeConfig {
    /// Limits the class `priority` to `rate`.
    pub fn class(mut self, priority: Priority, rate: Rate) -> Self {
        self.per_class[priority as usize] = Some(rate);
        self
    }

    /// Limits all classes together to `rate`.
    pub fn total(mut self, rate: Rate) -> Self {
        self.total = Some(rate);
        self
    }

    /// Sets the rate of each priority class, indexed by `Priority as usize` (`None`:
    /// unlimited).
    pub fn per_class(mut self, per_class: [Option<Rate>; 4]) -> Self {
        self.per_class = per_class;
        self
    }
}

/// A token bucket, kept as the instant at which it will be full again (tokens at `t` are
/// `burst - rate × (full_at - t)`, negative while in debt). Charging at a future instant
/// is exact, which lets one call reserve from two buckets at the later of their times.
#[derive(Debug, Clone)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Bucket size in bytes.
    burst: f64,
    full_at: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate: rate.bytes_per_sec.max(1) as f64,
            burst: rate.burst_bytes.max(1) as f64,
            full_at: now,
        }
    }

    /// The earliest instant (not before `now`) at which the bucket holds
    /// `min(n, burst)` tokens.
    fn earliest(&self, n: u64, now: Instant) -> Instant {
        let need = (n as f64).min(self.burst);
        let slack = Duration::from_secs_f64((self.burst - need) / self.rate);
        self.full_at.checked_sub(slack).map_or(now, |t| t.max(now))
    }

    /// Takes `n` tokens at instant `at`.
    fn charge(&mut self, n: u64, at: Instant) {
        self.full_at = self.full_at.max(at) + Duration::from_secs_f64(n as f64 / self.rate);
    }

    /// Tokens held at `now` (negative while in debt).
    fn tokens(&self, now: Instant) -> f64 {
        if self.full_at <= now {
            self.burst
        } else {
            self.burst - self.rate * (self.full_at - now).as_secs_f64()
        }
    }
}

#[derive(Debug)]
struct Buckets {
    per_class: [Option<Bucket>; 4],
    total: Option<Bucket>,
}

impl Buckets {
    fn new(config: &ShapeConfig) -> Self {
        let now = Instant::now();
        Self {
            per_class: config.per_class.map(|r| r.map(|r| Bucket::new(r, now))),
            total: config.total.map(|r| Bucket::new(r, now)),
        }
    }

    /// Reserves `n` bytes of class `class` and answers when they may be sent, or
    /// `None` (nothing reserved) when that is after `not_after`.
    fn reserve(
        &mut self,
        class: usize,
        n: u64,
        now: Instant,
        not_after: Option<Instant>,
    ) -> Option<Instant> {
        let mut at = now;
        for b in [&self.per_class[class], &self.total].into_iter().flatten() {
            at = at.max(b.earliest(n, now));
        }
        if not_after.is_some_and(|d| at > d) {
            return None;
        }
        for b in [&mut self.per_class[class], &mut self.total]
            .into_iter()
            .flatten()
        {
            b.charge(n, at);
        }
        Some(at)
    }
}

/// Applies [`Shape`] to services: each service it makes has its own buckets.
///
/// ```
/// use polycall_core::{handler_fn, Call, Priority, Reply};
/// use polycall_layers::shape::{Rate, ShapeConfig, ShapeLayer};
/// use tower::Layer;
///
/// // Background work gets 1 MB/s, everything together 10 MB/s.
/// let config = ShapeConfig::default()
///     .class(Priority::Low, Rate::new(1_000_000, 64 * 1024))
///     .total(Rate::new(10_000_000, 256 * 1024));
/// let connection = handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) });
/// let shaped = ShapeLayer::new(config).layer(connection);
/// # let _ = shaped;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ShapeLayer {
    config: ShapeConfig,
}

impl ShapeLayer {
    /// A layer enforcing `config`.
    pub fn new(config: ShapeConfig) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for ShapeLayer {
    type Service = Shape<S>;

    fn layer(&self, inner: S) -> Shape<S> {
        Shape::new(inner, self.config.clone())
    }
}

/// Shapes the calls sent to one connection's service; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Shape<S> {
    inner: S,
    buckets: Arc<Mutex<Buckets>>,
}

impl<S> Shape<S> {
    /// Shapes `inner` with fresh (full) buckets.
    pub fn new(inner: S, config: ShapeConfig) -> Self {
        Self {
            inner,
            buckets: Arc::new(Mutex::new(Buckets::new(&config))),
        }
    }

    /// Tokens (bytes) the bucket of `priority` holds now, `None` when that class is
    /// unlimited. Negative while the bucket is in debt.
    pub fn class_tokens(&self, priority: Priority) -> Option<f64> {
        let b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        b.per_class[priority as usize]
            .as_ref()
            .map(|b| b.tokens(Instant::now()))
    }

    /// Tokens (bytes) the total bucket holds now, `None` when unlimited.
    pub fn total_tokens(&self) -> Option<f64> {
        let b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        b.total.as_ref().map(|b| b.tokens(Instant::now()))
    }
}

impl<S> Service<Call> for Shape<S>
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
        // The service that was polled ready goes with this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let now = Instant::now();
        let deadline = call.metadata.deadline.map(|d| Instant::from_std(d.0));
        let class = call.metadata.priority as usize;
        let n = call.payload.len() as u64;
        let send_at = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(class, n, now, deadline);
        let Some(send_at) = send_at else {
            let priority = call.metadata.priority;
            return ResponseFuture::new(std::future::ready(Err(Status::deadline_exceeded(
                format!(
                    "traffic shaping: the {n}-byte {priority:?} call could not be sent \
                 before its deadline"
                ),
            )
            .not_executed())));
        };
        if send_at <= now {
            return ResponseFuture::new(inner.call(call));
        }
        ResponseFuture::new(async move {
            tokio::time::sleep_until(send_at).await;
            inner.call(call).await
        })
    }
}

#[cfg(test)]
mod tests {
    use polycall_core::{Code, Metadata, Payload, handler_fn};
    use tower::ServiceExt;

    use super::*;

    /// A connection stand-in that records when each call arrived and how big it was.
    #[derive(Clone, Default)]
    struct Recorder {
        sent: Arc<Mutex<Vec<(Instant, Priority, u64)>>>,
    }

    impl Recorder {
        fn service(
            &self,
        ) -> impl Service<Call, Response = Reply, Error = Status, Future: Send> + Clone + Send + 'static
        {
            let sent = self.sent.clone();
            handler_fn(move |c: Call| {
                let sent = sent.clone();
                async move {
                    sent.lock().unwrap().push((
                        Instant::now(),
                        c.metadata.priority,
                        c.payload.len() as u64,
                    ));
                    Ok(Reply::default())
                }
            })
        }

        /// Bytes of `class` (or all classes) sent at or before `until`.
        fn bytes(&self, class: Option<Priority>, until: Instant) -> u64 {
            self.sent
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, p, _)| *t <= until && class.is_none_or(|c| c == *p))
                .map(|(_, _, n)| n)
                .sum()
        }
    }

    fn call(priority: Priority, bytes: usize) -> Call {
        Call::new("bulk.put", Payload::raw(vec![0u8; bytes]))
            .unwrap()
            .with_metadata(Metadata::default().with_priority(priority))
    }

    /// Sends `bytes`-sized calls of `priority` back to back until `until`.
    async fn flood<S>(mut svc: S, priority: Priority, bytes: usize, until: Instant)
    where
        S: Service<Call, Response = Reply, Error = Status>,
    {
        while Instant::now() < until {
            svc.ready()
                .await
                .unwrap()
                .call(call(priority, bytes))
                .await
                .unwrap();
        }
    }

    const KIB64: usize = 64 * 1024;

    fn within(actual: u64, expected: f64, tolerance: f64) -> bool {
        (actual as f64 - expected).abs() <= expected * tolerance
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_class_sends_at_its_rate() {
        let rec = Recorder::default();
        let cfg =
            ShapeConfig::default().class(Priority::Normal, Rate::new(1_000_000, KIB64 as u64));
        let svc = ShapeLayer::new(cfg).layer(rec.service());
        let start = Instant::now();
        let end = start + Duration::from_secs(5);
        flood(svc, Priority::Normal, KIB64, end).await;
        let sent = rec.bytes(Some(Priority::Normal), end);
        assert!(within(sent, 5_000_000.0, 0.05), "sent {sent} bytes in 5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_class_is_not_slowed() {
        let rec = Recorder::default();
        let cfg = ShapeConfig::default().class(Priority::Low, Rate::new(1_000_000, KIB64 as u64));
        let svc = ShapeLayer::new(cfg).layer(rec.service());
        let start = Instant::now();
        let end = start + Duration::from_secs(5);
        let low = tokio::spawn(flood(svc.clone(), Priority::Low, KIB64, end));
        // 1000 high-priority 64 KiB calls (65 MB) pass while Low is throttled, without
        // the clock moving.
        let mut high = svc.clone();
        for _ in 0..1000 {
            high.ready()
                .await
                .unwrap()
                .call(call(Priority::High, KIB64))
                .await
                .unwrap();
        }
        assert_eq!(Instant::now(), start);
        low.await.unwrap();
        assert!(within(
            rec.bytes(Some(Priority::Low), end),
            5_000_000.0,
            0.05
        ));
        assert_eq!(rec.bytes(Some(Priority::High), end), 1000 * KIB64 as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_limit_caps_the_sum() {
        let rec = Recorder::default();
        let cfg = ShapeConfig::default()
            .class(Priority::Low, Rate::new(1_000_000, KIB64 as u64))
            .total(Rate::new(1_500_000, KIB64 as u64));
        let svc = ShapeLayer::new(cfg).layer(rec.service());
        let end = Instant::now() + Duration::from_secs(5);
        let a = tokio::spawn(flood(svc.clone(), Priority::Low, KIB64, end));
        let b = tokio::spawn(flood(svc.clone(), Priority::Normal, KIB64, end));
        let c = tokio::spawn(flood(svc.clone(), Priority::High, 16 * 1024, end));
        for t in [a, b, c] {
            t.await.unwrap();
        }
        let total = rec.bytes(None, end);
        assert!(
            within(total, 7_500_000.0, 0.05),
            "total {total} bytes in 5 s"
        );
        let low = rec.bytes(Some(Priority::Low), end);
        assert!(low <= 5_100_000, "low {low} bytes in 5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_payload_larger_than_the_burst_passes_at_the_average_rate() {
        let rec = Recorder::default();
        let cfg = ShapeConfig::default().total(Rate::new(1_000, 1_000));
        let mut svc = ShapeLayer::new(cfg).layer(rec.service());
        let start = Instant::now();
        for _ in 0..3 {
            svc.ready()
                .await
                .unwrap()
                .call(call(Priority::Normal, 5_000))
                .await
                .unwrap();
        }
        let times: Vec<Duration> = rec
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.0 - start)
            .collect();
        assert_eq!(
            times,
            [0, 5, 10].map(Duration::from_secs).to_vec(),
            "each 5 kB call waits for the 5 s of debt of the one before"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_fails_at_once() {
        let rec = Recorder::default();
        let cfg = ShapeConfig::default().total(Rate::new(1_000, 1_000));
        let mut svc = ShapeLayer::new(cfg).layer(rec.service());
        svc.ready()
            .await
            .unwrap()
            .call(call(Priority::Normal, 5_000))
            .await
            .unwrap();
        // The bucket is 4000 bytes in debt: a 100-byte call may go in 4.1 s.
        let start = Instant::now();
        let md = Metadata::default().with_timeout(start.into_std(), Duration::from_secs(1));
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(call(Priority::Normal, 100).with_metadata(md))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::DeadlineExceeded);
        assert!(err.not_executed);
        assert_eq!(Instant::now(), start, "refused without waiting");
        // Nothing was reserved for it: a call without deadline goes after the same 4.1 s.
        svc.ready()
            .await
            .unwrap()
            .call(call(Priority::Normal, 100))
            .await
            .unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(4_100));
        // A deadline far enough out is waited for.
        let md =
            Metadata::default().with_timeout(Instant::now().into_std(), Duration::from_secs(2));
        svc.ready()
            .await
            .unwrap()
            .call(call(Priority::Normal, 100).with_metadata(md))
            .await
            .unwrap();
        assert_eq!(rec.sent.lock().unwrap().len(), 3);
    }

    #[test]
    fn bucket_tokens_refill_to_burst_and_go_into_debt() {
        let now = Instant::now();
        let mut b = Bucket::new(Rate::new(1_000, 500), now);
        assert_eq!(b.tokens(now), 500.0);
        b.charge(2_000, now);
        assert!((b.tokens(now) + 1_500.0).abs() < 1e-6);
        assert_eq!(b.earliest(100, now), now + Duration::from_millis(1_600));
        assert_eq!(b.tokens(now + Duration::from_secs(10)), 500.0);
    }
}
