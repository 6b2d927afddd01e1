//! Inbound frames: admission of the peer's calls, reassembly of messages from DATA
//! fragments, replies, ends, errors and goaway.

use super::*;

impl Connection {
    pub(super) fn local_limits(&self) -> crate::Limits {
        self.negotiated
            .as_ref()
            .map_or(self.config.settings.limits, |n| n.local_limits)
    }

    pub(super) fn check_known_peer_id(&self, id: u32, what: &str) -> Result<(), ProtoError> {
        if self.is_local_id(id) {
            return Err(Self::violation(format!(
                "{what} for call {id}, which this side opened"
            )));
        }
        if id > self.highest_peer_id {
            return Err(Self::violation(format!(
                "{what} for call {id}, which was never opened"
            )));
        }
        Ok(())
    }

    pub(super) fn check_known_local_id(&self, id: u32, what: &str) -> Result<(), ProtoError> {
        if !self.is_local_id(id) {
            return Err(Self::violation(format!(
                "{what} for call {id}, which the peer opened"
            )));
        }
        if id >= self.next_local_id {
            return Err(Self::violation(format!(
                "{what} for call {id}, which was never opened"
            )));
        }
        Ok(())
    }

    /// Checks a new peer call id; returns whether the call is accepted (false: refused
    /// with busy or unavailable, its data will be discarded).
    pub(super) fn admit_peer_call(&mut self, call_id: u32, what: &str) -> Result<bool, ProtoError> {
        if self.is_local_id(call_id) {
            return Err(Self::violation(format!(
                "{what} with call id {call_id} of this side's parity"
            )));
        }
        if call_id <= self.highest_peer_id {
            return Err(Self::violation(format!(
                "{what} reuses call id {call_id} (ids must increase; highest so far {})",
                self.highest_peer_id
            )));
        }
        self.highest_peer_id = call_id;
        if self.local_going_away.is_some_and(|last| call_id > last) {
            self.send_status(
                call_id,
                &Status::unavailable("the connection is going away; retry on a new one"),
            );
            return Ok(false);
        }
        let limit = self.local_limits().max_in_flight;
        if self.peer_open >= limit {
            let status = Status::busy(format!(
                "in-flight limit of {limit} calls on this connection reached"
            ))
            .with_retry_after(std::time::Duration::from_millis(10));
            self.send_status(call_id, &status);
            return Ok(false);
        }
        Ok(true)
    }

    pub(super) fn open_peer_admin(&mut self, call_id: u32, what: &str) -> Result<(), ProtoError> {
        if self.role != Role::Server {
            return Err(Self::violation(format!(
                "{what} sent to the connecting side"
            )));
        }
        if self.admit_peer_call(call_id, what)? {
            let mut c = CallState::new(false, Kind::Admin, 0);
            c.rx_done = true;
            c.rx_started = true;
            c.rx_delivered = true;
            self.calls.insert(call_id, c);
            self.peer_open += 1;
        }
        Ok(())
    }

    pub(super) fn on_call(&mut self, f: CallFrame) -> Result<(), ProtoError> {
        let (service, method) = self.resolve_method(&f.method)?;
        if f.stream && !self.streaming() {
            return Err(Self::violation(
                "streaming CALL, but streaming was not negotiated",
            ));
        }
        if !self.admit_peer_call(f.call_id, "CALL")? {
            // Refused: later fragments of this call are ignored.
            return Ok(());
        }
        self.peer_open += 1;
        let key = method_key(&service, &method);
        if let Some(t) = &self.config.compression_totals {
            t.name(key, service.as_str(), method.as_str());
        }
        let mut c = CallState::new(false, Kind::Call, key);
        c.priority = f.meta.priority.unwrap_or_default();
        c.rx_stream = f.stream;
        c.rx_window = if f.stream {
            self.local_limits().initial_window.into()
        } else {
            0
        };
        c.rx_started = true;
        if f.empty {
            // The request stream is open; no message came with it.
            c.rx_delivered = true;
            self.calls.insert(f.call_id, c);
            self.events.push_back((
                Event::Call(IncomingCall {
                    call_id: f.call_id,
                    service,
                    method,
                    payload: Payload::empty(),
                    meta: f.meta,
                    stream: true,
                    empty: true,
                }),
                0,
            ));
            return Ok(());
        }
        c.pending = Some(PendingCall {
            service,
            method,
            meta: f.meta,
            stream: f.stream,
        });
        self.calls.insert(f.call_id, c);
        self.start_message(
            f.call_id,
            f.content_type,
            f.compression,
            f.payload,
            f.message_len,
        )
    }

    pub(super) fn streaming(&self) -> bool {
        self.negotiated
            .as_ref()
            .is_some_and(|n| n.has(features::STREAMING))
    }

    pub(super) fn resolve_method(
        &mut self,
        m: &MethodRef,
    ) -> Result<(ServiceName, MethodName), ProtoError> {
        match &m.name {
            Some(names) => {
                if m.id != 0 {
                    if m.id > MAX_INTERNED {
                        return Err(Self::violation(format!(
                            "method id {} above the interning limit of {MAX_INTERNED}",
                            m.id
                        )));
                    }
                    match self.rx_names.entry(m.id) {
                        Entry::Occupied(_) => {
                            return Err(Self::violation(format!("method id {} bound twice", m.id)));
                        }
                        Entry::Vacant(v) => {
                            v.insert(names.clone());
                        }
                    }
                }
                Ok(names.clone())
            }
            None => self.rx_names.get(&m.id).cloned().ok_or_else(|| {
                Self::violation(format!("method id {} was never bound to a name", m.id))
            }),
        }
    }

    pub(super) fn on_reply(&mut self, f: ReplyFrame) -> Result<(), ProtoError> {
        let streaming = self.streaming();
        let Some(c) = self.calls.get_mut(&f.call_id) else {
            self.check_known_local_id(f.call_id, "REPLY")?;
            return Ok(());
        };
        if !c.local {
            return Err(Self::violation(format!(
                "REPLY on call {}, which the peer opened",
                f.call_id
            )));
        }
        if c.rx_started {
            return Err(Self::violation(format!(
                "second REPLY on call {}",
                f.call_id
            )));
        }
        if f.stream && (!streaming || c.kind == Kind::Admin) {
            return Err(Self::violation(
                "streaming REPLY, but streaming was not negotiated for this call",
            ));
        }
        c.rx_started = true;
        c.rx_stream = f.stream;
        if f.stream {
            c.rx_window = u64::from(
                self.negotiated
                    .as_ref()
                    .map_or(0, |n| n.local_limits.initial_window),
            );
        }
        if f.empty {
            c.rx_delivered = true;
            self.events.push_back((
                Event::Reply {
                    call_id: f.call_id,
                    payload: Payload::empty(),
                    stream: true,
                    empty: true,
                },
                0,
            ));
            return Ok(());
        }
        self.start_message(
            f.call_id,
            f.content_type,
            f.compression,
            f.payload,
            f.message_len,
        )
    }

    pub(super) fn on_data(&mut self, f: DataFrame) -> Result<(), ProtoError> {
        let max = self.local_limits().max_message as usize;
        let Some(c) = self.calls.get_mut(&f.call_id) else {
            if self.is_local_id(f.call_id) {
                self.check_known_local_id(f.call_id, "DATA")?;
            } else {
                self.check_known_peer_id(f.call_id, "DATA")?;
            }
            return Ok(());
        };
        if let Some((ct, alg)) = f.first {
            if !c.rx_started || !c.rx_stream || c.rx_done || c.rx_msg.is_some() {
                return Err(Self::violation(format!(
                    "DATA starting a message on call {}, which has no open stream from the peer",
                    f.call_id
                )));
            }
            if f.packed {
                return self.packed_messages(f.call_id, ct, &f.payload);
            }
            return self.start_message(f.call_id, ct, alg, f.payload, f.message_len);
        }
        let Some(msg) = c.rx_msg.as_mut() else {
            return Err(Self::violation(format!(
                "DATA continuing a message on call {}, but no message is in progress",
                f.call_id
            )));
        };
        msg.len += f.payload.len();
        let Received::Many { buf, expected } = &mut msg.data else {
            return Err(Self::violation(
                "DATA continuing a message that was not fragmented",
            ));
        };
        let expected = *expected;
        let wrong = if msg.len > expected {
            Some("its fragments exceed the declared message length")
        } else if !f.more && msg.len != expected {
            Some("its fragments end short of the declared message length")
        } else {
            None
        };
        if let Some(why) = wrong {
            let status = Status::malformed(format!(
                "message on call {}: {why} ({expected} bytes)",
                f.call_id
            ));
            self.refuse_message(f.call_id, status);
            return Ok(());
        }
        debug_assert!(msg.len <= max);
        buf.extend_from_slice(&f.payload);
        if f.more {
            Ok(())
        } else {
            self.complete_message(f.call_id);
            Ok(())
        }
    }

    pub(super) fn start_message(
        &mut self,
        call_id: u32,
        content_type: ContentType,
        compression: Algorithm,
        payload: Bytes,
        message_len: Option<u32>,
    ) -> Result<(), ProtoError> {
        let max = self.local_limits().max_message as usize;
        let allowed = self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.compressions.contains(&compression));
        let budget = self.config.reassembly_budget;
        let in_use = self.reassembling;
        let Some(c) = self.calls.get_mut(&call_id) else {
            return Ok(());
        };
        let len = payload.len();
        let total = message_len.map_or(len, |n| n as usize);
        #[cfg(feature = "zstd")]
        let dictionary_limit = crate::compress::dictionary::MAX_DICTIONARY_MESSAGE;
        #[cfg(not(feature = "zstd"))]
        let dictionary_limit = usize::MAX;
        let refusal = if !allowed {
            Some(Status::malformed(format!(
                "message compressed with {}, which was not negotiated",
                compression.name()
            )))
        } else if compression == Algorithm::ZstdDict && total > dictionary_limit {
            // Decoded where it arrives: its input is bounded as its output is.
            Some(Status::too_large(format!(
                "a dictionary-compressed message of {total} bytes exceeds the limit of {dictionary_limit}"
            )))
        } else if total > max {
            Some(Status::too_large(format!(
                "message of {total} bytes exceeds the limit of {max}"
            )))
        } else if message_len.is_some() && in_use + total > budget {
            Some(
                Status::busy(format!(
                    "{in_use} bytes of partly received messages are held (budget {budget}); retry shortly"
                ))
                .with_retry_after(std::time::Duration::from_millis(20)),
            )
        } else {
            None
        };
        if let Some(status) = refusal {
            self.refuse_message(call_id, status);
            return Ok(());
        }
        let (data, reserved) = match message_len {
            None => (Received::One(payload), 0),
            Some(n) => {
                // Allocated once at the declared size (bounded by max_message and the
                // budget); each fragment is copied in as it arrives.
                let mut buf = self.buffers.take(n as usize);
                buf.extend_from_slice(&payload);
                (
                    Received::Many {
                        buf,
                        expected: n as usize,
                    },
                    n as usize,
                )
            }
        };
        c.rx_msg = Some(Assembly {
            content_type,
            compression,
            data,
            len,
            reserved,
        });
        self.reassembling += reserved;
        if message_len.is_none() {
            self.complete_message(call_id);
        }
        Ok(())
    }

    /// A message on a call cannot be accepted: the call ends (an error to the peer for
    /// its call, a cancel and a local failure for ours); later frames are ignored.
    pub(super) fn refuse_message(&mut self, call_id: u32, status: Status) {
        let Some(c) = self.take_call(&call_id) else {
            return;
        };
        self.drop_call_output(call_id);
        if c.local {
            self.local_open = self.local_open.saturating_sub(1);
            Frame::Cancel { call_id }.encode(&mut self.out, self.crc);
            self.events
                .push_back((Event::Failed { call_id, status }, 0));
        } else {
            self.peer_open = self.peer_open.saturating_sub(1);
            if c.pending.is_none() {
                // The application saw the call already: tell it to stop.
                self.events.push_back((Event::Cancelled { call_id }, 0));
            }
            self.send_status(call_id, &status);
        }
    }

    pub(super) fn complete_message(&mut self, call_id: u32) {
        let max = self.local_limits().max_message as usize;
        let Some(c) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(msg) = c.rx_msg.take() else { return };
        self.reassembling -= msg.reserved;
        let wire_len = msg.len as u64;
        let joined = match msg.data {
            Received::One(b) => b,
            Received::Many { buf, .. } => super::buffers::freeze(buf, &self.buffers),
        };
        // The first message of a call or reply may be handed out still compressed —
        // not a stream's: its later messages would overtake it.
        // Dictionary messages are small and decoded here, with the connection's
        // dictionaries; they decode to at most `MAX_DICTIONARY_MESSAGE` bytes.
        let dictionary = msg.compression == Algorithm::ZstdDict;
        #[cfg(feature = "zstd")]
        let max = if dictionary {
            max.min(crate::compress::dictionary::MAX_DICTIONARY_MESSAGE)
        } else {
            max
        };
        let defer = msg.compression != Algorithm::None
            && !dictionary
            && !c.rx_delivered
            && !c.rx_stream
            && (c.pending.is_some() || c.local)
            && self
                .config
                .defer_decompression_above
                .is_some_and(|n| joined.len() > n);
        let bytes = if msg.compression == Algorithm::None || defer {
            joined
        } else {
            match self.decompressor.decompress(msg.compression, &joined, max) {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    let status = match e {
                        crate::compress::CompressError::TooLarge { .. } => {
                            Status::too_large(e.to_string())
                        }
                        _ => Status::malformed(e.to_string()),
                    };
                    self.refuse_message(call_id, status);
                    return;
                }
            }
        };
        let Some(c) = self.calls.get_mut(&call_id) else {
            return;
        };
        let payload = Payload::new(bytes, msg.content_type);
        let first = !c.rx_delivered;
        c.rx_delivered = true;
        if !c.rx_stream {
            c.rx_done = true;
        }
        let event = if let Some(p) = c.pending.take() {
            Event::Call(IncomingCall {
                call_id,
                service: p.service,
                method: p.method,
                payload,
                meta: p.meta,
                stream: p.stream,
                empty: false,
            })
        } else if first && c.local {
            Event::Reply {
                call_id,
                payload,
                stream: c.rx_stream,
                empty: false,
            }
        } else {
            Event::StreamMessage { call_id, payload }
        };
        let event = if defer {
            Event::Deferred(Deferred {
                event: Box::new(event),
                algorithm: msg.compression,
                limit: max,
            })
        } else {
            event
        };
        if c.rx_stream {
            c.rx_held.push_back((1, wire_len));
            c.rx_held_bytes += wire_len;
        }
        self.held_bytes += wire_len;
        self.events.push_back((event, wire_len));
        self.finish_if_done(call_id);
    }

    /// Whole messages of a stream that came in one packed `DATA` frame: delivered as one
    /// event, each held (for the stream's credit) until consumed.
    pub(super) fn packed_messages(
        &mut self,
        call_id: u32,
        content_type: ContentType,
        payload: &Bytes,
    ) -> Result<(), ProtoError> {
        if !self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.has(features::PACKED))
        {
            return Err(Self::violation(
                "packed DATA, but packed stream messages were not negotiated",
            ));
        }
        let max = self.local_limits().max_message as usize;
        // The decoder checked the entries fill the frame, and counted them.
        let frame::PackedSummary { count, longest } = match self.last_packed.take() {
            Some(s) => s,
            None => frame::packed_summary(payload)
                .ok_or_else(|| Self::violation("packed entries do not fill the frame"))?,
        };
        if longest > max {
            self.refuse_message(
                call_id,
                Status::too_large(format!("a packed message exceeds the limit of {max}")),
            );
            return Ok(());
        }
        let Some(c) = self.calls.get_mut(&call_id) else {
            return Ok(());
        };
        let wire = payload.len() as u64;
        c.rx_held.push_back((count as u64, wire));
        c.rx_held_bytes += wire;
        self.held_bytes += wire;
        self.events.push_back((
            Event::StreamMessages {
                call_id,
                content_type,
                packed: payload.clone(),
                count,
            },
            wire,
        ));
        Ok(())
    }

    pub(super) fn on_end(&mut self, call_id: u32) -> Result<(), ProtoError> {
        let Some(c) = self.calls.get_mut(&call_id) else {
            if self.is_local_id(call_id) {
                return self.check_known_local_id(call_id, "END");
            }
            return self.check_known_peer_id(call_id, "END");
        };
        if !c.rx_started || !c.rx_stream || c.rx_done || c.rx_msg.is_some() {
            return Err(Self::violation(format!(
                "END on call {call_id}, which has no open stream from the peer (or a message in progress)"
            )));
        }
        c.rx_done = true;
        self.events.push_back((Event::StreamEnd { call_id }, 0));
        self.finish_if_done(call_id);
        Ok(())
    }

    pub(super) fn on_error(&mut self, e: ErrorFrame) -> Result<(), ProtoError> {
        if e.call_id == 0 {
            return Err(ProtoError::Remote(e.status()));
        }
        if !self.is_local_id(e.call_id) {
            return Err(Self::violation(format!(
                "ERROR on call {}, which the peer opened (a caller cancels, it does not fail)",
                e.call_id
            )));
        }
        match self.take_call(&e.call_id) {
            Some(_) => {
                self.drop_call_output(e.call_id);
                self.local_open = self.local_open.saturating_sub(1);
                self.events.push_back((
                    Event::Failed {
                        call_id: e.call_id,
                        status: e.status(),
                    },
                    0,
                ));
                Ok(())
            }
            None => self.check_known_local_id(e.call_id, "ERROR"),
        }
    }

    pub(super) fn on_goaway(&mut self, g: GoAway) {
        self.peer_going_away = Some(g.last_call_id);
        let mut doomed: Vec<u32> = self
            .calls
            .iter()
            .filter(|(id, c)| c.local && **id > g.last_call_id)
            .map(|(id, _)| *id)
            .collect();
        doomed.sort_unstable();
        for id in doomed {
            if self.take_call(&id).is_some() {
                self.drop_call_output(id);
                self.local_open = self.local_open.saturating_sub(1);
                let status = Status::unavailable(
                    "the peer is going away and did not process this call; retry elsewhere",
                )
                .not_executed();
                self.events.push_back((
                    Event::Failed {
                        call_id: id,
                        status,
                    },
                    0,
                ));
            }
        }
        let status = Status::new(Code::from_u16(g.code), g.message);
        self.events.push_back((
            Event::GoAway {
                last_call_id: g.last_call_id,
                status,
            },
            0,
        ));
    }

    /// A call is over when the callee's answer is complete: for a call this side
    /// opened, when the reply (or its stream) has fully arrived; for the peer's, when
    /// this side's answer is fully queued. Whatever the caller still streams after that
    /// is ignored.
    pub(super) fn finish_if_done(&mut self, call_id: u32) {
        let Some(c) = self.calls.get(&call_id) else {
            return;
        };
        let done = if c.local { c.rx_done } else { c.tx_done };
        if !done {
            return;
        }
        let local = c.local;
        self.take_call(&call_id);
        if local {
            self.local_open = self.local_open.saturating_sub(1);
            // The answer is complete: whatever of the request is still queued is moot.
            self.drop_call_output(call_id);
        } else {
            self.peer_open = self.peer_open.saturating_sub(1);
        }
    }

    pub(super) fn drop_call_output(&mut self, call_id: u32) {
        self.stream_credit.remove(&call_id);
        if let Some(q) = self.queues.remove(&call_id) {
            for item in &q.items {
                self.queued_bytes -= item.unframed();
            }
            self.recycle_queue(q);
        }
    }

    pub(super) fn send_status(&mut self, call_id: u32, status: &Status) {
        Frame::Error(ErrorFrame::from_status(call_id, status)).encode(&mut self.out, self.crc);
    }

    // ------------------------------------------------------------------ events
}
