//! The runtime's HTTP/JSON door (polycall-gateway): the same methods, authentication
//! and policy as its native listener.
//!
//! A request's bearer token is checked against the runtime's `[auth]` tokens, like a
//! native connection's token; without one the caller is `anonymous:PEER`, refused
//! when the runtime requires authentication. The call then passes the runtime's QoS
//! stack — authorization, rate limit, concurrency limit, faults — and its routing,
//! exactly as a native call does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use polycall_core::{
    BoxFuture, Call, CallKind, MessageStream, MethodDescription, PeerAddr, Principal, Status,
    StreamCall,
};
use polycall_gateway::{RouteFile, Routes};
use polycall_security::exchange::Authenticator;

use crate::{LiveStack, State};

/// How the runtime serves HTTP (`polycall run --http ADDR`, `[gateway]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewaySettings {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// A call's deadline when the request states none.
    pub timeout: Duration,
    /// The routes file (routes, API versions, API keys), compiled when the runtime
    /// starts.
    pub routes: Option<PathBuf>,
}

impl GatewaySettings {
    /// A gateway on `listen` (4 MiB bodies, 30 s deadline).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_body: 4 << 20,
            timeout: Duration::from_secs(30),
            routes: None,
        }
    }

    /// Serves the routes of this file too (docs/gateway.md).
    pub fn routes(mut self, file: impl Into<PathBuf>) -> Self {
        self.routes = Some(file.into());
        self
    }

    /// Reads and compiles the routes file, its API keys' secrets included.
    pub(crate) fn compile_routes(
        &self,
    ) -> Result<Option<Arc<Routes>>, polycall_gateway::RouteFileError> {
        self.routes
            .as_deref()
            .map(|f| {
                RouteFile::read(f)
                    .and_then(|file| Routes::compile(&file))
                    .map(Arc::new)
            })
            .transpose()
    }

    /// Sets the largest request body, in bytes.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets the deadline of requests that state none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The HTTP routes of method `name` for `sys.describe`: its configured routes and,
/// when the gateway exposes every method, its own path.
pub(crate) fn http_of(routes: Option<&Routes>, name: &str) -> serde_json::Value {
    let all = match routes {
        Some(r) => r.http_of(name),
        None => vec![polycall_gateway::HttpRoute::method_path(name)],
    };
    serde_json::to_value(all).unwrap_or_default()
}

/// The runtime as the gateway's backend.
pub(crate) struct RuntimeBackend {
    pub(crate) state: Arc<State>,
    pub(crate) stack: LiveStack,
    pub(crate) auth: Option<Arc<dyn Authenticator>>,
}

impl polycall_gateway::Backend for RuntimeBackend {
    fn authenticate(&self, bearer: Option<&str>, peer: SocketAddr) -> Result<Principal, Status> {
        match bearer {
            Some(token) => self
                .auth
                .as_ref()
                .and_then(|a| a.verify_token(token.as_bytes()))
                .ok_or_else(|| {
                    tracing::info!(%peer, "gateway: bearer token refused");
                    Status::unauthenticated(
                        "the bearer token is not accepted here; send a token the runtime's [auth] lists",
                    )
                }),
            None if self.auth.as_ref().is_some_and(|a| !a.admits_anonymous()) => {
                Err(Status::unauthenticated(
                    "this runtime requires authentication: send Authorization: Bearer TOKEN",
                ))
            }
            None => Ok(Principal::anonymous(PeerAddr::Ip(peer))),
        }
    }

    fn authenticate_certificate(&self, identity: Principal, peer: SocketAddr) -> Option<Principal> {
        // As on the native listener: with certificate authentication on (or no
        // authentication configured), the verified identity is the caller.
        let takes = self.auth.as_ref().is_none_or(|a| {
            a.methods()
                .contains(&polycall_security::exchange::AuthMethod::Certificate)
        });
        if !takes {
            tracing::debug!(%peer, "gateway: a client certificate, but certificate authentication is off");
        }
        takes.then_some(identity)
    }

    fn call(&self, call: Call) -> BoxFuture {
        self.stack.current().oneshot(call)
    }

    fn call_stream(&self, call: StreamCall) -> MessageStream {
        crate::connection::serve_stream(&self.state, &self.stack, call)
    }

    fn methods(&self) -> Vec<MethodDescription> {
        let mut all = self.state.builtins.describe();
        all.extend(
            self.state
                .registry
                .snapshot()
                .into_iter()
                .map(|(name, info, _)| MethodDescription { name, info }),
        );
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.dedup_by(|a, b| a.name == b.name);
        all
    }

    fn kind(&self, service: &str, method: &str) -> Option<CallKind> {
        self.state.kind(service, method)
    }
}
