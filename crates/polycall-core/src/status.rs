//! Errors as values: [`Status`] and its stable [`Code`] table.

use std::fmt;
use std::time::Duration;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $name:literal, $pcr1:literal, $exit:literal; )*) => {
        /// A stable status code. The numbers are part of the wire protocol and never
        /// change meaning; new codes are only ever added.
        ///
        /// | code | number | PCR1 error string | CLI exit code |
        /// |---|---|---|---|
        $( #[doc = concat!("| `", $name, "` | ", stringify!($num), " | `", $pcr1, "` | ", stringify!($exit), " |")] )*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        #[repr(u16)]
        pub enum Code {
            $( $(#[$doc])* $variant = $num, )*
        }

        impl Code {
            /// Every code, in number order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The code of a wire number; numbers this version does not know become
            /// [`Code::Unknown`].
            pub fn from_u16(n: u16) -> Code {
                match n {
                    $( $num => Code::$variant, )*
                    _ => Code::Unknown,
                }
            }

            /// The snake_case name (`deadline_exceeded`).
            pub fn name(self) -> &'static str {
                match self { $( Code::$variant => $name, )* }
            }

            /// The code of a snake_case name.
            pub fn from_name(name: &str) -> Option<Code> {
                match name { $( $name => Some(Code::$variant), )* _ => None }
            }

            /// libpolycall's PCR1 error string. PCR1 had eight strings; codes it did not
            /// have use the same dotted style.
            pub fn pcr1(self) -> &'static str {
                match self { $( Code::$variant => $pcr1, )* }
            }

            /// The process exit code of `polycall` commands that end with this code
            /// (libpolycall's CLI contract: 0 ok, 1 runtime, 3 invalid input,
            /// 4 unsupported or unknown operation, 5 transport, 6 deadline, 7 auth,
            /// 130 interrupted).
            pub fn exit_code(self) -> u8 {
                match self { $( Code::$variant => $exit, )* }
            }
        }
    };
}

codes! {
    /// Success.
    Ok = 0, "ok", "ok", 0;
    /// The caller gave up on the call.
    Cancelled = 1, "cancelled", "call.cancelled", 130;
    /// The request was understood but its input is not acceptable.
    InvalidInput = 2, "invalid_input", "input.invalid", 3;
    /// An item the call refers to does not exist.
    NotFound = 3, "not_found", "item.unknown", 1;
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4, "deadline_exceeded", "deadline.exceeded", 6;
    /// No valid credentials.
    Unauthenticated = 5, "unauthenticated", "auth.denied", 7;
    /// Credentials are valid but do not allow this call.
    PermissionDenied = 6, "permission_denied", "auth.denied", 7;
    /// The callee cannot be reached (no provider, connection lost).
    Unavailable = 7, "unavailable", "server.unavailable", 5;
    /// The callee is overloaded; retry later (see [`Status::retry_after`]).
    Busy = 8, "busy", "server.busy", 1;
    /// A message is larger than the negotiated limit.
    TooLarge = 9, "too_large", "output.too_large", 3;
    /// A bug or an unexpected failure in the callee.
    Internal = 10, "internal", "server.internal", 1;
    /// The capability exists in the protocol but is not supported here.
    Unsupported = 11, "unsupported", "operation.unsupported", 4;
    /// The peers share no protocol version.
    VersionMismatch = 12, "version_mismatch", "version.mismatch", 4;
    /// No such method.
    UnknownMethod = 13, "unknown_method", "operation.unknown", 4;
    /// The request could not be parsed or broke the protocol.
    Malformed = 14, "malformed", "request.malformed", 3;
    /// The item to create exists already.
    AlreadyExists = 15, "already_exists", "item.exists", 1;
    /// The system is not in a state that allows the call (a locked state, say).
    FailedPrecondition = 16, "failed_precondition", "state.precondition", 1;
    /// A code this version does not know (sent by a newer peer).
    Unknown = 65535, "unknown", "server.unknown", 1;
}

impl Code {
    /// The code of a PCR1 error string. `auth.denied` maps to
    /// [`Code::Unauthenticated`].
    pub fn from_pcr1(s: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.pcr1() == s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Code::from_name(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown status code {s:?}")))
    }
}

/// A failed call: a [`Code`], a message for people, and an optional retry hint.
///
/// ```
/// use polycall_core::{Code, Status};
/// let s = Status::new(Code::Busy, "in-flight cap of 1024 reached");
/// assert_eq!(s.code.exit_code(), 1);
/// assert_eq!(s.to_string(), "busy: in-flight cap of 1024 reached");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The stable code.
    pub code: Code,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
    /// For [`Code::Busy`] and [`Code::Unavailable`]: when a retry may succeed.
    pub retry_after: Option<Duration>,
    /// The call certainly did not run: it was refused before it was sent, or by the
    /// peer before any handler saw it. Such a call is safe to retry even when it is not
    /// idempotent. (A `busy` answer always means this; see [`Status::never_ran`].)
    pub not_executed: bool,
}

impl Status {
    /// A status of `code` with `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            not_executed: false,
        }
    }

    /// Marks the call as certainly not run (refused before sending, or before a handler).
    pub fn not_executed(mut self) -> Self {
        self.not_executed = true;
        self
    }

    /// Whether the call certainly did not run, so retrying it cannot run it twice:
    /// marked so, or refused as [`Code::Busy`] (every busy answer is given before a
    /// handler runs).
    pub fn never_ran(&self) -> bool {
        self.not_executed || self.code == Code::Busy
    }

    /// Adds a retry-after hint.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

macro_rules! constructors {
    ($($fn:ident => $code:ident),* $(,)?) => {
        impl Status {
            $(
                #[doc = concat!("A [`Code::", stringify!($code), "`] status.")]
                pub fn $fn(message: impl Into<String>) -> Self {
                    Self::new(Code::$code, message)
                }
            )*
        }
    };
}

constructors! {
    cancelled => Cancelled,
    invalid_input => InvalidInput,
    not_found => NotFound,
    deadline_exceeded => DeadlineExceeded,
    unauthenticated => Unauthenticated,
    permission_denied => PermissionDenied,
    unavailable => Unavailable,
    busy => Busy,
    too_large => TooLarge,
    internal => Internal,
    unsupported => Unsupported,
    version_mismatch => VersionMismatch,
    unknown_method => UnknownMethod,
    malformed => Malformed,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_round_trip() {
        let expected: &[(Code, u16)] = &[
            (Code::Ok, 0),
            (Code::Cancelled, 1),
            (Code::InvalidInput, 2),
            (Code::NotFound, 3),
            (Code::DeadlineExceeded, 4),
            (Code::Unauthenticated, 5),
            (Code::PermissionDenied, 6),
            (Code::Unavailable, 7),
            (Code::Busy, 8),
            (Code::TooLarge, 9),
            (Code::Internal, 10),
            (Code::Unsupported, 11),
            (Code::VersionMismatch, 12),
            (Code::UnknownMethod, 13),
            (Code::Malformed, 14),
            (Code::AlreadyExists, 15),
            (Code::FailedPrecondition, 16),
        ];
        for &(code, n) in expected {
            assert_eq!(code as u16, n);
            assert_eq!(Code::from_u16(n), code);
            assert_eq!(Code::from_name(code.name()), Some(code));
        }
        assert_eq!(Code::from_u16(999), Code::Unknown);
    }

    #[test]
    fn pcr1_strings_of_libpolycall() {
        for (s, code) in [
            ("request.malformed", Code::Malformed),
            ("input.invalid", Code::InvalidInput),
            ("operation.unknown", Code::UnknownMethod),
            ("item.unknown", Code::NotFound),
            ("deadline.exceeded", Code::DeadlineExceeded),
            ("auth.denied", Code::Unauthenticated),
            ("server.busy", Code::Busy),
            ("output.too_large", Code::TooLarge),
        ] {
            assert_eq!(Code::from_pcr1(s), Some(code), "{s}");
            assert_eq!(code.pcr1(), s);
        }
        assert_eq!(Code::PermissionDenied.pcr1(), "auth.denied");
    }

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        assert_eq!(Code::Ok.exit_code(), 0);
        assert_eq!(Code::InvalidInput.exit_code(), 3);
        assert_eq!(Code::UnknownMethod.exit_code(), 4);
        assert_eq!(Code::Unavailable.exit_code(), 5);
        assert_eq!(Code::DeadlineExceeded.exit_code(), 6);
        assert_eq!(Code::Unauthenticated.exit_code(), 7);
        assert_eq!(Code::Cancelled.exit_code(), 130);
    }
}
