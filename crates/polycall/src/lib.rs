//! # polycall
//!
//! A polyglot call runtime and library: a call is `service.method(payload) -> reply`.
//!
//! This facade re-exports the layers, each behind a cargo feature:
//!
//! | feature | module | crate |
//! |---|---|---|
//! | always | [`core`] and the root | `polycall-core`: names, calls, status, metadata, router |
//! | `proto` | [`proto`] | `polycall-proto`: the wire protocol, sans-IO |
//! | `security` | [`security`] | `polycall-security`: TLS 1.3, tokens, authorization, secret references |
//! | `layers` | [`layers`] | `polycall-layers`: resilience and QoS tower layers, no sockets |
//! | `net` (default) | [`net`] | `polycall-net`: TCP / Unix / TLS transports, connections, `Channel`, `Server` (implies `proto`, `security`, `layers`) |
//! | `state` | [`state`] | `polycall-state`: durable state machines (redb, CEL), point-in-time recovery, backups |
//! | `config` | [`config`] | `polycall-config`: `polycall.toml` schema, layered loading, validation, migration |
//! | `observe` | [`observe`] | `polycall-observe`: per-method metrics, call spans, anomaly detection, admin listener and dashboard |
//! | `runtime` | [`runtime`] | `polycall-runtime`: the embeddable runtime and `Provider` (implies every feature) |
//! | `full` | all of the above | |
//!
//! Features that add capabilities (and their dependencies) to the layers above:
//!
//! | feature | adds | pulls in |
//! |---|---|---|
//! | `zstd` (default), `brotli` (default) | that compression algorithm, offered in the handshake | `zstd`, `brotli` |
//! | `opaque` | OPAQUE zero-knowledge password logins | `opaque-ke`, `argon2` |
//! | `hsm` | TLS keys held in a PKCS#11 token | `cryptoki` |
//! | `ca` | a certificate authority (`security::Ca`) | `rcgen` |
//! | `raft` | the raft log and replicated map on redb (`state::raft`, openraft's storage traits) | `openraft` |
//! | `otlp` | OTLP/gRPC export of call spans (`observe::otlp`, the runtime's `--otlp`) | `opentelemetry-otlp`, `tonic` |
//! | `compat` | the runtime serves libpolycall's PCR1 and first-generation clients; `config` migrates libpolycall's files | (the `runtime` feature) |
//!
//! A build without a capability never offers it to a peer and answers a clear
//! "not built" error when asked to use it. `default-features = false, features =
//! ["net"]` is a client and server with TLS and tokens and nothing else.
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

#[cfg(feature = "layers")]
pub use polycall_layers as layers;

#[cfg(feature = "net")]
pub use polycall_net as net;

#[cfg(feature = "state")]
pub use polycall_state as state;

#[cfg(feature = "config")]
pub use polycall_config as config;

#[cfg(feature = "observe")]
pub use polycall_observe as observe;

#[cfg(feature = "runtime")]
pub use polycall_runtime as runtime;
