//! Call metadata: deadline, priority, trace context, idempotency, principal.

use std::time::{Duration, Instant};

use crate::Principal;

/// The instant by which a call must complete. On the wire it travels as the remaining
/// time, so the peers' clocks never need to agree.
///
/// ```
/// use std::time::{Duration, Instant};
/// use polycall_core::Deadline;
/// let now = Instant::now();
/// let d = Deadline::after(now, Duration::from_millis(250));
/// assert_eq!(d.remaining(now), Duration::from_millis(250));
/// assert!(!d.is_expired(now));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline `timeout` after `now`.
    pub fn after(now: Instant, timeout: Duration) -> Self {
        Self(now + timeout)
    }

    /// Time left at `now` (zero once passed).
    pub fn remaining(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether the deadline has passed at `now`.
    pub fn is_expired(self, now: Instant) -> bool {
        now >= self.0
    }
}

/// Priority class of a call. Writers schedule frames by class and servers dispatch by
/// class under load. The numbers are the wire values.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Priority {
    /// Served strictly first.
    Critical = 0,
    /// Weighted above normal.
    High = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Background work.
    Low = 3,
}

impl Priority {
    /// Every class, most urgent first.
    pub const ALL: [Priority; 4] = [Self::Critical, Self::High, Self::Normal, Self::Low];

    /// The class of a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// Why a `traceparent` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid W3C traceparent {value:?}: {reason}")]
pub struct TraceContextError {
    /// The refused text.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// W3C trace context (`traceparent`, version 00, and optional `tracestate`).
///
/// ```
/// use polycall_core::TraceContext;
/// let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let t = TraceContext::parse(tp, None)?;
/// assert!(t.sampled());
/// assert_eq!(t.traceparent(), tp);
/// # Ok::<(), polycall_core::TraceContextError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// 16-byte trace id (never all zero).
    pub trace_id: [u8; 16],
    /// 8-byte id of the calling span (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
    /// Vendor-specific `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Parses a `traceparent` header value.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, TraceContextError> {
        let err = |reason| TraceContextError {
            value: traceparent.to_owned(),
            reason,
        };
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        if parts.len() != 4 {
            return Err(err("expected 4 dash-separated fields"));
        }
        if parts[0] != "00" {
            return Err(err("only version 00 is supported"));
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_decode(parts[1], &mut trace_id)
            .ok_or_else(|| err("trace id is not 32 lowercase hex digits"))?;
        hex_decode(parts[2], &mut parent_id)
            .ok_or_else(|| err("parent id is not 16 lowercase hex digits"))?;
        hex_decode(parts[3], &mut flags)
            .ok_or_else(|| err("flags are not 2 lowercase hex digits"))?;
        let t = Self {
            trace_id,
            parent_id,
            flags: flags[0],
            tracestate: tracestate.map(str::to_owned),
        };
        t.validate().map_err(err)?;
        Ok(t)
    }

    /// Checks the ids are not all zero, as W3C requires.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.trace_id == [0; 16] {
            return Err("trace id is all zero");
        }
        if self.parent_id == [0; 8] {
            return Err("parent id is all zero");
        }
        Ok(())
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        hex_encode(&self.trace_id, &mut s);
        s.push('-');
        hex_encode(&self.parent_id, &mut s);
        s.push('-');
        hex_encode(&[self.flags], &mut s);
        s
    }
}

fn hex_decode(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
    }
    Some(())
}

fn hex_encode(bytes: &[u8], s: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Everything about a call that is not its name or payload.
///
/// ```
/// use std::time::{Duration, Instant};
/// use polycall_core::{Metadata, Priority};
/// let md = Metadata::default()
///     .with_timeout(Instant::now(), Duration::from_secs(2))
///     .with_priority(Priority::High)
///     .idempotent();
/// assert!(md.idempotent);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// When the call must be done by.
    pub deadline: Option<Deadline>,
    /// Scheduling class.
    pub priority: Priority,
    /// Distributed trace context.
    pub trace: Option<TraceContext>,
    /// The call may safely run more than once (retries are allowed).
    pub idempotent: bool,
    /// A key the callee may use to deduplicate repeated deliveries.
    pub idempotency_key: Option<String>,
    /// Who the call runs as.
    pub principal: Option<Principal>,
    /// A runtime forwarded the call to the runtime that serves its method; it is not
    /// forwarded again (discovery never loops).
    pub forwarded: bool,
}

impl Metadata {
    /// Sets the deadline `timeout` after `now`.
    pub fn with_timeout(mut self, now: Instant, timeout: Duration) -> Self {
        self.deadline = Some(Deadline::after(now, timeout));
        self
    }

    /// Sets the priority class.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Marks the call idempotent.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Sets the principal.
    pub fn with_principal(mut self, principal: Principal) -> Self {
        self.principal = Some(principal);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejections() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let t = TraceContext::parse(tp, Some("congo=t61rcWkgMzE")).unwrap();
        assert!(!t.sampled());
        assert_eq!(t.traceparent(), tp);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00",
            "00-4bf92f-00f067aa0ba902b7-00",
            "garbage",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn priority_wire_values() {
        for p in Priority::ALL {
            assert_eq!(Priority::from_u8(p as u8), Some(p));
        }
        assert_eq!(Priority::from_u8(4), None);
    }
}
