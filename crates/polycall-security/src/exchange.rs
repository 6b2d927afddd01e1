//! Authentication in the handshake: who the peer is, proven before its first call.
//!
//! The protocol negotiates a method in `HELLO`/`WELCOME` and then carries the method's
//! messages in `AUTH` frames (polycall-proto). This module gives those bytes meaning:
//!
//! - on a server, an [`Authenticator`] lists the methods it accepts and runs one
//!   [`ServerExchange`] per connection; [`ServerAuth`] is the one polycall ships (bearer
//!   tokens, OPAQUE passwords, the TLS client certificate, optionally anonymous);
//! - on a client, [`Credentials`] say what the client can prove.
//!
//! The session's [`Principal`] — a token's name, a user, or the TLS client certificate's
//! identity (its SPIFFE ID, else its DNS name) — is stamped on every call the connection
//! receives; a principal the caller claims for itself is never trusted by a server. A
//! TLS client certificate makes the session authenticated even when the method
//! negotiated is `none`.
//!
//! Everything here is sans-IO: an exchange takes the peer's bytes and returns the next
//! message or a verdict; the connection that carries the `AUTH` frames (polycall-net)
//! decides where each step runs. An OPAQUE step costs milliseconds of CPU (Argon2 on the
//! client, group operations on the server), so polycall-net runs it on its offload
//! runtime, never on a connection's task. The same sources also check credentials that
//! arrive outside the handshake (libpolycall's dialects): [`Authenticator::verify_token`] and
//! [`Authenticator::verify_password`].
//!
//! A token login, both sides in memory:
//!
//! ```
//! use polycall_security::exchange::{Authenticator, Credentials, ServerAuth, Step};
//! use polycall_security::token::Tokens;
//!
//! let mut tokens = Tokens::default();
//! tokens.insert("ci", b"0123456789abcdef0123")?;
//! let server = ServerAuth::default().tokens(tokens);
//!
//! let credentials = Credentials::token(b"0123456789abcdef0123".to_vec());
//! let first = credentials.start().step(0, b"")?;
//! match server.start(credentials.method(), None).step(&first) {
//!     Step::Accept(principal) => assert_eq!(principal.to_string(), "token:ci"),
//!     other => panic!("refused: {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

#[cfg(feature = "opaque")]
use crate::opaque::{ClientLogin, OpaqueError, ServerLogin, ServerSetup, UserStore};
use crate::token::Tokens;
use bytes::Bytes;
use polycall_core::{Principal, Status};
pub use polycall_proto::AuthMethod;

/// The outcome of one step of a server's exchange.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes to the client and wait for its next message.
    Continue(Bytes),
    /// The client is authenticated as this principal.
    Accept(Principal),
    /// The client is refused (an `unauthenticated` status; the connection closes).
    Reject(Status),
}

/// One connection's authentication on the server side.
pub trait ServerExchange: Send {
    /// Handles the client's next message.
    fn step(&mut self, data: &[u8]) -> Step;
}

/// What a server accepts, and how it checks it.
pub trait Authenticator: std::fmt::Debug + Send + Sync + 'static {
    /// Methods accepted, preferred first ([`AuthMethod::None`] admits anonymous
    /// sessions).
    fn methods(&self) -> Vec<AuthMethod>;

    /// Starts checking a client that chose `method`. `transport_identity` is what the
    /// transport proved already (the TLS client certificate's identity), if anything.
    fn start(
        &self,
        method: AuthMethod,
        transport_identity: Option<&Principal>,
    ) -> Box<dyn ServerExchange>;

    /// Whether clients that prove nothing are admitted.
    fn admits_anonymous(&self) -> bool {
        self.methods().contains(&AuthMethod::None)
    }

    /// Checks a bearer token presented outside the handshake (a libpolycall PCR1
    /// request's `auth_token`), in constant time. By default none is accepted.
    fn verify_token(&self, token: &[u8]) -> Option<Principal> {
        let _ = token;
        None
    }

    /// Checks a user name and password presented outside the handshake (a libpolycall
    /// first-generation AUTH message) against the same sources the handshake uses. May
    /// take milliseconds of CPU: call it off the event loop. By default refused.
    fn verify_password(&self, user: &str, password: &[u8]) -> Option<Principal> {
        let _ = (user, password);
        None
    }
}

/// The server side of OPAQUE: the server's long-term setup and its users.
#[cfg(feature = "opaque")]
pub struct OpaqueUsers {
    /// The server's OPAQUE secret.
    pub setup: ServerSetup,
    /// Registration records by user name.
    pub users: UserStore,
}

#[cfg(feature = "opaque")]
impl std::fmt::Debug for OpaqueUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpaqueUsers")
            .field("users", &self.users.names().len())
            .finish()
    }
}

/// polycall's authenticator: bearer tokens, OPAQUE password logins and TLS client
/// certificates; anonymous sessions only when `anonymous` is set.
#[derive(Debug, Default, Clone)]
#[non_exhaustive]
pub struct ServerAuth {
    /// Accepted bearer tokens (principal `token:NAME`).
    pub tokens: Tokens,
    /// OPAQUE users (principal `user:NAME`); with the `opaque` feature.
    #[cfg(feature = "opaque")]
    pub opaque: Option<Arc<OpaqueUsers>>,
    /// Accept the TLS client certificate as proof (principal: its identity).
    pub certificate: bool,
    /// Admit clients that prove nothing (their calls carry no principal).
    pub anonymous: bool,
}

impl ServerAuth {
    /// Sets the accepted bearer tokens.
    pub fn tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets the OPAQUE users.
    #[cfg(feature = "opaque")]
    pub fn opaque(mut self, users: Arc<OpaqueUsers>) -> Self {
        self.opaque = Some(users);
        self
    }

    /// Sets whether the TLS client certificate is accepted as proof.
    pub fn certificate(mut self, certificate: bool) -> Self {
        self.certificate = certificate;
        self
    }

    /// Sets whether clients that prove nothing are admitted.
    pub fn anonymous(mut self, anonymous: bool) -> Self {
        self.anonymous = anonymous;
        self
    }
}

fn refused(why: impl Into<String>) -> Status {
    Status::unauthenticated(why)
}

impl Authenticator for ServerAuth {
    fn methods(&self) -> Vec<AuthMethod> {
        let mut m = Vec::new();
        if self.certificate {
            m.push(AuthMethod::Certificate);
        }
        #[cfg(feature = "opaque")]
        if self.opaque.is_some() {
            m.push(AuthMethod::Opaque);
        }
        if !self.tokens.is_empty() {
            m.push(AuthMethod::Token);
        }
        if self.anonymous || m.is_empty() {
            m.push(AuthMethod::None);
        }
        m
    }

    fn start(
        &self,
        method: AuthMethod,
        transport_identity: Option<&Principal>,
    ) -> Box<dyn ServerExchange> {
        match method {
            AuthMethod::Token => Box::new(TokenExchange(self.tokens.clone())),
            AuthMethod::Certificate => Box::new(CertificateExchange(transport_identity.cloned())),
            #[cfg(feature = "opaque")]
            AuthMethod::Opaque => match &self.opaque {
                Some(o) => Box::new(OpaqueServerExchange {
                    users: o.clone(),
                    login: None,
                }),
                None => Box::new(Refuse("OPAQUE logins are not configured here")),
            },
            #[cfg(not(feature = "opaque"))]
            AuthMethod::Opaque => Box::new(Refuse(OPAQUE_NOT_BUILT)),
            AuthMethod::None => Box::new(Refuse("no exchange for method none")),
        }
    }

    fn verify_token(&self, token: &[u8]) -> Option<Principal> {
        self.tokens.verify(token).map(Principal::token)
    }

    /// A password user (checked by running both sides of an OPAQUE login against the
    /// user's record, so the record is the only thing stored), or a bearer token given
    /// as user = its name and password = the token.
    fn verify_password(&self, user: &str, password: &[u8]) -> Option<Principal> {
        let token = self
            .tokens
            .verify(password)
            .filter(|name| *name == user)
            .map(Principal::token);
        #[cfg(feature = "opaque")]
        let token = token.or_else(|| {
            let o = self.opaque.as_ref()?;
            let (client, first) = ClientLogin::start(user, password).ok()?;
            let (server, response) = ServerLogin::start(&o.setup, &o.users, &first).ok()?;
            let (finish, _) = client.finish(&response).ok()?;
            server.finish(&finish).ok().map(Principal::user)
        });
        token
    }
}

/// What a build without the `opaque` feature answers an OPAQUE login.
#[cfg(not(feature = "opaque"))]
const OPAQUE_NOT_BUILT: &str =
    "OPAQUE password logins are not built into this program (enable polycall's `opaque` feature)";

struct Refuse(&'static str);

impl ServerExchange for Refuse {
    fn step(&mut self, _: &[u8]) -> Step {
        Step::Reject(refused(self.0))
    }
}

struct TokenExchange(Tokens);

impl ServerExchange for TokenExchange {
    fn step(&mut self, data: &[u8]) -> Step {
        match self.0.verify(data) {
            Some(name) => Step::Accept(Principal::token(name)),
            None => Step::Reject(refused(
                "the bearer token is not accepted here; check the token the client reads \
                 (its env or file reference) against the server's [auth.tokens]",
            )),
        }
    }
}

struct CertificateExchange(Option<Principal>);

impl ServerExchange for CertificateExchange {
    fn step(&mut self, _: &[u8]) -> Step {
        match self.0.take() {
            Some(identity) => Step::Accept(identity),
            None => Step::Reject(refused(
                "certificate authentication needs a TLS client certificate from the server's CA; \
                 none was presented",
            )),
        }
    }
}

#[cfg(feature = "opaque")]
struct OpaqueServerExchange {
    users: Arc<OpaqueUsers>,
    login: Option<ServerLogin>,
}

#[cfg(feature = "opaque")]
fn opaque_refusal(e: &OpaqueError) -> Status {
    match e {
        OpaqueError::Malformed(why) => refused(format!("malformed OPAQUE message: {why}")),
        // One answer for a wrong password, an unknown user and a replay.
        _ => refused("login failed: wrong user name or password"),
    }
}

#[cfg(feature = "opaque")]
impl ServerExchange for OpaqueServerExchange {
    fn step(&mut self, data: &[u8]) -> Step {
        match self.login.take() {
            None => match ServerLogin::start(&self.users.setup, &self.users.users, data) {
                Ok((login, response)) => {
                    self.login = Some(login);
                    Step::Continue(Bytes::from(response))
                }
                Err(e) => Step::Reject(opaque_refusal(&e)),
            },
            Some(login) => match login.finish(data) {
                Ok(name) => Step::Accept(Principal::user(name)),
                Err(e) => Step::Reject(opaque_refusal(&e)),
            },
        }
    }
}

/// What a client proves. Secrets are held in memory only as long as the value lives
/// and are never printed.
#[derive(Clone)]
pub enum Credentials {
    /// A bearer token.
    Token(Arc<Vec<u8>>),
    /// An OPAQUE password login: the password never leaves this process.
    Password {
        /// The user name.
        user: String,
        /// The password.
        password: Arc<Vec<u8>>,
    },
    /// The TLS client certificate (configure it on the TLS transport).
    Certificate,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Self::Certificate => f.write_str("Certificate"),
        }
    }
}

impl Credentials {
    /// A bearer token.
    pub fn token(token: Vec<u8>) -> Self {
        Self::Token(Arc::new(token))
    }

    /// A user name and password for OPAQUE.
    pub fn password(user: impl Into<String>, password: Vec<u8>) -> Self {
        Self::Password {
            user: user.into(),
            password: Arc::new(password),
        }
    }

    /// The method these credentials perform.
    pub fn method(&self) -> AuthMethod {
        match self {
            Self::Token(_) => AuthMethod::Token,
            Self::Password { .. } => AuthMethod::Opaque,
            Self::Certificate => AuthMethod::Certificate,
        }
    }

    /// The client's side of the exchange these credentials perform.
    pub fn start(&self) -> ClientExchange {
        ClientExchange {
            credentials: self.clone(),
            #[cfg(feature = "opaque")]
            login: None,
        }
    }
}

/// One connection's authentication on the client side.
pub struct ClientExchange {
    credentials: Credentials,
    #[cfg(feature = "opaque")]
    login: Option<ClientLogin>,
}

impl ClientExchange {
    /// The client's message answering the server's `step` (0: the first message).
    pub fn step(&mut self, step: u8, data: &[u8]) -> Result<Bytes, Status> {
        #[cfg(not(feature = "opaque"))]
        let _ = data;
        match (&self.credentials, step) {
            (Credentials::Token(t), 0) => Ok(Bytes::copy_from_slice(t)),
            (Credentials::Certificate, 0) => Ok(Bytes::new()),
            #[cfg(not(feature = "opaque"))]
            (Credentials::Password { .. }, _) => Err(Status::unsupported(OPAQUE_NOT_BUILT)),
            #[cfg(feature = "opaque")]
            (Credentials::Password { user, password }, 0) => {
                let (login, first) = ClientLogin::start(user, password)
                    .map_err(|e| Status::invalid_input(format!("OPAQUE login: {e}")))?;
                self.login = Some(login);
                Ok(Bytes::from(first))
            }
            #[cfg(feature = "opaque")]
            (Credentials::Password { .. }, _) => {
                let login = self.login.take().ok_or_else(|| {
                    Status::malformed("the server continued an OPAQUE login that is over")
                })?;
                let (finish, _session_key) = login.finish(data).map_err(|e| match e {
                    OpaqueError::Malformed(why) => {
                        Status::malformed(format!("the server's OPAQUE message: {why}"))
                    }
                    _ => refused("login failed: wrong user name or password"),
                })?;
                Ok(Bytes::from(finish))
            }
            (c, s) => Err(Status::malformed(format!(
                "the server asked for step {s} of {:?}, which has a single step",
                c.method()
            ))),
        }
    }
}

/// A build without the `opaque` feature refuses OPAQUE by name on both sides.
#[cfg(all(test, not(feature = "opaque")))]
mod without_opaque {
    use super::*;
    use polycall_core::Code;

    #[test]
    fn opaque_is_refused_as_not_built() {
        let auth = ServerAuth::default();
        assert!(!auth.methods().contains(&AuthMethod::Opaque));
        match auth.start(AuthMethod::Opaque, None).step(b"hello") {
            Step::Reject(status) => assert!(status.message.contains("not built"), "{status}"),
            other => panic!("an OPAQUE login was not refused: {other:?}"),
        }
        let err = Credentials::password("alice", b"secret".to_vec())
            .start()
            .step(0, b"")
            .unwrap_err();
        assert_eq!(err.code, Code::Unsupported);
        assert!(err.message.contains("`opaque` feature"), "{err}");
    }
}
