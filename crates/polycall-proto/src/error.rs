//! Typed errors of decoding and of the connection state machine.

use polycall_core::{Code, Status};

use crate::compress::Algorithm;
use crate::frame::FrameType;

/// Why [`Settings`](crate::Settings), [`Limits`](crate::Limits) or a connection
/// [`Config`](crate::connection::Config) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit below its minimum.
    #[error("{field} {value} is below the minimum of {min}")]
    BelowMinimum {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The smallest value accepted.
        min: u64,
    },
    /// A count or size that must not be zero.
    #[error("{field} is 0")]
    Zero {
        /// The setting.
        field: &'static str,
    },
    /// The version range is empty.
    #[error("min_version {min} is above max_version {max}")]
    Versions {
        /// The lowest version.
        min: u16,
        /// The highest version.
        max: u16,
    },
    /// No authentication method is offered.
    #[error("no authentication method: offer at least one (`none` for anonymous sessions)")]
    NoAuthMethod,
    /// A compression algorithm this build leaves out (its cargo feature is off).
    #[error("{algorithm} is not built into this program (enable polycall's `{algorithm}` feature)")]
    CompressionNotBuilt {
        /// The algorithm.
        algorithm: Algorithm,
    },
    /// `zstd-dict` in the compression list: it is agreed with a feature bit
    /// (`features::ZSTD_DICTIONARIES`), never listed.
    #[error(
        "zstd-dict is not listed among compressions: offer it with the ZSTD_DICTIONARIES feature bit (and zstd)"
    )]
    DictionaryListed,
    /// The reassembly budget could never hold a largest message.
    #[error(
        "reassembly_budget {budget} is below max_message {max_message}: a largest message could never arrive"
    )]
    ReassemblyBudget {
        /// The budget, in bytes.
        budget: usize,
        /// The largest message accepted.
        max_message: u32,
    },
}

/// Why bytes could not be decoded into a frame. Every variant is a connection error:
/// after it, the byte stream cannot be trusted to be in sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame header announces a body larger than the negotiated maximum.
    #[error("frame body of {len} bytes exceeds the negotiated maximum of {max}")]
    TooLarge {
        /// Announced body length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A frame type this version does not know.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// Flag bits that the frame type does not define.
    #[error("{frame:?} frame has undefined flag bits 0x{flags:02x}")]
    UnknownFlags {
        /// The frame type.
        frame: FrameType,
        /// The undefined bits.
        flags: u8,
    },
    /// The reserved header bytes are not zero.
    #[error("{frame:?} frame has non-zero reserved header bytes 0x{value:04x}")]
    Reserved {
        /// The frame type.
        frame: FrameType,
        /// Their value.
        value: u16,
    },
    /// A connection-level frame with a call id, or a call frame without one.
    #[error(
        "{frame:?} frame with call id {call_id} (connection frames use 0, call frames never do)"
    )]
    BadCallId {
        /// The frame type.
        frame: FrameType,
        /// The call id it carried.
        call_id: u32,
    },
    /// The CRC32C trailer does not match the frame.
    #[error(
        "{frame:?} frame checksum mismatch: trailer says 0x{expected:08x}, frame hashes to 0x{actual:08x}"
    )]
    Checksum {
        /// The frame type.
        frame: FrameType,
        /// The trailer's value.
        expected: u32,
        /// What the bytes hash to.
        actual: u32,
    },
    /// The body does not follow the frame type's layout.
    #[error("malformed {frame:?} frame: {reason}")]
    Malformed {
        /// The frame type.
        frame: FrameType,
        /// What is wrong.
        reason: &'static str,
    },
}

impl FrameError {
    /// The status code a peer is told in the error frame that closes the connection.
    pub fn code(&self) -> Code {
        match self {
            FrameError::TooLarge { .. } => Code::TooLarge,
            FrameError::UnknownType(_) => Code::Unsupported,
            _ => Code::Malformed,
        }
    }
}

/// A connection error: the connection cannot go on. The state machine has queued an
/// error frame for the peer (when the transport still works) and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Bytes that are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The first bytes are not polycall's preface.
    #[error("the peer does not speak polycall: {0}")]
    NotPolycall(&'static str),
    /// A valid frame at a point where the protocol does not allow it.
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The handshake failed (no common version, no common auth method, bad limits).
    #[error("handshake failed: {0}")]
    Handshake(Status),
    /// The peer ended the connection with an error frame.
    #[error("the peer closed the connection: {0}")]
    Remote(Status),
    /// The peer sent more than the flow-control credit it was given.
    #[error("flow control violated: {used} bytes received with {allowed} bytes of credit")]
    FlowControl {
        /// Bytes received.
        used: u64,
        /// Credit that was open.
        allowed: u64,
    },
    /// The connection was already closed.
    #[error("the connection is closed")]
    Closed,
}

impl ProtoError {
    /// The status a peer (or a local caller) is told.
    pub fn status(&self) -> Status {
        match self {
            ProtoError::Frame(e) => Status::new(e.code(), e.to_string()),
            ProtoError::NotPolycall(_) | ProtoError::Violation(_) => {
                Status::malformed(self.to_string())
            }
            ProtoError::Handshake(s) | ProtoError::Remote(s) => s.clone(),
            ProtoError::FlowControl { .. } => Status::malformed(self.to_string()),
            ProtoError::Closed => Status::unavailable("the connection is closed"),
        }
    }
}

/// Why a send was refused. The connection itself stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The handshake has not completed yet.
    #[error("the handshake has not completed; wait for Event::Connected")]
    NotConnected,
    /// The connection is closed or going away.
    #[error("the connection is closed or going away; open a new one")]
    Closed,
    /// The peer's in-flight limit is reached.
    #[error(
        "the peer allows {limit} calls in flight on one connection; wait for one to finish or open another connection"
    )]
    TooManyInFlight {
        /// The peer's limit.
        limit: u32,
    },
    /// The message exceeds the peer's maximum message size.
    #[error("message of {len} bytes exceeds the peer's maximum of {max}")]
    TooLarge {
        /// Message length.
        len: usize,
        /// The peer's limit.
        max: u32,
    },
    /// No such open call (finished, cancelled or never opened).
    #[error("call {0} is not open")]
    UnknownCall(u32),
    /// The call is not in a state that allows this (e.g. a stream message on a unary call).
    #[error("call {call_id}: {reason}")]
    InvalidState {
        /// The call.
        call_id: u32,
        /// What is not allowed.
        reason: &'static str,
    },
    /// The peer did not negotiate the feature this needs.
    #[error("the peer did not negotiate {0}")]
    NotNegotiated(&'static str),
}

impl SendError {
    /// The status a local caller is told.
    pub fn status(&self) -> Status {
        let code = match self {
            SendError::NotConnected | SendError::Closed => Code::Unavailable,
            SendError::TooManyInFlight { .. } => Code::Busy,
            SendError::TooLarge { .. } => Code::TooLarge,
            SendError::UnknownCall(_) | SendError::InvalidState { .. } => Code::FailedPrecondition,
            SendError::NotNegotiated(_) => Code::Unsupported,
        };
        // Refused here, before anything was sent.
        Status::new(code, self.to_string()).not_executed()
    }
}
