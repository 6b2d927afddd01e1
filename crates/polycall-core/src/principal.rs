//! Who is calling: the transport peer a connection came from, and the principal a call
//! runs as.
//!
//! Both are types, never strings split on separators: a [`Principal`] is anonymous (with
//! the [`PeerAddr`] it came from), a bearer token's name, a password user, or what a
//! TLS client certificate proved (a SPIFFE ID or a DNS name). A Unix-socket peer is
//! identified by its kernel credentials (`SO_PEERCRED`: uid, gid, pid), not by the path
//! of the socket it connected to.
//!
//! The text form ([`Principal`]'s `Display` and [`Principal::parse`]) is stable: it is what
//! authorization rules, state permissions and logs name.
//!
//! | principal | text |
//! |---|---|
//! | anonymous TCP peer | `anonymous:127.0.0.1:5000` |
//! | anonymous Unix-socket peer | `anonymous:unix:uid=1000,gid=1000,pid=42` |
//! | bearer token | `token:ci` |
//! | password (OPAQUE) user | `user:alice` |
//! | certificate SPIFFE ID | `spiffe://example.org/ns/app` |
//! | certificate DNS name | `dns:client.example.org` |
//!
//! ```
//! use polycall_core::{PeerAddr, Principal, UnixCredentials};
//! let p = Principal::parse("user:alice").unwrap();
//! assert_eq!(p, Principal::User("alice".into()));
//! assert!(p.is_authenticated());
//! let unix = Principal::Anonymous(PeerAddr::Unix(UnixCredentials { uid: 1000, gid: 100, pid: Some(7) }));
//! assert_eq!(unix.to_string(), "anonymous:unix:uid=1000,gid=100,pid=7");
//! assert_eq!(Principal::parse(&unix.to_string()).unwrap(), unix);
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// A Unix-socket peer's credentials, as the kernel reports them (`SO_PEERCRED`): they
/// cannot be forged by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixCredentials {
    /// The peer process's user id.
    pub uid: u32,
    /// The peer process's group id.
    pub gid: u32,
    /// The peer process's id, where the platform reports it.
    pub pid: Option<u32>,
}

impl fmt::Display for UnixCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={},gid={}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, ",pid={pid}")?;
        }
        Ok(())
    }
}

impl UnixCredentials {
    fn parse(text: &str) -> Option<Self> {
        let (mut uid, mut gid, mut pid) = (None, None, None);
        for part in text.split(',') {
            let (k, v) = part.split_once('=')?;
            let v: u32 = v.parse().ok()?;
            match k {
                "uid" if uid.is_none() => uid = Some(v),
                "gid" if gid.is_none() => gid = Some(v),
                "pid" if pid.is_none() => pid = Some(v),
                _ => return None,
            }
        }
        Some(Self {
            uid: uid?,
            gid: gid?,
            pid,
        })
    }
}

/// Where a connection comes from, as its transport saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    /// A network peer (TCP, QUIC).
    Ip(SocketAddr),
    /// A Unix-socket peer, by its kernel credentials.
    Unix(UnixCredentials),
    /// A peer known only by a name (a client's view of the endpoint it dialled, an
    /// in-memory transport). Never contains `:` ambiguity issues: it is shown as is.
    Named(Arc<str>),
}

impl PeerAddr {
    /// A peer known only by `name`.
    pub fn named(name: impl AsRef<str>) -> Self {
        Self::Named(Arc::from(name.as_ref()))
    }

    /// Whether the peer is on this machine (loopback address or Unix socket).
    pub fn is_local(&self) -> bool {
        match self {
            Self::Ip(a) => a.ip().is_loopback(),
            Self::Unix(_) => true,
            Self::Named(n) => n.starts_with("unix:") || n.starts_with("localhost"),
        }
    }

    /// Reads the text form back (see [`PeerAddr`]'s `Display`).
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(creds) = text.strip_prefix("unix:") {
            return UnixCredentials::parse(creds).map(Self::Unix);
        }
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(Self::Ip(a));
        }
        (!text.is_empty()).then(|| Self::named(text))
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Unix(c) => write!(f, "unix:{c}"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

/// The identity a call runs as. Set by the side that authenticated the caller (or, for
/// an anonymous caller, by the transport that accepted it); a principal a caller claims
/// for itself is never trusted by a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// A caller that proved nothing, known by its transport peer: one per connection,
    /// so per-client limits still tell callers apart.
    Anonymous(PeerAddr),
    /// A bearer token, by the name the server configured for it.
    Token(Arc<str>),
    /// A password user (OPAQUE login).
    User(Arc<str>),
    /// A TLS client certificate's SPIFFE ID (`spiffe://trust-domain/path`).
    Spiffe(Arc<str>),
    /// A TLS client certificate's DNS name (when it has no SPIFFE ID).
    Dns(Arc<str>),
}

/// Why a text is not a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a principal: write anonymous:PEER, token:NAME, user:NAME, spiffe://DOMAIN/PATH or dns:NAME"
)]
pub struct PrincipalError(pub String);

impl Principal {
    /// The principal of an anonymous caller from `peer`.
    pub fn anonymous(peer: PeerAddr) -> Self {
        Self::Anonymous(peer)
    }

    /// A bearer token's principal.
    pub fn token(name: impl AsRef<str>) -> Self {
        Self::Token(Arc::from(name.as_ref()))
    }

    /// A password user's principal.
    pub fn user(name: impl AsRef<str>) -> Self {
        Self::User(Arc::from(name.as_ref()))
    }

    /// Whether the caller proved nothing.
    ///
    /// ```
    /// use polycall_core::{PeerAddr, Principal};
    /// assert!(Principal::anonymous(PeerAddr::Ip("127.0.0.1:5000".parse().unwrap())).is_anonymous());
    /// assert!(!Principal::user("alice").is_anonymous());
    /// ```
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Anonymous(_))
    }

    /// Whether the caller proved who it is.
    pub fn is_authenticated(&self) -> bool {
        !self.is_anonymous()
    }

    /// Reads the text form (see the module docs). Names may not be empty.
    pub fn parse(text: &str) -> Result<Self, PrincipalError> {
        let err = || PrincipalError(text.to_owned());
        let name = |rest: &str| {
            if rest.is_empty() || rest.chars().any(char::is_control) {
                Err(err())
            } else {
                Ok(Arc::from(rest))
            }
        };
        if let Some(rest) = text.strip_prefix("anonymous:") {
            return PeerAddr::parse(rest).map(Self::Anonymous).ok_or_else(err);
        }
        if let Some(rest) = text.strip_prefix("token:") {
            return name(rest).map(Self::Token);
        }
        if let Some(rest) = text.strip_prefix("user:") {
            return name(rest).map(Self::User);
        }
        if let Some(rest) = text.strip_prefix("dns:") {
            return name(rest).map(Self::Dns);
        }
        if text.starts_with("spiffe://") && text.len() > "spiffe://".len() {
            return name(text).map(Self::Spiffe);
        }
        Err(err())
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous(p) => write!(f, "anonymous:{p}"),
            Self::Token(n) => write!(f, "token:{n}"),
            Self::User(n) => write!(f, "user:{n}"),
            Self::Spiffe(id) => f.write_str(id),
            Self::Dns(n) => write!(f, "dns:{n}"),
        }
    }
}

impl std::str::FromStr for Principal {
    type Err = PrincipalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for p in [
            Principal::anonymous(PeerAddr::Ip("127.0.0.1:4000".parse().unwrap())),
            Principal::anonymous(PeerAddr::Ip("[::1]:4000".parse().unwrap())),
            Principal::anonymous(PeerAddr::Unix(UnixCredentials {
                uid: 0,
                gid: 0,
                pid: None,
            })),
            Principal::anonymous(PeerAddr::named("in-memory")),
            Principal::token("ci"),
            Principal::user("alice@example.org"),
            Principal::Spiffe("spiffe://example.org/ns/a".into()),
            Principal::Dns("client.example.org".into()),
        ] {
            assert_eq!(Principal::parse(&p.to_string()).unwrap(), p, "{p}");
        }
    }

    #[test]
    fn a_name_with_separators_stays_one_name() {
        // `@` and `:` inside a name never change who the principal is.
        let p = Principal::parse("user:bob@token:ci").unwrap();
        assert_eq!(p, Principal::user("bob@token:ci"));
        let unix = Principal::parse("anonymous:unix:uid=1,gid=2,pid=3").unwrap();
        assert!(unix.is_anonymous());
    }

    #[test]
    fn malformed_texts_are_refused() {
        for bad in [
            "",
            "alice",
            "user:",
            "token:",
            "spiffe://",
            "anonymous:",
            "anonymous:unix:uid=x",
            "anonymous:unix:uid=1,uid=2,gid=3",
            "root",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?}");
        }
    }
}
