//! The method table: routes a [`Call`] to its handler and describes what it serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::{
    BoxFuture, BoxHandler, Call, CallKind, Handler, MessageStream, MethodName, NameError, Reply,
    ServiceName, Status, StreamCall, StreamHandler, split_full_name,
};

/// What a method says about itself in `describe()`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MethodInfo {
    /// One line for people.
    pub summary: String,
    /// A hint of the input's shape (free text, e.g. `{"ms": u64}`).
    pub input: String,
    /// A hint of the output's shape.
    pub output: String,
    /// Whether calling twice is as good as calling once (retries are safe).
    pub idempotent: bool,
    /// The method answers at once, never computing or blocking (a lookup, a liveness
    /// check; for a stream, messages made as they are asked for): a connection may run
    /// it inside its own task (a stream's producer on its own runtime), sparing a
    /// thread hop. A local hint for this process's server, never sent or described.
    #[serde(skip)]
    pub inline: bool,
    /// The shape of its messages (unary unless a stream handler serves it).
    #[serde(default, skip_serializing_if = "is_unary")]
    pub kind: crate::CallKind,
}

fn is_unary(kind: &crate::CallKind) -> bool {
    *kind == crate::CallKind::Unary
}

impl MethodInfo {
    /// Info with a one-line summary.
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            ..Self::default()
        }
    }

    /// Sets the input schema hint.
    pub fn input(mut self, hint: impl Into<String>) -> Self {
        self.input = hint.into();
        self
    }

    /// Sets the output schema hint.
    pub fn output(mut self, hint: impl Into<String>) -> Self {
        self.output = hint.into();
        self
    }

    /// Sets the idempotent flag.
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }

    /// Sets the shape of the method's messages (what a provider announces for a
    /// streaming method; [`Router::route_stream`] sets it itself).
    pub fn kind(mut self, kind: CallKind) -> Self {
        self.kind = kind;
        self
    }

    /// Marks the method as answering at once (see [`MethodInfo::inline`]): a server may
    /// run it inside the connection's task. A method marked so that computes for long
    /// holds up every call of its connection — mark only what cannot.
    pub fn inline(mut self, yes: bool) -> Self {
        self.inline = yes;
        self
    }
}

/// One entry of [`Router::describe`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MethodDescription {
    /// `service.method`.
    pub name: String,
    /// What the method says about itself.
    #[serde(flatten)]
    pub info: MethodInfo,
}

#[derive(Clone)]
struct Route {
    info: MethodInfo,
    handler: Serve,
}

/// How a route serves: one reply per call, or streams.
#[derive(Clone)]
enum Serve {
    Unary(BoxHandler),
    Stream(Arc<dyn StreamHandler>),
}

type Table = HashMap<ServiceName, HashMap<MethodName, Route>>;

/// A method table. Cheap to clone; itself a [`Handler`] that dispatches by name and
/// answers [`crate::Code::UnknownMethod`] for names it does not know.
///
/// ```
/// use polycall_core::{handler_fn, Call, Code, MethodInfo, Payload, Reply, Router};
/// use tower_service::Service;
///
/// let mut router = Router::new()
///     .route("debug.echo", MethodInfo::new("returns its input"),
///            handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }))?;
/// # futures_lite_block_on(async {
/// let reply = router.call(Call::new("debug.echo", Payload::raw("hi"))?).await.unwrap();
/// assert_eq!(&reply.payload.bytes[..], b"hi");
/// let err = router.call(Call::new("debug.nope", Payload::empty())?).await.unwrap_err();
/// assert_eq!(err.code, Code::UnknownMethod);
/// # Ok::<(), polycall_core::NameError>(()) })?;
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let waker = std::task::Waker::noop();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// # Ok::<(), polycall_core::NameError>(())
/// ```
#[derive(Clone, Default)]
pub struct Router {
    table: Arc<Table>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("methods", &self.len())
            .finish()
    }
}

impl Router {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the method `full_name` (`SERVICE.METHOD`).
    pub fn route<H: Handler>(
        self,
        full_name: &str,
        info: MethodInfo,
        handler: H,
    ) -> Result<Self, NameError> {
        let (service, method) = split_full_name(full_name)?;
        Ok(self.route_names(service, method, info, handler))
    }

    /// Adds (or replaces) a method of already validated names.
    pub fn route_names<H: Handler>(
        mut self,
        service: ServiceName,
        method: MethodName,
        info: MethodInfo,
        handler: H,
    ) -> Self {
        let route = Route {
            info: MethodInfo {
                kind: CallKind::Unary,
                ..info
            },
            handler: Serve::Unary(BoxHandler::new(handler)),
        };
        self.insert(service, method, route);
        self
    }

    /// Adds (or replaces) the streaming method `full_name` of `kind` (not
    /// [`CallKind::Unary`]: use [`Router::route`]): `handler` gets the stream of request
    /// messages (one for a server stream) and answers with the stream of replies (one
    /// for a client stream).
    ///
    /// ```
    /// use polycall_core::{stream, CallKind, MethodInfo, Payload, Router, StreamCall};
    ///
    /// let router = Router::new().route_stream(
    ///     "feed.ticks",
    ///     CallKind::ServerStream,
    ///     MethodInfo::new("three ticks"),
    ///     |_call: StreamCall| -> polycall_core::MessageStream {
    ///         Box::pin(stream::iter((0..3).map(|i| Ok(Payload::raw(i.to_string())))))
    ///     },
    /// )?;
    /// assert_eq!(router.info("feed", "ticks").unwrap().kind, CallKind::ServerStream);
    /// # Ok::<(), polycall_core::NameError>(())
    /// ```
    pub fn route_stream(
        mut self,
        full_name: &str,
        kind: CallKind,
        info: MethodInfo,
        handler: impl StreamHandler,
    ) -> Result<Self, NameError> {
        let (service, method) = split_full_name(full_name)?;
        let route = Route {
            info: MethodInfo { kind, ..info },
            handler: Serve::Stream(Arc::new(handler)),
        };
        self.insert(service, method, route);
        Ok(self)
    }

    fn insert(&mut self, service: ServiceName, method: MethodName, route: Route) {
        Arc::make_mut(&mut self.table)
            .entry(service)
            .or_default()
            .insert(method, route);
    }

    /// Adds every method of `other`; `other`'s entries win on a clash.
    pub fn merge(mut self, other: &Router) -> Self {
        let table = Arc::make_mut(&mut self.table);
        for (service, methods) in other.table.iter() {
            let entry = table.entry(service.clone()).or_default();
            for (method, route) in methods {
                entry.insert(method.clone(), route.clone());
            }
        }
        self
    }

    /// Adds (or replaces) the server-streaming method `full_name`: `handler` gets the
    /// one request and the call's metadata and answers with the stream of replies.
    ///
    /// ```
    /// use polycall_core::{stream, MethodInfo, Payload, Router};
    ///
    /// let router = Router::new().route_server_stream(
    ///     "feed.repeat",
    ///     MethodInfo::new("its request, three times"),
    ///     |request: Payload, _metadata| -> polycall_core::MessageStream {
    ///         Box::pin(stream::iter(vec![Ok(request); 3]))
    ///     },
    /// )?;
    /// # let _ = router;
    /// # Ok::<(), polycall_core::NameError>(())
    /// ```
    pub fn route_server_stream<F>(
        self,
        full_name: &str,
        info: MethodInfo,
        handler: F,
    ) -> Result<Self, NameError>
    where
        F: Fn(crate::Payload, crate::Metadata) -> MessageStream + Send + Sync + 'static,
    {
        self.route_stream(
            full_name,
            CallKind::ServerStream,
            info,
            crate::stream::server_stream_fn(handler),
        )
    }

    /// The handler of `service.method`, if routed.
    pub fn handler(&self, service: &str, method: &str) -> Option<BoxHandler> {
        match &self.table.get(service)?.get(method)?.handler {
            Serve::Unary(h) => Some(h.clone()),
            Serve::Stream(_) => None,
        }
    }

    /// The stream handler of the streaming method `service.method`, if routed.
    pub fn stream_handler(&self, service: &str, method: &str) -> Option<Arc<dyn StreamHandler>> {
        match &self.table.get(service)?.get(method)?.handler {
            Serve::Stream(h) => Some(h.clone()),
            Serve::Unary(_) => None,
        }
    }

    /// Serves a streaming call: a streaming method's handler, or a unary method called
    /// with its one request message (its reply the one message of the answer).
    pub fn call_stream(&self, call: StreamCall) -> MessageStream {
        let Some(route) = self
            .table
            .get(call.service.as_str())
            .and_then(|m| m.get(call.method.as_str()))
        else {
            return crate::stream::fail(self.unknown(&call.service, &call.method));
        };
        match &route.handler {
            Serve::Stream(h) => h.call(call),
            Serve::Unary(h) => {
                let handler = h.clone();
                Box::pin(crate::stream::Once::new(async move {
                    let request = crate::stream::single(call.requests).await?;
                    let call = Call {
                        service: call.service,
                        method: call.method,
                        payload: request,
                        metadata: call.metadata,
                    };
                    handler.oneshot(call).await.map(|r| r.payload)
                }))
            }
        }
    }

    fn unknown(&self, service: &ServiceName, method: &MethodName) -> Status {
        let known = self.table.contains_key(service.as_str());
        let msg = if known {
            format!(
                "service {service} has no method {method}; `polycall describe` lists what is served"
            )
        } else {
            format!(
                "no service {service} (calling {service}.{method}); `polycall describe` lists what is served"
            )
        };
        Status::unknown_method(msg)
    }

    /// The info of `service.method`, if routed.
    pub fn info(&self, service: &str, method: &str) -> Option<&MethodInfo> {
        self.table.get(service)?.get(method).map(|r| &r.info)
    }

    /// Number of methods.
    pub fn len(&self) -> usize {
        self.table.values().map(HashMap::len).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every method with its info, sorted by full name.
    pub fn describe(&self) -> Vec<MethodDescription> {
        let mut out: Vec<MethodDescription> = self
            .table
            .iter()
            .flat_map(|(service, methods)| {
                methods
                    .iter()
                    .map(move |(method, route)| MethodDescription {
                        name: format!("{service}.{method}"),
                        info: route.info.clone(),
                    })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl Service<Call> for Router {
    type Response = Reply;
    type Error = Status;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let route = self
            .table
            .get(call.service.as_str())
            .and_then(|m| m.get(call.method.as_str()));
        match route.map(|r| (&r.handler, r.info.kind)) {
            Some((Serve::Unary(handler), _)) => handler.oneshot(call),
            Some((Serve::Stream(_), kind)) => {
                let msg = format!(
                    "{} is a streaming method ({kind}); open it as a stream",
                    call.full_name()
                );
                Box::pin(std::future::ready(Err(Status::invalid_input(msg))))
            }
            None => {
                let status = self.unknown(&call.service, &call.method);
                Box::pin(std::future::ready(Err(status)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Code, Payload, handler_fn};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn routes_describes_and_refuses_unknown() {
        let mut r = Router::new()
            .route(
                "b.two",
                MethodInfo::new("second")
                    .input("{}")
                    .output("{}")
                    .idempotent(true),
                handler_fn(|_c: Call| async { Ok(Reply::new(Payload::raw("2"))) }),
            )
            .unwrap()
            .route(
                "a.one",
                MethodInfo::new("first"),
                handler_fn(|_c: Call| async { Err(Status::internal("boom")) }),
            )
            .unwrap();
        let d = r.describe();
        assert_eq!(
            d.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["a.one", "b.two"]
        );
        assert!(d[1].info.idempotent);
        let json = serde_json::to_value(&d[1]).unwrap();
        assert_eq!(json["summary"], "second");
        let ok = block_on(r.call(Call::new("b.two", Payload::empty()).unwrap())).unwrap();
        assert_eq!(&ok.payload.bytes[..], b"2");
        let err = block_on(r.call(Call::new("a.one", Payload::empty()).unwrap())).unwrap_err();
        assert_eq!(err.code, Code::Internal);
        let err = block_on(r.call(Call::new("b.three", Payload::empty()).unwrap())).unwrap_err();
        assert_eq!(err.code, Code::UnknownMethod);
        assert!(err.message.contains("service b has no method three"));
        let err = block_on(r.call(Call::new("zzz.x", Payload::empty()).unwrap())).unwrap_err();
        assert!(err.message.contains("no service zzz"));
    }
}
