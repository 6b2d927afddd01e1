//! Stream messages packed by their producer: small messages of one stream laid out as
//! packed entries (docs/protocol.md §6.2) where they are made, so the connection sends
//! them as the body of one `DATA` frame without touching each message.
//!
//! The connection packs small queued messages itself too ([`Connection::send_messages`]);
//! packing at the producer moves that work, and the last touch of each message, to the
//! producer's thread: the connection then handles one buffer per frame instead of one
//! reference-counted payload per message.

use super::*;

/// How a producer may pack messages for a connection: what [`Connection::pack_limits`]
/// answers once the peer accepts packed frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackLimits {
    /// Largest body of packed entries the connection sends as one frame.
    pub room: usize,
    /// Largest message that may travel packed; larger ones go on their own.
    pub max_message: usize,
}

/// Builds a [`PackedMessages`]: small messages of one content type appended as packed
/// entries until the next would pass the room.
///
/// ```
/// use polycall_core::ContentType;
/// use polycall_proto::connection::PackedWriter;
///
/// let mut w = PackedWriter::new(ContentType::Raw, 64);
/// assert!(w.push(b"hello"));
/// assert!(w.push(b"world"));
/// assert!(!w.push(&[0; 60]), "no room left for a third");
/// let packed = w.finish().expect("two messages");
/// assert_eq!((packed.count(), packed.len()), (2, 18));
/// ```
#[derive(Debug)]
pub struct PackedWriter {
    content_type: ContentType,
    room: usize,
    body: Vec<u8>,
    /// Bodies come back here once sent (and dropped), pages still mapped.
    pool: std::sync::Arc<buffers::BufferPool>,
    count: u32,
    /// The largest message appended since the last finish.
    largest: usize,
}

impl PackedWriter {
    /// A writer of messages of `content_type` into a body of at most `room` bytes.
    pub fn new(content_type: ContentType, room: usize) -> Self {
        PackedWriter {
            content_type,
            room,
            body: Vec::new(),
            pool: buffers::BufferPool::new(),
            count: 0,
            largest: 0,
        }
    }

    /// The content type of the messages.
    pub fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// Switches to messages of `content_type`: the run in progress, if any, is
    /// finished and returned (the buffers are kept).
    pub fn set_content_type(&mut self, content_type: ContentType) -> Option<PackedMessages> {
        let done = self.finish();
        self.content_type = content_type;
        done
    }

    /// Bytes appended since the last [`PackedWriter::finish`] (the messages and their
    /// 4-byte lengths).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether nothing was appended since the last [`PackedWriter::finish`].
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Messages appended since the last [`PackedWriter::finish`].
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Appends `message` as one entry; false (nothing appended) when the entry would
    /// pass the room.
    pub fn push(&mut self, message: &[u8]) -> bool {
        let entry = 4 + message.len();
        if self.body.len() + entry > self.room || message.len() > u32::MAX as usize {
            return false;
        }
        if self.body.capacity() == 0 {
            self.body = self.pool.take(self.room);
        }
        self.body
            .extend_from_slice(&(message.len() as u32).to_le_bytes());
        self.body.extend_from_slice(message);
        self.count += 1;
        self.largest = self.largest.max(message.len());
        true
    }

    /// The messages appended so far (`None` when there are none); the writer starts over
    /// with another buffer (one of its earlier ones, once that was sent and dropped).
    pub fn finish(&mut self) -> Option<PackedMessages> {
        if self.count == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        let body = if self.body.len() < self.room / 4 {
            // A short run (a producer that paused): copied out, so a queue of many
            // short runs holds their bytes, not a room-sized buffer each; the buffer
            // stays for the next run.
            let body = Bytes::copy_from_slice(&self.body);
            self.body.clear();
            body
        } else {
            buffers::freeze(std::mem::take(&mut self.body), &self.pool)
        };
        Some(PackedMessages {
            body,
            content_type: self.content_type,
            count,
            largest: std::mem::take(&mut self.largest),
        })
    }
}

/// Messages of one stream as packed entries, made by a [`PackedWriter`] and sent with
/// [`Connection::send_packed`].
#[derive(Debug, Clone)]
pub struct PackedMessages {
    body: Bytes,
    content_type: ContentType,
    count: u32,
    /// The largest message (the entries are valid by construction).
    largest: usize,
}

impl PackedMessages {
    /// The number of messages.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The size of the packed body: the messages and a 4-byte length each.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether there is no message (never true of a finished writer's output).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The messages' content type.
    pub fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// The messages, in order.
    pub fn messages(&self) -> impl Iterator<Item = Payload> + '_ {
        frame::packed_entries(&self.body)
            .map(|r| Payload::new(self.body.slice(r), self.content_type))
    }
}

/// A queued run of packed messages: `body[offset..]` is still to be framed.
#[derive(Debug)]
pub(super) struct OutPacked {
    pub(super) body: Bytes,
    pub(super) content_type: ContentType,
    pub(super) offset: usize,
}

impl OutPacked {
    /// The length of the longest run of whole entries from `offset` that fits `room`
    /// bytes (0 when not even the first does).
    pub(super) fn fitting(&self, room: usize) -> usize {
        let left = &self.body[self.offset..];
        if left.len() <= room {
            return left.len();
        }
        frame::packed_entries(left)
            .map(|r| r.end)
            .take_while(|end| *end <= room)
            .last()
            .unwrap_or(0)
    }
}

impl Connection {
    /// How a producer may pack messages of a stream for this connection: `None` until
    /// the connection is open, or when the peer does not accept packed frames.
    pub fn pack_limits(&self) -> Option<PackLimits> {
        let n = self.negotiated.as_ref()?;
        if self.state != State::Open || !n.has(features::PACKED) {
            return None;
        }
        let fields = 2 + 4;
        let room = (self.config.fragment_size as usize)
            .min((n.peer_limits.max_frame as usize).saturating_sub(fields));
        // Messages the compressor would consider travel on their own.
        let below_compression = self
            .compressor
            .selector()
            .config()
            .min_size
            .saturating_sub(1);
        let max_message = outbound::PACK_MAX
            .min(below_compression)
            // An entry always fits a frame's room.
            .min(room.saturating_sub(4))
            .min(n.peer_limits.max_message as usize)
            // A packed entry always fits a quarter of the peer's window, the most a
            // sender may wait for (see `emit_one`).
            .min((n.peer_limits.initial_window as usize / 4).saturating_sub(4));
        (room > 4 && max_message > 0).then_some(PackLimits { room, max_message })
    }

    /// Sends messages packed by a producer on a stream this side opened, after what the
    /// stream queued before. Refused (nothing queued) when the peer does not accept
    /// packed frames, a message is larger than [`PackLimits::max_message`] or its
    /// content type was not negotiated.
    pub fn send_packed(&mut self, call_id: u32, packed: PackedMessages) -> Result<(), SendError> {
        let Some(limits) = self.pack_limits() else {
            self.check_open()?;
            return Err(SendError::NotNegotiated("packed stream messages"));
        };
        let class = self.stream_call_mut(call_id)?.priority;
        if !self.check_open()?.codecs.contains(&packed.content_type) {
            return Err(SendError::NotNegotiated(match packed.content_type {
                ContentType::Json => "the JSON codec",
                ContentType::Postcard => "the postcard codec",
                ContentType::Raw => "raw payloads",
            }));
        }
        if packed.largest > limits.max_message {
            return Err(SendError::TooLarge {
                len: packed.largest,
                max: limits.max_message as u32,
            });
        }
        if packed.count == 0 {
            return Ok(());
        }
        let len = packed.body.len();
        let q = self.queue_mut(call_id, class);
        let first = q.items.is_empty();
        let class = q.class;
        q.bytes += len;
        q.items.push_back(OutItem::Packed(OutPacked {
            body: packed.body,
            content_type: packed.content_type,
            offset: 0,
        }));
        if first {
            self.ready.push(class, call_id);
        }
        self.queued_bytes += len;
        Ok(())
    }

    /// Frames as many whole entries of the packed run at the front of `call_id`'s queue
    /// as fit `room` bytes, as they are; false when not even one fits (blocked on
    /// credit).
    pub(super) fn emit_packed(&mut self, call_id: u32, room: usize) -> bool {
        let Some(queue) = self.queues.get_mut(&call_id) else {
            return false;
        };
        let Some(OutItem::Packed(p)) = queue.items.front_mut() else {
            return false;
        };
        let take = p.fitting(room);
        if take == 0 {
            return false;
        }
        let payload = p.body.slice(p.offset..p.offset + take);
        let content_type = p.content_type;
        p.offset += take;
        if p.offset == p.body.len() {
            queue.items.pop_front();
        }
        queue.bytes -= take;
        self.queued_bytes -= take;
        self.packed_frame(call_id, content_type, payload);
        true
    }

    /// Frames `body`, packed entries of `call_id`'s stream, as one `DATA` frame and
    /// takes its bytes from both windows (whoever packed them: the connection or a
    /// producer).
    pub(super) fn packed_frame(&mut self, call_id: u32, content_type: ContentType, body: Bytes) {
        let len = body.len() as u64;
        self.send_credit -= len;
        if let Some(c) = self.stream_credit.get_mut(&call_id) {
            *c -= len;
        }
        Frame::Data(DataFrame {
            call_id,
            first: Some((content_type, Algorithm::None)),
            more: false,
            message_len: None,
            packed: true,
            payload: body,
        })
        .encode(&mut self.out, self.crc);
    }
}
