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

    // ------------------------------------------------------------------ sending
}
