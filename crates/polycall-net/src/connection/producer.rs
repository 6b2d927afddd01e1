//! The sending half of a streaming call: the task that polls an application's message
//! stream ([`pump`]) and the outbox it shares with the connection task ([`OutShared`]).
//!
//! The producer runs where the application's stream runs (the handler runtime for a
//! reply stream); the connection takes its messages in batches. Small messages are
//! packed on the producer's side ([`PackedWriter`], docs/protocol.md §6.2) when the peer
//! accepts packed frames: each message is copied once, there, and dropped by the thread
//! that made it, and the connection moves one buffer per frame instead of one
//! reference-counted payload per message across threads.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use polycall_core::{MessageStream, Payload, Status};
use polycall_proto::connection::{PackLimits, PackedMessages, PackedWriter};
use tokio::sync::mpsc;

use super::Command;
use super::streams::{SEND_BUFFER, StreamKey};

/// What a producer hands the connection: a message, or small messages it packed.
#[derive(Debug)]
pub(super) enum Outgoing {
    One(Payload),
    Packed(PackedMessages),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::One(p) => p.len(),
            Outgoing::Packed(p) => p.len(),
        }
    }
}

/// The sending half's state, shared by a producer and the connection task. The producer
/// appends to `outbox` and rings the connection (one command) only when the outbox was
/// empty; the connection takes everything there at once. A stream of small messages
/// thus costs a lock per batch, not a channel send and a wake-up per message.
#[derive(Debug)]
pub(super) struct OutShared {
    outbox: std::sync::Mutex<VecDeque<Outgoing>>,
    /// How the producer may pack small messages (`None`: it does not).
    packing: Option<PackLimits>,
    /// Bytes in `outbox`.
    in_channel: AtomicUsize,
    /// Bytes the connection has queued on the call and not yet framed.
    queued: AtomicUsize,
    /// The call is over: the producer stops.
    done: AtomicBool,
    waker: AtomicWaker,
}

impl OutShared {
    /// The shared state of a new stream, its producer packing within `packing`.
    pub(super) fn new(packing: Option<PackLimits>) -> Self {
        OutShared {
            outbox: std::sync::Mutex::default(),
            packing,
            in_channel: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            done: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    pub(super) fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn pending(&self) -> usize {
        self.in_channel.load(Ordering::Acquire) + self.queued.load(Ordering::Acquire)
    }

    /// Appends a batch (emptying `batch`); true when the outbox was empty (the
    /// connection must be rung).
    fn push(&self, batch: &mut VecDeque<Outgoing>, bytes: usize) -> bool {
        self.in_channel.fetch_add(bytes, Ordering::AcqRel);
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = outbox.is_empty();
        outbox.append(batch);
        was_empty
    }

    /// Everything in the outbox, oldest first.
    pub(super) fn take(&self) -> VecDeque<Outgoing> {
        let taken = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
        let bytes: usize = taken.iter().map(Outgoing::len).sum();
        self.in_channel.fetch_sub(bytes, Ordering::AcqRel);
        taken
    }

    /// The connection framed some of the call's bytes: `queued` is what is left.
    pub(super) fn set_queued(&self, queued: usize) {
        let before = self.queued.swap(queued, Ordering::AcqRel);
        if queued < before && queued < SEND_BUFFER {
            self.waker.wake();
        }
    }
}

/// Most messages a producer hands the connection in one batch, unpacked.
const BATCH: usize = 256;

/// How a producer's turn ended.
enum Turn {
    /// The call is over.
    Over,
    /// The messages ended: the stream ends.
    End,
    /// The messages failed: so does the stream.
    Fail(Status),
}

/// What a producer has taken from its stream and not yet handed to the connection:
/// `items`, ready to hand over, and the packed run in progress.
struct Batch {
    items: VecDeque<Outgoing>,
    /// Bytes of `items` (as [`Outgoing::len`] counts them).
    bytes: usize,
    /// Small messages being packed (when the peer accepts packed frames).
    packer: Option<(PackLimits, PackedWriter)>,
}

impl Batch {
    fn new(packing: Option<PackLimits>) -> Self {
        Batch {
            items: VecDeque::new(),
            bytes: 0,
            packer: packing.map(|l| {
                (
                    l,
                    PackedWriter::new(polycall_core::ContentType::Raw, l.room),
                )
            }),
        }
    }

    /// Bytes taken, in `items` or in the run in progress.
    fn bytes(&self) -> usize {
        self.bytes + self.packer.as_ref().map_or(0, |(_, w)| w.len())
    }

    /// Whether the items are worth handing over now: many messages, or a packed
    /// frame's worth.
    fn full(&self) -> bool {
        self.items.len() >= BATCH || matches!(self.items.back(), Some(Outgoing::Packed(_)))
    }

    fn push_item(&mut self, item: Outgoing) {
        self.bytes += item.len();
        self.items.push_back(item);
    }

    fn add(&mut self, payload: Payload) {
        if let Some((limits, writer)) = &mut self.packer
            && payload.len() <= limits.max_message
        {
            let mut finished = None;
            if writer.content_type() != payload.content_type {
                finished = writer.set_content_type(payload.content_type);
            }
            let packed = writer.push(&payload.bytes) || {
                // The run is full: it goes, the message starts the next.
                finished = finished.or_else(|| writer.finish());
                writer.push(&payload.bytes)
            };
            if let Some(p) = finished {
                self.push_item(Outgoing::Packed(p));
            }
            if packed {
                // Copied: the payload is dropped here, on the thread that made it.
                return;
            }
        }
        self.seal();
        self.push_item(Outgoing::One(payload));
    }

    /// Ends the packed run in progress (what follows goes after it).
    fn seal(&mut self) {
        if let Some((_, writer)) = &mut self.packer
            && let Some(p) = writer.finish()
        {
            self.push_item(Outgoing::Packed(p));
        }
    }

    fn clear(&mut self) {
        self.items.clear();
        if let Some((_, writer)) = &mut self.packer {
            writer.finish();
        }
        self.bytes = 0;
    }
}

/// Feeds `messages` into a call's outgoing stream, within its buffer: the next message
/// is asked for only when there is room. Ends the stream when `messages` ends, fails
/// it on an `Err`, and stops when the call is over.
pub(super) async fn pump(
    mut messages: MessageStream,
    key: StreamKey,
    shared: Arc<OutShared>,
    commands: mpsc::UnboundedSender<Command>,
) {
    // Messages taken from the producer go to the outbox in batches (one lock each).
    let mut batch = Batch::new(shared.packing);
    // Hands `items` over; with `seal`, the run in progress too (a full batch leaves it
    // to fill: sealing it there would send a run of one message after every full one).
    let flush = |batch: &mut Batch, seal: bool| {
        if seal {
            batch.seal();
        }
        if batch.items.is_empty() {
            return true;
        }
        let ring = shared.push(&mut batch.items, std::mem::take(&mut batch.bytes));
        !ring || commands.send(Command::StreamReady(key)).is_ok()
    };
    let turn = std::future::poll_fn(|cx| {
        shared.waker.register(cx.waker());
        let turn = loop {
            if shared.done.load(Ordering::Acquire) {
                batch.clear();
                return Poll::Ready(Turn::Over);
            }
            let over = shared.pending() + batch.bytes() >= SEND_BUFFER;
            if over || batch.full() {
                if !flush(&mut batch, over) {
                    return Poll::Ready(Turn::Over);
                }
                if shared.pending() >= SEND_BUFFER {
                    return Poll::Pending;
                }
            }
            match messages.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(payload))) => batch.add(payload),
                Poll::Ready(Some(Err(status))) => break Poll::Ready(Turn::Fail(status)),
                Poll::Ready(None) => break Poll::Ready(Turn::End),
                Poll::Pending => break Poll::Pending,
            }
        };
        // Whatever the turn ends with, what was produced goes first.
        if !flush(&mut batch, true) {
            return Poll::Ready(Turn::Over);
        }
        turn
    })
    .await;
    // The end follows the messages already in the outbox (the connection takes them
    // first).
    let _ = match turn {
        Turn::Over => return,
        Turn::End => commands.send(Command::StreamEnd(key)),
        Turn::Fail(status) => commands.send(Command::StreamFail(key, status)),
    };
}
