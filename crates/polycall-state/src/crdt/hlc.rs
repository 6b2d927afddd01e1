//! Hybrid logical clocks (Kulkarni et al.): timestamps that follow physical time while
//! clocks agree and still order causally related events when they do not.

use serde::{Deserialize, Serialize};

use super::ReplicaId;

/// A hybrid logical clock reading: wall time, a counter for events within one
/// microsecond (or while the wall clock lags a peer's), and the replica that made it,
/// so two readings are never equal unless they are the same.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Microseconds since the Unix epoch (the largest physical time seen).
    pub wall_us: u64,
    /// Orders events with the same `wall_us`.
    pub logical: u32,
    /// The replica that made the reading.
    pub replica: ReplicaId,
}

/// A remote reading further ahead of this replica's wall clock than
/// [`Clock::MAX_DRIFT_US`]: not adopted (a peer's clock is wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a peer's clock reads {ahead_us} µs ahead of this one (more than the 60 s allowed); its reading is not adopted"
)]
pub struct ClockDrift {
    /// How far ahead the remote reading was.
    pub ahead_us: u64,
}

/// One replica's clock. Pure: the caller passes the physical time in.
///
/// ```
/// use polycall_state::crdt::Clock;
/// let mut a = Clock::new(1);
/// let mut b = Clock::new(2);
/// let t1 = a.tick(1_000);
/// b.observe(t1, 900).unwrap(); // b's wall clock lags
/// let t2 = b.tick(900);
/// assert!(t2 > t1, "an event after seeing t1 is ordered after it");
/// ```
#[derive(Debug, Clone)]
pub struct Clock {
    replica: ReplicaId,
    last: Hlc,
}

impl Clock {
    /// How far ahead of the local wall clock a remote reading may be and still be
    /// adopted: one minute.
    pub const MAX_DRIFT_US: u64 = 60_000_000;

    /// A clock of `replica` that has seen nothing.
    pub fn new(replica: ReplicaId) -> Self {
        Self {
            replica,
            last: Hlc {
                replica,
                ..Hlc::default()
            },
        }
    }

    /// A reading for a local event at physical time `now_us`: after every reading made
    /// or observed before.
    pub fn tick(&mut self, now_us: u64) -> Hlc {
        let (wall_us, logical) = if now_us > self.last.wall_us {
            (now_us, 0)
        } else {
            (self.last.wall_us, self.last.logical.saturating_add(1))
        };
        self.last = Hlc {
            wall_us,
            logical,
            replica: self.replica,
        };
        self.last
    }

    /// Takes in a remote reading, so that the next [`tick`](Clock::tick) is after it.
    pub fn observe(&mut self, remote: Hlc, now_us: u64) -> Result<(), ClockDrift> {
        if remote.wall_us > now_us.saturating_add(Self::MAX_DRIFT_US) {
            return Err(ClockDrift {
                ahead_us: remote.wall_us - now_us,
            });
        }
        if (remote.wall_us, remote.logical) > (self.last.wall_us, self.last.logical) {
            self.last.wall_us = remote.wall_us;
            self.last.logical = remote.logical;
        }
        Ok(())
    }

    /// The latest reading made or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_increase_even_when_the_wall_clock_stands_still_or_goes_back() {
        let mut c = Clock::new(7);
        let a = c.tick(100);
        let b = c.tick(100);
        let d = c.tick(50);
        assert!(a < b && b < d);
        assert_eq!((d.wall_us, d.logical, d.replica), (100, 2, 7));
        assert_eq!(c.tick(200).logical, 0);
    }

    #[test]
    fn a_reading_from_far_in_the_future_is_refused() {
        let mut c = Clock::new(1);
        let far = Hlc {
            wall_us: 10 + Clock::MAX_DRIFT_US + 1,
            logical: 0,
            replica: 2,
        };
        assert!(c.observe(far, 10).is_err());
        assert!(c.tick(10).wall_us == 10, "the bad reading was not adopted");
    }
}
