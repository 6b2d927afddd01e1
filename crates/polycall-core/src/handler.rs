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

/// A handler behind a pointer: each call runs on a clone of it, made inside the call's
/// own future (one allocation a call, the future's box).
trait ErasedHandler: Send + Sync {
    fn oneshot(&self, call: Call) -> BoxFuture;
}

impl<H: Handler> ErasedHandler for H {
    fn oneshot(&self, call: Call) -> BoxFuture {
        let mut handler = self.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| Service::poll_ready(&mut handler, cx)).await?;
            Service::call(&mut handler, call).await
        })
    }
}

/// A type-erased [`Handler`], so handlers of different types share one table. Cloning
/// it is a reference count; each call clones the handler inside it and waits for that
/// clone's readiness in the call's future (as `tower::ServiceExt::oneshot` does), so
/// as a [`Service`] it is always ready: layers that act on readiness (load shedding, a
/// buffer, a balancer) belong inside it, over the handler, not outside.
pub struct BoxHandler(std::sync::Arc<dyn ErasedHandler>);

impl BoxHandler {
    /// Boxes `handler`.
    pub fn new<H: Handler>(handler: H) -> Self {
        Self(std::sync::Arc::new(handler))
    }

    /// Calls the handler (a clone of it, once ready) without a `&mut` to this one.
    ///
    /// ```
    /// use polycall_core::{BoxHandler, Call, Payload, Reply, Status, handler_fn};
    /// use std::task::{Context, Poll, Waker};
    ///
    /// let echo = BoxHandler::new(handler_fn(|c: Call| async move {
    ///     Ok::<_, Status>(Reply::new(c.payload))
    /// }));
    /// let mut reply = echo.oneshot(Call::new("demo.echo", Payload::raw("hi")).unwrap());
    /// // An echo answers at its first poll.
    /// let Poll::Ready(Ok(reply)) = reply.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    /// else {
    ///     panic!("the echo answers at once");
    /// };
    /// assert_eq!(&reply.payload.bytes[..], b"hi");
    /// ```
    pub fn oneshot(&self, call: Call) -> BoxFuture {
        self.0.oneshot(call)
    }
}

impl Clone for BoxHandler {
    fn clone(&self) -> Self {
        Self(self.0.clone())
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

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Readiness is the call's own: see `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        self.0.oneshot(call)
    }
}
