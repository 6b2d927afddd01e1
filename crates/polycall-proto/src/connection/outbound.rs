//! Outbound scheduling: opening calls, replies and streams, control frames, and the
//! fair, credit-bounded choice of what goes on the wire next.

use super::*;

impl Connection {
    pub(super) fn check_open(&self) -> Result<&Negotiated, SendError> {
        match (self.state, &self.negotiated) {
            (State::Open, Some(n)) => Ok(n),
            (State::Closed, _) => Err(SendError::Closed),
            _ => Err(SendError::NotConnected),
        }
    }

    pub(super) fn check_payload(&self, payload: &Payload) -> Result<(), SendError> {
        let n = self.check_open()?;
        if payload.len() > n.peer_limits.max_message as usize {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: n.peer_limits.max_message,
            });
        }
        if !n.codecs.contains(&payload.content_type) {
            return Err(SendError::NotNegotiated(match payload.content_type {
                ContentType::Json => "the JSON codec",
                ContentType::Postcard => "the postcard codec",
                ContentType::Raw => "raw payloads",
            }));
        }
        Ok(())
    }

    pub(super) fn enqueue(&mut self, call_id: u32, item: OutItem) {
        let len = item.unframed();
        self.queued_bytes += len;
        let class = self
            .calls
            .get(&call_id)
            .map_or(Priority::Normal, |c| c.priority);
        let q = self.queue_mut(call_id, class);
        let first = q.items.is_empty();
        let class = q.class;
        q.bytes += len;
        q.items.push_back(item);
        if first {
            self.ready.push(class, call_id);
        }
    }

    /// Opens a call of `service.method` with its first request message; with `stream`,
    /// further messages follow through [`Connection::send_message`] and
    /// [`Connection::send_end`]. Returns the call id; the reply arrives as
    /// [`Event::Reply`] or [`Event::Failed`].
    pub fn open_call(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        payload: Payload,
        meta: WireMeta,
        stream: bool,
    ) -> Result<u32, SendError> {
        self.open_with(service, method, Some(payload), meta, stream)
    }

    /// Opens a streaming call whose request stream has no message yet (`CALL` with
    /// `STREAM` and `EMPTY`): request messages follow through
    /// [`Connection::send_message`], ended by [`Connection::send_end`]. Returns the call
    /// id; the reply arrives as [`Event::Reply`] or [`Event::Failed`].
    pub fn open_stream(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        meta: WireMeta,
    ) -> Result<u32, SendError> {
        self.open_with(service, method, None, meta, true)
    }

    fn open_with(
        &mut self,
        service: &ServiceName,
        method: &MethodName,
        payload: Option<Payload>,
        meta: WireMeta,
        stream: bool,
    ) -> Result<u32, SendError> {
        let n = self.check_open()?;
        if self.peer_going_away.is_some() || self.local_going_away.is_some() {
            return Err(SendError::Closed);
        }
        let limit = n.peer_limits.max_in_flight;
        if self.local_open >= limit {
            return Err(SendError::TooManyInFlight { limit });
        }
        if stream && !n.has(features::STREAMING) {
            return Err(SendError::NotNegotiated("streaming"));
        }
        let fields =
            2 + 1 + service.as_str().len() + 1 + method.as_str().len() + 4 + meta.encoded_len() + 4;
        let n_max_frame = n.peer_limits.max_frame;
        if fields > n_max_frame as usize {
            return Err(SendError::TooLarge {
                len: fields,
                max: n_max_frame,
            });
        }
        if let Some(p) = &payload {
            self.check_payload(p)?;
        }
        let peer_window = u64::from(n.peer_limits.initial_window);
        let call_id = self.next_local_id;
        if call_id > u32::MAX - 2 {
            return Err(SendError::Closed);
        }
        self.next_local_id += 2;
        let key = method_key(service, method);
        if let Some(t) = &self.config.compression_totals {
            t.name(key, service.as_str(), method.as_str());
        }
        let empty = payload.is_none();
        let payload = payload.unwrap_or_else(Payload::empty);
        let (compression, data) = if empty {
            (Algorithm::None, Bytes::new())
        } else {
            self.compress(key, &payload)
        };
        if stream {
            self.stream_credit.insert(call_id, peer_window);
        }
        let mut c = CallState::new(true, Kind::Call, key);
        c.priority = meta.priority.unwrap_or_default();
        c.tx_stream = stream;
        c.tx_done = !stream;
        self.calls.insert(call_id, c);
        self.local_open += 1;
        // The CALL frame leaves now, so call ids increase on the wire in the order calls
        // open, whatever their priority. A small message travels whole in it; a large
        // one (or one the credit does not cover) follows as DATA fragments, which the
        // writer schedules by priority class.
        let frame_room = (n_max_frame as usize).saturating_sub(fields);
        let inline_max = INLINE_CALL_MAX
            .min(self.config.fragment_size as usize)
            .min(frame_room);
        let credit =
            usize::try_from(
                self.send_credit
                    .min(if stream { peer_window } else { u64::MAX }),
            )
            .unwrap_or(usize::MAX);
        let inline = data.len() <= inline_max && data.len() <= credit;
        let first = if inline { data.clone() } else { Bytes::new() };
        self.send_credit -= first.len() as u64;
        if let Some(c) = self.stream_credit.get_mut(&call_id) {
            *c -= first.len() as u64;
        }
        let method_ref = intern(&mut self.tx_names, service, method);
        Frame::Call(CallFrame {
            call_id,
            method: method_ref,
            content_type: payload.content_type,
            compression,
            meta,
            more: !inline,
            message_len: (!inline).then_some(data.len() as u32),
            stream,
            empty,
            payload: first,
        })
        .encode(&mut self.out, self.crc);
        if !inline {
            self.enqueue(
                call_id,
                OutItem::Msg(OutMsg {
                    kind: OutKind::Message,
                    content_type: payload.content_type,
                    compression,
                    data,
                    offset: 0,
                    started: true,
                }),
            );
        }
        Ok(call_id)
    }

    pub(super) fn peer_call_mut(&mut self, call_id: u32) -> Result<&mut CallState, SendError> {
        match self.calls.get_mut(&call_id) {
            Some(c) if !c.local => Ok(c),
            Some(_) => Err(SendError::InvalidState {
                call_id,
                reason: "this side opened the call; only the peer replies to it",
            }),
            None => Err(SendError::UnknownCall(call_id)),
        }
    }

    /// Answers a call the peer opened (or a register/unregister request) with its first
    /// reply message; with `stream`, further messages follow through
    /// [`Connection::send_message`] and [`Connection::send_end`].
    pub fn send_reply(
        &mut self,
        call_id: u32,
        payload: Payload,
        stream: bool,
    ) -> Result<(), SendError> {
        let streaming = self.check_open()?.has(features::STREAMING);
        self.check_payload(&payload)?;
        let c = self.peer_call_mut(call_id)?;
        if c.tx_replied {
            return Err(SendError::InvalidState {
                call_id,
                reason: "the call was answered already",
            });
        }
        if stream && (!streaming || c.kind == Kind::Admin) {
            return Err(SendError::NotNegotiated("streaming"));
        }
        c.tx_replied = true;
        c.tx_stream = stream;
        c.tx_done = !stream;
        let key = c.method_key;
        if stream {
            let window = self.check_open()?.peer_limits.initial_window;
            self.stream_credit.insert(call_id, window.into());
        }
        let (compression, data) = self.compress(key, &payload);
        self.enqueue(
            call_id,
            OutItem::Msg(OutMsg {
                kind: OutKind::Reply { stream },
                content_type: payload.content_type,
                compression,
                data,
                offset: 0,
                started: false,
            }),
        );
        self.finish_if_done(call_id);
        Ok(())
    }

    /// Answers a call the peer opened with a reply stream that has no message yet
    /// (`REPLY` with `STREAM` and `EMPTY`): reply messages follow through
    /// [`Connection::send_message`], ended by [`Connection::send_end`] (or
    /// [`Connection::send_error`]).
    pub fn open_reply_stream(&mut self, call_id: u32) -> Result<(), SendError> {
        let n = self.check_open()?;
        let streaming = n.has(features::STREAMING);
        let window = n.peer_limits.initial_window;
        let c = self.peer_call_mut(call_id)?;
        if c.tx_replied {
            return Err(SendError::InvalidState {
                call_id,
                reason: "the call was answered already",
            });
        }
        if !streaming || c.kind == Kind::Admin {
            return Err(SendError::NotNegotiated("streaming"));
        }
        c.tx_replied = true;
        c.tx_stream = true;
        self.stream_credit.insert(call_id, window.into());
        Frame::Reply(ReplyFrame {
            call_id,
            content_type: ContentType::Raw,
            compression: Algorithm::None,
            more: false,
            message_len: None,
            stream: true,
            empty: true,
            payload: Bytes::new(),
        })
        .encode(&mut self.out, self.crc);
        Ok(())
    }

    pub(super) fn stream_call_mut(&mut self, call_id: u32) -> Result<&mut CallState, SendError> {
        let c = self
            .calls
            .get_mut(&call_id)
            .ok_or(SendError::UnknownCall(call_id))?;
        if !c.tx_stream || c.tx_done || (!c.local && !c.tx_replied) {
            return Err(SendError::InvalidState {
                call_id,
                reason: "no open stream from this side on the call",
            });
        }
        Ok(c)
    }

    /// Sends a further message on a stream this side opened (a streaming call or a
    /// streaming reply).
    pub fn send_message(&mut self, call_id: u32, payload: Payload) -> Result<(), SendError> {
        self.check_payload(&payload)?;
        self.send_messages(call_id, [payload])
    }

    /// Sends further messages on a stream this side opened, in order: as
    /// [`Connection::send_message`] for each, with the call looked up once. Stops at the
    /// first message that cannot be sent (those before it are queued).
    pub fn send_messages(
        &mut self,
        call_id: u32,
        payloads: impl IntoIterator<Item = Payload>,
    ) -> Result<(), SendError> {
        let (key, class) = {
            let c = self.stream_call_mut(call_id)?;
            (c.method_key, c.priority)
        };
        let (max_message, codecs) = {
            let n = self.check_open()?;
            (n.peer_limits.max_message as usize, n.codecs.clone())
        };
        // Below the selector's minimum nothing is compressed: the bytes move into the
        // queue as they are (no reference-count traffic on a shared buffer).
        let min_compress = self.compressor.selector().config().min_size;
        let mut result = Ok(());
        let mut bytes = 0;
        let was_empty = self.queues.get(&call_id).is_none_or(|q| q.items.is_empty());
        let message = |content_type, compression, data| {
            OutItem::Msg(OutMsg {
                kind: OutKind::Message,
                content_type,
                compression,
                data,
                offset: 0,
                started: false,
            })
        };
        let mut payloads = payloads.into_iter();
        let mut slow: Option<Payload> = None;
        loop {
            // A message to check or compress first (the queue is not held meanwhile).
            if let Some(payload) = slow.take() {
                if payload.len() > max_message || !codecs.contains(&payload.content_type) {
                    result = self.check_payload(&payload);
                    break;
                }
                let (compression, data) = self.compress(key, &payload);
                bytes += data.len();
                let item = message(payload.content_type, compression, data);
                self.queue_mut(call_id, class).items.push_back(item);
            }
            // Then the small ones, straight into the queue.
            let q = self.queue_mut(call_id, class);
            for payload in payloads.by_ref() {
                let small = payload.len() < min_compress
                    && payload.len() <= max_message
                    && codecs.contains(&payload.content_type);
                if !small {
                    slow = Some(payload);
                    break;
                }
                bytes += payload.len();
                q.items.push_back(message(
                    payload.content_type,
                    Algorithm::None,
                    payload.bytes,
                ));
            }
            if slow.is_none() {
                break;
            }
        }
        if let Some(q) = self.queues.get_mut(&call_id) {
            q.bytes += bytes;
            if was_empty && !q.items.is_empty() {
                self.ready.push(q.class, call_id);
            }
        }
        self.queued_bytes += bytes;
        result
    }

    /// `call_id`'s send queue, made (with a recycled `VecDeque`) if it has none.
    pub(super) fn queue_mut(&mut self, call_id: u32, class: Priority) -> &mut CallQueue {
        let spare = &mut self.spare_queues;
        self.queues.entry(call_id).or_insert_with(|| CallQueue {
            class,
            items: spare.pop().unwrap_or_default(),
            bytes: 0,
        })
    }

    /// Keeps an emptied send queue's `VecDeque` for the next call (a few, small ones).
    pub(super) fn recycle_queue(&mut self, mut q: CallQueue) {
        if self.spare_queues.len() < SPARE_QUEUES && q.items.capacity() <= 64 {
            q.items.clear();
            self.spare_queues.push(q.items);
        }
    }

    /// Ends this side's stream of messages on the call.
    pub fn send_end(&mut self, call_id: u32) -> Result<(), SendError> {
        self.check_open()?;
        self.stream_call_mut(call_id)?.tx_done = true;
        self.enqueue(call_id, OutItem::End);
        self.finish_if_done(call_id);
        Ok(())
    }

    /// Fails a call the peer opened whose reply streams, after the reply messages
    /// already queued (which [`Connection::send_error`] would drop): the stream's
    /// messages so far, then its failure.
    pub fn fail_stream(&mut self, call_id: u32, status: &Status) -> Result<(), SendError> {
        self.check_open()?;
        self.peer_call_mut(call_id)?;
        self.enqueue(
            call_id,
            OutItem::Fail(Box::new(ErrorFrame::from_status(call_id, status))),
        );
        self.take_call(&call_id);
        self.peer_open = self.peer_open.saturating_sub(1);
        Ok(())
    }

    /// Fails a call the peer opened (or refuses a register/unregister request).
    /// Whatever of its reply was still queued is dropped.
    pub fn send_error(&mut self, call_id: u32, status: &Status) -> Result<(), SendError> {
        self.check_open()?;
        self.peer_call_mut(call_id)?;
        self.take_call(&call_id);
        self.drop_call_output(call_id);
        self.peer_open = self.peer_open.saturating_sub(1);
        self.send_status(call_id, status);
        Ok(())
    }

    /// Gives up on a call this side opened: tells the peer, drops queued request data.
    /// Frames the peer sent before it saw the cancel are ignored.
    pub fn cancel(&mut self, call_id: u32) -> Result<(), SendError> {
        self.check_open()?;
        match self.calls.get(&call_id) {
            Some(c) if c.local => {}
            Some(_) => {
                return Err(SendError::InvalidState {
                    call_id,
                    reason: "the peer opened this call; fail it with send_error",
                });
            }
            None => return Err(SendError::UnknownCall(call_id)),
        }
        self.take_call(&call_id);
        self.drop_call_output(call_id);
        self.local_open = self.local_open.saturating_sub(1);
        Frame::Cancel { call_id }.encode(&mut self.out, self.crc);
        Ok(())
    }

    /// Sends a `PING`; the answer arrives as [`Event::Pong`].
    pub fn ping(&mut self, opaque: u64) -> Result<(), SendError> {
        self.check_open()?;
        Frame::Ping { opaque }.encode(&mut self.out, self.crc);
        Ok(())
    }

    /// Announces that this side opens no new call and serves the peer's calls up to the
    /// highest id seen so far; later calls are refused with `unavailable`.
    pub fn go_away(&mut self, status: &Status) -> Result<(), SendError> {
        self.check_open()?;
        let last = self.highest_peer_id;
        self.local_going_away = Some(last);
        Frame::GoAway(GoAway {
            last_call_id: last,
            code: status.code as u16,
            message: frame_text(&status.message),
        })
        .encode(&mut self.out, self.crc);
        Ok(())
    }

    /// Closes the connection: an `ERROR` frame (call id 0) with `status` is queued and
    /// every open call is failed.
    pub fn close(&mut self, status: Status) {
        if self.state == State::Closed {
            return;
        }
        Frame::Error(ErrorFrame::from_status(0, &status)).encode(&mut self.out, self.crc);
        self.close_calls(status.clone());
        self.state = State::Closed;
        self.events.push_back((Event::Closed { status }, 0));
    }

    /// Announces methods this side serves (connecting side only). The answer arrives
    /// as [`Event::Reply`] (accepted) or [`Event::Failed`] on the returned call id.
    pub fn register(&mut self, methods: Vec<MethodEntry>) -> Result<u32, SendError> {
        let call_id = self.open_admin()?;
        self.admin_frame(Frame::Register { call_id, methods })
    }

    /// Withdraws methods (connecting side only); answered like [`Connection::register`].
    pub fn unregister(
        &mut self,
        methods: Vec<(ServiceName, MethodName)>,
    ) -> Result<u32, SendError> {
        let call_id = self.open_admin()?;
        self.admin_frame(Frame::Unregister { call_id, methods })
    }

    pub(super) fn open_admin(&mut self) -> Result<u32, SendError> {
        self.check_open()?;
        if self.role != Role::Client {
            return Err(SendError::InvalidState {
                call_id: 0,
                reason: "only the connecting side registers methods",
            });
        }
        if self.peer_going_away.is_some() || self.local_going_away.is_some() {
            return Err(SendError::Closed);
        }
        Ok(self.next_local_id)
    }

    pub(super) fn admin_frame(&mut self, frame: Frame) -> Result<u32, SendError> {
        let call_id = frame.call_id();
        let mut buf = FrameBuf::new();
        frame.encode(&mut buf, self.crc);
        let max = self.check_open()?.peer_limits.max_frame as usize;
        let body = buf.len() - frame::HEADER_LEN - if self.crc { frame::CRC_LEN } else { 0 };
        if body > max {
            return Err(SendError::TooLarge {
                len: body,
                max: max as u32,
            });
        }
        self.next_local_id += 2;
        let mut c = CallState::new(true, Kind::Admin, 0);
        c.tx_done = true;
        self.calls.insert(call_id, c);
        self.local_open += 1;
        self.out.append(&mut buf);
        Ok(call_id)
    }

    // ------------------------------------------------------------------ output

    /// Payload bytes queued and not yet framed (waiting for their turn or for credit).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether [`Connection::poll_transmit`] has something to return now.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || (!self.ready.is_empty() && self.state == State::Open)
    }

    /// Appends the bytes to send to `out` (in order), framing queued messages until
    /// about `max_bytes` are buffered. Messages are cut into fragments of at most
    /// [`Config::fragment_size`] bytes, and the fragments of concurrent calls take turns,
    /// so one huge message never holds back small ones. Returns the number of bytes
    /// appended.
    pub fn poll_transmit(&mut self, max_bytes: usize, out: &mut Vec<Bytes>) -> usize {
        self.maybe_return_credit();
        if self.state == State::Open {
            let mut stalled = 0;
            while self.out.len() < max_bytes && stalled < self.ready.len() {
                let Some((class, call_id)) = self.ready.pop() else {
                    break;
                };
                if self.emit_one(call_id) {
                    stalled = 0;
                } else {
                    stalled += 1;
                }
                if self
                    .queues
                    .get(&call_id)
                    .is_some_and(|q| !q.items.is_empty())
                {
                    self.ready.push(class, call_id);
                } else {
                    if let Some(q) = self.queues.remove(&call_id) {
                        self.recycle_queue(q);
                    }
                    if !self.calls.contains_key(&call_id) {
                        self.stream_credit.remove(&call_id);
                    }
                }
            }
        }
        let n = self.out.len();
        self.out.drain_chunks(out);
        n
    }

    /// Frames the next fragment of `call_id`'s queue (or, packing, several small
    /// messages); false when blocked on credit.
    pub(super) fn emit_one(&mut self, call_id: u32) -> bool {
        let crc = self.crc;
        let (peer_max_frame, fragment, peer_window) = match &self.negotiated {
            Some(n) => (
                n.peer_limits.max_frame as usize,
                self.config.fragment_size as usize,
                n.peer_limits.initial_window as usize,
            ),
            None => return false,
        };
        let stream_credit = self.stream_credit.get(&call_id).copied();
        let Some(queue) = self.queues.get_mut(&call_id) else {
            return false;
        };
        let q = &mut queue.items;
        // Room for the fixed fields of a first frame: content type, compression and
        // the declared message length.
        let fields = 2 + 4;
        let cap = fragment.min(peer_max_frame.saturating_sub(fields)).max(1);
        let credit = self.send_credit.min(stream_credit.unwrap_or(u64::MAX));
        let credit = usize::try_from(credit).unwrap_or(usize::MAX);
        let packing = self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.has(features::PACKED));
        let room = cap.min(credit);
        // Packed only when at least two messages fit the frame and the credit (else the
        // first goes alone, as the sliver rule below allows).
        let pack = match (q.front(), q.get(1)) {
            (Some(OutItem::Msg(a)), Some(OutItem::Msg(b))) if packing => (packable(a)
                && packable(b)
                && a.content_type == b.content_type
                && 8 + a.data.len() + b.data.len() <= room)
                .then_some(a.content_type),
            _ => None,
        };
        if let Some(content_type) = pack {
            // Several small messages of the stream, whole, in one frame.
            let mut packed = BytesMut::new();
            let mut taken = 0;
            while let Some(OutItem::Msg(n)) = q.front() {
                if !packable(n)
                    || n.content_type != content_type
                    || packed.len() + 4 + n.data.len() > room
                {
                    break;
                }
                packed.extend_from_slice(&(n.data.len() as u32).to_le_bytes());
                packed.extend_from_slice(&n.data);
                taken += n.data.len();
                q.pop_front();
            }
            queue.bytes -= taken;
            self.queued_bytes -= taken;
            self.packed_frame(call_id, content_type, packed.freeze());
            return true;
        }
        let Some(item) = q.front_mut() else {
            return false;
        };
        let m = match item {
            OutItem::Packed(_) => return self.emit_packed(call_id, room),
            OutItem::End => {
                q.pop_front();
                Frame::End { call_id }.encode(&mut self.out, crc);
                return true;
            }
            OutItem::Fail(_) => {
                if let Some(OutItem::Fail(e)) = q.pop_front() {
                    Frame::Error(*e).encode(&mut self.out, crc);
                }
                return true;
            }
            OutItem::Msg(m) => m,
        };
        let left = m.data.len() - m.offset;

        let chunk = left.min(cap).min(credit);
        // Wait for credit rather than send slivers — but never for more than a quarter
        // of the peer's window: the peer returns credit once a quarter of it is used,
        // so waiting for more could wait forever.
        if chunk < left.min(cap).min(1024).min(peer_window / 4) {
            return false;
        }
        let payload = m.data.slice(m.offset..m.offset + chunk);
        m.offset += chunk;
        let more = m.offset < m.data.len();
        let frame = if m.started {
            Frame::Data(DataFrame {
                packed: false,
                call_id,
                first: None,
                more,
                message_len: None,
                payload,
            })
        } else {
            m.started = true;
            let message_len = more.then_some(m.data.len() as u32);
            match &m.kind {
                OutKind::Reply { stream } => Frame::Reply(ReplyFrame {
                    call_id,
                    content_type: m.content_type,
                    compression: m.compression,
                    more,
                    message_len,
                    stream: *stream,
                    empty: false,
                    payload,
                }),
                OutKind::Message => Frame::Data(DataFrame {
                    packed: false,
                    call_id,
                    first: Some((m.content_type, m.compression)),
                    more,
                    message_len,
                    payload,
                }),
            }
        };
        if !more {
            q.pop_front();
        }
        self.send_credit -= chunk as u64;
        if let Some(c) = self.stream_credit.get_mut(&call_id) {
            *c -= chunk as u64;
        }
        queue.bytes -= chunk;
        self.queued_bytes -= chunk;
        frame.encode(&mut self.out, crc);
        true
    }
}

/// Emptied send queues a connection keeps for reuse.
const SPARE_QUEUES: usize = 64;

/// Largest stream message packed with others into one frame.
pub(super) const PACK_MAX: usize = 1024;

/// Whether `m` may travel packed: a further stream message (not a reply's first),
/// untouched, uncompressed and small.
fn packable(m: &OutMsg) -> bool {
    matches!(m.kind, OutKind::Message)
        && !m.started
        && m.offset == 0
        && m.compression == Algorithm::None
        && m.data.len() <= PACK_MAX
}
