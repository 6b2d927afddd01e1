//! Where to connect or listen: a TCP `host:port` or a Unix-domain socket path.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A transport address.
///
/// ```
/// use polycall_core::Endpoint;
/// let tcp: Endpoint = "127.0.0.1:7000".parse()?;
/// assert_eq!(tcp.to_string(), "127.0.0.1:7000");
/// let tcp: Endpoint = "tcp://localhost:0".parse()?;
/// assert_eq!(tcp, Endpoint::Tcp("localhost:0".into()));
/// let unix: Endpoint = "unix:/run/polycall.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:/run/polycall.sock");
/// assert!("localhost".parse::<Endpoint>().is_err());
/// # Ok::<(), polycall_core::EndpointError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// TCP `host:port` (port 0 = any free port when listening).
    Tcp(String),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

/// An endpoint string that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {input:?}: {reason} (expected HOST:PORT, tcp://HOST:PORT or unix:PATH)")]
pub struct EndpointError {
    /// The text given.
    pub input: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let err = |reason| EndpointError {
            input: s.to_owned(),
            reason,
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let hp = s.strip_prefix("tcp://").unwrap_or(s);
        let (host, port) = hp.rsplit_once(':').ok_or_else(|| err("no port"))?;
        if host.is_empty() {
            return Err(err("empty host"));
        }
        port.parse::<u16>()
            .map_err(|_| err("port is not a number from 0 to 65535"))?;
        Ok(Endpoint::Tcp(hp.to_owned()))
    }
}

impl Endpoint {
    /// Whether only this machine can reach it: a Unix socket, or TCP on a loopback
    /// address (`127.0.0.0/8`, `::1`, `localhost`). A wildcard (`0.0.0.0`, `::`) or any
    /// other host is reachable from the network.
    ///
    /// ```
    /// use polycall_core::Endpoint;
    /// let e = |s: &str| s.parse::<Endpoint>().unwrap();
    /// assert!(e("127.0.0.1:0").is_loopback() && e("[::1]:7464").is_loopback());
    /// assert!(e("localhost:7464").is_loopback() && e("unix:/tmp/p.sock").is_loopback());
    /// assert!(!e("0.0.0.0:7464").is_loopback() && !e("10.1.2.3:7464").is_loopback());
    /// ```
    pub fn is_loopback(&self) -> bool {
        match self {
            Endpoint::Unix(_) => true,
            Endpoint::Tcp(hp) => {
                let host = hp.rsplit_once(':').map_or(hp.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(hp) => f.write_str(hp),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
