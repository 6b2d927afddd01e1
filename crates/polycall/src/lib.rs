//! # polycall
//!
//! A polyglot call runtime and library: a call is `service.method(payload) -> reply`.
//!
//! This facade re-exports the layers, each behind a cargo feature:
//!
//! | feature | module | crate |
//! |---|---|---|
//! | always | [`core`] and the root | `polycall-core`: names, calls, status, metadata, router |
//! | `proto` (default) | [`proto`] | `polycall-proto`: the wire protocol, sans-IO |
//!
//! Transports, the runtime, security, state machines and the rest arrive as their own
//! crates and features.
//!
//! ```
//! use polycall::{Call, Payload};
//! let call = Call::new("debug.echo", Payload::raw("hello"))?;
//! assert_eq!(call.full_name(), "debug.echo");
//! # Ok::<(), polycall::NameError>(())
//! ```

pub use polycall_core as core;
pub use polycall_core::*;

#[cfg(feature = "proto")]
pub use polycall_proto as proto;
