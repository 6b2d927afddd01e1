//! Flow control: returning receive credit to the peer as the application consumes
//! what it was given.

use super::*;

impl Connection {
    pub(super) fn maybe_return_credit(&mut self) {
        if self.state != State::Open {
            return;
        }
        let window = u64::from(self.local_limits().initial_window);
        if self.credit_to_return == 0
            || self.credit_to_return < window / 4
            || self.held_bytes >= window / 2
        {
            return;
        }
        while self.credit_to_return > 0 {
            let inc = self.credit_to_return.min(u64::from(u32::MAX)) as u32;
            Frame::Credit { increment: inc }.encode(&mut self.out, self.crc);
            self.credit_to_return -= u64::from(inc);
            self.recv_credit += u64::from(inc);
        }
    }

    /// Counts `flow` payload bytes the peer sent on `call_id` against the call's
    /// stream window, when the peer's direction of the call streams (§6.1).
    pub(super) fn charge_stream(&mut self, call_id: u32, flow: u64) -> Result<(), ProtoError> {
        let Some(c) = self.calls.get_mut(&call_id) else {
            return Ok(());
        };
        if !c.rx_stream {
            return Ok(());
        }
        if flow > c.rx_window {
            return Err(ProtoError::FlowControl {
                used: flow,
                allowed: c.rx_window,
            });
        }
        c.rx_window -= flow;
        c.rx_to_return += flow;
        self.maybe_return_stream_credit(call_id);
        Ok(())
    }

    /// Returns a stream's credit unless what the application has not consumed of it
    /// holds half its window or more.
    pub(super) fn maybe_return_stream_credit(&mut self, call_id: u32) {
        if self.state != State::Open {
            return;
        }
        let window = u64::from(self.local_limits().initial_window);
        let Some(c) = self.calls.get_mut(&call_id) else {
            return;
        };
        if c.rx_done
            || c.rx_to_return == 0
            || c.rx_to_return < window / 4
            || c.rx_held_bytes >= window / 2
        {
            return;
        }
        while c.rx_to_return > 0 {
            let inc = c.rx_to_return.min(u64::from(u32::MAX)) as u32;
            c.rx_to_return -= u64::from(inc);
            c.rx_window += u64::from(inc);
            Frame::StreamCredit {
                call_id,
                increment: inc,
            }
            .encode(&mut self.out, self.crc);
        }
    }

    /// The application took `messages` more of the messages delivered on `call_id`'s
    /// incoming stream (the call's first message included, when its direction
    /// streams): their bytes no longer count as held, and the stream's credit flows
    /// again once less than half its window is held. Unknown or finished calls are
    /// ignored.
    pub fn stream_consumed(&mut self, call_id: u32, messages: usize) {
        let Some(c) = self.calls.get_mut(&call_id) else {
            return;
        };
        let mut left = messages as u64;
        while left > 0 {
            let Some((count, bytes)) = c.rx_held.front_mut() else {
                break;
            };
            if left >= *count {
                left -= *count;
                c.rx_held_bytes -= *bytes;
                c.rx_held.pop_front();
            } else {
                // Part of a packed run: its share of the bytes (the rest goes with the
                // run's last message).
                let share = *bytes * left / *count;
                *count -= left;
                *bytes -= share;
                c.rx_held_bytes -= share;
                left = 0;
            }
        }
        self.maybe_return_stream_credit(call_id);
    }

    pub(super) fn on_stream_credit(
        &mut self,
        call_id: u32,
        increment: u32,
    ) -> Result<(), ProtoError> {
        if !self.streaming() {
            return Err(Self::violation(
                "STREAM_CREDIT, but streaming was not negotiated",
            ));
        }
        if let Some(credit) = self.stream_credit.get_mut(&call_id) {
            *credit = credit.saturating_add(increment.into());
            return Ok(());
        }
        if self.calls.contains_key(&call_id) {
            return Ok(()); // a direction that does not stream: nothing to add to
        }
        if self.is_local_id(call_id) {
            self.check_known_local_id(call_id, "STREAM_CREDIT")
        } else {
            self.check_known_peer_id(call_id, "STREAM_CREDIT")
        }
    }

    /// Payload bytes this side has queued on `call_id` and not yet framed (0 for an
    /// unknown call): what a producer feeding the call's stream waits on.
    pub fn stream_queued(&self, call_id: u32) -> usize {
        self.queues.get(&call_id).map_or(0, |q| q.bytes)
    }

    /// This side's stream window on `call_id`: payload bytes it may still send on the
    /// call's stream (`None` when this side's direction of the call does not stream or
    /// has all been framed).
    pub fn stream_send_credit(&self, call_id: u32) -> Option<u64> {
        self.stream_credit.get(&call_id).copied()
    }

    // ------------------------------------------------------------------ sending
}
