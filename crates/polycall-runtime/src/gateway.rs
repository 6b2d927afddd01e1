//! The runtime's HTTP/JSON door (polycall-gateway): the same methods, authentication
//! and policy as its native listener.
//!
//! A request's bearer token is checked against the runtime's `[auth]` tokens, like a
//! native connection's token; without one the caller is `anonymous:PEER`, refused
//! when the runtime requires authentication. The call then passes the runtime's QoS
//! stack — authorization, rate limit, concurrency limit, faults — and its routing,
//! exactly as a native call does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use polycall_core::{
    BoxFuture, Call, CallKind, MethodDescription, MethodName, PeerAddr, Principal, ServiceName,
    Status,
};
use polycall_security::exchange::Authenticator;
use tower_service::Service;

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
}

impl GatewaySettings {
    /// A gateway on `listen` (4 MiB bodies, 30 s deadline).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_body: 4 << 20,
            timeout: Duration::from_secs(30),
        }
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

    fn call(&self, call: Call) -> BoxFuture {
        let mut stack = self.stack.current();
        Box::pin(async move {
            std::future::poll_fn(|cx| stack.poll_ready(cx)).await?;
            stack.call(call).await
        })
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
        if let Some(info) = self.state.builtins.info(service, method) {
            return Some(info.kind);
        }
        let (s, m) = (
            ServiceName::new(service).ok()?,
            MethodName::new(method).ok()?,
        );
        self.state.registry.kind(&s, &m)
    }
}
