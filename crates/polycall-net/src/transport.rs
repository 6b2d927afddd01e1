//! Transports: how bytes get between two peers.
//!
//! A [`Transport`] connects to and listens on [`Endpoint`]s and yields byte streams; a
//! [`crate::Connection`] runs the polycall protocol over one stream and multiplexes every
//! call on it. TCP and Unix-domain sockets are built in. A transport with a native
//! stream per call (QUIC, WebTransport) implements the same trait with one stream for
//! the polycall connection, or offers its own per-call streams through its own
//! [`Transport::name`]d type; either way the layers above speak only [`Transport`].

use std::future::Future;
use std::io;
use std::pin::Pin;

use polycall_core::{PeerAddr, Principal, UnixCredentials};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::Endpoint;

/// Who is at the other end of a stream: where it connected from, and what the transport
/// proved about it.
///
/// ```
/// use polycall_core::{PeerAddr, Principal};
/// use polycall_net::Peer;
/// let p = Peer::from("127.0.0.1:5000");
/// assert_eq!(p.addr, PeerAddr::Ip("127.0.0.1:5000".parse().unwrap()));
/// assert_eq!(p.anonymous(), Principal::Anonymous(p.addr.clone()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Where the peer connected from (a Unix-socket peer by its kernel credentials).
    pub addr: PeerAddr,
    /// What the transport verified about the peer: a TLS client certificate's SPIFFE ID
    /// or DNS name. `None` when it proved nothing.
    pub identity: Option<Principal>,
}

impl Peer {
    /// A peer that proved nothing.
    pub fn new(addr: PeerAddr) -> Self {
        Self {
            addr,
            identity: None,
        }
    }

    /// The principal of this peer when it authenticates no further.
    pub fn anonymous(&self) -> Principal {
        Principal::Anonymous(self.addr.clone())
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.identity {
            Some(id) => write!(f, "{id} ({})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl From<&str> for Peer {
    /// A peer described by text: a socket address, or any other name (a client's view of
    /// the endpoint it dialled).
    fn from(text: &str) -> Self {
        Self::new(PeerAddr::parse(text).unwrap_or_else(|| PeerAddr::named(text)))
    }
}

impl From<String> for Peer {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<&Endpoint> for Peer {
    fn from(e: &Endpoint) -> Self {
        match e {
            Endpoint::Tcp(hp) => Self::from(hp.as_str()),
            Endpoint::Unix(_) => Self::new(PeerAddr::named(e.to_string())),
        }
    }
}

/// A byte stream a connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed byte stream.
pub type BoxIo = Box<dyn Io>;

/// A boxed future, as transports return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of accepted byte streams.
pub trait Listener: Send + 'static {
    /// The next accepted stream and who is at its other end.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, Peer)>>;
    /// Where the listener is bound (with the real port when port 0 was asked for).
    fn local_endpoint(&self) -> Endpoint;
}

/// Connects and listens.
pub trait Transport: Send + Sync + 'static {
    /// Opens a stream to `endpoint`.
    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<BoxIo>>;
    /// Listens on `endpoint`.
    fn bind(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// Whether the transport authenticates every byte already (TLS, QUIC): then the
    /// protocol's CRC32C trailer is not negotiated.
    fn authenticates_bytes(&self) -> bool {
        false
    }
    /// A short name for logs.
    fn name(&self) -> &'static str;
}

/// Whether a connection over `transport` offers the protocol's CRC32C trailer: the one
/// place this is decided. CRC32C guards bytes on a wire TCP's checksum may miss; a
/// transport that authenticates every byte (TLS, QUIC) needs none, and neither does a
/// path with no wire: a connecting side that knows its `peer` is loopback or a Unix
/// socket leaves it out. (A listener passes `None`: it cannot tell its clients' paths,
/// and the trailer is only used when both sides offer it.)
///
/// ```
/// use polycall_net::{Plain, crc32c_wanted};
/// assert!(crc32c_wanted(&Plain, Some(&"10.0.0.7:7000".parse().unwrap())));
/// assert!(!crc32c_wanted(&Plain, Some(&"127.0.0.1:7000".parse().unwrap())));
/// assert!(crc32c_wanted(&Plain, None));
/// ```
pub fn crc32c_wanted(transport: &dyn Transport, peer: Option<&Endpoint>) -> bool {
    !transport.authenticates_bytes() && !peer.is_some_and(Endpoint::is_loopback)
}

/// Applies [`crc32c_wanted`] to the features `settings` offers (what `Channel`,
/// `Server` and the runtime's `Provider` do before they connect or listen).
pub fn settle_crc32c(
    settings: &mut polycall_proto::Settings,
    transport: &dyn Transport,
    peer: Option<&Endpoint>,
) {
    if !crc32c_wanted(transport, peer) {
        settings.features &= !polycall_proto::features::CRC32C;
    }
}

/// TCP for `host:port` endpoints and Unix-domain sockets for `unix:` ones, with the
/// kernel's default socket buffers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

/// Like [`Plain`], with bounded kernel socket buffers for TCP.
///
/// The kernel sends a connection's bytes in order: whatever sits in the send and
/// receive buffers is ahead of a frame queued now, whatever its priority. Bounding the
/// buffers keeps that backlog in polycall's own queues, where frames are scheduled by
/// priority class; the cost is less buffering for bulk transfers on links with a large
/// bandwidth-delay product.
///
/// ```
/// use polycall_net::TunedTcp;
/// let t = TunedTcp { send_buffer: Some(128 * 1024), recv_buffer: Some(128 * 1024) };
/// # let _ = t;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TunedTcp {
    /// SO_SNDBUF in bytes (the kernel may double it).
    pub send_buffer: Option<usize>,
    /// SO_RCVBUF in bytes.
    pub recv_buffer: Option<usize>,
}

impl TunedTcp {
    fn socket_for(&self, addr: &std::net::SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        let s = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(n) = self.send_buffer {
            s.set_send_buffer_size(n.try_into().unwrap_or(u32::MAX))?;
        }
        if let Some(n) = self.recv_buffer {
            s.set_recv_buffer_size(n.try_into().unwrap_or(u32::MAX))?;
        }
        Ok(s)
    }
}

async fn first_addr(hp: &str) -> io::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(hp).await?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{hp} resolves to no address"),
        )
    })
}

impl Transport for TunedTcp {
    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<BoxIo>> {
        let (endpoint, this) = (endpoint.clone(), *self);
        Box::pin(async move {
            match endpoint {
                Endpoint::Tcp(hp) => {
                    let addr = first_addr(&hp).await?;
                    let s = this.socket_for(&addr)?.connect(addr).await?;
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as BoxIo)
                }
                unix => Plain.connect(&unix).await,
            }
        })
    }

    fn bind(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let (endpoint, this) = (endpoint.clone(), *self);
        Box::pin(async move {
            match endpoint {
                Endpoint::Tcp(hp) => {
                    let addr = first_addr(&hp).await?;
                    let s = this.socket_for(&addr)?;
                    s.set_reuseaddr(true)?;
                    s.bind(addr)?;
                    // Accepted sockets inherit the listener's buffer sizes.
                    Ok(Box::new(Tcp(s.listen(1024)?)) as Box<dyn Listener>)
                }
                unix => Plain.bind(&unix).await,
            }
        })
    }

    fn name(&self) -> &'static str {
        "tuned-tcp"
    }
}

struct Tcp(TcpListener);
struct Unix(UnixListener, std::path::PathBuf);

impl Listener for Tcp {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, Peer)>> {
        Box::pin(async move {
            let (s, addr) = self.0.accept().await?;
            s.set_nodelay(true)?;
            Ok((Box::new(s) as BoxIo, Peer::new(PeerAddr::Ip(addr))))
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        match self.0.local_addr() {
            Ok(a) => Endpoint::Tcp(a.to_string()),
            Err(_) => Endpoint::Tcp("unknown:0".into()),
        }
    }
}

impl Listener for Unix {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxIo, Peer)>> {
        Box::pin(async move {
            let (s, _) = self.0.accept().await?;
            // Who connected, as the kernel says (SO_PEERCRED), not where they connected.
            let cred = s.peer_cred()?;
            let addr = PeerAddr::Unix(UnixCredentials {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
            });
            Ok((Box::new(s) as BoxIo, Peer::new(addr)))
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.1.clone())
    }
}

impl Drop for Unix {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

impl Transport for Plain {
    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<BoxIo>> {
        let endpoint = endpoint.clone();
        Box::pin(async move {
            match endpoint {
                Endpoint::Tcp(hp) => {
                    let s = TcpStream::connect(hp.as_str()).await?;
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as BoxIo)
                }
                Endpoint::Unix(p) => Ok(Box::new(UnixStream::connect(p).await?) as BoxIo),
            }
        })
    }

    fn bind(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let endpoint = endpoint.clone();
        Box::pin(async move {
            match endpoint {
                Endpoint::Tcp(hp) => {
                    Ok(Box::new(Tcp(TcpListener::bind(hp.as_str()).await?)) as Box<dyn Listener>)
                }
                Endpoint::Unix(p) => {
                    // A stale socket file from a crashed run would make bind fail.
                    if p.exists() && UnixStream::connect(&p).await.is_err() {
                        let _ = std::fs::remove_file(&p);
                    }
                    Ok(Box::new(Unix(UnixListener::bind(&p)?, p)) as Box<dyn Listener>)
                }
            }
        })
    }

    fn name(&self) -> &'static str {
        "plain"
    }
}
