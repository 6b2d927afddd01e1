//! # polycall-core
//!
//! The vocabulary every other polycall crate speaks: a call is
//! `service.method(payload) -> reply`.
//!
//! - [`ServiceName`], [`MethodName`]: validated names.
//! - [`Call`], [`Reply`], [`CallId`]: what travels.
//! - [`Status`] and [`Code`]: errors as values with a stable code table, mapped to
//!   libpolycall's PCR1 error strings and the CLI's exit codes.
//! - [`Metadata`]: deadline, priority, W3C trace context, idempotency, principal.
//! - [`Principal`], [`PeerAddr`]: who calls, typed (anonymous peer, token, user,
//!   certificate identity; Unix-socket peers by their kernel credentials).
//! - [`Payload`]: `bytes::Bytes` plus a [`ContentType`].
//! - [`Handler`]: the `tower::Service<Call>` alias every method implementation is.
//! - [`Router`]: a method table with [`Router::describe`].
//! - [`stream`]: streaming calls ([`CallKind`], [`StreamCall`], [`MessageStream`],
//!   [`StreamHandler`]).
//!
//! ```
//! use polycall_core::{handler_fn, Call, MethodInfo, Payload, Reply, Router};
//!
//! let router = Router::new().route(
//!     "debug.echo",
//!     MethodInfo::new("returns its input").idempotent(true),
//!     handler_fn(|call: Call| async move { Ok(Reply::new(call.payload)) }),
//! )?;
//! let described = router.describe();
//! assert_eq!(described[0].name, "debug.echo");
//! # Ok::<(), polycall_core::NameError>(())
//! ```

mod call;
mod classes;
mod endpoint;
mod handler;
mod id_map;
mod metadata;
mod name;
mod payload;
mod principal;
mod router;
mod status;
pub mod stream;
pub mod typed;

pub use call::{Call, CallId, Reply};
pub use classes::ClassQueues;
pub use endpoint::{Endpoint, EndpointError};
pub use handler::{BoxFuture, BoxHandler, Handler, HandlerFn, handler_fn};
pub use id_map::{IdHashState, IdHasher, IdMap};
pub use metadata::{Deadline, Metadata, Priority, TraceContext, TraceContextError};
pub use name::{MethodName, NameError, ServiceName, split_full_name};
pub use payload::{ContentType, Payload};
pub use principal::{PeerAddr, Principal, PrincipalError, UnixCredentials};
pub use router::{MethodDescription, MethodInfo, Router};
pub use status::{Code, Status};
pub use stream::{CallKind, MessageStream, StreamCall, StreamHandler};
