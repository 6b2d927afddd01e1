//! Serving PCR1 and first-generation connections (the `compat` feature).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use polycall_core::{Call, Code, Metadata, Payload, Principal, Reply, Status};
use polycall_net::auth::Authenticator;
use polycall_net::{BoxFuture, BoxIo, LegacyConnection, LegacyServe, Peer};
use polycall_proto::detect::Dialect;
use polycall_proto::legacy::{self, pcr1, v1};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tower_service::Service;

use crate::State;

use super::CompatConfig;

/// How the runtime's authentication policy applies to legacy connections.
#[derive(Clone)]
pub(crate) struct LegacyPolicy {
    /// The runtime's authenticator: the sources tokens and passwords are checked against.
    pub(crate) auth: Option<Arc<dyn Authenticator>>,
    /// Whether every client must prove who it is.
    pub(crate) required: bool,
    /// Why the legacy dialects are not served at all (a secured runtime without
    /// `compat.when_secured`).
    pub(crate) refused: Option<String>,
}

impl LegacyPolicy {
    /// The policy of a runtime with `auth`, listening beyond loopback when `exposed`.
    pub(crate) fn new(
        config: &CompatConfig,
        auth: Option<Arc<dyn Authenticator>>,
        exposed: bool,
    ) -> Self {
        let required = auth.as_ref().is_some_and(|a| !a.admits_anonymous());
        let refused = ((required || exposed) && !config.when_secured).then(|| {
            let why = match (required, exposed) {
                (true, true) => "requires authentication and listens beyond loopback",
                (true, false) => "requires authentication",
                _ => "listens beyond loopback",
            };
            format!(
                "this runtime {why}, and serves libpolycall's dialects there only when \
                 compat.when_secured = true (then with credentials); use a polycall client"
            )
        });
        Self {
            auth,
            required,
            refused,
        }
    }
}

/// Serves legacy connections for one runtime.
pub(crate) struct Compat {
    state: Arc<State>,
    /// The QoS stack over [`Route`], as native connections have it.
    stack: crate::LiveStack,
    config: CompatConfig,
    policy: LegacyPolicy,
}

impl Compat {
    pub(crate) fn new(
        state: Arc<State>,
        stack: crate::LiveStack,
        mut config: CompatConfig,
        policy: LegacyPolicy,
    ) -> Self {
        config.max_message = config.max_message.min(legacy::MAX_MESSAGE);
        Self {
            state,
            stack,
            config,
            policy,
        }
    }
}

impl LegacyServe for Compat {
    fn serve(&self, conn: LegacyConnection) -> BoxFuture<'static, ()> {
        let this = Conn {
            ctx: Ctx {
                state: self.state.clone(),
                stack: self.stack.clone(),
                config: self.config.clone(),
                policy: self.policy.clone(),
                principal: conn.peer.anonymous(),
                peer: conn.peer,
            },
            io: conn.io,
            buf: BytesMut::with_capacity(4096),
            stopping: conn.stopping,
        };
        match conn.dialect {
            Dialect::Pcr1 => Box::pin(this.pcr1()),
            Dialect::LegacyV1 => Box::pin(this.v1()),
            Dialect::Polycall => Box::pin(async {}),
        }
    }
}

/// What a connection's calls need (shared by reference while the stream is in use).
struct Ctx {
    state: Arc<State>,
    stack: crate::LiveStack,
    config: CompatConfig,
    policy: LegacyPolicy,
    /// Who the connection's calls run as: anonymous (its peer) until it proves more.
    principal: Principal,
    peer: Peer,
}

/// One legacy connection.
struct Conn {
    ctx: Ctx,
    io: BoxIo,
    buf: BytesMut,
    stopping: watch::Receiver<bool>,
}

enum Read {
    More,
    Closed,
}

async fn until_stopped(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Conn {
    /// Reads more bytes before `deadline`; `Closed` on end of stream, error, timeout, or
    /// shutdown while no message is in progress.
    async fn read_more(&mut self, deadline: tokio::time::Instant) -> Read {
        let idle = self.buf.is_empty();
        if idle && *self.stopping.borrow() {
            return Read::Closed;
        }
        let stop = until_stopped(self.stopping.clone());
        tokio::select! {
            r = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)) => match r {
                Ok(Ok(n)) if n > 0 => Read::More,
                Ok(Ok(_)) => Read::Closed,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.ctx.peer, error = %e, "legacy connection failed");
                    Read::Closed
                }
                Err(_) => {
                    tracing::debug!(peer = %self.ctx.peer, partial = !idle, "legacy connection: no whole message within the read timeout; closing");
                    Read::Closed
                }
            },
            () = stop, if idle => Read::Closed,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> bool {
        tokio::time::timeout(self.ctx.config.read_timeout, self.io.write_all(bytes))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }

    // ---------------------------------------------------------------- PCR1

    async fn pcr1(mut self) {
        if !self.ctx.config.pcr1 {
            let body = pcr1::error_body(
                Code::Unsupported,
                "this runtime does not serve libpolycall PCR1 clients (compat.pcr1 is off)",
            );
            self.pcr1_send(pcr1::Kind::Response, 0, &body).await;
            return self.close().await;
        }
        if let Some(why) = self.ctx.policy.refused.clone() {
            tracing::info!(peer = %self.ctx.peer, "PCR1 client refused: {why}");
            let body = pcr1::error_body(Code::Unsupported, &why);
            self.pcr1_send(pcr1::Kind::Response, 0, &body).await;
            return self.close().await;
        }
        let decoder = pcr1::Decoder {
            max: self.ctx.config.max_message,
        };
        loop {
            let deadline = tokio::time::Instant::now() + self.ctx.config.read_timeout;
            let msg = loop {
                match decoder.decode(&mut self.buf) {
                    Ok(Some(m)) => break m,
                    Ok(None) => {
                        if let Read::Closed = self.read_more(deadline).await {
                            return self.close().await;
                        }
                    }
                    Err(e) => {
                        // The framing cannot be trusted past a bad header: answer, close.
                        let id = e.correlation_id().unwrap_or(0);
                        let body =
                            pcr1::error_body(e.code(), &format!("{e}; the connection is closed"));
                        self.pcr1_send(pcr1::Kind::Response, id, &body).await;
                        return self.close().await;
                    }
                }
            };
            let answer = match msg.kind {
                pcr1::Kind::Request => self.ctx.pcr1_request(&msg.payload).await,
                pcr1::Kind::Control => self.ctx.pcr1_control(&msg.payload).await,
                pcr1::Kind::Response | pcr1::Kind::ControlReply => pcr1::error_body(
                    Code::Malformed,
                    "a client sends requests (type 1) and control messages (type 3), not answers",
                ),
            };
            if !self
                .pcr1_send(msg.kind.answer(), msg.correlation_id, &answer)
                .await
            {
                return self.close().await;
            }
        }
    }

    /// Writes an answer; one over the size limit becomes `output.too_large`.
    async fn pcr1_send(&mut self, kind: pcr1::Kind, id: u32, body: &Value) -> bool {
        let text = body.to_string();
        let mut out = BytesMut::new();
        if pcr1::encode_with_limit(
            kind,
            id,
            text.as_bytes(),
            self.ctx.config.max_message,
            &mut out,
        )
        .is_err()
        {
            let e = pcr1::error_body(
                Code::TooLarge,
                &format!(
                    "the answer is {} bytes, over the PCR1 limit of {} bytes",
                    text.len(),
                    self.ctx.config.max_message
                ),
            );
            out.clear();
            let _ = pcr1::encode(kind, id, e.to_string().as_bytes(), &mut out);
        }
        self.write(&out).await
    }

    // ---------------------------------------------------------- first generation

    async fn v1_send(&mut self, kind: v1::MsgType, sequence: u32, payload: &[u8]) -> bool {
        let mut out = BytesMut::new();
        if v1::encode(kind, 0, sequence, payload, &mut out).is_err() {
            out.clear();
            let e = v1_error(
                Code::TooLarge,
                &format!(
                    "the answer is {} bytes, over the limit of 1 MiB",
                    payload.len()
                ),
            );
            let _ = v1::encode(v1::MsgType::Error, 0, sequence, &e, &mut out);
        }
        self.write(&out).await
    }

    async fn v1(mut self) {
        if !self.ctx.config.legacy_v1 {
            let e = v1_error(
                Code::Unsupported,
                "this runtime does not serve libpolycall first-generation clients (compat.legacy_v1 is off)",
            );
            self.v1_send(v1::MsgType::Error, 0, &e).await;
            return self.close().await;
        }
        if let Some(why) = self.ctx.policy.refused.clone() {
            tracing::info!(peer = %self.ctx.peer, "first-generation client refused: {why}");
            self.v1_send(v1::MsgType::Error, 0, &v1_error(Code::Unsupported, &why))
                .await;
            return self.close().await;
        }
        let decoder = v1::Decoder {
            max: self.ctx.config.max_message,
        };
        let mut session = v1::Session::default();
        loop {
            let deadline = tokio::time::Instant::now() + self.ctx.config.read_timeout;
            let msg = loop {
                match decoder.decode(&mut self.buf) {
                    Ok(Some(m)) => break m,
                    Ok(None) => {
                        if let Read::Closed = self.read_more(deadline).await {
                            session.close();
                            return self.close().await;
                        }
                    }
                    Err(e) => {
                        session.fail();
                        let sequence = match e {
                            v1::V1Error::BadType { sequence, .. }
                            | v1::V1Error::TooLarge { sequence, .. }
                            | v1::V1Error::BadChecksum { sequence, .. } => sequence,
                            _ => 0,
                        };
                        let body =
                            v1_error(Code::Malformed, &format!("{e}; the connection is closed"));
                        self.v1_send(v1::MsgType::Error, sequence, &body).await;
                        session.close();
                        return self.close().await;
                    }
                }
            };
            let sequence = msg.sequence;
            let received = match session.receive(msg) {
                Ok(r) => r,
                Err(e) => {
                    let code = match e {
                        v1::V1Error::UnsupportedFlags(_) | v1::V1Error::UnknownFlags(_) => {
                            Code::Unsupported
                        }
                        v1::V1Error::OutOfOrder {
                            kind: v1::MsgType::Command,
                            ..
                        } => Code::Unauthenticated,
                        _ => Code::Malformed,
                    };
                    let fatal = session.state() == v1::SessionState::Error;
                    let msg = if fatal {
                        format!("{e}; the connection is closed")
                    } else {
                        e.to_string()
                    };
                    let ok = self
                        .v1_send(v1::MsgType::Error, sequence, &v1_error(code, &msg))
                        .await;
                    if fatal || !ok {
                        session.close();
                        return self.close().await;
                    }
                    continue;
                }
            };
            let sequence = received.sequence;
            let sent = match received.input {
                v1::Input::Handshake(h) => {
                    let answer = v1::Handshake {
                        version: v1::VERSION,
                        flags: h.flags,
                    }
                    .encode();
                    self.v1_send(v1::MsgType::Response, sequence, &answer).await
                }
                v1::Input::Auth(c) => {
                    let verified = self.ctx.verify(&c).await;
                    session.authenticated(verified.is_some());
                    if let Some(principal) = verified {
                        tracing::debug!(peer = %self.ctx.peer, %principal, "first-generation login");
                        self.ctx.principal = principal;
                        let body = json!({"authenticated": true, "username": c.username});
                        self.v1_send(v1::MsgType::Response, sequence, body.to_string().as_bytes())
                            .await
                    } else {
                        let why = format!(
                            "login refused for {:?}: wrong user name or password (first-generation \
                             logins are checked against [auth]: a token as user = its name and \
                             password = the token, or an OPAQUE user's password); the connection is closed",
                            c.username
                        );
                        tracing::info!(peer = %self.ctx.peer, user = %c.username, "first-generation login refused");
                        let body = v1_error(Code::Unauthenticated, &why);
                        self.v1_send(v1::MsgType::Error, sequence, &body).await;
                        session.close();
                        return self.close().await;
                    }
                }
                v1::Input::Command(cmd) => {
                    let deadline = self.ctx.config.default_deadline;
                    let principal = self.ctx.principal.clone();
                    match self
                        .ctx
                        .call(&cmd.command, cmd.data, deadline, principal)
                        .await
                    {
                        Ok(out) => {
                            self.v1_send(
                                v1::MsgType::Response,
                                sequence,
                                out.to_string().as_bytes(),
                            )
                            .await
                        }
                        Err(s) => {
                            let body = v1_error(s.code, &s.message);
                            self.v1_send(v1::MsgType::Error, sequence, &body).await
                        }
                    }
                }
                v1::Input::Heartbeat(p) => self.v1_send(v1::MsgType::Heartbeat, sequence, &p).await,
            };
            if !sent {
                session.close();
                return self.close().await;
            }
        }
    }
}

impl Ctx {
    /// Calls `name` with `input` through the runtime's stack, within the deadline, as
    /// `principal`.
    async fn call(
        &self,
        name: &str,
        input: Value,
        deadline: Duration,
        principal: Principal,
    ) -> Result<Value, Status> {
        let payload = Payload::json(&input).map_err(|e| Status::internal(e.to_string()))?;
        let mut call = Call::new(name, payload).map_err(|e| {
            Status::unknown_method(format!("{name:?} is not an operation name: {e}"))
        })?;
        call.metadata = Metadata::default()
            .with_timeout(Instant::now(), deadline)
            .with_principal(principal);
        let mut stack = self.stack.current();
        let run = async move {
            std::future::poll_fn(|cx| stack.poll_ready(cx)).await?;
            stack.call(call).await
        };
        let reply = tokio::time::timeout(deadline, run).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "{name} did not finish within its deadline of {} ms",
                deadline.as_millis()
            ))
        })??;
        reply_json(reply)
    }

    fn deadline_of(&self, ms: Option<u64>) -> Duration {
        match ms {
            Some(ms) if ms > 0 => Duration::from_millis(ms),
            _ => self.config.default_deadline,
        }
    }

    async fn pcr1_request(&self, payload: &[u8]) -> Value {
        let req = match pcr1::Request::parse(payload) {
            Ok(r) => r,
            Err(e) => return pcr1::error_body(Code::Malformed, &e.0),
        };
        let principal = match self.token_principal(req.auth_token.as_deref()) {
            Ok(p) => p,
            Err(denied) => return denied,
        };
        let name = format!("{}.{}", req.service, req.operation);
        let deadline = self.deadline_of(req.deadline_ms);
        match self.call(&name, req.input, deadline, principal).await {
            Ok(out) => pcr1::ok_response(out),
            Err(s) => pcr1::error_body(s.code, &s.message),
        }
    }

    async fn pcr1_control(&self, payload: &[u8]) -> Value {
        let control = match pcr1::Control::parse(payload) {
            Ok(c) => c,
            Err(e) => return pcr1::error_body(Code::Malformed, &e.0),
        };
        if control.action != pcr1::Action::Shutdown
            && let Err(denied) = self.token_principal(control.auth_token.as_deref())
        {
            return denied;
        }
        match control.action {
            pcr1::Action::Ping => pcr1::ok_control(json!("pong")),
            pcr1::Action::Health => pcr1::ok_control(self.state.health()),
            pcr1::Action::Describe => pcr1::ok_control(describe(&self.state)),
            pcr1::Action::Shutdown => match control.auth_token.as_deref() {
                Some(t) if self.state.token_matches(t) => {
                    tracing::info!(peer = %self.peer, "shutdown requested by a PCR1 client");
                    self.state.request_shutdown();
                    pcr1::ok_control(json!({"stopping": true}))
                }
                Some(_) => pcr1::error_body(
                    Code::PermissionDenied,
                    "wrong auth_token: shutdown needs the runtime's token (runtime.token in its state directory)",
                ),
                None => pcr1::error_body(
                    Code::Unauthenticated,
                    "shutdown needs \"auth_token\": the runtime's token (runtime.token in its state directory)",
                ),
            },
        }
    }

    /// Who a PCR1 message's `auth_token` proves the caller is. Without a token the
    /// caller is anonymous, which a runtime requiring authentication refuses; a token
    /// that is not accepted is refused either way. The answer on refusal is the
    /// dialect's `auth.denied`.
    fn token_principal(&self, token: Option<&str>) -> Result<Principal, Value> {
        match token {
            Some(t) => self
                .policy
                .auth
                .as_ref()
                .and_then(|a| a.verify_token(t.as_bytes()))
                .ok_or_else(|| {
                    tracing::info!(peer = %self.peer, "PCR1 auth_token refused");
                    pcr1::error_body(
                        Code::Unauthenticated,
                        "the auth_token is not accepted here; send a token the runtime's [auth] file lists",
                    )
                }),
            None if self.policy.required => {
                tracing::info!(peer = %self.peer, "PCR1 message without auth_token refused");
                Err(pcr1::error_body(
                    Code::Unauthenticated,
                    "this runtime requires authentication: send \"auth_token\" with a token its [auth] file lists",
                ))
            }
            None => Ok(self.principal.clone()),
        }
    }

    /// The principal first-generation credentials prove, checked off the event loop
    /// against the runtime's tokens and OPAQUE users.
    async fn verify(&self, c: &v1::Credentials) -> Option<Principal> {
        let auth = self.policy.auth.clone()?;
        let (user, password) = (c.username.clone(), c.password.clone());
        polycall_net::offload::run(move || auth.verify_password(&user, password.as_bytes()))
            .await
            .ok()
            .flatten()
    }
}

/// A first-generation error payload: `{"code", "message"}` with the PCR1 code string.
fn v1_error(code: Code, message: &str) -> Vec<u8> {
    json!({"code": code.pcr1(), "message": message})
        .to_string()
        .into_bytes()
}

/// A reply's payload as JSON: empty is `null`; text that is not JSON is a string.
fn reply_json(reply: Reply) -> Result<Value, Status> {
    let bytes = &reply.payload.bytes;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Value::String(s.to_owned())),
        Err(_) => Err(Status::internal(format!(
            "the operation answered {} bytes that are neither JSON nor text; libpolycall clients read JSON",
            bytes.len()
        ))),
    }
}

/// `describe` for PCR1: every operation with its one-line summary, schema hints and
/// whether it is idempotent.
fn describe(state: &State) -> Value {
    let all = state.describe();
    let ops: Vec<Value> = all["methods"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    let name = m["name"].as_str().unwrap_or_default();
                    let (service, operation) = name.split_once('.').unwrap_or((name, ""));
                    json!({
                        "name": name,
                        "service": service,
                        "operation": operation,
                        "summary": m["summary"],
                        "input": m["input"],
                        "output": m["output"],
                        "idempotent": m["idempotent"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "operations": ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_json() {
        let r = |b: &'static [u8]| reply_json(Reply::new(Payload::raw(b)));
        assert_eq!(r(b"").unwrap(), Value::Null);
        assert_eq!(r(b"{\"a\":1}").unwrap(), json!({"a": 1}));
        assert_eq!(r(b"plain text").unwrap(), json!("plain text"));
        assert_eq!(r(&[0xff, 0xfe]).unwrap_err().code, Code::Internal);
    }
}
