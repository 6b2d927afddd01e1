//! The measuring tower layer: one per side of a call.
//!
//! [`MeasureLayer`] wraps any `Service<Call, Response = Reply, Error = Status>`. For each
//! call it records the method's count, latency, bytes and error code into
//! [`CallMetrics`], opens the call's span (continuing the caller's W3C trace context
//! and handing its own id on as the next parent), makes the span the thread's current
//! [`CallContext`] while the inner future is polled (so log lines carry its ids), and
//! when the trace is sampled hands the finished span to the [`Tracer`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use polycall_core::{Call, Code, Priority, Reply, Status, TraceContext};
use tower_service::Service;

use crate::metrics::{CallMetrics, InFlight, MethodStats, Side};
use crate::trace::{CallContext, OpenSpan, SpanKind, Tracer};

/// Measures every call through the service it wraps.
///
/// ```
/// use std::sync::Arc;
/// use polycall_core::{handler_fn, Call, MethodInfo, Payload, Reply, Router};
/// use polycall_observe::{MeasureLayer, metrics::{CallMetrics, Side}, trace::Tracer};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let metrics = Arc::new(CallMetrics::default());
/// let echo = handler_fn(|c: Call| async move { Ok::<_, polycall_core::Status>(Reply::new(c.payload)) });
/// let router = Router::new().route("greeter.hello", MethodInfo::new("echo"), echo).unwrap();
/// let svc = MeasureLayer::new(Side::Server, metrics.clone(), Tracer::off()).layer(router);
/// svc.oneshot(Call::new("greeter.hello", Payload::json(&"hi").unwrap()).unwrap()).await.unwrap();
/// assert_eq!(metrics.method(Side::Server, "greeter", "hello").calls(), 1);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MeasureLayer {
    side: Side,
    metrics: Arc<CallMetrics>,
    tracer: Tracer,
}

impl MeasureLayer {
    /// Measures calls on `side` into `metrics`, recording sampled spans through `tracer`.
    pub fn new(side: Side, metrics: Arc<CallMetrics>, tracer: Tracer) -> Self {
        Self {
            side,
            metrics,
            tracer,
        }
    }
}

impl<S> tower::Layer<S> for MeasureLayer {
    type Service = Measure<S>;

    fn layer(&self, inner: S) -> Measure<S> {
        Measure {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`MeasureLayer`] makes.
#[derive(Clone, Debug)]
pub struct Measure<S> {
    inner: S,
    layer: MeasureLayer,
}

impl<S> Service<Call> for Measure<S>
where
    S: Service<Call, Response = Reply, Error = Status>,
{
    type Response = Reply;
    type Error = Status;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let layer = &self.layer;
        let stats = layer
            .metrics
            .method(layer.side, call.service.as_str(), call.method.as_str());
        if layer.side == Side::Client
            && call.metadata.trace.is_none()
            && let Some(current) = CallContext::current()
        {
            // A call made while serving one: the served call's span is its parent.
            call.metadata.trace = Some(TraceContext {
                trace_id: current.trace_id,
                parent_id: current.span_id,
                flags: current.flags,
                tracestate: None,
            });
        }
        let span = OpenSpan::open(&mut call.metadata.trace, &layer.tracer);
        let recorded = span.filter(|s| s.recorded).map(|s| Recorded {
            span: s,
            tracer: layer.tracer.clone(),
            name: call.full_name(),
            kind: match layer.side {
                Side::Server => SpanKind::Server,
                Side::Client => SpanKind::Client,
            },
        });
        let class = call.metadata.priority;
        let bytes_in = call.payload.len();
        let context = span.map(|s| s.context);
        let inner = match context {
            Some(c) => c.enter(|| self.inner.call(call)),
            None => self.inner.call(call),
        };
        ResponseFuture {
            inner,
            started: Instant::now(),
            _in_flight: stats.start(),
            stats,
            class,
            bytes_in,
            context,
            recorded: recorded.map(Box::new),
        }
    }
}

/// What a sampled span needs when its call ends.
struct Recorded {
    span: OpenSpan,
    tracer: Tracer,
    name: String,
    kind: SpanKind,
}

pin_project_lite::pin_project! {
    /// The future of a [`Measure`]d call.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        _in_flight: InFlight,
        stats: Arc<MethodStats>,
        class: Priority,
        bytes_in: usize,
        context: Option<CallContext>,
        recorded: Option<Box<Recorded>>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, Status>>,
{
    type Output = Result<Reply, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let out = match this.context {
            Some(c) => c.enter(|| inner.poll(cx)),
            None => inner.poll(cx),
        };
        let Poll::Ready(result) = out else {
            return Poll::Pending;
        };
        let took = this.started.elapsed();
        let (bytes_out, error) = match &result {
            Ok(r) => (r.payload.len(), None),
            Err(s) => (0, Some(s.code)),
        };
        this.stats
            .record(*this.class, took, *this.bytes_in, bytes_out, error);
        if let Some(r) = this.recorded.take() {
            finish(*r, took, *this.bytes_in, bytes_out, error);
        }
        Poll::Ready(result)
    }
}

fn finish(r: Recorded, took: Duration, bytes_in: usize, bytes_out: usize, error: Option<Code>) {
    let (service, method) = r.name.split_once('.').unwrap_or((&r.name, ""));
    let attributes = vec![
        ("rpc.system".to_owned(), "polycall".to_owned()),
        ("rpc.service".to_owned(), service.to_owned()),
        ("rpc.method".to_owned(), method.to_owned()),
        ("polycall.request_bytes".to_owned(), bytes_in.to_string()),
        ("polycall.reply_bytes".to_owned(), bytes_out.to_string()),
    ];
    let span = r
        .span
        .finish(&r.tracer, r.name.clone(), r.kind, took, error, attributes);
    r.tracer.record(span);
}

impl MeasureLayer {
    /// Measures a streaming call whose reply stream is `replies`: its span opens now
    /// (`metadata.trace` is rewritten so what follows is its child), and the call is
    /// counted when the stream ends — its latency is the stream's lifetime, its reply
    /// bytes the messages' sum, its error code the one it ended with (`cancelled` when
    /// the caller dropped it first).
    pub fn stream(
        &self,
        service: &str,
        method: &str,
        metadata: &mut polycall_core::Metadata,
        open: impl FnOnce(&mut polycall_core::Metadata) -> polycall_core::MessageStream,
    ) -> polycall_core::MessageStream {
        let stats = self.metrics.method(self.side, service, method);
        let span = OpenSpan::open(&mut metadata.trace, &self.tracer);
        let recorded = span.filter(|s| s.recorded).map(|s| Recorded {
            span: s,
            tracer: self.tracer.clone(),
            name: format!("{service}.{method}"),
            kind: match self.side {
                Side::Server => SpanKind::Server,
                Side::Client => SpanKind::Client,
            },
        });
        let class = metadata.priority;
        let context = span.map(|s| s.context);
        let inner = match context {
            Some(c) => c.enter(|| open(metadata)),
            None => open(metadata),
        };
        Box::pin(MeasuredStream {
            inner,
            started: Instant::now(),
            _in_flight: stats.start(),
            stats,
            class,
            bytes_out: 0,
            context,
            recorded: recorded.map(Box::new),
            done: false,
        })
    }
}

/// A reply stream counted when it ends (see [`MeasureLayer::stream`]).
struct MeasuredStream {
    inner: polycall_core::MessageStream,
    started: Instant,
    _in_flight: InFlight,
    stats: Arc<MethodStats>,
    class: Priority,
    bytes_out: usize,
    context: Option<CallContext>,
    recorded: Option<Box<Recorded>>,
    done: bool,
}

impl MeasuredStream {
    fn end(&mut self, error: Option<Code>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let took = self.started.elapsed();
        self.stats
            .record(self.class, took, 0, self.bytes_out, error);
        if let Some(r) = self.recorded.take() {
            finish(*r, took, 0, self.bytes_out, error);
        }
    }
}

impl futures_core::Stream for MeasuredStream {
    type Item = Result<polycall_core::Payload, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let inner = &mut this.inner;
        let next = match this.context {
            Some(c) => c.enter(|| inner.as_mut().poll_next(cx)),
            None => inner.as_mut().poll_next(cx),
        };
        match &next {
            Poll::Ready(Some(Ok(p))) => this.bytes_out += p.len(),
            Poll::Ready(Some(Err(s))) => this.end(Some(s.code)),
            Poll::Ready(None) => this.end(None),
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for MeasuredStream {
    fn drop(&mut self) {
        self.end(Some(Code::Cancelled));
    }
}
