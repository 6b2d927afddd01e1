//! A last-writer-wins register.

use serde::{Deserialize, Serialize};

use super::Hlc;

/// A JSON value (kept as its canonical text) and the clock reading of the write that
/// set it; joining keeps the later write.
///
/// ```
/// use polycall_state::crdt::{Clock, Register};
/// let mut clock = Clock::new(1);
/// let mut r = Register::new("\"ada\"".into(), clock.tick(10));
/// r.join(&Register::new("\"bob\"".into(), clock.tick(5)));
/// assert_eq!(r.value(), "\"bob\""); // the later reading, though its wall clock was behind
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Register {
    value: String,
    stamp: Hlc,
}

impl Register {
    /// A register holding `value` (canonical JSON), written at `stamp`.
    pub fn new(value: String, stamp: Hlc) -> Self {
        Self { value, stamp }
    }

    /// Keeps the later of the two writes.
    pub fn join(&mut self, other: &Register) {
        if (other.stamp, &other.value) > (self.stamp, &self.value) {
            *self = other.clone();
        }
    }

    /// The value (canonical JSON).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// When it was written.
    pub fn stamp(&self) -> Hlc {
        self.stamp
    }
}
