//! What the gateway calls: a server's own authentication, routing and policy.

use std::net::SocketAddr;

use polycall_core::{
    BoxFuture, Call, CallKind, MessageStream, MethodDescription, Principal, Status, StreamCall,
};

/// The server behind a gateway. The gateway turns an HTTP request into a [`Call`]
/// stamped with the principal [`authenticate`](Backend::authenticate) proved, and hands
/// it to [`call`](Backend::call), which applies the same authorization, limits and
/// routing as a native connection's calls get: HTTP is one more door to the same
/// methods under the same policy.
pub trait Backend: Send + Sync + 'static {
    /// Who the request's caller is: `bearer` is the token of an `Authorization: Bearer`
    /// header (`None`: no header), `peer` the TCP peer. A backend that requires
    /// authentication answers `unauthenticated` without a valid token.
    fn authenticate(&self, bearer: Option<&str>, peer: SocketAddr) -> Result<Principal, Status>;

    /// Who a TLS client certificate proves the caller is: `identity` is the SPIFFE ID
    /// or DNS name of a chain the handshake verified. `None` (the default): this
    /// backend does not take certificates, and the request is authenticated as if it
    /// had none. A bearer token, when the request has one, is used instead.
    fn authenticate_certificate(&self, identity: Principal, peer: SocketAddr) -> Option<Principal> {
        let _ = (identity, peer);
        None
    }

    /// Runs `call`.
    fn call(&self, call: Call) -> BoxFuture;

    /// Runs a streaming call (server, client or bidirectional stream) under the same
    /// policy; the reply messages' stream. Dropping it cancels the call. A backend
    /// that serves no streams keeps this default, which answers `unsupported`.
    fn call_stream(&self, call: StreamCall) -> MessageStream {
        polycall_core::stream::fail(Status::unsupported(format!(
            "{} is a streaming method and this server does not stream over HTTP",
            call.full_name()
        )))
    }

    /// The methods served now (the OpenAPI document and the docs page list them).
    fn methods(&self) -> Vec<MethodDescription>;

    /// The shape of method `service.method` (`None`: not served). Asked for every
    /// request, so a backend answers it without listing every method.
    fn kind(&self, service: &str, method: &str) -> Option<CallKind> {
        let name = format!("{service}.{method}");
        self.methods()
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.info.kind)
    }
}
