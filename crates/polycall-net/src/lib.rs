//! # polycall-net
//!
//! Transports and connections for polycall: the only crate that touches tokio's I/O.
//!
//! - [`Transport`]: TCP and Unix-domain sockets ([`Plain`]); TLS and QUIC plug in here.
//! - [`ConnectionHandle`]: one multiplexed connection (thousands of concurrent calls,
//!   vectored writes, cancellation on drop, deadlines on both sides).
//! - [`Channel`]: a cloneable client (`tower::Service<Call>`) over one or more
//!   connections, reconnecting on failure.
//! - [`Server`]: accept loop with a connection cap, handshake timeout, per-connection
//!   in-flight cap (answers `busy`) and graceful shutdown.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use polycall_core::{handler_fn, Call, MethodInfo, Payload, Reply, Router};
//! use polycall_net::{Channel, Server, ServerConfig};
//!
//! let router = Router::new().route("debug.echo", MethodInfo::new("echo"),
//!     handler_fn(|c: Call| async move { Ok(Reply::new(c.payload)) }))?;
//! let server = Server::serve_router("127.0.0.1:0".parse()?, ServerConfig::default(), router).await?;
//! let channel = Channel::connect(server.local_endpoint().clone()).await?;
//! let reply = channel.call(Call::new("debug.echo", Payload::raw("hi"))?).await?;
//! assert_eq!(&reply.payload.bytes[..], b"hi");
//! server.shutdown().await;
//! # Ok(()) }
//! ```

/// Authentication in the handshake: the sans-IO exchanges of polycall-security.
pub use polycall_security::exchange as auth;
pub mod offload;
pub mod pool;
pub mod tls;

// The resilience and quality-of-service layers live in polycall-layers (they need no
// sockets); re-exported here so a client stack names them beside `Channel`.
pub use polycall_layers::{
    authorize, balance, breaker, deadline, failover, fault, limit, rate_limit, retry, shape,
};

mod client;
mod connection;
mod handler;
mod prefixed;
mod server;
mod transport;

pub use client::{Channel, ChannelConfig};
pub use connection::{
    ConnectionConfig, ConnectionHandle, MessageBatch, MessageRef, PendingConnection, SEND_BUFFER,
    Streaming, establish, least_loaded,
};
pub use handler::{ConnectionHandler, NoHandler, RouterHandler, ServiceHandler, SharedHandler};
pub use polycall_core::{Endpoint, EndpointError};
pub use prefixed::Prefixed;
pub use server::{LegacyConnection, LegacyServe, MakeHandler, Server, ServerConfig};
pub use transport::{
    BoxFuture, BoxIo, Io, Listener, Peer, Plain, Transport, TunedTcp, crc32c_wanted, settle_crc32c,
};
