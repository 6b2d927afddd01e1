//! # polycall-layers
//!
//! polycall's resilience and quality-of-service middleware, as tower layers over any
//! `Service<Call, Response = Reply, Error = Status>`: a `polycall_net::Channel` on the
//! client side, a router or a provider on the server side. They need no sockets; each
//! is one concern in one module, with its `XLayer`, its `X` service and its config.
//!
//! | module | layer | what it does |
//! |---|---|---|
//! | [`deadline`] | [`DeadlineLayer`](deadline::DeadlineLayer) | gives every call a deadline and enforces it |
//! | [`retry`] | [`RetryLayer`](retry::RetryLayer) | retries what is safe to retry, within a budget, with backoff |
//! | [`breaker`] | [`CircuitBreakerLayer`](breaker::CircuitBreakerLayer) | stops calling an endpoint that keeps failing, probes it back |
//! | [`failover`] | [`FailoverLayer`](failover::FailoverLayer) | primary first, backups when it is down |
//! | [`balance`] | [`BalanceLayer`](balance::BalanceLayer) | p2c over peak EWMA, round robin, or consistent hashing |
//! | [`limit`] | [`ConcurrencyLimitLayer`](limit::ConcurrencyLimitLayer), [`AdaptiveLimitLayer`](limit::AdaptiveLimitLayer) | bounds calls in flight (fixed, or by latency gradient), sheds by priority class |
//! | [`rate_limit`] | [`RateLimitLayer`](rate_limit::RateLimitLayer) | calls per second per client (GCRA) |
//! | [`shape`] | [`ShapeLayer`](shape::ShapeLayer) | bytes per second per class and in total |
//! | [`fault`] | [`FaultInjectionLayer`](fault::FaultInjectionLayer) | injected delays and errors, for testing the rest |
//! | [`authorize`] | [`AuthorizeLayer`](authorize::AuthorizeLayer) | the authorization policy on each call's principal |
//!
//! ```
//! # async fn demo() -> Result<(), polycall_core::Status> {
//! use std::time::Duration;
//! use polycall_core::{Call, Payload, Reply, Status};
//! use polycall_layers::deadline::{DeadlineConfig, DeadlineLayer};
//! use polycall_layers::retry::{RetryConfig, RetryLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let echo = tower::service_fn(|call: Call| async move { Ok::<_, Status>(Reply::new(call.payload)) });
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(DeadlineConfig::default().default_timeout(Duration::from_secs(1))))
//!     .layer(RetryLayer::new(RetryConfig::default()))
//!     .service(echo);
//! let reply = svc.oneshot(Call::new("debug.echo", Payload::raw("hi")).unwrap()).await?;
//! assert_eq!(&reply.payload.bytes[..], b"hi");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

pub mod authorize;
pub mod balance;
pub mod breaker;
pub mod deadline;
pub mod failover;
pub mod fault;
pub mod limit;
pub mod rate_limit;
pub mod retry;
pub mod shape;

/// Declares a layer module's named response future: the type its service's
/// `Service::Future` is. Today it holds the boxed future the service builds; being a
/// type of the module, it can become a hand-written state machine without changing the
/// layer's API (as tower's `ResponseFuture`s are).
macro_rules! response_future {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(polycall_core::BoxFuture);

        impl $name {
            fn new(
                future: impl std::future::Future<
                    Output = Result<polycall_core::Reply, polycall_core::Status>,
                > + Send
                + 'static,
            ) -> Self {
                Self(Box::pin(future))
            }
        }

        impl std::future::Future for $name {
            type Output = Result<polycall_core::Reply, polycall_core::Status>;

            fn poll(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Self::Output> {
                self.0.as_mut().poll(cx)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}
pub(crate) use response_future;
