//! Authorization: refuse calls the [`Policy`] does not allow, before they run.
//!
//! [`Authorize`] checks each call's principal (set by the connection from its
//! authenticated session, never from what the caller claims) against a
//! [`polycall_security::authz::Policy`]. A denied call is answered
//! `permission_denied` without reaching the inner service, and marked not executed.
//! Put it first on a server's stack, so denied calls cost no rate-limit tokens or
//! concurrency slots.
//!
//! ```
//! # async fn demo() {
//! use std::sync::Arc;
//! use polycall_core::{handler_fn, Call, Code, Payload, Principal, Reply};
//! use polycall_layers::authorize::AuthorizeLayer;
//! use polycall_security::authz::{Policy, PolicyConfig, RuleConfig};
//! use tower::{Layer, ServiceExt};
//!
//! let policy = Policy::new(
//!     &PolicyConfig::default().rules([RuleConfig::new("kv").method("get").allow(["authenticated"])]),
//! )
//! .unwrap();
//! let svc = AuthorizeLayer::new(Arc::new(policy))
//!     .layer(handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }));
//! let mut call = Call::new("kv.get", Payload::raw("k")).unwrap();
//! let denied = svc.clone().oneshot(call.clone()).await.unwrap_err();
//! assert_eq!(denied.code, Code::PermissionDenied);
//! call.metadata.principal = Some(Principal::user("alice"));
//! assert!(svc.oneshot(call).await.is_ok());
//! # }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use polycall_core::{Call, Code, Reply, Status};
use polycall_security::authz::Policy;
use tower::Layer;
use tower_service::Service;

crate::response_future! {
    /// The future of [`Authorize`]'s calls.
    ResponseFuture
}

/// Wraps services in [`Authorize`].
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: Arc<Policy>,
}

impl AuthorizeLayer {
    /// Checks calls against `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// Refuses calls its policy does not allow with `permission_denied`.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Service<Call> for Authorize<S>
where
    S: Service<Call, Response = Reply, Error = Status>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> ResponseFuture {
        match self.policy.check(
            call.metadata.principal.as_ref(),
            call.service.as_str(),
            call.method.as_str(),
        ) {
            Ok(()) => ResponseFuture::new(self.inner.call(call)),
            Err(denied) => {
                tracing::debug!(%denied, "call denied");
                let status = Status::new(Code::PermissionDenied, denied.to_string()).not_executed();
                ResponseFuture::new(std::future::ready(Err(status)))
            }
        }
    }
}
