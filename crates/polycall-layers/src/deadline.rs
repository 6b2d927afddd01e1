//! Deadlines: every call gets one, and nobody waits past it.
//!
//! [`DeadlineLayer`] is the outermost layer of a client stack
//! (`Deadline → Retry → CircuitBreaker → … → Channel`). For each call it
//!
//! 1. gives a call without a deadline the configured default
//!    ([`DeadlineConfig::default_timeout`]), so a call can never hang forever and the
//!    layers below (retries above all) have a time budget to respect;
//! 2. refuses at once, with `deadline_exceeded` marked
//!    [`not_executed`](polycall_core::Status::not_executed), a call whose deadline has
//!    already passed: it is not sent at all;
//! 3. races the inner service against the deadline: when the deadline passes first the
//!    inner future is dropped — which cancels the call on the wire (the connection tells
//!    the peer, whose handler is aborted) — and the caller gets `deadline_exceeded`.
//!
//! The deadline travels with the call: it is an absolute instant in
//! [`Metadata::deadline`](polycall_core::Metadata::deadline), and the connection
//! converts it to the time left when it encodes the call, so the callee enforces the
//! same deadline without the peers' clocks having to agree. Layers below this one
//! (retry backoff, for instance) read the same field and never sleep past it.
//!
//! Time is read from tokio's clock (`tokio::time::Instant`), so tests can drive the layer
//! with a paused clock.

use std::task::{Context, Poll};
use std::time::Duration;

use polycall_core::{Call, Reply, Status};
use tokio::time::Instant;
use tower::Layer;
use tower_service::Service;

crate::response_future! {
    /// The future of [`DeadlineService`]'s calls.
    ResponseFuture
}

/// How [`DeadlineLayer`] treats deadlines.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadlineConfig {
    /// The timeout given to a call that carries no deadline of its own (the deadline
    /// becomes "now + this" when the call enters the layer). `None` leaves such calls
    /// without a deadline: they are then bounded only by the peer. Default: 30 s.
    pub default_timeout: Option<Duration>,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            default_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl DeadlineConfig {
    /// Sets the timeout given to a call that carries no deadline of its own.
    pub fn default_timeout(mut self, default_timeout: Duration) -> Self {
        self.default_timeout = Some(default_timeout);
        self
    }
}

/// Gives calls a default deadline, refuses expired calls and stops waiting (cancelling
/// the call) when a call's deadline passes. See the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use polycall_core::{handler_fn, Call, Code, Payload, Reply, Status};
/// use polycall_layers::deadline::{DeadlineConfig, DeadlineLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// tokio::time::pause();
/// let slow = handler_fn(|_c: Call| async move {
///     tokio::time::sleep(Duration::from_secs(10)).await;
///     Ok::<_, Status>(Reply::default())
/// });
/// let mut svc = ServiceBuilder::new()
///     .layer(DeadlineLayer::new(
///         DeadlineConfig::default().default_timeout(Duration::from_millis(200)),
///     ))
///     .service(slow);
/// let call = Call::new("debug.slow", Payload::empty()).unwrap();
/// let err = svc.ready().await.unwrap().call(call).await.unwrap_err();
/// assert_eq!(err.code, Code::DeadlineExceeded);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct DeadlineLayer {
    config: DeadlineConfig,
}

impl DeadlineLayer {
    /// A layer with `config`.
    pub fn new(config: DeadlineConfig) -> Self {
        Self { config }
    }

    /// A layer giving calls without a deadline `timeout`.
    pub fn with_default_timeout(timeout: Duration) -> Self {
        Self::new(DeadlineConfig {
            default_timeout: Some(timeout),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DeadlineConfig {
        &self.config
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`DeadlineLayer`] builds. (Named `DeadlineService` rather than
/// `Deadline` so it does not clash with [`polycall_core::Deadline`], the instant
/// itself.)
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    config: DeadlineConfig,
}

impl<S> DeadlineService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: DeadlineConfig) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Call> for DeadlineService<S>
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

    fn call(&mut self, mut call: Call) -> ResponseFuture {
        let now = Instant::now();
        if call.metadata.deadline.is_none()
            && let Some(timeout) = self.config.default_timeout
        {
            call.metadata.deadline = Some(polycall_core::Deadline::after(now.into_std(), timeout));
        }
        let Some(deadline) = call.metadata.deadline else {
            return ResponseFuture::new(self.inner.call(call));
        };
        if deadline.is_expired(now.into_std()) {
            let late = now.into_std().saturating_duration_since(deadline.0);
            let status = Status::deadline_exceeded(format!(
                "the deadline of {} passed {late:?} before the call was sent; it was not \
                 sent: give the call a longer timeout",
                call.full_name()
            ))
            .not_executed();
            return ResponseFuture::new(std::future::ready(Err(status)));
        }
        let timeout = deadline.remaining(now.into_std());
        let name = call.full_name();
        let fut = self.inner.call(call);
        ResponseFuture::new(async move {
            tokio::select! {
                biased;
                result = fut => result,
                () = tokio::time::sleep_until(Instant::from_std(deadline.0)) => {
                    Err(Status::deadline_exceeded(format!(
                        "{name} did not complete within its deadline ({timeout:?} when it \
                         was sent) and was cancelled: raise the timeout or find out why the \
                         callee is slow"
                    )))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use polycall_core::{Code, Metadata, Payload, handler_fn};
    use tower::ServiceExt;

    use super::*;

    fn call() -> Call {
        Call::new("debug.sleep", Payload::empty()).unwrap()
    }

    /// A handler that sleeps `ms` and counts calls started and finished.
    fn sleeper(
        ms: u64,
        started: Arc<AtomicUsize>,
        finished: Arc<AtomicUsize>,
    ) -> impl Service<Call, Response = Reply, Error = Status, Future: Send + 'static>
    + Clone
    + Send
    + 'static {
        handler_fn(move |_c: Call| {
            let started = started.clone();
            let finished = finished.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(Reply::default())
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn default_deadline_is_given_and_enforced() {
        let (started, finished) = (Arc::default(), Arc::default());
        let svc = DeadlineLayer::with_default_timeout(Duration::from_millis(100)).layer(sleeper(
            1_000,
            Arc::clone(&started),
            Arc::clone(&finished),
        ));
        let t0 = Instant::now();
        let err = svc.oneshot(call()).await.unwrap_err();
        assert_eq!(err.code, Code::DeadlineExceeded);
        assert!(!err.not_executed, "the call was sent");
        assert!(err.message.contains("raise the timeout"), "{err}");
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert_eq!(started.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "the inner future was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_own_deadline_wins_over_the_default() {
        let (started, finished) = (Arc::default(), Arc::default());
        let svc = DeadlineLayer::with_default_timeout(Duration::from_millis(100)).layer(sleeper(
            300,
            started,
            Arc::clone(&finished),
        ));
        let md =
            Metadata::default().with_timeout(Instant::now().into_std(), Duration::from_secs(1));
        let t0 = Instant::now();
        svc.oneshot(call().with_metadata(md)).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_reaches_the_inner_service() {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let inner = handler_fn({
            let seen = Arc::clone(&seen);
            move |c: Call| {
                *seen.lock().unwrap() = c.metadata.deadline;
                async move { Ok(Reply::default()) }
            }
        });
        let t0 = Instant::now();
        DeadlineLayer::with_default_timeout(Duration::from_millis(250))
            .layer(inner)
            .oneshot(call())
            .await
            .unwrap();
        let d = seen.lock().unwrap().expect("a deadline was set");
        assert_eq!(d.remaining(t0.into_std()), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_call_is_refused_without_being_sent() {
        let (started, finished) = (Arc::default(), Arc::default());
        let svc = DeadlineLayer::default().layer(sleeper(10, Arc::clone(&started), finished));
        let md =
            Metadata::default().with_timeout(Instant::now().into_std(), Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let err = svc.oneshot(call().with_metadata(md)).await.unwrap_err();
        assert_eq!(err.code, Code::DeadlineExceeded);
        assert!(err.never_ran());
        assert!(err.message.contains("not sent"), "{err}");
        assert_eq!(started.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_default_calls_without_deadline_are_left_alone() {
        let (started, finished) = (Arc::default(), Arc::default());
        let svc = DeadlineLayer::new(DeadlineConfig {
            default_timeout: None,
        })
        .layer(sleeper(60_000, started, Arc::clone(&finished)));
        svc.oneshot(call()).await.unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
}
