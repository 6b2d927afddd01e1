//! Handlers: every method implementation is a `tower::Service<Call>`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::{Call, Reply, Status};

/// The future a boxed handler returns.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<Reply, Status>> + Send + 'static>>;

/// A method implementation: a cloneable `tower::Service<Call>` that answers with a
/// [`Reply`] or a [`Status`]. Implemented for every service of that shape, so any tower
/// stack of layers over a handler is a handler too.
pub trait Handler:
    Service<Call, Response = Reply, Error = Status, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Handler for S where
    S: Service<Call, Response = Reply, Error = Status, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A handler from an async function or closure.
///
/// ```
/// use polycall_core::{handler_fn, Call, Reply, Status};
/// let echo = handler_fn(|call: Call| async move { Ok::<_, Status>(Reply::new(call.payload)) });
/// # let _ = echo;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
{
    HandlerFn { f }
}

/// The handler [`handler_fn`] returns.
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

impl<F, Fut> Service<Call> for HandlerFn<F>
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Result<Reply, Status>>,
{
    type Response = Reply;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Fut {
        (self.f)(call)
    }
}

trait CloneHandler: Send + Sync {
    fn clone_box(&self) -> Box<dyn CloneHandler>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>>;
    fn call(&mut self, call: Call) -> BoxFuture;
}

impl<H: Handler> CloneHandler for H {
    fn clone_box(&self) -> Box<dyn CloneHandler> {
        Box::new(self.clone())
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        Box::pin(Service::call(self, call))
    }
}

/// A type-erased [`Handler`], so handlers of different types share one table.
pub struct BoxHandler(Box<dyn CloneHandler>);

impl BoxHandler {
    /// Boxes `handler`.
    pub fn new<H: Handler>(handler: H) -> Self {
        Self(Box::new(handler))
    }
}

impl Clone for BoxHandler {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl fmt::Debug for BoxHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxHandler")
    }
}

impl Service<Call> for BoxHandler {
    type Response = Reply;
    type Error = Status;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        self.0.call(call)
    }
}
