//! The runtime's side of one connection: route its calls, accept its registrations,
//! forget its methods when it goes.

use std::sync::Arc;

use std::task::{Context, Poll};

use futures_util::StreamExt;
use polycall_core::{
    BoxFuture, Call, CallKind, MessageStream, MethodName, Payload, Principal, Reply, ServiceName,
    Status, StreamCall,
};
use polycall_net::{ConnectionHandle, ConnectionHandler};
use polycall_proto::frame::MethodEntry;
use tower_service::Service;

use crate::State;

/// Services providers may not register: the runtime's own.
const RESERVED: &[&str] = &["sys"];

pub(crate) struct RuntimeConnection {
    pub(crate) state: Arc<State>,
    pub(crate) connection: ConnectionHandle,
    pub(crate) provider_id: u64,
    /// The caller's identity when its session proved none (`anonymous:PEER`).
    pub(crate) anonymous: Principal,
    /// Quality-of-service layers over [`Route`], live.
    pub(crate) stack: crate::LiveStack,
}

/// Routes a call: the runtime's own methods first, then the least-loaded provider.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) state: Arc<State>,
}

impl Service<Call> for Route {
    type Response = Reply;
    type Error = Status;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let (service, method) = (call.service.as_str(), call.method.as_str());
        if self.state.builtins.handler(service, method).is_some() {
            let mut router = self.state.builtins.clone();
            return router.call(call);
        }
        match self
            .state
            .registry
            .pick(&call.service, &call.method, self.state.observer.ejections())
        {
            Some((provider, stats)) => {
                // Called now, not when first polled: the provider counts the call at once.
                let reply = provider.call(call);
                let started = std::time::Instant::now();
                Box::pin(async move {
                    let r = reply.await;
                    stats.record(started.elapsed(), r.is_err());
                    r
                })
            }
            None => {
                // Served by another runtime discovery knows: forwarded there.
                if let Some(forwarder) = self
                    .state
                    .discovery
                    .as_ref()
                    .and_then(|d| d.forwarder(&call))
                {
                    return forwarder.send(call);
                }
                let (service, method) = (call.service.as_str(), call.method.as_str());
                let own = self
                    .state
                    .builtins
                    .describe()
                    .iter()
                    .any(|d| d.name.starts_with(&format!("{service}.")));
                let what = if self.state.registry.has_service(service) || own {
                    format!("service {service} has no method {method}")
                } else {
                    format!("no provider serves {}", call.full_name())
                };
                Box::pin(std::future::ready(Err(Status::unknown_method(format!(
                    "{what}; `polycall describe` lists what is served"
                )))))
            }
        }
    }
}

/// The innermost service of the admission stack of a streaming call: admitted once the
/// layers above let the call's head through.
#[derive(Clone, Copy)]
pub(crate) struct Admit;

impl Service<Call> for Admit {
    type Response = Reply;
    type Error = Status;
    type Future = std::future::Ready<Result<Reply, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _call: Call) -> Self::Future {
        std::future::ready(Ok(Reply::new(Payload::empty())))
    }
}

/// Routes a streaming call: the runtime's own streaming methods first, then the
/// least-loaded provider, whose reply stream becomes the caller's. The provider's
/// call carries the caller's remaining deadline; dropping the returned stream (the
/// caller cancelled or vanished) cancels it; the provider's loss ends it with
/// `unavailable`.
async fn route_stream(state: Arc<State>, call: StreamCall) -> Result<MessageStream, Status> {
    let (service, method) = (call.service.as_str(), call.method.as_str());
    if state.builtins.info(service, method).is_some() {
        return Ok(state.builtins.call_stream(call));
    }
    let Some((provider, kind)) = state.registry.pick_stream(service, method) else {
        // Served by another runtime discovery knows: forwarded there.
        let name = call.full_name();
        if let Some(d) = &state.discovery
            && let Some(forwarded) = d.forward_stream(call).await
        {
            return forwarded;
        }
        return Err(Status::unknown_method(format!(
            "no provider serves {name}; `polycall describe` lists what is served"
        )));
    };
    if kind.streams_requests() {
        return Ok(provider.bidi(call).boxed());
    }
    let StreamCall {
        service,
        method,
        metadata,
        requests,
    } = call;
    let request = polycall_core::stream::single(requests).await?;
    let call = Call {
        service,
        method,
        payload: request,
        metadata,
    };
    Ok(provider.server_stream(call).boxed())
}

/// Admits a streaming call through the QoS layers, then routes it.
fn open_stream(state: Arc<State>, stack: &crate::LiveStack, call: StreamCall) -> MessageStream {
    let mut admit = stack.admission();
    let opened = async move {
        let head = Call {
            service: call.service.clone(),
            method: call.method.clone(),
            payload: Payload::empty(),
            metadata: call.metadata.clone(),
        };
        std::future::poll_fn(|cx| admit.poll_ready(cx)).await?;
        admit.call(head).await?;
        route_stream(state, call).await
    };
    Box::pin(
        futures_util::stream::once(opened)
            .flat_map(|r| r.unwrap_or_else(polycall_core::stream::fail)),
    )
}

/// Serves a streaming call whose principal is stamped: measured (when observability is
/// on), admitted, routed. A native connection's streams and the HTTP gateway's take
/// this one way.
pub(crate) fn serve_stream(
    state: &Arc<State>,
    stack: &crate::LiveStack,
    mut call: StreamCall,
) -> MessageStream {
    if !state.observe_metrics {
        return open_stream(state.clone(), stack, call);
    }
    let layer = state
        .observer
        .layer(polycall_observe::metrics::Side::Server);
    let (service, method) = (call.service.clone(), call.method.clone());
    let mut metadata = std::mem::take(&mut call.metadata);
    layer.stream(
        service.as_str(),
        method.as_str(),
        &mut metadata,
        move |md| {
            call.metadata = md.clone();
            open_stream(state.clone(), stack, call)
        },
    )
}

impl ConnectionHandler for RuntimeConnection {
    fn kind(&self, service: &ServiceName, method: &MethodName) -> CallKind {
        self.state
            .kind_of(service, method)
            .unwrap_or(CallKind::Unary)
    }

    fn stream(&self, mut call: StreamCall) -> MessageStream {
        if call.metadata.principal.is_none() {
            call.metadata.principal = Some(self.anonymous.clone());
        }
        serve_stream(&self.state, &self.stack, call)
    }

    fn call(&self, mut call: Call) -> BoxFuture {
        // Who calls: the connection stamped the session's principal (authentication or
        // TLS certificate) over whatever the caller claimed; without one, the caller is
        // its connection.
        if call.metadata.principal.is_none() {
            call.metadata.principal = Some(self.anonymous.clone());
        }
        self.stack.current().oneshot(call)
    }

    fn register(&self, methods: Vec<MethodEntry>) -> Result<(), Status> {
        let policy = self
            .state
            .qos
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .policy
            .clone();
        if let Some(policy) = policy {
            let principal = self.connection.principal();
            for m in &methods {
                if let Err(denied) =
                    policy.check_provide(principal, m.service.as_str(), m.method.as_str())
                {
                    tracing::info!(%denied, peer = %self.connection.peer(), "registration refused");
                    return Err(Status::new(
                        polycall_core::Code::PermissionDenied,
                        denied.to_string(),
                    ));
                }
            }
        }
        for m in &methods {
            if RESERVED.contains(&m.service.as_str())
                || self
                    .state
                    .builtins
                    .handler(m.service.as_str(), m.method.as_str())
                    .is_some()
            {
                return Err(Status::new(
                    polycall_core::Code::AlreadyExists,
                    format!(
                        "{}.{} is the runtime's own method; choose another name",
                        m.service, m.method
                    ),
                ));
            }
        }
        let list: Vec<_> = methods
            .into_iter()
            .map(|m| (m.service, m.method, m.info))
            .collect();
        tracing::info!(
            provider = self.provider_id,
            peer = %self.connection.peer(),
            methods = list.len(),
            "provider registered"
        );
        self.state
            .registry
            .register(&list, &self.connection, self.provider_id);
        Ok(())
    }

    fn unregister(&self, methods: Vec<(ServiceName, MethodName)>) -> Result<(), Status> {
        let missing = self.state.registry.unregister(&methods, self.provider_id);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "this connection does not provide {}",
                missing.join(", ")
            )))
        }
    }

    fn closed(&self) {
        self.state.registry.remove_provider(self.provider_id);
    }
}
