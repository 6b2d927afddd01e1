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
//! | `net` (default) | [`net`] | `polycall-net`: TCP / Unix transports, connections, `Channel`, `Server` |
//! | `security` | [`security`] | `polycall-security`: TLS 1.3, CA, tokens, OPAQUE, HSM keys, authorization |
//! | `state` | [`state`] | `polycall-state`: durable state machines, point-in-time recovery, backups |
//! | `runtime` | [`runtime`] | `polycall-runtime`: the embeddable runtime and `Provider` |
//! | `full` | all of the above | |
//!
//! Runnable examples: `cargo run -p polycall --features runtime --example
//! provider` and `--example client`.
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

#[cfg(feature = "security")]
pub use polycall_security as security;

#[cfg(feature = "net")]
pub use polycall_net as net;

#[cfg(feature = "state")]
pub use polycall_state as state;

#[cfg(feature = "runtime")]
pub use polycall_runtime as runtime;
