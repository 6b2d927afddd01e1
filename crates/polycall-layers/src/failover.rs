//! Failover: a primary endpoint and ordered backups; traffic goes to the first healthy
//! one and returns to the primary when it heals.
//!
//! [`Failover`] holds an ordered list of services (usually one
//! `polycall_net::Channel` per endpoint, primary first) and sends each call to the
//! first endpoint it believes healthy.
//!
//! - **Marking down.** A failure that says something about the endpoint — `unavailable`,
//!   `deadline_exceeded`, or any failure that proves the call never ran
//!   ([`Status::never_ran`]: connection refused, `busy`, an open circuit) — counts
//!   against it; after [`failure_threshold`](FailoverConfig::failure_threshold) such
//!   failures in a row it is marked down and the next call goes to the next endpoint.
//!   Other errors (`invalid_input`, `not_found`, …) prove the endpoint answered and
//!   count as successes.
//! - **Failing over within the call.** When the failed call never ran it is sent to the
//!   next endpoint at once, so the caller does not see the failure at all (it cannot run
//!   twice). A call that may have run is not resent here (that is for a retry layer
//!   above, and only for idempotent calls); the caller gets its error and the next call
//!   goes to the next endpoint.
//! - **Failing back.** A downed endpoint is probed in the background: every
//!   [`probe_interval`](FailoverConfig::probe_interval) a task sends it a
//!   [`probe_method`](FailoverConfig::probe_method) call (`sys.ping`) with a
//!   [`probe_timeout`](FailoverConfig::probe_timeout) deadline. Any answer except one
//!   that would mark it down counts — `unknown_method` from a server without `sys.ping`
//!   still proves it is reachable and serving. After
//!   [`recovery_threshold`](FailoverConfig::recovery_threshold) good probes in a row it
//!   is marked up and, being earlier in the list, gets the traffic back.
//!
//!   Active probing was chosen over letting one real call through after the interval:
//!   no caller's call is ever spent testing an endpoint that is likely still down
//!   (which for a non-idempotent call could not be resent), recovery does not depend on
//!   traffic arriving, and a probe is a tiny call per interval per downed endpoint
//!   only. The probe task holds the list weakly and ends when the endpoint is up again
//!   or the last clone of the `Failover` is dropped.
//! - **All down.** When no endpoint is marked healthy, calls try every endpoint in order
//!   (a probe may simply not have run yet); a success marks that endpoint up.
//!
//! Clones share the endpoints' health. Time is read from tokio's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Code, Deadline, Metadata, Payload, Reply, Status};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_service::Service;

crate::response_future! {
    /// The future of [`Failover`]'s calls.
    ResponseFuture
}

/// How a [`Failover`] judges and probes its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailoverConfig {
    /// How often a downed endpoint is probed. Default: 1 s.
    pub probe_interval: Duration,
    /// Endpoint failures in a row that mark it down. Default: 1.
    pub failure_threshold: u32,
    /// Good probes in a row that mark a downed endpoint up again. Default: 2.
    pub recovery_threshold: u32,
    /// The deadline of each probe call. Default: 1 s.
    pub probe_timeout: Duration,
    /// The method probes call (`SERVICE.METHOD`, with an empty payload).
    /// Default: `sys.ping`.
    pub probe_method: String,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            failure_threshold: 1,
            recovery_threshold: 2,
            probe_timeout: Duration::from_secs(1),
            probe_method: "sys.ping".to_owned(),
        }
    }
}

impl FailoverConfig {
    /// Sets how often a downed endpoint is probed.
    pub fn probe_interval(mut self, probe_interval: Duration) -> Self {
        self.probe_interval = probe_interval;
        self
    }

    /// Sets the endpoint failures in a row that mark it down.
    pub fn failure_threshold(mut self, failure_threshold: u32) -> Self {
        self.failure_threshold = failure_threshold;
        self
    }

    /// Sets the good probes in a row that mark a downed endpoint up again.
    pub fn recovery_threshold(mut self, recovery_threshold: u32) -> Self {
        self.recovery_threshold = recovery_threshold;
        self
    }

    /// Sets the deadline of each probe call.
    pub fn probe_timeout(mut self, probe_timeout: Duration) -> Self {
        self.probe_timeout = probe_timeout;
        self
    }

    /// Sets the method probes call (`SERVICE.METHOD`, with an empty payload).
    pub fn probe_method(mut self, probe_method: impl Into<String>) -> Self {
        self.probe_method = probe_method.into();
        self
    }
}

/// Whether a failure counts against the endpoint's health.
fn marks_down(status: &Status) -> bool {
    matches!(status.code, Code::Unavailable | Code::DeadlineExceeded) || status.never_ran()
}

#[derive(Debug)]
struct Health {
    up: bool,
    failures: u32,
    probing: bool,
}

struct Shared<S> {
    /// Behind mutexes (only held to clone one) so `S` need not be `Sync`.
    services: Vec<Mutex<S>>,
    config: FailoverConfig,
    probe: Call,
    health: Vec<Mutex<Health>>,
    marked_down: AtomicU64,
}

impl<S> std::fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("endpoints", &self.services.len())
            .field("health", &self.health)
            .finish()
    }
}

impl<S> Shared<S> {
    fn health(&self, i: usize) -> std::sync::MutexGuard<'_, Health> {
        self.health[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_up(&self, i: usize) -> bool {
        self.health(i).up
    }

    fn service(&self, i: usize) -> S
    where
        S: Clone,
    {
        self.services[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The endpoints a call tries, in order: the healthy ones, or all when none is.
    fn order(&self) -> Vec<usize> {
        let up: Vec<usize> = (0..self.services.len())
            .filter(|&i| self.is_up(i))
            .collect();
        if up.is_empty() {
            (0..self.services.len()).collect()
        } else {
            up
        }
    }

    fn success(&self, i: usize) {
        let mut h = self.health(i);
        h.failures = 0;
        if !h.up {
            h.up = true;
            tracing::info!(endpoint = i, "failover: endpoint answered again; marked up");
        }
    }
}

impl<S> Shared<S>
where
    S: Service<Call, Response = Reply, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    fn failure(self: &Arc<Self>, i: usize, status: &Status) {
        let mut h = self.health(i);
        h.failures = h.failures.saturating_add(1);
        if h.up && h.failures >= self.config.failure_threshold.max(1) {
            h.up = false;
            self.marked_down.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = i, %status, "failover: endpoint marked down");
        }
        if !h.up && !h.probing {
            h.probing = true;
            tokio::spawn(probe_loop(Arc::downgrade(self), i));
        }
    }
}

async fn probe_loop<S>(shared: Weak<Shared<S>>, i: usize)
where
    S: Service<Call, Response = Reply, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut good = 0;
    loop {
        let Some(interval) = shared.upgrade().map(|s| s.config.probe_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(s) = shared.upgrade() else { return };
        {
            // Checked and cleared under one lock, so a failure marking the endpoint down
            // again either sees `probing` cleared (and starts a new task) or is seen here.
            let mut h = s.health(i);
            if h.up {
                h.probing = false;
                return;
            }
        }
        let timeout = s.config.probe_timeout;
        let mut probe = s.probe.clone();
        probe.metadata.deadline = Some(Deadline::after(Instant::now().into_std(), timeout));
        let svc = s.service(i);
        let recovery = s.config.recovery_threshold.max(1);
        drop(s);
        let result = tokio::time::timeout(timeout, svc.oneshot(probe)).await;
        let alive = match &result {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => !marks_down(e),
            Err(_) => false,
        };
        let Some(s) = shared.upgrade() else { return };
        if alive {
            good += 1;
            if good >= recovery {
                let mut h = s.health(i);
                h.up = true;
                h.failures = 0;
                h.probing = false;
                tracing::info!(
                    endpoint = i,
                    "failover: probes succeeded; endpoint marked up"
                );
                return;
            }
        } else {
            good = 0;
            tracing::debug!(endpoint = i, ?result, "failover: probe failed");
        }
    }
}

/// Sends calls to the first healthy of an ordered list of services. See the
/// [module docs](self).
///
/// It is ready at once; the readiness of the endpoint a call goes to is awaited inside
/// the call's future.
///
/// ```no_run
/// # async fn demo() -> Result<(), polycall_core::Status> {
/// use std::time::Duration;
/// use polycall_core::{Call, Payload};
/// use polycall_net::Channel;
/// use polycall_layers::failover::{Failover, FailoverConfig};
/// use tower::ServiceExt;
///
/// let primary = Channel::connect("10.0.0.1:7000".parse().unwrap()).await?;
/// let backup = Channel::connect("10.0.0.2:7000".parse().unwrap()).await?;
/// let failover = Failover::new(
///     vec![primary, backup],
///     FailoverConfig::default().probe_interval(Duration::from_millis(500)),
/// );
/// let reply = failover.clone().oneshot(Call::new("kv.get", Payload::raw("k")).unwrap()).await?;
/// println!("answered by endpoint {}", failover.active());
/// # Ok(()) }
/// ```
pub struct Failover<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Failover<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl<S> Failover<S> {
    /// A failover over `services`, primary first, all assumed healthy.
    ///
    /// # Panics
    ///
    /// When `services` is empty or `config.probe_method` is not a valid
    /// `SERVICE.METHOD` name (both are programming errors).
    pub fn new(services: Vec<S>, config: FailoverConfig) -> Self {
        assert!(
            !services.is_empty(),
            "a Failover needs at least one service (the primary)"
        );
        let probe = Call::new(&config.probe_method, Payload::empty())
            .unwrap_or_else(|e| panic!("FailoverConfig::probe_method is invalid: {e}"))
            .with_metadata(Metadata::default().idempotent());
        let health = services
            .iter()
            .map(|_| {
                Mutex::new(Health {
                    up: true,
                    failures: 0,
                    probing: false,
                })
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                services: services.into_iter().map(Mutex::new).collect(),
                config,
                probe,
                health,
                marked_down: AtomicU64::new(0),
            }),
        }
    }

    /// The index of the endpoint the next call goes to: the first healthy one (the
    /// primary, 0, when every endpoint is down, as calls then try all in order).
    pub fn active(&self) -> usize {
        self.shared.order()[0]
    }

    /// Whether endpoint `i` is believed healthy.
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    pub fn is_up(&self, i: usize) -> bool {
        self.shared.is_up(i)
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.shared.services.len()
    }

    /// Always `false`: a failover has at least its primary.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// How many times an endpoint was marked down.
    pub fn marked_down(&self) -> u64 {
        self.shared.marked_down.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub fn config(&self) -> &FailoverConfig {
        &self.shared.config
    }
}

impl<S> Service<Call> for Failover<S>
where
    S: Service<Call, Response = Reply, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> ResponseFuture {
        let shared = Arc::clone(&self.shared);
        ResponseFuture::new(async move {
            let order = shared.order();
            let tried = order.len();
            let mut last = None;
            for i in order {
                let svc = shared.service(i);
                let status = match svc.oneshot(call.clone()).await {
                    Ok(reply) => {
                        shared.success(i);
                        return Ok(reply);
                    }
                    Err(status) => status,
                };
                if !marks_down(&status) {
                    shared.success(i); // it answered
                    return Err(status);
                }
                shared.failure(i, &status);
                let expired = call
                    .metadata
                    .deadline
                    .is_some_and(|d| d.is_expired(Instant::now().into_std()));
                if !status.never_ran() || expired {
                    return Err(status);
                }
                tracing::debug!(endpoint = i, %status, "failover: the call never ran; trying the next endpoint");
                last = Some(status);
            }
            let mut status = last.unwrap_or_else(|| Status::unavailable("no endpoint to call"));
            if tried > 1 {
                status.message = format!(
                    "all {tried} endpoints of the failover refused the call (last: {}); check \
                     that at least one is running",
                    status.message
                );
            }
            Err(status)
        })
    }
}

/// Builds a [`Failover`] with the wrapped service as primary and fixed backups (a
/// [`Layer`] for `ServiceBuilder` stacks; [`Failover::new`] is the direct way). Each
/// service it builds has its own health state.
///
/// ```no_run
/// # async fn demo() -> Result<(), polycall_core::Status> {
/// use polycall_net::Channel;
/// use polycall_layers::failover::{FailoverConfig, FailoverLayer};
/// let backup = Channel::connect("10.0.0.2:7000".parse().unwrap()).await?;
/// let primary = Channel::connect("10.0.0.1:7000".parse().unwrap()).await?;
/// let svc = tower::ServiceBuilder::new()
///     .layer(FailoverLayer::new(vec![backup], FailoverConfig::default()))
///     .service(primary);
/// assert_eq!(svc.len(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FailoverLayer<S> {
    backups: Vec<S>,
    config: FailoverConfig,
}

impl<S> FailoverLayer<S> {
    /// A layer adding `backups`, in order, behind the wrapped primary.
    pub fn new(backups: Vec<S>, config: FailoverConfig) -> Self {
        Self { backups, config }
    }
}

impl<S: Clone> Layer<S> for FailoverLayer<S> {
    type Service = Failover<S>;

    fn layer(&self, primary: S) -> Failover<S> {
        let mut services = Vec::with_capacity(1 + self.backups.len());
        services.push(primary);
        services.extend(self.backups.iter().cloned());
        Failover::new(services, self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use polycall_core::BoxFuture;

    /// An endpoint that answers with its name, or — while down — refuses like a closed
    /// port (`unavailable`, not executed). Counts real calls and probes separately.
    #[derive(Clone)]
    struct Endpoint {
        name: &'static str,
        down: Arc<AtomicBool>,
        down_status: Arc<Mutex<Status>>,
        calls: Arc<AtomicUsize>,
        probes: Arc<AtomicUsize>,
    }

    impl Endpoint {
        fn new(name: &'static str) -> Self {
            Self {
                name,
                down: Arc::default(),
                down_status: Arc::new(Mutex::new(
                    Status::unavailable(format!("cannot connect to {name}")).not_executed(),
                )),
                calls: Arc::default(),
                probes: Arc::default(),
            }
        }
        fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn probes(&self) -> usize {
            self.probes.load(Ordering::SeqCst)
        }
    }

    impl Service<Call> for Endpoint {
        type Response = Reply;
        type Error = Status;
        type Future = BoxFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, call: Call) -> BoxFuture {
            let probe = call.full_name() == "sys.ping";
            if probe {
                self.probes.fetch_add(1, Ordering::SeqCst);
            } else {
                self.calls.fetch_add(1, Ordering::SeqCst);
            }
            let result = if self.down.load(Ordering::SeqCst) {
                Err(self.down_status.lock().unwrap().clone())
            } else if probe {
                // A plain server without `sys.ping`: still proves it is up.
                Err(Status::unknown_method("no sys.ping here"))
            } else {
                Ok(Reply::new(Payload::raw(self.name)))
            };
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                result
            })
        }
    }

    fn config() -> FailoverConfig {
        FailoverConfig {
            probe_interval: Duration::from_millis(100),
            failure_threshold: 1,
            recovery_threshold: 2,
            probe_timeout: Duration::from_millis(50),
            ..FailoverConfig::default()
        }
    }

    async fn whoami(f: &Failover<Endpoint>) -> Result<String, Status> {
        let call = Call::new("debug.whoami", Payload::empty()).unwrap();
        let reply = f.clone().oneshot(call).await?;
        Ok(String::from_utf8(reply.payload.bytes.to_vec()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn calls_go_to_the_primary_while_it_is_healthy() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        let f = Failover::new(vec![a.clone(), b.clone()], config());
        for _ in 0..10 {
            assert_eq!(whoami(&f).await.unwrap(), "a");
        }
        assert_eq!((a.calls(), b.calls()), (10, 0));
        assert_eq!(f.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_ran_moves_to_the_secondary_unseen() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        let f = Failover::new(vec![a.clone(), b.clone()], config());
        a.set_down(true);
        assert_eq!(
            whoami(&f).await.unwrap(),
            "b",
            "the caller never saw the failure"
        );
        assert_eq!(f.active(), 1);
        assert!(!f.is_up(0));
        assert_eq!(f.marked_down(), 1);
        for _ in 0..5 {
            assert_eq!(whoami(&f).await.unwrap(), "b");
        }
        assert_eq!(a.calls(), 1, "no more real calls to the downed primary");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_may_have_run_fails_but_the_next_goes_to_the_secondary() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        *a.down_status.lock().unwrap() = Status::unavailable("the connection was lost");
        let f = Failover::new(vec![a.clone(), b.clone()], config());
        a.set_down(true);
        let err = whoami(&f).await.unwrap_err();
        assert_eq!(err.message, "the connection was lost");
        assert_eq!(b.calls(), 0, "not resent: it may have run");
        assert_eq!(f.active(), 1);
        assert_eq!(whoami(&f).await.unwrap(), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_returns_to_the_primary_when_it_heals() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        let f = Failover::new(vec![a.clone(), b.clone()], config());
        a.set_down(true);
        assert_eq!(whoami(&f).await.unwrap(), "b");
        // Down for a while: probed every 100 ms, no real calls.
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert_eq!(a.probes(), 10);
        assert_eq!(f.active(), 1);
        assert_eq!(whoami(&f).await.unwrap(), "b");

        a.set_down(false);
        let healed = Instant::now();
        while f.active() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Two good probes in a row (recovery_threshold) at the 100 ms ticks.
        assert!(
            healed.elapsed() <= Duration::from_millis(250),
            "{:?}",
            healed.elapsed()
        );
        assert_eq!(whoami(&f).await.unwrap(), "a");
        assert_eq!(a.calls(), 2);
        // The probe task stopped.
        let probes = a.probes();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(a.probes(), probes);
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_threshold_tolerates_isolated_failures() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        let f = Failover::new(
            vec![a.clone(), b.clone()],
            FailoverConfig {
                failure_threshold: 3,
                ..config()
            },
        );
        a.set_down(true);
        for n in 1..=3 {
            // Each never-ran failure is still answered by the secondary…
            assert_eq!(whoami(&f).await.unwrap(), "b");
            // …but the primary stays active until the third one.
            assert_eq!(f.active(), usize::from(n == 3), "after {n} failures");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_are_errors_do_not_mark_down() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        *a.down_status.lock().unwrap() = Status::invalid_input("bad key");
        let f = Failover::new(vec![a.clone(), b.clone()], config());
        a.set_down(true);
        for _ in 0..5 {
            assert_eq!(whoami(&f).await.unwrap_err().code, Code::InvalidInput);
        }
        assert_eq!(f.active(), 0);
        assert_eq!(b.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_endpoint_is_down_all_are_tried_and_the_last_error_returned() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        let f = Failover::new(vec![a.clone(), b.clone()], config());
        a.set_down(true);
        b.set_down(true);
        let err = whoami(&f).await.unwrap_err();
        assert_eq!(err.code, Code::Unavailable);
        assert!(err.never_ran());
        assert!(err.message.starts_with("all 2 endpoints"), "{err}");
        assert!(err.message.contains("cannot connect to b"), "{err}");
        assert_eq!(f.active(), 0, "all down: the primary is tried first");
        // The secondary comes back first: a call finds it.
        b.set_down(false);
        assert_eq!(whoami(&f).await.unwrap(), "b");
        assert_eq!(f.active(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_task_ends_with_the_failover() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        let f = Failover::new(vec![a.clone(), b.clone()], config());
        a.set_down(true);
        whoami(&f).await.unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        let probes = a.probes();
        assert!(probes >= 3);
        drop(f);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(a.probes() <= probes + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_puts_the_wrapped_service_first() {
        let (a, b) = (Endpoint::new("a"), Endpoint::new("b"));
        let f = FailoverLayer::new(vec![b.clone()], config()).layer(a.clone());
        assert_eq!(f.len(), 2);
        assert_eq!(whoami(&f).await.unwrap(), "a");
    }
}
