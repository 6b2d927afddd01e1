//! Stream messages read many at a time ([`Streaming::next_batch`]): every message that
//! has arrived, borrowed where it lies in the receive buffer, so a reader of many small
//! messages pays neither a poll nor a reference count per message.
//!
//! [`Streaming::next_batch`]: super::Streaming::next_batch

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use polycall_core::{ContentType, Payload};

use super::streams::Delivered;

/// Messages of a stream taken at once by [`Streaming::next_batch`], in order: iterate
/// them borrowed with [`MessageBatch::iter`], or take them as payloads with
/// [`MessageBatch::into_payloads`].
///
/// [`Streaming::next_batch`]: super::Streaming::next_batch
#[derive(Debug)]
pub struct MessageBatch {
    pub(super) items: VecDeque<Delivered>,
    pub(super) count: usize,
}

impl MessageBatch {
    /// The number of messages (at least one).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch has no message (never true of one `next_batch` returned).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes the batch holds, with packed messages' 4-byte lengths (what the
    /// stream's credit counts).
    pub(super) fn wire_len(&self) -> usize {
        self.items
            .iter()
            .map(|d| match d {
                Delivered::One(Ok(p)) => p.len(),
                Delivered::Packed(b, _, _) => b.len(),
                Delivered::One(Err(_)) => 0,
            })
            .sum()
    }

    /// The messages, borrowed, in order.
    pub fn iter(&self) -> impl Iterator<Item = MessageRef<'_>> + '_ {
        self.items.iter().flat_map(|d| {
            let (owner, ct, packed) = match d {
                Delivered::One(Ok(p)) => (&p.bytes, p.content_type, false),
                Delivered::Packed(b, ct, _) => (b, *ct, true),
                // A batch holds no error (the reader keeps it for the next read).
                Delivered::One(Err(_)) => (&EMPTY, ContentType::Raw, true),
            };
            let whole = (!packed).then(|| 0..owner.len());
            let entries = packed.then(|| polycall_proto::frame::packed_entries(owner));
            whole
                .into_iter()
                .chain(entries.into_iter().flatten())
                .map(move |range| MessageRef {
                    owner,
                    range,
                    content_type: ct,
                })
        })
    }

    /// The messages as payloads, in order (each a slice of the receive buffer).
    pub fn into_payloads(self) -> impl Iterator<Item = Payload> {
        self.items.into_iter().flat_map(|d| {
            let (one, packed) = match d {
                Delivered::One(Ok(p)) => (Some(p), None),
                Delivered::Packed(b, ct, _) => (None, Some((b, ct))),
                Delivered::One(Err(_)) => (None, None),
            };
            let unpacked = packed.into_iter().flat_map(|(b, ct)| {
                let mut at = 0;
                std::iter::from_fn(move || {
                    let r = polycall_proto::frame::packed_entries(&b[at..]).next()?;
                    let message = b.slice(at + r.start..at + r.end);
                    at += r.end;
                    Some(Payload::new(message, ct))
                })
            });
            one.into_iter().chain(unpacked)
        })
    }
}

static EMPTY: Bytes = Bytes::new();

/// One message of a [`MessageBatch`], borrowed.
#[derive(Debug, Clone)]
pub struct MessageRef<'a> {
    owner: &'a Bytes,
    range: Range<usize>,
    content_type: ContentType,
}

impl MessageRef<'_> {
    /// The message's bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.owner[self.range.clone()]
    }

    /// The message's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the message is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// How the message is encoded.
    #[inline]
    pub fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// The message as an owned payload (a slice of the receive buffer, no copy).
    pub fn to_payload(&self) -> Payload {
        Payload::new(self.owner.slice(self.range.clone()), self.content_type)
    }
}
