//! # polycall-proto
//!
//! The polycall wire protocol, sans-IO: no sockets, no async runtime, no clock reads
//! beyond timing compression. Bytes go in, events and bytes come out, so every rule of
//! the protocol is tested and fuzzed without a network.
//!
//! - [`frame`]: the frames and their exact byte layout (`docs/protocol.md`).
//! - [`handshake`]: `HELLO` / `WELCOME`, version, feature, codec, compression, limit
//!   and auth negotiation.
//! - [`connection`]: the state machine that enforces the legal sequence of frames,
//!   interns method names, fragments and reassembles messages, and keeps flow control.
//! - [`compress`]: per-message adaptive compression (none / zstd / brotli) aiming at the
//!   least time to deliver.
//! - [`codec`]: payload codecs (raw, JSON, postcard).
//! - [`detect`]: telling polycall from libpolycall's dialects on the first bytes.
//!
//! ```
//! use polycall_proto::{negotiate, Settings};
//! let server = Settings::default();
//! let welcome = negotiate(&server, &Settings::default().hello()).unwrap();
//! assert_eq!(welcome.version, 1);
//! ```

pub mod clock;
pub mod codec;
pub mod compress;
pub mod connection;
pub mod detect;
mod error;
pub mod frame;
pub mod handshake;
#[cfg(feature = "legacy")]
pub mod legacy;
pub mod meta;
mod wire;

pub use clock::Clock;
pub use connection::{
    AUTH_ACCEPTED, AUTH_MAX_STEPS, Config, Connection, Event, IncomingCall, PREFACE, Role,
};
pub use error::{ConfigError, FrameError, ProtoError, SendError};
pub use frame::Frame;
pub use handshake::{AuthMethod, Limits, Negotiated, Settings, features, negotiate};
pub use meta::WireMeta;
