//! What a connection does with what its peer sends: calls to serve, and (on the
//! runtime) providers registering methods.

use std::sync::Arc;

use polycall_core::{
    BoxFuture, Call, CallKind, MessageStream, MethodName, Reply, Router, ServiceName, Status,
    StreamCall,
};
use polycall_proto::frame::MethodEntry;
use tower_service::Service;

/// Serves one connection's incoming calls and provider announcements.
///
/// A plain server serves a [`Router`] ([`RouterHandler`]); the runtime gives each
/// connection a handler that knows the connection, so it can route calls back to the
/// methods a provider registered on it.
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Serves one call. The call's metadata carries the deadline the caller sent; the
    /// connection enforces it and cancels this future when it passes or the caller
    /// cancels.
    fn call(&self, call: Call) -> BoxFuture;

    /// Whether `call`'s handler answers at once ([`polycall_core::MethodInfo::inline`]),
    /// so the connection may run it inside its own task even when it spawns the others.
    fn runs_inline(&self, call: &Call) -> bool {
        let _ = call;
        false
    }

    /// Whether the stream handler of `service.method` makes its messages at once
    /// ([`polycall_core::MethodInfo::inline`]): its reply stream is then produced on the
    /// connection's runtime, sparing a thread hop per batch, instead of the handler
    /// runtime.
    fn stream_runs_inline(&self, service: &ServiceName, method: &MethodName) -> bool {
        let _ = (service, method);
        false
    }

    /// The shape of `service.method`'s messages: the connection answers a call of a
    /// method whose replies stream with a reply stream, and serves every streaming
    /// shape through [`ConnectionHandler::stream`]. Unary unless said otherwise.
    fn kind(&self, service: &ServiceName, method: &MethodName) -> CallKind {
        let _ = (service, method);
        CallKind::Unary
    }

    /// Serves one streaming call (a method whose [`kind`](Self::kind) streams, or a call
    /// whose requests stream): the answer is the stream of reply messages (exactly one
    /// for a client stream). The connection cancels the stream when the caller does or
    /// the deadline passes.
    fn stream(&self, call: StreamCall) -> MessageStream {
        polycall_core::stream::fail(Status::unsupported(format!(
            "{} is not served as a stream here",
            call.full_name()
        )))
    }

    /// The peer announces methods it serves.
    fn register(&self, methods: Vec<MethodEntry>) -> Result<(), Status> {
        let _ = methods;
        Err(Status::unsupported(
            "this endpoint does not accept providers; connect providers to a polycall runtime",
        ))
    }

    /// The peer withdraws methods.
    fn unregister(&self, methods: Vec<(ServiceName, MethodName)>) -> Result<(), Status> {
        let _ = methods;
        Err(Status::unsupported(
            "this endpoint does not accept providers",
        ))
    }

    /// The connection ended (called once).
    fn closed(&self) {}
}

/// Serves calls with a [`Router`].
#[derive(Debug, Clone)]
pub struct RouterHandler(pub Router);

impl ConnectionHandler for RouterHandler {
    fn call(&self, call: Call) -> BoxFuture {
        let mut router = self.0.clone();
        router.call(call)
    }

    fn runs_inline(&self, call: &Call) -> bool {
        self.0
            .info(call.service.as_str(), call.method.as_str())
            .is_some_and(|i| i.inline)
    }

    fn stream_runs_inline(&self, service: &ServiceName, method: &MethodName) -> bool {
        self.0
            .info(service.as_str(), method.as_str())
            .is_some_and(|i| i.inline)
    }

    fn kind(&self, service: &ServiceName, method: &MethodName) -> CallKind {
        self.0
            .info(service.as_str(), method.as_str())
            .map_or(CallKind::Unary, |i| i.kind)
    }

    fn stream(&self, call: StreamCall) -> MessageStream {
        self.0.call_stream(call)
    }
}

/// Serves calls with any cloneable tower service — a [`Router`] under layers such as
/// [`crate::authorize::AuthorizeLayer`], for instance.
#[derive(Debug, Clone)]
pub struct ServiceHandler<S>(pub S);

impl<S> ConnectionHandler for ServiceHandler<S>
where
    S: Service<Call, Response = Reply, Error = Status> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, call: Call) -> BoxFuture {
        let mut svc = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
            svc.call(call).await
        })
    }
}

/// Serves nothing: every incoming call is refused with `unknown_method`. The handler of
/// a plain client connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl ConnectionHandler for NoHandler {
    fn call(&self, call: Call) -> BoxFuture {
        let msg = format!(
            "{} is not served here: this connection only makes calls",
            call.full_name()
        );
        Box::pin(std::future::ready(Err::<Reply, _>(Status::unknown_method(
            msg,
        ))))
    }
}

/// A shared handler.
pub type SharedHandler = Arc<dyn ConnectionHandler>;
