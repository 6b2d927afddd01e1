//! Streaming calls: the shape of a method's messages, and a call whose requests (or
//! replies) are a stream of messages.
//!
//! A unary call is one request and one reply. A streaming method takes a stream of
//! request messages, answers with a stream of reply messages, or both ([`CallKind`]).
//! Either stream is a [`MessageStream`]: it yields `Ok(payload)` per message and ends
//! with `None` (success) or with one `Err(status)` (the stream failed; nothing follows).
//!
//! ```
//! use polycall_core::{stream, CallKind, MessageStream, Payload, StreamCall};
//!
//! // A server-streaming handler that answers every call with two messages.
//! fn greet(_call: StreamCall) -> MessageStream {
//!     Box::pin(stream::iter([Ok(Payload::raw("hello")), Ok(Payload::raw("again"))]))
//! }
//! let handler: &dyn polycall_core::StreamHandler = &greet;
//! # let _ = handler;
//! assert!(CallKind::ServerStream.streams_replies());
//! assert!(!CallKind::ServerStream.streams_requests());
//! //! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The `Stream` trait of `futures-core`, which every message stream implements.
pub use futures_core::Stream;

use crate::{Call, Metadata, MethodName, NameError, Payload, ServiceName, Status, split_full_name};

/// The shape of a method's messages.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// One request, one reply.
    #[default]
    Unary,
    /// One request, a stream of replies.
    ServerStream,
    /// A stream of requests, one reply.
    ClientStream,
    /// A stream of requests and a stream of replies, in both directions at once.
    Bidi,
}

impl CallKind {
    /// The kind whose requests stream when `requests` and whose replies stream when
    /// `replies`.
    pub fn from_streams(requests: bool, replies: bool) -> Self {
        match (requests, replies) {
            (false, false) => CallKind::Unary,
            (false, true) => CallKind::ServerStream,
            (true, false) => CallKind::ClientStream,
            (true, true) => CallKind::Bidi,
        }
    }

    /// Whether the caller sends a stream of request messages.
    pub fn streams_requests(self) -> bool {
        matches!(self, CallKind::ClientStream | CallKind::Bidi)
    }

    /// Whether the callee answers with a stream of reply messages.
    pub fn streams_replies(self) -> bool {
        matches!(self, CallKind::ServerStream | CallKind::Bidi)
    }

    /// Whether either direction streams.
    pub fn is_streaming(self) -> bool {
        self != CallKind::Unary
    }

    /// The name used in `describe` output and interface files.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Unary => "unary",
            CallKind::ServerStream => "server_stream",
            CallKind::ClientStream => "client_stream",
            CallKind::Bidi => "bidi",
        }
    }
}

impl std::fmt::Display for CallKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream of messages: `Ok(payload)` per message, then the end (`None`: success) or
/// one `Err(status)` (failure; the stream yields nothing after it).
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send + 'static>>;

/// A streaming call as its handler sees it (and as a client opens it): the method, the
/// metadata, and the stream of request messages (one message for a server stream).
pub struct StreamCall {
    /// The service called.
    pub service: ServiceName,
    /// The method called.
    pub method: MethodName,
    /// Deadline, priority, trace context and the rest.
    pub metadata: Metadata,
    /// The request messages.
    pub requests: MessageStream,
}

impl std::fmt::Debug for StreamCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCall")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl StreamCall {
    /// A streaming call of the full name `SERVICE.METHOD` with default metadata.
    pub fn new(full_name: &str, requests: MessageStream) -> Result<Self, NameError> {
        let (service, method) = split_full_name(full_name)?;
        Ok(Self {
            service,
            method,
            metadata: Metadata::default(),
            requests,
        })
    }

    /// The streaming form of a unary call: its payload is the one request message.
    pub fn from_call(call: Call) -> Self {
        Self {
            service: call.service,
            method: call.method,
            metadata: call.metadata,
            requests: Box::pin(iter([Ok(call.payload)])),
        }
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// `service.method`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }
}

/// A streaming method implementation: takes the call, answers with the stream of reply
/// messages (one message for a client stream). Errors before the first reply are an
/// `Err` item like any other.
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one streaming call.
    fn call(&self, call: StreamCall) -> MessageStream;
}

impl<F> StreamHandler for F
where
    F: Fn(StreamCall) -> MessageStream + Send + Sync + 'static,
{
    fn call(&self, call: StreamCall) -> MessageStream {
        self(call)
    }
}

/// The stream [`iter`] returns.
#[derive(Debug, Clone)]
pub struct Iter<I> {
    items: I,
}

/// A stream of the items of `items`, each ready at once.
///
/// ```
/// use polycall_core::{stream, MessageStream, Payload};
/// let messages: MessageStream = Box::pin(stream::iter([Ok(Payload::raw("a")), Ok(Payload::raw("b"))]));
/// # let _ = messages;
/// ```
pub fn iter<I: IntoIterator>(items: I) -> Iter<I::IntoIter> {
    Iter {
        items: items.into_iter(),
    }
}

impl<I: Iterator + Unpin> Stream for Iter<I> {
    type Item = I::Item;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.items.next())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}

/// A stream that fails at once with `status` (a handler refusing a call).
pub fn fail(status: Status) -> MessageStream {
    Box::pin(iter([Err(status)]))
}

/// A stream of the one item a future produces.
pub struct Once<F> {
    future: Option<Pin<Box<F>>>,
}

impl<F> std::fmt::Debug for Once<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once")
            .field("done", &self.future.is_none())
            .finish()
    }
}

impl<F> Once<F> {
    /// The stream of `future`'s output.
    pub fn new(future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F: std::future::Future> Stream for Once<F> {
    type Item = F::Output;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let Some(f) = self.future.as_mut() else {
            return Poll::Ready(None);
        };
        match f.as_mut().poll(cx) {
            Poll::Ready(v) => {
                self.future = None;
                Poll::Ready(Some(v))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The one message of `messages`: `invalid_input` when the stream holds none or more
/// than one (a unary method or a server stream takes exactly one request; a client
/// stream answers exactly one reply).
pub async fn single(mut messages: MessageStream) -> Result<Payload, Status> {
    let first = match next(&mut messages).await {
        Some(r) => r?,
        None => {
            return Err(Status::invalid_input(
                "expected one message, the stream had none",
            ));
        }
    };
    match next(&mut messages).await {
        None => Ok(first),
        Some(Err(s)) => Err(s),
        Some(Ok(_)) => Err(Status::invalid_input(
            "expected one message, the stream had more",
        )),
    }
}

/// The next item of `messages`.
pub async fn next(messages: &mut MessageStream) -> Option<Result<Payload, Status>> {
    std::future::poll_fn(|cx| messages.as_mut().poll_next(cx)).await
}

/// The stream [`map`] returns.
pub struct Map<S, F> {
    inner: S,
    f: F,
}

impl<S, F> std::fmt::Debug for Map<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Map")
    }
}

/// `inner`'s items passed through `f`.
pub fn map<S, F, U>(inner: S, f: F) -> Map<S, F>
where
    S: Stream + Unpin,
    F: FnMut(S::Item) -> U + Unpin,
{
    Map { inner, f }
}

impl<S, F, U> Stream for Map<S, F>
where
    S: Stream + Unpin,
    F: FnMut(S::Item) -> U + Unpin,
{
    type Item = U;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<U>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some((this.f)(item))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The next item of any unpinned stream.
pub async fn next_item<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// The message stream `encode` makes of what `opening` yields first: `opening` is a
/// stream whose one item opens the real stream (or fails it before it started).
pub fn flatten_results<S, T, F>(opening: S, encode: F) -> MessageStream
where
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    T: Send + 'static,
    F: FnOnce(T) -> MessageStream + Send + Unpin + 'static,
{
    Box::pin(FlattenResults::Opening(opening, Some(encode)))
}

/// The stream [`flatten_results`] returns.
enum FlattenResults<S, F> {
    Opening(S, Option<F>),
    Streaming(MessageStream),
    Done,
}

impl<S, T, F> Stream for FlattenResults<S, F>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
    F: FnOnce(T) -> MessageStream + Unpin,
{
    type Item = Result<Payload, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut *self {
                FlattenResults::Opening(opening, encode) => match Pin::new(opening).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        *self = FlattenResults::Done;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(status))) => {
                        *self = FlattenResults::Done;
                        return Poll::Ready(Some(Err(status)));
                    }
                    Poll::Ready(Some(Ok(inner))) => {
                        let encode = encode.take().expect("opened once");
                        *self = FlattenResults::Streaming(encode(inner));
                    }
                },
                FlattenResults::Streaming(s) => return s.as_mut().poll_next(cx),
                FlattenResults::Done => return Poll::Ready(None),
            }
        }
    }
}

/// A server-streaming handler from a function of the one request and the call's
/// metadata (see [`crate::Router::route_server_stream`]).
pub fn server_stream_fn<F>(f: F) -> ServerStreamFn<F>
where
    F: Fn(Payload, Metadata) -> MessageStream + Send + Sync + 'static,
{
    ServerStreamFn { f: Arc::new(f) }
}

/// The handler [`server_stream_fn`] returns.
pub struct ServerStreamFn<F> {
    f: Arc<F>,
}

impl<F> std::fmt::Debug for ServerStreamFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerStreamFn")
    }
}

impl<F> StreamHandler for ServerStreamFn<F>
where
    F: Fn(Payload, Metadata) -> MessageStream + Send + Sync + 'static,
{
    fn call(&self, call: StreamCall) -> MessageStream {
        Box::pin(OneRequest::Opening {
            requests: call.requests,
            metadata: Some(call.metadata),
            f: self.f.clone(),
        })
    }
}

/// The replies of a [`ServerStreamFn`]: the request first, then the handler's stream.
enum OneRequest<F> {
    Opening {
        requests: MessageStream,
        metadata: Option<Metadata>,
        f: Arc<F>,
    },
    Replying(MessageStream),
    Done,
}

impl<F> Stream for OneRequest<F>
where
    F: Fn(Payload, Metadata) -> MessageStream,
{
    type Item = Result<Payload, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut *self {
                OneRequest::Opening {
                    requests,
                    metadata,
                    f,
                } => match requests.as_mut().poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(request))) => {
                        let replies = f(request, metadata.take().unwrap_or_default());
                        *self = OneRequest::Replying(replies);
                    }
                    Poll::Ready(Some(Err(status))) => {
                        *self = OneRequest::Done;
                        return Poll::Ready(Some(Err(status)));
                    }
                    Poll::Ready(None) => {
                        *self = OneRequest::Done;
                        return Poll::Ready(Some(Err(Status::invalid_input(
                            "a server stream takes one request; none came",
                        ))));
                    }
                },
                OneRequest::Replying(replies) => return replies.as_mut().poll_next(cx),
                OneRequest::Done => return Poll::Ready(None),
            }
        }
    }
}
