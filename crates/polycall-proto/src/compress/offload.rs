//! Compression work the caller runs away from the connection.
//!
//! The connection compresses and decompresses small messages itself, where they are
//! produced and received. A large message would hold up every other call of the
//! connection for milliseconds, so the state machine hands that work out instead:
//!
//! - outgoing: [`Connection::call_compression_job`](crate::Connection::call_compression_job)
//!   (or `reply_compression_job`) makes the selector's choice and returns a
//!   [`CompressJob`]; the caller runs it anywhere ([`CompressJob::run`] is a pure
//!   function) and sends the [`Compressed`] result with
//!   [`Connection::open_call_compressed`](crate::Connection::open_call_compressed) or
//!   `send_reply_compressed`, which feed the outcome back to the selector;
//! - incoming: with [`Config::defer_decompression_above`](crate::connection::Config) set,
//!   a call or reply whose compressed message is larger arrives as
//!   [`Event::Deferred`](crate::Event::Deferred); [`Deferred::decompress`] (pure, bounded
//!   by the negotiated message limit) turns it into the event it holds.

use std::time::Duration;

use bytes::Bytes;
use polycall_core::{ContentType, Payload, Status};

use super::{Algorithm, Choice, CompressError, Compressor, Decompressor};
use crate::connection::Event;

/// One message to compress with the selector's choice, away from the connection.
#[derive(Debug, Clone)]
pub struct CompressJob {
    pub(crate) key: u64,
    pub(crate) choice: Choice,
    pub(crate) content_type: ContentType,
    pub(crate) input: Bytes,
    /// The connection's clock, to time the work where it runs.
    pub(crate) clock: crate::Clock,
}

/// The outcome of a [`CompressJob`], to send with the connection.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub(crate) key: u64,
    pub(crate) choice: Choice,
    pub(crate) content_type: ContentType,
    pub(crate) input_len: usize,
    pub(crate) output_len: usize,
    pub(crate) cpu: Duration,
    pub(crate) algorithm: Algorithm,
    pub(crate) data: Bytes,
}

impl CompressJob {
    /// The choice the selector made.
    pub fn choice(&self) -> Choice {
        self.choice
    }

    /// Compresses (timing it, for the selector). When the result is not smaller, the
    /// message goes as it is.
    pub fn run(self) -> Compressed {
        let mut out = Vec::new();
        let mut c = Compressor::new();
        let (ok, cpu) = self.clock.time(|| {
            c.prepare(self.choice).is_ok() && c.compress(self.choice, &self.input, &mut out).is_ok()
        });
        let smaller = ok && out.len() < self.input.len();
        Compressed {
            key: self.key,
            choice: self.choice,
            content_type: self.content_type,
            input_len: self.input.len(),
            output_len: if ok { out.len() } else { self.input.len() },
            cpu,
            algorithm: if smaller {
                self.choice.algorithm
            } else {
                Algorithm::None
            },
            data: if smaller {
                Bytes::from(out)
            } else {
                self.input
            },
        }
    }
}

impl Compressed {
    /// The algorithm the message travels with ([`Algorithm::None`] when compressing
    /// did not make it smaller).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A received call or reply whose payload is still compressed (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub(crate) event: Box<Event>,
    pub(crate) algorithm: Algorithm,
    pub(crate) limit: usize,
}

/// A deferred message that does not decompress: the call it belongs to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredError {
    /// The call.
    pub call_id: u32,
    /// Whether the message was a reply to a call of this side (else the peer's call).
    pub reply: bool,
    /// `too_large` or `malformed`.
    pub status: Status,
}

impl Deferred {
    /// The call the message belongs to.
    pub fn call_id(&self) -> u32 {
        match &*self.event {
            Event::Call(c) => c.call_id,
            Event::Reply { call_id, .. } => *call_id,
            _ => 0,
        }
    }

    /// Decompresses within the negotiated message limit and returns the event.
    pub fn decompress(self) -> Result<Event, DeferredError> {
        self.decompress_pausing(&mut || {})
    }

    /// As [`Deferred::decompress`], calling `pause` between steps of the work (see
    /// [`Decompressor::decompress_pausing`]).
    pub fn decompress_pausing(self, pause: &mut dyn FnMut()) -> Result<Event, DeferredError> {
        let call_id = self.call_id();
        let mut event = *self.event;
        let (reply, payload) = match &mut event {
            Event::Call(c) => (false, &mut c.payload),
            Event::Reply { payload, .. } => (true, payload),
            _ => return Ok(event),
        };
        match Decompressor::new().decompress_pausing(
            self.algorithm,
            &payload.bytes,
            self.limit,
            pause,
        ) {
            Ok(v) => {
                *payload = Payload::new(Bytes::from(v), payload.content_type);
                Ok(event)
            }
            Err(e) => Err(DeferredError {
                call_id,
                reply,
                status: match e {
                    CompressError::TooLarge { .. } => Status::too_large(e.to_string()),
                    _ => Status::malformed(e.to_string()),
                },
            }),
        }
    }
}
