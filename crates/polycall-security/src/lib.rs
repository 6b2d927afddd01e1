//! # polycall-security
//!
//! Security building blocks for polycall, with exactly one crypto provider (aws-lc-rs):
//!
//! - [`SecretRef`]: where a secret lives (`file:PATH` or `env:NAME`); secrets are never
//!   written inline in configuration, and errors name the reference, never the content.
//! - [`ServerTls`] / [`ClientTls`]: rustls configurations, **TLS 1.3 only**, ALPN
//!   [`ALPN`], client authentication [`ClientAuth`] `Off | Optional | Required`, and
//!   certificate revocation lists.
//! - [`Ca`]: a small certificate authority (rcgen) that issues certificates with a DNS
//!   name and a SPIFFE URI, and revocation lists.
//! - [`peer_identity`]: the identity a peer's certificate proves (its SPIFFE URI, else
//!   its first DNS name).
//!
//! Cargo features: `ca` (the certificate authority, rcgen), `opaque` (OPAQUE
//! password login), `hsm` (PKCS#11 keys, cryptoki). All are on by default; a
//! plain TLS client or server needs none of them.
//!
//! ```no_run
//! # #[cfg(feature = "ca")]
//! # fn demo() -> Result<(), polycall_security::Error> {
//! use polycall_security::{Ca, ClientAuth, IssueOptions, ServerTls};
//! let ca = Ca::init("/var/lib/polycall/ca")?;
//! let issued = ca.issue("node-a", Some("spiffe://example.org/node-a"), IssueOptions::default())?;
//! std::fs::write("/etc/polycall/node.pem", &issued.cert_pem).unwrap();
//! // … and the key, with mode 0600 (see `write_private`).
//! let server = ServerTls::default()
//!     .cert_chain("file:/etc/polycall/node.pem".parse()?)
//!     .key("file:/etc/polycall/node.key".parse()?)
//!     .ca("file:/var/lib/polycall/ca/ca.pem".parse()?)
//!     .client_auth(ClientAuth::Required);
//! let config = server.build()?; // Arc<rustls::ServerConfig>
//! # let _ = config; Ok(()) }
//! ```

pub mod authz;
#[cfg(feature = "ca")]
mod ca;
mod error;
pub mod exchange;
pub mod hsm;
mod identity;
#[cfg(feature = "opaque")]
pub mod opaque;
pub mod private_file;
mod secret;
mod tls;
pub mod token;

#[cfg(feature = "ca")]
pub use ca::{Ca, IssueOptions, Issued, IssuedCert};
pub use error::Error;
pub use identity::{peer_identity, spiffe_id};
pub use private_file::write_private;
pub use secret::SecretRef;
#[cfg(feature = "hsm")]
pub use tls::hsm_certified_key;
pub use tls::{
    ALPN, ClientAuth, ClientTls, ServerTls, client_config, load_certs, load_crls, load_key,
    load_roots, provider, server_config,
};
pub use tls::{client_config_certified, server_config_certified};

/// Re-exported so users name the same rustls types as this crate.
pub use rustls;
pub use rustls_pki_types;
