//! Streaming calls on a connection: the message streams applications read
//! ([`Streaming`]), the producers that feed a call's outgoing stream within its
//! window, and the connection task's bookkeeping of both.
//!
//! Backpressure, end to end: a [`Streaming`] that is not read holds its messages; the
//! protocol stops returning the stream's credit once they hold half its window, so the
//! peer's producer stops after about one window (other calls of the connection go on).
//! On the sending side a producer is polled for its next message only while what it
//! queued and the connection has not framed yet stays under [`SEND_BUFFER`]; a peer that
//! grants no credit thus stops the producer here, and a router forwarding a stream
//! (reading one [`Streaming`], feeding another call) stops reading in turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use polycall_core::{
    Call, CallKind, ContentType, MessageStream, Metadata, Payload, Reply, Status, StreamCall,
};
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::batch::MessageBatch;
use super::producer::{OutShared, Outgoing, pump};
use super::{CancelOnDrop, Command, ConnectionHandle, Driver, Serving};

/// Bytes a producer may have queued on one stream and not yet framed by the connection
/// before it is asked for its next message.
pub const SEND_BUFFER: usize = 256 * 1024;

/// Which stream a command is about: a call this side opened (known by its token until
/// the connection task has given it an id) or a call the peer opened.
#[derive(Debug, Clone, Copy)]
pub(super) enum StreamKey {
    Token(u64),
    Call(u32),
}

/// The messages of an incoming stream on their way from the connection's task to the
/// stream's reader: a queue the task appends to and the reader takes from in batches
/// (one lock per batch on the reader's side, one wake-up per time the reader waited),
/// so a stream of small messages costs no channel operation per message.
#[derive(Debug, Default)]
struct Inbox {
    queue: std::sync::Mutex<InboxQueue>,
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct InboxQueue {
    items: std::collections::VecDeque<Delivered>,
    /// The connection will add nothing more.
    closed: bool,
    /// The reader is gone.
    abandoned: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the connection hands a stream's reader: a message (or the stream's error), or
/// several messages still packed as they arrived (the reader slices them).
#[derive(Debug)]
pub(super) enum Delivered {
    One(Result<Payload, Status>),
    /// Packed entries, their content type and their number.
    Packed(Bytes, ContentType, usize),
}

/// The connection's end of an [`Inbox`]: what it delivers collects in `pending` and
/// reaches the reader at [`Delivery::flush`] (the connection flushes after each round
/// of reading), so the reader and the connection take the lock once per batch.
/// Dropping it flushes and ends the stream cleanly.
#[derive(Debug)]
pub(super) struct Delivery {
    inbox: Arc<Inbox>,
    pending: std::collections::VecDeque<Delivered>,
}

impl Delivery {
    /// Adds a message (or the error that ends the stream) for the reader; true when
    /// it is the first since the last flush (the stream needs one).
    pub(super) fn send(&mut self, item: Result<Payload, Status>) -> bool {
        self.pending.push_back(Delivered::One(item));
        self.pending.len() == 1
    }

    /// Hands what was delivered to the reader and wakes it.
    pub(super) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        {
            let mut q = self.inbox.lock();
            if q.items.is_empty() {
                std::mem::swap(&mut q.items, &mut self.pending);
            } else {
                q.items.append(&mut self.pending);
            }
        }
        self.inbox.waker.wake();
    }

    /// Whether the reader is gone.
    pub(super) fn is_closed(&self) -> bool {
        self.inbox.lock().abandoned
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        {
            let mut q = self.inbox.lock();
            q.items.append(&mut self.pending);
            q.closed = true;
        }
        self.inbox.waker.wake();
    }
}

/// The reader's end of an [`Inbox`], with the batch it took last and the packed
/// messages it is slicing.
#[derive(Debug)]
struct InboxReader {
    inbox: Arc<Inbox>,
    batch: std::collections::VecDeque<Delivered>,
    packed: Option<(Bytes, usize, ContentType)>,
}

impl InboxReader {
    /// The next message of the current batch.
    #[inline]
    fn next_taken(&mut self) -> Option<Result<Payload, Status>> {
        loop {
            if let Some((bytes, at, ct)) = &mut self.packed {
                match polycall_proto::frame::packed_entries(&bytes[*at..]).next() {
                    Some(r) => {
                        let message = bytes.slice(*at + r.start..*at + r.end);
                        *at += r.end;
                        return Some(Ok(Payload::new(message, *ct)));
                    }
                    None => self.packed = None,
                }
            }
            match self.batch.pop_front()? {
                Delivered::One(item) => return Some(item),
                Delivered::Packed(bytes, ct, _) => self.packed = Some((bytes, 0, ct)),
            }
        }
    }

    /// Everything taken and not yet read, up to the first error (or that error alone,
    /// when it comes first).
    fn all_taken(&mut self) -> Option<Result<MessageBatch, Status>> {
        let mut items = std::collections::VecDeque::new();
        let mut count = 0;
        if let Some((bytes, at, ct)) = self.packed.take() {
            let rest = bytes.slice(at..);
            let n = polycall_proto::frame::packed_entries(&rest).count();
            if n > 0 {
                count += n;
                items.push_back(Delivered::Packed(rest, ct, n));
            }
        }
        let clean = self
            .batch
            .iter()
            .all(|d| !matches!(d, Delivered::One(Err(_))));
        if clean && items.is_empty() {
            items = std::mem::take(&mut self.batch);
            count = items.iter().map(Delivered::count).sum();
        } else {
            while let Some(d) = self.batch.front() {
                if matches!(d, Delivered::One(Err(_))) {
                    if items.is_empty()
                        && let Some(Delivered::One(Err(status))) = self.batch.pop_front()
                    {
                        return Some(Err(status));
                    }
                    break;
                }
                count += d.count();
                items.extend(self.batch.pop_front());
            }
        }
        (count > 0).then_some(Ok(MessageBatch { items, count }))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Payload, Status>>> {
        self.poll_with(cx, Self::next_taken)
    }

    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<MessageBatch, Status>>> {
        self.poll_with(cx, Self::all_taken)
    }

    /// `take` from what was taken; else takes what arrived and tries again; else waits.
    #[inline]
    fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        take: impl Fn(&mut Self) -> Option<Result<T, Status>>,
    ) -> Poll<Option<Result<T, Status>>> {
        if let Some(item) = take(self) {
            return Poll::Ready(Some(item));
        }
        for attempt in 0..2 {
            {
                let mut q = self.inbox.lock();
                if !q.items.is_empty() {
                    std::mem::swap(&mut q.items, &mut self.batch);
                    drop(q);
                    if let Some(item) = take(self) {
                        return Poll::Ready(Some(item));
                    }
                    continue;
                }
                if q.closed {
                    return Poll::Ready(None);
                }
            }
            if attempt == 0 {
                // Registered, then looked at again: nothing sent in between is missed.
                self.inbox.waker.register(cx.waker());
            }
        }
        Poll::Pending
    }
}

impl Delivered {
    /// The number of messages.
    fn count(&self) -> usize {
        match self {
            Delivered::One(Ok(_)) => 1,
            Delivered::One(Err(_)) => 0,
            Delivered::Packed(_, _, n) => *n,
        }
    }
}

impl Drop for InboxReader {
    fn drop(&mut self) {
        self.inbox.lock().abandoned = true;
    }
}

fn inbox() -> (Delivery, InboxReader) {
    let inbox = Arc::new(Inbox::default());
    (
        Delivery {
            inbox: inbox.clone(),
            pending: std::collections::VecDeque::new(),
        },
        InboxReader {
            inbox,
            batch: std::collections::VecDeque::new(),
            packed: None,
        },
    )
}

/// The incoming messages of a streaming call: the replies of a stream this side opened,
/// or the requests of a streaming call a handler serves. Yields `Ok(payload)` per
/// message, then ends (`None`) when the peer ended its stream, or yields one `Err` when
/// the call failed (the peer's error, a deadline, the connection's loss).
///
/// Dropping the replies of a call this side opened cancels the call.
pub struct Streaming {
    rx: InboxReader,
    key: StreamKey,
    commands: mpsc::UnboundedSender<Command>,
    /// Messages taken and not yet reported to the connection, and their bytes.
    unreported: usize,
    unreported_bytes: usize,
    /// Report consumption once this many bytes were taken.
    report_every: usize,
    /// The call this side opened: cancelled if dropped before its end.
    guard: Option<CancelOnDrop>,
    /// The call's deadline: a timer made on first poll (a handle may open a stream
    /// outside the runtime).
    deadline: Option<Deadline>,
    done: bool,
}

enum Deadline {
    At(std::time::Instant),
    Timer(Pin<Box<Sleep>>),
}

impl Deadline {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Deadline::At(at) = *self {
            *self = Deadline::Timer(Box::pin(tokio::time::sleep_until(at.into())));
        }
        match self {
            Deadline::Timer(t) => t.as_mut().poll(cx),
            Deadline::At(_) => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("key", &self.key)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Streaming {
    fn report(&mut self) {
        if self.unreported > 0 {
            let _ = self
                .commands
                .send(Command::StreamConsumed(self.key, self.unreported));
            self.unreported = 0;
            self.unreported_bytes = 0;
        }
    }

    fn end(&mut self) {
        self.done = true;
        self.deadline = None;
        if let Some(mut g) = self.guard.take() {
            g.armed = false;
        }
    }

    /// Turns the stream into a [`MessageStream`].
    pub fn boxed(self) -> MessageStream {
        Box::pin(self)
    }
}

impl Streaming {
    /// Reads every message that has arrived, at least one, as one batch: `None` once
    /// the stream ended, `Some(Err)` when it failed (after the messages before the
    /// failure). A reader of many small messages pays one wake-up and no reference
    /// count per message ([`MessageBatch::iter`] borrows them); the stream's credit is
    /// returned as batches are read, as with [`futures_util::StreamExt::next`].
    ///
    /// ```no_run
    /// # async fn f(ch: polycall_net::Channel) -> Result<(), Box<dyn std::error::Error>> {
    /// use polycall_core::{Call, Payload};
    /// let mut ticks = ch.server_stream(Call::new("feed.ticks", Payload::raw("all"))?).await?;
    /// let mut bytes = 0;
    /// while let Some(batch) = ticks.next_batch().await {
    ///     bytes += batch?.iter().map(|m| m.len()).sum::<usize>();
    /// }
    /// # let _ = bytes; Ok(()) }
    /// ```
    pub async fn next_batch(&mut self) -> Option<Result<MessageBatch, Status>> {
        std::future::poll_fn(|cx| self.poll_next_batch(cx)).await
    }

    /// Polls for [`Streaming::next_batch`].
    pub fn poll_next_batch(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<MessageBatch, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.rx.poll_batch(cx);
        self.settle(polled, cx, |b| (b.len(), b.wire_len()))
    }

    /// Accounts for what a poll of the reader gave: messages read (their credit is
    /// reported in batches), the end, a failure, or nothing yet (the deadline is
    /// checked, what was read is reported).
    fn settle<T>(
        &mut self,
        polled: Poll<Option<Result<T, Status>>>,
        cx: &mut Context<'_>,
        size: impl FnOnce(&T) -> (usize, usize),
    ) -> Poll<Option<Result<T, Status>>> {
        match polled {
            Poll::Ready(Some(Ok(read))) => {
                let (messages, bytes) = size(&read);
                self.unreported += messages;
                self.unreported_bytes += bytes;
                if self.unreported_bytes >= self.report_every {
                    self.report();
                }
                Poll::Ready(Some(Ok(read)))
            }
            Poll::Ready(Some(Err(status))) => {
                self.end();
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                self.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(d) = &mut self.deadline
                    && d.poll(cx).is_ready()
                {
                    // The guard, dropped armed, cancels the call.
                    self.done = true;
                    self.deadline = None;
                    self.guard = None;
                    return Poll::Ready(Some(Err(Status::deadline_exceeded(
                        "the stream's deadline passed before it ended",
                    ))));
                }
                // Nothing to read: tell the connection what was read so far, so a
                // producer waiting on credit never waits on a report.
                self.report();
                Poll::Pending
            }
        }
    }
}

impl futures_core::Stream for Streaming {
    type Item = Result<Payload, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this.rx.poll_recv(cx);
        this.settle(polled, cx, |p| (1, p.len()))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if !self.done && self.guard.is_none() {
            // A handler that stops reading its requests: what still arrives is
            // consumed (dropped) by the connection, so the peer is never stalled.
            let _ = self.commands.send(Command::StreamDiscard(self.key));
        }
    }
}

impl ConnectionHandle {
    /// Opens a server-streaming call: `call.payload` is the one request; the replies
    /// arrive on the returned [`Streaming`]. The call's deadline covers the whole
    /// stream. Dropping the stream cancels the call.
    pub fn server_stream(&self, call: Call) -> Streaming {
        let Call {
            service,
            method,
            payload,
            metadata,
        } = call;
        self.open_stream(service, method, metadata, Opening::One(payload))
    }

    /// Opens a bidirectional call: `call.requests` is sent as the request stream (as
    /// the replies leave room, never faster than the peer grants credit) while the
    /// replies arrive on the returned [`Streaming`].
    pub fn bidi(&self, call: StreamCall) -> Streaming {
        let StreamCall {
            service,
            method,
            metadata,
            requests,
        } = call;
        self.open_stream(service, method, metadata, Opening::Stream(requests))
    }

    /// Opens a client-streaming call: `call.requests` is sent as the request stream;
    /// the one reply is the result.
    pub fn client_stream(
        &self,
        call: StreamCall,
    ) -> impl Future<Output = Result<Reply, Status>> + Send + use<> {
        let replies = self.bidi(call);
        async move {
            polycall_core::stream::single(replies.boxed())
                .await
                .map(Reply::new)
        }
    }

    fn open_stream(
        &self,
        service: polycall_core::ServiceName,
        method: polycall_core::MethodName,
        metadata: Metadata,
        requests: Opening,
    ) -> Streaming {
        let (token, mut guard) = self.begin_call();
        let (tx, rx) = inbox();
        let deadline = metadata.deadline.map(|d| Deadline::At(d.0));
        let refused = match self.commands.send(Command::OpenStream(Box::new(OpenStream {
            service,
            method,
            metadata,
            token,
            requests,
            replies: tx,
        }))) {
            Ok(()) => None,
            Err(mpsc::error::SendError(Command::OpenStream(open))) => Some(open.replies),
            Err(_) => None,
        };
        if let Some(mut tx) = refused {
            guard.armed = false;
            tx.send(Err(Status::unavailable(format!(
                "the connection to {} is closed",
                self.shared.peer
            ))
            .not_executed()));
        }
        Streaming {
            rx,
            key: StreamKey::Token(token),
            commands: self.commands.clone(),
            unreported: 0,
            unreported_bytes: 0,
            report_every: REPORT_EVERY,
            guard: Some(guard),
            deadline,
            done: false,
        }
    }
}

/// Consumption is reported to the connection at least every this many bytes read (and
/// whenever the reader has read everything there is), well within the smallest window.
const REPORT_EVERY: usize = 16 * 1024;

/// A request stream as a call opens it.
pub(super) enum Opening {
    /// One request (no request stream).
    One(Payload),
    /// A request stream, opened empty and fed as the peer's credit allows.
    Stream(MessageStream),
}

/// A call to open, from a handle to the connection task.
pub(super) struct OpenStream {
    pub(super) service: polycall_core::ServiceName,
    pub(super) method: polycall_core::MethodName,
    pub(super) metadata: Metadata,
    pub(super) token: u64,
    pub(super) requests: Opening,
    pub(super) replies: Delivery,
}

/// The connection task's side of its streams.
#[derive(Default)]
pub(super) struct Streams {
    /// Incoming streams by call id: where their messages go. A call absent here whose
    /// messages arrive has no reader any more; they are consumed and dropped.
    pub(super) incoming: polycall_core::IdMap<u32, Delivery>,
    /// Outgoing streams by call id: their producers' shared state.
    pub(super) outgoing: polycall_core::IdMap<u32, Arc<OutShared>>,
    /// The tokens of the streaming calls this side opened, by call id.
    pub(super) tokens: polycall_core::IdMap<u32, u64>,
    /// Incoming streams with deliveries not yet flushed to their readers.
    dirty: Vec<u32>,
}

impl Streams {
    /// The call is over (either side): its reader gets `end` (`None`: a clean end),
    /// its producer stops.
    pub(super) fn close(&mut self, call_id: u32, end: Option<Status>) {
        if let Some(mut tx) = self.incoming.remove(&call_id)
            && let Some(status) = end
        {
            tx.send(Err(status));
        }
        if let Some(out) = self.outgoing.remove(&call_id) {
            out.finish();
        }
    }

    /// Delivers `item` to the reader of `call_id`'s incoming stream (at the next
    /// [`Streams::flush`]); false when the stream has no reader.
    pub(super) fn deliver(&mut self, call_id: u32, item: Result<Payload, Status>) -> bool {
        match self.incoming.get_mut(&call_id) {
            Some(tx) => {
                if tx.send(item) {
                    self.dirty.push(call_id);
                }
                true
            }
            None => false,
        }
    }

    /// Delivers several messages at once (a packed frame's); false when the stream
    /// has no reader.
    pub(super) fn deliver_packed(
        &mut self,
        call_id: u32,
        packed: Bytes,
        ct: ContentType,
        count: usize,
    ) -> bool {
        match self.incoming.get_mut(&call_id) {
            Some(tx) => {
                if tx.pending.is_empty() {
                    self.dirty.push(call_id);
                }
                tx.pending.push_back(Delivered::Packed(packed, ct, count));
                true
            }
            None => false,
        }
    }

    /// Hands every stream's deliveries to its reader.
    pub(super) fn flush(&mut self) {
        for id in self.dirty.drain(..) {
            if let Some(tx) = self.incoming.get_mut(&id) {
                tx.flush();
            }
        }
    }

    pub(super) fn close_all(&mut self, status: &Status) {
        self.tokens.clear();
        self.dirty.clear();
        for (_, mut tx) in self.incoming.drain() {
            tx.send(Err(status.clone()));
        }
        for (_, out) in self.outgoing.drain() {
            out.finish();
        }
    }
}

impl Driver {
    fn stream_call_id(&self, key: StreamKey) -> Option<u32> {
        match key {
            StreamKey::Call(id) => Some(id),
            StreamKey::Token(t) => self.tokens.get(&t).copied(),
        }
    }

    /// A reader for a peer call's incoming stream, its first message already in it
    /// unless the stream opened empty.
    pub(super) fn incoming_stream(&mut self, call_id: u32, first: Option<Payload>) -> Streaming {
        let (tx, rx) = inbox();
        self.streams.incoming.insert(call_id, tx);
        if let Some(p) = first {
            self.streams.deliver(call_id, Ok(p));
        }
        Streaming {
            rx,
            key: StreamKey::Call(call_id),
            commands: self
                .answers
                .upgrade()
                .unwrap_or_else(|| mpsc::unbounded_channel().0),
            unreported: 0,
            unreported_bytes: 0,
            report_every: REPORT_EVERY,
            guard: None,
            deadline: None,
            done: false,
        }
    }

    /// Serves a streaming call the peer opened (or a call of a streaming method): the
    /// handler gets the request stream and answers with a reply stream, fed into the
    /// call as its window allows, or with one reply (a client stream).
    pub(super) fn serve_stream(&mut self, call_id: u32, call: StreamCall, kind: CallKind) {
        let Some(commands) = self.answers.upgrade() else {
            return;
        };
        let deadline = call.metadata.deadline;
        let inline = !self.config.spawn_handlers
            || self.handler.stream_runs_inline(&call.service, &call.method);
        let replies = self.handler.stream(call);
        let task = if kind.streams_replies() {
            if let Err(e) = self.proto.open_reply_stream(call_id) {
                self.streams.close(call_id, None);
                let _ = self.proto.send_error(call_id, &e.status());
                return;
            }
            let shared = Arc::new(OutShared::new(self.proto.pack_limits()));
            self.streams.outgoing.insert(call_id, shared.clone());
            let key = StreamKey::Call(call_id);
            let fail = commands.clone();
            let run = pump(replies, key, shared, commands);
            let serve = async move {
                match deadline {
                    Some(d) => {
                        if tokio::time::timeout_at(d.0.into(), run).await.is_err() {
                            let _ = fail.send(Command::StreamFail(
                                key,
                                Status::deadline_exceeded(
                                    "the stream did not end before the call's deadline",
                                ),
                            ));
                        }
                    }
                    None => run.await,
                }
            };
            if inline {
                tokio::spawn(serve).abort_handle()
            } else {
                self.spawn_task(serve)
            }
        } else {
            let answer = async move {
                let one = polycall_core::stream::single(replies);
                let result = match deadline {
                    Some(d) => tokio::time::timeout_at(d.0.into(), one)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Status::deadline_exceeded(
                                "the handler did not answer before the call's deadline",
                            ))
                        }),
                    None => one.await,
                };
                let _ = commands.send(Command::Answer(call_id, result.map(Reply::new)));
            };
            self.spawn_task(answer)
        };
        self.serving.insert(call_id, Serving::Task(task));
    }

    fn spawn_task(&self, f: impl Future<Output = ()> + Send + 'static) -> tokio::task::AbortHandle {
        match &self.config.handler_runtime {
            Some(rt) => rt.spawn(f).abort_handle(),
            None => crate::offload::handlers().spawn(f).abort_handle(),
        }
    }

    /// Opens a streaming call this side makes.
    pub(super) fn open_stream_call(&mut self, open: OpenStream) {
        let OpenStream {
            service,
            method,
            metadata,
            token,
            requests,
            mut replies,
        } = open;
        if replies.is_closed() {
            return; // the caller gave up before the call left
        }
        let meta = polycall_proto::WireMeta::from_metadata(&metadata, std::time::Instant::now());
        let (opened, producer) = match requests {
            Opening::One(p) => (
                self.proto.open_call(&service, &method, p, meta, false),
                None,
            ),
            Opening::Stream(s) => (self.proto.open_stream(&service, &method, meta), Some(s)),
        };
        let call_id = match opened {
            Ok(id) => id,
            Err(e) => {
                replies.send(Err(e.status()));
                return;
            }
        };
        self.tokens.insert(token, call_id);
        self.streams.tokens.insert(call_id, token);
        self.streams.incoming.insert(call_id, replies);
        if let Some(requests) = producer {
            let shared = Arc::new(OutShared::new(self.proto.pack_limits()));
            self.streams.outgoing.insert(call_id, shared.clone());
            if let Some(commands) = self.answers.upgrade() {
                tokio::spawn(pump(requests, StreamKey::Token(token), shared, commands));
            }
        }
    }

    /// Moves what a producer put in its outbox into the call's queue.
    pub(super) fn stream_ready(&mut self, key: StreamKey) {
        if let Some(call_id) = self.stream_call_id(key) {
            self.take_outbox(call_id);
        }
    }

    fn take_outbox(&mut self, call_id: u32) {
        let Some(shared) = self.streams.outgoing.get(&call_id).cloned() else {
            return; // the call is over
        };
        let mut taken = shared.take();
        while !taken.is_empty() {
            let sent = match taken.pop_front() {
                Some(Outgoing::Packed(p)) => self.proto.send_packed(call_id, p),
                Some(Outgoing::One(first)) => {
                    let run = taken
                        .iter()
                        .take_while(|o| matches!(o, Outgoing::One(_)))
                        .count();
                    let rest = taken.drain(..run).filter_map(|o| match o {
                        Outgoing::One(p) => Some(p),
                        Outgoing::Packed(_) => None,
                    });
                    self.proto
                        .send_messages(call_id, std::iter::once(first).chain(rest))
                }
                None => Ok(()),
            };
            if let Err(e) = sent {
                self.stream_failed(call_id, e.status());
                return;
            }
        }
        shared.set_queued(self.proto.stream_queued(call_id));
    }

    pub(super) fn stream_end(&mut self, key: StreamKey) {
        let Some(call_id) = self.stream_call_id(key) else {
            return;
        };
        self.take_outbox(call_id);
        if self.streams.outgoing.remove(&call_id).is_none() {
            return;
        }
        let _ = self.proto.send_end(call_id);
        if matches!(key, StreamKey::Call(_)) {
            // This side's answer is complete: the call is over.
            self.serving.remove(&call_id);
            self.streams.close(call_id, None);
            self.dispatch_backlog();
        }
    }

    /// A producer failed (or the stream could not be sent): a peer call is failed with
    /// `status`; a call this side opened is cancelled, its reader told why.
    pub(super) fn stream_failed(&mut self, call_id: u32, status: Status) {
        if self.proto_is_local(call_id) {
            let _ = self.proto.cancel(call_id);
            self.end_local_stream(call_id, Some(status));
        } else {
            self.serving.remove(&call_id);
            self.streams.close(call_id, None);
            let _ = self.proto.fail_stream(call_id, &status);
            self.dispatch_backlog();
        }
    }

    pub(super) fn stream_fail(&mut self, key: StreamKey, status: Status) {
        if let Some(call_id) = self.stream_call_id(key)
            && self.streams.outgoing.contains_key(&call_id)
        {
            // The messages produced before the failure go first.
            self.take_outbox(call_id);
            if self.streams.outgoing.contains_key(&call_id) {
                self.stream_failed(call_id, status);
            }
        }
    }

    pub(super) fn stream_consumed(&mut self, key: StreamKey, messages: usize) {
        if let Some(call_id) = self.stream_call_id(key) {
            self.proto.stream_consumed(call_id, messages);
        }
    }

    pub(super) fn stream_discard(&mut self, key: StreamKey) {
        if let Some(call_id) = self.stream_call_id(key) {
            self.streams.incoming.remove(&call_id);
            self.proto.stream_consumed(call_id, usize::MAX);
        }
    }

    /// After a write: producers whose calls' queues shrank may go on.
    pub(super) fn refresh_producers(&mut self) {
        for (id, shared) in self.streams.outgoing.iter() {
            shared.set_queued(self.proto.stream_queued(*id));
        }
    }

    /// A streaming call this side opened is over: its reader gets `end` (`None`: the
    /// clean end), its producer stops, its token is forgotten.
    pub(super) fn end_local_stream(&mut self, call_id: u32, end: Option<Status>) {
        self.streams.close(call_id, end);
        if let Some(t) = self.streams.tokens.remove(&call_id) {
            self.tokens.remove(&t);
        }
    }

    /// Whether streaming calls are in progress.
    pub(super) fn streams_open(&self) -> bool {
        !self.streams.incoming.is_empty() || !self.streams.outgoing.is_empty()
    }

    fn proto_is_local(&self, call_id: u32) -> bool {
        (call_id % 2 == 1) == (self.role == polycall_proto::Role::Client)
    }
}
